//! weir's own HTTP/1.1 server: plain-TCP client connections that do not open with
//! the h2 preface are served here, one request at a time, by the connection's task.
//!
//! Why not hyper's server: callgrind put hyper's HTTP/1 server and hyper-util's
//! `auto` connection at almost half of weir's instructions per proxied request:
//! parsing into a fresh `HeaderMap` with a copy per value, buffered IO, a dispatcher,
//! a header-read timer armed per request, and a request future moved into place per
//! request. Here, as in weir's HTTP/1.1 client (`proxy::h1`), the head is parsed with
//! httparse straight from the connection's read buffer, its header values share that
//! buffer, `proxy::handle` runs inline in the connection's future, and the response
//! head is written into a buffer the connection keeps, with a small body in the same
//! `write`. TLS connections and h2 stay on hyper (`listener::Connection::serve`).
//!
//! What it owns, per connection (RFC 9112):
//! - request heads: `400` for a malformed head or ambiguous framing (both
//!   `Content-Length` and `Transfer-Encoding`, conflicting lengths, a coding that
//!   does not end in `chunked`, `Transfer-Encoding` in HTTP/1.0), `431` for a head
//!   over `max_header_size` or over 100 headers; either closes the connection.
//!   `proxy::framing` then refuses what is well-formed but unsafe to forward.
//! - request bodies by length or chunks (strictly, by `http::h1::chunked`:
//!   extensions skipped and bounded, trailers passed on),
//!   read by whoever polls the request's `Body` (`body`): the connection lends its read side
//!   to the body and takes it back once the response is written. A body left unread
//!   then is drained from what is already buffered, else the connection closes, so
//!   no body byte is ever read as a request.
//! - `Expect: 100-continue`: the interim answer goes out when the body is first
//!   read, as with hyper; a request answered without its body never gets it.
//! - responses: `Content-Length` when the size is known, chunked for HTTP/1.1 when
//!   not, close-delimited for HTTP/1.0; HEAD, 1xx, 204 and 304 carry no body; a
//!   `Date` (formatted at most once a second).
//! - keep-alive: HTTP/1.1 by default, HTTP/1.0 with `keep-alive`; `Connection:
//!   close` from either side ends it (a refused request's answer carries one).
//! - upgrades: a `101` to an upgrade request joins the client socket with the
//!   upstream connection detached from the response body.
//! - timeouts: `header_read_timeout` for each head (from the end of the previous
//!   response, so it is also the keep-alive idle limit), `idle_timeout` between
//!   requests, `send_timeout` on writes (`ClientIo`); `body_read_timeout` is the
//!   request body's (`proxy::body::RequestBody`). When `stop` changes an idle
//!   connection closes at once, a busy one after its response.

use std::future::{poll_fn, Future as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::{ClientIo, Connection};
use crate::http::h1::chunked::Chunked;
use crate::http::h1::framing::{ends_chunked, has_token, parse_length, ConnectionOptions, MAX_HEADERS};
use crate::proxy;
use crate::proxy::body::{Body as ResponseBody, BoxError, ClientBody};
use crate::proxy::forward::splice;

mod body;

pub use body::{is_malformed as is_malformed_body, Body};
use body::{lock, Decode, Reader};

/// How much room a read of a head asks for.
const HEAD_READ: usize = 8 * 1024;
/// Response body bytes gathered before a write; larger frames are written as they are.
const WRITE_GATHER: usize = 16 * 1024;
/// How long a closing connection still reads (and drops) what the client sends, so
/// the kernel does not answer unread bytes with a reset that could destroy the
/// response before the client reads it.
const LINGER: Duration = Duration::from_millis(250);

/// The connection's reading side: its socket half and the bytes read and not yet
/// consumed. Request header values are slices of `buf`.
pub(super) struct ReadSide {
    io: OwnedReadHalf,
    buf: BytesMut,
}

/// A request head's facts that the connection needs after `handle` took the request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Head {
    /// The request's body framing; `Done` for none.
    body: Decode,
    version: Version,
    head_method: bool,
    /// The connection may carry another request, as far as the request says.
    keep_alive: bool,
    expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header.
    upgrade: bool,
    /// `TE: trailers`: a chunked response may end with trailers (as hyper, which
    /// sends them only then).
    trailers: bool,
}

