//! Registrations: keyspace triggers (sync and async), command triggers, sessions with
//! UPGRADE, and the registration admin commands, in Lua and in JavaScript.

mod common;

use common::{eventually, canon::fmt, cmd, exec, Server};


/// (language, script) pairs doing the same thing.
fn both(lua: &str, js: &str) -> [(&'static str, String); 2] {
    [("lua", lua.to_string()), ("js", js.to_string())]
}

#[test]
fn sync_keyspace_trigger_writes_inside_the_command() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in both(
        "GB():foreach(function(r) execute('HSET', 'audit:' .. r.key, 'event', r.event, 'name', r.value.name) end):register({prefix = 'user:', mode = 'sync', eventTypes = {'hset'}})",
        "GB().foreach(r => execute('HSET', 'audit:' + r.key, 'event', r.event, 'name', r.value.name)).register({prefix: 'user:', mode: 'sync', eventTypes: ['hset']})",
    ) {
        cmd(&mut c, &["FLUSHALL"]);
        assert_eq!(exec(&mut c, lang, &code, &["ID", &format!("audit-{lang}")]), "OK");
        cmd(&mut c, &["HSET", "user:1", "name", "alice"]);
        // No waiting: the trigger ran inside HSET.
        assert_eq!(fmt(&cmd(&mut c, &["HGETALL", "audit:user:1"])), r#"["event", "hset", "name", "alice"]"#, "{lang}");
        cmd(&mut c, &["SET", "other:1", "x"]);
        cmd(&mut c, &["DEL", "user:1"]);
        assert_eq!(fmt(&cmd(&mut c, &["KEYS", "audit:*"])), r#"["audit:user:1"]"#, "{lang}: only hset on user:* fires");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", &format!("audit-{lang}")])), "OK");
        cmd(&mut c, &["HSET", "user:2", "name", "bob"]);
        assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "audit:user:2"])), "0", "{lang}: dropped session still fires");
    }
}

#[test]
fn async_keyspace_trigger_and_key_type_filter() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in both(
        "GB('KeysOnlyReader'):foreach(function(r) execute('INCR', 'seen:' .. r.type) end):register({keyTypes = {'hash'}})",
        "GB('KeysOnlyReader').foreach(r => execute('INCR', 'seen:' + r.type)).register({keyTypes: ['hash']})",
    ) {
        cmd(&mut c, &["FLUSHALL"]);
        exec(&mut c, lang, &code, &["ID", "counter", "UPGRADE"]).starts_with("(error) ERR no session").then(|| exec(&mut c, lang, &code, &["ID", "counter"]));
        for i in 0..20 {
            cmd(&mut c, &["HSET", &format!("h:{i}"), "f", "v"]);
            cmd(&mut c, &["SET", &format!("s:{i}"), "v"]);
        }
        eventually(&mut c, &["GET", "seen:hash"], r#""20""#);
        assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "seen:string"])), "0", "{lang}");
    }
}

#[test]
fn a_trigger_does_not_fire_itself() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in both(
        "GB():foreach(function(r) execute('HINCRBY', r.key, 'writes', 1) end):register({prefix = 'loop:', mode = 'sync'})",
        "GB().foreach(r => execute('HINCRBY', r.key, 'writes', 1)).register({prefix: 'loop:', mode: 'sync'})",
    ) {
        cmd(&mut c, &["FLUSHALL"]);
        exec(&mut c, lang, &code, &["ID", &format!("loop-{lang}")]);
        cmd(&mut c, &["HSET", "loop:1", "a", "1"]);
        assert_eq!(fmt(&cmd(&mut c, &["HGET", "loop:1", "writes"])), r#""1""#, "{lang}");
        cmd(&mut c, &["RG.DROPSESSION", &format!("loop-{lang}")]);
    }
}

