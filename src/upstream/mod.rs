//! Upstreams and their servers: the runtime form of `[upstreams.NAME]`.
//!
//! A `Server` is one configured address with its weight and role, a shared
//! `ServerState` (health mark, in-flight count, idle connection pool) and its
//! `ServerMetrics` (counts by status, errors, latencies), both of which a reload
//! hands from the old runtime to the new one when the same address stays in the
//! same upstream.
//!
//! Who writes what: `health` is the only writer of `healthy`; the proxy path begins
//! and ends in-flight counts (`InFlight`) and takes and returns pooled connections.
//! The in-flight count is a plain atomic the balancers read; `/metrics` reads it (and
//! the health mark) when scraped, so the request path touches no Prometheus object.
//!
//! An idle server costs a few hundred bytes: its pool's queue is made when the first
//! connection is returned to it, not when the server is built.

pub mod body;
pub mod client;
pub mod discovery;
pub mod health;
pub mod retry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use rustls_pki_types::ServerName;

use crate::admission::Admission;
use crate::balancer::{Balancer, Member};
use crate::config::{BalancerKind, StatusSet};
use crate::metrics::{LatencySample, ServerMetrics, ServerSample, UpstreamMetrics};
use crate::recent::RecentErrors;
use crate::shaping::sticky::Sticky;
use client::{Sender, UpstreamTls};
use health::HealthPolicy;
use retry::RetryBudget;

/// One pool of servers behind a name, with its balancer.
pub struct Upstream {
    /// Shared with access log entries.
    pub name: Arc<str>,
    pub servers: Box<[Arc<Server>]>,
    pub balancer: Balancer,
    /// The configured algorithm, for `/status`.
    pub balancer_kind: BalancerKind,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Longest pause while a server sends a response body.
    pub read_timeout: Duration,
    /// An idle pooled connection unused this long is closed (see `keep_pools`).
    pub keepalive_timeout: Duration,
    /// Speak h2 (one multiplexed connection per server) instead of HTTP/1.1.
    pub h2: bool,
    pub tls: Option<UpstreamTls>,
    /// What pooled connections are opened with; a reload that changes it gives the
    /// servers fresh pools (keeping their health).
    pub connection: ConnectionSettings,
    pub health: HealthPolicy,
    pub retry_budget: RetryBudget,
    /// Response statuses retried on another server (`retry_on`); empty: none.
    pub retry_on: StatusSet,
    pub metrics: UpstreamMetrics,
    /// Whether each server has its own latency histogram (`server_histograms`);
    /// else they share the upstream's.
    pub server_histograms: bool,
    /// `max_in_flight` and its queue; `None` when unlimited.
    pub admission: Option<Arc<Admission>>,
    /// Sticky sessions; `None` when off.
    pub sticky: Option<Sticky>,
    /// Its "request failed" warnings.
    pub failure_log: crate::logthrottle::LogThrottle,
}

/// One backend address of an upstream.
pub struct Server {
    /// The address as written in the config; the `server` metric label. Shared with
    /// access log entries.
    pub address: Arc<str>,
    /// Where to connect, resolved when the runtime was built.
    pub addr: SocketAddr,
    /// The name its TLS certificate must carry, when the upstream uses TLS without `sni`.
    pub tls_name: ServerName<'static>,
    pub weight: u32,
    /// Used only while no primary server is healthy.
    pub backup: bool,
    pub state: Arc<ServerState>,
    /// Shared with the previous runtime's server of the same upstream and address.
    pub metrics: Arc<ServerMetrics>,
}

impl Server {
    /// What the balancer reads of this server.
    pub fn member(&self) -> Member<'_> {
        Member { name: &self.address, weight: self.weight, in_flight: &self.state.in_flight }
    }
}

/// The settings a pooled connection depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub h2: bool,
    pub tls: bool,
    pub sni: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    pub keepalive: usize,
}

/// What must outlive a reload: the health mark, the in-flight count,
/// passive-detection counts and the idle connections.
pub struct ServerState {
    healthy: AtomicBool,
    /// Requests sent whose responses are not yet fully delivered. Shared with the
    /// balancer (`Loads`), and with the state that replaces this one when a reload
    /// changes the connection settings, so requests still running count there.
    pub in_flight: Arc<AtomicU64>,
    pub(crate) pool: Pool,
    /// Failed attempts in a row, for passive detection.
    pub(crate) consecutive_failures: AtomicU32,
    /// Passive ejections so far, for the doubling ejection time.
    pub(crate) ejections: AtomicU32,
    /// When (`clock::now_ms`) the server last came up, for slow start; 0: long ago.
    pub(crate) up_since_ms: AtomicU64,
    /// When the last passive ejection ended; 0: never.
    pub(crate) readmitted_ms: AtomicU64,
    /// Attempts and errors over the last minute, for `/status`.
    pub recent: RecentErrors,
    /// Its "retrying on another server" warnings.
    pub retry_log: crate::logthrottle::LogThrottle,
}

impl ServerState {
    /// A fresh server: healthy until a check says otherwise, with room for
    /// `keepalive` idle connections. `up_since_ms` starts its slow-start ramp (0: none).
    pub fn new(keepalive: usize, up_since_ms: u64) -> ServerState {
        ServerState {
            healthy: AtomicBool::new(true),
            in_flight: Arc::default(),
            pool: Pool { queue: OnceLock::new(), capacity: keepalive.max(1) },
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            up_since_ms: AtomicU64::new(up_since_ms),
            readmitted_ms: AtomicU64::new(0),
            recent: RecentErrors::default(),
            retry_log: Default::default(),
        }
    }
}

