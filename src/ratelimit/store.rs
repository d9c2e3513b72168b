//! `Store`: one rate limit's buckets, keyed by a 64-bit hash of the client's key,
//! sharded so that requests for different keys rarely touch the same lock.
//!
//! Each shard is a `Mutex<HashMap<u64, TokenBucket>>`, picked by bits of the key hash
//! that the map itself does not use, held only for one lookup and one `try_take`.
//!
//! Memory is bounded by `max_keys`: each shard holds at most `max_keys / shards`
//! buckets. When a shard is full and a new key arrives, the shard first drops every
//! bucket that has refilled to `burst` (such a bucket is equivalent to no bucket, so
//! forgetting it changes no decision); if that frees less than an eighth of the
//! shard, it also drops the least recently used buckets until an eighth is free. Each
//! sweep costs one pass over the shard and buys room for many inserts, so a flood of
//! distinct keys costs O(1) amortized per request. The price of the cap: a key
//! evicted while not full starts again with a full bucket.
//!
//! Keys are hashes, not the key bytes, so a lookup allocates nothing. Two keys with
//! the same 64-bit hash share a bucket; with SipHash keyed randomly per store, that is
//! a ~n²/2⁶⁵ chance (about 3 in 10⁹ for 100,000 live keys), and not one a client can
//! aim for.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::bucket::{Decision, Rate, TokenBucket};

/// Buckets of one rate limit, by key hash.
pub struct Store {
    rate: Rate,
    shards: Box<[Mutex<Shard>]>,
    /// `shards.len() - 1`; the shard count is a power of two.
    mask: u64,
    per_shard: usize,
    hasher: RandomState,
}

struct Shard {
    buckets: HashMap<u64, TokenBucket, BuildHasherDefault<Identity>>,
    /// Reused between sweeps, so evicting allocates only the first time.
    scratch: Vec<Instant>,
}

/// Shard count: one shard per 256 keys of the cap, at most 64, a power of two. More
/// shards than cores x 16 buys nothing; fewer keys than that need no sharding.
fn shard_count(max_keys: usize) -> usize {
    let wanted = (max_keys / 256).clamp(1, 64);
    // Round down to a power of two so shard * per_shard never exceeds max_keys.
    1 << wanted.ilog2()
}

impl Store {
    /// An empty store for buckets of `rate`, holding at most `max_keys` (>= 1) keys.
    pub fn new(rate: Rate, max_keys: usize) -> Store {
        let count = shard_count(max_keys.max(1));
        let per_shard = (max_keys / count).max(1);
        let shards = (0..count)
            .map(|_| {
                Mutex::new(Shard {
                    buckets: HashMap::with_capacity_and_hasher(0, BuildHasherDefault::default()),
                    scratch: Vec::new(),
                })
            })
            .collect();
        Store { rate, shards, mask: count as u64 - 1, per_shard, hasher: RandomState::new() }
    }

    /// The key hash of `value` (IP octets, a header value). Hashing with this store's
    /// random key keeps clients from choosing colliding keys.
    pub fn hash(&self, value: impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }

    /// Takes a token from `key`'s bucket, creating it (full) if the key is new.
    pub fn try_take(&self, key: u64, now: Instant) -> Decision {
        // The map indexes by the low bits and tags by the top 7: shard by bits 32.. so
        // keys within a shard still differ in both.
        let index = ((key >> 32) & self.mask) as usize;
        let Some(shard) = self.shards.get(index) else {
            return TokenBucket::new(self.rate, now).try_take(now);
        };
        // A panic while holding the lock cannot leave a bucket half-updated (updates
        // are plain stores), so a poisoned shard is still sound.
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = shard.buckets.get_mut(&key) {
            return bucket.try_take(now);
        }
        if shard.buckets.len() >= self.per_shard {
            shard.evict(self.per_shard, now);
        }
        let mut bucket = TokenBucket::new(self.rate, now);
        let decision = bucket.try_take(now);
        shard.buckets.insert(key, bucket);
        decision
    }

    /// Keys currently stored.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).buckets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys this store will hold.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }
}

