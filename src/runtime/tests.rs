//! Building runtimes from configs, and what a rebuild carries over.

use super::*;
use crate::config;
use http::Request;
use std::path::Path;

fn runtime(text: &str) -> Runtime {
    let config = config::parse(text, Path::new("t.toml")).unwrap();
    Runtime::build(&config, None, &Metrics::new().unwrap()).unwrap()
}

const ROUTES: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[listeners]]
name = "internal"
listen = "127.0.0.1:0"

[[routes]]
upstream = "any"
[[routes]]
path_prefix = "/api/"
upstream = "any_api"
[[routes]]
host = "*.example.com"
path_prefix = "/api/"
upstream = "wild_api"
[[routes]]
host = "*.b.example.com"
upstream = "wild_b"
[[routes]]
host = "shop.example.com"
upstream = "exact"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "exact_api_read"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/"
upstream = "exact_api"
[[routes]]
path_prefix = "/admin/"
listeners = ["internal"]
upstream = "admin"

[upstreams.any]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.any_api]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.wild_api]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.wild_b]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.exact]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.exact_api_read]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.exact_api]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.admin]
servers = [{ address = "127.0.0.1:1" }]
"#;

fn route(rt: &Runtime, listener: usize, method: &str, host: &str, path: &str) -> String {
    let req = Request::builder().method(method).uri(path).header("host", host).body(()).unwrap();
    rt.pipeline
        .router
        .route(listener, &req)
        .and_then(Route::upstream)
        .map_or("none".into(), |u| u.name.to_string())
}

#[test]
fn routing_precedence_follows_the_spec() {
    let rt = runtime(ROUTES);
    assert_eq!(route(&rt, 0, "GET", "shop.example.com", "/api/x"), "exact_api_read");
    assert_eq!(route(&rt, 0, "POST", "shop.example.com", "/api/x"), "exact_api");
    assert_eq!(route(&rt, 0, "GET", "Shop.Example.COM:8080", "/other"), "exact");
    assert_eq!(route(&rt, 0, "GET", "x.b.example.com", "/api/x"), "wild_b");
    assert_eq!(route(&rt, 0, "GET", "x.example.com", "/api/x"), "wild_api");
    // A wildcard host whose prefixes do not fit falls through to any-host routes.
    assert_eq!(route(&rt, 0, "GET", "x.example.com", "/other"), "any");
    assert_eq!(route(&rt, 0, "GET", "example.com", "/api/x"), "any_api");
    assert_eq!(route(&rt, 0, "GET", "elsewhere", "/"), "any");
}

#[test]
fn routes_compute_only_what_their_shaping_reads() {
    let text = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[[routes]]
path_prefix = "/ip/"
upstream = "app"
response_headers = { set = { X-Seen-From = "{client_ip}" } }
[[routes]]
path_prefix = "/id/"
upstream = "app"
request_headers = { set = { X-Trace = "t-{request_id}" } }
[[routes]]
path_prefix = "/acl/"
redirect = { to = "https://{host}{path}" }
deny = ["192.0.2.0/24"]
[upstreams.app]
servers = [{ address = "127.0.0.1:1" }]
"#;
    let rt = runtime(text);
    let route = |path: &str| rt.pipeline.router.route(0, &Request::get(path).body(()).unwrap()).unwrap();
    let plain = route("/");
    assert!(!plain.needs_client_ip && !plain.request_id && plain.access.is_none());
    assert!(plain.response_headers.is_none());
    assert!(matches!(&plain.action, Action::Proxy(p) if p.rewrite.is_none() && p.request_headers.is_none()));
    assert!(route("/ip/").needs_client_ip && !route("/ip/").request_id);
    assert!(route("/id/").request_id && !route("/id/").needs_client_ip);
    let acl = route("/acl/");
    assert!(acl.needs_client_ip && acl.upstream().is_none());
    assert!(matches!(acl.action, Action::Answer(_)));
}

#[test]
fn routes_can_be_limited_to_listeners() {
    let rt = runtime(ROUTES);
    assert_eq!(route(&rt, 1, "GET", "a", "/admin/x"), "admin");
    assert_eq!(route(&rt, 0, "GET", "a", "/admin/x"), "any");
}

#[test]
fn no_match_gives_no_route() {
    let rt = runtime(&ROUTES.replace("[[routes]]\nupstream = \"any\"\n", ""));
    assert_eq!(route(&rt, 0, "GET", "a", "/nothing"), "none");
}

