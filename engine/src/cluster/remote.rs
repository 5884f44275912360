//! The engine's side of the cluster: messages that come in (on the Redis main thread),
//! and parts of executions started on another shard, each run on its own thread in a
//! fresh instance of the script rebuilt in plan-building mode.

use super::message::{self, Message, Start};
use super::{ClusterRun, Part};
use crate::execution::Outcome;
use crate::runtime::InstanceCalls;
use crate::{Engine, LogLevel, Natives, RunContext, RunEnv, RunOutput, ScriptError, ScriptErrorKind};
use std::sync::Arc;

/// Cluster parts running on this shard at most (each holds a thread and an interpreter).
const MAX_PARTS: usize = 64;

impl Engine {
    /// A coordinator message from shard `from` (called on the Redis main thread; never
    /// blocks). Malformed messages are logged and dropped.
    pub fn cluster_deliver(self: &Arc<Self>, from: &str, payload: &[u8]) {
        let m = match message::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.host.log(LogLevel::Warning, &format!("rg: dropped a malformed cluster message from {from}: {e}"));
                return;
            }
        };
        match m {
            Message::Start(start) => self.start_part(from, start),
            Message::Query { id, query } => {
                if let super::Query::Custom { name, args } = &query {
                    if self.answer_own_query(from, id, name, args.clone()) {
                        return;
                    }
                }
                self.cluster.reply(from, id, &query)
            }
            Message::Reply { id, answer } => self.cluster.answer(from, id, answer),
            Message::Drop { exec } => {
                let _ = self.registry.drop_execution(&exec);
            }
            Message::Abort { exec } => {
                if let Ok(e) = self.registry.get(&exec) {
                    e.request_abort();
                }
                self.cluster.route(from, &exec.clone(), Message::Abort { exec });
            }
            m => {
                let exec = match &m {
                    Message::Started { exec }
                    | Message::Records { exec, .. }
                    | Message::End { exec, .. }
                    | Message::Got { exec, .. }
                    | Message::Missing { exec, .. }
                    | Message::Alive { exec }
                    | Message::Finished { exec }
                    | Message::Failed { exec, .. } => exec.clone(),
                    _ => return,
                };
                self.cluster.route(from, &exec, m);
            }
        }
    }

    /// `Start` from the initiator: creates this shard's part and runs it on its own thread.
    fn start_part(self: &Arc<Self>, from: &str, start: Start) {
        let coord = self.cluster.clone();
        let exec_id = start.exec.clone();
        if coord.part(&exec_id).is_some() || coord.has_ended(&exec_id) {
            // A Start sent again: the first one is being (or was) served.
            coord.route(from, &exec_id, Message::Started { exec: exec_id.clone() });
            return self.cluster.send(from, &Message::Started { exec: exec_id }, false);
        }
        let me = self.host.shard_id();
        let refuse = |error: String| {
            coord.send(from, &Message::Failed { exec: exec_id.clone(), error }, false);
        };
        if from != start.initiator {
            return refuse(format!("shard {me}: a Start from {from} names another initiator"));
        }
        if !start.participants.contains(&me) {
            return refuse(format!("shard {me} is not one of the execution's shards (it failed over or joined since): run it again"));
        }
        if coord.counts().0 >= MAX_PARTS {
            return refuse(format!("shard {me} runs {MAX_PARTS} cluster executions already: try again later"));
        }
        let lang = match self.language(&start.language) {
            Ok(l) => l,
            Err(e) => return refuse(format!("shard {me}: {e}")),
        };
        let who = crate::Registrant { user: start.user.as_deref(), admin: false };
        let exec = match self.registry.create(Some(exec_id.clone()), lang.name(), start.description.clone(), who) {
            Ok(e) => e,
            Err(e) => return refuse(format!("shard {me}: {e}")),
        };
        let part = Arc::new(Part::new(exec_id.clone(), start.initiator.clone(), start.participants.clone(), me.clone(), start.topology));
        coord.add_part(part.clone());
        coord.send(from, &Message::Started { exec: exec_id.clone() }, false);
        let engine = self.clone();
        let spawned = std::thread::Builder::new().name("rg-cluster-part".into()).stack_size(8 << 20).spawn(move || {
            exec.mark_running();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run_remote_part(lang, &start, &part, &exec)))
                .unwrap_or_else(|_| Err(ScriptError::runtime("internal error: a cluster part panicked")));
            let me = &part.me;
            let (outcome, aborted) = match r {
                Ok(out) => (Outcome::Records { results: out.results, errors: out.errors }, false),
                Err(e) => {
                    let msg = if e.message.starts_with("shard ") || e.message.starts_with("the cluster topology") || e.message == "execution aborted" { e.message.clone() } else { format!("shard {me}: {}", e.message) };
                    if part.failure().is_none() {
                        part.fail(msg.clone());
                        engine.cluster.broadcast_failure(&part, &msg);
                    }
                    (Outcome::Failed(msg), e.kind == ScriptErrorKind::Aborted)
                }
            };
            engine.cluster.part_done(&part);
            engine.registry.finish(&exec, outcome, aborted);
        });
        if spawned.is_err() {
            self.cluster.part_done(&Part::new(exec_id.clone(), String::new(), Vec::new(), String::new(), 0));
            refuse(format!("shard {}: no thread for the execution", self.host.shard_id()));
        }
    }

    /// Runs the script again in plan-building mode to get its plan, checks it is the one
    /// the initiator built over the same cluster, then runs this shard's part of it.
    fn run_remote_part(&self, lang: Arc<dyn crate::Language>, start: &Start, part: &Part, exec: &Arc<crate::Execution>) -> Result<RunOutput, ScriptError> {
        let me = part.me.clone();
        if let Some(user) = start.user.as_deref() {
            let locked = self.host.lock(start.db);
            match locked.permitted(user, &[b"EVAL", b"return 1", b"0"]) {
                Ok(()) => {}
                Err(crate::HostError::NoPermission(_)) => {
                    return Err(ScriptError::runtime(format!("shard {me}: NOPERM user '{user}' may not run scripts on this shard (it needs the permission to run EVAL)")))
                }
                // No such user here (ACL users are per node).
                Err(e) => return Err(ScriptError::runtime(format!("shard {me}: user '{user}' cannot run here: {e}"))),
            }
        }
        let ticket = self.ledger.admit(lang.name(), &format!("cluster execution '{}'", start.exec), self.memory_cap())?;
        let mut instance = lang.new_instance(self.config.limits(lang.name()))?;
        instance.clock().set_abort_flag(exec.abort.clone());
        let env = RunEnv {
            host: self.host.clone(),
            packages: crate::packages::PackageSource::Current(self.packages.clone()),
            config: self.config.clone(),
            execution: exec.clone(),
            user: start.user.clone(),
            db: start.db,
            hook: None,
            caller: None,
            cluster: None,
        };
        let natives = self.api.begin_rebuild(env);
        ticket.start_use();
        let built = instance.run(&start.source, &start.args, &*natives as &dyn Natives);
        let r = (|| {
            built?;
            let plan = natives.take_plan().ok_or_else(|| ScriptError::usage("the script did not call run() here: a script must run the same way on every shard"))?;
            if super::plan_fingerprint(&plan) != start.plan {
                return Err(ScriptError::usage("the script built another plan here than on the initiator: a script must run the same way on every shard"));
            }
            if self.host.topology().map(|t| t.fingerprint()) != Some(start.topology) {
                return Err(ScriptError::runtime(self.cluster.topology_error(part)));
            }
            exec.set_plan_info(plan.reader.name(), Vec::new());
            let calls = InstanceCalls { inst: std::cell::RefCell::new(&mut instance), natives: &*natives as &dyn Natives };
            let batch = self.config.get_i64("keys-batch-size").max(1) as usize;
            let cx = RunContext { host: &*self.host, calls: &calls, abort: &exec.abort, batch_size: batch, db: start.db, user: start.user.as_deref() };
            let out = super::run_part(&plan, &cx, part, &self.cluster)?;
            exec.set_plan_info(plan.reader.name(), out.step_stats.clone());
            exec.set_records(out.records_in, out.records_out);
            Ok(out)
        })();
        instance.end_run();
        ticket.end_use(instance.memory_used());
        drop(instance);
        drop(ticket);
        r
    }
}

