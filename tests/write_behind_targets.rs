//! Write-behind end to end, through the real module, to MariaDB (`mysql`), MongoDB
//! (`mongodb`, against SecantusDB) and SQLite (`sqlite`), each from Lua and from JS.
//!
//! Every connector gets the same Redis-side changes (the `step_*` functions): inserts with
//! every type, a partial update that must write the whole row image, HINCRBY,
//! HINCRBYFLOAT, HDEL of a field and of the last field, DEL, UNLINK, PEXPIRE, RENAME into,
//! out of and within the prefix, a `columns` mapping with a renamed column and a
//! `keyPattern`, hashes missing mapped fields, values the conversion refuses and a row the
//! target refuses (both dead-lettered while the rest arrives). Lua runs at-least-once, JS
//! exactly-once (with its checkpoints checked). Every assertion reads the target back,
//! polling with a deadline.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use testdb::{MariaDb, Mongo};

// ---------------------------------------------------------------------------------------
// Waiting and Redis helpers.

/// Polls `read` (the target, read back) until it gives `expected`; fails after 30 s.
fn until(what: &str, expected: &str, mut read: impl FnMut() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = read();
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{what}:\nexpected {expected:?}\n   still {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command that must not fail.
fn ok(c: &mut redis::Connection, words: &[&str]) {
    let r = fmt(&cmd(c, words));
    assert!(!r.starts_with("(error)"), "{words:?}: {r}");
}

/// A dead letter: key, error, and all its fields.
type Dead = (String, String, Vec<(String, String)>);

/// The entries of the dead-letter stream of recipe `name`, by key.
fn dead_letters(c: &mut redis::Connection, name: &str) -> Vec<Dead> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE").arg(format!("rg:dead:{name}")).arg("-").arg("+").query(c).expect("XRANGE");
    let mut out: Vec<_> = entries
        .into_iter()
        .map(|(_, f)| {
            let pairs: Vec<(String, String)> = f.chunks(2).map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default())).collect();
            let get = |k: &str| pairs.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone()).unwrap_or_default();
            (get("key"), get("error"), pairs.clone())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The id of the last entry ever added to `stream` (it stays after the entries are trimmed).
fn last_generated_id(c: &mut redis::Connection, stream: &str) -> String {
    let v: redis::Value = redis::cmd("XINFO").arg("STREAM").arg(stream).query(c).expect("XINFO STREAM");
    let redis::Value::Array(items) = v else { panic!("XINFO STREAM {stream}: {v:?}") };
    for kv in items.chunks(2) {
        if let [redis::Value::BulkString(k), redis::Value::BulkString(id)] = kv {
            if k == b"last-generated-id" {
                return String::from_utf8_lossy(id).into_owned();
            }
        }
    }
    panic!("XINFO STREAM {stream}: no last-generated-id")
}

// ---------------------------------------------------------------------------------------
// Recipes, written once and rendered as Lua or as JS.

#[derive(Clone)]
enum O {
    S(&'static str),
    I(i64),
    T(Vec<(&'static str, O)>),
    /// A target constructor: `mysql({...})` / `r.mysql({...})`.
    Target(&'static str, Vec<(&'static str, O)>),
}

fn render(lang: &str, o: &O) -> String {
    match o {
        O::S(s) => format!("'{s}'"),
        O::I(n) => n.to_string(),
        O::T(m) => {
            let sep = if lang == "lua" { " = " } else { ": " };
            format!("{{ {} }}", m.iter().map(|(k, v)| format!("{k}{sep}{}", render(lang, v))).collect::<Vec<_>>().join(", "))
        }
        O::Target(kind, m) => format!("{}{kind}({})", if lang == "lua" { "r." } else { "" }, render(lang, &O::T(m.clone()))),
    }
}

/// Registers (session `wb`) the two recipes every connector test uses:
/// - `users`: keys `user:<id>`, every column of the table (SQL) or every field (MongoDB);
/// - `accts`: keys `acct:<id>:profile` (keyPattern), column `full_name` from field `name`
///   and `email` from `email` (other fields are not written).
fn register(c: &mut redis::Connection, lang: &str, kind: &'static str, delivery: &'static str, users: O, accts: O) {
    let common = |name: &'static str, prefix: &'static str, target: O| vec![("name", O::S(name)), ("prefix", O::S(prefix)), ("target", target), ("flushMs", O::I(10)), ("delivery", O::S(delivery))];
    let users = O::T(common("users", "user:", users));
    let mut a = common("accts", "acct:", accts);
    a.push(("keyPattern", O::S("acct:*:profile")));
    a.push(("columns", O::T(vec![("full_name", O::S("name")), ("email", O::S("email"))])));
    let accts = O::T(a);
    let code = if lang == "lua" {
        format!("local r = require('gears.recipes')\nr.writeBehind({})\nr.writeBehind({})\n", render(lang, &users), render(lang, &accts))
    } else {
        format!("import {{ writeBehind, {kind} }} from 'gears/recipes';\nwriteBehind({});\nwriteBehind({});\n", render(lang, &users), render(lang, &accts))
    };
    assert_eq!(exec(c, lang, &code, &["ID", "wb"]), "OK", "{lang}:\n{code}");
}

/// Drops the session and waits until its recipes are gone (the next iteration starts new
/// pipelines, with new connections).
fn unregister(c: &mut redis::Connection) {
    assert_eq!(fmt(&cmd(c, &["RG.DROPSESSION", "wb"])), "OK");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fmt(&cmd(c, &["INFO", "rg"])).contains("rg_recipes:0") {
        assert!(Instant::now() < deadline, "the recipes did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// The Redis-side changes, the same for every connector.

/// Inserts: user:1 with every type (a timestamp with a zone and a fraction, and a field no
/// column has), user:2 missing most fields, user:3 with other spellings of the values.
fn step_insert(c: &mut redis::Connection) {
    ok(c, &["HSET", "user:1", "name", "Ann", "age", "31", "score", "9.5", "active", "yes", "joined", "2024-05-01T14:30:00.25+02:00", "ignored", "x"]);
    ok(c, &["HSET", "user:2", "name", "Bob", "age", "40"]);
    ok(c, &["HSET", "user:3", "name", "Cy", "age", "-7", "score", "1e3", "active", "0", "joined", "1700000000"]);
}

/// HSET of one field of user:1 (whose row the test altered in the target meanwhile): the
/// whole row image is written again.
fn step_image(c: &mut redis::Connection) {
    ok(c, &["HSET", "user:1", "active", "off"]);
}

/// HINCRBY, HINCRBYFLOAT (a new field), HDEL of a field, HDEL of the last fields (the key
/// goes, and so does the row).
fn step_partial(c: &mut redis::Connection) {
    ok(c, &["HINCRBY", "user:2", "age", "1"]);
    ok(c, &["HINCRBYFLOAT", "user:2", "score", "0.25"]);
    ok(c, &["HDEL", "user:1", "score"]);
    ok(c, &["HDEL", "user:3", "name", "age", "score", "active", "joined"]);
}

/// More rows, one renamed into the prefix (user:1 and user:2 are still there).
fn step_more(c: &mut redis::Connection) {
    for (k, n) in [("user:4", "Dee"), ("user:5", "Eve"), ("user:8", "Hal"), ("tmp:7", "Gus")] {
        ok(c, &["HSET", k, "name", n]);
    }
    ok(c, &["HSET", "user:6", "name", "Fay", "email", "f@x.io"]);
    ok(c, &["RENAME", "tmp:7", "user:7"]);
}

/// DEL, UNLINK, PEXPIRE, RENAME out of the prefix and within it: 6, 7 and 9 remain.
fn step_remove(c: &mut redis::Connection) {
    ok(c, &["DEL", "user:1"]);
    ok(c, &["UNLINK", "user:2"]);
    ok(c, &["PEXPIRE", "user:4", "50"]);
    ok(c, &["RENAME", "user:5", "old:5"]);
    ok(c, &["RENAME", "user:8", "user:9"]);
}

/// The `accts` recipe: a full profile (with a field not mapped), one missing `email`, a key
/// under the prefix that the keyPattern does not match, one whose key part is not an
/// integer, and a later write that must still arrive.
fn step_accts(c: &mut redis::Connection) {
    ok(c, &["HSET", "acct:7:profile", "name", "Ann", "email", "a@x.io", "tier", "gold"]);
    ok(c, &["HSET", "acct:8:profile", "name", "Bo"]);
    ok(c, &["HSET", "acct:7:settings", "theme", "dark"]);
    ok(c, &["HSET", "acct:x:profile", "name", "Bad"]);
    ok(c, &["HSET", "acct:9:profile", "name", "Cy", "email", "c@x.io"]);
}

fn step_accts_update(c: &mut redis::Connection) {
    ok(c, &["HDEL", "acct:7:profile", "email"]);
    ok(c, &["HSET", "acct:8:profile", "email", "b@x.io"]);
    ok(c, &["DEL", "acct:9:profile"]);
}

/// Values the conversion refuses (20, 21, 23) and a row the target refuses (22: its name
/// is too long for the SQL tables, its email is user:6's under a unique index in
/// MongoDB); 24 must arrive anyway. One transaction, so that they are one batch.
fn step_bad(c: &mut redis::Connection) {
    let replies: Vec<redis::Value> = redis::pipe()
        .atomic()
        .cmd("HSET").arg(&["user:20", "name", "Ida", "age", "old"])
        .cmd("HSET").arg(&["user:21", "name", "Jo", "active", "maybe"])
        .cmd("HSET").arg(&["user:22", "name", "Kim the Eleventh", "email", "f@x.io"])
        .cmd("HSET").arg(&["user:23", "name", "Lu", "joined", "yesterday"])
        .cmd("HSET").arg(&["user:24", "name", "Max", "age", "24"])
        .query(c)
        .expect("MULTI/EXEC");
    assert_eq!(fmt(&redis::Value::Array(replies)), "[2, 2, 2, 2, 2]");
}

/// One last good change per recipe (exactly-once: the checkpoints must end at them).
fn step_last(c: &mut redis::Connection) {
    ok(c, &["HSET", "user:25", "name", "Ned"]);
    ok(c, &["HSET", "acct:10:profile", "name", "Di", "email", "d@x.io"]);
}

/// Checks the dead letters of step_bad and step_accts, once both recipes are idle (every
/// retry done); `rejected` is what the target's refusal of user:22 says, `pk_column` the
/// key column of `accts`. Returns what is wrong with the dead-letter streams but does not
/// stop the test (see `no_bugs`).
fn check_dead_letters(c: &mut redis::Connection, ctx: &str, rejected: &[&str], pk_column: &str) -> Vec<String> {
    common::eventually(c, &["XLEN", "rg:wb:users"], "0");
    common::eventually(c, &["XLEN", "rg:wb:accts"], "0");
    let mut bugs = Vec::new();
    let mut dead = dead_letters(c, "users");
    // Each change once: the stream id of the change is the entry's `id`.
    let all = dead.len();
    dead.dedup_by(|a, b| a.2.iter().find(|(f, _)| f == "id") == b.2.iter().find(|(f, _)| f == "id"));
    if dead.len() != all {
        let keys: Vec<String> = dead_letters(c, "users").into_iter().map(|(k, _, _)| k).collect();
        bugs.push(format!("{ctx}: rg:dead:users holds {all} entries for {} changes: {keys:?}", dead.len()));
    }
    let keys: Vec<&str> = dead.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["user:20", "user:21", "user:22", "user:23"], "{ctx}: {dead:?}");
    assert_eq!(dead[0].1, "key 'user:20': field 'age' 'old' is not an integer (column age)", "{ctx}");
    assert_eq!(dead[1].1, "key 'user:21': field 'active' 'maybe' is not a boolean (column active)", "{ctx}");
    assert!(rejected.iter().any(|r| dead[2].1.contains(r)), "{ctx}: the target's refusal of user:22: {:?}", dead[2]);
    assert_eq!(dead[3].1, "key 'user:23': field 'joined' 'yesterday' is not a timestamp (column joined)", "{ctx}");
    // A conversion failure keeps the change itself: op and the hash's fields.
    let fields = &dead[0].2;
    for (f, v) in [("op", "u"), ("key", "user:20"), ("name", "Ida"), ("age", "old")] {
        assert!(fields.iter().any(|(a, b)| a == f && b == v), "{ctx}: {f}={v} missing in {fields:?}");
    }
    assert!(fields.iter().any(|(a, b)| a == "id" && b.contains('-')), "{ctx}: {fields:?}");
    // INFO counts what is in the dead-letter stream (the backlog follows the stream within a round).
    until(&format!("{ctx}: INFO rg"), &format!("backlog=0 dead_lettered={all}"), || {
        let info = fmt(&cmd(c, &["INFO", "rg"]));
        let line = info.split("rg_recipe_users:").nth(1).and_then(|l| l.split("\\r").next()).unwrap_or_default().to_string();
        let get = |k: &str| line.split(',').find_map(|kv| kv.strip_prefix(k)).unwrap_or("?").to_string();
        format!("backlog={} dead_lettered={}", get("backlog="), get("dead_lettered="))
    });
    // acct:7:settings was not captured (else it would be here too: '7:settings' is no integer).
    let dead = dead_letters(c, "accts");
    assert_eq!(dead.len(), 1, "{ctx}: {dead:?}");
    assert_eq!(dead[0].0, "acct:x:profile", "{ctx}");
    assert_eq!(dead[0].1, format!("key 'acct:x:profile': the primary key 'x' is not an integer (column {pk_column})"), "{ctx}");
    bugs
}

/// Fails if check_dead_letters found something wrong; checked last, so that it does not
/// hide what the rest of the test checks.
///
/// Known bug (at the time of writing): each change must be dead-lettered once, but an
/// entry that fails conversion (user:23) after a row the target rejects (user:22) in the
/// same batch is dead-lettered again at every retry of the rejected row (1 + maxRetries
/// times): the pipeline writes conversion failures to `rg:dead:<name>` while building the
/// batch, then trims the stream only up to the rejected row before backing off, so the
/// next round reads and dead-letters them again.
fn no_bugs(bugs: &[String]) {
    assert!(bugs.is_empty(), "the dead-letter streams are wrong:\n{}", bugs.join("\n"));
}

/// Waits until both recipes applied everything, and returns the last ids of their streams
/// (users, accts).
fn drained(c: &mut redis::Connection) -> (String, String) {
    common::eventually(c, &["XLEN", "rg:wb:users"], "0");
    common::eventually(c, &["XLEN", "rg:wb:accts"], "0");
    (last_generated_id(c, "rg:wb:users"), last_generated_id(c, "rg:wb:accts"))
}

// ---------------------------------------------------------------------------------------
// MariaDB.

const MY_TABLES: &str = "DROP TABLE IF EXISTS users, accounts, rg_checkpoints; \
    CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(10), age INT, score DOUBLE, active BOOLEAN, joined DATETIME(6)); \
    CREATE TABLE accounts (id INT PRIMARY KEY, full_name VARCHAR(50), email VARCHAR(50))";

#[test]
fn mariadb_in_both_languages() {
    let db = MariaDb::start();
    let s = Server::start_with(&["connection.my", &db.url()], &[]);
    let mut c = s.conn();
    let users = "SELECT id, name, age, score, active, joined FROM users ORDER BY id";
    let ids = "SELECT IFNULL(GROUP_CONCAT(id ORDER BY id), '') FROM users";
    let accounts = "SELECT id, full_name, email FROM accounts ORDER BY id";
    let mut bugs = Vec::new();
    for (lang, delivery) in [("lua", "at-least-once"), ("js", "exactly-once")] {
        let ctx = format!("mariadb, {lang}, {delivery}");
        let q = |sql: &str| db.sql(sql);
        q(MY_TABLES);
        ok(&mut c, &["FLUSHALL"]);
        let target = |table| O::Target("mysql", vec![("connection", O::S("my")), ("table", O::S(table))]);
        register(&mut c, lang, "mysql", delivery, target("users"), target("accounts"));

        step_insert(&mut c);
        until(&format!("{ctx}: inserts and types"), "1\tAnn\t31\t9.5\t1\t2024-05-01 12:30:00.250000\n2\tBob\t40\tNULL\tNULL\tNULL\n3\tCy\t-7\t1000\t0\t2023-11-14 22:13:20.000000", || q(users));
        q("UPDATE users SET name = 'Zed', age = 0 WHERE id = 1");
        step_image(&mut c);
        until(&format!("{ctx}: whole row image"), "1\tAnn\t31\t9.5\t0\t2024-05-01 12:30:00.250000", || q(&format!("{users} LIMIT 1")));
        step_partial(&mut c);
        until(&format!("{ctx}: partial updates"), "1\tAnn\t31\tNULL\t0\t2024-05-01 12:30:00.250000\n2\tBob\t41\t0.25\tNULL\tNULL", || q(users));
        step_more(&mut c);
        until(&format!("{ctx}: more rows, rename into the prefix"), "1,2,4,5,6,7,8", || q(ids));
        step_remove(&mut c);
        until(&format!("{ctx}: del, unlink, expiry, renames"), "6\tFay\n7\tGus\n9\tHal", || q("SELECT id, name FROM users ORDER BY id"));

        step_accts(&mut c);
        until(&format!("{ctx}: columns and keyPattern"), "7\tAnn\ta@x.io\n8\tBo\tNULL\n9\tCy\tc@x.io", || q(accounts));
        step_accts_update(&mut c);
        until(&format!("{ctx}: columns, updates"), "7\tAnn\tNULL\n8\tBo\tb@x.io", || q(accounts));

        step_bad(&mut c);
        until(&format!("{ctx}: good rows arrive past bad ones"), "6,7,9,24", || q(ids));
        bugs.extend(check_dead_letters(&mut c, &ctx, &["Data too long for column 'name'"], "id"));

        step_last(&mut c);
        until(&format!("{ctx}: last rows"), "6,7,9,24,25", || q(ids));
        until(&format!("{ctx}: last account"), "7\tAnn\tNULL\n8\tBo\tb@x.io\n10\tDi\td@x.io", || q(accounts));
        let (u, a) = drained(&mut c);
        let tables = "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = 'rg_checkpoints'";
        if delivery == "exactly-once" {
            until(&format!("{ctx}: checkpoints"), &format!("accts\trg:wb:accts\t{a}\nusers\trg:wb:users\t{u}"), || q("SELECT recipe, stream, last_id FROM rg_checkpoints ORDER BY recipe"));
        } else {
            assert_eq!(q(tables), "0", "{ctx}: at-least-once keeps no checkpoints");
        }
        unregister(&mut c);
    }
    no_bugs(&bugs);
}

// ---------------------------------------------------------------------------------------
// SQLite.

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs SQL on the database file with the sqlite3 client (waiting for the module's write
/// lock rather than failing on it), NULL shown as `NULL`.
fn sqlite(path: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3").args(["-batch", "-cmd", ".timeout 10000", "-cmd", ".nullvalue NULL"]).arg(path).arg(sql).output().expect("sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

const LITE_TABLES: &str = "DROP TABLE IF EXISTS users; DROP TABLE IF EXISTS accounts; DROP TABLE IF EXISTS rg_checkpoints; \
    CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT CHECK (length(name) <= 10), age INTEGER, score REAL, active BOOLEAN, joined TIMESTAMP); \
    CREATE TABLE accounts (id INTEGER PRIMARY KEY, full_name TEXT, email TEXT);";

#[test]
fn sqlite_in_both_languages() {
    let dir = TempDir(testdb::temp_dir("sqlite"));
    let path = dir.0.join("app.db");
    sqlite(&path, LITE_TABLES);
    let s = Server::start_with(&["connection.lite", &format!("sqlite://{}", path.display())], &[]);
    let mut c = s.conn();
    let users = "SELECT id, name, age, typeof(age), score, typeof(score), active, typeof(active), joined, typeof(joined) FROM users ORDER BY id";
    let ids = "SELECT IFNULL(group_concat(id, ','), '') FROM (SELECT id FROM users ORDER BY id)";
    let accounts = "SELECT id, full_name, email FROM accounts ORDER BY id";
    let mut bugs = Vec::new();
    for (lang, delivery) in [("lua", "at-least-once"), ("js", "exactly-once")] {
        let ctx = format!("sqlite, {lang}, {delivery}");
        let q = |sql: &str| sqlite(&path, sql);
        q(LITE_TABLES);
        ok(&mut c, &["FLUSHALL"]);
        let target = |table| O::Target("sqlite", vec![("connection", O::S("lite")), ("table", O::S(table))]);
        register(&mut c, lang, "sqlite", delivery, target("users"), target("accounts"));

        step_insert(&mut c);
        until(
            &format!("{ctx}: inserts and types"),
            "1|Ann|31|integer|9.5|real|1|integer|2024-05-01T12:30:00.250000Z|text\n\
             2|Bob|40|integer|NULL|null|NULL|null|NULL|null\n\
             3|Cy|-7|integer|1000.0|real|0|integer|2023-11-14T22:13:20.000000Z|text",
            || q(users),
        );
        q("UPDATE users SET name = 'Zed', age = 0 WHERE id = 1");
        step_image(&mut c);
        until(&format!("{ctx}: whole row image"), "1|Ann|31|9.5|0|2024-05-01T12:30:00.250000Z", || q("SELECT id, name, age, score, active, joined FROM users WHERE id = 1"));
        step_partial(&mut c);
        until(&format!("{ctx}: partial updates"), "1|Ann|31|NULL|0|2024-05-01T12:30:00.250000Z\n2|Bob|41|0.25|NULL|NULL", || q("SELECT id, name, age, score, active, joined FROM users ORDER BY id"));
        step_more(&mut c);
        until(&format!("{ctx}: more rows, rename into the prefix"), "1,2,4,5,6,7,8", || q(ids));
        step_remove(&mut c);
        until(&format!("{ctx}: del, unlink, expiry, renames"), "6|Fay\n7|Gus\n9|Hal", || q("SELECT id, name FROM users ORDER BY id"));

        step_accts(&mut c);
        until(&format!("{ctx}: columns and keyPattern"), "7|Ann|a@x.io\n8|Bo|NULL\n9|Cy|c@x.io", || q(accounts));
        step_accts_update(&mut c);
        until(&format!("{ctx}: columns, updates"), "7|Ann|NULL\n8|Bo|b@x.io", || q(accounts));

        step_bad(&mut c);
        until(&format!("{ctx}: good rows arrive past bad ones"), "6,7,9,24", || q(ids));
        bugs.extend(check_dead_letters(&mut c, &ctx, &["CHECK constraint failed"], "id"));

        step_last(&mut c);
        until(&format!("{ctx}: last rows"), "6,7,9,24,25", || q(ids));
        until(&format!("{ctx}: last account"), "7|Ann|NULL\n8|Bo|b@x.io\n10|Di|d@x.io", || q(accounts));
        let (u, a) = drained(&mut c);
        let tables = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'rg_checkpoints'";
        if delivery == "exactly-once" {
            until(&format!("{ctx}: checkpoints"), &format!("accts|rg:wb:accts|{a}\nusers|rg:wb:users|{u}"), || q("SELECT recipe, stream, last_id FROM rg_checkpoints ORDER BY recipe"));
        } else {
            assert_eq!(q(tables), "0", "{ctx}: at-least-once keeps no checkpoints");
        }
        unregister(&mut c);
    }
    no_bugs(&bugs);
}

// ---------------------------------------------------------------------------------------
// MongoDB (SecantusDB), read back with pymongo.

/// Prints the documents of a collection of database `gears` one a line, by `_id` (numbers,
/// then shorter first), fields sorted, each value with its BSON type; or runs code with
/// `db` bound to the database.
const PY_MONGO: &str = r#"
import sys, datetime, pymongo
from bson.int64 import Int64
url, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
db = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)['gears']
def show(v):
    if v is None: return 'null'
    if isinstance(v, bool): return 'bool:' + str(v).lower()
    if isinstance(v, Int64): return 'long:%d' % v
    if isinstance(v, int): return 'int:%d' % v
    if isinstance(v, float): return 'double:%r' % v
    if isinstance(v, datetime.datetime): return 'date:' + v.isoformat()
    if isinstance(v, str): return 'str:' + v
    return type(v).__name__ + ':' + repr(v)
if mode == 'docs':
    docs = sorted(db[arg].find(), key=lambda d: (len(str(d['_id'])), str(d['_id'])))
    print('\n'.join(' '.join('%s=%s' % (k, show(d[k])) for k in sorted(d)) for d in docs))
else:
    exec(arg)
"#;

fn py_mongo(m: &Mongo, mode: &str, arg: &str) -> String {
    let out = Command::new("python3").args(["-c", PY_MONGO, &m.url(), mode, arg]).output().expect("python3");
    assert!(out.status.success(), "python3 {mode} {arg}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn mongodb_in_both_languages() {
    let m = Mongo::start();
    let s = Server::start_with(&["connection.mongo", &m.url()], &[]);
    let mut c = s.conn();
    let docs = |coll: &str| py_mongo(&m, "docs", coll);
    let ids = || py_mongo(&m, "run", "print(','.join(sorted((str(d['_id']) for d in db.users.find()), key=lambda i: (len(i), i))))");
    let mut bugs = Vec::new();
    for (lang, delivery) in [("lua", "at-least-once"), ("js", "exactly-once")] {
        let ctx = format!("mongodb, {lang}, {delivery}");
        // A unique index on `email` (sparse: documents without one do not collide).
        py_mongo(&m, "run", "db.users.drop(); db.accounts.drop(); db.rg_checkpoints.drop(); db.users.create_index('email', unique=True, sparse=True)");
        ok(&mut c, &["FLUSHALL"]);
        let types = O::T(vec![("age", O::S("int")), ("score", O::S("float")), ("active", O::S("bool")), ("joined", O::S("timestamp"))]);
        let users = O::Target("mongodb", vec![("connection", O::S("mongo")), ("collection", O::S("users")), ("types", types)]);
        let accts = O::Target("mongodb", vec![("connection", O::S("mongo")), ("collection", O::S("accounts")), ("types", O::T(vec![("_id", O::S("int"))]))]);
        register(&mut c, lang, "mongodb", delivery, users, accts);

        step_insert(&mut c);
        until(
            &format!("{ctx}: inserts and types"),
            "_id=str:1 active=bool:true age=long:31 ignored=str:x joined=date:2024-05-01T12:30:00.250000 name=str:Ann score=double:9.5\n\
             _id=str:2 age=long:40 name=str:Bob\n\
             _id=str:3 active=bool:false age=long:-7 joined=date:2023-11-14T22:13:20 name=str:Cy score=double:1000.0",
            || docs("users"),
        );
        // Changed behind the recipe's back: the next change replaces the whole document.
        py_mongo(&m, "run", "db.users.update_one({'_id': '1'}, {'$set': {'name': 'Zed', 'extra': 1}})");
        step_image(&mut c);
        until(
            &format!("{ctx}: whole document image"),
            "_id=str:1 active=bool:false age=long:31 ignored=str:x joined=date:2024-05-01T12:30:00.250000 name=str:Ann score=double:9.5",
            || docs("users").lines().next().unwrap_or_default().to_string(),
        );
        step_partial(&mut c);
        until(
            &format!("{ctx}: partial updates"),
            "_id=str:1 active=bool:false age=long:31 ignored=str:x joined=date:2024-05-01T12:30:00.250000 name=str:Ann\n\
             _id=str:2 age=long:41 name=str:Bob score=double:0.25",
            || docs("users"),
        );
        step_more(&mut c);
        until(&format!("{ctx}: more documents, rename into the prefix"), "1,2,4,5,6,7,8", ids);
        step_remove(&mut c);
        until(&format!("{ctx}: del, unlink, expiry, renames"), "_id=str:6 email=str:f@x.io name=str:Fay\n_id=str:7 name=str:Gus\n_id=str:9 name=str:Hal", || docs("users"));

        // With `columns`, every mapped column is in the document: null where the hash lacks it.
        step_accts(&mut c);
        until(
            &format!("{ctx}: columns and keyPattern"),
            "_id=long:7 email=str:a@x.io full_name=str:Ann\n_id=long:8 email=null full_name=str:Bo\n_id=long:9 email=str:c@x.io full_name=str:Cy",
            || docs("accounts"),
        );
        step_accts_update(&mut c);
        until(&format!("{ctx}: columns, updates"), "_id=long:7 email=null full_name=str:Ann\n_id=long:8 email=str:b@x.io full_name=str:Bo", || docs("accounts"));

        step_bad(&mut c);
        until(&format!("{ctx}: good documents arrive past bad ones"), "6,7,9,24", ids);
        bugs.extend(check_dead_letters(&mut c, &ctx, &["E11000", "duplicate key"], "_id"));

        step_last(&mut c);
        until(&format!("{ctx}: last documents"), "6,7,9,24,25", ids);
        until(
            &format!("{ctx}: last account"),
            "_id=long:7 email=null full_name=str:Ann\n_id=long:8 email=str:b@x.io full_name=str:Bo\n_id=long:10 email=str:d@x.io full_name=str:Di",
            || docs("accounts"),
        );
        let (u, a) = drained(&mut c);
        if delivery == "exactly-once" {
            until(
                &format!("{ctx}: checkpoints"),
                &format!("_id=str:accts/rg:wb:accts last_id=str:{a} recipe=str:accts stream=str:rg:wb:accts\n_id=str:users/rg:wb:users last_id=str:{u} recipe=str:users stream=str:rg:wb:users"),
                || docs("rg_checkpoints"),
            );
        } else {
            assert_eq!(docs("rg_checkpoints"), "", "{ctx}: at-least-once keeps no checkpoints");
        }
        unregister(&mut c);
    }
    no_bugs(&bugs);
}
