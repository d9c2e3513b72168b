//! Heap blocks for large futures, reused from one future to the next of its type on
//! the same thread: a connection's future, the HTTP/1.1 server's (`resident`), an h2
//! stream's handler.
//!
//! Such a future holds a request's future inline, several KiB, so it is boxed
//! (moving it whole through tokio's spawn, or into a parent future's state, costs
//! more than the allocation). But a block that size is beyond glibc's per-thread
//! cache: each `malloc` and `free` of it goes through the arena's bins (and now and
//! then a consolidation), some 1,500 instructions, on a path where a new connection
//! costs ~30,000 in all. Here the block outlives its future: when the future
//! completes (or is dropped) it is dropped in place and the block goes to a short
//! per-thread list for its layout, where the next future of that type on that thread
//! takes it. A future made and then written into its block is copied in whole, a
//! `memcpy` of its size (nothing on stable Rust builds a value straight behind a
//! pointer): for the HTTP/1.1 server's, 5.6 KiB per connection. `resident` keeps such
//! a future's block with an async loop in it that builds each one in place, as a
//! local of the loop, for one connection after another.
//!
//! Each layout's list keeps at most `KEPT` blocks, so what it holds after a burst is
//! bounded (`KEPT` × the futures' sizes, under a MiB per serving thread in all).
//!
//! A future of more than 512 bytes (all of the above) lives in a block from
//! `take_block`: pages outside glibc's heap. In the heap, each idle connection's
//! small objects would sit between the blocks of its busy moments and keep them
//! resident (see `take_block`).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::any::TypeId;
use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per thread: about as many connections as are opened at once on
/// a busy thread; more are freed.
const KEPT: usize = 64;

/// Layouts kept per thread (a connection's future, an h2 stream's handler), and
/// kinds of `resident` loops (the HTTP/1.1 server's).
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

/// Whether a future of `layout` lives in a `take_block` block: any but a small one.
/// A connection's own future (~1 KiB) too: freed in the heap when the connection
/// parks, it would leave a hole among what idle connections keep; a block's pages
/// are resident only as far as the future reaches, and released at a trim.
pub fn in_block(layout: Layout) -> bool {
    layout.size() > 512 && layout.size() <= BLOCK && layout.align() <= 4096
}

/// Frees the blocks this thread's lists keep (to `take_block`'s pool, whose release
/// then gives their pages back): called when the heap is trimmed after a burst.
pub fn release_kept() {
    // Each list drops its blocks' idle loops and frees the blocks (`Idle::drop`).
    drop(IDLE.with_borrow_mut(std::mem::take));
    let lists = FREE.with_borrow_mut(|lists| {
        lists.iter_mut().map(|list| (list.layout, std::mem::take(&mut list.blocks))).collect::<Vec<_>>()
    });
    for (layout, blocks) in lists {
        for block in blocks {
            // SAFETY: a kept block came from `take_block` or `alloc` as `in_block` says
            // (see `Recycled::with`), holds no value, and is no longer in the list.
            unsafe { free_block(block, layout) };
        }
    }
}

