//! Request shaping through a real weir (issue 11): header rules both ways, the
//! request id, strip and rewrite, the traversal refusals, redirects, fixed answers,
//! access lists, body limits, per-route timeouts, idle connections and sticky
//! sessions. Each test asserts what the backend saw, not only what the client got.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{get_with, send, Backend, Reply, Weir};

const LISTENER: &str = r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
"#;

/// `LISTENER` + `extra` (top-level keys first) + `routes` + one upstream `app` on `{a}`.
fn config(top: &str, routes: &str, upstream_extra: &str) -> String {
    format!("{top}\n{LISTENER}\n{routes}\n[upstreams.app]\nservers = [{{ address = \"{{a}}\" }}]\n{upstream_extra}\n")
}

/// Writes `request` as raw bytes and reads until the server closes or 3s pass.
async fn raw(weir: &Weir, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                out.extend_from_slice(&buf[..n]);
                // Enough once a whole head is in, for responses that keep the connection.
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.starts_with(b"HTTP/1.1 4") {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn header_rules_apply_to_requests_and_responses() {
    let a = Backend::named("a")
        .headers(|_| {
            let mut h = HeaderMap::new();
            h.insert("x-powered-by", http::HeaderValue::from_static("php"));
            h.insert("server-timing", http::HeaderValue::from_static("db;dur=3"));
            h
        })
        .start()
        .await;
    let routes = r#"
[[routes]]
upstream = "app"
request_headers = { set = { X-Env = "prod", X-Client = "{client_ip}", X-Origin = "{scheme}://{host}" }, add = { X-Tag = "weir" }, remove = ["X-Debug"] }
response_headers = { set = { X-Frame-Options = "DENY" }, add = { Server-Timing = "proxy;dur=0" }, remove = ["X-Powered-By"] }
"#;
    let weir = Weir::start(&config("", routes, ""), &[&a]).await;
    let (status, headers, _) =
        get_with(&weir, "/", &[("x-debug", "1"), ("x-env", "dev"), ("x-tag", "client")]).await;
    assert_eq!(status, 200);
    let seen = &a.seen()[0].headers;
    assert!(!seen.contains_key("x-debug"), "removed header reached the backend");
    assert_eq!(seen["x-env"], "prod", "set replaces what the client sent");
    assert_eq!(seen["x-client"], "127.0.0.1");
    assert_eq!(seen["x-origin"], "http://127.0.0.1");
    let tags: Vec<_> = seen.get_all("x-tag").iter().collect();
    assert_eq!(tags, ["client", "weir"], "add keeps what was there");
    assert!(!seen.contains_key("x-request-id"), "no request id unless the route asks");

    assert!(!headers.contains_key("x-powered-by"));
    assert_eq!(headers["x-frame-options"], "DENY");
    let timing: Vec<_> = headers.get_all("server-timing").iter().collect();
    assert_eq!(timing, ["db;dur=3", "proxy;dur=0"]);
}

#[tokio::test]
async fn request_id_is_generated_unless_a_trusted_proxy_sent_a_sane_one() {
    let a = Backend::named("a").start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let top = format!(
        "trusted_proxies = [\"127.0.0.1\"]\n[access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n",
        log.display()
    );
    let routes = r#"
[[routes]]
path_prefix = "/direct/"
upstream = "app"
request_id = true
[[routes]]
path_prefix = "/behind/"
upstream = "app"
request_id = true
listeners = ["web"]
"#;
    // Untrusted: the same config without trusted_proxies.
    let untrusted_top = top.replace("trusted_proxies = [\"127.0.0.1\"]\n", "");
    let untrusted =
        Weir::start(&config(&untrusted_top.replace("access.log", "u.log"), routes, ""), &[&a]).await;
    let (_, headers, _) = get_with(&untrusted, "/direct/x", &[("x-request-id", "from-client")]).await;
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "from-client", "an untrusted peer chose its own request id");
    assert_eq!(id.len(), 32);
    assert_eq!(a.seen()[0].headers["x-request-id"], id.as_str(), "the backend saw another id");
    let (_, again, _) = get_with(&untrusted, "/direct/x", &[]).await;
    assert_ne!(again["x-request-id"], id.as_str(), "ids repeat");

    let trusted = Weir::start(&config(&top, routes, ""), &[&a]).await;
    let (_, headers, _) = get_with(&trusted, "/behind/x", &[("x-request-id", "abc-123")]).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(a.seen()[2].headers["x-request-id"], "abc-123");
    let (_, headers, _) = get_with(&trusted, "/behind/x", &[("x-request-id", "bad id\"")]).await;
    assert_ne!(headers["x-request-id"], "bad id\"", "an insane id was kept");

    // The access log has the id.
    let mut text = String::new();
    for _ in 0..40 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["request_id"], "abc-123", "{text}");
}

