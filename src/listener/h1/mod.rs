//! weir's own HTTP/1.1 server: plain-TCP client connections that do not open with
//! the h2 preface are served here, one request at a time, by the connection's task.
//! The connection loop and the wire format are the ground-floor codec's
//! (`http::h1::conn`, `http::h1::server`, `http::h1::body`), which knows nothing
//! of the pipeline; this module hands it each request's way into the pipeline
//! (`Pipeline`, a `Handler`: `proxy::handle` with the current runtime) and joins
//! upgraded connections with their upstream.
//!
//! Why not hyper's server: callgrind put hyper's HTTP/1 server and hyper-util's
//! `auto` connection at almost half of weir's instructions per proxied request:
//! parsing into a fresh `HeaderMap` with a copy per value, buffered IO, a dispatcher,
//! a header-read timer armed per request, and a request future moved into place per
//! request. Here, as in weir's HTTP/1.1 client (`http::h1::client`), the head is parsed with
//! httparse straight from the connection's read buffer, its header values share that
//! buffer, `proxy::handle` runs inline in the connection's future, and the response
//! head is written into a buffer the connection keeps, with a small body in the same
//! `write`. TLS connections and h2 stay on hyper (`listener::Connection::serve`).
//!
//! What it owns, per connection (RFC 9112):
//! - request heads: `400` for a malformed head or ambiguous framing (both
//!   `Content-Length` and `Transfer-Encoding`, conflicting lengths, a coding that
//!   does not end in `chunked`, `Transfer-Encoding` in HTTP/1.0), `431` for a head
//!   over `max_header_size` or over 100 headers; either closes the connection.
//!   `proxy::framing` then refuses what is well-formed but unsafe to forward.
//! - request bodies by length or chunks (strictly, by `http::h1::chunked`:
//!   extensions skipped and bounded, trailers passed on),
//!   read by whoever polls the request's `Body` (`http::h1::body`): the connection lends its read side
//!   to the body and takes it back once the response is written. A body left unread
//!   then is drained from what is already buffered, else the connection closes, so
//!   no body byte is ever read as a request.
//! - `Expect: 100-continue`: the interim answer goes out when the body is first
//!   read, as with hyper; a request answered without its body never gets it.
//! - responses: `Content-Length` when the size is known, chunked for HTTP/1.1 when
//!   not, close-delimited for HTTP/1.0; HEAD, 1xx, 204 and 304 carry no body; a
//!   `Date` (formatted at most once a second).
//! - keep-alive: HTTP/1.1 by default, HTTP/1.0 with `keep-alive`; `Connection:
//!   close` from either side ends it (a refused request's answer carries one).
//! - upgrades: a `101` to an upgrade request joins the client socket with the
//!   upstream connection detached from the response body.
//! - timeouts: `header_read_timeout` for each head (from the end of the previous
//!   response, so it is also the keep-alive idle limit), `idle_timeout` between
//!   requests, `send_timeout` on writes (`ClientIo`); `body_read_timeout` is the
//!   request body's (`body::RequestBody`). When `stop` changes an idle
//!   connection closes after `STOP_GRACE` without a request, a busy one after its
//!   response.
//! - upgrades: the tunnel runs on the connection's own task (its `max_connections`
//!   permit and place in the drain), counted in `weir_tunnels_active`.
//! - idle connections: one that waits `PARK_AFTER` for its next request is handed
//!   back (`serve` returns it) for the listener's lobby, so its task ends until the
//!   client sends again.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use prometheus::IntGauge;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::client_io::ClientIo;
use super::conn::Connection;
use crate::body::ClientBody;
use crate::http::h1::body::Body;
use crate::http::h1::conn::{self, Handler, Limits};
use crate::http::h1::server::{ReadSide, RequestLines};
use crate::proxy;
use crate::proxy::body::Body as ResponseBody;
use crate::proxy::forward::Peer;
use crate::proxy::tunnel::splice;
use crate::runtime::SharedRuntime;
use crate::socket::{Socket, WriteHalf};

