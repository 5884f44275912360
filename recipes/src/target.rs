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
}

/// Connects to the target of `spec` at `url`.
pub fn connect(spec: &Spec, url: &str) -> Result<Box<dyn Target>, TargetError> {
    match spec.target.kind {
        TargetKind::Postgres => Ok(Box::new(crate::postgres::Postgres::connect(spec, url)?)),
        TargetKind::Sqlite => Ok(Box::new(crate::sqlite::Sqlite::connect(spec, url)?)),
        TargetKind::MySql => Ok(Box::new(crate::mysql::MySql::connect(spec, url)?)),
        TargetKind::MongoDb => Ok(Box::new(crate::mongodb::MongoDb::connect(spec, url)?)),
    }
}

/// The rows of `rows` that a checkpoint at `last` has not applied yet.
pub fn after(rows: &[Row], last: Option<StreamId>) -> Vec<&Row> {
    rows.iter().filter(|r| last.is_none_or(|l| r.id > l)).collect()
}
