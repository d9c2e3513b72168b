//! `Router`: host / path prefix / method / listener -> route, built once per runtime.
//!
//! Precedence (SPEC "Route choice"): the most specific host wins (exact, then the
//! longest wildcard, then any host), then the longest `path_prefix`, then a route that
//! lists the request's method over one with no `methods`. That last rule is what
//! read/write splitting rests on: `methods = ["GET", "HEAD"]` to a replica pool and
//! a route without `methods` (same host and prefix) to the primary pool send reads
//! to the replicas and everything else to the primary. Routes are grouped by host
//! and each group is indexed by prefix at build time, so a lookup is one hash probe
//! for the host and one per distinct prefix length, never a scan of the host's
//! routes, and allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, Method, Request};

use crate::http::h1::server::RequestLines;
use crate::ratelimit::Limiter;
use crate::shaping::{AccessList, HeaderRules, LocalAnswer, PathRewrite};
use crate::upstream::Upstream;

/// One `[[routes]]` entry, ready to match.
pub struct Route {
    pub prefix: Box<str>,
    /// `None` matches any method.
    pub methods: Option<Box<[Method]>>,
    /// Bit i set: the route serves listener i.
    pub listeners: u64,
    /// What the route does with a request it matched.
    pub action: Action,
    /// `allow` / `deny`, checked before anything else; `None` checks nothing.
    pub access: Option<AccessList>,
    /// `response_headers`, applied to every answer of the route.
    pub response_headers: Option<HeaderRules>,
    /// Keep or generate `X-Request-Id`.
    pub request_id: bool,
    /// Some rule or list reads the client's address (resolved through
    /// `trusted_proxies`), so it is worked out once up front.
    pub needs_client_ip: bool,
}

/// Forward, or answer locally.
pub enum Action {
    Proxy(Proxy),
    Answer(Local),
}

/// A route that answers by itself (`redirect`, `respond`).
pub struct Local {
    pub what: LocalAnswer,
    /// `weir_local_responses_total{route}`: kept apart from upstream errors, so a
    /// maintenance `503` is not an outage.
    pub answered: crate::metrics::CodeCounters,
}

impl Local {
    /// The answer for one request, counted; `vars` needs `host`, `path` and `tls`.
    pub fn answer(&self, vars: &crate::shaping::template::Vars) -> http::Response<crate::proxy::body::Body> {
        let response = self.what.answer(vars);
        self.answered.inc(response.status());
        response
    }
}

/// A route that forwards to an upstream.
pub struct Proxy {
    pub upstream: Arc<Upstream>,
    /// Checked before forwarding; shared by every route naming the same limit.
    pub limiter: Option<Arc<Limiter>>,
    /// `strip_prefix` or `rewrite`.
    pub rewrite: Option<PathRewrite>,
    pub request_headers: Option<HeaderRules>,
    /// The route's `request_timeout`, else the upstream's.
    pub request_timeout: Duration,
    /// `max_request_body` in bytes.
    pub max_request_body: Option<u64>,
    /// The response cache in front of the upstream, if the route names one.
    pub cache: Option<crate::cache::RouteCache>,
    /// The `Upgrade` protocols the route tunnels.
    pub upgrades: Upgrades,
}

/// The `Upgrade` protocols a route tunnels (its `upgrades`, default `websocket`).
///
/// A request offering any other, `h2c` above all, is forwarded as a plain request
/// with its `Upgrade` removed, as nginx does with any upgrade it is not told to pass:
/// the client still gets its answer (curl's `--http2` over `http://` offers h2c on
/// every request), and the upstream is never asked to switch. An h2c upgrade that
/// went through would turn the connection into h2 that weir tunnels blind, so that
/// every request on it would skip routing, access lists and limits ("h2c smuggling").
#[derive(Debug, Clone)]
pub struct Upgrades(Box<[Box<str>]>);

impl Default for Upgrades {
    fn default() -> Upgrades {
        Upgrades(Box::new(["websocket".into()]))
    }
}