/// The same for an async trigger: its write (on a worker) used to fire it again, without
/// end (tens of thousands of firings a second for one HSET).
#[test]
fn an_async_trigger_does_not_fire_itself() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code) in both(
        "GB():foreach(function(r) execute('HINCRBY', r.key, 'writes', 1) end):register({prefix = 'aloop:', mode = 'async'})",
        "GB().foreach(r => execute('HINCRBY', r.key, 'writes', 1)).register({prefix: 'aloop:', mode: 'async'})",
    ) {
        cmd(&mut c, &["FLUSHALL"]);
        assert_eq!(exec(&mut c, lang, &code, &["ID", &format!("aloop-{lang}")]), "OK");
        cmd(&mut c, &["HSET", "aloop:1", "a", "1"]);
        eventually(&mut c, &["HGET", "aloop:1", "writes"], r#""1""#);
        // Give a loop time to show: a firing takes well under a millisecond.
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(fmt(&cmd(&mut c, &["HGET", "aloop:1", "writes"])), r#""1""#, "{lang}: the trigger fired itself");
        let regs = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        assert!(regs.contains(r#""numTriggered", 1,"#), "{lang}: {regs}");
        cmd(&mut c, &["RG.DROPSESSION", &format!("aloop-{lang}")]);
    }
}

#[test]
fn command_triggers_sync_and_async() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for mode in ["sync", "async"] {
        for (lang, code) in both(
            &format!("GB('CommandReader'):map(function(a) return table.concat(a, '+', 2) end):register({{trigger = 'join', mode = '{mode}'}})"),
            &format!("GB('CommandReader').map(a => a.slice(1).join('+')).register({{trigger: 'join', mode: '{mode}'}})"),
        ) {
            assert_eq!(exec(&mut c, lang, &code, &["ID", "joiner"]), "OK");
            assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "join", "a", "b", "c"])), r#"["a+b+c"]"#, "{lang} {mode}");
            assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "joiner"])), "OK");
        }
    }
    assert!(fmt(&cmd(&mut c, &["RG.TRIGGER", "join"])).contains("no registration for trigger 'join'"));
    // RG.TRIGGERONKEY declares its key, so cluster clients can route it.
    assert_eq!(fmt(&cmd(&mut c, &["COMMAND", "GETKEYS", "RG.TRIGGERONKEY", "join", "user:7", "x"])), r#"["user:7"]"#);
    assert!(fmt(&cmd(&mut c, &["RG.TRIGGERONKEY", "join"])).contains("wrong number of arguments"));
    assert!(fmt(&cmd(&mut c, &["RG.TRIGGER"])).contains("wrong number of arguments"));
    // A step error is the command's error.
    exec(&mut c, "js", "GB('CommandReader').map(a => { throw new Error('no ' + a[1]) }).register({trigger: 'fail'})", &["ID", "failing"]);
    assert!(fmt(&cmd(&mut c, &["RG.TRIGGER", "fail", "way"])).contains("no way"));
    // Trigger names are unique across sessions.
    let got = exec(&mut c, "lua", "GB('CommandReader'):register({trigger = 'fail'})", &["ID", "other"]);
    assert!(got.contains("a registration for trigger 'fail' already exists (session 'failing')"), "{got}");
}

#[test]
fn sessions_upgrade_atomically_and_refuse_bad_upgrades() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, v1, v2, broken) in [
        ("lua", "GB('CommandReader'):map(function() return 'v1' end):register({trigger = 'version'})", "GB('CommandReader'):map(function() return 'v2' end):register({trigger = 'version'})", "GB('CommandReader'):register({trigger = 'version', mode = 'never'})"),
        ("js", "GB('CommandReader').map(() => 'v1').register({trigger: 'version'})", "GB('CommandReader').map(() => 'v2').register({trigger: 'version'})", "GB('CommandReader').register({trigger: 'version', mode: 'never'})"),
    ] {
        assert_eq!(exec(&mut c, lang, v1, &["ID", "app"]), "OK");
        assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "version"])), r#"["v1"]"#);
        assert!(exec(&mut c, lang, v2, &["ID", "app"]).contains("session 'app' already exists: add UPGRADE"));
        assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "version"])), r#"["v1"]"#);
        // A failing new version changes nothing.
        assert!(exec(&mut c, lang, broken, &["ID", "app", "UPGRADE"]).contains("mode must be"));
        assert!(exec(&mut c, lang, "GB(", &["ID", "app", "UPGRADE"]).starts_with("(error)"));
        assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "version"])), r#"["v1"]"#);
        assert_eq!(exec(&mut c, lang, v2, &["ID", "app", "UPGRADE"]), "OK");
        assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "version"])), r#"["v2"]"#);
        assert!(exec(&mut c, lang, v2, &["ID", "missing", "UPGRADE"]).contains("no session 'missing' to upgrade"));
        assert!(exec(&mut c, lang, v2, &["UPGRADE"]).contains("UPGRADE needs the ID"));
        cmd(&mut c, &["RG.DROPSESSION", "app"]);
    }
}

