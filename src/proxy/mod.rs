//! The request path: route -> (answer locally | limit -> (cache) -> admit -> forward)
//! -> record, as plain functions. A route with a cache looks up first and forwards
//! only on a miss (see `crate::cache`). Shaping (`crate::shaping`: access lists,
//! request ids, header rules, rewrites, local answers) happens around those steps.
//!
//! `handle` reads top to bottom as those steps. Before any of them, the client's
//! hop-by-hop headers and those its `Connection` names are stripped, once: every
//! later step reads and adds headers knowing the client can no longer take them away.
//!
//! A request from weir's own HTTP/1.1 server may come with its fields as the lines
//! the client sent (`RequestLines`) and an empty header map. They stay lines while
//! nothing reads a field but `Host` and `Content-Length` (`framing::lines_pass`
//! before routing, `needs_map` after it), and go up as they are: the HTTP/1.1 client
//! copies them, leaving out the hop-by-hop, framing and `X-Forwarded-*` lines
//! (`forwarded::Forwarded::fields`). Otherwise the map is built from them (the very
//! map the codec would have built) and the request goes on as any other.
//!
//! Each request loads the current
//! `Runtime` once (in `listener`) and keeps it to the end, so a reload never changes
//! routes or servers under a request that is already running. A request refused by
//! its rate limit never reaches `admit` or the upstream; one refused by the
//! upstream's queue never reaches a server.

pub mod body;
mod cache;
pub mod client_ip;
pub mod error;
pub mod forward;
pub mod forwarded;
pub mod framing;
pub mod hop_by_hop;
mod pipeline;
pub mod route;
pub mod tunnel;

use std::future::Future;
use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderValue, Request, Response};

use crate::access_log::Pending;
use crate::admission::Refused;
use crate::body::ClientBody;
use crate::http::h1::server::RequestLines;
use crate::ratelimit::Decision;
use crate::shaping::template::{Var, Vars};
use crate::shaping::{self, X_REQUEST_ID};
use body::Body;
use error::ProxyError;
pub use forward::Peer;
use forward::{Job, Trace};
pub use pipeline::Pipeline;
use route::{Action, Proxy, Route};