#[tokio::test]
async fn strip_prefix_and_rewrite_keep_the_query_byte_for_byte() {
    let a = Backend::named("a").start().await;
    let routes = r#"
[[routes]]
path_prefix = "/api/"
upstream = "app"
strip_prefix = true
[[routes]]
path_prefix = "/old/"
upstream = "app"
rewrite = "/v2/"
[[routes]]
path_prefix = "/keep/"
upstream = "app"
"#;
    let weir = Weir::start(&config("", routes, ""), &[&a]).await;
    for path in ["/api/x?q=1", "/api/", "/api/a%2Fb%20c?x=%2e%2E&y=a+b", "/old/items/7?sort=-id", "/keep/k?z"]
    {
        assert_eq!(get_with(&weir, path, &[]).await.0, 200, "{path}");
    }
    let uris: Vec<_> = a.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/x?q=1", "/", "/a%2Fb%20c?x=%2e%2E&y=a+b", "/v2/items/7?sort=-id", "/keep/k?z"]);
}

#[tokio::test]
async fn dot_segments_and_empty_segments_are_refused_before_routing() {
    let a = Backend::named("a").start().await;
    let routes = r#"
[[routes]]
path_prefix = "/admin/"
upstream = "app"
deny = ["127.0.0.1"]
[[routes]]
path_prefix = "/public/"
upstream = "app"
"#;
    let weir = Weir::start(&config("", routes, ""), &[&a]).await;
    for path in [
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/%2E%2e/admin/secret",
        "/public/.%2e/admin/secret",
        "/public/..%2fadmin/secret",
        "/public%2f..%2fadmin/secret",
        "/public/./x",
        "//admin/secret",
        "/public//x",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let response = raw(&weir, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
    }
    assert_eq!(a.hits(), 0, "a traversal attempt reached the backend");
    // Dots inside names are fine.
    let ok =
        raw(&weir, b"GET /public/a..b/file.tar.gz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn redirects_answer_with_each_status_and_no_upstream() {
    let a = Backend::named("a").start().await;
    let mut routes = String::new();
    for status in [301, 302, 307, 308] {
        routes.push_str(&format!(
            "[[routes]]\npath_prefix = \"/r{status}/\"\nredirect = {{ to = \"https://{{host}}{{path}}\", status = {status} }}\n"
        ));
    }
    routes
        .push_str("[[routes]]\npath_prefix = \"/other/\"\nredirect = { to = \"{scheme}://example.net/\" }\n");
    let weir = Weir::start(&config("", &routes, ""), &[&a]).await;
    for status in [301u16, 302, 307, 308] {
        let (got, headers, body) = get_with(&weir, &format!("/r{status}/x?y=1&z=%20"), &[]).await;
        assert_eq!(got.as_u16(), status);
        assert_eq!(headers["location"], format!("https://127.0.0.1/r{status}/x?y=1&z=%20").as_str());
        assert!(body.is_empty());
    }
    let (got, headers, _) = get_with(&weir, "/other/", &[]).await;
    assert_eq!(got, 302, "the default status");
    assert_eq!(headers["location"], "http://example.net/");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn respond_answers_with_a_fixed_body() {
    let a = Backend::named("a").start().await;
    let routes = r#"
[[routes]]
respond = { status = 503, body = "<h1>Back soon</h1>", content_type = "text/html" }
response_headers = { set = { Retry-After = "120" } }
[[routes]]
path_prefix = "/forbidden/"
respond = { status = 403 }
"#;
    let weir = Weir::start(&config("", routes, ""), &[&a]).await;
    let (status, headers, body) = get_with(&weir, "/anything", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(headers["retry-after"], "120");
    assert_eq!(body, "<h1>Back soon</h1>");
    let (status, _, body) = get_with(&weir, "/forbidden/x", &[]).await;
    assert_eq!(status, 403);
    assert!(body.is_empty());
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn access_lists_use_the_client_address_through_trusted_proxies() {
    let a = Backend::named("a").start().await;
    let routes = r#"
[[routes]]
name = "internal"
path_prefix = "/internal/"
upstream = "app"
allow = ["10.0.0.0/8"]
deny = ["10.66.0.0/16"]
[[routes]]
path_prefix = "/blocked/"
upstream = "app"
deny = ["127.0.0.1"]
[[routes]]
upstream = "app"
"#;
    // Without trusted proxies, X-Forwarded-For is not believed: the peer is 127.0.0.1.
    let direct = Weir::start(&config("", routes, ""), &[&a]).await;
    assert_eq!(get_with(&direct, "/internal/x", &[]).await.0, 403);
    assert_eq!(get_with(&direct, "/internal/x", &[("x-forwarded-for", "10.1.2.3")]).await.0, 403);
    assert_eq!(get_with(&direct, "/blocked/x", &[]).await.0, 403);
    assert_eq!(get_with(&direct, "/open", &[]).await.0, 200);
    assert_eq!(a.hits(), 1, "a denied request reached the backend");
    let metrics = direct.metrics().await;
    assert!(metrics.contains("weir_access_denied_total{route=\"internal\"} 2"), "{metrics}");
    assert!(metrics.contains("weir_access_denied_total{route=\"app\"} 1"), "{metrics}");

    let behind = Weir::start(&config("trusted_proxies = [\"127.0.0.1\"]", routes, ""), &[&a]).await;
    assert_eq!(get_with(&behind, "/internal/x", &[("x-forwarded-for", "10.1.2.3")]).await.0, 200);
    assert_eq!(
        get_with(&behind, "/internal/x", &[("x-forwarded-for", "10.66.0.1")]).await.0,
        403,
        "deny wins"
    );
    assert_eq!(get_with(&behind, "/internal/x", &[("x-forwarded-for", "192.0.2.1")]).await.0, 403);
    // The proxy itself is 127.0.0.1, but the client behind it is not.
    assert_eq!(get_with(&behind, "/blocked/x", &[("x-forwarded-for", "192.0.2.1")]).await.0, 200);
    assert_eq!(a.hits(), 3);
}

const LIMITED: &str = r#"
[[routes]]
upstream = "app"
max_request_body = "1KiB"
"#;

#[tokio::test]
async fn a_declared_oversized_body_gets_413_before_any_of_it_is_read() {
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&config("", LIMITED, ""), &[&a]).await;
    // Only the head is sent: weir must answer without waiting for the body.
    let response = raw(&weir, b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.to_ascii_lowercase().contains("connection: close"), "{response}");
    assert_eq!(a.hits(), 0);
    // At the limit is fine.
    let body = Full::new(Bytes::from(vec![b'x'; 1024]));
    let (status, _, _) = send(Request::post(weir.url("/upload")).body(body).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(a.seen()[0].body_len, 1024);
    let metrics = weir.metrics().await;
    assert!(metrics.contains("weir_requests_total{code=\"413\",upstream=\"app\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_streamed_body_crossing_the_limit_gets_413_and_never_reaches_the_backend_whole() {
    // Over HTTP/1.1 and h2 to the upstream: each reports the cut body its own way.
    for protocol in ["http1", "h2"] {
        let a = Backend::named("a").start().await;
        let upstream = format!("protocol = \"{protocol}\"");
        let weir = Weir::start(&config("", LIMITED, &upstream), &[&a]).await;
        let mut stream = TcpStream::connect(weir.addr).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = format!("200\r\n{}\r\n", "y".repeat(0x200));
        for _ in 0..3 {
            stream.write_all(chunk.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // No last chunk: weir must not wait for the rest.
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{protocol}: {response}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = a.seen();
        assert!(
            seen.iter().all(|s| s.body_len <= 1024),
            "{protocol}: the backend got an oversized body: {seen:?}"
        );
        let metrics = weir.metrics().await;
        assert!(
            metrics.contains("weir_requests_total{code=\"413\",upstream=\"app\"} 1"),
            "{protocol}: {metrics}"
        );
        assert!(!metrics.contains("code=\"502\""), "{protocol}: {metrics}");
    }
}

#[tokio::test]
async fn a_route_timeout_overrides_the_upstream_one() {
    let a = Backend::named("a").delay(Duration::from_millis(400)).start().await;
    let routes = r#"
[[routes]]
path_prefix = "/fast/"
upstream = "app"
request_timeout = "100ms"
[[routes]]
upstream = "app"
"#;
    let weir = Weir::start(&config("", routes, "request_timeout = \"5s\""), &[&a]).await;
    let started = std::time::Instant::now();
    assert_eq!(get_with(&weir, "/fast/x", &[]).await.0, 504);
    assert!(started.elapsed() < Duration::from_millis(380), "{:?}", started.elapsed());
    assert_eq!(get_with(&weir, "/slow", &[]).await.0, 200);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let a = Backend::named("a").start().await;
    let top = "";
    let text = config(top, "[[routes]]\nupstream = \"app\"\n", "")
        .replace("listen = \"127.0.0.1:0\"\n\n", "listen = \"127.0.0.1:0\"\nidle_timeout = \"300ms\"\n\n");
    assert!(text.contains("idle_timeout"), "{text}");
    let weir = Weir::start(&text, &[&a]).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(250) && after < Duration::from_secs(2), "{after:?}");
}

/// The `name=value` part of a `Set-Cookie`.
fn cookie_of(headers: &HeaderMap) -> Option<String> {
    let set = headers.get("set-cookie")?.to_str().ok()?;
    Some(set.split(';').next()?.to_string())
}

#[tokio::test]
async fn sticky_sessions_hold_while_healthy_and_move_when_the_server_dies() {
    let reply = |name: &'static str| {
        move |_: &Request<()>| Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(name.as_bytes()),
            delay: Duration::ZERO,
        }
    };
    let mut a = Backend::named("a").reply(reply("a")).start().await;
    let b = Backend::named("b").reply(reply("b")).start().await;
    let text = format!(
        "{LISTENER}\n[[routes]]\nupstream = \"app\"\n[upstreams.app]\nservers = [{{ address = \"{{a}}\" }}, {{ address = \"{{b}}\" }}]\nsticky = {{ cookie = \"srv\", ttl = \"1h\" }}\n"
    );
    let weir = Weir::start(&text, &[&a, &b]).await;

    let (_, headers, first) = get_with(&weir, "/", &[]).await;
    let cookie = cookie_of(&headers).expect("the first response sets the cookie");
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(set.contains("Max-Age=3600") && set.contains("HttpOnly"), "{set}");
    assert!(
        !set.contains(&a.addr.to_string()) && !set.contains(&b.addr.to_string()),
        "address leaked: {set}"
    );
    // Round-robin would alternate; the cookie holds every request on one server.
    for _ in 0..6 {
        let (_, headers, body) = get_with(&weir, "/", &[("cookie", &cookie)]).await;
        assert_eq!(body, first, "the session moved while its server was healthy");
        assert!(!headers.contains_key("set-cookie"), "a valid cookie was set again");
    }
    // A forged cookie names no server: the request is balanced and gets a real one.
    let (_, headers, _) = get_with(&weir, "/", &[("cookie", "srv=127.0.0.1")]).await;
    assert!(cookie_of(&headers).is_some());

    // Make sure the session is on `a`, then kill `a`.
    let (cookie_a, survivor) = if first == "a" {
        (cookie, "b")
    } else {
        let mut found = None;
        for _ in 0..4 {
            let (_, headers, body) = get_with(&weir, "/", &[]).await;
            if body == "a" {
                found = cookie_of(&headers);
                break;
            }
        }
        (found.expect("round-robin reaches a"), "b")
    };
    a.kill();
    let (status, headers, body) = get_with(&weir, "/", &[("cookie", &cookie_a)]).await;
    assert_eq!(status, 200);
    assert_eq!(body, survivor);
    let moved = cookie_of(&headers).expect("a moved session gets a new cookie");
    assert_ne!(moved, cookie_a);
    let (_, headers, body) = get_with(&weir, "/", &[("cookie", &moved)]).await;
    assert_eq!(body, survivor);
    assert!(!headers.contains_key("set-cookie"));
}
