//! Value conversions in both directions.
mod common;

use common::*;
use engine::{FnRef, ObjRef, Value};

/// Passes `v` into Lua and back (`function(x) return x end`).
fn round_trip(v: Value) -> Value {
    let mut inst = instance();
    let natives = FakeNatives::new();
    let f = inst.run("return function(x) return x end", &[], &natives).unwrap();
    assert_eq!(f, Value::Function(FnRef(0)));
    let r = inst.call(FnRef(0), &[v], &natives).unwrap();
    inst.end_run();
    r
}

#[test]
fn scalars_round_trip() {
    for v in [
        Value::Nil,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(-7),
        Value::Int(i64::MAX),
        Value::Int(i64::MIN),
        Value::Double(1.5),
        Value::Double(-0.25),
        Value::Double(f64::INFINITY),
        s(""),
        s("héllo"),
    ] {
        assert_eq!(round_trip(v.clone()), v);
    }
    match round_trip(Value::Double(f64::NAN)) {
        Value::Double(d) => assert!(d.is_nan()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn integral_floats_become_ints() {
    assert_eq!(round_trip(Value::Double(2.0)), Value::Int(2));
    assert_eq!(eval("return 3.0"), Value::Int(3));
    assert_eq!(eval("return 2^53"), Value::Int(1 << 53));
    assert_eq!(eval("return 2^60"), Value::Double(2f64.powi(60)));
    assert_eq!(eval("return 7 // 2"), Value::Int(3));
    assert_eq!(eval("return 7 / 2"), Value::Double(3.5));
    assert_eq!(eval("return math.huge"), Value::Double(f64::INFINITY));
}

#[test]
fn binary_strings_are_safe() {
    let bin = b"a\0b\xffc".to_vec();
    assert_eq!(round_trip(Value::Bytes(bin.clone())), Value::Bytes(bin.clone()));
    assert_eq!(eval(r#"return "x\0y\255""#), Value::Bytes(b"x\0y\xff".to_vec()));
    assert_eq!(eval(r#"return #"x\0y\255""#), Value::Int(4));
    // valid UTF-8 bytes come back as String
    assert_eq!(round_trip(Value::Bytes(b"abc".to_vec())), s("abc"));
}

#[test]
fn args_are_binary_safe_strings() {
    let mut inst = instance();
    let natives = FakeNatives::new();
    let args = vec![b"one".to_vec(), b"\0\xff".to_vec(), b"".to_vec()];
    let r = inst.run("return {#ARGS, ARGS[1], ARGS[2], #ARGS[2], ARGS[3]}", &args, &natives).unwrap();
    assert_eq!(
        r,
        arr(vec![Value::Int(3), s("one"), Value::Bytes(b"\0\xff".to_vec()), Value::Int(2), s("")])
    );
}

#[test]
fn arrays_and_maps() {
    assert_eq!(eval("return {}"), arr(vec![]));
    assert_eq!(eval("return {1, 'a', true}"), arr(vec![Value::Int(1), s("a"), Value::Bool(true)]));
    assert_eq!(
        eval("return {b = 1, a = 2, [3] = 'x', [1.5] = 'y'}"),
        Value::Map(vec![
            (Value::Double(1.5), s("y")),
            (Value::Int(3), s("x")),
            (s("a"), Value::Int(2)),
            (s("b"), Value::Int(1)),
        ])
    );
    // a hole makes it a map
    assert_eq!(
        eval("local t = {1, 2, 3}; t[2] = nil; return t"),
        Value::Map(vec![(Value::Int(1), Value::Int(1)), (Value::Int(3), Value::Int(3))])
    );
    // integer keys outside 1..n
    assert_eq!(
        eval("return {[0] = 'z', 'a'}"),
        Value::Map(vec![(Value::Int(0), s("z")), (Value::Int(1), s("a"))])
    );
    // keys 1..n inserted out of order are still an array
    assert_eq!(
        eval("local t = {}; t[3] = 'c'; t[1] = 'a'; t[2] = 'b'; return t"),
        arr(vec![s("a"), s("b"), s("c")])
    );
}

#[test]
fn nested_round_trip() {
    let v = Value::Map(vec![
        (Value::Int(1), arr(vec![Value::Int(1), arr(vec![s("deep"), Value::Double(0.5)])])),
        (s("k"), Value::Map(vec![(s("x"), Value::Bytes(vec![0, 255]))])),
        (s("list"), arr(vec![])),
    ]);
    assert_eq!(round_trip(v.clone()), v);
    assert_eq!(
        eval("return {a = {b = {c = {1, 2}}}}"),
        Value::Map(vec![(
            s("a"),
            Value::Map(vec![(s("b"), Value::Map(vec![(s("c"), arr(vec![Value::Int(1), Value::Int(2)]))]))])
        )])
    );
}

#[test]
fn maps_from_values_have_converted_keys() {
    let v = Value::Map(vec![(Value::Int(2), s("two")), (s("x"), Value::Bool(true))]);
    let mut inst = instance();
    let natives = FakeNatives::new();
    inst.run("return function(m) return {m[2], m.x} end", &[], &natives).unwrap();
    let r = inst.call(FnRef(0), &[v], &natives).unwrap();
    assert_eq!(r, arr(vec![s("two"), Value::Bool(true)]));
}

#[test]
fn error_values_become_err_tables() {
    assert_eq!(round_trip(Value::Error("boom".into())), Value::Map(vec![(s("err"), s("boom"))]));
    let mut inst = instance();
    let natives = FakeNatives::new();
    inst.run("return function(e) return type(e) == 'table' and e.err end", &[], &natives).unwrap();
    assert_eq!(inst.call(FnRef(0), &[Value::Error("bad".into())], &natives).unwrap(), s("bad"));
}

#[test]
fn caught_error_objects_become_error_values() {
    assert_eq!(eval("local ok, e = pcall(fail, 'nope'); return e"), Value::Error("nope".into()));
}

#[test]
fn self_reference_is_an_error() {
    let e = eval_err("local t = {}; t.t = t; return t");
    assert!(e.message.contains("value nested too deeply"), "{e:?}");
    let e = eval_err("local t = {}; t[1] = t; return echo(t)");
    assert!(e.message.contains("value nested too deeply"), "{e:?}");
    assert!(e.message.starts_with("script:1:"), "{e:?}");
}

#[test]
fn unsupported_values_are_errors() {
    let e = eval_err("return coroutine.create(function() end)");
    assert!(e.message.contains("cannot convert a Lua thread"), "{e:?}");
}

#[test]
fn objects_round_trip() {
    let o = Value::Object(ObjRef { kind: "Obj", id: 7 });
    assert_eq!(round_trip(o.clone()), o);
    assert_eq!(round_trip(arr(vec![o.clone(), o.clone()])), arr(vec![o.clone(), o]));
}

#[test]
fn echo_converts_arguments() {
    assert_eq!(
        eval("return echo(1, 2.5, 'x', {1, 2}, {a = true}, false)"),
        arr(vec![
            Value::Int(1),
            Value::Double(2.5),
            s("x"),
            arr(vec![Value::Int(1), Value::Int(2)]),
            Value::Map(vec![(s("a"), Value::Bool(true))]),
            Value::Bool(false),
        ])
    );
    // natives see nil arguments; an array holding nil comes back to Lua with a hole
    assert_eq!(eval("local r = echo(1, nil, 3); return r[3]"), Value::Int(3));
}
