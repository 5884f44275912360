//! Sessions, packages and the connections set at run time in RDB (aux fields, also in the
//! AOF's RDB preamble), in the replication stream and the AOF (the internal commands
//! RG.SESSIONLOAD and RG.SESSIONDROP; connections travel as RG.CONFIGSET, see
//! commands/config.rs), and cleared when the server starts loading another state. Loading
//! never drops a session and is bounded in time: see `Engine::load_session`. Also the main
//! thread's share of instance purging (its cron tick).

use crate::commands::{guarded, text};
use crate::{engine, ENGINE};
use engine::SessionDef;
use redis_module::native_types::RedisType;
use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};
use std::os::raw::{c_int, c_void};

/// The format of the aux data: 1 saved packages as (language, name, code), then sessions;
/// 2 adds each package's owner; 3 starts with the connection settings set at run time
/// (count, then setting and value); 4 ends with a cluster registrations stamp (epoch and
/// origin; the epoch is read as the clock); 5 ends with the cluster registrations versions
/// instead (engine::cluster::Versions). All are read.
const AUX_FORMAT: i32 = 5;

/// The module type that carries sessions as aux data (it holds no keys).
pub static SESSIONS_TYPE: RedisType = RedisType::new(
    "rgsession",
    AUX_FORMAT,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: None,
        rdb_save: None,
        aof_rewrite: None,
        free: None,
        mem_usage: None,
        digest: None,
        aux_load: Some(aux_load),
        aux_save: Some(aux_save),
        aux_save2: None,
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as c_int,
        free_effort: None,
        unlink: None,
        copy: None,
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: None,
        unlink2: None,
    },
);

fn log_warning(msg: &str) {
    redis_module::logging::log(redis_module::logging::RedisLogLevel::Warning, msg);
}

extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, _when: c_int) {
    let _ = std::panic::catch_unwind(|| {
        let Some(engine) = ENGINE.get() else { return };
        // Format 3: connections first (recipes connect as soon as their session is back).
        // The values as set: URLs (secrets, see docs/write-behind.md) or env:/file:
        // references.
        let connections = engine.config.runtime_connections();
        raw::save_unsigned(rdb, connections.len() as u64);
        for (name, value) in connections {
            raw::save_slice(rdb, name.as_bytes());
            raw::save_slice(rdb, value.as_bytes());
        }
        // Packages first: restoring a session may import them.
        let packages: Vec<engine::Package> = engine.packages.all().into_iter().filter(|p| !p.builtin).collect();
        raw::save_unsigned(rdb, packages.len() as u64);
        for p in packages {
            raw::save_slice(rdb, p.language.as_bytes());
            raw::save_slice(rdb, p.name.as_bytes());
            raw::save_slice(rdb, p.source.as_bytes());
            // Format 2: 0 (no owner) or 1 and the owner's name.
            raw::save_unsigned(rdb, p.owner.is_some() as u64);
            if let Some(owner) = &p.owner {
                raw::save_slice(rdb, owner.as_bytes());
            }
        }
        let sessions = engine.sessions.all();
        raw::save_unsigned(rdb, sessions.len() as u64);
        for s in sessions {
            raw::save_slice(rdb, &SessionDef::of(&s).encode());
        }
        // Format 5: the versions of these registrations among the cluster's primaries.
        let versions = engine.cluster.versions.lock().encode();
        raw::save_slice(rdb, &versions);
    });
}

extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, _when: c_int) -> c_int {
    let r = std::panic::catch_unwind(|| -> Result<(), String> {
        if !(1..=AUX_FORMAT).contains(&encver) {
            return Err(format!("rg: sessions saved with format {encver}, this module reads formats 1 to {AUX_FORMAT}"));
        }
        let engine = ENGINE.get().ok_or("rg: not initialised")?;
        let text = |rdb| -> Result<String, String> {
            let b = raw::load_string_buffer(rdb).map_err(|e| e.to_string())?;
            String::from_utf8(b.as_ref().to_vec()).map_err(|_| "rg: a saved package or connection is not UTF-8".to_string())
        };
        if encver >= 3 {
            let n = raw::load_unsigned(rdb).map_err(|e| e.to_string())?;
            for _ in 0..n {
                let name = text(rdb)?;
                let value = text(rdb)?;
                // Checked again (as set at run time); the warning never quotes the value.
                if !engine::config::is_secret(&engine::config::normalize(&name)) {
                    log_warning(&format!("rg: '{name}' in the saved connections is not a connection setting; ignored"));
                } else if let Err(e) = engine.config.set(&name, &value, false) {
                    log_warning(&format!("rg: a connection setting could not be restored from RDB: {e}"));
                }
            }
        }
        let packages = raw::load_unsigned(rdb).map_err(|e| e.to_string())?;
        for _ in 0..packages {
            let (language, name, source) = (text(rdb)?, text(rdb)?, text(rdb)?);
            let owner = match encver {
                1 => None,
                _ => match raw::load_unsigned(rdb).map_err(|e| e.to_string())? {
                    0 => None,
                    _ => Some(text(rdb)?),
                },
            };
            if let Err(e) = engine.packages.load(engine::Package::new(&language, &name, source, owner), true) {
                log_warning(&format!("rg: a package could not be restored from RDB: {e}"));
            }
        }
        let n = raw::load_unsigned(rdb).map_err(|e| e.to_string())?;
        for _ in 0..n {
            let blob = raw::load_string_buffer(rdb).map_err(|e| e.to_string())?;
            match SessionDef::decode(blob.as_ref()) {
                // Kept even if it cannot be rebuilt now (listed with its error, retried).
                Ok(def) => {
                    engine.load_session(&def);
                }
                // Unreadable: one bad session must not stop the dataset from loading.
                Err(e) => log_warning(&format!("rg: a saved session could not be read from RDB: {e}")),
            }
        }
        if encver == 4 {
            let epoch = raw::load_unsigned(rdb).map_err(|e| e.to_string())?;
            let _origin = text(rdb)?;
            engine.cluster.versions.lock().see(epoch);
        }
        if encver >= 5 {
            let blob = raw::load_string_buffer(rdb).map_err(|e| e.to_string())?;
            match engine::cluster::Versions::decode(blob.as_ref()) {
                Ok(v) => *engine.cluster.versions.lock() = v,
                // The registrations themselves are loaded: they get new versions.
                Err(e) => log_warning(&format!("rg: {e}; the registrations are shared again as changed here")),
            }
        }
        Ok(())
    });
    match r {
        Ok(Ok(())) => raw::REDISMODULE_OK as c_int,
        Ok(Err(e)) => {
            log_warning(&e);
            raw::REDISMODULE_ERR as c_int
        }
        Err(_) => raw::REDISMODULE_ERR as c_int,
    }
}

extern "C" fn on_loading(_ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, sub: u64, _data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        let starts = [
            raw::REDISMODULE_SUBEVENT_LOADING_RDB_START,
            raw::REDISMODULE_SUBEVENT_LOADING_AOF_START,
            raw::REDISMODULE_SUBEVENT_LOADING_REPL_START,
        ];
        if sub == raw::REDISMODULE_SUBEVENT_LOADING_ENDED as u64 || sub == raw::REDISMODULE_SUBEVENT_LOADING_FAILED as u64 {
            if let Some(e) = ENGINE.get() {
                // Sessions not rebuilt while loading are rebuilt on workers now.
                e.end_load();
                // Stream consumers resume from their saved positions (off this thread, which
                // holds the lock they need).
                let e2 = e.clone();
                e.soon(Box::new(move || e2.kick_streams()));
            }
        }
        if starts.iter().any(|s| *s as u64 == sub) {
            // The state being loaded replaces ours, sessions included.
            if let Some(e) = ENGINE.get() {
                e.sessions.clear();
                e.packages.clear_loaded();
                *e.cluster.versions.lock() = Default::default();
                // Connections set at run time come with the state (module arguments stay).
                e.config.clear_runtime_connections();
                e.begin_load();
            }
        }
    });
}

extern "C" fn on_role_changed(_ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, sub: u64, _data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        if sub == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER as u64 {
            // A promoted replica takes over the stream consumers where the primary left them.
            if let Some(e) = ENGINE.get() {
                let e2 = e.clone();
                e.soon(Box::new(move || e2.kick_streams()));
            }
        }
    });
}

/// The main thread's cron tick (`hz` times a second): it drops its instances of sessions
/// dropped or upgraded since, and those evicted by `rg.interpreters-memory-limit` (workers
/// are told directly; this thread cannot be).
extern "C" fn on_cron(_ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, _sub: u64, _data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        if let Some(e) = ENGINE.get() {
            e.purge_thread();
        }
    });
}

