//! `Tee`: streams an upstream body to the client while copying it into a buffer,
//! and stores the copy once the body has ended, so the first client of a miss waits
//! for nothing. A body that grows past `max_object_size` stops being copied and
//! keeps streaming; one that is cut short (error, client gone) is never stored.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::Pending;

/// A body being delivered and copied; `B` is the pipeline's body type.
pub struct Tee<B: Body<Data = Bytes> + Unpin> {
    inner: B,
    copy: BytesMut,
    limit: usize,
    /// What to store on completion; `None` once storing was given up.
    pending: Option<Pending>,
}

impl<B: Body<Data = Bytes> + Unpin> Tee<B> {
    /// Tees `inner` into `pending` for a body of at most `limit` bytes.
    pub(crate) fn new(inner: B, pending: Pending, limit: usize) -> Tee<B> {
        let expected = inner.size_hint().exact().and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        let mut tee =
            Tee { inner, copy: BytesMut::with_capacity(expected.min(limit)), limit, pending: Some(pending) };
        // hyper never polls a body that is already at its end (a 204, an empty 200).
        if tee.inner.is_end_stream() {
            tee.complete();
        }
        tee
    }

    fn complete(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.complete(std::mem::take(&mut self.copy).freeze());
        }
    }

    fn copy(&mut self, data: &Bytes) {
        if self.pending.is_none() {
            return;
        }
        if self.copy.len() + data.len() > self.limit {
            if let Some(pending) = self.pending.take() {
                pending.too_large();
            }
            self.copy = BytesMut::new();
        } else {
            self.copy.extend_from_slice(data);
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.copy(data);
                }
                if self.inner.is_end_stream() {
                    self.complete();
                }
            }
            Poll::Ready(None) => self.complete(),
            // Cut short: dropping the pending store tells the waiters it failed.
            Poll::Ready(Some(Err(_))) => self.pending = None,
            Poll::Pending => {}
        }
        polled
    }

    pub(crate) fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Drop for Tee<B> {
    fn drop(&mut self) {
        // As with `UpstreamBody`: the last frame may have been read without a final
        // poll seeing the end.
        if self.inner.is_end_stream() {
            self.complete();
        }
    }
}
