//! `RetryBudget`: retries may be at most a share of requests, as linkerd's and
//! Envoy's retry budgets allow, so when every server is failing weir does not
//! multiply the load on them.
//!
//! Each request deposits `ratio` of a token, up to a cap; each retry withdraws one
//! whole token. A floor of `MIN_RETRIES` tokens at the start lets a quiet upstream
//! still retry. Tokens are kept in thousandths in one atomic: no lock.
//!
//! The cap is the share of the last `BURST_REQUESTS` requests (plus the floor): a
//! server that dies under many concurrent requests fails them all in the same
//! instant, and each deserves its retry elsewhere. With a cap of the floor alone, a
//! soak with 32 clients lost a dozen GETs at every kill once 10 were retried. A pool
//! that keeps failing still gets retries for only `ratio` of its requests once the
//! reserve is spent, which is what the budget is for.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Tokens a budget starts with and never caps below.
pub const MIN_RETRIES: i64 = 10;
/// The reserve of retries is the budget's share of this many requests.
pub const BURST_REQUESTS: i64 = 1000;
const UNIT: i64 = 1000;

/// A share of requests that may be retried.
pub struct RetryBudget {
    /// Thousandths of a token deposited per request.
    deposit: i64,
    cap: i64,
    tokens: AtomicI64,
}

impl RetryBudget {
    /// A budget allowing retries of `ratio` (0.0 to 1.0) of requests.
    pub fn new(ratio: f64) -> RetryBudget {
        let deposit = (ratio.clamp(0.0, 1.0) * UNIT as f64) as i64;
        let cap = MIN_RETRIES * UNIT + deposit * BURST_REQUESTS;
        RetryBudget { deposit, cap, tokens: AtomicI64::new(MIN_RETRIES * UNIT) }
    }

    /// Counts one request.
    pub fn deposit(&self) {
        if self.deposit == 0 || self.tokens.load(Relaxed) >= self.cap {
            return;
        }
        let _ = self.tokens.fetch_update(Relaxed, Relaxed, |t| Some((t + self.deposit).min(self.cap)));
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.tokens.fetch_update(Relaxed, Relaxed, |t| (t >= UNIT).then_some(t - UNIT)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_share_of_requests() {
        let budget = RetryBudget::new(0.2);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        // 20% of 1000 requests, plus the starting floor (less the deposit that found
        // the budget full).
        assert!((200..=200 + MIN_RETRIES).contains(&retries), "{retries}");
        assert!(retries >= 200 + MIN_RETRIES - 1, "{retries}");
    }

    #[test]
    fn a_burst_of_failures_draws_on_the_share_of_recent_requests() {
        let budget = RetryBudget::new(0.2);
        for _ in 0..5000 {
            budget.deposit();
        }
        // Full: the floor plus 20% of the last 1,000 requests, all at once.
        let burst = (0..1000).take_while(|_| budget.try_withdraw()).count() as i64;
        assert_eq!(burst, MIN_RETRIES + 200);
    }

    #[test]
    fn a_zero_budget_allows_only_the_floor() {
        let budget = RetryBudget::new(0.0);
        let retries = (0..100).filter(|_| budget.try_withdraw()).count() as i64;
        assert_eq!(retries, MIN_RETRIES);
    }
}
