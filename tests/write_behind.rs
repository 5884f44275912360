//! Write-behind to PostgreSQL: capture, apply, mapping and types, in both languages, and
//! what happens when processes die, the database goes away or data is bad.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::{Duration, Instant};
use testdb::Postgres;

/// Waits (up to `secs`) until `sql` answers `expected` in PostgreSQL.
fn pg_eventually(pg: &Postgres, sql: &str, expected: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = pg.sql(sql);
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: expected {expected:?}, still {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server_with(pg: &Postgres, extra: &[&str]) -> Server {
    let url = pg.url();
    Server::start_with(&["connection.pg", &url], extra)
}

const USERS: &str = "CREATE TABLE users (id integer PRIMARY KEY, name text, age integer, score double precision, active boolean, joined timestamptz)";

fn lua_recipe(opts: &str) -> String {
    format!("local r = require('gears.recipes')\nr.writeBehind({{ name = 'users', prefix = 'user:', target = r.postgres({{ connection = 'pg', table = 'users' }}), flushMs = 10{opts} }})")
}

fn js_recipe(opts: &str) -> String {
    format!("import {{ writeBehind, postgres }} from 'gears/recipes';\nwriteBehind({{ name: 'users', prefix: 'user:', target: postgres({{ connection: 'pg', table: 'users' }}), flushMs: 10{opts} }});")
}

#[test]
fn inserts_updates_deletes_expiry_rename_and_types_in_both_languages() {
    let pg = Postgres::start();
    let s = server_with(&pg, &[]);
    let mut c = s.conn();
    for (lang, code) in [("lua", lua_recipe("")), ("js", js_recipe(""))] {
        pg.sql(&format!("DROP TABLE IF EXISTS users; {USERS}"));
        cmd(&mut c, &["FLUSHALL"]);
        assert_eq!(exec(&mut c, lang, &code, &["ID", "wb"]), "OK", "{lang}");
        // Insert, with every type.
        cmd(&mut c, &["HSET", "user:1", "name", "Ann", "age", "31", "score", "9.5", "active", "true", "joined", "2024-05-01T12:30:00Z", "ignored", "x"]);
        cmd(&mut c, &["HSET", "user:2", "name", "Bob", "age", "40"]);
        pg_eventually(&pg, "SELECT id, name, age, score, active, joined AT TIME ZONE 'UTC' FROM users ORDER BY id", "1|Ann|31|9.5|t|2024-05-01 12:30:00\n2|Bob|40|||", 20);
        // Partial update: the row is the whole hash after the change.
        cmd(&mut c, &["HSET", "user:2", "age", "41"]);
        cmd(&mut c, &["HINCRBY", "user:2", "age", "1"]);
        cmd(&mut c, &["HDEL", "user:1", "score"]);
        pg_eventually(&pg, "SELECT id, name, age, score FROM users ORDER BY id", "1|Ann|31|\n2|Bob|42|", 20);
        // Delete, expiry, and rename (into and out of the prefix).
        cmd(&mut c, &["HSET", "user:3", "name", "Cy"]);
        cmd(&mut c, &["HSET", "tmp:4", "name", "Dee"]);
        cmd(&mut c, &["RENAME", "tmp:4", "user:4"]);
        pg_eventually(&pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM users", "1,2,3,4", 20);
        cmd(&mut c, &["DEL", "user:1"]);
        cmd(&mut c, &["PEXPIRE", "user:2", "50"]);
        cmd(&mut c, &["RENAME", "user:3", "old:3"]);
        pg_eventually(&pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM users", "4", 20);
        // Bad values go to the dead-letter stream; the rest still arrives.
        cmd(&mut c, &["HSET", "user:5", "name", "Eve", "age", "old"]);
        cmd(&mut c, &["HSET", "user:6", "name", "Fay", "age", "6"]);
        pg_eventually(&pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM users", "4,6", 20);
        let dead = fmt(&cmd(&mut c, &["XRANGE", "rg:dead:users", "-", "+"]));
        assert!(dead.contains("key 'user:5': field 'age' 'old' is not an integer (column age)"), "{dead}");
        common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
        let dump = fmt(&cmd(&mut c, &["RG.DUMPREGISTRATIONS"]));
        assert!(dump.contains(r#""reader", "Recipe""#) && dump.contains(r#""deadLettered", 1"#), "{dump}");
        let info = fmt(&cmd(&mut c, &["INFO", "rg"]));
        assert!(info.contains("rg_recipes:1") && info.contains("rg_recipe_users:backlog=0"), "{info}");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "wb"])), "OK");
    }
}
