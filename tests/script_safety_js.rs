//! JavaScript scripts cannot crash or stall the server: native stack, regex literals,
//! huge arrays, builtins that loop natively, RG.ABORTEXECUTION.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};

/// A connection whose replies must come within `timeout` (a PING stuck behind a script
/// fails instead of waiting for it).
fn impatient(s: &Server, timeout: Duration) -> redis::Connection {
    let c = s.conn();
    c.set_read_timeout(Some(timeout)).unwrap();
    c
}

/// Keys `deep:<i>` for `parts`, already expired but not yet deleted (active expiry off):
/// a SCAN that meets one fires its `expired` event in place, inside the SCAN.
fn expired_keys(c: &mut redis::Connection, prefix: &str, parts: usize) {
    assert_eq!(fmt(&cmd(c, &["DEBUG", "SET-ACTIVE-EXPIRE", "0"])), "OK");
    for i in 0..parts {
        assert_eq!(fmt(&cmd(c, &["SET", &format!("{prefix}{i}"), "v", "PX", "1"])), "OK");
    }
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn a_sync_trigger_first_fired_deep_in_a_worker_script_does_not_crash_the_server() {
    let s = Server::start_with(&[], &["--enable-debug-command", "yes"]);
    let mut c = s.conn();
    // The trigger recurses as deep as it can: its instance is made (on the worker that
    // runs the SCAN that expires a key) deep inside the other script's recursion. It only reads (and logs).
    let trigger = "function depth() { let d = 0; const f = () => { d++; f() }; try { f() } catch (e) { return e.name } return 'none' }
        GB().foreach(r => log('deep trigger: ' + depth(), 'warning')).register({prefix: 'deep:', mode: 'sync', eventTypes: ['expired']})";
    assert_eq!(exec(&mut c, "js", trigger, &["ID", "deep-trigger"]), "OK");
    // One function measures how deep it can go (key null), then dives that deep.
    let script = "let max = 0;
        function dive(n, key) {
          if (key === null) max = n; else if (n === 0) return execute('SCAN', '0', 'MATCH', key, 'COUNT', '1000')[1].length;
          return dive(key === null ? n + 1 : n - 1, key) }
        try { dive(0, null) } catch (e) {}
        const parts = [0.5, 0.8, 0.9, 0.95, 0.99]; const results = [];
        parts.forEach((part, i) => {
          try { results.push(dive(Math.floor(max * part), ARGS[0] + i)) } catch (e) { results.push(e.message) } });
        results";
    expired_keys(&mut c, "deep:w", 5);
    let id = exec(&mut c, "js", script, &["UNBLOCKING", "ARGS", "deep:w"]).trim_matches('"').to_string();
    let done = fmt(&cmd(&mut c, &["RG.GETRESULTSBLOCKING", &id]));
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG", "{done}");
    assert!(s.log().contains("deep trigger: RangeError"), "{done}\n{}", s.log());
    assert_eq!(done, "[0, 0, 0, 0, 0]");
    let fired = |s: &Server| s.log().matches("deep trigger: RangeError").count();
    let on_worker = fired(&s);
    // The same without UNBLOCKING (the client waits).
    expired_keys(&mut c, "deep:m", 5);
    assert_eq!(exec(&mut c, "js", script, &["ARGS", "deep:m"]), "[0, 0, 0, 0, 0]");
    assert!(fired(&s) > on_worker, "{}", s.log());
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
    assert_eq!(fmt(&cmd(&mut c, &["DBSIZE"])), "0");
}

#[test]
fn regex_literals_work() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "js", "/a+/.exec('caab')[0]", &[]), r#""aa""#);
    assert_eq!(exec(&mut c, "js", "'a1b2'.replace(/[0-9]/g, '')", &["UNBLOCKING", "ID", "re"]), r#""re""#);
    assert_eq!(fmt(&cmd(&mut c, &["RG.GETRESULTSBLOCKING", "re"])), r#""ab""#);
    let reg = "GB('CommandReader').map(a => /^x+$/.test(a[1]) ? 'xs' : 'other').register({trigger: 're'})";
    assert_eq!(exec(&mut c, "js", reg, &["ID", "re-trigger"]), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "re", "xxx"])), r#"["xs"]"#);
}

#[test]
fn huge_arrays_are_an_error_not_a_panic() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let got = exec(&mut c, "js", "const a = []; a.length = 2**31; a", &[]);
    assert_eq!(
        got,
        "(error) ERR array of 2147483648 elements too large to convert: at most 536870912 bytes of values may be converted"
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
    let got = exec(&mut c, "js", "new Array(2**32 - 1).join()", &[]);
    assert_eq!(got, "(error) ERR RangeError: Array.prototype.join: length 4294967295 is more than the 16777216 elements the JS memory limit (268435456 bytes) can hold at script:1");
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
}

#[test]
fn builtins_that_loop_natively_stop_at_the_time_limit_while_ping_answers() {
    let s = Server::start(&["script-timeout", "200"]);
    for code in [
        "JSON.stringify(new Array(2**32 - 1)).length",
        "const s = 'a'.repeat(2**24); s.indexOf('a'.repeat(2**20) + 'b')",
        "Array.from({length: 4e6}, (_, i) => i).sort().length",
        "/(a+)+$/.test('a'.repeat(40) + 'b')",
        // Inside atomic() the script holds Redis's lock: PING waits for it.
        "atomic(() => JSON.stringify(new Array(2**32 - 1)).length)",
        "atomic(() => { const s = 'a'.repeat(2**24); return s.indexOf('a'.repeat(2**20) + 'b') })",
    ] {
        let port = s.port;
        let code_ = code.to_string();
        let runner = std::thread::spawn(move || {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
            let start = Instant::now();
            (exec(&mut c, "js", &code_, &[]), start.elapsed())
        });
        let mut c = impatient(&s, Duration::from_secs(2));
        let mut slowest = Duration::ZERO;
        while !runner.is_finished() {
            let t = Instant::now();
            assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG", "`{code}`");
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        let (got, took) = runner.join().unwrap();
        assert_eq!(got, "(error) ERR script timed out: the call ran longer than rg.script-timeout (200 ms)", "`{code}`");
        assert!(took < Duration::from_millis(1000), "`{code}` ran {took:?}");
        assert!(slowest < Duration::from_millis(1000), "`{code}`: a PING took {slowest:?}");
    }
}

#[test]
fn abortexecution_stops_a_worker_script_in_a_native_loop() {
    let s = Server::start(&["script-timeout", "0"]);
    let mut c = s.conn();
    for code in [
        "const s = 'a'.repeat(2**24); s.indexOf('a'.repeat(2**20) + 'b')",
        "JSON.stringify(new Array(2**32 - 1)).length",
        "/(a+)+$/.test('a'.repeat(60) + 'b')",
    ] {
        common::assert_abort_stops(&mut c, "js", code);
    }
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
}
