//! Plans: a reader and the steps its records go through.
//!
//! A plan holds no pointer into an interpreter: script functions are `FnRef`s (positions
//! in the run that built the plan) and built-in functions are `NativeOp`s, so the same
//! plan can be rebuilt wherever the script's source can be run again.

use crate::{FnRef, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Reader {
    /// Keys matching a glob pattern, with their type and (if `read_value`) value.
    Keys { pattern: Vec<u8>, read_value: bool },
    /// Entries of one stream from `from_id` (exclusive of nothing: XRANGE semantics).
    Stream { stream: Vec<u8>, from_id: String },
    /// One record: this shard's id.
    ShardsId,
}

impl Reader {
    pub fn name(&self) -> &'static str {
        match self {
            Reader::Keys { read_value: true, .. } => "KeysReader",
            Reader::Keys { read_value: false, .. } => "KeysOnlyReader",
            Reader::Stream { .. } => "StreamReader",
            Reader::ShardsId => "ShardsIDReader",
        }
    }
}

/// Built-in functions the stdlib composes into steps.
#[derive(Clone, Debug, PartialEq)]
pub enum NativeOp {
    /// (acc, r) -> acc + 1
    Count,
    /// (acc, r) -> acc + r (numbers)
    Sum,
    /// (acc, r) -> acc ++ [r]
    Push,
    /// (acc, r) -> acc ++ r (r is a list)
    Concat,
    /// (acc, r) -> [sum + r, count + 1]
    SumCount,
    /// (acc, r) -> [acc.sum + r.sum, acc.count + r.count]
    MergeSumCount,
    /// [sum, count] -> sum / count
    Average,
    /// r -> r.key
    RecordKey,
    /// r -> r.value
    RecordValue,
    /// list -> list of distinct values, first occurrence kept
    Distinct,
    /// list -> sorted list
    Sort { reverse: bool },
    /// r -> r
    Identity,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Func {
    Script(FnRef),
    Native(NativeOp),
}

/// How `LocalGroupBy` feeds its reducer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupMode {
    /// reducer(k, acc, r) for each record
    Records,
    /// reducer(k, acc, r.value) for each record: combines partial groups ({key, value}
    /// records made by an earlier group step, possibly on other shards)
    Values,
    /// reducer(k, [r1, r2, ...]) once per key, with all of the key's records
    Batch,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// r -> f(r)
    Map(Func),
    /// r -> each element of f(r) (a non-list result is one record)
    FlatMap(Func),
    /// keeps r when f(r) is truthy
    Filter(Func),
    /// calls f(r), keeps r
    ForEach(Func),
    /// acc = f(acc, r) over all records, starting from `zero` (nil if none); emits acc at the end
    Accumulate { f: Func, zero: Value },
    /// per key k = extractor(r): acc_k = reducer(k, acc_k, r) starting from `zero`
    /// (see `GroupMode` for the other ways of reducing); emits {key = k, value = acc_k}
    /// at the end, in first-seen key order
    LocalGroupBy { extractor: Func, reducer: Func, zero: Value, mode: GroupMode },
    /// skips `offset` records and lets `len` through
    Limit { offset: usize, len: usize },
    /// brings records to the initiating shard (a no-op on a single shard)
    Collect,
    /// sends each record to the shard owning `extractor(r)` (a no-op on a single shard)
    Repartition(Func),
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Map(_) => "map",
            Step::FlatMap(_) => "flatmap",
            Step::Filter(_) => "filter",
            Step::ForEach(_) => "foreach",
            Step::Accumulate { .. } => "accumulate",
            Step::LocalGroupBy { .. } => "localGroupBy",
            Step::Limit { .. } => "limit",
            Step::Collect => "collect",
            Step::Repartition(_) => "repartition",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub reader: Reader,
    pub steps: Vec<Step>,
}

impl NativeOp {
    /// Can this op fail? (Those that cannot need no copy of an accumulator kept for the
    /// case they do.)
    pub fn infallible(&self) -> bool {
        matches!(self, NativeOp::Identity | NativeOp::Push | NativeOp::Concat | NativeOp::RecordKey | NativeOp::RecordValue | NativeOp::Distinct | NativeOp::Sort { .. })
    }
}

