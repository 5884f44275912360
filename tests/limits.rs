//! Time and memory limits, the sandbox, ACL, and never stalling the server.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};

/// Sends `code` from another connection and PINGs meanwhile: every PING sent while the
/// script ran is answered within 500 ms, and at least `min_pings` were sent while it ran
/// (PINGs sent before the script was sent, or answered after its reply, do not count).
fn assert_ping_while(s: &Server, lang: &str, code: &str, min_pings: usize) -> String {
    let port = s.port;
    let (lang, code) = (lang.to_string(), code.to_string());
    let label = lang.to_string();
    let sent = std::sync::Arc::new(std::sync::OnceLock::<Instant>::new());
    let sent_in_runner = sent.clone();
    let runner = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
        sent_in_runner.set(Instant::now()).unwrap();
        let got = exec(&mut c, &lang, &code, &[]);
        (got, Instant::now())
    });
    let mut c = s.conn();
    let mut pings = Vec::new();
    while !runner.is_finished() {
        let t = Instant::now();
        assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
        assert!(t.elapsed() < Duration::from_millis(500), "PING took {:?} while a script ran", t.elapsed());
        pings.push((t, Instant::now()));
        std::thread::sleep(Duration::from_millis(2));
    }
    let (got, replied) = runner.join().unwrap();
    let sent = *sent.get().expect("the script was sent");
    let during: Vec<Duration> = pings.iter().filter(|(t, done)| *t >= sent && *done <= replied).map(|(t, done)| *done - *t).collect();
    let slowest = during.iter().max().copied().unwrap_or_default();
    eprintln!("{label}: {} PINGs answered while the script ran ({:?}), the slowest in {slowest:?}", during.len(), replied - sent);
    assert!(during.len() >= min_pings, "the script ended too fast to observe PING ({} in {:?})", during.len(), replied - sent);
    got
}

#[test]
fn infinite_loops_end_with_a_time_limit_error_while_ping_answers() {
    let s = Server::start(&["script-timeout", "300"]);
    for (lang, code) in [
        ("lua", "while true do end"),
        ("js", "while (true) {}"),
        ("lua", "while true do pcall(function() while true do end end) end"),
        ("js", "while (true) { try { while (true) {} } catch (e) {} }"),
        ("lua", "GB():map(function(r) while true do end end):run('*')"),
        ("js", "GB().map(r => { while (true) {} }).run('*')"),
    ] {
        let mut c = s.conn();
        cmd(&mut c, &["SET", "k", "v"]);
        let got = assert_ping_while(&s, lang, code, 4);
        assert!(got.contains("rg.script-timeout"), "{lang} `{code}`: {got}");
        // The instance is still usable.
        assert_eq!(exec(&mut c, lang, if lang == "lua" { "return 1 + 1" } else { "1 + 1" }, &[]), "2");
    }
}

