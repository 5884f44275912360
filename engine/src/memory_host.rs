//! An in-memory `Host`: a small keyspace that speaks the commands the stdlib and tests
//! use, so engine, stdlib and recipes run (and embed) without Redis.

use crate::glob::glob_match;
use crate::{Host, HostError, LockedHost, LogLevel, Value};
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

#[derive(Clone, Debug)]
enum Data {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    List(VecDeque<Vec<u8>>),
    Set(BTreeSet<Vec<u8>>),
    ZSet(Vec<(f64, Vec<u8>)>),
    Stream(Vec<((u64, u64), Vec<(Vec<u8>, Vec<u8>)>)>),
}

#[derive(Default)]
struct Db {
    keys: BTreeMap<Vec<u8>, Data>,
}

#[derive(Default)]
pub struct MemoryHost {
    db: Mutex<Db>,
    /// user -> commands (upper case) the user may not run
    denied: Mutex<HashMap<String, HashSet<String>>>,
    logs: Mutex<Vec<(LogLevel, String)>>,
    shard: String,
}

impl MemoryHost {
    pub fn new() -> MemoryHost {
        MemoryHost { shard: "0000000000000000000000000000000000000000".into(), ..Default::default() }
    }
    /// Forbids `user` to run `command`.
    pub fn deny(&self, user: &str, command: &str) {
        self.denied.lock().entry(user.to_string()).or_default().insert(command.to_ascii_uppercase());
    }
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.lock().clone()
    }
    /// Runs a command outside any script (test setup).
    pub fn cmd(&self, args: &[&str]) -> Result<Value, HostError> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.lock(0).call(None, &a)
    }
}

struct Locked<'a> {
    host: &'a MemoryHost,
    db: std::cell::RefCell<MutexGuard<'a, Db>>,
}

impl Host for MemoryHost {
    /// One keyspace: `db` is ignored.
    fn lock(&self, _db: u32) -> Box<dyn LockedHost + '_> {
        Box::new(Locked { host: self, db: std::cell::RefCell::new(self.db.lock()) })
    }
    fn shard_id(&self) -> String {
        self.shard.clone()
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.lock().push((level, message.to_string()));
    }
}

fn bulk(b: &[u8]) -> Value {
    Value::from_bytes(b.to_vec())
}
fn ok() -> Value {
    Value::String("OK".into())
}
fn wrongtype() -> HostError {
    HostError::Command("WRONGTYPE Operation against a key holding the wrong kind of value".into())
}
fn arity(cmd: &str) -> HostError {
    HostError::Command(format!("ERR wrong number of arguments for '{}' command", cmd.to_ascii_lowercase()))
}
fn int_arg(b: &[u8]) -> Result<i64, HostError> {
    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(|| HostError::Command("ERR value is not an integer or out of range".into()))
}
fn float_arg(b: &[u8]) -> Result<f64, HostError> {
    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or_else(|| HostError::Command("ERR value is not a valid float".into()))
}
fn parse_id(s: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(s).ok()?;
    let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
fn range_index(i: i64, len: usize) -> i64 {
    if i < 0 { len as i64 + i } else { i }
}

impl LockedHost for Locked<'_> {
    fn call(&self, user: Option<&str>, args: &[&[u8]]) -> Result<Value, HostError> {
        let cmd = args.first().map(|c| String::from_utf8_lossy(c).to_ascii_uppercase()).ok_or_else(|| HostError::Command("ERR empty command".into()))?;
        if let Some(u) = user {
            self.permitted(u, args)?;
        }
        exec(&mut self.db.borrow_mut(), &cmd, args)
    }

    /// A user may run every command `deny` did not forbid it.
    fn permitted(&self, user: &str, args: &[&[u8]]) -> Result<(), HostError> {
        let cmd = args.first().map(|c| String::from_utf8_lossy(c).to_ascii_uppercase()).unwrap_or_default();
        if self.host.denied.lock().get(user).is_some_and(|d| d.contains(&cmd)) {
            return Err(HostError::NoPermission(format!("User {user} has no permissions to run the '{}' command", cmd.to_ascii_lowercase())));
        }
        Ok(())
    }
}

