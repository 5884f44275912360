//! Per-instance state shared between the instance and the Rust functions it exposes to
//! Lua: the clock, the `Natives` of the call in progress, and the current run's tables
//! (environment, function references and loaded packages).
//!
//! The context lives behind an `Rc` stored both in the instance and in the Lua state's app
//! data, so that every Rust callback (globals, host object methods, `load`) can reach it.
//! No `RefCell` borrow of it is ever held across a call into Lua.

use crate::watch::Watch;
use engine::{CallClock, FnRef, Natives};
use mlua::{Function, Lua, RegistryKey, Table};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

/// Deepest nesting of native -> script callbacks (each level costs Rust stack).
pub(crate) const MAX_CALL_DEPTH: u32 = 32;

/// Lua tables of the current run, kept alive in the registry.
struct RunTables {
    /// The script's global environment.
    env: RegistryKey,
    /// function -> FnRef number (so a function converted twice keeps its number).
    fn_ids: RegistryKey,
    /// FnRef number -> function.
    fns: RegistryKey,
    /// Package name -> value `require` returned (see `packages`).
    packages: RegistryKey,
}

pub(crate) struct Ctx {
    pub(crate) watch: Arc<Watch>,
    /// The `Natives` of the `run`/`call` in progress, with its lifetime erased.
    /// Set only by `NativesGuard`, which clears it before the borrow it came from ends.
    natives: Cell<Option<NonNull<dyn Natives>>>,
    run: RefCell<Option<RunTables>>,
    next_fn: Cell<u32>,
    /// Nesting of calls into script code (top level = 1).
    depth: Cell<u32>,
    pub(crate) memory_limit: Cell<usize>,
    /// Method tables of host object kinds, built on first use in a run.
    methods: RefCell<HashMap<&'static str, RegistryKey>>,
    /// Names of the packages being loaded (innermost last), to refuse circular requires.
    loading: RefCell<Vec<Vec<u8>>>,
}

/// The app data entry pointing to the context.
struct CtxHandle(Rc<Ctx>);

// SAFETY: mlua (with its "send" feature) requires app data to be `Send`. The Lua state that
// owns this handle is private to `LuaInstance`, which is `!Send` (it holds an `Rc<Ctx>`), so
// the handle is only ever touched on the thread that created the instance.
unsafe impl Send for CtxHandle {}

fn no_ctx() -> mlua::Error {
    mlua::Error::runtime("internal error: the Lua state has no Gears context")
}

impl Ctx {
    pub(crate) fn install(lua: &Lua, watch: Arc<Watch>, memory_limit: usize) -> Rc<Ctx> {
        let ctx = Rc::new(Ctx {
            watch,
            natives: Cell::new(None),
            run: RefCell::new(None),
            next_fn: Cell::new(0),
            depth: Cell::new(0),
            memory_limit: Cell::new(memory_limit),
            methods: RefCell::new(HashMap::new()),
            loading: RefCell::new(Vec::new()),
        });
        lua.set_app_data(CtxHandle(ctx.clone()));
        ctx
    }

    /// The context of a Lua state (from inside a Rust callback).
    pub(crate) fn get(lua: &Lua) -> mlua::Result<Rc<Ctx>> {
        match lua.try_app_data_ref::<CtxHandle>() {
            Ok(Some(h)) => Ok(h.0.clone()),
            _ => Err(no_ctx()),
        }
    }

    /// The natives of the call in progress.
    pub(crate) fn natives(&self) -> mlua::Result<&dyn Natives> {
        match self.natives.get() {
            // SAFETY: the pointer was made from a `&dyn Natives` by `NativesGuard::new`, whose
            // borrow outlives the guard, and the guard clears (restores) it on drop. Lua code,
            // and therefore every Rust callback reaching this, only runs inside `run`/`call`
            // while such a guard is alive, and the returned reference does not escape the
            // callback. `Natives` methods take `&self`, so aliasing shared references is fine.
            Some(p) => Ok(unsafe { p.as_ref() }),
            None => Err(mlua::Error::runtime("natives are not available outside a run")),
        }
    }

    // ----- runs -----

    pub(crate) fn has_run(&self) -> bool {
        self.run.borrow().is_some()
    }

    /// Records the tables of a new run.
    pub(crate) fn begin_run(&self, lua: &Lua, env: &Table) -> mlua::Result<()> {
        let tables = RunTables {
            env: lua.create_registry_value(env.clone())?,
            fn_ids: lua.create_registry_value(lua.create_table()?)?,
            fns: lua.create_registry_value(lua.create_table()?)?,
            packages: lua.create_registry_value(lua.create_table()?)?,
        };
        *self.run.borrow_mut() = Some(tables);
        self.next_fn.set(0);
        self.methods.borrow_mut().clear();
        self.loading.borrow_mut().clear();
        Ok(())
    }

    /// Forgets the current run; returns its registry keys for removal.
    pub(crate) fn take_run(&self) -> Vec<RegistryKey> {
        self.next_fn.set(0);
        self.loading.borrow_mut().clear();
        let mut keys: Vec<RegistryKey> = self.methods.borrow_mut().drain().map(|(_, k)| k).collect();
        if let Some(t) = self.run.borrow_mut().take() {
            keys.extend([t.env, t.fn_ids, t.fns, t.packages]);
        }
        keys
    }

