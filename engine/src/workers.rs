//! The worker pool (`rg.execution-threads`). Each worker owns its interpreter instances,
//! one per language, created on first use and reused for every later run on that worker.

use crate::{Instance, Language, Limits, ScriptError};
use crossbeam_channel::{unbounded, Sender};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

pub type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Per-language memory in use, summed over workers (for `INFO rg`).
#[derive(Default)]
pub struct MemoryTable {
    slots: Mutex<HashMap<(usize, &'static str), usize>>,
}

impl MemoryTable {
    pub fn set(&self, worker: usize, language: &'static str, bytes: usize) {
        self.slots.lock().insert((worker, language), bytes);
    }
    pub fn total(&self, language: &str) -> usize {
        self.slots.lock().iter().filter(|((_, l), _)| *l == language).map(|(_, b)| *b).sum()
    }
}

pub struct Worker {
    pub index: usize,
    languages: Arc<Vec<Arc<dyn Language>>>,
    instances: HashMap<&'static str, Box<dyn Instance>>,
    memory: Arc<MemoryTable>,
}

impl Worker {
    /// This worker's instance of `language`, created with `limits` on first use; later
    /// calls update its limits (config may have changed).
    pub fn instance(&mut self, language: &str, limits: Limits) -> Result<&mut Box<dyn Instance>, ScriptError> {
        let lang = self
            .languages
            .iter()
            .find(|l| l.name() == language)
            .ok_or_else(|| ScriptError::usage(format!("unknown language '{language}'")))?
            .clone();
        let name = lang.name();
        if !self.instances.contains_key(name) {
            let inst = lang.new_instance(limits.clone())?;
            self.instances.insert(name, inst);
        }
        let inst = self.instances.get_mut(name).expect("instance just inserted");
        inst.set_limits(limits);
        Ok(inst)
    }

    pub fn report_memory(&self) {
        for (name, inst) in &self.instances {
            self.memory.set(self.index, name, inst.memory_used());
        }
    }
}

pub struct WorkerPool {
    sender: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub memory: Arc<MemoryTable>,
}

impl WorkerPool {
    pub fn new(threads: usize, languages: Arc<Vec<Arc<dyn Language>>>) -> WorkerPool {
        let (tx, rx) = unbounded::<Job>();
        let memory = Arc::new(MemoryTable::default());
        let handles = (0..threads.max(1))
            .map(|index| {
                let rx = rx.clone();
                let (languages, memory) = (languages.clone(), memory.clone());
                std::thread::Builder::new()
                    .name(format!("rg-worker-{index}"))
                    .spawn(move || {
                        let mut worker = Worker { index, languages, instances: HashMap::new(), memory };
                        while let Ok(job) = rx.recv() {
                            // A panic in a job must not kill the worker (or cross into Redis).
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut worker)));
                            if r.is_err() {
                                // The instances may be in any state after a panic: start afresh.
                                worker.instances.clear();
                            }
                            worker.report_memory();
                        }
                    })
                    .expect("spawn worker thread")
            })
            .collect();
        WorkerPool { sender: Mutex::new(Some(tx)), threads: Mutex::new(handles), memory }
    }

    /// Queues a job; false if the pool is shut down.
    pub fn submit(&self, job: Job) -> bool {
        match &*self.sender.lock() {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    /// Stops accepting jobs and waits for the workers to drain the queue.
    pub fn shutdown(&self) {
        self.sender.lock().take();
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}
