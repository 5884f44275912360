//! Memory and time the module keeps under control: interpreters of dropped sessions are
//! freed at once, all interpreters together stay under `rg.interpreters-memory-limit`,
//! kept results under `rg.max-executions-memory`, loading never hangs nor drops a session,
//! and compiling a large script never stalls the server.

mod common;

use common::{canon::fmt, cmd, eventually, exec, Server};
use std::time::{Duration, Instant};

/// A field of `INFO rg` as a number.
fn info(c: &mut redis::Connection, field: &str) -> i64 {
    let text: String = redis::cmd("INFO").arg("rg").query(c).expect("INFO rg");
    let prefix = format!("rg_{field}:");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {field} in INFO rg:\n{text}")).trim().parse().expect("a number")
}

/// Waits (up to 20 s) until `cond` holds for `INFO rg`'s `field`.
fn wait_info(c: &mut redis::Connection, field: &str, what: &str, cond: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = info(c, field);
        if cond(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{field} is still {v}, expected {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn conn_at(port: u16) -> redis::Connection {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    c
}

const MB: i64 = 1024 * 1024;

/// A Lua session holding 8 MiB in a global, with a sync and an async trigger.
fn big_session(n: usize) -> String {
    format!(
        "big = string.rep('x', 8 * 1024 * 1024)
         GB('CommandReader'):map(function() return #big end):register({{trigger = 's{n}', mode = 'sync'}})
         GB('CommandReader'):map(function() return #big end):register({{trigger = 'a{n}', mode = 'async'}})"
    )
}

#[test]
fn dropped_and_upgraded_sessions_give_their_interpreters_memory_back() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for n in 0..3 {
        assert_eq!(exec(&mut c, "lua", &big_session(n), &["ID", &format!("big{n}")]), "OK");
    }
    // Instances on the main thread (sync) and on the workers (async, from two clients at
    // once so that both workers build theirs).
    let port = s.port;
    for n in 0..3 {
        assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", &format!("s{n}")])), "[8388608]");
        let other = std::thread::spawn(move || (0..4).map(|_| fmt(&cmd(&mut conn_at(port), &["RG.TRIGGER", &format!("a{n}")]))).collect::<Vec<_>>());
        for _ in 0..4 {
            assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", &format!("a{n}")])), "[8388608]");
        }
        assert!(other.join().unwrap().iter().all(|r| r == "[8388608]"));
    }
    let peak = info(&mut c, "interpreters_memory_bytes");
    let instances = info(&mut c, "interpreters");
    eprintln!("with 3 sessions: {instances} interpreters holding {peak} bytes");
    assert!(peak >= 6 * 8 * MB, "{peak}");
    assert!(info(&mut c, "interpreters_memory_limit") > 0);
    for n in 0..3 {
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", &format!("big{n}")])), "OK");
    }
    // Nothing else runs: idle workers and the main thread free them on their own.
    let after = wait_info(&mut c, "interpreters_memory_bytes", "under 8 MiB", |v| v < 8 * MB);
    let left = info(&mut c, "interpreters");
    eprintln!("after dropping them: {left} interpreters holding {after} bytes");
    assert!(left < instances, "{left} interpreters left of {instances}");

    // An upgraded session's old instances go too.
    assert_eq!(exec(&mut c, "lua", &big_session(9), &["ID", "up"]), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "s9"])), "[8388608]");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "a9"])), "[8388608]");
    wait_info(&mut c, "interpreters_memory_bytes", "at least 16 MiB", |v| v >= 16 * MB);
    assert_eq!(exec(&mut c, "lua", "GB('CommandReader'):map(function() return 'small' end):register({trigger = 's9', mode = 'sync'})", &["ID", "up", "UPGRADE"]), "OK");
    wait_info(&mut c, "interpreters_memory_bytes", "under 8 MiB", |v| v < 8 * MB);
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "s9"])), r#"["small"]"#);
}

