//! The flags of the server's commands, read once at load with `COMMAND`: the command filter
//! needs them to give a hooked command a wrapper with the same `write` / `may-replicate`
//! behaviour (module command flags are fixed when the command is created).

use parking_lot::RwLock;
use redis_module::Context;
use std::collections::HashMap;

/// What a command's flags mean for its wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Neither writes nor replicates (reads, admin, connection commands).
    Plain,
    /// Flagged `write`.
    Write,
    /// Flagged `may_replicate` (PUBLISH, EVAL, FCALL, ...).
    MayReplicate,
}

/// What the filter needs to know of a command.
#[derive(Clone, Copy, Debug)]
struct Info {
    kind: Kind,
    /// Can run inside a wrapper through a module call with the same effect: not blocking
    /// (a module call would not block) and allowed in scripts.
    wrappable: bool,
}

static KINDS: RwLock<Option<HashMap<String, Info>>> = RwLock::new(None);
static LOADED_AT: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);

/// Reads the table again if it is older than a second (a module loaded since may have
/// added commands); cheap to call on a miss.
pub fn refresh(ctx: &Context) {
    let stale = LOADED_AT.lock().is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(1));
    if stale {
        load(ctx);
    }
}

/// Reads every command's flags (`COMMAND`); called once from the module's load.
pub fn load(ctx: &Context) {
    let options = redis_module::CallOptionsBuilder::new().errors_as_replies().resp(redis_module::CallOptionResp::Resp3).build();
    let r: redis_module::CallResult = ctx.call_ext("COMMAND", &options, &[] as &[&str]);
    let Ok(engine::Value::Array(commands)) = crate::reply::from_call(&r) else {
        ctx.log_warning("rg: COMMAND gave no command table; hooked commands keep neutral flags");
        return;
    };
    let mut kinds = HashMap::new();
    for c in commands {
        let engine::Value::Array(info) = c else { continue };
        let (Some(name), Some(engine::Value::Array(flags))) = (info.first(), info.get(2)) else { continue };
        let Some(name) = name.as_bytes().map(|n| String::from_utf8_lossy(&n).to_ascii_lowercase()) else { continue };
        let has = |f: &str| flags.iter().any(|x| x.as_bytes().is_some_and(|b| b.eq_ignore_ascii_case(f.as_bytes())));
        let kind = if has("write") {
            Kind::Write
        } else if has("may_replicate") {
            Kind::MayReplicate
        } else {
            Kind::Plain
        };
        kinds.insert(name, Info { kind, wrappable: !has("blocking") && !has("noscript") });
    }
    *KINDS.write() = Some(kinds);
    *LOADED_AT.lock() = Some(std::time::Instant::now());
}

/// The kind of a command (lower-case name); unknown commands are `Plain`.
pub fn kind(name: &str) -> Kind {
    KINDS.read().as_ref().and_then(|k| k.get(name)).map_or(Kind::Plain, |i| i.kind)
}

/// Can the command run inside a wrapper (a module call) with the same effect?
pub fn wrappable(name: &str) -> bool {
    KINDS.read().as_ref().and_then(|k| k.get(name)).is_some_and(|i| i.wrappable)
}

/// Does the server know this command (lower-case name)? Unknown before `load`.
pub fn exists(name: &str) -> Option<bool> {
    KINDS.read().as_ref().map(|k| k.contains_key(name))
}
