//! `ProxyError`: every way a proxied request can fail, and the status each one gets.
//! The status table is written once, here.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::Body;
use crate::body::{BoxError, ClientFault};
use crate::upstream::client::SendError;
use crate::upstream::Server;

/// Why a request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("upstream `{upstream}` has no healthy server")]
    NoHealthyServer { upstream: std::sync::Arc<str> },
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: std::sync::Arc<str>, reason: String },
    #[error("{server} sent no response headers within {after:?}")]
    UpstreamTimeout { server: std::sync::Arc<str>, after: Duration },
    #[error("{server} failed the request: {source}")]
    Upstream { server: std::sync::Arc<str>, source: BoxError },
    #[error("rate limited; next request allowed in {retry_after:?}")]
    RateLimited { retry_after: Duration },
    #[error("upstream `{upstream}` is at max_in_flight and its queue is full")]
    QueueFull { upstream: std::sync::Arc<str> },
    #[error("upstream `{upstream}` had no free slot within {after:?}")]
    QueueTimeout { upstream: std::sync::Arc<str>, after: Duration },
    /// A response a client could frame differently from weir.
    #[error("{server} sent a bad response: {reason}")]
    BadResponse { server: std::sync::Arc<str>, reason: &'static str },
    /// A request an upstream could read differently from weir (see `framing`).
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
    #[error("transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("request body is larger than the route's max_request_body of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the client is not allowed by the route's allow/deny lists")]
    AccessDenied,
    #[error("the path has a dot-segment or an empty segment")]
    UnsafePath,
    /// The client's request body broke, stalled or was abandoned: its fault, which no
    /// server is blamed for.
    #[error("{}", client_fault_text(*fault))]
    ClientBody { fault: ClientFault },
    #[error("more request header fields than allowed")]
    HeadersTooLarge,
}

fn client_fault_text(fault: ClientFault) -> &'static str {
    match fault {
        ClientFault::TooLarge => "the client's request body is too large",
        ClientFault::Malformed => "the client's request body is malformed",
        ClientFault::Stalled => "the client stopped sending its request body",
        ClientFault::Aborted => "the client went away mid-body",
    }
}

/// nginx's "client closed request": never seen by the client, which is gone, but
/// logged and counted so an abort is told apart from a server's failure.
pub fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

impl ProxyError {
    /// A failed send to `server`, as the pipeline reports it.
    pub fn from_send(server: &Server, error: SendError) -> ProxyError {
        let server = server.address.clone();
        match error {
            SendError::Connect(reason) => ProxyError::Connect { server, reason },
            SendError::Broken(source) => ProxyError::Upstream { server, source },
            SendError::BadResponse(reason) => ProxyError::BadResponse { server, reason },
            SendError::ClientBody(fault) => ProxyError::ClientBody { fault },
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyServer { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } | ProxyError::BadResponse { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::AccessDenied => StatusCode::FORBIDDEN,
            ProxyError::UnsafePath => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody { fault } => match fault {
                ClientFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ClientFault::Malformed => StatusCode::BAD_REQUEST,
                ClientFault::Stalled => StatusCode::REQUEST_TIMEOUT,
                ClientFault::Aborted => client_closed_request(),
            },
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// A short static name of what went wrong, for logs and health reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route",
            ProxyError::NoHealthyServer { .. } => "no healthy server",
            ProxyError::Connect { .. } => "connect failed",
            ProxyError::UpstreamTimeout { .. } => "timed out",
            ProxyError::Upstream { .. } => "connection failed mid-request",
            ProxyError::RateLimited { .. } => "rate limited",
            ProxyError::QueueFull { .. } => "upstream queue full",
            ProxyError::QueueTimeout { .. } => "upstream queue timed out",
            ProxyError::BadResponse { .. } => "bad response",
            ProxyError::BadRequest { .. } => "bad request",
            ProxyError::UnsupportedTransferCoding => "unsupported transfer coding",
            ProxyError::BodyTooLarge { .. } => "request body too large",
            ProxyError::AccessDenied => "access denied",
            ProxyError::UnsafePath => "unsafe path",
            ProxyError::ClientBody { fault } => match fault {
                ClientFault::TooLarge => "request body too large",
                ClientFault::Malformed => "malformed request body",
                ClientFault::Stalled => "request body stalled",
                ClientFault::Aborted => "client went away",
            },
            ProxyError::HeadersTooLarge => "too many header fields",
        }
    }

    /// Whether the client connection must close after this answer: a refused body is
    /// never read, and a request framed ambiguously leaves the rest of the connection
    /// unframed too.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BodyTooLarge { .. }
                | ProxyError::BadRequest { .. }
                | ProxyError::UnsupportedTransferCoding
                | ProxyError::ClientBody { .. }
        )
    }

    /// A short plain-text answer with this error's status, closing the connection
    /// where `closes_connection` says so.
    pub fn into_response(self) -> Response<Body> {
        let mut response = status_response(self.status());
        if self.closes_connection() {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// A client's own fault, not the upstream's: no server is blamed for it.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BodyTooLarge { .. }
                | ProxyError::AccessDenied
                | ProxyError::UnsafePath
                | ProxyError::ClientBody { .. }
        )
    }
}