const LIMITED: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
rate_limit = "one"
[upstreams.app]
servers = [{ address = "127.0.0.1:1" }]
max_in_flight = 2
[rate_limits.one]
key = "global"
rate = 1
burst = 1
"#;

#[test]
fn limiters_and_queues_survive_a_rebuild_with_the_same_settings() {
    let metrics = Metrics::new().unwrap();
    let config = config::parse(LIMITED, Path::new("t.toml")).unwrap();
    let first = Runtime::build(&config, None, &metrics).unwrap();
    let second = Runtime::build(&config, Some(&first), &metrics).unwrap();
    assert!(Arc::ptr_eq(&first.limiters["one"], &second.limiters["one"]));
    let queue = |rt: &Runtime| rt.upstreams["app"].admission.clone().unwrap();
    assert!(Arc::ptr_eq(&queue(&first), &queue(&second)));
    let route_limiter =
        |rt: &Runtime| match &rt.pipeline.router.route(0, &http::Request::new(())).unwrap().action {
            Action::Proxy(p) => p.limiter.clone(),
            Action::Answer(_) => None,
        };
    assert!(Arc::ptr_eq(&route_limiter(&second).unwrap(), &second.limiters["one"]));

    let changed = config::parse(
        &LIMITED.replace("burst = 1", "burst = 2").replace("= 2\n[rate", "= 3\n[rate"),
        Path::new("t.toml"),
    )
    .unwrap();
    let third = Runtime::build(&changed, Some(&second), &metrics).unwrap();
    assert!(!Arc::ptr_eq(&second.limiters["one"], &third.limiters["one"]));
    assert!(!Arc::ptr_eq(&queue(&second), &queue(&third)));
    assert_eq!(queue(&third).settings.max_in_flight, 3);
}

#[test]
fn changed_connection_settings_give_a_fresh_pool_but_keep_health() {
    let config = config::parse(ROUTES, Path::new("t.toml")).unwrap();
    let metrics = Metrics::new().unwrap();
    let first = Runtime::build(&config, None, &metrics).unwrap();
    first.upstreams["any"].servers[0].set_healthy(false);
    let h2 = ROUTES.replace("[upstreams.any]\n", "[upstreams.any]\nprotocol = \"h2\"\n");
    let changed = config::parse(&h2, Path::new("t.toml")).unwrap();
    let second = Runtime::build(&changed, Some(&first), &metrics).unwrap();
    let (old, new) = (&first.upstreams["any"].servers[0], &second.upstreams["any"].servers[0]);
    assert!(!Arc::ptr_eq(&old.state, &new.state), "HTTP/1.1 connections must not serve an h2 upstream");
    assert!(!new.is_healthy(), "health survives");
}

#[test]
fn server_state_survives_a_rebuild() {
    let config = config::parse(ROUTES, Path::new("t.toml")).unwrap();
    let metrics = Metrics::new().unwrap();
    let first = Runtime::build(&config, None, &metrics).unwrap();
    first.upstreams["any"].servers[0].set_healthy(false);
    let second = Runtime::build(&config, Some(&first), &metrics).unwrap();
    assert!(!second.upstreams["any"].servers[0].is_healthy());
    assert!(Arc::ptr_eq(&first.upstreams["any"].servers[0].state, &second.upstreams["any"].servers[0].state));
}

#[test]
fn a_cache_survives_a_rebuild_unless_its_settings_change() {
    let text = format!("{ROUTES}\n[caches.pages]\nmax_size = \"1MiB\"\n").replacen(
        "upstream = \"any\"\n",
        "upstream = \"any\"\ncache = \"pages\"\n",
        1,
    );
    let metrics = Metrics::new().unwrap();
    let build = |text: &str, previous| {
        Runtime::build(&config::parse(text, Path::new("t.toml")).unwrap(), previous, &metrics).unwrap()
    };
    let first = build(&text, None);
    let second = build(&text, Some(&first));
    assert!(Arc::ptr_eq(&first.caches["pages"], &second.caches["pages"]));
    let req = Request::builder().uri("/").header("host", "elsewhere").body(()).unwrap();
    let routed = match second.pipeline.router.route(0, &req).map(|r| &r.action) {
        Some(Action::Proxy(p)) => p.cache.as_ref().unwrap().cache.clone(),
        _ => panic!("the route proxies"),
    };
    assert!(Arc::ptr_eq(&routed, &second.caches["pages"]));
    let third = build(&text.replace("\"1MiB\"", "\"2MiB\""), Some(&second));
    assert!(!Arc::ptr_eq(&second.caches["pages"], &third.caches["pages"]));
}

