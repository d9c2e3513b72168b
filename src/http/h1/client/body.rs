//! Response bodies of weir's HTTP/1.1 client, decoded by length, by chunks or to the
//! close (as `http::h1::response` framed them), owning their connection until the
//! last byte.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::{Conn, Error, RequestBody, Stream, BODY_READ};
use crate::http::h1::chunked::Decoded;
use crate::http::h1::response::{Lines, State};
use crate::http::h1::server::Encoded;
use crate::http::BoxError;

/// A response body read from its connection, which it owns until the end.
pub struct Body<B> {
    conn: Option<Box<Conn<B>>>,
    state: State,
    /// Whether the connection can carry another request once the body is done.
    reusable: bool,
    /// A failure read but not yet reported (see `poll_frame`). Boxed: rare, and
    /// inline it would grow every response, which each layer of the pipeline moves.
    failed: Option<Box<Error>>,
    /// The response's fields are lines in the connection's `write` buffer, not in
    /// its header map (`response::parse_head_into`); `None` once taken.
    lines: Option<Lines>,
}

impl<B: RequestBody> Body<B> {
    /// The body of a response whose head `conn` has read; `reusable`: whether the
    /// connection may carry another request after it.
    pub(super) fn new(conn: Box<Conn<B>>, state: State, reusable: bool, lines: Option<Lines>) -> Body<B> {
        Body { conn: Some(conn), state, reusable, failed: None, lines }
    }

