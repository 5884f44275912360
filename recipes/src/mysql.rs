//! MySQL and MariaDB target (the `mysql` crate, sync API, no TLS). URL:
//! `mysql://user:pass@host:3306/db`. Values travel as typed binary-protocol parameters:
//! booleans as 0/1 (`TINYINT(1)`), timestamps as UTC date-times (the session's time zone is
//! UTC). The session runs in strict mode, so a bad value is refused, never truncated.

use crate::convert::{format_timestamp, Cell, ColType};
use crate::spec::Spec;
use crate::sql::{self, Dialect};
use crate::target::{after, planned_columns, Checkpoint, Row, Schema, Target, TargetError};
use engine::streams::parse_id;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, TxOpts, Value};
use std::time::Duration;

pub struct MySql {
    conn: Conn,
    table: String,
    key: String,
}

/// Server errors that are the data's fault: NULL in a NOT NULL column (1048, 1263, 1364),
/// duplicate entry (1062), out of range (1264, 1690), truncated or incorrect values (1265,
/// 1292, 1300, 1366, 1406), foreign keys (1451, 1452), CHECK constraints (MySQL 3819,
/// MariaDB 4025). SQLSTATE classes 22 (data) and 23 (integrity) are too.
const REJECTED: &[u16] = &[1048, 1062, 1263, 1264, 1265, 1292, 1300, 1364, 1366, 1406, 1451, 1452, 1690, 3819, 4025];

fn classify(e: mysql::Error) -> TargetError {
    match &e {
        mysql::Error::MySqlError(m) => {
            let msg = format!("mysql: ERROR {} ({}): {}", m.code, m.state, m.message);
            // Anything else (unknown table or column, shutdown, locks, resources) is the
            // target's, and passes.
            if REJECTED.contains(&m.code) || m.state.starts_with("22") || m.state.starts_with("23") {
                TargetError::Rejected(msg)
            } else {
                TargetError::Unavailable(msg)
            }
        }
        _ => TargetError::Unavailable(format!("mysql: {e}")),
    }
}

impl MySql {
    /// Connects (nothing is written: see `Target::prepare`).
    pub fn open(spec: &Spec, url: &str) -> Result<MySql, TargetError> {
        let opts = Opts::from_url(url).map_err(|e| TargetError::Unavailable(format!("bad MySQL URL for connection '{}': {e}", spec.target.connection)))?;
        let opts = OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(Duration::from_secs(5)))
            .tcp_keepalive_time_ms(Some(10_000))
            // Run on every (re)connection: refuse bad values instead of truncating them, and
            // read and write date-times as UTC.
            .init(vec!["SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'", "SET time_zone = '+00:00'"]);
        let conn = Conn::new(opts).map_err(classify)?;
        Ok(MySql { conn, table: spec.target.table.clone(), key: spec.key_field.clone() })
    }

    /// The table's database (None: the connection's) and name.
    fn names(&self) -> (Option<String>, String) {
        match self.table.split_once('.') {
            Some((d, t)) => (Some(d.to_string()), t.to_string()),
            None => (None, self.table.clone()),
        }
    }
}

/// The recipe's type of a column, from information_schema's DATA_TYPE and COLUMN_TYPE.
fn col_type(data_type: &str, column_type: &str) -> ColType {
    match data_type.to_ascii_lowercase().as_str() {
        // MySQL's BOOLEAN is TINYINT(1).
        "tinyint" if column_type.to_ascii_lowercase().starts_with("tinyint(1)") => ColType::Bool,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => ColType::Int,
        "decimal" | "numeric" | "float" | "double" | "real" => ColType::Float,
        "date" | "datetime" | "timestamp" => ColType::Timestamp,
        "tinyblob" | "blob" | "mediumblob" | "longblob" | "binary" | "varbinary" => ColType::Bytes,
        _ => ColType::Text,
    }
}

/// Year, month and day of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (d, m) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

fn value(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::NULL,
        Cell::Int(i) => Value::Int(*i),
        Cell::Float(f) => Value::Double(*f),
        Cell::Bool(b) => Value::Int(*b as i64),
        Cell::Timestamp(us) => {
            let (days, rest) = (us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000));
            let (y, m, d) = civil_from_days(days);
            let secs = rest / 1_000_000;
            if (0..=9999).contains(&y) {
                Value::Date(y as u16, m as u8, d as u8, (secs / 3600) as u8, (secs / 60 % 60) as u8, (secs % 60) as u8, (rest % 1_000_000) as u32)
            } else {
                // Beyond what a DATETIME holds: as text, which the server refuses.
                Value::Bytes(format_timestamp(*us).into_bytes())
            }
        }
        Cell::Text(s) => Value::Bytes(s.as_bytes().to_vec()),
        Cell::Bytes(b) => Value::Bytes(b.clone()),
    }
}

