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
//! knowledge goes to weir's own h2 server (`http::h2`). On TLS, ALPN alone decides
//! (RFC 9113 §3.3): `h2` is served as HTTP/2 only, on weir's h2 server (a bad
//! preface gets the connection closed, never an HTTP/1.1 `400`), `http/1.1` or no
//! ALPN at all as HTTP/1.1 only, on hyper's HTTP/1.1 server; this is nginx's choice (HAProxy sniffs for a preface when there is no
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
//! Clients are accepted as `socket::Socket`s, not registered with epoll until a read
//! or write has to wait. With `defer_accept` (the default) the kernel queues a client
//! for `accept` only once its first bytes have arrived (`set_defer_accept`); they are
//! read as it is accepted (`Shared::start`; a TLS client's are looked at), so its
//! connection starts at once, and if its answer then goes out whole the connection
//! never meets the poller. A client accepted with nothing to read (one silent for
//! the kernel's second, or any, with `defer_accept = false`) has no task of its own:
//! it waits in its listener's lobby (`Waiting`, about 0.7 KiB with its registration),
//! and its connection task, `Peer`, TLS and hyper state are made once it sends
//! something.
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
//!
//! Idle connections' memory: a burst of connections that park frees their tasks and
//! blocks, and the listener then trims the heap (`lobby::TrimAfterParks`: a second
//! after the first park, or once the tail of the burst has parked), with its
//! thread's kept blocks and head buffers. The blocks a busy connection's futures
//! live in (its own and the HTTP/1.1 server's) come from outside glibc's heap
//! (`recycle::take_block`), so what an idle connection keeps (its socket's
//! registration, its lobby entry, ~0.5 KiB) does not pin the freed blocks' pages.
//!
//! Files: this one accepts (`Listener::serve`) and starts connections (`Shared`);
//! `lobby` holds clients with nothing to read yet, and decides when parks call for
//! a trim; `conn` serves one connection
//! (sniffing, TLS, hyper's servers, idle and stop); `h1` joins weir's HTTP/1.1
//! server to the pipeline; `client_io` wraps the client socket with its timeouts.

use std::cell::Cell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use prometheus::IntGauge;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
use crate::proxy::Peer;
use crate::recycle::Recycled;
use crate::runtime::SharedRuntime;
use crate::socket::Socket;
use conn::Connection;
use lobby::{sweep_lobby, Accepted, Active, TrimAfterParks, TrimStep, Waiting};

mod client_io;
mod conn;
pub mod h1;
mod lobby;

/// How long an idle HTTP/1.1 connection stays open once its listener stops, for a
/// request already on its way: a busy keep-alive client gets its next answer (with
/// `Connection: close`) instead of a connection closed under its request, which it
/// could not tell from a failure. A client idle this long is not sending.
const STOP_GRACE: Duration = Duration::from_millis(100);

/// How long a plain HTTP/1.1 connection waits for its next request before it goes
/// back to the lobby. Short enough that idle keep-alive clients cost little memory,
/// long enough that a busy one (whose timer then fires once a second) never does.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Clients the accept loop takes from the backlog in one go before it looks at its
/// other work (the lobby, parked connections, the stop).
const ACCEPT_BURST: usize = 16;

