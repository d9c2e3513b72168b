//! The upstream client: connections to servers (TCP, optionally TLS, then HTTP/1.1
//! or h2), the per-server pool, and sending one request.
//!
//! HTTP/1.1 connections carry one exchange at a time: a connection is taken from the
//! pool, and the response body hands it back when it ends (`body::Release`). An h2
//! connection is shared: it goes back into the pool as soon as it is taken, and
//! every request multiplexes over it. A pooled connection that turns out to be closed
//! hands the request back unsent and is replaced.

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::body::Body;
use super::error::ProxyError;
use crate::upstream::{Server, Upstream};

/// A connection's sending half.
pub enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// TLS towards an upstream's servers.
pub struct UpstreamTls {
    pub connector: TlsConnector,
    /// From `sni`; `None` means each server's host.
    pub name: Option<ServerName<'static>>,
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    /// Sends `req`; `tls` says which scheme h2 announces. On failure, the request
    /// comes back if it was not sent.
    pub(crate) async fn send(
        &mut self,
        req: Request<Body>,
        tls: bool,
    ) -> Result<Response<Incoming>, (hyper::Error, Option<Request<Body>>)> {
        let result = match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(to_h2(req, tls)).await,
        };
        result.map_err(|mut e| {
            let unsent = e.take_message();
            (e.into_error(), unsent)
        })
    }
}

/// The outcome of one exchange: the response and the connection it came on, or the
/// error and, when nothing was sent, the request back.
pub type Exchange = Result<(Response<Incoming>, Sender), (ProxyError, Option<Request<Body>>)>;

/// Sends on a pooled connection if one is alive, else on a new one.
pub async fn exchange(upstream: &Upstream, server: &Server, mut req: Request<Body>) -> Exchange {
    while let Some(mut sender) = server.take_idle() {
        if let Sender::H2(shared) = &sender {
            // Multiplexed: leave it in the pool for the requests running beside us.
            if !shared.is_closed() {
                let _ = server.state.pool.push(Sender::H2(shared.clone()));
            }
        }
        // Waits for an HTTP/1.1 connection to finish its previous exchange; errors if
        // the server closed it while idle.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.send(req, upstream.tls.is_some()).await {
            Ok(response) => return Ok((response, sender)),
            // Closed before our request went out: nothing sent, try another.
            Err((_, Some(unsent))) => req = unsent,
            Err((error, None)) => return Err((upstream_error(server, error), None)),
        }
    }
    // Boxed: the TLS handshake makes this future kilobytes large, and inline it would
    // grow every request's future, which hyper moves into place per request.
    let mut sender = match Box::pin(connect(upstream, server)).await {
        Ok(sender) => sender,
        Err(error) => return Err((error, Some(req))),
    };
    if let Sender::H2(shared) = &sender {
        let _ = server.state.pool.push(Sender::H2(shared.clone()));
    }
    match sender.send(req, upstream.tls.is_some()).await {
        Ok(response) => Ok((response, sender)),
        Err((error, unsent)) => Err((upstream_error(server, error), unsent)),
    }
}

fn upstream_error(server: &Server, source: hyper::Error) -> ProxyError {
    ProxyError::Upstream { server: server.address.clone(), source }
}

/// Opens a connection within `connect_timeout`: TCP, TLS if configured, then the
/// upstream's protocol.
pub(crate) async fn connect(upstream: &Upstream, server: &Server) -> Result<Sender, ProxyError> {
    let refused = |reason: String| ProxyError::Connect { server: server.address.clone(), reason };
    let setup = async {
        let stream = TcpStream::connect(server.addr).await.map_err(|e| refused(e.to_string()))?;
        // Requests are small writes that must not wait for Nagle's timer.
        let _ = stream.set_nodelay(true);
        match &upstream.tls {
            None => handshake(upstream, server, stream).await,
            Some(tls) => {
                let name = tls.name.clone().unwrap_or_else(|| server.tls_name.clone());
                let stream =
                    tls.connector.connect(name, stream).await.map_err(|e| refused(format!("TLS: {e}")))?;
                handshake(upstream, server, stream).await
            }
        }
    };
    match tokio::time::timeout(upstream.connect_timeout, setup).await {
        Ok(result) => result,
        Err(_) => Err(refused(format!("no connection within {:?}", upstream.connect_timeout))),
    }
}

async fn handshake<S>(upstream: &Upstream, server: &Server, stream: S) -> Result<Sender, ProxyError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let refused =
        |e: hyper::Error| ProxyError::Connect { server: server.address.clone(), reason: e.to_string() };
    if upstream.h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(refused)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection closed with an error");
            }
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(refused)?;
        tokio::spawn(async move {
            // `with_upgrades` lets a 101 response hand the connection to a tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with an error");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// h2 wants the target in absolute form (for `:scheme` and `:authority`) and no
/// `Host` header.
fn to_h2(mut req: Request<Body>, tls: bool) -> Request<Body> {
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| Authority::from_static("localhost"));
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
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
