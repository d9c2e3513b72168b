//! `Body`: the one body type weir sends and answers with, so no body is boxed.
//!
//! An upstream response body carries the request's `Release`: when an HTTP/1.1 body
//! reaches its end its connection goes back to its server's pool; when it is dropped
//! early (client gone, error) the connection is closed instead. Either way the in-flight
//! count is released exactly once, because `Release` owns the `InFlight` guard.
//!
//! Bytes are counted as frames pass: a request body with content is wrapped in
//! `RequestBody`, which adds to its upstream's `weir_request_bytes_total`; an upstream
//! response body adds to `weir_response_bytes_total` through its server's handle. Both
//! also keep the per-request tallies the access log needs; the response's log entry
//! rides here and is written when the body is dropped, by then complete or cut short.
//!
//! A `RequestBody` also has an idle limit: a client that stops sending its body for
//! longer than the listener's `body_read_timeout` gets its request cut, so a slow
//! body cannot hold an upstream connection (and its in-flight slot) forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntCounter;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::client::Sender;
use super::h1;
use crate::access_log::Pending;
use crate::upstream::{InFlight, Server};

/// Errors a body can yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: streamed from a peer, or fixed bytes made by weir.
#[derive(Default)]
pub enum Body {
    #[default]
    Empty,
    Full(Option<Bytes>),
    /// A client's request body on its way upstream.
    Client(ClientBody),
    /// A client's request body with content, counted on its way upstream.
    Request(RequestBody),
    /// An upstream's response body on its way to the client.
    Upstream(UpstreamBody),
    /// An upstream's response body on its way to the client and into a cache.
    Tee(Box<crate::cache::Tee<Body>>),
    /// A response the cache answered, with its stored header fields.
    Stored(Stored),
}

/// A cached response's body, and its header fields as the cache stored them:
/// encoded once, when stored, so weir's HTTP/1.1 server writes them as they are
/// (`ResponseBody::encoded`) and a hit builds no header map. Whatever needs the
/// response's headers as a map (header rules, hyper's servers) calls `materialize`
/// first.
pub struct Stored {
    /// `name: value\r\n` lines, no framing or hop-by-hop field but `Content-Length`.
    pub fields: Bytes,
    /// How many.
    pub count: u16,
    /// `fields` hold a `Date`.
    pub date: bool,
    /// The `Content-Length` in `fields`.
    pub length: Option<u64>,
    /// `None` for a `HEAD`, and once sent.
    pub body: Option<Bytes>,
}

impl crate::http::h1::conn::ResponseBody for Body {
    fn encoded(&self) -> Option<crate::http::h1::server::Encoded<'_>> {
        match self {
            Body::Stored(s) if !s.fields.is_empty() => {
                Some(crate::http::h1::server::Encoded { fields: &s.fields, date: s.date, length: s.length })
            }
            _ => None,
        }
    }
}

/// Moves the header fields a cached response's body carries encoded into the
/// response's map (after those already there: the order of different names means
/// nothing); nothing for any other response.
pub fn materialize(response: &mut Response<Body>) {
    let Body::Stored(stored) = response.body_mut() else { return };
    if stored.fields.is_empty() {
        return;
    }
    let (fields, count) = (std::mem::take(&mut stored.fields), usize::from(stored.count));
    let headers = response.headers_mut();
    headers.reserve(count);
    for (name, value) in crate::cache::store::fields(&fields) {
        // Stored from a valid map: a name cannot fail.
        let Ok(name) = HeaderName::from_bytes(name) else { continue };
        // SAFETY: the bytes were a `HeaderValue`'s when the fields were stored
        // (`cache::store::Entry::new`), so they are a valid value.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(fields.slice_ref(value)) };
        headers.append(name, value);
    }
}

impl Body {
    /// A body of static bytes, e.g. an error page.
    pub fn from_static(bytes: &'static [u8]) -> Body {
        Body::Full(Some(Bytes::from_static(bytes)))
    }

