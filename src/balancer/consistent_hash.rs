//! Consistent hashing: requests with the same key (`hash_key`) go to the same server
//! while the pool stays the same, and when a server leaves, only its keys move.
//!
//! The algorithm is a Ketama ring (Karger et al., "Consistent Hashing and Random
//! Trees", 1997; the virtual-node layout of libketama and nginx's `hash ...
//! consistent`): every server places points on a 32-bit circle, a key goes to the
//! first point at or after its hash. Chosen over Maglev (Eisenbud et al., 2016) because
//! a ring gives exactly what the contract asks: when a server leaves, or is skipped as
//! unhealthy, or is full in bounded mode, only the keys it held move, each to the next
//! point along the ring, while Maglev's table rebuild also reshuffles a few keys
//! between servers that stayed. Skipping is also free on a ring (walk on), whereas
//! Maglev needs a table rebuild per health change. The price is an O(log n) binary
//! search per pick instead of O(1).
//!
//! Points: server `s` places `weight x K` points at `XXH3-64(address, seed = j) >> 32`
//! for `j = 0, 1, ...`, so a server's points depend only on its own address as written
//! in the config and its weight, never on the rest of the pool or the process: two weir
//! instances with the same config build the same ring. Weights are honoured through the
//! point counts. `K` is `MAX_POINTS_PER_WEIGHT` (4096, enough for ±5% spread over ten
//! servers) while the total weight is at most 64, and halves each time the total weight
//! doubles past that, which keeps the ring near 256 Ki points (2 MiB). Because each
//! server's points are a prefix of its own sequence, a change of `K` only adds or
//! removes points; but it does move more than the leaving server's keys, so the
//! minimal-disruption guarantee is exact for pools of total weight up to 64, and
//! holds between powers of two of the total weight beyond.
//!
//! Bounded loads (`hash_balance_factor = c`; Mirrokni, Thorup, Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", 2018): a server may take a request only
//! while its in-flight count stays within `ceil(c x (total in-flight + 1) x weight /
//! eligible weight)`; a full server passes the key on along the ring. This reads every
//! server's in-flight count once per pick, O(n), the one part that is not O(log n).
//!
//! A request without the key (no such header, cookie or parameter) is spread by smooth
//! weighted round-robin, so key-less traffic is not piled onto one server.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::round_robin::RoundRobin;
use super::{HashKey, Loads};

/// Points per unit of weight for small pools: 1/sqrt(4096) = 1.6% standard deviation
/// of a server's share.
pub const MAX_POINTS_PER_WEIGHT: u64 = 4096;
/// The ring size that larger pools are scaled down toward.
const RING_POINTS: u64 = MAX_POINTS_PER_WEIGHT * 64;
/// Ring steps to walk past ineligible or full servers before a plain scan.
const MAX_WALK: usize = 1024;

/// A Ketama ring over one upstream's servers.
pub struct ConsistentHash {
    /// Point positions, ascending.
    positions: Box<[u32]>,
    /// The server owning each point.
    owners: Box<[u32]>,
    weights: Box<[u32]>,
    loads: Loads,
    key: HashKey,
    balance_factor: Option<f64>,
    fallback: RoundRobin,
}

/// Points per unit of weight for a pool of this total weight.
fn points_per_weight(total_weight: u64) -> u64 {
    let scaled = (RING_POINTS / total_weight.max(1)).max(1);
    // Largest power of two at or below: `K` changes only when the total weight crosses
    // a power of two.
    (1u64 << scaled.ilog2()).min(MAX_POINTS_PER_WEIGHT)
}

