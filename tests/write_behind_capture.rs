//! What write-behind captures (docs/write-behind.md, "What is captured"), on a real server
//! and PostgreSQL: writes made by scripts (sync and async triggers, hooks, stream
//! consumers, `atomic()`), Redis 7.4 hash-field expiry, a hash replaced by another type,
//! FLUSHALL/FLUSHDB/SWAPDB with `onFlush` 'keep' and 'delete-all', COPY and MOVE.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::time::Duration;
use testdb::Postgres;

const USERS: &str = "CREATE TABLE users (id integer PRIMARY KEY, name text, age integer)";
const IDS: &str = "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM users";

fn server(pg: &Postgres, extra: &[&str]) -> Server {
    Server::start_with(&["connection.pg", &pg.url()], extra)
}

/// The `users` recipe (prefix `user:`) in `lang`, with extra options such as
/// `, onFlush = 'delete-all'` (Lua syntax; turned into JS for `js`).
fn recipe(lang: &str, opts: &str) -> String {
    match lang {
        "lua" => format!("local r = require('gears.recipes')\nr.writeBehind({{ name = 'users', prefix = 'user:', target = r.postgres({{ connection = 'pg', table = 'users' }}), flushMs = 10{opts} }})"),
        _ => {
            let opts = opts.replace(" = ", ": ");
            format!("import {{ writeBehind, postgres }} from 'gears/recipes';\nwriteBehind({{ name: 'users', prefix: 'user:', target: postgres({{ connection: 'pg', table: 'users' }}), flushMs: 10{opts} }});")
        }
    }
}

fn register(c: &mut redis::Connection, lang: &str, opts: &str) {
    assert_eq!(exec(c, lang, &recipe(lang, opts), &["ID", "wb"]), "OK", "{lang}");
}

fn pause(c: &mut redis::Connection) {
    assert_eq!(fmt(&cmd(c, &["RG.PAUSEREGISTRATIONS", "wb/0"])), "OK");
}

fn unpause(c: &mut redis::Connection) {
    assert_eq!(fmt(&cmd(c, &["RG.UNPAUSEREGISTRATIONS", "wb/0"])), "OK");
}

/// The recipe's stream as `op key` words, oldest first.
fn stream(c: &mut redis::Connection) -> Vec<String> {
    let v = cmd(c, &["XRANGE", "rg:wb:users", "-", "+"]);
    let redis::Value::Array(entries) = v else { panic!("XRANGE: {}", fmt(&v)) };
    entries
        .iter()
        .map(|e| {
            let redis::Value::Array(parts) = e else { panic!() };
            let redis::Value::Array(fields) = &parts[1] else { panic!() };
            let text: Vec<String> = fields.iter().map(|f| fmt(f).trim_matches('"').to_string()).collect();
            format!("{} {}", text[1], text[3])
        })
        .collect()
}

fn version(c: &mut redis::Connection) -> String {
    let info = fmt(&cmd(c, &["INFO", "server"]));
    info.split("redis_version:").nth(1).and_then(|t| t.split(|ch: char| ch == '\\' || ch.is_whitespace()).next()).unwrap_or("?").to_string()
}

