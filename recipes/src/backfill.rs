//! Backfill (`backfill: true`): the hashes already under a recipe's prefix are queued too,
//! so the target gets the rows Redis had before the recipe existed.
//!
//! One thread per backfill walks the keyspace with SCAN, in short slices: each slice takes
//! the data lock, SCANs on from the saved cursor, reads each hash (HGETALL) and appends it to
//! the recipe's stream exactly as a capture would (`capture::capture`, so the same stream as
//! the key's live changes), saves the cursor, and lets the lock go after at most
//! `SLICE_KEYS` keys or `SLICE_TIME`. Because a key's current row is read and appended under
//! the lock, its entry sits in its stream in the order of the key's live captures: a write
//! before the slice is captured before it (and the backfill reads the written row), a write
//! after it is captured after it. Entries of a key are applied in stream order, so the target
//! ends with the latest row whatever the interleaving.
//!
//! Keys a live write captured since the backfill started are not queued again (their
//! capture already carries their row): the capture adds them to the *touched* set, and the
//! backfill skips its members. So with exactly-once delivery no row image is applied twice.
//!
//! The position is saved in the keyspace, in the hash `rg:wb:<name>:backfill` (`target`,
//! `state`, `cursor`, `scanned`, `queued`, `total`, `started`, `finished`), written in the
//! same lock as the entries it queued, so the AOF, RDB and replicas hold both or neither. A
//! restarted or promoted server resumes from the saved cursor. In a cluster the hash gets the
//! tag of the lowest slot the node serves (`rg:wb:<name>:backfill:{<tag>}`), and the touched
//! keys are kept in memory.
//!
//! The backfill is tied to the recipe's target (`signature`): when an UPGRADE changes it, the
//! backfill starts again from the beginning; when it ends for a target, nothing is queued again
//! until the target changes. Dropping the recipe (or turning `backfill` off) stops it and
//! deletes its state.

use crate::capture::{capture, EventOp};
use crate::change::{slot_tag, STREAM_PREFIX};
use crate::pipeline::Pipeline;
use crate::spec::{Delivery, Spec};
use engine::{Host, LockedHost, LogLevel, Value};
use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most keys queued under one lock.
pub const SLICE_KEYS: usize = 200;
/// Longest a slice holds the lock (checked after each key).
pub const SLICE_TIME: Duration = Duration::from_micros(1000);
/// SCAN's COUNT (hash-table buckets visited per call).
const SCAN_COUNT: usize = 100;
/// Least pause between two slices, so that the main thread gets the lock.
const MIN_GAP: Duration = Duration::from_micros(200);
/// RANDOMKEY samples behind the estimate of the keys under the prefix.
const SAMPLES: usize = 64;
/// How often the estimate is taken again.
const ESTIMATE_EVERY: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What a backfill is doing, as RG.DUMPREGISTRATIONS and INFO show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum State {
    /// Not begun: its thread has not read its saved state yet, or the server is a replica
    /// that has no state from its primary yet.
    #[default]
    Pending,
    Running,
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Done => "done",
        }
    }
}

/// Progress of a backfill.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub state: State,
    /// Keys under the prefix that SCAN returned (each once), in the current scan.
    pub scanned: u64,
    /// Entries appended to the recipe's streams (hashes not written since it started), over
    /// all its scans.
    pub queued: u64,
    /// Estimate of the keys under the prefix (DBSIZE times the share of a sample of keys
    /// under the prefix, at least `scanned`); once done, `scanned`.
    pub total: u64,
    /// Unix ms it started at, and ended at (0 while running).
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Times the scan started over after a restart or failover.
    pub restarts: u64,
    /// The last error met (a capture that failed), if any.
    pub last_error: Option<String>,
}

impl Progress {
    /// Milliseconds since it started (to its end once done).
    pub fn elapsed_ms(&self) -> u64 {
        if self.started_ms == 0 {
            return 0;
        }
        let end = if self.finished_ms > 0 { self.finished_ms } else { now_ms() };
        end.saturating_sub(self.started_ms)
    }
    /// Keys scanned per second since it started.
    pub fn keys_per_sec(&self) -> u64 {
        (self.scanned * 1000).checked_div(self.elapsed_ms()).unwrap_or(0)
    }
}

