//! Header handling end to end (SPEC "Proxy semantics"): `X-Forwarded-For` appended,
//! `X-Forwarded-Proto` and `X-Forwarded-Host` set, `Host` passed through, hop-by-hop
//! headers (and those `Connection` names) dropped in both directions, and an h2c
//! request forwarded with `Host` taken from `:authority`.

use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{send, Backend, Weir};

const ONE_ROUTE: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{ address = "{app}" }]
"#;

/// The hop-by-hop headers of RFC 9110 §7.6.1 and the legacy ones proxies also drop.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "te", "upgrade", "proxy-connection", "transfer-encoding"];

fn assert_no_hop_by_hop(headers: &HeaderMap, side: &str) {
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(*name), "{side} still has `{name}`: {headers:?}");
    }
}

/// Writes `request` on a fresh connection and reads until the server closes it.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("weir did not close a `Connection: close` exchange")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn forwarded_headers_are_set_and_host_is_kept() {
    let app = Backend::named("app").start().await;
    let weir = Weir::start(ONE_ROUTE, &[&app]).await;
    let req = Request::builder()
        .uri(weir.url("/where?x=1"))
        .header("host", "shop.example.test:8080")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.test")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"app"[..]));

    let seen = app.seen();
    let h = &seen[0].headers;
    assert_eq!(seen[0].uri, "/where?x=1");
    assert_eq!(h["host"], "shop.example.test:8080", "Host is passed through unchanged");
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1, "{h:?}");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "the client's address is appended");
    // weir knows the scheme and host it was reached by; what the client claimed is replaced.
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.test:8080");
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let app = Backend::named("app").start().await;
    let weir = Weir::start(ONE_ROUTE, &[&app]).await;
    let response = raw_exchange(
        weir.addr,
        "GET /hop HTTP/1.1\r\n\
         Host: app.test\r\n\
         Connection: close, X-Secret, X-Forwarded-For\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: gzip\r\n\
         Upgrade: example/1\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-Secret: do-not-forward\r\n\
         X-Forwarded-For: 198.51.100.1\r\n\
         X-Kept: yes\r\n\
         \r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let seen = app.seen();
    let h = &seen[0].headers;
    // (`TE: trailers` alone is forwarded on purpose, for gRPC; any other TE is not.)
    assert_no_hop_by_hop(h, "the upstream request");
    assert!(!h.contains_key("x-secret"), "a header named in Connection was forwarded: {h:?}");
    // The client's X-Forwarded-For was named in Connection and so dropped, but the one
    // weir adds for this hop must survive.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h:?}");
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h["host"], "app.test");
}

/// A backend that answers every request with `response`, verbatim.
async fn raw_backend(response: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
                // Keep the connection open, as a keep-alive server would.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_forwarded() {
    let addr = raw_backend(
        "HTTP/1.1 200 OK\r\n\
         Content-Length: 5\r\n\
         Connection: X-Resp-Secret\r\n\
         X-Resp-Secret: do-not-forward\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         Proxy-Connection: keep-alive\r\n\
         Upgrade: example/1\r\n\
         X-Kept: yes\r\n\
         \r\n\
         hello",
    )
    .await;
    let text = ONE_ROUTE.replace("{app}", &addr.to_string());
    let weir = Weir::start(&text, &[]).await;
    let (status, headers, body) =
        send(Request::builder().uri(weir.url("/")).body(Full::default()).unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_no_hop_by_hop(&headers, "the client response");
    assert!(!headers.contains_key("x-resp-secret"), "{headers:?}");
    assert_eq!(headers["x-kept"], "yes");
}

#[tokio::test]
async fn h2c_request_is_forwarded_with_host_from_authority() {
    let app = Backend::named("app").start().await;
    let weir = Weir::start(ONE_ROUTE, &[&app]).await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://h2.example.test/over/h2?q=1")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::<bytes::Bytes>::default())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"app");

    let seen = app.seen();
    let h = &seen[0].headers;
    assert_eq!(seen[0].uri, "/over/h2?q=1", "the upstream gets origin form");
    assert_eq!(h["host"], "h2.example.test");
    assert_eq!(h["x-forwarded-host"], "h2.example.test");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}
