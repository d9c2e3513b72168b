//! The request path: route -> limit -> (cache) -> admit -> forward -> record, as
//! plain functions. A route with a cache looks up first and forwards only on a miss
//! (see `crate::cache`).
//!
//! `handle` reads top to bottom as those steps. Each request loads the current
//! `Runtime` once (in `listener`) and keeps it to the end, so a reload never changes
//! routes or servers under a request that is already running. A request refused by
//! its rate limit never reaches `admit` or the upstream; one refused by the
//! upstream's queue never reaches a server.

pub mod body;
pub mod client;
pub mod client_ip;
pub mod error;
pub mod forward;
pub mod framing;
pub mod retry;
pub mod route;

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::access_log::Pending;
use crate::admission::Refused;
use crate::ratelimit::Decision;
use crate::runtime::Runtime;
use crate::upstream::Upstream;
use body::Body;
use error::ProxyError;
pub use forward::Peer;
use forward::Trace;

/// One request: route -> limit -> (cache lookup) -> admit -> forward -> (store) ->
/// record (metrics, then the access log).
pub async fn handle(rt: &Runtime, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let started = Instant::now();
    let log = rt.access_log.as_ref().map(|log| log.begin(started, peer.addr, &req));
    if let Err(error) = framing::check(&req) {
        tracing::debug!(client = %peer.addr, %error, "refused");
        let mut response = error.into_response();
        // The rest of the connection cannot be trusted to be framed as we think.
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        rt.unrouted.record(response.status(), started.elapsed());
        return logged(response, log);
    }
    let Some(route) = rt.router.route(peer.listener, &req) else {
        let response = ProxyError::NoRoute.into_response();
        rt.unrouted.record(response.status(), started.elapsed());
        return logged(response, log);
    };
    let upstream = &route.upstream;
    let limit = match route.limiter.as_deref() {
        None => None,
        Some(limiter) => {
            let client = || client_ip::client_ip(peer.addr.ip(), req.headers(), &rt.trusted_proxies);
            // Only a limit kept in Redis awaits; a local one stays a plain call.
            let decision = if limiter.is_shared() {
                limiter.check_shared(req.headers(), client, started).await
            } else {
                limiter.check(req.headers(), client, started)
            };
            Some((limiter, decision))
        }
    };
    let mut trace =
        Trace { request_bytes: log.as_ref().and_then(Pending::request_tally), ..Trace::default() };
    let result = match limit {
        Some((_, Decision::Deny { retry_after })) => Err(ProxyError::RateLimited { retry_after }),
        _ => match &route.cache {
            None => admit_and_forward(upstream, req, peer, &mut trace).await,
            // Boxed: the cache's future is kilobytes large, and inline it would grow
            // every request's future, which hyper moves into place per request.
            Some(cache) => Box::pin(cache.serve(upstream, req, peer, &mut trace)).await,
        },
    };
    let mut response = result.unwrap_or_else(|error| {
        if !matches!(error, ProxyError::RateLimited { .. }) {
            tracing::warn!(upstream = %upstream.name, client = %peer.addr, %error, "request failed");
        }
        error.into_response()
    });
    if let Some((limiter, decision)) = limit {
        limiter.write_headers(&decision, response.headers_mut());
    }
    upstream.metrics.record(response.status(), started.elapsed());
    logged(
        response,
        log.map(|mut log| {
            log.entry.upstream = Some(upstream.clone());
            log.entry.server = trace.server;
            log.entry.retries = trace.retries;
            log
        }),
    )
}

/// Hands the access log entry to the response body, to be written when the body is
/// done; a response made by weir is written at once.
fn logged(mut response: Response<Body>, log: Option<Pending>) -> Response<Body> {
    let Some(mut log) = log else { return response };
    log.entry.status = response.status().as_u16();
    match response.body_mut().upstream_mut() {
        Some(body) => body.log = Some(log),
        None => log.finish(http_body::Body::size_hint(response.body()).exact().unwrap_or(0)),
    }
    response
}

/// Waits for a `max_in_flight` slot if the upstream has a limit, then forwards; the
/// slot is held until the response body ends.
pub(crate) async fn admit_and_forward(
    upstream: &Arc<Upstream>,
    req: Request<Incoming>,
    peer: &Peer,
    trace: &mut Trace,
) -> Result<Response<Body>, ProxyError> {
    let Some(admission) = &upstream.admission else {
        return forward::forward(upstream, req, peer, trace).await;
    };
    let slot = admission.admit().await.map_err(|refused| match refused {
        Refused::QueueFull => ProxyError::QueueFull { upstream: upstream.name.clone() },
        Refused::Timeout(after) => ProxyError::QueueTimeout { upstream: upstream.name.clone(), after },
    })?;
    let mut response = forward::forward(upstream, req, peer, trace).await?;
    body::hold_slot(&mut response, slot);
    Ok(response)
}
