//! Executions (one per RG.EXEC) and the registry that keeps them, with eviction of
//! finished executions beyond `rg.max-executions` (a count) and `rg.max-executions-memory`
//! (the bytes of their outcomes).

use crate::executor::StepStat;
use crate::Value;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Done,
    Aborted,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Done => "done",
            Status::Aborted => "aborted",
        }
    }
    pub fn is_finished(&self) -> bool {
        matches!(self, Status::Done | Status::Aborted)
    }
}

/// How a finished execution ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The script called `run()`: its records and per-record errors.
    Records { results: Vec<Value>, errors: Vec<String> },
    /// The script did not call `run()`: what its top-level code returned.
    Returned(Value),
    /// The script failed as a whole (syntax error, uncaught error, timeout, abort).
    Failed(String),
}

type Waiter = Box<dyn FnOnce(&Execution) + Send>;

pub struct ExecutionState {
    pub status: Status,
    pub outcome: Option<Outcome>,
    pub step_stats: Vec<StepStat>,
    pub reader: Option<&'static str>,
    pub started_ms: u64,
    pub duration: Duration,
    /// Records its run read (or, on a cluster, received) and produced (or sent on).
    pub records_in: u64,
    pub records_out: u64,
    waiters: Vec<Waiter>,
}

pub struct Execution {
    pub id: String,
    pub language: &'static str,
    pub description: Option<String>,
    /// The ACL user who started it (None: no ACL applies): only it or an admin may see it.
    pub user: Option<String>,
    pub created_ms: u64,
    pub abort: Arc<AtomicBool>,
    /// Bytes its outcome takes once finished (counted against `rg.max-executions-memory`).
    kept_bytes: AtomicU64,
    state: Mutex<ExecutionState>,
    finished: Condvar,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Execution {
    pub fn new(id: String, language: &'static str, description: Option<String>) -> Execution {
        Execution {
            id,
            language,
            description,
            user: None,
            created_ms: now_ms(),
            abort: Arc::new(AtomicBool::new(false)),
            kept_bytes: AtomicU64::new(0),
            state: Mutex::new(ExecutionState {
                status: Status::Created,
                outcome: None,
                step_stats: Vec::new(),
                reader: None,
                started_ms: 0,
                duration: Duration::ZERO,
                records_in: 0,
                records_out: 0,
                waiters: Vec::new(),
            }),
            finished: Condvar::new(),
        }
    }

    pub fn status(&self) -> Status {
        self.state.lock().status
    }

    /// Reads the state under its lock.
    pub fn with_state<R>(&self, f: impl FnOnce(&ExecutionState) -> R) -> R {
        f(&self.state.lock())
    }

    pub fn mark_running(&self) {
        let mut s = self.state.lock();
        s.status = Status::Running;
        s.started_ms = now_ms();
    }

    pub fn set_plan_info(&self, reader: &'static str, stats: Vec<StepStat>) {
        let mut s = self.state.lock();
        s.reader = Some(reader);
        s.step_stats = stats;
    }

    /// What its run read and produced (see `RunOutput::records_in`).
    pub fn set_records(&self, records_in: u64, records_out: u64) {
        let mut s = self.state.lock();
        s.records_in = records_in;
        s.records_out = records_out;
    }

    /// Ends the execution and wakes everything waiting for it.
    pub fn finish(&self, outcome: Outcome, aborted: bool) {
        let waiters = {
            let mut s = self.state.lock();
            if s.status.is_finished() {
                return;
            }
            s.status = if aborted { Status::Aborted } else { Status::Done };
            s.outcome = Some(outcome);
            if s.started_ms > 0 {
                s.duration = Duration::from_millis(now_ms().saturating_sub(s.started_ms));
            }
            std::mem::take(&mut s.waiters)
        };
        self.finished.notify_all();
        for w in waiters {
            w(self);
        }
    }

    /// Calls `f` once the execution is finished: now if it already is, else from the
    /// thread that finishes it.
    pub fn on_finish(&self, f: Waiter) {
        let mut s = self.state.lock();
        if s.status.is_finished() {
            drop(s);
            f(self);
        } else {
            s.waiters.push(f);
        }
    }

    /// Blocks the calling thread until finished or `timeout` passed; true if finished.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut s = self.state.lock();
        let deadline = std::time::Instant::now() + timeout;
        while !s.status.is_finished() {
            if self.finished.wait_until(&mut s, deadline).timed_out() {
                return s.status.is_finished();
            }
        }
        true
    }

