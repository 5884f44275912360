//! Session definitions as saved in RDB aux data and sent to replicas and the AOF
//! (`RG.SESSIONLOAD <blob>`), decoded by `engine::SessionDef::decode`: any blob decodes or
//! fails without panicking; a definition that decodes encodes to a blob that decodes to
//! the same definition (and encodes to the same bytes again); and what decodes is what the
//! blob says (a number is not silently cut to fit a narrower field).
//!
//! The first byte picks the input: raw bytes as the blob (even), or a value shaped like a
//! definition, built from the remaining bytes and encoded with `engine::codec` (odd), so
//! the fuzzer reaches the checks of each field and not only the codec's.
#![no_main]
use engine::{SessionDef, Value};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rg_fuzz::Gen;

const KEYS: &[&str] = &["version", "id", "language", "source", "args", "user", "db", "description", "removed", "paused", "positions"];
const WORDS: &[&str] = &["version", "id", "language", "source", "args", "user", "db", "description", "removed", "paused", "positions", "lua", "js", "0-0", "1-1", "18446744073709551615-1"];
const GEN: Gen = Gen { words: WORDS, max_depth: 3, exotic: false, unique_keys: false };

/// A field of the right type most of the time, any value sometimes, or nothing.
fn field(u: &mut Unstructured, key: &str) -> Result<Option<Value>> {
    match u.int_in_range(0..=7u8)? {
        6 => return Ok(Some(GEN.value(u, 1)?)),
        7 => return Ok(None),
        _ => {}
    }
    let list = |u: &mut Unstructured, f: &dyn Fn(&mut Unstructured) -> Result<Value>| -> Result<Value> {
        let mut items = Vec::new();
        while items.len() < 8 && u.arbitrary::<bool>()? {
            items.push(f(u)?);
        }
        Ok(Value::Array(items))
    };
    Ok(Some(match key {
        "version" => Value::Int(if u.ratio(7, 8)? { 1 } else { GEN.int(u)? }),
        "id" | "language" | "source" => Value::String(GEN.text(u)?),
        "user" | "description" => if u.arbitrary()? { Value::String(GEN.text(u)?) } else { Value::Nil },
        "args" => list(u, &|u| if u.arbitrary()? { Ok(Value::Bytes(u.arbitrary()?)) } else { GEN.value(u, 2) })?,
        "db" => Value::Int(GEN.int(u)?),
        "removed" | "paused" => list(u, &|u| Ok(Value::Int(GEN.int(u)?)))?,
        _ => list(u, &|u| Ok(Value::Array(vec![Value::Int(GEN.int(u)?), Value::Bytes(u.arbitrary()?), Value::String(GEN.text(u)?)])))?,
    }))
}

fn shaped(data: &[u8]) -> Option<Vec<u8>> {
    let mut u = Unstructured::new(data);
    let mut m = Vec::new();
    for key in KEYS {
        if let Some(v) = field(&mut u, key).ok()? {
            m.push((Value::str(*key), v));
        }
    }
    while m.len() < 16 && u.arbitrary::<bool>().ok()? {
        m.push((GEN.key(&mut u, 1).ok()?, GEN.value(&mut u, 1).ok()?));
    }
    engine::codec::encode(&Value::Map(m)).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let blob = if mode % 2 == 0 { rest.to_vec() } else {
        match shaped(rest) {
            Some(b) => b,
            None => return,
        }
    };
    let Ok(def) = SessionDef::decode(&blob) else { return };
    let again = def.encode();
    let def2 = SessionDef::decode(&again).expect("an encoded definition decodes");
    assert_eq!(def2, def);
    assert_eq!(def2.encode(), again, "encoding is stable");
    // Faithful: the numbers decoded are the numbers saved.
    let v = engine::codec::decode(&blob).expect("the blob decoded once");
    assert_eq!(v.get("db").and_then(Value::as_i64), Some(def.db as i64), "db decoded as {}", def.db);
});
