//! Redis glue of the recipes (write-behind, write-through): capture in keyspace events,
//! refusal of writes beyond `maxBacklog` in the command filter, and RG.WTRUN, which makes a
//! client's write to a write-through recipe wait for the target. Also what keyspace events
//! do not tell: a hash replaced by another type (the Key server event on 7.2+, a check
//! before the command on 7.0), and FLUSHALL/FLUSHDB/SWAPDB (server events; `onFlush`).

use crate::blocking::{self, Answer};
use crate::commands::guarded;
use crate::host::InPlaceHost;
use crate::{redis_host, reply};
use engine::Value;
use recipes::admission::{self, Admission};
use recipes::capture::FlushWork;
use recipes::pipeline::{Pipeline, Waiter};
use recipes::{Kind, OnFlush, Recipes};
use redis_module::{raw, Context, ContextFlags, RedisResult, RedisString, RedisValue};
use std::cell::RefCell;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What the keyspace events of one RG.WTRUN's command captured: the write-through changes
/// it must wait for, and the captures that failed (the write is then answered with an
/// error: never acknowledged without its capture).
#[derive(Default)]
struct Captures {
    write_through: Vec<WriteThroughCapture>,
    failed: Vec<String>,
}

thread_local! {
    /// The captures of the RG.WTRUN running on this thread. Redis calls the keyspace events
    /// from inside the wrapped command, so they cannot return what they captured: they
    /// report it here, between `CaptureScope::open` and `close`.
    static SCOPE: RefCell<Option<Captures>> = const { RefCell::new(None) };
}

/// The span of one wrapped command: opened before it runs, closed after, with what its
/// events captured (also closed if the command's code unwinds).
struct CaptureScope(());

impl CaptureScope {
    fn open() -> CaptureScope {
        SCOPE.with(|s| *s.borrow_mut() = Some(Captures::default()));
        CaptureScope(())
    }

    fn close(self) -> Captures {
        SCOPE.with(|s| s.borrow_mut().take()).unwrap_or_default()
    }

    /// Reports a capture to the open scope, if any: false when no RG.WTRUN is running.
    fn report(f: impl FnOnce(&mut Captures)) -> bool {
        SCOPE.with(|s| s.borrow_mut().as_mut().map(f).is_some())
    }
}

impl Drop for CaptureScope {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().take());
    }
}

/// A keyspace event on a primary: captures it for every recipe of the key.
pub fn on_event(ctx: *mut raw::RedisModuleCtx, db: u32, event: &str, key: &[u8]) {
    let Some(r) = recipes() else { return };
    r.ensure(crate::engine());
    if r.is_empty() {
        return;
    }
    if key.starts_with(recipes::change::STREAM_PREFIX.as_bytes()) {
        watch_stream(ctx, r, db, event, key);
    }
    // Events on keys no recipe captures cost no allocation.
    if r.matching(Some(db), key).is_empty() {
        return;
    }
    // A flush or swap not recorded yet comes first: its changes are older than this one.
    if !FLUSHED.lock().is_empty() {
        record_flushes(ctx);
    }
    // A hash this command replaced with another type (SET, RESTORE, a *STORE...): its row
    // is deleted. One it replaced with a hash again is read like any change.
    let event = if take_mark(db, key) {
        if key_type(&Context::new(ctx), key) != "hash" {
            "del"
        } else if recipes::capture::event_op(event).is_none() {
            "hset"
        } else {
            event
        }
    } else {
        event
    };
    let host = InPlaceHost::new(ctx, redis_host().clone());
    let locked = engine::Host::lock(&host, db);
    for (p, result) in r.on_event(&*locked, db, event, key) {
        match result {
            Ok(c) => {
                if p.spec().kind == Kind::WriteThrough {
                    CaptureScope::report(|s| s.write_through.push((p.clone(), c.stream, c.id, key.to_vec())));
                }
            }
            Err(e) => {
                engine::Host::log(&**crate::redis_host(), engine::LogLevel::Warning, &format!("rg: recipe '{}': the change of '{}' could not be captured: {e}", p.name, String::from_utf8_lossy(key)));
                let reported = CaptureScope::report(|s| s.failed.push(format!("write-behind '{}': the change of '{}' was made but could not be captured ({e}); it will not reach the target", p.name, String::from_utf8_lossy(key))));
                if !reported {
                    // Not inside RG.WTRUN: the writes that follow are refused until the
                    // recipe can capture again.
                    p.capture_failed(format!("the change of '{}' could not be captured: {e}", String::from_utf8_lossy(key)));
                }
            }
        }
    }
}

