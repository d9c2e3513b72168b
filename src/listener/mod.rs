//! Client-facing listeners: bind, accept, serve HTTP/1.1 and HTTP/2 (prior
//! knowledge) on the same port, and drain on shutdown.
//!
//! Each connection computes its `Peer` once; each request loads the current runtime
//! once and hands it to `proxy::handle`. Slow clients are cut off by the header read
//! timeout, oversized heads get `431`.
//!
//! Who serves what: a plain-TCP connection whose first bytes are not the h2 preface
//! goes to weir's own HTTP/1.1 server (`h1`, the hot path, cheaper per request than
//! hyper's), provided its first line ends in `HTTP/1.0` or `HTTP/1.1`: anything else
//! (an h2 client with a broken preface, TLS sent to a plain port) speaks neither
//! protocol and is closed without an HTTP/1.1 answer it could not read. h2 with prior
//! knowledge goes to hyper's h2 server. On TLS, ALPN alone decides (RFC 9113 §3.3):
//! `h2` is served as HTTP/2 only (a bad preface gets the connection closed, never an
//! HTTP/1.1 `400`), `http/1.1` or no ALPN at all as HTTP/1.1 only, on hyper's
//! servers; this is nginx's choice (HAProxy sniffs for a preface when there is no
//! ALPN, but an HTTP/2 client over TLS must use ALPN). All feed `proxy::handle` with
//! a `ClientBody`.
//!
//! `max_connections`: each connection holds a semaphore permit until it closes, and
//! the loop takes a permit *before* accepting, so at the limit weir simply stops
//! calling `accept`: further clients wait in the kernel's backlog (and are served in
//! turn) instead of being accepted and dropped. A reload keeps the count when the
//! limit is unchanged; a changed limit counts from zero (connections open under the
//! old limit finish uncounted).
//!
//! Tunnels (upgraded connections) run on their connection's task, on either server:
//! they keep its permit, its place in `weir_connections_active` and in the drain, and
//! count in `weir_tunnels_active`. On `stop` a listener serves the clients it already
//! accepted, and an idle HTTP/1 connection gets `STOP_GRACE` for a request on its way.
//!
//! A client that has not sent a byte yet has no task of its own: it waits in its
//! listener's lobby (`Waiting`, about 0.5 KiB with tokio's registration), and its
//! connection task, `Peer`, TLS and hyper state are made once it sends something.
//! A plain HTTP/1.1 keep-alive connection idle for `PARK_AFTER` between requests goes
//! back to the lobby the same way (its task, which holds a request's future inline,
//! ends), with its keep-alive deadline, and gets a new task, straight to `h1`, when
//! the client sends its next request.
//!
//! Timeouts a client meets: the wait for the first byte (the lobby's sweep, up to a
//! quarter late), the TLS handshake and the rest of an h2 preface (`ClientIo`) get
//! `header_read_timeout`; the HTTP/1 header read timeout (`h1`'s, or hyper's on TLS)
//! then covers every request head, including the idle gap between keep-alive requests
//! (it starts when the previous response is done), so `header_read_timeout` is also the
//! keep-alive idle limit; a stalled request body gets `body_read_timeout`
//! (`body::RequestBody`); a client that stops reading its response gets
//! `send_timeout` (`ClientIo`).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use bytes::BytesMut;

use crate::body::ClientBody;
use crate::config::ListenerConfig;
use crate::proxy::forward::Tunnel;
use crate::proxy::{self, Peer};
use crate::runtime::SharedRuntime;
use client_io::{ClientIo, Rewind};

mod client_io;
pub mod h1;

/// How long an idle HTTP/1.1 connection stays open once its listener stops, for a
/// request already on its way: a busy keep-alive client gets its next answer (with
/// `Connection: close`) instead of a connection closed under its request, which it
/// could not tell from a failure. A client idle this long is not sending.
const STOP_GRACE: Duration = Duration::from_millis(100);

/// How long a plain HTTP/1.1 connection waits for its next request before it goes
/// back to the lobby. Short enough that idle keep-alive clients cost little memory,
/// long enough that a busy one (whose timer then fires once a second) never does.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// How late the lobby may close a parked connection past its keep-alive deadline.
const PARKED_SWEEP: Duration = Duration::from_millis(100);

