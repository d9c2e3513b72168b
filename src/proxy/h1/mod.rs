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
//!
//! This file is the connection and the request side; `response` parses response heads
//! and decodes response bodies.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::body::BoxError;
use super::forward::Forwarded;

mod response;

pub use response::Body;
use response::{parse_head, State};

/// Most headers a response may carry, as hyper allows.
const MAX_HEADERS: usize = 100;
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
        let body = Body::new(self, state, reusable && keep);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
