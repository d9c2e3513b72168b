//! The server role's HTTP/2 connection (RFC 9113): one future per connection reads
//! frames, keeps the streams' states and windows, and polls each stream's handler
//! future and response body itself, so a request costs no task of its own.
//!
//! What it owns, per connection:
//! - the preface and SETTINGS exchange, PING answers, GOAWAY (graceful on `stop`
//!   after `Config::stop_grace`, or after `Config::idle_timeout` with no stream open;
//!   with the error on a connection error), and a keep-alive PING when nothing was
//!   read for `Config::keep_alive` while streams are open (no answer: closed).
//! - streams: client ids (odd, increasing), states (open, half-closed, closed),
//!   `max_concurrent_streams` (REFUSED_STREAM past it), RST_STREAM both ways,
//!   CONTINUATION sequencing, PRIORITY checked (a stream cannot depend on itself).
//! - requests (`request`): header blocks decoded (`hpack`), held to the header list
//!   size limit (`431`), validated per RFC 9113 §8 (PROTOCOL_ERROR when malformed),
//!   and handed to a `Handler`; bodies (`body::RecvBody`) held to `content-length`.
//! - flow control both ways: DATA is sent within the peer's stream and connection
//!   windows and MAX_FRAME_SIZE; the client's window is given back only as the
//!   handler reads the body, so a slow reader stops the client.
//! - responses: headers encoded once per response, DATA and trailers, written in one
//!   `write` per batch of frames (all that the ready streams made in one pass). A
//!   response body that fails resets its stream (INTERNAL_ERROR).
//! - rapid reset (CVE-2023-44487): a client that resets more than
//!   `Config::max_pending_resets` streams before they were answered (less one per
//!   stream answered), or causes `Config::max_local_errors` stream errors, gets
//!   GOAWAY ENHANCE_YOUR_CALM.
//!
//! How streams are polled: each stream sits in a slot with a waker of its own, which
//! marks the slot ready (an atomic flag, no lock) and wakes the connection's task; a
//! pass polls only the marked slots. Slots, their wakers and the buffers are
//! kept for the connection's life: a stream allocates its handler's future (boxed,
//! as it is pinned in place) and, when it has a body, the body's shared state.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool,
    Ordering::{AcqRel, Acquire, Release},
};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::body::{Recv, RecvBody};
use super::frame::{self, Error, Frame, Head, Reason};
use super::hpack::{self, Decoder};
use super::request::{self, Fields};
use crate::http::h1::server::Date;
use crate::http::BoxError;
use crate::recycle::Recycled;

/// The connection preface a client opens with.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Output buffered past this stops reading frames and polling bodies until the
/// client takes it.
const OUT_HIGH: usize = 64 * 1024;
/// The output buffer a connection with no stream open keeps: large responses grow it
/// past `OUT_HIGH`, and an idle connection need not hold that.
const OUT_KEEP: usize = 4 * 1024;
/// Room a read asks for: one largest frame we accept, and its header.
const READ: usize = frame::DEFAULT_MAX_FRAME_SIZE as usize + frame::HEADER_LEN;
/// Closed stream ids remembered, to tell a frame on a closed stream (STREAM_CLOSED)
/// from one reusing an old id (PROTOCOL_ERROR).
const CLOSED_KEPT: usize = 16;
/// Passes of one poll before the connection yields to the other tasks.
const PASSES: usize = 16;

/// What answers the requests of a connection: weir's pipeline, for the listener.
pub trait Handler {
    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error = BoxError> + Unpin;
    /// The response, on its way.
    type Future: Future<Output = Response<Self::Body>>;

    fn call(&self, req: Request<RecvBody>) -> Self::Future;
}

impl<F, Fut, B> Handler for F
where
    F: Fn(Request<RecvBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Body = B;
    type Future = Fut;

    fn call(&self, req: Request<RecvBody>) -> Fut {
        self(req)
    }
}

/// The connection's settings and limits, from the listener's.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: larger request heads get `431`.
    pub max_header_list_size: u32,
    /// The window each stream's body gets (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// The connection's window for all bodies together.
    pub conn_window: u32,
    /// A connection with no stream open this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// With streams open and nothing read this long, a PING goes out; with no
    /// answer in as long again, the connection closes.
    pub keep_alive: Duration,
    /// After `stop`, how long before the GOAWAY: a request on its way is served.
    pub stop_grace: Duration,
    pub max_pending_resets: usize,
    pub max_local_errors: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_concurrent_streams: 128,
            max_header_list_size: 32 * 1024,
            stream_window: 1 << 20,
            conn_window: 1 << 20,
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(30),
            stop_grace: Duration::from_millis(100),
            max_pending_resets: 64,
            max_local_errors: 256,
        }
    }
}

/// Serves one client connection on `io` (with `first`, bytes already read from it,
/// the preface among them or not) until the client leaves, an error, a timeout or
/// `stop`; each request goes to `handler`.
pub async fn serve<I, H>(
    io: I,
    first: BytesMut,
    config: Config,
    stop: tokio::sync::watch::Receiver<bool>,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut conn = Conn::new(io, first, config, handler);
    // As `h1::conn`'s `Stop`: `changed` is polled once, for its wake-up; from then on
    // a look at a clone's version costs an atomic load.
    let check = stop.clone();
    let mut stop = stop;
    let changed = stop.changed();
    tokio::pin!(changed);
    let mut registered = false;
    let mut stopped = false;
    poll_fn(|cx| {
        if !stopped {
            if !registered {
                registered = true;
                stopped = changed.as_mut().poll(cx).is_ready();
            }
            stopped |= !matches!(check.has_changed(), Ok(false));
            if stopped {
                conn.stop();
            }
        }
        conn.poll(cx)
    })
    .await;
}

/// What the slots' wakers share with the connection: that some slot was marked
/// ready since the last pass, and the task to wake. No lock: a pass looks at each
/// slot's own flag, and the slots are as many as the streams open at once.
struct Queue {
    pending: AtomicBool,
    task: AtomicWaker,
}

/// A slot's waker: marks the slot ready (once until it is polled) and wakes the
/// connection's task.
struct SlotWake {
    queued: AtomicBool,
    queue: Arc<Queue>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, AcqRel) {
            self.queue.pending.store(true, Release);
        }
        self.queue.task.wake();
    }
}

struct Slot<H: Handler> {
    stream: Option<Stream<H>>,
    wake: Arc<SlotWake>,
    waker: Waker,
}

/// Where a stream's response stands.
enum Send<H: Handler> {
    /// The handler is at work.
    /// In a reused block, built there (`recycle`): a request's future is kilobytes.
    Handling(Recycled<H::Future>),
    /// The headers are sent; the body is.
    Body(H::Body),
    /// Sent whole (or reset).
    Done,
}

