//! Requests from decoded header blocks, validated per RFC 9113 §8.2 and §8.3: field
//! names lowercase, pseudo-header fields known, once each and before the regular
//! fields, no connection-specific fields, `te` only `trailers`, `:method`,
//! `:scheme` and a non-empty `:path` present (CONNECT: `:authority` only), and a
//! `content-length` that is one number. Anything else is malformed: the stream's
//! PROTOCOL_ERROR. The URI is made as hyper's server (the `h2` crate) makes it:
//! absolute when `:authority` is there, else the path alone.

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

/// The fields of one header block, as the decoder gives them.
pub struct Fields {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    /// A pseudo-header field was present (trailers may have none).
    pseudo: bool,
    headers: HeaderMap,
    malformed: Option<&'static str>,
    regular: bool,
    size: usize,
    limit: usize,
    /// Over the header list size limit: answered `431`.
    pub too_large: bool,
}

impl Fields {
    pub fn new(limit: usize) -> Fields {
        Fields {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            pseudo: false,
            headers: HeaderMap::new(),
            malformed: None,
            regular: false,
            size: 0,
            limit,
            too_large: false,
        }
    }

    /// One decoded field.
    pub fn field(&mut self, name: &[u8], value: Bytes) {
        // RFC 9113 §6.5.2: each field counts its name, value and 32 octets.
        self.size += name.len() + value.len() + 32;
        if self.size > self.limit {
            self.too_large = true;
        }
        if self.malformed.is_some() || self.too_large {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            self.pseudo = true;
            if self.regular {
                return self.malformed("a pseudo-header field after a regular one");
            }
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => return self.malformed("an unknown pseudo-header field"),
            };
            if slot.is_some() {
                return self.malformed("a pseudo-header field twice");
            }
            *slot = Some(value);
            return;
        }
        self.regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return self.malformed("an uppercase field name");
        }
        let Ok(name) = HeaderName::from_bytes(name) else {
            return self.malformed("an invalid field name");
        };
        if name == http::header::CONNECTION
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::UPGRADE
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            return self.malformed("a connection-specific field");
        }
        if name == http::header::TE && value != "trailers" {
            return self.malformed("te other than trailers");
        }
        let Ok(value) = HeaderValue::from_maybe_shared(value) else {
            return self.malformed("an invalid field value");
        };
        self.headers.append(name, value);
    }

    fn malformed(&mut self, why: &'static str) {
        self.malformed = Some(why);
    }
}

/// The request the fields make, and its `content-length`.
pub fn build(fields: Fields, end_stream: bool) -> Result<(Request<()>, Option<u64>), &'static str> {
    if let Some(why) = fields.malformed {
        return Err(why);
    }
    let method = Method::from_bytes(&fields.method.ok_or("no :method")?).map_err(|_| "an invalid :method")?;
    let connect = method == Method::CONNECT;
    let mut parts = http::uri::Parts::default();
    if let Some(authority) = fields.authority {
        parts.authority = Some(Authority::from_maybe_shared(authority).map_err(|_| "an invalid :authority")?);
    }
    if connect {
        if fields.scheme.is_some() || fields.path.is_some() {
            return Err("CONNECT with :scheme or :path");
        }
        if parts.authority.is_none() {
            return Err("CONNECT without :authority");
        }
    } else {
        let scheme = fields.scheme.ok_or("no :scheme")?;
        let path = fields.path.ok_or("no :path")?;
        if path.is_empty() {
            return Err("an empty :path");
        }
        if parts.authority.is_some() {
            parts.scheme = Some(Scheme::try_from(&scheme[..]).map_err(|_| "an invalid :scheme")?);
        }
        parts.path_and_query = Some(PathAndQuery::from_maybe_shared(path).map_err(|_| "an invalid :path")?);
    }
    let uri = Uri::from_parts(parts).map_err(|_| "an invalid URI")?;
    let length = content_length(&fields.headers)?;
    if end_stream && length.is_some_and(|n| n > 0) {
        return Err("content-length without a body");
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = fields.headers;
    Ok((req, length))
}