/// The saved state (the hash `rg:wb:<name>:backfill`).
#[derive(Clone, Debug, Default, PartialEq)]
struct Saved {
    target: Vec<u8>,
    done: bool,
    /// The server process the cursor belongs to (`Host::shard_id`, new at every start): a
    /// SCAN cursor means nothing to another process, which hashes keys with another seed.
    node: Vec<u8>,
    cursor: u64,
    /// Scans started over (after a restart or failover).
    restarts: u64,
    scanned: u64,
    queued: u64,
    total: u64,
    started: u64,
    finished: u64,
}

impl Saved {
    fn fresh(target: Vec<u8>, node: &str) -> Saved {
        Saved { target, node: node.as_bytes().to_vec(), started: now_ms(), ..Default::default() }
    }

    /// Saved by another server process (before a restart, or on the old primary): its
    /// cursor is no guide here, the scan starts over (keys queued since the backfill started
    /// are skipped by their touched mark, see `Backfill::slice`).
    fn adopt(&mut self, node: &str) {
        if self.node != node.as_bytes() {
            self.node = node.as_bytes().to_vec();
            if !self.done {
                self.cursor = 0;
                self.scanned = 0;
                self.restarts += 1;
            }
        }
    }

    fn parse(v: Value) -> Option<Saved> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = match v {
            Value::Map(m) => m.into_iter().filter_map(|(k, v)| Some((k.as_bytes()?.into_owned(), v.as_bytes()?.into_owned()))).collect(),
            Value::Array(a) => a.chunks(2).filter_map(|c| Some((c.first()?.as_bytes()?.into_owned(), c.get(1)?.as_bytes()?.into_owned()))).collect(),
            _ => return None,
        };
        if pairs.is_empty() {
            return None;
        }
        let mut s = Saved::default();
        let num = |v: &[u8]| std::str::from_utf8(v).ok().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        for (k, v) in pairs {
            match k.as_slice() {
                b"target" => s.target = v,
                b"node" => s.node = v,
                b"restarts" => s.restarts = num(&v),
                b"state" => s.done = v == b"done",
                b"cursor" => s.cursor = num(&v),
                b"scanned" => s.scanned = num(&v),
                b"queued" => s.queued = num(&v),
                b"total" => s.total = num(&v),
                b"started" => s.started = num(&v),
                b"finished" => s.finished = num(&v),
                _ => {}
            }
        }
        Some(s)
    }

    fn args(&self, key: &[u8]) -> Vec<Vec<u8>> {
        let mut a = vec![b"HSET".to_vec(), key.to_vec(), b"target".to_vec(), self.target.clone(), b"state".to_vec(), if self.done { b"done".to_vec() } else { b"running".to_vec() }, b"node".to_vec(), self.node.clone()];
        for (k, v) in [("cursor", self.cursor), ("scanned", self.scanned), ("queued", self.queued), ("total", self.total), ("started", self.started), ("finished", self.finished), ("restarts", self.restarts)] {
            a.push(k.as_bytes().to_vec());
            a.push(v.to_string().into_bytes());
        }
        a
    }

    fn progress(&self, last_error: Option<String>) -> Progress {
        Progress {
            state: if self.done { State::Done } else { State::Running },
            scanned: self.scanned,
            queued: self.queued,
            total: if self.done { self.scanned } else { self.total.max(self.scanned) },
            started_ms: self.started,
            finished_ms: self.finished,
            restarts: self.restarts,
            last_error,
        }
    }
}

/// What a backfill is tied to: when it changes (UPGRADE), the backfill starts again. The
/// target (kind, connection name, table or collection, MongoDB database), the key column, the
/// column mapping, and the keys (prefix, keyPattern). Not the connection's URL (a rotated
/// password changes nothing), nor `types`, `batch`, `delivery` and the like.
pub fn signature(spec: &Spec) -> Vec<u8> {
    let columns = match &spec.columns {
        None => "*".to_string(),
        Some(cols) => cols.iter().map(|(c, f)| format!("{c}={f}")).collect::<Vec<_>>().join(","),
    };
    let pattern = spec.key_pattern.as_ref().map(|(a, b)| format!("{}*{}", a.escape_ascii(), b.escape_ascii())).unwrap_or_default();
    format!(
        "kind={};connection={};table={};database={};keyField={};columns={};allFields={};prefix={};keyPattern={}",
        spec.target.kind.as_str(),
        spec.target.connection.to_ascii_lowercase(),
        spec.target.table,
        spec.target.database.as_deref().unwrap_or(""),
        spec.key_field,
        columns,
        spec.all_fields,
        spec.prefix.escape_ascii(),
        pattern
    )
    .into_bytes()
}

