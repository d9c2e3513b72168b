//! Response heads and bodies of weir's HTTP/1.1 client: the head parsed in place
//! (RFC 9112 framing decided in the same pass) and the body decoded by length, by
//! chunks or to the close, owning its connection until the last byte.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::{Frame, SizeHint};

use super::super::body::BoxError;
use super::{Conn, Error, Stream, BODY_READ, MAX_HEADERS};
use crate::http::h1::chunked::{Chunked, Decoded};
use crate::http::h1::framing::{ends_chunked, parse_length_list, ConnectionOptions};

/// A parsed response head: its parts, and for a final response its body's framing
/// and whether the connection may be reused after it (`None` for a 1xx).
type Head = (http::response::Parts, Option<(State, bool)>);

/// Parses a response head at the start of `buf`, consuming it. `Ok(None)`: more bytes
/// are needed.
pub(super) fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    // Offsets rather than slices, so the head can be split off the buffer and shared
    // by the header values without a copy. Left uninitialised: only the first `count`
    // are written and read, and zeroing them all would cost more than the parse.
    let mut fields = [const { std::mem::MaybeUninit::<Field>::uninit() }; MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut response, buf, &mut storage)
            .map_err(|e| {
                Error::Bad(match e {
                    httparse::Error::TooManyHeaders => "too many response headers",
                    _ => "malformed response head",
                })
            })?;
        let httparse::Status::Complete(len) = status else { return Ok(None) };
        let base = buf.as_ptr() as usize;
        for (slot, h) in fields.iter_mut().zip(response.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            slot.write(Field { name: name..name + h.name.len(), value: value..value + h.value.len() });
        }
        (len, response.code.unwrap_or(0), response.version.unwrap_or(1), response.headers.len())
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut framing = ResponseFraming::default();
    // RFC 9110 §8.6: these carry no body, and no `Content-Length` goes on with them.
    let bodiless = matches!(code, 100..=199 | 204 | 304);
    for field in &fields[..count] {
        // SAFETY: the loop above wrote the first `count` fields (one per header).
        let field = unsafe { field.assume_init_ref() };
        let name = HeaderName::from_bytes(&head[field.name.clone()])
            .map_err(|_| Error::Bad("invalid response header name"))?;
        let mut value = HeaderValue::from_maybe_shared(head.slice(field.value.clone()))
            .map_err(|_| Error::Bad("invalid response header value"))?;
        if name == header::CONTENT_LENGTH {
            if bodiless {
                continue;
            }
            // Equal repeats (`5, 5`, or two fields) go on as one field of one number.
            let repeat = framing.length.is_some();
            framing.note(&name, &value)?;
            if repeat {
                continue;
            }
            if let Some(n) = framing.length.filter(|_| value.as_bytes().contains(&b',')) {
                value = HeaderValue::from(n);
            }
        } else {
            framing.note(&name, &value)?;
        }
        headers.append(name, value);
    }
    let status = StatusCode::from_u16(code).map_err(|_| Error::Bad("invalid status code"))?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    *response.headers_mut() = headers;
    let (parts, ()) = response.into_parts();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some((parts, None)));
    }
    let framing = framing.decide(&parts, head_request)?;
    Ok(Some((parts, Some(framing))))
}

/// Where one response header sits in the head.
struct Field {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// What a response's headers say about its framing, gathered in the one pass that
/// builds its header map rather than by a lookup per header.
#[derive(Default)]
struct ResponseFraming {
    /// The `Content-Length`; repeated values must agree.
    length: Option<u64>,
    /// `Transfer-Encoding` is present; `chunked`: its last coding is chunked.
    coded: bool,
    chunked: bool,
    connection: ConnectionOptions,
}

impl ResponseFraming {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), Error> {
        if *name == header::CONTENT_LENGTH {
            let n = parse_length_list(value.as_bytes()).ok_or(Error::Bad("invalid Content-Length"))?;
            if self.length.is_some_and(|l| l != n) {
                return Err(Error::Bad("conflicting Content-Length values"));
            }
            self.length = Some(n);
        } else if *name == header::TRANSFER_ENCODING {
            self.coded = true;
            self.chunked = ends_chunked(value.as_bytes());
        } else if *name == header::CONNECTION {
            self.connection.note(value.as_bytes());
        }
        Ok(())
    }

    /// The response body's framing (RFC 9112 §6.3) and whether the connection
    /// outlives it.
    fn decide(self, parts: &http::response::Parts, head_request: bool) -> Result<(State, bool), Error> {
        let mut reusable = self.connection.persist(parts.version);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((State::Upgraded, false));
        }
        if self.coded && parts.version == Version::HTTP_10 {
            // RFC 9112 §6.1: faulty framing. Refused, as hyper does.
            return Err(Error::Bad("Transfer-Encoding in an HTTP/1.0 response"));
        }
        if self.coded && self.length.is_some() {
            // RFC 9112 §6.3: possibly response splitting; the connection is not reused.
            return Err(Error::Bad("both Content-Length and Transfer-Encoding"));
        }
        if head_request || parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED
        {
            return Ok((State::Done, reusable));
        }
        let state = match (self.coded, self.length) {
            (true, _) if self.chunked => State::Chunked(Chunked::new()),
            (false, Some(0)) => State::Done,
            (false, Some(n)) => State::Length(n),
            // A coding other than chunked last, or no length at all: to the close.
            _ => {
                reusable = false;
                State::Eof
            }
        };
        Ok((state, reusable))
    }
}

