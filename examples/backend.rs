//! A small demo and benchmark backend: answers every request with a short text
//! naming itself, or with `size` bytes for `GET /bytes/<size>`, once it has read the
//! request's body (as most applications do; a request whose body fails gets no
//! answer, and its connection closes).
//!
//!     cargo run --release --example backend -- 127.0.0.1:9001 one

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr =
        args.next().unwrap_or_else(|| "127.0.0.1:9001".into()).parse().map_err(std::io::Error::other)?;
    let name = args.next().unwrap_or_else(|| addr.to_string());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("backend {name} listening on {addr}");
    let hello = Bytes::from(format!("hello from {name}\n"));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let hello = hello.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let hello = hello.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    body.collect().await?;
                    let body = match parts
                        .uri
                        .path()
                        .strip_prefix("/bytes/")
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        Some(size) => Bytes::from(vec![b'x'; size.min(64 << 20)]),
                        None => hello,
                    };
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
