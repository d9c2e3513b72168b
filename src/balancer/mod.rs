//! Picks a server of one upstream. Built once per runtime; a pick never locks or
//! allocates.
//!
//! The set of algorithms is closed, so it is an enum: a `match` costs no box or
//! vtable, and the compiler finds every place a new variant must go. A balancer only
//! orders candidates; the caller decides eligibility (healthy, primary or backup, not
//! already tried by this request) and loops over retries.
//!
//! What the balancers read and who writes it: the in-flight count of each server is a
//! plain atomic beside the server (`Loads`), moved by the server's owner and read
//! into the `weir_upstream_server_in_flight` gauge only when scraped;
//! peak-EWMA latencies are written by `proxy::forward` through `Balancer::observe`. The
//! random algorithms draw from a per-thread `fastrand` generator seeded from entropy;
//! their unit tests pass a seeded one.

mod consistent_hash;
mod hash_key;
mod least_connections;
mod peak_ewma;
mod power_of_two;
mod random;
mod round_robin;

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub use consistent_hash::ConsistentHash;
pub use hash_key::HashKey;
pub use least_connections::LeastConnections;
pub use peak_ewma::PeakEwma;
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;

use crate::config::{BalancerKind, UpstreamConfig};

/// What a balancer knows of one server: its name (hashed by `consistent_hash`), its
/// weight, and its in-flight count, which the server's owner moves.
pub struct Member<'a> {
    pub name: &'a str,
    pub weight: u32,
    pub in_flight: &'a Arc<AtomicU64>,
}

/// Request facts some algorithms use to choose.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickKey {
    /// Hash of the request's affinity key, for hashing balancers; `None` when the
    /// request lacks the key (or the balancer does not hash).
    pub hash: Option<u64>,
}

/// Build-time options beyond the algorithm's name.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// What `consistent_hash` hashes. Without one it hashes nothing and round-robins.
    pub hash_key: Option<HashKey>,
    /// `consistent_hash` bounded-load factor; `None` for no bound.
    pub balance_factor: Option<f64>,
}

impl Options {
    /// The options an upstream's (validated) config asks for.
    pub fn of(config: &UpstreamConfig) -> Options {
        Options {
            hash_key: config.hash_key.as_ref().map(|k| HashKey::new(k.get_ref())),
            balance_factor: config.hash_balance_factor.as_ref().map(|f| *f.get_ref()),
        }
    }
}

/// One upstream's balancer.
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
    ConsistentHash(ConsistentHash),
    Random(Random),
    PowerOfTwo(PowerOfTwo),
    PeakEwma(PeakEwma),
}

impl Balancer {
    /// Builds the balancer over `servers` (index = server index).
    pub fn new(kind: BalancerKind, servers: &[Member<'_>], options: Options) -> Balancer {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let loads = Loads::of(servers);
        match kind {
            BalancerKind::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
            BalancerKind::LeastConnections => {
                Balancer::LeastConnections(LeastConnections::new(&weights, loads))
            }
            BalancerKind::ConsistentHash => {
                let members: Vec<(&str, u32)> = servers.iter().map(|s| (s.name, s.weight)).collect();
                let key = options.hash_key.unwrap_or(HashKey::ClientIp);
                Balancer::ConsistentHash(ConsistentHash::new(&members, loads, key, options.balance_factor))
            }
            BalancerKind::Random => Balancer::Random(Random::new(&weights)),
            BalancerKind::PowerOfTwo => Balancer::PowerOfTwo(PowerOfTwo::new(&weights, loads)),
            BalancerKind::PeakEwma => Balancer::PeakEwma(PeakEwma::new(&weights, loads, Instant::now())),
        }
    }

    /// Whether picks depend on the client's address (`consistent_hash` keyed on
    /// `client_ip`), so the route resolves it through `trusted_proxies` first.
    pub fn uses_client_ip(&self) -> bool {
        matches!(self, Balancer::ConsistentHash(b) if matches!(b.key(), HashKey::ClientIp))
    }

    /// Whether picking reads the request (its headers, cookies or target): only
    /// consistent hashing does.
    pub fn reads_request(&self) -> bool {
        matches!(self, Balancer::ConsistentHash(_))
    }

    /// What this balancer needs to know about `req`, from a client at `client_ip`.
    /// Only `consistent_hash` looks at the request; for the others this is free.
    pub fn key<B>(&self, req: &http::Request<B>, client_ip: IpAddr) -> PickKey {
        match self {
            Balancer::ConsistentHash(b) => PickKey { hash: b.key().hash(req, client_ip) },
            _ => PickKey::default(),
        }
    }

    /// Index of the first server, in this algorithm's order, that `eligible` accepts.
    pub fn pick(&self, key: &PickKey, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(eligible),
            Balancer::LeastConnections(b) => b.pick(eligible),
            Balancer::ConsistentHash(b) => b.pick(key.hash, eligible),
            Balancer::Random(b) => with_rng(|rng| b.pick(rng, eligible)),
            Balancer::PowerOfTwo(b) => with_rng(|rng| b.pick(rng, eligible)),
            Balancer::PeakEwma(b) => with_rng(|rng| b.pick(rng, Instant::now(), eligible)),
        }
    }

    /// Records that `server` answered (its response headers arrived) `rtt` after the
    /// request began. Only latency-aware balancers keep it.
    pub fn observe(&self, server: usize, rtt: Duration, now: Instant) {
        if let Balancer::PeakEwma(b) = self {
            b.observe(server, rtt, now);
        }
    }
}

/// In-flight request counts of an upstream's servers: the same atomics
/// `upstream::InFlight` moves, so no balancer keeps a second count.
#[derive(Clone)]
pub struct Loads(Box<[Arc<AtomicU64>]>);

impl Loads {
    pub fn of(servers: &[Member<'_>]) -> Loads {
        Loads(servers.iter().map(|s| s.in_flight.clone()).collect())
    }

    /// Counts of no server, for tests and benches.
    pub fn detached(n: usize) -> Loads {
        Loads((0..n).map(|_| Arc::default()).collect())
    }

    /// In-flight requests at server `i`; an unknown index reads as fully loaded.
    pub fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(u64::MAX, |n| n.load(Relaxed))
    }

    /// Sets server `i`'s count (tests and benches).
    pub fn set(&self, i: usize, in_flight: u64) {
        if let Some(n) = self.0.get(i) {
            n.store(in_flight, Relaxed);
        }
    }
}

thread_local! {
    // Per thread, so picks on different cores never contend for one generator.
    static RNG: RefCell<fastrand::Rng> = RefCell::new(fastrand::Rng::new());
}

/// Runs `f` with this thread's generator (seeded from entropy).
fn with_rng<T>(f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
    RNG.with(|cell| match cell.try_borrow_mut() {
        Ok(mut rng) => f(&mut rng),
        // Only reachable if `eligible` itself picked; a fresh generator keeps it safe.
        Err(_) => f(&mut fastrand::Rng::new()),
    })
}

/// `a` is less loaded than `b` relative to their weights: `load_a / w_a < load_b / w_b`,
/// compared without division.
fn lighter(load_a: u64, weight_a: u32, load_b: u64, weight_b: u32) -> bool {
    u128::from(load_a) * u128::from(weight_b) < u128::from(load_b) * u128::from(weight_a)
}
