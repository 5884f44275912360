//! The built-in package `gears/json` (JSON encode/decode, the same API in Lua and
//! JavaScript), implemented once here as natives that the package sources wrap.

use engine::{Package, ScriptError, Value};

/// The natives behind `gears/json` (globals, not meant to be called directly).
pub const ENCODE: &str = "__gears_json_encode";
pub const DECODE: &str = "__gears_json_decode";

pub fn packages() -> Vec<Package> {
    let p = |language: &str, source: &str| Package::builtin(language, "gears/json", source.into());
    vec![
        p("lua", "return { encode = __gears_json_encode, decode = __gears_json_decode }"),
        p("js", "export const encode = v => __gears_json_encode(v);\nexport const decode = s => __gears_json_decode(s);\nexport default { encode, decode };"),
    ]
}

fn to_json(v: &Value, depth: usize) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if depth > 100 {
        return Err("value nested too deeply".into());
    }
    Ok(match v {
        Value::Nil => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Double(d) => serde_json::Number::from_f64(*d).map(J::Number).ok_or_else(|| format!("{d} has no JSON form"))?,
        Value::String(s) => J::String(s.clone()),
        Value::Bytes(b) => J::String(String::from_utf8(b.clone()).map_err(|_| "binary strings (not UTF-8) have no JSON form".to_string())?),
        Value::Array(items) => J::Array(items.iter().map(|i| to_json(i, depth + 1)).collect::<Result<_, _>>()?),
        // A Lua array with nil holes (a JSON array with nulls, decoded) arrives as a map
        // with integer keys: it goes back out as an array, the holes as null.
        Value::Map(entries) if sparse_array_len(entries).is_some() => {
            let len = sparse_array_len(entries).unwrap_or(0);
            let mut items = vec![J::Null; len];
            for (k, v) in entries {
                if let Value::Int(i) = k {
                    items[*i as usize - 1] = to_json(v, depth + 1)?;
                }
            }
            J::Array(items)
        }
        Value::Map(entries) => {
            let mut m = serde_json::Map::new();
            for (k, v) in entries {
                let key = match k {
                    Value::String(_) | Value::Bytes(_) | Value::Int(_) | Value::Double(_) => k.as_str_lossy().unwrap_or_default(),
                    other => return Err(format!("a {} cannot be a JSON object key", other.type_name())),
                };
                m.insert(key, to_json(v, depth + 1)?);
            }
            J::Object(m)
        }
        Value::Error(e) => J::String(e.clone()),
        Value::Function(_) | Value::Object(_) => return Err(format!("a {} has no JSON form", v.type_name())),
    })
}

/// The length of the array a map of positive integer keys stands for, if it is one (not
/// too sparse: at least half the slots used).
fn sparse_array_len(entries: &[(Value, Value)]) -> Option<usize> {
    let mut max = 0i64;
    for (k, _) in entries {
        match k {
            Value::Int(i) if *i >= 1 => max = max.max(*i),
            _ => return None,
        }
    }
    (!entries.is_empty() && max as usize <= entries.len() * 2).then_some(max as usize)
}

fn from_json(j: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => n.as_i64().map(Value::Int).unwrap_or_else(|| Value::Double(n.as_f64().unwrap_or(f64::NAN))),
        J::String(s) => Value::String(s),
        J::Array(items) => Value::Array(items.into_iter().map(from_json).collect()),
        J::Object(m) => Value::Map(m.into_iter().map(|(k, v)| (Value::String(k), from_json(v))).collect()),
    }
}

pub fn encode(a: &[Value]) -> Result<Value, ScriptError> {
    let v = a.first().unwrap_or(&Value::Nil);
    let j = to_json(v, 0).map_err(|e| ScriptError::usage(format!("gears/json encode: {e}")))?;
    Ok(Value::String(j.to_string()))
}

pub fn decode(a: &[Value]) -> Result<Value, ScriptError> {
    let text = match a.first() {
        Some(v @ (Value::String(_) | Value::Bytes(_))) => v.as_bytes().map(|b| b.into_owned()).unwrap_or_default(),
        other => return Err(crate::args::wrong("gears/json decode", 0, "a string", other)),
    };
    let j: serde_json::Value = serde_json::from_slice(&text).map_err(|e| ScriptError::usage(format!("gears/json decode: invalid JSON: {e}")))?;
    Ok(from_json(j))
}
