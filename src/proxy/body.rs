//! `Body`: the one body type weir answers clients with, so no body is boxed: a
//! server's response as it is relayed (`upstream::body::UpstreamBody`), the same
//! through a cache's tee, or bytes weir made itself (an error page, a cache hit, a
//! route's own answer).

use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::Response;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::BoxError;
use crate::upstream::body::UpstreamBody;

/// A response body: streamed from a server, or fixed bytes made by weir.
///
/// A server's HTTP/1.1 response carries its fields in the body too, as the lines
/// weir's HTTP/1.1 client parsed them into (`UpstreamBody::encoded`), with an empty
/// header map: weir's HTTP/1.1 server writes them as they are. Like a cache hit's,
/// they move into the map (`materialize`) before anything reads or changes the
/// response's headers.
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
            Body::Upstream(up) => up.encoded(),
            _ => None,
        }
    }
}

/// Moves the header fields a cached response's body, or a server's, carries encoded
/// into the response's map (after those already there: the order of different names
/// means nothing); nothing for any other response. Whatever reads or changes a
/// response's headers calls it first.
pub fn materialize(response: &mut Response<Body>) {
    if response.body_mut().upstream_mut().is_some_and(|up| up.encoded().is_some()) {
        // Taken out and put back, as the response lends its map and its body one at
        // a time.
        let mut headers = std::mem::take(response.headers_mut());
        if let Some(up) = response.body_mut().upstream_mut() {
            up.materialize(&mut headers);
        }
        *response.headers_mut() = headers;
        return;
    }
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
            Body::Stored(s) => Poll::Ready(s.body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Upstream(up) => up.is_end_stream(),
            Body::Tee(tee) => tee.is_end_stream(),
            Body::Stored(s) => s.body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Upstream(up) => up.size_hint(),
            Body::Tee(tee) => tee.size_hint(),
            Body::Stored(s) => SizeHint::with_exact(s.body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every layer of the request path moves the response (a return, an `.await`'s
    /// output): memcpy copies up to 256 bytes with a few vector moves, larger ones
    /// with a loop that costs twice the instructions (callgrind, BENCHMARKS.md
    /// session 4). Keep what `UpstreamBody` holds to a pointer where it is rare.
    #[test]
    fn a_response_fits_memcpys_short_path() {
        assert!(std::mem::size_of::<Response<Body>>() <= 256, "{}", std::mem::size_of::<Response<Body>>());
    }
}
