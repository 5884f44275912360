//! Runs one shard's part of a cluster execution: its reader and the stages it takes part
//! in, sending each stage's output across the boundary that ends it.

use super::message::Message;
use super::part::{Outbound, Part};
use super::stages::{self, Boundary};
use super::Coordinator;
use crate::executor::{check_abort, read_into, StageRun};
use crate::plan::{apply_native_ref, Func, Plan};
use crate::{codec, RunContext, RunOutput, ScriptError, Value};
use std::time::{Duration, Instant};

/// Identifies a plan by its reader, steps and their function positions: every shard must
/// build the same one from the script.
pub fn plan_fingerprint(plan: &Plan) -> u64 {
    let text = format!("{plan:?}");
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Runs this shard's part of `plan`. On the initiator the output holds the run's results
/// and every shard's per-record errors; elsewhere it holds nothing but step statistics.
pub fn run_part(plan: &Plan, cx: &RunContext, part: &Part, coord: &Coordinator) -> Result<RunOutput, ScriptError> {
    let stages = stages::split(&plan.steps);
    let initiator = vec![part.initiator.clone()];
    let senders: Vec<Vec<String>> = stages.iter().map(|s| if s.everywhere { part.participants.clone() } else { initiator.clone() }).collect();
    let topology = coord.topology().ok_or_else(|| ScriptError::runtime("run: this node is no longer part of a cluster"))?;
    let me = part.me.as_str();
    let mut errors: Vec<String> = Vec::new();
    let mut stats = Vec::new();
    let (mut records_in, mut records_out) = (0u64, 0u64);
    for (k, stage) in stages.iter().enumerate() {
        if !senders[k].iter().any(|s| s == me) {
            continue;
        }
        let receivers = senders.get(k + 1).cloned().unwrap_or_else(|| initiator.clone());
        let mut run = StageRun::new(stage.steps, cx);
        let mut router = Router {
            boundary: k as u32,
            out: stage.out,
            receivers,
            part,
            coord,
            cx,
            batch: coord.batch_records(),
            topology: &topology,
            pending: Default::default(),
            seqs: Default::default(),
            routed: 0,
            spent: Duration::ZERO,
        };
        if k == 0 {
            let mut n = 0u32;
            read_into(&plan.reader, cx, &mut |r| {
                records_in += 1;
                let stop = run.push(r)?;
                router.route(run.take_results(), &mut errors)?;
                n = n.wrapping_add(1);
                if n % 256 == 0 {
                    live(part, cx)?;
                }
                Ok(stop)
            })?;
            check_abort(cx)?;
        } else {
            let b = (k - 1) as u32;
            let mut route_errors = Vec::new();
            receive(part, cx, b, &senders[k - 1], &mut errors, &mut |records| {
                records_in += records.len() as u64;
                for r in records {
                    if run.push(Ok(r))? {
                        break;
                    }
                }
                router.route(run.take_results(), &mut route_errors)
            })?;
            errors.extend(route_errors);
        }
        run.finish()?;
        router.route(run.take_results(), &mut errors)?;
        errors.extend(run.take_errors());
        router.end(std::mem::take(&mut errors));
        stats.extend(run.stats().iter().cloned());
        // The boundary as a step of its own: records it sent on, and the time it took.
        let name = match stage.out {
            Boundary::Repartition(_) => Some("repartition"),
            Boundary::Collect => Some("collect"),
            Boundary::Final => None,
        };
        if let Some(name) = name {
            stats.push(crate::StepStat { name, calls: router.routed, duration: router.spent });
        }
        records_out += router.routed;
    }
    let mut out = RunOutput { step_stats: stats, records_in, records_out, ..Default::default() };
    if me == part.initiator {
        let last = (stages.len() - 1) as u32;
        let mut results = Vec::new();
        receive(part, cx, last, &senders[stages.len() - 1], &mut out.errors, &mut |records| {
            results.extend(records);
            Ok(())
        })?;
        out.records_in += results.len() as u64;
        out.records_out = results.len() as u64;
        out.results = results;
    }
    Ok(out)
}

/// Fails fast when another shard failed or the run was aborted.
fn live(part: &Part, cx: &RunContext) -> Result<(), ScriptError> {
    check_abort(cx)?;
    match part.failure() {
        Some(e) => Err(ScriptError::runtime(e)),
        None => Ok(()),
    }
}

/// Takes boundary `b`'s records as they come and hands them to `take`, until every one of
/// `senders` ended it. The errors they sent along join `errors`.
fn receive(
    part: &Part,
    cx: &RunContext,
    b: u32,
    senders: &[String],
    errors: &mut Vec<String>,
    take: &mut dyn FnMut(Vec<Value>) -> Result<(), ScriptError>,
) -> Result<(), ScriptError> {
    loop {
        let (batches, done) = {
            let mut st = part.state.lock();
            if let Some(e) = &st.failure {
                return Err(ScriptError::runtime(e.clone()));
            }
            let inb = st.inbound.entry(b).or_default();
            let batches: Vec<Vec<u8>> = inb.queue.drain(..).collect();
            let complete = Part::complete(inb, senders);
            if batches.is_empty() && !complete {
                part.wake.wait_for(&mut st, Duration::from_millis(100));
                drop(st);
                check_abort(cx)?;
                continue;
            }
            // Everything is here and taken: the boundary is closed in the same step, so
            // that a message sent again meanwhile cannot open it anew (the run then
            // waited for ends it already had).
            let done = complete && batches.is_empty();
            if done {
                if let Some(inb) = st.inbound.remove(&b) {
                    errors.extend(inb.errors);
                }
                st.closed.insert(b);
            }
            (batches, done)
        };
        for bytes in batches {
            match codec::decode(&bytes) {
                Ok(Value::Array(records)) => take(records)?,
                _ => return Err(ScriptError::runtime("a batch of records from another shard could not be decoded")),
            }
        }
        check_abort(cx)?;
        if done {
            return Ok(());
        }
    }
}

/// Sends a stage's output across its boundary in batches.
struct Router<'a, 'c> {
    boundary: u32,
    out: Boundary<'a>,
    receivers: Vec<String>,
    part: &'a Part,
    coord: &'a Coordinator,
    cx: &'a RunContext<'c>,
    batch: usize,
    topology: &'a super::Topology,
    pending: std::collections::HashMap<String, Vec<Value>>,
    seqs: std::collections::HashMap<String, u32>,
    /// Records sent on, and the time spent routing and sending them.
    routed: u64,
    spent: Duration,
}

impl Router<'_, '_> {
    fn route(&mut self, records: Vec<Value>, errors: &mut Vec<String>) -> Result<(), ScriptError> {
        if records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let r = self.route_all(records, errors);
        self.spent += started.elapsed();
        r
    }

    fn route_all(&mut self, records: Vec<Value>, errors: &mut Vec<String>) -> Result<(), ScriptError> {
        for r in records {
            let to = match self.out {
                Boundary::Repartition(f) => match self.destination(f, &r) {
                    Ok(Some(to)) => to,
                    Ok(None) => continue,
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => {
                        errors.push(e.message);
                        continue;
                    }
                },
                Boundary::Collect | Boundary::Final => self.part.initiator.clone(),
            };
            self.routed += 1;
            let full = {
                let q = self.pending.entry(to.clone()).or_default();
                q.push(r);
                q.len() >= self.batch
            };
            if full {
                self.flush(&to)?;
            }
        }
        Ok(())
    }

    /// The shard that serves the key `f(r)`.
    fn destination(&self, f: &Func, r: &Value) -> Result<Option<String>, ScriptError> {
        let key = match f {
            Func::Native(op) => apply_native_ref(op, std::slice::from_ref(r)).map_err(ScriptError::runtime)?,
            Func::Script(fr) => self.cx.calls.call(*fr, std::slice::from_ref(r))?,
        };
        let bytes = match &key {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.clone(),
            Value::Int(_) | Value::Double(_) | Value::Bool(_) => key.to_string().into_bytes(),
            other => return Err(ScriptError::runtime(format!("repartition: the extractor must return a string or a number, got {}", other.type_name()))),
        };
        let slot = super::key_slot(&bytes);
        match self.topology.owner_of_slot(slot) {
            Some(s) if self.part.participants.contains(&s.id) => Ok(Some(s.id.clone())),
            _ => Err(ScriptError::runtime(format!("repartition: no shard of this execution serves slot {slot} (key '{}')", String::from_utf8_lossy(&bytes)))),
        }
    }

    fn flush(&mut self, to: &str) -> Result<(), ScriptError> {
        let records = self.pending.remove(to).unwrap_or_default();
        if records.is_empty() {
            return Ok(());
        }
        live(self.part, self.cx)?;
        let encoded = codec::encode(&Value::Array(records)).map_err(|e| ScriptError::runtime(format!("repartition: {e}")))?;
        let seq = self.seqs.entry(to.to_string()).or_insert(0);
        let m = Message::Records { exec: self.part.exec.clone(), boundary: self.boundary, seq: *seq, records: encoded.clone() };
        *seq += 1;
        if to != self.part.me {
            let mut st = self.part.state.lock();
            st.outbound
                .entry((to.to_string(), self.boundary))
                .or_insert_with(|| Outbound { batches: Vec::new(), end: None, last_sent: Instant::now() })
                .batches
                .push(encoded);
        }
        self.coord.post(self.part, to, m, true);
        Ok(())
    }

    /// Sends what is left, then `End` to every receiver; `errors` go to one of them (the
    /// initiator when it is one), to travel on with the records.
    fn end(&mut self, errors: Vec<String>) {
        let targets: Vec<String> = self.pending.keys().cloned().collect();
        for t in targets {
            let _ = self.flush(&t);
        }
        let carrier = if self.receivers.contains(&self.part.initiator) { self.part.initiator.clone() } else { self.receivers[0].clone() };
        let mut errors = Some(errors);
        for to in self.receivers.clone() {
            let batches = self.seqs.get(&to).copied().unwrap_or(0);
            let errs = if to == carrier { errors.take().unwrap_or_default() } else { Vec::new() };
            let m = Message::End { exec: self.part.exec.clone(), boundary: self.boundary, batches, errors: errs };
            if to != self.part.me {
                if let Ok(bytes) = super::message::encode(&m) {
                    let mut st = self.part.state.lock();
                    let o = st.outbound.entry((to.clone(), self.boundary)).or_insert_with(|| Outbound { batches: Vec::new(), end: None, last_sent: Instant::now() });
                    o.end = Some(bytes);
                    o.last_sent = Instant::now();
                }
            }
            self.coord.post(self.part, &to, m, true);
        }
    }
}
