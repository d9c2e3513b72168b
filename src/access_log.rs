//! The access log: one line per request, plain or JSON, to stderr or a file.
//!
//! The request path never formats or writes. `AccessLog::begin` boxes an `Entry` from
//! what the request already holds (cheap clones of the `Bytes`-backed method, URI and
//! `Host`), the proxy fills in the upstream, server, status and retries, and the entry
//! rides in the response body (`body::UpstreamBody`) until the body ends or is
//! dropped, when the byte counts are known. Then `Pending::finish` hands it to a
//! bounded channel without blocking; a dedicated writer thread formats it and writes
//! through a buffered writer, flushing whenever the channel runs dry. When the channel
//! is full the line is dropped and counted in `weir_access_log_dropped_total`: a slow
//! disk must cost log lines, never request latency.
//!
//! One writer per `[access_log]` setting: a reload that keeps the same format and path
//! keeps the writer; a changed one opens a new writer, and the old thread ends when
//! the last request holding it finishes.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Method, Request, Uri};
use prometheus::IntCounter;
use serde::Serialize;

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::http::h1::server::RequestLines;

/// Entries that may wait for the writer; past this, lines are dropped.
pub const QUEUE: usize = 16 * 1024;

/// A running access log writer.
pub struct AccessLog {
    tx: SyncSender<Box<Entry>>,
    dropped: IntCounter,
    format: AccessLogFormat,
    path: Option<PathBuf>,
}

/// What one request's line says. Built at the start of the request, completed at the
/// end, formatted only in the writer thread.
pub struct Entry {
    /// Where it goes; taken when it is queued (`Pending::finish`).
    log: Option<Arc<AccessLog>>,
    started: Instant,
    time: SystemTime,
    client: SocketAddr,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    /// Request body bytes, shared with the request body that counts them; `None`
    /// when the request had no body.
    request_bytes: Option<Arc<AtomicU64>>,
    pub(crate) status: u16,
    /// The upstream's name, shared with it.
    pub(crate) upstream: Option<Arc<str>>,
    /// The address of the last server tried, shared with the server.
    pub(crate) server: Option<Arc<str>>,
    pub(crate) retries: u32,
    /// `X-Request-Id`, on routes with `request_id`.
    pub(crate) request_id: Option<HeaderValue>,
    response_bytes: u64,
    duration: Duration,
}

/// An entry on its way to its writer. One pointer (the writer's handle is in the
/// entry): it rides in every response body, which each layer of the pipeline moves.
pub struct Pending {
    pub(crate) entry: Box<Entry>,
}

impl AccessLog {
    /// Opens the writer for `config`, or reuses `previous` when it writes the same
    /// format to the same place. `None` when the log is off.
    pub fn open(
        config: &AccessLogConfig,
        previous: Option<&Arc<AccessLog>>,
        dropped: &IntCounter,
    ) -> io::Result<Option<Arc<AccessLog>>> {
        if !config.enabled {
            return Ok(None);
        }
        let path = config.path.as_ref().map(|p| PathBuf::from(p.get_ref()));
        if let Some(previous) = previous.filter(|p| p.format == config.format && p.path == path) {
            return Ok(Some(previous.clone()));
        }
        let out: Box<dyn Write + Send> = match &path {
            Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
            None => Box::new(io::stderr()),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let format = config.format;
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_lines(rx, BufWriter::with_capacity(64 * 1024, out), format))?;
        Ok(Some(Arc::new(AccessLog { tx, dropped: dropped.clone(), format, path })))
    }

    /// Starts the entry of one request. Allocates the entry, and a byte tally only
    /// when the request has a body.
    pub fn begin<B: http_body::Body>(
        self: &Arc<Self>,
        started: Instant,
        client: SocketAddr,
        req: &Request<B>,
    ) -> Pending {
        self.begin_lines(started, client, req, None)
    }

    /// `begin`, for a request whose fields may be lines (`RequestLines`, its header
    /// map empty then): its `Host` is read from them.
    pub fn begin_lines<B: http_body::Body>(
        self: &Arc<Self>,
        started: Instant,
        client: SocketAddr,
        req: &Request<B>,
        lines: Option<&RequestLines>,
    ) -> Pending {
        let host = match lines {
            Some(lines) => {
                lines.host().and_then(|v| HeaderValue::from_maybe_shared(lines.block.slice_ref(v)).ok())
            }
            None => req.headers().get(header::HOST).cloned(),
        };
        let request_bytes = (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let entry = Box::new(Entry {
            log: Some(self.clone()),
            started,
            time: UNIX_EPOCH,
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host,
            request_bytes,
            status: 0,
            upstream: None,
            server: None,
            retries: 0,
            request_id: None,
            response_bytes: 0,
            duration: Duration::ZERO,
        });
        Pending { entry }
    }
}

impl Pending {
    /// The request body's byte tally, for `body::RequestBody` to count into.
    pub fn request_tally(&self) -> Option<Arc<AtomicU64>> {
        self.entry.request_bytes.clone()
    }

