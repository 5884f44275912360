//! Runs a plan: reads records in bounded batches under the data lock, then pushes them
//! through the steps outside the lock.

use crate::plan::{apply_native, apply_native_ref, Func, GroupMode, NativeOp, Plan, Reader, Step};
use crate::{Host, LockedHost, ScriptCalls, ScriptError, Value};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a run produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunOutput {
    pub results: Vec<Value>,
    /// Per-record errors: the record was dropped and the run went on.
    pub errors: Vec<String>,
    pub step_stats: Vec<StepStat>,
    /// Records this shard read or received from other shards.
    pub records_in: u64,
    /// Records this shard produced: its results, or (on a cluster) what it sent on.
    pub records_out: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStat {
    pub name: &'static str,
    pub calls: u64,
    pub duration: Duration,
}

/// Everything a run needs from its surroundings.
pub struct RunContext<'a> {
    pub host: &'a dyn Host,
    pub calls: &'a dyn ScriptCalls,
    pub abort: &'a AtomicBool,
    /// Keys (or stream entries) read per lock acquisition.
    pub batch_size: usize,
    /// The database the run reads.
    pub db: u32,
    /// Reads are made with this ACL user's permissions (None = unchecked).
    pub user: Option<&'a str>,
}

enum State {
    None,
    Acc(Option<Value>),
    Groups { order: Vec<(Value, Value)>, index: HashMap<Vec<u8>, usize> },
    Seen(usize),
}

struct Pipeline<'p, 'c> {
    steps: &'p [Step],
    cx: &'p RunContext<'c>,
    states: Vec<State>,
    stats: Vec<StepStat>,
    out: RunOutput,
    /// Set when a limit that only stateless steps precede is full: reading can stop.
    done: bool,
}

impl<'p, 'c> Pipeline<'p, 'c> {
    /// Calls `f` with `args`. Script functions see the arguments by reference (the
    /// language converts them into its own values; nothing is copied here), natives get a
    /// copy of only what they read. None: the call failed and its error is recorded.
    fn call(&mut self, step: usize, f: &Func, args: &[Value]) -> Result<Option<Value>, ScriptError> {
        let start = Instant::now();
        let r = match f {
            Func::Native(op) => apply_native_ref(op, args).map_err(ScriptError::runtime),
            Func::Script(fr) => self.cx.calls.call(*fr, args),
        };
        self.called(step, start, r)
    }

    /// A native given its arguments by value (it consumes an accumulator in place).
    fn call_native(&mut self, step: usize, op: &NativeOp, args: Vec<Value>) -> Result<Option<Value>, ScriptError> {
        let start = Instant::now();
        let r = apply_native(op, args).map_err(ScriptError::runtime);
        self.called(step, start, r)
    }