/// Scripts that write `cust:<how>` hashes under the recipe's prefix, per language: each
/// registration is fired below by the command next to it.
fn writers(lang: &str) -> Vec<(String, Vec<&'static str>)> {
    // The same call in both languages.
    let hset = |how: &str| format!("execute('HSET', 'cust:{lang}-{how}', 'name', '{how}', 'via', '{lang}')");
    let s = |x: String| x;
    match lang {
        "lua" => vec![
            (s(format!("GB():foreach(function(r) {} end):register({{prefix = 'in:lua:sync:', mode = 'sync'}})", hset("sync"))), vec!["SET", "in:lua:sync:1", "x"]),
            (s(format!("GB():foreach(function(r) {} end):register({{prefix = 'in:lua:async:', mode = 'async'}})", hset("async"))), vec!["SET", "in:lua:async:1", "x"]),
            (s(format!("GB('CommandReader'):map(function(a) {} return callNext() end):register({{hook = 'SET', prefix = 'hk:'}})", hset("hook"))), vec!["SET", "hk:1", "x"]),
            (s(format!("GB('StreamReader'):foreach(function(r) {} end):register({{prefix = 'st:lua:'}})", hset("stream"))), vec!["XADD", "st:lua:1", "*", "a", "1"]),
            (s(format!("GB('CommandReader'):foreach(function(a) {} end):register({{trigger = 'lua-cmd', mode = 'sync'}})", hset("command"))), vec!["RG.TRIGGER", "lua-cmd"]),
            (s(format!("atomic(function() {} end)", hset("atomic"))), vec![]),
        ],
        _ => vec![
            (s(format!("GB().foreach(r => {{ {} }}).register({{prefix: 'in:js:sync:', mode: 'sync'}});", hset("sync"))), vec!["SET", "in:js:sync:1", "x"]),
            (s(format!("GB().foreach(r => {{ {} }}).register({{prefix: 'in:js:async:', mode: 'async'}});", hset("async"))), vec!["SET", "in:js:async:1", "x"]),
            (s(format!("GB('CommandReader').map(a => {{ {}; return callNext(); }}).register({{hook: 'INCR', prefix: 'hk:'}});", hset("hook"))), vec!["INCR", "hk:2"]),
            (s(format!("GB('StreamReader').foreach(r => {{ {} }}).register({{prefix: 'st:js:'}});", hset("stream"))), vec!["XADD", "st:js:1", "*", "a", "1"]),
            (s(format!("GB('CommandReader').foreach(a => {{ {} }}).register({{trigger: 'js-cmd', mode: 'sync'}});", hset("command"))), vec!["RG.TRIGGER", "js-cmd"]),
            (s(format!("atomic(() => {{ {} }});", hset("atomic"))), vec![]),
        ],
    }
}

