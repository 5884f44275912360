//! RG.RECIPE PREVIEW: what a recipe would do with one key, without doing it. The key's hash
//! is mapped as the apply thread maps a captured change (`pipeline::map_row`), against the
//! table as the target describes it (or as `createTable` would make it), and the
//! statements the batch would send are rendered with their parameters. The connection
//! opened for this only reads: no checkpoint table, no `createTable`, SQLite read-only.

use crate::change::{Change, Op};
use crate::convert::{Cell, ColType};
use crate::pipeline::{column_type, map_row, scrub};
use crate::spec::Spec;
use crate::target::{planned_schema, Schema, Target, TargetError};

/// What the recipe would do with one key.
#[derive(Debug)]
pub struct Preview {
    pub op: Op,
    /// The primary key (NULL if it does not convert: see `errors`).
    pub pk: Cell,
    /// The primary key's column and type.
    pub key: (String, ColType),
    /// Upsert: each column written, its type and value (a value that does not convert is
    /// left out, and named in `errors`).
    pub row: Vec<(String, ColType, Cell)>,
    /// Every conversion error; the first is what the dead-letter stream would get.
    pub errors: Vec<String>,
    /// What the target says of the table: `exists`, `missing ...`, `unreachable: ...`.
    pub table: String,
    /// What `createTable` would send first (the table is missing).
    pub create: Vec<String>,
    /// The statements of the batch and their parameters (none when a value does not convert,
    /// or the target could not be asked).
    pub statements: Vec<(String, Vec<Cell>)>,
}

/// The preview of `change` (a hash read now, as a capture would store it, or a delete).
/// `url`: the connection's URL, or why there is none. Connects to the target: call it off
/// the main thread.
pub fn preview(spec: &Spec, url: Result<String, String>, change: &Change) -> Preview {
    let fallback = Schema { types: spec.target.types.iter().cloned().collect(), columns: None };
    let mut create = Vec::new();
    // Without the table's own types, only those of `types` apply.
    const ONLY_TYPES: &str = "(values are converted with the types of target.types only)";
    let (target, schema, table): (Option<Box<dyn Target>>, Schema, String) = match url {
        Err(e) => (None, fallback, format!("unreachable: {e} {ONLY_TYPES}")),
        Ok(url) => {
            let hide = |e: TargetError| scrub(&e.to_string(), Some(&url));
            match crate::target::open(spec, &url) {
                Err(e) => (None, fallback, format!("unreachable: {} {ONLY_TYPES}", hide(e))),
                Ok(mut t) => match t.exists() {
                    Err(e) => (None, fallback, format!("unreachable: {} {ONLY_TYPES}", hide(e))),
                    Ok(true) => match t.schema() {
                        Ok(s) => (Some(t), s, "exists".to_string()),
                        Err(e) => (None, fallback, format!("unusable: {} {ONLY_TYPES}", hide(e))),
                    },
                    Ok(false) if spec.create_table => {
                        create = t.create_statements(spec);
                        let s = t.plan(spec);
                        (Some(t), s, "missing: createTable creates it when the recipe connects".to_string())
                    }
                    Ok(false) => (None, planned_schema(spec), "missing: the recipe retries until it exists (or set createTable)".to_string()),
                },
            }
        }
    };
    let (row, errors) = map_row(spec, &schema, change);
    let statements = match &target {
        Some(t) if errors.is_empty() => t.preview(&[&row]),
        _ => Vec::new(),
    };
    let cells = row.cells.iter().map(|(c, v)| (c.clone(), column_type(spec, &schema, c), v.clone())).collect();
    let key = (spec.key_field.clone(), column_type(spec, &schema, &spec.key_field));
    Preview { op: change.op, pk: row.pk, key, row: cells, errors, table, create, statements }
}

/// A type as `target.types` names it.
pub fn type_name(t: ColType) -> &'static str {
    match t {
        ColType::Int => "int",
        ColType::Float => "float",
        ColType::Bool => "bool",
        ColType::Timestamp => "timestamp",
        ColType::Text => "text",
        ColType::Bytes => "bytes",
    }
}

