//! Shared recipe packages: RG.PACKAGE LOAD/LIST/DELETE, `require()` in Lua and `import` in
//! JavaScript, refusal to delete what a session imports, persistence and replication
//! (pinning and admin rights: tests/packages_pinning.rs).

mod common;

use common::{canon::fmt, cmd, exec, Server};
use engine::packages::source_hash;
use std::time::{Duration, Instant};

const LUA_LIB: &str = "local M = {} function M.double(x) return x * 2 end return M";
const JS_LIB: &str = "export function double(x) { return x * 2; }\nexport default 'js-lib';";

fn load(c: &mut redis::Connection) {
    assert_eq!(fmt(&cmd(c, &["RG.PACKAGE", "LOAD", "lua", "mylib", LUA_LIB])), "OK");
    assert_eq!(fmt(&cmd(c, &["RG.PACKAGE", "LOAD", "js", "mylib", JS_LIB])), "OK");
}

fn use_in_sessions(c: &mut redis::Connection) {
    assert_eq!(exec(c, "lua", "local m = require('mylib') GB('CommandReader'):map(function(a) return m.double(tonumber(a[2])) end):register({trigger = 'dbl-lua'})", &["ID", "uses-lua"]), "OK");
    assert_eq!(exec(c, "js", "import { double } from 'mylib';\nGB('CommandReader').map(a => double(Number(a[1]))).register({trigger: 'dbl-js'});", &["ID", "uses-js"]), "OK");
}

#[test]
fn packages_are_imported_in_both_languages() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    load(&mut c);
    assert_eq!(exec(&mut c, "lua", "return require('mylib').double(21)", &[]), "42");
    assert_eq!(exec(&mut c, "js", "import lib, { double } from 'mylib';\nGB('ShardsIDReader').map(() => [lib, double(21)]).run();", &[]), r#"[[["js-lib", 42]], []]"#);
    use_in_sessions(&mut c);
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "dbl-lua", "4"])), "[8]");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "dbl-js", "5"])), "[10]");
    let list = fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"]));
    for (lang, source) in [("lua", LUA_LIB), ("js", JS_LIB)] {
        let entry = format!(r#""name", "mylib", "language", "{lang}", "builtin", 0, "owner", "default", "hash", "{}", "importedBy", ["uses-{lang}"]"#, source_hash(source));
        assert!(list.contains(&entry), "{list}");
    }
    // Unknown packages.
    assert!(exec(&mut c, "lua", "return require('nope')", &[]).contains("module 'nope' not found"));
    assert!(exec(&mut c, "js", "import { x } from 'nope';\nx", &[]).contains("module 'nope' not found"));
}

#[test]
fn a_package_in_use_cannot_be_deleted_but_can_be_replaced() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    load(&mut c);
    use_in_sessions(&mut c);
    let got = fmt(&cmd(&mut c, &["RG.PACKAGE", "DELETE", "mylib"]));
    assert!(got.contains("package 'mylib' is imported by session(s)"), "{got}");
    assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "LOAD", "lua", "mylib", LUA_LIB])).contains("already exists: add REPLACE"));
    // Replaced while a session imports it: the session keeps the version it imported.
    assert_eq!(fmt(&cmd(&mut c, &["RG.PACKAGE", "LOAD", "lua", "mylib", "return { double = function(x) return x * 3 end }", "REPLACE"])), "OK");
    assert_eq!(exec(&mut c, "lua", "return require('mylib').double(2)", &[]), "6");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "dbl-lua", "2"])), "[4]");
    cmd(&mut c, &["RG.DROPSESSION", "uses-lua"]);
    cmd(&mut c, &["RG.DROPSESSION", "uses-js"]);
    assert_eq!(fmt(&cmd(&mut c, &["RG.PACKAGE", "DELETE", "mylib"])), "OK");
    assert!(!fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"])).contains(r#""builtin", 0"#));
}