/// The pipeline, as the connection loop's handler: each request runs through
/// `proxy::handle` with the runtime current when it arrives.
struct Pipeline {
    runtime: SharedRuntime,
    peer: Peer,
    send_timeout: Duration,
    /// The listener's `weir_tunnels_active`.
    tunnels: IntGauge,
}

impl Handler<ClientIo<WriteHalf>> for Pipeline {
    type Body = ResponseBody;

    /// `proxy::handle` builds a request's header map only when something needs it.
    const LINES: bool = true;

    // Not an `async fn`: see the `async` block below.
    #[allow(clippy::manual_async_fn)]
    fn call(
        &self,
        req: Request<Option<Body>>,
        lines: Option<RequestLines>,
    ) -> impl Future<Output = Response<ResponseBody>> {
        // An `async` block, not an `async fn`: an `async fn` moves its arguments into
        // locals of its own, a copy of the request when it starts.
        async move {
            let rt = self.runtime.load_full();
            let req = req.map(|body| match body {
                None => ClientBody::Empty,
                Some(body) => ClientBody::H1(body),
            });
            proxy::handle(&rt.pipeline, req, &self.peer, lines).await
        }
    }

    /// Joins the client and upstream sockets and copies bytes both ways until either
    /// closes. The tunnel counts as a request in flight on its server for its whole
    /// life.
    async fn upgrade(
        &self,
        mut response: Response<ResponseBody>,
        side: ReadSide,
        write: ClientIo<WriteHalf>,
    ) {
        let (in_flight, upstream) = match response.body_mut().upstream_mut() {
            Some(body) => body.detach(),
            None => (None, None),
        };
        let Some((upstream, early)) = upstream else {
            tracing::debug!("upgrade failed: the upstream connection is not HTTP/1.1");
            return;
        };
        let ReadSide { io, buf } = side;
        let Ok(client) = io.reunite(write.io) else { return };
        let client = ClientIo::writer(client, self.send_timeout);
        // On this connection's task: the tunnel keeps its `max_connections` permit,
        // its place in `weir_connections_active` and in a shutdown's drain.
        let _counted = super::lobby::Active::new(&self.tunnels);
        splice(client, upstream, &early, &buf, in_flight).await
    }

    /// Without the `shutdown` the write half makes when dropped: the read half's
    /// drop closes the socket, and the close sends the FIN.
    fn release(&self, write: ClientIo<WriteHalf>) {
        write.io.forget();
    }
}

/// Serves `stream`, whose first bytes (`first`) are not an h2 preface, until the
/// client leaves, a timeout, an error, or `stop`; or until it has been idle for
/// `PARK_AFTER`: then it is returned, with its keep-alive deadline, for the lobby.
pub(super) async fn serve(conn: Connection, stream: Socket, first: BytesMut) -> Option<(Socket, Instant)> {
    let Connection { settings, runtime, stop, mut peer, tunnels } = conn;
    // This server writes a server's response fields as weir's client read them.
    peer.writes_lines = true;
    let (read, write) = stream.into_split();
    let limits = Limits {
        max_head: settings.max_header_size,
        header_read_timeout: settings.handshake_timeout,
        idle_timeout: settings.idle_timeout,
        stop_grace: super::STOP_GRACE,
        park_after: Some(super::PARK_AFTER),
    };
    let write = ClientIo::writer(write, settings.send_timeout);
    let pipeline = Pipeline { runtime, peer, send_timeout: settings.send_timeout, tunnels };
    let parked = conn::serve(read, first, write, limits, stop, pipeline).await?;
    let stream = parked.read.io.reunite(parked.write.io).ok()?;
    Some((stream, parked.until))
}

impl<I: AsyncWrite + Unpin> ClientIo<I> {
    /// A client socket used for writes only, with `send_timeout`.
    pub(super) fn writer(io: I, send_timeout: Duration) -> ClientIo<I> {
        let mut io = ClientIo::new(io, Duration::MAX, send_timeout);
        io.matched = None;
        io
    }
}
