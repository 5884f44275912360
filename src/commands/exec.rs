//! RG.EXEC: run a Lua or JavaScript script.

use super::{guarded, replied};
use crate::{blocking, engine, reply};
use engine::{parse_exec, ExecRequest};
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString};

pub fn rg_exec(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let flags = ctx.get_flags();
        if flags.contains(ContextFlags::MULTI) {
            return Err(RedisError::Str("ERR RG.EXEC cannot run inside MULTI/EXEC: scripts run on worker threads; send it on its own"));
        }
        if flags.contains(ContextFlags::LUA) {
            return Err(RedisError::Str("ERR RG.EXEC cannot be called from a Lua script (EVAL/FCALL)"));
        }
        if flags.contains(ContextFlags::LOADING) {
            return Err(RedisError::Str("LOADING Redis is loading the dataset in memory"));
        }
        let argv: Vec<&[u8]> = args.iter().skip(1).map(|a| a.as_slice()).collect();
        let parsed = parse_exec(&argv).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        let engine = engine();
        if let Err(e) = engine.check(&parsed.language, &parsed.code) {
            return Err(RedisError::String(format!("ERR {e}")));
        }
        let user = ctx.get_current_user().to_string_lossy();
        // SAFETY: the command's live context, on the main thread.
        let db = unsafe { redis_module::raw::RedisModule_GetSelectedDb.unwrap()(ctx.ctx) }.max(0) as u32;
        let unblocking = parsed.unblocking;
        let exec = engine
            .submit(ExecRequest {
                language: parsed.language,
                source: parsed.code,
                args: parsed.args,
                id: parsed.id,
                description: parsed.description,
                user: Some(user),
                db,
                upgrade: parsed.upgrade,
            })
            .map_err(|e| RedisError::String(format!("ERR {e}")))?;
        if unblocking {
            reply::reply(ctx, &engine::Value::String(exec.id.clone()));
        } else {
            blocking::block_until_done(ctx, &exec);
        }
        replied()
    })
}
