//! weir's integration tests: one binary, real sockets on 127.0.0.1, real HTTP.

mod balancing;
mod cache;
mod cli;
mod codec_strict;
mod edge;
mod failures;
mod hardening_clients;
mod hardening_slow;
mod hardening_upstreams;
mod headers;
mod health;
mod observability;
mod proxying;
mod ratelimit;
mod routing;
mod scaleout;
mod server_h1;
mod shaping;
mod streaming;
mod support;
mod upstream_h1;
