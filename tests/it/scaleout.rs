//! Several weir instances as one: a rate limit shared through Redis (and what happens
//! when Redis goes away), DNS discovery following a local DNS server, and two weir
//! processes on one port with `reuse_port`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::dns::{answers_of, Dns};
use crate::support::{get, metric, Backend, Weir};

/// A `redis-server` on a free loopback port, persistence off, killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// `None` (with a note) when redis-server is not installed.
    async fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            println!("note: redis-server is not installed (scripts/test.sh installs it); skipping");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Some(Redis::start_on(port).await)
    }

    /// A fresh redis-server (empty, no scripts loaded) on `port`.
    async fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child: Some(child), port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !redis.answers_ping().await {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis
    }

    async fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await else { return false };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").await.is_ok()
            && stream.read_exact(&mut reply).await.is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn shared_limit(store: &str, rate: u32, burst: u32, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
rate_limit = "shared"
[upstreams.app]
servers = [{{ address = "{{a}}" }}]
[rate_limits.shared]
key = "global"
rate = {rate}
burst = {burst}
store = "{store}"
{extra}
"#
    )
}

/// Two instances sharing one Redis admit the limit's rate in total, not twice it;
/// then Redis dies and both keep serving on their local buckets, counting the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_limit_through_redis_and_fail_open_without_it() {
    let Some(mut redis) = Redis::start().await else { return };
    let a = Backend::named("a").start().await;
    let (rate, burst) = (100.0, 10.0);
    // A generous store timeout: on a loaded machine a 50ms round trip can time out,
    // and a fallback to the local bucket would admit more than the shared limit.
    let config = shared_limit(&redis.url(), 100, 10, "store_timeout = \"400ms\"");
    let one = Weir::start(&config, &[&a]).await;
    let two = Weir::start(&config, &[&a]).await;

    // Eight clients, four per instance, each sending every 2ms (about 4000 requests a
    // second at most, 40 times the rate) for two seconds.
    let admitted = Arc::new(AtomicUsize::new(0));
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..8 {
        let url = if i % 2 == 0 { one.url("/") } else { two.url("/") };
        let admitted = admitted.clone();
        clients.push(tokio::spawn(async move {
            let client = crate::support::client();
            let mut last = Instant::now();
            while started.elapsed() < window {
                last = Instant::now();
                let status = client.get(url.parse().unwrap()).await.map(|r| r.status().as_u16());
                match status {
                    Ok(200) => {
                        admitted.fetch_add(1, SeqCst);
                    }
                    Ok(429) => {}
                    other => panic!("unexpected answer {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            last
        }));
    }
    let mut last = started;
    for client in clients {
        last = last.max(client.await.unwrap());
    }
    let elapsed = (last - started).as_secs_f64();
    let expected = burst + rate * elapsed;
    let admitted = admitted.load(SeqCst) as f64;
    assert!(
        (admitted - expected).abs() <= expected * 0.05,
        "admitted {admitted} in {elapsed:.3}s, expected {expected:.0} (within 5%)"
    );
    // Both instances did admit some: the total is shared, not one instance's.
    let served = |m: &str| metric(m, "weir_requests_total{code=\"200\",upstream=\"app\"}");
    let (m1, m2) = (one.metrics().await, two.metrics().await);
    assert!(served(&m1) > 0.0 && served(&m2) > 0.0, "one instance admitted nothing");
    assert_eq!(metric(&m1, "weir_rate_limit_store_errors_total{rate_limit=\"shared\"}"), 0.0);
    assert_eq!(metric(&m2, "weir_rate_limit_store_errors_total{rate_limit=\"shared\"}"), 0.0);

    // Redis goes away: requests are still served (fail-open), decided locally.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await; // buckets refill
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get(&one.url("/")).await.0, 200);
        assert!(started.elapsed() < Duration::from_millis(500), "a check blocked on the dead store");
    }
    let errors = || async {
        let metrics = one.metrics().await;
        metric(&metrics, "weir_rate_limit_store_errors_total{rate_limit=\"shared\"}")
    };
    assert!(errors().await >= 5.0, "store errors not counted");

    // Redis comes back empty (no bucket, no script): the connection reconnects, the
    // script is loaded again on NOSCRIPT, and checks use the store again.
    let port = redis.port;
    let _redis = Redis::start_on(port).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let before = errors().await;
        assert_eq!(get(&one.url("/")).await.0, 200);
        if errors().await == before {
            break;
        }
        assert!(Instant::now() < deadline, "checks never went back to the store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `on_store_error = "deny"`: without an answer from the store, requests are refused.
#[tokio::test]
async fn a_limit_that_fails_closed_refuses_when_the_store_is_down() {
    // Nothing listens on a port that was just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a = Backend::named("a").start().await;
    let config = shared_limit(&format!("redis://127.0.0.1:{port}/0"), 100, 10, "on_store_error = \"deny\"");
    let weir = Weir::start(&config, &[&a]).await;
    assert_eq!(get(&weir.url("/")).await.0, 429);
    assert_eq!(a.hits(), 0);
    let metrics = weir.metrics().await;
    assert_eq!(metric(&metrics, "weir_rate_limit_store_errors_total{rate_limit=\"shared\"}"), 1.0);
}

/// Shared bucket names are keyed by a seed kept in Redis: both instances take it from
/// there, so they still share buckets, while the name in Redis is not the unkeyed
/// XXH3-128 of the key that anyone can compute (and aim other keys at). When the seed
/// goes missing (a flushed Redis), both instances adopt the new one and keep sharing.
#[tokio::test]
async fn shared_bucket_names_are_keyed_by_a_seed_both_instances_take_from_redis() {
    let Some(redis) = Redis::start().await else { return };
    let a = Backend::named("a").start().await;
    let config = shared_limit(&redis.url(), 1, 2, "store_timeout = \"400ms\"")
        .replace("key = \"global\"", "key = \"header:x-api-key\"")
        .replace("rate = 1\n", "rate = 0.01\n");
    let one = Weir::start(&config, &[&a]).await;
    let two = Weir::start(&config, &[&a]).await;
    let status = |weir: &Weir, key: &'static str| {
        let url = weir.url("/");
        async move {
            let req = http::Request::get(url).header("x-api-key", key).body(Default::default()).unwrap();
            crate::support::send(req).await.0.as_u16()
        }
    };
    let shares_one_bucket = || async {
        let got = [
            status(&one, "k").await,
            status(&two, "k").await,
            status(&one, "k").await,
            status(&two, "k").await,
        ];
        assert_eq!(got, [200, 200, 429, 429], "the instances do not share the bucket");
    };
    shares_one_bucket().await;
    assert_eq!(status(&two, "other").await, 200, "another key has its own bucket");

    let client = redis::Client::open(redis.url()).unwrap();
    let mut redis_conn = client.get_multiplexed_async_connection().await.unwrap();
    let bucket_names = || async {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let names: Vec<Vec<u8>> =
            redis::cmd("KEYS").arg("weir:rl:shared:*").query_async(&mut conn).await.unwrap();
        assert_eq!(names.len(), 2, "one bucket per key");
        names
    };
    let unkeyed = xxhash_rust::xxh3::xxh3_128_with_seed(b"k", 1).to_le_bytes();
    let names = bucket_names().await;
    for name in &names {
        assert_eq!(name.len(), "weir:rl:shared:".len() + 16);
        assert_ne!(name[name.len() - 16..], unkeyed, "the bucket is named by the unkeyed hash");
    }
    let seed: Option<String> =
        redis::cmd("GET").arg("weir:rl:seed").query_async(&mut redis_conn).await.unwrap();
    let seed = seed.expect("no seed in Redis");
    assert_eq!(seed.len(), 64, "{seed}");

    // The seed disappears: the instances adopt a new one and still share.
    let _: i64 = redis::cmd("DEL").arg("weir:rl:seed").query_async(&mut redis_conn).await.unwrap();
    shares_one_bucket().await;
    let new_seed: Option<String> =
        redis::cmd("GET").arg("weir:rl:seed").query_async(&mut redis_conn).await.unwrap();
    assert_ne!(new_seed.as_deref(), Some(seed.as_str()), "the seed was not replaced");
    assert!(new_seed.is_some());
    let (m1, m2) = (one.metrics().await, two.metrics().await);
    assert_eq!(metric(&m1, "weir_rate_limit_store_errors_total{rate_limit=\"shared\"}"), 0.0);
    assert_eq!(metric(&m2, "weir_rate_limit_store_errors_total{rate_limit=\"shared\"}"), 0.0);
}

/// The weir binary, for the tests that need separate processes.
const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A weir process, killed when dropped.
struct Process(Child, std::path::PathBuf);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn spawn_weir(name: &str, port: u16, backend: SocketAddr) -> Process {
    let path = std::env::temp_dir().join(format!("weir-it-{}-{name}.toml", std::process::id()));
    let text = format!(
        r#"
workers = 1
[[listeners]]
name = "web"
listen = "127.0.0.1:{port}"
reuse_port = true
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{{ address = "{backend}" }}]
"#
    );
    std::fs::write(&path, text).unwrap();
    let child = Command::new(WEIR)
        .args(["--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir");
    Process(child, path)
}

/// One request on a new connection: the body, or `None` if the connection failed.
async fn fresh_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.starts_with("HTTP/1.1 200").then(|| response.rsplit("\r\n\r\n").next().unwrap_or("").into())
}

