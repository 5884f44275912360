//! Map-reduce on a 3-primary Redis Cluster gives exactly what a single Redis holding the
//! same keys gives: for random data sets (proptest, seeded), every composite step (count,
//! countBy, distinct, avg, sort, limit after sort, aggregate, aggregateBy, groupBy,
//! batchGroupBy), map/filter/flatmap, and explicit repartition and collect, in Lua and in
//! JavaScript, sent to each primary in turn. Also: `async_local` stays on one shard,
//! ShardsIDReader gives one id per primary, `hashtag()` names a local slot, and `execute()`
//! on another shard's key fails with the documented error.

mod common;

use common::canon::split_top;
use common::cluster::{hex_ids, populate_standalone, words, Cluster};
use common::{cmd, exec, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

/// How a cluster's reply is compared with the single Redis's.
#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    /// Equal: the step defines the order of the results.
    Ordered,
    /// Equal once the results are sorted.
    Unordered,
    /// As many results (`limit` without `sort`: which records is not defined).
    Size,
}

/// A script in both languages.
struct Script {
    name: &'static str,
    lua: &'static str,
    js: &'static str,
    cmp: Cmp,
}

const fn ordered(name: &'static str, lua: &'static str, js: &'static str) -> Script {
    Script { name, lua, js, cmp: Cmp::Ordered }
}
const fn unordered(name: &'static str, lua: &'static str, js: &'static str) -> Script {
    Script { name, lua, js, cmp: Cmp::Unordered }
}
const fn size(name: &'static str, lua: &'static str, js: &'static str) -> Script {
    Script { name, lua, js, cmp: Cmp::Size }
}

