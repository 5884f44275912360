//! `Watch`: the instance's clock plus the fatal error of the current top-level call,
//! shared between the instruction hook and the bridge.

use engine::{CallClock, ScriptError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The clock, plus the fatal error (timeout, abort, memory) of the current top-level call.
///
/// A fatal error sticks until the next top-level `run`/`call`: once a callback timed out, the
/// script that called it (through a native) must not carry on, even though its own time
/// budget is intact, and a script that swallowed the error with `pcall` still fails.
/// Shared with the instruction hook, hence `Arc` and thread-safe types.
#[derive(Default)]
pub(crate) struct Watch {
    pub(crate) clock: CallClock,
    has_fatal: AtomicBool,
    fatal: Mutex<Option<ScriptError>>,
}

impl Watch {
    /// What the hook calls: Err when script code must stop.
    pub(crate) fn check(&self) -> Result<(), ScriptError> {
        if let Some(e) = self.fatal() {
            return Err(e);
        }
        self.clock.check().inspect_err(|e| self.set_fatal(e))
    }

    pub(crate) fn fatal(&self) -> Option<ScriptError> {
        if !self.has_fatal.load(Ordering::Acquire) {
            return None;
        }
        self.fatal.lock().map(|f| f.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records `e` if it is fatal and nothing was recorded yet.
    pub(crate) fn set_fatal(&self, e: &ScriptError) {
        if !e.is_fatal() {
            return;
        }
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e.clone());
            self.has_fatal.store(true, Ordering::Release);
        }
    }

    pub(crate) fn reset(&self) {
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        *f = None;
        self.has_fatal.store(false, Ordering::Release);
    }
}
