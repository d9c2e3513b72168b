//! Per-server metrics as plain atomics, and their text exposition.
//!
//! An upstream may have thousands of servers. As Prometheus handles, each server
//! cost 25 series with their label strings in the registry's maps, a 500-slot table
//! of status-code handles (~8 KiB), and about a microsecond per series at every
//! scrape (gather builds a protobuf-like tree, then the encoder walks it); a removed
//! server's series also stayed in the registry for the life of the process. Here a
//! server's counts are a few atomics beside it, and the scrape writes their lines
//! straight from the current runtime's servers, so a server a reload removed is gone
//! from the next scrape and costs nothing after its last request.
//!
//! The families written here (names, labels and meaning as in `docs/metrics.md`):
//! `weir_upstream_requests_total`, `weir_upstream_request_duration_seconds`,
//! `weir_upstream_server_healthy`, `weir_upstream_server_in_flight`,
//! `weir_upstream_connect_errors_total`, `weir_upstream_timeouts_total` and
//! `weir_health_checks_total`.

use std::io::Write;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use http::StatusCode;
use prometheus::IntCounter;

use super::LATENCY_BUCKETS;

/// A counter that is one atomic.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// How many distinct status codes a server counts without the overflow table; a
/// server answers with a handful (200, 304, 404, 502...).
const CODE_SLOTS: usize = 8;

/// Responses by status code. The first `CODE_SLOTS` codes a server answers with each
/// claim a slot; rarer ones go to a table of every code, made on first need.
#[derive(Default)]
pub struct CodeCounts {
    slots: [CodeSlot; CODE_SLOTS],
    overflow: OnceLock<Box<[AtomicU64]>>,
}

#[derive(Default)]
struct CodeSlot {
    /// 0 while free.
    code: AtomicU16,
    count: AtomicU64,
}

impl CodeCounts {
    /// Adds one to `code`'s count. No lock; allocates once, on a server's ninth
    /// distinct code.
    pub fn inc(&self, code: StatusCode) {
        let code = code.as_u16();
        for slot in &self.slots {
            let mut held = slot.code.load(Relaxed);
            if held == 0 {
                held = match slot.code.compare_exchange(0, code, Relaxed, Relaxed) {
                    Ok(_) => code,
                    Err(other) => other,
                };
            }
            if held == code {
                slot.count.fetch_add(1, Relaxed);
                return;
            }
        }
        let table = self.overflow.get_or_init(|| (100..600).map(|_| AtomicU64::new(0)).collect());
        if let Some(count) = table.get(usize::from(code).wrapping_sub(100)) {
            count.fetch_add(1, Relaxed);
        }
    }

    /// Every code counted so far with its count, by code.
    pub fn counts(&self) -> Vec<(u16, u64)> {
        let mut all: Vec<(u16, u64)> = self
            .slots
            .iter()
            .map(|s| (s.code.load(Relaxed), s.count.load(Relaxed)))
            .filter(|&(code, _)| code != 0)
            .collect();
        if let Some(table) = self.overflow.get() {
            let more = table.iter().enumerate().map(|(i, c)| (i as u16 + 100, c.load(Relaxed)));
            all.extend(more.filter(|&(_, n)| n > 0));
        }
        all.sort_unstable();
        all
    }

    /// The count of `code` (tests).
    pub fn get(&self, code: u16) -> u64 {
        self.counts().iter().filter(|(c, _)| *c == code).map(|(_, n)| n).sum()
    }
}

/// A latency histogram over `LATENCY_BUCKETS`, in atomics. Observations land in one
/// bucket each (the scrape adds them up), so `_count` and `+Inf` always agree.
pub struct Latency {
    /// One per bound, then one for above the last.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }
}