/// A plain-text response made by weir itself: the status line as the body.
pub fn status_response(status: StatusCode) -> Response<Body> {
    let body: &'static [u8] = match status {
        StatusCode::BAD_REQUEST => b"400 Bad Request\n",
        StatusCode::NOT_FOUND => b"404 Not Found\n",
        StatusCode::NOT_IMPLEMENTED => b"501 Not Implemented\n",
        StatusCode::BAD_GATEWAY => b"502 Bad Gateway\n",
        StatusCode::SERVICE_UNAVAILABLE => b"503 Service Unavailable\n",
        StatusCode::GATEWAY_TIMEOUT => b"504 Gateway Timeout\n",
        StatusCode::TOO_MANY_REQUESTS => b"429 Too Many Requests\n",
        StatusCode::BAD_REQUEST => b"400 Bad Request\n",
        StatusCode::FORBIDDEN => b"403 Forbidden\n",
        StatusCode::REQUEST_TIMEOUT => b"408 Request Timeout\n",
        StatusCode::PAYLOAD_TOO_LARGE => b"413 Content Too Large\n",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => b"431 Request Header Fields Too Large\n",
        _ => b"",
    };
    let mut response = Response::new(Body::from_static(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_framing_and_bodies_close_the_connection_and_others_keep_it() {
        let close = |e: ProxyError| e.into_response().headers().get(header::CONNECTION).cloned();
        assert_eq!(close(ProxyError::BadRequest { reason: "two Host headers" }).unwrap(), "close");
        assert_eq!(close(ProxyError::UnsupportedTransferCoding).unwrap(), "close");
        assert_eq!(close(ProxyError::BodyTooLarge { limit: 1 }).unwrap(), "close");
        assert_eq!(close(ProxyError::NoRoute), None);
        assert_eq!(close(ProxyError::UnsafePath), None);
    }

    #[test]
    fn each_error_has_its_status() {
        let connect = ProxyError::Connect { server: "a".into(), reason: "refused".into() };
        assert_eq!(connect.status(), StatusCode::BAD_GATEWAY);
        let timeout = ProxyError::UpstreamTimeout { server: "a".into(), after: Duration::from_secs(1) };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            ProxyError::NoHealthyServer { upstream: "u".into() }.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ProxyError::NoRoute.status(), StatusCode::NOT_FOUND);
        let limited = ProxyError::RateLimited { retry_after: Duration::from_secs(1) };
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(ProxyError::QueueFull { upstream: "u".into() }.status(), StatusCode::SERVICE_UNAVAILABLE);
        let queued = ProxyError::QueueTimeout { upstream: "u".into(), after: Duration::from_secs(1) };
        assert_eq!(queued.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
