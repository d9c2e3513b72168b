//! `Pipeline`: what the request path reads of the runtime. `runtime` builds it from
//! the config and holds it, so a reload swaps it with the rest; the pipeline never
//! names the runtime.

use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::metrics::ClientMetrics;

use super::client_ip::TrustedProxies;
use super::route::Router;

/// The request-path part of a runtime.
pub struct Pipeline {
    pub router: Router,
    /// Counts requests that matched no route (`upstream=""`).
    pub unrouted: ClientMetrics,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// The access log writer, when `[access_log]` is enabled.
    pub access_log: Option<Arc<AccessLog>>,
}
