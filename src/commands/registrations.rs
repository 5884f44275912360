//! Registrations and sessions: RG.DUMPREGISTRATIONS, RG.UNREGISTER,
//! RG.PAUSEREGISTRATIONS, RG.UNPAUSEREGISTRATIONS, RG.CLEARREGISTRATIONSSTATS,
//! RG.DUMPSESSIONS, RG.DROPSESSION.

use super::{guarded, replied, text};
use crate::{acl, engine, reply};
use engine::{Registration, Session, Value};
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};
use std::sync::atomic::Ordering;

fn kv(k: &str, v: Value) -> (Value, Value) {
    (Value::str(k), v)
}

fn opt(v: &Option<String>) -> Value {
    v.clone().map(Value::String).unwrap_or(Value::Nil)
}

/// Entries after `last` in `stream`, counted up to `LAG_CAP`.
const LAG_CAP: usize = 10_000;

fn stream_lag(ctx: &Context, stream: &[u8], last: &str) -> i64 {
    let from = format!("({last}");
    let cap = (LAG_CAP + 1).to_string();
    let args: [&[u8]; 5] = [stream, from.as_bytes(), b"+", b"COUNT", cap.as_bytes()];
    match ctx.call("XRANGE", &args[..]) {
        Ok(RedisValue::Array(a)) => a.len().min(LAG_CAP) as i64,
        _ => 0,
    }
}

