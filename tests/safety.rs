//! Safe to load: registered scripts and command sequences that crashed, hung or bypassed
//! Redis before (issue "Safe to load"), each run on every server under test.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The server's (major, minor) version, as INFO reports it (Valkey 8 says 7.2).
fn version(c: &mut redis::Connection) -> (u32, u32) {
    let info = fmt(&cmd(c, &["INFO", "server"]));
    let v = info.split("redis_version:").nth(1).expect("redis_version").split(|ch: char| !(ch.is_ascii_digit() || ch == '.')).next().unwrap().to_string();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// Does the server run post-notification jobs (7.2+)?
fn has_jobs(c: &mut redis::Connection) -> bool {
    version(c) >= (7, 2)
}

/// A SQLite database file with the table `t` the recipes of these tests write to.
fn sqlite_db(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("rg-safety-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("wb.db");
    let out = std::process::Command::new("sqlite3").arg(&db).arg("CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, f TEXT)").output().expect("sqlite3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (dir, format!("sqlite://{}", db.display()))
}

fn ping(c: &mut redis::Connection) {
    assert_eq!(fmt(&cmd(c, &["PING"])), "PONG");
}

#[test]
fn internal_commands_cannot_nest_or_be_called_by_scripts() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (words, expected) in [
        (&["RG.HOOKRUN", "RG.HOOKRUN", "PING"][..], "(error) ERR rg.hookrun runs the command a hook or recipe intercepts; it cannot run 'rg.hookrun'"),
        (&["RG.WTRUN", "RG.HOOKRUN", "PING"][..], "(error) ERR rg.wtrun runs the command a hook or recipe intercepts; it cannot run 'rg.hookrun'"),
        (&["RG.HOOKRUN", "RG.WTRUN", "SET", "k", "v"][..], "(error) ERR rg.hookrun runs the command a hook or recipe intercepts; it cannot run 'rg.wtrun'"),
        (&["RG.HOOKRUN.WRITE", "rg.hookrun.write", "SET", "k", "v"][..], "(error) ERR rg.hookrun.write runs the command a hook or recipe intercepts; it cannot run 'rg.hookrun.write'"),
        (&["RG.HOOKRUN", "nosuchcmd", "a"][..], "(error) ERR unknown command 'nosuchcmd', with args beginning with: 'a' "),
        (&["RG.HOOKRUN"][..], "(error) ERR wrong number of arguments for 'rg.hookrun' command"),
    ] {
        assert_eq!(fmt(&cmd(&mut c, words)), expected, "{words:?}");
        ping(&mut c);
    }
    // A plain command through the wrapper is the command itself.
    assert_eq!(fmt(&cmd(&mut c, &["RG.HOOKRUN", "SET", "k", "v"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["GET", "k"])), "\"v\"");
    // From a script (a module call, no client of its own): refused, never a crash.
    for (lang, code) in [
        ("lua", "return execute('RG.HOOKRUN', 'PING')"),
        ("js", "execute('RG.HOOKRUN', 'PING')"),
        ("lua", "return execute('RG.WTRUN', 'SET', 'k', 'w')"),
        ("js", "execute('RG.HOOKRUN', 'RG.HOOKRUN', 'PING')"),
        ("lua", "return atomic(function() return execute('RG.HOOKRUN', 'SET', 'k', 'w') end)"),
    ] {
        let got = exec(&mut c, lang, code, &[]);
        assert!(got.contains("cannot be called from scripts or modules") || got.contains("cannot run 'rg.hookrun'"), "{lang} {code}: {got}");
        ping(&mut c);
    }
    assert_eq!(fmt(&cmd(&mut c, &["GET", "k"])), "\"v\"");
    // Inside a sync trigger (in place): the same refusal.
    exec(&mut c, "lua", "GB():foreach(function(r) execute('RG.HOOKRUN', 'RG.HOOKRUN', 'PING') end):register({prefix = 'nest:', mode = 'sync'})", &["ID", "nest"]);
    assert_eq!(fmt(&cmd(&mut c, &["SET", "nest:1", "v"])), "OK");
    ping(&mut c);
}

/// One trigger case: the registration in each language, the commands, what must hold.
struct Case {
    name: &'static str,
    lua: &'static str,
    js: &'static str,
    commands: &'static [&'static [&'static str]],
    /// (command, expected reply) checked after the commands.
    then: &'static [(&'static [&'static str], &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "DEL of the key being SET with EX",
        lua: "GB():foreach(function(r) execute('DEL', r.key) end):register({prefix = 'ex:', mode = 'sync', eventTypes = {'set'}})",
        js: "GB().foreach(r => { execute('DEL', r.key) }).register({prefix: 'ex:', mode: 'sync', eventTypes: ['set']})",
        commands: &[&["SET", "ex:1", "v", "EX", "100"], &["SET", "ex:2", "v", "PX", "100000"]],
        then: &[(&["EXISTS", "ex:1", "ex:2"], "0")],
    },
    Case {
        name: "FLUSHALL in the trigger",
        lua: "GB():foreach(function(r) execute('FLUSHALL') end):register({prefix = 'fa:', mode = 'sync', eventTypes = {'set'}})",
        js: "GB().foreach(r => { execute('FLUSHALL') }).register({prefix: 'fa:', mode: 'sync', eventTypes: ['set']})",
        commands: &[&["SET", "other", "1"], &["SET", "fa:1", "v", "EX", "100"]],
        then: &[(&["DBSIZE"], "0")],
    },
    Case {
        name: "SWAPDB in the trigger",
        lua: "GB():foreach(function(r) execute('SWAPDB', '0', '1') end):register({prefix = 'sw:', mode = 'sync', eventTypes = {'set'}})",
        js: "GB().foreach(r => { execute('SWAPDB', '0', '1') }).register({prefix: 'sw:', mode: 'sync', eventTypes: ['set']})",
        commands: &[&["SET", "sw:1", "v", "EX", "100"]],
        then: &[(&["EXISTS", "sw:1"], "0"), (&["SWAPDB", "0", "1"], "OK"), (&["EXISTS", "sw:1"], "1")],
    },
    Case {
        name: "DEL of the stream during XADD MAXLEN",
        lua: "GB():foreach(function(r) execute('DEL', r.key) end):register({prefix = 'xs:', mode = 'sync', eventTypes = {'xadd'}})",
        js: "GB().foreach(r => { execute('DEL', r.key) }).register({prefix: 'xs:', mode: 'sync', eventTypes: ['xadd']})",
        commands: &[&["XADD", "xs:1", "MAXLEN", "1", "*", "a", "b"], &["XADD", "xs:1", "MAXLEN", "1", "*", "a", "b"], &["XADD", "xs:1", "MAXLEN", "1", "*", "a", "b"]],
        then: &[(&["EXISTS", "xs:1"], "0")],
    },
    Case {
        name: "SADD of the destination during SMOVE",
        lua: "GB():foreach(function(r) execute('SADD', 'sm:dst', 'x') end):register({prefix = 'sm:src', mode = 'sync', eventTypes = {'srem'}})",
        js: "GB().foreach(r => { execute('SADD', 'sm:dst', 'x') }).register({prefix: 'sm:src', mode: 'sync', eventTypes: ['srem']})",
        commands: &[&["SADD", "sm:src", "m1"], &["SMOVE", "sm:src", "sm:dst", "m1"]],
        then: &[(&["SCARD", "sm:dst"], "2"), (&["SISMEMBER", "sm:dst", "m1"], "1"), (&["EXISTS", "sm:src"], "0")],
    },
    Case {
        name: "DEL of the source during LMOVE",
        lua: "GB():foreach(function(r) execute('DEL', 'lm:src') end):register({prefix = 'lm:src', mode = 'sync', eventTypes = {'rpop'}})",
        js: "GB().foreach(r => { execute('DEL', 'lm:src') }).register({prefix: 'lm:src', mode: 'sync', eventTypes: ['rpop']})",
        commands: &[&["RPUSH", "lm:src", "a", "b", "c"], &["LMOVE", "lm:src", "lm:dst", "RIGHT", "LEFT"]],
        then: &[(&["EXISTS", "lm:src"], "0"), (&["LRANGE", "lm:dst", "0", "-1"], "[\"c\"]")],
    },
];

#[test]
fn sync_triggers_that_write_during_the_command_that_fired_them() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for case in CASES {
        for (lang, code) in [("lua", case.lua), ("js", case.js)] {
            let label = format!("{} ({lang})", case.name);
            assert_eq!(fmt(&cmd(&mut c, &["FLUSHALL"])), "OK");
            assert_eq!(exec(&mut c, lang, code, &["ID", "w"]), "OK", "{label}");
            for words in case.commands {
                let got = fmt(&cmd(&mut c, words));
                assert!(!got.starts_with("(error)"), "{label}: {words:?} -> {got}");
            }
            ping(&mut c);
            for (words, expected) in case.then {
                assert_eq!(fmt(&cmd(&mut c, words)), *expected, "{label}: {words:?}");
            }
            let regs = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
            assert!(regs.contains("\"numFailures\", 0") && !regs.contains("\"numSuccess\", 0"), "{label}: {regs}");
            assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "w"])), "OK");
        }
    }
    assert_eq!(fmt(&cmd(&mut c, &["SELECT", "1"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["FLUSHDB"])), "OK");
}

