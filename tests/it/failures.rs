//! Failures end to end (SPEC "Proxy semantics"): no route `404`; no server reachable
//! `502`; no answer within `request_timeout` `504`; a refused server is skipped and
//! the next one tried, so the client never notices; a server that does not accept
//! within `connect_timeout` counts as refused. And the listener's own limits: an
//! oversized request head is `431`, a client too slow with its headers is cut off.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{get, metric, Backend, Weir};

/// An address nothing listens on: bound, then closed, so connecting is refused.
fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn one_upstream(servers: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/app/"
upstream = "app"
[upstreams.app]
{extra}
servers = [{servers}]
"#
    )
}

#[tokio::test]
async fn no_route_is_404_and_counted_under_no_upstream() {
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&one_upstream(r#"{ address = "{a}" }"#, ""), &[&a]).await;
    let (status, body) = get(&weir.url("/elsewhere")).await;
    assert_eq!(status, 404);
    assert_eq!(body, "404 Not Found\n");
    assert_eq!(a.hits(), 0);
    let metrics = weir.metrics().await;
    assert!(metrics.contains(r#"weir_requests_total{code="404",upstream=""} 1"#), "{metrics}");
}

#[tokio::test]
async fn every_server_refusing_is_502() {
    let servers = format!(r#"{{ address = "{}" }}, {{ address = "{}" }}"#, refused_addr(), refused_addr());
    let weir = Weir::start(&one_upstream(&servers, ""), &[]).await;
    for _ in 0..3 {
        let (status, body) = get(&weir.url("/app/x")).await;
        assert_eq!(status, 502);
        assert_eq!(body, "502 Bad Gateway\n");
    }
    let metrics = weir.metrics().await;
    assert!(metrics.contains(r#"weir_requests_total{code="502",upstream="app"} 3"#), "{metrics}");
}

#[tokio::test]
async fn slower_than_request_timeout_is_504() {
    let slow = Backend::named("slow").delay(Duration::from_secs(2)).start().await;
    let weir =
        Weir::start(&one_upstream(r#"{ address = "{slow}" }"#, r#"request_timeout = "200ms""#), &[&slow])
            .await;
    let started = Instant::now();
    let (status, body) = get(&weir.url("/app/x")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 504);
    assert_eq!(body, "504 Gateway Timeout\n");
    assert!(elapsed >= Duration::from_millis(200), "answered before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "the timeout did not cut the wait: {elapsed:?}");
    // A timed-out request may have reached the server, so it is not retried elsewhere.
    assert_eq!(slow.hits(), 1);
}

#[tokio::test]
async fn refused_server_is_skipped_without_client_error() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let dead = refused_addr();
    let servers = format!(r#"{{ address = "{{a}}" }}, {{ address = "{dead}" }}, {{ address = "{{b}}" }}"#);
    let weir = Weir::start(&one_upstream(&servers, ""), &[&a, &b]).await;
    for i in 0..12 {
        let (status, body) = get(&weir.url("/app/x")).await;
        assert_eq!(status, 200, "request {i} failed: {body}");
    }
    assert_eq!(a.hits() + b.hits(), 12);
    // The dead server's turns went to the others, evenly enough that both served.
    assert!(a.hits() >= 4 && b.hits() >= 4, "a {} b {}", a.hits(), b.hits());
    let metrics = weir.metrics().await;
    assert!(metrics.contains(r#"weir_requests_total{code="200",upstream="app"} 12"#), "{metrics}");
    let series = format!(r#"weir_upstream_connect_errors_total{{server="{dead}",upstream="app"}}"#);
    assert!(metric(&metrics, &series) >= 1.0, "{metrics}");
}

/// A listening socket that never accepts and whose accept queue is full: Linux drops
/// further SYNs, so a connect to it hangs until the caller gives up. `None` if this
/// kernel does not behave that way (then the test is skipped).
async fn black_hole() -> Option<(std::net::TcpListener, Vec<tokio::net::TcpStream>)> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).ok()?;
    socket.listen(0).ok()?;
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().ok()?;
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(_)) => return None,
            // This connect hung: the queue is full and the next ones will hang too.
            Err(_) => return Some((listener, fillers)),
        }
    }
    None
}

#[tokio::test]
async fn connect_slower_than_connect_timeout_counts_as_refused() {
    let Some((hole, _fillers)) = black_hole().await else {
        eprintln!("skipped: cannot make a connect hang deterministically on this kernel");
        return;
    };
    let live = Backend::named("live").start().await;
    let servers = format!(r#"{{ address = "{}" }}, {{ address = "{{live}}" }}"#, hole.local_addr().unwrap());
    let weir = Weir::start(&one_upstream(&servers, r#"connect_timeout = "100ms""#), &[&live]).await;
    let started = Instant::now();
    for i in 0..4 {
        let (status, body) = get(&weir.url("/app/x")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "live"), "request {i}");
    }
    let elapsed = started.elapsed();
    assert_eq!(live.hits(), 4);
    // The black hole's turns each waited out connect_timeout, then went to `live`.
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    let metrics = weir.metrics().await;
    let series = format!(
        r#"weir_upstream_connect_errors_total{{server="{}",upstream="app"}}"#,
        hole.local_addr().unwrap()
    );
    assert!(metric(&metrics, &series) >= 1.0, "{metrics}");
}

#[tokio::test]
async fn oversized_request_head_is_431_and_never_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&one_upstream(r#"{ address = "{a}" }"#, ""), &[&a]).await;
    let mut stream = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    // Default max_header_size is 32 KiB; send 40 KiB of one header.
    let big = "x".repeat(40 * 1024);
    let request = format!("GET /app/x HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn client_slower_than_header_read_timeout_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::named("a").start().await;
    let text = one_upstream(r#"{ address = "{a}" }"#, "").replace(
        "listen = \"127.0.0.1:0\"\n[[routes]]",
        "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"300ms\"\n[[routes]]",
    );
    assert!(text.contains("header_read_timeout"));
    let weir = Weir::start(&text, &[&a]).await;
    let mut stream = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET /app/x HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // ... and the rest of the head never comes. weir must close the connection.
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "a client that never finished its headers was not cut off");
    assert!(elapsed >= Duration::from_millis(250), "cut off before the timeout: {elapsed:?}");
    assert_eq!(a.hits(), 0);
}

/// A backend that answers every request with `503` and its name.
async fn unavailable(name: &'static str) -> Backend {
    Backend::named(name)
        .reply(move |_| crate::support::Reply {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            body: bytes::Bytes::from_static(name.as_bytes()),
            delay: Duration::ZERO,
        })
        .start()
        .await
}

/// With `retry_on`, a GET answered `503` is tried on the next server, so clients see
/// only the healthy server's answers; a POST (not idempotent, has a body) is not.
#[tokio::test]
async fn a_status_in_retry_on_is_tried_on_another_server() {
    let a = unavailable("a").await;
    let b = Backend::named("b").start().await;
    let config = one_upstream(r#"{ address = "{a}" }, { address = "{b}" }"#, r#"retry_on = "502-504""#);
    let weir = Weir::start(&config, &[&a, &b]).await;
    for _ in 0..10 {
        assert_eq!(get(&weir.url("/app/x")).await, (http::StatusCode::OK, "b".to_string()));
    }
    assert!(a.hits() >= 4, "the 503 server was not tried: {}", a.hits());
    let retries = metric(&weir.metrics().await, "weir_upstream_retries_total{upstream=\"app\"}");
    assert!(retries >= 4.0, "{retries} retries counted");

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let post =
            http::Request::post(weir.url("/app/p")).body(http_body_util::Full::new(bytes::Bytes::from("x")));
        statuses.push(crate::support::send(post.unwrap()).await.0.as_u16());
    }
    assert!(statuses.contains(&503), "a POST was retried: {statuses:?}");
}

/// When no other server can take the retry, the client gets the server's own answer
/// (status and body), not a `502` of weir's.
#[tokio::test]
async fn a_retry_on_status_with_no_server_left_is_passed_on_as_is() {
    let a = unavailable("a").await;
    let config = one_upstream(r#"{ address = "{a}" }"#, r#"retry_on = "503""#);
    let weir = Weir::start(&config, &[&a]).await;
    assert_eq!(get(&weir.url("/app/x")).await, (http::StatusCode::SERVICE_UNAVAILABLE, "a".to_string()));
    assert_eq!(a.hits(), 1);
}
