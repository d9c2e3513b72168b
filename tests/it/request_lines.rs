//! A client's request fields reach the server as the lines weir's HTTP/1.1 server
//! parsed them (`http::h1::server::RequestLines`, no header map between) on a route
//! that reads none of them, and through the map on a route that does (header rules,
//! request ids, the cache, trusted proxies): the server gets the same fields either
//! way, stripped of the same hop-by-hop ones, in the client's order, with weir's
//! framing and `X-Forwarded-*`. The server here records the bytes it got.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{read_reply, statuses, RawBackend, RawRequest};
use crate::support::Weir;

/// A route that reads no field but `Host`: the lines go up as they are.
const PLAIN: &str = crate::support::ONE_ROUTE;

/// A route whose header rules read and change the request's fields: the map is built.
const RULES: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
upstream = "b"
request_headers = { set = { "X-Route" = "ruled", "X-A" = "replaced" }, remove = ["X-Drop"] }

[upstreams.b]
request_timeout = "2s"
servers = [{ address = "{b}" }]
"#;

/// Sends `head` (and `body`) on one connection through weir started from `config`,
/// and returns the status and the one request the server got, if any.
async fn through(config: &str, head: &str, body: &[u8]) -> (Vec<u16>, Option<RawRequest>) {
    let backend = RawBackend::recording().await;
    let weir = Weir::start(&backend.fill(config), &[]).await;
    let mut stream = TcpStream::connect(weir.addr).await.unwrap();
    let mut request = head.as_bytes().to_vec();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let reply = read_reply(&mut stream).await;
    (statuses(&reply), backend.requests().into_iter().next())
}

/// The header lines of a request the server got, after its request line.
fn lines(request: &RawRequest) -> Vec<&str> {
    request.head.lines().skip(1).collect()
}

#[tokio::test]
async fn fields_go_up_lowercased_in_the_clients_order_with_duplicates_kept() {
    let head = "GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nX-B: 1\r\nAccept: */*\r\nX-B: 2\r\nx-c: \r\n\r\n";
    let (status, seen) = through(PLAIN, head, b"").await;
    assert_eq!(status, [200]);
    let seen = seen.expect("the request reached the server");
    assert_eq!(seen.line(), "GET /p?q=1 HTTP/1.1");
    assert_eq!(
        lines(&seen),
        [
            "host: a.test",
            "x-b: 1",
            "accept: */*",
            "x-b: 2",
            "x-c: ",
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-host: a.test",
            "x-forwarded-proto: http",
        ]
    );
}

#[tokio::test]
async fn hop_by_hop_framing_and_forwarded_fields_are_left_out_of_the_lines() {
    let head = "POST /p HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                Proxy-Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-A: 1\r\n\
                X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nContent-Length: 3\r\n\
                Expect: 100-continue\r\nX-Forwarded-For: 10.0.0.2\r\nX-Z: 2\r\n\r\n";
    let (status, seen) = through(PLAIN, head, b"abc").await;
    assert_eq!(status, [100, 200]);
    let seen = seen.expect("the request reached the server");
    assert_eq!(
        lines(&seen),
        [
            "host: a",
            "x-a: 1",
            "x-z: 2",
            "x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1",
            "x-forwarded-host: a",
            "x-forwarded-proto: http",
            "content-length: 3",
        ]
    );
    assert_eq!(seen.body, b"abc");
}

/// A `Connection` that names a field the head holds: the codec keeps that head in a
/// map, and the named field is stripped as ever; one that names only options
/// (`close`, `keep-alive`) leaves every other field as it is.
#[tokio::test]
async fn a_field_the_clients_connection_names_is_still_stripped() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nx-secret: 1\r\nX-Kept: 1\r\n\r\n";
    let (_, seen) = through(PLAIN, head, b"").await;
    let seen = seen.expect("the request reached the server");
    assert!(seen.header("x-secret").is_empty(), "{}", seen.head);
    assert!(seen.header("connection").is_empty(), "{}", seen.head);
    assert_eq!(seen.header("x-kept"), ["1"]);
    let head = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, keep-alive\r\nX-Kept: 1\r\n\r\n";
    let (_, seen) = through(PLAIN, head, b"").await;
    let seen = seen.expect("the request reached the server");
    assert!(seen.header("connection").is_empty(), "{}", seen.head);
    assert_eq!(seen.header("x-kept"), ["1"]);
}

