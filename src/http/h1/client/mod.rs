//! The client role's connection: weir's own HTTP/1.1 client, one upstream connection, driven by the request's
//! own task.
//!
//! Why not hyper's client: it runs every connection as a task of its own and hands it
//! each request through a channel, so one exchange costs two task switches, a channel
//! round trip and a second copy of the head (callgrind put it at a third of weir's
//! instructions per request). Here the request's task encodes the head straight from
//! the client's `HeaderMap` (or the caller writes the client's fields itself, as the
//! lines weir's server kept: `ExtraHeaders`) into a buffer the connection keeps, writes it, and parses
//! the response head in place, its header values sharing the read buffer; or, for
//! weir's own HTTP/1.1 server, its fields written as lines into that same buffer
//! (the request head is sent by then), which the server copies out as they are. The
//! response body (`Body`) owns the connection until its last byte, then `body.rs`
//! hands it back to the pool.
//!
//! Framing follows RFC 9112 §6: a response to HEAD, a 1xx, 204 or 304 has no body; a
//! chunked response is decoded strictly (`http::h1::chunked`, trailers kept); otherwise
//! `Content-Length`; a response with neither is read to the connection's close. A
//! length together with a transfer coding, a transfer coding in HTTP/1.0, conflicting
//! lengths, obs-fold and oversized heads are refused as bad responses, so the client
//! never gets a body framed differently from how weir read it. A request's framing is
//! weir's own, from its body, never from its headers (`encode_head`).
//!
//! This file is the connection and the request side; `body` decodes response bodies
//! (`http::h1::response` parses their heads). The caller picks the request body type
//! (`RequestBody`) and adds its own header fields as the head is encoded
//! (`ExtraHeaders`: weir's `X-Forwarded-*`).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::http::h1::encode::hex_len;
use crate::http::h1::response::{parse_head_into, Lines, State};
use crate::http::BoxError;

mod body;

pub use body::Body;

/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
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

/// What a request body must be to go up: its frames, its size when known, and an
/// empty default left in the request once the body is taken for the upload.
pub trait RequestBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Default + Unpin {}

impl<B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Default + Unpin> RequestBody for B {}

/// Header fields the caller adds to a request head as it is encoded (weir's
/// `X-Forwarded-*`), in place of the request's own fields of those names; and the
/// request's own fields when the caller keeps them apart from the map (as lines),
/// written with these, after the map's.
pub trait ExtraHeaders {
    /// Whether the request's own field `name` is left out: these write it.
    fn replaces(&self, name: &HeaderName) -> bool;
    /// Writes the fields as `name: value\r\n` lines into `out`; `headers` are the
    /// request's own, and `replaced`: they hold a field these replace (`replaces`
    /// said so of one), so a lookup in them can be spared when they do not.
    fn encode(&self, headers: &http::HeaderMap, replaced: bool, out: &mut Vec<u8>);
}

/// No extra fields, for requests weir makes itself (health checks).
pub struct NoExtra;

impl ExtraHeaders for NoExtra {
    fn replaces(&self, _: &HeaderName) -> bool {
        false
    }

    fn encode(&self, _: &http::HeaderMap, _: bool, _: &mut Vec<u8>) {}
}

/// One idle or busy HTTP/1.1 connection to a server.
pub struct Conn<B> {
    io: Stream,
    /// Bytes read and not yet consumed. Response header values are slices of it.
    read: BytesMut,
    /// The request head being written; kept so each request reuses its memory. Once
    /// the head is sent, the response's field lines (`response::parse_head_into`),
    /// read by the response's writer through `Body::encoded`.
    write: Vec<u8>,
    /// A request body still being sent.
    upload: Option<Box<Upload<B>>>,
    /// Pool sweeps this connection has sat through unused (`upstream::keep_pools`).
    idle_sweeps: u32,
}