/// Two weir processes with `reuse_port = true` listen on one port; the kernel hands
/// new connections to both, and when one stops the other takes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_port_with_reuse_port() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let first = spawn_weir("first", port, a.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh_get(port).await.is_none() {
        assert!(Instant::now() < deadline, "the first weir never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second process binds the same port: without SO_REUSEPORT this would fail.
    let mut second = spawn_weir("second", port, b.addr);
    while b.hits() == 0 {
        assert!(Instant::now() < deadline, "the second weir never got a connection");
        assert!(second.0.try_wait().unwrap().is_none(), "the second weir exited: could not bind?");
        assert!(fresh_get(port).await.is_some());
    }
    assert!(a.hits() > 0);
    drop(first);
    // Connections now all reach the second process; none fails.
    let before = b.hits();
    for _ in 0..20 {
        assert_eq!(fresh_get(port).await.as_deref(), Some("b"));
    }
    assert_eq!(b.hits(), before + 20);
}

/// A server address given as a host name with `resolve` follows the DNS answer:
/// addresses that appear become servers, vanished ones stop getting traffic, within
/// two resolve intervals, and no request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_the_dns_answer_without_failed_requests() {
    // Three backends on one port, at 127.0.0.1, .2 and .3: a name's answers differ
    // only in the address.
    let a = Backend::named("a").start().await;
    let port = a.addr.port();
    let b = Backend::named("b").at(([127, 0, 0, 2], port).into()).start().await;
    let c = Backend::named("c").at(([127, 0, 0, 3], port).into()).start().await;
    let dns = Dns::start(&[[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    let interval = Duration::from_millis(300);
    let weir = Weir::start(
        &format!(
            r#"
resolver = "{}"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
resolve = "300ms"
servers = [{{ address = "backend.test:{port}" }}]
"#,
            dns.addr
        ),
        &[],
    )
    .await;

    // Steady traffic through the whole test; every answer must be a 200.
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (url, failures, stop) = (weir.url("/"), failures.clone(), stop.clone());
        async move {
            let client = crate::support::client();
            while !stop.load(SeqCst) {
                match client.get(url.parse().unwrap()).await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.hits() == 0 || b.hits() == 0 {
        assert!(Instant::now() < deadline, "the first answers never both served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.hits(), 0);
    let metrics = weir.metrics().await;
    let label = |ip: &str| format!("weir_upstream_server_healthy{{server=\"backend.test:{port} ({ip})\"");
    assert!(metrics.contains(&label("127.0.0.1")), "{metrics}");

    // 127.0.0.1 vanishes, 127.0.0.3 appears.
    dns.set(answers_of(&[[127, 0, 0, 2], [127, 0, 0, 3]]));
    let changed = Instant::now();
    while c.hits() == 0 {
        assert!(changed.elapsed() < 2 * interval, "the pool did not follow within two intervals");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Requests already running on the old pool may still finish at `a`; then none.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (a_before, b_before, c_before) = (a.hits(), b.hits(), c.hits());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.hits(), a_before, "a vanished address still gets traffic");
    assert!(b.hits() > b_before && c.hits() > c_before, "traffic is not spread over the new answer");

    stop.store(true, SeqCst);
    traffic.await.unwrap();
    assert_eq!(failures.load(SeqCst), 0, "requests failed while the pool changed");
    let metrics = weir.metrics().await;
    assert!(!metrics.contains(&label("127.0.0.1")), "the vanished server's gauges are still exported");
    assert!(metrics.contains(&label("127.0.0.3")), "{metrics}");
}
