//! Capture: inside the command that changed a hash (a keyspace event, with the server
//! locked), the full row after the change is appended to the recipe's stream. The XADD
//! runs in the same atomic step as the write, so the AOF and replicas get both or neither.
//!
//! Flushes and swaps of databases send no per-key events: what they mean for a recipe is
//! gathered with `FlushWork` and recorded through the same streams (see `src/recipes.rs`).

use crate::change::{entry_fields, is_stream_of, stream_key, Op};
use crate::spec::Spec;
use engine::{LockedHost, Value};

/// What a keyspace event means for a recipe.
pub fn event_op(event: &str) -> Option<EventOp> {
    Some(match event {
        // `hexpired`: Redis 7.4+ removed expired fields (actively or when a command read
        // them); the hash is read after the removal.
        "hset" | "hincrby" | "hincrbyfloat" | "hdel" | "hexpired" | "move_to" => EventOp::Read,
        "rename_to" | "restore" | "copy_to" => EventOp::Replace,
        "del" | "expired" | "evicted" | "rename_from" | "move_from" => EventOp::Delete,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOp {
    /// Read the hash: an upsert of its fields (nothing if it is gone or not a hash).
    Read,
    /// The key was replaced by a value of any type (RESTORE, COPY, RENAME onto it): an
    /// upsert if it is a hash now, else a delete (a hash replaced by a string, say, is gone).
    Replace,
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
        // Read in place through the host's key access (no command dispatch on the write path).
        EventOp::Read | EventOp::Replace => match locked.read_key(None, key, true) {
            Ok(Some(engine::KeyRecord { key_type, value: Some(Value::Map(m)), .. })) if key_type == "hash" && !m.is_empty() => (Op::Upsert, pairs(m, spec)),
            // Replaced by another type: the hash is gone.
            Ok(Some(r)) if event == EventOp::Replace && r.key_type != "hash" => (Op::Delete, Vec::new()),
            // Gone (the last field was removed: a `del` event follows) or not a hash.
            Ok(_) => return Ok(None),
            Err(e) => return Err(format!("the hash could not be read: {e}")),
        },
    };
    record(locked, spec, op, key, &fields, cluster)
}

/// Appends one change to the stream of `key`.
fn record(locked: &dyn LockedHost, spec: &Spec, op: Op, key: &[u8], fields: &[(Vec<u8>, Vec<u8>)], cluster: bool) -> Result<Option<Captured>, String> {
    let stream = stream_key(&spec.name, key, cluster);
    let rest = entry_fields(op, key, fields);
    let fields: Vec<&[u8]> = rest.iter().map(|v| v.as_slice()).collect();
    match locked.stream_add(&stream, &fields) {
        Ok(id) => Ok(Some(Captured { stream, id })),
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

/// An entry of a recipe's stream as read back: its stream, id and fields.
pub type Entry = (Vec<u8>, String, Vec<(Vec<u8>, Vec<u8>)>);

/// What a flush or a swap of the recipe's database leaves to record, gathered while the
/// data it concerns can still be read (just before a flush, just after a swap), and
/// recorded once the command has returned (`record_work`).
#[derive(Debug, Default)]
pub struct FlushWork {
    /// `onFlush: 'keep'`: the changes not yet applied, put back into the recipe's streams
    /// with their ids, so that a flush never loses a change that was acknowledged.
    pub readd: Vec<Entry>,
    /// `onFlush: 'delete-all'`: the keys whose rows are deleted: every hash under the
    /// prefix, and every key with a change not yet applied (its row may exist already).
    pub deletes: Vec<Vec<u8>>,
    /// `'delete-all'` after SWAPDB: the hashes under the prefix that came into the recipe's
    /// database are captured as upserts, so the target mirrors the database after the swap.
    pub upsert_present: bool,
    /// After SWAPDB: the recipe's streams that moved to the other database, deleted there
    /// (their entries are in `readd` or `deletes`).
    pub stale_streams: Vec<Vec<u8>>,
}

impl FlushWork {
    pub fn is_empty(&self) -> bool {
        self.readd.is_empty() && self.deletes.is_empty() && !self.upsert_present && self.stale_streams.is_empty()
    }
}

/// Every entry of `streams`, in order (read in pages).
pub fn read_entries(locked: &dyn LockedHost, streams: &[Vec<u8>]) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for stream in streams {
        let mut start = "-".to_string();
        let mut exclusive = false;
        loop {
            let page = locked.read_stream(None, stream, &start, exclusive, 10_000).map_err(|e| format!("reading '{}': {e}", String::from_utf8_lossy(stream)))?;
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            exclusive = true;
            let n = page.len();
            for (id, fields) in page {
                let pairs = match fields {
                    Value::Map(m) => m.into_iter().filter_map(|(k, v)| Some((k.as_bytes()?.into_owned(), v.as_bytes()?.into_owned()))).collect(),
                    _ => Vec::new(),
                };
                out.push((stream.clone(), id, pairs));
            }
            if n < 10_000 {
                break;
            }
        }
    }
    Ok(out)
}

/// The type of `key` (`none` if it does not exist).
fn type_of(locked: &dyn LockedHost, key: &[u8]) -> Vec<u8> {
    locked.call(None, &[b"TYPE", key]).ok().and_then(|v| v.as_bytes().map(|b| b.into_owned())).unwrap_or_default()
}

/// The hashes of the recipe (under its prefix, with a primary key) in the locked database.
pub fn hash_keys(locked: &dyn LockedHost, spec: &Spec) -> Result<Vec<Vec<u8>>, String> {
    let pattern = engine::prefix_pattern(&spec.prefix);
    let mut out = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let reply = locked.call(None, &[b"SCAN", &cursor, b"MATCH", &pattern, b"COUNT", b"1000", b"TYPE", b"hash"]).map_err(|e| format!("SCAN: {e}"))?;
        let Value::Array(mut parts) = reply else { return Err(format!("SCAN answered {reply:?}")) };
        if parts.len() != 2 {
            return Err("SCAN answered an unexpected reply".into());
        }
        if let Value::Array(keys) = parts.pop().unwrap_or(Value::Nil) {
            out.extend(keys.into_iter().filter_map(|k| k.as_bytes().map(|b| b.into_owned())).filter(|k| spec.primary_key(k).is_some()));
        }
        cursor = parts.pop().and_then(|c| c.as_bytes().map(|b| b.into_owned())).unwrap_or_else(|| b"0".to_vec());
        if cursor == b"0" {
            break;
        }
    }
    Ok(out)
}

/// What a flush or swap means for the recipe, read from the database that holds the data
/// it concerns (the flushed one before the flush; the other one after a swap): its
/// changes not yet applied (in `streams`) and, for `'delete-all'`, its hashes.
pub fn gather(locked: &dyn LockedHost, spec: &Spec, streams: &[Vec<u8>], delete_all: bool, swapped: bool) -> Result<FlushWork, String> {
    let streams: Vec<Vec<u8>> = streams.iter().filter(|s| is_stream_of(&spec.name, s)).cloned().collect();
    let entries = read_entries(locked, &streams)?;
    let mut work = FlushWork { upsert_present: swapped && delete_all, ..Default::default() };
    if swapped {
        // The streams that moved with the data: those that exist there.
        for s in &streams {
            if type_of(locked, s) == b"stream" {
                work.stale_streams.push(s.clone());
            }
        }
    }
    if delete_all {
        let mut seen = std::collections::HashSet::new();
        let pending = entries.iter().filter_map(|(_, _, f)| f.iter().find(|(k, _)| k == b"key").map(|(_, v)| v.clone()));
        for key in hash_keys(locked, spec)?.into_iter().chain(pending) {
            if seen.insert(key.clone()) {
                work.deletes.push(key);
            }
        }
    } else {
        work.readd = entries;
    }
    Ok(work)
}

/// What `record_work` did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Changes captured (deletes and upserts).
    pub captured: Vec<Captured>,
    /// Streams entries were put back into.
    pub streams: Vec<Vec<u8>>,
    pub errors: Vec<String>,
}

/// Records `work` in the recipe's (locked) database, after the flush or swap: the entries
/// put back first, with their ids (a stream a flush emptied takes them; one that holds
/// them already, as after DEBUG RELOAD, refuses them and keeps its own), then the deletes
/// (not of a key that is a hash again by now: its own change follows), then the upserts.
pub fn record_work(locked: &dyn LockedHost, spec: &Spec, work: &FlushWork, cluster: bool) -> Recorded {
    let mut out = Recorded::default();
    for (stream, id, fields) in &work.readd {
        let mut args: Vec<&[u8]> = vec![b"XADD", stream, id.as_bytes()];
        for (k, v) in fields {
            args.push(k);
            args.push(v);
        }
        let mut r = locked.call(None, &args);
        if matches!(&r, Ok(Value::Error(e)) | Err(engine::HostError::Command(e)) if e.contains("equal or smaller")) {
            // The entry is there already (nothing was flushed, as with DEBUG RELOAD): kept.
            // Else the stream holds later entries (one of the recipe's name came in with a
            // swap): the change goes after them.
            let there = matches!(locked.call(None, &[b"XRANGE", stream, id.as_bytes(), id.as_bytes()]), Ok(Value::Array(ref a)) if !a.is_empty());
            if there {
                continue;
            }
            args[2] = b"*";
            r = locked.call(None, &args);
        }
        match r {
            Ok(Value::Error(e)) | Err(engine::HostError::Command(e)) => out.errors.push(format!("putting entry {id} back into '{}': {e}", String::from_utf8_lossy(stream))),
            Err(e) => out.errors.push(format!("putting entry {id} back into '{}': {e}", String::from_utf8_lossy(stream))),
            Ok(_) => {
                if !out.streams.contains(stream) {
                    out.streams.push(stream.clone());
                }
            }
        }
    }
    let is_hash = |key: &[u8]| type_of(locked, key) == b"hash";
    let present = if work.upsert_present {
        match hash_keys(locked, spec) {
            Ok(keys) => keys,
            Err(e) => {
                out.errors.push(e);
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let mut put = |r: Result<Option<Captured>, String>| match r {
        Ok(Some(c)) => out.captured.push(c),
        Ok(None) => {}
        Err(e) => out.errors.push(e),
    };
    for key in &work.deletes {
        if !is_hash(key) {
            put(record(locked, spec, Op::Delete, key, &[], cluster));
        }
    }
    for key in &present {
        put(capture(locked, spec, EventOp::Read, key, cluster));
    }
    out
}

/// Deletes the streams a swap left in the other (locked) database.
pub fn drop_streams(locked: &dyn LockedHost, streams: &[Vec<u8>]) -> Vec<String> {
    let mut errors = Vec::new();
    for s in streams {
        if let Ok(Value::Error(e)) | Err(engine::HostError::Command(e)) = locked.call(None, &[b"DEL", s]) {
            errors.push(format!("deleting '{}': {e}", String::from_utf8_lossy(s)));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::MemoryHost;
    use engine::Host;

    fn spec(on_flush: &str) -> Spec {
        let target = Value::Map(vec![(Value::from("kind"), Value::from("sqlite")), (Value::from("connection"), Value::from("c")), (Value::from("table"), Value::from("t"))]);
        let options = Value::Map(vec![(Value::from("name"), Value::from("users")), (Value::from("prefix"), Value::from("user:")), (Value::from("target"), target), (Value::from("onFlush"), Value::from(on_flush))]);
        Spec::parse("writeBehind", &options).unwrap()
    }

    /// The stream as `op key` words, one entry per item.
    fn entries(h: &MemoryHost) -> Vec<String> {
        let l = h.lock(0);
        read_entries(&*l, &[b"rg:wb:users".to_vec()])
            .unwrap()
            .into_iter()
            .map(|(_, _, f)| f.iter().take(2).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn a_hash_replaced_by_another_type_is_a_delete() {
        let h = MemoryHost::new();
        let s = spec("keep");
        h.cmd(&["HSET", "user:1", "name", "a"]).unwrap();
        h.cmd(&["SET", "user:2", "x"]).unwrap();
        let l = h.lock(0);
        assert!(capture(&*l, &s, EventOp::Replace, b"user:1", false).unwrap().is_some());
        assert!(capture(&*l, &s, EventOp::Replace, b"user:2", false).unwrap().is_some());
        // A plain hash event on a key that is not a hash records nothing.
        assert_eq!(capture(&*l, &s, EventOp::Read, b"user:2", false).unwrap(), None);
        drop(l);
        assert_eq!(entries(&h), ["u user:1", "d user:2"]);
        assert_eq!(event_op("set"), None);
        assert_eq!(event_op("copy_to"), Some(EventOp::Replace));
        assert_eq!(event_op("hexpired"), Some(EventOp::Read));
    }

    #[test]
    fn keep_puts_back_the_changes_a_flush_removed_with_their_ids() {
        let h = MemoryHost::new();
        let s = spec("keep");
        h.cmd(&["XADD", "rg:wb:users", "5-1", "op", "u", "key", "user:1", "name", "a"]).unwrap();
        h.cmd(&["XADD", "rg:wb:users", "6-0", "op", "d", "key", "user:2"]).unwrap();
        let work = gather(&*h.lock(0), &s, &[b"rg:wb:users".to_vec(), b"rg:wb:other".to_vec()], false, false).unwrap();
        assert!(work.deletes.is_empty() && work.readd.len() == 2);
        h.cmd(&["FLUSHALL"]).unwrap();
        let done = record_work(&*h.lock(0), &s, &work, false);
        assert!(done.errors.is_empty() && done.captured.is_empty(), "{done:?}");
        let ids: Vec<String> = read_entries(&*h.lock(0), &[b"rg:wb:users".to_vec()]).unwrap().into_iter().map(|(_, id, _)| id).collect();
        assert_eq!(ids, ["5-1", "6-0"]);
        // Put back into a stream that holds them already (nothing was flushed): refused
        // quietly, nothing doubled.
        let done = record_work(&*h.lock(0), &s, &work, false);
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(entries(&h).len(), 2);
        // Into a stream that holds later entries of its own: after them.
        h.cmd(&["FLUSHALL"]).unwrap();
        h.cmd(&["XADD", "rg:wb:users", "9-0", "op", "u", "key", "user:9", "name", "z"]).unwrap();
        let done = record_work(&*h.lock(0), &s, &work, false);
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(entries(&h), ["u user:9", "u user:1", "d user:2"]);
    }

    #[test]
    fn delete_all_deletes_every_hash_and_every_pending_key_once() {
        let h = MemoryHost::new();
        let s = spec("delete-all");
        for k in ["user:1", "user:2", "other:9"] {
            h.cmd(&["HSET", k, "name", "a"]).unwrap();
        }
        h.cmd(&["XADD", "rg:wb:users", "5-0", "op", "d", "key", "user:3"]).unwrap();
        h.cmd(&["XADD", "rg:wb:users", "6-0", "op", "u", "key", "user:1", "name", "a"]).unwrap();
        let work = gather(&*h.lock(0), &s, &[b"rg:wb:users".to_vec()], true, false).unwrap();
        assert_eq!(work.deletes, [b"user:1".to_vec(), b"user:2".to_vec(), b"user:3".to_vec()]);
        assert!(work.readd.is_empty());
        h.cmd(&["FLUSHALL"]).unwrap();
        // Written again before the deletes are recorded: its own change follows.
        h.cmd(&["HSET", "user:2", "name", "b"]).unwrap();
        let done = record_work(&*h.lock(0), &s, &work, false);
        assert_eq!(done.captured.len(), 2);
        assert_eq!(entries(&h), ["d user:1", "d user:3"]);
    }
}
