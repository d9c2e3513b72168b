//! Forwarding one request to an upstream: pick a server, take a pooled connection or
//! open one, send, and wait for the response headers within `request_timeout`.
//!
//! A server that refuses the connection (or does not accept it within
//! `connect_timeout`) is skipped and the next one tried: nothing was sent, so this is
//! safe for any method. A pooled connection that turns out to be closed hands the
//! request back unsent and is simply replaced. An idempotent bodyless request is
//! also sent again after a dropped connection, or an answer with a `retry_on`
//! status; when no server is left for it, the client gets that last answer. The
//! response body carries the connection and the in-flight guard (see
//! `body::Release`).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering::AcqRel};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use tokio::time::Sleep;

use super::body::Body;
use super::error::ProxyError;
use super::forwarded::{Forwarded, IpText};
use super::hop_by_hop::{accepts_trailers, has_hop_by_hop, requested_upgrade, strip_hop_by_hop};
use super::tunnel::tunnel;
use crate::balancer::PickKey;
use crate::body::{BodyWatch, ClientBody, ClientFault, Outbound, RequestBody};
use crate::http::h1::server::RequestLines;
use crate::upstream::body::{Release, UpstreamBody};
use crate::upstream::client::{self, SendError, TE_TRAILERS};
use crate::upstream::health::{self, Outcome};
use crate::upstream::{Server, Upstream};

/// Facts about the client connection a request arrived on, computed once per
/// connection.
pub struct Peer {
    pub addr: SocketAddr,
    /// Index of the listener in the config.
    pub listener: usize,
    pub tls: bool,
    /// The client's IP as text, for `X-Forwarded-For`.
    pub ip: IpText,
    /// Longest pause allowed in the client's request body (the listener's
    /// `body_read_timeout`).
    pub body_read_timeout: std::time::Duration,
    /// Forward header names with `_` (the listener's `underscores_in_headers`).
    pub underscores_in_headers: bool,
    /// The client is on weir's own HTTP/1.1 server, which writes a server's
    /// HTTP/1.1 response fields from the lines weir's client read them into, with no
    /// header map between (`proxy::body::materialize` builds one when something
    /// needs it). hyper's servers take maps only, so for them the map is built
    /// at once.
    pub writes_lines: bool,
    /// The timer of `request_timeout`, kept from one request of the connection to
    /// the next (`RequestTimer`).
    pub timer: RequestTimer,
}

/// A client connection's timer for its requests' `request_timeout`, reused: a new
/// timer per request is inserted into tokio's timer wheel and taken out again (a lock
/// each, and the wheel's work: some 500 instructions per request, callgrind), while
/// moving a live timer to a later deadline is one atomic update (tokio re-files it
/// when the earlier deadline comes). A request takes it for its exchange and puts it
/// back; one that finds it taken (h2 and hyper's HTTP/1.1 serve requests of a
/// connection side by side) makes its own. Made by a connection's first request, so
/// a connection that sends none costs nothing; it goes with the connection. Once the
/// connection is idle the timer still fires at its last deadline, one spurious wake.
///
/// The slot is an atomic pointer, taken and put back with a swap each: no lock.
#[derive(Default)]
pub struct RequestTimer(AtomicPtr<Sleep>);

