//! Forwarding one request to an upstream: pick a server, take a pooled connection or
//! open one, send, and wait for the response headers within `request_timeout`.
//!
//! A server that refuses the connection (or does not accept it within
//! `connect_timeout`) is skipped and the next one tried: nothing was sent, so this is
//! safe for any method. A pooled connection that turns out to be closed hands the
//! request back unsent and is simply replaced. The response body carries the
//! connection and the in-flight guard (see `body::Release`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{Body, Release, UpstreamBody};
use super::error::ProxyError;
use crate::balancer::PickKey;
use crate::health::{self, Outcome};
use crate::upstream::{PooledConn, Server, Upstream};

/// Facts about the client connection a request arrived on, computed once per
/// connection.
pub struct Peer {
    pub addr: SocketAddr,
    /// Index of the listener in the config.
    pub listener: usize,
    pub tls: bool,
    /// The client's IP as a header value, for `X-Forwarded-For`.
    pub ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, listener: usize, tls: bool) -> Peer {
        let ip = HeaderValue::from_str(&addr.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Peer { addr, listener, tls, ip }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Sends `req` to a server of `upstream`. A server that refuses the connection is
/// skipped for the next one; an idempotent request without a body is also retried
/// when its connection drops before the response headers. Retries draw on the
/// upstream's retry budget.
pub async fn forward(
    upstream: &Arc<Upstream>,
    req: Request<Incoming>,
    peer: &Peer,
) -> Result<Response<Body>, ProxyError> {
    let mut req = prepare(req, peer);
    upstream.retry_budget.deposit();
    let replayable = is_idempotent(req.method()) && http_body::Body::is_end_stream(req.body());
    let panic = upstream.health.in_panic(&upstream.servers);
    let key = PickKey::default();
    let mut tried = Tried::default();
    let mut last_error = None;
    loop {
        let Some((index, server)) = pick(upstream, &key, &tried, panic) else {
            return Err(
                last_error.unwrap_or_else(|| ProxyError::NoHealthyServer { upstream: upstream.name.clone() })
            );
        };
        if let Some(error) = last_error.take() {
            if !upstream.retry_budget.try_withdraw() {
                return Err(error);
            }
            tracing::warn!(upstream = %upstream.name, %error, next = %server.address, "retrying on another server");
        }
        tried.insert(index);
        // A copy to replay if the connection drops after the request went out; only
        // worth its allocation when there is another server to replay it on.
        let copy = (replayable && upstream.servers.len() > 1).then(|| copy_head(&req));
        match attempt(upstream, server, req).await {
            Ok(response) => {
                health::record(upstream, server, Outcome::Response(response.status()));
                return Ok(response);
            }
            Err((error, unsent)) => {
                health::record(upstream, server, Outcome::Failure(error.kind()));
                let again = match (&error, unsent) {
                    (_, Some(unsent)) => Some(unsent),
                    (ProxyError::Upstream { .. }, None) => copy,
                    _ => None,
                };
                match again {
                    Some(next) => {
                        req = next;
                        last_error = Some(error);
                    }
                    None => return Err(error),
                }
            }
        }
    }
}

/// Methods RFC 9110 §9.2.2 calls idempotent, which may be sent twice.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request line and headers of a bodyless request, to send again.
fn copy_head(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(Body::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// A server this request has not tried: healthy primaries first, then healthy
/// backups. In panic mode health is ignored. Servers still slow-starting take a
/// growing share; when the ramp turns every candidate away, it is ignored.
fn pick<'u>(
    upstream: &'u Upstream,
    key: &PickKey,
    tried: &Tried,
    panic: bool,
) -> Option<(usize, &'u Arc<Server>)> {
    let servers = &upstream.servers;
    let policy = &upstream.health;
    let candidate = |i: usize, backup: bool| {
        servers.get(i).is_some_and(|s| s.backup == backup && (panic || s.is_healthy()) && !tried.contains(i))
    };
    let balancer = &upstream.balancer;
    let pick_among = |backup: bool| {
        balancer
            .pick(key, |i| candidate(i, backup) && servers.get(i).is_some_and(|s| policy.ramp_admits(s)))
            .or_else(|| balancer.pick(key, |i| candidate(i, backup)))
    };
    let index = if policy.slow_start.is_some() {
        pick_among(false).or_else(|| pick_among(true))?
    } else {
        balancer.pick(key, |i| candidate(i, false)).or_else(|| balancer.pick(key, |i| candidate(i, true)))?
    };
    Some((index, servers.get(index)?))
}

/// Servers one request has tried, as a bitset. Upstreams of over 128 servers get no
/// retry after trying a server past the 128th.
#[derive(Default)]
struct Tried(u128);

impl Tried {
    fn insert(&mut self, i: usize) {
        self.0 |= 1u128.checked_shl(i as u32).unwrap_or(u128::MAX);
    }
    fn contains(&self, i: usize) -> bool {
        self.0 & 1u128.checked_shl(i as u32).unwrap_or(u128::MAX) != 0
    }
}

type Attempt = Result<Response<Body>, (ProxyError, Option<Request<Body>>)>;

/// One try on one server. On a failure before anything was sent, the request comes
/// back for the next server.
async fn attempt(upstream: &Upstream, server: &Arc<Server>, req: Request<Body>) -> Attempt {
    let in_flight = server.begin();
    let started = Instant::now();
    let exchange = tokio::time::timeout(upstream.request_timeout, exchange(upstream, server, req)).await;
    let (response, sender) = match exchange {
        Ok(Ok(done)) => done,
        Ok(Err((error, unsent))) => {
            if matches!(error, ProxyError::Connect { .. }) {
                server.metrics.connect_errors.inc();
            }
            return Err((error, unsent));
        }
        Err(_) => {
            server.metrics.timeouts.inc();
            let error = ProxyError::UpstreamTimeout {
                server: server.address.clone(),
                after: upstream.request_timeout,
            };
            return Err((error, None));
        }
    };
    server.metrics.requests.inc(response.status());
    server.metrics.duration.observe(started.elapsed().as_secs_f64());
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let release = Release { conn: PooledConn { sender, server: server.clone() }, _in_flight: in_flight };
    let body = Body::Upstream(UpstreamBody { inner: body, release: Some(release) });
    Ok(Response::from_parts(parts, body))
}

type Exchange = Result<(Response<Incoming>, SendRequest<Body>), (ProxyError, Option<Request<Body>>)>;

/// Sends on a pooled connection if one is alive, else on a new one.
async fn exchange(upstream: &Upstream, server: &Server, mut req: Request<Body>) -> Exchange {
    while let Some(mut sender) = server.take_idle() {
        // Waits for the connection to finish its previous exchange; errors if the
        // server closed it while idle.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut e) => match e.take_message() {
                // Closed before our request went out: nothing sent, try another.
                Some(unsent) => req = unsent,
                None => return Err((upstream_error(server, e.into_error()), None)),
            },
        }
    }
    let mut sender = match connect(upstream, server).await {
        Ok(sender) => sender,
        Err(error) => return Err((error, Some(req))),
    };
    match sender.try_send_request(req).await {
        Ok(response) => Ok((response, sender)),
        Err(mut e) => {
            let unsent = e.take_message();
            Err((upstream_error(server, e.into_error()), unsent))
        }
    }
}

fn upstream_error(server: &Server, source: hyper::Error) -> ProxyError {
    ProxyError::Upstream { server: server.address.clone(), source }
}

/// Opens a keep-alive HTTP/1.1 connection within `connect_timeout`.
async fn connect(upstream: &Upstream, server: &Server) -> Result<SendRequest<Body>, ProxyError> {
    let refused = |reason: String| ProxyError::Connect { server: server.address.clone(), reason };
    let stream = match tokio::time::timeout(upstream.connect_timeout, TcpStream::connect(server.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(refused(e.to_string())),
        Err(_) => return Err(refused(format!("no connection within {:?}", upstream.connect_timeout))),
    };
    // Requests are small writes that must not wait for Nagle's timer.
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| refused(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

/// Turns a client request into the upstream request: origin-form target, HTTP/1.1,
/// hop-by-hop headers removed, `X-Forwarded-*` set, `Host` kept.
fn prepare(req: Request<Incoming>, peer: &Peer) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);

    let host = match parts.uri.authority() {
        // HTTP/2 and absolute-form requests carry the host in the target.
        Some(authority) => {
            let value = HeaderValue::from_str(authority.as_str()).ok();
            if let Some(v) = &value {
                headers.insert(header::HOST, v.clone());
            }
            value
        }
        None => headers.get(header::HOST).cloned(),
    };
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    let proto = if peer.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    append_forwarded_for(headers, &peer.ip);

    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, Body::Incoming(body))
}

/// Appends the client's address to any `X-Forwarded-For` it sent, as one header.
fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
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

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and every header that `Connection`
/// names, except `Host`, which routing and the upstream both rely on.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
        for value in &named {
            let Ok(value) = value.to_str() else { continue };
            for name in value.split(',').map(str::trim) {
                if !name.is_empty() && !name.eq_ignore_ascii_case("host") {
                    headers.remove(name);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::TE, &header::TRANSFER_ENCODING, &header::UPGRADE] {
        if headers.contains_key(name) {
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
    fn forwarded_for_is_appended_to_what_the_client_sent() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &HeaderValue::from_static("10.0.0.1"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("1.1.1.1"));
        append_forwarded_for(&mut h, &HeaderValue::from_static("10.0.0.2"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 1.1.1.1, 10.0.0.2");
    }

    #[test]
    fn tried_set_handles_any_index() {
        let mut t = Tried::default();
        t.insert(3);
        assert!(t.contains(3) && !t.contains(4));
        // Past the bitset, one try marks every server tried: no further retries.
        t.insert(500);
        assert!(t.contains(500) && t.contains(4));
    }
}
