//! Function references, callbacks, nested native <-> script calls, host objects, runs.
mod support;

use engine::{FnRef, ObjRef, ScriptErrorKind, Value};
use support::{instance, run, s, Fake};

#[test]
fn function_refs_are_numbered_in_order_of_first_conversion() {
    let mut i = instance();
    let fake = Fake::default();
    let v =
        i.run("const f = (x) => x * 2; const g = function () { return 'g' }; echo(f, g, f, [g])", &[], &fake).unwrap();
    let (f, g) = (Value::Function(FnRef(0)), Value::Function(FnRef(1)));
    assert_eq!(v, Value::Array(vec![f.clone(), g.clone(), f, Value::Array(vec![g])]));
    assert_eq!(i.call(FnRef(0), &[Value::Int(21)], &fake).unwrap(), Value::Int(42));
    assert_eq!(i.call(FnRef(1), &[], &fake).unwrap(), s("g"));
    assert!(i.call(FnRef(7), &[], &fake).is_err());
    i.end_run();
    // A new run numbers from 0 again, and the old functions are gone.
    assert!(i.call(FnRef(0), &[], &fake).is_err());
    assert_eq!(i.run("echo(() => 1)", &[], &fake).unwrap(), Value::Array(vec![Value::Function(FnRef(0))]));
    assert_eq!(i.call(FnRef(0), &[], &fake).unwrap(), Value::Int(1));
}

#[test]
fn frozen_functions_keep_their_ref() {
    let v = run("const f = Object.freeze(() => 1); echo(f, () => 2, f)").unwrap();
    let (f0, f1) = (Value::Function(FnRef(0)), Value::Function(FnRef(1)));
    assert_eq!(v, Value::Array(vec![f0.clone(), f1, f0]));
}

#[test]
fn functions_passed_back_are_the_same_function() {
    assert_eq!(run("const f = () => 1; const [g] = echo(f); f === g").unwrap(), Value::Bool(true));
}

#[test]
fn callbacks_and_nested_calls() {
    assert_eq!(run("apply(x => x + 1, 41)").unwrap(), Value::Int(42));
    // native -> script -> native -> script
    let v = run("apply(function (x) { return echo(x, apply(y => y * 2, x)) }, 21)").unwrap();
    assert_eq!(v, Value::Array(vec![Value::Int(21), Value::Int(42)]));
    // Deeper nesting.
    let v = run("const rec = (n) => n == 0 ? 'done' : apply(rec, n - 1); rec(20)").unwrap();
    assert_eq!(v, s("done"));
    // Callbacks see the run's globals and closures.
    assert_eq!(
        run("let total = 0; [1, 2, 3].forEach(x => apply(y => { total += y }, x)); total").unwrap(),
        Value::Int(6)
    );
}

#[test]
fn runaway_nesting_is_a_stack_overflow() {
    let e = run("const rec = (n) => apply(rec, n + 1); rec(0)").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Runtime);
    // The depth bound (200 callbacks from natives) or the real-stack bound, whichever the
    // build reaches first: debug frames are larger.
    assert!(
        e.message.contains("script calls nest too deeply: more than 200 callbacks from natives are running") || e.message.contains("stack"),
        "{e:?}"
    );
}

#[test]
fn errors_in_callbacks_propagate() {
    let e = run("apply(() => { throw new Error('inner') })").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Runtime);
    assert!(e.message.contains("inner"), "{e:?}");
    // And can be caught by the script.
    let v = run("try { apply(() => { throw new Error('inner') }) } catch (e) { 'caught: ' + e.message }").unwrap();
    assert!(matches!(&v, Value::String(m) if m.starts_with("caught: Error: inner")), "{v:?}");
}

#[test]
fn native_errors_keep_their_kind() {
    let e = run("fail('bad reader')").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Usage);
    assert_eq!(e.message, "bad reader");
    // Through a callback too.
    let e = run("apply(() => fail('deep'))").unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ScriptErrorKind::Usage, "deep"));
    // Rethrown by the script: still the same error.
    let e = run("try { fail('again') } catch (e) { throw e }").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Usage);
    // Catchable like any error.
    assert_eq!(run("try { fail('x') } catch (e) { e.message }").unwrap(), s("x"));
}