#[test]
fn registration_admin_commands() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "lua", "GB():foreach(function(r) if r.value.bad then error('bad value') end execute('INCR', 'n') end):register({prefix = 'k:', mode = 'sync', description = 'counts'})", &["ID", "s1", "DESCRIPTION", "session one"]);
    cmd(&mut c, &["HSET", "k:1", "ok", "1"]);
    cmd(&mut c, &["HSET", "k:2", "bad", "1"]);
    let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
    for part in [r#""id", "s1/0""#, r#""session", "s1""#, r#""reader", "KeysReader""#, r#""description", "counts""#, r#""mode", "sync""#, r#""prefix", "k:""#, r#""numTriggered", 2"#, r#""numSuccess", 1"#, r#""numFailures", 1"#, r#""numAborted", 0"#, "bad value", r#""status", "active""#] {
        assert!(dump.contains(part), "{part} missing in {dump}");
    }
    let info: String = redis::cmd("INFO").arg("rg").query(&mut c).unwrap();
    for field in ["rg_sessions:1", "rg_registrations:1", "rg_trigger_calls:2", "rg_trigger_failures:1", "rg_registrations_paused:0"] {
        assert!(info.contains(field), "{field} missing in {info}");
    }
    assert_eq!(fmt(&cmd(&mut c, &["RG.PAUSEREGISTRATIONS", "s1/0"])), "OK");
    cmd(&mut c, &["HSET", "k:3", "ok", "1"]);
    assert_eq!(fmt(&cmd(&mut c, &["GET", "n"])), r#""1""#);
    assert!(fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"])).contains(r#""status", "paused""#));
    assert!(fmt(&cmd(&mut c, &["RG.PAUSEREGISTRATIONS", "s1/0", "nope"])).contains("no registration 'nope'"));
    assert_eq!(fmt(&cmd(&mut c, &["RG.UNPAUSEREGISTRATIONS", "s1/0"])), "OK");
    cmd(&mut c, &["HSET", "k:4", "ok", "1"]);
    assert_eq!(fmt(&cmd(&mut c, &["GET", "n"])), r#""2""#);
    assert_eq!(fmt(&cmd(&mut c, &["RG.CLEARREGISTRATIONSSTATS"])), "OK");
    assert!(fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"])).contains(r#""numTriggered", 0"#));
    let sessions = fmt(&cmd(&mut c, &["RG.DUMPSESSIONS"]));
    assert!(sessions.contains(r#""id", "s1", "language", "lua", "description", "session one", "user", "default", "registrations", ["s1/0"]"#), "{sessions}");
    assert!(!sessions.contains("source"));
    assert!(fmt(&cmd(&mut c, &["RG.DUMPSESSIONS", "VERBOSE"])).contains(r#""source", "GB():foreach"#));
    assert_eq!(fmt(&cmd(&mut c, &["RG.UNREGISTER", "s1/0"])), "OK");
    cmd(&mut c, &["HSET", "k:5", "ok", "1"]);
    assert_eq!(fmt(&cmd(&mut c, &["GET", "n"])), r#""2""#);
    assert!(fmt(&cmd(&mut c, &["RG.UNREGISTER", "s1/0"])).contains("no registration 's1/0'"));
    assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "s1"])), "OK");
    assert!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "s1"])).contains("no session 's1'"));
    assert_eq!(fmt(&cmd(&mut c, &["RG.DUMPSESSIONS"])), "[]");
}

