//! Packages: `require(name)` loads Lua sources from `Natives::package("lua", name)`, once per
//! run, with the script's globals.
mod common;

use common::*;
use engine::{FnRef, Instance, Limits, ScriptError, ScriptErrorKind, Value};
use std::time::{Duration, Instant};

/// Runs `source` with `natives` and ends the run.
fn run_with(inst: &mut Box<dyn Instance>, natives: &FakeNatives, source: &str) -> Result<Value, ScriptError> {
    let r = inst.run(source, &[], natives);
    inst.end_run();
    r
}

fn eval_with(natives: &FakeNatives, source: &str) -> Value {
    run_with(&mut instance(), natives, source).unwrap_or_else(|e| panic!("{source}: {e:?}"))
}

fn err_with(natives: &FakeNatives, source: &str) -> ScriptError {
    match run_with(&mut instance(), natives, source) {
        Ok(v) => panic!("{source}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

const MATH: &str = r#"
local M = { name = 'mathx' }
function M.add(a, b) return a + b end
function M.twice(x) return M.add(x, x) end
return M
"#;

#[test]
fn require_returns_the_module_value() {
    let natives = FakeNatives::new()
        .with_package("mathx", MATH)
        .with_package("nothing", "local x = 1")
        .with_package("nilret", "return nil, 2")
        .with_package("falsy", "return false")
        .with_package("nargs", "return select('#', ...)")
        .with_package("multi", "return 'first', 'second'");
    assert_eq!(
        eval_with(&natives, "local m = require('mathx') return {m.add(2, 3), m.twice(4), m.name}"),
        arr(vec![Value::Int(5), Value::Int(8), s("mathx")])
    );
    // nothing or nil -> true; false stays false; no arguments; the first value only
    assert_eq!(
        eval_with(
            &natives,
            "return {require('nothing'), require('nilret'), require('falsy'), require('nargs'), require('multi')}"
        ),
        arr(vec![Value::Bool(true), Value::Bool(true), Value::Bool(false), Value::Int(0), s("first")])
    );
    assert_eq!(eval_with(&natives, "return select('#', require('multi'))"), Value::Int(1));
    // the natives were asked for Lua packages
    assert!(natives.asked_log().iter().all(|(lang, _)| lang == "lua"), "{:?}", natives.asked_log());
}

#[test]
fn packages_are_loaded_once_per_run() {
    let natives = FakeNatives::new()
        .with_package("counted", "loads = (loads or 0) + 1 return {}")
        .with_package("falsy", "falsy_loads = (falsy_loads or 0) + 1 return false")
        .with_package("nothing", "nothing_loads = (nothing_loads or 0) + 1");
    let mut inst = instance();
    let script = r#"
        local a = require('counted')
        local b = require('counted')
        require('falsy') require('falsy')
        require('nothing') require('nothing')
        return {rawequal(a, b), loads, falsy_loads, nothing_loads}
    "#;
    let once = arr(vec![Value::Bool(true), Value::Int(1), Value::Int(1), Value::Int(1)]);
    assert_eq!(run_with(&mut inst, &natives, script).unwrap(), once);
    assert_eq!(natives.asked_for("counted"), 1);
    assert_eq!(natives.asked_for("falsy"), 1);
    assert_eq!(natives.asked_for("nothing"), 1);
    assert_eq!(natives.asked(), 3);
    // the next run loads them again (the cache is part of the run)
    assert_eq!(run_with(&mut inst, &natives, script).unwrap(), once);
    assert_eq!(natives.asked_for("counted"), 2);
    assert_eq!(natives.asked(), 6);
    // also when the previous run was not ended
    inst.run("require('counted')", &[], &natives).unwrap();
    inst.run("require('counted')", &[], &natives).unwrap();
    inst.end_run();
    assert_eq!(natives.asked_for("counted"), 4);
    // requiring from a callback of the run uses the run's cache
    let f = inst.run("require('counted') return function() return require('counted') end", &[], &natives).unwrap();
    assert_eq!(f, Value::Function(FnRef(0)));
    inst.call(FnRef(0), &[], &natives).unwrap();
    inst.end_run();
    assert_eq!(natives.asked_for("counted"), 5);
}

#[test]
fn packages_share_the_script_globals() {
    let natives = FakeNatives::new().with_package(
        "g",
        r#"
        shared = 'from package'
        local M = { seen = before, args = ARGS[1], echoed = echo(1)[1] }
        function M.later() return later end
        return M
        "#,
    );
    let mut inst = instance();
    let r = inst
        .run(
            "before = 'from script' local m = require('g') later = 5 return {shared, m.seen, m.later(), m.args, m.echoed}",
            &[b"arg1".to_vec()],
            &natives,
        )
        .unwrap();
    inst.end_run();
    assert_eq!(r, arr(vec![s("from package"), s("from script"), Value::Int(5), s("arg1"), Value::Int(1)]));
    // and, like the script's own globals, they are gone at the next run
    assert_eq!(run_with(&mut inst, &natives, "return {shared == nil, before == nil}").unwrap(),
        arr(vec![Value::Bool(true), Value::Bool(true)]));
    // locals of a package stay private
    let natives = FakeNatives::new().with_package("p", "local secret = 1 return {}");
    assert_eq!(eval_with(&natives, "require('p') return secret"), Value::Nil);
}

#[test]
fn unknown_packages_are_errors() {
    let natives = FakeNatives::new().with_package("a", "return require('missing')");
    let e = err_with(&natives, "return require('nope')");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert_eq!(e.message, "script:1: module 'nope' not found: load it with RG.PACKAGE LOAD lua nope <code>");
    assert_eq!(natives.asked_for("nope"), 1);
    // from inside a package, the position is the package's
    let e = err_with(&natives, "return require('a')");
    assert_eq!(e.message, "a:1: module 'missing' not found: load it with RG.PACKAGE LOAD lua missing <code>");
    // catchable
    assert_eq!(
        eval_with(&natives, "local ok, e = pcall(require, 'nope') return {ok, tostring(e)}"),
        arr(vec![
            Value::Bool(false),
            s("module 'nope' not found: load it with RG.PACKAGE LOAD lua nope <code>")
        ])
    );
    // `package`, `dofile` and `loadfile` stay absent
    assert_eq!(
        eval_with(&natives, "return {package == nil, dofile == nil, loadfile == nil, type(require)}"),
        arr(vec![Value::Bool(true), Value::Bool(true), Value::Bool(true), s("function")])
    );
}

#[test]
fn packages_the_natives_refuse_are_errors_with_their_message() {
    let natives = FakeNatives::new();
    let e = err_with(&natives, "return require('refused')");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert_eq!(e.message, "script:1: package 'refused' may not be imported here");
    assert_eq!(
        eval_with(&natives, "local ok, e = pcall(require, 'refused') return {ok, tostring(e)}"),
        arr(vec![Value::Bool(false), s("package 'refused' may not be imported here")])
    );
}

#[test]
fn circular_requires_are_errors() {
    let natives = FakeNatives::new()
        .with_package("self", "return require('self')")
        .with_package("a", "local b = require('b') return {b = b}")
        .with_package("b", "local a = require('a') return {a = a}")
        .with_package("ok", "return 'ok'");
    let e = err_with(&natives, "return require('self')");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert_eq!(e.message, "self:1: require: circular require of 'self'");
    let e = err_with(&natives, "return require('a')");
    assert_eq!(e.message, "b:1: require: circular require of 'a'");
    // caught: the run goes on, and the failed packages were not cached
    assert_eq!(
        eval_with(&natives, "local ok1 = pcall(require, 'a') local ok2 = pcall(require, 'a') return {ok1, ok2, require('ok')}"),
        arr(vec![Value::Bool(false), Value::Bool(false), s("ok")])
    );
}

#[test]
fn deep_require_chains_end_with_an_error() {
    let mut natives = FakeNatives::new();
    for i in 0..100 {
        natives = natives.with_package(&format!("p{i}"), &format!("return require('p{}')", i + 1));
    }
    let e = err_with(&natives, "return require('p0')");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert!(e.message.contains("packages nested too deeply"), "{e:?}");
    // a chain within the limit works
    let mut natives = FakeNatives::new().with_package("q10", "return 10");
    for i in 0..10 {
        natives = natives.with_package(&format!("q{i}"), &format!("return require('q{}')", i + 1));
    }
    assert_eq!(eval_with(&natives, "return require('q0')"), Value::Int(10));
}

#[test]
fn syntax_errors_in_packages_carry_the_package_line() {
    let natives = FakeNatives::new()
        .with_package("x", "return +")
        .with_package("y", "local a = 1\nlocal = 2\nreturn a")
        .with_package("bin", "\x1bLua");
    let e = err_with(&natives, "return require('x')");
    assert_kind(&e, ScriptErrorKind::Syntax);
    assert!(e.message.starts_with("x:1:"), "{e:?}");
    assert!(e.message.contains("unexpected symbol"), "{e:?}");
    assert!(!e.message.contains("traceback"), "{e:?}");
    let e = err_with(&natives, "local a = 1\nreturn require('y')");
    assert!(e.message.starts_with("y:2:"), "{e:?}");
    // a binary chunk is refused
    let e = err_with(&natives, "return require('bin')");
    assert!(e.message.contains("binary"), "{e:?}");
    // catchable, with the same message
    let r = eval_with(&natives, "local ok, e = pcall(require, 'x') return {ok, tostring(e)}");
    let Value::Array(items) = r else { panic!() };
    assert_eq!(items[0], Value::Bool(false));
    assert!(items[1].as_str_lossy().unwrap().starts_with("x:1:"), "{items:?}");
}

#[test]
fn runtime_errors_in_packages_carry_the_package_line() {
    let natives = FakeNatives::new()
        .with_package("boom", "local a = 1\n\nerror('boom')")
        .with_package("nilidx", "local t = nil\nreturn t.x")
        .with_package("lazy", "local M = {}\nfunction M.f()\n  error('late')\nend\nreturn M")
        .with_package("usage", "\nfail('bad use')");
    let e = err_with(&natives, "return require('boom')");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert_eq!(e.message, "boom:3: boom");
    let e = err_with(&natives, "return require('nilidx')");
    assert_eq!(e.message, "nilidx:2: attempt to index a nil value (local 't')");
    let e = err_with(&natives, "local m = require('lazy')\nreturn m.f()");
    assert_eq!(e.message, "lazy:3: late");
    // a native's error keeps its kind
    let e = err_with(&natives, "require('usage')");
    assert_kind(&e, ScriptErrorKind::Usage);
    // a failed package is not cached: the next require asks again
    let natives = FakeNatives::new().with_package("boom", "error('boom')");
    assert_eq!(
        eval_with(&natives, "local ok1, e = pcall(require, 'boom') local ok2 = pcall(require, 'boom') return {ok1, ok2, tostring(e)}"),
        arr(vec![Value::Bool(false), Value::Bool(false), s("boom:1: boom")])
    );
    assert_eq!(natives.asked_for("boom"), 2);
}

#[test]
fn packages_run_under_the_time_limit() {
    let natives = FakeNatives::new()
        .with_package("loop", "while true do end")
        .with_package("swallow", "return pcall(function() while true do end end)")
        .with_package("lazy", "return { spin = function() while true do end end }")
        .with_package("ok", "return 'fine'");
    let mut inst = instance_with(Limits { memory_bytes: 0, timeout: Duration::from_millis(100) });
    for script in [
        "return require('loop')",
        "while true do pcall(require, 'loop') end",
        "return require('swallow')",
        "require('swallow') return 1",
        "require('lazy').spin()",
        "apply(require('lazy').spin)",
        "return apply(require, 'loop')",
    ] {
        let start = Instant::now();
        let e = run_with(&mut inst, &natives, script).unwrap_err();
        assert_kind(&e, ScriptErrorKind::Timeout);
        assert!(start.elapsed() < Duration::from_secs(5), "{script}: took {:?}", start.elapsed());
        assert_eq!(run_with(&mut inst, &natives, "return require('ok')").unwrap(), s("fine"), "after {script}");
    }
}

#[test]
fn non_string_names_are_errors() {
    let natives = FakeNatives::new();
    for (arg, ty) in [("1", "number"), ("1.5", "number"), ("", "nil"), ("{}", "table"), ("true", "boolean"),
        ("print", "nil"), ("function() end", "function"), ("obj()", "userdata")]
    {
        let e = err_with(&natives, &format!("return require({arg})"));
        assert_kind(&e, ScriptErrorKind::Runtime);
        assert_eq!(e.message, format!("script:1: require: argument 1 must be a string, got {ty}"), "{arg}");
    }
    assert_eq!(natives.asked(), 0);
}

#[test]
fn package_functions_are_callbacks_like_any_other() {
    let natives = FakeNatives::new().with_package(
        "step",
        r#"
        local P = {}
        function P.step(r) return r * 2 end
        function P.each(o) return o:each(P.step) end
        return P
        "#,
    );
    assert_eq!(eval_with(&natives, "local p = require('step') return apply(p.step, 21)"), Value::Int(42));
    assert_eq!(
        eval_with(&natives, "local p = require('step') return obj():add(1):add(2):each(p.step)"),
        arr(vec![Value::Int(2), Value::Int(4)])
    );
    assert_eq!(
        eval_with(&natives, "return require('step').each(obj():add(5))"),
        arr(vec![Value::Int(10)])
    );
    // a package function keeps one FnRef and is callable through Instance::call
    let mut inst = instance();
    let r = inst.run("local p = require('step') return {p.step, p.step, require('step').step}", &[], &natives).unwrap();
    assert_eq!(r, arr(vec![Value::Function(FnRef(0)); 3]));
    assert_eq!(inst.call(FnRef(0), &[Value::Int(7)], &natives).unwrap(), Value::Int(14));
    inst.end_run();
}

#[test]
fn memory_errors_in_packages_keep_their_kind() {
    let natives = FakeNatives::new()
        .with_package("bomb", "local s = 'x' while true do s = s .. s end")
        .with_package("ok", "return 'fine'");
    let mut inst = instance_with(Limits { memory_bytes: 8 << 20, timeout: Duration::from_secs(10) });
    for script in ["require('bomb')", "return apply(require, 'bomb')"] {
        let e = run_with(&mut inst, &natives, script).unwrap_err();
        assert_kind(&e, ScriptErrorKind::Memory);
        assert_eq!(run_with(&mut inst, &natives, "return require('ok')").unwrap(), s("fine"), "after {script}");
    }
    // like a memory error in the script's own code, one caught by pcall lets the script go on
    assert_eq!(
        run_with(&mut inst, &natives, "local ok = pcall(require, 'bomb') return {ok, require('ok')}").unwrap(),
        arr(vec![Value::Bool(false), s("fine")])
    );
}
