//! Redis glue of the recipes (write-behind, write-through): capture in keyspace events,
//! refusal of writes beyond `maxBacklog` in the command filter, and RG.WTRUN, which makes a
//! client's write to a write-through recipe wait for the target.

use crate::blocking::{self, Answer};
use crate::commands::guarded;
use crate::host::InPlaceHost;
use crate::{redis_host, reply};
use engine::Value;
use recipes::pipeline::Waiter;
use recipes::{Kind, Recipes};
use redis_module::{raw, Context, ContextFlags, RedisResult, RedisString, RedisValue};
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static RECIPES: OnceLock<Arc<Recipes>> = OnceLock::new();

pub fn recipes() -> Option<&'static Arc<Recipes>> {
    RECIPES.get()
}

pub fn init(ctx: &Context, engine: &Arc<engine::Engine>) {
    let r = Arc::new(Recipes::default());
    r.cluster.store(ctx.get_flags().contains(ContextFlags::CLUSTER), std::sync::atomic::Ordering::Relaxed);
    let _ = RECIPES.set(r.clone());
    let _ = engine.recipes.set(r);
}

/// The sessions changed from a command (drop, unregister): the recipes follow, off the
/// main thread (following takes the data lock).
pub fn sessions_changed() {
    let Some(r) = recipes().cloned() else { return };
    let e = crate::engine().clone();
    crate::engine().soon(Box::new(move || engine::RecipeHooks::sessions_changed(&*r, &e)));
}

/// A change captured for a write-through recipe: its pipeline, stream, id and key.
type WriteThroughCapture = (Arc<recipes::pipeline::Pipeline>, Vec<u8>, String, Vec<u8>);