/// Hash writes made by scripts under a recipe's prefix are captured like a client's: in a
/// sync trigger (a post-notification job on 7.2+, after the command on 7.0), an async
/// trigger, a hook, a stream consumer, a command trigger and an `atomic()` block, in both
/// languages. The capture reaches the replica with the write (the stream entries are there
/// before anything is applied).
#[test]
fn writes_made_by_scripts_are_captured_in_both_languages() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE cust (id text PRIMARY KEY, name text, via text)");
    let primary = server(&pg, &[]);
    let replica = Server::start_with(&["connection.pg", &pg.url()], &["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut c = primary.conn();
    let mut r = replica.conn();
    common::wait_for_link(&mut r);
    let wb = "local r = require('gears.recipes')\nr.writeBehind({ name = 'cust', prefix = 'cust:', target = r.postgres({ connection = 'pg', table = 'cust' }), flushMs = 10 })";
    assert_eq!(exec(&mut c, "lua", wb, &["ID", "wb"]), "OK");
    // Held until every write is made: the replica must get each capture with its write.
    pause(&mut c);
    let mut expected = Vec::new();
    for lang in ["lua", "js"] {
        for (i, (code, fire)) in writers(lang).into_iter().enumerate() {
            let id = format!("{lang}{i}");
            let args: &[&str] = if fire.is_empty() { &[] } else { &["ID", &id] };
            let v = exec(&mut c, lang, &code, args);
            assert!(!v.contains("(error)"), "{code}: {v}");
            if !fire.is_empty() {
                let v = fmt(&cmd(&mut c, &fire));
                assert!(!v.starts_with("(error)"), "{fire:?}: {v}");
            }
        }
        for how in ["sync", "async", "hook", "stream", "command", "atomic"] {
            expected.push(format!("{lang}-{how}|{how}|{lang}"));
        }
    }
    expected.sort();
    let keys = |c: &mut redis::Connection| -> Vec<String> {
        let redis::Value::Array(entries) = cmd(c, &["XRANGE", "rg:wb:cust", "-", "+"]) else { return vec![] };
        let mut keys: Vec<String> = entries.iter().map(|e| fmt(e).split(", ").nth(4).unwrap_or("").trim_matches('"').to_string()).collect();
        keys.sort();
        keys
    };
    let want: Vec<String> = expected.iter().map(|e| format!("cust:{}", e.split('|').next().unwrap())).collect();
    // The async ones run on workers: wait for all twelve.
    common::wait_until(20, "every script's write to be captured", || {
        let k = keys(&mut c);
        if k == want { Ok(()) } else { Err(format!("{k:?}")) }
    });
    assert_eq!(fmt(&cmd(&mut c, &["WAIT", "1", "5000"])), "1");
    assert_eq!(keys(&mut r), want, "the replica has each capture");
    assert_eq!(pg.sql("SELECT count(*) FROM cust"), "0");
    unpause(&mut c);
    common::pg_eventually(&pg, "SELECT id, name, via FROM cust ORDER BY id", &expected.join("\n"), 20);
    common::eventually(&mut c, &["XLEN", "rg:wb:cust"], "0");
}

/// Redis 7.4 hash-field expiration, in both languages: one field expiring (actively) makes
/// its column NULL, all fields expiring deletes the row, a field read after its time (lazy
/// expiry, active expiry off) is captured when the read removes it, and HPERSIST keeps
/// the value. Skipped, with a note, on servers without HEXPIRE.
#[test]
fn hash_field_expiry_on_redis_7_4() {
    let pg = Postgres::start();
    let s = server(&pg, &[]);
    let mut c = s.conn();
    if fmt(&cmd(&mut c, &["COMMAND", "INFO", "HPEXPIRE"])) == "[nil]" {
        eprintln!("note: {} {} has no hash-field expiration (Redis 7.4+): hash_field_expiry_on_redis_7_4 skipped", common::server_binary(), version(&mut c));
        return;
    }
    for lang in ["lua", "js"] {
        pg.sql(&format!("DROP TABLE IF EXISTS users; {USERS}"));
        cmd(&mut c, &["FLUSHALL"]);
        cmd(&mut c, &["DEBUG", "SET-ACTIVE-EXPIRE", "1"]);
        register(&mut c, lang, "");
        for (i, name, age) in [(1, "Ann", 31), (2, "Bob", 40), (3, "Cy", 5), (4, "Dee", 6)] {
            cmd(&mut c, &["HSET", &format!("user:{i}"), "name", name, "age", &age.to_string()]);
        }
        common::pg_eventually(&pg, "SELECT id, name, age FROM users ORDER BY id", "1|Ann|31\n2|Bob|40\n3|Cy|5\n4|Dee|6", 20);
        // One field expires (active expiry): its column becomes NULL.
        assert_eq!(fmt(&cmd(&mut c, &["HPEXPIRE", "user:1", "100", "FIELDS", "1", "age"])), "[1]");
        // Every field expires: the hash is gone, and so is the row.
        assert_eq!(fmt(&cmd(&mut c, &["HPEXPIRE", "user:2", "100", "FIELDS", "2", "name", "age"])), "[1, 1]");
        // A TTL taken away again leaves the value.
        assert_eq!(fmt(&cmd(&mut c, &["HPEXPIRE", "user:4", "100", "FIELDS", "1", "age"])), "[1]");
        assert_eq!(fmt(&cmd(&mut c, &["HPERSIST", "user:4", "FIELDS", "1", "age"])), "[1]");
        common::pg_eventually(&pg, "SELECT id, name, age FROM users ORDER BY id", "1|Ann|\n3|Cy|5\n4|Dee|6", 20);
        assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "user:2"])), "0");
        // (A fixed wait: user:4's TTL would have passed; its value must still be there.)
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fmt(&cmd(&mut c, &["HGET", "user:4", "age"])), r#""6""#);
        assert_eq!(pg.sql("SELECT age FROM users WHERE id = 4"), "6");
        // Lazy expiry: with active expiry off, the field stays until a command reads it.
        cmd(&mut c, &["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
        assert_eq!(fmt(&cmd(&mut c, &["HPEXPIRE", "user:3", "100", "FIELDS", "1", "age"])), "[1]");
        let at: u64 = fmt(&cmd(&mut c, &["HPEXPIRETIME", "user:3", "FIELDS", "1", "age"])).trim_matches(['[', ']']).parse().expect("expire time");
        common::wait_until(5, "the field's time to pass", || {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            if now > at + 20 { Ok(()) } else { Err(format!("{now} <= {at}")) }
        });
        assert_eq!(pg.sql("SELECT age FROM users WHERE id = 3"), "5", "nothing removed the field yet");
        assert_eq!(fmt(&cmd(&mut c, &["HGET", "user:3", "age"])), "nil");
        common::pg_eventually(&pg, "SELECT id, name, age FROM users ORDER BY id", "1|Ann|\n3|Cy|\n4|Dee|6", 20);
        // The last field of a hash read after its time: the row is deleted.
        assert_eq!(fmt(&cmd(&mut c, &["HPEXPIRE", "user:4", "50", "FIELDS", "2", "name", "age"])), "[1, 1]");
        common::wait_until(5, "the fields' time to pass", || {
            // HPTTL does not remove fields: -2 once their time passed.
            let t = fmt(&cmd(&mut c, &["HPTTL", "user:4", "FIELDS", "1", "name"]));
            if t == "[-2]" { Ok(()) } else { Err(t) }
        });
        assert_eq!(fmt(&cmd(&mut c, &["HMGET", "user:4", "name", "age"])), "[nil, nil]");
        common::pg_eventually(&pg, IDS, "1,3", 20);
        cmd(&mut c, &["DEBUG", "SET-ACTIVE-EXPIRE", "1"]);
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "wb"])), "OK");
    }
}

