//! A client's TCP socket, registered with the runtime's poller only once it has to
//! wait.
//!
//! tokio registers every socket it accepts with epoll (`epoll_ctl` ADD, and a
//! 128-byte registration of its own) and takes it out again before closing it
//! (`epoll_ctl` DEL). A plain HTTP/1.1 client that sends its request with its
//! connection and takes one answer never needs either: the request is read as the
//! connection is accepted, the answer fits the socket's send buffer, and the close
//! ends it. With a new connection per request those two calls were 5% of weir's CPU
//! (`perf`, BENCHMARKS.md). A `Socket` is the accepted socket as it is; the first read
//! or write that finds it not ready registers it (`tokio::io::unix::AsyncFd`), and
//! from then on it waits as tokio's own sockets do.
//!
//! A read that fills less than it asked for took everything there was: the socket is
//! `drained`, and the next read waits for the poller without trying first (tokio's
//! sockets do the same by clearing their readiness). `may_have_bytes` answers from
//! that alone, with no system call, whether bytes may have come since.
//!
//! Unix only, as weir is: reads go to `recv(2)` directly (socket2's), into the
//! buffer's uninitialized spare room, as tokio's do.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// An accepted client socket (see the module doc). Whole, it holds its state inline:
/// an idle connection waiting in the lobby costs no allocation of its own beyond
/// tokio's registration. Split, the halves share it.
pub struct Socket {
    inner: Inner,
}

struct Inner {
    /// The poller's registration, made when a read or write first has to wait
    /// (`None` inside: it failed). Declared before `stream`, so it is dropped first:
    /// a registered socket leaves epoll before the stream's drop closes it.
    registered: OnceLock<Option<AsyncFd<Fd>>>,
    /// The last read took all there was (see the module doc).
    drained: AtomicBool,
    stream: std::net::TcpStream,
}

/// The socket's descriptor, as the registration sees it: `Inner::stream` owns and
/// closes it.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Socket {
    /// Takes a connected, non-blocking socket, unregistered.
    pub fn new(stream: std::net::TcpStream) -> Socket {
        let inner = Inner { registered: OnceLock::new(), drained: AtomicBool::new(false), stream };
        Socket { inner }
    }

    /// Splits the socket into a half for reads and one for writes (which shuts the
    /// socket's write side when dropped, as tokio's `OwnedWriteHalf` does, unless
    /// `forget` lets it go).
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        let inner = Arc::new(self.inner);
        let read = ReadHalf { inner: inner.clone() };
        (read, WriteHalf { inner, shutdown_on_drop: true })
    }

    /// `Ready` once there is something to read (or the client has gone); registers
    /// the socket if it is not yet.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }

    /// Looks at the next byte without taking it, without waiting: `Ready(Ok(0))` once
    /// the client has closed, `Pending` when nothing has come yet.
    pub fn peek_now(&self) -> Poll<io::Result<usize>> {
        let mut byte = [0u8; 1];
        match self.inner.stream.peek(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            peeked => Poll::Ready(peeked),
        }
    }

    /// See `ReadHalf::may_have_bytes`.
    pub fn may_have_bytes(&self, cx: &mut Context<'_>) -> bool {
        self.inner.may_have_bytes(cx)
    }

    /// Whether the socket is registered with the poller (for tests).
    pub fn is_registered(&self) -> bool {
        self.inner.registered.get().is_some()
    }

    /// The underlying socket, for its options.
    pub fn std(&self) -> &std::net::TcpStream {
        &self.inner.stream
    }
}

impl Inner {
    /// The registration, made now if it is not yet.
    fn registration(&self) -> io::Result<&AsyncFd<Fd>> {
        let registered = self.registered.get_or_init(|| {
            let fd = Fd(self.stream.as_raw_fd());
            // SAFETY: `stream` owns the descriptor and outlives the registration (it is
            // dropped after it, see `Inner`), so it stays open and the same throughout.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }.ok()
        });
        registered
            .as_ref()
            .ok_or_else(|| io::Error::other("the socket could not be registered with the runtime"))
    }

