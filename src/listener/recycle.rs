//! The heap block a connection's future lives in, reused from one connection to the
//! next on the same thread.
//!
//! A connection's future holds a request's future inline, several KiB, so it is boxed
//! before it is spawned (moving it whole through tokio's spawn costs more than the
//! allocation). But a block that size is beyond glibc's per-thread cache: each
//! `malloc` and `free` of it goes through the arena's bins (and now and then a
//! consolidation), some 1,500 instructions per connection, on a path where a new
//! connection costs ~32,000 in all. Here the block outlives its future: when the
//! future completes (or its task is dropped) it is dropped in place and the block
//! goes to a short per-thread list, where the next connection on that thread takes it.
//!
//! The list keeps at most `KEPT` blocks, so what it holds after a burst is bounded
//! (`KEPT` × the future's size, ~7 KiB, per serving thread: under half a MiB).
//!
//! The blocks come from `heap::take_block` (pages outside glibc's heap) when the
//! future fits in one, as a connection's does, and go back there beyond the list: in
//! the heap, each idle connection's small objects would sit between the blocks of
//! its busy moments and keep them resident (see `heap::take_block`).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per thread: about as many connections as are opened at once on
/// a busy thread; more are freed.
const KEPT: usize = 64;

thread_local! {
    /// Free blocks, all of `layout`: the first future boxed on this thread sets it (a
    /// process boxes one future type here); blocks of any other layout are not kept.
    static FREE: RefCell<Free> = const { RefCell::new(Free { layout: None, blocks: Vec::new() }) };
}

struct Free {
    layout: Option<Layout>,
    blocks: Vec<NonNull<u8>>,
}

/// Whether a future of `layout` lives in a `heap::take_block` block.
pub(super) fn in_block(layout: Layout) -> bool {
    layout.size() <= crate::heap::BLOCK && layout.align() <= 4096
}

