//! Slow, idle and abusive clients: slowloris heads, silent and idle connections,
//! stalled request bodies, thousands of idle connections, and HTTP/2 rapid reset
//! and CONTINUATION floods. Each is cut off or bounded, and everyone else is served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{closed_within, exchange, read_reply, statuses, RawBackend};
use crate::support::{get, metric, Weir};

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "web"
listen = "127.0.0.1:0"
header_read_timeout = "1s"
body_read_timeout = "500ms"

[[routes]]
upstream = "b"

[upstreams.b]
request_timeout = "5s"
servers = [{ address = "{b}" }]
"#;

async fn start(config: &str) -> (RawBackend, Weir) {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(config), &[]).await;
    (backend, weir)
}

/// weir still answers a normal request, promptly.
async fn assert_serves(weir: &Weir) {
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), get(&weir.url("/ok"))).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test]
async fn slowloris_one_header_byte_per_100ms_is_cut_at_header_read_timeout() {
    let (backend, weir) = start(CONFIG).await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        write.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
        while write.write_all(b"a").await.is_ok() && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut sink)).await;
    let cut = started.elapsed();
    writer.abort();
    assert!(cut >= Duration::from_millis(900) && cut < Duration::from_secs(2), "cut after {cut:?}");
    assert!(backend.requests().is_empty());
    assert_serves(&weir).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_header_read_timeout() {
    // Accepted at the handshake, so the timeout runs from the connect (with the default
    // `defer_accept` it runs from the kernel's hand-over, a second later: next tests).
    let (_backend, weir) = start(&accepting_at_the_handshake(CONFIG)).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "a silent client is held");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_millis(1900), "{:?}", started.elapsed());
}

