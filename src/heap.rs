//! Handing memory back to the OS. glibc keeps what a program frees in its arenas for
//! reuse, so RSS stays at its high-water mark: after a burst of connections that have
//! since gone idle (their tasks freed), or after a reload replaced a large runtime.
//! `malloc_trim` gives back every whole free page, inside the heap too. It walks the
//! arenas, so it is called rarely and off the serving threads (with the pages of
//! `recycle`'s free blocks, kept outside the heap). Also: how many arenas glibc may
//! make (`share_arenas`), the resident pages of weir's own code that start-up and
//! reloads touch once (`release_code`), and weir's global allocator (`Allocator`):
//! glibc's, with a small per-thread stash of the cache-line-aligned blocks tokio
//! takes for every connection.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

/// Returns the heap's free pages to the OS, and those of `recycle`'s free blocks.
/// Blocks for as long as glibc takes to walk its arenas (milliseconds for a heap of
/// hundreds of MiB): call it from a blocking thread. The heap's part does nothing
/// where the allocator is not glibc's.
pub fn give_back() {
    crate::recycle::release_blocks();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it touches no live block.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// weir's global allocator: the system's (glibc's), with a stash in front of it for
/// small over-aligned blocks on serving threads.
///
/// tokio takes two blocks aligned to 128 bytes for every connection: its task's cell
/// and its socket's registration (`ScheduledIo`). glibc serves an aligned block the
/// slow way, past its per-thread cache: a larger block from the arena's bins, split,
/// its head freed back (`_int_memalign`, about 450 instructions each); and frees it
/// through the bins too. A connection paid some 1,100 instructions for those two
/// blocks, 5% of all it costs. Here a serving thread keeps the last few it freed of
/// each layout, and hands them out again as they are: a pop and a push.
///
/// Only threads that asked (`stash_here`) stash, and each gives its stash back when
/// it ends (`release_stash`): a blocking-pool thread that comes and goes leaks
/// nothing. Every other allocation goes straight to the system allocator.
pub struct Allocator;

/// Layouts kept per thread: tokio's task cells (one size per kind of task) and
/// registrations.
const STASH_LAYOUTS: usize = 4;

/// Blocks kept per layout: a burst's worth of connections, at most
/// `STASH_LAYOUTS * STASH_DEPTH * STASH_LARGEST` bytes (128 KiB) a thread.
const STASH_DEPTH: usize = 32;

/// Blocks up to this size are stashed: tokio's are a few hundred bytes.
const STASH_LARGEST: usize = 1024;

/// The alignment glibc's `malloc` gives anyway: blocks aligned no more than this
/// take its fast path and are not stashed.
const MALLOC_ALIGN: usize = 16;

struct Stash {
    on: bool,
    lists: [StashList; STASH_LAYOUTS],
}

/// Freed blocks of one layout (`size == 0`: the slot is free).
struct StashList {
    size: usize,
    align: usize,
    len: usize,
    blocks: [*mut u8; STASH_DEPTH],
}

const EMPTY_LIST: StashList =
    StashList { size: 0, align: 0, len: 0, blocks: [std::ptr::null_mut(); STASH_DEPTH] };

thread_local! {
    // Const-initialized and without `Drop`: no lazy set-up or destructor to
    // register, which an allocator could not afford (both may allocate).
    static STASH: UnsafeCell<Stash> = const { UnsafeCell::new(Stash { on: false, lists: [EMPTY_LIST; STASH_LAYOUTS] }) };
}

/// Whether `layout` is one a stash keeps.
fn stashable(layout: Layout) -> bool {
    layout.align() > MALLOC_ALIGN && layout.size() <= STASH_LARGEST
}

/// Runs `f` on this thread's stash if it has one on (`None` otherwise, and once the
/// thread's locals are gone).
fn with_stash<R>(f: impl FnOnce(&mut Stash) -> R) -> Option<R> {
    STASH
        .try_with(|stash| {
            // SAFETY: the stash is this thread's own, and nothing `f` does (no
            // allocation, no call out) can reach it again while this borrow lives.
            let stash = unsafe { &mut *stash.get() };
            stash.on.then(|| f(stash))
        })
        .ok()
        .flatten()
}

/// Has this thread stash its small aligned blocks (see `Allocator`): for serving
/// threads, at their start. Pair it with `release_stash` when the thread ends.
pub fn stash_here() {
    with_stash_anyway(|stash| stash.on = true);
}

/// Gives this thread's stashed blocks back to the system allocator, and stops
/// stashing on it: at a thread's end (tokio's `on_thread_stop`).
pub fn release_stash() {
    with_stash_anyway(|stash| {
        stash.on = false;
        stash.free_all();
    });
}

/// Frees the stashed blocks but keeps stashing: for a trim of the heap.
pub fn trim_stash() {
    with_stash_anyway(Stash::free_all);
}

fn with_stash_anyway(f: impl FnOnce(&mut Stash)) {
    let _ = STASH.try_with(|stash| {
        // SAFETY: as in `with_stash`.
        f(unsafe { &mut *stash.get() })
    });
}

impl Stash {
    /// Frees every stashed block to the system allocator.
    fn free_all(&mut self) {
        for list in &mut self.lists {
            if let Ok(layout) = Layout::from_size_align(list.size, list.align.max(1)) {
                for &block in &list.blocks[..list.len] {
                    // SAFETY: a stashed block came from `System.alloc(layout)` and is
                    // owned by the stash alone.
                    unsafe { System.dealloc(block, layout) };
                }
            }
            *list = EMPTY_LIST;
        }
    }

    fn pop(&mut self, layout: Layout) -> Option<*mut u8> {
        let list = self.lists.iter_mut().find(|l| l.size == layout.size() && l.align == layout.align())?;
        list.len = list.len.checked_sub(1)?;
        Some(list.blocks[list.len])
    }

    /// Keeps `block`; false when its layout's list is full (or there is no room for
    /// another layout).
    fn push(&mut self, block: *mut u8, layout: Layout) -> bool {
        let (size, align) = (layout.size(), layout.align());
        let list = match self.lists.iter().position(|l| l.size == size && l.align == align) {
            Some(at) => &mut self.lists[at],
            None => match self.lists.iter_mut().find(|l| l.size == 0) {
                Some(free) => {
                    free.size = size;
                    free.align = align;
                    free
                }
                None => return false,
            },
        };
        if list.len == STASH_DEPTH {
            return false;
        }
        list.blocks[list.len] = block;
        list.len += 1;
        true
    }
}

// SAFETY: every block comes from `System` with the layout it is later freed with: a
// stashed block was allocated by `System.alloc(layout)` and is handed out again only
// for that same layout, so the `dealloc` (or `realloc`) it later gets carries it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if stashable(layout) {
            if let Some(block) = with_stash(|stash| stash.pop(layout)).flatten() {
                return block;
            }
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if stashable(layout) && with_stash(|stash| stash.push(ptr, layout)) == Some(true) {
            return;
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Not from the stash: calloc knows when fresh pages are zero already.
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A stashed block is an ordinary one of `layout`: glibc may grow it in place.
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The arenas `share_arenas` allows for a config's `workers`: one per serving thread,
/// plus the main thread's when it does not serve (it does only with one worker, on a
/// current-thread runtime). `workers = 0` means one worker per core.
pub fn arenas_for(workers: usize) -> usize {
    match workers {
        1 => 1,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()) + 1,
        n => n + 1,
    }
}

/// Caps glibc's arenas at `arenas` (at least 1): call it before any thread starts,
/// with one arena per serving thread (plus the main thread's when it does not serve).
///
/// Left alone, glibc gives each new thread that allocates an arena of its own, up to
/// 8 per core. A reload builds the new runtime on a blocking-pool thread, so the
/// runtime and everything later reloads build land in an arena beside the serving
/// threads' ones; the freed runtimes leave it fragmented, and at 5,000 servers the
/// extra arena kept 4–7 MiB resident (BENCHMARKS.md, "RSS after reloads"). Capped, the
/// blocking threads share a serving thread's arena (glibc picks one that is not
/// locked at that moment), and a reload's peak reuses the holes of the one before.
/// The serving threads each keep their own arena, so requests contend for no lock
/// they did not already take. An operator's own limit (`MALLOC_ARENA_MAX`, or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) is left as set. Does nothing where the
/// allocator is not glibc's.
pub fn share_arenas(arenas: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() || tunables.contains("arena_max") {
            return;
        }
        let arenas = libc::c_int::try_from(arenas.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a limit glibc reads when a thread first allocates.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Drops the resident pages of weir's own code and read-only data, so the resident
/// set holds what serving uses: called once listeners are bound at start, and after
/// each reload (which faults the config-parsing and build code back in, 1–2 MiB).
/// Those pages are clean copies of the binary: they stay in the page cache, and
/// whatever runs again (the serving path at its next request) faults back in from it.
///
/// Without this an idle weir shows about 4 MiB more resident memory than it serves
/// with, most of it code that never runs again. nginx gets the same by construction:
/// its master parses the config and the worker it forks never maps those pages.
///
/// Only the segments from the ELF header to the end of the text are released: they
/// are mapped from the file and never written. The writable segments after them
/// (relocated pointers, statics) are left alone.
///
/// Linux only: the two symbols are what GNU ld, gold, lld and mold define for ELF.
/// Elsewhere it does nothing.
pub fn release_code() {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            // Defined by the linker: the first byte of the first segment, and the end
            // of the text segment.
            static __ehdr_start: u8;
            static etext: u8;
        }
        // Only the symbols' addresses are taken; they are never read.
        let (start, end) = (&raw const __ehdr_start as usize, &raw const etext as usize);
        // SAFETY: the range is whole pages of read-only, file-backed mappings of this
        // binary (no text relocations, so no page in it was ever written): dropping
        // them only costs a page fault where they are used again, which refills them
        // unchanged from the file.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let end = end & !(page - 1);
        if start % page == 0 && end > start {
            // SAFETY: see above.
            let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stashing_thread_gets_its_freed_aligned_blocks_back_and_others_do_not() {
        let layout = Layout::from_size_align(320, 128).unwrap();
        std::thread::spawn(move || {
            stash_here();
            let a = unsafe { Allocator.alloc(layout) };
            assert_eq!(a as usize % 128, 0);
            unsafe { Allocator.dealloc(a, layout) };
            // The same block, from the stash.
            let b = unsafe { Allocator.alloc(layout) };
            assert_eq!(a, b);
            // Another layout does not get it.
            let other = Layout::from_size_align(256, 128).unwrap();
            unsafe { Allocator.dealloc(b, layout) };
            let c = unsafe { Allocator.alloc(other) };
            assert_ne!(c, a);
            unsafe { Allocator.dealloc(c, other) };
            release_stash();
            // Released, and no longer stashing: the lists are empty and stay so.
            assert_eq!(stashed_blocks(), 0);
            let d = unsafe { Allocator.alloc(layout) };
            unsafe { Allocator.dealloc(d, layout) };
            assert_eq!(stashed_blocks(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_stash_frees_to_the_system_and_plain_blocks_are_never_kept() {
        std::thread::spawn(|| {
            stash_here();
            let layout = Layout::from_size_align(192, 64).unwrap();
            let blocks: Vec<_> = (0..STASH_DEPTH + 5).map(|_| unsafe { Allocator.alloc(layout) }).collect();
            for &b in &blocks {
                unsafe { Allocator.dealloc(b, layout) };
            }
            assert_eq!(stashed_blocks(), STASH_DEPTH);
            // Ordinary alignment and large blocks go straight to the system.
            for layout in
                [Layout::from_size_align(192, 16).unwrap(), Layout::from_size_align(4096, 128).unwrap()]
            {
                let b = unsafe { Allocator.alloc(layout) };
                unsafe { Allocator.dealloc(b, layout) };
            }
            assert_eq!(stashed_blocks(), STASH_DEPTH);
            // Layouts beyond `STASH_LAYOUTS` are not kept.
            for size in 1..=STASH_LAYOUTS + 2 {
                let layout = Layout::from_size_align(size * 128, 128).unwrap();
                let b = unsafe { Allocator.alloc(layout) };
                unsafe { Allocator.dealloc(b, layout) };
            }
            assert_eq!(stashed_blocks(), STASH_DEPTH + STASH_LAYOUTS - 1);
            trim_stash();
            assert_eq!(stashed_blocks(), 0);
            // Still stashing after a trim.
            let b = unsafe { Allocator.alloc(layout) };
            unsafe { Allocator.dealloc(b, layout) };
            assert_eq!(stashed_blocks(), 1);
            release_stash();
        })
        .join()
        .unwrap();
    }

    /// Blocks in this thread's stash.
    fn stashed_blocks() -> usize {
        let mut n = 0;
        with_stash_anyway(|stash| n = stash.lists.iter().map(|l| l.len).sum());
        n
    }

    #[test]
    fn every_serving_thread_keeps_an_arena_of_its_own() {
        assert_eq!(arenas_for(1), 1);
        assert_eq!(arenas_for(4), 5);
        // The default, one worker per core, is not one arena for all of them.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(arenas_for(0), cores + 1);
    }
}
