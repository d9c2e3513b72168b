//! Server health: active HTTP checks, passive ejection from live traffic, slow start
//! and the panic threshold.
//!
//! This module is the only writer of a server's `healthy` mark. Two sources drive it:
//! - active checks: each server gets `GET path` on a connection of its own every
//!   `interval` (plus up to 10% jitter, so checks of many servers do not align);
//!   `unhealthy_threshold` failures in a row mark the server down, `healthy_threshold`
//!   passes in a row mark it up. One task per upstream runs them all, from a queue
//!   of due times: a task per server cost ~4 KiB each while idle, the whole of an
//!   idle server's budget;
//! - passive detection: the proxy reports each attempt's outcome (`record`);
//!   `consecutive_failures` connection failures or timeouts (and 5xx, if
//!   `count_5xx`) eject the server. With an active check, the check brings it back;
//!   without one it comes back after `ejection_time`, doubled on each repeat up to
//!   `max_ejection_time`, as Envoy's outlier detection does.
//!
//! Readers: the balancer's eligibility test in `proxy::forward` reads the mark, the
//! slow-start ramp and the panic threshold. Every transition is logged once and
//! mirrored in `weir_upstream_server_healthy`; every active check is counted in
//! `weir_health_checks_total`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode};

use super::client;
use crate::body::Outbound;
use crate::clock::now_ms;
use crate::config::{StatusSet, UpstreamConfig};
use crate::http::h1::client::NoExtra;
use crate::upstream::{Server, Upstream};

/// How one upstream judges its servers; built once per runtime.
pub struct HealthPolicy {
    pub check: Option<ActiveCheck>,
    pub passive: Passive,
    pub slow_start: Option<Duration>,
    /// Panic threshold in percent of primaries; `None` is off.
    pub min_healthy_percent: Option<u8>,
}

/// The active check's settings.
pub struct ActiveCheck {
    pub path: PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expected: StatusSet,
    pub host: Option<HeaderValue>,
}

/// Passive detection's settings.
pub struct Passive {
    /// 0 is off.
    pub consecutive_failures: u32,
    pub count_5xx: bool,
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Most primaries, in percent, passive detection may hold ejected at once.
    pub max_ejection_percent: u8,
}

/// What one attempt on a server came to, as passive detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Response(StatusCode),
    /// Refused, reset, or no answer in time.
    Failure(&'static str),
}

static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("weir-health-check/", env!("CARGO_PKG_VERSION")));

impl HealthPolicy {
    /// Builds the policy from a validated upstream config.
    pub fn new(config: &UpstreamConfig) -> HealthPolicy {
        let check = config.health_check.as_ref().map(|hc| ActiveCheck {
            path: hc.path.get_ref().0.clone(),
            interval: hc.interval.0,
            timeout: hc.timeout.0,
            healthy_threshold: *hc.healthy_threshold.get_ref(),
            unhealthy_threshold: *hc.unhealthy_threshold.get_ref(),
            expected: *hc.expected_status.get_ref(),
            host: hc.host.as_ref().map(|h| h.0.clone()),
        });
        let p = &config.passive_health;
        HealthPolicy {
            check,
            passive: Passive {
                consecutive_failures: p.consecutive_failures,
                count_5xx: p.count_5xx,
                ejection_time: p.ejection_time.0,
                max_ejection_time: p.max_ejection_time.0,
                max_ejection_percent: *p.max_ejection_percent.get_ref(),
            },
            slow_start: config.slow_start.map(|d| d.0),
            min_healthy_percent: config.min_healthy_percent.as_ref().map(|p| *p.get_ref()),
        }
    }

    /// Whether too few primaries are healthy, so health should be ignored. Costs a
    /// scan of the servers, and only when a threshold is configured.
    pub fn in_panic(&self, servers: &[Arc<Server>]) -> bool {
        let Some(min) = self.min_healthy_percent else { return false };
        let (healthy, total) = servers
            .iter()
            .filter(|s| !s.backup)
            .fold((0usize, 0usize), |(h, t), s| (h + usize::from(s.is_healthy()), t + 1));
        total > 0 && healthy * 100 < usize::from(min) * total
    }

