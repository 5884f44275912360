//! Turning JS exceptions into `ScriptError`s and `ScriptError`s into JS exceptions.
//!
//! Mapping an exception may read its properties (getters are user code), so callers do it
//! while the script clock guard of the call is still alive.

use crate::stack;
use crate::state::State;
use engine::{ScriptError, ScriptErrorKind};
use rquickjs::{qjs, Ctx, Exception, Persistent, Type, Value as JsValue};

/// Where an exception came from: compiling the source, or running it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Compile,
    Run,
}

/// Turns an rquickjs error into a `ScriptError`, taking the pending exception if any.
pub(crate) fn from_js_error(ctx: &Ctx<'_>, state: &State, err: rquickjs::Error, phase: Phase) -> ScriptError {
    match err {
        rquickjs::Error::Exception => from_exception(ctx, state, &ctx.catch(), phase),
        rquickjs::Error::Allocation => ScriptError::memory(state.memory.limit()),
        other => ScriptError::runtime(other.to_string()),
    }
}

/// Turns a thrown JS value into a `ScriptError`.
pub(crate) fn from_exception<'js>(ctx: &Ctx<'js>, state: &State, exc: &JsValue<'js>, phase: Phase) -> ScriptError {
    // An error a native returned keeps its kind and message.
    if let Some(e) = native_error(ctx, state, exc) {
        return e;
    }
    // The interrupt handler stopped the script: say why.
    if let Some(e) = state.interrupt.take() {
        return e;
    }
    let err = describe_exception(state, exc, phase);
    // Reading the exception's properties runs getters, which may have been interrupted.
    state.interrupt.take().unwrap_or(err)
}

fn describe_exception(state: &State, exc: &JsValue<'_>, phase: Phase) -> ScriptError {
    let limit = state.memory.limit();
    // A compile that ran out of memory fails with whatever error the parser was at when
    // the allocation was refused ("invalid assignment left-hand side", ...): name the limit.
    if phase == Phase::Compile && state.memory.refused() {
        return ScriptError::memory(limit);
    }
    if exc.is_error() {
        let obj = exc.as_object();
        let name = obj.and_then(|o| string_prop(o, "name")).unwrap_or_else(|| "Error".into());
        let message = obj.and_then(|o| string_prop(o, "message")).unwrap_or_default();
        if name == "InternalError" && message == "out of memory" {
            return ScriptError::memory(limit);
        }
        if phase == Phase::Compile && stack::is_overflow(&name, &message) {
            return parser_overflow();
        }
        let kind = if phase == Phase::Compile { ScriptErrorKind::Syntax } else { ScriptErrorKind::Runtime };
        let mut text = format!("{name}: {message}");
        let stack = obj.and_then(|o| string_prop(o, "stack"));
        if let Some(loc) = stack.and_then(|s| location(&s, |f| state.is_source_file(f))) {
            text.push_str(" at ");
            text.push_str(&loc);
        }
        return ScriptError::new(kind, text);
    }
    // When even the error object cannot be allocated, QuickJS throws null.
    if (exc.is_null() || exc.type_of() == Type::Uninitialized) && state.memory.refused() {
        return ScriptError::memory(limit);
    }
    ScriptError::runtime(format!("uncaught exception: {}", describe(exc)))
}

/// The prefix of the error of a source that nests deeper than the parser's stack allows.
pub(crate) const PARSER_OVERFLOW: &str = "SyntaxError: the script nests too deeply to compile";

fn parser_overflow() -> ScriptError {
    ScriptError::new(
        ScriptErrorKind::Syntax,
        format!(
            "{PARSER_OVERFLOW}: parsing it needs more than the {} KiB of native stack JavaScript may use on this thread",
            stack::limit_kib()
        ),
    )
}

/// Whether `e` is a compile error that says nothing about the syntax of the source: a
/// limit (memory, parser stack) was reached, the same whatever the source is parsed as.
pub(crate) fn is_compile_limit(e: &ScriptError) -> bool {
    e.kind == ScriptErrorKind::Memory || e.message.starts_with(PARSER_OVERFLOW)
}

/// The error of a native, if `exc` is the value thrown for it.
fn native_error<'js>(ctx: &Ctx<'js>, state: &State, exc: &JsValue<'js>) -> Option<ScriptError> {
    let (err, thrown) = state.native_error.borrow().as_ref().map(|(e, p)| (e.clone(), p.clone()))?;
    let thrown = thrown.restore(ctx).ok()?;
    (thrown == *exc).then_some(err)
}

