//! The MySQL/MariaDB target against a real MariaDB server (one private server per test):
//! schema, upserts, deletes, types, large batches, exactly-once, rejected rows and an
//! unavailable server. Every test reads what was written back with the mariadb client.

use engine::Value;
use recipes::convert::parse_timestamp;
use recipes::{Cell, Checkpoint, ColType, Op, Row, Spec, Target, TargetError};
use testdb::MariaDb;

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (Value::str(k), v)).collect())
}

fn spec(table: &str, delivery: &str) -> Spec {
    let target = map(vec![("kind", Value::str("mysql")), ("connection", Value::str("main")), ("table", Value::str(table))]);
    let options = map(vec![("name", Value::str("users")), ("prefix", Value::str("user:")), ("keyField", Value::str("id")), ("target", target), ("delivery", Value::str(delivery))]);
    Spec::parse("writeBehind", &options).unwrap()
}

fn connect(db: &MariaDb, table: &str, delivery: &str) -> Box<dyn Target> {
    recipes::connect(&spec(table, delivery), &db.url()).unwrap_or_else(|e| panic!("connect: {e}"))
}

fn upsert(id: u64, pk: i64, cells: &[(&str, Cell)]) -> Row {
    Row { id: (id, 0), key: format!("user:{pk}").into_bytes(), op: Op::Upsert, pk: Cell::Int(pk), cells: cells.iter().map(|(c, v)| (c.to_string(), v.clone())).collect() }
}

fn delete(id: u64, pk: i64) -> Row {
    Row { id: (id, 0), key: format!("user:{pk}").into_bytes(), op: Op::Delete, pk: Cell::Int(pk), cells: vec![] }
}

fn text(s: &str) -> Cell {
    Cell::Text(s.into())
}

const USERS: &str = "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, age INT CHECK (age >= 0), score DOUBLE)";

#[test]
fn upserts_updates_deletes_and_nulls() {
    let db = MariaDb::start();
    db.sql(USERS);
    let mut t = connect(&db, "users", "at-least-once");
    let rows = [upsert(1, 1, &[("name", text("Ann")), ("age", Cell::Int(30)), ("score", Cell::Float(1.5))]), upsert(2, 2, &[("name", text("Zoë 🚀")), ("age", Cell::Null), ("score", Cell::Float(-2.25))])];
    assert_eq!(t.apply(&rows, None), Ok(2));
    assert_eq!(db.sql("SELECT id, name, IFNULL(age, 'null'), score FROM users ORDER BY id"), "1\tAnn\t30\t1.5\n2\tZoë 🚀\tnull\t-2.25");
    // Stored as UTF-8 (utf8mb4), not mangled on the way.
    assert_eq!(db.sql("SELECT HEX(name) FROM users WHERE id = 2"), "5A6FC3AB20F09F9A80");
    // An upsert of an existing key updates it; a delete removes its row; both in one batch.
    let rows = [upsert(3, 1, &[("name", text("Ann B")), ("age", Cell::Null), ("score", Cell::Float(7.0))]), delete(4, 2), upsert(5, 3, &[("name", text("Cy")), ("age", Cell::Int(5)), ("score", Cell::Null)])];
    assert_eq!(t.apply(&rows, None), Ok(3));
    assert_eq!(db.sql("SELECT id, name, IFNULL(age, 'null'), IFNULL(score, 'null') FROM users ORDER BY id"), "1\tAnn B\tnull\t7\n3\tCy\t5\tnull");
    // Deleting a key that is not there is not an error.
    assert_eq!(t.apply(&[delete(6, 42)], None), Ok(1));
    assert_eq!(db.sql("SELECT COUNT(*) FROM users"), "2");
}