#[test]
fn memory_bombs_end_with_a_memory_error() {
    let s = Server::start(&["lua-memory-limit", "33554432", "js-memory-limit", "33554432"]);
    let mut c = s.conn();
    for (lang, code) in [
        ("lua", "local t = {} while true do t[#t + 1] = string.rep('x', 1000) .. #t end"),
        ("js", "let a = []; while (true) a.push('x'.repeat(1000) + a.length);"),
    ] {
        let got = assert_ping_while(&s, lang, code, 4);
        assert!(got.contains("out of memory"), "{lang}: {got}");
        assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
        assert_eq!(exec(&mut c, lang, if lang == "lua" { "return 'still here'" } else { "'still here'" }, &[]), r#""still here""#);
    }
}

#[test]
fn sandbox_escapes_are_refused() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in [
        ("lua", "return io.open('/etc/passwd')"),
        ("lua", "return os.execute('touch /tmp/rg-pwned')"),
        ("lua", "return os.getenv('HOME')"),
        ("lua", "return require('os')"),
        ("lua", "return dofile('/etc/passwd')"),
        ("lua", "return loadfile('/etc/passwd')"),
        ("lua", "local f, e = load('\\27Lua\\84\\0', 'x', 'b') if f then return 'loaded' end error(e)"),
        ("lua", "local f, e = load(string.char(27) .. 'Lua') if f then return 'loaded' end error(e)"),
        ("lua", "return debug.getinfo(1)"),
        ("lua", "print('to the server stdout')"),
        ("lua", "return string.dump(function() end)"),
        ("lua", "return package.loadlib('libc.so.6', 'system')"),
        ("js", "import * as os from 'os'"),
        ("js", "require('fs')"),
        ("js", "std.loadFile('/etc/passwd')"),
        ("js", "os.exec(['touch', '/tmp/rg-pwned'])"),
    ] {
        let got = exec(&mut c, lang, code, &[]);
        assert!(got.starts_with("(error)"), "{lang} `{code}` was not refused: {got}");
    }
    assert!(!std::path::Path::new("/tmp/rg-pwned").exists());
    // What stays allowed.
    assert_eq!(exec(&mut c, "lua", "return type(os.time()) .. type(os.clock())", &[]), r#""numbernumber""#);
    assert_eq!(exec(&mut c, "lua", "return load('return 7')()", &[]), "7");
}

#[test]
fn execute_runs_as_the_calling_acl_user() {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    cmd(&mut admin, &["SET", "secret:1", "s"]);
    cmd(&mut admin, &["SET", "public:1", "p"]);
    assert_eq!(fmt(&cmd(&mut admin, &["ACL", "SETUSER", "app", "on", ">pw", "~public:*", "+@all", "-flushall"])), "OK");
    let mut app = s.conn();
    assert_eq!(fmt(&cmd(&mut app, &["AUTH", "app", "pw"])), "OK");
    for (lang, ok, denied_key, denied_cmd) in [
        ("lua", "return execute('GET', 'public:1')", "return execute('GET', 'secret:1')", "return execute('FLUSHALL')"),
        ("js", "execute('GET', 'public:1')", "execute('GET', 'secret:1')", "execute('FLUSHALL')"),
    ] {
        assert_eq!(exec(&mut app, lang, ok, &[]), r#""p""#);
        let got = exec(&mut app, lang, denied_key, &[]);
        assert!(got.contains("NOPERM"), "{lang}: {got}");
        let got = exec(&mut app, lang, denied_cmd, &[]);
        assert!(got.contains("NOPERM"), "{lang}: {got}");
    }
    // Readers read with the caller's permissions too: keys it may not read are errors.
    for (lang, code) in [
        ("lua", "GB():map(function(r) return r.value end):run('*')"),
        ("js", "GB().map(r => r.value).run('*')"),
    ] {
        let got = exec(&mut app, lang, code, &[]);
        assert!(got.starts_with(r#"[["p"], ["secret:1: NOPERM"#), "{lang}: {got}");
    }
    // The denied FLUSHALL did nothing; the admin user still may.
    assert_eq!(fmt(&cmd(&mut admin, &["EXISTS", "secret:1"])), "1");
    assert_eq!(exec(&mut admin, "lua", "return execute('GET', 'secret:1')", &[]), r#""s""#);
}

#[test]
fn a_long_run_does_not_stall_other_clients() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    // 200k keys, loaded with a pipeline.
    let mut p = redis::pipe();
    for i in 0..200_000 {
        p.cmd("HSET").arg(format!("user:{i}")).arg("city").arg(i % 7).ignore();
        if i % 10_000 == 9_999 {
            p.query::<()>(&mut c).unwrap();
            p = redis::pipe();
        }
    }
    for (lang, code) in [
        ("lua", "GB():countBy(function(r) return r.value.city end):count():run('user:*')"),
        ("js", "GB().countBy(r => r.value.city).count().run('user:*')"),
    ] {
        let got = assert_ping_while(&s, lang, code, 4);
        assert_eq!(got, "[[7], []]", "{lang}");
    }
}

/// A run whose reader must stop early (limit) ends: the reader thread used to block for
/// ever on a full channel nobody read any more, and RG.EXEC never answered.
#[test]
fn a_limit_over_many_keys_ends_the_run() {
    let s = Server::start(&["keys-batch-size", "100"]);
    let mut c = s.conn();
    let mut p = redis::pipe();
    for i in 0..20_000 {
        p.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    p.query::<()>(&mut c).unwrap();
    for (lang, code) in [("lua", "return GB():limit(1):run()"), ("js", "GB().limit(3).run()")] {
        let id = exec(&mut c, lang, code, &["UNBLOCKING"]).trim_matches('"').to_string();
        common::wait_status(&mut c, &id, "done", Duration::from_secs(20));
        let got = fmt(&cmd(&mut c, &["RG.GETRESULTS", &id]));
        let n = if lang == "lua" { 1 } else { 3 };
        assert_eq!(got.matches(r#""key""#).count(), n, "{lang}: {got}");
    }
}
