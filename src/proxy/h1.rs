//! weir's own HTTP/1.1 client side: one upstream connection, driven by the request's
//! own task.
//!
//! Why not hyper's client: it runs every connection as a task of its own and hands it
//! each request through a channel, so one exchange costs two task switches, a channel
//! round trip and a second copy of the head (callgrind put it at a third of weir's
//! instructions per request). Here the request's task encodes the head straight from
//! the client's `HeaderMap` into a buffer the connection keeps, writes it, and parses
//! the response head in place, its header values sharing the read buffer. The
//! response body (`Body`) owns the connection until its last byte, then `body.rs`
//! hands it back to the pool.
//!
//! Framing follows RFC 9112 §6: a response to HEAD, a 1xx, 204 or 304 has no body; a
//! chunked response is decoded (trailers kept); otherwise `Content-Length`; a response
//! with neither is read to the connection's close. A length together with a transfer
//! coding, conflicting lengths, obs-fold and oversized heads are refused as bad
//! responses, so the client never gets a body framed differently from how weir read it.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::body::BoxError;
use super::forward::Forwarded;

/// Most headers a response may carry, as hyper allows.
const MAX_HEADERS: usize = 100;
/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// How much room a read of body bytes asks for: large reads keep 1 MiB bodies cheap.
const BODY_READ: usize = 64 * 1024;
const HEAD_READ: usize = 8 * 1024;

/// An upstream socket: plain TCP, or TLS over it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection closed before the response headers")]
    Closed,
    #[error("connection closed mid-body")]
    ClosedMidBody,
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The client's request body failed (timed out, crossed its limit, cut short).
    #[error("request body: {0}")]
    RequestBody(BoxError),
    /// A response weir will not forward, with the reason.
    #[error("{0}")]
    Bad(&'static str),
}

/// A failed exchange, and whether any of the request may have reached the server: a
/// request that was not sent can go to another server whatever its method.
#[derive(Debug)]
pub struct SendError {
    pub error: Error,
    pub sent: bool,
}

/// One idle or busy HTTP/1.1 connection to a server.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed. Response header values are slices of it.
    read: BytesMut,
    /// The request head being written; kept so each request reuses its memory.
    write: Vec<u8>,
    /// A request body still being sent.
    upload: Option<Box<Upload>>,
    /// Pool sweeps this connection has sat through unused (`upstream::keep_pools`).
    idle_sweeps: u32,
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn { io, read: BytesMut::new(), write: Vec::new(), upload: None, idle_sweeps: 0 }
    }

    /// Counts one more pool sweep passed unused, and returns the count.
    pub fn idle_sweep(&mut self) -> u32 {
        self.idle_sweeps = self.idle_sweeps.saturating_add(1);
        self.idle_sweeps
    }

    /// Whether an idle connection can carry another request: the server has not
    /// closed it, and sent nothing unasked. Looks only at what the reactor already
    /// knows, so a live connection costs no system call.
    pub fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let io = &mut self.io;
        // Unconstrained: with the task's cooperative budget spent, tokio would answer
        // Pending without looking, and a closed connection would pass for open.
        let read = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut ReadBuf::new(&mut probe)))
        }));
        // Pending: nothing to read, the connection is idle and open. TLS may consume a
        // session ticket here and still report Pending, which is right too.
        matches!(std::future::Future::poll(std::pin::pin!(read), &mut cx), Poll::Ready(Poll::Pending))
    }

    /// Sends `req` and reads the response head. The request's body is taken out of
    /// `req` only once the head is written, so when `sent` is false in the error `req`
    /// is whole, and a bodyless request stays whole either way (it can be replayed).
    ///
    /// A request body is uploaded while the response is awaited and, if the server
    /// answers before the upload ends (an echo, an early 413), while the response
    /// body streams: whatever polls the connection also moves the upload along.
    pub async fn send(
        mut self,
        req: &mut Request<super::body::Body>,
        forwarded: Option<&Forwarded>,
    ) -> Result<Response<Body>, SendError> {
        self.idle_sweeps = 0;
        let framing = encode_head(req, forwarded, &mut self.write);
        if let Err(e) = self.io.write_all(&self.write).await {
            // A partial head is no request a server could act on.
            return Err(SendError { error: e.into(), sent: false });
        }
        let head_request = req.method() == Method::HEAD;
        let body = std::mem::take(req.body_mut());
        if !matches!(framing, Framing::None) && !body.is_end_stream() {
            let chunked = matches!(framing, Framing::Chunked);
            let upload =
                Upload { body, chunked, pending: VecDeque::new(), finished: false, lines: BytesMut::new() };
            self.upload = Some(Box::new(upload));
        } else if let Err(e) = self.io.flush().await {
            return Err(SendError { error: e.into(), sent: true });
        }
        let mut reusable = true;
        let head = std::future::poll_fn(|cx| {
            if let Poll::Ready(Err(error)) = self.poll_upload(cx) {
                if let Error::RequestBody(_) = error {
                    return Poll::Ready(Err(error));
                }
                // The server may have answered early (a 413, say) and stopped
                // reading: its answer is still worth reading.
                self.upload = None;
                reusable = false;
            }
            self.poll_head(cx, head_request)
        })
        .await
        .map_err(|error| SendError { error, sent: true })?;
        let (parts, (state, keep)) = head;
        let body = Body { conn: Some(self), state, reusable: reusable && keep, failed: None };
        Ok(Response::from_parts(parts, body))
    }

    /// Moves the request body's upload along: writes what is pending, then takes the
    /// next frame. `Ready(Ok)` once the whole body is written, or when there is none.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Conn { io, upload, .. } = self;
        let Some(up) = upload.as_mut() else { return Poll::Ready(Ok(())) };
        loop {
            while let Some(front) = up.pending.front_mut() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, front))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                front.advance(n);
                if front.is_empty() {
                    up.pending.pop_front();
                }
            }
            if up.finished {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                *upload = None;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut up.body).poll_frame(cx)) {
                None => {
                    up.finished = true;
                    if up.chunked {
                        up.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::RequestBody(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if up.chunked => {
                        // The size line, from a buffer reused once each line is written.
                        up.lines.reserve(18);
                        let _ = write!(up.lines, "{:x}\r\n", data.len());
                        up.pending.push_back(up.lines.split().freeze());
                        up.pending.push_back(data);
                        up.pending.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => up.pending.push_back(data),
                    // Trailers are a body's last frame. A chunked body ends with them; a
                    // length-framed one has no place for them and ends at its length.
                    Err(frame) => {
                        up.finished = true;
                        if let (true, Ok(trailers)) = (up.chunked, frame.into_trailers()) {
                            let mut end = b"0\r\n".to_vec();
                            for (name, value) in &trailers {
                                push_field(&mut end, name, value);
                            }
                            end.extend_from_slice(b"\r\n");
                            up.pending.push_back(end.into());
                        }
                    }
                },
            }
        }
    }

    /// Reads until a final (non-1xx, or 101) response head is parsed.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_request: bool) -> Poll<Result<FinalHead, Error>> {
        loop {
            if let Some((parts, framing)) = parse_head(&mut self.read, head_request)? {
                match framing {
                    Some(framing) => return Poll::Ready(Ok((parts, framing))),
                    // An interim response (100 Continue, 103 Early Hints): the final
                    // one follows.
                    None => continue,
                }
            }
            if self.read.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Bad("response headers too large")));
            }
            // Reserving only when short of room: the buffer left from the last
            // response usually has plenty, and `reserve` on a shared buffer costs.
            if self.read.capacity() - self.read.len() < HEAD_READ / 4 {
                self.read.reserve(HEAD_READ);
            }
            if ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }
}

