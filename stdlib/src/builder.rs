//! `GB(reader)`: the plan builder and its steps. Composite steps (`count`, `countBy`,
//! `aggregate`, ...) are defined here once, as sequences of primitive steps.

use crate::args::{self, func, opt_func, opt_usize, wrong};
use engine::{FailPolicy, Func, GroupMode, Mode, NativeOp, Plan, Reader, RegistrationSpec, ScriptError, Step, StreamOptions, Trigger, Value};

pub const READERS: &[&str] = &["KeysReader", "KeysOnlyReader", "StreamReader", "ShardsIDReader", "CommandReader"];

pub const METHODS: &[&str] = &[
    "map", "flatmap", "filter", "foreach", "accumulate", "localGroupBy", "limit", "collect", "repartition",
    "aggregate", "aggregateBy", "groupBy", "batchGroupBy", "count", "countBy", "distinct", "avg", "sort",
    "run", "register",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaderKind {
    Keys,
    KeysOnly,
    Stream,
    ShardsId,
    Command,
}

pub struct Builder {
    pub reader: ReaderKind,
    pub steps: Vec<Step>,
}

pub fn new_builder(args: &[Value]) -> Result<Builder, ScriptError> {
    args::at_most(args, 1, "GB", "GB([reader])")?;
    let name = args::opt_string(args, 0, "GB")?.unwrap_or_else(|| "KeysReader".into());
    let reader = match name.as_str() {
        "KeysReader" => ReaderKind::Keys,
        "KeysOnlyReader" => ReaderKind::KeysOnly,
        "StreamReader" => ReaderKind::Stream,
        "ShardsIDReader" => ReaderKind::ShardsId,
        "CommandReader" => ReaderKind::Command,
        other => {
            return Err(ScriptError::usage(format!("GB: unknown reader '{other}'; expected one of {}", READERS.join(", "))))
        }
    };
    Ok(Builder { reader, steps: Vec::new() })
}

fn native(op: NativeOp) -> Func {
    Func::Native(op)
}

fn zero_int() -> Value {
    Value::Int(0)
}

impl Builder {
    /// Adds the steps of `method` (anything but `run`).
    pub fn add(&mut self, method: &str, a: &[Value]) -> Result<(), ScriptError> {
        let steps: Vec<Step> = match method {
            "map" => {
                args::at_most(a, 1, method, "map(fn)")?;
                vec![Step::Map(func(a, 0, method)?)]
            }
            "flatmap" => {
                args::at_most(a, 1, method, "flatmap(fn)")?;
                vec![Step::FlatMap(func(a, 0, method)?)]
            }
            "filter" => {
                args::at_most(a, 1, method, "filter(fn)")?;
                vec![Step::Filter(func(a, 0, method)?)]
            }
            "foreach" => {
                args::at_most(a, 1, method, "foreach(fn)")?;
                vec![Step::ForEach(func(a, 0, method)?)]
            }
            "accumulate" => {
                args::at_most(a, 1, method, "accumulate(fn)")?;
                vec![Step::Accumulate { f: func(a, 0, method)?, zero: Value::Nil }]
            }
            "localGroupBy" => {
                args::at_most(a, 2, method, "localGroupBy(extractor, reducer)")?;
                vec![Step::LocalGroupBy { extractor: func(a, 0, method)?, reducer: func(a, 1, method)?, zero: Value::Nil, mode: GroupMode::Records }]
            }
            "limit" => {
                args::at_most(a, 2, method, "limit(length, offset)")?;
                let len = opt_usize(a, 0, method)?.ok_or_else(|| wrong(method, 0, "a non-negative integer", a.first()))?;
                let offset = opt_usize(a, 1, method)?.unwrap_or(0);
                // On a cluster each shard keeps its first offset + len, then the initiator
                // applies the limit to what they sent (a single Redis: the same answer).
                vec![Step::Limit { offset: 0, len: offset.saturating_add(len) }, Step::Collect, Step::Limit { offset, len }]
            }
            "collect" => {
                args::at_most(a, 0, method, "collect()")?;
                vec![Step::Collect]
            }
            "repartition" => {
                args::at_most(a, 1, method, "repartition(extractor)")?;
                vec![Step::Repartition(func(a, 0, method)?)]
            }
            "aggregate" => {
                args::at_most(a, 3, method, "aggregate(zero, seqOp, combOp)")?;
                let zero = a.first().cloned().unwrap_or(Value::Nil);
                let (seq, comb) = (func(a, 1, method)?, func(a, 2, method)?);
                vec![Step::Accumulate { f: seq, zero: zero.clone() }, Step::Collect, Step::Accumulate { f: comb, zero }]
            }
            "aggregateBy" => {
                args::at_most(a, 4, method, "aggregateBy(extractor, zero, seqOp, combOp)")?;
                let extractor = func(a, 0, method)?;
                let zero = a.get(1).cloned().unwrap_or(Value::Nil);
                let (seq, comb) = (func(a, 2, method)?, func(a, 3, method)?);
                vec![
                    Step::LocalGroupBy { extractor, reducer: seq, zero: zero.clone(), mode: GroupMode::Records },
                    Step::Repartition(native(NativeOp::RecordKey)),
                    Step::LocalGroupBy { extractor: native(NativeOp::RecordKey), reducer: comb, zero, mode: GroupMode::Values },
                ]
            }
            "groupBy" => {
                args::at_most(a, 2, method, "groupBy(extractor, reducer)")?;
                let (extractor, reducer) = (func(a, 0, method)?, func(a, 1, method)?);
                vec![
                    Step::Repartition(extractor.clone()),
                    Step::LocalGroupBy { extractor, reducer, zero: Value::Nil, mode: GroupMode::Records },
                ]
            }
            "batchGroupBy" => {
                args::at_most(a, 2, method, "batchGroupBy(extractor, batchReducer)")?;
                let (extractor, reducer) = (func(a, 0, method)?, func(a, 1, method)?);
                vec![
                    Step::Repartition(extractor.clone()),
                    Step::LocalGroupBy { extractor, reducer, zero: Value::Nil, mode: GroupMode::Batch },
                ]
            }
            "count" => {
                args::at_most(a, 0, method, "count()")?;
                vec![
                    Step::Accumulate { f: native(NativeOp::Count), zero: zero_int() },
                    Step::Collect,
                    Step::Accumulate { f: native(NativeOp::Sum), zero: zero_int() },
                ]
            }
            "countBy" => {
                args::at_most(a, 1, method, "countBy(extractor)")?;
                let extractor = opt_func(a, 0, method)?.unwrap_or(native(NativeOp::Identity));
                vec![
                    Step::LocalGroupBy { extractor, reducer: native(NativeOp::Count), zero: zero_int(), mode: GroupMode::Records },
                    Step::Repartition(native(NativeOp::RecordKey)),
                    Step::LocalGroupBy { extractor: native(NativeOp::RecordKey), reducer: native(NativeOp::Sum), zero: zero_int(), mode: GroupMode::Values },
                ]
            }
            "distinct" => {
                args::at_most(a, 0, method, "distinct()")?;
                let list = || Step::Accumulate { f: native(NativeOp::Push), zero: Value::Array(vec![]) };
                vec![list(), Step::FlatMap(native(NativeOp::Distinct)), Step::Collect, list(), Step::FlatMap(native(NativeOp::Distinct))]
            }
            "avg" => {
                args::at_most(a, 1, method, "avg(extractor)")?;
                let mut v = Vec::new();
                if let Some(f) = opt_func(a, 0, method)? {
                    v.push(Step::Map(f));
                }
                v.extend([
                    Step::Accumulate { f: native(NativeOp::SumCount), zero: Value::Nil },
                    Step::Collect,
                    Step::Accumulate { f: native(NativeOp::MergeSumCount), zero: Value::Nil },
                    Step::Map(native(NativeOp::Average)),
                ]);
                v
            }
            "sort" => {
                args::at_most(a, 1, method, "sort(reverse)")?;
                let reverse = args::opt_bool(a, 0, method)?.unwrap_or(false);
                vec![
                    Step::Accumulate { f: native(NativeOp::Push), zero: Value::Array(vec![]) },
                    Step::Collect,
                    Step::Accumulate { f: native(NativeOp::Concat), zero: Value::Array(vec![]) },
                    Step::FlatMap(native(NativeOp::Sort { reverse })),
                ]
            }
            other => {
                return Err(ScriptError::usage(format!("unknown step '{other}'; expected one of {}", METHODS.join(", "))))
            }
        };
        self.steps.extend(steps);
        Ok(())
    }

    /// Builds the plan for `run(arg, options)`, and whether it runs on this shard only
    /// (`mode = 'async_local'`).
    pub fn plan(&self, a: &[Value]) -> Result<(Plan, bool), ScriptError> {
        let local;
        let reader = match self.reader {
            ReaderKind::Keys | ReaderKind::KeysOnly => {
                args::at_most(a, 2, "run", "run([pattern], [options])")?;
                let pattern = args::opt_bytes(a, 0, "run")?.unwrap_or_else(|| b"*".to_vec());
                local = run_options(a, 1)?;
                Reader::Keys { pattern, read_value: self.reader == ReaderKind::Keys }
            }
            ReaderKind::Stream => {
                args::at_most(a, 3, "run", "run(stream, [fromId], [options])")?;
                let stream = args::opt_bytes(a, 0, "run")?.ok_or_else(|| wrong("run", 0, "a stream key", a.first()))?;
                // run(stream, options) or run(stream, fromId, options)
                let (from_id, opts_at) = match a.get(1) {
                    Some(Value::Map(_)) => (None, 1),
                    _ => (args::opt_string(a, 1, "run")?, 2),
                };
                local = run_options(a, opts_at)?;
                let from_id = from_id.unwrap_or_else(|| "-".into());
                if from_id != "-" && !valid_stream_id(&from_id) {
                    return Err(ScriptError::usage(format!("run: '{from_id}' is not a stream id; expected '<ms>-<seq>', '<ms>' or '-'")));
                }
                Reader::Stream { stream, from_id }
            }
            ReaderKind::Command => {
                return Err(ScriptError::usage("run: a CommandReader has no data to run over; register() it with a trigger name and fire it with RG.TRIGGER"))
            }
            ReaderKind::ShardsId => {
                args::at_most(a, 1, "run", "run([options])")?;
                local = run_options(a, 0)?;
                Reader::ShardsId
            }
        };
        Ok((Plan { reader, steps: self.steps.clone() }, local))
    }
}

const KEY_TYPES: &[&str] = &["string", "hash", "list", "set", "zset", "stream", "module"];

/// Reads a list of strings option (`eventTypes`, `keyTypes`).
fn string_list(name: &str, v: &Value) -> Result<Vec<String>, ScriptError> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(ScriptError::usage(format!("register: {name} must be a list of strings, found a {}", other.type_name()))),
            })
            .collect(),
        other => Err(ScriptError::usage(format!("register: {name} must be a list of strings, got {}", other.type_name()))),
    }
}

