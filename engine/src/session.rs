//! Sessions (the scripts that own registrations) and their registrations: what fires
//! them, their steps, and their counters.

use crate::{Step, Value};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a registration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the thread that made the write, inside the command that caused the event: its
    /// writes are part of that command (replicated and in the AOF with it).
    Sync,
    /// On a worker, after the command returned.
    Async,
    /// As `Async` (the difference appears with several shards).
    AsyncLocal,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "sync" => Some(Mode::Sync),
            "async" => Some(Mode::Async),
            "async_local" => Some(Mode::AsyncLocal),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::AsyncLocal => "async_local",
        }
    }
}

/// What a StreamReader registration does when a batch fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPolicy {
    /// Count the failure, move on to the next batch.
    Continue,
    /// Pause the registration (RG.UNPAUSEREGISTRATIONS resumes it from the failed batch).
    Abort,
    /// Run the same batch again after `retry_interval_ms`, until it succeeds.
    Retry,
}

impl FailPolicy {
    pub fn parse(s: &str) -> Option<FailPolicy> {
        match s {
            "continue" => Some(FailPolicy::Continue),
            "abort" => Some(FailPolicy::Abort),
            "retry" => Some(FailPolicy::Retry),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            FailPolicy::Continue => "continue",
            FailPolicy::Abort => "abort",
            FailPolicy::Retry => "retry",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamOptions {
    /// Most entries per run of the steps.
    pub batch: usize,
    /// How long a partial batch may wait to fill (0: run at once).
    pub duration_ms: u64,
    pub on_failed: FailPolicy,
    pub retry_interval_ms: u64,
    /// Trim the processed entries from the stream.
    pub trim: bool,
}

/// What fires a registration.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// Keyspace events on keys starting with `prefix`.
    Keys {
        prefix: Vec<u8>,
        /// Event names (`hset`, `del`, `expired`, ...); None = every event.
        event_types: Option<Vec<String>>,
        /// Key types (`hash`, `string`, ...); None = every type.
        key_types: Option<Vec<String>>,
        read_value: bool,
    },
    /// `RG.TRIGGER <name> [args...]`.
    Command { name: String },
    /// Entries added to streams whose key starts with `prefix`, read in batches.
    Stream { prefix: Vec<u8>, options: StreamOptions },
    /// Calls of an existing command (lower case), optionally only when its first key
    /// argument starts with `prefix`.
    Hook { command: String, prefix: Option<Vec<u8>> },
}

impl Trigger {
    pub fn reader(&self) -> &'static str {
        match self {
            Trigger::Keys { read_value: true, .. } => "KeysReader",
            Trigger::Keys { read_value: false, .. } => "KeysOnlyReader",
            Trigger::Command { .. } => "CommandReader",
            Trigger::Stream { .. } => "StreamReader",
            Trigger::Hook { .. } => "CommandReader",
        }
    }

    /// Does a call of `command` (lower case) with first argument `first` fire this hook?
    pub fn matches_hook(&self, command: &str, first: Option<&[u8]>) -> bool {
        match self {
            Trigger::Hook { command: c, prefix } => c == command && prefix.as_ref().is_none_or(|p| first.is_some_and(|f| f.starts_with(p))),
            _ => false,
        }
    }

    pub fn stream_options(&self) -> Option<&StreamOptions> {
        match self {
            Trigger::Stream { options, .. } => Some(options),
            _ => None,
        }
    }

    pub fn stream_prefix(&self) -> Option<&[u8]> {
        match self {
            Trigger::Stream { prefix, .. } => Some(prefix),
            _ => None,
        }
    }

    /// Does a keyspace event on `key` of type `key_type` fire this trigger?
    pub fn matches_key(&self, event: &str, key: &[u8], key_type: &str) -> bool {
        match self {
            Trigger::Keys { prefix, event_types, key_types, .. } => {
                key.starts_with(prefix)
                    && event_types.as_ref().is_none_or(|e| e.iter().any(|x| x == event))
                    && key_types.as_ref().is_none_or(|t| t.iter().any(|x| x == key_type))
            }
            Trigger::Command { .. } | Trigger::Stream { .. } | Trigger::Hook { .. } => false,
        }
    }

    /// The arguments as `RG.DUMPREGISTRATIONS` shows them.
    pub fn args(&self) -> Value {
        let list = |v: &Option<Vec<String>>| match v {
            None => Value::Nil,
            Some(v) => Value::Array(v.iter().map(|s| Value::String(s.clone())).collect()),
        };
        match self {
            Trigger::Keys { prefix, event_types, key_types, read_value } => Value::Map(vec![
                (Value::str("prefix"), Value::from_bytes(prefix.clone())),
                (Value::str("eventTypes"), list(event_types)),
                (Value::str("keyTypes"), list(key_types)),
                (Value::str("readValue"), Value::Bool(*read_value)),
            ]),
            Trigger::Command { name } => Value::Map(vec![(Value::str("trigger"), Value::String(name.clone()))]),
            Trigger::Hook { command, prefix } => Value::Map(vec![
                (Value::str("hook"), Value::String(command.clone())),
                (Value::str("prefix"), prefix.clone().map(Value::from_bytes).unwrap_or(Value::Nil)),
            ]),
            Trigger::Stream { prefix, options: o } => Value::Map(vec![
                (Value::str("prefix"), Value::from_bytes(prefix.clone())),
                (Value::str("batch"), Value::Int(o.batch as i64)),
                (Value::str("duration"), Value::Int(o.duration_ms as i64)),
                (Value::str("onFailedPolicy"), Value::str(o.on_failed.as_str())),
                (Value::str("onFailedRetryInterval"), Value::Int(o.retry_interval_ms as i64)),
                (Value::str("trimStream"), Value::Bool(o.trim)),
            ]),
        }
    }
}

/// A registration as a script declares it with `register()`.
#[derive(Clone, Debug, PartialEq)]
pub struct RegistrationSpec {
    pub trigger: Trigger,
    pub mode: Mode,
    pub steps: Vec<Step>,
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub triggered: u64,
    pub success: u64,
    pub failures: u64,
    pub aborted: u64,
    pub last_error: Option<String>,
    pub total_duration: Duration,
    pub last_duration: Duration,
}

/// A live registration.
pub struct Registration {
    pub id: String,
    pub session: String,
    /// Position among the session's registrations (matches the order of `register()` calls).
    pub index: usize,
    pub spec: RegistrationSpec,
    pub paused: AtomicBool,
    /// StreamReader registrations: position and state per stream.
    pub consumers: crate::streams::Consumers,
    stats: Mutex<Stats>,
}

impl Registration {
    pub fn stats(&self) -> Stats {
        self.stats.lock().clone()
    }
    pub fn clear_stats(&self) {
        *self.stats.lock() = Stats::default();
    }
    /// Records one firing: `Ok(errors)` with the per-record errors, or the failure.
    pub fn record(&self, duration: Duration, outcome: Result<&[String], &str>, aborted: bool) {
        let mut s = self.stats.lock();
        s.triggered += 1;
        s.last_duration = duration;
        s.total_duration += duration;
        match outcome {
            Ok([]) => s.success += 1,
            Ok(errors) => {
                s.failures += 1;
                s.last_error = errors.last().cloned();
            }
            Err(e) => {
                if aborted {
                    s.aborted += 1;
                } else {
                    s.failures += 1;
                }
                s.last_error = Some(e.to_string());
            }
        }
    }
}

/// What defines a session, enough to build it again anywhere (a restart, a replica): the
/// script and how it was sent, plus what was changed since (registrations removed or paused).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionDef {
    pub id: String,
    pub language: String,
    pub source: String,
    pub args: Vec<Vec<u8>>,
    pub user: Option<String>,
    pub db: u32,
    pub description: Option<String>,
    /// Positions of registrations removed with RG.UNREGISTER.
    pub removed: Vec<usize>,
    /// Positions of paused registrations.
    pub paused: Vec<usize>,
    /// StreamReader positions: (registration position, stream, last processed id).
    pub positions: Vec<(usize, Vec<u8>, String)>,
}

