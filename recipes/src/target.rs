//! What a connector implements: a target database that applies rows (upserts and
//! deletes) in one transaction, optionally with the checkpoint of exactly-once delivery.

use crate::change::Op;
use crate::convert::{Cell, ColType};
use crate::spec::{Spec, TargetKind};
use engine::streams::StreamId;
use std::collections::HashMap;

/// One change, ready for the target: its primary key and typed cells.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Stream id of the change (the last one of its key in the batch).
    pub id: StreamId,
    pub key: Vec<u8>,
    pub op: Op,
    pub pk: Cell,
    /// (column, value) for upserts: every mapped column, NULL where the hash lacks the field.
    pub cells: Vec<(String, Cell)>,
}

/// What the target tells about its table.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    /// Column types (SQL: from the table; MongoDB: from `types`).
    pub types: HashMap<String, ColType>,
    /// SQL: the table's columns, in order (written from same-named fields when the recipe
    /// has no `columns`). MongoDB: None (a document holds whatever fields the hash has).
    pub columns: Option<Vec<String>>,
}

/// Where the last applied change of one stream is kept (exactly-once).
#[derive(Clone, Debug)]
pub struct Checkpoint<'a> {
    pub recipe: &'a str,
    pub stream: &'a str,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TargetError {
    /// The target cannot be reached or is not ready (connection lost, table missing): the
    /// batch is tried again, with backoff, without limit.
    #[error("{0}")]
    Unavailable(String),
    /// The target refused the data (constraint, type): the batch is split to find the
    /// rows it refuses.
    #[error("{0}")]
    Rejected(String),
}

pub trait Target: Send {
    /// What the recipe needs to know of the table or collection.
    fn schema(&mut self) -> Result<Schema, TargetError>;
    /// Applies `rows` in one transaction. With `checkpoint`, rows whose id is not after the
    /// stored one are skipped and the id of the last row is stored in the same
    /// transaction. Returns how many rows were applied.
    fn apply(&mut self, rows: &[Row], checkpoint: Option<&Checkpoint>) -> Result<usize, TargetError>;
    /// Does the table (MongoDB: the collection) exist? Reads only.
    fn exists(&mut self) -> Result<bool, TargetError>;
    /// What `createTable` sends when the table does not exist: SQL, or MongoDB commands as
    /// JSON. Sends nothing.
    fn create_statements(&self, spec: &Spec) -> Vec<String>;
    /// Sends `create_statements` (what `createTable` does once the table is found missing).
    fn create(&mut self, spec: &Spec) -> Result<(), TargetError>;
    /// What connecting needs besides reading: exactly-once's checkpoint table (or the
    /// check that MongoDB runs transactions). Called by `connect`, never by a preview.
    fn prepare(&mut self, spec: &Spec) -> Result<(), TargetError>;
    /// The schema of the table `createTable` would make, taken as the table's (a preview
    /// of a table that does not exist yet).
    fn plan(&mut self, spec: &Spec) -> Schema {
        planned_schema(spec)
    }
    /// The statements `apply` would send for `rows` (without exactly-once's checkpoint),
    /// each with its parameters (none for MongoDB, whose commands hold their values).
    /// Sends nothing.
    fn preview(&self, rows: &[&Row]) -> Vec<(String, Vec<Cell>)>;
}

/// Opens a connection to the target of `spec` at `url` that only reads (a preview): no
/// checkpoint table, no `createTable`, and SQLite opens the file read-only (a missing file
/// is not created: it reads as an empty database).
pub fn open(spec: &Spec, url: &str) -> Result<Box<dyn Target>, TargetError> {
    match spec.target.kind {
        TargetKind::Postgres => Ok(Box::new(crate::postgres::Postgres::open(spec, url)?)),
        TargetKind::Sqlite => Ok(Box::new(crate::sqlite::Sqlite::open(spec, url, true)?)),
        TargetKind::MySql => Ok(Box::new(crate::mysql::MySql::open(spec, url)?)),
        TargetKind::MongoDb => Ok(Box::new(crate::mongodb::MongoDb::open(spec, url)?)),
    }
}

/// Connects to the target of `spec` at `url`, ready to apply: the checkpoint table of
/// exactly-once exists, and with `createTable` so does the table (created if missing,
/// never altered).
pub fn connect(spec: &Spec, url: &str) -> Result<Box<dyn Target>, TargetError> {
    let mut t: Box<dyn Target> = match spec.target.kind {
        TargetKind::Postgres => Box::new(crate::postgres::Postgres::open(spec, url)?),
        TargetKind::Sqlite => Box::new(crate::sqlite::Sqlite::open(spec, url, false)?),
        TargetKind::MySql => Box::new(crate::mysql::MySql::open(spec, url)?),
        TargetKind::MongoDb => Box::new(crate::mongodb::MongoDb::open(spec, url)?),
    };
    t.prepare(spec)?;
    if spec.create_table && !t.exists()? {
        t.create(spec)?;
    }
    Ok(t)
}

/// The columns of the table `createTable` makes, key first, each with its type: `keyField`,
/// then the columns of `columns`, then the other columns `target.types` names. A column's
/// type is the one `target.types` gives it, else text.
pub fn planned_columns(spec: &Spec) -> Vec<(String, ColType)> {
    let ty = |col: &str| spec.target.types.iter().find(|(c, _)| c == col).map(|(_, t)| *t).unwrap_or(ColType::Text);
    let mut out: Vec<(String, ColType)> = vec![(spec.key_field.clone(), ty(&spec.key_field))];
    let named = spec.columns.iter().flatten().map(|(c, _)| c).chain(spec.target.types.iter().map(|(c, _)| c));
    for c in named {
        if !out.iter().any(|(o, _)| o == c) {
            out.push((c.clone(), ty(c)));
        }
    }
    out
}

/// Why `createTable` cannot be used with these options, if it cannot: a SQL table needs
/// its columns, which come from `columns` or `target.types`.
pub fn check_create_table(spec: &Spec) -> Result<(), String> {
    if !spec.create_table || spec.target.kind == TargetKind::MongoDb {
        return Ok(());
    }
    if planned_columns(spec).len() < 2 {
        return Err(format!(
            "createTable needs the table's columns besides the key '{}': name them in columns (or give their types in target.types); a {} table cannot be made from hash fields not seen yet",
            spec.key_field,
            spec.target.kind.as_str()
        ));
    }
    Ok(())
}

/// The schema of the table `createTable` makes (MongoDB: the types of `target.types`).
pub fn planned_schema(spec: &Spec) -> Schema {
    if spec.target.kind == TargetKind::MongoDb {
        return Schema { types: spec.target.types.iter().cloned().collect(), columns: None };
    }
    let cols = planned_columns(spec);
    Schema { types: cols.iter().cloned().collect(), columns: Some(cols.into_iter().map(|(c, _)| c).collect()) }
}

/// The rows of `rows` that a checkpoint at `last` has not applied yet.
pub fn after(rows: &[Row], last: Option<StreamId>) -> Vec<&Row> {
    rows.iter().filter(|r| last.is_none_or(|l| r.id > l)).collect()
}