thread_local! {
    /// Changes captured for write-through recipes during the current RG.WTRUN.
    static CAPTURED: RefCell<Option<Vec<WriteThroughCapture>>> = const { RefCell::new(None) };
    /// Captures that failed during the current RG.WTRUN.
    static FAILED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// A keyspace event on a primary: captures it for every recipe of the key.
pub fn on_event(ctx: *mut raw::RedisModuleCtx, db: u32, event: &str, key: &[u8]) {
    let Some(r) = recipes() else { return };
    r.ensure(crate::engine());
    // Events on keys no recipe captures cost no allocation.
    if r.is_empty() || r.matching(Some(db), key).is_empty() {
        return;
    }
    let host = InPlaceHost::new(ctx, redis_host().clone());
    let locked = engine::Host::lock(&host, db);
    for (p, result) in r.on_event(&*locked, db, event, key) {
        match result {
            Ok(c) => CAPTURED.with(|cap| {
                if let Some(list) = cap.borrow_mut().as_mut() {
                    if p.spec().kind == Kind::WriteThrough {
                        list.push((p.clone(), c.stream, c.id, key.to_vec()));
                    }
                }
            }),
            Err(e) => {
                engine::Host::log(&**crate::redis_host(), engine::LogLevel::Warning, &format!("rg: recipe '{}': the change of '{}' could not be captured: {e}", p.name, String::from_utf8_lossy(key)));
                FAILED.with(|f| {
                    if let Some(list) = f.borrow_mut().as_mut() {
                        list.push(format!("write-behind '{}': the change of '{}' was made but could not be captured ({e}); it will not reach the target", p.name, String::from_utf8_lossy(key)));
                    }
                });
            }
        }
    }
}

/// The argument indexes of the keys of a write command that recipes capture (None for
/// other commands), given its argument count.
fn key_indexes(command: &str, argc: usize) -> Option<Vec<usize>> {
    let positions: &[usize] = match command {
        "hset" | "hsetnx" | "hmset" | "hincrby" | "hincrbyfloat" | "hdel" | "hexpire" | "hpexpire" | "hexpireat" | "hpexpireat" | "hpersist" | "hgetdel" | "hgetex" | "hsetex" | "expire" | "pexpire" | "expireat" | "pexpireat" | "persist" | "restore" | "move" => &[1],
        "rename" | "renamenx" | "copy" => &[1, 2],
        // Every argument is a key.
        "del" | "unlink" => return Some((1..argc).collect()),
        _ => return None,
    };
    Some(positions.iter().copied().filter(|&i| i < argc).collect())
}

/// The error of a write refused because its changes cannot be captured.
fn cannot_capture(p: &recipes::pipeline::Pipeline, why: &str) -> String {
    format!(
        "ERR write-behind '{}' cannot capture changes: {why}; writes to keys under '{}' are refused so that none is acknowledged without being captured",
        p.name,
        String::from_utf8_lossy(&p.spec().prefix)
    )
}

/// Set while `maxmemory` is on with an `allkeys-*` policy: Redis may then evict a recipe's
/// stream, losing changes not yet applied, so writes to recipe keys are refused.
static EVICTION_POLICY: parking_lot::RwLock<Option<String>> = parking_lot::RwLock::new(None);

/// Reads `maxmemory` and `maxmemory-policy` now and after every CONFIG SET.
pub fn watch_eviction_policy(ctx: &Context) -> bool {
    read_eviction_policy(ctx.ctx);
    let event = raw::RedisModuleEvent { id: raw::REDISMODULE_EVENT_CONFIG, dataver: 1 };
    // SAFETY: called once from the module's load function with its context.
    unsafe { raw::RedisModule_SubscribeToServerEvent.unwrap()(ctx.ctx, event, Some(on_config_change)) == raw::REDISMODULE_OK as std::os::raw::c_int }
}

extern "C" fn on_config_change(ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, _sub: u64, _data: *mut std::os::raw::c_void) {
    let _ = std::panic::catch_unwind(|| read_eviction_policy(ctx));
}

fn read_eviction_policy(ctx: *mut raw::RedisModuleCtx) {
    let ctx = Context::new(ctx);
    let options = redis_module::CallOptionsBuilder::new().errors_as_replies().resp(redis_module::CallOptionResp::Resp3).build();
    let get = |name: &str| -> Option<String> {
        let r: redis_module::CallResult = ctx.call_ext("CONFIG", &options, &["GET", name]);
        let v = match crate::reply::from_call(&r).ok()? {
            Value::Map(m) => m.into_iter().next().map(|(_, v)| v)?,
            Value::Array(a) => a.into_iter().nth(1)?,
            _ => return None,
        };
        v.as_bytes().map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let maxmemory: u64 = get("maxmemory").and_then(|v| v.parse().ok()).unwrap_or(0);
    let policy = get("maxmemory-policy").unwrap_or_default();
    *EVICTION_POLICY.write() = (maxmemory > 0 && policy.starts_with("allkeys-")).then_some(policy);
}

pub const REFUSE: &str = "rg.refuse";
pub const WT_RUN: &str = "rg.wtrun";

/// What the command filter does with a command: refuse it (the message), run it as
/// RG.WTRUN (a write to a recipe's keys), or leave it.
pub enum Filtered {
    Refuse(String),
    Wrap,
    Pass,
}

/// Called by the command filter for every command while recipes exist.
pub fn filter(command: &str, args: &dyn Fn(usize) -> Option<Vec<u8>>, argc: usize) -> Filtered {
    let Some(r) = recipes() else { return Filtered::Pass };
    if let Some(e) = crate::ENGINE.get() {
        r.ensure(e);
    }
    if r.is_empty() {
        return Filtered::Pass;
    }
    let Some(indexes) = key_indexes(command, argc) else { return Filtered::Pass };
    let mut wrap = false;
    for key in indexes.into_iter().filter_map(args) {
        // The filter does not know the client's database: a recipe of any database counts.
        for p in r.matching(None, &key) {
            if !p.primary.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let spec = p.spec();
            if let Some(why) = p.broken() {
                return Filtered::Refuse(cannot_capture(&p, &why));
            }
            if let Some(policy) = EVICTION_POLICY.read().as_deref() {
                let why = format!("maxmemory-policy is {policy}, under which Redis may evict its stream and lose changes not yet applied (use noeviction or a volatile-* policy)");
                return Filtered::Refuse(cannot_capture(&p, &why));
            }
            let backlog = p.backlog.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64;
            if spec.max_backlog > 0 && backlog >= spec.max_backlog {
                return Filtered::Refuse(format!(
                    "ERR write-behind '{}' has {backlog} changes not yet applied to its target (maxBacklog {}): writes to keys under '{}' are refused until it drains",
                    p.name,
                    spec.max_backlog,
                    String::from_utf8_lossy(&spec.prefix)
                ));
            }
            wrap = true;
        }
    }
    if wrap {
        Filtered::Wrap
    } else {
        Filtered::Pass
    }
}

/// Checks that the streams the keys of `argv` are captured into are streams (or do not
/// exist yet); otherwise the write is refused before it is applied.
fn check_streams(ctx: &Context, db: u32, argv: &[Vec<u8>]) -> Result<(), String> {
    let Some(r) = recipes() else { return Ok(()) };
    let command = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    let Some(indexes) = key_indexes(&command, argv.len()) else { return Ok(()) };
    let cluster = r.cluster.load(std::sync::atomic::Ordering::Relaxed);
    for key in indexes.into_iter().map(|i| &argv[i]) {
        for p in r.matching(Some(db), key) {
            let stream = recipes::change::stream_key(&p.spec().name, key, cluster);
            let t = key_type(ctx, &stream);
            if t != "stream" && t != "none" {
                let why = format!("'{}' is not a stream (it is a {t})", String::from_utf8_lossy(&stream));
                p.add_stream(stream);
                p.capture_failed(why.clone());
                return Err(cannot_capture(&p, &why));
            }
        }
    }
    Ok(())
}

/// Module calls give status replies as strings: the commands wrapped here that answer
/// `+OK` (RENAME, RESTORE, HMSET) must still answer `+OK`, not `"OK"`.
fn is_status_ok(command: &[u8], v: &Value) -> bool {
    let c = String::from_utf8_lossy(command).to_ascii_lowercase();
    matches!(c.as_str(), "rename" | "restore" | "hmset") && matches!(v, Value::String(s) if s == "OK")
}

/// The type of `key` in the context's database, by the key API (no command dispatch).
fn key_type(ctx: &Context, key: &[u8]) -> String {
    // SAFETY: main thread inside a command; the string is freed before returning.
    unsafe {
        let s = raw::RedisModule_CreateString.unwrap()(ctx.ctx, key.as_ptr() as *const std::os::raw::c_char, key.len());
        let t = crate::triggers::key_type(ctx.ctx, s);
        raw::RedisModule_FreeString.unwrap()(ctx.ctx, s);
        t
    }
}

/// RG.REFUSE <message>: what a refused write becomes.
pub fn refuse(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let msg = args.get(1).map(|a| a.to_string_lossy()).unwrap_or_else(|| "ERR refused".into());
        reply::error(ctx, &msg);
        Ok(RedisValue::NoReply)
    })
}

