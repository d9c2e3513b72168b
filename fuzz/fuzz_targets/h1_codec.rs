//! weir's HTTP/1.1 codec alone (`weir::http::h1`), without sockets. The input is the
//! bytes of a connection as they arrive on the wire (the files of
//! `tests/corpus/h1/` are seeds as they are), read two ways:
//!
//! - as requests, the way the server drives the codec: head (`server::parse_head`),
//!   body by length or chunks (`body::decode`, the one chunked decoder), then the
//!   next pipelined request from what is left;
//! - as responses, the way the client does: head (`response::parse_head`) with its
//!   framing decision, interim 1xx heads, body by length, chunks or to the close.
//!
//! Beyond "no panic", each run checks invariants that a real bug would break:
//! - the verdict does not depend on how the bytes were cut into reads (the input is
//!   read whole and cut at one and at two points derived from its bytes): same
//!   heads, same body bytes and trailers, same bytes left over;
//! - framing follows RFC 9112 §6 as a reference written here independently: a
//!   parsed `Content-Length` is the number its digits say (and `framing::parse_length`
//!   agrees with the reference on every `Content-Length` value seen), a request with
//!   `Transfer-Encoding` has no length and ends in `chunked`, a response's body is
//!   read by chunks, length or to the close exactly as its fields say, a 1xx, 204 or
//!   304 keeps no `Content-Length`, keep-alive follows `Connection` and the version;
//! - a decoded body is never longer than the bytes it came from, and a body by
//!   length is exactly its length;
//! - a head read as lines (`server::parse_request` with `lines`) makes the very map
//!   `parse_head` builds of it, with the same verdict, framing and bytes consumed;
//! - what weir forwards, weir reads back the same: a parsed request re-encoded the
//!   way the proxy sends it upstream (`client::encode_head`, after
//!   `strip_client_hop_by_hop`), and a parsed response re-encoded the way the server
//!   answers a client (`server::encode_head`, after `strip_hop_by_hop`), with their
//!   bodies by length or re-chunked (`encode::hex_len`), parse again to the same
//!   method, target, status, end-to-end fields, body and connection decisions.
#![no_main]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Frame;
use libfuzzer_sys::fuzz_target;
use weir::http::h1::body::{decode, Decode, Step};
use weir::http::h1::chunked::Decoded;
use weir::http::h1::client::{encode_head as encode_request, ExtraHeaders};
use weir::http::h1::encode::hex_len;
use weir::http::h1::framing::{parse_length, parse_length_list};
use weir::http::h1::response::{parse_head as parse_response, parse_head_into, State};
use weir::http::h1::server::{
    encode_head as encode_response, has_head_end, parse_head as parse_request, Date, Head, Out,
};
use weir::proxy::hop_by_hop::{strip_client_hop_by_hop, strip_hop_by_hop};

/// The head at the start of `buf` read as lines (`parse_head_into`): its status, framing,
/// and fields (as the map they materialize into, `None` when the map was built).
type AsLines = Option<(StatusCode, Option<(State, bool)>, Option<HeaderMap>)>;

fn lines_of(buf: &BytesMut, head_request: bool) -> AsLines {
    let mut copy = buf.clone();
    let mut out = Vec::new();
    let ((parts, framing), lines) = parse_head_into(&mut copy, head_request, Some(&mut out)).ok()??;
    let fields = lines.map(|_| {
        assert!(parts.headers.is_empty(), "fields went into the map and the lines");
        let mut map = HeaderMap::new();
        for (name, value) in weir::http::h1::encode::fields(&out) {
            let name = HeaderName::from_bytes(name).expect("a line's name is a valid name");
            assert!(!weir::http::h1::framing::is_hop_by_hop(name.as_str().as_bytes()), "{name} in the lines");
            map.append(name, HeaderValue::from_bytes(value).expect("a line's value is a valid value"));
        }
        map
    });
    Some((parts.status, framing, fields))
}

