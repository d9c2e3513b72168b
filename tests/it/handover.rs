//! Binary upgrade with nothing dropped: a second weir process takes the listening
//! sockets over from the running one (`--take-over` its `--upgrade-socket`) while
//! clients keep sending, and the old one drains and exits. Through the real binary,
//! with keep-alive clients and a loop of new connections counting every failure.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

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
    let fresh = [NewConnections::start(old.addr), NewConnections::start(old.addr)];
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Twice: the new process offers the upgrade socket in turn.
    let first = take_over(&old.config, &control);
    exits_after_draining(&mut old.child).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut first = Child(first);
    let second = Child(take_over(&old.config, &control));
    exits_after_draining(&mut first.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (ok, failed) = load.stop().await;
    let (mut answered, mut broken, mut refused) = (0, 0, 0);
    for loop_ in fresh {
        let [a, b, r] = loop_.stop().await;
        (answered, broken, refused) = (answered + a, broken + b, refused + r);
    }
    eprintln!("two hand-overs under load: {ok} keep-alive and {answered} new-connection requests answered");
    assert_eq!((failed, broken, refused), (0, 0, 0), "requests failed or connections were refused");
    assert!(ok > 200 && answered > 100, "too little load to tell: {ok} keep-alive, {answered} new");

    // The last process serves alone now, on the same port and admin port.
    let mut second = second;
    assert!(second.0.try_wait().unwrap().is_none(), "the new process exited");
    assert_eq!(get(&old.url("/after")).await.0, StatusCode::OK);
    assert_eq!(get(&format!("http://{admin}/healthz")).await.0, StatusCode::OK);
}

/// Starts weir on `config` taking over from the process at `control`, offering it
/// in turn.
fn take_over(config: &std::path::Path, control: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--config")
        .arg(config)
        .args(["--log-level", "warn"])
        .arg("--upgrade-socket")
        .arg(control)
        .arg("--take-over")
        .arg(control)
        .spawn()
        .unwrap()
}

/// Waits for a process that was taken over from to drain and exit 0 on its own.
async fn exits_after_draining(child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit after the hand-over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "the old process exited with {status}");
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

/// Reads one response (head and `Content-Length` body) and returns its head,
/// lowercased; empty when the connection ends first.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while bytes.len() < end + 4 + length {
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
                    _ => return String::new(),
                }
            }
            return head;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            _ => return String::new(),
        }
    }
}

/// On an idle keep-alive connection: a request, SIGTERM, and as soon as the port
/// refuses, another request. It is answered (with `Connection: close`), not met by
/// a connection closed under it: what a busy client sees in a hand-over's drain.
async fn answered_after_stop<S: AsyncRead + AsyncWrite + Unpin>(weir: &WeirProcess, stream: &mut S) {
    let request = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert!(read_response(stream).await.starts_with("http/1.1 200"));

    let pid = libc::pid_t::try_from(weir.child.id()).unwrap();
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(weir.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stream.write_all(request).await.unwrap();
    let head = read_response(stream).await;
    assert!(head.starts_with("http/1.1 200"), "a request right after the stop got {head:?}");
    assert!(head.contains("connection: close"), "{head}");
}

#[tokio::test]
async fn a_request_on_its_way_when_the_drain_starts_is_answered() {
    let app = Backend::named("app").start().await;
    let config = CONFIG.replace("[admin]\nlisten = \"{admin}\"\n", "");
    let weir = WeirProcess::start(&config, &[&app]).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    answered_after_stop(&weir, &mut stream).await;
}

#[tokio::test]
async fn a_request_on_its_way_when_the_drain_starts_is_answered_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("a.pem"), dir.path().join("a.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "listen = \"{{port}}\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        cert.display(),
        key.display()
    );
    let config = CONFIG.replace("[admin]\nlisten = \"{admin}\"\n", "").replace("listen = \"{port}\"\n", &tls);
    let app = Backend::named("app").start().await;
    let weir = WeirProcess::start(&config, &[&app]).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(weir.addr).await.unwrap();
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap();
    answered_after_stop(&weir, &mut stream).await;
}

/// A client accepted before the stop but silent until after it is still served: it
/// saw its connection accepted, and a reset would be a failure to it.
#[tokio::test]
async fn a_client_accepted_before_the_drain_and_silent_until_after_is_served() {
    let app = Backend::named("app").start().await;
    // Accepted at the handshake: with `defer_accept` a silent client is not accepted
    // yet, and a stop with no successor resets it (docs/operations.md, Signals).
    let config = CONFIG
        .replace("[admin]\nlisten = \"{admin}\"\n", "")
        .replace("listen = \"{port}\"\n", "listen = \"{port}\"\ndefer_accept = false\n");
    let weir = WeirProcess::start(&config, &[&app]).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let pid = libc::pid_t::try_from(weir.child.id()).unwrap();
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(weir.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let head = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 200"), "a client accepted before the stop got {head:?}");
    assert!(head.contains("connection: close"), "{head}");
}

/// A new process that fails after taking the sockets (here: another listener's port
/// is taken) exits 1, and the old one never stops serving.
#[tokio::test]
async fn a_new_process_that_fails_leaves_the_old_one_serving() {
    let app = Backend::named("app").start().await;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("upgrade.sock");
    let config = CONFIG.replace("[admin]\nlisten = \"{admin}\"\n", "");
    let old =
        WeirProcess::start_with(&config, &[&app], &[OsStr::new("--upgrade-socket"), control.as_os_str()])
            .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !control.exists() {
        assert!(Instant::now() < deadline, "the old process never made its upgrade socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "[[listeners]]\nname = \"extra\"\nlisten = \"{}\"\n\n[[routes]]",
        taken.local_addr().unwrap()
    );
    let failing = dir.path().join("failing.toml");
    std::fs::write(&failing, std::fs::read_to_string(&old.config).unwrap().replacen("[[routes]]", &extra, 1))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--config")
        .arg(&failing)
        .arg("--take-over")
        .arg(&control)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("extra"), "{stderr}");

    let load = SteadyLoad::start(&old.url("/steady"), 2, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0);
    assert!(ok > 10, "{ok}");
    let mut old = old;
    assert!(old.child.try_wait().unwrap().is_none(), "the old process stopped");
}

/// A tunnel open in the old process stays with it: it keeps echoing after the new
/// process has taken over, until the old one's `shutdown_timeout` closes it.
#[tokio::test]
async fn a_tunnel_in_the_old_process_runs_on_through_the_hand_over() {
    let ws = crate::tunnels::echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("upgrade.sock");
    let config = CONFIG
        .replace("[admin]\nlisten = \"{admin}\"\n", "")
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"2s\"")
        .replace("{app}", &ws.to_string());
    let mut old =
        WeirProcess::start_with(&config, &[], &[OsStr::new("--upgrade-socket"), control.as_os_str()]).await;
    let (mut tunnel, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", old.addr)).await.unwrap();
    assert!(crate::tunnels::echoes(&mut tunnel, "before").await);

    let _new = Child(take_over(&old.config, &control));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        assert!(
            crate::tunnels::echoes(&mut tunnel, "during").await,
            "cut {:?} into the hand-over",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New clients reach the new process meanwhile.
    let (mut fresh, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", old.addr)).await.unwrap();
    assert!(crate::tunnels::echoes(&mut fresh, "new").await);
    exits_after_draining(&mut old.child).await;
    assert!(!crate::tunnels::echoes(&mut tunnel, "after").await, "the old process's tunnel outlived it");
    assert!(crate::tunnels::echoes(&mut fresh, "still").await);
}
