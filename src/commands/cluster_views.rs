//! What the cluster-wide forms of the execution and registration commands show: every
//! primary's part, asked over the bus while the client waits (blocked, not the server).

use crate::{blocking, engine};
use engine::cluster::Query;
use engine::Value;
use redis_module::{raw, Context};

fn kv(k: &str, v: Value) -> (Value, Value) {
    (Value::str(k), v)
}

/// This shard's answer to another shard's query (main thread).
pub fn answer(q: &Query) -> Result<Value, String> {
    match q {
        Query::Execution { exec, user, admin } => {
            let e = engine().registry.get(exec).map_err(|e| e.to_string())?;
            let who = engine::Registrant { user: user.as_deref(), admin: *admin };
            if !who.owns(e.user.as_deref()) {
                return Err(engine::not_owner("execution", &e.id, e.user.as_deref()));
            }
            Ok(super::executions::details(&e))
        }
        Query::Registrations { user, admin } => {
            // SAFETY: on the main thread (the bus receiver), which holds the server lock; a
            // thread-safe context is only used here to run commands, then freed.
            let ctx = unsafe { raw::RedisModule_GetThreadSafeContext.unwrap()(std::ptr::null_mut()) };
            let who = engine::Registrant { user: user.as_deref(), admin: *admin };
            let v = super::registrations::dump(&Context::new(ctx), &who);
            // SAFETY: created just above, freed once.
            unsafe { raw::RedisModule_FreeThreadSafeContext.unwrap()(ctx) };
            Ok(v)
        }
        Query::Custom { name, .. } => Err(format!("unknown cluster query '{name}'")),
    }
}

/// Asks every primary and replies to the blocked client with `shape(answers)`.
pub fn gather(ctx: &Context, query: Query, shape: fn(Vec<(String, Result<Value, String>)>) -> Value) {
    let unblock = blocking::block_client(ctx);
    engine().cluster.query_all(query, Box::new(move |answers| unblock(blocking::Answer::Exec(Ok(shape(answers))))));
}

/// `[ {shard, ...part | error}, ... ]` for RG.GETEXECUTION id CLUSTER.
pub fn execution_parts(answers: Vec<(String, Result<Value, String>)>) -> Value {
    Value::Array(
        answers
            .into_iter()
            .map(|(shard, a)| match a {
                Ok(Value::Map(mut m)) => {
                    m.insert(0, kv("shard", Value::String(shard)));
                    Value::Map(m)
                }
                Ok(other) => Value::Map(vec![kv("shard", Value::String(shard)), kv("part", other)]),
                Err(e) => Value::Map(vec![kv("shard", Value::String(shard)), kv("error", Value::String(e))]),
            })
            .collect(),
    )
}

/// RG.DUMPREGISTRATIONS CLUSTER: each shard's registrations, and per registration the
/// sum of its numeric counters over the shards (`totals`).
pub fn registrations(answers: Vec<(String, Result<Value, String>)>) -> Value {
    let mut totals: Vec<(String, Vec<(Value, Value)>)> = Vec::new();
    let mut shards = Vec::new();
    for (shard, a) in answers {
        match a {
            Ok(Value::Array(regs)) => {
                for r in &regs {
                    let Value::Map(fields) = r else { continue };
                    let Some(id) = r.get("id").and_then(|v| v.as_str_lossy()) else { continue };
                    let pos = match totals.iter().position(|(i, _)| *i == id) {
                        Some(p) => p,
                        None => {
                            totals.push((id.clone(), vec![kv("id", Value::String(id.clone()))]));
                            totals.len() - 1
                        }
                    };
                    sum_into(&mut totals[pos].1, fields, "");
                }
                shards.push(Value::Map(vec![kv("shard", Value::String(shard)), kv("registrations", Value::Array(regs))]));
            }
            Ok(other) => shards.push(Value::Map(vec![kv("shard", Value::String(shard)), kv("registrations", other)])),
            Err(e) => shards.push(Value::Map(vec![kv("shard", Value::String(shard)), kv("error", Value::String(e))])),
        }
    }
    Value::Map(vec![
        kv("shards", Value::Array(shards)),
        kv("totals", Value::Array(totals.into_iter().map(|(_, m)| Value::Map(m)).collect())),
    ])
}

/// Fields that are the same setting on every shard, or a time that does not add up: the
/// largest is kept instead of the sum.
const MAX_NOT_SUM: [&str; 3] = ["maxBacklog", "lagMs", "elapsedMs"];

/// Adds the integer counters of `fields` (and of nested maps, as `outer.inner`) to `acc`;
/// the registration's arguments (`args`: its settings) are not counters and are left out.
fn sum_into(acc: &mut Vec<(Value, Value)>, fields: &[(Value, Value)], prefix: &str) {
    for (k, v) in fields {
        let Some(name) = k.as_str_lossy() else { continue };
        if prefix.is_empty() && name == "args" {
            continue;
        }
        let largest = MAX_NOT_SUM.contains(&name.as_str());
        let name = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
        match v {
            Value::Int(n) => match acc.iter_mut().find(|(k, _)| k.as_str_lossy().as_deref() == Some(name.as_str())) {
                Some((_, Value::Int(t))) if largest => *t = (*t).max(*n),
                Some((_, Value::Int(t))) => *t = t.saturating_add(*n),
                Some(_) => {}
                None => acc.push((Value::String(name), Value::Int(*n))),
            },
            Value::Map(inner) => sum_into(acc, inner, &name),
            _ => {}
        }
    }
}