impl Target for MySql {
    fn schema(&mut self) -> Result<Schema, TargetError> {
        // `db.table` names its database; a plain name is in the connection's.
        let (db, table) = self.names();
        let cols: Vec<(String, String, String)> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, table),
            )
            .map_err(classify)?;
        if cols.is_empty() {
            return Err(TargetError::Unavailable(format!("MySQL has no table '{}'", self.table)));
        }
        if !cols.iter().any(|(c, _, _)| *c == self.key) {
            return Err(TargetError::Unavailable(format!("table '{}' has no key column '{}' (keyField)", self.table, self.key)));
        }
        Ok(Schema { types: cols.iter().map(|(c, d, t)| (c.clone(), col_type(d, t))).collect(), columns: Some(cols.into_iter().map(|(c, _, _)| c).collect()) })
    }

    fn exists(&mut self) -> Result<bool, TargetError> {
        let (db, table) = self.names();
        let n: Option<u64> = self
            .conn
            .exec_first("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?", (db, table))
            .map_err(classify)?;
        Ok(n.unwrap_or(0) > 0)
    }

    fn create_statements(&self, spec: &Spec) -> Vec<String> {
        vec![sql::create_table(Dialect::MySql, &self.table, &planned_columns(spec))]
    }

    fn create(&mut self, spec: &Spec) -> Result<(), TargetError> {
        for st in self.create_statements(spec) {
            self.conn.query_drop(st).map_err(classify)?;
        }
        Ok(())
    }

    fn prepare(&mut self, spec: &Spec) -> Result<(), TargetError> {
        if spec.delivery == crate::spec::Delivery::ExactlyOnce {
            // InnoDB keys hold at most 3072 bytes: (190 + 576) characters of 4 bytes. Names are
            // compared byte for byte, as Redis compares keys.
            self.conn
                .query_drop(format!(
                    "CREATE TABLE IF NOT EXISTS {} (recipe VARCHAR(190) NOT NULL, stream VARCHAR(576) NOT NULL, last_id VARCHAR(64) NOT NULL, PRIMARY KEY (recipe, stream)) \
                     ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                    sql::CHECKPOINTS
                ))
                .map_err(classify)?;
        }
        Ok(())
    }

    fn preview(&self, rows: &[&Row]) -> Vec<(String, Vec<Cell>)> {
        sql::statements(Dialect::MySql, &self.table, &self.key, rows, &|_| None, 30000)
            .into_iter()
            .map(|st| {
                let cells = st.cells(rows).cloned().collect();
                (st.sql, cells)
            })
            .collect()
    }

    fn apply(&mut self, rows: &[Row], checkpoint: Option<&Checkpoint>) -> Result<usize, TargetError> {
        let mut tx = self.conn.start_transaction(TxOpts::default()).map_err(classify)?;
        let last = match checkpoint {
            Some(c) => {
                let r: Option<String> = tx.exec_first(format!("SELECT last_id FROM {} WHERE recipe = ? AND stream = ? FOR UPDATE", sql::CHECKPOINTS), (c.recipe, c.stream)).map_err(classify)?;
                r.and_then(|s| parse_id(&s))
            }
            None => None,
        };
        let todo = after(rows, last);
        // A prepared statement holds at most 65535 parameters.
        for st in sql::statements(Dialect::MySql, &self.table, &self.key, &todo, &|_| None, 30000) {
            let params: Vec<Value> = st.cells(&todo).map(value).collect();
            tx.exec_drop(&st.sql, params).map_err(classify)?;
        }
        if let (Some(c), Some(id)) = (checkpoint, sql::next_checkpoint(rows, last)) {
            tx.exec_drop(format!("INSERT INTO {} (recipe, stream, last_id) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE last_id = VALUES(last_id)", sql::CHECKPOINTS), (c.recipe, c.stream, id)).map_err(classify)?;
        }
        tx.commit().map_err(classify)?;
        Ok(todo.len())
    }
}
