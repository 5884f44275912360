//! The messages shards exchange, and their encoding. Every message is one codec `Value`
//! (an array whose first item names the kind) behind a version byte; `decode` checks the
//! shape and never panics, so a malformed message is an error to log, not a crash.

use crate::codec::{self, CodecError};
use crate::Value;

/// First byte of every message: a node running another version of the protocol is
/// recognised rather than misread.
pub const VERSION: u8 = 1;

/// What one shard asks of (or tells) another.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Initiator → every other primary: run your part of the execution.
    Start(Start),
    /// The part was started (or already runs): stop re-sending `Start`.
    Started { exec: String },
    /// Records crossing boundary `boundary`, batch number `seq` of the sender; `records` is
    /// a codec-encoded array, decoded by the receiving part off the main thread.
    Records { exec: String, boundary: u32, seq: u32, records: Vec<u8> },
    /// The sender finished boundary `boundary` after `batches` batches; `errors` are its
    /// per-record errors so far (sent with the last boundary only).
    End { exec: String, boundary: u32, batches: u32, errors: Vec<String> },
    /// The receiver has every batch of `boundary` from the sender.
    Got { exec: String, boundary: u32 },
    /// The receiver lacks these batches of `boundary` (lost on a broken link): send again.
    Missing { exec: String, boundary: u32, seqs: Vec<u32> },
    /// The sender works on `exec` (sent while it computes, so that silence means trouble).
    Alive { exec: String },
    /// The sender's part is over (it sent all it had): its silence from now on is normal.
    Finished { exec: String },
    /// The sender's part failed, or it gives up on the execution: every part stops.
    Failed { exec: String, error: String },
    /// Drop the finished part (RG.DROPEXECUTION on any shard).
    Drop { exec: String },
    /// Abort the part (RG.ABORTEXECUTION on any shard).
    Abort { exec: String },
    /// A question to every shard (see `Query`); answered by `Reply` with the same id.
    Query { id: u64, query: Query },
    Reply { id: u64, answer: Result<Value, String> },
}

/// What a shard is asked to report or do, answered with a `Value` or an error.
#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    /// This shard's part of an execution (RG.GETEXECUTION id CLUSTER). `user` asks.
    Execution { exec: String, user: Option<String>, admin: bool },
    /// This shard's registrations (RG.DUMPREGISTRATIONS CLUSTER).
    Registrations { user: Option<String>, admin: bool },
    /// Another request the module defines (registration changes, catch-up): a name and
    /// its arguments, handled by the module's query handler.
    Custom { name: String, args: Vec<Value> },
}

/// Everything a shard needs to run its part: the script (run again there in
/// plan-building mode) and what the initiator saw, to check it builds the same plan over
/// the same cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Start {
    pub exec: String,
    pub initiator: String,
    pub language: String,
    pub source: String,
    pub args: Vec<Vec<u8>>,
    pub user: Option<String>,
    pub db: u32,
    pub description: Option<String>,
    /// The primaries taking part, sorted by id.
    pub participants: Vec<String>,
    /// `Topology::fingerprint` the initiator saw.
    pub topology: u64,
    /// `plan_fingerprint` of the plan the initiator's run built.
    pub plan: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {0}, this module speaks {VERSION}")]
    Version(u8),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unknown message kind '{0}'")]
    Unknown(String),
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn int(n: u64) -> Value {
    Value::Int(n as i64)
}

fn opt(v: &Option<String>) -> Value {
    v.as_ref().map(|x| s(x)).unwrap_or(Value::Nil)
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().map(|x| s(x)).collect())
}

pub fn encode(m: &Message) -> Result<Vec<u8>, CodecError> {
    let v = match m {
        Message::Start(st) => Value::Array(vec![
            s("start"),
            s(&st.exec),
            s(&st.initiator),
            s(&st.language),
            s(&st.source),
            Value::Array(st.args.iter().map(|a| Value::Bytes(a.clone())).collect()),
            opt(&st.user),
            int(st.db as u64),
            opt(&st.description),
            strings(&st.participants),
            Value::Bytes(st.topology.to_le_bytes().to_vec()),
            Value::Bytes(st.plan.to_le_bytes().to_vec()),
        ]),
        Message::Started { exec } => Value::Array(vec![s("started"), s(exec)]),
        Message::Records { exec, boundary, seq, records } => {
            Value::Array(vec![s("records"), s(exec), int(*boundary as u64), int(*seq as u64), Value::Bytes(records.clone())])
        }
        Message::End { exec, boundary, batches, errors } => {
            Value::Array(vec![s("end"), s(exec), int(*boundary as u64), int(*batches as u64), strings(errors)])
        }
        Message::Got { exec, boundary } => Value::Array(vec![s("got"), s(exec), int(*boundary as u64)]),
        Message::Missing { exec, boundary, seqs } => {
            Value::Array(vec![s("missing"), s(exec), int(*boundary as u64), Value::Array(seqs.iter().map(|q| int(*q as u64)).collect())])
        }
        Message::Alive { exec } => Value::Array(vec![s("alive"), s(exec)]),
        Message::Finished { exec } => Value::Array(vec![s("finished"), s(exec)]),
        Message::Failed { exec, error } => Value::Array(vec![s("failed"), s(exec), s(error)]),
        Message::Drop { exec } => Value::Array(vec![s("drop"), s(exec)]),
        Message::Abort { exec } => Value::Array(vec![s("abort"), s(exec)]),
        Message::Query { id, query } => {
            let q = match query {
                Query::Execution { exec, user, admin } => Value::Array(vec![s("execution"), s(exec), opt(user), Value::Bool(*admin)]),
                Query::Registrations { user, admin } => Value::Array(vec![s("registrations"), opt(user), Value::Bool(*admin)]),
                Query::Custom { name, args } => Value::Array(vec![s("custom"), s(name), Value::Array(args.clone())]),
            };
            Value::Array(vec![s("query"), Value::Bytes(id.to_le_bytes().to_vec()), q])
        }
        Message::Reply { id, answer } => {
            let a = match answer {
                Ok(v) => Value::Array(vec![Value::Bool(true), v.clone()]),
                Err(e) => Value::Array(vec![Value::Bool(false), s(e)]),
            };
            Value::Array(vec![s("reply"), Value::Bytes(id.to_le_bytes().to_vec()), a])
        }
    };
    let mut out = vec![VERSION];
    out.extend(codec::encode(&v)?);
    Ok(out)
}