/// A hash replaced by a value of another type is gone: its row is deleted, whichever
/// command replaced it (client, MULTI, EVAL, a script's execute() in both languages); a
/// hash replaced by a hash is read again; strings under the prefix record nothing.
#[test]
fn a_hash_replaced_by_another_type_deletes_its_row() {
    let pg = Postgres::start();
    pg.sql(USERS);
    let s = server(&pg, &[]);
    let mut c = s.conn();
    register(&mut c, "lua", "");
    for i in 1..=12 {
        cmd(&mut c, &["HSET", &format!("user:{i}"), "name", &format!("n{i}"), "age", &i.to_string()]);
    }
    common::pg_eventually(&pg, "SELECT count(*) FROM users", "12", 20);
    cmd(&mut c, &["SET", "str", "x"]);
    cmd(&mut c, &["SADD", "set", "a"]);
    cmd(&mut c, &["HSET", "other", "name", "copied", "age", "99"]);
    let dump = match cmd(&mut c, &["DUMP", "str"]) {
        redis::Value::BulkString(b) => b,
        v => panic!("DUMP: {}", fmt(&v)),
    };
    // Replies are the commands' own (+OK stays a status reply).
    assert_eq!(fmt(&cmd(&mut c, &["SET", "user:1", "s"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["SET", "user:2", "s", "GET"])), "(error) WRONGTYPE Operation against a key holding the wrong kind of value");
    assert_eq!(fmt(&cmd(&mut c, &["COPY", "str", "user:2", "REPLACE"])), "1");
    assert_eq!(fmt(&cmd(&mut c, &["RENAME", "str", "user:3"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["MSET", "user:4", "s", "x", "y"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["SUNIONSTORE", "user:5", "set"])), "1");
    let restored = redis::cmd("RESTORE").arg("user:6").arg(0).arg(&dump[..]).arg("REPLACE").query::<redis::Value>(&mut c).unwrap_or_else(common::error_value);
    assert_eq!(fmt(&restored), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["EVAL", "return redis.call('SET', KEYS[1], 'lua')", "1", "user:7"])), "OK");
    for (lang, code) in [("lua", "execute('SET', 'user:8', 'x')"), ("js", "execute('SETEX', 'user:9', '100', 'x');")] {
        let v = exec(&mut c, lang, code, &[]);
        assert!(!v.contains("(error)"), "{code}: {v}");
    }
    let multi = redis::pipe().atomic().cmd("SET").arg("user:10").arg("x").cmd("HSET").arg("user:11").arg("age").arg("110").query::<redis::Value>(&mut c).unwrap();
    assert_eq!(fmt(&multi), "[OK, 0]");
    // A hash replaced by a hash: the new row.
    assert_eq!(fmt(&cmd(&mut c, &["COPY", "other", "user:12", "REPLACE"])), "1");
    common::pg_eventually(&pg, "SELECT id, name, age FROM users ORDER BY id", "11|n11|110\n12|copied|99", 20);
    // Strings under the prefix, written again and again, record nothing.
    common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
    pause(&mut c);
    for v in ["a", "b", "c"] {
        cmd(&mut c, &["SET", "user:lock", v]);
    }
    assert_eq!(stream(&mut c), Vec::<String>::new());
    unpause(&mut c);
}

/// COPY makes a new row (not when the copy goes to another database), and MOVE deletes
/// the row of a hash that leaves the recipe's database and inserts one that comes in.
#[test]
fn copy_and_move() {
    let pg = Postgres::start();
    pg.sql(USERS);
    let s = server(&pg, &[]);
    let mut c = s.conn();
    for lang in ["lua", "js"] {
        pg.sql("TRUNCATE users");
        cmd(&mut c, &["FLUSHALL"]);
        register(&mut c, lang, "");
        cmd(&mut c, &["HSET", "user:1", "name", "Ann", "age", "1"]);
        cmd(&mut c, &["HSET", "user:2", "name", "Bob", "age", "2"]);
        assert_eq!(fmt(&cmd(&mut c, &["COPY", "user:1", "user:3"])), "1");
        assert_eq!(fmt(&cmd(&mut c, &["COPY", "user:1", "user:4", "DB", "1"])), "1");
        common::pg_eventually(&pg, "SELECT id, name FROM users ORDER BY id", "1|Ann\n2|Bob\n3|Ann", 20);
        assert_eq!(fmt(&cmd(&mut c, &["MOVE", "user:2", "1"])), "1");
        let mut d1 = s.conn();
        cmd(&mut d1, &["SELECT", "1"]);
        cmd(&mut d1, &["HSET", "user:5", "name", "Eve", "age", "5"]);
        assert_eq!(fmt(&cmd(&mut d1, &["MOVE", "user:5", "0"])), "1");
        common::pg_eventually(&pg, "SELECT id, name FROM users ORDER BY id", "1|Ann\n3|Ann\n5|Eve", 20);
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "wb"])), "OK");
    }
}