/// Where a response body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum State {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes the connection.
    Eof,
    Done,
    /// A 101: the connection now belongs to the tunnel.
    Upgraded,
}

/// A response body read from its connection, which it owns until the end.
pub struct Body {
    conn: Option<Conn>,
    state: State,
    /// Whether the connection can carry another request once the body is done.
    reusable: bool,
    /// A failure read but not yet reported (see `poll_frame`).
    failed: Option<Error>,
}

impl Body {
    /// The body of a response whose head `conn` has read; `reusable`: whether the
    /// connection may carry another request after it.
    pub(super) fn new(conn: Conn, state: State, reusable: bool) -> Body {
        Body { conn: Some(conn), state, reusable, failed: None }
    }

    /// The connection, if the body was read to its end and the connection can be
    /// pooled again.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        let clean = self.state == State::Done && self.reusable;
        self.conn.take_if(|c| clean && c.read.is_empty() && c.upload.is_none())
    }

    /// The connection of a 101 response, and any bytes the server sent after it.
    pub fn take_upgraded(&mut self) -> Option<(Stream, Bytes)> {
        if self.state != State::Upgraded {
            return None;
        }
        self.conn.take().map(|c| (c.io, c.read.freeze()))
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

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            this.state = State::Done;
            return Poll::Ready(Some(Err(error.into())));
        }
        match this.poll_decode(cx) {
            Poll::Ready(Some(Err(error))) => {
                // Whatever is left of the connection is unframed. The failure is
                // reported on the next poll, not this one: hyper writes out what it
                // holds (the head, the body so far) when a body is pending, and a
                // client should see the response cut, not vanish unseen.
                this.reusable = false;
                this.conn = None;
                this.failed = Some(error);
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
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    fn head(text: &str, head_request: bool) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(text), head_request)
    }

    fn framing_of(text: &str) -> (State, bool) {
        match head(text, false) {
            Ok(Some((_, Some(framing)))) => framing,
            other => panic!("{text:?}: {:?}", other.map(|h| h.map(|(p, f)| (p.status, f)))),
        }
    }

    fn bad(text: &str) -> &'static str {
        match head(text, false) {
            Err(Error::Bad(reason)) => reason,
            other => panic!("{text:?} was accepted: {:?}", other.map(|h| h.map(|(p, f)| (p.status, f)))),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), (State::Length(5), true));
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n"), (State::Length(5), true));
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), (State::Done, true));
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (State::Chunked(Chunked::new()), true)
        );
        // Not chunked last, or no length at all: the body runs to the close.
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), (State::Eof, false));
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), (State::Eof, false));
        assert_eq!(framing_of("HTTP/1.1 204 No Content\r\n\r\n"), (State::Done, true));
        assert_eq!(framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"), (State::Done, true));
        assert!(!framing_of("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n").1);
        assert!(!framing_of("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n").1);
        assert!(framing_of("HTTP/1.0 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\n").1);
        assert_eq!(
            framing_of("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n").0,
            State::Upgraded
        );
        let Ok(Some((_, Some(framing)))) = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true) else {
            panic!("HEAD response not parsed")
        };
        assert_eq!(framing, (State::Done, true), "a response to HEAD has no body");
    }

    #[test]
    fn bodiless_responses_lose_their_length_and_repeats_go_on_once() {
        let parts = |text: &str| head(text, false).unwrap().unwrap().0;
        let no_content = parts("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
        assert!(!no_content.headers.contains_key(header::CONTENT_LENGTH));
        let not_modified = parts("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\netag: \"a\"\r\n\r\n");
        assert!(!not_modified.headers.contains_key(header::CONTENT_LENGTH));
        let twice = parts("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(twice.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["2"]);
        let listed = parts("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n");
        assert_eq!(listed.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(
            bad("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            "Transfer-Encoding in an HTTP/1.0 response"
        );
    }

    #[test]
    fn responses_framed_two_ways_are_refused() {
        bad("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 0\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\nbad name: a\r\n\r\n");
        bad("SSH-2.0-OpenSSH_9.6\r\n\r\n");
    }

    #[test]
    fn interim_responses_are_consumed_and_partial_heads_wait() {
        let mut buf =
            BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let (parts, framing) = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!((parts.status, framing.is_none()), (StatusCode::CONTINUE, true));
        let (parts, framing) = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!((parts.status, framing), (StatusCode::OK, Some((State::Length(2), true))));
        assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", false).unwrap().is_none());
    }

    #[test]
    fn header_values_share_the_read_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nX-A: one\r\nx-a: two\r\nServer: t\r\n\r\n");
        let (parts, _) = parse_head(&mut buf, false).unwrap().unwrap();
        let values: Vec<_> = parts.headers.get_all("x-a").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(values, ["one", "two"]);
        assert_eq!(parts.headers["server"], "t");
    }
    /// A connection whose server writes `parts` one by one, with pauses, then closes.
    async fn conn_fed(parts: Vec<&'static [u8]>) -> Conn {
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

    async fn read(parts: Vec<&'static [u8]>) -> Result<(Vec<u8>, Option<HeaderMap>, bool), String> {
        let mut conn = conn_fed(parts).await;
        let (_, (state, keep)) =
            std::future::poll_fn(|cx| conn.poll_head(cx, false)).await.map_err(|e| e.to_string())?;
        let mut body = Body { conn: Some(conn), state, reusable: keep, failed: None };
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