/// The same writes in MULTI/EXEC and from EVAL: on 7.2+ the triggers run once the whole
/// transaction or script is done (post-notification jobs run after the execution unit), on
/// 7.0 after each wrapped command; either way before the reply, and never inside a command.
#[test]
fn sync_trigger_writes_inside_multi_and_eval() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let jobs = has_jobs(&mut c);
    exec(&mut c, "lua", "GB():foreach(function(r) execute('DEL', r.key) execute('INCR', 'fired') end):register({prefix = 'ex:', mode = 'sync', eventTypes = {'set'}})", &["ID", "w"]);
    let mut p = redis::pipe();
    p.atomic().cmd("SET").arg("ex:1").arg("v").arg("EX").arg("100").cmd("EXISTS").arg("ex:1").cmd("GET").arg("fired");
    let r: (String, i64, Option<String>) = p.query(&mut c).unwrap();
    let inside = if jobs { (1, None) } else { (0, Some("1".to_string())) };
    assert_eq!((r.1, r.2), inside);
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "ex:1"])), "0");
    assert_eq!(fmt(&cmd(&mut c, &["GET", "fired"])), "\"1\"");
    let got = fmt(&cmd(&mut c, &["EVAL", "redis.call('SET', KEYS[1], 'v', 'EX', 100) return redis.call('EXISTS', KEYS[1])", "1", "ex:2"]));
    assert_eq!(got, if jobs { "1" } else { "0" });
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "ex:2"])), "0");
    assert_eq!(fmt(&cmd(&mut c, &["GET", "fired"])), "\"2\"");
    // Scripts' own writes (on a worker, under its lock): the trigger runs after each call.
    let got = exec(&mut c, "js", "execute('SET', 'ex:3', 'v', 'EX', '100'); execute('EXISTS', 'ex:3')", &[]);
    assert!(!got.contains("rror"), "{got}");
    let got = exec(&mut c, "lua", "GB('ShardsIDReader'):map(function() execute('SET', 'ex:4', 'v', 'EX', '100') return execute('GET', 'fired') end):run()", &[]);
    assert!(!got.contains("rror"), "{got}");
    let got = exec(&mut c, "lua", "return atomic(function() execute('SET', 'ex:5', 'v', 'EX', '100') return execute('EXISTS', 'ex:5') end)", &[]);
    assert!(!got.contains("rror"), "{got}");
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "ex:3", "ex:4", "ex:5"])), "0");
    assert_eq!(fmt(&cmd(&mut c, &["GET", "fired"])), "\"5\"");
}