#[test]
fn schema_maps_types_and_values_round_trip() {
    let db = MariaDb::start();
    db.sql(
        "CREATE TABLE t (id INT PRIMARY KEY, i BIGINT, f DOUBLE, b BOOLEAN, ts DATETIME(6), tz TIMESTAMP(6) NULL, d DATE, \
         s VARCHAR(100), data BLOB, vb VARBINARY(16), dec2 DECIMAL(10,2), small TINYINT, txt TEXT)",
    );
    // `db.table` names the database.
    let mut t = connect(&db, "test.t", "at-least-once");
    let schema = t.schema().unwrap();
    assert_eq!(schema.columns.as_deref().unwrap(), ["id", "i", "f", "b", "ts", "tz", "d", "s", "data", "vb", "dec2", "small", "txt"]);
    let expect = [
        ("id", ColType::Int),
        ("i", ColType::Int),
        ("f", ColType::Float),
        ("b", ColType::Bool),
        ("ts", ColType::Timestamp),
        ("tz", ColType::Timestamp),
        ("d", ColType::Timestamp),
        ("s", ColType::Text),
        ("data", ColType::Bytes),
        ("vb", ColType::Bytes),
        ("dec2", ColType::Float),
        ("small", ColType::Int),
        ("txt", ColType::Text),
    ];
    for (c, ty) in expect {
        assert_eq!(schema.types.get(c), Some(&ty), "{c}");
    }
    let ts = parse_timestamp("2024-05-01T12:30:00.25Z").unwrap();
    let cells = |b: bool, ts: i64, tz: Cell| {
        vec![
            ("i", Cell::Int(i64::MAX)),
            ("f", Cell::Float(0.1)),
            ("b", Cell::Bool(b)),
            ("ts", Cell::Timestamp(ts)),
            ("tz", tz),
            ("d", Cell::Timestamp(parse_timestamp("1999-12-31").unwrap())),
            ("s", text("tab\there")),
            ("data", Cell::Bytes(vec![0, 0xff, b'a', 0x80])),
            ("vb", Cell::Bytes(b"\x01\x02".to_vec())),
            ("dec2", Cell::Float(1234.5)),
            ("small", Cell::Int(-128)),
            ("txt", text("long text")),
        ]
    };
    // (A TIMESTAMP column starts in 1970, a DATETIME does not.)
    let before_epoch = parse_timestamp("1969-07-20T20:17:40Z").unwrap();
    assert_eq!(t.apply(&[upsert(1, 1, &cells(true, ts, Cell::Timestamp(ts))), upsert(2, 2, &cells(false, before_epoch, Cell::Null))], None), Ok(2));
    assert_eq!(
        db.sql("SET time_zone = '+00:00'; SELECT i, f, b, ts, tz, UNIX_TIMESTAMP(tz), d, s, HEX(data), HEX(vb), dec2, small, txt FROM t WHERE id = 1"),
        "9223372036854775807\t0.1\t1\t2024-05-01 12:30:00.250000\t2024-05-01 12:30:00.250000\t1714566600.250000\t1999-12-31\ttab\\there\t00FF6180\t0102\t1234.50\t-128\tlong text"
    );
    assert_eq!(db.sql("SELECT b, ts, IFNULL(tz, 'null') FROM t WHERE id = 2"), "0\t1969-07-20 20:17:40.000000\tnull");
}

