//! The execution-management and config commands, INFO rg, and command-level bad input.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::Duration;

#[test]
fn unblocking_exec_and_results() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    cmd(&mut c, &["HSET", "user:1", "city", "paris"]);
    for (lang, code) in [
        ("lua", "GB():map(function(r) return r.value.city end):run('user:*')"),
        ("js", "GB().map(r => r.value.city).run('user:*')"),
    ] {
        let id = exec(&mut c, lang, code, &["UNBLOCKING", "DESCRIPTION", "cities"]);
        let id = id.trim_matches('"').to_string();
        assert!(id.len() > 41 && id.as_bytes()[40] == b'-', "execution id <shard>-<seq>: {id}");
        assert_eq!(fmt(&cmd(&mut c, &["RG.GETRESULTSBLOCKING", &id])), r#"[["paris"], []]"#);
        assert_eq!(fmt(&cmd(&mut c, &["RG.GETRESULTS", &id])), r#"[["paris"], []]"#);
        let details = fmt(&cmd(&mut c, &["RG.GETEXECUTION", &id]));
        for part in ["\"status\", \"done\"", &format!("\"language\", \"{lang}\""), "\"description\", \"cities\"", "\"reader\", \"KeysReader\"", "\"name\", \"map\", \"calls\", 1"] {
            assert!(details.contains(part), "{part} missing in {details}");
        }
        assert!(fmt(&cmd(&mut c, &["RG.GETEXECUTION", &id, "SHARD"])).contains("done"));
        let dump = fmt(&cmd(&mut c, &["RG.DUMPEXECUTIONS"]));
        assert!(dump.contains(&id), "{dump}");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPEXECUTION", &id])), "OK");
        assert!(fmt(&cmd(&mut c, &["RG.GETRESULTS", &id])).starts_with("(error) ERR no execution with id"));
    }
}

#[test]
fn named_execution_ids_are_unique() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(exec(&mut c, "lua", "return 1", &["UNBLOCKING", "ID", "job-1"]), r#""job-1""#);
    assert_eq!(fmt(&cmd(&mut c, &["RG.GETRESULTSBLOCKING", "job-1"])), "1");
    // The name can be used again once the execution finished (it replaces it)...
    assert_eq!(exec(&mut c, "js", "2", &["ID", "job-1"]), "2");
    assert_eq!(fmt(&cmd(&mut c, &["RG.GETRESULTS", "job-1"])), "2");
    // ...but not while it runs.
    assert_eq!(exec(&mut c, "lua", "while true do end", &["ID", "job-2", "UNBLOCKING"]), r#""job-2""#);
    assert_eq!(exec(&mut c, "js", "1", &["ID", "job-2"]), "(error) ERR an execution with id 'job-2' is still running");
    cmd(&mut c, &["RG.ABORTEXECUTION", "job-2"]);
}

#[test]
fn abort_a_running_execution_in_both_languages() {
    let s = Server::start(&["script-timeout", "0"]);
    let mut c = s.conn();
    for (lang, code) in [("lua", "while true do end"), ("js", "while (true) {}")] {
        let id = exec(&mut c, lang, code, &["UNBLOCKING"]).trim_matches('"').to_string();
        common::wait_status(&mut c, &id, "running", Duration::from_secs(30));
        assert!(fmt(&cmd(&mut c, &["RG.DROPEXECUTION", &id])).contains("still running"));
        assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
        assert_eq!(fmt(&cmd(&mut c, &["RG.ABORTEXECUTION", &id])), "OK");
        common::wait_status(&mut c, &id, "aborted", Duration::from_secs(30));
        assert!(fmt(&cmd(&mut c, &["RG.GETRESULTS", &id])).contains("aborted"));
        assert!(fmt(&cmd(&mut c, &["RG.ABORTEXECUTION", &id])).contains("already finished"));
    }
}

#[test]
fn max_executions_evicts_the_oldest_finished() {
    let s = Server::start(&["max-executions", "3"]);
    let mut c = s.conn();
    let ids: Vec<String> = (0..5).map(|i| exec(&mut c, "lua", &format!("return {i}"), &["UNBLOCKING"]).trim_matches('"').to_string()).collect();
    // All five finished (they run on two workers, not necessarily in order).
    for id in &ids {
        cmd(&mut c, &["RG.GETRESULTSBLOCKING", id]);
    }
    // The next execution triggers eviction of finished ones beyond the limit.
    exec(&mut c, "lua", "return 5", &[]);
    let dump = fmt(&cmd(&mut c, &["RG.DUMPEXECUTIONS"]));
    assert!(!dump.contains(&format!("\"{}\"", ids[0])), "oldest kept: {dump}");
    assert!(dump.contains(&format!("\"{}\"", ids[4])), "newest evicted: {dump}");
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "max-executions", "1"])), "OK");
    let n = crate::common::canon::split_top(&fmt(&cmd(&mut c, &["RG.DUMPEXECUTIONS"]))).unwrap().len();
    assert_eq!(n, 1);
}

