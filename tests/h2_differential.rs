//! Differential tests of weir's HTTP/2 server (`weir::http::h2`) against hyper's.
//!
//! The same generated client bytes (a preface, SETTINGS, one request's HEADERS with
//! valid, borderline and hostile fields, its body in DATA frames with or without
//! padding, and trailers) go to weir's h2 server and to hyper's, each on a real
//! socket with a handler that reads the whole body and records what it was given.
//! The verdicts must agree: both hand the handler the same method, URI, headers,
//! body and trailers; or weir refuses. Weir may be stricter than hyper, never looser:
//! a request weir hands on and hyper refuses fails the test. Where weir refuses and
//! hyper does not (both as RFC 9113 §8 says): an empty `:path`, and trailers with
//! pseudo-header fields (hyper drops them).
//!
//! The header blocks are encoded here, independently of weir's HPACK code: literals
//! with new names, with or without incremental indexing (so later fields may be
//! sent indexed from the dynamic table).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a server's handler was given.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

fn fields(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect()
}

/// Reads a request whole, as both handlers do.
async fn record<B>(req: http::Request<B>) -> Option<Seen>
where
    B: http_body::Body<Data = Bytes>,
{
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok()?;
    let trailers = collected.trailers().map(fields).unwrap_or_default();
    Some(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: fields(&parts.headers),
        body: collected.to_bytes().to_vec(),
        trailers,
    })
}

fn never(never: Infallible) -> BoxError {
    match never {}
}

/// Runs `server` beside `client` (on this task: the handlers' futures need not be
/// `Send`) until `client` is done.
async fn beside(
    server: impl std::future::Future<Output = ()>,
    client: impl std::future::Future<Output = bool>,
) -> bool {
    tokio::pin!(server, client);
    tokio::select! {
        answered = &mut client => answered,
        () = &mut server => client.await,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Sends `input` on a fresh connection to a server started by `serve` and reads
/// frames back until stream 1 is answered, reset, or the connection goes away.
/// `true`: a response HEADERS came on stream 1.
async fn exchange(addr: std::net::SocketAddr, input: &[u8]) -> bool {
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(input).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                let (kind, stream) =
                    (buf[at + 3], u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]));
                if buf.len() < at + 9 + len {
                    break;
                }
                match (kind, stream) {
                    (0x1, 1) => return true,
                    (0x3, 1) | (0x7, _) => return false,
                    _ => {}
                }
                at += 9 + len;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.unwrap_or(false)
}

fn weir_server(input: &[u8]) -> Option<Seen> {
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
        let recorded = seen.clone();
        let server = async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let handler = move |req: http::Request<weir::http::h2::RecvBody>| {
                let recorded = recorded.clone();
                async move {
                    let seen = record(req).await;
                    let ok = seen.is_some();
                    *recorded.lock().unwrap() = seen;
                    let status = if ok { 200 } else { 400 };
                    let body = Empty::<Bytes>::new().map_err(never).boxed_unsync();
                    http::Response::builder().status(status).body(body).unwrap()
                }
            };
            weir::http::h2::serve(
                stream,
                bytes::BytesMut::new(),
                weir::http::h2::Config::default(),
                stop,
                handler,
            )
            .await;
        };
        let answered = beside(server, exchange(addr, input)).await;
        let seen = seen.lock().unwrap().take();
        seen.filter(|_| answered)
    })
}

fn hyper_server(input: &[u8]) -> Option<Seen> {
    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
        let recorded = seen.clone();
        let server = async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let recorded = recorded.clone();
                async move {
                    let seen = record(req).await;
                    let ok = seen.is_some();
                    *recorded.lock().unwrap() = seen;
                    let status = if ok { 200 } else { 400 };
                    Ok::<_, Infallible>(
                        http::Response::builder().status(status).body(Empty::<Bytes>::new()).unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        };
        let answered = beside(server, exchange(addr, input)).await;
        let seen = seen.lock().unwrap().take();
        seen.filter(|_| answered)
    })
}

/// One generated header field, and how it is encoded.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    value: String,
    /// Literal with incremental indexing (then sent again indexed, when `again`).
    index: bool,
    again: bool,
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK block of new-name literals (RFC 7541 §6.2), with the dynamic table
/// followed so that an indexed repeat names the right entry.
fn block(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut table: Vec<(String, String)> = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        assert!(s.len() < 127);
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    for f in fields {
        out.push(if f.index { 0x40 } else { 0x00 });
        string(&mut out, &f.name);
        string(&mut out, &f.value);
        if f.index {
            table.insert(0, (f.name.clone(), f.value.clone()));
            if f.again {
                // Newest entry: index 62.
                out.push(0x80 | 62);
                let entry = table[0].clone();
                table.insert(0, entry);
                table.remove(0);
            }
        }
    }
    out
}

