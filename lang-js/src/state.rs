//! State shared by an instance, its interrupt handler and the native functions it
//! installs in each run's context.
//!
//! Everything here is behind `Cell`/`RefCell` because calls nest (script -> native ->
//! script -> native ...) and every layer only has `&State`. No `RefCell` borrow is ever
//! held across a call into JS or into a native.

use crate::memory::Budget;
use engine::{CallClock, Natives, ObjRef, ScriptError};
use rquickjs::{Function, Object, Persistent, Value as JsValue};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::rc::Rc;

/// The natives of the current `run`/`call`, with their lifetime erased.
type NativesPtr = NonNull<dyn Natives + 'static>;

#[derive(Default)]
pub(crate) struct State {
    pub clock: CallClock,
    /// The runtime's memory budget (shared with its allocator).
    pub memory: Rc<Budget>,
    /// Why the interrupt handler stopped the script (Timeout or Aborted).
    pub interrupt: Cell<Option<ScriptError>>,
    /// A fatal error (timeout, memory, abort) a native returned during this call: it ends
    /// the call even if the script got past it (a promise job swallows its exception).
    pub fatal: Cell<Option<ScriptError>>,
    /// Set while end_run() flushes leftover promise jobs: interrupt them at once.
    pub draining: Cell<bool>,
    /// Set while `check()` compiles: the module loader stubs packages instead of loading them.
    pub checking: Cell<bool>,
    /// Set when the module loader refused an import (see `modules.rs`).
    pub import_failed: Cell<bool>,
    /// Callbacks from natives into the script running now, nested (see bridge.rs).
    pub nesting: Cell<usize>,
    /// Packages being loaded, nested (package imports package).
    pub import_depth: Cell<usize>,
    /// Names of the packages compiled in this run: file names of their code in stack traces.
    pub packages: RefCell<Vec<String>>,
    natives: Cell<Option<NativesPtr>>,
    /// The run's functions, indexed by `FnRef`.
    pub functions: RefCell<Vec<Persistent<Function<'static>>>>,
    /// Functions that could not be tagged with their index (frozen): searched linearly.
    pub untagged_functions: RefCell<Vec<u32>>,
    /// The run's host objects, indexed by the hidden property they carry.
    pub objects: RefCell<Vec<(ObjRef, Persistent<Object<'static>>)>>,
    /// Where each host object is in `objects`.
    pub object_index: RefCell<HashMap<ObjRef, usize>>,
    /// The last error a native returned, with the JS value thrown for it, so that the
    /// error keeps its kind when it comes out of the script uncaught.
    pub native_error: RefCell<Option<(ScriptError, Persistent<JsValue<'static>>)>>,
}

impl State {
    /// The natives bound to the current `run`/`call`, if any.
    pub fn natives(&self) -> Option<&dyn Natives> {
        // SAFETY: the pointer is only `Some` while a `NativesGuard` is alive, and a guard is
        // created in `run()`/`call()` from a `&dyn Natives` borrowed for the whole call, and
        // dropped before they return. Everything that dereferences it (native functions of
        // the script) runs inside those calls, synchronously, on this thread. The returned
        // reference must not outlive the native call it is used for (callers use it only
        // for the duration of one native call).
        self.natives.get().map(|p| unsafe { &*p.as_ptr() })
    }

    /// Drops everything the current run holds in the JS heap.
    pub fn clear_run(&self) {
        // Take the values out first so that no borrow is held while they are freed.
        let functions = std::mem::take(&mut *self.functions.borrow_mut());
        let objects = std::mem::take(&mut *self.objects.borrow_mut());
        let native_error = self.native_error.borrow_mut().take();
        self.untagged_functions.borrow_mut().clear();
        self.object_index.borrow_mut().clear();
        self.packages.borrow_mut().clear();
        self.import_depth.set(0);
        drop(functions);
        drop(objects);
        drop(native_error);
        self.interrupt.set(None);
        self.fatal.set(None);
    }

    /// Whether `file` (a file name in a stack trace) is the script or a package of the run.
    pub fn is_source_file(&self, file: &str) -> bool {
        file == crate::modules::SCRIPT_NAME || self.packages.borrow().iter().any(|p| p == file)
    }

    /// Forgets what stopped the previous top-level call.
    pub fn start_call(&self) {
        self.interrupt.set(None);
        self.fatal.set(None);
        self.memory.clear_refused();
    }
}

/// Binds `natives` to the state for the duration of a `run`/`call`; restores the previous
/// binding when dropped.
/// The guard borrows `natives`, so it cannot outlive them.
pub(crate) struct NativesGuard<'a, 'n> {
    state: &'a State,
    saved: Option<NativesPtr>,
    _natives: PhantomData<&'n dyn Natives>,
}

impl<'a, 'n> NativesGuard<'a, 'n> {
    pub fn bind(state: &'a State, natives: &'n dyn Natives) -> Self {
        let ptr: NonNull<dyn Natives + 'n> = NonNull::from(natives);
        // SAFETY: only the lifetime bound of the trait object is erased; the pointer is
        // cleared (restored) by `Drop` before the borrow of `natives` ends, since the guard
        // cannot outlive the `run()`/`call()` frame that holds that borrow.
        let ptr: NativesPtr = unsafe { std::mem::transmute(ptr) };
        let saved = state.natives.replace(Some(ptr));
        NativesGuard { state, saved, _natives: PhantomData }
    }
}

impl Drop for NativesGuard<'_, '_> {
    fn drop(&mut self) {
        self.state.natives.set(self.saved);
    }
}
