//! `RetryBudget`: retries may be at most a share of requests, as linkerd's and
//! Envoy's retry budgets allow, so when every server is failing weir does not
//! multiply the load on them.
//!
//! Each request deposits `ratio` of a token, up to a cap; each retry withdraws one
//! whole token. A floor of `MIN_RETRIES` tokens at the start lets a quiet upstream
//! still retry. Tokens are kept in thousandths in one atomic: no lock.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Tokens a budget starts with and never caps below.
pub const MIN_RETRIES: i64 = 10;
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
        RetryBudget { deposit, cap: MIN_RETRIES * UNIT, tokens: AtomicI64::new(MIN_RETRIES * UNIT) }
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
    fn a_zero_budget_allows_only_the_floor() {
        let budget = RetryBudget::new(0.0);
        let retries = (0..100).filter(|_| budget.try_withdraw()).count() as i64;
        assert_eq!(retries, MIN_RETRIES);
    }
}
