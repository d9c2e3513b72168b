//! The server role's half of the codec: request heads parsed in place from the
//! connection's read buffer (their header values share it), the request's framing
//! decided in the same pass (RFC 9112 §6), its fields put in a header map or, for a
//! handler that takes them so, kept as the lines the client sent
//! (`parse_request`, `RequestLines`), and response heads encoded into a buffer the
//! connection keeps. The connection loop that drives them is
//! `listener::h1`; request bodies are `body`.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use super::body::Decode;
use super::chunked::Chunked;
use super::encode::{push_field, push_length};
use super::framing::{
    ends_chunked, has_token, is_hop_by_hop, is_x_forwarded, parse_length, ConnectionOptions, MAX_HEADERS,
};
use super::head::{connection_names_a_field, range_of, Field};
use crate::socket::ReadHalf;

/// The connection's reading side: its socket half and the bytes read and not yet
/// consumed. Request header values are slices of `buf`.
pub struct ReadSide {
    pub io: ReadHalf,
    pub buf: BytesMut,
}

/// A request head's facts that the connection needs after `handle` took the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    /// The request's body framing; `Done` for none.
    pub body: Decode,
    pub version: Version,
    pub head_method: bool,
    /// The connection may carry another request, as far as the request says.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header.
    pub upgrade: bool,
    /// `TE: trailers`: a chunked response may end with trailers (as hyper, which
    /// sends them only then).
    pub trailers: bool,
}

/// Parses a request head at the start of `buf`, consuming it. `Ok(None)`: more bytes
/// are needed. `Err`: the status to refuse it with (the connection then closes).
/// The request's body is `B::default()`, for the caller to set in place (a request
/// mapped to another body type is moved, a copy of its head).
pub fn parse_head<B: Default>(
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
    max_head: usize,
) -> Result<Option<(Request<B>, Head)>, StatusCode> {
    Ok(parse_request(buf, fields, max_head, false)?.map(|(req, head, _)| (req, head)))
}

/// A parsed request: the request, what the connection needs of its head, and its
/// fields as lines when they were kept so (`parse_request`).
pub type Parsed<B> = (Request<B>, Head, Option<RequestLines>);