/// The execution a message is about, if any (cheap routing without a full decode is not
/// needed: messages other than `Records` are small).
pub fn decode(buf: &[u8]) -> Result<Message, MessageError> {
    let (&version, body) = buf.split_first().ok_or(MessageError::Empty)?;
    if version != VERSION {
        return Err(MessageError::Version(version));
    }
    let Value::Array(items) = codec::decode(body)? else { return Err(MessageError::Malformed("top-level")) };
    let kind = match items.first() {
        Some(Value::String(k)) => k.clone(),
        _ => return Err(MessageError::Malformed("kind")),
    };
    let k: &'static str = match kind.as_str() {
        "start" => "start",
        "started" => "started",
        "records" => "records",
        "end" => "end",
        "got" => "got",
        "missing" => "missing",
        "alive" => "alive",
        "finished" => "finished",
        "failed" => "failed",
        "drop" => "drop",
        "abort" => "abort",
        "query" => "query",
        "reply" => "reply",
        _ => return Err(MessageError::Unknown(kind.chars().take(32).collect())),
    };
    let bad = || MessageError::Malformed(k);
    let f = Fields { items: &items, bad: &bad };
    Ok(match k {
        "start" => {
            f.len(12)?;
            Message::Start(Start {
                exec: f.string(1)?,
                initiator: f.string(2)?,
                language: f.string(3)?,
                source: f.string(4)?,
                args: f.array(5)?.iter().map(|a| a.as_bytes().map(|b| b.into_owned()).ok_or_else(bad)).collect::<Result<_, _>>()?,
                user: f.opt_string(6)?,
                db: f.u32(7)?,
                description: f.opt_string(8)?,
                participants: f.strings(9)?,
                topology: f.u64_bytes(10)?,
                plan: f.u64_bytes(11)?,
            })
        }
        "started" => {
            f.len(2)?;
            Message::Started { exec: f.string(1)? }
        }
        "records" => {
            f.len(5)?;
            Message::Records { exec: f.string(1)?, boundary: f.u32(2)?, seq: f.u32(3)?, records: f.bytes(4)? }
        }
        "end" => {
            f.len(5)?;
            Message::End { exec: f.string(1)?, boundary: f.u32(2)?, batches: f.u32(3)?, errors: f.strings(4)? }
        }
        "got" => {
            f.len(3)?;
            Message::Got { exec: f.string(1)?, boundary: f.u32(2)? }
        }
        "missing" => {
            f.len(4)?;
            let seqs = f.array(3)?.iter().map(|q| q.as_i64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)).collect::<Result<_, _>>()?;
            Message::Missing { exec: f.string(1)?, boundary: f.u32(2)?, seqs }
        }
        "alive" => {
            f.len(2)?;
            Message::Alive { exec: f.string(1)? }
        }
        "finished" => {
            f.len(2)?;
            Message::Finished { exec: f.string(1)? }
        }
        "failed" => {
            f.len(3)?;
            Message::Failed { exec: f.string(1)?, error: f.string(2)? }
        }
        "drop" => {
            f.len(2)?;
            Message::Drop { exec: f.string(1)? }
        }
        "abort" => {
            f.len(2)?;
            Message::Abort { exec: f.string(1)? }
        }
        "query" => {
            f.len(3)?;
            let Value::Array(q) = &items[2] else { return Err(bad()) };
            let qf = Fields { items: q, bad: &bad };
            let query = match q.first() {
                Some(Value::String(n)) if n == "execution" => {
                    qf.len(4)?;
                    Query::Execution { exec: qf.string(1)?, user: qf.opt_string(2)?, admin: qf.bool(3)? }
                }
                Some(Value::String(n)) if n == "registrations" => {
                    qf.len(3)?;
                    Query::Registrations { user: qf.opt_string(1)?, admin: qf.bool(2)? }
                }
                Some(Value::String(n)) if n == "custom" => {
                    qf.len(3)?;
                    Query::Custom { name: qf.string(1)?, args: qf.array(2)?.to_vec() }
                }
                _ => return Err(bad()),
            };
            Message::Query { id: f.u64_bytes(1)?, query }
        }
        _ => {
            f.len(3)?;
            let Value::Array(a) = &items[2] else { return Err(bad()) };
            let answer = match a.as_slice() {
                [Value::Bool(true), v] => Ok(v.clone()),
                [Value::Bool(false), Value::String(e)] => Err(e.clone()),
                _ => return Err(bad()),
            };
            Message::Reply { id: f.u64_bytes(1)?, answer }
        }
    })
}

