//! The script-facing API of Gears, defined once and bound by every language through
//! `engine::Natives`: `GB()` plan builders with their steps, and the globals `execute`,
//! `atomic`, `log`, `configGet`, `hashtag`, `shardId`.

mod args;
mod builder;
mod globals;
mod json;
mod recipes;

pub use builder::{METHODS as BUILDER_METHODS, READERS, UNHOOKABLE};

use builder::Builder;
use engine::{Api, LockedHost, Natives, ObjRef, RunApi, RunEnv, RunOutput, ScriptCalls, ScriptError, Value};
use std::cell::{Cell, RefCell};

pub const GLOBALS: &[&str] = &["GB", "execute", "atomic", "log", "configGet", "hashtag", "shardId", "callNext", json::ENCODE, json::DECODE, recipes::RECIPE];

/// Object kind of plan builders.
pub const BUILDER: &str = "GB";

/// The stdlib as the engine's `Api`.
#[derive(Default)]
pub struct Stdlib {
    building_plans: bool,
}

impl Stdlib {
    /// Plan-building mode: running a script's source again records the plan of its
    /// `run()` (with script functions named by position) instead of running it. This is how
    /// another instance (another worker, shard, or the same one after a restart) gets the
    /// plan from nothing but the source, language and arguments. Top-level code runs as
    /// usual, like a library loaded again.
    pub fn plan_building() -> Stdlib {
        Stdlib { building_plans: true }
    }
}

impl Api for Stdlib {
    fn begin_run(&self, env: RunEnv) -> Box<dyn RunApi> {
        self.run_with(env, self.building_plans)
    }
    fn begin_rebuild(&self, env: RunEnv) -> Box<dyn RunApi> {
        self.run_with(env, true)
    }
    fn builtin_packages(&self) -> Vec<engine::Package> {
        let mut p = json::packages();
        p.extend(recipes::packages());
        p
    }
}

impl Stdlib {
    fn run_with(&self, env: RunEnv, building_plans: bool) -> Box<dyn RunApi> {
        Box::new(ScriptRun {
            env,
            building_plans,
            builders: RefCell::new(Vec::new()),
            output: RefCell::new(None),
            plan: RefCell::new(None),
            registrations: RefCell::new(Vec::new()),
            imports: RefCell::new(Vec::new()),
            running: Cell::new(false),
            ran: Cell::new(false),
            locked: Cell::new(None),
        })
    }
}

/// The natives of one script run.
pub struct ScriptRun {
    env: RunEnv,
    building_plans: bool,
    builders: RefCell<Vec<Builder>>,
    output: RefCell<Option<RunOutput>>,
    plan: RefCell<Option<engine::Plan>>,
    registrations: RefCell<Vec<engine::RegistrationSpec>>,
    /// The packages the script imported, each once, as they were when it imported them.
    imports: RefCell<Vec<engine::Package>>,
    /// Set while `run()` executes (register() is refused from its callbacks).
    running: Cell<bool>,
    ran: Cell<bool>,
    /// The data lock while `atomic()` holds it, so `execute()` inside reuses it.
    locked: Cell<Option<*const dyn LockedHost>>,
}

impl ScriptRun {
    fn builder_ref(&self, id: u32) -> ObjRef {
        ObjRef { kind: BUILDER, id }
    }
}