/// One request: route -> (answer locally | limit -> (cache) -> admit -> forward) ->
/// record (metrics, then the access log). Access lists come first: a refused client
/// costs no upstream work.
///
/// `lines`: the request's fields as the lines weir's HTTP/1.1 server kept them, its
/// header map empty (`None` from hyper's servers, and for a head the codec put in a
/// map). They go up as they are, with no map built, when nothing on the way reads a
/// field but `Host` (routing) and `Content-Length` (`max_request_body`); else the
/// map is built from them, at once or once the route is known (`needs_map`), and
/// the request goes on as any other. The access log reads `Host` from them.
// Not an `async fn`: see the `async` block below.
#[allow(clippy::manual_async_fn)]
pub fn handle<'a>(
    rt: &'a Pipeline,
    mut req: Request<ClientBody>,
    peer: &'a Peer,
    mut lines: Option<RequestLines>,
) -> impl Future<Output = Response<Body>> + 'a {
    // An `async` block, not an `async fn`: an `async fn` moves its arguments into
    // locals of its own, so its future would hold the request (264 bytes) twice
    // and copy it over when it starts.
    async move {
        let started = Instant::now();
        // The checks and the strip below, as lines: when they would pass the request as
        // it is; else they decide on its map (`framing::lines_pass`).
        if let Some(fields) = lines.take_if(|l| !framing::lines_pass(&req, l, peer.underscores_in_headers)) {
            fields.append_to(req.headers_mut());
        }
        let mut log =
            rt.access_log.as_ref().map(|log| log.begin_lines(started, peer.addr, &req, lines.as_ref()));
        if lines.is_none() {
            if let Err(error) = framing::check(&req) {
                tracing::debug!(client = %peer.addr, %error, "refused");
                return unrouted(rt, error, started, log);
            }
            // First, once: what the client's `Connection` names is the client's own, and no
            // later step (routing, limits, shaping, the cache key) may read it or lose to it.
            hop_by_hop::strip_client_hop_by_hop(req.headers_mut());
            framing::sanitize(&mut req, peer.underscores_in_headers);
        }
        // Before routing, so no path that a server would read as another route's can match.
        if !shaping::path_is_safe(req.uri().path()) {
            return unrouted(rt, ProxyError::UnsafePath, started, log);
        }
        let route = match &lines {
            Some(fields) => rt.router.route_lines(peer.listener, &req, fields),
            None => rt.router.route(peer.listener, &req),
        };
        let Some(route) = route else {
            return unrouted(rt, ProxyError::NoRoute, started, log);
        };
        if let Some(fields) = lines.take_if(|_| needs_map(route)) {
            fields.append_to(req.headers_mut());
            // What the strip above leaves of them: the lines hold no hop-by-hop field it
            // would do more with than remove (`parse_request` keeps those in a map).
            hop_by_hop::strip_client_hop_by_hop(req.headers_mut());
        }
        let client = route
            .needs_client_ip
            .then(|| client_ip::client_ip(peer.addr.ip(), req.headers(), &rt.trusted_proxies));
        let request_id = route
            .request_id
            .then(|| shaping::request_id(req.headers(), rt.trusted_proxies.contains(peer.addr.ip())));
        // `{host}` for response headers, kept before the request is handed on.
        let host =
            route.response_headers.as_ref().filter(|h| h.uses(Var::Host)).and_then(|_| host_value(&req));
        let mut trace =
            Trace { request_bytes: log.as_ref().and_then(Pending::request_tally), ..Trace::default() };
        let upstream = route.upstream();
        let mut response = match (&route.access, &route.action) {
            (Some(access), _) if !client.is_some_and(|ip| access.admits(ip)) => {
                access.denied.inc();
                ProxyError::AccessDenied.into_response()
            }
            (_, Action::Answer(answer)) => answer.answer(&Vars {
                host: route::request_host(&req),
                path: req.uri().path_and_query().map(|p| p.as_str()),
                tls: peer.tls,
                ..Vars::default()
            }),
            // The proxying steps: body size -> limit -> shape the request (id, header
            // rules, path) -> admit -> forward. Inline, not an async function of their own:
            // each async layer copies the request into its future and the response out of
            // it, a hundred-odd instructions per request (BENCHMARKS.md, session 4).
            (_, Action::Proxy(proxy)) => {
                let shaped = Shaped { client, request_id: request_id.as_ref(), fields: lines.as_ref() };
                let upstream = &proxy.upstream;
                // A declared length over the limit is refused before reading a byte of it,
                // and before it spends a token of the rate limit.
                let too_large =
                    proxy.max_request_body.filter(|max| declared_length(&req, shaped.fields) > *max);
                let limit = match proxy.limiter.as_deref().filter(|_| too_large.is_none()) {
                    None => None,
                    Some(limiter) => {
                        let client = || {
                            shaped.client.unwrap_or_else(|| {
                                client_ip::client_ip(peer.addr.ip(), req.headers(), &rt.trusted_proxies)
                            })
                        };
                        // Only a limit kept in Redis awaits; a local one stays a plain call.
                        let decision = if limiter.is_shared() {
                            limiter.check_shared(req.headers(), client, started).await
                        } else {
                            limiter.check(req.headers(), client, started)
                        };
                        Some((limiter, decision))
                    }
                };
                let result = match (too_large, &limit) {
                    (Some(limit), _) => Err(ProxyError::BodyTooLarge { limit }),
                    (_, Some((_, Decision::Deny { retry_after }))) => {
                        Err(ProxyError::RateLimited { retry_after: *retry_after })
                    }
                    _ => {
                        // The cache keys on the URL the client asked for, before any rewrite,
                        // and never sees the URL-override headers a client sent.
                        let client_path = proxy.cache.as_ref().and_then(|c| {
                            c.cache.strip_overrides(req.headers_mut());
                            proxy.rewrite.as_ref().and_then(|_| req.uri().path_and_query().cloned())
                        });
                        shape_request(proxy, &mut req, peer, &shaped);
                        let job = Job {
                            client_ip: shaped.client,
                            request_timeout: Some(proxy.request_timeout),
                            max_body: proxy.max_request_body,
                            fields: shaped.fields,
                            ..Job::new(upstream, peer)
                        };
                        match &proxy.cache {
                            // Straight to `forward` without a limit to wait for: one layer
                            // fewer to move the request into and the response out of.
                            None if upstream.admission.is_none() => {
                                forward::forward(&job, req, &mut trace).await
                            }
                            None => admit_and_forward(&job, req, &mut trace).await,
                            // Boxed: the cache's future is kilobytes large, and inline it
                            // would grow every request's future, which is moved into place
                            // per request.
                            Some(c) => {
                                let client = crate::cache::Client { route: c.route, path: client_path };
                                Box::pin(cache::serve(&c.cache, &job, req, &mut trace, client)).await
                            }
                        }
                    }
                };
                let mut response = result.unwrap_or_else(|error| failed(upstream, peer, error));
                if let Some((limiter, decision)) = limit {
                    body::materialize(&mut response);
                    limiter.write_headers(&decision, response.headers_mut());
                }
                response
            }
        };
        let host = host.as_ref().and_then(|h| h.to_str().ok()).map(route::strip_port);
        let vars =
            Vars { client_ip: client, request_id: request_id.as_ref(), tls: peer.tls, host, path: None };
        shape_response(route, &mut response, &vars);
        // Until the answer's head arrived, when it came from a server (the clock read
        // then, not once more: the steps since take microseconds).
        let elapsed = trace
            .answered
            .map_or_else(|| started.elapsed(), |at| at.into_std().saturating_duration_since(started));
        upstream.map_or(&rt.unrouted, |u| &u.metrics.client).record(response.status(), elapsed);
        if let Some(log) = &mut log {
            log.entry.upstream = upstream.map(|u| u.name.clone());
            log.entry.server =
                upstream.zip(trace.server).and_then(|(u, i)| u.servers.get(i)).map(|s| s.address.clone());
            log.entry.retries = trace.retries;
            log.entry.request_id = request_id;
        }
        logged(&mut response, log);
        response
    }
}

