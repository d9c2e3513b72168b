//! Bodies stream through weir in both directions with flat memory: a large generated
//! upload goes through weir to an echo backend and comes back through weir, while the
//! test process (which hosts weir, the backend and the client) is watched for growth.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::{Backend, Weir};

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

/// This process's resident set size in bytes, from `/proc/self/statm`.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm format");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_streams_both_ways_with_flat_memory() {
    let echo = Backend::named("echo").echo().start().await;
    let weir = Weir::start(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "echo"
[upstreams.echo]
servers = [{ address = "{echo}" }]
"#,
        &[&echo],
    )
    .await;

    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let baseline = rss();
    let req = Request::post("/upload").header("host", "stream.test").body(Generated { left: BODY }).unwrap();
    // The echo answers while the upload is still going, so this returns early and
    // the two directions run at once: nothing in the path may wait for a whole body.
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("no response headers: is the request body being buffered?")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (mut received, mut peak) = (0u64, baseline);
    let mut frames = 0u64;
    while let Some(frame) =
        tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("the echoed body stalled")
    {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            assert!(data.iter().all(|&b| b == b'w'), "the body was altered");
            received += data.len() as u64;
        }
        frames += 1;
        if frames % 64 == 0 {
            peak = peak.max(rss());
        }
    }
    peak = peak.max(rss());
    let elapsed = started.elapsed();
    assert_eq!(received, BODY, "the whole body came back");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "streamed {} MiB each way in {elapsed:?}; resident memory grew by {:.1} MiB (allowed {} MiB)",
        BODY >> 20,
        growth as f64 / f64::from(1 << 20),
        ALLOWED_GROWTH >> 20
    );
    assert!(
        growth < ALLOWED_GROWTH,
        "memory grew by {growth} bytes for a {BODY}-byte body: something buffers it"
    );
}
