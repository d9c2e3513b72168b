//! The lobby: clients a listener accepted that have not sent a byte yet, and idle
//! keep-alive connections parked between two requests, each a small future
//! (`Waiting`) in the listener's own task: no task, timer, `Peer`, TLS or hyper
//! state of their own until there is something to read. `sweep_lobby` closes the
//! silent ones past their limits; `TrimAfterParks` decides when connections parking
//! call for a trim of the heap.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::socket::Socket;

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
    pub(super) stream: Socket,
    /// The client's address, as `accept` gave it (no `getpeername` later).
    pub(super) addr: SocketAddr,
    /// Its `max_connections` permit, if the listener has a limit.
    pub(super) slot: Option<OwnedSemaphorePermit>,
    pub(super) active: Active,
    /// Back from `h1` between two requests (parked): served as HTTP/1.1 at once.
    pub(super) resumed: bool,
}

/// Reads what a client just accepted has sent already, without waiting: a plain
/// HTTP client sends its request at once, and under load it is there by the time the
/// client is accepted. A read that fills less than the buffer marks the socket
/// drained (`Socket`), so the connection's next read (or its close) goes to epoll
/// instead of first finding the socket empty. `Pending`: nothing yet; the socket is
/// registered then, as the lobby's wait needs it.
///
/// Nothing waits on this read: a client left in the lobby is woken by its
/// `Waiting`, which registers the listener's task when it is polled.
pub(super) fn read_now(stream: &mut Socket, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    tokio_util::io::poll_read_buf(Pin::new(stream), &mut cx, buf)
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

/// Parked connections that make the heap worth trimming at once: each freed a task
/// and a block of ~8 KiB.
const TRIM_AFTER_PARKED: usize = 256;

/// Parked connections that make the heap worth trimming once parking stops: fewer
/// wait for more (their blocks fit in the serving thread's list anyway).
const TRIM_TAIL: usize = 16;

/// How long after the first connection parked since the last trim the heap is
/// trimmed (later if more are still parking); at most one trim per listener per
/// this long.
const TRIM_DELAY: Duration = Duration::from_secs(1);

/// When the heap is trimmed after connections park: `TRIM_DELAY` after the first
/// park since the last trim if `TRIM_AFTER_PARKED` have parked by then, else once
/// parking has stopped for a quarter of that (so the tail of a burst, fewer than
/// `TRIM_AFTER_PARKED` after a trim, is trimmed too), if at least `TRIM_TAIL` have.
/// The listener's loop keeps the timer; this decides when it is set and what its
/// firing does. Costs a count and a flag per parked connection, and a timer reset
/// only on the first park after a trim and every quarter of `TRIM_DELAY` while
/// connections still park.
#[derive(Default)]
pub(super) struct TrimAfterParks {
    /// Connections parked since the last trim.
    parked: usize,
    /// A connection parked since the timer was last set.
    lately: bool,
    /// The timer is set.
    armed: bool,
}

/// What the trim timer's firing asks of the listener.
#[derive(Debug, PartialEq)]
pub(super) enum TrimStep {
    /// Trim the heap now.
    Trim,
    /// Connections are still parking: set the timer again this much later.
    Wait(Duration),
    /// Too few parked to be worth it: they count toward the next trim.
    Rest,
}

impl TrimAfterParks {
    /// The timer is set: its firing goes to `fired`.
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// A connection parked: `Some(after)` when the timer is to be set that far ahead.
    pub(super) fn parked(&mut self) -> Option<Duration> {
        self.parked += 1;
        if self.armed {
            self.lately = true;
            return None;
        }
        self.armed = true;
        self.lately = false;
        Some(TRIM_DELAY)
    }

    /// The timer fired.
    pub(super) fn fired(&mut self) -> TrimStep {
        if self.parked >= TRIM_AFTER_PARKED || (!self.lately && self.parked >= TRIM_TAIL) {
            *self = TrimAfterParks::default();
            return TrimStep::Trim;
        }
        if self.lately {
            self.lately = false;
            return TrimStep::Wait(TRIM_DELAY / 4);
        }
        self.armed = false;
        TrimStep::Rest
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn readable(stream: &Socket) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        stream.may_have_bytes(&mut cx)
    }

    /// The next client of `listener`, as the accept loop takes it.
    async fn accept(listener: &tokio::net::TcpListener) -> Socket {
        let (stream, _) = listener.accept().await.unwrap();
        Socket::new(stream.into_std().unwrap())
    }

    /// Parks `n` connections; the timers set on the way, in order.
    fn park(trims: &mut TrimAfterParks, n: usize) -> Vec<Duration> {
        (0..n).filter_map(|_| trims.parked()).collect()
    }

    #[test]
    fn the_heap_is_trimmed_after_a_burst_of_parks_and_again_for_its_tail() {
        let mut trims = TrimAfterParks::default();
        // The first park sets the timer; the rest of the burst does not touch it.
        assert_eq!(park(&mut trims, TRIM_AFTER_PARKED + 10), [TRIM_DELAY]);
        assert_eq!(trims.fired(), TrimStep::Trim, "enough parked: trimmed though parking goes on");
        assert!(!trims.armed());
        // The tail, fewer than `TRIM_AFTER_PARKED`, still parking when the timer fires:
        // it waits for them, then trims once they stop.
        assert_eq!(park(&mut trims, 100), [TRIM_DELAY], "at most one trim per TRIM_DELAY");
        assert_eq!(trims.fired(), TrimStep::Wait(TRIM_DELAY / 4));
        assert!(park(&mut trims, 20).is_empty());
        assert_eq!(trims.fired(), TrimStep::Wait(TRIM_DELAY / 4));
        assert_eq!(trims.fired(), TrimStep::Trim, "the tail of the burst is trimmed");
        assert!(!trims.armed());
    }

    #[test]
    fn a_few_parked_connections_wait_for_more_before_a_trim() {
        let mut trims = TrimAfterParks::default();
        assert_eq!(park(&mut trims, TRIM_TAIL - 1), [TRIM_DELAY]);
        assert_eq!(trims.fired(), TrimStep::Wait(TRIM_DELAY / 4));
        assert_eq!(trims.fired(), TrimStep::Rest, "parking stopped, but too few to trim for");
        assert!(!trims.armed());
        // They count: the next park sets the timer again, and with it there are enough.
        assert_eq!(park(&mut trims, 1), [TRIM_DELAY]);
        assert_eq!(trims.fired(), TrimStep::Trim);
    }

    #[tokio::test]
    async fn a_request_there_at_accept_is_read_at_once_and_the_socket_then_waits_for_epoll() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut stream = accept(&listener).await;
        let mut buf = BytesMut::with_capacity(8192);
        assert!(matches!(read_now(&mut stream, &mut buf), Poll::Ready(Ok(18))));
        // A short read took all there was: a quiet close (`http::h1::conn`) then knows
        // nothing more came without a read, and the socket never met the poller.
        assert!(!readable(&stream), "the socket still reads as readable");
        assert!(!stream.is_registered());
    }

    #[tokio::test]
    async fn a_client_that_has_sent_nothing_yet_is_left_to_wait() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut stream = accept(&listener).await;
        let mut buf = BytesMut::with_capacity(8192);
        assert!(read_now(&mut stream, &mut buf).is_pending());
        assert!(buf.is_empty());
        // Its bytes, when they come, are reported by epoll.
        client.write_all(b"GET").await.unwrap();
        let ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
        tokio::time::timeout(Duration::from_secs(5), ready).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_look_leaves_the_bytes_and_an_empty_socket_waits_for_epoll() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut stream = accept(&listener).await;
        assert!(stream.peek_now().is_pending());
        client.write_all(b"\x16\x03\x01").await.unwrap();
        let ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
        tokio::time::timeout(Duration::from_secs(5), ready).await.unwrap().unwrap();
        assert!(matches!(stream.peek_now(), Poll::Ready(Ok(1))));
        let mut left = BytesMut::with_capacity(8);
        assert!(
            matches!(read_now(&mut stream, &mut left), Poll::Ready(Ok(3))),
            "the hello is still there for the handshake"
        );
    }
}
