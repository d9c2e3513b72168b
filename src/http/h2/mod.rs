//! weir's HTTP/2 server (RFC 9113), beside `h1`: frames, HPACK, and the server
//! connection that hands each request to a `Handler`, with no task per stream.
//!
//! - `frame`: frame headers and payloads parsed with every length and stream-id rule
//!   of RFC 9113 §4 and §6, and frames encoded.
//! - `hpack`: the header block decoder (with its dynamic table) and a stateless
//!   encoder (RFC 7541); `huffman_table`: the Huffman code.
//! - `request`: requests from decoded blocks, validated per RFC 9113 §8.
//! - `server`: the connection: streams, flow control, settings, GOAWAY, and the
//!   polling of each stream's handler future and response body.
//! - `body`: request bodies, with the window given back as they are read.
//!
//! Conformance: h2spec's 146 tests pass on h2c and TLS (`scripts/h2spec.sh`).
//! `tests/h2_differential.rs` sends the same generated requests (hostile fields,
//! padding, trailers, HPACK with the dynamic table) to this server and to hyper's:
//! where both hand a request on, it must be the same; weir may refuse what hyper
//! takes, never the reverse. The deliberate differences, both as RFC 9113 §8 says:
//! - an empty `:path` is refused (hyper takes it, as an empty URI);
//! - trailers with pseudo-header fields are refused (hyper drops the fields).
//!
//! `fuzz/fuzz_targets/h2_frames.rs` runs arbitrary bytes through the frame parser,
//! the HPACK decoder and a whole connection.

pub mod body;
pub mod frame;
pub mod hpack;
mod huffman_table;
pub mod request;
pub mod server;

pub use body::RecvBody;
pub use server::{serve, Config, Handler, PREFACE};
