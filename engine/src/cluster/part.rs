//! One shard's part in a cluster execution: what it received at each boundary, what it
//! sent and not yet had confirmed, whom it heard from and when, and why it failed.
//! The coordinator (main thread) fills it from messages; the part's runner (a worker)
//! drains it.

use super::message::Message;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

pub struct Part {
    pub exec: String,
    pub initiator: String,
    /// The primaries taking part, sorted.
    pub participants: Vec<String>,
    pub me: String,
    /// `Topology::fingerprint` when the execution started.
    pub topology: u64,
    pub(crate) state: Mutex<PartState>,
    pub(crate) wake: Condvar,
}

#[derive(Default)]
pub(crate) struct Inbound {
    /// Encoded record batches not yet taken by the runner.
    pub queue: VecDeque<Vec<u8>>,
    /// Batch numbers received, per sender (a batch sent twice is taken once).
    pub seen: HashMap<String, HashSet<u32>>,
    /// Senders done with this boundary, and how many batches each sent.
    pub ends: HashMap<String, u32>,
    pub errors: Vec<String>,
}

pub(crate) struct Outbound {
    /// Every batch sent, kept until the receiver confirms it has them all.
    pub batches: Vec<Vec<u8>>,
    /// The `End` message, once the boundary is done.
    pub end: Option<Vec<u8>>,
    pub last_sent: Instant,
}

pub(crate) struct PartState {
    pub inbound: HashMap<u32, Inbound>,
    pub outbound: HashMap<(String, u32), Outbound>,
    pub heard: HashMap<String, Instant>,
    /// Participants that have not confirmed `Start` (initiator only), with the message.
    pub unstarted: HashSet<String>,
    pub start_message: Option<Vec<u8>>,
    pub failure: Option<String>,
    /// The runner is done (or never came: a part made by early messages).
    pub running: bool,
    pub finished_at: Option<Instant>,
    /// When this part last told the others it is alive.
    pub last_alive: Option<Instant>,
    /// Participants whose parts are over.
    pub finished: HashSet<String>,
    /// Boundaries whose records were all taken: messages sent again about them are not
    /// kept (an `End` is confirmed again).
    pub closed: HashSet<u32>,
}

impl Part {
    pub fn new(exec: String, initiator: String, participants: Vec<String>, me: String, topology: u64) -> Part {
        let now = Instant::now();
        let heard = participants.iter().map(|p| (p.clone(), now)).collect();
        Part {
            exec,
            initiator,
            participants,
            me,
            topology,
            state: Mutex::new(PartState {
                inbound: HashMap::new(),
                outbound: HashMap::new(),
                heard,
                unstarted: HashSet::new(),
                start_message: None,
                failure: None,
                running: false,
                finished_at: None,
                last_alive: None,
                finished: HashSet::new(),
                closed: HashSet::new(),
            }),
            wake: Condvar::new(),
        }
    }

    /// Records that the part failed (the first reason wins) and wakes its runner.
    pub fn fail(&self, why: String) {
        let mut st = self.state.lock();
        if st.failure.is_none() {
            st.failure = Some(why);
        }
        drop(st);
        self.wake.notify_all();
    }

    pub fn failure(&self) -> Option<String> {
        self.state.lock().failure.clone()
    }

    /// Applies a message from `from` about this part; returns the messages to send back
    /// (to `from`).
    pub(crate) fn receive(&self, from: &str, m: Message) -> Vec<Message> {
        let mut st = self.state.lock();
        st.heard.insert(from.to_string(), Instant::now());
        let mut reply = Vec::new();
        match m {
            Message::Records { boundary, .. } if st.closed.contains(&boundary) => {}
            Message::End { boundary, .. } if st.closed.contains(&boundary) => {
                reply.push(Message::Got { exec: self.exec.clone(), boundary });
            }
            Message::Records { boundary, seq, records, .. } => {
                let inb = st.inbound.entry(boundary).or_default();
                if inb.seen.entry(from.to_string()).or_default().insert(seq) {
                    inb.queue.push_back(records);
                }
            }
            Message::End { boundary, batches, errors, .. } => {
                let inb = st.inbound.entry(boundary).or_default();
                if inb.ends.insert(from.to_string(), batches).is_none() {
                    inb.errors.extend(errors);
                }
                let seen = inb.seen.get(from);
                let missing: Vec<u32> = (0..batches).filter(|q| !seen.is_some_and(|s| s.contains(q))).collect();
                // Messages on one link arrive in order: batches missing when their End
                // arrives were lost with a broken link.
                if missing.is_empty() {
                    reply.push(Message::Got { exec: self.exec.clone(), boundary });
                } else {
                    reply.push(Message::Missing { exec: self.exec.clone(), boundary, seqs: missing });
                }
            }
            Message::Got { boundary, .. } => {
                st.outbound.remove(&(from.to_string(), boundary));
            }
            Message::Missing { boundary, seqs, .. } => {
                if let Some(out) = st.outbound.get_mut(&(from.to_string(), boundary)) {
                    out.last_sent = Instant::now();
                    for q in seqs {
                        if let Some(b) = out.batches.get(q as usize) {
                            reply.push(Message::Records { exec: self.exec.clone(), boundary, seq: q, records: b.clone() });
                        }
                    }
                    if let Some(end) = &out.end {
                        if let Ok(m) = super::message::decode(end) {
                            reply.push(m);
                        }
                    }
                }
            }
            Message::Started { .. } => {
                st.unstarted.remove(from);
            }
            Message::Finished { .. } => {
                st.finished.insert(from.to_string());
            }
            Message::Failed { error, .. } => {
                if st.failure.is_none() {
                    st.failure = Some(error);
                }
            }
            Message::Abort { .. } => {
                if st.failure.is_none() {
                    st.failure = Some("execution aborted".into());
                }
            }
            _ => {}
        }
        drop(st);
        self.wake.notify_all();
        reply
    }

    /// Is boundary `b` complete: every one of `senders` ended it and every batch is here?
    pub(crate) fn complete(inb: &Inbound, senders: &[String]) -> bool {
        senders.iter().all(|s| inb.ends.get(s).is_some_and(|&n| inb.seen.get(s).map_or(0, |x| x.len() as u32) >= n))
    }

    /// Has a participant whose part is not over been silent for longer than `idle`
    /// (running parts say they are alive every fraction of it)? Returns that shard.
    pub(crate) fn silent_shard(&self, idle: Duration) -> Option<String> {
        let st = self.state.lock();
        let now = Instant::now();
        self.participants
            .iter()
            .filter(|s| **s != self.me && !st.finished.contains(*s))
            .find(|s| st.heard.get(*s).is_none_or(|t| now.duration_since(*t) > idle))
            .cloned()
    }
}
