//! Power of two choices: draw two servers at random (weighted), send to the one with
//! fewer in-flight requests relative to its weight. Mitzenmacher, "The Power of Two
//! Choices in Randomized Load Balancing" (2001): two samples bring the maximum load
//! from O(log n / log log n) down to O(log log n), at O(1) cost and with no shared
//! state to contend on, which is why tower and linkerd2-proxy balance this way.
//!
//! Both draws skip ineligible servers (see `random::WeightedSampler`), and the second
//! skips the first, so the two candidates differ whenever two servers are eligible (as
//! tower samples two distinct indices); with one eligible server, it is picked. Equal loads go to the
//! first draw, which is already weighted, so an idle pool spreads by weight.

use fastrand::Rng;

use super::random::WeightedSampler;
use super::{lighter, Loads};

/// Two weighted-random candidates; the less loaded wins.
pub struct PowerOfTwo {
    sampler: WeightedSampler,
    loads: Loads,
}

impl PowerOfTwo {
    pub fn new(weights: &[u32], loads: Loads) -> PowerOfTwo {
        PowerOfTwo { sampler: WeightedSampler::new(weights), loads }
    }

    pub fn pick(&self, rng: &mut Rng, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let a = self.sampler.draw_eligible(rng, &eligible)?;
        let b = self.sampler.draw_eligible(rng, &|i| i != a && eligible(i)).unwrap_or(a);
        let (wa, wb) = (self.sampler.weight(a), self.sampler.weight(b));
        Some(if lighter(self.loads.get(b), wb, self.loads.get(a), wa) { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastrand::Rng;
    use proptest::prelude::*;

    #[test]
    fn the_busier_of_two_is_never_picked() {
        // The two draws differ, so with two servers the idle one always wins.
        let loads = Loads::detached(2);
        let p2c = PowerOfTwo::new(&[1, 1], loads.clone());
        loads.set(0, 10);
        let mut rng = Rng::with_seed(5);
        assert!((0..1_000).all(|_| p2c.pick(&mut rng, |_| true) == Some(1)));
    }

    #[test]
    fn a_heavily_loaded_server_gets_little_traffic() {
        let loads = Loads::detached(10);
        let p2c = PowerOfTwo::new(&[1; 10], loads.clone());
        loads.set(3, 50);
        let mut rng = Rng::with_seed(9);
        let hits = (0..10_000).filter(|_| p2c.pick(&mut rng, |_| true) == Some(3)).count();
        // Never: one of the two distinct candidates is always idle.
        assert_eq!(hits, 0);
    }

    #[test]
    fn an_idle_pool_spreads_by_weight() {
        let p2c = PowerOfTwo::new(&[3, 1], Loads::detached(2));
        let mut rng = Rng::with_seed(11);
        let first = (0..20_000).filter(|_| p2c.pick(&mut rng, |_| true) == Some(0)).count();
        assert!((14_500..15_500).contains(&first), "{first}");
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_server(
            servers in prop::collection::vec((1u32..5, 0u64..10, any::<bool>()), 1..20),
            seed in any::<u64>(),
        ) {
            let loads = Loads::detached(servers.len());
            let weights: Vec<u32> = servers.iter().map(|s| s.0).collect();
            for (i, s) in servers.iter().enumerate() {
                loads.set(i, s.1);
            }
            let p2c = PowerOfTwo::new(&weights, loads);
            let mut rng = Rng::with_seed(seed);
            for _ in 0..50 {
                match p2c.pick(&mut rng, |i| servers[i].2) {
                    Some(i) => prop_assert!(servers[i].2),
                    None => prop_assert!(servers.iter().all(|s| !s.2)),
                }
            }
        }
    }
}