    /// The upstream body inside, also through a cache's tee.
    pub fn upstream_mut(&mut self) -> Option<&mut UpstreamBody> {
        match self {
            Body::Upstream(body) => Some(body),
            Body::Tee(tee) => tee.inner_mut().upstream_mut(),
            _ => None,
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body::Full(Some(bytes))
    }
}

/// A client's request body, from whichever server read the request: hyper's (h2,
/// TLS) or weir's own HTTP/1.1 server (`http::h1`). One type, so both feed the
/// same `proxy::handle`.
pub enum ClientBody {
    /// No body (weir's server makes none for a bodyless request).
    Empty,
    Hyper(Incoming),
    H1(crate::http::h1::body::Body),
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ClientBody::H1(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::H1(body) => body.size_hint(),
        }
    }
}

/// A client's request body that counts the bytes it forwards, ends with
/// `BodyTimeout` when no frame arrives for `idle`, and with `BodyTooLarge` past its
/// route's `max_request_body`. Whatever ends it early is noted in its `BodyWatch`.
pub struct RequestBody {
    pub(crate) inner: ClientBody,
    /// The upstream's `weir_request_bytes_total`.
    pub(crate) bytes: IntCounter,
    /// This request's own count, for the access log.
    pub(crate) tally: Option<Arc<AtomicU64>>,
    /// The listener's `body_read_timeout`.
    pause: Pause,
    /// Where the body says how it is doing, and the route's `max_request_body`: the
    /// frame that would cross the limit is not forwarded; the body ends with
    /// `BodyTooLarge` instead, so the upstream never gets more than the limit.
    pub(crate) watch: Arc<BodyWatch>,
    pub(crate) received: u64,
}

/// How a client's request body ended when it ended early: the client's fault, never
/// the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Crossed the route's `max_request_body` (`413`).
    TooLarge,
    /// Broken framing, such as a bad chunk (`400`).
    Malformed,
    /// No bytes for the listener's `body_read_timeout` (`408`).
    Stalled,
    /// The client went away mid-body (`499`, for the log and metrics only).
    Aborted,
}

/// One request body's fate, shared between the body, which notes it, and `forward`,
/// which reads it when an exchange fails: a failure the client caused is answered and
/// counted as the client's, however the upstream protocol reports the cut (weir's
/// HTTP/1.1 client returns the body's error, hyper's h2 client resets the stream).
#[derive(Debug)]
pub struct BodyWatch {
    /// The route's `max_request_body`.
    pub max: Option<u64>,
    /// `FAULT_NONE` or a `ClientFault` as `fault_code` numbers it.
    fault: AtomicU8,
    /// The body last had to wait for the client (its last poll was pending): a
    /// timeout now is the client's stall, not the server's.
    waiting: AtomicBool,
}

const FAULT_NONE: u8 = 0;

impl BodyWatch {
    pub fn new(max: Option<u64>) -> BodyWatch {
        BodyWatch { max, fault: AtomicU8::new(FAULT_NONE), waiting: AtomicBool::new(false) }
    }

    /// What the client did wrong, if its body ended early.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.fault.load(Relaxed) {
            1 => Some(ClientFault::TooLarge),
            2 => Some(ClientFault::Malformed),
            3 => Some(ClientFault::Stalled),
            4 => Some(ClientFault::Aborted),
            _ => None,
        }
    }

    /// Whether the body is stuck on the client: it has not ended and its last poll
    /// waited for the client's next bytes.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting.load(Relaxed)
    }

    fn note(&self, fault: ClientFault) {
        let code = match fault {
            ClientFault::TooLarge => 1,
            ClientFault::Malformed => 2,
            ClientFault::Stalled => 3,
            ClientFault::Aborted => 4,
        };
        // The first fault is the cause; what follows is its echo.
        let _ = self.fault.compare_exchange(FAULT_NONE, code, Relaxed, Relaxed);
    }
}

/// A request body crossed its route's `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The server sent no response body data within its upstream's `read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("server sent no response body data for {0:?}")]
pub struct ReadTimeout(pub Duration);

/// The client sent no request body data within the listener's `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("client sent no request body data for {0:?}")]
pub struct BodyTimeout(pub Duration);

