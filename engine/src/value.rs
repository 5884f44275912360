//! The one value type that crosses every boundary: script <-> stdlib <-> Redis.

use std::fmt;

/// A script function held by a language instance, named by the order in which the
/// instance first saw it during a run (0, 1, 2, ...). Because that order depends only on
/// the script's source and arguments, running the same source again (on another worker
/// or shard) gives the same `FnRef` to the same function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FnRef(pub u32);

/// A host object (for example a plan builder returned by `GB()`). Languages expose it to
/// scripts as an object whose methods are `Natives::methods(kind)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjRef {
    pub kind: &'static str,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    /// Text known to be valid UTF-8.
    String(String),
    /// Binary-safe bytes (Redis replies, Lua strings).
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    /// Ordered map: order is kept as produced.
    Map(Vec<(Value, Value)>),
    /// An error value (a Redis error reply, or an error a script returned).
    Error(String),
    Function(FnRef),
    Object(ObjRef),
}

impl Value {
    /// About how many bytes the value takes in memory (its heap data and its own slot).
    pub fn approx_size(&self) -> usize {
        const SLOT: usize = std::mem::size_of::<Value>();
        SLOT + match self {
            Value::String(s) | Value::Error(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Array(items) => items.iter().map(Value::approx_size).sum(),
            Value::Map(pairs) => pairs.iter().map(|(k, v)| k.approx_size() + v.approx_size()).sum(),
            _ => 0,
        }
    }

    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// Bytes that are valid UTF-8 become `String`, the rest stay `Bytes`.
    pub fn from_bytes(b: Vec<u8>) -> Value {
        match String::from_utf8(b) {
            Ok(s) => Value::String(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        }
    }

    /// The byte content of a string-like value (String, Bytes, or a number's text form).
    pub fn as_bytes(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        match self {
            Value::String(s) => Some(Cow::Borrowed(s.as_bytes())),
            Value::Bytes(b) => Some(Cow::Borrowed(b)),
            Value::Int(i) => Some(Cow::Owned(i.to_string().into_bytes())),
            Value::Double(d) => Some(Cow::Owned(format_double(*d).into_bytes())),
            _ => None,
        }
    }

    pub fn as_str_lossy(&self) -> Option<String> {
        self.as_bytes().map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Double(d) => Some(*d),
            Value::String(_) | Value::Bytes(_) => {
                let s = self.as_str_lossy()?;
                s.trim().parse::<f64>().ok()
            }
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
            Value::String(_) | Value::Bytes(_) => self.as_str_lossy()?.trim().parse().ok(),
            _ => None,
        }
    }

    /// Truthiness as the stdlib sees it (filter results): nil and false are false, and so
    /// are 0 and the empty string, so that both languages agree.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Double(d) => *d != 0.0 && !d.is_nan(),
            Value::String(s) => !s.is_empty(),
            Value::Bytes(b) => !b.is_empty(),
            _ => true,
        }
    }

    /// Looks up a string key in a map value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find_map(|(k, v)| {
                (k.as_bytes().as_deref() == Some(key.as_bytes())).then_some(v)
            }),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Double(_) => "double",
            Value::String(_) | Value::Bytes(_) => "string",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Error(_) => "error",
            Value::Function(_) => "function",
            Value::Object(_) => "object",
        }
    }

    /// A canonical byte key for grouping and de-duplication: equal values give equal keys
    /// whichever language produced them (1 and 1.0 are the same key; "a" and b"a" too).
    pub fn group_key(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_group_key(&mut out);
        out
    }

    fn write_group_key(&self, out: &mut Vec<u8>) {
        match self {
            Value::Nil => out.push(b'n'),
            Value::Bool(b) => out.extend_from_slice(if *b { b"t" } else { b"f" }),
            Value::Int(_) | Value::Double(_) => {
                out.push(b'#');
                let d = self.as_f64().unwrap_or(0.0);
                match self.as_i64() {
                    Some(i) if i as f64 == d => out.extend_from_slice(i.to_string().as_bytes()),
                    _ => out.extend_from_slice(format_double(d).as_bytes()),
                }
            }
            Value::String(_) | Value::Bytes(_) => {
                let b = self.as_bytes().unwrap_or_default();
                out.push(b'$');
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(&b);
            }
            Value::Array(items) => {
                out.push(b'[');
                for i in items {
                    i.write_group_key(out);
                    out.push(b',');
                }
                out.push(b']');
            }
            Value::Map(entries) => {
                out.push(b'{');
                for (k, v) in entries {
                    k.write_group_key(out);
                    out.push(b'=');
                    v.write_group_key(out);
                    out.push(b',');
                }
                out.push(b'}');
            }
            Value::Error(e) => {
                out.push(b'!');
                out.extend_from_slice(e.as_bytes());
            }
            Value::Function(f) => out.extend_from_slice(format!("fn{}", f.0).as_bytes()),
            Value::Object(o) => out.extend_from_slice(format!("obj{}:{}", o.kind, o.id).as_bytes()),
        }
    }

    /// Total order used by `sort`: nil < booleans < numbers < strings < arrays < maps < others.
    pub fn compare(&self, other: &Value) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Nil => 0,
                Value::Bool(_) => 1,
                Value::Int(_) | Value::Double(_) => 2,
                Value::String(_) | Value::Bytes(_) => 3,
                Value::Array(_) => 4,
                Value::Map(_) => 5,
                _ => 6,
            }
        }
        match (rank(self), rank(other)) {
            (a, b) if a != b => a.cmp(&b),
            (1, _) => matches!(self, Value::Bool(true)).cmp(&matches!(other, Value::Bool(true))),
            (2, _) => {
                let (a, b) = (self.as_f64().unwrap_or(0.0), other.as_f64().unwrap_or(0.0));
                a.partial_cmp(&b).unwrap_or(Ordering::Equal)
            }
            (3, _) => self.as_bytes().cmp(&other.as_bytes()),
            (4, _) => match (self, other) {
                (Value::Array(a), Value::Array(b)) => {
                    for (x, y) in a.iter().zip(b) {
                        let o = x.compare(y);
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    a.len().cmp(&b.len())
                }
                _ => Ordering::Equal,
            },
            _ => self.group_key().cmp(&other.group_key()),
        }
    }
}

/// Formats a double the way Redis does for RESP2 (shortest round-trip form, `inf`, `nan`).
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf".into() } else { "-inf".into() }
    } else if d.fract() == 0.0 && d.abs() < 1e17 {
        format!("{}", d as i64)
    } else {
        format!("{}", d)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => write!(f, "nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Double(d) => write!(f, "{}", format_double(*d)),
            Value::String(s) => write!(f, "{s}"),
            Value::Bytes(b) => write!(f, "{}", String::from_utf8_lossy(b)),
            Value::Array(items) => {
                write!(f, "[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
            Value::Map(entries) => {
                write!(f, "{{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
            Value::Error(e) => write!(f, "error: {e}"),
            Value::Function(r) => write!(f, "<function {}>", r.0),
            Value::Object(o) => write!(f, "<{} {}>", o.kind, o.id),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