    pub fn request_abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.state.lock().outcome.clone()
    }

    /// Bytes its outcome takes (0 until finished).
    pub fn kept_bytes(&self) -> u64 {
        self.kept_bytes.load(Ordering::Relaxed)
    }
}

impl Outcome {
    /// About how many bytes the outcome takes in memory.
    pub fn approx_size(&self) -> usize {
        match self {
            Outcome::Records { results, errors } => results.iter().map(Value::approx_size).sum::<usize>() + errors.iter().map(|e| e.len() + 24).sum::<usize>(),
            Outcome::Returned(v) => v.approx_size(),
            Outcome::Failed(e) => e.len() + 24,
        }
    }
}

/// Why a registry operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("no execution with id '{0}'")]
    NotFound(String),
    #[error("execution '{0}' is still running: abort it first (RG.ABORTEXECUTION) or wait for it")]
    StillRunning(String),
    #[error("an execution with id '{0}' is still running")]
    Duplicate(String),
    #[error("{}", crate::not_owner("execution", .0, .1.as_deref()))]
    NotOwner(String, Option<String>),
}

/// All executions of this shard, oldest first.
pub struct Registry {
    shard_id: String,
    seq: AtomicU64,
    max: AtomicU64,
    /// Bytes the outcomes of finished executions may take together (0: no limit).
    max_bytes: AtomicU64,
    list: Mutex<VecDeque<Arc<Execution>>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryCounts {
    pub created: usize,
    pub running: usize,
    pub done: usize,
    pub aborted: usize,
}

impl Registry {
    pub fn new(shard_id: String, max_executions: u64) -> Registry {
        Registry { shard_id, seq: AtomicU64::new(0), max: AtomicU64::new(max_executions), max_bytes: AtomicU64::new(0), list: Mutex::new(VecDeque::new()) }
    }

    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
        self.evict(&mut self.list.lock());
    }

