//! Request bodies on weir's HTTP/1.1 server: decoded by length or by chunks from the
//! connection's read side, which the body borrows while the request is handled
//! (the upload may still be running while the response streams) and hands back
//! once the response is written.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::chunked::{Chunked, Decoded};
use super::server::ReadSide;
use crate::http::BoxError;

/// How much room a read of body bytes asks for.
const BODY_READ: usize = 64 * 1024;

/// Where a request body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decode {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    Done,
    /// Broken framing or a lost connection: the connection cannot go on.
    Failed,
}

/// One step of decoding a request body from buffered bytes.
pub enum Step {
    Frame(Frame<Bytes>),
    End,
    /// More bytes are needed.
    More,
}

/// Decodes the next frame of a body from `buf` alone.
pub fn decode(state: &mut Decode, buf: &mut BytesMut) -> Result<Step, &'static str> {
    match state {
        Decode::Done => Ok(Step::End),
        Decode::Failed => Err("the request body failed earlier"),
        Decode::Length(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let n = (buf.len() as u64).min(*left);
            let data = buf.split_to(n as usize).freeze();
            *left -= n;
            if *left == 0 {
                *state = Decode::Done;
            }
            Ok(Step::Frame(Frame::data(data)))
        }
        Decode::Chunked(chunked) => Ok(match chunked.decode(buf)? {
            Decoded::Data(data) => Step::Frame(Frame::data(data)),
            Decoded::Trailers(trailers) => Step::Frame(Frame::trailers(trailers)),
            Decoded::End => {
                *state = Decode::Done;
                Step::End
            }
            Decoded::More => Step::More,
        }),
    }
}

/// A request body read from its client connection, whose read side it borrows until
/// the connection has written the response.
pub struct Body {
    pub reader: Arc<Mutex<Reader>>,
    /// The declared length, for `size_hint`.
    pub length: Option<u64>,
}

/// A request body's decoding state and the connection's read side while lent.
pub struct Reader {
    pub side: Option<ReadSide>,
    pub state: Decode,
    /// `Expect: 100-continue` not answered yet: the first poll of the body asks the
    /// connection (`waker`) to send the `100`, as hyper did, so a request answered
    /// without its body (a `413`, a `404`) never invites it.
    pub expect: bool,
    pub wanted: bool,
    pub waker: Option<std::task::Waker>,
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("client request body: {0}")]
    Bad(&'static str),
    #[error("the client closed the connection mid-body")]
    Closed,
}

/// Whether `error` is this decoder's verdict on a malformed request body (rather than
/// the client going away), so the proxy answers `400` and blames no server.
pub fn is_malformed(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(error.downcast_ref::<BodyError>(), Some(BodyError::Bad(_)))
}

pub fn lock(reader: &Mutex<Reader>) -> MutexGuard<'_, Reader> {
    reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Reader {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if std::mem::take(&mut self.expect) {
            self.wanted = true;
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
        loop {
            let Some(side) = self.side.as_mut() else {
                return match self.state {
                    Decode::Done => Poll::Ready(None),
                    _ => Poll::Ready(Some(Err(BodyError::Closed.into()))),
                };
            };
            match decode(&mut self.state, &mut side.buf) {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(reason) => {
                    self.state = Decode::Failed;
                    return Poll::Ready(Some(Err(BodyError::Bad(reason).into())));
                }
            }
            if side.buf.capacity() - side.buf.len() < BODY_READ / 4 {
                side.buf.reserve(BODY_READ);
            }
            match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut side.io), cx, &mut side.buf)) {
                Ok(0) => {
                    self.state = Decode::Failed;
                    return Poll::Ready(Some(Err(BodyError::Closed.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    self.state = Decode::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    /// Finishes the body from what is already buffered, dropping its bytes; `false`
    /// when that is not enough, and the connection must close.
    pub fn drain(&mut self) -> bool {
        let Some(side) = self.side.as_mut() else { return false };
        loop {
            match decode(&mut self.state, &mut side.buf) {
                Ok(Step::End) => return true,
                Ok(Step::Frame(_)) => {}
                Ok(Step::More) | Err(_) => return false,
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        lock(&self.reader).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.reader).state == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(state: Decode, parts: &[&[u8]]) -> Result<Vec<u8>, &'static str> {
        let (mut state, mut buf) = (state, BytesMut::new());
        let mut body = Vec::new();
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                match decode(&mut state, &mut buf)? {
                    Step::Frame(frame) => body.extend_from_slice(&frame.into_data().unwrap_or_default()),
                    Step::End => return Ok(body),
                    Step::More => break,
                }
            }
        }
        Err("incomplete")
    }

    #[test]
    fn bodies_end_at_their_framing() {
        assert_eq!(decode_all(Decode::Length(3), &[b"a", b"bcGET"]).unwrap(), b"abc");
        let chunked = Decode::Chunked(Chunked::new());
        assert_eq!(decode_all(chunked, &[b"3\r\nabc\r\n0\r", b"\n\r\nGET"]).unwrap(), b"abc");
        assert!(decode_all(chunked, &[b"3\r\nabc\r\n\r\nGET"]).is_err());
    }
}
