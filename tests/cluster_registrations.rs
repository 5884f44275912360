//! Cluster-wide registrations (issue 12, "Registrations cluster-wide"; /work/plan12.md):
//! a session registered on one primary is on every primary and fires on the shard that owns
//! the key; UNREGISTER, DROPSESSION, PAUSE/UNPAUSE, UPGRADE and RG.PACKAGE LOAD/DELETE sent
//! to one primary apply on all; a registration one shard refuses (its ACL differs) is
//! refused everywhere with that shard's error and installed nowhere; a primary restarted
//! from an RDB saved before a change, or down while a change was made, catches up by itself;
//! a failed-over primary comes back as a replica with every session; a write-behind recipe
//! registered once delivers every acknowledged row from every shard, across a failover,
//! and RG.DUMPREGISTRATIONS CLUSTER sums its backlog; all of it with requirepass too.
//!
//! Every script-facing case runs in Lua and in JS. Every wait is on a condition.
//! Keys are `<prefix>{tag}` and a trigger's writes go to `<counter>{tag}`: the same slot,
//! so a trigger writes only on the shard that fired it.

mod common;

use common::cluster::{Cluster, Options};
use common::{canon::fmt, cmd, wait_until};
use redis::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LANGS: [&str; 2] = ["lua", "js"];

// ---------------------------------------------------------------------------------------
// Replies

/// A reply's text (bulk or status).
fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Okay => "OK".into(),
        other => fmt(other),
    }
}

fn is_text(v: &Value) -> bool {
    matches!(v, Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. })
}

/// A field of a reply map: a RESP3 map or a RESP2 array of name/value pairs.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Map(m) => m.iter().find(|(k, _)| text(k) == name).map(|(_, v)| v),
        Value::Array(a) if a.len() % 2 == 0 => a.chunks(2).find(|p| is_text(&p[0]) && text(&p[0]) == name).map(|p| &p[1]),
        _ => None,
    }
}

/// A nested field, `recipe.backlog`.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, name| field(v, name))
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(other) => text(other).parse().unwrap_or(0),
        None => 0,
    }
}

/// A command on node `i`, as a raw reply; an error reply fails the test.
fn raw(cluster: &Cluster, i: usize, words: &[&str]) -> Value {
    let v = cmd(&mut cluster.conn(i), words);
    if let Value::SimpleString(s) = &v {
        assert!(!s.starts_with("(error)"), "{words:?} on node {i}: {s}");
    }
    v
}

/// RG.DUMPSESSIONS VERBOSE on node `i` (as the default user, an admin): id -> session.
fn sessions(cluster: &Cluster, i: usize) -> BTreeMap<String, Value> {
    let v = raw(cluster, i, &["RG.DUMPSESSIONS", "VERBOSE"]);
    items(&v).iter().map(|s| (text(field(s, "id").expect("session id")), s.clone())).collect()
}

fn session_ids(cluster: &Cluster, i: usize) -> BTreeSet<String> {
    sessions(cluster, i).into_keys().collect()
}

/// RG.DUMPREGISTRATIONS on node `i`: id -> registration.
fn registrations(cluster: &Cluster, i: usize) -> BTreeMap<String, Value> {
    let v = raw(cluster, i, &["RG.DUMPREGISTRATIONS"]);
    items(&v).iter().map(|r| (text(field(r, "id").expect("registration id")), r.clone())).collect()
}

/// The ids of a session's registrations on node `i`, sorted.
fn registration_ids(cluster: &Cluster, i: usize, session: &str) -> Vec<String> {
    registrations(cluster, i).into_iter().filter(|(_, r)| field(r, "session").map(text).as_deref() == Some(session)).map(|(id, _)| id).collect()
}

/// RG.DUMPREGISTRATIONS CLUSTER on node `i`.
fn cluster_dump(cluster: &Cluster, i: usize) -> Value {
    raw(cluster, i, &["RG.DUMPREGISTRATIONS", "CLUSTER"])
}

/// `totals` of RG.DUMPREGISTRATIONS CLUSTER: registration `reg`'s summed counter `name`
/// (nested counters are named `recipe.backlog`).
fn total(dump: &Value, reg: &str, name: &str) -> Option<i64> {
    let t = items(field(dump, "totals")?).iter().find(|t| field(t, "id").map(text).as_deref() == Some(reg))?;
    Some(int(field(t, name)))
}

/// `shards` of RG.DUMPREGISTRATIONS CLUSTER: shard id -> registration `reg`'s counter `path`
/// there (shards without the registration are left out; a shard that answered with an
/// error fails the test).
fn per_shard(dump: &Value, reg: &str, path: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for s in items(field(dump, "shards").expect("shards")) {
        let shard = text(field(s, "shard").expect("shard"));
        if let Some(e) = field(s, "error") {
            panic!("shard {shard} answered RG.DUMPREGISTRATIONS CLUSTER with an error: {}", text(e));
        }
        let regs = field(s, "registrations").expect("registrations");
        if let Some(r) = items(regs).iter().find(|r| field(r, "id").map(text).as_deref() == Some(reg)) {
            out.insert(shard, int(at(r, path)));
        }
    }
    out
}

/// The shards RG.DUMPREGISTRATIONS CLUSTER answered for.
fn dump_shards(dump: &Value) -> BTreeSet<String> {
    items(field(dump, "shards").expect("shards")).iter().map(|s| text(field(s, "shard").expect("shard"))).collect()
}

// ---------------------------------------------------------------------------------------
// Keys and scripts

/// The node serving `key` in a slot-owner map.
fn owner(owners: &[(u16, u16, usize)], key: &str) -> usize {
    let s = common::slot(key);
    owners.iter().find(|(a, b, _)| *a <= s && s <= *b).map(|(_, _, n)| *n).unwrap_or_else(|| panic!("no owner of slot {s} ({key})"))
}

/// `n` hashtags whose slots node `node` serves.
fn tags_on(owners: &[(u16, u16, usize)], node: usize, n: usize, seed: &str) -> Vec<String> {
    (0..).map(|i| format!("{seed}{i}")).filter(|t| owner(owners, &format!("{{{t}}}")) == node).take(n).collect()
}

/// HSET `key` on the primary that serves it (a new field each time: each fires `hset`).
fn hset(cluster: &Cluster, owners: &[(u16, u16, usize)], key: &str) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = owner(owners, key);
    let f = format!("f{}", N.fetch_add(1, Ordering::Relaxed));
    let r = cluster.cmd(n, &["HSET", key, &f, "v"]);
    assert_eq!(r, "1", "HSET {key} on node {n}, which serves it");
}

/// GET of an integer key on the primary that serves it (0 when missing).
fn count(cluster: &Cluster, owners: &[(u16, u16, usize)], key: &str) -> i64 {
    let r = cluster.cmd(owner(owners, key), &["GET", key]);
    if r == "nil" {
        0
    } else {
        r.trim_matches('"').parse().unwrap_or_else(|_| panic!("GET {key}: {r}"))
    }
}

