//! What fires a registration: the trigger kinds and their options.

use crate::Value;

/// Where a registration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the thread that made the write, inside the command that caused the event: its
    /// writes are part of that command (replicated and in the AOF with it).
    Sync,
    /// On a worker, after the command returned.
    Async,
    /// As `Async` (the difference appears with several shards).
    AsyncLocal,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "sync" => Some(Mode::Sync),
            "async" => Some(Mode::Async),
            "async_local" => Some(Mode::AsyncLocal),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::AsyncLocal => "async_local",
        }
    }
}

/// What a StreamReader registration does when a batch fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPolicy {
    /// Count the failure, move on to the next batch.
    Continue,
    /// Pause the registration (RG.UNPAUSEREGISTRATIONS resumes it from the failed batch).
    Abort,
    /// Run the same batch again after `retry_interval_ms`, until it succeeds.
    Retry,
}

impl FailPolicy {
    pub fn parse(s: &str) -> Option<FailPolicy> {
        match s {
            "continue" => Some(FailPolicy::Continue),
            "abort" => Some(FailPolicy::Abort),
            "retry" => Some(FailPolicy::Retry),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            FailPolicy::Continue => "continue",
            FailPolicy::Abort => "abort",
            FailPolicy::Retry => "retry",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamOptions {
    /// Most entries per run of the steps.
    pub batch: usize,
    /// How long a partial batch may wait to fill (0: run at once).
    pub duration_ms: u64,
    pub on_failed: FailPolicy,
    pub retry_interval_ms: u64,
    /// Trim the processed entries from the stream.
    pub trim: bool,
}

/// What fires a registration.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// Keyspace events on keys starting with `prefix`.
    Keys {
        prefix: Vec<u8>,
        /// Event names (`hset`, `del`, `expired`, ...); None = every event.
        event_types: Option<Vec<String>>,
        /// Key types (`hash`, `string`, ...); None = every type.
        key_types: Option<Vec<String>>,
        read_value: bool,
    },
    /// `RG.TRIGGER <name> [args...]`.
    Command { name: String },
    /// Entries added to streams whose key starts with `prefix`, read in batches.
    Stream { prefix: Vec<u8>, options: StreamOptions },
    /// Calls of an existing command (lower case), optionally only when its first key
    /// argument starts with `prefix`.
    Hook { command: String, prefix: Option<Vec<u8>> },
    /// A recipe (write-behind, write-through) on hashes whose key starts with `prefix`: the
    /// module captures their changes and applies them to a target; `options` are the
    /// recipe's options as the script gave them (checked when registered).
    Recipe { kind: String, name: String, prefix: Vec<u8>, options: Value },
}

impl Trigger {
    pub fn reader(&self) -> &'static str {
        match self {
            Trigger::Keys { read_value: true, .. } => "KeysReader",
            Trigger::Keys { read_value: false, .. } => "KeysOnlyReader",
            Trigger::Command { .. } => "CommandReader",
            Trigger::Stream { .. } => "StreamReader",
            Trigger::Hook { .. } => "CommandReader",
            Trigger::Recipe { .. } => "Recipe",
        }
    }

    /// Does a call of `command` (lower case) with first argument `first` fire this hook?
    pub fn matches_hook(&self, command: &str, first: Option<&[u8]>) -> bool {
        match self {
            Trigger::Hook { command: c, prefix } => c == command && prefix.as_ref().is_none_or(|p| first.is_some_and(|f| f.starts_with(p))),
            _ => false,
        }
    }

    pub fn stream_options(&self) -> Option<&StreamOptions> {
        match self {
            Trigger::Stream { options, .. } => Some(options),
            _ => None,
        }
    }

    pub fn stream_prefix(&self) -> Option<&[u8]> {
        match self {
            Trigger::Stream { prefix, .. } => Some(prefix),
            _ => None,
        }
    }

    /// Does a keyspace event on `key` fire this trigger? The key's type is asked for only
    /// when the prefix and event match and the trigger filters on types: an event nothing
    /// waits for opens no key.
    pub fn matches_key(&self, event: &str, key: &[u8], key_type: &mut dyn FnMut() -> String) -> bool {
        match self {
            Trigger::Keys { prefix, event_types, key_types, .. } => {
                key.starts_with(prefix)
                    && event_types.as_ref().is_none_or(|e| e.iter().any(|x| x == event))
                    && key_types.as_ref().is_none_or(|t| {
                        let kt = key_type();
                        t.iter().any(|x| *x == kt)
                    })
            }
            Trigger::Command { .. } | Trigger::Stream { .. } | Trigger::Hook { .. } | Trigger::Recipe { .. } => false,
        }
    }

    /// The arguments as `RG.DUMPREGISTRATIONS` shows them.
    pub fn args(&self) -> Value {
        let list = |v: &Option<Vec<String>>| match v {
            None => Value::Nil,
            Some(v) => Value::Array(v.iter().map(|s| Value::String(s.clone())).collect()),
        };
        match self {
            Trigger::Keys { prefix, event_types, key_types, read_value } => Value::Map(vec![
                (Value::str("prefix"), Value::from_bytes(prefix.clone())),
                (Value::str("eventTypes"), list(event_types)),
                (Value::str("keyTypes"), list(key_types)),
                (Value::str("readValue"), Value::Bool(*read_value)),
            ]),
            Trigger::Command { name } => Value::Map(vec![(Value::str("trigger"), Value::String(name.clone()))]),
            Trigger::Hook { command, prefix } => Value::Map(vec![
                (Value::str("hook"), Value::String(command.clone())),
                (Value::str("prefix"), prefix.clone().map(Value::from_bytes).unwrap_or(Value::Nil)),
            ]),
            Trigger::Stream { prefix, options: o } => Value::Map(vec![
                (Value::str("prefix"), Value::from_bytes(prefix.clone())),
                (Value::str("batch"), Value::Int(o.batch as i64)),
                (Value::str("duration"), Value::Int(o.duration_ms as i64)),
                (Value::str("onFailedPolicy"), Value::str(o.on_failed.as_str())),
                (Value::str("onFailedRetryInterval"), Value::Int(o.retry_interval_ms as i64)),
                (Value::str("trimStream"), Value::Bool(o.trim)),
            ]),
            Trigger::Recipe { kind, options, .. } => Value::Map(vec![(Value::str("recipe"), Value::String(kind.clone())), (Value::str("options"), options.clone())]),
        }
    }
}

