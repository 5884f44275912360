//! Tables made for you (`createTable`), RG.RECIPE PREVIEW and RG.RECIPE WAIT, end to end
//! on real servers: PostgreSQL, MariaDB, SQLite and MongoDB (SecantusDB), recipes
//! registered from Lua and from JS. Every target is read back; PREVIEW is checked to leave
//! the target (and Redis) as they were; WAIT is checked against the rows right after it
//! returns, and against a target that is down.

mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testdb::{MariaDb, Mongo, Postgres};

// ---------------------------------------------------------------------------------------
// Recipes, written once and rendered as Lua or as JS.

#[derive(Clone)]
enum O {
    S(&'static str),
    I(i64),
    B(bool),
    /// A list of strings: `{ 'a', 'b' }` / `['a', 'b']`.
    L(Vec<&'static str>),
    T(Vec<(&'static str, O)>),
}

fn render(lang: &str, o: &O) -> String {
    match o {
        O::S(s) => format!("'{s}'"),
        O::I(n) => n.to_string(),
        O::B(b) => b.to_string(),
        O::L(items) => {
            let items: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
            if lang == "lua" {
                format!("{{ {} }}", items.join(", "))
            } else {
                format!("[{}]", items.join(", "))
            }
        }
        O::T(m) => {
            let sep = if lang == "lua" { " = " } else { ": " };
            format!("{{ {} }}", m.iter().map(|(k, v)| format!("{k}{sep}{}", render(lang, v))).collect::<Vec<_>>().join(", "))
        }
    }
}

/// A recipe: its options, its target's kind and the target's options.
type Recipe = (Vec<(&'static str, O)>, &'static str, Vec<(&'static str, O)>);

/// A script registering `recipes`.
fn script(lang: &str, recipes: &[Recipe]) -> String {
    let mut out = String::new();
    if lang == "lua" {
        out.push_str("local r = require('gears/recipes')\n");
    } else {
        let kinds: std::collections::BTreeSet<&str> = recipes.iter().map(|(_, k, _)| *k).collect();
        out.push_str(&format!("import {{ writeBehind, {} }} from 'gears/recipes';\n", kinds.into_iter().collect::<Vec<_>>().join(", ")));
    }
    for (opts, kind, target) in recipes {
        let mut o = render(lang, &O::T(opts.clone()));
        o.truncate(o.len() - 2);
        let sep = if lang == "lua" { " = " } else { ": " };
        let t = format!("{}{kind}({})", if lang == "lua" { "r." } else { "" }, render(lang, &O::T(target.clone())));
        out.push_str(&format!("{}writeBehind({o}, target{sep}{t} }}){}\n", if lang == "lua" { "r." } else { "" }, if lang == "lua" { "" } else { ";" }));
    }
    out
}

/// Registers `recipes` as session `id`.
fn register(c: &mut redis::Connection, lang: &str, id: &str, recipes: &[Recipe]) {
    let code = script(lang, recipes);
    assert_eq!(exec(c, lang, &code, &["ID", id]), "OK", "{lang}:\n{code}");
}

/// Runs a command that must not fail.
fn ok(c: &mut redis::Connection, words: &[&str]) -> String {
    let r = fmt(&cmd(c, words));
    assert!(!r.starts_with("(error)"), "{words:?}: {r}");
    r
}

/// RG.RECIPE WAIT that must succeed within its timeout.
fn wait(c: &mut redis::Connection, name: &str) {
    assert_eq!(fmt(&cmd(c, &["RG.RECIPE", "WAIT", name, "30000"])), "OK", "RG.RECIPE WAIT {name}");
}

/// Every key of the current database, sorted (PREVIEW must not add or change any).
fn keyspace(c: &mut redis::Connection) -> String {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(c).expect("KEYS");
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let t: String = redis::cmd("TYPE").arg(&k).query(c).expect("TYPE");
        let v = if t == "hash" { fmt(&cmd(c, &["HGETALL", &k])) } else { fmt(&cmd(c, &["XLEN", &k])) };
        out.push(format!("{k}={v}"));
    }
    out.join(" ")
}

/// The parts of a PREVIEW reply (RESP3 map) as `name: value` texts.
fn preview(c: &mut redis::Connection, name: &str, key: &str) -> Vec<(String, String)> {
    let v = cmd(c, &["RG.RECIPE", "PREVIEW", name, key]);
    let redis::Value::Map(m) = v else { panic!("PREVIEW {name} {key}: {}", fmt(&v)) };
    m.iter().map(|(k, v)| (fmt(k).trim_matches('"').to_string(), fmt(v))).collect()
}

fn field(p: &[(String, String)], name: &str) -> String {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("no {name} in {p:?}"))
}

// ---------------------------------------------------------------------------------------
// Reading the targets back.

/// Runs SQL on a SQLite file with the sqlite3 client, NULL shown as `NULL`.
fn sqlite(path: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").args(["-batch", "-cmd", ".timeout 10000", "-cmd", ".nullvalue NULL"]).arg(path).arg(sql).output().expect("sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Runs Python code with `db` bound to the MongoDB database `gears`.
fn mongo(m: &Mongo, code: &str) -> String {
    let py = format!("import pymongo\ndb = pymongo.MongoClient('{}', serverSelectionTimeoutMS=5000)['gears']\n{code}", m.url());
    let out = Command::new("python3").args(["-c", &py]).output().expect("python3");
    assert!(out.status.success(), "python3 {code}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LANGS: [&str; 2] = ["lua", "js"];

/// The recipe `people` of createTable tests: three columns, types for two of them and for a
/// column `columns` does not name (`score`), an integer key.
fn people(table: &'static str, kind: &'static str, conn: &'static str) -> Recipe {
    let types = O::T(vec![("id", O::S("int")), ("age", O::S("int")), ("joined", O::S("timestamp")), ("score", O::S("float"))]);
    (
        vec![("name", O::S("people")), ("prefix", O::S("person:")), ("createTable", O::B(true)), ("columns", O::L(vec!["name", "age", "joined"])), ("flushMs", O::I(10))],
        kind,
        vec![("connection", O::S(conn)), ("table", O::S(table)), ("types", types)],
    )
}

/// The recipe `legacy`: createTable on a table that exists already (with other columns and
/// types), which must stay as it is.
fn legacy(kind: &'static str, conn: &'static str) -> Recipe {
    (
        vec![("name", O::S("legacy")), ("prefix", O::S("legacy:")), ("createTable", O::B(true)), ("columns", O::T(vec![("name", O::S("name"))])), ("flushMs", O::I(10))],
        kind,
        vec![("connection", O::S(conn)), ("table", O::S("legacy")), ("types", O::T(vec![("extra", O::S("int"))]))],
    )
}

/// The writes of the createTable tests. person:1 is written before the recipe exists (so
/// that PREVIEW has a hash to show while the table is still missing).
fn write_people(c: &mut redis::Connection) {
    ok(c, &["HSET", "person:2", "name", "Bob"]);
    ok(c, &["HSET", "person:3", "name", "Cy", "age", "7", "joined", "1700000000", "nickname", "cee"]);
    ok(c, &["HSET", "legacy:a", "name", "Zed", "extra", "5"]);
}

// ---------------------------------------------------------------------------------------
// createTable

#[test]
fn create_table_refused_without_columns_in_both_languages() {
    let s = Server::start(&["connection.lite", "sqlite:///tmp/rg-never-opened.db"]);
    let mut c = s.conn();
    for lang in LANGS {
        // No columns, no types: a SQL table cannot be made.
        let code = script(lang, &[(vec![("name", O::S("t")), ("prefix", O::S("t:")), ("createTable", O::B(true))], "sqlite", vec![("connection", O::S("lite")), ("table", O::S("t"))])]);
        assert_eq!(
            exec(&mut c, lang, &code, &[]),
            format!("(error) ERR writeBehind: createTable needs the table's columns besides the key 'id': name them in columns (or give their types in target.types); a sqlite table cannot be made from hash fields not seen yet"),
            "{lang}"
        );
        // Types of the key alone are not columns either.
        let code = script(lang, &[(vec![("name", O::S("t")), ("prefix", O::S("t:")), ("createTable", O::B(true)), ("keyField", O::S("k"))], "postgres", vec![("connection", O::S("lite")), ("table", O::S("t")), ("types", O::T(vec![("k", O::S("int"))]))])]);
        assert_eq!(
            exec(&mut c, lang, &code, &[]),
            "(error) ERR writeBehind: createTable needs the table's columns besides the key 'k': name them in columns (or give their types in target.types); a postgres table cannot be made from hash fields not seen yet",
            "{lang}"
        );
        // A column name that is not an identifier is refused, from types too.
        let code = script(lang, &[(vec![("name", O::S("t")), ("prefix", O::S("t:")), ("createTable", O::B(true))], "sqlite", vec![("connection", O::S("lite")), ("table", O::S("t")), ("types", O::T(vec![("a", O::S("int"))]))])]);
        assert_eq!(exec(&mut c, lang, &code, &["ID", "ok"]), "OK", "{lang}: types alone name the columns");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "ok"])), "OK");
    }
    assert!(!Path::new("/tmp/rg-never-opened.db").exists(), "nothing connected");
}

#[test]
fn create_table_on_postgres_in_both_languages() {
    let pg = Postgres::start();
    let s = Server::start(&["connection.pg", &pg.url()]);
    let mut c = s.conn();
    let mut c3 = s.conn3();
    for lang in LANGS {
        let table = if lang == "lua" { "people_lua" } else { "people_js" };
        pg.sql("DROP TABLE IF EXISTS legacy; CREATE TABLE legacy (id text PRIMARY KEY, name varchar(20), note text)");
        ok(&mut c, &["FLUSHALL"]);
        ok(&mut c, &["HSET", "person:1", "name", "Ann", "age", "31", "joined", "2024-05-01T12:30:00Z"]);
        register(&mut c, lang, "ct", &[people(table, "postgres", "pg"), legacy("postgres", "pg")]);
        // PREVIEW before the recipe connected: the table it would make, and nothing made.
        let before = keyspace(&mut c);
        let p = preview(&mut c3, "people", "person:1");
        assert_eq!(field(&p, "table"), "\"missing: createTable creates it when the recipe connects\"", "{lang}");
        assert_eq!(
            field(&p, "create"),
            format!(r#"["CREATE TABLE IF NOT EXISTS \"{table}\" (\"id\" bigint NOT NULL, \"name\" text, \"age\" bigint, \"joined\" timestamptz, \"score\" double precision, PRIMARY KEY (\"id\"))"]"#),
            "{lang}"
        );
        assert_eq!(pg.sql(&format!("SELECT to_regclass('{table}') IS NULL")), "t", "{lang}: PREVIEW made no table");
        assert_eq!(keyspace(&mut c), before, "{lang}: PREVIEW wrote nothing to Redis");

        write_people(&mut c);
        wait(&mut c, "people");
        assert_eq!(
            pg.sql(&format!("SELECT id, name, age, joined AT TIME ZONE 'UTC', score FROM {table} ORDER BY id")),
            "2|Bob|||\n3|Cy|7|2023-11-14 22:13:20|",
            "{lang}: rows right after WAIT"
        );
        assert_eq!(
            pg.sql(&format!("SELECT column_name || ' ' || data_type || ' ' || is_nullable FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position")),
            "id bigint NO\nname text YES\nage bigint YES\njoined timestamp with time zone YES\nscore double precision YES",
            "{lang}"
        );
        assert_eq!(
            pg.sql(&format!("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{table}'::regclass AND i.indisprimary")),
            "id",
            "{lang}: the primary key is keyField"
        );
        // person:1 was written before the recipe: only a later change of it arrives.
        ok(&mut c, &["HSET", "person:1", "age", "32"]);
        wait(&mut c, "people");
        assert_eq!(pg.sql(&format!("SELECT id, name, age FROM {table} ORDER BY id")), "1|Ann|32\n2|Bob|\n3|Cy|7", "{lang}");
        // An existing table is used as it is: no column added, none changed.
        wait(&mut c, "legacy");
        assert_eq!(pg.sql("SELECT id, name, note FROM legacy"), "a|Zed|", "{lang}");
        assert_eq!(
            pg.sql("SELECT column_name || ' ' || data_type FROM information_schema.columns WHERE table_name = 'legacy' ORDER BY ordinal_position"),
            "id text\nname character varying\nnote text",
            "{lang}: the existing table is not altered"
        );
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "ct"])), "OK");
    }
}

#[test]
fn create_table_on_mariadb_in_both_languages() {
    let db = MariaDb::start();
    let s = Server::start(&["connection.my", &db.url()]);
    let mut c = s.conn();
    let mut c3 = s.conn3();
    for lang in LANGS {
        let table = if lang == "lua" { "people_lua" } else { "people_js" };
        db.sql("DROP TABLE IF EXISTS legacy; CREATE TABLE legacy (id VARCHAR(10) PRIMARY KEY, name VARCHAR(20), note TEXT)");
        ok(&mut c, &["FLUSHALL"]);
        ok(&mut c, &["HSET", "person:1", "name", "Ann", "age", "31", "joined", "2024-05-01T12:30:00Z"]);
        register(&mut c, lang, "ct", &[people(table, "mysql", "my"), legacy("mysql", "my")]);
        let before = keyspace(&mut c);
        let p = preview(&mut c3, "people", "person:1");
        assert_eq!(field(&p, "table"), "\"missing: createTable creates it when the recipe connects\"", "{lang}");
        assert_eq!(
            field(&p, "create"),
            format!("[\"CREATE TABLE IF NOT EXISTS `{table}` (`id` BIGINT NOT NULL, `name` LONGTEXT, `age` BIGINT, `joined` DATETIME(6), `score` DOUBLE, PRIMARY KEY (`id`)) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin\"]"),
            "{lang}"
        );
        assert_eq!(
            field(&p, "statements"),
            format!("[[\"INSERT INTO `{table}` (`id`, `name`, `age`, `joined`) VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE `name` = VALUES(`name`), `age` = VALUES(`age`), `joined` = VALUES(`joined`)\", [1, \"Ann\", 31, \"2024-05-01T12:30:00.000000Z\"]]]"),
            "{lang}"
        );
        let count = format!("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = '{table}'");
        assert_eq!(db.sql(&count), "0", "{lang}: PREVIEW made no table");
        assert_eq!(keyspace(&mut c), before, "{lang}: PREVIEW wrote nothing to Redis");

        write_people(&mut c);
        wait(&mut c, "people");
        assert_eq!(db.sql(&format!("SELECT id, name, age, joined, score FROM {table} ORDER BY id")), "2\tBob\tNULL\tNULL\tNULL\n3\tCy\t7\t2023-11-14 22:13:20.000000\tNULL", "{lang}: rows right after WAIT");
        assert_eq!(
            db.sql(&format!("SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION")),
            "id\tbigint(20)\tNO\tPRI\nname\tlongtext\tYES\t\nage\tbigint(20)\tYES\t\njoined\tdatetime(6)\tYES\t\nscore\tdouble\tYES",
            "{lang}"
        );
        assert_eq!(db.sql(&format!("SELECT ENGINE, TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = '{table}'")), "InnoDB\tutf8mb4_bin", "{lang}");
        wait(&mut c, "legacy");
        assert_eq!(db.sql("SELECT id, name, note FROM legacy"), "a\tZed\tNULL", "{lang}");
        assert_eq!(
            db.sql("SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = 'legacy' ORDER BY ORDINAL_POSITION"),
            "id\tvarchar(10)\nname\tvarchar(20)\nnote\ttext",
            "{lang}: the existing table is not altered"
        );
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "ct"])), "OK");
    }
}

