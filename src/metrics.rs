//! Prometheus metrics: the registry, the metric families, and the handle structs the
//! request path holds.
//!
//! Families are registered once per process in `Metrics::new` and outlive reloads, so
//! counters never reset when the config changes. `Runtime::build` resolves the labelled
//! handles for each upstream into `UpstreamMetrics`; after that the request path only
//! calls `inc()` and `observe()`. Status codes are the one label not known at build
//! time: `CodeCounters` resolves each code's handle the first time it is seen, using
//! the code's static string, and keeps it.
//!
//! Per-server families are not in the registry: servers can number thousands, so
//! their counts are plain atomics (`server`), carried over reloads with the server,
//! and written into the exposition from the current runtime at scrape time.

mod server;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub use server::{CodeCounts, Counter, Latency, LatencySample, ServerMetrics, ServerSample};

/// Latency buckets for a proxy: from half a millisecond to the default request timeout.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric family weir exports, registered once per process.
pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub rate_limited_total: IntCounterVec,
    pub rate_limit_store_errors_total: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub tunnels_active: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub upstream_queue_depth: IntGaugeVec,
    pub upstream_queue_wait: HistogramVec,
    pub upstream_retries_total: IntCounterVec,
    pub request_bytes_total: IntCounterVec,
    pub response_bytes_total: IntCounterVec,
    pub access_log_dropped_total: IntCounter,
    pub cache_requests_total: IntCounterVec,
    pub cache_size_bytes: IntGaugeVec,
    pub cache_entries: IntGaugeVec,
    pub cache_evictions_total: IntCounterVec,
    pub access_denied_total: IntCounterVec,
    pub local_responses_total: IntCounterVec,
    pub admin_misdirected_total: IntCounter,
    pub admin_unauthorized_total: IntCounter,
}

impl Metrics {
    /// Registers every family. Fails only on a duplicate or malformed family, which is
    /// a programming error caught by the tests.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let families = Families { registry: &registry };
        let ClientFamilies {
            requests_total,
            request_duration,
            request_bytes_total,
            response_bytes_total,
            connections_active,
            tunnels_active,
        } = families.client()?;
        let UpstreamFamilies { upstream_queue_depth, upstream_queue_wait, upstream_retries_total } =
            families.upstream()?;
        let PolicyFamilies {
            rate_limited_total,
            rate_limit_store_errors_total,
            access_denied_total,
            local_responses_total,
        } = families.policy()?;
        let CacheFamilies { cache_requests_total, cache_size_bytes, cache_entries, cache_evictions_total } =
            families.cache()?;
        let OperationFamilies {
            config_reloads_total,
            access_log_dropped_total,
            admin_misdirected_total,
            admin_unauthorized_total,
        } = families.operations()?;
        let metrics = Metrics {
            registry,
            requests_total,
            request_duration,
            rate_limited_total,
            rate_limit_store_errors_total,
            connections_active,
            tunnels_active,
            config_reloads_total,
            upstream_queue_depth,
            upstream_queue_wait,
            upstream_retries_total,
            request_bytes_total,
            response_bytes_total,
            access_log_dropped_total,
            cache_requests_total,
            cache_size_bytes,
            cache_entries,
            cache_evictions_total,
            access_denied_total,
            local_responses_total,
            admin_misdirected_total,
            admin_unauthorized_total,
        };
        // Both results exist from the start, so `increase(...{result="failure"})` has a
        // series to work on before the first failed reload.
        for result in ["success", "failure"] {
            metrics.config_reloads_total.with_label_values(&[result]);
        }
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(metrics)
    }

    /// The Prometheus text exposition of every family: the registry's, then the
    /// per-server ones of `servers` and `histograms` (see `server`). Megabytes at
    /// thousands of servers: call it off the serving threads.
    pub fn encode(&self, servers: &[ServerSample<'_>], histograms: &[LatencySample<'_>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024 + servers.len() * 400);
        // Encoding into a Vec fails only on families with inconsistent help text,
        // which registration already rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        server::encode(&mut out, servers, histograms);
        out
    }

    /// Handles for one upstream.
    pub fn upstream(&self, upstream: &str, server_latency: Arc<Latency>) -> UpstreamMetrics {
        UpstreamMetrics {
            client: self.client(upstream),
            server_latency,
            retries: self.upstream_retries_total.with_label_values(&[upstream]),
            request_bytes: self.request_bytes_total.with_label_values(&[upstream]),
        }
    }

    /// What clients saw of requests that reached no upstream (`upstream=""`): no route,
    /// refused before routing, or answered by the route itself. Only the client-side
    /// families: nothing is retried or sent on, so `weir_upstream_retries_total` and
    /// the byte counters get no `upstream=""` series that could never move.
    pub fn unrouted(&self) -> ClientMetrics {
        self.client("")
    }

    fn client(&self, upstream: &str) -> ClientMetrics {
        ClientMetrics {
            requests: CodeCounters::new(self.requests_total.clone(), vec![upstream.to_string()]),
            duration: self.request_duration.with_label_values(&[upstream]),
        }
    }

    /// `weir_local_responses_total` of the route labelled `route`.
    pub fn local(&self, route: &str) -> CodeCounters {
        CodeCounters::new(self.local_responses_total.clone(), vec![route.to_string()])
    }

    /// The metrics of a new server of `upstream`: its latencies go to `duration`
    /// (its own histogram, or its upstream's).
    pub fn server(&self, upstream: &str, duration: Arc<Latency>) -> ServerMetrics {
        ServerMetrics::new(duration, self.response_bytes_total.with_label_values(&[upstream]))
    }
}

