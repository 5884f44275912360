//! One run of every benchmark pair, each Gears job next to its baseline on the same server
//! binary in the same run, written to docs/performance.md and docs/performance.svg.
//!
//! - B1: HSET with write-behind capture (Lua and JS recipes, paused) vs plain HSET vs FCALL of
//!   a Redis Function doing HSET + HGETALL + XADD (redis-benchmark, pipelines 1 and 16).
//! - B2: bench/write_behind.rs: 48 clients upserting into PostgreSQL vs HSET + write-behind.
//! - B3: the drain of BENCH_DRAIN captured changes into PostgreSQL vs a client COPY.
//! - B4: bench/countby.rs: countBy in Lua and JS vs an EVAL loop and a client pipeline.
//! - B5: HSET + a sync trigger doing INCR (Lua, JS) vs FCALL of HSET + INCR vs plain HSET.
//! - M1: used_memory of sessions, registrations, a backlog and fired Lua sessions.
//!
//! Sizes: BENCH_REQUESTS (200000) and BENCH_CLIENTS (50) for redis-benchmark, BENCH_SECS (10)
//! per load of B2 (BENCH_WB_CLIENTS, 48), BENCH_DRAIN (1000000), BENCH_KEYS (1000000) and
//! BENCH_ROUNDS (2) for B4. REDIS_SERVER picks the server, REDIS_BENCHMARK the benchmark tool;
//! B1 and B5 run again on BENCH_SERVER2 (a 7.2+ server; run.sh passes the cached Redis 7.4.1).
//! Assertions check correctness only (counts and results), never a time.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "countby.rs"]
#[allow(dead_code)]
mod countby;
#[path = "report_svg.rs"]
mod report_svg;
#[path = "write_behind.rs"]
#[allow(dead_code)]
mod write_behind;

use common::{canon::fmt, cmd, exec, Server};
use report_svg::Bar;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testdb::Postgres;

static START: OnceLock<Instant> = OnceLock::new();

fn elapsed() -> String {
    let s = START.get_or_init(Instant::now).elapsed().as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

macro_rules! progress {
    ($($t:tt)*) => {{
        println!("[report {}] {}", elapsed(), format!($($t)*));
        let _ = std::io::stdout().flush();
    }};
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace(['_', ','], "").parse().ok()).unwrap_or(default)
}

struct Config {
    requests: u64,
    clients: u64,
    secs: u64,
    wb_clients: u64,
    drain: u64,
    keys: u64,
    rounds: u64,
    /// B3's recipe `batch`; 0: the recipe's default.
    drain_batch: u64,
}

// ---------------------------------------------------------------------------------------
// Helpers: INFO fields, redis-benchmark, formatting.

fn info(c: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(c).expect("INFO")
}

fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).map(|v| v.trim().to_string())
}

fn used_memory(c: &mut redis::Connection) -> i64 {
    info_field(&info(c, "memory"), "used_memory").and_then(|v| v.parse().ok()).expect("used_memory")
}

/// A field of the `rg_recipe_<name>` line of INFO rg.
fn recipe_field(c: &mut redis::Connection, name: &str, field: &str) -> i64 {
    let text = info(c, "rg");
    let line = info_field(&text, &format!("rg_recipe_{name}")).unwrap_or_else(|| panic!("no rg_recipe_{name} in INFO rg:\n{text}"));
    line.split(',').find_map(|kv| kv.strip_prefix(&format!("{field}="))).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {field} in rg_recipe_{name}:{line}"))
}

/// The numeric `rg_*` fields of INFO rg whose name has `memory` or is `rg_interpreters`.
fn interpreter_fields(c: &mut redis::Connection) -> Vec<(String, i64)> {
    info(c, "rg")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("rg_") && (k.contains("interpreters") || k.contains("lua") || k.contains("js")) && !k.ends_with("_limit"))
        .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

fn ok(c: &mut redis::Connection, words: &[&str]) {
    let got = fmt(&cmd(c, words));
    assert_eq!(got, "OK", "{words:?}");
}

fn get_int(c: &mut redis::Connection, words: &[&str]) -> i64 {
    let mut q = redis::cmd(words[0]);
    for w in &words[1..] {
        q.arg(*w);
    }
    q.query::<Option<i64>>(c).unwrap_or_else(|e| panic!("{words:?}: {e}")).unwrap_or(0)
}

/// A redis-benchmark run: requests/s, p50 and p99 in ms.
#[derive(Clone, Copy, Default)]
struct Rb {
    rps: f64,
    p50: f64,
    p99: f64,
}

fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end().chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out
}

fn redis_benchmark(port: u16, cfg: &Config, pipeline: u32, args: &[&str]) -> Rb {
    let tool = std::env::var("REDIS_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".into());
    let out = Command::new(&tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", &cfg.clients.to_string(), "-n", &cfg.requests.to_string(), "-r", "100000", "-P", &pipeline.to_string(), "--csv", "-q"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tool} {args:?}: {}{}", text, String::from_utf8_lossy(&out.stderr));
    let mut lines = text.lines().skip_while(|l| !l.starts_with("\"test\""));
    let header = csv_fields(lines.next().unwrap_or_else(|| panic!("{tool} {args:?}: no CSV header in {text}")));
    let row = csv_fields(lines.next().unwrap_or_else(|| panic!("{tool} {args:?}: no CSV row in {text}")));
    let col = |name: &str| -> f64 {
        let i = header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no {name} column in {header:?}"));
        row[i].parse().unwrap_or_else(|_| panic!("{name}: {:?}", row[i]))
    };
    Rb { rps: col("rps"), p50: col("p50_latency_ms"), p99: col("p99_latency_ms") }
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0.0 && s != "0" {
        format!("-{out}")
    } else {
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn x(r: f64) -> String {
    format!("{r:.2}x")
}

fn bytes(n: f64) -> String {
    if n.abs() >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / 1024.0 / 1024.0)
    } else if n.abs() >= 10.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{} B", thousands(n))
    }
}

/// One criterion of a target, and whether this run met it.
struct Criterion {
    text: String,
    missed: Option<String>,
}

fn at_least(what: &str, got: f64, want: f64, unit: &str) -> Criterion {
    let text = format!("{what} ≥ {}{unit}", if unit == "x" { format!("{want}") } else { thousands(want) });
    let missed = (got < want).then(|| {
        if unit == "x" {
            format!("{what} {got:.2}x: short by {:.2}x ({:.0}%)", want - got, (want - got) / want * 100.0)
        } else {
            format!("{what} {}: short by {}{unit} ({:.0}%)", thousands(got), thousands(want - got), (want - got) / want * 100.0)
        }
    });
    Criterion { text, missed }
}

fn below_ms(what: &str, got: f64, want: f64) -> Criterion {
    let text = format!("{what} < {want} ms");
    let missed = (got >= want).then(|| format!("{what} {got:.2} ms: over by {:.2} ms", got - want));
    Criterion { text, missed }
}

fn verdict(cs: &[Criterion]) -> (String, String) {
    if cs.is_empty() {
        return ("none set".into(), "—".into());
    }
    let target = cs.iter().map(|c| c.text.clone()).collect::<Vec<_>>().join("; ");
    let missed: Vec<String> = cs.iter().filter_map(|c| c.missed.clone()).collect();
    let result = if missed.is_empty() { "**met**".to_string() } else { format!("**missed**: {}", missed.join("; ")) };
    (target, result)
}

