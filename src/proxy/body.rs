//! `Body`: the one body type weir sends and answers with, so no body is boxed.
//!
//! An upstream response body carries the request's `Release`: when the body reaches
//! its end the connection goes back to its server's pool; when it is dropped early
//! (client gone, error) the connection is closed instead. Either way the in-flight
//! count is released exactly once, because `Release` owns the `InFlight` guard.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

use tokio::sync::OwnedSemaphorePermit;

use crate::upstream::{InFlight, PooledConn};

/// Errors a body can yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: streamed from a peer, or fixed bytes made by weir.
pub enum Body {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body on its way upstream.
    Incoming(Incoming),
    /// An upstream's response body on its way to the client.
    Upstream(UpstreamBody),
}

impl Body {
    /// A body of static bytes, e.g. an error page.
    pub fn from_static(bytes: &'static [u8]) -> Body {
        Body::Full(Some(Bytes::from_static(bytes)))
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body::Full(Some(bytes))
    }
}

/// An upstream response body and what to release when it ends.
pub struct UpstreamBody {
    pub(crate) inner: Incoming,
    pub(crate) release: Option<Release>,
}

/// What a response holds on to until its body is delivered.
pub struct Release {
    pub(crate) conn: PooledConn,
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
    /// Takes the in-flight guard for a connection that leaves HTTP (an upgrade): the
    /// connection is not pooled again.
    pub fn detach(&mut self) -> Option<InFlight> {
        self.release.take().map(|r| r.in_flight)
    }

    fn finish(&mut self) {
        if let Some(release) = self.release.take() {
            release.conn.recycle();
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
            Body::Incoming(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            Body::Upstream(up) => {
                let polled = Pin::new(&mut up.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => up.finish(),
                    Poll::Ready(Some(Ok(_))) if up.inner.is_end_stream() => up.finish(),
                    // An error mid-body: the connection is not reusable; dropping the
                    // release closes it.
                    Poll::Ready(Some(Err(_))) => drop(up.release.take()),
                    _ => {}
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Incoming(inner) => inner.is_end_stream(),
            Body::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(inner) => inner.size_hint(),
            Body::Upstream(up) => up.inner.size_hint(),
        }
    }
}