impl RequestBody {
    pub fn new(
        inner: ClientBody,
        bytes: IntCounter,
        tally: Option<Arc<AtomicU64>>,
        idle: Duration,
        watch: Arc<BodyWatch>,
    ) -> RequestBody {
        RequestBody { inner, bytes, tally, watch, received: 0, pause: Pause::new(idle) }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(mut frame))) => {
                self.watch.waiting.store(false, Relaxed);
                if let Some(trailers) = frame.trailers_mut() {
                    super::framing::strip_forbidden_trailers(trailers);
                }
                self.pause.progressed();
                let n = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                self.received = self.received.saturating_add(n);
                if let Some(max) = self.watch.max.filter(|max| self.received > *max) {
                    self.watch.note(ClientFault::TooLarge);
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: max }))));
                }
                self.bytes.inc_by(n);
                if let Some(tally) = &self.tally {
                    tally.fetch_add(n, Relaxed);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                self.watch.waiting.store(false, Relaxed);
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                self.watch.waiting.store(false, Relaxed);
                self.watch.note(classify(&*e));
                return Poll::Ready(Some(Err(e)));
            }
        }
        self.watch.waiting.store(true, Relaxed);
        ready!(self.pause.poll_expired(cx));
        self.watch.waiting.store(false, Relaxed);
        self.watch.note(ClientFault::Stalled);
        Poll::Ready(Some(Err(BodyTimeout(self.pause.limit).into())))
    }
}

/// Which fault a client body's error is: broken framing (weir's HTTP/1.1 server's
/// decoder, or hyper's, which reports it as invalid data), else the client went away
/// (a closed connection, a reset stream, an h2 body that broke its own length).
pub(crate) fn classify(error: &(dyn std::error::Error + 'static)) -> ClientFault {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return ClientFault::TooLarge;
        }
        if e.is::<BodyTimeout>() {
            return ClientFault::Stalled;
        }
        if crate::http::h1::body::is_malformed(e) {
            return ClientFault::Malformed;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                return ClientFault::Malformed;
            }
        }
        source = e.source();
    }
    ClientFault::Aborted
}

/// A limit on pauses in a stream: `poll_expired` is called when the stream has to
/// wait, and is ready once nothing moved for `limit`. The timer is made on the first
/// wait (a stream that never waits never needs one) and re-armed in place, so
/// progress allocates nothing and costs a flag.
pub(crate) struct Pause {
    pub(crate) limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// The stream moved since the timer was last armed.
    progressed: bool,
}

impl Pause {
    pub(crate) fn new(limit: Duration) -> Pause {
        Pause { limit, timer: None, progressed: false }
    }

    /// The stream moved: the next wait starts a new pause.
    pub(crate) fn progressed(&mut self) {
        self.progressed = true;
    }

    /// The stream has to wait: `Ready` once it has not moved for `limit`.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = Instant::now() + self.limit;
        let timer = match &mut self.timer {
            Some(timer) => {
                if std::mem::take(&mut self.progressed) {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx)
    }
}

/// A response body as an upstream connection delivers it.
pub enum ResponseBody {
    /// weir's own HTTP/1.1 client; the body owns its connection.
    H1(h1::Body),
    /// hyper's h2 client; the connection stays shared in the pool.
    H2(Incoming),
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::H1(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::H1(body) => body.is_end_stream(),
            ResponseBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::H1(body) => body.size_hint(),
            ResponseBody::H2(body) => body.size_hint(),
        }
    }
}

/// An upstream response body and what to release when it ends.
pub struct UpstreamBody {
    pub(crate) inner: ResponseBody,
    pub(crate) release: Option<Release>,
    /// The upstream's `read_timeout`: a server that stops sending mid-body has the
    /// response cut rather than holding the client.
    pause: Pause,
    /// Body bytes relayed so far.
    pub(crate) sent: u64,
    /// The access log entry, written when this body is dropped.
    pub(crate) log: Option<Pending>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: ResponseBody, release: Release, read_timeout: Duration) -> UpstreamBody {
        UpstreamBody { inner, release: Some(release), pause: Pause::new(read_timeout), sent: 0, log: None }
    }
}

/// What a response holds on to until its body is delivered.
pub struct Release {
    /// The server that answered, whose pool takes the connection back.
    pub(crate) server: Arc<Server>,
    pub(crate) in_flight: InFlight,
    /// The upstream's `max_in_flight` slot, if it has a limit.
    pub(crate) slot: Option<OwnedSemaphorePermit>,
}

