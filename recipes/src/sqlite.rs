//! SQLite target (`rusqlite`, SQLite bundled). The connection URL is the database file:
//! `sqlite:///var/lib/app/app.db` or a plain path. Column types come from the declared
//! types (SQLite affinity rules); timestamps are stored as ISO 8601 text in UTC, booleans as
//! 0/1.

use crate::convert::{format_timestamp, Cell, ColType};
use crate::spec::Spec;
use crate::sql::{self, Dialect};
use crate::target::{after, planned_columns, Checkpoint, Row, Schema, Target, TargetError};
use engine::streams::parse_id;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::time::Duration;

pub struct Sqlite {
    conn: Connection,
    table: String,
    key: String,
}

fn classify(e: rusqlite::Error) -> TargetError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig) => TargetError::Rejected(format!("sqlite: {e}")),
        _ => TargetError::Unavailable(format!("sqlite: {e}")),
    }
}

pub fn path_of(url: &str) -> &str {
    url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url)
}

impl Sqlite {
    /// Opens the database file (nothing is written: see `Target::prepare`). `read_only`
    /// (a preview): the file is not created; a missing one reads as an empty database.
    pub fn open(spec: &Spec, url: &str, read_only: bool) -> Result<Sqlite, TargetError> {
        let conn = if read_only && !std::path::Path::new(path_of(url)).exists() {
            // Connecting would create the file, empty: the same as an empty database.
            Connection::open_in_memory()
        } else if read_only {
            Connection::open_with_flags(path_of(url), OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        } else {
            Connection::open(path_of(url))
        }
        .map_err(classify)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(classify)?;
        Ok(Sqlite { conn, table: spec.target.table.clone(), key: spec.key_field.clone() })
    }

    /// The table's columns and declared types (none: no such table).
    fn columns(&self) -> Result<Vec<(String, String)>, TargetError> {
        let mut stmt = self.conn.prepare(&format!("PRAGMA table_info({})", Dialect::Sqlite.table(&self.table))).map_err(classify)?;
        let cols = stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?))).map_err(classify)?.collect::<Result<_, _>>().map_err(classify)?;
        Ok(cols)
    }
}

fn affinity(declared: &str) -> ColType {
    let t = declared.to_ascii_uppercase();
    if t.contains("BOOL") {
        ColType::Bool
    } else if t.contains("DATE") || t.contains("TIME") {
        ColType::Timestamp
    } else if t.contains("INT") {
        ColType::Int
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        ColType::Text
    } else if t.contains("BLOB") {
        ColType::Bytes
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") || t.contains("NUMERIC") || t.contains("DECIMAL") {
        ColType::Float
    } else {
        ColType::Text
    }
}

fn value(c: &Cell) -> SqlValue {
    match c {
        Cell::Null => SqlValue::Null,
        Cell::Int(i) => SqlValue::Integer(*i),
        Cell::Float(f) => SqlValue::Real(*f),
        Cell::Bool(b) => SqlValue::Integer(*b as i64),
        Cell::Timestamp(us) => SqlValue::Text(format_timestamp(*us)),
        Cell::Text(s) => SqlValue::Text(s.clone()),
        Cell::Bytes(b) => SqlValue::Blob(b.clone()),
    }
}

impl Target for Sqlite {
    fn schema(&mut self) -> Result<Schema, TargetError> {
        let cols = self.columns()?;
        if cols.is_empty() {
            return Err(TargetError::Unavailable(format!("SQLite has no table '{}'", self.table)));
        }
        if !cols.iter().any(|(c, _)| *c == self.key) {
            return Err(TargetError::Unavailable(format!("table '{}' has no key column '{}' (keyField)", self.table, self.key)));
        }
        Ok(Schema { types: cols.iter().map(|(c, t)| (c.clone(), affinity(t))).collect(), columns: Some(cols.into_iter().map(|(c, _)| c).collect()) })
    }

    fn exists(&mut self) -> Result<bool, TargetError> {
        Ok(!self.columns()?.is_empty())
    }

    fn create_statements(&self, spec: &Spec) -> Vec<String> {
        vec![sql::create_table(Dialect::Sqlite, &self.table, &planned_columns(spec))]
    }

    fn create(&mut self, spec: &Spec) -> Result<(), TargetError> {
        for st in self.create_statements(spec) {
            self.conn.execute_batch(&st).map_err(classify)?;
        }
        Ok(())
    }

    fn prepare(&mut self, spec: &Spec) -> Result<(), TargetError> {
        if spec.delivery == crate::spec::Delivery::ExactlyOnce {
            self.conn
                .execute_batch(&format!("CREATE TABLE IF NOT EXISTS {} (recipe TEXT NOT NULL, stream TEXT NOT NULL, last_id TEXT NOT NULL, PRIMARY KEY (recipe, stream))", sql::CHECKPOINTS))
                .map_err(classify)?;
        }
        Ok(())
    }

    fn preview(&self, rows: &[&Row]) -> Vec<(String, Vec<Cell>)> {
        sql::statements(Dialect::Sqlite, &self.table, &self.key, rows, &|_| None, 30000)
            .into_iter()
            .map(|st| {
                let cells = st.cells(rows).cloned().collect();
                (st.sql, cells)
            })
            .collect()
    }

    fn apply(&mut self, rows: &[Row], checkpoint: Option<&Checkpoint>) -> Result<usize, TargetError> {
        let tx = self.conn.transaction().map_err(classify)?;
        let last = match checkpoint {
            Some(c) => {
                let r: Option<String> = tx
                    .query_row(&format!("SELECT last_id FROM {} WHERE recipe = ?1 AND stream = ?2", sql::CHECKPOINTS), [c.recipe, c.stream], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| if matches!(e, rusqlite::Error::QueryReturnedNoRows) { Ok(None) } else { Err(e) })
                    .map_err(classify)?;
                r.and_then(|s| parse_id(&s))
            }
            None => None,
        };
        let todo = after(rows, last);
        for st in sql::statements(Dialect::Sqlite, &self.table, &self.key, &todo, &|_| None, 30000) {
            let params: Vec<SqlValue> = st.cells(&todo).map(value).collect();
            tx.execute(&st.sql, rusqlite::params_from_iter(params)).map_err(classify)?;
        }
        if let (Some(c), Some(id)) = (checkpoint, sql::next_checkpoint(rows, last)) {
            tx.execute(
                &format!("INSERT INTO {} (recipe, stream, last_id) VALUES (?1, ?2, ?3) ON CONFLICT (recipe, stream) DO UPDATE SET last_id = excluded.last_id", sql::CHECKPOINTS),
                [c.recipe, c.stream, &id],
            )
            .map_err(classify)?;
        }
        tx.commit().map_err(classify)?;
        Ok(todo.len())
    }
}
