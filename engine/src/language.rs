//! The `Language` trait: what the engine needs from an interpreter, and the `Natives`
//! bridge through which a language exposes the stdlib to scripts.
//!
//! A language never touches Redis: everything a script does to its environment goes
//! through `Natives` (implemented once, by the stdlib).

use crate::{FnRef, ObjRef, ScriptError, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits of one interpreter instance.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes the instance may allocate (0 = unlimited).
    pub memory_bytes: usize,
    /// Longest a single call into script code may run (0 = unlimited).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 0, timeout: Duration::ZERO }
    }
}

/// A language implementation (a factory of instances). Shared by all threads.
pub trait Language: Send + Sync + 'static {
    /// "lua" or "js": the name used in `RG.EXEC <lang>`.
    fn name(&self) -> &'static str;
    /// Creates an interpreter instance. Instances are not `Send`: each lives and dies on
    /// the thread that created it, and is reused for many runs.
    fn new_instance(&self, limits: Limits) -> Result<Box<dyn Instance>, ScriptError>;
}

/// One interpreter state.
pub trait Instance {
    /// Compiles `source` without running it (syntax check).
    fn check(&mut self, source: &str) -> Result<(), ScriptError>;

    /// Runs `source` as a new script, with fresh globals, the stdlib globals bound to
    /// `natives`, and `args` visible to the script as the global `ARGS` (array of strings).
    /// Functions the script hands to natives get `FnRef`s numbered from 0 in this run and
    /// stay callable through `call` until `end_run`.
    fn run(&mut self, source: &str, args: &[Vec<u8>], natives: &dyn Natives)
        -> Result<Value, ScriptError>;

    /// Calls a function of the current run.
    fn call(&mut self, f: FnRef, args: &[Value], natives: &dyn Natives)
        -> Result<Value, ScriptError>;

    /// Forgets the current run's globals and functions.
    fn end_run(&mut self);

    /// Bytes currently allocated by the interpreter.
    fn memory_used(&self) -> usize;

    /// The instance's clock: deadlines and the abort flag its hooks poll.
    fn clock(&self) -> &CallClock;

    /// Changes the limits (config changed at run time).
    fn set_limits(&mut self, limits: Limits);
}

/// What scripts can call: implemented by the stdlib, bound generically by every language.
///
/// Methods take `&self` because calls nest (a native's callback calls another native).
pub trait Natives {
    /// Names of global functions (`GB`, `execute`, `log`, ...).
    fn globals(&self) -> &'static [&'static str];
    /// Method names of an object kind (`"GB"` builders: `map`, `filter`, `run`, ...).
    fn methods(&self, kind: &str) -> &'static [&'static str];
    fn call_global(&self, name: &str, args: Vec<Value>, script: &dyn ScriptCalls)
        -> Result<Value, ScriptError>;
    /// Calls a method of an object (the object itself is not in `args`).
    fn call_method(&self, obj: ObjRef, name: &str, args: Vec<Value>, script: &dyn ScriptCalls)
        -> Result<Value, ScriptError>;

    /// The source of the package `name` written in `language` ("lua" or "js"), for
    /// `require('name')` in Lua and `import ... from 'name'` in JavaScript; None if there is
    /// no such package (the language says how to load one), an error if this run may not
    /// import it (a session's instance imports only what the session imported when it was
    /// registered). Languages call it once per package and run: they cache the result of
    /// loading it for the rest of the run.
    fn package(&self, _language: &str, _name: &str) -> Result<Option<String>, ScriptError> {
        Ok(None)
    }
}

/// Lets a native call back into the script that called it.
pub trait ScriptCalls {
    fn call(&self, f: FnRef, args: &[Value]) -> Result<Value, ScriptError>;
}

/// Per-instance time keeping shared between the running code and the interrupt hook.
///
/// The time limit applies to each stretch of script code: the top-level code of a run
/// and every callback, but not time spent inside natives (a `run()` over a million keys is
/// bounded by its callbacks, each of which is bounded). Languages call `enter_script`
/// when they start script code and `enter_native` when script code calls a native;
/// their hook calls `check`.
#[derive(Debug)]
pub struct CallClock {
    timeout: parking_lot::Mutex<Duration>,
    deadline: parking_lot::Mutex<Option<Instant>>,
    abort: parking_lot::Mutex<Arc<AtomicBool>>,
}

impl Default for CallClock {
    fn default() -> Self {
        CallClock {
            timeout: parking_lot::Mutex::new(Duration::ZERO),
            deadline: parking_lot::Mutex::new(None),
            abort: parking_lot::Mutex::new(Arc::new(AtomicBool::new(false))),
        }
    }
}

/// Restores the previous deadline when dropped.
pub struct ClockGuard<'a> {
    clock: &'a CallClock,
    saved: Option<Instant>,
    native_start: Option<Instant>,
}

impl Drop for ClockGuard<'_> {
    fn drop(&mut self) {
        let mut restored = self.saved;
        // Time spent in a native does not count against the script that called it.
        if let (Some(d), Some(start)) = (restored.as_mut(), self.native_start) {
            *d += start.elapsed();
        }
        *self.clock.deadline.lock() = restored;
    }
}

impl CallClock {
    pub fn set_timeout(&self, timeout: Duration) {
        *self.timeout.lock() = timeout;
    }
    pub fn timeout(&self) -> Duration {
        *self.timeout.lock()
    }
    /// Sets the flag that aborts the current run (shared with the execution record).
    pub fn set_abort_flag(&self, flag: Arc<AtomicBool>) {
        *self.abort.lock() = flag;
    }
    pub fn reset_abort_flag(&self) {
        *self.abort.lock() = Arc::new(AtomicBool::new(false));
    }
    pub fn enter_script(&self) -> ClockGuard<'_> {
        let timeout = self.timeout();
        let mut d = self.deadline.lock();
        let saved = *d;
        *d = (!timeout.is_zero()).then(|| Instant::now() + timeout);
        ClockGuard { clock: self, saved, native_start: None }
    }
    pub fn enter_native(&self) -> ClockGuard<'_> {
        let mut d = self.deadline.lock();
        let saved = *d;
        *d = None;
        ClockGuard { clock: self, saved, native_start: Some(Instant::now()) }
    }
    /// Called from the interpreter's hook: Err when the running code must stop.
    pub fn check(&self) -> Result<(), ScriptError> {
        if self.abort.lock().load(Ordering::Relaxed) {
            return Err(ScriptError::aborted());
        }
        if let Some(d) = *self.deadline.lock() {
            if Instant::now() >= d {
                return Err(ScriptError::timeout(self.timeout().as_millis() as u64));
            }
        }
        Ok(())
    }
    pub fn is_aborted(&self) -> bool {
        self.abort.lock().load(Ordering::Relaxed)
    }
}