struct Stream<H: Handler> {
    id: u32,
    send: Send<H>,
    /// The request body, while the client may still send it (`None`: it has none
    /// or it has ended).
    recv: Option<Arc<Recv>>,
    /// The client has not ended the stream (half-closed remote once it has).
    recv_open: bool,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Bytes taken by the handler, not yet given back as stream window.
    recv_release: u32,
    /// Bytes queued for the handler and not taken yet: given back to the connection
    /// window when the stream closes.
    unread: usize,
    /// `content-length`, and the DATA received.
    length: Option<u64>,
    received: u64,
    send_window: i64,
    /// Data taken from the body and not sent yet (waiting for window).
    pending: Option<Bytes>,
    /// `pending` is the body's last.
    pending_end: bool,
    /// Waiting for output room, or for connection window.
    blocked: bool,
    /// The response's head is sent.
    answered: bool,
    /// A HEAD request: the response has no body.
    head_only: bool,
}

/// A header block arriving in CONTINUATION frames.
struct Continued {
    stream: u32,
    end_stream: bool,
    dependency: Option<u32>,
    block: BytesMut,
}

/// The write side: the frames of one pass and what writing them needs.
struct Out {
    buf: Vec<u8>,
    written: usize,
    /// A header block being encoded.
    block: Vec<u8>,
    /// The peer's SETTINGS_MAX_FRAME_SIZE.
    max_frame: usize,
    /// The peer's connection window for our DATA.
    window: i64,
    date: Date,
}

impl Out {
    fn full(&self) -> bool {
        self.buf.len() - self.written >= OUT_HIGH
    }
}

/// How the connection is ending.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Running,
    /// GOAWAY sent (or received): the open streams finish, then it closes.
    Draining,
    /// Closes once the output is written.
    Closing,
}

