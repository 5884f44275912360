//! `Engine`: ties languages, the host, the script API, executions and workers together.
//! The Redis module holds one; an embedding program can hold its own with `MemoryHost`.

use crate::execution::{Execution, Outcome, Registry};
use crate::executor::RunOutput;
use crate::instances::{Ledger, Ticket};
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
    /// Where its imports come from: the packages loaded now for a new run, the session's
    /// pinned ones for a session's instance.
    pub packages: crate::packages::PackageSource,
    pub config: Arc<Config>,
    pub execution: Arc<Execution>,
    /// The ACL user whose permissions `execute()` and readers run with (None = unchecked).
    pub user: Option<String>,
    /// The database selected by the client that started the run.
    pub db: u32,
    /// In a command hook: the hooked call, for `callNext()`.
    pub hook: Option<HookCall>,
    /// The user of the client whose command fired the run (a hook, RG.TRIGGER): every
    /// command the run sends must be allowed to it as well as to `user`, so a run can never
    /// do more than the client could (None: no client, e.g. keyspace triggers).
    pub caller: Option<String>,
    /// Set for a script sent with RG.EXEC: what its `run()` needs to run on every shard
    /// of a cluster.
    pub cluster: Option<crate::cluster::ClusterRun>,
}

/// The command call a hook intercepted.
#[derive(Clone, Debug)]
pub struct HookCall {
    /// The command and its arguments as the client sent them (`callNext()` runs it as the
    /// client's user, `RunEnv::caller`).
    pub args: Vec<Vec<u8>>,
}

/// The script API (the stdlib) as the engine sees it.
pub trait Api: Send + Sync + 'static {
    fn begin_run(&self, env: RunEnv) -> Box<dyn RunApi>;
    /// A run in plan-building mode: `run()` records its plan instead of running it and
    /// `register()` records its registration (see DESIGN: one mechanism for every instance).
    fn begin_rebuild(&self, env: RunEnv) -> Box<dyn RunApi>;
    /// Packages shipped inside the module (named `gears/...`).
    fn builtin_packages(&self) -> Vec<crate::Package> {
        Vec::new()
    }
}

/// The natives of one run, plus what its `run()` produced.
pub trait RunApi: Natives {
    fn take_output(&self) -> Option<RunOutput>;
    /// In plan-building mode: the plan the script's `run()` recorded instead of running.
    fn take_plan(&self) -> Option<crate::Plan> {
        None
    }
    /// The registrations the script declared with `register()`, in order.
    fn take_registrations(&self) -> Vec<crate::RegistrationSpec> {
        Vec::new()
    }
    /// The packages the run imported, as it imported them (source and hash).
    fn imports(&self) -> Vec<crate::Package> {
        Vec::new()
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
    /// Replace the session named by `id` (RG.EXEC ... UPGRADE).
    pub upgrade: bool,
    /// `user` is an admin (may run `CONFIG SET`): it may act on what other users own and
    /// register hooks.
    pub admin: bool,
}

impl ExecRequest {
    /// Who sends it.
    pub fn registrant(&self) -> Registrant<'_> {
        Registrant { user: self.user.as_deref(), admin: self.admin || self.user.is_none() }
    }
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
    #[error("the script is {size} bytes, more than rg.max-script-size ({limit} bytes)")]
    ScriptTooLarge { size: usize, limit: usize },
}

/// Recipe registrations (`Trigger::Recipe`) are carried out outside the engine (the
/// `recipes` crate, wired by the module): these are its hooks.
pub trait RecipeHooks: Send + Sync {
    /// Checks a recipe's options when a script registers it (RG.EXEC), so that mistakes are
    /// reported to the caller rather than found later, and that `who` may use its
    /// connection.
    fn check(&self, kind: &str, options: &Value, config: &Config, who: &Registrant) -> Result<(), String>;
    /// The sessions changed (installed, upgraded, dropped, loaded, promoted): the recipes
    /// running must follow.
    fn sessions_changed(&self, engine: &Arc<Engine>);
}

/// Who registers something: the ACL user (None: trusted, no ACL applies) and whether that
/// user is an admin (may run `CONFIG SET`).
#[derive(Clone, Copy, Debug)]
pub struct Registrant<'a> {
    pub user: Option<&'a str>,
    pub admin: bool,
}

