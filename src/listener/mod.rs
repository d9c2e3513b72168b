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
//! A client that has not sent a byte yet has no task of its own: it waits in its
//! listener's lobby (`Waiting`, about 0.5 KiB with tokio's registration), and its
//! connection task, `Peer`, TLS and hyper state are made once it sends something.
//!
//! Timeouts a client meets: the wait for the first byte (the lobby's sweep, up to a
//! quarter late), the TLS handshake and the rest of an h2 preface (`ClientIo`) get
//! `header_read_timeout`; the HTTP/1 header read timeout (`h1`'s, or hyper's on TLS)
//! then covers every request head, including the idle gap between keep-alive requests
//! (it starts when the previous response is done), so `header_read_timeout` is also the
//! keep-alive idle limit; a stalled request body gets `body_read_timeout`
//! (`proxy::body::RequestBody`); a client that stops reading its response gets
//! `send_timeout` (`ClientIo`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;

use bytes::{Buf, Bytes, BytesMut};

use crate::config::ListenerConfig;
use crate::proxy::body::ClientBody;
use crate::proxy::body::Pause;
use crate::proxy::{self, Peer};
use crate::runtime::SharedRuntime;

pub mod h1;

/// A bound client listener and how to serve its connections.
pub struct Listener {
    pub name: String,
    /// The listener's stable slot (see `Runtime::listener_slots`).
    pub slot: usize,
    pub socket: TcpListener,
    /// Swapped in place when a reload changes the listener's limits.
    pub settings: Arc<ArcSwap<Settings>>,
    active: IntGauge,
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
    pub fn bind(config: &ListenerConfig, slot: usize, active: IntGauge) -> std::io::Result<Listener> {
        let addr: SocketAddr = config.listen.get_ref().parse().map_err(std::io::Error::other)?;
        let socket = bind_tcp_with(addr, config.reuse_port)?;
        let settings = Arc::new(ArcSwap::from_pointee(Settings::new(config)));
        Ok(Listener { name: config.name.get_ref().clone(), slot, socket, settings, active })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts connections until `stop` changes. Each connection runs on `tracker`, and
    /// when `stop` changes it finishes its in-flight requests and closes.
    pub async fn serve(self, runtime: SharedRuntime, tracker: TaskTracker, mut stop: watch::Receiver<bool>) {
        let shared = Arc::new(Shared { settings: self.settings.clone(), runtime, slot: self.slot });
        // Clients that have not sent a byte yet wait here, in this task, each as a
        // small future (`Waiting`: its socket, its permit, when it came): no task,
        // timer, `Peer`, TLS or hyper state of their own until there is something to
        // read. A sweep every quarter of the header read timeout shuts the silent
        // ones past it, and all of them go when `stop` changes.
        let mut lobby: FuturesUnordered<Waiting> = FuturesUnordered::new();
        let sweep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sweep);
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
                    let Some(Accepted { stream, slot, active }) = ready else { continue };
                    let (shared, stop) = (shared.clone(), stop.clone());
                    tracker.spawn(async move {
                        shared.serve(stream, stop).await;
                        drop((active, slot));
                    });
                }
                () = &mut sweep, if !lobby.is_empty() => {
                    let timeout = self.settings.load().handshake_timeout;
                    let now = Instant::now();
                    for waiting in lobby.iter().filter(|w| now >= w.since + timeout) {
                        waiting.expire();
                    }
                    sweep.as_mut().reset(now + timeout / 4);
                }
                (accepted, slot) = accept => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        if lobby.is_empty() {
                            sweep.as_mut().reset(Instant::now() + self.settings.load().handshake_timeout / 4);
                        }
                        let client = Accepted { stream, slot, active: Active::new(&self.active) };
                        lobby.push(Waiting { client: Some(client), since: Instant::now() });
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
    }
}

/// What a listener's connections share, behind one pointer each.
struct Shared {
    settings: Arc<ArcSwap<Settings>>,
    runtime: SharedRuntime,
    /// The listener's slot, for `Peer`.
    slot: usize,
}

