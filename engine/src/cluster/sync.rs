//! Registrations across the cluster. A change made on one primary (a session registered,
//! upgraded or dropped, a registration removed or paused, a package loaded or deleted) is
//! validated by every other primary first when it is a registration (so that it is never
//! half-applied), then applied here and pushed to every primary as this primary's whole
//! registrations state, stamped with an epoch. Every second each primary tells the others
//! its epoch and a digest of its state; one that is behind (restarted from an old RDB,
//! restarted empty, newly added, a promoted replica) fetches the state and applies it.
//! Concurrent changes on two primaries: the higher (epoch, origin) wins.

use super::message::{Message, Query};
use crate::{codec, Engine, Host, LogLevel, NoDataHost, Package, Registrant, SessionDef, Value, SESSION_LOAD};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// Names of the engine's own cluster queries.
pub(crate) const PREPARE: &str = "prepare-session";
pub(crate) const ADOPT: &str = "adopt-state";
pub(crate) const DIGEST: &str = "digest";
pub(crate) const STATE: &str = "state";

/// Where this primary's registrations state stands: changes bump the epoch; `origin` is
/// the primary that made the last one.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub epoch: u64,
    pub origin: String,
}

/// Serialises the application of states (from several senders at once).
pub(crate) static APPLYING: Mutex<()> = Mutex::new(());

/// The registrations state: packages loaded at run time and sessions, sorted.
pub(crate) fn encode_state(engine: &Engine) -> Vec<u8> {
    let mut packages: Vec<Package> = engine.packages.all().into_iter().filter(|p| !p.builtin).collect();
    packages.sort_by(|a, b| (&a.language, &a.name).cmp(&(&b.language, &b.name)));
    let mut sessions = engine.sessions.all();
    sessions.sort_by(|a, b| a.id.cmp(&b.id));
    let v = Value::Array(vec![
        Value::Array(
            packages
                .iter()
                .map(|p| {
                    Value::Array(vec![
                        Value::String(p.language.clone()),
                        Value::String(p.name.clone()),
                        Value::String(p.source.clone()),
                        p.owner.clone().map(Value::String).unwrap_or(Value::Nil),
                    ])
                })
                .collect(),
        ),
        Value::Array(sessions.iter().map(|s| Value::Bytes(SessionDef::of(s).encode())).collect()),
    ]);
    codec::encode(&v).unwrap_or_default()
}