#[test]
fn interpreters_stay_under_their_total_memory_limit() {
    let s = Server::start(&["interpreters-memory-limit", "20000000", "script-timeout", "3000"]);
    let mut c = s.conn();
    // A session whose instance alone holds more than the limit, busy in a long call.
    let hog = "big = string.rep('x', 24 * 1024 * 1024)
               GB('CommandReader'):map(function() while true do end end):register({trigger = 'slow', mode = 'async'})";
    assert_eq!(exec(&mut c, "lua", hog, &["ID", "hog"]), "OK");
    let port = s.port;
    let slow = std::thread::spawn(move || fmt(&cmd(&mut conn_at(port), &["RG.TRIGGER", "slow"])));
    wait_info(&mut c, "interpreters_memory_bytes", "over the limit", |v| v > 20_000_000);
    // No new interpreter while running ones fill the limit: a clear error, naming it.
    let refused = exec(&mut c, "js", "1 + 1", &[]);
    assert!(refused.contains("rg.interpreters-memory-limit is 20000000 bytes") && refused.starts_with("(error) ERR"), "{refused}");
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
    assert!(slow.join().unwrap().contains("rg.script-timeout"));
    // Once the call ended, the idle instance over the limit is dropped and new ones fit.
    wait_info(&mut c, "interpreters_memory_bytes", "under the limit", |v| v < 20_000_000);
    assert_eq!(exec(&mut c, "js", "1 + 1", &[]), "2");
    assert_eq!(exec(&mut c, "lua", "return 1 + 1", &[]), "2");
    // The limit can be changed at run time; lowering it evicts idle instances.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "interpreters-memory-limit", "1"])), "OK");
    wait_info(&mut c, "interpreters", "none left", |v| v == 0);
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "interpreters-memory-limit", "0"])), "OK");
    assert_eq!(exec(&mut c, "lua", "return 'no limit'", &[]), r#""no limit""#);
}

