//! Apply: one thread per recipe reads its streams in batches, coalesces each key's
//! changes, writes them to the target and only then trims what the target committed.
//!
//! - A partial batch waits up to `flushMs` (from its oldest entry) to fill.
//! - Target unreachable: the batch is tried again with backoff (100 ms doubling to 5 s),
//!   without limit; nothing is trimmed, so nothing is lost.
//! - Target rejects the batch: it is applied row by row; a row it rejects is tried again
//!   (with the rows before it committed and trimmed) up to `maxRetries` times, then written
//!   to the dead-letter stream with the error, and the rest go on. A value that does not
//!   convert to its column's type cannot succeed later: it is dead-lettered at once.
//! - Exactly-once: each transaction also stores the id of its last row in the target, and
//!   rows at or before the stored id are skipped (a replay after a crash applies nothing
//!   twice).

use crate::change::{coalesce, dead_letter_key, is_stream_of, parse_entry, Change, Op, STREAM_PREFIX};
use crate::convert::{convert, Cell, ColType};
use crate::spec::{Delivery, Spec};
use crate::target::{Checkpoint, Row, Schema, Target, TargetError};
use engine::streams::{format_id, parse_id, StreamId};
use engine::{Config, Host, LockedHost, LogLevel, Registration, Value};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A client waiting for its change to reach the target (write-through).
pub struct Waiter {
    pub stream: Vec<u8>,
    /// The key written (a dead-lettered change fails its waiters).
    pub key: Vec<u8>,
    pub id: StreamId,
    pub deadline: Instant,
    pub done: Box<dyn FnOnce(Result<(), String>) + Send>,
}

/// A change that will never be applied, and why.
struct Dead {
    id: StreamId,
    change: Option<Change>,
    error: String,
}

/// Counters shown by RG.DUMPREGISTRATIONS and INFO.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub applied: u64,
    pub batches: u64,
    pub retries: u64,
    pub dead_lettered: u64,
    pub capture_errors: u64,
    pub last_error: Option<String>,
    pub connected: bool,
    /// Age of the oldest change not yet applied (0 when none waits).
    pub lag_ms: u64,
}

