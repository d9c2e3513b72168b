//! Request shaping per route (issue 11): header rules, the request id, path
//! rewriting and the path safety check, local answers (redirects and fixed
//! responses) and access lists. Sticky sessions, which belong to an upstream, are in
//! `sticky`.
//!
//! Everything here is built once by `Runtime::build` from a route's config and read by
//! `proxy::handle`. A route that uses none of it carries `None`s and pays a branch
//! each; the only check every request pays is `path_is_safe`, one scan of the path.
//!
//! Path safety (why weir refuses instead of normalising): a route's `path_prefix` is
//! matched against the raw path, and the upstream receives that raw path. If weir let
//! `/public/../admin/x` through, the `/public/` route would match while a server that
//! resolves dot-segments serves `/admin/x`, skipping the `/admin/` route's access
//! list. Normalising would change what the server receives from what the client sent
//! (and still leave encoded forms to guess about), so weir answers `400` to any path
//! with a `.` or `..` segment, raw or percent-encoded (`%2e`), with segments split on
//! `/`, `\` and their encodings `%2f` / `%5c`, and to any empty segment (`//`), which
//! servers that merge slashes would read as another path. Nothing else is decoded:
//! the path and query go upstream byte for byte (rewrites change only the prefix).

pub mod sticky;
/// Header and redirect templates are parsed with the config; they live there.
pub use crate::config::template;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Response, StatusCode};
use prometheus::IntCounter;

use crate::config::{Cidr, HeaderRulesConfig, HeaderTemplate, RedirectConfig, RespondConfig};
use template::{Template, Var, Vars};

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id kept from a trusted proxy.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether `path` has no dot-segment (raw or percent-encoded) and no empty segment;
/// see the module doc. `*` (the `OPTIONS *` target) is safe.
pub fn path_is_safe(path: &str) -> bool {
    let bytes = path.as_bytes();
    // One pass decides for most paths: a dot-segment needs a `.` right after a `/`,
    // or an escape (`%2e`, `%2f`, `%5c`), or a `\`; an empty segment needs `//`.
    // Dots inside names (`app.min.js`) and other escapes take no second look.
    // Pairs of neighbouring bytes, or-ed without early exit so the loop vectorises.
    let pairs = bytes.iter().zip(bytes.iter().skip(1));
    let suspicious = pairs.fold(bytes.last() == Some(&b'\\'), |hit, (&a, &b)| {
        hit | (a == b'/' && (b == b'.' || b == b'/')) | (a == b'%' && (b == b'2' || b == b'5')) | (a == b'\\')
    });
    if !suspicious {
        return true;
    }
    let mut segment_start = 0;
    let mut i = 0;
    // The first segment (before the leading `/`) is empty by construction; skip it.
    let mut first = true;
    loop {
        let sep = separator_at(bytes, i);
        if sep.is_some() || i >= bytes.len() {
            let segment = &bytes[segment_start..i.min(bytes.len())];
            if !first {
                if is_dot_segment(segment) {
                    return false;
                }
                // An empty segment between two separators: `//`. A trailing `/` is fine.
                if segment.is_empty() && sep.is_some() {
                    return false;
                }
            }
            first = false;
            match sep {
                Some(len) => {
                    i += len;
                    segment_start = i;
                }
                None => return true,
            }
        } else {
            i += 1;
        }
    }
}

/// The length of a segment separator at `i`: `/`, `\`, `%2f`, `%5c` (any case).
fn separator_at(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'/' | b'\\' => Some(1),
        b'%' => {
            let hex = bytes.get(i + 1..i + 3)?;
            (hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c")).then_some(3)
        }
        _ => None,
    }
}

/// `.` or `..`, each dot raw or as `%2e`.
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut dots = 0;
    let mut i = 0;
    while i < segment.len() {
        if segment[i] == b'.' {
            i += 1;
        } else if segment.get(i..i + 3).is_some_and(|s| s.eq_ignore_ascii_case(b"%2e")) {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    (1..=2).contains(&dots)
}

/// A route's `request_headers` or `response_headers`, ready to apply.
pub struct HeaderRules {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Template)]>,
    add: Box<[(HeaderName, Template)]>,
}

impl HeaderRules {
    /// Builds validated rules: templates were parsed as the config was read, and
    /// validation refused any name `HeaderName` would not take.
    pub fn new(config: &HeaderRulesConfig) -> HeaderRules {
        let name = |n: &str| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok();
        let pairs = |map: &std::collections::BTreeMap<String, toml::Spanned<HeaderTemplate>>| {
            map.iter().filter_map(|(n, v)| Some((name(n)?, v.get_ref().0.clone()))).collect()
        };
        HeaderRules {
            remove: config.remove.iter().filter_map(|n| name(n.get_ref())).collect(),
            set: pairs(&config.set),
            add: pairs(&config.add),
        }
    }

