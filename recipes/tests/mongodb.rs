//! The MongoDB target against a real MongoDB-compatible server (SecantusDB, started by
//! `testdb::Mongo` on a free loopback port): upserts replace whole documents, deletes,
//! NULL, the BSON type of each cell type, large batches, exactly-once checkpoints, refused
//! data and an outage. Documents are read back with the driver.

use engine::Value;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use mongodb::sync::{Client, Collection};
use recipes::{Cell, Checkpoint, Op, Row, Spec, Target, TargetError};
use std::time::{Duration, Instant};
use testdb::Mongo;

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(entries.iter().map(|(k, v)| (Value::str(*k), v.clone())).collect())
}

/// A writeBehind spec for collection `users`; `target` adds target options, `extra` recipe options.
fn spec(target: &[(&str, Value)], extra: &[(&str, Value)]) -> Spec {
    let types = map(&[("age", Value::str("int")), ("score", Value::str("float")), ("active", Value::str("bool")), ("seen", Value::str("timestamp")), ("blob", Value::str("bytes"))]);
    let mut t = vec![("kind", Value::str("mongodb")), ("connection", Value::str("m")), ("collection", Value::str("users")), ("types", types)];
    t.extend(target.iter().cloned());
    let mut o = vec![("name", Value::str("users")), ("prefix", Value::str("user:")), ("target", map(&t))];
    o.extend(extra.iter().cloned());
    Spec::parse("writeBehind", &map(&o)).expect("spec")
}

fn connect(spec: &Spec, db: &Mongo) -> Box<dyn Target> {
    recipes::connect(spec, &db.url()).unwrap_or_else(|e| panic!("connect: {e}"))
}

fn upsert(id: u64, pk: &str, cells: &[(&str, Cell)]) -> Row {
    Row { id: (id, 0), key: format!("user:{pk}").into_bytes(), op: Op::Upsert, pk: Cell::Text(pk.into()), cells: cells.iter().map(|(c, v)| (c.to_string(), v.clone())).collect() }
}

fn delete(id: u64, pk: &str) -> Row {
    Row { id: (id, 0), key: format!("user:{pk}").into_bytes(), op: Op::Delete, pk: Cell::Text(pk.into()), cells: vec![] }
}

fn coll(db: &Mongo, database: &str, name: &str) -> Collection<Document> {
    Client::with_uri_str(db.url()).expect("client").database(database).collection(name)
}

/// Every document of `c`, by `_id`.
fn all(c: &Collection<Document>) -> Vec<Document> {
    c.find(doc! {}).sort(doc! { "_id": 1 }).run().expect("find").collect::<Result<_, _>>().expect("cursor")
}

/// Makes the server fail commands named `command` of the connector (app name `gears`) as
/// `data` says (`errorCode`, `errorLabels`, `writeConcernError`), `mode` telling which.
fn fail(db: &Mongo, mode: Document, command: &str, mut data: Document) {
    data.insert("failCommands", vec![command]);
    data.insert("appName", "gears");
    let admin = Client::with_uri_str(db.url()).expect("client").database("admin");
    admin.run_command(doc! { "configureFailPoint": "failCommand", "mode": mode, "data": data }).run().expect("configureFailPoint");
}

/// Fails the next such command.
fn fail_next(db: &Mongo, command: &str, data: Document) {
    fail(db, doc! { "times": 1 }, command, data)
}

#[test]
fn insert_replace_delete_and_null() {
    let db = Mongo::start();
    let mut t = connect(&spec(&[], &[]), &db);
    let schema = t.schema().expect("schema");
    assert_eq!(schema.columns, None);
    assert_eq!(schema.types.get("age"), Some(&recipes::ColType::Int));
    assert_eq!(schema.types.len(), 5);

    let rows = [upsert(1, "1", &[("name", Cell::Text("Ann".into())), ("age", Cell::Int(30))]), upsert(2, "2", &[("name", Cell::Text("Bob".into())), ("age", Cell::Int(40))])];
    assert_eq!(t.apply(&rows, None), Ok(2));
    let users = coll(&db, "gears", "users");
    assert_eq!(all(&users), vec![doc! { "_id": "1", "name": "Ann", "age": 30i64 }, doc! { "_id": "2", "name": "Bob", "age": 40i64 }]);

    // A full row image replaces the document: `age` goes, `city` comes, a NULL cell is null.
    let rows = [upsert(3, "1", &[("name", Cell::Text("Ann B".into())), ("city", Cell::Null)]), delete(4, "2"), delete(5, "nobody")];
    assert_eq!(t.apply(&rows, None), Ok(3));
    assert_eq!(all(&users), vec![doc! { "_id": "1", "name": "Ann B", "city": Bson::Null }]);
    assert_eq!(users.find_one(doc! { "_id": "1" }).run().unwrap().unwrap().get("city"), Some(&Bson::Null));

    // An empty batch is a no-op.
    assert_eq!(t.apply(&[], None), Ok(0));
    assert_eq!(users.count_documents(doc! {}).run().unwrap(), 1);
}

