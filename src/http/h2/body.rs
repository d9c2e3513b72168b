//! Request bodies on weir's h2 server: the DATA the connection receives for a
//! stream, queued here for whoever reads the request's body. What the reader takes
//! is counted (`consumed`) and the connection gives it back to the client as window
//! (WINDOW_UPDATE), so a reader that stops reading (a slow upstream) stops the
//! client once its windows are used up.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use crate::http::BoxError;

/// Bytes taken by the reader that make it worth waking the connection for a window
/// update while more is queued.
const WAKE_AT: usize = 32 * 1024;

/// A request's body, read from its stream's DATA frames.
pub struct RecvBody {
    /// `None`: the request has no body (END_STREAM on its HEADERS).
    shared: Option<Arc<Recv>>,
    /// What `content-length` says is left, if it was given.
    left: Option<u64>,
}

/// What the connection and the body share.
#[derive(Default)]
pub(super) struct Recv {
    state: Mutex<RecvState>,
}

#[derive(Default)]
pub(super) struct RecvState {
    pub data: VecDeque<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// The client ended the stream.
    pub end: bool,
    /// Why the body cannot go on: `InvalidData` for a malformed body (the client's
    /// fault, `body::classify`), anything else for a client gone or a reset stream.
    pub error: Option<(std::io::ErrorKind, &'static str)>,
    /// The body's reader, waiting for data.
    pub reader: Option<Waker>,
    /// The stream's waker on the connection, for window updates.
    pub conn: Option<Waker>,
    /// Bytes the reader took that the connection has not given back yet.
    pub consumed: usize,
    /// The body is gone: what arrives is dropped (and its window given back).
    pub dropped: bool,
}

impl Recv {
    pub(super) fn lock(&self) -> MutexGuard<'_, RecvState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RecvState {
    /// Ends the body with an error and wakes its reader.
    pub(super) fn fail(&mut self, kind: std::io::ErrorKind, why: &'static str) {
        if self.error.is_none() && !(self.end && self.data.is_empty()) {
            self.error = Some((kind, why));
        }
        self.wake_reader();
    }

    pub(super) fn wake_reader(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }
}

impl RecvBody {
    pub(super) fn new(shared: Option<Arc<Recv>>, length: Option<u64>) -> RecvBody {
        RecvBody { shared, left: length }
    }

    /// A body with nothing in it.
    pub fn empty() -> RecvBody {
        RecvBody { shared: None, left: Some(0) }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(shared) = &this.shared else { return Poll::Ready(None) };
        let mut state = shared.lock();
        if let Some(data) = state.data.pop_front() {
            state.consumed += data.len();
            if let Some(left) = &mut this.left {
                *left = left.saturating_sub(data.len() as u64);
            }
            // The client waits for window only while it still sends.
            if !state.end && (state.data.is_empty() || state.consumed >= WAKE_AT) {
                if let Some(conn) = &state.conn {
                    conn.wake_by_ref();
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some((kind, why)) = state.error {
            return Poll::Ready(Some(Err(Box::new(std::io::Error::new(kind, why)))));
        }
        if let Some(trailers) = state.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if state.end {
            return Poll::Ready(None);
        }
        match &state.reader {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.shared {
            None => true,
            Some(shared) => {
                let state = shared.lock();
                state.end && state.data.is_empty() && state.trailers.is_none() && state.error.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else { return };
        let mut state = shared.lock();
        state.dropped = true;
        let queued: usize = state.data.drain(..).map(|d| d.len()).sum();
        state.consumed += queued;
        if let Some(conn) = state.conn.take() {
            conn.wake();
        }
    }
}