/// Lines read the head as the map does, once the proxy strips the map of hop-by-hop
/// fields: same status, framing and fields (of one name in the same order).
fn check_lines(as_lines: AsLines, parts: &http::response::Parts, framing: Option<(State, bool)>) {
    let (status, lines_framing, fields) = as_lines.expect("lines refused a head the map took");
    assert_eq!((status, lines_framing), (parts.status, framing));
    if let Some(fields) = fields {
        let mut map = parts.headers.clone();
        strip_hop_by_hop(&mut map);
        for name in map.keys().chain(fields.keys()) {
            let want: Vec<_> = map.get_all(name).iter().collect();
            assert_eq!(fields.get_all(name).iter().collect::<Vec<_>>(), want, "{name}");
        }
    }
}

/// The server's head limit here: small, so heads over it are reached.
const MAX_HEAD: usize = 2048;
/// Messages read from one input at most.
const MAX_MESSAGES: usize = 8;

/// How a body ended.
#[derive(Debug, PartialEq, Clone, Copy)]
enum End {
    Complete,
    /// The input ran out first.
    Incomplete,
    /// Malformed framing (the reason may depend on what was buffered, so it is not kept).
    Error,
}

/// One request as the server read it.
#[derive(Debug, PartialEq)]
struct ReadRequest {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    head: Head,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    end: End,
    /// Input bytes from the end of the head to the end of the body (or of the input).
    wire: usize,
}

/// Everything the server read from one connection.
#[derive(Debug, PartialEq, Default)]
struct Requests {
    messages: Vec<ReadRequest>,
    /// The head after the last message was refused.
    refused: bool,
    /// Bytes left unread (a partial head, or what followed a refusal or an error).
    rest: Vec<u8>,
}

/// Reads requests from `pieces`, fed one after another as reads. `gated`: as the
/// server's connection loop (`conn`), which parses a head again only once
/// `server::has_head_end` sees its blank line in the new bytes.
fn read_requests(pieces: &[&[u8]], gated: bool) -> Requests {
    let mut out = Requests::default();
    // How much of the buffered head was looked at without finding its end.
    let mut scanned = 0;
    let mut buf = BytesMut::new();
    let mut fields = Vec::new();
    // The body being read: its decoding state and the wire bytes it took so far.
    let mut current: Option<(Decode, usize)> = None;
    let mut stopped = false;
    for piece in pieces {
        // Once stopped, the rest of the input is only kept, as a connection would
        // leave it unread.
        buf.extend_from_slice(piece);
        while !stopped {
            if current.is_none() {
                if out.messages.len() == MAX_MESSAGES {
                    stopped = true;
                    break;
                }
                if gated && (buf.is_empty() || (scanned > 0 && !has_head_end(&buf, scanned))) {
                    if buf.len() >= MAX_HEAD {
                        out.refused = true;
                        stopped = true;
                    }
                    scanned = buf.len();
                    break;
                }
                let end_seen = has_head_end(&buf, 0);
                let mut as_lines = buf.clone();
                let lines = weir::http::h1::server::parse_request::<()>(
                    &mut as_lines,
                    &mut Vec::new(),
                    MAX_HEAD,
                    true,
                );
                let parsed = parse_request(&mut buf, &mut fields, MAX_HEAD);
                // Fields kept as lines make the very map the head parses into, with the
                // same verdict, framing and bytes consumed.
                match (&parsed, lines) {
                    (Ok(Some((req, head))), Ok(Some((as_req, as_head, lines)))) => {
                        assert_eq!((head, as_lines.len()), (&as_head, buf.len()));
                        let mut map = as_req.headers().clone();
                        if let Some(lines) = lines {
                            assert!(map.is_empty(), "lines and a map");
                            lines.append_to(&mut map);
                        }
                        assert_eq!(&map, req.headers(), "lines make another map");
                    }
                    (Ok(None), Ok(None)) => {}
                    (Err(a), Err(b)) => assert_eq!(a, &b),
                    (a, b) => panic!(
                        "parse_head and parse_request disagree: {:?} / {:?}",
                        a.as_ref().map(|o| o.is_some()),
                        b.map(|o| o.is_some())
                    ),
                }
                match parsed {
                    Ok(Some((req, head))) => {
                        // A head the parser took has the blank line the gate looks for.
                        assert!(end_seen, "a head parsed without the end the gate looks for");
                        let (parts, ()) = req.into_parts();
                        out.messages.push(ReadRequest {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            head,
                            body: Vec::new(),
                            trailers: None,
                            end: End::Incomplete,
                            wire: 0,
                        });
                        current = Some((head.body, 0));
                        scanned = 0;
                    }
                    Ok(None) => {
                        scanned = buf.len();
                        break;
                    }
                    Err(status) => {
                        assert!(
                            status == StatusCode::BAD_REQUEST
                                || status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "a head refused with {status}"
                        );
                        out.refused = true;
                        stopped = true;
                        break;
                    }
                }
            }
            let (state, wire) = current.as_mut().expect("a request being read");
            let message = out.messages.last_mut().expect("a request being read");
            let before = buf.len();
            let step = decode(state, &mut buf);
            *wire += before - buf.len();
            message.wire = *wire;
            match step {
                Ok(Step::Frame(frame)) => push_frame(&mut message.body, &mut message.trailers, frame),
                Ok(Step::End) => {
                    message.end = End::Complete;
                    // As the server: the connection goes on only if the request allows.
                    if !message.head.keep_alive {
                        stopped = true;
                    }
                    current = None;
                }
                Ok(Step::More) => break,
                Err(_) => {
                    // The connection is dead: how far the decoder got is not kept.
                    message.end = End::Error;
                    message.wire = 0;
                    stopped = true;
                }
            }
        }
    }
    // After malformed framing the connection is dead and the message fails: how far
    // the decoder got (data handed on, bytes consumed) depends on the reads and is
    // not compared.
    match out.messages.last_mut() {
        Some(m) if m.end == End::Error => (m.body, m.trailers) = (Vec::new(), None),
        _ => out.rest = buf.to_vec(),
    }
    out
}

