//! Connections on a server with several ACL users: a recipe may use a connection only if
//! its user is an admin or listed in `connection.<name>.users`, and a connection's password
//! never shows, whatever characters it holds. Against a private PostgreSQL whose role `app`
//! logs in with a password, so that a percent-encoded password is proven to arrive intact.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::Duration;
use testdb::Postgres;

/// The password of PostgreSQL's role `app`: every character a URL gives a meaning to.
const PASSWORD: &str = "Qx1/Wv2@Zk3:Jm4%Hy5?Rt6#Bn7";
const ENCODED: &str = "Qx1%2FWv2%40Zk3%3AJm4%25Hy5%3FRt6%23Bn7";

/// The pieces of a password that must never show (at least 3 characters each).
fn pieces(password: &str) -> Vec<&str> {
    let mut v = vec![password];
    v.extend(password.split(['/', '@', ':', '%', '?', '#']).filter(|p| p.len() > 2));
    v
}

fn assert_hidden(text: &str, password: &str, encoded: &str) {
    for p in pieces(password).into_iter().chain([encoded]) {
        assert!(!text.contains(p), "{p:?} of the password shows in {text}");
    }
}

/// PostgreSQL with a table `items` and a role `app` that must give its password over TCP.
fn postgres() -> Postgres {
    let pg = Postgres::start();
    pg.sql(&format!("CREATE TABLE items (id text PRIMARY KEY, v text); CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'; GRANT ALL ON items TO app"));
    let hba = pg.dir.join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    // The first matching line wins: `app` needs its password, `postgres` (psql) stays trusted.
    std::fs::write(&hba, format!("host all app 127.0.0.1/32 scram-sha-256\n{rules}")).expect("pg_hba.conf");
    pg.sql("SELECT pg_reload_conf()");
    pg
}

fn url(pg: &Postgres, password: &str) -> String {
    format!("postgresql://app:{password}@127.0.0.1:{}/postgres", pg.port)
}

/// A connection to `s` as ACL user `user` (password `pw`).
fn login(s: &Server, user: &str) -> redis::Connection {
    let mut c = s.conn();
    assert_eq!(fmt(&cmd(&mut c, &["AUTH", user, "pw"])), "OK");
    c
}

fn recipe(lang: &str, kind: &str, name: &str, prefix: &str) -> String {
    match lang {
        "lua" => format!("local r = require('gears.recipes')\nr.{kind}({{ name = '{name}', prefix = '{prefix}', target = r.postgres({{ connection = 'pg', table = 'items' }}), flushMs = 10 }})"),
        _ => format!("import {{ {kind}, postgres }} from 'gears/recipes';\n{kind}({{ name: '{name}', prefix: '{prefix}', target: postgres({{ connection: 'pg', table: 'items' }}), flushMs: 10 }});"),
    }
}

fn refused(kind: &str, user: &str) -> String {
    format!("(error) ERR {kind}: user '{user}' may not use connection 'pg': only admins and the users in connection.pg.users may")
}

