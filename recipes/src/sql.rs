//! SQL shared by the SQL connectors: upsert and delete statements in each dialect. Names
//! are checked identifiers (see `spec::check_identifier`) or the table's own columns,
//! always quoted; values are always parameters.

use crate::change::Op;
use crate::convert::{Cell, ColType};
use crate::target::Row;
use engine::streams::{format_id, StreamId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn quote(self, name: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", name.replace('`', "``")),
            _ => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }

    /// A table name, possibly `schema.table`.
    pub fn table(self, name: &str) -> String {
        name.split('.').map(|p| self.quote(p)).collect::<Vec<_>>().join(".")
    }

    fn placeholder(self, n: usize, cast: Option<&str>) -> String {
        match (self, cast) {
            (Dialect::Postgres, Some(t)) => format!("CAST(${n}::text AS {t})"),
            (Dialect::Postgres, None) => format!("${n}"),
            (Dialect::MySql, _) => "?".into(),
            (Dialect::Sqlite, _) => format!("?{n}"),
        }
    }
}

/// A statement and the (row index, column or None for the key) of each of its parameters.
pub struct Statement {
    pub sql: String,
    pub params: Vec<(usize, Option<usize>)>,
}

/// Groups `rows` into statements: one multi-row upsert per set of columns and one delete for
/// all deletes (rows are of distinct keys, so their order does not matter). `cast(column)`
/// gives the SQL type a text parameter is cast to (PostgreSQL).
pub fn statements(d: Dialect, table: &str, key: &str, rows: &[&Row], cast: &dyn Fn(&str) -> Option<String>, max_params: usize) -> Vec<Statement> {
    let mut out = Vec::new();
    let t = d.table(table);
    let k = d.quote(key);
    // Deletes, in chunks.
    let deletes = delete_rows(rows);
    for chunk in deletes.chunks(max_params.max(1)) {
        let mut params = Vec::new();
        let list: Vec<String> = chunk
            .iter()
            .map(|&i| {
                params.push((i, None));
                d.placeholder(params.len(), cast(key).as_deref())
            })
            .collect();
        out.push(Statement { sql: format!("DELETE FROM {t} WHERE {k} IN ({})", list.join(", ")), params });
    }
    // Upserts, grouped by their columns.
    for (cols, idx) in upsert_groups(rows) {
        let per_row = cols.len() + 1;
        for chunk in idx.chunks((max_params / per_row).max(1)) {
            let mut params = Vec::new();
            let mut tuples = Vec::new();
            for &i in chunk {
                let mut ph = Vec::new();
                params.push((i, None));
                ph.push(d.placeholder(params.len(), cast(key).as_deref()));
                for (c, col) in cols.iter().enumerate() {
                    params.push((i, Some(c)));
                    ph.push(d.placeholder(params.len(), cast(col).as_deref()));
                }
                tuples.push(format!("({})", ph.join(", ")));
            }
            let names: Vec<String> = std::iter::once(k.clone()).chain(cols.iter().map(|c| d.quote(c))).collect();
            out.push(Statement { sql: format!("INSERT INTO {t} ({}) VALUES {} {}", names.join(", "), tuples.join(", "), on_conflict(d, &k, &cols)), params });
        }
    }
    out
}

/// The indexes of the rows that are deletes.
pub fn delete_rows(rows: &[&Row]) -> Vec<usize> {
    rows.iter().enumerate().filter(|(_, r)| r.op == Op::Delete).map(|(i, _)| i).collect()
}

/// The upserts among `rows`, grouped by their columns: (columns, row indexes), in the
/// order each set of columns first comes.
pub fn upsert_groups<'a>(rows: &[&'a Row]) -> Vec<(Vec<&'a str>, Vec<usize>)> {
    let mut groups: Vec<(Vec<&str>, Vec<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.op == Op::Upsert) {
        let cols: Vec<&str> = r.cells.iter().map(|(c, _)| c.as_str()).collect();
        match groups.iter_mut().find(|(c, _)| *c == cols) {
            Some((_, idx)) => idx.push(i),
            None => groups.push((cols, vec![i])),
        }
    }
    groups
}

