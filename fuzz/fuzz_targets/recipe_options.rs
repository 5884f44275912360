//! The options of `writeBehind({...})` / `writeThrough({...})`, checked by
//! `recipes::Spec::parse`: any map of options (as a script can give it: distinct keys) gives
//! a spec or an error, never a panic, and an accepted spec keeps the promises of
//! docs/write-behind.md: a name and a connection; a non-empty prefix that is not under
//! `rg:wb:`; a table of letters, digits, `_` or `.`; on SQL targets a key field and column
//! names that are SQL identifiers; a key pattern with one `*`; `columns` not empty; the
//! numbers within their documented ranges (and writeThrough never waits to fill a batch);
//! and the spec's helpers (`primary_key`, `mapped`, `keeps_field`) are total.
//!
//! The recipe name's character set (letters, digits, `-`, `_`) is checked before the
//! options reach `Spec::parse`, by the stdlib's `__gears_recipe`; here only "not empty".
#![no_main]
use engine::Value;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use recipes::spec::{check_identifier, Kind, Spec, TargetKind};
use rg_fuzz::Gen;

const OPTIONS: &[&str] = &["name", "prefix", "keyField", "keyPattern", "columns", "allFields", "target", "batch", "flushMs", "delivery", "maxBacklog", "maxRetries", "timeoutMs", "description"];
const TARGET: &[&str] = &["kind", "connection", "table", "collection", "database", "types", "columns"];
const WORDS: &[&str] = &[
    "writeBehind", "writeThrough", "postgres", "mongodb", "mysql", "sqlite", "at-least-once", "exactly-once", "user:", "rg:wb:", "rg:wb:x", "*", "a*b", "user:*",
    "id", "_id", "users", "public.users", "main", "int", "float", "bool", "timestamp", "text", "bytes", "integer", "string", "1col", "a b",
];
const TYPES: &[&str] = &["int", "integer", "float", "double", "number", "bool", "boolean", "timestamp", "date", "datetime", "text", "string", "bytes", "binary", "blob"];
const GEN: Gen = Gen { words: WORDS, max_depth: 3, exotic: false, unique_keys: true };

/// One option's value: of the type it needs most of the time, any value sometimes.
fn typed(u: &mut Unstructured, key: &str) -> Result<Value> {
    if u.ratio(1, 10)? {
        return GEN.value(u, 1);
    }
    let list = |u: &mut Unstructured| -> Result<Vec<String>> {
        let mut items = Vec::new();
        while items.len() < 6 && (items.is_empty() || u.arbitrary::<bool>()?) {
            items.push(GEN.text(u)?);
        }
        Ok(items)
    };
    Ok(match key {
        "allFields" => Value::Bool(u.arbitrary()?),
        "batch" | "flushMs" | "maxBacklog" | "maxRetries" | "timeoutMs" => {
            if u.ratio(1, 8)? { Value::Double(GEN.double(u)?) } else { Value::Int(GEN.int(u)?) }
        }
        "prefix" if u.ratio(1, 4)? => Value::Bytes(u.arbitrary()?),
        "columns" if u.arbitrary()? => Value::Array(list(u)?.into_iter().map(Value::String).collect()),
        "columns" => Value::Map(list(u)?.into_iter().map(|c| (Value::String(c.clone()), Value::String(c))).collect()),
        "types" => Value::Map(list(u)?.into_iter().map(|c| Ok((Value::String(c), Value::str(*u.choose(TYPES)?)))).collect::<Result<_>>()?),
        "kind" => Value::str(*u.choose(&["postgres", "mongodb", "mysql", "sqlite"])?),
        "target" => options(u, TARGET)?,
        _ => Value::String(GEN.text(u)?),
    })
}

/// A map of options: each known one typed, left out, or any value; sometimes an unknown
/// one. A script's table or object cannot hold a key twice, so neither does this map.
fn options(u: &mut Unstructured, known: &[&str]) -> Result<Value> {
    let mut m: Vec<(Value, Value)> = Vec::new();
    for key in known {
        // Most options are optional: leave them out half of the time (timeoutMs, which
        // writeBehind refuses, more often).
        let keep = match *key {
            "name" | "prefix" | "target" | "kind" | "connection" | "table" => !u.ratio(1, 16)?,
            "timeoutMs" => u.ratio(1, 4)?,
            _ => u.arbitrary::<bool>()?,
        };
        if keep {
            m.push((Value::str(*key), typed(u, key)?));
        }
    }
    for _ in 0..4 {
        // (`ratio` is true once the input is used up: stop there.)
        if u.is_empty() || !u.ratio(1, 8)? {
            break;
        }
        let k = GEN.key(u, 1)?;
        if !m.iter().any(|(e, _)| e.as_bytes().is_some() && e.as_bytes() == k.as_bytes()) {
            m.push((k, GEN.value(u, 1)?));
        }
    }
    Ok(Value::Map(m))
}

fn check(spec: &Spec, u: &mut Unstructured) -> Result<()> {
    assert!(!spec.name.is_empty());
    assert!(!spec.prefix.is_empty() && !spec.prefix.starts_with(b"rg:wb:"), "prefix {:?}", spec.prefix);
    let t = &spec.target.table;
    assert!(!t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'), "table {t:?}");
    if spec.target.kind != TargetKind::MongoDb {
        check_identifier("keyField", &spec.key_field).expect("keyField is an identifier");
        for (c, _) in spec.columns.iter().flatten() {
            check_identifier("column", c).expect("columns are identifiers");
        }
    }
    if let Some((a, b)) = &spec.key_pattern {
        assert!(!a.contains(&b'*') && !b.contains(&b'*'));
    }
    if let Some(c) = &spec.columns {
        assert!(!c.is_empty());
    }
    assert!((1..=100_000).contains(&spec.batch));
    assert!(spec.flush_ms <= 3_600_000);
    assert!(spec.max_retries <= 1_000_000);
    assert!(spec.max_backlog <= i64::MAX as u64);
    assert!((1..=3_600_000).contains(&spec.timeout_ms));
    if spec.kind == Kind::WriteThrough {
        assert_eq!(spec.flush_ms, 0);
    }
    // The helpers take any key or hash.
    for _ in 0..4 {
        let key: Vec<u8> = if u.arbitrary()? { [spec.prefix.clone(), u.arbitrary()?].concat() } else { u.arbitrary()? };
        if let Some(pk) = spec.primary_key(&key) {
            assert!(!pk.is_empty() && key.starts_with(&spec.prefix));
        }
    }
    let fields: Vec<(String, Vec<u8>)> = u.arbitrary()?;
    let mapped = spec.mapped(&fields);
    if spec.columns.is_none() {
        assert_eq!(mapped.len(), fields.len());
    }
    for (f, _) in &fields {
        let _ = spec.keeps_field(f);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(kind) = (if u.ratio(15, 16).unwrap_or(true) { u.choose(&["writeBehind", "writeThrough"]).map(|s| s.to_string()) } else { u.arbitrary::<String>() }) else { return };
    let Ok(opts) = (if u.ratio(15, 16).unwrap_or(true) { options(&mut u, OPTIONS) } else { GEN.value(&mut u, 0) }) else { return };
    match Spec::parse(&kind, &opts) {
        Ok(spec) => {
            let _ = check(&spec, &mut u);
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