const DISCOVERED: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
resolve = "5s"
balancer = "consistent_hash"
hash_key = "path"
servers = [{ address = "backend.internal:8000" }, { address = "10.0.0.9:8000", backup = true }]
"#;

fn answers(last_octets: &[u8]) -> Answers {
    let addrs = last_octets.iter().map(|o| SocketAddr::from(([10, 0, 0, *o], 8000))).collect();
    Answers::from([("backend.internal:8000".to_string(), addrs)])
}

/// Which server label each of 1000 keys goes to.
fn placement(rt: &Runtime) -> Vec<String> {
    let up = &rt.upstreams["app"];
    (0..1000u64)
        .map(|k| {
            let key = crate::balancer::PickKey { hash: Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) };
            let i = up.balancer.pick(&key, |i| !up.servers[i].backup).unwrap();
            up.servers[i].address.to_string()
        })
        .collect()
}

#[test]
fn discovered_servers_follow_the_answers_keeping_state_and_most_keys() {
    let config = config::parse(DISCOVERED, Path::new("t.toml")).unwrap();
    let metrics = Metrics::new().unwrap();
    let first = Runtime::build_with(&config, None, &metrics, &answers(&[1, 2, 3])).unwrap();
    let labels =
        |rt: &Runtime| rt.upstreams["app"].servers.iter().map(|s| s.address.to_string()).collect::<Vec<_>>();
    assert_eq!(
        labels(&first),
        [
            "backend.internal:8000 (10.0.0.1)",
            "backend.internal:8000 (10.0.0.2)",
            "backend.internal:8000 (10.0.0.3)",
            "10.0.0.9:8000"
        ]
    );
    let two = |rt: &Runtime| rt.upstreams["app"].servers[1].clone();
    two(&first).set_healthy(false);
    let before = placement(&first);

    // 10.0.0.1 vanishes, 10.0.0.4 appears.
    let second = Runtime::build_with(&config, Some(&first), &metrics, &answers(&[2, 3, 4])).unwrap();
    assert_eq!(second.answers["backend.internal:8000"].len(), 3);
    let kept = &second.upstreams["app"].servers[0];
    assert_eq!(&*kept.address, "backend.internal:8000 (10.0.0.2)");
    assert!(Arc::ptr_eq(&kept.state, &two(&first).state), "health and pool not carried over");
    assert!(!kept.is_healthy());
    // Consistent hashing: a key moves only off the vanished address or onto the
    // new one, never between two servers that stayed.
    let after = placement(&second);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    for (b, a) in before.iter().zip(&after) {
        if !b.ends_with("(10.0.0.1)") && !a.ends_with("(10.0.0.4)") {
            assert_eq!(b, a, "a key moved between servers that both stayed");
        }
    }
    assert!((400..=900).contains(&moved), "{moved} of 1000 keys moved; about 5/9 expected (the leaver's third, and two thirds of the newcomer's)");

    // A rebuild without fresh answers (a reload) keeps the last ones.
    let third = Runtime::build(&config, Some(&second), &metrics).unwrap();
    assert_eq!(labels(&third), labels(&second));
}