/// A blocked write-through client: the changes it still waits for, the first error, how to
/// unblock it, and the command's own reply.
struct Pending {
    left: usize,
    error: Option<String>,
    unblock: Option<Box<dyn FnOnce(Answer) + Send>>,
    answer: Option<Answer>,
}

/// RG.WTRUN <command> [arg ...]: what a write to a recipe's keys becomes. It checks first
/// that the change can be captured (else the write is refused, not applied), runs the
/// command (through its hook, if any), and replies with an error if a capture failed all
/// the same, so that no write is acknowledged without its capture. For a write-through
/// recipe it replies once the target has committed the change, or with an error after
/// `timeoutMs` (the change stays captured and is applied later); inside MULTI/EXEC or a
/// script the client cannot wait, and the write replies at once, as with write-behind.
pub fn wt_run(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let argv: Vec<Vec<u8>> = args.iter().skip(1).map(|a| a.as_slice().to_vec()).collect();
        if let Err(e) = crate::hooks::check_wrapped(ctx, WT_RUN, &argv) {
            reply::error(ctx, &e);
            return Ok(RedisValue::NoReply);
        }
        let user = match crate::hooks::caller(ctx, WT_RUN) {
            Ok(u) => u,
            Err(e) => {
                reply::error(ctx, &e);
                return Ok(RedisValue::NoReply);
            }
        };
        let flags = ctx.get_flags();
        let internal = flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING);
        let can_wait = !internal && !flags.contains(ContextFlags::MULTI) && !flags.contains(ContextFlags::LUA) && !flags.contains(ContextFlags::DENY_BLOCKING);
        let host = InPlaceHost::new(ctx.ctx, redis_host().clone());
        let refs: Vec<&[u8]> = argv.iter().map(|a| a.as_slice()).collect();
        // SAFETY: the context's database is the client's.
        let db = unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx.ctx) }.max(0) as u32;
        // Before the write: every stream it will be captured into must be able to take it.
        if !internal {
            if let Err(e) = check_streams(ctx, db, &argv) {
                reply::error(ctx, &e);
                return Ok(RedisValue::NoReply);
            }
        }
        CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
        FAILED.with(|c| *c.borrow_mut() = Some(Vec::new()));
        // The command goes through its hook, if it has one.
        // (Hooks do not fire for commands from the primary, the AOF or scripts.)
        let no_hooks = internal || flags.contains(ContextFlags::LUA);
        // Sync triggers its events fire run after it (Redis 7.0; see `defer`).
        let result = crate::defer::around(ctx.ctx, || if internal { engine::Host::lock(&host, db).call(None, &refs).map_err(|e| e.to_string()) } else { crate::hooks::run(ctx, &argv, user.clone(), no_hooks) });
        let captured = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
        let failed = FAILED.with(|c| c.borrow_mut().take()).unwrap_or_default();
        if !failed.is_empty() {
            // Never acknowledged without its capture.
            reply::error(ctx, &format!("ERR {}", failed.join("; ")));
            return Ok(RedisValue::NoReply);
        }
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                reply::error(ctx, &e);
                return Ok(RedisValue::NoReply);
            }
        };
        let answer = if is_status_ok(&argv[0], &value) { Answer::Ok } else { Answer::Exec(Ok(value)) };
        let waits = !captured.is_empty() && can_wait && !matches!(answer, Answer::Exec(Ok(Value::Error(_))));
        if !waits {
            blocking::send(ctx, &answer);
            return Ok(RedisValue::NoReply);
        }
        // Wait for every change the write captured; reply with the command's own reply.
        let pending = Arc::new(parking_lot::Mutex::new(Pending { left: captured.len(), error: None, unblock: Some(blocking::block_client(ctx)), answer: Some(answer) }));
        for (p, stream, id, key) in captured {
            let id = engine::streams::parse_id(&id).unwrap_or((u64::MAX, 0));
            let pending = pending.clone();
            let timeout = Duration::from_millis(p.spec().timeout_ms);
            p.wait_for(Waiter {
                stream,
                key,
                id,
                deadline: Instant::now() + timeout,
                done: Box::new(move |r| {
                    let mut g = pending.lock();
                    g.left -= 1;
                    if let Err(e) = r {
                        g.error.get_or_insert(e);
                    }
                    if g.left == 0 {
                        let answer = match g.error.take() {
                            Some(e) => Answer::Exec(Err(format!("ERR {e}"))),
                            None => g.answer.take().unwrap_or(Answer::Ok),
                        };
                        if let Some(unblock) = g.unblock.take() {
                            unblock(answer);
                        }
                    }
                }),
            });
        }
        Ok(RedisValue::NoReply)
    })
}
