//! Runs, fresh globals, function references, callbacks, nested calls and host objects.
mod common;

use common::*;
use engine::{FnRef, ObjRef, ScriptErrorKind, Value};

#[test]
fn name_and_return_value() {
    use engine::Language;
    assert_eq!(lang_lua::LuaLanguage.name(), "lua");
    assert_eq!(eval("local x = 40 return x + 2"), Value::Int(42));
    assert_eq!(eval("x = 1"), Value::Nil);
    assert_eq!(eval("return 1, 2"), Value::Int(1));
}

#[test]
fn globals_do_not_leak_between_runs() {
    let mut inst = instance();
    run(&mut inst, "x = 1; _G.y = 2; string.foo = 3; table.insert = nil; tostring = nil").unwrap();
    let r = run(
        &mut inst,
        "return {x == nil, y == nil, string.foo == nil, table.insert ~= nil, tostring ~= nil}",
    )
    .unwrap();
    assert_eq!(r, arr(vec![Value::Bool(true); 5]));
}

#[test]
fn run_without_end_run_still_starts_fresh() {
    let mut inst = instance();
    let natives = FakeNatives::new();
    inst.run("x = 1 return function() end", &[], &natives).unwrap();
    // no end_run
    let r = inst.run("return {x == nil, function() end}", &[], &natives).unwrap();
    assert_eq!(r, arr(vec![Value::Bool(true), Value::Function(FnRef(0))]));
}

#[test]
fn function_refs_are_numbered_in_order() {
    assert_eq!(
        eval("local f = function() end return {function() end, f, f, function() end}"),
        arr(vec![
            Value::Function(FnRef(0)),
            Value::Function(FnRef(1)),
            Value::Function(FnRef(1)),
            Value::Function(FnRef(2)),
        ])
    );
    // map values are numbered in key order, not hash order
    assert_eq!(
        eval("return {zz = function() end, aa = function() end, mm = function() end}"),
        Value::Map(vec![
            (s("aa"), Value::Function(FnRef(0))),
            (s("mm"), Value::Function(FnRef(1))),
            (s("zz"), Value::Function(FnRef(2))),
        ])
    );
}

#[test]
fn instance_call_and_end_run() {
    let mut inst = instance();
    let natives = FakeNatives::new();
    let f = inst
        .run("local n = 0 return function(x) n = n + x return n end", &[], &natives)
        .unwrap();
    let Value::Function(f) = f else { panic!("{f:?}") };
    assert_eq!(inst.call(f, &[Value::Int(5)], &natives).unwrap(), Value::Int(5));
    assert_eq!(inst.call(f, &[Value::Int(2)], &natives).unwrap(), Value::Int(7));
    let e = inst.call(FnRef(9), &[], &natives).unwrap_err();
    assert!(e.message.contains("unknown function reference"), "{e:?}");
    inst.end_run();
    assert!(inst.call(f, &[], &natives).is_err());
}

#[test]
fn callbacks_through_natives() {
    assert_eq!(eval("return apply(function(a, b) return a + b end, 2, 3)"), Value::Int(5));
    // native -> script -> native -> script
    assert_eq!(
        eval(
            "return apply(function(x)
               return echo(x, apply(function(y) return y * 2 end, x))
             end, 21)"
        ),
        arr(vec![Value::Int(21), Value::Int(42)])
    );
    // a function returned by a callback is callable later
    let mut inst = instance();
    let natives = FakeNatives::new();
    let g = inst
        .run("return apply(function() return function(z) return z .. '!' end end)", &[], &natives)
        .unwrap();
    let Value::Function(g) = g else { panic!("{g:?}") };
    assert_eq!(inst.call(g, &[s("hi")], &natives).unwrap(), s("hi!"));
}

#[test]
fn callback_errors_propagate_with_kind() {
    let e = eval_err("return apply(function() fail('inner') end)");
    assert_kind(&e, ScriptErrorKind::Usage);
    assert_eq!(e.message, "inner");
    let e = eval_err("return apply(function() error('oops') end)");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert!(e.message.starts_with("script:1: oops"), "{e:?}");
    // the script can catch a native's error
    assert_eq!(
        eval("local ok, e = pcall(fail, 'x') return {ok, tostring(e)}"),
        arr(vec![Value::Bool(false), s("x")])
    );
}

#[test]
fn runaway_recursion_through_natives_is_stopped() {
    let e = eval_err("local function f() return apply(f) end return f()");
    assert!(e.message.contains("nested too deeply"), "{e:?}");
}

#[test]
fn host_objects_and_chaining() {
    assert_eq!(
        eval("local o = obj() o:add(1):add('two'):add({3}) return o:get()"),
        arr(vec![Value::Int(1), s("two"), arr(vec![Value::Int(3)])])
    );
    assert_eq!(eval("return obj():add(5)"), Value::Object(ObjRef { kind: "Obj", id: 0 }));
    assert_eq!(
        eval("return obj():add(1):add(2):each(function(x) return x * 10 end)"),
        arr(vec![Value::Int(10), Value::Int(20)])
    );
    assert_eq!(eval("local o = obj() return {o == o:add(1), tostring(o)}"), arr(vec![Value::Bool(true), s("<Obj 0>")]));
    assert_eq!(eval("return obj().nope"), Value::Nil);
    // nested: a callback using another object
    assert_eq!(
        eval("local a = obj():add(1):add(2)
              return a:each(function(x) return obj():add(x):add(x):get() end)"),
        arr(vec![arr(vec![Value::Int(1), Value::Int(1)]), arr(vec![Value::Int(2), Value::Int(2)])])
    );
}

#[test]
fn method_called_with_dot_is_an_error() {
    let e = eval_err("local o = obj() o.add(1)");
    assert!(e.message.contains("use obj:add(...)"), "{e:?}");
    assert!(e.message.starts_with("script:1:"), "{e:?}");
}

#[test]
fn objects_from_values_have_methods() {
    let mut inst = instance();
    let natives = FakeNatives::new();
    inst.run("return function(o) return o:add(9):get() end", &[], &natives).unwrap();
    // make object 0 exist in the natives
    let mut inst2 = instance();
    run(&mut inst2, "return 1").unwrap();
    let o = natives.call_global_for_test();
    let r = inst.call(FnRef(0), &[o], &natives).unwrap();
    assert_eq!(r, arr(vec![Value::Int(9)]));
}

trait MakeObj {
    fn call_global_for_test(&self) -> Value;
}

impl MakeObj for FakeNatives {
    fn call_global_for_test(&self) -> Value {
        struct NoCalls;
        impl engine::ScriptCalls for NoCalls {
            fn call(&self, _: FnRef, _: &[Value]) -> Result<Value, engine::ScriptError> {
                unreachable!()
            }
        }
        engine::Natives::call_global(self, "obj", vec![], &NoCalls).unwrap()
    }
}
