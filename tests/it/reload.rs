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

/// KiB resident in `pid`'s mappings: (of the binary `binary`'s file, of anonymous
/// mappings with no access that are larger than 8 MiB). glibc reserves each arena
/// it makes beside the main heap as a 64 MiB mapping and opens it for writing as the
/// arena grows, so the second is how many such reserves there are (`count`), not RSS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mappings(pid: u32, binary: &std::path::Path) -> (u64, usize) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let binary = binary.canonicalize().unwrap();
    let (mut code, mut reserves, mut in_binary) = (0, 0, false);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = fields.first() else { continue };
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let size = u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap();
            in_binary = fields.get(5).is_some_and(|path| std::path::Path::new(path) == binary);
            if fields[1] == "---p" && fields.len() == 5 && size > 8 << 20 {
                reserves += 1;
            }
        } else if *first == "Rss:" && in_binary {
            code += fields[1].parse::<u64>().unwrap();
        }
    }
    (code, reserves)
}

/// A reload leaves no memory of its own behind: it builds in an arena a serving
/// thread owns, not one glibc makes for the blocking thread (`heap::share_arenas`),
/// and the code it ran (config parsing, the build) leaves the resident set again as
/// at start (`heap::release_code`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_leaves_no_arena_and_no_code_resident() {
    let config = |generation: u32| {
        format!(
            r#"workers = 1
[[listeners]]
name = "web"
listen = "{{port}}"
[[routes]]
path_prefix = "/gen{generation}/"
respond = {{ status = 200, body = "gen" }}
[[routes]]
path_prefix = "/"
respond = {{ status = 204 }}
"#
        )
    };
    let weir = WeirProcess::start(&config(0), &[]).await;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
    let client = client();
    for _ in 0..20 {
        client.get(weir.url("/gen0/").parse().unwrap()).await.unwrap();
    }
    let (code, _) = mappings(weir.child.id(), binary);
    for generation in 1..=2 {
        weir.reload(&config(generation), &[]);
        let url: http::Uri = weir.url(&format!("/gen{generation}/")).parse().unwrap();
        let started = Instant::now();
        while client.get(url.clone()).await.unwrap().status() != 200 {
            assert!(started.elapsed() < Duration::from_secs(10), "the reload never took effect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The code pages are released once the old runtime is freed, after the swap.
    let started = Instant::now();
    let (mut after, mut reserves) = mappings(weir.child.id(), binary);
    while after > code + 256 && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (after, reserves) = mappings(weir.child.id(), binary);
    }
    assert!(
        after <= code + 256 && reserves == 0,
        "code resident: {code} KiB before the reloads, {after} KiB after; \
         glibc arenas besides the main heap: {reserves}"
    );
}