/// A keyspace trigger on `prefix`: for a key `<prefix>{tag}` it adds `by` (a Lua or JS
/// expression) to `<counter>{tag}`, in the key's own slot.
fn counter(lang: &str, prefix: &str, counter: &str, by: &str, mode: &str) -> String {
    match lang {
        "lua" => format!(
            "GB('KeysReader'):foreach(function(r) local t = string.match(r.key, '{{(.-)}}'); execute('INCRBY', '{counter}{{' .. t .. '}}', tostring({by})) end):register({{prefix = '{prefix}', eventTypes = {{'hset'}}, mode = '{mode}'}})"
        ),
        "js" => format!(
            "GB('KeysReader').foreach(r => {{ const t = r.key.match(/\\{{(.*?)\\}}/)[1]; execute('INCRBY', '{counter}{{' + t + '}}', String({by})); }}).register({{prefix: '{prefix}', eventTypes: ['hset'], mode: '{mode}'}});"
        ),
        _ => unreachable!(),
    }
}

/// Polls until every node in `nodes` lists exactly `want` among the sessions named in
/// `watched` (a session listed that should not be, or missing, keeps it waiting).
fn wait_sessions(cluster: &Cluster, nodes: &[usize], watched: &[String], want: &[String], what: &str) {
    for &i in nodes {
        wait_until(20, &format!("node {i}: {what}"), || {
            let have = session_ids(cluster, i);
            let got: BTreeSet<&String> = watched.iter().filter(|s| have.contains(*s)).collect();
            let expected: BTreeSet<&String> = want.iter().collect();
            if got == expected { Ok(()) } else { Err(format!("lists {got:?}, expected {expected:?}")) }
        });
    }
}

/// Asserts that node `i` lists session `id` now.
fn assert_listed(cluster: &Cluster, i: usize, id: &str, when: &str) {
    let have = session_ids(cluster, i);
    assert!(have.contains(id), "{when}: node {i} ({}) does not list session '{id}': {have:?}", cluster.describe(i));
}

fn s(x: &str) -> String {
    x.to_string()
}

// ---------------------------------------------------------------------------------------
// 1. A registration made on one primary fires for keys on another

