//! The cluster coordinator without Redis: three engines, each over its own `MemoryHost`
//! holding the keys of its slots, joined by an in-process bus that can lose, repeat and
//! cut messages. A run sent to any shard gives the answer one engine holding every key
//! gives; lost batches are asked for again, repeated ones taken once; a shard that goes
//! silent fails the run with the idle-time error, naming it.

use engine::cluster::{key_slot, Shard, Topology};
use engine::{Config, Engine, ExecRequest, Host, HostError, LockedHost, LogLevel, MemoryHost, Outcome, Value};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Every engine made, for the dump of a run that hangs.
static ALL: Mutex<Vec<Weak<Engine>>> = Mutex::new(Vec::new());

const IDS: [&str; 3] = ["aaaa", "bbbb", "cccc"];
const RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// What the bus does to messages: lose every n-th `records` message the first time it is
/// sent, repeat every m-th message, and cut a shard off.
#[derive(Default)]
struct Faults {
    lose_every: u64,
    repeat_every: u64,
    cut: Mutex<Option<String>>,
    seen: AtomicU64,
    lost: AtomicU64,
    repeated: AtomicU64,
}

struct Bus {
    tx: Mutex<Sender<(String, String, Vec<u8>)>>,
    engines: Mutex<HashMap<String, Weak<Engine>>>,
    faults: Faults,
}

struct ShardHost {
    mem: MemoryHost,
    id: String,
    topology: Arc<Topology>,
    bus: Arc<Bus>,
}

struct ShardLocked<'a> {
    inner: Box<dyn LockedHost + 'a>,
    from: &'a str,
    bus: &'a Bus,
}

impl LockedHost for ShardLocked<'_> {
    fn call(&self, user: Option<&str>, args: &[&[u8]]) -> Result<Value, HostError> {
        self.inner.call(user, args)
    }
    fn permitted(&self, user: &str, args: &[&[u8]]) -> Result<(), HostError> {
        self.inner.permitted(user, args)
    }
    fn send(&self, to: &str, payload: &[u8]) -> Result<(), HostError> {
        let _ = self.bus.tx.lock().send((self.from.to_string(), to.to_string(), payload.to_vec()));
        Ok(())
    }
}

impl Host for ShardHost {
    fn lock(&self, db: u32) -> Box<dyn LockedHost + '_> {
        Box::new(ShardLocked { inner: self.mem.lock(db), from: &self.id, bus: &self.bus })
    }
    fn shard_id(&self) -> String {
        self.id.clone()
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.mem.log(level, message)
    }
    fn topology(&self) -> Option<Arc<Topology>> {
        Some(self.topology.clone())
    }
}

fn engine_over(host: Arc<dyn Host>, idle_ms: u64) -> Arc<Engine> {
    let config = Arc::new(Config::default());
    config.set("execution-max-idle-time", &idle_ms.to_string(), false).unwrap();
    config.set("cluster-batch-size", "7", false).unwrap();
    config.set("keys-batch-size", "13", false).unwrap();
    let languages: Vec<Arc<dyn engine::Language>> = vec![Arc::new(lang_lua::LuaLanguage), Arc::new(lang_js::Js)];
    Engine::new(host, config, languages, Arc::new(stdlib::Stdlib::default()))
}