pub struct Pipeline {
    pub name: String,
    spec: RwLock<(Arc<Spec>, Arc<Registration>, u32)>,
    streams: Mutex<BTreeSet<Vec<u8>>>,
    wake: Condvar,
    woken: Mutex<bool>,
    stop: AtomicBool,
    /// This server was a primary at the pipeline's last round (only a primary refuses
    /// writes beyond `maxBacklog`).
    pub primary: AtomicBool,
    /// Changes captured and not yet trimmed, over all its streams.
    pub backlog: AtomicI64,
    pub captured: AtomicU64,
    status: Mutex<Status>,
    waiters: Mutex<Vec<Waiter>>,
    /// Why changes cannot be captured (a stream key of another type): while set, writes to
    /// the recipe's keys are refused rather than acknowledged without capture.
    broken: Mutex<Option<String>>,
    /// `streams` holds every stream of the recipe in the keyspace (a first `discover` ran
    /// on a primary): RG.RECIPE WAIT need not look for them itself.
    discovered: AtomicBool,
    /// The URL the apply thread last connected (or tried to) with, read from its connection
    /// setting or the variable or file that setting names: kept only to scrub errors.
    url: Mutex<Option<String>>,
    /// Streams and the id before which their entries were committed by the target, to be
    /// trimmed with the next lock (see `trim`).
    trims: Mutex<Vec<(Vec<u8>, StreamId)>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Pipeline {
    pub fn new(name: String, spec: Arc<Spec>, reg: Arc<Registration>, db: u32) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            name,
            spec: RwLock::new((spec, reg, db)),
            streams: Default::default(),
            wake: Condvar::new(),
            woken: Mutex::new(false),
            stop: AtomicBool::new(false),
            // Until its first round says otherwise (a replica): writes are wrapped for
            // write-through from the moment the recipe exists.
            primary: AtomicBool::new(true),
            backlog: AtomicI64::new(0),
            captured: AtomicU64::new(0),
            status: Default::default(),
            waiters: Default::default(),
            broken: Default::default(),
            discovered: AtomicBool::new(false),
            url: Default::default(),
            trims: Default::default(),
        })
    }

    pub fn spec(&self) -> Arc<Spec> {
        self.spec.read().0.clone()
    }
    pub fn db(&self) -> u32 {
        self.spec.read().2
    }
    /// A new version of the recipe (UPGRADE): same name, same streams, new options.
    pub fn update(&self, spec: Arc<Spec>, reg: Arc<Registration>, db: u32) {
        *self.spec.write() = (spec, reg, db);
        self.notify();
    }
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify();
    }
    pub fn notify(&self) {
        *self.woken.lock() = true;
        self.wake.notify_all();
    }

    /// A change was captured into `stream`.
    pub fn captured(&self, stream: &[u8]) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.captured.fetch_add(1, Ordering::Relaxed);
        {
            let mut s = self.streams.lock();
            if !s.contains(stream) {
                s.insert(stream.to_vec());
            }
        }
        self.notify();
    }

    pub fn capture_failed(&self, e: String) {
        *self.broken.lock() = Some(e.clone());
        let mut st = self.status.lock();
        st.capture_errors += 1;
        st.last_error = Some(e);
    }

    /// Why writes to the recipe's keys are refused, if they are.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().clone()
    }

    pub fn add_stream(&self, stream: Vec<u8>) {
        self.streams.lock().insert(stream);
    }

    pub fn wait_for(&self, w: Waiter) {
        self.waiters.lock().push(w);
        self.notify();
    }

    fn sleep(&self, d: Duration) {
        let mut w = self.woken.lock();
        if !*w && !self.stop.load(Ordering::SeqCst) {
            self.wake.wait_for(&mut w, d);
        }
        *w = false;
    }

    /// Interruptible only by stop and by a new value of the recipe's connection (a backoff
    /// must not be cut short by new captures); write-through clients still get their
    /// timeout on time.
    fn back_off(&self, d: Duration, spec: &Spec, config: &Config, generation: u64) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stop.load(Ordering::SeqCst) && config.connection_generation(&spec.target.connection) == generation {
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
            self.expire_waiters(spec);
        }
    }

    /// Finds the recipe's streams in the keyspace (after a restart or promotion).
    pub fn discover(&self, host: &dyn Host) {
        // One lock per SCAN step: a large keyspace is walked without stalling Redis (a
        // stream made meanwhile is added by its capture).
        let pattern = format!("{STREAM_PREFIX}{}*", self.name);
        let (mut found, mut cursor) = (Vec::new(), 0u64);
        loop {
            let locked = host.lock(self.db());
            if !locked.is_primary() {
                return;
            }
            let Ok((next, keys)) = engine::scan(&*locked, None, cursor, pattern.as_bytes(), 250) else { break };
            drop(locked);
            // The lock is not fair: a pause lets the main thread take it between two steps.
            std::thread::sleep(Duration::from_micros(100));
            found.extend(keys.into_iter().filter(|k| is_stream_of(&self.name, k)));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        self.streams.lock().extend(found);
        self.discovered.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// The recipe's streams known so far, and whether they are all of them (a discovery
    /// ran; else the keyspace may hold more, from before a restart or promotion).
    pub fn streams(&self) -> (Vec<Vec<u8>>, bool) {
        let discovered = self.discovered.load(Ordering::SeqCst);
        (self.streams.lock().iter().cloned().collect(), discovered)
    }

    /// Looks at every stream (the lock held): its length, its first entry's id and whether
    /// it is still a stream. Returns the backlog (all lengths), the oldest entry's
    /// millisecond if any, and each stream's length and first id.
    fn survey(&self, locked: &dyn LockedHost, streams: &[Vec<u8>]) -> (i64, Option<u64>, Vec<(i64, Option<String>)>) {
        let (mut backlog, mut oldest, mut ok) = (0i64, None::<u64>, 0);
        let mut heads = Vec::with_capacity(streams.len());
        for stream in streams {
            let mut head = (0, None);
            match locked.call(None, &[b"XLEN", stream]) {
                Ok(Value::Int(n)) => {
                    ok += 1;
                    backlog += n;
                    head.0 = n;
                    if n > 0 {
                        head.1 = locked.read_stream(None, stream, "-", false, 1).ok().and_then(|f| f.into_iter().next()).map(|(id, _)| id);
                        if let Some(id) = head.1.as_deref().and_then(parse_id) {
                            oldest = Some(oldest.map_or(id.0, |o| o.min(id.0)));
                        }
                    }
                }
                Ok(Value::Error(e)) | Err(engine::HostError::Command(e)) => {
                    *self.broken.lock() = Some(format!("'{}' is not a stream ({e}); rename or delete it", String::from_utf8_lossy(stream)));
                }
                _ => {}
            }
            heads.push(head);
        }
        if ok == streams.len() {
            // Every stream is a stream (or gone): captures can be recorded again.
            *self.broken.lock() = None;
        }
        (backlog, oldest, heads)
    }

    /// The apply loop (the recipe's own thread) until `stop()`.
    pub fn run(self: Arc<Self>, host: Arc<dyn Host>, config: Arc<Config>) {
        let mut conn: Option<(Box<dyn Target>, Schema)> = None;
        let mut backoff = Duration::from_millis(100);
        let mut rejections: HashMap<(Vec<u8>, StreamId), u32> = HashMap::new();
        let mut was_primary = false;
        let mut connected_for: Option<Arc<Spec>> = None;
        // The generation of the connection setting last seen (see Config::connection_generation).
        let mut generation_seen = u64::MAX;
        // A stream's next batch, read while the previous one was committed.
        let mut ahead: Option<(Vec<u8>, Vec<(String, Value)>)> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let (spec, reg, db) = self.spec.read().clone();
            // A new version of the recipe (UPGRADE) may name another table, key or
            // connection: connect again.
            if connected_for.as_ref().is_some_and(|c| !Arc::ptr_eq(c, &spec)) {
                conn = None;
            }
            connected_for = Some(spec.clone());
            // The connection was set (RG.CONFIGSET, even to the same value, or a load): connect
            // again with its value now, re-reading an env: or file: reference, and at once
            // rather than after the backoff of the old value's failures.
            let generation = config.connection_generation(&spec.target.connection);
            if generation != generation_seen {
                if generation_seen != u64::MAX && conn.is_some() {
                    host.log(LogLevel::Notice, &format!("rg: write-behind '{}': connection '{}' was set; connecting again", self.name, spec.target.connection));
                }
                conn = None;
                backoff = Duration::from_millis(100);
                generation_seen = generation;
            }
            // One lock for the round: the role, the trims of the batches committed last
            // round, the survey, and the first batch to apply (taking the lock from a thread
            // waits for the main thread's event loop: a busy server makes each costly).
            let locked = host.lock(db);
            let primary = locked.is_primary();
            self.primary.store(primary, Ordering::Relaxed);
            if !primary {
                drop(locked);
                // A replica trims nothing; its new primary applies what is left.
                self.trims.lock().clear();
                was_primary = false;
                self.sleep(Duration::from_millis(200));
                continue;
            }
            if !was_primary {
                // Started, or just promoted: the streams the keyspace holds are ours.
                drop(locked);
                was_primary = true;
                self.discover(&*host);
                continue;
            }
            let trimmed = self.apply_trims(&*locked);
            let streams: Vec<Vec<u8>> = self.streams.lock().iter().cloned().collect();
            let (backlog, oldest, heads) = self.survey(&*locked, &streams);
            let paused = reg.paused.load(Ordering::Relaxed);
            let mut read_ahead: Option<(usize, Result<Vec<(String, Value)>, engine::HostError>)> = None;
            if !paused {
                if let Some(i) = heads.iter().position(|&(n, _)| n > 0) {
                    // The batch read while the previous one was being committed, if the
                    // stream still starts where it did (nothing flushed or re-added since).
                    let read = match ahead.take() {
                        Some((s, entries)) if s == streams[i] && entries.first().is_some_and(|(id, _)| heads[i].1.as_ref() == Some(id)) => Ok(entries),
                        _ => locked.read_stream(None, &streams[i], "-", false, spec.batch),
                    };
                    read_ahead = Some((i, read));
                }
            }
            drop(locked);
            for (stream, min) in trimmed {
                self.resolve_waiters(&stream, min);
            }
            self.backlog.store(backlog, Ordering::Relaxed);
            {
                let mut st = self.status.lock();
                st.connected = conn.is_some();
                st.lag_ms = oldest.map(|o| now_ms().saturating_sub(o)).unwrap_or(0);
            }
            let mut next: Option<Duration> = None;
            let mut failed = false;
            for (i, stream) in streams.iter().enumerate().filter(|(i, _)| !paused && heads[*i].0 > 0) {
                let read = match read_ahead.take() {
                    Some((at, r)) if at == i => r,
                    other => {
                        read_ahead = other;
                        host.lock(db).read_stream(None, stream, "-", false, spec.batch)
                    }
                };
                let entries = match read {
                    Ok(e) => e,
                    Err(e) => {
                        self.status.lock().last_error = Some(format!("reading '{}': {e}", String::from_utf8_lossy(stream)));
                        continue;
                    }
                };
                let Some(first) = entries.first().and_then(|(id, _)| parse_id(id)) else { continue };
                let age = now_ms().saturating_sub(first.0);
                let waited_for = !self.waiters.lock().is_empty();
                if entries.len() < spec.batch && age < spec.flush_ms && !waited_for {
                    let left = Duration::from_millis(spec.flush_ms - age);
                    next = Some(next.map_or(left, |n| n.min(left)));
                    continue;
                }
                let started = Instant::now();
                // While the target commits this batch, the next one is read (the stream holds
                // more than this batch): the Redis lock and the target's commit overlap.
                let after = entries.last().map(|(id, _)| id.clone()).filter(|_| heads[i].0 as usize > entries.len());
                let (result, prefetched) = std::thread::scope(|scope| {
                    let reader = after.map(|last| {
                        let (host, stream, count) = (host.clone(), stream.clone(), spec.batch);
                        scope.spawn(move || host.lock(db).read_stream(None, &stream, &last, true, count))
                    });
                    let result = self.batch(&*host, &config, &spec, db, stream, entries, &mut conn, &mut rejections);
                    let prefetched = reader.and_then(|r| r.join().ok()).and_then(|r| r.ok()).filter(|e| !e.is_empty());
                    (result, prefetched)
                });
                ahead = match (&result, prefetched) {
                    (Ok(_), Some(p)) => Some((stream.clone(), p)),
                    _ => None,
                };
                // Errors may quote the connection URL: its secrets never reach a reply or log
                // (the URL connected with, and the setting's value now if it is a URL).
                let result = result.map_err(|e| scrub(&scrub(&e, self.url.lock().as_deref()), config.connection(&spec.target.connection).filter(|v| !engine::config::is_reference(v)).as_deref()));
                match result {
                    Ok(n) => {
                        backoff = Duration::from_millis(100);
                        reg.record(started.elapsed(), Ok(&[]), false);
                        let mut st = self.status.lock();
                        st.applied += n as u64;
                        st.batches += 1;
                        st.connected = true;
                        next = Some(Duration::ZERO);
                    }
                    Err(e) => {
                        reg.record(started.elapsed(), Err(&e), false);
                        host.log(LogLevel::Warning, &format!("rg: write-behind '{}': {e} (retrying in {} ms)", self.name, backoff.as_millis()));
                        let mut st = self.status.lock();
                        st.retries += 1;
                        st.last_error = Some(e);
                        st.connected = conn.is_some();
                        failed = true;
                        break;
                    }
                }
            }
            self.expire_waiters(&spec);
            if failed {
                // What was committed before the failure is trimmed now, not after the wait.
                self.flush_trims(&*host, db);
                self.back_off(backoff, &spec, &config, generation);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            match next {
                Some(d) if d.is_zero() => {}
                Some(d) => self.sleep(d.min(Duration::from_millis(500))),
                None => self.sleep(Duration::from_millis(500)),
            }
        }
        if self.primary.load(Ordering::Relaxed) {
            self.flush_trims(&*host, self.db());
        }
        // Waiting clients get an answer when the recipe goes away.
        self.answer_waiters(|_| true, || Err(format!("write-through '{}' was removed before the change was applied; it stays in the stream", self.name)));
    }

    /// Takes the waiting clients `pick` selects and gives each its answer.
    fn answer_waiters(&self, pick: impl Fn(&Waiter) -> bool, answer: impl Fn() -> Result<(), String>) {
        let picked: Vec<Waiter> = self.waiters.lock().extract_if(.., |w| pick(w)).collect();
        for w in picked {
            (w.done)(answer());
        }
    }

    fn expire_waiters(&self, spec: &Spec) {
        let now = Instant::now();
        self.answer_waiters(
            |w| w.deadline <= now,
            || Err(format!("write-through '{}': the target did not commit the change within {} ms; it is kept and will be applied later", self.name, spec.timeout_ms)),
        );
    }

    fn resolve_waiters(&self, stream: &[u8], min: StreamId) {
        self.answer_waiters(|w| w.stream == stream && w.id < min, || Ok(()));
    }

    /// Write-through clients whose change of `key` (at or before `id`) was dead-lettered.
    fn fail_waiters(&self, stream: &[u8], key: &[u8], id: StreamId, error: &str) {
        self.answer_waiters(
            |w| w.stream == stream && w.key == key && w.id <= id,
            || Err(format!("write-through '{}': the change cannot be applied; it was moved to the dead-letter stream: {error}", self.name)),
        );
    }

    /// Connects to the recipe's target with its connection's value now: an `env:` variable
    /// or a `file:` is read at each connect, so a new value is picked up whenever the
    /// recipe connects again (after an error, a new value of the setting, an UPGRADE, a
    /// restart or a promotion).
    fn connect(&self, config: &Config, spec: &Spec) -> Result<(Box<dyn Target>, Schema), String> {
        let name = &spec.target.connection;
        let value = config.connection(name).ok_or_else(|| format!("no connection '{name}': set it with RG.CONFIGSET connection.{name} <url> or a module argument"))?;
        let url = engine::config::resolve(&value).map_err(|e| format!("connection '{name}': {e}"))?;
        *self.url.lock() = Some(url.clone());
        let mut target = crate::target::connect(spec, &url).map_err(|e| e.to_string())?;
        let schema = target.schema().map_err(|e| e.to_string())?;
        Ok((target, schema))
    }

    /// One batch of one stream. Ok(rows applied) once everything read was committed (or
    /// dead-lettered) and trimmed; Err to back off and read the stream again.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &self,
        host: &dyn Host,
        config: &Config,
        spec: &Spec,
        db: u32,
        stream: &[u8],
        entries: Vec<(String, Value)>,
        conn: &mut Option<(Box<dyn Target>, Schema)>,
        rejections: &mut HashMap<(Vec<u8>, StreamId), u32>,
    ) -> Result<usize, String> {
        let last = entries.last().and_then(|(id, _)| parse_id(id)).ok_or("bad stream id")?;
        // Changes that can never be applied. They are written to the dead-letter stream
        // only together with the trim that removes them, so a batch tried again does not
        // dead-letter them twice.
        let mut dead: Vec<Dead> = Vec::new();
        let mut changes = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = match fields {
                Value::Map(m) => m.into_iter().filter_map(|(k, v)| Some((k.as_bytes()?.into_owned(), v.as_bytes()?.into_owned()))).collect(),
                _ => Vec::new(),
            };
            match parse_entry(&id, &pairs) {
                Ok(c) => changes.push(c),
                Err(e) => dead.push(Dead { id: parse_id(&id).unwrap_or_default(), change: None, error: e }),
            }
        }
        if conn.is_none() {
            *conn = Some(self.connect(config, spec)?);
        }
        let (target, schema) = conn.as_mut().expect("connected");
        let mut rows = Vec::new();
        // The change each row came from (a dead-lettered row keeps its fields).
        let mut sources = Vec::new();
        for c in coalesce(changes) {
            match row(spec, schema, &c) {
                Ok(r) => {
                    rows.push(r);
                    sources.push(c);
                }
                Err(e) => dead.push(Dead { id: c.id, change: Some(c), error: e }),
            }
        }
        let stream_name = String::from_utf8_lossy(stream).into_owned();
        let ckpt = Checkpoint { recipe: &spec.name, stream: &stream_name };
        let ckpt = (spec.delivery == Delivery::ExactlyOnce).then_some(&ckpt);
        let applied = match target.apply(&rows, ckpt) {
            Ok(n) => n,
            Err(TargetError::Unavailable(e)) => {
                *conn = None;
                return Err(e);
            }
            Err(TargetError::Rejected(_)) => {
                // Find the rows the target refuses: one transaction per row.
                let mut n = 0;
                for (r, source) in rows.iter().zip(&sources) {
                    match target.apply(std::slice::from_ref(r), ckpt) {
                        Ok(k) => n += k,
                        Err(TargetError::Unavailable(e)) => {
                            *conn = None;
                            self.commit(host, db, stream, r.id, dead, rejections)?;
                            return Err(e);
                        }
                        Err(TargetError::Rejected(e)) => {
                            let tries = rejections.entry((stream.to_vec(), r.id)).or_insert(0);
                            *tries += 1;
                            if *tries <= spec.max_retries {
                                // Keep what went through; this row is tried again later.
                                let msg = format!("the target rejected key '{}' (try {} of {}): {e}", String::from_utf8_lossy(&r.key), tries, spec.max_retries + 1);
                                self.commit(host, db, stream, r.id, dead, rejections)?;
                                return Err(msg);
                            }
                            rejections.remove(&(stream.to_vec(), r.id));
                            dead.push(Dead { id: r.id, change: Some(source.clone()), error: e });
                        }
                    }
                }
                n
            }
        };
        self.commit(host, db, stream, (last.0, last.1.saturating_add(1)), dead, rejections)?;
        Ok(applied)
    }

    /// After the target committed everything before `min`: writes the dead letters before
    /// `min`, then trims. (A crash between the two can only write a dead letter twice.)
    fn commit(&self, host: &dyn Host, db: u32, stream: &[u8], min: StreamId, dead: Vec<Dead>, rejections: &mut HashMap<(Vec<u8>, StreamId), u32>) -> Result<(), String> {
        for d in dead.into_iter().filter(|d| d.id < min) {
            self.dead_letter(host, db, stream, &format_id(d.id), d.change.as_ref(), &d.error)?;
        }
        self.trim(stream, min);
        // Rows that went through at last need no count of their rejections.
        rejections.retain(|(s, id), _| s != stream || *id >= min);
        Ok(())
    }

    /// The entries before `min` were committed by the target: they are trimmed with the
    /// next round's lock (or before a back-off or a stop), and the clients that waited for
    /// them answered then.
    fn trim(&self, stream: &[u8], min: StreamId) {
        let mut trims = self.trims.lock();
        match trims.iter_mut().find(|(s, _)| s == stream) {
            Some((_, m)) => *m = (*m).max(min),
            None => trims.push((stream.to_vec(), min)),
        }
    }

    /// Runs the trims `trim` left (the lock held); returns them, for `resolve_waiters` once
    /// the lock is released.
    fn apply_trims(&self, locked: &dyn LockedHost) -> Vec<(Vec<u8>, StreamId)> {
        let trims = std::mem::take(&mut *self.trims.lock());
        for (stream, min) in &trims {
            let id = format_id(*min);
            let _ = locked.call(None, &[b"XTRIM", stream, b"MINID", id.as_bytes()]);
        }
        trims
    }

    /// Runs the pending trims now, under a lock of their own.
    fn flush_trims(&self, host: &dyn Host, db: u32) {
        if self.trims.lock().is_empty() {
            return;
        }
        let locked = host.lock(db);
        let trimmed = if locked.is_primary() { self.apply_trims(&*locked) } else { std::mem::take(&mut *self.trims.lock()) };
        drop(locked);
        for (stream, min) in trimmed {
            self.resolve_waiters(&stream, min);
        }
    }

    /// Writes a change the target will never take to the dead-letter stream.
    fn dead_letter(&self, host: &dyn Host, db: u32, stream: &[u8], id: &str, change: Option<&Change>, error: &str) -> Result<(), String> {
        let dlq = dead_letter_key(stream);
        let mut args: Vec<Vec<u8>> = vec![b"XADD".to_vec(), dlq.clone(), b"*".to_vec(), b"id".to_vec(), id.as_bytes().to_vec(), b"error".to_vec(), error.as_bytes().to_vec()];
        if let Some(c) = change {
            args.extend([b"key".to_vec(), c.key.clone(), b"op".to_vec(), if c.op == Op::Upsert { b"u".to_vec() } else { b"d".to_vec() }]);
            for (f, v) in &c.fields {
                args.push(f.as_bytes().to_vec());
                args.push(v.clone());
            }
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let r = host.lock(db).call(None, &refs);
        match r {
            Ok(Value::Error(e)) | Err(engine::HostError::Command(e)) => Err(format!("writing to the dead-letter stream '{}': {e}", String::from_utf8_lossy(&dlq))),
            Err(e) => Err(format!("writing to the dead-letter stream '{}': {e}", String::from_utf8_lossy(&dlq))),
            Ok(_) => {
                if let Some(c) = change {
                    self.fail_waiters(stream, &c.key, c.id, error);
                }
                self.status.lock().dead_lettered += 1;
                host.log(LogLevel::Warning, &format!("rg: write-behind '{}': entry {id} moved to '{}': {error}", self.name, String::from_utf8_lossy(&dlq)));
                Ok(())
            }
        }
    }
}

