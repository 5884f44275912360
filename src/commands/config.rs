//! RG.CONFIGGET and RG.CONFIGSET.

use super::{guarded, replied, text};
use crate::{engine, reply};
use engine::{Config, Value};
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

/// RG.CONFIGGET name [name ...]: one value per name (an error entry for unknown names).
pub fn config_get(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() < 2 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.CONFIGGET <name> [<name> ...]"));
        }
        crate::acl::require(ctx, "RG.CONFIGGET", crate::acl::CONFIG_GET, 2)?;
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
pub fn config_set(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        if args.len() < 3 || args.len() % 2 == 0 {
            return Err(RedisError::Str("ERR wrong number of arguments; usage: RG.CONFIGSET <name> <value> [<name> <value> ...]"));
        }
        crate::acl::require(ctx, "RG.CONFIGSET", crate::acl::CONFIG_SET, 2)?;
        let engine = engine();
        let mut checked = Vec::new();
        for pair in args[1..].chunks(2) {
            let (name, value) = (text(&pair[0], "the setting name")?, text(&pair[1], "the value")?);
            checked.push(Config::validate(&name, &value, false).map_err(|e| RedisError::String(format!("ERR {e}")))?);
        }
        for (name, value) in checked {
            engine.config.set(&name, &value, false).map_err(|e| RedisError::String(format!("ERR {e}")))?;
            engine.setting_changed(&name);
        }
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}