struct Cluster {
    engines: Vec<Arc<Engine>>,
    hosts: Vec<Arc<ShardHost>>,
    bus: Arc<Bus>,
    single: Arc<Engine>,
    single_host: Arc<MemoryHost>,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    fn new(lose_every: u64, repeat_every: u64, idle_ms: u64) -> Cluster {
        let (tx, rx) = channel::<(String, String, Vec<u8>)>();
        let bus = Arc::new(Bus { tx: Mutex::new(tx), engines: Default::default(), faults: Faults { lose_every, repeat_every, ..Default::default() } });
        let shards: Vec<Shard> = IDS.iter().zip(RANGES).map(|(id, r)| Shard { id: id.to_string(), addr: format!("mem:{id}"), slots: vec![r] }).collect();
        let mut engines = Vec::new();
        let mut hosts = Vec::new();
        for id in IDS {
            let host = Arc::new(ShardHost { mem: MemoryHost::new(), id: id.to_string(), topology: Arc::new(Topology::new(id.to_string(), shards.clone())), bus: bus.clone() });
            let e = engine_over(host.clone(), idle_ms);
            bus.engines.lock().insert(id.to_string(), Arc::downgrade(&e));
            ALL.lock().push(Arc::downgrade(&e));
            engines.push(e);
            hosts.push(host);
        }
        let stop = Arc::new(AtomicBool::new(false));
        // The bus: delivers on its own thread, as Redis delivers on its main thread.
        let b = bus.clone();
        let s = stop.clone();
        std::thread::spawn(move || {
            while let Ok((from, to, payload)) = rx.recv() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let f = &b.faults;
                if f.cut.lock().as_deref().is_some_and(|c| c == from || c == to) {
                    continue;
                }
                let n = f.seen.fetch_add(1, Ordering::Relaxed) + 1;
                let is_records = matches!(engine::cluster::message::decode(&payload), Ok(engine::cluster::Message::Records { .. }));
                // Lose some batches (their End then finds them missing).
                if is_records && f.lose_every > 0 && n % f.lose_every == 0 {
                    f.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(e) = b.engines.lock().get(&to).and_then(Weak::upgrade) else { continue };
                e.cluster_deliver(&from, &payload);
                if f.repeat_every > 0 && n % f.repeat_every == 0 {
                    f.repeated.fetch_add(1, Ordering::Relaxed);
                    e.cluster_deliver(&from, &payload);
                }
            }
        });
        let single_host = Arc::new(MemoryHost::new());
        let single = engine_over(single_host.clone(), idle_ms);
        Cluster { engines, hosts, bus, single, single_host, stop }
    }

    /// Writes `args` on the shard that serves its key (args[1]) and on the single engine.
    fn write(&self, args: &[&str]) {
        let slot = key_slot(args[1].as_bytes());
        let i = RANGES.iter().position(|(a, b)| *a <= slot && slot <= *b).unwrap();
        self.hosts[i].mem.cmd(args).unwrap();
        self.single_host.cmd(args).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for e in self.engines.iter().chain([&self.single]) {
            e.shutdown();
        }
    }
}

fn run(e: &Arc<Engine>, lang: &str, source: &str) -> Result<Vec<Value>, String> {
    let req = ExecRequest { language: lang.into(), source: source.into(), args: vec![], id: None, description: None, user: None, db: 0, upgrade: false, admin: true };
    let exec = e.submit(req).map_err(|e| e.to_string())?;
    if !exec.wait(Duration::from_secs(30)) {
        let dump: Vec<String> = ALL.lock().iter().filter_map(Weak::upgrade).map(|o| format!("{}:\n{}", o.host.shard_id(), o.cluster.debug_parts())).collect();
        panic!("the execution {} did not finish; the parts: {}", exec.id, dump.join("\n"));
    }
    match exec.outcome() {
        Some(Outcome::Records { mut results, errors }) => {
            assert!(errors.is_empty(), "{errors:?}");
            results.sort_by(|a, b| a.compare(b));
            Ok(results)
        }
        Some(Outcome::Failed(e)) => Err(e),
        other => Err(format!("unexpected outcome {other:?}")),
    }
}

