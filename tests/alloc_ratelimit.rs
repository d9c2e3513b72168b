//! The rate limit store's memory bound, measured with a counting allocator.
//!
//! A `#[global_allocator]` replaces the allocator of the whole binary it is linked
//! into, so it lives in this test binary of its own rather than among the library's
//! unit tests, which keep the system allocator.

use std::time::{Duration, Instant};

use weir::ratelimit::{Rate, Store};

mod counting;

use counting::held;

const RATE: Rate = Rate { per_second: 1.0, burst: 5.0 };

/// The memory bound: a flood of one million distinct client addresses leaves at most
/// `max_keys` buckets, and the heap the store holds stays at what `max_keys` buckets
/// need, however many keys went by.
#[test]
fn a_million_distinct_keys_leave_memory_bounded() {
    let max_keys = 10_000;
    let before = held();
    let store = Store::new(RATE, max_keys);
    let t0 = Instant::now();
    let mut after_cap = 0;
    for i in 0..1_000_000u32 {
        let key = store.hash(std::net::Ipv4Addr::from(0x0a00_0000 + i).octets());
        // 100 new clients per millisecond: none refills before the cap is reached.
        store.try_take(key, t0 + Duration::from_micros(u64::from(i) * 10));
        if i == 2 * max_keys as u32 {
            after_cap = held() - before;
        }
    }
    let stored = store.len();
    let heap = held() - before;
    assert!(stored <= max_keys, "{stored} keys stored, cap {max_keys}");
    assert!(stored >= max_keys / 2, "evicted far more than needed: {stored}");
    // An entry is 48 bytes plus a control byte, in a power-of-two table at most 7/8
    // full (so under two slots per key), plus a 16-byte scratch slot per key.
    assert!(heap <= (max_keys * 128) as isize, "store holds {heap} bytes");
    assert_eq!(heap, after_cap, "heap grew after the cap was reached");
    drop(store);
    assert_eq!(held(), before, "dropping the store frees everything");
}

/// The counter sees what it should, so the test above cannot pass by counting nothing.
#[test]
fn the_counter_sees_allocations_on_this_thread() {
    let before = held();
    let buffer = vec![0u8; 4096];
    assert_eq!(held() - before, 4096);
    drop(buffer);
    assert_eq!(held(), before);
}
