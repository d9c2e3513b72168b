//! A counting allocator for the allocation test binaries. A `#[global_allocator]`
//! replaces the allocator of the whole binary it is linked into, so each binary that
//! measures memory this way is one of its own (`alloc_*.rs`), not among the
//! library's unit tests, which keep the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes each thread holds, so a test measures what it built on its own
/// thread while other tests run in parallel (a current-thread tokio runtime polls its
/// tasks there too).
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
    /// Allocations aligned beyond what malloc gives anyway (16 bytes on 64-bit glibc).
    static OVER_ALIGNED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only adds bookkeeping in
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = HELD.try_with(|h| h.set(h.get() + layout.size() as isize));
        if layout.align() > 16 {
            let _ = OVER_ALIGNED.try_with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = HELD.try_with(|h| h.set(h.get() - layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = HELD.try_with(|h| h.set(h.get() + new_size as isize - layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes this thread holds on the heap (allocated minus freed here).
pub fn held() -> isize {
    HELD.with(Cell::get)
}

/// Over-aligned allocations this thread has made.
// Not every binary that counts reads it.
#[allow(dead_code)]
pub fn over_aligned() -> usize {
    OVER_ALIGNED.with(Cell::get)
}