#[test]
fn cell_types_become_bson_types() {
    let db = Mongo::start();
    // The database comes from `target.database` here (see `database_from_url_or_default_and_key_field`).
    let mut t = connect(&spec(&[("database", Value::str("app"))], &[]), &db);
    let seen_us = 1_714_566_600_123_456; // 2024-05-01T12:30:00.123456Z
    let cells = [
        ("age", Cell::Int(-9_000_000_000)),
        ("score", Cell::Float(2.5)),
        ("active", Cell::Bool(true)),
        ("seen", Cell::Timestamp(seen_us)),
        ("name", Cell::Text("Zoë".into())),
        ("blob", Cell::Bytes(vec![0, 255, 1])),
        ("gone", Cell::Null),
    ];
    let mut int_key = upsert(2, "x", &[("n", Cell::Int(1))]);
    int_key.pk = Cell::Int(42);
    assert_eq!(t.apply(&[upsert(1, "u1", &cells), int_key], None), Ok(2));

    let users = coll(&db, "app", "users");
    let d = users.find_one(doc! { "_id": "u1" }).run().unwrap().expect("u1");
    assert_eq!(d.get("age"), Some(&Bson::Int64(-9_000_000_000)));
    assert_eq!(d.get("score"), Some(&Bson::Double(2.5)));
    assert_eq!(d.get("active"), Some(&Bson::Boolean(true)));
    // Dates hold milliseconds: the microseconds are cut.
    assert_eq!(d.get("seen"), Some(&Bson::DateTime(DateTime::from_millis(1_714_566_600_123))));
    assert_eq!(d.get_datetime("seen").unwrap().try_to_rfc3339_string().unwrap(), "2024-05-01T12:30:00.123Z");
    assert_eq!(d.get("name"), Some(&Bson::String("Zoë".into())));
    assert_eq!(d.get("blob"), Some(&Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 255, 1] })));
    assert_eq!(d.get("gone"), Some(&Bson::Null));
    assert_eq!(d.keys().collect::<Vec<_>>(), ["_id", "age", "score", "active", "seen", "name", "blob", "gone"]);
    // An integer key stays a number (and a text key a string).
    assert_eq!(users.find_one(doc! { "_id": 42i64 }).run().unwrap(), Some(doc! { "_id": 42i64, "n": 1i64 }));
    assert_eq!(users.find_one(doc! { "_id": "42" }).run().unwrap(), None);
    assert_eq!(coll(&db, "gears", "users").count_documents(doc! {}).run().unwrap(), 0);
}

#[test]
fn database_from_url_or_default_and_key_field() {
    let db = Mongo::start();
    // The URL's database, and a key field other than `_id`.
    let spec_id = spec(&[], &[("keyField", Value::str("id"))]);
    let mut t = recipes::connect(&spec_id, &format!("{}shop", db.url())).expect("connect");
    assert_eq!(t.apply(&[upsert(1, "7", &[("name", Cell::Text("a".into()))])], None), Ok(1));
    assert_eq!(t.apply(&[upsert(2, "7", &[("name", Cell::Text("b".into()))])], None), Ok(1));
    let shop = coll(&db, "shop", "users");
    let docs = all(&shop);
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!((docs[0].get_str("id").unwrap(), docs[0].get_str("name").unwrap()), ("7", "b"));
    assert!(docs[0].get_object_id("_id").is_ok(), "the server gave the document an _id: {:?}", docs[0]);
    assert_eq!(t.apply(&[delete(3, "7")], None), Ok(1));
    assert_eq!(shop.count_documents(doc! {}).run().unwrap(), 0);

    // Neither `database` nor one in the URL: `gears`.
    let mut t = connect(&spec(&[], &[]), &db);
    assert_eq!(t.apply(&[upsert(1, "1", &[])], None), Ok(1));
    assert_eq!(all(&coll(&db, "gears", "users")), vec![doc! { "_id": "1" }]);
}

