//! The messages shards exchange over the cluster bus, decoded by
//! `engine::cluster::message::decode`: any payload decodes or fails without panicking (a
//! malformed message from the bus is an error to log, never a crash); a message that
//! decodes encodes to bytes that decode to the same message and encode to the same bytes
//! again; and what decodes is what the payload says.
//!
//! The first byte picks the input: raw bytes as the payload (0 mod 3), a value shaped like
//! a message (an array whose first item is a kind, fields mostly of their type), encoded
//! with `engine::codec` behind the version byte (1 mod 3), so the fuzzer reaches the checks
//! of each kind and field and not only the codec's; or a `Message` built directly, which
//! must survive encode/decode unchanged (2 mod 3).
#![no_main]
use engine::cluster::message::{decode, encode, Message, Query, Start, VERSION};
use engine::Value;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rg_fuzz::Gen;

const KINDS: &[&str] = &["start", "started", "records", "end", "got", "missing", "alive", "failed", "drop", "abort", "query", "reply"];
const WORDS: &[&str] = &["start", "started", "records", "end", "got", "missing", "alive", "failed", "drop", "abort", "query", "reply", "execution", "registrations", "custom", "lua", "js", "default", "0123456789abcdef0123456789abcdef01234567-1"];
const GEN: Gen = Gen { words: WORDS, max_depth: 3, exotic: false, unique_keys: false };

/// A field of the usual type most of the time, any value sometimes.
fn field(u: &mut Unstructured, ty: &str) -> Result<Value> {
    if u.ratio(1, 8)? {
        return GEN.value(u, 1);
    }
    let list = |u: &mut Unstructured, f: &dyn Fn(&mut Unstructured) -> Result<Value>| -> Result<Value> {
        let mut items = Vec::new();
        while items.len() < 8 && u.arbitrary::<bool>()? {
            items.push(f(u)?);
        }
        Ok(Value::Array(items))
    };
    Ok(match ty {
        "s" => Value::String(GEN.text(u)?),
        "opt" => if u.arbitrary()? { Value::String(GEN.text(u)?) } else { Value::Nil },
        "int" => Value::Int(if u.ratio(3, 4)? { u.int_in_range(0..=20)? } else { GEN.int(u)? }),
        "u64" => Value::Bytes(if u.ratio(7, 8)? { u.arbitrary::<u64>()?.to_le_bytes().to_vec() } else { u.arbitrary()? }),
        "bytes" => if u.arbitrary()? { Value::Bytes(u.arbitrary()?) } else { Value::String(GEN.text(u)?) },
        "bool" => Value::Bool(u.arbitrary()?),
        "strings" => list(u, &|u| Ok(Value::String(GEN.text(u)?)))?,
        "ints" => list(u, &|u| Ok(Value::Int(u.int_in_range(-2..=20)?)))?,
        "args" => list(u, &|u| Ok(Value::Bytes(u.arbitrary()?)))?,
        "values" => list(u, &|u| GEN.value(u, 2))?,
        "query" => {
            let q = *u.choose(&["execution", "registrations", "custom", "other"])?;
            let tys: &[&str] = match q {
                "execution" => &["s", "opt", "bool"],
                "registrations" => &["opt", "bool"],
                "custom" => &["s", "values"],
                _ => &[],
            };
            let mut items = vec![Value::String(q.to_string())];
            for t in tys {
                items.push(field(u, t)?);
            }
            Value::Array(items)
        }
        "answer" => {
            if u.arbitrary()? {
                Value::Array(vec![Value::Bool(true), GEN.value(u, 1)?])
            } else {
                Value::Array(vec![Value::Bool(false), Value::String(GEN.text(u)?)])
            }
        }
        _ => GEN.value(u, 1)?,
    })
}

/// A payload shaped like a message of a random kind.
fn shaped(data: &[u8]) -> Result<Vec<u8>> {
    let mut u = Unstructured::new(data);
    let kind = *u.choose(KINDS)?;
    let tys: &[&str] = match kind {
        "start" => &["s", "s", "s", "s", "args", "opt", "int", "opt", "strings", "u64", "u64"],
        "records" => &["s", "int", "int", "bytes"],
        "end" => &["s", "int", "int", "strings"],
        "got" => &["s", "int"],
        "missing" => &["s", "int", "ints"],
        "failed" => &["s", "s"],
        "query" => &["u64", "query"],
        "reply" => &["u64", "answer"],
        _ => &["s"],
    };
    let mut items = vec![Value::String(kind.to_string())];
    for t in tys {
        items.push(field(&mut u, t)?);
    }
    // Sometimes a field too many or too few.
    match u.int_in_range(0..=15u8)? {
        0 => items.push(GEN.value(&mut u, 1)?),
        1 => {
            items.pop();
        }
        _ => {}
    }
    let mut out = vec![if u.ratio(15, 16)? { VERSION } else { u.arbitrary()? }];
    out.extend(engine::codec::encode(&Value::Array(items)).map_err(|_| libfuzzer_sys::arbitrary::Error::IncorrectFormat)?);
    Ok(out)
}

