//! Requests weir refuses to forward because an upstream could frame them
//! differently from weir (request smuggling), checked before routing.
//!
//! The HTTP/1 parsers (weir's own server, `listener::h1`, and hyper's on TLS) already
//! refuse most of these (obs-fold, bare CR, NUL and control characters, invalid
//! names, conflicting `Content-Length`, a `Transfer-Encoding` that does not end in
//! `chunked`, `Transfer-Encoding` in HTTP/1.0); given both `Content-Length` and
//! `Transfer-Encoding`, weir's server refuses the request and hyper drops the length
//! and closes the connection after the response (RFC 9112 §6.3). What they let
//! through and this module refuses: a missing or repeated `Host`, a `Host` with
//! bytes no authority has, and transfer codings other than a single `chunked`.
//! HTTP/1.0 may omit `Host`, but weir forwards HTTP/1.1, which must carry one, and
//! there is no right value to invent: such a request is refused too.
//! Reads headers only; allocates nothing.

use http::header::{self, HeaderMap};
use http::{Request, Version};

pub mod chunked;

use super::error::ProxyError;

/// What a message's `Connection` header says about the connection (RFC 9112 §9.3),
/// noted value by value in the pass that builds a header map. Shared by weir's
/// HTTP/1.1 server (requests) and client (responses).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl ConnectionOptions {
    /// Notes the options of one `Connection` value.
    pub fn note(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            self.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
        }
    }

    /// Whether the connection may carry another message after this one: in
    /// HTTP/1.1 unless `close`; in HTTP/1.0 only with `keep-alive`.
    pub fn persist(&self, version: Version) -> bool {
        match version {
            Version::HTTP_11 => !self.close,
            _ => self.keep_alive && !self.close,
        }
    }
}

/// Whether a `Transfer-Encoding` value ends in `chunked`: only then is a message
/// framed by chunks (RFC 9112 §6.3). Of several headers, the last one decides.
pub fn ends_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Fields a sender must not put in trailers (RFC 9110 §6.5.1): framing, routing,
/// request modifiers, authentication, response control, how to process the content,
/// and the hop-by-hop ones. A recipient that merged them into the header section
/// (many do) would let a body's end reshape its request, so they are dropped from a
/// request's trailers before forwarding.
static FORBIDDEN_TRAILERS: [&str; 26] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
    "expect",
    "max-forwards",
    "cache-control",
    "pragma",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-encoding",
    "content-type",
    "content-range",
    "age",
];

/// Removes from `trailers` the fields no trailer may carry (`FORBIDDEN_TRAILERS`).
pub fn strip_forbidden_trailers(trailers: &mut HeaderMap) {
    for name in FORBIDDEN_TRAILERS {
        trailers.remove(name);
    }
}

/// `Ok` when `req` is unambiguous to forward; else the error to answer with.
pub fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let headers = req.headers();
    check_host(headers, req.version())?;
    check_transfer_coding(headers)
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without `Host`,
/// to any request with more than one, or with an invalid value. Routing and the
/// upstream would otherwise each pick their own. HTTP/1.0 is held to the same rule
/// because it leaves as HTTP/1.1.
fn check_host(headers: &HeaderMap, version: Version) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest { reason: "more than one Host header" }),
        (Some(host), None) if !host.as_bytes().iter().all(|&b| is_authority_byte(b)) => {
            Err(ProxyError::BadRequest { reason: "invalid Host header" })
        }
        // h2 carries the host in `:authority`.
        (None, _) if version < Version::HTTP_2 => Err(ProxyError::BadRequest { reason: "no Host header" }),
        _ => Ok(()),
    }
}

/// RFC 3986 authority bytes: unreserved, sub-delims, `%`, `:`, `[`, `]`, `@`. A
/// table, since every request's `Host` goes through it byte by byte.
fn is_authority_byte(b: u8) -> bool {
    AUTHORITY[usize::from(b)]
}