fn push_frame(body: &mut Vec<u8>, trailers: &mut Option<HeaderMap>, frame: Frame<Bytes>) {
    match frame.into_data() {
        Ok(data) => {
            assert!(trailers.is_none(), "data after the trailers");
            body.extend_from_slice(&data);
        }
        Err(frame) => {
            let t = frame.into_trailers().expect("a data or trailers frame");
            assert!(trailers.replace(t).is_none(), "two trailer sections");
        }
    }
}

/// One response head as the client read it, with its body for a final one.
#[derive(Debug, PartialEq)]
struct ReadResponse {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The framing and reuse decision of a final response; `None` for a 1xx.
    framing: Option<(State, bool)>,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    end: End,
    wire: usize,
}

#[derive(Debug, PartialEq, Default)]
struct Responses {
    messages: Vec<ReadResponse>,
    refused: bool,
    rest: Vec<u8>,
}

/// Reads responses from `pieces` (to requests that were all `HEAD` when
/// `head_request`), as the client does on one connection.
fn read_responses(pieces: &[&[u8]], head_request: bool) -> Responses {
    let mut out = Responses::default();
    let mut buf = BytesMut::new();
    // The body being read: its decoding state and the wire bytes it took so far.
    let mut current: Option<(State, usize)> = None;
    let mut stopped = false;
    for (i, piece) in pieces.iter().enumerate() {
        let last_piece = i + 1 == pieces.len();
        buf.extend_from_slice(piece);
        while !stopped {
            if current.is_none() {
                if out.messages.len() == MAX_MESSAGES {
                    stopped = true;
                    break;
                }
                let as_lines = lines_of(&buf, head_request);
                match parse_response(&mut buf, head_request) {
                    Ok(Some((parts, framing))) => {
                        check_lines(as_lines, &parts, framing);
                        out.messages.push(ReadResponse {
                            status: parts.status,
                            version: parts.version,
                            headers: parts.headers,
                            framing,
                            body: Vec::new(),
                            trailers: None,
                            end: if framing.is_none() { End::Complete } else { End::Incomplete },
                            wire: 0,
                        });
                        if let Some((state, _)) = framing {
                            current = Some((state, 0));
                        }
                        continue;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        out.refused = true;
                        stopped = true;
                        break;
                    }
                }
            }
            let (state, wire) = current.as_mut().expect("a body being read");
            let message = out.messages.last_mut().expect("a response being read");
            let more = match state {
                State::Length(left) => {
                    let n = (buf.len() as u64).min(*left) as usize;
                    message.body.extend_from_slice(&buf.split_to(n));
                    *wire += n;
                    *left -= n as u64;
                    let left = *left;
                    if left == 0 {
                        *state = State::Done;
                    }
                    left > 0
                }
                State::Eof => {
                    *wire += buf.len();
                    message.body.extend_from_slice(&buf.split());
                    // The input's end is the close.
                    if last_piece {
                        *state = State::Done;
                    }
                    !last_piece
                }
                State::Chunked(chunked) => {
                    let before = buf.len();
                    let decoded = chunked.decode(&mut buf);
                    *wire += before - buf.len();
                    match decoded {
                        Ok(Decoded::Data(data)) => {
                            assert!(message.trailers.is_none(), "data after the trailers");
                            message.body.extend_from_slice(&data);
                            false
                        }
                        Ok(Decoded::Trailers(t)) => {
                            assert!(message.trailers.replace(t).is_none(), "two trailer sections");
                            // The client takes the body as done with its trailers.
                            assert!(chunked.is_done());
                            *state = State::Done;
                            false
                        }
                        Ok(Decoded::End) => {
                            *state = State::Done;
                            false
                        }
                        Ok(Decoded::More) => true,
                        Err(_) => {
                            message.end = End::Error;
                            *wire = 0;
                            stopped = true;
                            true
                        }
                    }
                }
                State::Done | State::Upgraded => false,
            };
            message.wire = *wire;
            match *state {
                State::Done => {
                    message.end = End::Complete;
                    let reusable = message.framing.is_some_and(|(_, r)| r);
                    current = None;
                    if !reusable {
                        stopped = true;
                    }
                }
                State::Upgraded => {
                    // The rest of the connection is the tunnel's.
                    message.end = End::Complete;
                    stopped = true;
                }
                _ if more => break,
                _ => {}
            }
        }
    }
    // After malformed framing the connection is dead and the message fails: how far
    // the decoder got (data handed on, bytes consumed) depends on the reads and is
    // not compared.
    match out.messages.last_mut() {
        Some(m) if m.end == End::Error => (m.body, m.trailers) = (Vec::new(), None),
        _ => out.rest = buf.to_vec(),
    }
    out
}