/// Silent clients wait in the listener's lobby: they hold up no one, count as open
/// connections while they wait, and are all closed (and uncounted) at the header
/// read timeout. (Accepted at the handshake: with `defer_accept` they would wait in
/// the kernel first, see the next test.)
#[tokio::test]
async fn many_silent_clients_hold_up_no_one_and_all_close_at_header_read_timeout() {
    let (_backend, weir) = start(&accepting_at_the_handshake(CONFIG)).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(weir.addr).await.unwrap());
    }
    assert_serves(&weir).await;
    let active = |m: &str| metric(m, "weir_connections_active{listener=\"web\"}");
    assert!(active(&weir.metrics().await) >= 200.0);
    for stream in &mut silent {
        let left = Duration::from_secs(3).saturating_sub(started.elapsed());
        assert!(closed_within(stream, left).await, "a silent client is held past the timeout");
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(1);
    while active(&weir.metrics().await) != 0.0 {
        assert!(Instant::now() < deadline, "silent clients still counted after their close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `defer_accept = false` after the listener's `listen`.
fn accepting_at_the_handshake(config: &str) -> String {
    config.replacen(
        "listen = \"127.0.0.1:0\"\nheader_read",
        "listen = \"127.0.0.1:0\"\ndefer_accept = false\nheader_read",
        1,
    )
}

/// With `defer_accept` (the default) a client that connects and sends nothing stays
/// in the kernel: weir does not count it or spend a thing on it. One that then sends
/// its request is served; the silent rest are accepted about a second later (the
/// first SYN-ACK retransmission) and closed at `header_read_timeout` from there.
#[tokio::test]
async fn silent_clients_wait_in_the_kernel_with_defer_accept_and_are_still_closed() {
    let (_backend, weir) = start(CONFIG).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(weir.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let active = |m: &str| metric(m, "weir_connections_active{listener=\"web\"}");
    assert_eq!(active(&weir.metrics().await), 0.0, "a client that sent nothing was accepted");

    let mut speaking = silent.pop().unwrap();
    speaking.write_all(b"GET /late HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), speaking.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));

    for stream in &mut silent {
        let left = Duration::from_millis(4500).saturating_sub(started.elapsed());
        assert!(closed_within(stream, left).await, "a silent client is held past a second and the timeout");
    }
    assert!(started.elapsed() >= Duration::from_millis(1800), "{:?}", started.elapsed());
}

/// A reload that turns `defer_accept` on applies it to the listening socket it keeps.
#[tokio::test]
async fn a_reload_applies_defer_accept_to_a_kept_listener() {
    let backend = RawBackend::recording().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, backend.fill(&accepting_at_the_handshake(CONFIG))).unwrap();
    let weir = Weir::start_from_file(&path).await;
    let active = |m: &str| metric(m, "weir_connections_active{listener=\"web\"}");
    let first = TcpStream::connect(weir.addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while active(&weir.metrics().await) != 1.0 {
        assert!(Instant::now() < deadline, "accepted at the handshake: counted at once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);

    std::fs::write(&path, backend.fill(CONFIG)).unwrap();
    weir.reloader.reload().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while active(&weir.metrics().await) != 0.0 {
        assert!(Instant::now() < deadline, "the closed client is still counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _second = TcpStream::connect(weir.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(active(&weir.metrics().await), 0.0, "the reload left the socket accepting at the handshake");
    assert_serves(&weir).await;
}

#[tokio::test]
async fn a_partial_h2_preface_is_closed_at_header_read_timeout() {
    let (_backend, weir) = start(CONFIG).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "a stalled preface is held");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_header_read_timeout() {
    let (_backend, weir) = start(CONFIG).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let answered = Instant::now();
    let reply = read_reply(&mut stream).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "an idle keep-alive client is held");
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(900) && idle < Duration::from_secs(2), "closed after {idle:?}");
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_at_body_read_timeout() {
    let (backend, weir) = start(CONFIG).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
    let cut = started.elapsed();
    assert!(cut >= Duration::from_millis(450) && cut < Duration::from_millis(1500), "cut after {cut:?}");
    let reply = String::from_utf8_lossy(&reply);
    assert!(statuses(&reply).iter().all(|&c| c >= 400), "{reply}");
    // The upstream saw the request start and then an aborted connection: never a
    // complete request.
    assert!(backend.saw("POST / HTTP/1.1"));
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    assert_serves(&weir).await;
}

#[tokio::test]
async fn a_slow_but_moving_request_body_is_not_cut() {
    let (backend, weir) = start(CONFIG).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    stream.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").await.unwrap();
    // 5 x 250 ms: longer than body_read_timeout in all, never idle that long.
    for byte in b"hello" {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let reply = read_reply(&mut stream).await;
    assert_eq!(statuses(&reply), vec![200], "{reply}");
    assert_eq!(backend.requests()[0].body, b"hello");
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    crate::support::rss_kib(std::process::id())
}

/// One keep-alive request on a new connection, leaving the connection idle.
async fn idle_connection(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    stream
}

#[tokio::test]
async fn two_thousand_idle_connections_leave_memory_bounded_and_the_proxy_responsive() {
    const IDLE: usize = 2000;
    let (_backend, weir) =
        start(&CONFIG.replace("header_read_timeout = \"1s\"", "header_read_timeout = \"60s\"")).await;
    // Warm up allocator and pools before the baseline.
    for _ in 0..20 {
        idle_connection(weir.addr).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss_kib();
    let mut open = Vec::with_capacity(IDLE);
    for _ in 0..IDLE / 100 {
        let batch: Vec<_> = (0..100).map(|_| tokio::spawn(idle_connection(weir.addr))).collect();
        for task in batch {
            open.push(task.await.unwrap());
        }
    }
    let after = rss_kib();
    let per_connection = after.saturating_sub(before) as f64 * 1024.0 / IDLE as f64;
    eprintln!("{IDLE} idle keep-alive connections: RSS {before} KiB -> {after} KiB, {per_connection:.0} B each (client and weir sides)");
    let metrics = weir.metrics().await;
    let active = metrics
        .lines()
        .find(|l| l.starts_with("weir_connections_active{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(active >= IDLE as f64, "weir holds {active} connections:\n{metrics}");
    assert_serves(&weir).await;
    // Both ends of every connection live in this process; tests running beside this
    // one add noise, so the bound is loose: far below a buffer-per-connection leak.
    assert!(per_connection < 64.0 * 1024.0, "{per_connection:.0} B per idle connection");
    drop(open);
}

#[tokio::test]
async fn h2_rapid_reset_is_bounded_and_other_clients_are_served() {
    let (backend, weir) = start(CONFIG).await;
    let tcp = TcpStream::connect(weir.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut sent = 0;
    for i in 0..5000 {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = http::Request::get(format!("http://a/r{i}")).body(()).unwrap();
        let Ok((response, mut stream)) = client.send_request(request, false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
        sent += 1;
    }
    // The attacker's connection ends (GOAWAY) instead of spinning through resets.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the connection survived {sent} rapid resets");
    let reached = backend.requests().len();
    eprintln!("rapid reset: {sent} streams opened and reset, {reached} reached the backend");
    assert!(reached < 1000, "{reached} of {sent} reset streams reached the backend");
    assert_serves(&weir).await;
}

/// An HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let (backend, weir) = start(CONFIG).await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end
    // the block: each carries ~150 literal `x-a: <100 bytes>` fields.
    let mut field = vec![0x00, 3];
    field.extend_from_slice(b"x-a");
    field.push(100);
    field.extend(std::iter::repeat_n(b'v', 100));
    let continuation = frame(0x9, 0, 1, &field.repeat(150));
    const FRAMES: usize = 2000; // ~32 MB if nothing stops it
    let writer = tokio::spawn(async move {
        write.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        write.write_all(&frame(0x4, 0, 0, &[])).await?;
        // :method GET, :scheme http, :path /, :authority a; END_STREAM only.
        write.write_all(&frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'a'])).await?;
        let mut written = 0;
        for _ in 0..FRAMES {
            write.write_all(&continuation).await?;
            written += 1;
        }
        Ok::<usize, std::io::Error>(written)
    });
    // Read until the server closes: a GOAWAY (frame type 7) and/or EOF.
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut got)).await;
    let written = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let goaway = got.windows(4).any(|w| w[3] == 0x7);
    eprintln!("CONTINUATION flood: closed={} goaway={goaway} writer={written:?}", closed.is_ok());
    assert!(closed.is_ok(), "the flooding connection was not closed");
    assert!(!matches!(written, Ok(Ok(Ok(n))) if n == FRAMES), "every CONTINUATION frame was accepted");
    assert!(backend.requests().is_empty());
    assert_serves(&weir).await;
}

#[tokio::test]
async fn the_proxy_serves_while_a_slowloris_holds_connections() {
    let (_backend, weir) = start(CONFIG).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(weir.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: a").await.unwrap();
        slow.push(s);
    }
    assert_serves(&weir).await;
    let reply = exchange(weir.addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&reply), vec![200]);
}

/// An h2 client that opens a connection, makes one request and then only keeps the
/// connection (answering pings, sending nothing) is closed at `idle_timeout`, as an
/// idle HTTP/1.1 one is.
#[tokio::test]
async fn an_idle_h2_connection_is_closed_at_idle_timeout() {
    let config = CONFIG
        .replace("body_read_timeout = \"500ms\"", "body_read_timeout = \"500ms\"\nidle_timeout = \"400ms\"");
    let (_backend, weir) = start(&config).await;
    let tcp = TcpStream::connect(weir.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let (response, _) =
        client.send_request(http::Request::get("http://a/ok").body(()).unwrap(), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the idle h2 connection was kept past idle_timeout");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed early: {:?}", started.elapsed());
}

/// A SETTINGS flood (each frame asks for an acknowledgement) from a client that
/// never reads them: weir stops taking frames once its acknowledgements back up (so
/// memory stays bounded), and `send_timeout` then closes the connection. Other
/// clients are served throughout.
#[tokio::test]
async fn h2_settings_flood_is_cut_off() {
    let config = CONFIG
        .replace("body_read_timeout = \"500ms\"", "body_read_timeout = \"500ms\"\nsend_timeout = \"1s\"");
    let (_backend, weir) = start(&config).await;
    let stream = TcpStream::connect(weir.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    write.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    let settings = frame(0x4, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]);
    let batch: Vec<u8> = settings.iter().copied().cycle().take(settings.len() * 1000).collect();
    let started = Instant::now();
    let mut sent = 0;
    // Until weir stops taking them (a write waits half a second) or refuses them.
    while started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_millis(500), write.write_all(&batch)).await {
            Ok(Ok(())) => sent += 1000,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "weir took SETTINGS frames for 10 s ({sent})");
    eprintln!("settings flood: {sent} SETTINGS frames taken before weir pushed back");
    assert_serves(&weir).await;
    // Past `send_timeout` with nobody reading, then read: the acknowledgements owed,
    // then the end of the connection, which weir closed meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the flooding connection is still open");
}

/// A client that asks for a large response and stops reading is disconnected after
/// `send_timeout`, so it cannot hold the response's upstream connection forever; a
/// slow reader that keeps taking bytes is not.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_send_timeout() {
    const SIZE: usize = 64 << 20;
    let big = bytes::Bytes::from(vec![b'x'; SIZE]);
    let backend = crate::support::Backend::named("big")
        .reply(move |_| crate::support::Reply {
            status: http::StatusCode::OK,
            body: big.clone(),
            delay: Duration::ZERO,
        })
        .start()
        .await;
    let config = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nsend_timeout = \"500ms\"\n\
                  [[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [{ address = \"{big}\" }]\n";
    let weir = Weir::start(config, &[&backend]).await;

    // A slow reader: 64 KiB every 100 ms keeps its connection well past the timeout.
    let mut slow = TcpStream::connect(weir.addr).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut taken = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let n = slow.read(&mut buf).await.unwrap();
        assert!(n > 0, "a slow but steady reader was cut off after {taken} bytes");
        taken += n;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A reader that stops: after the pause, what is left in the socket buffers is all
    // it gets before the connection ends.
    let mut stalled = TcpStream::connect(weir.addr).await.unwrap();
    stalled.write_all(b"GET /stalled HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut got = 0;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection was not closed");
    assert!(got < SIZE, "the whole response arrived ({got} bytes): the stalled client was not cut off");
    assert_serves_at(&weir).await;
}

/// `assert_serves` for a weir whose route goes to a working backend.
async fn assert_serves_at(weir: &Weir) {
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), get(&weir.url("/ok"))).await.unwrap();
    assert_eq!(status.as_u16(), 200);
}

/// The admin listener closes clients that send nothing, or half a head, or go quiet
/// between requests, after its own `header_read_timeout`: idle admin connections
/// cannot pile up.
#[tokio::test]
async fn admin_connections_are_closed_at_their_header_read_timeout() {
    let config = CONFIG.replace("[admin]\n", "[admin]\nheader_read_timeout = \"300ms\"\n");
    let (_backend, weir) = start(&config).await;
    let admin = weir.admin.unwrap();
    let mut silent = TcpStream::connect(admin).await.unwrap();
    let mut partial = TcpStream::connect(admin).await.unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut kept = TcpStream::connect(admin).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut reply = [0u8; 256];
    let n = kept.read(&mut reply).await.unwrap();
    assert!(reply[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply[..n]));
    let started = Instant::now();
    for (what, stream) in [("silent", &mut silent), ("partial", &mut partial), ("kept-alive", &mut kept)] {
        assert!(closed_within(stream, Duration::from_secs(3)).await, "a {what} admin client is held");
    }
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
}