/// A key that expires (or is evicted) with no client command around it: 7.2+ runs the
/// trigger's writes as a post-notification job; 7.0 refuses them with a clear error.
#[test]
fn a_trigger_on_active_expiry() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in [
        ("lua", "GB():foreach(function(r) execute('SET', r.key, 'again') execute('INCR', 'log:expired') end):register({prefix = 'xp:', mode = 'sync', eventTypes = {'expired'}})"),
        ("js", "GB().foreach(r => { execute('SET', r.key, 'again'); execute('INCR', 'log:expired') }).register({prefix: 'xp:', mode: 'sync', eventTypes: ['expired']})"),
    ] {
        assert_eq!(fmt(&cmd(&mut c, &["FLUSHALL"])), "OK");
        assert_eq!(exec(&mut c, lang, code, &["ID", "xp"]), "OK");
        assert_eq!(fmt(&cmd(&mut c, &["SET", "xp:1", "v", "PX", "20"])), "OK");
        // Wait for active expiry without touching the key (DBSIZE counts it until then).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let regs = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
            if !regs.contains("\"numTriggered\", 0") {
                break;
            }
            assert!(Instant::now() < deadline, "{lang}: the key never expired: {regs}");
            std::thread::sleep(Duration::from_millis(20));
        }
        ping(&mut c);
        if has_jobs(&mut c) {
            common::eventually(&mut c, &["GET", "log:expired"], "\"1\"");
            assert_eq!(fmt(&cmd(&mut c, &["GET", "xp:1"])), "\"again\"");
        } else {
            let regs = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
            assert!(regs.contains("'set' cannot run in a sync trigger on this server (7.0."), "{lang}: {regs}");
            assert!(regs.contains("Register the trigger with mode 'async', or upgrade the server"), "{lang}: {regs}");
            assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "xp:1", "log:expired"])), "0");
        }
        // A client command that meets the expired key: its trigger runs after it, everywhere.
        assert_eq!(fmt(&cmd(&mut c, &["SET", "xp:2", "v", "PX", "1"])), "OK");
        std::thread::sleep(Duration::from_millis(5));
        let got = fmt(&cmd(&mut c, &["SET", "xp:2", "new"]));
        assert_eq!(got, "OK");
        let v = fmt(&cmd(&mut c, &["GET", "xp:2"]));
        assert!(v == "\"new\"" || v == "\"again\"", "{lang}: {v}");
        ping(&mut c);
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "xp"])), "OK");
    }
}

