//! Observability: known traffic through a real weir, then the exact counters and
//! gauges of `/metrics` (parsed strictly, and by `promtool` where installed), the
//! access log's lines, `/status`, and the shipped Grafana dashboard and alert rules.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use prometheus_parse::{LineInfo, Scrape, Value};
use tokio::net::TcpStream;

use crate::support::{dead_addr, get, send, Backend, Reply, Weir};

/// A fresh path under the temp dir.
fn temp_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("weir-{name}-{}-{nanos}", std::process::id()))
}

/// Parses the exposition, failing on any line that is not a HELP, TYPE or sample line
/// with a numeric value (`prometheus-parse` itself skips what it cannot read).
fn parse_strictly(text: &str) -> Scrape {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } => {}
            LineInfo::Type { metric_name, metric_alias, .. } => {
                typed.insert(metric_alias.unwrap_or(metric_name));
            }
            LineInfo::Sample { metric_name, value, .. } => {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric_name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(metric_name);
                assert!(typed.contains(family), "sample before its TYPE: {line}");
                let v = value.to_ascii_lowercase();
                assert!(v.parse::<f64>().is_ok() || v == "nan", "bad value: {line}");
            }
            other => panic!("malformed exposition line {line:?}: {other:?}"),
        }
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition parses")
}

/// `promtool check metrics`, where the test script installed it.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: skipping `promtool check metrics`");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the counter or gauge `name` with exactly `labels`; 0 when absent.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name} is not a counter or gauge"),
        })
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} matched {} series", found.len());
    found.first().copied().unwrap_or(0.0)
}

/// The sample count of the histogram `name` with `labels`.
fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => panic!("{name} is not a histogram"),
        })
        .unwrap_or(0.0)
}

async fn scrape(weir: &Weir) -> Scrape {
    parse_strictly(&weir.metrics().await)
}