#[test]
fn batches_of_thousands() {
    let db = Mongo::start();
    let mut t = connect(&spec(&[], &[]), &db);
    let n = 2500;
    let row = |i: u64, v: i64| upsert(i, &format!("{i:05}"), &[("age", Cell::Int(v)), ("name", Cell::Text(format!("user {i}"))), ("score", Cell::Float(i as f64 / 2.0))]);
    let rows: Vec<Row> = (1..=n).map(|i| row(i, i as i64)).collect();
    let start = Instant::now();
    assert_eq!(t.apply(&rows[..1000], None), Ok(1000));
    let thousand = start.elapsed();
    assert_eq!(t.apply(&rows[1000..], None), Ok(1500));
    let users = coll(&db, "gears", "users");
    assert_eq!(users.count_documents(doc! {}).run().unwrap(), n);

    // One batch of 1000 replaces and 500 deletes.
    let mut rows: Vec<Row> = (1..=1000).map(|i| row(i, -(i as i64))).collect();
    rows.extend((2001..=2500).map(|i| delete(i, &format!("{i:05}"))));
    let start = Instant::now();
    assert_eq!(t.apply(&rows, None), Ok(1500));
    let mixed = start.elapsed();
    eprintln!("1000 upserts: {thousand:?}; 1000 replaces + 500 deletes: {mixed:?}");
    assert_eq!(users.count_documents(doc! {}).run().unwrap(), 2000);
    assert_eq!(users.count_documents(doc! { "age": { "$lt": 0 } }).run().unwrap(), 1000);
    let docs = all(&users);
    assert_eq!(docs[0], doc! { "_id": "00001", "age": -1i64, "name": "user 1", "score": 0.5 });
    assert_eq!(docs[1000], doc! { "_id": "01001", "age": 1001i64, "name": "user 1001", "score": 500.5 });
    assert_eq!(docs.last().unwrap().get_str("_id").unwrap(), "02000");

    // Large documents (18 MiB in all): the statements are split into commands of at most
    // 8 MiB, here 3. Failing the third shows there is one, and that the batch is one
    // transaction: nothing of it stays.
    let big: Vec<Row> = (0..6u8).map(|i| upsert(3000 + i as u64, &format!("big{i}"), &[("blob", Cell::Bytes(vec![i; 3 << 20]))])).collect();
    fail(&db, doc! { "skip": 2, "times": 1 }, "update", doc! { "errorCode": 24 }); // LockTimeout
    assert!(matches!(t.apply(&big, None), Err(TargetError::Unavailable(_))));
    assert_eq!(users.count_documents(doc! {}).run().unwrap(), 2000);
    assert_eq!(t.apply(&big, None), Ok(6));
    for i in 0..6u8 {
        let d = users.find_one(doc! { "_id": format!("big{i}") }).run().unwrap().expect("big");
        assert_eq!(d.get_binary_generic("blob").unwrap(), &vec![i; 3 << 20]);
    }
}

#[test]
fn exactly_once_skips_what_was_applied() {
    let db = Mongo::start();
    let mut t = connect(&spec(&[], &[("delivery", Value::str("exactly-once"))]), &db);
    let cp = Checkpoint { recipe: "users", stream: "{user:}:0" };
    let rows = [upsert(100, "1", &[("age", Cell::Int(1))]), upsert(101, "2", &[("age", Cell::Int(2))])];
    assert_eq!(t.apply(&rows, Some(&cp)), Ok(2));
    let users = coll(&db, "gears", "users");
    let checkpoints = coll(&db, "gears", "rg_checkpoints");
    assert_eq!(all(&checkpoints), vec![doc! { "_id": "users/{user:}:0", "recipe": "users", "stream": "{user:}:0", "last_id": "101-0" }]);

    // A replay of the same entries (with other values, to see they are not written) does nothing.
    let replay = [upsert(100, "1", &[("age", Cell::Int(-1))]), upsert(101, "2", &[("age", Cell::Int(-2))])];
    assert_eq!(t.apply(&replay, Some(&cp)), Ok(0));
    assert_eq!(all(&users), vec![doc! { "_id": "1", "age": 1i64 }, doc! { "_id": "2", "age": 2i64 }]);
    assert_eq!(checkpoints.find_one(doc! {}).run().unwrap().unwrap().get_str("last_id").unwrap(), "101-0");

    // A batch that overlaps: only the entries after the checkpoint are applied.
    let mut next = vec![upsert(101, "2", &[("age", Cell::Int(-2))]), delete(102, "1"), upsert(103, "3", &[("age", Cell::Int(3))])];
    next[2].id = (103, 5);
    assert_eq!(t.apply(&next, Some(&cp)), Ok(2));
    assert_eq!(all(&users), vec![doc! { "_id": "2", "age": 2i64 }, doc! { "_id": "3", "age": 3i64 }]);
    assert_eq!(checkpoints.find_one(doc! { "_id": "users/{user:}:0" }).run().unwrap().unwrap().get_str("last_id").unwrap(), "103-5");

    // Each stream has its own checkpoint.
    let other = Checkpoint { recipe: "users", stream: "{user:}:1" };
    assert_eq!(t.apply(&[upsert(50, "4", &[])], Some(&other)), Ok(1));
    assert_eq!(checkpoints.count_documents(doc! {}).run().unwrap(), 2);
    assert_eq!(checkpoints.find_one(doc! { "stream": "{user:}:1" }).run().unwrap().unwrap().get_str("last_id").unwrap(), "50-0");
    // And a new connection (a restart) reads the stored one.
    let mut t = connect(&spec(&[], &[("delivery", Value::str("exactly-once"))]), &db);
    assert_eq!(t.apply(&replay, Some(&cp)), Ok(0));
    assert_eq!(users.count_documents(doc! {}).run().unwrap(), 3);
}