/// A route with header rules gets the request's fields as a map: the rules still
/// see, set and remove the client's fields.
#[tokio::test]
async fn header_rules_still_see_and_change_the_clients_fields() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nX-A: client\r\nX-Drop: 1\r\nX-Kept: 1\r\nConnection: keep-alive\r\n\r\n";
    let (_, seen) = through(RULES, head, b"").await;
    let seen = seen.expect("the request reached the server");
    assert_eq!(seen.header("x-a"), ["replaced"], "{}", seen.head);
    assert_eq!(seen.header("x-route"), ["ruled"]);
    assert!(seen.header("x-drop").is_empty(), "{}", seen.head);
    assert!(seen.header("connection").is_empty(), "{}", seen.head);
    assert_eq!(seen.header("x-kept"), ["1"]);
    assert_eq!(seen.header("host"), ["a"]);
}

/// The checks weir makes of a request's fields hold for lines too: they are made on
/// the map when the lines would not pass as they are.
#[tokio::test]
async fn lines_are_held_to_the_same_checks() {
    for (head, expected) in [
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ] {
        let (status, seen) = through(PLAIN, head, b"").await;
        assert_eq!(status, [expected], "{head:?}");
        assert!(seen.is_none(), "{head:?} reached the server");
    }
    // Names with `_` are dropped, as from a map.
    let head = "GET / HTTP/1.1\r\nHost: a\r\nX_Real_IP: 1.2.3.4\r\nX-Kept: 1\r\n\r\n";
    let (_, seen) = through(PLAIN, head, b"").await;
    let seen = seen.expect("the request reached the server");
    assert!(seen.header("x_real_ip").is_empty(), "{}", seen.head);
    assert_eq!(seen.header("x-kept"), ["1"]);
}

/// Heads written otherwise than weir writes fields (no space after the colon,
/// trailing whitespace) go through the map, and reach the server the same.
#[tokio::test]
async fn heads_in_other_spellings_reach_the_server_the_same() {
    let head = "GET / HTTP/1.1\r\nHost:a\r\nX-A:  1 \r\nX-B: 2\r\n\r\n";
    let (status, seen) = through(PLAIN, head, b"").await;
    assert_eq!(status, [200]);
    let seen = seen.expect("the request reached the server");
    assert_eq!(seen.header("host"), ["a"]);
    assert_eq!(seen.header("x-a"), ["1"]);
    assert_eq!(seen.header("x-b"), ["2"]);
}

/// The access log takes the request's `Host` from its lines: a route with a log
/// still forwards the lines as they are.
#[tokio::test]
async fn the_access_log_reads_host_from_the_lines() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let log = std::env::temp_dir().join(format!("weir-lines-access-{}-{nanos}.log", std::process::id()));
    let config =
        format!("{PLAIN}\n[access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n", log.display());
    let head = "GET /logged HTTP/1.1\r\nHost: Lines.Test:8080\r\nX-B: 1\r\nX-A: 2\r\nX-B: 3\r\n\r\n";
    let (status, seen) = through(&config, head, b"").await;
    assert_eq!(status, [200]);
    let seen = seen.expect("the request reached the server");
    assert_eq!(lines(&seen)[..4], ["host: Lines.Test:8080", "x-b: 1", "x-a: 2", "x-b: 3"], "sent as lines");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("/logged") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(&log);
    let line: serde_json::Value = serde_json::from_str(text.lines().next().expect("a log line")).unwrap();
    assert_eq!(line["host"], "Lines.Test:8080", "{text}");
}