/// Where one request header sits in the head, kept per connection between requests.
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses a request head at the start of `buf`, consuming it. `Ok(None)`: more bytes
/// are needed. `Err`: the status to refuse it with (the connection then closes).
fn parse_head(
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
    max_head: usize,
) -> Result<Option<(Request<()>, Head)>, StatusCode> {
    fields.clear();
    let (len, method, target, minor) = {
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, &mut storage)
            .map_err(|e| match e {
                httparse::Error::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            })?;
        let httparse::Status::Complete(len) = status else {
            if buf.len() >= max_head {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            return Ok(None);
        };
        if len > max_head {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        for h in req.headers.iter() {
            fields.push(Field { name: at(h.name.as_bytes()), value: at(h.value) });
        }
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        let target = at(req.path.unwrap_or_default().as_bytes());
        (len, method, target, req.version.unwrap_or(1))
    };
    let head = buf.split_to(len).freeze();
    let slice = |(at, len): (u32, u32)| head.slice(at as usize..(at + len) as usize);
    let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let uri = parse_target(&method, slice(target))?;
    // The map is built in place: a map made apart and moved in would cost the drop of
    // the request's empty one.
    let mut req = Request::new(());
    let headers = req.headers_mut();
    headers.reserve(fields.len());
    let mut framing = RequestFraming::default();
    for field in fields.iter() {
        let (at, len) = field.name;
        let name = HeaderName::from_bytes(&head[at as usize..(at + len) as usize])
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        // SAFETY: httparse accepted this value, and it accepts exactly the bytes a
        // `HeaderValue` may hold (HTAB, 0x20-0x7E, 0x80-0xFF); `http` still checks
        // this in debug builds.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(slice(field.value)) };
        if framing.note(&name, &value)? {
            headers.append(name, value);
        }
    }
    let head = framing.decide(&method, version)?;
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    Ok(Some((req, head)))
}

/// Whether `buf` holds the blank line that ends a head (CRLF CRLF, or with bare LFs,
/// which httparse takes too) ending at or after `from`.
fn has_head_end(buf: &[u8], from: usize) -> bool {
    (from.max(1)..buf.len()).any(|p| {
        buf[p] == b'\n' && (buf[p - 1] == b'\n' || (p >= 2 && buf[p - 1] == b'\r' && buf[p - 2] == b'\n'))
    })
}

/// The request target as a `Uri`: origin-form, absolute-form, `*` for OPTIONS and
/// authority-form for CONNECT (RFC 9112 §3.2); anything else is refused.
fn parse_target(method: &Method, target: Bytes) -> Result<Uri, StatusCode> {
    let (origin, asterisk) = (target.first() == Some(&b'/'), &target[..] == b"*");
    if asterisk && method != Method::OPTIONS {
        return Err(StatusCode::BAD_REQUEST);
    }
    let uri = Uri::from_maybe_shared(target).map_err(|_| StatusCode::BAD_REQUEST)?;
    let absolute = uri.scheme().is_some();
    let authority = method == Method::CONNECT && uri.authority().is_some();
    if origin || asterisk || absolute || authority {
        Ok(uri)
    } else {
        Err(StatusCode::BAD_REQUEST)
    }
}

/// What a request's headers say about its framing, gathered in the pass that builds
/// its header map.
#[derive(Default)]
struct RequestFraming {
    length: Option<u64>,
    /// `Transfer-Encoding` is present; `chunked`: its last coding is chunked.
    coded: bool,
    chunked: bool,
    connection: ConnectionOptions,
    expect_continue: bool,
    trailers: bool,
    has_upgrade: bool,
}

impl RequestFraming {
    /// Notes one header; `Ok(false)`: a repeat of an equal `Content-Length`, which is
    /// kept once so the request goes on with one.
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<bool, StatusCode> {
        if *name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes()).ok_or(StatusCode::BAD_REQUEST)?;
            let repeat = self.length.is_some();
            if self.length.is_some_and(|l| l != n) {
                return Err(StatusCode::BAD_REQUEST);
            }
            self.length = Some(n);
            return Ok(!repeat);
        } else if *name == header::TRANSFER_ENCODING {
            self.coded = true;
            self.chunked = ends_chunked(value.as_bytes());
        } else if *name == header::CONNECTION {
            self.connection.note(value.as_bytes());
        } else if *name == header::UPGRADE {
            self.has_upgrade = true;
        } else if *name == header::TE {
            self.trailers |= has_token(value.as_bytes(), b"trailers");
        } else if *name == header::EXPECT {
            self.expect_continue |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        Ok(true)
    }

    /// The body's framing (RFC 9112 §6) and the connection's fate as the request
    /// sees it.
    fn decide(self, method: &Method, version: Version) -> Result<Head, StatusCode> {
        let body = match (self.coded, self.length) {
            // RFC 9112 §6.1: a coding in HTTP/1.0 is faulty framing; a length next to
            // a coding could be read either way by the next hop.
            (true, _) if version == Version::HTTP_10 => return Err(StatusCode::BAD_REQUEST),
            (true, Some(_)) => return Err(StatusCode::BAD_REQUEST),
            (true, None) if !self.chunked => return Err(StatusCode::BAD_REQUEST),
            (true, None) => Decode::Chunked(Chunked::new()),
            (false, Some(n)) if n > 0 => Decode::Length(n),
            _ => Decode::Done,
        };
        Ok(Head {
            body,
            version,
            head_method: method == Method::HEAD,
            keep_alive: self.connection.persist(version),
            expect_continue: self.expect_continue && version == Version::HTTP_11 && body != Decode::Done,
            upgrade: self.connection.upgrade && self.has_upgrade,
            trailers: self.trailers,
        })
    }
}

