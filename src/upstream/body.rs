//! A server's response body as it is relayed. It holds what the request took from
//! its server until the body is delivered: the in-flight count, the upstream's
//! `max_in_flight` slot and, for HTTP/1.1, the connection itself, which goes back to
//! its server's pool when the body reaches its end and is closed when the body is
//! dropped early (client gone, error). `Release` owns the `InFlight` guard, so the
//! count is released exactly once either way.
//!
//! The body also counts the bytes it relays (the server's `weir_response_bytes_total`
//! and the access log's tally; the log entry rides here and is written when the body
//! is dropped, by then complete or cut short), and cuts a server that stops sending
//! for the upstream's `read_timeout`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use super::client::{self, Sender};
use super::InFlight;
use crate::access_log::Pending;
use crate::body::{BoxError, Pause, ReadTimeout};

/// A response body as an upstream connection delivers it.
pub enum ResponseBody {
    /// weir's own HTTP/1.1 client; the body owns its connection.
    H1(client::H1Body),
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
    /// Counts the request against the server that answered, whose pool takes the
    /// connection back (`InFlight::server`: one handle on the server, not two, keeps
    /// the response, which every layer moves, smaller).
    pub(crate) in_flight: InFlight,
    /// The upstream's `max_in_flight` slot, if it has a limit.
    pub(crate) slot: Option<OwnedSemaphorePermit>,
}

impl UpstreamBody {
    /// Takes the in-flight guard and, from an HTTP/1.1 upstream, the connection and
    /// any bytes read past the 101, for a connection that leaves HTTP (an upgrade):
    /// it is not pooled again.
    pub fn detach(&mut self) -> (Option<InFlight>, Option<(client::Stream, Bytes)>) {
        let conn = match &mut self.inner {
            ResponseBody::H1(body) => body.take_upgraded(),
            ResponseBody::H2(_) => None,
        };
        (self.release.take().map(|r| r.in_flight), conn)
    }

    /// The response's fields, when weir's HTTP/1.1 client kept them as lines rather
    /// than in the response's map (`http::h1::response::parse_head_into`).
    pub fn encoded(&self) -> Option<crate::http::h1::server::Encoded<'_>> {
        match &self.inner {
            ResponseBody::H1(body) => body.encoded(),
            ResponseBody::H2(_) => None,
        }
    }

    /// Moves fields kept as lines into `headers` (the response's map).
    pub fn materialize(&mut self, headers: &mut http::HeaderMap) {
        if let ResponseBody::H1(body) = &mut self.inner {
            body.materialize(headers);
        }
    }

    /// The body is complete: an HTTP/1.1 connection that can carry another request
    /// goes back to its server's pool (a full pool closes it).
    fn finish(&mut self) {
        if let Some(release) = self.release.take() {
            if let ResponseBody::H1(body) = &mut self.inner {
                if let Some(conn) = body.take_reusable() {
                    let _ = release.in_flight.server().state.pool.push(Sender::H1(conn));
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

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let up = self.get_mut();
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
                release.in_flight.server().metrics.response_bytes.inc_by(n);
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

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