    fn called(&mut self, step: usize, start: Instant, r: Result<Value, ScriptError>) -> Result<Option<Value>, ScriptError> {
        let st = &mut self.stats[step];
        st.calls += 1;
        st.duration += start.elapsed();
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_fatal() => Err(e),
            Err(e) => {
                self.out.errors.push(e.message);
                Ok(None)
            }
        }
    }

    /// Calls an accumulating function with (`acc`, `input`) and gives the next
    /// accumulator; a failed call keeps `acc` (its error is recorded). `key` goes first to
    /// script reducers of groups; natives reduce the last two arguments only. Nothing is
    /// copied but a fallible native's small accumulator.
    fn reduce(&mut self, step: usize, f: &Func, key: Option<Value>, acc: Value, input: Value) -> Result<(Value, Option<Value>), ScriptError> {
        match f {
            Func::Native(op) => {
                let keep = (!op.infallible()).then(|| acc.clone());
                let next = self.call_native(step, op, vec![acc, input])?;
                Ok((next.or(keep).unwrap_or(Value::Nil), key))
            }
            Func::Script(_) => match key {
                Some(k) => {
                    let args = [k, acc, input];
                    let next = self.call(step, f, &args)?;
                    let [k, acc, _] = args;
                    Ok((next.unwrap_or(acc), Some(k)))
                }
                None => {
                    let args = [acc, input];
                    let next = self.call(step, f, &args)?;
                    let [acc, _] = args;
                    Ok((next.unwrap_or(acc), None))
                }
            },
        }
    }

    fn push(&mut self, i: usize, r: Value) -> Result<(), ScriptError> {
        let steps = self.steps;
        let Some(step) = steps.get(i) else {
            self.out.results.push(r);
            return Ok(());
        };
        match step {
            Step::Map(f) => {
                if let Some(v) = self.call(i, f, std::slice::from_ref(&r))? {
                    self.push(i + 1, v)?;
                }
            }
            Step::FlatMap(f) => match self.call(i, f, std::slice::from_ref(&r))? {
                Some(Value::Array(items)) => {
                    for v in items {
                        self.push(i + 1, v)?;
                    }
                }
                Some(Value::Nil) | None => {}
                Some(v) => self.push(i + 1, v)?,
            },
            Step::Filter(f) => {
                if let Some(keep) = self.call(i, f, std::slice::from_ref(&r))? {
                    if keep.truthy() {
                        self.push(i + 1, r)?;
                    }
                }
            }
            Step::ForEach(f) => {
                if self.call(i, f, std::slice::from_ref(&r))?.is_some() {
                    self.push(i + 1, r)?;
                }
            }
            Step::Accumulate { f, zero } => {
                let acc = match &mut self.states[i] {
                    State::Acc(a) => a.take().unwrap_or_else(|| zero.clone()),
                    _ => zero.clone(),
                };
                let (next, _) = self.reduce(i, f, None, acc, r)?;
                self.states[i] = State::Acc(Some(next));
            }
            Step::LocalGroupBy { extractor, reducer, zero, mode } => {
                let Some(k) = self.call(i, extractor, std::slice::from_ref(&r))? else { return Ok(()) };
                let gk = k.group_key();
                if let State::None = self.states[i] {
                    self.states[i] = State::Groups { order: Vec::new(), index: HashMap::new() };
                }
                let State::Groups { order, index } = &mut self.states[i] else { return Ok(()) };
                let at = index.get(&gk).copied();
                if *mode == GroupMode::Batch {
                    // The group's list grows in place.
                    match at {
                        Some(p) => match &mut order[p].1 {
                            Value::Array(list) => list.push(r),
                            other => *other = Value::Array(vec![r]),
                        },
                        None => {
                            index.insert(gk, order.len());
                            order.push((k, Value::Array(vec![r])));
                        }
                    }
                    return Ok(());
                }
                // The accumulator is taken out of its group while the reducer runs.
                let acc = match at {
                    Some(p) => std::mem::replace(&mut order[p].1, Value::Nil),
                    None => zero.clone(),
                };
                let input = if *mode == GroupMode::Values { r.get("value").cloned().unwrap_or(Value::Nil) } else { r };
                let (next, k) = self.reduce(i, reducer, Some(k), acc, input)?;
                let State::Groups { order, index } = &mut self.states[i] else { return Ok(()) };
                match at {
                    Some(p) => order[p].1 = next,
                    None => {
                        index.insert(gk, order.len());
                        order.push((k.unwrap_or(Value::Nil), next));
                    }
                }
            }
            Step::Limit { offset, len } => {
                let seen = match &self.states[i] {
                    State::Seen(n) => *n,
                    _ => 0,
                };
                self.states[i] = State::Seen(seen + 1);
                if seen >= *offset && seen < offset + len {
                    self.push(i + 1, r)?;
                }
                if seen + 1 >= offset + len && steps[..i].iter().all(is_streaming) {
                    self.done = true;
                }
            }
            Step::Collect | Step::Repartition(_) => self.push(i + 1, r)?,
        }
        Ok(())
    }

    /// Flushes stateful steps from `from` on, in order.
    fn finish(&mut self, from: usize) -> Result<(), ScriptError> {
        for i in from..self.steps.len() {
            let emitted: Vec<Value> = match (&self.steps[i], std::mem::replace(&mut self.states[i], State::None)) {
                (Step::Accumulate { .. }, State::Acc(Some(a))) => vec![a],
                (Step::Accumulate { zero, .. }, _) if *zero != Value::Nil => vec![zero.clone()],
                (Step::LocalGroupBy { reducer, mode, .. }, State::Groups { order, .. }) => {
                    let mut out = Vec::with_capacity(order.len());
                    for (k, v) in order {
                        let (k, v) = if *mode == GroupMode::Batch {
                            let args = [k, v];
                            let Some(v) = self.call(i, reducer, &args)? else { continue };
                            let [k, _] = args;
                            (k, v)
                        } else {
                            (k, v)
                        };
                        out.push(Value::Map(vec![(Value::str("key"), k), (Value::str("value"), v)]));
                    }
                    out
                }
                _ => continue,
            };
            for r in emitted {
                self.push(i + 1, r)?;
            }
        }
        Ok(())
    }
}

fn is_streaming(s: &Step) -> bool {
    !matches!(s, Step::Accumulate { .. } | Step::LocalGroupBy { .. } | Step::Limit { .. })
}