/// The client's bytes for one request.
fn connection(head: &[Field], body: &[Vec<u8>], padded: bool, trailers: &[Field]) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let end_on_head = body.is_empty() && trailers.is_empty();
    frame(&mut out, 0x1, 0x4 | if end_on_head { 1 } else { 0 }, 1, &block(head));
    for (i, chunk) in body.iter().enumerate() {
        let last = i + 1 == body.len() && trailers.is_empty();
        let mut payload = Vec::new();
        let mut flags = if last { 1 } else { 0 };
        if padded {
            flags |= 0x8;
            payload.push(3);
            payload.extend_from_slice(chunk);
            payload.extend_from_slice(&[0, 0, 0]);
        } else {
            payload.extend_from_slice(chunk);
        }
        frame(&mut out, 0x0, flags, 1, &payload);
    }
    if !trailers.is_empty() {
        frame(&mut out, 0x1, 0x5, 1, &block(trailers));
    }
    out
}

fn pseudo() -> impl Strategy<Value = Vec<Field>> {
    let method = prop_oneof![
        8 => Just(Some("GET")),
        8 => Just(Some("POST")),
        1 => Just(Some("PUT")),
        1 => Just(Some("OPTIONS")),
        1 => Just(Some("CONNECT")),
        1 => Just(Some("get")),
        1 => Just(Some("G T")),
        1 => Just(None)
    ];
    let scheme =
        prop_oneof![8 => Just(Some("http")), 8 => Just(Some("https")), 1 => Just(Some("")), 1 => Just(None)];
    let authority = prop_oneof![
        8 => Just(Some("a.example")),
        1 => Just(Some("a.example:8080")),
        1 => Just(Some("bad host")),
        1 => Just(Some("u@a.example")),
        1 => Just(None)
    ];
    let path = prop_oneof![
        8 => Just(Some("/")),
        8 => Just(Some("/p/q?x=1&y")),
        1 => Just(Some("*")),
        1 => Just(Some("")),
        1 => Just(Some("no-slash")),
        1 => Just(Some("/sp ace")),
        1 => Just(None)
    ];
    (method, scheme, authority, path, prop::bool::weighted(0.1), any::<bool>()).prop_map(
        |(m, s, a, p, twice, index)| {
            let mut out = Vec::new();
            for (name, value) in [(":method", m), (":scheme", s), (":authority", a), (":path", p)] {
                if let Some(value) = value {
                    out.push(Field { name: name.into(), value: value.into(), index, again: false });
                }
            }
            if twice {
                if let Some(first) = out.first().cloned() {
                    out.push(first);
                }
            }
            out
        },
    )
}

fn regular() -> impl Strategy<Value = Field> {
    let pair = prop_oneof![
        6 => Just(("accept", "*/*")),
        6 => Just(("x-a", "v")),
        6 => Just(("x-empty", "")),
        6 => Just(("cookie", "a=1")),
        6 => Just(("host", "h.example")),
        1 => Just(("Accept", "upper")),
        1 => Just(("connection", "close")),
        1 => Just(("keep-alive", "5")),
        1 => Just(("upgrade", "websocket")),
        1 => Just(("transfer-encoding", "chunked")),
        6 => Just(("te", "trailers")),
        1 => Just(("te", "gzip")),
        1 => Just(("content-length", "3")),
        1 => Just(("content-length", "0")),
        1 => Just(("content-length", "x")),
        1 => Just((":status", "200")),
        1 => Just((":unknown", "x")),
        1 => Just(("x-bad", "a\rb")),
        1 => Just(("x-sp", " padded ")),
        1 => Just(("bad name", "v")),
    ];
    (pair, any::<bool>(), any::<bool>()).prop_map(|((n, v), index, again)| Field {
        name: n.into(),
        value: v.into(),
        index,
        again,
    })
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        pseudo(),
        prop::collection::vec(regular(), 0..5),
        prop::bool::weighted(0.15),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5), 0..3),
        any::<bool>(),
        prop::collection::vec(regular(), 0..2),
    )
        .prop_map(|(mut head, regular, shuffle, body, padded, trailers)| {
            if shuffle && !regular.is_empty() {
                // A regular field before the pseudo-header fields.
                head.insert(0, regular[0].clone());
                head.extend(regular.into_iter().skip(1));
            } else {
                head.extend(regular);
            }
            connection(&head, &body, padded, &trailers)
        })
}

fn check(input: &[u8]) -> Result<(), TestCaseError> {
    let weir = weir_server(input);
    let hyper = hyper_server(input);
    match (&weir, &hyper) {
        (Some(w), Some(h)) => prop_assert_eq!(w, h),
        (Some(w), None) => prop_assert!(false, "weir took what hyper refused: {:?}", w),
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn weir_and_hyper_hand_on_the_same_requests(input in request()) {
        check(&input)?;
    }
}

#[test]
fn a_plain_request_reaches_both_alike() {
    let f = |n: &str, v: &str| Field { name: n.into(), value: v.into(), index: true, again: false };
    let mut again = f("x-a", "1");
    again.again = true;
    let head = [f(":method", "POST"), f(":scheme", "https"), f(":authority", "a"), f(":path", "/x"), again];
    let input = connection(&head, &[b"ab".to_vec(), b"c".to_vec()], true, &[f("x-sum", "9")]);
    let weir = weir_server(&input).expect("weir serves it");
    assert_eq!(Some(&weir), hyper_server(&input).as_ref());
    assert_eq!(weir.body, b"abc");
    assert_eq!(weir.headers, [("x-a".to_string(), b"1".to_vec()), ("x-a".to_string(), b"1".to_vec())]);
    assert_eq!(weir.trailers, [("x-sum".to_string(), b"9".to_vec())]);
}
