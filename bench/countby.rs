//! countBy over N hashes (default 1M, `BENCH_KEYS`): Gears in Lua and in JavaScript
//! against a client-side SCAN + pipelined HGETALL doing the same count and an EVAL looping
//! SCAN + HGETALL inside Redis, all in this process against the same server, while another
//! client PINGs the server every millisecond. Figures are reported as ratios to those
//! baselines, with the PING latencies seen during each run.

#[path = "../tests/common/mod.rs"]
mod common;

use common::Server;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The same count inside Redis: it blocks every other client while it runs.
const EVAL_LOOP: &str = r#"
local counts = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', 'user:*', 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local h = redis.call('HGETALL', k)
    for i = 1, #h, 2 do
      if h[i] == 'city' then counts[h[i + 1]] = (counts[h[i + 1]] or 0) + 1 end
    end
  end
until cursor == '0'
local out = {}
for k, v in pairs(counts) do out[#out + 1] = k; out[#out + 1] = v end
return out
"#;

fn eval_loop(c: &mut redis::Connection) -> HashMap<String, i64> {
    let flat: Vec<redis::Value> = redis::cmd("EVAL").arg(EVAL_LOOP).arg(0).query(c).unwrap();
    flat.chunks(2).map(|p| (redis::from_redis_value(&p[0]).unwrap(), redis::from_redis_value(&p[1]).unwrap())).collect()
}

/// PING latencies (p50, p99, worst) another client sees while `f` runs, one PING per ms.
fn with_pings<T>(server: &Server, f: impl FnOnce() -> T) -> (T, [Duration; 3]) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut c = server.conn();
    let s2 = stop.clone();
    let pinger = std::thread::spawn(move || {
        let mut lat = Vec::new();
        while !s2.load(Ordering::Relaxed) {
            let t = Instant::now();
            // A BUSY error (an EVAL past lua-time-limit) is a PING not served either.
            let _: redis::RedisResult<String> = redis::cmd("PING").query(&mut c);
            lat.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(1));
        }
        lat
    });
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let mut lat = pinger.join().unwrap();
    lat.sort();
    let at = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default();
    (r, [at(0.5), at(0.99), lat.last().copied().unwrap_or_default()])
}

fn load(c: &mut redis::Connection, n: usize) {
    let mut p = redis::pipe();
    for i in 0..n {
        p.cmd("HSET").arg(format!("user:{i}")).arg("name").arg(format!("user{i}")).arg("age").arg(18 + i % 50).arg("city").arg(["paris", "rome", "berlin", "lisbon", "oslo"][i % 5]).ignore();
        if i % 20_000 == 19_999 || i == n - 1 {
            p.query::<()>(c).unwrap();
            p = redis::pipe();
        }
    }
}

