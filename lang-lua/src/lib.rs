//! lang-lua: Lua 5.4 (through mlua) as a Gears language.
//!
//! - `LuaLanguage` is the `engine::Language` factory (`name() == "lua"`).
//! - `LuaInstance` is one sandboxed Lua state, reused for many runs: each run gets fresh
//!   globals, `ARGS`, and one global per `Natives::globals()` name; host objects are userdata
//!   whose methods are `Natives::methods(kind)`.
//!
//! Module map: `bounded` (library functions that loop, bounded by the clock), `sandbox` (state, libraries, per-run environment, `load`), `convert`
//! (`Value` <-> Lua), `objects` (host object userdata), `bridge` (script <-> natives calls),
//! `packages` (`require`), `ctx` (state shared with Rust callbacks), `watch` (clock and
//! sticky fatal errors), `errors` (mlua errors -> `ScriptError`), `instance` (the `Instance`
//! implementation, limits and the clock hook).

mod bounded;
mod bridge;
mod convert;
mod ctx;
mod errors;
mod instance;
mod objects;
mod packages;
mod sandbox;
mod watch;

pub use instance::LuaInstance;

use engine::{Instance, Language, Limits, ScriptError};

/// The Lua language.
#[derive(Clone, Copy, Debug, Default)]
pub struct LuaLanguage;

impl Language for LuaLanguage {
    fn name(&self) -> &'static str {
        "lua"
    }

    fn new_instance(&self, limits: Limits) -> Result<Box<dyn Instance>, ScriptError> {
        Ok(Box::new(LuaInstance::new(limits)?))
    }
}
