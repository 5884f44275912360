//! Captured changes: how they are named and stored in streams, read back, and coalesced.
//!
//! A recipe `users` keeps its changes in the stream `rg:wb:users` (keys without a hashtag on
//! a server that is not a cluster), or `rg:wb:users:{tag}` for a key with hashtag `{tag}`
//! (and, in a cluster, for a key without one, a tag of the key's slot), so the stream is in
//! the same slot as the key and the capture never leaves the shard. Each entry is
//! `op u|d key <key> [<field> <value> ...]`: the operation, then the full hash after the
//! change (for an upsert), so applying an entry again gives the same row.

use engine::streams::{format_id, parse_id, StreamId};
use std::sync::OnceLock;

pub const STREAM_PREFIX: &str = "rg:wb:";
pub const DEAD_PREFIX: &str = "rg:dead:";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Delete,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub id: StreamId,
    pub key: Vec<u8>,
    pub op: Op,
    /// The hash after the change (upserts).
    pub fields: Vec<(String, Vec<u8>)>,
}

/// The hashtag of a key (the part inside the first `{...}`, if not empty).
pub fn hashtag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The cluster slot of a key.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hashtag(key).unwrap_or(key)) % 16384
}

/// A short tag that hashes to `slot`.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let (mut left, mut n) = (16384, 0u64);
        while left > 0 {
            let t = n.to_string();
            let s = (crc16(t.as_bytes()) % 16384) as usize;
            if tags[s].is_empty() {
                tags[s] = t;
                left -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[slot as usize % 16384]
}

/// The stream that holds the changes of `key` for recipe `name`.
pub fn stream_key(name: &str, key: &[u8], cluster: bool) -> Vec<u8> {
    let mut s = format!("{STREAM_PREFIX}{name}").into_bytes();
    match hashtag(key) {
        Some(tag) => {
            s.extend_from_slice(b":{");
            s.extend_from_slice(tag);
            s.push(b'}');
        }
        None if cluster => s.extend_from_slice(format!(":{{{}}}", slot_tag(slot(key))).as_bytes()),
        None => {}
    }
    s
}

/// Is `stream` one of recipe `name`'s streams?
pub fn is_stream_of(name: &str, stream: &[u8]) -> bool {
    let base = format!("{STREAM_PREFIX}{name}");
    stream == base.as_bytes() || (stream.starts_with(base.as_bytes()) && stream[base.len()..].starts_with(b":{"))
}

/// The dead-letter stream of a change stream (same slot).
pub fn dead_letter_key(stream: &[u8]) -> Vec<u8> {
    let mut s = DEAD_PREFIX.as_bytes().to_vec();
    s.extend_from_slice(&stream[STREAM_PREFIX.len().min(stream.len())..]);
    s
}

/// The arguments of the XADD that records a change (after `XADD <stream> *`).
pub fn entry_fields(op: Op, key: &[u8], fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = vec![b"op".to_vec(), if op == Op::Upsert { b"u".to_vec() } else { b"d".to_vec() }, b"key".to_vec(), key.to_vec()];
    if op == Op::Upsert {
        for (f, v) in fields {
            out.push(f.clone());
            out.push(v.clone());
        }
    }
    out
}

/// Reads a stream entry back; an entry that is not a change is an error.
pub fn parse_entry(id: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Change, String> {
    let id = parse_id(id).ok_or_else(|| format!("bad stream id '{id}'"))?;
    let mut it = fields.iter();
    let op = match it.next() {
        Some((k, v)) if k == b"op" && v == b"u" => Op::Upsert,
        Some((k, v)) if k == b"op" && v == b"d" => Op::Delete,
        _ => return Err(format!("entry {} is not a captured change (it must start with 'op u|d')", format_id(id))),
    };
    let key = match it.next() {
        Some((k, v)) if k == b"key" => v.clone(),
        _ => return Err(format!("entry {} has no 'key' after 'op'", format_id(id))),
    };
    let mut out = Vec::new();
    for (f, v) in it {
        let f = String::from_utf8(f.clone()).map_err(|_| format!("entry {}: a field name is not UTF-8", format_id(id)))?;
        out.push((f, v.clone()));
    }
    Ok(Change { id, key, op, fields: out })
}

/// Keeps the last change of each key (each holds the whole row), ordered by id: applying
/// the result gives the same rows as applying every change in order.
pub fn coalesce(changes: Vec<Change>) -> Vec<Change> {
    let mut last: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        last.insert(c.key.clone(), i);
    }
    changes.into_iter().enumerate().filter(|(i, c)| last.get(&c.key) == Some(i)).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_in_the_slot_of_their_keys() {
        assert_eq!(stream_key("users", b"user:1", false), b"rg:wb:users");
        assert_eq!(stream_key("users", b"user:{eu}:1", false), b"rg:wb:users:{eu}");
        for key in [&b"user:1"[..], b"user:2", b"x", b"user:{eu}:9"] {
            let s = stream_key("users", key, true);
            assert_eq!(slot(&s), slot(key), "{}", String::from_utf8_lossy(&s));
            assert!(is_stream_of("users", &s));
            assert!(!is_stream_of("user", &s));
            assert_eq!(slot(&dead_letter_key(&s)), slot(key));
        }
        assert_eq!(slot(b"123456789"), 12739); // the cluster spec's check value
    }

    #[test]
    fn entries_round_trip_and_coalesce() {
        let f = entry_fields(Op::Upsert, b"user:1", &[(b"a".to_vec(), b"1".to_vec())]);
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = f.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
        let c = parse_entry("5-1", &pairs).unwrap();
        assert_eq!(c, Change { id: (5, 1), key: b"user:1".to_vec(), op: Op::Upsert, fields: vec![("a".into(), b"1".to_vec())] });
        assert!(parse_entry("5-1", &[(b"x".to_vec(), b"y".to_vec())]).is_err());
        let mk = |id: u64, k: &str, op| Change { id: (id, 0), key: k.as_bytes().to_vec(), op, fields: vec![] };
        let out = coalesce(vec![mk(1, "a", Op::Upsert), mk(2, "b", Op::Upsert), mk(3, "a", Op::Delete)]);
        assert_eq!(out, vec![mk(2, "b", Op::Upsert), mk(3, "a", Op::Delete)]);
    }

    /// Applies changes to a model table (key -> row).
    fn apply(table: &mut std::collections::BTreeMap<Vec<u8>, Vec<(String, Vec<u8>)>>, changes: &[Change]) {
        for c in changes {
            match c.op {
                Op::Upsert => {
                    table.insert(c.key.clone(), c.fields.clone());
                }
                Op::Delete => {
                    table.remove(&c.key);
                }
            }
        }
    }

    proptest::proptest! {
        /// Coalescing a batch of full row images gives the same table as applying every
        /// change in order, keeps ids increasing, and leaves one change per key.
        #[test]
        fn coalescing_is_invisible_in_the_result(ops in proptest::collection::vec((0u8..6, proptest::bool::ANY, 0u8..4), 0..60)) {
            let changes: Vec<Change> = ops
                .iter()
                .enumerate()
                .map(|(i, (k, up, v))| Change {
                    id: (i as u64 / 3, i as u64 % 3),
                    key: vec![b'k', *k],
                    op: if *up { Op::Upsert } else { Op::Delete },
                    fields: if *up { vec![("f".to_string(), vec![*v])] } else { vec![] },
                })
                .collect();
            let (mut all, mut some) = (Default::default(), Default::default());
            apply(&mut all, &changes);
            let c = coalesce(changes);
            apply(&mut some, &c);
            proptest::prop_assert_eq!(all, some);
            proptest::prop_assert!(c.windows(2).all(|w| w[0].id < w[1].id));
            let keys: std::collections::BTreeSet<_> = c.iter().map(|x| x.key.clone()).collect();
            proptest::prop_assert_eq!(keys.len(), c.len());
        }
    }
}
