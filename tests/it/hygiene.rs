//! What a client sends that never reaches an upstream as sent: userinfo in `Host` or
//! the target, header names with `_`, upgrades a route does not tunnel, h2 `cookie`
//! crumbs, and more header fields over h2 than HTTP/1.1 allows (issue 17 items 8-10,
//! issue 18 item 10).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use tokio::net::TcpStream;

use crate::support::raw::{exchange, statuses, Action, RawBackend, RawRequest, OK};
use crate::support::Weir;

const CONFIG: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[listeners]]
name = "legacy"
listen = "127.0.0.1:0"
underscores_in_headers = true
[[routes]]
upstream = "app"
[upstreams.app]
servers = [{ address = "{b}" }]
"#;

async fn start(backend: &RawBackend, toml: &str) -> Weir {
    Weir::start(&backend.fill(toml), &[]).await
}

/// Sends `req` over h2 with prior knowledge and returns the status.
async fn h2_status(addr: SocketAddr, req: Request<Empty<Bytes>>) -> StatusCode {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap().status()
}

fn only(requests: &[RawRequest]) -> &RawRequest {
    assert_eq!(requests.len(), 1, "{requests:?}");
    &requests[0]
}

#[tokio::test]
async fn userinfo_in_host_is_refused_and_dropped_from_absolute_form_targets() {
    let backend = RawBackend::recording().await;
    let weir = start(&backend, CONFIG).await;

    let reply = exchange(weir.addr, b"GET / HTTP/1.1\r\nHost: admin.internal@a\r\n\r\n").await;
    assert_eq!(statuses(&reply), [400], "{reply}");
    assert!(backend.requests().is_empty(), "refused before forwarding");

    let reply =
        exchange(weir.addr, b"GET http://user:pw@app.test:8080/p HTTP/1.1\r\nHost: app.test:8080\r\n\r\n")
            .await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    let seen = only(&backend.requests()).clone();
    assert_eq!(seen.line(), "GET /p HTTP/1.1");
    assert_eq!(seen.header("host"), ["app.test:8080"]);
    assert_eq!(seen.header("x-forwarded-host"), ["app.test:8080"]);
    assert!(!backend.saw("user"), "userinfo reached the upstream: {}", seen.head);
}

#[tokio::test]
async fn h2_authority_with_userinfo_is_refused() {
    let backend = RawBackend::recording().await;
    let weir = start(&backend, CONFIG).await;
    let req = Request::get("http://admin.internal@a/").body(Empty::new()).unwrap();
    assert_eq!(h2_status(weir.addr, req).await, StatusCode::BAD_REQUEST);
    let req = Request::get("http://a/").body(Empty::new()).unwrap();
    assert_eq!(h2_status(weir.addr, req).await, StatusCode::OK);
    assert_eq!(only(&backend.requests()).header("host"), ["a"]);
}

#[tokio::test]
async fn underscore_headers_are_dropped_unless_the_listener_keeps_them() {
    let backend = RawBackend::recording().await;
    let weir = start(&backend, CONFIG).await;
    let (web, legacy) = (weir.addrs[0], weir.addrs[1]);

    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 10.0.0.1\r\nX-Kept: 1\r\n\r\n";
    assert_eq!(statuses(&exchange(web, head).await), [200]);
    let req = Request::get("http://a/").header("x_real_ip", "10.0.0.1").body(Empty::new()).unwrap();
    assert_eq!(h2_status(web, req).await, StatusCode::OK);
    let seen = backend.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-kept"), ["1"]);
    assert!(seen[0].header("x_forwarded_for").is_empty(), "{}", seen[0].head);
    assert!(seen[1].header("x_real_ip").is_empty(), "{}", seen[1].head);
    assert!(!backend.saw("10.0.0.1"));

    assert_eq!(statuses(&exchange(legacy, head).await), [200]);
    assert_eq!(backend.requests()[2].header("x_forwarded_for"), ["10.0.0.1"]);
}

/// A backend that switches to whatever protocol it is offered, as one that speaks h2c
/// would.
async fn switching_backend() -> RawBackend {
    RawBackend::start(|_, req| match req.header("upgrade").first() {
        Some(protocol) => Action::Reply(
            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n")
                .into_bytes(),
        ),
        None => Action::Reply(OK.to_vec()),
    })
    .await
}

/// A switch nobody asked for is a bad response, never a tunnel: the upstream cannot
/// turn a plain request (or one whose upgrade the route refused) into a blind tunnel.
#[tokio::test]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_a_502() {
    let backend = RawBackend::start(|_, _| {
        Action::Reply(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec(),
        )
    })
    .await;
    let weir = start(&backend, CONFIG).await;
    let plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(statuses(&exchange(weir.addr, plain).await), [502]);
    assert_eq!(statuses(&exchange(weir.addr, H2C_UPGRADE).await), [502]);
}

const H2C_UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

#[tokio::test]
async fn an_h2c_upgrade_is_forwarded_as_a_plain_request_unless_the_route_lists_it() {
    let backend = switching_backend().await;
    let weir = start(&backend, CONFIG).await;
    let reply = exchange(weir.addr, H2C_UPGRADE).await;
    assert_eq!(statuses(&reply), [200], "never switched: {reply}");
    let seen = only(&backend.requests()).clone();
    assert!(seen.header("upgrade").is_empty(), "{}", seen.head);
    assert!(seen.header("connection").is_empty(), "{}", seen.head);
    assert!(seen.header("http2-settings").is_empty(), "{}", seen.head);

    // Any protocol offered beside a listed one spoils the offer.
    let mixed = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n";
    assert_eq!(statuses(&exchange(weir.addr, mixed).await), [200]);
    // WebSocket, the default, still switches.
    let websocket = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(statuses(&exchange(weir.addr, websocket).await), [101]);

    let listed = CONFIG.replace("[upstreams.app]", "upgrades = [\"h2c\"]\n[upstreams.app]");
    let backend = switching_backend().await;
    let weir = start(&backend, &listed).await;
    assert_eq!(statuses(&exchange(weir.addr, H2C_UPGRADE).await), [101]);
    assert_eq!(only(&backend.requests()).header("upgrade"), ["h2c"]);
}

#[tokio::test]
async fn h2_cookie_crumbs_reach_an_http1_upstream_as_one_field() {
    let backend = RawBackend::recording().await;
    let weir = start(&backend, CONFIG).await;
    let req = Request::get("http://a/")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Empty::new())
        .unwrap();
    assert_eq!(h2_status(weir.addr, req).await, StatusCode::OK);
    assert_eq!(only(&backend.requests()).header("cookie"), ["a=1; b=2; c=3"]);
}

#[tokio::test]
async fn an_h2_request_with_more_than_100_fields_gets_431_as_in_http1() {
    let backend = RawBackend::recording().await;
    let weir = start(&backend, CONFIG).await;
    let with = |n: usize| {
        let mut req = Request::get("http://a/");
        for i in 0..n {
            req = req.header(format!("x-h{i}"), "1");
        }
        req.body(Empty::new()).unwrap()
    };
    assert_eq!(h2_status(weir.addr, with(100)).await, StatusCode::OK);
    assert_eq!(h2_status(weir.addr, with(101)).await, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(h2_status(weir.addr, with(500)).await, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(backend.requests().len(), 1);

    // The same limit as HTTP/1.1's.
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        head.push_str(&format!("x-h{i}: 1\r\n"));
    }
    head.push_str("\r\n");
    assert_eq!(statuses(&exchange(weir.addr, head.as_bytes()).await), [431]);
}