impl Shared {
    /// Serves a client that has sent its first bytes: TLS if the listener has it,
    /// then HTTP. Settings and certificates are the ones current at this moment.
    async fn serve(self: Arc<Self>, stream: tokio::net::TcpStream, stop: watch::Receiver<bool>) {
        let Ok(addr) = stream.peer_addr() else { return };
        let settings = self.settings.load_full();
        let tls = self.runtime.load().tls.get(self.slot).cloned().flatten();
        let handshake_timeout = settings.handshake_timeout;
        let mut peer = Peer::new(addr, self.slot, tls.is_some());
        peer.body_read_timeout = settings.body_read_timeout;
        peer.underscores_in_headers = settings.underscores_in_headers;
        let connection = Connection { settings, runtime: self.runtime.clone(), stop, peer };
        match tls {
            None => connection.serve_plain(stream).await,
            Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let protocol = match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    connection.serve(stream, protocol).await
                }
                Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
            },
        }
    }
}

/// A client connection that has not sent a byte yet. It resolves to the connection
/// once there is something to read, or to `None` when the client leaves or `expire`
/// shut it.
struct Waiting {
    /// Taken when the wait resolves.
    client: Option<Accepted>,
    since: Instant,
}

/// An accepted connection and what it holds until it closes.
struct Accepted {
    stream: tokio::net::TcpStream,
    /// Its `max_connections` permit, if the listener has a limit.
    slot: Option<OwnedSemaphorePermit>,
    active: Active,
}

impl Waiting {
    /// Closes a client that stayed silent too long: the shutdown also wakes this
    /// future (the socket reads as ended), which then resolves and is dropped.
    fn expire(&self) {
        if let Some(client) = &self.client {
            let _ = socket2::SockRef::from(&client.stream).shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Future for Waiting {
    type Output = Option<Accepted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(client) = self.client.as_ref() else { return Poll::Ready(None) };
        // `poll_peek` rather than readiness: readiness can be reported before any byte
        // is there (tokio documents false positives), and then the state this wait
        // exists to defer would be allocated for every idle client.
        let mut byte = [0u8; 1];
        match client.stream.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(self.client.take()),
            // Ended (the client left, or `expire`) or failed.
            Poll::Ready(_) => Poll::Ready(None),
        }
    }
}

/// Counts an open client connection in `weir_connections_active` until dropped.
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
}