impl<B: RequestBody> Conn<B> {
    /// A connection lives boxed, once, for its whole life: the pool, the exchange and
    /// the response body that holds it move a pointer per request, not the
    /// connection's hundred-odd bytes.
    pub fn new(io: Stream) -> Box<Conn<B>> {
        Box::new(Conn { io, read: BytesMut::new(), write: Vec::new(), upload: None, idle_sweeps: 0 })
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
        let mut probe = [0u8; 1];
        let io = match &mut self.io {
            // Asked directly: `try_read` reads the readiness the reactor has (a system
            // call only when it says readable), with no waker to register, where a poll
            // takes the socket's waiter lock (some 150 instructions per request).
            // `WouldBlock`: nothing to read, the connection is idle and open.
            Stream::Tcp(tcp) => {
                return matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            io => io,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
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
    ///
    /// `lines`: a final response's fields are kept as lines (`Body::encoded`) rather
    /// than put in its map, for a caller that writes them with weir's HTTP/1.1 server.
    pub async fn send<E: ExtraHeaders>(
        mut self: Box<Self>,
        req: &mut Request<B>,
        extra: Option<&E>,
        lines: bool,
    ) -> Result<Response<Body<B>>, SendError> {
        self.idle_sweeps = 0;
        let framing = encode_head(req, extra, &mut self.write);
        if let Err(e) = self.io.write_all(&self.write).await {
            // A partial head is no request a server could act on.
            return Err(SendError { error: e.into(), sent: false });
        }
        let head_request = req.method() == Method::HEAD;
        let body = std::mem::take(req.body_mut());
        if !matches!(framing, Framing::None) && !body.is_end_stream() {
            self.upload = Some(Box::new(Upload::new(body, framing)));
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
            self.poll_head(cx, head_request, lines)
        })
        .await
        .map_err(|error| SendError { error, sent: true })?;
        let (parts, (state, keep), lines) = head;
        let body = Body::new(self, state, reusable && keep, lines);
        Ok(Response::from_parts(parts, body))
    }

    /// Moves the request body's upload along: takes the frames that are ready and
    /// writes them gathered, so a body of many small frames costs a write per batch,
    /// not three per frame. `Ready(Ok)` once the whole body is written, or when there
    /// is none.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Conn { io, upload, .. } = self;
        let Some(up) = upload.as_mut() else { return Poll::Ready(Ok(())) };
        loop {
            while !up.finished && up.queued() < UPLOAD_GATHER {
                match Pin::new(&mut up.body).poll_frame(cx) {
                    // What is gathered goes out while the body waits.
                    Poll::Pending => break,
                    Poll::Ready(None) => up.end(None)?,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::RequestBody(e.into()))),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => up.push(data)?,
                        Err(frame) => up.end(frame.into_trailers().ok())?,
                    },
                }
            }
            if up.queued() == 0 {
                if !up.finished {
                    // The body is pending, and has the task's waker.
                    return Poll::Pending;
                }
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                *upload = None;
                return Poll::Ready(Ok(()));
            }
            let mut slices = [io::IoSlice::new(&[]); 16];
            let mut count = 0;
            for piece in up.pending.iter().take(slices.len() - 1) {
                slices[count] = io::IoSlice::new(piece);
                count += 1;
            }
            if count == up.pending.len() && !up.gather.is_empty() {
                slices[count] = io::IoSlice::new(&up.gather);
                count += 1;
            }
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            up.written(n);
        }
    }

    /// Reads until a final (non-1xx, or 101) response head is parsed.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        lines: bool,
    ) -> Poll<Result<FinalHead, Error>> {
        loop {
            // The request head is sent: its buffer takes the response's field lines.
            let parsed =
                parse_head_into(&mut self.read, head_request, Some(&mut self.write).filter(|_| lines));
            if let Some(((parts, framing), lines)) = parsed.map_err(Error::Bad)? {
                match framing {
                    Some(framing) => return Poll::Ready(Ok((parts, framing, lines))),
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
struct Upload<B> {
    body: B,
    chunked: bool,
    /// Of a length-framed body: the bytes the head announced and the body still owes.
    left: u64,
    /// Large data frames, written as they are (ahead of `gather`).
    pending: VecDeque<Bytes>,
    pending_len: usize,
    /// Encoded bytes for the next write: chunk lines, small data, CRLFs.
    gather: BytesMut,
    /// The body's last frame was taken; `pending` and `gather` hold the rest.
    finished: bool,
}

/// Encoded upload bytes gathered before a write; and the largest data frame copied
/// into the gathering buffer rather than queued as it is.
const UPLOAD_GATHER: usize = 64 * 1024;
const UPLOAD_COPY: usize = 8 * 1024;

/// A request body that sent more or fewer bytes than the length weir wrote in the
/// head: the server would read the difference as (or wait for) another request.
#[derive(Debug, thiserror::Error)]
#[error("request body {0} than the Content-Length sent")]
struct LengthMismatch(&'static str);

impl<B> Upload<B> {
    fn new(body: B, framing: Framing) -> Upload<B> {
        let (chunked, left) = match framing {
            Framing::Length(n) => (false, n),
            _ => (true, 0),
        };
        Upload {
            body,
            chunked,
            left,
            pending: VecDeque::new(),
            pending_len: 0,
            gather: BytesMut::new(),
            finished: false,
        }
    }

    fn queued(&self) -> usize {
        self.pending_len + self.gather.len()
    }

    /// Encodes one data frame.
    fn push(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked {
            let mut hex = [0u8; 16];
            self.gather.extend_from_slice(hex_len(data.len(), &mut hex));
            self.gather.extend_from_slice(b"\r\n");
        } else {
            if data.len() as u64 > self.left {
                return Err(Error::RequestBody(Box::new(LengthMismatch("longer"))));
            }
            self.left -= data.len() as u64;
        }
        if data.len() <= UPLOAD_COPY {
            self.gather.extend_from_slice(&data);
        } else {
            if !self.gather.is_empty() {
                let gathered = self.gather.split().freeze();
                self.pending_len += gathered.len();
                self.pending.push_back(gathered);
            }
            self.pending_len += data.len();
            self.pending.push_back(data);
        }
        if self.chunked {
            self.gather.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    /// Encodes the body's end, with its trailers if it has any: a chunked body ends
    /// with them; a length-framed one has no place for them and ends at its length.
    fn end(&mut self, trailers: Option<http::HeaderMap>) -> Result<(), Error> {
        self.finished = true;
        if !self.chunked {
            if self.left > 0 {
                return Err(Error::RequestBody(Box::new(LengthMismatch("shorter"))));
            }
            return Ok(());
        }
        self.gather.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.iter().flatten() {
            let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
            self.gather.extend_from_slice(name);
            self.gather.extend_from_slice(b": ");
            self.gather.extend_from_slice(value);
            self.gather.extend_from_slice(b"\r\n");
        }
        self.gather.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// `n` bytes of the queue were written.
    fn written(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.pending.front_mut() else {
                self.gather.advance(n);
                break;
            };
            let m = n.min(front.len());
            front.advance(m);
            self.pending_len -= m;
            n -= m;
            if front.is_empty() {
                self.pending.pop_front();
            }
        }
        if self.gather.is_empty() {
            // Back to the start of its memory, for the next batch.
            self.gather.clear();
        }
    }
}

/// A final response head: its parts, its body's framing, whether the connection
/// outlives the body, and what the field lines hold when the fields are lines (in
/// the connection's `write`) rather than in the parts' map.
type FinalHead = (http::response::Parts, (State, bool), Option<Lines>);

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length`: the body's exact size.
    Length(u64),
    Chunked,
}

/// Header names of hop-by-hop fields that `http` has no constant for.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Writes the request line and headers into `out`, with weir's `X-Forwarded-*`
/// headers in place of the client's. The target is origin-form (`prepare` made it
/// so) and the version 1.1.
///
/// The framing is always weir's, never the header map's: `Content-Length`,
/// `Transfer-Encoding` and `Expect` in the map are dropped, and the head says what the
/// body will send (its exact size, chunks when that is unknown, nothing when there is
/// no body), so a request whose headers were copied from another (a cache refresh, a
/// retry) cannot announce a body it does not carry. Of the other hop-by-hop fields
/// only an upgrade's `Upgrade` with `Connection: upgrade`, and `TE: trailers`, go
/// out: a `Connection` naming other fields could make the next hop drop the framing
/// weir wrote.
pub fn encode_head<B: RequestBody, E: ExtraHeaders>(
    req: &Request<B>,
    extra: Option<&E>,
    out: &mut Vec<u8>,
) -> Framing {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    // RFC 9112 §3.2.1: an empty path goes out as `/`; `http://a?q` leaves only `?q`.
    if target.is_empty() || target.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut upgrade, mut connection_upgrade, mut te_trailers, mut replaced) = (None, false, false, false);
    for (name, value) in req.headers() {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING || *name == header::EXPECT {
            continue;
        }
        if *name == header::CONNECTION {
            connection_upgrade |= crate::http::h1::framing::has_token(value.as_bytes(), b"upgrade");
            continue;
        }
        if *name == header::UPGRADE {
            upgrade = Some(value);
            continue;
        }
        if *name == header::TE {
            te_trailers |= value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers");
            continue;
        }
        if *name == KEEP_ALIVE || *name == PROXY_CONNECTION {
            continue;
        }
        match extra {
            Some(extra) if extra.replaces(name) => replaced = true,
            _ => push_field(out, name, value),
        }
    }
    if let (Some(protocol), true) = (upgrade, connection_upgrade) {
        push_field(out, &header::UPGRADE, protocol);
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if te_trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    if let Some(extra) = extra {
        extra.encode(req.headers(), replaced, out);
    }
    let body = req.body();
    let framing = if body.is_end_stream() {
        // RFC 9110 §8.6: a body-carrying method without a body says so.
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    crate::http::h1::encode::push_field(out, name.as_str().as_bytes(), value.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn a_target_without_a_path_goes_out_with_a_slash() {
        let mut out = Vec::new();
        for (uri, line) in [("http://a?q=1", "GET /?q=1 HTTP/1.1\r\n"), ("http://a", "GET / HTTP/1.1\r\n")] {
            let req = Request::get(uri).body(Full::<Bytes>::default()).unwrap();
            encode_head(&req, None::<&NoExtra>, &mut out);
            assert!(out.starts_with(line.as_bytes()), "{uri}: {:?}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn an_upload_that_disagrees_with_its_length_fails_as_a_request_body_error() {
        let mut long = Upload::new(Full::<Bytes>::default(), Framing::Length(3));
        assert!(matches!(long.push(Bytes::from_static(b"abcd")), Err(Error::RequestBody(_))));
        let mut short = Upload::new(Full::<Bytes>::default(), Framing::Length(3));
        short.push(Bytes::from_static(b"ab")).unwrap();
        assert!(matches!(short.end(None), Err(Error::RequestBody(_))));
        let mut exact = Upload::new(Full::<Bytes>::default(), Framing::Length(3));
        exact.push(Bytes::from_static(b"abc")).unwrap();
        exact.end(None).unwrap();
        assert_eq!(&exact.gather[..], b"abc");
        let mut chunked = Upload::new(Full::<Bytes>::default(), Framing::Chunked);
        chunked.push(Bytes::from_static(b"abc")).unwrap();
        chunked.push(Bytes::from(vec![b'x'; UPLOAD_COPY + 1])).unwrap();
        chunked.end(None).unwrap();
        assert_eq!(chunked.pending.len(), 2, "a large frame is queued as it is");
        assert_eq!(&chunked.pending[0][..], b"3\r\nabc\r\n2001\r\n");
        assert_eq!(&chunked.gather[..], b"\r\n0\r\n\r\n");
        chunked.written(chunked.queued());
        assert_eq!(chunked.queued(), 0);
    }
}