/// A bound client listener and how to serve its connections.
pub struct Listener {
    pub name: String,
    /// The listener's stable slot (see `Runtime::listener_slots`).
    pub slot: usize,
    /// Accepted from without tokio's `TcpListener`, which registers every socket it
    /// accepts with the poller (`socket::Socket` registers only when it waits).
    pub socket: AsyncFd<std::net::TcpListener>,
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
    /// weir's h2 server: its SETTINGS, limits and timeouts, made once here.
    h2: crate::http::h2::Config,
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
        let max_connections = config.max_connections.as_ref().map(|m| *m.get_ref());
        let slots = max_connections.map(|max| Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))));
        Settings {
            http1,
            h2: crate::http::h2::Config {
                max_concurrent_streams: config.h2_max_concurrent_streams,
                max_header_list_size: u32::try_from(*config.max_header_size.get_ref()).unwrap_or(u32::MAX),
                idle_timeout: config.idle_timeout.0,
                stop_grace: STOP_GRACE,
                ..crate::http::h2::Config::default()
            },
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
    /// Binds `config.listen` (see `bind_std`).
    pub fn bind(config: &ListenerConfig, slot: usize, gauges: Gauges) -> std::io::Result<Listener> {
        let addr: SocketAddr = config.listen.get_ref().parse().map_err(std::io::Error::other)?;
        let socket = bind_std(addr, config.reuse_port)?;
        Listener::on(config, slot, gauges, socket)
    }

    /// A listener for `config` on a socket already bound (one handed over by the
    /// process weir replaces).
    pub fn on(
        config: &ListenerConfig,
        slot: usize,
        gauges: Gauges,
        socket: std::net::TcpListener,
    ) -> std::io::Result<Listener> {
        // Here, not in `bind_std`: a socket handed over by an older weir lacks it.
        set_nodelay_inherited(&socket);
        set_defer_accept(&socket, config.defer_accept);
        socket.set_nonblocking(true)?;
        // SAFETY: the listening socket owns its descriptor, and the registration owns
        // the socket: the descriptor stays open and the same for the registration's life.
        let socket = unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }?;
        let settings = Arc::new(ArcSwap::from_pointee(Settings::new(config)));
        let Gauges { active, tunnels } = gauges;
        Ok(Listener { name: config.name.get_ref().clone(), slot, socket, settings, active, tunnels })
    }

    /// The next client from the backlog, as a socket not yet registered with the
    /// poller (`Socket`).
    async fn accept(&self) -> std::io::Result<(Socket, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<(Socket, SocketAddr)>> {
        loop {
            let mut guard = std::task::ready!(self.socket.poll_read_ready(cx))?;
            if let Ok(accepted) = guard.try_io(|listener| accept_raw(listener.get_ref())) {
                return Poll::Ready(accepted);
            }
        }
    }

    /// The next client in the backlog, if one is there and the limit has room for
    /// it: one poll, no wait (a `Pending` leaves this task woken when one comes).
    async fn accept_now(
        &self,
    ) -> Option<(std::io::Result<(Socket, SocketAddr)>, Option<OwnedSemaphorePermit>)> {
        let slot = match &self.settings.load().slots {
            None => None,
            Some(slots) => Some(slots.clone().try_acquire_owned().ok()?),
        };
        match poll_fn(|cx| Poll::Ready(self.poll_accept(cx))).await {
            Poll::Ready(accepted) => Some((accepted, slot)),
            Poll::Pending => None,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.get_ref().local_addr()
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
        // Connections parking free their tasks, but glibc keeps the pages, so RSS
        // would stay at the high-water mark of the busiest second: the heap is
        // trimmed after a burst of them (`TrimAfterParks`), off this thread.
        let mut trims = TrimAfterParks::default();
        let mut trim = Box::pin(tokio::time::sleep(Duration::ZERO));
        // One wait for `stop` for the loop's life, on a receiver of its own: made
        // afresh each turn it took the watch's lock twice per turn (register, then
        // deregister when dropped), a few hundred instructions per connection. `stop`
        // itself is left unmarked, so the stop still reads as news to connections.
        let mut watch = stop.clone();
        let stopped = watch.changed();
        tokio::pin!(stopped);
        loop {
            let slots = self.settings.load().slots.clone();
            let accept = async {
                // Taken before accepting: at the limit, clients wait in the kernel's
                // backlog. The semaphore is never closed.
                let slot = match slots {
                    None => None,
                    Some(slots) => slots.acquire_owned().await.ok(),
                };
                (self.accept().await, slot)
            };
            tokio::select! {
                _ = &mut stopped => break,
                Some(ready) = lobby.next(), if !lobby.is_empty() => {
                    shared.admit(ready, BytesMut::new(), &tracker, &stop);
                }
                () = &mut sweep, if !lobby.is_empty() => {
                    sweep_lobby(&lobby, sweep.as_mut(), self.settings.load().handshake_timeout);
                }
                () = &mut trim, if trims.armed() => match trims.fired() {
                    TrimStep::Trim => {
                        // This thread's kept blocks and buffers too: the burst filled
                        // its lists, and what they hold is not free to the trim.
                        crate::recycle::release_kept();
                        crate::http::h1::conn::release_spares();
                        crate::heap::trim_stash();
                        drop(tokio::task::spawn_blocking(crate::heap::give_back));
                    }
                    TrimStep::Wait(after) => trim.as_mut().reset(Instant::now() + after),
                    TrimStep::Rest => {}
                },
                Some((client, until)) = parked_rx.recv() => {
                    if let Some(after) = trims.parked() {
                        trim.as_mut().reset(Instant::now() + after);
                    }
                    if lobby.is_empty() || sweep.deadline() > until {
                        sweep.as_mut().reset(until);
                    }
                    lobby.push(Waiting::parked(client, until));
                }
                (accepted, slot) = accept => {
                    // The clients queued behind this one are taken in the same turn, up
                    // to `ACCEPT_BURST`: each turn of this `select!` polls every branch
                    // (the stop, the parked channel), some 350 instructions.
                    let mut next = Some((accepted, slot));
                    let mut burst = 0;
                    while let Some((accepted, slot)) = next.take() {
                        match accepted {
                            Ok((stream, addr)) => {
                                #[cfg(not(target_os = "linux"))]
                                let _ = stream.std().set_nodelay(true);
                                let active = Active::new(&self.active);
                                let client = Accepted { stream, addr, slot, active, resumed: false };
                                if let Some(client) = shared.start(client, &tracker, &stop) {
                                    if lobby.is_empty() {
                                        let first = self.settings.load().handshake_timeout / 4;
                                        sweep.as_mut().reset(Instant::now() + first);
                                    }
                                    lobby.push(Waiting {
                                        client: Some(client),
                                        since: Instant::now(),
                                        until: Cell::new(None),
                                        expired: Cell::new(false),
                                    });
                                }
                            }
                            Err(e) => {
                                // Out of file descriptors or similar: back off instead of spinning.
                                tracing::warn!(listener = %self.name, error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                break;
                            }
                        }
                        burst += 1;
                        if burst < ACCEPT_BURST {
                            next = self.accept_now().await;
                        }
                    }
                }
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
                            Some(ready) => shared.admit(ready, BytesMut::new(), &tracked, &stop),
                            None => break,
                        },
                        () = &mut sweep => sweep_lobby(&lobby, sweep.as_mut(), settings.load().handshake_timeout),
                    }
                }
            });
        }
    }
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
    /// Whether the listener serves plain TCP (no TLS) at the moment.
    fn plain(&self) -> bool {
        !matches!(self.runtime.load().tls.get(self.slot), Some(Some(_)))
    }

    /// Starts serving a client just accepted whose first bytes are there already, as
    /// a plain HTTP client's request is by then under load: read at once (a TLS
    /// client's hello is only looked at, for the handshake to read), with no trip
    /// through the lobby and epoll. Returns it when it has sent nothing yet: it waits
    /// in the lobby, with no task of its own.
    fn start(
        self: &Arc<Self>,
        mut client: Accepted,
        tracker: &TaskTracker,
        stop: &watch::Receiver<bool>,
    ) -> Option<Accepted> {
        if !self.plain() {
            // The handshake reads the hello: a look tells whether it has come.
            return match client.stream.peek_now() {
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.admit(Some(client), BytesMut::new(), tracker, stop);
                    None
                }
                Poll::Pending => Some(client),
                Poll::Ready(_) => None,
            };
        }
        let mut first = crate::http::h1::conn::head_buffer();
        match lobby::read_now(&mut client.stream, &mut first) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.admit(Some(client), first, tracker, stop);
                None
            }
            Poll::Pending => {
                crate::http::h1::conn::return_head_buffer(first);
                Some(client)
            }
            // Gone already, or reset: nothing to serve.
            Poll::Ready(_) => {
                crate::http::h1::conn::return_head_buffer(first);
                None
            }
        }
    }

    /// Starts serving a client that has bytes to read.
    /// `first`: what was read from it already (see `start`), if anything.
    fn admit(
        self: &Arc<Self>,
        ready: Option<Accepted>,
        first: BytesMut,
        tracker: &TaskTracker,
        stop: &watch::Receiver<bool>,
    ) {
        let Some(Accepted { stream, addr, slot, active, resumed }) = ready else { return };
        let (shared, stop) = (self.clone(), stop.clone());
        // Boxed: the connection's future holds a request's inline, kilobytes, and
        // spawning moves a future about five times (into the tracker's wrapper, the
        // spawn, the runtime's context, the task's cell), and the task's stage is
        // written whole twice more when it ends: each a `memcpy` of all of it, some
        // 7,000 instructions per connection. Boxed, they move a pointer; and the box
        // is the last connection's (`recycle`), not a new allocation of that size.
        tracker.spawn(Recycled::with(move || async move {
            if let Some((stream, until)) = shared.clone().serve(stream, addr, resumed, first, stop).await {
                // Back to the lobby with its permit and its place in the gauge. Once
                // the listener has stopped there is none: the idle connection closes.
                let client = Accepted { stream, addr, slot, active, resumed: true };
                let _ = shared.parked.send((client, until));
            }
        }));
    }

    /// Serves a client that has sent its first bytes: TLS if the listener has it,
    /// then HTTP; a `resumed` one (back from the lobby, plain HTTP/1.1 between two
    /// requests) on `h1` at once. `first`: bytes read from it already, as plain TCP
    /// (then it stays plain, even if a reload has since given the listener TLS).
    /// Settings and certificates are the ones current at this moment. Returns the
    /// connection when `h1` parks it.
    async fn serve(
        self: Arc<Self>,
        stream: Socket,
        addr: SocketAddr,
        resumed: bool,
        first: BytesMut,
        stop: watch::Receiver<bool>,
    ) -> Option<(Socket, Instant)> {
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
        match tls.filter(|_| !resumed && first.is_empty()) {
            None => connection.serve_plain(stream, resumed, first).await,
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

/// Sets `TCP_NODELAY` on a listening socket. Linux copies it to every connection
/// accepted from it, which saves a `setsockopt` per connection; elsewhere the accept
/// loop sets it on each connection as well.
fn set_nodelay_inherited(socket: &std::net::TcpListener) {
    if let Err(e) = socket2::SockRef::from(socket).set_nodelay(true) {
        tracing::warn!(error = %e, "TCP_NODELAY on a listening socket");
    }
}

/// Sets or clears `TCP_DEFER_ACCEPT` on a listening socket (`defer_accept`). Set,
/// the kernel finishes the handshake but queues the connection for `accept` only
/// once its first bytes arrive, so a client is accepted with its request already
/// there: no registration with the poller, no read that finds nothing and no wake-up
/// in between. A client that sends nothing is queued anyway at the first SYN-ACK
/// retransmission, about a second later, and from then on `header_read_timeout`
/// applies as to any other. Linux only; elsewhere a no-op.
pub fn set_defer_accept(socket: impl std::os::fd::AsFd, on: bool) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // The kernel turns seconds into SYN-ACK retransmissions: 1 is one (HAProxy's
        // value), so a silent client waits in the kernel a second, not a timeout's worth.
        let seconds: libc::c_int = if on { 1 } else { 0 };
        // SAFETY: a valid descriptor (borrowed for the call) and a `c_int` option value
        // of the length given.
        let set = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&seconds).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "TCP_DEFER_ACCEPT on a listening socket");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, on);
}

