//! Backfill of a large keyspace (`backfill: true`): how fast the existing hashes reach
//! PostgreSQL, and what another client's PING sees meanwhile (the target: p99 under 5 ms
//! during a backfill of a million keys). The same PINGs on the idle server first give the
//! baseline of this machine.
//!
//! `BENCH_KEYS` (default 1000000) hashes `user:<i>` are loaded, then a write-behind recipe
//! with `backfill: true` is registered; a client PINGs every 0.2 ms until the backfill is done
//! and every row is in PostgreSQL. `BENCH_BATCH` (default 500) is the recipe's `batch`.
//! `REDIS_SERVER` picks the server, as for the tests.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{exec, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testdb::Postgres;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// PINGs from a client of its own every 0.2 ms until `stop`: the latencies, sorted.
fn pinger(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
        let mut lat = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query(&mut c).expect("PING");
            lat.push(t.elapsed());
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.sort();
        lat
    })
}

fn pct(l: &[Duration], p: f64) -> Duration {
    l[((l.len() as f64 - 1.0) * p) as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn summary(what: &str, l: &[Duration]) {
    let over = |t: u64| l.iter().filter(|d| **d > Duration::from_millis(t)).count();
    println!(
        "{what:<28} {:>8} PINGs  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  worst {:>9}  over 5 ms: {} ({:.3}%), over 20 ms: {}",
        l.len(),
        ms(pct(l, 0.5)),
        ms(pct(l, 0.99)),
        ms(pct(l, 0.999)),
        ms(*l.last().unwrap()),
        over(5),
        over(5) as f64 * 100.0 / l.len() as f64,
        over(20)
    );
}

/// The recipe's `backfill=<state>,backfill_scanned=<n>` from INFO rg.
fn backfill(c: &mut redis::Connection) -> (String, u64) {
    let info: String = redis::cmd("INFO").arg("rg").query(c).expect("INFO rg");
    let line = info.lines().find_map(|l| l.strip_prefix("rg_recipe_users:")).unwrap_or_default().to_string();
    let field = |n: &str| line.split(',').find_map(|kv| kv.strip_prefix(&format!("{n}="))).unwrap_or_default().trim().to_string();
    (field("backfill"), field("backfill_scanned").parse().unwrap_or(0))
}

fn main() {
    let (keys, batch) = (env("BENCH_KEYS", 1_000_000), env("BENCH_BATCH", 500));
    let pg = Postgres::start();
    pg.sql("CREATE TABLE users (id integer PRIMARY KEY, name text, age integer, city text)");
    let s = Server::start_with(&["connection.pg", &pg.url()], &[]);
    let mut c = s.conn();
    let load = Instant::now();
    let ids: Vec<u64> = (1..=keys).collect();
    for chunk in ids.chunks(20_000) {
        let mut p = redis::pipe();
        for i in chunk {
            p.cmd("HSET").arg(format!("user:{i}")).arg("name").arg(format!("user{i}")).arg("age").arg(18 + i % 50).arg("city").arg(["paris", "rome", "berlin", "lisbon"][(*i % 4) as usize]).ignore();
        }
        p.query::<()>(&mut c).expect("load");
    }
    println!("backfill benchmark: {keys} hashes user:* loaded in {:.1} s; PostgreSQL and Redis on loopback; {} cores", load.elapsed().as_secs_f64(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));

    // The idle server: this machine's own PING latency.
    let stop = Arc::new(AtomicBool::new(false));
    let idle = pinger(s.port, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let idle = idle.join().expect("pinger");

    let stop = Arc::new(AtomicBool::new(false));
    let during = pinger(s.port, stop.clone());
    let code = format!("import {{ writeBehind, postgres }} from 'gears/recipes';\nwriteBehind({{ name: 'users', prefix: 'user:', backfill: true, batch: {batch}, target: postgres({{ connection: 'pg', table: 'users' }}) }});");
    let start = Instant::now();
    assert_eq!(exec(&mut c, "js", &code, &["ID", "users"]), "OK");
    let registered = start.elapsed();
    let mut last_print = Instant::now();
    let scanned = loop {
        let (state, scanned) = backfill(&mut c);
        if state == "done" {
            break scanned;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  {:>5.1} s: {state}, {scanned} keys scanned", start.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        assert!(start.elapsed() < Duration::from_secs(3600), "the backfill did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    let scan_done = start.elapsed();
    loop {
        let rows: u64 = pg.sql("SELECT count(*) FROM users").parse().unwrap_or(0);
        if rows == keys {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3600), "rows: {rows} of {keys}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_rows = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = during.join().expect("pinger");

    println!(
        "RG.EXEC with backfill: {}; scan done in {:.1} s; all {keys} rows in PostgreSQL in {:.1} s: {:.0} keys/s ({scanned} scanned)",
        ms(registered),
        scan_done.as_secs_f64(),
        all_rows.as_secs_f64(),
        keys as f64 / all_rows.as_secs_f64()
    );
    summary("PING, idle server", &idle);
    summary("PING during the backfill", &during);
}