const SCRIPTS: &[Script] = &[
    ordered("count_all", "GB():count():run('*')", "GB().count().run('*')"),
    ordered("count_users", "GB():count():run('user:*')", "GB().count().run('user:*')"),
    unordered("count_by_city", "GB():countBy(function(r) return r.value.city end):run('user:*')", "GB().countBy(r => r.value.city).run('user:*')"),
    unordered("count_by_value", "GB():countBy(function(r) return r.value end):run('page:*')", "GB().countBy(r => r.value).run('page:*')"),
    unordered(
        "count_by_record",
        "GB():map(function(r) return r.value.name end):countBy():run('user:*')",
        "GB().map(r => r.value.name).countBy().run('user:*')",
    ),
    unordered("distinct", "GB():map(function(r) return r.value.city end):distinct():run('user:*')", "GB().map(r => r.value.city).distinct().run('user:*')"),
    unordered("distinct_types", "GB('KeysOnlyReader'):map(function(r) return r.type end):distinct():run('*')", "GB('KeysOnlyReader').map(r => r.type).distinct().run('*')"),
    ordered("avg", "GB():avg(function(r) return tonumber(r.value.age) end):run('user:*')", "GB().avg(r => Number(r.value.age)).run('user:*')"),
    ordered("avg_of_strings", "GB():map(function(r) return r.value end):avg():run('page:*')", "GB().map(r => r.value).avg().run('page:*')"),
    ordered("sort", "GB():map(function(r) return tonumber(r.value.age) end):sort():run('user:*')", "GB().map(r => Number(r.value.age)).sort().run('user:*')"),
    ordered("sort_reverse", "GB():map(function(r) return r.key end):sort(true):run('*')", "GB().map(r => r.key).sort(true).run('*')"),
    size("limit", "GB():map(function(r) return r.key end):limit(5):run('*')", "GB().map(r => r.key).limit(5).run('*')"),
    ordered("limit_then_count", "GB():limit(3, 2):count():run('*')", "GB().limit(3, 2).count().run('*')"),
    size(
        "limit_after_collect",
        "GB():map(function(r) return r.key end):collect():limit(4):run('user:*')",
        "GB().map(r => r.key).collect().limit(4).run('user:*')",
    ),
    ordered("limit_after_sort", "GB():map(function(r) return r.key end):sort():limit(5, 3):run('*')", "GB().map(r => r.key).sort().limit(5, 3).run('*')"),
    ordered(
        "aggregate",
        "GB():aggregate(0, function(a, r) return a + tonumber(r.value.age) end, function(a, p) return a + p end):run('user:*')",
        "GB().aggregate(0, (a, r) => a + Number(r.value.age), (a, p) => a + p).run('user:*')",
    ),
    unordered(
        "aggregate_by",
        "GB():aggregateBy(function(r) return r.value.city end, 0, function(k, a, r) return a + tonumber(r.value.age) end, function(k, a, p) return a + p end):run('user:*')",
        "GB().aggregateBy(r => r.value.city, 0, (k, a, r) => a + Number(r.value.age), (k, a, p) => a + p).run('user:*')",
    ),
    unordered(
        "group_by",
        "GB():groupBy(function(r) return r.value.city end, function(k, names, r) names = names or {} names[#names + 1] = r.value.name table.sort(names) return names end):run('user:*')",
        "GB().groupBy(r => r.value.city, (k, names, r) => [...(names ?? []), r.value.name].sort()).run('user:*')",
    ),
    unordered(
        "batch_group_by",
        "GB():batchGroupBy(function(r) return r.value.city end, function(k, rs) local s = 0 for _, r in ipairs(rs) do s = s + tonumber(r.value.age) end return {#rs, s} end):run('user:*')",
        "GB().batchGroupBy(r => r.value.city, (k, rs) => [rs.length, rs.reduce((s, r) => s + Number(r.value.age), 0)]).run('user:*')",
    ),
    unordered(
        "map_filter_flatmap",
        "GB():filter(function(r) return tonumber(r.value.age) > 40 end):flatmap(function(r) return {r.key, r.value.city} end):map(function(r) return 'x' .. r end):run('user:*')",
        "GB().filter(r => Number(r.value.age) > 40).flatmap(r => [r.key, r.value.city]).map(r => 'x' + r).run('user:*')",
    ),
    unordered(
        "repartition_collect",
        "GB():repartition(function(r) return r.value.city end):map(function(r) return r.value.city .. '/' .. r.key end):collect():run('user:*')",
        "GB().repartition(r => r.value.city).map(r => r.value.city + '/' + r.key).collect().run('user:*')",
    ),
    unordered(
        "repartition_then_local_group",
        "GB():repartition(function(r) return r.value.city end):localGroupBy(function(r) return r.value.city end, function(k, a, r) return (a or 0) + 1 end):run('user:*')",
        "GB().repartition(r => r.value.city).localGroupBy(r => r.value.city, (k, a, r) => (a ?? 0) + 1).run('user:*')",
    ),
    ordered("repartition_count", "GB():repartition(function(r) return r.value end):count():run('page:*')", "GB().repartition(r => r.value).count().run('page:*')"),
    unordered(
        "repartition_by_own_key",
        "GB():repartition(function(r) return r.key end):map(function(r) return r.key end):run('*')",
        "GB().repartition(r => r.key).map(r => r.key).run('*')",
    ),
    ordered(
        "collect_then_sort",
        "GB():map(function(r) return r.value.name end):collect():sort():run('user:*')",
        "GB().map(r => r.value.name).collect().sort().run('user:*')",
    ),
    ordered(
        "collect_then_accumulate",
        "GB():map(function(r) return tonumber(r.value.age) end):collect():accumulate(function(a, n) return (a or 0) + n end):run('user:*')",
        "GB().map(r => Number(r.value.age)).collect().accumulate((a, n) => (a ?? 0) + n).run('user:*')",
    ),
    unordered(
        "record_errors",
        "GB():map(function(r) if r.type ~= 'hash' then error('not a hash: ' .. r.key, 0) end return r.key end):run('*')",
        "GB().map(r => { if (r.type !== 'hash') throw 'not a hash: ' + r.key; return r.key; }).run('*')",
    ),
];

