//! Peak-EWMA, as linkerd2-proxy balances (tower's `load::PeakEwma` under
//! `balance::p2c`): power of two choices where a server's cost is its peak-EWMA
//! response latency times (in-flight + 1), so it weighs both how slow a server has
//! been and how much it is already holding.
//!
//! The estimate, per server, in microseconds, with `w = exp(-elapsed / DECAY)` for the
//! time since it was last set:
//! - read at `now`, it has decayed toward zero: `current = stored * w`. This is what
//!   lets a server that was slow once be tried again: left alone, its cost falls until
//!   it wins a comparison, and a fresh observation sets it straight. Without it (a
//!   peer's latency balancer has this failure) a server slow once is never picked
//!   again, so never measured again, so starved for good;
//! - an observation `rtt` at `now` at or above `current` is taken at once (the *peak*:
//!   a server turning slow is shunned on its first slow answer); below it, the new
//!   estimate is `current * w + rtt * (1 - w)`, an average weighted by time rather
//!   than by request count, so a burst of fast answers cannot erase a slow spell at
//!   once, and an observation never raises the estimate above what it read before.
//!
//! A server starts at `DEFAULT_RTT` (linkerd2-proxy's default); `DECAY` is its 10 s.
//! The cost is floored at 1 µs before multiplying, so that fully decayed servers are
//! still told apart by their in-flight counts. Costs are compared relative to weight.
//! Observations come from `proxy::forward` when response headers arrive (and on a
//! timeout, with the timeout as the latency).
//!
//! State is one `AtomicU64` per server, estimate and timestamp packed together, so
//! observing is one compare-and-swap and reading one load: no lock per request. The
//! timestamp is milliseconds since the balancer was built, in 32 bits; it wraps after
//! 49 days, which only matters for a server not observed in all that time, whose
//! estimate had long decayed anyway. The estimate resets on reload (a rebuilt balancer
//! starts every server at `DEFAULT_RTT`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use fastrand::Rng;

use super::random::WeightedSampler;
use super::Loads;

/// The estimate of a server never observed.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the decay: after `DECAY` an old estimate weighs 1/e.
pub const DECAY: Duration = Duration::from_secs(10);

/// Power of two choices on peak-EWMA latency x (in-flight + 1).
pub struct PeakEwma {
    sampler: WeightedSampler,
    loads: Loads,
    /// Per server: estimate in µs (low 32 bits), last update in ms since `epoch` (high).
    estimates: Box<[AtomicU64]>,
    epoch: Instant,
}

fn pack(estimate_us: f64, stamp_ms: u32) -> u64 {
    // Saturating float-to-int cast: estimates past ~71 minutes stay at the cap.
    (u64::from(stamp_ms) << 32) | u64::from(estimate_us.round() as u32)
}

fn unpack(state: u64) -> (f64, u32) {
    (f64::from(state as u32), (state >> 32) as u32)
}

/// How much of an estimate made `elapsed_ms` ago still counts.
fn decay(elapsed_ms: u32) -> f64 {
    (-f64::from(elapsed_ms) / DECAY.as_millis() as f64).exp()
}

impl PeakEwma {
    /// Builds the balancer; `epoch` is the origin of its timestamps (build time).
    pub fn new(weights: &[u32], loads: Loads, epoch: Instant) -> PeakEwma {
        let initial = pack(DEFAULT_RTT.as_micros() as f64, 0);
        PeakEwma {
            sampler: WeightedSampler::new(weights),
            loads,
            estimates: weights.iter().map(|_| AtomicU64::new(initial)).collect(),
            epoch,
        }
    }