/// `parse_head`, but with `lines`, a head whose fields are written as weir writes
/// them once their names are lowercased (`name: value` CRLF, which most clients
/// send) keeps them as those lines (`RequestLines`, names lowercased in place) and
/// leaves the request's header map empty: no map is built unless something asks for
/// one (`RequestLines::append_to` builds the very map this would have). A head
/// written otherwise, or holding what only the map's rules handle (a repeated
/// `Content-Length`, `Transfer-Encoding`, `TE`, `Upgrade`, a `Connection` that names
/// a field the head holds), gets its map at once, and no lines.
pub fn parse_request<B: Default>(
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
    max_head: usize,
    lines: bool,
) -> Result<Option<Parsed<B>>, StatusCode> {
    fields.clear();
    let (len, method, target, minor) = {
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, &mut storage)
            .map_err(|e| match e {
                httparse::Error::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            })?;
        let httparse::Status::Complete(len) = status else {
            if buf.len() >= max_head {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            return Ok(None);
        };
        if len > max_head {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        let base = buf.as_ptr() as usize;
        fields.extend(req.headers.iter().map(|h| Field::of(base, h)));
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        let target = range_of(base, req.path.unwrap_or_default().as_bytes());
        (len, method, target, req.version.unwrap_or(1))
    };
    // One pass over the fields: the framing, and whether they can stay lines.
    let mut framing = RequestFraming::default();
    let (mut as_lines, mut plain, mut connection, mut underscore) = (lines, true, false, false);
    let (mut host, mut hosts) = (None, 0u8);
    // Where the lines end so far: each must start where the last one ended.
    let mut block: Option<std::ops::Range<usize>> = None;
    for field in fields.iter() {
        if as_lines {
            field.lowercase_name(buf);
        }
        let (name, value) = (field.name(buf), field.value_bytes(buf));
        let kept = framing.note(name, value)?;
        if !as_lines {
            continue;
        }
        match (field.as_written(buf), &mut block) {
            (Some(line), Some(block)) if block.end == line.start => block.end = line.end,
            (Some(line), None) => block = Some(line),
            _ => as_lines = false,
        }
        if name == b"host" {
            host = host.or(Some(field.value_range()));
            hosts = hosts.saturating_add(1);
        }
        underscore |= name.contains(&b'_');
        if is_x_forwarded(name) {
            plain = false;
        }
        if is_hop_by_hop(name) || name == b"content-length" || name == b"expect" {
            plain = false;
            connection |= name == b"connection";
            // Kept for the map's rules: the strip that rewrites them, the codings
            // weir refuses, a repeated length.
            as_lines &= kept && name != b"transfer-encoding" && name != b"te" && name != b"upgrade";
        }
    }
    if as_lines && connection {
        as_lines = !connection_names_a_field(fields, buf);
    }
    let head = buf.split_to(len).freeze();
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let uri = parse_target(&method, head.slice(target))?;
    // The map is built in place: a map made apart and moved in would cost the drop of
    // the request's empty one.
    let mut req = Request::new(B::default());
    let lines = if as_lines {
        let block = block.unwrap_or(0..0);
        // The `Host` value's place in the block (a head is far under 4 GiB).
        let host = host.map_or((0, 0), |value: std::ops::Range<usize>| {
            ((value.start - block.start) as u32, (value.end - block.start) as u32)
        });
        Some(RequestLines { block: head.slice(block), host, hosts, plain, underscore })
    } else {
        let headers = req.headers_mut();
        headers.reserve(fields.len());
        let mut has_length = false;
        for field in fields.iter() {
            let name = field.name(&head);
            // One of two equal lengths is kept, so the request goes on with one
            // (`note` refused unequal ones).
            if name.eq_ignore_ascii_case(b"content-length") && std::mem::replace(&mut has_length, true) {
                continue;
            }
            let name = HeaderName::from_bytes(name).map_err(|_| StatusCode::BAD_REQUEST)?;
            // SAFETY: httparse accepted this value, and it accepts exactly the bytes a
            // `HeaderValue` may hold (HTAB, 0x20-0x7E, 0x80-0xFF); `http` still checks
            // this in debug builds.
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(field.value(&head)) };
            headers.append(name, value);
        }
        None
    };
    let head = framing.decide(&method, version)?;
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    Ok(Some((req, head, lines)))
}

/// A request's header fields as the lines the client sent (`parse_request`), for a
/// handler that can forward them as they are and build a header map only when
/// something needs one.
#[derive(Debug, Clone)]
pub struct RequestLines {
    /// The fields as `name: value` CRLF lines, names lowercased, in the client's
    /// order: a slice of the head, sharing it. Every field is here, hop-by-hop and
    /// framing ones too, as in the map `parse_head` builds.
    pub block: Bytes,
    /// No line is a framing field (`Content-Length`, `Expect`), a hop-by-hop one
    /// (`framing::HOP_BY_HOP`) or an `X-Forwarded-*` one a proxy writes itself
    /// (`framing::is_x_forwarded`): the block can go on as it is, one copy.
    pub plain: bool,
    /// Where the first `Host` value sits in `block` (start, end), if `hosts > 0`.
    /// Small, as the whole struct: it rides inside every request's future.
    pub host: (u32, u32),
    /// How many `Host` fields there are (at most 255 counted).
    pub hosts: u8,
    /// A name holds `_` (which CGI and others read as `-`).
    pub underscore: bool,
}

impl RequestLines {
    /// The fields, as (name, value).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        super::encode::fields(&self.block)
    }

    /// The first `Host` value.
    pub fn host(&self) -> Option<&[u8]> {
        let (start, end) = self.host;
        (self.hosts > 0).then(|| &self.block[start as usize..end as usize])
    }

    /// The first value of the field `name` (lowercase); `block.slice_ref` shares it.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields().find(|(n, _)| *n == name).map(|(_, value)| value)
    }

    /// Appends the fields to `headers`: with an empty map, the very map
    /// `parse_head` builds of the same head.
    pub fn append_to(&self, headers: &mut http::HeaderMap) {
        headers.reserve(self.fields().count());
        for (name, value) in self.fields() {
            // httparse took the name as a token: it is a valid name.
            let Ok(name) = HeaderName::from_bytes(name) else { continue };
            // SAFETY: httparse accepted this value (see `parse_request`).
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(self.block.slice_ref(value)) };
            headers.append(name, value);
        }
    }
}

