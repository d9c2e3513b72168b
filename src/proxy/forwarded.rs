//! The `X-Forwarded-*` header fields weir adds to each request it forwards: in the
//! header map for h2, and written by the HTTP/1.1 client as it encodes the head
//! (`ExtraHeaders`), joined with any the client sent. A request whose fields are
//! still the lines weir's HTTP/1.1 server kept (`RequestLines`, no header map) has
//! them written here too, ahead of these, as the client writes a map's. Also the client's address as
//! text (`IpText`), written once per connection without an allocation.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::http::h1::client::ExtraHeaders;
use crate::http::h1::framing::{is_hop_by_hop, is_x_forwarded};
use crate::http::h1::server::RequestLines;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `X-Forwarded-*` headers weir adds to a request: `-Host` and `-Proto` replace
/// the client's, and the client's address is appended to its `-For`.
pub struct Forwarded<'a> {
    /// The host the client asked for, if it named one.
    pub host: Option<HeaderValue>,
    pub proto: &'static str,
    pub ip: IpText,
    /// The request's own fields when they are the lines weir's HTTP/1.1 server kept
    /// (its header map is then empty): written with these, as the HTTP/1.1 client
    /// writes a map's fields (`encode`).
    pub fields: Option<&'a RequestLines>,
}

/// A client address as the text `X-Forwarded-For` carries (`IpAddr`'s `Display`:
/// `1.2.3.4`, `::1`, `::ffff:1.2.3.4`), held inline: a connection's `Peer` makes it
/// once, with no `String`, allocation or formatting machinery (which cost about
/// 2,000 instructions per connection), and each request copies its bytes.
#[derive(Clone, Copy)]
pub struct IpText {
    len: u8,
    text: [u8; IpText::MAX],
}

impl IpText {
    /// The longest text: an IPv6 address with an embedded IPv4 one
    /// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
    const MAX: usize = 45;

    pub fn of(ip: IpAddr) -> IpText {
        let mut text = IpText { len: 0, text: [0; IpText::MAX] };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            // Rare enough on the paths that matter to take `Display`'s rules as they
            // are (zero compression, embedded IPv4).
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut out = &mut text.text[..];
                let _ = write!(out, "{v6}");
                let left = out.len();
                text.len = (IpText::MAX - left) as u8;
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.text[usize::from(self.len)] = byte;
        self.len += 1;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }

    /// As a header value, for an h2 upstream's header map.
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).unwrap_or(HeaderValue::from_static("unknown"))
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("?"))
    }
}

