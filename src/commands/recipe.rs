//! RG.RECIPE: tools for a running recipe (write-behind, write-through).
//!
//! - `RG.RECIPE PREVIEW <name> <key>`: what the recipe would write for the key now (row,
//!   statements with their parameters, conversion errors), without writing anything.
//! - `RG.RECIPE WAIT <name> [timeoutMs]`: blocks the client until every change captured
//!   before the call has been committed to the target (or dead-lettered), or answers at the
//!   timeout with the number still pending.
//!
//! Both need the caller to own the recipe's session or be an admin; PREVIEW also needs the
//! permission to run `HGETALL <key>`.

use super::{guarded, replied, text};
use crate::blocking::{self, Answer};
use crate::host::InPlaceHost;
use crate::{acl, engine, redis_host, reply};
use engine::streams::{parse_id, StreamId};
use engine::{Host, Session, Trigger, Value};
use recipes::convert::{format_timestamp, Cell};
use recipes::pipeline::{Pipeline, Waiter};
use recipes::preview::{change_of, preview as run_preview, type_name, Preview};
use recipes::Op;
use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult, RedisString};
use std::collections::HashMap;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "RG.RECIPE PREVIEW <name> <key> | RG.RECIPE WAIT <name> [timeoutMs]";

/// RG.RECIPE <subcommand> ...
pub fn rg_recipe(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let sub = match args.get(1) {
            Some(a) => text(a, "the subcommand")?.to_ascii_uppercase(),
            None => return Err(RedisError::String(format!("ERR wrong number of arguments; usage: {USAGE}"))),
        };
        match sub.as_str() {
            "PREVIEW" => preview(ctx, &args),
            "WAIT" => wait(ctx, &args),
            other => Err(RedisError::String(format!("ERR unknown subcommand '{other}'; usage: {USAGE}"))),
        }
    })
}

/// Refuses a client that cannot be blocked: inside MULTI/EXEC, a script, a module's call.
fn can_block(ctx: &Context, command: &str, why: &str) -> Result<(), RedisError> {
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::MULTI) {
        return Err(RedisError::String(format!("ERR {command} cannot be used inside MULTI/EXEC: {why}, and a transaction cannot wait")));
    }
    if flags.contains(ContextFlags::LUA) || flags.contains(ContextFlags::DENY_BLOCKING) {
        return Err(RedisError::String(format!("ERR {command} cannot be used from a script or a module's call: {why}, and such a caller cannot wait")));
    }
    Ok(())
}

/// The recipe `name` on this server: its session and pipeline.
fn find(name: &str) -> Result<(Arc<Session>, Arc<Pipeline>), RedisError> {
    let none = || RedisError::String(format!("ERR no recipe '{name}'"));
    let r = crate::recipes::recipes().ok_or_else(none)?;
    r.ensure(engine());
    let session = engine()
        .sessions
        .recipes()
        .into_iter()
        .find(|(_, reg)| matches!(&reg.spec.trigger, Trigger::Recipe { name: n, .. } if n == name))
        .map(|(s, _)| s)
        .ok_or_else(none)?;
    let pipeline = r.get(name).ok_or_else(none)?;
    Ok((session, pipeline))
}

/// Runs `f` with the context's database switched to `db` (the recipe's), then back.
fn in_db<R>(ctx: *mut raw::RedisModuleCtx, db: u32, f: impl FnOnce() -> R) -> R {
    struct Back(*mut raw::RedisModuleCtx, c_int);
    impl Drop for Back {
        fn drop(&mut self) {
            // SAFETY: the same live context, on the main thread.
            unsafe { raw::RedisModule_SelectDb.unwrap()(self.0, self.1) };
        }
    }
    // SAFETY: main thread, inside a command or blocked-client callback with its context.
    let current = unsafe { raw::RedisModule_GetSelectedDb.unwrap()(ctx) };
    if current == db as c_int {
        return f();
    }
    unsafe { raw::RedisModule_SelectDb.unwrap()(ctx, db as c_int) };
    let _back = Back(ctx, current);
    f()
}