/// onFlush 'keep' (the default): FLUSHALL and FLUSHDB leave the target's rows, and the
/// changes captured before the flush and not yet applied still arrive (they are put back
/// into the stream with their ids). SWAPDB: the recipe stays with its database number; its
/// pending changes are brought back from the other database.
#[test]
fn a_flush_keeps_rows_by_default_and_delivers_what_was_pending() {
    let mut pg = Postgres::start();
    pg.sql(USERS);
    let s = server(&pg, &[]);
    let mut c = s.conn();
    for lang in ["lua", "js"] {
        pg.sql("TRUNCATE users");
        cmd(&mut c, &["FLUSHALL"]);
        register(&mut c, lang, "");
        cmd(&mut c, &["HSET", "user:1", "name", "Ann"]);
        cmd(&mut c, &["HSET", "user:2", "name", "Bob"]);
        common::pg_eventually(&pg, IDS, "1,2", 20);
        common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
        // The target is away: the changes wait in the stream when the flush comes.
        pg.stop();
        cmd(&mut c, &["HSET", "user:3", "name", "Cy"]);
        cmd(&mut c, &["DEL", "user:1"]);
        assert_eq!(stream(&mut c), ["u user:3", "d user:1"]);
        assert_eq!(fmt(&cmd(&mut c, &["FLUSHALL"])), "OK");
        assert_eq!(stream(&mut c), ["u user:3", "d user:1"]);
        pg.start_again();
        common::pg_eventually(&pg, IDS, "2,3", 30);
        common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
        // FLUSHDB of the recipe's database, inside MULTI with a write after it.
        pg.stop();
        cmd(&mut c, &["HSET", "user:4", "name", "Dee"]);
        let multi = redis::pipe().atomic().cmd("FLUSHDB").cmd("HSET").arg("user:5").arg("name").arg("Eve").query::<redis::Value>(&mut c).unwrap();
        assert_eq!(fmt(&multi), "[OK, 1]");
        assert_eq!(stream(&mut c), ["u user:4", "u user:5"]);
        pg.start_again();
        common::pg_eventually(&pg, IDS, "2,3,4,5", 30);
        common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
        // SWAPDB: the pending change moved with its stream, and is brought back.
        pg.stop();
        cmd(&mut c, &["HSET", "user:6", "name", "Fay"]);
        assert_eq!(fmt(&cmd(&mut c, &["SWAPDB", "0", "1"])), "OK");
        assert_eq!(stream(&mut c), ["u user:6"]);
        let mut d1 = s.conn();
        cmd(&mut d1, &["SELECT", "1"]);
        assert_eq!(fmt(&cmd(&mut d1, &["EXISTS", "rg:wb:users", "user:6"])), "1");
        pg.start_again();
        common::pg_eventually(&pg, IDS, "2,3,4,5,6", 30);
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "wb"])), "OK");
    }
}

