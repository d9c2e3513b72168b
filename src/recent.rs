//! `RecentErrors`: one server's attempts and errors over the last minute, for the
//! admin `/status` view.
//!
//! Sixty one-second slots in a ring, each tagged with the second it counts, all
//! atomics: the request path adds to the current second's slot and never locks; a
//! reader sums the slots whose tag is within the window. The first attempt of a new
//! second claims its slot and clears the counts it held a minute ago. An attempt
//! racing that claim can be lost, so the view may undercount by a few attempts per
//! second; it is a status view, the exact counts are in `/metrics`.
//!
//! Written by `health::record` (every attempt's outcome passes there); read by
//! `admin`. Lives in `ServerState`, so it survives reloads.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// The window `/status` reports over, in seconds.
pub const WINDOW_SECS: u64 = 60;

#[derive(Default)]
struct Slot {
    /// The second counted, plus one; 0 means never used.
    tag: AtomicU64,
    attempts: AtomicU32,
    errors: AtomicU32,
}

/// Attempts and errors per second over the last `WINDOW_SECS` seconds.
pub struct RecentErrors {
    slots: [Slot; WINDOW_SECS as usize],
}

impl Default for RecentErrors {
    fn default() -> Self {
        RecentErrors { slots: std::array::from_fn(|_| Slot::default()) }
    }
}

impl RecentErrors {
    /// Counts one attempt at second `now_secs`; `error` marks a failed one.
    pub fn record(&self, now_secs: u64, error: bool) {
        let slot = &self.slots[(now_secs % WINDOW_SECS) as usize];
        let tag = now_secs + 1;
        let seen = slot.tag.load(Relaxed);
        if seen != tag && slot.tag.compare_exchange(seen, tag, Relaxed, Relaxed).is_ok() {
            slot.attempts.store(0, Relaxed);
            slot.errors.store(0, Relaxed);
        }
        slot.attempts.fetch_add(1, Relaxed);
        if error {
            slot.errors.fetch_add(1, Relaxed);
        }
    }

    /// `(attempts, errors)` over the `WINDOW_SECS` seconds up to `now_secs`.
    pub fn totals(&self, now_secs: u64) -> (u64, u64) {
        let newest = now_secs + 1;
        self.slots
            .iter()
            .filter(|s| {
                let tag = s.tag.load(Relaxed);
                tag != 0 && tag <= newest && newest - tag < WINDOW_SECS
            })
            .fold((0, 0), |(a, e), s| {
                (a + u64::from(s.attempts.load(Relaxed)), e + u64::from(s.errors.load(Relaxed)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_minute_only() {
        let r = RecentErrors::default();
        r.record(0, true);
        r.record(10, false);
        r.record(10, true);
        r.record(59, false);
        assert_eq!(r.totals(59), (4, 2));
        // At 60 the slot of second 0 has left the window.
        assert_eq!(r.totals(60), (3, 1));
        assert_eq!(r.totals(69), (3, 1));
        assert_eq!(r.totals(70), (1, 0));
        assert_eq!(r.totals(200), (0, 0));
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let r = RecentErrors::default();
        r.record(5, true);
        r.record(65, false);
        assert_eq!(r.totals(65), (1, 0));
    }
}
