//! Cost of one rate-limit check (`Limiter::check`: hash the client address, lock its
//! shard, find or create its bucket, take a token) with 1 key and with 1,000,000, and
//! under a flood of new keys against a full store (each check then pays its share of
//! the eviction sweeps).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use prometheus::{IntCounter, Opts};
use weir::config::RateLimitKey;
use weir::ratelimit::{Limiter, Settings};

fn limiter(max_keys: usize) -> Limiter {
    // A burst no bench run can exhaust, so every check takes the same (admit) path.
    let settings = Settings::new(RateLimitKey::ClientIp, 1e6, u32::MAX, max_keys);
    Limiter::new("bench", settings, IntCounter::with_opts(Opts::new("b", "b")).expect("valid opts"))
}

fn check(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let now = Instant::now();
    let mut group = c.benchmark_group("ratelimit_check");

    let one = limiter(100_000);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    group.bench_function("1_key", |b| b.iter(|| black_box(one.check(&headers, || ip, now))));

    const KEYS: u32 = 1_000_000;
    // Room for all of them: this measures lookups, not evictions.
    let many = limiter(2 * KEYS as usize);
    let addr = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    for i in 0..KEYS {
        many.check(&headers, || addr(i), now);
    }
    // A stride coprime with KEYS walks every key in an order the cache cannot follow.
    let mut i = 0u32;
    group.bench_function("1000000_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(many.check(&headers, || addr(i), now))
        })
    });
    assert_eq!(many.keys(), KEYS as usize, "the million keys should all be stored");
    drop(many);

    // Every check a new address, against the default cap of 100,000 keys.
    let flooded = limiter(100_000);
    let mut next = 0u32;
    group.bench_function("new_key_at_100000_cap", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            black_box(flooded.check(&headers, || addr(next), now))
        })
    });
    group.finish();
    assert!(flooded.keys() <= 100_000);
}

criterion_group!(benches, check);
criterion_main!(benches);
