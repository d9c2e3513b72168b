//! Overload protection for an upstream: at most `max_in_flight` requests at once, and
//! a bounded queue in front (HAProxy's server `maxconn` + queue).
//!
//! A request over the limit waits its turn (first come, first served: tokio's
//! semaphore is fair) for up to `queue_timeout`, then gets `503`; when `queue_size`
//! requests are already waiting it gets `503` at once, so a flood cannot pile up
//! unbounded waiters. The permit rides in the response body (`upstream::body::Release`)
//! and is returned when the body ends, because a response still streaming is still
//! load on the server.
//!
//! Upstreams without `max_in_flight` have no `Admission` at all: no atomic, no
//! permit, nothing on their path. An `Admission` survives a reload when its upstream
//! keeps the same settings, so requests in flight across the reload still count.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::QueueMetrics;

/// The in-flight limit and queue of one upstream.
pub struct Admission {
    permits: Arc<Semaphore>,
    /// Requests waiting now; checked against `queue_size` before joining the queue.
    waiting: AtomicUsize,
    pub settings: AdmissionSettings,
    metrics: QueueMetrics,
}

/// What an `Admission` was built from; equal settings keep it across reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionSettings {
    pub max_in_flight: usize,
    pub queue_size: usize,
    pub queue_timeout: Duration,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `queue_size` requests were already waiting.
    QueueFull,
    /// No slot came free within `queue_timeout`.
    Timeout(Duration),
}

impl Admission {
    pub fn new(settings: AdmissionSettings, metrics: QueueMetrics) -> Admission {
        let permits = settings.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            permits: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            settings,
            metrics,
        }
    }

    /// A slot for one request, held until the permit is dropped.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Relaxed) >= self.settings.queue_size {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(Refused::QueueFull);
        }
        let _waiting = Waiting(self);
        self.metrics.depth.inc();
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.settings.queue_timeout, self.permits.clone().acquire_owned()).await;
        self.metrics.wait.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout if it were.
            Ok(Err(_)) | Err(_) => Err(Refused::Timeout(self.settings.queue_timeout)),
        }
    }

    /// Requests waiting in the queue now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }
}

/// Leaves the queue however the wait ends, a client that went away included.
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
        self.0.metrics.depth.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn admission(max_in_flight: usize, queue_size: usize, timeout_ms: u64) -> Arc<Admission> {
        let metrics = Metrics::new().unwrap();
        let settings =
            AdmissionSettings { max_in_flight, queue_size, queue_timeout: Duration::from_millis(timeout_ms) };
        Arc::new(Admission::new(settings, metrics.queue("u")))
    }

    #[tokio::test(start_paused = true)]
    async fn requests_over_the_limit_wait_their_turn() {
        let a = admission(1, 2, 1000);
        let first = a.admit().await.unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.admit().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.waiting(), 1);
        assert_eq!(a.metrics.depth.get(), 1);
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(a.waiting(), 0);
        assert_eq!(a.metrics.depth.get(), 0);
        assert_eq!(a.metrics.wait.get_sample_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once_and_a_long_wait_times_out() {
        let a = admission(1, 1, 500);
        let _held = a.admit().await.unwrap();
        let queued = tokio::spawn({
            let a = a.clone();
            async move { a.admit().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit().await.map(drop), Err(Refused::QueueFull));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(queued.await.unwrap(), Err(Refused::Timeout(Duration::from_millis(500))));
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_queue_refuses_everything_over_the_limit() {
        let a = admission(2, 0, 500);
        let _one = a.admit().await.unwrap();
        let _two = a.admit().await.unwrap();
        assert_eq!(a.admit().await.map(drop), Err(Refused::QueueFull));
    }
}