struct SummaryRow {
    id: &'static str,
    job: String,
    figure: String,
    baseline: String,
    ratio: String,
    target: String,
    result: String,
}

struct Report {
    md: String,
    summary: Vec<SummaryRow>,
    ratios: Vec<Bar>,
    latencies: Vec<Bar>,
}

impl Report {
    fn row(&mut self, id: &'static str, job: &str, figure: String, baseline: String, ratio: String, criteria: &[Criterion]) -> String {
        let (target, result) = verdict(criteria);
        self.summary.push(SummaryRow { id, job: job.to_string(), figure, baseline, ratio, target: target.clone(), result: result.clone() });
        format!("{target} | {result}")
    }
}

// ---------------------------------------------------------------------------------------
// The Redis Functions peers of B1 and B5.

const FUNCTIONS: &str = r#"#!lua name=bench
-- B1's peer: what a write-behind capture does, as a Function: the write, the whole hash
-- read back, and an entry appended to a stream.
redis.register_function('hset_hgetall_xadd', function(keys, args)
  local n = redis.call('HSET', keys[1], unpack(args))
  local h = redis.call('HGETALL', keys[1])
  redis.call('XADD', keys[2], '*', 'op', 'u', 'key', keys[1], unpack(h))
  return n
end)
-- B5's peer: the write and the counter a sync trigger would bump.
redis.register_function('hset_incr', function(keys, args)
  local n = redis.call('HSET', keys[1], unpack(args))
  redis.call('INCR', keys[2])
  return n
end)
"#;

fn load_functions(c: &mut redis::Connection) {
    let name: String = redis::cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(FUNCTIONS).query(c).expect("FUNCTION LOAD");
    assert_eq!(name, "bench");
}

// ---------------------------------------------------------------------------------------
// B1: write-behind capture under redis-benchmark.

struct B1 {
    /// Per pipeline depth: plain, Lua recipe, JS recipe, FCALL.
    runs: Vec<(u32, [Rb; 4])>,
}

const B1_JOBS: [&str; 4] = ["plain HSET (no recipe on the prefix)", "HSET + Lua write-behind capture", "HSET + JS write-behind capture", "FCALL HSET + HGETALL + XADD (Lua Function)"];

fn b1(cfg: &Config, pg: &Postgres) -> B1 {
    pg.sql("CREATE TABLE IF NOT EXISTS b1_lua (id bigint PRIMARY KEY, name text, age integer)");
    pg.sql("CREATE TABLE IF NOT EXISTS b1_js (id bigint PRIMARY KEY, name text, age integer)");
    let s = Server::start_with(&["connection.pg", &pg.url()], &[]);
    let mut c = s.conn();
    let lua = "local recipes = require('gears/recipes')\nrecipes.writeBehind({ name = 'b1lua', prefix = 'wbl:', target = recipes.postgres({ connection = 'pg', table = 'b1_lua' }), maxBacklog = 0 })";
    let js = "import { writeBehind, postgres } from 'gears/recipes';\nwriteBehind({ name: 'b1js', prefix: 'wbj:', target: postgres({ connection: 'pg', table: 'b1_js' }), maxBacklog: 0 });";
    assert_eq!(exec(&mut c, "lua", lua, &["ID", "b1lua"]), "OK");
    assert_eq!(exec(&mut c, "js", js, &["ID", "b1js"]), "OK");
    ok(&mut c, &["RG.PAUSEREGISTRATIONS", "b1lua/0", "b1js/0"]);
    load_functions(&mut c);
    let jobs: [&[&str]; 4] = [
        &["HSET", "plain:__rand_int__", "name", "x", "age", "30"],
        &["HSET", "wbl:__rand_int__", "name", "x", "age", "30"],
        &["HSET", "wbj:__rand_int__", "name", "x", "age", "30"],
        &["FCALL", "hset_hgetall_xadd", "2", "fn:__rand_int__", "fn:stream", "name", "x", "age", "30"],
    ];
    let mut runs = Vec::new();
    for pipeline in [1u32, 16] {
        let mut r = [Rb::default(); 4];
        for (i, args) in jobs.iter().enumerate() {
            r[i] = redis_benchmark(s.port, cfg, pipeline, args);
            progress!("B1 -P {pipeline} {:<44} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms", B1_JOBS[i], r[i].rps, r[i].p50, r[i].p99);
        }
        runs.push((pipeline, r));
    }
    // Every HSET was captured (and, paused, is still in the backlog); every FCALL appended.
    let n = cfg.requests as i64 * 2;
    for name in ["b1lua", "b1js"] {
        assert_eq!(recipe_field(&mut c, name, "captured"), n, "{name}: every HSET captured");
        assert_eq!(recipe_field(&mut c, name, "backlog"), n, "{name}: paused, nothing applied");
    }
    assert_eq!(get_int(&mut c, &["XLEN", "fn:stream"]), n, "every FCALL appended its entry");
    B1 { runs }
}

fn b1_report(r: &mut Report, cfg: &Config, b: &B1, on: &str) {
    let mut md = String::new();
    writeln!(md, "## B1: write-behind capture on HSET{on}\n").unwrap();
    writeln!(
        md,
        "`redis-benchmark -c {} -n {} -r 100000 -P <1|16>` on one server with both recipes registered (`maxBacklog` 0) and paused \
         (`RG.PAUSEREGISTRATIONS b1lua/0 b1js/0`): each HSET is captured into the recipe's stream, nothing is applied. \
         Baselines: the same HSET on a prefix no recipe captures, and `FCALL hset_hgetall_xadd` of a Lua Redis Function \
         doing what a capture does (HSET, HGETALL of the hash, XADD of `op u key <key> <fields>` to a stream). \
         Targets (issue 13): ≥ 1.2x the FCALL peer and ≥ 0.85x plain HSET, in requests/s.\n",
        cfg.clients, cfg.requests
    )
    .unwrap();
    writeln!(md, "| pipeline | job | req/s | p50 ms | p99 ms | req/s vs plain HSET | req/s vs FCALL | p99 vs FCALL |").unwrap();
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|").unwrap();
    for (p, runs) in &b.runs {
        for (i, rb) in runs.iter().enumerate() {
            writeln!(md, "| {p} | {} | {} | {:.3} | {:.3} | {} | {} | {} |", B1_JOBS[i], thousands(rb.rps), rb.p50, rb.p99, x(rb.rps / runs[0].rps), x(rb.rps / runs[3].rps), x(rb.p99 / runs[3].p99)).unwrap();
        }
    }
    md.push('\n');
    for (p, runs) in &b.runs {
        for (i, lang) in [(1, "Lua"), (2, "JS")] {
            let rb = runs[i];
            r.row(
                "B1",
                &format!("HSET + {lang} capture, -P {p}{on}"),
                format!("{} req/s, p99 {:.2} ms", thousands(rb.rps), rb.p99),
                format!("FCALL {} req/s; plain HSET {}", thousands(runs[3].rps), thousands(runs[0].rps)),
                format!("{} vs FCALL; {} vs plain", x(rb.rps / runs[3].rps), x(rb.rps / runs[0].rps)),
                &[at_least("req/s vs FCALL", rb.rps / runs[3].rps, 1.2, "x"), at_least("req/s vs plain HSET", rb.rps / runs[0].rps, 0.85, "x")],
            );
            r.ratios.push(Bar { label: format!("B1 {lang} capture HSET -P {p} vs FCALL{on}"), value: rb.rps / runs[3].rps, base: None });
            r.latencies.push(Bar { label: format!("B1 {lang} capture HSET -P {p}{on} (base: FCALL)"), value: rb.p99, base: Some(runs[3].p99) });
        }
    }
    r.md.push_str(&md);
}