/// The reference reading of a `Content-Length` value: `1*DIGIT`, as a number, when
/// it fits in 19 digits (weir's bound, which keeps any value below `u64::MAX`).
fn reference_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse::<u128>().ok().map(|n| u64::try_from(n).expect("19 digits fit"))
}

/// The reference reading of a list of one repeated length (`5, 5`).
fn reference_length_list(value: &[u8]) -> Option<u64> {
    let mut numbers = value.split(|&b| b == b',').map(|p| reference_length(p.trim_ascii()));
    let first = numbers.next()??;
    numbers.all(|n| n == Some(first)).then_some(first)
}

fn lowercase_tokens(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether the last `Transfer-Encoding` field's last coding is `chunked`.
fn reference_chunked(headers: &HeaderMap) -> bool {
    let Some(last) = headers.get_all(header::TRANSFER_ENCODING).iter().last() else { return false };
    let coding = last.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
    coding.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

fn reference_keep_alive(headers: &HeaderMap, version: Version) -> bool {
    let options = lowercase_tokens(headers, &header::CONNECTION);
    let close = options.iter().any(|t| t == "close");
    match version {
        Version::HTTP_11 => !close,
        _ => !close && options.iter().any(|t| t == "keep-alive"),
    }
}

/// The fields of a raw head (request or response), as httparse splits them, for the
/// reference checks that must see every field as sent (weir's map drops repeats).
fn raw_fields(input: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut storage);
    if let Ok(httparse::Status::Complete(_)) = request.parse(input) {
        return request.headers.iter().map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec())).collect();
    }
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut storage);
    if let Ok(httparse::Status::Complete(_)) = response.parse(input) {
        return response.headers.iter().map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec())).collect();
    }
    Vec::new()
}

/// Every `Content-Length` value the input's first head carries: the codec's one
/// parser must read each as the reference does.
fn check_length_parser(input: &[u8]) {
    for (name, value) in raw_fields(input) {
        if name.eq_ignore_ascii_case(b"content-length") {
            let text = String::from_utf8_lossy(&value);
            assert_eq!(parse_length(&value), reference_length(&value), "{text:?}");
            assert_eq!(parse_length_list(&value), reference_length_list(&value), "{text:?}");
        }
    }
    // And the raw input, whatever it is, as a value.
    assert_eq!(parse_length(input), reference_length(input));
}