struct Fields<'a> {
    items: &'a [Value],
    bad: &'a dyn Fn() -> MessageError,
}

impl Fields<'_> {
    fn len(&self, n: usize) -> Result<(), MessageError> {
        if self.items.len() == n {
            Ok(())
        } else {
            Err((self.bad)())
        }
    }
    fn string(&self, i: usize) -> Result<String, MessageError> {
        match &self.items[i] {
            Value::String(s) => Ok(s.clone()),
            _ => Err((self.bad)()),
        }
    }
    fn opt_string(&self, i: usize) -> Result<Option<String>, MessageError> {
        match &self.items[i] {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err((self.bad)()),
        }
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, MessageError> {
        match &self.items[i] {
            Value::Bytes(b) => Ok(b.clone()),
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            _ => Err((self.bad)()),
        }
    }
    fn u32(&self, i: usize) -> Result<u32, MessageError> {
        self.items[i].as_i64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| (self.bad)())
    }
    fn u64_bytes(&self, i: usize) -> Result<u64, MessageError> {
        let b = self.bytes(i)?;
        let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| (self.bad)())?;
        Ok(u64::from_le_bytes(arr))
    }
    fn bool(&self, i: usize) -> Result<bool, MessageError> {
        match &self.items[i] {
            Value::Bool(b) => Ok(*b),
            _ => Err((self.bad)()),
        }
    }
    fn array(&self, i: usize) -> Result<&[Value], MessageError> {
        match &self.items[i] {
            Value::Array(a) => Ok(a),
            _ => Err((self.bad)()),
        }
    }
    fn strings(&self, i: usize) -> Result<Vec<String>, MessageError> {
        self.array(i)?.iter().map(|v| if let Value::String(s) = v { Ok(s.clone()) } else { Err((self.bad)()) }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let b = encode(&m).unwrap();
        assert_eq!(decode(&b).unwrap(), m);
        // Every truncation is an error, never a panic.
        for n in 0..b.len() {
            let _ = decode(&b[..n]);
        }
    }

    #[test]
    fn every_kind_roundtrips() {
        let exec = "abc-1".to_string();
        roundtrip(Message::Start(Start {
            exec: exec.clone(),
            initiator: "n1".into(),
            language: "lua".into(),
            source: "GB():run()".into(),
            args: vec![b"a\0b".to_vec()],
            user: Some("default".into()),
            db: 3,
            description: None,
            participants: vec!["n1".into(), "n2".into()],
            topology: u64::MAX,
            plan: 7,
        }));
        roundtrip(Message::Started { exec: exec.clone() });
        roundtrip(Message::Records { exec: exec.clone(), boundary: 1, seq: 9, records: vec![1, 2, 3] });
        roundtrip(Message::End { exec: exec.clone(), boundary: 1, batches: 3, errors: vec!["x".into()] });
        roundtrip(Message::Got { exec: exec.clone(), boundary: 2 });
        roundtrip(Message::Missing { exec: exec.clone(), boundary: 2, seqs: vec![0, 4] });
        roundtrip(Message::Alive { exec: exec.clone() });
        roundtrip(Message::Finished { exec: exec.clone() });
        roundtrip(Message::Failed { exec: exec.clone(), error: "boom".into() });
        roundtrip(Message::Drop { exec: exec.clone() });
        roundtrip(Message::Abort { exec });
        roundtrip(Message::Query { id: 5, query: Query::Execution { exec: "e".into(), user: None, admin: true } });
        roundtrip(Message::Query { id: 6, query: Query::Registrations { user: Some("u".into()), admin: false } });
        roundtrip(Message::Query { id: 6, query: Query::Custom { name: "prepare".into(), args: vec![Value::Int(1)] } });
        roundtrip(Message::Reply { id: 5, answer: Ok(Value::Int(1)) });
        roundtrip(Message::Reply { id: 5, answer: Err("no".into()) });
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(decode(&[]), Err(MessageError::Empty));
        assert_eq!(decode(&[9, 0]), Err(MessageError::Version(9)));
        let other = encode(&Message::Alive { exec: "e".into() }).unwrap();
        let mut wrong = other.clone();
        wrong[1] = 8; // a map where an array belongs
        assert!(decode(&wrong).is_err());
    }
}
