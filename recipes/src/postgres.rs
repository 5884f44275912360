//! PostgreSQL target (the `postgres` crate). Values travel as text parameters cast to each
//! column's type in SQL, so every PostgreSQL type that reads from text works; the recipe
//! has checked integers, numbers, booleans and timestamps before.

use crate::convert::{Cell, ColType};
use crate::spec::Spec;
use crate::sql::{self, Dialect};
use crate::target::{after, planned_columns, planned_schema, Checkpoint, Row, Schema, Target, TargetError};
use engine::streams::parse_id;
use postgres::types::ToSql;
use postgres::{Client, NoTls};
use std::collections::HashMap;
use std::time::Duration;

pub struct Postgres {
    client: Client,
    table: String,
    key: String,
    /// Column -> SQL type (as `format_type` names it).
    sql_types: HashMap<String, String>,
}

fn classify(e: postgres::Error) -> TargetError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let msg = format!("{}: {}{}", db.severity(), db.message(), db.detail().map(|d| format!(" ({d})")).unwrap_or_default());
            // Data and constraint errors are the rows' fault; anything else (missing table or
            // column, shutdown, lack of resources) is the target's, and passes.
            if code.starts_with("22") || code.starts_with("23") {
                TargetError::Rejected(msg)
            } else {
                TargetError::Unavailable(msg)
            }
        }
        None => TargetError::Unavailable(format!("postgres: {e}")),
    }
}

impl Postgres {
    /// Connects (nothing is written: see `Target::prepare`).
    pub fn open(spec: &Spec, url: &str) -> Result<Postgres, TargetError> {
        let mut config: postgres::Config = url.parse().map_err(|e| TargetError::Unavailable(format!("bad PostgreSQL URL for connection '{}': {e}", spec.target.connection)))?;
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives_idle(Duration::from_secs(10));
        let client = config.connect(NoTls).map_err(classify)?;
        Ok(Postgres { client, table: spec.target.table.clone(), key: spec.key_field.clone(), sql_types: HashMap::new() })
    }

    /// The table's name as `to_regclass` reads it: quoted, as the statements name it (an
    /// unquoted `Users` would be looked up as `users`).
    fn regclass(&self) -> String {
        Dialect::Postgres.table(&self.table)
    }
}

/// The type a text parameter for `col` is cast to (none for text and bytea).
fn cast(types: &HashMap<String, String>, col: &str) -> Option<String> {
    types.get(col).filter(|t| t.as_str() != "text" && t.as_str() != "bytea").cloned()
}

impl Target for Postgres {
    fn schema(&mut self) -> Result<Schema, TargetError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text, t.typname::text \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&self.regclass()],
            )
            .map_err(classify)?;
        if rows.is_empty() {
            return Err(TargetError::Unavailable(format!("PostgreSQL has no table '{}'", self.table)));
        }
        let mut schema = Schema { columns: Some(Vec::new()), ..Default::default() };
        for r in rows {
            let (name, sql_type, cat, typname): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
            let ty = match (cat.as_str(), typname.as_str()) {
                (_, "bytea") => ColType::Bytes,
                // Exact numbers and times of day: PostgreSQL reads them from the text.
                (_, "numeric" | "time" | "timetz" | "interval") => ColType::Text,
                ("N", "int2" | "int4" | "int8") => ColType::Int,
                ("N", _) => ColType::Float,
                ("B", _) => ColType::Bool,
                ("D", _) => ColType::Timestamp,
                _ => ColType::Text,
            };
            schema.types.insert(name.clone(), ty);
            self.sql_types.insert(name.clone(), sql_type);
            schema.columns.as_mut().unwrap().push(name);
        }
        if !self.sql_types.contains_key(&self.key) {
            return Err(TargetError::Unavailable(format!("table '{}' has no key column '{}' (keyField)", self.table, self.key)));
        }
        Ok(schema)
    }

    fn exists(&mut self) -> Result<bool, TargetError> {
        let r = self.client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.regclass()]).map_err(classify)?;
        Ok(r.get(0))
    }

    fn create_statements(&self, spec: &Spec) -> Vec<String> {
        vec![sql::create_table(Dialect::Postgres, &self.table, &planned_columns(spec))]
    }

    fn create(&mut self, spec: &Spec) -> Result<(), TargetError> {
        for st in self.create_statements(spec) {
            self.client.batch_execute(&st).map_err(classify)?;
        }
        Ok(())
    }

    fn prepare(&mut self, spec: &Spec) -> Result<(), TargetError> {
        if spec.delivery == crate::spec::Delivery::ExactlyOnce {
            self.client
                .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {} (recipe text NOT NULL, stream text NOT NULL, last_id text NOT NULL, PRIMARY KEY (recipe, stream))", sql::CHECKPOINTS))
                .map_err(classify)?;
        }
        Ok(())
    }

    fn plan(&mut self, spec: &Spec) -> Schema {
        let cols = planned_columns(spec);
        self.sql_types = cols.iter().map(|(c, t)| (c.clone(), sql::column_type(Dialect::Postgres, *t, false).to_string())).collect();
        planned_schema(spec)
    }

    fn preview(&self, rows: &[&Row]) -> Vec<(String, Vec<Cell>)> {
        let cast_to = |col: &str| cast(&self.sql_types, col);
        sql::statements(Dialect::Postgres, &self.table, &self.key, rows, &cast_to, 30000)
            .into_iter()
            .map(|st| {
                let cells = st.cells(rows).cloned().collect();
                (st.sql, cells)
            })
            .collect()
    }

    fn apply(&mut self, rows: &[Row], checkpoint: Option<&Checkpoint>) -> Result<usize, TargetError> {
        let mut tx = self.client.transaction().map_err(classify)?;
        let last = match checkpoint {
            Some(c) => {
                let r = tx.query_opt(&format!("SELECT last_id FROM {} WHERE recipe = $1 AND stream = $2 FOR UPDATE", sql::CHECKPOINTS), &[&c.recipe, &c.stream]).map_err(classify)?;
                r.and_then(|r| parse_id(&r.get::<_, String>(0)))
            }
            None => None,
        };
        let todo = after(rows, last);
        let types = &self.sql_types;
        let cast_to = |col: &str| cast(types, col);
        for st in sql::statements(Dialect::Postgres, &self.table, &self.key, &todo, &cast_to, 30000) {
            let values: Vec<Box<dyn ToSql + Sync>> = st
                .cells(&todo)
                .map(|cell| -> Box<dyn ToSql + Sync> {
                    match cell {
                        Cell::Bytes(b) => Box::new(b.clone()),
                        other => Box::new(other.to_text()),
                    }
                })
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            tx.execute(st.sql.as_str(), &refs).map_err(classify)?;
        }
        if let (Some(c), Some(id)) = (checkpoint, sql::next_checkpoint(rows, last)) {
            tx.execute(
                &format!("INSERT INTO {} (recipe, stream, last_id) VALUES ($1, $2, $3) ON CONFLICT (recipe, stream) DO UPDATE SET last_id = excluded.last_id", sql::CHECKPOINTS),
                &[&c.recipe, &c.stream, &id],
            )
            .map_err(classify)?;
        }
        tx.commit().map_err(classify)?;
        Ok(todo.len())
    }
}
