//! The two directions of the `Natives` bridge: script -> native (global functions and
//! host object methods) and native -> script (`ScriptCalls`, `Instance::call`).

use crate::convert::{to_lua, to_lua_multi, to_value, to_values};
use crate::ctx::Ctx;
use crate::errors::to_script_error;
use engine::{FnRef, Natives, ScriptError, ScriptCalls, Value};
use mlua::{Function, Lua, MultiValue, Value as LuaValue};

/// A Lua global calling `Natives::call_global(name, ...)`.
pub(crate) fn global_function(lua: &Lua, name: &'static str) -> mlua::Result<Function> {
    lua.create_function(move |lua, args: MultiValue| {
        call_native(lua, args, |natives, vals, calls| natives.call_global(name, vals, calls))
    })
}

/// Converts the Lua arguments, runs `f` as native code (outside the script's time budget),
/// and converts its result back; a `ScriptError` is raised as a Lua error keeping its kind.
pub(crate) fn call_native(
    lua: &Lua,
    args: MultiValue,
    f: impl FnOnce(&dyn Natives, Vec<Value>, &dyn ScriptCalls) -> Result<Value, ScriptError>,
) -> mlua::Result<LuaValue> {
    let ctx = Ctx::get(lua)?;
    if let Some(e) = ctx.watch.fatal() {
        return Err(mlua::Error::external(e));
    }
    let natives = ctx.natives()?;
    let vals = to_values(lua, &ctx, args)?;
    let result = {
        let _native = ctx.clock().enter_native();
        f(natives, vals, &Calls { lua, ctx: &ctx })
    };
    match result {
        Ok(v) => to_lua(lua, &ctx, &v),
        Err(e) => Err(mlua::Error::external(e)),
    }
}

/// What natives get to call back into the script.
pub(crate) struct Calls<'a> {
    pub(crate) lua: &'a Lua,
    pub(crate) ctx: &'a Ctx,
}

impl ScriptCalls for Calls<'_> {
    fn call(&self, f: FnRef, args: &[Value]) -> Result<Value, ScriptError> {
        call_function(self.lua, self.ctx, f, args)
    }
}

/// Calls a function of the current run as script code (with its own time budget).
pub(crate) fn call_function(
    lua: &Lua,
    ctx: &Ctx,
    f: FnRef,
    args: &[Value],
) -> Result<Value, ScriptError> {
    if let Some(e) = ctx.watch.fatal() {
        return Err(e);
    }
    let Some(_depth) = ctx.enter_call() else {
        return Err(ScriptError::runtime("script callbacks nested too deeply"));
    };
    let _script = ctx.clock().enter_script();
    let func = ctx.function(lua, f).map_err(|e| fail(ctx, &e))?;
    let largs = to_lua_multi(lua, ctx, args).map_err(|e| fail(ctx, &e))?;
    call_lua(lua, ctx, &func, largs)
}

/// Calls `func` (inside an already entered clock guard) and converts its first result.
pub(crate) fn call_lua(
    lua: &Lua,
    ctx: &Ctx,
    func: &Function,
    args: MultiValue,
) -> Result<Value, ScriptError> {
    let results = func.call::<MultiValue>(args).map_err(|e| fail(ctx, &e))?;
    // A fatal error the script caught (e.g. `return pcall(...)`) still ends the call.
    if let Some(e) = ctx.watch.fatal() {
        return Err(e);
    }
    let first = results.into_iter().next().unwrap_or(LuaValue::Nil);
    to_value(lua, ctx, first).map_err(|e| fail(ctx, &e))
}

/// The `ScriptError` for a failed call. A fatal error (passed deadline, abort flag) wins over
/// the error that reached us: the script may have caught it and thrown something else.
pub(crate) fn fail(ctx: &Ctx, e: &mlua::Error) -> ScriptError {
    if let Err(fatal) = ctx.watch.check() {
        return fatal;
    }
    let err = to_script_error(e, ctx.memory_limit.get());
    ctx.watch.set_fatal(&err);
    err
}
