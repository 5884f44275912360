//! Execution management: RG.GETEXECUTION, RG.DUMPEXECUTIONS, RG.GETRESULTS,
//! RG.GETRESULTSBLOCKING, RG.DROPEXECUTION, RG.ABORTEXECUTION.

use super::{guarded, replied, text};
use crate::{acl, blocking, engine, reply};
use engine::{Execution, Outcome, Value};
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};
use std::sync::Arc;

fn one_id(args: &[RedisString], usage: &str) -> Result<String, RedisError> {
    if args.len() != 2 {
        return Err(RedisError::String(format!("ERR wrong number of arguments; usage: {usage}")));
    }
    text(&args[1], "the execution id")
}

/// The execution `id`, if the caller may see it (its owner or an admin); `command` is
/// checked like EVAL first.
fn find(ctx: &Context, command: &str, id: &str) -> Result<Arc<Execution>, RedisError> {
    let caller = acl::require(ctx, command, acl::EVAL, 1)?;
    let e = engine().registry.get(id).map_err(|e| RedisError::String(format!("ERR {e}")))?;
    acl::require_owner(&caller, "execution", &e.id, e.user.as_deref())?;
    Ok(e)
}

fn kv(k: &str, v: Value) -> (Value, Value) {
    (Value::str(k), v)
}

fn summary(e: &Execution) -> Value {
    Value::Map(vec![
        kv("executionId", Value::String(e.id.clone())),
        kv("status", Value::str(e.status().as_str())),
        kv("language", Value::str(e.language)),
        kv("description", e.description.clone().map(Value::String).unwrap_or(Value::Nil)),
    ])
}

pub(crate) fn details(e: &Execution) -> Value {
    let (mut m, outcome) = match summary(e) {
        Value::Map(m) => (m, e.outcome()),
        _ => unreachable!("summary is a map"),
    };
    e.with_state(|s| {
        m.push(kv("reader", s.reader.map(Value::str).unwrap_or(Value::Nil)));
        m.push(kv("createdAtMs", Value::Int(e.created_ms as i64)));
        m.push(kv("durationMs", Value::Int(s.duration.as_millis() as i64)));
        m.push(kv("recordsIn", Value::Int(s.records_in as i64)));
        m.push(kv("recordsOut", Value::Int(s.records_out as i64)));
        m.push(kv(
            "steps",
            Value::Array(
                s.step_stats
                    .iter()
                    .map(|st| {
                        Value::Map(vec![
                            kv("name", Value::str(st.name)),
                            kv("calls", Value::Int(st.calls as i64)),
                            kv("durationUs", Value::Int(st.duration.as_micros() as i64)),
                        ])
                    })
                    .collect(),
            ),
        ));
    });
    let (results, errors, error) = match &outcome {
        Some(Outcome::Records { results, errors }) => (results.len() as i64, Value::Array(errors.iter().map(|x| Value::String(x.clone())).collect()), Value::Nil),
        Some(Outcome::Failed(msg)) => (0, Value::Array(vec![]), Value::String(msg.clone())),
        _ => (0, Value::Array(vec![]), Value::Nil),
    };
    m.push(kv("results", Value::Int(results)));
    m.push(kv("errors", errors));
    m.push(kv("error", error));
    Value::Map(m)
}

/// RG.GETEXECUTION id [SHARD|CLUSTER]
pub fn get_execution(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        const USAGE: &str = "RG.GETEXECUTION <id> [SHARD|CLUSTER]";
        if args.len() != 2 && args.len() != 3 {
            return Err(RedisError::String(format!("ERR wrong number of arguments; usage: {USAGE}")));
        }
        let mut cluster = false;
        if let Some(scope) = args.get(2) {
            let s = text(scope, "the scope")?.to_ascii_uppercase();
            if s != "SHARD" && s != "CLUSTER" {
                return Err(RedisError::String(format!("ERR unknown scope '{s}': expected SHARD or CLUSTER")));
            }
            cluster = s == "CLUSTER";
        }
        let e = find(ctx, "RG.GETEXECUTION", &text(&args[1], "the execution id")?)?;
        if cluster && crate::cluster::topology().is_some() {
            // Every primary's part of it (status, records, per-step time), this one's first.
            let caller = acl::caller(ctx);
            let q = engine::cluster::Query::Execution { exec: e.id.clone(), user: caller.user.clone(), admin: caller.admin };
            super::cluster_views::gather(ctx, q, super::cluster_views::execution_parts);
            return replied();
        }
        reply::reply(ctx, &details(&e));
        replied()
    })
}

/// RG.DUMPEXECUTIONS
pub fn dump_executions(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() != 1 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.DUMPEXECUTIONS"));
        }
        let caller = acl::require(ctx, "RG.DUMPEXECUTIONS", acl::EVAL, 1)?;
        // Each user sees its own executions; an admin sees all.
        let all: Vec<Value> = engine().registry.all().iter().filter(|e| caller.owns(e.user.as_deref())).map(|e| summary(e)).collect();
        reply::reply(ctx, &Value::Array(all));
        replied()
    })
}

/// RG.GETRESULTS id
pub fn get_results(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let e = find(ctx, "RG.GETRESULTS", &one_id(&args, "RG.GETRESULTS <id>")?)?;
        match e.outcome() {
            Some(o) => blocking::send(ctx, &blocking::answer(&o)),
            None => reply::error(ctx, &format!("ERR execution '{}' has not finished (it is {}): use RG.GETRESULTSBLOCKING to wait for it", e.id, e.status().as_str())),
        }
        replied()
    })
}

/// RG.GETRESULTSBLOCKING id
pub fn get_results_blocking(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let e = find(ctx, "RG.GETRESULTSBLOCKING", &one_id(&args, "RG.GETRESULTSBLOCKING <id>")?)?;
        if ctx.get_flags().contains(redis_module::ContextFlags::MULTI) {
            return Err(RedisError::Str("ERR RG.GETRESULTSBLOCKING cannot block inside MULTI/EXEC: use RG.GETRESULTS"));
        }
        match e.outcome() {
            Some(o) => blocking::send(ctx, &blocking::answer(&o)),
            None => blocking::block_until_done(ctx, &e),
        }
        replied()
    })
}

/// RG.DROPEXECUTION id
pub fn drop_execution(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let id = one_id(&args, "RG.DROPEXECUTION <id>")?;
        find(ctx, "RG.DROPEXECUTION", &id)?;
        engine().registry.drop_execution(&id).map_err(|e| RedisError::String(format!("ERR {e}")))?;
        // Its parts on the other shards go too.
        engine().cluster.broadcast_drop(&id);
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// RG.ABORTEXECUTION id
pub fn abort_execution(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let e = find(ctx, "RG.ABORTEXECUTION", &one_id(&args, "RG.ABORTEXECUTION <id>")?)?;
        if e.status().is_finished() {
            return Err(RedisError::String(format!("ERR execution '{}' has already finished ({})", e.id, e.status().as_str())));
        }
        e.request_abort();
        // Every shard's part stops.
        engine().cluster.broadcast_abort(&e.id);
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}
