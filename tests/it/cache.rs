//! The response cache through real weir: coalescing, RFC 9111 directives, Vary,
//! conditional requests, stale serving, negative caching, the memory bound, purge,
//! and read/write splitting by method.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;

use crate::support::{client, get_with, metric, send, Backend, Reply, Weir};

/// weir with one cached route to backend `a`, plus `cache_keys` under `[caches.pages]`.
async fn weir(a: &Backend, cache_keys: &str) -> Weir {
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
cache = "pages"
[upstreams.app]
servers = [{{ address = "{{a}}" }}]
[caches.pages]
max_size = "1MiB"
{cache_keys}
"#
    );
    Weir::start(&toml, &[a]).await
}

/// Response headers by request path: `/cc/<value>` answers `Cache-Control: <value>`
/// (`_` for a space), and a few named paths add more.
fn by_path(req: &Request<()>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let path = req.uri().path();
    if let Some(cc) = path.strip_prefix("/cc/") {
        let cc = cc.replace('_', " ").replace("%2C", ",");
        h.insert("cache-control", HeaderValue::from_str(&cc).unwrap());
    }
    if path.starts_with("/expires") {
        let at = std::time::SystemTime::now() + Duration::from_secs(60);
        h.insert("expires", HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap());
    }
    if path.starts_with("/old") {
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        h.insert("age", HeaderValue::from_static("100"));
    }
    if path.starts_with("/vary") {
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        h.insert("vary", HeaderValue::from_static("Accept-Language"));
    }
    if path.starts_with("/etag") {
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        h.insert("last-modified", HeaderValue::from_static("Wed, 01 Jan 2020 00:00:00 GMT"));
    }
    h
}

/// A backend numbering its answers: `1`, `2`, ...
fn counting(name: &str) -> crate::support::BackendBuilder {
    let n = Arc::new(AtomicUsize::new(0));
    Backend::named(name)
        .reply(move |_| Reply {
            status: StatusCode::OK,
            body: Bytes::from((n.fetch_add(1, SeqCst) + 1).to_string()),
            delay: Duration::ZERO,
        })
        .headers(by_path)
}

/// `get_with`, with the body as text.
async fn get_text(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let (status, headers, body) = get_with(weir, path, headers).await;
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn cache_status(h: &HeaderMap) -> &str {
    h.get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn a_hundred_concurrent_misses_reach_the_backend_once() {
    let a = Backend::named("a").delay(Duration::from_millis(300)).headers(|_| {
        let mut h = HeaderMap::new();
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        h
    });
    let a = a.start().await;
    let weir = weir(&a, "").await;
    let http = client();
    let url: http::Uri = weir.url("/hot").parse().unwrap();
    let requests = (0..100).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let response = http.get(url).await.unwrap();
            let status = cache_status(response.headers()).to_string();
            let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            (status, body)
        })
    });
    let mut statuses = Vec::new();
    for r in futures_util::future::join_all(requests).await {
        let (status, body) = r.unwrap();
        assert_eq!(body, "a");
        statuses.push(status);
    }
    assert_eq!(a.hits(), 1, "one request went upstream");
    assert_eq!(statuses.iter().filter(|s| *s == "weir; fwd=uri-miss; stored").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| *s == "weir; hit; detail=coalesced").count(), 99, "{statuses:?}");
    let m = weir.metrics().await;
    assert_eq!(metric(&m, "weir_cache_requests_total{cache=\"pages\",result=\"coalesced\"}"), 99.0);
    assert_eq!(metric(&m, "weir_cache_requests_total{cache=\"pages\",result=\"miss\"}"), 1.0);
}

/// Two GETs of `path` (with `headers`); how many reached the backend.
async fn twice(weir: &Weir, a: &Backend, path: &str, headers: &[(&str, &str)]) -> usize {
    let before = a.hits();
    for _ in 0..2 {
        let (status, _, _) = get_with(weir, path, headers).await;
        assert_eq!(status, 200, "{path}");
    }
    a.hits() - before
}

