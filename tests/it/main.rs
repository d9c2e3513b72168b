//! weir's integration tests: one binary, real sockets on 127.0.0.1, real HTTP.

mod admin;
mod balancing;
mod cache;
mod cache_poisoning;
mod cli;
mod client_faults;
mod edge;
mod failures;
mod hardening_clients;
mod hardening_slow;
mod hardening_upstreams;
mod headers;
mod health;
mod hop_by_hop;
mod observability;
mod proxying;
mod ratelimit;
mod reload;
mod routing;
mod scaleout;
mod server_h1;
mod service;
mod shaping;
mod streaming;
mod support;
mod upstream_h1;