    /// Whether any value reads `var`.
    pub fn uses(&self, var: Var) -> bool {
        self.set.iter().chain(self.add.iter()).any(|(_, t)| t.uses(var))
    }

    /// Removes, then sets, then adds. A value whose variable could not be rendered
    /// is left out.
    pub fn apply(&self, headers: &mut HeaderMap, vars: &Vars) {
        for name in self.remove.iter() {
            headers.remove(name);
        }
        for (name, value) in self.set.iter() {
            match value.render(vars) {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        for (name, value) in self.add.iter() {
            if let Some(v) = value.render(vars) {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// `strip_prefix` or `rewrite`: the route's prefix replaced by `to` ("" strips).
pub struct PathRewrite {
    pub prefix_len: usize,
    pub to: Box<str>,
}

impl PathRewrite {
    /// The URI with its prefix replaced; scheme and authority (HTTP/2, absolute form)
    /// stay. The rest of the path and the query are copied byte for byte; a result
    /// that would not start with `/` gets one, so an exact prefix becomes `/`.
    pub fn apply(&self, uri: &Uri) -> Option<Uri> {
        let original = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let rest = original.get(self.prefix_len..)?;
        let mut out = Vec::with_capacity(self.to.len() + rest.len() + 1);
        out.extend_from_slice(self.to.as_bytes());
        if !out.starts_with(b"/") {
            out.insert(0, b'/');
            if rest.starts_with('/') {
                out.pop();
            }
        }
        out.extend_from_slice(rest.as_bytes());
        let path = PathAndQuery::from_maybe_shared(Bytes::from(out)).ok()?;
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).ok()
    }
}

/// A route that answers by itself.
pub enum LocalAnswer {
    Redirect { status: StatusCode, to: Template },
    Respond { status: StatusCode, body: Bytes, content_type: HeaderValue },
}

impl LocalAnswer {
    pub fn redirect(config: &RedirectConfig) -> LocalAnswer {
        LocalAnswer::Redirect { status: config.status.get_ref().0, to: config.to.get_ref().0.clone() }
    }

    pub fn respond(config: &RespondConfig) -> LocalAnswer {
        let content_type = match &config.content_type {
            Some(ct) => ct.get_ref().0.clone(),
            None => HeaderValue::from_static("text/plain; charset=utf-8"),
        };
        LocalAnswer::Respond {
            status: config.status.get_ref().0,
            body: Bytes::from(config.body.clone()),
            content_type,
        }
    }

    /// A bare status with an empty body.
    pub fn status(status: StatusCode) -> LocalAnswer {
        LocalAnswer::Respond {
            status,
            body: Bytes::new(),
            content_type: HeaderValue::from_static("text/plain; charset=utf-8"),
        }
    }

    /// The response for one request; `vars` needs `host`, `path` and `tls`. `B`'s
    /// default is the empty body.
    pub fn answer<B: Default + From<Bytes>>(&self, vars: &Vars) -> Response<B> {
        match self {
            LocalAnswer::Redirect { status, to } => {
                let mut response = Response::new(B::default());
                *response.status_mut() = *status;
                if let Some(location) = to.render(vars) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                response
            }
            LocalAnswer::Respond { status, body, content_type } => {
                let mut response = Response::new(B::from(body.clone()));
                *response.status_mut() = *status;
                response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
                response
            }
        }
    }
}

/// A route's `allow` and `deny` lists.
pub struct AccessList {
    allow: Box<[ipnet::IpNet]>,
    deny: Box<[ipnet::IpNet]>,
    /// `weir_access_denied_total{route}`.
    pub denied: IntCounter,
}

impl AccessList {
    /// `None` when both lists are empty: the route checks nothing.
    pub fn new(allow: &[Cidr], deny: &[Cidr], denied: IntCounter) -> Option<AccessList> {
        if allow.is_empty() && deny.is_empty() {
            return None;
        }
        let nets = |list: &[Cidr]| list.iter().map(|c| c.0).collect();
        Some(AccessList { allow: nets(allow), deny: nets(deny), denied })
    }

    /// Deny wins; then, if there is an allow list, the client must be on it.
    pub fn admits(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        !self.deny.iter().any(|n| n.contains(&client))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client)))
    }
}

/// The request id for a request: the one a trusted proxy sent, if it looks like an
/// id, else a new one.
pub fn request_id(headers: &HeaderMap, from_trusted_proxy: bool) -> HeaderValue {
    if from_trusted_proxy {
        if let Some(id) = headers.get(&X_REQUEST_ID).filter(|v| is_sane_id(v.as_bytes())) {
            return id.clone();
        }
    }
    new_request_id()
}

/// 1 to `MAX_REQUEST_ID` bytes of letters, digits and `-_.:+/=@`: what UUIDs, hex
/// and base64 ids use, and nothing that could break a log line or a header.
fn is_sane_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

/// A new id: 16 hex digits of a random per-process prefix, then 16 of a counter.
///
/// Why not 128 random bits per request: ids need to be unique, not secret (they
/// are echoed to clients and written to logs), and a prefix plus a counter is unique
/// within the process by construction and across processes with overwhelming
/// probability, for one atomic add and no RNG call per request. Within a process the
/// ids also sort in arrival order, which helps when reading logs.
pub fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| u64::from_be_bytes(sticky::random_bytes::<8>()));
    let n = COUNTER.fetch_add(1, Relaxed);
    let mut buf = [0u8; 32];
    hex_into(&prefix.to_be_bytes(), &mut buf[..16]);
    hex_into(&n.to_be_bytes(), &mut buf[16..]);
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        if let Some(pair) = out.get_mut(2 * i..2 * i + 2) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_empty_segments_are_unsafe_in_every_spelling() {
        for path in [
            "/admin/../public",
            "/public/..",
            "/./admin",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/a/.%2e/b",
            "/a/%2e/b",
            "/public/..%2fadmin",
            "/public%2f..%2fadmin",
            "/public\\..\\admin",
            "/public/..%5cadmin",
            "//admin",
            "/api//x",
        ] {
            assert!(!path_is_safe(path), "{path} should be refused");
        }
        for path in
            ["/", "/a/b/", "/a.b/c..d/...", "/%2e%2e%2e", "/file.tar.gz", "*", "/a%20b", "/.well-known/x"]
        {
            assert!(path_is_safe(path), "{path} should pass");
        }
    }