static AUTHORITY: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=%:[]@";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// RFC 9112 §6.1 and §6.3: `chunked` is the only transfer coding weir decodes, and
/// a message with both `Transfer-Encoding` and `Content-Length` is ambiguous. Any
/// other coding would be dropped when weir re-frames the body, so it is refused
/// (501, as RFC 9112 §6.1 advises for codings a server does not understand).
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(());
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest { reason: "both Content-Length and Transfer-Encoding" });
    }
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ProxyError::UnsupportedTransferCoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn connection_options_decide_persistence_per_version() {
        let of = |values: &[&str]| {
            let mut options = ConnectionOptions::default();
            for v in values {
                options.note(v.as_bytes());
            }
            options
        };
        assert!(of(&[]).persist(Version::HTTP_11));
        assert!(!of(&["keep-alive, Close"]).persist(Version::HTTP_11));
        assert!(!of(&[]).persist(Version::HTTP_10));
        assert!(of(&[" Keep-Alive "]).persist(Version::HTTP_10));
        assert!(of(&["x-a", "upgrade"]).upgrade);
        assert!(!of(&["upgraded"]).upgrade);
    }

    #[test]
    fn only_a_last_coding_of_chunked_frames_by_chunks() {
        assert!(ends_chunked(b"chunked"));
        assert!(ends_chunked(b"gzip, Chunked "));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert!(!ends_chunked(b"xchunked"));
        assert!(!ends_chunked(b""));
    }

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn status(version: Version, headers: &[(&str, &str)]) -> Option<StatusCode> {
        check(&request(version, headers)).err().map(|e| e.status())
    }

    #[test]
    fn the_authority_table_matches_rfc_3986() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]@".contains(&b);
            assert_eq!(is_authority_byte(b), expected, "byte {b}");
        }
    }

    #[test]
    fn one_valid_host_passes() {
        assert_eq!(status(Version::HTTP_11, &[("host", "example.com:8080")]), None);
        assert_eq!(status(Version::HTTP_11, &[("host", "[::1]:80")]), None);
    }

    #[test]
    fn missing_host_is_refused_in_http1_only() {
        assert_eq!(status(Version::HTTP_11, &[]), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(Version::HTTP_10, &[]), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(Version::HTTP_2, &[]), None);
    }

    #[test]
    fn repeated_or_invalid_host_is_refused() {
        let two = [("host", "a.example"), ("host", "b.example")];
        assert_eq!(status(Version::HTTP_11, &two), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(Version::HTTP_10, &two), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(Version::HTTP_11, &[("host", "a b")]), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(Version::HTTP_11, &[("host", "a/b")]), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn only_a_single_chunked_coding_is_forwarded() {
        let h = |te: &'static str| [("host", "a"), ("transfer-encoding", te)];
        assert_eq!(status(Version::HTTP_11, &h("chunked")), None);
        assert_eq!(status(Version::HTTP_11, &h("Chunked")), None);
        assert_eq!(status(Version::HTTP_11, &h("gzip, chunked")), Some(StatusCode::NOT_IMPLEMENTED));
        assert_eq!(status(Version::HTTP_11, &h("chunked, chunked")), Some(StatusCode::NOT_IMPLEMENTED));
        let two = [("host", "a"), ("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")];
        assert_eq!(status(Version::HTTP_11, &two), Some(StatusCode::NOT_IMPLEMENTED));
    }

    #[test]
    fn trailers_that_would_reshape_a_request_are_dropped() {
        let mut t = HeaderMap::new();
        for name in ["content-length", "Host", "transfer-encoding", "connection", "x-checksum", "grpc-status"]
        {
            t.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), "1".parse().unwrap());
        }
        strip_forbidden_trailers(&mut t);
        let mut left: Vec<_> = t.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let both = [("host", "a"), ("transfer-encoding", "chunked"), ("content-length", "5")];
        assert_eq!(status(Version::HTTP_11, &both), Some(StatusCode::BAD_REQUEST));
    }
}