/// onFlush 'delete-all': a flush deletes the row of every hash the recipe mirrors and of
/// every change still pending, through the stream (after the changes before it, before
/// those after it), and leaves rows the recipe did not write; a write after the flush in the
/// same MULTI or script survives; SWAPDB makes the target mirror the database after the
/// swap. Exactly-once in one language, at-least-once in the other.
#[test]
fn delete_all_deletes_the_recipes_rows_on_flush_and_follows_swapdb() {
    let mut pg = Postgres::start();
    pg.sql(USERS);
    let s = server(&pg, &[]);
    let mut c = s.conn();
    for (lang, delivery) in [("lua", "at-least-once"), ("js", "exactly-once")] {
        pg.sql("TRUNCATE users; INSERT INTO users VALUES (999, 'not written by the recipe', 0)");
        cmd(&mut c, &["FLUSHALL"]);
        register(&mut c, lang, &format!(", onFlush = 'delete-all', delivery = '{delivery}'"));
        for i in 1..=5 {
            cmd(&mut c, &["HSET", &format!("user:{i}"), "name", "x"]);
        }
        common::pg_eventually(&pg, IDS, "1,2,3,4,5,999", 20);
        // FLUSHDB of another database changes nothing.
        let mut d1 = s.conn();
        cmd(&mut d1, &["SELECT", "1"]);
        cmd(&mut d1, &["HSET", "user:1", "name", "in db 1"]);
        assert_eq!(fmt(&cmd(&mut d1, &["FLUSHDB"])), "OK");
        common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
        // Pending when the flush comes: a delete (its row exists) and an insert.
        pg.stop();
        cmd(&mut c, &["DEL", "user:5"]);
        cmd(&mut c, &["HSET", "user:6", "name", "new"]);
        let multi = redis::pipe().atomic().cmd("FLUSHALL").cmd("HSET").arg("user:2").arg("name").arg("after").query::<redis::Value>(&mut c).unwrap();
        assert_eq!(fmt(&multi), "[OK, 1]");
        let mut recorded = stream(&mut c);
        let last = recorded.pop();
        recorded.sort();
        // user:2, written again after the flush: its delete is left out where the flush's
        // records come after that write's event (7.2+, post-notification job), and comes
        // before its upsert where they come right after the flush (7.0, RG.WTRUN).
        recorded.retain(|r| r != "d user:2");
        assert_eq!(recorded, ["d user:1", "d user:3", "d user:4", "d user:5", "d user:6"]);
        assert_eq!(last.as_deref(), Some("u user:2"));
        pg.start_again();
        common::pg_eventually(&pg, "SELECT id, name FROM users ORDER BY id", "2|after\n999|not written by the recipe", 30);
        // A flush from a script, with a write after it.
        cmd(&mut c, &["HSET", "user:7", "name", "x"]);
        common::pg_eventually(&pg, IDS, "2,7,999", 20);
        let code = if lang == "lua" { "execute('FLUSHALL'); execute('HSET', 'user:8', 'name', 'x')" } else { "execute('FLUSHALL'); execute('HSET', 'user:8', 'name', 'x');" };
        exec(&mut c, lang, code, &[]);
        common::pg_eventually(&pg, IDS, "8,999", 20);
        // SWAPDB: the target mirrors database 0 after the swap.
        cmd(&mut d1, &["HSET", "user:9", "name", "from db 1"]);
        assert_eq!(fmt(&cmd(&mut c, &["SWAPDB", "0", "1"])), "OK");
        common::pg_eventually(&pg, "SELECT id, name FROM users ORDER BY id", "9|from db 1\n999|not written by the recipe", 20);
        assert_eq!(fmt(&cmd(&mut d1, &["EXISTS", "rg:wb:users"])), "0");
        assert_eq!(fmt(&cmd(&mut c, &["SWAPDB", "0", "1"])), "OK");
        common::pg_eventually(&pg, IDS, "8,999", 20);
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "wb"])), "OK");
    }
}