// ---------------------------------------------------------------------------------------
// B5: sync trigger doing INCR.

struct B5 {
    /// plain, Lua trigger, JS trigger, FCALL.
    runs: [Rb; 4],
    fired: [i64; 3],
    /// The server's allocations per request of each run.
    allocs: [Option<f64>; 4],
}

const B5_JOBS: [&str; 4] = ["plain HSET (no trigger on the prefix)", "HSET + Lua sync trigger INCR", "HSET + JS sync trigger INCR", "FCALL HSET + INCR (Lua Function)"];

fn b5(cfg: &Config) -> B5 {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let lua = "GB('KeysOnlyReader'):foreach(function(r) execute('INCR', 'counter:tl') end):register({prefix = 'tl:', eventTypes = {'hset'}, mode = 'sync'})";
    let js = "GB('KeysOnlyReader').foreach(r => { execute('INCR', 'counter:tj'); }).register({prefix: 'tj:', eventTypes: ['hset'], mode: 'sync'});";
    assert_eq!(exec(&mut c, "lua", lua, &["ID", "b5lua"]), "OK");
    assert_eq!(exec(&mut c, "js", js, &["ID", "b5js"]), "OK");
    load_functions(&mut c);
    let jobs: [&[&str]; 4] = [
        &["HSET", "tp:__rand_int__", "name", "x", "age", "30"],
        &["HSET", "tl:__rand_int__", "name", "x", "age", "30"],
        &["HSET", "tj:__rand_int__", "name", "x", "age", "30"],
        &["FCALL", "hset_incr", "2", "tf:__rand_int__", "counter:tf", "name", "x", "age", "30"],
    ];
    let mut runs = [Rb::default(); 4];
    let mut allocs = [None; 4];
    for (i, args) in jobs.iter().enumerate() {
        (runs[i], allocs[i]) = countby::allocs_per(&mut c, cfg.requests as usize, || redis_benchmark(s.port, cfg, 1, args));
        progress!("B5 -P 1 {:<44} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  {:.1} allocations/request", B5_JOBS[i], runs[i].rps, runs[i].p50, runs[i].p99, allocs[i].unwrap_or(f64::NAN));
    }
    let fired = [get_int(&mut c, &["GET", "counter:tl"]), get_int(&mut c, &["GET", "counter:tj"]), get_int(&mut c, &["GET", "counter:tf"])];
    for (what, n) in ["Lua trigger", "JS trigger", "FCALL"].iter().zip(fired) {
        assert_eq!(n, cfg.requests as i64, "{what}: one INCR per request");
    }
    B5 { runs, fired, allocs }
}

fn b5_report(r: &mut Report, cfg: &Config, b: &B5, on: &str) {
    let mut md = String::new();
    writeln!(md, "## B5: sync trigger calling `execute('INCR', ...)`{on}\n").unwrap();
    writeln!(
        md,
        "`redis-benchmark -c {} -n {} -r 100000 -P 1` on one server with a Lua and a JS `KeysOnlyReader` registration \
         (`mode: 'sync'`, `eventTypes: ['hset']`), each on its own prefix, whose step does `execute('INCR', 'counter:<lang>')` \
         inside the HSET. Peer: `FCALL hset_incr` of a Lua Redis Function doing the HSET and the INCR; plain HSET on a third \
         prefix. Each counter ended at {} (Lua), {} (JS), {} (FCALL): one INCR per request.\n",
        cfg.clients, cfg.requests, b.fired[0], b.fired[1], b.fired[2]
    )
    .unwrap();
    writeln!(md, "| job | req/s | p50 ms | p99 ms | req/s vs FCALL | req/s vs plain HSET | allocations per request | target | result |").unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|---|").unwrap();
    let f = b.runs[3];
    for (i, rb) in b.runs.iter().enumerate() {
        let tail = if i == 1 || i == 2 {
            let lang = if i == 1 { "Lua" } else { "JS" };
            r.ratios.push(Bar { label: format!("B5 {lang} sync trigger INCR vs FCALL{on}"), value: rb.rps / f.rps, base: None });
            r.latencies.push(Bar { label: format!("B5 {lang} sync trigger INCR{on} (base: FCALL)"), value: rb.p99, base: Some(f.p99) });
            r.row(
                "B5",
                &format!("HSET + {lang} sync trigger INCR{on}"),
                format!("{} req/s, p99 {:.2} ms", thousands(rb.rps), rb.p99),
                format!("FCALL {} req/s, p99 {:.2} ms", thousands(f.rps), f.p99),
                x(rb.rps / f.rps),
                &[at_least("req/s vs FCALL", rb.rps / f.rps, 1.0, "x")],
            )
        } else {
            "— | —".into()
        };
        writeln!(md, "| {} | {} | {:.3} | {:.3} | {} | {} | {} | {tail} |", B5_JOBS[i], thousands(rb.rps), rb.p50, rb.p99, x(rb.rps / f.rps), x(rb.rps / b.runs[0].rps), per(b.allocs[i])).unwrap();
    }
    md.push_str(ALLOCS_NOTE);
    md.push('\n');
    r.md.push_str(&md);
}

// ---------------------------------------------------------------------------------------
// B3: drain of a backlog into PostgreSQL vs COPY.

struct B3 {
    n: u64,
    load: Duration,
    mem_before: i64,
    mem_loaded: i64,
    mem_drained: i64,
    stream_bytes: i64,
    backlog_zero: Duration,
    drain: Duration,
    copy: Duration,
}

const CITIES: [&str; 5] = ["paris", "rome", "berlin", "lisbon", "oslo"];

