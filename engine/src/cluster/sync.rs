//! Registrations across the cluster. A change made on one primary (a session registered,
//! upgraded or dropped, a registration removed or paused, a package loaded or deleted) is
//! validated by every other primary first when it is a registration (so that it is never
//! half-applied), then applied here and pushed to every primary. What is pushed is every
//! item (session, package) with its version (see `versions`): a primary applies the items
//! whose version is greater than its own, so changes made on several primaries in any
//! order end the same everywhere, drops included. Every second each primary tells the
//! others a digest of its versions; one whose digest differs (restarted from an old RDB,
//! restarted empty, newly added, a promoted replica) fetches the other's items and merges.
//! All of it runs on one thread per node ("rg-cluster-sync"), in the order it arrives.

use super::message::{Message, Query};
use super::versions::{fnv, get_u64, package_key, session_key, Version};
use crate::{codec, Engine, Host, LogLevel, NoDataHost, Package, Registrant, SessionDef, Value, SESSION_LOAD};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Names of the engine's own cluster queries.
pub(crate) const PREPARE: &str = "prepare-session";
pub(crate) const ADOPT: &str = "adopt-state";
pub(crate) const DIGEST: &str = "digest";
pub(crate) const STATE: &str = "state";

/// The internal command that carries the versions to replicas and the AOF.
pub const VERSIONS_COMMAND: &str = "RG.CLUSTERVERSIONS";

type Answers = Vec<(String, Result<Value, String>)>;

/// Work for the sync thread.
pub(crate) enum SyncJob {
    /// Push every item to the other primaries (after a change here); the answers go to the
    /// sender when there is one.
    Publish(Option<mpsc::Sender<Answers>>),
    /// Another primary pushed its items: merge, then answer query `id`.
    Adopt { from: String, id: u64, clock: u64, state: Vec<u8> },
    /// Another primary's digest.
    Digest { from: String, digest: u64, clock: u64 },
    /// Items fetched from another primary.
    Merge(Vec<u8>),
    /// Each second: record changes made here that were not pushed, send the digest.
    Tick,
}

/// What is shared of one item: a session's definition (`SessionDef::shared`) or a
/// package (language, name, source, owner), encoded.
enum Content {
    Session(SessionDef),
    Package(Package),
}

impl Content {
    fn encode(&self) -> Vec<u8> {
        match self {
            Content::Session(d) => d.encode(),
            Content::Package(p) => codec::encode(&Value::Array(vec![
                Value::String(p.language.clone()),
                Value::String(p.name.clone()),
                Value::String(p.source.clone()),
                p.owner.clone().map(Value::String).unwrap_or(Value::Nil),
            ]))
            .unwrap_or_default(),
        }
    }
}

fn decode_package(b: &[u8]) -> Result<Package, String> {
    let bad = || "a package from another shard is malformed".to_string();
    let Value::Array(f) = codec::decode(b).map_err(|e| e.to_string())? else { return Err(bad()) };
    let [Value::String(language), Value::String(name), Value::String(source), owner] = f.as_slice() else { return Err(bad()) };
    let owner = match owner {
        Value::Nil => None,
        Value::String(o) => Some(o.clone()),
        _ => return Err(bad()),
    };
    Ok(Package::new(language, name, source.clone(), owner))
}

/// One item of a state sent between primaries.
struct Entry {
    key: String,
    version: Version,
    content: Option<Vec<u8>>,
}

fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let v = Value::Array(
        entries
            .iter()
            .map(|e| Value::Array(vec![Value::String(e.key.clone()), e.version.to_value(), e.content.clone().map(Value::Bytes).unwrap_or(Value::Nil)]))
            .collect(),
    );
    codec::encode(&v).unwrap_or_default()
}

