//! The worker pool (`rg.execution-threads`). Each worker owns its interpreter instances,
//! one per language, created on first use and reused for every later run on that worker,
//! each accounted in the engine's `Ledger`. Besides the shared queue of jobs, each worker
//! has a queue of its own, through which the engine tells every worker at once to purge
//! (sessions dropped, instances evicted), idle workers included.

use crate::instances::{Ledger, Ticket};
use crate::{Instance, Language, Limits, ScriptError};
use crossbeam_channel::{select, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

pub type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// What runs on a worker after each of its jobs (set once by the engine).
pub type AfterJob = Box<dyn Fn(&mut Worker) + Send + Sync>;

struct Kept {
    instance: Box<dyn Instance>,
    ticket: Ticket,
}

pub struct Worker {
    pub index: usize,
    /// The thread's name, for messages.
    thread: String,
    languages: Arc<Vec<Arc<dyn Language>>>,
    ledger: Arc<Ledger>,
    instances: HashMap<&'static str, Kept>,
}

impl Worker {
    /// This worker's instance of `language`, created with `limits` on first use (if the
    /// ledger admits it under `cap` bytes for all instances); later calls update its limits
    /// (config may have changed). The instance counts as running until `release`.
    pub fn instance(&mut self, language: &str, limits: Limits, cap: usize) -> Result<&mut Box<dyn Instance>, ScriptError> {
        let lang = self
            .languages
            .iter()
            .find(|l| l.name() == language)
            .ok_or_else(|| ScriptError::usage(format!("unknown language '{language}'")))?
            .clone();
        let name = lang.name();
        if self.instances.get(name).is_some_and(|k| k.ticket.must_go()) {
            self.instances.remove(name);
        }
        if !self.instances.contains_key(name) {
            let ticket = self.ledger.admit(name, &format!("a {name} script on thread {}", self.thread), cap)?;
            let instance = lang.new_instance(limits.clone())?;
            self.instances.insert(name, Kept { instance, ticket });
        }
        let kept = self.instances.get_mut(name).expect("instance just inserted");
        kept.ticket.start_use();
        kept.instance.set_limits(limits);
        Ok(&mut kept.instance)
    }

    /// The run on `language`'s instance ended: its memory is recorded.
    pub fn release(&mut self, language: &str) {
        if let Some(k) = self.instances.get(language) {
            k.ticket.end_use(k.instance.memory_used());
        }
    }

    /// Drops the instances the ledger asked to go.
    pub fn purge(&mut self) {
        self.instances.retain(|_, k| !k.ticket.must_go());
    }
}

pub struct WorkerPool {
    sender: Mutex<Option<Sender<Job>>>,
    /// Each worker's own queue.
    controls: Mutex<Vec<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    after_job: Arc<OnceLock<AfterJob>>,
}

impl WorkerPool {
    pub fn new(threads: usize, languages: Arc<Vec<Arc<dyn Language>>>, ledger: Arc<Ledger>) -> WorkerPool {
        Self::named("rg-worker", threads, languages, ledger)
    }

    /// A pool whose threads are named `<name>-<index>`.
    pub fn named(name: &str, threads: usize, languages: Arc<Vec<Arc<dyn Language>>>, ledger: Arc<Ledger>) -> WorkerPool {
        let (tx, rx) = unbounded::<Job>();
        let after_job: Arc<OnceLock<AfterJob>> = Default::default();
        let mut controls = Vec::new();
        let handles = (0..threads.max(1))
            .map(|index| {
                let (ctl_tx, ctl_rx) = unbounded::<Job>();
                controls.push(ctl_tx);
                let rx = rx.clone();
                let (languages, ledger, after_job) = (languages.clone(), ledger.clone(), after_job.clone());
                let thread = format!("{name}-{index}");
                std::thread::Builder::new()
                    .name(thread.clone())
                    .spawn(move || work(Worker { index, thread, languages, ledger, instances: HashMap::new() }, rx, ctl_rx, after_job))
                    .expect("spawn worker thread")
            })
            .collect();
        WorkerPool { sender: Mutex::new(Some(tx)), controls: Mutex::new(controls), threads: Mutex::new(handles), after_job }
    }

    /// Sets what runs on a worker after each job (once; later calls are ignored).
    pub fn set_after_job(&self, f: AfterJob) {
        let _ = self.after_job.set(f);
    }

    /// Queues a job; false if the pool is shut down.
    pub fn submit(&self, job: Job) -> bool {
        match &*self.sender.lock() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    /// Queues one job from `make` on every worker's own queue: each worker runs it as soon
    /// as it is done with what it is running now, at once if idle.
    pub fn broadcast(&self, make: &dyn Fn() -> Job) {
        for c in self.controls.lock().iter() {
            let _ = c.send(make());
        }
    }

    /// Stops accepting jobs and waits for the workers to drain the queue.
    pub fn shutdown(&self) {
        self.sender.lock().take();
        self.controls.lock().clear();
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}

fn work(mut worker: Worker, jobs: Receiver<Job>, control: Receiver<Job>, after_job: Arc<OnceLock<AfterJob>>) {
    let mut control_open = true;
    loop {
        let job = if control_open {
            select! {
                recv(jobs) -> j => match j {
                    Ok(j) => j,
                    Err(_) => break,
                },
                recv(control) -> j => match j {
                    Ok(j) => j,
                    Err(_) => {
                        control_open = false;
                        continue;
                    }
                },
            }
        } else {
            match jobs.recv() {
                Ok(j) => j,
                Err(_) => break,
            }
        };
        // A panic in a job must not kill the worker (or cross into Redis).
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut worker)));
        if r.is_err() {
            // The instances may be in any state after a panic: start afresh.
            worker.instances.clear();
        }
        worker.purge();
        if let Some(f) = after_job.get() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut worker)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn a_broadcast_reaches_every_worker_even_while_one_is_busy() {
        let pool = WorkerPool::new(3, Arc::new(Vec::new()), Default::default());
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        assert!(pool.submit(Box::new(move |_| {
            let _ = release_rx.recv();
        })));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        pool.broadcast(&|| {
            let s = s.clone();
            Box::new(move |w: &mut Worker| s.lock().push(w.index))
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "idle workers did not run the broadcast");
            std::thread::sleep(Duration::from_millis(5));
        }
        release_tx.send(()).unwrap();
        while seen.lock().len() < 3 {
            assert!(std::time::Instant::now() < deadline, "the busy worker did not run the broadcast");
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = Arc::new(AtomicUsize::new(0));
        let a = after.clone();
        pool.set_after_job(Box::new(move |_| {
            a.fetch_add(1, Ordering::Relaxed);
        }));
        assert!(pool.submit(Box::new(|_| {})));
        pool.shutdown();
        assert!(after.load(Ordering::Relaxed) >= 1);
    }
}