/// A bound client listener and how to serve its connections.
pub struct Listener {
    pub name: String,
    /// The listener's stable slot (see `Runtime::listener_slots`).
    pub slot: usize,
    pub socket: TcpListener,
    /// Swapped in place when a reload changes the listener's limits.
    pub settings: Arc<ArcSwap<Settings>>,
    active: IntGauge,
    /// `weir_tunnels_active` for this listener.
    tunnels: IntGauge,
}

/// How a listener serves connections: what a reload may change without rebinding.
pub struct Settings {
    /// hyper's HTTP/1.1 server, for TLS connections that did not agree on h2.
    http1: http1::Builder,
    /// hyper's HTTP/2 server: h2 with prior knowledge, or agreed by ALPN.
    http2: http2::Builder<TokioExecutor>,
    /// A TLS handshake, and the wait for a connection's first bytes, get as long as
    /// a request head.
    handshake_timeout: Duration,
    max_connections: Option<usize>,
    /// One permit per open connection; `None` without `max_connections`.
    slots: Option<Arc<Semaphore>>,
    body_read_timeout: Duration,
    /// A write to the client that waits this long for it to read fails.
    send_timeout: Duration,
    /// A connection with no request in progress this long is closed.
    idle_timeout: Duration,
    /// Largest request head weir's HTTP/1.1 server reads (hyper's `max_buf_size`).
    max_header_size: usize,
    /// Forward header names with `_` (`Peer::underscores_in_headers`).
    underscores_in_headers: bool,
}

impl Settings {
    pub fn new(config: &ListenerConfig) -> Settings {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout.0)
            .max_buf_size(*config.max_header_size.get_ref())
            .max_headers(crate::proxy::framing::MAX_HEADERS)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_concurrent_streams)
            // Rapid reset (CVE-2023-44487): a client may only have so many streams
            // reset before their response is accepted, and so many resets it caused.
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256))
            .max_header_list_size(u32::try_from(*config.max_header_size.get_ref()).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let max_connections = config.max_connections.as_ref().map(|m| *m.get_ref());
        let slots = max_connections.map(|max| Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))));
        Settings {
            http1,
            http2,
            handshake_timeout: config.header_read_timeout.0,
            body_read_timeout: config.body_read_timeout.0,
            send_timeout: config.send_timeout.0,
            idle_timeout: config.idle_timeout.0,
            max_header_size: *config.max_header_size.get_ref(),
            underscores_in_headers: config.underscores_in_headers,
            max_connections,
            slots,
        }
    }

    /// The settings for `config` replacing `old`: open connections stay counted when
    /// `max_connections` is unchanged.
    pub fn reload(config: &ListenerConfig, old: &Settings) -> Settings {
        let mut settings = Settings::new(config);
        if settings.max_connections == old.max_connections {
            settings.slots = old.slots.clone();
        }
        settings
    }
}

impl Listener {
    /// Binds `config.listen` (see `bind_tcp`).
    pub fn bind(config: &ListenerConfig, slot: usize, gauges: Gauges) -> std::io::Result<Listener> {
        let addr: SocketAddr = config.listen.get_ref().parse().map_err(std::io::Error::other)?;
        let socket = bind_tcp_with(addr, config.reuse_port)?;
        Ok(Listener::on(config, slot, gauges, socket))
    }