/// The `Date` header's value, formatted again only when the second changes.
struct Date {
    second: u64,
    text: [u8; 29],
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            use std::io::Write as _;
            let _ = write!(&mut self.text[..], "{}", httpdate::HttpDate::from(now));
            self.second = second;
        }
        &self.text
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, size unknown).
    Eof,
}

/// One client connection served by this module.
struct Server {
    /// `None` while a request body has it, or once the connection must close.
    read: Option<ReadSide>,
    write: ClientIo<OwnedWriteHalf>,
    /// The response head (and small bodies) being written; reused per request.
    out: Vec<u8>,
    fields: Vec<Field>,
    date: Date,
    /// The head read's deadline (`header_read_timeout`, `idle_timeout`).
    timer: Pin<Box<Sleep>>,
    /// `timer` was polled since it was last reset and has the task's waker.
    timer_waits: bool,
}

/// Serves `stream`, whose first bytes (`first`) are not an h2 preface, until the
/// client leaves, a timeout, an error, or `stop`.
pub(super) async fn serve(conn: Connection, stream: TcpStream, first: BytesMut) {
    let Connection { settings, runtime, mut stop, peer } = conn;
    let (read, write) = stream.into_split();
    let mut server = Server {
        read: Some(ReadSide { io: read, buf: first }),
        write: ClientIo::writer(write, settings.send_timeout),
        out: Vec::with_capacity(1024),
        fields: Vec::with_capacity(32),
        date: Date { second: 0, text: [b' '; 29] },
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        timer_waits: false,
    };
    let max_head = settings.max_header_size;
    // One `changed` future for the connection's life, registered once (see `Stop`).
    let check = stop.clone();
    let changed = stop.changed();
    tokio::pin!(changed);
    let mut stop = Stop { changed, registered: false, stopped: false, check };
    loop {
        let head = server.read_head(&settings, &mut stop, max_head).await;
        let (req, head) = match head {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(status) => return server.refuse(status).await,
        };
        let lent = match head.body {
            Decode::Done => None,
            state => {
                let side = server.read.take();
                let expect = head.expect_continue;
                let reader = Reader { side, state, expect, wanted: false, waker: None };
                Some(Arc::new(Mutex::new(reader)))
            }
        };
        let body = match &lent {
            None => ClientBody::Empty,
            Some(reader) => {
                let length = match head.body {
                    Decode::Length(n) => Some(n),
                    _ => None,
                };
                ClientBody::H1(Body { reader: reader.clone(), length })
            }
        };
        let rt = runtime.load_full();
        let req = req.map(|()| body);
        // Made in each arm, not before: a future made apart and then awaited is
        // moved into place, a copy of its kilobytes per request.
        let response = match lent.as_ref().filter(|_| head.expect_continue) {
            None => proxy::handle(&rt, req, &peer).await,
            Some(reader) => {
                let mut pending: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
                let write = &mut server.write;
                let mut handle = std::pin::pin!(proxy::handle(&rt, req, &peer));
                poll_fn(|cx| {
                    if !pending.is_empty() && send_continue(reader, write, &mut pending, cx) {
                        // The client is gone: the body's read fails, and the request with it.
                        pending = &[];
                    }
                    handle.as_mut().poll(cx)
                })
                .await
            }
        };
        drop(rt);
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if head.upgrade && switched && lent.is_none() {
            return server.upgrade(response, &settings).await;
        }
        let stopping = poll_fn(|cx| Poll::Ready(stop.poll(cx))).await;
        // A 101 that is not tunnelled (its request had a body): the server has left
        // HTTP, so what the client sends next is not a request; the connection ends.
        let mut keep = server.respond(response, &head, stopping).await && !switched;
        if let Some(reader) = lent {
            let mut reader = lock(&reader);
            keep &= reader.drain();
            server.read = reader.side.take();
        }
        if !keep {
            return server.close().await;
        }
    }
}

