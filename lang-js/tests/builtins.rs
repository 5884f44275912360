//! Builtins QuickJS runs natively: regex literals, huge arrays, and loops that must stop
//! at the time limit or on abort however they are reached.
mod support;

use engine::{Limits, ScriptErrorKind, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{instance, instance_with, s, Fake};

fn timed(ms: u64) -> Limits {
    Limits { memory_bytes: 256 << 20, timeout: Duration::from_millis(ms) }
}

#[test]
fn regex_literals_check_and_run() {
    let mut i = instance();
    for source in ["/a/.test('a')", "'a1b2'.replace(/[0-9]/g, '')", "let x = 4; x /= 2; /=/.test('=') && x === 2"] {
        i.check(source).unwrap_or_else(|e| panic!("{source}: {e:?}"));
    }
    assert_eq!(i.run("/a+/.exec('caab')[0]", &[], &Fake::default()).unwrap(), s("aa"));
    // A bad literal is still a syntax error.
    let e = i.check("/(/.test('a')").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Syntax, "{e:?}");
}

#[test]
fn huge_arrays_give_an_error_not_a_panic() {
    let mut i = instance();
    for len in ["2**31", "2**32 - 1"] {
        let e = i.run(&format!("const a = []; a.length = {len}; a"), &[], &Fake::default()).unwrap_err();
        assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
        let n: u64 = if len == "2**31" { 1 << 31 } else { (1 << 32) - 1 };
        assert_eq!(
            e.message,
            format!("array of {n} elements too large to convert: at most 536870912 bytes of values may be converted")
        );
        let e = i.run(&format!("echo(new Array({len}))"), &[], &Fake::default()).unwrap_err();
        assert!(e.message.starts_with(&format!("array of {n} elements too large")), "{e:?}");
    }
    assert_eq!(i.run("const a = [1]; a.length = 3; a", &[], &Fake::default()).unwrap(),
        Value::Array(vec![Value::Int(1), Value::Nil, Value::Nil]));
}

/// Scripts that looped natively without polling (or for far longer than the limit).
const HANGS: &[&str] = &[
    "Array.prototype.indexOf.call({length: 2**53 - 1}, 1)",
    "Array.prototype.lastIndexOf.call({length: 2**53 - 1}, 1)",
    "Array.prototype.includes.call({length: 2**53 - 1}, 1)",
    "/(a+)+$/.test('a'.repeat(40) + 'b')",
    "JSON.stringify(new Array(2**32 - 1))",
    "JSON.stringify({a: new Array(2**31)})",
    "Array.from({length: 2e6}, (_, i) => i).sort()",
    "Array.from({length: 2e6}, (_, i) => i).toSorted()",
    "new Float64Array(1e7).map((_, i) => -i).sort()",
    "const s = 'a'.repeat(2**24); s.indexOf('a'.repeat(2**20) + 'b')",
    "const s = 'a'.repeat(2**24); s.includes('a'.repeat(2**20) + 'b')",
];

#[test]
fn native_loops_stop_at_the_time_limit() {
    let fake = Fake::default();
    for source in HANGS {
        // An instance per case: what one case left for the collector must not make the
        // next one hit the memory limit before the time limit.
        let mut i = instance_with(timed(200));
        let start = Instant::now();
        let e = i.run(source, &[], &fake).unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind, ScriptErrorKind::Timeout, "{source}: {e:?}");
        assert_eq!(e.message, "script timed out: the call ran longer than rg.script-timeout (200 ms)");
        // Debug builds are slow; what matters is that it stops near the limit.
        assert!(took < Duration::from_millis(1500), "{source}: {took:?}");
        assert_eq!(i.run("'next'", &[], &fake).unwrap(), s("next"));
    }
}

/// Array-likes longer than the memory limit could hold as an array.
const REFUSED: &[(&str, &str)] = &[
    ("Array.prototype.join.call({length: 2**32 - 1})", "Array.prototype.join: length 4294967295"),
    ("new Array(2**32 - 1).join()", "Array.prototype.join: length 4294967295"),
    ("new Array(2**32 - 1).toString()", "Array.prototype.join: length 4294967295"),
    ("Array.prototype.fill.call({length: 2**53 - 1}, 1)", "Array.prototype.fill: length 9007199254740991"),
    ("Array.prototype.reverse.call({length: 2**53 - 1})", "Array.prototype.reverse: length 9007199254740991"),
    ("new Array(2**32 - 1).sort()", "Array.prototype.sort: length 4294967295"),
    ("Array.prototype.copyWithin.call({length: 2**53 - 1}, 0, 1)", "Array.prototype.copyWithin: length 9007199254740991"),
    ("new Array(2**32 - 1).slice(0)", "Array.prototype.slice: length 4294967295"),
    ("[].concat(new Array(2**32 - 1))", "Array.prototype.concat: length 4294967295"),
    ("new Array(2**32 - 1).flat()", "Array.prototype.flat: length 4294967295"),
    ("Array.prototype.shift.call({length: 2**53 - 1})", "Array.prototype.shift: length 9007199254740991"),
];