impl Upgrades {
    pub fn new<'a>(protocols: impl IntoIterator<Item = &'a String>) -> Upgrades {
        Upgrades(protocols.into_iter().map(|p| p.to_ascii_lowercase().into_boxed_str()).collect())
    }

    /// Whether each protocol an `Upgrade` value offers (`name` or `name/version`) is
    /// listed.
    fn allows(&self, value: &[u8]) -> bool {
        let mut offered = crate::http::h1::framing::tokens(value);
        offered.all(|p| {
            let name = p.split(|&b| b == b'/').next().unwrap_or_default();
            self.0.iter().any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(name))
        })
    }

    /// Removes `Upgrade` from a request that offers a protocol the route does not
    /// tunnel; the upstream then gets a plain request (the `Connection: upgrade` left
    /// behind names no upgrade and goes with the other hop-by-hop headers).
    pub fn restrict(&self, headers: &mut HeaderMap) {
        let mut values = headers.get_all(header::UPGRADE).iter().peekable();
        if values.peek().is_none() || values.all(|v| self.allows(v.as_bytes())) {
            return;
        }
        headers.remove(header::UPGRADE);
    }
}

impl Route {
    /// The upstream, when the route forwards.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.action {
            Action::Proxy(p) => Some(&p.upstream),
            Action::Answer(_) => None,
        }
    }

    /// Listener and method; the prefix is the index's part.
    fn serves(&self, listener: usize, method: &Method) -> bool {
        self.listeners & (1u64 << (listener & 63)) != 0
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// The maps a request looks routes up in (by host, by path prefix), keyed by what
/// the configuration names, with a fixed fast hash (xxh3) rather than std's keyed
/// SipHash: SipHash guards a map against keys chosen to collide, and these hold no
/// key a client chose (a lookup probes only what the configuration put in). Some 100
/// instructions less per request (BENCHMARKS.md, session 4).
type Lookup<V> = HashMap<Box<str>, V, std::hash::BuildHasherDefault<Xxh3Fold>>;

/// xxh3 of the bytes written, each `write` folded into the last (a `str` is its
/// bytes, then one `0xff`).
#[derive(Default)]
struct Xxh3Fold(u64);

impl std::hash::Hasher for Xxh3Fold {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u8(&mut self, byte: u8) {
        self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// All routes of a runtime, grouped by host.
#[derive(Default)]
pub struct Router {
    exact: Lookup<Group>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(Box<str>, Group)>,
    any: Group,
}

/// One host's routes, indexed by `path_prefix`.
///
/// A path can match at most one prefix of each length (its own first bytes), so a
/// lookup probes the map once per distinct prefix length, longest first, and scans
/// only the routes of that one prefix: its cost follows the number of distinct
/// lengths, not the number of routes.
#[derive(Default)]
struct Group {
    /// Sorted by prefix length (longest first), then prefix, then routes listing
    /// methods before those without, then definition order: the routes of one prefix
    /// are one run, in the order they are tried.
    routes: Vec<Route>,
    /// Prefix -> its run in `routes`.
    by_prefix: Lookup<(u32, u32)>,
    /// The distinct prefix lengths, longest first.
    lengths: Box<[usize]>,
}

impl Group {
    /// Sorts once (stable, so definition order breaks ties) and indexes the runs.
    fn new(mut routes: Vec<Route>) -> Group {
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| a.prefix.cmp(&b.prefix))
                .then_with(|| a.methods.is_none().cmp(&b.methods.is_none()))
        });
        let mut by_prefix = Lookup::default();
        let mut lengths = Vec::new();
        let mut start = 0;
        while start < routes.len() {
            let prefix = &routes[start].prefix;
            let end = start + routes[start..].iter().take_while(|r| r.prefix == *prefix).count();
            if lengths.last() != Some(&prefix.len()) {
                lengths.push(prefix.len());
            }
            by_prefix.insert(prefix.clone(), (start as u32, end as u32));
            start = end;
        }
        Group { routes, by_prefix, lengths: lengths.into() }
    }

    fn find(&self, listener: usize, path: &str, method: &Method) -> Option<&Route> {
        for &len in self.lengths.iter() {
            // A prefix that is a valid string and equals the path's first bytes ends
            // on one of the path's character boundaries, so nothing is skipped here.
            let Some(head) = path.get(..len) else { continue };
            let Some(&(start, end)) = self.by_prefix.get(head) else { continue };
            let run = &self.routes[start as usize..end as usize];
            if let Some(route) = run.iter().find(|r| r.serves(listener, method)) {
                return Some(route);
            }
        }
        None
    }
}

