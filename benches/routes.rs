//! Route lookup and router build as the number of routes grows: a lookup should cost
//! the same at 10,000 routes as at 10 (the last-defined route, which a scan reaches
//! last, and a miss), and the build should grow as n log n.
//!
//! Run: `cargo bench --bench routes`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Method, Request, StatusCode};
use weir::metrics::Metrics;
use weir::proxy::route::{Action, Local, Route, Router};
use weir::shaping::LocalAnswer;

fn routes(n: usize, metrics: &Metrics) -> Vec<(Option<&'static str>, Route)> {
    (0..n)
        .map(|i| {
            let route = Route {
                prefix: format!("/svc{i:05}/").into(),
                methods: (i % 2 == 0).then(|| vec![Method::GET, Method::HEAD].into_boxed_slice()),
                listeners: 1,
                action: Action::Answer(Local {
                    what: LocalAnswer::status(StatusCode::OK),
                    answered: metrics.local("bench"),
                }),
                access: None,
                response_headers: None,
                request_id: false,
                needs_client_ip: false,
            };
            (None, route)
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let metrics = Metrics::new().unwrap();
    let mut group = c.benchmark_group("route_lookup");
    for n in [10, 1_000, 10_000] {
        let router = Router::new(routes(n, &metrics));
        let last = Request::get(format!("/svc{:05}/items/42", n - 1)).body(()).unwrap();
        let miss = Request::get("/nothere/items/42").body(()).unwrap();
        assert!(router.route(0, &last).is_some());
        assert!(router.route(0, &miss).is_none());
        group.bench_function(format!("last/{n}"), |b| {
            b.iter(|| black_box(router.route(0, black_box(&last)).is_some()))
        });
        group.bench_function(format!("miss/{n}"), |b| {
            b.iter(|| black_box(router.route(0, black_box(&miss)).is_some()))
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let metrics = Metrics::new().unwrap();
    let mut group = c.benchmark_group("route_build");
    group.sample_size(10);
    for n in [1_000, 10_000] {
        group.bench_function(format!("{n}"), |b| {
            b.iter_batched(|| routes(n, &metrics), Router::new, BatchSize::LargeInput)
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