#[tokio::test]
async fn cache_control_directives_are_honoured() {
    let a = counting("a").start().await;
    let weir = weir(&a, "default_ttl = \"60s\"").await;
    assert_eq!(twice(&weir, &a, "/cc/max-age=60", &[]).await, 1, "max-age stores");
    assert_eq!(twice(&weir, &a, "/cc/s-maxage=60%2C_max-age=0", &[]).await, 1, "s-maxage beats max-age");
    assert_eq!(twice(&weir, &a, "/expires", &[]).await, 1, "Expires stores");
    assert_eq!(twice(&weir, &a, "/plain", &[]).await, 1, "default_ttl without freshness");
    assert_eq!(twice(&weir, &a, "/cc/no-store", &[]).await, 2, "no-store");
    assert_eq!(twice(&weir, &a, "/cc/private%2C_max-age=60", &[]).await, 2, "private");
    assert_eq!(twice(&weir, &a, "/cc/no-cache%2C_max-age=60", &[]).await, 2, "no-cache");
    assert_eq!(twice(&weir, &a, "/cc/max-age=0", &[]).await, 2, "max-age=0 beats default_ttl");
    assert_eq!(twice(&weir, &a, "/old", &[]).await, 2, "Age past max-age: already stale");
    // Authorization: shared only where the response allows it.
    let auth = [("authorization", "Bearer x")];
    assert_eq!(twice(&weir, &a, "/cc/max-age=61", &auth).await, 2, "authorization");
    assert_eq!(twice(&weir, &a, "/cc/public%2C_max-age=60", &auth).await, 1, "public");
    assert_eq!(twice(&weir, &a, "/cc/must-revalidate%2C_max-age=60", &auth).await, 1, "must-revalidate");
    // An entry stored without Authorization is not served to a request with it.
    let (_, h, _) = get_text(&weir, "/cc/max-age=60", &auth).await;
    assert_eq!(cache_status(&h), "weir; fwd=request");
    // The client's no-cache is not honoured by default (`honor_client_no_cache`).
    let (_, h, body) = get_text(&weir, "/cc/max-age=60", &[("cache-control", "no-cache")]).await;
    assert_eq!(cache_status(&h), "weir; hit");
    let (_, h, again) = get_text(&weir, "/cc/max-age=60", &[]).await;
    assert_eq!((cache_status(&h), again), ("weir; hit", body));
    assert!(h.get("age").is_some());
}