impl Router {
    /// The router for `routes`, each with its host (exact, `*.suffix`, or `None` for
    /// any host), in definition order. O(n log n): each group is sorted once.
    pub fn new<'h>(routes: impl IntoIterator<Item = (Option<&'h str>, Route)>) -> Router {
        let mut exact: HashMap<Box<str>, Vec<Route>> = HashMap::new();
        let mut wildcard: Vec<(Box<str>, Vec<Route>)> = Vec::new();
        let mut wildcard_at: HashMap<Box<str>, usize> = HashMap::new();
        let mut any = Vec::new();
        for (host, route) in routes {
            let group = match host.map(str::to_ascii_lowercase) {
                None => &mut any,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => {
                        let i = *wildcard_at.entry(suffix.into()).or_insert_with(|| {
                            wildcard.push((suffix.into(), Vec::new()));
                            wildcard.len() - 1
                        });
                        &mut wildcard[i].1
                    }
                    None => exact.entry(h.into()).or_default(),
                },
            };
            group.push(route);
        }
        // Stable: of two suffixes of one length at most one fits a host.
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Router {
            exact: exact.into_iter().map(|(h, g)| (h, Group::new(g))).collect(),
            wildcard: wildcard.into_iter().map(|(s, g)| (s, Group::new(g))).collect(),
            any: Group::new(any),
        }
    }

    /// The route for a request arriving on listener `listener`, if any.
    pub fn route<B>(&self, listener: usize, req: &Request<B>) -> Option<&Route> {
        self.route_by(listener, req, || request_host(req))
    }

    /// `route`, for a request whose fields are lines (`RequestLines`) and whose
    /// target has no authority: its host is its `Host` line's.
    pub fn route_lines<B>(&self, listener: usize, req: &Request<B>, lines: &RequestLines) -> Option<&Route> {
        self.route_by(listener, req, || lines_host(lines))
    }

    /// `route`, with the request's host from `host`, asked only when host routes
    /// exist.
    fn route_by<'h, B>(
        &self,
        listener: usize,
        req: &Request<B>,
        host: impl FnOnce() -> Option<&'h str>,
    ) -> Option<&Route> {
        let path = req.uri().path();
        let method = req.method();
        let mut buf = [0u8; 256];
        // Without host routes the host is never needed: skip finding and lowercasing it.
        let host_routes = !self.exact.is_empty() || !self.wildcard.is_empty();
        if let Some(host) = host_routes.then(host).flatten().and_then(|h| lowercase(h, &mut buf)) {
            if let Some(route) = self.exact.get(host).and_then(|g| g.find(listener, path, method)) {
                return Some(route);
            }
            for (suffix, group) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(route) = group.find(listener, path, method) {
                        return Some(route);
                    }
                }
            }
        }
        self.any.find(listener, path, method)
    }
}

/// The request's host as routing (and anything keyed on the host) sees it: the URI
/// authority (HTTP/2, absolute-form) or the `Host` header, through `host_name`.
/// Not lowercased: callers that compare it lowercase it themselves.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    Some(host_name(raw))
}

/// `request_host` for a request whose fields are lines and whose target has no
/// authority.
pub fn lines_host(lines: &RequestLines) -> Option<&str> {
    let raw = std::str::from_utf8(lines.host()?).ok()?;
    Some(host_name(raw))
}

