//! TLS termination with SNI and ALPN, upstream TLS, h2 upstreams with trailers,
//! WebSocket-style upgrade tunnels, and reload under load.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use crate::support::{get, Backend, SteadyLoad, Weir};

/// A self-signed certificate for `names`, written as `<stem>.pem` / `<stem>.key`.
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> CertificateDer<'static> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), generated.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), generated.signing_key.serialize_pem()).unwrap();
    generated.cert.der().clone()
}

fn client_tls(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Writes `toml` (with `{dir}` replaced) to `dir/weir.toml` and starts weir from it.
async fn start_in(dir: &Path, toml: &str, backends: &[&Backend]) -> Weir {
    let path = dir.join("weir.toml");
    let text = crate::support::fill(&toml.replace("{dir}", &dir.display().to_string()), backends);
    std::fs::write(&path, &text).unwrap();
    Weir::start_from_file(&path).await
}

const TLS_CONFIG: &str = r#"
[[listeners]]
name = "secure"
listen = "127.0.0.1:0"
[listeners.tls]
certificates = [{ cert = "a.pem", key = "a.key" }, { cert = "b.pem", key = "b.key" }]
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{ address = "{app}" }]
"#;

#[tokio::test]
async fn sni_picks_the_certificate_by_name_and_alpn_offers_h2() {
    let dir = tempfile::tempdir().unwrap();
    let a = certificate(dir.path(), "a", &["a.test"]);
    let b = certificate(dir.path(), "b", &["*.b.test"]);
    let app = Backend::named("app").start().await;
    let weir = start_in(dir.path(), TLS_CONFIG, &[&app]).await;

    for (name, want) in [("a.test", &a), ("x.b.test", &b), ("unknown.test", &a)] {
        let connector = client_tls(&[&a, &b], &[b"h2", b"http/1.1"]);
        let tcp = TcpStream::connect(weir.addr).await.unwrap();
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        // The default certificate does not cover an unknown name, so verification of
        // that one fails by design: look at what was offered instead.
        let result = connector.connect(server_name, tcp).await;
        if name == "unknown.test" {
            assert!(result.is_err(), "a.test's certificate does not cover {name}");
            continue;
        }
        let tls = result.unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(session.peer_certificates().unwrap()[0], *want, "certificate for {name}");
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));

        // And h2 over it reaches the backend, which learns the client used https.
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{name}/")).body(Empty::new()).unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let seen = app.seen();
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    assert_eq!(seen[0].headers["host"], "a.test");
}

#[tokio::test]
async fn a_missing_certificate_is_a_config_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a", &["a.test"]);
    let text = TLS_CONFIG.replace("{app}", "127.0.0.1:1");
    let config = weir::config::parse(&text, &dir.path().join("weir.toml")).unwrap();
    let metrics = weir::metrics::Metrics::new().unwrap();
    let error = weir::runtime::Runtime::build(&config, None, &metrics).err().unwrap().to_string();
    assert!(error.contains("listeners[0].tls.certificates[1].cert"), "{error}");
    assert!(error.contains("b.pem"), "{error}");
}