impl SessionDef {
    pub fn of(s: &Session) -> SessionDef {
        let kept: Vec<usize> = s.registrations.iter().map(|r| r.index).collect();
        SessionDef {
            id: s.id.clone(),
            language: s.language.to_string(),
            source: s.source.clone(),
            args: s.args.clone(),
            user: s.user.clone(),
            db: s.db,
            description: s.description.clone(),
            removed: (0..s.declared).filter(|i| !kept.contains(i)).collect(),
            paused: s.registrations.iter().filter(|r| r.paused.load(Ordering::Relaxed)).map(|r| r.index).collect(),
            positions: s.registrations.iter().flat_map(|r| r.consumers.positions().into_iter().map(move |(k, id)| (r.index, k, id))).collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let opt = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Nil);
        let ints = |v: &[usize]| Value::Array(v.iter().map(|i| Value::Int(*i as i64)).collect());
        let v = Value::Map(vec![
            (Value::str("version"), Value::Int(1)),
            (Value::str("id"), Value::String(self.id.clone())),
            (Value::str("language"), Value::String(self.language.clone())),
            (Value::str("source"), Value::String(self.source.clone())),
            (Value::str("args"), Value::Array(self.args.iter().map(|a| Value::Bytes(a.clone())).collect())),
            (Value::str("user"), opt(&self.user)),
            (Value::str("db"), Value::Int(self.db as i64)),
            (Value::str("description"), opt(&self.description)),
            (Value::str("removed"), ints(&self.removed)),
            (Value::str("paused"), ints(&self.paused)),
            (
                Value::str("positions"),
                Value::Array(self.positions.iter().map(|(i, k, id)| Value::Array(vec![Value::Int(*i as i64), Value::Bytes(k.clone()), Value::String(id.clone())])).collect()),
            ),
        ]);
        crate::codec::encode(&v).expect("a session definition is encodable")
    }