fn decode_entries(b: &[u8]) -> Result<Vec<Entry>, String> {
    let bad = || "a registrations state from another shard is malformed".to_string();
    let Value::Array(items) = codec::decode(b).map_err(|e| e.to_string())? else { return Err(bad()) };
    items
        .iter()
        .map(|i| {
            let Value::Array(f) = i else { return Err(bad()) };
            let [key, version, content] = f.as_slice() else { return Err(bad()) };
            let content = match content {
                Value::Nil => None,
                c => Some(c.as_bytes().ok_or_else(bad)?.into_owned()),
            };
            Ok(Entry { key: key.as_str_lossy().ok_or_else(bad)?, version: Version::from_value(version).ok_or_else(bad)?, content })
        })
        .collect()
}

fn int(n: u64) -> Value {
    Value::Bytes(n.to_le_bytes().to_vec())
}

impl Engine {
    /// Is this node a primary of a cluster with other primaries?
    fn cluster_peers(&self) -> Option<Vec<String>> {
        let t = self.host.topology()?;
        if !t.is_primary() {
            return None;
        }
        let others: Vec<String> = t.shards.iter().filter(|s| s.id != t.me).map(|s| s.id.clone()).collect();
        (!others.is_empty()).then_some(others)
    }

    /// The other primaries worth waiting for: those the cluster flags as failing get what
    /// they missed from the digests when they are back, so a registration does not wait
    /// `execution-max-idle-time` for each of them.
    fn live_peers(&self, peers: Vec<String>) -> Vec<String> {
        let Some(t) = self.host.topology() else { return peers };
        let (live, failing): (Vec<String>, Vec<String>) = peers.into_iter().partition(|p| !t.is_failing(p));
        for f in failing {
            self.host.log(LogLevel::Notice, &format!("rg: shard {} is flagged as failing: it gets the registrations when it is back", self.cluster.describe(&f)));
        }
        live
    }

    /// Asks every other primary `query` and waits (on a worker, never the main thread)
    /// for all answers or the idle limit.
    fn ask_peers(&self, peers: &[String], query: Query) -> Vec<(String, Result<Value, String>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cluster.query(peers, query, Box::new(move |answers| {
            let _ = tx.send(answers);
        }));
        rx.recv_timeout(self.cluster.idle_limit() + Duration::from_secs(1)).unwrap_or_default()
    }

    /// Before a session is installed: every other primary checks it as it would its own
    /// (the user's rights there, the recipe connections, the rebuild). The first refusal
    /// is returned, naming the shard. Each answer carries that primary's clock, so the
    /// change made here next is ordered after everything it has seen.
    pub(crate) fn cluster_prepare(&self, def: &SessionDef, who: &Registrant, upgrade: bool) -> Result<(), String> {
        let Some(peers) = self.cluster_peers() else { return Ok(()) };
        let peers = self.live_peers(peers);
        let q = Query::Custom {
            name: PREPARE.into(),
            args: vec![Value::Bytes(def.encode()), who.user.map(|u| Value::String(u.to_string())).unwrap_or(Value::Nil), Value::Bool(who.admin), Value::Bool(upgrade)],
        };
        for (shard, answer) in self.ask_peers(&peers, q) {
            match answer {
                Ok(clock) => {
                    if let Some(c) = get_u64(Some(&clock)) {
                        self.cluster.versions.lock().see(c);
                    }
                }
                // Down (or cut off): it gets the registration from the others when it is
                // back (the registrations digest), as a primary added later does.
                Err(e) if e == self.cluster.unanswered(&shard) => {
                    self.host.log(LogLevel::Warning, &format!("rg: session '{}': {e}; it gets the session when it is back", def.id));
                }
                Err(e) => return Err(format!("register: shard {} refused: {e}; nothing was registered", self.cluster.describe(&shard))),
            }
        }
        Ok(())
    }

    /// A session another primary is about to install: would this one accept it?
    fn check_prepared(&self, args: &[Value]) -> Result<(), String> {
        let [def, user, admin, upgrade] = args else { return Err("malformed prepare".into()) };
        let def = SessionDef::decode(&def.as_bytes().ok_or("malformed prepare")?)?;
        let user = user.as_str_lossy().filter(|_| !matches!(user, Value::Nil));
        let no_data: Arc<dyn Host> = Arc::new(NoDataHost { shard_id: self.host.shard_id() });
        let (_, specs, _) = self.rebuild_registrations(&def, no_data, None)?;
        let locked = self.host.lock(def.db);
        // Whether the user is an admin (hooks) is this node's ACL's answer, as every
        // other right checked here.
        let admin = match user.as_deref() {
            Some(u) => crate::is_admin(&*locked, u),
            None => matches!(admin, Value::Bool(true)),
        };
        let who = Registrant { user: user.as_deref(), admin };
        self.check_registrations(&*locked, &who, &specs, def.user.as_deref(), Some(&def.id).filter(|_| matches!(upgrade, Value::Bool(true))).map(|s| s.as_str()))
    }

