//! weir: an HTTP load-balancing reverse proxy.
//!
//! The modules stand on floors, and a module imports only from its own floor or
//! below (`tests/floors.rs` checks it; `docs/architecture.md` draws it):
//!
//! 0. `config` (the TOML, validated and parsed once), `http` (the wire) and
//!    `socket` (a client's socket, registered with the poller only when it waits).
//! 1. Small shared parts: `metrics`, `recent`, `tls`, `admission`, `access_log`,
//!    `clock`, `heap`, `body` (the request bodies weir relays).
//! 2. weir's craft, each standing alone: `balancer`, `cache`, `ratelimit`,
//!    `shaping`.
//! 3. `upstream`: servers, their pools and the client that sends to them, health
//!    checks, DNS discovery, retry budget.
//! 4. `proxy`: the pipeline of one request (route, shape, limit, cache, admit,
//!    forward, record).
//! 5. The process: `listener` accepts and hands requests to `proxy`; `runtime` turns
//!    the config into the ready form the request path reads; `admin` serves
//!    `/metrics` and `/status`; `server` runs the lifecycle.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod balancer;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
#[cfg(unix)]
pub mod handover;
pub mod heap;
pub mod http;
pub mod listener;
pub mod logthrottle;
pub mod metrics;
#[cfg(unix)]
pub mod notify;
pub mod proxy;
pub mod ratelimit;
pub mod recent;
pub mod recycle;
pub mod runtime;
pub mod server;
pub mod shaping;
#[cfg(unix)]
pub mod socket;
pub mod tls;
pub mod upstream;
