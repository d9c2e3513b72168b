//! weir's own HTTP/1.1 server (`http::h1::conn`, wired by `listener::h1`), in raw
//! bytes: what it adds beyond the hostile-client cases: HTTP/1.0 keep-alive and close-delimited answers, chunked
//! request bodies, unread bodies on a kept connection, and the h2 preface arriving
//! in pieces.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{closed_within, exchange, read_reply, statuses, Action, RawBackend, OK};
use crate::support::{rss_kib, Weir};

const CONFIG: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
header_read_timeout = "2s"

[[routes]]
path_prefix = "/b"
upstream = "b"

[upstreams.b]
request_timeout = "2s"
servers = [{ address = "{b}" }]
"#;

#[tokio::test]
async fn http10_keeps_the_connection_only_when_asked() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client.write_all(b"GET /b/1 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let first = read_reply(&mut client).await;
    assert_eq!(statuses(&first), vec![200], "{first}");
    assert!(first.to_ascii_lowercase().contains("connection: keep-alive\r\n"), "{first}");
    client.write_all(b"GET /b/2 HTTP/1.0\r\nHost: a\r\n\r\n").await.unwrap();
    let mut second = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut second)).await;
    assert!(closed.is_ok(), "an HTTP/1.0 request without keep-alive left the connection open");
    assert_eq!(statuses(&String::from_utf8_lossy(&second)), vec![200]);
    assert_eq!(backend.requests().len(), 2);
}

#[tokio::test]
async fn an_unknown_length_goes_to_http10_clients_delimited_by_the_close() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let backend = RawBackend::start(move |_, _| Action::Reply(chunked.to_vec())).await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(weir.addr, b"GET /b HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").await;
    let lower = reply.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding") && !lower.contains("content-length"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nabcde"), "{reply}");
    // And HTTP/1.1 clients get it chunked.
    let reply = exchange(weir.addr, b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(reply.to_ascii_lowercase().contains("transfer-encoding: chunked\r\n"), "{reply}");
}

#[tokio::test]
async fn a_chunked_request_body_is_reframed_and_the_connection_goes_on() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(
        weir.addr,
        b"POST /b/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n\
          GET /b/next HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), vec![200, 200], "{reply}");
    let seen = backend.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, b"abcde");
    assert_eq!(seen[1].line(), "GET /b/next HTTP/1.1");
}

/// A body no one reads (the request got no route) is skipped when it is all there,
/// and the next request on the connection is served; never read as a request.
#[tokio::test]
async fn an_unread_body_is_skipped_never_read_as_a_request() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(
        weir.addr,
        b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\n\r\nGET /b/smuggled HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /b/after HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), vec![404, 200], "{reply}");
    let lines: Vec<String> = backend.requests().iter().map(|r| r.line().to_string()).collect();
    assert_eq!(lines, ["GET /b/after HTTP/1.1"]);
}

/// A body still on its way when the answer is done cannot be skipped from what is
/// buffered: the connection closes after the answer.
#[tokio::test]
async fn an_unread_body_still_arriving_closes_the_connection() {
    let backend = RawBackend::start(|_, _| Action::Reply(OK.to_vec())).await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client.write_all(b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc").await.unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 404");
    assert!(closed_within(&mut client, Duration::from_secs(2)).await);
}

/// An h2 client whose preface arrives in two pieces is still served as h2.
#[tokio::test]
async fn an_h2_preface_in_pieces_is_still_h2() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    // An empty SETTINGS frame.
    client.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut frame)).await.unwrap().unwrap();
    assert_eq!(frame[3], 4, "the server's first frame is its SETTINGS: {frame:?}");
}

/// `100 Continue` goes out only when the body is wanted: a request answered without
/// it (no route here) gets the final answer alone.
#[tokio::test]
async fn a_request_answered_without_its_body_gets_no_100_continue() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(
        weir.addr,
        b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), vec![404], "{reply}");
}

