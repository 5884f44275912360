//! MongoDB target (the `mongodb` driver, sync API). A row is one document: an upsert
//! replaces the whole document `{ <keyField>: pk, <column>: value, ... }` (full row image:
//! fields the hash no longer has vanish), a delete removes it. Cells become BSON 64-bit
//! integers, doubles, booleans, dates (millisecond precision), strings and generic binary;
//! NULL is BSON null. The database is `target.database`, else the URL's, else `gears`.
//!
//! Writes travel batched, as raw `delete` and `update` commands with many statements each
//! (one round trip per few thousand rows; the driver's `bulk_write` would need MongoDB 8.0).
//! A batch runs in one multi-document transaction, so it is all or nothing, as with the SQL
//! targets. Exactly-once keeps `{ _id: "<recipe>/<stream>", recipe, stream, last_id }` in
//! the collection `rg_checkpoints` of the same database, read and written in that
//! transaction; two writers of one stream collide on that document (WriteConflict, a
//! transient error) and one of them tries again.
//!
//! Transactions need a replica set, a sharded cluster or a server that, like SecantusDB
//! (also with `--standalone`), runs them on a single node. A plain standalone `mongod`
//! refuses them: `connect` finds that out with a probe, then at-least-once delivery writes
//! its batches without a transaction (deletes by key and whole-document replaces are
//! idempotent, so a batch cut short and tried again ends the same), and exactly-once is
//! refused (Unavailable, with the reason).
//!
//! With a keyField other than `_id`, the collection should have a unique index on it:
//! documents are looked up by it.

use crate::change::Op;
use crate::convert::Cell;
use crate::spec::{Delivery, Spec};
use crate::sql::CHECKPOINTS;
use crate::target::{after, Checkpoint, Row, Schema, Target, TargetError};
use engine::streams::{format_id, parse_id};
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document, RawDocumentBuf};
use mongodb::error::{Error, ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::ClientOptions;
use mongodb::sync::{Client, ClientSession, Database};
use std::time::Duration;

/// Statements per `update` / `delete` command, and their total size, well under the
/// server's limits (100,000 statements, 16 MiB commands).
const MAX_OPS: usize = 10_000;
const MAX_BYTES: usize = 8 << 20;

pub struct MongoDb {
    client: Client,
    db: Database,
    collection: String,
    key: String,
    schema: Schema,
    /// False on a standalone mongod (see the module comment).
    transactions: bool,
}

/// Write errors the data causes: duplicate key, document validation, bad value, type
/// mismatch, document too large, `$`-prefixed / empty / dotted field names.
fn rejects(code: i32) -> bool {
    matches!(code, 11000 | 121 | 2 | 14 | 10334 | 52 | 56 | 57)
}

fn classify(e: Error) -> TargetError {
    let msg = format!("mongodb: {e}");
    let code = match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    };
    // Transient transaction errors (WriteConflict, NoSuchTransaction after a failover) pass;
    // everything but the data's own faults is the target's (selection, IO, auth, shutdown).
    match code {
        Some(c) if rejects(c) && !e.contains_label(TRANSIENT_TRANSACTION_ERROR) => TargetError::Rejected(msg),
        _ => TargetError::Unavailable(msg),
    }
}

fn bson(c: &Cell) -> Bson {
    match c {
        Cell::Null => Bson::Null,
        Cell::Int(i) => Bson::Int64(*i),
        Cell::Float(f) => Bson::Double(*f),
        Cell::Bool(b) => Bson::Boolean(*b),
        Cell::Timestamp(us) => Bson::DateTime(DateTime::from_millis(us.div_euclid(1000))),
        Cell::Text(s) => Bson::String(s.clone()),
        Cell::Bytes(b) => Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: b.clone() }),
    }
}

/// Runs a command, in `session`'s transaction if there is one; a statement's write error
/// (the reply is `ok: 1` with `writeErrors`) is an error too.
fn run(db: &Database, session: Option<&mut ClientSession>, cmd: Document) -> Result<Document, TargetError> {
    let action = db.run_command(cmd);
    let reply = match session {
        Some(s) => action.session(s).run(),
        None => action.run(),
    }
    .map_err(classify)?;
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(w)) = errors.first() {
            let code = w.get_i32("code").unwrap_or(0);
            let msg = format!("mongodb: {} (code {code})", w.get_str("errmsg").unwrap_or("write error"));
            return Err(if rejects(code) { TargetError::Rejected(msg) } else { TargetError::Unavailable(msg) });
        }
    }
    if let Ok(w) = reply.get_document("writeConcernError") {
        return Err(TargetError::Unavailable(format!("mongodb: write concern: {}", w.get_str("errmsg").unwrap_or("failed"))));
    }
    Ok(reply)
}

