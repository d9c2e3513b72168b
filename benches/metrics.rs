//! The per-request cost of metrics: what `proxy::handle` and `forward::attempt` record
//! for one proxied request (client counter by code and latency histogram for the
//! upstream, then the same for the server), against a no-op that does the same
//! argument work. The handles are resolved up front, as `Runtime::build` does.
//!
//! Run: `cargo bench --bench metrics`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::StatusCode;
use weir::metrics::Metrics;

fn record(c: &mut Criterion) {
    let metrics = Metrics::new().expect("families register");
    let upstream = metrics.upstream("api", Default::default());
    let server = metrics.server("api", upstream.server_latency.clone());
    // A server's in-flight count is a plain atomic in its state (`upstream::ServerState`).
    let in_flight = AtomicU64::new(0);
    let elapsed = Duration::from_micros(1234);
    // Resolve the 200 handles once, as the first request would.
    upstream.record(StatusCode::OK, elapsed);
    server.requests.inc(StatusCode::OK);

    let mut group = c.benchmark_group("metrics_per_request");
    group.bench_function("no_op", |b| {
        b.iter(|| {
            black_box(black_box(StatusCode::OK));
            black_box(black_box(elapsed).as_secs_f64());
        })
    });
    group.bench_function("record", |b| {
        b.iter(|| {
            let status = black_box(StatusCode::OK);
            let elapsed = black_box(elapsed);
            upstream.record(status, elapsed);
            server.requests.inc(status);
            server.duration.observe(elapsed.as_secs_f64());
        })
    });
    group.bench_function("record_with_bytes_and_in_flight", |b| {
        b.iter(|| {
            let status = black_box(StatusCode::OK);
            let elapsed = black_box(elapsed);
            in_flight.fetch_add(1, Relaxed);
            upstream.request_bytes.inc_by(black_box(512));
            server.response_bytes.inc_by(black_box(4096));
            upstream.record(status, elapsed);
            server.requests.inc(status);
            server.duration.observe(elapsed.as_secs_f64());
            in_flight.fetch_sub(1, Relaxed);
        })
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