    pub fn decode(b: &[u8]) -> Result<SessionDef, String> {
        let v = crate::codec::decode(b).map_err(|e| e.to_string())?;
        let text = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(format!("session definition: '{k}' missing or not a string")),
        };
        let opt = |k: &str| match v.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let ints = |k: &str| match v.get(k) {
            Some(Value::Array(a)) => a.iter().map(|i| i.as_i64().filter(|n| *n >= 0).map(|n| n as usize).ok_or_else(|| format!("session definition: bad '{k}'"))).collect(),
            _ => Err(format!("session definition: '{k}' missing")),
        };
        if v.get("version").and_then(Value::as_i64) != Some(1) {
            return Err("session definition: unknown version".into());
        }
        Ok(SessionDef {
            id: text("id")?,
            language: text("language")?,
            source: text("source")?,
            args: match v.get("args") {
                Some(Value::Array(a)) => a.iter().map(|x| x.as_bytes().map(|b| b.into_owned()).ok_or("session definition: bad 'args'".to_string())).collect::<Result<_, _>>()?,
                _ => return Err("session definition: 'args' missing".into()),
            },
            user: opt("user"),
            db: v.get("db").and_then(Value::as_i64).filter(|d| *d >= 0).ok_or("session definition: bad 'db'")? as u32,
            description: opt("description"),
            removed: ints("removed")?,
            paused: ints("paused")?,
            positions: match v.get("positions") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|p| match p {
                        Value::Array(t) if t.len() == 3 => Ok((
                            t[0].as_i64().filter(|n| *n >= 0).ok_or("session definition: bad position")? as usize,
                            t[1].as_bytes().ok_or("session definition: bad position")?.into_owned(),
                            t[2].as_str_lossy().ok_or("session definition: bad position")?,
                        )),
                        _ => Err("session definition: bad position".to_string()),
                    })
                    .collect::<Result<_, String>>()?,
                _ => Vec::new(),
            },
        })
    }
}

/// A script that owns registrations.
pub struct Session {
    pub id: String,
    pub language: &'static str,
    pub source: String,
    pub args: Vec<Vec<u8>>,
    /// The ACL user whose permissions its triggers run with.
    pub user: Option<String>,
    pub db: u32,
    pub description: Option<String>,
    /// Changes on every upgrade: instances built for an older version are rebuilt.
    pub version: u64,
    /// How many registrations the script declares (some may have been removed since).
    pub declared: usize,
    /// Packages the script imported, as (language, name).
    pub imports: Vec<(String, String)>,
    pub registrations: Vec<Arc<Registration>>,
}

/// What `Sessions::install` may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    No,
    Must,
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session '{0}' already exists: add UPGRADE to replace it")]
    Exists(String),
    #[error("no session '{0}' to upgrade")]
    NoSuchSession(String),
    #[error("no session '{0}'")]
    NotFound(String),
    #[error("no registration '{0}'")]
    NoRegistration(String),
    #[error("a registration for trigger '{0}' already exists (session '{1}')")]
    TriggerTaken(String, String),
    #[error("command '{0}' is already hooked (session '{1}')")]
    HookTaken(String, String),
}

