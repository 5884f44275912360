//! Conversions between Redis replies and `engine::Value`, both ways.

use engine::Value;
use redis_module::{raw, CallReply, CallResult, Context, ErrorReply};
use std::ffi::CString;
use std::os::raw::c_char;

/// Replies with a value. Maps keep their order (RESP3 map, or a flat array on RESP2);
/// doubles are RESP3 doubles (bulk strings on RESP2); strings are binary safe.
pub fn reply(ctx: &Context, v: &Value) {
    let c = ctx.ctx;
    // SAFETY: `c` is the live context of the command (or blocked-client reply callback)
    // being handled on the main thread; the Reply* functions only append to its reply.
    unsafe {
        match v {
            Value::Nil => {
                raw::RedisModule_ReplyWithNull.unwrap()(c);
            }
            Value::Bool(b) => {
                raw::RedisModule_ReplyWithBool.unwrap()(c, *b as i32);
            }
            Value::Int(i) => {
                raw::RedisModule_ReplyWithLongLong.unwrap()(c, *i);
            }
            Value::Double(d) => {
                // Lua's 0/0 is a NaN with the sign bit set, which Redis would print as
                // `-nan`; RESP3 only has `nan`.
                let d = if d.is_nan() { f64::NAN } else { *d };
                raw::RedisModule_ReplyWithDouble.unwrap()(c, d);
            }
            Value::String(s) => bytes(ctx, s.as_bytes()),
            Value::Bytes(b) => bytes(ctx, b),
            Value::Array(items) => {
                raw::RedisModule_ReplyWithArray.unwrap()(c, items.len() as _);
                for i in items {
                    reply(ctx, i);
                }
            }
            Value::Map(entries) => {
                raw::RedisModule_ReplyWithMap.unwrap()(c, entries.len() as _);
                for (k, v) in entries {
                    reply(ctx, k);
                    reply(ctx, v);
                }
            }
            Value::Error(e) => error(ctx, e),
            Value::Function(_) | Value::Object(_) => bytes(ctx, v.to_string().as_bytes()),
        }
    }
}

fn bytes(ctx: &Context, b: &[u8]) {
    // SAFETY: see `reply`; the buffer is copied by Redis.
    unsafe {
        raw::RedisModule_ReplyWithStringBuffer.unwrap()(ctx.ctx, b.as_ptr() as *const c_char, b.len());
    }
}

/// Replies with an error. A message without an error code gets `ERR `; line breaks,
/// which would break the protocol, become spaces.
pub fn error(ctx: &Context, msg: &str) {
    let clean: String = msg.chars().map(|ch| if ch == '\r' || ch == '\n' { ' ' } else { ch }).filter(|ch| *ch != '\0').collect();
    let has_code = clean.split(' ').next().is_some_and(|w| !w.is_empty() && w.chars().all(|ch| ch.is_ascii_uppercase()));
    let text = if has_code { clean } else { format!("ERR {clean}") };
    let c = CString::new(text).unwrap_or_else(|_| CString::new("ERR error").expect("static"));
    // SAFETY: see `reply`; `c` is NUL-terminated and outlives the call.
    unsafe {
        raw::RedisModule_ReplyWithError.unwrap()(ctx.ctx, c.as_ptr());
    }
}

/// Converts the result of `call_ext` (RESP3) to a Value; an error reply becomes Err.
pub fn from_call(r: &CallResult) -> Result<Value, String> {
    match r {
        Ok(reply) => Ok(from_reply(reply)),
        Err(e) => Err(error_text(e)),
    }
}

fn error_text(e: &ErrorReply) -> String {
    String::from_utf8_lossy(e.as_bytes()).into_owned()
}

fn from_reply(r: &CallReply) -> Value {
    match r {
        CallReply::Null(_) => Value::Nil,
        CallReply::I64(i) => Value::Int(i.to_i64()),
        CallReply::Bool(b) => Value::Bool(b.to_bool()),
        CallReply::Double(d) => Value::Double(d.to_double()),
        CallReply::BigNumber(b) => Value::String(b.to_string().unwrap_or_default()),
        CallReply::String(s) => Value::from_bytes(s.as_bytes().to_vec()),
        CallReply::VerbatimString(v) => v.as_parts().map(|(_, b)| Value::from_bytes(b.to_vec())).unwrap_or(Value::Nil),
        CallReply::Array(a) => Value::Array(a.iter().map(|x| from_item(&x)).collect()),
        CallReply::Set(s) => Value::Array(s.iter().map(|x| from_item(&x)).collect()),
        CallReply::Map(m) => Value::Map(m.iter().map(|(k, v)| (from_item(&k), from_item(&v))).collect()),
        CallReply::Unknown => Value::Nil,
    }
}

fn from_item(r: &CallResult) -> Value {
    match r {
        Ok(reply) => from_reply(reply),
        Err(e) => Value::Error(error_text(e)),
    }
}
