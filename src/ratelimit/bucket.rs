//! `TokenBucket`: the pure token-bucket rule, with time passed in.
//!
//! A bucket holds up to `burst` tokens and gains `rate` tokens per second,
//! continuously (fractions included, so a rate of 0.5/s admits one request every two
//! seconds and a rate of 100/s is not rounded to whole milliseconds). A request takes
//! one token or is denied with the time until the next whole token is due. Nothing
//! here reads a clock: callers pass `now`, so tests replay minutes of traffic in
//! microseconds.
//!
//! A bucket that has refilled to `burst` is indistinguishable from a bucket that was
//! never created; the keyed store relies on that to drop idle buckets.

use std::time::{Duration, Instant};

/// What a rate limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Admitted. `remaining` whole tokens are left; the bucket is full again after
    /// `reset` if nothing else is taken.
    Allow { remaining: u32, reset: Duration },
    /// Refused: the next token is due after `retry_after`.
    Deny { retry_after: Duration },
}

/// The shape of a bucket: tokens per second and capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second; finite and > 0 (checked by config validation).
    pub per_second: f64,
    /// Capacity, at least 1.
    pub burst: f64,
}

impl Rate {
    /// Time to add `tokens` tokens.
    pub(super) fn time_for(&self, tokens: f64) -> Duration {
        // Clamped: a tiny rate must not overflow a Duration.
        Duration::from_secs_f64((tokens / self.per_second).clamp(0.0, 1e9))
    }
}

/// One bucket: its rate, its tokens and when they were counted.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    /// When `tokens` was last brought up to date; also the key's last activity,
    /// which the store uses to evict the oldest key when it is full.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket: a new key may send `burst` requests at once.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket { rate, tokens: rate.burst, updated: now }
    }

    /// Takes one token if a whole one is there.
    pub fn try_take(&mut self, now: Instant) -> Decision {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Decision::Allow {
                // Truncation is the point: whole tokens left, never more than burst.
                remaining: self.tokens.floor().min(f64::from(u32::MAX)) as u32,
                reset: self.rate.time_for(self.rate.burst - self.tokens),
            }
        } else {
            Decision::Deny { retry_after: self.rate.time_for(1.0 - self.tokens) }
        }
    }

    /// Whether the bucket would be full at `now`, and so can be forgotten.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.rate.per_second >= self.rate.burst
    }

    /// When this bucket last took or refused a request.
    pub fn updated(&self) -> Instant {
        self.updated
    }

    /// Tokens in the bucket as of its last update.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        // An instant older than the last update (callers on other threads) adds
        // nothing and does not move time backwards.
        if now > self.updated {
            let elapsed = (now - self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
            self.updated = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_new_bucket_admits_a_burst_then_denies() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(1.0, 3.0), t0);
        for left in [2, 1, 0] {
            assert!(matches!(b.try_take(t0), Decision::Allow { remaining, .. } if remaining == left));
        }
        let Decision::Deny { retry_after } = b.try_take(t0) else { panic!("fourth request admitted") };
        assert_eq!(retry_after, Duration::from_secs(1));
    }

    #[test]
    fn tokens_refill_continuously_and_fractionally() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(2.0, 1.0), t0);
        assert!(matches!(b.try_take(t0), Decision::Allow { .. }));
        // Half a token after 250ms at 2/s: still denied, next token due in 250ms.
        let Decision::Deny { retry_after } = b.try_take(t0 + Duration::from_millis(250)) else {
            panic!("admitted with half a token")
        };
        assert!((retry_after.as_secs_f64() - 0.25).abs() < 1e-9, "{retry_after:?}");
        assert!(matches!(b.try_take(t0 + Duration::from_millis(500)), Decision::Allow { .. }));
    }

    #[test]
    fn a_fractional_rate_admits_one_request_per_period() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(0.5, 1.0), t0);
        assert!(matches!(b.try_take(t0), Decision::Allow { .. }));
        assert!(matches!(b.try_take(t0 + Duration::from_millis(1999)), Decision::Deny { .. }));
        assert!(matches!(b.try_take(t0 + Duration::from_secs(4)), Decision::Allow { .. }));
    }

    #[test]
    fn reset_is_the_time_until_full() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(10.0, 5.0), t0);
        let Decision::Allow { remaining, reset } = b.try_take(t0) else { panic!() };
        assert_eq!((remaining, reset), (4, Duration::from_millis(100)));
        assert!(!b.is_full_at(t0 + Duration::from_millis(99)));
        assert!(b.is_full_at(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(rate(1.0, 1.0), t0);
        assert!(matches!(b.try_take(t0), Decision::Allow { .. }));
        assert!(matches!(b.try_take(t0 - Duration::from_secs(5)), Decision::Deny { .. }));
        assert_eq!(b.updated(), t0);
    }

    /// The accuracy bound: a client sending at 5 x rate for 10 s is admitted
    /// rate x 10 + burst, within 2%.
    #[test]
    fn sending_at_five_times_the_rate_admits_rate_times_time_plus_burst() {
        for (per_second, burst) in [(100.0, 200.0), (10.0, 1.0), (3.5, 7.0), (1000.0, 50.0)] {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate(per_second, burst), t0);
            let sends = (per_second * 5.0 * 10.0) as u64;
            let gap = Duration::from_secs(10).as_nanos() as f64 / sends as f64;
            // From 0 s to 10 s inclusive: the refill of the whole ten seconds counts.
            let admitted = (0..=sends)
                .filter(|i| {
                    let now = t0 + Duration::from_nanos((*i as f64 * gap) as u64);
                    matches!(b.try_take(now), Decision::Allow { .. })
                })
                .count() as f64;
            let expected = per_second * 10.0 + burst;
            assert!(
                (admitted - expected).abs() <= expected * 0.02,
                "rate {per_second} burst {burst}: admitted {admitted}, expected {expected}"
            );
        }
    }

    proptest! {
        /// Whatever the timing, a bucket never holds more than `burst` tokens and
        /// never reports more remaining.
        #[test]
        fn a_bucket_never_exceeds_burst(
            per_second in 0.01f64..10_000.0,
            burst in 1u32..1000,
            gaps in proptest::collection::vec(0u64..5_000_000_000, 1..200),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate(per_second, f64::from(burst)), t0);
            let mut now = t0;
            for gap in gaps {
                now += Duration::from_nanos(gap);
                if let Decision::Allow { remaining, .. } = b.try_take(now) {
                    prop_assert!(remaining < burst);
                }
                prop_assert!(b.tokens() <= f64::from(burst));
                prop_assert!(b.tokens() >= 0.0);
            }
        }
    }
}
