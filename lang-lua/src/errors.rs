//! `mlua::Error` -> `engine::ScriptError`: kinds carried through, messages kept short
//! (no Rust backtraces, no Lua stack tracebacks).

use engine::{ScriptError, ScriptErrorKind};
use mlua::Error;

/// Maps an error from mlua. `memory_limit` is the instance's limit, for the message.
pub(crate) fn to_script_error(e: &Error, memory_limit: usize) -> ScriptError {
    if let Some(se) = e.downcast_ref::<ScriptError>() {
        return se.clone();
    }
    match e {
        Error::SyntaxError { message, .. } => {
            ScriptError::new(ScriptErrorKind::Syntax, strip_traceback(message))
        }
        Error::MemoryError(_) => ScriptError::memory(memory_limit),
        Error::CallbackError { traceback, cause } => {
            let mut inner = to_script_error(cause, memory_limit);
            // Errors raised by Rust code (conversions, bad arguments) carry no position:
            // take it from the traceback so the message reads like a Lua error.
            if inner.kind == ScriptErrorKind::Runtime && location(&inner.message).is_none() {
                if let Some(loc) = first_lua_frame(traceback) {
                    inner.message = format!("{loc}: {}", inner.message);
                }
            }
            inner
        }
        Error::WithContext { cause, .. } => to_script_error(cause, memory_limit),
        _ => ScriptError::runtime(message(e)),
    }
}

/// The message of an error, without mlua's prefixes and tracebacks.
pub(crate) fn message(e: &Error) -> String {
    if let Some(se) = e.downcast_ref::<ScriptError>() {
        return se.message.clone();
    }
    match e {
        Error::RuntimeError(m) | Error::MemoryError(m) => strip_traceback(m),
        Error::SyntaxError { message, .. } => strip_traceback(message),
        Error::CallbackError { cause, .. } | Error::WithContext { cause, .. } => message(cause),
        Error::BadArgument { to, pos, cause, .. } => match to {
            Some(to) => format!("bad argument #{pos} to '{to}' ({})", message(cause)),
            None => format!("bad argument #{pos} ({})", message(cause)),
        },
        other => strip_traceback(&other.to_string()),
    }
}

fn strip_traceback(m: &str) -> String {
    let cut = m.find("\nstack traceback:").or_else(|| m.find("stack traceback:"));
    let m = match cut {
        Some(i) => &m[..i],
        None => m,
    };
    m.trim_end().to_string()
}

/// `chunk:line` if the message starts with a Lua position.
fn location(m: &str) -> Option<&str> {
    let first = m.lines().next()?;
    let mut parts = first.splitn(3, ':');
    let chunk = parts.next()?;
    let line = parts.next()?;
    parts.next()?;
    let ok = !chunk.is_empty()
        && !chunk.contains(' ')
        && !line.is_empty()
        && line.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| &first[..chunk.len() + 1 + line.len()])
}

/// The position of the innermost Lua frame in a traceback (`script:3`).
fn first_lua_frame(traceback: &str) -> Option<String> {
    traceback
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("stack traceback") && !l.starts_with("[C]"))
        .find_map(|l| location(l).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_and_locates() {
        assert_eq!(strip_traceback("script:1: boom\nstack traceback:\n\t[C]: in ?"), "script:1: boom");
        assert_eq!(location("script:12: attempt to call a nil value"), Some("script:12"));
        assert_eq!(location("value nested too deeply"), None);
        assert_eq!(
            first_lua_frame("stack traceback:\n\t[C]: in function 'echo'\n\tscript:3: in main chunk"),
            Some("script:3".to_string())
        );
    }
}
