//! Handing memory back to the OS. glibc keeps what a program frees in its arenas for
//! reuse, so RSS stays at its high-water mark: after a burst of connections that have
//! since gone idle (their tasks freed), or after a reload replaced a large runtime.
//! `malloc_trim` gives back every whole free page, inside the heap too. It walks the
//! arenas, so it is called rarely and off the serving threads. Also: blocks of two
//! pages kept outside glibc's heap (`take_block`), how many arenas glibc may make
//! (`share_arenas`), and the resident pages of weir's own code that start-up and
//! reloads touch once (`release_code`).

use std::ptr::NonNull;

/// Returns the heap's free pages to the OS, and those of `take_block`'s free blocks.
/// Blocks for as long as glibc takes to walk its arenas (milliseconds for a heap of
/// hundreds of MiB): call it from a blocking thread. The heap's part does nothing
/// where the allocator is not glibc's.
pub fn give_back() {
    BLOCKS.release();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it touches no live block.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The size of a block from `take_block`: two pages, room for a connection's future.
pub const BLOCK: usize = 8192;

/// A block of `BLOCK` bytes, aligned to a page, for a large object that lives about
/// as long as one connection is busy (a connection's future, `listener::recycle`);
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
/// own short list (`listener::recycle`) is empty, so the lock is off the common path.
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
    fn every_serving_thread_keeps_an_arena_of_its_own() {
        assert_eq!(arenas_for(1), 1);
        assert_eq!(arenas_for(4), 5);
        // The default, one worker per core, is not one arena for all of them.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(arenas_for(0), cores + 1);
    }
}
