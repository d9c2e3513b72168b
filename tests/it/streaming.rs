//! Bodies stream through weir in both directions with flat memory: a large generated
//! upload goes through weir to an echo backend and comes back through weir. weir runs
//! as its own process (the real binary), so its peak resident memory (`VmHWM`) is
//! measured alone, untouched by the other tests that share this test process.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::{Backend, WeirProcess};

/// 256 MiB each way: buffering it whole anywhere would show plainly in the process's
/// resident memory, and it still passes through the four debug-build hyper hops
/// (client -> weir -> backend -> weir -> client) in about two seconds.
const BODY: u64 = 256 << 20;
/// Resident growth allowed while the body streams: a small fraction of the body.
const ALLOWED_GROWTH: u64 = BODY / 8;

static CHUNK: [u8; 64 * 1024] = [b'w'; 64 * 1024];

/// A request body generated on the fly from one static chunk, so the test itself
/// holds nothing: any growth in memory is the proxy path's.
struct Generated {
    left: u64,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n as usize])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Peak resident memory of process `pid` in bytes, from `/proc/PID/status`.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("Linux /proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_streams_both_ways_with_flat_memory() {
    let echo = Backend::named("echo").echo().start().await;
    let weir = WeirProcess::start(
        "[[listeners]]\nname = \"web\"\nlisten = \"{port}\"\n[[routes]]\nupstream = \"echo\"\n\
         [upstreams.echo]\nservers = [{ address = \"{echo}\" }]\n",
        &[&echo],
    )
    .await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let pid = weir.child.id();
    let baseline = peak_rss(pid);
    let req = Request::post("/upload").header("host", "stream.test").body(Generated { left: BODY }).unwrap();
    // The echo answers while the upload is still going, so this returns early and
    // the two directions run at once: nothing in the path may wait for a whole body.
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("no response headers: is the request body being buffered?")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) =
        tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("the echoed body stalled")
    {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            assert!(data.iter().all(|&b| b == b'w'), "the body was altered");
            received += data.len() as u64;
        }
    }
    let peak = peak_rss(pid);
    let elapsed = started.elapsed();
    assert_eq!(received, BODY, "the whole body came back");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "streamed {} MiB each way in {elapsed:?}; weir's peak resident memory grew by {:.1} MiB (allowed {} MiB)",
        BODY >> 20,
        growth as f64 / f64::from(1 << 20),
        ALLOWED_GROWTH >> 20
    );
    assert!(
        growth < ALLOWED_GROWTH,
        "memory grew by {growth} bytes for a {BODY}-byte body: something buffers it"
    );
}
