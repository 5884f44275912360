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
    ]
    .into_iter()
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
