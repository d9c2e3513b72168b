//! The per-request cost of request shaping: the path check every request pays, and
//! what a route that uses a feature pays for it (header rules, a rewrite, a request
//! id, a sticky cookie lookup).
//!
//! Run: `cargo bench --bench shaping`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Uri};
use weir::config::{Dur, HeaderRulesConfig, StickyConfig};
use weir::shaping::sticky::Sticky;
use weir::shaping::template::Vars;
use weir::shaping::{new_request_id, path_is_safe, HeaderRules, PathRewrite};

fn path_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("path_is_safe");
    for (name, path) in [
        ("plain", "/api/v1/users/12345/orders"),
        ("dotted", "/static/js/app.3f9a1c.min.js"),
        ("percent", "/search/caf%C3%A9%20au%20lait/page/2"),
    ] {
        group.bench_function(name, |b| b.iter(|| black_box(path_is_safe(black_box(path)))));
    }
    group.finish();
}

fn route_features(c: &mut Criterion) {
    let config: HeaderRulesConfig = toml::from_str(
        "set = { X-Env = \"prod\", X-Client = \"{client_ip}\" }\nadd = { Via = \"1.1 weir\" }\nremove = [\"X-Debug\"]",
    )
    .expect("valid rules");
    let rules = HeaderRules::new(&config);
    let statics: HeaderRulesConfig =
        toml::from_str("set = { X-Env = \"prod\" }\nadd = { Via = \"1.1 weir\" }").expect("valid rules");
    let static_rules = HeaderRules::new(&statics);
    let mut base = HeaderMap::new();
    for (n, v) in [("host", "shop.example"), ("accept", "*/*"), ("user-agent", "bench"), ("x-debug", "1")] {
        base.insert(n, HeaderValue::from_static(v));
    }
    let vars = Vars { client_ip: Some("203.0.113.9".parse().expect("ip")), ..Vars::default() };
    let mut group = c.benchmark_group("shaping_per_request");
    group.bench_function("header_map_clone_baseline", |b| b.iter(|| black_box(base.clone())));
    group.bench_function("header_rules_static", |b| {
        b.iter(|| {
            let mut h = base.clone();
            static_rules.apply(&mut h, &vars);
            black_box(h)
        })
    });
    group.bench_function("header_rules_with_client_ip", |b| {
        b.iter(|| {
            let mut h = base.clone();
            rules.apply(&mut h, &vars);
            black_box(h)
        })
    });
    let rewrite = PathRewrite { prefix_len: "/api/".len(), to: "/v2/".into() };
    let uri: Uri = "/api/users/12345?expand=orders&limit=10".parse().expect("uri");
    group.bench_function("rewrite", |b| b.iter(|| black_box(rewrite.apply(black_box(&uri)))));
    group.bench_function("new_request_id", |b| b.iter(|| black_box(new_request_id())));

    let addresses: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:8000")).collect();
    let servers: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let sticky = Sticky::new(
        &StickyConfig {
            cookie: toml::Spanned::new(0..0, "srv".into()),
            ttl: Some(Dur(std::time::Duration::from_secs(3600))),
            secret: None,
        },
        "api",
        &servers,
    );
    let set = sticky.set_cookie(7, false).expect("server 7").to_str().expect("ascii").to_string();
    let pair = set.split(';').next().expect("pair");
    let mut cookies = HeaderMap::new();
    cookies.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("theme=dark; session=abcdef0123456789; {pair}")).expect("value"),
    );
    group.bench_function("sticky_preferred_10_servers", |b| b.iter(|| black_box(sticky.preferred(&cookies))));
    group.finish();
}

criterion_group!(benches, path_check, route_features);
criterion_main!(benches);
