//! Admission: what the command filter does with a write before it runs. A write to a
//! recipe's keys is refused (its changes could not be captured, or the backlog is full),
//! wrapped in RG.WTRUN (which checks the streams first and turns a failed capture into an
//! error reply), or left alone. The lists of the commands that write recipe keys, and of
//! those that may replace a hash with another type, live here and nowhere else.

use crate::pipeline::Pipeline;
use crate::registry::Recipes;
use crate::spec::Kind;
use std::sync::atomic::Ordering;

/// What the command filter does with a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Refused before it runs, with this error.
    Refuse(String),
    /// Run as RG.WTRUN.
    Wrap,
    /// Left as it is.
    Pass,
}

/// What admission needs to know of the server.
pub struct Server<'a> {
    /// Set while `maxmemory` is on with an `allkeys-*` policy: Redis may then evict a
    /// recipe's stream, losing changes not yet applied.
    pub eviction_policy: Option<&'a str>,
    /// Does the server run post-notification jobs (7.2+, Valkey)?
    pub post_notification_jobs: bool,
}

/// Decides for one command. `args(i)` is its i-th argument, `plain()` whether it is a
/// connected client's, outside MULTI (asked only for a write to a write-behind recipe's
/// keys).
///
/// A write to a recipe's keys is wrapped, except where nothing needs the wrapper: a
/// write-behind (not write-through) write by a plain client with a command that cannot
/// replace a hash with another type. Its capture can only fail if the recipe's stream is
/// not a stream, which the stream's own keyspace events report (the recipe is then
/// `broken`): such writes are refused here, before they are applied.
pub fn admit(r: &Recipes, server: &Server, command: &str, args: &dyn Fn(usize) -> Option<Vec<u8>>, argc: usize, plain: &dyn Fn() -> bool) -> Admission {
    if r.is_empty() {
        return Admission::Pass;
    }
    if matches!(command, "flushall" | "flushdb" | "swapdb") {
        // Without post-notification jobs (7.0) RG.WTRUN records what the flush or swap
        // means for the recipes right after it, in the same MULTI/EXEC for the AOF and
        // replicas.
        return if server.post_notification_jobs { Admission::Pass } else { Admission::Wrap };
    }
    let Some(indexes) = key_indexes(command, argc, args) else { return Admission::Pass };
    // Decided once, for the first recipe key met.
    let mut unwrapped: Option<bool> = None;
    let mut wrap = false;
    for key in indexes.into_iter().filter_map(args) {
        // The filter does not know the client's database: a recipe of any database counts.
        for p in r.matching(None, &key) {
            if !p.primary.load(Ordering::Relaxed) {
                continue;
            }
            let spec = p.spec();
            if let Some(why) = p.broken() {
                return Admission::Refuse(cannot_capture(&p, &why));
            }
            if let Some(policy) = server.eviction_policy {
                let why = format!("maxmemory-policy is {policy}, under which Redis may evict its stream and lose changes not yet applied (use noeviction or a volatile-* policy)");
                return Admission::Refuse(cannot_capture(&p, &why));
            }
            let backlog = p.backlog.load(Ordering::Relaxed).max(0) as u64;
            if spec.max_backlog > 0 && backlog >= spec.max_backlog {
                return Admission::Refuse(format!(
                    "ERR write-behind '{}' has {backlog} changes not yet applied to its target (maxBacklog {}): writes to keys under '{}' are refused until it drains",
                    p.name,
                    spec.max_backlog,
                    String::from_utf8_lossy(&spec.prefix)
                ));
            }
            wrap |= spec.kind == Kind::WriteThrough || !*unwrapped.get_or_insert_with(|| plain() && overwrite_indexes(command, argc, args).is_none());
        }
    }
    if wrap {
        Admission::Wrap
    } else {
        Admission::Pass
    }
}

/// The argument indexes of the keys of a write command that recipes capture (None for
/// other commands), given its argument count and its arguments.
pub fn key_indexes(command: &str, argc: usize, arg: &dyn Fn(usize) -> Option<Vec<u8>>) -> Option<Vec<usize>> {
    let positions: &[usize] = match command {
        "hset" | "hsetnx" | "hmset" | "hincrby" | "hincrbyfloat" | "hdel" | "hexpire" | "hpexpire" | "hexpireat" | "hpexpireat" | "hpersist" | "hgetdel" | "hgetex" | "hsetex" | "expire" | "pexpire" | "expireat" | "pexpireat" | "persist" | "restore" | "move" => &[1],
        "rename" | "renamenx" | "copy" => &[1, 2],
        // Every argument is a key.
        "del" | "unlink" => return Some((1..argc).collect()),
        _ => return overwrite_indexes(command, argc, arg),
    };
    Some(positions.iter().copied().filter(|&i| i < argc).collect())
}

