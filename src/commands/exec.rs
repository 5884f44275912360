//! RG.EXEC: run a Lua or JavaScript script.

use super::{guarded, replied};
use crate::{blocking, engine};
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
        // Running a script is EVAL's right; registering (checked when the script registers)
        // is FUNCTION LOAD's.
        let caller = crate::acl::require(ctx, "RG.EXEC", crate::acl::EVAL, 1)?;
        // SAFETY: the command's live context, on the main thread.
        let db = unsafe { redis_module::raw::RedisModule_GetSelectedDb.unwrap()(ctx.ctx) }.max(0) as u32;
        // A session (or its finished execution) of the same id is replaced only by its
        // owner or an admin.
        if let Some(s) = parsed.id.as_deref().and_then(|id| engine.sessions.get(id)) {
            crate::acl::require_owner(&caller, "session", &s.id, s.user.as_deref())?;
        }
        let unblocking = parsed.unblocking;
        let req = ExecRequest {
            language: parsed.language,
            source: parsed.code,
            args: parsed.args,
            id: parsed.id,
            description: parsed.description,
            user: caller.user,
            db,
            upgrade: parsed.upgrade,
            admin: caller.admin,
        };
        // Errors found without compiling (language, size) are the reply right away.
        engine.language(&req.language).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        engine.check_size(&req.source).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        // Compiling a large script takes a while: it is done off the main thread while the
        // client waits. A syntax error is the reply and creates no execution.
        let unblock = blocking::block_client(ctx);
        engine.submit_checked(
            req,
            Box::new(move |queued| match queued {
                // Refusals keep their own code (NOPERM); other errors are ERR.
                Err(e) => unblock(blocking::Answer::Exec(Err(match e.to_string() {
                    m if m.starts_with("NOPERM ") => m,
                    m => format!("ERR {m}"),
                }))),
                Ok(exec) if unblocking => unblock(blocking::Answer::Exec(Ok(engine::Value::String(exec.id.clone())))),
                Ok(exec) => exec.on_finish(Box::new(move |e: &engine::Execution| {
                    unblock(e.outcome().map(|o| blocking::answer(&o)).unwrap_or(blocking::Answer::Exec(Err("ERR execution has no outcome".into()))))
                })),
            }),
        );
        replied()
    })
}
