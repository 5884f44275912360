//! A small fake `Natives` for the integration tests.
#![allow(dead_code)]

use engine::{
    FnRef, Instance, Language, Limits, Natives, ObjRef, ScriptCalls, ScriptError, ScriptErrorKind,
    Value,
};
use lang_lua::LuaLanguage;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// The package `Natives::package` refuses with an error.
pub const REFUSED_PACKAGE: &str = "refused";

/// Globals:
/// - `echo(...)` -> its arguments as an array
/// - `apply(f, ...)` -> `f(...)` through `ScriptCalls::call`
/// - `obj()` -> a new `Obj` object (methods `add(v)` -> self, `get()` -> array, `each(f)`)
/// - `fail(msg)` -> a `Usage` error with `msg`
/// - `spin(ms)` -> sleeps `ms` milliseconds in native code, returns true
///
/// Packages (`require`): the Lua sources added with `with_package`; `asked()` counts the
/// calls to `Natives::package`. `REFUSED_PACKAGE` is refused with an error (as a session's
/// instance refuses a package the session did not import).
#[derive(Default)]
pub struct FakeNatives {
    objects: RefCell<HashMap<u32, Vec<Value>>>,
    packages: HashMap<String, String>,
    asked: RefCell<Vec<(String, String)>>,
}

impl FakeNatives {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the Lua package `name`.
    pub fn with_package(mut self, name: &str, source: &str) -> Self {
        self.packages.insert(name.to_string(), source.to_string());
        self
    }

    /// How many times `package()` was called.
    pub fn asked(&self) -> usize {
        self.asked.borrow().len()
    }

    /// How many times `package()` was called for `name`.
    pub fn asked_for(&self, name: &str) -> usize {
        self.asked.borrow().iter().filter(|(_, n)| n == name).count()
    }

    /// The (language, name) pairs `package()` was called with, in order.
    pub fn asked_log(&self) -> Vec<(String, String)> {
        self.asked.borrow().clone()
    }
}

fn fn_arg(args: &[Value], i: usize) -> Result<FnRef, ScriptError> {
    match args.get(i) {
        Some(Value::Function(f)) => Ok(*f),
        other => Err(ScriptError::usage(format!("expected a function, got {other:?}"))),
    }
}

impl Natives for FakeNatives {
    fn globals(&self) -> &'static [&'static str] {
        &["echo", "apply", "obj", "fail", "spin"]
    }

    fn methods(&self, kind: &str) -> &'static [&'static str] {
        match kind {
            "Obj" => &["add", "get", "each"],
            _ => &[],
        }
    }

    fn call_global(
        &self,
        name: &str,
        args: Vec<Value>,
        script: &dyn ScriptCalls,
    ) -> Result<Value, ScriptError> {
        match name {
            "echo" => Ok(Value::Array(args)),
            "apply" => {
                let f = fn_arg(&args, 0)?;
                script.call(f, &args[1..])
            }
            "obj" => {
                let mut objects = self.objects.borrow_mut();
                let id = objects.len() as u32;
                objects.insert(id, Vec::new());
                Ok(Value::Object(ObjRef { kind: "Obj", id }))
            }
            "fail" => Err(ScriptError::usage(
                args.first().and_then(|v| v.as_str_lossy()).unwrap_or_default(),
            )),
            "spin" => {
                let ms = args.first().and_then(|v| v.as_i64()).unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms as u64));
                Ok(Value::Bool(true))
            }
            _ => Err(ScriptError::usage(format!("unknown global {name}"))),
        }
    }

    fn call_method(
        &self,
        obj: ObjRef,
        name: &str,
        args: Vec<Value>,
        script: &dyn ScriptCalls,
    ) -> Result<Value, ScriptError> {
        match name {
            "add" => {
                let v = args.into_iter().next().unwrap_or(Value::Nil);
                self.objects
                    .borrow_mut()
                    .get_mut(&obj.id)
                    .ok_or_else(|| ScriptError::usage("no such object"))?
                    .push(v);
                Ok(Value::Object(obj))
            }
            "get" => Ok(Value::Array(self.objects.borrow().get(&obj.id).cloned().unwrap_or_default())),
            "each" => {
                let f = fn_arg(&args, 0)?;
                // No RefCell borrow is held while calling back into the script.
                let items = self.objects.borrow().get(&obj.id).cloned().unwrap_or_default();
                let mut out = Vec::new();
                for item in items {
                    out.push(script.call(f, &[item])?);
                }
                Ok(Value::Array(out))
            }
            _ => Err(ScriptError::usage(format!("unknown method {name}"))),
        }
    }

    fn package(&self, language: &str, name: &str) -> Result<Option<String>, ScriptError> {
        self.asked.borrow_mut().push((language.to_string(), name.to_string()));
        if language != "lua" {
            return Ok(None);
        }
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
    LuaLanguage.new_instance(limits).expect("new instance")
}

/// Runs `source` with no args and ends the run.
pub fn run(inst: &mut Box<dyn Instance>, source: &str) -> Result<Value, ScriptError> {
    let natives = FakeNatives::new();
    let r = inst.run(source, &[], &natives);
    inst.end_run();
    r
}

pub fn eval(source: &str) -> Value {
    run(&mut instance(), source).unwrap_or_else(|e| panic!("{source}: {e:?}"))
}

pub fn eval_err(source: &str) -> ScriptError {
    match run(&mut instance(), source) {
        Ok(v) => panic!("{source}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

pub fn s(x: &str) -> Value {
    Value::String(x.to_string())
}

pub fn arr(items: Vec<Value>) -> Value {
    Value::Array(items)
}

pub fn assert_kind(e: &ScriptError, kind: ScriptErrorKind) {
    assert_eq!(e.kind, kind, "unexpected error: {e:?}");
}