/// Whether `buf` holds the blank line that ends a head (CRLF CRLF, or with bare LFs,
/// which httparse takes too) ending at or after `from`.
pub fn has_head_end(buf: &[u8], from: usize) -> bool {
    (from.max(1)..buf.len()).any(|p| {
        buf[p] == b'\n' && (buf[p - 1] == b'\n' || (p >= 2 && buf[p - 1] == b'\r' && buf[p - 2] == b'\n'))
    })
}

/// The request target as a `Uri`: origin-form, absolute-form, `*` for OPTIONS and
/// authority-form for CONNECT (RFC 9112 §3.2); anything else is refused.
fn parse_target(method: &Method, target: Bytes) -> Result<Uri, StatusCode> {
    let (origin, asterisk) = (target.first() == Some(&b'/'), &target[..] == b"*");
    if asterisk && method != Method::OPTIONS {
        return Err(StatusCode::BAD_REQUEST);
    }
    let uri = Uri::from_maybe_shared(target).map_err(|_| StatusCode::BAD_REQUEST)?;
    let absolute = uri.scheme().is_some();
    let authority = method == Method::CONNECT && uri.authority().is_some();
    if origin || asterisk || absolute || authority {
        Ok(uri)
    } else {
        Err(StatusCode::BAD_REQUEST)
    }
}

/// What a request's headers say about its framing, gathered in the one pass over
/// its fields.
#[derive(Default)]
struct RequestFraming {
    length: Option<u64>,
    /// `Transfer-Encoding` is present; `chunked`: its last coding is chunked.
    coded: bool,
    chunked: bool,
    connection: ConnectionOptions,
    expect_continue: bool,
    trailers: bool,
    has_upgrade: bool,
}

impl RequestFraming {
    /// Notes one header (its name in any case); `Ok(false)`: a repeat of an equal
    /// `Content-Length`, which is kept once so the request goes on with one.
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<bool, StatusCode> {
        // By length first: most names are none of these.
        if !matches!(name.len(), 2 | 6 | 7 | 10 | 14 | 17) {
            return Ok(true);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or(StatusCode::BAD_REQUEST)?;
            let repeat = self.length.is_some();
            if self.length.is_some_and(|l| l != n) {
                return Err(StatusCode::BAD_REQUEST);
            }
            self.length = Some(n);
            return Ok(!repeat);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.coded = true;
            self.chunked = ends_chunked(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection.note(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.has_upgrade = true;
        } else if name.eq_ignore_ascii_case(b"te") {
            self.trailers |= has_token(value, b"trailers");
        } else if name.eq_ignore_ascii_case(b"expect") {
            self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(true)
    }

    /// The body's framing (RFC 9112 §6) and the connection's fate as the request
    /// sees it.
    fn decide(self, method: &Method, version: Version) -> Result<Head, StatusCode> {
        let body = match (self.coded, self.length) {
            // RFC 9112 §6.1: a coding in HTTP/1.0 is faulty framing; a length next to
            // a coding could be read either way by the next hop.
            (true, _) if version == Version::HTTP_10 => return Err(StatusCode::BAD_REQUEST),
            (true, Some(_)) => return Err(StatusCode::BAD_REQUEST),
            (true, None) if !self.chunked => return Err(StatusCode::BAD_REQUEST),
            (true, None) => Decode::Chunked(Chunked::new()),
            (false, Some(n)) if n > 0 => Decode::Length(n),
            _ => Decode::Done,
        };
        Ok(Head {
            body,
            version,
            head_method: method == Method::HEAD,
            keep_alive: self.connection.persist(version),
            expect_continue: self.expect_continue && version == Version::HTTP_11 && body != Decode::Done,
            upgrade: self.connection.upgrade && self.has_upgrade,
            trailers: self.trailers,
        })
    }
}

/// The `Date` header's value, formatted again only when the second changes.
pub struct Date {
    second: u64,
    text: [u8; 29],
}

impl Default for Date {
    fn default() -> Self {
        Date { second: 0, text: [b' '; 29] }
    }
}

impl Date {
    pub fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            use std::io::Write as _;
            let _ = write!(&mut self.text[..], "{}", httpdate::HttpDate::from(now));
            self.second = second;
        }
        &self.text
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, size unknown).
    Eof,
}

/// Header fields a response body carries already encoded, as `name: value\r\n`
/// lines (a cached response's, stored that way; a server's, as weir's HTTP/1.1
/// client parsed them, `response::parse_head_into`), and what the encoder must know
/// of them. They are written as they are, before the response's own headers, and are
/// trusted to hold no framing or hop-by-hop field but the `Content-Length` they say.
#[derive(Debug, Clone, Copy)]
pub struct Encoded<'a> {
    pub fields: &'a [u8],
    /// They hold a `Date`.
    pub date: bool,
    /// They hold this `Content-Length`.
    pub length: Option<u64>,
}