/// The request id and the route's response header rules, on every answer of the
/// route (forwarded, local, or an error weir made).
fn shape_response(route: &Route, response: &mut Response<Body>, vars: &Vars) {
    if vars.request_id.is_some() || route.response_headers.is_some() {
        body::materialize(response);
    }
    if let Some(id) = vars.request_id {
        response.headers_mut().insert(&X_REQUEST_ID, id.clone());
    }
    if let Some(rules) = &route.response_headers {
        rules.apply(response.headers_mut(), vars);
    }
}

/// Whether anything on `route`'s way reads or changes a request's fields beyond
/// `Host` and `Content-Length`, or sends them up other than as HTTP/1.1 lines: then
/// a request whose fields are lines gets its map. Errs towards the map: any setting
/// that might read one asks for it. (The access log reads `Host` from the lines.)
fn needs_map(route: &Route) -> bool {
    let Action::Proxy(proxy) = &route.action else { return true };
    let upstream = &proxy.upstream;
    route.needs_client_ip
        || route.request_id
        || route.access.is_some()
        || route.response_headers.is_some()
        || proxy.limiter.is_some()
        || proxy.cache.is_some()
        || proxy.request_headers.is_some()
        || upstream.h2
        || upstream.sticky.is_some()
        || upstream.balancer.reads_request()
}

/// What `handle` worked out about the client for the proxying steps.
struct Shaped<'a> {
    client: Option<IpAddr>,
    request_id: Option<&'a HeaderValue>,
    /// The request's fields, when they are still lines (its map empty).
    fields: Option<&'a RequestLines>,
}