/// # Safety
/// `block` came from `Recycled::with` for `layout`, holds no value, and is not used
/// afterwards.
unsafe fn free_block(block: NonNull<u8>, layout: Layout) {
    if in_block(layout) {
        // SAFETY: the caller's promise: a block from `take_block`.
        unsafe { give_block(block) };
    } else {
        // SAFETY: the caller's promise: allocated with `layout`.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

/// A new block for `layout`: from `take_block` as `in_block` says, else
/// allocated; `free_block` frees it.
fn new_block(layout: Layout) -> NonNull<u8> {
    if in_block(layout) {
        return take_block();
    }
    assert_ne!(layout.size(), 0, "a zero-sized value needs no block");
    // SAFETY: `layout` has a non-zero size.
    let raw = unsafe { alloc(layout) };
    NonNull::new(raw).unwrap_or_else(|| handle_alloc_error(layout))
}

/// The size of a block from `take_block`: two pages, room for a connection's future.
pub const BLOCK: usize = 8192;

/// A block of `BLOCK` bytes, aligned to a page, for a large object that lives about
/// as long as one connection is busy (the HTTP/1.1 server's future, `Recycled`);
/// hand it back with `give_block`.
///
/// Why not `malloc`: a connection's long-lived small objects (tokio's registration of
/// its socket, made at accept; its place in the lobby, made when it parks) land
/// between the large blocks its busy moments used, and once those are freed each idle
/// connection's few hundred bytes pin a page or two of the heap that no trim can give
/// back: ~4.5 KiB per idle connection where it holds ~0.5 KiB. Blocks from here are
/// kept in regions of their own (Linux: `mmap`), so the heap keeps only small objects,
/// packed; a block handed back is kept for the next connection, and the trim
/// (`give_back`) releases the pages of those still free then (`madvise`), as
/// `malloc_trim` does the heap's.
/// Elsewhere: an ordinary allocation.
pub fn take_block() -> NonNull<u8> {
    BLOCKS.take()
}

/// Hands back a block from `take_block`.
///
/// # Safety
/// `block` came from `take_block`, is handed back once, and is not used afterwards.
pub unsafe fn give_block(block: NonNull<u8>) {
    // SAFETY: the caller's promise.
    unsafe { BLOCKS.give(block) }
}

static BLOCKS: Blocks = Blocks::new();

/// The blocks of `take_block`: free ones behind a lock, taken when a serving thread's
/// own short list (`Recycled`) is empty, so the lock is off the common path.
struct Blocks {
    #[cfg(target_os = "linux")]
    pool: std::sync::Mutex<Pool>,
}

#[cfg(target_os = "linux")]
#[derive(Default)]
struct Pool {
    /// Free blocks whose pages may be resident (addresses).
    free: Vec<usize>,
    /// Free blocks whose pages were released: taken after `free`, they fault in anew.
    released: Vec<usize>,
}

/// Blocks mapped at once when the pool is empty: 512 KiB of address space, resident
/// only as its blocks are written.
#[cfg(target_os = "linux")]
const REGION_BLOCKS: usize = 64;

fn block_layout() -> std::alloc::Layout {
    // Page-aligned, so a block is whole pages wherever it lives.
    std::alloc::Layout::from_size_align(BLOCK, 4096).expect("a valid layout")
}

impl Blocks {
    const fn new() -> Blocks {
        Blocks {
            #[cfg(target_os = "linux")]
            pool: std::sync::Mutex::new(Pool { free: Vec::new(), released: Vec::new() }),
        }
    }

    #[cfg(target_os = "linux")]
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> NonNull<u8> {
        #[cfg(target_os = "linux")]
        {
            let mut pool = self.lock();
            if let Some(block) = pool.free.pop().or_else(|| pool.released.pop()) {
                return NonNull::new(block as *mut u8).expect("a block is never null");
            }
            let size = REGION_BLOCKS * BLOCK;
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let region = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if region == libc::MAP_FAILED {
                std::alloc::handle_alloc_error(block_layout());
            }
            // Regions stay mapped for the process's life: their free blocks' pages are
            // released, their address space is cheap.
            let start = region as usize;
            pool.released.extend((1..REGION_BLOCKS).rev().map(|i| start + i * BLOCK));
            NonNull::new(region.cast::<u8>()).expect("mmap never maps address 0 here")
        }
        #[cfg(not(target_os = "linux"))]
        {
            let layout = block_layout();
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { std::alloc::alloc(layout) };
            NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        }
    }

    /// # Safety
    /// As `give_block`, for this pool.
    unsafe fn give(&self, block: NonNull<u8>) {
        #[cfg(target_os = "linux")]
        self.lock().free.push(block.as_ptr() as usize);
        #[cfg(not(target_os = "linux"))]
        // SAFETY: allocated by `take` with this layout.
        unsafe {
            std::alloc::dealloc(block.as_ptr(), block_layout())
        };
    }

    /// Releases the pages of the free blocks (those handed back since the last
    /// release): one `madvise` per run of adjacent blocks, outside the lock.
    fn release(&self) {
        #[cfg(target_os = "linux")]
        {
            let mut free = std::mem::take(&mut self.lock().free);
            if free.is_empty() {
                return;
            }
            free.sort_unstable();
            let mut i = 0;
            while i < free.len() {
                let start = free[i];
                let mut end = start + BLOCK;
                i += 1;
                while i < free.len() && free[i] == end {
                    end += BLOCK;
                    i += 1;
                }
                // SAFETY: whole pages of blocks nobody holds (taken out of the pool
                // above): their contents may go.
                let _ =
                    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            }
            self.lock().released.extend(free);
        }
    }
}

/// Gives back the pages of the free blocks of `take_block` (a trim, `heap::give_back`).
pub fn release_blocks() {
    BLOCKS.release();
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
    /// future is made, then copied into the block whole (a `memcpy` of its size, most
    /// of it the state of requests to come); see `resident` for one that is built
    /// in its block.
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
        let block = reused.unwrap_or_else(|| new_block(layout));
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
            // SAFETY: the block was made for `layout` (see `with`) and holds no value.
            unsafe { free_block(block, layout) };
        }
    }
}

