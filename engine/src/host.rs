//! The `Host` trait: what scripts can do to their environment. The Redis module implements
//! it with the Module API; `MemoryHost` implements it in memory for tests and embedding.

use crate::{HostError, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Verbose,
    Notice,
    Warning,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<LogLevel> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Some(LogLevel::Debug),
            "verbose" => Some(LogLevel::Verbose),
            "notice" | "info" => Some(LogLevel::Notice),
            "warning" | "warn" => Some(LogLevel::Warning),
            _ => None,
        }
    }
}

/// The environment of scripts. Shared by all threads.
pub trait Host: Send + Sync {
    /// Takes the data lock (Redis's GIL) with database `db` selected. Everything done
    /// through the guard is atomic with respect to other clients. The lock is not
    /// re-entrant: callers hold at most one.
    fn lock(&self, db: u32) -> Box<dyn LockedHost + '_>;
    /// This shard's id (40 hex characters on Redis).
    fn shard_id(&self) -> String;
    fn log(&self, level: LogLevel, message: &str);
    /// True for a host that runs inside the command or event that called the script (sync
    /// triggers, hooks): it is already locked and bound to that thread, so nothing may hand
    /// it to another thread (`run()` is refused there).
    fn in_place(&self) -> bool {
        false
    }
    /// The cluster this shard is part of, as last refreshed; None when it is not a cluster
    /// node (a single Redis, or an embedding program).
    fn topology(&self) -> Option<std::sync::Arc<crate::cluster::Topology>> {
        None
    }
}

/// What can be done while holding the data lock.
pub trait LockedHost {
    /// Runs a command. With `user`, the command is first checked against that ACL user's
    /// permissions (command and keys) and refused with `HostError::NoPermission`.
    fn call(&self, user: Option<&str>, args: &[&[u8]]) -> Result<Value, HostError>;

    /// Would `user` be allowed to run this command (command, subcommand and keys), without
    /// running it? Refusals are `HostError::NoPermission`. Hosts without users allow all.
    fn permitted(&self, _user: &str, _args: &[&[u8]]) -> Result<(), HostError> {
        Ok(())
    }

    /// Sends a command to replicas and the AOF without running it here (how state that is
    /// not in the keyspace, like sessions, reaches them). Hosts without replicas ignore it.
    fn replicate(&self, _args: &[&[u8]]) {}

    /// False on a replica: triggers and stream consumers act only on a primary.
    fn is_primary(&self) -> bool {
        true
    }

    /// Sends a coordinator message to the shard (node id) `to`. Only cluster hosts can.
    fn send(&self, to: &str, _payload: &[u8]) -> Result<(), HostError> {
        Err(HostError::Other(format!("cannot send to shard '{to}': this is not a cluster node")))
    }

    /// Reads one key (see the free function `read_key`, which this defaults to: commands
    /// run as `user`). A host may read its data directly instead, giving the same records
    /// and refusing what `user` could not read with the commands.
    fn read_key(&self, user: Option<&str>, key: &[u8], read_value: bool) -> Result<Option<KeyRecord>, HostError> {
        self::read_key(self, user, key, read_value)
    }

    /// Up to `count` entries of `stream` from `start` (`-` for the first; after it if
    /// `exclusive`), as `XRANGE` run as `user` gives them: (id, map of fields). A missing
    /// stream has none. The default runs XRANGE; a host may read the stream directly.
    fn read_stream(&self, user: Option<&str>, stream: &[u8], start: &str, exclusive: bool, count: usize) -> Result<Vec<(String, Value)>, HostError> {
        crate::executor::read_stream(self, user, stream, start, exclusive, count)
    }