#[test]
fn a_registration_made_on_shard_1_fires_for_keys_owned_by_shard_3() {
    let mut cluster = Cluster::new(3);
    let p = cluster.primaries();
    assert_eq!(p.len(), 3, "three primaries");
    let owners = cluster.owners();
    for lang in LANGS {
        for mode in ["sync", "async"] {
            let id = format!("fire-{lang}-{mode}");
            let prefix = format!("{lang}{mode}:");
            let ctr = format!("n:{prefix}");
            let code = counter(lang, &prefix, &ctr, "1", mode);
            assert_eq!(cluster.exec(p[0], lang, &code, &["ID", &id]), "OK", "{lang} {mode}: RG.EXEC on shard 1");
            // RG.EXEC answers once every primary has installed it.
            for &i in &p {
                assert_listed(&cluster, i, &id, &format!("{lang} {mode}: right after RG.EXEC on node {}", p[0]));
                let src = text(field(&sessions(&cluster, i)[&id], "source").expect("source"));
                assert_eq!(src, code, "node {i}: the session's source");
            }
            let regs = registration_ids(&cluster, p[0], &id);
            assert_eq!(regs.len(), 1, "{regs:?}");
            let reg = regs[0].clone();
            // Four tags on shard 3, one on each other shard; each key written twice.
            let mut keys: Vec<(usize, String)> = Vec::new();
            for (node, n) in [(p[2], 4), (p[0], 1), (p[1], 1)] {
                for t in tags_on(&owners, node, n, &format!("{lang}{mode}")) {
                    keys.push((node, t));
                }
            }
            for (_, t) in &keys {
                for _ in 0..2 {
                    hset(&cluster, &owners, &format!("{prefix}{{{t}}}"));
                }
            }
            for (node, t) in &keys {
                let key = format!("{ctr}{{{t}}}");
                if mode == "sync" {
                    // Inside the HSET: counted when it returns.
                    assert_eq!(count(&cluster, &owners, &key), 2, "{lang} {mode}: {key} on node {node}");
                } else {
                    wait_until(20, &format!("{lang} {mode}: {key} on node {node} to reach 2"), || match count(&cluster, &owners, &key) {
                        2 => Ok(()),
                        n => Err(n.to_string()),
                    });
                }
            }
            // Each shard counts its own firings; the totals sum them.
            let mut want: BTreeMap<String, i64> = p.iter().map(|&i| (cluster.ids[i].clone(), 0)).collect();
            for (node, _) in &keys {
                *want.get_mut(&cluster.ids[*node]).unwrap() += 2;
            }
            for &asked in &p {
                wait_until(20, &format!("{lang} {mode}: RG.DUMPREGISTRATIONS CLUSTER on node {asked}"), || {
                    let d = cluster_dump(&cluster, asked);
                    let shards = per_shard(&d, &reg, "numTriggered");
                    let sum = total(&d, &reg, "numTriggered");
                    if shards == want && sum == Some(2 * keys.len() as i64) {
                        Ok(())
                    } else {
                        Err(format!("per shard {shards:?} (want {want:?}), total {sum:?} (want {}): {}", 2 * keys.len(), fmt(&d)))
                    }
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Admin commands sent to one primary apply on all

/// A session of two sync registrations on `<lang>adm:`: the first adds `first_by` to
/// `<lang>first:{tag}`, the second 1 to `<lang>second:{tag}`.
fn two_counters(lang: &str, first_by: &str) -> String {
    let prefix = format!("{lang}adm:");
    [counter(lang, &prefix, &format!("{lang}first:"), first_by, "sync"), counter(lang, &prefix, &format!("{lang}second:"), "1", "sync")].join("\n")
}

#[test]
fn unregister_pause_unpause_upgrade_and_drop_sent_to_one_primary_apply_on_all() {
    let mut cluster = Cluster::new(3);
    let p = cluster.primaries();
    let owners = cluster.owners();
    for lang in LANGS {
        let id = format!("adm-{lang}");
        // One tag per shard; the state of the counters is checked after each write.
        let tags: Vec<String> = p.iter().map(|&n| tags_on(&owners, n, 1, &format!("{lang}adm"))[0].clone()).collect();
        let mut want: HashMap<String, (i64, i64)> = tags.iter().map(|t| (t.clone(), (0, 0))).collect();
        // Writes every tag's key once and checks both counters against `want` after adding
        // `(a, b)` (sync triggers: counted when HSET returns).
        let fire = |want: &mut HashMap<String, (i64, i64)>, (a, b): (i64, i64), when: &str| {
            for t in &tags {
                hset(&cluster, &owners, &format!("{lang}adm:{{{t}}}"));
                let w = want.get_mut(t).unwrap();
                *w = (w.0 + a, w.1 + b);
                let got = (count(&cluster, &owners, &format!("{lang}first:{{{t}}}")), count(&cluster, &owners, &format!("{lang}second:{{{t}}}")));
                assert_eq!(got, *w, "{lang}, {when}: counters of tag {t} on node {}", owner(&owners, &format!("{{{t}}}")));
            }
        };
        assert_eq!(cluster.exec(p[0], lang, &two_counters(lang, "1"), &["ID", &id]), "OK");
        for &i in &p {
            assert_listed(&cluster, i, &id, "right after RG.EXEC");
        }
        let regs = registration_ids(&cluster, p[0], &id);
        assert_eq!(regs.len(), 2, "{regs:?}");
        for &i in &p {
            assert_eq!(registration_ids(&cluster, i, &id), regs, "node {i}: the same registration ids");
        }
        fire(&mut want, (1, 1), "registered");

        // PAUSE on shard 2: the first registration stops on every shard.
        assert_eq!(cluster.cmd(p[1], &["RG.PAUSEREGISTRATIONS", &regs[0]]), "OK");
        for &i in &p {
            wait_until(20, &format!("{lang}: node {i} to show {} paused", regs[0]), || {
                let st = registrations(&cluster, i).get(&regs[0]).and_then(|r| field(r, "status").map(text));
                if st.as_deref() == Some("paused") { Ok(()) } else { Err(format!("{st:?}")) }
            });
        }
        fire(&mut want, (0, 1), "paused on node 1");

        // UNPAUSE on shard 3.
        assert_eq!(cluster.cmd(p[2], &["RG.UNPAUSEREGISTRATIONS", &regs[0]]), "OK");
        for &i in &p {
            wait_until(20, &format!("{lang}: node {i} to show {} active", regs[0]), || {
                let st = registrations(&cluster, i).get(&regs[0]).and_then(|r| field(r, "status").map(text));
                if st.as_deref() == Some("active") { Ok(()) } else { Err(format!("{st:?}")) }
            });
        }
        fire(&mut want, (1, 1), "unpaused on node 2");

        // UPGRADE on shard 2: the first counter now adds 10, on every shard once RG.EXEC answers.
        let v2 = two_counters(lang, "10");
        assert_eq!(cluster.exec(p[1], lang, &v2, &["ID", &id, "UPGRADE"]), "OK");
        for &i in &p {
            let src = sessions(&cluster, i).get(&id).and_then(|s| field(s, "source").map(text));
            assert_eq!(src.as_deref(), Some(v2.as_str()), "{lang}: node {i}: the upgraded source right after RG.EXEC ... UPGRADE on node {}", p[1]);
        }
        fire(&mut want, (10, 1), "upgraded on node 1");
        let regs = registration_ids(&cluster, p[1], &id);
        assert_eq!(regs.len(), 2, "{regs:?}");

        // UNREGISTER the second on shard 3.
        assert_eq!(cluster.cmd(p[2], &["RG.UNREGISTER", &regs[1]]), "OK");
        for &i in &p {
            wait_until(20, &format!("{lang}: node {i} to drop {}", regs[1]), || {
                let have = registration_ids(&cluster, i, &id);
                if have == regs[..1] { Ok(()) } else { Err(format!("{have:?}")) }
            });
        }
        fire(&mut want, (10, 0), "second unregistered on node 2");

        // DROPSESSION on shard 1.
        assert_eq!(cluster.cmd(p[0], &["RG.DROPSESSION", &id]), "OK");
        wait_sessions(&cluster, &p, &[id.clone()], &[], &format!("{lang}: session {id} dropped everywhere"));
        for &i in &p {
            assert!(registration_ids(&cluster, i, &id).is_empty(), "node {i}: registrations of a dropped session");
        }
        fire(&mut want, (0, 0), "dropped on node 0");
    }
}

#[test]
fn packages_loaded_and_deleted_on_one_primary_apply_on_all() {
    let mut cluster = Cluster::new(3);
    let p = cluster.primaries();
    let owners = cluster.owners();
    assert_eq!(cluster.cmd(p[0], &["RG.PACKAGE", "LOAD", "lua", "step", "return { by = function() return 3 end }"]), "OK");
    assert_eq!(cluster.cmd(p[0], &["RG.PACKAGE", "LOAD", "js", "step", "export const by = () => 3;"]), "OK");
    let listed = |i: usize| -> BTreeSet<(String, String)> {
        let v = raw(&cluster, i, &["RG.PACKAGE", "LIST"]);
        items(&v)
            .iter()
            .filter(|p| field(p, "name").map(text).as_deref() == Some("step"))
            .map(|p| (text(field(p, "language").expect("language")), text(field(p, "name").expect("name"))))
            .collect()
    };
    let both: BTreeSet<(String, String)> = [(s("js"), s("step")), (s("lua"), s("step"))].into();
    for &i in &p {
        wait_until(20, &format!("node {i} to list package 'step' in both languages"), || {
            let l = listed(i);
            if l == both { Ok(()) } else { Err(format!("{l:?}")) }
        });
    }
    for lang in LANGS {
        let id = format!("pkg-{lang}");
        let prefix = format!("{lang}pkg:");
        let header = if lang == "lua" { "local step = require('step')\n" } else { "import { by } from 'step';\n" };
        let by = if lang == "lua" { "step.by()" } else { "by()" };
        let code = format!("{header}{}", counter(lang, &prefix, &format!("n:{prefix}"), by, "sync"));
        // Sent to shard 2, fired on shard 3.
        assert_eq!(cluster.exec(p[1], lang, &code, &["ID", &id]), "OK");
        let t = &tags_on(&owners, p[2], 1, &format!("{lang}pkg"))[0];
        hset(&cluster, &owners, &format!("{prefix}{{{t}}}"));
        assert_eq!(count(&cluster, &owners, &format!("n:{prefix}{{{t}}}")), 3, "{lang}: the package's step on shard 3");
    }
    // RG.EXEC answered once every primary had each.
    for &i in &p {
        let have = session_ids(&cluster, i);
        assert!(have.contains("pkg-lua") && have.contains("pkg-js"), "node {i} lists {have:?}");
    }
    // Imported: refused on shard 3 too.
    let refused = cluster.cmd(p[2], &["RG.PACKAGE", "DELETE", "step"]);
    assert!(refused.contains("package 'step' is imported by session(s)"), "{refused}");
    for lang in LANGS {
        assert_eq!(cluster.cmd(p[0], &["RG.DROPSESSION", &format!("pkg-{lang}")]), "OK");
    }
    wait_sessions(&cluster, &p, &[s("pkg-lua"), s("pkg-js")], &[], "the importing sessions dropped everywhere");
    assert_eq!(cluster.cmd(p[2], &["RG.PACKAGE", "DELETE", "step"]), "OK");
    for &i in &p {
        wait_until(20, &format!("node {i} to delete package 'step'"), || {
            let l = listed(i);
            if l.is_empty() { Ok(()) } else { Err(format!("{l:?}")) }
        });
    }
}

#[test]
fn registrations_sent_in_turn_to_every_primary_are_all_on_every_primary() {
    let mut cluster = Cluster::new(3);
    let p = cluster.primaries();
    // Each RG.EXEC answers once every primary has the session: none may go missing when the
    // next one is sent to another primary (its whole state is pushed each time).
    let mut made: Vec<String> = Vec::new();
    for round in 0..24 {
        let lang = LANGS[round % 2];
        let at = p[round % 3];
        let id = format!("turn-{round}");
        let prefix = format!("turn{round}:");
        assert_eq!(cluster.exec(at, lang, &counter(lang, &prefix, &format!("n:{prefix}"), "1", "sync"), &["ID", &id]), "OK", "round {round}");
        made.push(id);
        for &i in &p {
            let have = session_ids(&cluster, i);
            let lost: Vec<&String> = made.iter().filter(|m| !have.contains(*m)).collect();
            assert!(lost.is_empty(), "round {round} (RG.EXEC on node {at}): node {i} lacks {lost:?}; lists {have:?}");
        }
    }
    // Dropped in turn from another primary than the one that made each.
    for (round, id) in made.iter().enumerate() {
        assert_eq!(cluster.cmd(p[(round + 1) % 3], &["RG.DROPSESSION", id]), "OK", "drop {id}");
    }
    wait_until(20, "every session dropped on every primary", || {
        let left: Vec<(usize, Vec<String>)> = p.iter().map(|&i| (i, session_ids(&cluster, i).into_iter().filter(|x| made.contains(x)).collect::<Vec<_>>())).filter(|(_, l)| !l.is_empty()).collect();
        if left.is_empty() { Ok(()) } else { Err(format!("listed (node, sessions): {left:?}")) }
    });
    // Every primary remembers the 24 drops, and the versions settle: no primary keeps
    // re-sending what the others already have (the clock stays put once all agree).
    wait_until(20, "every primary to hold 24 tombstones and the same clock", || {
        let seen: Vec<(String, String)> = p.iter().map(|&i| (info_rg(&cluster, i, "cluster_registrations_tombstones"), info_rg(&cluster, i, "cluster_registrations_epoch"))).collect();
        if seen.iter().all(|(t, c)| t == "24" && *c == seen[0].1) { Ok(()) } else { Err(format!("(tombstones, clock) per primary: {seen:?}")) }
    });
    let clock = info_rg(&cluster, p[0], "cluster_registrations_epoch");
    std::thread::sleep(Duration::from_millis(3000));
    for &i in &p {
        assert_eq!(info_rg(&cluster, i, "cluster_registrations_epoch"), clock, "node {i}: the clock moved with no change made");
    }
}

/// A field of INFO rg on node `i` ("" when absent).
fn info_rg(cluster: &Cluster, i: usize, name: &str) -> String {
    let info: String = redis::cmd("INFO").arg("rg").query(&mut cluster.conn(i)).expect("INFO rg");
    info.lines().find_map(|l| l.strip_prefix(&format!("rg_{name}:"))).map(|v| v.trim().to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// 3. A registration one shard refuses is refused everywhere

/// AUTH as `user` (nopass users take any password) on node `i`.
fn conn_as(cluster: &Cluster, i: usize, user: &str) -> redis::Connection {
    let mut c = cluster.conn(i);
    assert_eq!(fmt(&cmd(&mut c, &["AUTH", user, "any"])), "OK", "AUTH {user} on node {i}");
    c
}

#[test]
fn a_registration_one_shard_refuses_is_refused_everywhere_with_that_shards_error() {
    let mut cluster = Cluster::new(3);
    let p = cluster.primaries();
    let refuser = p[2];
    // u: FUNCTION LOAD is denied on shard 3 only. v: unknown on shard 3. w: may read app:
    // keys on shards 1 and 2, other: keys on shard 3. ok: the same everywhere.
    for &i in &p {
        let last = i == refuser;
        let u: &[&str] = if last { &["ACL", "SETUSER", "u", "on", "nopass", "~*", "&*", "+@all", "-function"] } else { &["ACL", "SETUSER", "u", "on", "nopass", "~*", "&*", "+@all"] };
        assert_eq!(cluster.cmd(i, u), "OK");
        if !last {
            assert_eq!(cluster.cmd(i, &["ACL", "SETUSER", "v", "on", "nopass", "~*", "&*", "+@all"]), "OK");
        }
        let w = if last { "~other:*" } else { "~app:*" };
        assert_eq!(cluster.cmd(i, &["ACL", "SETUSER", "w", "on", "nopass", w, "&*", "+@all"]), "OK");
        assert_eq!(cluster.cmd(i, &["ACL", "SETUSER", "ok", "on", "nopass", "~*", "&*", "+@all"]), "OK");
    }
    let shard = cluster.describe(refuser);
    let mut refused_ids = Vec::new();
    for lang in LANGS {
        let any_key = counter(lang, &format!("{lang}acl:"), "n:", "1", "sync");
        let app_keys = counter(lang, "app:", "n:app:", "1", "sync");
        let cases = [
            ("u", any_key.clone(), "NOPERM user 'u' may not register triggers: it needs the permission to run FUNCTION LOAD".to_string()),
            ("v", any_key.clone(), "NOPERM user 'v' may not register triggers: it needs the permission to run FUNCTION LOAD".to_string()),
            ("w", app_keys.clone(), "register: user 'w' may not read keys starting with 'app:'".to_string()),
        ];
        for (user, code, why) in &cases {
            for &from in &p[..2] {
                let id = format!("refused-{lang}-{user}-{from}");
                let got = common::exec(&mut conn_as(&cluster, from, user), lang, code, &["ID", &id]);
                let prefix = format!("register: shard {shard} refused:");
                assert!(got.contains(&prefix), "{lang}, user {user}, RG.EXEC on node {from}: expected `{prefix} ...`, got {got}");
                let want = format!("(error) ERR {prefix} {why}; nothing was registered");
                assert_eq!(got, want, "{lang}, user {user}, RG.EXEC on node {from}");
                refused_ids.push(id);
            }
        }
        // On the refusing shard itself, its own error.
        let got = common::exec(&mut conn_as(&cluster, refuser, "u"), lang, &any_key, &["ID", &format!("refused-{lang}-u-here")]);
        assert_eq!(got, "(error) NOPERM user 'u' may not register triggers: it needs the permission to run FUNCTION LOAD", "{lang}: on the refusing shard");
        refused_ids.push(format!("refused-{lang}-u-here"));
        // A user every shard accepts registers everywhere.
        let id = format!("accepted-{lang}");
        assert_eq!(common::exec(&mut conn_as(&cluster, p[0], "ok"), lang, &any_key, &["ID", &id]), "OK", "{lang}: user ok");
        for &i in &p {
            assert_listed(&cluster, i, &id, "an accepted registration");
            let user = sessions(&cluster, i).get(&id).and_then(|s| field(s, "user").map(text));
            assert_eq!(user.as_deref(), Some("ok"), "node {i}: the session's owner");
        }
    }
    // The accepted sessions were pushed after the refusals: by now nothing refused is
    // anywhere, and nothing arrives later.
    for &i in &p {
        let have = session_ids(&cluster, i);
        let half: Vec<&String> = refused_ids.iter().filter(|id| have.contains(*id)).collect();
        assert!(half.is_empty(), "node {i} lists refused sessions {half:?}");
        let want: BTreeSet<String> = [s("accepted-js"), s("accepted-lua")].into();
        assert_eq!(have, want, "node {i}: the sessions");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Catch-up

/// The index of the primary node `i` replicates, from its own CLUSTER NODES.
fn primary_of(cluster: &Cluster, i: usize) -> Option<String> {
    cluster.view(i).into_iter().find(|n| n.flags.iter().any(|f| f == "myself")).and_then(|n| n.master)
}

#[test]
fn a_failed_over_primary_comes_back_as_a_replica_with_every_registration() {
    let mut cluster = Options::default().replicas(1).node_timeout(3000).start();
    let p = cluster.primaries();
    let victim = p[2];
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let before: Vec<String> = LANGS.iter().map(|l| format!("before-{l}")).collect();
    let during: Vec<String> = LANGS.iter().map(|l| format!("during-{l}")).collect();
    for (lang, id) in LANGS.iter().zip(&before) {
        let prefix = format!("{lang}b4:");
        assert_eq!(cluster.exec(p[0], lang, &counter(lang, &prefix, &format!("n:{prefix}"), "1", "sync"), &["ID", id]), "OK");
    }
    // Every primary applied it and sent it to its replicas.
    wait_sessions(&cluster, &all, &before, &before, "every node, replicas too, to list the sessions");

    let new = cluster.kill_primary(victim);
    let owners = cluster.owners();
    // The promoted replica fires what its primary had.
    for lang in LANGS {
        let t = &tags_on(&owners, new, 1, &format!("{lang}b4"))[0];
        hset(&cluster, &owners, &format!("{lang}b4:{{{t}}}"));
        assert_eq!(count(&cluster, &owners, &format!("n:{lang}b4:{{{t}}}")), 1, "{lang}: the promoted replica (node {new}) fires");
    }
    // Registered while the old primary is down.
    let primaries = cluster.primaries();
    for (lang, id) in LANGS.iter().zip(&during) {
        let prefix = format!("{lang}dur:");
        assert_eq!(cluster.exec(p[1], lang, &counter(lang, &prefix, &format!("n:{prefix}"), "1", "sync"), &["ID", id]), "OK");
        for &i in &primaries {
            assert_listed(&cluster, i, id, "right after RG.EXEC, node down");
        }
    }
    // The old primary comes back (same directory and nodes.conf) as a replica of the new one.
    cluster.nodes[victim].restart();
    cluster.wait_ready();
    assert_eq!(primary_of(&cluster, victim).as_deref(), Some(cluster.ids[new].as_str()), "node {victim} rejoined as a replica of node {new}");
    let both: Vec<String> = before.iter().chain(&during).cloned().collect();
    wait_sessions(&cluster, &all, &both, &both, "every node, the returned one too, to list every session");
    // And once it is a primary again it fires both.
    cluster.failover(victim);
    let owners = cluster.owners();
    for lang in LANGS {
        for (prefix, seed) in [(format!("{lang}b4:"), format!("{lang}b4x")), (format!("{lang}dur:"), format!("{lang}dur"))] {
            let t = &tags_on(&owners, victim, 1, &seed)[0];
            hset(&cluster, &owners, &format!("{prefix}{{{t}}}"));
            assert_eq!(count(&cluster, &owners, &format!("n:{prefix}{{{t}}}")), 1, "{lang}: node {victim}, a primary again, fires {prefix}");
        }
    }
}

/// A 3-primary cluster without replicas whose other primaries keep serving while one is
/// down.
fn partial_coverage_cluster() -> Cluster {
    Options::default().extra(&["--cluster-require-full-coverage", "no"]).start()
}

#[test]
fn a_primary_restarted_from_an_rdb_saved_before_changes_catches_up_by_itself() {
    let mut cluster = partial_coverage_cluster();
    let p = cluster.primaries();
    let stale = p[2];
    let reg = |cluster: &Cluster, at: usize, lang: &str, id: &str, prefix: &str, by: &str, upgrade: bool| {
        let code = counter(lang, prefix, &format!("n:{prefix}"), by, "sync");
        let mut extra = vec!["ID", id];
        if upgrade {
            extra.push("UPGRADE");
        }
        assert_eq!(cluster.exec(at, lang, &code, &extra), "OK", "{lang}: RG.EXEC {extra:?} on node {at}");
        code
    };
    let mut upgraded = BTreeMap::new();
    for lang in LANGS {
        reg(&cluster, p[0], lang, &format!("kept-{lang}"), &format!("{lang}kept:"), "1", false);
        reg(&cluster, p[0], lang, &format!("dropped-{lang}"), &format!("{lang}drop:"), "1", false);
    }
    let watched: Vec<String> = LANGS.iter().flat_map(|l| [format!("kept-{l}"), format!("dropped-{l}"), format!("after-{l}")]).collect();
    let old: Vec<String> = LANGS.iter().flat_map(|l| [format!("kept-{l}"), format!("dropped-{l}")]).collect();
    wait_sessions(&cluster, &p, &watched, &old, "the first sessions everywhere");
    assert_eq!(cluster.cmd(stale, &["SAVE"]), "OK");
    // After the save: one registered, one dropped, one upgraded (each sent to another primary).
    for lang in LANGS {
        reg(&cluster, p[0], lang, &format!("after-{lang}"), &format!("{lang}after:"), "1", false);
        assert_eq!(cluster.cmd(p[1], &["RG.DROPSESSION", &format!("dropped-{lang}")]), "OK");
        let code = reg(&cluster, p[1], lang, &format!("kept-{lang}"), &format!("{lang}kept:"), "10", true);
        upgraded.insert(format!("kept-{lang}"), code);
    }
    let new: Vec<String> = LANGS.iter().flat_map(|l| [format!("kept-{l}"), format!("after-{l}")]).collect();
    wait_sessions(&cluster, &p, &watched, &new, "the changes everywhere");

    // kill -9 and start again: the node loads the RDB saved before the changes.
    cluster.nodes[stale].stop();
    cluster.nodes[stale].restart();
    let started = Instant::now();
    let first = session_ids(&cluster, stale);
    eprintln!("node {stale} right after its restart lists {first:?}");
    // Nobody sends it anything: it catches up from the other primaries' digests.
    wait_until(20, &format!("node {stale}, restarted from an old RDB, to catch up"), || {
        let have = sessions(&cluster, stale);
        let ids: BTreeSet<&String> = have.keys().filter(|k| watched.contains(k)).collect();
        let want: BTreeSet<&String> = new.iter().collect();
        if ids != want {
            return Err(format!("lists {ids:?}"));
        }
        for (id, code) in &upgraded {
            if have.get(id).and_then(|s| field(s, "source").map(text)).as_deref() != Some(code.as_str()) {
                return Err(format!("{id} is not the upgraded version"));
            }
        }
        Ok(())
    });
    eprintln!("node {stale} caught up {:?} after its restart", started.elapsed());
    cluster.wait_ready();
    let owners = cluster.owners();
    for lang in LANGS {
        for (prefix, want) in [(format!("{lang}kept:"), 10), (format!("{lang}after:"), 1), (format!("{lang}drop:"), 0)] {
            let t = &tags_on(&owners, stale, 1, &prefix.replace(':', ""))[0];
            hset(&cluster, &owners, &format!("{prefix}{{{t}}}"));
            assert_eq!(count(&cluster, &owners, &format!("n:{prefix}{{{t}}}")), want, "{lang}: node {stale} after catching up fires {prefix}");
        }
    }
}

#[test]
fn a_registration_made_while_a_primary_is_down_reaches_it_when_it_comes_back() {
    let mut cluster = partial_coverage_cluster();
    let p = cluster.primaries();
    let down = p[2];
    let base: Vec<String> = LANGS.iter().map(|l| format!("base-{l}")).collect();
    let later: Vec<String> = LANGS.iter().map(|l| format!("while-down-{l}")).collect();
    let watched: Vec<String> = base.iter().chain(&later).cloned().collect();
    for (lang, id) in LANGS.iter().zip(&base) {
        let prefix = format!("{lang}base:");
        assert_eq!(cluster.exec(p[0], lang, &counter(lang, &prefix, &format!("n:{prefix}"), "1", "sync"), &["ID", id]), "OK");
    }
    wait_sessions(&cluster, &p, &watched, &base, "the base sessions everywhere");
    // Its file has the base sessions.
    assert_eq!(cluster.cmd(down, &["SAVE"]), "OK");
    cluster.nodes[down].stop();
    // While it is down: the base sessions are dropped (on another primary), and new ones
    // registered. The replies are checked once the drops were seen to reach it, so that
    // a refused registration does not hide how the drops fared.
    for (lang, id) in LANGS.iter().zip(&base) {
        assert_eq!(cluster.cmd(p[1], &["RG.DROPSESSION", id]), "OK", "{lang}");
    }
    // Once the cluster flags it as failing, a registration does not wait for it (it
    // would wait rg.execution-max-idle-time, 5 s, to check and 5 s more to install).
    let port = cluster.nodes[down].port;
    wait_until(30, &format!("node {} to see node {down} flagged failing", p[0]), || {
        let view = cluster.view(p[0]);
        match view.iter().find(|n| n.port == port) {
            Some(n) if n.flags.iter().any(|f| f == "fail" || f == "fail?") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // The module reads CLUSTER NODES each second; at once with RG.REFRESHCLUSTER.
    assert_eq!(cluster.cmd(p[0], &["RG.REFRESHCLUSTER"]), "OK");
    let mut replies = Vec::new();
    for (lang, id) in LANGS.iter().zip(&later) {
        let prefix = format!("{lang}wd:");
        let t = Instant::now();
        let got = cluster.exec(p[0], lang, &counter(lang, &prefix, &format!("n:{prefix}"), "1", "sync"), &["ID", id]);
        let took = t.elapsed();
        eprintln!("{lang}: RG.EXEC with node {down} down answered in {took:?}: {got}");
        assert!(took < Duration::from_millis(4000), "{lang}: RG.EXEC waited {took:?} for a primary flagged failing");
        replies.push((lang, got));
    }
    cluster.nodes[down].restart();
    // The drops reach it.
    wait_sessions(&cluster, &[down], &base, &[], "the returned primary to drop the sessions dropped while it was down");
    for (lang, got) in &replies {
        assert_eq!(got, "OK", "{lang}: a registration while node {down} ({}) is down", cluster.describe(down));
    }
    wait_sessions(&cluster, &p[..2], &watched, &later, "the running primaries to have the changes");
    wait_sessions(&cluster, &[down], &watched, &later, "the returned primary to catch up");
    cluster.wait_ready();
    let owners = cluster.owners();
    for lang in LANGS {
        for (prefix, want) in [(format!("{lang}wd:"), 1), (format!("{lang}base:"), 0)] {
            let t = &tags_on(&owners, down, 1, &prefix.replace(':', ""))[0];
            hset(&cluster, &owners, &format!("{prefix}{{{t}}}"));
            assert_eq!(count(&cluster, &owners, &format!("n:{prefix}{{{t}}}")), want, "{lang}: node {down} after coming back fires {prefix}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. Write-behind registered once

/// The time of day (UTC), to line the test's steps up with the servers' logs.
fn now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let d = t.as_secs() % 86400;
    format!("{:02}:{:02}:{:02}.{:03}", d / 3600, d / 60 % 60, d % 60, t.subsec_millis())
}

/// The ids in a table.
fn pg_ids(pg: &testdb::Postgres, table: &str) -> BTreeSet<String> {
    pg.sql(&format!("SELECT id FROM {table}")).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// Waits until the table's ids are exactly the acknowledged keys without their prefix.
fn wait_rows(pg: &testdb::Postgres, table: &str, prefix: &str, acked: &BTreeSet<String>, secs: u64) {
    if let Err(e) = rows_arrive(pg, table, prefix, acked, secs) {
        panic!("table {table} to hold every acknowledged key: still {e}");
    }
}

/// Polls until the table's ids are exactly the acknowledged keys without their prefix;
/// after `secs`, how far it got.
fn rows_arrive(pg: &testdb::Postgres, table: &str, prefix: &str, acked: &BTreeSet<String>, secs: u64) -> Result<(), String> {
    let want: BTreeSet<String> = acked.iter().map(|k| k.strip_prefix(prefix).expect("prefix").to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = pg_ids(pg, table);
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = want.difference(&got).take(10).collect();
            let extra: Vec<&String> = got.difference(&want).take(10).collect();
            return Err(format!("{} rows of {}; missing {missing:?}..., unexpected {extra:?}...", got.len(), want.len()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the cluster holds for keys that did not arrive: where each is served and whether
/// it is there, the recipe's streams on every primary, and each primary's recipe status.
fn diagnose(cluster: &mut Cluster, pg: &testdb::Postgres, name: &str, prefix: &str, table: &str, acked: &BTreeSet<String>, how: &BTreeMap<String, (u16, bool, usize)>) -> String {
    let owners = cluster.owners();
    let got = pg_ids(pg, table);
    let missing: Vec<&String> = acked.iter().filter(|k| !got.contains(k.strip_prefix(prefix).unwrap())).collect();
    let mut out = format!("{name}: {} acknowledged keys missing from {table}\n", missing.len());
    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
    for k in &missing {
        *per.entry(owner(&owners, k)).or_default() += 1;
    }
    out += &format!("  missing per serving node: {per:?}\n");
    let mut acked_by: BTreeMap<(u16, bool), Vec<usize>> = BTreeMap::new();
    for k in &missing {
        let (port, waited, i) = how.get(*k).copied().unwrap_or((0, false, 0));
        acked_by.entry((port, waited)).or_default().push(i);
    }
    out += &format!("  missing per (port that acknowledged, confirmed by WAIT 1): the writer's acknowledgement numbers (port 0: written before the failover step): {acked_by:?}\n");
    for k in missing.iter().take(5) {
        let n = owner(&owners, k);
        out += &format!("  {k}: slot {}, node {n}, acknowledged by {:?}, HGETALL {}\n", common::slot(k), how.get(*k), cluster.cmd(n, &["HGETALL", k]));
    }
    let primaries = cluster.primaries();
    for i in cluster.live() {
        let keys = cluster.cmd(i, &["KEYS", &format!("rg:wb:{name}*")]);
        let streams: Vec<String> = common::canon::split_top(&keys).unwrap_or_default().into_iter().map(|k| {
            let k = k.trim_matches('"').to_string();
            let len = cluster.cmd(i, &["XLEN", &k]);
            format!("{k}={len}")
        }).collect();
        let role = if primaries.contains(&i) { "primary" } else { "replica" };
        let regs = registrations(cluster, i);
        let recipe: Vec<String> = regs.values().filter_map(|r| field(r, "recipe").filter(|v| !matches!(v, Value::Nil)).filter(|v| field(v, "name").map(text).as_deref() == Some(name)).map(fmt)).collect();
        let streams: Vec<&String> = streams.iter().take(5).collect();
        let dbsize = cluster.cmd(i, &["DBSIZE"]);
        out += &format!("  node {i} ({role}, {}): DBSIZE {dbsize}, streams {streams:?}...\n    recipe {recipe:?}\n", cluster.describe(i));
    }
    // The logs, for what happened around the failover.
    for (i, n) in cluster.nodes.iter().enumerate() {
        let log = n.log();
        let lines: Vec<&str> = log.lines().collect();
        out += &format!("  --- log of node {i}\n");
        for l in &lines[lines.len().saturating_sub(400)..] {
            out += &format!("    {l}\n");
        }
    }
    out
}

/// Slot ranges -> (primary port, whether the primary has a replica that is not failing),
/// from CLUSTER NODES of any node that answers. (Not CLUSTER SLOTS: Redis 7.0 leaves out a
/// replica whose replication offset is still 0, e.g. one that has had nothing streamed since
/// its full sync, and a write acknowledged without WAIT there is lost at a failover.)
fn routes(ports: &[u16]) -> Option<Vec<(u16, u16, u16, bool)>> {
    for port in ports {
        let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{port}/")).and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500))) else { continue };
        let Ok(text) = redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut c) else { continue };
        let nodes = common::cluster::parse_nodes(&text);
        let mut r = Vec::new();
        for n in nodes.iter().filter(|n| n.is_primary() && !n.troubled() && !n.slots.is_empty()) {
            let replica = nodes.iter().any(|x| x.master.as_deref() == Some(n.id.as_str()) && !x.troubled());
            for range in &n.slots {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    r.push((a, b, n.port, replica));
                }
            }
        }
        if !r.is_empty() {
            return Some(r);
        }
    }
    None
}

/// A writer thread: HSET `<prefix>f<i>` (the prefixes in turn) on the primary serving the
/// key, until told to stop. A write is acknowledged when the primary replied and, if its
/// slots have a replica, `WAIT 1` says the replica has it; one that was not is tried again
/// (same key) after the routes are read again. Acknowledged keys are in `acked`.
struct Writer {
    stop: Arc<AtomicBool>,
    /// (key, port that acknowledged it, whether a replica confirmed it with WAIT).
    acked: Arc<Mutex<Vec<(String, u16, bool)>>>,
    handle: std::thread::JoinHandle<()>,
}

fn writer(ports: Vec<u16>, prefixes: Vec<String>) -> Writer {
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let (st, ak) = (stop.clone(), acked.clone());
    let handle = std::thread::spawn(move || {
        let mut conns: HashMap<u16, redis::Connection> = HashMap::new();
        let mut table = routes(&ports).expect("routes");
        let mut i = 0usize;
        while !st.load(Ordering::Relaxed) {
            let key = format!("{}f{i}", prefixes[i % prefixes.len()]);
            let since = Instant::now();
            let mut last = String::new();
            loop {
                assert!(since.elapsed() < Duration::from_secs(90), "HSET {key} never acknowledged: {last}");
                let slot = common::slot(&key);
                let Some(&(_, _, port, replica)) = table.iter().find(|(a, b, _, _)| *a <= slot && slot <= *b) else {
                    table = routes(&ports).unwrap_or_default();
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let c = match conns.get_mut(&port) {
                    Some(c) => c,
                    None => match redis::Client::open(format!("redis://127.0.0.1:{port}/")).and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500))) {
                        Ok(c) => {
                            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                            conns.entry(port).or_insert(c)
                        }
                        Err(e) => {
                            last = format!("connect to {port}: {e}");
                            table = routes(&ports).unwrap_or(table);
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    },
                };
                let r: redis::RedisResult<i64> = redis::cmd("HSET").arg(&key).arg("name").arg(format!("n{i}")).query(c);
                let r = r.and_then(|n| if replica { redis::cmd("WAIT").arg(1).arg(2000).query::<i64>(c) } else { Ok(n.max(1)) });
                match r {
                    Ok(n) if n >= 1 => {
                        ak.lock().unwrap().push((key.clone(), port, replica));
                        break;
                    }
                    Ok(_) => last = format!("WAIT on {port}: no replica has it"),
                    Err(e) => {
                        last = format!("on {port}: {e}");
                        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
                            conns.remove(&port);
                        }
                    }
                }
                table = routes(&ports).unwrap_or(table);
                std::thread::sleep(Duration::from_millis(20));
            }
            i += 1;
        }
    });
    Writer { stop, acked, handle }
}

impl Writer {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
    fn finish(self) -> Vec<(String, u16, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the writer failed");
        Arc::try_unwrap(self.acked).expect("acked").into_inner().unwrap()
    }
}

/// The recipe script of `lang` for table `table` and prefix `prefix`, recipe `name`.
fn recipe(lang: &str, name: &str, prefix: &str, table: &str) -> String {
    match lang {
        "lua" => format!(
            "local recipes = require('gears/recipes')\nrecipes.writeBehind({{ name = '{name}', prefix = '{prefix}', target = recipes.postgres({{ connection = 'pg', table = '{table}' }}), flushMs = 10 }})"
        ),
        "js" => format!(
            "import {{ writeBehind, postgres }} from 'gears/recipes';\nwriteBehind({{ name: '{name}', prefix: '{prefix}', target: postgres({{ connection: 'pg', table: '{table}' }}), flushMs: 10 }});"
        ),
        _ => unreachable!(),
    }
}

/// `rg_recipe_<name>:backlog=<n>` of INFO rg on node `i`.
fn info_backlog(cluster: &Cluster, i: usize, name: &str) -> i64 {
    let info: String = redis::cmd("INFO").arg("rg").query(&mut cluster.conn(i)).expect("INFO rg");
    let tag = format!("rg_recipe_{name}:");
    info.lines()
        .find(|l| l.starts_with(&tag))
        .and_then(|l| l.split(',').find_map(|kv| kv.trim_start_matches(&tag).strip_prefix("backlog=").map(|v| v.trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

#[test]
fn a_write_behind_registered_once_delivers_every_row_from_every_shard_across_a_failover() {
    let pg = testdb::Postgres::start();
    let url = pg.url();
    let mut cluster = Options::default().replicas(1).node_timeout(3000).module_args(&["connection.pg", &url]).start();
    let p = cluster.primaries();
    // (lang, recipe name, session, key prefix, table)
    let recipes: Vec<(&str, String, String, String, String)> = LANGS.iter().map(|l| (*l, format!("wb{l}"), format!("wb-{l}"), format!("{l}u:"), format!("users_{l}"))).collect();
    for (lang, name, session, prefix, table) in &recipes {
        pg.sql(&format!("CREATE TABLE {table} (id text PRIMARY KEY, name text)"));
        assert_eq!(cluster.exec(p[0], lang, &recipe(lang, name, prefix, table), &["ID", session]), "OK", "{lang}: the recipe, registered once on node {}", p[0]);
        for &i in &p {
            assert_listed(&cluster, i, session, "right after RG.EXEC");
        }
    }
    // Every replica has what its primary streamed so far (on Redis 7.0 a replica just synced
    // without disk gets nothing streamed until it first acknowledges, about a second later).
    cluster.wait_replicated();
    eprintln!("{} cluster ready, recipes registered", now());
    // Keys on every shard, with and without hashtags.
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let owners = cluster.owners();
    for (_, _, _, prefix, _) in &recipes {
        let keys: Vec<String> = (0..300).map(|i| format!("{prefix}{i}")).chain((0..30).map(|i| format!("{prefix}{{eu}}:{i}"))).collect();
        let on: BTreeSet<usize> = keys.iter().map(|k| owner(&owners, k)).collect();
        assert_eq!(on.len(), 3, "keys on every shard");
        for k in &keys {
            let n = owner(&owners, k);
            assert_eq!(cluster.cmd(n, &["HSET", k, "name", k]), "1", "HSET {k} on node {n}");
        }
        acked.insert(prefix.clone(), keys.into_iter().collect());
    }
    for (_, _, _, prefix, table) in &recipes {
        wait_rows(&pg, table, prefix, &acked[prefix], 60);
    }

    eprintln!("{} first keys arrived", now());
    // Paused (on another primary): every shard captures and applies nothing; the cluster
    // view sums the shards' backlogs, as each shard's INFO rg counts its own.
    let regs: Vec<String> = recipes.iter().map(|(_, _, session, _, _)| registration_ids(&cluster, p[0], session)[0].clone()).collect();
    let mut pause = vec!["RG.PAUSEREGISTRATIONS"];
    pause.extend(regs.iter().map(String::as_str));
    assert_eq!(cluster.cmd(p[1], &pause), "OK");
    for &i in &p {
        for r in &regs {
            wait_until(20, &format!("node {i}: {r} paused"), || {
                let st = registrations(&cluster, i).get(r).and_then(|x| field(x, "status").map(text));
                if st.as_deref() == Some("paused") { Ok(()) } else { Err(format!("{st:?}")) }
            });
        }
    }
    const HELD: i64 = 120;
    for (_, _, _, prefix, _) in &recipes {
        for i in 0..HELD {
            let k = format!("{prefix}held{i}");
            let n = owner(&owners, &k);
            assert_eq!(cluster.cmd(n, &["HSET", &k, "name", &k]), "1");
            acked.get_mut(prefix).unwrap().insert(k);
        }
    }
    for ((_, name, _, prefix, table), reg) in recipes.iter().zip(&regs) {
        wait_until(20, &format!("{name}: RG.DUMPREGISTRATIONS CLUSTER to sum a backlog of {HELD}"), || {
            let d = cluster_dump(&cluster, p[2]);
            let shards = per_shard(&d, reg, "recipe.backlog");
            let sum = total(&d, reg, "recipe.backlog");
            let busy = shards.values().filter(|&&b| b > 0).count();
            if sum == Some(HELD) && shards.values().sum::<i64>() == HELD && shards.len() == 3 && busy >= 2 {
                Ok(())
            } else {
                Err(format!("per shard {shards:?}, total {sum:?}"))
            }
        });
        let infos: Vec<i64> = p.iter().map(|&i| info_backlog(&cluster, i, name)).collect();
        assert_eq!(infos.iter().sum::<i64>(), HELD, "{name}: INFO rg backlog per shard {infos:?}");
        assert_eq!(pg_ids(&pg, table).iter().filter(|id| id.starts_with("held")).count(), 0, "{name}: paused, nothing applied");
        let _ = prefix;
    }
    let mut unpause = vec!["RG.UNPAUSEREGISTRATIONS"];
    unpause.extend(regs.iter().map(String::as_str));
    assert_eq!(cluster.cmd(p[2], &unpause), "OK");
    for (_, _, _, prefix, table) in &recipes {
        wait_rows(&pg, table, prefix, &acked[prefix], 60);
    }

    cluster.wait_replicated();
    eprintln!("{} held keys arrived", now());
    // A failover in the middle of a stream of writes to every shard.
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let w = writer(ports, recipes.iter().map(|r| r.3.clone()).collect());
    wait_until(60, "200 acknowledged writes before the kill", || if w.acked() >= 200 { Ok(()) } else { Err(w.acked().to_string()) });
    let victim = p[2];
    eprintln!("{} {} acknowledged, killing node {victim}", now(), w.acked());
    let new = cluster.kill_primary(victim);
    let at_takeover = w.acked();
    eprintln!("{} node {new} took over, {at_takeover} acknowledged", now());
    wait_until(90, "200 more acknowledged writes after the failover", || if w.acked() >= at_takeover + 200 { Ok(()) } else { Err(format!("{} of {}", w.acked(), at_takeover + 200)) });
    eprintln!("{} {} acknowledged, stopping the writer", now(), w.acked());
    let written = w.finish();
    let owners = cluster.owners();
    let on_new = written.iter().filter(|(k, _, _)| owner(&owners, k) == new).count();
    let how: BTreeMap<String, (u16, bool, usize)> = written.iter().enumerate().map(|(i, (k, p, w))| (k.clone(), (*p, *w, i))).collect();
    eprintln!("{} acknowledged writes during the failover, {on_new} of them on the promoted replica (node {new})", written.len());
    assert!(on_new > 0, "some writes went to the promoted replica");
    for (k, _, _) in written {
        let prefix = recipes.iter().map(|r| &r.3).find(|p| k.starts_with(p.as_str())).expect("prefix").clone();
        acked.get_mut(&prefix).unwrap().insert(k);
    }
    let mut failed = String::new();
    for (_, name, _, prefix, table) in &recipes {
        if let Err(e) = rows_arrive(&pg, table, prefix, &acked[prefix], 90) {
            failed += &format!("table {table}: still {e}\n{}", diagnose(&mut cluster, &pg, name, prefix, table, &acked[prefix], &how));
        }
    }
    assert!(failed.is_empty(), "after the failover (node {victim} killed, node {new} promoted), acknowledged writes did not arrive (the takeover was seen at acknowledgement #{at_takeover}):\n{failed}");
    // The cluster view: three shards, nothing left.
    for ((_, name, _, _, _), reg) in recipes.iter().zip(&regs) {
        wait_until(20, &format!("{name}: drained on every shard"), || {
            let d = cluster_dump(&cluster, new);
            let shards = per_shard(&d, reg, "recipe.backlog");
            if shards.len() == 3 && total(&d, reg, "recipe.backlog") == Some(0) && dump_shards(&d).contains(&cluster.ids[new]) {
                Ok(())
            } else {
                Err(format!("per shard {shards:?}: {}", fmt(&d)))
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// 6. requirepass

#[test]
fn registrations_sync_on_a_cluster_with_requirepass() {
    let mut cluster = Options::default().password("s3cret").start();
    let p = cluster.primaries();
    let owners = cluster.owners();
    for lang in LANGS {
        let id = format!("pw-{lang}");
        let prefix = format!("{lang}pw:");
        let ctr = format!("n:{prefix}");
        assert_eq!(cluster.exec(p[0], lang, &counter(lang, &prefix, &ctr, "1", "sync"), &["ID", &id]), "OK");
        for &i in &p {
            assert_listed(&cluster, i, &id, "right after RG.EXEC");
        }
        let t = &tags_on(&owners, p[2], 1, &format!("{lang}pw"))[0];
        let key = format!("{prefix}{{{t}}}");
        hset(&cluster, &owners, &key);
        assert_eq!(count(&cluster, &owners, &format!("{ctr}{{{t}}}")), 1, "{lang}: fired on shard 3");
        let reg = registration_ids(&cluster, p[0], &id)[0].clone();
        let d = cluster_dump(&cluster, p[1]);
        assert_eq!(total(&d, &reg, "numTriggered"), Some(1), "{}", fmt(&d));
        assert_eq!(dump_shards(&d), cluster.primary_ids(), "every shard answered");
        // UPGRADE on shard 2, then drop on shard 3.
        assert_eq!(cluster.exec(p[1], lang, &counter(lang, &prefix, &ctr, "10", "sync"), &["ID", &id, "UPGRADE"]), "OK");
        hset(&cluster, &owners, &key);
        assert_eq!(count(&cluster, &owners, &format!("{ctr}{{{t}}}")), 11, "{lang}: the upgrade on shard 3");
        assert_eq!(cluster.cmd(p[2], &["RG.DROPSESSION", &id]), "OK");
        wait_sessions(&cluster, &p, &[id.clone()], &[], "the session dropped everywhere");
        hset(&cluster, &owners, &key);
        assert_eq!(count(&cluster, &owners, &format!("{ctr}{{{t}}}")), 11, "{lang}: dropped");
    }
}