fn decode_state(b: &[u8]) -> Result<(Vec<Package>, Vec<SessionDef>), String> {
    let bad = || "a registrations state from another shard is malformed".to_string();
    let Value::Array(parts) = codec::decode(b).map_err(|e| e.to_string())? else { return Err(bad()) };
    let [Value::Array(packages), Value::Array(sessions)] = parts.as_slice() else { return Err(bad()) };
    let packages = packages
        .iter()
        .map(|p| match p {
            Value::Array(f) if f.len() == 4 => {
                let s = |i: usize| if let Value::String(s) = &f[i] { Some(s.clone()) } else { None };
                let owner = match &f[3] {
                    Value::Nil => None,
                    Value::String(o) => Some(o.clone()),
                    _ => return Err(bad()),
                };
                Ok(Package::new(&s(0).ok_or_else(bad)?, &s(1).ok_or_else(bad)?, s(2).ok_or_else(bad)?, owner))
            }
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sessions = sessions.iter().map(|s| s.as_bytes().ok_or_else(bad).and_then(|b| SessionDef::decode(&b))).collect::<Result<Vec<_>, _>>()?;
    Ok((packages, sessions))
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn int(n: u64) -> Value {
    Value::Bytes(n.to_le_bytes().to_vec())
}

fn get_u64(v: Option<&Value>) -> Option<u64> {
    let b = v?.as_bytes()?;
    Some(u64::from_le_bytes(b.as_ref().try_into().ok()?))
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
    /// is returned, naming the shard.
    pub(crate) fn cluster_prepare(&self, def: &SessionDef, who: &Registrant, upgrade: bool) -> Result<(), String> {
        let Some(peers) = self.cluster_peers() else { return Ok(()) };
        let q = Query::Custom {
            name: PREPARE.into(),
            args: vec![Value::Bytes(def.encode()), who.user.map(|u| Value::String(u.to_string())).unwrap_or(Value::Nil), Value::Bool(who.admin), Value::Bool(upgrade)],
        };
        for (shard, answer) in self.ask_peers(&peers, q) {
            match answer {
                Ok(_) => {}
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
        let who = Registrant { user: user.as_deref(), admin: matches!(admin, Value::Bool(true)) };
        let no_data: Arc<dyn Host> = Arc::new(NoDataHost { shard_id: self.host.shard_id() });
        let (_, specs, _) = self.rebuild_registrations(&def, no_data, None)?;
        let locked = self.host.lock(def.db);
        self.check_registrations(&*locked, &who, &specs, def.user.as_deref(), Some(&def.id).filter(|_| matches!(upgrade, Value::Bool(true))).map(|s| s.as_str()))
    }

    /// After a change of registrations or packages here (not one applied from another
    /// primary or from this node's own primary): pushes the state to every primary. With
    /// `wait`, returns once they applied it (or after the idle limit).
    pub fn cluster_publish(self: &Arc<Self>, wait: bool) {
        let Some(peers) = self.cluster_peers() else { return };
        let stamp = {
            let mut s = self.cluster.stamp.lock();
            s.epoch += 1;
            s.origin = self.host.shard_id();
            s.clone()
        };
        let q = Query::Custom { name: ADOPT.into(), args: vec![int(stamp.epoch), Value::String(stamp.origin), Value::Bytes(encode_state(self))] };
        if wait {
            for (shard, a) in self.ask_peers(&peers, q) {
                if let Err(e) = a {
                    self.host.log(LogLevel::Warning, &format!("rg: shard {} did not apply the registrations (it catches up later): {e}", self.cluster.describe(&shard)));
                }
            }
        } else {
            self.cluster.query(&peers, q, Box::new(|_| {}));
        }
    }

    /// Applies another primary's registrations state if it is newer than this one's.
    fn adopt(self: &Arc<Self>, stamp: Stamp, state: &[u8]) -> Result<(), String> {
        let _one = APPLYING.lock();
        if stamp <= *self.cluster.stamp.lock() {
            return Ok(());
        }
        let (packages, sessions) = decode_state(state)?;
        let no_data: Arc<dyn Host> = Arc::new(NoDataHost { shard_id: self.host.shard_id() });
        // Packages first: sessions import them.
        for p in &packages {
            if self.packages.get(&p.language, &p.name).is_none_or(|cur| cur.source != p.source || cur.owner != p.owner) {
                if let Err(e) = self.packages.load(p.clone(), true) {
                    self.host.log(LogLevel::Warning, &format!("rg: package '{}' from another shard: {e}", p.name));
                    continue;
                }
                let mut args: Vec<&[u8]> = vec![b"RG.PACKAGE", b"LOAD", p.language.as_bytes(), p.name.as_bytes(), p.source.as_bytes(), b"REPLACE"];
                if let Some(o) = &p.owner {
                    args.extend([b"OWNER".as_slice(), o.as_bytes()]);
                }
                self.host.lock(0).replicate(&args);
            }
        }
        for def in &sessions {
            let blob = def.encode();
            if self.sessions.get(&def.id).is_some_and(|s| SessionDef::of(&s).encode() == blob) {
                continue;
            }
            // Rebuilt off the lock; installed (and sent to replicas and the AOF) under it.
            match self.rebuild_registrations(def, no_data.clone(), None) {
                Ok((language, specs, imports)) => {
                    let locked = self.host.lock(def.db);
                    if let Err(e) = self.sessions.install(def, language, specs, imports, crate::Replace::Any) {
                        self.host.log(LogLevel::Warning, &format!("rg: session '{}' from another shard: {e}", def.id));
                        continue;
                    }
                    locked.replicate(&[SESSION_LOAD.as_bytes(), &blob]);
                }
                Err(e) => {
                    let locked = self.host.lock(def.db);
                    let lang = self.language(&def.language).map(|l| l.name()).unwrap_or("unknown");
                    self.sessions.install_unbuilt(def, lang, Some(e));
                    locked.replicate(&[SESSION_LOAD.as_bytes(), &blob]);
                }
            }
        }
        for s in self.sessions.all() {
            if !sessions.iter().any(|d| d.id == s.id) {
                let locked = self.host.lock(s.db);
                if self.sessions.drop_session(&s.id).is_ok() {
                    locked.replicate(&[b"RG.SESSIONDROP", s.id.as_bytes()]);
                }
            }
        }
        for p in self.packages.all().into_iter().filter(|p| !p.builtin) {
            if !packages.iter().any(|q| q.language == p.language && q.name == p.name) {
                let importers = self.sessions.importers(Some(&p.language), &p.name);
                if self.packages.delete(Some(&p.language), &p.name, &importers).is_ok() {
                    self.host.lock(0).replicate(&[b"RG.PACKAGE", b"DELETE", p.name.as_bytes()]);
                }
            }
        }
        *self.cluster.stamp.lock() = stamp;
        if let Some(r) = self.recipes.get() {
            r.sessions_changed(self);
        }
        self.kick_streams();
        Ok(())
    }

    /// The engine's own cluster queries; None for the module's.
    pub(crate) fn answer_own_query(self: &Arc<Self>, from: &str, id: u64, name: &str, args: Vec<Value>) -> bool {
        match name {
            PREPARE | ADOPT => {
                // Both rebuild scripts and take the data lock: off the main thread.
                let engine = self.clone();
                let (sender, name) = (from.to_string(), name.to_string());
                let spawned = std::thread::Builder::new().name("rg-cluster-sync".into()).spawn(move || {
                    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if name == PREPARE {
                            engine.check_prepared(&args)
                        } else {
                            match (get_u64(args.first()), args.get(1).and_then(|o| o.as_str_lossy()), args.get(2).and_then(|s| s.as_bytes())) {
                                (Some(epoch), Some(origin), Some(state)) => engine.adopt(Stamp { epoch, origin }, &state),
                                _ => Err("malformed registrations state".into()),
                            }
                        }
                    }))
                    .unwrap_or_else(|_| Err("internal error while checking the registrations".into()));
                    engine.cluster.send(&sender, &Message::Reply { id, answer: answer.map(|()| Value::Nil) }, false);
                });
                if spawned.is_err() {
                    self.cluster.send(from, &Message::Reply { id, answer: Err("no thread to check the registrations".into()) }, false);
                }
                true
            }
            DIGEST => {
                self.cluster.send(from, &Message::Reply { id, answer: Ok(Value::Nil) }, false);
                if let (Some(epoch), Some(origin), Some(digest), Some(size)) = (get_u64(args.first()), args.get(1).and_then(|o| o.as_str_lossy()), get_u64(args.get(2)), get_u64(args.get(3))) {
                    self.compare_digest(from, Stamp { epoch, origin }, digest, size);
                }
                true
            }
            STATE => {
                let stamp = self.cluster.stamp.lock().clone();
                let v = Value::Array(vec![int(stamp.epoch), Value::String(stamp.origin), Value::Bytes(encode_state(self))]);
                self.cluster.send(from, &Message::Reply { id, answer: Ok(v) }, false);
                true
            }
            _ => false,
        }
    }

    /// Tells every other primary where this one's registrations stand (each second).
    pub(crate) fn send_digest(&self) {
        let Some(peers) = self.cluster_peers() else { return };
        let state = encode_state(self);
        let stamp = self.cluster.stamp.lock().clone();
        let q = Query::Custom { name: DIGEST.into(), args: vec![int(stamp.epoch), Value::String(stamp.origin), int(fnv(&state)), int(state.len() as u64)] };
        self.cluster.query(&peers, q, Box::new(|_| {}));
    }

    /// A peer's digest: fetch its state when it is ahead. Equal stamps with different
    /// contents (a node restarted from an older file that had the same epoch) are settled
    /// by the larger state, then the larger digest.
    fn compare_digest(self: &Arc<Self>, from: &str, theirs: Stamp, digest: u64, size: u64) {
        let mine = self.cluster.stamp.lock().clone();
        let state = encode_state(self);
        let ahead = match theirs.cmp(&mine) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => fnv(&state) != digest && (size, digest) > (state.len() as u64, fnv(&state)),
        };
        if !ahead || !self.cluster.begin_fetch(from) {
            return;
        }
        let engine = self.clone();
        let from_id = from.to_string();
        self.cluster.query(&[from.to_string()], Query::Custom { name: STATE.into(), args: vec![] }, Box::new(move |answers| {
            engine.cluster.end_fetch(&from_id);
            let Some((_, Ok(Value::Array(v)))) = answers.into_iter().next() else { return };
            let (Some(epoch), Some(origin), Some(state)) = (get_u64(v.first()), v.get(1).and_then(|o| o.as_str_lossy()), v.get(2).and_then(|s| s.as_bytes())) else { return };
            let state = state.into_owned();
            let e = engine.clone();
            let _ = std::thread::Builder::new().name("rg-cluster-sync".into()).spawn(move || {
                let stamp = Stamp { epoch, origin };
                // Equal stamps, different states: the peer's wins (see above).
                if stamp == *e.cluster.stamp.lock() {
                    e.cluster.stamp.lock().epoch = stamp.epoch.saturating_sub(1);
                }
                if let Err(err) = e.adopt(stamp, &state) {
                    e.host.log(LogLevel::Warning, &format!("rg: the registrations of another shard could not be applied: {err}"));
                }
            });
        }));
    }
}