/// Every session of this shard, and an index of their registrations.
#[derive(Default)]
pub struct Sessions {
    map: RwLock<BTreeMap<String, Arc<Session>>>,
    versions: AtomicU64,
    /// Registrations in all sessions; zero lets keyspace events return at once.
    count: AtomicU64,
    /// Hook registrations in all sessions; zero lets the command filter return at once.
    hooks: AtomicU64,
}

impl Sessions {
    /// Installs a session built from `specs` (the script's registrations, in order).
    /// With `Replace::No` an existing session of that id is an error, with `Replace::Must`
    /// a missing one is (UPGRADE), with `Replace::Any` whatever is there is replaced (a
    /// session loaded from RDB, AOF or the primary). A replaced session's registrations
    /// are gone and the new ones live in one step.
    pub fn install(&self, def: &SessionDef, language: &'static str, specs: Vec<RegistrationSpec>, imports: Vec<(String, String)>, replace: Replace) -> Result<Arc<Session>, SessionError> {
        let id = def.id.clone();
        let mut map = self.map.write();
        match (map.contains_key(&id), replace) {
            (true, Replace::No) => return Err(SessionError::Exists(id)),
            (false, Replace::Must) => return Err(SessionError::NoSuchSession(id)),
            _ => {}
        }
        for spec in &specs {
            if let Trigger::Hook { command, .. } = &spec.trigger {
                for other in map.values().filter(|s| s.id != id) {
                    if other.registrations.iter().any(|r| matches!(&r.spec.trigger, Trigger::Hook { command: c, .. } if c == command)) {
                        return Err(SessionError::HookTaken(command.clone(), other.id.clone()));
                    }
                }
            }
            if let Trigger::Command { name } = &spec.trigger {
                for other in map.values().filter(|s| s.id != id) {
                    if other.registrations.iter().any(|r| matches!(&r.spec.trigger, Trigger::Command { name: n } if n == name)) {
                        return Err(SessionError::TriggerTaken(name.clone(), other.id.clone()));
                    }
                }
            }
        }
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let declared = specs.len();
        let registrations: Vec<Arc<Registration>> = specs
            .into_iter()
            .enumerate()
            .filter(|(index, _)| !def.removed.contains(index))
            .map(|(index, spec)| {
                Arc::new(Registration {
                    id: format!("{id}/{index}"),
                    session: id.clone(),
                    index,
                    spec,
                    paused: AtomicBool::new(def.paused.contains(&index)),
                    consumers: Default::default(),
                    stats: Mutex::new(Stats::default()),
                })
            })
            .collect();
        // An upgraded session keeps where its stream consumers were (same position in the
        // script, still a StreamReader): no entry is processed twice or skipped.
        if let Some(old) = map.get(&id) {
            for r in &registrations {
                if let Some(o) = old.registrations.iter().find(|o| o.index == r.index && o.spec.trigger.stream_prefix() == r.spec.trigger.stream_prefix()) {
                    if r.spec.trigger.stream_prefix().is_some() {
                        for (k, pos) in o.consumers.positions() {
                            if let Some(p) = crate::streams::parse_id(&pos) {
                                r.consumers.set_position(&k, p);
                            }
                        }
                    }
                }
            }
        }
        for (index, stream, pos) in &def.positions {
            if let (Some(r), Some(p)) = (registrations.iter().find(|r| r.index == *index), crate::streams::parse_id(pos)) {
                r.consumers.set_position(stream, p);
            }
        }
        let session = Arc::new(Session {
            id: id.clone(),
            language,
            source: def.source.clone(),
            args: def.args.clone(),
            user: def.user.clone(),
            db: def.db,
            description: def.description.clone(),
            version,
            declared,
            imports,
            registrations,
        });
        if let Some(old) = map.insert(id, session.clone()) {
            self.count.fetch_sub(old.registrations.len() as u64, Ordering::Relaxed);
        }
        self.count.fetch_add(session.registrations.len() as u64, Ordering::Relaxed);
        self.hooks.store(Self::count_hooks(&map), Ordering::Relaxed);
        Ok(session)
    }

    pub fn drop_session(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        let mut map = self.map.write();
        let old = map.remove(id).ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        self.count.fetch_sub(old.registrations.len() as u64, Ordering::Relaxed);
        self.hooks.store(Self::count_hooks(&map), Ordering::Relaxed);
        Ok(old)
    }

