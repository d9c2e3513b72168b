//! Requests weir refuses to forward because an upstream could frame them
//! differently from weir (request smuggling), checked before routing.
//!
//! The HTTP/1 parsers (weir's own codec, `http::h1`, and hyper's on TLS) already
//! refuse most of these (obs-fold, bare CR, NUL and control characters, invalid
//! names, conflicting `Content-Length`, a `Transfer-Encoding` that does not end in
//! `chunked`, `Transfer-Encoding` in HTTP/1.0); given both `Content-Length` and
//! `Transfer-Encoding`, weir's server refuses the request and hyper drops the length
//! and closes the connection after the response (RFC 9112 §6.3). What they let
//! through and this module refuses: a missing or repeated `Host`, a `Host` with
//! bytes no authority has, and transfer codings other than a single `chunked`.
//! HTTP/1.0 may omit `Host`, but weir forwards HTTP/1.1, which must carry one, and
//! there is no right value to invent: such a request is refused too. Also refused:
//! userinfo in `Host` or in an h2 `:authority` (RFC 9110 §7.2, RFC 9113 §8.3.1), and
//! more than `MAX_HEADERS` fields in any version (`431`). `check` reads headers only
//! and allocates nothing.
//!
//! `sanitize` then takes out of an accepted request what a client may send but must
//! not pass on: userinfo in an absolute-form target, header names with `_` (unless the
//! listener keeps them), and h2 `cookie` crumbs, joined into one field. It allocates
//! only when there is something to change.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Request, Version};

use super::error::ProxyError;
use crate::http::h1::framing::tokens;
pub use crate::http::h1::framing::MAX_HEADERS;
use crate::http::h1::server::RequestLines;

/// `Ok` when `req` is unambiguous to forward; else the error to answer with.
pub fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let headers = req.headers();
    check_field_count(headers)?;
    check_host(headers, req.version())?;
    check_authority(req)?;
    check_transfer_coding(headers)
}

/// `check` and `sanitize` for a request whose fields are lines (`RequestLines`, from
/// weir's HTTP/1.1 server): `true` when both would pass it and change nothing: no
/// authority in the target, exactly one `Host`, which `check` takes, and no name
/// with `_` unless `keep_underscores`. The rest holds already: the codec keeps no
/// `Transfer-Encoding` as lines, and httparse stops at `MAX_HEADERS` fields.
/// `false`: the caller builds the map and runs `check` and `sanitize` on it, so every
/// refusal is theirs.
pub fn lines_pass<B>(req: &Request<B>, lines: &RequestLines, keep_underscores: bool) -> bool {
    req.uri().authority().is_none()
        && lines.hosts == 1
        && lines.host().is_some_and(host_is_valid)
        && (keep_underscores || !lines.underscore)
}

/// HTTP/1.1's parsers refuse a head of more than `MAX_HEADERS` fields with `431`;
/// HTTP/2 would otherwise pass any number within `max_header_size`. The `cookie`
/// crumbs an h2 client may split its cookie into count as the one field they are
/// joined into (`sanitize`).
fn check_field_count(headers: &HeaderMap) -> Result<(), ProxyError> {
    if headers.len() <= MAX_HEADERS {
        return Ok(());
    }
    let crumbs = headers.get_all(header::COOKIE).iter().count();
    if headers.len() - crumbs.saturating_sub(1) > MAX_HEADERS {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// Userinfo in the target's authority: refused in h2's `:authority` (RFC 9113
/// §8.3.1 makes it malformed); in an HTTP/1.1 absolute-form target it is dropped by
/// `sanitize`, which needs a host behind it.
fn check_authority<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let Some((_, host)) = req.uri().authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return Ok(());
    };
    if req.version() >= Version::HTTP_2 {
        return Err(ProxyError::BadRequest { reason: "userinfo in :authority" });
    }
    // `http::Uri` refuses `http://user@/` already; kept so `sanitize` never depends on it.
    if host.is_empty() {
        return Err(ProxyError::BadRequest { reason: "no host in the request target" });
    }
    Ok(())
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without `Host`,
/// to any request with more than one, or with an invalid value. Routing and the
/// upstream would otherwise each pick their own. HTTP/1.0 is held to the same rule
/// because it leaves as HTTP/1.1.
fn check_host(headers: &HeaderMap, version: Version) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest { reason: "more than one Host header" }),
        // `user@host` would be routed on one host and read as another by some servers.
        (Some(host), None) if host.as_bytes().contains(&b'@') => {
            Err(ProxyError::BadRequest { reason: "userinfo in Host header" })
        }
        (Some(host), None) if !host_is_valid(host.as_bytes()) => {
            Err(ProxyError::BadRequest { reason: "invalid Host header" })
        }
        // h2 carries the host in `:authority`.
        (None, _) if version < Version::HTTP_2 => Err(ProxyError::BadRequest { reason: "no Host header" }),
        _ => Ok(()),
    }
}

