//! `LogThrottle`: at most one warning per `INTERVAL` for one source (a server, an
//! upstream), carrying how many were held back since the last one.
//!
//! During an outage every retried or failed request would log a line: dozens per
//! 100 ms at 100 req/s, burying the first one that says what went wrong. With this
//! the first failure is logged at once, later ones are counted, and the next failure
//! after `INTERVAL` logs one line with that count. A quiet source is logged at once
//! again, so the start of a new outage is never held back.
//!
//! Two atomics, no lock: it sits on the failure path of requests. When two failures
//! race past the interval together, one logs and the other is counted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The shortest time between two lines of one source.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One source's last logged line and the count held back since.
#[derive(Default)]
pub struct LogThrottle {
    /// When (`clock::now_ms`, plus one) a line was last logged; 0: never.
    logged: AtomicU64,
    /// Lines held back since then.
    held: AtomicU64,
}

impl LogThrottle {
    /// `Some(held back since the last line)` when this one is to be logged now.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(crate::clock::now_ms())
    }

    /// `admit` at `now_ms`.
    pub fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let stamp = now_ms + 1;
        let logged = self.logged.load(Relaxed);
        let due = logged == 0 || stamp.saturating_sub(logged) >= INTERVAL.as_millis() as u64;
        if due && self.logged.compare_exchange(logged, stamp, Relaxed, Relaxed).is_ok() {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_then_one_per_interval_with_the_count() {
        let t = LogThrottle::default();
        let interval = INTERVAL.as_millis() as u64;
        assert_eq!(t.admit_at(0), Some(0));
        for ms in 1..100 {
            assert_eq!(t.admit_at(ms), None);
        }
        assert_eq!(t.admit_at(interval - 1), None);
        assert_eq!(t.admit_at(interval), Some(100));
        assert_eq!(t.admit_at(interval + 1), None);
        // Long quiet: logged at once, with what was held back before.
        assert_eq!(t.admit_at(50 * interval), Some(1));
        assert_eq!(t.admit_at(50 * interval + 5), None);
    }

    #[test]
    fn racing_threads_log_once_per_interval() {
        let t = std::sync::Arc::new(LogThrottle::default());
        let logged: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let t = t.clone();
                    s.spawn(move || (0..1000).filter(|_| t.admit_at(7).is_some()).count() as u64)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(logged, 1);
        assert_eq!(t.admit_at(7 + INTERVAL.as_millis() as u64), Some(3999));
    }
}