/// What an upsert on key column `k` (quoted) does when the row exists: `cols` take the new
/// values (or nothing changes when there are none).
pub fn on_conflict(d: Dialect, k: &str, cols: &[&str]) -> String {
    let update: Vec<String> = cols
        .iter()
        .map(|c| {
            let q = d.quote(c);
            match d {
                Dialect::MySql => format!("{q} = VALUES({q})"),
                _ => format!("{q} = excluded.{q}"),
            }
        })
        .collect();
    match (d, update.is_empty()) {
        (Dialect::MySql, true) => format!("ON DUPLICATE KEY UPDATE {k} = {k}"),
        (Dialect::MySql, false) => format!("ON DUPLICATE KEY UPDATE {}", update.join(", ")),
        (_, true) => format!("ON CONFLICT ({k}) DO NOTHING"),
        (_, false) => format!("ON CONFLICT ({k}) DO UPDATE SET {}", update.join(", ")),
    }
}

impl Statement {
    /// The cells of its parameters, in order.
    pub fn cells<'a>(&'a self, rows: &'a [&'a Row]) -> impl Iterator<Item = &'a Cell> + 'a {
        self.params.iter().map(move |(i, c)| match c {
            None => &rows[*i].pk,
            Some(c) => &rows[*i].cells[*c].1,
        })
    }
}

/// The SQL type `createTable` gives a column of type `t` (`key`: the primary key, which
/// MySQL/MariaDB can only index with a bounded length).
pub fn column_type(d: Dialect, t: ColType, key: bool) -> &'static str {
    match (d, t) {
        (Dialect::Postgres, ColType::Int) => "bigint",
        (Dialect::Postgres, ColType::Float) => "double precision",
        (Dialect::Postgres, ColType::Bool) => "boolean",
        (Dialect::Postgres, ColType::Timestamp) => "timestamptz",
        (Dialect::Postgres, ColType::Text) => "text",
        (Dialect::Postgres, ColType::Bytes) => "bytea",
        (Dialect::MySql, ColType::Int) => "BIGINT",
        (Dialect::MySql, ColType::Float) => "DOUBLE",
        (Dialect::MySql, ColType::Bool) => "BOOLEAN",
        (Dialect::MySql, ColType::Timestamp) => "DATETIME(6)",
        // InnoDB keys hold at most 3072 bytes: 512 characters of 4 bytes.
        (Dialect::MySql, ColType::Text) if key => "VARCHAR(512)",
        (Dialect::MySql, ColType::Text) => "LONGTEXT",
        (Dialect::MySql, ColType::Bytes) if key => "VARBINARY(3072)",
        (Dialect::MySql, ColType::Bytes) => "LONGBLOB",
        // SQLite: names its affinity rules read back as the same type.
        (Dialect::Sqlite, ColType::Int) => "INTEGER",
        (Dialect::Sqlite, ColType::Float) => "REAL",
        (Dialect::Sqlite, ColType::Bool) => "BOOLEAN",
        (Dialect::Sqlite, ColType::Timestamp) => "TIMESTAMP",
        (Dialect::Sqlite, ColType::Text) => "TEXT",
        (Dialect::Sqlite, ColType::Bytes) => "BLOB",
    }
}

/// `CREATE TABLE IF NOT EXISTS` of `createTable`: `cols` (key first, see
/// `target::planned_columns`), the first one the primary key. MySQL/MariaDB tables are
/// InnoDB with `utf8mb4_bin`, so keys compare byte for byte as Redis keys do.
pub fn create_table(d: Dialect, table: &str, cols: &[(String, ColType)]) -> String {
    let defs: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, (c, t))| {
            let not_null = if i == 0 { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", d.quote(c), column_type(d, *t, i == 0))
        })
        .collect();
    let key = cols.first().map(|(c, _)| d.quote(c)).unwrap_or_default();
    let tail = if d == Dialect::MySql { " ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" } else { "" };
    format!("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({key})){tail}", d.table(table), defs.join(", "))
}