#[test]
fn fatal_native_errors_cannot_be_caught() {
    let e = run("try { fatal() } catch (e) { 'swallowed' }").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout);
    // Not even by a promise job, whose exceptions are otherwise dropped.
    let e = run("Promise.resolve().then(() => fatal()); 'done'").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Timeout);
    assert_eq!(run("Promise.resolve().then(() => fail('x')); 'done'").unwrap(), s("done"));
}

#[test]
fn host_objects_and_chaining() {
    let fake = Fake::default();
    let mut i = instance();
    let v = i.run("obj().add(1).add('two', [3]).get()", &[], &fake).unwrap();
    assert_eq!(v, Value::Array(vec![Value::Int(1), s("two"), Value::Array(vec![Value::Int(3)])]));
    i.end_run();
    let v = i
        .run("const o = obj(); const p = o.add(1); [o === p, echo(o), typeof o.add, Object.keys(o).length]", &[], &fake)
        .unwrap();
    let o = Value::Object(ObjRef { kind: "Counter", id: 1 });
    assert_eq!(v, Value::Array(vec![Value::Bool(true), Value::Array(vec![o.clone()]), s("function"), Value::Int(0)]));
    // Returned from the run: the same object.
    assert_eq!(i.run("obj().add(5)", &[], &fake).unwrap(), Value::Object(ObjRef { kind: "Counter", id: 2 }));
    // Methods with a callback.
    assert_eq!(i.run("obj().add(x => x).get().length", &[], &fake).unwrap(), Value::Int(1));
    // A look-alike is a plain object.
    let v = i
        .run("const fake = {}; Object.defineProperty(fake, '__gears_object__', {value: 0}); echo(fake)", &[], &fake)
        .unwrap();
    assert_eq!(v, Value::Array(vec![Value::Map(vec![])]));
}

#[test]
fn each_run_has_fresh_globals() {
    let mut i = instance();
    let fake = Fake::default();
    i.run("globalThis.leak = 1; var x = 2; let y = 3; Array.prototype.evil = 1; echo = null", &[], &fake).unwrap();
    i.end_run();
    let v = i.run("[typeof leak, typeof x, typeof y, [].evil, typeof echo]", &[], &fake).unwrap();
    let u = s("undefined");
    assert_eq!(v, Value::Array(vec![u.clone(), u.clone(), u, Value::Nil, s("function")]));
    // Without end_run in between too.
    i.run("var z = 1", &[], &fake).unwrap();
    assert_eq!(i.run("typeof z", &[], &fake).unwrap(), s("undefined"));
}

#[test]
fn native_functions_belong_to_their_run() {
    let mut i = instance();
    let fake = Fake::default();
    i.run("Function.prototype.evil = 1; Object.getPrototypeOf(echo).evil2 = 2; obj().add.evil3 = 3", &[], &fake)
        .unwrap();
    i.end_run();
    let v = i.run("const o = obj(); [echo.evil, echo.evil2, o.add.evil3, echo instanceof Function, o.add instanceof Function]", &[], &fake).unwrap();
    assert_eq!(v, Value::Array(vec![Value::Nil, Value::Nil, Value::Nil, Value::Bool(true), Value::Bool(true)]));
}

#[test]
fn memory_does_not_grow_across_runs() {
    let mut i = instance();
    let fake = Fake::default();
    let script = "const big = []; for (let k = 0; k < 2000; k++) big.push({k, s: 'x' + k}); \
                  const cyc = {}; cyc.self = cyc; echo(() => big, cyc.self === cyc); Promise.resolve().then(() => big)";
    // Warm up: the allocator keeps some partly used arenas around.
    for _ in 0..100 {
        i.run(script, &[], &fake).unwrap();
        i.end_run();
    }
    let base = i.memory_used();
    for _ in 0..100 {
        i.run(script, &[], &fake).unwrap();
        i.end_run();
    }
    let after = i.memory_used();
    assert!(after <= base + 64 * 1024, "memory grew from {base} to {after}");
}

#[test]
fn leftover_promise_jobs_do_not_run_forever() {
    let mut i = instance();
    let fake = Fake::default();
    // A job that never settles and loops: the run ends when the limit... here, the
    // run's result does not depend on it, but its jobs run before the result is taken.
    let v = i.run(
        "let n = 0; const tick = () => { n++; if (n < 1000) Promise.resolve().then(tick) }; tick(); 'ok'",
        &[],
        &fake,
    );
    assert_eq!(v.unwrap(), s("ok"));
    i.end_run();
    assert_eq!(i.run("1", &[], &fake).unwrap(), Value::Int(1));
}