/// Scrapes until `done` holds, within a few seconds.
async fn scrape_until(weir: &Weir, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let started = Instant::now();
    loop {
        let s = scrape(weir).await;
        if done(&s) {
            return s;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn post(url: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder().method(Method::POST).uri(url).body(Full::new(Bytes::from_static(body))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_metrics_access_log_lines_and_status() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let c = Backend::named("c").start().await;
    let d = Backend::named("d").start().await;
    // The flapping server fails its health checks until the test has seen it marked
    // down, then passes: a fixed number of failures would leave a window a slow
    // scrape on a busy machine could miss.
    let failing = Arc::new(AtomicBool::new(true));
    let seen = failing.clone();
    let flap = Backend::named("flap")
        .reply(move |_| {
            let status = if seen.load(SeqCst) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            Reply { status, body: Bytes::new(), delay: Duration::ZERO }
        })
        .start()
        .await;
    let dead = dead_addr().await;
    let log_path = temp_path("access.log");
    let config_path = temp_path("weir.toml");
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[access_log]
enabled = true
format = "json"
path = "{log}"
[[routes]]
path_prefix = "/app/"
upstream = "app"
[[routes]]
path_prefix = "/dead/"
upstream = "dead"
[[routes]]
path_prefix = "/mixed/"
upstream = "mixed"
[[routes]]
path_prefix = "/limited/"
upstream = "limited"
rate_limit = "tight"
[rate_limits.tight]
key = "global"
rate = 0.001
burst = 1
[upstreams.limited]
servers = [{{ address = "{{d}}" }}]
[upstreams.app]
servers = [{{ address = "{{a}}" }}, {{ address = "{{b}}" }}]
server_histograms = true
[upstreams.dead]
servers = [{{ address = "{dead}" }}]
[upstreams.dead.passive_health]
consecutive_failures = 0
[upstreams.mixed]
servers = [{{ address = "{dead}" }}, {{ address = "{{c}}" }}]
[upstreams.mixed.passive_health]
consecutive_failures = 0
[upstreams.flap]
servers = [{{ address = "{{flap}}" }}]
[upstreams.flap.health_check]
path = "/healthz"
interval = "100ms"
timeout = "1s"
unhealthy_threshold = 2
healthy_threshold = 1
"#,
        log = log_path.display()
    );
    std::fs::write(&config_path, crate::support::fill(&config, &[&a, &b, &c, &d, &flap])).unwrap();
    let weir = Weir::start_with_path(&config, &[&a, &b, &c, &d, &flap], Some(&config_path)).await;
    let (a_addr, b_addr, c_addr, flap_addr) =
        (a.addr.to_string(), b.addr.to_string(), c.addr.to_string(), flap.addr.to_string());
    let dead = dead.to_string();

    // 4 x 200 over two servers, with 10-byte request bodies; 3 x 404; 2 x 502; one
    // request on `mixed` that meets the dead server first and is retried on c.
    for _ in 0..4 {
        let (status, _, body) = send(post(&weir.url("/app/x"), b"0123456789")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 1);
    }
    for _ in 0..3 {
        assert_eq!(get(&weir.url("/nowhere")).await.0, StatusCode::NOT_FOUND);
    }
    for _ in 0..2 {
        assert_eq!(get(&weir.url("/dead/x")).await.0, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(get(&weir.url("/mixed/x")).await.0, StatusCode::OK);
    // A burst of one: the first request passes, the next two are limited (429).
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(get(&weir.url("/limited/x")).await.0.as_u16());
    }
    assert_eq!(codes, vec![200, 429, 429]);

    // The health flap: up (fresh), down after two failed checks, up after one pass.
    let healthy = |s: &Scrape| {
        value(s, "weir_upstream_server_healthy", &[("upstream", "flap"), ("server", &flap_addr)])
    };
    scrape_until(&weir, "flap down", |s| healthy(s) == 0.0).await;
    failing.store(false, SeqCst);
    scrape_until(&weir, "flap up again", |s| healthy(s) == 1.0).await;

    // Responses are done once every in-flight gauge is back to 0.
    let servers = [("app", &a_addr), ("app", &b_addr), ("dead", &dead), ("mixed", &dead), ("mixed", &c_addr)];
    let s = scrape_until(&weir, "in-flight back to 0", |s| {
        servers.iter().all(|(u, srv)| {
            value(s, "weir_upstream_server_in_flight", &[("upstream", u), ("server", srv)]) == 0.0
        })
    })
    .await;
    let text = weir.metrics().await;
    promtool_check(&text);

    let requests = |u: &str, code: &str| value(&s, "weir_requests_total", &[("upstream", u), ("code", code)]);
    assert_eq!(requests("app", "200"), 4.0);
    assert_eq!(requests("", "404"), 3.0);
    assert_eq!(requests("dead", "502"), 2.0);
    assert_eq!(requests("mixed", "200"), 1.0);
    assert_eq!(requests("limited", "200"), 1.0);
    assert_eq!(requests("limited", "429"), 2.0);
    assert_eq!(value(&s, "weir_rate_limited_total", &[("rate_limit", "tight")]), 2.0);
    assert_eq!(d.hits(), 1, "limited requests never reach the upstream");
    let by_server = |u: &str, srv: &str, code: &str| {
        value(&s, "weir_upstream_requests_total", &[("upstream", u), ("server", srv), ("code", code)])
    };
    assert_eq!(by_server("app", &a_addr, "200"), 2.0);
    assert_eq!(by_server("app", &b_addr, "200"), 2.0);
    assert_eq!(by_server("mixed", &c_addr, "200"), 1.0);
    assert_eq!(observations(&s, "weir_request_duration_seconds", &[("upstream", "app")]), 4.0);
    assert_eq!(observations(&s, "weir_request_duration_seconds", &[("upstream", "")]), 3.0);
    assert_eq!(
        observations(
            &s,
            "weir_upstream_request_duration_seconds",
            &[("upstream", "app"), ("server", &a_addr)]
        ),
        2.0
    );
    // Without `server_histograms`, one histogram for the upstream's servers together.
    assert_eq!(observations(&s, "weir_upstream_request_duration_seconds", &[("upstream", "mixed")]), 1.0);
    assert!(
        !s.samples.iter().any(|x| x.metric == "weir_upstream_request_duration_seconds"
            && x.labels.get("upstream") == Some("mixed")
            && x.labels.get("server").is_some()),
        "per-server histograms are opt-in"
    );
    let connect_errors =
        |u: &str| value(&s, "weir_upstream_connect_errors_total", &[("upstream", u), ("server", &dead)]);
    assert_eq!(connect_errors("dead"), 2.0);
    assert_eq!(connect_errors("mixed"), 1.0);
    assert_eq!(value(&s, "weir_upstream_retries_total", &[("upstream", "mixed")]), 1.0);
    assert_eq!(value(&s, "weir_upstream_retries_total", &[("upstream", "app")]), 0.0);
    assert_eq!(value(&s, "weir_request_bytes_total", &[("upstream", "app")]), 40.0);
    assert_eq!(value(&s, "weir_response_bytes_total", &[("upstream", "app")]), 4.0);
    assert_eq!(value(&s, "weir_response_bytes_total", &[("upstream", "mixed")]), 1.0);
    let gauge =
        |u: &str, srv: &str| value(&s, "weir_upstream_server_healthy", &[("upstream", u), ("server", srv)]);
    assert_eq!(gauge("app", &a_addr), 1.0);
    assert_eq!(gauge("dead", &dead), 1.0, "passive detection is off for `dead`");
    assert_eq!(gauge("flap", &flap_addr), 1.0);
    let flap_checks = |result: &str| {
        value(
            &s,
            "weir_health_checks_total",
            &[("upstream", "flap"), ("server", &flap_addr), ("result", result)],
        )
    };
    assert!(flap_checks("fail") >= 2.0);
    assert!(flap_checks("pass") >= 1.0);
    assert_eq!(value(&s, "weir_access_log_dropped_total", &[]), 0.0);
    assert_eq!(value(&s, "weir_config_reloads_total", &[("result", "failure")]), 0.0);
    // The process collector (Linux).
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 0.0, "process metrics missing");
    assert!(s.samples.iter().any(|x| x.metric == "process_cpu_seconds_total"));

    // Active connections per listener: an open client connection is counted while open.
    let active = |s: &Scrape| value(s, "weir_connections_active", &[("listener", "web")]);
    scrape_until(&weir, "idle client connections closed", |s| active(s) == 0.0).await;
    let held = TcpStream::connect(weir.addr).await.unwrap();
    scrape_until(&weir, "a connection counted", |s| active(s) == 1.0).await;
    drop(held);
    scrape_until(&weir, "the connection uncounted", |s| active(s) == 0.0).await;

    // The access log: one JSON line per client request, with its facts.
    let lines = read_lines_until(&log_path, 13).await;
    let by_path = |path: &str| lines.iter().filter(|l| l["path"] == path).collect::<Vec<_>>();
    let app = by_path("/app/x");
    assert_eq!(app.len(), 4);
    for line in &app {
        assert_eq!(line["method"], "POST");
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream"], "app");
        assert_eq!(line["request_bytes"], 10);
        assert_eq!(line["response_bytes"], 1);
        assert_eq!(line["retries"], 0);
        assert_eq!(line["host"], weir.addr.to_string());
        assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
    let servers: Vec<_> = app.iter().map(|l| l["server"].as_str().unwrap()).collect();
    assert_eq!(servers.iter().filter(|s| **s == a_addr).count(), 2, "{servers:?}");
    let missing = by_path("/nowhere");
    assert_eq!(missing.len(), 3);
    assert!(missing.iter().all(|l| l["status"] == 404 && l["upstream"].is_null() && l["server"].is_null()));
    assert_eq!(missing[0]["response_bytes"], "404 Not Found\n".len());
    let failed = by_path("/dead/x");
    assert!(failed
        .iter()
        .all(|l| l["status"] == 502 && l["upstream"] == "dead" && l["server"] == dead.as_str()));
    let retried = by_path("/mixed/x");
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0]["retries"], 1);
    assert_eq!(retried[0]["server"], c_addr.as_str());

    let limited = by_path("/limited/x");
    assert_eq!(limited.iter().filter(|l| l["status"] == 429).count(), 2);

    // /status: pools, servers, health, in-flight and the last minute's errors.
    let admin = weir.admin.unwrap();
    let (code, body) = get(&format!("http://{admin}/status")).await;
    assert_eq!(code, StatusCode::OK);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["window_seconds"], 60);
    let upstreams: HashMap<&str, &serde_json::Value> =
        status["upstreams"].as_array().unwrap().iter().map(|u| (u["name"].as_str().unwrap(), u)).collect();
    assert_eq!(upstreams.len(), 5);
    let app = upstreams["app"];
    assert_eq!(app["balancer"], "round_robin");
    assert_eq!(app["healthy_servers"], 2);
    let a_status = &app["servers"][0];
    assert_eq!(a_status["address"], a_addr.as_str());
    assert_eq!(a_status["weight"], 1);
    assert_eq!(a_status["backup"], false);
    assert_eq!(a_status["healthy"], true);
    assert_eq!(a_status["in_flight"], 0);
    assert_eq!(a_status["recent_requests"], 2);
    assert_eq!(a_status["recent_errors"], 0);
    let dead_status = &upstreams["dead"]["servers"][0];
    assert_eq!(dead_status["recent_requests"], 2);
    assert_eq!(dead_status["recent_error_rate"], 1.0);
    let mixed = &upstreams["mixed"]["servers"];
    assert_eq!(
        (mixed[0]["recent_requests"].clone(), mixed[0]["recent_errors"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(
        (mixed[1]["recent_requests"].clone(), mixed[1]["recent_errors"].clone()),
        (1.into(), 0.into())
    );

    // Reloads are counted by result.
    weir.reloader.reload().await.unwrap();
    std::fs::write(&config_path, "not = [valid").unwrap();
    assert!(weir.reloader.reload().await.is_err());
    let s = scrape(&weir).await;
    assert_eq!(value(&s, "weir_config_reloads_total", &[("result", "success")]), 1.0);
    assert_eq!(value(&s, "weir_config_reloads_total", &[("result", "failure")]), 1.0);

    weir.shutdown().await;
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(&config_path);
}

/// Reads the JSON access log until it has `want` lines (the writer runs on its own
/// thread), then checks there are exactly that many.
async fn read_lines_until(path: &PathBuf, want: usize) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect();
        if lines.len() >= want {
            assert_eq!(lines.len(), want, "{text}");
            return lines;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "only {} lines: {text}", lines.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_grafana_dashboard_is_valid_json_with_the_promised_panels() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/weir.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for needle in [
        "weir_requests_total",
        "histogram_quantile(0.99, sum by (upstream, le) (rate(weir_request_duration_seconds_bucket",
        "weir_upstream_request_duration_seconds_bucket",
        "weir_upstream_server_healthy",
        "weir_rate_limited_total",
        "weir_rate_limit_store_errors_total",
        "weir_connections_active",
        "weir_access_denied_total",
    ] {
        assert!(exprs.iter().any(|e| e.contains(needle)), "no panel queries {needle}");
    }
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().expect("panel id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
}