/// An event on a key named like a recipe's stream: if a command made it something other
/// than a stream (SET, RENAME or RESTORE onto it...), the recipe refuses writes from now on
/// (the filter checks `broken` before every write), until it is a stream or gone again
/// (the apply loop's survey clears it).
fn watch_stream(ctx: *mut raw::RedisModuleCtx, r: &Recipes, db: u32, event: &str, key: &[u8]) {
    if matches!(event, "xadd" | "xtrim" | "xdel" | "xsetid" | "del" | "expired" | "evicted" | "rename_from" | "move_from") || event.starts_with("xgroup") {
        return;
    }
    let owners: Vec<_> = r.all().into_iter().filter(|p| p.db() == db && recipes::change::is_stream_of(&p.name, key)).collect();
    if owners.is_empty() {
        return;
    }
    let t = key_type(&Context::new(ctx), key);
    if t == "stream" || t == "none" {
        return;
    }
    for p in owners {
        not_a_stream(&p, key, &t);
    }
}

/// Records that the recipe's stream `stream` holds a `t` instead: the recipe refuses writes
/// until it is a stream or gone again. Returns why.
fn not_a_stream(p: &Pipeline, stream: &[u8], t: &str) -> String {
    let why = format!("'{}' is not a stream (it is a {t})", String::from_utf8_lossy(stream));
    p.add_stream(stream.to_vec());
    p.capture_failed(why.clone());
    why
}

/// Set while `maxmemory` is on with an `allkeys-*` policy: Redis may then evict a recipe's
/// stream, losing changes not yet applied, so writes to recipe keys are refused.
static EVICTION_POLICY: parking_lot::RwLock<Option<String>> = parking_lot::RwLock::new(None);

