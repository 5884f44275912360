//! What the fuzz targets share: building `engine::Value`s out of the fuzzer's bytes.
//!
//! `engine::Value` does not implement `Arbitrary` (the engine does not depend on the fuzzing
//! crates), so `Gen` builds values by hand from an `Unstructured`, biased towards the
//! words a parser looks for and the numbers at the edges of the types.

use engine::{FnRef, ObjRef, Value};
use libfuzzer_sys::arbitrary::{Result, Unstructured};

/// Most items in one generated array or map: keeps inputs cheap, the fuzzer nests instead.
const MAX_ITEMS: usize = 16;

/// Integers at the edges: i32 and the doubles' exact range (2^53) matter to JS and Lua.
const EDGE_INTS: &[i64] = &[0, 1, -1, 2, 3, i32::MAX as i64, i32::MIN as i64, 1 << 31, 1 << 32, (1 << 53) - 1, 1 << 53, (1 << 53) + 1, -(1 << 53), u32::MAX as i64, i64::MAX, i64::MIN];
const EDGE_DOUBLES: &[f64] = &[0.0, -0.0, 0.5, 1.0, -1.5, 1e17, 9007199254740992.0, 9007199254740994.0, 9.2233720368547758e18, -9.2233720368547758e18, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, f64::MAX];

/// How values are generated.
pub struct Gen<'a> {
    /// Words to use for strings (and map keys) half of the time; the rest is arbitrary text.
    pub words: &'a [&'a str],
    /// Below this depth, only scalars.
    pub max_depth: usize,
    /// Also generate functions and host objects (which only a language instance holds).
    pub exotic: bool,
    /// Give every map distinct keys (by their byte form), as Lua tables and JS objects do.
    pub unique_keys: bool,
}

impl Gen<'_> {
    pub fn value(&self, u: &mut Unstructured, depth: usize) -> Result<Value> {
        let mut kinds = 7;
        if depth < self.max_depth {
            kinds += 2;
        }
        if self.exotic {
            kinds += 2;
        }
        let mut tag = u.int_in_range(0..=kinds - 1)?;
        if depth >= self.max_depth && tag >= 7 {
            // Skip the collections' slots: exotic kinds come after them.
            tag += 2;
        }
        Ok(match tag {
            0 => Value::Nil,
            1 => Value::Bool(u.arbitrary()?),
            2 => Value::Int(self.int(u)?),
            3 => Value::Double(self.double(u)?),
            4 => Value::String(self.text(u)?),
            5 => Value::Bytes(u.arbitrary()?),
            6 => Value::Error(self.text(u)?),
            7 => {
                let mut items = Vec::new();
                while items.len() < MAX_ITEMS && u.arbitrary::<bool>()? {
                    items.push(self.value(u, depth + 1)?);
                }
                Value::Array(items)
            }
            8 => {
                let mut entries: Vec<(Value, Value)> = Vec::new();
                while entries.len() < MAX_ITEMS && u.arbitrary::<bool>()? {
                    let k = self.key(u, depth + 1)?;
                    let v = self.value(u, depth + 1)?;
                    if self.unique_keys && entries.iter().any(|(e, _)| same_key(e, &k)) {
                        continue;
                    }
                    entries.push((k, v));
                }
                Value::Map(entries)
            }
            9 => Value::Function(FnRef(u.int_in_range(0..=3)?)),
            _ => Value::Object(ObjRef { kind: "GB", id: u.int_in_range(0..=3)? }),
        })
    }

    /// A map key: mostly a string (a word half of the time), else any value.
    pub fn key(&self, u: &mut Unstructured, depth: usize) -> Result<Value> {
        if u.ratio(3, 4)? {
            Ok(Value::String(self.text(u)?))
        } else {
            self.value(u, depth)
        }
    }

    pub fn text(&self, u: &mut Unstructured) -> Result<String> {
        if !self.words.is_empty() && u.arbitrary::<bool>()? {
            Ok(u.choose(self.words)?.to_string())
        } else {
            u.arbitrary()
        }
    }

    pub fn int(&self, u: &mut Unstructured) -> Result<i64> {
        match u.int_in_range(0..=2u8)? {
            0 => u.int_in_range(-2..=1000),
            1 => Ok(*u.choose(EDGE_INTS)?),
            _ => u.arbitrary(),
        }
    }

    pub fn double(&self, u: &mut Unstructured) -> Result<f64> {
        match u.int_in_range(0..=2u8)? {
            0 => Ok(u.int_in_range(-1000i32..=1000)? as f64 / 4.0),
            1 => Ok(*u.choose(EDGE_DOUBLES)?),
            _ => u.arbitrary(),
        }
    }
}

/// Two map keys a script could not tell apart (same byte form: "1", 1 and b"1" included).
fn same_key(a: &Value, b: &Value) -> bool {
    match (a.as_bytes(), b.as_bytes()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Value equality where NaN equals NaN (a NaN that round-trips is still the same value).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Map(x), Value::Map(y)) => x.len() == y.len() && x.iter().zip(y).all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2)),
        _ => a == b,
    }
}