/// Writes what is left of the `100 Continue` once the request's body is wanted
/// (`pending` shrinks as it goes out); until then leaves the task's waker with the
/// body. `true` when the write failed.
fn send_continue<W: AsyncWrite + Unpin>(
    reader: &Mutex<Reader>,
    write: &mut W,
    pending: &mut &[u8],
    cx: &mut Context<'_>,
) -> bool {
    {
        let mut reader = lock(reader);
        if !reader.wanted {
            reader.waker = Some(cx.waker().clone());
            return false;
        }
    }
    while !pending.is_empty() {
        match Pin::new(&mut *write).poll_write(cx, pending) {
            Poll::Ready(Ok(n)) if n > 0 => *pending = &pending[n..],
            Poll::Ready(_) => return true,
            Poll::Pending => return false,
        }
    }
    false
}

/// The listener's `stop` watch, as seen by one connection.
struct Stop<F> {
    changed: Pin<F>,
    /// `changed` was polled once: it holds the task's waker (which stays the same
    /// for the connection's life) and wakes it when `stop` changes. Polling it again
    /// would take its lock each time, so from then on `check` is read instead.
    registered: bool,
    stopped: bool,
    /// A clone of the receiver, for a look at the version that costs an atomic load.
    check: tokio::sync::watch::Receiver<bool>,
}

impl<F: std::ops::DerefMut<Target: std::future::Future>> Stop<F> {
    /// Whether `stop` has changed; registers for a wake-up when it has not.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.registered {
            self.registered = true;
            self.stopped = self.changed.as_mut().poll(cx).is_ready();
        }
        self.stopped |= !matches!(self.check.has_changed(), Ok(false));
        self.stopped
    }
}