#[test]
fn schema_and_statement_errors_are_unavailable() {
    let db = MariaDb::start();
    db.sql(USERS);
    let mut t = connect(&db, "nope", "at-least-once");
    assert_eq!(t.schema().unwrap_err(), TargetError::Unavailable("MySQL has no table 'nope'".into()));
    let mut t = connect(&db, "otherdb.users", "at-least-once");
    assert_eq!(t.schema().unwrap_err(), TargetError::Unavailable("MySQL has no table 'otherdb.users'".into()));
    db.sql("CREATE TABLE keyless (uid INT PRIMARY KEY, name TEXT)");
    let mut t = connect(&db, "keyless", "at-least-once");
    assert_eq!(t.schema().unwrap_err(), TargetError::Unavailable("table 'keyless' has no key column 'id' (keyField)".into()));
    // A missing table or column when writing is the target's fault (1146, 1054), not the data's.
    let mut t = connect(&db, "gone", "at-least-once");
    match t.apply(&[upsert(1, 1, &[("name", text("a"))])], None) {
        Err(TargetError::Unavailable(m)) => assert!(m.contains("1146") && m.contains("gone"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut t = connect(&db, "users", "at-least-once");
    match t.apply(&[upsert(1, 1, &[("name", text("a")), ("nickname", text("b"))])], None) {
        Err(TargetError::Unavailable(m)) => assert!(m.contains("1054") && m.contains("nickname"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.sql("SELECT COUNT(*) FROM users"), "0");
    // A bad URL names its connection.
    match recipes::connect(&spec("users", "at-least-once"), "postgres://x") {
        Err(TargetError::Unavailable(m)) => assert!(m.contains("bad MySQL URL for connection 'main'"), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected with a bad URL"),
    }
}

#[test]
fn large_batches_are_split_into_statements() {
    let db = MariaDb::start();
    db.sql("CREATE TABLE big (id INT PRIMARY KEY, name VARCHAR(40), score DOUBLE, flag BOOLEAN, n BIGINT)");
    let mut t = connect(&db, "big", "at-least-once");
    // 7000 rows of 5 parameters: more than one statement's 30000.
    let row = |id: u64, k: i64, v: i64| upsert(id, k, &[("name", text(&format!("user {k}"))), ("score", Cell::Float(k as f64 / 2.0)), ("flag", Cell::Bool(k % 2 == 0)), ("n", Cell::Int(v))]);
    let rows: Vec<Row> = (0..7000).map(|k| row(k as u64 + 1, k, k)).collect();
    assert_eq!(t.apply(&rows, None), Ok(7000));
    assert_eq!(db.sql("SELECT COUNT(*), SUM(n), SUM(score), SUM(flag), MAX(name) FROM big"), "7000\t24496500\t12248250\t3500\tuser 999");
    // 1500 updates and 1000 deletes in one batch.
    let mut rows: Vec<Row> = (0..1500).map(|k| row(10_000 + k as u64, k, -1)).collect();
    rows.extend((6000..7000).map(|k| delete(20_000 + k as u64, k)));
    assert_eq!(t.apply(&rows, None), Ok(2500));
    assert_eq!(db.sql("SELECT COUNT(*), SUM(n = -1), MAX(id), MIN(n) FROM big"), "6000\t1500\t5999\t-1");
}

#[test]
fn exactly_once_skips_what_was_applied() {
    let db = MariaDb::start();
    db.sql(USERS);
    db.sql("CREATE TABLE audit (n INT AUTO_INCREMENT PRIMARY KEY, user_id INT, op VARCHAR(10), name VARCHAR(50))");
    db.sql("CREATE TRIGGER users_ai AFTER INSERT ON users FOR EACH ROW INSERT INTO audit (user_id, op, name) VALUES (NEW.id, 'insert', NEW.name)");
    db.sql("CREATE TRIGGER users_au AFTER UPDATE ON users FOR EACH ROW INSERT INTO audit (user_id, op, name) VALUES (NEW.id, 'update', NEW.name)");
    let mut t = connect(&db, "users", "exactly-once");
    assert_eq!(db.sql("SHOW TABLES LIKE 'rg_checkpoints'"), "rg_checkpoints");
    let cp = Checkpoint { recipe: "users", stream: "rg:wb:users" };
    let rows = [upsert(1, 1, &[("name", text("a"))]), upsert(2, 2, &[("name", text("b"))]), upsert(3, 1, &[("name", text("a2"))])];
    // (Rows of a batch have distinct keys; id 3 updates key 1 in a later batch.)
    assert_eq!(t.apply(&rows[..2], Some(&cp)), Ok(2));
    assert_eq!(t.apply(&rows[..2], Some(&cp)), Ok(0));
    assert_eq!(db.sql("SELECT last_id FROM rg_checkpoints WHERE recipe = 'users' AND stream = 'rg:wb:users'"), "2-0");
    // A replay that overlaps the applied ids applies only the new ones.
    assert_eq!(t.apply(&rows[1..], Some(&cp)), Ok(1));
    assert_eq!(t.apply(&rows[1..], Some(&cp)), Ok(0));
    assert_eq!(db.sql("SELECT user_id, op, name FROM audit ORDER BY n"), "1\tinsert\ta\n2\tinsert\tb\n1\tupdate\ta2");
    assert_eq!(db.sql("SELECT last_id FROM rg_checkpoints"), "3-0");
    // A new connection reads the same checkpoint.
    let mut t2 = connect(&db, "users", "exactly-once");
    assert_eq!(t2.apply(&rows, Some(&cp)), Ok(0));
    // Streams are told apart byte for byte (Redis keys are case-sensitive).
    let tag_a = Checkpoint { recipe: "users", stream: "rg:wb:users:{A}" };
    let tag_b = Checkpoint { recipe: "users", stream: "rg:wb:users:{a}" };
    assert_eq!(t2.apply(&[upsert(1, 7, &[("name", text("x"))])], Some(&tag_a)), Ok(1));
    assert_eq!(t2.apply(&[upsert(1, 8, &[("name", text("y"))])], Some(&tag_b)), Ok(1));
    assert_eq!(db.sql("SELECT stream, last_id FROM rg_checkpoints ORDER BY stream"), "rg:wb:users\t3-0\nrg:wb:users:{A}\t1-0\nrg:wb:users:{a}\t1-0");
    assert_eq!(db.sql("SELECT COUNT(*), GROUP_CONCAT(name ORDER BY id) FROM users"), "4\ta2,b,x,y");
    assert_eq!(db.sql("SELECT COUNT(*) FROM audit"), "5");
}

#[test]
fn rejected_rows_roll_back_the_whole_batch() {
    let db = MariaDb::start();
    db.sql(USERS);
    db.sql("CREATE TABLE short (id INT PRIMARY KEY, code VARCHAR(3), at DATETIME)");
    let mut t = connect(&db, "users", "exactly-once");
    let cp = Checkpoint { recipe: "users", stream: "rg:wb:users" };
    let good = upsert(1, 1, &[("name", text("ok")), ("age", Cell::Int(1))]);
    let rejected = |t: &mut Box<dyn Target>, bad: Row, code: &str| match t.apply(&[good.clone(), bad], Some(&cp)) {
        Err(TargetError::Rejected(m)) => assert!(m.contains(code), "{m}"),
        other => panic!("expected a rejection with {code}, got {other:?}"),
    };
    // NOT NULL, CHECK (MariaDB's 4025), out of range.
    rejected(&mut t, upsert(2, 2, &[("name", Cell::Null), ("age", Cell::Int(1))]), "1048");
    rejected(&mut t, upsert(2, 2, &[("name", text("neg")), ("age", Cell::Int(-5))]), "4025");
    rejected(&mut t, upsert(2, 2, &[("name", text("big")), ("age", Cell::Int(1 << 40))]), "1264");
    assert_eq!(db.sql("SELECT COUNT(*) FROM users"), "0");
    assert_eq!(db.sql("SELECT COUNT(*) FROM rg_checkpoints"), "0");
    // Strict mode: too long text and date-times past year 9999 are refused, not truncated.
    let mut s = connect(&db, "short", "at-least-once");
    let apply = |s: &mut Box<dyn Target>, cells: &[(&str, Cell)]| s.apply(&[upsert(1, 1, cells)], None);
    assert!(matches!(apply(&mut s, &[("code", text("toolong")), ("at", Cell::Null)]), Err(TargetError::Rejected(m)) if m.contains("1406")));
    assert!(matches!(apply(&mut s, &[("code", text("abc")), ("at", Cell::Timestamp(400_000_000_000_000_000))]), Err(TargetError::Rejected(m)) if m.contains("1292")));
    assert_eq!(db.sql("SELECT COUNT(*) FROM short"), "0");
    // The same connections go on working.
    assert_eq!(apply(&mut s, &[("code", text("abc")), ("at", Cell::Timestamp(0))]), Ok(1));
    assert_eq!(db.sql("SELECT code, at FROM short"), "abc\t1970-01-01 00:00:00");
    assert_eq!(t.apply(&[good.clone(), upsert(2, 2, &[("name", text("fine")), ("age", Cell::Null)])], Some(&cp)), Ok(2));
    assert_eq!(db.sql("SELECT id, name FROM users ORDER BY id"), "1\tok\n2\tfine");
    assert_eq!(db.sql("SELECT last_id FROM rg_checkpoints"), "2-0");
}

#[test]
fn a_stopped_server_is_unavailable_until_it_is_back() {
    let mut db = MariaDb::start();
    db.sql(USERS);
    let mut t = connect(&db, "users", "exactly-once");
    let cp = Checkpoint { recipe: "users", stream: "rg:wb:users" };
    assert_eq!(t.apply(&[upsert(1, 1, &[("name", text("before"))])], Some(&cp)), Ok(1));
    db.stop();
    assert!(matches!(t.apply(&[upsert(2, 2, &[("name", text("lost"))])], Some(&cp)), Err(TargetError::Unavailable(_))));
    assert!(matches!(t.schema(), Err(TargetError::Unavailable(_))));
    match recipes::connect(&spec("users", "exactly-once"), &db.url()) {
        Err(TargetError::Unavailable(m)) => assert!(m.starts_with("mysql: "), "{m}"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to a stopped server"),
    }
    db.start_again();
    let mut t = connect(&db, "users", "exactly-once");
    assert_eq!(t.apply(&[upsert(1, 1, &[("name", text("before"))]), upsert(2, 2, &[("name", text("after"))])], Some(&cp)), Ok(1));
    assert_eq!(db.sql("SELECT id, name FROM users ORDER BY id"), "1\tbefore\n2\tafter");
    assert_eq!(db.sql("SELECT last_id FROM rg_checkpoints"), "2-0");
}