/// Throws `err` into the script (from a native function). Fatal errors (timeout, memory,
/// abort) are made uncatchable so that a script cannot swallow them.
pub(crate) fn throw(ctx: &Ctx<'_>, state: &State, err: ScriptError) -> rquickjs::Error {
    let value = match Exception::from_message(ctx.clone(), &err.message) {
        Ok(e) => e.into_value(),
        Err(_) => {
            // Out of memory: drop whatever is pending and throw null.
            let _ = ctx.catch();
            JsValue::new_null(ctx.clone())
        }
    };
    if err.is_fatal() {
        // SAFETY: `ctx` is a live context and `value` a live value of it (only Error
        // objects are affected; anything else is ignored by QuickJS).
        unsafe { qjs::JS_SetUncatchableError(ctx.as_raw().as_ptr(), value.as_raw()) };
        state.fatal.set(Some(err.clone()));
    }
    let saved = Persistent::save(ctx, value.clone());
    // Replace (and free) the previous one outside of the borrow.
    let old = state.native_error.borrow_mut().replace((err, saved));
    drop(old);
    ctx.throw(value)
}

/// A string property, without failing: a throwing getter leaves no pending exception.
fn string_prop(obj: &rquickjs::Object<'_>, key: &str) -> Option<String> {
    match obj.get::<_, JsValue>(key) {
        Ok(v) => v.as_string().map(crate::convert::js_string),
        Err(_) => {
            let _ = obj.ctx().catch();
            None
        }
    }
}

/// `FILE:LINE` of the first frame of a stack trace whose file is known (the script or a
/// package of the run): the innermost frame in code the user wrote.
fn location(stack: &str, known: impl Fn(&str) -> bool) -> Option<String> {
    stack.lines().find_map(|l| {
        let (file, line, _) = frame(l)?;
        known(file).then(|| format!("{file}:{line}"))
    })
}

/// The file, line and column (if any) of one line of a stack trace: `at NAME (FILE:LINE:COL)`
/// or `at FILE:LINE:COL`. Package names have no parentheses, spaces or colons.
fn frame(text: &str) -> Option<(&str, u32, Option<u32>)> {
    let rest = text.trim().strip_prefix("at ")?;
    let place = match rest.strip_suffix(')') {
        Some(r) => &r[r.rfind(" (")? + 2..],
        None => rest,
    };
    let (head, last) = place.rsplit_once(':')?;
    let last: u32 = last.parse().ok()?;
    match head.rsplit_once(':') {
        Some((file, line)) if line.parse::<u32>().is_ok() => Some((file, line.parse().ok()?, Some(last))),
        _ => Some((head, last, None)),
    }
}

/// Where in the script (line, column) a syntax error of compiling it was found.
pub(crate) fn script_position(exc: &JsValue<'_>) -> Option<(u32, u32)> {
    let stack = exc.as_object().and_then(|o| string_prop(o, "stack"))?;
    stack.lines().find_map(|l| match frame(l)? {
        (crate::modules::SCRIPT_NAME, line, col) => Some((line, col.unwrap_or(0))),
        _ => None,
    })
}

/// A short text for a thrown value that is not an Error (no `toString` is called: of an
/// object, only its `message` is read).
fn describe(v: &JsValue<'_>) -> String {
    if let Some(s) = v.as_string() {
        return crate::convert::js_string(s);
    }
    if let Some(n) = v.as_number() {
        return engine::format_double(n);
    }
    if let Some(b) = v.as_bool() {
        return b.to_string();
    }
    match v.type_of() {
        Type::Null => "null".into(),
        Type::Undefined | Type::Uninitialized => "undefined".into(),
        Type::Object => match v.as_object().and_then(|o| string_prop(o, "message")) {
            Some(m) => m,
            None => "[object]".into(),
        },
        t => format!("[{}]", t.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::location;

    #[test]
    fn locations() {
        let script = |f: &str| f == "script";
        assert_eq!(
            location("    at f (script:3:9)\n    at <eval> (script:5:1)\n", script).as_deref(),
            Some("script:3")
        );
        assert_eq!(location("    at script:12:4\n", script).as_deref(), Some("script:12"));
        assert_eq!(location("    at echo (native)\n    at <eval> (script:2:1)\n", script).as_deref(), Some("script:2"));
        assert_eq!(location("    at <eval> (native)\n", script), None);
        assert_eq!(location("    at f (<input>:1:2)\n", script), None);
        // Packages are files too (names may have slashes); unknown files are skipped.
        let known = |f: &str| ["script", "gears/x", "p"].contains(&f);
        let stack = "    at g (other:1:1)\n    at f (gears/x:7:3)\n    at <eval> (script:1:1)\n";
        assert_eq!(location(stack, known).as_deref(), Some("gears/x:7"));
        assert_eq!(location("    at p:3\n", known).as_deref(), Some("p:3"));
        assert_eq!(location("    at a) (p:4:1)\n", known).as_deref(), Some("p:4"));
    }
}
