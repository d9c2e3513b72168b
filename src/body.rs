//! The request bodies weir relays, below the pipeline and the pool so both can
//! name them: what a client sends (`ClientBody`, from either server), how it is held
//! to its route's limits on the way up (`RequestBody`, `BodyWatch`, `ClientFault`),
//! and what weir sends to a server (`Outbound`: a client's body, or bytes weir made
//! itself). `Pause` is the idle limit both directions use.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

pub use crate::http::BoxError;

/// The body of a request weir sends to a server: a client's, or one weir made itself
/// (a cache refresh, a health check), which is empty or fixed bytes.
#[derive(Default)]
pub enum Outbound {
    #[default]
    Empty,
    Full(Option<Bytes>),
    /// A client's body with nothing to count or limit (it is already complete).
    Client(ClientBody),
    /// A client's body with content, counted and held to its limits on its way up.
    Request(RequestBody),
}

impl From<Bytes> for Outbound {
    fn from(bytes: Bytes) -> Outbound {
        Outbound::Full(Some(bytes))
    }
}

impl http_body::Body for Outbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Outbound::Empty => Poll::Ready(None),
            Outbound::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Outbound::Client(inner) => Pin::new(inner).poll_frame(cx),
            Outbound::Request(req) => req.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outbound::Empty => true,
            Outbound::Full(bytes) => bytes.is_none(),
            Outbound::Client(inner) => inner.is_end_stream(),
            Outbound::Request(req) => req.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outbound::Empty => SizeHint::with_exact(0),
            Outbound::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Outbound::Client(inner) => inner.size_hint(),
            Outbound::Request(req) => req.inner.size_hint(),
        }
    }
}

/// A client's request body, from whichever server read the request: hyper's
/// (HTTP/1.1 over TLS), weir's own HTTP/1.1 server (`http::h1`) or weir's own h2
/// server (`http::h2`). One type, so all feed the same pipeline.
pub enum ClientBody {
    /// No body (weir's server makes none for a bodyless request).
    Empty,
    /// From hyper's HTTP/1.1 server (TLS connections without h2).
    Hyper(Incoming),
    H1(crate::http::h1::body::Body),
    /// From weir's h2 server.
    H2(crate::http::h2::RecvBody),
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
            ClientBody::H2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::H1(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
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
                    crate::http::strip_forbidden_trailers(trailers);
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
