//! Hop-by-hop header fields (RFC 9110 §7.6.1): `Connection` and the fields it
//! names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`.
//! They belong to one connection and never cross weir. A client's are stripped first,
//! before anything reads or adds a header (`strip_client_hop_by_hop`), or, while its
//! fields are still the lines weir's HTTP/1.1 server kept (which then hold none that
//! asks for more than leaving it out), left out as they go up
//! (`forwarded::encode_lines`); a server's
//! when its response arrives, and again before a cache stores it
//! (`strip_hop_by_hop`). What weir honours of them (an upgrade, `TE: trailers`) it
//! writes anew in its own words. The list of names is the codec's
//! (`http::h1::framing::HOP_BY_HOP`): weir's HTTP/1.1 client skips the same fields
//! when it carries a response's head as it came (`http::h1::response`).

use http::header::{self, HeaderMap, HeaderValue};

use crate::http::h1::framing::{connection_removes, is_hop_by_hop, HOP_BY_HOP};
use crate::upstream::client::TE_TRAILERS;

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

/// Which hop-by-hop fields are present: bit `i` for `HOP_BY_HOP[i]`. One pass over
/// the names: most messages carry none of these, and a length test and a few
/// comparisons per name are cheaper than hashing each hop-by-hop name for a lookup;
/// the bits then spare a lookup (a hash and a probe) of each one that is absent.
fn hop_by_hop(headers: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in headers.keys() {
        // A `HeaderName` is lower case already.
        let name = name.as_str().as_bytes();
        if is_hop_by_hop(name) {
            if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop.as_bytes() == name) {
                present |= 1 << i;
            }
        }
    }
    present
}

/// `hop_by_hop`'s bits for `Connection`, `TE` and `Upgrade`.
const CONNECTION: u8 = 1 << 0;
const TE: u8 = 1 << 3;
const UPGRADE: u8 = 1 << 5;

/// Whether any hop-by-hop header is present.
pub(super) fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    hop_by_hop(headers) != 0
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
                // Looked for among the names first: the usual tokens (`close`,
                // `keep-alive`) name no header, and a scan of a few names is cheaper
                // than a hashed lookup. Removed as text: a `HeaderName` made from a
                // name that is not a standard one would be an allocation.
                if connection_removes(name)
                    && headers.keys().any(|key| key.as_str().as_bytes().eq_ignore_ascii_case(name))
                {
                    if let Ok(name) = std::str::from_utf8(name) {
                        headers.remove(name);
                    }
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
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
    fn the_named_bits_are_their_names_places_in_the_list() {
        assert_eq!(HOP_BY_HOP[CONNECTION.trailing_zeros() as usize], "connection");
        assert_eq!(HOP_BY_HOP[TE.trailing_zeros() as usize], "te");
        assert_eq!(HOP_BY_HOP[UPGRADE.trailing_zeros() as usize], "upgrade");
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