    /// Slow start: whether a server still ramping up takes this request. The share
    /// grows linearly from 10% to 100% over the window after it came up.
    pub fn ramp_admits(&self, server: &Server) -> bool {
        let Some(window) = self.slow_start else { return true };
        let up_since = server.state.up_since_ms.load(Relaxed);
        if up_since == 0 {
            return true;
        }
        let elapsed = now_ms().saturating_sub(up_since);
        let window = window.as_millis().max(1) as u64;
        if elapsed >= window {
            return true;
        }
        let share = 0.1 + 0.9 * (elapsed as f64 / window as f64);
        fastrand::f64() < share
    }
}

/// Marks `server` up or down, logging and counting the transition once.
pub fn mark(upstream: &Upstream, server: &Server, healthy: bool, reason: &str) {
    if server.set_healthy(healthy) == healthy {
        return;
    }
    let (from, to) = if healthy { ("down", "up") } else { ("up", "down") };
    if healthy {
        if upstream.health.slow_start.is_some() {
            server.state.up_since_ms.store(now_ms(), Relaxed);
        }
        server.state.consecutive_failures.store(0, Relaxed);
        tracing::info!(upstream = %upstream.name, server = %server.address, from, to, reason, "server marked up");
    } else {
        tracing::warn!(upstream = %upstream.name, server = %server.address, from, to, reason, "server marked down");
    }
}

/// Passive detection: counts an attempt's outcome against its server and ejects the
/// server after `consecutive_failures` failures in a row. Also counts the attempt in
/// the server's recent-error window (5xx and failures are errors there).
pub fn record(upstream: &Arc<Upstream>, server: &Arc<Server>, outcome: Outcome) {
    record_at(upstream, server, outcome, tokio::time::Instant::now());
}

/// `record`, for an outcome that came at `at` (a reading of the clock the caller
/// made already).
pub fn record_at(upstream: &Arc<Upstream>, server: &Arc<Server>, outcome: Outcome, at: tokio::time::Instant) {
    let is_error = match outcome {
        Outcome::Response(status) => status.is_server_error(),
        Outcome::Failure(_) => true,
    };
    // Every attempt feeds the one-minute error window that `/status` shows.
    server.state.recent.record(crate::clock::ms_at(at) / 1000, is_error);
    let passive = &upstream.health.passive;
    if passive.consecutive_failures == 0 {
        return;
    }
    let failed = match outcome {
        Outcome::Response(status) => passive.count_5xx && status.is_server_error(),
        Outcome::Failure(_) => true,
    };
    let failures = &server.state.consecutive_failures;
    if !failed {
        // Read first: most requests succeed, and a store would bounce the cache line
        // between cores for nothing.
        if failures.load(Relaxed) != 0 {
            failures.store(0, Relaxed);
        }
        return;
    }
    let count = failures.fetch_add(1, Relaxed) + 1;
    if count < passive.consecutive_failures || !server.is_healthy() {
        return;
    }
    let reason = match outcome {
        Outcome::Failure(why) => why,
        Outcome::Response(_) => "5xx responses",
    };
    if !server.backup && !may_eject_another(upstream, passive.max_ejection_percent) {
        tracing::debug!(upstream = %upstream.name, server = %server.address, "not ejected: max_ejection_percent reached");
        return;
    }
    mark(upstream, server, false, reason);
    if upstream.health.check.is_none() {
        eject_for_a_while(upstream.clone(), server.clone());
    }
}

/// Whether one more primary may be ejected: always the first, then only while the
/// ejected share stays within `max_percent`. Scans the servers, on ejection only.
fn may_eject_another(upstream: &Upstream, max_percent: u8) -> bool {
    let (down, total) = upstream
        .servers
        .iter()
        .filter(|s| !s.backup)
        .fold((0usize, 0usize), |(d, t), s| (d + usize::from(!s.is_healthy()), t + 1));
    down == 0 || (down + 1) * 100 <= usize::from(max_percent) * total
}

/// Without an active check, an ejected server comes back after its ejection time:
/// `ejection_time` x 2^(ejections - 1), capped. A server that stayed up longer than
/// `max_ejection_time` since its last return starts again from `ejection_time`.
fn eject_for_a_while(upstream: Arc<Upstream>, server: Arc<Server>) {
    let passive = &upstream.health.passive;
    let state = &server.state;
    let now = now_ms();
    let back_at = state.readmitted_ms.load(Relaxed);
    if back_at != 0 && now.saturating_sub(back_at) > passive.max_ejection_time.as_millis() as u64 {
        state.ejections.store(0, Relaxed);
    }
    let n = state.ejections.fetch_add(1, Relaxed).min(20);
    let ejection = passive.ejection_time.saturating_mul(1 << n).min(passive.max_ejection_time);
    tracing::info!(upstream = %upstream.name, server = %server.address, ?ejection, "ejected until the time is up");
    tokio::spawn(async move {
        tokio::time::sleep(ejection).await;
        server.state.readmitted_ms.store(now_ms(), Relaxed);
        mark(&upstream, &server, true, "ejection time over");
    });
}