impl Registrant<'_> {
    /// May this registrant act on what `owner` owns (its own, or any as an admin)?
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.admin || self.user.is_none() || self.user == owner
    }
}

pub struct Engine {
    pub host: Arc<dyn Host>,
    pub config: Arc<Config>,
    pub registry: Registry,
    pub sessions: crate::Sessions,
    pub packages: Arc<crate::Packages>,
    pub(crate) languages: Arc<Vec<Arc<dyn Language>>>,
    pub(crate) api: Arc<dyn Api>,
    /// Runs `run()` on every shard of a cluster.
    pub cluster: Arc<crate::cluster::Coordinator>,
    pool: WorkerPool,
    /// One thread that compiles scripts for RG.EXEC, off the Redis main thread.
    checker: WorkerPool,
    /// Every interpreter instance, with its memory (`rg.interpreters-memory-limit`).
    pub(crate) ledger: Arc<Ledger>,
    /// While loading (RDB, AOF): the time left for rebuilding sessions on the loading thread.
    pub(crate) load_budget: parking_lot::Mutex<Option<std::time::Duration>>,
    /// What the module adds for recipe registrations (write-behind): set once at load.
    pub recipes: std::sync::OnceLock<Arc<dyn RecipeHooks>>,
    pub(crate) timers: Arc<crate::streams::Timers>,
}

/// What running a session's script again gives: its language, registrations and imports.
pub(crate) type Rebuilt = (&'static str, Vec<crate::RegistrationSpec>, Vec<crate::Package>);

/// The internal command that carries a session to replicas and the AOF.
pub const SESSION_LOAD: &str = "RG.SESSIONLOAD";

/// One thread's instance of a session, with the functions its registrations use.
struct SessionInstance {
    version: u64,
    instance: Box<dyn Instance>,
    ticket: Ticket,
}

/// An instance kept for syntax checks on the thread that asks for them.
struct Checker {
    instance: Box<dyn Instance>,
    ticket: Ticket,
}

/// Is `session` running on this thread right now?
pub fn session_busy(session: &str) -> bool {
    SESSION_INSTANCES.with(|c| c.borrow().get(session).is_some_and(|s| s.try_borrow_mut().is_err()))
}

/// Lets steps call the functions of a session instance.
pub(crate) struct InstanceCalls<'a> {
    pub(crate) inst: std::cell::RefCell<&'a mut Box<dyn Instance>>,
    pub(crate) natives: &'a dyn Natives,
}

impl crate::ScriptCalls for InstanceCalls<'_> {
    fn call(&self, f: crate::FnRef, args: &[Value]) -> Result<Value, ScriptError> {
        let mut inst = self.inst.try_borrow_mut().map_err(|_| ScriptError::usage("a step cannot call back into its own session"))?;
        inst.call(f, args, self.natives)
    }
}

thread_local! {
    /// The sessions generation and ledger evictions this thread last purged against.
    static SEEN: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((u64::MAX, u64::MAX)) };
    /// Each thread's instances of the sessions it has fired.
    static SESSION_INSTANCES: RefCell<HashMap<String, std::rc::Rc<RefCell<SessionInstance>>>> = RefCell::new(HashMap::new());

    /// Instances used on the calling thread for `Engine::check`.
    static CHECKERS: RefCell<HashMap<&'static str, Checker>> = RefCell::new(HashMap::new());
}