#[test]
fn refused_data_is_rejected_and_the_batch_is_not_applied() {
    let db = Mongo::start();
    let users = coll(&db, "gears", "users");
    users.create_index(mongodb::IndexModel::builder().keys(doc! { "email": 1 }).options(mongodb::options::IndexOptions::builder().unique(true).build()).build()).run().expect("index");
    for delivery in ["at-least-once", "exactly-once"] {
        let mut t = connect(&spec(&[], &[("delivery", Value::str(delivery))]), &db);
        let cp = Checkpoint { recipe: "users", stream: delivery };
        let cp = (delivery == "exactly-once").then_some(&cp);
        let ok = upsert(1, "a", &[("email", Cell::Text(format!("a@{delivery}")))]);
        let dup = upsert(2, "b", &[("email", Cell::Text(format!("a@{delivery}")))]);
        match t.apply(&[ok.clone(), dup], cp) {
            Err(TargetError::Rejected(m)) => assert!(m.contains("11000"), "{m}"),
            other => panic!("{delivery}: {other:?}"),
        }
        // All or nothing: `a` was not written, nor the checkpoint.
        assert_eq!(users.count_documents(doc! {}).run().unwrap(), 0, "{delivery}");
        assert_eq!(coll(&db, "gears", "rg_checkpoints").count_documents(doc! {}).run().unwrap(), 0);
        // The rows the target takes go through alone.
        assert_eq!(t.apply(&[ok], cp), Ok(1));
        assert_eq!(all(&users), vec![doc! { "_id": "a", "email": format!("a@{delivery}") }]);
        users.delete_many(doc! {}).run().unwrap();
    }
    let checkpoints = all(&coll(&db, "gears", "rg_checkpoints"));
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].get_str("last_id").unwrap(), "1-0");

    // Document validation (121): `age` must be there, a 64-bit integer.
    let strict = Client::with_uri_str(db.url()).unwrap().database("strict");
    strict.create_collection("users").validator(doc! { "$jsonSchema": { "required": ["age"], "properties": { "age": { "bsonType": "long" } } } }).run().expect("create");
    let mut t = connect(&spec(&[("database", Value::str("strict"))], &[]), &db);
    let good = upsert(1, "a", &[("age", Cell::Int(5))]);
    for bad in [upsert(2, "b", &[("name", Cell::Text("no age".into()))]), upsert(2, "b", &[("age", Cell::Text("old".into()))])] {
        match t.apply(&[good.clone(), bad], None) {
            Err(TargetError::Rejected(m)) => assert!(m.contains("121") && m.contains("validation"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(strict.collection::<Document>("users").count_documents(doc! {}).run().unwrap(), 0);
    }
    assert_eq!(t.apply(&[good], None), Ok(1));
    assert_eq!(all(&strict.collection("users")), vec![doc! { "_id": "a", "age": 5i64 }]);
}

#[test]
fn server_errors_are_classified() {
    let db = Mongo::start();
    let mut t = connect(&spec(&[], &[]), &db);
    let users = coll(&db, "gears", "users");
    let rows = [upsert(1, "1", &[("age", Cell::Int(1))])];
    let cases = [
        (doc! { "errorCode": 2 }, "Rejected"),                                                    // BadValue
        (doc! { "errorCode": 14 }, "Rejected"),                                                   // TypeMismatch
        (doc! { "errorCode": 24 }, "Unavailable"),                                                // LockTimeout
        (doc! { "errorCode": 13 }, "Unavailable"),                                                // Unauthorized
        (doc! { "errorCode": 112, "errorLabels": ["TransientTransactionError"] }, "Unavailable"),  // WriteConflict
        (doc! { "errorCode": 11000, "errorLabels": ["TransientTransactionError"] }, "Unavailable"), // transient wins
        (doc! { "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" } }, "Unavailable"),
    ];
    for (data, want) in cases {
        fail_next(&db, "update", data.clone());
        let got = match t.apply(&rows, None) {
            Err(TargetError::Rejected(_)) => "Rejected",
            Err(TargetError::Unavailable(_)) => "Unavailable",
            Ok(n) => panic!("{data}: applied {n}"),
        };
        assert_eq!(got, want, "{data}");
        // The transaction was not committed.
        assert_eq!(users.count_documents(doc! {}).run().unwrap(), 0, "{data}");
    }
    assert_eq!(t.apply(&rows, None), Ok(1));
    assert_eq!(all(&users), vec![doc! { "_id": "1", "age": 1i64 }]);
}

#[test]
fn a_server_without_transactions() {
    // A standalone mongod refuses transactions with IllegalOperation (20): have the probe's
    // read, the first one in a transaction, fail so.
    let db = Mongo::start();
    let no_tx = doc! { "errorCode": 20, "errmsg": "Transaction numbers are only allowed on a replica set member or mongos" };
    fail_next(&db, "find", no_tx.clone());
    match recipes::connect(&spec(&[], &[("delivery", Value::str("exactly-once"))]), &db.url()) {
        Err(TargetError::Unavailable(m)) => assert!(m.contains("exactly-once") && m.contains("transactions"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    fail_next(&db, "find", no_tx);
    let mut t = connect(&spec(&[], &[]), &db);
    let users = coll(&db, "gears", "users");
    users.create_index(mongodb::IndexModel::builder().keys(doc! { "email": 1 }).options(mongodb::options::IndexOptions::builder().unique(true).build()).build()).run().expect("index");
    // At-least-once writes without a transaction: a refused batch stops at the refused row
    // (the rows before it stay written; applying them again changes nothing).
    let (a, b) = (upsert(1, "a", &[("email", Cell::Text("x".into()))]), upsert(2, "b", &[("email", Cell::Text("x".into()))]));
    assert!(matches!(t.apply(&[a.clone(), b], None), Err(TargetError::Rejected(_))));
    assert_eq!(all(&users), vec![doc! { "_id": "a", "email": "x" }]);
    assert_eq!(t.apply(&[a, upsert(3, "c", &[]), delete(4, "zz")], None), Ok(3));
    assert_eq!(all(&users), vec![doc! { "_id": "a", "email": "x" }, doc! { "_id": "c" }]);
}

#[test]
fn a_stopped_server_is_unavailable_then_recovers() {
    let mut db = Mongo::start();
    let spec = spec(&[], &[("delivery", Value::str("exactly-once"))]);
    let cp = Checkpoint { recipe: "users", stream: "s" };
    let mut t = connect(&spec, &db);
    assert_eq!(t.apply(&[upsert(1, "1", &[("age", Cell::Int(1))])], Some(&cp)), Ok(1));

    db.stop();
    // Each call fails, as Unavailable, within the 5 s server selection timeout (and a margin).
    let timed = |what: &str, f: &mut dyn FnMut() -> Option<TargetError>| {
        let start = Instant::now();
        let e = f();
        eprintln!("{what} with the server stopped: {:?} after {:?}", e, start.elapsed());
        assert!(matches!(e, Some(TargetError::Unavailable(_))), "{what}: {e:?}");
        assert!(start.elapsed() < Duration::from_secs(8), "{what} took {:?}", start.elapsed());
    };
    timed("apply", &mut || t.apply(&[upsert(2, "2", &[])], Some(&cp)).err());
    timed("schema", &mut || t.schema().err());
    timed("connect", &mut || recipes::connect(&spec, &db.url()).err());

    db.start_again();
    // The old connection recovers by itself, and a new one works.
    let r = t.apply(&[upsert(2, "2", &[("age", Cell::Int(2))])], Some(&cp));
    assert_eq!(r, Ok(1));
    let mut t = connect(&spec, &db);
    assert_eq!(t.apply(&[upsert(2, "2", &[]), upsert(3, "3", &[("age", Cell::Int(3))])], Some(&cp)), Ok(1));
    assert_eq!(all(&coll(&db, "gears", "users")), vec![doc! { "_id": "1", "age": 1i64 }, doc! { "_id": "2", "age": 2i64 }, doc! { "_id": "3", "age": 3i64 }]);
    assert_eq!(coll(&db, "gears", "rg_checkpoints").find_one(doc! {}).run().unwrap().unwrap().get_str("last_id").unwrap(), "3-0");
}
