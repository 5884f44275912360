//! Value conversions, both directions.
mod support;

use engine::{FnRef, Value};
use support::{instance, map, run, s, Fake};

#[test]
fn scalars() {
    assert_eq!(run("null").unwrap(), Value::Nil);
    assert_eq!(run("undefined").unwrap(), Value::Nil);
    assert_eq!(run("true").unwrap(), Value::Bool(true));
    assert_eq!(run("42").unwrap(), Value::Int(42));
    assert_eq!(run("-0").unwrap(), Value::Int(0));
    assert_eq!(run("3.0").unwrap(), Value::Int(3));
    assert_eq!(run("0.1").unwrap(), Value::Double(0.1));
    assert_eq!(run("2**53").unwrap(), Value::Int(1 << 53));
    assert_eq!(run("-(2**53)").unwrap(), Value::Int(-(1 << 53)));
    assert_eq!(run("2**53 * 4").unwrap(), Value::Double(2f64.powi(55)));
    assert_eq!(run("Infinity").unwrap(), Value::Double(f64::INFINITY));
    assert!(matches!(run("NaN").unwrap(), Value::Double(d) if d.is_nan()));
    assert_eq!(run("'héllo'").unwrap(), s("héllo"));
    assert_eq!(run("'a\\u0000b'").unwrap(), s("a\0b"));
}

#[test]
fn bigints() {
    assert_eq!(run("12n").unwrap(), Value::Int(12));
    assert_eq!(run("9223372036854775807n").unwrap(), Value::Int(i64::MAX));
    assert_eq!(run("-9223372036854775808n").unwrap(), Value::Int(i64::MIN));
    assert_eq!(run("9223372036854775808n").unwrap(), s("9223372036854775808"));
}

#[test]
fn large_ints_go_to_js_as_bigint() {
    let mut i = instance();
    let fake = Fake::default();
    let f = i.run("(x) => [typeof x, x]", &[], &fake).unwrap();
    assert_eq!(f, Value::Function(FnRef(0)));
    let big = Value::Int(i64::MAX);
    assert_eq!(i.call(FnRef(0), &[big.clone()], &fake).unwrap(), Value::Array(vec![s("bigint"), big]));
    let small = Value::Int(1 << 40);
    assert_eq!(i.call(FnRef(0), &[small.clone()], &fake).unwrap(), Value::Array(vec![s("number"), small]));
    assert_eq!(
        i.call(FnRef(0), &[Value::Double(1.5)], &fake).unwrap(),
        Value::Array(vec![s("number"), Value::Double(1.5)])
    );
}

#[test]
fn arrays_and_objects() {
    let v = run("({b: 1, a: [1, 'x', [null, {c: true}]], 2: 'two'})").unwrap();
    // Integer-like keys come first, as JS enumerates them.
    let expected = map(&[
        ("2", s("two")),
        ("b", Value::Int(1)),
        (
            "a",
            Value::Array(vec![Value::Int(1), s("x"), Value::Array(vec![Value::Nil, map(&[("c", Value::Bool(true))])])]),
        ),
    ]);
    assert_eq!(v, expected);
    // Holes are nil; non-enumerable properties are skipped.
    assert_eq!(run("[1,,3]").unwrap(), Value::Array(vec![Value::Int(1), Value::Nil, Value::Int(3)]));
    assert_eq!(
        run("const o = {a: 1}; Object.defineProperty(o, 'h', {value: 2}); o").unwrap(),
        map(&[("a", Value::Int(1))])
    );
}

#[test]
fn echo_round_trip() {
    let v = run("echo(1, 1.5, 'a', true, null, undefined, [1, [2]], {k: {c: 'x'}})").unwrap();
    assert_eq!(
        v,
        Value::Array(vec![
            Value::Int(1),
            Value::Double(1.5),
            s("a"),
            Value::Bool(true),
            Value::Nil,
            Value::Nil,
            Value::Array(vec![Value::Int(1), Value::Array(vec![Value::Int(2)])]),
            map(&[("k", map(&[("c", s("x"))]))]),
        ])
    );
    // And back into JS: a map from a native is a plain object.
    assert_eq!(run("const [o] = echo({a: 1}); o.a + Object.keys(o).length").unwrap(), Value::Int(2));
}