#[test]
fn only_admins_and_the_listed_users_may_use_a_connection() {
    let pg = postgres();
    let s = Server::start(&["connection.pg", &url(&pg, ENCODED)]);
    let mut admin = s.conn();
    assert_eq!(fmt(&cmd(&mut admin, &["ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@dangerous"])), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["ACL", "SETUSER", "lim", "on", ">pw", "~lim:*", "+@all", "-@dangerous"])), "OK");
    let (mut app, mut lim) = (login(&s, "app"), login(&s, "lim"));
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGGET", "connection.pg.users"])), "[nil]");

    // Unset: admins only. The same refusal for a connection that does not exist.
    for lang in ["lua", "js"] {
        for kind in ["writeBehind", "writeThrough"] {
            assert_eq!(exec(&mut lim, lang, &recipe(lang, kind, "lim_items", "lim:"), &["ID", "lim"]), refused(kind, "lim"), "{lang} {kind}");
            assert_eq!(exec(&mut app, lang, &recipe(lang, kind, "app_items", "app:"), &["ID", "app"]), refused(kind, "app"), "{lang} {kind}");
        }
    }
    let nope = "local r = require('gears.recipes')\nr.writeBehind({ name = 'n', prefix = 'lim:', target = r.postgres({ connection = 'nope', table = 'items' }) })";
    assert_eq!(exec(&mut lim, "lua", nope, &[]), "(error) ERR writeBehind: user 'lim' may not use connection 'nope': only admins and the users in connection.nope.users may");
    assert_eq!(fmt(&cmd(&mut lim, &["HSET", "lim:l0", "v", "refused"])), "1");
    // Nothing was registered: give a recipe that would exist time to apply, then look.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pg.sql("SELECT count(*) FROM items"), "0");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.DUMPREGISTRATIONS"])), "[]");

    // Only admins set the list.
    assert!(fmt(&cmd(&mut lim, &["RG.CONFIGSET", "connection.pg.users", "lim"])).starts_with("(error) NOPERM"));
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGSET", "connection.pg.users", "app"])), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGGET", "connection.pg.users"])), r#"["app"]"#);
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGSET", "connection.pg.users", "app,,lim"])), "(error) ERR 'connection.pg.users' must be ACL user names separated by spaces or commas, or '*' for any user (empty: only admins): an empty name (two commas in a row, or a comma at an end)");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGGET", "connection.pg.users"])), r#"["app"]"#);

    // Listed: app registers (Lua, then JS as an upgrade), and its writes arrive.
    assert_eq!(exec(&mut app, "lua", &recipe("lua", "writeBehind", "app_items", "app:"), &["ID", "app"]), "OK");
    assert_eq!(fmt(&cmd(&mut app, &["HSET", "app:a1", "v", "from lua"])), "1");
    common::pg_eventually(&pg, "SELECT id, v FROM items ORDER BY id", "a1|from lua", 20);
    assert_eq!(exec(&mut app, "js", &recipe("js", "writeBehind", "app_items", "app:"), &["ID", "app", "UPGRADE"]), "OK");
    assert_eq!(fmt(&cmd(&mut app, &["HSET", "app:a2", "v", "from js"])), "1");
    common::pg_eventually(&pg, "SELECT id, v FROM items ORDER BY id", "a1|from lua\na2|from js", 20);
    for lang in ["lua", "js"] {
        assert_eq!(exec(&mut lim, lang, &recipe(lang, "writeBehind", "lim_items", "lim:"), &["ID", "lim"]), refused("writeBehind", "lim"), "{lang}");
    }

    // `*`: any user, on keys it may read.
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGSET", "connection.pg.users", "*"])), "OK");
    assert_eq!(exec(&mut lim, "js", &recipe("js", "writeBehind", "lim_other", "app:"), &["ID", "lim2"]), "(error) ERR register: user 'lim' may not read keys starting with 'app:'");
    assert_eq!(exec(&mut lim, "lua", &recipe("lua", "writeBehind", "lim_items", "lim:"), &["ID", "lim"]), "OK");
    assert_eq!(fmt(&cmd(&mut lim, &["HSET", "lim:l1", "v", "from lim"])), "1");
    common::pg_eventually(&pg, "SELECT id, v FROM items ORDER BY id", "a1|from lua\na2|from js\nl1|from lim", 20);
    // Empty: admins only again, for new registrations.
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGSET", "connection.pg.users", ""])), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["RG.CONFIGGET", "connection.pg.users"])), "[nil]");
    assert_eq!(exec(&mut lim, "lua", &recipe("lua", "writeBehind", "lim_items", "lim:"), &["ID", "lim", "UPGRADE"]), refused("writeBehind", "lim"));
    // An admin needs no list.
    assert_eq!(exec(&mut admin, "js", &recipe("js", "writeThrough", "admin_items", "adm:"), &["ID", "adm"]), "OK");
    assert_eq!(fmt(&cmd(&mut admin, &["HSET", "adm:x1", "v", "from admin"])), "1");
    assert_eq!(pg.sql("SELECT v FROM items WHERE id = 'x1'"), "from admin");

    let shown = fmt(&cmd(&mut admin, &["RG.CONFIGGET", "connection.pg"]));
    assert_eq!(shown, format!(r#"["postgresql://app:***@127.0.0.1:{}/postgres"]"#, pg.port));
    assert_hidden(&format!("{shown}{}{}", fmt(&cmd(&mut admin, &["RG.DUMPREGISTRATIONS"])), s.log()), PASSWORD, ENCODED);
}

#[test]
fn passwords_never_show() {
    let pg = postgres();
    let s = Server::start(&[]);
    let mut c = s.conn();
    // Percent-encoded, every character is accepted, masked, and reaches PostgreSQL intact.
    for (password, encoded) in [("hun/ter2", "hun%2Fter2"), ("hun@ter2", "hun%40ter2"), ("hun:ter2", "hun%3Ater2"), ("hun%ter2", "hun%25ter2"), (PASSWORD, ENCODED)] {
        assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pw", &url(&pg, encoded)])), "OK", "{encoded}");
        let shown = fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.pw"]));
        assert_eq!(shown, format!(r#"["postgresql://app:***@127.0.0.1:{}/postgres"]"#, pg.port));
        assert_hidden(&shown, password, encoded);
    }
    // A raw ':' is read alike by every driver but MongoDB's.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.colon", &url(&pg, "hun:ter2")])), "OK");
    let shown = fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.colon"]));
    assert_eq!(shown, format!(r#"["postgresql://app:***@127.0.0.1:{}/postgres"]"#, pg.port));
    assert_hidden(&shown, "hun:ter2", "hun:ter2");
    // Raw, the others are refused, the error telling what to do and showing no password.
    for (raw, ch, encoded) in [("hun/ter2", '/', "%2F"), ("hun@ter2", '@', "%40"), ("hun?ter2", '?', "%3F"), ("hun#ter2", '#', "%23"), ("Pc7%off!", '%', "%25")] {
        let e = fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.raw", &url(&pg, raw)]));
        assert_eq!(e, format!("(error) ERR 'connection.raw': the URL has a raw '{ch}' in its user name or password (before the '@'), which the database drivers do not all read the same way; percent-encode it ('{ch}' as {encoded})"));
        assert_hidden(&e, raw, raw);
        assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.raw"])), "[nil]");
    }
    // The key/value form: the password value masked.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.kv", "host=127.0.0.1 user=app password='hun ter2' dbname=postgres"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGGET", "connection.kv"])), r#"["host=127.0.0.1 user=app password=*** dbname=postgres"]"#);

    // The percent-encoded password is the one PostgreSQL wants: the recipe applies.
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", &url(&pg, ENCODED)])), "OK");
    assert_eq!(exec(&mut c, "lua", &recipe("lua", "writeBehind", "items", "item:"), &["ID", "items"]), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "item:1", "v", "arrived"])), "1");
    common::pg_eventually(&pg, "SELECT id, v FROM items", "1|arrived", 20);
    // A wrong one: PostgreSQL's refusal is in lastError and the log, the password nowhere.
    let wrong = "Zq7/Xy9@Kp3";
    assert_eq!(fmt(&cmd(&mut c, &["RG.CONFIGSET", "connection.pg", &url(&pg, "Zq7%2FXy9%40Kp3")])), "OK");
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'");
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "item:2", "v", "waits"])), "1");
    let dump = common::wait_until(20, "a lastError about the password", || {
        let d = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        if d.contains("password authentication failed") { Ok(d) } else { Err(d) }
    });
    assert_hidden(&format!("{dump}{}", s.log()), wrong, "Zq7%2FXy9%40Kp3");
    assert_hidden(&s.log(), PASSWORD, ENCODED);
    assert_eq!(pg.sql("SELECT count(*) FROM items WHERE id = '2'"), "0");
}
