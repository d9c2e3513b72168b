//! Least connections: the eligible server with the fewest in-flight requests relative
//! to its weight (`in_flight / weight`), as nginx's `least_conn` and HAProxy's
//! `leastconn`. A request counts from the moment it is sent until its response body
//! is delivered or dropped (`upstream::InFlight`), so a long download weighs for its
//! whole length.
//!
//! Ties rotate: the scan starts at the next slot of a smooth weighted round-robin
//! cycle and keeps the first strict minimum, so an idle pool is spread exactly as
//! round-robin would spread it (weights included) instead of piling onto server 0.
//!
//! Cost: a scan reads every server's count, O(n), as nginx does. It stops at the
//! first eligible idle server, so a pool with spare capacity costs O(1) in practice;
//! only a pool where every server is busy pays the full scan. An O(log n) structure
//! (HAProxy's tree) would need re-sorting on every request start and end, which is a
//! lock or a contended structure on the hot path; `power_of_two` is the O(1)
//! alternative for large pools.

use super::round_robin::RoundRobin;
use super::{lighter, Loads};

/// Fewest in-flight requests per unit of weight.
pub struct LeastConnections {
    weights: Box<[u32]>,
    loads: Loads,
    order: RoundRobin,
}

impl LeastConnections {
    pub fn new(weights: &[u32], loads: Loads) -> LeastConnections {
        LeastConnections { weights: weights.into(), loads, order: RoundRobin::new(weights) }
    }

    /// The least-loaded eligible server; ties go to the first after a rotating start.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        let start = self.order.next_index()?;
        let mut best: Option<(usize, u64, u32)> = None;
        for step in 0..n {
            let i = if start + step >= n { start + step - n } else { start + step };
            if !eligible(i) {
                continue;
            }
            let (load, weight) = (self.loads.get(i), self.weights.get(i).copied().unwrap_or(1));
            if load == 0 {
                // Nothing beats an idle server, and earlier ones win ties.
                return Some(i);
            }
            if best.is_none_or(|(_, best_load, best_weight)| lighter(load, weight, best_load, best_weight)) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(lc: &LeastConnections, n: usize, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for _ in 0..picks {
            counts[lc.pick(|_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn the_least_loaded_server_wins() {
        let loads = Loads::detached(3);
        let lc = LeastConnections::new(&[1, 1, 1], loads.clone());
        loads.set(0, 5);
        loads.set(1, 2);
        loads.set(2, 3);
        for _ in 0..6 {
            assert_eq!(lc.pick(|_| true), Some(1));
        }
    }

    #[test]
    fn load_is_relative_to_weight() {
        let loads = Loads::detached(2);
        let lc = LeastConnections::new(&[1, 4], loads.clone());
        loads.set(0, 2); // 2 per unit of weight
        loads.set(1, 6); // 1.5 per unit of weight
        assert_eq!(lc.pick(|_| true), Some(1));
        loads.set(1, 9); // 2.25
        assert_eq!(lc.pick(|_| true), Some(0));
    }

    #[test]
    fn ties_rotate_so_an_idle_pool_spreads_by_weight() {
        let lc = LeastConnections::new(&[1, 1, 1], Loads::detached(3));
        assert_eq!(counts(&lc, 3, 30), vec![10, 10, 10]);
        let lc = LeastConnections::new(&[5, 1, 1], Loads::detached(3));
        assert_eq!(counts(&lc, 3, 70), vec![50, 10, 10]);
        // Equal non-zero loads rotate too.
        let loads = Loads::detached(3);
        let lc = LeastConnections::new(&[1, 1, 1], loads.clone());
        (0..3).for_each(|i| loads.set(i, 4));
        assert_eq!(counts(&lc, 3, 30), vec![10, 10, 10]);
    }

    #[test]
    fn ineligible_servers_are_skipped_however_idle() {
        let loads = Loads::detached(3);
        let lc = LeastConnections::new(&[1, 1, 1], loads.clone());
        loads.set(2, 9);
        for _ in 0..10 {
            assert_eq!(lc.pick(|i| i == 2), Some(2));
        }
        assert_eq!(lc.pick(|_| false), None);
        assert_eq!(LeastConnections::new(&[], Loads::detached(0)).pick(|_| true), None);
    }

    proptest! {
        #[test]
        fn picks_a_minimum_among_eligible(
            loads_in in prop::collection::vec((0u64..20, 1u32..5, any::<bool>()), 1..12),
        ) {
            let loads = Loads::detached(loads_in.len());
            let weights: Vec<u32> = loads_in.iter().map(|l| l.1).collect();
            for (i, l) in loads_in.iter().enumerate() {
                loads.set(i, l.0);
            }
            let lc = LeastConnections::new(&weights, loads);
            let eligible = |i: usize| loads_in[i].2;
            match lc.pick(eligible) {
                None => prop_assert!(loads_in.iter().all(|l| !l.2)),
                Some(p) => {
                    prop_assert!(eligible(p));
                    let ratio = |i: usize| loads_in[i].0 as f64 / f64::from(loads_in[i].1);
                    for i in (0..loads_in.len()).filter(|&i| eligible(i)) {
                        prop_assert!(ratio(p) <= ratio(i) + 1e-12);
                    }
                }
            }
        }
    }
}