/// Reads `maxmemory` and `maxmemory-policy` now and after every CONFIG SET.
/// Also subscribes to flushes, swaps and (where the server has it) the Key event.
pub fn watch_eviction_policy(ctx: &Context) -> bool {
    read_eviction_policy(ctx.ctx);
    let event = raw::RedisModuleEvent { id: raw::REDISMODULE_EVENT_CONFIG, dataver: 1 };
    // SAFETY: called once from the module's load function with its context.
    let config = unsafe { raw::RedisModule_SubscribeToServerEvent.unwrap()(ctx.ctx, event, Some(on_config_change)) == raw::REDISMODULE_OK as std::os::raw::c_int };
    config && subscribe_flushes(ctx)
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

/// Called by the command filter for every command while recipes exist (see
/// `recipes::admission::admit`, the policy), with this server's eviction policy and whether
/// it runs post-notification jobs.
pub fn filter(command: &str, args: &dyn Fn(usize) -> Option<Vec<u8>>, argc: usize, plain: &dyn Fn() -> bool) -> Admission {
    let Some(r) = recipes() else { return Admission::Pass };
    if let Some(e) = crate::ENGINE.get() {
        r.ensure(e);
    }
    let policy = EVICTION_POLICY.read();
    let server = admission::Server { eviction_policy: policy.as_deref(), post_notification_jobs: crate::triggers::has_post_notification_jobs() };
    admission::admit(r, &server, command, args, argc, plain)
}

/// Checks that the streams the keys of `argv` are captured into are streams (or do not
/// exist yet); otherwise the write is refused before it is applied.
fn check_streams(ctx: &Context, db: u32, argv: &[Vec<u8>]) -> Result<(), String> {
    let Some(r) = recipes() else { return Ok(()) };
    let command = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    let Some(indexes) = admission::key_indexes(&command, argv.len(), &|i| argv.get(i).cloned()) else { return Ok(()) };
    let cluster = r.cluster.load(std::sync::atomic::Ordering::Relaxed);
    for key in indexes.into_iter().map(|i| &argv[i]) {
        for p in r.matching(Some(db), key) {
            let stream = recipes::change::stream_key(&p.spec().name, key, cluster);
            let t = key_type(ctx, &stream);
            if t != "stream" && t != "none" {
                let why = not_a_stream(&p, &stream, &t);
                return Err(admission::cannot_capture(&p, &why));
            }
        }
    }
    Ok(())
}

/// Module calls give status replies as strings: the commands wrapped here that answer
/// `+OK` (RENAME, RESTORE, HMSET, SET, MSET, FLUSHALL...) must still answer `+OK`, not
/// `"OK"` (SET ... GET answers the old value, which may be the string "OK").
fn is_status_ok(argv: &[Vec<u8>], v: &Value) -> bool {
    let c = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    let status = match c.as_str() {
        "rename" | "restore" | "hmset" | "setex" | "psetex" | "mset" | "flushall" | "flushdb" | "swapdb" => true,
        "set" => !argv[1..].iter().any(|a| a.eq_ignore_ascii_case(b"get")),
        _ => false,
    };
    status && matches!(v, Value::String(s) if s == "OK")
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
        // Hashes the command may replace with another type (servers without the Key event).
        note_hashes(ctx.ctx, db, &argv);
        let scope = CaptureScope::open();
        // The command goes through its hook, if it has one.
        // (Hooks do not fire for commands from the primary, the AOF or scripts.)
        let no_hooks = internal || flags.contains(ContextFlags::LUA);
        // Sync triggers its events fire run after it (Redis 7.0; see `defer`).
        let result = crate::defer::around(ctx.ctx, || if internal { engine::Host::lock(&host, db).call(None, &refs).map_err(|e| e.to_string()) } else { crate::hooks::run(ctx, &argv, user.clone(), no_hooks) });
        let Captures { write_through: captured, failed } = scope.close();
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
        let answer = if is_status_ok(&argv, &value) { Answer::Ok } else { Answer::Exec(Ok(value)) };
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

/// The server reports keys deleted or overwritten (the Key event: Redis 7.2+, Valkey):
/// whatever command replaces a hash with another type, the capture sees it. Without it
/// (7.0) the commands that can do so are checked before they run (`note_hashes`).
static KEY_EVENTS: AtomicBool = AtomicBool::new(false);

/// Keys under a recipe's prefix that held a hash when the running command deleted or
/// overwrote them, as (db, key): the keyspace event that follows records a delete if the
/// key is no longer a hash. A mark no event takes is harmless (it can only turn a later
/// change of a key that is not a hash into a delete of a row that should not exist), and
/// few are kept. Used with the server locked only.
static WAS_HASH: parking_lot::Mutex<Vec<(u32, Vec<u8>)>> = parking_lot::Mutex::new(Vec::new());

fn mark(db: u32, key: &[u8]) {
    let mut m = WAS_HASH.lock();
    if m.len() >= 64 {
        m.remove(0);
    }
    m.push((db, key.to_vec()));
}

fn take_mark(db: u32, key: &[u8]) -> bool {
    let mut m = WAS_HASH.lock();
    if m.is_empty() {
        return false;
    }
    match m.iter().position(|(d, k)| *d == db && k == key) {
        Some(i) => {
            m.remove(i);
            true
        }
        None => false,
    }
}

/// Before a command runs (RG.WTRUN, or a call of the module's own on a server without the
/// Key event): marks the recipe hashes it may overwrite with another type.
pub(crate) fn note_hashes(ctx: *mut raw::RedisModuleCtx, db: u32, argv: &[Vec<u8>]) {
    note_hashes_of(ctx, db, argv.len(), &|i| argv.get(i).cloned());
}

/// `note_hashes` for a call given as borrowed arguments (the module's own calls).
pub(crate) fn note_hashes_in_call(ctx: *mut raw::RedisModuleCtx, args: &[&[u8]]) {
    if KEY_EVENTS.load(Ordering::Relaxed) || recipes().is_none_or(|r| r.is_empty()) {
        return;
    }
    // SAFETY: the context is the call's, on the thread that holds the server lock.
    let db = unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx) }.max(0) as u32;
    note_hashes_of(ctx, db, args.len(), &|i| args.get(i).map(|a| a.to_vec()));
}

