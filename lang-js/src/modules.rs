//! ES modules: module scripts and packages (`import ... from 'name'`).
//!
//! A script is compiled as a global script first; when that is a syntax error and the
//! source compiles as a module (it has a top-level `import`/`export`, or `await`), it is
//! a module named `script`. Packages are always modules, named as imported.
//!
//! The runtime has one module loader (installed at creation): it resolves a name as given
//! (no path resolution: `gears/x` is a plain name) and loads it through
//! `Natives::package("js", name)` of the current run, so only packages can be imported:
//! there is no file system and no std/os module. QuickJS keeps the modules it loaded in
//! the context, and each run has a fresh context, so a package is compiled and evaluated
//! at most once per run. Static imports are resolved while the importing module is
//! compiled; dynamic `import('name')` goes through the same loader and settles during the
//! run's promise jobs.
//!
//! `check()` compiles with the loader in "checking" mode: imports resolve to empty stubs,
//! so an unknown package never fails a check (only a run).

use crate::error::{from_exception, from_js_error, is_compile_limit, script_position, throw, Phase};
use crate::state::State;
use engine::{ScriptError, ScriptErrorKind};
use rquickjs::{qjs, Ctx, Runtime, Value as JsValue};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::rc::{Rc, Weak};

/// The file name of the script, in stack traces and for `import`s.
pub(crate) const SCRIPT_NAME: &str = "script";

/// Deepest nesting of packages being loaded (a package importing a package importing ...).
const MAX_IMPORT_DEPTH: usize = 64;

/// What the loader needs: the instance's state. Owned by the instance (boxed: QuickJS
/// keeps a pointer to it) and outlives the runtime.
pub(crate) struct ModuleHost {
    state: Weak<State>,
}

impl ModuleHost {
    pub fn new(state: &Rc<State>) -> Box<Self> {
        Box::new(ModuleHost { state: Rc::downgrade(state) })
    }
}

/// Installs the module loader of `runtime`.
///
/// # Safety
/// `host` must outlive `runtime` (or at least every use of its loader).
pub(crate) unsafe fn install_loader(runtime: &Runtime, host: &ModuleHost) -> rquickjs::Result<()> {
    let context = rquickjs::Context::base(runtime)?;
    context.with(|ctx| {
        // SAFETY: `ctx` is live, so is its runtime; `host` outlives the runtime (the
        // caller's contract) and is only read by the callbacks.
        unsafe {
            let rt = qjs::JS_GetRuntime(ctx.as_raw().as_ptr());
            qjs::JS_SetModuleLoaderFunc2(
                rt,
                Some(normalize),
                Some(load),
                Some(check_attributes),
                host as *const ModuleHost as *mut c_void,
            );
        }
    });
    Ok(())
}

/// A compiled script: a global script (its function) or a module.
pub(crate) enum Compiled<'js> {
    Global(JsValue<'js>),
    Module(JsValue<'js>),
}

/// Compiles the script `source`: as a global script, or else as a module (see the top).
pub(crate) fn compile_script<'js>(ctx: &Ctx<'js>, state: &State, source: &str) -> Result<Compiled<'js>, ScriptError> {
    state.memory.clear_refused();
    let (global_exc, global_err) = match compile(ctx, source, c"script", qjs::JS_EVAL_TYPE_GLOBAL) {
        Ok(f) => return Ok(Compiled::Global(f)),
        Err(e) => caught(ctx, state, e),
    };
    if global_err.kind != ScriptErrorKind::Syntax || is_compile_limit(&global_err) {
        return Err(global_err);
    }
    state.import_failed.set(false);
    let (module_exc, module_err) = match compile(ctx, source, c"script", qjs::JS_EVAL_TYPE_MODULE) {
        Ok(m) => return Ok(Compiled::Module(m)),
        Err(e) => caught(ctx, state, e),
    };
    // A module that reached a limit is not a script with a syntax error.
    if is_compile_limit(&module_err) {
        return Err(module_err);
    }
    // Which error to report: the module's if an import failed, if it is not a syntax error
    // (memory), or if parsing as a module got further (a module with a syntax error after
    // its imports); the global script's otherwise (a script that is not a module).
    let further = match (script_position(&module_exc), script_position(&global_exc)) {
        (Some(m), Some(g)) => m > g,
        _ => false,
    };
    if state.import_failed.get() || module_err.kind != ScriptErrorKind::Syntax || further {
        Err(module_err)
    } else {
        Err(global_err)
    }
}

/// The pending exception of a failed compile, and its error.
fn caught<'js>(ctx: &Ctx<'js>, state: &State, e: rquickjs::Error) -> (JsValue<'js>, ScriptError) {
    match e {
        rquickjs::Error::Exception => {
            let exc = ctx.catch();
            let err = from_exception(ctx, state, &exc, Phase::Compile);
            (exc, err)
        }
        e => (JsValue::new_undefined(ctx.clone()), from_js_error(ctx, state, e, Phase::Compile)),
    }
}

/// Compiles (without running) `source` as a global script or a module named `name`.
/// Compiling a module resolves its static imports: the loader runs.
pub(crate) fn compile<'js>(
    ctx: &Ctx<'js>,
    source: &str,
    name: &CStr,
    eval_type: u32,
) -> rquickjs::Result<JsValue<'js>> {
    let mut buf = Vec::with_capacity(source.len() + 1);
    buf.extend_from_slice(source.as_bytes());
    buf.push(0);
    let flags = (eval_type | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32;
    // SAFETY: `buf` is NUL-terminated after `source.len()` bytes as JS_Eval requires, the
    // file name is a C string, and `ctx` is live. The result is owned by us.
    let v =
        unsafe { qjs::JS_Eval(ctx.as_raw().as_ptr(), buf.as_ptr().cast(), source.len() as _, name.as_ptr(), flags) };
    owned(ctx, v)
}