impl Engine {
    pub fn new(host: Arc<dyn Host>, config: Arc<Config>, languages: Vec<Arc<dyn Language>>, api: Arc<dyn Api>) -> Arc<Engine> {
        let languages = Arc::new(languages);
        let threads = config.get_i64("execution-threads").max(1) as usize;
        let registry = Registry::new(host.shard_id(), config.get_i64("max-executions").max(1) as u64);
        registry.set_max_bytes(config.get_i64("max-executions-memory").max(0) as u64);
        let packages: Arc<crate::Packages> = Default::default();
        for p in api.builtin_packages() {
            let _ = packages.load(p, true);
        }
        let ledger: Arc<Ledger> = Default::default();
        let cluster = crate::cluster::Coordinator::new(host.clone(), config.clone());
        let engine = Arc::new(Engine {
            cluster,
            pool: WorkerPool::new(threads, languages.clone(), ledger.clone()),
            checker: WorkerPool::named("rg-check", 1, languages.clone(), ledger.clone()),
            ledger,
            load_budget: Default::default(),
            host,
            config,
            registry,
            sessions: Default::default(),
            packages,
            languages,
            api,
            recipes: Default::default(),
            timers: crate::streams::Timers::start(),
        });
        // Every worker purges after each job, and at once when sessions change.
        for pool in [&engine.pool, &engine.checker] {
            let weak = Arc::downgrade(&engine);
            pool.set_after_job(Box::new(move |_| {
                if let Some(e) = weak.upgrade() {
                    e.purge_thread();
                }
            }));
        }
        let weak = Arc::downgrade(&engine);
        let _ = engine.cluster.digest.set(Box::new(move || {
            if let Some(e) = weak.upgrade() {
                e.send_digest();
            }
        }));
        let weak = Arc::downgrade(&engine);
        engine.sessions.on_change(Box::new(move || {
            if let Some(e) = weak.upgrade() {
                e.request_purge();
            }
        }));
        engine
    }

    /// `rg.interpreters-memory-limit` in bytes (0: no limit).
    pub(crate) fn memory_cap(&self) -> usize {
        self.config.get_i64(crate::instances::CAP_SETTING).max(0) as usize
    }

    /// Tells every worker to purge now (idle ones included); the thread that owns the
    /// other instances (the Redis main thread) purges on its next `purge_thread`.
    pub fn request_purge(&self) {
        let make = || -> crate::workers::Job { Box::new(|_| {}) };
        self.pool.broadcast(&make);
        self.checker.broadcast(&make);
    }

    /// Drops this thread's instances of sessions dropped or upgraded since, and those the
    /// ledger asked to go. Cheap when nothing changed: the Redis main thread calls it on
    /// every cron tick.
    pub fn purge_thread(&self) {
        let now = (self.sessions.generation(), self.ledger.evictions());
        if SEEN.with(|s| s.replace(now)) == now {
            return;
        }
        // Instances are dropped outside the borrow of the cache (dropping one runs the
        // interpreter's finalizers).
        let gone: Vec<_> = SESSION_INSTANCES.with(|c| {
            let mut c = c.borrow_mut();
            let ids: Vec<String> = c
                .iter()
                .filter(|(id, s)| s.try_borrow().is_ok_and(|i| i.ticket.must_go() || self.sessions.get(id).is_none_or(|cur| cur.version != i.version)))
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter().filter_map(|id| c.remove(&id)).collect()
        });
        drop(gone);
        let gone: Vec<_> = CHECKERS.with(|c| {
            let mut c = c.borrow_mut();
            let names: Vec<&'static str> = c.iter().filter(|(_, k)| k.ticket.must_go()).map(|(n, _)| *n).collect();
            names.into_iter().filter_map(|n| c.remove(n)).collect()
        });
        drop(gone);
    }

    /// After a call: asks idle instances to go while all are over the cap, and purges.
    fn enforce_cap(&self) {
        if self.ledger.enforce(self.memory_cap()) {
            self.request_purge();
            self.purge_thread();
        }
    }

    /// A setting changed (RG.CONFIGSET): applies what must follow at once.
    pub fn setting_changed(&self, name: &str) {
        match crate::normalize_setting(name).as_str() {
            "max-executions" => self.registry.set_max(self.config.get_i64("max-executions").max(1) as u64),
            "max-executions-memory" => self.registry.set_max_bytes(self.config.get_i64("max-executions-memory").max(0) as u64),
            crate::instances::CAP_SETTING => self.enforce_cap(),
            _ => {}
        }
    }

    /// Interpreter instances: how many, and the bytes they hold (all, or one language's).
    pub fn interpreters(&self, language: Option<&str>) -> crate::instances::Usage {
        self.ledger.usage(language)
    }

    pub fn language(&self, name: &str) -> Result<Arc<dyn Language>, EngineError> {
        let lower = name.to_ascii_lowercase();
        self.languages.iter().find(|l| l.name() == lower).cloned().ok_or_else(|| EngineError::UnknownLanguage(name.to_string()))
    }

