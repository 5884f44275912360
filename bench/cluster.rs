//! The cluster figures of issue 12, in one run: countBy(city) over N hashes (default 300k,
//! `BENCH_KEYS`) on a 3-primary Redis Cluster against a standalone Redis holding the same
//! keys, in Lua and in JS (median of `BENCH_ROUNDS` rounds, default 3, and the ratio
//! cluster/standalone; both answers are checked equal); then a repartition of every key
//! followed by count(), while one client per primary PINGs it every millisecond: wall time
//! and p50/p99/worst PING per shard. Records are keyed `key:city`, so about two thirds change
//! shard (`city:key` would move only half of them: CRC16 of a prefixed key is the key's CRC16
//! XOR a constant). Every server is started here (module `RG_MODULE`, server `REDIS_SERVER`) on
//! loopback ports below 55535 and killed by PID when its guard drops, also on a panic.
//! The table is printed and written to target/bench-cluster.txt.

#[path = "../tests/common/mod.rs"]
mod common;

use common::canon::fmt;
use common::cluster::{hex_ids, populate_standalone, words, Cluster};
use common::{cmd, Server};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODULE_ARGS: [&str; 2] = ["script-timeout", "10000"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A standalone server on a port below 55535, like the cluster's nodes (a server on a port
/// above is stopped by its guard and another one started).
fn standalone() -> Server {
    loop {
        let s = Server::start(&MODULE_ARGS);
        if s.port < 55535 {
            return s;
        }
    }
}

/// RG.EXEC of a countBy: group → count. Fails on any error the run reports.
fn count_by(c: &mut redis::Connection, lang: &str, code: &str) -> HashMap<String, i64> {
    let (results, errors): (Vec<Vec<redis::Value>>, Vec<String>) =
        redis::cmd("RG.EXEC").arg(lang).arg(code).query(c).unwrap_or_else(|e| panic!("{lang} countBy: {e}"));
    assert!(errors.is_empty(), "{lang} countBy: {errors:?}");
    results
        .into_iter()
        .map(|r| {
            let key: String = redis::from_redis_value(&r[1]).unwrap();
            let value: i64 = redis::from_redis_value(&r[3]).unwrap();
            (key, value)
        })
        .collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ms2(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn pct(l: &[Duration], p: f64) -> Duration {
    l[((l.len() as f64 - 1.0) * p).round() as usize]
}

/// PINGs `url` from a client of its own, 1 ms apart, until `stop`: the latencies, sorted.
fn pinger(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut lat = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query(&mut c).expect("PING");
            lat.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(1));
        }
        lat.sort();
        lat
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "?".into())
}

fn server_version(c: &mut redis::Connection) -> String {
    let info: String = redis::cmd("INFO").arg("server").query(c).expect("INFO server");
    let get = |k: &str| info.lines().find_map(|l| l.trim().strip_prefix(k)).unwrap_or("?").to_string();
    let v = get("valkey_version:");
    if v != "?" {
        format!("valkey {v}")
    } else {
        format!("redis {}", get("redis_version:"))
    }
}