/// A request body on its way up.
struct Upload {
    body: super::body::Body,
    chunked: bool,
    /// Encoded pieces not yet written.
    pending: VecDeque<Bytes>,
    /// The body's last frame was taken; `pending` holds the rest.
    finished: bool,
    /// Where chunk-size lines are written.
    lines: BytesMut,
}

/// A final response head: its parts, its body's framing and whether the connection
/// outlives the body.
type FinalHead = (http::response::Parts, (State, bool));

/// How a request body is framed on the wire.
#[derive(Clone, Copy)]
enum Framing {
    /// No body.
    None,
    /// `Content-Length`, as the client sent it or weir added it.
    Length,
    Chunked,
}

/// Writes the request line and headers into `out`, with weir's `X-Forwarded-*`
/// headers in place of the client's, and the framing header weir chose when the
/// request has none of its own. The target is origin-form (`prepare` made it so) and
/// the version 1.1.
fn encode_head(
    req: &Request<super::body::Body>,
    forwarded: Option<&Forwarded>,
    out: &mut Vec<u8>,
) -> Framing {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if forwarded.is_none() || !Forwarded::replaces(name) {
            push_field(out, name, value);
        }
    }
    if let Some(forwarded) = forwarded {
        forwarded.encode(req.headers(), out);
    }
    let body = req.body();
    let has_length = req.headers().contains_key(header::CONTENT_LENGTH);
    let framing = if has_length {
        Framing::Length
    } else if body.is_end_stream() {
        // RFC 9110 §8.6: a body-carrying method without a body says so.
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
    out.reserve(name.len() + value.len() + 4);
    // The separators byte by byte: a `memcpy` call per two bytes costs more.
    out.extend_from_slice(name);
    out.push(b':');
    out.push(b' ');
    out.extend_from_slice(value);
    out.push(b'\r');
    out.push(b'\n');
}

/// A parsed response head: its parts, and for a final response its body's framing
/// and whether the connection may be reused after it (`None` for a 1xx).
type Head = (http::response::Parts, Option<(State, bool)>);

