//! Every interpreter instance the engine keeps (a worker's instance of a language, a
//! thread's instance of a session, a syntax checker, a session being rebuilt), accounted in
//! one `Ledger`: its memory, when it was last used, and whether it is running. The ledger
//! enforces the total cap `rg.interpreters-memory-limit`: instances idle longest are asked
//! to go first, and a new instance is refused while running ones alone are over the cap.
//!
//! Instances are not `Send`: the ledger never holds one. It holds an entry per instance and
//! flags the entries that must go; the thread that owns an instance drops it when it next
//! purges (workers are told to at once, the Redis main thread does on its cron tick).

use crate::{ScriptError, ScriptErrorKind};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The setting that caps the memory of all instances together.
pub const CAP_SETTING: &str = "interpreters-memory-limit";

struct Entry {
    language: &'static str,
    bytes: usize,
    last_used: Instant,
    busy: bool,
    /// Asked to go: its thread drops it when it next purges.
    evict: bool,
}

#[derive(Default)]
struct State {
    next: u64,
    entries: HashMap<u64, Entry>,
}

/// The accounts of all instances.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
    /// Bumped whenever an entry is flagged to go (threads compare it to what they saw).
    evictions: AtomicU64,
}

/// What the ledger holds about the instances at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub instances: usize,
    pub bytes: usize,
}

/// One instance's entry in the ledger; dropping it (with the instance) removes the entry.
pub struct Ticket {
    ledger: Arc<Ledger>,
    id: u64,
}

impl Ticket {
    /// The instance starts running script code: it cannot be evicted meanwhile.
    pub fn start_use(&self) {
        if let Some(e) = self.ledger.state.lock().entries.get_mut(&self.id) {
            e.busy = true;
            e.last_used = Instant::now();
        }
    }

    /// The instance is idle again and holds `bytes`.
    pub fn end_use(&self, bytes: usize) {
        if let Some(e) = self.ledger.state.lock().entries.get_mut(&self.id) {
            e.busy = false;
            e.bytes = bytes;
            e.last_used = Instant::now();
        }
    }

    /// Has the ledger asked this instance to go?
    pub fn must_go(&self) -> bool {
        self.ledger.state.lock().entries.get(&self.id).is_none_or(|e| e.evict)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.ledger.state.lock().entries.remove(&self.id);
    }
}

impl Ledger {
    /// Admits a new instance of `language` (described by `what` in errors) under `cap`
    /// bytes in total (0: no cap). Idle instances are asked to go, least recently used
    /// first, until the others fit under the cap; if the running ones alone do not, the new
    /// one is refused.
    pub fn admit(self: &Arc<Self>, language: &'static str, what: &str, cap: usize) -> Result<Ticket, ScriptError> {
        let mut st = self.state.lock();
        if cap > 0 && self.evict_locked(&mut st, cap, true) {
            let live = live_bytes(&st);
            return Err(ScriptError::new(
                ScriptErrorKind::Memory,
                format!(
                    "interpreters memory limit reached: running interpreters use {live} bytes, rg.{CAP_SETTING} is {cap} bytes; no new interpreter for {what} (raise rg.{CAP_SETTING}, or drop sessions you no longer need with RG.DROPSESSION)"
                ),
            ));
        }
        st.next += 1;
        let id = st.next;
        st.entries.insert(id, Entry { language, bytes: 0, last_used: Instant::now(), busy: true, evict: false });
        Ok(Ticket { ledger: self.clone(), id })
    }

    /// After a call: while the instances are over `cap`, asks idle ones to go, least
    /// recently used first. True if any was asked (their threads must purge).
    pub fn enforce(&self, cap: usize) -> bool {
        if cap == 0 {
            return false;
        }
        let before = self.evictions.load(Ordering::Relaxed);
        let mut st = self.state.lock();
        self.evict_locked(&mut st, cap, false);
        self.evictions.load(Ordering::Relaxed) != before
    }

    /// Flags idle entries, oldest use first, until the rest is under `cap` (strictly under
    /// when `room` is asked for, to make room for a new one). Returns true if still over.
    fn evict_locked(&self, st: &mut State, cap: usize, room: bool) -> bool {
        let over = |live: usize| if room { live >= cap } else { live > cap };
        let mut live = live_bytes(st);
        if !over(live) {
            return false;
        }
        let mut idle: Vec<(Instant, u64)> = st.entries.iter().filter(|(_, e)| !e.busy && !e.evict).map(|(id, e)| (e.last_used, *id)).collect();
        idle.sort();
        for (_, id) in idle {
            if !over(live) {
                break;
            }
            let e = st.entries.get_mut(&id).expect("entry listed above");
            e.evict = true;
            live -= e.bytes;
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        over(live)
    }

    /// How many times instances were asked to go so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// All instances, or those of one language.
    pub fn usage(&self, language: Option<&str>) -> Usage {
        let st = self.state.lock();
        let mut u = Usage::default();
        for e in st.entries.values().filter(|e| language.is_none_or(|l| l == e.language)) {
            u.instances += 1;
            u.bytes += e.bytes;
        }
        u
    }
}

fn live_bytes(st: &State) -> usize {
    st.entries.values().filter(|e| !e.evict).map(|e| e.bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(l: &Arc<Ledger>, bytes: usize) -> Ticket {
        let t = l.admit("lua", "a test", 0).unwrap();
        t.end_use(bytes);
        t
    }

    #[test]
    fn idle_instances_go_least_recently_used_first() {
        let l = Arc::new(Ledger::default());
        let (a, b, c) = (used(&l, 40), used(&l, 40), used(&l, 40));
        b.start_use();
        b.end_use(40);
        assert_eq!(l.usage(None), Usage { instances: 3, bytes: 120 });
        assert!(l.enforce(100));
        // `a` was idle longest; `c` is next, `b` was used last.
        assert!(a.must_go() && !c.must_go() && !b.must_go());
        assert!(!l.enforce(100));
        drop(a);
        assert_eq!(l.usage(Some("lua")).bytes, 80);
        assert_eq!(l.usage(Some("js")), Usage::default());
    }

    #[test]
    fn a_new_instance_is_refused_while_running_ones_fill_the_cap() {
        let l = Arc::new(Ledger::default());
        let running = used(&l, 100);
        running.start_use();
        let e = l.admit("js", "session 's'", 100).err().expect("refused");
        assert_eq!(e.kind, ScriptErrorKind::Memory);
        assert!(e.message.contains("rg.interpreters-memory-limit is 100 bytes") && e.message.contains("session 's'"), "{}", e.message);
        // Once it is idle, it makes room instead.
        running.end_use(100);
        let t = l.admit("js", "session 's'", 100).expect("admitted");
        assert!(running.must_go() && !t.must_go());
        // No cap: nothing is refused or evicted.
        assert!(!l.enforce(0));
        assert!(l.admit("lua", "x", 0).is_ok());
    }
}