impl ServerState {
    /// A state with `self`'s health but an empty pool, for a server whose connection
    /// settings changed in a reload.
    pub fn with_new_pool(&self, keepalive: usize) -> ServerState {
        let mut fresh = ServerState::new(keepalive, self.up_since_ms.load(Relaxed));
        fresh.in_flight = self.in_flight.clone();
        fresh.healthy.store(self.healthy.load(Relaxed), Relaxed);
        fresh.consecutive_failures.store(self.consecutive_failures.load(Relaxed), Relaxed);
        fresh.ejections.store(self.ejections.load(Relaxed), Relaxed);
        fresh.readmitted_ms.store(self.readmitted_ms.load(Relaxed), Relaxed);
        fresh
    }
}

impl Upstream {
    /// Whether a response with `status` should be tried again elsewhere.
    pub fn retries_on(&self, status: http::StatusCode) -> bool {
        self.retry_on.contains(status)
    }
}

impl Server {
    /// Whether the server may take traffic.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Relaxed)
    }

    /// Marks the server up or down; returns the previous mark. Only `health` calls it.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.state.healthy.swap(healthy, Relaxed)
    }

    /// Requests sent to this server whose responses are not yet fully delivered.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Relaxed)
    }

    /// Counts a request against this server until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.state.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// An idle pooled connection, if one is left.
    pub(crate) fn take_idle(&self) -> Option<Sender> {
        self.state.pool.pop()
    }
}

impl ServerState {
    /// Looks over the idle pool once. A connection is closed when its server closed
    /// it (or sent something unasked), or when this is the `max_sweeps`th sweep in a
    /// row that found it unused; the rest go back in their order.
    pub(crate) fn sweep_pool(&self, max_sweeps: u32) {
        // Each connection idle now is seen once; one returned meanwhile queues behind.
        for _ in 0..self.pool.len() {
            let Some(sender) = self.pool.pop() else { break };
            let kept = match sender {
                Sender::H1(mut conn) => {
                    (conn.idle_sweep() < max_sweeps && conn.is_reusable()).then_some(Sender::H1(conn))
                }
                // Shared by every request to the server: kept while it is open.
                Sender::H2(shared) => (!shared.is_closed()).then_some(Sender::H2(shared)),
            };
            // A full pool (requests returned connections meanwhile) closes it too.
            if let Some(sender) = kept {
                let _ = self.pool.push(sender);
            }
        }
    }
}

/// Keeps `upstream`'s idle connection pools clean while it runs: a sweep every
/// quarter of `keepalive_timeout` (at most a second apart) closes connections their
/// server closed, so none lingers half-closed (`CLOSE_WAIT`) until a request would
/// have found it dead, and connections left unused for `keepalive_timeout`. nginx and
/// HAProxy watch each idle connection for its close; one sweep per upstream costs
/// less than a waiting task per connection and is late by at most a second.
pub async fn keep_pools(upstream: Arc<Upstream>) {
    let timeout = upstream.keepalive_timeout;
    let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    // Closed at the sweep that finds it unused for the whole timeout: between
    // `timeout` and `timeout + every` after its last use.
    let max_sweeps = u32::try_from(timeout.as_nanos().div_ceil(every.as_nanos()) + 1).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for server in upstream.servers.iter() {
            server.state.sweep_pool(max_sweeps);
        }
    }
}

/// Counts a request against its server until dropped. Rides with the response body,
/// so an error, an early return or a vanished client cannot leak a count.
pub struct InFlight(Arc<Server>);

impl InFlight {
    /// The server the request is counted against.
    pub fn server(&self) -> &Arc<Server> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A server's idle connections, at most `keepalive`. The queue is made on the first
/// return: most of a large upstream's servers may never be used by this process,
/// and a queue of `keepalive` slots costs kilobytes.
///
/// The queue is boxed: its head and tail are padded to cache lines (128-byte
/// alignment), and held inline they made every `ServerState` an over-aligned
/// allocation, which glibc carves out of a larger block, leaving small free pieces
/// on both sides. Thousands of those, made and freed by each reload, kept the heap
/// fragmented (BENCHMARKS.md, "RSS after reloads").
pub struct Pool {
    queue: OnceLock<Box<ArrayQueue<Sender>>>,
    capacity: usize,
}

impl Pool {
    /// Keeps an idle connection; hands it back when the pool is full.
    pub fn push(&self, sender: Sender) -> Result<(), Sender> {
        self.queue.get_or_init(|| Box::new(ArrayQueue::new(self.capacity))).push(sender)
    }

    pub fn pop(&self) -> Option<Sender> {
        self.queue.get()?.pop()
    }

    pub fn len(&self) -> usize {
        self.queue.get().map_or(0, |queue| queue.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Upstream {
    /// Adds this upstream's servers and latency histograms to a scrape.
    pub fn samples<'a>(
        &'a self,
        servers: &mut Vec<ServerSample<'a>>,
        histograms: &mut Vec<LatencySample<'a>>,
    ) {
        let checked = self.health.check.is_some();
        for s in self.servers.iter() {
            servers.push(ServerSample {
                upstream: &self.name,
                server: &s.address,
                healthy: s.is_healthy(),
                in_flight: s.in_flight(),
                metrics: &s.metrics,
                checked,
            });
            if self.server_histograms {
                histograms.push(LatencySample {
                    upstream: &self.name,
                    server: Some(&s.address),
                    latency: &s.metrics.duration,
                });
            }
        }
        if !self.server_histograms {
            histograms.push(LatencySample {
                upstream: &self.name,
                server: None,
                latency: &self.metrics.server_latency,
            });
        }
    }
}