#[tokio::test]
async fn expiry_and_must_revalidate_send_the_next_request_upstream() {
    let a = counting("a").start().await;
    // max-age=2, not 1: Date has whole seconds, so a copy may be stored up to a
    // second old, and a 1s lifetime could already be over at the second request.
    let weir = weir(&a, "stale_while_revalidate = \"30s\"").await;
    assert_eq!(twice(&weir, &a, "/cc/max-age=2%2C_must-revalidate", &[]).await, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Stale, and must-revalidate forbids serving it while revalidating (the entry
    // is dropped at expiry, since no stale window applies).
    let (_, h, body) = get_text(&weir, "/cc/max-age=2%2C_must-revalidate", &[]).await;
    assert_eq!((cache_status(&h), body.as_str()), ("weir; fwd=uri-miss; stored", "2"));
    // Without it, the same expiry is served stale while revalidating.
    assert_eq!(twice(&weir, &a, "/cc/max-age=2", &[]).await, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, h, _) = get_text(&weir, "/cc/max-age=2", &[]).await;
    assert_eq!(cache_status(&h), "weir; hit; detail=stale-while-revalidate");
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let a = Backend::named("a")
        .reply(|req| Reply {
            status: StatusCode::OK,
            body: Bytes::from(
                req.headers()
                    .get("accept-language")
                    .map_or("none".to_string(), |v| v.to_str().unwrap().to_string()),
            ),
            delay: Duration::ZERO,
        })
        .headers(by_path)
        .start()
        .await;
    let weir = weir(&a, "").await;
    for lang in ["en", "fr", "en", "fr", "en"] {
        let (_, _, body) = get_text(&weir, "/vary", &[("accept-language", lang)]).await;
        assert_eq!(body, lang);
    }
    let (_, h, body) = get_text(&weir, "/vary", &[]).await;
    assert_eq!((body.as_str(), cache_status(&h)), ("none", "weir; fwd=vary-miss; stored"));
    assert_eq!(a.hits(), 3, "one fetch per variant");
    let (_, h, _) = get_text(&weir, "/vary", &[("accept-language", "fr"), ("user-agent", "other")]).await;
    assert_eq!(cache_status(&h), "weir; hit");
}

#[tokio::test]
async fn conditional_requests_get_304_from_a_fresh_entry() {
    let a = counting("a").start().await;
    let weir = weir(&a, "").await;
    // A cold key with a matching validator: 304 to the client, and still stored.
    let (status, h, _) = get_text(&weir, "/etag", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((status, cache_status(&h)), (StatusCode::NOT_MODIFIED, "weir; fwd=uri-miss; stored"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, h, body) = get_text(&weir, "/etag", &[]).await;
    assert_eq!((status, cache_status(&h), body.as_str()), (StatusCode::OK, "weir; hit", "1"));
    assert_eq!(h["etag"], "\"v1\"");
    let (status, h, body) = get_text(&weir, "/etag", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!((status, cache_status(&h), body.as_str()), (StatusCode::NOT_MODIFIED, "weir; hit", ""));
    assert_eq!(h["etag"], "\"v1\"");
    let since = [("if-modified-since", "Thu, 02 Jan 2020 00:00:00 GMT")];
    assert_eq!(get_text(&weir, "/etag", &since).await.0, StatusCode::NOT_MODIFIED);
    let earlier = [("if-modified-since", "Tue, 31 Dec 2019 00:00:00 GMT")];
    assert_eq!(get_text(&weir, "/etag", &earlier).await.0, StatusCode::OK);
    assert_eq!(get_text(&weir, "/etag", &[("if-none-match", "\"v2\"")]).await.0, StatusCode::OK);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let a = counting("a").start().await;
    let weir = weir(&a, "").await;
    get_text(&weir, "/cc/max-age=60", &[]).await;
    let req = Request::head(weir.url("/cc/max-age=60")).body(Full::new(Bytes::new())).unwrap();
    let (status, h, body) = send(req).await;
    assert_eq!((status, cache_status(&h), body.len()), (StatusCode::OK, "weir; hit", 0));
    assert_eq!(h["content-length"], "1");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_while_the_backend_is_dead_or_failing() {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let mut a = Backend::named("a")
        .reply(move |_| Reply {
            status: if f.load(SeqCst) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK },
            body: Bytes::from_static(b"good"),
            delay: Duration::ZERO,
        })
        .headers(by_path)
        .start()
        .await;
    let weir = weir(&a, "stale_if_error = \"30s\"").await;
    for path in ["/cc/max-age=2", "/cc/max-age=2?down"] {
        assert_eq!(get_text(&weir, path, &[]).await.2, "good");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // 5xx from a live backend.
    failing.store(true, SeqCst);
    let (status, h, body) = get_text(&weir, "/cc/max-age=2", &[]).await;
    assert_eq!(
        (status, cache_status(&h), body.as_str()),
        (StatusCode::OK, "weir; fwd=stale; detail=stale-if-error", "good")
    );
    // The backend process is gone.
    a.kill();
    let (status, h, body) = get_text(&weir, "/cc/max-age=2?down", &[]).await;
    assert_eq!(
        (status, cache_status(&h), body.as_str()),
        (StatusCode::OK, "weir; fwd=stale; detail=stale-if-error", "good")
    );
    // Nothing stored: the failure reaches the client.
    let (status, _, _) = get_text(&weir, "/never-stored", &[]).await;
    assert!(status.is_server_error(), "{status}");
    let m = weir.metrics().await;
    assert_eq!(metric(&m, "weir_cache_requests_total{cache=\"pages\",result=\"stale\"}"), 2.0);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    let a = Backend::named("a")
        .reply({
            let n = Arc::new(AtomicUsize::new(0));
            move |_| {
                let i = n.fetch_add(1, SeqCst) + 1;
                // The refresh is slow: clients must not wait for it.
                let delay = if i > 1 { Duration::from_millis(600) } else { Duration::ZERO };
                Reply { status: StatusCode::OK, body: Bytes::from(i.to_string()), delay }
            }
        })
        .headers(by_path)
        .start()
        .await;
    let weir = weir(&a, "stale_while_revalidate = \"30s\"").await;
    assert_eq!(get_text(&weir, "/cc/max-age=2", &[]).await.2, "1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let started = std::time::Instant::now();
    let stale = (0..20).map(|_| get_text(&weir, "/cc/max-age=2", &[]));
    for (_, h, body) in futures_util::future::join_all(stale).await {
        assert_eq!((cache_status(&h), body.as_str()), ("weir; hit; detail=stale-while-revalidate", "1"));
    }
    assert!(started.elapsed() < Duration::from_millis(450), "stale answers wait for nothing");
    tokio::time::sleep(Duration::from_millis(900)).await;
    // The refreshed copy answers. (Date has whole seconds, so a fresh copy may
    // already be up to a second old: max-age=2 leaves room.)
    let (_, h, body) = get_text(&weir, "/cc/max-age=2", &[]).await;
    assert_eq!((cache_status(&h), body.as_str()), ("weir; hit", "2"));
    assert_eq!(a.hits(), 2, "one background refresh for twenty stale answers");
}

#[tokio::test]
async fn negative_ttl_keeps_404s_briefly() {
    let a = Backend::named("a")
        .reply(|_| Reply {
            status: StatusCode::NOT_FOUND,
            body: Bytes::from_static(b"nope"),
            delay: Duration::ZERO,
        })
        .start()
        .await;
    // Date has whole seconds, so a stored copy may already be up to a second old:
    // a 2s window leaves at least one second for the ten requests below.
    let weir = weir(&a, "negative_ttl = \"2s\"").await;
    for _ in 0..10 {
        assert_eq!(get_text(&weir, "/missing", &[]).await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(a.hits(), 1, "one miss per window");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get_text(&weir, "/missing", &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn memory_stays_under_max_size_under_a_flood_of_keys_and_big_objects_pass() {
    let a = Backend::named("a")
        .reply(|req| {
            let size = if req.uri().path() == "/big" { 16 * 1024 } else { 4 * 1024 };
            Reply { status: StatusCode::OK, body: Bytes::from(vec![b'x'; size]), delay: Duration::ZERO }
        })
        .headers(|_| {
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static("max-age=60"));
            h
        })
        .start()
        .await;
    let toml = r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
cache = "small"
[upstreams.app]
servers = [{ address = "{a}" }]
[caches.small]
max_size = "64KiB"
max_object_size = "8KiB"
"#;
    let weir = Weir::start(toml, &[&a]).await;
    let http = client();
    for batch in 0..10 {
        let requests = (0..40).map(|i| http.get(weir.url(&format!("/k/{batch}/{i}")).parse().unwrap()));
        for r in futures_util::future::join_all(requests).await {
            let body = http_body_util::BodyExt::collect(r.unwrap().into_body()).await.unwrap().to_bytes();
            assert_eq!(body.len(), 4096);
        }
    }
    let m = weir.metrics().await;
    let size = metric(&m, "weir_cache_size_bytes{cache=\"small\"}");
    assert!(size > 32.0 * 1024.0 && size <= 64.0 * 1024.0, "size {size}");
    assert!(metric(&m, "weir_cache_entries{cache=\"small\"}") <= 16.0);
    assert!(metric(&m, "weir_cache_evictions_total{cache=\"small\"}") >= 350.0, "{m}");
    // Over max_object_size: streamed through, never stored.
    let before = a.hits();
    for _ in 0..2 {
        let (_, h, body) = get_text(&weir, "/big", &[]).await;
        assert_eq!((body.len(), cache_status(&h)), (16 * 1024, "weir; fwd=uri-miss"));
    }
    assert_eq!(a.hits() - before, 2);
}

#[tokio::test]
async fn purge_by_key_and_prefix_and_unsafe_methods_invalidate() {
    let a = counting("a").start().await;
    let weir = weir(&a, "").await;
    let admin = weir.admin.unwrap();
    for path in ["/cc/max-age=60", "/cc/max-age=60?x=1", "/cc/max-age=61"] {
        get_text(&weir, path, &[]).await;
    }
    assert_eq!(a.hits(), 3);
    let purge = |query: &str| {
        let req = Request::delete(format!("http://{admin}/cache/pages?{query}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(req)
    };
    // The key has the port the client named (not the scheme's default).
    let port = weir.addr.port();
    let (status, _, body) =
        purge(&format!("key=http%3A%2F%2F127.0.0.1%3A{port}%2Fcc%2Fmax-age%3D60%3Fx%3D1")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"purged 1\n"[..]));
    assert_eq!(twice(&weir, &a, "/cc/max-age=60?x=1", &[]).await, 1, "purged key fetched again");
    assert_eq!(twice(&weir, &a, "/cc/max-age=60", &[]).await, 0, "other keys kept");
    let (_, _, body) = purge(&format!("prefix=http://127.0.0.1:{port}/cc/")).await;
    assert_eq!(&body[..], b"purged 3\n");
    assert_eq!(twice(&weir, &a, "/cc/max-age=61", &[]).await, 1);
    assert_eq!(purge("key=x").await.0, StatusCode::OK);
    let req =
        Request::delete(format!("http://{admin}/cache/nope?key=x")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(req).await.0, StatusCode::NOT_FOUND);
    // A successful POST to a URL drops what is stored for it.
    let req = Request::post(weir.url("/cc/max-age=61")).body(Full::new(Bytes::from_static(b"x"))).unwrap();
    let (_, h, _) = send(req).await;
    assert_eq!(cache_status(&h), "weir; fwd=method");
    assert_eq!(twice(&weir, &a, "/cc/max-age=61", &[]).await, 1);
}

#[tokio::test]
async fn reads_go_to_replicas_and_writes_to_the_primary() {
    let replica = Backend::named("replica").start().await;
    let primary = Backend::named("primary").echo().start().await;
    let toml = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/db/"
upstream = "primary"
[[routes]]
path_prefix = "/db/"
methods = ["GET", "HEAD"]
upstream = "replicas"
[upstreams.primary]
servers = [{ address = "{primary}" }]
[upstreams.replicas]
servers = [{ address = "{replica}" }]
"#;
    let weir = Weir::start(toml, &[&replica, &primary]).await;
    for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"] {
        let req = Request::builder()
            .method(method)
            .uri(weir.url("/db/rows"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(req).await.0, StatusCode::OK, "{method}");
    }
    assert_eq!(replica.hits(), 2);
    let methods: Vec<String> = primary.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["POST", "PUT", "DELETE", "PATCH"]);
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> f64 {
    crate::support::rss_kib(pid) as f64 * 1024.0
}

/// GETs each of `paths` on one keep-alive connection, 64 pipelined at a time, and
/// reads every answer (each must be a `200`).
async fn pipelined(addr: std::net::SocketAddr, paths: Vec<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    for batch in paths.chunks(64) {
        let requests: String =
            batch.iter().map(|p| format!("GET {p} HTTP/1.1\r\nhost: objects.test\r\n\r\n")).collect();
        stream.write_all(requests.as_bytes()).await.unwrap();
        let mut left = batch.len();
        while left > 0 {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "weir closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + length {
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "weir closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            buf.drain(..end + 4 + length);
            left -= 1;
        }
    }
}

/// `pipelined` over 4 connections, for `/o/{from}` .. `/o/{to}`.
async fn fetch_objects(addr: std::net::SocketAddr, from: usize, to: usize) {
    let tasks = (0..4).map(|c| {
        let paths = (from..to).skip(c).step_by(4).map(|i| format!("/o/{i}")).collect();
        tokio::spawn(pipelined(addr, paths))
    });
    for task in futures_util::future::join_all(tasks).await {
        task.unwrap();
    }
}

/// The scale target of issue #21: a cache full of 3-byte responses holds what it
/// weighs, so the process grows by about `max_size`, not several times it.
#[tokio::test]
async fn a_cache_full_of_small_objects_grows_resident_memory_by_about_max_size() {
    let a = Backend::named("a")
        .reply(|_| Reply { status: StatusCode::OK, body: Bytes::from_static(b"abc"), delay: Duration::ZERO })
        .headers(|_| {
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static("max-age=600"));
            h.insert("content-type", HeaderValue::from_static("text/plain"));
            h
        })
        .start()
        .await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let toml = format!(
        r#"
workers = 1
[admin]
listen = "{admin}"
[[listeners]]
name = "web"
listen = "{{port}}"
[[routes]]
path_prefix = "/warm/"
upstream = "app"
[[routes]]
upstream = "app"
cache = "objects"
[upstreams.app]
servers = [{{ address = "{{a}}" }}]
[caches.objects]
max_size = "4MiB"
"#
    );
    let weir = crate::support::WeirProcess::start(&toml, &[&a]).await;
    let metrics = || async {
        let text =
            client().get(format!("http://{admin}/metrics").parse().unwrap()).await.unwrap().into_body();
        let text = http_body_util::BodyExt::collect(text).await.unwrap().to_bytes();
        String::from_utf8(text.to_vec()).unwrap()
    };
    // Buffers, pools and the runtime's own memory belong to the baseline.
    let warm: Vec<String> = (0..2000).map(|i| format!("/warm/{i}")).collect();
    for _ in 0..2 {
        pipelined(weir.addr, warm.clone()).await;
    }
    let before = rss(weir.child.id());
    // Until the cache evicts, then as many again: full, and turned over.
    let (mut sent, step) = (0, 4000);
    while metric(&metrics().await, "weir_cache_evictions_total{cache=\"objects\"}") == 0.0 {
        fetch_objects(weir.addr, sent, sent + step).await;
        sent += step;
    }
    fetch_objects(weir.addr, sent, 2 * sent).await;
    let growth = rss(weir.child.id()) - before;
    let m = metrics().await;
    let max_size = 4.0 * 1024.0 * 1024.0;
    let objects = metric(&m, "weir_cache_entries{cache=\"objects\"}");
    let weighed = metric(&m, "weir_cache_size_bytes{cache=\"objects\"}");
    let report = format!(
        "{sent} URLs sent twice over, {objects} objects held, weighed {weighed}, RSS grew {growth} ({:.2} of max_size, {:.0} bytes per object)",
        growth / max_size,
        growth / objects
    );
    eprintln!("{report}");
    assert!(weighed <= max_size && weighed > 0.9 * max_size, "{report}");
    // The target (1.2 at 64 MiB, release) is measured by `benches/scale_cache.py`; at
    // this size a debug build's fixed costs (the map's table, the sketch) add about 0.3.
    assert!(growth <= 1.5 * max_size, "{report}");
    // Compact: thousands of small objects fit.
    assert!(objects >= 5000.0, "{report}");
}

/// A hit writes the fields as stored on weir's HTTP/1.1 server; hyper's h2 server and
/// a route's response header rules get them as a map. Each sees the same fields.
#[tokio::test]
async fn a_hit_carries_the_stored_fields_on_h1_h2_and_through_response_header_rules() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let a = Backend::named("a")
        .reply(|_| Reply { status: StatusCode::OK, body: Bytes::from_static(b"abc"), delay: Duration::ZERO })
        .headers(|_| {
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static("max-age=600"));
            h.insert("etag", HeaderValue::from_static("\"v1\""));
            h.insert("age", HeaderValue::from_static("7"));
            h.append("x-powered-by", HeaderValue::from_static("php"));
            h.append("x-b", HeaderValue::from_static("1"));
            h.append("x-b", HeaderValue::from_static("2"));
            h
        })
        .start()
        .await;
    let toml = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/shaped/"
upstream = "app"
cache = "pages"
request_id = true
response_headers = { set = { x-frame-options = "DENY" }, remove = ["x-powered-by"] }
[[routes]]
upstream = "app"
cache = "pages"
[upstreams.app]
servers = [{ address = "{a}" }]
[caches.pages]
max_size = "1MiB"
"#;
    let weir = Weir::start(toml, &[&a]).await;
    let check = |h: &HeaderMap, shaped: bool| {
        assert_eq!(cache_status(h), "weir; hit", "{h:?}");
        assert_eq!(h.get("etag").unwrap(), "\"v1\"");
        assert_eq!(h.get("content-length").unwrap(), "3");
        assert_eq!(h.get_all("age").iter().count(), 1, "{h:?}");
        assert!(h.get("age").unwrap().to_str().unwrap().parse::<u64>().unwrap() >= 7);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(h.contains_key("date"));
        assert_eq!(h.contains_key("x-powered-by"), !shaped, "{h:?}");
        assert_eq!(h.contains_key("x-frame-options"), shaped, "{h:?}");
        assert_eq!(h.contains_key("x-request-id"), shaped, "{h:?}");
    };
    for path in ["/p", "/shaped/p"] {
        get_with(&weir, path, &[]).await;
        let (status, h, body) = get_with(&weir, path, &[]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"abc"[..]));
        check(&h, path != "/p");
        // h2 with prior knowledge: hyper's server.
        let stream = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(weir.url(path)).body(Full::new(Bytes::new())).unwrap();
        let response = sender.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
        assert_eq!((parts.status, &body[..]), (StatusCode::OK, &b"abc"[..]));
        check(&parts.headers, path != "/p");
    }
    assert_eq!(a.hits(), 2);
}
