//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process runs),
//! `/readyz` (listeners bound and config loaded), `/status` (a JSON view of the
//! current runtime's upstreams and servers for an operator with curl) and
//! `DELETE /cache/NAME?key=URL` or `?prefix=URL-PREFIX` (purge a response cache of
//! the current runtime). Served apart from client traffic, HTTP/1.1 only.
//!
//! Who may ask: a request whose `Host` is not one of the listener's own names (the
//! address the client connected to, `localhost` on loopback, `[admin] hosts`) gets
//! `421`, so a web page an operator opens cannot reach the listener through DNS
//! rebinding (its requests carry the attacker's name). `/healthz` and `/readyz` are
//! exempt: they reveal nothing, and probes name the listener in their own ways. A
//! purge (anything that changes state) needs `Authorization: Bearer` with the token
//! of `[admin] token_file` when one is set, and is refused outright on a non-loopback
//! listener without one: anyone who can reach such a listener could otherwise empty
//! the caches. Both refusals are counted.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use serde::Serialize;

use crate::config::{normal_name, split_host, AdminAccess, AdminConfig, BalancerKind};
use crate::metrics::Metrics;
use crate::proxy::body::Body;
use crate::recent::WINDOW_SECS;
use crate::runtime::{Runtime, SharedRuntime};

/// What the admin endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// The runtime clients are served by, read afresh on each `/status` and purge.
    pub runtime: SharedRuntime,
    /// Set once listeners are bound and the config is loaded; cleared on shutdown.
    pub ready: AtomicBool,
}

/// What to tell an operator about an admin listener anyone on the network can reach
/// without a token, if that is this one.
pub fn exposure_warning(admin: &AdminConfig) -> Option<String> {
    let addr: SocketAddr = admin.listen.get_ref().parse().ok()?;
    (admin.token_file.is_none() && !addr.ip().to_canonical().is_loopback()).then(|| {
        format!(
            "the admin listener on {addr} is not on loopback and has no [admin] token_file: \
             anyone who can reach it reads /metrics and /status, and cache purges are refused \
             until a token is set"
        )
    })
}

/// Whether `host` (the request's `Host`, or its absolute-form authority) names this
/// listener, reached at `local`. No host at all passes: every browser sends one, so
/// its absence is not a rebinding page.
fn host_allowed(host: Option<&str>, local: SocketAddr, access: &AdminAccess) -> bool {
    let Some(raw) = host else { return true };
    let Some((name, port)) = split_host(raw) else { return false };
    let name = normal_name(name);
    if access.hosts.iter().any(|(n, p)| **n == *name && p.is_none_or(|p| Some(p) == port)) {
        return true;
    }
    if port.is_some_and(|p| p != local.port()) {
        return false;
    }
    let local_ip = local.ip().to_canonical();
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical() == local_ip,
        Err(_) => name == "localhost" && local_ip.is_loopback(),
    }
}

/// Serves admin requests until `stop` changes. A client that takes longer than
/// `header_read_timeout` to send a request head (the first, or the next on a kept-alive
/// connection) is closed, so idle or stalled admin connections cannot pile up.
pub async fn serve(
    socket: TcpListener,
    state: Arc<AdminState>,
    header_read_timeout: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Whether the listener is bound to loopback only: what a purge without a
    // configured token is allowed on.
    let loopback = socket.local_addr().is_ok_and(|a| a.ip().to_canonical().is_loopback());
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The address this client reached: on a wildcard bind, which of the host's
        // addresses it used, and so the one its `Host` may name.
        let Ok(local) = stream.local_addr() else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move {
                    let response = match respond(&state, local, loopback, &req) {
                        Some(response) => response,
                        None => scrape(&state).await,
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer to `req`; `None` for a scrape of `/metrics` that passed the checks,
/// answered by `scrape`.
fn respond(
    state: &AdminState,
    local: SocketAddr,
    loopback: bool,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    let path = req.uri().path();
    if path != "/healthz" && path != "/readyz" {
        let host = match req.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => match req.headers().get(header::HOST).map(HeaderValue::to_str) {
                Some(Ok(host)) => Some(host),
                Some(Err(_)) => Some(""),
                None => None,
            },
        };
        if !host_allowed(host, local, &state.runtime.load().admin) {
            state.metrics.admin_misdirected_total.inc();
            return Some(text(
                StatusCode::MISDIRECTED_REQUEST,
                "this Host is not a name of the admin listener: use its address or add the name to [admin] hosts\n",
            ));
        }
    }
    if let Some(name) = path.strip_prefix("/cache/") {
        return Some(purge(state, loopback, name, req));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
    }
    Some(match req.uri().path() {
        "/metrics" => return None,
        "/status" => {
            let body = status_json(&state.runtime.load());
            let mut response = Response::new(Body::from(Bytes::from(body)));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /status, /healthz or /readyz\n"),
    })
}

/// `/metrics`. Gathering and encoding run on the blocking pool: at thousands of
/// servers a scrape is megabytes and milliseconds of CPU, which on a serving thread
/// (the only one with `workers = 1`) would stall every request it carries. The
/// runtime is loaded there too, so if a reload replaced it meanwhile, its last
/// reference (and the freeing of its servers) goes there as well.
async fn scrape(state: &Arc<AdminState>) -> Response<Body> {
    let state = state.clone();
    let encode = move || state.runtime.load_full().encode_metrics(&state.metrics);
    let Ok(encoded) = tokio::task::spawn_blocking(encode).await else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed\n");
    };
    let mut response = Response::new(Body::from(Bytes::from(encoded)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// `DELETE /cache/NAME?key=URL` removes one URL (every variant);
/// `?prefix=URL-PREFIX` every URL that starts with it. Answers how many objects went.
fn purge(state: &AdminState, loopback: bool, name: &str, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::DELETE {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use DELETE /cache/NAME?key=URL or ?prefix=URL\n");
    }
    let runtime = state.runtime.load();
    if let Some(refusal) = refusal(&runtime.admin, loopback, req) {
        state.metrics.admin_unauthorized_total.inc();
        return refusal;
    }
    let Some(cache) = runtime.caches.get(name) else {
        return text(StatusCode::NOT_FOUND, "no such cache\n");
    };
    let query = req.uri().query().unwrap_or("");
    let param = |want: &str| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == want).then(|| percent_decode(v)).flatten()
        })
    };
    let purged = match (param("key"), param("prefix")) {
        // An empty prefix is every URL: a slip, not a request to empty the cache.
        (Some(v), None) | (None, Some(v)) if v.is_empty() => {
            return text(StatusCode::BAD_REQUEST, "key and prefix must not be empty\n")
        }
        (Some(url), None) => cache.purge_url(&url),
        (None, Some(prefix)) => cache.purge_prefix(&prefix),
        _ => return text(StatusCode::BAD_REQUEST, "give one of key=URL or prefix=URL-PREFIX\n"),
    };
    let mut response = Response::new(Body::from(Bytes::from(format!("purged {purged}\n"))));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Why a change of state is refused, if it is: it needs the configured token, or,
/// with none configured, a loopback listener.
fn refusal(access: &AdminAccess, loopback: bool, req: &Request<Incoming>) -> Option<Response<Body>> {
    let Some(token) = &access.token else {
        return (!loopback).then(|| {
            text(
                StatusCode::FORBIDDEN,
                "purging through a non-loopback admin listener needs [admin] token_file\n",
            )
        });
    };
    let offered = req.headers().get(header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes()));
    if offered.is_some_and(|offered| token.matches(offered)) {
        return None;
    }
    let mut refusal = text(StatusCode::UNAUTHORIZED, "send Authorization: Bearer TOKEN\n");
    refusal
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"weir admin\""));
    Some(refusal)
}

