//! Library functions that loop in C are bounded like script code: each replaced function
//! stops at the time limit, at the abort flag and at the memory limit, with the same fatal
//! errors the instruction hook raises (pcall cannot swallow them), and the instance stays
//! usable. Deep nesting ends with an error, not a crash, on a 2 MiB thread.
mod common;

use common::*;
use engine::{Limits, ScriptErrorKind, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scripts that ran (nearly) forever inside one library call before.
const BOMBS: &[(&str, &str)] = &[
    ("string.find", "return string.find(string.rep(',', 5000), '(.-),(.-),(.-);$')"),
    ("string.match", "return string.rep(',', 5000):match('^(.-),(.-),(.-);$')"),
    ("string.match backtrack", "return string.match(string.rep('a', 5000), string.rep('a*', 30) .. 'b')"),
    ("string.gmatch", "for a in string.gmatch(string.rep(',', 5000), '(.-),(.-),(.-);') do end"),
    ("string.gsub", "return string.gsub(string.rep(',', 5000), '(.-),(.-),(.-);', '')"),
    ("string.gsub fn", "return string.gsub(string.rep(',', 5000), '(.-),(.-),(.-);', tostring)"),
    ("%b", "return string.find(string.rep('(', 100000), '%b()')"),
    ("table.concat", "return table.concat(setmetatable({}, {__index = rawlen}), '', 1, 2^40)"),
    ("table.move", "return table.move({}, 1, 2^40, 2)"),
    ("table.move string", "return table.move('abc', 1, 2^40, 1, {})"),
    ("table.insert", "table.insert(setmetatable({}, {__len = function() return 2^50 end}), 1, 'x')"),
    ("table.remove", "table.remove(setmetatable({}, {__len = function() return 2^50 end}), 1)"),
    (
        "table.sort",
        "table.sort(setmetatable({}, {__len = function() return 2^31 - 2 end, __index = tostring, \
         __newindex = rawequal}), math.type)",
    ),
];

fn timed(ms: u64) -> Box<dyn engine::Instance> {
    instance_with(Limits { memory_bytes: 0, timeout: Duration::from_millis(ms) })
}

#[test]
fn every_bomb_times_out() {
    let mut inst = timed(100);
    for (name, bomb) in BOMBS {
        for source in [bomb.to_string(), format!("local ok = pcall(function() {bomb} end) while true do end")] {
            let start = Instant::now();
            let e = run(&mut inst, &source).expect_err(name);
            assert_kind(&e, ScriptErrorKind::Timeout);
            assert_eq!(e.message, "script timed out: the call ran longer than rg.script-timeout (100 ms)");
            assert!(start.elapsed() < Duration::from_secs(2), "{name}: took {:?}", start.elapsed());
            assert_eq!(run(&mut inst, "return 1 + 1").unwrap(), Value::Int(2), "after {name}");
        }
    }
}

#[test]
fn a_caught_timeout_is_raised_again() {
    let mut inst = timed(100);
    // the script catches the error of the library call and tries to carry on
    let e = run(&mut inst, "local ok, e = pcall(string.find, string.rep('a', 5000), string.rep('a*', 30) .. 'b') return ok, tostring(e)").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Timeout);
    let e = run(&mut inst, "return pcall(string.gsub, string.rep(',', 5000), '(.-),(.-),(.-);', '')").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Timeout);
}

#[test]
fn every_bomb_is_aborted() {
    let mut inst = timed(60_000);
    for (name, bomb) in BOMBS {
        let flag = Arc::new(AtomicBool::new(false));
        inst.clock().set_abort_flag(flag.clone());
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            flag.store(true, Ordering::Relaxed);
        });
        let start = Instant::now();
        let e = run(&mut inst, bomb).expect_err(name);
        setter.join().unwrap();
        assert_kind(&e, ScriptErrorKind::Aborted);
        assert!(start.elapsed() < Duration::from_secs(2), "{name}: took {:?}", start.elapsed());
        inst.clock().reset_abort_flag();
        assert_eq!(run(&mut inst, "return 3").unwrap(), Value::Int(3), "after {name}");
    }
}