/// Runs `plan` on every primary when the script was sent with RG.EXEC to a cluster node
/// and `local` is false; None when it must run on this shard alone (not a cluster, a
/// single primary, `mode = 'async_local'`, or not an RG.EXEC run).
pub fn run_everywhere(plan: &crate::Plan, cx: &RunContext, env: &RunEnv, local: bool) -> Option<Result<RunOutput, ScriptError>> {
    let cluster: &ClusterRun = env.cluster.as_ref()?;
    if local {
        return None;
    }
    let coord = &cluster.coordinator;
    let topology = coord.topology()?;
    if topology.shards.len() < 2 && topology.is_primary() {
        return None;
    }
    Some((|| {
        if !topology.is_primary() {
            return Err(ScriptError::usage("run: this node is not a primary that serves slots; send RG.EXEC to a primary, or run with {mode = 'async_local'}"));
        }
        let exec = &env.execution;
        let participants: Vec<String> = topology.shards.iter().map(|s| s.id.clone()).collect();
        let me = topology.me.clone();
        let part = Arc::new(Part::new(exec.id.clone(), me.clone(), participants.clone(), me.clone(), topology.fingerprint()));
        let start = Start {
            exec: exec.id.clone(),
            initiator: me.clone(),
            language: cluster.language.clone(),
            source: cluster.source.clone(),
            args: cluster.args.clone(),
            user: env.user.clone(),
            db: env.db,
            description: cluster.description.clone(),
            participants: participants.clone(),
            topology: topology.fingerprint(),
            plan: super::plan_fingerprint(plan),
        };
        let bytes = message::encode(&Message::Start(start)).map_err(|e| ScriptError::runtime(e.to_string()))?;
        {
            let mut st = part.state.lock();
            st.unstarted = participants.iter().filter(|p| **p != me).cloned().collect();
            st.start_message = Some(bytes.clone());
        }
        coord.add_part(part.clone());
        for p in participants.iter().filter(|p| **p != me) {
            coord.send_bytes(p, bytes.clone(), false);
        }
        let r = super::run_part(plan, cx, &part, coord);
        if let Err(e) = &r {
            if part.failure().is_none() {
                part.fail(e.message.clone());
                coord.broadcast_failure(&part, &e.message);
            }
        }
        coord.part_done(&part);
        r
    })())
}