fn main() {
    let n = env_usize("BENCH_KEYS", 300_000);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let mut out = String::new();
    macro_rules! say {
        ($($a:tt)*) => {{ let line = format!($($a)*); println!("{line}"); out.push_str(&line); out.push('\n'); }};
    }
    let load_before = loadavg();

    let single = standalone();
    let mut cluster = Cluster::options().primaries(3).module_args(&MODULE_ARGS).start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "primaries: {primaries:?}");
    // Cluster::start waited for cluster_state:ok on every node and RG.INFOCLUSTER naming
    // every primary; check the last part here too, so the figures never come from a module
    // that does not see the whole cluster.
    let ids = cluster.primary_ids();
    for &p in &primaries {
        let info = cluster.cmd(p, &["RG.INFOCLUSTER"]);
        let known = hex_ids(&info);
        assert!(ids.iter().all(|id| known.contains(id)), "RG.INFOCLUSTER on node {p} lacks a primary: {info}");
    }
    let version = server_version(&mut single.conn());

    let commands: Vec<Vec<String>> =
        (0..n).map(|i| words(&["HSET", &format!("user:{i}"), "age", &(i % 90).to_string(), "city", &format!("c{}", i % 50)])).collect();
    let (_, t_single) = timed(|| populate_standalone(&single, &commands));
    let (_, t_cluster) = timed(|| cluster.populate(&commands));
    drop(commands);
    let dbsize = |c: &mut redis::Connection| -> usize { redis::cmd("DBSIZE").query(c).expect("DBSIZE") };
    assert_eq!(dbsize(&mut single.conn()), n, "standalone DBSIZE");
    let per_shard: Vec<usize> = primaries.iter().map(|&p| dbsize(&mut cluster.conn(p))).collect();
    assert_eq!(per_shard.iter().sum::<usize>(), n, "cluster DBSIZE per primary {per_shard:?}");

    say!("# bench/cluster.rs: issue 12's cluster figures, one run");
    say!("server: {version} ({}), module: {}", common::server_binary(), common::module_path().display());
    say!("machine: {} cores, load average (1/5/15 min) at start {load_before}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    say!("data: {n} hashes user:<i> {{age: i%90, city: c<i%50>}}, the same on both sides");
    say!("  standalone  port {}, loaded in {:.2} s", single.port, t_single.as_secs_f64());
    say!(
        "  cluster     3 primaries (redis-cli --cluster create), ports {}, keys per primary {:?}, loaded (pipelined to each key's owner) in {:.2} s",
        primaries.iter().map(|&p| cluster.nodes[p].port.to_string()).collect::<Vec<_>>().join("/"),
        per_shard,
        t_cluster.as_secs_f64()
    );

    // countBy(city): each round runs Lua and JS on the standalone, then on the cluster (sent
    // to primary round % 3), and checks the two answers are the same 50 groups and counts.
    let codes = [
        ("lua", "GB('KeysReader'):countBy(function(r) return r.value.city end):run('user:*')"),
        ("js", "GB('KeysReader').countBy(r => r.value.city).run('user:*')"),
    ];
    let mut sc = single.conn();
    let mut cc: Vec<redis::Connection> = primaries.iter().map(|&p| cluster.conn(p)).collect();
    let mut times: BTreeMap<&str, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    let expected: HashMap<String, i64> = {
        let mut m = HashMap::new();
        for i in 0..n {
            *m.entry(format!("c{}", i % 50)).or_insert(0) += 1;
        }
        m
    };
    for round in 0..rounds {
        for (lang, code) in codes {
            let (a, ts) = timed(|| count_by(&mut sc, lang, code));
            let (b, tc) = timed(|| count_by(&mut cc[round % 3], lang, code));
            assert_eq!(a, b, "{lang}: the cluster's countBy differs from the standalone's");
            assert_eq!(a, expected, "{lang}: countBy is not the 50 groups of the data");
            let e = times.entry(lang).or_default();
            e.0.push(ts);
            e.1.push(tc);
        }
    }
    say!("");
    say!("countBy(city) over {n} keys, median of {rounds} rounds (answers equal: {} groups, counts sum to {n})", expected.len());
    say!("  {:<5} {:>13} {:>13} {:>20}   all rounds standalone | cluster", "lang", "standalone", "3-primary", "cluster/standalone");
    let mut ratios = Vec::new();
    for (lang, _) in codes {
        let (s, c) = &times[lang];
        let (ms_, mc) = (median(s), median(c));
        let ratio = mc.as_secs_f64() / ms_.as_secs_f64();
        ratios.push((lang, ratio));
        let list = |v: &[Duration]| v.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect::<Vec<_>>().join(" ");
        say!("  {lang:<5} {:>13} {:>13} {:>19.2}x   {} | {} ms", ms(ms_), ms(mc), ratio, list(s), list(c));
    }
    say!("  target: cluster/standalone <= 1.5x: {}", ratios.iter().map(|(l, r)| format!("{l} {}", if *r <= 1.5 { "met" } else { "NOT met" })).collect::<Vec<_>>().join(", "));

    // Repartition of every key by `key:city` then count, sent to the first primary, while
    // one client per primary PINGs it.
    let owners = cluster.owners();
    let owner = |key: &str| {
        let s = common::slot(key);
        owners.iter().find(|(a, b, _)| *a <= s && s <= *b).map(|(_, _, n)| *n).expect("slot owner")
    };
    let moving = (0..n).filter(|&i| owner(&format!("user:{i}")) != owner(&format!("user:{i}:c{}", i % 50))).count();
    let reps = [
        ("lua", "GB('KeysReader'):repartition(function(r) return r.key .. ':' .. r.value.city end):count():run('user:*')"),
        ("js", "GB('KeysReader').repartition(r => r.key + ':' + r.value.city).count().run('user:*')"),
    ];
    say!("");
    say!("repartition of {n} records by key:city, then count(), sent to node {} ({moving} records change shard); PING every 1 ms on each primary", primaries[0]);
    say!("  {:<5} {:>9} {:>6} {:>6} {:>8} {:>10} {:>10} {:>10}", "lang", "wall", "shard", "port", "PINGs", "p50", "p99", "worst");
    let mut worst_all = Vec::new();
    for (lang, code) in reps {
        let stop = Arc::new(AtomicBool::new(false));
        let pingers: Vec<_> = primaries.iter().map(|&p| pinger(cluster.url(p), stop.clone())).collect();
        let (got, took) = timed(|| fmt(&cmd(&mut cc[0], &["RG.EXEC", lang, code])));
        stop.store(true, Ordering::Relaxed);
        let lats: Vec<Vec<Duration>> = pingers.into_iter().map(|h| h.join().expect("pinger")).collect();
        assert_eq!(got, format!("[[{n}], []]"), "{lang} repartition");
        let mut worst = Duration::ZERO;
        for (k, (l, &p)) in lats.iter().zip(&primaries).enumerate() {
            let wall = if k == 0 { format!("{:.2} s", took.as_secs_f64()) } else { String::new() };
            let name = if k == 0 { lang } else { "" };
            say!("  {name:<5} {wall:>9} {:>6} {:>6} {:>8} {:>10} {:>10} {:>10}", format!("node{p}"), cluster.nodes[p].port, l.len(), ms2(pct(l, 0.5)), ms2(pct(l, 0.99)), ms2(*l.last().unwrap()));
            worst = worst.max(*l.last().unwrap());
        }
        worst_all.push((lang, worst));
    }
    say!("  worst PING on any shard: {}", worst_all.iter().map(|(l, w)| format!("{l} {}", ms2(*w))).collect::<Vec<_>>().join(", "));
    say!("");
    say!("load average at end {}", loadavg());

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root.join("target"));
    let file = target.join("bench-cluster.txt");
    std::fs::write(&file, &out).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    println!("(written to {})", file.display());
}