/// `[results, errors]` with the errors sorted (their order is never defined) and the
/// results as `cmp` says: as they are, sorted, or only their number. Other replies as they are.
fn canon(reply: &str, cmp: Cmp) -> String {
    match split_top(reply) {
        Some(parts) if parts.len() == 2 && parts[0].starts_with('[') && parts[1].starts_with('[') => {
            let mut results = split_top(&parts[0]).unwrap_or_default();
            let mut errors = split_top(&parts[1]).unwrap_or_default();
            errors.sort();
            match cmp {
                Cmp::Ordered => {}
                Cmp::Unordered => results.sort(),
                Cmp::Size => return format!("[<{} results>, [{}]]", results.len(), errors.join(", ")),
            }
            format!("[[{}], [{}]]", results.join(", "), errors.join(", "))
        }
        _ => reply.to_string(),
    }
}

const NAMES: &[&str] = &["ada", "grace", "linus", "barbara", "ken", "edsger"];
const CITIES: &[&str] = &["paris", "rome", "oslo", "lima"];
const TAGS: &[&str] = &["eu", "us", "a1"];

/// One random data set: `user:*` hashes (some under a hashtag, so many share a slot),
/// `page:*` strings holding small numbers, and `item:*` keys of other types.
#[derive(Clone, Debug)]
struct Data {
    users: Vec<(u32, Option<usize>, usize, usize, i64)>,
    pages: Vec<(u32, u32)>,
    items: Vec<(u32, u8)>,
    batch: usize,
}

fn data() -> impl Strategy<Value = Data> {
    (
        proptest::collection::vec((0u32..400, proptest::option::weighted(0.2, 0..TAGS.len()), 0..NAMES.len(), 0..CITIES.len(), 18i64..90), 0..120),
        proptest::collection::vec((0u32..300, 0u32..20), 0..60),
        proptest::collection::vec((0u32..50, 0u8..4), 0..20),
        proptest::sample::select(vec![1usize, 3, 50, 1000]),
    )
        .prop_map(|(users, pages, items, batch)| Data { users, pages, items, batch })
}

impl Data {
    /// The commands that write it (one per key: a later one for the same key wins).
    fn commands(&self) -> Vec<Vec<String>> {
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for &(id, tag, name, city, age) in &self.users {
            let key = match tag {
                Some(t) => format!("user:{{{}}}:{id}", TAGS[t]),
                None => format!("user:{id}"),
            };
            by_key.insert(key.clone(), words(&["HSET", &key, "name", NAMES[name], "city", CITIES[city], "age", &age.to_string()]));
        }
        for &(id, views) in &self.pages {
            let key = format!("page:{id}");
            by_key.insert(key.clone(), words(&["SET", &key, &views.to_string()]));
        }
        for &(id, kind) in &self.items {
            let key = format!("item:{id}");
            let c = match kind {
                0 => words(&["RPUSH", &key, "a", "b"]),
                1 => words(&["SADD", &key, "x", "y"]),
                2 => words(&["ZADD", &key, "1", "one"]),
                _ => words(&["SET", &key, "text"]),
            };
            by_key.insert(key, c);
        }
        by_key.into_values().collect()
    }
}