/// Keep-alive connections idle between requests hand their head buffer back to a
/// per-thread spare list and take one (maybe another connection's) when the client
/// sends again: after an idle gap, a pipelined pair in one write and a request in
/// pieces are still read whole and in order, on two connections sharing the spares.
#[tokio::test]
async fn idle_connections_serve_pipelined_and_split_requests_after_their_buffer_goes_back() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let mut a = TcpStream::connect(weir.addr).await.unwrap();
    let mut b = TcpStream::connect(weir.addr).await.unwrap();
    for (client, path) in [(&mut a, "/b/a1"), (&mut b, "/b/b1")] {
        client.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
        assert_eq!(statuses(&read_reply(&mut *client).await), vec![200]);
    }
    // Both idle (the reads above waited 400 ms for more): a pipelined pair, with a
    // body, in one write.
    a.write_all(b"POST /b/a2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /b/a3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(statuses(&read_reply(&mut a).await), vec![200, 200]);
    // A head in pieces, with idle gaps between them, then its body.
    for piece in ["GET /b/b2 HT", "TP/1.1\r\nHo", "st: a\r\nContent-Length: 3\r\n", "\r\n", "abc"] {
        b.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(statuses(&read_reply(&mut b).await), vec![200]);
    // And each connection goes on after that.
    for (client, path) in [(&mut a, "/b/a4"), (&mut b, "/b/b3")] {
        client.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.unwrap();
        assert_eq!(statuses(&read_reply(&mut *client).await), vec![200]);
    }
    let seen = backend.requests();
    let lines: Vec<&str> = seen.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /b/a1 HTTP/1.1",
            "GET /b/b1 HTTP/1.1",
            "POST /b/a2 HTTP/1.1",
            "GET /b/a3 HTTP/1.1",
            "GET /b/b2 HTTP/1.1",
            "GET /b/a4 HTTP/1.1",
            "GET /b/b3 HTTP/1.1"
        ]
    );
    assert_eq!(seen[2].body, b"hello");
    assert_eq!(seen[4].body, b"abc");
}

/// A client whose request said it was its last (`Connection: close`), read whole,
/// has its connection closed at once: weir does not linger reading a socket the
/// client will send nothing more on, so the connection is gone while the client
/// still holds its end open.
#[tokio::test]
async fn a_clients_last_request_closes_its_connection_without_lingering() {
    let backend = RawBackend::recording().await;
    let config = format!("[admin]\nlisten = \"127.0.0.1:0\"\n{CONFIG}");
    let weir = Weir::start(&backend.fill(&config), &[]).await;
    let active = |m: &str| crate::support::metric(m, "weir_connections_active{listener=\"web\"}");
    for request in [
        &b"GET /b/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
        b"GET /b/2 HTTP/1.0\r\nHost: a\r\n\r\n",
        b"POST /b/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let mut client = TcpStream::connect(weir.addr).await.unwrap();
        client.write_all(request).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut reply)).await.unwrap().unwrap();
        assert_eq!(statuses(&String::from_utf8_lossy(&reply)), vec![200]);
        // The client keeps its end open; weir's linger would hold the connection
        // 250 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(active(&weir.metrics().await), 0.0, "{}", String::from_utf8_lossy(request));
        drop(client);
    }
    // A close weir decides on (a refused head) still lingers: the client may still
    // be sending.
    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client.write_all(b"GET /b/4 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut reply)).await.unwrap().unwrap();
    assert_eq!(statuses(&String::from_utf8_lossy(&reply)), vec![400]);
    assert_eq!(active(&weir.metrics().await), 1.0);
}

