//! weir's one HTTP/1.1 codec (RFC 9112), used by both roles: the server that reads
//! client requests (`listener::h1`) and the client that reads server responses
//! (`proxy::h1`).
//!
//! - `framing`: RFC 9112 §6 and §9: the one `Content-Length` parser, `Transfer-Encoding`,
//!   `Connection` options, and the one scanner of comma-separated token lists.
//! - `chunked`: the one chunked-body decoder, with trailers.
//! - `server`: request heads parsed in place and response heads encoded; `body`:
//!   request bodies read from the connection's read side.
//! - `response`: response heads parsed in place with their framing.
//! - `encode`: header and chunk-size lines, and the vectored write.

pub mod body;
pub mod chunked;
pub mod encode;
pub mod framing;
pub mod response;
pub mod server;
