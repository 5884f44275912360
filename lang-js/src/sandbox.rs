//! Bounds on the builtins QuickJS runs natively without polling the interrupt handler.
//!
//! QuickJS polls its interrupt handler (and so the time limit and the abort flag) in the
//! bytecode interpreter, in regexp matching and in the array methods that take a callback
//! (`map`, `every`, `indexOf`, `includes`, ...), but not in the other generic array
//! methods, in the default sort, nor in string searches. Those loop over `length`, which
//! an array-like (`{length: 2**53 - 1}`) or a sparse array (`new Array(2**32 - 1)`) makes
//! as long as it likes, or do length x pattern-length work. `sandbox.js` replaces them,
//! in each run's context before the script runs, with methods that keep their standard
//! behaviour for what memory can hold and otherwise:
//! - refuse an array-like longer than the memory limit could hold as an array, with a
//!   RangeError (`join`, `fill`, `reverse`, `slice`, `splice`, `concat`, ...);
//! - sort long arrays with the default order written as a JS comparator (which polls);
//! - run long string searches as a loop that polls (`indexOf`, `includes`), or refuse them
//!   with a RangeError (`lastIndexOf`, `split`, `replace`, `replaceAll`).
//!
//! Reading `length` (and converting `this` to a string) happens once in the wrapper and
//! once more in the builtin: only visible to getters and proxies.

use crate::error::{from_js_error, throw, Phase};
use crate::modules::owned;
use crate::state::State;
use engine::ScriptError;
use rquickjs::{qjs, Ctx, Function, Value as JsValue};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

const SOURCE: &str = include_str!("sandbox.js");
/// Longest array-like accepted when the memory is not limited.
const MAX_LENGTH: usize = 1 << 27;
/// Bytes of the smallest array element (a QuickJS JSValue).
const ELEMENT_BYTES: usize = 16;
/// Most character comparisons a native string search may do.
const MAX_SEARCH_WORK: f64 = 4_294_967_296.0;
/// Longer arrays are sorted with a JS comparator.
const SORT_IN_JS: usize = 1 << 14;

/// The longest array-like generic array methods accept under a memory limit of `limit`.
pub(crate) fn max_length(limit: usize) -> usize {
    if limit == 0 {
        MAX_LENGTH
    } else {
        (limit / ELEMENT_BYTES).min(MAX_LENGTH)
    }
}

/// Installs the bounded builtins in the context of a new run.
pub(crate) fn install(ctx: &Ctx<'_>, state: &Rc<State>) -> Result<(), ScriptError> {
    let err = |e| from_js_error(ctx, state, e, Phase::Run);
    let mut buf = Vec::with_capacity(SOURCE.len() + 1);
    buf.extend_from_slice(SOURCE.as_bytes());
    buf.push(0);
    // SAFETY: `buf` is NUL-terminated after `SOURCE.len()` bytes as JS_Eval requires, the
    // file name is a C string, and `ctx` is live. The result is owned by us.
    let v = unsafe {
        qjs::JS_Eval(
            ctx.as_raw().as_ptr(),
            buf.as_ptr().cast(),
            SOURCE.len() as _,
            c"<sandbox>".as_ptr(),
            qjs::JS_EVAL_TYPE_GLOBAL as i32,
        )
    };
    let f: JsValue = owned(ctx, v).map_err(err)?;
    let f: Function = f.into_function().ok_or_else(|| ScriptError::runtime("internal error: sandbox.js is no function"))?;
    let limit = state.memory.limit();
    let poll = poll_function(ctx, state).map_err(err)?;
    f.call::<_, ()>((max_length(limit) as f64, limit as f64, MAX_SEARCH_WORK, SORT_IN_JS as f64, poll)).map_err(err)
}

/// A function that throws the time limit's or the abort's error when the clock says so:
/// for the sandbox's own loops, whose iterations are long native calls.
fn poll_function<'js>(ctx: &Ctx<'js>, state: &Rc<State>) -> rquickjs::Result<Function<'js>> {
    // Weak: the function lives in the JS heap, which the state (indirectly) owns.
    let weak: Weak<State> = Rc::downgrade(state);
    let f = Function::new(ctx.clone(), move |ctx: Ctx<'js>| -> rquickjs::Result<()> {
        let Some(state) = weak.upgrade() else { return Ok(()) };
        // Never let a panic unwind through QuickJS.
        match catch_unwind(AssertUnwindSafe(|| state.clock.check())) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(throw(&ctx, &state, e)),
            Err(_) => Err(throw(&ctx, &state, ScriptError::runtime("internal error: poll panicked"))),
        }
    })?;
    // As for natives (bridge.rs): the prototype of this context, not rquickjs's cached one.
    f.set_prototype(Some(&Function::prototype(ctx.clone())))?;
    Ok(f)
}
