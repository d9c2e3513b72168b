//! One accepted client connection, served: a plain one is told apart by its first
//! bytes (h2 preface to weir's h2 server, an HTTP/1 first line to weir's own
//! HTTP/1.1 server, anything else closed); a TLS one by ALPN (h2 to weir's h2
//! server, HTTP/1.1 to hyper's). Also the idle and stop handling of hyper-served
//! connections (`until_idle`).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client_io::ClientIo;
use super::h1;
use super::lobby::Active;
use super::{Settings, STOP_GRACE};
use crate::body::ClientBody;
use crate::proxy::tunnel::Tunnel;
use crate::proxy::{self, Peer};
use crate::runtime::SharedRuntime;
use crate::socket::Socket;

/// One accepted client connection, ready to serve.
pub(super) struct Connection {
    pub(super) settings: Arc<Settings>,
    pub(super) runtime: SharedRuntime,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) peer: Peer,
    /// `weir_tunnels_active`: an upgrade's tunnel runs on its connection's task (and
    /// so holds its permit and its place in the drain), counted here too.
    pub(super) tunnels: IntGauge,
}

impl Connection {
    /// Serves a plain-TCP client: h2 (prior knowledge) on weir's h2 server, HTTP/1 on weir's own
    /// HTTP/1.1 server, anything else is closed. The first bytes decide; a client that
    /// sends part of the h2 preface or of its first line and stops is cut at
    /// `header_read_timeout`.
    ///
    /// A `resumed` connection (back from the lobby) is HTTP/1.1 already: straight to
    /// `h1`, with nothing read yet. `first`: what the listener read from a new one
    /// when it accepted it (see `lobby::read_now`), if anything.
    // Not an `async fn`: see the `async` block below.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn serve_plain(
        self,
        mut stream: Socket,
        resumed: bool,
        mut first: BytesMut,
    ) -> impl Future<Output = Option<(Socket, Instant)>> {
        // An `async` block, not an `async fn`: an `async fn` moves its arguments into
        // locals of its own, so its future would hold the connection twice.
        async move {
            let mut line = FirstLine::default();
            let deadline = Instant::now() + self.settings.handshake_timeout;
            if !resumed {
                // Bytes in hand are looked at before anything more is read.
                let mut read_first = first.is_empty();
                if read_first {
                    first = crate::http::h1::conn::head_buffer();
                }
                loop {
                    if read_first {
                        // The lobby hands over a readable socket: the first read needs no timer.
                        // A polled read, not `try_read_buf`: one that fills less than the buffer
                        // marks the socket drained (`Socket`), so the next read (the next request,
                        // or the close) waits for epoll instead of first finding the socket empty.
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
                    }
                    read_first = true;
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
                        let mut io = ClientIo::new(
                            stream,
                            self.settings.handshake_timeout,
                            self.settings.send_timeout,
                        );
                        // The preface is read already: no first-bytes timeout from here.
                        io.matched = None;
                        // Boxed for the same reason as TLS (see `Shared::serve`).
                        Box::pin(self.serve_h2(io, first)).await;
                        return None;
                    }
                }
            }
            // In a block of its own: the HTTP/1.1 server's future holds a request's inline
            // (5.6 KiB), and awaited here it would be copied whole into this future, which
            // is copied in turn into the one above. The block keeps the loop that builds
            // the server's future in place for each connection (`recycle::resident`): made
            // here and moved into a block, it would be copied whole there too.
            crate::recycle::resident((self, stream, first), |(conn, stream, first)| {
                h1::serve(conn, stream, first)
            })
            .await
        }
    }

    /// Serves a TLS client: the handshake within `timeout`, then the protocol ALPN
    /// agreed: h2 on weir's h2 server, HTTP/1.1 on hyper's.
    pub(super) async fn serve_tls(
        self,
        stream: Socket,
        acceptor: tokio_rustls::TlsAcceptor,
        timeout: Duration,
    ) {
        let addr = self.peer.addr;
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => {
                    let io =
                        ClientIo::new(stream, self.settings.handshake_timeout, self.settings.send_timeout);
                    self.serve_h2(io, BytesMut::new()).await
                }
                _ => self.serve_http1(stream).await,
            },
            Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
        }
    }

    /// Serves h2 on `io` (with `first`, bytes already read) with weir's own HTTP/2
    /// server (`http::h2`), until the client leaves, an error, or `stop` (GOAWAY
    /// after `STOP_GRACE`, the open streams finish). Each stream's request future is
    /// polled by the connection's one task: no task per request.
    async fn serve_h2<I>(self, io: ClientIo<I>, first: BytesMut)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let config = self.settings.h2;
        let peer = Arc::new(self.peer);
        let runtime = self.runtime;
        let handler = move |req: http::Request<crate::http::h2::RecvBody>| {
            let rt = runtime.load_full();
            let peer = peer.clone();
            async move {
                let mut response = proxy::handle(&rt.pipeline, req.map(ClientBody::H2), &peer, None).await;
                // The server writes headers from the map only.
                proxy::body::materialize(&mut response);
                response
            }
        };
        crate::http::h2::serve(io, first, config, self.stop, handler).await;
    }

    /// Serves HTTP/1.1 on `io` with hyper (TLS connections that did not agree on
    /// h2) until the client leaves or `stop` changes, then
    /// finishes the request in progress and closes.
    async fn serve_http1<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let addr = self.peer.addr;
        let peer = Arc::new(self.peer);
        let runtime = self.runtime;
        let idle = Arc::new(Idle::new());
        let activity = idle.clone();
        let stopping = self.stop.clone();
        let service = service_fn(move |req| {
            let rt = runtime.load_full();
            let peer = peer.clone();
            let busy = activity.begin();
            // A request that arrives in the `STOP_GRACE` after a stop is answered
            // with `Connection: close`, as weir's own HTTP/1.1 server does.
            let close = !matches!(stopping.has_changed(), Ok(false));
            async move {
                // The request future is a few KiB, and hyper moves it about: boxed,
                // only a pointer moves.
                let mut response =
                    Box::pin(proxy::handle(&rt.pipeline, req.map(ClientBody::Hyper), &peer, None)).await;
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
        let conn = settings.http1.serve_connection(io, service).with_upgrades();
        let result = until_idle(conn, |c| c.graceful_shutdown(), stop, &idle, settings.idle_timeout).await;
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
pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
