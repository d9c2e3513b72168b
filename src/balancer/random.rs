//! Weighted random: each pick draws server `i` with probability `weight_i / total`.
//!
//! The draw is O(1) with Walker's alias method (Vose's construction, "A linear
//! algorithm for generating random numbers with a given distribution", 1991): one
//! uniform index, one uniform threshold test. It is built in integers, so the
//! probabilities are exact, not rounded floats.
//!
//! Ineligible servers: up to `REDRAWS` fresh draws, then one exact weighted draw over
//! the eligible servers only (O(n)), which is reached only when most of the weight is
//! ineligible (many servers down, or the backup pass). So the eligible servers keep
//! their weights' proportions whatever is skipped. `WeightedSampler` is shared with
//! `power_of_two` and `peak_ewma`, which draw their two candidates from it.

use fastrand::Rng;

/// Fresh draws before falling back to an exact draw over eligible servers only.
const REDRAWS: usize = 8;

/// O(1) weighted draws over fixed weights (alias method).
pub struct WeightedSampler {
    weights: Box<[u32]>,
    total: u64,
    /// Slot `i` keeps `i` when a uniform draw in `0..total` falls below `keep[i]`...
    keep: Box<[u64]>,
    /// ...and gives `alias[i]` otherwise.
    alias: Box<[u32]>,
}

impl WeightedSampler {
    pub fn new(weights: &[u32]) -> WeightedSampler {
        let n = weights.len() as u64;
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        // Slot i holds mass weight_i * n out of a slot size of `total`.
        let mut mass: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
        let mut keep = vec![total; weights.len()];
        let mut alias: Vec<u32> = (0..weights.len() as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..weights.len()).partition(|&i| mass[i] < total);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = mass[s];
            alias[s] = l as u32;
            mass[l] -= total - mass[s];
            if mass[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is full (exactly, with integer mass).
        for i in small.into_iter().chain(large) {
            keep[i] = total;
        }
        WeightedSampler { weights: weights.into(), total, keep: keep.into(), alias: alias.into() }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }

    /// One weighted draw over all servers.
    pub fn draw(&self, rng: &mut Rng) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let i = rng.usize(..self.weights.len());
        let keep = self.keep.get(i).copied().unwrap_or(self.total);
        Some(if rng.u64(..self.total) < keep { i } else { self.alias.get(i).map_or(i, |&a| a as usize) })
    }

    /// One weighted draw over the servers `eligible` accepts.
    pub fn draw_eligible(&self, rng: &mut Rng, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..REDRAWS {
            let i = self.draw(rng)?;
            if eligible(i) {
                return Some(i);
            }
        }
        let total: u64 = (0..self.len()).filter(|&i| eligible(i)).map(|i| u64::from(self.weight(i))).sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.u64(..total);
        (0..self.len()).filter(|&i| eligible(i)).find(|&i| {
            let w = u64::from(self.weight(i));
            if r < w {
                true
            } else {
                r -= w;
                false
            }
        })
    }
}

/// Weighted random choice.
pub struct Random {
    sampler: WeightedSampler,
}

impl Random {
    pub fn new(weights: &[u32]) -> Random {
        Random { sampler: WeightedSampler::new(weights) }
    }

    pub fn pick(&self, rng: &mut Rng, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        self.sampler.draw_eligible(rng, &eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastrand::Rng;
    use proptest::prelude::*;

    fn shares(r: &Random, n: usize, picks: usize, eligible: impl Fn(usize) -> bool) -> Vec<f64> {
        let mut rng = Rng::with_seed(7);
        let mut counts = vec![0usize; n];
        for _ in 0..picks {
            counts[r.pick(&mut rng, &eligible).unwrap()] += 1;
        }
        counts.iter().map(|&c| c as f64 / picks as f64).collect()
    }

    #[test]
    fn the_alias_table_is_exact() {
        // Probability of i = sum over slots of (keep or alias mass) / (n * total).
        let weights = [5u32, 1, 1, 3, 7];
        let s = WeightedSampler::new(&weights);
        let mut mass = vec![0u64; weights.len()];
        for i in 0..weights.len() {
            mass[i] += s.keep[i];
            mass[s.alias[i] as usize] += s.total - s.keep[i];
        }
        let n = weights.len() as u64;
        assert_eq!(mass, weights.iter().map(|&w| u64::from(w) * n).collect::<Vec<_>>());
    }

    #[test]
    fn a_seeded_generator_repeats_its_picks() {
        let r = Random::new(&[1, 2, 3]);
        let run = |seed| {
            let mut rng = Rng::with_seed(seed);
            (0..20).map(|_| r.pick(&mut rng, |_| true).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn nothing_eligible_gives_none() {
        let mut rng = Rng::with_seed(1);
        assert_eq!(Random::new(&[1, 1]).pick(&mut rng, |_| false), None);
        assert_eq!(Random::new(&[]).pick(&mut rng, |_| true), None);
    }

    #[test]
    fn a_lone_eligible_server_of_many_is_found() {
        let mut rng = Rng::with_seed(3);
        let r = Random::new(&[100; 50]);
        for _ in 0..100 {
            assert_eq!(r.pick(&mut rng, |i| i == 17), Some(17));
        }
    }

    proptest! {
        #[test]
        fn weights_are_honoured(weights in prop::collection::vec(1u32..10, 1..6)) {
            let r = Random::new(&weights);
            let total: u32 = weights.iter().sum();
            for (share, w) in shares(&r, weights.len(), 40_000, |_| true).iter().zip(&weights) {
                let want = f64::from(*w) / f64::from(total);
                prop_assert!((share - want).abs() < 0.02, "{share} vs {want}");
            }
        }

        #[test]
        fn skipping_keeps_the_others_in_proportion(weights in prop::collection::vec(1u32..10, 2..6)) {
            let r = Random::new(&weights);
            let others: u32 = weights[1..].iter().sum();
            let shares = shares(&r, weights.len(), 40_000, |i| i != 0);
            prop_assert_eq!(shares[0], 0.0);
            for i in 1..weights.len() {
                let want = f64::from(weights[i]) / f64::from(others);
                prop_assert!((shares[i] - want).abs() < 0.02, "{} vs {want}", shares[i]);
            }
        }
    }
}