struct Conn<I, H: Handler> {
    io: I,
    handler: H,
    config: Config,
    rbuf: BytesMut,
    out: Out,
    decoder: Decoder,
    slots: Vec<Slot<H>>,
    free: Vec<usize>,
    /// Streams open (or half-closed).
    active: usize,
    queue: Arc<Queue>,
    /// The highest stream id the client opened (or tried to).
    max_id: u32,
    closed: [u32; CLOSED_KEPT],
    closed_at: usize,
    /// What the client may still send, all streams together.
    recv_window: i64,
    /// Taken by handlers (or dropped), not yet given back as connection window.
    recv_release: u32,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_window: u32,
    preface: bool,
    settings_seen: bool,
    continued: Option<Continued>,
    ending: Ending,
    goaway_sent: bool,
    eof: bool,
    resets: usize,
    local_errors: usize,
    /// When a keep-alive PING went out without an answer yet.
    ping_sent: Option<Instant>,
    read_since_tick: bool,
    idle_since: Option<Instant>,
    stop_at: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// Something a later pass can act on happened in this one.
    again: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin, H: Handler> Conn<I, H> {
    fn new(io: I, first: BytesMut, config: Config, handler: H) -> Self {
        let now = Instant::now();
        let tick = config.keep_alive.min(config.idle_timeout);
        let mut out = Out {
            buf: Vec::with_capacity(1024),
            written: 0,
            block: Vec::new(),
            max_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
            window: frame::DEFAULT_WINDOW as i64,
            date: Date::default(),
        };
        // The server's preface: SETTINGS, and the connection window raised.
        frame::settings(
            &mut out.buf,
            &[
                (frame::SETTINGS_MAX_CONCURRENT_STREAMS, config.max_concurrent_streams),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, config.stream_window),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, config.max_header_list_size),
            ],
        );
        if config.conn_window > frame::DEFAULT_WINDOW {
            frame::window_update(&mut out.buf, 0, config.conn_window - frame::DEFAULT_WINDOW);
        }
        let mut rbuf = first;
        rbuf.reserve(READ);
        Conn {
            io,
            handler,
            config,
            rbuf,
            out,
            decoder: Decoder::new(4096),
            slots: Vec::new(),
            free: Vec::new(),
            active: 0,
            queue: Arc::new(Queue { pending: AtomicBool::new(false), task: AtomicWaker::new() }),
            max_id: 0,
            closed: [0; CLOSED_KEPT],
            closed_at: 0,
            recv_window: config.conn_window.max(frame::DEFAULT_WINDOW) as i64,
            recv_release: 0,
            peer_window: frame::DEFAULT_WINDOW,
            preface: false,
            settings_seen: false,
            continued: None,
            ending: Ending::Running,
            goaway_sent: false,
            eof: false,
            resets: 0,
            local_errors: 0,
            ping_sent: None,
            read_since_tick: false,
            idle_since: Some(now),
            stop_at: None,
            timer: Box::pin(tokio::time::sleep_until(now + tick)),
            again: false,
        }
    }

    /// The listener stops: GOAWAY after `stop_grace`.
    fn stop(&mut self) {
        if self.stop_at.is_none() {
            let at = Instant::now() + self.config.stop_grace;
            self.stop_at = Some(at);
            if self.timer.deadline() > at {
                self.timer.as_mut().reset(at);
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.queue.task.register(cx.waker());
        for _ in 0..PASSES {
            self.again = false;
            self.poll_timer(cx);
            if self.ending != Ending::Closing && !self.eof && !self.out.full() {
                self.read(cx);
            }
            self.poll_streams();
            match self.flush(cx) {
                Poll::Ready(Err(_)) => {
                    self.abort_all("the connection failed");
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {
                    if self.ending == Ending::Closing || (self.ending == Ending::Draining && self.active == 0)
                    {
                        self.abort_all("the connection closed");
                        let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                        return Poll::Ready(());
                    }
                }
                Poll::Pending => {}
            }
            if self.eof {
                // The client is gone: nothing it asked for can reach it.
                self.abort_all("the client closed the connection");
                return Poll::Ready(());
            }
            if !self.again && !self.queue.pending.load(Acquire) {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) {
        if self.timer.as_mut().poll(cx).is_pending() {
            return;
        }
        let now = Instant::now();
        let keep_alive = self.config.keep_alive;
        let mut next = now + keep_alive.min(self.config.idle_timeout);
        if let Some(at) = self.stop_at {
            if now >= at {
                self.go_away(Reason::NoError);
            } else {
                next = next.min(at);
            }
        }
        if let Some(since) = self.idle_since {
            let at = since + self.config.idle_timeout;
            if now >= at {
                self.go_away(Reason::NoError);
            } else {
                next = next.min(at);
            }
        }
        if let Some(sent) = self.ping_sent {
            if now >= sent + keep_alive {
                tracing::debug!("h2 client did not answer a keep-alive PING: closed");
                self.ending = Ending::Closing;
            }
        } else if self.active > 0 && !self.read_since_tick {
            frame::ping(&mut self.out.buf, false, *b"weir-ka!");
            self.ping_sent = Some(now);
            next = next.min(now + keep_alive);
        }
        self.read_since_tick = false;
        self.timer.as_mut().reset(next);
        // Registers the timer's wake-up.
        let _ = self.timer.as_mut().poll(cx);
        self.again = true;
    }

    /// Reads and handles frames until the socket has nothing more or the output is
    /// full.
    fn read(&mut self, cx: &mut Context<'_>) {
        loop {
            while self.ending != Ending::Closing && !self.out.full() {
                match self.next_frame() {
                    Ok(Some((head, payload))) => self.on_frame(head, payload),
                    Ok(None) => break,
                    Err(reason) => self.go_away(reason),
                }
            }
            if self.ending == Ending::Closing || self.out.full() {
                // Frames may be left in the buffer: they are read once the client
                // has taken enough of the output (`flush` calls `unblock`), not in
                // a spin while it takes nothing.
                return;
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ / 2 {
                self.rbuf.reserve(READ);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.eof = true;
                    return;
                }
                Poll::Ready(Ok(_)) => self.read_since_tick = true,
                Poll::Pending => return,
            }
        }
    }

    /// The next whole frame in the read buffer.
    fn next_frame(&mut self) -> Result<Option<(Head, Bytes)>, Reason> {
        if !self.preface {
            let n = self.rbuf.len().min(PREFACE.len());
            if self.rbuf[..n] != PREFACE[..n] {
                return Err(Reason::Protocol);
            }
            if n < PREFACE.len() {
                return Ok(None);
            }
            self.rbuf.advance(PREFACE.len());
            self.preface = true;
        }
        if self.rbuf.len() < frame::HEADER_LEN {
            return Ok(None);
        }
        let head = Head::parse(&self.rbuf);
        if head.len > frame::DEFAULT_MAX_FRAME_SIZE {
            return Err(Reason::FrameSize);
        }
        let total = frame::HEADER_LEN + head.len as usize;
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        self.rbuf.advance(frame::HEADER_LEN);
        let payload = self.rbuf.split_to(head.len as usize).freeze();
        Ok(Some((head, payload)))
    }

    fn on_frame(&mut self, head: Head, payload: Bytes) {
        // The client's preface ends with its SETTINGS (RFC 9113 §3.4).
        if !self.settings_seen {
            if head.kind != frame::SETTINGS || head.flags & frame::ACK != 0 {
                return self.go_away(Reason::Protocol);
            }
            self.settings_seen = true;
        }
        // A header block in CONTINUATION frames is not interrupted (§6.10).
        match &self.continued {
            Some(c) if head.kind != frame::CONTINUATION || head.stream != c.stream => {
                return self.go_away(Reason::Protocol);
            }
            None if head.kind == frame::CONTINUATION => return self.go_away(Reason::Protocol),
            _ => {}
        }
        let frame = match frame::parse(head, payload) {
            Ok(frame) => frame,
            Err(Error::Connection(reason)) => return self.go_away(reason),
            Err(Error::Stream(id, reason)) => {
                if id > self.max_id && head.kind == frame::PRIORITY {
                    // PRIORITY on an idle stream does not open it.
                    self.out_rst(id, reason);
                    return;
                }
                return self.stream_error(id, reason);
            }
        };
        match frame {
            Frame::Data { stream, end_stream, data, flow_len } => {
                self.on_data(stream, end_stream, data, flow_len)
            }
            Frame::Headers { stream, end_stream, end_headers, priority, block } => {
                let dependency = priority.map(|p| p.dependency);
                if end_headers {
                    self.on_block(stream, end_stream, dependency, block);
                } else {
                    let block = BytesMut::from(&block[..]);
                    self.continued = Some(Continued { stream, end_stream, dependency, block });
                }
            }
            Frame::Continuation { end_headers, block, .. } => {
                let Some(c) = self.continued.as_mut() else { return };
                c.block.extend_from_slice(&block);
                // A block past any useful size: its HPACK state is not worth keeping.
                if c.block.len() > 2 * self.config.max_header_list_size as usize + 64 * 1024 {
                    return self.go_away(Reason::EnhanceYourCalm);
                }
                if end_headers {
                    let Some(c) = self.continued.take() else { return };
                    self.on_block(c.stream, c.end_stream, c.dependency, c.block.freeze());
                }
            }
            Frame::Priority { .. } | Frame::Unknown => {}
            Frame::RstStream { stream, .. } => self.on_reset(stream),
            Frame::Settings { ack: true, .. } => {}
            Frame::Settings { ack: false, settings } => self.on_settings(settings),
            Frame::Ping { ack: false, data } => frame::ping(&mut self.out.buf, true, data),
            Frame::Ping { ack: true, .. } => self.ping_sent = None,
            Frame::GoAway { .. } => {
                // The client opens no more streams: those open finish, then it closes.
                if self.ending == Ending::Running {
                    self.ending = Ending::Draining;
                }
            }
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
        }
    }

    fn on_settings(&mut self, settings: frame::Settings) {
        if let Some(size) = settings.max_frame_size {
            self.out.max_frame = size as usize;
        }
        if let Some(window) = settings.initial_window_size {
            let delta = window as i64 - self.peer_window as i64;
            self.peer_window = window;
            for slot in &mut self.slots {
                let Some(stream) = slot.stream.as_mut() else { continue };
                stream.send_window += delta;
                if stream.send_window > frame::MAX_WINDOW as i64 {
                    return self.go_away(Reason::FlowControl);
                }
                if delta > 0 && stream.blocked {
                    stream.blocked = false;
                    slot.wake.wake_by_ref();
                }
            }
        }
        frame::settings_ack(&mut self.out.buf);
    }

    fn on_window_update(&mut self, id: u32, increment: u32) {
        if id == 0 {
            self.out.window += increment as i64;
            if self.out.window > frame::MAX_WINDOW as i64 {
                return self.go_away(Reason::FlowControl);
            }
            for slot in &mut self.slots {
                if let Some(stream) = slot.stream.as_mut().filter(|s| s.blocked) {
                    stream.blocked = false;
                    slot.wake.wake_by_ref();
                }
            }
            return;
        }
        let Some(index) = self.find(id) else {
            if id > self.max_id {
                self.go_away(Reason::Protocol);
            }
            // A closed stream's: ignored.
            return;
        };
        let slot = &mut self.slots[index];
        let Some(stream) = slot.stream.as_mut() else { return };
        stream.send_window += increment as i64;
        if stream.send_window > frame::MAX_WINDOW as i64 {
            return self.stream_error(id, Reason::FlowControl);
        }
        if stream.blocked {
            stream.blocked = false;
            slot.wake.wake_by_ref();
        }
    }

    fn on_reset(&mut self, id: u32) {
        let Some(index) = self.find(id) else {
            if id > self.max_id {
                self.go_away(Reason::Protocol);
            }
            return;
        };
        let answered = self.slots[index].stream.as_ref().is_some_and(|s| s.answered);
        if !answered {
            // Rapid reset: streams reset before their answer cost the server work
            // the client never waits for.
            self.resets += 1;
            if self.resets > self.config.max_pending_resets {
                tracing::debug!("h2 client reset too many streams: GOAWAY");
                self.go_away(Reason::EnhanceYourCalm);
            }
        }
        self.close(index, Some((std::io::ErrorKind::ConnectionReset, "the client reset the stream")));
    }

    fn on_data(&mut self, id: u32, end_stream: bool, data: Bytes, flow_len: u32) {
        let flow = flow_len as i64;
        if flow > self.recv_window {
            return self.go_away(Reason::FlowControl);
        }
        self.recv_window -= flow;
        let index = match self.find(id) {
            Some(index) if self.slots[index].stream.as_ref().is_some_and(|s| s.recv_open) => index,
            _ => {
                // Not for a stream that takes data: its window comes back at once.
                self.recv_release += flow_len;
                if id > self.max_id {
                    return self.go_away(Reason::Protocol);
                }
                return self.stream_error(id, Reason::StreamClosed);
            }
        };
        let stream = self.slots[index].stream.as_mut().expect("found");
        if flow > stream.recv_window {
            self.recv_release += flow_len;
            return self.stream_error(id, Reason::FlowControl);
        }
        stream.recv_window -= flow;
        // Padding is given back at once.
        let padding = flow_len - data.len() as u32;
        stream.recv_release += padding;
        self.recv_release += padding;
        stream.received += data.len() as u64;
        let too_long = stream.length.is_some_and(|n| stream.received > n);
        let too_short = end_stream && stream.length.is_some_and(|n| stream.received != n);
        if too_long || too_short {
            self.recv_release += data.len() as u32;
            if let Some(recv) = &stream.recv {
                recv.lock()
                    .fail(std::io::ErrorKind::InvalidData, "the body does not match its content-length");
            }
            return self.stream_error(id, Reason::Protocol);
        }
        let Some(recv) = stream.recv.clone() else { return };
        let mut state = recv.lock();
        if state.dropped {
            stream.recv_release += data.len() as u32;
            self.recv_release += data.len() as u32;
        } else if !data.is_empty() {
            stream.unread += data.len();
            state.data.push_back(data);
        }
        if end_stream {
            state.end = true;
            stream.recv_open = false;
            stream.recv = None;
        }
        state.wake_reader();
        drop(state);
        if end_stream {
            self.end_recv(index);
        }
        self.release_conn();
    }

    /// A whole header block for stream `id`.
    fn on_block(&mut self, id: u32, end_stream: bool, dependency: Option<u32>, block: Bytes) {
        if id % 2 == 0 {
            return self.go_away(Reason::Protocol);
        }
        let mut fields = Fields::new(self.config.max_header_list_size as usize);
        if self.decoder.decode(&block, |name, value| fields.field(name, value)).is_err() {
            return self.go_away(Reason::Compression);
        }
        if let Some(index) = self.find(id) {
            return self.on_trailers(index, end_stream, fields);
        }
        if id <= self.max_id {
            let closed = self.closed.contains(&id);
            return self.go_away(if closed { Reason::StreamClosed } else { Reason::Protocol });
        }
        self.max_id = id;
        if dependency == Some(id) {
            return self.stream_error(id, Reason::Protocol);
        }
        if self.ending != Ending::Running || self.active >= self.config.max_concurrent_streams as usize {
            self.out_rst(id, Reason::RefusedStream);
            return;
        }
        if fields.too_large {
            // Answered without the handler, as hyper's server does.
            self.out.block.clear();
            hpack::encode_status(&mut self.out.block, 431);
            frame::headers(&mut self.out.buf, id, &self.out.block, true, self.out.max_frame);
            if !end_stream {
                self.out_rst(id, Reason::NoError);
            } else {
                self.remember_closed(id);
            }
            return;
        }
        let (req, length) = match request::build(fields, end_stream) {
            Ok(built) => built,
            Err(why) => {
                tracing::debug!(why, "malformed h2 request");
                return self.stream_error(id, Reason::Protocol);
            }
        };
        let index = self.slot();
        let waker = self.slots[index].waker.clone();
        let recv = (!end_stream).then(|| {
            let recv = Arc::new(Recv::default());
            recv.lock().conn = Some(waker);
            recv
        });
        let head_only = req.method() == http::Method::HEAD;
        let req = req.map(|()| RecvBody::new(recv.clone(), if end_stream { Some(0) } else { length }));
        let future = Recycled::with(|| self.handler.call(req));
        self.slots[index].stream = Some(Stream {
            id,
            send: Send::Handling(future),
            recv,
            recv_open: !end_stream,
            recv_window: self.config.stream_window as i64,
            recv_release: 0,
            unread: 0,
            length,
            received: 0,
            send_window: self.peer_window as i64,
            pending: None,
            pending_end: false,
            blocked: false,
            answered: false,
            head_only,
        });
        self.active += 1;
        self.idle_since = None;
        self.mark_ready(index);
        self.again = true;
    }

    /// A header block on an open stream: its trailers.
    fn on_trailers(&mut self, index: usize, end_stream: bool, fields: Fields) {
        let stream = self.slots[index].stream.as_mut().expect("found");
        let id = stream.id;
        if !stream.recv_open {
            return self.stream_error(id, Reason::StreamClosed);
        }
        if !end_stream {
            return self.stream_error(id, Reason::Protocol);
        }
        let trailers = match request::trailers(fields) {
            Ok(trailers) => trailers,
            Err(_) => return self.stream_error(id, Reason::Protocol),
        };
        if stream.length.is_some_and(|n| n != stream.received) {
            if let Some(recv) = &stream.recv {
                recv.lock()
                    .fail(std::io::ErrorKind::InvalidData, "the body does not match its content-length");
            }
            return self.stream_error(id, Reason::Protocol);
        }
        stream.recv_open = false;
        if let Some(recv) = stream.recv.take() {
            let mut state = recv.lock();
            if !trailers.is_empty() {
                state.trailers = Some(trailers);
            }
            state.end = true;
            state.wake_reader();
        }
        self.end_recv(index);
    }

    /// The client ended its side of the stream: closed if the response is sent.
    fn end_recv(&mut self, index: usize) {
        if matches!(self.slots[index].stream.as_ref().map(|s| &s.send), Some(Send::Done)) {
            self.close(index, None);
        }
    }

    /// Marks a slot to be polled in the next pass, as its waker would.
    fn mark_ready(&self, index: usize) {
        self.slots[index].wake.queued.store(true, Release);
        self.queue.pending.store(true, Release);
    }

    /// Polls the streams whose slots are marked ready.
    fn poll_streams(&mut self) {
        if !self.queue.pending.swap(false, AcqRel) {
            return;
        }
        for index in 0..self.slots.len() {
            // Unmarked before the poll: a wake during it marks the slot again.
            if self.slots[index].wake.queued.swap(false, AcqRel) {
                self.poll_stream(index);
            }
        }
    }

    fn poll_stream(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let Some(stream) = slot.stream.as_mut() else { return };
        let mut cx = Context::from_waker(&slot.waker);
        // Window for what the handler read.
        if let Some(recv) = &stream.recv {
            let consumed = std::mem::take(&mut recv.lock().consumed);
            if consumed > 0 {
                stream.unread -= consumed.min(stream.unread);
                stream.recv_release += consumed as u32;
                self.recv_release += consumed as u32;
                if stream.recv_open && stream.recv_release >= self.config.stream_window / 2 {
                    frame::window_update(&mut self.out.buf, stream.id, stream.recv_release);
                    stream.recv_window += stream.recv_release as i64;
                    stream.recv_release = 0;
                }
            }
        }
        if let Send::Handling(future) = &mut stream.send {
            let Poll::Ready(response) = Pin::new(future).poll(&mut cx) else {
                self.release_conn();
                return;
            };
            stream.send = Send::Done;
            respond(&mut self.out, stream, response);
            if stream.answered {
                self.resets = self.resets.saturating_sub(1);
            }
        }
        if let Send::Body(_) = stream.send {
            if let Err(reason) = send_body(&mut self.out, stream, &mut cx) {
                let id = stream.id;
                frame::rst_stream(&mut self.out.buf, id, reason);
                self.close(index, Some((std::io::ErrorKind::ConnectionAborted, "the response failed")));
                self.release_conn();
                return;
            }
        }
        let Some(stream) = self.slots[index].stream.as_ref() else { return };
        if let Send::Done = stream.send {
            if stream.recv_open {
                // Answered before the body ended: the client need not send the rest
                // (RFC 9113 §8.1).
                frame::rst_stream(&mut self.out.buf, stream.id, Reason::NoError);
            }
            self.close(index, Some((std::io::ErrorKind::ConnectionReset, "the stream was answered")));
        }
        self.release_conn();
    }

    /// Gives back the connection window the handlers read, once it is worth a frame.
    fn release_conn(&mut self) {
        if self.recv_release >= self.config.conn_window / 2 && self.ending != Ending::Closing {
            frame::window_update(&mut self.out.buf, 0, self.recv_release);
            self.recv_window += self.recv_release as i64;
            self.recv_release = 0;
        }
    }

    /// Closes the stream in `index`: its future and body are dropped, and a body
    /// still read gets `error`.
    fn close(&mut self, index: usize, error: Option<(std::io::ErrorKind, &'static str)>) {
        let Some(stream) = self.slots[index].stream.take() else { return };
        if let (Some(recv), Some((kind, why))) = (&stream.recv, error) {
            let mut state = recv.lock();
            state.conn = None;
            state.fail(kind, why);
        }
        // What was queued for the handler and not given back yet.
        self.recv_release = self.recv_release.saturating_add(stream.unread as u32);
        self.remember_closed(stream.id);
        self.free.push(index);
        self.active -= 1;
        if self.active == 0 {
            self.idle_since = Some(Instant::now());
        }
        drop(stream);
    }

    fn remember_closed(&mut self, id: u32) {
        self.closed[self.closed_at] = id;
        self.closed_at = (self.closed_at + 1) % CLOSED_KEPT;
    }

    /// A free slot, with its waker.
    fn slot(&mut self) -> usize {
        if let Some(index) = self.free.pop() {
            return index;
        }
        let index = self.slots.len();
        let wake = Arc::new(SlotWake { queued: AtomicBool::new(false), queue: self.queue.clone() });
        let waker = Waker::from(wake.clone());
        self.slots.push(Slot { stream: None, wake, waker });
        index
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.slots.iter().position(|slot| slot.stream.as_ref().is_some_and(|s| s.id == id))
    }

    /// A stream's error (RFC 9113 §5.4.2): RST_STREAM, and the stream closes.
    fn stream_error(&mut self, id: u32, reason: Reason) {
        self.local_errors += 1;
        if self.local_errors > self.config.max_local_errors {
            return self.go_away(Reason::EnhanceYourCalm);
        }
        self.out_rst(id, reason);
        if let Some(index) = self.find(id) {
            self.close(index, Some((std::io::ErrorKind::InvalidData, "the client broke the stream")));
        }
        self.max_id = self.max_id.max(id);
    }

    fn out_rst(&mut self, id: u32, reason: Reason) {
        frame::rst_stream(&mut self.out.buf, id, reason);
        self.remember_closed(id);
        self.max_id = self.max_id.max(id);
    }

    /// GOAWAY: with an error the connection closes once it is written; without, the
    /// open streams finish first.
    fn go_away(&mut self, reason: Reason) {
        if self.ending == Ending::Closing {
            return;
        }
        if reason != Reason::NoError || !self.goaway_sent {
            frame::goaway(&mut self.out.buf, self.max_id, reason);
            self.goaway_sent = true;
        }
        self.ending = if reason == Reason::NoError { Ending::Draining } else { Ending::Closing };
        if reason != Reason::NoError {
            tracing::debug!(?reason, "h2 connection error");
        }
        self.again = true;
    }

    /// Writes the output; `Ready(Ok)` once all is written.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let was_full = self.out.full();
        while self.out.written < self.out.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out.buf[self.out.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // What the client took goes: frames made while it reads are
                    // appended after the rest, and the buffer stays about
                    // `OUT_HIGH` whatever the response's size.
                    if self.out.written > 0 {
                        self.out.buf.drain(..self.out.written);
                        self.out.written = 0;
                    }
                    if was_full && !self.out.full() {
                        self.unblock();
                    }
                    return Poll::Pending;
                }
            }
        }
        self.out.buf.clear();
        self.out.written = 0;
        if self.active == 0 && self.out.buf.capacity() > OUT_KEEP {
            self.out.buf.shrink_to(OUT_KEEP);
        }
        if was_full {
            self.unblock();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Output room again: the streams that waited for it are polled.
    fn unblock(&mut self) {
        for slot in &mut self.slots {
            if let Some(stream) = slot.stream.as_mut().filter(|s| matches!(s.send, Send::Body(_))) {
                stream.blocked = false;
                slot.wake.queued.store(true, Release);
                self.queue.pending.store(true, Release);
            }
        }
        self.again = true;
    }

    /// The connection ends: every stream's handler is dropped, and bodies still read
    /// get `why`.
    fn abort_all(&mut self, why: &'static str) {
        for index in 0..self.slots.len() {
            if self.slots[index].stream.is_some() {
                self.close(index, Some((std::io::ErrorKind::ConnectionAborted, why)));
            }
        }
    }
}

/// Whether a response field is one HTTP/2 forbids (RFC 9113 §8.2.2).
fn connection_specific(name: &header::HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Writes a response's HEADERS, and makes its body the stream's to send.
fn respond<H: Handler>(out: &mut Out, stream: &mut Stream<H>, response: Response<H::Body>) {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let bodiless = stream.head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let block = &mut out.block;
    block.clear();
    hpack::encode_status(block, status.as_u16());
    for (name, value) in &parts.headers {
        if connection_specific(name) {
            continue;
        }
        hpack::encode_field(block, name.as_str(), value.as_bytes(), value.is_sensitive());
    }
    if !parts.headers.contains_key(header::CONTENT_LENGTH) && !bodiless {
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            let mut digits = itoa::Buffer::new();
            hpack::encode_field(block, "content-length", digits.format(n).as_bytes(), false);
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        hpack::encode_field(block, "date", out.date.now(), false);
    }
    let end = bodiless || http_body::Body::is_end_stream(&body);
    frame::headers(&mut out.buf, stream.id, &out.block, end, out.max_frame);
    stream.answered = true;
    stream.send = if end { Send::Done } else { Send::Body(body) };
}

/// Sends what the stream's body has, within the windows; `Err`: reset the stream.
fn send_body<H: Handler>(out: &mut Out, stream: &mut Stream<H>, cx: &mut Context<'_>) -> Result<(), Reason> {
    loop {
        if out.full() {
            stream.blocked = true;
            return Ok(());
        }
        if let Some(data) = &mut stream.pending {
            if data.is_empty() && stream.pending_end {
                frame::data(&mut out.buf, stream.id, &[], true);
                stream.pending = None;
                stream.send = Send::Done;
                return Ok(());
            }
            let room = stream.send_window.min(out.window).min(out.max_frame as i64);
            if room <= 0 {
                stream.blocked = true;
                return Ok(());
            }
            let n = (room as usize).min(data.len());
            let chunk = data.split_to(n);
            let end = data.is_empty() && stream.pending_end;
            frame::data(&mut out.buf, stream.id, &chunk, end);
            stream.send_window -= n as i64;
            out.window -= n as i64;
            if data.is_empty() {
                stream.pending = None;
                if end {
                    stream.send = Send::Done;
                    return Ok(());
                }
            }
            continue;
        }
        let Send::Body(body) = &mut stream.send else { return Ok(()) };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return Ok(()),
            Poll::Ready(None) => {
                stream.pending = Some(Bytes::new());
                stream.pending_end = true;
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "h2 response body failed");
                stream.send = Send::Done;
                return Err(Reason::Internal);
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let end = http_body::Body::is_end_stream(&*body);
                    if data.is_empty() && !end {
                        continue;
                    }
                    stream.pending = Some(data);
                    stream.pending_end = end;
                }
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else { continue };
                    write_trailers(out, stream.id, &trailers);
                    stream.send = Send::Done;
                    return Ok(());
                }
            },
        }
    }
}

fn write_trailers(out: &mut Out, id: u32, trailers: &HeaderMap) {
    out.block.clear();
    for (name, value) in trailers {
        if connection_specific(name) {
            continue;
        }
        hpack::encode_field(&mut out.block, name.as_str(), value.as_bytes(), value.is_sensitive());
    }
    frame::headers(&mut out.buf, id, &out.block, true, out.max_frame);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

    fn never(never: std::convert::Infallible) -> BoxError {
        match never {}
    }

    fn full(bytes: &'static [u8]) -> TestBody {
        Full::new(Bytes::from_static(bytes)).map_err(never).boxed_unsync()
    }

    /// Serves one connection with `handler` beside `client`, which gets the address
    /// and the `stop` sender; returns what `client` returns, and whether the server
    /// ended by itself first.
    async fn run<H, C, F, T>(config: Config, handler: H, client: C) -> T
    where
        H: Handler,
        C: FnOnce(std::net::SocketAddr, tokio::sync::watch::Sender<bool>) -> F,
        F: Future<Output = T>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let server = async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream, BytesMut::new(), config, stop, handler).await;
        };
        let client = client(addr, stop_tx);
        tokio::pin!(server, client);
        let mut server_done = false;
        loop {
            tokio::select! {
                out = &mut client => return out,
                () = &mut server, if !server_done => server_done = true,
            }
        }
    }

    /// A client speaking raw frames.
    struct Raw {
        io: TcpStream,
        buf: Vec<u8>,
    }

    impl Raw {
        async fn connect(addr: std::net::SocketAddr) -> Raw {
            let mut io = TcpStream::connect(addr).await.unwrap();
            let mut hello = PREFACE.to_vec();
            frame::settings(&mut hello, &[]);
            io.write_all(&hello).await.unwrap();
            Raw { io, buf: Vec::new() }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        async fn request(&mut self, stream: u32, method: &str, end_stream: bool, extra: &[(&str, &str)]) {
            let mut block = Vec::new();
            for (n, v) in [(":method", method), (":scheme", "http"), (":authority", "a"), (":path", "/")] {
                hpack::encode_field(&mut block, n, v.as_bytes(), false);
            }
            for (n, v) in extra {
                hpack::encode_field(&mut block, n, v.as_bytes(), false);
            }
            let mut out = Vec::new();
            frame::headers(&mut out, stream, &block, end_stream, 16_384);
            self.send(&out).await;
        }

        /// The next frame within `within`; `None` on a timeout or the end.
        async fn next(&mut self, within: Duration) -> Option<(Head, Vec<u8>)> {
            let read = async {
                loop {
                    if self.buf.len() >= 9 {
                        let head = Head::parse(&self.buf);
                        let end = 9 + head.len as usize;
                        if self.buf.len() >= end {
                            let payload = self.buf[9..end].to_vec();
                            self.buf.drain(..end);
                            return Some((head, payload));
                        }
                    }
                    let mut chunk = [0u8; 16_384];
                    match self.io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            tokio::time::timeout(within, read).await.ok().flatten()
        }

        /// The first frame of `kind` (on `stream`, if given) within `within`.
        async fn until(
            &mut self,
            kind: u8,
            stream: Option<u32>,
            within: Duration,
        ) -> Option<(Head, Vec<u8>)> {
            let deadline = Instant::now() + within;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let (head, payload) = self.next(left).await?;
                if head.kind == kind && stream.is_none_or(|s| s == head.stream) {
                    return Some((head, payload));
                }
            }
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn bodies_and_trailers_go_both_ways_through_the_h2_crates_client() {
        let handler = |req: Request<RecvBody>| async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let mut echo = parts.uri.path().as_bytes().to_vec();
            echo.extend_from_slice(&collected.to_bytes());
            let frames =
                vec![Ok(http_body::Frame::data(Bytes::from(echo))), Ok(http_body::Frame::trailers(trailers))];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Response::new(BodyExt::boxed_unsync(body))
        };
        run(Config::default(), handler, |addr, _stop| async move {
            let io = TcpStream::connect(addr).await.unwrap();
            let (mut client, conn) = h2::client::handshake(io).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            for i in 0..3 {
                let req = Request::post(format!("http://a/p{i}")).body(()).unwrap();
                let (response, mut send) = client.send_request(req, false).unwrap();
                send.send_data(Bytes::from_static(b"-body"), false).unwrap();
                let mut trailers = HeaderMap::new();
                trailers.insert("x-sum", "7".parse().unwrap());
                send.send_trailers(trailers).unwrap();
                let response = response.await.unwrap();
                assert_eq!(response.status(), 200);
                assert!(response.headers().contains_key("date"));
                let mut body = response.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    got.extend_from_slice(&chunk);
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                assert_eq!(got, format!("/p{i}-body").as_bytes());
                let trailers = body.trailers().await.unwrap().unwrap();
                assert_eq!(trailers["x-sum"], "7");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn the_window_comes_back_only_as_the_handler_reads() {
        let config = Config { stream_window: 32_768, conn_window: 65_535, ..Config::default() };
        let go = Arc::new(tokio::sync::Notify::new());
        let read = go.clone();
        let handler = move |req: Request<RecvBody>| {
            let read = read.clone();
            async move {
                read.notified().await;
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), 32_768);
                Response::new(full(b"done"))
            }
        };
        run(config, handler, |addr, _stop| async move {
            let mut raw = Raw::connect(addr).await;
            raw.request(1, "POST", false, &[]).await;
            let mut out = Vec::new();
            frame::data(&mut out, 1, &[7; 16_384], false);
            frame::data(&mut out, 1, &[7; 16_384], true);
            raw.send(&out).await;
            // The stream's whole window is used, and nothing was read: no window.
            let early = raw.until(frame::WINDOW_UPDATE, None, Duration::from_millis(300)).await;
            assert!(early.is_none(), "window given back before the handler read: {early:?}");
            go.notify_one();
            // Read now: the answer, and the connection window back (the stream has
            // ended, so its own window is not).
            let (mut answered, mut window) = (false, None);
            while !answered || window.is_none() {
                let (head, payload) = raw.next(SECOND).await.expect("the answer and the window");
                match (head.kind, head.stream) {
                    (frame::HEADERS, 1) => answered = true,
                    (frame::WINDOW_UPDATE, 0) => {
                        window = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()))
                    }
                    (frame::WINDOW_UPDATE, 1) => panic!("a window for an ended stream"),
                    _ => {}
                }
            }
            assert_eq!(window, Some(32_768));
        })
        .await;
    }

    #[tokio::test]
    async fn data_waits_for_the_peers_window() {
        let handler = |_req: Request<RecvBody>| async move { Response::new(full(b"0123456789")) };
        run(Config::default(), handler, |addr, _stop| async move {
            let mut raw = Raw::connect(addr).await;
            // A stream window of 4 bytes.
            let mut out = Vec::new();
            frame::settings(&mut out, &[(frame::SETTINGS_INITIAL_WINDOW_SIZE, 4)]);
            raw.send(&out).await;
            raw.request(1, "GET", true, &[]).await;
            let (head, payload) = raw.until(frame::DATA, Some(1), SECOND).await.unwrap();
            assert_eq!((payload.as_slice(), head.flags & frame::END_STREAM), (&b"0123"[..], 0));
            assert!(raw.until(frame::DATA, Some(1), Duration::from_millis(200)).await.is_none());
            let mut out = Vec::new();
            frame::window_update(&mut out, 1, 100);
            raw.send(&out).await;
            let (head, payload) = raw.until(frame::DATA, Some(1), SECOND).await.unwrap();
            assert_eq!(
                (payload.as_slice(), head.flags & frame::END_STREAM),
                (&b"456789"[..], frame::END_STREAM)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn stop_sends_goaway_and_the_open_stream_finishes() {
        let config = Config { stop_grace: Duration::from_millis(10), ..Config::default() };
        let go = Arc::new(tokio::sync::Notify::new());
        let answer = go.clone();
        let handler = move |_req: Request<RecvBody>| {
            let answer = answer.clone();
            async move {
                answer.notified().await;
                Response::new(full(b"late"))
            }
        };
        run(config, handler, |addr, stop| async move {
            let mut raw = Raw::connect(addr).await;
            raw.request(1, "GET", true, &[]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.send(true).unwrap();
            let (_, payload) = raw.until(frame::GOAWAY, None, SECOND).await.expect("GOAWAY");
            assert_eq!(&payload[..8], &[0, 0, 0, 1, 0, 0, 0, 0], "last stream 1, NO_ERROR");
            // A stream after the GOAWAY is refused.
            raw.request(3, "GET", true, &[]).await;
            let (_, payload) = raw.until(frame::RST_STREAM, Some(3), SECOND).await.expect("refused");
            assert_eq!(payload, (Reason::RefusedStream as u32).to_be_bytes());
            go.notify_one();
            let (_, payload) =
                raw.until(frame::DATA, Some(1), SECOND).await.expect("the open stream is answered");
            assert_eq!(payload, b"late");
            assert!(raw.next(SECOND).await.is_none(), "then the connection closes");
        })
        .await;
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_silent_one_is_pinged() {
        let config = Config {
            idle_timeout: Duration::from_millis(200),
            keep_alive: Duration::from_millis(100),
            ..Config::default()
        };
        let handler = |_req: Request<RecvBody>| std::future::pending::<Response<TestBody>>();
        run(config, handler, |addr, _stop| async move {
            let mut raw = Raw::connect(addr).await;
            let (_, payload) = raw.until(frame::GOAWAY, None, SECOND).await.expect("idle GOAWAY");
            assert_eq!(&payload[4..8], &[0, 0, 0, 0]);
            assert!(raw.next(SECOND).await.is_none());
        })
        .await;
        // A stream open, the client silent: PING, then the connection closes.
        let handler = |_req: Request<RecvBody>| std::future::pending::<Response<TestBody>>();
        run(config, handler, |addr, _stop| async move {
            let mut raw = Raw::connect(addr).await;
            raw.request(1, "GET", true, &[]).await;
            assert!(raw.until(frame::PING, None, SECOND).await.is_some());
            assert!(raw.until(frame::GOAWAY, None, SECOND).await.is_none(), "closed without an answer");
        })
        .await
    }

    #[tokio::test]
    async fn rapid_resets_get_enhance_your_calm() {
        let started = Arc::new(AtomicUsize::new(0));
        let count = started.clone();
        let handler = move |_req: Request<RecvBody>| {
            count.fetch_add(1, Relaxed);
            std::future::pending::<Response<TestBody>>()
        };
        run(Config::default(), handler, |addr, _stop| async move {
            let mut raw = Raw::connect(addr).await;
            for i in 0..100u32 {
                let id = 2 * i + 1;
                raw.request(id, "GET", true, &[]).await;
                let mut out = Vec::new();
                frame::rst_stream(&mut out, id, Reason::Cancel);
                raw.send(&out).await;
            }
            let (_, payload) = raw.until(frame::GOAWAY, None, SECOND).await.expect("GOAWAY");
            assert_eq!(&payload[4..8], &(Reason::EnhanceYourCalm as u32).to_be_bytes());
        })
        .await;
        assert!(started.load(Relaxed) <= 66, "{} handlers started", started.load(Relaxed));
    }

    #[tokio::test]
    async fn streams_past_the_limit_are_refused_and_reset_ones_are_cancelled() {
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let config = Config { max_concurrent_streams: 1, ..Config::default() };
        let handler = move |_req: Request<RecvBody>| {
            let guard = Dropped(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<Response<TestBody>>().await
            }
        };
        run(config, handler, |addr, _stop| async move {
            let mut raw = Raw::connect(addr).await;
            raw.request(1, "GET", true, &[]).await;
            raw.request(3, "GET", true, &[]).await;
            let (_, payload) = raw.until(frame::RST_STREAM, Some(3), SECOND).await.expect("refused");
            assert_eq!(payload, (Reason::RefusedStream as u32).to_be_bytes());
            assert!(!dropped.load(Relaxed));
            let mut out = Vec::new();
            frame::rst_stream(&mut out, 1, Reason::Cancel);
            raw.send(&out).await;
            // The connection's PING answer comes after the reset is handled.
            let mut out = Vec::new();
            frame::ping(&mut out, false, *b"12345678");
            raw.send(&out).await;
            assert!(raw.until(frame::PING, None, SECOND).await.is_some());
            assert!(dropped.load(Relaxed), "the reset stream's handler was dropped");
        })
        .await;
    }

    #[tokio::test]
    async fn large_heads_get_431_and_failed_bodies_reset_their_stream() {
        struct Failing(bool);
        impl http_body::Body for Failing {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
                if std::mem::replace(&mut self.0, true) {
                    return Poll::Ready(Some(Err("the upstream went away".into())));
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"part")))))
            }
        }
        let config = Config { max_header_list_size: 1024, ..Config::default() };
        let handler = |_req: Request<RecvBody>| async move { Response::new(Failing(false)) };
        run(config, handler, |addr, _stop| async move {
            let mut raw = Raw::connect(addr).await;
            let long = "v".repeat(2000);
            raw.request(1, "GET", true, &[("x-long", &long)]).await;
            let (_, block) = raw.until(frame::HEADERS, Some(1), SECOND).await.expect("an answer");
            let mut fields = Vec::new();
            Decoder::new(4096).decode(&Bytes::from(block), |n, v| fields.push((n.to_vec(), v))).unwrap();
            assert_eq!(fields[0], (b":status".to_vec(), Bytes::from_static(b"431")));
            raw.request(3, "GET", true, &[]).await;
            let (_, payload) = raw.until(frame::RST_STREAM, Some(3), SECOND).await.expect("reset");
            assert_eq!(payload, (Reason::Internal as u32).to_be_bytes());
        })
        .await;
    }

    /// Counts the writes a connection tries.
    struct Counting<I> {
        io: I,
        writes: Arc<AtomicUsize>,
    }

    impl<I: AsyncRead + Unpin> AsyncRead for Counting<I> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<I: AsyncWrite + Unpin> AsyncWrite for Counting<I> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Relaxed);
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A client's preface with windows as large as they go, and one GET on stream 1.
    fn hello_with_a_get() -> Vec<u8> {
        let mut hello = PREFACE.to_vec();
        frame::settings(&mut hello, &[(frame::SETTINGS_INITIAL_WINDOW_SIZE, frame::MAX_WINDOW)]);
        frame::window_update(&mut hello, 0, frame::MAX_WINDOW - frame::DEFAULT_WINDOW);
        let mut block = Vec::new();
        for (n, v) in [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")] {
            hpack::encode_field(&mut block, n, v.as_bytes(), false);
        }
        frame::headers(&mut hello, 1, &block, true, 16_384);
        hello
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_waited_for_without_a_spin() {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let writes = Arc::new(AtomicUsize::new(0));
        let io = Counting { io: server, writes: writes.clone() };
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let big: &'static [u8] = Box::leak(vec![b'x'; 4 << 20].into_boxed_slice());
        let handler = move |_req: Request<RecvBody>| async move { Response::new(full(big)) };
        let serve = serve(io, BytesMut::new(), Config::default(), stop, handler);
        let client = async {
            let hello = hello_with_a_get();
            client.write_all(&hello).await.unwrap();
            // The response fills the output; frames still come from the client.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let before = writes.load(Relaxed);
            for _ in 0..50 {
                let mut ping = Vec::new();
                frame::ping(&mut ping, false, *b"12345678");
                client.write_all(&ping).await.unwrap();
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            writes.load(Relaxed) - before
        };
        tokio::pin!(serve);
        let tried = tokio::select! {
            tried = client => tried,
            () = &mut serve => panic!("the connection ended"),
        };
        assert!(tried < 500, "{tried} writes tried while the client read nothing");
    }

    #[tokio::test]
    async fn a_connection_gives_back_its_output_buffer_once_no_stream_is_open() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let big: &'static [u8] = Box::leak(vec![b'x'; 1 << 20].into_boxed_slice());
        let handler = move |_req: Request<RecvBody>| async move { Response::new(full(big)) };
        let mut conn = Conn::new(server, BytesMut::new(), Config::default(), handler);
        let mut grown = 0;
        {
            let drive = poll_fn(|cx| {
                let polled = conn.poll(cx);
                grown = grown.max(conn.out.buf.capacity());
                polled
            });
            let read = async {
                let hello = hello_with_a_get();
                client.write_all(&hello).await.unwrap();
                let mut buf = Vec::new();
                let mut got = 0;
                loop {
                    let mut chunk = vec![0; 1 << 16];
                    let n = client.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    while buf.len() >= 9 && buf.len() >= 9 + Head::parse(&buf).len as usize {
                        let head = Head::parse(&buf);
                        buf.drain(..9 + head.len as usize);
                        if head.kind == frame::DATA {
                            got += head.len as usize;
                            if head.flags & frame::END_STREAM != 0 {
                                return got;
                            }
                        }
                    }
                }
            };
            tokio::pin!(drive, read);
            let got = tokio::select! {
                got = &mut read => got,
                () = &mut drive => panic!("the connection ended"),
            };
            assert_eq!(got, 1 << 20);
            // The last frames' write is done by the time the client has read them.
            tokio::time::timeout(Duration::from_millis(50), &mut drive).await.ok();
        }
        assert!(grown > OUT_HIGH, "the response grew the buffer to {grown}");
        // Never much past `OUT_HIGH` (a frame, and what the allocator rounds to),
        // however large the response.
        assert!(grown <= 4 * OUT_HIGH, "the response grew the buffer to {grown}");
        assert_eq!(conn.active, 0);
        assert!(conn.out.buf.capacity() <= OUT_KEEP, "kept {} bytes", conn.out.buf.capacity());
    }
}
