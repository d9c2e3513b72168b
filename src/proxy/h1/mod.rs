//! weir's HTTP/1.1 client as the pipeline uses it: the codec's client connection
//! (`http::h1::client`) carrying weir's request body type, with `X-Forwarded-*` as
//! the header fields it adds to each head.

use crate::http::h1::client::ExtraHeaders;
pub use crate::http::h1::client::{Error, SendError, Stream};

use super::forward::Forwarded;

/// An upstream HTTP/1.1 connection carrying weir's request bodies.
pub type Conn = crate::http::h1::client::Conn<super::body::Body>;
/// A response body read from such a connection.
pub type Body = crate::http::h1::client::Body<super::body::Body>;

impl ExtraHeaders for Forwarded {
    fn replaces(&self, name: &http::HeaderName) -> bool {
        Forwarded::replaces(name)
    }

    fn encode(&self, headers: &http::HeaderMap, out: &mut Vec<u8>) {
        Forwarded::encode(self, headers, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::h1::client::encode_head;
    use bytes::Bytes;
    use http::header::{HeaderName, HeaderValue};
    use http::{Method, Request};

    fn request(method: Method, headers: &[(&str, &str)], body: crate::proxy::body::Body) -> Vec<u8> {
        request_with(method, headers, body, None)
    }

    fn request_with(
        method: Method,
        headers: &[(&str, &str)],
        body: crate::proxy::body::Body,
        forwarded: Option<&Forwarded>,
    ) -> Vec<u8> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let mut out = Vec::new();
        encode_head(&req, forwarded, &mut out);
        out
    }

    #[test]
    fn request_heads_carry_the_framing_weir_sends() {
        use crate::proxy::body::Body as B;
        let get = request(Method::GET, &[("host", "a")], B::Empty);
        assert_eq!(get, b"GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        let post = request(Method::POST, &[], B::Empty);
        assert_eq!(post, b"POST /p?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let full = request(Method::PUT, &[], B::from(Bytes::from_static(b"abc")));
        assert_eq!(full, b"PUT /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        let kept = request(Method::PUT, &[("content-length", "3")], B::from(Bytes::from_static(b"abc")));
        assert_eq!(kept, b"PUT /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
    }

    #[test]
    fn framing_headers_in_the_map_never_reach_the_head() {
        use crate::proxy::body::Body as B;
        let text = |head: Vec<u8>| String::from_utf8(head).unwrap();
        // A request copied from a client's (a cache refresh) with the client's length
        // but no body: the server must not wait for one.
        let stale = request(Method::GET, &[("host", "a"), ("content-length", "41")], B::Empty);
        assert_eq!(text(stale), "GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        let post = request(Method::POST, &[("content-length", "41"), ("expect", "100-continue")], B::Empty);
        assert_eq!(text(post), "POST /p?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let body = B::from(Bytes::from_static(b"abc"));
        let chunked =
            request(Method::POST, &[("transfer-encoding", "chunked"), ("content-length", "9")], body);
        assert_eq!(text(chunked), "POST /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        let hop = request(
            Method::GET,
            &[
                ("connection", "content-length, x-a"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "gzip"),
                ("upgrade", "websocket"),
                ("x-a", "1"),
            ],
            B::Empty,
        );
        assert_eq!(
            text(hop),
            "GET /p?q=1 HTTP/1.1\r\nx-a: 1\r\n\r\n",
            "no upgrade without Connection: upgrade"
        );
        let upgrade = request(
            Method::GET,
            &[("upgrade", "websocket"), ("connection", "upgrade"), ("te", "trailers")],
            B::Empty,
        );
        assert_eq!(
            text(upgrade),
            "GET /p?q=1 HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\nte: trailers\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_headers_replace_the_clients_and_extend_its_chain() {
        let forwarded = Forwarded {
            host: Some(HeaderValue::from_static("a.test")),
            proto: "https",
            ip: HeaderValue::from_static("10.0.0.9"),
        };
        let head = request_with(
            Method::GET,
            &[
                ("host", "a.test"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-proto", "spoofed"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-host", "evil.test"),
                ("accept", "*/*"),
            ],
            crate::proxy::body::Body::Empty,
            Some(&forwarded),
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-host: a.test\r\n\
             x-forwarded-proto: https\r\n\r\n"
        );
        let bare = Forwarded { host: None, proto: "http", ip: HeaderValue::from_static("10.0.0.9") };
        let head = request_with(Method::GET, &[], crate::proxy::body::Body::Empty, Some(&bare));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }
}