    pub fn language_names(&self) -> Vec<&'static str> {
        self.languages.iter().map(|l| l.name()).collect()
    }

    /// Refuses a source longer than `rg.max-script-size`.
    pub fn check_size(&self, source: &str) -> Result<(), EngineError> {
        let limit = self.config.get_i64("max-script-size").max(0) as usize;
        if limit > 0 && source.len() > limit {
            return Err(EngineError::ScriptTooLarge { size: source.len(), limit });
        }
        Ok(())
    }

    /// Compiles `source` on the calling thread without running it. Compiling a large
    /// script takes a while: the Redis main thread uses `submit_checked` instead.
    pub fn check(&self, language: &str, source: &str) -> Result<(), EngineError> {
        let lang = self.language(language)?;
        self.check_size(source)?;
        let name = lang.name();
        let r = CHECKERS.with(|c| -> Result<(), ScriptError> {
            let mut c = c.borrow_mut();
            if c.get(name).is_some_and(|k| k.ticket.must_go()) {
                c.remove(name);
            }
            if !c.contains_key(name) {
                let ticket = self.ledger.admit(name, &format!("checking a {name} script"), self.memory_cap())?;
                c.insert(name, Checker { instance: lang.new_instance(self.config.limits(name))?, ticket });
            }
            let k = c.get_mut(name).expect("checker just inserted");
            k.ticket.start_use();
            k.instance.set_limits(self.config.limits(name));
            let r = k.instance.check(source);
            k.ticket.end_use(k.instance.memory_used());
            r
        });
        self.enforce_cap();
        Ok(r?)
    }

    /// Compiles the script off the calling thread (on the engine's checker thread), then
    /// creates its execution and queues it, and calls `queued` with the execution or why
    /// there is none (a syntax error creates no execution). `queued` is always called, from
    /// the checker thread or (errors found without compiling) from this one.
    pub fn submit_checked(self: &Arc<Self>, req: ExecRequest, queued: Box<dyn FnOnce(Result<Arc<Execution>, EngineError>) + Send>) {
        let lang = match self.language(&req.language).and_then(|l| self.check_size(&req.source).map(|()| l)) {
            Ok(l) => l,
            Err(e) => return queued(Err(e)),
        };
        // Shared with the job, so that a job that never runs still answers.
        let queued = Arc::new(parking_lot::Mutex::new(Some(queued)));
        let answer = queued.clone();
        let engine = self.clone();
        let submitted = self.checker.submit(Box::new(move |worker| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let name = lang.name();
                let checked = match worker.instance(name, engine.config.limits(name), engine.memory_cap()) {
                    Ok(inst) => inst.check(&req.source),
                    Err(e) => Err(e),
                };
                worker.release(name);
                engine.enforce_cap();
                match checked {
                    Ok(()) => engine.submit(req),
                    Err(e) => Err(e.into()),
                }
            }))
            .unwrap_or_else(|_| Err(ScriptError::runtime("internal error while compiling the script").into()));
            if let Some(q) = answer.lock().take() {
                q(r);
            }
        }));
        if !submitted {
            if let Some(q) = queued.lock().take() {
                q(Err(EngineError::ShuttingDown));
            }
        }
    }

    /// Creates the execution and queues the script on a worker. Returns at once.
    pub fn submit(self: &Arc<Self>, req: ExecRequest) -> Result<Arc<Execution>, EngineError> {
        let lang = self.language(&req.language)?;
        self.check_size(&req.source)?;
        let exec = self.registry.create(req.id.clone(), lang.name(), req.description.clone(), req.registrant())?;
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
            engine.registry.finish(&exec, outcome, aborted);
        }));
        if !submitted {
            exec.finish(Outcome::Failed("the engine is shutting down".into()), true);
            return Err(EngineError::ShuttingDown);
        }
        Ok(exec)
    }

    fn run_on_worker(self: &Arc<Self>, worker: &mut crate::workers::Worker, language: &'static str, req: &ExecRequest, exec: &Arc<Execution>) -> (Outcome, bool) {
        if exec.abort.load(Ordering::SeqCst) {
            return (Outcome::Failed("execution aborted".into()), true);
        }
        exec.mark_running();
        let result = self.run_script(worker, language, req, exec);
        worker.release(language);
        self.enforce_cap();
        result
    }

    fn run_script(self: &Arc<Self>, worker: &mut crate::workers::Worker, language: &'static str, req: &ExecRequest, exec: &Arc<Execution>) -> (Outcome, bool) {
        let inst = match worker.instance(language, self.config.limits(language), self.memory_cap()) {
            Ok(i) => i,
            Err(e) => return (Outcome::Failed(e.message), false),
        };
        inst.clock().set_abort_flag(exec.abort.clone());
        let api = self.api.begin_run(RunEnv {
            packages: crate::packages::PackageSource::Current(self.packages.clone()),
            host: self.host.clone(),
            config: self.config.clone(),
            execution: exec.clone(),
            user: req.user.clone(),
            db: req.db,
            hook: None,
            caller: None,
            cluster: Some(crate::cluster::ClusterRun {
                coordinator: self.cluster.clone(),
                language: language.to_string(),
                source: req.source.clone(),
                args: req.args.clone(),
                description: req.description.clone(),
            }),
        });
        let result = inst.run(&req.source, &req.args, &*api as &dyn Natives);
        inst.end_run();
        inst.clock().reset_abort_flag();
        let aborted = exec.abort.load(Ordering::SeqCst);
        let specs = api.take_registrations();
        if result.is_ok() && (!specs.is_empty() || req.upgrade) {
            // Installed under the data lock: no trigger fires while the old registrations
            // give way to the new ones.
            let locked = self.host.lock(req.db);
            let who = req.registrant();
            let upgrading = req.id.as_deref().filter(|_| req.upgrade);
            if let Err(e) = self.check_registrations(&*locked, &who, &specs, req.user.as_deref(), upgrading) {
                return (Outcome::Failed(e), false);
            }
            let def = crate::SessionDef {
                id: exec.id.clone(),
                language: language.to_string(),
                source: req.source.clone(),
                args: req.args.clone(),
                user: req.user.clone(),
                db: req.db,
                description: req.description.clone(),
                removed: Vec::new(),
                paused: Vec::new(),
                positions: Vec::new(),
                // Its instances import these, whatever RG.PACKAGE LOAD ... REPLACE does later.
                packages: Some(api.imports().into_iter().filter(|p| !p.builtin).collect()),
            };
            // What is installed must be restorable where the keyspace cannot be used (loading
            // an RDB, a replica applying it): check that now rather than lose it then.
            drop(locked);
            let no_data: Arc<dyn Host> = Arc::new(crate::NoDataHost { shard_id: self.host.shard_id() });
            match self.rebuild_registrations(&def, no_data, None) {
                Ok((_, again, _)) if again.len() == specs.len() && again.iter().zip(&specs).all(|(a, b)| a == b) => {}
                Ok(_) => return (Outcome::Failed("register: running the script again registered something else; a script must register the same way every time it runs".into()), false),
                Err(e) => return (Outcome::Failed(format!("register: the session could not be restored after a restart or on a replica: {e}")), false),
            }
            // On a cluster every other primary checks it first: all or none install it.
            if let Err(e) = self.cluster_prepare(&def, &req.registrant(), req.upgrade) {
                return (Outcome::Failed(e), false);
            }
            let locked = self.host.lock(req.db);
            let replace = if req.upgrade { crate::Replace::Must } else { crate::Replace::No };
            match self.sessions.install(&def, language, specs, api.imports(), replace) {
                // Replicas and the AOF get the session as one command.
                Ok(_) => locked.replicate(&[SESSION_LOAD.as_bytes(), &def.encode()]),
                Err(e) => return (Outcome::Failed(e.to_string()), false),
            }
            drop(locked);
            // Then every other primary installs it too (before RG.EXEC answers).
            self.cluster_publish(true);
            // StreamReader registrations start on the entries already in their streams.
            self.kick_streams();
        }
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

    /// May `who` register these (or, with UPGRADE, replace session `upgrading`)?
    /// Registering is loading code that runs later, like `FUNCTION LOAD`; hooks intercept
    /// every user's commands, so they need an admin; a session is upgraded by its owner or
    /// an admin; `user` (the session's) must be able to read the keys it registers on; a
    /// recipe's connection must allow it. Every primary of a cluster checks the same.
    pub(crate) fn check_registrations(&self, locked: &dyn crate::LockedHost, who: &Registrant, specs: &[crate::RegistrationSpec], user: Option<&str>, upgrading: Option<&str>) -> Result<(), String> {
        if let Some(u) = who.user {
            if let Err(crate::HostError::NoPermission(_)) = locked.permitted(u, &[b"FUNCTION", b"LOAD", b"x"]) {
                return Err(format!("NOPERM user '{u}' may not register triggers: it needs the permission to run FUNCTION LOAD"));
            }
            if specs.iter().any(|s| matches!(&s.trigger, crate::Trigger::Hook { .. })) && !who.admin {
                return Err(format!("NOPERM user '{u}' may not register a hook: hooks need admin rights (the permission to run CONFIG SET)"));
            }
            if let Some(old) = upgrading.and_then(|id| self.sessions.get(id)) {
                if !who.owns(old.user.as_deref()) {
                    return Err(not_owner("session", &old.id, old.user.as_deref()));
                }
            }
        }
        // A user may only register on keys it may read (checked on the prefix itself).
        if let Some(user) = user {
            for spec in specs {
                let prefix = match &spec.trigger {
                    crate::Trigger::Keys { prefix, .. } | crate::Trigger::Stream { prefix, .. } | crate::Trigger::Recipe { prefix, .. } => prefix,
                    crate::Trigger::Command { .. } | crate::Trigger::Hook { .. } => continue,
                };
                if let Err(crate::HostError::NoPermission(_)) = locked.call(Some(user), &[b"EXISTS", prefix]) {
                    return Err(format!("register: user '{user}' may not read keys starting with '{}'", String::from_utf8_lossy(prefix)));
                }
            }
        }
        for spec in specs {
            if let crate::Trigger::Recipe { kind, options, .. } = &spec.trigger {
                let checked = match self.recipes.get() {
                    Some(r) => r.check(kind, options, &self.config, who),
                    None => Err("recipes are not available in this host".to_string()),
                };
                checked.map_err(|e| format!("{kind}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Installs (or replaces) a session from its definition, as when loading RDB/AOF or
    /// applying the primary's: the script runs again on this thread in plan-building mode,
    /// with `host` for its top-level code, to recover its registrations.
    pub fn restore_session(&self, def: &crate::SessionDef, host: Arc<dyn Host>) -> Result<Arc<crate::Session>, String> {
        let (language, specs, imports) = self.rebuild_registrations(def, host, None)?;
        self.sessions.install(def, language, specs, imports, crate::Replace::Any).map_err(|e| e.to_string())
    }

    /// Runs a session's script in a fresh instance in plan-building mode and returns what it
    /// registers and imports. `timeout` replaces `rg.script-timeout` for its top-level code.
    pub(crate) fn rebuild_registrations(&self, def: &crate::SessionDef, host: Arc<dyn Host>, timeout: Option<std::time::Duration>) -> Result<Rebuilt, String> {
        let lang = self.language(&def.language).map_err(|e| e.to_string())?;
        let ticket = self.ledger.admit(lang.name(), &format!("rebuilding session '{}'", def.id), self.memory_cap()).map_err(|e| format!("session '{}': {}", def.id, e.message))?;
        let mut limits = self.config.limits(lang.name());
        if let Some(t) = timeout {
            limits.timeout = t;
        }
        let mut instance = lang.new_instance(limits).map_err(|e| e.message)?;
        let execution = Arc::new(Execution::new(def.id.clone(), lang.name(), None));
        let packages = match &def.packages {
            Some(pinned) => self.pinned(&def.id, Arc::new(pinned.clone())),
            // Saved before sessions pinned their packages: those loaded now, pinned from here on.
            None => crate::packages::PackageSource::Current(self.packages.clone()),
        };
        let natives = self.api.begin_rebuild(RunEnv { host, packages, config: self.config.clone(), execution, user: def.user.clone(), db: def.db, hook: None, caller: None, cluster: None });
        let r = instance.run(&def.source, &def.args, &*natives as &dyn Natives);
        instance.end_run();
        ticket.end_use(instance.memory_used());
        drop(instance);
        drop(ticket);
        r.map_err(|e| format!("session '{}': {}", def.id, e.message))?;
        // The session keeps every package it pinned, even one this run did not import.
        let mut imports = natives.imports();
        for p in def.packages.iter().flatten() {
            if !imports.iter().any(|i| i.language == p.language && i.name == p.name) {
                imports.push(p.clone());
            }
        }
        Ok((lang.name(), natives.take_registrations(), imports))
    }

    /// Runs a registration's steps over `records` in this thread, with this thread's
    /// instance of the session (built on first use by running the session's source again
    /// in plan-building mode). `host` is how its `execute()` calls reach the data: in place
    /// for sync triggers, through the lock for async ones.
    pub fn fire(&self, host: Arc<dyn Host>, session: &Arc<crate::Session>, reg: &crate::Registration, records: Vec<Value>) -> Result<RunOutput, ScriptError> {
        self.fire_for(host, session, reg, records, None, None)
    }

    /// `fire` for a client's command (a hook, RG.TRIGGER): every command the steps send
    /// must be allowed to `caller` too; in a hook, `callNext()` runs `hook`'s call as
    /// `caller`.
    pub fn fire_for(&self, host: Arc<dyn Host>, session: &Arc<crate::Session>, reg: &crate::Registration, records: Vec<Value>, hook: Option<HookCall>, caller: Option<String>) -> Result<RunOutput, ScriptError> {
        if session_busy(&session.id) {
            // The session's own trigger wrote this key: not fired again (no recursion).
            return Ok(RunOutput::default());
        }
        let started = std::time::Instant::now();
        let execution = Arc::new(Execution::new(reg.id.clone(), session.language, None));
        let env = RunEnv { host: host.clone(), packages: self.pinned(&session.id, session.imports.clone()), config: self.config.clone(), execution: execution.clone(), user: session.user.clone(), db: session.db, hook, caller, cluster: None };
        let result = self.with_session_instance(session, env.clone(), |inst| {
            let natives = self.api.begin_run(env);
            let calls = InstanceCalls { inst: std::cell::RefCell::new(inst), natives: &*natives as &dyn Natives };
            // The records are given: these steps read nothing, so no batch size is looked up
            // (a run() inside a step builds its own context).
            let cx = crate::RunContext { host: &*host, calls: &calls, abort: &execution.abort, batch_size: 1, db: session.db, user: session.user.as_deref() };
            crate::run_steps(&reg.spec.steps, records, &cx)
        });
        let aborted = matches!(&result, Err(e) if e.kind == ScriptErrorKind::Aborted);
        match &result {
            Ok(out) => reg.record(started.elapsed(), Ok(&out.errors), false),
            Err(e) => reg.record(started.elapsed(), Err(&e.message), aborted),
        }
        result
    }

    /// The imports of a session's instances: the packages it imported when it was
    /// registered, and the module's built-in ones.
    fn pinned(&self, session: &str, packages: Arc<Vec<crate::Package>>) -> crate::packages::PackageSource {
        crate::packages::PackageSource::Pinned { builtins: self.packages.clone(), session: session.to_string(), packages }
    }

    /// Queues a job on a worker; false if the engine is shutting down.
    pub fn submit_job(&self, job: Box<dyn FnOnce() + Send>) -> bool {
        self.pool.submit(Box::new(move |_worker| {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }))
    }

    /// Runs `f` on the timer thread as soon as possible (off the thread that asks, e.g. the
    /// main thread, which must not wait for the data lock it holds).
    pub fn soon(&self, f: Box<dyn FnOnce() + Send>) {
        self.timers.at(std::time::Instant::now(), f);
    }

    /// Queues a registration's firing on a worker; `done` gets the outcome there.
    pub fn fire_async(self: &Arc<Self>, session: Arc<crate::Session>, reg: Arc<crate::Registration>, records: Vec<Value>, caller: Option<String>, done: Option<Box<dyn FnOnce(Result<RunOutput, ScriptError>) + Send>>) -> bool {
        let engine = self.clone();
        self.pool.submit(Box::new(move |_worker| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.fire_for(engine.host.clone(), &session, &reg, records, None, caller)))
                .unwrap_or_else(|_| Err(ScriptError::runtime("internal error: a trigger's worker panicked")));
            if let Some(done) = done {
                done(r);
            }
        }))
    }

    /// Calls `f` with this thread's instance of `session`, building it if needed. A session
    /// already running on this thread (its trigger wrote a key it listens to) is not entered
    /// again: that is what keeps a trigger from firing itself without end.
    fn with_session_instance<R>(&self, session: &Arc<crate::Session>, env: RunEnv, f: impl FnOnce(&mut Box<dyn Instance>) -> Result<R, ScriptError>) -> Result<R, ScriptError> {
        // Forget instances of sessions that were dropped or upgraded since last time.
        self.purge_thread();
        let slot = SESSION_INSTANCES.with(|c| c.borrow().get(&session.id).filter(|s| s.try_borrow().map_or(true, |i| i.version == session.version && !i.ticket.must_go())).cloned());
        let slot = match slot {
            Some(s) => s,
            None => {
                let built = self.build_session_instance(session, env)?;
                let s = std::rc::Rc::new(std::cell::RefCell::new(built));
                SESSION_INSTANCES.with(|c| c.borrow_mut().insert(session.id.clone(), s.clone()));
                s
            }
        };
        let mut guard = slot.try_borrow_mut().map_err(|_| ScriptError::usage(format!("session '{}' is already running on this thread: a trigger does not fire triggers of its own session", session.id)))?;
        guard.ticket.start_use();
        let r = f(&mut guard.instance);
        guard.ticket.end_use(guard.instance.memory_used());
        // Dropped, upgraded or evicted while it ran (the purge then had to skip it).
        if guard.ticket.must_go() || self.sessions.get(&session.id).is_none_or(|cur| cur.version != guard.version) {
            SEEN.with(|s| s.set((u64::MAX, u64::MAX)));
        }
        drop(guard);
        drop(slot);
        self.enforce_cap();
        self.purge_thread();
        r
    }

    fn build_session_instance(&self, session: &Arc<crate::Session>, env: RunEnv) -> Result<SessionInstance, ScriptError> {
        let lang = self.language(session.language).map_err(|e| ScriptError::usage(e.to_string()))?;
        if session.unbuilt.is_some() {
            return Err(ScriptError::usage(format!("session '{}' has not been rebuilt since it was loaded", session.id)));
        }
        let ticket = self.ledger.admit(lang.name(), &format!("session '{}'", session.id), self.memory_cap())?;
        let mut instance = lang.new_instance(self.config.limits(lang.name()))?;
        let natives = self.api.begin_rebuild(env);
        let built = instance.run(&session.source, &session.args, &*natives as &dyn Natives);
        ticket.end_use(instance.memory_used());
        built?;
        let specs = natives.take_registrations();
        let same = specs.len() == session.declared && session.registrations.iter().all(|r| specs[r.index].steps == r.spec.steps);
        if !same {
            return Err(ScriptError::usage(format!(
                "session '{}': running its script again registered something else; a script must register the same way every time it runs",
                session.id
            )));
        }
        // The run's functions stay alive: the registrations' steps refer to them.
        Ok(SessionInstance { version: session.version, instance, ticket })
    }

    /// Memory held by all instances of a language (workers', sessions', checkers').
    pub fn memory_used(&self, language: &str) -> usize {
        self.ledger.usage(Some(language)).bytes
    }

    pub fn shutdown(&self) {
        self.cluster.shutdown();
        for e in self.registry.all() {
            e.request_abort();
        }
        self.checker.shutdown();
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

/// `CONFIG SET` as an ACL check: a user allowed it is an admin of Gears.
pub const ADMIN_COMMAND: &[&[u8]] = &[b"CONFIG", b"SET", b"rg-admin-check", b"0"];

/// Is `user` an admin (allowed `CONFIG SET`)?
pub fn is_admin(locked: &dyn crate::LockedHost, user: &str) -> bool {
    locked.permitted(user, ADMIN_COMMAND).is_ok()
}

/// The refusal of acting on what another user owns.
pub fn not_owner(what: &str, id: &str, owner: Option<&str>) -> String {
    format!("NOPERM {what} '{id}' belongs to user '{}': only its owner or an admin may see or change it", owner.unwrap_or("(none)"))
}
