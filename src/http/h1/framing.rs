//! Message framing (RFC 9112 §6) and connection management (§9.3), as both roles
//! read them: the one `Content-Length` parser, the last `Transfer-Encoding` coding,
//! `Connection` options, and the one scanner of comma-separated lists (RFC 9110
//! §5.6.1) that every HTTP list weir reads goes through.

use http::Version;

/// Most header fields a message may carry, in HTTP/1.1 (weir's server and client,
/// and hyper's, stop parsing there) and HTTP/2 alike.
pub const MAX_HEADERS: usize = 100;

/// The elements of a comma-separated list (RFC 9110 §5.6.1), each trimmed of
/// optional whitespace; empty elements (`a, , b`) are skipped, as the RFC asks.
pub fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether the list `value` holds `token`, compared without case.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// A `Content-Length` value (RFC 9110 §8.6: `1*DIGIT`): digits only (no sign, no
/// whitespace), at most 19 of them so it cannot overflow. The one parser of the
/// crate: every reader of a length calls it.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// A `Content-Length` field that may be a list of one number repeated (`5, 5`), as
/// RFC 9110 §8.6 lets a recipient take it; `None` when an element is not a number,
/// the numbers differ, or the list is empty.
pub fn parse_length_list(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let n = parse_length(part.trim_ascii())?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// The hop-by-hop fields (RFC 9110 §7.6.1) besides those a `Connection` names: they
/// belong to one connection and never cross weir. The one list: the header-map strip
/// (`proxy::hop_by_hop`) and the response codec's field pass (`response`) both read it.
pub const HOP_BY_HOP: [&str; 6] =
    ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"];

/// Whether a field `name` is hop-by-hop (`HOP_BY_HOP`), compared without case.
#[inline]
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // By length first: most names are none of these, and most fail that test.
    matches!(name.len(), 2 | 7 | 10 | 16 | 17)
        && HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
}

/// Whether `name` (lowercase) is one of the `X-Forwarded-*` fields a forwarding
/// proxy writes itself (`-For`, `-Host`, `-Proto`), in place of a client's.
#[inline]
pub fn is_x_forwarded(name: &[u8]) -> bool {
    // By length first: these are 15 to 17 bytes long.
    matches!(name.len(), 15..=17)
        && (name == b"x-forwarded-for" || name == b"x-forwarded-host" || name == b"x-forwarded-proto")
}

/// Whether a `Connection` token removes the field of its name on the way through:
/// any but `Host`, which routing and the upstream both rely on.
#[inline]
pub fn connection_removes(token: &[u8]) -> bool {
    !token.eq_ignore_ascii_case(b"host")
}

/// What a message's `Connection` header says about the connection (RFC 9112 §9.3),
/// noted value by value in the pass that builds a header map.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl ConnectionOptions {
    /// Notes the options of one `Connection` value.
    pub fn note(&mut self, value: &[u8]) {
        for token in tokens(value) {
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
/// `chunked,` does not end in `chunked` here (its last element is empty), as in hyper.
pub fn ends_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"0012"), Some(12));
        assert_eq!(parse_length(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        for bad in [&b""[..], b"+3", b"-1", b" 3", b"3 ", b"0x10", b"1_0", b"99999999999999999999", b"3,3"] {
            assert_eq!(parse_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn length_lists_must_repeat_one_number() {
        assert_eq!(parse_length_list(b"5"), Some(5));
        assert_eq!(parse_length_list(b"5, 5,5"), Some(5));
        assert_eq!(parse_length_list(b"5, 6"), None);
        assert_eq!(parse_length_list(b"5,"), None);
        assert_eq!(parse_length_list(b""), None);
        assert_eq!(parse_length_list(b"+5"), None);
    }

    #[test]
    fn token_lists_skip_empty_elements_and_whitespace() {
        assert_eq!(tokens(b" a ,, b\t,").collect::<Vec<_>>(), [&b"a"[..], b"b"]);
        assert!(has_token(b"keep-alive, TRAILERS", b"trailers"));
        assert!(!has_token(b"trailersx", b"trailers"));
    }

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
    fn hop_by_hop_names_match_without_case() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_bytes()) && is_hop_by_hop(name.to_uppercase().as_bytes()));
        }
        for name in [&b"trailer"[..], b"host", b"date", b"x-te", b"connections", b""] {
            assert!(!is_hop_by_hop(name), "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn only_a_last_coding_of_chunked_frames_by_chunks() {
        assert!(ends_chunked(b"chunked"));
        assert!(ends_chunked(b"gzip, Chunked "));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert!(!ends_chunked(b"xchunked"));
        assert!(!ends_chunked(b""));
        assert!(!ends_chunked(b"chunked,"));
    }
}