/// The active checks of `upstream`'s servers, if it has a `health_check`: a task body
/// that runs until dropped. First checks are spread over one interval so the
/// servers of a pool are not probed in step; checks of different servers run
/// concurrently, each server's one after another.
pub fn checks(upstream: &Arc<Upstream>) -> Option<impl Future<Output = ()> + Send + 'static> {
    upstream.health.check.as_ref()?;
    let upstream = upstream.clone();
    Some(async move { run_checks(&upstream).await })
}

/// A server's run of results, for the thresholds.
#[derive(Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

async fn run_checks(upstream: &Arc<Upstream>) {
    let Some(check) = &upstream.health.check else { return };
    let start = Instant::now();
    // Due times, soonest first; a server is in the queue or being probed, never both.
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..upstream.servers.len())
        .map(|i| Reverse((start + check.interval.mul_f64(fastrand::f64()), i)))
        .collect();
    let mut streaks = vec![Streak::default(); upstream.servers.len()];
    let mut probing = FuturesUnordered::new();
    let sleep = tokio::time::sleep_until(start);
    tokio::pin!(sleep);
    loop {
        if let Some(Reverse((at, _))) = due.peek() {
            sleep.as_mut().reset(*at);
        }
        tokio::select! {
            () = &mut sleep, if !due.is_empty() => {
                let now = Instant::now();
                while let Some(&Reverse((at, i))) = due.peek() {
                    if at > now {
                        break;
                    }
                    due.pop();
                    let server = &upstream.servers[i];
                    probing.push(async move { (i, probe(upstream, server, check).await) });
                }
            }
            Some((i, result)) = probing.next() => {
                judge(upstream, &upstream.servers[i], check, &mut streaks[i], result);
                let jitter = check.interval.mul_f64(fastrand::f64() * 0.1);
                due.push(Reverse((Instant::now() + check.interval + jitter, i)));
            }
            else => return,
        }
    }
}

/// Counts one check's result and marks the server when a threshold is reached.
fn judge(
    upstream: &Upstream,
    server: &Server,
    check: &ActiveCheck,
    streak: &mut Streak,
    result: Result<(), String>,
) {
    match result {
        Ok(()) => {
            server.metrics.checks_passed.inc();
            streak.failures = 0;
            streak.passes = streak.passes.saturating_add(1);
            if streak.passes >= check.healthy_threshold && !server.is_healthy() {
                mark(upstream, server, true, "health check passed");
            }
        }
        Err(why) => {
            server.metrics.checks_failed.inc();
            streak.passes = 0;
            streak.failures = streak.failures.saturating_add(1);
            tracing::debug!(upstream = %upstream.name, server = %server.address, %why, "health check failed");
            if streak.failures >= check.unhealthy_threshold && server.is_healthy() {
                mark(upstream, server, false, "health check failed");
            }
        }
    }
}

/// One check: a fresh connection, `GET path`, a status in the expected ranges, all
/// within `timeout`.
async fn probe(upstream: &Upstream, server: &Server, check: &ActiveCheck) -> Result<(), String> {
    let attempt = async {
        // A connection of its own, never the request pool's, but spoken the way the
        // upstream's requests are (TLS, h2), so a check tests what traffic will meet.
        let sender = client::connect(upstream, server).await.map_err(|e| e.to_string())?;
        let host = match &check.host {
            Some(h) => h.clone(),
            None => HeaderValue::from_str(&server.address).map_err(|e| e.to_string())?,
        };
        let mut req = Request::get(check.path.clone())
            .header(header::HOST, host)
            .header(header::USER_AGENT, USER_AGENT.clone())
            .body(Outbound::Empty)
            .map_err(|e| e.to_string())?;
        let response = sender
            .send(&mut req, None::<&NoExtra>, upstream.tls.is_some(), false)
            .await
            .map_err(|f| format!("request: {}", f.error))?;
        let status = response.status();
        if check.expected.contains(status) {
            Ok(())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}
