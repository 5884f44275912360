//! The cluster coordinator: a `run()` sent to any primary runs its plan on every primary
//! against that shard's keys, records cross shards at `repartition` and `collect`, and the
//! results end on the initiator. Shards exchange `message::Message`s through the host
//! (`LockedHost::send`; on Redis, the cluster bus). Every message about an execution also
//! says the sender is alive; a shard silent for `rg.execution-max-idle-time` while another
//! waits for it fails the execution, so none hangs.

pub mod message;
pub mod part;
mod remote;
mod run;
mod sync;
pub mod stages;
pub mod topology;
pub mod versions;

pub use message::{Message, Query, Start};
pub use part::Part;
pub use remote::run_everywhere;
pub use sync::VERSIONS_COMMAND;
pub use versions::{Version, Versions};
pub use run::{plan_fingerprint, run_part};
pub use topology::{hashtag_of_slot, key_slot, Shard, Topology};

use crate::{Config, Host, LogLevel, Value};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What a script sent with RG.EXEC needs for its `run()` to run on every shard.
#[derive(Clone)]
pub struct ClusterRun {
    pub coordinator: Arc<Coordinator>,
    pub language: String,
    pub source: String,
    pub args: Vec<Vec<u8>>,
    pub description: Option<String>,
}

/// Answers another shard's `Query` on this one (set by the module).
pub type QueryHandler = Box<dyn Fn(&Query) -> Result<Value, String> + Send + Sync>;
/// Gets every shard's answer to a query: (shard id, answer), this shard's first.
pub type QueryDone = Box<dyn FnOnce(Vec<(String, Result<Value, String>)>) + Send>;

struct PendingQuery {
    waiting: HashSet<String>,
    answers: Vec<(String, Result<Value, String>)>,
    deadline: Instant,
    done: Option<QueryDone>,
}

/// Messages waiting to be sent, and their bytes (senders wait beyond a bound).
#[derive(Default)]
struct Mailbag {
    queue: VecDeque<(String, Vec<u8>)>,
    bytes: usize,
    closed: bool,
}

/// Bytes queued for sending beyond which a runner waits (a shuffle is paced by the bus).
const MAILBAG_BYTES: usize = 16 << 20;
/// How often the coordinator checks parts, re-sends what was not confirmed and says
/// its parts are alive.
const TICK: Duration = Duration::from_millis(100);
const RESEND: Duration = Duration::from_millis(1000);
/// Messages held per execution not started here yet (a part that misses some asks again).
const MAX_EARLY: usize = 100_000;
/// Ticks between two registrations digests sent to the other primaries (one second).
const DIGEST_EVERY: u64 = 10;

