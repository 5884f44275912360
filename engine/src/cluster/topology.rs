//! The cluster as the coordinator sees it: its primaries, their addresses and slots, and
//! which one this node is. Built by the host (on Redis from `CLUSTER SLOTS` and the module
//! API's node list); the engine only reads it.

use std::sync::OnceLock;

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// One primary and the slot ranges it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The node id (40 hex characters on Redis).
    pub id: String,
    /// `ip:port` clients use.
    pub addr: String,
    /// Inclusive slot ranges, sorted.
    pub slots: Vec<(u16, u16)>,
}

/// The primaries of the cluster and this node's id. On a replica `me` is not among the
/// shards' ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub me: String,
    /// Sorted by id.
    pub shards: Vec<Shard>,
    /// Primaries the cluster flags as failing (`fail` or `fail?` in CLUSTER NODES) and
    /// still serving their slots until a replica takes over.
    pub failing: Vec<String>,
}

impl Topology {
    pub fn new(me: String, mut shards: Vec<Shard>) -> Topology {
        shards.sort_by(|a, b| a.id.cmp(&b.id));
        for s in shards.iter_mut() {
            s.slots.sort();
        }
        Topology { me, shards, failing: Vec::new() }
    }

    /// The topology `CLUSTER NODES` describes, seen from node `me`.
    pub fn from_cluster_nodes(me: String, nodes: &str) -> Topology {
        let mut t = Topology::new(me, primaries_in_cluster_nodes(nodes));
        t.failing = failing_in_cluster_nodes(nodes);
        t
    }

    /// Is this primary flagged as failing by the cluster?
    pub fn is_failing(&self, id: &str) -> bool {
        self.failing.iter().any(|f| f == id)
    }

    pub fn shard(&self, id: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// The primary that serves `slot`.
    pub fn owner_of_slot(&self, slot: u16) -> Option<&Shard> {
        self.shards.iter().find(|s| s.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
    }

    /// The primary that serves `key`.
    pub fn owner_of_key(&self, key: &[u8]) -> Option<&Shard> {
        self.owner_of_slot(key_slot(key))
    }

    /// Does this node serve `slot`?
    pub fn owns_slot(&self, slot: u16) -> bool {
        self.owner_of_slot(slot).is_some_and(|s| s.id == self.me)
    }

    /// Is this node one of the primaries?
    pub fn is_primary(&self) -> bool {
        self.shard(&self.me).is_some()
    }

    /// A short description of a shard for error messages: `<id> (<addr>)`.
    pub fn describe(&self, id: &str) -> String {
        match self.shard(id) {
            Some(s) => format!("{} ({})", s.id, s.addr),
            None => id.to_string(),
        }
    }

    /// Changes when a primary joins, leaves or fails over, or slots move: an execution that
    /// sees it change under it ends rather than give an answer built on two layouts.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= *b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        };
        for s in &self.shards {
            eat(s.id.as_bytes());
            eat(b"|");
            for (a, b) in &s.slots {
                eat(&a.to_le_bytes());
                eat(&b.to_le_bytes());
            }
            eat(b";");
        }
        h
    }

    /// A hashtag (without braces) whose keys land on a slot this node serves; None when it
    /// serves none.
    pub fn local_hashtag(&self) -> Option<&'static str> {
        let me = self.shard(&self.me)?;
        let &(first, _) = me.slots.first()?;
        Some(hashtag_of_slot(first))
    }
}

/// The primaries with slots in `CLUSTER NODES` text, one node a line:
/// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slots>...`
/// where a slot item is `n`, `a-b`, or `[n->-id]` / `[n-<-id]` (a migration, skipped: the
/// slot stays with its owner until it is done).
pub fn primaries_in_cluster_nodes(nodes: &str) -> Vec<Shard> {
    let mut shards = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|f| matches!(*f, "handshake" | "noaddr")) {
            continue;
        }
        let slots: Vec<(u16, u16)> = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        if slots.is_empty() {
            continue;
        }
        let addr = fields[1].split(['@', ',']).next().unwrap_or_default();
        shards.push(Shard { id: fields[0].to_string(), addr: addr.to_string(), slots });
    }
    shards
}

/// The ids of the nodes flagged `fail` or `fail?`.
pub fn failing_in_cluster_nodes(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3 && fields[2].split(',').any(|f| f == "fail" || f == "fail?")).then(|| fields[0].to_string())
        })
        .collect()
}

