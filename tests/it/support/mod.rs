//! The shared harness: real backends and a real weir on 127.0.0.1:0, and a client.
//!
//! `Backend` is a builder of small HTTP servers that count and record what reached
//! them, so a test asserts where traffic went, not just that it arrived. `Weir` runs
//! the proxy in-process from a TOML text in which `{name}` placeholders are replaced
//! by backend addresses.

#![allow(dead_code)]

pub mod dns;
pub mod raw;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

type Handler = Arc<dyn Fn(&Request<()>) -> Reply + Send + Sync>;
type HeadersFn = Arc<dyn Fn(&Request<()>) -> HeaderMap + Send + Sync>;

/// How a backend answers.
#[derive(Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub delay: Duration,
}

/// A running test backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Builds a backend.
pub struct BackendBuilder {
    name: String,
    handler: Option<Handler>,
    headers: Option<HeadersFn>,
    echo: bool,
    addr: Option<SocketAddr>,
}

impl Backend {
    /// A backend answering `200` with its name as the body.
    pub fn named(name: &str) -> BackendBuilder {
        BackendBuilder { name: name.into(), handler: None, headers: None, echo: false, addr: None }
    }

    /// Requests that reached this backend.
    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    /// Everything this backend saw, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting and closes the listener (connections already open finish).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Dies like a killed process: the listener and every open connection close.
    pub fn kill(&mut self) {
        self.stop();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl BackendBuilder {
    /// Answers each request with `f`'s reply.
    pub fn reply(mut self, f: impl Fn(&Request<()>) -> Reply + Send + Sync + 'static) -> Self {
        self.handler = Some(Arc::new(f));
        self
    }

    /// Adds `f`'s headers to each response (e.g. `Cache-Control`).
    pub fn headers(mut self, f: impl Fn(&Request<()>) -> HeaderMap + Send + Sync + 'static) -> Self {
        self.headers = Some(Arc::new(f));
        self
    }

    /// Waits `delay` before answering.
    pub fn delay(self, delay: Duration) -> Self {
        let name = self.name.clone();
        self.reply(move |_| Reply { status: StatusCode::OK, body: Bytes::from(name.clone()), delay })
    }

    /// Streams the request body back as the response body.
    pub fn echo(mut self) -> Self {
        self.echo = true;
        self
    }

    /// Listens on a given address (to restart a backend where it was).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    pub async fn start(self) -> Backend {
        let listener = TcpListener::bind(self.addr.unwrap_or(([127, 0, 0, 1], 0).into())).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let name = self.name.clone();
        let handler = self.handler.clone();
        let extra = self.headers.clone();
        let echo = self.echo;
        let (h, s) = (hits.clone(), seen.clone());
        let connections = Arc::new(Mutex::new(Vec::new()));
        let conns = connections.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                };
                let (name, handler, hits, seen) = (name.clone(), handler.clone(), h.clone(), s.clone());
                let extra = extra.clone();
                let task = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (name, handler, hits, seen) =
                            (name.clone(), handler.clone(), hits.clone(), seen.clone());
                        let extra = extra.clone();
                        async move {
                            hits.fetch_add(1, SeqCst);
                            let (parts, body) = req.into_parts();
                            let head = Request::from_parts(parts, ());
                            if echo {
                                seen.lock().unwrap().push(Seen {
                                    method: head.method().to_string(),
                                    uri: head.uri().to_string(),
                                    headers: head.headers().clone(),
                                    body_len: 0,
                                });
                                let body = http_body_util::BodyStream::new(body);
                                let body = http_body_util::StreamBody::new(body);
                                return Ok::<_, Infallible>(Response::new(http_body_util::Either::Right(
                                    body,
                                )));
                            }
                            let body_len = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                            seen.lock().unwrap().push(Seen {
                                method: head.method().to_string(),
                                uri: head.uri().to_string(),
                                headers: head.headers().clone(),
                                body_len,
                            });
                            let reply = match &handler {
                                Some(f) => f(&head),
                                None => Reply {
                                    status: StatusCode::OK,
                                    body: Bytes::from(name),
                                    delay: Duration::ZERO,
                                },
                            };
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut response =
                                Response::new(http_body_util::Either::Left(Full::new(reply.body)));
                            *response.status_mut() = reply.status;
                            if let Some(extra) = &extra {
                                response.headers_mut().extend(extra(&head));
                            }
                            Ok(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                let mut open = conns.lock().unwrap();
                open.retain(|t: &tokio::task::AbortHandle| !t.is_finished());
                open.push(task.abort_handle());
            }
        });
        Backend { addr, name: self.name, hits, seen, stop: Some(stop_tx), connections }
    }
}

/// weir running in-process.
pub struct Weir {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub reloader: weir::server::Reloader,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Weir {
    /// Starts weir from `toml`, replacing each `{name}` with that backend's address.
    pub async fn start(toml: &str, backends: &[&Backend]) -> Weir {
        Self::start_with_path(toml, backends, None).await
    }

    /// Starts weir from a config file, so reload tests can change it.
    pub async fn start_from_file(path: &std::path::Path) -> Weir {
        let config = weir::config::load(path).unwrap_or_else(|e| panic!("bad test config: {e}"));
        Self::run(config, path.to_path_buf()).await
    }

