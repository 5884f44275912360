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
    /// The statements of `batch_statements`, prepared on this connection (their text
    /// depends only on the columns).
    prepared: HashMap<String, postgres::Statement>,
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
        Ok(Postgres { client, table: spec.target.table.clone(), key: spec.key_field.clone(), sql_types: HashMap::new(), prepared: HashMap::new() })
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

/// A statement of a batch: its SQL, the column of each of its (array) parameters (None
/// for the key), and the rows it writes.
struct BatchStatement {
    sql: String,
    params: Vec<Option<usize>>,
    rows: Vec<usize>,
}

/// The statements that write `rows` (distinct keys): one delete of every deleted key, and
/// one upsert per set of columns. Each takes one array parameter per column, unnested
/// and cast to the column's type, so a batch of any size is one statement per set of
/// columns, and the text of each depends only on the columns (prepared once per
/// connection). Values travel as text (bytea columns as bytes), as before.
fn batch_statements(table: &str, key: &str, types: &HashMap<String, String>, rows: &[&Row]) -> Vec<BatchStatement> {
    let d = Dialect::Postgres;
    let t = d.table(table);
    let k = d.quote(key);
    let array = |col: &str| if types.get(col).is_some_and(|t| t == "bytea") { "bytea[]" } else { "text[]" };
    let expr = |i: usize, col: &str| match cast(types, col) {
        Some(ty) => format!("CAST(u.c{i} AS {ty})"),
        None => format!("u.c{i}"),
    };
    let mut out = Vec::new();
    let deletes = sql::delete_rows(rows);
    if !deletes.is_empty() {
        out.push(BatchStatement { sql: format!("DELETE FROM {t} WHERE {k} IN (SELECT {} FROM unnest($1::{}) AS u(c0))", expr(0, key), array(key)), params: vec![None], rows: deletes });
    }
    for (cols, idx) in sql::upsert_groups(rows) {
        let all: Vec<&str> = std::iter::once(key).chain(cols.iter().copied()).collect();
        let names: Vec<String> = all.iter().map(|c| d.quote(c)).collect();
        let exprs: Vec<String> = all.iter().enumerate().map(|(i, c)| expr(i, c)).collect();
        let arrays: Vec<String> = all.iter().enumerate().map(|(i, c)| format!("${}::{}", i + 1, array(c))).collect();
        let aliases: Vec<String> = (0..all.len()).map(|i| format!("c{i}")).collect();
        let conflict = sql::on_conflict(d, &k, &cols);
        out.push(BatchStatement {
            sql: format!("INSERT INTO {t} ({}) SELECT {} FROM unnest({}) AS u({}) {conflict}", names.join(", "), exprs.join(", "), arrays.join(", "), aliases.join(", ")),
            params: std::iter::once(None).chain((0..cols.len()).map(Some)).collect(),
            rows: idx,
        });
    }
    out
}

impl BatchStatement {
    /// The cell of parameter `p` for row `r`.
    fn cell<'a>(&self, rows: &[&'a Row], p: usize, r: usize) -> &'a Cell {
        let row = rows[r];
        match self.params[p] {
            None => &row.pk,
            Some(c) => &row.cells[c].1,
        }
    }

    /// Its parameters: one array per column, with the value of each of its rows.
    fn values(&self, rows: &[&Row], types: &HashMap<String, String>, key: &str) -> Vec<Box<dyn ToSql + Sync>> {
        (0..self.params.len())
            .map(|p| -> Box<dyn ToSql + Sync> {
                let col = match self.params[p] {
                    None => key,
                    Some(c) => rows[self.rows[0]].cells[c].0.as_str(),
                };
                if types.get(col).is_some_and(|t| t == "bytea") {
                    let v: Vec<Option<Vec<u8>>> = self
                        .rows
                        .iter()
                        .map(|&r| match self.cell(rows, p, r) {
                            Cell::Bytes(b) => Some(b.clone()),
                            other => other.to_text().map(String::into_bytes),
                        })
                        .collect();
                    Box::new(v)
                } else {
                    let v: Vec<Option<String>> = self.rows.iter().map(|&r| self.cell(rows, p, r).to_text()).collect();
                    Box::new(v)
                }
            })
            .collect()
    }
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

    /// Each parameter is an array with one value per row of the batch: for the one row
    /// previewed, its value.
    fn preview(&self, rows: &[&Row]) -> Vec<(String, Vec<Cell>)> {
        batch_statements(&self.table, &self.key, &self.sql_types, rows)
            .into_iter()
            .flat_map(|st| {
                st.rows.iter().map(|&r| (st.sql.clone(), (0..st.params.len()).map(|p| st.cell(rows, p, r).clone()).collect())).collect::<Vec<_>>()
            })
            .collect()
    }

    fn apply(&mut self, rows: &[Row], checkpoint: Option<&Checkpoint>) -> Result<usize, TargetError> {
        let all: Vec<&Row> = rows.iter().collect();
        let statements = batch_statements(&self.table, &self.key, &self.sql_types, &all);
        for st in &statements {
            if !self.prepared.contains_key(&st.sql) {
                let prepared = self.client.prepare(&st.sql).map_err(classify)?;
                self.prepared.insert(st.sql.clone(), prepared);
            }
        }
        // One statement and no checkpoint: atomic on its own, one round trip.
        if checkpoint.is_none() && statements.len() <= 1 {
            if let Some(st) = statements.first() {
                let values = st.values(&all, &self.sql_types, &self.key);
                let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
                self.client.execute(&self.prepared[&st.sql], &refs).map_err(classify)?;
            }
            return Ok(rows.len());
        }
        let mut tx = self.client.transaction().map_err(classify)?;
        let last = match checkpoint {
            Some(c) => {
                let r = tx.query_opt(&format!("SELECT last_id FROM {} WHERE recipe = $1 AND stream = $2 FOR UPDATE", sql::CHECKPOINTS), &[&c.recipe, &c.stream]).map_err(classify)?;
                r.and_then(|r| parse_id(&r.get::<_, String>(0)))
            }
            None => None,
        };
        let todo = after(rows, last);
        let statements = if todo.len() == rows.len() { statements } else { batch_statements(&self.table, &self.key, &self.sql_types, &todo) };
        for st in &statements {
            let values = st.values(&todo, &self.sql_types, &self.key);
            let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            match self.prepared.get(&st.sql) {
                Some(p) => tx.execute(p, &refs),
                None => tx.execute(st.sql.as_str(), &refs),
            }
            .map_err(classify)?;
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