/// Registers families in one registry; the groups below are `Metrics::new`'s parts.
struct Families<'a> {
    registry: &'a Registry,
}

type Made<T> = Result<T, prometheus::Error>;

impl Families<'_> {
    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> Made<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    /// A counter without labels.
    fn single(&self, name: &str, help: &str) -> Made<IntCounter> {
        let c = IntCounter::new(name, help)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> Made<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    fn histogram(&self, name: &str, help: &str, labels: &[&str]) -> Made<HistogramVec> {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)?;
        self.registry.register(Box::new(h.clone()))?;
        Ok(h)
    }

    /// What clients sent and got, and their connections.
    fn client(&self) -> Made<ClientFamilies> {
        Ok(ClientFamilies {
            requests_total: self.counter(
                "weir_requests_total",
                "Client requests answered, by upstream (\"\" when no route matched) and status code.",
                &["upstream", "code"],
            )?,
            request_duration: self.histogram(
                "weir_request_duration_seconds",
                "Time from a request's arrival to its response headers, by upstream.",
                &["upstream"],
            )?,
            request_bytes_total: self.counter(
                "weir_request_bytes_total",
                "Request body bytes forwarded to each upstream.",
                &["upstream"],
            )?,
            response_bytes_total: self.counter(
                "weir_response_bytes_total",
                "Response body bytes relayed from each upstream to clients.",
                &["upstream"],
            )?,
            connections_active: self.gauge(
                "weir_connections_active",
                "Client connections open, by listener.",
                &["listener"],
            )?,
            tunnels_active: self.gauge(
                "weir_tunnels_active",
                "Upgraded connections (WebSocket and other tunnels) open, by listener; each is also in weir_connections_active.",
                &["listener"],
            )?,
        })
    }

    /// Upstreams: their queues and retries. What each server did is in `server`.
    fn upstream(&self) -> Made<UpstreamFamilies> {
        Ok(UpstreamFamilies {
            upstream_queue_depth: self.gauge(
                "weir_upstream_queue_depth",
                "Requests waiting for a free max_in_flight slot of an upstream.",
                &["upstream"],
            )?,
            upstream_queue_wait: self.histogram(
                "weir_upstream_queue_wait_seconds",
                "Time requests that had to queue waited for an upstream slot (admitted or not).",
                &["upstream"],
            )?,
            upstream_retries_total: self.counter(
                "weir_upstream_retries_total",
                "Requests sent again to another server after a failed attempt.",
                &["upstream"],
            )?,
        })
    }

    /// Requests refused by a route's rate limit or access lists, and answers routes made
    /// themselves.
    fn policy(&self) -> Made<PolicyFamilies> {
        Ok(PolicyFamilies {
            rate_limited_total: self.counter(
                "weir_rate_limited_total",
                "Requests refused by a rate limit.",
                &["rate_limit"],
            )?,
            rate_limit_store_errors_total: self.counter(
                "weir_rate_limit_store_errors_total",
                "Rate limit checks decided without the shared store (Redis failed, timed out, or is being skipped after a failure).",
                &["rate_limit"],
            )?,
            access_denied_total: self.counter(
                "weir_access_denied_total",
                "Requests refused with 403 by a route's allow/deny lists, by route name.",
                &["route"],
            )?,
            local_responses_total: self.counter(
                "weir_local_responses_total",
                "Answers a route made by itself (redirect or respond), by route name and status code; never upstream errors.",
                &["route", "code"],
            )?,
        })
    }

    fn cache(&self) -> Made<CacheFamilies> {
        Ok(CacheFamilies {
            cache_requests_total: self.counter(
                "weir_cache_requests_total",
                "Requests on cached routes, by cache and result (hit, miss, stale, coalesced, bypass).",
                &["cache", "result"],
            )?,
            cache_size_bytes: self.gauge(
                "weir_cache_size_bytes",
                "Bytes held by a cache: bodies, headers and keys.",
                &["cache"],
            )?,
            cache_entries: self.gauge("weir_cache_entries", "Objects held by a cache.", &["cache"])?,
            cache_evictions_total: self.counter(
                "weir_cache_evictions_total",
                "Entries a cache dropped to stay within max_size.",
                &["cache"],
            )?,
        })
    }

    /// weir's own running: reloads, the access log writer, the admin listener.
    fn operations(&self) -> Made<OperationFamilies> {
        Ok(OperationFamilies {
            config_reloads_total: self.counter(
                "weir_config_reloads_total",
                "Config reloads, by result (success or failure).",
                &["result"],
            )?,
            access_log_dropped_total: self.single(
                "weir_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            )?,
            admin_misdirected_total: self.single(
                "weir_admin_misdirected_total",
                "Admin requests refused with 421 because their Host is not a name of the admin listener.",
            )?,
            admin_unauthorized_total: self.single(
                "weir_admin_unauthorized_total",
                "Admin requests that change state refused for want of the right bearer token (401 or 403).",
            )?,
        })
    }
}

