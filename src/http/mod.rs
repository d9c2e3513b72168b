//! The wire: weir's HTTP/1.1 codec (`h1`), on the ground floor. It knows RFC 9112
//! and nothing of the pipeline: it names no module of weir but `config`, so the
//! server and client roles that use it, and anything that comes later (a third
//! protocol, requests weir makes itself), frame messages the one same way.

pub mod h1;

/// The error type of bodies: any error, sendable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