fn client_side(c: &mut redis::Connection) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg("user:*").arg("COUNT").arg(1000).query(c).unwrap();
        let mut p = redis::pipe();
        for k in &keys {
            p.cmd("HGETALL").arg(k);
        }
        let hashes: Vec<HashMap<String, String>> = p.query(c).unwrap();
        for h in hashes {
            if let Some(city) = h.get("city") {
                *counts.entry(city.clone()).or_insert(0) += 1;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    counts
}

fn gears(c: &mut redis::Connection, lang: &str, code: &str) -> HashMap<String, i64> {
    let (results, errors): (Vec<Vec<redis::Value>>, Vec<String>) = redis::cmd("RG.EXEC").arg(lang).arg(code).query(c).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    results
        .into_iter()
        .map(|r| {
            let key: String = redis::from_redis_value(&r[1]).unwrap();
            let value: i64 = redis::from_redis_value(&r[3]).unwrap();
            (key, value)
        })
        .collect()
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// What `measure` found: the load time, and per job (`NAMES`, in that order) the best time
/// and the PINGs (p50, p99, worst) another client saw during that round.
pub struct CountBy {
    pub n: usize,
    pub rounds: usize,
    pub load: Duration,
    pub best: Vec<(Duration, [Duration; 3])>,
    /// Per job: the server's allocations per record over one more run (None where the
    /// server's allocator does not count them).
    pub allocs: Vec<Option<f64>>,
}

/// How many allocations the server's allocator has served so far: jemalloc's `nrequests`
/// over all arenas, from MEMORY MALLOC-STATS (None on another allocator). Every
/// allocation inside the server counts: Redis's own, its Lua's, and the module's.
pub fn alloc_requests(c: &mut redis::Connection) -> Option<u64> {
    let stats: String = redis::cmd("MEMORY").arg("MALLOC-STATS").query(c).ok()?;
    let mut column = None;
    for line in stats.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if column.is_none() {
            // The merged arenas' header: "allocated nmalloc (#/sec) ndalloc (#/sec) nrequests ...".
            if words.first() == Some(&"allocated") {
                column = words.iter().position(|w| *w == "nrequests").map(|i| i + 1);
            }
        } else if words.first() == Some(&"total:") {
            return words.get(column?)?.parse().ok();
        }
    }
    None
}

/// The server's allocations per unit of work `f` did (`per` units).
pub fn allocs_per<T>(c: &mut redis::Connection, per: usize, f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let before = alloc_requests(c);
    let r = f();
    let after = alloc_requests(c);
    (r, before.zip(after).map(|(b, a)| a.saturating_sub(b) as f64 / per.max(1) as f64))
}

/// The jobs `measure` times, in the order of `CountBy::best`.
pub const NAMES: [&str; 4] = ["client SCAN+HGETALL pipeline", "EVAL SCAN+HGETALL loop", "RG.EXEC lua countBy", "RG.EXEC js countBy"];

/// Starts a server, loads `n` hashes and times every job `rounds` times (checking that all
/// give the same counts); prints the load line as it goes.
pub fn measure(n: usize, rounds: usize) -> CountBy {
    let server = Server::start(&["script-timeout", "10000"]);
    let mut c = server.conn();
    let (_, t) = time(|| load(&mut c, n));
    println!("loaded {n} hashes in {t:.2?} ({}; module built {})", common::server_binary(), common::module_path().display());
    let lua = "GB('KeysReader'):countBy(function(r) return r.value.city end):run('user:*')";
    let js = "GB('KeysReader').countBy(r => r.value.city).run('user:*')";
    // Per job: best time, and the PINGs of that round.
    let mut best: Vec<(Duration, [Duration; 3])> = vec![(Duration::MAX, [Duration::ZERO; 3]); NAMES.len()];
    for _ in 0..rounds {
        let ((base, tb), pb) = with_pings(&server, || time(|| client_side(&mut c)));
        let ((e, te), pe) = with_pings(&server, || time(|| eval_loop(&mut c)));
        let ((l, tl), pl) = with_pings(&server, || time(|| gears(&mut c, "lua", lua)));
        let ((j, tj), pj) = with_pings(&server, || time(|| gears(&mut c, "js", js)));
        assert_eq!(base, e, "the EVAL loop's result differs from the client-side count");
        assert_eq!(base, l, "Lua result differs from the client-side count");
        assert_eq!(base, j, "JS result differs from the client-side count");
        assert_eq!(base.values().sum::<i64>() as usize, n);
        for (b, (t, p)) in best.iter_mut().zip([(tb, pb), (te, pe), (tl, pl), (tj, pj)]) {
            if t < b.0 {
                *b = (t, p);
            }
        }
    }
    // One more run of each job, counting the server's allocations per record.
    let mut allocs = Vec::new();
    let mut stats = server.conn();
    allocs.push(allocs_per(&mut stats, n, || client_side(&mut c)).1);
    allocs.push(allocs_per(&mut stats, n, || eval_loop(&mut c)).1);
    allocs.push(allocs_per(&mut stats, n, || gears(&mut c, "lua", lua)).1);
    allocs.push(allocs_per(&mut stats, n, || gears(&mut c, "js", js)).1);
    CountBy { n, rounds, load: t, best, allocs }
}

fn main() {
    let n: usize = std::env::var("BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let CountBy { best, allocs, .. } = measure(n, rounds);
    let (tb, te) = (best[0].0, best[1].0);
    println!("countBy over {n} hashes, best of {rounds} (another client PINGs every 1 ms):");
    println!("  {:<30} {:>10}  {:>14}  {:>13}  {:>9} {:>9} {:>9} {:>13}", "job", "time", "vs pipeline", "vs EVAL loop", "PING p50", "p99", "worst", "allocs/record");
    for ((name, (t, p)), a) in NAMES.iter().zip(&best).zip(&allocs) {
        let ratio = |base: Duration| format!("{:.2}x faster", base.as_secs_f64() / t.as_secs_f64());
        let a = a.map(|a| format!("{a:.1}")).unwrap_or_else(|| "-".into());
        println!("  {name:<30} {:>10.2?}  {:>14}  {:>13}  {:>9.2?} {:>9.2?} {:>9.2?} {a:>13}", t, ratio(tb), ratio(te), p[0], p[1], p[2]);
    }
}
