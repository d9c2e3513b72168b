//! Hostile clients, in raw bytes: request smuggling, malformed heads, oversized
//! heads, hop-by-hop tricks, `Expect`, bodiless responses, pipelining.
//!
//! Every case is sent to a real weir in front of a recording backend, and the
//! verdict is the same: the client gets a 4xx (or 501 for a transfer coding weir
//! does not decode) or a closed connection, and the backend either sees nothing or
//! a cleanly re-framed request: never a second, smuggled one.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{exchange, read_reply, statuses, Action, RawBackend, RawRequest, OK};
use crate::support::Weir;

const CONFIG: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
header_read_timeout = "2s"
max_header_size = 8192

[[routes]]
upstream = "b"

[upstreams.b]
request_timeout = "2s"
servers = [{ address = "{b}" }]
"#;

async fn start() -> (RawBackend, Weir) {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    (backend, weir)
}

/// Sends `attack` and returns the reply and what the backend framed, after checking
/// the invariants every case shares.
async fn send(attack: &[u8]) -> (String, Vec<RawRequest>) {
    let (backend, weir) = start().await;
    let reply = exchange(weir.addr, attack).await;
    // Give an aborted upstream exchange time to land in the log.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = backend.requests();
    assert!(!backend.saw("smuggled"), "a smuggled request reached the backend:\n{}", show(&backend));
    for request in &seen {
        assert!(!request.head.starts_with("INVALID"), "the backend could not frame:\n{}", request.head);
        let (lengths, codings) = (request.header("content-length"), request.header("transfer-encoding"));
        assert!(lengths.len() + codings.len() <= 1, "ambiguous framing upstream:\n{}", request.head);
        assert_eq!(request.header("host").len(), 1, "Host upstream:\n{}", request.head);
    }
    (reply, seen)
}

fn show(backend: &RawBackend) -> String {
    String::from_utf8_lossy(&backend.bytes()).into_owned()
}

/// The verdict for a request weir must not forward: a 4xx (or 501) or a closed
/// connection, and nothing upstream.
async fn assert_refused(attack: &[u8]) -> String {
    let (reply, seen) = send(attack).await;
    let codes = statuses(&reply);
    assert!(
        codes.iter().all(|&c| (400..500).contains(&c) || c == 501) && codes.len() <= 1,
        "expected one 4xx or a closed connection, got:\n{reply}"
    );
    assert!(seen.is_empty(), "the backend saw {seen:?}");
    reply
}

fn assert_status(reply: &str, code: u16) {
    assert_eq!(statuses(reply), vec![code], "{reply}");
}

// Content-Length and Transfer-Encoding (RFC 9112 §6.1, §6.3).

#[tokio::test]
async fn content_length_then_chunked_is_reframed_once_and_the_connection_closed() {
    let (reply, seen) = send(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    // hyper drops the length, reads the chunked body, and closes after answering:
    // the bytes after the body are never read as a request.
    assert!(statuses(&reply).len() <= 1, "{reply}");
    assert!(seen.len() <= 1 && seen.iter().all(|r| r.body.is_empty()), "{seen:?}");
}

#[tokio::test]
async fn chunked_then_content_length_is_reframed_once_and_the_connection_closed() {
    let (reply, seen) = send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(statuses(&reply).len() <= 1, "{reply}");
    assert!(seen.len() <= 1 && seen.iter().all(|r| r.body == b"abc"), "{seen:?}");
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    let reply = assert_refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\n\
          helloGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_status(&reply, 400);
}

#[tokio::test]
async fn a_content_length_list_is_refused() {
    assert_refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 41\r\n\r\nhello").await;
}

#[tokio::test]
async fn a_signed_content_length_is_refused() {
    assert_refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello").await;
}

#[tokio::test]
async fn duplicate_equal_content_lengths_reach_the_backend_as_one() {
    let (reply, seen) =
        send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello").await;
    assert_status(&reply, 200);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("content-length"), vec!["5"]);
    assert_eq!(seen[0].body, b"hello");
}

#[tokio::test]
async fn chunked_with_trailing_space_is_read_as_chunked_and_reframed() {
    let (reply, seen) =
        send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    assert_status(&reply, 200);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"abc");
}

#[tokio::test]
async fn xchunked_is_refused() {
    let attack = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_refused(attack).await;
}