/// The argument indexes of the keys a command may overwrite with a value of another type
/// (a hash becoming a string, a set...), None for other commands.
pub fn overwrite_indexes(command: &str, argc: usize, arg: &dyn Fn(usize) -> Option<Vec<u8>>) -> Option<Vec<usize>> {
    let after = |words: &[&[u8]]| -> Option<Vec<usize>> {
        let at = (2..argc).find(|&i| arg(i).is_some_and(|a| words.iter().any(|w| a.eq_ignore_ascii_case(w))))?;
        Some(vec![at + 1]).filter(|_| at + 1 < argc)
    };
    let positions: Vec<usize> = match command {
        "set" | "setex" | "psetex" | "getset" | "sunionstore" | "sinterstore" | "sdiffstore" | "zunionstore" | "zinterstore" | "zdiffstore" | "zrangestore" | "geosearchstore" | "restore" | "copy" => vec![1],
        "rename" => vec![2],
        "bitop" => vec![2],
        "mset" => (1..argc).step_by(2).collect(),
        "sort" => after(&[b"store"])?,
        "georadius" | "georadiusbymember" => after(&[b"store", b"storedist"])?,
        _ => return None,
    };
    Some(positions.into_iter().filter(|&i| i < argc).collect())
}

/// The error of a write refused because its changes cannot be captured.
pub fn cannot_capture(p: &Pipeline, why: &str) -> String {
    format!(
        "ERR write-behind '{}' cannot capture changes: {why}; writes to keys under '{}' are refused so that none is acknowledged without being captured",
        p.name,
        String::from_utf8_lossy(&p.spec().prefix)
    )
}


#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(w: &'a [&'a str]) -> impl Fn(usize) -> Option<Vec<u8>> + 'a {
        move |i| w.get(i).map(|a| a.as_bytes().to_vec())
    }

    fn keys(w: &[&str]) -> Option<Vec<usize>> {
        key_indexes(&w[0].to_ascii_lowercase(), w.len(), &words(w))
    }

    #[test]
    fn the_keys_a_write_touches() {
        assert_eq!(keys(&["hset", "h", "f", "v"]), Some(vec![1]));
        assert_eq!(keys(&["del", "a", "b", "c"]), Some(vec![1, 2, 3]));
        assert_eq!(keys(&["rename", "a", "b"]), Some(vec![1, 2]));
        assert_eq!(keys(&["mset", "a", "1", "b", "2"]), Some(vec![1, 3]));
        assert_eq!(keys(&["sort", "l", "BY", "x", "STORE", "dst"]), Some(vec![5]));
        assert_eq!(keys(&["sort", "l"]), None);
        assert_eq!(keys(&["georadius", "g", "0", "0", "1", "km", "STOREDIST", "d"]), Some(vec![7]));
        assert_eq!(keys(&["get", "h"]), None);
        // A key index past the arguments given is not one.
        assert_eq!(keys(&["hset"]), Some(vec![]));
    }

    #[test]
    fn only_commands_that_may_replace_a_hash_overwrite() {
        let over = |w: &[&str]| overwrite_indexes(w[0], w.len(), &words(w));
        assert_eq!(over(&["set", "k", "v"]), Some(vec![1]));
        assert_eq!(over(&["rename", "a", "b"]), Some(vec![2]));
        assert_eq!(over(&["bitop", "and", "dst", "a"]), Some(vec![2]));
        assert_eq!(over(&["hset", "h", "f", "v"]), None);
        assert_eq!(over(&["del", "h"]), None);
    }

    #[test]
    fn nothing_to_admit_without_recipes() {
        let r = Recipes::default();
        let server = Server { eviction_policy: Some("allkeys-lru"), post_notification_jobs: false };
        let w = ["flushall"];
        assert_eq!(admit(&r, &server, "flushall", &words(&w), 1, &|| true), Admission::Pass);
        let w = ["hset", "user:1", "f", "v"];
        assert_eq!(admit(&r, &server, "hset", &words(&w), 4, &|| panic!("not asked without recipes")), Admission::Pass);
    }
}
