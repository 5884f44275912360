//! countBy over N hashes (default 1M, `BENCH_KEYS`): Gears in Lua and in JavaScript
//! against a client-side SCAN + pipelined HGETALL doing the same count, all in this process
//! against the same server. Figures are reported as ratios to that baseline.

#[path = "../tests/common/mod.rs"]
mod common;

use common::Server;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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

fn main() {
    let n: usize = std::env::var("BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let server = Server::start(&["script-timeout", "10000"]);
    let mut c = server.conn();
    let (_, t) = time(|| load(&mut c, n));
    println!("loaded {n} hashes in {t:.2?} ({}; module built {})", common::server_binary(), common::module_path().display());
    let lua = "GB('KeysReader'):countBy(function(r) return r.value.city end):run('user:*')";
    let js = "GB('KeysReader').countBy(r => r.value.city).run('user:*')";
    let mut best = [Duration::MAX; 3];
    for _ in 0..rounds {
        let (base, tb) = time(|| client_side(&mut c));
        let (l, tl) = time(|| gears(&mut c, "lua", lua));
        let (j, tj) = time(|| gears(&mut c, "js", js));
        assert_eq!(base, l, "Lua result differs from the client-side count");
        assert_eq!(base, j, "JS result differs from the client-side count");
        assert_eq!(base.values().sum::<i64>() as usize, n);
        for (b, t) in best.iter_mut().zip([tb, tl, tj]) {
            *b = (*b).min(t);
        }
    }
    let [tb, tl, tj] = best;
    println!("countBy over {n} hashes, best of {rounds}:");
    println!("  client SCAN+HGETALL pipeline  {tb:>10.2?}  1.00x (baseline)");
    println!("  RG.EXEC lua countBy            {tl:>10.2?}  {:.2}x the baseline's time", tl.as_secs_f64() / tb.as_secs_f64());
    println!("  RG.EXEC js countBy             {tj:>10.2?}  {:.2}x the baseline's time", tj.as_secs_f64() / tb.as_secs_f64());
}