fn note_hashes_of(ctx: *mut raw::RedisModuleCtx, db: u32, argc: usize, arg: &dyn Fn(usize) -> Option<Vec<u8>>) {
    if KEY_EVENTS.load(Ordering::Relaxed) || argc < 2 {
        return;
    }
    let Some(r) = recipes() else { return };
    if r.is_empty() {
        return;
    }
    let Some(command) = arg(0) else { return };
    let command = String::from_utf8_lossy(&command).to_ascii_lowercase();
    let Some(indexes) = admission::overwrite_indexes(&command, argc, arg) else { return };
    let context = Context::new(ctx);
    for key in indexes.into_iter().filter_map(arg) {
        if !r.matching(Some(db), &key).is_empty() && key_type(&context, &key) == "hash" {
            mark(db, &key);
        }
    }
}

fn subscribe_flushes(ctx: &Context) -> bool {
    let subscribe = |id: u64, callback: raw::RedisModuleEventCallback| {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        // SAFETY: called once from the module's load function with its context.
        unsafe { raw::RedisModule_SubscribeToServerEvent.unwrap()(ctx.ctx, event, callback) == raw::REDISMODULE_OK as c_int }
    };
    let flush = subscribe(raw::REDISMODULE_EVENT_FLUSHDB, Some(on_flush));
    let swap = subscribe(raw::REDISMODULE_EVENT_SWAPDB, Some(on_swap));
    // Checked at run time: 7.0 refuses the event (one librg.so for every server).
    let key_event = raw::RedisModuleEvent { id: raw::REDISMODULE_EVENT_KEY, dataver: 1 };
    // SAFETY: plain queries of the server's API, from the load function.
    let overwritten = unsafe { raw::RedisModule_IsSubEventSupported.is_some_and(|f| f(key_event, raw::REDISMODULE_SUBEVENT_KEY_OVERWRITTEN) != 0) };
    KEY_EVENTS.store(overwritten && subscribe(raw::REDISMODULE_EVENT_KEY, Some(on_key)), Ordering::Relaxed);
    flush && swap
}

/// A key is deleted or overwritten (Key event): marks it if it is a recipe's hash.
extern "C" fn on_key(ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, sub: u64, data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        if sub != raw::REDISMODULE_SUBEVENT_KEY_DELETED && sub != raw::REDISMODULE_SUBEVENT_KEY_OVERWRITTEN {
            return;
        }
        let Some(r) = recipes() else { return };
        if r.is_empty() || data.is_null() {
            return;
        }
        // SAFETY: Redis passes a RedisModuleKeyInfo whose key is open (read-only) for the
        // callback; its name string belongs to the key.
        unsafe {
            let key = (*(data as *const raw::RedisModuleKeyInfo)).key;
            if key.is_null() || raw::RedisModule_KeyType.unwrap()(key) as isize != raw::REDISMODULE_KEYTYPE_HASH {
                return;
            }
            let name = raw::RedisModule_GetKeyNameFromModuleKey.unwrap()(key);
            if name.is_null() {
                return;
            }
            let mut len = 0usize;
            let p = raw::RedisModule_StringPtrLen.unwrap()(name, &mut len);
            let bytes = std::slice::from_raw_parts(p as *const u8, len);
            let db = raw::RedisModule_GetSelectedDb.unwrap()(ctx).max(0) as u32;
            if !r.matching(Some(db), bytes).is_empty() {
                mark(db, bytes);
            }
        }
    });
}

