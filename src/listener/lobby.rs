//! The lobby: clients a listener accepted that have not sent a byte yet, and idle
//! keep-alive connections parked between two requests, each a small future
//! (`Waiting`) in the listener's own task: no task, timer, `Peer`, TLS or hyper
//! state of their own until there is something to read. `sweep_lobby` closes the
//! silent ones past their limits.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// How late the lobby may close a parked connection past its keep-alive deadline.
const PARKED_SWEEP: Duration = Duration::from_millis(100);

/// Shuts the lobby's clients silent for longer than `timeout`, and parked ones past
/// their deadline; the sweep comes again a quarter of `timeout` later, or at the next
/// parked connection's deadline, but not within `PARKED_SWEEP`: each sweep visits
/// every client, and thousands of parked ones have thousands of deadlines.
pub(super) fn sweep_lobby(lobby: &FuturesUnordered<Waiting>, sweep: Pin<&mut Sleep>, timeout: Duration) {
    let now = Instant::now();
    let mut next = now + timeout / 4;
    for waiting in lobby.iter() {
        match waiting.until.get() {
            Some(until) if now < until => next = next.min(until.max(now + PARKED_SWEEP)),
            None if now < waiting.since + timeout => {}
            _ => waiting.expire(),
        }
    }
    sweep.reset(next);
}

/// A client connection that has not sent a byte yet. It resolves to the connection
/// once it is readable (something to read, or the client left), or to `None` when
/// `expire` shut it.
pub(super) struct Waiting {
    /// Taken when the wait resolves.
    pub(super) client: Option<Accepted>,
    pub(super) since: Instant,
    /// A parked keep-alive connection's deadline (the sweep's limit for a new client
    /// is the header read timeout from `since`).
    pub(super) until: Cell<Option<Instant>>,
    /// Set by `expire`: the readiness its shutdown causes ends the wait, not a task.
    pub(super) expired: Cell<bool>,
}

/// An accepted connection and what it holds until it closes.
pub(super) struct Accepted {
    pub(super) stream: tokio::net::TcpStream,
    /// The client's address, as `accept` gave it (no `getpeername` later).
    pub(super) addr: SocketAddr,
    /// Its `max_connections` permit, if the listener has a limit.
    pub(super) slot: Option<OwnedSemaphorePermit>,
    pub(super) active: Active,
    /// Back from `h1` between two requests (parked): served as HTTP/1.1 at once.
    pub(super) resumed: bool,
}

impl Waiting {
    pub(super) fn parked(client: Accepted, until: Instant) -> Waiting {
        let until = Cell::new(Some(until));
        Waiting { client: Some(client), since: Instant::now(), until, expired: Cell::new(false) }
    }

    /// Closes a client that stayed silent too long: the shutdown also wakes this
    /// future (the socket reads as ended), which then resolves and is dropped.
    pub(super) fn expire(&self) {
        if let Some(client) = &self.client {
            self.expired.set(true);
            let _ = socket2::SockRef::from(&client.stream).shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Future for Waiting {
    type Output = Option<Accepted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(client) = self.client.as_ref() else { return Poll::Ready(None) };
        // Readiness, not a peek: the connection's first read then takes the bytes, one
        // `recvfrom` instead of two. Readiness on a socket nothing was read from comes
        // from the epoll event for its first bytes, or for its end (a client that
        // leaves without a word then costs its task one read of 0 bytes); should one
        // come early, the connection's task waits for the bytes under the same
        // deadline.
        ready!(client.stream.poll_read_ready(cx)).ok();
        if self.expired.get() {
            return Poll::Ready(None);
        }
        Poll::Ready(self.client.take())
    }
}

/// Counts an open client connection in `weir_connections_active`, or a tunnel in
/// `weir_tunnels_active`, until dropped.
pub(super) struct Active(IntGauge);

impl Active {
    pub(super) fn new(gauge: &IntGauge) -> Active {
        gauge.inc();
        Active(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}
