//! Blocking a client until an execution finishes, then replying from the main thread.

use crate::reply;
use engine::{outcome_value, Execution, Outcome, Value};
use redis_module::{raw, Context};
use std::os::raw::c_int;
use std::sync::Arc;

/// What the blocked client is sent once the execution is done.
pub enum Answer {
    /// `[results, errors]`, or the script's return value, or an error.
    Exec(Result<Value, String>),
    /// The script returned nothing and did not call `run()`.
    Ok,
}

struct BlockedClient(*mut raw::RedisModuleBlockedClient);
// SAFETY: a blocked-client handle may be unblocked from any thread (Module API contract).
unsafe impl Send for BlockedClient {}

/// The reply RG.EXEC and RG.GETRESULTS(BLOCKING) give for an outcome.
pub fn answer(o: &Outcome) -> Answer {
    match outcome_value(o) {
        Ok(Value::Nil) => Answer::Ok,
        r => Answer::Exec(r),
    }
}

pub fn send(ctx: &Context, a: &Answer) {
    match a {
        Answer::Exec(Ok(v)) => reply::reply(ctx, v),
        Answer::Exec(Err(e)) => reply::error(ctx, e),
        Answer::Ok => {
            ctx.reply_simple_string("OK");
        }
    }
}

pub(crate) extern "C" fn on_reply(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    let r = std::panic::catch_unwind(|| {
        let ctx = Context::new(ctx);
        // SAFETY: the private data is the `Answer` boxed in `block_until_done`, alive until
        // `free_answer` runs after this callback.
        let data = unsafe { raw::RedisModule_GetBlockedClientPrivateData.unwrap()(ctx.ctx) } as *const Answer;
        if let Some(a) = unsafe { data.as_ref() } {
            send(&ctx, a);
        } else {
            reply::error(&ctx, "ERR internal error: no result for the blocked client");
        }
    });
    if r.is_err() {
        return raw::REDISMODULE_ERR as c_int;
    }
    raw::REDISMODULE_OK as c_int
}

pub(crate) extern "C" fn free_answer(_ctx: *mut raw::RedisModuleCtx, data: *mut std::os::raw::c_void) {
    if !data.is_null() {
        // SAFETY: `data` came from Box::into_raw in `block_until_done` and is freed once.
        drop(unsafe { Box::from_raw(data as *mut Answer) });
    }
}

/// Blocks the calling client (not the server) until `exec` finishes, then replies.
pub fn block_until_done(ctx: &Context, exec: &Arc<Execution>) {
    // SAFETY: called on the main thread from a command handler with its live context.
    let bc = unsafe { raw::RedisModule_BlockClient.unwrap()(ctx.ctx, Some(on_reply), None, Some(free_answer), 0) };
    let bc = BlockedClient(bc);
    exec.on_finish(Box::new(move |e: &Execution| {
        let bc = bc;
        let a = e.outcome().map(|o| answer(&o)).unwrap_or(Answer::Exec(Err("ERR execution has no outcome".into())));
        let data = Box::into_raw(Box::new(a)) as *mut std::os::raw::c_void;
        // SAFETY: `bc` is unblocked exactly once; ownership of `data` passes to Redis,
        // which hands it to `on_reply` and then `free_answer`.
        unsafe { raw::RedisModule_UnblockClient.unwrap()(bc.0, data) };
    }));
}

/// Blocks the calling client (not the server); the returned function, called once from
/// any thread, unblocks it with its answer.
pub fn block_client(ctx: &Context) -> Box<dyn FnOnce(Answer) + Send> {
    // SAFETY: called on the main thread from a command handler with its live context.
    let bc = BlockedClient(unsafe { raw::RedisModule_BlockClient.unwrap()(ctx.ctx, Some(on_reply), None, Some(free_answer), 0) });
    Box::new(move |a: Answer| {
        let bc = bc;
        let data = Box::into_raw(Box::new(a)) as *mut std::os::raw::c_void;
        // SAFETY: as in `block_until_done`: unblocked once, `data` owned by Redis after.
        unsafe { raw::RedisModule_UnblockClient.unwrap()(bc.0, data) };
    })
}
