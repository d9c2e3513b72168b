//! weir's HTTP/2 server pieces (`weir::http::h2`) on arbitrary bytes, three ways:
//!
//! - as a run of frames: each header parsed (`frame::Head::parse`) and its payload
//!   (`frame::parse`); a frame that parses and that the codec can write (DATA,
//!   SETTINGS, PING, GOAWAY, RST_STREAM, WINDOW_UPDATE) is written again and must
//!   parse back to itself;
//! - as an HPACK header block (`hpack::Decoder`, twice with the same table, as a
//!   connection would): decoded fields with valid names, re-encoded with weir's
//!   encoder, decode back to the same fields;
//! - as what a client sends after the preface, to a whole server connection on an
//!   in-memory stream, with a handler that reads each body: it must end (the client
//!   closes its side) without a panic.
#![no_main]

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use weir::http::h2::frame::{self, Frame, Head};
use weir::http::h2::hpack;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn never(never: std::convert::Infallible) -> BoxError {
    match never {}
}

fn frames(data: &[u8]) {
    let mut at = 0;
    while data.len() >= at + frame::HEADER_LEN {
        let head = Head::parse(&data[at..]);
        let end = at + frame::HEADER_LEN + head.len as usize;
        if end > data.len() {
            return;
        }
        let payload = Bytes::copy_from_slice(&data[at + frame::HEADER_LEN..end]);
        at = end;
        let Ok(parsed) = frame::parse(head, payload) else { continue };
        let mut out = Vec::new();
        match &parsed {
            Frame::Data { stream, end_stream, data, flow_len } if *flow_len as usize == data.len() => {
                frame::data(&mut out, *stream, data, *end_stream)
            }
            Frame::Ping { ack, data } => frame::ping(&mut out, *ack, *data),
            Frame::WindowUpdate { stream, increment } => frame::window_update(&mut out, *stream, *increment),
            Frame::Settings { ack: false, settings } => {
                let mut values = Vec::new();
                let s = settings;
                for (id, v) in [
                    (frame::SETTINGS_HEADER_TABLE_SIZE, s.header_table_size),
                    (frame::SETTINGS_ENABLE_PUSH, s.enable_push.map(u32::from)),
                    (frame::SETTINGS_MAX_CONCURRENT_STREAMS, s.max_concurrent_streams),
                    (frame::SETTINGS_INITIAL_WINDOW_SIZE, s.initial_window_size),
                    (frame::SETTINGS_MAX_FRAME_SIZE, s.max_frame_size),
                    (frame::SETTINGS_MAX_HEADER_LIST_SIZE, s.max_header_list_size),
                ] {
                    if let Some(v) = v {
                        values.push((id, v));
                    }
                }
                frame::settings(&mut out, &values)
            }
            _ => continue,
        }
        let again = frame::parse(Head::parse(&out), Bytes::copy_from_slice(&out[frame::HEADER_LEN..]));
        assert_eq!(again.as_ref(), Ok(&parsed), "a frame written again reads back the same");
    }
}

fn hpack_block(data: &[u8]) {
    let block = Bytes::copy_from_slice(data);
    let mut decoder = hpack::Decoder::new(4096);
    for _ in 0..2 {
        let mut fields = Vec::new();
        if decoder.decode(&block, |n, v| fields.push((n.to_vec(), v))).is_err() {
            return;
        }
        let mut out = Vec::new();
        let mut kept = Vec::new();
        for (name, value) in fields {
            let Ok(name) = http::HeaderName::from_bytes(&name) else { continue };
            if name.as_str().as_bytes() != &name.as_str().to_ascii_lowercase().as_bytes()[..] {
                continue;
            }
            hpack::encode_field(&mut out, name.as_str(), &value, false);
            kept.push((name.as_str().as_bytes().to_vec(), value));
        }
        let mut again = Vec::new();
        hpack::Decoder::new(4096).decode(&Bytes::from(out), |n, v| again.push((n.to_vec(), v))).unwrap();
        assert_eq!(again, kept, "encoded fields decode back the same");
    }
}

fn connection(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut input = weir::http::h2::PREFACE.to_vec();
        input.extend_from_slice(data);
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let handler = |req: http::Request<weir::http::h2::RecvBody>| async move {
            let _ = req.into_body().collect().await;
            let body = http_body_util::Full::new(Bytes::from_static(b"ok"))
                .map_err(never)
                .boxed_unsync();
            http::Response::new(body)
        };
        let serve = weir::http::h2::serve(server, BytesMut::new(), weir::http::h2::Config::default(), stop, handler);
        tokio::time::timeout(std::time::Duration::from_secs(5), serve).await.expect("the connection ends");
        drop(client);
    });
}

fuzz_target!(|data: &[u8]| {
    frames(data);
    hpack_block(data);
    connection(data);
});