#[tokio::test]
async fn curl_speaks_http2_over_https() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed: scripts/test.sh installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "a", &["a.test"]);
    certificate(dir.path(), "b", &["b.test"]);
    let app = Backend::named("app").start().await;
    let weir = start_in(dir.path(), TLS_CONFIG, &[&app]).await;
    let port = weir.addr.port();
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .arg("--cacert")
        .arg(dir.path().join("a.pem"))
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1"), &format!("https://a.test:{port}/")])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An HTTP/1.1 backend that answers upgrade requests with 101 and then echoes bytes.
async fn echo_upgrade_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = upgrade.await {
                            let mut io = TokioIo::new(upgraded);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let response = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Upgrades a connection through weir to `echo`, checks bytes come back both ways
/// and that the tunnel counts as in flight until the client leaves.
async fn tunnel_round_trip<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, weir: &Weir, echo: SocketAddr) {
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"hello"[..], b"world, both ways"] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, message);
    }
    let in_flight = format!("weir_upstream_server_in_flight{{server=\"{echo}\",upstream=\"ws\"}} 1");
    assert!(weir.metrics().await.contains(&in_flight), "the tunnel counts as in flight");
    drop(stream);
    let idle = format!("weir_upstream_server_in_flight{{server=\"{echo}\",upstream=\"ws\"}} 0");
    for _ in 0..100 {
        if weir.metrics().await.contains(&idle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the tunnel's in-flight count was not released");
}

const UPGRADE_CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
{tls}
[[routes]]
upstream = "ws"
[upstreams.ws]
servers = [{ address = "{echo}" }]
"#;

/// Plain TCP: weir's own HTTP/1.1 server makes the tunnel.
#[tokio::test]
async fn upgrade_requests_are_tunnelled_both_ways_and_count_as_in_flight() {
    let echo = echo_upgrade_backend().await;
    let config = UPGRADE_CONFIG.replace("{tls}", "").replace("{echo}", &echo.to_string());
    let weir = Weir::start(&config, &[]).await;
    tunnel_round_trip(TcpStream::connect(weir.addr).await.unwrap(), &weir, echo).await;
}

/// Over TLS, hyper's server makes it (`proxy::tunnel`).
#[tokio::test]
async fn upgrade_requests_over_tls_are_tunnelled_too() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certificate(dir.path(), "a", &["ws.test"]);
    let echo = echo_upgrade_backend().await;
    let tls = "[listeners.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]";
    let config = UPGRADE_CONFIG.replace("{tls}", tls).replace("{echo}", &echo.to_string());
    let weir = start_in(dir.path(), &config, &[]).await;
    let tcp = TcpStream::connect(weir.addr).await.unwrap();
    let connector = client_tls(&[&cert], &[b"http/1.1"]);
    let stream = connector.connect(ServerName::try_from("ws.test").unwrap(), tcp).await.unwrap();
    tunnel_round_trip(stream, &weir, echo).await;
}

/// A gRPC-like h2-only backend: answers with a body and `grpc-status` trailers.
async fn h2_backend_with_trailers() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let te = req.headers().get("te").map(|v| v.to_str().unwrap_or("").to_string());
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("x-saw-te", te.unwrap_or_default().parse().unwrap());
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                        vec![Ok(Frame::data(Bytes::from_static(b"reply"))), Ok(Frame::trailers(trailers))];
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn h2_upstreams_pass_trailers_through_end_to_end() {
    let backend = h2_backend_with_trailers().await;
    let weir = Weir::start(
        &format!(
            r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "grpc"
[upstreams.grpc]
protocol = "h2"
servers = [{{ address = "{backend}" }}]
"#
        ),
        &[],
    )
    .await;
    // Several requests: they share one multiplexed upstream connection.
    for _ in 0..3 {
        let tcp = TcpStream::connect(weir.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = Request::post(format!("http://{}/pkg.Service/Method", weir.addr))
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"request")))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers reach the client");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-saw-te"], "trailers");
        assert_eq!(collected.to_bytes(), "reply");
    }
}

