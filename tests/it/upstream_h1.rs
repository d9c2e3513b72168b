//! weir's own HTTP/1.1 client towards servers (`src/proxy/h1.rs`), against raw TCP
//! backends: how it frames what it reads, and how it treats pooled connections.

use std::time::Duration;

use crate::support::raw::{exchange, statuses, Action, RawBackend, OK};
use crate::support::Weir;

const CONFIG: &str = crate::support::ONE_ROUTE;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
const POST: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

fn body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A server that drops its idle keep-alive connection: the pooled connection is
/// found closed before the next request is written, so even a POST (which weir never
/// replays) goes out on a fresh connection instead of failing.
#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_not_used_for_the_next_request() {
    let backend = RawBackend::start(|n, _| match n {
        0 => Action::ReplyAndClose(OK.to_vec()),
        _ => Action::Reply(OK.to_vec()),
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    assert_eq!(statuses(&exchange(weir.addr, GET).await), vec![200]);
    // Long enough for the server's FIN to reach weir's reactor.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = exchange(weir.addr, POST).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].body, b"hello");
}

/// A chunked response with extensions and trailers, in pieces, reaches the client
/// whole; the connection is pooled after it and serves the next request.
#[tokio::test]
async fn a_chunked_response_is_decoded_and_its_connection_reused() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                    5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n";
    let backend = RawBackend::start(move |n, _| match n {
        0 => Action::Reply(chunked.to_vec()),
        _ => Action::Reply(OK.to_vec()),
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(weir.addr, GET).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    // hyper re-chunks it for the client: strip the framing to compare the data.
    let data: String = body(&reply).split("\r\n").skip(1).step_by(2).collect();
    assert_eq!(data, "hello world", "{reply}");
    let reply = exchange(weir.addr, GET).await;
    assert_eq!(body(&reply), "ok");
    assert_eq!(backend.bytes().iter().filter(|&&b| b == b'G').count(), 2);
    assert_eq!(backend.requests().len(), 2);
}

/// A response with neither length nor chunking runs to the server's close; weir
/// does not pool that connection (it is gone), and the next request opens another.
#[tokio::test]
async fn a_response_read_to_the_close_is_complete_and_the_next_request_reconnects() {
    let backend = RawBackend::start(|n, _| match n {
        0 => Action::ReplyAndClose(b"HTTP/1.1 200 OK\r\n\r\nall of it".to_vec()),
        _ => Action::Reply(OK.to_vec()),
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(weir.addr, GET).await;
    // Its length unknown, it reaches the client chunked.
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    assert!(body(&reply).starts_with("9\r\nall of it\r\n0\r\n\r\n"), "{reply:?}");
    let reply = exchange(weir.addr, GET).await;
    assert_eq!(body(&reply), "ok", "{reply}");
}

/// An interim 100 Continue from the server is consumed; the client gets the final
/// response only.
#[tokio::test]
async fn interim_responses_from_the_server_are_not_forwarded() {
    let backend = RawBackend::start(|_, _| {
        Action::Reply(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        )
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(weir.addr, POST).await;
    assert_eq!(statuses(&reply), vec![201], "{reply}");
}

/// Framing weir will not guess at is a 502 and costs that one request; a valid
/// response on a new connection follows.
#[tokio::test]
async fn conflicting_lengths_and_broken_chunks_are_502() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!"[..],
        b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let backend = RawBackend::start(move |n, _| match n {
            0 => Action::Reply(bad.to_vec()),
            _ => Action::Reply(OK.to_vec()),
        })
        .await;
        let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
        let reply = exchange(weir.addr, GET).await;
        assert_eq!(statuses(&reply), vec![502], "{reply}");
        assert_eq!(body(&exchange(weir.addr, GET).await), "ok");
    }
    // Chunking that breaks after the head went out cuts the response short instead.
    let backend = RawBackend::start(|_, _| {
        Action::Reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        )
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(weir.addr, GET).await;
    assert!(!reply.contains("hello"), "{reply}");
}

/// A request body of unknown length (chunked from the client) is sent chunked,
/// whatever the method, and reaches the server whole.
#[tokio::test]
async fn a_chunked_request_body_reaches_the_server_whole() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    for method in ["POST", "GET"] {
        let request = format!(
            "{method} /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        );
        let reply = exchange(weir.addr, request.as_bytes()).await;
        assert_eq!(statuses(&reply), vec![200], "{method}: {reply}");
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.body, b"abcde", "{}", request.head);
        assert_eq!(request.header("transfer-encoding"), vec!["chunked"], "{}", request.head);
    }
}

/// A chunked request body's trailers go up after its last chunk, and the body is
/// terminated once.
#[tokio::test]
async fn request_trailers_end_the_chunked_body() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let request = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
                    Connection: close\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 3\r\n\r\n";
    let reply = exchange(weir.addr, request).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].body, b"abc");
    assert!(backend.saw("\r\n0\r\nx-checksum: 3\r\n\r\n"), "{}", String::from_utf8_lossy(&backend.bytes()));
}

/// TCP states (as `/proc/net/tcp` writes them) of this host's sockets whose remote
/// end is `port` on 127.0.0.1: weir's connections to a backend listening there.
/// Only `ESTABLISHED` and `CLOSE_WAIT` are kept: sockets closing or closed
/// (`TIME_WAIT`, `FIN_WAIT*`) may be left over from an earlier test whose backend
/// had the same port.
fn sockets_to(port: u16) -> Vec<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&remote.as_str())).then(|| u8::from_str_radix(fields[3], 16).unwrap())
        })
        .filter(|&state| state == ESTABLISHED || state == CLOSE_WAIT)
        .collect()
}

const ESTABLISHED: u8 = 0x01;
const CLOSE_WAIT: u8 = 0x08;

/// A server that closes an idle pooled connection gets it closed on weir's side
/// too, by the pool's sweep, instead of leaving the socket half-closed
/// (`CLOSE_WAIT`) until some request would take it.
#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_released_by_the_sweep() {
    let backend = RawBackend::start(|_, _| Action::ReplyAndClose(OK.to_vec())).await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    assert_eq!(statuses(&exchange(weir.addr, GET).await), vec![200]);
    // The sweep runs every second with the default `keepalive_timeout` of 60 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sockets_to(backend.addr.port()).contains(&CLOSE_WAIT) {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection was kept: {:?}",
            sockets_to(backend.addr.port())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An idle pooled connection is closed once unused for `keepalive_timeout`, and
/// not before.
#[tokio::test]
async fn an_idle_pooled_connection_is_closed_after_keepalive_timeout() {
    let backend = RawBackend::start(|_, _| Action::Reply(OK.to_vec())).await;
    let config = backend.fill(CONFIG).replace("request_timeout = \"2s\"", "keepalive_timeout = \"400ms\"");
    let weir = Weir::start(&config, &[]).await;
    assert_eq!(statuses(&exchange(weir.addr, GET).await), vec![200]);
    let port = backend.addr.port();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(sockets_to(port), vec![ESTABLISHED], "closed before its keep-alive timeout");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sockets_to(port).contains(&ESTABLISHED) {
        assert!(
            std::time::Instant::now() < deadline,
            "still open after its keep-alive timeout: {:?}",
            sockets_to(port)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