struct ClientFamilies {
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    request_bytes_total: IntCounterVec,
    response_bytes_total: IntCounterVec,
    connections_active: IntGaugeVec,
    tunnels_active: IntGaugeVec,
}

struct UpstreamFamilies {
    upstream_queue_depth: IntGaugeVec,
    upstream_queue_wait: HistogramVec,
    upstream_retries_total: IntCounterVec,
}

struct PolicyFamilies {
    rate_limited_total: IntCounterVec,
    rate_limit_store_errors_total: IntCounterVec,
    access_denied_total: IntCounterVec,
    local_responses_total: IntCounterVec,
}

struct CacheFamilies {
    cache_requests_total: IntCounterVec,
    cache_size_bytes: IntGaugeVec,
    cache_entries: IntGaugeVec,
    cache_evictions_total: IntCounterVec,
}

struct OperationFamilies {
    config_reloads_total: IntCounterVec,
    access_log_dropped_total: IntCounter,
    admin_misdirected_total: IntCounter,
    admin_unauthorized_total: IntCounter,
}

impl Metrics {
    /// Handles for one upstream's `max_in_flight` queue.
    pub fn queue(&self, upstream: &str) -> QueueMetrics {
        QueueMetrics {
            depth: self.upstream_queue_depth.with_label_values(&[upstream]),
            wait: self.upstream_queue_wait.with_label_values(&[upstream]),
        }
    }
}

/// Per-upstream queue handles (`max_in_flight`).
pub struct QueueMetrics {
    pub depth: IntGauge,
    pub wait: Histogram,
}

impl Metrics {
    /// Handles for one cache.
    pub fn cache(&self, cache: &str) -> CacheMetrics {
        let result = |r: &str| self.cache_requests_total.with_label_values(&[cache, r]);
        CacheMetrics {
            hit: result("hit"),
            miss: result("miss"),
            stale: result("stale"),
            coalesced: result("coalesced"),
            bypass: result("bypass"),
            size_bytes: self.cache_size_bytes.with_label_values(&[cache]),
            entries: self.cache_entries.with_label_values(&[cache]),
            evictions: self.cache_evictions_total.with_label_values(&[cache]),
        }
    }
}

