//! `Body`: the one body type weir answers clients with, so no body is boxed: a
//! server's response as it is relayed (`upstream::body::UpstreamBody`), the same
//! through a cache's tee, or bytes weir made itself (an error page, a cache hit, a
//! route's own answer).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::BoxError;
use crate::upstream::body::UpstreamBody;

/// A response body: streamed from a server, or fixed bytes made by weir.
// Most responses are the large `Upstream` variant; boxing it would allocate once per
// response to save bytes only on weir's own small answers.
#[allow(clippy::large_enum_variant)]
#[derive(Default)]
pub enum Body {
    #[default]
    Empty,
    Full(Option<Bytes>),
    /// An upstream's response body on its way to the client.
    Upstream(UpstreamBody),
    /// An upstream's response body on its way to the client and into a cache.
    Tee(Box<crate::cache::Tee<Body>>),
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

/// Keeps `slot` until `response`'s body ends. A response weir made itself (an error)
/// is complete already, and an upgraded connection is no longer a request in flight,
/// so for those the slot is released at once.
pub fn hold_slot(response: &mut http::Response<Body>, slot: OwnedSemaphorePermit) {
    if let Body::Upstream(UpstreamBody { release: Some(release), .. }) = response.body_mut() {
        release.slot = Some(slot);
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
            Body::Upstream(up) => Pin::new(up).poll_frame(cx),
            Body::Tee(tee) => tee.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Upstream(up) => up.is_end_stream(),
            Body::Tee(tee) => tee.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Upstream(up) => up.size_hint(),
            Body::Tee(tee) => tee.size_hint(),
        }
    }
}
