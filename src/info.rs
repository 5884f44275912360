//! The `INFO rg` section.

use crate::ENGINE;
use redis_module::InfoContext;

pub fn rg_info(ctx: &InfoContext, _for_crash_report: bool) {
    let Some(engine) = ENGINE.get() else { return };
    let c = engine.registry.counts();
    let (mut paused, mut triggered, mut failures) = (0u64, 0u64, 0u64);
    for s in engine.sessions.all() {
        for r in &s.registrations {
            let st = r.stats();
            paused += r.paused.load(std::sync::atomic::Ordering::Relaxed) as u64;
            triggered += st.triggered;
            failures += st.failures;
        }
    }
    let interpreters = engine.interpreters(None);
    let mut b = ctx.builder().add_section("");
    let fields: Vec<(String, String)> = vec![
        ("executions_created".into(), c.created.to_string()),
        ("executions_running".into(), c.running.to_string()),
        ("executions_done".into(), c.done.to_string()),
        ("executions_aborted".into(), c.aborted.to_string()),
        ("execution_threads".into(), engine.config.get_i64("execution-threads").to_string()),
        ("sessions".into(), engine.sessions.all().len().to_string()),
        ("registrations".into(), engine.sessions.registration_count().to_string()),
        ("registrations_paused".into(), paused.to_string()),
        ("trigger_calls".into(), triggered.to_string()),
        ("trigger_failures".into(), failures.to_string()),
        ("packages".into(), engine.packages.all().len().to_string()),
        ("sessions_unbuilt".into(), engine.sessions.all().iter().filter(|s| s.unbuilt.is_some()).count().to_string()),
        ("executions_memory_bytes".into(), engine.registry.kept_bytes().to_string()),
        ("executions_memory_limit".into(), engine.config.get_i64("max-executions-memory").to_string()),
        ("interpreters".into(), interpreters.instances.to_string()),
        ("interpreters_memory_bytes".into(), interpreters.bytes.to_string()),
        ("interpreters_memory_limit".into(), engine.config.get_i64(engine::instances::CAP_SETTING).to_string()),
    ]
    .into_iter()
    .chain(cluster_fields(engine))
    .chain(recipe_fields())
    .chain(engine.language_names().into_iter().map(|l| (format!("{l}_memory_bytes"), engine.memory_used(l).to_string())))
    .collect();
    for (k, v) in &fields {
        b = match b.field(k, v.as_str()) {
            Ok(b) => b,
            Err(_) => return,
        };
    }
    if let Ok(b) = b.build_section() {
        let _ = b.build_info();
    }
}

/// Recipes: their number, total backlog and largest lag, then one line per recipe.
fn recipe_fields() -> Vec<(String, String)> {
    let Some(r) = crate::recipes::recipes() else { return Vec::new() };
    let all = r.all();
    let backlog: i64 = all.iter().map(|p| p.backlog.load(std::sync::atomic::Ordering::Relaxed)).sum();
    let lag = all.iter().map(|p| p.status().lag_ms).max().unwrap_or(0);
    let mut out = vec![("recipes".to_string(), all.len().to_string()), ("recipes_backlog".into(), backlog.to_string()), ("recipes_lag_ms".into(), lag.to_string())];
    for p in all {
        let st = p.status();
        // The backfill: off (no `backfill`), pending, running or done; keys scanned and the
        // estimate of the keys under the prefix.
        let bf = r.backfill(&p.name).map(|b| b.progress());
        out.push((
            format!("recipe_{}", p.name),
            format!(
                "backlog={},lag_ms={},captured={},applied={},retries={},dead_lettered={},capture_errors={},connected={},backfill={},backfill_scanned={},backfill_total={}",
                p.backlog.load(std::sync::atomic::Ordering::Relaxed),
                st.lag_ms,
                p.captured.load(std::sync::atomic::Ordering::Relaxed),
                st.applied,
                st.retries,
                st.dead_lettered,
                st.capture_errors,
                st.connected as u8,
                bf.as_ref().map_or("off", |b| b.state.as_str()),
                bf.as_ref().map_or(0, |b| b.scanned),
                bf.as_ref().map_or(0, |b| b.total),
            ),
        ));
    }
    out
}

/// On a cluster node: the cluster executions with a part here, the messages held for parts
/// not started yet, and where this primary's registrations stand.
fn cluster_fields(engine: &engine::Engine) -> Vec<(String, String)> {
    let Some(t) = crate::cluster::topology() else { return Vec::new() };
    let (parts, held) = engine.cluster.counts();
    let (clock, items, tombstones) = {
        let v = engine.cluster.versions.lock();
        (v.clock, v.items.len() - v.tombstones(), v.tombstones())
    };
    vec![
        ("cluster_shards".into(), t.shards.len().to_string()),
        ("cluster_parts".into(), parts.to_string()),
        ("cluster_parts_waiting_start".into(), held.to_string()),
        ("cluster_registrations_epoch".into(), clock.to_string()),
        ("cluster_registrations_items".into(), items.to_string()),
        ("cluster_registrations_tombstones".into(), tombstones.to_string()),
    ]
}