/// A flush or swap of a recipe's database, gathered and waiting to be recorded.
struct Flushed {
    p: Arc<Pipeline>,
    /// The recipe's database.
    db: u32,
    /// After SWAPDB: the database its old data (and streams) went to.
    other: Option<u32>,
    work: FlushWork,
}

/// Flushes and swaps gathered and not recorded yet (used with the server locked only).
static FLUSHED: parking_lot::Mutex<Vec<Flushed>> = parking_lot::Mutex::new(Vec::new());

fn is_primary(ctx: *mut raw::RedisModuleCtx) -> bool {
    let flags = Context::new(ctx).get_flags();
    flags.contains(ContextFlags::MASTER) && !flags.contains(ContextFlags::LOADING)
}

/// Runs `f` with the server's commands in database `db` (the context's database is put back).
fn with_db<R>(ctx: *mut raw::RedisModuleCtx, db: u32, f: impl FnOnce(&dyn engine::LockedHost) -> R) -> R {
    // SAFETY: the server is locked by this thread (event, job or command context).
    let selected = unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx) };
    if selected != db as c_int {
        unsafe { raw::RedisModule_SelectDb.unwrap()(ctx, db as c_int) };
    }
    let host = InPlaceHost::new(ctx, redis_host().clone());
    let r = {
        let locked = engine::Host::lock(&host, db);
        f(&*locked)
    };
    if selected != db as c_int {
        unsafe { raw::RedisModule_SelectDb.unwrap()(ctx, selected) };
    }
    r
}

/// The streams of recipe `p` in database `db`: those it knows, and those the keyspace
/// holds if it has not looked yet (just after a restart or promotion).
fn recipe_streams(ctx: *mut raw::RedisModuleCtx, p: &Pipeline, db: u32) -> Vec<Vec<u8>> {
    let (mut streams, complete) = p.streams();
    if !complete {
        let prefix = format!("{}{}", recipes::change::STREAM_PREFIX, p.name);
        let found = with_db(ctx, db, |l| engine::streams::keys_with_prefix(l, prefix.as_bytes()));
        for s in found.into_iter().filter(|s| recipes::change::is_stream_of(&p.name, s)) {
            if !streams.contains(&s) {
                streams.push(s);
            }
        }
    }
    streams
}

fn gather(ctx: *mut raw::RedisModuleCtx, p: &Arc<Pipeline>, from_db: u32, other: Option<u32>) {
    let spec = p.spec();
    let delete_all = spec.on_flush == OnFlush::DeleteAll;
    let streams = recipe_streams(ctx, p, from_db);
    match with_db(ctx, from_db, |l| recipes::capture::gather(l, &spec, &streams, delete_all, other.is_some())) {
        Ok(work) if work.is_empty() => {}
        Ok(work) => FLUSHED.lock().push(Flushed { p: p.clone(), db: p.db(), other, work }),
        Err(e) => {
            let what = if other.is_some() { "SWAPDB" } else { "the flush" };
            let e = format!("{what}: {e}");
            engine::Host::log(&**redis_host(), engine::LogLevel::Warning, &format!("rg: recipe '{}': {e}", p.name));
            p.capture_failed(e);
        }
    }
}