#[test]
fn register_bad_input() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, code, expected) in [
        ("lua", "GB():register({prefix = 1})", "register: prefix must be a string, got integer"),
        ("js", "GB().register({prefix: 1})", "register: prefix must be a string, got integer"),
        ("lua", "GB():register({bogus = 1})", "register: unknown option 'bogus'"),
        ("js", "GB().register({bogus: 1})", "register: unknown option 'bogus'"),
        ("lua", "GB():register({keyTypes = {'tree'}})", "register: unknown key type 'tree'"),
        ("js", "GB().register({eventTypes: 'hset'})", "register: eventTypes must be a list of strings"),
        ("lua", "GB():register({readValue = 'yes'})", "register: readValue must be a boolean"),
        ("js", "GB('CommandReader').register({})", "register: a CommandReader needs a trigger name"),
        ("lua", "GB('ShardsIDReader'):register({})", "register: a ShardsIDReader cannot be registered"),
        ("js", "GB().register({mode: 'later'})", "register: mode must be 'sync', 'async' or 'async_local', got 'later'"),
        ("lua", "atomic(function() GB():register() end)", "register: cannot be called inside a run() or atomic()"),
        ("js", "GB('CommandReader').run()", "run: a CommandReader has no data to run over"),
        // A session must be restorable where the keyspace cannot be used (RDB load, replica).
        ("lua", "execute('SET', 'x', '1') GB():register({prefix = 'a:'})", "the session could not be restored after a restart or on a replica"),
        ("js", "GB().register({prefix: execute('GET', 'p') || 'a:'})", "the session could not be restored after a restart or on a replica"),
    ] {
        let got = exec(&mut c, lang, code, &["ID", "bad"]);
        assert!(got.contains(expected), "{lang} `{code}`: {got}");
    }
    // Nothing was half-registered.
    assert_eq!(fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"])), "[]");
}

#[test]
fn triggers_run_with_the_registering_users_permissions() {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    cmd(&mut admin, &["ACL", "SETUSER", "app", "on", ">pw", "~app:*", "+@all"]);
    let mut app = s.conn();
    cmd(&mut app, &["AUTH", "app", "pw"]);
    exec(&mut app, "js", "GB().foreach(r => { execute('SET', 'app:copy', r.key); execute('SET', 'secret:copy', r.key) }).register({prefix: 'app:in', mode: 'sync'})", &["ID", "copier"]);
    cmd(&mut admin, &["SET", "app:in", "1"]);
    assert_eq!(fmt(&cmd(&mut admin, &["GET", "app:copy"])), r#""app:in""#);
    assert_eq!(fmt(&cmd(&mut admin, &["EXISTS", "secret:copy"])), "0");
    assert!(fmt(&cmd(&mut admin, &["RG.DUMPREGISTRATIONS"])).contains("NOPERM"));
}

#[test]
fn sync_trigger_writes_reach_a_replica_which_fires_nothing() {
    let primary = Server::start(&[]);
    let replica = Server::start_with(&[], &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    // The same session on both (registrations are not replicated yet): only the primary fires.
    let code = "GB():foreach(function(r) execute('INCR', 'fired') end):register({prefix = 'user:', mode = 'sync'})";
    exec(&mut p, "lua", code, &["ID", "s"]);
    exec(&mut r, "lua", code, &["ID", "s"]);
    cmd(&mut p, &["HSET", "user:1", "a", "1"]);
    cmd(&mut p, &["WAIT", "1", "2000"]);
    assert_eq!(fmt(&cmd(&mut p, &["GET", "fired"])), r#""1""#);
    eventually(&mut r, &["GET", "fired"], r#""1""#);
    assert_eq!(fmt(&cmd(&mut r, &["HGET", "user:1", "a"])), r#""1""#);
}

#[test]
fn upgrade_is_atomic_under_concurrent_writes() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "lua", "GB('KeysOnlyReader'):foreach(function(r) execute('RPUSH', 'log', 'v1') end):register({prefix = 'w:', mode = 'sync'})", &["ID", "atomic"]);
    let port = s.port;
    // The writer writes until it is stopped once v2 has fired: a fixed number of writes
    // could all be done before the upgrade (sync triggers are fast).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut w = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
        let mut n = 0usize;
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
            cmd(&mut w, &["SET", &format!("w:{n}"), "x"]);
            n += 1;
        }
        n
    });
    // The upgrade comes once v1 has fired, while the writer writes.
    common::wait_until(20, "the writer's first write to fire", || match redis::cmd("LLEN").arg("log").query::<usize>(&mut c) {
        Ok(n) if n > 0 => Ok(()),
        other => Err(format!("{other:?}")),
    });
    assert_eq!(exec(&mut c, "js", "GB('KeysOnlyReader').foreach(r => { execute('RPUSH', 'log', 'v2') }).register({prefix: 'w:', mode: 'sync'})", &["ID", "atomic", "UPGRADE"]), "OK");
    common::wait_until(20, "the writer's writes to fire v2", || match redis::cmd("LPOS").arg("log").arg("v2").query::<Option<usize>>(&mut c) {
        Ok(Some(_)) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    let log: Vec<String> = redis::cmd("LRANGE").arg("log").arg(0).arg(-1).query(&mut c).unwrap();
    // Every write fired exactly one version, and once v2 was live v1 never fired again.
    assert_eq!(log.len(), writes);
    let switch = log.iter().position(|v| v == "v2").expect("v2 never fired");
    assert!(log[..switch].iter().all(|v| v == "v1") && log[switch..].iter().all(|v| v == "v2"), "versions interleaved");
    assert!(switch > 0, "the upgrade happened before any write: the test did not overlap them");
}

#[test]
fn a_user_cannot_register_on_keys_it_may_not_read() {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    cmd(&mut admin, &["ACL", "SETUSER", "app", "on", ">pw", "~app:*", "+@all"]);
    let mut app = s.conn();
    cmd(&mut app, &["AUTH", "app", "pw"]);
    for (lang, code) in [
        ("lua", "GB():register({prefix = 'secret:'})"),
        ("js", "GB('StreamReader').register({prefix: 'secret:'})"),
        ("lua", "GB():register({})"),
    ] {
        let got = exec(&mut app, lang, code, &[]);
        assert!(got.contains("may not read keys starting with"), "{lang} `{code}`: {got}");
    }
    assert_eq!(exec(&mut app, "js", "GB().register({prefix: 'app:'})", &[]), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.DUMPSESSIONS"])).matches("\"user\", \"app\"").count(), 1);
}

/// Commands in an AOF file (RESP arrays), as lists of arguments.
fn aof_commands(path: &std::path::Path) -> Vec<Vec<String>> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 0;
    let line = |i: &mut usize| -> Option<String> {
        let start = *i;
        while *i + 1 < data.len() && !(data[*i] == b'\r' && data[*i + 1] == b'\n') {
            *i += 1;
        }
        let l = String::from_utf8_lossy(data.get(start..*i)?).into_owned();
        *i += 2;
        Some(l)
    };
    while i < data.len() {
        let Some(head) = line(&mut i) else { break };
        let Some(n) = head.strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) else { continue };
        let mut cmd = Vec::new();
        for _ in 0..n {
            let len: usize = line(&mut i).and_then(|l| l.strip_prefix('$').and_then(|x| x.parse().ok())).unwrap_or(0);
            cmd.push(String::from_utf8_lossy(data.get(i..i + len).unwrap_or_default()).into_owned());
            i += len + 2;
        }
        out.push(cmd);
    }
    out
}