/// The hash that holds a backfill's state on a server that is not a cluster.
pub fn state_key(name: &str) -> Vec<u8> {
    format!("{STREAM_PREFIX}{name}:backfill").into_bytes()
}

/// The set of the keys captured since the backfill started (not a cluster).
pub fn touched_key(name: &str) -> Vec<u8> {
    format!("{STREAM_PREFIX}{name}:backfill:touched").into_bytes()
}

/// The state hash in a cluster, in the slot whose tag is `tag`.
fn cluster_state_key(name: &str, slot: u16) -> Vec<u8> {
    format!("{STREAM_PREFIX}{name}:backfill:{{{}}}", slot_tag(slot)).into_bytes()
}

/// Whether the thread runs, and the target it last finished for.
#[derive(Default)]
struct Control {
    running: bool,
    done_for: Option<Vec<u8>>,
}

pub struct Backfill {
    pub name: String,
    stop: AtomicBool,
    /// Captures record their keys as touched while set (from the recipe's creation with
    /// `backfill` until the backfill is found done).
    active: AtomicBool,
    control: Mutex<Control>,
    progress: Mutex<Progress>,
    cluster: bool,
    /// Cluster: the touched keys (hashed), in memory.
    touched: Mutex<HashSet<u128>>,
    hashers: (RandomState, RandomState),
    /// Cluster: the state hash once found (in the lowest local slot), and the next slot to
    /// probe until then.
    cluster_key: Mutex<(Option<Vec<u8>>, u16)>,
    /// Set once `remove` has deleted the saved state (or found nothing to delete).
    cleaned: AtomicBool,
    /// The backfill of a previous recipe of the same name, whose state must be deleted
    /// before this one reads its own.
    after: Mutex<Option<Arc<Backfill>>>,
}

