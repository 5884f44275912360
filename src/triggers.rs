//! Keyspace events and RG.TRIGGER: what fires registrations.

use crate::commands::{guarded, replied, text};
use crate::host::InPlaceHost;
use crate::{blocking, engine, redis_host, reply};
use engine::{execution::Execution, Mode, Outcome, Value};
use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult, RedisString};
use std::os::raw::{c_char, c_int, c_void};
use std::sync::Arc;

/// Subscribes to every keyspace event (the registrations filter them).
pub fn subscribe(ctx: &Context) -> bool {
    let types = raw::REDISMODULE_NOTIFY_ALL as c_int;
    // SAFETY: called once from the module's load function with its context.
    unsafe { raw::RedisModule_SubscribeToKeyspaceEvents.unwrap()(ctx.ctx, types, Some(on_keyspace_event)) == raw::REDISMODULE_OK as c_int }
}

/// Open-key mode for looking at a key without touching it: no LRU/LFU update, no
/// keyspace hit/miss counted, no lazy expiry (each where the server supports it; 7.0 has
/// only NOTOUCH).
pub(crate) fn no_side_effects() -> u32 {
    let wanted = raw::REDISMODULE_OPEN_KEY_NOTOUCH | raw::REDISMODULE_OPEN_KEY_NOSTATS | raw::REDISMODULE_OPEN_KEY_NOEXPIRE | raw::REDISMODULE_OPEN_KEY_NOEFFECTS;
    // SAFETY: a plain query of the server (7.2+); absent on 7.0.
    let supported = unsafe { raw::RedisModule_GetOpenKeyModesAll.map(|f| f() as u32) }.unwrap_or(raw::REDISMODULE_OPEN_KEY_NOTOUCH);
    raw::REDISMODULE_READ | (wanted & supported)
}

