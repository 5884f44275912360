//! StreamReader registrations: batches, time bounds, failure policies, trimming, and
//! at-least-once delivery across kill -9, upgrades and failover.

mod common;

use common::{eventually, canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};


fn xadd(c: &mut redis::Connection, stream: &str, n: usize) {
    for i in 0..n {
        cmd(c, &["XADD", stream, "*", "n", &i.to_string()]);
    }
}

#[test]
fn entries_are_processed_in_batches_and_trimmed() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in [
        ("lua", "GB('StreamReader'):foreach(function(r) execute('SADD', 'seen', r.id) end):count():foreach(function(n) execute('RPUSH', 'batches', n) end):register({prefix = 'orders:', batch = 3})"),
        ("js", "GB('StreamReader').foreach(r => { execute('SADD', 'seen', r.id) }).count().foreach(n => { execute('RPUSH', 'batches', n) }).register({prefix: 'orders:', batch: 3})"),
    ] {
        cmd(&mut c, &["FLUSHALL"]);
        // Entries already there when the registration is made are processed too.
        xadd(&mut c, "orders:1", 7);
        assert_eq!(exec(&mut c, lang, code, &["ID", "orders"]), "OK");
        eventually(&mut c, &["LRANGE", "batches", "0", "-1"], r#"["3", "3", "1"]"#);
        assert_eq!(fmt(&cmd(&mut c, &["SCARD", "seen"])), "7");
        eventually(&mut c, &["XLEN", "orders:1"], "0");
        xadd(&mut c, "orders:2", 2);
        eventually(&mut c, &["SCARD", "seen"], "9");
        // The position moves once the batch's steps are done (just after their writes).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
            assert!(dump.contains(r#""reader", "StreamReader""#), "{dump}");
            if dump.contains(r#""stream", "orders:2", "lag", 0"#) {
                break;
            }
            assert!(Instant::now() < deadline, "the position never caught up: {dump}");
            std::thread::sleep(Duration::from_millis(20));
        }
        cmd(&mut c, &["RG.DROPSESSION", "orders"]);
    }
}

#[test]
fn a_partial_batch_waits_for_its_duration() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "js", "GB('StreamReader').count().foreach(n => { execute('RPUSH', 'batches', n) }).register({prefix: 'ev:', batch: 100, duration: 400, trimStream: false})", &["ID", "timed"]);
    let t = Instant::now();
    xadd(&mut c, "ev:1", 3);
    // A fixed wait: time for a batch that runs too early to show.
    std::thread::sleep(Duration::from_millis(100));
    if t.elapsed() < Duration::from_millis(350) {
        assert_eq!(fmt(&cmd(&mut c, &["LLEN", "batches"])), "0", "ran before the batch filled or the duration passed");
    }
    eventually(&mut c, &["LRANGE", "batches", "0", "-1"], r#"["3"]"#);
    assert_eq!(fmt(&cmd(&mut c, &["XLEN", "ev:1"])), "3", "trimStream false keeps the entries");
}

