//! RG.PACKAGE LOAD | LIST | DELETE: shared recipe packages. Loading and deleting need admin
//! rights: a package runs inside other users' sessions.

use super::{guarded, replied, text};
use crate::{acl, engine, reply};
use engine::{Package, Value};
use redis_module::{Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

const USAGE: &str = "RG.PACKAGE LOAD lua|js <name> <code> [REPLACE] | RG.PACKAGE LIST | RG.PACKAGE DELETE <name>";

fn err(e: impl std::fmt::Display) -> RedisError {
    RedisError::String(format!("ERR {e}"))
}

fn usage() -> RedisError {
    RedisError::String(format!("ERR wrong number of arguments; usage: {USAGE}"))
}

/// Commands from the primary or the AOF: trusted, and the only ones that may name the
/// owner of what they load (`OWNER <user>`).
fn from_primary_or_aof(ctx: &Context) -> bool {
    let flags = ctx.get_flags();
    flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING)
}

pub fn rg_package(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    guarded(ctx, || {
        let sub = args.get(1).map(|a| text(a, "the subcommand")).transpose()?.unwrap_or_default().to_ascii_uppercase();
        let engine = engine();
        // LIST reads; LOAD and DELETE change state, which on a replica only its primary may.
        let flags = ctx.get_flags();
        if sub != "LIST" && flags.contains(ContextFlags::SLAVE) && !from_primary_or_aof(ctx) {
            return Err(RedisError::Str("READONLY You can't write against a read only replica."));
        }
        match sub.as_str() {
            "LOAD" => {
                let caller = acl::require_admin(ctx, "load or delete packages", "packages")?;
                if !(5..=8).contains(&args.len()) {
                    return Err(usage());
                }
                let language = text(&args[2], "the language")?.to_ascii_lowercase();
                let lang = engine.language(&language).map_err(err)?;
                let name = text(&args[3], "the package name")?;
                let source = text(&args[4], "the package code")?;
                let (mut replace, mut owner) = (false, caller.user.clone());
                let mut rest = args[5..].iter();
                while let Some(a) = rest.next() {
                    let option = text(a, "the option")?.to_ascii_uppercase();
                    match option.as_str() {
                        "REPLACE" => replace = true,
                        // The owner recorded by the primary (see the replication below).
                        "OWNER" if from_primary_or_aof(ctx) => owner = Some(text(rest.next().ok_or_else(usage)?, "the owner")?),
                        "OWNER" => return Err(RedisError::Str("ERR OWNER is internal: only the replication stream and the AOF send it")),
                        _ => return Err(RedisError::String(format!("ERR unknown option '{}'; usage: {USAGE}", a.to_string_lossy()))),
                    }
                }
                engine::packages::check_name(&name).map_err(err)?;
                // Sessions importing the package keep the version they imported (pinned by
                // its hash) until they are upgraded: replacing it does not change them.
                engine.check(lang.name(), &source).map_err(|e| RedisError::String(format!("ERR package '{name}': {e}")))?;
                let package = Package::new(lang.name(), &name, source, owner);
                engine.packages.load(package.clone(), replace).map_err(err)?;
                replicate_load(ctx, &package);
                if !from_primary_or_aof(ctx) {
                    // Every primary of a cluster follows.
                    engine.cluster_publish(false);
                }
                Ok(RedisValue::SimpleStringStatic("OK"))
            }
            "LIST" => {
                if args.len() != 2 {
                    return Err(usage());
                }
                acl::require_user(ctx, "RG.PACKAGE LIST", acl::FUNCTION_LIST, 2)?;
                let opt = |v: Option<String>| v.map(Value::String).unwrap_or(Value::Nil);
                let list: Vec<Value> = engine
                    .packages
                    .all()
                    .into_iter()
                    .map(|p| {
                        let importers = engine.sessions.importers(Some(&p.language), &p.name);
                        Value::Map(vec![
                            (Value::str("name"), Value::String(p.name.clone())),
                            (Value::str("language"), Value::String(p.language.clone())),
                            (Value::str("builtin"), Value::Bool(p.builtin)),
                            (Value::str("owner"), opt(p.owner.clone())),
                            (Value::str("hash"), Value::str(p.hash())),
                            (Value::str("importedBy"), Value::Array(importers.into_iter().map(Value::String).collect())),
                        ])
                    })
                    .collect();
                reply::reply(ctx, &Value::Array(list));
                replied()
            }
            "DELETE" => {
                acl::require_admin(ctx, "load or delete packages", "packages")?;
                if args.len() != 3 {
                    return Err(usage());
                }
                let name = text(&args[2], "the package name")?;
                let importers = engine.sessions.importers(None, &name);
                engine.packages.delete(None, &name, &importers).map_err(err)?;
                ctx.replicate_verbatim();
                if !from_primary_or_aof(ctx) {
                    engine.cluster_publish(false);
                }
                Ok(RedisValue::SimpleStringStatic("OK"))
            }
            "" => Err(usage()),
            other => Err(RedisError::String(format!("ERR unknown subcommand '{other}'; usage: {USAGE}"))),
        }
    })
}

/// Sends a loaded package to replicas and the AOF as `RG.PACKAGE LOAD <language> <name>
/// <code> REPLACE [OWNER <user>]`: they record the same owner (OWNER is accepted only from
/// the primary and the AOF), and REPLACE makes them hold what the primary holds whatever
/// they held before.
fn replicate_load(ctx: &Context, p: &Package) {
    let mut args: Vec<&[u8]> = vec![b"LOAD", p.language.as_bytes(), p.name.as_bytes(), p.source.as_bytes(), b"REPLACE"];
    if let Some(owner) = &p.owner {
        args.extend([b"OWNER".as_slice(), owner.as_bytes()]);
    }
    ctx.replicate("RG.PACKAGE", &args[..]);
}
