//! The upstream client: connections to servers (TCP, optionally TLS, then HTTP/1.1
//! or h2), the per-server pool, and sending one request.
//!
//! HTTP/1.1 connections are weir's own (the codec's `http::h1::client`) and carry one
//! exchange at a time: a connection is taken from the pool, and the response body
//! hands it back when it ends (`upstream::body::UpstreamBody`). An h2 connection (hyper's) is shared: it goes back
//! into the pool as soon as it is taken, and every request multiplexes over it. A
//! pooled connection that turns out to be closed leaves the request unsent, and is
//! replaced.

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::body::ResponseBody;
use super::{Server, Upstream};
use crate::body::{classify, BoxError, ClientFault, Outbound};
use crate::http::h1::client::{self as h1, ExtraHeaders};

pub use crate::http::h1::client::Stream;

/// An upstream HTTP/1.1 connection carrying weir's request bodies.
pub type H1Conn = h1::Conn<Outbound>;
/// A response body read from such a connection.
pub type H1Body = h1::Body<Outbound>;

/// A pooled connection.
pub enum Sender {
    /// Boxed once, when made (`h1::Conn::new`).
    H1(Box<H1Conn>),
    H2(http2::SendRequest<Outbound>),
}

/// TLS towards an upstream's servers.
pub struct UpstreamTls {
    pub connector: TlsConnector,
    /// From `sni`; `None` means each server's host.
    pub name: Option<ServerName<'static>>,
}

/// A failed send: the error, and whether the request may have reached the server.
/// When it did not, the request is still whole and can go elsewhere.
pub struct SendFailure {
    pub error: SendError,
    pub sent: bool,
}

/// Why a send failed; the pipeline says which server and what status it gets.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke, or the server reset the stream.
    #[error("{0}")]
    Broken(BoxError),
    /// A response a client could frame differently from weir.
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    /// The client's body failed while it went up: the client's fault.
    #[error("the client's request body failed ({0:?})")]
    ClientBody(ClientFault),
}

impl Sender {
    /// Sends `req` (its body is taken once it is on its way); `tls` says which scheme
    /// h2 announces. `extra`: header fields the HTTP/1.1 client adds as it writes the
    /// head (for h2 they are in the map already). `lines`: an HTTP/1.1 response's
    /// fields stay lines for weir's HTTP/1.1 server (`UpstreamBody::encoded`).
    pub async fn send<E: ExtraHeaders>(
        self,
        req: &mut Request<Outbound>,
        extra: Option<&E>,
        tls: bool,
        lines: bool,
    ) -> Result<Response<ResponseBody>, SendFailure> {
        match self {
            Sender::H1(conn) => match conn.send(req, extra, lines).await {
                Ok(response) => Ok(response.map(ResponseBody::H1)),
                Err(h1::SendError { error, sent }) => Err(SendFailure { error: h1_error(error), sent }),
            },
            Sender::H2(mut sender) => {
                if let Err(e) = sender.ready().await {
                    return Err(SendFailure { error: SendError::Broken(e.into()), sent: false });
                }
                match sender.try_send_request(to_h2(std::mem::take(req), tls)).await {
                    Ok(response) => Ok(response.map(ResponseBody::H2)),
                    Err(mut e) => {
                        let unsent = e.take_message();
                        let sent = unsent.is_none();
                        if let Some(unsent) = unsent {
                            *req = unsent;
                        }
                        Err(SendFailure { error: SendError::Broken(e.into_error().into()), sent })
                    }
                }
            }
        }
    }
}

