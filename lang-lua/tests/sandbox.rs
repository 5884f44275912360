//! Sandbox: unsafe libraries and functions are absent, `load` is text only and scoped to
//! the run, library changes do not leak.
mod common;

use common::*;
use engine::{ScriptErrorKind, Value};

fn refused(source: &str, needle: &str) {
    let e = eval_err(source);
    assert_kind(&e, ScriptErrorKind::Runtime);
    assert!(e.message.contains(needle), "{source}: {e:?}");
    assert!(e.message.starts_with("script:"), "{source}: {e:?}");
}

#[test]
fn escapes_are_refused() {
    refused("return io.open('/etc/passwd')", "global 'io'");
    refused("return os.execute('true')", "field 'execute'");
    refused("return os.getenv('HOME')", "field 'getenv'");
    refused("return os.exit()", "field 'exit'");
    refused("return require('x')", "module 'x' not found");
    refused("return package.loadlib", "global 'package'");
    refused("return dofile('/etc/passwd')", "global 'dofile'");
    refused("return loadfile('/etc/passwd')", "global 'loadfile'");
    refused("return debug.getinfo(1)", "global 'debug'");
    refused("return string.dump(function() end)", "field 'dump'");
    refused("collectgarbage('stop')", "option 'stop' is not allowed");
    refused("collectgarbage('generational')", "not allowed");
    refused("setmetatable({}, {__gc = function() end})", "__gc metamethods are not allowed");
}

#[test]
fn safe_functions_remain() {
    assert_eq!(eval("return type(os.clock())"), s("number"));
    assert_eq!(eval("return math.type(os.time())"), s("integer"));
    assert_eq!(eval("return type(collectgarbage('count'))"), s("number"));
    assert_eq!(eval("collectgarbage() collectgarbage('collect') return collectgarbage('step') ~= nil"), Value::Bool(true));
    assert_eq!(eval("return ('abc'):upper() .. string.rep('x', 2)"), s("ABCxx"));
    assert_eq!(eval("return utf8.char(233)"), s("é"));
    assert_eq!(eval("return table.concat({1, 2, 3}, ',')"), s("1,2,3"));
    assert_eq!(eval("return math.max(1, 5)"), Value::Int(5));
    assert_eq!(
        eval("local co = coroutine.wrap(function() coroutine.yield(1) return 2 end) return {co(), co()}"),
        arr(vec![Value::Int(1), Value::Int(2)])
    );
    assert_eq!(eval("return getmetatable(setmetatable({}, {__index = {a = 1}})).__index.a"), Value::Int(1));
    assert_eq!(eval("return pcall(error, 'x')"), Value::Bool(false));
}

#[test]
fn load_is_text_only() {
    assert_eq!(
        eval(r#"local f, err = load("\27Lua\84\0\25\147\r\n\26\n") return {f == nil, err}"#),
        arr(vec![Value::Bool(true), s("attempt to load a binary chunk: only text chunks are allowed")])
    );
    // a reader function producing a binary chunk is refused too
    assert_eq!(
        eval(r#"local parts = {"\27Lua", "..."} local i = 0
                local f = load(function() i = i + 1 return parts[i] end) return f == nil"#),
        Value::Bool(true)
    );
    assert_eq!(eval("return load('return 1 + 1')()"), Value::Int(2));
    let r = eval("local f, err = load('return +') return {f == nil, err}");
    let Value::Array(items) = r else { panic!() };
    assert_eq!(items[0], Value::Bool(true));
    assert!(items[1].as_str_lossy().unwrap().contains("unexpected symbol"), "{items:?}");
}

#[test]
fn load_uses_the_run_environment() {
    assert_eq!(eval("x = 5 return load('return x')()"), Value::Int(5));
    assert_eq!(eval("return load('return x', 'c', 't', {x = 7})()"), Value::Int(7));
    let mut inst = instance();
    run(&mut inst, "load('leak = 1')() return leak").unwrap();
    assert_eq!(run(&mut inst, "return leak").unwrap(), Value::Nil);
}

#[test]
fn library_changes_do_not_leak() {
    let mut inst = instance();
    run(&mut inst, "string.upper = nil; math.pi = 3; os.clock = nil").unwrap();
    assert_eq!(
        run(&mut inst, "return {('a'):upper(), string.upper('b'), math.pi > 3.14, os.clock ~= nil}").unwrap(),
        arr(vec![s("A"), s("B"), Value::Bool(true), Value::Bool(true)])
    );
    // the string metatable (whose __index is the shared string library) is hidden
    assert_eq!(eval("return getmetatable('')"), Value::Bool(false));
    // so is the global template behind _G
    assert_eq!(eval("return getmetatable(_G)"), Value::Nil);
    assert_eq!(eval("return _G == _ENV"), Value::Bool(true));
}

#[test]
fn error_objects_are_protected() {
    assert_eq!(eval("local ok, e = pcall(fail, 'x') return getmetatable(e)"), Value::Bool(false));
}