/// Subscribes to loading, role changes and the cron tick.
pub fn subscribe_loading(ctx: &Context) -> bool {
    let loading = raw::RedisModuleEvent { id: raw::REDISMODULE_EVENT_LOADING as u64, dataver: 1 };
    let role = raw::RedisModuleEvent { id: raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED as u64, dataver: 1 };
    let cron = raw::RedisModuleEvent { id: raw::REDISMODULE_EVENT_CRON_LOOP as u64, dataver: 1 };
    // SAFETY: called once from the module's load function with its context.
    unsafe {
        raw::RedisModule_SubscribeToServerEvent.unwrap()(ctx.ctx, loading, Some(on_loading)) == raw::REDISMODULE_OK as c_int
            && raw::RedisModule_SubscribeToServerEvent.unwrap()(ctx.ctx, role, Some(on_role_changed)) == raw::REDISMODULE_OK as c_int
            && raw::RedisModule_SubscribeToServerEvent.unwrap()(ctx.ctx, cron, Some(on_cron)) == raw::REDISMODULE_OK as c_int
    }
}

/// RG.STREAMPOS <session> <n> <stream> <id>: a stream consumer's position (from the primary
/// or the AOF).
pub fn stream_position(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        internal_only(ctx, engine::STREAM_POSITION)?;
        if args.len() != 5 {
            return Err(RedisError::Str("ERR wrong number of arguments for RG.STREAMPOS"));
        }
        let session = text(&args[1], "the session id")?;
        let index: usize = text(&args[2], "the registration position")?.parse().map_err(|_| RedisError::Str("ERR bad registration position"))?;
        let id = engine::streams::parse_id(&text(&args[4], "the stream id")?).ok_or(RedisError::Str("ERR bad stream id"))?;
        if let Some(s) = engine().sessions.get(&session) {
            if let Some(r) = s.registrations.iter().find(|r| r.index == index) {
                r.consumers.set_position(args[3].as_slice(), id);
            }
        }
        ctx.replicate_verbatim();
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// The internal commands may come only from the primary or the AOF.
fn internal_only(ctx: &Context, name: &str) -> Result<(), RedisError> {
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING) {
        Ok(())
    } else {
        Err(RedisError::String(format!("ERR {name} is internal: only the replication stream and the AOF send it")))
    }
}

/// RG.SESSIONLOAD <definition>: installs or replaces a session (from the primary or the AOF).
pub fn session_load(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        internal_only(ctx, "RG.SESSIONLOAD")?;
        if args.len() != 2 {
            return Err(RedisError::Str("ERR wrong number of arguments for RG.SESSIONLOAD"));
        }
        let def = SessionDef::decode(args[1].as_slice()).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        // Kept even if it cannot be rebuilt now (listed with its error, retried).
        engine().load_session(&def);
        ctx.replicate_verbatim();
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// RG.SESSIONDROP <id>: drops a session (from the primary or the AOF).
pub fn session_drop(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        internal_only(ctx, "RG.SESSIONDROP")?;
        if args.len() != 2 {
            return Err(RedisError::Str("ERR wrong number of arguments for RG.SESSIONDROP"));
        }
        let id = text(&args[1], "the session id")?;
        // Already gone is fine: the result is the same.
        let _ = engine().sessions.drop_session(&id);
        ctx.replicate_verbatim();
        crate::recipes::sessions_changed();
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// RG.CLUSTERVERSIONS <versions>: the versions of the registrations shared by the
/// cluster's primaries (from the primary or the AOF), so that a promoted replica or a
/// restarted node knows which changes it has.
pub fn cluster_versions(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        internal_only(ctx, engine::cluster::VERSIONS_COMMAND)?;
        if args.len() != 2 {
            return Err(RedisError::Str("ERR wrong number of arguments for RG.CLUSTERVERSIONS"));
        }
        let v = engine::cluster::Versions::decode(args[1].as_slice()).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        *engine().cluster.versions.lock() = v;
        ctx.replicate_verbatim();
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// Sends a session's current definition to replicas and the AOF.
pub fn replicate_session(ctx: &Context, session: &engine::Session) {
    let blob = SessionDef::of(session).encode();
    ctx.replicate(engine::SESSION_LOAD, &[blob.as_slice()][..]);
}