#[test]
fn kept_results_are_bounded_in_bytes() {
    let s = Server::start(&["max-executions-memory", "10000000"]);
    let mut c = s.conn();
    // Each run keeps about 3 MB of results: only the newest three fit in 10 MB.
    let three_mb = "GB('ShardsIDReader'):map(function() return string.rep('x', 3000000) end):run()";
    for n in 0..5 {
        let got = exec(&mut c, "lua", three_mb, &["ID", &format!("r{n}")]);
        assert!(got.starts_with(r#"[["xxx"#), "{}", &got[..got.len().min(80)]);
    }
    let kept = fmt(&cmd(&mut c, &["RG.DUMPEXECUTIONS"]));
    for n in 0..5 {
        assert_eq!(kept.contains(&format!("\"r{n}\"")), n >= 2, "r{n}: {kept}");
    }
    assert!(fmt(&cmd(&mut c, &["RG.GETRESULTS", "r0"])).contains("no execution with id 'r0'"));
    let bytes = info(&mut c, "executions_memory_bytes");
    assert!((9_000_000..=10_000_000).contains(&bytes), "{bytes}");
    assert_eq!(info(&mut c, "executions_memory_limit"), 10_000_000);
    // Results larger than the limit alone are not kept: the execution ends in an error.
    let too_big = "GB('ShardsIDReader'):flatmap(function() local t = {} for i = 1, 12 do t[i] = string.rep('y', 1000000) end return t end):run()";
    let got = exec(&mut c, "lua", too_big, &["ID", "huge"]);
    assert!(got.contains("more than rg.max-executions-memory (10000000 bytes)") && got.contains("not kept"), "{got}");
    assert!(fmt(&cmd(&mut c, &["RG.GETRESULTS", "huge"])).contains("rg.max-executions-memory"));
    assert!(info(&mut c, "executions_memory_bytes") <= 10_000_000);
    // Lowering the limit evicts at once.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "max-executions-memory", "4000000"])), "OK");
    let kept = fmt(&cmd(&mut c, &["RG.DUMPEXECUTIONS"]));
    assert!(!kept.contains("\"r3\"") && kept.contains("\"r4\""), "{kept}");
}

/// A JS session whose top-level code loops once `deadline` (ms since the epoch) passed.
fn looping_after(deadline: u128, n: usize) -> String {
    format!("if (Date.now() > {deadline}) {{ while (true) {{}} }}\nGB('CommandReader').map(() => 'fired {n}').register({{trigger: 't{n}'}});")
}

#[test]
fn loading_is_bounded_and_keeps_sessions_that_cannot_be_rebuilt() {
    let mut s = Server::start_with(&["script-timeout", "2000"], &["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = s.conn();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let deadline = now + 1500;
    for n in 0..3 {
        assert_eq!(exec(&mut c, "js", &looping_after(deadline, n), &["ID", &format!("loop{n}")]), "OK");
    }
    assert_eq!(exec(&mut c, "lua", "GB('CommandReader'):map(function() return 'fine' end):register({trigger = 'fine'})", &["ID", "fine"]), "OK");
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() <= deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each looping session would take the 2 s limit: while loading each gets 0.5 s at most,
    // and all of them 2 s.
    let t = Instant::now();
    s.restart();
    let took = t.elapsed();
    eprintln!("restart with 3 looping sessions answered PING after {took:?}");
    assert!(took < Duration::from_millis(3500), "{took:?}");
    let mut c = s.conn();
    let t = Instant::now();
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
    assert!(t.elapsed() < Duration::from_millis(500));
    // Every session is kept; the looping ones with their error, firing nothing.
    let sessions = fmt(&cmd(&mut c, &["RG.DUMPSESSIONS"]));
    assert!(sessions.contains(r#""id", "fine", "language", "lua""#) && sessions.contains(r#""status", "ready""#), "{sessions}");
    for n in 0..3 {
        assert!(sessions.contains(&format!(r#""id", "loop{n}""#)), "{sessions}");
    }
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "fine"])), r#"["fine"]"#);
    assert!(fmt(&cmd(&mut c, &["RG.TRIGGER", "t0"])).contains("no registration for trigger 't0'"));
    // Rebuilt again on the workers after the load, they fail with the time limit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sessions = fmt(&cmd(&mut c, &["RG.DUMPSESSIONS"]));
        if sessions.matches(r#""status", "failed", "error", "session 'loop"#).count() == 3 && sessions.matches("rg.script-timeout (2000 ms)\"").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{sessions}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(info(&mut c, "sessions_unbuilt"), 3);
    // UPGRADE replaces one, DROPSESSION removes another.
    assert_eq!(exec(&mut c, "js", "GB('CommandReader').map(() => 'fixed').register({trigger: 't0'});", &["ID", "loop0", "UPGRADE"]), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "t0"])), r#"["fixed"]"#);
    assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "loop1"])), "OK");
    let sessions = fmt(&cmd(&mut c, &["RG.DUMPSESSIONS"]));
    assert!(!sessions.contains("loop1") && sessions.contains(r#""id", "loop2""#), "{sessions}");
    // The one left is saved again as it was loaded (here: in the rewritten AOF's preamble).
    assert!(fmt(&cmd(&mut c, &["BGREWRITEAOF"])).contains("rewriting"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fmt(&cmd(&mut c, &["INFO", "persistence"])).contains("aof_rewrite_in_progress:1") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    s.restart();
    let mut c = s.conn();
    let sessions = fmt(&cmd(&mut c, &["RG.DUMPSESSIONS", "VERBOSE"]));
    assert!(sessions.contains(r#""id", "loop2""#) && sessions.contains("while (true)"), "{sessions}");
    assert!(!sessions.contains("loop1"), "{sessions}");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "t0"])), r#"["fixed"]"#);
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "fine"])), r#"["fine"]"#);
}

/// `mib` MiB of JavaScript that ends in a syntax error.
fn big_js(mib: usize) -> String {
    let mut src = String::new();
    let mut i = 0;
    while src.len() < mib * 1024 * 1024 - 64 {
        src.push_str(&format!("var a{i} = [1, 2, 3, 'abcdefgh', {{x: function(y) {{ return y + 1 }}}}];\n"));
        i += 1;
    }
    src.push_str("1 +");
    src
}

#[test]
fn large_scripts_are_bounded_and_compile_off_the_main_thread() {
    let s = Server::start(&["max-script-size", "4194304"]);
    let mut c = s.conn();
    let too_big = big_js(5);
    let got = exec(&mut c, "js", &too_big, &[]);
    assert!(got.contains(&format!("the script is {} bytes, more than rg.max-script-size (4194304 bytes)", too_big.len())), "{}", &got[..got.len().min(200)]);
    // A script of the maximum size compiles while the server keeps answering.
    let port = s.port;
    let src = big_js(4);
    assert!(src.len() <= 4194304);
    let runner = std::thread::spawn(move || exec(&mut conn_at(port), "js", &src, &["UNBLOCKING"]));
    let (mut pings, mut slowest) = (0, Duration::ZERO);
    while !runner.is_finished() {
        let t = Instant::now();
        assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
        slowest = slowest.max(t.elapsed());
        pings += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("{pings} PINGs answered while 4 MiB of JavaScript compiled, the slowest in {slowest:?}");
    assert!(pings > 3, "{pings}");
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
    // The syntax error is still the reply (and creates no execution).
    let got = runner.join().unwrap();
    assert!(got.contains("SyntaxError"), "{}", &got[..got.len().min(200)]);
    assert_eq!(fmt(&cmd(&mut c, &["RG.DUMPEXECUTIONS"])), "[]");
    // The default, and the setting at run time.
    let s2 = Server::start(&[]);
    let mut c2 = s2.conn();
    assert_eq!(fmt(&cmd(&mut c2, &["RG.CONFIGGET", "max-script-size"])), r#"["1048576"]"#);
    assert_eq!(fmt(&cmd(&mut c2, &["RG.CONFIGSET", "max-script-size", "100"])), "OK");
    assert!(exec(&mut c2, "lua", &format!("return '{}'", "x".repeat(100)), &[]).contains("rg.max-script-size (100 bytes)"));
    eventually(&mut c2, &["RG.EXEC", "lua", "return 1"], "1");
}
