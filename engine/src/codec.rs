//! A compact binary encoding of `Value`, for anything that leaves the process (records
//! sent to other shards, state saved in RDB). `decode` never panics on bad input.
//!
//! Format: one tag byte, then: Nil/True/False nothing; Int 8 bytes LE; Double 8 bytes LE;
//! String/Bytes/Error a varint length then the bytes; Array a varint count then items;
//! Map a varint count then key, value pairs. Functions and objects cannot be encoded.

use crate::{FnRef, Value};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("value codec: input ends early")]
    Truncated,
    #[error("value codec: unknown tag {0}")]
    UnknownTag(u8),
    #[error("value codec: string is not valid UTF-8")]
    BadUtf8,
    #[error("value codec: nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("value codec: length {0} is larger than the input")]
    BadLength(u64),
    #[error("value codec: {0} bytes left after the value")]
    Trailing(usize),
    #[error("value codec: a {0} cannot be encoded")]
    NotEncodable(&'static str),
}

pub const MAX_DEPTH: usize = 128;

const NIL: u8 = 0;
const TRUE: u8 = 1;
const FALSE: u8 = 2;
const INT: u8 = 3;
const DOUBLE: u8 = 4;
const STRING: u8 = 5;
const BYTES: u8 = 6;
const ARRAY: u8 = 7;
const MAP: u8 = 8;
const ERROR: u8 = 9;

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

pub fn encode(v: &Value) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(v, &mut out, 0)?;
    Ok(out)
}

fn encode_into(v: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), CodecError> {
    if depth > MAX_DEPTH {
        return Err(CodecError::TooDeep);
    }
    match v {
        Value::Nil => out.push(NIL),
        Value::Bool(true) => out.push(TRUE),
        Value::Bool(false) => out.push(FALSE),
        Value::Int(i) => {
            out.push(INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Double(d) => {
            out.push(DOUBLE);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::String(s) | Value::Error(s) => {
            out.push(if matches!(v, Value::String(_)) { STRING } else { ERROR });
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(BYTES);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            put_varint(out, items.len() as u64);
            for i in items {
                encode_into(i, out, depth + 1)?;
            }
        }
        Value::Map(entries) => {
            out.push(MAP);
            put_varint(out, entries.len() as u64);
            for (k, v) in entries {
                encode_into(k, out, depth + 1)?;
                encode_into(v, out, depth + 1)?;
            }
        }
        Value::Function(FnRef(_)) => return Err(CodecError::NotEncodable("function")),
        Value::Object(_) => return Err(CodecError::NotEncodable("host object")),
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }
    fn take(&mut self, n: u64) -> Result<&[u8], CodecError> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(CodecError::BadLength(n));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(CodecError::BadLength(u64::MAX))
    }
    /// A count of items, each taking at least one byte: bounded by what is left.
    fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(CodecError::BadLength(n));
        }
        Ok(n as usize)
    }
    fn value(&mut self, depth: usize) -> Result<Value, CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::TooDeep);
        }
        Ok(match self.byte()? {
            NIL => Value::Nil,
            TRUE => Value::Bool(true),
            FALSE => Value::Bool(false),
            INT => Value::Int(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            DOUBLE => Value::Double(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            t @ (STRING | ERROR) => {
                let n = self.varint()?;
                let s = std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::BadUtf8)?.to_string();
                if t == STRING { Value::String(s) } else { Value::Error(s) }
            }
            BYTES => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            ARRAY => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            MAP => {
                let n = self.count()?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.value(depth + 1)?;
                    entries.push((k, self.value(depth + 1)?));
                }
                Value::Map(entries)
            }
            t => return Err(CodecError::UnknownTag(t)),
        })
    }
}

pub fn decode(buf: &[u8]) -> Result<Value, CodecError> {
    let mut r = Reader { buf, pos: 0 };
    let v = r.value(0)?;
    if r.pos != buf.len() {
        return Err(CodecError::Trailing(buf.len() - r.pos));
    }
    Ok(v)
}