impl Forwarded<'_> {
    /// Sets the headers in `headers`, for a client that sends from the map (h2).
    pub(super) fn insert_into(&self, headers: &mut HeaderMap) {
        if let Some(host) = &self.host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(self.proto));
        append_forwarded_for(headers, &self.ip);
    }

    /// Whether `name` is one of the headers this replaces.
    pub fn replaces(name: &HeaderName) -> bool {
        *name == X_FORWARDED_FOR || *name == X_FORWARDED_HOST || *name == X_FORWARDED_PROTO
    }

    /// Writes the headers as HTTP/1.1 fields into `out`, joining any `X-Forwarded-For`
    /// the client sent (which `replaces` skipped) with the client's address; first the
    /// request's own fields, when they are lines (`fields`).
    pub fn encode(&self, headers: &HeaderMap, replaced: bool, out: &mut Vec<u8>) {
        let lines = self.fields;
        let lines_forward = match lines {
            // Nothing to leave out.
            Some(lines) if lines.plain => {
                out.extend_from_slice(&lines.block);
                false
            }
            Some(lines) => encode_lines(lines, out),
            None => false,
        };
        out.extend_from_slice(b"x-forwarded-for: ");
        // Looked up only when the request holds one of these fields: a lookup hashes
        // the name, and most requests carry none.
        if replaced {
            for value in headers.get_all(&X_FORWARDED_FOR) {
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        if let Some(lines) = lines.filter(|_| lines_forward) {
            for (_, value) in lines.fields().filter(|(name, _)| *name == b"x-forwarded-for") {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.ip.as_bytes());
        if let Some(host) = &self.host {
            out.extend_from_slice(b"\r\nx-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
        }
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a request's own fields kept as lines as the HTTP/1.1 client writes a map's
/// (`http::h1::client::encode_head`): all but the framing ones (`Content-Length`,
/// `Expect`: weir frames the body itself), the hop-by-hop ones (the lines hold none
/// that asks for more than leaving it out: `parse_request` keeps such heads in a
/// map) and the `X-Forwarded-*` that `encode` writes anew; copied in runs. Returns
/// whether the lines hold an `X-Forwarded-For`.
fn encode_lines(lines: &RequestLines, out: &mut Vec<u8>) -> bool {
    let block = &lines.block[..];
    let base = block.as_ptr() as usize;
    let (mut run, mut forwarded_for) = (0..0, false);
    for (name, value) in lines.fields() {
        if is_hop_by_hop(name) || name == b"content-length" || name == b"expect" || is_x_forwarded(name) {
            forwarded_for |= name == b"x-forwarded-for";
            out.extend_from_slice(&block[std::mem::take(&mut run)]);
            continue;
        }
        // The line's end: past its value and CRLF.
        let end = value.as_ptr() as usize - base + value.len() + 2;
        if run.is_empty() {
            run = name.as_ptr() as usize - base..end;
        } else {
            run.end = end;
        }
    }
    out.extend_from_slice(&block[run]);
    forwarded_for
}

impl ExtraHeaders for Forwarded<'_> {
    fn replaces(&self, name: &http::HeaderName) -> bool {
        Forwarded::replaces(name)
    }

    fn encode(&self, headers: &http::HeaderMap, replaced: bool, out: &mut Vec<u8>) {
        Forwarded::encode(self, headers, replaced, out);
    }
}

/// Appends the client's address to any `X-Forwarded-For` it sent, as one header.
fn append_forwarded_for(headers: &mut HeaderMap, ip: &IpText) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(X_FORWARDED_FOR.clone(), ip.to_header_value());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for value in existing {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_reads_as_its_display_text() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.9",
            "99.100.101.255",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "1:2:3:4:5:6:7:8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_bytes(), ip.to_string().as_bytes(), "{ip}");
            assert_eq!(IpText::of(ip).to_header_value(), ip.to_string().as_str());
        }
        // The longest text there is fits.
        let longest = "::ffff:255.255.255.255".parse::<std::net::Ipv6Addr>().unwrap();
        assert_eq!(IpText::of(IpAddr::V6(longest)).as_bytes(), longest.to_string().as_bytes());
    }
    use crate::body::Outbound;
    use crate::http::h1::client::encode_head;
    use bytes::Bytes;
    use http::header::{HeaderName, HeaderValue};
    use http::{Method, Request};

    fn request(method: Method, headers: &[(&str, &str)], body: Outbound) -> Vec<u8> {
        request_with(method, headers, body, None)
    }

    fn request_with(
        method: Method,
        headers: &[(&str, &str)],
        body: Outbound,
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
        use Outbound as B;
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
        use Outbound as B;
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
            ip: IpText::of("10.0.0.9".parse().unwrap()),
            fields: None,
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
            Outbound::Empty,
            Some(&forwarded),
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-host: a.test\r\n\
             x-forwarded-proto: https\r\n\r\n"
        );
        let bare = Forwarded {
            host: None,
            proto: "http",
            ip: IpText::of("10.0.0.9".parse().unwrap()),
            fields: None,
        };
        let head = request_with(Method::GET, &[], Outbound::Empty, Some(&bare));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }
    #[test]
    fn forwarded_for_is_appended_to_what_the_client_sent() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &IpText::of("10.0.0.1".parse().unwrap()));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("1.1.1.1"));
        append_forwarded_for(&mut h, &IpText::of("10.0.0.2".parse().unwrap()));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 1.1.1.1, 10.0.0.2");
    }
}