#[test]
fn huge_array_likes_are_refused_by_generic_array_methods() {
    let mut i = instance_with(timed(200));
    let fake = Fake::default();
    for (source, start) in REFUSED {
        let e = i.run(source, &[], &fake).unwrap_err();
        assert_eq!(e.kind, ScriptErrorKind::Runtime, "{source}: {e:?}");
        let expected = format!(
            "RangeError: {start} is more than the 16777216 elements the JS memory limit (268435456 bytes) can hold at script:1"
        );
        assert_eq!(e.message, expected, "{source}");
    }
    // Catchable, like any RangeError.
    let r = i.run("try { new Array(2**32 - 1).join() } catch (e) { e instanceof RangeError }", &[], &fake);
    assert_eq!(r.unwrap(), Value::Bool(true));
}

#[test]
fn string_searches_too_long_to_bound_are_refused() {
    let mut i = instance_with(timed(200));
    let fake = Fake::default();
    for name in ["split", "replace", "replaceAll", "lastIndexOf"] {
        let source = format!("const s = 'a'.repeat(2**24); s.{name}('b' + 'a'.repeat(2**20), '')");
        let e = i.run(&source, &[], &fake).unwrap_err();
        assert_eq!(
            e.message,
            format!("RangeError: String.prototype.{name}: searching 16777216 characters for 1048577 is more work than allowed (4294967296 character comparisons) at script:1")
        );
    }
}

#[test]
fn ordinary_inputs_keep_their_standard_results() {
    let mut i = instance();
    let fake = Fake::default();
    for (source, expected) in [
        ("[3, 1, 2, 10, undefined, , 'b', 'a'].sort().join()", s("1,10,2,3,a,b,,")),
        ("Array.from({length: 20000}, (_, i) => 19999 - i).sort().slice(0, 3).join()", s("0,1,10")),
        ("Array.from({length: 20000}, (_, i) => i % 7).toSorted((a, b) => b - a)[0]", Value::Int(6)),
        ("new Float64Array([3, -0, 0, NaN, 1, -Infinity]).sort().join()", s("-Infinity,0,0,1,3,NaN")),
        ("Object.is(new Float64Array(Array.from({length: 20000}, (_, i) => i % 2 ? -0 : 0)).sort()[0], -0)", Value::Bool(true)),
        ("Array.prototype.join.call({length: 3, 0: 'a', 2: 'c'}, '-')", s("a--c")),
        ("[1, [2, [3]]].flat(Infinity).concat([4], 5).reverse().join('')", s("54321")),
        ("Array.prototype.join.length + Array.prototype.sort.name + [].fill.length", s("1sort1")),
        ("Object.getOwnPropertyDescriptor(Array.prototype, 'join').enumerable", Value::Bool(false)),
        ("JSON.stringify({a: [1, {b: 2}], c: 'x', d: undefined, e: {toJSON() { return 5 }}})", s(r#"{"a":[1,{"b":2}],"c":"x","e":5}"#)),
        ("JSON.stringify({a: 1, b: 2}, ['a']) + JSON.stringify([1], null, 1)", s("{\"a\":1}[\n 1\n]")),
        ("JSON.stringify({a: 1, b: 'x'}, (k, v) => typeof v === 'number' ? v + 1 : v)", s(r#"{"a":2,"b":"x"}"#)),
        ("'xxabcab'.includes('ab', 3) + ' ' + 'xxabcab'.indexOf('ab', -5) + ' ' + 'ab'.indexOf('', 9)", s("true 2 2")),
        ("'a'.repeat(5000).indexOf('a'.repeat(3000) + 'b')", Value::Int(-1)),
        ("('a'.repeat(2**20) + 'b').indexOf('a'.repeat(2**12) + 'b')", Value::Int((1 << 20) - (1 << 12))),
        ("'a,b,,c'.split(',').length + 'abcabc'.lastIndexOf('bc') + 'aXbX'.replaceAll('X', '-')", s("8a-b-")),
        ("try { 'a'.includes(/a/) } catch (e) { e.name }", s("TypeError")),
        ("try { String.prototype.indexOf.call(null, 'a') } catch (e) { e.name }", s("TypeError")),
    ] {
        assert_eq!(i.run(source, &[], &fake).unwrap_or_else(|e| panic!("{source}: {e:?}")), expected, "{source}");
    }
}

#[test]
fn abort_stops_a_native_loop() {
    let mut i = instance_with(Limits::default());
    let fake = Fake::default();
    for source in HANGS.iter().filter(|s| !s.contains("Array.from")) {
        let flag = Arc::new(AtomicBool::new(false));
        i.clock().set_abort_flag(flag.clone());
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, Ordering::Relaxed);
        });
        let start = Instant::now();
        let e = i.run(source, &[], &fake).unwrap_err();
        setter.join().unwrap();
        assert_eq!(e.kind, ScriptErrorKind::Aborted, "{source}: {e:?}");
        assert!(start.elapsed() < Duration::from_millis(1500), "{source}: {:?}", start.elapsed());
        i.clock().reset_abort_flag();
    }
}
