//! The request-handling entry point: arbitrary bytes as one client connection to a
//! real weir listener (HTTP/1.1 or h2c, as the bytes decide) in front of a backend
//! that answers every request. Any panic, in any task, aborts the run (libfuzzer's
//! panic hook), so a crash anywhere on the request path is found.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Target {
    rt: tokio::runtime::Runtime,
    weir: SocketAddr,
}

/// A backend that answers `200 ok` after each request head it sees (roughly: it
/// does not frame bodies, which is enough to keep weir's exchanges moving).
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the backend");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut tail = Vec::new();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    while let Some(end) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
                        tail.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let weir = rt.block_on(async {
            let backend = backend().await;
            let toml = format!(
                r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
header_read_timeout = "200ms"
body_read_timeout = "200ms"

[[routes]]
upstream = "b"

[upstreams.b]
request_timeout = "500ms"
servers = [{{ address = "{backend}" }}]
"#
            );
            let config = weir::config::parse(&toml, Path::new("fuzz.toml")).expect("a valid config");
            let metrics = Arc::new(weir::metrics::Metrics::new().expect("metrics"));
            let server = weir::server::Server::bind(&config, metrics).expect("bind weir");
            let addr = server.listener_addrs(&config)[0];
            tokio::spawn(server.run(std::future::pending()));
            addr
        });
        Target { rt, weir }
    })
}

fuzz_target!(|data: &[u8]| {
    let target = target();
    target.rt.block_on(async {
        let Ok(mut stream) = TcpStream::connect(target.weir).await else { return };
        let _ = stream.write_all(data).await;
        let _ = stream.shutdown().await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut reply)).await;
    });
});
