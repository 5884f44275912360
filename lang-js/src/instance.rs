//! `JsInstance`: one QuickJS runtime reused for many runs, a fresh context per run.

use crate::bridge::{call_raw, native_function, prime_function_prototype, Target};
use crate::convert::{rejection, ToJs, ToValue};
use crate::error::{from_exception, from_js_error, Phase};
use crate::memory::Counting;
use crate::modules::{compile_script, install_loader, owned, Compiled, ModuleHost};
use crate::state::{NativesGuard, State};
use crate::{sandbox, stack};
use engine::{CallClock, FnRef, Instance, Limits, Natives, ScriptError, Value};
use rquickjs::context::intrinsic;
use rquickjs::promise::PromiseState;
use rquickjs::{qjs, Array, Context, Ctx, Runtime, Value as JsValue};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

/// Most promise jobs flushed (and interrupted) when a run ends.
const MAX_LEFTOVER_JOBS: usize = 100_000;

/// A JS interpreter instance. Not `Send`: it lives on the thread that created it.
pub struct JsInstance {
    /// The current run's context (globals), if a run is active.
    context: Option<Context>,
    state: Rc<State>,
    /// Dropped after everything that lives in its heap.
    runtime: Runtime,
    /// What the runtime's module loader points to: dropped after the runtime.
    _modules: Box<ModuleHost>,
}

impl JsInstance {
    pub fn new(limits: Limits) -> Result<Self, ScriptError> {
        let state = Rc::new(State::default());
        let runtime = Runtime::new_with_alloc(Counting(state.memory.clone()))
            .map_err(|e| ScriptError::runtime(format!("cannot create a JS runtime: {e}")))?;
        prime_function_prototype(&runtime)
            .map_err(|e| ScriptError::runtime(format!("cannot create a JS runtime: {e}")))?;
        let hook = state.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || interrupt(&hook))));
        let modules = ModuleHost::new(&state);
        // SAFETY: `modules` is moved into the instance with the runtime and dropped after it.
        unsafe { install_loader(&runtime, &modules) }
            .map_err(|e| ScriptError::runtime(format!("cannot create a JS runtime: {e}")))?;
        let mut instance = JsInstance { context: None, state, runtime, _modules: modules };
        instance.set_limits(limits);
        Ok(instance)
    }

    fn run_inner(&mut self, source: &str, args: &[Vec<u8>], natives: &dyn Natives) -> Result<Value, ScriptError> {
        let context = Context::full(&self.runtime).map_err(|e| self.context_error(e))?;
        self.context = Some(context.clone());
        let state = self.state.clone();
        let _natives = NativesGuard::bind(&state, natives);
        state.start_call();
        context.with(|ctx| {
            stack::enter(&ctx)?;
            let _script = state.clock.enter_script();
            sandbox::install(&ctx, &state)?;
            install_globals(&ctx, &state, args, natives.globals())?;
            match compile_script(&ctx, &state, source)? {
                Compiled::Global(script) => {
                    let result = execute(&ctx, script).map_err(|e| from_js_error(&ctx, &state, e, Phase::Run))?;
                    drain_jobs(&ctx, &state)?;
                    ToValue::new(&ctx, &state).convert(&result, 0)
                }
                // A module has no completion value: a module script's result is Nil.
                Compiled::Module(module) => evaluate_module(&ctx, &state, module).map(|()| Value::Nil),
            }
        })
    }

    fn call_inner(&mut self, f: FnRef, args: &[Value], natives: &dyn Natives) -> Result<Value, ScriptError> {
        let context = self.context.clone().ok_or_else(|| ScriptError::runtime("no script is running"))?;
        let state = self.state.clone();
        let _natives = NativesGuard::bind(&state, natives);
        state.start_call();
        context.with(|ctx| {
            stack::enter(&ctx)?;
            let _script = state.clock.enter_script();
            let result = call_raw(&ctx, &state, f, args)?;
            drain_jobs(&ctx, &state)?;
            ToValue::new(&ctx, &state).convert(&result, 0)
        })
    }

    fn context_error(&self, e: rquickjs::Error) -> ScriptError {
        match e {
            rquickjs::Error::Allocation => ScriptError::memory(self.state.memory.limit()),
            e => ScriptError::runtime(format!("cannot create a JS context: {e}")),
        }
    }

    /// Runs `f`, turning a panic into an error and resetting the run.
    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> Result<Value, ScriptError>) -> Result<Value, ScriptError> {
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(r) => r,
            Err(_) => {
                self.end_run();
                Err(ScriptError::runtime("internal error: the JS engine panicked"))
            }
        }
    }
}

/// The interrupt handler: stops the script when the clock says so, remembering why.
fn interrupt(state: &State) -> bool {
    if state.draining.get() {
        return true;
    }
    match state.clock.check() {
        Ok(()) => false,
        Err(e) => {
            state.interrupt.set(Some(e));
            true
        }
    }
}

