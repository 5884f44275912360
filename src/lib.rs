//! The `rg` Redis module: Redis glue only. Commands parse their arguments, call the
//! engine and reply; all logic lives in the `engine`, `stdlib` and language crates.

mod acl;
mod blocking;
mod clients;
mod cluster;
mod commands;
mod commands_info;
mod defer;
mod hooks;
mod host;
mod info;
mod persistence;
mod recipes;
mod reply;
mod triggers;

use engine::{Config, Engine};
use persistence::SESSIONS_TYPE;
use redis_module::{raw, redis_module, Context, InfoContext, RedisResult, RedisString, Status};
use std::sync::{Arc, OnceLock};

static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
static REDIS_HOST: OnceLock<Arc<host::RedisHost>> = OnceLock::new();

/// The Module API host (also used to build in-place hosts for sync triggers).
pub(crate) fn redis_host() -> &'static Arc<host::RedisHost> {
    REDIS_HOST.get().expect("rg module initialised")
}

/// The engine, once the module is loaded.
pub(crate) fn engine() -> &'static Arc<Engine> {
    ENGINE.get().expect("rg module initialised")
}

/// A 40-hex-character id for a standalone server (a cluster node uses its node id).
fn new_shard_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < 40 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(40);
    out
}

/// The oldest server the module runs on: it calls Module APIs that Redis 7.0 added
/// (script-mode calls, ACL checks, command filters' client ids, config events).
const MIN_SERVER_VERSION: (u32, u32) = (7, 0);

/// The server's version as (major, minor, patch), read at run time.
pub(crate) fn server_version() -> (u32, u32, u32) {
    // SAFETY: a plain query of the server, available since 6.0.9; absent before.
    let v = unsafe { raw::RedisModule_GetServerVersion.map(|f| f()).unwrap_or(0) } as u32;
    ((v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)
}

/// Panics are caught at every entry point and reported as errors; the message goes to the
/// Redis log, not to the server's stderr (no Rust backtrace on the console).
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        redis_module::logging::log(redis_module::logging::RedisLogLevel::Warning, &format!("rg: internal error (caught): {msg}{at}"));
    }));
}

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| init_module(ctx, args))) {
        Ok(s) => s,
        Err(_) => {
            ctx.log_warning("rg: internal error while loading the module; it is not loaded");
            Status::Err
        }
    }
}

fn init_module(ctx: &Context, args: &[RedisString]) -> Status {
    let (major, minor, patch) = server_version();
    if (major, minor) < MIN_SERVER_VERSION {
        ctx.log_warning(&format!(
            "rg: this server is {major}.{minor}.{patch}; the module needs Redis {}.{} or newer (or a compatible server such as Valkey 7.2+)",
            MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
        ));
        return Status::Err;
    }
    quiet_panics();
    let config = Arc::new(Config::default());
    if args.len() % 2 != 0 {
        ctx.log_warning("rg: module arguments must be pairs of <setting> <value>, e.g. 'script-timeout 1000'");
        return Status::Err;
    }
    for pair in args.chunks(2) {
        let (name, value) = (pair[0].to_string_lossy(), pair[1].to_string_lossy());
        if let Err(e) = config.set(&name, &value, true) {
            ctx.log_warning(&format!("rg: bad module argument: {e}"));
            return Status::Err;
        }
    }
    // clusterInit runs before modules load: the node id is known here.
    let host = Arc::new(host::RedisHost::new(cluster::my_id().unwrap_or_else(new_shard_id)));
    let _ = REDIS_HOST.set(host.clone());
    let languages: Vec<Arc<dyn engine::Language>> = vec![Arc::new(lang_lua::LuaLanguage), Arc::new(lang_js::Js)];
    let engine = Engine::new(host, config, languages, Arc::new(stdlib::Stdlib::default()));
    // Other shards ask for this one's executions and registrations (cluster-wide views).
    engine.cluster.set_query_handler(Box::new(commands::cluster_views::answer));
    recipes::init(ctx, &engine);
    if ENGINE.set(engine).is_err() {
        ctx.log_warning("rg: the module is already loaded");
        return Status::Err;
    }
    if !persistence::subscribe_loading(ctx) {
        ctx.log_warning("rg: could not subscribe to loading events");
        return Status::Err;
    }
    if !hooks::register_filter(ctx) {
        ctx.log_warning("rg: could not register the command filter of hooks");
        return Status::Err;
    }
    if !triggers::subscribe(ctx) {
        ctx.log_warning("rg: could not subscribe to keyspace events");
        return Status::Err;
    }
    commands_info::load(ctx);
    if cluster::enabled(ctx) {
        // Registrations digests flow between primaries from now on.
        crate::engine().cluster.start();
    }
    if !cluster::init(ctx) {
        ctx.log_warning("rg: could not listen on the cluster bus");
        return Status::Err;
    }
    if !recipes::watch_eviction_policy(ctx) {
        ctx.log_warning("rg: could not subscribe to configuration changes");
        return Status::Err;
    }
    Status::Ok
}

