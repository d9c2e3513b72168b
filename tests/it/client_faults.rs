//! A client's broken request body is the client's fault, never the server's: a
//! malformed body gets `400`, a stalled one `408`, an aborted one is logged and counted
//! as `499`, and none of them moves passive health, however many there are. Each test
//! sends more failures than any threshold, through the real binary, over HTTP/1.1 and
//! h2c, then checks that the only server still serves and is still marked healthy.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{read_reply, statuses, RawBackend};
use crate::support::{get, metric, WeirProcess};

/// More than passive health's default threshold (5 failures in a row).
const ATTEMPTS: usize = 8;

const CONFIG: &str = r#"
[admin]
listen = "{admin}"

[[listeners]]
name = "web"
listen = "{port}"
body_read_timeout = "300ms"

[[routes]]
upstream = "b"

[upstreams.b]
servers = [{ address = "{b}" }]
"#;

async fn start() -> (RawBackend, WeirProcess, String) {
    let backend = RawBackend::recording().await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = backend.fill(CONFIG).replace("{admin}", &admin.to_string());
    let weir = WeirProcess::start(&config, &[]).await;
    for _ in 0..100 {
        if TcpStream::connect(admin).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (backend, weir, format!("http://{admin}"))
}

/// The server was never blamed: still healthy, serving, and no failure counted
/// against it.
async fn assert_server_blameless(weir: &WeirProcess, admin: &str) {
    let (status, body) = get(&weir.url("/after")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "the only server was ejected");
    let metrics = get(&format!("{admin}/metrics")).await.1;
    let healthy = metrics
        .lines()
        .find(|l| l.starts_with("weir_upstream_server_healthy{"))
        .unwrap_or_else(|| panic!("no health gauge in {metrics}"));
    assert!(healthy.ends_with(" 1"), "{healthy}");
    let status: serde_json::Value = serde_json::from_str(&get(&format!("{admin}/status")).await.1).unwrap();
    let errors = status.to_string();
    assert!(errors.contains("\"recent_errors\":0"), "{errors}");
}

#[tokio::test]
async fn malformed_chunked_bodies_get_400_and_never_eject_the_server() {
    let (_backend, weir, admin) = start().await;
    for _ in 0..ATTEMPTS {
        let mut stream = TcpStream::connect(weir.addr).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .await
            .unwrap();
        let reply = read_reply(&mut stream).await;
        assert_eq!(statuses(&reply), vec![400], "{reply}");
    }
    assert_server_blameless(&weir, &admin).await;
    let metrics = get(&format!("{admin}/metrics")).await.1;
    assert_eq!(
        metric(&metrics, "weir_requests_total{code=\"400\",upstream=\"b\"}"),
        ATTEMPTS as f64,
        "{metrics}"
    );
}

#[tokio::test]
async fn stalled_uploads_get_408_and_never_eject_the_server() {
    let (backend, weir, admin) = start().await;
    let mut tasks = Vec::new();
    for _ in 0..ATTEMPTS {
        let addr = weir.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
                .await
                .unwrap();
            // The answer closes the connection.
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
            String::from_utf8_lossy(&reply).into_owned()
        }));
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(statuses(&reply), vec![408], "{reply}");
    }
    assert!(backend.requests().is_empty(), "a cut body reached the server as complete");
    assert_server_blameless(&weir, &admin).await;
}

#[tokio::test]
async fn aborted_uploads_are_499_and_never_eject_the_server() {
    let (_backend, weir, admin) = start().await;
    for _ in 0..ATTEMPTS {
        let mut stream = TcpStream::connect(weir.addr).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        // Long enough for the request to reach the server, then the client is gone.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
    }
    let mut counted = 0.0;
    for _ in 0..50 {
        let metrics = get(&format!("{admin}/metrics")).await.1;
        counted = metric(&metrics, "weir_requests_total{code=\"499\",upstream=\"b\"}");
        if counted >= ATTEMPTS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, ATTEMPTS as f64);
    assert_server_blameless(&weir, &admin).await;
}

/// An h2c request whose body the client never finishes, or resets.
async fn h2c_upload(addr: std::net::SocketAddr, reset: bool) -> Option<StatusCode> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post("http://a/upload").body(body).unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"abc")))).await.unwrap();
    let response = tokio::spawn(sender.send_request(req));
    tokio::time::sleep(Duration::from_millis(50)).await;
    if reset {
        // A body error makes hyper reset the stream: the client gave up.
        tx.send(Err(std::io::Error::other("gave up"))).await.unwrap();
        let _ = response.await;
        return None;
    }
    let status =
        tokio::time::timeout(Duration::from_secs(3), response).await.unwrap().unwrap().unwrap().status();
    drop(tx);
    Some(status)
}

/// An mpsc receiver as a stream, without another dependency.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn h2c_stalled_and_reset_uploads_never_eject_the_server() {
    let (_backend, weir, admin) = start().await;
    for _ in 0..ATTEMPTS {
        assert_eq!(h2c_upload(weir.addr, false).await, Some(StatusCode::REQUEST_TIMEOUT));
    }
    for _ in 0..ATTEMPTS {
        h2c_upload(weir.addr, true).await;
    }
    assert_server_blameless(&weir, &admin).await;
}

/// The upstream connection a broken body spoiled is closed, never pooled: the next
/// request goes out on a fresh connection and arrives whole.
#[tokio::test]
async fn a_connection_spoiled_by_a_client_body_is_not_reused() {
    let (backend, weir, _admin) = start().await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
    assert_eq!(statuses(&String::from_utf8_lossy(&reply)), vec![408]);
    let (status, _) = get(&weir.url("/next")).await;
    assert_eq!(status, StatusCode::OK);
    let requests = backend.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].line().starts_with("GET /next "), "{}", requests[0].line());
}