impl Latency {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add((seconds * 1e9) as u64, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

/// What each server counts. Shared by every runtime's `Server` for the same upstream
/// and address, so counts run on across reloads.
pub struct ServerMetrics {
    /// Responses by status code.
    pub requests: CodeCounts,
    /// The server's own histogram with `server_histograms`, else its upstream's,
    /// shared by all its servers.
    pub duration: Arc<Latency>,
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub checks_passed: Counter,
    pub checks_failed: Counter,
    /// The upstream's response-bytes counter, held here so the response body, which
    /// knows its server, counts without a lookup.
    pub response_bytes: IntCounter,
}

impl ServerMetrics {
    pub fn new(duration: Arc<Latency>, response_bytes: IntCounter) -> ServerMetrics {
        ServerMetrics {
            requests: CodeCounts::default(),
            duration,
            connect_errors: Counter::default(),
            timeouts: Counter::default(),
            checks_passed: Counter::default(),
            checks_failed: Counter::default(),
            response_bytes,
        }
    }
}

/// One server as the scrape sees it.
pub struct ServerSample<'a> {
    pub upstream: &'a str,
    pub server: &'a str,
    pub healthy: bool,
    pub in_flight: u64,
    pub metrics: &'a ServerMetrics,
    /// Whether its upstream runs active checks: without them the check counters
    /// would stay 0 forever and are left out.
    pub checked: bool,
}

/// One `weir_upstream_request_duration_seconds` histogram: an upstream's (`server`
/// `None`), or one server's.
pub struct LatencySample<'a> {
    pub upstream: &'a str,
    pub server: Option<&'a str>,
    pub latency: &'a Latency,
}

/// Appends the per-server families' exposition for `servers` and `histograms`.
pub fn encode(out: &mut Vec<u8>, servers: &[ServerSample<'_>], histograms: &[LatencySample<'_>]) {
    let requests: Vec<_> = servers.iter().map(|s| (s, s.metrics.requests.counts())).collect();
    if requests.iter().any(|(_, counts)| !counts.is_empty()) {
        header(
            out,
            "weir_upstream_requests_total",
            "counter",
            "Requests sent to each upstream server that got a response, by status code.",
        );
    }
    for (s, counts) in requests {
        for (code, n) in counts {
            let _ = write!(out, "weir_upstream_requests_total{{code=\"{code}\",");
            labels(out, s.upstream, s.server);
            let _ = writeln!(out, "}} {n}");
        }
    }
    if histograms.is_empty() {
        return encode_simple(out, servers);
    }
    header(
        out,
        "weir_upstream_request_duration_seconds",
        "histogram",
        "Time from sending a request to a server to its response headers, by upstream (and server, with server_histograms).",
    );
    for h in histograms {
        histogram(out, h);
    }
    encode_simple(out, servers);
}