/// Runs one command in place (the context's database), as the module (no user).
fn call(ctx: *mut raw::RedisModuleCtx, args: &[&[u8]]) -> Result<Value, String> {
    let host = InPlaceHost::new(ctx, redis_host().clone());
    let locked = host.lock(0);
    match locked.call(None, args) {
        Ok(Value::Error(e)) => Err(e),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// PREVIEW

/// Previews running at once (each holds a thread and a connection to a target).
static PREVIEWS: AtomicUsize = AtomicUsize::new(0);
const MAX_PREVIEWS: usize = 16;

fn describe_keys(p: &Pipeline) -> String {
    let spec = p.spec();
    let mut s = format!("prefix '{}'", String::from_utf8_lossy(&spec.prefix));
    if let Some((a, b)) = &spec.key_pattern {
        s.push_str(&format!(", keyPattern '{}*{}'", String::from_utf8_lossy(a), String::from_utf8_lossy(b)));
    }
    s
}

/// A hash's fields and values.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// RG.RECIPE PREVIEW <name> <key>
fn preview(ctx: &Context, args: &[RedisString]) -> RedisResult {
    if args.len() != 4 {
        return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.RECIPE PREVIEW <name> <key>"));
    }
    let name = text(&args[2], "the recipe name")?;
    let key = args[3].as_slice().to_vec();
    can_block(ctx, "RG.RECIPE PREVIEW", "it blocks the client while it reads the target's table")?;
    let caller = acl::require(ctx, "RG.RECIPE PREVIEW", &[b"HGETALL", &key], 1)?;
    let (session, pipeline) = find(&name)?;
    acl::require_owner(&caller, "session", &session.id, session.user.as_deref())?;
    let spec = pipeline.spec();
    let key_text = String::from_utf8_lossy(&key).into_owned();
    if spec.primary_key(&key).is_none() {
        return Err(RedisError::String(format!("ERR key '{key_text}' is not one of recipe '{name}''s keys ({})", describe_keys(&pipeline))));
    }
    // The hash as a capture would read it now, in the recipe's database.
    let read = in_db(ctx.ctx, pipeline.db(), || -> Result<Option<Fields>, String> {
        match call(ctx.ctx, &[b"HGETALL", &key]) {
            Ok(Value::Map(m)) if m.is_empty() => Ok(None),
            Ok(Value::Map(m)) => Ok(Some(m.into_iter().filter_map(|(k, v)| Some((k.as_bytes()?.into_owned(), v.as_bytes()?.into_owned()))).collect())),
            Ok(Value::Array(a)) if a.is_empty() => Ok(None),
            Ok(Value::Array(a)) => Ok(Some(a.chunks(2).filter_map(|p| Some((p.first()?.as_bytes()?.into_owned(), p.get(1)?.as_bytes()?.into_owned()))).collect())),
            Ok(other) => Err(format!("HGETALL answered {}", other.type_name())),
            Err(e) if e.starts_with("WRONGTYPE") => {
                let t = call(ctx.ctx, &[b"TYPE", &key]).ok().and_then(|v| v.as_str_lossy()).unwrap_or_else(|| "other type".into());
                Err(format!("key '{key_text}' holds a {t}, not a hash: recipe '{name}' writes only hashes"))
            }
            Err(e) => Err(e),
        }
    })
    .map_err(|e| RedisError::String(format!("ERR {e}")))?;
    let change = change_of(&spec, &key, read);
    if PREVIEWS.fetch_add(1, Ordering::SeqCst) >= MAX_PREVIEWS {
        PREVIEWS.fetch_sub(1, Ordering::SeqCst);
        return Err(RedisError::String(format!("ERR {MAX_PREVIEWS} RG.RECIPE PREVIEW commands are running already; try again")));
    }
    // The target is asked off the main thread; the client waits, the server does not.
    let unblock = Arc::new(parking_lot::Mutex::new(Some(blocking::block_client(ctx))));
    let slot = unblock.clone();
    let config = engine().config.clone();
    let spawned = std::thread::Builder::new().name("rg-preview".into()).spawn(move || {
        let conn = &spec.target.connection;
        let url = config
            .connection(conn)
            .ok_or_else(|| format!("no connection '{conn}'"))
            .and_then(|v| engine::config::resolve(&v).map_err(|e| format!("connection '{conn}': {e}")));
        let p = run_preview(&spec, url, &change);
        let value = render(&name, &key, &p);
        PREVIEWS.fetch_sub(1, Ordering::SeqCst);
        if let Some(u) = slot.lock().take() {
            u(Answer::Exec(Ok(value)));
        }
    });
    if let Err(e) = spawned {
        PREVIEWS.fetch_sub(1, Ordering::SeqCst);
        if let Some(u) = unblock.lock().take() {
            u(Answer::Exec(Err(format!("ERR RG.RECIPE PREVIEW could not start its thread: {e}"))));
        }
    }
    replied()
}

fn cell(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Nil,
        Cell::Int(i) => Value::Int(*i),
        Cell::Float(f) => Value::Double(*f),
        Cell::Bool(b) => Value::Bool(*b),
        Cell::Timestamp(us) => Value::String(format_timestamp(*us)),
        Cell::Text(s) => Value::String(s.clone()),
        Cell::Bytes(b) => Value::Bytes(b.clone()),
    }
}

fn kv(k: &str, v: Value) -> (Value, Value) {
    (Value::str(k), v)
}

/// The reply of PREVIEW (see docs/write-behind.md).
fn render(name: &str, key: &[u8], p: &Preview) -> Value {
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    Value::Map(vec![
        kv("recipe", Value::str(name)),
        kv("key", Value::from_bytes(key.to_vec())),
        kv("op", Value::str(if p.op == Op::Upsert { "upsert" } else { "delete" })),
        kv("primaryKey", cell(&p.pk)),
        kv("row", if p.op == Op::Upsert { Value::Map(p.row.iter().map(|(c, _, v)| (Value::String(c.clone()), cell(v))).collect()) } else { Value::Nil }),
        kv("types", Value::Map(std::iter::once((&p.key.0, p.key.1)).chain(p.row.iter().map(|(c, t, _)| (c, *t))).map(|(c, t)| (Value::String(c.clone()), Value::str(type_name(t)))).collect())),
        kv("errors", strings(&p.errors)),
        kv("table", Value::String(p.table.clone())),
        kv("create", strings(&p.create)),
        kv("statements", Value::Array(p.statements.iter().map(|(sql, params)| Value::Array(vec![Value::String(sql.clone()), Value::Array(params.iter().map(cell).collect())])).collect())),
    ])
}

// ---------------------------------------------------------------------------------------
// WAIT

struct Bc(*mut raw::RedisModuleBlockedClient);
// SAFETY: a blocked-client handle may be unblocked from any thread (Module API contract).
unsafe impl Send for Bc {}

/// One waiting RG.RECIPE WAIT.
struct WaitState {
    name: String,
    db: u32,
    started: Instant,
    /// 0: no limit.
    timeout_ms: u64,
    /// Each stream that held changes at the call, with its `entries-added` then.
    streams: Vec<(Vec<u8>, i64)>,
    /// Streams not yet drained up to the call.
    left: usize,
    /// Taken by whoever answers (exactly once).
    bc: Option<Bc>,
    /// The answer given by the apply thread, for a timeout that races it.
    outcome: Option<Result<(), String>>,
}

type Shared = Arc<parking_lot::Mutex<WaitState>>;

/// Waiting clients by blocked-client handle (the timeout callback finds its state here).
static WAITS: parking_lot::Mutex<Option<HashMap<usize, Shared>>> = parking_lot::Mutex::new(None);

fn forget(bc: usize, state: &Shared) {
    let mut w = WAITS.lock();
    if let Some(map) = w.as_mut() {
        // The handle may already belong to a newer wait.
        if map.get(&bc).is_some_and(|s| Arc::ptr_eq(s, state)) {
            map.remove(&bc);
        }
    }
}

fn answer(outcome: &Result<(), String>) -> Answer {
    match outcome {
        Ok(()) => Answer::Ok,
        Err(e) => Answer::Exec(Err(e.clone())),
    }
}

/// Answers the client from the apply thread (unless the timeout did first).
fn finish(state: &Shared, outcome: Result<(), String>) {
    let handle = {
        let mut g = state.lock();
        let Some(bc) = g.bc.take() else { return };
        g.outcome = Some(outcome.clone());
        let data = Box::into_raw(Box::new(answer(&outcome))) as *mut std::os::raw::c_void;
        // SAFETY: unblocked once (the handle was taken); Redis owns `data` from here and
        // hands it to the reply callback, then frees it.
        unsafe { raw::RedisModule_UnblockClient.unwrap()(bc.0, data) };
        bc.0 as usize
    };
    forget(handle, state);
}

/// `length`, `entries-added` and the last entry's id of a stream (None: no such stream).
fn stream_info(ctx: *mut raw::RedisModuleCtx, stream: &[u8]) -> Option<(i64, i64, Option<StreamId>)> {
    let v = call(ctx, &[b"XINFO", b"STREAM", stream]).ok()?;
    let int = |k: &str| v.get(k).and_then(Value::as_i64);
    let last = match v.get("last-entry") {
        Some(Value::Array(e)) => e.first().and_then(|id| id.as_str_lossy()).and_then(|id| parse_id(&id)),
        _ => None,
    };
    Some((int("length")?, int("entries-added")?, last))
}

/// How many of the changes in `streams` at the call are still there.
fn pending(ctx: *mut raw::RedisModuleCtx, db: u32, streams: &[(Vec<u8>, i64)]) -> i64 {
    in_db(ctx, db, || {
        streams
            .iter()
            .map(|(s, added_then)| match stream_info(ctx, s) {
                // Entries added since the call are the newest: the rest are from before it.
                Some((len, added_now, _)) if added_now >= *added_then => (len - (added_now - added_then)).clamp(0, len),
                // Gone, or made anew (FLUSHALL): what was there is not pending any more.
                _ => 0,
            })
            .sum()
    })
}

fn timed_out(name: &str, ms: u64, n: i64) -> String {
    let (what, verb) = if n == 1 { ("change", "is") } else { ("changes", "are") };
    format!("ERR RG.RECIPE WAIT '{name}' timed out after {ms} ms: {n} {what} captured before it {verb} still pending (not yet committed to the target)")
}

/// Redis's timeout (or CLIENT UNBLOCK): replies with the pending count, on the main thread.
extern "C" fn on_timeout(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    let r = std::panic::catch_unwind(|| {
        let context = Context::new(ctx);
        // SAFETY: a timeout callback's context names its blocked client.
        let bc = unsafe { raw::RedisModule_GetBlockedClientHandle.unwrap()(ctx) };
        let state = WAITS.lock().as_ref().and_then(|m| m.get(&(bc as usize)).cloned());
        let Some(state) = state else {
            // The apply thread answered and is gone: its answer is the private data.
            // SAFETY: set by RM_UnblockClient, freed by Redis after this callback.
            let data = unsafe { raw::RedisModule_GetBlockedClientPrivateData.unwrap()(ctx) } as *const Answer;
            match unsafe { data.as_ref() } {
                Some(a) => blocking::send(&context, a),
                None => reply::error(&context, "ERR RG.RECIPE WAIT timed out"),
            }
            return;
        };
        let mut g = state.lock();
        match g.bc.take() {
            Some(b) => {
                let n = pending(ctx, g.db, &g.streams);
                let elapsed = g.started.elapsed();
                // CLIENT UNBLOCK ends the wait early: the time it really waited.
                let ms = if g.timeout_ms > 0 && elapsed >= Duration::from_millis(g.timeout_ms) { g.timeout_ms } else { elapsed.as_millis() as u64 };
                let outcome = if n == 0 { Ok(()) } else { Err(timed_out(&g.name, ms, n)) };
                blocking::send(&context, &answer(&outcome));
                g.outcome = Some(outcome);
                // SAFETY: unblocked once (taken above); no private data to free.
                unsafe { raw::RedisModule_UnblockClient.unwrap()(b.0, std::ptr::null_mut()) };
                drop(g);
                forget(bc as usize, &state);
            }
            // The apply thread answered while Redis timed out: that answer stands.
            None => {
                let o = g.outcome.clone().unwrap_or(Ok(()));
                blocking::send(&context, &answer(&o));
            }
        }
    });
    if r.is_err() {
        return raw::REDISMODULE_ERR as c_int;
    }
    raw::REDISMODULE_OK as c_int
}

/// The recipe's streams in the keyspace (those the apply thread knows, and, before its first
/// look at the keyspace, those found by a scan).
fn streams_of(ctx: &Context, p: &Pipeline) -> Vec<Vec<u8>> {
    let (mut known, discovered) = p.streams();
    if !discovered {
        let host = InPlaceHost::new(ctx.ctx, redis_host().clone());
        let locked = host.lock(0);
        let prefix = format!("{}{}", recipes::change::STREAM_PREFIX, p.name);
        for s in engine::streams::keys_with_prefix(&*locked, prefix.as_bytes()) {
            if recipes::change::is_stream_of(&p.name, &s) && !known.contains(&s) {
                known.push(s);
            }
        }
    }
    known
}

/// RG.RECIPE WAIT <name> [timeoutMs]
fn wait(ctx: &Context, args: &[RedisString]) -> RedisResult {
    if !(3..=4).contains(&args.len()) {
        return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.RECIPE WAIT <name> [timeoutMs]"));
    }
    let name = text(&args[2], "the recipe name")?;
    let timeout_ms: u64 = match args.get(3) {
        None => 0,
        Some(a) => {
            let t = a.to_string_lossy();
            t.parse::<u64>().ok().filter(|n| *n <= i64::MAX as u64 / 2).ok_or_else(|| RedisError::String(format!("ERR timeoutMs must be a non-negative integer (milliseconds; 0: no limit), got '{t}'")))?
        }
    };
    can_block(ctx, "RG.RECIPE WAIT", "it blocks the client until the recipe's changes are applied")?;
    let caller = acl::caller(ctx);
    let (session, pipeline) = find(&name)?;
    acl::require_owner(&caller, "session", &session.id, session.user.as_deref())?;
    let flags = ctx.get_flags();
    if !flags.contains(ContextFlags::MASTER) {
        return Err(RedisError::Str("ERR RG.RECIPE WAIT runs on the primary: recipes apply their changes only there"));
    }
    // What the recipe's streams hold now: the wait ends once each is trimmed past its last
    // entry (committed or dead-lettered).
    let db = pipeline.db();
    let streams = streams_of(ctx, &pipeline);
    let now: Vec<(Vec<u8>, i64, StreamId)> = in_db(ctx.ctx, db, || {
        streams.into_iter().filter_map(|s| stream_info(ctx.ctx, &s).and_then(|(len, added, last)| (len > 0).then_some(()).and(last).map(|l| (s, added, l)))).collect()
    });
    if now.is_empty() {
        return Ok(redis_module::RedisValue::SimpleStringStatic("OK"));
    }
    // SAFETY: main thread, inside the command; the handle is unblocked exactly once (by
    // `finish` or `on_timeout`, whichever takes it from the state).
    let bc = unsafe { raw::RedisModule_BlockClient.unwrap()(ctx.ctx, Some(blocking::on_reply), Some(on_timeout), Some(blocking::free_answer), timeout_ms as i64) };
    let state: Shared = Arc::new(parking_lot::Mutex::new(WaitState {
        name: name.clone(),
        db,
        started: Instant::now(),
        timeout_ms,
        streams: now.iter().map(|(s, a, _)| (s.clone(), *a)).collect(),
        left: now.len(),
        bc: Some(Bc(bc)),
        outcome: None,
    }));
    WAITS.lock().get_or_insert_with(HashMap::new).insert(bc as usize, state.clone());
    // Redis's own timeout answers first; the apply thread forgets the waiter a second later.
    let deadline = if timeout_ms == 0 { Instant::now() + Duration::from_secs(100 * 365 * 86400) } else { Instant::now() + Duration::from_millis(timeout_ms) + Duration::from_secs(1) };
    for (stream, _, last) in now {
        let st = state.clone();
        let removed = format!("ERR recipe '{name}' was removed while RG.RECIPE WAIT waited; its changes not yet applied stay in its streams");
        let timed_out_late = format!("ERR RG.RECIPE WAIT '{name}' timed out after {timeout_ms} ms");
        pipeline.wait_for(Waiter {
            stream,
            // No key: a dead-lettered change does not fail this wait (it is no longer pending).
            key: Vec::new(),
            id: last,
            deadline,
            done: Box::new(move |r| match r {
                Ok(()) => {
                    let done = {
                        let mut g = st.lock();
                        g.left = g.left.saturating_sub(1);
                        g.left == 0
                    };
                    if done {
                        finish(&st, Ok(()));
                    }
                }
                // Its deadline (Redis's timeout came first and answered), or the recipe stopped.
                Err(_) if Instant::now() >= deadline => finish(&st, Err(timed_out_late.clone())),
                Err(_) => finish(&st, Err(removed)),
            }),
        });
    }
    replied()
}