fn b3(cfg: &Config, pg: &Postgres) -> B3 {
    let n = cfg.drain;
    let table = |name: &str| format!("CREATE TABLE {name} (id integer PRIMARY KEY, name text, age integer, city text)");
    pg.sql(&table("drain"));
    pg.sql(&table("drain_copy"));

    // The baseline: the same rows sent by a client with COPY into an empty identical table.
    let mut client = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect to PostgreSQL");
    let t = Instant::now();
    let mut w = client.copy_in("COPY drain_copy (id, name, age, city) FROM STDIN").expect("COPY");
    let mut buf = String::with_capacity(1 << 20);
    for i in 1..=n {
        writeln!(buf, "{i}\tuser{i}\t{}\t{}", 18 + i % 50, CITIES[(i % 5) as usize]).unwrap();
        if buf.len() > (1 << 20) - 100 {
            w.write_all(buf.as_bytes()).expect("COPY data");
            buf.clear();
        }
    }
    w.write_all(buf.as_bytes()).expect("COPY data");
    let copied = w.finish().expect("COPY end");
    let copy = t.elapsed();
    assert_eq!(copied, n, "COPY wrote every row");
    progress!("B3 COPY of {n} rows: {:.2} s ({:.0} rows/s)", copy.as_secs_f64(), n as f64 / copy.as_secs_f64());

    // Gears: a JS write-behind recipe, paused while the changes pile up in its stream.
    let s = Server::start_with(&["connection.pg", &pg.url()], &[]);
    let mut c = s.conn();
    let batch = if cfg.drain_batch > 0 { format!(", batch: {}", cfg.drain_batch) } else { String::new() };
    let js = format!("import {{ writeBehind, postgres }} from 'gears/recipes';\nwriteBehind({{ name: 'drain', prefix: 'drain:', target: postgres({{ connection: 'pg', table: 'drain' }}), maxBacklog: 0{batch} }});");
    assert_eq!(exec(&mut c, "js", &js, &["ID", "drain"]), "OK");
    ok(&mut c, &["RG.PAUSEREGISTRATIONS", "drain/0"]);
    std::thread::sleep(Duration::from_millis(300));
    let mem_before = used_memory(&mut c);
    let t = Instant::now();
    let mut p = redis::pipe();
    for i in 1..=n {
        p.cmd("HSET").arg(format!("drain:{i}")).arg("name").arg(format!("user{i}")).arg("age").arg(18 + i % 50).arg("city").arg(CITIES[(i % 5) as usize]).ignore();
        if i % 10_000 == 0 || i == n {
            p.query::<()>(&mut c).expect("HSET pipeline");
            p = redis::pipe();
        }
    }
    let load = t.elapsed();
    let backlog = recipe_field(&mut c, "drain", "backlog");
    assert_eq!(backlog, n as i64, "every HSET is in the backlog");
    let mem_loaded = used_memory(&mut c);
    let stream_bytes = get_int(&mut c, &["MEMORY", "USAGE", "rg:wb:drain", "SAMPLES", "0"]);
    progress!("B3 {n} HSETs captured in {:.2} s; backlog {backlog}, used_memory +{}", load.as_secs_f64(), bytes((mem_loaded - mem_before) as f64));

    ok(&mut c, &["RG.UNPAUSEREGISTRATIONS", "drain/0"]);
    let t = Instant::now();
    let mut last = Instant::now();
    while recipe_field(&mut c, "drain", "backlog") > 0 {
        assert!(t.elapsed() < Duration::from_secs(1800), "the backlog did not drain in 30 min");
        if last.elapsed() > Duration::from_secs(5) {
            progress!("B3 draining: backlog {}", recipe_field(&mut c, "drain", "backlog"));
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let backlog_zero = t.elapsed();
    let mut count = 0i64;
    while count != n as i64 {
        count = client.query_one("SELECT count(*) FROM drain", &[]).expect("count").get(0);
        assert!(t.elapsed() < Duration::from_secs(1800), "only {count} of {n} rows arrived");
        if count != n as i64 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let drain = t.elapsed();
    progress!("B3 drain of {n} changes: {:.2} s ({:.0} rows/s)", drain.as_secs_f64(), n as f64 / drain.as_secs_f64());
    std::thread::sleep(Duration::from_millis(300));
    let mem_drained = used_memory(&mut c);
    // The same rows as the COPY's.
    let same: i64 = client
        .query_one("SELECT count(*) FROM drain d JOIN drain_copy c USING (id) WHERE d.name = c.name AND d.age = c.age AND d.city = c.city", &[])
        .expect("compare")
        .get(0);
    assert_eq!(same, n as i64, "the drained rows equal the copied ones");
    B3 { n, load, mem_before, mem_loaded, mem_drained, stream_bytes, backlog_zero, drain, copy }
}

fn b3_report(r: &mut Report, cfg: &Config, b: &B3) {
    let n = b.n as f64;
    let (gears, copy) = (n / b.drain.as_secs_f64(), n / b.copy.as_secs_f64());
    let mut md = String::new();
    writeln!(md, "## B3: drain of {} captured changes into PostgreSQL\n", thousands(n)).unwrap();
    writeln!(
        md,
        "A JS write-behind recipe ({}, `flushMs` 100, `maxBacklog` 0) to a table `(id integer PRIMARY KEY, name text, age integer, city text)`, \
         paused while {} distinct hashes are written with pipelined HSETs ({:.1} s); then `RG.UNPAUSEREGISTRATIONS` and the time until \
         INFO rg shows `backlog=0` ({:.2} s) and `SELECT count(*)` gives {} ({:.2} s). Baseline: the same rows sent by a client with \
         `COPY ... FROM STDIN` (text format, the `postgres` crate) into an empty identical table. The drained rows were checked equal to the copied ones.\n",
        if cfg.drain_batch > 0 { format!("`batch` {} (BENCH_DRAIN_BATCH)", cfg.drain_batch) } else { "the default `batch` 500".to_string() },
        thousands(n),
        b.load.as_secs_f64(),
        b.backlog_zero.as_secs_f64(),
        thousands(n),
        b.drain.as_secs_f64()
    )
    .unwrap();
    let tail = r.row(
        "B3",
        "drain of the backlog (JS recipe)",
        format!("{} rows/s", thousands(gears)),
        format!("COPY {} rows/s", thousands(copy)),
        x(gears / copy),
        &[at_least("rows/s", gears, 100_000.0, "")],
    );
    writeln!(md, "| job | time s | rows/s | vs COPY | target | result |").unwrap();
    writeln!(md, "|---|---:|---:|---:|---|---|").unwrap();
    writeln!(md, "| Gears drain (unpause → all rows in PostgreSQL) | {:.2} | {} | {} | {tail} |", b.drain.as_secs_f64(), thousands(gears), x(gears / copy)).unwrap();
    writeln!(md, "| client `COPY` (baseline) | {:.2} | {} | 1.00x | — | — |", b.copy.as_secs_f64(), thousands(copy)).unwrap();
    writeln!(
        md,
        "\nMemory: used_memory {} before the load, {} with the hashes and the backlog, {} once drained (the stream trimmed); \
         `MEMORY USAGE rg:wb:drain` with the backlog: {} (see M1).\n",
        bytes(b.mem_before as f64),
        bytes(b.mem_loaded as f64),
        bytes(b.mem_drained as f64),
        bytes(b.stream_bytes as f64)
    )
    .unwrap();
    r.ratios.push(Bar { label: "B3 drain into PostgreSQL vs client COPY".into(), value: gears / copy, base: None });
    r.md.push_str(&md);
}

// ---------------------------------------------------------------------------------------
// B2: the seed's write-behind comparison (bench/write_behind.rs).

fn b2_report(r: &mut Report, f: &write_behind::Figures) {
    let (a, b) = (&f.direct, &f.hset);
    let row = |name: &str, l: &write_behind::Load| {
        format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            thousands(l.rate()),
            ms(l.pct(0.5)),
            ms(l.pct(0.95)),
            ms(l.pct(0.99)),
            x(l.rate() / a.rate()),
            x(ms(l.pct(0.95)) / ms(a.pct(0.95))),
            x(ms(l.pct(0.99)) / ms(a.pct(0.99)))
        )
    };
    let ratio = b.rate() / a.rate();
    let mut md = String::new();
    writeln!(md, "## B2: {} clients, upserts into PostgreSQL vs HSET + write-behind\n", f.clients).unwrap();
    writeln!(
        md,
        "bench/write_behind.rs: {} client threads, {} s per load, ids in 0..{}: (a) one upsert per request straight to PostgreSQL; \
         (b) HSET with a JS write-behind recipe (`batch` 500, `flushMs` 100) to the same table, applying meanwhile; (c) plain HSET, \
         no recipe; (d) HSET with the recipe paused (capture only). Latencies are the clients' (one request at a time each). \
         The seed claimed 4x req/s and p95 32 → <10 ms.\n",
        f.clients,
        f.secs,
        thousands(f.keys as f64)
    )
    .unwrap();
    writeln!(md, "| load | req/s | p50 ms | p95 ms | p99 ms | req/s vs (a) | p95 vs (a) | p99 vs (a) |").unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    writeln!(md, "{}", row("(a) upsert straight to PostgreSQL (baseline)", a)).unwrap();
    writeln!(md, "{}", row("(b) HSET + write-behind", b)).unwrap();
    writeln!(md, "{}", row("(c) plain HSET, no recipe", &f.plain)).unwrap();
    writeln!(md, "{}", row("(d) HSET, recipe paused (capture only)", &f.captured_only)).unwrap();
    let tail = r.row(
        "B2",
        "HSET + write-behind (48 clients)",
        format!("{} req/s, p95 {:.2} ms, p99 {:.2} ms", thousands(b.rate()), ms(b.pct(0.95)), ms(b.pct(0.99))),
        format!("PG upserts {} req/s, p95 {:.2} ms, p99 {:.2} ms", thousands(a.rate()), ms(a.pct(0.95)), ms(a.pct(0.99))),
        x(ratio),
        &[at_least("req/s vs (a)", ratio, 6.0, "x"), below_ms("(b) client p99", ms(b.pct(0.99)), 2.0)],
    );
    writeln!(md, "\n| ratio (b)/(a) req/s | target | result |\n|---:|---|---|\n| {} | {tail} |\n", x(ratio)).unwrap();
    let rate = |n: i64, d: Duration| if d.as_secs_f64() > 0.0 { n as f64 / d.as_secs_f64() } else { 0.0 };
    writeln!(
        md,
        "(b) captured {} changes and wrote {} rows (changes of one key within a batch are coalesced), {} of them while the clients ran; \
         the backlog left when they stopped ({}) drained in {:.2} s ({} changes/s). Every key written is in PostgreSQL ({} rows).\n",
        thousands(f.captured as f64),
        thousands(f.applied_total as f64),
        thousands(f.applied_during as f64),
        thousands(f.backlog_at_stop as f64),
        f.drain.as_secs_f64(),
        thousands(rate(f.backlog_at_stop, f.drain)),
        thousands(f.rows as f64)
    )
    .unwrap();
    r.ratios.push(Bar { label: "B2 HSET + write-behind vs PG upserts".into(), value: ratio, base: None });
    r.latencies.push(Bar { label: "B2 HSET + write-behind (base: PG upserts)".into(), value: ms(b.pct(0.99)), base: Some(ms(a.pct(0.99))) });
    r.md.push_str(&md);
}

// ---------------------------------------------------------------------------------------
// B4: countBy (bench/countby.rs).

fn b4_report(r: &mut Report, f: &countby::CountBy) {
    let t = |i: usize| f.best[i].0.as_secs_f64();
    let mut md = String::new();
    writeln!(md, "## B4: countBy over {} hashes\n", thousands(f.n as f64)).unwrap();
    writeln!(
        md,
        "bench/countby.rs: `countBy(r => r.value.city)` over `user:*` ({} hashes of 3 fields, loaded in {:.1} s) with `RG.EXEC` in Lua \
         and in JS, vs an `EVAL` looping SCAN + HGETALL inside Redis and a client SCAN + pipelined HGETALL; all four counts \
         checked equal. Best of {} round{}; another client PINGs every 1 ms during each job (PINGs of the best round).\n",
        thousands(f.n as f64),
        f.load.as_secs_f64(),
        f.rounds,
        if f.rounds == 1 { "" } else { "s" }
    )
    .unwrap();
    writeln!(md, "| job | time s | speed vs EVAL loop | speed vs client pipeline | PING p50 ms | PING p99 ms | PING worst ms | allocations per record | target | result |").unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|---|").unwrap();
    for (i, name) in countby::NAMES.iter().enumerate() {
        let p = f.best[i].1;
        let tail = if i >= 2 {
            let lang = if i == 2 { "Lua" } else { "JS" };
            let (ve, vp) = (t(1) / t(i), t(0) / t(i));
            r.ratios.push(Bar { label: format!("B4 {lang} countBy vs EVAL loop"), value: ve, base: None });
            r.ratios.push(Bar { label: format!("B4 {lang} countBy vs client pipeline"), value: vp, base: None });
            r.latencies.push(Bar { label: format!("B4 PING during {lang} countBy (base: EVAL)"), value: ms(p[1]), base: Some(ms(f.best[1].1[1])) });
            r.row(
                "B4",
                &format!("{lang} countBy"),
                format!("{:.2} s, PING p99 {:.2} ms", t(i), ms(p[1])),
                format!("EVAL loop {:.2} s; pipeline {:.2} s", t(1), t(0)),
                format!("{} vs EVAL; {} vs pipeline", x(ve), x(vp)),
                &[at_least("vs EVAL", ve, 1.0, "x"), at_least("vs pipeline", vp, 3.0, "x"), below_ms("PING p99", ms(p[1]), 2.0)],
            )
        } else {
            "— | —".into()
        };
        writeln!(md, "| {name} | {:.3} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {tail} |", t(i), x(t(1) / t(i)), x(t(0) / t(i)), ms(p[0]), ms(p[1]), ms(p[2]), per(f.allocs[i])).unwrap();
    }
    md.push_str(ALLOCS_NOTE);
    md.push('\n');
    r.md.push_str(&md);
}

/// What the allocations columns count.
const ALLOCS_NOTE: &str = "\nAllocations: every allocation the server's allocator served during a run of the job \
(jemalloc's `nrequests` from `MEMORY MALLOC-STATS`, before and after), divided by the records or requests: Redis's own, its \
Lua's and the module's (every Rust, Lua and QuickJS allocation of the module goes through Redis's allocator).\n";

fn per(a: Option<f64>) -> String {
    a.map(|a| format!("{a:.1}")).unwrap_or_else(|| "—".into())
}

// ---------------------------------------------------------------------------------------
// M1: memory.

/// used_memory, and INFO rg's rg_interpreters and rg_interpreters_memory_bytes, at a step.
#[derive(Clone, Copy)]
struct Mem {
    used: i64,
    interpreters: i64,
    interpreters_bytes: i64,
}

struct M1 {
    base: Mem,
    idle: Mem,
    many_one_session: Mem,
    many_sessions: Mem,
    fire_registered: Mem,
    fired: Mem,
    rg_before: Vec<(String, i64)>,
    rg_after: Vec<(String, i64)>,
}

const FIRED_SESSIONS: usize = 201;
const MANY: usize = 1000;

/// The memory figures, 300 ms after a step (interpreter memory is as of each one's last call).
fn settle(c: &mut redis::Connection) -> Mem {
    std::thread::sleep(Duration::from_millis(300));
    let rg = info(c, "rg");
    let field = |f: &str| info_field(&rg, f).and_then(|v| v.parse().ok()).unwrap_or(0);
    Mem { used: used_memory(c), interpreters: field("rg_interpreters"), interpreters_bytes: field("rg_interpreters_memory_bytes") }
}

fn m1() -> M1 {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let base = settle(&mut c);
    let idle_code = "GB('KeysOnlyReader'):foreach(function(r) end):register({prefix = 'idle:', mode = 'sync'})";
    assert_eq!(exec(&mut c, "lua", idle_code, &["ID", "idle"]), "OK");
    let idle = settle(&mut c);
    progress!("M1 one idle session: used_memory +{}", bytes((idle.used - base.used) as f64));
    let many = format!("for i = 1, {MANY} do GB('KeysOnlyReader'):foreach(function(r) end):register({{prefix = 'many:' .. i .. ':', mode = 'sync'}}) end");
    assert_eq!(exec(&mut c, "lua", &many, &["ID", "many"]), "OK");
    let many_one_session = settle(&mut c);
    for i in 0..MANY {
        let code = format!("GB('KeysOnlyReader'):foreach(function(r) end):register({{prefix = 'one:{i}:', mode = 'sync'}})");
        assert_eq!(exec(&mut c, "lua", &code, &["ID", &format!("one{i}")]), "OK");
    }
    let many_sessions = settle(&mut c);
    let regs = info_field(&info(&mut c, "rg"), "rg_registrations").unwrap_or_default();
    assert_eq!(regs, (1 + 2 * MANY).to_string(), "registrations");
    progress!(
        "M1 {MANY} registrations in one session: +{}; {MANY} sessions of one: +{}",
        bytes((many_one_session.used - idle.used) as f64),
        bytes((many_sessions.used - many_one_session.used) as f64)
    );
    for i in 0..FIRED_SESSIONS {
        let code = format!("GB('KeysOnlyReader'):foreach(function(r) execute('INCR', 'fired') end):register({{prefix = 'fire:{i}:', mode = 'sync'}})");
        assert_eq!(exec(&mut c, "lua", &code, &["ID", &format!("fire{i}")]), "OK");
    }
    let fire_registered = settle(&mut c);
    let rg_before = interpreter_fields(&mut c);
    for i in 0..FIRED_SESSIONS {
        let _: i64 = redis::cmd("HSET").arg(format!("fire:{i}:k")).arg("f").arg("v").query(&mut c).expect("HSET");
    }
    assert_eq!(get_int(&mut c, &["GET", "fired"]), FIRED_SESSIONS as i64, "each session fired once");
    let fired = settle(&mut c);
    let rg_after = interpreter_fields(&mut c);
    progress!("M1 {FIRED_SESSIONS} Lua sessions fired once: used_memory +{}", bytes((fired.used - fire_registered.used) as f64));
    M1 { base, idle, many_one_session, many_sessions, fire_registered, fired, rg_before, rg_after }
}

fn m1_report(r: &mut Report, m: &M1, b3: &B3) {
    let mut md = String::new();
    writeln!(md, "## M1: memory\n").unwrap();
    writeln!(
        md,
        "`used_memory` (INFO memory) of a fresh server with the module loaded, read 300 ms after each step, next to INFO rg's \
         `rg_interpreters` and `rg_interpreters_memory_bytes`. Registrations are Lua `KeysOnlyReader` sync triggers with an \
         empty step, each on its own prefix. The backlog is B3's (another server).\n"
    )
    .unwrap();
    writeln!(md, "| state | used_memory | growth | per item | rg_interpreters | rg_interpreters_memory_bytes |").unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|---:|").unwrap();
    let per = |d: i64, n: usize| bytes(d as f64 / n as f64);
    let line = |md: &mut String, what: &str, now: Mem, prev: Option<Mem>, per_item: String| {
        let growth = prev.map(|p| bytes((now.used - p.used) as f64)).unwrap_or_else(|| "—".into());
        writeln!(md, "| {what} | {} | {growth} | {per_item} | {} | {} |", bytes(now.used as f64), now.interpreters, bytes(now.interpreters_bytes as f64)).unwrap();
    };
    line(&mut md, "module loaded, nothing registered (baseline)", m.base, None, "—".into());
    line(&mut md, "+ one idle session (one registration)", m.idle, Some(m.base), format!("{} per session", bytes((m.idle.used - m.base.used) as f64)));
    line(&mut md, &format!("+ {} registrations in one session", thousands(MANY as f64)), m.many_one_session, Some(m.idle), format!("{} per registration", per(m.many_one_session.used - m.idle.used, MANY)));
    line(
        &mut md,
        &format!("+ {} sessions of one registration each", thousands(MANY as f64)),
        m.many_sessions,
        Some(m.many_one_session),
        format!("{} per session + registration", per(m.many_sessions.used - m.many_one_session.used, MANY)),
    );
    line(&mut md, &format!("+ {FIRED_SESSIONS} Lua sessions, registered, not fired"), m.fire_registered, Some(m.many_sessions), format!("{} per session", per(m.fire_registered.used - m.many_sessions.used, FIRED_SESSIONS)));
    line(&mut md, &format!("… each of the {FIRED_SESSIONS} fired once (an HSET on its prefix)"), m.fired, Some(m.fire_registered), format!("{} per fired session", per(m.fired.used - m.fire_registered.used, FIRED_SESSIONS)));
    let n = b3.n as f64;
    writeln!(md, "\nThe backlog of B3 ({} captured changes of as many distinct 3-field hashes, recipe paused):\n", thousands(n)).unwrap();
    writeln!(md, "| state | used_memory | growth | per item |").unwrap();
    writeln!(md, "|---|---:|---:|---:|").unwrap();
    writeln!(md, "| recipe registered and paused, before the load | {} | — | — |", bytes(b3.mem_before as f64)).unwrap();
    writeln!(md, "| + the hashes and their changes in the backlog | {} | {} | {} per hash + entry |", bytes(b3.mem_loaded as f64), bytes((b3.mem_loaded - b3.mem_before) as f64), bytes((b3.mem_loaded - b3.mem_before) as f64 / n)).unwrap();
    writeln!(
        md,
        "| drained (the stream trimmed, the hashes kept): the backlog was loaded − drained | {} | {} | {} per entry |",
        bytes(b3.mem_drained as f64),
        bytes((b3.mem_loaded - b3.mem_drained) as f64),
        bytes((b3.mem_loaded - b3.mem_drained) as f64 / n)
    )
    .unwrap();
    writeln!(md, "| `MEMORY USAGE rg:wb:drain SAMPLES 0` with the backlog | — | {} | {} per entry |", bytes(b3.stream_bytes as f64), bytes(b3.stream_bytes as f64 / n)).unwrap();
    writeln!(md, "\nFiring the {FIRED_SESSIONS} Lua sessions once each: used_memory next to INFO rg's interpreter fields, read before and after:\n").unwrap();
    writeln!(md, "| field | before | after | growth | growth per fired session |").unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|").unwrap();
    writeln!(
        md,
        "| used_memory (INFO memory) | {} | {} | {} | {} |",
        bytes(m.fire_registered.used as f64),
        bytes(m.fired.used as f64),
        bytes((m.fired.used - m.fire_registered.used) as f64),
        per(m.fired.used - m.fire_registered.used, FIRED_SESSIONS)
    )
    .unwrap();
    for (k, after) in &m.rg_after {
        let before = m.rg_before.iter().find(|(b, _)| b == k).map(|(_, v)| *v).unwrap_or(0);
        if k == "rg_interpreters" {
            writeln!(md, "| {k} | {before} | {after} | {} | — |", after - before).unwrap();
        } else {
            writeln!(md, "| {k} | {} | {} | {} | {} |", bytes(before as f64), bytes(*after as f64), bytes((after - before) as f64), per(after - before, FIRED_SESSIONS)).unwrap();
        }
    }
    md.push('\n');
    r.summary.push(SummaryRow {
        id: "M1",
        job: "memory (used_memory growth)".into(),
        figure: format!(
            "idle session {}; {} per registration; {} per session of one registration; {} per Lua session fired once; {} per backlog entry",
            bytes((m.idle.used - m.base.used) as f64),
            per(m.many_one_session.used - m.idle.used, MANY),
            per(m.many_sessions.used - m.many_one_session.used, MANY),
            per(m.fired.used - m.fire_registered.used, FIRED_SESSIONS),
            bytes((b3.mem_loaded - b3.mem_drained) as f64 / n)
        ),
        baseline: format!("module loaded, nothing registered: {}", bytes(m.base.used as f64)),
        ratio: "—".into(),
        target: "none set".into(),
        result: "—".into(),
    });
    r.md.push_str(&md);
}

// ---------------------------------------------------------------------------------------
// The machine, and the documents.

fn sh(program: &str, args: &[&str]) -> String {
    Command::new(program).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A 7.2+ server to run B1 and B5 on as well: `BENCH_SERVER2`, else the Redis 7.4.1 that
/// scripts/redis74.sh builds into the cache (none if neither exists, or "none").
fn second_server() -> Option<String> {
    let cached = std::env::var("HOME").ok().map(|h| format!("{h}/.cache/gears/redis-7.4.1/src/redis-server"));
    let binary = std::env::var("BENCH_SERVER2").ok().or(cached)?;
    (binary != "none" && std::path::Path::new(&binary).exists() && binary != common::server_binary()).then_some(binary)
}

fn server_version() -> String {
    let s = Server::start(&[]);
    let text = info(&mut s.conn(), "server");
    match info_field(&text, "valkey_version") {
        Some(v) => format!("Valkey {v}"),
        None => format!("Redis {}", info_field(&text, "redis_version").unwrap_or_default()),
    }
}

/// The module every server of the run loads: a copy of the built one, so that a rebuild
/// while the run goes on changes nothing (RG_MODULE points at it); removed at the end.
struct ModuleCopy {
    dir: std::path::PathBuf,
    built: String,
}

impl ModuleCopy {
    fn new() -> ModuleCopy {
        let src = common::module_path();
        let built = sh("date", &["-u", "-r", &src.display().to_string(), "+%Y-%m-%d %H:%M UTC"]);
        let dir = std::env::temp_dir().join(format!("rg-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dst = dir.join("librg.so");
        std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        // Set before any thread starts.
        std::env::set_var("RG_MODULE", &dst);
        ModuleCopy { dir, built: format!("{}, built {built}", src.display()) }
    }
}

impl Drop for ModuleCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The profiles of the largest gaps (taken by hand; see the text).
const GAPS: &str = r#"
## Where the time goes, and what the rest would need

Profiles taken on this machine with `perf record --call-graph dwarf -p <redis-server pid>`
(the largest gaps above); they are not re-taken by each run.

- **B4, countBy (the largest gap).** Two threads run at 100% CPU on the two cores: the
  reader (`RM_Scan`, the ACL check and the hash read with `RM_ScanKey` under the lock, at
  most 1 ms at a time, so PING p99 stays near 1-2 ms) and the worker (each record turned
  into a Lua table or JS object, the extractor called, the group counted, the record
  freed). About 45% of all samples are Redis's allocator (`zmalloc_usable`, `zfree`),
  mostly the `used_memory` counter every module allocation updates, shared between the
  reader that allocates a record and the worker that frees it. Since the first report:
  steps no longer copy each record before calling the script (the languages convert from a
  reference), Lua builds plain data in one protected call instead of one per string and
  table store, and the reader reuses its ACL strings and hash cursor: allocations per
  record (column above; measured on 100k hashes before and after) fell from 61 to 40
  (Lua) and from 54 to 34 (JS), against the EVAL loop's 9-10. Reaching the EVAL loop (which blocks Redis for its whole run) would need
  records that are not built at all: the extractor reading fields from the key on access
  (a userdata/proxy record over the open key, which would have to run under the lock)
  instead of a full table per hash, so that a countBy of one field copies one field per
  key. A per-thread cache of small blocks in front of Redis's allocator was tried: it cut
  the allocator's share of the samples from ~43% to ~17% but not the wall time, so it was
  not kept.
- **B1, capture.** The capture is native (the hash read with `RM_ScanKey`, the entry
  appended with `RM_StreamAdd` and replicated as XADD with the same strings). On Redis
  7.0 every write to a captured key still runs twice: the command filter turns it into
  `RG.WTRUN <command>` (7.0's filter cannot tell a client's command from one queued in
  MULTI). On 7.2+ (the second table) a plain client's write-behind write runs unwrapped,
  and the filter asks the server about a client once (`RM_GetClientInfoById` formats the
  peer address, a system call) and then follows its MULTI state from its commands: the
  FCALL target is met at `-P 16` and within a few percent at `-P 1`. Plain HSET stays out of
  reach: a capture reads the whole hash back and appends and replicates an entry, more
  work than the HSET itself.
- **B2/B3, drain.** A batch is one prepared statement with array parameters (and, for
  at-least-once, no BEGIN/COMMIT), a round of the apply loop takes the Redis lock once, and
  the next batch is read while the target commits the current one: B3 meets its target. B2
  is bounded by the capture path on 7.0 (above) and by the apply thread sharing two cores
  with Redis and the 48 clients.
- **B5, sync triggers.** On Redis 7.4.1 about half of the main thread's samples are the
  trigger's post-notification job: the Lua call of the step (~33%, of which `execute()`
  ~16% and its `RM_Call` with the INCR itself ~6%), the record read and built (~5%), the
  run set-up (an `Execution`, a run environment, the session's instance looked up, step
  timings: ~8%, including ~4% in `clock_gettime`). What is left would need a firing path
  that builds nothing per firing (no `Execution` or run environment, the instance and
  function looked up once per session change) and an `execute()` without a fresh ACL user
  per call: the user object `RM_GetModuleUserFromUserName` gives points at the live user,
  which `ACL DELUSER` may free between two commands, so it cannot be kept across commands.
"#;

fn main() {
    START.get_or_init(Instant::now);
    let module = ModuleCopy::new();
    let cfg = Config {
        requests: env("BENCH_REQUESTS", 200_000),
        clients: env("BENCH_CLIENTS", 50),
        secs: env("BENCH_SECS", 10),
        wb_clients: env("BENCH_WB_CLIENTS", 48),
        drain: env("BENCH_DRAIN", 1_000_000),
        keys: env("BENCH_KEYS", 1_000_000),
        rounds: env("BENCH_ROUNDS", 2),
        drain_batch: env("BENCH_DRAIN_BATCH", 0),
    };
    let load_start = loadavg();
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let commit = sh("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))).unwrap_or_default();
    let server = server_version();
    progress!(
        "start: {server} ({}), module {}, {cores} cores, load average {load_start}; BENCH_REQUESTS={} BENCH_CLIENTS={} BENCH_SECS={} BENCH_DRAIN={} BENCH_KEYS={} BENCH_ROUNDS={}",
        common::server_binary(),
        module.built,
        cfg.requests,
        cfg.clients,
        cfg.secs,
        cfg.drain,
        cfg.keys,
        cfg.rounds
    );

    progress!("M1: memory of sessions and registrations");
    let m1 = m1();

    let pg = Postgres::start();
    let pg_version = pg.sql("SELECT version()");
    progress!("PostgreSQL: {pg_version}");
    progress!("B1: HSET with write-behind capture vs plain HSET vs FCALL (redis-benchmark)");
    let b1 = b1(&cfg, &pg);
    progress!("B5: HSET with a sync trigger doing INCR vs FCALL HSET + INCR (redis-benchmark)");
    let b5 = b5(&cfg);
    // B1 and B5 again on a 7.2+ server, where captures and sync triggers take their
    // unwrapped paths (post-notification jobs, the client known to the command filter).
    let second = second_server().map(|binary| {
        let first = common::server_binary();
        std::env::set_var("REDIS_SERVER", &binary);
        let version = server_version();
        progress!("B1 and B5 on {version} ({binary})");
        let again1 = self::b1(&cfg, &pg);
        let again5 = self::b5(&cfg);
        std::env::set_var("REDIS_SERVER", first);
        (version, binary, again1, again5)
    });
    progress!("B3: drain of {} captured changes into PostgreSQL vs COPY", cfg.drain);
    let b3 = b3(&cfg, &pg);
    drop(pg);

    progress!("B2: {} clients, PostgreSQL upserts vs HSET + write-behind, {} s per load (4 loads)", cfg.wb_clients, cfg.secs);
    let b2 = write_behind::measure(cfg.secs, cfg.wb_clients, 100_000);
    write_behind::check(&b2);
    write_behind::print(&b2);

    progress!("B4: countBy over {} hashes, {} rounds", cfg.keys, cfg.rounds);
    let b4 = countby::measure(cfg.keys as usize, cfg.rounds as usize);
    for (name, (t, p)) in countby::NAMES.iter().zip(&b4.best) {
        progress!("B4 {name:<30} {:>8.3} s  PING p50 {:.2} ms  p99 {:.2} ms  worst {:.2} ms", t.as_secs_f64(), ms(p[0]), ms(p[1]), ms(p[2]));
    }

    // The documents.
    let mut r = Report { md: String::new(), summary: Vec::new(), ratios: Vec::new(), latencies: Vec::new() };
    b1_report(&mut r, &cfg, &b1, "");
    if let Some((version, _, b1, _)) = &second {
        b1_report(&mut r, &cfg, b1, &format!(" (on {version})"));
    }
    b2_report(&mut r, &b2);
    b3_report(&mut r, &cfg, &b3);
    b4_report(&mut r, &b4);
    b5_report(&mut r, &cfg, &b5, "");
    if let Some((version, _, _, b5)) = &second {
        b5_report(&mut r, &cfg, b5, &format!(" (on {version})"));
    }
    m1_report(&mut r, &m1, &b3);
    let took = START.get().unwrap().elapsed();
    let load_end = loadavg();

    let mut doc = String::new();
    writeln!(doc, "# Performance\n").unwrap();
    writeln!(
        doc,
        "Generated by `./bench/run.sh` (which builds the release module and runs `cargo bench --bench report`, bench/report.rs); \
         do not edit by hand: the next run overwrites it. Every Gears job was measured next to its baseline in the same run, on \
         the same server binary and machine; ratios are against those baselines. Sizes are set with environment variables (below).\n"
    )
    .unwrap();
    writeln!(doc, "## Machine and run\n").unwrap();
    writeln!(doc, "| | |\n|---|---|").unwrap();
    writeln!(doc, "| date | {date} |").unwrap();
    writeln!(doc, "| git commit | {commit}{} |", if dirty { " (with uncommitted changes)" } else { "" }).unwrap();
    writeln!(doc, "| cores | {cores} (`available_parallelism`) |").unwrap();
    let gib = mem_total.trim_end_matches("kB").trim().parse::<f64>().map(|k| format!("{:.1} GiB, ", k / 1024.0 / 1024.0)).unwrap_or_default();
    writeln!(doc, "| memory | {gib}MemTotal {mem_total} |").unwrap();
    writeln!(doc, "| server | {server} (`{}`) |", common::server_binary()).unwrap();
    if let Some((version, binary, _, _)) = &second {
        writeln!(doc, "| second server (B1, B5 again) | {version} (`{}`) |", binary.replace(&std::env::var("HOME").unwrap_or_default(), "~")).unwrap();
    }
    writeln!(doc, "| module | {} (one copy loaded by every server of the run) |", module.built.replace(env!("CARGO_MANIFEST_DIR"), ".")).unwrap();
    writeln!(doc, "| PostgreSQL | {pg_version} |").unwrap();
    writeln!(doc, "| load average (1, 5, 15 min) | {load_start} at the start, {load_end} at the end |").unwrap();
    writeln!(doc, "| run time | {} min {} s (the benchmarks, without the build) |", took.as_secs() / 60, took.as_secs() % 60).unwrap();
    writeln!(
        doc,
        "| sizes | BENCH_REQUESTS={} BENCH_CLIENTS={} BENCH_SECS={} BENCH_WB_CLIENTS={} BENCH_DRAIN={} BENCH_KEYS={} BENCH_ROUNDS={} |",
        cfg.requests, cfg.clients, cfg.secs, cfg.wb_clients, cfg.drain, cfg.keys, cfg.rounds
    )
    .unwrap();
    writeln!(
        doc,
        "\nTo reproduce: `./bench/run.sh` (or, with the module built by `cargo build --release`, `cargo bench --bench report`), \
         with any of the variables above set to change the sizes; `REDIS_SERVER` picks another server binary, `BENCH_SERVER2` \
         the second server B1 and B5 run on (`none`: no second run).\n"
    )
    .unwrap();
    writeln!(doc, "## Summary\n").unwrap();
    writeln!(doc, "| id | job | figure | baseline (same run) | ratio | target | result |").unwrap();
    writeln!(doc, "|---|---|---|---|---|---|---|").unwrap();
    let order = ["B1", "B2", "B3", "B4", "B5", "M1"];
    for id in order {
        for s in r.summary.iter().filter(|s| s.id == id) {
            writeln!(doc, "| {} | {} | {} | {} | {} | {} | {} |", s.id, s.job, s.figure, s.baseline, s.ratio, s.target, s.result).unwrap();
        }
    }
    writeln!(doc, "\n![Throughput of each Gears job relative to its baseline, and p99 latencies](performance.svg)\n").unwrap();
    doc.push_str(&r.md);
    doc.push_str(GAPS);

    let ratio_order = |b: &Bar| order.iter().position(|id| b.label.starts_with(id)).unwrap_or(9);
    r.ratios.sort_by_key(ratio_order);
    r.latencies.sort_by_key(ratio_order);
    let svg = report_svg::chart(
        &format!("Gears vs baselines, same run ({server}, {cores} cores, {date}, {commit})"),
        "Throughput ÷ the baseline's (higher is better; orange: below the baseline; dashed: 1.0 = as fast as the baseline)",
        &r.ratios,
        "p99 latency, ms, log scale (B1, B2, B5: the clients'; B4: another client's PING during the job)",
        &r.latencies,
        Some((2.0, "2 ms: B2, B4 target")),
    );
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::write(docs.join("performance.md"), &doc).expect("write docs/performance.md");
    std::fs::write(docs.join("performance.svg"), &svg).expect("write docs/performance.svg");
    progress!("wrote docs/performance.md and docs/performance.svg in {} min {} s", took.as_secs() / 60, took.as_secs() % 60);
    println!("\n| id | job | figure | baseline | ratio | result |");
    for id in order {
        for s in r.summary.iter().filter(|s| s.id == id) {
            println!("| {} | {} | {} | {} | {} | {} |", s.id, s.job, s.figure, s.baseline, s.ratio, s.result);
        }
    }
}