    /// A listener for `config` on a socket already bound (one handed over by the
    /// process weir replaces).
    pub fn on(config: &ListenerConfig, slot: usize, gauges: Gauges, socket: TcpListener) -> Listener {
        let settings = Arc::new(ArcSwap::from_pointee(Settings::new(config)));
        let Gauges { active, tunnels } = gauges;
        Listener { name: config.name.get_ref().clone(), slot, socket, settings, active, tunnels }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts connections until `stop` changes. Each connection runs on `tracker`, and
    /// when `stop` changes it finishes its in-flight requests and closes.
    pub async fn serve(self, runtime: SharedRuntime, tracker: TaskTracker, mut stop: watch::Receiver<bool>) {
        let tunnels = self.tunnels.clone();
        // Idle keep-alive connections coming back to the lobby.
        let (parked, mut parked_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared =
            Arc::new(Shared { settings: self.settings.clone(), runtime, slot: self.slot, tunnels, parked });
        // Clients that have not sent a byte yet wait here, in this task, each as a
        // small future (`Waiting`: its socket, its permit, when it came): no task,
        // timer, `Peer`, TLS or hyper state of their own until there is something to
        // read. A sweep every quarter of the header read timeout shuts the silent
        // ones past it, and all of them go when `stop` changes.
        let mut lobby: FuturesUnordered<Waiting> = FuturesUnordered::new();
        let mut sweep = Box::pin(tokio::time::sleep(Duration::ZERO));
        loop {
            let slots = self.settings.load().slots.clone();
            let accept = async {
                // Taken before accepting: at the limit, clients wait in the kernel's
                // backlog. The semaphore is never closed.
                let slot = match slots {
                    None => None,
                    Some(slots) => slots.acquire_owned().await.ok(),
                };
                (self.socket.accept().await, slot)
            };
            tokio::select! {
                _ = stop.changed() => break,
                Some(ready) = lobby.next(), if !lobby.is_empty() => {
                    shared.admit(ready, &tracker, &stop);
                }
                () = &mut sweep, if !lobby.is_empty() => {
                    sweep_lobby(&lobby, sweep.as_mut(), self.settings.load().handshake_timeout);
                }
                Some((client, until)) = parked_rx.recv() => {
                    if lobby.is_empty() || sweep.deadline() > until {
                        sweep.as_mut().reset(until);
                    }
                    lobby.push(Waiting::parked(client, until));
                }
                (accepted, slot) = accept => match accepted {
                    Ok((stream, addr)) => {
                        let _ = stream.set_nodelay(true);
                        if lobby.is_empty() {
                            sweep.as_mut().reset(Instant::now() + self.settings.load().handshake_timeout / 4);
                        }
                        let client = Accepted { stream, addr, slot, active: Active::new(&self.active), resumed: false };
                        lobby.push(Waiting {
                            client: Some(client),
                            since: Instant::now(),
                            until: Cell::new(None),
                            expired: Cell::new(false),
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!(listener = %self.name, "stopped accepting");
        // Clients accepted before the stop are still served (one request each, as
        // the stop closes their connections after it); dropping them would reset
        // connections the client saw accepted, as in a binary upgrade's hand-over.
        if !lobby.is_empty() {
            // Seen by this loop, the stop must still read as news to the connections.
            stop.mark_changed();
            // Parked keep-alive connections get `STOP_GRACE` for a request on its way,
            // as idle ones on their task do.
            let grace = Instant::now() + STOP_GRACE;
            for waiting in lobby.iter() {
                if let Some(until) = waiting.until.get() {
                    waiting.until.set(Some(until.min(grace)));
                    if sweep.deadline() > grace {
                        sweep.as_mut().reset(grace);
                    }
                }
            }
            let settings = self.settings.clone();
            let tracked = tracker.clone();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        ready = lobby.next() => match ready {
                            Some(ready) => shared.admit(ready, &tracked, &stop),
                            None => break,
                        },
                        () = &mut sweep => sweep_lobby(&lobby, sweep.as_mut(), settings.load().handshake_timeout),
                    }
                }
            });
        }
    }
}

/// Shuts the lobby's clients silent for longer than `timeout`, and parked ones past
/// their deadline; the sweep comes again a quarter of `timeout` later, or at the next
/// parked connection's deadline, but not within `PARKED_SWEEP`: each sweep visits
/// every client, and thousands of parked ones have thousands of deadlines.
fn sweep_lobby(lobby: &FuturesUnordered<Waiting>, sweep: Pin<&mut Sleep>, timeout: Duration) {
    let now = Instant::now();
    let mut next = now + timeout / 4;
    for waiting in lobby.iter() {
        match waiting.until.get() {
            Some(until) if now < until => next = next.min(until.max(now + PARKED_SWEEP)),
            None if now < waiting.since + timeout => {}
            _ => waiting.expire(),
        }
    }
    sweep.reset(next);
}

/// A listener's series of `weir_connections_active` and `weir_tunnels_active`,
/// resolved once when it is bound.
pub struct Gauges {
    pub active: IntGauge,
    pub tunnels: IntGauge,
}

/// What a listener's connections share, behind one pointer each.
struct Shared {
    settings: Arc<ArcSwap<Settings>>,
    runtime: SharedRuntime,
    /// The listener's slot, for `Peer`.
    slot: usize,
    tunnels: IntGauge,
    /// To the listener's lobby, for idle keep-alive connections.
    parked: tokio::sync::mpsc::UnboundedSender<(Accepted, Instant)>,
}

impl Shared {
    /// Starts serving a client that left the lobby with bytes to read.
    fn admit(self: &Arc<Self>, ready: Option<Accepted>, tracker: &TaskTracker, stop: &watch::Receiver<bool>) {
        let Some(Accepted { stream, addr, slot, active, resumed }) = ready else { return };
        let (shared, stop) = (self.clone(), stop.clone());
        tracker.spawn(async move {
            if let Some((stream, until)) = shared.clone().serve(stream, addr, resumed, stop).await {
                // Back to the lobby with its permit and its place in the gauge. Once
                // the listener has stopped there is none: the idle connection closes.
                let client = Accepted { stream, addr, slot, active, resumed: true };
                let _ = shared.parked.send((client, until));
            }
        });
    }

    /// Serves a client that has sent its first bytes: TLS if the listener has it,
    /// then HTTP; a `resumed` one (back from the lobby, plain HTTP/1.1 between two
    /// requests) on `h1` at once. Settings and certificates are the ones current at
    /// this moment. Returns the connection when `h1` parks it.
    async fn serve(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        addr: SocketAddr,
        resumed: bool,
        stop: watch::Receiver<bool>,
    ) -> Option<(tokio::net::TcpStream, Instant)> {
        let settings = self.settings.load_full();
        let tls = self.runtime.load().tls.get(self.slot).cloned().flatten();
        let handshake_timeout = settings.handshake_timeout;
        let mut peer = Peer::new(addr, self.slot, tls.is_some());
        peer.body_read_timeout = settings.body_read_timeout;
        peer.underscores_in_headers = settings.underscores_in_headers;
        let tunnels = self.tunnels.clone();
        let connection = Connection { settings, runtime: self.runtime.clone(), stop, peer, tunnels };
        // One call site each for the plain path and `h1`: a future awaited from two
        // places is not inlined into its caller, and every poll then pays a layer.
        match tls.filter(|_| !resumed) {
            None => connection.serve_plain(stream, resumed).await,
            // Boxed: a task is as large as the largest state of its future, and the
            // TLS handshake's and hyper's state would otherwise make every plain
            // HTTP/1.1 connection's task that large too, for its whole life.
            Some(acceptor) => {
                Box::pin(connection.serve_tls(stream, acceptor, handshake_timeout)).await;
                None
            }
        }
    }
}

/// A client connection that has not sent a byte yet. It resolves to the connection
/// once it is readable (something to read, or the client left), or to `None` when
/// `expire` shut it.
struct Waiting {
    /// Taken when the wait resolves.
    client: Option<Accepted>,
    since: Instant,
    /// A parked keep-alive connection's deadline (the sweep's limit for a new client
    /// is the header read timeout from `since`).
    until: Cell<Option<Instant>>,
    /// Set by `expire`: the readiness its shutdown causes ends the wait, not a task.
    expired: Cell<bool>,
}

/// An accepted connection and what it holds until it closes.
struct Accepted {
    stream: tokio::net::TcpStream,
    /// The client's address, as `accept` gave it (no `getpeername` later).
    addr: SocketAddr,
    /// Its `max_connections` permit, if the listener has a limit.
    slot: Option<OwnedSemaphorePermit>,
    active: Active,
    /// Back from `h1` between two requests (parked): served as HTTP/1.1 at once.
    resumed: bool,
}

impl Waiting {
    fn parked(client: Accepted, until: Instant) -> Waiting {
        let until = Cell::new(Some(until));
        Waiting { client: Some(client), since: Instant::now(), until, expired: Cell::new(false) }
    }

    /// Closes a client that stayed silent too long: the shutdown also wakes this
    /// future (the socket reads as ended), which then resolves and is dropped.
    fn expire(&self) {
        if let Some(client) = &self.client {
            self.expired.set(true);
            let _ = socket2::SockRef::from(&client.stream).shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Future for Waiting {
    type Output = Option<Accepted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(client) = self.client.as_ref() else { return Poll::Ready(None) };
        // Readiness, not a peek: the connection's first read then takes the bytes, one
        // `recvfrom` instead of two. Readiness on a socket nothing was read from comes
        // from the epoll event for its first bytes, or for its end (a client that
        // leaves without a word then costs its task one read of 0 bytes); should one
        // come early, the connection's task waits for the bytes under the same
        // deadline.
        ready!(client.stream.poll_read_ready(cx)).ok();
        if self.expired.get() {
            return Poll::Ready(None);
        }
        Poll::Ready(self.client.take())
    }
}

/// Counts an open client connection in `weir_connections_active`, or a tunnel in
/// `weir_tunnels_active`, until dropped.
struct Active(IntGauge);

impl Active {
    fn new(gauge: &IntGauge) -> Active {
        gauge.inc();
        Active(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One accepted client connection, ready to serve.
struct Connection {
    settings: Arc<Settings>,
    runtime: SharedRuntime,
    stop: watch::Receiver<bool>,
    peer: Peer,
    /// `weir_tunnels_active`: an upgrade's tunnel runs on its connection's task (and
    /// so holds its permit and its place in the drain), counted here too.
    tunnels: IntGauge,
}

impl Connection {
    /// Serves a plain-TCP client: h2 (prior knowledge) on hyper, HTTP/1 on weir's own
    /// HTTP/1.1 server, anything else is closed. The first bytes decide; a client that
    /// sends part of the h2 preface or of its first line and stops is cut at
    /// `header_read_timeout`.
    ///
    /// A `resumed` connection (back from the lobby) is HTTP/1.1 already: straight to
    /// `h1`, with nothing read yet.
    async fn serve_plain(
        self,
        mut stream: tokio::net::TcpStream,
        resumed: bool,
    ) -> Option<(tokio::net::TcpStream, Instant)> {
        let mut first = BytesMut::new();
        let mut line = FirstLine::default();
        let deadline = Instant::now() + self.settings.handshake_timeout;
        if !resumed {
            first.reserve(8 * 1024);
            loop {
                // The lobby hands over a readable socket: the first read needs no timer.
                // A polled read, not `try_read_buf`: one that fills less than the buffer
                // clears the socket's readiness, so the next read (the next request, or
                // the close) waits for epoll instead of first finding the socket empty.
                let once = poll_fn(|cx| {
                    match tokio_util::io::poll_read_buf(Pin::new(&mut stream), cx, &mut first) {
                        Poll::Ready(read) => Poll::Ready(Some(read)),
                        Poll::Pending => Poll::Ready(None),
                    }
                });
                let read = match once.await {
                    Some(read) => read,
                    None => {
                        let read = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut first);
                        match tokio::time::timeout_at(deadline, read).await {
                            Ok(read) => read,
                            Err(_) => return None,
                        }
                    }
                };
                if !matches!(read, Ok(n) if n > 0) {
                    return None;
                }
                let n = first.len().min(H2_PREFACE.len());
                if first[..n] != H2_PREFACE[..n] {
                    match line.speaks_http1(&first, self.settings.max_header_size) {
                        Some(true) => break,
                        Some(false) => {
                            tracing::debug!(client = %self.peer.addr, "neither HTTP/1 nor h2: closed");
                            return None;
                        }
                        None => continue,
                    }
                }
                if n == H2_PREFACE.len() {
                    let io = Rewind { early: first.freeze(), io: stream };
                    // Boxed for the same reason as TLS (see `Shared::serve`).
                    Box::pin(self.serve(io, Protocol::Http2)).await;
                    return None;
                }
            }
        }
        h1::serve(self, stream, first).await
    }

    /// Serves a TLS client: the handshake within `timeout`, then the protocol ALPN
    /// agreed on hyper.
    async fn serve_tls(
        self,
        stream: tokio::net::TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        timeout: Duration,
    ) {
        let addr = self.peer.addr;
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                let protocol = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Protocol::Http2,
                    _ => Protocol::Http1,
                };
                self.serve(stream, protocol).await
            }
            Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
        }
    }

    /// Serves `protocol` on `io` with hyper (TLS connections, and h2 with prior
    /// knowledge on plain ones) until the client leaves or `stop` changes, then
    /// finishes the request in progress and closes.
    async fn serve<I>(self, io: I, protocol: Protocol)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let addr = self.peer.addr;
        let peer = Arc::new(self.peer);
        let runtime = self.runtime;
        let idle = Arc::new(Idle::new());
        let activity = idle.clone();
        // HTTP/1.1 only: h2 says it with GOAWAY, and has no `Connection` header.
        let stopping = (protocol == Protocol::Http1).then(|| self.stop.clone());
        let service = service_fn(move |req| {
            let rt = runtime.load_full();
            let peer = peer.clone();
            let busy = activity.begin();
            // A request that arrives in the `STOP_GRACE` after a stop is answered
            // with `Connection: close`, as weir's own HTTP/1.1 server does.
            let close = stopping.as_ref().is_some_and(|stop| !matches!(stop.has_changed(), Ok(false)));
            async move {
                // The request future is a few KiB, and hyper moves each stream's
                // future into a task of its own (several copies per request): boxed,
                // only a pointer moves.
                let mut response =
                    Box::pin(proxy::handle(&rt.pipeline, req.map(ClientBody::Hyper), &peer)).await;
                // hyper writes headers from the map only.
                proxy::body::materialize(&mut response);
                if let Some(tunnel) = response.extensions_mut().remove::<Tunnel>() {
                    *busy.0.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = Some(tunnel);
                }
                if close && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let io = TokioIo::new(ClientIo::new(io, self.settings.handshake_timeout, self.settings.send_timeout));
        let (settings, stop) = (&self.settings, self.stop);
        let result = match protocol {
            Protocol::Http1 => {
                let conn = settings.http1.serve_connection(io, service).with_upgrades();
                until_idle(conn, |c| c.graceful_shutdown(), stop, &idle, settings.idle_timeout).await
            }
            Protocol::Http2 => {
                let conn = settings.http2.serve_connection(io, service);
                until_idle(conn, |c| c.graceful_shutdown(), stop, &idle, settings.idle_timeout).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %addr, error = %e, "client connection ended with an error");
        }
        // hyper's connection ends once it has handed the socket to the upgrade.
        let tunnel = idle.tunnel.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tunnel) = tunnel {
            let _counted = Active::new(&self.tunnels);
            tunnel.run().await;
        }
    }
}

/// The protocol a hyper-served connection speaks: one, never a guess per connection
/// once ALPN or the h2 preface has said which.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

/// Drives a hyper connection to its end; when `stop` changes or no request has run
/// for `idle_timeout`, asks it to finish what is in progress (`shutdown`) and close.
async fn until_idle<C, E>(
    conn: C,
    shutdown: impl FnOnce(Pin<&mut C>),
    mut stop: watch::Receiver<bool>,
    idle: &Idle,
    idle_timeout: Duration,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        // A request on its way gets `STOP_GRACE` to arrive (see `Connection::serve`),
        // then idle keep-alive connections close.
        _ = stop.changed() => {
            if let Ok(result) = tokio::time::timeout(STOP_GRACE, conn.as_mut()).await {
                return result;
            }
            shutdown(conn.as_mut());
            conn.await
        }
        // Nothing in progress: close. A response still streaming finishes first.
        _ = idle.expired(idle_timeout) => {
            shutdown(conn.as_mut());
            conn.await
        }
    }
}

/// The first line of a plain connection that is not an h2 preface, found across
/// reads: each byte is looked at once, however the line is split.
#[derive(Default)]
struct FirstLine {
    /// Where the line starts: after any empty lines, which RFC 9112 §2.2 lets a
    /// server skip.
    start: usize,
    /// Bytes already searched for the line's end.
    scanned: usize,
}

impl FirstLine {
    /// Whether the connection opens an HTTP/1 request: its first line ends in
    /// ` HTTP/1.0` or ` HTTP/1.1`. `None`: the line is not complete yet (one longer
    /// than a head may be is left to `h1`, for its `431`).
    fn speaks_http1(&mut self, first: &[u8], max_head: usize) -> Option<bool> {
        while let Some(at) = first[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + at;
            let line = &first[self.start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.scanned = end + 1;
            if line.is_empty() {
                self.start = self.scanned;
                continue;
            }
            return Some(line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"));
        }
        self.scanned = first.len();
        (first.len() >= max_head).then_some(true)
    }
}

/// When a connection last started or finished a request, and how many are running,
/// for `idle_timeout`. (For HTTP/1.1, hyper's `header_read_timeout` also runs while a
/// keep-alive connection waits for its next request, so the shorter of the two wins.)
struct Idle {
    since: tokio::time::Instant,
    /// Milliseconds after `since` of the last request start or end.
    last_ms: AtomicU64,
    running: AtomicUsize,
    /// The tunnel of an upgrade answered on this connection, for its task to run
    /// once hyper lets the connection go.
    tunnel: std::sync::Mutex<Option<Tunnel>>,
}

/// A request in progress on a connection.
struct Busy(Arc<Idle>);

impl Idle {
    fn new() -> Idle {
        Idle {
            since: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            tunnel: std::sync::Mutex::new(None),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.running.fetch_add(1, Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once no request has run for `timeout`.
    async fn expired(&self, timeout: Duration) {
        loop {
            let last = self.since + Duration::from_millis(self.last_ms.load(Relaxed));
            tokio::time::sleep_until(last + timeout).await;
            let last = self.since + Duration::from_millis(self.last_ms.load(Relaxed));
            if self.running.load(Relaxed) == 0 && last + timeout <= tokio::time::Instant::now() {
                return;
            }
            if self.running.load(Relaxed) > 0 {
                // Check again a full timeout after the request ends at the earliest.
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.running.fetch_sub(1, Relaxed);
    }
}

/// The connection preface an h2 (prior knowledge) client opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A non-blocking listening socket with `SO_REUSEADDR` and a backlog of 4096.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_tcp_with(addr, false)
}

/// `bind_tcp`, plus `SO_REUSEPORT` when `reuse_port` is set: several processes (each
/// setting it) may then listen on the same port, and the kernel spreads new
/// connections among them. Off by default: without it a second weir started by
/// mistake on a busy port fails loudly instead of silently sharing it.
pub fn bind_tcp_with(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_http1_first_line_goes_to_the_http1_server() {
        let speaks = |bytes: &[u8], max| FirstLine::default().speaks_http1(bytes, max);
        assert_eq!(speaks(b"GET / HTTP/1.1\r\nHost: a\r\n", 8192), Some(true));
        assert_eq!(speaks(b"\r\n\nGET / HTTP/1.0\r\n", 8192), Some(true));
        assert_eq!(speaks(b"GET / HTTP/1.1\n", 8192), Some(true));
        assert_eq!(speaks(b"GET / HTTP/1.1", 8192), None);
        assert_eq!(speaks(b"INVALID CONNECTION PREFACE\r\n\r\n", 8192), Some(false));
        assert_eq!(speaks(b"GET / HTTP/2.0\r\n", 8192), Some(false));
        assert_eq!(speaks(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", 8192), Some(false));
        // Too long to be a head at all: h1 answers it with 431.
        assert_eq!(speaks(&[b'a'; 64], 64), Some(true));
    }

    #[test]
    fn a_first_line_split_anywhere_is_read_the_same() {
        let bytes = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 0..bytes.len() {
            let mut line = FirstLine::default();
            let early = line.speaks_http1(&bytes[..split], 8192);
            let answer = early.or_else(|| line.speaks_http1(bytes, 8192));
            assert_eq!(answer, Some(true), "split at {split}");
        }
        // A byte at a time: each read looks only at the new byte.
        let mut line = FirstLine::default();
        for n in 1..=16 {
            assert_eq!(line.speaks_http1(&b"GET /aaaaaaaaaaaaaaaaaaaa"[..n], 8192), None);
            assert_eq!(line.scanned, n);
        }
    }
}
