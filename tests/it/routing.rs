//! Routing precedence end to end (SPEC "Route choice"): exact host, then the longest
//! wildcard, then any host; then the longest `path_prefix`; then a route listing the
//! method over one without `methods`; no match is `404` and reaches no backend.

use http::{Method, Request};
use http_body_util::Full;

use crate::support::{send, Backend, Weir};

const ROUTES: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
path_prefix = "/api/"
upstream = "any_api"
[[routes]]
path_prefix = "/static/"
upstream = "any_static"
[[routes]]
host = "*.example.com"
path_prefix = "/api/"
upstream = "wild"
[[routes]]
host = "*.eu.example.com"
path_prefix = "/api/"
upstream = "wild_eu"
[[routes]]
host = "shop.example.com"
upstream = "exact"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/"
upstream = "exact_api"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "exact_api_read"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/v2/"
upstream = "exact_api_v2"

[upstreams.any_api]
servers = [{ address = "{any_api}" }]
[upstreams.any_static]
servers = [{ address = "{any_static}" }]
[upstreams.wild]
servers = [{ address = "{wild}" }]
[upstreams.wild_eu]
servers = [{ address = "{wild_eu}" }]
[upstreams.exact]
servers = [{ address = "{exact}" }]
[upstreams.exact_api]
servers = [{ address = "{exact_api}" }]
[upstreams.exact_api_read]
servers = [{ address = "{exact_api_read}" }]
[upstreams.exact_api_v2]
servers = [{ address = "{exact_api_v2}" }]
"#;

/// Sends `method host path` through weir and names the backend that answered (found
/// by its hit count, so `HEAD` works too), or gives the status when none did.
async fn who(weir: &Weir, backends: &[Backend], method: Method, host: &str, path: &str) -> String {
    let before: Vec<usize> = backends.iter().map(Backend::hits).collect();
    let req = Request::builder()
        .method(method)
        .uri(weir.url(path))
        .header("host", host)
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(req).await;
    let reached: Vec<&str> =
        backends.iter().zip(before).filter(|(b, n)| b.hits() > *n).map(|(b, _)| b.name.as_str()).collect();
    match reached.as_slice() {
        [] => status.as_str().to_string(),
        [one] if status == 200 => one.to_string(),
        _ => format!("{status} from {reached:?}"),
    }
}

#[tokio::test]
async fn routing_precedence_end_to_end() {
    let names =
        ["any_api", "any_static", "wild", "wild_eu", "exact", "exact_api", "exact_api_read", "exact_api_v2"];
    let mut backends = Vec::new();
    for name in names {
        backends.push(Backend::named(name).start().await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
    let weir = Weir::start(ROUTES, &refs).await;

    let cases = [
        // Exact host beats everything; within it the longest prefix, then the method.
        (Method::GET, "shop.example.com", "/api/v2/items", "exact_api_v2"),
        (Method::GET, "shop.example.com", "/api/items", "exact_api_read"),
        (Method::HEAD, "shop.example.com", "/api/items", "exact_api_read"),
        (Method::POST, "shop.example.com", "/api/items", "exact_api"),
        (Method::GET, "shop.example.com", "/", "exact"),
        // Host matching ignores case and the port.
        (Method::GET, "SHOP.Example.com:8080", "/api/x", "exact_api_read"),
        // The longest wildcard wins over a shorter one.
        (Method::GET, "a.eu.example.com", "/api/x", "wild_eu"),
        (Method::GET, "a.us.example.com", "/api/x", "wild"),
        // A wildcard host whose path fits none of its prefixes falls to any-host routes.
        (Method::GET, "a.example.com", "/static/app.js", "any_static"),
        (Method::GET, "a.eu.example.com", "/static/app.js", "any_static"),
        // The bare domain does not match `*.example.com`.
        (Method::GET, "example.com", "/api/x", "any_api"),
        (Method::GET, "elsewhere.test", "/api/x", "any_api"),
        // Nothing matches: 404, and no backend sees it.
        (Method::GET, "elsewhere.test", "/nothing", "404"),
        (Method::GET, "a.example.com", "/nothing", "404"),
    ];
    for (method, host, path, want) in cases {
        let got = who(&weir, &backends, method.clone(), host, path).await;
        assert_eq!(got, want, "{method} {host} {path}");
    }
}

/// `Host: acl.test.` (the fully qualified spelling, one trailing dot) is the host
/// `acl.test`: it meets that host's route and its `allow` list, instead of falling
/// through to the any-host route and skipping the list.
#[tokio::test]
async fn a_host_with_a_trailing_dot_meets_its_exact_route_and_allow_list() {
    let backends = [Backend::named("private").start().await, Backend::named("public").start().await];
    let config = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
host = "acl.test"
upstream = "private"
allow = ["10.0.0.0/8"]
[[routes]]
upstream = "public"
[upstreams.private]
servers = [{ address = "{private}" }]
[upstreams.public]
servers = [{ address = "{public}" }]
"#;
    let weir = Weir::start(config, &[&backends[0], &backends[1]]).await;
    for host in ["acl.test", "acl.test.", "ACL.Test.:8080"] {
        assert_eq!(who(&weir, &backends, Method::GET, host, "/").await, "403", "{host}");
    }
    assert_eq!(who(&weir, &backends, Method::GET, "acl.test..", "/").await, "public");
    assert_eq!(who(&weir, &backends, Method::GET, "other.test.", "/").await, "public");
}