/// A request's trailers: regular fields only.
pub fn trailers(fields: Fields) -> Result<HeaderMap, &'static str> {
    if let Some(why) = fields.malformed {
        return Err(why);
    }
    if fields.pseudo {
        return Err("a pseudo-header field in trailers");
    }
    if fields.too_large {
        return Err("trailers over the header list size");
    }
    Ok(fields.headers)
}

/// `content-length` as one number; several equal values are one.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err("an invalid content-length");
        }
        let n = bytes.iter().fold(0u64, |n, d| n * 10 + (d - b'0') as u64);
        if length.is_some_and(|m| m != n) {
            return Err("content-lengths that differ");
        }
        length = Some(n);
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Fields {
        let mut f = Fields::new(16 * 1024);
        for (n, v) in list {
            f.field(n.as_bytes(), Bytes::copy_from_slice(v.as_bytes()));
        }
        f
    }

    const GET: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "https"), (":authority", "a.example"), (":path", "/p?q")];

    #[test]
    fn a_request_is_built_as_hyper_builds_it() {
        let mut list = GET.to_vec();
        list.push(("accept", "*/*"));
        let (req, length) = build(fields(&list), true).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "https://a.example/p?q");
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.headers()["accept"], "*/*");
        assert_eq!(length, None);
        let (req, _) =
            build(fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/x")]), true).unwrap();
        assert_eq!(req.uri(), "/x");
        let (req, _) = build(fields(&[(":method", "CONNECT"), (":authority", "a:443")]), false).unwrap();
        assert_eq!(req.uri().authority().unwrap(), "a:443");
    }

    #[test]
    fn malformed_requests_are_refused() {
        let with = |extra: &[(&str, &str)]| {
            let mut list = GET.to_vec();
            list.extend_from_slice(extra);
            build(fields(&list), false)
        };
        assert!(with(&[("Accept", "x")]).is_err());
        assert!(with(&[("connection", "close")]).is_err());
        assert!(with(&[("keep-alive", "1")]).is_err());
        assert!(with(&[("transfer-encoding", "chunked")]).is_err());
        assert!(with(&[("upgrade", "x")]).is_err());
        assert!(with(&[("te", "gzip")]).is_err());
        assert!(with(&[("te", "trailers")]).is_ok());
        assert!(with(&[(":status", "200")]).is_err());
        assert!(with(&[(":path", "/again")]).is_err());
        assert!(with(&[("a", "b"), (":foo", "x")]).is_err());
        assert!(with(&[("content-length", "x")]).is_err());
        assert!(with(&[("content-length", "1"), ("content-length", "2")]).is_err());
        assert_eq!(with(&[("content-length", "3")]).unwrap().1, Some(3));
        assert!(build(
            fields(&GET.iter().copied().chain([("content-length", "3")]).collect::<Vec<_>>()),
            true
        )
        .is_err());
        assert!(build(fields(&[(":method", "GET"), (":path", "/")]), true).is_err());
        assert!(build(fields(&[(":method", "GET"), (":scheme", "http")]), true).is_err());
        assert!(build(fields(&[(":method", "GET"), (":scheme", "http"), (":path", "")]), true).is_err());
        assert!(build(fields(&[(":scheme", "http"), (":path", "/")]), true).is_err());
        assert!(
            build(fields(&[(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")]), true).is_err()
        );
        assert!(build(fields(&[(":method", "CONNECT")]), true).is_err());
    }

    #[test]
    fn trailers_have_no_pseudo_header_fields_and_lists_have_a_size() {
        assert!(trailers(fields(&[("x-sum", "1")])).is_ok());
        assert!(trailers(fields(&[(":path", "/")])).is_err());
        let mut f = Fields::new(64);
        f.field(b"x-long", Bytes::from(vec![b'a'; 40]));
        assert!(f.too_large);
    }
}