/// Wraps an owned raw value, or reports the pending exception.
pub(crate) fn owned<'js>(ctx: &Ctx<'js>, v: qjs::JSValue) -> rquickjs::Result<JsValue<'js>> {
    // SAFETY: `v` was just returned (owned) by QuickJS for `ctx`.
    unsafe {
        if qjs::JS_IsException(v) {
            return Err(rquickjs::Error::Exception);
        }
        Ok(JsValue::from_raw(ctx.clone(), v))
    }
}

/// Module names are used as given.
unsafe extern "C" fn normalize(
    ctx: *mut qjs::JSContext,
    _base: *const c_char,
    name: *const c_char,
    _opaque: *mut c_void,
) -> *mut c_char {
    // SAFETY: QuickJS passes a live context and a C string; the copy is allocated with
    // js_malloc, as it requires (it frees it).
    unsafe {
        let len = CStr::from_ptr(name).to_bytes().len();
        qjs::js_strndup(ctx, name, len as _)
    }
}

/// `import ... with { ... }` is refused: packages are plain modules.
unsafe extern "C" fn check_attributes(
    ctx: *mut qjs::JSContext,
    opaque: *mut c_void,
    _attributes: qjs::JSValue,
) -> c_int {
    // SAFETY: QuickJS passes a live context and the `ModuleHost` of `install_loader`; the
    // message is a C string without formats.
    unsafe {
        if let Some(state) = (*(opaque as *const ModuleHost)).state.upgrade() {
            state.import_failed.set(true);
        }
        qjs::JS_ThrowSyntaxError(ctx, c"import attributes are not supported".as_ptr());
    }
    -1
}

/// The module loader: a package of the current run (or a stub while checking).
unsafe extern "C" fn load(
    ctx: *mut qjs::JSContext,
    name: *const c_char,
    opaque: *mut c_void,
    _attributes: qjs::JSValue,
) -> *mut qjs::JSModuleDef {
    let Some(raw) = NonNull::new(ctx) else { return ptr::null_mut() };
    // SAFETY: QuickJS calls the loader with a live context of the runtime, on the thread
    // that holds it, while compiling or running code of that context; `opaque` is the
    // `ModuleHost` of `install_loader`, alive as long as the runtime; `name` is a C string.
    let (ctx, host, name) = unsafe { (Ctx::from_raw(raw), &*(opaque as *const ModuleHost), CStr::from_ptr(name)) };
    let Some(state) = host.state.upgrade() else {
        // SAFETY: as above.
        unsafe { qjs::JS_ThrowInternalError(raw.as_ptr(), c"the instance is gone".as_ptr()) };
        return ptr::null_mut();
    };
    // Never let a panic unwind through QuickJS.
    let r = catch_unwind(AssertUnwindSafe(|| load_module(&ctx, &state, name)))
        .unwrap_or_else(|_| Err(ScriptError::runtime("internal error: the module loader panicked")));
    match r {
        Ok(m) => m,
        Err(e) => {
            state.import_failed.set(true);
            throw(&ctx, &state, e);
            ptr::null_mut()
        }
    }
}

fn load_module(ctx: &Ctx<'_>, state: &State, cname: &CStr) -> Result<*mut qjs::JSModuleDef, ScriptError> {
    let name = String::from_utf8_lossy(cname.to_bytes()).into_owned();
    if state.checking.get() {
        return stub(ctx, state, cname);
    }
    let not_found =
        || ScriptError::runtime(format!("module '{name}' not found: load it with RG.PACKAGE LOAD js {name} <code>"));
    if name.is_empty() || cname.to_str().is_err() {
        return Err(not_found());
    }
    let Some(natives) = state.natives() else {
        return Err(ScriptError::runtime("packages can only be imported during a run"));
    };
    let source = {
        let _native = state.clock.enter_native();
        natives.package("js", &name)
    };
    let source = source?.ok_or_else(not_found)?;
    let depth = state.import_depth.get();
    if depth >= MAX_IMPORT_DEPTH {
        return Err(ScriptError::runtime(format!("import of '{name}': packages nest too deeply")));
    }
    if !state.is_source_file(&name) {
        state.packages.borrow_mut().push(name.clone());
    }
    state.import_depth.set(depth + 1);
    state.memory.clear_refused();
    let compiled = compile(ctx, &source, cname, qjs::JS_EVAL_TYPE_MODULE);
    state.import_depth.set(depth);
    let module = compiled.map_err(|e| from_js_error(ctx, state, e, Phase::Compile))?;
    // SAFETY: a module compiled with COMPILE_ONLY is a JS_TAG_MODULE value whose pointer
    // is its JSModuleDef. The context's module list holds its own reference, so dropping
    // ours (as quickjs-libc's loader does) leaves the module alive.
    let m = unsafe { qjs::JS_VALUE_GET_PTR(module.as_raw()) } as *mut qjs::JSModuleDef;
    drop(module);
    Ok(m)
}

/// An empty module named `name`, never evaluated: what imports resolve to in `check()`.
fn stub(ctx: &Ctx<'_>, state: &State, name: &CStr) -> Result<*mut qjs::JSModuleDef, ScriptError> {
    unsafe extern "C" fn init(_ctx: *mut qjs::JSContext, _m: *mut qjs::JSModuleDef) -> c_int {
        0
    }
    // SAFETY: `ctx` is live and `name` a C string (copied by QuickJS).
    let m = unsafe { qjs::JS_NewCModule(ctx.as_raw().as_ptr(), name.as_ptr(), Some(init)) };
    if m.is_null() {
        return Err(from_js_error(ctx, state, rquickjs::Error::Exception, Phase::Compile));
    }
    Ok(m)
}