    /// After a change of registrations or packages here (not one applied from another
    /// primary or from this node's own primary): pushes every item to every primary. With
    /// `wait`, returns once they applied it (or after the idle limit). Never blocks on the
    /// data lock: the main thread may call it.
    pub fn cluster_publish(self: &Arc<Self>, wait: bool) {
        if self.cluster_peers().is_none() {
            return;
        }
        if !wait {
            self.sync_job(SyncJob::Publish(None));
            return;
        }
        let (tx, rx) = mpsc::channel();
        self.sync_job(SyncJob::Publish(Some(tx)));
        for (shard, a) in rx.recv_timeout(self.cluster.idle_limit() + Duration::from_secs(2)).unwrap_or_default() {
            if let Err(e) = a {
                self.host.log(LogLevel::Warning, &format!("rg: shard {} did not apply the registrations (it catches up later): {e}", self.cluster.describe(&shard)));
            }
        }
    }

    /// Queues work for this node's sync thread (started on first use).
    pub(crate) fn sync_job(self: &Arc<Self>, job: SyncJob) {
        let mut slot = self.cluster.sync_jobs.lock();
        if slot.is_none() {
            let (tx, rx) = mpsc::channel::<SyncJob>();
            let weak = Arc::downgrade(self);
            let started = std::thread::Builder::new().name("rg-cluster-sync".into()).spawn(move || {
                while let Ok(job) = rx.recv() {
                    let Some(engine) = weak.upgrade() else { return };
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run_sync_job(job))).is_err() {
                        engine.host.log(LogLevel::Warning, "rg: internal error while syncing the registrations with the other primaries");
                    }
                }
            });
            if started.is_err() {
                self.host.log(LogLevel::Warning, "rg: no thread to sync the registrations with the other primaries");
                return;
            }
            *slot = Some(tx);
        }
        if let Some(tx) = slot.as_ref() {
            let _ = tx.send(job);
        }
    }

    fn run_sync_job(self: &Arc<Self>, job: SyncJob) {
        match job {
            SyncJob::Publish(answers) => {
                self.record_local_changes();
                self.push_items(answers);
            }
            SyncJob::Adopt { from, id, clock, state } => {
                self.cluster.versions.lock().see(clock);
                // A node that is no longer a primary takes its registrations from its
                // primary (replication), not from the others.
                let answer = match self.cluster_peers() {
                    Some(_) => decode_entries(&state).and_then(|entries| self.merge(entries)),
                    None => Err("this node is not a primary".into()),
                };
                self.cluster.send(&from, &Message::Reply { id, answer: answer.map(|_| Value::Nil) }, false);
            }
            SyncJob::Digest { from, digest, clock } => {
                self.cluster.versions.lock().see(clock);
                if self.local_signature_changed() && self.record_local_changes() {
                    self.push_items(None);
                }
                if digest != self.cluster.versions.lock().digest() {
                    self.fetch_items(&from);
                }
            }
            SyncJob::Merge(state) => {
                if self.cluster_peers().is_none() {
                    return;
                }
                if let Err(e) = decode_entries(&state).and_then(|entries| self.merge(entries)) {
                    self.host.log(LogLevel::Warning, &format!("rg: the registrations of another shard could not be applied: {e}"));
                }
            }
            SyncJob::Tick => {
                let Some(peers) = self.cluster_peers() else { return };
                if self.local_signature_changed() && self.record_local_changes() {
                    self.push_items(None);
                }
                let v = self.cluster.versions.lock();
                let q = Query::Custom { name: DIGEST.into(), args: vec![int(v.digest()), int(v.clock)] };
                drop(v);
                self.cluster.query(&peers, q, Box::new(|_| {}));
            }
        }
    }

    /// The items here now: key → (content hash, content).
    fn local_items(&self) -> BTreeMap<String, (u64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for p in self.packages.all().into_iter().filter(|p| !p.builtin) {
            let b = Content::Package(p.clone()).encode();
            out.insert(package_key(&p.language, &p.name), (fnv(&b), b));
        }
        for s in self.sessions.all() {
            let b = Content::Session(SessionDef::shared(&s)).encode();
            out.insert(session_key(&s.id), (fnv(&b), b));
        }
        out
    }

    /// A cheap fingerprint of the registrations (no script is encoded): when it moved, a
    /// change may not have been recorded yet.
    fn local_signature_changed(&self) -> bool {
        let mut b = Vec::new();
        for p in self.packages.all().into_iter().filter(|p| !p.builtin) {
            b.extend_from_slice(p.language.as_bytes());
            b.extend_from_slice(p.name.as_bytes());
            b.extend_from_slice(p.hash().as_bytes());
            b.extend_from_slice(p.owner.as_deref().unwrap_or("").as_bytes());
            b.push(0);
        }
        for s in self.sessions.all() {
            b.extend_from_slice(s.id.as_bytes());
            b.extend_from_slice(&s.version.to_le_bytes());
            for r in &s.registrations {
                b.extend_from_slice(&(r.index as u64).to_le_bytes());
                b.push(r.paused.load(Ordering::Relaxed) as u8 | (r.halted.load(Ordering::Relaxed) as u8) << 1);
            }
            b.push(0);
        }
        let sig = fnv(&b);
        self.cluster.signature.swap(sig, Ordering::Relaxed) != sig
    }

    /// Gives every item changed or dropped here since it was last recorded a new version
    /// (sent to replicas and the AOF with the versions). Returns whether any changed.
    fn record_local_changes(&self) -> bool {
        let _ = self.local_signature_changed();
        let hashes: BTreeMap<String, u64> = self.local_items().into_iter().map(|(k, (h, _))| (k, h)).collect();
        let me = self.host.shard_id();
        let blob = {
            let mut v = self.cluster.versions.lock();
            v.stamp_local(&hashes, &me).then(|| v.encode())
        };
        match blob {
            Some(b) => {
                self.host.lock(0).replicate(&[VERSIONS_COMMAND.as_bytes(), &b]);
                true
            }
            None => false,
        }
    }

    /// Every item with its version, and the content of those present here.
    fn encode_items(&self) -> Vec<u8> {
        let local = self.local_items();
        let versions = self.cluster.versions.lock().clone();
        let entries: Vec<Entry> = versions
            .items
            .into_iter()
            .map(|(key, version)| {
                // Present but not here (it could not be installed): sent without content,
                // which the others skip.
                let content = version.present.then(|| local.get(&key).filter(|(h, _)| *h == version.hash).map(|(_, c)| c.clone())).flatten();
                Entry { key, version, content }
            })
            .collect();
        encode_entries(&entries)
    }

    fn push_items(&self, answers: Option<mpsc::Sender<Answers>>) {
        let Some(peers) = self.cluster_peers().map(|p| self.live_peers(p)) else {
            if let Some(tx) = answers {
                let _ = tx.send(Vec::new());
            }
            return;
        };
        let clock = self.cluster.versions.lock().clock;
        let q = Query::Custom { name: ADOPT.into(), args: vec![int(clock), Value::Bytes(self.encode_items())] };
        self.cluster.query(&peers, q, Box::new(move |a| {
            if let Some(tx) = answers {
                let _ = tx.send(a);
            }
        }));
    }

    /// Asks `from` for its items (one fetch at a time per peer) and merges them.
    fn fetch_items(self: &Arc<Self>, from: &str) {
        if !self.cluster.begin_fetch(from) {
            return;
        }
        let engine = self.clone();
        let from_id = from.to_string();
        self.cluster.query(&[from.to_string()], Query::Custom { name: STATE.into(), args: vec![] }, Box::new(move |answers| {
            engine.cluster.end_fetch(&from_id);
            if let Some((_, Ok(Value::Array(v)))) = answers.into_iter().next() {
                if let (Some(clock), Some(state)) = (get_u64(v.first()), v.get(1).and_then(|s| s.as_bytes())) {
                    engine.cluster.versions.lock().see(clock);
                    engine.sync_job(SyncJob::Merge(state.into_owned()));
                }
            }
        }));
    }

    /// Applies the items of another primary whose versions are greater than this one's:
    /// packages loaded first (sessions import them), then sessions installed and dropped,
    /// then packages deleted. Each is sent to replicas and the AOF, then the versions.
    fn merge(self: &Arc<Self>, entries: Vec<Entry>) -> Result<usize, String> {
        // Changes made here first get their versions, to be compared with these.
        self.record_local_changes();
        let newer: Vec<Entry> = {
            let v = self.cluster.versions.lock();
            entries.into_iter().filter(|e| v.is_newer(&e.key, &e.version) && (!e.version.present || e.content.is_some())).collect()
        };
        if newer.is_empty() {
            return Ok(0);
        }
        let local = self.local_items();
        let same = |e: &Entry| e.version.present && local.get(&e.key).is_some_and(|(h, _)| *h == e.version.hash);
        let no_data: Arc<dyn Host> = Arc::new(NoDataHost { shard_id: self.host.shard_id() });
        let is_package = |e: &Entry| e.key.starts_with("package:");
        for e in newer.iter().filter(|e| is_package(e) && e.version.present && !same(e)) {
            let p = decode_package(e.content.as_deref().unwrap_or_default())?;
            if let Err(err) = self.packages.load(p.clone(), true) {
                self.host.log(LogLevel::Warning, &format!("rg: package '{}' from another shard: {err}", p.name));
                continue;
            }
            self.replicate_package_load(&p);
        }
        for e in newer.iter().filter(|e| !is_package(e) && e.version.present && !same(e)) {
            let def = SessionDef::decode(e.content.as_deref().unwrap_or_default())?;
            self.install_shared(def, &no_data);
        }
        for e in newer.iter().filter(|e| !is_package(e) && !e.version.present) {
            let Some(id) = e.key.strip_prefix("session:") else { continue };
            if let Some(s) = self.sessions.get(id) {
                let locked = self.host.lock(s.db);
                if self.sessions.drop_session(id).is_ok() {
                    locked.replicate(&[b"RG.SESSIONDROP", id.as_bytes()]);
                }
            }
        }
        for e in newer.iter().filter(|e| is_package(e) && !e.version.present) {
            let Some((language, name)) = e.key.strip_prefix("package:").and_then(|k| k.split_once(':')) else { continue };
            if self.packages.get(language, name).is_none() {
                continue;
            }
            let importers = self.sessions.importers(Some(language), name);
            match self.packages.delete(Some(language), name, &importers) {
                Ok(_) => {
                    // RG.PACKAGE DELETE takes every language of the name: the others are
                    // loaded again after it.
                    self.host.lock(0).replicate(&[b"RG.PACKAGE", b"DELETE", name.as_bytes()]);
                    for other in self.packages.all().into_iter().filter(|p| !p.builtin && p.name == name) {
                        self.replicate_package_load(&other);
                    }
                }
                Err(err) => self.host.log(LogLevel::Warning, &format!("rg: package '{name}' deleted on another shard: {err}")),
            }
        }
        let n = newer.len();
        let blob = {
            let mut v = self.cluster.versions.lock();
            for e in newer {
                v.record(&e.key, e.version);
            }
            v.prune();
            v.encode()
        };
        self.host.lock(0).replicate(&[VERSIONS_COMMAND.as_bytes(), &blob]);
        // What was applied is recorded: not a change made here.
        let _ = self.local_signature_changed();
        if let Some(r) = self.recipes.get() {
            r.sessions_changed(self);
        }
        self.kick_streams();
        Ok(n)
    }

    fn replicate_package_load(&self, p: &Package) {
        let mut args: Vec<&[u8]> = vec![b"RG.PACKAGE", b"LOAD", p.language.as_bytes(), p.name.as_bytes(), p.source.as_bytes(), b"REPLACE"];
        if let Some(o) = &p.owner {
            args.extend([b"OWNER".as_slice(), o.as_bytes()]);
        }
        self.host.lock(0).replicate(&args);
    }

    /// Installs a session another primary shared, keeping this shard's stream positions.
    /// Rebuilt off the lock; installed (and sent to replicas and the AOF) under it.
    fn install_shared(&self, mut def: SessionDef, no_data: &Arc<dyn Host>) {
        def.positions = self.sessions.get(&def.id).map(|s| SessionDef::of(&s).positions).unwrap_or_default();
        let session = match self.rebuild_registrations(&def, no_data.clone(), None) {
            Ok((language, specs, imports)) => {
                let locked = self.host.lock(def.db);
                match self.sessions.install(&def, language, specs, imports, crate::Replace::Any) {
                    Ok(s) => Some((locked, s)),
                    Err(e) => {
                        self.host.log(LogLevel::Warning, &format!("rg: session '{}' from another shard: {e}", def.id));
                        None
                    }
                }
            }
            Err(e) => {
                let locked = self.host.lock(def.db);
                let lang = self.language(&def.language).map(|l| l.name()).unwrap_or("unknown");
                Some((locked, self.sessions.install_unbuilt(&def, lang, Some(e))))
            }
        };
        if let Some((locked, s)) = session {
            locked.replicate(&[SESSION_LOAD.as_bytes(), &SessionDef::of(&s).encode()]);
        }
    }

    /// The engine's own cluster queries; false for the module's.
    pub(crate) fn answer_own_query(self: &Arc<Self>, from: &str, id: u64, name: &str, args: Vec<Value>) -> bool {
        match name {
            PREPARE => {
                // Rebuilds the script and takes the data lock: off the main thread.
                let engine = self.clone();
                let sender = from.to_string();
                let spawned = std::thread::Builder::new().name("rg-cluster-check".into()).spawn(move || {
                    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.check_prepared(&args)))
                        .unwrap_or_else(|_| Err("internal error while checking the registrations".into()));
                    let clock = engine.cluster.versions.lock().clock;
                    engine.cluster.send(&sender, &Message::Reply { id, answer: answer.map(|()| int(clock)) }, false);
                });
                if spawned.is_err() {
                    self.cluster.send(from, &Message::Reply { id, answer: Err("no thread to check the registrations".into()) }, false);
                }
                true
            }
            ADOPT => {
                match (get_u64(args.first()), args.get(1).and_then(|s| s.as_bytes())) {
                    (Some(clock), Some(state)) => self.sync_job(SyncJob::Adopt { from: from.to_string(), id, clock, state: state.into_owned() }),
                    _ => self.cluster.send(from, &Message::Reply { id, answer: Err("malformed registrations state".into()) }, false),
                }
                true
            }
            DIGEST => {
                self.cluster.send(from, &Message::Reply { id, answer: Ok(Value::Nil) }, false);
                if let (Some(digest), Some(clock)) = (get_u64(args.first()), get_u64(args.get(1))) {
                    self.sync_job(SyncJob::Digest { from: from.to_string(), digest, clock });
                }
                true
            }
            STATE => {
                // Off the main thread (it encodes every script); answered from the sync
                // thread after what is queued there.
                let engine = self.clone();
                let sender = from.to_string();
                let _ = std::thread::Builder::new().name("rg-cluster-state".into()).spawn(move || {
                    let clock = engine.cluster.versions.lock().clock;
                    let v = Value::Array(vec![int(clock), Value::Bytes(engine.encode_items())]);
                    engine.cluster.send(&sender, &Message::Reply { id, answer: Ok(v) }, false);
                });
                true
            }
            _ => false,
        }
    }

    /// Each second (the coordinator's tick): record what changed here, tell the others.
    pub(crate) fn send_digest(self: &Arc<Self>) {
        if self.cluster_peers().is_some() {
            self.sync_job(SyncJob::Tick);
        }
    }
}