/// The framing and connection rules a request the server took must follow.
fn check_request(m: &ReadRequest) {
    let lengths: Vec<_> = m.headers.get_all(header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "a request goes on with {} Content-Length fields", lengths.len());
    let length = lengths.first().map(|v| reference_length(v.as_bytes()).expect("a taken length is digits"));
    let coded = m.headers.contains_key(header::TRANSFER_ENCODING);
    let expected = if coded {
        assert!(length.is_none(), "a request with a length and a coding was taken");
        assert_eq!(m.version, Version::HTTP_11, "a coding in HTTP/1.0 was taken");
        assert!(reference_chunked(&m.headers), "a coding not ending in chunked was taken");
        "chunked"
    } else if length.is_some_and(|n| n > 0) {
        "length"
    } else {
        "none"
    };
    let actual = match m.head.body {
        Decode::Chunked(_) => "chunked",
        Decode::Length(n) => {
            assert_eq!(Some(n), length, "the body's length is not the field's");
            "length"
        }
        Decode::Done => "none",
        Decode::Failed => "failed",
    };
    assert_eq!(actual, expected, "request framing");
    assert_eq!(m.head.keep_alive, reference_keep_alive(&m.headers, m.version), "request keep-alive");
    assert_eq!(m.head.head_method, m.method == Method::HEAD);
    check_body(&m.body, m.end, m.wire, if actual == "length" { length } else { None });
}

/// A body by length is exactly its length once complete; no body is longer than the
/// bytes it was read from.
fn check_body(body: &[u8], end: End, wire: usize, length: Option<u64>) {
    assert!(body.len() <= wire, "a body of {} bytes from {wire} wire bytes", body.len());
    if let Some(n) = length {
        assert!(body.len() as u64 <= n, "a body longer than its length");
        assert_eq!(body.len(), wire, "a body by length consumed framing bytes");
        if end == End::Complete {
            assert_eq!(body.len() as u64, n, "a complete body is not its length");
        }
    }
}

fn check_response(m: &ReadResponse, head_request: bool) {
    let code = m.status.as_u16();
    let lengths: Vec<_> = m.headers.get_all(header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "a response goes on with {} Content-Length fields", lengths.len());
    if matches!(code, 100..=199 | 204 | 304) {
        assert!(lengths.is_empty(), "a {code} keeps a Content-Length");
    }
    // The one kept value is one plain number (a list was made one).
    let length = lengths.first().map(|v| reference_length(v.as_bytes()).expect("a kept length is digits"));
    let Some((state, reusable)) = m.framing else {
        assert!(m.status.is_informational() && code != 101, "a final {code} without framing");
        return;
    };
    let coded = m.headers.contains_key(header::TRANSFER_ENCODING);
    if code == 101 {
        assert_eq!((state, reusable), (State::Upgraded, false));
        return;
    }
    assert!(!m.status.is_informational(), "a {code} read as final");
    assert!(!(coded && m.version == Version::HTTP_10), "a coding in HTTP/1.0 was taken");
    assert!(!(coded && length.is_some()), "a response framed two ways was taken");
    let expected = if head_request || code == 204 || code == 304 {
        State::Done
    } else if coded && reference_chunked(&m.headers) {
        State::Chunked(Default::default())
    } else if coded {
        State::Eof
    } else {
        match length {
            Some(0) => State::Done,
            Some(n) => State::Length(n),
            None => State::Eof,
        }
    };
    assert_eq!(state, expected, "response framing");
    let persist = reference_keep_alive(&m.headers, m.version);
    assert_eq!(reusable, persist && state != State::Eof, "response reuse");
    let by_length = match state {
        State::Length(n) => Some(n),
        _ => None,
    };
    check_body(&m.body, m.end, m.wire, by_length);
}

/// A request body the proxy sends without a known size: chunked on the wire.
#[derive(Default)]
struct Unsized;

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }
}

/// A sized request body (`Content-Length`, or none when empty).
#[derive(Default)]
struct Sized(Bytes);