/// A keep-alive connection idle for a second goes back to the listener's lobby (its
/// task ends) and gets a new task when the client sends again: still counted as
/// open while parked, and its next requests (a pipelined pair in one write, then a
/// request in pieces) are served in order as on any keep-alive connection.
#[tokio::test]
async fn a_connection_parked_while_idle_goes_on_when_the_client_sends() {
    let backend = RawBackend::recording().await;
    let config = format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", CONFIG.replace("\"2s\"", "\"5s\""));
    let weir = Weir::start(&backend.fill(&config), &[]).await;
    let active = |m: &str| crate::support::metric(m, "weir_connections_active{listener=\"web\"}");
    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client.write_all(b"GET /b/1 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert_eq!(statuses(&read_reply(&mut client).await), vec![200]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(active(&weir.metrics().await), 1.0, "a parked connection is still open");
    client
        .write_all(b"GET /b/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /b/3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(statuses(&read_reply(&mut client).await), vec![200, 200]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for piece in ["POST /b/4 HTTP/1.1\r\nHo", "st: a\r\nContent-Length: 2\r\n\r\n", "hi"] {
        client.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(statuses(&read_reply(&mut client).await), vec![200]);
    let seen = backend.requests();
    let lines: Vec<&str> = seen.iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["GET /b/1 HTTP/1.1", "GET /b/2 HTTP/1.1", "GET /b/3 HTTP/1.1", "POST /b/4 HTTP/1.1"]);
    assert_eq!(seen[3].body, b"hi");
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while active(&weir.metrics().await) != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "a closed connection is still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A parked connection still closes at its keep-alive limit (`header_read_timeout`,
/// counted from the end of the response), and at once (after the stop's grace) when
/// the listener stops.
#[tokio::test]
async fn a_parked_connection_closes_at_its_idle_limit_and_on_stop() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client.write_all(b"GET /b/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = client.read(&mut buf).await.unwrap();
    assert_eq!(statuses(&String::from_utf8_lossy(&buf[..n])), vec![200]);
    let answered = tokio::time::Instant::now();
    assert!(
        closed_within(&mut client, Duration::from_secs(4)).await,
        "a parked connection outlived its limit"
    );
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(1900) && idle < Duration::from_millis(2600), "{idle:?}");

    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client.write_all(b"GET /b/2 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let n = client.read(&mut buf).await.unwrap();
    assert_eq!(statuses(&String::from_utf8_lossy(&buf[..n])), vec![200]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let stopped = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(2), weir.shutdown())
        .await
        .expect("the drain waited on a parked connection");
    assert!(closed_within(&mut client, Duration::from_millis(500)).await);
    assert!(stopped.elapsed() < Duration::from_secs(1), "{:?}", stopped.elapsed());
}

/// One request on a new connection, answered, the connection left open.
async fn served_and_idle(addr: std::net::SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    one_answer(&mut client).await;
    client
}

/// Sends a GET on `client` and reads its `200` to the end of its body (`read_reply`
/// waits for quiet, too slow for thousands of clients at once).
async fn one_answer(client: &mut TcpStream) {
    client.write_all(b"GET /b/1 HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while !got.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the answer ended: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("no answer in 30 s");
    assert_eq!(statuses(&String::from_utf8_lossy(&got)), vec![200]);
}

/// Issue #21's connection target: what a burst of clients cost while busy goes back
/// once they are idle. Their tasks end when they park; the heap pages they held are
/// handed back to the OS (glibc keeps them otherwise), so resident memory falls back
/// toward its level before the burst while the clients stay connected.
#[tokio::test]
async fn the_memory_of_a_burst_of_clients_goes_back_once_they_are_parked() {
    const CLIENTS: usize = 2000;
    let backend = RawBackend::start(|_, _| Action::Reply(OK.to_vec())).await;
    let config = backend
        .fill(CONFIG)
        .replace("listen = \"127.0.0.1:0\"", "listen = \"{port}\"")
        .replace("\"2s\"", "\"60s\"");
    let weir = crate::support::WeirProcess::start(&format!("workers = 1\n{config}"), &[]).await;
    let pid = weir.child.id();
    for _ in 0..20 {
        drop(served_and_idle(weir.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    // All of them busy at once: each has its task until it parks a second later.
    let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(served_and_idle(weir.addr))).collect();
    let mut open = Vec::with_capacity(CLIENTS);
    for client in clients {
        open.push(client.await.unwrap());
    }
    let busy = rss_kib(pid);
    let grown = busy.saturating_sub(before);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut now = busy;
    while now > before + grown / 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = rss_kib(pid);
    }
    let report = format!("{CLIENTS} clients: RSS {before} KiB before, {busy} busy, {now} parked");
    eprintln!("{report}");
    assert!(grown > 4 * 1024, "the burst did not grow the heap as this test expects: {report}");
    assert!(now <= before + grown / 2, "parked clients still hold their busy memory: {report}");
    // And they are still served.
    for client in open.iter_mut().take(10) {
        one_answer(client).await;
    }
}
