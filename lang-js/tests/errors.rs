//! Syntax and runtime errors, and `check`.
mod support;

use engine::{ScriptErrorKind, Value};
use support::{instance, run, s};

#[test]
fn syntax_errors_have_kind_and_line() {
    let e = run("let a = 1;\nlet b = ;\n").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Syntax);
    assert!(e.message.starts_with("SyntaxError: "), "{e:?}");
    assert!(e.message.ends_with("at script:2"), "{e:?}");
    let e = run("function f( {").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Syntax);
    assert!(e.message.contains("script:1"), "{e:?}");
}

#[test]
fn runtime_errors_have_kind_and_line() {
    let e = run("let a = 1;\n\nnull.x").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Runtime);
    assert!(e.message.starts_with("TypeError: "), "{e:?}");
    assert!(e.message.ends_with("at script:3"), "{e:?}");
    // The innermost frame in the script, inside functions too.
    let e = run("function f() {\n  throw new RangeError('too far')\n}\nf()").unwrap_err();
    assert_eq!(e.message, "RangeError: too far at script:2");
    // A SyntaxError thrown while running is a runtime error.
    let e = run("JSON.parse('{')").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Runtime);
    assert!(e.message.starts_with("SyntaxError"), "{e:?}");
    let e = run("undefinedThing + 1").unwrap_err();
    assert!(e.message.starts_with("ReferenceError") && e.message.contains("script:1"), "{e:?}");
}

#[test]
fn thrown_non_errors() {
    let e = run("throw 'plain'").unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (ScriptErrorKind::Runtime, "uncaught exception: plain"));
    let e = run("throw 42").unwrap_err();
    assert_eq!(e.message, "uncaught exception: 42");
    let e = run("throw {message: 'obj'}").unwrap_err();
    assert_eq!(e.message, "uncaught exception: obj");
    let e = run("throw null").unwrap_err();
    assert_eq!(e.message, "uncaught exception: null");
}

#[test]
fn stack_overflow_is_a_runtime_error() {
    let e = run("function f() { return f() + 1 }\nf()").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Runtime, "{e:?}");
    let mut i = instance();
    assert_eq!(i.run("1", &[], &support::Fake::default()).unwrap(), Value::Int(1));
}

#[test]
fn check_compiles_without_running() {
    let mut i = instance();
    i.check("while (true) {}").unwrap();
    i.check("fail('not run')").unwrap();
    let e = i.check("let = ;").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Syntax);
    assert!(e.message.contains("script:1"), "{e:?}");
    // Module scripts compile; their imports are not resolved (see packages.rs).
    i.check("import x from 'y'").unwrap();
}

#[test]
fn sources_with_nul_bytes() {
    assert_eq!(run("'a' // \0 comment").unwrap(), s("a"));
}