    /// Appends an entry (`fields`: field, value, ...) to `stream` with an id the host
    /// assigns, as `XADD stream * fields...` would, replicated with that id; returns the
    /// id. The default runs XADD; a host may append directly.
    fn stream_add(&self, stream: &[u8], fields: &[&[u8]]) -> Result<String, HostError> {
        let mut args: Vec<&[u8]> = vec![b"XADD", stream, b"*"];
        args.extend_from_slice(fields);
        match self.call(None, &args)? {
            v @ (Value::String(_) | Value::Bytes(_)) => Ok(v.as_str_lossy().unwrap_or_default()),
            Value::Error(e) => Err(HostError::Command(e)),
            other => Err(HostError::Other(format!("XADD answered {other:?}"))),
        }
    }

    /// One slice of a walk over the keys matching `pattern` (a SCAN MATCH glob): reads
    /// keys from where `scan` stands until `budget` is spent or the keyspace is done
    /// (`scan.done`), and returns them, or for each key `user` may not read (or that could
    /// not be read) the key and the error. A key may come twice in one walk (SCAN's
    /// guarantee). The default runs SCAN and reads each key with commands as `user`.
    fn scan_keys(&self, user: Option<&str>, scan: &mut KeyScan, pattern: &[u8], read_value: bool, budget: ScanBudget) -> Result<Vec<Result<KeyRecord, (Vec<u8>, HostError)>>, HostError> {
        let (next, keys) = self::scan(self, user, scan.cursor, pattern, budget.keys)?;
        scan.cursor = next;
        scan.done = next == 0;
        Ok(keys
            .into_iter()
            .filter_map(|k| match self.read_key(user, &k, read_value) {
                Ok(r) => r.map(Ok),
                Err(e) => Some(Err((k, e))),
            })
            .collect())
    }
}

/// Where a walk over the keyspace stands between two lock acquisitions.
#[derive(Default)]
pub struct KeyScan {
    /// SCAN's cursor (the default `scan_keys`).
    pub cursor: u64,
    /// A host's own cursor (the Redis host keeps its module scan cursor here).
    pub native: Option<Box<dyn std::any::Any + Send>>,
    pub done: bool,
}

/// How much of the keyspace one lock acquisition may read: at most `keys` keys, and
/// stop once `until` has passed (after the key being read).
#[derive(Clone, Copy, Debug)]
pub struct ScanBudget {
    pub keys: usize,
    pub until: std::time::Instant,
}

/// A host with no data: scripts rebuilt while the server loads (or on a replica applying
/// the primary's sessions) must not run commands at their top level.
pub struct NoDataHost {
    pub shard_id: String,
}

struct NoData;

impl LockedHost for NoData {
    fn call(&self, _user: Option<&str>, args: &[&[u8]]) -> Result<Value, HostError> {
        Err(HostError::Other(format!(
            "'{}' cannot run while a session is being restored: a registering script's top-level code must not call execute()",
            String::from_utf8_lossy(args.first().copied().unwrap_or_default())
        )))
    }
}

impl Host for NoDataHost {
    fn lock(&self, _db: u32) -> Box<dyn LockedHost + '_> {
        Box::new(NoData)
    }
    fn shard_id(&self) -> String {
        self.shard_id.clone()
    }
    fn log(&self, _level: LogLevel, _message: &str) {}
}

/// A key with its type and (optionally) its value, as the KeysReader produces it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub key: Vec<u8>,
    pub key_type: String,
    pub value: Option<Value>,
}

impl KeyRecord {
    pub fn into_value(self) -> Value {
        let mut m = vec![
            (Value::str("key"), Value::from_bytes(self.key)),
            (Value::str("type"), Value::String(self.key_type)),
        ];
        if let Some(v) = self.value {
            m.push((Value::str("value"), v));
        }
        Value::Map(m)
    }
}

fn call_str<H: LockedHost + ?Sized>(h: &H, user: Option<&str>, args: &[&[u8]]) -> Result<Value, HostError> {
    h.call(user, args)
}

fn pairs_to_map(v: Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            Value::Map(out)
        }
        other => other,
    }
}