impl Server {
    /// Reads and parses the next request head. `Ok(None)`: the connection ends
    /// quietly (the client left, a timeout, or `stop` while idle).
    async fn read_head<F: std::ops::DerefMut<Target: std::future::Future>>(
        &mut self,
        settings: &super::Settings,
        stop: &mut Stop<F>,
        max_head: usize,
    ) -> Result<Option<(Request<()>, Head)>, StatusCode> {
        let Some(side) = self.read.as_mut() else { return Ok(None) };
        // Set when a read first has to wait: the head's deadline.
        let mut deadline: Option<Instant> = None;
        // How much of the buffer is known to hold no head's end. The first bytes are
        // parsed at once (a head usually comes whole); after a partial head only the
        // new bytes are scanned for its end, and it is parsed again only once the end
        // is there, so a head sent a byte at a time costs one pass, not one per byte.
        let mut scanned = 0;
        loop {
            if !side.buf.is_empty() {
                if scanned == 0 || has_head_end(&side.buf, scanned) {
                    if let Some(parsed) = parse_head(&mut side.buf, &mut self.fields, max_head)? {
                        return Ok(Some(parsed));
                    }
                } else if side.buf.len() >= max_head {
                    return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                }
                scanned = side.buf.len();
            }
            if side.buf.capacity() - side.buf.len() < HEAD_READ / 4 {
                side.buf.reserve(HEAD_READ);
            }
            let (timer, timer_waits) = (&mut self.timer, &mut self.timer_waits);
            let read = poll_fn(|cx| {
                if let Poll::Ready(result) =
                    tokio_util::io::poll_read_buf(Pin::new(&mut side.io), cx, &mut side.buf)
                {
                    return Poll::Ready(matches!(result, Ok(n) if n > 0));
                }
                let deadline = *deadline.get_or_insert_with(|| {
                    // Right after a response (the buffer empty) this is also the
                    // keep-alive idle limit.
                    let now = Instant::now();
                    let mut limit = settings.handshake_timeout;
                    if side.buf.is_empty() {
                        limit = limit.min(settings.idle_timeout);
                    }
                    let deadline = now + limit;
                    // The timer is moved only when it would fire late: one that fires
                    // early is re-armed below. So a busy connection resets it about
                    // once per timeout, not once per request.
                    if timer.is_elapsed() || timer.deadline() > deadline {
                        timer.as_mut().reset(deadline);
                        *timer_waits = false;
                    }
                    deadline
                });
                // A timer already waiting holds this task's waker: it need not be
                // polled again until it fires.
                if !*timer_waits || timer.is_elapsed() {
                    while timer.as_mut().poll(cx).is_ready() {
                        if Instant::now() >= deadline {
                            return Poll::Ready(false);
                        }
                        timer.as_mut().reset(deadline);
                    }
                    *timer_waits = true;
                }
                // An idle connection closes at once on `stop`; a head under way is
                // answered first.
                if side.buf.is_empty() && stop.poll(cx) {
                    return Poll::Ready(false);
                }
                Poll::Pending
            })
            .await;
            if !read {
                return Ok(None);
            }
        }
    }

    /// Writes `response`; `true` when the connection may carry another request.
    async fn respond(&mut self, response: Response<ResponseBody>, head: &Head, stopping: bool) -> bool {
        let (parts, mut body) = response.into_parts();
        let size = body.size_hint().exact();
        let (framing, keep) = encode_head(&mut self.out, &parts, size, head, stopping, &mut self.date);
        if framing == Out::None {
            return self.write.write_all(&self.out).await.is_ok() && keep;
        }
        match self.write_body(&mut body, framing, head.trailers).await {
            Ok(complete) => keep && complete,
            Err(e) => {
                tracing::debug!(error = %e, "client response cut short");
                false
            }
        }
    }