/// Writes the response head into `out` (cleared first): the status line, the
/// response's headers (`encoded` first, if any), and what framing and the connection
/// need: `Content-Length` when the size is known (`size`, the body's exact size hint),
/// chunked for HTTP/1.1 when not, close-delimited for HTTP/1.0; `Connection: close`
/// when the connection ends after it, `keep-alive` for an HTTP/1.0 client it stays
/// open for; `Date` unless the response has one. Returns the body's framing and
/// whether the connection may carry another request.
pub fn encode_head<B>(
    out: &mut Vec<u8>,
    response: &Response<B>,
    encoded: Option<Encoded>,
    size: Option<u64>,
    head: &Head,
    stopping: bool,
    date: &mut Date,
) -> (Out, bool) {
    let status = response.status();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_date, mut length, mut close) = (false, None, false);
    // RFC 9110 §8.6: no `Content-Length` with a 1xx, 204 or 304.
    let no_length =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if let Some(encoded) = encoded {
        out.extend_from_slice(encoded.fields);
        has_date = encoded.date;
        length = encoded.length.filter(|_| !no_length);
    }
    for (name, value) in response.headers() {
        if *name == header::DATE {
            has_date = true;
        } else if *name == header::CONTENT_LENGTH {
            // One that is not a number frames nothing: it is left out, and the
            // body's own size decides. A repeat goes out once.
            if no_length || length.is_some() {
                continue;
            }
            length = parse_length(value.as_bytes());
            if length.is_none() {
                continue;
            }
        } else if *name == header::CONNECTION {
            close |= has_token(value.as_bytes(), b"close");
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let mut keep = head.keep_alive && !close && !stopping;
    let bodyless = head.head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        // A HEAD answer tells the length a GET would get, when it is known.
        if head.head_method && length.is_none() {
            if let Some(n) = size.filter(|&n| n > 0) {
                push_length(out, n);
            }
        }
        Out::None
    } else if let Some(n) = length {
        Out::Length(n)
    } else if let Some(n) = size {
        push_length(out, n);
        Out::Length(n)
    } else if head.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    } else {
        keep = false;
        Out::Eof
    };
    if keep && head.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !keep && !close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        push_field(out, b"date", date.now());
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Option<(Request<()>, Head)>, StatusCode> {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf, &mut Vec::new(), 8192)
    }

    fn head(text: &str) -> Head {
        parse(text.as_bytes()).unwrap().unwrap().1
    }

    fn refused(text: &[u8]) -> StatusCode {
        parse(text).unwrap_err()
    }

    proptest::proptest! {
        /// Whatever a client sends as a head, parsing answers a request, "more", or a
        /// status to refuse it with: never a panic.
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes);
        }

        /// A head of printable fields after a valid request line parses or is refused
        /// with 400 or 431, and a parsed one keeps every field it was given.
        #[test]
        fn heads_of_arbitrary_fields_parse_or_are_refused(fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,40}"), 0..20)) {
            let mut text = String::from("GET /p HTTP/1.1\r\nhost: a\r\n");
            for (name, value) in &fields {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            match parse(text.as_bytes()) {
                Ok(Some((req, _))) => {
                    for (name, _) in &fields {
                        proptest::prop_assert!(req.headers().contains_key(name.as_str()), "{} lost", name);
                    }
                }
                Ok(None) => proptest::prop_assert!(false, "a complete head was read as partial"),
                Err(status) => proptest::prop_assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            }
        }
    }

    #[test]
    fn a_get_parses_with_its_headers_sharing_the_buffer() {
        let mut buf =
            BytesMut::from(&b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next"[..]);
        let (req, head) = parse_head::<()>(&mut buf, &mut Vec::new(), 8192).unwrap().unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "a");
        assert_eq!(req.headers().get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!((head.body, head.keep_alive, head.head_method), (Decode::Done, true, false));
        assert_eq!(&buf[..], b"GET /next", "the next request stays buffered");
    }

    fn lines_of(text: &[u8]) -> (Request<()>, Option<RequestLines>) {
        let mut buf = BytesMut::from(text);
        let (req, _, lines) = parse_request(&mut buf, &mut Vec::new(), 8192, true).unwrap().unwrap();
        (req, lines)
    }

    #[test]
    fn fields_written_as_weir_writes_them_stay_lines_that_make_the_same_map() {
        let text = b"POST /p HTTP/1.1\r\nHost: a.test\r\nX-B: 1\r\nAccept: */*\r\nX-B: 2\r\nx-c: \r\n\r\n";
        let (req, lines) = lines_of(text);
        let lines = lines.expect("kept as lines");
        assert!(req.headers().is_empty(), "no map beside the lines");
        assert_eq!(&lines.block[..], b"host: a.test\r\nx-b: 1\r\naccept: */*\r\nx-b: 2\r\nx-c: \r\n");
        assert_eq!(
            (lines.host(), lines.hosts, lines.plain, lines.underscore),
            (Some(&b"a.test"[..]), 1, true, false)
        );
        assert_eq!(lines.get(b"x-b"), Some(&b"1"[..]));
        let mut map = http::HeaderMap::new();
        lines.append_to(&mut map);
        let (parsed, _) = parse(text).unwrap().unwrap();
        assert_eq!(map, *parsed.headers(), "the map parse_head builds");
    }

    #[test]
    fn what_only_the_map_handles_gets_a_map() {
        for text in [
            &b"GET / HTTP/1.1\r\nHost:a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a \r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: x-a\r\nX-A: 1\r\n\r\n",
        ] {
            let (req, lines) = lines_of(text);
            assert!(lines.is_none(), "{}", String::from_utf8_lossy(text));
            assert!(!req.headers().is_empty(), "{}", String::from_utf8_lossy(text));
        }
        let (_, lines) = lines_of(
            b"GET / HTTP/1.1\r\nConnection: close, x-absent\r\nX_A: 1\r\nHost: a\r\nhost: b\r\n\r\n",
        );
        let lines = lines.expect("a Connection naming no field the head holds stays a line");
        assert_eq!(
            (lines.host(), lines.hosts, lines.plain, lines.underscore),
            (Some(&b"a"[..]), 2, false, true)
        );
        let (_, lines) = lines_of(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
        assert!(!lines.expect("lines").plain, "an X-Forwarded-For is written anew");
        let (_, lines) = lines_of(b"GET / HTTP/1.1\r\n\r\n");
        let lines = lines.expect("no fields are lines too");
        assert_eq!((lines.block.len(), lines.host(), lines.plain), (0, None, true));
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_431() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(refused(&big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refused(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn a_head_end_is_found_in_the_new_bytes_only() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for at in 0..head.len() {
            assert!(!has_head_end(&head[..at], 0), "{at}");
        }
        assert!(has_head_end(head, 0));
        // The end straddles what was scanned and what is new.
        assert!(has_head_end(head, head.len() - 1));
        assert!(has_head_end(b"GET / HTTP/1.1\nHost: a\n\n", 20));
        assert!(has_head_end(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 25));
    }

    #[test]
    fn targets_in_every_form() {
        let req = parse(b"GET http://h.example/p HTTP/1.1\r\n\r\n").unwrap().unwrap().0;
        assert_eq!(req.uri().authority().unwrap(), "h.example");
        assert!(parse(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap().is_some());
        assert!(parse(b"CONNECT h.example:443 HTTP/1.1\r\n\r\n").unwrap().is_some());
        assert_eq!(refused(b"GET foo HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(refused(b"GET * HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(refused(b"GET /a b HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").body, Decode::Length(5));
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body, Decode::Done);
        let chunked = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.body, Decode::Chunked(Chunked::new()));
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        let expect = head("POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n");
        assert!(expect.expect_continue);
        let upgrade = head("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(upgrade.upgrade);
        // One of two equal lengths is kept.
        let (req, _) =
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!(req.headers().get_all(header::CONTENT_LENGTH).iter().count(), 1);
    }

    #[test]
    fn ambiguous_framing_and_bad_headers_are_400() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX(A): 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A : 1\r\n\r\n",
            b"GET / HTTP/1.x\r\n\r\n",
        ] {
            assert_eq!(refused(bad), StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn encoded(response: Response<()>, size: Option<u64>, request: &str) -> (String, Out, bool) {
        let head = head(request);
        let mut out = Vec::new();
        let mut date = Date::default();
        let (framing, keep) = encode_head(&mut out, &response, None, size, &head, false, &mut date);
        (String::from_utf8(out).unwrap(), framing, keep)
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn response_heads_frame_their_bodies() {
        const GET11: &str = "GET / HTTP/1.1\r\n\r\n";
        const GET10: &str = "GET / HTTP/1.0\r\n\r\n";
        let (text, framing, keep) = encoded(response(200, &[("x-a", "1")]), Some(2), GET11);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert_eq!((framing, keep), (Out::Length(2), true));
        let (text, framing, _) = encoded(response(200, &[("content-length", "5")]), None, GET11);
        assert_eq!((text.matches("content-length").count(), framing), (1, Out::Length(5)));
        let (text, framing, _) = encoded(response(200, &[]), None, GET11);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(framing, Out::Chunked);
        // HTTP/1.0 cannot take chunks: the close ends the body.
        let (text, framing, keep) = encoded(response(200, &[]), None, GET10);
        assert!(text.contains("connection: close\r\n") && !text.contains("transfer-encoding"), "{text}");
        assert_eq!((framing, keep), (Out::Eof, false));
        let keep_alive = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let (text, _, keep) = encoded(response(200, &[]), Some(0), keep_alive);
        assert!(text.contains("connection: keep-alive\r\n") && keep, "{text}");
    }

    #[test]
    fn no_content_and_not_modified_carry_no_length_and_a_repeat_goes_out_once() {
        const GET11: &str = "GET / HTTP/1.1\r\n\r\n";
        let (text, framing, _) = encoded(response(204, &[("content-length", "0")]), Some(0), GET11);
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!(framing, Out::None);
        let (text, _, _) = encoded(response(304, &[("content-length", "9")]), Some(0), GET11);
        assert!(!text.contains("content-length"), "{text}");
        let twice = response(200, &[("content-length", "2"), ("content-length", "2")]);
        let (text, framing, _) = encoded(twice, Some(2), GET11);
        assert_eq!((text.matches("content-length").count(), framing), (1, Out::Length(2)), "{text}");
    }

    #[test]
    fn bodiless_answers_and_closing_ones() {
        let (text, framing, keep) = encoded(response(204, &[]), Some(0), "GET / HTTP/1.1\r\n\r\n");
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!((framing, keep), (Out::None, true));
        let (text, framing, _) = encoded(response(200, &[]), Some(10), "HEAD / HTTP/1.1\r\n\r\n");
        assert!(text.contains("content-length: 10\r\n"), "{text}");
        assert_eq!(framing, Out::None);
        // A refusal's `Connection: close` ends the connection, and is not doubled.
        let (text, _, keep) =
            encoded(response(400, &[("connection", "close")]), Some(0), "GET / HTTP/1.1\r\n\r\n");
        assert_eq!((text.matches("connection").count(), keep), (1, false));
        let (text, _, keep) =
            encoded(response(200, &[("date", "x")]), Some(0), "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!((text.matches("date").count(), keep), (1, false));
        assert!(text.contains("connection: close\r\n"));
    }
}