/// Runs `make(job)` in a block of its own, as `Recycled::with(|| make(job))` would, but
/// with `make`'s future built in the block instead of copied into it.
///
/// Why: `Recycled::with` writes a future that was made first, and a future made is a
/// value of its whole size (5.6 KiB for the HTTP/1.1 server's, nearly all of it the
/// state of requests to come), copied whole into the block: a `memcpy` of every byte,
/// cold cache lines and all, per connection. No stable way builds a value straight
/// behind a pointer (rustc marks no `&mut` argument `writable`, so LLVM does not make
/// the callee write into it; and a `&mut` to a future, which is `!Unpin`, is not even
/// `noalias`). What is built in place is a future pinned in a local of an async fn:
/// it lives in that fn's own state, and is made there. So the block keeps an async
/// loop (`run_jobs`) that makes each job's future as such a local, and outlives the
/// job: when the job is done the loop waits for the next one, and the block, loop and
/// all, goes to a per-thread list for the next `resident` of its kind. The loop is
/// built (and copied in whole) once per block; each job after that costs a copy of
/// its input.
///
/// As with `Recycled`, the job's future is done with when it completes (it holds
/// nothing then); dropped before that, it is dropped with its loop, and the block is
/// freed rather than kept.
pub fn resident<A, F, M>(job: A, make: M) -> Resident<A, F::Output, impl Future<Output = ()>>
where
    A: 'static,
    F: Future + 'static,
    M: Fn(A) -> F + 'static,
{
    Resident::start(job, move |mailbox| run_jobs(mailbox, make))
}

/// A job's input and output, at the start of a `resident` block: the handle
/// (`Resident`) puts the input in, the block's loop takes it, runs the job and puts
/// its output here.
struct Mailbox<A, O> {
    job: Cell<Option<A>>,
    done: Cell<Option<O>>,
    /// `done` holds the output: a look at a flag, where a look at `done` (a `take`)
    /// would copy the output each time the job is polled.
    finished: Cell<bool>,
}

/// The loop's pointer to its block's mailbox.
struct MailboxPtr<A, O>(NonNull<Mailbox<A, O>>);

impl<A, O> Clone for MailboxPtr<A, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, O> Copy for MailboxPtr<A, O> {}

// SAFETY: the mailbox is in the same block as the loop that holds this pointer, and
// only the one owner of the block's `Resident` (moved between threads whole, as a
// `Box` is) touches either, one at a time.
unsafe impl<A: Send, O: Send> Send for MailboxPtr<A, O> {}

impl<A, O> MailboxPtr<A, O> {
    /// # Safety
    /// The block is live (the loop runs in it). The mailbox is only ever used through
    /// shared references, its `Cell`s, and not across threads at once (see `Send`).
    unsafe fn get<'a>(self) -> &'a Mailbox<A, O> {
        // SAFETY: the caller's promise.
        unsafe { self.0.as_ref() }
    }
}

/// The loop a `resident` block keeps: each job's future made where it lives, in this
/// future's own state, and awaited there.
async fn run_jobs<A, F: Future>(mailbox: MailboxPtr<A, F::Output>, make: impl Fn(A) -> F) {
    loop {
        // SAFETY (both): the loop runs in the block its mailbox starts.
        let job = poll_fn(move |_| match unsafe { mailbox.get() }.job.take() {
            Some(job) => Poll::Ready(job),
            // Idle: the handle polls the loop again only once it has put a job in.
            None => Poll::Pending,
        })
        .await;
        let future = std::pin::pin!(make(job));
        let output = future.await;
        let mailbox = unsafe { mailbox.get() };
        mailbox.done.set(Some(output));
        mailbox.finished.set(true);
    }
}

