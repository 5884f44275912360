//! The bridge between script code and `Natives`: the JS functions that call natives, and
//! the `ScriptCalls` natives use to call back into the script.

use crate::convert::{ToJs, ToValue};
use crate::error::{from_js_error, throw, Phase};
use crate::stack;
use crate::state::State;
use engine::{FnRef, ObjRef, ScriptCalls, ScriptError, Value};
use rquickjs::function::{Args, Rest};
use rquickjs::{Ctx, Exception, Function, Value as JsValue};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

/// What a native JS function calls.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    Global(&'static str),
    Method(ObjRef, &'static str),
}

/// A JS function that converts its arguments, calls the native and converts the result
/// back (or throws the native's error).
pub(crate) fn native_function<'js>(
    ctx: &Ctx<'js>,
    state: &Rc<State>,
    target: Target,
) -> rquickjs::Result<Function<'js>> {
    // Weak: the function lives in the JS heap, which the state (indirectly) owns.
    let weak: Weak<State> = Rc::downgrade(state);
    let f = Function::new(ctx.clone(), move |ctx: Ctx<'js>, args: Rest<JsValue<'js>>| {
        let Some(state) = weak.upgrade() else {
            return Err(Exception::throw_internal(&ctx, "the instance is gone"));
        };
        // Never let a panic unwind through QuickJS.
        match catch_unwind(AssertUnwindSafe(|| invoke(&ctx, &state, target, args.0))) {
            Ok(r) => r,
            Err(_) => Err(throw(&ctx, &state, ScriptError::runtime("internal error: a native function panicked"))),
        }
    })?;
    // rquickjs caches the prototype of its Rust functions per runtime, taken from the
    // context that made the first one (see `JsInstance::new`): give each function the
    // Function.prototype of its own context, so that runs share nothing.
    f.set_prototype(Some(&Function::prototype(ctx.clone())))?;
    let name = match target {
        Target::Global(n) | Target::Method(_, n) => n,
    };
    f.with_name(name)
}

/// Makes rquickjs cache the prototype of Rust functions from a context of its own that no
/// script ever sees; the cached prototype keeps that (small, empty) context alive for the
/// life of the runtime instead of the first run's context with all its globals.
pub(crate) fn prime_function_prototype(runtime: &rquickjs::Runtime) -> rquickjs::Result<()> {
    let context = rquickjs::Context::base(runtime)?;
    context.with(|ctx| Function::new(ctx, || ()).map(drop))
}

fn invoke<'js>(
    ctx: &Ctx<'js>,
    state: &Rc<State>,
    target: Target,
    args: Vec<JsValue<'js>>,
) -> rquickjs::Result<JsValue<'js>> {
    let Some(natives) = state.natives() else {
        return Err(throw(ctx, state, ScriptError::runtime("natives are only available during a run")));
    };
    let mut to_value = ToValue::new(ctx, state);
    let mut values = Vec::with_capacity(args.len());
    for a in &args {
        match to_value.convert(a, 0) {
            Ok(v) => values.push(v),
            Err(e) => return Err(throw(ctx, state, e)),
        }
    }
    drop(args);
    let calls = Bridge { ctx: ctx.clone(), state: state.clone() };
    let result = {
        let _native = state.clock.enter_native();
        match target {
            Target::Global(name) => natives.call_global(name, values, &calls),
            Target::Method(obj, name) => natives.call_method(obj, name, values, &calls),
        }
    };
    match result.and_then(|v| ToJs::new(ctx, state).convert(&v, 0)) {
        Ok(v) => Ok(v),
        Err(e) => Err(throw(ctx, state, e)),
    }
}

/// `ScriptCalls` for natives: calls back into the script in the context of the native call.
struct Bridge<'js> {
    ctx: Ctx<'js>,
    state: Rc<State>,
}

impl ScriptCalls for Bridge<'_> {
    fn call(&self, f: FnRef, args: &[Value]) -> Result<Value, ScriptError> {
        call_function(&self.ctx, &self.state, f, args)
    }
}

/// Calls a function of the run, as a stretch of script code (the time limit applies).
pub(crate) fn call_function<'js>(
    ctx: &Ctx<'js>,
    state: &Rc<State>,
    f: FnRef,
    args: &[Value],
) -> Result<Value, ScriptError> {
    let depth = state.nesting.get();
    if depth >= MAX_NESTING {
        return Err(ScriptError::runtime(format!(
            "script calls nest too deeply: more than {MAX_NESTING} callbacks from natives are running"
        )));
    }
    stack::enter(ctx)?;
    state.nesting.set(depth + 1);
    let _nesting = Restore(&state.nesting, depth);
    let _script = state.clock.enter_script();
    let r = call_raw(ctx, state, f, args)?;
    ToValue::new(ctx, state).convert(&r, 0)
}

/// Most callbacks from natives into the script running at once (script -> native ->
/// script -> ...), whatever stack each of them uses.
pub(crate) const MAX_NESTING: usize = 200;

/// Puts a depth back when dropped.
struct Restore<'a>(&'a std::cell::Cell<usize>, usize);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.0.set(self.1);
    }
}

/// Calls a function of the run and returns its JS result. The caller holds the clock's
/// script guard.
pub(crate) fn call_raw<'js>(
    ctx: &Ctx<'js>,
    state: &Rc<State>,
    f: FnRef,
    args: &[Value],
) -> Result<JsValue<'js>, ScriptError> {
    let saved = state.functions.borrow().get(f.0 as usize).cloned();
    let saved = saved.ok_or_else(|| ScriptError::runtime(format!("unknown function reference {}", f.0)))?;
    let func = saved.restore(ctx).map_err(|e| from_js_error(ctx, state, e, Phase::Run))?;
    let to_js = ToJs::new(ctx, state);
    let mut js_args = Args::new(ctx.clone(), args.len());
    for a in args {
        let v = to_js.convert(a, 0)?;
        js_args.push_arg(v).map_err(|e| from_js_error(ctx, state, e, Phase::Run))?;
    }
    func.call_arg::<JsValue>(js_args).map_err(|e| from_js_error(ctx, state, e, Phase::Run))
}
