//! The wire: weir's HTTP/1.1 codec (`h1`) and HTTP/2 server (`h2`), on the ground
//! floor. They know RFC 9112 and RFC 9113 and nothing of the pipeline: they name no
//! module of weir but `config` (and `h2` takes `h1`'s `Date`), so the server and
//! client roles that use them, and anything that comes later (requests weir makes
//! itself), frame messages the one same way.

pub mod h1;
pub mod h2;

/// The error type of bodies: any error, sendable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Fields a sender must not put in trailers (RFC 9110 §6.5.1): framing, routing,
/// request modifiers, authentication, response control, how to process the content,
/// and the hop-by-hop ones. A recipient that merged them into the header section
/// (many do) would let a body's end reshape its request, so they are dropped from a
/// request's trailers before forwarding.
static FORBIDDEN_TRAILERS: [&str; 26] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
    "expect",
    "max-forwards",
    "cache-control",
    "pragma",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-encoding",
    "content-type",
    "content-range",
    "age",
];

/// Removes from `trailers` the fields no trailer may carry (`FORBIDDEN_TRAILERS`).
pub fn strip_forbidden_trailers(trailers: &mut ::http::HeaderMap) {
    for name in FORBIDDEN_TRAILERS {
        trailers.remove(name);
    }
}