thread_local! {
    /// Blocks whose loop waits for a job, by the loop's type (`resident`): up to
    /// `LAYOUTS` kinds, `KEPT` blocks each.
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

struct Idle {
    runner: TypeId,
    blocks: Vec<NonNull<u8>>,
    /// Drops a block's loop in place and frees the block (`Resident::release`).
    release: unsafe fn(NonNull<u8>),
}

impl Drop for Idle {
    fn drop(&mut self) {
        for block in self.blocks.drain(..) {
            // SAFETY: a kept block holds an idle loop of this list's type (see
            // `Resident::drop`) and is no longer in the list.
            unsafe { (self.release)(block) };
        }
    }
}

/// A job running in a `resident` block (`R`: the block's loop), like `Recycled`:
/// awaited, the job's output.
pub struct Resident<A: 'static, O: 'static, R: Future<Output = ()> + 'static> {
    block: NonNull<u8>,
    /// A job is in the block: handed in and not yet done.
    running: bool,
    _holds: PhantomData<(A, O, R)>,
}

// SAFETY: `Resident` owns its block and what is in it (the loop, the job's input and
// output) as a `Box` would; the loop's pointer to the mailbox stays in the block.
unsafe impl<A: Send, O: Send, R: Future<Output = ()> + Send> Send for Resident<A, O, R> {}

impl<A, O, R> Resident<A, O, R>
where
    A: 'static,
    O: 'static,
    R: Future<Output = ()> + 'static,
{
    /// The block's layout (the mailbox, then the loop) and where the loop is in it.
    fn layout() -> (Layout, usize) {
        Layout::new::<Mailbox<A, O>>().extend(Layout::new::<R>()).expect("a block's layout")
    }

    /// `job` in a block of this thread's list, or in a new one with a new loop
    /// (`runner`).
    fn start(job: A, runner: impl FnOnce(MailboxPtr<A, O>) -> R) -> Self {
        let kind = TypeId::of::<R>();
        let idle =
            IDLE.with_borrow_mut(|lists| lists.iter_mut().find(|list| list.runner == kind)?.blocks.pop());
        let block = idle.unwrap_or_else(|| {
            let (layout, at) = Self::layout();
            let block = new_block(layout);
            let mailbox = block.cast::<Mailbox<A, O>>();
            // SAFETY: a new block of `layout`: the mailbox at its start, the loop at
            // `at`. The loop is made here, and copied in whole, once per block.
            unsafe {
                mailbox.as_ptr().write(Mailbox {
                    job: Cell::new(None),
                    done: Cell::new(None),
                    finished: Cell::new(false),
                });
                block.as_ptr().add(at).cast::<R>().write(runner(MailboxPtr(mailbox)));
            }
            block
        });
        let resident = Resident { block, running: true, _holds: PhantomData };
        let slot = resident.mailbox().job.as_ptr();
        // SAFETY: the mailbox of a new block, or of an idle one (whose loop took its last
        // job), holds no job: written over without a drop. (`Cell::set` would read the
        // old value out first, a copy of the job's size.)
        unsafe {
            debug_assert!((*slot).is_none());
            slot.write(Some(job));
        }
        resident
    }

    fn mailbox(&self) -> &Mailbox<A, O> {
        // SAFETY: the block is live while `self` is, and starts with its mailbox.
        unsafe { self.block.cast::<Mailbox<A, O>>().as_ref() }
    }

    /// Drops a block's loop and mailbox in place, and frees it.
    ///
    /// # Safety
    /// `block` came from `start` for these types, and is not used afterwards.
    unsafe fn release(block: NonNull<u8>) {
        let (layout, at) = Self::layout();
        // SAFETY: the caller's promise: the block holds a mailbox and a loop, at
        // their places (see `start`), dropped nowhere else.
        unsafe {
            std::ptr::drop_in_place(block.as_ptr().add(at).cast::<R>());
            std::ptr::drop_in_place(block.cast::<Mailbox<A, O>>().as_ptr());
            free_block(block, layout);
        }
    }
}

