//! Picks a server of one upstream. Built once per runtime; a pick never locks or
//! allocates.
//!
//! The set of algorithms is closed, so it is an enum: a `match` costs no box or
//! vtable, and the compiler finds every place a new variant must go. A balancer only
//! orders candidates; the caller decides eligibility (healthy, primary or backup, not
//! already tried by this request) and loops over retries.

mod round_robin;

pub use round_robin::RoundRobin;

use crate::config::BalancerKind;

/// Request facts some algorithms use to choose.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickKey {
    /// Hash of the request's affinity key, for hashing balancers.
    pub hash: Option<u64>,
}

/// One upstream's balancer.
pub enum Balancer {
    RoundRobin(RoundRobin),
}

impl Balancer {
    /// Builds the balancer for servers with these weights (index = server index).
    pub fn new(kind: BalancerKind, weights: &[u32]) -> Balancer {
        match kind {
            BalancerKind::RoundRobin => Balancer::RoundRobin(RoundRobin::new(weights)),
        }
    }

    /// Index of the first server, in this algorithm's order, that `eligible` accepts.
    pub fn pick(&self, _key: &PickKey, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(eligible),
        }
    }
}