fn text(u: &mut Unstructured) -> Result<String> {
    GEN.text(u)
}

fn strings(u: &mut Unstructured) -> Result<Vec<String>> {
    let mut v = Vec::new();
    while v.len() < 8 && u.arbitrary::<bool>()? {
        v.push(text(u)?);
    }
    Ok(v)
}

/// A message built directly.
fn message(u: &mut Unstructured) -> Result<Message> {
    let opt = |u: &mut Unstructured| -> Result<Option<String>> { Ok(if u.arbitrary()? { Some(text(u)?) } else { None }) };
    Ok(match u.int_in_range(0..=13u8)? {
        0 => Message::Start(Start {
            exec: text(u)?,
            initiator: text(u)?,
            language: text(u)?,
            source: text(u)?,
            args: u.arbitrary()?,
            user: opt(u)?,
            db: u.arbitrary()?,
            description: opt(u)?,
            participants: strings(u)?,
            topology: u.arbitrary()?,
            plan: u.arbitrary()?,
        }),
        1 => Message::Started { exec: text(u)? },
        2 => Message::Records { exec: text(u)?, boundary: u.arbitrary()?, seq: u.arbitrary()?, records: u.arbitrary()? },
        3 => Message::End { exec: text(u)?, boundary: u.arbitrary()?, batches: u.arbitrary()?, errors: strings(u)? },
        4 => Message::Got { exec: text(u)?, boundary: u.arbitrary()? },
        5 => Message::Missing { exec: text(u)?, boundary: u.arbitrary()?, seqs: u.arbitrary()? },
        6 => Message::Alive { exec: text(u)? },
        7 => Message::Failed { exec: text(u)?, error: text(u)? },
        8 => Message::Drop { exec: text(u)? },
        9 => Message::Abort { exec: text(u)? },
        10 => Message::Query { id: u.arbitrary()?, query: Query::Execution { exec: text(u)?, user: opt(u)?, admin: u.arbitrary()? } },
        11 => Message::Query { id: u.arbitrary()?, query: Query::Registrations { user: opt(u)?, admin: u.arbitrary()? } },
        12 => {
            let mut args = Vec::new();
            while args.len() < 8 && u.arbitrary::<bool>()? {
                args.push(GEN.value(u, 1)?);
            }
            Message::Query { id: u.arbitrary()?, query: Query::Custom { name: text(u)?, args } }
        }
        _ => Message::Reply { id: u.arbitrary()?, answer: if u.arbitrary()? { Ok(GEN.value(u, 0)?) } else { Err(text(u)?) } },
    })
}

/// NaN is not equal to itself: a message holding one is only checked not to panic.
fn has_nan(m: &Message) -> bool {
    format!("{m:?}").contains("NaN")
}

/// Decodes, re-encodes and decodes again: the same message and the same bytes.
fn round_trip(m: &Message) {
    let bytes = encode(m).expect("a message that decoded (or was built from values) encodes");
    let again = decode(&bytes).unwrap_or_else(|e| panic!("an encoded message decodes: {e}; {m:?}"));
    if !has_nan(m) {
        assert_eq!(&again, m);
    }
    assert_eq!(encode(&again).expect("encodes again"), bytes, "encoding is stable");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(m) = decode(rest) {
                round_trip(&m);
            }
        }
        1 => {
            let Ok(payload) = shaped(rest) else { return };
            let Ok(m) = decode(&payload) else { return };
            round_trip(&m);
            // Faithful: the kind decoded is the kind sent, and numbers are not cut to fit.
            let v = engine::codec::decode(&payload[1..]).expect("the payload decoded once");
            let Value::Array(items) = &v else { panic!("decoded from a non-array: {v:?}") };
            let kind = format!("{m:?}").to_ascii_lowercase();
            let Some(Value::String(sent)) = items.first() else { panic!("decoded without a kind: {v:?}") };
            assert!(kind.starts_with(sent.as_str()), "sent {sent}, decoded {m:?}");
            let int = |i: usize| items.get(i).and_then(Value::as_i64);
            match &m {
                Message::Records { boundary, seq, .. } => assert_eq!((int(2), int(3)), (Some(*boundary as i64), Some(*seq as i64))),
                Message::End { boundary, batches, .. } => assert_eq!((int(2), int(3)), (Some(*boundary as i64), Some(*batches as i64))),
                Message::Got { boundary, .. } | Message::Missing { boundary, .. } => assert_eq!(int(2), Some(*boundary as i64)),
                Message::Start(st) => assert_eq!(int(7), Some(st.db as i64)),
                _ => {}
            }
        }
        _ => {
            let mut u = Unstructured::new(rest);
            if let Ok(m) = message(&mut u) {
                round_trip(&m);
            }
        }
    }
});