pub(crate) fn check_abort(cx: &RunContext) -> Result<(), ScriptError> {
    if cx.abort.load(Ordering::Relaxed) {
        Err(ScriptError::aborted())
    } else {
        Ok(())
    }
}

/// A pipeline over `steps`, with empty state.
fn pipeline<'p, 'c>(steps: &'p [Step], cx: &'p RunContext<'c>) -> Pipeline<'p, 'c> {
    Pipeline {
        steps,
        cx,
        states: steps.iter().map(|_| State::None).collect(),
        stats: steps.iter().map(|s| StepStat { name: s.name(), ..Default::default() }).collect(),
        out: RunOutput::default(),
        done: false,
    }
}

/// Runs `steps` over records given by the caller (a trigger's event), not read by a reader.
pub fn run_steps(steps: &[Step], records: Vec<Value>, cx: &RunContext) -> Result<RunOutput, ScriptError> {
    let mut p = pipeline(steps, cx);
    for r in records {
        p.push(0, r)?;
        if p.done {
            break;
        }
    }
    p.finish(0)?;
    p.out.step_stats = p.stats;
    Ok(p.out)
}

/// Runs `plan` to the end and returns its records and per-record errors.
pub fn run_plan(plan: &Plan, cx: &RunContext) -> Result<RunOutput, ScriptError> {
    let mut p = pipeline(&plan.steps, cx);
    let mut read = 0u64;
    read_into(&plan.reader, cx, &mut |r| {
        read += 1;
        match r {
            Ok(r) => p.push(0, r)?,
            Err(e) => p.out.errors.push(e),
        }
        Ok(p.done)
    })?;
    check_abort(cx)?;
    p.finish(0)?;
    p.out.step_stats = p.stats;
    p.out.records_in = read;
    p.out.records_out = p.out.results.len() as u64;
    Ok(p.out)
}

/// A plan's steps fed record by record: the part of a cluster run between two
/// boundaries (`repartition`, `collect`) is one of these.
pub(crate) struct StageRun<'p, 'c> {
    p: Pipeline<'p, 'c>,
}

impl<'p, 'c> StageRun<'p, 'c> {
    pub(crate) fn new(steps: &'p [Step], cx: &'p RunContext<'c>) -> Self {
        StageRun { p: pipeline(steps, cx) }
    }
    /// Pushes one record (or one record's read error); true when no more input is needed.
    pub(crate) fn push(&mut self, r: Result<Value, String>) -> Result<bool, ScriptError> {
        match r {
            Ok(r) => self.p.push(0, r)?,
            Err(e) => self.p.out.errors.push(e),
        }
        Ok(self.p.done)
    }
    /// Flushes the stateful steps: no more input.
    pub(crate) fn finish(&mut self) -> Result<(), ScriptError> {
        self.p.finish(0)
    }
    /// The records that came out of the last step so far.
    pub(crate) fn take_results(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.p.out.results)
    }
    pub(crate) fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.p.out.errors)
    }
    pub(crate) fn stats(&self) -> &[StepStat] {
        &self.p.stats
    }
}

/// Reads `reader`'s records and hands each (or its read error) to `sink`, until the data
/// is done or `sink` answers true (no more needed).
pub(crate) fn read_into(reader: &Reader, cx: &RunContext, sink: &mut dyn FnMut(Result<Value, String>) -> Result<bool, ScriptError>) -> Result<(), ScriptError> {
    let batch = cx.batch_size.max(1);
    match reader {
        Reader::Keys { pattern, read_value } => {
            // Reading (under the lock) and the steps (outside it) overlap: a reader thread
            // fetches the next batch while this one runs the script on the current one.
            let read_value = *read_value;
            std::thread::scope(|scope| -> Result<(), ScriptError> {
                // The receiver lives in this closure: returning early drops it, which makes
                // the reader's next send fail and the reader stop (the scope then joins it).
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Result<Value, String>>, ScriptError>>(2);
                let (host, abort, db, user) = (cx.host, cx.abort, cx.db, cx.user);
                scope.spawn(move || read_keys(host, abort, db, user, pattern, read_value, batch, tx));
                for records in rx.into_iter() {
                    for r in records? {
                        if sink(r)? {
                            // Dropping the receiver stops the reader.
                            return Ok(());
                        }
                    }
                }
                Ok(())
            })?;
        }
        Reader::Stream { stream, from_id } => {
            let mut start = from_id.clone();
            let mut exclusive = false;
            loop {
                check_abort(cx)?;
                let entries = {
                    let locked = cx.host.lock(cx.db);
                    locked.read_stream(cx.user, stream, &start, exclusive, batch)?
                };
                let n = entries.len();
                for (id, fields) in entries {
                    start = id.clone();
                    if sink(Ok(stream_record(stream, id, fields)))? {
                        return Ok(());
                    }
                }
                exclusive = true;
                if n < batch {
                    break;
                }
            }
        }
        Reader::ShardsId => {
            sink(Ok(Value::String(cx.host.shard_id())))?;
        }
    }
    Ok(())
}

