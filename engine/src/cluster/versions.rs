//! Versions of the registrations the primaries of a cluster share. Every session and every
//! package loaded at run time is an item with a version: a Lamport clock, the primary that
//! made the change, whether the item exists (a drop is a tombstone) and a hash of its
//! content. Two primaries merge their items one by one, the greater version winning, so
//! they end equal whatever the order in which changes reach them: a drop made on one
//! primary is never undone by an older state another primary pushes.

use crate::{codec, Value};
use std::collections::BTreeMap;

/// Drops remembered (the newest ones): a primary away for longer than it takes to drop
/// this many others may bring back one dropped while it was away.
pub const MAX_TOMBSTONES: usize = 10_000;

/// Orders the changes of one item: the later clock, then the primary's id, then the
/// content itself, so that any two versions compare the same way on every primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub epoch: u64,
    pub origin: String,
    pub present: bool,
    pub hash: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    /// The Lamport clock: above every version made or seen here.
    pub clock: u64,
    /// By item key (`session:<id>`, `package:<language>:<name>`).
    pub items: BTreeMap<String, Version>,
}

pub fn session_key(id: &str) -> String {
    format!("session:{id}")
}

pub fn package_key(language: &str, name: &str) -> String {
    format!("package:{language}:{name}")
}

/// FNV-1a: content hashes and digests (not a defence against anyone: the bus is trusted).
pub fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn int(n: u64) -> Value {
    Value::Bytes(n.to_le_bytes().to_vec())
}

pub(crate) fn get_u64(v: Option<&Value>) -> Option<u64> {
    let b = v?.as_bytes()?;
    Some(u64::from_le_bytes(b.as_ref().try_into().ok()?))
}

impl Version {
    pub fn to_value(&self) -> Value {
        Value::Array(vec![int(self.epoch), Value::String(self.origin.clone()), Value::Bool(self.present), int(self.hash)])
    }

    pub fn from_value(v: &Value) -> Option<Version> {
        let Value::Array(f) = v else { return None };
        let [epoch, origin, present, hash] = f.as_slice() else { return None };
        let present = match present {
            Value::Bool(b) => *b,
            _ => return None,
        };
        Some(Version { epoch: get_u64(Some(epoch))?, origin: origin.as_str_lossy()?, present, hash: get_u64(Some(hash))? })
    }
}

impl Versions {
    /// Records the items as they are here now (key → content hash): every item new or
    /// changed since it was last recorded, and every one gone, gets a new version made by
    /// `me`. Returns whether any did.
    pub fn stamp_local(&mut self, now: &BTreeMap<String, u64>, me: &str) -> bool {
        let epoch = self.clock + 1;
        let mut changed = false;
        for (key, hash) in now {
            if self.items.get(key).is_some_and(|v| v.present && v.hash == *hash) {
                continue;
            }
            self.items.insert(key.clone(), Version { epoch, origin: me.to_string(), present: true, hash: *hash });
            changed = true;
        }
        let gone: Vec<String> = self.items.iter().filter(|(k, v)| v.present && !now.contains_key(*k)).map(|(k, _)| k.clone()).collect();
        for key in gone {
            self.items.insert(key, Version { epoch, origin: me.to_string(), present: false, hash: 0 });
            changed = true;
        }
        if changed {
            self.clock = epoch;
            self.prune();
        }
        changed
    }

    /// Would a change arriving with `v` replace what is recorded for `key`?
    pub fn is_newer(&self, key: &str, v: &Version) -> bool {
        self.items.get(key).is_none_or(|cur| v > cur)
    }

    /// Records a change applied from another primary.
    pub fn record(&mut self, key: &str, v: Version) {
        self.see(v.epoch);
        self.items.insert(key.to_string(), v);
    }

    /// A clock seen in another primary's message (Lamport): later changes made here are
    /// ordered after it.
    pub fn see(&mut self, epoch: u64) {
        self.clock = self.clock.max(epoch);
    }

    /// Keeps the newest `MAX_TOMBSTONES` drops.
    pub fn prune(&mut self) {
        let mut tombs: Vec<(Version, String)> = self.items.iter().filter(|(_, v)| !v.present).map(|(k, v)| (v.clone(), k.clone())).collect();
        if tombs.len() <= MAX_TOMBSTONES {
            return;
        }
        tombs.sort();
        for (_, k) in &tombs[..tombs.len() - MAX_TOMBSTONES] {
            self.items.remove(k);
        }
    }

    pub fn tombstones(&self) -> usize {
        self.items.values().filter(|v| !v.present).count()
    }

    /// What two primaries compare each second: equal digests, equal registrations.
    pub fn digest(&self) -> u64 {
        let mut b = Vec::new();
        for (k, v) in &self.items {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(&v.epoch.to_le_bytes());
            b.extend_from_slice(v.origin.as_bytes());
            b.push(v.present as u8);
            b.extend_from_slice(&v.hash.to_le_bytes());
        }
        fnv(&b)
    }

