//! Client-facing listeners: bind, accept, serve HTTP/1.1 and HTTP/2 (prior
//! knowledge) on the same port, and drain on shutdown.
//!
//! Each connection computes its `Peer` once; each request loads the current runtime
//! once and hands it to `proxy::handle`. Slow clients are cut off by the header read
//! timeout, oversized heads get `431` from hyper's size limit.
//!
//! `max_connections`: each connection holds a semaphore permit until it closes, and
//! the loop takes a permit *before* accepting, so at the limit weir simply stops
//! calling `accept`: further clients wait in the kernel's backlog (and are served in
//! turn) instead of being accepted and dropped. A reload keeps the count when the
//! limit is unchanged; a changed limit counts from zero (connections open under the
//! old limit finish uncounted).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
use crate::proxy::{self, Peer};
use crate::runtime::SharedRuntime;

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
    builder: auto::Builder<TokioExecutor>,
    /// A TLS handshake gets as long as a request head.
    handshake_timeout: Duration,
    max_connections: Option<usize>,
    /// One permit per open connection; `None` without `max_connections`.
    slots: Option<Arc<Semaphore>>,
}

impl Settings {
    pub fn new(config: &ListenerConfig) -> Settings {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout.0)
            .max_buf_size(*config.max_header_size.get_ref())
            .keep_alive(true);
        builder
            .http2()
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
        Settings { builder, handshake_timeout: config.header_read_timeout.0, max_connections, slots }
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
        let socket = bind_tcp(addr)?;
        let settings = Arc::new(ArcSwap::from_pointee(Settings::new(config)));
        Ok(Listener { name: config.name.get_ref().clone(), slot, socket, settings, active })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts connections until `stop` changes. Each connection runs on `tracker`, and
    /// when `stop` changes it finishes its in-flight requests and closes.
    pub async fn serve(self, runtime: SharedRuntime, tracker: TaskTracker, mut stop: watch::Receiver<bool>) {
        loop {
            let slots = self.settings.load().slots.clone();
            let slot = match slots {
                None => None,
                Some(slots) => tokio::select! {
                    _ = stop.changed() => break,
                    // The semaphore is never closed.
                    slot = slots.acquire_owned() => slot.ok(),
                },
            };
            let (stream, addr) = tokio::select! {
                _ = stop.changed() => break,
                accepted = self.socket.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let tls = runtime.load().tls.get(self.slot).cloned().flatten();
            let settings = self.settings.load_full();
            let handshake_timeout = settings.handshake_timeout;
            let mut connection = Connection {
                settings,
                runtime: runtime.clone(),
                stop: stop.clone(),
                peer: Peer::new(addr, self.slot, tls.is_some()),
            };
            let active = self.active.clone();
            tracker.spawn(async move {
                active.inc();
                // Until a client sends its first bytes it costs only its socket and
                // this small task: TLS and hyper's state and buffers (about 10 KiB)
                // are allocated, boxed, once there is something to read. A client
                // that sends nothing is dropped after the header read timeout.
                if connection.first_bytes(&stream, handshake_timeout).await {
                    match tls {
                        None => Box::pin(connection.serve(stream)).await,
                        Some(acceptor) => {
                            Box::pin(async move {
                                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => connection.serve(stream).await,
                                    Ok(Err(e)) => {
                                        tracing::debug!(client = %addr, error = %e, "TLS handshake failed")
                                    }
                                    Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
                                }
                            })
                            .await
                        }
                    }
                }
                active.dec();
                drop(slot);
            });
        }
        tracing::info!(listener = %self.name, "stopped accepting");
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
    /// Waits until the client sends something; false if it sent nothing within
    /// `timeout` or the listener is stopping.
    async fn first_bytes(&mut self, stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
        tokio::select! {
            ready = tokio::time::timeout(timeout, stream.readable()) => matches!(ready, Ok(Ok(()))),
            _ = self.stop.changed() => false,
        }
    }

    /// Serves HTTP/1.1 or h2 on `io` until the client leaves or `stop` changes, then
    /// finishes the request in progress and closes.
    async fn serve<I>(mut self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let addr = self.peer.addr;
        let peer = Arc::new(self.peer);
        let runtime = self.runtime;
        let service = service_fn(move |req| {
            let rt = runtime.load_full();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(proxy::handle(&rt, req, &peer).await) }
        });
        let conn = self.settings.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = self.stop.changed() => {
                // Idle keep-alive connections close at once.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %addr, error = %e, "client connection ended with an error");
        }
    }
}

/// A non-blocking listening socket with `SO_REUSEADDR` and a backlog of 4096.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
