//! Raw-bytes tools for the hardening tests: a backend that records exactly the bytes
//! that reached it and frames them itself, and a client that writes bytes and reads
//! whatever comes back.
//!
//! The backend's framing is the strict reading an upstream would make (CRLF lines,
//! `Content-Length` or `chunked`), so "the backend saw these requests" means what a
//! real upstream would have seen, and a smuggled request shows up as an extra one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the backend does with a request it framed.
#[derive(Clone)]
pub enum Action {
    /// Writes these bytes and keeps the connection.
    Reply(Vec<u8>),
    /// Writes these bytes, then resets the connection (RST, not FIN).
    ResetAfter(Vec<u8>),
    /// Writes these bytes, then closes the connection (FIN), as a server does when
    /// it drops an idle keep-alive connection.
    ReplyAndClose(Vec<u8>),
    /// Never answers; holds the connection.
    Stall,
}

/// How a backend answers the n-th request it framed.
type Script = dyn Fn(usize, &RawRequest) -> Action + Send + Sync;

/// A plain `200` with a two-byte body.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// One request as the backend framed it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Request line and header lines, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line.
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Values of header `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

#[derive(Default)]
struct Log {
    /// Every byte received, per connection, in order of connection.
    bytes: Vec<Vec<u8>>,
    requests: Vec<RawRequest>,
}

/// A raw TCP backend.
pub struct RawBackend {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    /// Answers every request with `OK`.
    pub async fn recording() -> RawBackend {
        Self::start(|_, _| Action::Reply(OK.to_vec())).await
    }

    /// Answers the n-th request as `script(n, request)` says.
    pub async fn start(script: impl Fn(usize, &RawRequest) -> Action + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let script = Arc::new(script);
        let l = log.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (log, script) = (l.clone(), script.clone());
                connections.spawn(serve(stream, log, script));
            }
        });
        RawBackend { addr, log, task }
    }

    /// The requests framed so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Everything received, all connections joined.
    pub fn bytes(&self) -> Vec<u8> {
        self.log.lock().unwrap().bytes.concat()
    }

    /// Whether `needle` appears anywhere in what reached the backend.
    pub fn saw(&self, needle: &str) -> bool {
        self.bytes().windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// Fills a weir config: `{b}` becomes this backend's address.
    pub fn fill(&self, toml: &str) -> String {
        toml.replace("{b}", &self.addr.to_string())
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Log>>, script: Arc<Script>) {
    let index = {
        let mut log = log.lock().unwrap();
        log.bytes.push(Vec::new());
        log.bytes.len() - 1
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        log.lock().unwrap().bytes[index].extend_from_slice(&chunk[..n]);
        loop {
            let (used, request) = match frame(&buf) {
                Framed::Done(used, request) => (used, request),
                Framed::Partial => break,
                // What weir sent cannot be framed: that is a test failure, surfaced
                // as an unparseable request in the log.
                Framed::Invalid => {
                    let head = format!("INVALID {}", String::from_utf8_lossy(&buf));
                    log.lock().unwrap().requests.push(RawRequest { head, body: Vec::new() });
                    return;
                }
            };
            buf.drain(..used);
            let n = {
                let mut log = log.lock().unwrap();
                log.requests.push(request.clone());
                log.requests.len() - 1
            };
            match script(n, &request) {
                Action::Reply(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Action::ResetAfter(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    // SO_LINGER 0: closing sends RST (a dropped std socket does not block).
                    if let Ok(std) = stream.into_std() {
                        let _ = socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO));
                    }
                    return;
                }
                Action::ReplyAndClose(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    return;
                }
                Action::Stall => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
            }
        }
    }
}

enum Framed {
    Done(usize, RawRequest),
    Partial,
    Invalid,
}

/// Frames one request at the start of `buf`, strictly: CRLF line ends only,
/// `Content-Length` xor `Transfer-Encoding: chunked`.
fn frame(buf: &[u8]) -> Framed {
    let Some(end) = find(buf, b"\r\n\r\n") else { return Framed::Partial };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else { return Framed::Invalid };
    if head.split("\r\n").any(|l| l.contains('\n') || l.contains('\r')) {
        return Framed::Invalid;
    }
    let request = RawRequest { head: head.to_string(), body: Vec::new() };
    let (lengths, codings) = (request.header("content-length"), request.header("transfer-encoding"));
    let start = end + 4;
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Framed::Done(start, request),
        ([len], []) => {
            let Ok(len) = len.parse::<usize>() else { return Framed::Invalid };
            if buf.len() < start + len {
                return Framed::Partial;
            }
            Framed::Done(start + len, RawRequest { body: buf[start..start + len].to_vec(), ..request })
        }
        ([], [te]) if te.eq_ignore_ascii_case("chunked") => match dechunk(&buf[start..]) {
            Some(Some((used, body))) => Framed::Done(start + used, RawRequest { body, ..request }),
            Some(None) => Framed::Partial,
            None => Framed::Invalid,
        },
        _ => Framed::Invalid,
    }
}

/// A chunked body: `None` invalid, `Some(None)` incomplete, else bytes used and data.
fn dechunk(buf: &[u8]) -> Option<Option<(usize, Vec<u8>)>> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(&buf[at..], b"\r\n") else { return Some(None) };
        let line = std::str::from_utf8(&buf[at..at + line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let Some(end) = find(&buf[at..], b"\r\n") else { return Some(None) };
                at += end + 2;
                if end == 0 {
                    return Some(Some((at, body)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Some(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return None;
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `bytes` to `addr` and returns what comes back: until the connection
/// closes, or nothing new has arrived for 400 ms, or 5 s have passed.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_reply(&mut stream).await
}

/// Reads what `stream` sends: until it closes, or 400 ms pass with nothing new, or 5 s.
pub async fn read_reply(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let quiet = tokio::time::Instant::now() + Duration::from_millis(400);
        match tokio::time::timeout_at(quiet.min(deadline), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the responses in `reply`, in order (the bodies in these
/// tests never contain a status line).
pub fn statuses(reply: &str) -> Vec<u16> {
    reply
        .match_indices("HTTP/1.")
        .filter(|(i, _)| reply.get(i + 8..i + 9) == Some(" "))
        .filter_map(|(i, _)| reply.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Whether the connection is closed by the peer within `within`.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