pub(crate) fn key_type(ctx: *mut raw::RedisModuleCtx, key: *mut raw::RedisModuleString) -> String {
    // SAFETY: GIL held (keyspace callbacks run with it); the key is closed before returning.
    unsafe {
        let k = raw::RedisModule_OpenKey.unwrap()(ctx, key, no_side_effects() as c_int) as *mut raw::RedisModuleKey;
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

/// How deep sync triggers may chain: a trigger's write fires another trigger (run as a
/// post-notification job), whose write fires another... Beyond this the chain is cut and
/// the registration records the error.
const MAX_TRIGGER_CHAIN: u32 = 16;

thread_local! {
    /// The chain depth of the post-notification job running on this thread (0: none).
    static JOB_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Does this server run post-notification jobs (7.2+, Valkey)? Checked at run time.
pub(crate) fn has_post_notification_jobs() -> bool {
    // SAFETY: reading a function pointer the server filled in at module load.
    unsafe { raw::RedisModule_AddPostNotificationJob }.is_some()
}

/// A sync trigger fired by an event, to run once Redis says writes are safe.
pub(crate) struct TriggerJob {
    session: Arc<engine::Session>,
    reg: Arc<engine::Registration>,
    event: String,
    key: Vec<u8>,
    db: u32,
    depth: u32,
}

/// The prefixes that sync keyspace triggers watch, for the command filter (7.0), kept
/// until the sessions change.
static SYNC_PREFIXES: parking_lot::RwLock<(u64, Option<Arc<Vec<Vec<u8>>>>)> = parking_lot::RwLock::new((u64::MAX, None));

fn sync_prefixes(engine: &engine::Engine) -> Arc<Vec<Vec<u8>>> {
    let generation = engine.sessions.generation();
    if let (g, Some(p)) = &*SYNC_PREFIXES.read() {
        if *g == generation {
            return p.clone();
        }
    }
    let mut prefixes = Vec::new();
    for s in engine.sessions.all() {
        for r in &s.registrations {
            if let (engine::Trigger::Keys { prefix, .. }, Mode::Sync) = (&r.spec.trigger, r.spec.mode) {
                prefixes.push(prefix.clone());
            }
        }
    }
    let prefixes = Arc::new(prefixes);
    *SYNC_PREFIXES.write() = (generation, Some(prefixes.clone()));
    prefixes
}

/// On a server without post-notification jobs: must this client command run inside a
/// wrapper so that the sync triggers its keys fire run after it (see `defer`)?
pub(crate) fn must_defer(fctx: *mut raw::RedisModuleCommandFilterCtx, name: &str, argc: c_int) -> bool {
    if has_post_notification_jobs() {
        return false;
    }
    let Some(engine) = crate::ENGINE.get() else { return false };
    if engine.sessions.registration_count() == 0 || !crate::commands_info::wrappable(name) {
        return false;
    }
    let prefixes = sync_prefixes(engine);
    if prefixes.is_empty() {
        return false;
    }
    // SAFETY: reading a function pointer the server filled in at module load.
    let Some(get_keys) = (unsafe { raw::RedisModule_GetCommandKeys }) else { return false };
    // SAFETY: inside the filter callback: the argument strings belong to the command and
    // stay valid for this call; the key positions array is freed with RM_Free.
    unsafe {
        let mut argv: Vec<*mut raw::RedisModuleString> = (0..argc).map(|i| raw::RedisModule_CommandFilterArgGet.unwrap()(fctx, i)).collect();
        if argv.iter().any(|a| a.is_null()) {
            return false;
        }
        let mut n: c_int = 0;
        let positions = get_keys(std::ptr::null_mut(), argv.as_mut_ptr(), argc, &mut n);
        if positions.is_null() {
            return false;
        }
        let found = std::slice::from_raw_parts(positions, n.max(0) as usize).iter().any(|&i| {
            let Some(&arg) = argv.get(i as usize) else { return false };
            let mut len = 0usize;
            let p = raw::RedisModule_StringPtrLen.unwrap()(arg, &mut len);
            let key = std::slice::from_raw_parts(p as *const u8, len);
            prefixes.iter().any(|prefix| key.starts_with(prefix))
        });
        raw::RedisModule_Free.unwrap()(positions as *mut c_void);
        found
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
        // Nothing below allocates or opens a key unless a registration matches.
        // SAFETY: Redis passes a NUL-terminated event name and a live key string, both
        // valid for this callback.
        let event = unsafe { std::ffi::CStr::from_ptr(event) }.to_string_lossy();
        let key_bytes: &[u8] = unsafe {
            let mut len = 0usize;
            let p = raw::RedisModule_StringPtrLen.unwrap()(key, &mut len);
            std::slice::from_raw_parts(p as *const u8, len)
        };
        // SAFETY: GIL held; the event's context knows its database.
        let db = unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx) }.max(0) as u32;
        // Recipes first: their capture is part of the write.
        crate::recipes::on_event(ctx, db, &event, key_bytes);
        if event == "xadd" {
            for (session, reg) in engine.sessions.stream_triggers(key_bytes) {
                engine.stream_ready(session, reg, key_bytes.to_vec());
            }
        }
        let fired = engine.sessions.keys_triggers(&event, key_bytes, || key_type(ctx, key));
        if fired.is_empty() {
            return;
        }
        let jobs = has_post_notification_jobs();
        let depth = JOB_DEPTH.with(|d| d.get()) + 1;
        let mut in_place: Option<Arc<dyn engine::Host>> = None;
        for (session, reg) in fired {
            if session.db != db {
                continue;
            }
            match reg.spec.mode {
                Mode::Sync => {
                    // A trigger does not fire itself from its own writes.
                    if engine::session_busy(&session.id) {
                        continue;
                    }
                    if depth > MAX_TRIGGER_CHAIN {
                        reg.record(std::time::Duration::ZERO, Err(&format!("not run: sync triggers chained deeper than {MAX_TRIGGER_CHAIN} (each one's writes fired the next) on '{}'", String::from_utf8_lossy(key_bytes))), false);
                        continue;
                    }
                    let job = TriggerJob { session, reg, event: event.clone().into_owned(), key: key_bytes.to_vec(), db, depth };
                    if jobs {
                        let pd = Box::into_raw(Box::new(job)) as *mut c_void;
                        // SAFETY: GIL held inside the event; Redis owns `pd` until it calls
                        // free_trigger_job (also when the job never runs).
                        let ok = unsafe { raw::RedisModule_AddPostNotificationJob.unwrap()(ctx, Some(run_trigger_job), pd, Some(free_trigger_job)) };
                        if ok != raw::REDISMODULE_OK as c_int {
                            // SAFETY: refused, so Redis did not take ownership.
                            drop(unsafe { Box::from_raw(pd as *mut TriggerJob) });
                        }
                    } else if let Err(job) = crate::defer::push(job) {
                        // No post-notification jobs (Redis 7.0) and no wrapper around the
                        // command (active expiry, eviction): now, inside the event, where
                        // only reads are safe; writes get a clear error.
                        let host = in_place.get_or_insert_with(|| Arc::new(InPlaceHost::read_only(ctx, redis_host().clone()))).clone();
                        if let Some(record) = read_record(ctx, &*host, db, &event, key_bytes, &job.session, &job.reg) {
                            let _ = engine.fire(host, &job.session, &job.reg, vec![record]);
                        }
                    }
                }
                Mode::Async | Mode::AsyncLocal => {
                    // Its own writes (this thread runs the session right now) do not fire it
                    // again, or one write would fire it without end.
                    if engine::session_busy(&session.id) {
                        continue;
                    }
                    let host = in_place.get_or_insert_with(|| Arc::new(InPlaceHost::read_only(ctx, redis_host().clone()))).clone();
                    if let Some(record) = read_record(ctx, &*host, db, &event, key_bytes, &session, &reg) {
                        engine.fire_async(session, reg, vec![record], None, None);
                    }
                }
            }
        }
    });
    raw::REDISMODULE_OK as c_int
}