/// Frees the blocks this thread's list keeps (to `heap::take_block`'s pool, whose
/// trim then releases their pages): called when the heap is trimmed after a burst.
pub(super) fn release_kept() {
    let Some((layout, blocks)) =
        FREE.with_borrow_mut(|free| Some((free.layout?, std::mem::take(&mut free.blocks))))
    else {
        return;
    };
    for block in blocks {
        if in_block(layout) {
            // SAFETY: a kept block came from `take_block` (see `Recycled::new`), holds
            // no value, and is no longer in the list.
            unsafe { crate::heap::give_block(block) };
        } else {
            // SAFETY: as above, from `alloc` with the list's layout.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

/// A future in a heap block of its own, like `Pin<Box<F>>`, whose block is kept for
/// the thread's next one when the future is done.
pub(super) struct Recycled<F: Future> {
    block: NonNull<F>,
    /// The future is in the block (not yet completed, not yet dropped).
    live: bool,
}

// SAFETY: `Recycled` owns its `F` as a `Box` would; the block itself is plain memory,
// and a block freed on another thread than it was taken on is fine (the list it goes
// to is that thread's, and the allocator's blocks are not tied to a thread).
unsafe impl<F: Future + Send> Send for Recycled<F> {}

impl<F: Future> Recycled<F> {
    /// Moves `future` into a block from this thread's list, or a new one.
    pub(super) fn new(future: F) -> Recycled<F> {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Never the case for a connection; a dangling pointer is a valid ZST home.
            let block = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through a dangling, aligned pointer.
            unsafe { block.as_ptr().write(future) };
            return Recycled { block, live: true };
        }
        let reused = FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.layout == Some(layout) {
                free.blocks.pop()
            } else {
                None
            }
        });
        let block = reused.unwrap_or_else(|| {
            if in_block(layout) {
                return crate::heap::take_block();
            }
            // SAFETY: `layout` has a non-zero size.
            let raw = unsafe { alloc(layout) };
            NonNull::new(raw).unwrap_or_else(|| handle_alloc_error(layout))
        });
        let block = block.cast::<F>();
        // SAFETY: the block is `layout`, F's own, and holds no value.
        unsafe { block.as_ptr().write(future) };
        Recycled { block, live: true }
    }

    /// Drops the future in its block, once.
    fn end(&mut self) {
        if self.live {
            self.live = false;
            // SAFETY: `live` says the block holds an F, dropped nowhere else.
            unsafe { std::ptr::drop_in_place(self.block.as_ptr()) };
        }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Recycled` is only a pointer: moving it never moves the future.
        let this = self.get_mut();
        assert!(this.live, "`Recycled` polled after it completed");
        // SAFETY: the future stays at this address until it is dropped in place.
        let future = unsafe { Pin::new_unchecked(this.block.as_mut()) };
        let output = std::task::ready!(future.poll(cx));
        // Dropped now, not when the task is: what it holds (the socket) goes at once.
        this.end();
        Poll::Ready(output)
    }
}

impl<F: Future> Unpin for Recycled<F> {}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        self.end();
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            return;
        }
        let block = self.block.cast::<u8>();
        let kept = FREE
            .try_with(|free| {
                let mut free = free.borrow_mut();
                let free = &mut *free;
                if free.layout.is_none() {
                    free.layout = Some(layout);
                }
                if free.layout == Some(layout) && free.blocks.len() < KEPT {
                    free.blocks.push(block);
                    true
                } else {
                    false
                }
            })
            // The thread is ending: its list is gone.
            .unwrap_or(false);
        if !kept {
            if in_block(layout) {
                // SAFETY: the block came from `take_block` (see `new`) and holds no value.
                unsafe { crate::heap::give_block(block) };
            } else {
                // SAFETY: the block was allocated with `layout` and holds no value.
                unsafe { dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its drops; pending `polls_left` times, then ready.
    struct Probe {
        drops: Arc<AtomicUsize>,
        polls_left: usize,
        _ballast: [u8; 512],
    }

    impl Future for Probe {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            if self.polls_left == 0 {
                return Poll::Ready(7);
            }
            self.polls_left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn probe(drops: &Arc<AtomicUsize>, polls_left: usize) -> Probe {
        Probe { drops: drops.clone(), polls_left, _ballast: [0; 512] }
    }

    fn block_of<F: Future>(recycled: &Recycled<F>) -> usize {
        recycled.block.as_ptr() as usize
    }

    #[test]
    fn a_completed_future_is_dropped_at_once_and_its_block_reused() {
        let drops = Arc::new(AtomicUsize::new(0));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut first = Recycled::new(probe(&drops, 2));
        let address = block_of(&first);
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert_eq!(Pin::new(&mut first).poll(&mut cx), Poll::Ready(7));
        // Dropped when it completed, not later, and only once.
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        drop(first);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let second = Recycled::new(probe(&drops, 0));
        assert_eq!(block_of(&second), address, "the freed block is taken again");
        drop(second);
        assert_eq!(drops.load(Ordering::SeqCst), 2, "a dropped, unfinished future is dropped");
    }

    #[test]
    fn the_list_keeps_at_most_kept_blocks() {
        let drops = Arc::new(AtomicUsize::new(0));
        let many: Vec<_> = (0..KEPT + 10).map(|_| Recycled::new(probe(&drops, 0))).collect();
        drop(many);
        let kept = FREE.with(|free| free.borrow().blocks.len());
        assert_eq!(kept, KEPT);
        assert_eq!(drops.load(Ordering::SeqCst), KEPT + 10);
    }

    #[test]
    fn the_kept_blocks_are_freed_for_a_trim() {
        let drops = Arc::new(AtomicUsize::new(0));
        drop((0..KEPT).map(|_| Recycled::new(probe(&drops, 0))).collect::<Vec<_>>());
        assert!(FREE.with(|free| !free.borrow().blocks.is_empty()));
        release_kept();
        assert_eq!(FREE.with(|free| free.borrow().blocks.len()), 0, "still kept through the trim");
        // The list works on afterwards.
        drop(Recycled::new(probe(&drops, 0)));
        assert_eq!(FREE.with(|free| free.borrow().blocks.len()), 1);
    }

    #[test]
    fn a_connection_sized_future_lives_outside_the_heap() {
        assert!(in_block(Layout::new::<[u8; 7 * 1024]>()));
        assert!(!in_block(Layout::new::<[u8; 9 * 1024]>()), "too large: an ordinary allocation");
    }

    #[test]
    fn a_future_of_another_layout_gets_a_block_of_its_own() {
        let drops = Arc::new(AtomicUsize::new(0));
        drop(Recycled::new(probe(&drops, 0)));
        let small = Recycled::new(std::future::ready(Rc::new(1u8)));
        assert_eq!(Layout::new::<std::future::Ready<Rc<u8>>>().size(), 8);
        drop(small);
        let kinds = FREE.with(|free| free.borrow().layout);
        assert_eq!(kinds, Some(Layout::new::<Probe>()), "the list stays the first layout's");
    }
}
