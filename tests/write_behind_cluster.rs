//! Write-behind on a 3-primary Redis Cluster: each shard captures its keys into streams of
//! the same slot (a key's hashtag, or a tag of its slot) and applies them itself.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};
use testdb::Postgres;

#[test]
fn each_shard_captures_locally_and_every_row_arrives() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE users (id text PRIMARY KEY, name text)");
    let url = pg.url();
    let nodes: Vec<Server> = (0..3).map(|_| Server::start_with(&["connection.pg", &url], &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"])).collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = std::process::Command::new("redis-cli").args(["--cluster", "create"]).args(&addrs).args(["--cluster-yes"]).output().expect("redis-cli --cluster create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let mut conns: Vec<redis::Connection> = nodes.iter().map(|n| n.conn()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in conns.iter_mut() {
        while !fmt(&cmd(c, &["CLUSTER", "INFO"])).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Registered once, on one primary: every primary gets the recipe and runs its own
    // consumer.
    let code = "import { writeBehind, postgres } from 'gears/recipes';\nwriteBehind({ name: 'users', prefix: 'user:', target: postgres({ connection: 'pg', table: 'users' }), flushMs: 10 });";
    assert_eq!(exec(&mut conns[1], "js", code, &["ID", "wb"]), "OK");
    for (i, c) in conns.iter_mut().enumerate() {
        let sessions = fmt(&cmd(c, &["RG.DUMPSESSIONS"]));
        assert!(sessions.contains(r#""wb""#), "primary {i} has the recipe once RG.EXEC answered: {sessions}");
    }
    let owners = common::slot_owners(&mut conns[0]);
    let node_of = |key: &str| {
        let s = common::slot(key);
        let port = owners.iter().find(|(a, b, _)| *a <= s && s <= *b).map(|(_, _, p)| *p).expect("slot owner");
        nodes.iter().position(|n| n.port == port).expect("node")
    };
    let keys: Vec<String> = (0..150).map(|i| format!("user:{i}")).chain((0..30).map(|i| format!("user:{{eu}}:{i}"))).collect();
    for k in &keys {
        let n = node_of(k);
        let r = fmt(&cmd(&mut conns[n], &["HSET", k, "name", k]));
        assert_eq!(r, "1", "HSET {k} on its shard");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = pg.sql("SELECT count(*) FROM users");
        if got == keys.len().to_string() {
            break;
        }
        assert!(Instant::now() < deadline, "rows: {got} of {}", keys.len());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pg.sql("SELECT name FROM users WHERE id = '{eu}:7'"), "user:{eu}:7");
    // Every shard captured into streams of its own slots, and they drained.
    let mut streams = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let dump = fmt(&cmd(c, &["RG.DUMPREGISTRATIONS"]));
        assert!(dump.contains(r#""captureErrors", 0"#) && dump.contains(r#""backlog", 0"#), "node {i}: {dump}");
        let ks: Vec<String> = redis::cmd("KEYS").arg("rg:wb:users*").query(c).expect("KEYS");
        for k in &ks {
            assert_eq!(node_of(k), i, "stream {k} lives on the shard of its keys");
            assert_eq!(fmt(&cmd(c, &["XLEN", k])), "0");
        }
        streams += ks.len();
    }
    assert!(streams > 3, "keys without a hashtag get a stream per slot: {streams}");
}
