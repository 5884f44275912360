//! A recipe's options as a script gives them to `writeBehind({...})` or
//! `writeThrough({...})`, checked and typed.

use crate::convert::ColType;
use engine::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    WriteBehind,
    WriteThrough,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "writeBehind" => Some(Kind::WriteBehind),
            "writeThrough" => Some(Kind::WriteThrough),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WriteBehind => "writeBehind",
            Kind::WriteThrough => "writeThrough",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Entries are trimmed only after the target committed them; a replay may apply a
    /// change again.
    AtLeastOnce,
    /// The last applied stream id is kept in the target, in the batch's transaction; a
    /// replay skips what was applied.
    ExactlyOnce,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Postgres,
    MongoDb,
    MySql,
    Sqlite,
}

impl TargetKind {
    pub fn parse(s: &str) -> Option<TargetKind> {
        match s {
            "postgres" => Some(TargetKind::Postgres),
            "mongodb" => Some(TargetKind::MongoDb),
            "mysql" => Some(TargetKind::MySql),
            "sqlite" => Some(TargetKind::Sqlite),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Postgres => "postgres",
            TargetKind::MongoDb => "mongodb",
            TargetKind::MySql => "mysql",
            TargetKind::Sqlite => "sqlite",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    pub kind: TargetKind,
    /// The name of the connection (`connection.<name>` in the module's config).
    pub connection: String,
    /// Table (SQL) or collection (MongoDB).
    pub table: String,
    /// MongoDB: the database (default: the one in the URL, else `gears`).
    pub database: Option<String>,
    /// Column types given by the script (SQL targets also read them from the table).
    pub types: Vec<(String, ColType)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub kind: Kind,
    pub name: String,
    pub prefix: Vec<u8>,
    /// The target's primary-key column (MongoDB: `_id` unless given).
    pub key_field: String,
    /// `keyPattern`: the text around its one `*`; the part of a key matched by `*` is the
    /// primary key. Without it the primary key is the key without the prefix.
    pub key_pattern: Option<(Vec<u8>, Vec<u8>)>,
    /// `columns`: (column, hash field) pairs. None: every hash field, under its own name.
    pub columns: Option<Vec<(String, String)>>,
    /// With `columns`, also write the hash fields it doesn't name, under their own names.
    pub all_fields: bool,
    pub target: TargetSpec,
    pub batch: usize,
    pub flush_ms: u64,
    pub delivery: Delivery,
    /// Captured changes not yet applied beyond which writes to matching keys are refused
    /// (0: no limit).
    pub max_backlog: u64,
    /// Times a batch the target rejects is tried again before the records it rejects go
    /// to the dead-letter stream.
    pub max_retries: u32,
    /// Write-through: how long a client's write waits for the target.
    pub timeout_ms: u64,
    /// `backfill`: at registration (and at an UPGRADE that changes the target), the hashes
    /// already under the prefix are queued too.
    pub backfill: bool,
    /// `createTable`: the target table (MongoDB: collection and its index) is created from
    /// `columns`/`types` and `keyField` if it does not exist; an existing one is never altered.
    pub create_table: bool,
    /// What FLUSHALL/FLUSHDB (and SWAPDB) do to the target.
    pub on_flush: OnFlush,
}

/// `onFlush`: what a FLUSHALL/FLUSHDB/SWAPDB that removes the recipe's hashes does to the
/// target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFlush {
    /// `'keep'` (default): the target keeps its rows (a flush is not a delete of each row).
    Keep,
    /// `'delete-all'`: every row the recipe wrote is deleted from the target.
    DeleteAll,
}

impl OnFlush {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFlush::Keep => "keep",
            OnFlush::DeleteAll => "delete-all",
        }
    }
}

fn boolean(name: &str, v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("{name} must be a boolean, got {}", other.type_name())),
    }
}