#[test]
fn binary_values() {
    assert_eq!(run("bytes()").unwrap(), Value::Bytes(vec![0, 255, 1]));
    assert_eq!(
        run("const b = bytes(); [b instanceof Uint8Array, b.length, b[1]]").unwrap(),
        Value::Array(vec![Value::Bool(true), Value::Int(3), Value::Int(255)])
    );
    assert_eq!(run("new Uint8Array([104, 105])").unwrap(), Value::Bytes(b"hi".to_vec()));
    assert_eq!(run("new Uint8Array([1, 2, 3]).buffer").unwrap(), Value::Bytes(vec![1, 2, 3]));
    assert_eq!(run("new Uint8Array([1, 2, 3]).subarray(1)").unwrap(), Value::Bytes(vec![2, 3]));
    assert_eq!(run("new Int16Array([-1, 2])").unwrap(), Value::Array(vec![Value::Int(-1), Value::Int(2)]));
}

#[test]
fn args_are_strings_or_bytes() {
    let mut i = instance();
    let args = vec![b"key".to_vec(), vec![0xff, 0x00, 0x61], "é".as_bytes().to_vec()];
    let v =
        i.run("[ARGS.length, typeof ARGS[0], ARGS[1] instanceof Uint8Array, ARGS]", &args, &Fake::default()).unwrap();
    assert_eq!(
        v,
        Value::Array(vec![
            Value::Int(3),
            s("string"),
            Value::Bool(true),
            Value::Array(vec![s("key"), Value::Bytes(vec![0xff, 0, 0x61]), s("é")]),
        ])
    );
}

#[test]
fn errors_as_values() {
    assert_eq!(run("new TypeError('bad thing')").unwrap(), Value::Error("bad thing".into()));
    assert_eq!(
        run("const e = errval('boom'); [e instanceof Error, e.message]").unwrap(),
        Value::Array(vec![Value::Bool(true), s("boom")])
    );
}

#[test]
fn maps_with_non_string_keys() {
    let mut i = instance();
    let fake = Fake::default();
    i.run("(m) => Object.keys(m).join(',')", &[], &fake).unwrap();
    let m = Value::Map(vec![(Value::Int(1), Value::Nil), (s("x"), Value::Nil), (Value::Bytes(vec![b'y']), Value::Nil)]);
    assert_eq!(i.call(FnRef(0), &[m], &fake).unwrap(), s("1,x,y"));
}

#[test]
fn cycles_and_symbols_are_errors() {
    let e = run("const a = []; a.push(a); a").unwrap_err();
    assert!(e.message.contains("nested too deeply"), "{e:?}");
    let e = run("const o = {}; o.self = o; echo(o)").unwrap_err();
    assert!(e.message.contains("nested too deeply"), "{e:?}");
    let e = run("Symbol('x')").unwrap_err();
    assert!(e.message.contains("symbol"), "{e:?}");
    // Deep but not cyclic is fine.
    assert!(run("let a = 1; for (let i = 0; i < 90; i++) a = [a]; a").is_ok());
}

#[test]
fn exponential_sharing_is_bounded() {
    // 2^60 leaves once copied: must fail cleanly, not exhaust memory.
    let e = run("let a = ['x'.repeat(100)]; for (let i = 0; i < 60; i++) a = [a, a]; a").unwrap_err();
    assert!(e.message.contains("too large"), "{e:?}");
}

#[test]
fn async_results_settle() {
    assert_eq!(run("(async () => 7)()").unwrap(), Value::Int(7));
    assert_eq!(run("Promise.resolve(1).then(x => x + 1)").unwrap(), Value::Int(2));
    let e = run("Promise.reject(new Error('no'))").unwrap_err();
    assert!(e.message.contains("no"), "{e:?}");
}
