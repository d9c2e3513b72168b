//! Smooth weighted round-robin, as nginx does it (ngx_http_upstream_round_robin.c):
//! every pick, each server's current weight grows by its weight, the largest wins and
//! drops by the total. Weights 5,1,1 give `a a b a c a a`, not `a a a a a b c`, so a
//! heavy server never gets a run of requests in a row.
//!
//! nginx runs that step per request under the upstream's lock. weir runs it once at
//! build time, over one whole cycle (the weights' sum divided by their gcd), and a
//! pick is then one atomic increment into that table. Skipping an ineligible server
//! claims the next slot of the table, which keeps the remaining servers' shares in
//! proportion.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Smooth weighted round-robin over a precomputed cycle.
pub struct RoundRobin {
    cycle: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the cycle for servers with these weights (each at least 1).
    pub fn new(weights: &[u32]) -> RoundRobin {
        RoundRobin { cycle: smooth_cycle(weights).into(), next: AtomicUsize::new(0) }
    }

    /// The next eligible server in the cycle.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.cycle.len();
        if len == 0 {
            return None;
        }
        // Each step claims the next slot of the shared cycle, so skipped slots are
        // spread over the eligible servers in cycle order, not handed to a neighbour.
        let mut last = 0;
        for _ in 0..len {
            last = self.next.fetch_add(1, Relaxed);
            let i = self.cycle[last % len] as usize;
            if eligible(i) {
                return Some(i);
            }
        }
        // Other requests claimed slots in between ours, so ours may all have fallen on
        // ineligible servers: walk the whole cycle once before saying there is none.
        (1..=len).map(|step| self.cycle[last.wrapping_add(step) % len] as usize).find(|&i| eligible(i))
    }

    /// The next server in the cycle, eligible or not: where other algorithms start
    /// when they need a weighted rotation (least-connections' tie order, hashing's
    /// fallback).
    pub fn next_index(&self) -> Option<usize> {
        let len = self.cycle.len();
        (len > 0).then(|| self.cycle[self.next.fetch_add(1, Relaxed) % len] as usize)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One full cycle of nginx's smooth weighted round-robin picks.
fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    // Equal weights (the common case at thousands of servers) cycle in order; the
    // steps below would cost servers x servers to find that out.
    if weights.iter().all(|&w| w == 1) {
        return (0..weights.len() as u32).collect();
    }
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        // Ties go to the earlier server, as in nginx.
        let best = (0..current.len()).fold(0, |best, i| if current[i] > current[best] { i } else { best });
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_cycle_in_order_as_the_steps_would() {
        assert_eq!(smooth_cycle(&[3, 3, 3, 3]), vec![0, 1, 2, 3]);
        // The same weights through the general steps (2 and 1 are not all equal).
        let mixed = smooth_cycle(&[2, 2, 1]);
        assert_eq!(mixed, vec![0, 1, 2, 0, 1]);
    }
    use proptest::prelude::*;

    fn picks(rr: &RoundRobin, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.pick(|_| true).unwrap()).collect()
    }

    #[test]
    fn weights_5_1_1_interleave_as_nginx_does() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(picks(&rr, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(picks(&rr, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_rotate() {
        let rr = RoundRobin::new(&[2, 2, 2]);
        assert_eq!(picks(&rr, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ineligible_servers_are_skipped_and_none_eligible_gives_none() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        for _ in 0..10 {
            assert_ne!(rr.pick(|i| i != 1), Some(1));
        }
        assert_eq!(rr.pick(|_| false), None);
        assert_eq!(RoundRobin::new(&[]).pick(|_| true), None);
    }

    #[test]
    fn concurrent_picks_always_find_an_eligible_server() {
        let rr = std::sync::Arc::new(RoundRobin::new(&[1, 1]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rr = rr.clone();
                std::thread::spawn(move || (0..100_000).all(|_| rr.pick(|i| i == 0) == Some(0)))
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap(), "a pick missed the one eligible server");
        }
    }

    proptest! {
        #[test]
        fn every_cycle_honours_weights_exactly(weights in prop::collection::vec(1u32..20, 1..8)) {
            let rr = RoundRobin::new(&weights);
            let divisor = weights.iter().copied().fold(0, gcd);
            let total: u32 = weights.iter().map(|w| w / divisor).sum();
            let mut counts = vec![0u32; weights.len()];
            for i in picks(&rr, total as usize * 3) {
                counts[i] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, w / divisor * 3);
            }
        }

        #[test]
        fn skipping_keeps_the_others_in_proportion(weights in prop::collection::vec(1u32..10, 2..6)) {
            let rr = RoundRobin::new(&weights);
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total * 10 {
                counts[rr.pick(|i| i != 0).unwrap()] += 1;
            }
            prop_assert_eq!(counts[0], 0);
            let others: u32 = weights[1..].iter().sum();
            for i in 1..weights.len() {
                let share = f64::from(counts[i]) / f64::from(total * 10);
                let want = f64::from(weights[i]) / f64::from(others);
                prop_assert!((share - want).abs() < 0.05, "{share} vs {want}");
            }
        }
    }
}