#[test]
fn a_sync_trigger_cannot_start_a_map_reduce() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in [
        ("lua", "GB():foreach(function(r) GB('KeysOnlyReader'):run('*') end):register({prefix = 'rn:', mode = 'sync'})"),
        ("js", "GB().foreach(r => { GB('KeysOnlyReader').run('*') }).register({prefix: 'rn:', mode: 'sync'})"),
    ] {
        assert_eq!(exec(&mut c, lang, code, &["ID", "rn"]), "OK");
        assert_eq!(fmt(&cmd(&mut c, &["SET", "rn:1", "v"])), "OK");
        ping(&mut c);
        let regs = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        assert!(regs.contains("run: cannot be called from a sync trigger or a command hook, which run inside the command that fired them; register with mode 'async' to run a map-reduce"), "{lang}: {regs}");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "rn"])), "OK");
    }
}

const OOM: &str = "(error) OOM command not allowed when used memory > 'maxmemory'.";

#[test]
fn wrapped_and_hooked_commands_obey_maxmemory() {
    let (dir, url) = sqlite_db("oom");
    let s = Server::start(&["connection.lite", &url]);
    let mut c = s.conn();
    exec(&mut c, "lua", "GB('CommandReader'):map(function(a) return callNext() end):register({hook = 'SET', prefix = 'hk:'})", &["ID", "hook"]);
    exec(&mut c, "lua", "GB():foreach(function(r) execute('INCR', 'fired') end):register({prefix = 'tr:', mode = 'sync'})", &["ID", "trig"]);
    exec(&mut c, "js", "import { writeBehind, sqlite } from 'gears/recipes'; writeBehind({ name: 'wb', prefix: 'wb:', target: sqlite({ connection: 'lite', table: 't' }) });", &["ID", "wb"]);
    // (A hook's reply is the value its steps give: callNext()'s +OK comes back as "OK".)
    assert_eq!(fmt(&cmd(&mut c, &["SET", "hk:keep", "v"])), "\"OK\"");
    assert_eq!(fmt(&cmd(&mut c, &["CONFIG", "SET", "maxmemory", "1"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["SET", "plain", "v"])), OOM);
    for words in [&["SET", "hk:1", "v"][..], &["SET", "tr:1", "v"][..], &["HSET", "wb:1", "f", "v"][..]] {
        let got = fmt(&cmd(&mut c, words));
        assert!(got.contains("OOM command not allowed when used memory > 'maxmemory'."), "{words:?}: {got}");
    }
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "hk:1", "tr:1", "wb:1"])), "0");
    // Scripts' own writes too; deletes still free memory.
    let got = exec(&mut c, "lua", "return execute('SET', 'x', 'y')", &[]);
    assert!(got.contains("OOM command not allowed"), "{got}");
    assert_eq!(fmt(&cmd(&mut c, &["DEL", "hk:keep"])), "1");
    assert_eq!(fmt(&cmd(&mut c, &["CONFIG", "SET", "maxmemory", "0"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["SET", "hk:1", "v"])), "\"OK\"");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrapped_and_hooked_writes_wait_for_client_pause_write() {
    let (dir, url) = sqlite_db("pause");
    let s = Server::start(&["connection.lite", &url]);
    let mut c = s.conn();
    exec(&mut c, "lua", "GB('CommandReader'):map(function(a) return callNext() end):register({hook = 'SET', prefix = 'hk:'})", &["ID", "hook"]);
    exec(&mut c, "js", "import { writeBehind, sqlite } from 'gears/recipes'; writeBehind({ name: 'wb', prefix: 'wb:', target: sqlite({ connection: 'lite', table: 't' }) });", &["ID", "wb"]);
    for words in [&["SET", "hk:1", "v"][..], &["HSET", "wb:1", "f", "v"][..]] {
        assert_eq!(fmt(&cmd(&mut c, &["CLIENT", "PAUSE", "600", "WRITE"])), "OK");
        let mut other = s.conn();
        let t = Instant::now();
        // Reads are not paused, the hooked/wrapped write is.
        assert_eq!(fmt(&cmd(&mut other, &["GET", "nothing"])), "nil");
        assert!(t.elapsed() < Duration::from_millis(300), "a read waited {:?}", t.elapsed());
        let got = fmt(&cmd(&mut other, words));
        assert!(!got.starts_with("(error)"), "{words:?}: {got}");
        assert!(t.elapsed() >= Duration::from_millis(400), "{words:?} ran during CLIENT PAUSE WRITE ({:?})", t.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recipe_writes_are_refused_while_redis_may_evict_their_stream() {
    let (dir, url) = sqlite_db("evict");
    let s = Server::start(&["connection.lite", &url]);
    let mut c = s.conn();
    exec(&mut c, "lua", "local r = require('gears.recipes') r.writeBehind({ name = 'wb', prefix = 'wb:', target = r.sqlite({ connection = 'lite', table = 't' }) })", &["ID", "wb"]);
    assert_eq!(fmt(&cmd(&mut c, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])), "OK");
    // No maxmemory: nothing is evicted.
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "wb:1", "f", "v"])), "1");
    assert_eq!(fmt(&cmd(&mut c, &["CONFIG", "SET", "maxmemory", "1gb"])), "OK");
    assert_eq!(
        fmt(&cmd(&mut c, &["HSET", "wb:2", "f", "v"])),
        "(error) ERR write-behind 'wb' cannot capture changes: maxmemory-policy is allkeys-lru, under which Redis may evict its stream and lose changes not yet applied (use noeviction or a volatile-* policy); writes to keys under 'wb:' are refused so that none is acknowledged without being captured"
    );
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "wb:2"])), "0");
    // Other keys are not concerned.
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "other", "f", "v"])), "1");
    assert_eq!(fmt(&cmd(&mut c, &["CONFIG", "SET", "maxmemory-policy", "volatile-lru"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "wb:2", "f", "v"])), "1");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis's own "RESTORE can set LRU": a key's idle time stays what RESTORE set, whether a
