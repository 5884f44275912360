//! RG.CONFIGGET and RG.CONFIGSET.

use super::{guarded, replied, text};
use crate::{engine, reply};
use engine::{Config, Value};
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

/// RG.CONFIGGET name [name ...]: one value per name (an error entry for unknown names).
pub fn config_get(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() < 2 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.CONFIGGET <name> [<name> ...]"));
        }
        crate::acl::require_user(ctx, "RG.CONFIGGET", crate::acl::CONFIG_GET, 2)?;
        let cfg = &engine().config;
        let mut out = Vec::new();
        for a in &args[1..] {
            let name = text(a, "the setting name")?;
            let n = engine::config::normalize(&name);
            out.push(if engine::config::is_secret(&n) {
                // Connection URLs are shown with their password masked.
                cfg.shown(&n).map(Value::String).unwrap_or(Value::Nil)
            } else {
                match Config::setting(&name) {
                    Some(_) => cfg.get(&name).map(Value::String).unwrap_or(Value::Nil),
                    None => Value::Error(format!("ERR {}", engine::ConfigError::Unknown(name))),
                }
            });
        }
        reply::reply(ctx, &Value::Array(out));
        replied()
    })
}

/// RG.CONFIGSET name value [name value ...]: all or nothing.
///
/// Connection settings (`connection.<name>`, `connection.<name>.users`) are also sent to
/// replicas and the AOF, as an `RG.CONFIGSET` of those pairs only, and saved in the RDB (see
/// persistence.rs): a restarted or promoted server has them. The other settings stay local,
/// like CONFIG SET's. The command is flagged `may-replicate`, so CLIENT PAUSE WRITE holds it.
pub fn config_set(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() < 3 || args.len() % 2 == 0 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.CONFIGSET <name> <value> [<name> <value> ...]"));
        }
        crate::acl::require_user(ctx, "RG.CONFIGSET", crate::acl::CONFIG_SET, 2)?;
        let engine = engine();
        let mut checked = Vec::new();
        for pair in args[1..].chunks(2) {
            let (name, value) = (text(&pair[0], "the setting name")?, text(&pair[1], "the value")?);
            checked.push(Config::validate(&name, &value, false).map_err(|e| RedisError::String(format!("ERR {e}")))?);
        }
        let flags = ctx.get_flags();
        // From the primary or the AOF: applied as sent, and passed on as is (to this
        // replica's own AOF and replicas).
        let trusted = flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING);
        let connections: Vec<&(String, String)> = checked.iter().filter(|(n, _)| engine::config::is_secret(n)).collect();
        if let (Some((name, _)), false, true) = (connections.first(), trusted, flags.contains(ContextFlags::SLAVE)) {
            return Err(RedisError::String(format!(
                "ERR this server is a replica: connection settings come from its primary (set '{name}' there; it is replicated and saved)"
            )));
        }
        let replicated: Vec<&[u8]> = connections.iter().flat_map(|(n, v)| [n.as_bytes(), v.as_bytes()]).collect();
        for (name, value) in &checked {
            engine.config.set(name, value, false).map_err(|e| RedisError::String(format!("ERR {e}")))?;
            engine.setting_changed(name);
        }
        if trusted {
            ctx.replicate_verbatim();
        } else if !replicated.is_empty() {
            ctx.replicate("RG.CONFIGSET", &replicated[..]);
        }
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}