#[test]
fn create_table_on_sqlite_in_both_languages() {
    let dir = TempDir(testdb::temp_dir("sqlite-tools"));
    let path = dir.0.join("app.db");
    sqlite(&path, "CREATE TABLE legacy (id TEXT PRIMARY KEY, name VARCHAR(20), note TEXT)");
    let s = Server::start(&["connection.lite", &format!("sqlite://{}", path.display())]);
    let mut c = s.conn();
    let mut c3 = s.conn3();
    for lang in LANGS {
        let table = if lang == "lua" { "people_lua" } else { "people_js" };
        sqlite(&path, "DELETE FROM legacy");
        ok(&mut c, &["FLUSHALL"]);
        ok(&mut c, &["HSET", "person:1", "name", "Ann", "age", "31", "joined", "2024-05-01T12:30:00Z"]);
        register(&mut c, lang, "ct", &[people(table, "sqlite", "lite"), legacy("sqlite", "lite")]);
        let before = keyspace(&mut c);
        let p = preview(&mut c3, "people", "person:1");
        assert_eq!(
            field(&p, "create"),
            format!(r#"["CREATE TABLE IF NOT EXISTS \"{table}\" (\"id\" INTEGER NOT NULL, \"name\" TEXT, \"age\" INTEGER, \"joined\" TIMESTAMP, \"score\" REAL, PRIMARY KEY (\"id\"))"]"#),
            "{lang}"
        );
        assert_eq!(sqlite(&path, &format!("SELECT count(*) FROM sqlite_master WHERE name = '{table}'")), "0", "{lang}: PREVIEW made no table");
        assert_eq!(keyspace(&mut c), before, "{lang}: PREVIEW wrote nothing to Redis");

        write_people(&mut c);
        wait(&mut c, "people");
        assert_eq!(sqlite(&path, &format!("SELECT id, typeof(id), name, age, joined, score FROM {table} ORDER BY id")), "2|integer|Bob|NULL|NULL|NULL\n3|integer|Cy|7|2023-11-14T22:13:20.000000Z|NULL", "{lang}: rows right after WAIT");
        // cid|name|type|notnull|default|pk
        assert_eq!(
            sqlite(&path, &format!("PRAGMA table_info({table})")),
            "0|id|INTEGER|1|NULL|1\n1|name|TEXT|0|NULL|0\n2|age|INTEGER|0|NULL|0\n3|joined|TIMESTAMP|0|NULL|0\n4|score|REAL|0|NULL|0",
            "{lang}"
        );
        wait(&mut c, "legacy");
        assert_eq!(sqlite(&path, "SELECT id, name, note FROM legacy"), "a|Zed|NULL", "{lang}");
        assert_eq!(sqlite(&path, "SELECT sql FROM sqlite_master WHERE name = 'legacy'"), "CREATE TABLE legacy (id TEXT PRIMARY KEY, name VARCHAR(20), note TEXT)", "{lang}: the existing table is not altered");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "ct"])), "OK");
    }
}