/// The slot of a key: CRC16 (XMODEM) of the key, or of the part between the first `{` and
/// the next `}` when that part is not empty, modulo 16384 (Redis Cluster's rule).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&c| c == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
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

/// A short tag that hashes to `slot`: the first of `0`..`9`, `a`..`z`, `A`..`Z` strings
/// (by length, then order) that does; every slot has one of at most 3 characters.
pub fn hashtag_of_slot(slot: u16) -> &'static str {
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut t: Vec<Option<String>> = vec![None; SLOTS as usize];
        let put = |s: &[u8], t: &mut Vec<Option<String>>| {
            let slot = (crc16(s) % SLOTS) as usize;
            if t[slot].is_none() {
                t[slot] = Some(String::from_utf8_lossy(s).into_owned());
            }
        };
        for &a in CHARS {
            put(&[a], &mut t);
        }
        for &a in CHARS {
            for &b in CHARS {
                put(&[a, b], &mut t);
            }
        }
        'outer: for &a in CHARS {
            for &b in CHARS {
                for &c in CHARS {
                    put(&[a, b, c], &mut t);
                }
                if t.iter().all(Option::is_some) {
                    break 'outer;
                }
            }
        }
        t.into_iter().enumerate().map(|(i, s)| s.unwrap_or_else(|| panic!("no tag of 3 characters for slot {i}"))).collect()
    });
    &table[(slot % SLOTS) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_text() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383 [16000->-67ed]
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 7 9-9
aaaa 127.0.0.1:30009@40009 master,fail - 0 0 1 connected 16001
bbbb :0@0 master,noaddr - 0 0 1 connected 16002
cccc 127.0.0.1:30010@40010 master - 0 0 0 connected
dddd 127.0.0.1:30011@40011 master,handshake - 0 0 0 connected 16003
bad line
";
        let t = Topology::from_cluster_nodes("e7d1".into(), text);
        let ids: Vec<&str> = t.shards.iter().map(|s| s.id.as_str()).collect();
        // Primaries with slots (a failed one until its replica takes over), sorted; no
        // replicas, no slotless, noaddr or handshake nodes; migrations stay with the owner.
        assert_eq!(ids, ["292f", "67ed", "aaaa", "e7d1"]);
        assert_eq!(t.shard("67ed").unwrap().addr, "127.0.0.1:30002");
        assert_eq!(t.shard("292f").unwrap().slots, vec![(10923, 16383)]);
        assert_eq!(t.shard("e7d1").unwrap().slots, vec![(0, 5460), (7, 7), (9, 9)]);
        assert!(t.is_primary() && t.owns_slot(100));
        // Flagged failing: still the owner of its slots, and known as failing.
        assert_eq!(t.failing, vec!["aaaa".to_string()]);
        assert!(t.is_failing("aaaa") && !t.is_failing("67ed"));
        let suspected = Topology::from_cluster_nodes("e7d1".into(), &text.replace("master - 0 1426238316232", "master,fail? - 0 1426238316232"));
        assert!(suspected.is_failing("67ed"));
    }

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"123456789"), 0x31c3 % SLOTS);
        assert_eq!(key_slot(b"{06S}"), 0);
    }

    #[test]
    fn every_slot_has_a_tag() {
        for slot in 0..SLOTS {
            let tag = hashtag_of_slot(slot);
            assert!(tag.len() <= 3);
            assert_eq!(key_slot(format!("x{{{tag}}}y").as_bytes()), slot);
        }
    }

    #[test]
    fn owners_and_fingerprint() {
        let t = Topology::new(
            "b".into(),
            vec![
                Shard { id: "b".into(), addr: "127.0.0.1:2".into(), slots: vec![(5461, 10922)] },
                Shard { id: "a".into(), addr: "127.0.0.1:1".into(), slots: vec![(0, 5460)] },
            ],
        );
        assert_eq!(t.shards[0].id, "a");
        assert_eq!(t.owner_of_slot(6000).map(|s| s.id.as_str()), Some("b"));
        assert!(t.owner_of_slot(16000).is_none());
        assert!(t.owns_slot(5461) && !t.owns_slot(0));
        let mut moved = t.clone();
        moved.shards[1].slots = vec![(5461, 10921)];
        assert_ne!(t.fingerprint(), moved.fingerprint());
        assert_eq!(key_slot(format!("{{{}}}", t.local_hashtag().unwrap()).as_bytes()), 5461);
    }
}