#[test]
fn rep_fails_before_allocating() {
    let mut inst = instance_with(Limits { memory_bytes: 8 << 20, timeout: Duration::from_secs(10) });
    let start = Instant::now();
    assert_eq!(run(&mut inst, "return #string.rep('', 2^40)").unwrap(), Value::Int(0));
    let e = run(&mut inst, "return string.rep('x', 2^40)").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Memory);
    assert_eq!(e.message, "script ran out of memory: the runtime is limited to 8388608 bytes");
    let e = run(&mut inst, "local ok = pcall(string.rep, 'x', 2^20, string.rep('y', 100)) return ok").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Memory);
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    assert_eq!(run(&mut inst, "return #string.rep('ab', 1000, ',')").unwrap(), Value::Int(2999));
    // gsub's result is counted too
    let e = run(&mut inst, "local s = string.rep('x', 1 << 20) return #s:gsub('x', s)").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Memory);
}

#[test]
fn the_sync_trigger_case_is_fast_enough_to_stop() {
    // 3000 commas against the reviewer's pattern: stopped at the limit, not after minutes
    let mut inst = timed(200);
    let start = Instant::now();
    let e = run(&mut inst, "local v = string.rep(',', 3000) return v:match('^(.-),(.-),(.-);$')").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
    // and what it matches normally is still matched
    assert_eq!(run(&mut inst, "return select(3, ('a,b,c;'):match('^(.-),(.-),(.-);$'))").unwrap(), s("c"));
}

/// Runs `source` on a fresh thread with a 2 MiB stack (a worker's), returning its result.
fn on_small_stack(source: &'static str) -> Result<Value, engine::ScriptError> {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || run(&mut timed(10_000), source))
        .unwrap()
        .join()
        .expect("no crash")
}

const NESTING: &[&str] = &[
    "local function f() return pcall(f) end return f()",
    "local function f() local ok, e = pcall(f) if not ok then error(e, 0) end end f()",
    "local function f(s) return (s:gsub('.', f)) end return f('ab')",
    "local function f(s) return (s:gsub('.', f)) end return f(string.rep('a', 100))",
    "local t = setmetatable({}, {}) getmetatable(t).__index = function(t, k) return t[k] end return t.x",
    "local t = setmetatable({}, {__index = function(t, k) return t[k] end}) return t.x",
    "local mt = {} mt.__tostring = function(t) return tostring(setmetatable({}, mt)) end return tostring(setmetatable({}, mt))",
    "local mt = {} mt.__lt = function(a, b) return setmetatable({}, mt) < b end return setmetatable({}, mt) < setmetatable({}, mt)",
    "local mt = {} mt.__concat = function(a, b) return setmetatable({}, mt) .. b end return setmetatable({}, mt) .. 'x'",
    "local function f() return coroutine.wrap(f)() end return f()",
    "local function f() return load(f) end return f()",
    "local function f() return load(function() f() end) end return f()",
    "local function f() return select(2, xpcall(f, f)) end return f()",
    "local function f() return table.sort({2, 1}, function(a, b) f() return a < b end) end return f()",
    "local function f() table.concat(setmetatable({}, {__index = function() f() end}), '', 1, 1) end f()",
    "local function f() return string.gsub('a', 'a', {}) and setmetatable({}, {__index = function() return f() end}).x end return f()",
    "local function f() return apply(f) end return f()",
    "local function f() return obj():add(1):each(f) end return f()",
    "local s = string.rep('(', 190) .. string.rep(')', 190) return string.find(s, string.rep('%(', 190))",
];

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for source in NESTING {
        let r = on_small_stack(source);
        // Lua's C stack limit (LUAI_MAXCCALLS = 200), its Lua stack limit, or ours.
        if let Err(e) = &r {
            assert!(!e.is_fatal(), "{source}: {e:?}");
        }
    }
}

#[test]
fn deep_nesting_on_the_main_thread() {
    for source in NESTING {
        let _ = run(&mut timed(10_000), source);
    }
}
