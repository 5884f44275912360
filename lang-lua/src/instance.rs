//! `LuaInstance`: one sandboxed Lua state reused for many runs.

use crate::bridge::{self, call_function, call_lua, fail};
use crate::ctx::{Ctx, NativesGuard};
use crate::watch::Watch;
use crate::{errors, sandbox};
use engine::{CallClock, FnRef, Instance, Limits, Natives, ScriptError, Value};
use mlua::{HookTriggers, Lua, VmState};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

/// Instructions between two checks of the clock while the deadline is ahead.
const HOOK_EVERY: i32 = 1000;

pub struct LuaInstance {
    lua: Lua,
    ctx: Rc<Ctx>,
}

impl LuaInstance {
    pub fn new(limits: Limits) -> Result<LuaInstance, ScriptError> {
        let setup = |e: mlua::Error| {
            ScriptError::runtime(format!("cannot create a Lua instance: {}", errors::message(&e)))
        };
        let lua = sandbox::new_state().map_err(setup)?;
        let watch = Arc::new(Watch::default());
        watch.clock.set_timeout(limits.timeout);
        install_hook(&lua, watch.clone()).map_err(setup)?;
        let ctx = Ctx::install(&lua, watch, limits.memory_bytes);
        // Fails only in mlua module mode, which is not used here.
        let _ = lua.set_memory_limit(limits.memory_bytes);
        Ok(LuaInstance { lua, ctx })
    }

    fn run_inner(
        &mut self,
        source: &str,
        args: &[Vec<u8>],
        natives: &dyn Natives,
    ) -> Result<Value, ScriptError> {
        if self.ctx.has_run() {
            self.end_run();
        }
        let (lua, ctx) = (&self.lua, &*self.ctx);
        ctx.watch.reset();
        let _natives = NativesGuard::new(ctx, natives);
        let Some(_depth) = ctx.enter_call() else {
            return Err(ScriptError::runtime("script callbacks nested too deeply"));
        };
        let env = sandbox::new_env(lua, args).map_err(|e| fail(ctx, &e))?;
        for &name in natives.globals() {
            let f = bridge::global_function(lua, name).map_err(|e| fail(ctx, &e))?;
            env.raw_set(name, f).map_err(|e| fail(ctx, &e))?;
        }
        ctx.begin_run(lua, &env).map_err(|e| fail(ctx, &e))?;
        let func = sandbox::compile(lua, source, Some(env))
            .map_err(|e| errors::to_script_error(&e, ctx.memory_limit.get()))?;
        let _script = ctx.clock().enter_script();
        call_lua(lua, ctx, &func, mlua::MultiValue::new())
    }
}

/// Polls the clock from a count hook. Once the deadline has passed (or the run is aborted)
/// the hook fires at every instruction, so an error caught by `pcall` is raised again by the
/// very next instruction of the catching code, until the script ends.
fn install_hook(lua: &Lua, watch: Arc<Watch>) -> mlua::Result<()> {
    let triggers = HookTriggers::new().every_nth_instruction(HOOK_EVERY as u32);
    lua.set_global_hook(triggers, move |lua, _debug| {
        let result = watch.check();
        let every = if result.is_ok() { HOOK_EVERY } else { 1 };
        // SAFETY: `state` is the thread running this hook (mlua sets it for the callback).
        unsafe { set_hook_count(lua.state(), every) };
        match result {
            Ok(()) => Ok(VmState::Continue),
            Err(e) => Err(mlua::Error::external(e)),
        }
    })
}

/// Changes the count of the instance's hook on `state`, if one is set.
///
/// # Safety
/// `state` must be a live thread of the instance, not running on another OS thread.
unsafe fn set_hook_count(state: *mut mlua::ffi::lua_State, every: i32) {
    // SAFETY (of the calls): re-installing the same hook function with the same mask only
    // changes its count; nothing is done when no hook is installed.
    let hook = mlua::ffi::lua_gethook(state);
    if hook.is_some() && mlua::ffi::lua_gethookcount(state) != every {
        let mask = mlua::ffi::lua_gethookmask(state);
        mlua::ffi::lua_sethook(state, hook, mask, every);
    }
}

/// Makes the hook run at the next instruction of the running thread (a bounded library
/// function recorded a fatal error): a `pcall` that caught it cannot run on for long.
pub(crate) fn hook_every_instruction(lua: &Lua) {
    // SAFETY: called from a Rust function Lua is running, so `lua.state()` is the thread
    // running it, on this OS thread.
    unsafe { set_hook_count(lua.state(), 1) };
}

/// Runs `f`, turning a panic (a bug in a native or here) into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, ScriptError>) -> Result<T, ScriptError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(ScriptError::runtime(format!("internal error: {what}")))
    })
}

impl Instance for LuaInstance {
    fn check(&mut self, source: &str) -> Result<(), ScriptError> {
        guarded(|| {
            sandbox::compile(&self.lua, source, None)
                .map(drop)
                .map_err(|e| errors::to_script_error(&e, self.ctx.memory_limit.get()))
        })
    }

    fn run(
        &mut self,
        source: &str,
        args: &[Vec<u8>],
        natives: &dyn Natives,
    ) -> Result<Value, ScriptError> {
        guarded(|| self.run_inner(source, args, natives))
    }

    fn call(&mut self, f: FnRef, args: &[Value], natives: &dyn Natives) -> Result<Value, ScriptError> {
        guarded(|| {
            if self.ctx.is_idle() {
                self.ctx.watch.reset();
            }
            let _natives = NativesGuard::new(&self.ctx, natives);
            call_function(&self.lua, &self.ctx, f, args)
        })
    }

    fn end_run(&mut self) {
        let keys = self.ctx.take_run();
        for key in keys {
            let _ = self.lua.remove_registry_value(key);
        }
        self.lua.expire_registry_values();
        // No script finalizers exist (`__gc` is refused), but keep any Lua code bounded.
        let _script = self.ctx.clock().enter_script();
        let _ = guarded(|| self.lua.gc_step().map(drop).map_err(|e| fail(&self.ctx, &e)));
        self.ctx.watch.reset();
    }

    fn memory_used(&self) -> usize {
        self.lua.used_memory()
    }

    fn clock(&self) -> &CallClock {
        self.ctx.clock()
    }

    fn set_limits(&mut self, limits: Limits) {
        self.ctx.clock().set_timeout(limits.timeout);
        self.ctx.memory_limit.set(limits.memory_bytes);
        let _ = self.lua.set_memory_limit(limits.memory_bytes);
    }
}