    /// Sets `rg.max-executions-memory` (0: no limit) and evicts what no longer fits.
    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.evict(&mut self.list.lock());
    }

    /// Ends `exec` with `outcome` and evicts what no longer fits. An outcome that alone
    /// takes more than `rg.max-executions-memory` is not kept: the execution fails with an
    /// error saying so instead.
    pub fn finish(&self, exec: &Execution, outcome: Outcome, aborted: bool) {
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let mut size = outcome.approx_size() as u64;
        let outcome = if max_bytes > 0 && size > max_bytes {
            let failed = Outcome::Failed(format!(
                "the execution's results take about {size} bytes, more than rg.max-executions-memory ({max_bytes} bytes): they were not kept; return fewer or smaller records (or raise rg.max-executions-memory)"
            ));
            size = failed.approx_size() as u64;
            failed
        } else {
            outcome
        };
        exec.kept_bytes.store(size, Ordering::Relaxed);
        exec.finish(outcome, aborted);
        self.finished();
    }

    /// Bytes the outcomes of the executions kept take together.
    pub fn kept_bytes(&self) -> u64 {
        self.list.lock().iter().map(|e| e.kept_bytes()).sum()
    }

    /// Creates an execution with a fresh id `<shard-id>-<seq>` (or the given one).
    /// `who` owns it; a named execution replaces a finished one of the same name only if
    /// `who` may act on that one (its owner or an admin).
    pub fn create(&self, id: Option<String>, language: &'static str, description: Option<String>, who: crate::Registrant) -> Result<Arc<Execution>, RegistryError> {
        let mut list = self.list.lock();
        let id = match id {
            Some(id) => {
                // A named execution replaces a finished one of the same name (a session's
                // script is sent again with the same ID to upgrade it).
                if let Some(pos) = list.iter().position(|e| e.id == id) {
                    if !list[pos].status().is_finished() {
                        return Err(RegistryError::Duplicate(id));
                    }
                    if !who.owns(list[pos].user.as_deref()) {
                        return Err(RegistryError::NotOwner(id, list[pos].user.clone()));
                    }
                    list.remove(pos);
                }
                id
            }
            None => format!("{}-{}", self.shard_id, self.seq.fetch_add(1, Ordering::Relaxed) + 1),
        };
        let e = Arc::new(Execution { user: who.user.map(str::to_string), ..Execution::new(id, language, description) });
        list.push_back(e.clone());
        self.evict(&mut list);
        Ok(e)
    }

    /// Drops the oldest finished executions while there are more than the maximum, or
    /// while their outcomes take more than the maximum bytes.
    fn evict(&self, list: &mut VecDeque<Arc<Execution>>) {
        let max = self.max.load(Ordering::Relaxed) as usize;
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let mut bytes: u64 = list.iter().map(|e| e.kept_bytes()).sum();
        let over = |len: usize, bytes: u64| len > max || (max_bytes > 0 && bytes > max_bytes);
        let mut i = 0;
        while over(list.len(), bytes) && i < list.len() {
            if list[i].status().is_finished() {
                bytes -= list[i].kept_bytes();
                list.remove(i);
            } else {
                i += 1;
            }
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Execution>, RegistryError> {
        self.list.lock().iter().find(|e| e.id == id).cloned().ok_or_else(|| RegistryError::NotFound(id.to_string()))
    }

    pub fn all(&self) -> Vec<Arc<Execution>> {
        self.list.lock().iter().cloned().collect()
    }

    pub fn drop_execution(&self, id: &str) -> Result<(), RegistryError> {
        let mut list = self.list.lock();
        let pos = list.iter().position(|e| e.id == id).ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        if !list[pos].status().is_finished() {
            return Err(RegistryError::StillRunning(id.to_string()));
        }
        list.remove(pos);
        Ok(())
    }

    /// Called after an execution finished: it may now be evicted.
    pub fn finished(&self) {
        self.evict(&mut self.list.lock());
    }

    pub fn counts(&self) -> RegistryCounts {
        let mut c = RegistryCounts::default();
        for e in self.list.lock().iter() {
            match e.status() {
                Status::Created => c.created += 1,
                Status::Running => c.running += 1,
                Status::Done => c.done += 1,
                Status::Aborted => c.aborted += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(bytes: usize) -> Outcome {
        Outcome::Records { results: vec![Value::String("x".repeat(bytes))], errors: Vec::new() }
    }

    #[test]
    fn finished_executions_are_evicted_oldest_first_beyond_the_bytes_limit() {
        let r = Registry::new("s".into(), 100);
        r.set_max_bytes(10_000);
        let ids: Vec<String> = (0..4)
            .map(|_| {
                let e = r.create(None, "lua", None, crate::Registrant { user: None, admin: true }).unwrap();
                r.finish(&e, records(4_000), false);
                e.id.clone()
            })
            .collect();
        let kept: Vec<String> = r.all().iter().map(|e| e.id.clone()).collect();
        assert_eq!(kept, ids[2..].to_vec());
        assert!(r.kept_bytes() <= 10_000);
        // A running execution is never evicted, whatever it will take.
        let running = r.create(None, "lua", None, crate::Registrant { user: None, admin: true }).unwrap();
        r.set_max_bytes(1);
        assert_eq!(r.all().len(), 1);
        assert_eq!(r.all()[0].id, running.id);
    }

    #[test]
    fn results_larger_than_the_limit_alone_end_in_an_error() {
        let r = Registry::new("s".into(), 100);
        r.set_max_bytes(1_000);
        let e = r.create(None, "js", None, crate::Registrant { user: None, admin: true }).unwrap();
        r.finish(&e, records(5_000), false);
        match e.outcome() {
            Some(Outcome::Failed(m)) => assert!(m.contains("rg.max-executions-memory (1000 bytes)") && m.contains("not kept"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(e.kept_bytes() < 1_000);
        assert_eq!(e.status(), Status::Done);
        // No limit: everything is kept.
        r.set_max_bytes(0);
        let e = r.create(None, "js", None, crate::Registrant { user: None, admin: true }).unwrap();
        r.finish(&e, records(5_000), false);
        assert_eq!(e.outcome(), Some(records(5_000)));
    }
}