/// The KeysReader's reading side: SCANs `pattern` in batches of `batch` keys, each batch
/// read under one lock acquisition, and sends the records (or per-key errors) on `tx` until
/// the keyspace is done, the run is aborted, or the receiver is gone.
#[allow(clippy::too_many_arguments)]
fn read_keys(
    host: &dyn Host,
    abort: &AtomicBool,
    db: u32,
    user: Option<&str>,
    pattern: &[u8],
    read_value: bool,
    batch: usize,
    tx: std::sync::mpsc::SyncSender<Result<Vec<Result<Value, String>>, ScriptError>>,
) {
    let mut scan = crate::KeyScan::default();
    // SCAN may return a key twice (while the table rehashes); a key is one record.
    let mut seen: HashSet<Vec<u8>, BuildHasherDefault<FastHasher>> = HashSet::default();
    loop {
        if abort.load(Ordering::Relaxed) {
            let _ = tx.send(Err(ScriptError::aborted()));
            return;
        }
        let step = {
            let locked = host.lock(db);
            // Bounded by time as well as by count: a slow key (a big hash) or a slow host
            // cannot hold the lock much longer than a slice.
            let budget = crate::ScanBudget { keys: batch, until: Instant::now() + LOCK_SLICE };
            locked.scan_keys(user, &mut scan, pattern, read_value, budget).map(|read| {
                read.into_iter()
                    .filter(|r| seen.insert(match r {
                        Ok(rec) => rec.key.clone(),
                        Err((k, _)) => k.clone(),
                    }))
                    // A key the user may not read (or that changed type while being read) is
                    // an error of that record; the run goes on.
                    .map(|r| match r {
                        Ok(rec) => Ok(rec.into_value()),
                        Err((k, e)) => Err(format!("{}: {e}", String::from_utf8_lossy(&k))),
                    })
                    .collect::<Vec<_>>()
            })
        };
        match step {
            Ok(records) => {
                if tx.send(Ok(records)).is_err() || scan.done {
                    return;
                }
                // The lock is not fair: taking it again at once can starve Redis's main
                // thread for as long as the scan lasts. A short pause lets it in.
                std::thread::sleep(LOCK_BREATHER);
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
                return;
            }
        }
    }
}

/// The longest a reader holds the lock at once (it stops after the key it is reading).
const LOCK_SLICE: Duration = Duration::from_millis(1);

/// Pause between two lock acquisitions of a reader (about 0.1 s per million keys read
/// in batches of 500).
const LOCK_BREATHER: std::time::Duration = std::time::Duration::from_micros(50);

/// FNV-1a: keys seen by one run need no protection against crafted collisions, and
/// SipHash showed up in profiles of million-key runs.
#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf29ce484222325 } else { self.0 };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        self.0 = h;
    }
}

/// The record of one stream entry, as StreamReader runs and registrations see it.
pub fn stream_record(stream: &[u8], id: String, fields: Value) -> Value {
    Value::Map(vec![
        (Value::str("key"), Value::from_bytes(stream.to_vec())),
        (Value::str("id"), Value::String(id)),
        (Value::str("value"), fields),
    ])
}

/// Reads up to `count` entries of `stream` from `start` (exclusive when `exclusive`).
pub fn read_stream<H: LockedHost + ?Sized>(
    h: &H,
    user: Option<&str>,
    stream: &[u8],
    start: &str,
    exclusive: bool,
    count: usize,
) -> Result<Vec<(String, Value)>, crate::HostError> {
    let from = if exclusive { format!("({start}") } else { start.to_string() };
    let n = count.to_string();
    let reply = h.call(user, &[b"XRANGE", stream, from.as_bytes(), b"+", b"COUNT", n.as_bytes()])?;
    let mut out = Vec::new();
    if let Value::Array(entries) = reply {
        for e in entries {
            if let Value::Array(mut parts) = e {
                if parts.len() == 2 {
                    let fields = match parts.pop().unwrap() {
                        Value::Array(items) => {
                            let mut m = Vec::new();
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                m.push((k, v));
                            }
                            Value::Map(m)
                        }
                        other => other,
                    };
                    let id = parts.pop().unwrap().as_str_lossy().unwrap_or_default();
                    out.push((id, fields));
                }
            }
        }
    }
    Ok(out)
}