    /// One `recv` into the buffer's spare room.
    fn recv(&self, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
        let n = loop {
            // SAFETY: `recv` only writes into the spare room, never de-initializes it.
            match socket2::SockRef::from(&self.stream).recv(unsafe { buf.unfilled_mut() }) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        // SAFETY: `recv` wrote the `n` bytes it reports.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Ok(n)
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let wanted = buf.remaining();
        if self.registered.get().is_none() && !self.drained.load(Relaxed) {
            match self.recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                read => return Poll::Ready(self.note(read, wanted)),
            }
        }
        let registration = self.registration()?;
        loop {
            let mut guard = ready!(registration.poll_read_ready(cx))?;
            if let Ok(read) = guard.try_io(|_| self.recv(buf)) {
                if matches!(read, Ok(n) if n > 0 && n < wanted) {
                    guard.clear_ready();
                }
                return Poll::Ready(self.note(read, wanted));
            }
        }
    }

    /// Notes whether a read drained the socket.
    fn note(&self, read: io::Result<usize>, wanted: usize) -> io::Result<()> {
        let n = read?;
        self.drained.store(n > 0 && n < wanted, Relaxed);
        Ok(())
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = ready!(self.registration()?.poll_read_ready(cx))?;
        // Readiness stays with the registration; the guard only lends it.
        guard.retain_ready();
        Poll::Ready(Ok(()))
    }

    fn poll_write(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, || (&self.stream).write(bytes))
    }

    /// `poll_write` for several buffers at once: one `writev` (TLS writes its records
    /// this way).
    fn poll_write_vectored(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, || (&self.stream).write_vectored(bufs))
    }

    /// Runs the write `io` at once while the socket is not registered; when it finds
    /// the socket full, or once it is registered, waits for the poller to say it
    /// has room.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut io: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if self.registered.get().is_none() {
            match io() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
        let registration = self.registration()?;
        loop {
            let mut guard = ready!(registration.poll_write_ready(cx))?;
            if let Ok(written) = guard.try_io(|_| io()) {
                return Poll::Ready(written);
            }
        }
    }

    /// Whether bytes may have come since the last read, by what the socket knows
    /// already: no system call.
    fn may_have_bytes(&self, cx: &mut Context<'_>) -> bool {
        match self.registered.get() {
            Some(Some(registration)) => match registration.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    guard.retain_ready();
                    true
                }
                Poll::Ready(Err(_)) => true,
                Poll::Pending => false,
            },
            _ => !self.drained.load(Relaxed),
        }
    }
}

/// A `Socket`'s read side.
pub struct ReadHalf {
    inner: Arc<Inner>,
}

/// A `Socket`'s write side.
pub struct WriteHalf {
    inner: Arc<Inner>,
    shutdown_on_drop: bool,
}

/// `ReadHalf::reunite` with halves of two different sockets.
#[derive(Debug)]
pub struct NotTheSameSocket;

impl ReadHalf {
    /// The socket again, from its two halves.
    pub fn reunite(self, mut write: WriteHalf) -> Result<Socket, NotTheSameSocket> {
        if !Arc::ptr_eq(&self.inner, &write.inner) {
            return Err(NotTheSameSocket);
        }
        write.shutdown_on_drop = false;
        drop(write);
        // The two halves held the only references.
        let inner = Arc::try_unwrap(self.inner).map_err(|_| NotTheSameSocket)?;
        Ok(Socket { inner })
    }

    /// Whether bytes may have come since the last read, without a system call: a
    /// read that took less than it asked for emptied the socket, and only the
    /// poller (once the socket is registered) can say more has come since.
    pub fn may_have_bytes(&self, cx: &mut Context<'_>) -> bool {
        self.inner.may_have_bytes(cx)
    }