impl Builder {
    /// Builds the registration for `register(options)`.
    pub fn registration(&self, a: &[Value]) -> Result<RegistrationSpec, ScriptError> {
        args::at_most(a, 1, "register", "register([options])")?;
        let known: &[&str] = match self.reader {
            ReaderKind::Keys | ReaderKind::KeysOnly => &["prefix", "eventTypes", "keyTypes", "readValue", "mode", "description"],
            ReaderKind::Command => &["trigger", "hook", "prefix", "mode", "description"],
            ReaderKind::Stream => &["prefix", "batch", "duration", "onFailedPolicy", "onFailedRetryInterval", "trimStream", "mode", "description"],
            ReaderKind::ShardsId => {
                return Err(ScriptError::usage(
                    "register: a ShardsIDReader cannot be registered; registrations are made with KeysReader, KeysOnlyReader, StreamReader or CommandReader",
                ))
            }
        };
        let opts = args::options(a, 0, "register", known)?;
        let text = |name: &str, v: &Value| -> Result<String, ScriptError> {
            match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(ScriptError::usage(format!("register: {name} must be a string, got {}", other.type_name()))),
            }
        };
        let (mut mode, mut description, mut mode_given) = (Mode::Async, None, false);
        let (mut hook, mut prefix_given) = (None, false);
        let (mut prefix, mut event_types, mut key_types, mut read_value, mut trigger) =
            (Vec::new(), None, None, self.reader == ReaderKind::Keys, None);
        let mut stream = StreamOptions { batch: 1, duration_ms: 0, on_failed: FailPolicy::Continue, retry_interval_ms: 5000, trim: true };
        let count = |name: &str, v: &Value, min: i64, max: i64| -> Result<i64, ScriptError> {
            match v {
                Value::Int(n) if (min..=max).contains(n) => Ok(*n),
                Value::Int(n) => Err(ScriptError::usage(format!("register: {name} must be between {min} and {max}, got {n}"))),
                other => Err(ScriptError::usage(format!("register: {name} must be an integer, got {}", other.type_name()))),
            }
        };
        for (name, v) in opts {
            match name.as_str() {
                "mode" => {
                    let m = text("mode", v)?;
                    mode = Mode::parse(&m).ok_or_else(|| ScriptError::usage(format!("register: mode must be 'sync', 'async' or 'async_local', got '{m}'")))?;
                    mode_given = true;
                }
                "description" => description = Some(text("description", v)?),
                "hook" => hook = Some(text("hook", v)?),
                "prefix" => {
                    prefix_given = true;
                    prefix = match v {
                        Value::String(_) | Value::Bytes(_) => v.as_bytes().map(|b| b.into_owned()).unwrap_or_default(),
                        other => return Err(ScriptError::usage(format!("register: prefix must be a string, got {}", other.type_name()))),
                    }
                }
                "eventTypes" => event_types = Some(string_list("eventTypes", v)?),
                "keyTypes" => {
                    let types = string_list("keyTypes", v)?;
                    if let Some(bad) = types.iter().find(|t| !KEY_TYPES.contains(&t.as_str())) {
                        return Err(ScriptError::usage(format!("register: unknown key type '{bad}'; expected one of {}", KEY_TYPES.join(", "))));
                    }
                    key_types = Some(types);
                }
                "readValue" => match v {
                    Value::Bool(b) => read_value = *b,
                    other => return Err(ScriptError::usage(format!("register: readValue must be a boolean, got {}", other.type_name()))),
                },
                "trigger" => trigger = Some(text("trigger", v)?),
                "batch" => stream.batch = count("batch", v, 1, 1_000_000)? as usize,
                "duration" => stream.duration_ms = count("duration", v, 0, 86_400_000)? as u64,
                "onFailedRetryInterval" => stream.retry_interval_ms = count("onFailedRetryInterval", v, 1, 86_400_000)? as u64,
                "onFailedPolicy" => {
                    let p = text("onFailedPolicy", v)?;
                    stream.on_failed = FailPolicy::parse(&p).ok_or_else(|| ScriptError::usage(format!("register: onFailedPolicy must be 'continue', 'abort' or 'retry', got '{p}'")))?;
                }
                "trimStream" => match v {
                    Value::Bool(b) => stream.trim = *b,
                    other => return Err(ScriptError::usage(format!("register: trimStream must be a boolean, got {}", other.type_name()))),
                },
                _ => {}
            }
        }
        let trigger = match self.reader {
            ReaderKind::Command => match (trigger, hook) {
                (Some(_), Some(_)) => return Err(ScriptError::usage("register: give a CommandReader either a trigger or a hook, not both")),
                (None, None) => {
                    return Err(ScriptError::usage(
                        "register: a CommandReader needs a trigger name (register({trigger = 'name'})) or a command to hook (register({hook = 'HSET'}))",
                    ))
                }
                (Some(name), None) => {
                    if name.is_empty() {
                        return Err(ScriptError::usage("register: the trigger name must not be empty"));
                    }
                    if prefix_given {
                        return Err(ScriptError::usage("register: prefix applies to hooks, not to triggers"));
                    }
                    Trigger::Command { name }
                }
                (None, Some(command)) => {
                    let command = command.to_ascii_lowercase();
                    if command.is_empty() || command.starts_with("rg.") || command.contains(' ') {
                        return Err(ScriptError::usage(format!("register: cannot hook '{command}': give the name of an existing Redis command (not an RG.* command)")));
                    }
                    let base = command.split('|').next().unwrap_or_default();
                    if UNHOOKABLE.contains(&base) {
                        return Err(ScriptError::usage(format!("register: cannot hook '{command}': hooking it would break the connection's state or security (see docs/security.md)")));
                    }
                    if mode_given && mode != Mode::Sync {
                        return Err(ScriptError::usage("register: a hook runs inside the command it hooks: mode must be 'sync'"));
                    }
                    mode = Mode::Sync;
                    Trigger::Hook { command, prefix: prefix_given.then_some(prefix) }
                }
            },
            ReaderKind::Stream => {
                if mode == Mode::Sync {
                    return Err(ScriptError::usage("register: a StreamReader runs on workers: mode must be 'async' or 'async_local'"));
                }
                Trigger::Stream { prefix, options: stream }
            }
            _ => Trigger::Keys { prefix, event_types, key_types, read_value },
        };
        Ok(RegistrationSpec { trigger, mode, steps: self.steps.clone(), description })
    }
}

