//! The cluster as this shard sees it: RG.INFOCLUSTER and RG.REFRESHCLUSTER.

use super::{guarded, replied};
use crate::{acl, cluster, reply};
use engine::cluster::Topology;
use engine::Value;
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

/// What users may run these must also be allowed to run: the same view of the cluster.
const CLUSTER_INFO: &[&[u8]] = &[b"CLUSTER", b"INFO"];

/// RG.INFOCLUSTER: this node's id and role and the primaries with their slots, as the
/// coordinator last read them; "no cluster mode" on a server that is not a cluster node.
pub fn info_cluster(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() != 1 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.INFOCLUSTER"));
        }
        acl::require_user(ctx, "RG.INFOCLUSTER", CLUSTER_INFO, 2)?;
        if !cluster::enabled(ctx) {
            return Ok(RedisValue::SimpleStringStatic("no cluster mode"));
        }
        let t = match cluster::topology() {
            Some(t) => t,
            None => cluster::refresh(ctx).map_err(|e| RedisError::String(format!("ERR could not read the cluster topology: {e}")))?,
        };
        reply::reply(ctx, &describe(ctx, &t));
        replied()
    })
}

/// RG.REFRESHCLUSTER: reads the topology again now (it is also read every second).
pub fn refresh_cluster(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() != 1 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.REFRESHCLUSTER"));
        }
        acl::require_user(ctx, "RG.REFRESHCLUSTER", CLUSTER_INFO, 2)?;
        // Nothing to refresh on a server that is not a cluster node.
        if !cluster::enabled(ctx) {
            return Ok(RedisValue::SimpleStringStatic("OK"));
        }
        cluster::refresh(ctx).map_err(|e| RedisError::String(format!("ERR could not read the cluster topology: {e}")))?;
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

fn kv(k: &str, v: Value) -> (Value, Value) {
    (Value::str(k), v)
}

/// `MyId`, `MyRole` and `Shards`: one map per primary, sorted by id.
fn describe(ctx: &Context, t: &Topology) -> Value {
    let role = if ctx.get_flags().contains(ContextFlags::SLAVE) { "replica" } else { "primary" };
    let shards = t
        .shards
        .iter()
        .map(|s| {
            let (ip, port) = s.addr.rsplit_once(':').unwrap_or((s.addr.as_str(), ""));
            let port = port.parse::<i64>().map(Value::Int).unwrap_or_else(|_| Value::str(port));
            let slots = s.slots.iter().map(|&(a, b)| Value::Array(vec![Value::Int(a.into()), Value::Int(b.into())])).collect();
            Value::Map(vec![kv("id", Value::str(s.id.as_str())), kv("ip", Value::str(ip)), kv("port", port), kv("slots", Value::Array(slots))])
        })
        .collect();
    Value::Map(vec![kv("MyId", Value::str(t.me.as_str())), kv("MyRole", Value::str(role)), kv("Shards", Value::Array(shards))])
}