    /// Saved in the RDB and sent to replicas (RG.CLUSTERVERSIONS).
    pub fn encode(&self) -> Vec<u8> {
        let items = self.items.iter().map(|(k, v)| Value::Array(vec![Value::String(k.clone()), v.to_value()])).collect();
        codec::encode(&Value::Array(vec![int(self.clock), Value::Array(items)])).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Result<Versions, String> {
        let bad = || "the cluster registrations versions are malformed".to_string();
        let Value::Array(parts) = codec::decode(b).map_err(|e| e.to_string())? else { return Err(bad()) };
        let [clock, Value::Array(items)] = parts.as_slice() else { return Err(bad()) };
        let mut out = Versions { clock: get_u64(Some(clock)).ok_or_else(bad)?, items: BTreeMap::new() };
        for item in items {
            let Value::Array(f) = item else { return Err(bad()) };
            let [key, v] = f.as_slice() else { return Err(bad()) };
            out.items.insert(key.as_str_lossy().ok_or_else(bad)?, Version::from_value(v).ok_or_else(bad)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(items: &[(&str, u64)]) -> BTreeMap<String, u64> {
        items.iter().map(|(k, h)| (k.to_string(), *h)).collect()
    }

    /// Merges `from` into `into` as the sync does, item by item.
    fn merge(into: &mut Versions, from: &Versions) {
        for (k, v) in &from.items {
            if into.is_newer(k, v) {
                into.record(k, v.clone());
            }
        }
    }

    #[test]
    fn local_changes_and_drops_get_new_versions_once() {
        let mut v = Versions::default();
        assert!(v.stamp_local(&now(&[("session:a", 1), ("session:b", 2)]), "A"));
        assert_eq!(v.clock, 1);
        assert!(!v.stamp_local(&now(&[("session:a", 1), ("session:b", 2)]), "A"), "nothing changed");
        assert!(v.stamp_local(&now(&[("session:a", 3)]), "A"));
        assert_eq!(v.items["session:a"], Version { epoch: 2, origin: "A".into(), present: true, hash: 3 });
        assert_eq!(v.items["session:b"], Version { epoch: 2, origin: "A".into(), present: false, hash: 0 });
        assert_eq!(v.tombstones(), 1);
    }

    #[test]
    fn drops_made_in_turn_on_two_primaries_are_not_undone_by_either() {
        // Both know a and b; A drops a while B drops b, each before hearing of the other.
        let mut a = Versions::default();
        a.stamp_local(&now(&[("session:a", 1), ("session:b", 2)]), "A");
        let mut b = a.clone();
        a.stamp_local(&now(&[("session:b", 2)]), "A");
        b.stamp_local(&now(&[("session:a", 1)]), "B");
        let (a0, b0) = (a.clone(), b.clone());
        merge(&mut a, &b0);
        merge(&mut b, &a0);
        assert_eq!(a.items, b.items);
        assert!(a.items.values().all(|v| !v.present), "{a:?}");
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn the_later_change_wins_and_the_clock_follows_what_was_seen() {
        let mut a = Versions::default();
        a.stamp_local(&now(&[("session:x", 1)]), "A");
        let mut b = Versions::default();
        merge(&mut b, &a);
        assert_eq!(b.clock, 1);
        // B changes x after seeing A's version: its version is later.
        b.stamp_local(&now(&[("session:x", 2)]), "B");
        assert!(a.is_newer("session:x", &b.items["session:x"]));
        merge(&mut a, &b);
        assert_eq!(a.items["session:x"].hash, 2);
        // An old state (A's first) changes nothing any more.
        let old = Version { epoch: 1, origin: "A".into(), present: true, hash: 1 };
        assert!(!a.is_newer("session:x", &old));
    }

    #[test]
    fn merging_is_order_free() {
        let mut parts = Vec::new();
        for (i, who) in ["A", "B", "C"].iter().enumerate() {
            let mut v = Versions::default();
            v.stamp_local(&now(&[("session:s", i as u64), (&format!("session:{who}"), 9)]), who);
            v.stamp_local(&now(&[(&format!("session:{who}"), 9)]), who);
            parts.push(v);
        }
        let mut x = Versions::default();
        let mut y = Versions::default();
        for p in &parts {
            merge(&mut x, p);
        }
        for p in parts.iter().rev() {
            merge(&mut y, p);
        }
        assert_eq!(x.items, y.items);
    }

    #[test]
    fn only_the_newest_tombstones_are_kept() {
        let mut v = Versions::default();
        for i in 0..(MAX_TOMBSTONES + 5) {
            v.record(&format!("session:{i}"), Version { epoch: i as u64 + 1, origin: "A".into(), present: false, hash: 0 });
        }
        v.prune();
        assert_eq!(v.tombstones(), MAX_TOMBSTONES);
        assert!(!v.items.contains_key("session:0") && v.items.contains_key(&format!("session:{}", MAX_TOMBSTONES + 4)));
    }

    #[test]
    fn encode_round_trips_and_garbage_is_an_error() {
        let mut v = Versions::default();
        v.stamp_local(&now(&[("session:a", 1), ("package:lua:p", 7)]), "node-1");
        v.stamp_local(&now(&[("package:lua:p", 7)]), "node-1");
        assert_eq!(Versions::decode(&v.encode()).unwrap(), v);
        assert!(Versions::decode(b"\x00garbage").is_err());
    }
}