const OPTIONS: &[&str] = &[
    "name", "prefix", "keyField", "keyPattern", "columns", "allFields", "target", "batch", "flushMs", "delivery", "maxBacklog", "maxRetries", "timeoutMs", "description", "backfill", "createTable", "onFlush",
];
const TARGET_OPTIONS: &[&str] = &["kind", "connection", "table", "collection", "database", "types", "columns"];

fn key_name(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

fn text(name: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| format!("{name} must be a UTF-8 string")),
        other => Err(format!("{name} must be a string, got {}", other.type_name())),
    }
}

fn int(name: &str, v: &Value, min: i64, max: i64) -> Result<i64, String> {
    let n = match v {
        Value::Int(n) => *n,
        Value::Double(d) if d.fract() == 0.0 => *d as i64,
        other => return Err(format!("{name} must be an integer, got {}", other.type_name())),
    };
    if n < min || n > max {
        return Err(format!("{name} must be between {min} and {max}, got {n}"));
    }
    Ok(n)
}

fn entries(name: &str, v: &Value, known: &[&str]) -> Result<Vec<(String, Value)>, String> {
    let Value::Map(m) = v else {
        return Err(format!("{name} must be a table/object, got {}", v.type_name()));
    };
    let mut out = Vec::new();
    for (k, v) in m {
        let k = key_name(k).ok_or_else(|| format!("{name}: option names must be strings"))?;
        if !known.contains(&k.as_str()) {
            return Err(format!("unknown option '{k}'; known options: {}", known.join(", ")));
        }
        out.push((k, v.clone()));
    }
    Ok(out)
}

fn types(v: &Value) -> Result<Vec<(String, ColType)>, String> {
    let Value::Map(m) = v else {
        return Err(format!("target.types must map column names to types, got {}", v.type_name()));
    };
    let mut out = Vec::new();
    for (k, t) in m {
        let col = key_name(k).ok_or("target.types: column names must be strings")?;
        let t = text(&format!("target.types.{col}"), t)?;
        let ty = ColType::parse(&t).ok_or_else(|| format!("target.types.{col}: unknown type '{t}'; expected one of {}", ColType::NAMES.join(", ")))?;
        out.push((col, ty));
    }
    Ok(out)
}

/// `columns`: `{ column = 'field' }` or a list of names (column = field).
fn columns(v: &Value) -> Result<Vec<(String, String)>, String> {
    let mut cols = Vec::new();
    match v {
        Value::Array(items) => {
            for i in items {
                let c = text("columns[]", i)?;
                cols.push((c.clone(), c));
            }
        }
        Value::Map(m) => {
            for (c, f) in m {
                let c = key_name(c).ok_or("columns: column names must be strings")?;
                let f = text(&format!("columns.{c}"), f)?;
                cols.push((c, f));
            }
        }
        other => return Err(format!("columns must map column names to hash fields ({{ column = 'field' }}) or list field names, got {}", other.type_name())),
    }
    if cols.is_empty() {
        return Err("columns must name at least one column".into());
    }
    Ok(cols)
}

/// (column, hash field) pairs.
type Columns = Vec<(String, String)>;

/// The target, and `columns` if it was given there.
fn target(v: &Value) -> Result<(TargetSpec, Option<Columns>), String> {
    let mut kind = None;
    let (mut connection, mut table, mut database, mut ty, mut cols) = (None, None, None, Vec::new(), None);
    for (k, v) in entries("target", v, TARGET_OPTIONS).map_err(|e| format!("target: {e}"))? {
        match k.as_str() {
            "kind" => {
                let s = text("target.kind", &v)?;
                kind = Some(TargetKind::parse(&s).ok_or_else(|| format!("target: unknown kind '{s}'; use postgres(), mongodb(), mysql() or sqlite()"))?);
            }
            "connection" => connection = Some(text("target.connection", &v)?),
            "table" | "collection" => table = Some(text(&format!("target.{k}"), &v)?),
            "database" => database = Some(text("target.database", &v)?),
            "types" => ty = types(&v)?,
            "columns" => cols = Some(columns(&v).map_err(|e| format!("target: {e}"))?),
            _ => {}
        }
    }
    let kind = kind.ok_or("target must be made by postgres({...}), mongodb({...}), mysql({...}) or sqlite({...})")?;
    let connection = connection.ok_or_else(|| format!("target: connection is required (the name of a 'connection.<name>' setting), e.g. {}({{ connection = 'main', ... }})", kind.as_str()))?;
    let what = if kind == TargetKind::MongoDb { "collection" } else { "table" };
    let table = table.ok_or_else(|| format!("target: {what} is required"))?;
    if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
        return Err(format!("target: {what} must be letters, digits, '_' or '.', got '{table}'"));
    }
    Ok((TargetSpec { kind, connection, table, database, types: ty }, cols))
}

