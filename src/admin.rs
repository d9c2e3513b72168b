//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process runs),
//! `/readyz` (listeners bound and config loaded), `/status` (a JSON view of the
//! current runtime's upstreams and servers for an operator with curl) and
//! `DELETE /cache/NAME?key=URL` or `?prefix=URL-PREFIX` (purge a response cache of
//! the current runtime). Served apart from client traffic, HTTP/1.1 only.

use std::convert::Infallible;
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

use crate::config::BalancerKind;
use crate::health;
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

/// Serves admin requests until `stop` changes. A client that takes longer than
/// `header_read_timeout` to send a request head (the first, or the next on a kept-alive
/// connection) is closed, so idle or stalled admin connections cannot pile up.
pub async fn serve(
    socket: TcpListener,
    state: Arc<AdminState>,
    header_read_timeout: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
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
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    if let Some(name) = req.uri().path().strip_prefix("/cache/") {
        return purge(state, name, req);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Body::from(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
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
    }
}

/// `DELETE /cache/NAME?key=URL` removes one URL (every variant);
/// `?prefix=URL-PREFIX` every URL that starts with it. Answers how many objects went.
fn purge(state: &AdminState, name: &str, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::DELETE {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use DELETE /cache/NAME?key=URL or ?prefix=URL\n");
    }
    let runtime = state.runtime.load();
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
    in_flight: i64,
    /// Attempts sent to this server in the window.
    recent_requests: u64,
    /// Of those: 5xx responses, failed connections, timeouts and broken exchanges.
    recent_errors: u64,
    /// `recent_errors / recent_requests`, 0 when there were none.
    recent_error_rate: f64,
}

/// The `/status` document for `rt`.
pub fn status_json(rt: &Runtime) -> Vec<u8> {
    let now = health::now_ms() / 1000;
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

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("http%3A%2F%2Fa%2Fb%3Fx%3D1").as_deref(), Some("http://a/b?x=1"));
        assert_eq!(percent_decode("http://a/b").as_deref(), Some("http://a/b"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