/// A `Host` value `check` takes: authority bytes only, and no userinfo.
fn host_is_valid(host: &[u8]) -> bool {
    !host.contains(&b'@') && host.iter().all(|&b| is_authority_byte(b))
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
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| tokens(v.as_bytes()));
    match (codings.next(), codings.next()) {
        (Some(only), None) if only.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ProxyError::UnsupportedTransferCoding),
    }
}

/// Takes out of an accepted request what must not reach the upstream (see the
/// module's doc). `keep_underscores`: the listener's `underscores_in_headers`.
pub fn sanitize<B>(req: &mut Request<B>, keep_underscores: bool) {
    if !keep_underscores {
        drop_underscored(req.headers_mut());
    }
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    drop_userinfo(req.uri_mut());
}

/// Removes every header whose name has `_`: CGI, WSGI, PHP and others read `X_Real_IP`
/// as `X-Real-IP`, so a client could otherwise pass a header that weir sets, checks
/// or strips under another spelling (nginx drops them too, `underscores_in_headers`).
/// One scan of the names when there is none.
fn drop_underscored(headers: &mut HeaderMap) {
    let underscored = |name: &HeaderName| name.as_str().as_bytes().contains(&b'_');
    if !headers.keys().any(underscored) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| underscored(n)).cloned().collect();
    for name in &names {
        headers.remove(name);
    }
}

/// RFC 9113 §8.2.3: an h2 client may split `cookie` into several fields; an
/// HTTP/1.1 server expects one, joined with `; `.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(256);
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Joined valid values with `; ` are a valid value.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(header::COOKIE, value);
    }
}

/// `http://user:pass@host/`: the userinfo is dropped, so it never reaches the
/// upstream as part of `Host` or `X-Forwarded-Host` (`check` made sure a host
/// follows it).
fn drop_userinfo(uri: &mut Uri) {
    let Some((_, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else { return };
    let Ok(authority) = host.parse::<Authority>() else { return };
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(stripped) = Uri::from_parts(parts) {
        *uri = stripped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

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
    fn userinfo_in_host_or_h2_authority_is_refused() {
        assert_eq!(status(Version::HTTP_11, &[("host", "admin.internal@a")]), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(Version::HTTP_2, &[("host", "u:p@a")]), Some(StatusCode::BAD_REQUEST));
        let h2 = Request::builder().version(Version::HTTP_2).uri("https://u@a/").body(()).unwrap();
        assert_eq!(check(&h2).err().map(|e| e.status()), Some(StatusCode::BAD_REQUEST));
        // HTTP/1.1 absolute-form: dropped by `sanitize`, if a host follows.
        let absolute = Request::builder().uri("http://u@a/").header("host", "a").body(()).unwrap();
        assert!(check(&absolute).is_ok());
    }

    #[test]
    fn more_than_max_headers_fields_is_431_with_cookie_crumbs_counted_once() {
        let mut req = request(Version::HTTP_2, &[]);
        for i in 0..MAX_HEADERS {
            req.headers_mut().append("cookie", HeaderValue::from_str(&format!("c{i}=1")).unwrap());
        }
        req.headers_mut().insert("x-a", HeaderValue::from_static("1"));
        assert!(check(&req).is_ok(), "101 fields, 100 of them cookie crumbs: 2 fields");
        for i in 0..MAX_HEADERS {
            req.headers_mut().insert(HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(), 1.into());
        }
        assert_eq!(check(&req).err().map(|e| e.status()), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }

    #[test]
    fn sanitize_drops_underscores_userinfo_and_joins_h2_cookies() {
        let mut req = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://a.test/x")
            .header("x_forwarded_for", "1.2.3.4")
            .header("x-real", "1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("my_id", "z")
            .body(())
            .unwrap();
        sanitize(&mut req, false);
        let mut names: Vec<_> = req.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["cookie", "x-real"]);
        assert_eq!(req.headers().get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);

        let mut kept = request(Version::HTTP_11, &[("x_a", "1"), ("cookie", "a=1"), ("cookie", "b=2")]);
        sanitize(&mut kept, true);
        assert!(kept.headers().contains_key("x_a"));
        assert_eq!(kept.headers().get_all("cookie").iter().count(), 2, "HTTP/1.1 cookies are left as sent");

        let mut absolute = Request::builder().uri("http://user:pw@a.test:8080/p?q").body(()).unwrap();
        sanitize(&mut absolute, false);
        assert_eq!(absolute.uri(), "http://a.test:8080/p?q");
    }

    #[test]
    fn trailers_that_would_reshape_a_request_are_dropped() {
        let mut t = HeaderMap::new();
        for name in ["content-length", "Host", "transfer-encoding", "connection", "x-checksum", "grpc-status"]
        {
            t.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), "1".parse().unwrap());
        }
        crate::http::strip_forbidden_trailers(&mut t);
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