/// One connection from a listening socket, non-blocking, as a `Socket` (no
/// registration with the poller yet). On Linux `accept4` makes it non-blocking in the
/// same call, and it has `TCP_NODELAY` from the listening socket.
fn accept_raw(listener: &std::net::TcpListener) -> std::io::Result<(Socket, SocketAddr)> {
    #[cfg(target_os = "linux")]
    let (stream, addr) = {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let (socket, addr) = socket2::SockRef::from(listener).accept4(flags)?;
        let addr =
            addr.as_socket().ok_or_else(|| std::io::Error::other("accepted a socket that is not TCP/IP"))?;
        (std::net::TcpStream::from(socket), addr)
    };
    #[cfg(not(target_os = "linux"))]
    let (stream, addr) = {
        let (stream, addr) = listener.accept()?;
        stream.set_nonblocking(true)?;
        (stream, addr)
    };
    Ok((Socket::new(stream), addr))
}

/// A non-blocking listening socket with `SO_REUSEADDR` and a backlog of 4096 (the
/// admin listener's).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false)?)
}

/// `bind_tcp`'s socket as a std one (still non-blocking), plus `SO_REUSEPORT` when
/// `reuse_port` is set: several processes (each setting it) may then listen on the
/// same port, and the kernel spreads new connections among them. Off by default:
/// without it a second weir started by mistake on a busy port fails loudly instead of
/// silently sharing it.
fn bind_std(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_a_listener_accepts_have_tcp_nodelay_without_a_setsockopt_each() {
        let text = "[[listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"u\"\n\
                    [upstreams.u]\nservers = [{ address = \"127.0.0.1:1\" }]\n";
        let config = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        // Bound without it, as an older weir handing its socket over would have.
        let socket = bind_std("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let gauges =
            Gauges { active: IntGauge::new("a", "a").unwrap(), tunnels: IntGauge::new("t", "t").unwrap() };
        let listener = Listener::on(&config.listeners[0], 0, gauges, socket).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.std().nodelay().unwrap(),
            "the accept loop no longer sets it per connection on Linux"
        );
        // Accepted without a registration with the poller: it is made when needed.
        assert!(!accepted.is_registered());
    }

    /// `TCP_DEFER_ACCEPT` as the kernel reports it back: set by `defer_accept`, and
    /// cleared again when a reload turns it off.
    #[test]
    fn defer_accept_sets_and_clears_tcp_defer_accept() {
        use std::os::fd::AsRawFd;
        let get = |socket: &std::net::TcpListener| {
            let mut value: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid descriptor, and a `c_int` out-value with its length.
            let got = unsafe {
                libc::getsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    std::ptr::from_mut(&mut value).cast(),
                    &mut len,
                )
            };
            assert_eq!(got, 0, "{}", std::io::Error::last_os_error());
            value
        };
        let socket = bind_std("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert_eq!(get(&socket), 0);
        set_defer_accept(&socket, true);
        assert!(get(&socket) > 0, "set: the kernel keeps it as one SYN-ACK retransmission's worth");
        set_defer_accept(&socket, false);
        assert_eq!(get(&socket), 0);
    }
}
