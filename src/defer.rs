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

use crate::triggers::TriggerJob;
use redis_module::raw;
use std::cell::RefCell;
use std::collections::VecDeque;

thread_local! {
    /// Triggers waiting for the running wrapper's command to return (None: no wrapper).
    static DEFERRED: RefCell<Option<VecDeque<TriggerJob>>> = const { RefCell::new(None) };
}

/// Queues a trigger if a wrapper is running; gives it back otherwise.
pub fn push(job: TriggerJob) -> Result<(), TriggerJob> {
    DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(q) => {
            q.push_back(job);
            Ok(())
        }
        None => Err(job),
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
        let Some(job) = DEFERRED.with(|d| d.borrow_mut().as_mut().and_then(|q| q.pop_front())) else { break };
        crate::triggers::run_deferred(ctx, job);
    }
    r
}