impl RequestTimer {
    /// A timer that fires by `deadline`: this one, unless another request holds it.
    /// It is moved only when it would fire late (or has fired): one that fires early
    /// (the last request's deadline) is moved on then (`expired`). So a busy
    /// connection moves it about once per `request_timeout`, not once per request
    /// (a move costs some 100 instructions).
    fn take(&self, deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
        match self.slot_take() {
            Some(mut timer) => {
                if timer.is_elapsed() || timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// `Ready` once `deadline` has passed; a timer from `take` that fires early is
    /// moved on to it.
    fn expired(
        timer: &mut Pin<Box<Sleep>>,
        deadline: tokio::time::Instant,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        while timer.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// Keeps `timer` for the next request (one kept already is dropped).
    fn put(&self, timer: Pin<Box<Sleep>>) {
        // SAFETY: the box goes into the slot whole and comes out whole (`slot_take`,
        // `drop`), re-pinned: the `Sleep` in it never moves.
        let raw = Box::into_raw(unsafe { Pin::into_inner_unchecked(timer) });
        let old = self.0.swap(raw, AcqRel);
        if !old.is_null() {
            // SAFETY: a pointer in the slot came from `Box::into_raw` and is owned by it.
            drop(unsafe { Box::from_raw(old) });
        }
    }

    fn slot_take(&self) -> Option<Pin<Box<Sleep>>> {
        let raw = self.0.swap(std::ptr::null_mut(), AcqRel);
        // SAFETY: as in `put`; the swap made this call its only owner.
        (!raw.is_null()).then(|| unsafe { Pin::new_unchecked(Box::from_raw(raw)) })
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        drop(self.slot_take());
    }
}

impl Peer {
    pub fn new(addr: SocketAddr, listener: usize, tls: bool) -> Peer {
        let ip = IpText::of(addr.ip());
        let body_read_timeout = std::time::Duration::from_secs(60);
        Peer {
            addr,
            listener,
            tls,
            ip,
            body_read_timeout,
            underscores_in_headers: false,
            writes_lines: false,
            timer: RequestTimer::default(),
        }
    }
}

/// One request's forwarding order: where it goes, whose it is, and what its route
/// asks beyond the upstream's own settings. Inputs only; what forwarding did comes
/// back in `Trace`.
pub struct Job<'a> {
    pub upstream: &'a Arc<Upstream>,
    pub peer: &'a Peer,
    /// The client's address as resolved through `trusted_proxies`, when the route
    /// needed it; else the balancer uses the TCP peer.
    pub client_ip: Option<std::net::IpAddr>,
    /// Until the response headers arrive; `None`: the upstream's `request_timeout`.
    pub request_timeout: Option<Duration>,
    /// The route's `max_request_body`, for this request's body.
    pub max_body: Option<u64>,
    /// The request's fields, when they are still the lines weir's HTTP/1.1 server
    /// kept (its header map is empty then): they go up as they are, written by the
    /// HTTP/1.1 client with weir's `X-Forwarded-*` (`Forwarded::fields`).
    pub fields: Option<&'a RequestLines>,
}

impl<'a> Job<'a> {
    /// A request on the upstream's own terms, such as one weir makes itself.
    pub fn new(upstream: &'a Arc<Upstream>, peer: &'a Peer) -> Job<'a> {
        Job { upstream, peer, client_ip: None, request_timeout: None, max_body: None, fields: None }
    }
}

/// What forwarding did, for the access log: which server answered (or failed last)
/// and how many retries it took; and where the request body counts its bytes.
#[derive(Default)]
pub struct Trace {
    /// Index into `upstream.servers` of the last server tried.
    pub server: Option<usize>,
    pub retries: u32,
    /// Where the request body counts its bytes for the access log, if it has one.
    pub request_bytes: Option<Arc<AtomicU64>>,
    /// When the answer's head arrived: one reading of the clock for the attempt's
    /// latency, the server's error window and the request's duration.
    pub answered: Option<tokio::time::Instant>,
}

/// Sends `req` to a server of `upstream`. A server that refuses the connection is
/// skipped for the next one; an idempotent request without a body is also retried
/// when its connection drops before the response headers, or when the answer's
/// status is in the upstream's `retry_on`. Retries draw on the upstream's retry
/// budget. With sticky sessions, the server the request's cookie names is tried
/// first, and a response from any other server sets a new cookie.
///
/// One async function for all of it, the body's wrapping included: each async layer
/// copies the request into its future and the response out of it, a hundred-odd
/// instructions per request (BENCHMARKS.md, session 4). A request weir makes itself
/// (the cache's background refresh) comes with `ClientBody::Empty`.
// Not an `async fn`: see the `async` block below.
#[allow(clippy::manual_async_fn)]
pub fn forward<'a>(
    job: &'a Job<'a>,
    req: Request<ClientBody>,
    trace: &'a mut Trace,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + 'a {
    // An `async` block, not an `async fn`: an `async fn` moves its arguments into
    // locals of its own, so its future would hold the request twice and copy it
    // over when it starts.
    async move {
        // A body with content is wrapped to count its bytes (`tally`: this request's own
        // count, if logged), to hold it to the route's `max_request_body`, and to say
        // whether it failed by the client's fault (`watch`).
        let tally = trace.request_bytes.take();
        let mut watch = None;
        let mut req = req.map(|body| {
            if http_body::Body::is_end_stream(&body) {
                Outbound::Client(body)
            } else {
                let bytes = job.upstream.metrics.request_bytes.clone();
                let shared = Arc::new(BodyWatch::new(job.max_body));
                watch = Some(shared.clone());
                Outbound::Request(RequestBody::new(body, bytes, tally, job.peer.body_read_timeout, shared))
            }
        });
        let (upstream, peer) = (job.upstream, job.peer);
        // Only consistent_hash reads the request here; for the others this is a no-op.
        let key: PickKey = upstream.balancer.key(&req, job.client_ip.unwrap_or(peer.addr.ip()));
        let preferred = upstream.sticky.as_ref().and_then(|s| s.preferred(req.headers()));
        let timeout = job.request_timeout.unwrap_or(upstream.request_timeout);
        // `upgrading`: whether an upgrade goes up; only then may a `101` come back.
        let (mut on_upgrade, forwarded, upgrading) = prepare(&mut req, peer, upstream.h2, job.fields);
        upstream.retry_budget.deposit();
        let replayable = is_idempotent(req.method()) && http_body::Body::is_end_stream(req.body());
        let panic = upstream.health.in_panic(&upstream.servers);
        let mut tried = Tried::default();
        let mut last: Option<Failed> = None;
        loop {
            let Some((index, server)) = pick(upstream, &key, &tried, panic, preferred) else {
                return match last {
                    Some(failed) => failed.into_result(trace),
                    None => Err(ProxyError::NoHealthyServer { upstream: upstream.name.clone() }),
                };
            };
            if let Some(failed) = last.take() {
                if !upstream.retry_budget.try_withdraw() {
                    return failed.into_result(trace);
                }
                upstream.metrics.retries.inc();
                trace.retries += 1;
                // One line per failed server per interval (`LogThrottle`), with the count held back.
                let failed_at = trace.server.and_then(|i| upstream.servers.get(i));
                if let Some(held_back) = failed_at.map_or(Some(0), |s| s.state.retry_log.admit()) {
                    let failed_at = failed_at.map_or("", |s| &*s.address);
                    tracing::warn!(upstream = %upstream.name, server = failed_at, why = %failed, next = %server.address, held_back, "retrying on another server");
                }
            }
            tried.insert(index);
            trace.server = Some(index);
            // The HTTP/1.1 client leaves a bodyless request whole, so it can be sent again
            // if the connection drops after it went out; h2 consumes it, so a copy is kept,
            // when there is another server to replay it on.
            let copy =
                (upstream.h2 && replayable && upstream.servers.len() > 1).then(|| Box::new(copy_head(&req)));
            // Only the answer that ends the request says when it came.
            trace.answered = None;
            let tried = attempt(
                upstream,
                (index, server),
                &mut req,
                forwarded.as_ref(),
                (timeout, peer.writes_lines, &peer.timer),
                (watch.as_deref(), &mut trace.answered),
            );
            match tried.await {
                Ok(mut response) => {
                    let answered = trace.answered.unwrap_or_else(tokio::time::Instant::now);
                    health::record_at(upstream, server, Outcome::Response(response.status()), answered);
                    // A status the upstream retries on: another server may answer better,
                    // and this answer is kept for when none can.
                    if replayable
                        && upstream.retries_on(response.status())
                        && (!upstream.h2 || copy.is_some())
                    {
                        if let Some(copy) = copy {
                            req = *copy;
                        }
                        last = Some(Failed::Answer(Box::new(response), index));
                        continue;
                    }
                    if let Some(sticky) = upstream.sticky.as_ref().filter(|_| preferred != Some(index)) {
                        // Added to the map beside the server's fields, wherever those are:
                        // weir's servers write both (`proxy::body::materialize`).
                        if let Some(cookie) = sticky.set_cookie(index, peer.tls) {
                            response.headers_mut().append(header::SET_COOKIE, cookie.clone());
                        }
                    }
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        // A switch nobody asked for (the route refused the client's
                        // `Upgrade`) would make the connection a blind tunnel.
                        if !upgrading {
                            let reason = "101 to a request that asked for no upgrade";
                            return Err(ProxyError::BadResponse { server: server.address.clone(), reason });
                        }
                        if let Some(client) = on_upgrade.take() {
                            return Ok(tunnel(response, client));
                        }
                    }
                    return Ok(response);
                }
                Err((error, sent)) => {
                    // The client's body failed (too large, malformed, stalled, abandoned):
                    // the server did nothing wrong, and is not blamed or retried.
                    if let Some(error) = watch.as_deref().and_then(client_fault) {
                        return Err(error);
                    }
                    if error.is_client_fault() {
                        return Err(error);
                    }
                    health::record(upstream, server, Outcome::Failure(error.kind()));
                    // Unsent: any request may go elsewhere. Sent: only a replayable one, and
                    // only when the connection failed (a timeout or a bad response may
                    // have done the work already).
                    let again = !sent
                        || (replayable
                            && matches!(error, ProxyError::Upstream { .. })
                            && (!upstream.h2 || copy.is_some()));
                    if !again {
                        return Err(error);
                    }
                    if let (true, Some(copy)) = (sent, copy) {
                        req = *copy;
                    }
                    last = Some(Failed::Error(error));
                }
            }
        }
    }
}

/// The answer to a request whose body the client spoiled, if it did.
fn client_fault(watch: &BodyWatch) -> Option<ProxyError> {
    Some(match watch.fault()? {
        ClientFault::TooLarge => ProxyError::BodyTooLarge { limit: watch.max.unwrap_or(0) },
        fault => ProxyError::ClientBody { fault },
    })
}

/// Why a try did not end the request: an error, or an answer with a status in
/// `retry_on`. When no retry follows, the client gets it as it is.
enum Failed {
    Error(ProxyError),
    /// The answer, and the index of the server that gave it. Boxed: it lives across
    /// the next try's await, and inline it would grow every request's future.
    Answer(Box<Response<Body>>, usize),
}

impl Failed {
    /// The request's outcome; an answer is logged as its server's.
    fn into_result(self, trace: &mut Trace) -> Result<Response<Body>, ProxyError> {
        match self {
            Failed::Error(error) => Err(error),
            Failed::Answer(response, index) => {
                trace.server = Some(index);
                Ok(*response)
            }
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Error(error) => error.fmt(f),
            Failed::Answer(response, _) => write!(f, "answered {}", response.status()),
        }
    }
}

/// Methods RFC 9110 §9.2.2 calls idempotent, which may be sent twice.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request line and headers of a bodyless request, to send again.
fn copy_head(req: &Request<Outbound>) -> Request<Outbound> {
    let mut copy = Request::new(Outbound::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// A server this request has not tried: the sticky one (`preferred`) while it is
/// healthy, else healthy primaries first, then healthy backups. In panic mode health
/// is ignored. Servers still slow-starting take a growing share; when the ramp turns
/// every candidate away, it is ignored.
fn pick<'u>(
    upstream: &'u Upstream,
    key: &PickKey,
    tried: &Tried,
    panic: bool,
    preferred: Option<usize>,
) -> Option<(usize, &'u Arc<Server>)> {
    let servers = &upstream.servers;
    let policy = &upstream.health;
    let candidate = |i: usize, backup: bool| {
        servers.get(i).is_some_and(|s| s.backup == backup && (panic || s.is_healthy()) && !tried.contains(i))
    };
    // Only a primary is honoured: a session that landed on a backup returns to the
    // primaries once they are back.
    if let Some(i) = preferred {
        if let Some(server) = servers.get(i).filter(|_| candidate(i, false)) {
            return Some((i, server));
        }
    }
    let balancer = &upstream.balancer;
    let pick_among = |backup: bool| {
        balancer
            .pick(key, |i| candidate(i, backup) && servers.get(i).is_some_and(|s| policy.ramp_admits(s)))
            .or_else(|| balancer.pick(key, |i| candidate(i, backup)))
    };
    let index = if policy.slow_start.is_some() {
        pick_among(false).or_else(|| pick_among(true))?
    } else {
        balancer.pick(key, |i| candidate(i, false)).or_else(|| balancer.pick(key, |i| candidate(i, true)))?
    };
    Some((index, servers.get(index)?))
}

/// Servers one request has tried, as a bitset. Upstreams of over 128 servers get no
/// retry after trying a server past the 128th.
#[derive(Default)]
struct Tried(u128);

impl Tried {
    fn insert(&mut self, i: usize) {
        self.0 |= 1u128.checked_shl(i as u32).unwrap_or(u128::MAX);
    }
    fn contains(&self, i: usize) -> bool {
        self.0 & 1u128.checked_shl(i as u32).unwrap_or(u128::MAX) != 0
    }
}

/// A failed try: the error, and whether the request may have reached the server.
type Attempt = Result<Response<Body>, (ProxyError, bool)>;

/// One try on one server. On a failure before anything was sent, `req` is left
/// whole for the next server.
async fn attempt(
    upstream: &Upstream,
    (index, server): (usize, &Arc<Server>),
    req: &mut Request<Outbound>,
    forwarded: Option<&Forwarded<'_>>,
    (timeout, lines, peer_timer): (Duration, bool, &RequestTimer),
    (watch, answered_at): (Option<&BodyWatch>, &mut Option<tokio::time::Instant>),
) -> Attempt {
    let in_flight = server.begin();
    // tokio's clock (std's outside paused-time tests): the deadline is made from this
    // reading rather than from one more.
    let started = tokio::time::Instant::now();
    // As `tokio::time::timeout_at`, with the connection's own timer (`RequestTimer`).
    // `started + timeout` is worked out twice rather than kept: one more value held
    // across the await below made the compiler stop building `forward`'s future in
    // place in `handle` (a copy of its kilobytes, +150 per request).
    let mut timer = peer_timer.take(started + timeout);
    let mut exchange = std::pin::pin!(client::exchange(upstream, server, req, forwarded, lines));
    let exchange = poll_fn(|cx| match exchange.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => RequestTimer::expired(&mut timer, started + timeout, cx).map(|()| None),
    })
    .await;
    peer_timer.put(timer);
    let response = match exchange {
        Some(Ok(response)) => response,
        Some(Err(failure)) => {
            if matches!(failure.error, SendError::Connect(_)) {
                server.metrics.connect_errors.inc();
            }
            return Err((ProxyError::from_send(server, failure.error), failure.sent));
        }
        // The server waited for a body the client was not sending: the client's stall,
        // whichever limit ran out first.
        None if watch.is_some_and(BodyWatch::waiting_on_client) => {
            return Err((ProxyError::ClientBody { fault: ClientFault::Stalled }, true));
        }
        None => {
            // A timeout is a latency too: the slowest one a latency-aware balancer sees.
            upstream.balancer.observe(index, timeout, Instant::now());
            server.metrics.timeouts.inc();
            let error = ProxyError::UpstreamTimeout { server: server.address.clone(), after: timeout };
            return Err((error, true));
        }
    };
    let answered = tokio::time::Instant::now();
    *answered_at = Some(answered);
    // Subtracted once: an `Instant` difference is a call into std, not an inline sub.
    let latency = answered - started;
    upstream.balancer.observe(index, latency, answered.into_std());
    server.metrics.requests.inc(response.status());
    server.metrics.duration.observe(latency.as_secs_f64());
    let (mut parts, body) = response.into_parts();
    let upgrade = (parts.status == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = upgrade {
        parts.headers.insert(header::UPGRADE, protocol);
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let release = Release { in_flight, slot: None };
    let body = Body::Upstream(UpstreamBody::new(body, release, upstream.read_timeout));
    Ok(Response::from_parts(parts, body))
}

/// Turns a client request into the upstream request: origin-form target, HTTP/1.1,
/// hop-by-hop headers removed, `Host` kept, and the `X-Forwarded-*` headers to add.
/// An upgrade request (WebSocket) keeps its `Upgrade` header, and the client side of
/// the tunnel-to-be is taken out of the request.
///
/// In place: the request is the largest value in the request's future, and a copy
/// made here would be carried by every layer above.
///
/// `fields`: the request's fields as lines (its map empty), which `handle` let
/// through only when they need none of this (no hop-by-hop field but those left
/// out as they go up, no authority in the target) and the upstream speaks HTTP/1.1.
fn prepare<'a>(
    req: &mut Request<Outbound>,
    peer: &Peer,
    h2: bool,
    mut fields: Option<&'a RequestLines>,
) -> (Option<OnUpgrade>, Option<Forwarded<'a>>, bool) {
    if let Some(lines) = fields.take_if(|_| h2 || req.uri().authority().is_some()) {
        // Not reached (see above); kept so the lines can never be lost.
        lines.append_to(req.headers_mut());
    }
    let headers = req.headers_mut();
    // Most requests carry no hop-by-hop field by now (`handle` stripped the client's):
    // one pass over the names spares the lookups of `Upgrade` and `TE`.
    let upgrade = if has_hop_by_hop(headers) {
        let upgrade = requested_upgrade(headers);
        // gRPC needs `te: trailers` end to end; any other TE is hop-by-hop.
        let trailers = accepts_trailers(headers);
        strip_hop_by_hop(headers);
        if trailers {
            headers.insert(header::TE, TE_TRAILERS.clone());
        }
        upgrade
    } else {
        None
    };
    let upgrading = upgrade.is_some();
    let on_upgrade = match upgrade {
        Some(protocol) => {
            headers.insert(header::UPGRADE, protocol);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.extensions_mut().remove::<OnUpgrade>()
        }
        None => None,
    };

    let host = match req.uri().authority() {
        // HTTP/2 and absolute-form requests carry the host in the target.
        Some(authority) => {
            let value = HeaderValue::from_str(authority.as_str()).ok();
            if let Some(v) = &value {
                req.headers_mut().insert(header::HOST, v.clone());
            }
            value
        }
        None => match fields {
            // SAFETY: httparse accepted the value, and `framing::lines_pass` took it
            // as a `Host` (authority bytes only).
            Some(lines) => lines
                .host()
                .map(|v| unsafe { HeaderValue::from_maybe_shared_unchecked(lines.block.slice_ref(v)) }),
            None => req.headers().get(header::HOST).cloned(),
        },
    };
    let proto = if peer.tls { "https" } else { "http" };
    let forwarded = Forwarded { host, proto, ip: peer.ip, fields };
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = match req.uri().path_and_query() {
            None => PathAndQuery::from_static("/"),
            // RFC 9112 §3.2.1: an empty path is `/`; `http://a?q` leaves only `?q`
            // (`as_str`; `path()` says `/`), which no origin-form or h2 `:path` may be.
            Some(p) if !p.as_str().starts_with('/') => PathAndQuery::try_from(format!("/{}", p.as_str()))
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
            Some(p) => p.clone(),
        };
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;
    // h2 takes the headers from the map; weir's HTTP/1.1 client writes them into the
    // head itself, sparing the map a grow and a rehash per request.
    if h2 {
        forwarded.insert_into(req.headers_mut());
        return (on_upgrade, None, upgrading);
    }
    (on_upgrade, Some(forwarded), upgrading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connections_request_timer_is_taken_and_kept_again_and_a_second_one_is_dropped() {
        let timers = RequestTimer::default();
        let soon = tokio::time::Instant::now() + Duration::from_secs(5);
        let first = timers.take(soon);
        let address = &*first as *const Sleep;
        assert!(timers.slot_take().is_none(), "a taken timer is out of the slot");
        timers.put(first);
        // A later deadline: the kept timer, not moved (it fires early and is moved then).
        let again = timers.take(soon + Duration::from_secs(1));
        assert_eq!(&*again as *const Sleep, address);
        assert_eq!(again.deadline(), soon);
        // An earlier one: the same timer, moved.
        timers.put(again);
        let earlier = timers.take(soon - Duration::from_secs(1));
        assert_eq!(&*earlier as *const Sleep, address);
        assert_eq!(earlier.deadline(), soon - Duration::from_secs(1));
        // Two requests at once (h2): the second makes its own, and only one is kept.
        let other = timers.take(soon);
        assert_ne!(&*other as *const Sleep, address);
        timers.put(earlier);
        timers.put(other);
        assert!(timers.slot_take().is_some());
        assert!(timers.slot_take().is_none());
    }

    #[test]
    fn an_absolute_target_without_a_path_goes_up_with_a_slash_on_either_protocol() {
        let peer = Peer::new("127.0.0.1:9".parse().unwrap(), 0, false);
        for h2 in [false, true] {
            for (target, expected) in [("http://a?q=1", "/?q=1"), ("http://a", "/"), ("http://a/p?q", "/p?q")]
            {
                let mut req = Request::get(target).body(Outbound::Empty).unwrap();
                prepare(&mut req, &peer, h2, None);
                // `Uri`'s own comparison and display put the `/` in; what goes on the wire
                // (and into h2's `:path`) is `as_str`.
                assert_eq!(req.uri().path_and_query().unwrap().as_str(), expected, "{target}, h2: {h2}");
            }
        }
    }

    #[test]
    fn tried_set_handles_any_index() {
        let mut t = Tried::default();
        t.insert(3);
        assert!(t.contains(3) && !t.contains(4));
        // Past the bitset, one try marks every server tried: no further retries.
        t.insert(500);
        assert!(t.contains(500) && t.contains(4));
    }
}