/// The answer to a request that could not be forwarded. A failure that is not the
/// client's is logged, one line per upstream per interval (`LogThrottle`), with the
/// count held back.
fn failed(upstream: &crate::upstream::Upstream, peer: &Peer, error: ProxyError) -> Response<Body> {
    if !matches!(error, ProxyError::RateLimited { .. }) && !error.is_client_fault() {
        if let Some(held_back) = upstream.failure_log.admit() {
            tracing::warn!(upstream = %upstream.name, client = %peer.addr, %error, held_back, "request failed");
        }
    }
    error.into_response()
}

/// The request id, the route's request header rules and its path rewrite.
fn shape_request(proxy: &Proxy, req: &mut Request<ClientBody>, peer: &Peer, shaped: &Shaped) {
    proxy.upgrades.restrict(req.headers_mut());
    if let Some(id) = shaped.request_id {
        req.headers_mut().insert(&X_REQUEST_ID, id.clone());
    }
    if let Some(rules) = &proxy.request_headers {
        let host = rules.uses(Var::Host).then(|| host_value(req)).flatten();
        let vars = Vars {
            client_ip: shaped.client,
            request_id: shaped.request_id,
            tls: peer.tls,
            host: host.as_ref().and_then(|h| h.to_str().ok()).map(route::strip_port),
            path: None,
        };
        rules.apply(req.headers_mut(), &vars);
    }
    if let Some(uri) = proxy.rewrite.as_ref().and_then(|r| r.apply(req.uri())) {
        *req.uri_mut() = uri;
    }
}

/// The request's `Content-Length` (from its `lines` when it has them), 0 when absent
/// or unreadable (the HTTP/1.1 servers refuse malformed ones before we get here).
fn declared_length<B>(req: &Request<B>, lines: Option<&RequestLines>) -> u64 {
    let value = match lines {
        Some(lines) => lines.get(b"content-length"),
        None => req.headers().get(http::header::CONTENT_LENGTH).map(HeaderValue::as_bytes),
    };
    value.and_then(crate::http::h1::framing::parse_length).unwrap_or(0)
}

/// The host as sent (URI authority or `Host`), as a cheap handle that outlives the
/// request.
fn host_value<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(http::header::HOST).cloned(),
    }
}

/// Answers a request that reached no route (`404`) or was refused before routing
/// (`400`), counted under `upstream=""`.
fn unrouted(rt: &Pipeline, error: ProxyError, started: Instant, log: Option<Pending>) -> Response<Body> {
    let mut response = error.into_response();
    rt.unrouted.record(response.status(), started.elapsed());
    logged(&mut response, log);
    response
}

/// Hands the access log entry to the response body, to be written when the body is
/// done; a response made by weir is written at once. By reference: a response
/// moved in and out costs two copies of its few hundred bytes.
fn logged(response: &mut Response<Body>, log: Option<Pending>) {
    let Some(mut log) = log else { return };
    log.entry.status = response.status().as_u16();
    match response.body_mut().upstream_mut() {
        Some(body) => body.log = Some(log),
        None => log.finish(http_body::Body::size_hint(response.body()).exact().unwrap_or(0)),
    }
}

/// Waits for a `max_in_flight` slot if the upstream has a limit, then forwards; the
/// slot is held until the response body ends.
pub(crate) async fn admit_and_forward(
    job: &Job<'_>,
    req: Request<ClientBody>,
    trace: &mut Trace,
) -> Result<Response<Body>, ProxyError> {
    let upstream = job.upstream;
    let Some(admission) = &upstream.admission else {
        return forward::forward(job, req, trace).await;
    };
    let slot = admission.admit().await.map_err(|refused| match refused {
        Refused::QueueFull => ProxyError::QueueFull { upstream: upstream.name.clone() },
        Refused::Timeout(after) => ProxyError::QueueTimeout { upstream: upstream.name.clone(), after },
    })?;
    let mut response = forward::forward(job, req, trace).await?;
    body::hold_slot(&mut response, slot);
    Ok(response)
}
