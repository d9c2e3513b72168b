//! Rate limits and overload protection through a real weir: 429s and their headers,
//! per-key isolation, the trusted-proxy rule, `max_in_flight` with its queue, and
//! `max_connections`.

use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{get_with, Backend, Weir};

/// GET `/` with extra headers: status and headers.
async fn get_head(weir: &Weir, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
    let (status, headers, _) = get_with(weir, "/", headers).await;
    (status, headers)
}

fn limited(key: &str, extra: &str) -> String {
    format!(
        r#"
{extra}
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
rate_limit = "per_client"
[upstreams.app]
servers = [{{ address = "{{a}}" }}]
[rate_limits.per_client]
key = "{key}"
rate = 0.1
burst = 2
"#
    )
}

#[tokio::test]
async fn over_the_limit_gets_429_with_headers_and_never_reaches_the_backend() {
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&limited("client_ip", ""), &[&a]).await;

    let (status, h) = get_head(&weir, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h["ratelimit-policy"], "\"per_client\";q=2;w=20");
    assert_eq!(h["ratelimit"], "\"per_client\";r=1;t=10");
    let (status, h) = get_head(&weir, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h["ratelimit"], "\"per_client\";r=0;t=20");

    let (status, h) = get_head(&weir, &[]).await;
    assert_eq!(status, 429);
    assert_eq!(h["retry-after"], "10");
    assert_eq!(h["ratelimit"], "\"per_client\";r=0;t=10");
    assert_eq!(h["ratelimit-policy"], "\"per_client\";q=2;w=20");
    assert_eq!(a.hits(), 2, "a limited request reached the backend");

    let metrics = weir.metrics().await;
    assert!(metrics.contains("weir_rate_limited_total{rate_limit=\"per_client\"} 1"), "{metrics}");
    assert!(metrics.contains("weir_requests_total{code=\"429\",upstream=\"app\"} 1"), "{metrics}");
}

#[tokio::test]
async fn one_noisy_key_does_not_limit_another() {
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&limited("header:x-api-key", ""), &[&a]).await;
    for _ in 0..2 {
        assert_eq!(get_head(&weir, &[("x-api-key", "noisy")]).await.0, 200);
    }
    assert_eq!(get_head(&weir, &[("x-api-key", "noisy")]).await.0, 429);
    assert_eq!(get_head(&weir, &[("x-api-key", "quiet")]).await.0, 200);
    // Requests without the header share one bucket of their own.
    assert_eq!(get_head(&weir, &[]).await.0, 200);
    assert_eq!(a.hits(), 4);
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let a = Backend::named("a").start().await;

    // 127.0.0.1 is a trusted proxy: each forwarded address is its own client.
    let trusted = Weir::start(&limited("client_ip", "trusted_proxies = [\"127.0.0.1/32\"]"), &[&a]).await;
    for _ in 0..2 {
        assert_eq!(get_head(&trusted, &[("x-forwarded-for", "192.0.2.1")]).await.0, 200);
    }
    assert_eq!(get_head(&trusted, &[("x-forwarded-for", "192.0.2.1")]).await.0, 429);
    assert_eq!(get_head(&trusted, &[("x-forwarded-for", "192.0.2.2")]).await.0, 200);
    // A forged left-most entry does not help: the right-most untrusted one counts.
    assert_eq!(get_head(&trusted, &[("x-forwarded-for", "198.51.100.7, 192.0.2.1")]).await.0, 429);

    // Not trusted: the header is ignored and every request is 127.0.0.1's.
    let untrusted = Weir::start(&limited("client_ip", ""), &[&a]).await;
    assert_eq!(get_head(&untrusted, &[("x-forwarded-for", "192.0.2.1")]).await.0, 200);
    assert_eq!(get_head(&untrusted, &[("x-forwarded-for", "192.0.2.2")]).await.0, 200);
    assert_eq!(get_head(&untrusted, &[("x-forwarded-for", "192.0.2.3")]).await.0, 429);
}

fn queued(queue_size: usize, queue_timeout: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "slow"
[upstreams.slow]
servers = [{{ address = "{{a}}" }}]
max_in_flight = 1
queue_size = {queue_size}
queue_timeout = "{queue_timeout}"
"#
    )
}

