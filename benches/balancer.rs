//! Cost of one pick, per balancer, at 3, 100 and 1,000 servers (weights 1..3, every
//! server eligible, idle except for a spread of in-flight counts). Run with
//! `cargo bench --bench balancer`; figures are kept in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use weir::balancer::{Balancer, HashKey, Options, PickKey};
use weir::config::BalancerKind;
use weir::metrics::Metrics;
use weir::upstream::{Server, ServerState};

fn servers(metrics: &Metrics, n: usize) -> Vec<Arc<Server>> {
    (0..n)
        .map(|i| {
            let address = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1);
            let server = Server {
                metrics: Arc::new(metrics.server("bench", Arc::default())),
                addr: address.parse().expect("a literal socket address"),
                tls_name: weir::upstream::client::tls_name(&address),
                address: address.into(),
                weight: 1 + (i % 3) as u32,
                backup: false,
                state: Arc::new(ServerState::new(1, 0)),
            };
            // Some load, so least-connections and P2C compare rather than stop at idle.
            server.state.in_flight.store(1 + (i % 7) as u64, std::sync::atomic::Ordering::Relaxed);
            Arc::new(server)
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    let metrics = Metrics::new().expect("metrics register once");
    let kinds = [
        ("round_robin", BalancerKind::RoundRobin, None),
        ("least_connections", BalancerKind::LeastConnections, None),
        ("consistent_hash", BalancerKind::ConsistentHash, None),
        ("consistent_hash_bounded", BalancerKind::ConsistentHash, Some(1.25)),
        ("random", BalancerKind::Random, None),
        ("power_of_two", BalancerKind::PowerOfTwo, None),
        ("peak_ewma", BalancerKind::PeakEwma, None),
    ];
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100, 1000] {
        let servers = servers(&metrics, n);
        for (name, kind, balance_factor) in &kinds {
            let options = Options { hash_key: Some(HashKey::ClientIp), balance_factor: *balance_factor };
            let members: Vec<_> = servers.iter().map(|s| s.member()).collect();
            let balancer = Balancer::new(*kind, &members, options);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    // A different key per pick, as distinct clients would bring.
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(balancer.pick(&PickKey { hash: Some(key) }, |_| true))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
