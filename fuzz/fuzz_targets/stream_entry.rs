//! Stream entries, as recipes and stream consumers read them back:
//! - `engine::streams::parse_id`: any text parses or not without panicking, and an id that
//!   parses formats (`format_id`) to text that parses to the same id; every id formats to
//!   text that parses back to it.
//! - `engine::executor::read_stream` turns any XRANGE reply (here: any value) into entries
//!   without panicking, and `stream_record` makes records of them.
//! - `recipes::change::parse_entry` reads any entry (id text and field/value pairs, taken
//!   from that reply the way the write-behind pipeline does, or given directly) without
//!   panicking; a change it reads keeps the id, key and fields of the entry, and writing
//!   it again with `entry_fields` reads back as the same change (a delete drops its fields).
//! - The stream of a key (`stream_key`) belongs to its recipe (`is_stream_of`) and, on a
//!   cluster, is in the key's slot; `dead_letter_key` takes any stream name.
#![no_main]
use engine::executor::{read_stream, stream_record};
use engine::streams::{format_id, parse_id};
use engine::{HostError, LockedHost, Value};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use recipes::change::{dead_letter_key, entry_fields, is_stream_of, parse_entry, slot, stream_key, Op};
use rg_fuzz::Gen;

const WORDS: &[&str] = &["op", "u", "d", "key", "0-0", "1-1", "5", "18446744073709551615-18446744073709551615", "18446744073709551616-0", "1-", "-1", "+1-+2"];
const GEN: Gen = Gen { words: WORDS, max_depth: 4, exotic: false, unique_keys: false };

/// A host whose every command answers `reply`.
struct Reply(Value);

impl LockedHost for Reply {
    fn call(&self, _user: Option<&str>, _args: &[&[u8]]) -> std::result::Result<Value, HostError> {
        Ok(self.0.clone())
    }
}

/// A reply shaped like XRANGE's most of the time: [[id, [f, v, ...]], ...].
fn xrange_reply(u: &mut Unstructured) -> Result<Value> {
    if u.ratio(1, 8)? {
        return GEN.value(u, 0);
    }
    let mut entries = Vec::new();
    while entries.len() < 8 && u.arbitrary::<bool>()? {
        if u.ratio(1, 8)? {
            entries.push(GEN.value(u, 1)?);
            continue;
        }
        let id = if u.arbitrary()? { Value::String(format_id(u.arbitrary()?)) } else { GEN.value(u, 2)? };
        let mut fields = Vec::new();
        if u.ratio(3, 4)? {
            fields.extend([Value::str("op"), Value::str(if u.arbitrary()? { "u" } else { "d" }), Value::str("key"), Value::Bytes(u.arbitrary()?)]);
        }
        while fields.len() < 16 && u.arbitrary::<bool>()? {
            fields.push(if u.arbitrary()? { Value::Bytes(u.arbitrary()?) } else { GEN.value(u, 2)? });
        }
        entries.push(Value::Array(vec![id, Value::Array(fields)]));
    }
    Ok(Value::Array(entries))
}

/// parse_entry, with what must hold of a change it reads.
fn check_entry(id: &str, pairs: &[(Vec<u8>, Vec<u8>)]) {
    let Ok(c) = parse_entry(id, pairs) else { return };
    assert_eq!(Some(c.id), parse_id(id));
    assert!(pairs[0].0 == b"op" && pairs[1].0 == b"key");
    assert_eq!(c.key, pairs[1].1);
    assert_eq!(c.fields.len(), pairs.len() - 2);
    let raw: Vec<(Vec<u8>, Vec<u8>)> = c.fields.iter().map(|(f, v)| (f.clone().into_bytes(), v.clone())).collect();
    let written = entry_fields(c.op, &c.key, &raw);
    let pairs2: Vec<(Vec<u8>, Vec<u8>)> = written.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    let c2 = parse_entry(&format_id(c.id), &pairs2).expect("a written change reads back");
    let mut expected = c;
    if expected.op == Op::Delete {
        expected.fields.clear();
    }
    assert_eq!(c2, expected);
}

fn run(u: &mut Unstructured) -> Result<()> {
    // Ids.
    let text: String = GEN.text(u)?;
    if let Some(id) = parse_id(&text) {
        assert_eq!(parse_id(&format_id(id)), Some(id), "{text:?}");
    }
    let id: (u64, u64) = u.arbitrary()?;
    assert_eq!(parse_id(&format_id(id)), Some(id));

    // Entries given directly.
    let id_text = if u.arbitrary()? { format_id(u.arbitrary()?) } else { GEN.text(u)? };
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if u.ratio(3, 4)? {
        pairs.push((b"op".to_vec(), if u.arbitrary()? { b"u".to_vec() } else { b"d".to_vec() }));
        pairs.push((b"key".to_vec(), u.arbitrary()?));
    }
    pairs.extend(u.arbitrary::<Vec<(Vec<u8>, Vec<u8>)>>()?);
    check_entry(&id_text, &pairs);

    // Entries read from a reply, as the pipeline reads them.
    let stream: Vec<u8> = u.arbitrary()?;
    let reply = Reply(xrange_reply(u)?);
    let entries = read_stream(&reply, None, &stream, &format_id(u.arbitrary()?), u.arbitrary()?, 100).expect("the fake host answers");
    for (id, fields) in entries {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = match &fields {
            Value::Map(m) => m.iter().filter_map(|(k, v)| Some((k.as_bytes()?.into_owned(), v.as_bytes()?.into_owned()))).collect(),
            _ => Vec::new(),
        };
        check_entry(&id, &pairs);
        let _ = stream_record(&stream, id, fields);
    }

    // Stream names.
    let name: String = u.arbitrary::<String>()?.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    let key: Vec<u8> = u.arbitrary()?;
    if !name.is_empty() {
        for cluster in [false, true] {
            let s = stream_key(&name, &key, cluster);
            assert!(is_stream_of(&name, &s));
            if cluster {
                assert_eq!(slot(&s), slot(&key), "{name} {key:?}");
            }
            let _ = dead_letter_key(&s);
        }
    }
    let _ = dead_letter_key(&stream);
    let _ = is_stream_of(&name, &stream);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
