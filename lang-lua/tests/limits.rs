//! Time, memory and abort limits; the instance stays usable afterwards.
mod common;

use common::*;
use engine::{Limits, ScriptErrorKind, Value};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn timed(ms: u64) -> Box<dyn engine::Instance> {
    instance_with(Limits { memory_bytes: 0, timeout: Duration::from_millis(ms) })
}

fn assert_times_out(inst: &mut Box<dyn engine::Instance>, source: &str) {
    let start = Instant::now();
    let e = run(inst, source).unwrap_err();
    assert_kind(&e, ScriptErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_secs(5), "{source}: took {:?}", start.elapsed());
    assert_eq!(run(inst, "return 1 + 1").unwrap(), Value::Int(2), "after {source}");
}

#[test]
fn infinite_loops_time_out() {
    let mut inst = timed(100);
    assert_times_out(&mut inst, "while true do end");
    assert_times_out(&mut inst, "while true do pcall(function() while true do end end) end");
    assert_times_out(&mut inst, "while true do pcall(pcall, function() while true do end end) end");
    assert_times_out(
        &mut inst,
        "while true do xpcall(function() while true do end end, function(e) while true do end end) end",
    );
    assert_times_out(
        &mut inst,
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
    );
    assert_times_out(&mut inst, "local function f() return f() end f()");
    // the timeout is swallowed by a tail-called pcall: the run still fails
    assert_times_out(&mut inst, "return pcall(function() while true do end end)");
    assert_times_out(
        &mut inst,
        "error(setmetatable({}, {__tostring = function() while true do end end}))",
    );
    assert_times_out(&mut inst, "load(function() while true do end end)");
    assert_times_out(
        &mut inst,
        "while true do pcall(coroutine.wrap(function() while true do end end)) end",
    );
    assert_times_out(
        &mut inst,
        "local s = '' while true do local ok, e = pcall(function() while true do end end) s = tostring(e) end",
    );
}

#[test]
fn callbacks_time_out() {
    let mut inst = timed(100);
    assert_times_out(&mut inst, "apply(function() while true do end end)");
    assert_times_out(&mut inst, "while true do pcall(apply, function() while true do end end) end");
    // a callback swallowing its own timeout does not let the caller go on
    assert_times_out(
        &mut inst,
        "while true do apply(function() return pcall(function() while true do end end) end) end",
    );
    assert_times_out(
        &mut inst,
        "while true do pcall(obj():add(1).each, obj():add(1), function() while true do end end) end",
    );
    // also through Instance::call
    let natives = FakeNatives::new();
    let f = inst.run("return function() while true do end end", &[], &natives).unwrap();
    let Value::Function(f) = f else { panic!() };
    let e = inst.call(f, &[], &natives).unwrap_err();
    assert_kind(&e, ScriptErrorKind::Timeout);
    inst.end_run();
}

#[test]
fn time_in_natives_does_not_count() {
    let mut inst = timed(150);
    // 3 x 100ms in a native, with little script time in between
    assert_eq!(run(&mut inst, "spin(100) spin(100) spin(100) return 'ok'").unwrap(), s("ok"));
    // each callback gets its own budget
    assert_eq!(
        run(&mut inst, "return obj():add(1):add(2):add(3):each(function(x) spin(100) return x end)").unwrap(),
        arr(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
    );
}

#[test]
fn set_limits_changes_the_timeout() {
    let mut inst = instance();
    assert_eq!(inst.clock().timeout(), Duration::ZERO);
    inst.set_limits(Limits { memory_bytes: 0, timeout: Duration::from_millis(50) });
    assert_times_out(&mut inst, "while true do end");
}

#[test]
fn memory_bombs_end_with_memory_error() {
    let limits = Limits { memory_bytes: 8 << 20, timeout: Duration::from_secs(10) };
    let mut inst = instance_with(limits);
    for bomb in [
        "local t = {} while true do t[#t + 1] = string.rep('x', 1024) .. #t end",
        "local s = 'x' while true do s = s .. s end",
        "return string.rep('x', 1 << 30)",
        "local t = {} for i = 1, 1e9 do t[i] = i end",
    ] {
        let e = run(&mut inst, bomb).unwrap_err();
        assert_kind(&e, ScriptErrorKind::Memory);
        assert!(e.message.contains("8388608"), "{e:?}");
        assert_eq!(run(&mut inst, "return #string.rep('y', 1000)").unwrap(), Value::Int(1000), "after {bomb}");
    }
    // a memory error inside a callback keeps its kind
    let e = run(&mut inst, "apply(function() return string.rep('x', 1 << 30) end)").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Memory);
    // lowering the limit at run time
    inst.set_limits(Limits { memory_bytes: 4 << 20, timeout: Duration::from_secs(10) });
    let e = run(&mut inst, "return string.rep('x', 6 << 20)").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Memory);
    assert_eq!(run(&mut inst, "return 'fine'").unwrap(), s("fine"));
}

#[test]
fn abort_flag_stops_the_run() {
    let mut inst = timed(10_000);
    let flag = Arc::new(AtomicBool::new(false));
    inst.clock().set_abort_flag(flag.clone());
    let setter = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let e = run(&mut inst, "while true do pcall(function() while true do end end) end").unwrap_err();
    setter.join().unwrap();
    assert_kind(&e, ScriptErrorKind::Aborted);
    inst.clock().reset_abort_flag();
    assert_eq!(run(&mut inst, "return 3").unwrap(), Value::Int(3));
}

#[test]
fn memory_does_not_grow_across_runs() {
    let mut inst = instance();
    for _ in 0..50 {
        run(&mut inst, "x = {} for i = 1, 1000 do x[i] = tostring(i) end return function() end").unwrap();
    }
    let before = inst.memory_used();
    for _ in 0..300 {
        run(&mut inst, "x = {} for i = 1, 1000 do x[i] = tostring(i) end return function() end").unwrap();
    }
    let after = inst.memory_used();
    assert!(after < before + (256 << 10), "memory grew from {before} to {after}");
}