#[test]
fn create_collection_on_mongodb_in_both_languages() {
    let m = Mongo::start();
    let s = Server::start(&["connection.mongo", &m.url()]);
    let mut c = s.conn();
    let mut c3 = s.conn3();
    let indexes = |coll: &str| mongo(&m, &format!("print(sorted((n, bool(i.get('unique'))) for n, i in db['{coll}'].index_information().items()))"));
    for lang in LANGS {
        let coll = if lang == "lua" { "people_lua" } else { "people_js" };
        // `legacy` exists, without the index createTable would make on `uid`.
        mongo(&m, "db.legacy.drop(); db.create_collection('legacy')");
        ok(&mut c, &["FLUSHALL"]);
        ok(&mut c, &["HSET", "person:1", "name", "Ann", "age", "31"]);
        let target = |coll: &'static str, int_key: bool| {
            let mut types = vec![("age", O::S("int"))];
            if int_key {
                types.push(("uid", O::S("int")));
            }
            vec![("connection", O::S("mongo")), ("collection", O::S(coll)), ("types", O::T(types))]
        };
        let opts = |name: &'static str, prefix: &'static str| vec![("name", O::S(name)), ("prefix", O::S(prefix)), ("createTable", O::B(true)), ("keyField", O::S("uid")), ("flushMs", O::I(10))];
        let plain = if lang == "lua" { "plain_lua" } else { "plain_js" };
        register(
            &mut c,
            lang,
            "ct",
            &[
                (opts("people", "person:"), "mongodb", target(coll, true)),
                (opts("legacy", "legacy:"), "mongodb", target("legacy", false)),
                // keyField `_id`: the collection only (`_id` has its unique index).
                (vec![("name", O::S("plain")), ("prefix", O::S("plain:")), ("createTable", O::B(true)), ("flushMs", O::I(10))], "mongodb", vec![("connection", O::S("mongo")), ("collection", O::S(plain))]),
            ],
        );
        let before = keyspace(&mut c);
        let p = preview(&mut c3, "people", "person:1");
        assert_eq!(field(&p, "table"), "\"missing: createTable creates it when the recipe connects\"", "{lang}");
        assert_eq!(
            field(&p, "create"),
            format!(r#"["{{ \"create\": \"{coll}\" }}", "{{ \"createIndexes\": \"{coll}\", \"indexes\": [{{ \"key\": {{ \"uid\": 1 }}, \"name\": \"uid_1\", \"unique\": true }}] }}"]"#),
            "{lang}"
        );
        assert_eq!(
            field(&p, "statements"),
            format!(r#"[["{{ \"update\": \"{coll}\", \"updates\": [{{ \"q\": {{ \"uid\": 1 }}, \"u\": {{ \"uid\": 1, \"name\": \"Ann\", \"age\": 31 }}, \"upsert\": true }}], \"ordered\": true }}", []]]"#),
            "{lang}"
        );
        assert_eq!(mongo(&m, &format!("print('{coll}' in db.list_collection_names())")), "False", "{lang}: PREVIEW made no collection");
        assert_eq!(keyspace(&mut c), before, "{lang}: PREVIEW wrote nothing to Redis");

        write_people(&mut c);
        ok(&mut c, &["HSET", "plain:x", "v", "1"]);
        wait(&mut c, "people");
        assert_eq!(mongo(&m, &format!("print([(d['uid'], d.get('name'), d.get('age')) for d in db['{coll}'].find().sort('uid')])")), "[(2, 'Bob', None), (3, 'Cy', 7)]", "{lang}: documents right after WAIT");
        assert_eq!(indexes(coll), "[('_id_', False), ('uid_1', True)]", "{lang}: a unique index on keyField");
        wait(&mut c, "plain");
        assert_eq!(mongo(&m, &format!("print([(d['_id'], d['v']) for d in db['{plain}'].find()])")), "[('x', '1')]", "{lang}");
        assert_eq!(indexes(plain), "[('_id_', False)]", "{lang}");
        wait(&mut c, "legacy");
        assert_eq!(mongo(&m, "print([(d['uid'], d['name']) for d in db.legacy.find()])"), "[('a', 'Zed')]", "{lang}");
        assert_eq!(indexes("legacy"), "[('_id_', False)]", "{lang}: the existing collection is not altered");
        assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "ct"])), "OK");
    }
}