/// Reads one key with its type, and its value if `read_value`, with the permissions of
/// `user` (a key the user may not read is a `NoPermission` error). `None` if the key is gone.
/// Values per type: string -> string; hash -> map; list -> array; set -> array (sorted);
/// zset -> array of [member, score] by score; stream -> array of [id, {field: value}].
pub fn read_key<H: LockedHost + ?Sized>(h: &H, user: Option<&str>, key: &[u8], read_value: bool) -> Result<Option<KeyRecord>, HostError> {
    let call_str = |h: &H, args: &[&[u8]]| call_str(h, user, args);
    let t = match call_str(h, &[b"TYPE", key])? {
        Value::String(s) => s,
        other => other.as_str_lossy().unwrap_or_default(),
    };
    if t == "none" {
        return Ok(None);
    }
    let value = if read_value {
        Some(match t.as_str() {
            "string" => call_str(h, &[b"GET", key])?,
            "hash" => pairs_to_map(call_str(h, &[b"HGETALL", key])?),
            "list" => call_str(h, &[b"LRANGE", key, b"0", b"-1"])?,
            "set" => {
                let mut v = call_str(h, &[b"SMEMBERS", key])?;
                if let Value::Array(items) = &mut v {
                    items.sort_by(|a, b| a.compare(b));
                }
                v
            }
            "zset" => {
                let flat = call_str(h, &[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"])?;
                match flat {
                    Value::Array(items) => {
                        let mut out = Vec::new();
                        let mut it = items.into_iter();
                        while let Some(m) = it.next() {
                            match m {
                                // RESP3 replies already pair member and score.
                                Value::Array(pair) => out.push(Value::Array(normalize_score(pair))),
                                m => {
                                    let s = it.next().unwrap_or(Value::Nil);
                                    out.push(Value::Array(normalize_score(vec![m, s])));
                                }
                            }
                        }
                        Value::Array(out)
                    }
                    other => other,
                }
            }
            "stream" => match call_str(h, &[b"XRANGE", key, b"-", b"+"])? {
                Value::Array(entries) => Value::Array(
                    entries
                        .into_iter()
                        .map(|e| match e {
                            Value::Array(mut parts) if parts.len() == 2 => {
                                let fields = pairs_to_map(parts.pop().unwrap());
                                let id = parts.pop().unwrap();
                                Value::Array(vec![id, fields])
                            }
                            other => other,
                        })
                        .collect(),
                ),
                other => other,
            },
            _ => Value::Nil,
        })
    } else {
        None
    };
    Ok(Some(KeyRecord { key: key.to_vec(), key_type: t, value }))
}

fn normalize_score(mut pair: Vec<Value>) -> Vec<Value> {
    if pair.len() == 2 {
        if let Some(f) = pair[1].as_f64() {
            pair[1] = Value::Double(f);
        }
    }
    pair
}

/// The SCAN MATCH pattern of every key that starts with `prefix`: its glob characters
/// escaped so it matches literally, then `*`.
pub fn prefix_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'*');
    out
}

/// One SCAN step: returns the next cursor and the keys of this step.
pub fn scan<H: LockedHost + ?Sized>(h: &H, user: Option<&str>, cursor: u64, pattern: &[u8], count: usize) -> Result<(u64, Vec<Vec<u8>>), HostError> {
    let c = cursor.to_string();
    let n = count.to_string();
    let reply = call_str(h, user, &[b"SCAN", c.as_bytes(), b"MATCH", pattern, b"COUNT", n.as_bytes()])?;
    match reply {
        Value::Array(mut parts) if parts.len() == 2 => {
            let keys = parts.pop().unwrap();
            let next = parts.pop().unwrap().as_i64().unwrap_or(0) as u64;
            let keys = match keys {
                Value::Array(ks) => ks.into_iter().filter_map(|k| k.as_bytes().map(|b| b.into_owned())).collect(),
                _ => Vec::new(),
            };
            Ok((next, keys))
        }
        other => Err(HostError::Other(format!("unexpected SCAN reply: {other}"))),
    }
}