/// `INFO rg`, with a panic kept from crossing into Redis.
fn info_guarded(ctx: &InfoContext, for_crash_report: bool) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| info::rg_info(ctx, for_crash_report))).is_err() {
        redis_module::logging::log(redis_module::logging::RedisLogLevel::Warning, "rg: internal error while building INFO rg");
    }
}

/// MODULE UNLOAD is refused: worker threads and blocked clients hold pointers into the
/// module's code for as long as the server runs.
fn deinit(ctx: &Context) -> Status {
    ctx.log_warning("rg: the module cannot be unloaded; restart the server without it instead");
    Status::Err
}

redis_module! {
    name: "rg",
    version: 1,
    allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
    data_types: [SESSIONS_TYPE],
    init: init,
    deinit: deinit,
    info: info_guarded,
    commands: [
        ["rg.exec", commands::exec::rg_exec, "write deny-oom deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.getexecution", commands::executions::get_execution, "readonly deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.dumpexecutions", commands::executions::dump_executions, "readonly deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.getresults", commands::executions::get_results, "readonly deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.getresultsblocking", commands::executions::get_results_blocking, "readonly deny-script", 0, 0, 0, "", "scripting slow blocking"],
        ["rg.dropexecution", commands::executions::drop_execution, "write deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.abortexecution", commands::executions::abort_execution, "write deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.configget", commands::config::config_get, "readonly deny-script", 0, 0, 0, "", "admin slow dangerous"],
        // may-replicate: connection settings are replicated (CLIENT PAUSE WRITE must hold it).
        ["rg.configset", commands::config::config_set, "admin may-replicate deny-script", 0, 0, 0, "", "admin slow dangerous"],
        ["rg.trigger", triggers::rg_trigger, "write deny-oom deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.triggeronkey", triggers::rg_trigger_on_key, "write deny-oom deny-script", 2, 2, 1, "", "scripting slow"],
        // Not flagged `write`: LIST must answer on replicas; LOAD/DELETE check for themselves.
        ["rg.package", commands::packages::rg_package, "deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.dumpregistrations", commands::registrations::dump_registrations, "readonly deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.unregister", commands::registrations::unregister, "write deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.pauseregistrations", commands::registrations::pause, "write deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.unpauseregistrations", commands::registrations::unpause, "write deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.clearregistrationsstats", commands::registrations::clear_stats, "write deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.dumpsessions", commands::registrations::dump_sessions, "readonly deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.dropsession", commands::registrations::drop_session, "write deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.infocluster", commands::cluster::info_cluster, "readonly deny-script", 0, 0, 0, "", "scripting slow"],
        ["rg.refreshcluster", commands::cluster::refresh_cluster, "readonly deny-script", 0, 0, 0, "", "scripting slow"],
        // PREVIEW and WAIT block the client (never the server); WAIT is refused in MULTI.
        ["rg.recipe", commands::recipe::rg_recipe, "readonly deny-script", 0, 0, 0, "", "scripting slow blocking"],
        ["rg.sessionload", persistence::session_load, "write deny-script", 0, 0, 0, "", "admin dangerous"],
        ["rg.sessiondrop", persistence::session_drop, "write deny-script", 0, 0, 0, "", "admin dangerous"],
        ["rg.streampos", persistence::stream_position, "write deny-script", 0, 0, 0, "", "admin dangerous"],
        ["rg.clusterversions", persistence::cluster_versions, "write deny-script", 0, 0, 0, "", "admin dangerous"],
        // What hooked commands become. A module command's flags are fixed, so there is one
        // per kind of hooked command: the command filter picks the one whose flags match the
        // original's (write: CLIENT PAUSE WRITE, READONLY replicas; may-replicate), so the
        // hook keeps the original's behaviour. deny-oom is checked on the original itself.
        ["rg.hookrun", hooks::hook_run, "", 0, 0, 0, ""],
        ["rg.hookrun.write", hooks::hook_run, "write", 0, 0, 0, ""],
        ["rg.hookrun.mayreplicate", hooks::hook_run, "may-replicate", 0, 0, 0, ""],
        // What writes become when the command filter refuses them (maxBacklog) or makes
        // them wait for a write-through target.
        // In @write where the server can say so (7.2+), so that users allowed to write
        // may also get what their writes become.
        ["rg.refuse", recipes::refuse, "", 0, 0, 0, "", "write"],
        // `write`: every command it wraps writes (CLIENT PAUSE WRITE and READONLY replicas
        // apply); deny-oom is checked on the wrapped command itself, so DEL still frees
        // memory under maxmemory.
        ["rg.wtrun", recipes::wt_run, "write", 0, 0, 0, "", "write"],
    ],
}