/// A column or field name that can be written into SQL (quoted) safely.
pub fn check_identifier(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{what} '{s}' must be 1 to 63 letters, digits or '_', not starting with a digit"));
    }
    Ok(())
}

impl Spec {
    pub fn parse(kind: &str, options: &Value) -> Result<Spec, String> {
        let kind = Kind::parse(kind).ok_or_else(|| format!("unknown recipe '{kind}'"))?;
        let mut spec = Spec {
            kind,
            name: String::new(),
            prefix: Vec::new(),
            key_field: String::new(),
            key_pattern: None,
            columns: None,
            all_fields: false,
            target: TargetSpec { kind: TargetKind::Sqlite, connection: String::new(), table: String::new(), database: None, types: Vec::new() },
            batch: 500,
            flush_ms: 100,
            delivery: Delivery::AtLeastOnce,
            max_backlog: 1_000_000,
            max_retries: 3,
            timeout_ms: 5000,
            backfill: false,
            create_table: false,
            on_flush: OnFlush::Keep,
        };
        let (mut have_target, mut key_field, mut target_columns) = (false, None, None);
        let mut timeout_given = false;
        for (k, v) in entries("options", options, OPTIONS)? {
            match k.as_str() {
                "name" => spec.name = text("name", &v)?,
                "prefix" => spec.prefix = v.as_bytes().map(|b| b.into_owned()).ok_or("prefix must be a string")?,
                "keyField" => key_field = Some(text("keyField", &v)?),
                "keyPattern" => {
                    let p = text("keyPattern", &v)?;
                    let (a, b) = p.split_once('*').filter(|(_, b)| !b.contains('*')).ok_or_else(|| format!("keyPattern must hold exactly one '*' (the part of the key that is the primary key), got '{p}'"))?;
                    spec.key_pattern = Some((a.as_bytes().to_vec(), b.as_bytes().to_vec()));
                }
                "columns" => spec.columns = Some(columns(&v)?),
                "allFields" => {
                    spec.all_fields = match v {
                        Value::Bool(b) => b,
                        other => return Err(format!("allFields must be a boolean, got {}", other.type_name())),
                    }
                }
                "target" => {
                    let (t, cols) = target(&v)?;
                    spec.target = t;
                    target_columns = cols;
                    have_target = true;
                }
                "batch" => spec.batch = int("batch", &v, 1, 100_000)? as usize,
                "flushMs" => spec.flush_ms = int("flushMs", &v, 0, 3_600_000)? as u64,
                "delivery" => {
                    spec.delivery = match text("delivery", &v)?.as_str() {
                        "at-least-once" => Delivery::AtLeastOnce,
                        "exactly-once" => Delivery::ExactlyOnce,
                        other => return Err(format!("delivery must be 'at-least-once' or 'exactly-once', got '{other}'")),
                    }
                }
                "maxBacklog" => spec.max_backlog = int("maxBacklog", &v, 0, i64::MAX)? as u64,
                "maxRetries" => spec.max_retries = int("maxRetries", &v, 0, 1_000_000)? as u32,
                "backfill" => spec.backfill = boolean("backfill", &v)?,
                "createTable" => spec.create_table = boolean("createTable", &v)?,
                "onFlush" => {
                    spec.on_flush = match text("onFlush", &v)?.as_str() {
                        "keep" => OnFlush::Keep,
                        "delete-all" => OnFlush::DeleteAll,
                        other => return Err(format!("onFlush must be 'keep' or 'delete-all', got '{other}'")),
                    }
                }
                "timeoutMs" => {
                    spec.timeout_ms = int("timeoutMs", &v, 1, 3_600_000)? as u64;
                    timeout_given = true;
                }
                _ => {}
            }
        }
        if spec.name.is_empty() {
            return Err("name is required".into());
        }
        if timeout_given && spec.kind == Kind::WriteBehind {
            return Err("timeoutMs applies to writeThrough (how long a client's write waits for the target); writeBehind does not wait".into());
        }
        // `columns` may also be given on the target (postgres({ ..., columns = {...} })).
        match (&spec.columns, target_columns) {
            (Some(_), Some(_)) => return Err("columns is given twice: on the recipe and on its target; give it once".into()),
            (None, Some(c)) => spec.columns = Some(c),
            _ => {}
        }
        if !have_target {
            return Err("target is required, e.g. target = postgres({ connection = 'main', table = 'users' })".into());
        }
        if spec.prefix.is_empty() {
            return Err("prefix must not be empty (it selects the hashes to write, e.g. 'user:')".into());
        }
        if spec.prefix.starts_with(crate::change::STREAM_PREFIX.as_bytes()) {
            return Err(format!("prefix '{}' would capture the recipes' own streams", String::from_utf8_lossy(&spec.prefix)));
        }
        if spec.kind == Kind::WriteThrough && spec.flush_ms > 0 {
            // A waiting client wants its change applied now, not after a time bound.
            spec.flush_ms = 0;
        }
        spec.key_field = key_field.unwrap_or_else(|| if spec.target.kind == TargetKind::MongoDb { "_id".into() } else { "id".into() });
        if spec.target.kind != TargetKind::MongoDb {
            check_identifier("keyField", &spec.key_field)?;
            for (c, _) in spec.columns.iter().flatten() {
                check_identifier("column", c)?;
            }
            if spec.create_table {
                // The table createTable makes also has the columns `types` names.
                for (c, _) in &spec.target.types {
                    check_identifier("column", c)?;
                }
            }
        }
        crate::target::check_create_table(&spec)?;
        Ok(spec)
    }

