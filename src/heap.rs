//! Handing freed heap memory back to the OS. glibc keeps what a program frees in its
//! arenas for reuse, so RSS stays at its high-water mark: after a burst of connections
//! that have since gone idle (their tasks freed), or after a reload replaced a large
//! runtime. `malloc_trim` gives back every whole free page, inside the heap too. It
//! walks the arenas, so it is called rarely and off the serving threads.

/// Returns the heap's free pages to the OS. Blocks for as long as glibc takes to walk
/// its arenas (milliseconds for a heap of hundreds of MiB): call it from a blocking
/// thread. Does nothing where the allocator is not glibc's.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it touches no live block.
    unsafe {
        libc::malloc_trim(0);
    }
}