/// A key's LRU idle time or LFU counter, saved before a trigger reads the key and put back
/// after, so that reading it for a registration does not change what eviction sees.
pub(crate) enum Access {
    Lru(i64),
    Lfu(i64),
    Unknown,
}

/// Opens `key` without side effects and calls `f` with it (not if it does not exist).
fn with_key<R>(ctx: *mut raw::RedisModuleCtx, key: &[u8], f: impl FnOnce(*mut raw::RedisModuleKey) -> R) -> Option<R> {
    // SAFETY: GIL held (event or job context); the string and the key are freed/closed
    // before returning.
    unsafe {
        let name = raw::RedisModule_CreateString.unwrap()(ctx, key.as_ptr() as *const c_char, key.len());
        let k = raw::RedisModule_OpenKey.unwrap()(ctx, name, no_side_effects() as c_int) as *mut raw::RedisModuleKey;
        let r = if k.is_null() { None } else { Some(f(k)) };
        if !k.is_null() {
            raw::RedisModule_CloseKey.unwrap()(k);
        }
        raw::RedisModule_FreeString.unwrap()(ctx, name);
        r
    }
}

pub(crate) fn save_access(ctx: *mut raw::RedisModuleCtx, key: &[u8]) -> Access {
    with_key(ctx, key, |k| {
        let (mut freq, mut idle) = (0i64, 0i64);
        // SAFETY: `k` is an open key (see with_key). GetLFU fails unless the policy is LFU.
        unsafe {
            if raw::RedisModule_GetLFU.unwrap()(k, &mut freq) == raw::REDISMODULE_OK as c_int && freq >= 0 {
                Access::Lfu(freq)
            } else if raw::RedisModule_GetLRU.unwrap()(k, &mut idle) == raw::REDISMODULE_OK as c_int && idle >= 0 {
                Access::Lru(idle)
            } else {
                Access::Unknown
            }
        }
    })
    .unwrap_or(Access::Unknown)
}

pub(crate) fn restore_access(ctx: *mut raw::RedisModuleCtx, key: &[u8], access: Access) {
    with_key(ctx, key, |k| {
        // SAFETY: `k` is an open key (see with_key).
        unsafe {
            match access {
                Access::Lru(idle) => {
                    raw::RedisModule_SetLRU.unwrap()(k, idle);
                }
                Access::Lfu(freq) => {
                    raw::RedisModule_SetLFU.unwrap()(k, freq);
                }
                Access::Unknown => {}
            }
        }
    });
}

