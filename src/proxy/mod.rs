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

use crate::runtime::Runtime;
use body::Body;
use error::ProxyError;
pub use forward::Peer;

/// One request: route -> pick -> forward -> record.
pub async fn handle(rt: &Runtime, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let started = Instant::now();
    let Some(route) = rt.router.route(peer.listener, &req) else {
        let response = ProxyError::NoRoute.into_response();
        rt.unrouted.record(response.status(), started.elapsed());
        return response;
    };
    let upstream = &route.upstream;
    let response = match forward::forward(upstream, req, peer).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(upstream = %upstream.name, client = %peer.addr, %error, "request failed");
            error.into_response()
        }
    };
    upstream.metrics.record(response.status(), started.elapsed());
    response
}
