//! Health: active checks, passive ejection, retries, backups, panic mode.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::{dead_addr, get, send, Backend, Reply, SteadyLoad, Weir};

const LISTEN: &str = r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
"#;

/// Waits until the `weir_upstream_server_healthy` gauge of `server` reads `want`;
/// returns how long that took.
async fn until_health(weir: &Weir, server: SocketAddr, want: u8, limit: Duration) -> Duration {
    let started = Instant::now();
    let needle = format!("weir_upstream_server_healthy{{server=\"{server}\",upstream=\"app\"}} {want}");
    while started.elapsed() < limit {
        if weir.metrics().await.contains(&needle) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{server} did not become {want} within {limit:?}");
}

/// Requests that reached `backend`, not counting health checks.
fn traffic(backend: &Backend) -> usize {
    backend.seen().iter().filter(|s| s.uri != "/healthz").count()
}

/// A backend that accepts connections, reads the request and closes without an
/// answer: a connection that drops before response headers. Counts attempts.
async fn dropper() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    c.fetch_add(1, SeqCst);
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_costs_no_client_requests_and_returns_when_restarted() {
    let a = Backend::named("a").start().await;
    let mut b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let b_addr = b.addr;
    let weir = Weir::start(
        &format!(
            r#"{LISTEN}
[upstreams.app]
servers = [{{ address = "{{a}}" }}, {{ address = "{{b}}" }}, {{ address = "{{c}}" }}]
[upstreams.app.health_check]
path = "/healthz"
interval = "200ms"
timeout = "100ms"
healthy_threshold = 2
unhealthy_threshold = 2
"#
        ),
        &[&a, &b, &c],
    )
    .await;

    let load = SteadyLoad::start(&weir.url("/"), 4, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(traffic(&b) > 0);
    b.kill();
    // Down within unhealthy_threshold x interval, plus one interval of jitter and slack.
    let took = until_health(&weir, b_addr, 0, Duration::from_secs(2)).await;
    assert!(took <= Duration::from_millis(700), "marked down after {took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let b2 = Backend::named("b").at(b_addr).start().await;
    let took = until_health(&weir, b_addr, 1, Duration::from_secs(2)).await;
    assert!(took <= Duration::from_millis(800), "marked up after {took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert!(ok > 100);
    assert!(traffic(&b2) > 0, "the restarted server takes traffic again");
}

#[tokio::test]
async fn backup_takes_traffic_only_while_no_primary_is_healthy() {
    let mut a = Backend::named("a").start().await;
    let backup = Backend::named("backup").start().await;
    let a_addr = a.addr;
    let weir = Weir::start(
        &format!(
            r#"{LISTEN}
[upstreams.app]
servers = [{{ address = "{{a}}" }}, {{ address = "{{backup}}", backup = true }}]
[upstreams.app.health_check]
path = "/healthz"
interval = "100ms"
timeout = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1
"#
        ),
        &[&a, &backup],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(get(&weir.url("/")).await.1, "a");
    }
    assert_eq!(traffic(&backup), 0);
    a.kill();
    until_health(&weir, a_addr, 0, Duration::from_secs(2)).await;
    for _ in 0..10 {
        assert_eq!(get(&weir.url("/")).await, (StatusCode::OK, "backup".to_string()));
    }
    let _a = Backend::named("a").at(a_addr).start().await;
    until_health(&weir, a_addr, 1, Duration::from_secs(2)).await;
    let before = traffic(&backup);
    for _ in 0..10 {
        assert_eq!(get(&weir.url("/")).await.1, "a");
    }
    assert_eq!(traffic(&backup), before);
}

#[tokio::test]
async fn all_down_answers_503_at_once() {
    let dead = dead_addr().await;
    let slow = Backend::named("slow")
        .reply(|req| Reply {
            status: if req.uri().path() == "/healthz" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            },
            body: Bytes::from_static(b"slow"),
            delay: Duration::from_secs(5),
        })
        .start()
        .await;
    let weir = Weir::start(
        &format!(
            r#"{LISTEN}
[upstreams.app]
request_timeout = "10s"
servers = [{{ address = "{dead}" }}, {{ address = "{{slow}}" }}]
[upstreams.app.health_check]
path = "/healthz"
interval = "50ms"
timeout = "20ms"
unhealthy_threshold = 1
"#
        ),
        &[&slow],
    )
    .await;
    until_health(&weir, dead, 0, Duration::from_secs(2)).await;
    until_health(&weir, slow.addr, 0, Duration::from_secs(2)).await;
    let started = Instant::now();
    let (status, _) = get(&weir.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(50), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn passive_ejection_without_active_checks_and_readmission() {
    let dead = dead_addr().await;
    let live = Backend::named("live").start().await;
    let weir = Weir::start(
        &format!(
            r#"{LISTEN}
[upstreams.app]
servers = [{{ address = "{dead}" }}, {{ address = "{{live}}" }}]
[upstreams.app.passive_health]
consecutive_failures = 2
ejection_time = "1s"
max_ejection_time = "2s"
"#
        ),
        &[&live],
    )
    .await;
    // Refused connections are skipped: clients never see them.
    for _ in 0..6 {
        assert_eq!(get(&weir.url("/")).await, (StatusCode::OK, "live".to_string()));
    }
    // Generous bounds: a loaded machine must not read as a wrong ejection time.
    let out = until_health(&weir, dead, 0, Duration::from_millis(500)).await;
    let back = until_health(&weir, dead, 1, Duration::from_secs(3)).await;
    assert!(out + back >= Duration::from_millis(500), "readmitted after {back:?}");
    let metrics = weir.metrics().await;
    let connect_errors =
        format!("weir_upstream_connect_errors_total{{server=\"{dead}\",upstream=\"app\"}} 2");
    assert!(metrics.contains(&connect_errors), "{metrics}");
}

#[tokio::test]
async fn idempotent_requests_are_retried_after_a_dropped_connection_but_bodies_are_not() {
    let (drop_addr, attempts) = dropper().await;
    let live = Backend::named("live").start().await;
    let weir = Weir::start(
        &format!(
            r#"{LISTEN}
[upstreams.app]
servers = [{{ address = "{drop_addr}" }}, {{ address = "{{live}}" }}]
[upstreams.app.passive_health]
consecutive_failures = 0
"#
        ),
        &[&live],
    )
    .await;
    for _ in 0..6 {
        assert_eq!(get(&weir.url("/")).await, (StatusCode::OK, "live".to_string()));
    }
    // Round-robin advances on retries too, so with two servers every GET starts on
    // the dropper (as in nginx) and is replayed on the live server.
    assert_eq!(attempts.load(SeqCst), 6);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = Request::post(weir.url("/")).body(Full::new(Bytes::from_static(b"payload"))).unwrap();
        statuses.push(send(req).await.0.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 502, 502], "a POST whose connection dropped is not replayed");
}

#[tokio::test]
async fn the_retry_budget_bounds_retries_when_everything_fails() {
    let (a, a_count) = dropper().await;
    let (b, b_count) = dropper().await;
    let weir = Weir::start(
        &format!(
            r#"{LISTEN}
[upstreams.app]
retry_budget = 0.0
servers = [{{ address = "{a}" }}, {{ address = "{b}" }}]
[upstreams.app.passive_health]
consecutive_failures = 0
"#
        ),
        &[],
    )
    .await;
    for _ in 0..30 {
        assert_eq!(get(&weir.url("/")).await.0, StatusCode::BAD_GATEWAY);
    }
    // 30 first tries, and retries only from the budget's floor of 10.
    assert_eq!(a_count.load(SeqCst) + b_count.load(SeqCst), 40);
}

#[tokio::test]
async fn panic_threshold_ignores_health_when_too_few_servers_are_up() {
    let failing_checks = |name: &'static str| {
        Backend::named(name).reply(move |req| Reply {
            status: if req.uri().path() == "/healthz" {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            },
            body: Bytes::from(name),
            delay: Duration::ZERO,
        })
    };
    let a = failing_checks("a").start().await;
    let b = failing_checks("b").start().await;
    let config = |panic: &str| {
        format!(
            r#"{LISTEN}
[upstreams.app]
{panic}
servers = [{{ address = "{{a}}" }}, {{ address = "{{b}}" }}]
[upstreams.app.health_check]
path = "/healthz"
interval = "50ms"
unhealthy_threshold = 1
"#
        )
    };
    let panicking = Weir::start(&config("min_healthy_percent = 50"), &[&a, &b]).await;
    let strict = Weir::start(&config(""), &[&a, &b]).await;
    for weir in [&panicking, &strict] {
        until_health(weir, a.addr, 0, Duration::from_secs(2)).await;
        until_health(weir, b.addr, 0, Duration::from_secs(2)).await;
    }
    assert_eq!(get(&panicking.url("/")).await.0, StatusCode::OK);
    assert_eq!(get(&strict.url("/")).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

/// A backend that answers `/slow` after 300 ms and anything else at once.
async fn slow_on_path(name: &'static str) -> Backend {
    Backend::named(name)
        .reply(move |req| Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(name.as_bytes()),
            delay: if req.uri().path() == "/slow" { Duration::from_millis(300) } else { Duration::ZERO },
        })
        .start()
        .await
}

/// A server killed while it holds many requests fails them all in one instant;
/// every one of those GETs is retried on the other server (the retry budget's
/// reserve covers the burst), so no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_many_concurrent_requests_costs_none_of_them() {
    let a = slow_on_path("a").await;
    let mut b = slow_on_path("b").await;
    let config = format!(
        "{LISTEN}\n[upstreams.app]\nservers = [{{ address = \"{{a}}\" }}, {{ address = \"{{b}}\" }}]\n"
    );
    let weir = Weir::start(&config, &[&a, &b]).await;
    // Ordinary traffic first: the budget's reserve grows with it.
    for _ in 0..200 {
        assert_eq!(get(&weir.url("/")).await.0, StatusCode::OK);
    }
    let requests: Vec<_> = (0..40)
        .map(|_| {
            let url = weir.url("/slow");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // Every request is in flight, about half of them on b.
    while traffic(&b) < 100 + 15 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.kill();
    let mut failed = Vec::new();
    for request in requests {
        let (status, body) = request.await.unwrap();
        if status != StatusCode::OK {
            failed.push((status, body));
        }
    }
    assert!(failed.is_empty(), "{} of 40 requests failed: {failed:?}", failed.len());
}