    /// The response's fields when they are lines rather than a map, for weir's
    /// server to write as they are: read before the body is, while the body holds
    /// the connection they are kept in.
    pub fn encoded(&self) -> Option<Encoded<'_>> {
        let (lines, conn) = (self.lines?, self.conn.as_ref()?);
        Some(Encoded { fields: &conn.write, date: lines.date, length: lines.length })
    }

    /// Moves the fields kept as lines into `headers`, for whatever needs them as a
    /// map (header rules, a cache, hyper's servers); nothing if they are there
    /// already.
    pub fn materialize(&mut self, headers: &mut http::HeaderMap) {
        let Some(encoded) = self.encoded() else { return };
        let fields = Bytes::copy_from_slice(encoded.fields);
        self.lines = None;
        headers.reserve(fields.len() / 16);
        for (name, value) in crate::http::h1::encode::fields(&fields) {
            // Written from what httparse took, which `HeaderName` takes too.
            let Ok(name) = http::HeaderName::from_bytes(name) else { continue };
            // SAFETY: httparse took these bytes as a value, and it takes exactly the
            // bytes a `HeaderValue` may hold.
            let value = unsafe { http::HeaderValue::from_maybe_shared_unchecked(fields.slice_ref(value)) };
            headers.append(name, value);
        }
    }

    /// The connection, if the body was read to its end and the connection can be
    /// pooled again.
    pub fn take_reusable(&mut self) -> Option<Box<Conn<B>>> {
        let clean = self.state == State::Done && self.reusable;
        self.conn.take_if(|c| clean && c.read.is_empty() && c.upload.is_none())
    }

    /// The connection of a 101 response, and any bytes the server sent after it.
    pub fn take_upgraded(&mut self) -> Option<(Stream, Bytes)> {
        if self.state != State::Upgraded {
            return None;
        }
        self.conn.take().map(|c| {
            let Conn { io, read, .. } = *c;
            (io, read.freeze())
        })
    }

    /// Reads more from the connection into its buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(Ok(0)) };
        if conn.read.capacity() - conn.read.len() < want / 4 {
            conn.read.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read)
    }

    fn buffered(&mut self) -> &mut BytesMut {
        &mut self.conn.as_mut().expect("a body being read has its connection").read
    }

    /// Up to `max` buffered body bytes, reading first if none are buffered.
    fn poll_data(&mut self, cx: &mut Context<'_>, max: u64) -> Poll<Result<Bytes, Error>> {
        if self.buffered().is_empty() && ready!(self.poll_fill(cx, BODY_READ))? == 0 {
            return Poll::Ready(Err(Error::ClosedMidBody));
        }
        let buf = self.buffered();
        let n = (buf.len() as u64).min(max) as usize;
        Poll::Ready(Ok(buf.split_to(n).freeze()))
    }

    fn poll_decode(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(conn) = self.conn.as_mut().filter(|c| c.upload.is_some()) {
            if let Poll::Ready(Err(error)) = conn.poll_upload(cx) {
                // The response goes on; the connection cannot carry another request.
                tracing::debug!(%error, "request body upload stopped mid-response");
                conn.upload = None;
                self.reusable = false;
            }
        }
        loop {
            match self.state {
                State::Done | State::Upgraded => return Poll::Ready(None),
                State::Length(left) => {
                    let data = ready!(self.poll_data(cx, left))?;
                    let left = left - data.len() as u64;
                    self.state = if left == 0 { State::Done } else { State::Length(left) };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Eof => {
                    if self.buffered().is_empty() && ready!(self.poll_fill(cx, BODY_READ))? == 0 {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    let data = self.buffered().split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(ref mut chunked) => {
                    let conn = self.conn.as_mut().expect("a body being read has its connection");
                    match chunked.decode(&mut conn.read).map_err(Error::Bad)? {
                        Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Decoded::Trailers(trailers) => {
                            self.state = State::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Decoded::End => {
                            self.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Decoded::More => ready!(self.fill_or_fail_poll(cx))?,
                    }
                }
            }
        }
    }

    /// Reads more bytes mid-body; the connection ending here cuts the body short.
    fn fill_or_fail_poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match ready!(self.poll_fill(cx, BODY_READ)) {
            Ok(0) => Poll::Ready(Err(Error::ClosedMidBody)),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl<B: RequestBody> http_body::Body for Body<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            this.state = State::Done;
            return Poll::Ready(Some(Err((*error).into())));
        }
        match this.poll_decode(cx) {
            Poll::Ready(Some(Err(error))) => {
                // Whatever is left of the connection is unframed. The failure is
                // reported on the next poll, not this one: hyper writes out what it
                // holds (the head, the body so far) when a body is pending, and a
                // client should see the response cut, not vanish unseen.
                this.reusable = false;
                this.conn = None;
                this.failed = Some(Box::new(error));
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            polled => polled.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done | State::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection whose server writes `parts` one by one, with pauses, then closes.
    async fn conn_fed(parts: Vec<&'static [u8]>) -> Box<Conn<Empty<Bytes>>> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for part in parts {
                socket.write_all(part).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        Conn::new(Stream::Tcp(TcpStream::connect(addr).await.unwrap()))
    }

    async fn read(parts: Vec<&'static [u8]>) -> Result<(Vec<u8>, Option<http::HeaderMap>, bool), String> {
        let mut conn = conn_fed(parts).await;
        let (_, (state, keep), lines) =
            std::future::poll_fn(|cx| conn.poll_head(cx, false, true)).await.map_err(|e| e.to_string())?;
        let mut body = Body { conn: Some(conn), state, reusable: keep, failed: None, lines };
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        Ok((data, trailers, body.take_reusable().is_some()))
    }

    #[tokio::test]
    async fn chunked_bodies_decode_across_any_split() {
        let (data, trailers, reusable) = read(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"5;ext=1\r\nhel",
            b"lo\r",
            b"\n6\r\n world\r\n0\r",
            b"\ngrpc-status: 0\r\n",
            b"\r\n",
        ])
        .await
        .unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert!(reusable);
    }

    #[tokio::test]
    async fn broken_chunking_is_an_error_not_a_short_body() {
        let head: &'static [u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        for tail in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"5\r\nhel",
        ] {
            let result = read(vec![head, tail]).await;
            assert!(result.is_err(), "{:?} was accepted: {result:?}", String::from_utf8_lossy(tail));
        }
    }

    #[tokio::test]
    async fn length_and_close_delimited_bodies() {
        let (data, _, reusable) =
            read(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234", b"56789"]).await.unwrap();
        assert_eq!((data.as_slice(), reusable), (&b"0123456789"[..], true));
        let (data, _, reusable) = read(vec![b"HTTP/1.1 200 OK\r\n\r\nto the ", b"end"]).await.unwrap();
        assert_eq!((data.as_slice(), reusable), (&b"to the end"[..], false));
        let short = read(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234"]).await;
        assert_eq!(short.unwrap_err(), "connection closed mid-body");
    }
}
