//! A server's response head as weir's HTTP/1.1 server writes it from the lines weir's
//! HTTP/1.1 client parsed it into (no header map on the way), against the same
//! response through the header map (a route with a response header rule): the client
//! gets the same fields either way, the same framing, and the same refusals. Only the
//! order of fields of different names may differ (RFC 9110 §5.3).

use crate::support::raw::{exchange, statuses, Action, RawBackend};
use crate::support::Weir;

const CONFIG: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
path_prefix = "/map/"
upstream = "b"
response_headers = { set = { x-rule = "1" } }

[[routes]]
upstream = "b"

[upstreams.b]
request_timeout = "2s"
servers = [{ address = "{b}" }]
"#;

const DATE: &str = "Date: Sat, 05 Dec 2026 03:00:00 GMT";

/// (method, the server's response, whether it sends a `Date`).
fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let with_date = |head: &str, body: &str| format!("{head}{DATE}\r\n\r\n{body}").into_bytes();
    vec![
        // Many fields, repeats, mixed case, empty and odd values, every hop-by-hop
        // field, a repeated length and a length list.
        (
            "GET",
            with_date(
                "HTTP/1.1 200 OK\r\nServer: t\r\nSet-Cookie: a=1\r\nX-Mixed-Case: V a l\r\n\
                 Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
                 Upgrade: h2c\r\nTE: trailers\r\nSet-Cookie: b=2\r\nContent-Length: 2, 2\r\n\
                 Content-Length: 2\r\nX-Empty:\r\nx-tab: a\tb\r\nX-Spaced:   v  \r\nVary: a\r\nvary: b\r\n",
                "ok",
            ),
            true,
        ),
        // `Connection` names a field (and `Host`, which is kept).
        (
            "GET",
            with_date("HTTP/1.1 200 OK\r\nConnection: x-gone, Host\r\nX-Gone: 1\r\nHost: h\r\nx-kept: 2\r\nContent-Length: 2\r\n", "ok"),
            true,
        ),
        // No length on a 204 or a 304.
        ("GET", with_date("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n", ""), true),
        ("GET", with_date("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\nETag: \"e\"\r\n", ""), true),
        // A HEAD answer keeps the length a GET would get.
        ("HEAD", with_date("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n", ""), true),
        // Chunked: the coding is weir's own again, the trailer forwarded.
        (
            "GET",
            with_date("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nX-A: 1\r\n", "2\r\nok\r\n0\r\n\r\n"),
            true,
        ),
        // Obs-fold is refused (502) either way.
        ("GET", b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok".to_vec(), false),
        // No `Date`: weir writes one. Bare LF line ends.
        ("GET", b"HTTP/1.1 201 Created\nlocation:/x\nContent-Length: 0\n\n".to_vec(), false),
        // HTTP/1.0 to the close.
        ("GET", with_date("HTTP/1.0 200 OK\r\nX-A: 1\r\n", "to the close"), true),
    ]
}

/// The reply with its field lines in a canonical order (stable by name, so fields of
/// one name keep theirs), the rule's own field left out and, when the server sent no
/// `Date`, weir's masked.
fn canonical(reply: &str, masked_date: bool) -> String {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut fields: Vec<String> = lines
        .filter(|l| *l != "x-rule: 1")
        .map(|l| if masked_date && l.starts_with("date: ") { "date: *".to_string() } else { l.to_string() })
        .collect();
    fields.sort_by_key(|l| l.split(':').next().unwrap_or_default().to_string());
    format!("{status}\r\n{}\r\n\r\n{body}", fields.join("\r\n"))
}

#[tokio::test]
async fn a_response_head_written_from_the_servers_lines_is_the_one_the_header_map_writes() {
    let cases = cases();
    let responses: Vec<Vec<u8>> = cases.iter().map(|(_, r, _)| r.clone()).collect();
    let backend = RawBackend::start(move |_, req| {
        let n: usize = req.line().split(' ').nth(1).and_then(|t| t.rsplit('/').next()?.parse().ok()).unwrap();
        Action::ReplyAndClose(responses[n].clone())
    })
    .await;
    let weir = Weir::start(&backend.fill(CONFIG), &[]).await;
    for (n, (method, _, date)) in cases.iter().enumerate() {
        let ask =
            |prefix: &str| format!("{method} {prefix}/{n} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let lines = exchange(weir.addr, ask("/lines").as_bytes()).await;
        let map = exchange(weir.addr, ask("/map").as_bytes()).await;
        assert!(map.contains("x-rule: 1\r\n"), "case {n}: the map route's rule ran: {map}");
        assert_eq!(canonical(&lines, !date), canonical(&map, !date), "case {n}");
    }

    // What the client gets, spelled out for the first case: names in lowercase, no
    // hop-by-hop field, one length, fields of one name in the server's order.
    let reply = exchange(weir.addr, b"GET /lines/0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let expected = "HTTP/1.1 200 OK\r\nserver: t\r\nset-cookie: a=1\r\nx-mixed-case: V a l\r\n\
                    set-cookie: b=2\r\ncontent-length: 2\r\nx-empty: \r\nx-tab: a\tb\r\nx-spaced: v\r\n\
                    vary: a\r\nvary: b\r\ndate: Sat, 05 Dec 2026 03:00:00 GMT\r\nconnection: close\r\n\r\nok";
    assert_eq!(reply, expected);
    let folded = exchange(weir.addr, b"GET /lines/6 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&folded), [502], "{folded}");
    let named = exchange(weir.addr, b"GET /lines/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(
        !named.contains("x-gone") && named.contains("x-kept: 2\r\n") && named.contains("host: h\r\n"),
        "{named}"
    );
    let no_content =
        exchange(weir.addr, b"GET /lines/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(!no_content.contains("content-length"), "{no_content}");
    let head = exchange(weir.addr, b"HEAD /lines/4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(head.contains("content-length: 5\r\n") && head.ends_with("\r\n\r\n"), "{head}");
}

/// A sticky session's cookie goes out beside the server's fields when those stay
/// lines: both `Set-Cookie` fields reach the client, the server's first.
#[tokio::test]
async fn a_sticky_cookie_joins_the_servers_fields() {
    let backend = RawBackend::start(|_, _| {
        Action::Reply(b"HTTP/1.1 200 OK\r\nSet-Cookie: app=1\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let config = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\n\
                  [upstreams.b]\nservers = [{ address = \"{b}\" }]\nsticky = { cookie = \"srv\", ttl = \"1h\" }\n";
    let weir = Weir::start(&backend.fill(config), &[]).await;
    let reply = exchange(weir.addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    let cookies: Vec<&str> = reply.lines().filter(|l| l.starts_with("set-cookie: ")).collect();
    assert_eq!(cookies.len(), 2, "{reply}");
    assert_eq!(cookies[0], "set-cookie: app=1", "{reply}");
    assert!(cookies[1].starts_with("set-cookie: srv="), "{reply}");
    assert_eq!(reply.matches("content-length").count(), 1, "{reply}");
}