#[tokio::test]
async fn upstream_tls_verifies_the_server_by_sni_and_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "backend", &["backend.test"]);
    // A TLS backend: weir terminates nothing here, it originates TLS.
    let backend_dir = dir.path().to_path_buf();
    let cert_config = weir::config::CertificateConfig {
        cert: toml::Spanned::new(0..0, "backend.pem".into()),
        key: toml::Spanned::new(0..0, "backend.key".into()),
    };
    let server_config = weir::tls::server_config(&[cert_config], &backend_dir, "test").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                count.fetch_add(1, SeqCst);
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"secret"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let config = |sni: &str, extra: &str| {
        format!(
            r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "secure"
[upstreams.secure]
tls = true
sni = "{sni}"
ca_file = "backend.pem"
servers = [{{ address = "{addr}" }}]
[upstreams.secure.passive_health]
consecutive_failures = 0
{extra}
"#
        )
    };
    let good = start_in(dir.path(), &config("backend.test", ""), &[]).await;
    assert_eq!(get(&good.url("/")).await, (StatusCode::OK, "secret".to_string()));
    assert_eq!(served.load(SeqCst), 1);
    // Active checks speak TLS too: a TLS-only server stays healthy under them.
    let checked = "[upstreams.secure.health_check]\ninterval = \"30ms\"\nunhealthy_threshold = 1";
    let with_checks = start_in(dir.path(), &config("backend.test", checked), &[]).await;
    // Checks every 30 ms: four within 5 s even on a loaded machine's debug build.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while served.load(SeqCst) < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.load(SeqCst) >= 4, "the checks reached the server over TLS");
    assert_eq!(get(&with_checks.url("/")).await, (StatusCode::OK, "secret".to_string()));
    with_checks.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = served.load(SeqCst);
    let wrong_name = start_in(dir.path(), &config("other.test", ""), &[]).await;
    assert_eq!(
        get(&wrong_name.url("/")).await.0,
        StatusCode::BAD_GATEWAY,
        "a certificate for another name is refused"
    );
    assert_eq!(served.load(SeqCst), before, "no TLS session was completed with the wrong name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request_and_keep_health() {
    let dir = tempfile::tempdir().unwrap();
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let config = |extra_route: &str| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
{extra_route}
[upstreams.app]
servers = [{{ address = "{{a}}" }}, {{ address = "{dead}" }}]
[upstreams.app.passive_health]
consecutive_failures = 1
ejection_time = "1h"
max_ejection_time = "1h"
[upstreams.other]
servers = [{{ address = "{{b}}" }}]
"#
        )
    };
    let weir = start_in(dir.path(), &config(""), &[&a, &b]).await;
    let path = dir.path().join("weir.toml");
    // Eject the dead server, then check the mark survives every reload.
    for _ in 0..4 {
        assert_eq!(get(&weir.url("/")).await.0, StatusCode::OK);
    }
    let down = format!("weir_upstream_server_healthy{{server=\"{dead}\",upstream=\"app\"}} 0");
    assert!(weir.metrics().await.contains(&down));

    let load = SteadyLoad::start(&weir.url("/"), 4, Duration::ZERO);
    let good = crate::support::fill(
        &config("[[routes]]\npath_prefix = \"/other/\"\nupstream = \"other\""),
        &[&a, &b],
    );
    let bad = good.replace("upstream = \"other\"", "upstream = \"missing\"");
    let (mut refused, mut applied) = (0, 0);
    for i in 0..20 {
        std::fs::write(&path, if i % 2 == 0 { &bad } else { &good }).unwrap();
        match weir.reloader.reload().await {
            Ok(()) => applied += 1,
            Err(e) => {
                assert!(e.to_string().contains("no upstream named `missing`"), "{e}");
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (ok, failed) = load.stop().await;
    assert_eq!((applied, refused), (10, 10));
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert!(ok > 50);
    assert_eq!(get(&weir.url("/other/x")).await, (StatusCode::OK, "b".to_string()), "the new route is live");
    let metrics = weir.metrics().await;
    assert!(metrics.contains(&down), "health survived the reloads");
    assert!(metrics.contains("weir_config_reloads_total{result=\"failure\"} 10"));
    assert!(metrics.contains("weir_config_reloads_total{result=\"success\"} 10"));
}

const TWO_LISTENERS: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
{extra}
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{ address = "{app}" }]
"#;

#[tokio::test]
async fn reload_binds_added_listeners_and_closes_removed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let app = Backend::named("app").start().await;
    let weir = start_in(dir.path(), &TWO_LISTENERS.replace("{extra}", ""), &[&app]).await;
    let path = dir.path().join("weir.toml");
    let web = weir.addr;

    let added = TWO_LISTENERS.replace("{extra}", "[[listeners]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"");
    std::fs::write(&path, crate::support::fill(&added, &[&app])).unwrap();
    weir.reloader.reload().await.unwrap();
    let extra = weir.reloader.listener_addr("extra").expect("the new listener is bound");
    assert_eq!(get(&format!("http://{extra}/")).await.1, "app");
    assert_eq!(weir.reloader.listener_addr("web"), Some(web), "an unchanged listener keeps its socket");

    let moved = added
        .replace("name = \"web\"", "name = \"gone\"")
        .replace("[[listeners]]\nname = \"gone\"\nlisten = \"127.0.0.1:0\"\n", "");
    std::fs::write(&path, crate::support::fill(&moved, &[&app])).unwrap();
    weir.reloader.reload().await.unwrap();
    assert_eq!(weir.reloader.listener_addr("web"), None);
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(web).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the removed listener's socket is closed");
    assert_eq!(get(&format!("http://{extra}/")).await.1, "app");
}

#[tokio::test]
async fn a_watched_config_file_reloads_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let a = Backend::named("a").start().await;
    let b = Backend::named("b").start().await;
    let config = |upstream: &str| {
        format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"{upstream}\"\n\
             [upstreams.a]\nservers = [{{ address = \"{{a}}\" }}]\n[upstreams.b]\nservers = [{{ address = \"{{b}}\" }}]\n"
        )
    };
    let weir = start_in(dir.path(), &config("a"), &[&a, &b]).await;
    tokio::spawn(weir.reloader.clone().watch(Duration::from_millis(20)));
    assert_eq!(get(&weir.url("/")).await.1, "a");
    // A different size, so the change shows even where mtime is coarse.
    std::fs::write(dir.path().join("weir.toml"), crate::support::fill(&config("b"), &[&a, &b]) + "\n")
        .unwrap();
    for _ in 0..100 {
        if get(&weir.url("/")).await.1 == "b" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the changed file was not reloaded");
}