    /// The columns written for a hash with `fields` (full row image): (column, field).
    pub fn mapped<'a>(&'a self, fields: &'a [(String, Vec<u8>)]) -> Vec<(&'a str, &'a str)> {
        match &self.columns {
            None => fields.iter().map(|(f, _)| (f.as_str(), f.as_str())).collect(),
            Some(cols) => {
                let mut out: Vec<(&str, &str)> = cols.iter().map(|(c, f)| (c.as_str(), f.as_str())).collect();
                if self.all_fields {
                    for (f, _) in fields {
                        if !cols.iter().any(|(c, g)| c == f || g == f) {
                            out.push((f.as_str(), f.as_str()));
                        }
                    }
                }
                out
            }
        }
    }

    /// The primary key of `key`, or None if the key is not this recipe's.
    pub fn primary_key<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        if !key.starts_with(&self.prefix) {
            return None;
        }
        match &self.key_pattern {
            None => Some(&key[self.prefix.len()..]).filter(|k| !k.is_empty()),
            Some((before, after)) => {
                if key.len() < before.len() + after.len() || !key.starts_with(before) || !key.ends_with(after) {
                    return None;
                }
                Some(&key[before.len()..key.len() - after.len()]).filter(|k| !k.is_empty())
            }
        }
    }

    /// Does the capture of this recipe keep the field `field` (the others are not stored)?
    pub fn keeps_field(&self, field: &str) -> bool {
        match &self.columns {
            None => true,
            Some(_) if self.all_fields => true,
            Some(cols) => cols.iter().any(|(_, f)| f == field),
        }
    }
}
