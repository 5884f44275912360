//! The native stack limit of QuickJS, sized from the real stack of the calling thread.
//!
//! QuickJS refuses to go deeper than `stack_top - stack_size`, where `stack_top` is where
//! the runtime was created (or last told). Gears enters a runtime from many depths: a
//! worker's run at the bottom of a 2 MiB thread, a sync trigger's instance created deep
//! inside another script's `execute()`, the Redis main thread (8 MiB). A limit measured
//! from the wrong place lets a recursive script run off the end of the thread's stack
//! (SIGSEGV, with nothing logged since the signal handler has no stack either).
//!
//! So on every entry into a runtime, the limit is set to one absolute address of the
//! current thread: the low end of its stack plus `MARGIN` (capped at `MAX_JS_STACK` below
//! its top). The limit is the same whatever the depth of the entry, so nested entries
//! (script -> native -> script) need not restore anything. `MARGIN` is left for what runs
//! below a JS frame without QuickJS checking: natives, Redis commands run by `execute()`,
//! keyspace notifications and the sync triggers they fire in other instances (which check
//! again when they enter their own runtime).

use engine::ScriptError;
use rquickjs::{qjs, Ctx};
use std::cell::Cell;

/// Stack left below the limit for natives and Redis (see the top).
pub(crate) const MARGIN: usize = 256 << 10;
/// The least stack an entry must find above the limit to be allowed at all.
const MIN_ROOM: usize = 64 << 10;
/// Most stack a runtime may use on a thread with a huge (or unlimited) stack.
const MAX_JS_STACK: usize = 64 << 20;
/// When the thread's stack cannot be read: assume this much below the first entry.
const UNKNOWN_STACK: usize = 512 << 10;

thread_local! {
    /// The current thread's stack as (low end, high end); read once per thread (reading
    /// it on the main thread parses /proc/self/maps).
    static BOUNDS: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// An address in the current stack frame.
#[inline(always)]
fn stack_pointer() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// The current thread's stack bounds.
fn bounds() -> (usize, usize) {
    if let Some(b) = BOUNDS.get() {
        return b;
    }
    let b = read_bounds().unwrap_or_else(|| {
        let sp = stack_pointer();
        (sp.saturating_sub(UNKNOWN_STACK), sp)
    });
    BOUNDS.set(Some(b));
    b
}

#[cfg(target_os = "linux")]
fn read_bounds() -> Option<(usize, usize)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    let mut addr: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: pthread_getattr_np initializes `attr` for the calling thread when it returns
    // 0; it is read only then, and destroyed once.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if !ok || addr.is_null() || size == 0 {
            return None;
        }
    }
    let low = addr as usize;
    Some((low, low.saturating_add(size)))
}

#[cfg(not(target_os = "linux"))]
fn read_bounds() -> Option<(usize, usize)> {
    None
}

/// The lowest address QuickJS may use on this thread.
fn floor() -> usize {
    let (low, high) = bounds();
    low.max(high.saturating_sub(MAX_JS_STACK)).saturating_add(MARGIN)
}

/// Bytes of stack the JS engine may still use from here on this thread.
pub(crate) fn room() -> usize {
    stack_pointer().saturating_sub(floor())
}

/// The error of an entry refused for want of stack.
pub(crate) fn exhausted() -> ScriptError {
    let (low, high) = bounds();
    ScriptError::runtime(format!(
        "script calls nest too deeply: less than {} KiB of this thread's {} KiB native stack is left for JavaScript",
        MIN_ROOM >> 10,
        (high - low) >> 10
    ))
}

/// Points the stack limit of `ctx`'s runtime at this thread's floor; to be called on
/// every entry into the runtime, from the frame that then calls QuickJS.
pub(crate) fn enter(ctx: &Ctx<'_>) -> Result<(), ScriptError> {
    let room = room();
    if room < MIN_ROOM {
        return Err(exhausted());
    }
    // SAFETY: `ctx` is a live context; both calls only store numbers in its runtime.
    // JS_UpdateStackTop reads QuickJS's own frame, a few bytes below ours: the limit
    // lands within those bytes of the floor.
    unsafe {
        let rt = qjs::JS_GetRuntime(ctx.as_raw().as_ptr());
        qjs::JS_UpdateStackTop(rt);
        qjs::JS_SetMaxStackSize(rt, room as _);
    }
    Ok(())
}

/// What QuickJS throws when it reaches the limit.
pub(crate) fn is_overflow(name: &str, message: &str) -> bool {
    name == "RangeError" && message == "Maximum call stack size exceeded"
}

/// The limit as users see it in errors: KiB of stack the JS engine may use on this thread.
pub(crate) fn limit_kib() -> usize {
    let (low, high) = bounds();
    (high.saturating_sub(floor().max(low))) >> 10
}