impl MongoDb {
    /// Connects and finds out whether the server runs transactions (a read; nothing is
    /// written: see `Target::prepare`).
    pub fn open(spec: &Spec, url: &str) -> Result<MongoDb, TargetError> {
        let mut opts = ClientOptions::parse(url).run().map_err(|e| TargetError::Unavailable(format!("bad MongoDB URL for connection '{}': {e}", spec.target.connection)))?;
        // An outage is an error within seconds, not a wait of the driver's default 30 s.
        opts.server_selection_timeout.get_or_insert(Duration::from_secs(5));
        opts.connect_timeout.get_or_insert(Duration::from_secs(5));
        opts.app_name.get_or_insert_with(|| "gears".into());
        let database = spec.target.database.clone().or_else(|| opts.default_database.clone()).unwrap_or_else(|| "gears".into());
        let client = Client::with_options(opts).map_err(classify)?;
        let db = client.database(&database);
        let schema = Schema { types: spec.target.types.iter().cloned().collect(), columns: None };
        let mut m = MongoDb { client, db, collection: spec.target.table.clone(), key: spec.key_field.clone(), schema, transactions: true };
        m.transactions = m.probe_transactions()?;
        Ok(m)
    }

    /// The command of one row: `(command, list, statement)`, e.g. `("update", "updates",
    /// { q: { _id: "1" }, u: {...}, upsert: true })`.
    fn statement(&self, r: &Row) -> (&'static str, &'static str, Document) {
        let filter = doc! { self.key.as_str(): bson(&r.pk) };
        match r.op {
            Op::Delete => ("delete", "deletes", doc! { "q": filter, "limit": 1 }),
            Op::Upsert => {
                let mut d = Document::new();
                d.insert(self.key.as_str(), bson(&r.pk));
                for (col, cell) in r.cells.iter().filter(|(c, _)| *c != self.key) {
                    d.insert(col.as_str(), bson(cell));
                }
                ("update", "updates", doc! { "q": filter, "u": d, "upsert": true })
            }
        }
    }

    /// The commands of `createTable`: the collection, and a unique index on `keyField`
    /// unless it is `_id` (which has one).
    fn create_commands(&self) -> Vec<Document> {
        let mut out = vec![doc! { "create": self.collection.as_str() }];
        if self.key != "_id" {
            out.push(doc! { "createIndexes": self.collection.as_str(), "indexes": [{ "key": { self.key.as_str(): 1 }, "name": format!("{}_1", self.key), "unique": true }] });
        }
        out
    }

