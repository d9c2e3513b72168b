//! `Router`: host / path prefix / method / listener -> route, built once per runtime.
//!
//! Precedence (SPEC "Route choice"): the most specific host wins (exact, then the
//! longest wildcard, then any host), then the longest `path_prefix`, then a route that
//! lists the request's method over one with no `methods`. That last rule is what
//! read/write splitting rests on: `methods = ["GET", "HEAD"]` to a replica pool and
//! a route without `methods` (same host and prefix) to the primary pool send reads
//! to the replicas and everything else to the primary. Routes are grouped by host
//! and each group is sorted by that order at build time, so a lookup is one hash probe
//! and a short scan, and allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, Method, Request};

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

    fn matches(&self, listener: usize, path: &str, method: &Method) -> bool {
        self.listeners & (1u64 << (listener & 63)) != 0
            && path.starts_with(&*self.prefix)
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    fn rank(&self) -> (std::cmp::Reverse<usize>, bool) {
        (std::cmp::Reverse(self.prefix.len()), self.methods.is_none())
    }
}

/// All routes of a runtime, grouped by host.
#[derive(Default)]
pub struct Router {
    exact: HashMap<Box<str>, Vec<Route>>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(Box<str>, Vec<Route>)>,
    any: Vec<Route>,
}

impl Router {
    /// Adds a route for `host` (exact, `*.suffix`, or `None` for any host).
    pub fn add(&mut self, host: Option<&str>, route: Route) {
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
        group.sort_by_key(Route::rank);
        self.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    }

    /// The route for a request arriving on listener `listener`, if any.
    pub fn route<B>(&self, listener: usize, req: &Request<B>) -> Option<&Route> {
        let path = req.uri().path();
        let method = req.method();
        let find = |group: &[Route]| group.iter().position(|r| r.matches(listener, path, method));
        let mut buf = [0u8; 256];
        // Without host routes the host is never needed: skip finding and lowercasing it.
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
