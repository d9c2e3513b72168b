//! weir's HTTP/1.1 codec held to the letter (issue 17): framing that is weir's own
//! and never a header map's, one strict chunked decoder for requests and responses,
//! costs per upload batch rather than per client chunk, response hygiene, and
//! trailers that cannot reshape a request.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{closed_within, exchange, read_reply, statuses, Action, RawBackend, OK};
use crate::support::Weir;

const CONFIG: &str = crate::support::ONE_ROUTE;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

fn body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn head(reply: &str) -> String {
    reply.split_once("\r\n\r\n").map_or(reply, |(h, _)| h).to_ascii_lowercase()
}

/// A stale cached URL asked for by a GET that carries a body and a
/// `Content-Length`: the request goes up whole, framed by its own body, and starts no
/// background refresh that could copy that length onto a request without a body (the
/// server would wait for the body and read the next request on the connection as it).
/// The HTTP/1.1 client's own guard (framing from the body, never the header map) is
/// unit-tested beside `encode_head`; the refresh's clean head in `cache_poisoning`.
#[tokio::test]
async fn a_stale_get_with_a_body_goes_up_whole_and_starts_no_refresh() {
    let backend = RawBackend::start(|_, _| {
        Action::Reply(b"HTTP/1.1 200 OK\r\ncache-control: max-age=1\r\ncontent-length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let toml = backend.fill(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "b"
cache = "pages"
[upstreams.b]
servers = [{ address = "{b}" }]
[caches.pages]
max_size = "1MiB"
stale_while_revalidate = "30s"
"#,
    );
    let weir = Weir::start(&toml, &[]).await;
    assert_eq!(statuses(&exchange(weir.addr, GET).await), vec![200]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let reply = exchange(weir.addr, stale).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    // The refresh runs in the background.
    for _ in 0..50 {
        if backend.requests().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A GET with a body bypasses the cache (it starts no refresh): it goes up once,
    // framed by the body it carries, and nothing else follows on its connection.
    let requests = backend.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].header("content-length"), ["5"], "{}", requests[1].head);
    assert_eq!(requests[1].body, b"hello");
    assert!(requests[1].header("transfer-encoding").is_empty(), "{}", requests[1].head);
}

/// RFC 9112 §7.1 on request bodies: a bare LF in a size line, an extension or the
/// trailers, an empty size line, a size that is not hex, or over 16 KiB of chunk
/// extensions refuses the request and closes the connection; the request hidden
/// behind it never reaches the server.
#[tokio::test]
async fn loose_chunked_request_bodies_are_refused_and_the_connection_closed() {
    const HIDDEN: &str = "GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n";
    for bad in [
        "\r\n\r\n",                    // an empty size line read as the last chunk
        "3;x\nabc\r\n0\r\n\r\n",       // bare LF in an extension
        "3\nabc\r\n0\r\n\r\n",         // bare LF ending the size line
        "3\r\nabc\r\n0\r\nx: 1\n\r\n", // bare LF in the trailers
        "0\r\n\n",                     // bare LF ending the trailers
        "-3\r\nabc\r\n0\r\n\r\n",
        // Over 16 KiB of chunk extensions in one body.
        &format!("1;{}\r\nx\r\n", "e".repeat(1000)).repeat(17),
    ] {
        let backend = RawBackend::recording().await;
        let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
        let request =
            format!("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{bad}{HIDDEN}");
        let mut stream = TcpStream::connect(weir.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = read_reply(&mut stream).await;
        assert!(!statuses(&reply).contains(&200), "{bad:?} was accepted: {reply}");
        assert!(closed_within(&mut stream, Duration::from_secs(2)).await, "{bad:?}: connection left open");
        assert!(!backend.saw("/hidden"), "{bad:?}: the hidden request reached the server");
    }
}

/// A malformed chunked response body (a bare LF inside an extension, which a
/// parser that ends lines at LF reads differently) ends the response and its
/// connection: what the server wrote after it is never read as the answer to the
/// next request.
#[tokio::test]
async fn a_loose_chunked_response_ends_the_response_and_its_connection() {
    let poisoned = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x\ny\r\nhello\r\n0\r\n\r\n\
                     HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsmuggd";
    let backend = RawBackend::start(move |n, _| match n {
        0 => Action::Reply(poisoned.to_vec()),
        _ => Action::Reply(OK.to_vec()),
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(weir.addr, GET).await;
    assert!(!reply.contains("hello\r\n0\r\n\r\n"), "the malformed body was relayed whole: {reply}");
    let reply = exchange(weir.addr, GET).await;
    assert_eq!(body(&reply), "ok", "{reply}");
}

/// A body of 2,000 one-byte chunks that arrives at once goes up in a few large
/// chunks, not one upstream chunk (and three writes) per client chunk.
#[tokio::test]
async fn a_one_byte_chunk_upload_goes_up_in_few_chunks() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let mut request =
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for i in 0..2000 {
        request.extend_from_slice(format!("1\r\n{}\r\n", i % 10).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = exchange(weir.addr, &request).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let expected: Vec<u8> = (0..2000).map(|i| b'0' + (i % 10) as u8).collect();
    assert_eq!(requests[0].body, expected);
    // Count the chunks that went up: every size line of the body.
    let wire = backend.bytes();
    let start = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (mut at, mut chunks) = (start, 0);
    loop {
        let line = wire[at..].windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&wire[at..at + line]).unwrap(), 16).unwrap();
        at += line + 2;
        if size == 0 {
            break;
        }
        chunks += 1;
        at += size + 2;
    }
    assert!(chunks <= 20, "{chunks} upstream chunks for 2000 client chunks");
}

/// RFC 9110 §8.6: a 204 or 304 reaches the client without `Content-Length`; a
/// length the server repeated goes out once.
#[tokio::test]
async fn bodiless_answers_carry_no_length_and_a_repeated_length_goes_out_once() {
    for (reply, status) in [
        (&b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"[..], 204),
        (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\netag: \"a\"\r\n\r\n", 304),
    ] {
        let backend = RawBackend::start(move |_, _| Action::Reply(reply.to_vec())).await;
        let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
        let answer = exchange(weir.addr, GET).await;
        assert_eq!(statuses(&answer), vec![status], "{answer}");
        assert!(!head(&answer).contains("content-length"), "{answer}");
        assert_eq!(body(&answer), "", "{answer}");
    }
    let twice = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\nok";
    let backend = RawBackend::start(move |_, _| Action::Reply(twice.to_vec())).await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let answer = exchange(weir.addr, GET).await;
    assert_eq!(head(&answer).matches("content-length").count(), 1, "{answer}");
    assert_eq!(body(&answer), "ok");
}

/// RFC 9112 §6.1: an HTTP/1.0 response with `Transfer-Encoding` is faulty framing.
/// weir refuses it as a bad response (as hyper does) and never pools its connection:
/// what the server sent after it is not read as the next answer.
#[tokio::test]
async fn an_http10_response_with_a_transfer_coding_is_refused_and_not_pooled() {
    let faulty = b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n\
                   2\r\nno\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsmuggd";
    let backend = RawBackend::start(move |n, _| match n {
        0 => Action::Reply(faulty.to_vec()),
        _ => Action::Reply(OK.to_vec()),
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(weir.addr, GET).await;
    assert_eq!(statuses(&reply), vec![502], "{reply}");
    let reply = exchange(weir.addr, GET).await;
    assert_eq!(body(&reply), "ok", "{reply}");
}

/// RFC 9110 §6.5.1: request trailers that would frame, route or modify the request
/// (`Content-Length`, `Host`, `Transfer-Encoding`, hop-by-hop fields, ...) are dropped;
/// others go up.
#[tokio::test]
async fn request_trailers_that_would_reshape_the_request_are_dropped() {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let request = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
                    Connection: close\r\n\r\n3\r\nabc\r\n0\r\ncontent-length: 99\r\nhost: evil\r\n\
                    transfer-encoding: chunked\r\nconnection: close\r\nkeep-alive: 1\r\nupgrade: h2c\r\n\
                    authorization: x\r\nx-checksum: 3\r\n\r\n";
    let reply = exchange(weir.addr, request).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    let wire = String::from_utf8_lossy(&backend.bytes()).to_ascii_lowercase();
    let trailers = wire.rsplit_once("\r\n0\r\n").map_or("", |(_, t)| t);
    assert_eq!(trailers, "x-checksum: 3\r\n\r\n", "{wire}");
}

/// The same over h2c: the trailers of an HTTP/2 request body are filtered on their
/// way to an HTTP/1.1 server too.
#[tokio::test]
async fn h2_request_trailers_that_would_reshape_the_request_are_dropped() {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    for (name, value) in
        [("content-length", "99"), ("host", "evil"), ("authorization", "x"), ("x-checksum", "3")]
    {
        trailers.insert(name, value.parse().unwrap());
    }
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
        vec![Ok(Frame::data(Bytes::from_static(b"abc"))), Ok(Frame::trailers(trailers))];
    let req = http::Request::post("http://a/x")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let requests = backend.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].body, b"abc");
    let wire = String::from_utf8_lossy(&backend.bytes()).to_ascii_lowercase();
    let trailers = wire.rsplit_once("\r\n0\r\n").map_or("", |(_, t)| t);
    assert_eq!(trailers, "x-checksum: 3\r\n\r\n", "{wire}");
}

/// A body whose client declared its length goes up length-framed, from an HTTP/1.1
/// client and from an h2c one: the length is the body's (its exact size), written
/// by weir.
#[tokio::test]
async fn a_declared_length_still_goes_up_as_content_length() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let post = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert_eq!(statuses(&exchange(weir.addr, post).await), vec![200]);
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://a/x")
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let requests = backend.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for request in &requests {
        assert_eq!(request.header("content-length"), ["5"], "{}", request.head);
        assert!(request.header("transfer-encoding").is_empty(), "{}", request.head);
        assert_eq!(request.body, b"hello");
    }
}