#[test]
fn package_bad_input() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (words, expected) in [
        (vec!["RG.PACKAGE"], "wrong number of arguments"),
        (vec!["RG.PACKAGE", "SHIP"], "unknown subcommand 'SHIP'"),
        (vec!["RG.PACKAGE", "LOAD", "lua", "x"], "wrong number of arguments"),
        (vec!["RG.PACKAGE", "LOAD", "python", "x", "y"], "unknown language 'python'"),
        (vec!["RG.PACKAGE", "LOAD", "lua", "bad name", "return 1"], "a package name must be"),
        (vec!["RG.PACKAGE", "LOAD", "lua", "gears/mine", "return 1"], "reserved"),
        (vec!["RG.PACKAGE", "LOAD", "lua", "broken", "return {"], "package 'broken'"),
        (vec!["RG.PACKAGE", "LOAD", "js", "broken", "export function ("], "package 'broken'"),
        (vec!["RG.PACKAGE", "LOAD", "lua", "x", "return 1", "FORCE"], "unknown option 'FORCE'"),
        (vec!["RG.PACKAGE", "DELETE", "nope"], "no package 'nope'"),
    ] {
        let got = fmt(&cmd(&mut c, &words));
        assert!(got.contains(expected), "{words:?}: {got}");
    }
    assert!(!fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"])).contains(r#""builtin", 0"#));
}

#[test]
fn the_builtin_json_package() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let list = fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"]));
    assert!(list.contains(r#""name", "gears/json", "language", "lua", "builtin", 1"#) && list.contains(r#""name", "gears/json", "language", "js", "builtin", 1"#), "{list}");
    assert_eq!(
        exec(&mut c, "lua", r#"local json = require('gears/json') local t = json.decode('{"a": [1, 2.5, null, true], "b": "x"}') return {json.encode(t.a), t.b, json.encode({k = 'v', n = 3})}"#, &[]),
        r#"["[1,2.5,null,true]", "x", "{\"k\":\"v\",\"n\":3}"]"#
    );
    assert_eq!(
        exec(&mut c, "js", r#"import json, { encode, decode } from 'gears/json'; GB('ShardsIDReader').map(() => [encode(decode('{"a":[1,2]}').a), json.encode({k: 'v'})]).run();"#, &[]),
        r#"[[["[1,2]", "{\"k\":\"v\"}"]], []]"#
    );
    assert!(exec(&mut c, "lua", "return require('gears/json').decode('{nope')", &[]).contains("gears/json decode: invalid JSON"));
    assert!(exec(&mut c, "lua", "return require('gears/json').encode(function() end)", &[]).contains("gears/json encode: a function has no JSON form"));
    assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "DELETE", "gears/json"])).contains("built into the module"));
    assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "LOAD", "lua", "gears/json", "return 1", "REPLACE"])).contains("reserved"));
}

#[test]
fn packages_survive_restarts_and_reach_replicas() {
    let mut s = Server::start(&[]);
    let replica = Server::start_with(&[], &["--replicaof", "127.0.0.1", &s.port.to_string()]);
    let mut c = s.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    load(&mut c);
    use_in_sessions(&mut c);
    cmd(&mut c, &["WAIT", "1", "5000"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fmt(&cmd(&mut r, &["RG.DUMPSESSIONS"])).contains("uses-js") {
        assert!(Instant::now() < deadline, "sessions did not reach the replica");
        std::thread::sleep(Duration::from_millis(20));
    }
    let list = fmt(&cmd(&mut r, &["RG.PACKAGE", "LIST"]));
    assert!(list.contains(r#""importedBy", ["uses-js"]"#), "{list}");
    assert!(list.contains(&format!(r#""owner", "default", "hash", "{}""#, source_hash(JS_LIB))), "{list}");
    assert!(fmt(&cmd(&mut r, &["RG.PACKAGE", "DELETE", "mylib"])).contains("READONLY"));
    assert_eq!(fmt(&cmd(&mut c, &["SAVE"])), "OK");
    s.restart();
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "dbl-lua", "4"])), "[8]");
    assert_eq!(fmt(&cmd(&mut c, &["RG.TRIGGER", "dbl-js", "5"])), "[10]");
    assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "DELETE", "mylib"])).contains("is imported"));
    let list = fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"]));
    assert!(list.contains(&format!(r#""name", "mylib", "language", "lua", "builtin", 0, "owner", "default", "hash", "{}""#, source_hash(LUA_LIB))), "{list}");
}