#[tokio::test]
async fn chunked_followed_by_identity_is_refused() {
    let attack =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_refused(attack).await;
}

#[tokio::test]
async fn a_second_transfer_encoding_header_is_refused() {
    let attack =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n";
    assert_refused(attack).await;
}

#[tokio::test]
async fn another_coding_before_chunked_is_refused_as_not_implemented() {
    let attack =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\n\r\n";
    let reply = assert_refused(attack).await;
    assert_status(&reply, 501);
}

#[tokio::test]
async fn transfer_encoding_in_http10_is_refused() {
    let attack = b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_refused(attack).await;
}

#[tokio::test]
async fn an_invalid_chunk_size_never_completes_a_request_upstream() {
    let (reply, seen) = send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          zz\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(seen.is_empty(), "{seen:?}");
    assert!(statuses(&reply).iter().all(|&c| c >= 400), "{reply}");
}

#[tokio::test]
async fn a_chunk_size_overflow_never_completes_a_request_upstream() {
    let (reply, seen) = send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          10000000000000001\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(seen.is_empty(), "{seen:?}");
    assert!(statuses(&reply).iter().all(|&c| c >= 400), "{reply}");
}

// Malformed heads.

#[tokio::test]
async fn obs_fold_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n").await;
}

#[tokio::test]
async fn bare_lf_line_ends_are_reframed_with_crlf() {
    let (reply, seen) = send(b"GET /lf HTTP/1.1\nHost: a\nX-A: 1\n\n").await;
    // hyper reads bare LF as a line end; the backend must get a clean CRLF head.
    if !seen.is_empty() {
        assert_status(&reply, 200);
        assert_eq!(seen[0].line(), "GET /lf HTTP/1.1");
        assert_eq!(seen[0].header("x-a"), vec!["1"]);
    }
}

#[tokio::test]
async fn a_bare_cr_in_a_header_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n").await;
}

#[tokio::test]
async fn nul_in_a_header_value_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n").await;
}

#[tokio::test]
async fn a_control_character_in_a_header_value_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n").await;
}

#[tokio::test]
async fn nul_in_a_header_name_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: a\r\nX\0A: 1\r\n\r\n").await;
}

#[tokio::test]
async fn an_invalid_header_name_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n").await;
}

#[tokio::test]
async fn space_before_the_colon_is_refused() {
    assert_refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n").await;
}

