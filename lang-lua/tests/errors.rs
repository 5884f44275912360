//! Error kinds and messages.
mod common;

use common::*;
use engine::ScriptErrorKind;

#[test]
fn syntax_errors_carry_the_line() {
    let mut inst = instance();
    let e = inst.check("local x = 1\nx = = 2").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Syntax);
    assert!(e.message.starts_with("script:2: unexpected symbol near '='"), "{e:?}");
    assert!(inst.check("return 1").is_ok());
    let e = run(&mut inst, "return (").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Syntax);
    assert!(e.message.starts_with("script:1:"), "{e:?}");
    // a binary chunk is not a script
    let e = inst.check("\x1bLua").unwrap_err();
    assert_kind(&e, ScriptErrorKind::Syntax);
}

#[test]
fn runtime_errors_carry_the_line_without_traceback() {
    let e = eval_err("local x = 1\nlocal y = nil\nreturn y.z");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert_eq!(e.message, "script:3: attempt to index a nil value (local 'y')");
    let e = eval_err("\n\nerror('boom')");
    assert_eq!(e.message, "script:3: boom");
    let e = eval_err("local function f() error('deep', 2) end\nf()");
    assert_eq!(e.message, "script:2: deep");
    let e = eval_err("error('no position', 0)");
    assert_eq!(e.message, "no position");
    let e = eval_err("return 1 + {}");
    assert!(e.message.starts_with("script:1: attempt to perform arithmetic"), "{e:?}");
    assert!(!e.message.contains("traceback"), "{e:?}");
}

#[test]
fn error_tables_are_readable() {
    assert_eq!(eval_err("error({err = 'custom failure'})").message, "custom failure");
    assert_eq!(eval_err("error({code = 42, reason = 'x'})").message, "{code: 42, reason: x}");
    assert_eq!(eval_err("error(42)").message, "42");
    // the table itself is still what pcall returns
    assert_eq!(
        eval("local ok, e = pcall(error, {code = 7}) return e.code"),
        engine::Value::Int(7)
    );
}

#[test]
fn native_errors_keep_kind_and_message() {
    let e = eval_err("local x = 1\nfail('bad reader')");
    assert_kind(&e, ScriptErrorKind::Usage);
    assert_eq!(e.message, "bad reader");
    // rethrown after pcall: still the native's error
    let e = eval_err("local ok, e = pcall(fail, 'again') error(e)");
    assert_kind(&e, ScriptErrorKind::Usage);
    assert_eq!(e.message, "again");
}

#[test]
fn rust_side_errors_get_a_position() {
    let e = eval_err("local t = {}\nt[1] = t\necho(t)");
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert_eq!(e.message, "script:3: value nested too deeply");
}
