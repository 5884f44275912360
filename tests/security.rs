//! Multi-user security (docs/security.md): through Gears a user can read, write, run or
//! configure only what the same user could do with Redis commands directly. Every scenario
//! runs on a real server with the admin (`default`), `app` and `lim` (`~<name>:* +@all
//! -@dangerous`) and narrower users, in Lua and JavaScript where scripts are involved.
//! Refusals are matched exactly: on Redis 7.0, which has no ACL categories for module
//! commands, the check inside the RG command answers; on 7.2+ and Valkey the command's own
//! categories may refuse it first, with the server's text.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::Duration;

/// The server's (major, minor) version, as INFO reports it (Valkey 8 says 7.2).
fn version(c: &mut redis::Connection) -> (u32, u32) {
    let info = fmt(&cmd(c, &["INFO", "server"]));
    let v = info.split("redis_version:").nth(1).expect("redis_version").split(|ch: char| !(ch.is_ascii_digit() || ch == '.')).next().unwrap().to_string();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// Does the server put module commands in ACL categories (Redis 7.2+, Valkey)?
fn has_categories(c: &mut redis::Connection) -> bool {
    version(c) >= (7, 2)
}

/// The server's own refusal of a command the user's ACL rules do not allow.
fn server_refusal(categories: bool, user: &str, command: &str) -> String {
    if categories {
        format!("(error) NOPERM User {user} has no permissions to run the '{command}' command")
    } else {
        format!("(error) NOPERM this user has no permissions to run the '{command}' command")
    }
}

/// Redis's refusal of a command a script sends from a worker thread (RM_Call with the
/// user's ACL): `command` refused, or (None) one of its keys.
fn worker_refusal(categories: bool, user: &str, command: Option<&str>) -> String {
    match (categories, command) {
        (true, Some(c)) => format!("(error) NOPERM User {user} has no permissions to run the '{c}' command (user {user})"),
        (true, None) => format!("(error) NOPERM No permissions to access a key (user {user})"),
        (false, Some(_)) => format!("(error) NOPERM User {user} can't run this command or subcommand."),
        (false, None) => format!("(error) NOPERM User {user} can't access at least one of the keys mentioned in the command arguments."),
    }
}

/// Gears' refusal when the user may not run the core command an RG command stands for.
fn needs(user: &str, rg: &str, core: &str) -> String {
    format!("(error) NOPERM user '{user}' may not run {rg}: it needs the permission to run {core}")
}

/// Gears' refusal of acting on another user's execution or session.
fn not_owner(what: &str, id: &str, owner: &str) -> String {
    format!("(error) NOPERM {what} '{id}' belongs to user '{owner}': only its owner or an admin may see or change it")
}

/// `ACL SETUSER <name> reset on >pw <rules>`.
fn set_user(admin: &mut redis::Connection, name: &str, rules: &[&str]) {
    let mut words = vec!["ACL", "SETUSER", name, "reset", "on", ">pw"];
    words.extend_from_slice(rules);
    assert_eq!(fmt(&cmd(admin, &words)), "OK", "{words:?}");
}

/// A connection authenticated as `name` (password `pw`).
fn login(s: &Server, name: &str) -> redis::Connection {
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["AUTH", name, "pw"])), "OK", "AUTH {name}");
    c
}

/// A server with the users every test shares: `app` and `lim`, each limited to its own
/// keys and without `@dangerous` (so not admins), and the admin's secret `secret:1`.
fn setup() -> (Server, redis::Connection) {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    set_user(&mut admin, "app", &["~app:*", "+@all", "-@dangerous"]);
    set_user(&mut admin, "lim", &["~lim:*", "+@all", "-@dangerous"]);
    cmd(&mut admin, &["SET", "secret:1", "TOPSECRET"]);
    (s, admin)
}

/// The `executionId`s of an RG.DUMPEXECUTIONS reply, in order.
fn execution_ids(dump: &str) -> Vec<String> {
    dump.split("\"executionId\", \"").skip(1).map(|rest| rest.split('"').next().unwrap().to_string()).collect()
}