    /// Like `start`; `path` is only used in messages.
    pub async fn start_with_path(toml: &str, backends: &[&Backend], path: Option<&std::path::Path>) -> Weir {
        let text = fill(toml, backends);
        let path = path.map(std::path::Path::to_path_buf).unwrap_or_else(|| "test.toml".into());
        let config = weir::config::parse(&text, &path).unwrap_or_else(|e| panic!("bad test config: {e}"));
        Self::run(config, path).await
    }

    async fn run(config: weir::config::Config, path: std::path::PathBuf) -> Weir {
        let metrics = Arc::new(weir::metrics::Metrics::new().unwrap());
        let server = weir::server::Server::bind(&config, metrics).unwrap();
        let addrs = server.listener_addrs(&config);
        let admin = server.admin_addr();
        let reloader = server.reloader(path);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = stop_rx.await;
        }));
        Weir { addr: addrs[0], addrs, admin, reloader, stop: Some(stop_tx), done: Some(done) }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins a graceful shutdown and waits until it has drained.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let admin = self.admin.expect("this test's config has no [admin]");
        get(&format!("http://{admin}/metrics")).await.1
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Replaces `{name}` placeholders with backend addresses.
pub fn fill(toml: &str, backends: &[&Backend]) -> String {
    let by_name: HashMap<&str, String> =
        backends.iter().map(|b| (b.name.as_str(), b.addr.to_string())).collect();
    let mut text = toml.to_string();
    for (name, addr) in by_name {
        text = text.replace(&format!("{{{name}}}"), &addr);
    }
    text
}

/// Resident memory (`VmRSS`) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
    kib.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// A keep-alive HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url`: status and body as text.
pub async fn get(url: &str) -> (StatusCode, String) {
    let response = client().get(url.parse().unwrap()).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `req` and returns the status, headers and body.
pub async fn send(req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let response = client().request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

/// weir as its own process (the real binary) on a free port, from a config text with
/// `{name}` placeholders; killed when dropped.
pub struct WeirProcess {
    pub addr: SocketAddr,
    pub child: std::process::Child,
    /// The config file it was started on.
    pub config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl WeirProcess {
    /// Starts the binary on `toml`, whose first listener must say `listen = "{port}"`,
    /// and waits until it accepts connections.
    pub async fn start(toml: &str, backends: &[&Backend]) -> WeirProcess {
        WeirProcess::start_with(toml, backends, &[]).await
    }

    /// `start`, with more command-line arguments.
    pub async fn start_with(toml: &str, backends: &[&Backend], args: &[&std::ffi::OsStr]) -> WeirProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.path().join("weir.toml");
        std::fs::write(&config, fill(toml, backends).replace("{port}", &addr.to_string())).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--config")
            .arg(&config)
            .args(["--log-level", "warn"])
            .args(args)
            .spawn()
            .unwrap();
        // Owned at once, so a failed start below still kills and reaps it.
        let process = WeirProcess { addr, child, config, _dir: dir };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("weir did not start listening on {addr}");
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces its config file, filled as `start` does, and sends SIGHUP.
    pub fn reload(&self, toml: &str, backends: &[&Backend]) {
        std::fs::write(&self.config, fill(toml, backends).replace("{port}", &self.addr.to_string())).unwrap();
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child by pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Steady GET load from several keep-alive clients until `stop`, counting answers:
/// for tests that change things under traffic and then count failed requests.
pub struct SteadyLoad {
    running: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    /// What the failures were (status or error), for the assertion message.
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    /// `clients` loops of GET `url`, each pausing `pause` between requests.
    pub fn start(url: &str, clients: usize, pause: Duration) -> SteadyLoad {
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|_| {
                let (running, ok, failed) = (running.clone(), ok.clone(), failed.clone());
                let failures = failures.clone();
                let url: http::Uri = url.parse().unwrap();
                tokio::spawn(async move {
                    let client = client();
                    while running.load(SeqCst) {
                        match client.get(url.clone()).await {
                            Ok(r) if r.status() == StatusCode::OK => {
                                let _ = r.into_body().collect().await;
                                ok.fetch_add(1, SeqCst);
                            }
                            other => {
                                failed.fetch_add(1, SeqCst);
                                let what = match other {
                                    Ok(r) => format!("status {}", r.status()),
                                    Err(e) => format!("error {e:?}"),
                                };
                                failures.lock().unwrap().push(what);
                            }
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        SteadyLoad { running, ok, failed, failures, clients }
    }

    /// Stops the clients and returns (succeeded, failed).
    pub async fn stop(self) -> (usize, usize) {
        self.running.store(false, SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        let failures = self.failures.lock().unwrap();
        if !failures.is_empty() {
            eprintln!("steady load failures: {failures:?}");
        }
        (self.ok.load(SeqCst), self.failed.load(SeqCst))
    }
}

/// GET `path` on `weir` with extra request headers: status, headers and body.
pub async fn get_with(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(weir.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req.body(Full::new(Bytes::new())).unwrap()).await
}

/// The value of the sample `series` (name and exact label set) in a metrics text,
/// 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// An address on 127.0.0.1 that nothing listens on (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// One listener, one route, one upstream `b` with one server (`{b}`) and a 2 s
/// request timeout: the config of tests about what passes through.
pub const ONE_ROUTE: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
upstream = "b"

[upstreams.b]
request_timeout = "2s"
servers = [{ address = "{b}" }]
"#;