fn exec(db: &mut Db, cmd: &str, a: &[&[u8]]) -> Result<Value, HostError> {
    let n = a.len();
    let key = |i: usize| -> Result<Vec<u8>, HostError> { a.get(i).map(|k| k.to_vec()).ok_or_else(|| arity(cmd)) };
    match cmd {
        "PING" => Ok(Value::String("PONG".into())),
        "SET" => {
            if n < 3 { return Err(arity(cmd)); }
            db.keys.insert(key(1)?, Data::Str(a[2].to_vec()));
            Ok(ok())
        }
        "GET" => match db.keys.get(&key(1)?) {
            None => Ok(Value::Nil),
            Some(Data::Str(s)) => Ok(bulk(s)),
            _ => Err(wrongtype()),
        },
        "INCR" | "INCRBY" => {
            let by = if cmd == "INCRBY" { int_arg(a.get(2).ok_or_else(|| arity(cmd))?)? } else { 1 };
            let k = key(1)?;
            let cur = match db.keys.get(&k) {
                None => 0,
                Some(Data::Str(s)) => int_arg(s)?,
                _ => return Err(wrongtype()),
            };
            let v = cur + by;
            db.keys.insert(k, Data::Str(v.to_string().into_bytes()));
            Ok(Value::Int(v))
        }
        "DEL" | "UNLINK" => {
            if n < 2 { return Err(arity(cmd)); }
            Ok(Value::Int(a[1..].iter().filter(|k| db.keys.remove(**k).is_some()).count() as i64))
        }
        "EXISTS" => Ok(Value::Int(a[1..].iter().filter(|k| db.keys.contains_key(**k)).count() as i64)),
        "DBSIZE" => Ok(Value::Int(db.keys.len() as i64)),
        "FLUSHALL" | "FLUSHDB" => {
            db.keys.clear();
            Ok(ok())
        }
        "TYPE" => Ok(Value::String(
            match db.keys.get(&key(1)?) {
                None => "none",
                Some(Data::Str(_)) => "string",
                Some(Data::Hash(_)) => "hash",
                Some(Data::List(_)) => "list",
                Some(Data::Set(_)) => "set",
                Some(Data::ZSet(_)) => "zset",
                Some(Data::Stream(_)) => "stream",
            }
            .into(),
        )),
        "HSET" => {
            if n < 4 || n % 2 != 0 { return Err(arity(cmd)); }
            let e = db.keys.entry(key(1)?).or_insert_with(|| Data::Hash(BTreeMap::new()));
            let Data::Hash(h) = e else { return Err(wrongtype()) };
            let mut added = 0;
            for p in a[2..].chunks(2) {
                if h.insert(p[0].to_vec(), p[1].to_vec()).is_none() {
                    added += 1;
                }
            }
            Ok(Value::Int(added))
        }
        "HGET" => match db.keys.get(&key(1)?) {
            None => Ok(Value::Nil),
            Some(Data::Hash(h)) => Ok(h.get(a.get(2).copied().unwrap_or_default()).map(|v| bulk(v)).unwrap_or(Value::Nil)),
            _ => Err(wrongtype()),
        },
        "HGETALL" => match db.keys.get(&key(1)?) {
            None => Ok(Value::Array(vec![])),
            Some(Data::Hash(h)) => Ok(Value::Array(h.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())),
            _ => Err(wrongtype()),
        },
        "LPUSH" | "RPUSH" => {
            if n < 3 { return Err(arity(cmd)); }
            let e = db.keys.entry(key(1)?).or_insert_with(|| Data::List(VecDeque::new()));
            let Data::List(l) = e else { return Err(wrongtype()) };
            for v in &a[2..] {
                if cmd == "LPUSH" { l.push_front(v.to_vec()) } else { l.push_back(v.to_vec()) }
            }
            Ok(Value::Int(l.len() as i64))
        }
        "LRANGE" => match db.keys.get(&key(1)?) {
            None => Ok(Value::Array(vec![])),
            Some(Data::List(l)) => {
                let (s, e) = (range_index(int_arg(a[2])?, l.len()).max(0), range_index(int_arg(a[3])?, l.len()).min(l.len() as i64 - 1));
                Ok(Value::Array(if s > e { vec![] } else { l.range(s as usize..=e as usize).map(|v| bulk(v)).collect() }))
            }
            _ => Err(wrongtype()),
        },
        "SADD" => {
            if n < 3 { return Err(arity(cmd)); }
            let e = db.keys.entry(key(1)?).or_insert_with(|| Data::Set(BTreeSet::new()));
            let Data::Set(s) = e else { return Err(wrongtype()) };
            Ok(Value::Int(a[2..].iter().filter(|m| s.insert(m.to_vec())).count() as i64))
        }
        "SMEMBERS" => match db.keys.get(&key(1)?) {
            None => Ok(Value::Array(vec![])),
            Some(Data::Set(s)) => Ok(Value::Array(s.iter().map(|m| bulk(m)).collect())),
            _ => Err(wrongtype()),
        },
        "ZADD" => {
            if n < 4 || n % 2 != 0 { return Err(arity(cmd)); }
            let e = db.keys.entry(key(1)?).or_insert_with(|| Data::ZSet(Vec::new()));
            let Data::ZSet(z) = e else { return Err(wrongtype()) };
            let mut added = 0;
            for p in a[2..].chunks(2) {
                let score = float_arg(p[0])?;
                match z.iter_mut().find(|(_, m)| m == p[1]) {
                    Some(entry) => entry.0 = score,
                    None => {
                        z.push((score, p[1].to_vec()));
                        added += 1;
                    }
                }
            }
            z.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal).then_with(|| x.1.cmp(&y.1)));
            Ok(Value::Int(added))
        }
        "ZRANGE" => match db.keys.get(&key(1)?) {
            None => Ok(Value::Array(vec![])),
            Some(Data::ZSet(z)) => {
                let with = a.get(4).is_some_and(|w| w.eq_ignore_ascii_case(b"WITHSCORES"));
                let (s, e) = (range_index(int_arg(a[2])?, z.len()).max(0), range_index(int_arg(a[3])?, z.len()).min(z.len() as i64 - 1));
                let mut out = Vec::new();
                if s <= e {
                    for (score, m) in &z[s as usize..=e as usize] {
                        out.push(bulk(m));
                        if with {
                            out.push(Value::String(crate::format_double(*score)));
                        }
                    }
                }
                Ok(Value::Array(out))
            }
            _ => Err(wrongtype()),
        },
        "XADD" => {
            if n < 5 || n % 2 == 0 { return Err(arity(cmd)); }
            let e = db.keys.entry(key(1)?).or_insert_with(|| Data::Stream(Vec::new()));
            let Data::Stream(s) = e else { return Err(wrongtype()) };
            let last = s.last().map(|(id, _)| *id).unwrap_or((0, 0));
            let id = if a[2] == b"*" {
                let ms = crate::execution::now_ms();
                if ms > last.0 { (ms, 0) } else { (last.0, last.1 + 1) }
            } else {
                let id = parse_id(a[2]).ok_or_else(|| HostError::Command("ERR Invalid stream ID specified as stream command argument".into()))?;
                if id <= last {
                    return Err(HostError::Command("ERR The ID specified in XADD is equal or smaller than the target stream top item".into()));
                }
                id
            };
            s.push((id, a[3..].chunks(2).map(|p| (p[0].to_vec(), p[1].to_vec())).collect()));
            Ok(Value::String(format!("{}-{}", id.0, id.1)))
        }
        "XRANGE" => {
            if n < 4 { return Err(arity(cmd)); }
            let Some(d) = db.keys.get(&key(1)?) else { return Ok(Value::Array(vec![])) };
            let Data::Stream(s) = d else { return Err(wrongtype()) };
            let (excl, start) = match a[2].strip_prefix(b"(") { Some(r) => (true, r), None => (false, a[2]) };
            let start = if start == b"-" { (0, 0) } else { parse_id(start).ok_or_else(|| HostError::Command("ERR Invalid stream ID".into()))? };
            let end = if a[3] == b"+" { (u64::MAX, u64::MAX) } else { parse_id(a[3]).ok_or_else(|| HostError::Command("ERR Invalid stream ID".into()))? };
            let count = if a.get(4).is_some_and(|c| c.eq_ignore_ascii_case(b"COUNT")) { int_arg(a.get(5).ok_or_else(|| arity(cmd))?)? as usize } else { usize::MAX };
            Ok(Value::Array(
                s.iter()
                    .filter(|(id, _)| (if excl { *id > start } else { *id >= start }) && *id <= end)
                    .take(count)
                    .map(|(id, f)| Value::Array(vec![Value::String(format!("{}-{}", id.0, id.1)), Value::Array(f.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())]))
                    .collect(),
            ))
        }
        "KEYS" => {
            let pat = a.get(1).ok_or_else(|| arity(cmd))?;
            Ok(Value::Array(db.keys.keys().filter(|k| glob_match(pat, k)).map(|k| bulk(k)).collect()))
        }
        "SCAN" => {
            // The cursor is an index into the sorted key list.
            let cursor = int_arg(a.get(1).ok_or_else(|| arity(cmd))?)?.max(0) as usize;
            let mut pattern: &[u8] = b"*";
            let mut count = 10usize;
            let mut i = 2;
            while i + 1 < n {
                if a[i].eq_ignore_ascii_case(b"MATCH") {
                    pattern = a[i + 1];
                } else if a[i].eq_ignore_ascii_case(b"COUNT") {
                    count = int_arg(a[i + 1])?.max(1) as usize;
                }
                i += 2;
            }
            let keys: Vec<&Vec<u8>> = db.keys.keys().skip(cursor).take(count).collect();
            let next = if cursor + keys.len() >= db.keys.len() { 0 } else { cursor + keys.len() };
            Ok(Value::Array(vec![
                Value::String(next.to_string()),
                Value::Array(keys.into_iter().filter(|k| glob_match(pattern, k)).map(|k| bulk(k)).collect()),
            ]))
        }
        _ => Err(HostError::Command(format!("ERR unknown command '{}'", cmd.to_ascii_lowercase()))),
    }
}