impl Backfill {
    /// A backfill for recipe `name`; `after`: the removed backfill of an earlier recipe of
    /// that name, whose saved state is deleted first.
    pub fn new(name: String, cluster: bool, after: Option<Arc<Backfill>>) -> Arc<Backfill> {
        Arc::new(Backfill {
            name,
            stop: AtomicBool::new(false),
            active: AtomicBool::new(true),
            control: Default::default(),
            progress: Default::default(),
            cluster,
            touched: Default::default(),
            hashers: (RandomState::new(), RandomState::new()),
            cluster_key: Default::default(),
            cleaned: AtomicBool::new(false),
            after: Mutex::new(after),
        })
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().clone()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.active.store(false, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A 128-bit hash of a key with this backfill's random keys: a set of these tells the
    /// keys apart like the keys themselves (a collision is about 2^-64 likely among a
    /// billion keys, and cannot be crafted), in 16 bytes a key.
    fn hash(&self, key: &[u8]) -> u128 {
        ((self.hashers.0.hash_one(key) as u128) << 64) | self.hashers.1.hash_one(key) as u128
    }

    /// A live capture of `key` (inside the write, with the server locked): while the
    /// backfill runs, the key is remembered so that the backfill does not queue it again.
    pub fn touch(&self, locked: &dyn LockedHost, key: &[u8]) {
        if !self.active.load(Ordering::SeqCst) {
            return;
        }
        if self.cluster {
            let h = self.hash(key);
            self.touched.lock().insert(h);
        } else {
            let set = touched_key(&self.name);
            let _ = locked.call(None, &[b"SADD", &set, key]);
        }
    }

    /// Starts the backfill's thread unless it runs or already ended for the recipe's
    /// current target. Called after the pipeline got its current spec.
    pub fn ensure_running(self: &Arc<Self>, p: &Arc<Pipeline>, host: &Arc<dyn Host>) {
        let spec = p.spec();
        if !spec.backfill || self.stopped() {
            return;
        }
        let sig = signature(&spec);
        let mut c = self.control.lock();
        if c.running || c.done_for.as_deref() == Some(sig.as_slice()) {
            return;
        }
        c.running = true;
        self.active.store(true, Ordering::SeqCst);
        let (b, p2, host2) = (self.clone(), p.clone(), host.clone());
        let spawned = std::thread::Builder::new().name(format!("rg-bf-{}", self.name)).spawn(move || {
            // A panic must not leave `running` set (nothing would start it again).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.run(&p2, &*host2)));
            if let Err(e) = r {
                let what = e.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| e.downcast_ref::<String>().cloned()).unwrap_or_default();
                host2.log(LogLevel::Warning, &format!("rg: recipe '{}': its backfill thread failed ({what}); it starts again at the next change of the sessions", b.name));
                b.control.lock().running = false;
            }
        });
        if let Err(e) = spawned {
            c.running = false;
            host.log(LogLevel::Warning, &format!("rg: recipe '{}': could not start its backfill thread: {e}", self.name));
        }
    }

    /// The thread: slices until done, stopped, or `backfill` turned off.
    fn run(&self, p: &Arc<Pipeline>, host: &dyn Host) {
        // Keys already queued by this thread (SCAN may return a key twice while the table
        // shrinks), and the target they were queued for.
        let mut seen: HashSet<u128> = HashSet::new();
        let mut seen_for: Vec<u8> = Vec::new();
        let mut last_estimate: Option<Instant> = None;
        let mut peeked = false;
        if let Some(before) = self.after.lock().take() {
            let until = Instant::now() + Duration::from_secs(30);
            while !before.cleaned.load(Ordering::SeqCst) && Instant::now() < until && !self.stopped() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        loop {
            if self.stopped() || p.stopped() {
                break;
            }
            let spec = p.spec();
            if !spec.backfill {
                break;
            }
            let sig = signature(&spec);
            // Bounded: no more than `high` changes wait in the streams, so the backfill never
            // makes the recipe refuse writes (maxBacklog) nor fills memory faster than the
            // target takes the rows.
            let high = high_water(&spec);
            let backlog = p.backlog.load(Ordering::Relaxed).max(0) as u64;
            if backlog >= high {
                if !peeked {
                    // Waiting from the start (a restart with a backlog): its saved progress
                    // is shown meanwhile.
                    peeked = true;
                    let locked = host.lock(p.db());
                    if let Some(s) = self.load(&*locked, locked.is_primary()).filter(|s| s.target == sig) {
                        *self.progress.lock() = s.progress(None);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            peeked = true;
            let budget = ((high - backlog) as usize).min(SLICE_KEYS);
            let db = p.db();
            let locked = host.lock(db);
            let held = Instant::now();
            if self.stopped() || p.stopped() {
                break;
            }
            if !locked.is_primary() {
                // A replica: the primary's progress, as replicated.
                let saved = self.load(&*locked, false);
                drop(locked);
                if let Some(s) = saved.filter(|s| s.target == sig) {
                    *self.progress.lock() = s.progress(None);
                    if s.done && self.finish(p, &sig) {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let Some(key) = self.locate(&*locked) else {
                // Cluster: still looking for a local slot (the probe goes on at the next lock).
                drop(locked);
                std::thread::sleep(MIN_GAP);
                continue;
            };
            let node = host.shard_id();
            let mut saved = match self.load(&*locked, true) {
                Some(mut s) if s.target == sig => {
                    s.adopt(&node);
                    s
                }
                Some(_) => {
                    // A new target (UPGRADE): from the beginning. The keys touched before
                    // went to the old target, so they are queued again for the new one.
                    self.forget_touched(&*locked);
                    Saved::fresh(sig.clone(), &node)
                }
                // The first run: the keys touched since the recipe was created are in their
                // streams already.
                None => Saved::fresh(sig.clone(), &node),
            };
            if !saved.done {
                self.active.store(true, Ordering::SeqCst);
            }
            if seen_for != sig {
                seen.clear();
                seen_for = sig.clone();
            }
            if saved.done {
                // Ended earlier (before a restart, or on the old primary).
                self.active.store(false, Ordering::SeqCst);
                self.forget_touched(&*locked);
                drop(locked);
                *self.progress.lock() = saved.progress(None);
                if self.finish(p, &sig) {
                    return;
                }
                continue;
            }
            if saved.cursor == 0 && saved.scanned == 0 || last_estimate.is_none_or(|t| t.elapsed() >= ESTIMATE_EVERY) {
                saved.total = estimate(&*locked, &spec.prefix).max(saved.scanned);
                last_estimate = Some(Instant::now());
            }
            let error = self.slice(&*locked, p, &spec, &mut saved, &mut seen, budget, held);
            if error.is_none() {
                if saved.cursor == 0 {
                    saved.done = true;
                    saved.finished = now_ms();
                    self.active.store(false, Ordering::SeqCst);
                    self.forget_touched(&*locked);
                }
                let args = saved.args(&key);
                let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
                let _ = locked.call(None, &refs);
            }
            drop(locked);
            let took = held.elapsed();
            let last_error = error.clone().or_else(|| self.progress.lock().last_error.clone());
            *self.progress.lock() = saved.progress(last_error);
            if let Some(e) = error {
                host.log(LogLevel::Warning, &format!("rg: recipe '{}': backfill: {e} (trying again in 1 s)", self.name));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            if saved.done {
                host.log(LogLevel::Notice, &format!("rg: recipe '{}': backfill done: {} keys scanned, {} queued", self.name, saved.scanned, saved.queued));
                if self.finish(p, &sig) {
                    return;
                }
                continue;
            }
            // The main thread's turn: at least as long as the lock was held.
            std::thread::sleep(took.clamp(MIN_GAP, Duration::from_millis(20)));
        }
        self.control.lock().running = false;
    }

    /// Ends the thread if the recipe's target is still the one it finished for (an UPGRADE
    /// may have changed it meanwhile; then it goes on). True: the thread must return.
    fn finish(&self, p: &Pipeline, sig: &[u8]) -> bool {
        let mut c = self.control.lock();
        let spec = p.spec();
        if spec.backfill && signature(&spec) != sig && !self.stopped() {
            return false;
        }
        c.done_for = Some(sig.to_vec());
        c.running = false;
        true
    }

    /// One slice: SCANs on from `saved.cursor` and queues hashes until `budget` keys are
    /// queued, SLICE_TIME has passed since `held`, or the keyspace is done (cursor 0).
    /// Updates `saved`; an error (a capture that failed) leaves the cursor where the slice
    /// began, and the keys it had queued are then remembered in `seen`.
    #[allow(clippy::too_many_arguments)]
    fn slice(&self, locked: &dyn LockedHost, p: &Pipeline, spec: &Spec, saved: &mut Saved, seen: &mut HashSet<u128>, budget: usize, held: Instant) -> Option<String> {
        let pattern = engine::prefix_pattern(&spec.prefix);
        // Exactly-once: the keys queued are remembered as touched too, so that a scan started
        // over after a restart or failover does not queue them again (no row image is applied
        // twice); at-least-once writes them again instead of keeping that set.
        let remember = spec.delivery == Delivery::ExactlyOnce && !self.cluster;
        let touched = if self.cluster {
            None
        } else {
            let set = touched_key(&self.name);
            let n = locked.call(None, &[b"EXISTS", &set]).ok().and_then(|v| v.as_i64()).unwrap_or(0);
            (n > 0 || remember).then_some(set)
        };
        let mut work = saved.clone();
        let mut queued = 0usize;
        loop {
            let (next, keys) = match engine::scan(locked, None, work.cursor, &pattern, SCAN_COUNT) {
                Ok(r) => r,
                Err(e) => return Some(format!("SCAN failed: {e}")),
            };
            for key in keys {
                if key.starts_with(STREAM_PREFIX.as_bytes()) {
                    continue;
                }
                if !seen.insert(self.hash(&key)) {
                    continue;
                }
                work.scanned += 1;
                if self.was_touched(locked, touched.as_deref(), &key) {
                    continue;
                }
                match capture(locked, spec, EventOp::Read, &key, self.cluster) {
                    Ok(Some(c)) => {
                        p.captured(&c.stream);
                        if let (true, Some(set)) = (remember, touched.as_deref()) {
                            let _ = locked.call(None, &[b"SADD", set, &key]);
                        }
                        work.queued += 1;
                        queued += 1;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // As a live capture that failed: the stream is watched, writes to the
                        // recipe's keys are refused until it is a stream again.
                        p.add_stream(crate::change::stream_key(&spec.name, &key, self.cluster));
                        p.capture_failed(e.clone());
                        // Queued again after the fix (the cursor stays).
                        seen.remove(&self.hash(&key));
                        return Some(format!("'{}' could not be queued: {e}", String::from_utf8_lossy(&key)));
                    }
                }
            }
            work.cursor = next;
            if next == 0 || queued >= budget || held.elapsed() >= SLICE_TIME {
                break;
            }
        }
        *saved = work;
        None
    }

    fn was_touched(&self, locked: &dyn LockedHost, set: Option<&[u8]>, key: &[u8]) -> bool {
        if self.cluster {
            let h = self.hash(key);
            return self.touched.lock().contains(&h);
        }
        match set {
            Some(set) => matches!(locked.call(None, &[b"SISMEMBER", set, key]), Ok(Value::Int(1)) | Ok(Value::Bool(true))),
            None => false,
        }
    }

    /// The state hash, if found (in a cluster, once a local slot is known).
    fn locate(&self, locked: &dyn LockedHost) -> Option<Vec<u8>> {
        if !self.cluster {
            return Some(state_key(&self.name));
        }
        let mut k = self.cluster_key.lock();
        if k.0.is_none() {
            // A part of the slots per lock; from slot 0 again once all were tried.
            let (found, next) = probe_local_slot(locked, &self.name, k.1, PROBE_SLOTS);
            k.0 = found.map(|slot| cluster_state_key(&self.name, slot));
            k.1 = next;
        }
        k.0.clone()
    }

    /// The saved state (None: none, or not readable yet).
    fn load(&self, locked: &dyn LockedHost, primary: bool) -> Option<Saved> {
        let key = if primary || !self.cluster { self.locate(locked)? } else { self.cluster_key.lock().0.clone()? };
        Saved::parse(locked.call(None, &[b"HGETALL", &key]).ok()?)
    }

    fn forget_touched(&self, locked: &dyn LockedHost) {
        if self.cluster {
            self.touched.lock().clear();
        } else {
            let _ = locked.call(None, &[b"DEL", &touched_key(&self.name)]);
        }
    }

    /// The recipe went away or turned `backfill` off: its thread stops, and on a primary its
    /// saved state and touched keys are deleted (a later backfill starts from the beginning).
    pub fn remove(self: &Arc<Self>, host: &Arc<dyn Host>, db: u32) {
        self.stop();
        let (b, host) = (self.clone(), host.clone());
        let spawned = std::thread::Builder::new().name(format!("rg-bf-{}-end", self.name)).spawn(move || {
            // (A cluster probes its slots a part per lock until it finds its state's.)
            for _ in 0..=16384 / PROBE_SLOTS {
                let locked = host.lock(db);
                if !locked.is_primary() {
                    break;
                }
                let keys = if b.cluster { b.locate(&*locked).into_iter().collect() } else { vec![touched_key(&b.name), state_key(&b.name)] };
                if keys.is_empty() {
                    continue;
                }
                for k in keys {
                    let _ = locked.call(None, &[b"DEL", &k]);
                }
                break;
            }
            b.cleaned.store(true, Ordering::SeqCst);
        });
        if spawned.is_err() {
            self.cleaned.store(true, Ordering::SeqCst);
        }
    }

    /// Has `remove` finished with the saved state?
    pub fn cleaned(&self) -> bool {
        self.cleaned.load(Ordering::SeqCst)
    }
}

/// How many changes may wait in the recipe's streams before the backfill waits: ten batches
/// (at least 5000), and at most half of `maxBacklog`.
pub fn high_water(spec: &Spec) -> u64 {
    let mut high = (spec.batch as u64 * 10).max(5000);
    if spec.max_backlog > 0 {
        high = high.min(spec.max_backlog / 2);
    }
    high.max(1)
}

/// DBSIZE times the share of SAMPLES random keys that are under `prefix`.
fn estimate(locked: &dyn LockedHost, prefix: &[u8]) -> u64 {
    let size = locked.call(None, &[b"DBSIZE"]).ok().and_then(|v| v.as_i64()).unwrap_or(0).max(0) as u64;
    if size == 0 {
        return 0;
    }
    let (mut hits, mut tries) = (0u64, 0u64);
    for _ in 0..SAMPLES {
        match locked.call(None, &[b"RANDOMKEY"]).ok().and_then(|v| v.as_bytes().map(|b| b.into_owned())) {
            Some(k) => {
                tries += 1;
                if k.starts_with(prefix) && !k.starts_with(STREAM_PREFIX.as_bytes()) {
                    hits += 1;
                }
            }
            None => break,
        }
    }
    if tries == 0 {
        return 0;
    }
    size * hits / tries
}

/// Slots probed per lock while looking for a local one.
const PROBE_SLOTS: u16 = 1024;

/// Cluster: the first slot this node serves among `count` slots from `from` (a key in a slot
/// of another node is refused), and where to go on if there is none.
fn probe_local_slot(locked: &dyn LockedHost, name: &str, from: u16, count: u16) -> (Option<u16>, u16) {
    let end = from.saturating_add(count).min(16384);
    let found = (from..end).find(|&slot| matches!(locked.call(None, &[b"EXISTS", &cluster_state_key(name, slot)]), Ok(Value::Int(_))));
    (found, if end >= 16384 { 0 } else { end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        let target = Value::Map(vec![(Value::from("kind"), Value::from("postgres")), (Value::from("connection"), Value::from("pg")), (Value::from("table"), Value::from("users"))]);
        let opts = Value::Map(vec![(Value::from("name"), Value::from("users")), (Value::from("prefix"), Value::from("user:")), (Value::from("target"), target), (Value::from("backfill"), Value::Bool(true))]);
        Spec::parse("writeBehind", &opts).unwrap()
    }

    #[test]
    fn the_signature_follows_the_target_and_keys_only() {
        let a = spec();
        let base = signature(&a);
        let mut b = a.clone();
        b.batch = 7;
        b.flush_ms = 1;
        b.target.types = vec![("age".into(), crate::ColType::Int)];
        assert_eq!(signature(&b), base, "batch, flushMs and types are not the target");
        let mut c = a.clone();
        c.target.connection = "PG".into();
        assert_eq!(signature(&c), base, "connection names are case-insensitive");
        for change in [
            |s: &mut Spec| s.target.table = "people".into(),
            |s: &mut Spec| s.target.connection = "other".into(),
            |s: &mut Spec| s.target.kind = crate::TargetKind::MySql,
            |s: &mut Spec| s.key_field = "uid".into(),
            |s: &mut Spec| s.columns = Some(vec![("name".into(), "n".into())]),
            |s: &mut Spec| s.prefix = b"u:".to_vec(),
            |s: &mut Spec| s.key_pattern = Some((b"user:{".to_vec(), b"}".to_vec())),
            |s: &mut Spec| s.all_fields = true,
            |s: &mut Spec| s.target.database = Some("x".into()),
        ] {
            let mut d = a.clone();
            change(&mut d);
            assert_ne!(signature(&d), base);
        }
    }

    #[test]
    fn saved_state_round_trips() {
        let s = Saved { target: b"t=1;\xff".to_vec(), done: true, node: b"abc".to_vec(), cursor: 12345678901234, restarts: 2, scanned: 3, queued: 2, total: 9, started: 5, finished: 6 };
        let args = s.args(b"k");
        assert_eq!(&args[..2], &[b"HSET".to_vec(), b"k".to_vec()]);
        let pairs: Vec<Value> = args[2..].iter().map(|a| Value::from_bytes(a.clone())).collect();
        assert_eq!(Saved::parse(Value::Array(pairs)), Some(s.clone()));
        assert_eq!(Saved::parse(Value::Map(vec![])), None);
        let p = s.progress(None);
        assert_eq!((p.state, p.scanned, p.total), (State::Done, 3, 3));
        // Another process: a cursor of a running scan means nothing there.
        let mut r = Saved { done: false, ..s.clone() };
        r.adopt("abc");
        assert_eq!((r.cursor, r.scanned, r.restarts), (12345678901234, 3, 2));
        r.adopt("def");
        assert_eq!((r.cursor, r.scanned, r.restarts, r.queued, r.node.as_slice()), (0, 0, 3, 2, &b"def"[..]));
        let mut d = s.clone();
        d.adopt("def");
        assert_eq!((d.cursor, d.restarts, d.done), (12345678901234, 2, true));
    }

    #[test]
    fn prefixes_match_literally_and_the_backlog_stays_bounded() {
        assert_eq!(engine::prefix_pattern(b"a*b?[c]\\:"), b"a\\*b\\?\\[c\\]\\\\:*".to_vec());
        let mut s = spec();
        assert_eq!(high_water(&s), 5000);
        s.batch = 2000;
        assert_eq!(high_water(&s), 20000);
        s.max_backlog = 1000;
        assert_eq!(high_water(&s), 500);
        s.max_backlog = 1;
        assert_eq!(high_water(&s), 1);
        s.max_backlog = 0;
        assert_eq!(high_water(&s), 20000);
    }
}