    fn millis(&self, now: Instant) -> u32 {
        // Wraps after 49 days; see the module doc.
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Server `i`'s latency estimate as it reads at `now`, in µs.
    pub fn estimate(&self, i: usize, now: Instant) -> f64 {
        let Some(state) = self.estimates.get(i) else { return f64::MAX };
        let (estimate, stamp) = unpack(state.load(Relaxed));
        estimate * decay(self.millis(now).wrapping_sub(stamp))
    }

    /// Records a response from server `i` that took `rtt`, seen at `now`.
    pub fn observe(&self, i: usize, rtt: Duration, now: Instant) {
        let Some(state) = self.estimates.get(i) else { return };
        let rtt = rtt.as_micros() as f64;
        let stamp = self.millis(now);
        let _ = state.fetch_update(Relaxed, Relaxed, |prior| {
            let (stored, then) = unpack(prior);
            let w = decay(stamp.wrapping_sub(then));
            let current = stored * w;
            let next = if rtt >= current { rtt } else { current * w + rtt * (1.0 - w) };
            Some(pack(next, stamp))
        });
    }

    /// Server `i`'s cost at `now` per unit of weight.
    fn cost(&self, i: usize, now: Instant) -> f64 {
        let in_flight = self.loads.get(i).saturating_add(1) as f64;
        self.estimate(i, now).max(1.0) * in_flight / f64::from(self.sampler.weight(i))
    }

    /// Of two distinct weighted-random eligible servers, the cheaper at `now`.
    pub fn pick(&self, rng: &mut Rng, now: Instant, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let a = self.sampler.draw_eligible(rng, &eligible)?;
        let b = self.sampler.draw_eligible(rng, &|i| i != a && eligible(i)).unwrap_or(a);
        Some(if self.cost(b, now) < self.cost(a, now) { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastrand::Rng;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn picks_of(b: &PeakEwma, now: Instant, server: usize) -> usize {
        let mut rng = Rng::with_seed(3);
        (0..1_000).filter(|_| b.pick(&mut rng, now, |_| true) == Some(server)).count()
    }

    #[test]
    fn one_slow_answer_raises_the_estimate_at_once() {
        let t0 = Instant::now();
        let b = PeakEwma::new(&[1, 1], Loads::detached(2), t0);
        b.observe(0, 10 * MS, t0);
        b.observe(0, 900 * MS, t0 + MS);
        assert!((b.estimate(0, t0 + MS) - 900_000.0).abs() < 1.0);
    }

    #[test]
    fn fast_answers_pull_the_estimate_down_with_time() {
        let t0 = Instant::now();
        let b = PeakEwma::new(&[1], Loads::detached(1), t0);
        b.observe(0, 1000 * MS, t0);
        b.observe(0, 100 * MS, t0 + DECAY);
        // Read after DECAY: 1000 ms / e = 368 ms; blended: 368 ms / e + 100 ms * (1 - 1/e).
        let w = 1.0 / std::f64::consts::E;
        let want = 1_000_000.0 * w * w + 100_000.0 * (1.0 - w);
        assert!((b.estimate(0, t0 + DECAY) - want).abs() < 2.0, "{}", b.estimate(0, t0 + DECAY));
    }

    #[test]
    fn a_slow_server_is_avoided_then_recovers_as_its_estimate_decays() {
        let t0 = Instant::now();
        let b = PeakEwma::new(&[1, 1], Loads::detached(2), t0);
        b.observe(0, 1000 * MS, t0);
        b.observe(1, 40 * MS, t0);
        // Shunned while its slowness is recent...
        assert_eq!(picks_of(&b, t0 + 100 * MS, 0), 0);
        // ...while server 1 keeps answering in 10 ms.
        for s in 1..=60 {
            b.observe(1, 10 * MS, t0 + Duration::from_secs(s));
        }
        // A minute on, 1000 ms has decayed to ~2.5 ms and server 0 is tried again.
        let later = t0 + Duration::from_secs(60);
        assert!(b.estimate(0, later) < 3_000.0, "{}", b.estimate(0, later));
        assert_eq!(picks_of(&b, later, 0), 1_000);
        // It answers fast now, and takes its share from then on.
        b.observe(0, 10 * MS, later);
        let shared = picks_of(&b, later + MS, 0);
        assert!(shared > 0 && shared < 1_000, "{shared}");
    }

    #[test]
    fn in_flight_multiplies_the_cost() {
        let t0 = Instant::now();
        let loads = Loads::detached(2);
        let b = PeakEwma::new(&[1, 1], loads.clone(), t0);
        // Both above the 30 ms default, so both are taken as peaks.
        b.observe(0, 40 * MS, t0);
        b.observe(1, 80 * MS, t0);
        assert_eq!(picks_of(&b, t0, 0), 1_000);
        loads.set(0, 2); // 40 ms x 3 > 80 ms x 1
        assert_eq!(picks_of(&b, t0, 1), 1_000);
    }

    #[test]
    fn decayed_estimates_still_compare_by_in_flight() {
        let t0 = Instant::now();
        let loads = Loads::detached(2);
        let b = PeakEwma::new(&[1, 1], loads.clone(), t0);
        loads.set(1, 3);
        assert_eq!(picks_of(&b, t0 + Duration::from_secs(3600), 0), 1_000);
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_server(
            servers in prop::collection::vec((1u32..5, 0u64..10, 0u64..2000, any::<bool>()), 1..20),
            seed in any::<u64>(),
        ) {
            let t0 = Instant::now();
            let loads = Loads::detached(servers.len());
            let weights: Vec<u32> = servers.iter().map(|s| s.0).collect();
            let b = PeakEwma::new(&weights, loads.clone(), t0);
            for (i, s) in servers.iter().enumerate() {
                loads.set(i, s.1);
                b.observe(i, Duration::from_millis(s.2), t0);
            }
            let mut rng = Rng::with_seed(seed);
            for _ in 0..50 {
                match b.pick(&mut rng, t0 + 5 * MS, |i| servers[i].3) {
                    Some(i) => prop_assert!(servers[i].3),
                    None => prop_assert!(servers.iter().all(|s| !s.3)),
                }
            }
        }
    }
}
