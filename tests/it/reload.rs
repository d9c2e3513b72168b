//! A reload never stalls traffic: the new runtime is built (names resolved, files
//! read) away from the threads that serve requests, then swapped in.

use std::time::{Duration, Instant};

use crate::support::dns::Dns;
use crate::support::{client, fill, get, Backend, Weir, WeirProcess};

fn config(dns: std::net::SocketAddr, with_slow_upstream: bool, port: u16) -> String {
    let mut toml = format!(
        r#"workers = 1
resolver = "{dns}"
[[listeners]]
name = "web"
listen = "{{port}}"
[[routes]]
path_prefix = "/"
upstream = "app"
[upstreams.app]
servers = [{{ address = "{{app}}" }}]
"#
    );
    if with_slow_upstream {
        toml.push_str(&format!(
            r#"[[routes]]
path_prefix = "/slow"
upstream = "slow"
[upstreams.slow]
resolve = "1h"
servers = [{{ address = "slow.test:{port}" }}]
"#
        ));
    }
    toml
}

/// With one worker thread and a resolver that takes 2 s to answer, requests keep
/// being answered promptly while a reload that adds a discovered upstream waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waiting_on_a_slow_resolver_does_not_stall_requests() {
    let app = Backend::named("app").start().await;
    let dns = Dns::slow(&[[127, 0, 0, 1]], Duration::from_secs(2)).await;
    let port = app.addr.port();
    let weir = WeirProcess::start(&config(dns.addr, false, port), &[&app]).await;
    let client = client();
    let url: http::Uri = weir.url("/").parse().unwrap();
    assert_eq!(client.get(url.clone()).await.unwrap().status(), 200);

    weir.reload(&config(dns.addr, true, port), &[&app]);
    // Through the 2 s the reload waits on DNS, each request is answered at once.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let sent = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(5), client.get(url.clone())).await;
        assert_eq!(response.expect("no answer within 5 s").unwrap().status(), 200);
        slowest = slowest.max(sent.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < Duration::from_millis(500), "a request waited {slowest:?} during the reload");
    assert!(answered > 20, "{answered}");
    // And the reload did land once the answer came.
    let slow: http::Uri = weir.url("/slow").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.get(slow.clone()).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the reload never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const TWO_SERVERS: &str = r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/"
upstream = "app"
[upstreams.app]
servers = [{ address = "{a}" }, { address = "{b}" }]
"#;

/// A server a reload removes leaves `/metrics` with every one of its series (they
/// piled up for the life of the process, reload after reload), while a server it
/// keeps, listed in another order, keeps counting from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_servers_series_leave_metrics_and_a_kept_servers_counts_go_on() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, fill(TWO_SERVERS, &[&a, &b])).unwrap();
    let weir = Weir::start_from_file(&path).await;
    for _ in 0..4 {
        assert_eq!(get(&weir.url("/")).await.0, 200);
    }
    let gone = format!("server=\"{}\"", b.addr);
    assert!(weir.metrics().await.contains(&gone), "b served and is exported");

    let moved = TWO_SERVERS.replace(
        r#"{ address = "{a}" }, { address = "{b}" }"#,
        r#"{ address = "{c}" }, { address = "{a}" }"#,
    );
    std::fs::write(&path, fill(&moved, &[&a, &c])).unwrap();
    weir.reloader.reload().await.unwrap();
    let text = weir.metrics().await;
    let left: Vec<&str> = text.lines().filter(|l| l.contains(&gone)).collect();
    assert!(left.is_empty(), "series of the removed server remain: {left:#?}");
    let kept =
        format!("weir_upstream_requests_total{{code=\"200\",server=\"{}\",upstream=\"app\"}} 2", a.addr);
    assert!(text.contains(&kept), "a's count goes on: {text}");
    let added = format!("weir_upstream_server_healthy{{server=\"{}\",upstream=\"app\"}} 1", c.addr);
    assert!(text.contains(&added), "the added server is exported: {text}");
}

/// With one worker thread, a scrape of thousands of servers (megabytes of text) is
/// encoded away from the thread that serves requests: a request sent while a scrape
/// runs is not held up for the scrape's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_scrape_does_not_stall_requests_with_one_worker() {
    let app = Backend::named("app").start().await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // Ports on loopback that nobody listens on: the servers are never used.
    let servers: Vec<String> = (0..5_000)
        .map(|i| format!("{{ address = \"127.0.0.{}:{}\" }}", 2 + i / 10_000, 1 + i % 10_000))
        .collect();
    let config = format!(
        r#"workers = 1
[admin]
listen = "{admin}"
[[listeners]]
name = "web"
listen = "{{port}}"
[[routes]]
path_prefix = "/big/"
upstream = "big"
[[routes]]
path_prefix = "/"
upstream = "app"
[upstreams.app]
servers = [{{ address = "{{app}}" }}]
[upstreams.big]
server_histograms = true
servers = [{}]
"#,
        servers.join(", ")
    );
    let weir = WeirProcess::start(&config, &[&app]).await;
    let client = client();
    let url: http::Uri = weir.url("/").parse().unwrap();
    assert_eq!(client.get(url.clone()).await.unwrap().status(), 200);
    let metrics = format!("http://{admin}/metrics");
    let (mut scraping, mut slowest) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        let scrape = tokio::spawn({
            let metrics = metrics.clone();
            async move {
                let started = Instant::now();
                let (status, body) = get(&metrics).await;
                assert_eq!(status, 200);
                assert!(body.len() > 1_000_000, "{} bytes", body.len());
                started.elapsed()
            }
        });
        // Requests, one after another, for as long as the scrape runs.
        while !scrape.is_finished() {
            let sent = Instant::now();
            assert_eq!(client.get(url.clone()).await.unwrap().status(), 200);
            slowest = slowest.max(sent.elapsed());
        }
        scraping += scrape.await.unwrap();
    }
    let scrape = scraping / 3;
    assert!(slowest < scrape / 2, "a request waited {slowest:?} while scrapes took {scrape:?}");
}