impl Connection {
    /// Serves a plain-TCP client: h2 (prior knowledge) on hyper, HTTP/1 on weir's own
    /// HTTP/1.1 server, anything else is closed. The first bytes decide; a client that
    /// sends part of the h2 preface or of its first line and stops is cut at
    /// `header_read_timeout`.
    async fn serve_plain(self, mut stream: tokio::net::TcpStream) {
        let mut first = BytesMut::with_capacity(8 * 1024);
        let mut line = FirstLine::default();
        let deadline = Instant::now() + self.settings.handshake_timeout;
        loop {
            // The lobby hands over a socket with bytes to read: the first read needs
            // no timer.
            let read = match stream.try_read_buf(&mut first) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let read = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut first);
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(read) => read,
                        Err(_) => return,
                    }
                }
                read => read,
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
            let n = first.len().min(H2_PREFACE.len());
            if first[..n] != H2_PREFACE[..n] {
                match line.speaks_http1(&first, self.settings.max_header_size) {
                    Some(true) => return h1::serve(self, stream, first).await,
                    Some(false) => {
                        tracing::debug!(client = %self.peer.addr, "neither HTTP/1 nor h2: closed");
                        return;
                    }
                    None => continue,
                }
            }
            if n == H2_PREFACE.len() {
                let io = Rewind { early: first.freeze(), io: stream };
                return self.serve(io, Protocol::Http2).await;
            }
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
        let service = service_fn(move |req| {
            let rt = runtime.load_full();
            let peer = peer.clone();
            let busy = activity.begin();
            async move {
                // The request future is a few KiB, and hyper moves each stream's
                // future into a task of its own (several copies per request): boxed,
                // only a pointer moves.
                let response = Box::pin(proxy::handle(&rt, req.map(ClientBody::Hyper), &peer)).await;
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
        // Idle keep-alive connections close at once.
        _ = stop.changed() => {
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
}

/// A request in progress on a connection.
struct Busy(Arc<Idle>);

impl Idle {
    fn new() -> Idle {
        Idle { since: tokio::time::Instant::now(), last_ms: AtomicU64::new(0), running: AtomicUsize::new(0) }
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

/// A socket whose first bytes were already read: they are read again first.
struct Rewind<I> {
    early: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connection preface an h2 (prior knowledge) client opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection with the two timeouts hyper does not keep for us: its first
/// bytes must arrive within `header_read_timeout`, and a write must find the client
/// reading within `send_timeout`.
///
/// First bytes: hyper-util's protocol detection reads until the bytes differ from the
/// h2 preface (or all 24 match) with no timeout of its own, and hyper's header read
/// timeout only starts after it: a client that sends a few bytes of the preface and
/// stops, or a TLS client silent after its handshake, would hold its connection
/// forever (the lobby only waits for the first byte of a plain connection). This
/// tracks the same comparison and disarms once it is decided; from then on reads pass
/// straight through.
///
/// Writes: a client that stops reading its response would otherwise hold the write,
/// and with it the response's upstream connection and in-flight slot, for as long as
/// it likes (HTTP/1.1, h2 and tunnels alike). The timer starts only when a write has
/// to wait, and moves on whenever the client takes bytes, so a slow but steady reader
/// is never cut; a write that completes costs a flag.
struct ClientIo<I> {
    io: I,
    read_timeout: Duration,
    /// Set on the first read that has to wait; `None` again once disarmed.
    read_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far that match the h2 preface; `None` once decided.
    matched: Option<usize>,
    /// `send_timeout`, for writes that wait.
    send: Pause,
}

impl<I> ClientIo<I> {
    fn new(io: I, read_timeout: Duration, send_timeout: Duration) -> ClientIo<I> {
        ClientIo { io, read_timeout, read_timer: None, matched: Some(0), send: Pause::new(send_timeout) }
    }

    /// Follows the preface comparison over newly read bytes.
    fn saw(&mut self, bytes: &[u8]) {
        let Some(matched) = self.matched else { return };
        let rest = &H2_PREFACE[matched..];
        let n = bytes.len().min(rest.len());
        if bytes[..n] != rest[..n] || matched + n == H2_PREFACE.len() {
            self.matched = None;
            self.read_timer = None;
        } else {
            self.matched = Some(matched + n);
        }
    }

    /// A write (or flush) has to wait: `Ready(Err)` once the client has taken nothing
    /// for `send_timeout`.
    fn poll_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        ready!(self.send.poll_expired(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing within send_timeout",
        )))
    }

    /// Passes a write's result on, noting progress; a wait goes to the send timer.
    fn wrote(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => self.poll_stalled(cx),
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.send.progressed();
                }
                Poll::Ready(Ok(n))
            }
            error => error,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.matched.is_none() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let timeout = this.read_timeout;
                let timer = this.read_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within header_read_timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, result)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, result)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.poll_stalled(cx),
            done => done,
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_off_after_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, Duration::from_secs(10), Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let err = io.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_h2_preface_is_still_timed() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, Duration::from_secs(10), Duration::from_secs(10));
        client.write_all(b"PRI * HT").await.unwrap();
        assert_eq!(io.read(&mut [0; 64]).await.unwrap(), 8);
        assert!(io.read(&mut [0; 64]).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn once_http1_is_recognised_reads_wait_without_limit() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, Duration::from_secs(10), Duration::from_secs(10));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(io.read(&mut [0; 64]).await.unwrap(), 16);
        let waiting = tokio::time::timeout(Duration::from_secs(60), io.read(&mut [0; 64])).await;
        assert!(waiting.is_err(), "the read was cut off: hyper's own timeouts apply from here");
    }
}
