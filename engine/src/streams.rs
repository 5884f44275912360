//! Stream consumers of StreamReader registrations: each (registration, stream) pair reads
//! the stream in batches after its last processed id, runs the registration's steps on a
//! worker, and moves its position only once a batch succeeded (at-least-once). Positions are
//! kept with the registration, saved with the session and sent to replicas and the AOF.

use crate::session::{FailPolicy, Registration, Session};
use crate::executor::stream_record;
use crate::{Engine, Value};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stream id, ordered.
pub type StreamId = (u64, u64);

pub fn parse_id(s: &str) -> Option<StreamId> {
    let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub fn format_id(id: StreamId) -> String {
    format!("{}-{}", id.0, id.1)
}

/// Where one registration stands on one stream.
#[derive(Clone, Debug, Default)]
pub struct Consumer {
    /// Last id whose batch succeeded (or was given up on with `continue`).
    pub last_id: StreamId,
    /// A job is reading or running this consumer.
    pub running: bool,
    /// New entries arrived while a job ran: it goes round again.
    pub again: bool,
    /// When the oldest entry waiting for a batch to fill was noticed.
    pub waiting_since: Option<Instant>,
    /// Last batch failure (for RG.DUMPREGISTRATIONS).
    pub last_error: Option<String>,
}

/// Consumers of one registration, by stream key.
#[derive(Default)]
pub struct Consumers {
    pub map: Mutex<BTreeMap<Vec<u8>, Consumer>>,
}

impl Consumers {
    pub fn positions(&self) -> Vec<(Vec<u8>, String)> {
        self.map.lock().iter().map(|(k, c)| (k.clone(), format_id(c.last_id))).collect()
    }
    pub fn set_position(&self, stream: &[u8], id: StreamId) {
        let mut m = self.map.lock();
        let c = m.entry(stream.to_vec()).or_default();
        if id > c.last_id {
            c.last_id = id;
        }
    }
}

/// Runs closures at given times (batch time bounds, retries) on one background thread.
pub struct Timers {
    queue: Mutex<Vec<(Instant, Box<dyn FnOnce() + Send>)>>,
    wake: Condvar,
}

impl Timers {
    pub fn start() -> Arc<Timers> {
        let t = Arc::new(Timers { queue: Mutex::new(Vec::new()), wake: Condvar::new() });
        let weak = Arc::downgrade(&t);
        std::thread::Builder::new()
            .name("rg-timers".into())
            .spawn(move || loop {
                let Some(t) = weak.upgrade() else { return };
                let due: Vec<Box<dyn FnOnce() + Send>> = {
                    let mut q = t.queue.lock();
                    let now = Instant::now();
                    let next = q.iter().map(|(at, _)| *at).min();
                    match next {
                        Some(at) if at <= now => {
                            let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *q).into_iter().partition(|(at, _)| *at <= now);
                            *q = rest;
                            ready.into_iter().map(|(_, f)| f).collect()
                        }
                        Some(at) => {
                            t.wake.wait_for(&mut q, at - now);
                            Vec::new()
                        }
                        None => {
                            t.wake.wait_for(&mut q, Duration::from_millis(500));
                            Vec::new()
                        }
                    }
                };
                for f in due {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                }
            })
            .expect("spawn timer thread");
        t
    }

    pub fn at(&self, when: Instant, f: Box<dyn FnOnce() + Send>) {
        self.queue.lock().push((when, f));
        self.wake.notify_one();
    }
}

impl Engine {
    /// Something was added to `stream` (or may be waiting in it): makes sure a job will
    /// read it for `reg`.
    pub fn stream_ready(self: &Arc<Self>, session: Arc<Session>, reg: Arc<Registration>, stream: Vec<u8>) {
        {
            let mut m = reg.consumers.map.lock();
            let c = m.entry(stream.clone()).or_default();
            if c.running {
                c.again = true;
                return;
            }
            c.running = true;
            c.again = false;
        }
        let (engine, job_reg, job_stream) = (self.clone(), reg.clone(), stream.clone());
        let queued = self.submit_job(Box::new(move || engine.consume(&session, &job_reg, &job_stream)));
        if !queued {
            if let Some(c) = reg.consumers.map.lock().get_mut(&stream) {
                c.running = false;
            }
        }
    }

