//! Upgraded connections (WebSocket and the like): once a server has answered `101`,
//! the client's connection and the server's are joined and bytes are copied both
//! ways. The tunnel runs on the client connection's own task, on either server.

use std::sync::Arc;

use http::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::body::Body;
use crate::upstream::client::Stream;
use crate::upstream::InFlight;

/// Makes the tunnel of an upgrade answered on hyper's server and leaves it in the
/// response (`Tunnel`) for the client connection's task to run once the `101` is out.
pub(super) fn tunnel(mut response: Response<Body>, client: OnUpgrade) -> Response<Body> {
    let (in_flight, upstream) = match response.body_mut() {
        Body::Upstream(body) => body.detach(),
        _ => (None, None),
    };
    let parts = TunnelParts { client, upstream, in_flight };
    response.extensions_mut().insert(Tunnel(Arc::new(std::sync::Mutex::new(Some(parts)))));
    response
}

/// An upgrade's tunnel on hyper's server, run by the client connection's own task
/// (`listener` takes it out of the response) rather than a task of its own: so the
/// tunnel keeps the connection's `max_connections` permit, stays in
/// `weir_connections_active` and is waited for by a shutdown's drain. Shared and
/// locked only because response extensions must be `Clone`; made once per upgrade.
#[derive(Clone)]
pub struct Tunnel(Arc<std::sync::Mutex<Option<TunnelParts>>>);

struct TunnelParts {
    client: OnUpgrade,
    upstream: Option<(Stream, bytes::Bytes)>,
    in_flight: Option<InFlight>,
}

impl Tunnel {
    /// Waits for hyper to hand over the client's side (once the `101` is written),
    /// then copies both ways until either side closes.
    pub async fn run(self) {
        let parts = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(TunnelParts { client, upstream, in_flight }) = parts else { return };
        let Some((upstream, early)) = upstream else {
            tracing::debug!("upgrade failed: the upstream connection is not HTTP/1.1");
            return;
        };
        match client.await {
            Ok(client) => splice(TokioIo::new(client), upstream, &early, &[], in_flight).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    }
}

/// The tunnel of an upgraded connection, for either client server (hyper's, through
/// `tunnel`, or weir's HTTP/1.1 server): delivers the bytes each side sent right
/// behind the handshake (`from_server`, `from_client`), then copies both ways until
/// either side closes. The request stays in flight (`in_flight`) for the tunnel's life.
pub(crate) async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    mut client: C,
    mut upstream: Stream,
    from_server: &[u8],
    from_client: &[u8],
    in_flight: Option<InFlight>,
) {
    let _in_flight = in_flight;
    let result = async {
        client.write_all(from_server).await?;
        upstream.write_all(from_client).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    if let Err(e) = result.await {
        tracing::debug!(error = %e, "tunnel closed with an error");
    }
}
