//! The server role's connection loop: one client connection served one request at
//! a time by the connection's task, each request handed to a `Handler` (weir's
//! pipeline, for the listener), which knows nothing of the wire.
//!
//! What it owns, per connection (RFC 9112):
//! - request heads (`server::parse_request`; as lines for a `Handler` that takes
//!   them, `Handler::LINES`): `400` for a malformed head or ambiguous
//!   framing, `431` for a head over `Limits::max_head` or over 100 headers; either
//!   closes the connection.
//! - request bodies (`body`), read by whoever polls the request's `Body`: the
//!   connection lends its read side to the body and takes it back once the response
//!   is written. A body left unread then is drained from what is already buffered,
//!   else the connection closes, so no body byte is ever read as a request.
//! - `Expect: 100-continue`: the interim answer goes out when the body is first
//!   read, as with hyper; a request answered without its body never gets it.
//! - responses (`server::encode_head`), with a small body in the same `write`.
//! - keep-alive, and `Connection: close` from either side.
//! - upgrades: a `101` to an upgrade request is written, then the handler takes the
//!   connection (`Handler::upgrade`).
//! - the head read's deadline (`Limits`): from the end of the previous response, so
//!   it is also the keep-alive idle limit. When `stop` changes an idle connection
//!   closes at once, a busy one after its response.
//! - idle connections' memory: the head buffer goes back to a per-thread spare list
//!   whenever a read of the next head has to wait (`spare`), or the connection
//!   closes (for the next one's first read, `head_buffer`), and a connection idle
//!   for `Limits::park_after` is handed back to the caller whole (`Parked`), so that
//!   its task, with the request's future inline in it, ends until the client sends
//!   again.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::body::{lock, Body, Decode, Reader};
use super::encode::{hex_len, push_field, write_both};
use super::head::Field;
use super::server::{
    encode_head, has_head_end, parse_request, Date, Encoded, Head, Out, Parsed, ReadSide, RequestLines,
};
use crate::http::BoxError;
use crate::socket::ReadHalf;

/// How much room a read of a head asks for.
const HEAD_READ: usize = 8 * 1024;
/// Response body bytes gathered before a write; larger frames are written as they are.
const WRITE_GATHER: usize = 16 * 1024;
/// How long a closing connection still reads (and drops) what the client sends, so
/// the kernel does not answer unread bytes with a reset that could destroy the
/// response before the client reads it.
const LINGER: Duration = Duration::from_millis(250);

/// Head buffers of connections waiting for their next request. A keep-alive
/// connection would otherwise keep its 8 KiB buffer for its life; it hands it back
/// here when a read of the next head finds nothing to read (the client has not sent
/// it yet) and nothing is left unparsed, and takes one when it is polled again. A
/// pipelined or back-to-back request is read at once and keeps its buffer. So a
/// thread's busy connections share a few buffers, and idle ones hold none. A buffer
/// whose bytes are still shared (a header value alive elsewhere) is simply
/// reallocated by its next `reserve`.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::HEAD_READ;

    /// Buffers kept per thread: more than its connections between two reads of theirs
    /// at once, few enough to be a small fixed cost.
    const KEEP: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> BytesMut {
        match SPARE.with_borrow_mut(Vec::pop) {
            // Back to the start of its allocation when the last heads used it up (no
            // copy: it is empty).
            Some(mut buf) => {
                if buf.capacity() < HEAD_READ / 4 {
                    buf.reserve(HEAD_READ);
                }
                buf
            }
            None => BytesMut::with_capacity(HEAD_READ),
        }
    }

    /// A closing connection's buffer, for the next connection's first read (see
    /// `head_buffer`): a new connection then costs no 8 KiB allocation and free.
    pub fn recycle(mut buf: BytesMut) {
        buf.clear();
        if buf.capacity() > 0 {
            put(buf);
        }
    }

    #[cfg(test)]
    pub fn len() -> usize {
        SPARE.with_borrow(Vec::len)
    }

    pub fn clear() {
        drop(SPARE.with_borrow_mut(std::mem::take));
    }

    pub fn put(buf: BytesMut) {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEEP {
                spare.push(buf);
            }
        });
    }
}

