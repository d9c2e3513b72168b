//! Request bodies on weir's HTTP/1.1 server: decoded by length or by chunks from the
//! connection's read side, which the body borrows while the request is handled
//! (the upload may still be running while the response streams) and hands back
//! once the response is written.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};

use super::ReadSide;
use crate::proxy::body::BoxError;

/// How much room a read of body bytes asks for.
const BODY_READ: usize = 64 * 1024;
/// Largest chunk-size line and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a request body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Decode {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    Done,
    /// Broken framing or a lost connection: the connection cannot go on.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// One step of decoding a request body from buffered bytes.
enum Step {
    Frame(Frame<Bytes>),
    End,
    /// More bytes are needed.
    More,
}

/// Decodes the next frame of a body from `buf` alone.
fn decode(state: &mut Decode, buf: &mut BytesMut) -> Result<Step, &'static str> {
    loop {
        match *state {
            Decode::Done => return Ok(Step::End),
            Decode::Failed => return Err("the request body failed earlier"),
            Decode::Length(left) | Decode::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (buf.len() as u64).min(left);
                let data = buf.split_to(n as usize).freeze();
                let left = left - n;
                *state = match *state {
                    Decode::Length(_) if left == 0 => Decode::Done,
                    Decode::Length(_) => Decode::Length(left),
                    _ if left == 0 => Decode::Chunked(Chunk::DataEnd),
                    _ => Decode::Chunked(Chunk::Data(left)),
                };
                return Ok(Step::Frame(Frame::data(data)));
            }
            Decode::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *state = Decode::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => return Ok(Step::More),
                _ => return Err("invalid chunk size line"),
            },
            Decode::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF");
                }
                buf.advance(2);
                *state = Decode::Chunked(Chunk::Size);
            }
            Decode::Chunked(Chunk::Trailers) => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *state = Decode::Done;
                    return Ok(Step::End);
                }
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                let mut fields = [httparse::EMPTY_HEADER; 32];
                match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            if let (Ok(name), Ok(value)) =
                                (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                            {
                                trailers.append(name, value);
                            }
                        }
                        buf.advance(used);
                        *state = Decode::Done;
                        return Ok(Step::Frame(Frame::trailers(trailers)));
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => return Ok(Step::More),
                    _ => return Err("invalid chunked trailers"),
                }
            }
        }
    }
}

/// A request body read from its client connection, whose read side it borrows until
/// the connection has written the response.
pub struct Body {
    pub(super) reader: Arc<Mutex<Reader>>,
    /// The declared length, for `size_hint`.
    pub(super) length: Option<u64>,
}

/// A request body's decoding state and the connection's read side while lent.
pub(super) struct Reader {
    pub(super) side: Option<ReadSide>,
    pub(super) state: Decode,
    /// `Expect: 100-continue` not answered yet: the first poll of the body asks the
    /// connection (`waker`) to send the `100`, as hyper did, so a request answered
    /// without its body (a `413`, a `404`) never invites it.
    pub(super) expect: bool,
    pub(super) wanted: bool,
    pub(super) waker: Option<std::task::Waker>,
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

pub(super) fn lock(reader: &Mutex<Reader>) -> MutexGuard<'_, Reader> {
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
    pub(super) fn drain(&mut self) -> bool {
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

    fn decode_all(state: Decode, parts: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let (mut state, mut buf) = (state, BytesMut::new());
        let (mut body, mut trailers) = (Vec::new(), None);
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                match decode(&mut state, &mut buf)? {
                    Step::Frame(frame) => match frame.into_data() {
                        Ok(data) => body.extend_from_slice(&data),
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    },
                    Step::End => return Ok((body, trailers)),
                    Step::More => break,
                }
            }
        }
        Err("incomplete")
    }

    proptest::proptest! {
        /// Whatever a client sends as a chunked body, in any split, decoding ends in
        /// data, an end or an error: never a panic, and never more data out than in.
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), split in 0usize..512) {
            let split = split.min(bytes.len());
            let (a, b) = bytes.split_at(split);
            if let Ok((body, _)) = decode_all(Decode::Chunked(Chunk::Size), &[a, b]) {
                proptest::prop_assert!(body.len() <= bytes.len());
            }
        }

        /// A body chunked any way decodes to its data.
        #[test]
        fn chunked_data_round_trips(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..64), 0..8), split in 0usize..1024) {
            let mut wire = Vec::new();
            for chunk in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let split = split.min(wire.len());
            let (a, b) = wire.split_at(split);
            let (body, _) = decode_all(Decode::Chunked(Chunk::Size), &[a, b]).unwrap();
            proptest::prop_assert_eq!(body, chunks.concat());
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            let (body, trailers) = decode_all(Decode::Chunked(Chunk::Size), &[a, b]).unwrap();
            assert_eq!(body, b"abcde", "split at {split}");
            assert_eq!(trailers.unwrap()["x-t"], "1");
        }
        assert!(decode_all(Decode::Chunked(Chunk::Size), &[b"zz\r\nabc\r\n"]).is_err());
        assert!(decode_all(Decode::Chunked(Chunk::Size), &[b"3\r\nabcX\r\n"]).is_err());
        assert_eq!(decode_all(Decode::Length(3), &[b"a", b"bcGET"]).unwrap().0, b"abc");
    }
}