/// registration watches it or not.
#[test]
fn event_handlers_leave_lru_as_it_was() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "lua", "GB():foreach(function(r) execute('INCR', 'fired') end):register({prefix = 'lru:', mode = 'sync'})", &["ID", "lru"]);
    exec(&mut c, "js", "GB().foreach(r => { execute('INCR', 'fired2') }).register({prefix: 'lru:', mode: 'sync', keyTypes: ['string']})", &["ID", "lru2"]);
    assert_eq!(fmt(&cmd(&mut c, &["SET", "src", "value"])), "OK");
    let payload: Vec<u8> = redis::cmd("DUMP").arg("src").query(&mut c).unwrap();
    for key in ["lru:1", "other:1"] {
        let r: String = redis::cmd("RESTORE").arg(key).arg(0).arg(&payload).arg("IDLETIME").arg(1000).query(&mut c).unwrap();
        assert_eq!(r, "OK");
        let idle: i64 = redis::cmd("OBJECT").arg("IDLETIME").arg(key).query(&mut c).unwrap();
        assert!((1000..1010).contains(&idle), "{key}: idle {idle}");
    }
    assert_eq!(fmt(&cmd(&mut c, &["MGET", "fired", "fired2"])), "[\"1\", \"1\"]");
}

/// Lua's 0/0 is sent as RESP3 `nan` (not `-nan`).
#[test]
fn nan_is_sent_as_resp3_nan() {
    let s = Server::start(&[]);
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let code = "GB('ShardsIDReader'):map(function(r) return 0/0 end):run()";
    let req = format!("*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*3\r\n$7\r\nRG.EXEC\r\n$3\r\nlua\r\n${}\r\n{code}\r\n", code.len());
    sock.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains(",nan\r\n") && !String::from_utf8_lossy(&got).contains(",-nan\r\n") {
        assert!(Instant::now() < deadline, "no double in {:?}", String::from_utf8_lossy(&got));
        let mut buf = [0u8; 4096];
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains(",nan\r\n") && !text.contains("-nan"), "{text:?}");
}