    /// The consumer job: reads batches after the position and runs the steps on them until
    /// the stream is drained, a batch must wait to fill, or a failure stops it.
    fn consume(self: &Arc<Self>, session: &Arc<Session>, reg: &Arc<Registration>, stream: &[u8]) {
        let Some(opts) = reg.spec.trigger.stream_options().cloned() else { return };
        loop {
            // A dropped or upgraded session's consumers stop.
            let current = self.sessions.get(&session.id).is_some_and(|s| s.version == session.version && s.registrations.iter().any(|r| Arc::ptr_eq(r, reg)));
            let last = reg.consumers.map.lock().get(stream).map(|c| c.last_id).unwrap_or_default();
            let (entries, primary) = {
                let locked = self.host.lock(session.db);
                if !locked.is_primary() || !current || reg.paused.load(std::sync::atomic::Ordering::Relaxed) {
                    (Ok(Vec::new()), false)
                } else {
                    // With the owner's permissions: a stream its owner may not read (a key
                    // pattern that allows the prefix but not this name) stops with the error.
                    (locked.read_stream(session.user.as_deref(), stream, &format_id(last), true, opts.batch), true)
                }
            };
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    self.stop_consumer(reg, stream, Some(e.to_string()));
                    return;
                }
            };
            if entries.is_empty() || !primary {
                if self.finish_round(reg, stream) {
                    continue;
                }
                return;
            }
            // A partial batch waits (up to `duration`) for more entries.
            if entries.len() < opts.batch && opts.duration_ms > 0 {
                let waited = {
                    let mut m = reg.consumers.map.lock();
                    let c = m.entry(stream.to_vec()).or_default();
                    let since = *c.waiting_since.get_or_insert_with(Instant::now);
                    since.elapsed()
                };
                let bound = Duration::from_millis(opts.duration_ms);
                if waited < bound {
                    self.retry_later(session, reg, stream, bound - waited);
                    return;
                }
            }
            let last_in_batch = entries.last().and_then(|(id, _)| parse_id(id)).unwrap_or(last);
            let records: Vec<Value> = entries
                .into_iter()
                .map(|(id, fields)| stream_record(stream, id, fields))
                .collect();
            let outcome = match self.fire(self.host.clone(), session, reg, records) {
                Ok(out) if out.errors.is_empty() => Ok(()),
                Ok(out) => Err(out.errors.join("; ")),
                Err(e) => Err(e.message),
            };
            match (outcome, opts.on_failed) {
                (Ok(()), _) => self.advance(session, reg, stream, last_in_batch, opts.trim),
                (Err(e), FailPolicy::Continue) => {
                    self.set_error(reg, stream, e);
                    self.advance(session, reg, stream, last_in_batch, opts.trim);
                }
                (Err(e), FailPolicy::Retry) => {
                    self.set_error(reg, stream, e);
                    self.retry_later(session, reg, stream, Duration::from_millis(opts.retry_interval_ms));
                    return;
                }
                (Err(e), FailPolicy::Abort) => {
                    reg.paused.store(true, std::sync::atomic::Ordering::Relaxed);
                    reg.halted.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.stop_consumer(reg, stream, Some(e));
                    return;
                }
            }
        }
    }

    /// Moves the position past a processed batch: the new position (and the trim of what
    /// was processed) is made under the lock and sent to replicas and the AOF.
    fn advance(&self, session: &Session, reg: &Registration, stream: &[u8], id: StreamId, trim: bool) {
        reg.consumers.set_position(stream, id);
        if let Some(c) = reg.consumers.map.lock().get_mut(stream) {
            c.waiting_since = None;
        }
        let locked = self.host.lock(session.db);
        let pos = format_id(id);
        locked.replicate(&[STREAM_POSITION.as_bytes(), session.id.as_bytes(), reg.index.to_string().as_bytes(), stream, pos.as_bytes()]);
        if trim && !stream.starts_with(RECIPE_STREAMS) {
            // Only what every consumer of this stream has processed is trimmed.
            let slowest = self
                .sessions
                .stream_triggers(stream)
                .iter()
                .map(|(_, r)| r.consumers.map.lock().get(stream).map(|c| c.last_id).unwrap_or_default())
                .min()
                .unwrap_or(id);
            if slowest > (0, 0) {
                let next = format_id((slowest.0, slowest.1.saturating_add(1)));
                let _ = locked.call(None, &[b"XTRIM", stream, b"MINID", next.as_bytes()]);
            }
        }
    }

    fn set_error(&self, reg: &Registration, stream: &[u8], e: String) {
        if let Some(c) = reg.consumers.map.lock().get_mut(stream) {
            c.last_error = Some(e);
        }
    }

    fn stop_consumer(&self, reg: &Registration, stream: &[u8], e: Option<String>) {
        if let Some(c) = reg.consumers.map.lock().get_mut(stream) {
            c.running = false;
            c.again = false;
            if e.is_some() {
                c.last_error = e;
            }
        }
    }

    /// Ends a round; true if entries came meanwhile and the job should go round again.
    fn finish_round(&self, reg: &Registration, stream: &[u8]) -> bool {
        let mut m = reg.consumers.map.lock();
        let c = m.entry(stream.to_vec()).or_default();
        if c.again {
            c.again = false;
            true
        } else {
            c.running = false;
            false
        }
    }

    fn retry_later(self: &Arc<Self>, session: &Arc<Session>, reg: &Arc<Registration>, stream: &[u8], after: Duration) {
        if let Some(c) = reg.consumers.map.lock().get_mut(stream) {
            c.running = false;
            c.again = false;
        }
        let (engine, session, reg, stream) = (self.clone(), session.clone(), reg.clone(), stream.to_vec());
        self.timers.at(Instant::now() + after, Box::new(move || engine.stream_ready(session, reg, stream)));
    }

    /// Starts the consumers of every StreamReader registration on the streams that exist
    /// (after a restart, a promotion, or a new registration).
    pub fn kick_streams(self: &Arc<Self>) {
        if let Some(r) = self.recipes.get() {
            r.sessions_changed(self);
        }
        for session in self.sessions.all() {
            for reg in &session.registrations {
                let Some(prefix) = reg.spec.trigger.stream_prefix() else { continue };
                let streams = {
                    let locked = self.host.lock(session.db);
                    if !locked.is_primary() {
                        return;
                    }
                    keys_with_prefix(&*locked, prefix)
                        .into_iter()
                        .filter(|k| consumes(prefix, k) && matches!(locked.call(None, &[b"TYPE", k]), Ok(Value::String(t)) if t == "stream"))
                        .collect::<Vec<_>>()
                };
                for s in streams {
                    self.stream_ready(session.clone(), reg.clone(), s);
                }
            }
        }
    }
}

/// The streams of recipes (write-behind): a StreamReader reads them only if its prefix
/// names them, and never trims them (their pipeline trims what its target committed).
pub const RECIPE_STREAMS: &[u8] = b"rg:wb:";

/// Does a StreamReader registered on `prefix` consume `stream`?
pub fn consumes(prefix: &[u8], stream: &[u8]) -> bool {
    stream.starts_with(prefix) && (!stream.starts_with(RECIPE_STREAMS) || prefix.starts_with(RECIPE_STREAMS))
}

/// Every key that starts with `prefix` (a whole SCAN, under the caller's lock).
pub fn keys_with_prefix(locked: &dyn crate::LockedHost, prefix: &[u8]) -> Vec<Vec<u8>> {
    let pattern = crate::prefix_pattern(prefix);
    let mut found = Vec::new();
    let mut cursor = 0;
    while let Ok((next, keys)) = crate::scan(locked, None, cursor, &pattern, 1000) {
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    found
}

/// The internal command that carries a consumer's position to replicas and the AOF.
pub const STREAM_POSITION: &str = "RG.STREAMPOS";
