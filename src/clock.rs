//! The process's millisecond clock, for timestamps kept in atomics (slow start,
//! ejections, store back-off) where 0 means "unset".

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Milliseconds since this process first asked; never 0, so 0 can mean "unset". Uses
/// tokio's clock so paused-time tests control it.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `now_ms` at `at`, a moment already read (a request's steps share one reading
/// rather than each asking the clock).
pub fn ms_at(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    // Never 0 (a moment read before the epoch was set counts as its first ms).
    (at.saturating_duration_since(epoch).as_millis() as u64).max(1)
}