#[tokio::test]
async fn a_space_in_the_target_is_refused() {
    assert_refused(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n").await;
}

#[tokio::test]
async fn a_malformed_version_is_refused() {
    assert_refused(b"GET / HTTP/1.x\r\nHost: a\r\n\r\n").await;
}

#[tokio::test]
async fn a_target_without_a_slash_is_not_forwarded_as_is() {
    let (_, seen) = send(b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(seen.iter().all(|r| r.line().split(' ').nth(1).is_some_and(|t| t.starts_with('/'))), "{seen:?}");
}

#[tokio::test]
async fn absolute_form_is_sent_upstream_in_origin_form_with_its_host() {
    let (reply, seen) = send(b"GET http://other.example/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_status(&reply, 200);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].line(), "GET /p?q=1 HTTP/1.1");
    // RFC 9112 §3.2.2: the target's authority replaces Host.
    assert_eq!(seen[0].header("host"), vec!["other.example"]);
}

/// RFC 9112 §3.2.1: an empty path is sent as `/`. Found by the `h1_codec` fuzz
/// target: `http://a?q` went up as `GET ?q`, a target weir itself refuses.
#[tokio::test]
async fn absolute_form_without_a_path_goes_upstream_with_a_slash() {
    let (reply, seen) = send(b"GET http://other.example?q=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_status(&reply, 200);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].line(), "GET /?q=1 HTTP/1.1");
}

#[tokio::test]
async fn missing_host_in_http11_is_refused() {
    let reply = assert_refused(b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n").await;
    assert_status(&reply, 400);
}

#[tokio::test]
async fn missing_host_in_http10_is_refused_because_weir_forwards_http11() {
    let reply = assert_refused(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_status(&reply, 400);
}

#[tokio::test]
async fn http10_with_host_is_forwarded_as_http11() {
    let (reply, seen) = send(b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert_status(&reply, 200);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].line(), "GET /old HTTP/1.1");
}

#[tokio::test]
async fn duplicate_host_is_refused() {
    let reply = assert_refused(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n").await;
    assert_status(&reply, 400);
}

#[tokio::test]
async fn an_invalid_host_is_refused() {
    assert_refused(b"GET / HTTP/1.1\r\nHost: a.example/evil\r\n\r\n").await;
}

// Size limits.

#[tokio::test]
async fn an_oversized_request_line_is_refused() {
    let mut attack = b"GET /".to_vec();
    attack.extend(std::iter::repeat_n(b'a', 16 * 1024));
    attack.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    let reply = assert_refused(&attack).await;
    assert!(statuses(&reply) == [431] || statuses(&reply) == [414] || reply.is_empty(), "{reply}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let mut attack = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..200 {
        attack.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(60)).as_bytes());
    }
    attack.extend_from_slice(b"\r\n");
    let reply = assert_refused(&attack).await;
    assert_status(&reply, 431);
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let mut attack = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..150 {
        attack.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    attack.extend_from_slice(b"\r\n");
    let reply = assert_refused(&attack).await;
    assert_status(&reply, 431);
}

// Hop-by-hop and expectations.

#[tokio::test]
async fn connection_naming_x_forwarded_for_keeps_weirs_own() {
    let (reply, seen) = send(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For, X-Forwarded-Proto, Keep-Alive\r\n\
          X-Forwarded-For: 6.6.6.6\r\nKeep-Alive: timeout=5\r\n\r\n",
    )
    .await;
    assert_status(&reply, 200);
    assert_eq!(seen.len(), 1);
    // The client's own value was hop-by-hop (it named it), weir's address is added.
    assert_eq!(seen[0].header("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen[0].header("x-forwarded-proto"), vec!["http"]);
    assert!(seen[0].header("keep-alive").is_empty() && seen[0].header("connection").is_empty());
}

#[tokio::test]
async fn connection_naming_content_length_still_frames_the_body() {
    let (reply, seen) =
        send(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello")
            .await;
    assert_status(&reply, 200);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello");
}

#[tokio::test]
async fn expect_100_continue_gets_continue_then_the_response() {
    let (backend, weir) = start().await;
    let mut client = TcpStream::connect(weir.addr).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_reply(&mut client).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim:?}");
    client.write_all(b"hello").await.unwrap();
    let reply = read_reply(&mut client).await;
    assert_status(&reply, 200);
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello");
}

// Bodiless responses and pipelining.

/// A backend whose answer depends on the request path.
async fn bodiless_backend() -> RawBackend {
    RawBackend::start(|_, request| {
        let bytes: &[u8] = match request.line().split(' ').nth(1) {
            _ if request.line().starts_with("HEAD") => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            Some("/204") => b"HTTP/1.1 204 No Content\r\n\r\n",
            Some("/304") => b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n",
            _ => OK,
        };
        Action::Reply(bytes.to_vec())
    })
    .await
}

#[tokio::test]
async fn head_204_and_304_responses_carry_no_body_and_keep_the_connection() {
    let backend = bodiless_backend().await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    let reply = exchange(
        weir.addr,
        b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /304 HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), vec![200, 204, 304, 200], "{reply}");
    assert!(reply.contains("content-length: 10\r\n"), "HEAD keeps the length of the GET:\n{reply}");
    assert!(reply.ends_with("\r\n\r\nok"), "no stray body bytes before the last answer:\n{reply}");
    let lines: Vec<String> = backend.requests().iter().map(|r| r.line().to_string()).collect();
    assert_eq!(lines, ["HEAD /h HTTP/1.1", "GET /204 HTTP/1.1", "GET /304 HTTP/1.1", "GET /after HTTP/1.1"]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (reply, seen) = send(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
          GET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), vec![200, 200, 200], "{reply}");
    let lines: Vec<&str> = seen.iter().map(RawRequest::line).collect();
    assert_eq!(lines, ["GET /1 HTTP/1.1", "POST /2 HTTP/1.1", "GET /3 HTTP/1.1"]);
    assert_eq!(seen[1].body, b"abc");
}

#[tokio::test]
async fn a_refused_request_in_a_pipeline_ends_the_connection() {
    let (reply, seen) = send(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), vec![200, 400], "{reply}");
    assert_eq!(seen.len(), 1);
}
