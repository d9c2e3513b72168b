//! Hop-by-hop header fields (RFC 9110 §7.6.1): `Connection` and the fields it
//! names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`.
//! They belong to one connection and never cross weir. A client's are stripped first,
//! before anything reads or adds a header (`strip_client_hop_by_hop`); a server's
//! when its response arrives, and again before a cache stores it
//! (`strip_hop_by_hop`). What weir honours of them (an upgrade, `TE: trailers`) it
//! writes anew in its own words.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::upstream::client::TE_TRAILERS;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The `Upgrade` protocol, when `Connection` asks for an upgrade.
pub(super) fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let protocol = headers.get(header::UPGRADE)?;
    headers.get_all(header::CONNECTION).iter().any(|v| has_token(v, "upgrade")).then(|| protocol.clone())
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    crate::http::h1::framing::has_token(value.as_bytes(), token.as_bytes())
}

/// Strips a client's request of its hop-by-hop headers and of every header its
/// `Connection` names, keeping only what weir honours of them, in a form weir wrote:
/// an upgrade (`Upgrade` with `Connection: upgrade`) and `TE: trailers`. `handle`
/// calls it first, before routing, shaping or the cache read a header, so a client's
/// `Connection` can never remove a header weir adds, nor hide one from a cache key.
pub fn strip_client_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop(headers);
    if present == 0 {
        return;
    }
    let upgrade = if present & UPGRADE != 0 { requested_upgrade(headers) } else { None };
    let trailers = present & TE != 0 && accepts_trailers(headers);
    strip_present(headers, present);
    if trailers {
        headers.insert(header::TE, TE_TRAILERS.clone());
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether `TE` lists `trailers`, in any of its field lines (one list, RFC 9110 §5.3).
pub(super) fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|te| has_token(te, "trailers"))
}

/// Bits of `hop_by_hop`'s answer, one per hop-by-hop header.
const CONNECTION: u8 = 1;
const TE: u8 = 1 << 1;
const TRANSFER_ENCODING: u8 = 1 << 2;
const UPGRADE: u8 = 1 << 3;
const KEEP_ALIVE_BIT: u8 = 1 << 4;
const PROXY_CONNECTION_BIT: u8 = 1 << 5;

/// Which hop-by-hop headers are present, as bits. One pass over the names: most
/// messages carry none of these, and a scan of a few standard names is cheaper than
/// hashing each of them for a lookup; the bits then spare a lookup (a hash and a
/// probe) of each one that is absent.
fn hop_by_hop(headers: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in headers.keys() {
        present |= if name == header::CONNECTION {
            CONNECTION
        } else if name == header::TE {
            TE
        } else if name == header::TRANSFER_ENCODING {
            TRANSFER_ENCODING
        } else if name == header::UPGRADE {
            UPGRADE
        } else if name == KEEP_ALIVE {
            KEEP_ALIVE_BIT
        } else if name == PROXY_CONNECTION {
            PROXY_CONNECTION_BIT
        } else {
            0
        };
    }
    present
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and every header that `Connection`
/// names, except `Host`, which routing and the upstream both rely on.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop(headers);
    if present != 0 {
        strip_present(headers, present);
    }
}

/// `strip_hop_by_hop`, knowing which are `present`.
fn strip_present(headers: &mut HeaderMap, present: u8) {
    if present & CONNECTION != 0 {
        // Usually one field line (`close`, `keep-alive`): the first is kept apart, so
        // that only a message with several lines pays for a list.
        let mut lines = headers.get_all(header::CONNECTION).iter();
        let first = lines.next().cloned();
        let rest: Vec<HeaderValue> = lines.cloned().collect();
        for value in first.iter().chain(&rest) {
            for name in crate::http::h1::framing::tokens(value.as_bytes()) {
                if name.eq_ignore_ascii_case(b"host") {
                    continue;
                }
                // Looked for among the names first: the usual tokens (`close`,
                // `keep-alive`) name no header, and a scan of a few names is cheaper
                // than a hashed lookup. Removed as text: a `HeaderName` made from a
                // name that is not a standard one would be an allocation.
                if headers.keys().any(|key| key.as_str().as_bytes().eq_ignore_ascii_case(name)) {
                    if let Ok(name) = std::str::from_utf8(name) {
                        headers.remove(name);
                    }
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    for (bit, name) in [
        (KEEP_ALIVE_BIT, &KEEP_ALIVE),
        (PROXY_CONNECTION_BIT, &PROXY_CONNECTION),
        (TE, &header::TE),
        (TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
        (UPGRADE, &header::UPGRADE),
    ] {
        if present & bit != 0 {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, X-Secret, host"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["host", "x-kept"]);
    }

    #[test]
    fn a_clients_hop_by_hop_is_stripped_but_its_upgrade_and_trailers_kept_in_weirs_words() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, x-secret, keep-alive"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_client_hop_by_hop(&mut h);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h.len(), 3, "{h:?}");
        let mut plain = HeaderMap::new();
        plain.insert("x-kept", HeaderValue::from_static("1"));
        strip_client_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn every_connection_line_names_headers_to_remove_in_any_case() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-One, , x-two"));
        h.append(header::CONNECTION, HeaderValue::from_bytes(b"x-Three, bad name, \xff").unwrap());
        for name in ["close", "x-one", "x-two", "x-three", "x-four", "host"] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-four", "host"]);
    }

    #[test]
    fn te_trailers_counts_in_any_te_line() {
        let mut h = HeaderMap::new();
        h.append(header::TE, HeaderValue::from_static("gzip"));
        h.append(header::TE, HeaderValue::from_static("trailers"));
        strip_client_hop_by_hop(&mut h);
        assert_eq!(h.get_all(header::TE).iter().collect::<Vec<_>>(), ["trailers"]);
    }
}