/// The response head's buffer and the header index of connections waiting for their
/// next request, handed back with the head buffer (see `spare`) and for the same
/// reason: an idle connection would otherwise keep them (~0.7 KiB with their
/// allocator overhead) until it parks, and freed then, among what it keeps while
/// parked, they would leave holes in the heap that pin its pages.
mod scratch {
    use std::cell::RefCell;

    use super::Field;

    /// Pairs kept per thread, as `spare` keeps buffers.
    const KEEP: usize = 64;

    /// A pair that grew past these (a large head, or small bodies gathered up to
    /// `WRITE_GATHER`) is freed, not kept: the spares stay small (at most 64 × ~6
    /// KiB per thread).
    pub const MAX_OUT: usize = 4 * 1024;
    pub const MAX_FIELDS: usize = 128;

    thread_local! {
        static SCRATCH: RefCell<Vec<(Vec<u8>, Vec<Field>)>> = const { RefCell::new(Vec::new()) };
    }

    /// A response head's buffer and a header index: a connection's spares, or new ones.
    pub fn take() -> (Vec<u8>, Vec<Field>) {
        SCRATCH.with_borrow_mut(Vec::pop).unwrap_or_else(|| (Vec::with_capacity(512), Vec::new()))
    }

    pub fn put(mut out: Vec<u8>, mut fields: Vec<Field>) {
        if out.capacity() > MAX_OUT || fields.capacity() > MAX_FIELDS {
            return;
        }
        out.clear();
        // The last request's header values, parts of its head's buffer.
        fields.clear();
        // A thread that is ending has no list any more: the two are freed.
        let _ = SCRATCH.try_with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < KEEP {
                scratch.push((out, fields));
            }
        });
    }

    pub fn clear() {
        drop(SCRATCH.with_borrow_mut(std::mem::take));
    }

    #[cfg(test)]
    pub fn len() -> usize {
        SCRATCH.with_borrow(Vec::len)
    }
}

/// A buffer for a new connection's first read: a spare one (a closed or idle
/// connection's, see `spare`) when the thread has one, else a new one of 8 KiB.
pub fn head_buffer() -> BytesMut {
    let mut buf = spare::take();
    // Room for a whole head, as a new buffer has (without a copy: it is empty).
    buf.reserve(HEAD_READ);
    buf
}

/// A connection's response buffer and request field list: taken from `scratch`
/// when a head is parsed, handed back there while the connection waits for its next
/// request and when it ends (dropped, whichever way it ends). A new connection then
/// allocates neither, and an idle one holds neither.
#[derive(Default)]
struct Scratch {
    out: Vec<u8>,
    fields: Vec<Field>,
}

impl Scratch {
    /// Takes a pair from `scratch` unless it holds one.
    fn ensure(&mut self) {
        if self.out.capacity() == 0 {
            (self.out, self.fields) = scratch::take();
        }
    }