impl Natives for ScriptRun {
    fn globals(&self) -> &'static [&'static str] {
        GLOBALS
    }

    fn methods(&self, kind: &str) -> &'static [&'static str] {
        if kind == BUILDER {
            builder::METHODS
        } else {
            &[]
        }
    }

    fn call_global(&self, name: &str, args: Vec<Value>, script: &dyn ScriptCalls) -> Result<Value, ScriptError> {
        match name {
            "GB" => {
                let b = builder::new_builder(&args)?;
                let mut builders = self.builders.borrow_mut();
                builders.push(b);
                Ok(Value::Object(self.builder_ref(builders.len() as u32 - 1)))
            }
            "execute" => globals::execute(self, &args),
            "callNext" => globals::call_next(self, &args),
            json::ENCODE => json::encode(&args),
            json::DECODE => json::decode(&args),
            recipes::RECIPE => match recipes::call(&args)? {
                recipes::Recipe::Target(v) => Ok(v),
                recipes::Recipe::Registration(spec) => {
                    if self.running.get() || self.locked.get().is_some() {
                        return Err(ScriptError::usage("writeBehind/writeThrough: cannot be called inside a run() or atomic(); call it from the script's top level"));
                    }
                    self.registrations.borrow_mut().push(spec);
                    Ok(Value::Nil)
                }
            },
            "atomic" => globals::atomic(self, &args, script),
            "log" => globals::log(&self.env, &args),
            "configGet" => globals::config_get(&self.env, &args),
            "hashtag" => globals::hashtag(&self.env),
            "shardId" => Ok(Value::String(self.env.host.shard_id())),
            other => Err(ScriptError::usage(format!("unknown function '{other}'"))),
        }
    }

    fn package(&self, language: &str, name: &str) -> Result<Option<String>, ScriptError> {
        let Some(p) = self.env.packages.resolve(language, name).map_err(|e| ScriptError::runtime(e.to_string()))? else {
            return Ok(None);
        };
        let source = p.source.clone();
        let mut imports = self.imports.borrow_mut();
        if !imports.iter().any(|i| i.language == p.language && i.name == p.name) {
            imports.push(p);
        }
        Ok(Some(source))
    }

    fn call_method(&self, obj: ObjRef, name: &str, args: Vec<Value>, script: &dyn ScriptCalls) -> Result<Value, ScriptError> {
        if obj.kind != BUILDER {
            return Err(ScriptError::usage(format!("unknown object kind '{}'", obj.kind)));
        }
        if name == "run" {
            let (plan, local) = {
                let builders = self.builders.borrow();
                let b = builders.get(obj.id as usize).ok_or_else(|| ScriptError::usage("run: unknown builder"))?;
                b.plan(&args)?
            };
            if self.locked.get().is_some() {
                return Err(ScriptError::usage("run: cannot be called inside atomic()"));
            }
            if self.env.host.in_place() && !self.building_plans {
                // Its reader would run on another thread with a host bound to this one.
                return Err(ScriptError::usage("run: cannot be called from a sync trigger or a command hook, which run inside the command that fired them; register with mode 'async' to run a map-reduce"));
            }
            if self.ran.replace(true) {
                return Err(ScriptError::usage("run: this script already called run(); one RG.EXEC runs one execution"));
            }
            if self.building_plans {
                *self.plan.borrow_mut() = Some(plan);
                return Ok(Value::Nil);
            }
            let batch = self.env.config.get_i64("keys-batch-size").max(1) as usize;
            let cx = engine::RunContext {
                host: &*self.env.host,
                calls: script,
                abort: &self.env.execution.abort,
                batch_size: batch,
                db: self.env.db,
                user: self.env.user.as_deref(),
            };
            self.env.execution.set_plan_info(plan.reader.name(), Vec::new());
            self.running.set(true);
            // On a cluster the plan runs on every primary (unless async_local).
            let out = engine::cluster::run_everywhere(&plan, &cx, &self.env, local).unwrap_or_else(|| engine::run_plan(&plan, &cx));
            self.running.set(false);
            let out = out?;
            self.env.execution.set_plan_info(plan.reader.name(), out.step_stats.clone());
            self.env.execution.set_records(out.records_in, out.records_out);
            *self.output.borrow_mut() = Some(out);
            return Ok(Value::Nil);
        }
        if name == "register" {
            if self.running.get() || self.locked.get().is_some() {
                return Err(ScriptError::usage("register: cannot be called inside a run() or atomic(); call it from the script's top level"));
            }
            let spec = {
                let builders = self.builders.borrow();
                let b = builders.get(obj.id as usize).ok_or_else(|| ScriptError::usage("register: unknown builder"))?;
                b.registration(&args)?
            };
            self.registrations.borrow_mut().push(spec);
            return Ok(Value::Nil);
        }
        let mut builders = self.builders.borrow_mut();
        let b = builders.get_mut(obj.id as usize).ok_or_else(|| ScriptError::usage(format!("{name}: unknown builder")))?;
        b.add(name, &args)?;
        Ok(Value::Object(obj))
    }
}

impl RunApi for ScriptRun {
    fn take_output(&self) -> Option<RunOutput> {
        self.output.borrow_mut().take()
    }
    fn take_plan(&self) -> Option<engine::Plan> {
        self.plan.borrow_mut().take()
    }
    fn take_registrations(&self) -> Vec<engine::RegistrationSpec> {
        std::mem::take(&mut self.registrations.borrow_mut())
    }
    fn imports(&self) -> Vec<engine::Package> {
        self.imports.borrow().clone()
    }
}