/// `ARGS` and one global function per native global.
fn install_globals<'js>(
    ctx: &Ctx<'js>,
    state: &Rc<State>,
    args: &[Vec<u8>],
    names: &'static [&'static str],
) -> Result<(), ScriptError> {
    let err = |e| from_js_error(ctx, state, e, Phase::Run);
    let globals = ctx.globals();
    let to_js = ToJs::new(ctx, state);
    let arr = Array::new(ctx.clone()).map_err(err)?;
    for (i, a) in args.iter().enumerate() {
        arr.set(i, to_js.convert(&Value::from_bytes(a.clone()), 0)?).map_err(err)?;
    }
    globals.set("ARGS", arr).map_err(err)?;
    for &name in names {
        let f = native_function(ctx, state, Target::Global(name)).map_err(err)?;
        globals.set(name, f).map_err(err)?;
    }
    Ok(())
}

/// Runs a compiled script; returns the value of its last expression statement.
fn execute<'js>(ctx: &Ctx<'js>, compiled: JsValue<'js>) -> rquickjs::Result<JsValue<'js>> {
    // SAFETY: JS_EvalFunction takes ownership of its argument, so it gets its own
    // reference; `compiled` keeps (and frees) the one it holds.
    let v = unsafe {
        let fun = qjs::JS_DupValue(ctx.as_raw().as_ptr(), compiled.as_raw());
        qjs::JS_EvalFunction(ctx.as_raw().as_ptr(), fun)
    };
    owned(ctx, v)
}

/// Evaluates a compiled module script (its packages first, each once). Evaluating a module
/// gives the promise of its evaluation (a module may `await` at top level): an exception
/// thrown by the module or a package rejects it.
fn evaluate_module<'js>(ctx: &Ctx<'js>, state: &State, module: JsValue<'js>) -> Result<(), ScriptError> {
    let promise = execute(ctx, module).map_err(|e| from_js_error(ctx, state, e, Phase::Run))?;
    let promise = promise
        .into_promise()
        .ok_or_else(|| ScriptError::runtime("internal error: a module evaluated to no promise"))?;
    if promise.state() != PromiseState::Rejected {
        drain_jobs(ctx, state)?;
    }
    match promise.state() {
        PromiseState::Resolved => Ok(()),
        PromiseState::Rejected => Err(from_exception(ctx, state, &rejection(&promise), Phase::Run)),
        PromiseState::Pending => Err(ScriptError::runtime("the script's top-level await never settled")),
    }
}

/// Runs promise jobs (`then` callbacks, async functions) until none is left. A job's
/// exception is dropped (it rejects its promise), unless it is fatal.
fn drain_jobs(ctx: &Ctx<'_>, state: &State) -> Result<(), ScriptError> {
    loop {
        if let Some(e) = state.interrupt.take().or_else(|| state.fatal.take()) {
            return Err(e);
        }
        state.clock.check()?;
        if !ctx.execute_pending_job() {
            return Ok(());
        }
    }
}

impl Instance for JsInstance {
    fn check(&mut self, source: &str) -> Result<(), ScriptError> {
        let state = self.state.clone();
        let runtime = &self.runtime;
        let r = catch_unwind(AssertUnwindSafe(|| {
            // The regexp compiler checks regex literals (`/a/`) as a run would.
            let context = Context::custom::<(intrinsic::Eval, intrinsic::RegExpCompiler)>(runtime)
                .map_err(|e| ScriptError::runtime(e.to_string()))?;
            context.with(|ctx| {
                stack::enter(&ctx)?;
                let _script = state.clock.enter_script();
                // Imports resolve to stubs: packages are not loaded (nor required to exist).
                state.checking.set(true);
                compile_script(&ctx, &state, source).map(drop)
            })
        }));
        self.state.checking.set(false);
        r.unwrap_or_else(|_| Err(ScriptError::runtime("internal error: the JS engine panicked")))
    }

    fn run(&mut self, source: &str, args: &[Vec<u8>], natives: &dyn Natives) -> Result<Value, ScriptError> {
        self.end_run();
        self.guarded(|this| this.run_inner(source, args, natives))
    }

    fn call(&mut self, f: FnRef, args: &[Value], natives: &dyn Natives) -> Result<Value, ScriptError> {
        self.guarded(|this| this.call_inner(f, args, natives))
    }

    fn end_run(&mut self) {
        let state = self.state.clone();
        let context = self.context.take();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            if let Some(context) = &context {
                // Leftover promise jobs hold the context: run them, interrupted at once.
                state.draining.set(true);
                context.with(|ctx| {
                    if stack::enter(&ctx).is_err() {
                        return;
                    }
                    for _ in 0..MAX_LEFTOVER_JOBS {
                        if !ctx.execute_pending_job() {
                            break;
                        }
                    }
                });
                state.draining.set(false);
            }
            state.clear_run();
            drop(context);
            self.runtime.run_gc();
        }));
        state.draining.set(false);
    }

    fn memory_used(&self) -> usize {
        self.state.memory.used()
    }

    fn clock(&self) -> &CallClock {
        &self.state.clock
    }

    fn set_limits(&mut self, limits: Limits) {
        // Enforced by the runtime's allocator (see memory.rs), not JS_SetMemoryLimit.
        self.state.memory.set_limit(limits.memory_bytes);
        self.state.clock.set_timeout(limits.timeout);
    }
}

impl Drop for JsInstance {
    fn drop(&mut self) {
        // Free everything the run holds before the runtime goes.
        self.end_run();
    }
}
