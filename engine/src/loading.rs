//! Sessions coming from RDB, the AOF or the primary: rebuilt (their script run again in
//! plan-building mode) within bounded time, and never lost. A session that cannot be
//! rebuilt now is kept unbuilt with its definition and its error: it is saved and replicated
//! as loaded, listed by RG.DUMPSESSIONS, fires nothing, and is retried on a worker.

use crate::{Engine, Host, LogLevel, NoDataHost, Replace, Session, SessionDef};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time limit of one rebuild when `rg.script-timeout` is 0 (no limit for scripts): a
/// rebuild on the loading thread must end.
pub const REBUILD_FALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// While loading, one session's rebuild is limited to this (or less): a session whose
/// top-level code runs long must not use up the load's budget before the others had their
/// turn. It is rebuilt on a worker with the full limit once the load ends.
pub const LOAD_REBUILD_LIMIT: Duration = Duration::from_millis(500);

/// First retry of a failed rebuild after this; then twice as long each time, up to
/// `RETRY_MAX`.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// When the `attempts`-th failed rebuild is retried.
pub fn retry_delay(attempts: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16) as u32;
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

impl Engine {
    /// How long one session's rebuild may run: `rg.script-timeout`, or 5 s when that is 0.
    pub fn rebuild_timeout(&self) -> Duration {
        match self.config.limits("lua").timeout {
            t if t.is_zero() => REBUILD_FALLBACK_TIMEOUT,
            t => t,
        }
    }

    /// A load starts (RDB, AOF, full sync): rebuilding the sessions it brings on the loading
    /// thread may take `rebuild_timeout()` in total, each at most `LOAD_REBUILD_LIMIT`;
    /// sessions beyond that wait for the end of the load and are rebuilt on workers.
    pub fn begin_load(&self) {
        *self.load_budget.lock() = Some(self.rebuild_timeout());
    }

    /// The load ended (or failed): sessions not rebuilt yet are rebuilt on workers now.
    pub fn end_load(self: &Arc<Self>) {
        *self.load_budget.lock() = None;
        // Those not tried yet first: those that failed are more likely to fail again.
        let mut unbuilt: Vec<Arc<Session>> = self.sessions.all().into_iter().filter(|s| s.unbuilt.is_some()).collect();
        unbuilt.sort_by_key(|s| s.unbuilt.as_ref().map(|u| u.attempts()));
        for s in unbuilt {
            self.rebuild_soon(&s, Duration::ZERO);
        }
    }

    /// Installs a session from its definition (RDB, AOF, the primary), replacing any of that
    /// id. Its script runs again here, on this thread, within `rebuild_timeout()` (and within
    /// what is left of the load's budget while loading). If it cannot be rebuilt (error,
    /// time limit, no budget left) it is kept unbuilt and rebuilt later on a worker.
    pub fn load_session(self: &Arc<Self>, def: &SessionDef) -> Arc<Session> {
        let language = self.language(&def.language).map(|l| l.name()).unwrap_or("unknown");
        let loading = self.load_budget.lock().is_some();
        let timeout = match *self.load_budget.lock() {
            Some(left) => left.min(self.rebuild_timeout()).min(LOAD_REBUILD_LIMIT),
            None => self.rebuild_timeout(),
        };
        if timeout.is_zero() {
            // Nothing left of the load's budget: rebuilt once the load ends.
            return self.sessions.install_unbuilt(def, language, None);
        }
        let started = Instant::now();
        let no_data: Arc<dyn Host> = Arc::new(NoDataHost { shard_id: self.host.shard_id() });
        let rebuilt = self.rebuild_registrations(def, no_data, Some(timeout));
        if let Some(left) = self.load_budget.lock().as_mut() {
            *left = left.saturating_sub(started.elapsed());
        }
        let error = match rebuilt {
            Ok((language, specs, imports)) => match self.sessions.install(def, language, specs, imports, Replace::Any) {
                Ok(s) => return s,
                Err(e) => format!("session '{}': {e}", def.id),
            },
            Err(e) if timeout < self.rebuild_timeout() => {
                format!("{e} (while loading, a rebuild may take {} ms: it is tried again on a worker with the full limit)", timeout.as_millis())
            }
            Err(e) => e,
        };
        self.host.log(LogLevel::Warning, &format!("rg: session '{}' could not be rebuilt, kept without its registrations and retried later: {error}", def.id));
        let s = self.sessions.install_unbuilt(def, language, Some(error));
        if !loading {
            self.rebuild_soon(&s, retry_delay(1));
        }
        s
    }

    /// Rebuilds an unbuilt session on a worker after `delay`.
    fn rebuild_soon(self: &Arc<Self>, session: &Session, delay: Duration) {
        let (engine, id, version) = (self.clone(), session.id.clone(), session.version);
        self.timers.at(
            Instant::now() + delay,
            Box::new(move || {
                let e = engine.clone();
                engine.submit_job(Box::new(move || e.rebuild_unbuilt(&id, version)));
            }),
        );
    }

    /// Runs an unbuilt session's script again (on a worker) and installs it, unless it was
    /// dropped or replaced meanwhile; on failure records the error and tries again later.
    fn rebuild_unbuilt(self: &Arc<Self>, id: &str, version: u64) {
        let Some(s) = self.sessions.get(id).filter(|s| s.version == version) else { return };
        let Some(u) = &s.unbuilt else { return };
        let no_data: Arc<dyn Host> = Arc::new(NoDataHost { shard_id: self.host.shard_id() });
        let error = match self.rebuild_registrations(&u.def, no_data, Some(self.rebuild_timeout())) {
            Ok((language, specs, imports)) => match self.sessions.install(&u.def, language, specs, imports, Replace::Unbuilt(version)) {
                Ok(_) => {
                    self.host.log(LogLevel::Notice, &format!("rg: session '{id}' rebuilt; its registrations are live"));
                    self.kick_streams();
                    if let Some(r) = self.recipes.get() {
                        r.sessions_changed(self);
                    }
                    return;
                }
                Err(crate::SessionError::Changed(_)) => return,
                Err(e) => format!("session '{id}': {e}"),
            },
            Err(e) => e,
        };
        // Dropped or replaced while it ran: nothing to record.
        if self.sessions.get(id).is_none_or(|cur| cur.version != version) {
            return;
        }
        let attempts = u.failed(error.clone());
        let delay = retry_delay(attempts);
        self.host.log(LogLevel::Warning, &format!("rg: session '{id}' could not be rebuilt (attempt {attempts}), retried in {} s: {error}", delay.as_secs()));
        self.rebuild_soon(&s, delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_ten_minutes() {
        assert_eq!(retry_delay(0), Duration::from_secs(10));
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(2), Duration::from_secs(20));
        assert_eq!(retry_delay(4), Duration::from_secs(80));
        assert_eq!(retry_delay(7), Duration::from_secs(600));
        assert_eq!(retry_delay(u64::MAX), Duration::from_secs(600));
    }
}