/// A flush and what it records reach the AOF together: killed (-9) right after a FLUSHALL
/// whose records the target has not applied (it is down), the restarted server still
/// applies them; with 'keep', the changes pending at the flush arrive, with 'delete-all' the
/// rows are deleted. The same on a replica.
#[test]
fn what_a_flush_records_survives_kill_9_and_reaches_the_replica() {
    for (on_flush, expected) in [("keep", "1,2,3"), ("delete-all", "")] {
        let mut pg = Postgres::start();
        pg.sql(USERS);
        let mut s = server(&pg, &["--appendonly", "yes", "--appendfsync", "always"]);
        let replica = Server::start_with(&["connection.pg", &pg.url()], &["--replicaof", "127.0.0.1", &s.port.to_string()]);
        let mut r = replica.conn();
        common::wait_for_link(&mut r);
        let mut c = s.conn();
        register(&mut c, "lua", &format!(", onFlush = '{on_flush}'"));
        cmd(&mut c, &["HSET", "user:1", "name", "a"]);
        cmd(&mut c, &["HSET", "user:2", "name", "b"]);
        common::pg_eventually(&pg, IDS, "1,2", 20);
        common::eventually(&mut c, &["XLEN", "rg:wb:users"], "0");
        pg.stop();
        cmd(&mut c, &["HSET", "user:3", "name", "c"]);
        assert_eq!(fmt(&cmd(&mut c, &["FLUSHALL"])), "OK");
        let recorded = stream(&mut c);
        assert!(!recorded.is_empty(), "{on_flush}: work in flight at the kill");
        assert_eq!(fmt(&cmd(&mut c, &["WAIT", "1", "5000"])), "1");
        assert_eq!(stream(&mut r), recorded, "{on_flush}: the replica");
        s.restart();
        let mut c = s.conn();
        common::wait_until(20, "the AOF to load", || if fmt(&cmd(&mut c, &["PING"])) == "PONG" { Ok(()) } else { Err("loading".into()) });
        assert_eq!(stream(&mut c), recorded, "{on_flush}: after kill -9");
        pg.start_again();
        common::pg_eventually(&pg, IDS, expected, 30);
    }
}

