//! The native stack: deep JS recursion, deep parsing and nested callbacks end with an
//! error wherever the runtime is entered from, never with SIGSEGV.
mod support;

use engine::{Limits, ScriptErrorKind};
use support::{instance, instance_with, Fake};

const RECURSE: &str = "function f(n) { return n === 0 ? 0 : 1 + f(n - 1) } f(1e7)";
const DEPTH: &str =
    "let d = 0; function f() { d++; f() } try { f() } catch (e) { if (!(e instanceof RangeError)) throw e } d";

/// Runs `f` on a new thread with a stack of `stack` bytes, after using `used` bytes of it.
fn on_thread<R: Send + 'static>(stack: usize, used: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new().stack_size(stack).spawn(move || with_stack_used(used, f)).unwrap().join().unwrap()
}

#[inline(never)]
fn with_stack_used<R>(bytes: usize, f: impl FnOnce() -> R) -> R {
    let mut pad = [0u8; 16 * 1024];
    std::hint::black_box(&mut pad);
    if bytes <= pad.len() {
        f()
    } else {
        let r = with_stack_used(bytes - pad.len(), f);
        std::hint::black_box(&pad);
        r
    }
}

#[test]
fn an_instance_first_used_deep_in_a_worker_stack_reports_the_overflow() {
    // A sync trigger's instance made deep inside another script on a 2 MiB worker.
    let e = on_thread(2 << 20, 1536 << 10, || instance().run(RECURSE, &[], &Fake::default()).unwrap_err());
    assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
    assert!(e.message.contains("Maximum call stack size exceeded"), "{e:?}");
}

#[test]
fn an_instance_made_shallow_and_called_deep_reports_the_overflow() {
    // A thread smaller than QuickJS's default 1 MiB limit, entered 256 KiB deeper than
    // where the instance was made.
    let e = on_thread(1 << 20, 0, || {
        let mut i = instance();
        assert_eq!(i.run("1", &[], &Fake::default()).unwrap(), engine::Value::Int(1));
        with_stack_used(256 << 10, || i.run(RECURSE, &[], &Fake::default()).unwrap_err())
    });
    assert!(e.message.contains("Maximum call stack size exceeded"), "{e:?}");
}

#[test]
fn the_limit_follows_the_thread_stack() {
    let depth = |stack: usize| {
        on_thread(stack, 0, || instance().run(DEPTH, &[], &Fake::default()).unwrap().as_i64().unwrap())
    };
    let (small, big) = (depth(2 << 20), depth(8 << 20));
    // QuickJS's default (1 MiB from where the runtime was made) gave both the same depth.
    assert!(big > small * 3, "2 MiB thread: {small} frames, 8 MiB thread: {big}");
    // And the instance is fine afterwards, on the same thread.
    on_thread(2 << 20, 0, || {
        let mut i = instance();
        i.run(DEPTH, &[], &Fake::default()).unwrap();
        assert_eq!(i.run("2 + 2", &[], &Fake::default()).unwrap(), engine::Value::Int(4));
    });
}

#[test]
fn entering_with_too_little_stack_left_is_refused() {
    let e = on_thread(2 << 20, (2 << 20) - (200 << 10), || instance().run("1", &[], &Fake::default()).unwrap_err());
    assert!(
        e.message.starts_with("script calls nest too deeply: less than 64 KiB of this thread's"),
        "{e:?}"
    );
}

#[test]
fn nested_callbacks_are_limited_by_depth() {
    let e = on_thread(8 << 20, 0, || {
        instance().run("function f(n) { return n === 0 ? 0 : apply(f, n - 1) } f(100000)", &[], &Fake::default())
    })
    .unwrap_err();
    assert_eq!(
        e.message,
        "script calls nest too deeply: more than 200 callbacks from natives are running",
        "{e:?}"
    );
    // Within the limit, fine.
    let r = on_thread(8 << 20, 0, || {
        instance().run("function f(n) { return n === 0 ? 'deep' : apply(f, n - 1) } f(150)", &[], &Fake::default())
    });
    assert_eq!(r.unwrap(), support::s("deep"));
}

#[test]
fn sources_that_nest_too_deeply_to_parse_say_so() {
    let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
    for source in [deep.clone(), format!("export const a = 1; {deep}")] {
        let e = on_thread(2 << 20, 0, move || {
            let mut i = instance();
            let checked = i.check(&source).unwrap_err();
            let ran = i.run(&source, &[], &Fake::default()).unwrap_err();
            (checked, ran)
        });
        for e in [e.0, e.1] {
            assert_eq!(e.kind, ScriptErrorKind::Syntax, "{e:?}");
            assert!(
                e.message.starts_with("SyntaxError: the script nests too deeply to compile: parsing it needs more than the "),
                "{e:?}"
            );
            assert!(e.message.ends_with(" KiB of native stack JavaScript may use on this thread"), "{e:?}");
        }
    }
    // Deep but within the limit compiles (QuickJS's 1 MiB default refused 1000 levels).
    let ok = format!("{}1{}", "[".repeat(1500), "]".repeat(1500));
    let r = on_thread(8 << 20, 0, move || instance().run(&format!("JSON.stringify({ok}).length"), &[], &Fake::default()));
    assert_eq!(r.unwrap(), engine::Value::Int(3001));
}

#[test]
fn sources_too_large_for_the_memory_limit_say_so() {
    let limit = 16_000_000;
    let big = format!("let x = 0;{}x", "x += 1;".repeat(300_000));
    for source in [big.clone(), format!("export const q = 1; {big}")] {
        let mut i = instance_with(Limits { memory_bytes: limit, timeout: std::time::Duration::ZERO });
        for e in [i.check(&source).unwrap_err(), i.run(&source, &[], &Fake::default()).unwrap_err()] {
            assert_eq!(e.kind, ScriptErrorKind::Memory, "{e:?}");
            assert_eq!(e.message, "script ran out of memory: the runtime is limited to 16000000 bytes");
        }
        assert_eq!(i.run("'fine'", &[], &Fake::default()).unwrap(), support::s("fine"));
    }
}