/// Parses a response head at the start of `buf`, consuming it. `Ok(None)`: more bytes
/// are needed.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
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
    for field in &fields[..count] {
        // SAFETY: the loop above wrote the first `count` fields (one per header).
        let field = unsafe { field.assume_init_ref() };
        let name = HeaderName::from_bytes(&head[field.name.clone()])
            .map_err(|_| Error::Bad("invalid response header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(field.value.clone()))
            .map_err(|_| Error::Bad("invalid response header value"))?;
        framing.note(&name, &value)?;
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
    close: bool,
    keep_alive: bool,
}

impl ResponseFraming {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), Error> {
        if *name == header::CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                    return Err(Error::Bad("invalid Content-Length"));
                }
                let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
                if self.length.is_some_and(|l| l != n) {
                    return Err(Error::Bad("conflicting Content-Length values"));
                }
                self.length = Some(n);
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.coded = true;
            // The last coding of the last header decides.
            let last = value.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if *name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// The response body's framing (RFC 9112 §6.3) and whether the connection
    /// outlives it.
    fn decide(self, parts: &http::response::Parts, head_request: bool) -> Result<(State, bool), Error> {
        let mut reusable = match parts.version {
            Version::HTTP_11 => !self.close,
            _ => self.keep_alive && !self.close,
        };
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((State::Upgraded, false));
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
            (true, _) if self.chunked => State::Chunked(Chunk::Size),
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
enum State {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Eof,
    Done,
    /// A 101: the connection now belongs to the tunnel.
    Upgraded,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
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
                State::Chunked(Chunk::Size) => match httparse::parse_chunk_size(self.buffered()) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buffered().advance(used);
                        self.state =
                            State::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.buffered().len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(Error::Bad("chunk size line too long"))));
                        }
                        ready!(self.fill_or_fail_poll(cx))?;
                    }
                    Err(_) => return Poll::Ready(Some(Err(Error::Bad("invalid chunk size")))),
                },
                State::Chunked(Chunk::Data(left)) => {
                    let data = ready!(self.poll_data(cx, left))?;
                    let left = left - data.len() as u64;
                    self.state = State::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(Chunk::DataEnd) => {
                    if self.buffered().len() < 2 {
                        ready!(self.fill_or_fail_poll(cx))?;
                        continue;
                    }
                    if &self.buffered()[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Error::Bad("chunk data not followed by CRLF"))));
                    }
                    self.buffered().advance(2);
                    self.state = State::Chunked(Chunk::Size);
                }
                State::Chunked(Chunk::Trailers) => {
                    let buf = self.buffered();
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                if let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) {
                                    trailers.append(name, value);
                                }
                            }
                            buf.advance(used);
                            self.state = State::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => {
                            ready!(self.fill_or_fail_poll(cx))?;
                        }
                        _ => return Poll::Ready(Some(Err(Error::Bad("invalid chunked trailers")))),
                    }
                }
            }
        }
    }

    /// Reads more bytes mid-body; the connection ending here cuts the body short.
    fn fill_or_fail_poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match ready!(self.poll_fill(cx, HEAD_READ)) {
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
    use tokio::net::TcpListener;

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
            (State::Chunked(Chunk::Size), true)
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

    fn request(method: Method, headers: &[(&str, &str)], body: super::super::body::Body) -> Vec<u8> {
        request_with(method, headers, body, None)
    }

    fn request_with(
        method: Method,
        headers: &[(&str, &str)],
        body: super::super::body::Body,
        forwarded: Option<&Forwarded>,
    ) -> Vec<u8> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        for (name, value) in headers {
            req.headers_mut()
                .append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let mut out = Vec::new();
        encode_head(&req, forwarded, &mut out);
        out
    }

    #[test]
    fn request_heads_carry_the_framing_weir_sends() {
        use super::super::body::Body as B;
        let get = request(Method::GET, &[("host", "a")], B::Empty);
        assert_eq!(get, b"GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        let post = request(Method::POST, &[], B::Empty);
        assert_eq!(post, b"POST /p?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let full = request(Method::PUT, &[], B::from(Bytes::from_static(b"abc")));
        assert_eq!(full, b"PUT /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        let kept = request(Method::PUT, &[("content-length", "3")], B::from(Bytes::from_static(b"abc")));
        assert_eq!(kept, b"PUT /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
    }

    #[test]
    fn forwarded_headers_replace_the_clients_and_extend_its_chain() {
        let forwarded = Forwarded {
            host: Some(HeaderValue::from_static("a.test")),
            proto: "https",
            ip: HeaderValue::from_static("10.0.0.9"),
        };
        let head = request_with(
            Method::GET,
            &[
                ("host", "a.test"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-proto", "spoofed"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-host", "evil.test"),
                ("accept", "*/*"),
            ],
            super::super::body::Body::Empty,
            Some(&forwarded),
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-host: a.test\r\n\
             x-forwarded-proto: https\r\n\r\n"
        );
        let bare = Forwarded { host: None, proto: "http", ip: HeaderValue::from_static("10.0.0.9") };
        let head = request_with(Method::GET, &[], super::super::body::Body::Empty, Some(&bare));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"
        );
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
