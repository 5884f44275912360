//! Command hooks (`GB('CommandReader'):register({hook = ...})`): rewriting, rejecting and
//! replacing calls of existing commands, in Lua and JavaScript.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};

#[test]
fn a_hook_rewrites_rejects_or_replaces_a_command() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (lang, rewrite, replace) in [
        (
            "lua",
            "GB('CommandReader'):map(function(a) if a[2]:sub(1, 3) == 'ro:' then error('read-only key ' .. a[2]) end local args = {a[2]} for i = 3, #a do args[#args + 1] = string.upper(a[i]) end return callNext(table.unpack(args)) end):register({hook = 'HSET', prefix = 'ro:'})",
            "GB('CommandReader'):map(function(a) return 'hooked ' .. a[2] end):register({hook = 'get', prefix = 'virtual:'})",
        ),
        (
            "js",
            "GB('CommandReader').map(a => { if (a[1].startsWith('ro:')) throw new Error('read-only key ' + a[1]); return callNext(a[1], ...a.slice(2).map(x => x.toUpperCase())); }).register({hook: 'HSET', prefix: 'ro:'})",
            "GB('CommandReader').map(a => 'hooked ' + a[1]).register({hook: 'get', prefix: 'virtual:'})",
        ),
    ] {
        cmd(&mut c, &["FLUSHALL"]);
        assert_eq!(exec(&mut c, lang, rewrite, &["ID", "guard"]), "OK");
        assert!(fmt(&cmd(&mut c, &["HSET", "ro:1", "f", "v"])).contains("read-only key ro:1"), "{lang}");
        assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "ro:1"])), "0", "{lang}: a refused command ran");
        // Keys outside the prefix are not hooked.
        assert_eq!(fmt(&cmd(&mut c, &["HSET", "rw:1", "f", "v"])), "1");
        assert_eq!(exec(&mut c, lang, replace, &["ID", "virtual"]), "OK");
        assert_eq!(fmt(&cmd(&mut c, &["GET", "virtual:a"])), r#""hooked virtual:a""#, "{lang}");
        cmd(&mut c, &["SET", "real", "1"]);
        assert_eq!(fmt(&cmd(&mut c, &["GET", "real"])), r#""1""#);
        // Commands from EVAL are not hooked.
        assert_eq!(fmt(&cmd(&mut c, &["EVAL", "return redis.call('GET', KEYS[1])", "1", "virtual:a"])), "nil");
        let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        assert!(dump.contains(r#""hook", "get", "prefix", "virtual:""#), "{dump}");
        cmd(&mut c, &["RG.DROPSESSION", "guard"]);
        cmd(&mut c, &["RG.DROPSESSION", "virtual"]);
        assert_eq!(fmt(&cmd(&mut c, &["GET", "virtual:a"])), "nil", "{lang}: a dropped hook still fired");
    }
}

#[test]
fn call_next_rewrites_arguments_and_reaches_replicas() {
    let primary = Server::start(&[]);
    let replica = Server::start_with(&[], &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    exec(&mut p, "js", "GB('CommandReader').map(a => callNext(a[1], ...a.slice(2).map(x => x.toUpperCase()))).register({hook: 'hset'})", &["ID", "upper"]);
    assert_eq!(fmt(&cmd(&mut p, &["HSET", "h", "name", "alice"])), "1");
    assert_eq!(fmt(&cmd(&mut p, &["HGETALL", "h"])), r#"["NAME", "ALICE"]"#);
    cmd(&mut p, &["WAIT", "1", "5000"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fmt(&cmd(&mut r, &["HGETALL", "h"])) != r#"["NAME", "ALICE"]"# {
        assert!(Instant::now() < deadline, "the rewritten write did not reach the replica: {}", fmt(&cmd(&mut r, &["HGETALL", "h"])));
        std::thread::sleep(Duration::from_millis(20));
    }
    // callNext() without arguments runs the call as the client sent it.
    exec(&mut p, "lua", "GB('CommandReader'):map(function(a) return callNext() end):register({hook = 'incr'})", &["ID", "same"]);
    assert_eq!(fmt(&cmd(&mut p, &["INCR", "n"])), "1");
    assert_eq!(fmt(&cmd(&mut p, &["INCR", "n"])), "2");
}

#[test]
fn call_next_runs_with_the_clients_permissions() {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    exec(&mut admin, "lua", "GB('CommandReader'):map(function(a) return callNext() end):register({hook = 'set'})", &["ID", "pass"]);
    cmd(&mut admin, &["ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@all", "-set"]);
    let mut user = s.conn();
    cmd(&mut user, &["AUTH", "reader", "pw"]);
    assert!(fmt(&cmd(&mut user, &["SET", "k", "v"])).contains("NOPERM"));
    assert_eq!(fmt(&cmd(&mut admin, &["EXISTS", "k"])), "0");
    // A hook that answers without calling the command still needs the client to be allowed it.
    exec(&mut admin, "js", "GB('CommandReader').map(a => 'answer').register({hook: 'get'})", &["ID", "answers"]);
    cmd(&mut admin, &["ACL", "SETUSER", "nogets", "on", ">pw", "~*", "+@all", "-get"]);
    let mut nogets = s.conn();
    cmd(&mut nogets, &["AUTH", "nogets", "pw"]);
    assert!(fmt(&cmd(&mut nogets, &["GET", "x"])).contains("NOPERM"));
    assert_eq!(fmt(&cmd(&mut admin, &["GET", "x"])), r#""answer""#);
}

#[test]
fn hook_bad_input() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "js", "GB('CommandReader').register({hook: 'del'})", &["ID", "first"]);
    for (lang, code, expected) in [
        ("lua", "GB('CommandReader'):register({hook = 'RG.EXEC'})", "register: cannot hook 'rg.exec'"),
        ("js", "GB('CommandReader').register({hook: 'set', trigger: 'x'})", "either a trigger or a hook, not both"),
        ("lua", "GB('CommandReader'):register({hook = 'set', mode = 'async'})", "mode must be 'sync'"),
        ("js", "GB('CommandReader').register({trigger: 't', prefix: 'a'})", "prefix applies to hooks"),
        ("lua", "GB('CommandReader'):register({hook = 'del'})", "command 'del' is already hooked (session 'first')"),
        ("js", "callNext()", "callNext: only a command hook can call the command it hooks"),
    ] {
        let got = exec(&mut c, lang, code, &[]);
        assert!(got.contains(expected), "{lang} `{code}`: {got}");
    }
}
