//! Packages are pinned by the sessions that import them, and only admins load or delete them:
//! after `RG.PACKAGE LOAD ... REPLACE` a session's triggers keep the version the session
//! imported (on every worker thread, after DEBUG RELOAD, after a restart from the AOF, on a
//! replica) until `RG.EXEC ... ID <id> UPGRADE`; a user without admin rights gets NOPERM.

mod common;

use common::{canon::fmt, cmd, exec, wait_until, Server};
use engine::packages::source_hash;

struct Lang {
    name: &'static str,
    /// The package `lib`: `tag(x)` returns `<version>:<x>`.
    lib: fn(&str) -> String,
    /// A session (id `pin-<lang>`) with a keyspace trigger on `in-<lang>:` (async: it runs
    /// on the workers) writing `out:<key>`, and a command trigger `tag-<lang>`, both through
    /// the package.
    session: &'static str,
    /// A plain run importing the package: its reply holds `tag('y')`.
    run: &'static str,
}

const LANGS: &[Lang] = &[
    Lang {
        name: "lua",
        lib: |v| format!("return {{ tag = function(x) return '{v}:' .. x end }}"),
        session: "local lib = require('lib')\n\
                  GB():foreach(function(r) execute('SET', 'out:' .. r.key, lib.tag(r.key)) end):register({prefix = 'in-lua:', eventTypes = {'set'}, mode = 'async'})\n\
                  GB('CommandReader'):map(function(a) return lib.tag(a[2]) end):register({trigger = 'tag-lua'})",
        run: "return require('lib').tag('y')",
    },
    Lang {
        name: "js",
        lib: |v| format!("export const tag = x => '{v}:' + x;"),
        session: "import { tag } from 'lib';\n\
                  GB().foreach(r => { execute('SET', 'out:' + r.key, tag(r.key)); }).register({prefix: 'in-js:', eventTypes: ['set'], mode: 'async'});\n\
                  GB('CommandReader').map(a => tag(a[1])).register({trigger: 'tag-js'});",
        run: "import { tag } from 'lib';\nGB('ShardsIDReader').map(() => tag('y')).run();",
    },
];

const NOPERM: &str = "(error) NOPERM user 'lim' may not load or delete packages: packages need admin rights (the permission to run CONFIG SET)";

fn load(c: &mut redis::Connection, lang: &str, source: &str, replace: bool) -> String {
    let mut words = vec!["RG.PACKAGE", "LOAD", lang, "lib", source];
    if replace {
        words.push("REPLACE");
    }
    fmt(&cmd(c, &words))
}

/// Both triggers of the session give `version`: the keyspace one for `writes` new keys
/// (several, so that workers that never ran the session build their instance now).
fn assert_version(c: &mut redis::Connection, l: &Lang, version: &str, writes: usize, when: &str) {
    assert_eq!(fmt(&cmd(c, &["RG.TRIGGER", &format!("tag-{}", l.name), "x"])), format!("[\"{version}:x\"]"), "{}: command trigger {when}", l.name);
    let keys: Vec<String> = (0..writes).map(|i| format!("in-{}:{}-{i}", l.name, when.replace(' ', "-"))).collect();
    for k in &keys {
        assert_eq!(fmt(&cmd(c, &["SET", k, "1"])), "OK");
    }
    for k in &keys {
        let expected = format!("\"{version}:{k}\"");
        wait_until(20, &format!("{}: keyspace trigger on {k} {when}", l.name), || {
            let got = fmt(&cmd(c, &["GET", &format!("out:{k}")]));
            if got == expected { Ok(()) } else { Err(format!("{got}, expected {expected}")) }
        });
    }
}