    /// See `Socket::poll_read_ready`.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl WriteHalf {
    /// Drops the half without shutting the socket's write side: the socket closes
    /// when its read half goes, and the close sends the FIN.
    pub fn forget(mut self) {
        self.shutdown_on_drop = false;
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        if self.shutdown_on_drop {
            let _ = self.inner.stream.shutdown(Shutdown::Write);
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read(cx, buf)
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read(cx, buf)
    }
}

/// `AsyncWrite` for a type with an `inner: Inner`, all but its shutdown: the whole
/// socket's and its write half's differ only there.
macro_rules! write_through_inner {
    ($type:ty, |$this:ident| $shutdown:expr) => {
        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bytes: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.inner.poll_write(cx, bytes)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.inner.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                let $this = self.get_mut();
                Poll::Ready($shutdown)
            }
        }
    };
}

write_through_inner!(Socket, |socket| socket.inner.stream.shutdown(Shutdown::Write));
// Shut once: not again when the half is dropped.
write_through_inner!(WriteHalf, |half| {
    half.shutdown_on_drop = false;
    half.inner.stream.shutdown(Shutdown::Write)
});

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.stream.as_fd()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: weir's side as a `Socket`, and the client's.
    async fn pair() -> (Socket, tokio::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        (Socket::new(accepted), client)
    }

    #[tokio::test]
    async fn a_request_there_at_accept_is_read_and_answered_without_registering() {
        let (socket, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut bytes = [0u8; 64];
        let mut buf = ReadBuf::new(&mut bytes);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut socket = socket;
        assert!(Pin::new(&mut socket).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"GET / HTTP/1.1\r\n\r\n");
        let (read, mut write) = socket.into_split();
        // A short read emptied it: nothing new, by what the socket knows.
        let waker = std::task::Waker::noop();
        assert!(!read.may_have_bytes(&mut Context::from_waker(waker)));
        write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        let socket = read.reunite(write).unwrap();
        assert!(!socket.is_registered(), "nothing had to wait");
        drop(socket);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_read_with_nothing_there_registers_and_wakes_when_bytes_come() {
        let (socket, mut client) = pair().await;
        let mut bytes = [0u8; 64];
        let mut buf = ReadBuf::new(&mut bytes);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut socket = socket;
        assert!(Pin::new(&mut socket).poll_read(&mut cx, &mut buf).is_pending());
        assert!(socket.is_registered(), "a read that has to wait registers");
        let (mut read, _write) = socket.into_split();
        let reader = tokio::spawn(async move {
            let mut got = [0u8; 5];
            read.read_exact(&mut got).await.unwrap();
            got
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(b"hello").await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), reader).await.unwrap().unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_write_that_fills_the_buffer_waits_for_the_client_to_read() {
        let (socket, mut client) = pair().await;
        let (_read, mut write) = socket.into_split();
        // Far more than the socket buffers hold: the write has to wait, registered.
        let big = vec![7u8; 8 << 20];
        let writer = tokio::spawn(async move {
            write.write_all(&big).await.unwrap();
            write.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 8 << 20);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_write_half_shuts_the_write_side_unless_forgotten() {
        let (socket, mut client) = pair().await;
        let (read, write) = socket.into_split();
        drop(write);
        let mut got = Vec::new();
        // The FIN arrives though the read half is alive.
        tokio::time::timeout(std::time::Duration::from_secs(2), client.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        drop(read);

        let (socket, mut client) = pair().await;
        let (read, write) = socket.into_split();
        write.forget();
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), client.read(&mut byte)).await;
        assert!(early.is_err(), "a forgotten half sent a FIN");
        drop(read);
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_vectored_write_goes_out_whole() {
        let (socket, mut client) = pair().await;
        let (_read, mut write) = socket.into_split();
        assert!(write.is_write_vectored(), "TLS would write its records one call each");
        let parts = [IoSlice::new(b"one "), IoSlice::new(b"two "), IoSlice::new(b"three")];
        let n =
            std::future::poll_fn(|cx| Pin::new(&mut write).poll_write_vectored(cx, &parts)).await.unwrap();
        assert_eq!(n, 13);
        drop(write);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"one two three");
    }

    #[tokio::test]
    async fn halves_of_different_sockets_do_not_reunite() {
        let (a, _ca) = pair().await;
        let (b, _cb) = pair().await;
        let (read_a, _write_a) = a.into_split();
        let (_read_b, write_b) = b.into_split();
        assert!(read_a.reunite(write_b).is_err());
    }
}