/// The change a preview maps: the hash's fields as a capture keeps them (`columns` without
/// `allFields` keeps only the fields it names), or a delete when `fields` is None (the key
/// does not exist).
pub fn change_of(spec: &Spec, key: &[u8], fields: Option<Vec<(Vec<u8>, Vec<u8>)>>) -> Change {
    match fields {
        None => Change { id: (0, 0), key: key.to_vec(), op: Op::Delete, fields: Vec::new() },
        Some(f) => Change {
            id: (0, 0),
            key: key.to_vec(),
            op: Op::Upsert,
            fields: f.into_iter().filter_map(|(k, v)| String::from_utf8(k).ok().filter(|k| spec.keeps_field(k)).map(|k| (k, v))).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::Value;

    fn spec(options: &[(&str, Value)], target: &[(&str, Value)]) -> Spec {
        let t = Value::Map(target.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect());
        let mut o: Vec<(Value, Value)> = vec![(Value::from("name"), Value::from("u")), (Value::from("prefix"), Value::from("u:")), (Value::from("target"), t)];
        o.extend(options.iter().map(|(k, v)| (Value::from(*k), v.clone())));
        Spec::parse("writeBehind", &Value::Map(o)).unwrap()
    }

    #[test]
    fn a_missing_sqlite_table_with_create_table_shows_the_create_and_the_insert() {
        let dir = std::env::temp_dir().join(format!("rg-preview-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("p.db");
        rusqlite::Connection::open(&db).unwrap().execute_batch("CREATE TABLE other (x INTEGER)").unwrap();
        let types = Value::Map(vec![(Value::from("id"), Value::from("int")), (Value::from("age"), Value::from("int"))]);
        let s = spec(
            &[("createTable", Value::Bool(true)), ("columns", Value::Array(vec![Value::from("name"), Value::from("age")]))],
            &[("kind", Value::from("sqlite")), ("connection", Value::from("c")), ("table", Value::from("people")), ("types", types)],
        );
        let url = format!("sqlite://{}", db.display());
        let c = change_of(&s, b"u:7", Some(vec![(b"name".to_vec(), b"Ann".to_vec()), (b"age".to_vec(), b"31".to_vec()), (b"x".to_vec(), b"y".to_vec())]));
        let p = preview(&s, Ok(url.clone()), &c);
        assert_eq!(p.table, "missing: createTable creates it when the recipe connects");
        assert_eq!(p.create, vec!["CREATE TABLE IF NOT EXISTS \"people\" (\"id\" INTEGER NOT NULL, \"name\" TEXT, \"age\" INTEGER, PRIMARY KEY (\"id\"))".to_string()]);
        assert_eq!(p.pk, Cell::Int(7));
        assert_eq!(p.row, vec![("name".into(), ColType::Text, Cell::Text("Ann".into())), ("age".into(), ColType::Int, Cell::Int(31))]);
        assert!(p.errors.is_empty());
        assert_eq!(p.statements.len(), 1);
        assert_eq!(p.statements[0].0, "INSERT INTO \"people\" (\"id\", \"name\", \"age\") VALUES (?1, ?2, ?3) ON CONFLICT (\"id\") DO UPDATE SET \"name\" = excluded.\"name\", \"age\" = excluded.\"age\"");
        assert_eq!(p.statements[0].1, vec![Cell::Int(7), Cell::Text("Ann".into()), Cell::Int(31)]);
        // Nothing was written: the table is still missing.
        let n: i64 = rusqlite::Connection::open(&db).unwrap().query_row("SELECT count(*) FROM sqlite_master WHERE name = 'people'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
        // Every conversion error, and no statement.
        let c = change_of(&s, b"u:x", Some(vec![(b"age".to_vec(), b"old".to_vec())]));
        let p = preview(&s, Ok(url), &c);
        assert_eq!(p.errors, vec!["key 'u:x': the primary key 'x' is not an integer (column id)".to_string(), "key 'u:x': field 'age' 'old' is not an integer (column age)".to_string()]);
        assert!(p.statements.is_empty());
        // A file that does not exist is not created: it reads as an empty database.
        let missing = dir.join("missing.db");
        let c = change_of(&s, b"u:8", None);
        let p = preview(&s, Ok(format!("sqlite://{}", missing.display())), &c);
        assert_eq!(p.table, "missing: createTable creates it when the recipe connects");
        assert_eq!(p.statements, vec![("DELETE FROM \"people\" WHERE \"id\" IN (?1)".to_string(), vec![Cell::Int(8)])]);
        assert!(!missing.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