/// The `imports` RG.DUMPSESSIONS shows for the session of `l`.
fn imports(c: &mut redis::Connection, l: &Lang) -> String {
    let sessions = fmt(&cmd(c, &["RG.DUMPSESSIONS"]));
    let start = sessions.find(&format!("\"id\", \"pin-{}\"", l.name)).unwrap_or_else(|| panic!("no session pin-{}: {sessions}", l.name));
    let rest = &sessions[start..];
    let at = rest.find("\"imports\", ").expect("imports listed");
    let list = &rest[at + "\"imports\", ".len()..];
    // The list is the first balanced [...] there.
    let mut depth = 0;
    for (i, ch) in list.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return list[..=i].to_string();
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced imports: {list}")
}

fn pinned(l: &Lang, version: &str) -> String {
    format!(r#"[["language", "{}", "name", "lib", "hash", "{}"]]"#, l.name, source_hash(&(l.lib)(version)))
}

fn listed(l: &Lang, version: &str, owner: &str) -> String {
    format!(r#""name", "lib", "language", "{}", "builtin", 0, "owner", "{owner}", "hash", "{}", "importedBy", ["pin-{}"]"#, l.name, source_hash(&(l.lib)(version)), l.name)
}

fn rewrite_aof(c: &mut redis::Connection) {
    assert!(fmt(&cmd(c, &["BGREWRITEAOF"])).contains("rewriting"));
    wait_until(10, "the AOF rewrite to finish", || {
        let info = fmt(&cmd(c, &["INFO", "persistence"]));
        let done = ["aof_rewrite_in_progress:0", "aof_rewrite_scheduled:0", "aof_last_bgrewrite_status:ok", "aof_rewrites:1"].iter().all(|f| info.contains(f));
        if done { Ok(()) } else { Err(info) }
    });
}

#[test]
fn a_replaced_package_leaves_running_sessions_on_their_version_until_upgrade() {
    let mut s = Server::start_with(&["execution-threads", "4"], &["--appendonly", "yes", "--appendfsync", "always"]);
    let mut c = s.conn();
    for l in LANGS {
        assert_eq!(load(&mut c, l.name, &(l.lib)("v1"), false), "OK");
        assert_eq!(exec(&mut c, l.name, l.session, &["ID", &format!("pin-{}", l.name)]), "OK");
        assert_version(&mut c, l, "v1", 1, "before the replace");
        // An admin replaces the package while the session imports it.
        assert_eq!(load(&mut c, l.name, &(l.lib)("v2"), false), "(error) ERR package 'lib' already exists: add REPLACE to replace it");
        assert_eq!(load(&mut c, l.name, &(l.lib)("v2"), true), "OK");
        assert_eq!(imports(&mut c, l), pinned(l, "v1"));
        let list = fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"]));
        assert!(list.contains(&listed(l, "v2", "default")), "{list}");
        // The session keeps v1, on workers that never ran it too; new runs get v2.
        assert_version(&mut c, l, "v1", 12, "after the replace");
        assert!(exec(&mut c, l.name, l.run, &[]).contains("v2:y"), "{}", l.name);
    }
    assert_eq!(fmt(&cmd(&mut c, &["DEBUG", "RELOAD"])), "OK");
    for l in LANGS {
        assert_eq!(imports(&mut c, l), pinned(l, "v1"));
        assert_version(&mut c, l, "v1", 4, "after DEBUG RELOAD");
        assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"])).contains(&listed(l, "v2", "default")));
    }
    // From the AOF's commands, then from its RDB preamble.
    s.restart();
    let mut c = s.conn();
    for l in LANGS {
        assert_eq!(imports(&mut c, l), pinned(l, "v1"));
        assert_version(&mut c, l, "v1", 4, "after a restart from the AOF");
        assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"])).contains(&listed(l, "v2", "default")));
    }
    rewrite_aof(&mut c);
    s.restart();
    let mut c = s.conn();
    for l in LANGS {
        assert_eq!(imports(&mut c, l), pinned(l, "v1"));
        assert_version(&mut c, l, "v1", 4, "after a restart from the rewritten AOF");
        assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"])).contains(&listed(l, "v2", "default")));
        // DELETE stays refused while a session imports the package.
        let got = fmt(&cmd(&mut c, &["RG.PACKAGE", "DELETE", "lib"]));
        assert!(got.contains("package 'lib' is imported by session(s)"), "{got}");
    }
    // UPGRADE imports the current version, and that is what is saved.
    for l in LANGS {
        assert_eq!(exec(&mut c, l.name, l.session, &["ID", &format!("pin-{}", l.name), "UPGRADE"]), "OK");
        assert_eq!(imports(&mut c, l), pinned(l, "v2"));
        assert_version(&mut c, l, "v2", 4, "after UPGRADE");
    }
    s.restart();
    let mut c = s.conn();
    for l in LANGS {
        assert_eq!(imports(&mut c, l), pinned(l, "v2"));
        assert_version(&mut c, l, "v2", 2, "after UPGRADE and a restart");
    }
}

#[test]
fn only_admins_load_replace_or_delete_packages() {
    let s = Server::start(&[]);
    let mut admin = s.conn();
    assert_eq!(fmt(&cmd(&mut admin, &["ACL", "SETUSER", "lim", "on", ">pw", "~lim:*", "+@all", "-@dangerous"])), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["ACL", "SETUSER", "boss", "on", ">pw", "~*", "&*", "+@all"])), "OK");
    let mut lim = s.conn();
    assert_eq!(fmt(&cmd(&mut lim, &["AUTH", "lim", "pw"])), "OK");
    let mut boss = s.conn();
    assert_eq!(fmt(&cmd(&mut boss, &["AUTH", "boss", "pw"])), "OK");
    for l in LANGS {
        assert_eq!(load(&mut lim, l.name, &(l.lib)("v1"), false), NOPERM, "{}", l.name);
        assert_eq!(load(&mut boss, l.name, &(l.lib)("v1"), false), "OK");
        assert_eq!(load(&mut lim, l.name, &(l.lib)("v2"), true), NOPERM, "{}", l.name);
        assert_eq!(load(&mut admin, l.name, &(l.lib)("v2"), true), "OK");
        assert_eq!(load(&mut boss, l.name, &(l.lib)("v3"), true), "OK");
    }
    assert_eq!(fmt(&cmd(&mut lim, &["RG.PACKAGE", "DELETE", "lib"])), NOPERM);
    // Anyone may list them, with who loaded them.
    let list = fmt(&cmd(&mut lim, &["RG.PACKAGE", "LIST"]));
    for l in LANGS {
        let entry = format!(r#""name", "lib", "language", "{}", "builtin", 0, "owner", "boss", "hash", "{}", "importedBy", []"#, l.name, source_hash(&(l.lib)("v3")));
        assert!(list.contains(&entry), "{list}");
    }
    // The owner is the loader's, never one a client names.
    let got = fmt(&cmd(&mut admin, &["RG.PACKAGE", "LOAD", "lua", "lib", "return 1", "REPLACE", "OWNER", "eve"]));
    assert_eq!(got, "(error) ERR OWNER is internal: only the replication stream and the AOF send it");
    assert_eq!(fmt(&cmd(&mut boss, &["RG.PACKAGE", "DELETE", "lib"])), "OK");
    assert!(!fmt(&cmd(&mut admin, &["RG.PACKAGE", "LIST"])).contains(r#""builtin", 0"#));
}

#[test]
fn a_replica_records_the_owner_and_keeps_sessions_on_their_version() {
    let s = Server::start(&[]);
    let replica = Server::start_with(&[], &["--replicaof", "127.0.0.1", &s.port.to_string()]);
    let mut c = s.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    // ACL users are not replicated: the sessions' triggers run as boss there too.
    for conn in [&mut c, &mut r] {
        assert_eq!(fmt(&cmd(conn, &["ACL", "SETUSER", "boss", "on", ">pw", "~*", "&*", "+@all"])), "OK");
    }
    assert_eq!(fmt(&cmd(&mut c, &["AUTH", "boss", "pw"])), "OK");
    for l in LANGS {
        assert_eq!(load(&mut c, l.name, &(l.lib)("v1"), false), "OK");
        assert_eq!(exec(&mut c, l.name, l.session, &["ID", &format!("pin-{}", l.name)]), "OK");
        assert_eq!(load(&mut c, l.name, &(l.lib)("v2"), true), "OK");
    }
    cmd(&mut c, &["WAIT", "1", "5000"]);
    wait_until(10, "the packages and sessions to reach the replica", || {
        let list = fmt(&cmd(&mut r, &["RG.PACKAGE", "LIST"]));
        if LANGS.iter().all(|l| list.contains(&listed(l, "v2", "boss"))) { Ok(()) } else { Err(list) }
    });
    for l in LANGS {
        assert_eq!(imports(&mut r, l), pinned(l, "v1"));
    }
    // Promoted, it fires the sessions with the version they imported.
    assert_eq!(fmt(&cmd(&mut r, &["REPLICAOF", "NO", "ONE"])), "OK");
    for l in LANGS {
        assert_version(&mut r, l, "v1", 4, "on the promoted replica");
    }
}

/// A package first imported inside a callback was not imported when the session was
/// registered: its instances refuse it, saying how to fix that.
#[test]
fn an_import_the_session_did_not_make_when_registered_is_refused() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(load(&mut c, "lua", "return { f = function() return 'late' end }", false), "OK");
    assert_eq!(exec(&mut c, "lua", "GB('CommandReader'):map(function(a) return require(a[2]).f ~= nil end):register({trigger = 'lazy'})", &["ID", "lazy"]), "OK");
    assert_eq!(
        fmt(&cmd(&mut c, &["RG.TRIGGER", "lazy", "lib"])),
        "(error) ERR script:1: package 'lib' is not among the packages session 'lazy' imported when it was registered: upgrade the session (RG.EXEC ... ID lazy UPGRADE) to import it"
    );
}

/// An RDB saved before packages had owners and sessions pinned them (aux format 1; made with
/// the module of commit 929dffe on Redis 7.0: `lib` v1 in both languages and the sessions of
/// `LANGS`, as a default user): it loads, its packages have no owner, and its sessions pin the
/// packages loaded with it.
#[test]
fn an_rdb_of_the_first_format_loads_and_its_sessions_pin_what_it_holds() {
    let mut s = Server::start(&[]);
    s.stop();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/packages-format-1.rdb"), s.dir.join("dump.rdb")).expect("copy the fixture");
    s.restart();
    let mut c = s.conn();
    for l in LANGS {
        let list = fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"]));
        let entry = format!(r#""name", "lib", "language", "{}", "builtin", 0, "owner", nil, "hash", "{}", "importedBy", ["pin-{}"]"#, l.name, source_hash(&(l.lib)("v1")), l.name);
        assert!(list.contains(&entry), "{list}");
        assert_eq!(imports(&mut c, l), pinned(l, "v1"));
        assert_version(&mut c, l, "v1", 2, "after loading the old RDB");
        assert_eq!(load(&mut c, l.name, &(l.lib)("v2"), true), "OK");
        assert_version(&mut c, l, "v1", 2, "after a replace");
    }
    // Saved again in the current format, with the pins.
    assert_eq!(fmt(&cmd(&mut c, &["SAVE"])), "OK");
    s.restart();
    let mut c = s.conn();
    for l in LANGS {
        assert_eq!(imports(&mut c, l), pinned(l, "v1"));
        assert_version(&mut c, l, "v1", 2, "after saving in the new format");
        assert!(fmt(&cmd(&mut c, &["RG.PACKAGE", "LIST"])).contains(&listed(l, "v2", "default")));
    }
}