#[test]
fn failure_policies() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    // retry: the same batch again until it succeeds; nothing lost.
    exec(&mut c, "lua", "GB('StreamReader'):foreach(function(r) if execute('EXISTS', 'ok') == 0 then error('target down') end execute('SADD', 'seen', r.id) end):register({prefix = 'r:', onFailedPolicy = 'retry', onFailedRetryInterval = 50})", &["ID", "retry"]);
    xadd(&mut c, "r:1", 3);
    // The batch failed and was tried again (numFailures counts the attempts), and nothing
    // of it went through.
    common::wait_until(20, "the retry policy to try the failed batch again", || {
        let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        let failures = dump.split(r#""numFailures", "#).nth(1).and_then(|t| t.split(|ch: char| !ch.is_ascii_digit()).next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        if dump.contains("target down") && dump.contains(r#""stream", "r:1", "lag", 3"#) && failures >= 3 { Ok(()) } else { Err(dump) }
    });
    assert_eq!(fmt(&cmd(&mut c, &["SCARD", "seen"])), "0");
    cmd(&mut c, &["SET", "ok", "1"]);
    eventually(&mut c, &["SCARD", "seen"], "3");
    cmd(&mut c, &["DEL", "ok", "seen"]);
    // continue: the failed batch is given up, the next ones go on.
    exec(&mut c, "js", "GB('StreamReader').foreach(r => { if (r.value.n === '1') throw new Error('poison'); execute('SADD', 'cont', r.id) }).register({prefix: 'c:'})", &["ID", "continue"]);
    xadd(&mut c, "c:1", 3);
    eventually(&mut c, &["SCARD", "cont"], "2");
    // abort: the registration pauses at the failed batch; unpaused, it goes on from there.
    exec(&mut c, "js", "GB('StreamReader').foreach(r => { if (execute('EXISTS', 'fixed') === 0) throw new Error('stop'); execute('SADD', 'ab', r.id) }).register({prefix: 'a:', batch: 10, onFailedPolicy: 'abort'})", &["ID", "abort"]);
    xadd(&mut c, "a:1", 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"])).contains(r#""status", "paused""#) {
        assert!(Instant::now() < deadline, "abort did not pause the registration");
        std::thread::sleep(Duration::from_millis(20));
    }
    cmd(&mut c, &["SET", "fixed", "1"]);
    assert_eq!(fmt(&cmd(&mut c, &["RG.UNPAUSEREGISTRATIONS", "abort/0"])), "OK");
    eventually(&mut c, &["SCARD", "ab"], "4");
}

#[test]
fn register_stream_bad_input() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code, expected) in [
        ("lua", "GB('StreamReader'):register({batch = 0})", "register: batch must be between 1 and 1000000, got 0"),
        ("js", "GB('StreamReader').register({batch: 'ten'})", "register: batch must be an integer, got string"),
        ("lua", "GB('StreamReader'):register({onFailedPolicy = 'panic'})", "register: onFailedPolicy must be 'continue', 'abort' or 'retry', got 'panic'"),
        ("js", "GB('StreamReader').register({trimStream: 1})", "register: trimStream must be a boolean, got integer"),
        ("lua", "GB('StreamReader'):register({mode = 'sync'})", "register: a StreamReader runs on workers"),
        ("js", "GB('StreamReader').register({eventTypes: ['xadd']})", "register: unknown option 'eventTypes'"),
    ] {
        let got = exec(&mut c, lang, code, &[]);
        assert!(got.contains(expected), "{lang} `{code}`: {got}");
    }
    assert_eq!(fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"])), "[]");
}

#[test]
fn an_upgrade_keeps_the_stream_positions() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "lua", "GB('StreamReader'):foreach(function(r) execute('SADD', 'v1', r.id) end):register({prefix = 'u:', trimStream = false})", &["ID", "up"]);
    xadd(&mut c, "u:1", 3);
    eventually(&mut c, &["SCARD", "v1"], "3");
    assert_eq!(exec(&mut c, "js", "GB('StreamReader').foreach(r => { execute('SADD', 'v2', r.id) }).register({prefix: 'u:', trimStream: false})", &["ID", "up", "UPGRADE"]), "OK");
    xadd(&mut c, "u:1", 2);
    eventually(&mut c, &["SCARD", "v2"], "2");
    // A fixed wait: time for a wrong reprocessing to show.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fmt(&cmd(&mut c, &["SCARD", "v2"])), "2", "the upgrade reprocessed old entries");
    assert_eq!(fmt(&cmd(&mut c, &["SCARD", "v1"])), "3");
}