/// What one simple family shows of a server.
type Reading = fn(&ServerSample<'_>) -> u64;

/// The families with one line (or two) per server.
fn encode_simple(out: &mut Vec<u8>, servers: &[ServerSample<'_>]) {
    if servers.is_empty() {
        return;
    }
    let simple: [(&str, &str, &str, Reading); 4] = [
        (
            "weir_upstream_server_healthy",
            "gauge",
            "1 while a server is considered healthy, 0 while it is marked down.",
            |s| u64::from(s.healthy),
        ),
        (
            "weir_upstream_server_in_flight",
            "gauge",
            "Requests sent to a server whose response has not been fully delivered.",
            |s| s.in_flight,
        ),
        (
            "weir_upstream_connect_errors_total",
            "counter",
            "Connections to a server that were refused, failed or timed out.",
            |s| s.metrics.connect_errors.get(),
        ),
        (
            "weir_upstream_timeouts_total",
            "counter",
            "Requests whose server did not answer within request_timeout.",
            |s| s.metrics.timeouts.get(),
        ),
    ];
    for (name, kind, help, value) in simple {
        header(out, name, kind, help);
        for s in servers {
            out.extend_from_slice(name.as_bytes());
            out.push(b'{');
            labels(out, s.upstream, s.server);
            let _ = writeln!(out, "}} {}", value(s));
        }
    }
    if servers.iter().any(|s| s.checked) {
        header(
            out,
            "weir_health_checks_total",
            "counter",
            "Active health checks of each server, by result (pass or fail).",
        );
    }
    for s in servers.iter().filter(|s| s.checked) {
        for (result, n) in [("fail", &s.metrics.checks_failed), ("pass", &s.metrics.checks_passed)] {
            let _ = write!(out, "weir_health_checks_total{{result=\"{result}\",");
            labels(out, s.upstream, s.server);
            let _ = writeln!(out, "}} {}", n.get());
        }
    }
}

fn header(out: &mut Vec<u8>, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `server="...",upstream="..."`, in the label order the registry's encoder uses.
fn labels(out: &mut Vec<u8>, upstream: &str, server: &str) {
    out.extend_from_slice(b"server=\"");
    escaped(out, server);
    out.extend_from_slice(b"\",upstream=\"");
    escaped(out, upstream);
    out.push(b'"');
}

/// A label value, with `\`, `"` and newlines escaped as the text format wants.
fn escaped(out: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

/// The bounds as the registry's encoder prints them (`f64`'s `Display`).
const BOUNDS: [&str; LATENCY_BUCKETS.len()] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "30",
];

fn histogram(out: &mut Vec<u8>, h: &LatencySample<'_>) {
    let series = |out: &mut Vec<u8>, suffix: &str| {
        out.extend_from_slice(b"weir_upstream_request_duration_seconds");
        out.extend_from_slice(suffix.as_bytes());
        out.push(b'{');
        match h.server {
            Some(server) => labels(out, h.upstream, server),
            None => {
                out.extend_from_slice(b"upstream=\"");
                escaped(out, h.upstream);
                out.push(b'"');
            }
        }
    };
    let mut total = 0;
    for (i, bucket) in h.latency.buckets.iter().enumerate() {
        total += bucket.load(Relaxed);
        series(out, "_bucket");
        let le = BOUNDS.get(i).copied().unwrap_or("+Inf");
        let _ = writeln!(out, ",le=\"{le}\"}} {total}");
    }
    series(out, "_sum");
    let _ = writeln!(out, "}} {}", h.latency.sum_nanos.load(Relaxed) as f64 / 1e9);
    series(out, "_count");
    let _ = writeln!(out, "}} {total}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_beyond_the_slots_are_counted_too() {
        let counts = CodeCounts::default();
        for code in (200..220).chain([200, 200, 599]) {
            counts.inc(StatusCode::from_u16(code).unwrap());
        }
        let all = counts.counts();
        assert_eq!(all.len(), 21);
        assert_eq!(all[0], (200, 3));
        assert_eq!(counts.get(219), 1);
        assert_eq!(counts.get(599), 1);
        assert_eq!(counts.get(404), 0);
    }

    #[test]
    fn bounds_are_printed_as_the_registry_prints_them() {
        for (bound, shown) in LATENCY_BUCKETS.iter().zip(BOUNDS) {
            assert_eq!(bound.to_string(), shown);
        }
    }

    #[test]
    fn the_exposition_has_every_family_and_escapes_labels() {
        let m = ServerMetrics::new(Arc::default(), IntCounter::new("x", "x").unwrap());
        m.requests.inc(StatusCode::OK);
        m.duration.observe(0.003);
        m.duration.observe(100.0);
        let s = ServerSample {
            upstream: "api",
            server: "a\"b",
            healthy: true,
            in_flight: 2,
            metrics: &m,
            checked: false,
        };
        let h = LatencySample { upstream: "api", server: None, latency: &m.duration };
        let mut out = Vec::new();
        encode(&mut out, &[s], &[h]);
        let text = String::from_utf8(out).unwrap();
        assert!(text
            .contains("weir_upstream_requests_total{code=\"200\",server=\"a\\\"b\",upstream=\"api\"} 1\n"));
        assert!(text.contains("weir_upstream_server_in_flight{server=\"a\\\"b\",upstream=\"api\"} 2\n"));
        assert!(
            text.contains("weir_upstream_request_duration_seconds_bucket{upstream=\"api\",le=\"0.005\"} 1\n")
        );
        assert!(
            text.contains("weir_upstream_request_duration_seconds_bucket{upstream=\"api\",le=\"+Inf\"} 2\n")
        );
        assert!(text.contains("weir_upstream_request_duration_seconds_count{upstream=\"api\"} 2\n"));
        assert!(text.contains("weir_upstream_request_duration_seconds_sum{upstream=\"api\"} 100.003\n"));
        assert!(!text.contains("weir_health_checks_total{"), "no checks configured");
    }
}
