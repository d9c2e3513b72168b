//! Handing memory back to the OS. glibc keeps what a program frees in its arenas for
//! reuse, so RSS stays at its high-water mark: after a burst of connections that have
//! since gone idle (their tasks freed), or after a reload replaced a large runtime.
//! `malloc_trim` gives back every whole free page, inside the heap too. It walks the
//! arenas, so it is called rarely and off the serving threads (with the pages of
//! `recycle`'s free blocks, kept outside the heap). Also: how many arenas glibc may
//! make (`share_arenas`), and the resident pages of weir's own code that start-up and
//! reloads touch once (`release_code`).

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
    fn every_serving_thread_keeps_an_arena_of_its_own() {
        assert_eq!(arenas_for(1), 1);
        assert_eq!(arenas_for(4), 5);
        // The default, one worker per core, is not one arena for all of them.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(arenas_for(0), cores + 1);
    }
}