    /// Writes the head in `out` and the body after it; `Ok(false)`: the body was cut
    /// short, so the connection cannot go on.
    async fn write_body(
        &mut self,
        body: &mut ResponseBody,
        framing: Out,
        send_trailers: bool,
    ) -> Result<bool, BoxError> {
        let mut sent = 0u64;
        let mut trailers = None;
        loop {
            let out = &mut self.out;
            let polled = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                // Nothing more yet: what is gathered goes out while the body waits.
                Poll::Pending if !out.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            })
            .await;
            let frame = match polled {
                None => {
                    self.write.write_all(&self.out).await?;
                    self.out.clear();
                    continue;
                }
                Some(None) => break,
                Some(Some(Err(e))) => {
                    let _ = self.write.write_all(&self.out).await;
                    return Err(e);
                }
                Some(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok().filter(|_| send_trailers);
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            let mut data = data;
            if let Out::Length(n) = framing {
                let room = n - sent;
                if data.len() as u64 > room {
                    // More than the length said: the rest would be read as a response.
                    data.truncate(room as usize);
                    sent = n + 1;
                } else {
                    sent += data.len() as u64;
                }
            }
            if framing == Out::Chunked {
                let mut hex = [0u8; 16];
                self.out.extend_from_slice(hex_len(data.len(), &mut hex));
                self.out.extend_from_slice(b"\r\n");
            }
            if data.len() <= WRITE_GATHER {
                self.out.extend_from_slice(&data);
            } else {
                // A large frame goes out as it is, behind what is gathered, in one
                // `writev`.
                write_both(&mut self.write, &self.out, &data).await?;
                self.out.clear();
            }
            if framing == Out::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            if self.out.len() >= WRITE_GATHER {
                self.write.write_all(&self.out).await?;
                self.out.clear();
            }
            // As hyper: a body that knows it is done is not polled for its end.
            if matches!(framing, Out::Length(n) if sent > n) || body.is_end_stream() {
                break;
            }
        }
        let complete = match framing {
            Out::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    push_field(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
                }
                self.out.extend_from_slice(b"\r\n");
                true
            }
            Out::Length(n) => sent == n,
            Out::Eof | Out::None => false,
        };
        self.write.write_all(&self.out).await?;
        Ok(complete)
    }

    /// Answers a head that cannot be served, then closes.
    async fn refuse(mut self, status: StatusCode) {
        tracing::debug!(%status, "refused a malformed request head");
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out.extend_from_slice(status.as_str().as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        self.out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n");
        push_field(&mut self.out, b"date", self.date.now());
        self.out.extend_from_slice(b"\r\n");
        if self.write.write_all(&self.out).await.is_ok() {
            self.close().await;
        }
    }

    /// Closes the connection: the write side first, then a short wait that reads and
    /// drops whatever the client still sends (unread bytes would make the kernel
    /// reset the connection, which can destroy the response in flight).
    async fn close(mut self) {
        let _ = self.write.shutdown().await;
        let Some(mut side) = self.read.take() else { return };
        let drain = async {
            let mut dropped = 0usize;
            while dropped < 1 << 20 {
                side.buf.clear();
                match side.io.read_buf(&mut side.buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => dropped += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Answers an upgrade with its `101`, then joins the client and upstream sockets
    /// and copies bytes both ways until either closes. The tunnel counts as a request
    /// in flight on its server for its whole life.
    async fn upgrade(mut self, mut response: Response<ResponseBody>, settings: &super::Settings) {
        let (in_flight, upstream) = match response.body_mut().upstream_mut() {
            Some(body) => body.detach(),
            None => (None, None),
        };
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in response.headers() {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if self.write.write_all(&self.out).await.is_err() {
            return;
        }
        let (Some((upstream, early)), Some(side)) = (upstream, self.read.take()) else {
            tracing::debug!("upgrade failed: the upstream connection is not HTTP/1.1");
            return;
        };
        let Ok(client) = side.io.reunite(self.write.io) else { return };
        let client = ClientIo::writer(client, settings.send_timeout);
        // Not a tracked task, as hyper's upgrades were not: a shutdown does not wait
        // for tunnels.
        tokio::spawn(async move { splice(client, upstream, &early, &side.buf, in_flight).await });
    }
}

/// Writes the response head into `out` (cleared first): the status line, the
/// response's headers, and what framing and the connection need: `Content-Length`
/// when the size is known (`size`, the body's exact size hint), chunked for HTTP/1.1
/// when not, close-delimited for HTTP/1.0; `Connection: close` when the connection
/// ends after it, `keep-alive` for an HTTP/1.0 client it stays open for; `Date` unless
/// the response has one. Returns the body's framing and whether the connection may
/// carry another request.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    size: Option<u64>,
    head: &Head,
    stopping: bool,
    date: &mut Date,
) -> (Out, bool) {
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_date, mut length, mut close) = (false, None, false);
    // RFC 9110 §8.6: no `Content-Length` with a 1xx, 204 or 304.
    let no_length =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    for (name, value) in &parts.headers {
        if *name == header::DATE {
            has_date = true;
        } else if *name == header::CONTENT_LENGTH {
            // One that is not a number frames nothing: it is left out, and the
            // body's own size decides. A repeat goes out once.
            if no_length || length.is_some() {
                continue;
            }
            length = parse_length(value.as_bytes());
            if length.is_none() {
                continue;
            }
        } else if *name == header::CONNECTION {
            close |= has_token(value.as_bytes(), b"close");
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let mut keep = head.keep_alive && !close && !stopping;
    let bodyless = head.head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        // A HEAD answer tells the length a GET would get, when it is known.
        if head.head_method && length.is_none() {
            if let Some(n) = size.filter(|&n| n > 0) {
                push_length(out, n);
            }
        }
        Out::None
    } else if let Some(n) = length {
        Out::Length(n)
    } else if let Some(n) = size {
        push_length(out, n);
        Out::Length(n)
    } else if head.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    } else {
        keep = false;
        Out::Eof
    };
    if keep && head.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !keep && !close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        push_field(out, b"date", date.now());
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep)
}

/// Writes `a` then `b`, with vectored writes.
async fn write_both<W: AsyncWrite + Unpin>(io: &mut W, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let bufs = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &bufs)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// `name: value\r\n`.
fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `n` in lowercase hex, for a chunk-size line.
fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

impl<I: AsyncWrite + Unpin> ClientIo<I> {
    /// A client socket used for writes only, with `send_timeout`.
    pub(super) fn writer(io: I, send_timeout: Duration) -> ClientIo<I> {
        let mut io = ClientIo::new(io, Duration::MAX, send_timeout);
        io.matched = None;
        io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Option<(Request<()>, Head)>, StatusCode> {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf, &mut Vec::new(), 8192)
    }

    fn head(text: &str) -> Head {
        parse(text.as_bytes()).unwrap().unwrap().1
    }

    fn refused(text: &[u8]) -> StatusCode {
        parse(text).unwrap_err()
    }

    proptest::proptest! {
        /// Whatever a client sends as a head, parsing answers a request, "more", or a
        /// status to refuse it with: never a panic.
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes);
        }

        /// A head of printable fields after a valid request line parses or is refused
        /// with 400 or 431, and a parsed one keeps every field it was given.
        #[test]
        fn heads_of_arbitrary_fields_parse_or_are_refused(fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,40}"), 0..20)) {
            let mut text = String::from("GET /p HTTP/1.1\r\nhost: a\r\n");
            for (name, value) in &fields {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            match parse(text.as_bytes()) {
                Ok(Some((req, _))) => {
                    for (name, _) in &fields {
                        proptest::prop_assert!(req.headers().contains_key(name.as_str()), "{} lost", name);
                    }
                }
                Ok(None) => proptest::prop_assert!(false, "a complete head was read as partial"),
                Err(status) => proptest::prop_assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            }
        }
    }

    #[test]
    fn a_get_parses_with_its_headers_sharing_the_buffer() {
        let mut buf =
            BytesMut::from(&b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next"[..]);
        let (req, head) = parse_head(&mut buf, &mut Vec::new(), 8192).unwrap().unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/p?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "a");
        assert_eq!(req.headers().get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!((head.body, head.keep_alive, head.head_method), (Decode::Done, true, false));
        assert_eq!(&buf[..], b"GET /next", "the next request stays buffered");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_431() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(refused(&big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refused(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn a_head_end_is_found_in_the_new_bytes_only() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for at in 0..head.len() {
            assert!(!has_head_end(&head[..at], 0), "{at}");
        }
        assert!(has_head_end(head, 0));
        // The end straddles what was scanned and what is new.
        assert!(has_head_end(head, head.len() - 1));
        assert!(has_head_end(b"GET / HTTP/1.1\nHost: a\n\n", 20));
        assert!(has_head_end(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 25));
    }

    #[test]
    fn targets_in_every_form() {
        let req = parse(b"GET http://h.example/p HTTP/1.1\r\n\r\n").unwrap().unwrap().0;
        assert_eq!(req.uri().authority().unwrap(), "h.example");
        assert!(parse(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap().is_some());
        assert!(parse(b"CONNECT h.example:443 HTTP/1.1\r\n\r\n").unwrap().is_some());
        assert_eq!(refused(b"GET foo HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(refused(b"GET * HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(refused(b"GET /a b HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").body, Decode::Length(5));
        assert_eq!(head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body, Decode::Done);
        let chunked = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.body, Decode::Chunked(Chunked::new()));
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        let expect = head("POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n");
        assert!(expect.expect_continue);
        let upgrade = head("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(upgrade.upgrade);
        // One of two equal lengths is kept.
        let (req, _) =
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!(req.headers().get_all(header::CONTENT_LENGTH).iter().count(), 1);
    }

    #[test]
    fn ambiguous_framing_and_bad_headers_are_400() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX(A): 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A : 1\r\n\r\n",
            b"GET / HTTP/1.x\r\n\r\n",
        ] {
            assert_eq!(refused(bad), StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn encoded(response: Response<()>, size: Option<u64>, request: &str) -> (String, Out, bool) {
        let head = head(request);
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let mut date = Date { second: 0, text: [b' '; 29] };
        let (framing, keep) = encode_head(&mut out, &parts, size, &head, false, &mut date);
        (String::from_utf8(out).unwrap(), framing, keep)
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn response_heads_frame_their_bodies() {
        const GET11: &str = "GET / HTTP/1.1\r\n\r\n";
        const GET10: &str = "GET / HTTP/1.0\r\n\r\n";
        let (text, framing, keep) = encoded(response(200, &[("x-a", "1")]), Some(2), GET11);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert_eq!((framing, keep), (Out::Length(2), true));
        let (text, framing, _) = encoded(response(200, &[("content-length", "5")]), None, GET11);
        assert_eq!((text.matches("content-length").count(), framing), (1, Out::Length(5)));
        let (text, framing, _) = encoded(response(200, &[]), None, GET11);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(framing, Out::Chunked);
        // HTTP/1.0 cannot take chunks: the close ends the body.
        let (text, framing, keep) = encoded(response(200, &[]), None, GET10);
        assert!(text.contains("connection: close\r\n") && !text.contains("transfer-encoding"), "{text}");
        assert_eq!((framing, keep), (Out::Eof, false));
        let keep_alive = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let (text, _, keep) = encoded(response(200, &[]), Some(0), keep_alive);
        assert!(text.contains("connection: keep-alive\r\n") && keep, "{text}");
    }

    #[test]
    fn no_content_and_not_modified_carry_no_length_and_a_repeat_goes_out_once() {
        const GET11: &str = "GET / HTTP/1.1\r\n\r\n";
        let (text, framing, _) = encoded(response(204, &[("content-length", "0")]), Some(0), GET11);
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!(framing, Out::None);
        let (text, _, _) = encoded(response(304, &[("content-length", "9")]), Some(0), GET11);
        assert!(!text.contains("content-length"), "{text}");
        let twice = response(200, &[("content-length", "2"), ("content-length", "2")]);
        let (text, framing, _) = encoded(twice, Some(2), GET11);
        assert_eq!((text.matches("content-length").count(), framing), (1, Out::Length(2)), "{text}");
    }

    #[test]
    fn bodiless_answers_and_closing_ones() {
        let (text, framing, keep) = encoded(response(204, &[]), Some(0), "GET / HTTP/1.1\r\n\r\n");
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!((framing, keep), (Out::None, true));
        let (text, framing, _) = encoded(response(200, &[]), Some(10), "HEAD / HTTP/1.1\r\n\r\n");
        assert!(text.contains("content-length: 10\r\n"), "{text}");
        assert_eq!(framing, Out::None);
        // A refusal's `Connection: close` ends the connection, and is not doubled.
        let (text, _, keep) =
            encoded(response(400, &[("connection", "close")]), Some(0), "GET / HTTP/1.1\r\n\r\n");
        assert_eq!((text.matches("connection").count(), keep), (1, false));
        let (text, _, keep) =
            encoded(response(200, &[("date", "x")]), Some(0), "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!((text.matches("date").count(), keep), (1, false));
        assert!(text.contains("connection: close\r\n"));
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut buf = [0u8; 16];
        assert_eq!(hex_len(0, &mut buf), b"0");
        assert_eq!(hex_len(255, &mut buf), b"ff");
        assert_eq!(hex_len(65536, &mut buf), b"10000");
    }
}