/// How many commands ran wrapped in RG.WTRUN so far.
fn wrapped(c: &mut redis::Connection) -> i64 {
    let info = fmt(&cmd(c, &["INFO", "commandstats"]));
    info.split("cmdstat_rg.wtrun:calls=").nth(1).and_then(|t| t.split(|ch: char| !ch.is_ascii_digit()).next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A client's write to a write-behind key runs as it is, without RG.WTRUN around it, where
/// the command filter knows its client (Redis 7.2+, Valkey), and is captured all the same;
/// writes queued in MULTI, scripts' writes and commands that may replace a hash with
/// another type keep the wrapper (on 7.0 every write does). A stream replaced by another
/// type is reported by its own keyspace event: the next write is refused before it is
/// applied.
#[test]
fn plain_client_writes_are_captured_without_a_wrapper() {
    let pg = Postgres::start();
    pg.sql(USERS);
    let s = server(&pg, &[]);
    let mut c = s.conn();
    register(&mut c, "js", "");
    pause(&mut c);
    let unwrapped = !version(&mut c).starts_with("7.0");
    for i in 1..=20 {
        assert_eq!(fmt(&cmd(&mut c, &["HSET", &format!("user:{i}"), "name", "n"])), "1");
    }
    assert_eq!(wrapped(&mut c), if unwrapped { 0 } else { 20 });
    assert_eq!(fmt(&cmd(&mut c, &["XLEN", "rg:wb:users"])), "20");
    let before = wrapped(&mut c);
    cmd(&mut c, &["MULTI"]);
    cmd(&mut c, &["HSET", "user:21", "name", "m"]);
    assert_eq!(fmt(&cmd(&mut c, &["EXEC"])), "[1]");
    assert_eq!(wrapped(&mut c), before + 1, "a write queued in MULTI is wrapped");
    // The filter follows the client's MULTI state (it asks the server once per client):
    // after EXEC, and after DISCARD, its writes are plain again; a client first seen
    // inside MULTI is known to be in it.
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "user:25", "name", "p"])), "1");
    assert_eq!(wrapped(&mut c), before + if unwrapped { 1 } else { 2 }, "a write after EXEC is plain again");
    cmd(&mut c, &["MULTI"]);
    cmd(&mut c, &["HSET", "user:26", "name", "d"]);
    assert_eq!(fmt(&cmd(&mut c, &["DISCARD"])), "OK");
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "user:26"])), "0");
    let after_discard = wrapped(&mut c);
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "user:26", "name", "p"])), "1");
    assert_eq!(wrapped(&mut c), after_discard + if unwrapped { 0 } else { 1 }, "a write after DISCARD is plain again");
    let mut other = s.conn();
    cmd(&mut other, &["MULTI"]);
    cmd(&mut other, &["HSET", "user:27", "name", "o"]);
    assert_eq!(fmt(&cmd(&mut other, &["EXEC"])), "[1]");
    assert_eq!(wrapped(&mut c), after_discard + if unwrapped { 1 } else { 2 }, "a client first seen inside MULTI is wrapped");
    drop(other);
    // The other side of RESET: it leaves MULTI too.
    cmd(&mut c, &["MULTI"]);
    cmd(&mut c, &["RESET"]);
    let after_reset = wrapped(&mut c);
    assert_eq!(fmt(&cmd(&mut c, &["HSET", "user:28", "name", "p"])), "1");
    assert_eq!(wrapped(&mut c), after_reset + if unwrapped { 0 } else { 1 }, "a write after RESET is plain again");
    let before = wrapped(&mut c) - 1;
    assert_eq!(fmt(&cmd(&mut c, &["EVAL", "return redis.call('HSET', KEYS[1], 'name', 'e')", "1", "user:22"])), "1");
    assert_eq!(wrapped(&mut c), before + 2, "a script's write is wrapped");
    assert_eq!(fmt(&cmd(&mut c, &["SET", "user:23", "x"])), "OK");
    assert_eq!(wrapped(&mut c), before + 3, "a command that may replace a hash is wrapped");
    assert_eq!(stream(&mut c).len(), 26);
    // Someone replaces the recipe's stream with a string: the next plain write is refused
    // before it is applied.
    cmd(&mut c, &["DEL", "rg:wb:users"]);
    cmd(&mut c, &["SET", "rg:wb:users", "oops"]);
    let refused = fmt(&cmd(&mut c, &["HSET", "user:24", "name", "r"]));
    assert!(refused.contains("write-behind 'users' cannot capture changes: 'rg:wb:users' is not a stream (it is a string)"), "{refused}");
    assert_eq!(fmt(&cmd(&mut c, &["EXISTS", "user:24"])), "0", "the refused write was not applied");
}