/// What only building the runtime finds (a name that does not resolve, a certificate,
/// key or CA file that cannot be used) is reported like a parse error: at the value
/// that names it, with its key.
#[test]
fn build_errors_name_the_line_and_key_of_the_value() {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weir-build-errors-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("good.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("good.key"), generated.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("bad.key"), "not a key\n").unwrap();
    let path = dir.join("w.toml");
    let build_error = |text: &str| {
        let config = config::parse(text, &path).unwrap_or_else(|e| panic!("{e}"));
        match Runtime::build(&config, None, &Metrics::new().unwrap()) {
            Ok(_) => panic!("built:\n{text}"),
            Err(e) => e.to_string(),
        }
    };
    let listener = |certificates: &str| {
        format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{certificates}]\n\
             [[routes]]\nupstream = \"api\"\n[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9000\" }}]\n"
        )
    };
    let plain = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"api\"\n";
    let cases = [
        (
            format!("{plain}[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9000\" }}, {{ address = \"no-such-host.invalid:80\" }}]\n"),
            "\"no-such-host.invalid:80\"",
            "upstreams.api.servers[1].address",
            "cannot resolve `no-such-host.invalid:80`: ",
        ),
        (
            listener("{ cert = \"good.pem\", key = \"good.key\" }, { cert = \"missing.pem\", key = \"good.key\" }"),
            "\"missing.pem\"",
            "listeners[0].tls.certificates[1].cert",
            "cannot use `",
        ),
        (
            listener("{ cert = \"good.pem\", key = \"bad.key\" }"),
            "\"bad.key\"",
            "listeners[0].tls.certificates[0].key",
            "cannot use `",
        ),
        (
            format!("{plain}[upstreams.api]\ntls = true\nca_file = \"missing-ca.pem\"\nservers = [{{ address = \"127.0.0.1:9000\" }}]\n"),
            "\"missing-ca.pem\"",
            "upstreams.api.ca_file",
            "cannot use `",
        ),
    ];
    for (text, at, key, message) in cases {
        let e = build_error(&text);
        let offset = text.find(at).unwrap();
        let line = text[..offset].matches('\n').count() + 1;
        let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        let want = format!("{}:{line}:{column}: `{key}`: {message}", path.display());
        assert!(e.starts_with(&want), "want `{want}`, got: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `--check` does after validating `config/example.toml`: resolve addresses,
/// build TLS client configs.
#[test]
fn the_example_config_builds() {
    let text = include_str!("../../config/example.toml");
    let config = config::parse(text, Path::new("config/example.toml")).unwrap_or_else(|e| panic!("{e}"));
    Runtime::build(&config, None, &Metrics::new().unwrap()).unwrap_or_else(|e| panic!("{e}"));
}

fn pool(servers: &[&str], extra: &str) -> Config {
    let list: Vec<String> = servers.iter().map(|s| format!("{{ address = \"{s}\" }}")).collect();
    let text = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"app\"\n\
         [upstreams.app]\nservers = [{}]\n{extra}",
        list.join(", ")
    );
    config::parse(&text, Path::new("t.toml")).unwrap()
}

#[test]
fn a_rebuild_finds_each_servers_state_and_counts_by_address_not_position() {
    let metrics = Metrics::new().unwrap();
    let (a, b, c) = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3");
    let first = Runtime::build(&pool(&[a, b], ""), None, &metrics).unwrap();
    let old = |address: &str| {
        first.upstreams["app"].servers.iter().find(|s| &*s.address == address).unwrap().clone()
    };
    old(b).set_healthy(false);
    old(a).metrics.requests.inc(http::StatusCode::OK);
    let _busy = old(a).begin();
    let second = Runtime::build(&pool(&[c, b, a], ""), Some(&first), &metrics).unwrap();
    let new = &second.upstreams["app"].servers;
    assert_eq!(new.iter().map(|s| &*s.address).collect::<Vec<_>>(), [c, b, a]);
    assert!(Arc::ptr_eq(&new[2].state, &old(a).state) && Arc::ptr_eq(&new[2].metrics, &old(a).metrics));
    assert!(Arc::ptr_eq(&new[1].state, &old(b).state));
    assert!(!new[1].is_healthy(), "b keeps its mark");
    assert_eq!(new[2].in_flight(), 1, "a's request in flight counts on the new server");
    assert_eq!(new[2].metrics.requests.get(200), 1);
    assert!(new[0].is_healthy() && new[0].in_flight() == 0 && new[0].metrics.requests.get(200) == 0);
}

#[test]
fn server_histograms_give_each_server_its_own_latencies() {
    let metrics = Metrics::new().unwrap();
    let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
    let shared = Runtime::build(&pool(&[a, b], ""), None, &metrics).unwrap();
    let up = &shared.upstreams["app"];
    assert!(up.servers.iter().all(|s| Arc::ptr_eq(&s.metrics.duration, &up.metrics.server_latency)));
    up.servers[0].metrics.duration.observe(0.01);
    let own = Runtime::build(&pool(&[a, b], "server_histograms = true\n"), Some(&shared), &metrics).unwrap();
    let up = &own.upstreams["app"];
    assert!(!Arc::ptr_eq(&up.servers[0].metrics.duration, &up.servers[1].metrics.duration));
    assert_eq!(up.metrics.server_latency.count(), 1, "the upstream's histogram lives on");
    let text = String::from_utf8(own.encode_metrics(&metrics)).unwrap();
    let series = format!("weir_upstream_request_duration_seconds_count{{server=\"{a}\",upstream=\"app\"}} 0");
    assert!(text.contains(&series), "{text}");
    assert!(!text.contains("weir_upstream_request_duration_seconds_count{upstream=\"app\"}"), "{text}");
}
