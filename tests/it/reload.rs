//! A reload never stalls traffic: the new runtime is built (names resolved, files
//! read) away from the threads that serve requests, then swapped in.

use std::time::{Duration, Instant};

use crate::support::dns::Dns;
use crate::support::{client, Backend, WeirProcess};

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
