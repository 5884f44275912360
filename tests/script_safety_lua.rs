//! Lua library functions that loop in C (string.rep, pattern matching, table functions) are
//! bounded by the time limit and RG.ABORTEXECUTION like script code: Redis keeps answering.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};

const TIMEOUT_ERROR: &str = "script timed out: the call ran longer than rg.script-timeout (200 ms)";

/// Runs `f` on another connection while this one PINGs; every PING must answer within
/// `max_ping`. Returns what `f` returned and how long it took.
fn with_pings<T: Send + 'static>(
    s: &Server,
    max_ping: Duration,
    f: impl FnOnce(&mut redis::Connection) -> T + Send + 'static,
) -> (T, Duration) {
    let mut other = s.conn();
    let start = Instant::now();
    let runner = std::thread::spawn(move || {
        let r = f(&mut other);
        (r, start.elapsed())
    });
    let mut c = s.conn();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut slowest = Duration::ZERO;
    while !runner.is_finished() {
        let t = Instant::now();
        assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
        slowest = slowest.max(t.elapsed());
        assert!(t.elapsed() < max_ping, "PING took {:?} while the script ran", t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("slowest PING while the script ran: {slowest:?}");
    runner.join().unwrap()
}

#[test]
fn atomic_library_loops_end_within_the_time_limit_while_ping_answers() {
    let s = Server::start(&["script-timeout", "200"]);
    let mut c = s.conn();
    // was: Redis stopped answering for good
    let (got, took) = with_pings(&s, Duration::from_millis(1000), |c| {
        exec(c, "lua", "return atomic(function() return #string.rep('', 2^40) end)", &[])
    });
    assert_eq!(got, "0");
    assert!(took < Duration::from_millis(500), "{took:?}");
    for code in [
        "return atomic(function() return string.rep(',', 3000):match('^(.-),(.-),(.-);$') end)",
        "return atomic(function() return pcall(string.gsub, string.rep('a', 5000), string.rep('a*', 30) .. 'b', '') end)",
        "return atomic(function() return table.concat(setmetatable({}, {__index = rawlen}), '', 1, 2^40) end)",
        "return atomic(function() return table.move({}, 1, 2^40, 2) end)",
    ] {
        let (got, took) = with_pings(&s, Duration::from_millis(1000), move |c| exec(c, "lua", code, &[]));
        assert_eq!(got, format!("(error) ERR {TIMEOUT_ERROR}"), "{code}");
        assert!(took < Duration::from_millis(1500), "`{code}` took {took:?}");
    }
    assert_eq!(exec(&mut c, "lua", "return ('a,b,c;'):match('^(.-),(.-),(.-);$')", &[]), r#""a""#);
}

#[test]
fn a_sync_trigger_matching_a_hostile_value_does_not_stall_the_set() {
    let s = Server::start(&["script-timeout", "200"]);
    let mut c = s.conn();
    let trigger = "GB():foreach(function(r) local a, b, c = r.value:match('^(.-),(.-),(.-);$') end)\
                   :register({prefix = 'csv:', mode = 'sync', eventTypes = {'set'}})";
    assert_eq!(exec(&mut c, "lua", trigger, &["ID", "csv"]), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["SET", "csv:ok", "a,b,c;"])), "OK");
    let value = ",".repeat(3000);
    // was: 1200 commas took 2.3 s, 3000 never answered
    let (got, took) = with_pings(&s, Duration::from_millis(1000), move |c| fmt(&cmd(c, &["SET", "csv:evil", &value])));
    eprintln!("SET replied {got} after {took:?}");
    assert!(took < Duration::from_millis(1500), "SET took {took:?}");
    assert_eq!(got, "OK");
    let regs = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
    assert!(regs.contains(TIMEOUT_ERROR), "{regs}");
    assert_eq!(fmt(&cmd(&mut c, &["STRLEN", "csv:evil"])), "3000");
}

#[test]
fn abortexecution_stops_a_worker_script_inside_a_library_call() {
    let s = Server::start(&["script-timeout", "0"]);
    let mut c = s.conn();
    for code in [
        "return string.rep(',', 20000):match('^(.-),(.-),(.-);$')",
        "for a in string.gmatch(string.rep(',', 20000), '(.-),(.-),(.-);') do end",
        "return string.gsub(string.rep('a', 5000), string.rep('a*', 30) .. 'b', '')",
        "return string.find(string.rep('(', 1000000), '%b()')",
        "return table.move({}, 1, 2^40, 2)",
    ] {
        common::assert_abort_stops(&mut c, "lua", code);
    }
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
}

#[test]
fn the_same_loops_on_a_worker_end_at_the_time_limit() {
    let s = Server::start(&["script-timeout", "200"]);
    let mut c = s.conn();
    let start = Instant::now();
    let got = exec(&mut c, "lua", "return string.rep(',', 3000):match('^(.-),(.-),(.-);$')", &[]);
    assert_eq!(got, format!("(error) ERR {TIMEOUT_ERROR}"));
    assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
    // pcall cannot swallow it
    let got = exec(&mut c, "lua", "local ok = pcall(string.match, string.rep(',', 3000), '^(.-),(.-),(.-);$') return 'swallowed'", &[]);
    assert_eq!(got, format!("(error) ERR {TIMEOUT_ERROR}"));
    // deep nesting is an error, not a crash
    let got = exec(&mut c, "lua", "local function f(s) return (s:gsub('.', f)) end return f(string.rep('a', 300))", &[]);
    assert!(got.starts_with("(error)"), "{got}");
    let got = exec(&mut c, "lua", "local function f() return load(f) end return f()", &[]);
    assert!(got.starts_with("(error)"), "{got}");
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
}