    /// Does the server run transactions? Reads the checkpoint collection in one (which also
    /// fails now, as `Unavailable`, if the server cannot be reached).
    fn probe_transactions(&self) -> Result<bool, TargetError> {
        let mut s = self.client.start_session().run().map_err(classify)?;
        s.start_transaction().run().map_err(classify)?;
        match self.db.collection::<Document>(CHECKPOINTS).find_one(doc! { "_id": "" }).session(&mut s).run() {
            Ok(_) => s.commit_transaction().run().map(|_| true).map_err(classify),
            // IllegalOperation: "Transaction numbers are only allowed on a replica set member or mongos".
            Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == 20) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    /// Applies `rows` (of distinct keys: their order does not matter): the deletes, then the
    /// upserts, each as few commands as the size limits allow.
    fn write(&self, mut session: Option<&mut ClientSession>, rows: &[&Row]) -> Result<(), TargetError> {
        let mut deletes = Vec::new();
        let mut updates = Vec::new();
        for r in rows {
            match self.statement(r) {
                (_, "deletes", st) => deletes.push(st),
                (_, _, st) => updates.push(st),
            }
        }
        for (cmd, list, statements) in [("delete", "deletes", deletes), ("update", "updates", updates)] {
            let (mut chunk, mut bytes) = (Vec::new(), 0);
            for st in statements {
                // Serializing here also finds what BSON cannot hold (a NUL in a field name).
                let size = RawDocumentBuf::from_document(&st).map_err(|e| TargetError::Rejected(format!("mongodb: {e}")))?.as_bytes().len();
                if !chunk.is_empty() && (chunk.len() >= MAX_OPS || bytes + size > MAX_BYTES) {
                    run(&self.db, session.as_deref_mut(), doc! { cmd: self.collection.as_str(), list: std::mem::take(&mut chunk), "ordered": true })?;
                    bytes = 0;
                }
                bytes += size;
                chunk.push(Bson::Document(st));
            }
            if !chunk.is_empty() {
                run(&self.db, session.as_deref_mut(), doc! { cmd: self.collection.as_str(), list: chunk, "ordered": true })?;
            }
        }
        Ok(())
    }

    fn apply_in(&self, s: &mut ClientSession, rows: &[Row], checkpoint: Option<&Checkpoint>) -> Result<usize, TargetError> {
        let checkpoints = self.db.collection::<Document>(CHECKPOINTS);
        let last = match checkpoint {
            Some(c) => {
                let d = checkpoints.find_one(doc! { "_id": format!("{}/{}", c.recipe, c.stream) }).session(&mut *s).run().map_err(classify)?;
                d.and_then(|d| d.get_str("last_id").ok().and_then(parse_id))
            }
            None => None,
        };
        let todo = after(rows, last);
        self.write(Some(&mut *s), &todo)?;
        if let (Some(c), Some(last_row)) = (checkpoint, rows.last()) {
            if last.is_none_or(|l| last_row.id > l) {
                let id = format!("{}/{}", c.recipe, c.stream);
                let d = doc! { "_id": &id, "recipe": c.recipe, "stream": c.stream, "last_id": format_id(last_row.id) };
                checkpoints.replace_one(doc! { "_id": &id }, d).upsert(true).session(&mut *s).run().map_err(classify)?;
            }
        }
        Ok(todo.len())
    }
}

impl Target for MongoDb {
    fn schema(&mut self) -> Result<Schema, TargetError> {
        // Nothing to read (documents have no schema); the ping tells an unreachable server.
        self.db.run_command(doc! { "ping": 1 }).run().map_err(classify)?;
        Ok(self.schema.clone())
    }

    fn exists(&mut self) -> Result<bool, TargetError> {
        let names = self.db.list_collection_names().filter(doc! { "name": self.collection.as_str() }).run().map_err(classify)?;
        Ok(names.contains(&self.collection))
    }

    fn create_statements(&self, _spec: &Spec) -> Vec<String> {
        self.create_commands().iter().map(|d| d.to_string()).collect()
    }

    fn create(&mut self, _spec: &Spec) -> Result<(), TargetError> {
        for cmd in self.create_commands() {
            match self.db.run_command(cmd).run() {
                Ok(_) => {}
                // NamespaceExists: made meanwhile (another recipe, another node).
                Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == 48) => {}
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(())
    }

    fn prepare(&mut self, spec: &Spec) -> Result<(), TargetError> {
        if !self.transactions && spec.delivery == Delivery::ExactlyOnce {
            return Err(TargetError::Unavailable(format!(
                "MongoDB database '{}' does not run transactions (a standalone mongod?), which exactly-once delivery needs: run it as a replica set, or use at-least-once",
                self.db.name()
            )));
        }
        Ok(())
    }

    fn preview(&self, rows: &[&Row]) -> Vec<(String, Vec<Cell>)> {
        rows.iter()
            .map(|r| {
                let (cmd, list, st) = self.statement(r);
                (doc! { cmd: self.collection.as_str(), list: [st], "ordered": true }.to_string(), Vec::new())
            })
            .collect()
    }

    fn apply(&mut self, rows: &[Row], checkpoint: Option<&Checkpoint>) -> Result<usize, TargetError> {
        if !self.transactions {
            // At-least-once only (connect refuses exactly-once): a checkpoint cannot be kept.
            if checkpoint.is_some() {
                return Err(TargetError::Unavailable("MongoDB does not run transactions here, which exactly-once delivery needs".into()));
            }
            self.write(None, &rows.iter().collect::<Vec<_>>())?;
            return Ok(rows.len());
        }
        let mut s = self.client.start_session().run().map_err(classify)?;
        s.start_transaction().run().map_err(classify)?;
        match self.apply_in(&mut s, rows, checkpoint) {
            // The driver retries a commit whose outcome it does not know.
            Ok(n) => s.commit_transaction().run().map(|_| n).map_err(classify),
            Err(e) => {
                // Refused data: abort now (the server may have already), so that the halves
                // of the split batch find nothing held. Otherwise the server may be gone:
                // dropping the session aborts in the background instead of waiting here.
                if matches!(e, TargetError::Rejected(_)) {
                    let _ = s.abort_transaction().run();
                }
                Err(e)
            }
        }
    }
}
