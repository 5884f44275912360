//! Argument checks shared by every native: one wording for every "wrong argument" error.

use engine::{Func, ScriptError, Value};

/// `what`: the function being called, e.g. "map" or "execute".
pub fn func(args: &[Value], i: usize, what: &str) -> Result<Func, ScriptError> {
    match args.get(i) {
        Some(Value::Function(f)) => Ok(Func::Script(*f)),
        other => Err(wrong(what, i, "a function", other)),
    }
}

pub fn opt_func(args: &[Value], i: usize, what: &str) -> Result<Option<Func>, ScriptError> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        _ => func(args, i, what).map(Some),
    }
}

pub fn opt_usize(args: &[Value], i: usize, what: &str) -> Result<Option<usize>, ScriptError> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(v @ (Value::Int(_) | Value::Double(_))) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n as usize)),
            _ => Err(wrong(what, i, "a non-negative integer", Some(v))),
        },
        other => Err(wrong(what, i, "a non-negative integer", other)),
    }
}

pub fn opt_string(args: &[Value], i: usize, what: &str) -> Result<Option<String>, ScriptError> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(v @ (Value::String(_) | Value::Bytes(_))) => Ok(v.as_str_lossy()),
        other => Err(wrong(what, i, "a string", other)),
    }
}

pub fn opt_bytes(args: &[Value], i: usize, what: &str) -> Result<Option<Vec<u8>>, ScriptError> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(v @ (Value::String(_) | Value::Bytes(_))) => Ok(v.as_bytes().map(|b| b.into_owned())),
        other => Err(wrong(what, i, "a string", other)),
    }
}

pub fn opt_bool(args: &[Value], i: usize, what: &str) -> Result<Option<bool>, ScriptError> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        other => Err(wrong(what, i, "a boolean", other)),
    }
}

/// At most `max` arguments.
pub fn at_most(args: &[Value], max: usize, what: &str, usage: &str) -> Result<(), ScriptError> {
    if args.len() > max {
        Err(ScriptError::usage(format!("{what}: too many arguments ({} given, at most {max}); usage: {usage}", args.len())))
    } else {
        Ok(())
    }
}

pub fn wrong(what: &str, i: usize, expected: &str, got: Option<&Value>) -> ScriptError {
    let got = match got {
        None => "nothing".to_string(),
        Some(v) => v.type_name().to_string(),
    };
    ScriptError::usage(format!("{what}: argument {} must be {expected}, got {got}", i + 1))
}

/// Reads an options map (`{mode = 'async'}`); nil is an empty map.
pub fn options<'a>(args: &'a [Value], i: usize, what: &str, known: &[&str]) -> Result<Vec<(String, &'a Value)>, ScriptError> {
    match args.get(i) {
        None | Some(Value::Nil) => Ok(Vec::new()),
        Some(Value::Map(entries)) => {
            let mut out = Vec::new();
            for (k, v) in entries {
                let name = k.as_str_lossy().unwrap_or_default();
                if !known.contains(&name.as_str()) {
                    return Err(ScriptError::usage(format!(
                        "{what}: unknown option '{name}'; known options: {}",
                        known.join(", ")
                    )));
                }
                out.push((name, v));
            }
            Ok(out)
        }
        // An empty Lua table converts to an empty array.
        Some(Value::Array(a)) if a.is_empty() => Ok(Vec::new()),
        other => Err(wrong(what, i, "a table/object of options", other)),
    }
}