/// An upgrade request that carries a body is not tunnelled; if the server still
/// answers `101`, the client gets it and then the end of the connection, never an
/// HTTP connection that reads tunnel bytes as requests.
#[tokio::test]
async fn a_101_to_an_upgrade_request_with_a_body_ends_the_connection() {
    let echo = echo_upgrade_backend().await;
    let config = UPGRADE_CONFIG.replace("{tls}", "").replace("{echo}", &echo.to_string());
    let weir = Weir::start(&config, &[]).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream
        .write_all(
            b"POST /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Content-Length: 3\r\n\r\nabc",
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(read.is_ok(), "the connection stayed open after: {reply}");
    assert!(reply.starts_with("http/1.1 101"), "{reply}");
}

/// Writes `bytes` on a TLS connection to `weir` that agreed on `alpn` (none: no ALPN
/// offered) and returns what comes back before the connection closes or goes quiet.
async fn tls_exchange(weir: &Weir, root: &CertificateDer<'static>, alpn: &[&[u8]], bytes: &[u8]) -> Vec<u8> {
    let tcp = TcpStream::connect(weir.addr).await.unwrap();
    let name = ServerName::try_from("a.test".to_string()).unwrap();
    let mut tls = client_tls(&[root], alpn).connect(name, tcp).await.unwrap();
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(agreed.as_deref(), alpn.first().copied(), "ALPN as offered");
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return out,
        }
    }
}

const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn alpn_alone_decides_the_protocol_on_tls() {
    let dir = tempfile::tempdir().unwrap();
    let root = certificate(dir.path(), "a", &["a.test"]);
    certificate(dir.path(), "b", &["b.test"]);
    let app = Backend::named("app").start().await;
    let weir = start_in(dir.path(), TLS_CONFIG, &[&app]).await;

    // h2 agreed: an invalid preface ends the connection (h2spec 3.5/2), and gets no
    // HTTP/1.1 answer, which an h2 client would read as a frame.
    let reply = tls_exchange(&weir, &root, &[b"h2"], b"INVALID CONNECTION PREFACE\r\n\r\n").await;
    assert!(!reply.starts_with(b"HTTP/1.1"), "{}", String::from_utf8_lossy(&reply));
    // A real h2 client still gets h2: the server's SETTINGS frame first.
    let reply = tls_exchange(&weir, &root, &[b"h2"], H2_PREFACE_AND_SETTINGS).await;
    assert_eq!(reply.get(3), Some(&4), "a SETTINGS frame: {reply:?}");

    // http/1.1 agreed, or no ALPN at all (as nginx): HTTP/1.1 only, so the h2 preface
    // is an HTTP/1.1 request line it refuses, never the start of an h2 connection.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let reply = tls_exchange(&weir, &root, alpn, H2_PREFACE_AND_SETTINGS).await;
        assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 "), "{alpn:?}: {reply:?}");
        let reply = tls_exchange(&weir, &root, alpn, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
        assert!(reply.starts_with(b"HTTP/1.1 200"), "{alpn:?}: {}", String::from_utf8_lossy(&reply));
    }
}

#[tokio::test]
async fn a_plain_connection_that_speaks_neither_http1_nor_h2_is_closed_unanswered() {
    let app = Backend::named("app").start().await;
    let weir = Weir::start(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"app\"\n[upstreams.app]\nservers = [{ address = \"{app}\" }]\n",
        &[&app],
    )
    .await;
    let reply = crate::support::raw::exchange(weir.addr, b"INVALID CONNECTION PREFACE\r\n\r\n").await;
    assert_eq!(reply, "", "an h2 client with a broken preface cannot read an HTTP/1.1 answer");
    let reply = crate::support::raw::exchange(weir.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