#[test]
fn nothing_acknowledged_is_lost_across_kill_9() {
    let mut s = Server::start_with(&[], &["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = s.conn();
    // Each entry takes the consumer 2 ms (a busy wait), so a third of them takes it about
    // 400 ms: the kills land while it works. `runs` counts every time an entry is processed.
    exec(&mut c, "lua", "GB('StreamReader'):foreach(function(r) local t = os.clock() + 0.002 while os.clock() < t do end execute('SADD', 'done', r.value.n) execute('INCR', 'runs') end):register({prefix = 'jobs:', batch = 10})", &["ID", "jobs"]);
    let total = 600;
    let mut acked = std::collections::BTreeSet::new();
    for round in 0..3 {
        // Add a third of the entries, then kill the server without warning while the
        // consumer is still working through them.
        let before: usize = redis::cmd("SCARD").arg("done").query(&mut c).unwrap();
        for i in 0..total / 3 {
            let n = round * (total / 3) + i;
            let r = cmd(&mut c, &["XADD", "jobs:q", "*", "n", &n.to_string()]);
            assert!(!fmt(&r).starts_with("(error)"), "{}", fmt(&r));
            acked.insert(n.to_string());
        }
        common::wait_until(20, "the consumer to start on the round", || match redis::cmd("SCARD").arg("done").query::<usize>(&mut c).unwrap() {
            n if n > before => Ok(()),
            n => Err(format!("{n} done")),
        });
        let done: usize = redis::cmd("SCARD").arg("done").query(&mut c).unwrap();
        let backlog: usize = redis::cmd("XLEN").arg("jobs:q").query(&mut c).unwrap();
        eprintln!("kill {round}: {} entries acknowledged, {done} done, {backlog} not yet trimmed", acked.len());
        assert!(done < acked.len() && backlog > 0, "kill {round} landed with nothing in flight: {done} of {} done, {backlog} in the stream", acked.len());
        s.restart();
        c = s.conn();
    }
    eventually(&mut c, &["SCARD", "done"], &total.to_string());
    assert_eq!(acked.len(), total);
    // The very entries acknowledged were processed.
    let done: std::collections::BTreeSet<String> = redis::cmd("SMEMBERS").arg("done").query(&mut c).unwrap();
    assert_eq!(done, acked);
    eventually(&mut c, &["XLEN", "jobs:q"], "0");
    let runs: usize = redis::cmd("GET").arg("runs").query(&mut c).unwrap();
    assert!(runs >= total, "{runs}");
    eprintln!("{} entries processed more than once after the kills", runs - total);
    let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
    assert!(dump.contains(r#""numFailures", 0"#), "{dump}");
}

#[test]
fn a_promoted_replica_goes_on_from_the_primarys_position() {
    let primary = Server::start(&[]);
    let replica = Server::start_with(&[], &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    exec(&mut p, "js", "GB('StreamReader').foreach(r => { execute('RPUSH', 'log', r.value.n) }).register({prefix: 'f:', trimStream: false})", &["ID", "fo"]);
    xadd(&mut p, "f:1", 3);
    eventually(&mut p, &["LLEN", "log"], "3");
    cmd(&mut p, &["WAIT", "1", "5000"]);
    eventually(&mut r, &["LLEN", "log"], "3");
    assert!(fmt(&cmd(&mut r, &["RG.DUMPREGISTRATIONS"])).contains(r#""stream", "f:1""#), "the replica has the position");
    drop(p);
    drop(primary);
    assert_eq!(fmt(&cmd(&mut r, &["REPLICAOF", "NO", "ONE"])), "OK");
    xadd(&mut r, "f:1", 1);
    eventually(&mut r, &["LRANGE", "log", "0", "-1"], r#"["0", "1", "2", "0"]"#);
    // A fixed wait: time for entries processed twice to show.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fmt(&cmd(&mut r, &["LLEN", "log"])), "4", "entries processed twice after the failover");
}

#[test]
fn trimming_waits_for_every_consumer_of_the_stream() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "lua", "GB('StreamReader'):foreach(function(r) execute('SADD', 'fast', r.id) end):register({prefix = 't:'})", &["ID", "fast"]);
    exec(&mut c, "js", "GB('StreamReader').foreach(r => { if (execute('EXISTS', 'go') === 0) throw new Error('not yet'); execute('SADD', 'slow', r.id) }).register({prefix: 't:', onFailedPolicy: 'retry', onFailedRetryInterval: 50})", &["ID", "slow"]);
    xadd(&mut c, "t:1", 5);
    eventually(&mut c, &["SCARD", "fast"], "5");
    // A fixed wait: time for a wrong trim to show.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(fmt(&cmd(&mut c, &["XLEN", "t:1"])), "5", "entries trimmed before the slow consumer had them");
    cmd(&mut c, &["SET", "go", "1"]);
    eventually(&mut c, &["SCARD", "slow"], "5");
    eventually(&mut c, &["XLEN", "t:1"], "0");
}