    /// Completes the entry and queues it; never blocks. A full queue drops the line.
    pub fn finish(mut self, response_bytes: u64) {
        let entry = &mut self.entry;
        entry.duration = entry.started.elapsed();
        entry.time = SystemTime::now();
        entry.response_bytes = response_bytes;
        let Some(log) = entry.log.take() else { return };
        match log.tx.try_send(self.entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => log.dropped.inc(),
        }
    }
}

/// The writer thread: formats and writes entries until every sender is gone, flushing
/// whenever the queue runs dry so a quiet proxy's lines are not held back.
fn write_lines(rx: Receiver<Box<Entry>>, mut out: BufWriter<Box<dyn Write + Send>>, format: AccessLogFormat) {
    let mut line = String::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(entry) = next {
            line.clear();
            format_line(&entry, format, &mut line);
            if out.write_all(line.as_bytes()).is_err() {
                // Nowhere to report a broken log but the operational log; keep going
                // so the queue drains and requests never wait.
                tracing::warn!("access log write failed");
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// One entry as a line, `\n` included.
pub fn format_line(entry: &Entry, format: AccessLogFormat, line: &mut String) {
    let host = match entry.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => entry.host.as_ref().map(HeaderValue::as_bytes),
    };
    let path = entry.uri.path_and_query().map_or(entry.uri.path(), |p| p.as_str());
    let upstream = entry.upstream.as_deref();
    let server = entry.server.as_deref();
    let request_bytes = entry.request_bytes.as_ref().map_or(0, |b| b.load(Relaxed));
    let duration_ms = entry.duration.as_secs_f64() * 1000.0;
    match format {
        AccessLogFormat::Json => {
            let host = host.map(String::from_utf8_lossy);
            let record = JsonLine {
                time: &Rfc3339(entry.time).to_string(),
                client: entry.client,
                method: entry.method.as_str(),
                host: host.as_deref(),
                path,
                status: entry.status,
                upstream,
                server,
                request_bytes,
                response_bytes: entry.response_bytes,
                duration_ms: (duration_ms * 1000.0).round() / 1000.0,
                retries: entry.retries,
                request_id: entry.request_id.as_ref().and_then(|v| v.to_str().ok()),
            };
            if let Ok(json) = serde_json::to_string(&record) {
                line.push_str(&json);
            }
        }
        AccessLogFormat::Plain => {
            let _ = write!(line, "{} {} {} ", Rfc3339(entry.time), entry.client, entry.method);
            push_escaped(line, host.unwrap_or(b"-"));
            line.push(' ');
            push_escaped(line, path.as_bytes());
            let _ = write!(
                line,
                " {} {} {} {} {} {:.3}ms retries={}",
                entry.status,
                upstream.filter(|u| !u.is_empty()).unwrap_or("-"),
                server.unwrap_or("-"),
                request_bytes,
                entry.response_bytes,
                duration_ms,
                entry.retries,
            );
            // Only routes with `request_id` have one; other lines stay as they were.
            if let Some(id) = &entry.request_id {
                line.push_str(" request_id=");
                push_escaped(line, id.as_bytes());
            }
        }
    }
    line.push('\n');
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: SocketAddr,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    status: u16,
    upstream: Option<&'a str>,
    server: Option<&'a str>,
    request_bytes: u64,
    response_bytes: u64,
    duration_ms: f64,
    retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// Client-sent text in a plain line: anything but visible ASCII becomes `\xNN`, so a
/// request cannot forge a line or split a field.
fn push_escaped(line: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'\\' && b != b'"' {
            line.push(char::from(b));
        } else {
            let _ = write!(line, "\\x{b:02x}");
        }
    }
}

/// A UTC timestamp as RFC 3339 with milliseconds: `2024-04-05T12:34:56.789Z`.
struct Rfc3339(SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rest) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rest / 3600,
            rest % 3600 / 60,
            rest % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let req = Request::get("/a/b?c=1").header("host", "shop.example").body(()).unwrap();
        Entry {
            log: None,
            started: Instant::now(),
            time: UNIX_EPOCH + Duration::from_millis(1_712_320_496_789),
            client: "10.0.0.1:5000".parse().unwrap(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: req.headers().get(header::HOST).cloned(),
            request_bytes: Some(Arc::new(AtomicU64::new(7))),
            status: 404,
            upstream: None,
            server: None,
            retries: 0,
            request_id: None,
            response_bytes: 14,
            duration: Duration::from_micros(1500),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(Rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_712_320_496_789);
        assert_eq!(Rfc3339(t).to_string(), "2024-04-05T12:34:56.789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(Rfc3339(leap).to_string(), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn plain_lines_have_every_field_and_dashes_for_none() {
        let mut line = String::new();
        format_line(&entry(), AccessLogFormat::Plain, &mut line);
        assert_eq!(
            line,
            "2024-04-05T12:34:56.789Z 10.0.0.1:5000 GET shop.example /a/b?c=1 404 - - 7 14 1.500ms retries=0\n"
        );
    }

    #[test]
    fn plain_lines_escape_what_the_client_sent() {
        let mut e = entry();
        e.host = Some(HeaderValue::from_bytes(b"a b\"\\").unwrap());
        let mut line = String::new();
        format_line(&e, AccessLogFormat::Plain, &mut line);
        assert!(line.contains(" a\\x20b\\x22\\x5c /a/b"), "{line}");
    }

    #[test]
    fn json_lines_parse_with_their_fields() {
        let mut line = String::new();
        format_line(&entry(), AccessLogFormat::Json, &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["client"], "10.0.0.1:5000");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "shop.example");
        assert_eq!(v["path"], "/a/b?c=1");
        assert_eq!(v["status"], 404);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["request_bytes"], 7);
        assert_eq!(v["response_bytes"], 14);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["time"], "2024-04-05T12:34:56.789Z");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, _rx) = sync_channel(1);
        let dropped = IntCounter::new("d", "d").unwrap();
        let log =
            Arc::new(AccessLog { tx, dropped: dropped.clone(), format: AccessLogFormat::Plain, path: None });
        let req = Request::get("/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let client = "127.0.0.1:1".parse().unwrap();
        log.begin(Instant::now(), client, &req).finish(0);
        assert_eq!(dropped.get(), 0);
        log.begin(Instant::now(), client, &req).finish(0);
        assert_eq!(dropped.get(), 1);
    }
}