#[test]
fn sync_trigger_writes_are_in_the_aof_in_the_same_transaction() {
    let s = Server::start_with(&[], &["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = s.conn();
    exec(&mut c, "js", "GB('KeysOnlyReader').foreach(r => { execute('INCR', 'fired:' + r.key) }).register({prefix: 'user:', mode: 'sync'})", &["ID", "aof"]);
    cmd(&mut c, &["HSET", "user:1", "a", "1"]);
    let dir = s.dir.join("appendonlydir");
    let incr = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().ends_with(".incr.aof")).expect("incr AOF file");
    let cmds = aof_commands(&incr);
    let names: Vec<String> = cmds.iter().map(|c| c[0].to_ascii_uppercase()).collect();
    let hset = cmds.iter().position(|c| c[0].eq_ignore_ascii_case("HSET") && c[1] == "user:1").expect("HSET in the AOF");
    let incr_at = cmds.iter().position(|c| c[0].eq_ignore_ascii_case("INCR") && c[1] == "fired:user:1").expect("the trigger's INCR in the AOF");
    let (lo, hi) = (hset.min(incr_at), hset.max(incr_at));
    let multi = names[..lo].iter().rposition(|n| n == "MULTI").expect("MULTI before the writes");
    let exec_at = names[hi..].iter().position(|n| n == "EXEC").map(|p| p + hi).expect("EXEC after the writes");
    assert!(!names[multi + 1..exec_at].iter().any(|n| n == "EXEC" || n == "MULTI"), "the HSET and the trigger's write are not in one transaction: {names:?}");
}
