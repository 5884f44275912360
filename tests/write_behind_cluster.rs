//! Write-behind on a 3-primary Redis Cluster: each shard captures its keys into streams of
//! the same slot (a key's hashtag, or a tag of its slot) and applies them itself.

mod common;

use common::{canon::fmt, cmd, exec};
use std::time::{Duration, Instant};
use testdb::Postgres;

#[test]
fn each_shard_captures_locally_and_every_row_arrives() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE users (id text PRIMARY KEY, name text)");
    let url = pg.url();
    // On ports below 55535 (a node's bus listens on its port + 10000).
    let cluster = common::cluster::Options::default().module_args(&["connection.pg", url.as_str()]).start();
    let nodes = &cluster.nodes;
    let mut conns: Vec<redis::Connection> = nodes.iter().map(|n| n.conn()).collect();
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