pub struct Coordinator {
    host: Arc<dyn Host>,
    config: Arc<Config>,
    parts: Mutex<HashMap<String, Arc<Part>>>,
    /// Messages about executions this shard has no part of yet (they may come before the
    /// initiator's `Start`), by execution, with when the first came.
    early: Mutex<HashMap<String, (Instant, Vec<(String, Message)>)>>,
    /// Executions whose part ended here: late messages about them are dropped.
    ended: Mutex<(VecDeque<String>, HashSet<String>)>,
    queries: Mutex<HashMap<u64, PendingQuery>>,
    next_query: AtomicU64,
    handler: RwLock<Option<QueryHandler>>,
    mail: Mutex<Mailbag>,
    mail_ready: Condvar,
    mail_room: Condvar,
    threads: std::sync::Once,
    me: Weak<Coordinator>,
    /// The address of every primary seen, so that errors can name one that is gone.
    addresses: Mutex<HashMap<String, String>>,
    /// The versions of the registrations shared with the other primaries (see `sync`);
    /// saved and replicated with them.
    pub versions: Mutex<Versions>,
    /// The sync thread's queue (started on first use).
    pub(crate) sync_jobs: Mutex<Option<std::sync::mpsc::Sender<sync::SyncJob>>>,
    /// A fingerprint of the registrations when changes were last recorded.
    pub(crate) signature: AtomicU64,
    ticks: AtomicU64,
    /// Peers whose state is being fetched (one fetch at a time per peer).
    fetching: Mutex<HashSet<String>>,
    /// Sends this primary's registrations digest to the others (set by the engine).
    pub(crate) digest: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl Coordinator {
    pub fn new(host: Arc<dyn Host>, config: Arc<Config>) -> Arc<Coordinator> {
        Arc::new_cyclic(|me| Coordinator {
            host,
            config,
            parts: Default::default(),
            early: Default::default(),
            ended: Default::default(),
            queries: Default::default(),
            next_query: AtomicU64::new(1),
            handler: RwLock::new(None),
            mail: Default::default(),
            mail_ready: Condvar::new(),
            mail_room: Condvar::new(),
            threads: std::sync::Once::new(),
            me: me.clone(),
            addresses: Default::default(),
            versions: Default::default(),
            sync_jobs: Default::default(),
            signature: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            fetching: Default::default(),
            digest: std::sync::OnceLock::new(),
        })
    }

    pub fn topology(&self) -> Option<Arc<Topology>> {
        self.host.topology()
    }

    /// `rg.execution-max-idle-time`.
    pub fn idle_limit(&self) -> Duration {
        Duration::from_millis(self.config.get_i64("execution-max-idle-time").max(1) as u64)
    }

    /// Records per batch sent to another shard (`rg.cluster-batch-size`).
    pub fn batch_records(&self) -> usize {
        self.config.get_i64("cluster-batch-size").max(1) as usize
    }

    pub fn set_query_handler(&self, h: QueryHandler) {
        *self.handler.write() = Some(h);
    }

    /// `<id> (<ip:port>)`, also for a primary that has left the cluster since.
    pub fn describe(&self, shard: &str) -> String {
        if let Some(t) = self.topology() {
            let mut known = self.addresses.lock();
            for s in &t.shards {
                known.insert(s.id.clone(), s.addr.clone());
            }
            if let Some(addr) = known.get(shard) {
                return format!("{shard} ({addr})");
            }
        }
        shard.to_string()
    }

    /// The answer of a shard that did not answer a query in time.
    pub fn unanswered(&self, shard: &str) -> String {
        format!("shard {} did not answer within {} ms", self.describe(shard), self.idle_limit().as_millis())
    }

    /// The error of a shard that stayed silent.
    pub fn silent_error(&self, shard: &str, exec: &str) -> String {
        format!("shard {} did not answer for {} ms (rg.execution-max-idle-time): execution {exec} failed", self.describe(shard), self.idle_limit().as_millis())
    }

    /// The error of an execution whose cluster changed under it: names the primaries that
    /// left (failed over, removed) when some did.
    pub fn topology_error(&self, part: &Part) -> String {
        let now: HashSet<String> = self.topology().map(|t| t.shards.iter().map(|s| s.id.clone()).collect()).unwrap_or_default();
        let gone: Vec<String> = part.participants.iter().filter(|p| !now.contains(*p)).map(|p| self.describe(p)).collect();
        if gone.is_empty() {
            format!("the cluster topology changed while execution {} ran (a shard joined, or slots moved): run it again", part.exec)
        } else {
            format!("shard {} left the cluster or failed over while execution {} ran: run it again", gone.join(", "), part.exec)
        }
    }

    fn start_threads(&self) {
        self.threads.call_once(|| {
            let me = self.me.clone();
            let _ = std::thread::Builder::new().name("rg-cluster-send".into()).spawn(move || postman(me));
            let me = self.me.clone();
            let _ = std::thread::Builder::new().name("rg-cluster-tick".into()).spawn(move || loop {
                std::thread::sleep(TICK);
                match me.upgrade() {
                    Some(c) => {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.tick()));
                    }
                    None => return,
                }
            });
        });
    }

    /// Queues `m` for shard `to`. `wait`: block while too much is queued (runners do; the
    /// main thread never does).
    pub(crate) fn send(&self, to: &str, m: &Message, wait: bool) {
        let bytes = match message::encode(m) {
            Ok(b) => b,
            Err(e) => {
                self.host.log(LogLevel::Warning, &format!("rg: a cluster message could not be encoded: {e}"));
                return;
            }
        };
        self.send_bytes(to, bytes, wait);
    }

    pub(crate) fn send_bytes(&self, to: &str, bytes: Vec<u8>, wait: bool) {
        self.start_threads();
        let mut bag = self.mail.lock();
        while wait && bag.bytes > MAILBAG_BYTES && !bag.closed {
            self.mail_room.wait_for(&mut bag, Duration::from_millis(100));
        }
        bag.bytes += bytes.len();
        bag.queue.push_back((to.to_string(), bytes));
        drop(bag);
        self.mail_ready.notify_one();
    }

    /// Sends `m` about `part` to `to`: applied at once when `to` is this shard.
    pub(crate) fn post(&self, part: &Part, to: &str, m: Message, wait: bool) {
        if to == part.me {
            let mut pending = vec![m];
            while let Some(m) = pending.pop() {
                pending.extend(part.receive(&part.me, m));
            }
        } else {
            self.send(to, &m, wait);
        }
    }

    /// Registers a part this shard takes in an execution and applies the messages that
    /// came before it.
    /// Starts the coordinator's threads (the module calls it at load on a cluster node, so
    /// that digests flow before any execution).
    pub fn start(&self) {
        self.start_threads();
    }

    pub fn add_part(&self, part: Arc<Part>) {
        part.state.lock().running = true;
        self.parts.lock().insert(part.exec.clone(), part.clone());
        let early = self.early.lock().remove(&part.exec);
        for (from, m) in early.map(|(_, v)| v).unwrap_or_default() {
            for r in part.receive(&from, m) {
                self.send(&from, &r, false);
            }
        }
        self.start_threads();
    }

    pub fn part(&self, exec: &str) -> Option<Arc<Part>> {
        self.parts.lock().get(exec).cloned()
    }

    /// Has this shard had (and finished) a part of `exec`?
    pub fn has_ended(&self, exec: &str) -> bool {
        self.ended.lock().1.contains(exec)
    }

    /// The part's runner is done; the part stays until what it sent is confirmed. The
    /// others hear that its silence is normal from now on.
    pub fn part_done(&self, part: &Part) {
        {
            let mut st = part.state.lock();
            st.running = false;
            st.finished_at = Some(Instant::now());
        }
        for p in part.participants.iter().filter(|p| **p != part.me) {
            self.send(p, &Message::Finished { exec: part.exec.clone() }, false);
        }
    }

    /// Tells every other participant that the part failed.
    pub fn broadcast_failure(&self, part: &Part, error: &str) {
        for p in part.participants.iter().filter(|p| **p != part.me) {
            self.send(p, &Message::Failed { exec: part.exec.clone(), error: error.to_string() }, false);
        }
    }

    /// Sends `m` to every primary but this one.
    fn to_others(&self, m: &Message) {
        if let Some(t) = self.topology() {
            for s in t.shards.iter().filter(|s| s.id != t.me) {
                self.send(&s.id, m, false);
            }
        }
    }

    /// RG.ABORTEXECUTION on every shard.
    pub fn broadcast_abort(&self, exec: &str) {
        if let Some(p) = self.part(exec) {
            p.fail("execution aborted".into());
        }
        self.to_others(&Message::Abort { exec: exec.to_string() });
    }

    /// RG.DROPEXECUTION on every shard.
    pub fn broadcast_drop(&self, exec: &str) {
        self.to_others(&Message::Drop { exec: exec.to_string() });
    }

    /// A message about an execution (not `Start`, `Query`, `Reply`, `Drop`).
    pub(crate) fn route(&self, from: &str, exec: &str, m: Message) {
        if let Some(part) = self.part(exec) {
            for r in part.receive(from, m) {
                self.send(from, &r, false);
            }
            return;
        }
        if self.has_ended(exec) {
            // The part is gone: a sender that re-sends its End still needs a Got.
            if let Message::End { boundary, .. } = m {
                self.send(from, &Message::Got { exec: exec.to_string(), boundary }, false);
            }
            return;
        }
        let mut early = self.early.lock();
        // Bounded: a flood of messages for executions that never start is dropped.
        if early.len() >= 4096 && !early.contains_key(exec) {
            return;
        }
        let held = &mut early.entry(exec.to_string()).or_insert_with(|| (Instant::now(), Vec::new())).1;
        if held.len() < MAX_EARLY {
            held.push((from.to_string(), m));
        }
    }

    /// Asks every primary `query`; `done` gets all answers (this shard's first).
    pub fn query_all(&self, query: Query, done: QueryDone) {
        let local = self.answer_here(&query);
        let Some(t) = self.topology() else {
            return done(vec![(self.host.shard_id(), local)]);
        };
        let others: Vec<String> = t.shards.iter().filter(|s| s.id != t.me).map(|s| s.id.clone()).collect();
        self.query_with(&others, vec![(t.me.clone(), local)], query, done);
    }

    /// Asks the shards `to` (not this one); `done` gets their answers (a shard silent for
    /// the idle limit answers with an error).
    pub fn query(&self, to: &[String], query: Query, done: QueryDone) {
        self.query_with(to, Vec::new(), query, done);
    }

    fn query_with(&self, to: &[String], answers: Vec<(String, Result<Value, String>)>, query: Query, done: QueryDone) {
        if to.is_empty() {
            return done(answers);
        }
        let id = self.next_query.fetch_add(1, Ordering::Relaxed);
        let waiting: HashSet<String> = to.iter().cloned().collect();
        self.queries.lock().insert(id, PendingQuery { waiting, answers, deadline: Instant::now() + self.idle_limit(), done: Some(done) });
        for o in to {
            self.send(o, &Message::Query { id, query: query.clone() }, false);
        }
    }

    pub(crate) fn begin_fetch(&self, from: &str) -> bool {
        self.fetching.lock().insert(from.to_string())
    }

    pub(crate) fn end_fetch(&self, from: &str) {
        self.fetching.lock().remove(from);
    }

    /// This shard's answer to `query`.
    pub fn answer_here(&self, query: &Query) -> Result<Value, String> {
        match &*self.handler.read() {
            Some(h) => h(query),
            None => Err("this shard cannot answer cluster queries".into()),
        }
    }

    pub(crate) fn answer(&self, from: &str, id: u64, answer: Result<Value, String>) {
        let finished = {
            let mut q = self.queries.lock();
            let Some(p) = q.get_mut(&id) else { return };
            if !p.waiting.remove(from) {
                return;
            }
            p.answers.push((from.to_string(), answer));
            if p.waiting.is_empty() {
                q.remove(&id)
            } else {
                None
            }
        };
        if let Some(mut p) = finished {
            if let Some(done) = p.done.take() {
                done(std::mem::take(&mut p.answers));
            }
        }
    }

    /// Answers a query from `from` (main thread).
    pub(crate) fn reply(&self, from: &str, id: u64, query: &Query) {
        let answer = self.answer_here(query);
        self.send(from, &Message::Reply { id, answer }, false);
    }

    /// Periodic work: say parts are alive, re-send what was not confirmed, fail parts whose
    /// peers went silent or whose cluster changed, forget what is over.
    fn tick(&self) {
        let now = Instant::now();
        // Remember the addresses of the primaries seen now.
        let _ = self.describe("");
        let n = self.ticks.fetch_add(1, Ordering::Relaxed);
        if n % DIGEST_EVERY == 0 {
            if let Some(d) = self.digest.get() {
                d();
            }
        }
        let idle = self.idle_limit();
        let fingerprint = self.topology().map(|t| t.fingerprint());
        let parts: Vec<Arc<Part>> = self.parts.lock().values().cloned().collect();
        let mut gone = Vec::new();
        for part in parts {
            let (running, finished_at, outbound_empty) = {
                let st = part.state.lock();
                (st.running, st.finished_at, st.outbound.is_empty())
            };
            if running {
                if part.failure().is_none() {
                    if let Some(shard) = part.silent_shard(idle) {
                        let e = self.silent_error(&shard, &part.exec);
                        part.fail(e.clone());
                        self.broadcast_failure(&part, &e);
                    } else if fingerprint.is_some_and(|f| f != part.topology) {
                        let e = self.topology_error(&part);
                        part.fail(e.clone());
                        self.broadcast_failure(&part, &e);
                    }
                }
                self.keep_alive(&part, now);
            } else if outbound_empty || finished_at.is_some_and(|t| now.duration_since(t) > idle * 2) {
                gone.push(part.exec.clone());
            } else {
                self.resend(&part, now);
            }
        }
        if !gone.is_empty() {
            let mut parts = self.parts.lock();
            let mut ended = self.ended.lock();
            for g in gone {
                parts.remove(&g);
                if ended.1.insert(g.clone()) {
                    ended.0.push_back(g);
                }
                while ended.0.len() > 10_000 {
                    if let Some(old) = ended.0.pop_front() {
                        ended.1.remove(&old);
                    }
                }
            }
        }
        self.early.lock().retain(|_, (t, _)| now.duration_since(*t) < idle * 2);
        let expired: Vec<PendingQuery> = {
            let mut q = self.queries.lock();
            let ids: Vec<u64> = q.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| q.remove(&id)).collect()
        };
        for mut p in expired {
            for s in std::mem::take(&mut p.waiting) {
                let e = self.unanswered(&s);
                p.answers.push((s, Err(e)));
            }
            if let Some(done) = p.done.take() {
                done(p.answers);
            }
        }
    }

    /// While a part runs: `Alive` to the others (so that they know it works), `Start`
    /// again to those that did not confirm it, `End`s again that were not confirmed.
    fn keep_alive(&self, part: &Part, now: Instant) {
        let (alive_due, start) = {
            let st = part.state.lock();
            let due = st.last_alive.is_none_or(|t| now.duration_since(t) >= self.alive_every());
            let start = st.start_message.clone().filter(|_| !st.unstarted.is_empty()).map(|m| (m, st.unstarted.iter().cloned().collect::<Vec<_>>()));
            (due, start)
        };
        if alive_due {
            part.state.lock().last_alive = Some(now);
            for p in part.participants.iter().filter(|p| **p != part.me) {
                self.send(p, &Message::Alive { exec: part.exec.clone() }, false);
            }
            if let Some((m, to)) = start {
                for t in to {
                    self.send_bytes(&t, m.clone(), false);
                }
            }
        }
        self.resend(part, now);
    }

    fn alive_every(&self) -> Duration {
        (self.idle_limit() / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    fn resend(&self, part: &Part, now: Instant) {
        let due: Vec<(String, Vec<u8>)> = {
            let mut st = part.state.lock();
            st.outbound
                .iter_mut()
                .filter(|(_, o)| o.end.is_some() && now.duration_since(o.last_sent) >= RESEND)
                .map(|((to, _), o)| {
                    o.last_sent = now;
                    (to.clone(), o.end.clone().unwrap_or_default())
                })
                .collect()
        };
        for (to, m) in due {
            self.send_bytes(&to, m, false);
        }
    }

    /// Stops the sending thread (module unload).
    pub fn shutdown(&self) {
        self.mail.lock().closed = true;
        self.mail_ready.notify_all();
        self.mail_room.notify_all();
    }

    /// The parts here and where each stands (for tests that need to say why a run hangs).
    #[doc(hidden)]
    pub fn debug_parts(&self) -> String {
        let mut out = String::new();
        for p in self.parts.lock().values() {
            let st = p.state.lock();
            let inbound: Vec<String> = st
                .inbound
                .iter()
                .map(|(b, i)| format!("b{b}: queue {} seen {:?} ends {:?}", i.queue.len(), i.seen.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>(), i.ends))
                .collect();
            let outbound: Vec<String> = st.outbound.iter().map(|((to, b), o)| format!("to {to} b{b}: {} batches, end {}", o.batches.len(), o.end.is_some())).collect();
            out.push_str(&format!(
                "{} (initiator {}): running {} failure {:?} unstarted {:?} finished {:?} inbound [{}] outbound [{}]\n",
                p.exec,
                p.initiator,
                st.running,
                st.failure,
                st.unstarted,
                st.finished,
                inbound.join("; "),
                outbound.join("; ")
            ));
        }
        out.push_str(&format!("early: {:?}\n", self.early.lock().iter().map(|(k, (_, v))| (k.clone(), v.len())).collect::<Vec<_>>()));
        out
    }

    /// Executions with a part on this shard right now, and messages held for parts not
    /// started yet (INFO).
    pub fn counts(&self) -> (usize, usize) {
        (self.parts.lock().len(), self.early.lock().len())
    }
}

/// The sending thread: takes the data lock once per bundle of messages and sends them.
fn postman(me: Weak<Coordinator>) {
    loop {
        let Some(c) = me.upgrade() else { return };
        let bundle: Vec<(String, Vec<u8>)> = {
            let mut bag = c.mail.lock();
            while bag.queue.is_empty() && !bag.closed {
                c.mail_ready.wait_for(&mut bag, Duration::from_millis(200));
                if bag.queue.is_empty() && Arc::strong_count(&c) == 1 {
                    return;
                }
            }
            if bag.closed {
                return;
            }
            let mut out = Vec::new();
            let mut bytes = 0;
            while let Some(m) = bag.queue.pop_front() {
                bytes += m.1.len();
                out.push(m);
                if bytes > 1 << 20 || out.len() >= 64 {
                    break;
                }
            }
            bag.bytes -= bytes;
            out
        };
        c.mail_room.notify_all();
        let failed: Vec<(String, String)> = {
            let locked = c.host.lock(0);
            bundle.iter().filter_map(|(to, m)| locked.send(to, m).err().map(|e| (to.clone(), e.to_string()))).collect()
        };
        for (to, e) in failed {
            c.host.log(LogLevel::Verbose, &format!("rg: a message to shard {to} was not sent: {e}"));
        }
    }
}
