//! Sessions (the scripts that own registrations) and their registrations: what fires
//! them, their steps, and their counters.

pub use crate::session_def::SessionDef;
pub use crate::trigger::{FailPolicy, Mode, StreamOptions, Trigger};
use crate::Step;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Paused here by its own failure (a StreamReader with onFailed 'abort'), not by a
    /// command: a shard-local state that cluster primaries do not copy to each other.
    pub halted: AtomicBool,
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
    /// The packages the script imported when it was registered (or upgraded), source
    /// included: all its instances import these and no other version (built-in packages
    /// come from the module).
    pub imports: Arc<Vec<crate::Package>>,
    pub registrations: Vec<Arc<Registration>>,
    /// Set while the session's script has not been run again since it was loaded (RDB, AOF,
    /// from the primary): it has no registrations yet, and is saved and replicated as it was
    /// loaded.
    pub unbuilt: Option<Unbuilt>,
}

/// A loaded session waiting to be rebuilt (see `Session::unbuilt`).
pub struct Unbuilt {
    /// The definition as loaded, saved again as it is.
    pub def: SessionDef,
    /// Why the last attempt failed (None: not tried yet).
    error: Mutex<Option<String>>,
    /// Failed attempts so far.
    attempts: AtomicU64,
}

impl Unbuilt {
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }
    /// Records a failed attempt; returns how many there were.
    pub fn failed(&self, error: String) -> u64 {
        *self.error.lock() = Some(error);
        self.attempts.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Session {
    /// `ready` (its registrations live), `pending` (loaded, not rebuilt yet) or `failed`
    /// (loaded, its rebuild failed: the error says why), with the error.
    pub fn status(&self) -> (&'static str, Option<String>) {
        match &self.unbuilt {
            None => ("ready", None),
            Some(u) => match u.error() {
                None => ("pending", None),
                Some(e) => ("failed", Some(e)),
            },
        }
    }
}

/// What `Sessions::install` may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    No,
    Must,
    Any,
    /// Only the unbuilt session of this version (a rebuild that finished; if the session
    /// was dropped or replaced meanwhile, nothing is installed).
    Unbuilt(u64),
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
    #[error("a recipe named '{0}' already exists (session '{1}')")]
    RecipeTaken(String, String),
    #[error("command '{0}' is already hooked (session '{1}')")]
    HookTaken(String, String),
    #[error("session '{0}' was dropped or replaced while it was being rebuilt")]
    Changed(String),
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
    /// Changes whenever a session is installed, changed or dropped (threads then forget
    /// their instances of sessions that are gone).
    generation: AtomicU64,
    /// Called after every change (the engine tells its threads to purge).
    on_change: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Sessions {
    /// Installs a session built from `specs` (the script's registrations, in order).
    /// With `Replace::No` an existing session of that id is an error, with `Replace::Must`
    /// a missing one is (UPGRADE), with `Replace::Any` whatever is there is replaced (a
    /// session loaded from RDB, AOF or the primary). A replaced session's registrations
    /// are gone and the new ones live in one step.
    pub fn install(&self, def: &SessionDef, language: &'static str, specs: Vec<RegistrationSpec>, imports: Vec<crate::Package>, replace: Replace) -> Result<Arc<Session>, SessionError> {
        let id = def.id.clone();
        let mut map = self.map.write();
        match (map.get(&id), replace) {
            (Some(_), Replace::No) => return Err(SessionError::Exists(id)),
            (None, Replace::Must) => return Err(SessionError::NoSuchSession(id)),
            (cur, Replace::Unbuilt(version)) if !cur.is_some_and(|c| c.version == version && c.unbuilt.is_some()) => return Err(SessionError::Changed(id)),
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
            if let Trigger::Recipe { name, .. } = &spec.trigger {
                for other in map.values().filter(|s| s.id != id) {
                    if other.registrations.iter().any(|r| matches!(&r.spec.trigger, Trigger::Recipe { name: n, .. } if n == name)) {
                        return Err(SessionError::RecipeTaken(name.clone(), other.id.clone()));
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
                    halted: AtomicBool::new(false),
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
        // An unbuilt session being replaced (UPGRADE) has its positions in its definition.
        let loaded = map.get(&id).and_then(|old| old.unbuilt.as_ref()).map(|u| u.def.positions.clone()).unwrap_or_default();
        for (index, stream, pos) in loaded.iter().chain(&def.positions) {
            if let (Some(r), Some(p)) = (registrations.iter().find(|r| r.index == *index && r.spec.trigger.stream_prefix().is_some()), crate::streams::parse_id(pos)) {
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
            imports: Arc::new(imports),
            registrations,
            unbuilt: None,
        });
        if let Some(old) = map.insert(id, session.clone()) {
            self.count.fetch_sub(old.registrations.len() as u64, Ordering::Relaxed);
        }
        self.count.fetch_add(session.registrations.len() as u64, Ordering::Relaxed);
        self.hooks.store(Self::count_hooks(&map), Ordering::Relaxed);
        drop(map);
        self.changed();
        Ok(session)
    }

    /// Installs (or replaces) a loaded session as unbuilt: kept with its definition and no
    /// registrations until its script has run again (`install` with `Replace::Unbuilt`).
    pub fn install_unbuilt(&self, def: &SessionDef, language: &'static str, error: Option<String>) -> Arc<Session> {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Arc::new(Session {
            id: def.id.clone(),
            language,
            source: def.source.clone(),
            args: def.args.clone(),
            user: def.user.clone(),
            db: def.db,
            description: def.description.clone(),
            version,
            declared: 0,
            imports: Default::default(),
            registrations: Vec::new(),
            unbuilt: Some(Unbuilt { def: def.clone(), attempts: AtomicU64::new(error.is_some() as u64), error: Mutex::new(error) }),
        });
        let mut map = self.map.write();
        if let Some(old) = map.insert(def.id.clone(), session.clone()) {
            self.count.fetch_sub(old.registrations.len() as u64, Ordering::Relaxed);
        }
        self.hooks.store(Self::count_hooks(&map), Ordering::Relaxed);
        drop(map);
        self.changed();
        session
    }

    /// Sets what is called whenever sessions change (once; later calls are ignored).
    pub fn on_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_change.set(f);
    }

    /// A session was installed, changed or dropped.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = self.on_change.get() {
            f();
        }
    }

    pub fn drop_session(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        let mut map = self.map.write();
        let old = map.remove(id).ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        self.count.fetch_sub(old.registrations.len() as u64, Ordering::Relaxed);
        self.hooks.store(Self::count_hooks(&map), Ordering::Relaxed);
        drop(map);
        self.changed();
        Ok(old)
    }

    /// Drops every session (before loading another state).
    pub fn clear(&self) {
        self.map.write().clear();
        self.count.store(0, Ordering::Relaxed);
        self.hooks.store(0, Ordering::Relaxed);
        self.changed();
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
            unbuilt: None,
        };
        let updated = Arc::new(updated);
        map.insert(session.id.clone(), updated.clone());
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.hooks.store(Self::count_hooks(&map), Ordering::Relaxed);
        drop(map);
        self.changed();
        Ok(updated)
    }

    /// Sessions that import the package `name` (of `language`, or of any language),
    /// unbuilt ones included (what their definition pinned).
    pub fn importers(&self, language: Option<&str>, name: &str) -> Vec<String> {
        let matches = |p: &crate::Package| p.name == name && language.is_none_or(|x| x == p.language);
        self.map
            .read()
            .values()
            .filter(|s| s.imports.iter().any(matches) || s.unbuilt.as_ref().is_some_and(|u| u.def.packages.iter().flatten().any(matches)))
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

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
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
            .flat_map(|s| s.registrations.iter().filter(|r| r.spec.trigger.stream_prefix().is_some_and(|p| crate::streams::consumes(p, stream))).map(move |r| (s.clone(), r.clone())))
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
                let mut t = || key_type_cache.get_or_insert_with(&key_type).clone();
                if r.spec.trigger.matches_key(event, key, &mut t) {
                    out.push((s.clone(), r.clone()));
                }
            }
        }
        out
    }

    /// Recipe registrations (write-behind, write-through), with their sessions.
    pub fn recipes(&self) -> Vec<(Arc<Session>, Arc<Registration>)> {
        let map = self.map.read();
        map.values().flat_map(|s| s.registrations.iter().filter(|r| matches!(r.spec.trigger, Trigger::Recipe { .. })).map(move |r| (s.clone(), r.clone()))).collect()
    }

    pub fn registration_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailPolicy, StreamOptions};

    fn def(id: &str, positions: Vec<(usize, Vec<u8>, String)>) -> SessionDef {
        SessionDef {
            id: id.into(),
            language: "lua".into(),
            source: "loops when rebuilt".into(),
            args: vec![b"a".to_vec()],
            user: Some("alice".into()),
            db: 2,
            description: None,
            removed: vec![1],
            paused: vec![0],
            positions,
            packages: None,
        }
    }

    fn stream_spec() -> RegistrationSpec {
        let options = StreamOptions { batch: 1, duration_ms: 0, on_failed: FailPolicy::Continue, retry_interval_ms: 0, trim: false };
        RegistrationSpec { trigger: Trigger::Stream { prefix: b"s".to_vec(), options }, mode: Mode::Async, steps: Vec::new(), description: None }
    }

    #[test]
    fn an_unbuilt_session_keeps_its_definition_and_registers_nothing() {
        let sessions = Sessions::default();
        let loaded = def("s", vec![(0, b"s1".to_vec(), "5-0".into())]);
        let s = sessions.install_unbuilt(&loaded, "lua", None);
        assert_eq!(s.status(), ("pending", None));
        assert!(s.registrations.is_empty() && sessions.registration_count() == 0);
        // Saved and replicated as it was loaded, paused, removed and positions included.
        assert_eq!(SessionDef::of(&s), loaded);
        assert_eq!(s.unbuilt.as_ref().unwrap().failed("timed out".into()), 1);
        assert_eq!(sessions.get("s").unwrap().status(), ("failed", Some("timed out".to_string())));
    }

    #[test]
    fn a_rebuild_installs_only_over_the_same_unbuilt_session() {
        let sessions = Sessions::default();
        let loaded = def("s", vec![(0, b"s1".to_vec(), "5-0".into())]);
        let v = sessions.install_unbuilt(&loaded, "lua", Some("failed once".into())).version;
        // Replaced meanwhile (UPGRADE, or loaded again): the rebuild of the old one is dropped.
        let newer = sessions.install_unbuilt(&loaded, "lua", None).version;
        assert_eq!(sessions.install(&loaded, "lua", vec![stream_spec(), stream_spec()], Vec::new(), Replace::Unbuilt(v)).err(), Some(SessionError::Changed("s".into())));
        let s = sessions.install(&loaded, "lua", vec![stream_spec(), stream_spec()], Vec::new(), Replace::Unbuilt(newer)).unwrap();
        assert_eq!(s.status(), ("ready", None));
        // Registration 1 was removed before the save, 0 paused with its stream position.
        assert_eq!(s.registrations.len(), 1);
        assert!(s.registrations[0].paused.load(Ordering::Relaxed));
        assert_eq!(s.registrations[0].consumers.positions(), vec![(b"s1".to_vec(), "5-0".to_string())]);
        // Built, it pins what it imported (nothing here), where the old definition had no pins.
        assert_eq!(SessionDef::of(&s), SessionDef { packages: Some(vec![]), ..loaded.clone() });
        // Dropped meanwhile: nothing installed either.
        sessions.drop_session("s").unwrap();
        assert!(sessions.install(&loaded, "lua", vec![stream_spec()], Vec::new(), Replace::Unbuilt(s.version)).is_err());
        assert!(sessions.get("s").is_none());
    }

    #[test]
    fn upgrading_an_unbuilt_session_keeps_its_stream_positions() {
        let sessions = Sessions::default();
        sessions.install_unbuilt(&def("s", vec![(0, b"s1".to_vec(), "7-1".into())]), "lua", Some("boom".into()));
        let fresh = SessionDef { removed: Vec::new(), paused: Vec::new(), ..def("s", Vec::new()) };
        let s = sessions.install(&fresh, "lua", vec![stream_spec()], Vec::new(), Replace::Must).unwrap();
        assert_eq!(s.registrations[0].consumers.positions(), vec![(b"s1".to_vec(), "7-1".to_string())]);
        let changes = std::sync::Arc::new(AtomicU64::new(0));
        let c = changes.clone();
        sessions.on_change(Box::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        }));
        sessions.drop_session("s").unwrap();
        assert_eq!(changes.load(Ordering::Relaxed), 1);
    }
}
