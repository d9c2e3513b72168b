//! Binary upgrade with nothing dropped: a second weir process takes the listening
//! sockets over from the running one (`--take-over` its `--upgrade-socket`) while
//! clients keep sending, and the old one drains and exits. Through the real binary,
//! with keep-alive clients and a loop of new connections counting every failure.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{get, Backend, SteadyLoad, WeirProcess};

const CONFIG: &str = r#"
shutdown_timeout = "5s"

[admin]
listen = "{admin}"

[[listeners]]
name = "web"
listen = "{port}"

[[routes]]
upstream = "app"

[upstreams.app]
servers = [{ address = "{app}" }]
"#;

/// A loop of one-request connections until stopped: (answered 200, failed, refused).
struct NewConnections {
    running: Arc<AtomicBool>,
    counts: Arc<[AtomicUsize; 3]>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NewConnections {
    fn start(addr: std::net::SocketAddr) -> NewConnections {
        let running = Arc::new(AtomicBool::new(true));
        let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (r, c, f) = (running.clone(), counts.clone(), failures.clone());
        let task = tokio::spawn(async move {
            while r.load(SeqCst) {
                let mut stream = match TcpStream::connect(addr).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        c[2].fetch_add(1, SeqCst);
                        f.lock().unwrap().push(format!("connect: {e}"));
                        continue;
                    }
                };
                let request = b"GET /new HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
                let mut reply = Vec::new();
                let exchange = async {
                    stream.write_all(request).await?;
                    stream.read_to_end(&mut reply).await
                };
                match tokio::time::timeout(Duration::from_secs(10), exchange).await {
                    Ok(Ok(_)) if reply.starts_with(b"HTTP/1.1 200") => c[0].fetch_add(1, SeqCst),
                    other => {
                        let head = String::from_utf8_lossy(&reply[..reply.len().min(40)]).into_owned();
                        f.lock().unwrap().push(format!("{other:?}: {head:?}"));
                        c[1].fetch_add(1, SeqCst)
                    }
                };
            }
        });
        NewConnections { running, counts, failures, task }
    }

    async fn stop(self) -> [usize; 3] {
        self.running.store(false, SeqCst);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap();
        if !failures.is_empty() {
            eprintln!("new connection failures: {failures:?}");
        }
        [0, 1, 2].map(|i| self.counts[i].load(SeqCst))
    }
}

/// Kills the new process if the test fails before it is reaped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_new_process_takes_the_sockets_over_under_load_with_nothing_dropped() {
    let app = Backend::named("app").start().await;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("upgrade.sock");
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = CONFIG.replace("{admin}", &admin.to_string());
    let mut old =
        WeirProcess::start_with(&config, &[&app], &[OsStr::new("--upgrade-socket"), control.as_os_str()])
            .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !control.exists() {
        assert!(Instant::now() < deadline, "the old process never made its upgrade socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let load = SteadyLoad::start(&old.url("/steady"), 4, Duration::from_millis(2));
    let fresh = NewConnections::start(old.addr);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--config")
        .arg(&old.config)
        .args(["--log-level", "warn"])
        .arg("--upgrade-socket")
        .arg(&control)
        .arg("--take-over")
        .arg(&control)
        .spawn()
        .unwrap();
    let mut new = Child(new);

    // The old process drains and exits on its own, with success.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit after the hand-over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "the old process exited with {status}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (ok, failed) = load.stop().await;
    let [answered, broken, refused] = fresh.stop().await;
    eprintln!("hand-over under load: {ok} keep-alive and {answered} new-connection requests answered");
    assert_eq!((failed, broken, refused), (0, 0, 0), "requests failed or connections were refused");
    assert!(ok > 100 && answered > 50, "too little load to tell: {ok} keep-alive, {answered} new");

    // The new process serves alone now, on the same port and admin port, and can
    // be taken over in turn.
    assert!(new.0.try_wait().unwrap().is_none(), "the new process exited");
    assert_eq!(get(&old.url("/after")).await.0, StatusCode::OK);
    assert_eq!(get(&format!("http://{admin}/healthz")).await.0, StatusCode::OK);
    assert!(control.exists(), "the new process offers the upgrade socket");
}

#[tokio::test]
async fn a_take_over_from_nothing_fails_and_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nrespond = { status = 200 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--config")
        .arg(&config)
        .arg("--take-over")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nobody.sock"), "{stderr}");
}
