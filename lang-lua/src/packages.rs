//! `require(name)`: packages whose Lua source comes from `Natives::package("lua", name)`.
//!
//! - The first `require('x')` of a run asks the natives for the source of `x`, compiles it as
//!   a text chunk named `=x` (errors read `x:3: ...`) and runs it with no arguments. Its first
//!   return value (`true` if it returns nothing or nil) is cached for the rest of the run:
//!   later `require('x')` return the same value without asking the natives again. The cache
//!   is part of the run's state and is gone after `end_run`.
//! - Packages share the script's globals: a package runs with the run's environment as its
//!   `_ENV`, so globals it sets are visible to the script (and to other packages) and the
//!   other way round; it sees `ARGS` and the stdlib globals like the script does. Packages
//!   that want private state use locals.
//! - A package is script code: it runs under the time budget of the script code that called
//!   `require` (only the natives' lookup of the source is native time), and functions it
//!   defines get `FnRef`s like any other function of the run when handed to natives.
//! - A package requiring itself, directly or through others, is an error (`circular
//!   require`); a package that fails (error caught by the script with `pcall`) is not cached,
//!   so the next `require` of it tries again.

use crate::ctx::Ctx;
use mlua::chunk::ChunkMode;
use mlua::{Lua, Value as LuaValue};

fn runtime(msg: String) -> mlua::Error {
    mlua::Error::runtime(msg)
}

/// The name Lua's `type()` gives a value.
fn lua_type(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::LightUserData(_) | LuaValue::UserData(_) | LuaValue::Error(_) | LuaValue::Other(_) => {
            "userdata"
        }
        other => other.type_name(),
    }
}

/// The global `require(name)`.
pub(crate) fn require(lua: &Lua, name: LuaValue) -> mlua::Result<LuaValue> {
    let LuaValue::String(name) = name else {
        return Err(runtime(format!(
            "require: argument 1 must be a string, got {}",
            lua_type(&name)
        )));
    };
    let ctx = Ctx::get(lua)?;
    if let Some(e) = ctx.watch.fatal() {
        return Err(mlua::Error::external(e));
    }
    let loaded = ctx.packages(lua)?;
    let cached: LuaValue = loaded.raw_get(&name)?;
    if !cached.is_nil() {
        return Ok(cached);
    }

    let bytes = name.as_bytes().to_vec();
    let display = name.to_string_lossy();
    if ctx.is_loading(&bytes) {
        return Err(runtime(format!("require: circular require of '{display}'")));
    }
    let not_found = || {
        runtime(format!(
            "module '{display}' not found: load it with RG.PACKAGE LOAD lua {display} <code>"
        ))
    };
    // Package names are text without NULs (a chunk name is a C string).
    let key = match name.to_str() {
        Ok(s) if !s.contains('\0') && !s.is_empty() => s.to_string(),
        _ => return Err(not_found()),
    };
    let source = {
        let natives = ctx.natives()?;
        let _native = ctx.clock().enter_native();
        natives.package("lua", &key)
    };
    let Some(source) = source.map_err(|e| runtime(e.message))? else {
        return Err(not_found());
    };

    // Each level of nested requires costs Rust stack, like a native calling back a script.
    let Some(_depth) = ctx.enter_call() else {
        return Err(runtime("require: packages nested too deeply".to_string()));
    };
    let _loading = ctx.start_loading(bytes);
    // The run's environment: packages share the script's globals (see the module doc).
    let func = lua
        .load(source)
        .set_name(format!("={key}"))
        .set_mode(ChunkMode::Text)
        .set_environment(ctx.env(lua)?)
        .into_function()?;
    // Runs under the clock of the script code calling `require` (already entered).
    let first: LuaValue = func.call(())?;
    // A fatal error the package swallowed (e.g. `return pcall(...)`) still ends the run.
    if let Some(e) = ctx.watch.fatal() {
        return Err(mlua::Error::external(e));
    }
    let value = if first.is_nil() { LuaValue::Boolean(true) } else { first };
    loaded.raw_set(name, value.clone())?;
    Ok(value)
}