/// A host as sent, normalised: without userinfo and port, and without one trailing
/// dot. `acl.test.` is the same name as `acl.test` (a fully qualified spelling), so
/// it must meet that host's routes and their `allow` lists, not fall through to an
/// any-host route (nginx strips the dot the same way). A slice, never a copy.
pub fn host_name(raw: &str) -> &str {
    let host = strip_port(raw);
    host.strip_suffix('.').unwrap_or(host)
}

/// A host as sent, without userinfo and port.
pub fn strip_port(raw: &str) -> &str {
    let raw = raw.rsplit_once('@').map_or(raw, |(_, h)| h);
    match raw.rfind(':') {
        // `[::1]:80` has its port after the bracket; `[::1]` has none.
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    }
}

/// Lowercases `host` into `buf` without allocating; hosts longer than a DNS name
/// cannot match any route.
fn lowercase<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let out = buf.get_mut(..host.len())?;
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_userinfo_and_one_trailing_dot() {
        assert_eq!(host_name("acl.test"), "acl.test");
        assert_eq!(host_name("acl.test."), "acl.test");
        assert_eq!(host_name("acl.test.:8080"), "acl.test");
        assert_eq!(host_name("u@acl.test.:8080"), "acl.test");
        assert_eq!(host_name("acl.test.."), "acl.test.");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("."), "");
    }

    use http::HeaderValue;

    fn restricted(upgrades: &Upgrades, values: &[&'static str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::UPGRADE, HeaderValue::from_static(v));
        }
        upgrades.restrict(&mut headers);
        headers.get_all(header::UPGRADE).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    #[test]
    fn only_listed_upgrade_protocols_are_kept() {
        let default = Upgrades::default();
        assert_eq!(restricted(&default, &["WebSocket"]), ["WebSocket"]);
        assert!(restricted(&default, &["h2c"]).is_empty());
        assert!(restricted(&default, &["websocket, h2c"]).is_empty(), "every offer must be listed");
        assert!(restricted(&default, &["websocket", "h2c"]).is_empty());
        assert!(restricted(&default, &["websocketx"]).is_empty());
        let listed = Upgrades::new(&["h2c".to_string(), "TLS".to_string()]);
        assert_eq!(restricted(&listed, &["h2c"]), ["h2c"]);
        assert_eq!(restricted(&listed, &["tls/1.2"]), ["tls/1.2"]);
        assert!(restricted(&Upgrades::new(&[]), &["websocket"]).is_empty());
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;
    use http::StatusCode;
    use proptest::prelude::*;

    /// The linear scan the index replaced (a group sorted by rank, first match
    /// wins), kept as the reference the index must agree with.
    #[derive(Default)]
    struct Linear {
        exact: HashMap<Box<str>, Vec<Route>>,
        wildcard: Vec<(Box<str>, Vec<Route>)>,
        any: Vec<Route>,
    }

    fn matches(r: &Route, listener: usize, path: &str, method: &Method) -> bool {
        r.listeners & (1u64 << (listener & 63)) != 0
            && path.starts_with(&*r.prefix)
            && r.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    fn rank(r: &Route) -> (std::cmp::Reverse<usize>, bool) {
        (std::cmp::Reverse(r.prefix.len()), r.methods.is_none())
    }

    impl Linear {
        fn add(&mut self, host: Option<&str>, route: Route) {
            let group = match host.map(str::to_ascii_lowercase) {
                None => &mut self.any,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => {
                        let i = match self.wildcard.iter().position(|(s, _)| **s == *suffix) {
                            Some(i) => i,
                            None => {
                                self.wildcard.push((suffix.into(), Vec::new()));
                                self.wildcard.len() - 1
                            }
                        };
                        &mut self.wildcard[i].1
                    }
                    None => self.exact.entry(h.into()).or_default(),
                },
            };
            group.push(route);
            group.sort_by_key(rank);
            self.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        }

        fn route<B>(&self, listener: usize, req: &Request<B>) -> Option<&Route> {
            let path = req.uri().path();
            let method = req.method();
            let find = |group: &[Route]| group.iter().position(|r| matches(r, listener, path, method));
            let mut buf = [0u8; 256];
            let host_routes = !self.exact.is_empty() || !self.wildcard.is_empty();
            if let Some(host) =
                host_routes.then(|| request_host(req)).flatten().and_then(|h| lowercase(h, &mut buf))
            {
                if let Some(group) = self.exact.get(host) {
                    if let Some(i) = find(group) {
                        return Some(&group[i]);
                    }
                }
                for (suffix, group) in &self.wildcard {
                    if host.len() > suffix.len() && host.ends_with(&**suffix) {
                        if let Some(i) = find(group) {
                            return Some(&group[i]);
                        }
                    }
                }
            }
            find(&self.any).map(|i| &self.any[i])
        }
    }

    /// A route that answers `200 + id`, so two routers' choices can be compared.
    fn route(id: usize, prefix: &str, methods: Option<&[Method]>, listeners: u64) -> Route {
        let metrics = crate::metrics::Metrics::new().unwrap();
        let status = StatusCode::from_u16(200 + id as u16).unwrap();
        Route {
            prefix: prefix.into(),
            methods: methods.map(|m| m.to_vec().into_boxed_slice()),
            listeners,
            action: Action::Answer(Local { what: LocalAnswer::status(status), answered: metrics.local("r") }),
            access: None,
            response_headers: None,
            request_id: false,
            needs_client_ip: false,
        }
    }

    fn id(route: Option<&Route>) -> Option<u16> {
        match &route?.action {
            Action::Answer(Local { what: LocalAnswer::Respond { status, .. }, .. }) => {
                Some(status.as_u16() - 200)
            }
            _ => unreachable!(),
        }
    }

    const HOSTS: [Option<&str>; 6] =
        [None, Some("a.test"), Some("A.Test"), Some("*.test"), Some("*.b.test"), Some("x.b.test")];
    const PREFIXES: [&str; 9] = ["", "/", "/a", "/a/", "/ab", "/a/b", "/b", "/é", "/a/b/c"];
    const REQUEST_HOSTS: [Option<&str>; 6] =
        [None, Some("a.test"), Some("x.b.test:8080"), Some("y.b.test."), Some("other"), Some("test")];
    const PATHS: [&str; 9] = ["/", "/a", "/a/", "/ab", "/a/b", "/a/b/c/d", "/b", "/é", "/%C3"];

    fn methods(pick: u8) -> Option<&'static [Method]> {
        match pick % 4 {
            0 => None,
            1 => Some(&[Method::GET, Method::HEAD]),
            2 => Some(&[Method::POST]),
            _ => Some(&[Method::GET]),
        }
    }

    proptest! {
        #[test]
        fn index_chooses_as_the_linear_scan_did(
            routes in proptest::collection::vec((0..HOSTS.len(), 0..PREFIXES.len(), any::<u8>(), 1u64..4), 0..60),
            requests in proptest::collection::vec((0..REQUEST_HOSTS.len(), 0..PATHS.len(), any::<bool>(), 0usize..2), 1..20),
        ) {
            let mut linear = Linear::default();
            let mut spec = Vec::new();
            for (i, &(h, p, m, l)) in routes.iter().enumerate() {
                linear.add(HOSTS[h], route(i, PREFIXES[p], methods(m), l));
                spec.push((HOSTS[h], route(i, PREFIXES[p], methods(m), l)));
            }
            let index = Router::new(spec);
            for &(h, p, get, listener) in &requests {
                let mut req = Request::builder().method(if get { Method::GET } else { Method::POST }).uri(PATHS[p]);
                if let Some(host) = REQUEST_HOSTS[h] {
                    req = req.header(header::HOST, host);
                }
                let req = req.body(()).unwrap();
                prop_assert_eq!(id(index.route(listener, &req)), id(linear.route(listener, &req)));
            }
        }
    }
}