/// `atomic()` blocks back to back: Redis serves other clients between them.
#[test]
fn back_to_back_atomic_blocks_leave_room_for_other_clients() {
    let s = Server::start(&["script-timeout", "1000"]);
    let mut c = s.conn();
    for (lang, code) in [
        ("lua", "for i = 1, 25 do atomic(function() local x = 0 for j = 1, 10000000 do x = x + j end execute('INCR', 'blocks') end) end"),
        ("js", "for (let i = 0; i < 25; i++) { atomic(() => { let x = 0; for (let j = 0; j < 3000000; j++) { x += j; } execute('INCR', 'blocks'); }); }"),
    ] {
        cmd(&mut c, &["DEL", "blocks"]);
        let id = exec(&mut c, lang, code, &["UNBLOCKING"]);
        let id = id.trim_matches('"').to_string();
        let mut p = s.conn();
        let mut latencies = Vec::new();
        let started = Instant::now();
        loop {
            let done = fmt(&cmd(&mut c, &["GET", "blocks"])) == "\"25\"";
            if done || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            let t = Instant::now();
            ping(&mut p);
            latencies.push(t.elapsed());
        }
        assert_eq!(fmt(&cmd(&mut c, &["GET", "blocks"])), "\"25\"", "{lang}: {id}");
        latencies.sort();
        let p99 = latencies[latencies.len() * 99 / 100];
        eprintln!("{lang}: {} PINGs in {:?}, p99 {p99:?}, worst {:?}", latencies.len(), started.elapsed(), latencies.last().unwrap());
        assert!(latencies.len() > 100, "{lang}: only {} PINGs answered in {:?}", latencies.len(), started.elapsed());
        assert!(p99 < Duration::from_millis(50), "{lang}: PING p99 {p99:?}");
    }
}