impl Shard {
    /// Makes room for at least one bucket, and for an eighth of `cap` if it has to
    /// evict buckets that are not yet full.
    fn evict(&mut self, cap: usize, now: Instant) {
        let target = cap - cap.div_ceil(8);
        // Least recently used first, among buckets not yet full: the cut-off time.
        self.scratch.clear();
        self.scratch.extend(self.buckets.values().filter(|b| !b.is_full_at(now)).map(TokenBucket::updated));
        let (cutoff, mut ties) = if self.scratch.len() > target {
            let excess = self.scratch.len() - target;
            let cutoff = *self.scratch.select_nth_unstable(excess - 1).1;
            // Buckets last used exactly at the cut-off are dropped only as far as needed.
            let older = self.scratch.iter().filter(|t| **t < cutoff).count();
            (Some(cutoff), excess - older)
        } else {
            (None, 0)
        };
        // Rebuilt rather than retained: removals leave tombstones, and a table full of
        // them is grown (doubled) by hashbrown instead of reused.
        let old = std::mem::replace(
            &mut self.buckets,
            HashMap::with_capacity_and_hasher(cap, BuildHasherDefault::default()),
        );
        self.buckets.extend(old.into_iter().filter(|(_, b)| {
            if b.is_full_at(now) {
                return false;
            }
            let Some(cutoff) = cutoff else { return true };
            let tie = b.updated() == cutoff && ties > 0;
            ties -= usize::from(tie);
            !(b.updated() < cutoff || tie)
        }));
    }
}

/// Keys are already SipHash outputs: hashing them again would only cost time.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this fallback keeps the trait honest.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const RATE: Rate = Rate { per_second: 1.0, burst: 5.0 };

    #[test]
    fn keys_have_separate_buckets() {
        let store = Store::new(Rate { per_second: 1.0, burst: 1.0 }, 100);
        let t0 = Instant::now();
        let (a, b) = (store.hash("a"), store.hash("b"));
        assert!(matches!(store.try_take(a, t0), Decision::Allow { .. }));
        assert!(matches!(store.try_take(a, t0), Decision::Deny { .. }));
        assert!(matches!(store.try_take(b, t0), Decision::Allow { .. }));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn full_buckets_are_evicted_before_busy_ones() {
        let store = Store::new(Rate { per_second: 1.0, burst: 1.0 }, 4);
        let t0 = Instant::now();
        // Key 0 is drained at t0+2s; keys 1-3 were drained at t0 and are full again by then.
        for k in 1..4u64 {
            store.try_take(k, t0);
        }
        let later = t0 + Duration::from_secs(2);
        store.try_take(0, later);
        store.try_take(9, later);
        assert_eq!(store.len(), 2, "the three refilled buckets should have gone");
        assert!(matches!(store.try_take(0, later), Decision::Deny { .. }), "the busy key kept its bucket");
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_used() {
        let store = Store::new(RATE, 16);
        let t0 = Instant::now();
        for k in 0..16u64 {
            // Five takes drain each bucket, so none is full and LRU must decide.
            for _ in 0..5 {
                store.try_take(k, t0 + Duration::from_millis(k));
            }
        }
        store.try_take(100, t0 + Duration::from_millis(20));
        assert!(store.len() <= 16);
        // The newest drained key survived: it is still denied.
        assert!(matches!(store.try_take(15, t0 + Duration::from_millis(21)), Decision::Deny { .. }));
        // The oldest was forgotten: it starts again with a full bucket.
        assert!(matches!(store.try_take(0, t0 + Duration::from_millis(21)), Decision::Allow { .. }));
    }

    #[test]
    fn keys_used_at_the_same_instant_are_evicted_only_as_needed() {
        let store = Store::new(RATE, 16);
        let t0 = Instant::now();
        for k in 0..16u64 {
            store.try_take(k, t0);
        }
        store.try_take(100, t0);
        // 16 + 1 keys, cap 16, an eighth (2) evicted: exactly 15 left.
        assert_eq!(store.len(), 15);
    }
}
