//! The real `weir` binary: `--version`, `--check` on good and bad configs (bad ones
//! exit 1 naming file:line:column and the key), and graceful shutdown on SIGTERM
//! (stop accepting, finish the in-flight request while the admin endpoints still
//! answer, exit 0), and reload on SIGHUP.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::{client, get, Backend, WeirProcess};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Writes `text` to a fresh file under the temp dir, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(text: &str) -> TempConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("weir-it-{}-{}.toml", std::process::id(), NEXT.fetch_add(1, SeqCst));
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).unwrap();
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn weir(args: &[&str]) -> Output {
    Command::new(WEIR).args(args).env_remove("RUST_LOG").output().expect("run the weir binary")
}

const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"

[[routes]]
upstream = "api"

[upstreams.api]
connect_timeout = "1s"
servers = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002", weight = 3 }]
"#;

#[test]
fn version_prints_the_crate_version() {
    let out = weir(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("weir {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_a_good_config_with_a_summary() {
    let config = TempConfig::new(GOOD);
    let out = weir(&["--config", config.0.to_str().unwrap(), "--check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(": ok"), "{stdout}");
    assert!(stdout.contains("listener web on 127.0.0.1:8080"), "{stdout}");
    assert!(stdout.contains("upstream api (round_robin, 2 servers)"), "{stdout}");
}

/// 1-based line and column of the first `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).unwrap_or_else(|| panic!("`{needle}` not in the config"));
    let before = &text[..offset];
    (before.matches('\n').count() + 1, offset - before.rfind('\n').map_or(0, |i| i + 1) + 1)
}

#[test]
fn check_refuses_bad_configs_naming_file_line_column_and_key() {
    // (what to change, what the error must point at, the key it must name)
    let cases = [
        (("name = \"web\"", "name = \"web\"\nlisten_on = 1"), "listen_on", "listeners[0].listen_on"),
        (("upstream = \"api\"", "upstream = \"apx\""), "\"apx\"", "routes[0].upstream"),
        (("weight = 3", "weight = 0"), "0 }", "upstreams.api.servers[1].weight"),
        (
            ("connect_timeout = \"1s\"", "connect_timeout = \"1 sec\""),
            "\"1 sec\"",
            "upstreams.api.connect_timeout",
        ),
    ];
    for ((from, to), at, key) in cases {
        let text = GOOD.replace(from, to);
        let config = TempConfig::new(&text);
        let path = config.0.to_str().unwrap();
        let out = weir(&["--config", path, "--check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
        let (line, column) = position(&text, at);
        let want = format!("{path}:{line}:{column}: `{key}`");
        assert!(stderr.contains(&want), "{key}: want `{want}` in:\n{stderr}");
        assert!(out.stdout.is_empty(), "a refused config printed a summary");
    }
}

/// Values the runtime needs in a parsed form (statuses, the health check's path and
/// Host, route methods) are parsed once, as the config is read: one the runtime could
/// not use is refused at its line, not replaced by a default when the runtime is built
/// (a health check path with a space used to be checked as `/`).
#[test]
fn check_refuses_values_the_runtime_could_not_use_at_their_line() {
    let health = |line: &str| format!("{GOOD}\n[upstreams.api.health_check]\n{line}\n");
    let cases = [
        (health("path = \"/status page\""), "\"/status page\"", "upstreams.api.health_check.path"),
        (health("host = \"a\\u0001b\""), "\"a\\u0001b\"", "upstreams.api.health_check.host"),
        (
            health("expected_status = \"200-600\""),
            "\"200-600\"",
            "upstreams.api.health_check.expected_status",
        ),
        (
            GOOD.replace("connect_timeout", "retry_on = \"5xx\"\nconnect_timeout"),
            "\"5xx\"",
            "upstreams.api.retry_on",
        ),
        (
            GOOD.replace("upstream = \"api\"", "upstream = \"api\"\nmethods = [\"GET\", \"GE T\"]"),
            // The entry, not the list (where toml places it).
            "\"GE T\"",
            "routes[0].methods[1]",
        ),
    ];
    for (text, at, key) in cases {
        let config = TempConfig::new(&text);
        let path = config.0.to_str().unwrap();
        let out = weir(&["--config", path, "--check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {stderr}");
        let (line, column) = position(&text, at);
        let want = format!("{path}:{line}:{column}: `{key}`");
        assert!(stderr.contains(&want), "{key}: want `{want}` in:\n{stderr}");
    }
}

#[test]
fn missing_config_file_exits_1() {
    let out = weir(&["--config", "/nonexistent/weir.toml", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weir.toml"));
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn status_of(url: &str) -> Option<u16> {
    let response = client().get(url.parse().ok()?).await.ok()?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Some(status)
}

async fn refused(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_request_and_exits_0() {
    let slow = Backend::named("slow").delay(Duration::from_millis(1000)).start().await;
    let (port, admin) = (free_port(), free_port());
    let config = TempConfig::new(&format!(
        r#"
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{port}"
[[routes]]
upstream = "slow"
[upstreams.slow]
servers = [{{ address = "{}" }}]
"#,
        slow.addr
    ));
    let child = Command::new(WEIR)
        .args(["--config", config.0.to_str().unwrap(), "--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // Whatever happens below, do not leave the process behind.
    struct Reap(libc::pid_t);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _reap = Reap(pid);

    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&format!("http://127.0.0.1:{admin}/readyz")).await != Some(200) {
        assert!(Instant::now() < deadline, "weir never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A keep-alive connection left idle after its request: closed at once on SIGTERM.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut idle, b"GET /idle HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut idle, &mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let url = format!("http://127.0.0.1:{port}/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // The idle connection's request was the first.
    while slow.hits() < 2 {
        assert!(Instant::now() < deadline, "the slow request never reached the backend");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    // New connections are refused while the slow request is still being served.
    let stop_deadline = Instant::now() + Duration::from_millis(500);
    while !refused(port).await {
        assert!(Instant::now() < stop_deadline, "still accepting connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The admin endpoints keep answering through the drain: alive, but not ready.
    assert_eq!(status_of(&format!("http://127.0.0.1:{admin}/healthz")).await, Some(200));
    assert_eq!(status_of(&format!("http://127.0.0.1:{admin}/readyz")).await, Some(503));
    assert!(!in_flight.is_finished(), "the slow request ended before the drain was observed");
    let idle_closed = crate::support::raw::closed_within(&mut idle, Duration::from_millis(300)).await;
    assert!(idle_closed, "an idle keep-alive connection was kept through the drain");
    assert!(!in_flight.is_finished(), "the slow request ended before the idle connection was seen closed");

    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow"), "the in-flight request was not completed");

    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "weir did not exit 0:\n{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
    assert!(refused(port).await, "the port still accepts after exit");
}

/// SIGHUP makes the running binary read its file again: a good config takes over, a
/// bad one is refused and the last good one keeps serving. (The binary has released
/// its start-up pages by then, so this also runs the config code from pages faulted
/// back in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_refuses_a_bad_one() {
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let config = |upstream: &str| {
        format!(
            "workers = 1\n[[listeners]]\nname = \"web\"\nlisten = \"{{port}}\"\n[[routes]]\nupstream = \"u\"\n\
             [upstreams.u]\nservers = [{{ address = \"{{{upstream}}}\" }}]\n"
        )
    };
    let weir = WeirProcess::start(&config("a"), &[&a, &b]).await;
    assert_eq!(get(&weir.url("/")).await, (http::StatusCode::OK, "a".to_string()));

    weir.reload(&config("b"), &[&a, &b]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&weir.url("/")).await.1 != "b" {
        assert!(Instant::now() < deadline, "SIGHUP did not load the new config");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    weir.reload("workers = 1\n[[routes]]\nupstream = \"nowhere\"\n", &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        assert_eq!(get(&weir.url("/")).await, (http::StatusCode::OK, "b".to_string()));
    }
}