    #[test]
    fn rewrites_replace_the_prefix_and_keep_the_query() {
        let strip = PathRewrite { prefix_len: "/api/".len(), to: "".into() };
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(strip.apply(&uri("/api/x?q=1")).unwrap(), "/x?q=1");
        assert_eq!(strip.apply(&uri("/api/")).unwrap(), "/");
        assert_eq!(strip.apply(&uri("/api/?a=%2F+b")).unwrap(), "/?a=%2F+b");
        let no_slash = PathRewrite { prefix_len: "/api".len(), to: "".into() };
        assert_eq!(no_slash.apply(&uri("/api/x")).unwrap(), "/x");
        assert_eq!(no_slash.apply(&uri("/api")).unwrap(), "/");
        let v2 = PathRewrite { prefix_len: "/api/".len(), to: "/v2/".into() };
        assert_eq!(v2.apply(&uri("/api/x%20y?q=a%26b")).unwrap(), "/v2/x%20y?q=a%26b");
        let absolute = v2.apply(&uri("http://h.example/api/x")).unwrap();
        assert_eq!(absolute.authority().unwrap(), "h.example");
        assert_eq!(absolute.path(), "/v2/x");
    }

    #[test]
    fn header_rules_remove_then_set_then_add() {
        let config: HeaderRulesConfig = toml::from_str(
            "set = { x-a = \"1\", x-ip = \"{client_ip}\" }\nadd = { x-a = \"2\" }\nremove = [\"X-Gone\"]",
        )
        .unwrap();
        let rules = HeaderRules::new(&config);
        assert!(rules.uses(Var::ClientIp) && !rules.uses(Var::Host));
        let mut h = HeaderMap::new();
        h.insert("x-gone", HeaderValue::from_static("g"));
        h.insert("x-a", HeaderValue::from_static("0"));
        let vars = Vars { client_ip: Some("192.0.2.1".parse().unwrap()), ..Vars::default() };
        rules.apply(&mut h, &vars);
        assert!(!h.contains_key("x-gone"));
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(h["x-ip"], "192.0.2.1");
    }

    #[test]
    fn access_lists_deny_first_then_allow() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let counter = IntCounter::new("c", "c").unwrap();
        let acl = AccessList::new(&[c("10.0.0.0/8")], &[c("10.9.0.0/16")], counter.clone()).unwrap();
        assert!(acl.admits("10.1.2.3".parse().unwrap()));
        assert!(!acl.admits("10.9.0.1".parse().unwrap()));
        assert!(!acl.admits("192.0.2.1".parse().unwrap()));
        assert!(acl.admits("::ffff:10.1.2.3".parse().unwrap()));
        let deny_only = AccessList::new(&[], &[c("192.0.2.1")], counter.clone()).unwrap();
        assert!(deny_only.admits("192.0.2.2".parse().unwrap()));
        assert!(AccessList::new(&[], &[], counter).is_none());
    }

    #[test]
    fn request_ids_are_kept_only_from_trusted_proxies_and_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        assert_ne!(request_id(&h, false), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h, true), "has space");
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        h.insert(&X_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_eq!(request_id(&h, true).len(), 32);
    }

    #[test]
    fn generated_ids_are_unique_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16], "one prefix per process");
    }
}
