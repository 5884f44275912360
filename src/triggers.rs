//! Keyspace events and RG.TRIGGER: what fires registrations.

use crate::commands::{guarded, replied, text};
use crate::host::InPlaceHost;
use crate::{blocking, engine, redis_host, reply};
use engine::{execution::Execution, Mode, Outcome, Value};
use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult, RedisString};
use std::os::raw::{c_char, c_int};
use std::sync::Arc;

/// Subscribes to every keyspace event (the registrations filter them).
pub fn subscribe(ctx: &Context) -> bool {
    let types = raw::REDISMODULE_NOTIFY_ALL as c_int;
    // SAFETY: called once from the module's load function with its context.
    unsafe { raw::RedisModule_SubscribeToKeyspaceEvents.unwrap()(ctx.ctx, types, Some(on_keyspace_event)) == raw::REDISMODULE_OK as c_int }
}

pub(crate) fn key_type(ctx: *mut raw::RedisModuleCtx, key: *mut raw::RedisModuleString) -> String {
    // SAFETY: GIL held (keyspace callbacks run with it); the key is closed before returning.
    unsafe {
        let k = raw::RedisModule_OpenKey.unwrap()(ctx, key, raw::REDISMODULE_READ as c_int) as *mut raw::RedisModuleKey;
        if k.is_null() {
            return "none".into();
        }
        let t = raw::RedisModule_KeyType.unwrap()(k);
        raw::RedisModule_CloseKey.unwrap()(k);
        match t as isize {
            raw::REDISMODULE_KEYTYPE_STRING => "string",
            raw::REDISMODULE_KEYTYPE_LIST => "list",
            raw::REDISMODULE_KEYTYPE_HASH => "hash",
            raw::REDISMODULE_KEYTYPE_SET => "set",
            raw::REDISMODULE_KEYTYPE_ZSET => "zset",
            raw::REDISMODULE_KEYTYPE_STREAM => "stream",
            raw::REDISMODULE_KEYTYPE_MODULE => "module",
            _ => "none",
        }
        .into()
    }
}

extern "C" fn on_keyspace_event(ctx: *mut raw::RedisModuleCtx, _type: c_int, event: *const c_char, key: *mut raw::RedisModuleString) -> c_int {
    let _ = std::panic::catch_unwind(|| {
        let Some(engine) = crate::ENGINE.get() else { return };
        if engine.sessions.registration_count() == 0 {
            return;
        }
        let context = Context::new(ctx);
        let flags = context.get_flags();
        // Replicas and loading servers only apply what the primary already did.
        if flags.contains(ContextFlags::LOADING) || !flags.contains(ContextFlags::MASTER) {
            return;
        }
        // SAFETY: Redis passes a NUL-terminated event name and a live key string.
        let event = unsafe { std::ffi::CStr::from_ptr(event) }.to_string_lossy().into_owned();
        let key_bytes = unsafe {
            let mut len = 0usize;
            let p = raw::RedisModule_StringPtrLen.unwrap()(key, &mut len);
            std::slice::from_raw_parts(p as *const u8, len).to_vec()
        };
        // SAFETY: GIL held; the event's context knows its database.
        let db = unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx) }.max(0) as u32;
        // Recipes first: their capture is part of the write.
        crate::recipes::on_event(ctx, db, &event, &key_bytes);
        if event == "xadd" {
            for (session, reg) in engine.sessions.stream_triggers(&key_bytes) {
                engine.stream_ready(session, reg, key_bytes.clone());
            }
        }
        let fired = engine.sessions.keys_triggers(&event, &key_bytes, || key_type(ctx, key));
        if fired.is_empty() {
            return;
        }
        let host: Arc<dyn engine::Host> = Arc::new(InPlaceHost::new(ctx, redis_host().clone()));
        for (session, reg) in fired {
            if session.db != db {
                continue;
            }
            let engine::Trigger::Keys { read_value, .. } = reg.spec.trigger else { continue };
            let locked = host.lock(db);
            let mut record = match engine::read_key(&*locked, None, &key_bytes, read_value) {
                Ok(Some(r)) => r.into_value(),
                // A deleted or expired key: the record has the key and the event only.
                _ => Value::Map(vec![(Value::str("key"), Value::from_bytes(key_bytes.clone())), (Value::str("type"), Value::str("none"))]),
            };
            drop(locked);
            if let Value::Map(m) = &mut record {
                m.push((Value::str("event"), Value::String(event.clone())));
            }
            match reg.spec.mode {
                Mode::Sync => {
                    let _ = engine.fire(host.clone(), &session, &reg, vec![record]);
                }
                Mode::Async | Mode::AsyncLocal => {
                    engine.fire_async(session, reg, vec![record], None);
                }
            }
        }
    });
    raw::REDISMODULE_OK as c_int
}

/// RG.TRIGGERONKEY name key [arg ...]: RG.TRIGGER whose second argument is a key (its key
/// spec lets cluster clients route it to the key's shard); the record is `[name, key, arg, ...]`.
pub fn rg_trigger_on_key(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() < 3 {
        return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.TRIGGERONKEY <name> <key> [<arg> ...]"));
    }
    rg_trigger(ctx, args)
}

/// RG.TRIGGER name [arg ...]: fires the CommandReader registration `name` with the record
/// `[name, arg, ...]` and replies with the records its steps produced.
pub fn rg_trigger(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() < 2 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.TRIGGER <name> [<arg> ...]"));
        }
        let name = text(&args[1], "the trigger name")?;
        let engine = engine();
        let (session, reg) = engine.sessions.command_trigger(&name).ok_or_else(|| RedisError::String(format!("ERR no registration for trigger '{name}'")))?;
        if reg.paused.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RedisError::String(format!("ERR the registration for trigger '{name}' ({}) is paused", reg.id)));
        }
        let record = Value::Array(args[1..].iter().map(|a| Value::from_bytes(a.as_slice().to_vec())).collect());
        let reply_with = |ctx: &Context, r: Result<engine::RunOutput, engine::ScriptError>| match r {
            Ok(out) if out.errors.is_empty() => reply::reply(ctx, &Value::Array(out.results)),
            Ok(out) => reply::error(ctx, &out.errors.join("; ")),
            Err(e) => reply::error(ctx, &e.message),
        };
        match reg.spec.mode {
            Mode::Sync => {
                let host: Arc<dyn engine::Host> = Arc::new(InPlaceHost::new(ctx.ctx, redis_host().clone()));
                reply_with(ctx, engine.fire(host, &session, &reg, vec![record]));
            }
            Mode::Async | Mode::AsyncLocal => {
                if ctx.get_flags().contains(ContextFlags::MULTI) {
                    return Err(RedisError::Str("ERR an async trigger cannot run inside MULTI/EXEC: register it with mode 'sync'"));
                }
                let exec = Arc::new(Execution::new(reg.id.clone(), session.language, None));
                blocking::block_until_done(ctx, &exec);
                let done_exec = exec.clone();
                let queued = engine.fire_async(session, reg, vec![record], Some(Box::new(move |r| {
                    let outcome = match r {
                        Ok(out) if out.errors.is_empty() => Outcome::Returned(Value::Array(out.results)),
                        Ok(out) => Outcome::Failed(out.errors.join("; ")),
                        Err(e) => Outcome::Failed(e.message),
                    };
                    done_exec.finish(outcome, false);
                })));
                if !queued {
                    exec.finish(Outcome::Failed("the engine is shutting down".into()), true);
                }
            }
        }
        replied()
    })
}