/// The checkpoint table of exactly-once delivery.
pub const CHECKPOINTS: &str = "rg_checkpoints";

/// The id to store as the checkpoint after applying `rows` over the stored `last`, if it
/// moves forward.
pub fn next_checkpoint(rows: &[Row], last: Option<StreamId>) -> Option<String> {
    rows.last().filter(|r| last.is_none_or(|l| r.id > l)).map(|r| format_id(r.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, op: Op, cols: &[&str]) -> Row {
        Row { id: (id, 0), key: vec![], op, pk: Cell::Int(id as i64), cells: cols.iter().map(|c| (c.to_string(), Cell::Null)).collect() }
    }

    #[test]
    fn groups_upserts_by_columns_and_quotes_names() {
        let rows = [row(1, Op::Upsert, &["a", "b"]), row(2, Op::Delete, &[]), row(3, Op::Upsert, &["a", "b"]), row(4, Op::Upsert, &["a"])];
        let refs: Vec<&Row> = rows.iter().collect();
        let s = statements(Dialect::Postgres, "public.users", "id", &refs, &|c| (c == "id").then(|| "integer".to_string()), 1000);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].sql, "DELETE FROM \"public\".\"users\" WHERE \"id\" IN (CAST($1::text AS integer))");
        assert_eq!(s[1].sql, "INSERT INTO \"public\".\"users\" (\"id\", \"a\", \"b\") VALUES (CAST($1::text AS integer), $2, $3), (CAST($4::text AS integer), $5, $6) ON CONFLICT (\"id\") DO UPDATE SET \"a\" = excluded.\"a\", \"b\" = excluded.\"b\"");
        assert_eq!(s[1].params, vec![(0, None), (0, Some(0)), (0, Some(1)), (2, None), (2, Some(0)), (2, Some(1))]);
        let m = statements(Dialect::MySql, "users", "id", &refs[3..], &|_| None, 1000);
        assert_eq!(m[0].sql, "INSERT INTO `users` (`id`, `a`) VALUES (?, ?) ON DUPLICATE KEY UPDATE `a` = VALUES(`a`)");
        // Chunks stay under the parameter limit.
        let many: Vec<Row> = (0..10).map(|i| row(i, Op::Upsert, &["a"])).collect();
        let refs: Vec<&Row> = many.iter().collect();
        assert_eq!(statements(Dialect::Sqlite, "t", "id", &refs, &|_| None, 4).len(), 5);
    }

    #[test]
    fn create_table_in_each_dialect() {
        let cols = vec![("id".to_string(), ColType::Int), ("name".to_string(), ColType::Text), ("at".to_string(), ColType::Timestamp), ("raw".to_string(), ColType::Bytes)];
        assert_eq!(
            create_table(Dialect::Postgres, "public.users", &cols),
            "CREATE TABLE IF NOT EXISTS \"public\".\"users\" (\"id\" bigint NOT NULL, \"name\" text, \"at\" timestamptz, \"raw\" bytea, PRIMARY KEY (\"id\"))"
        );
        assert_eq!(
            create_table(Dialect::MySql, "users", &[("k".to_string(), ColType::Text), ("v".to_string(), ColType::Text)]),
            "CREATE TABLE IF NOT EXISTS `users` (`k` VARCHAR(512) NOT NULL, `v` LONGTEXT, PRIMARY KEY (`k`)) ENGINE = InnoDB DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        );
        assert_eq!(
            create_table(Dialect::Sqlite, "users", &cols),
            "CREATE TABLE IF NOT EXISTS \"users\" (\"id\" INTEGER NOT NULL, \"name\" TEXT, \"at\" TIMESTAMP, \"raw\" BLOB, PRIMARY KEY (\"id\"))"
        );
    }
}