#[test]
fn every_step_gives_what_a_single_redis_gives_in_lua_and_js_from_every_primary() {
    let mut cluster = Cluster::new(3);
    let single = Server::start(&[]);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let cases: u32 = std::env::var("RG_CLUSTER_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let config = Config { cases, max_shrink_iters: 4, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let cluster = std::cell::RefCell::new(cluster);
    let result = runner.run(&data(), |d| {
        let mut cluster = cluster.borrow_mut();
        cluster.flushall();
        cmd(&mut single.conn(), &["FLUSHALL"]);
        let commands = d.commands();
        cluster.populate(&commands);
        populate_standalone(&single, &commands);
        cluster.config_set("cluster-batch-size", &d.batch.to_string());
        let mut failures = Vec::new();
        let mut compared = 0;
        let mut conns: Vec<redis::Connection> = primaries.iter().map(|&p| cluster.conn(p)).collect();
        let mut s = single.conn();
        for script in SCRIPTS {
            let mut by_lang = Vec::new();
            for (lang, code) in [("lua", script.lua), ("js", script.js)] {
                let expected = canon(&exec(&mut s, lang, code, &[]), script.cmp);
                for (c, &p) in conns.iter_mut().zip(&primaries) {
                    let got = canon(&exec(c, lang, code, &[]), script.cmp);
                    compared += 1;
                    if got != expected {
                        failures.push(format!("{} [{lang}] on primary {p} ({} keys, cluster-batch-size {})\n  script:   {code}\n  single:   {expected}\n  cluster:  {got}", script.name, commands.len(), d.batch));
                    }
                }
                if script.name == "count_by_city" && lang == "lua" {
                    println!("case: {} keys, cluster-batch-size {}; countBy city on a single Redis: {expected}", commands.len(), d.batch);
                }
                by_lang.push(expected);
            }
            // The twins must agree, or the comparison above checks two different things.
            if by_lang[0] != by_lang[1] && script.name != "record_errors" {
                failures.push(format!("{}: Lua and JS differ on a single Redis:\n  lua: {}\n  js:  {}", script.name, by_lang[0], by_lang[1]));
            }
        }
        if failures.is_empty() {
            println!("  {compared} cluster replies equal the single Redis's");
            Ok(())
        } else {
            Err(TestCaseError::fail(format!("{} mismatch(es):\n{}", failures.len(), failures.join("\n"))))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Runs `code` (the same text is valid Lua and JS here, or a pair) on node `i` in both
/// languages and returns both replies.
fn both(cluster: &Cluster, i: usize, lua: &str, js: &str) -> [String; 2] {
    [cluster.exec(i, "lua", lua, &[]), cluster.exec(i, "js", js, &[])]
}

/// The results of a `[results, errors]` reply, sorted.
fn results(reply: &str) -> Vec<String> {
    let parts = split_top(reply).unwrap_or_else(|| panic!("not [results, errors]: {reply}"));
    assert_eq!(parts.len(), 2, "not [results, errors]: {reply}");
    assert_eq!(parts[1], "[]", "errors: {reply}");
    let mut r = split_top(&parts[0]).unwrap_or_default();
    r.sort();
    r
}

fn quoted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.into_iter().map(|s| common::canon::quote(&s)).collect();
    v.sort();
    v
}

#[test]
fn async_local_shard_ids_hashtag_and_another_shards_key() {
    let mut cluster = Cluster::new(3);
    let primaries = cluster.primaries();
    let ids = cluster.primary_ids();
    assert_eq!(ids.len(), 3);
    let commands: Vec<Vec<String>> = (0..300).map(|i| words(&["SET", &format!("k:{i}"), &i.to_string()])).collect();
    cluster.populate(&commands);
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };

    for &p in &primaries {
        // async_local: this shard's keys only.
        let local: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut cluster.conn(p)).expect("KEYS");
        let local = quoted(local);
        for got in both(
            &cluster,
            p,
            "GB():map(function(r) return r.key end):run('*', {mode = 'async_local'})",
            "GB().map(r => r.key).run('*', {mode: 'async_local'})",
        ) {
            check(results(&got) == local, format!("async_local on primary {p}: {} keys, expected its {} keys", results(&got).len(), local.len()));
        }
        for got in both(&cluster, p, "GB():count():run('*', {mode = 'async_local'})", "GB().count().run('*', {mode: 'async_local'})") {
            check(got == format!("[[{}], []]", local.len()), format!("async_local count on primary {p}: {got}, expected {}", local.len()));
        }
        // The default mode sees every key.
        for got in both(&cluster, p, "GB():count():run('k:*')", "GB().count().run('k:*')") {
            check(got == "[[300], []]", format!("count on primary {p}: {got}"));
        }

        // ShardsIDReader: one record per primary, its node id; shardId() is CLUSTER MYID.
        let want = quoted(ids.iter().cloned());
        for got in both(&cluster, p, "GB('ShardsIDReader'):run()", "GB('ShardsIDReader').run()") {
            check(results(&got) == want, format!("ShardsIDReader on primary {p}: {got}, expected {want:?}"));
        }
        for got in both(&cluster, p, "return shardId()", "shardId()") {
            check(got == common::canon::quote(&cluster.ids[p]), format!("shardId() on primary {p}: {got}, CLUSTER MYID {}", cluster.ids[p]));
        }
        let info = cluster.cmd(p, &["RG.INFOCLUSTER"]);
        let named = hex_ids(&info);
        check(ids.iter().all(|id| named.contains(id)), format!("RG.INFOCLUSTER on primary {p} lacks a primary id: {info}"));
        check(info.contains(&cluster.ids[p]), format!("RG.INFOCLUSTER on {p} does not give its own id: {info}"));
        for &q in &primaries {
            check(info.contains(&cluster.nodes[q].port.to_string()), format!("RG.INFOCLUSTER on {p} lacks the address of {q}: {info}"));
        }
        check(cluster.cmd(p, &["RG.REFRESHCLUSTER"]) == "OK", format!("RG.REFRESHCLUSTER on {p}"));

        // hashtag(): a tag of a slot this shard serves.
        for got in both(&cluster, p, "return hashtag()", "hashtag()") {
            let tag = got.trim_matches('"').to_string();
            let key = format!("{{{tag}}}:daily");
            let slot = cluster.keyslot(&key);
            let owner = cluster.node_of_key(&key);
            check(owner == p && slot == common::slot(&key), format!("hashtag() on primary {p} gave {got}: slot {slot} is served by node {owner}"));
        }
        for got in both(
            &cluster,
            p,
            "local k = '{' .. hashtag() .. '}:x' execute('SET', k, 'v') return execute('GET', k)",
            "const k = '{' + hashtag() + '}:x'; execute('SET', k, 'v'); execute('GET', k);",
        ) {
            check(got == "\"v\"", format!("writing a hashtag() key on primary {p}: {got}"));
        }

        // execute() on a key another shard serves.
        let other = (0..).map(|i| format!("k:{i}")).find(|k| cluster.node_of_key(k) != p).unwrap();
        let owner = cluster.node_of_key(&other);
        let expected = format!("(error) ERR execute: key '{other}' is in slot {}, served by shard {}, not by this one", common::slot(&other), cluster.describe(owner));
        for got in both(&cluster, p, &format!("return execute('GET', '{other}')"), &format!("execute('GET', '{other}')")) {
            check(got == expected, format!("execute() of another shard's key on primary {p}:\n  expected: {expected}\n  got:      {got}"));
        }
        for got in both(&cluster, p, &format!("return execute('SET', '{other}', 'x')"), &format!("execute('SET', '{other}', 'x')")) {
            check(got == expected, format!("a write of another shard's key on primary {p}:\n  expected: {expected}\n  got:      {got}"));
        }
        // In a step, on every shard: the owner reads it, the others fail that record.
        let in_step = both(
            &cluster,
            p,
            &format!("GB('ShardsIDReader'):map(function(id) return execute('GET', '{other}') end):run()"),
            &format!("GB('ShardsIDReader').map(id => execute('GET', '{other}')).run()"),
        );
        let value = other.trim_start_matches("k:");
        let msg = expected.trim_start_matches("(error) ERR ");
        let want = format!("[[\"{value}\"], [{}, {}]]", common::canon::quote(msg), common::canon::quote(msg));
        for got in in_step {
            check(canon(&got, Cmp::Unordered) == want, format!("execute() in a step from primary {p}:\n  expected: {want}\n  got:      {got}"));
        }
    }

    // foreach writes each record's key where it lives.
    for got in both(
        &cluster,
        primaries[0],
        "GB():foreach(function(r) execute('SET', r.key, 'seen') end):count():run('k:*')",
        "GB().foreach(r => { execute('SET', r.key, 'seen'); }).count().run('k:*')",
    ) {
        check(got == "[[300], []]", format!("foreach writing its records' keys: {got}"));
    }
    let seen: usize = primaries.iter().map(|&p| redis::cmd("KEYS").arg("k:*").query::<Vec<String>>(&mut cluster.conn(p)).unwrap().len()).sum();
    check(seen == 300, format!("keys after foreach: {seen}"));
    for c in commands.iter().take(20) {
        let n = cluster.node_of_key(&c[1]);
        let v = cluster.cmd(n, &["GET", &c[1]]);
        check(v == "\"seen\"", format!("{} after foreach: {v}", c[1]));
    }
    let distinct: BTreeSet<usize> = (0..300).map(|i| cluster.node_of_key(&format!("k:{i}"))).collect();
    assert_eq!(distinct.len(), 3, "the keys spread over every shard");
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}
