//! Capture: inside the command that changed a hash (a keyspace event, with the server
//! locked), the full row after the change is appended to the recipe's stream. The XADD
//! runs in the same atomic step as the write, so the AOF and replicas get both or neither.

use crate::change::{entry_fields, stream_key, Op};
use crate::spec::Spec;
use engine::{LockedHost, Value};

/// What a keyspace event means for a recipe.
pub fn event_op(event: &str) -> Option<EventOp> {
    Some(match event {
        "hset" | "hincrby" | "hincrbyfloat" | "hdel" | "hexpired" | "rename_to" | "restore" | "copy_to" | "move_to" => EventOp::Read,
        "del" | "expired" | "evicted" | "rename_from" | "move_from" => EventOp::Delete,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// Read the hash: an upsert of its fields (nothing if it is gone or not a hash).
    Read,
    Delete,
}

/// A recorded change: its stream and id.
#[derive(Clone, Debug, PartialEq)]
pub struct Captured {
    pub stream: Vec<u8>,
    pub id: String,
}

/// Records the change that `event` made to `key`, if it is one for this recipe.
pub fn capture(locked: &dyn LockedHost, spec: &Spec, event: EventOp, key: &[u8], cluster: bool) -> Result<Option<Captured>, String> {
    if spec.primary_key(key).is_none() {
        return Ok(None);
    }
    let (op, fields) = match event {
        EventOp::Delete => (Op::Delete, Vec::new()),
        EventOp::Read => match locked.call(None, &[b"HGETALL", key]) {
            Ok(Value::Map(m)) if !m.is_empty() => (Op::Upsert, pairs(m, spec)),
            Ok(Value::Array(a)) if !a.is_empty() => {
                let mut it = a.into_iter();
                let mut m = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    m.push((k, v));
                }
                (Op::Upsert, pairs(m, spec))
            }
            // Gone (the last field was removed: a `del` event follows) or not a hash.
            _ => return Ok(None),
        },
    };
    let stream = stream_key(&spec.name, key, cluster);
    let rest = entry_fields(op, key, &fields);
    let mut args: Vec<&[u8]> = vec![b"XADD", &stream, b"*"];
    args.extend(rest.iter().map(|v| v.as_slice()));
    match locked.call(None, &args) {
        Ok(v @ (Value::String(_) | Value::Bytes(_))) => Ok(Some(Captured { stream, id: v.as_str_lossy().unwrap_or_default() })),
        Ok(Value::Error(e)) => Err(format!("XADD to '{}' failed: {e}", String::from_utf8_lossy(&stream))),
        Ok(other) => Err(format!("XADD to '{}' answered {other:?}", String::from_utf8_lossy(&stream))),
        Err(e) => Err(format!("XADD to '{}' failed: {e}", String::from_utf8_lossy(&stream))),
    }
}

fn pairs(m: Vec<(Value, Value)>, spec: &Spec) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.into_iter()
        .filter_map(|(k, v)| {
            let k = k.as_bytes()?.into_owned();
            let keep = std::str::from_utf8(&k).is_ok_and(|f| spec.keeps_field(f));
            keep.then(|| Some((k, v.as_bytes()?.into_owned()))).flatten()
        })
        .collect()
}
