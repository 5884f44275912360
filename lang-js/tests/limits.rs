//! Time, memory and abort limits; the instance stays usable after each.
mod support;

use engine::{FnRef, Limits, ScriptErrorKind, Value};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{instance_with, s, Fake};

fn timed(ms: u64) -> Limits {
    Limits { memory_bytes: 0, timeout: Duration::from_millis(ms) }
}

#[test]
fn infinite_loop_times_out_and_instance_recovers() {
    let mut i = instance_with(timed(100));
    let fake = Fake::default();
    let start = Instant::now();
    let e = i.run("while (true) {}", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    i.end_run();
    assert_eq!(i.run("1 + 1", &[], &fake).unwrap(), Value::Int(2));
}

#[test]
fn timeouts_cannot_be_caught() {
    let mut i = instance_with(timed(100));
    let fake = Fake::default();
    let e = i.run("while (true) { try { while (true) {} } catch (e) {} }", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    let e = i.run("for (;;) { try { while (true) {} } finally { } }", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    // Not even around a native whose callback timed out.
    let e = i.run("while (true) { try { apply(() => { while (true) {} }) } catch (e) {} }", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    assert_eq!(i.run("'fine'", &[], &fake).unwrap(), s("fine"));
}

#[test]
fn each_call_gets_its_own_time() {
    let mut i = instance_with(timed(800));
    let fake = Fake::default();
    i.run("(n) => { const end = Date.now() + n; while (Date.now() < end) {} return n }", &[], &fake).unwrap();
    // Three calls of 300 ms: more than the limit together, each within it.
    for _ in 0..3 {
        assert_eq!(i.call(FnRef(0), &[Value::Int(300)], &fake).unwrap(), Value::Int(300));
    }
    let e = i.call(FnRef(0), &[Value::Int(100_000)], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout);
    assert_eq!(i.call(FnRef(0), &[Value::Int(1)], &fake).unwrap(), Value::Int(1));
}

#[test]
fn time_in_natives_does_not_count() {
    let mut i = instance_with(timed(100));
    assert_eq!(i.run("sleep(250); 'awake'", &[], &Fake::default()).unwrap(), s("awake"));
}

#[test]
fn infinite_promise_chains_time_out() {
    let mut i = instance_with(timed(100));
    let fake = Fake::default();
    let e = i.run("const spin = () => Promise.resolve().then(spin); spin(); 1", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    i.end_run();
    assert_eq!(i.run("2", &[], &fake).unwrap(), Value::Int(2));
}

#[test]
fn memory_bomb_is_stopped_and_instance_recovers() {
    let limit = 16 << 20;
    let mut i = instance_with(Limits { memory_bytes: limit, timeout: Duration::from_secs(10) });
    let fake = Fake::default();
    let e = i.run("let a = []; while (true) a.push('x'.repeat(1000))", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Memory, "{e:?}");
    assert!(e.message.contains(&limit.to_string()), "{e:?}");
    i.end_run();
    assert_eq!(i.run("[1, 2, 3].length", &[], &fake).unwrap(), Value::Int(3));
    // Again, without end_run in between, and with other shapes of bombs.
    for bomb in [
        "(function () { const a = []; while (true) a.push(new Array(1000).fill(1)) })()",
        "let s = 'x'; while (true) s = (s + s).split('').join('')",
        "const m = new Map(); for (let k = 0; ; k++) m.set(k, {k})",
    ] {
        let e = i.run(bomb, &[], &fake).unwrap_err();
        assert_eq!(e.kind, ScriptErrorKind::Memory, "{bomb}: {e:?}");
        assert_eq!(i.run("'ok'", &[], &fake).unwrap(), s("ok"));
    }
    assert!(i.memory_used() < limit);
}

#[test]
fn set_limits_changes_both() {
    let mut i = instance_with(Limits::default());
    let fake = Fake::default();
    i.set_limits(Limits { memory_bytes: 8 << 20, timeout: Duration::from_millis(100) });
    assert_eq!(i.clock().timeout(), Duration::from_millis(100));
    let e = i.run("while (true) {}", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout);
    i.set_limits(Limits { memory_bytes: 8 << 20, timeout: Duration::from_secs(20) });
    let e = i.run("let a = []; while (true) a.push('x'.repeat(1000))", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Memory);
    i.set_limits(Limits::default());
    assert_eq!(i.run("'x'.repeat(20 << 20).length", &[], &fake).unwrap(), Value::Int(20 << 20));
}

#[test]
fn abort_flag_stops_the_script() {
    let mut i = instance_with(Limits::default());
    let fake = Fake::default();
    let flag = Arc::new(AtomicBool::new(false));
    i.clock().set_abort_flag(flag.clone());
    let setter = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let e = i.run("while (true) { try { while (true) {} } catch (e) {} }", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Aborted, "{e:?}");
    setter.join().unwrap();
    i.clock().reset_abort_flag();
    i.end_run();
    assert_eq!(i.run("'again'", &[], &fake).unwrap(), s("again"));
}

#[test]
fn user_code_run_by_conversions_is_timed_too() {
    let mut i = instance_with(timed(100));
    let fake = Fake::default();
    let e = i
        .run(
            "const e = new Error('x'); Object.defineProperty(e, 'stack', {get() { while (true) {} }}); throw e",
            &[],
            &fake,
        )
        .unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    let e = i.run("new Proxy({}, {ownKeys() { while (true) {} }})", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    let e = i.run("echo({get a() { while (true) {} }})", &[], &fake).unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout, "{e:?}");
    assert_eq!(i.run("'still fine'", &[], &fake).unwrap(), s("still fine"));
}
