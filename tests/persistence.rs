//! Sessions survive restarts (RDB, AOF, AOF rewrite), reach replicas, and fire only on a
//! primary; the internal commands are refused from clients.

mod common;

use common::{eventually, canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};


/// A Lua keyspace session, a JS command session with one paused and one removed registration.
fn register(c: &mut redis::Connection) {
    assert_eq!(exec(c, "lua", "GB():foreach(function(r) execute('INCR', 'fired') end):register({prefix = 'user:', mode = 'sync'})", &["ID", "counter", "ARGS", "x"]), "OK");
    assert_eq!(
        exec(c, "js", "GB('CommandReader').map(() => 'one').register({trigger: 'one'}); GB('CommandReader').map(() => 'two').register({trigger: 'two'}); GB('CommandReader').map(() => 'three').register({trigger: 'three'})", &["ID", "cmds"]),
        "OK"
    );
    assert_eq!(fmt(&cmd(c, &["RG.PAUSEREGISTRATIONS", "cmds/1"])), "OK");
    assert_eq!(fmt(&cmd(c, &["RG.UNREGISTER", "cmds/2"])), "OK");
    // The session's other registrations still fire after one was removed.
    assert_eq!(fmt(&cmd(c, &["RG.TRIGGER", "one"])), r#"["one"]"#);
}

fn check_restored(c: &mut redis::Connection, fired_before: i64) {
    let sessions = fmt(&cmd(c, &["RG.DUMPSESSIONS", "VERBOSE"]));
    assert!(sessions.contains(r#""id", "counter", "language", "lua""#), "{sessions}");
    assert!(sessions.contains(r#""args", ["x"]"#), "{sessions}");
    assert!(sessions.contains(r#""registrations", ["cmds/0", "cmds/1"]"#), "{sessions}");
    cmd(c, &["HSET", "user:after", "a", "1"]);
    assert_eq!(fmt(&cmd(c, &["GET", "fired"])), format!("\"{}\"", fired_before + 1));
    assert_eq!(fmt(&cmd(c, &["RG.TRIGGER", "one"])), r#"["one"]"#);
    assert!(fmt(&cmd(c, &["RG.TRIGGER", "two"])).contains("is paused"));
    assert!(fmt(&cmd(c, &["RG.TRIGGER", "three"])).contains("no registration for trigger 'three'"));
}

#[test]
fn sessions_survive_a_restart_from_rdb() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    register(&mut c);
    cmd(&mut c, &["HSET", "user:1", "a", "1"]);
    assert_eq!(fmt(&cmd(&mut c, &["SAVE"])), "OK");
    s.restart();
    let mut c = s.conn();
    check_restored(&mut c, 1);
}

#[test]
fn sessions_survive_a_restart_from_aof_and_after_a_rewrite() {
    let mut s = Server::start_with(&[], &["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = s.conn();
    register(&mut c);
    cmd(&mut c, &["HSET", "user:1", "a", "1"]);
    s.restart();
    let mut c = s.conn();
    check_restored(&mut c, 1);
    // After a rewrite the sessions come from the AOF's RDB preamble.
    assert!(fmt(&cmd(&mut c, &["BGREWRITEAOF"])).contains("rewriting"));
    common::wait_until(10, "the AOF rewrite to finish", || {
        let info = fmt(&cmd(&mut c, &["INFO", "persistence"]));
        let done = ["aof_rewrite_in_progress:0", "aof_rewrite_scheduled:0", "aof_last_bgrewrite_status:ok", "aof_rewrites:1"].iter().all(|f| info.contains(f));
        if done { Ok(()) } else { Err(info) }
    });
    s.restart();
    let mut c = s.conn();
    check_restored(&mut c, 2);
    // A dropped session stays dropped.
    assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "counter"])), "OK");
    s.restart();
    let mut c = s.conn();
    assert!(!fmt(&cmd(&mut c, &["RG.DUMPSESSIONS"])).contains("counter"));
}

#[test]
fn a_replica_gets_the_sessions_fires_nothing_and_takes_over_when_promoted() {
    let primary = Server::start(&[]);
    let replica = Server::start_with(&[], &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    register(&mut p);
    cmd(&mut p, &["HSET", "user:1", "a", "1"]);
    cmd(&mut p, &["WAIT", "1", "5000"]);
    eventually(&mut r, &["GET", "fired"], r#""1""#);
    let sessions = fmt(&cmd(&mut r, &["RG.DUMPSESSIONS"]));
    assert!(sessions.contains(r#""registrations", ["cmds/0", "cmds/1"]"#), "{sessions}");
    assert!(fmt(&cmd(&mut r, &["RG.DUMPREGISTRATIONS"])).contains(r#""status", "paused""#));
    // The replica applied the primary's write and the trigger's write, and fired nothing itself.
    assert!(fmt(&cmd(&mut r, &["RG.DUMPREGISTRATIONS"])).contains(r#""numTriggered", 0"#));
    // Client writes of registrations are refused on the replica.
    assert!(fmt(&cmd(&mut r, &["RG.DROPSESSION", "counter"])).contains("READONLY"));
    assert!(fmt(&cmd(&mut r, &["RG.SESSIONLOAD", "x"])).starts_with("(error)"));
    // Promoted, it fires.
    assert_eq!(fmt(&cmd(&mut r, &["REPLICAOF", "NO", "ONE"])), "OK");
    cmd(&mut r, &["HSET", "user:2", "a", "1"]);
    assert_eq!(fmt(&cmd(&mut r, &["GET", "fired"])), r#""2""#);
    assert_eq!(fmt(&cmd(&mut r, &["RG.TRIGGER", "one"])), r#"["one"]"#);
    // A session dropped on the primary is dropped on its replicas.
    let replica2 = Server::start_with(&[], &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut r2 = replica2.conn();
    eventually(&mut r2, &["GET", "fired"], r#""1""#);
    cmd(&mut p, &["RG.DROPSESSION", "cmds"]);
    cmd(&mut p, &["WAIT", "1", "5000"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fmt(&cmd(&mut r2, &["RG.DUMPSESSIONS"])).contains("cmds") {
        assert!(Instant::now() < deadline, "the dropped session is still on the replica");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fmt(&cmd(&mut r2, &["RG.DUMPSESSIONS"])).contains("counter"));
}

#[test]
fn internal_commands_are_refused_from_clients() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert!(fmt(&cmd(&mut c, &["RG.SESSIONLOAD", "x"])).contains("RG.SESSIONLOAD is internal"));
    assert!(fmt(&cmd(&mut c, &["RG.SESSIONDROP", "x"])).contains("RG.SESSIONDROP is internal"));
}