/// Applies a native op to arguments it only reads: the ops that pick a part of a record
/// copy that part only; the others get a copy of the arguments.
pub fn apply_native_ref(op: &NativeOp, args: &[Value]) -> Result<Value, String> {
    let last = args.last().unwrap_or(&Value::Nil);
    match op {
        NativeOp::Identity => Ok(last.clone()),
        NativeOp::RecordKey => Ok(last.get("key").cloned().unwrap_or(Value::Nil)),
        NativeOp::RecordValue => Ok(last.get("value").cloned().unwrap_or(Value::Nil)),
        _ => apply_native(op, args.to_vec()),
    }
}

/// Applies a native op. `args` are the step's call arguments.
pub fn apply_native(op: &NativeOp, mut args: Vec<Value>) -> Result<Value, String> {
    fn num(v: &Value, what: &str) -> Result<f64, String> {
        v.as_f64().ok_or_else(|| format!("{what}: expected a number, got {} ({v})", v.type_name()))
    }
    fn add(a: &Value, b: &Value, what: &str) -> Result<Value, String> {
        match (a, b) {
            (Value::Nil, b) => add(&Value::Int(0), b, what),
            (Value::Int(x), Value::Int(y)) => Ok(x.checked_add(*y).map(Value::Int).unwrap_or(Value::Double(*x as f64 + *y as f64))),
            _ => {
                let s = num(a, what)? + num(b, what)?;
                Ok(if s.fract() == 0.0 && s.abs() < 9.0e15 { Value::Int(s as i64) } else { Value::Double(s) })
            }
        }
    }
    let last = args.pop().unwrap_or(Value::Nil);
    Ok(match op {
        NativeOp::Identity => last,
        NativeOp::Count => add(&args.pop().unwrap_or(Value::Nil), &Value::Int(1), "count")?,
        NativeOp::Sum => add(&args.pop().unwrap_or(Value::Nil), &last, "sum")?,
        NativeOp::Push => {
            let mut acc = match args.pop() {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            acc.push(last);
            Value::Array(acc)
        }
        NativeOp::Concat => {
            let mut acc = match args.pop() {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            match last {
                Value::Array(items) => acc.extend(items),
                other => acc.push(other),
            }
            Value::Array(acc)
        }
        NativeOp::SumCount => {
            let (s, c) = match args.pop() {
                Some(Value::Array(a)) if a.len() == 2 => (a[0].clone(), a[1].clone()),
                _ => (Value::Int(0), Value::Int(0)),
            };
            Value::Array(vec![add(&s, &last, "avg")?, add(&c, &Value::Int(1), "avg")?])
        }
        NativeOp::MergeSumCount => {
            let (s, c) = match args.pop() {
                Some(Value::Array(a)) if a.len() == 2 => (a[0].clone(), a[1].clone()),
                _ => (Value::Int(0), Value::Int(0)),
            };
            match last {
                Value::Array(a) if a.len() == 2 => Value::Array(vec![add(&s, &a[0], "avg")?, add(&c, &a[1], "avg")?]),
                other => return Err(format!("avg: expected [sum, count], got {other}")),
            }
        }
        NativeOp::Average => match last {
            Value::Array(a) if a.len() == 2 => {
                let c = num(&a[1], "avg")?;
                if c == 0.0 {
                    Value::Nil
                } else {
                    Value::Double(num(&a[0], "avg")? / c)
                }
            }
            Value::Nil => Value::Nil,
            other => return Err(format!("avg: expected [sum, count], got {other}")),
        },
        NativeOp::RecordKey => last.get("key").cloned().unwrap_or(Value::Nil),
        NativeOp::RecordValue => last.get("value").cloned().unwrap_or(Value::Nil),
        NativeOp::Distinct => match last {
            Value::Array(items) => {
                let mut seen = std::collections::HashSet::new();
                Value::Array(items.into_iter().filter(|v| seen.insert(v.group_key())).collect())
            }
            other => other,
        },
        NativeOp::Sort { reverse } => match last {
            Value::Array(mut items) => {
                items.sort_by(|a, b| a.compare(b));
                if *reverse {
                    items.reverse();
                }
                Value::Array(items)
            }
            other => other,
        },
    })
}