    /// Hands its pair back to `scratch`, if it holds one.
    fn give_back(&mut self) {
        if self.out.capacity() > 0 {
            scratch::put(std::mem::take(&mut self.out), std::mem::take(&mut self.fields));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Hands back a buffer from `head_buffer` that a new connection did not keep (it
/// had nothing to read yet), for the next one.
pub fn return_head_buffer(buf: BytesMut) {
    spare::recycle(buf);
}

/// Frees this thread's spare head buffers (and response head buffers), so that a trim of the heap can give their
/// pages back: called after a burst of connections has gone idle.
pub fn release_spares() {
    spare::clear();
    scratch::clear();
}

/// What answers the requests of a connection: weir's pipeline, for the listener.
/// `W` is the connection's write side.
pub trait Handler<W> {
    /// The response body.
    type Body: ResponseBody;

    /// Whether the handler takes a request's fields as lines (`RequestLines`) when
    /// the client wrote them as weir writes fields (`server::parse_request`): the
    /// request's header map is then empty, and the handler builds one from the lines
    /// if it needs it. `false`: every request comes with its map.
    const LINES: bool = false;

    /// Answers one request; its body is `None` when it has none. `lines`: its fields,
    /// when they were kept as lines (only if `LINES`); its map is empty then.
    fn call(
        &self,
        req: Request<Option<Body>>,
        lines: Option<RequestLines>,
    ) -> impl Future<Output = Response<Self::Body>>;

    /// Takes the connection after the `101` that answered an upgrade request was
    /// written: its read side (and the bytes already read) and its write side. Runs
    /// on the connection's task for the tunnel's life, so the connection's place
    /// (a connection limit, a drain) is held until the tunnel ends.
    fn upgrade(&self, response: Response<Self::Body>, read: ReadSide, write: W) -> impl Future<Output = ()>;

    /// Lets go of the write side of a connection that closes with nothing left to
    /// read, without shutting it down: the socket's close, once the read side goes
    /// too, sends the FIN after the response. Default: dropped as it is (a write
    /// half that shuts itself down when dropped then does so).
    fn release(&self, write: W) {
        drop(write);
    }
}

/// A response body the loop can write.
pub trait ResponseBody: http_body::Body<Data = Bytes, Error = BoxError> + Unpin {
    /// Header fields of the response that ride with the body already encoded (a
    /// cached response's), written as they are; none by default.
    fn encoded(&self) -> Option<Encoded<'_>> {
        None
    }
}

impl ResponseBody for http_body_util::combinators::BoxBody<Bytes, BoxError> {}

/// The loop's limits, from the listener's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head.
    pub max_head: usize,
    /// How long a head may take to arrive, from the end of the previous response.
    pub header_read_timeout: Duration,
    /// How long an idle connection waits for the next request.
    pub idle_timeout: Duration,
    /// How long an idle connection still waits for a request on its way after
    /// `stop`: such a request is answered (with `Connection: close`) instead of
    /// meeting a closed connection.
    pub stop_grace: Duration,
    /// How long a connection waits for its next request with nothing buffered before
    /// `serve` hands it back (`Parked`); `None`: never.
    pub park_after: Option<Duration>,
}

/// A connection idle between requests for `Limits::park_after`, handed back by
/// `serve`: nothing is buffered, no request is in progress, and the caller serves
/// it again (from the start) once the client sends.
pub struct Parked<W> {
    pub read: ReadSide,
    pub write: W,
    /// The head read's deadline, which still holds: the keep-alive idle limit.
    pub until: Instant,
}

/// One client connection served by this module.
struct Server<W> {
    /// `None` while a request body has it, or once the connection must close.
    read: Option<ReadSide>,
    write: W,
    /// The response head (and small bodies) being written, and the request head's
    /// fields; reused per request.
    scratch: Scratch,
    date: Date,
    /// The head read's deadline (`header_read_timeout`, `idle_timeout`), made when a
    /// read of a head first has to wait: a client whose only request arrives whole
    /// never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    /// `timer` was polled since it was last reset and has the task's waker.
    timer_waits: bool,
    /// Set by `read_head` when the connection is to be parked: the head's deadline.
    parked: Option<Instant>,
}

/// Serves one client connection: `read` (with `first`, bytes already read from it,
/// not an h2 preface) and `write`, until the client leaves, a timeout, an error, or
/// `stop`; or until it has been idle for `Limits::park_after`, when it is handed
/// back. Each request goes to `handler`.
// Not an `async fn`: see the `async` block below.
#[allow(clippy::manual_async_fn)]
pub fn serve<W: AsyncWrite + Unpin, H: Handler<W>>(
    read: ReadHalf,
    first: BytesMut,
    write: W,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handler: H,
) -> impl Future<Output = Option<Parked<W>>> {
    // An `async` block, not an `async fn`: an `async fn` moves its arguments into
    // locals of its own, so its future holds each twice (the handler, the limits
    // and `stop`: 240 bytes) and copies them over when it starts.
    async move {
        let mut server = Server {
            read: Some(ReadSide { io: read, buf: first }),
            write,
            scratch: Scratch::default(),
            date: Date::default(),
            timer: None,
            timer_waits: false,
            parked: None,
        };
        // One `changed` future for the connection's life, registered once (see `Stop`).
        let check = stop.clone();
        let changed = stop.changed();
        tokio::pin!(changed);
        let mut stop = Stop { changed, registered: false, stopped: false, check };
        loop {
            let head = server.read_head(&limits, &mut stop, H::LINES).await;
            let (mut req, head, lines) = match head {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return server.park(),
                Err(status) => {
                    server.refuse(status, &handler).await;
                    return None;
                }
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
            *req.body_mut() = lent.as_ref().map(|reader| {
                let length = match head.body {
                    Decode::Length(n) => Some(n),
                    _ => None,
                };
                Body { reader: reader.clone(), length }
            });
            let (mut keep, switched) = {
                // Made in each arm, not before: a future made apart and then awaited is
                // moved into place, a copy of its kilobytes per request.
                let mut response = match lent.as_ref().filter(|_| head.expect_continue) {
                    None => handler.call(req, lines).await,
                    Some(reader) => {
                        let mut pending: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
                        let write = &mut server.write;
                        let mut handle = std::pin::pin!(handler.call(req, lines));
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
                let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                if head.upgrade && switched && lent.is_none() {
                    server.upgrade(response, &handler).await;
                    return None;
                }
                // A look, not a registration: the wait for the next head registers, if the
                // connection gets that far (a client's only request never does).
                let stopping = stop.peek();
                // A 101 that is not tunnelled (its request had a body): the server has left
                // HTTP, so what the client sends next is not a request; the connection ends.
                let keep = server.respond(&mut response, &head, stopping).await && !switched;
                // The response is done with: dropped where it is at the end of this block,
                // its body hands the upstream connection back before anything below waits
                // (a close lingers). `drop(response)` would move it first, a copy of its
                // 256 bytes per request.
                (keep, switched)
            };
            // Whether the request's body was read to its end (or it had none).
            let mut whole = true;
            if let Some(reader) = lent {
                let mut reader = lock(&reader);
                whole = reader.drain();
                keep &= whole;
                server.read = reader.side.take();
            }
            if !keep {
                // The client said this was its last request and all of it was read: it
                // sends nothing more, so there is nothing to linger for (see `close`).
                let last = !head.keep_alive && whole && !switched;
                server.close(last, &handler).await;
                return None;
            }
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
        self.peek()
    }

    /// Whether `stop` has changed, without registering for a wake-up.
    fn peek(&mut self) -> bool {
        self.stopped |= !matches!(self.check.has_changed(), Ok(false));
        self.stopped
    }
}

impl<W: AsyncWrite + Unpin> Server<W> {
    /// Reads and parses the next request head. `Ok(None)`: the connection ends
    /// quietly (the client left, a timeout, or `stop` while idle).
    async fn read_head<F: std::ops::DerefMut<Target: std::future::Future>>(
        &mut self,
        limits: &Limits,
        stop: &mut Stop<F>,
        lines: bool,
    ) -> Result<Option<Parsed<Option<Body>>>, StatusCode> {
        let Some(side) = self.read.as_mut() else { return Ok(None) };
        // Set when a read first has to wait: the head's deadline.
        let mut deadline: Option<Instant> = None;
        // How much of the buffer is known to hold no head's end. The first bytes are
        // parsed at once (a head usually comes whole); after a partial head only the
        // new bytes are scanned for its end, and it is parsed again only once the end
        // is there, so a head sent a byte at a time costs one pass, not one per byte.
        let mut scanned = 0;
        // Set when `stop` is seen while idle: when the connection closes.
        let mut closing: Option<Instant> = None;
        // When a wait that began with nothing buffered began: the connection parks
        // `park_after` later.
        let mut idle_since: Option<Instant> = None;
        let parked = &mut self.parked;
        loop {
            if !side.buf.is_empty() {
                if scanned == 0 || has_head_end(&side.buf, scanned) {
                    self.scratch.ensure();
                    let parsed =
                        parse_request(&mut side.buf, &mut self.scratch.fields, limits.max_head, lines)?;
                    if let Some(parsed) = parsed {
                        return Ok(Some(parsed));
                    }
                } else if side.buf.len() >= limits.max_head {
                    return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                }
                scanned = side.buf.len();
            }
            if side.buf.capacity() - side.buf.len() < HEAD_READ / 4 {
                side.buf.reserve(HEAD_READ);
            }
            let (timer, timer_waits) = (&mut self.timer, &mut self.timer_waits);
            let scratch = &mut self.scratch;
            let read = poll_fn(|cx| {
                if side.buf.capacity() == 0 {
                    side.buf = spare::take();
                }
                if let Poll::Ready(result) =
                    tokio_util::io::poll_read_buf(Pin::new(&mut side.io), cx, &mut side.buf)
                {
                    return Poll::Ready(matches!(result, Ok(n) if n > 0));
                }
                // Nothing to read and nothing left unparsed: idle until the client
                // sends, so the buffer goes back to the spares (see `spare`).
                if side.buf.is_empty() {
                    spare::put(std::mem::take(&mut side.buf));
                    scratch.give_back();
                }
                let deadline = *deadline.get_or_insert_with(|| {
                    // Right after a response (the buffer empty) this is also the
                    // keep-alive idle limit.
                    let now = Instant::now();
                    let mut limit = limits.header_read_timeout;
                    if side.buf.is_empty() {
                        limit = limit.min(limits.idle_timeout);
                        idle_since = Some(now);
                    }
                    let deadline = now + limit;
                    // The timer is moved only when it would fire late: one that fires
                    // early is re-armed below. So a busy connection resets it about
                    // once per timeout, not once per request. It is never armed more
                    // than `park_after` ahead (here or below), so that it comes in
                    // time to park an idle connection: a busy one's fires once per
                    // `park_after`.
                    let wake = limits.park_after.map_or(deadline, |after| deadline.min(now + after));
                    match timer {
                        Some(timer) if !timer.is_elapsed() && timer.deadline() <= deadline => {}
                        Some(timer) => {
                            timer.as_mut().reset(wake);
                            *timer_waits = false;
                        }
                        None => {
                            *timer = Some(Box::pin(tokio::time::sleep_until(wake)));
                            *timer_waits = false;
                        }
                    }
                    deadline
                });
                // Made just above, on this read's first wait.
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                // A timer already waiting holds this task's waker: it need not be
                // polled again until it fires.
                if !*timer_waits || timer.is_elapsed() {
                    while timer.as_mut().poll(cx).is_ready() {
                        let now = Instant::now();
                        if now >= deadline {
                            return Poll::Ready(false);
                        }
                        let mut wake = deadline;
                        if let Some(after) = limits.park_after {
                            let at = idle_since.map_or(now, |since| since + after);
                            // Idle this long with nothing buffered: handed back, unless
                            // the listener is stopping (then it closes below).
                            if idle_since.is_some() && now >= at && side.buf.is_empty() && !stop.poll(cx) {
                                *parked = Some(deadline);
                                return Poll::Ready(false);
                            }
                            wake = wake.min(if at > now { at } else { now + after });
                        }
                        timer.as_mut().reset(wake);
                    }
                    *timer_waits = true;
                }
                // An idle connection closes on `stop` once `stop_grace` passes with
                // nothing from the client: a request already on its way (a busy
                // client's next one) is answered, with `Connection: close`, instead
                // of meeting a closed connection. A head under way is answered too.
                if side.buf.is_empty() && stop.poll(cx) {
                    let close = *closing.get_or_insert_with(|| Instant::now() + limits.stop_grace);
                    if Instant::now() >= close {
                        return Poll::Ready(false);
                    }
                    if timer.deadline() > close {
                        timer.as_mut().reset(close);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                    *timer_waits = true;
                }
                Poll::Pending
            })
            .await;
            if !read {
                return Ok(None);
            }
        }
    }

    /// Writes `response`; `true` when the connection may carry another request. By
    /// reference: the response moved into this future and taken apart would be two
    /// copies of its few hundred bytes.
    async fn respond<B: ResponseBody>(
        &mut self,
        response: &mut Response<B>,
        head: &Head,
        stopping: bool,
    ) -> bool {
        let size = response.body().size_hint().exact();
        let encoded = response.body().encoded();
        let (framing, keep) =
            encode_head(&mut self.scratch.out, response, encoded, size, head, stopping, &mut self.date);
        let body = response.body_mut();
        if framing == Out::None {
            return self.write.write_all(&self.scratch.out).await.is_ok() && keep;
        }
        match self.write_body(body, framing, head.trailers).await {
            Ok(complete) => keep && complete,
            Err(e) => {
                tracing::debug!(error = %e, "client response cut short");
                false
            }
        }
    }

    /// Writes the head in `out` and the body after it; `Ok(false)`: the body was cut
    /// short, so the connection cannot go on.
    async fn write_body<B: ResponseBody>(
        &mut self,
        body: &mut B,
        framing: Out,
        send_trailers: bool,
    ) -> Result<bool, BoxError> {
        let mut sent = 0u64;
        let mut trailers = None;
        loop {
            let out = &mut self.scratch.out;
            let polled = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                // Nothing more yet: what is gathered goes out while the body waits.
                Poll::Pending if !out.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            })
            .await;
            let frame = match polled {
                None => {
                    self.write.write_all(&self.scratch.out).await?;
                    self.scratch.out.clear();
                    continue;
                }
                Some(None) => break,
                Some(Some(Err(e))) => {
                    let _ = self.write.write_all(&self.scratch.out).await;
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
                self.scratch.out.extend_from_slice(hex_len(data.len(), &mut hex));
                self.scratch.out.extend_from_slice(b"\r\n");
            }
            if data.len() <= WRITE_GATHER {
                self.scratch.out.extend_from_slice(&data);
            } else {
                // A large frame goes out as it is, behind what is gathered, in one
                // `writev`.
                write_both(&mut self.write, &self.scratch.out, &data).await?;
                self.scratch.out.clear();
            }
            if framing == Out::Chunked {
                self.scratch.out.extend_from_slice(b"\r\n");
            }
            if self.scratch.out.len() >= WRITE_GATHER {
                self.write.write_all(&self.scratch.out).await?;
                self.scratch.out.clear();
            }
            // As hyper: a body that knows it is done is not polled for its end.
            if matches!(framing, Out::Length(n) if sent > n) || body.is_end_stream() {
                break;
            }
        }
        let complete = match framing {
            Out::Chunked => {
                self.scratch.out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    push_field(&mut self.scratch.out, name.as_str().as_bytes(), value.as_bytes());
                }
                self.scratch.out.extend_from_slice(b"\r\n");
                true
            }
            Out::Length(n) => sent == n,
            Out::Eof | Out::None => false,
        };
        self.write.write_all(&self.scratch.out).await?;
        Ok(complete)
    }

    /// The connection, handed back, when `read_head` parked it.
    fn park(mut self) -> Option<Parked<W>> {
        let read = self.read.take()?;
        let Some(until) = self.parked else {
            spare::recycle(read.buf);
            return None;
        };
        Some(Parked { read, write: self.write, until })
    }

    /// Answers a head that cannot be served, then closes.
    async fn refuse<H: Handler<W>>(mut self, status: StatusCode, handler: &H) {
        tracing::debug!(%status, "refused a malformed request head");
        self.scratch.out.clear();
        self.scratch.out.extend_from_slice(b"HTTP/1.1 ");
        self.scratch.out.extend_from_slice(status.as_str().as_bytes());
        self.scratch.out.push(b' ');
        self.scratch.out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        self.scratch.out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n");
        push_field(&mut self.scratch.out, b"date", self.date.now());
        self.scratch.out.extend_from_slice(b"\r\n");
        if self.write.write_all(&self.scratch.out).await.is_ok() {
            self.close(false, handler).await;
        }
    }

    /// Closes the connection: the write side first, then a short wait that reads and
    /// drops whatever the client still sends (unread bytes would make the kernel
    /// reset the connection, which can destroy the response in flight).
    ///
    /// `last`: the client's request said it was its last (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`) and was read whole. Then, with nothing more
    /// buffered or ready on the socket, there is nothing to linger for: the
    /// connection closes at once, as nginx's `lingering_close on` does, without the
    /// reads that would only find the socket empty and then the client's end, and
    /// without a `shutdown`: the socket's close sends the FIN after the response
    /// just the same (`Handler::release`).
    async fn close<H: Handler<W>>(mut self, last: bool, handler: &H) {
        let Some(mut side) = self.read.take() else {
            let _ = self.write.shutdown().await;
            return;
        };
        // A read that left the socket empty says so (`Socket`), and then only the
        // poller can say more came: no read is needed to know nothing did.
        if last && side.buf.is_empty() && !poll_fn(|cx| Poll::Ready(side.io.may_have_bytes(cx))).await {
            handler.release(self.write);
            spare::recycle(side.buf);
            return;
        }
        let _ = self.write.shutdown().await;
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
        spare::recycle(side.buf);
    }

    /// Answers an upgrade with its `101`, then hands the connection to `handler`,
    /// which joins it with whatever answered the upgrade.
    async fn upgrade<H: Handler<W>>(mut self, response: Response<H::Body>, handler: &H) {
        let out = &mut self.scratch.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in response.headers() {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if self.write.write_all(&self.scratch.out).await.is_err() {
            return;
        }
        let Some(side) = self.read.take() else { return };
        handler.upgrade(response, side, self.write).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connections_buffer_serves_the_next_one_empty_and_whole() {
        // A buffer that held a head, split off and still alive elsewhere, as a request's
        // header values are while it runs.
        let mut buf = head_buffer();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nleft over");
        let head = buf.split_to(27);
        let spares = spare::len();
        spare::recycle(buf);
        assert_eq!(spare::len(), spares + 1, "kept for the next connection");
        drop(head);
        let next = head_buffer();
        assert_eq!(spare::len(), spares);
        assert!(next.is_empty(), "nothing of the last connection's bytes is read again");
        assert!(next.capacity() >= HEAD_READ);
    }

    #[test]
    fn a_connections_scratch_serves_the_next_one_empty_unless_it_grew_large() {
        let mut first = Scratch::default();
        first.ensure();
        first.out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let head = b"host: a";
        first.fields.push(Field::of(
            head.as_ptr() as usize,
            &httparse::Header { name: std::str::from_utf8(&head[..4]).unwrap(), value: &head[6..] },
        ));
        let address = first.out.as_ptr();
        drop(first);
        let mut next = Scratch::default();
        next.ensure();
        assert_eq!(next.out.as_ptr(), address, "the same buffer, not a new allocation");
        assert!(next.out.is_empty() && next.fields.is_empty());
        drop(next);
        let spares = scratch::len();
        let mut large = Scratch::default();
        large.ensure();
        large.out.reserve(scratch::MAX_OUT + 1);
        drop(large);
        assert_eq!(scratch::len(), spares - 1, "a buffer grown past the limit is freed");
    }

    #[test]
    fn the_spare_buffers_are_freed_for_a_trim() {
        return_head_buffer(head_buffer());
        let (out, fields) = scratch::take();
        scratch::put(out, fields);
        assert!(spare::len() > 0 && scratch::len() > 0);
        release_spares();
        assert_eq!(spare::len(), 0, "still kept through the trim");
        assert_eq!(scratch::len(), 0, "still kept through the trim");
        assert!(head_buffer().capacity() >= HEAD_READ, "a new one when there is no spare");
    }

    /// A write half that counts its `shutdown`s, and a handler that counts the
    /// write halves it was given to let go of quietly.
    struct Counting {
        io: crate::socket::WriteHalf,
        shutdowns: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.shutdowns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    struct Answers(Arc<std::sync::atomic::AtomicUsize>);

    type Answer = http_body_util::combinators::BoxBody<Bytes, BoxError>;

    impl Handler<Counting> for Answers {
        type Body = Answer;

        async fn call(&self, _: Request<Option<Body>>, _: Option<RequestLines>) -> Response<Answer> {
            use http_body_util::BodyExt;
            Response::new(
                http_body_util::Full::new(Bytes::from_static(b"hello")).map_err(|n| match n {}).boxed(),
            )
        }

        async fn upgrade(&self, _: Response<Answer>, _: ReadSide, _: Counting) {}

        fn release(&self, write: Counting) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            write.io.forget();
        }
    }

    /// Serves one connection that sends `request` (and nothing more); the client's
    /// whole read, the `shutdown`s and the quiet releases.
    async fn close_after(request: &'static [u8]) -> (String, usize, usize) {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = crate::socket::Socket::new(server.into_std().unwrap()).into_split();
        let (shutdowns, released) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let write = Counting { io: write, shutdowns: shutdowns.clone() };
        let limits = Limits {
            max_head: 8192,
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(2),
            stop_grace: Duration::ZERO,
            park_after: None,
        };
        let (_stop, stop) = tokio::sync::watch::channel(false);
        client.write_all(request).await.unwrap();
        serve(read, BytesMut::new(), write, limits, stop, Answers(released.clone())).await;
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        (String::from_utf8(reply).unwrap(), shutdowns.load(Relaxed), released.load(Relaxed))
    }

    #[tokio::test]
    async fn a_last_request_read_whole_closes_without_a_shutdown_and_the_answer_arrives() {
        let (reply, shutdowns, released) =
            close_after(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nhello"), "{reply}");
        assert_eq!((shutdowns, released), (0, 1), "the close's FIN alone ends it");
    }

    #[tokio::test]
    async fn bytes_after_the_last_request_get_a_shutdown_and_the_linger() {
        // Unread bytes would turn a close into a reset, which can destroy the answer.
        let (reply, shutdowns, released) =
            close_after(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /more HTTP/1.1\r\n")
                .await;
        assert!(reply.ends_with("\r\n\r\nhello"), "{reply}");
        assert_eq!((shutdowns, released), (1, 0));
    }

    #[tokio::test]
    async fn an_idle_connection_hands_back_its_response_buffer_and_takes_one_for_its_next_request() {
        use std::sync::atomic::AtomicUsize;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = crate::socket::Socket::new(server.into_std().unwrap()).into_split();
        let write = Counting { io: write, shutdowns: Arc::new(AtomicUsize::new(0)) };
        let limits = Limits {
            max_head: 8192,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            stop_grace: Duration::ZERO,
            park_after: None,
        };
        let (_stop, stop) = tokio::sync::watch::channel(false);
        release_spares();
        // On this thread, as the test is: the connection's spares are this thread's.
        let served = tokio::spawn(serve(read, BytesMut::new(), write, limits, stop, Answers(Arc::default())));
        for _ in 0..2 {
            client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            let mut reply = Vec::new();
            while !reply.ends_with(b"hello") {
                let mut chunk = [0u8; 1024];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                reply.extend_from_slice(&chunk[..n]);
            }
            // The connection is waiting for its next request now.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(scratch::len(), 1, "an idle connection keeps its response head's buffer");
        }
        drop(client);
        served.await.unwrap();
    }
}