// ---------------------------------------------------------------------------------------
// PREVIEW

const ACCOUNTS: &str = "CREATE TABLE accounts (id integer PRIMARY KEY, name text NOT NULL, balance numeric, active boolean, since timestamptz)";

#[test]
fn preview_shows_rows_statements_and_conversion_errors_without_writing() {
    let mut pg = Postgres::start();
    pg.sql(ACCOUNTS);
    // A password in the URL (trust authentication ignores it): it must never show.
    let url = pg.url().replace("postgres@", "postgres:hunter2@");
    let s = Server::start(&["connection.pg", &url]);
    let mut c = s.conn();
    let mut c3 = s.conn3();
    // Written before the recipes exist: nothing is captured, so the target stays as it is
    // unless PREVIEW wrote.
    ok(&mut c, &["HSET", "acct:1", "name", "Ann", "balance", "10.50", "active", "yes", "since", "2024-05-01T14:30:00+02:00", "other", "x"]);
    ok(&mut c, &["HSET", "acct:2", "name", "Bob", "active", "maybe", "since", "yesterday"]);
    ok(&mut c, &["HSET", "acct:x", "name", "Xi"]);
    ok(&mut c, &["SET", "acct:9", "not a hash"]);
    register(
        &mut c,
        "lua",
        "pv",
        &[(vec![("name", O::S("accts")), ("prefix", O::S("acct:"))], "postgres", vec![("connection", O::S("pg")), ("table", O::S("accounts")), ("types", O::T(vec![("active", O::S("bool"))]))])],
    );
    let before = keyspace(&mut c);

    let p = preview(&mut c3, "accts", "acct:1");
    let expected = [
        ("recipe", r#""accts""#),
        ("key", r#""acct:1""#),
        ("op", r#""upsert""#),
        ("primaryKey", "1"),
        ("row", r#"{"name": "Ann", "balance": "10.50", "active": true, "since": "2024-05-01T12:30:00.000000Z"}"#),
        ("types", r#"{"id": "int", "name": "text", "balance": "text", "active": "bool", "since": "timestamp"}"#),
        ("errors", "[]"),
        ("table", r#""exists""#),
        ("create", "[]"),
        (
            "statements",
            r#"[["INSERT INTO \"accounts\" (\"id\", \"name\", \"balance\", \"active\", \"since\") SELECT CAST(u.c0 AS integer), u.c1, CAST(u.c2 AS numeric), CAST(u.c3 AS boolean), CAST(u.c4 AS timestamp with time zone) FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(c0, c1, c2, c3, c4) ON CONFLICT (\"id\") DO UPDATE SET \"name\" = excluded.\"name\", \"balance\" = excluded.\"balance\", \"active\" = excluded.\"active\", \"since\" = excluded.\"since\"", [1, "Ann", "10.50", true, "2024-05-01T12:30:00.000000Z"]]]"#,
        ),
    ];
    let got: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, expected);

    // Every conversion error, and no statement (the change would be dead-lettered with the first).
    let p = preview(&mut c3, "accts", "acct:2");
    assert_eq!(
        field(&p, "errors"),
        r#"["key 'acct:2': field 'active' 'maybe' is not a boolean (column active)", "key 'acct:2': field 'since' 'yesterday' is not a timestamp (column since)"]"#
    );
    assert_eq!(field(&p, "row"), r#"{"name": "Bob", "balance": nil}"#);
    assert_eq!(field(&p, "statements"), "[]");
    let p = preview(&mut c3, "accts", "acct:x");
    assert_eq!(field(&p, "errors"), r#"["key 'acct:x': the primary key 'x' is not an integer (column id)"]"#);
    assert_eq!(field(&p, "primaryKey"), "nil");
    // A key that does not exist: its row is deleted.
    let p = preview(&mut c3, "accts", "acct:3");
    assert_eq!(field(&p, "op"), r#""delete""#);
    assert_eq!(field(&p, "row"), "nil");
    assert_eq!(field(&p, "statements"), r#"[["DELETE FROM \"accounts\" WHERE \"id\" IN (SELECT CAST(u.c0 AS integer) FROM unnest($1::text[]) AS u(c0))", [3]]]"#);
    // RESP2 gets the same, maps flattened.
    let flat = fmt(&cmd(&mut c, &["RG.RECIPE", "PREVIEW", "accts", "acct:3"]));
    assert!(flat.starts_with(r#"["recipe", "accts", "key", "acct:3", "op", "delete", "primaryKey", 3, "row", nil"#), "{flat}");

    // Nothing was written anywhere.
    assert_eq!(pg.sql("SELECT count(*) FROM accounts"), "0");
    assert_eq!(pg.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "1");
    assert_eq!(keyspace(&mut c), before);

    // Errors.
    let e = |c: &mut redis::Connection, words: &[&str]| fmt(&cmd(c, words));
    assert_eq!(e(&mut c, &["RG.RECIPE", "PREVIEW", "accts", "acct:9"]), "(error) ERR key 'acct:9' holds a string, not a hash: recipe 'accts' writes only hashes");
    assert_eq!(e(&mut c, &["RG.RECIPE", "PREVIEW", "accts", "other:1"]), "(error) ERR key 'other:1' is not one of recipe 'accts''s keys (prefix 'acct:')");
    assert_eq!(e(&mut c, &["RG.RECIPE", "PREVIEW", "nope", "acct:1"]), "(error) ERR no recipe 'nope'");
    assert_eq!(e(&mut c, &["RG.RECIPE", "PREVIEW", "accts"]), "(error) ERR wrong number of arguments; usage: RG.RECIPE PREVIEW <name> <key>");
    assert_eq!(e(&mut c, &["RG.RECIPE", "NOPE"]), "(error) ERR unknown subcommand 'NOPE'; usage: RG.RECIPE PREVIEW <name> <key> | RG.RECIPE WAIT <name> [timeoutMs]");

    // The target down: the table's state says why there is no statement, the row shows
    // every field with the types of `types` (the table's are unknown), and the password
    // never shows.
    pg.stop();
    let p = preview(&mut c3, "accts", "acct:2");
    let table = field(&p, "table");
    assert!(table.starts_with("\"unreachable: ") && table.ends_with(" (values are converted with the types of target.types only)\""), "{table}");
    assert!(!format!("{p:?}").contains("hunter2"), "{p:?}");
    assert_eq!(field(&p, "errors"), r#"["key 'acct:2': field 'active' 'maybe' is not a boolean (column active)"]"#);
    assert_eq!(field(&p, "row"), r#"{"name": "Bob", "since": "yesterday"}"#);
    assert_eq!(field(&p, "statements"), "[]");
    // A PREVIEW never blocks the server: another client is served meanwhile.
    let port = s.port;
    let slow = std::thread::spawn(move || {
        let s3 = redis::Client::open(format!("redis://127.0.0.1:{port}/?protocol=resp3")).unwrap().get_connection().unwrap();
        let mut s3 = s3;
        fmt(&cmd(&mut s3, &["RG.RECIPE", "PREVIEW", "accts", "acct:1"]))
    });
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
        assert!(t.elapsed() < Duration::from_millis(500), "PING took {:?}", t.elapsed());
    }
    assert!(slow.join().unwrap().contains("unreachable: "));
}

// ---------------------------------------------------------------------------------------
// WAIT

const USERS: &str = "CREATE TABLE users (id integer PRIMARY KEY, name text)";

/// Clients blocked on the server (INFO clients).
fn blocked_clients(c: &mut redis::Connection) -> String {
    let info = fmt(&cmd(c, &["INFO", "clients"]));
    info.split("blocked_clients:").nth(1).and_then(|l| l.split("\\r").next()).unwrap_or("?").to_string()
}

/// RG.RECIPE WAIT from a connection of its own; returns the reply and how long it took.
fn wait_in_thread(port: u16, args: Vec<String>) -> std::thread::JoinHandle<(String, Duration)> {
    std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
        let t = Instant::now();
        let mut q = redis::cmd("RG.RECIPE");
        q.arg("WAIT");
        for a in &args {
            q.arg(a);
        }
        let r = q.query::<redis::Value>(&mut c).unwrap_or_else(common::error_value);
        (fmt(&r), t.elapsed())
    })
}

#[test]
fn wait_returns_once_rows_exist_and_times_out_with_the_pending_count_while_the_target_is_down() {
    let mut pg = Postgres::start();
    pg.sql(USERS);
    let s = Server::start(&["connection.pg", &pg.url()]);
    let mut c = s.conn();
    // flushMs of a minute: without WAIT the rows would wait that long.
    register(
        &mut c,
        "js",
        "wt",
        &[(vec![("name", O::S("users")), ("prefix", O::S("user:")), ("flushMs", O::I(60000)), ("batch", O::I(100000))], "postgres", vec![("connection", O::S("pg")), ("table", O::S("users"))])],
    );
    // Nothing captured yet: WAIT answers at once.
    assert_eq!(fmt(&cmd(&mut c, &["RG.RECIPE", "WAIT", "users"])), "OK");
    for i in 0..200 {
        ok(&mut c, &["HSET", &format!("user:{i}"), "name", &format!("n{i}")]);
    }
    let t = Instant::now();
    assert_eq!(fmt(&cmd(&mut c, &["RG.RECIPE", "WAIT", "users", "20000"])), "OK");
    assert_eq!(pg.sql("SELECT count(*) FROM users"), "200", "every row exists when WAIT returns");
    assert!(t.elapsed() < Duration::from_secs(10), "WAIT flushed at once: {:?}", t.elapsed());

    // Refusals.
    let e = |c: &mut redis::Connection, words: &[&str]| fmt(&cmd(c, words));
    assert_eq!(e(&mut c, &["RG.RECIPE", "WAIT", "nope"]), "(error) ERR no recipe 'nope'");
    assert_eq!(e(&mut c, &["RG.RECIPE", "WAIT", "users", "soon"]), "(error) ERR timeoutMs must be a non-negative integer (milliseconds; 0: no limit), got 'soon'");
    assert_eq!(e(&mut c, &["RG.RECIPE", "WAIT"]), "(error) ERR wrong number of arguments; usage: RG.RECIPE WAIT <name> [timeoutMs]");
    // Inside MULTI (a raw connection: the client library turns EXEC's errors into one).
    assert_eq!(
        raw(s.port, "MULTI\r\nRG.RECIPE WAIT users 100\r\nRG.RECIPE PREVIEW users user:1\r\nEXEC\r\n", 4),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n\
         -ERR RG.RECIPE WAIT cannot be used inside MULTI/EXEC: it blocks the client until the recipe's changes are applied, and a transaction cannot wait\r\n\
         -ERR RG.RECIPE PREVIEW cannot be used inside MULTI/EXEC: it blocks the client while it reads the target's table, and a transaction cannot wait\r\n"
    );
    let from_script = e(&mut c, &["EVAL", "return redis.call('RG.RECIPE', 'WAIT', 'users')", "0"]);
    assert!(from_script.starts_with("(error) ERR This ") && from_script.contains("command is not allowed from script"), "{from_script}");

    // The target down: WAIT answers at its timeout with what is still pending. Changes
    // captured after the call are not counted.
    pg.stop();
    for i in 200..203 {
        ok(&mut c, &["HSET", &format!("user:{i}"), "name", "late"]);
    }
    let waiting = wait_in_thread(s.port, vec!["users".into(), "1500".into()]);
    common::wait_until(10, "the WAIT to block", || if blocked_clients(&mut c) == "1" { Ok(()) } else { Err(blocked_clients(&mut c)) });
    ok(&mut c, &["HSET", "user:203", "name", "later"]);
    ok(&mut c, &["HSET", "user:204", "name", "later"]);
    // The server serves others meanwhile.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(fmt(&cmd(&mut c, &["PING"])), "PONG");
        assert!(t.elapsed() < Duration::from_millis(500), "PING took {:?}", t.elapsed());
    }
    let (reply, took) = waiting.join().unwrap();
    assert_eq!(reply, "(error) ERR RG.RECIPE WAIT 'users' timed out after 1500 ms: 3 changes captured before it are still pending (not yet committed to the target)");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        fmt(&cmd(&mut c, &["RG.RECIPE", "WAIT", "users", "300"])),
        "(error) ERR RG.RECIPE WAIT 'users' timed out after 300 ms: 5 changes captured before it are still pending (not yet committed to the target)"
    );
    ok(&mut c, &["DEL", "user:0"]);
    assert_eq!(
        fmt(&cmd(&mut c, &["RG.RECIPE", "WAIT", "users", "200"])),
        "(error) ERR RG.RECIPE WAIT 'users' timed out after 200 ms: 6 changes captured before it are still pending (not yet committed to the target)"
    );
    // Back: everything arrives, and is there when WAIT returns.
    pg.start_again();
    assert_eq!(fmt(&cmd(&mut c, &["RG.RECIPE", "WAIT", "users", "30000"])), "OK");
    assert_eq!(pg.sql("SELECT count(*), count(*) FILTER (WHERE name LIKE 'late%') FROM users"), "204|5");
    assert_eq!(pg.sql("SELECT count(*) FROM users WHERE id = 0"), "0");

    // Dropped while a client waits with no time limit: it gets an answer.
    pg.stop();
    ok(&mut c, &["HSET", "user:300", "name", "x"]);
    let waiting = wait_in_thread(s.port, vec!["users".into()]);
    common::wait_until(10, "the WAIT to block", || if blocked_clients(&mut c) == "1" { Ok(()) } else { Err(blocked_clients(&mut c)) });
    assert_eq!(fmt(&cmd(&mut c, &["RG.DROPSESSION", "wt"])), "OK");
    let (reply, _) = waiting.join().unwrap();
    assert_eq!(reply, "(error) ERR recipe 'users' was removed while RG.RECIPE WAIT waited; its changes not yet applied stay in its streams");
    assert_eq!(blocked_clients(&mut c), "0");
}

#[test]
fn preview_and_wait_belong_to_the_recipe_owner_and_admins() {
    let dir = TempDir(testdb::temp_dir("sqlite-acl"));
    let path = dir.0.join("app.db");
    sqlite(&path, "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT); CREATE TABLE notes (id TEXT PRIMARY KEY, text TEXT)");
    let s = Server::start(&["connection.lite", &format!("sqlite://{}", path.display()), "connection.lite.users", "app"]);
    let mut admin = s.conn();
    // `app` may register on `lite`; `bob` may run everything but is no admin; `carol` may
    // not read `item:*` keys.
    ok(&mut admin, &["ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-@dangerous"]);
    ok(&mut admin, &["ACL", "SETUSER", "bob", "on", ">pw", "~*", "&*", "+@all", "-@dangerous"]);
    ok(&mut admin, &["ACL", "SETUSER", "carol", "on", ">pw", "~note:*", "&*", "+@all", "-@dangerous"]);
    let login = |user: &str| {
        let mut c = s.conn();
        ok(&mut c, &["AUTH", user, "pw"]);
        c
    };
    let mut app = login("app");
    let mut bob = login("bob");
    let mut carol = login("carol");
    for lang in LANGS {
        // An admin's recipe and app's own.
        register(&mut admin, lang, "adm", &[(vec![("name", O::S("notes")), ("prefix", O::S("note:"))], "sqlite", vec![("connection", O::S("lite")), ("table", O::S("notes"))])]);
        register(&mut app, lang, "apps", &[(vec![("name", O::S("items")), ("prefix", O::S("item:"))], "sqlite", vec![("connection", O::S("lite")), ("table", O::S("items"))])]);
        ok(&mut app, &["HSET", "item:1", "name", "pen"]);
        ok(&mut admin, &["HSET", "note:1", "text", "hi"]);
        // The owner and admins may.
        assert_eq!(fmt(&cmd(&mut app, &["RG.RECIPE", "WAIT", "items", "10000"])), "OK", "{lang}");
        assert_eq!(sqlite(&path, "SELECT id, name FROM items"), "1|pen", "{lang}");
        assert_eq!(fmt(&cmd(&mut admin, &["RG.RECIPE", "WAIT", "items", "10000"])), "OK", "{lang}");
        assert!(fmt(&cmd(&mut app, &["RG.RECIPE", "PREVIEW", "items", "item:1"])).contains(r#""row", ["name", "pen"]"#), "{lang}");
        assert!(fmt(&cmd(&mut admin, &["RG.RECIPE", "PREVIEW", "items", "item:1"])).contains(r#""row", ["name", "pen"]"#), "{lang}");
        // Others may not.
        let not_owner = |owner: &str, session: &str| format!("(error) NOPERM session '{session}' belongs to user '{owner}': only its owner or an admin may see or change it");
        assert_eq!(fmt(&cmd(&mut bob, &["RG.RECIPE", "WAIT", "items", "100"])), not_owner("app", "apps"), "{lang}");
        assert_eq!(fmt(&cmd(&mut bob, &["RG.RECIPE", "PREVIEW", "items", "item:1"])), not_owner("app", "apps"), "{lang}");
        assert_eq!(fmt(&cmd(&mut app, &["RG.RECIPE", "WAIT", "notes", "100"])), not_owner("default", "adm"), "{lang}");
        assert_eq!(fmt(&cmd(&mut app, &["RG.RECIPE", "PREVIEW", "notes", "note:1"])), not_owner("default", "adm"), "{lang}");
        // PREVIEW reads the key: the caller must be allowed HGETALL on it (checked first).
        assert_eq!(fmt(&cmd(&mut carol, &["RG.RECIPE", "PREVIEW", "items", "item:1"])), "(error) NOPERM user 'carol' may not run RG.RECIPE PREVIEW: it needs the permission to run HGETALL", "{lang}");
        assert_eq!(fmt(&cmd(&mut carol, &["RG.RECIPE", "PREVIEW", "notes", "note:1"])), not_owner("default", "adm"), "{lang}");
        ok(&mut admin, &["RG.DROPSESSION", "adm"]);
        ok(&mut app, &["RG.DROPSESSION", "apps"]);
        ok(&mut admin, &["FLUSHALL"]);
        sqlite(&path, "DELETE FROM items; DELETE FROM notes");
    }
    // On servers with ACL categories for module commands, -@blocking keeps it from a user.
    let (major, minor) = server_version(&mut admin);
    if (major, minor) >= (7, 2) {
        ok(&mut admin, &["ACL", "SETUSER", "dave", "on", ">pw", "~*", "&*", "+@all", "-@blocking"]);
        let mut dave = login("dave");
        let r = fmt(&cmd(&mut dave, &["RG.RECIPE", "WAIT", "items"]));
        assert!(r.starts_with("(error) NOPERM") && r.contains("rg.recipe"), "{r}");
    }
}

/// Sends `commands` (RESP inline) on a new connection and returns the raw replies once
/// `lines` reply lines (at the top level) have come.
fn raw(port: u16, commands: &str, replies: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(commands.as_bytes()).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Simple replies and one array of simple replies: count the top-level ones.
    let done = |out: &[u8]| {
        let text = String::from_utf8_lossy(out);
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        let (mut n, mut i) = (0, 0);
        while i < lines.len() {
            if let Some(len) = lines[i].strip_prefix('*') {
                i += 1 + len.parse::<usize>().unwrap_or(0);
            } else {
                i += 1;
            }
            if i <= lines.len() {
                n += 1;
            }
        }
        n >= replies && text.ends_with("\r\n")
    };
    while !done(&out) {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn server_version(c: &mut redis::Connection) -> (u32, u32) {
    let info = fmt(&cmd(c, &["INFO", "server"]));
    let v = info.split("redis_version:").nth(1).and_then(|l| l.split("\\r").next()).unwrap_or("0.0").to_string();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
