//! A small fake `Natives` for the lang-js tests.
#![allow(dead_code)]

use engine::{Instance, Language, Limits, ObjRef, ScriptCalls, ScriptError, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// The package `Natives::package` refuses with an error.
pub const REFUSED_PACKAGE: &str = "refused";

/// Globals:
/// - `echo(...args)`: returns its arguments as an array;
/// - `apply(f, ...args)`: calls `f(...args)` through `ScriptCalls`;
/// - `obj()`: a new `Counter` object with methods `add(v)` (returns the object) and `get()`;
/// - `fail(msg)`: a Usage error; `fatal()`: a Timeout error;
/// - `bytes()`: `Bytes([0, 255, 1])`; `errval(msg)`: `Value::Error(msg)`;
/// - `sleep(ms)`: sleeps (time in natives does not count against the script);
/// - `record(...args)`: appends its arguments (as one array) to `records`.
///
/// Packages: `packages` (name -> JS source); `package_calls` records every lookup, in order;
/// `REFUSED_PACKAGE` is refused with an error (as a session's instance refuses a package the
/// session did not import).
#[derive(Default)]
pub struct Fake {
    pub counters: RefCell<Vec<Vec<Value>>>,
    pub records: RefCell<Vec<Value>>,
    pub packages: HashMap<String, String>,
    pub package_calls: RefCell<Vec<String>>,
}

impl Fake {
    /// A fake with these JS packages.
    pub fn with_packages(packages: &[(&str, &str)]) -> Fake {
        Fake { packages: packages.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect(), ..Fake::default() }
    }

    /// How many times the package `name` was looked up.
    pub fn lookups(&self, name: &str) -> usize {
        self.package_calls.borrow().iter().filter(|n| *n == name).count()
    }
}

const GLOBALS: &[&str] = &["echo", "apply", "obj", "fail", "fatal", "bytes", "errval", "sleep", "record"];

impl engine::Natives for Fake {
    fn globals(&self) -> &'static [&'static str] {
        GLOBALS
    }

    fn methods(&self, kind: &str) -> &'static [&'static str] {
        match kind {
            "Counter" => &["add", "get"],
            _ => &[],
        }
    }

    fn call_global(&self, name: &str, args: Vec<Value>, script: &dyn ScriptCalls) -> Result<Value, ScriptError> {
        match name {
            "echo" => Ok(Value::Array(args)),
            "apply" => {
                let mut args = args.into_iter();
                match args.next() {
                    Some(Value::Function(f)) => script.call(f, &args.collect::<Vec<_>>()),
                    other => Err(ScriptError::usage(format!("apply: not a function: {other:?}"))),
                }
            }
            "obj" => {
                let mut counters = self.counters.borrow_mut();
                counters.push(vec![]);
                Ok(Value::Object(ObjRef { kind: "Counter", id: counters.len() as u32 - 1 }))
            }
            "fail" => Err(ScriptError::usage(args.first().and_then(Value::as_str_lossy).unwrap_or_default())),
            "fatal" => Err(ScriptError::timeout(1)),
            "bytes" => Ok(Value::Bytes(vec![0, 255, 1])),
            "errval" => Ok(Value::Error(args.first().and_then(Value::as_str_lossy).unwrap_or_default())),
            "sleep" => {
                let ms = args.first().and_then(Value::as_i64).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms as u64));
                Ok(Value::Nil)
            }
            "record" => {
                self.records.borrow_mut().push(Value::Array(args));
                Ok(Value::Nil)
            }
            _ => Err(ScriptError::usage(format!("unknown global {name}"))),
        }
    }

    fn call_method(
        &self,
        obj: ObjRef,
        name: &str,
        args: Vec<Value>,
        _script: &dyn ScriptCalls,
    ) -> Result<Value, ScriptError> {
        let mut counters = self.counters.borrow_mut();
        let items = counters.get_mut(obj.id as usize).ok_or_else(|| ScriptError::usage("no such object"))?;
        match name {
            "add" => {
                items.extend(args);
                Ok(Value::Object(obj))
            }
            "get" => Ok(Value::Array(items.clone())),
            _ => Err(ScriptError::usage(format!("unknown method {name}"))),
        }
    }

    fn package(&self, language: &str, name: &str) -> Result<Option<String>, ScriptError> {
        assert_eq!(language, "js");
        self.package_calls.borrow_mut().push(name.to_string());
        if name == REFUSED_PACKAGE {
            return Err(ScriptError::runtime(format!("package '{name}' may not be imported here")));
        }
        Ok(self.packages.get(name).cloned())
    }
}

pub fn instance() -> Box<dyn Instance> {
    instance_with(Limits::default())
}

pub fn instance_with(limits: Limits) -> Box<dyn Instance> {
    let js = lang_js::Js;
    assert_eq!(js.name(), "js");
    js.new_instance(limits).expect("new instance")
}

/// Runs `source` with no args on a fresh instance.
pub fn run(source: &str) -> Result<Value, ScriptError> {
    let mut i = instance();
    let r = i.run(source, &[], &Fake::default());
    i.end_run();
    r
}

pub fn s(text: &str) -> Value {
    Value::String(text.into())
}

pub fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(entries.iter().map(|(k, v)| (s(k), v.clone())).collect())
}