/// The record a keyspace trigger gets: the key read with its type and value (if the
/// registration reads values), and the event. The key's LRU/LFU is left as it was. The key
/// is read with the session owner's permissions: None if the owner may not read it (the
/// trigger does not fire for keys its owner could not read, whatever its prefix).
fn read_record(ctx: *mut raw::RedisModuleCtx, host: &dyn engine::Host, db: u32, event: &str, key: &[u8], session: &engine::Session, reg: &engine::Registration) -> Option<Value> {
    let engine::Trigger::Keys { read_value, .. } = reg.spec.trigger else { return Some(Value::Nil) };
    // Where the server says which open-key modes it honours (7.2+, Valkey), the key API
    // reads without touching the key's LRU/LFU (the host keeps it for the module types it
    // reads with commands); Redis 7.0's reads touch it: it is saved and put back.
    let access = (unsafe { raw::RedisModule_GetOpenKeyModesAll }.is_none()).then(|| save_access(ctx, key));
    let locked = host.lock(db);
    let read = locked.read_key(session.user.as_deref(), key, read_value);
    drop(locked);
    if let Some(access) = access {
        restore_access(ctx, key, access);
    }
    let mut record = match read {
        Err(engine::HostError::NoPermission(_)) => return None,
        Ok(Some(r)) => r.into_value(),
        // A deleted or expired key: the record has the key and the event only.
        _ => Value::Map(vec![(Value::str("key"), Value::from_bytes(key.to_vec())), (Value::str("type"), Value::str("none"))]),
    };
    if let Value::Map(m) = &mut record {
        m.push((Value::str("event"), Value::String(event.to_string())));
    }
    Some(record)
}

/// Runs a sync trigger as a post-notification job: after the command (or expiry,
/// eviction) that fired it, where writes are safe, before the client's reply and in the
/// same MULTI/EXEC for the AOF and replicas.
extern "C" fn run_trigger_job(ctx: *mut raw::RedisModuleCtx, pd: *mut c_void) {
    // SAFETY: `pd` is the TriggerJob this module gave AddPostNotificationJob; Redis frees
    // it with free_trigger_job after this call. Redis selected the job's database.
    let job = unsafe { &*(pd as *const TriggerJob) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(ctx, job)));
}

/// Runs a trigger `defer` queued, in the wrapper's context, in the event's database.
pub(crate) fn run_deferred(ctx: *mut raw::RedisModuleCtx, job: TriggerJob) {
    // SAFETY: main thread inside the wrapper command; the client's database is put back.
    let selected = unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx) };
    let switch = selected != job.db as c_int;
    if switch {
        unsafe { raw::RedisModule_SelectDb.unwrap()(ctx, job.db as c_int) };
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(ctx, &job)));
    if switch {
        unsafe { raw::RedisModule_SelectDb.unwrap()(ctx, selected) };
    }
}

/// Fires a sync trigger where writes are safe: as a post-notification job (7.2+) or after
/// a wrapped command (7.0): after the command (or expiry, eviction) that fired it, before
/// the client's reply and in the same MULTI/EXEC for the AOF and replicas.
fn run_job(ctx: *mut raw::RedisModuleCtx, job: &TriggerJob) {
    let Some(engine) = crate::ENGINE.get() else { return };
    // The session may have been dropped, upgraded or paused since the event.
    let current = engine.sessions.get(&job.session.id).is_some_and(|s| s.version == job.session.version);
    if !current || job.reg.paused.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let host: Arc<dyn engine::Host> = Arc::new(InPlaceHost::new(ctx, redis_host().clone()));
    let Some(record) = read_record(ctx, &*host, job.db, &job.event, &job.key, &job.session, &job.reg) else { return };
    let outer = JOB_DEPTH.with(|d| d.replace(job.depth));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.fire(host, &job.session, &job.reg, vec![record])));
    JOB_DEPTH.with(|d| d.set(outer));
}

extern "C" fn free_trigger_job(pd: *mut c_void) {
    // SAFETY: `pd` came from Box::into_raw in on_keyspace_event and is freed once, here.
    let _ = std::panic::catch_unwind(|| drop(unsafe { Box::from_raw(pd as *mut TriggerJob) }));
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
        // Like FCALL; the steps then run with the owner's rights intersected with the
        // caller's.
        let command = args[0].to_string_lossy().to_ascii_uppercase();
        let caller = crate::acl::require_user(ctx, &command, crate::acl::FCALL, 1)?;
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
                reply_with(ctx, engine.fire_for(host, &session, &reg, vec![record], None, caller));
            }
            Mode::Async | Mode::AsyncLocal => {
                if ctx.get_flags().contains(ContextFlags::MULTI) {
                    return Err(RedisError::Str("ERR an async trigger cannot run inside MULTI/EXEC: register it with mode 'sync'"));
                }
                let exec = Arc::new(Execution::new(reg.id.clone(), session.language, None));
                blocking::block_until_done(ctx, &exec);
                let done_exec = exec.clone();
                let queued = engine.fire_async(session, reg, vec![record], caller, Some(Box::new(move |r| {
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
