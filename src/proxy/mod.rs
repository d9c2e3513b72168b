//! The request path: route -> pick -> forward -> record, as plain functions.
//!
//! `handle` reads top to bottom as those steps. Each request loads the current
//! `Runtime` once (in `listener`) and keeps it to the end, so a reload never changes
//! routes or servers under a request that is already running.

pub mod body;
pub mod client;
pub mod error;
pub mod forward;
pub mod retry;
pub mod route;

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::access_log::Pending;
use crate::runtime::Runtime;
use body::Body;
use error::ProxyError;
pub use forward::Peer;
use forward::Trace;

/// One request: route -> pick -> forward -> record (metrics, then the access log).
pub async fn handle(rt: &Runtime, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let started = Instant::now();
    let log = rt.access_log.as_ref().map(|log| log.begin(started, peer.addr, &req));
    let Some(route) = rt.router.route(peer.listener, &req) else {
        let response = ProxyError::NoRoute.into_response();
        rt.unrouted.record(response.status(), started.elapsed());
        return logged(response, log);
    };
    let upstream = &route.upstream;
    let mut trace =
        Trace { request_bytes: log.as_ref().and_then(Pending::request_tally), ..Trace::default() };
    let response = match forward::forward(upstream, req, peer, &mut trace).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(upstream = %upstream.name, client = %peer.addr, %error, "request failed");
            error.into_response()
        }
    };
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
    match response.body_mut() {
        Body::Upstream(body) => body.log = Some(log),
        body => log.finish(http_body::Body::size_hint(body).exact().unwrap_or(0)),
    }
    response
}
