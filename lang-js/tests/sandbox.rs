//! The sandbox: no std/os modules, no require; only packages can be imported.
mod support;

use engine::{ScriptErrorKind, Value};
use support::{run, s};

#[test]
fn std_and_os_cannot_be_imported() {
    let e = run("import * as os from 'os'\nos.exec('ls')").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Runtime);
    assert!(e.message.contains("module 'os' not found"), "{e:?}");
    let e = run("import { readFile } from 'std'").unwrap_err();
    assert!(e.message.contains("module 'std' not found"), "{e:?}");
}

#[test]
fn dynamic_import_of_std_fails() {
    let e = run("import('os')").unwrap_err();
    assert_eq!(e.kind, ScriptErrorKind::Runtime);
    let v = run("let r = 'pending'; import('std').then(() => { r = 'loaded' }, () => { r = 'refused' }); Promise.resolve().then(() => 0).then(() => r)");
    assert_eq!(v.unwrap(), s("refused"));
}

#[test]
fn no_host_globals() {
    let v =
        run("[typeof require, typeof std, typeof os, typeof process, typeof module, typeof scriptArgs, typeof print]")
            .unwrap();
    let u = s("undefined");
    assert_eq!(v, Value::Array(vec![u; 7]));
}

#[test]
fn standard_library_is_there() {
    let v =
        run("[JSON.stringify({a: [1]}), Math.max(1, 2), new Map([[1, 2]]).size, /a+/.test('caa'), typeof Date.now()]")
            .unwrap();
    assert_eq!(v, Value::Array(vec![s("{\"a\":[1]}"), Value::Int(2), Value::Int(1), Value::Bool(true), s("number")]));
}
