//! Sync triggers on servers without post-notification jobs (Redis 7.0).
//!
//! A keyspace event arrives in the middle of the command that caused it, where a write
//! corrupts that command. 7.2+ runs a trigger's steps as a post-notification job, right
//! after the command. On 7.0 the command filter runs client commands whose keys a sync
//! trigger watches inside a wrapper (RG.HOOKRUN, or RG.WTRUN for recipe keys): the wrapper
//! runs the command through a module call, the events it causes are queued here instead of
//! fired, and the wrapper fires them once the command has returned, still inside the
//! client's command: before its reply, in the same MULTI/EXEC for the AOF and replicas.
//! Events that no client command causes (active expiry, eviction) still fire in place,
//! where scripts may only read.
//!
//! The same queue carries other work that must run once the wrapped command (or the
//! module's own call) has returned, on every server: the captures of a FLUSHALL/FLUSHDB/
//! SWAPDB (see `recipes::after_command`), which must reach the AOF and replicas after it.

use crate::triggers::TriggerJob;
use redis_module::raw;
use std::cell::RefCell;
use std::collections::VecDeque;

/// Work to run once the wrapped command has returned, in the wrapper's context.
pub type Then = Box<dyn FnOnce(*mut raw::RedisModuleCtx)>;

enum Deferred {
    Trigger(TriggerJob),
    Then(Then),
}

thread_local! {
    /// Work waiting for the running wrapper's command to return (None: no wrapper).
    static DEFERRED: RefCell<Option<VecDeque<Deferred>>> = const { RefCell::new(None) };
}

/// Queues a trigger if a wrapper is running; gives it back otherwise.
pub fn push(job: TriggerJob) -> Result<(), TriggerJob> {
    DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(q) => {
            q.push_back(Deferred::Trigger(job));
            Ok(())
        }
        None => Err(job),
    })
}

/// Queues `f` to run once the running wrapper's command has returned; gives it back if no
/// wrapper is running.
pub fn then(f: Then) -> Result<(), Then> {
    DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(q) => {
            q.push_back(Deferred::Then(f));
            Ok(())
        }
        None => Err(f),
    })
}

/// Runs `f` (a wrapped command) and then the triggers its events queued, in order; the
/// triggers' own writes may queue more, which run too (chains are bounded by depth).
pub fn around<R>(ctx: *mut raw::RedisModuleCtx, f: impl FnOnce() -> R) -> R {
    let outer = DEFERRED.with(|d| d.borrow().is_some());
    if outer {
        // A wrapper inside a wrapper (RG.WTRUN runs hooks): the outermost one drains.
        return f();
    }
    DEFERRED.with(|d| *d.borrow_mut() = Some(VecDeque::new()));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFERRED.with(|d| *d.borrow_mut() = None);
        }
    }
    let _reset = Reset;
    let r = f();
    loop {
        let Some(next) = DEFERRED.with(|d| d.borrow_mut().as_mut().and_then(|q| q.pop_front())) else { break };
        match next {
            Deferred::Trigger(job) => crate::triggers::run_deferred(ctx, job),
            Deferred::Then(f) => f(ctx),
        }
    }
    r
}
