//! weir's integration tests: one binary, real sockets on 127.0.0.1, real HTTP.

mod balancing;
mod edge;
mod health;
mod observability;
mod proxying;
mod support;
