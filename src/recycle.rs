//! Heap blocks for large futures, reused from one future to the next of its type on
//! the same thread: a connection's future, the HTTP/1.1 server's, an h2 stream's
//! handler.
//!
//! Such a future holds a request's future inline, several KiB, so it is boxed
//! (moving it whole through tokio's spawn, or into a parent future's state, costs
//! more than the allocation). But a block that size is beyond glibc's per-thread
//! cache: each `malloc` and `free` of it goes through the arena's bins (and now and
//! then a consolidation), some 1,500 instructions, on a path where a new connection
//! costs ~30,000 in all. Here the block outlives its future: when the future
//! completes (or is dropped) it is dropped in place and the block goes to a short
//! per-thread list for its layout, where the next future of that type on that thread
//! takes it. `Recycled::with` takes the block before it makes the future, so the
//! compiler can build the future in the block instead of copying it in whole.
//!
//! Each layout's list keeps at most `KEPT` blocks, so what it holds after a burst is
//! bounded (`KEPT` × the futures' sizes, under a MiB per serving thread in all).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per thread: about as many connections as are opened at once on
/// a busy thread; more are freed.
const KEPT: usize = 64;

/// Layouts kept per thread: a connection's future, the HTTP/1.1 server's, an h2
/// stream's handler.
const LAYOUTS: usize = 4;

thread_local! {
    /// Free blocks, by layout: the first `LAYOUTS` layouts boxed on this thread get
    /// a list each (a process boxes a couple of future types here); blocks of any
    /// other layout are not kept.
    static FREE: RefCell<Vec<Free>> = const { RefCell::new(Vec::new()) };
}

struct Free {
    layout: Layout,
    blocks: Vec<NonNull<u8>>,
}

/// A future in a heap block of its own, like `Pin<Box<F>>`, whose block is kept for
/// the thread's next one when the future is done.
pub struct Recycled<F: Future> {
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
    #[cfg(test)]
    pub fn new(future: F) -> Recycled<F> {
        Recycled::with(|| future)
    }

    /// The future `make` makes, in a block from this thread's list or a new one. The
    /// block is taken first and `make` called after, so the compiler can build the
    /// future in the block itself: made first, a future is a value of its whole size
    /// (a few KiB for a connection, most of it the state of requests to come) that
    /// is copied into the block.
    #[inline(always)]
    pub fn with(make: impl FnOnce() -> F) -> Recycled<F> {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Never the case for a connection; a dangling pointer is a valid ZST home.
            let block = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through a dangling, aligned pointer.
            unsafe { block.as_ptr().write(make()) };
            return Recycled { block, live: true };
        }
        let reused = FREE.with_borrow_mut(|lists| {
            let list = lists.iter_mut().find(|list| list.layout == layout)?;
            list.blocks.pop()
        });
        let block = reused.unwrap_or_else(|| {
            // SAFETY: `layout` has a non-zero size.
            let raw = unsafe { alloc(layout) };
            NonNull::new(raw).unwrap_or_else(|| handle_alloc_error(layout))
        });
        let block = block.cast::<F>();
        // SAFETY: the block is `layout`, F's own, and holds no value.
        unsafe { block.as_ptr().write(make()) };
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
            .try_with(|lists| {
                let mut lists = lists.borrow_mut();
                let list = match lists.iter().position(|list| list.layout == layout) {
                    Some(at) => &mut lists[at],
                    None if lists.len() < LAYOUTS => {
                        lists.push(Free { layout, blocks: Vec::new() });
                        lists.last_mut().expect("just pushed")
                    }
                    None => return false,
                };
                if list.blocks.len() < KEPT {
                    list.blocks.push(block);
                    true
                } else {
                    false
                }
            })
            // The thread is ending: its list is gone.
            .unwrap_or(false);
        if !kept {
            // SAFETY: the block was allocated with `layout` and holds no value.
            unsafe { dealloc(block.as_ptr(), layout) };
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
        let kept = FREE.with_borrow(|lists| {
            lists
                .iter()
                .find(|list| list.layout == Layout::new::<Probe>())
                .map_or(0, |list| list.blocks.len())
        });
        assert_eq!(kept, KEPT);
        assert_eq!(drops.load(Ordering::SeqCst), KEPT + 10);
    }

    #[test]
    fn each_layout_has_a_list_of_its_own_up_to_layouts() {
        let drops = Arc::new(AtomicUsize::new(0));
        let first = Recycled::new(probe(&drops, 0));
        let probe_block = block_of(&first);
        drop(first);
        let small = Recycled::new(std::future::ready(Rc::new(1u8)));
        assert_ne!(block_of(&small), probe_block, "a block of another layout is not handed out");
        let small_block = block_of(&small);
        drop(small);
        assert_eq!(block_of(&Recycled::new(std::future::ready(Rc::new(2u8)))), small_block);
        assert_eq!(block_of(&Recycled::new(probe(&drops, 0))), probe_block);
        // More layouts than `LAYOUTS`: the extra ones are freed, not kept.
        drop(Recycled::new(std::future::ready([0u8; 100])));
        drop(Recycled::new(std::future::ready([0u8; 200])));
        drop(Recycled::new(std::future::ready([0u8; 300])));
        drop(Recycled::new(std::future::ready([0u8; 400])));
        assert_eq!(FREE.with_borrow(Vec::len), LAYOUTS);
    }
}
