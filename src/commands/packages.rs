//! RG.PACKAGE LOAD | LIST | DELETE: shared recipe packages.

use super::{guarded, replied, text};
use crate::{engine, reply};
use engine::{Package, Value};
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

const USAGE: &str = "RG.PACKAGE LOAD lua|js <name> <code> [REPLACE] | RG.PACKAGE LIST | RG.PACKAGE DELETE <name>";

fn err(e: impl std::fmt::Display) -> RedisError {
    RedisError::String(format!("ERR {e}"))
}

pub fn rg_package(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let sub = args.get(1).map(|a| text(a, "the subcommand")).transpose()?.unwrap_or_default().to_ascii_uppercase();
        let engine = engine();
        // LIST reads; LOAD and DELETE change state, which on a replica only its primary may.
        let flags = ctx.get_flags();
        if sub != "LIST" && flags.contains(ContextFlags::SLAVE) && !flags.contains(ContextFlags::REPLICATED) && !flags.contains(ContextFlags::LOADING) {
            return Err(RedisError::Str("READONLY You can't write against a read only replica."));
        }
        match sub.as_str() {
            "LOAD" => {
                if args.len() != 5 && args.len() != 6 {
                    return Err(RedisError::String(format!("ERR wrong number of arguments; usage: {USAGE}")));
                }
                let language = text(&args[2], "the language")?.to_ascii_lowercase();
                let lang = engine.language(&language).map_err(err)?;
                let name = text(&args[3], "the package name")?;
                let source = text(&args[4], "the package code")?;
                let replace = match args.get(5) {
                    None => false,
                    Some(a) if text(a, "the option")?.eq_ignore_ascii_case("REPLACE") => true,
                    Some(a) => return Err(RedisError::String(format!("ERR unknown option '{}'; usage: {USAGE}", a.to_string_lossy()))),
                };
                engine::packages::check_name(&name).map_err(err)?;
                let importers = engine.sessions.importers(Some(lang.name()), &name);
                if replace && !importers.is_empty() {
                    return Err(err(engine::PackageError::InUse(name, importers.join(", "))));
                }
                engine.check(lang.name(), &source).map_err(|e| RedisError::String(format!("ERR package '{name}': {e}")))?;
                engine
                    .packages
                    .load(Package { name, language: lang.name().to_string(), source, builtin: false }, replace)
                    .map_err(err)?;
                ctx.replicate_verbatim();
                Ok(RedisValue::SimpleStringStatic("OK"))
            }
            "LIST" => {
                if args.len() != 2 {
                    return Err(RedisError::String(format!("ERR wrong number of arguments; usage: {USAGE}")));
                }
                let list: Vec<Value> = engine
                    .packages
                    .all()
                    .into_iter()
                    .map(|p| {
                        let importers = engine.sessions.importers(Some(&p.language), &p.name);
                        Value::Map(vec![
                            (Value::str("name"), Value::String(p.name)),
                            (Value::str("language"), Value::String(p.language)),
                            (Value::str("builtin"), Value::Bool(p.builtin)),
                            (Value::str("importedBy"), Value::Array(importers.into_iter().map(Value::String).collect())),
                        ])
                    })
                    .collect();
                reply::reply(ctx, &Value::Array(list));
                replied()
            }
            "DELETE" => {
                if args.len() != 3 {
                    return Err(RedisError::String(format!("ERR wrong number of arguments; usage: {USAGE}")));
                }
                let name = text(&args[2], "the package name")?;
                let importers = engine.sessions.importers(None, &name);
                engine.packages.delete(None, &name, &importers).map_err(err)?;
                ctx.replicate_verbatim();
                Ok(RedisValue::SimpleStringStatic("OK"))
            }
            "" => Err(RedisError::String(format!("ERR wrong number of arguments; usage: {USAGE}"))),
            other => Err(RedisError::String(format!("ERR unknown subcommand '{other}'; usage: {USAGE}"))),
        }
    })
}
