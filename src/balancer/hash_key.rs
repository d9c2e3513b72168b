//! The affinity key `consistent_hash` hashes, taken from a request: the client's IP,
//! a header, a cookie, the path or a query parameter (`hash_key` in the config).
//!
//! Names are prepared once at build time (a `HeaderName`, the cookie and parameter
//! names); reading the key borrows from the request and allocates nothing. The hash is
//! XXH3-64 with seed 0, a published, fixed function, so every weir process on every
//! machine maps the same key to the same number (std's `DefaultHasher` makes no such
//! promise across releases, and a `RandomState` differs per process).
//!
//! Matching rules: a header's first value; a cookie by exact name across every
//! `Cookie` header; a query parameter by exact, undecoded name (`?id=7` and `?%69d=7`
//! differ), first occurrence. An IPv4 client seen through an IPv4-mapped IPv6 address
//! hashes as the IPv4 address. A request without the key gets `None`, and the
//! balancer falls back to round-robin.

use std::net::IpAddr;

use http::header::{HeaderName, COOKIE};
use http::Request;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::HashKeySpec;

/// Where a request's affinity key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(Box<str>),
    Path,
    Query(Box<str>),
}

impl HashKey {
    /// The runtime form of a validated `hash_key`.
    pub fn new(spec: &HashKeySpec) -> HashKey {
        match spec {
            HashKeySpec::ClientIp => HashKey::ClientIp,
            HashKeySpec::Header(name) => HashKey::Header(
                HeaderName::from_bytes(name.as_bytes()).expect("config validation checked the header name"),
            ),
            HashKeySpec::Cookie(name) => HashKey::Cookie(name.as_str().into()),
            HashKeySpec::Path => HashKey::Path,
            HashKeySpec::Query(name) => HashKey::Query(name.as_str().into()),
        }
    }

    /// The hash of `req`'s key, or `None` when the request does not carry it.
    pub fn hash<B>(&self, req: &Request<B>, client_ip: IpAddr) -> Option<u64> {
        match self {
            HashKey::ClientIp => Some(match client_ip.to_canonical() {
                IpAddr::V4(ip) => xxh3_64(&ip.octets()),
                IpAddr::V6(ip) => xxh3_64(&ip.octets()),
            }),
            HashKey::Header(name) => req.headers().get(name).map(|v| xxh3_64(v.as_bytes())),
            HashKey::Cookie(name) => req
                .headers()
                .get_all(COOKIE)
                .iter()
                .find_map(|v| cookie(v.as_bytes(), name.as_bytes()))
                .map(xxh3_64),
            HashKey::Path => Some(xxh3_64(req.uri().path().as_bytes())),
            HashKey::Query(name) => {
                req.uri().query().and_then(|q| parameter(q, name)).map(|v| xxh3_64(v.as_bytes()))
            }
        }
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`).
fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// The first value of parameter `name` in a query string; a bare `name` has value "".
fn parameter<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((n, v)) if n == name => Some(v),
        None if pair == name => Some(""),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn each_key_reads_its_part_of_the_request() {
        let req = request(
            "/cart/7?x=1&user=ann&user=bob",
            &[("x-user", "ann"), ("cookie", "theme=dark; sid=ann"), ("cookie", "other=1")],
        );
        let ann = Some(xxh3_64(b"ann"));
        assert_eq!(HashKey::Header(HeaderName::from_static("x-user")).hash(&req, IP), ann);
        assert_eq!(HashKey::Cookie("sid".into()).hash(&req, IP), ann);
        assert_eq!(HashKey::Query("user".into()).hash(&req, IP), ann);
        assert_eq!(HashKey::Path.hash(&req, IP), Some(xxh3_64(b"/cart/7")));
        assert_eq!(HashKey::ClientIp.hash(&req, IP), Some(xxh3_64(&[10, 0, 0, 1])));
    }

    #[test]
    fn a_missing_key_hashes_to_none() {
        let req = request("/a?us=1&userx=2", &[("cookie", "sidx=1; xsid=2")]);
        assert_eq!(HashKey::Header(HeaderName::from_static("x-user")).hash(&req, IP), None);
        assert_eq!(HashKey::Cookie("sid".into()).hash(&req, IP), None);
        assert_eq!(HashKey::Query("user".into()).hash(&req, IP), None);
        assert_eq!(HashKey::Query("user".into()).hash(&request("/a", &[]), IP), None);
    }

    #[test]
    fn mapped_ipv4_hashes_as_ipv4() {
        let req = request("/", &[]);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(HashKey::ClientIp.hash(&req, mapped), HashKey::ClientIp.hash(&req, IP));
    }

    #[test]
    fn the_hash_is_fixed_across_processes_and_releases() {
        // XXH3-64 of "ann", seed 0: a published function, so this never changes.
        assert_eq!(xxh3_64(b""), 0x2d06800538d394c2);
    }
}
