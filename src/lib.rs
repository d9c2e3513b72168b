//! weir: an HTTP load-balancing reverse proxy.
//!
//! A request's path reads through a few modules: `listener` accepts it, `proxy`
//! routes it, picks a server with the upstream's `balancer`, forwards it and records
//! it in `metrics`. `config` loads the TOML; `runtime` turns it into the ready form
//! the request path reads; `server` runs the process lifecycle. `http` is the
//! HTTP/1.1 wire codec both the listener and the upstream client speak, on the
//! ground floor with `config`.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod balancer;
pub mod cache;
pub mod config;
pub mod discovery;
pub mod health;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod recent;
pub mod runtime;
pub mod server;
pub mod shaping;
pub mod tls;
pub mod upstream;
