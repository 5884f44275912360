//! `Engine`: ties languages, the host, the script API, executions and workers together.
//! The Redis module holds one; an embedding program can hold its own with `MemoryHost`.

use crate::execution::{Execution, Outcome, Registry};
use crate::executor::RunOutput;
use crate::workers::WorkerPool;
use crate::{Config, Host, Instance, Language, Natives, ScriptError, ScriptErrorKind, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Everything one run of a script can reach.
#[derive(Clone)]
pub struct RunEnv {
    pub host: Arc<dyn Host>,
    pub config: Arc<Config>,
    pub execution: Arc<Execution>,
    /// The ACL user whose permissions `execute()` and readers run with (None = unchecked).
    pub user: Option<String>,
    /// The database selected by the client that started the run.
    pub db: u32,
}

/// The script API (the stdlib) as the engine sees it.
pub trait Api: Send + Sync + 'static {
    fn begin_run(&self, env: RunEnv) -> Box<dyn RunApi>;
}

/// The natives of one run, plus what its `run()` produced.
pub trait RunApi: Natives {
    fn take_output(&self) -> Option<RunOutput>;
    /// In plan-building mode: the plan the script's `run()` recorded instead of running.
    fn take_plan(&self) -> Option<crate::Plan> {
        None
    }
}

/// A request to run a script.
pub struct ExecRequest {
    pub language: String,
    pub source: String,
    pub args: Vec<Vec<u8>>,
    pub id: Option<String>,
    pub description: Option<String>,
    pub user: Option<String>,
    pub db: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown language '{0}': expected 'lua' or 'js'")]
    UnknownLanguage(String),
    #[error("{0}")]
    Script(#[from] ScriptError),
    #[error(transparent)]
    Registry(#[from] crate::execution::RegistryError),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

pub struct Engine {
    pub host: Arc<dyn Host>,
    pub config: Arc<Config>,
    pub registry: Registry,
    languages: Arc<Vec<Arc<dyn Language>>>,
    api: Arc<dyn Api>,
    pool: WorkerPool,
}

thread_local! {
    /// Instances used on the calling thread (the Redis main thread) for syntax checks.
    static CHECKERS: RefCell<HashMap<&'static str, Box<dyn Instance>>> = RefCell::new(HashMap::new());
}

impl Engine {
    pub fn new(host: Arc<dyn Host>, config: Arc<Config>, languages: Vec<Arc<dyn Language>>, api: Arc<dyn Api>) -> Arc<Engine> {
        let languages = Arc::new(languages);
        let threads = config.get_i64("execution-threads").max(1) as usize;
        let registry = Registry::new(host.shard_id(), config.get_i64("max-executions").max(1) as u64);
        Arc::new(Engine { pool: WorkerPool::new(threads, languages.clone()), host, config, registry, languages, api })
    }

    pub fn language(&self, name: &str) -> Result<Arc<dyn Language>, EngineError> {
        let lower = name.to_ascii_lowercase();
        self.languages.iter().find(|l| l.name() == lower).cloned().ok_or_else(|| EngineError::UnknownLanguage(name.to_string()))
    }

    pub fn language_names(&self) -> Vec<&'static str> {
        self.languages.iter().map(|l| l.name()).collect()
    }

    /// Compiles `source` on the calling thread without running it.
    pub fn check(&self, language: &str, source: &str) -> Result<(), EngineError> {
        let lang = self.language(language)?;
        CHECKERS.with(|c| {
            let mut c = c.borrow_mut();
            if !c.contains_key(lang.name()) {
                c.insert(lang.name(), lang.new_instance(self.config.limits(lang.name()))?);
            }
            let inst = c.get_mut(lang.name()).expect("checker just inserted");
            inst.check(source)?;
            Ok(())
        })
    }

    /// Creates the execution and queues the script on a worker. Returns at once.
    pub fn submit(self: &Arc<Self>, req: ExecRequest) -> Result<Arc<Execution>, EngineError> {
        let lang = self.language(&req.language)?;
        let exec = self.registry.create(req.id.clone(), lang.name(), req.description.clone())?;
        let engine = self.clone();
        let job_exec = exec.clone();
        let submitted = self.pool.submit(Box::new(move |worker| {
            let exec = job_exec;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.run_on_worker(worker, lang.name(), &req, &exec)
            }));
            let (outcome, aborted) = match outcome {
                Ok(r) => r,
                Err(_) => (Outcome::Failed("internal error: the script's worker panicked".into()), false),
            };
            exec.finish(outcome, aborted);
            engine.registry.finished();
        }));
        if !submitted {
            exec.finish(Outcome::Failed("the engine is shutting down".into()), true);
            return Err(EngineError::ShuttingDown);
        }
        Ok(exec)
    }

    fn run_on_worker(&self, worker: &mut crate::workers::Worker, language: &'static str, req: &ExecRequest, exec: &Arc<Execution>) -> (Outcome, bool) {
        if exec.abort.load(Ordering::SeqCst) {
            return (Outcome::Failed("execution aborted".into()), true);
        }
        exec.mark_running();
        let inst = match worker.instance(language, self.config.limits(language)) {
            Ok(i) => i,
            Err(e) => return (Outcome::Failed(e.message), false),
        };
        inst.clock().set_abort_flag(exec.abort.clone());
        let api = self.api.begin_run(RunEnv {
            host: self.host.clone(),
            config: self.config.clone(),
            execution: exec.clone(),
            user: req.user.clone(),
            db: req.db,
        });
        let result = inst.run(&req.source, &req.args, &*api as &dyn Natives);
        inst.end_run();
        inst.clock().reset_abort_flag();
        let aborted = exec.abort.load(Ordering::SeqCst);
        match result {
            Ok(v) => match api.take_output() {
                Some(out) => (Outcome::Records { results: out.results, errors: out.errors }, aborted),
                None => (Outcome::Returned(v), aborted),
            },
            Err(e) => {
                let aborted = aborted || e.kind == ScriptErrorKind::Aborted;
                (Outcome::Failed(e.message), aborted)
            }
        }
    }

    /// Memory used by all instances of a language on the workers.
    pub fn memory_used(&self, language: &str) -> usize {
        self.pool.memory.total(language)
    }

    pub fn shutdown(&self) {
        for e in self.registry.all() {
            e.request_abort();
        }
        self.pool.shutdown();
    }
}

/// Formats an outcome as the `[results, errors]` pair of RG.EXEC and RG.GETRESULTS.
pub fn outcome_value(o: &Outcome) -> Result<Value, String> {
    match o {
        Outcome::Records { results, errors } => Ok(Value::Array(vec![
            Value::Array(results.clone()),
            Value::Array(errors.iter().map(|e| Value::String(e.clone())).collect()),
        ])),
        Outcome::Returned(v) => Ok(v.clone()),
        Outcome::Failed(e) => Err(e.clone()),
    }
}