impl ConsistentHash {
    /// Builds the ring for `servers` as (address, weight), index = server index.
    pub fn new(servers: &[(&str, u32)], loads: Loads, key: HashKey, balance_factor: Option<f64>) -> Self {
        let total: u64 = servers.iter().map(|s| u64::from(s.1)).sum();
        let per_weight = points_per_weight(total);
        let mut points: Vec<(u32, &str, u32)> = Vec::new();
        for (i, &(address, weight)) in servers.iter().enumerate() {
            for j in 0..u64::from(weight) * per_weight {
                let position = (xxh3_64_with_seed(address.as_bytes(), j) >> 32) as u32;
                points.push((position, address, i as u32));
            }
        }
        // Colliding positions are ordered by address, not config order, so the ring
        // does not depend on how the servers are listed.
        points.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let weights: Vec<u32> = servers.iter().map(|s| s.1).collect();
        ConsistentHash {
            positions: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.2).collect(),
            fallback: RoundRobin::new(&weights),
            weights: weights.into(),
            loads,
            key,
            balance_factor,
        }
    }

    /// Where this balancer's requests take their key from.
    pub fn key(&self) -> &HashKey {
        &self.key
    }

    /// The server for key `hash`: the first eligible (and, bounded, not full) one
    /// along the ring. Without a key, the next eligible server in round-robin order.
    pub fn pick(&self, hash: Option<u64>, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let Some(hash) = hash else { return self.fallback.pick(eligible) };
        if self.positions.is_empty() {
            return None;
        }
        let position = (hash >> 32) as u32;
        let start = self.positions.partition_point(|&p| p < position);
        let start = if start == self.positions.len() { 0 } else { start };
        if let Some(factor) = self.balance_factor {
            if let Some(i) = self.bounded(start, factor, &eligible) {
                return Some(i);
            }
        }
        self.walk(start, &eligible).or_else(|| {
            // Nearly everything is ineligible: a plain scan, from the key's server.
            let n = self.weights.len();
            let first = self.owner(start);
            (first..n).chain(0..first).find(|&i| eligible(i))
        })
    }

    fn owner(&self, point: usize) -> usize {
        self.owners.get(point).map_or(0, |&s| s as usize)
    }

    /// The first server along the ring from `start` that `accept` takes.
    fn walk(&self, start: usize, accept: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.positions.len();
        (0..len.min(MAX_WALK))
            .map(|step| self.owner(if start + step >= len { start + step - len } else { start + step }))
            .find(|&i| accept(i))
    }

    /// Bounded loads: the walk skips eligible servers already at their capacity.
    fn bounded(&self, start: usize, factor: f64, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let (mut in_flight, mut weight) = (0u64, 0u64);
        for i in (0..self.weights.len()).filter(|&i| eligible(i)) {
            in_flight = in_flight.saturating_add(self.loads.get(i));
            weight += u64::from(self.weights[i]);
        }
        if weight == 0 {
            return None;
        }
        // Capacity per unit of weight, counting the request being placed.
        let per_weight = factor * (in_flight as f64 + 1.0) / weight as f64;
        self.walk(start, &|i| {
            eligible(i) && {
                let capacity = (per_weight * f64::from(self.weights[i])).ceil();
                (self.loads.get(i) as f64 + 1.0) <= capacity
            }
        })
    }

    /// The ring's size (tests and docs).
    pub fn points(&self) -> usize {
        self.positions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn ring(addresses: &[String], weights: &[u32]) -> ConsistentHash {
        let members: Vec<(&str, u32)> =
            addresses.iter().map(String::as_str).zip(weights.iter().copied()).collect();
        ConsistentHash::new(&members, Loads::detached(members.len()), HashKey::ClientIp, None)
    }

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:8080", i / 200, i % 200 + 1)).collect()
    }

    fn key(k: u64) -> Option<u64> {
        Some(xxh3_64(&k.to_le_bytes()))
    }

    /// Address each of `keys` keys goes to.
    fn owners(
        r: &ConsistentHash,
        addresses: &[String],
        keys: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Vec<String> {
        (0..keys).map(|k| addresses[r.pick(key(k), &eligible).unwrap()].clone()).collect()
    }

    #[test]
    fn removing_one_of_ten_moves_only_its_keys() {
        let all = addresses(10);
        let before = owners(&ring(&all, &[1; 10]), &all, 100_000, |_| true);
        let removed = &all[3];
        let rest: Vec<String> = all.iter().filter(|a| *a != removed).cloned().collect();
        let after = owners(&ring(&rest, &[1; 9]), &rest, 100_000, |_| true);
        let moved: Vec<usize> = (0..before.len()).filter(|&k| before[k] != after[k]).collect();
        assert!(moved.len() <= 11_000, "{} keys moved", moved.len());
        assert!(moved.iter().all(|&k| &before[k] == removed), "a key of a staying server moved");
        // Marking it ineligible instead of removing it moves exactly the same keys.
        let skipped = owners(&ring(&all, &[1; 10]), &all, 100_000, |i| i != 3);
        assert_eq!(skipped, after);
    }

    #[test]
    fn equal_servers_get_within_5_percent_of_an_even_share() {
        let all = addresses(10);
        let r = ring(&all, &[1; 10]);
        let mut counts = vec![0u32; 10];
        for k in 0..100_000 {
            counts[r.pick(key(k), |_| true).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{c}");
        }
    }

    #[test]
    fn weights_are_honoured_within_a_few_percent() {
        let all = addresses(4);
        let weights = [1, 2, 3, 4];
        let r = ring(&all, &weights);
        let mut counts = [0u32; 4];
        for k in 0..100_000 {
            counts[r.pick(key(k), |_| true).unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            let want = 10_000.0 * f64::from(w);
            assert!((f64::from(*c) - want).abs() / want < 0.05, "{c} vs {want}");
        }
    }

    #[test]
    fn the_ring_stays_bounded_for_large_pools() {
        assert_eq!(points_per_weight(10), 4096);
        assert_eq!(points_per_weight(64), 4096);
        assert_eq!(points_per_weight(65), 2048);
        assert_eq!(points_per_weight(1_000_000), 1);
        assert!(ring(&addresses(1000), &[1; 1000]).points() <= RING_POINTS as usize);
    }

    #[test]
    fn keyless_requests_round_robin_over_eligible_servers() {
        let all = addresses(3);
        let r = ring(&all, &[1; 3]);
        let picks: Vec<_> = (0..6).map(|_| r.pick(None, |i| i != 1).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn nothing_eligible_gives_none() {
        let all = addresses(3);
        assert_eq!(ring(&all, &[1; 3]).pick(key(1), |_| false), None);
        assert_eq!(ring(&[], &[]).pick(key(1), |_| true), None);
    }

    #[test]
    fn a_hot_key_spills_over_in_bounded_mode() {
        let all = addresses(4);
        let members: Vec<(&str, u32)> = all.iter().map(|a| (a.as_str(), 1)).collect();
        let loads = Loads::detached(4);
        let r = ConsistentHash::new(&members, loads.clone(), HashKey::ClientIp, Some(1.25));
        let home = r.pick(key(42), |_| true).unwrap();
        // The key's server holds 10 requests, the others 2: average 4, cap ceil(1.25 x 17 / 4) = 6.
        (0..4).for_each(|i| loads.set(i, if i == home { 10 } else { 2 }));
        let spilled = r.pick(key(42), |_| true).unwrap();
        assert_ne!(spilled, home);
        // The same key always spills to the same next server along the ring.
        assert_eq!(r.pick(key(42), |_| true), Some(spilled));
        // Once back under the cap, the key goes home.
        loads.set(home, 3);
        assert_eq!(r.pick(key(42), |_| true), Some(home));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn the_same_config_in_any_order_gives_the_same_owners(n in 2usize..12, rotate in 0usize..12) {
            let all = addresses(n);
            let mut shuffled = all.clone();
            shuffled.rotate_left(rotate % n);
            let a = owners(&ring(&all, &vec![1; n]), &all, 2_000, |_| true);
            let b = owners(&ring(&shuffled, &vec![1; n]), &shuffled, 2_000, |_| true);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn a_leaving_server_moves_only_its_own_keys(
            weights in prop::collection::vec(1u32..5, 2..12),
            leaving in 0usize..12,
        ) {
            let n = weights.len();
            let leaving = leaving % n;
            let all = addresses(n);
            let before = owners(&ring(&all, &weights), &all, 3_000, |_| true);
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != leaving).map(|(_, a)| a.clone()).collect();
            let rest_weights: Vec<u32> = weights.iter().enumerate().filter(|(i, _)| *i != leaving).map(|(_, w)| *w).collect();
            let after = owners(&ring(&rest, &rest_weights), &rest, 3_000, |_| true);
            for k in 0..before.len() {
                prop_assert!(before[k] == after[k] || before[k] == all[leaving]);
            }
        }

        #[test]
        fn bounded_mode_never_exceeds_the_cap(
            loads_in in prop::collection::vec(0u64..30, 2..10),
            factor in 1.05f64..3.0,
            keys in prop::collection::vec(any::<u64>(), 20),
        ) {
            let n = loads_in.len();
            let all = addresses(n);
            let members: Vec<(&str, u32)> = all.iter().map(|a| (a.as_str(), 1)).collect();
            let loads = Loads::detached(n);
            loads_in.iter().enumerate().for_each(|(i, &l)| loads.set(i, l));
            let r = ConsistentHash::new(&members, loads, HashKey::ClientIp, Some(factor));
            let total: u64 = loads_in.iter().sum();
            let cap = (factor * (total as f64 + 1.0) / n as f64).ceil();
            for k in keys {
                let i = r.pick(Some(k), |_| true).unwrap();
                prop_assert!(loads_in[i] as f64 + 1.0 <= cap, "server {i} at {} over cap {cap}", loads_in[i]);
            }
        }
    }
}