#[test]
fn config_get_and_set() {
    let s = Server::start(&["script-timeout", "1234"]);
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "script-timeout", "rg.keys-batch-size"])), r#"["1234", "500"]"#);
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "script-timeout", "200", "max-executions", "10"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "script-timeout", "max-executions"])), r#"["200", "10"]"#);
    assert!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "nope"])).contains("unknown setting 'nope'"));
    // All or nothing: a bad pair leaves the good one unset.
    assert!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "script-timeout", "300", "max-executions", "0"])).contains("'max-executions' must be an integer between 1 and 1000000, got '0'"));
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "script-timeout"])), r#"["200"]"#);
    assert!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "execution-threads", "4"])).contains("only be set at load time"));
    assert!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "script-timeout", "abc"])).contains("must be an integer"));
    assert!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "script-timeout"])).contains("wrong number of arguments"));
    // Scripts see the new value.
    assert_eq!(exec(&mut c, "js", "configGet('script-timeout')", &[]), r#""200""#);
}

#[test]
fn bad_module_arguments_refuse_to_load() {
    for args in [&["script-timeout"][..], &["no-such-setting", "1"], &["script-timeout", "-5"]] {
        let port = common::free_port();
        let dir = std::env::temp_dir().join(format!("rg-badload-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut load = vec![common::module_path().display().to_string()];
        load.extend(args.iter().map(|s| s.to_string()));
        let out = std::process::Command::new(common::server_binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir").arg(&dir)
            .arg("--loadmodule").args(&load)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!out.status.success(), "server started with bad module args {args:?}");
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("rg:"), "no rg message in {log}");
    }
}

#[test]
fn info_section() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    exec(&mut c, "lua", "return 1", &[]);
    exec(&mut c, "js", "1", &[]);
    let info: String = redis::cmd("INFO").arg("rg").query(&mut c).unwrap();
    assert!(info.contains("# rg\r\n"), "section name: {info}");
    for field in ["executions_done:2", "executions_running:0", "execution_threads:2", "lua_memory_bytes:", "js_memory_bytes:"] {
        assert!(info.contains(field), "{field} missing:\n{info}");
    }
    let lua_mem: u64 = info.lines().find_map(|l| l.strip_prefix("rg_lua_memory_bytes:").or(l.strip_prefix("lua_memory_bytes:"))).unwrap().trim().parse().unwrap();
    assert!(lua_mem > 0, "{info}");
}

#[test]
fn command_level_bad_input() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let e = |c: &mut redis::Connection, words: &[&str]| fmt(&cmd(c, words));
    assert!(e(&mut c, &["RG.EXEC", "lua"]).contains("wrong number of arguments"));
    assert!(e(&mut c, &["RG.EXEC", "python", "x"]).contains("unknown language 'python': expected 'lua' or 'js'"));
    assert!(e(&mut c, &["RG.EXEC", "lua", "return 1", "BOGUS"]).contains("unknown option 'BOGUS'"));
    assert!(e(&mut c, &["RG.EXEC", "lua", "return 1", "ID"]).contains("ID needs a value"));
    let non_utf8: redis::Value = redis::cmd("RG.EXEC").arg("lua").arg(&b"return '\xff'"[..]).query(&mut c).unwrap_or_else(|e| redis::Value::SimpleString(e.to_string()));
    assert!(fmt(&non_utf8).contains("UTF-8"), "{}", fmt(&non_utf8));
    assert!(e(&mut c, &["RG.GETEXECUTION"]).contains("wrong number of arguments"));
    assert!(e(&mut c, &["RG.GETEXECUTION", "x", "EVERYWHERE"]).contains("unknown scope"));
    assert!(e(&mut c, &["RG.GETRESULTS", "nope"]).contains("no execution with id 'nope'"));
    assert!(e(&mut c, &["RG.DROPEXECUTION", "nope"]).contains("no execution with id 'nope'"));
    assert!(e(&mut c, &["RG.ABORTEXECUTION", "nope"]).contains("no execution with id 'nope'"));
    assert!(e(&mut c, &["RG.DUMPEXECUTIONS", "x"]).contains("wrong number of arguments"));
    // Syntax errors come back at once, with the line.
    assert!(e(&mut c, &["RG.EXEC", "lua", "local x = 1\nGB(", "UNBLOCKING"]).contains(":2:"));
    let js = e(&mut c, &["RG.EXEC", "js", "let x = 1;\nGB(", "UNBLOCKING"]);
    assert!(js.contains("SyntaxError") && js.contains(":2"), "{js}");
    // Runtime errors carry the line too.
    assert!(e(&mut c, &["RG.EXEC", "lua", "local t = nil\nreturn t.x"]).contains(":2:"));
    let js = e(&mut c, &["RG.EXEC", "js", "let t = null;\nt.x"]);
    assert!(js.contains("TypeError") && js.contains(":2"), "{js}");
    assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
}