/// Keeps `slot` until `response`'s body ends. A response weir made itself (an error)
/// is complete already, and an upgraded connection is no longer a request in flight,
/// so for those the slot is released at once.
pub fn hold_slot(response: &mut http::Response<Body>, slot: OwnedSemaphorePermit) {
    if let Body::Upstream(UpstreamBody { release: Some(release), .. }) = response.body_mut() {
        release.slot = Some(slot);
    }
}

impl UpstreamBody {
    /// Takes the in-flight guard and, from an HTTP/1.1 upstream, the connection and
    /// any bytes read past the 101, for a connection that leaves HTTP (an upgrade):
    /// it is not pooled again.
    pub fn detach(&mut self) -> (Option<InFlight>, Option<(h1::Stream, Bytes)>) {
        let conn = match &mut self.inner {
            ResponseBody::H1(body) => body.take_upgraded(),
            ResponseBody::H2(_) => None,
        };
        (self.release.take().map(|r| r.in_flight), conn)
    }

    /// The body is complete: an HTTP/1.1 connection that can carry another request
    /// goes back to its server's pool (a full pool closes it).
    fn finish(&mut self) {
        if let Some(release) = self.release.take() {
            if let ResponseBody::H1(body) = &mut self.inner {
                if let Some(conn) = body.take_reusable() {
                    let _ = release.server.state.pool.push(Sender::H1(conn));
                }
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body known to be complete may never be polled (hyper skips polling an
        // empty body), so completion is checked here too; anything else was cut short.
        if self.inner.is_end_stream() {
            self.finish();
        }
        if let Some(log) = self.log.take() {
            log.finish(self.sent);
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
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Client(inner) => Pin::new(inner).poll_frame(cx),
            Body::Request(req) => req.poll_frame(cx),
            Body::Upstream(up) => {
                let mut polled = Pin::new(&mut up.inner).poll_frame(cx);
                if polled.is_pending() && up.pause.poll_expired(cx).is_ready() {
                    polled = Poll::Ready(Some(Err(ReadTimeout(up.pause.limit).into())));
                }
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    up.pause.progressed();
                    let n = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                    up.sent += n;
                    // Counted before `finish` below takes the release.
                    if let Some(release) = &up.release {
                        release.server.metrics.response_bytes.inc_by(n);
                    }
                }
                match &polled {
                    Poll::Ready(None) => up.finish(),
                    Poll::Ready(Some(Ok(_))) if up.inner.is_end_stream() => up.finish(),
                    // An error mid-body: the connection is not reusable; dropping the
                    // release closes it.
                    Poll::Ready(Some(Err(_))) => drop(up.release.take()),
                    _ => {}
                }
                polled
            }
            Body::Tee(tee) => tee.poll_frame(cx),
            Body::Stored(s) => Poll::Ready(s.body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Client(inner) => inner.is_end_stream(),
            Body::Request(req) => req.inner.is_end_stream(),
            Body::Upstream(up) => up.inner.is_end_stream(),
            Body::Tee(tee) => tee.is_end_stream(),
            Body::Stored(s) => s.body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Client(inner) => inner.size_hint(),
            Body::Request(req) => req.inner.size_hint(),
            Body::Upstream(up) => up.inner.size_hint(),
            Body::Tee(tee) => tee.size_hint(),
            Body::Stored(s) => SizeHint::with_exact(s.body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod fault_tests {
    use super::*;

    #[test]
    fn a_client_body_error_is_classified_as_the_clients_fault() {
        let too_large: BoxError = Box::new(BodyTooLarge { limit: 1 });
        assert_eq!(classify(&*too_large), ClientFault::TooLarge);
        let stalled: BoxError = Box::new(BodyTimeout(Duration::from_secs(1)));
        assert_eq!(classify(&*stalled), ClientFault::Stalled);
        let bad: BoxError = Box::new(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk"));
        assert_eq!(classify(&*bad), ClientFault::Malformed);
        let gone: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&*gone), ClientFault::Aborted);
    }
}