#[tokio::test]
async fn max_in_flight_queues_then_refuses_the_overflow() {
    let a = Backend::named("a").delay(Duration::from_millis(300)).start().await;
    let weir = Weir::start(&queued(1, "5s"), &[&a]).await;
    let first = tokio::spawn({
        let url = weir.url("/");
        async move { crate::support::get(&url).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn({
        let url = weir.url("/");
        async move { crate::support::get(&url).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One in flight, one queued: the queue is full, so the third is refused at once.
    let started = Instant::now();
    assert_eq!(get_head(&weir, &[]).await.0, 503);
    assert!(started.elapsed() < Duration::from_millis(200), "{:?}", started.elapsed());
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200, "the queued request waited its turn");
    assert_eq!(a.hits(), 2);
    let metrics = weir.metrics().await;
    assert!(metrics.contains("weir_upstream_queue_wait_seconds_count{upstream=\"slow\"} 1"), "{metrics}");
    assert!(metrics.contains("weir_upstream_queue_depth{upstream=\"slow\"} 0"), "{metrics}");
}

#[tokio::test]
async fn a_queued_request_times_out_with_503() {
    let a = Backend::named("a").delay(Duration::from_millis(600)).start().await;
    let weir = Weir::start(&queued(4, "100ms"), &[&a]).await;
    let first = tokio::spawn({
        let url = weir.url("/");
        async move { crate::support::get(&url).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert_eq!(get_head(&weir, &[]).await.0, 503);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(450), "{waited:?}");
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(a.hits(), 1);
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

/// Reads one response from `stream`, up to the backend's body `a`.
async fn read_response(stream: &mut TcpStream) -> Result<(), std::io::Error> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\na") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// One listener with `max_connections = max`, in front of backend `a`.
fn limited_to(max: usize) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
max_connections = {max}
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{{ address = "{{a}}" }}]
"#
    )
}

#[tokio::test]
async fn max_connections_holds_further_clients_in_the_backlog() {
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&limited_to(1), &[&a]).await;
    let mut first = TcpStream::connect(weir.addr).await.unwrap();
    first.write_all(GET).await.unwrap();
    read_response(&mut first).await.unwrap();

    // The kernel completes the handshake, but weir does not accept while `first` is open.
    let mut second = TcpStream::connect(weir.addr).await.unwrap();
    second.write_all(GET).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(300), read_response(&mut second)).await;
    assert!(waiting.is_err(), "a second connection was served past max_connections");

    drop(first);
    tokio::time::timeout(Duration::from_secs(2), read_response(&mut second))
        .await
        .expect("the waiting connection was not served once the first closed")
        .unwrap();
    assert_eq!(a.hits(), 2);
}

/// Clients queued together are accepted in one turn of the accept loop, and each
/// still takes a `max_connections` place first: of three arriving at once with a
/// limit of two, the third waits until a place frees.
#[tokio::test]
async fn a_burst_of_clients_is_held_to_max_connections() {
    let a = Backend::named("a").start().await;
    let weir = Weir::start(&limited_to(2), &[&a]).await;
    let (c1, c2, c3) = tokio::join!(
        TcpStream::connect(weir.addr),
        TcpStream::connect(weir.addr),
        TcpStream::connect(weir.addr)
    );
    let mut clients = [c1.unwrap(), c2.unwrap(), c3.unwrap()];
    for client in &mut clients {
        client.write_all(GET).await.unwrap();
    }
    let [mut c1, mut c2, mut c3] = clients;
    let mut answered = 0;
    for client in [&mut c1, &mut c2, &mut c3] {
        if tokio::time::timeout(Duration::from_millis(300), read_response(client)).await.is_ok() {
            answered += 1;
        }
    }
    assert_eq!(answered, 2, "clients served at once past max_connections = 2");
    // Both served ones close (keep-alive holds their places until then): the third
    // is served.
    let served = a.hits();
    drop((c1, c2));
    tokio::time::timeout(Duration::from_secs(2), async {
        while a.hits() == served {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the waiting client was not served once places freed");
    drop(c3);
}

/// `client_ip` keys cover the client's network, not its single address: two IPv6
/// clients in one /64 (the default `ipv6_prefix`) share a bucket, another /64 has its
/// own, and IPv4 clients are still one per address. With `ipv6_prefix = 48` the
/// neighbouring /64 is the same client too.
#[tokio::test]
async fn ipv6_clients_share_a_bucket_per_64_by_default() {
    let a = Backend::named("a").start().await;
    let trusted = "trusted_proxies = [\"127.0.0.1/32\"]";
    let weir = Weir::start(&limited("client_ip", trusted), &[&a]).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(get_head(&weir, &from("2001:db8:1:2::1")).await.0, 200);
    assert_eq!(get_head(&weir, &from("2001:db8:1:2::1")).await.0, 200);
    // Another address of the same /64: the same, spent bucket.
    assert_eq!(get_head(&weir, &from("2001:db8:1:2:8000::77")).await.0, 429);
    // The next /64 is another client.
    assert_eq!(get_head(&weir, &from("2001:db8:1:3::1")).await.0, 200);
    // IPv4 clients are one per address (ipv4_prefix 32).
    for _ in 0..2 {
        assert_eq!(get_head(&weir, &from("192.0.2.1")).await.0, 200);
    }
    assert_eq!(get_head(&weir, &from("192.0.2.2")).await.0, 200);

    let config = limited("client_ip", trusted).replace("burst = 2", "burst = 2\nipv6_prefix = 48");
    let weir = Weir::start(&config, &[&a]).await;
    assert_eq!(get_head(&weir, &from("2001:db8:1:2::1")).await.0, 200);
    assert_eq!(get_head(&weir, &from("2001:db8:1:3::1")).await.0, 200);
    assert_eq!(get_head(&weir, &from("2001:db8:1:ffff::1")).await.0, 429);
    assert_eq!(get_head(&weir, &from("2001:db8:2::1")).await.0, 200);
}