/// A change as a row of the target: primary key and typed cells (a full row image: every
/// mapped column, NULL where the hash has no such field). The error is the first value that
/// does not convert.
pub fn row(spec: &Spec, schema: &Schema, c: &Change) -> Result<Row, String> {
    let (row, mut errors) = map_row(spec, schema, c);
    if errors.is_empty() {
        Ok(row)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// `row` with every conversion error (a preview shows them all): the row without the cells
/// that do not convert (a primary key that does not is NULL), and the errors in column order.
pub fn map_row(spec: &Spec, schema: &Schema, c: &Change) -> (Row, Vec<String>) {
    let key_text = String::from_utf8_lossy(&c.key);
    let mut errors = Vec::new();
    let pk = match spec.primary_key(&c.key) {
        None => {
            errors.push(format!("key '{key_text}' does not match the recipe's prefix or keyPattern"));
            Cell::Null
        }
        Some(pk_raw) => convert(pk_raw, column_type(spec, schema, &spec.key_field)).unwrap_or_else(|e| {
            errors.push(format!("key '{key_text}': the primary key {e} (column {})", spec.key_field));
            Cell::Null
        }),
    };
    let mut cells = Vec::new();
    if c.op == Op::Upsert {
        let field = |name: &str| c.fields.iter().find(|(f, _)| f == name).map(|(_, v)| v);
        let mapped: Vec<(String, String)> = match (&spec.columns, &schema.columns) {
            // No mapping on a SQL table: every column of the table, from the field of its name.
            (None, Some(cols)) => cols.iter().filter(|c| **c != spec.key_field).map(|c| (c.clone(), c.clone())).collect(),
            _ => spec.mapped(&c.fields).into_iter().map(|(c, f)| (c.to_string(), f.to_string())).filter(|(c, _)| *c != spec.key_field).collect(),
        };
        for (col, f) in mapped {
            if let Some(cols) = &schema.columns {
                if !cols.contains(&col) {
                    // allFields on a SQL table: fields without a column are left out.
                    if spec.columns.as_ref().is_none_or(|m| !m.iter().any(|(c, _)| *c == col)) {
                        continue;
                    }
                }
            }
            match field(&f) {
                None => cells.push((col, Cell::Null)),
                Some(v) => match convert(v, column_type(spec, schema, &col)) {
                    Ok(cell) => cells.push((col, cell)),
                    Err(e) => errors.push(format!("key '{key_text}': field '{f}' {e} (column {col})")),
                },
            }
        }
    }
    (Row { id: c.id, key: c.key.clone(), op: c.op, pk, cells }, errors)
}

/// The type a column's values are converted to: from `types`, else the table's, else text.
pub fn column_type(spec: &Spec, schema: &Schema, col: &str) -> ColType {
    spec.target.types.iter().find(|(c, _)| c == col).map(|(_, t)| *t).or_else(|| schema.types.get(col).copied()).unwrap_or(ColType::Text)
}

/// `message` without the connection URL or its secrets (password, query), however the
/// driver quoted them.
pub fn scrub(message: &str, url: Option<&str>) -> String {
    let Some(url) = url else { return message.to_string() };
    let mut out = message.replace(url, &engine::config::redact(url));
    for secret in engine::config::secrets(url) {
        out = out.replace(&secret, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_never_carry_the_connection_secret() {
        let url = "postgresql://app:hunter2@db:5432/x";
        let e = super::scrub("could not connect to postgresql://app:hunter2@db:5432/x: password hunter2 rejected", Some(url));
        assert_eq!(e, "could not connect to postgresql://app:***@db:5432/x: password *** rejected");
        assert_eq!(super::scrub("plain", None), "plain");
        // Percent-encoded in the URL, decoded by the driver.
        let url = "postgres://app:hun%2Fter%40@db/x?sslmode=disable";
        let e = super::scrub("connect postgres://app:hun%2Fter%40@db/x?sslmode=disable failed: password 'hun/ter@' rejected (sslmode=disable)", Some(url));
        assert_eq!(e, "connect postgres://app:***@db/x?*** failed: password '***' rejected (***)");
    }
}