/// Every RG command, tried by a user whose rules allow everything but the core command it is
/// checked against (so the check inside the command answers, on every server), and by
/// `app` on its own executions and sessions.
#[test]
fn every_rg_command_needs_the_core_command_it_stands_for() {
    let (s, mut admin) = setup();
    // Something of the admin's for the refused users to aim at.
    assert_eq!(exec(&mut admin, "lua", "GB('CommandReader'):map(function() return 'admin' end):register({trigger = 't'})", &["ID", "s"]), "OK");
    let refused: &[(&str, &str, &[&[&str]])] = &[
        (
            "-eval",
            "EVAL",
            &[
                &["RG.EXEC", "lua", "return 1"],
                &["RG.EXEC", "js", "1"],
                &["RG.GETEXECUTION", "s"],
                &["RG.GETEXECUTION", "s", "CLUSTER"],
                &["RG.DUMPEXECUTIONS"],
                &["RG.GETRESULTS", "s"],
                &["RG.GETRESULTSBLOCKING", "s"],
                &["RG.DROPEXECUTION", "s"],
                &["RG.ABORTEXECUTION", "s"],
            ],
        ),
        ("-function|list", "FUNCTION LIST", &[&["RG.DUMPSESSIONS"], &["RG.DUMPSESSIONS", "VERBOSE"], &["RG.DUMPREGISTRATIONS"], &["RG.DUMPREGISTRATIONS", "CLUSTER"]]),
        (
            "-function|delete",
            "FUNCTION DELETE",
            &[&["RG.DROPSESSION", "s"], &["RG.UNREGISTER", "s/0"], &["RG.PAUSEREGISTRATIONS", "s/0"], &["RG.UNPAUSEREGISTRATIONS", "s/0"], &["RG.CLEARREGISTRATIONSSTATS"]],
        ),
        ("-fcall", "FCALL", &[&["RG.TRIGGER", "t"], &["RG.TRIGGERONKEY", "t", "k"]]),
        ("-config|get", "CONFIG GET", &[&["RG.CONFIGGET", "script-timeout"]]),
        // Checked before the command looks at whether the server is a cluster node.
        ("-cluster|info", "CLUSTER INFO", &[&["RG.INFOCLUSTER"], &["RG.REFRESHCLUSTER"]]),
    ];
    for (rule, core, commands) in refused {
        let name = format!("no{}", rule.trim_start_matches('-').replace('|', ""));
        set_user(&mut admin, &name, &["~*", "+@all", rule]);
        let mut c = login(&s, &name);
        for words in *commands {
            assert_eq!(fmt(&cmd(&mut c, words)), needs(&name, &words[0].to_ascii_uppercase(), core), "{name}: {words:?}");
        }
    }
    // `+rg.configset` lets the command through on every server: the check inside refuses
    // a user that may not run CONFIG SET (or CONFIG GET).
    set_user(&mut admin, "cfg", &["~*", "+@all", "-@dangerous", "+rg.configset", "+rg.configget"]);
    let mut cfg = login(&s, "cfg");
    assert_eq!(fmt(&cmd(&mut cfg, &["RG.CONFIGSET", "script-timeout", "0"])), needs("cfg", "RG.CONFIGSET", "CONFIG SET"));
    assert_eq!(fmt(&cmd(&mut cfg, &["RG.CONFIGGET", "script-timeout"])), needs("cfg", "RG.CONFIGGET", "CONFIG GET"));
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGGET", "script-timeout"])), r#"["5000"]"#);
    // The admin state is untouched: the session still fires, its execution is still there.
    assert_eq!(fmt(&cmd(&mut admin, &["RG.TRIGGER", "t"])), r#"["admin"]"#);
    assert_eq!(fmt(&cmd(&mut admin, &["RG.GETRESULTS", "s"])), "OK");

    // The same commands by `app` on what it owns.
    let mut app = login(&s, "app");
    assert_eq!(exec(&mut app, "lua", "return 1", &[]), "1");
    assert_eq!(exec(&mut app, "js", "'mine'", &["UNBLOCKING", "ID", "app-x"]), r#""app-x""#);
    assert_eq!(fmt(&cmd(&mut app, &["RG.GETRESULTSBLOCKING", "app-x"])), r#""mine""#);
    assert_eq!(fmt(&cmd(&mut app, &["RG.GETRESULTS", "app-x"])), r#""mine""#);
    assert!(fmt(&cmd(&mut app, &["RG.GETEXECUTION", "app-x"])).contains(r#""status", "done""#));
    assert!(fmt(&cmd(&mut app, &["RG.GETEXECUTION", "app-x", "CLUSTER"])).contains(r#""status", "done""#));
    // Not a cluster node: the answers of a single server, to a user allowed CLUSTER INFO.
    assert_eq!(fmt(&cmd(&mut app, &["RG.INFOCLUSTER"])), "no cluster mode");
    assert_eq!(fmt(&cmd(&mut app, &["RG.REFRESHCLUSTER"])), "OK");
    assert_eq!(exec(&mut app, "lua", "while true do end", &["UNBLOCKING", "ID", "app-loop"]), r#""app-loop""#);
    common::wait_status(&mut app, "app-loop", "running", Duration::from_secs(10));
    assert_eq!(fmt(&cmd(&mut app, &["RG.ABORTEXECUTION", "app-loop"])), "OK");
    common::wait_status(&mut app, "app-loop", "aborted", Duration::from_secs(5));
    let ids = execution_ids(&fmt(&cmd(&mut app, &["RG.DUMPEXECUTIONS"])));
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[1..], ["app-x", "app-loop"]);
    assert_eq!(fmt(&cmd(&mut app, &["RG.DROPEXECUTION", "app-x"])), "OK");
    assert_eq!(exec(&mut app, "js", "GB('CommandReader').map(a => 'app ' + a.length).register({trigger: 'app-t'})", &["ID", "app-s"]), "OK");
    assert_eq!(fmt(&cmd(&mut app, &["RG.TRIGGER", "app-t", "a"])), r#"["app 2"]"#);
    assert_eq!(fmt(&cmd(&mut app, &["RG.TRIGGERONKEY", "app-t", "app:1", "b"])), r#"["app 3"]"#);
    assert_eq!(exec(&mut app, "lua", "GB('CommandReader'):map(function() return 'app v2' end):register({trigger = 'app-t'})", &["ID", "app-s", "UPGRADE"]), "OK");
    assert_eq!(fmt(&cmd(&mut app, &["RG.TRIGGER", "app-t"])), r#"["app v2"]"#);
    let sessions = fmt(&cmd(&mut app, &["RG.DUMPSESSIONS", "VERBOSE"]));
    assert!(sessions.contains(r#""id", "app-s""#) && sessions.contains("app v2") && !sessions.contains(r#""id", "s""#), "{sessions}");
    let regs = fmt(&cmd(&mut app, &["RG.DUMPREGISTRATIONS"]));
    assert!(regs.contains(r#""id", "app-s/0""#) && !regs.contains(r#""id", "s/0""#), "{regs}");
    for words in [&["RG.PAUSEREGISTRATIONS", "app-s/0"][..], &["RG.UNPAUSEREGISTRATIONS", "app-s/0"], &["RG.CLEARREGISTRATIONSSTATS"], &["RG.UNREGISTER", "app-s/0"], &["RG.DROPSESSION", "app-s"]] {
        assert_eq!(fmt(&cmd(&mut app, words)), "OK", "{words:?}");
    }
    // Settings are the admin's.
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGSET", "script-timeout", "4000"])), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGGET", "script-timeout"])), r#"["4000"]"#);
}

/// Users limited by categories: on 7.2+ the RG commands' own categories (`@scripting`,
/// `@admin @dangerous`) apply before the command runs; on 7.0 the check inside the command
/// has the same effect for users allowed the command itself.
#[test]
fn categories_on_newer_servers_and_checks_inside_on_7_0() {
    let (s, mut admin) = setup();
    let categories = has_categories(&mut admin);
    assert_eq!(exec(&mut admin, "js", "GB('CommandReader').map(() => 'admin').register({trigger: 't'})", &["ID", "s"]), "OK");
    let mut lim = login(&s, "lim");
    // Settings: @admin @dangerous on 7.2+, CONFIG SET / CONFIG GET inside on 7.0.
    let (set, get) = if categories {
        (server_refusal(true, "lim", "rg.configset"), server_refusal(true, "lim", "rg.configget"))
    } else {
        (needs("lim", "RG.CONFIGSET", "CONFIG SET"), needs("lim", "RG.CONFIGGET", "CONFIG GET"))
    };
    assert_eq!(fmt(&cmd(&mut lim, &["RG.CONFIGSET", "script-timeout", "0"])), set);
    assert_eq!(fmt(&cmd(&mut lim, &["RG.CONFIGSET", "connection.pg", "postgresql://lim@127.0.0.1/evil"])), set);
    assert_eq!(fmt(&cmd(&mut lim, &["RG.CONFIGGET", "script-timeout"])), get);
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGGET", "script-timeout"])), r#"["5000"]"#);
    // The internal commands are for the replication stream and the AOF only.
    let internal = |c: &str| format!("(error) ERR {c} is internal: only the replication stream and the AOF send it");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.SESSIONLOAD", "x"])), internal("RG.SESSIONLOAD"));
    let lim_load = if categories { server_refusal(true, "lim", "rg.sessionload") } else { internal("RG.SESSIONLOAD") };
    assert_eq!(fmt(&cmd(&mut lim, &["RG.SESSIONLOAD", "x"])), lim_load);

    // `ro` may read and run scripts, not write: on 7.2+ it may run RG.EXEC (@scripting) but
    // not register (FUNCTION LOAD is @write) nor drop sessions (FUNCTION DELETE); on 7.0 no
    // category holds the RG commands, so the server refuses them all.
    set_user(&mut admin, "ro", &["~*", "+@read", "+@scripting", "-@write"]);
    let mut ro = login(&s, "ro");
    let register = "GB('CommandReader'):register({trigger = 'ro-t'})";
    if categories {
        assert_eq!(exec(&mut ro, "lua", "return execute('GET', 'secret:1')", &[]), r#""TOPSECRET""#);
        assert_eq!(exec(&mut ro, "js", "execute('SET', 'ro:1', 'x')", &[]), worker_refusal(true, "ro", Some("set")));
        assert_eq!(exec(&mut ro, "lua", register, &[]), "(error) NOPERM user 'ro' may not register triggers: it needs the permission to run FUNCTION LOAD");
        assert_eq!(fmt(&cmd(&mut ro, &["RG.DROPSESSION", "s"])), needs("ro", "RG.DROPSESSION", "FUNCTION DELETE"));
        assert_eq!(fmt(&cmd(&mut ro, &["RG.DUMPSESSIONS"])), "[]");
        assert_eq!(fmt(&cmd(&mut ro, &["RG.TRIGGER", "t"])), r#"["admin"]"#);
    } else {
        assert_eq!(exec(&mut ro, "lua", "return 1", &[]), server_refusal(false, "ro", "rg.exec"));
        assert_eq!(exec(&mut ro, "lua", register, &[]), server_refusal(false, "ro", "rg.exec"));
        assert_eq!(fmt(&cmd(&mut ro, &["RG.DROPSESSION", "s"])), server_refusal(false, "ro", "rg.dropsession"));
        assert_eq!(fmt(&cmd(&mut ro, &["RG.DUMPSESSIONS"])), server_refusal(false, "ro", "rg.dumpsessions"));
    }
    // Without @scripting: 7.2+ refuses RG.EXEC by its category; 7.0 inside, as EVAL.
    set_user(&mut admin, "noscripts", &["~*", "+@all", "-@scripting"]);
    let mut noscripts = login(&s, "noscripts");
    let expected = if categories { server_refusal(true, "noscripts", "rg.exec") } else { needs("noscripts", "RG.EXEC", "EVAL") };
    assert_eq!(exec(&mut noscripts, "lua", "return 1", &[]), expected);
    assert_eq!(exec(&mut noscripts, "js", "1", &[]), expected);
    // ...but it may run CONFIG SET, so it is an admin: settings are its to change.
    assert_eq!(fmt(&cmd(&mut noscripts, &["RG.CONFIGSET", "script-timeout", "4000"])), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.TRIGGER", "t"])), r#"["admin"]"#);
}

/// Registering triggers is loading code, like FUNCTION LOAD; keyspace and stream triggers
/// also need read permission on their prefix.
#[test]
fn registering_needs_function_load_and_read_on_the_prefix() {
    let (s, mut admin) = setup();
    set_user(&mut admin, "nofn", &["~*", "+@all", "-function"]);
    let mut nofn = login(&s, "nofn");
    assert_eq!(exec(&mut nofn, "lua", "return execute('GET', 'secret:1')", &[]), r#""TOPSECRET""#);
    assert_eq!(exec(&mut nofn, "js", "GB().map(r => r.key).run('secret:*')", &[]), r#"[["secret:1"], []]"#);
    let refusal = "(error) NOPERM user 'nofn' may not register triggers: it needs the permission to run FUNCTION LOAD";
    for (lang, code) in [
        ("lua", "GB('CommandReader'):register({trigger = 't'})"),
        ("js", "GB().foreach(r => {}).register({prefix: 'app:', mode: 'sync'})"),
        ("lua", "GB('StreamReader'):register({prefix = 'events:'})"),
    ] {
        assert_eq!(exec(&mut nofn, lang, code, &["ID", "nofn-s"]), refusal, "{lang} `{code}`");
    }
    assert_eq!(fmt(&cmd(&mut admin, &["RG.DUMPSESSIONS"])), "[]");

    let mut lim = login(&s, "lim");
    for (lang, code) in [
        ("lua", "GB():register({prefix = 'secret:'})"),
        ("js", "GB('KeysOnlyReader').register({prefix: 'secret:', mode: 'sync'})"),
        ("js", "GB('StreamReader').register({prefix: 'secret:'})"),
    ] {
        assert_eq!(exec(&mut lim, lang, code, &[]), "(error) ERR register: user 'lim' may not read keys starting with 'secret:'", "{lang} `{code}`");
    }
    assert_eq!(exec(&mut lim, "lua", "GB():register({})", &[]), "(error) ERR register: user 'lim' may not read keys starting with ''");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.DUMPSESSIONS"])), "[]");
    // Its own prefix is fine, and the trigger runs as lim.
    assert_eq!(exec(&mut lim, "js", "GB().foreach(r => { execute('SET', 'lim:seen', r.key) }).register({prefix: 'lim:in', mode: 'sync'})", &["ID", "lim-s"]), "OK");
    cmd(&mut admin, &["SET", "lim:in", "1"]);
    assert_eq!(fmt(&cmd(&mut admin, &["GET", "lim:seen"])), r#""lim:in""#);
}

/// Hooks intercept every user's commands: only admins register them, and commands that hold
/// the connection's state or security cannot be hooked at all.
#[test]
fn hooks_need_an_admin_and_never_intercept_connection_state() {
    let (s, mut admin) = setup();
    for (lang, command) in [
        ("lua", "auth"),
        ("js", "AUTH"),
        ("lua", "select"),
        ("js", "Select"),
        ("lua", "exec"),
        ("js", "exec"),
        ("lua", "hello"),
        ("js", "hello"),
        ("lua", "client"),
        ("js", "CLIENT"),
        ("lua", "multi"),
        ("js", "acl"),
        ("lua", "config"),
        ("js", "module"),
        ("lua", "shutdown"),
        ("js", "function"),
        ("lua", "eval"),
        ("js", "fcall"),
        ("lua", "subscribe"),
        ("js", "reset"),
    ] {
        let code = match lang {
            "lua" => format!("GB('CommandReader'):map(function(a) return callNext() end):register({{hook = '{command}'}})"),
            _ => format!("GB('CommandReader').map(a => callNext()).register({{hook: '{command}'}})"),
        };
        let lower = command.to_ascii_lowercase();
        assert_eq!(
            exec(&mut admin, lang, &code, &[]),
            format!("(error) ERR register: cannot hook '{lower}': hooking it would break the connection's state or security (see docs/security.md)"),
            "{lang} {command}"
        );
    }
    assert_eq!(fmt(&cmd(&mut admin, &["RG.DUMPREGISTRATIONS"])), "[]");
    // A user who is not an admin may register no hook at all, even on its own keys.
    let mut app = login(&s, "app");
    for (lang, code) in [
        ("lua", "GB('CommandReader'):map(function(a) return callNext() end):register({hook = 'hget', prefix = 'app:'})"),
        ("js", "GB('CommandReader').map(a => callNext()).register({hook: 'get'})"),
    ] {
        assert_eq!(exec(&mut app, lang, code, &[]), "(error) NOPERM user 'app' may not register a hook: hooks need admin rights (the permission to run CONFIG SET)", "{lang}");
    }
    assert_eq!(fmt(&cmd(&mut admin, &["RG.DUMPREGISTRATIONS"])), "[]");
    // Authentication and database selection work as always.
    let mut lim = login(&s, "lim");
    assert_eq!(fmt(&cmd(&mut lim, &["SELECT", "1"])), "OK");
    assert_eq!(fmt(&cmd(&mut lim, &["SET", "lim:db1", "x"])), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["EXISTS", "lim:db1"])), "0");
}

/// An admin's hook runs with its owner's rights intersected with those of the client whose
/// command it intercepts: it cannot read or write for that client what the client could not.
#[test]
fn a_hook_runs_with_its_owners_and_its_callers_rights() {
    let (s, mut admin) = setup();
    let mut lim = login(&s, "lim");
    for (lang, reader, writer) in [
        (
            "lua",
            "GB('CommandReader'):map(function(a) return execute('GET', 'secret:1') end):register({hook = 'strlen'})",
            "GB('CommandReader'):map(function(a) return callNext('secret:flag', 'pwned') end):register({hook = 'set'})",
        ),
        ("js", "GB('CommandReader').map(a => execute('GET', 'secret:1')).register({hook: 'strlen'})", "GB('CommandReader').map(a => callNext('secret:flag', 'pwned')).register({hook: 'set'})"),
    ] {
        assert_eq!(exec(&mut admin, lang, reader, &["ID", "reader"]), "OK", "{lang}");
        // The hook reads the secret for the admin, who may read it...
        assert_eq!(fmt(&cmd(&mut admin, &["STRLEN", "lim:a"])), r#""TOPSECRET""#, "{lang}");
        // ...and not for lim, whose STRLEN of its own key it intercepts.
        assert_eq!(fmt(&cmd(&mut lim, &["STRLEN", "lim:a"])), "(error) NOPERM User lim has no permissions to run the 'get' command or to access its keys", "{lang}");
        assert_eq!(exec(&mut admin, lang, writer, &["ID", "writer"]), "OK", "{lang}");
        // callNext() with other arguments runs as the client: lim may not write secret:flag.
        assert_eq!(fmt(&cmd(&mut lim, &["SET", "lim:a", "v"])), "(error) NOPERM User lim has no permissions to run the 'set' command or to access its keys", "{lang}");
        assert_eq!(fmt(&cmd(&mut admin, &["EXISTS", "secret:flag", "lim:a"])), "0", "{lang}: the refused call wrote");
        // For the admin the same hook does write there.
        // (The hook's reply is what its step returned: callNext()'s `OK` as a string.)
        assert_eq!(fmt(&cmd(&mut admin, &["SET", "x", "y"])), r#""OK""#, "{lang}");
        assert_eq!(fmt(&cmd(&mut admin, &["GET", "secret:flag"])), r#""pwned""#, "{lang}");
        cmd(&mut admin, &["DEL", "secret:flag"]);
        // A hooked command is still checked for the client first: lim's GET of the secret
        // through an admin's pass-through hook on GET is refused, the admin's is not.
        let pass = match lang {
            "lua" => "GB('CommandReader'):map(function(a) return callNext() end):register({hook = 'get'})",
            _ => "GB('CommandReader').map(a => callNext()).register({hook: 'get'})",
        };
        assert_eq!(exec(&mut admin, lang, pass, &["ID", "pass"]), "OK", "{lang}");
        assert_eq!(fmt(&cmd(&mut lim, &["GET", "secret:1"])), "(error) NOPERM User lim has no permissions to run the 'get' command or to access its keys", "{lang}");
        assert_eq!(fmt(&cmd(&mut lim, &["GET", "lim:none"])), "nil", "{lang}");
        assert_eq!(fmt(&cmd(&mut admin, &["GET", "secret:1"])), r#""TOPSECRET""#, "{lang}");
        for id in ["reader", "writer", "pass"] {
            assert_eq!(fmt(&cmd(&mut admin, &["RG.DROPSESSION", id])), "OK");
        }
    }
}

/// RG.TRIGGER runs the trigger's steps with its owner's rights intersected with the caller's,
/// in sync and async mode: nobody reaches through another user's trigger what neither
/// could reach alone.
#[test]
fn a_command_trigger_runs_with_its_owners_and_its_callers_rights() {
    let (s, mut admin) = setup();
    let mut lim = login(&s, "lim");
    let mut app = login(&s, "app");
    let categories = has_categories(&mut admin);
    cmd(&mut admin, &["SET", "app:1", "APPDATA"]);
    for (lang, mode) in [("lua", "sync"), ("js", "async"), ("js", "sync"), ("lua", "async")] {
        let (adm, own) = match lang {
            "lua" => (
                format!("GB('CommandReader'):map(function(a) return execute('GET', a[2]) end):register({{trigger = 'read-adm', mode = '{mode}'}})"),
                format!("GB('CommandReader'):map(function(a) return execute('GET', a[2]) end):register({{trigger = 'read-app', mode = '{mode}'}})"),
            ),
            _ => (
                format!("GB('CommandReader').map(a => execute('GET', a[1])).register({{trigger: 'read-adm', mode: '{mode}'}})"),
                format!("GB('CommandReader').map(a => execute('GET', a[1])).register({{trigger: 'read-app', mode: '{mode}'}})"),
            ),
        };
        assert_eq!(exec(&mut admin, lang, &adm, &["ID", "adm"]), "OK");
        assert_eq!(exec(&mut app, lang, &own, &["ID", "own"]), "OK");
        // The caller is checked before each command (Gears' text); the owner by the call
        // itself: in place for sync triggers (Gears' text), on a worker for async ones
        // (the server's).
        let refused = |user: &str| format!("(error) NOPERM User {user} has no permissions to run the 'get' command or to access its keys");
        let owner_refused = |user: &str| if mode == "sync" { refused(user) } else { worker_refusal(categories, user, None) };
        // The admin's trigger: the admin reads anything, lim only its own keys.
        assert_eq!(fmt(&cmd(&mut admin, &["RG.TRIGGER", "read-adm", "secret:1"])), r#"["TOPSECRET"]"#, "{lang} {mode}");
        assert_eq!(fmt(&cmd(&mut lim, &["RG.TRIGGER", "read-adm", "secret:1"])), refused("lim"), "{lang} {mode}");
        assert_eq!(fmt(&cmd(&mut lim, &["RG.TRIGGER", "read-adm", "app:1"])), refused("lim"), "{lang} {mode}");
        assert_eq!(fmt(&cmd(&mut lim, &["RG.TRIGGER", "read-adm", "lim:none"])), "[nil]", "{lang} {mode}");
        // app's trigger runs as app even when the admin fires it.
        assert_eq!(fmt(&cmd(&mut admin, &["RG.TRIGGER", "read-app", "secret:1"])), owner_refused("app"), "{lang} {mode}");
        assert_eq!(fmt(&cmd(&mut admin, &["RG.TRIGGER", "read-app", "app:1"])), r#"["APPDATA"]"#, "{lang} {mode}");
        assert_eq!(fmt(&cmd(&mut lim, &["RG.TRIGGER", "read-app", "app:1"])), refused("lim"), "{lang} {mode}");
        assert_eq!(fmt(&cmd(&mut admin, &["RG.DROPSESSION", "adm"])), "OK");
        assert_eq!(fmt(&cmd(&mut app, &["RG.DROPSESSION", "own"])), "OK");
    }
}

/// Executions belong to the user who ran RG.EXEC: other users can neither see, stop, drop
/// nor replace them; an admin sees and acts on all.
#[test]
fn executions_belong_to_their_owner() {
    let (s, mut admin) = setup();
    let mut lim = login(&s, "lim");
    let mut app = login(&s, "app");
    assert_eq!(exec(&mut admin, "lua", "return execute('GET', 'secret:1')", &["ID", "adm-x"]), r#""TOPSECRET""#);
    assert_eq!(exec(&mut admin, "js", "while (true) {}", &["UNBLOCKING", "ID", "adm-loop", "DESCRIPTION", "admin's loop"]), r#""adm-loop""#);
    common::wait_status(&mut admin, "adm-loop", "running", Duration::from_secs(10));
    for words in [&["RG.GETRESULTS", "adm-x"][..], &["RG.GETRESULTSBLOCKING", "adm-x"], &["RG.GETEXECUTION", "adm-x"], &["RG.GETEXECUTION", "adm-x", "SHARD"], &["RG.DROPEXECUTION", "adm-x"]] {
        assert_eq!(fmt(&cmd(&mut lim, words)), not_owner("execution", "adm-x", "default"), "{words:?}");
    }
    assert_eq!(fmt(&cmd(&mut lim, &["RG.ABORTEXECUTION", "adm-loop"])), not_owner("execution", "adm-loop", "default"));
    assert_eq!(fmt(&cmd(&mut lim, &["RG.GETRESULTSBLOCKING", "adm-loop"])), not_owner("execution", "adm-loop", "default"));
    assert!(fmt(&cmd(&mut admin, &["RG.GETEXECUTION", "adm-loop"])).contains(r#""status", "running""#));
    // Naming an execution after the admin's does not replace it (in either language).
    for (lang, code) in [("lua", "return 'lim'"), ("js", "'lim'")] {
        assert_eq!(exec(&mut lim, lang, code, &["ID", "adm-x"]), not_owner("execution", "adm-x", "default"), "{lang}");
    }
    assert_eq!(fmt(&cmd(&mut admin, &["RG.GETRESULTS", "adm-x"])), r#""TOPSECRET""#);
    // Each user lists its own executions.
    assert_eq!(exec(&mut lim, "js", "'mine'", &["ID", "lim-x"]), r#""mine""#);
    assert_eq!(execution_ids(&fmt(&cmd(&mut lim, &["RG.DUMPEXECUTIONS"]))), ["lim-x"]);
    assert_eq!(execution_ids(&fmt(&cmd(&mut app, &["RG.DUMPEXECUTIONS"]))), Vec::<String>::new());
    assert_eq!(fmt(&cmd(&mut app, &["RG.GETRESULTS", "lim-x"])), not_owner("execution", "lim-x", "lim"));
    // The admin sees and acts on all.
    assert_eq!(execution_ids(&fmt(&cmd(&mut admin, &["RG.DUMPEXECUTIONS"]))), ["adm-x", "adm-loop", "lim-x"]);
    assert_eq!(fmt(&cmd(&mut admin, &["RG.GETRESULTS", "lim-x"])), r#""mine""#);
    assert_eq!(fmt(&cmd(&mut admin, &["RG.ABORTEXECUTION", "adm-loop"])), "OK");
    common::wait_status(&mut admin, "adm-loop", "aborted", Duration::from_secs(5));
    assert_eq!(fmt(&cmd(&mut admin, &["RG.DROPEXECUTION", "lim-x"])), "OK");
    assert_eq!(fmt(&cmd(&mut lim, &["RG.GETRESULTS", "lim-x"])), "(error) ERR no execution with id 'lim-x'");
    // lim's own execution under a free id is fine, and the admin's still there.
    assert_eq!(exec(&mut lim, "lua", "return 'again'", &["ID", "lim-x"]), r#""again""#);
    assert_eq!(fmt(&cmd(&mut admin, &["RG.GETRESULTS", "adm-x"])), r#""TOPSECRET""#);
}

/// Sessions and their registrations belong to the user who created them: other users do not
/// see their sources, arguments or registrations, and cannot upgrade, drop, unregister or
/// pause them; the admin's trigger runs the admin's code afterwards.
#[test]
fn sessions_belong_to_their_owner() {
    let (s, mut admin) = setup();
    let mut lim = login(&s, "lim");
    for lang in ["lua", "js"] {
        let (adm, mine, takeover) = match lang {
            "lua" => (
                "-- ADMIN-SOURCE-MARKER\nGB('CommandReader'):map(function() return 'admin-code ' .. ARGS[1] end):register({trigger = 'adm-t'})",
                "GB('CommandReader'):map(function() return 'lim-code' end):register({trigger = 'lim-t'})",
                "GB('CommandReader'):map(function() return 'taken over' end):register({trigger = 'adm-t'})",
            ),
            _ => (
                "// ADMIN-SOURCE-MARKER\nGB('CommandReader').map(() => 'admin-code ' + ARGS[0]).register({trigger: 'adm-t'});",
                "GB('CommandReader').map(() => 'lim-code').register({trigger: 'lim-t'});",
                "GB('CommandReader').map(() => 'taken over').register({trigger: 'adm-t'});",
            ),
        };
        assert_eq!(exec(&mut admin, lang, adm, &["ID", "adm", "ARGS", "ADMIN-ARG"]), "OK", "{lang}");
        assert_eq!(exec(&mut lim, lang, mine, &["ID", "lim-s"]), "OK", "{lang}");
        assert_eq!(fmt(&cmd(&mut admin, &["RG.TRIGGER", "adm-t"])), r#"["admin-code ADMIN-ARG"]"#);
        // lim sees its own session and registration only.
        let sessions = fmt(&cmd(&mut lim, &["RG.DUMPSESSIONS", "VERBOSE"]));
        assert!(sessions.contains(r#""id", "lim-s""#) && sessions.contains("lim-code"), "{lang}: {sessions}");
        for hidden in ["ADMIN-SOURCE-MARKER", "ADMIN-ARG", "admin-code", r#""id", "adm""#] {
            assert!(!sessions.contains(hidden), "{lang}: lim sees {hidden}: {sessions}");
        }
        assert!(!fmt(&cmd(&mut lim, &["RG.DUMPSESSIONS"])).contains(r#""adm""#), "{lang}");
        let regs = fmt(&cmd(&mut lim, &["RG.DUMPREGISTRATIONS"]));
        assert!(regs.contains(r#""id", "lim-s/0""#) && !regs.contains("adm"), "{lang}: {regs}");
        // The admin sees both.
        let all = fmt(&cmd(&mut admin, &["RG.DUMPSESSIONS", "VERBOSE"]));
        assert!(all.contains("ADMIN-SOURCE-MARKER") && all.contains("lim-code"), "{lang}: {all}");
        // Nothing lim tries on the admin's session works.
        let session_refusal = not_owner("session", "adm", "default");
        for words in [
            &["RG.DROPSESSION", "adm"][..],
            &["RG.UNREGISTER", "adm/0"],
            &["RG.PAUSEREGISTRATIONS", "adm/0"],
            &["RG.UNPAUSEREGISTRATIONS", "adm/0"],
            // All or nothing: its own registration is not paused either.
            &["RG.PAUSEREGISTRATIONS", "lim-s/0", "adm/0"],
        ] {
            assert_eq!(fmt(&cmd(&mut lim, words)), session_refusal, "{lang}: {words:?}");
        }
        assert!(fmt(&cmd(&mut lim, &["RG.DUMPREGISTRATIONS"])).contains(r#""status", "active""#), "{lang}");
        // Naming another user's session is refused, with UPGRADE or without, whether or not
        // its execution (same id) is still kept.
        assert_eq!(exec(&mut lim, lang, takeover, &["ID", "adm", "UPGRADE"]), session_refusal, "{lang}");
        assert_eq!(exec(&mut lim, lang, takeover, &["ID", "adm"]), session_refusal, "{lang}");
        assert_eq!(fmt(&cmd(&mut admin, &["RG.DROPEXECUTION", "adm"])), "OK");
        assert_eq!(exec(&mut lim, lang, takeover, &["ID", "adm", "UPGRADE"]), session_refusal, "{lang}");
        // Clearing counters clears lim's own only.
        assert_eq!(fmt(&cmd(&mut lim, &["RG.TRIGGER", "lim-t"])), r#"["lim-code"]"#);
        assert_eq!(fmt(&cmd(&mut lim, &["RG.CLEARREGISTRATIONSSTATS"])), "OK");
        let regs = fmt(&cmd(&mut admin, &["RG.DUMPREGISTRATIONS"]));
        let triggered = |id: &str| regs.split(&format!(r#""id", "{id}""#)).nth(1).and_then(|r| r.split(r#""numTriggered", "#).nth(1)).map(|n| n.split(',').next().unwrap().to_string());
        assert_eq!(triggered("adm/0").as_deref(), Some("1"), "{lang}: {regs}");
        assert_eq!(triggered("lim-s/0").as_deref(), Some("0"), "{lang}: {regs}");
        // The admin's trigger still runs the admin's code.
        assert_eq!(fmt(&cmd(&mut admin, &["RG.TRIGGER", "adm-t"])), r#"["admin-code ADMIN-ARG"]"#, "{lang}");
        assert_eq!(fmt(&cmd(&mut lim, &["RG.TRIGGER", "adm-t"])), r#"["admin-code ADMIN-ARG"]"#, "{lang}");
        // The admin acts on lim's session.
        assert_eq!(fmt(&cmd(&mut admin, &["RG.PAUSEREGISTRATIONS", "lim-s/0"])), "OK");
        assert_eq!(fmt(&cmd(&mut admin, &["RG.DROPSESSION", "lim-s"])), "OK");
        assert_eq!(fmt(&cmd(&mut admin, &["RG.DROPSESSION", "adm"])), "OK");
        assert_eq!(fmt(&cmd(&mut lim, &["RG.DROPEXECUTION", "lim-s"])), "OK");
    }
}

/// A registration is checked on its prefix, but an ACL key pattern can allow the prefix and
/// not every key under it (`~odd:*x` allows `odd:x` but not `odd:xy`): the trigger reads each
/// key with its owner's permissions and does not fire for a key the owner may not read.
#[test]
fn a_keyspace_trigger_fires_only_for_keys_its_owner_may_read() {
    for (lang, script) in [
        ("lua", "GB('KeysReader'):foreach(function(r) execute('SET', 'odd:seen-' .. r.key .. '-x', r.value or '') end):register({prefix = 'odd:x', mode = 'sync', eventTypes = {'set'}})"),
        ("js", "GB('KeysReader').foreach(r => execute('SET', 'odd:seen-' + r.key + '-x', r.value || '')).register({prefix: 'odd:x', mode: 'sync', eventTypes: ['set']})"),
    ] {
        let (s, mut admin) = setup();
        set_user(&mut admin, "odd", &["~odd:*x", "+@all", "-@dangerous"]);
        let mut odd = login(&s, "odd");
        assert_eq!(exec(&mut odd, lang, script, &[]), "OK", "{lang}");
        // odd may read odd:xyx: the trigger fires and sees its value.
        cmd(&mut admin, &["SET", "odd:xyx", "visible"]);
        assert_eq!(fmt(&cmd(&mut admin, &["GET", "odd:seen-odd:xyx-x"])), "\"visible\"", "{lang}");
        // odd may not read odd:xy (it does not end with x): no firing, nothing read.
        cmd(&mut admin, &["SET", "odd:xy", "hidden"]);
        assert_eq!(fmt(&cmd(&mut admin, &["GET", "odd:seen-odd:xy-x"])), "nil", "{lang}");
        assert_eq!(fmt(&cmd(&mut admin, &["KEYS", "odd:seen-*"])), "[\"odd:seen-odd:xyx-x\"]", "{lang}");
    }
}

/// The same for a StreamReader: it reads each stream with its owner's permissions, so a
/// stream under its prefix that the owner may not read is not consumed (the consumer stops
/// with the refusal as its error) while the owner's other streams are.
#[test]
fn a_stream_reader_consumes_only_streams_its_owner_may_read() {
    for (lang, script) in [
        ("lua", "GB('StreamReader'):foreach(function(r) execute('INCR', 'odd:n-' .. r.key .. '-x') end):register({prefix = 'odd:x'})"),
        ("js", "GB('StreamReader').foreach(r => execute('INCR', 'odd:n-' + r.key + '-x')).register({prefix: 'odd:x'})"),
    ] {
        let (s, mut admin) = setup();
        set_user(&mut admin, "odd", &["~odd:*x", "+@all", "-@dangerous"]);
        let mut odd = login(&s, "odd");
        assert_eq!(exec(&mut odd, lang, script, &[]), "OK", "{lang}");
        cmd(&mut admin, &["XADD", "odd:xy", "*", "f", "hidden"]);
        cmd(&mut admin, &["XADD", "odd:xyx", "*", "f", "visible"]);
        common::eventually(&mut admin, &["GET", "odd:n-odd:xyx-x"], "\"1\"");
        // The refused stream's consumer stopped with the refusal; it never ran the steps.
        common::wait_until(20, "the refused stream's error", || {
            let regs = fmt(&cmd(&mut odd, &["RG.DUMPREGISTRATIONS"]));
            if regs.contains("odd:xy\"") && regs.contains("NOPERM") { Ok(()) } else { Err(regs) }
        });
        assert_eq!(fmt(&cmd(&mut admin, &["GET", "odd:n-odd:xy-x"])), "nil", "{lang}");
    }
}