    fn run_table(&self, lua: &Lua, pick: fn(&RunTables) -> &RegistryKey) -> mlua::Result<Table> {
        let run = self.run.borrow();
        let t = run.as_ref().ok_or_else(|| mlua::Error::runtime("no script run is active"))?;
        lua.registry_value(pick(t))
    }

    pub(crate) fn env(&self, lua: &Lua) -> mlua::Result<Table> {
        self.run_table(lua, |t| &t.env)
    }

    /// The packages `require` loaded in this run (name -> value).
    pub(crate) fn packages(&self, lua: &Lua) -> mlua::Result<Table> {
        self.run_table(lua, |t| &t.packages)
    }

    /// True while the package `name` is being loaded (a `require` of it is on the stack).
    pub(crate) fn is_loading(&self, name: &[u8]) -> bool {
        self.loading.borrow().iter().any(|n| n == name)
    }

    /// Marks `name` as being loaded until the guard is dropped.
    pub(crate) fn start_loading(&self, name: Vec<u8>) -> LoadingGuard<'_> {
        self.loading.borrow_mut().push(name.clone());
        LoadingGuard { ctx: self, name }
    }

    /// The `FnRef` of a function, numbering it on first sight in this run.
    pub(crate) fn fn_ref(&self, lua: &Lua, f: Function) -> mlua::Result<FnRef> {
        let ids = self.run_table(lua, |t| &t.fn_ids)?;
        if let Some(i) = ids.raw_get::<Option<u32>>(f.clone())? {
            return Ok(FnRef(i));
        }
        let i = self.next_fn.get();
        let next = i.checked_add(1).ok_or_else(|| mlua::Error::runtime("too many functions"))?;
        let fns = self.run_table(lua, |t| &t.fns)?;
        ids.raw_set(f.clone(), i)?;
        fns.raw_set(i, f)?;
        self.next_fn.set(next);
        Ok(FnRef(i))
    }

    /// The function behind a `FnRef` of this run.
    pub(crate) fn function(&self, lua: &Lua, r: FnRef) -> mlua::Result<Function> {
        let fns = self.run_table(lua, |t| &t.fns)?;
        fns.raw_get::<Option<Function>>(r.0)?
            .ok_or_else(|| mlua::Error::runtime(format!("unknown function reference {}", r.0)))
    }

    /// The cached method table of a host object kind.
    pub(crate) fn methods(&self, lua: &Lua, kind: &str) -> Option<Table> {
        let methods = self.methods.borrow();
        methods.get(kind).and_then(|k| lua.registry_value(k).ok())
    }

    pub(crate) fn cache_methods(&self, lua: &Lua, kind: &'static str, t: &Table) -> mlua::Result<()> {
        let key = lua.create_registry_value(t.clone())?;
        let old = self.methods.borrow_mut().insert(kind, key);
        if let Some(old) = old {
            lua.remove_registry_value(old)?;
        }
        Ok(())
    }

    pub(crate) fn clock(&self) -> &CallClock {
        &self.watch.clock
    }

    /// True when no script code is running (the next call is a top-level one).
    pub(crate) fn is_idle(&self) -> bool {
        self.depth.get() == 0
    }

    // ----- call depth -----

    /// Counts one more level of script code; `None` when nested too deeply.
    pub(crate) fn enter_call(&self) -> Option<DepthGuard<'_>> {
        let d = self.depth.get();
        if d >= MAX_CALL_DEPTH {
            return None;
        }
        self.depth.set(d + 1);
        Some(DepthGuard { ctx: self })
    }
}

pub(crate) struct DepthGuard<'a> {
    ctx: &'a Ctx,
}

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.ctx.depth.set(self.ctx.depth.get().saturating_sub(1));
    }
}

pub(crate) struct LoadingGuard<'a> {
    ctx: &'a Ctx,
    name: Vec<u8>,
}

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        let mut loading = self.ctx.loading.borrow_mut();
        if let Some(i) = loading.iter().rposition(|n| *n == self.name) {
            loading.remove(i);
        }
    }
}

/// Makes `natives` reachable from Lua callbacks for the guard's lifetime.
pub(crate) struct NativesGuard<'a> {
    ctx: &'a Ctx,
    saved: Option<NonNull<dyn Natives>>,
}

impl<'a> NativesGuard<'a> {
    pub(crate) fn new(ctx: &'a Ctx, natives: &'a dyn Natives) -> Self {
        let short: NonNull<dyn Natives + 'a> = NonNull::from(natives);
        // SAFETY: only the trait object's lifetime bound is erased (same layout). The pointer
        // is cleared by `Drop` before `'a` ends, and is only dereferenced in `Ctx::natives`.
        let erased: NonNull<dyn Natives> = unsafe {
            std::mem::transmute::<NonNull<dyn Natives + 'a>, NonNull<dyn Natives + 'static>>(short)
        };
        let saved = ctx.natives.replace(Some(erased));
        NativesGuard { ctx, saved }
    }
}

impl Drop for NativesGuard<'_> {
    fn drop(&mut self) {
        self.ctx.natives.set(self.saved);
    }
}
