//! The sandboxed Lua state and the fresh environment of each run.
//!
//! Only safe libraries are loaded (base, table, string, math, utf8, coroutine, and `os`
//! reduced to `clock`/`time`); `require` loads packages from the natives (`packages`), not
//! files, and `package`, `dofile`, `loadfile` are absent. The state's real globals are the
//! pristine template: each run gets a new table holding a copy of them (library tables
//! copied too), so whatever a script sets or changes is gone at the next run.

use crate::convert::render;
use crate::ctx::Ctx;
use mlua::chunk::ChunkMode;
use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value as LuaValue};

/// Chunk name of scripts: errors read `script:3: ...`.
pub(crate) const SCRIPT_CHUNK: &str = "=script";

const PRELUDE: &str = r#"
local G, render = ...
local type, rawget, tostring = type, rawget, tostring
local raw_setmetatable, raw_getmetatable, raw_error = setmetatable, getmetatable, error

-- print and warn would write to the server's stdout/stderr: scripts log with log().
-- require is replaced (in Rust, after this prelude) by one loading packages from the natives.
G.dofile, G.loadfile, G.require, G.package, G.io, G.debug, G.warn, G.print = nil, nil, nil, nil, nil, nil, nil, nil
local os = G.os
G.os = { clock = os.clock, time = os.time }
G.string.dump = nil
-- The string metatable's __index is the pristine string table: keep it out of reach.
raw_getmetatable("").__metatable = false

local cg = G.collectgarbage
local allowed = { collect = true, count = true, step = true }
G.collectgarbage = function(opt, ...)
  if opt == nil or allowed[opt] then
    return cg(opt, ...)
  end
  raw_error("collectgarbage: option '" .. tostring(opt) .. "' is not allowed", 2)
end

-- Finalizers would run outside any time budget (during GC in natives or between runs).
G.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    raw_error("setmetatable: __gc metamethods are not allowed", 2)
  end
  return raw_setmetatable(t, mt)
end

-- Lua runs an xpcall message handler before unwinding; for an error raised by the clock
-- hook that happens with hooks disabled, so a looping handler could never be stopped.
-- Without the debug library a handler cannot inspect the failing stack anyway: call it
-- after pcall instead.
local raw_pcall, pack, unpack = pcall, G.table.pack, G.table.unpack
G.xpcall = function(f, handler, ...)
  if handler == nil then
    raw_error("bad argument #2 to 'xpcall' (value expected)", 2)
  end
  local r = pack(raw_pcall(f, ...))
  if r[1] then
    return unpack(r, 1, r.n)
  end
  local _, v = raw_pcall(handler, r[2])
  return false, v
end

-- error({...}) tables get a readable tostring (the message the caller sees).
G.error = function(e, level)
  if type(e) == "table" and raw_getmetatable(e) == nil then
    raw_setmetatable(e, { __tostring = render })
  end
  if level == nil then level = 1 end
  if type(level) == "number" and level > 0 then level = level + 1 end
  raw_error(e, level)
end
"#;

/// Library tables copied into each run's environment.
const LIBS: [&str; 6] = ["string", "table", "math", "utf8", "coroutine", "os"];

/// Creates the sandboxed state (the `Ctx` is installed by the caller).
pub(crate) fn new_state() -> mlua::Result<Lua> {
    let libs = StdLib::COROUTINE | StdLib::TABLE | StdLib::STRING | StdLib::UTF8 | StdLib::MATH | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    crate::bounded::install(&lua)?;
    let render_fn = lua.create_function(|_, v: LuaValue| Ok(render(&v, 0)))?;
    lua.load(PRELUDE).set_name("=sandbox").call::<()>((lua.globals(), render_fn))?;
    set_error_tostring(&lua)?;
    lua.globals().raw_set("load", lua.create_function(load)?)?;
    lua.globals().raw_set("require", lua.create_function(crate::packages::require)?)?;
    Ok(lua)
}

/// Errors raised by Rust code reach scripts as mlua's error userdata, whose `tostring`
/// appends a stack traceback. Replace it with the bare message (the metatable is internal to
/// mlua and protected with `__metatable`, so scripts cannot reach it).
fn set_error_tostring(lua: &Lua) -> mlua::Result<()> {
    let probe = lua.create_function(|_, ()| Err::<(), _>(mlua::Error::runtime("probe")))?;
    let err: LuaValue = lua.load("return select(2, pcall(...))").call(probe)?;
    let tostring = lua.create_function(|_, v: LuaValue| Ok(render(&v, 1)))?;
    // SAFETY: `exec_raw` runs the closure in protected mode with the two arguments on top of
    // the stack (the error userdata at -2, the function at -1) and restores the stack after.
    // `lua_getmetatable` pushes the userdata's metatable (it has one: mlua sets it for every
    // error userdata); `lua_setfield` then pops the copy of the function pushed before it.
    unsafe {
        lua.exec_raw::<()>((err, tostring), |state| {
            use mlua::ffi;
            if ffi::lua_getmetatable(state, -2) != 0 {
                ffi::lua_pushvalue(state, -2);
                ffi::lua_setfield(state, -2, c"__tostring".as_ptr());
                ffi::lua_pop(state, 1);
            }
        })
    }
}