#[test]
fn refused_inside_multi_and_from_eval() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let r: Vec<redis::Value> = redis::pipe().atomic().cmd("RG.EXEC").arg("lua").arg("return 1").query(&mut c).unwrap_or_else(|e| vec![redis::Value::SimpleString(e.to_string())]);
    let text = r.iter().map(fmt).collect::<Vec<_>>().join(" ");
    assert!(text.contains("cannot run inside MULTI"), "{text}");
    let r = fmt(&cmd(&mut c, &["EVAL", "return redis.call('RG.EXEC', 'lua', 'return 1')", "0"]));
    assert!(r.contains("not allowed from script"), "{r}");
    assert_eq!(exec(&mut c, "lua", "return 1", &[]), "1");
}

#[test]
fn resp3_replies_keep_types() {
    let s = Server::start(&[]);
    let mut c = s.conn3();
    cmd(&mut c, &["HSET", "h", "a", "1"]);
    let v = exec(&mut c, "lua", "return {1, 'two', {k = 'v'}, 2.5, true}", &[]);
    assert_eq!(v, r#"[1, "two", {"k": "v"}, 2.5, true]"#);
    let v = exec(&mut c, "js", "[1, 'two', {k: 'v'}, 2.5, true, null]", &[]);
    assert_eq!(v, r#"[1, "two", {"k": "v"}, 2.5, true, nil]"#);
    // Replies of execute() come back to scripts with their RESP3 types.
    assert_eq!(exec(&mut c, "lua", "local m = execute('HGETALL', 'h') return m.a", &[]), r#""1""#);
    assert_eq!(exec(&mut c, "js", "execute('HGETALL', 'h').a", &[]), r#""1""#);
    assert_eq!(exec(&mut c, "js", "GB().avg(r => 3).run('h')", &[]), "[[3], []]");
}

#[test]
fn binary_safe_values() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let bin: &[u8] = b"a\x00b\xff";
    redis::cmd("SET").arg("bin").arg(bin).query::<()>(&mut c).unwrap();
    let v: Vec<u8> = redis::cmd("RG.EXEC").arg("lua").arg("return execute('GET', 'bin')").query(&mut c).unwrap();
    assert_eq!(v, bin);
    let v: Vec<u8> = redis::cmd("RG.EXEC").arg("js").arg("execute('GET', 'bin')").query(&mut c).unwrap();
    assert_eq!(v, bin);
    // Round trip through a script argument and back into Redis.
    redis::cmd("RG.EXEC").arg("lua").arg("execute('SET', 'copy', ARGS[1])").arg("ARGS").arg(bin).query::<redis::Value>(&mut c).unwrap();
    redis::cmd("RG.EXEC").arg("js").arg("execute('SET', 'copy2', ARGS[0])").arg("ARGS").arg(bin).query::<redis::Value>(&mut c).unwrap();
    for k in ["copy", "copy2"] {
        let v: Vec<u8> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(v, bin, "{k}");
    }
}

#[test]
fn module_is_listed_as_rg_and_refuses_to_unload() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert!(fmt(&cmd(&mut c, &["MODULE", "LIST"])).contains("\"name\", \"rg\""));
    assert!(fmt(&cmd(&mut c, &["MODULE", "UNLOAD", "rg"])).starts_with("(error)"));
    assert_eq!(exec(&mut c, "lua", "return 'still loaded'", &[]), r#""still loaded""#);
}

#[test]
fn scripts_use_the_database_the_client_selected() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    cmd(&mut c, &["SET", "where", "db0"]);
    cmd(&mut c, &["SELECT", "3"]);
    cmd(&mut c, &["SET", "where", "db3"]);
    assert_eq!(exec(&mut c, "lua", "return execute('GET', 'where')", &[]), r#""db3""#);
    assert_eq!(exec(&mut c, "js", "GB().map(r => r.value).run('where')", &[]), r#"[["db3"], []]"#);
    exec(&mut c, "js", "execute('SET', 'written', '1')", &[]);
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "written"])), "1");
    cmd(&mut c, &["SELECT", "0"]);
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "written"])), "0");
}

#[test]
fn run_inside_atomic_is_refused_and_does_not_use_up_the_run() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    cmd(&mut c, &["SET", "k", "v"]);
    for (lang, code) in [
        ("lua", "local ok, e = pcall(function() atomic(function() GB():count():run('*') end) end) GB():count():run('*')"),
        ("js", "try { atomic(() => GB().count().run('*')) } catch (e) {} GB().count().run('*')"),
    ] {
        assert_eq!(exec(&mut c, lang, code, &[]), "[[1], []]", "{lang}");
    }
    assert!(exec(&mut c, "js", "atomic(() => GB().count().run('*'))", &[]).contains("run: cannot be called inside atomic()"));
}