/// Per-cache handles.
pub struct CacheMetrics {
    /// Answered from a fresh entry.
    pub hit: IntCounter,
    /// Went upstream for the response.
    pub miss: IntCounter,
    /// Answered from a stale entry (while revalidating, or on an upstream error).
    pub stale: IntCounter,
    /// Waited for another request's fetch of the same key and was answered from it.
    pub coalesced: IntCounter,
    /// Not cacheable by method or request (POST, upgrades, `Authorization`).
    pub bypass: IntCounter,
    pub size_bytes: IntGauge,
    pub entries: IntGauge,
    pub evictions: IntCounter,
}

/// What clients saw of the requests under one `upstream` label value.
pub struct ClientMetrics {
    pub requests: CodeCounters,
    pub duration: Histogram,
}

impl ClientMetrics {
    /// Counts one answered client request.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.requests.inc(status);
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Per-upstream handles: what the client saw, retries and bytes sent on.
pub struct UpstreamMetrics {
    pub client: ClientMetrics,
    /// `weir_upstream_request_duration_seconds` of the upstream's servers together,
    /// unless each has its own (`server_histograms`). Carried over reloads by
    /// `Runtime::build`.
    pub server_latency: Arc<Latency>,
    pub retries: IntCounter,
    /// Request body bytes sent upstream, counted as frames pass (`body::RequestBody`).
    pub request_bytes: IntCounter,
}

impl UpstreamMetrics {
    /// Counts one answered client request.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.client.record(status, elapsed);
    }
}

/// One counter per status code, each resolved on first use from the code's static
/// string, so counting never formats a label.
pub struct CodeCounters {
    family: IntCounterVec,
    labels: Vec<String>,
    by_code: Box<[OnceLock<IntCounter>]>,
}

impl CodeCounters {
    fn new(family: IntCounterVec, labels: Vec<String>) -> CodeCounters {
        CodeCounters { family, labels, by_code: (100..600).map(|_| OnceLock::new()).collect() }
    }

    /// Adds one to `code`'s counter.
    pub fn inc(&self, code: StatusCode) {
        let Some(slot) = self.by_code.get(usize::from(code.as_u16()).wrapping_sub(100)) else {
            return;
        };
        slot.get_or_init(|| {
            let mut values: Vec<&str> = self.labels.iter().map(String::as_str).collect();
            values.push(code.as_str());
            self.family.with_label_values(&values)
        })
        .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_registers_and_encodes() {
        let m = Metrics::new().unwrap();
        let up = m.upstream("api", Arc::default());
        up.record(StatusCode::OK, Duration::from_millis(3));
        up.record(StatusCode::OK, Duration::from_millis(3));
        let srv = m.server("api", up.server_latency.clone());
        srv.requests.inc(StatusCode::BAD_GATEWAY);
        let sample = ServerSample {
            upstream: "api",
            server: "127.0.0.1:1",
            healthy: true,
            in_flight: 0,
            metrics: &srv,
            checked: true,
        };
        let text = String::from_utf8(m.encode(&[sample], &[])).unwrap();
        assert!(text.contains("weir_requests_total{code=\"200\",upstream=\"api\"} 2"), "{text}");
        assert!(text.contains(
            "weir_upstream_requests_total{code=\"502\",server=\"127.0.0.1:1\",upstream=\"api\"} 1"
        ));
    }

    #[test]
    fn requests_without_an_upstream_get_no_upstream_only_series() {
        let m = Metrics::new().unwrap();
        m.unrouted().record(StatusCode::NOT_FOUND, Duration::from_millis(1));
        let text = String::from_utf8(m.encode(&[], &[])).unwrap();
        assert!(text.contains("weir_requests_total{code=\"404\",upstream=\"\"} 1"), "{text}");
        for family in ["weir_upstream_retries_total", "weir_request_bytes_total"] {
            assert!(!text.contains(&format!("{family}{{upstream=\"\"}}")), "{family}: {text}");
        }
    }
}