    /// Drops every session (before loading another state).
    pub fn clear(&self) {
        self.map.write().clear();
        self.count.store(0, Ordering::Relaxed);
        self.hooks.store(0, Ordering::Relaxed);
    }

    /// Removes one registration (its session keeps the others); returns the session.
    pub fn unregister(&self, reg_id: &str) -> Result<Arc<Session>, SessionError> {
        let mut map = self.map.write();
        let session = map
            .values()
            .find(|s| s.registrations.iter().any(|r| r.id == reg_id))
            .cloned()
            .ok_or_else(|| SessionError::NoRegistration(reg_id.to_string()))?;
        let kept: Vec<Arc<Registration>> = session.registrations.iter().filter(|r| r.id != reg_id).cloned().collect();
        let updated = Session {
            id: session.id.clone(),
            language: session.language,
            source: session.source.clone(),
            args: session.args.clone(),
            user: session.user.clone(),
            db: session.db,
            description: session.description.clone(),
            version: session.version,
            declared: session.declared,
            imports: session.imports.clone(),
            registrations: kept,
        };
        let updated = Arc::new(updated);
        map.insert(session.id.clone(), updated.clone());
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.hooks.store(Self::count_hooks(&map), Ordering::Relaxed);
        Ok(updated)
    }

    /// Sessions that import the package `name` (of `language`, or of any language).
    pub fn importers(&self, language: Option<&str>, name: &str) -> Vec<String> {
        self.map
            .read()
            .values()
            .filter(|s| s.imports.iter().any(|(l, n)| n == name && language.is_none_or(|x| x == l)))
            .map(|s| s.id.clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map.read().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.map.read().values().cloned().collect()
    }

    pub fn registration(&self, reg_id: &str) -> Option<(Arc<Session>, Arc<Registration>)> {
        self.map.read().values().find_map(|s| s.registrations.iter().find(|r| r.id == reg_id).map(|r| (s.clone(), r.clone())))
    }

    /// The registration fired by `RG.TRIGGER name`.
    pub fn command_trigger(&self, name: &str) -> Option<(Arc<Session>, Arc<Registration>)> {
        self.map.read().values().find_map(|s| {
            s.registrations
                .iter()
                .find(|r| matches!(&r.spec.trigger, Trigger::Command { name: n } if n == name))
                .map(|r| (s.clone(), r.clone()))
        })
    }

    /// Is any command hooked? (Checked for every command the server runs.)
    pub fn has_hooks(&self) -> bool {
        self.hooks.load(Ordering::Relaxed) > 0
    }

    /// The hook registration a call of `command` fires, if any.
    pub fn hook_for(&self, command: &str, first: Option<&[u8]>) -> Option<(Arc<Session>, Arc<Registration>)> {
        let map = self.map.read();
        map.values().find_map(|s| {
            s.registrations
                .iter()
                .find(|r| !r.paused.load(Ordering::Relaxed) && r.spec.trigger.matches_hook(command, first))
                .map(|r| (s.clone(), r.clone()))
        })
    }

    fn count_hooks(map: &BTreeMap<String, Arc<Session>>) -> u64 {
        map.values().flat_map(|s| s.registrations.iter()).filter(|r| matches!(r.spec.trigger, Trigger::Hook { .. })).count() as u64
    }

    /// StreamReader registrations listening to `stream`.
    pub fn stream_triggers(&self, stream: &[u8]) -> Vec<(Arc<Session>, Arc<Registration>)> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let map = self.map.read();
        map.values()
            .flat_map(|s| s.registrations.iter().filter(|r| r.spec.trigger.stream_prefix().is_some_and(|p| stream.starts_with(p))).map(move |r| (s.clone(), r.clone())))
            .collect()
    }

    /// Registrations that a keyspace event fires, with their sessions.
    pub fn keys_triggers(&self, event: &str, key: &[u8], key_type: impl Fn() -> String) -> Vec<(Arc<Session>, Arc<Registration>)> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let map = self.map.read();
        let mut key_type_cache: Option<String> = None;
        let mut out = Vec::new();
        for s in map.values() {
            for r in &s.registrations {
                if r.paused.load(Ordering::Relaxed) || !matches!(r.spec.trigger, Trigger::Keys { .. }) {
                    continue;
                }
                let t = key_type_cache.get_or_insert_with(&key_type);
                if r.spec.trigger.matches_key(event, key, t) {
                    out.push((s.clone(), r.clone()));
                }
            }
        }
        out
    }

    pub fn registration_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