fn registration(ctx: &Context, r: &Registration) -> Value {
    let s = r.stats();
    let avg = if s.triggered == 0 { 0.0 } else { s.total_duration.as_secs_f64() * 1000.0 / s.triggered as f64 };
    Value::Map(vec![
        kv("id", Value::String(r.id.clone())),
        kv("session", Value::String(r.session.clone())),
        kv("reader", Value::str(r.spec.trigger.reader())),
        kv("description", opt(&r.spec.description)),
        kv("mode", Value::str(r.spec.mode.as_str())),
        kv("args", r.spec.trigger.args()),
        kv("status", Value::str(if r.paused.load(Ordering::Relaxed) { "paused" } else { "active" })),
        kv("numTriggered", Value::Int(s.triggered as i64)),
        kv("numSuccess", Value::Int(s.success as i64)),
        kv("numFailures", Value::Int(s.failures as i64)),
        kv("numAborted", Value::Int(s.aborted as i64)),
        kv("lastError", opt(&s.last_error)),
        kv("avgRunDurationMs", Value::Double(avg)),
        kv("lastRunDurationMs", Value::Double(s.last_duration.as_secs_f64() * 1000.0)),
        kv("recipe", recipe_status(r)),
        kv(
            "streams",
            Value::Array(
                r.consumers
                    .map
                    .lock()
                    .iter()
                    .map(|(k, c)| {
                        let last = engine::streams::format_id(c.last_id);
                        Value::Map(vec![
                            kv("stream", Value::from_bytes(k.clone())),
                            kv("lag", Value::Int(stream_lag(ctx, k, &last))),
                            kv("lastProcessedId", Value::String(last)),
                            kv("busy", Value::Bool(c.running || c.waiting_since.is_some())),
                            kv("lastError", opt(&c.last_error)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

/// What a recipe registration (write-behind, write-through) is doing; nil for others.
fn recipe_status(r: &Registration) -> Value {
    let engine::Trigger::Recipe { name, .. } = &r.spec.trigger else { return Value::Nil };
    let Some(p) = crate::recipes::recipes().and_then(|x| x.get(name)) else { return Value::Nil };
    let st = p.status();
    let spec = p.spec();
    Value::Map(vec![
        kv("name", Value::String(name.clone())),
        kv("target", Value::str(spec.target.kind.as_str())),
        kv("connection", Value::String(spec.target.connection.clone())),
        kv("delivery", Value::str(spec.delivery.as_str())),
        kv("backlog", Value::Int(p.backlog.load(Ordering::Relaxed))),
        kv("maxBacklog", Value::Int(spec.max_backlog as i64)),
        kv("lagMs", Value::Int(st.lag_ms as i64)),
        kv("captured", Value::Int(p.captured.load(Ordering::Relaxed) as i64)),
        kv("applied", Value::Int(st.applied as i64)),
        kv("batches", Value::Int(st.batches as i64)),
        kv("retries", Value::Int(st.retries as i64)),
        kv("deadLettered", Value::Int(st.dead_lettered as i64)),
        kv("captureErrors", Value::Int(st.capture_errors as i64)),
        kv("connected", Value::Bool(st.connected)),
        kv("lastError", opt(&st.last_error)),
        kv("backfill", backfill_status(name)),
    ])
}

/// A recipe's backfill: nil without `backfill`.
fn backfill_status(name: &str) -> Value {
    let Some(b) = crate::recipes::recipes().and_then(|x| x.backfill(name)) else { return Value::Nil };
    let pr = b.progress();
    Value::Map(vec![
        kv("state", Value::str(pr.state.as_str())),
        kv("scanned", Value::Int(pr.scanned as i64)),
        kv("total", Value::Int(pr.total as i64)),
        kv("queued", Value::Int(pr.queued as i64)),
        kv("elapsedMs", Value::Int(pr.elapsed_ms() as i64)),
        kv("keysPerSec", Value::Int(pr.keys_per_sec() as i64)),
        kv("restarts", Value::Int(pr.restarts as i64)),
        kv("lastError", opt(&pr.last_error)),
    ])
}

/// RG.DUMPREGISTRATIONS
pub fn dump_registrations(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        const USAGE: &str = "ERR wrong number of arguments; usage: RG.DUMPREGISTRATIONS [CLUSTER]";
        let cluster = match args.len() {
            1 => false,
            2 if text(&args[1], "the scope")?.eq_ignore_ascii_case("CLUSTER") => true,
            2 => return Err(RedisError::String(format!("ERR unknown scope '{}': expected CLUSTER", text(&args[1], "the scope")?))),
            _ => return Err(RedisError::Str(USAGE)),
        };
        let caller = acl::require(ctx, "RG.DUMPREGISTRATIONS", acl::FUNCTION_LIST, 2)?;
        if cluster {
            // Every primary's registrations, with their counters summed (backlog, lag...).
            let q = engine::cluster::Query::Registrations { user: caller.user.clone(), admin: caller.admin };
            super::cluster_views::gather(ctx, q, super::cluster_views::registrations);
            return replied();
        }
        reply::reply(ctx, &dump(ctx, &caller.registrant()));
        replied()
    })
}

/// The registrations `who` may see: the registrations of its own sessions (an admin: all).
pub(crate) fn dump(ctx: &Context, who: &engine::Registrant) -> Value {
    Value::Array(
        engine()
            .sessions
            .all()
            .iter()
            .filter(|s| who.owns(s.user.as_deref()))
            .flat_map(|s| s.registrations.iter().map(|r| registration(ctx, r)).collect::<Vec<_>>())
            .collect(),
    )
}

fn ids(args: &[RedisString], usage: &str) -> Result<Vec<String>, RedisError> {
    if args.len() < 2 {
        return Err(RedisError::String(format!("ERR wrong number of arguments; usage: {usage}")));
    }
    args[1..].iter().map(|a| text(a, "the registration id")).collect()
}

/// RG.UNREGISTER id
pub fn unregister(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() != 2 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.UNREGISTER <registration id>"));
        }
        let id = text(&args[1], "the registration id")?;
        let caller = acl::require(ctx, "RG.UNREGISTER", acl::FUNCTION_DELETE, 2)?;
        if let Some((s, _)) = engine().sessions.registration(&id) {
            acl::require_owner(&caller, "session", &s.id, s.user.as_deref())?;
        }
        let session = engine().sessions.unregister(&id).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        crate::persistence::replicate_session(ctx, &session);
        crate::recipes::sessions_changed();
        // Every primary of a cluster follows.
        engine().cluster_publish(false);
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

fn set_paused(ctx: &Context, args: &[RedisString], paused: bool, usage: &str) -> RedisResult {
    let ids = ids(args, usage)?;
    let command = args[0].to_string_lossy().to_ascii_uppercase();
    let caller = acl::require(ctx, &command, acl::FUNCTION_DELETE, 2)?;
    let sessions = &engine().sessions;
    // All or nothing: every id must exist, and be the caller's, before any is changed.
    let regs = ids
        .iter()
        .map(|id| {
            let (s, r) = sessions.registration(id).ok_or_else(|| RedisError::String(format!("ERR no registration '{id}'")))?;
            acl::require_owner(&caller, "session", &s.id, s.user.as_deref())?;
            Ok(r)
        })
        .collect::<Result<Vec<_>, RedisError>>()?;
    for r in &regs {
        r.paused.store(paused, Ordering::Relaxed);
        r.halted.store(false, Ordering::Relaxed);
    }
    let mut sent: Vec<&str> = Vec::new();
    for r in &regs {
        if !sent.contains(&r.session.as_str()) {
            sent.push(&r.session);
            if let Some(s) = sessions.get(&r.session) {
                crate::persistence::replicate_session(ctx, &s);
            }
        }
    }
    // Every primary of a cluster follows.
    engine().cluster_publish(false);
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// RG.PAUSEREGISTRATIONS id [id ...]
pub fn pause(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || set_paused(ctx, &args, true, "RG.PAUSEREGISTRATIONS <id> [<id> ...]"))
}

/// RG.UNPAUSEREGISTRATIONS id [id ...]
pub fn unpause(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let r = set_paused(ctx, &args, false, "RG.UNPAUSEREGISTRATIONS <id> [<id> ...]")?;
        // Stream consumers pick up what arrived while they were paused.
        let e = engine().clone();
        engine().soon(Box::new(move || e.kick_streams()));
        Ok(r)
    })
}

/// RG.CLEARREGISTRATIONSSTATS
pub fn clear_stats(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() != 1 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.CLEARREGISTRATIONSSTATS"));
        }
        let caller = acl::require(ctx, "RG.CLEARREGISTRATIONSSTATS", acl::FUNCTION_DELETE, 2)?;
        // A user clears the counters of its own sessions; an admin those of all.
        for s in engine().sessions.all().iter().filter(|s| caller.owns(s.user.as_deref())) {
            for r in &s.registrations {
                r.clear_stats();
            }
        }
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

fn session(s: &Session, verbose: bool) -> Value {
    let mut m = vec![
        kv("id", Value::String(s.id.clone())),
        kv("language", Value::str(s.language)),
        kv("description", opt(&s.description)),
        kv("user", opt(&s.user)),
        kv("registrations", Value::Array(s.registrations.iter().map(|r| Value::String(r.id.clone())).collect())),
    ];
    // `ready`, or `pending`/`failed` for a loaded session not rebuilt yet (no registrations
    // fire until it is; the error says why the last attempt failed).
    let (status, error) = s.status();
    m.push(kv("status", Value::str(status)));
    m.push(kv("error", opt(&error)));
    // The packages it imported, pinned by hash (an unbuilt session: those its definition pinned).
    let imports = match &s.unbuilt {
        Some(u) => u.def.packages.clone().unwrap_or_default(),
        None => s.imports.to_vec(),
    };
    let package = |p: &engine::Package| Value::Map(vec![kv("language", Value::String(p.language.clone())), kv("name", Value::String(p.name.clone())), kv("hash", Value::str(p.hash()))]);
    m.push(kv("imports", Value::Array(imports.iter().map(package).collect())));
    if verbose {
        m.push(kv("source", Value::String(s.source.clone())));
        m.push(kv("args", Value::Array(s.args.iter().map(|a| Value::from_bytes(a.clone())).collect())));
    }
    Value::Map(m)
}

/// RG.DUMPSESSIONS [VERBOSE]
pub fn dump_sessions(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let verbose = match args.len() {
            1 => false,
            2 if text(&args[1], "the option")?.eq_ignore_ascii_case("VERBOSE") => true,
            _ => return Err(RedisError::Str("ERR wrong arguments; usage: RG.DUMPSESSIONS [VERBOSE]")),
        };
        let caller = acl::require(ctx, "RG.DUMPSESSIONS", acl::FUNCTION_LIST, 2)?;
        // Each user sees its own sessions (sources and arguments included); an admin all.
        let all: Vec<Value> = engine().sessions.all().iter().filter(|s| caller.owns(s.user.as_deref())).map(|s| session(s, verbose)).collect();
        reply::reply(ctx, &Value::Array(all));
        replied()
    })
}

/// RG.DROPSESSION id
pub fn drop_session(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() != 2 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.DROPSESSION <session id>"));
        }
        let id = text(&args[1], "the session id")?;
        let caller = acl::require(ctx, "RG.DROPSESSION", acl::FUNCTION_DELETE, 2)?;
        if let Some(s) = engine().sessions.get(&id) {
            acl::require_owner(&caller, "session", &s.id, s.user.as_deref())?;
        }
        engine().sessions.drop_session(&id).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        ctx.replicate("RG.SESSIONDROP", &[id.as_bytes()][..]);
        crate::recipes::sessions_changed();
        // Every primary of a cluster follows.
        engine().cluster_publish(false);
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}