/// A fresh environment for a run: a copy of the sandboxed globals plus `ARGS`.
pub(crate) fn new_env(lua: &Lua, args: &[Vec<u8>]) -> mlua::Result<Table> {
    let base = lua.globals();
    let env = lua.create_table_with_capacity(0, 48)?;
    base.for_each::<LuaValue, LuaValue>(|k, v| {
        if let (LuaValue::String(name), LuaValue::Table(lib)) = (&k, &v) {
            if LIBS.iter().any(|l| name.as_bytes().as_ref() == l.as_bytes()) {
                env.raw_set(k, copy_table(lua, lib)?)?;
                return Ok(());
            }
        }
        env.raw_set(k, v)
    })?;
    env.raw_set("_G", env.clone())?;
    let argv = lua.create_table_with_capacity(args.len(), 0)?;
    for (i, a) in args.iter().enumerate() {
        argv.raw_set(i as i64 + 1, lua.create_string(a)?)?;
    }
    env.raw_set("ARGS", argv)?;
    Ok(env)
}

fn copy_table(lua: &Lua, t: &Table) -> mlua::Result<Table> {
    let copy = lua.create_table()?;
    t.for_each::<LuaValue, LuaValue>(|k, v| copy.raw_set(k, v))?;
    Ok(copy)
}

/// Compiles a script chunk (text only).
pub(crate) fn compile(lua: &Lua, source: &str, env: Option<Table>) -> mlua::Result<Function> {
    let chunk = lua.load(source).set_name(SCRIPT_CHUNK).set_mode(ChunkMode::Text);
    match env {
        Some(env) => chunk.set_environment(env).into_function(),
        None => chunk.into_function(),
    }
}

/// `load(chunk [, chunkname [, mode [, env]]])`: text chunks only; the environment
/// defaults to the current run's globals. Returns `nil, message` on failure like Lua's.
fn load(lua: &Lua, args: MultiValue) -> mlua::Result<MultiValue> {
    let nargs = args.len();
    let mut args = args.into_iter();
    let chunk = args.next().unwrap_or(LuaValue::Nil);
    let name = args.next().unwrap_or(LuaValue::Nil);
    let _mode = args.next();
    let env = args.next();

    let source: Vec<u8> = match chunk {
        LuaValue::String(s) => s.as_bytes().to_vec(),
        LuaValue::Function(reader) => {
            // A reader calling `load` again nests Rust frames: bounded like callbacks.
            let ctx = Ctx::get(lua)?;
            let Some(_depth) = ctx.enter_call() else {
                return Err(mlua::Error::runtime("load: reader functions nested too deeply"));
            };
            let mut buf = Vec::new();
            loop {
                match reader.call::<LuaValue>(())? {
                    LuaValue::Nil => break,
                    LuaValue::String(piece) if piece.as_bytes().is_empty() => break,
                    LuaValue::String(piece) => buf.extend_from_slice(&piece.as_bytes()),
                    _ => return Err(mlua::Error::runtime("reader function must return a string")),
                }
            }
            buf
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #1 to 'load' (string expected, got {})",
                other.type_name()
            )))
        }
    };
    let fail = |msg: String| -> mlua::Result<MultiValue> {
        Ok(MultiValue::from_iter([LuaValue::Nil, LuaValue::String(lua.create_string(msg)?)]))
    };
    if source.first() == Some(&0x1b) {
        return fail("attempt to load a binary chunk: only text chunks are allowed".into());
    }
    let chunk_name = match name {
        LuaValue::String(s) if !s.as_bytes().contains(&0) => s.to_string_lossy(),
        _ => "=(load)".to_string(),
    };
    let env = match env {
        Some(LuaValue::Table(t)) if nargs >= 4 => t,
        _ => Ctx::get(lua)?.env(lua)?,
    };
    let loaded = lua
        .load(source)
        .set_name(chunk_name)
        .set_mode(ChunkMode::Text)
        .set_environment(env)
        .into_function();
    match loaded {
        Ok(f) => Ok(MultiValue::from_iter([LuaValue::Function(f)])),
        Err(mlua::Error::MemoryError(m)) => Err(mlua::Error::MemoryError(m)),
        Err(e) => fail(crate::errors::message(&e)),
    }
}