impl http_body::Body for Sized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.len() as u64)
    }
}

struct NoExtra;

impl ExtraHeaders for NoExtra {
    fn replaces(&self, _: &HeaderName) -> bool {
        false
    }
    fn encode(&self, _: &HeaderMap, _: bool, _: &mut Vec<u8>) {}
}

/// `body` as chunks whose sizes `seed` picks, then the last chunk.
fn chunk(body: &[u8], mut seed: u64, out: &mut Vec<u8>) {
    let mut rest = body;
    while !rest.is_empty() {
        let n = ((seed % 7) as usize + 1).min(rest.len());
        let n = if seed & 8 == 0 { rest.len() } else { n };
        seed = seed.rotate_right(5) ^ 0x9e37_79b9;
        let mut hex = [0u8; 16];
        out.extend_from_slice(hex_len(n, &mut hex));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
}

/// Hop-by-hop and framing fields, which re-encoding is free to change.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
        "date",
    ] {
        headers.remove(name);
    }
    headers
}

/// A request the server took, forwarded as the proxy does, must read back the same.
fn round_trip_request(m: &ReadRequest, seed: u64) {
    if m.end != End::Complete {
        return;
    }
    let mut headers = m.headers.clone();
    strip_client_hop_by_hop(&mut headers);
    let chunked = matches!(m.head.body, Decode::Chunked(_)) && seed & 1 == 1;
    let mut wire = Vec::new();
    if chunked {
        let mut req = Request::new(Unsized);
        *req.method_mut() = m.method.clone();
        *req.uri_mut() = m.uri.clone();
        *req.headers_mut() = headers.clone();
        encode_request(&req, None::<&NoExtra>, &mut wire);
        chunk(&m.body, seed, &mut wire);
    } else {
        let mut req = Request::new(Sized(Bytes::from(m.body.clone())));
        *req.method_mut() = m.method.clone();
        *req.uri_mut() = m.uri.clone();
        *req.headers_mut() = headers.clone();
        encode_request(&req, None::<&NoExtra>, &mut wire);
        wire.extend_from_slice(&m.body);
    }
    if headers.len() + 4 > weir::http::h1::framing::MAX_HEADERS {
        // The added framing fields may pass the field limit; not what this checks.
        return;
    }
    let mut buf = BytesMut::from(&wire[..]);
    let (req, head) = match parse_request::<()>(&mut buf, &mut Vec::new(), usize::MAX) {
        Ok(Some(parsed)) => parsed,
        other => {
            panic!("weir refuses the request it forwards ({other:?}): {:?}", String::from_utf8_lossy(&wire))
        }
    };
    let again = ReadRequest {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        head,
        body: Vec::new(),
        trailers: None,
        end: End::Incomplete,
        wire: 0,
    };
    let mut again = again;
    let mut state = head.body;
    loop {
        match decode(&mut state, &mut buf) {
            Ok(Step::Frame(frame)) => push_frame(&mut again.body, &mut again.trailers, frame),
            Ok(Step::End) => break,
            other => panic!("the forwarded body does not read back: {:?}", other.err()),
        }
    }
    let text = String::from_utf8_lossy(&wire);
    assert!(buf.is_empty(), "bytes left after the forwarded request: {text:?}");
    assert_eq!(again.method, m.method, "{text:?}");
    // The proxy sends the origin-form of any target: "/" for an authority, and an
    // empty path as "/" (RFC 9112 §3.2.1).
    let origin = |uri: &Uri| match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") => "/".to_owned(),
        Some(target) if target.starts_with('?') => format!("/{target}"),
        Some(target) => target.to_owned(),
    };
    assert_eq!(origin(&again.uri), origin(&m.uri), "{text:?}");
    assert_eq!(end_to_end(&again.headers), end_to_end(&headers), "{text:?}");
    assert_eq!(again.body, m.body, "{text:?}");
    assert!(again.head.keep_alive, "a forwarded request closes: {text:?}");
    assert_eq!(again.head.upgrade, m.head.upgrade, "upgrade lost or made: {text:?}");
    assert_eq!(again.head.trailers, m.head.trailers, "TE: trailers lost or made: {text:?}");
}

