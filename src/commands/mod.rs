//! One file per command family.

pub mod cluster;
pub mod cluster_views;
pub mod config;
pub mod exec;
pub mod executions;
pub mod packages;
pub mod recipe;
pub mod registrations;

use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

/// Runs a handler, turning a panic into an error reply so it never crosses into Redis.
pub fn guarded(ctx: &Context, f: impl FnOnce() -> RedisResult) -> RedisResult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            ctx.log_warning("rg: internal error (panic) while handling a command");
            Err(RedisError::Str("ERR internal error while handling the command"))
        }
    }
}

/// A command argument as UTF-8 text, or a clear error naming it.
pub fn text(arg: &RedisString, what: &str) -> Result<String, RedisError> {
    arg.try_as_str().map(str::to_string).map_err(|_| RedisError::String(format!("ERR {what} must be valid UTF-8")))
}

/// The reply was already written with the raw reply functions.
pub fn replied() -> RedisResult {
    Ok(RedisValue::NoReply)
}
