//! The memory limit: a counting allocator in front of Rust's allocator.
//!
//! QuickJS's own limit (`JS_SetMemoryLimit`) is not used: when it refuses an allocation
//! there is no way to tell afterwards, and when even the error object cannot be
//! allocated QuickJS throws `null`. Enforcing the limit here records every refusal, so an
//! out-of-memory error is always reported as such.

use rquickjs::allocator::{Allocator, RustAllocator};
use std::cell::Cell;
use std::ptr;
use std::rc::Rc;

/// Bookkeeping per allocation besides its usable size (RustAllocator's header).
const OVERHEAD: usize = 8;
/// Larger requests are refused outright (RustAllocator's size arithmetic must not overflow).
const MAX_REQUEST: usize = isize::MAX as usize / 2;

/// The memory budget of a runtime, shared by its allocator and its instance.
#[derive(Default)]
pub(crate) struct Budget {
    limit: Cell<usize>,
    used: Cell<usize>,
    refused: Cell<bool>,
}

impl Budget {
    /// Bytes allowed (0 = unlimited).
    pub fn limit(&self) -> usize {
        self.limit.get()
    }
    pub fn set_limit(&self, limit: usize) {
        self.limit.set(limit);
    }
    /// Bytes currently allocated.
    pub fn used(&self) -> usize {
        self.used.get()
    }
    /// Whether an allocation was refused since the last `clear_refused`.
    pub fn refused(&self) -> bool {
        self.refused.get()
    }
    pub fn clear_refused(&self) {
        self.refused.set(false);
    }

    /// Whether growing from `less` to `more` bytes stays within the limit.
    fn admit(&self, more: usize, less: usize) -> bool {
        let limit = self.limit.get();
        let next = self.used.get().saturating_sub(less).saturating_add(more);
        if limit != 0 && next > limit {
            self.refused.set(true);
            return false;
        }
        true
    }

    fn add(&self, n: usize) {
        self.used.set(self.used.get().saturating_add(n));
    }

    fn sub(&self, n: usize) {
        self.used.set(self.used.get().saturating_sub(n));
    }
}

/// The allocator of a runtime: Rust's allocator, within the budget.
pub(crate) struct Counting(pub Rc<Budget>);

impl Counting {
    /// Bytes an allocation of `ptr` counts for.
    ///
    /// # Safety
    /// `ptr` must be a live allocation of `RustAllocator`.
    unsafe fn size_of(ptr: *mut u8) -> usize {
        // SAFETY: guaranteed by the caller.
        unsafe { RustAllocator::usable_size(ptr) + OVERHEAD }
    }

    fn counted(&self, p: *mut u8) -> *mut u8 {
        if !p.is_null() {
            // SAFETY: `p` was just returned by RustAllocator.
            self.0.add(unsafe { Self::size_of(p) });
        }
        p
    }
}

// SAFETY: every pointer handed out comes from RustAllocator and is given back to it; the
// bookkeeping never touches memory.
unsafe impl Allocator for Counting {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if size == 0 || size > MAX_REQUEST || !self.0.admit(size.saturating_add(OVERHEAD), 0) {
            return ptr::null_mut();
        }
        let p = RustAllocator.alloc(size);
        self.counted(p)
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else { return ptr::null_mut() };
        if total == 0 || total > MAX_REQUEST || !self.0.admit(total.saturating_add(OVERHEAD), 0) {
            return ptr::null_mut();
        }
        let p = RustAllocator.calloc(count, size);
        self.counted(p)
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        // SAFETY: `ptr` is a live allocation of ours (the caller's contract).
        unsafe {
            self.0.sub(Self::size_of(ptr));
            RustAllocator.dealloc(ptr);
        }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.alloc(new_size);
        }
        if new_size == 0 {
            // SAFETY: as in `dealloc`.
            unsafe { self.dealloc(ptr) };
            return ptr::null_mut();
        }
        // SAFETY: `ptr` is a live allocation of ours (the caller's contract); on success
        // the old block is gone and only the new one is counted.
        unsafe {
            let old = Self::size_of(ptr);
            if new_size > MAX_REQUEST || !self.0.admit(new_size.saturating_add(OVERHEAD), old) {
                return ptr::null_mut();
            }
            let p = RustAllocator.realloc(ptr, new_size);
            if !p.is_null() {
                self.0.sub(old);
            }
            self.counted(p)
        }
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        // SAFETY: `ptr` is a live allocation of RustAllocator (the caller's contract).
        unsafe { RustAllocator::usable_size(ptr) }
    }
}