const CASES: &[(&str, &str, &str)] = &[
    ("countBy", "return GB():countBy(function(r) return r.value.city end):run('user:*')", "GB().countBy(r => r.value.city).run('user:*')"),
    ("count", "return GB():count():run('user:*')", "GB().count().run('user:*')"),
    ("distinct", "return GB():map(function(r) return r.value.city end):distinct():run('user:*')", "GB().map(r => r.value.city).distinct().run('user:*')"),
    ("avg", "return GB():avg(function(r) return tonumber(r.value.age) end):run('user:*')", "GB().avg(r => Number(r.value.age)).run('user:*')"),
    ("sort+limit", "return GB():map(function(r) return r.key end):sort():limit(5):run('user:*')", "GB().map(r => r.key).sort().limit(5).run('user:*')"),
    (
        "groupBy",
        "return GB():groupBy(function(r) return r.value.city end, function(k, a, r) return (a or 0) + tonumber(r.value.age) end):run('user:*')",
        "GB().groupBy(r => r.value.city, (k, a, r) => (a || 0) + Number(r.value.age)).run('user:*')",
    ),
    (
        "aggregateBy",
        "return GB():aggregateBy(function(r) return r.value.city end, 0, function(k, a, r) return a + 1 end, function(k, a, b) return a + b end):run('user:*')",
        "GB().aggregateBy(r => r.value.city, 0, (k, a, r) => a + 1, (k, a, b) => a + b).run('user:*')",
    ),
    ("repartition+collect", "return GB():repartition(function(r) return r.value.city end):map(function(r) return r.key end):collect():run('user:*')", "GB().repartition(r => r.value.city).map(r => r.key).collect().run('user:*')"),
    ("ShardsIDReader", "return GB('ShardsIDReader'):count():run()", "GB('ShardsIDReader').count().run()"),
];

fn populate(c: &Cluster, n: usize) {
    for i in 0..n {
        c.write(&["HSET", &format!("user:{i}"), "age", &(i % 90).to_string(), "city", &format!("c{}", i % 17)]);
    }
}

#[test]
fn every_step_gives_the_single_engine_answer_from_every_shard() {
    let c = Cluster::new(0, 0, 5000);
    populate(&c, 600);
    for (name, lua, js) in CASES {
        for (lang, src) in [("lua", lua), ("js", js)] {
            let single = run(&c.single, lang, src).unwrap();
            for (i, e) in c.engines.iter().enumerate() {
                let got = run(e, lang, src).unwrap_or_else(|err| panic!("{name} {lang} on shard {i}: {err}"));
                if *name == "ShardsIDReader" {
                    assert_eq!(got, vec![Value::Int(3)], "{name} {lang} on shard {i}");
                } else {
                    assert_eq!(got, single, "{name} {lang} on shard {i}");
                }
            }
        }
    }
}

#[test]
fn lost_and_repeated_batches_still_give_the_full_answer() {
    let c = Cluster::new(5, 3, 5000);
    populate(&c, 900);
    for (lang, src) in [("lua", CASES[0].1), ("js", CASES[7].2)] {
        let single = run(&c.single, lang, src).unwrap();
        for e in &c.engines {
            assert_eq!(run(e, lang, src).unwrap(), single, "{lang}");
        }
    }
    assert!(c.bus.faults.lost.load(Ordering::Relaxed) > 10, "the bus lost no batch: the test proves nothing");
    assert!(c.bus.faults.repeated.load(Ordering::Relaxed) > 10, "the bus repeated no message");
}

#[test]
fn a_silent_shard_fails_the_run_within_the_idle_time_and_nothing_stays() {
    let c = Cluster::new(0, 0, 700);
    populate(&c, 300);
    *c.bus.faults.cut.lock() = Some("cccc".into());
    let started = std::time::Instant::now();
    let err = run(&c.engines[0], "lua", CASES[0].1).unwrap_err();
    assert_eq!(err, format!("shard cccc (mem:cccc) did not answer for 700 ms (rg.execution-max-idle-time): execution {} failed", err.split("execution ").nth(1).and_then(|s| s.split(' ').next()).unwrap()));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // The parts are forgotten once their messages are settled (twice the idle time).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.engines[..2].iter().any(|e| e.cluster.counts() != (0, 0)) {
        assert!(std::time::Instant::now() < deadline, "parts left: {:?}", c.engines.iter().map(|e| e.cluster.counts()).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Back on the bus, the next run gives the full answer.
    *c.bus.faults.cut.lock() = None;
    assert_eq!(run(&c.engines[1], "lua", CASES[0].1).unwrap(), run(&c.single, "lua", CASES[0].1).unwrap());
}
