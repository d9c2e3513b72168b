//! Broken upstreams, from raw TCP backends: each breakage costs the one request a
//! `502`/`504` (or a cut response once headers went out), and the next request is
//! served normally by the same server.

use std::time::{Duration, Instant};

use crate::support::raw::{exchange, read_reply, statuses, Action, RawBackend, OK};
use crate::support::{get, Weir};

const CONFIG: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
upstream = "b"

[upstreams.b]
request_timeout = "250ms"
servers = [{ address = "{b}" }]
"#;

const GET: &[u8] = b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// Starts a backend that answers its first request with `first` and every later one
/// with `OK`, and weir in front of it.
async fn start(first: Action) -> (RawBackend, Weir) {
    let backend =
        RawBackend::start(move |n, _| if n == 0 { first.clone() } else { Action::Reply(OK.to_vec()) }).await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    (backend, weir)
}

/// The first request gets `code`; the next one, on a new connection, gets the
/// server's `200 ok`.
async fn first_fails_with(first: Action, code: u16) {
    let (backend, weir) = start(first).await;
    let reply = exchange(weir.addr, GET).await;
    assert_eq!(statuses(&reply), vec![code], "{reply}");
    let (status, body) = get(&weir.url("/next")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    assert_eq!(backend.requests().len(), 2);
}

#[tokio::test]
async fn garbage_instead_of_a_status_line_is_a_502() {
    first_fails_with(Action::Reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()), 502).await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_headers_is_a_502() {
    first_fails_with(Action::ResetAfter(b"HTTP/1.1 200 OK\r\ncontent-le".to_vec()), 502).await;
}

#[tokio::test]
async fn a_stall_past_request_timeout_is_a_504() {
    let started = Instant::now();
    first_fails_with(Action::Stall, 504).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_one_mebibyte_header_block_is_a_502() {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..(1 << 20) / 64 {
        head.extend_from_slice(format!("x-big-{i:06}: {}\r\n", "v".repeat(48)).as_bytes());
    }
    head.extend_from_slice(b"content-length: 2\r\n\r\nok");
    first_fails_with(Action::Reply(head), 502).await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_body_cuts_the_response() {
    let (backend, weir) =
        start(Action::ResetAfter(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial".to_vec())).await;
    let started = Instant::now();
    let reply = exchange(weir.addr, GET).await;
    // Headers were already sent: the client sees the 200 and what came of the body,
    // then a connection that ends before the 100 promised bytes (not a quiet wait for
    // more, and not a connection closed with nothing on it).
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    assert!(reply.ends_with("partial"), "{reply}");
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(body.len() < 100, "{reply}");
    assert!(
        started.elapsed() < Duration::from_millis(390),
        "the cut was not passed on: {:?}",
        started.elapsed()
    );
    let (status, body) = get(&weir.url("/next")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    assert_eq!(backend.requests().len(), 2);
}

#[tokio::test]
async fn a_response_with_content_length_and_chunked_is_a_502() {
    // hyper reads the chunks but keeps `content-length: 3`: forwarded as is, a
    // keep-alive client would take "hel" as the body and "lo..." as the next response.
    first_fails_with(
        Action::Reply(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        502,
    )
    .await;
}

/// A server that sends its headers and part of the body, then stops (connection
/// open): after `read_timeout` the response is cut, so the client is not held, and
/// the next request is served.
#[tokio::test]
async fn a_stall_in_the_middle_of_the_body_cuts_the_response_at_read_timeout() {
    let backend = RawBackend::start(|n, _| match n {
        0 => Action::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial".to_vec()),
        _ => Action::Reply(OK.to_vec()),
    })
    .await;
    let config = CONFIG.replace("request_timeout = \"250ms\"", "read_timeout = \"300ms\"");
    let weir = Weir::start(&backend.fill(&config), &[]).await;
    let mut stream = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, GET).await.unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await {
            reply.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(ended.is_ok(), "the stalled response held the client: {reply}");
    assert!(started.elapsed() >= Duration::from_millis(250), "cut early: {:?}", started.elapsed());
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    assert!(reply.ends_with("partial"), "{reply}");
    let (status, body) = get(&weir.url("/next")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
}

/// A client connection keeps its `request_timeout` timer from one request to the
/// next (`proxy::forward::RequestTimer`), moved only when it would fire late: on a
/// keep-alive connection a request is held to its own deadline, neither cut at the
/// last request's (the kept timer firing early) nor at once (after the kept timer
/// fired), nor left waiting.
#[tokio::test]
async fn each_request_on_a_keep_alive_connection_gets_its_own_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Requests 1 and 3 stall; the others are answered.
    let backend =
        RawBackend::start(|n, _| if n == 1 || n == 3 { Action::Stall } else { Action::Reply(OK.to_vec()) })
            .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let mut client = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    let get = b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n";
    // Sends a request and reads its (short) answer: its status, and how long it took.
    async fn ask(client: &mut tokio::net::TcpStream, get: &[u8]) -> (Vec<u16>, Duration) {
        let started = Instant::now();
        client.write_all(get).await.unwrap();
        let mut reply = Vec::new();
        let mut chunk = [0u8; 1024];
        while !reply.ends_with(b"\r\n\r\nok") && !String::from_utf8_lossy(&reply).contains("504") {
            let n =
                tokio::time::timeout(Duration::from_secs(3), client.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&chunk[..n]);
        }
        (statuses(&String::from_utf8_lossy(&reply)), started.elapsed())
    }
    assert_eq!(ask(&mut client, get).await.0, vec![200]);
    // Within the last request's deadline (250 ms): the kept timer fires early, 100 ms
    // into this one, which waits for its own.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, waited) = ask(&mut client, get).await;
    assert_eq!(status, vec![504]);
    assert!(waited >= Duration::from_millis(200), "cut at the last request's deadline: {waited:?}");
    assert!(waited < Duration::from_millis(1500), "held past its deadline: {waited:?}");
    // The 504's body, then one more answered request; then, with the kept timer
    // fired long ago, a stall.
    let _ = read_reply(&mut client).await;
    assert_eq!(ask(&mut client, get).await.0, vec![200]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, waited) = ask(&mut client, get).await;
    assert_eq!(status, vec![504]);
    assert!(waited >= Duration::from_millis(200), "cut before its deadline: {waited:?}");
    assert!(waited < Duration::from_millis(1500), "held past its deadline: {waited:?}");
}
