//! The seed's comparison, measured here: an application-style load of 48 concurrent
//! clients writing records (a) straight to PostgreSQL, one upsert per request, and (b) as
//! HSETs to Redis with a write-behind recipe to the same PostgreSQL table. Reports
//! requests/s, p50/p95/p99 latency and PostgreSQL rows/s for both (ratios against (a)), and
//! the rate at which the backlog left when the clients stop drains. (c) the same HSETs with
//! no recipe, on the same server, and (d) with the recipe paused (capture without apply)
//! give the cost of capture.
//!
//! `BENCH_SECS` (default 10) is the length of each load; `BENCH_CLIENTS` (default 48);
//! `BENCH_KEYS` (default 100000) the id space the clients write into.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{canon::fmt, cmd, exec, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testdb::Postgres;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub struct Load {
    pub requests: u64,
    pub secs: f64,
    pub latencies: Vec<Duration>,
    /// Requests made by each client (client `t` wrote ids `t`, `t + clients`, ...).
    pub per_client: Vec<u64>,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    pub fn pct(&self, p: f64) -> Duration {
        self.latencies[((self.latencies.len() as f64 - 1.0) * p) as usize]
    }
}

/// Runs `clients` threads for `secs`, each calling `op(client, i)` in a loop.
fn run<C: Send + 'static>(clients: u64, secs: u64, connect: impl Fn() -> C + Send + Sync + 'static, op: impl Fn(&mut C, u64) + Send + Sync + 'static) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let (connect, op) = (Arc::new(connect), Arc::new(op));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (stop, connect, op) = (stop.clone(), connect.clone(), op.clone());
            std::thread::spawn(move || {
                let mut c = connect();
                let mut lat = Vec::new();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let s = Instant::now();
                    op(&mut c, i);
                    lat.push(s.elapsed());
                    i += clients;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let per_thread: Vec<Vec<Duration>> = threads.into_iter().map(|t| t.join().expect("client")).collect();
    let per_client = per_thread.iter().map(|l| l.len() as u64).collect();
    let mut latencies: Vec<Duration> = per_thread.into_iter().flatten().collect();
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    Load { requests: latencies.len() as u64, secs, latencies, per_client }
}

fn recipe_field(c: &mut redis::Connection, field: &str) -> i64 {
    let info: String = redis::cmd("INFO").arg("rg").query(c).expect("INFO rg");
    let line = info.lines().find(|l| l.starts_with("rg_recipe_records:")).unwrap_or_default().to_string();
    line.split([':', ',']).find_map(|kv| kv.strip_prefix(&format!("{field}=")).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The four loads and the write-behind counters of one run of the comparison.
pub struct Figures {
    pub secs: u64,
    pub clients: u64,
    pub keys: u64,
    /// (a) upserts straight to PostgreSQL.
    pub direct: Load,
    /// (b) HSET + write-behind.
    pub hset: Load,
    /// (c) plain HSET, no recipe.
    pub plain: Load,
    /// (d) HSET with the recipe paused (capture only).
    pub captured_only: Load,
    pub applied_during: i64,
    pub backlog_at_stop: i64,
    pub drain: Duration,
    pub applied_total: i64,
    pub captured: i64,
    /// Rows in PostgreSQL at the end, and the distinct keys (b) wrote.
    pub rows: i64,
    pub distinct: i64,
}

/// Runs the comparison: its own PostgreSQL and server, `clients` threads, `secs` per load.
pub fn measure(secs: u64, clients: u64, keys: u64) -> Figures {
    let pg = Postgres::start();
    let table = "CREATE TABLE records (id integer PRIMARY KEY, name text, amount double precision, updated timestamptz)";
    pg.sql(table);
    let url = pg.url();

    // (a) Straight to PostgreSQL: one upsert per request, each client its own connection.
    let u = url.clone();
    let direct = run(
        clients,
        secs,
        move || postgres::Client::connect(&u, postgres::NoTls).expect("connect to PostgreSQL"),
        move |c, i| {
            let id = (i % keys) as i32;
            c.execute(
                "INSERT INTO records (id, name, amount, updated) VALUES ($1, $2, $3, now()) ON CONFLICT (id) DO UPDATE SET name = excluded.name, amount = excluded.amount, updated = excluded.updated",
                &[&id, &format!("rec{i}"), &(i as f64 * 0.5)],
            )
            .expect("upsert");
        },
    );

    // (b) HSET with write-behind to the same (emptied) table.
    pg.sql("DROP TABLE records");
    pg.sql(table);
    let s = Server::start_with(&["connection.pg", &url], &[]);
    let mut c = s.conn();
    let port = s.port;
    let hset_load = move |prefix: &'static str| {
        run(
            clients,
            secs,
            move || redis::Client::open(format!("redis://127.0.0.1:{port}/")).and_then(|c| c.get_connection()).expect("connect to Redis"),
            move |c, i| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let _: i64 = redis::cmd("HSET").arg(format!("{prefix}{}", i % keys)).arg("name").arg(format!("rec{i}")).arg("amount").arg(i as f64 * 0.5).arg("updated").arg(now).query(c).expect("HSET");
            },
        )
    };
    // (c) The same HSETs with no recipe: what Redis alone answers.
    let plain = hset_load("plain:");
    let code = "import { writeBehind, postgres } from 'gears/recipes';\nwriteBehind({ name: 'records', prefix: 'rec:', target: postgres({ connection: 'pg', table: 'records' }), batch: 500, flushMs: 100, maxBacklog: 0 });";
    assert_eq!(exec(&mut c, "js", code, &["ID", "records"]), "OK");
    let hset = hset_load("rec:");
    let applied_during = recipe_field(&mut c, "applied");
    let backlog_at_stop = recipe_field(&mut c, "backlog");
    let drain_start = Instant::now();
    while recipe_field(&mut c, "backlog") > 0 {
        assert!(drain_start.elapsed() < Duration::from_secs(600), "the backlog did not drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain = drain_start.elapsed();
    let applied_total = recipe_field(&mut c, "applied");
    let captured = recipe_field(&mut c, "captured");

    // (d) The same HSETs with the recipe paused: capture only, no apply thread competing
    // for the CPU (the backlog just grows).
    assert_eq!(fmt(&cmd(&mut c, &["RG.PAUSEREGISTRATIONS", "records/0"])), "OK");
    let captured_only = hset_load("rec:");

    let rows: i64 = pg.sql("SELECT count(*) FROM records").parse().unwrap_or(0);
    // The ids (b) wrote: client t wrote t, t + clients, ... modulo keys (a client that got
    // more turns than the others may wrap around onto ids written already).
    let mut seen = vec![false; keys as usize];
    for (t, n) in hset.per_client.iter().enumerate() {
        for k in 0..*n {
            seen[((t as u64 + k * clients) % keys) as usize] = true;
        }
    }
    let distinct = seen.iter().filter(|s| **s).count() as i64;
    Figures { secs, clients, keys, direct, hset, plain, captured_only, applied_during, backlog_at_stop, drain, applied_total, captured, rows, distinct }
}

/// The correctness check of a run: every key (b) wrote reached PostgreSQL.
pub fn check(f: &Figures) {
    assert_eq!(f.rows, f.distinct, "every key written reached PostgreSQL");
}

/// Prints a run's figures as a table with the ratios.
pub fn print(f: &Figures) {
    let Figures { secs, clients, keys, direct, hset, plain, captured_only, applied_during, backlog_at_stop, drain, applied_total, captured, .. } = f;
    let (applied_during, backlog_at_stop, applied_total, captured) = (*applied_during, *backlog_at_stop, *applied_total, *captured);
    println!("write-behind benchmark: {clients} clients, {secs} s per load, ids in 0..{keys}, PostgreSQL and Redis on loopback, 2-core machine");
    println!("{:<34} {:>12} {:>10} {:>10} {:>10} {:>16}", "", "requests/s", "p50", "p95", "p99", "PG rows/s");
    println!("{:<34} {:>12.0} {:>10} {:>10} {:>10} {:>16.0}", "(a) upsert straight to PostgreSQL", direct.rate(), ms(direct.pct(0.5)), ms(direct.pct(0.95)), ms(direct.pct(0.99)), direct.rate());
    let pg_rows = applied_during as f64 / hset.secs;
    println!("{:<34} {:>12.0} {:>10} {:>10} {:>10} {:>16.0}", "(b) HSET + write-behind", hset.rate(), ms(hset.pct(0.5)), ms(hset.pct(0.95)), ms(hset.pct(0.99)), pg_rows);
    println!("{:<34} {:>12.0} {:>10} {:>10} {:>10} {:>16}", "(c) plain HSET, no recipe", plain.rate(), ms(plain.pct(0.5)), ms(plain.pct(0.95)), ms(plain.pct(0.99)), "-");
    println!("{:<34} {:>12.0} {:>10} {:>10} {:>10} {:>16}", "(d) HSET, recipe paused (capture)", captured_only.rate(), ms(captured_only.pct(0.5)), ms(captured_only.pct(0.95)), ms(captured_only.pct(0.99)), "-");
    println!(
        "ratio (d)/(c), capture alone: requests/s {:.2}x, p50 {:.2}x, p99 {:.2}x",
        captured_only.rate() / plain.rate(),
        captured_only.pct(0.5).as_secs_f64() / plain.pct(0.5).as_secs_f64(),
        captured_only.pct(0.99).as_secs_f64() / plain.pct(0.99).as_secs_f64()
    );
    println!(
        "ratio (b)/(c), capture and apply sharing the CPU: requests/s {:.2}x, p50 {:.2}x, p99 {:.2}x",
        hset.rate() / plain.rate(),
        hset.pct(0.5).as_secs_f64() / plain.pct(0.5).as_secs_f64(),
        hset.pct(0.99).as_secs_f64() / plain.pct(0.99).as_secs_f64()
    );
    println!(
        "ratio (b)/(a): requests/s {:.2}x, p50 {:.2}x, p95 {:.2}x, p99 {:.2}x",
        hset.rate() / direct.rate(),
        hset.pct(0.5).as_secs_f64() / direct.pct(0.5).as_secs_f64(),
        hset.pct(0.95).as_secs_f64() / direct.pct(0.95).as_secs_f64(),
        hset.pct(0.99).as_secs_f64() / direct.pct(0.99).as_secs_f64()
    );
    println!(
        "(b) captured {captured} changes; {applied_total} rows written (changes of one key within a batch are coalesced); backlog when the clients stopped: {backlog_at_stop}, drained in {:.2} s ({:.0} changes/s)",
        drain.as_secs_f64(),
        if drain.as_secs_f64() > 0.0 { backlog_at_stop as f64 / drain.as_secs_f64() } else { 0.0 }
    );
}

fn main() {
    let (secs, clients, keys) = (env("BENCH_SECS", 10), env("BENCH_CLIENTS", 48), env("BENCH_KEYS", 100_000));
    let f = measure(secs, clients, keys);
    print(&f);
    check(&f);
}