/// A response the client took, answered to a client as the server does, must read
/// back the same.
fn round_trip_response(m: &ReadResponse, head_request: bool, seed: u64) {
    let Some((state, _)) = m.framing else { return };
    if m.end != End::Complete || m.status.is_informational() || state == State::Upgraded {
        return;
    }
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = m.status;
    parts.headers = m.headers.clone();
    strip_hop_by_hop(&mut parts.headers);
    if parts.headers.len() + 4 > weir::http::h1::framing::MAX_HEADERS {
        return;
    }
    let version = if seed & 2 == 0 { Version::HTTP_11 } else { Version::HTTP_10 };
    let client = Head {
        body: Decode::Done,
        version,
        head_method: head_request,
        keep_alive: version == Version::HTTP_11,
        expect_continue: false,
        upgrade: false,
        trailers: false,
    };
    // What the client body tells the server of its size.
    let size = match state {
        State::Length(n) => Some(n),
        State::Done => Some(0),
        _ => None,
    };
    let mut wire = Vec::new();
    let (out, keep) = encode_response(&mut wire, &parts, None, size, &client, false, &mut Date::default());
    match out {
        Out::None => {}
        Out::Length(n) => {
            assert_eq!(n, m.body.len() as u64, "the answer's length is not its body's");
            wire.extend_from_slice(&m.body);
        }
        Out::Chunked => chunk(&m.body, seed, &mut wire),
        Out::Eof => wire.extend_from_slice(&m.body),
    }
    let text = String::from_utf8_lossy(&wire);
    let again = read_responses(&[&wire], head_request);
    assert!(!again.refused, "weir refuses the response it sends: {text:?}");
    assert!(again.rest.is_empty(), "bytes left after the answer: {text:?}");
    let [again] = &again.messages[..] else {
        panic!("{} responses read back: {text:?}", again.messages.len())
    };
    assert_eq!(again.end, End::Complete, "{text:?}");
    assert_eq!(again.status, m.status, "{text:?}");
    assert_eq!(end_to_end(&again.headers), end_to_end(&parts.headers), "{text:?}");
    if !head_request && !matches!(m.status.as_u16(), 204 | 304) {
        assert_eq!(again.body, m.body, "{text:?}");
    }
    assert_eq!(again.framing.is_some_and(|(_, reusable)| reusable), keep, "{text:?}");
}

/// FNV-1a: where to cut the input, derived from its bytes so the seeds stay verbatim.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fuzz_target!(|data: &[u8]| {
    let h = hash(data);
    let len = data.len() as u64 + 1;
    let a = (h % len) as usize;
    let b = ((h >> 32) % len) as usize;
    let (a, b) = (a.min(b), a.max(b));
    let whole = [data];
    let two = [&data[..a], &data[a..]];
    let three = [&data[..a], &data[a..b], &data[b..]];
    let bytewise: Vec<&[u8]> = data.chunks(1).collect();
    let small = data.len() <= 256;

    check_length_parser(data);

    let requests = read_requests(&whole, false);
    for m in &requests.messages {
        check_request(m);
        round_trip_request(m, h);
    }
    assert_eq!(read_requests(&two, false), requests, "requests read in two pieces at {a}");
    assert_eq!(read_requests(&three, false), requests, "requests read in three pieces at {a}, {b}");
    if small {
        assert_eq!(read_requests(&bytewise, false), requests, "requests read bytewise");
    }
    // The connection loop's gate may leave a bad head waiting for more bytes where a
    // parse would refuse it, but it must never miss a head or read one differently.
    let gated = if small { read_requests(&bytewise, true) } else { read_requests(&three, true) };
    assert_eq!(gated.messages, requests.messages, "requests read through the head-end gate");

    let head_request = h & 0x100 != 0;
    let responses = read_responses(&whole, head_request);
    for m in &responses.messages {
        check_response(m, head_request);
        round_trip_response(m, head_request, h >> 8);
    }
    assert_eq!(read_responses(&two, head_request), responses, "responses read in two pieces at {a}");
    assert_eq!(read_responses(&three, head_request), responses, "responses read in three pieces at {a}, {b}");
    if small {
        assert_eq!(read_responses(&bytewise, head_request), responses, "responses read bytewise");
    }
});