fn valid_stream_id(s: &str) -> bool {
    let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
    ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()
}

/// `{mode = 'async' | 'async_local'}`: true for `async_local` (this shard only). On a
/// single Redis both run the same way.
fn run_options(a: &[Value], i: usize) -> Result<bool, ScriptError> {
    let mut local = false;
    for (name, v) in args::options(a, i, "run", &["mode"])? {
        if name == "mode" {
            let m = v.as_str_lossy().unwrap_or_default();
            if !matches!(m.as_str(), "async" | "async_local") {
                return Err(ScriptError::usage(format!("run: mode must be 'async' or 'async_local', got '{m}'")));
            }
            local = m == "async_local";
        }
    }
    Ok(local)
}

/// Commands no hook may intercept: they authenticate, hold the connection's state (its
/// database, transaction, subscriptions, replication role) or configure and run the server
/// itself, and a hook in their way could read secrets, break transactions or act as
/// another user. Listed in docs/security.md.
pub const UNHOOKABLE: &[&str] = &[
    "auth", "hello", "acl", "multi", "exec", "discard", "watch", "unwatch", "select", "client", "reset", "quit", "module", "config", "shutdown", "debug", "monitor",
    "sync", "psync", "replconf", "replicaof", "slaveof", "failover", "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
    "readonly", "readwrite", "asking", "cluster", "function", "script", "eval", "eval_ro", "evalsha", "evalsha_ro", "fcall", "fcall_ro", "save", "bgsave",
    "bgrewriteaof",
];
