//! The client socket's wrapper: `ClientIo` keeps the first-bytes and send timeouts
//! that neither hyper's HTTP/1.1 server nor weir's h2 server keeps itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::conn::H2_PREFACE;
use crate::body::Pause;

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
pub(super) struct ClientIo<I> {
    pub(super) io: I,
    read_timeout: Duration,
    /// Set on the first read that has to wait; `None` again once disarmed.
    read_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far that match the h2 preface; `None` once decided.
    pub(super) matched: Option<usize>,
    /// `send_timeout`, for writes that wait.
    send: Pause,
}

impl<I> ClientIo<I> {
    pub(super) fn new(io: I, read_timeout: Duration, send_timeout: Duration) -> ClientIo<I> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