/// The token of an `Authorization: Bearer TOKEN` value (scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(6)?;
    let token = token.strip_prefix(b" ")?.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// Decodes `%XX` escapes and `+` (a space) in a query value; `None` if malformed.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from_static(body.as_bytes()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `GET /status`: every upstream with its servers, sorted by name.
#[derive(Serialize)]
struct Status<'a> {
    /// The window `recent` figures cover.
    window_seconds: u64,
    upstreams: Vec<UpstreamStatus<'a>>,
}

#[derive(Serialize)]
struct UpstreamStatus<'a> {
    name: &'a str,
    balancer: BalancerKind,
    healthy_servers: usize,
    servers: Vec<ServerStatus<'a>>,
}

#[derive(Serialize)]
struct ServerStatus<'a> {
    address: &'a str,
    weight: u32,
    backup: bool,
    healthy: bool,
    in_flight: u64,
    /// Attempts sent to this server in the window.
    recent_requests: u64,
    /// Of those: 5xx responses, failed connections, timeouts and broken exchanges.
    recent_errors: u64,
    /// `recent_errors / recent_requests`, 0 when there were none.
    recent_error_rate: f64,
}

/// The `/status` document for `rt`.
pub fn status_json(rt: &Runtime) -> Vec<u8> {
    let now = crate::clock::now_ms() / 1000;
    let mut upstreams: Vec<_> = rt
        .upstreams
        .values()
        .map(|up| {
            let servers: Vec<_> = up
                .servers
                .iter()
                .map(|s| {
                    let (requests, errors) = s.state.recent.totals(now);
                    ServerStatus {
                        address: &s.address,
                        weight: s.weight,
                        backup: s.backup,
                        healthy: s.is_healthy(),
                        in_flight: s.in_flight(),
                        recent_requests: requests,
                        recent_errors: errors,
                        recent_error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
                    }
                })
                .collect();
            UpstreamStatus {
                name: &up.name,
                balancer: up.balancer_kind,
                healthy_servers: servers.iter().filter(|s| s.healthy).count(),
                servers,
            }
        })
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(b.name));
    let mut out = serde_json::to_vec_pretty(&Status { window_seconds: WINDOW_SECS, upstreams })
        .unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminToken;

    #[test]
    fn own_names_pass_and_others_do_not() {
        let access = AdminAccess { hosts: vec![("admin.internal".into(), None)].into(), token: None };
        let v4: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let v6: SocketAddr = "[::1]:9901".parse().unwrap();
        let lan: SocketAddr = "10.0.0.5:9901".parse().unwrap();
        for (host, local, want) in [
            (Some("127.0.0.1:9901"), v4, true),
            (Some("localhost:9901"), v4, true),
            (Some("[::1]:9901"), v6, true),
            (Some("localhost"), v6, true),
            (Some("10.0.0.5:9901"), lan, true),
            (Some("localhost:9901"), lan, false),
            (Some("Admin.Internal.:80"), lan, true),
            (Some("evil.test:9901"), v4, false),
            (Some("127.0.0.1:9902"), v4, false),
            (Some(""), v4, false),
            (None, v4, true),
        ] {
            assert_eq!(host_allowed(host, local, &access), want, "{host:?} on {local}");
        }
    }

    #[test]
    fn bearer_tokens_are_read_and_compared() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        let token = AdminToken::new(b"abc");
        assert!(token.matches(b"abc"));
        assert!(!token.matches(b"abd") && !token.matches(b"ab") && !token.matches(b""));
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("http%3A%2F%2Fa%2Fb%3Fx%3D1").as_deref(), Some("http://a/b?x=1"));
        assert_eq!(percent_decode("http://a/b").as_deref(), Some("http://a/b"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