/// Sends on a pooled connection if one is alive, else on a new one (`lines`: see
/// `Sender::send`).
pub async fn exchange<E: ExtraHeaders>(
    upstream: &Upstream,
    server: &Server,
    req: &mut Request<Outbound>,
    extra: Option<&E>,
    lines: bool,
) -> Result<Response<ResponseBody>, SendFailure> {
    let tls = upstream.tls.is_some();
    while let Some(sender) = server.take_idle() {
        let sender = match sender {
            Sender::H2(shared) if shared.is_closed() => continue,
            Sender::H2(shared) => {
                // Multiplexed: leave it in the pool for the requests running beside us.
                let _ = server.state.pool.push(Sender::H2(shared.clone()));
                Sender::H2(shared)
            }
            Sender::H1(mut conn) => {
                if !conn.is_reusable() {
                    continue;
                }
                // The common case, straight to the connection rather than through
                // `Sender::send`: one async layer fewer to move the response out of.
                match conn.send(req, extra, lines).await {
                    Ok(response) => return Ok(response.map(ResponseBody::H1)),
                    // Closed before our request went out: nothing sent, try another.
                    Err(h1::SendError { sent: false, .. }) => continue,
                    Err(h1::SendError { error, sent }) => {
                        return Err(SendFailure { error: h1_error(error), sent })
                    }
                }
            }
        };
        match sender.send(req, extra, tls, lines).await {
            // Closed before our request went out: nothing sent, try another.
            Err(failure) if !failure.sent => continue,
            done => return done,
        }
    }
    // Boxed: the TLS handshake makes this future kilobytes large, and inline it would
    // grow every request's future, which hyper moves into place per request.
    let sender = match Box::pin(connect(upstream, server)).await {
        Ok(sender) => sender,
        Err(error) => return Err(SendFailure { error, sent: false }),
    };
    if let Sender::H2(shared) = &sender {
        let _ = server.state.pool.push(Sender::H2(shared.clone()));
    }
    sender.send(req, extra, tls, lines).await
}

fn h1_error(error: h1::Error) -> SendError {
    match error {
        h1::Error::Bad(reason) => SendError::BadResponse(reason),
        // The client's body failed while it went up: the client's fault, also when
        // no `BodyWatch` saw it (a body that said it had ended, then failed).
        h1::Error::RequestBody(e) => SendError::ClientBody(classify(&*e)),
        other => SendError::Broken(other.into()),
    }
}

/// Opens a connection within `connect_timeout`: TCP, TLS if configured, then the
/// upstream's protocol.
pub async fn connect(upstream: &Upstream, server: &Server) -> Result<Sender, SendError> {
    let refused = SendError::Connect;
    let setup = async {
        let stream = TcpStream::connect(server.addr).await.map_err(|e| refused(e.to_string()))?;
        // Requests are small writes that must not wait for Nagle's timer.
        let _ = stream.set_nodelay(true);
        let stream = match &upstream.tls {
            None => Stream::Tcp(stream),
            Some(tls) => {
                let name = tls.name.clone().unwrap_or_else(|| server.tls_name.clone());
                let stream =
                    tls.connector.connect(name, stream).await.map_err(|e| refused(format!("TLS: {e}")))?;
                Stream::Tls(Box::new(stream))
            }
        };
        if upstream.h2 {
            handshake_h2(stream).await
        } else {
            Ok(Sender::H1(H1Conn::new(stream)))
        }
    };
    match tokio::time::timeout(upstream.connect_timeout, setup).await {
        Ok(result) => result,
        Err(_) => Err(refused(format!("no connection within {:?}", upstream.connect_timeout))),
    }
}

async fn handshake_h2(stream: Stream) -> Result<Sender, SendError> {
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection closed with an error");
        }
    });
    Ok(Sender::H2(sender))
}

/// h2 wants the target in absolute form (for `:scheme` and `:authority`) and no
/// `Host` header. A request handed back unsent is already in that form, and keeps its
/// authority.
fn to_h2(mut req: Request<Outbound>, tls: bool) -> Request<Outbound> {
    let host = req.headers_mut().remove(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let authority = host.or(parts.authority.take()).unwrap_or_else(|| Authority::from_static("localhost"));
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
    req
}

/// `te: trailers`, the one TE value h2 allows; gRPC needs it end to end.
pub static TE_TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// The name to verify a server's certificate against when `sni` is not set: the
/// host part of its configured address. Computed once, at build time.
pub fn tls_name(address: &str) -> ServerName<'static> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    server_name(host.trim_start_matches('[').trim_end_matches(']'))
}

/// A DNS name or IP address for TLS; validation has already checked configured ones.
pub fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("a literal valid DNS name"))
}
