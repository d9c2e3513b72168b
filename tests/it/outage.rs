//! What an operator sees of an outage and of routes that answer by themselves: a
//! bounded number of warnings, metrics with no series that cannot move, and local
//! answers counted apart from upstream errors. Through the real binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{fill, get, Backend};

/// The real binary logging JSON lines, which a thread collects; killed on drop.
struct Logged {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Logged {
    /// Starts weir on `toml` (`{port}`: its listener; `{admin}`: an admin address)
    /// and waits until it accepts connections.
    async fn start(toml: &str, backends: &[&Backend], admin: SocketAddr) -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port();
        let config = dir.path().join("weir.toml");
        let text =
            fill(toml, backends).replace("{port}", &addr.to_string()).replace("{admin}", &admin.to_string());
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--config")
            .arg(&config)
            .args(["--log-level", "warn", "--log-json"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let weir = Logged { child, addr, lines, _dir: dir };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return weir;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("weir did not start listening on {addr}");
    }

    /// The logged lines whose message is `message`, once 200 ms pass with no new one.
    async fn lines(&self, message: &str) -> Vec<serde_json::Value> {
        let mut seen = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.lines.lock().unwrap().len();
            if now == seen {
                break;
            }
            seen = now;
        }
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l["fields"]["message"] == message).cloned().collect()
    }
}

/// Two dead servers and 100 failing GETs: one "request failed" line and one "retrying
/// on another server" line per server, not a hundred of each; the next failure after
/// the interval logs one line that counts the 99 held back.
#[tokio::test]
async fn an_outage_logs_the_first_failure_then_one_counted_line_per_interval() {
    let (a, b) = (free_port(), free_port());
    let toml = format!(
        r#"workers = 1
[[listeners]]
name = "web"
listen = "{{port}}"
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{{ address = "{a}" }}, {{ address = "{b}" }}]
retry_budget = 1.0
[upstreams.app.passive_health]
consecutive_failures = 0
"#
    );
    let weir = Logged::start(&toml, &[], free_port()).await;
    let url = format!("http://{}/", weir.addr);
    for _ in 0..100 {
        assert_eq!(get(&url).await.0, http::StatusCode::BAD_GATEWAY);
    }
    let failed = weir.lines("request failed").await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["fields"]["held_back"], 0);
    let retries = weir.lines("retrying on another server").await;
    let mut servers: Vec<String> = retries.iter().map(|l| l["fields"]["server"].to_string()).collect();
    servers.sort();
    servers.dedup();
    // Which server a request tries first is the balancer's business: each that failed
    // first gets one line.
    assert!(
        !retries.is_empty() && servers.len() == retries.len(),
        "one line per failed server: {retries:#?}"
    );

    tokio::time::sleep(weir::logthrottle::INTERVAL).await;
    assert_eq!(get(&url).await.0, http::StatusCode::BAD_GATEWAY);
    let failed = weir.lines("request failed").await;
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert_eq!(failed[1]["fields"]["held_back"], 99, "{failed:#?}");
}

/// A route's own `503` counts in `weir_local_responses_total{route}` (and under
/// `upstream=""`, which the shipped alerts leave out).
#[tokio::test]
async fn local_answers_are_counted_apart_from_upstream_errors() {
    let app = Backend::named("app").start().await;
    let admin = free_port();
    let toml = r#"workers = 1
[admin]
listen = "{admin}"
[[listeners]]
name = "web"
listen = "{port}"
[[routes]]
path_prefix = "/down"
name = "maintenance"
respond = { status = 503, body = "back soon" }
[[routes]]
path_prefix = "/old"
redirect = { to = "/new" }
[[routes]]
path_prefix = "/"
upstream = "app"
[upstreams.app]
servers = [{ address = "{app}" }]
"#;
    let weir = Logged::start(toml, &[&app], admin).await;
    for _ in 0..3 {
        assert_eq!(get(&format!("http://{}/down", weir.addr)).await.0, 503);
    }
    assert_eq!(get(&format!("http://{}/old", weir.addr)).await.0, 302);
    assert_eq!(get(&format!("http://{}/", weir.addr)).await.0, 200);
    let metrics = get(&format!("http://{admin}/metrics")).await.1;
    let has = |line: &str| metrics.lines().any(|l| l == line);
    assert!(has(r#"weir_local_responses_total{code="503",route="maintenance"} 3"#), "{metrics}");
    // An unnamed local route is labelled with its prefix.
    assert!(has(r#"weir_local_responses_total{code="302",route="/old"} 1"#), "{metrics}");
    assert!(has(r#"weir_requests_total{code="503",upstream=""} 3"#), "{metrics}");
    assert!(has(r#"weir_requests_total{code="200",upstream="app"} 1"#), "{metrics}");
}

/// Requests that reach no upstream (no route, a local answer) leave no `upstream=""`
/// series in the families only an upstream moves.
#[tokio::test]
async fn no_upstream_only_series_for_requests_without_an_upstream() {
    let app = Backend::named("app").start().await;
    let admin = free_port();
    let toml = r#"workers = 1
[admin]
listen = "{admin}"
[[listeners]]
name = "web"
listen = "{port}"
[[routes]]
path_prefix = "/app"
upstream = "app"
[upstreams.app]
servers = [{ address = "{app}" }]
"#;
    let weir = Logged::start(toml, &[&app], admin).await;
    assert_eq!(get(&format!("http://{}/nowhere", weir.addr)).await.0, 404);
    assert_eq!(get(&format!("http://{}/app", weir.addr)).await.0, 200);
    let metrics = get(&format!("http://{admin}/metrics")).await.1;
    assert!(metrics.contains(r#"weir_requests_total{code="404",upstream=""} 1"#), "{metrics}");
    assert!(metrics.contains(r#"weir_upstream_retries_total{upstream="app"} 0"#), "{metrics}");
    for family in ["weir_upstream_retries_total", "weir_request_bytes_total", "weir_response_bytes_total"] {
        assert!(
            !metrics.contains(&format!(r#"{family}{{upstream=""}}"#)),
            "{family} has upstream=\"\":\n{metrics}"
        );
    }
}