/// FLUSHALL / FLUSHDB, before the flush: what it means for each recipe of a flushed
/// database is gathered while the data is still there, and recorded after the command.
extern "C" fn on_flush(ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, sub: u64, data: *mut c_void) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if sub != raw::REDISMODULE_SUBEVENT_FLUSHDB_START || data.is_null() || !is_primary(ctx) {
            return;
        }
        let Some(r) = recipes() else { return };
        r.ensure(crate::engine());
        if r.is_empty() {
            return;
        }
        // SAFETY: Redis passes a RedisModuleFlushInfo for this event.
        let dbnum = unsafe { (*(data as *const raw::RedisModuleFlushInfo)).dbnum };
        let before = FLUSHED.lock().len();
        for p in r.all().iter().filter(|p| dbnum < 0 || p.db() as i32 == dbnum) {
            gather(ctx, p, p.db(), None);
        }
        if FLUSHED.lock().len() > before {
            after_command(ctx);
        }
    }));
}

/// SWAPDB, after the swap: a recipe stays bound to its database number. Its streams (and
/// the hashes its rows mirror) went to the other database: what that means is gathered
/// from there now, and recorded after the command.
extern "C" fn on_swap(ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, _sub: u64, data: *mut c_void) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if data.is_null() || !is_primary(ctx) {
            return;
        }
        let Some(r) = recipes() else { return };
        r.ensure(crate::engine());
        if r.is_empty() {
            return;
        }
        // SAFETY: Redis passes a RedisModuleSwapDbInfo for this event.
        let (a, b) = unsafe {
            let info = &*(data as *const raw::RedisModuleSwapDbInfo);
            (info.dbnum_first, info.dbnum_second)
        };
        if a == b || a < 0 || b < 0 {
            return;
        }
        let before = FLUSHED.lock().len();
        for p in r.all() {
            let db = p.db() as i32;
            let other = if db == a { b } else if db == b { a } else { continue };
            gather(ctx, &p, other as u32, Some(other as u32));
        }
        if FLUSHED.lock().len() > before {
            after_command(ctx);
        }
    }));
}

/// Records the gathered flushes and swaps once the command that made them has returned,
/// so that the AOF and replicas get the records after it, in the same MULTI/EXEC: in the
/// wrapper running it (RG.WTRUN on 7.0, a module call), else as a post-notification job
/// (7.2+). Whatever changes the recipe next records them first (`on_event`).
fn after_command(ctx: *mut raw::RedisModuleCtx) {
    let f: crate::defer::Then = Box::new(|ctx| {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| record_flushes(ctx)));
    });
    if crate::defer::then(f).is_ok() || !crate::triggers::has_post_notification_jobs() {
        return;
    }
    // SAFETY: the server is locked (inside the command); no private data to free.
    unsafe { raw::RedisModule_AddPostNotificationJob.unwrap()(ctx, Some(run_record_job), std::ptr::null_mut(), None) };
}

extern "C" fn run_record_job(ctx: *mut raw::RedisModuleCtx, _pd: *mut c_void) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| record_flushes(ctx)));
}

/// Records every flush and swap gathered so far, in order, into the recipes' streams.
fn record_flushes(ctx: *mut raw::RedisModuleCtx) {
    let pending = std::mem::take(&mut *FLUSHED.lock());
    if pending.is_empty() || !is_primary(ctx) {
        return;
    }
    let cluster = recipes().is_some_and(|r| r.cluster.load(Ordering::Relaxed));
    for f in pending {
        let spec = f.p.spec();
        let mut errors = match f.other {
            Some(other) if !f.work.stale_streams.is_empty() => with_db(ctx, other, |l| recipes::capture::drop_streams(l, &f.work.stale_streams)),
            _ => Vec::new(),
        };
        let done = with_db(ctx, f.db, |l| recipes::capture::record_work(l, &spec, &f.work, cluster));
        for c in &done.captured {
            f.p.captured(&c.stream);
        }
        for s in done.streams {
            f.p.add_stream(s);
        }
        errors.extend(done.errors);
        for e in errors {
            engine::Host::log(&**redis_host(), engine::LogLevel::Warning, &format!("rg: recipe '{}': recording a flush or swap: {e}", f.p.name));
            f.p.capture_failed(e);
        }
        f.p.notify();
    }
}