impl<A, O, R> Future for Resident<A, O, R>
where
    A: 'static,
    O: 'static,
    R: Future<Output = ()> + 'static,
{
    type Output = O;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        // `Resident` is only a pointer: moving it never moves the loop.
        let this = self.get_mut();
        assert!(this.running, "`Resident` polled after it completed");
        let at = Self::layout().1;
        // SAFETY: the loop stays at this address until it is dropped in place; the
        // mailbox it reads is apart from it, before it in the block.
        let runner = unsafe { Pin::new_unchecked(&mut *this.block.as_ptr().add(at).cast::<R>()) };
        // The loop never ends: it runs the job, then waits for the next one.
        let _ = runner.poll(cx);
        if !this.mailbox().finished.replace(false) {
            return Poll::Pending;
        }
        this.running = false;
        Poll::Ready(this.mailbox().done.take().expect("a finished job's output"))
    }
}

impl<A, O, R: Future<Output = ()>> Unpin for Resident<A, O, R> {}

impl<A, O, R: Future<Output = ()>> Drop for Resident<A, O, R> {
    fn drop(&mut self) {
        // Nothing is kept across threads' ends, or of a job cut short: its loop
        // holds it, and goes with it.
        let kept = !self.running
            && IDLE
                .try_with(|lists| {
                    let mut lists = lists.borrow_mut();
                    let kind = TypeId::of::<R>();
                    let list = match lists.iter().position(|list| list.runner == kind) {
                        Some(at) => &mut lists[at],
                        None if lists.len() < LAYOUTS => {
                            lists.push(Idle { runner: kind, blocks: Vec::new(), release: Self::release });
                            lists.last_mut().expect("just pushed")
                        }
                        None => return false,
                    };
                    if list.blocks.len() < KEPT {
                        list.blocks.push(self.block);
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
        if !kept {
            // SAFETY: the block came from `start` for these types, and `self` is
            // its only user.
            unsafe { Self::release(self.block) };
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

    /// Whether the page at `at` is resident.
    #[cfg(target_os = "linux")]
    fn resident(at: usize) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: `at` is page-aligned and mapped; mincore writes one byte per page.
        let rc = unsafe { libc::mincore(at as *mut libc::c_void, 4096, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec[0] & 1 == 1
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn free_blocks_are_reused_and_their_pages_given_back_by_the_trim() {
        // A pool of its own: other tests use the process's.
        let blocks = Blocks::new();
        let taken: Vec<_> = (0..3).map(|_| blocks.take()).collect();
        for block in &taken {
            assert_eq!(block.as_ptr() as usize % 4096, 0, "page-aligned");
            // SAFETY: a block is BLOCK writable bytes.
            unsafe { block.as_ptr().write_bytes(0xa5, BLOCK) };
        }
        let first = taken[0].as_ptr() as usize;
        assert!(resident(first) && resident(first + 4096));
        for block in &taken {
            // SAFETY: taken above, handed back once.
            unsafe { blocks.give(*block) };
        }
        // Reused while it is free, pages and all.
        let again = blocks.take();
        assert!(taken.contains(&again));
        // SAFETY: as above.
        unsafe { blocks.give(again) };
        blocks.release();
        for block in &taken {
            let at = block.as_ptr() as usize;
            assert!(!resident(at) && !resident(at + 4096), "a free block's pages stay resident");
        }
        // Still the pool's: taken again, it reads as fresh memory.
        let reused: Vec<_> = (0..3).map(|_| blocks.take()).collect();
        for block in &reused {
            assert!(taken.contains(block), "a released block is taken before a new region is mapped");
            // SAFETY: a block is BLOCK readable bytes.
            assert_eq!(unsafe { block.as_ptr().read() }, 0);
        }
    }

    #[test]
    fn the_kept_blocks_are_freed_for_a_trim() {
        let drops = Arc::new(AtomicUsize::new(0));
        drop((0..KEPT).map(|_| Recycled::new(probe(&drops, 0))).collect::<Vec<_>>());
        let kept = || FREE.with_borrow(|lists| lists.iter().map(|list| list.blocks.len()).sum::<usize>());
        assert_eq!(kept(), KEPT);
        release_kept();
        assert_eq!(kept(), 0, "still kept through the trim");
        // The list works on afterwards.
        drop(Recycled::new(probe(&drops, 0)));
        assert_eq!(kept(), 1);
    }

    #[test]
    fn a_future_of_a_connections_size_lives_outside_the_heap() {
        assert!(in_block(Layout::new::<[u8; 7 * 1024]>()));
        assert!(!in_block(Layout::new::<[u8; 9 * 1024]>()), "too large: an ordinary allocation");
        assert!(in_block(Layout::new::<[u8; 1024]>()), "a connection's own future");
        assert!(!in_block(Layout::new::<[u8; 256]>()), "small: an ordinary allocation");
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
    /// A job for `resident`: its future, pending `polls_left` times, then `input + 1`;
    /// it tells where it was built and counts its drops.
    struct Job {
        input: usize,
        polls_left: usize,
        drops: Arc<AtomicUsize>,
        built_at: Arc<AtomicUsize>,
        panics: bool,
    }

    async fn job(job: Job) -> usize {
        let Job { input, polls_left, drops, built_at, panics } = job;
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let counted = Counted(drops);
        let mut ballast = [0u8; 600];
        built_at.store(&raw const ballast as usize, Ordering::SeqCst);
        for _ in 0..polls_left {
            let mut yielded = false;
            poll_fn(|cx| {
                if std::mem::replace(&mut yielded, true) {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
        }
        assert!(!panics, "the job panics");
        ballast[0] = 1;
        drop(counted);
        input + usize::from(ballast[0])
    }

    fn run(resident: &mut (impl Future<Output = usize> + Unpin)) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(output) = Pin::new(&mut *resident).poll(&mut cx) {
                return output;
            }
        }
    }

    fn new_job(
        input: usize,
        polls_left: usize,
        drops: &Arc<AtomicUsize>,
        built_at: &Arc<AtomicUsize>,
    ) -> Job {
        Job { input, polls_left, drops: drops.clone(), built_at: built_at.clone(), panics: false }
    }

    #[test]
    fn resident_jobs_run_one_after_another_in_the_block_they_keep() {
        let (drops, built_at) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut first = super::resident(new_job(1, 2, &drops, &built_at), job);
        let block = first.block.as_ptr() as usize;
        assert_eq!(run(&mut first), 2);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the job is done with when it completes");
        let at = built_at.load(Ordering::SeqCst);
        assert!(at > block && at < block + BLOCK, "the job's future is built in its block");
        drop(first);
        let mut second = super::resident(new_job(10, 1, &drops, &built_at), job);
        assert_eq!(second.block.as_ptr() as usize, block, "the block is kept, loop and all");
        assert_eq!(run(&mut second), 11);
        assert_eq!(built_at.load(Ordering::SeqCst), at, "the next job is built where the last one was");
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_resident_job_dropped_unfinished_is_dropped_and_its_block_freed() {
        let (drops, built_at) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let idle = || IDLE.with_borrow(|lists| lists.iter().map(|list| list.blocks.len()).sum::<usize>());
        let before = idle();
        let mut cut = super::resident(new_job(1, 5, &drops, &built_at), job);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut cut).poll(&mut cx).is_pending());
        drop(cut);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "the unfinished job is dropped with its loop");
        assert_eq!(idle(), before, "a block whose job was cut short is not kept");
        // Never polled: the job was never built, its input is dropped in the mailbox.
        drop(super::resident(new_job(1, 0, &drops, &built_at), job));
        assert_eq!(idle(), before);
    }

    #[test]
    fn a_resident_job_that_panics_is_dropped_once() {
        let (drops, built_at) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut panicking = super::resident(Job { panics: true, ..new_job(1, 0, &drops, &built_at) }, job);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut panicking)));
        assert!(caught.is_err());
        drop(panicking);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // The thread's next job of the kind runs in a new block, as usual.
        let mut next = super::resident(new_job(3, 0, &drops, &built_at), job);
        assert_eq!(run(&mut next), 4);
    }

    #[test]
    fn the_idle_resident_blocks_are_freed_for_a_trim() {
        let (drops, built_at) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut many: Vec<_> =
            (0..3).map(|i| super::resident(new_job(i, 0, &drops, &built_at), job)).collect();
        for one in &mut many {
            run(one);
        }
        drop(many);
        let idle = || IDLE.with_borrow(|lists| lists.iter().map(|list| list.blocks.len()).sum::<usize>());
        assert_eq!(idle(), 3);
        release_kept();
        assert_eq!(idle(), 0, "still kept through the trim");
        let mut again = super::resident(new_job(5, 0, &drops, &built_at), job);
        assert_eq!(run(&mut again), 6);
    }
}
