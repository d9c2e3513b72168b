//! A client's `Connection` header names only the client's own headers: weir strips
//! them (and the hop-by-hop fields) once, first, before routing, shaping and the
//! cache read any header, so a client can neither strip what weir adds nor make the
//! cache file an answer under a variant it was not made for.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::support::{Backend, Reply, WeirProcess};

const SHAPED: &str = r#"
[[listeners]]
name = "web"
listen = "{port}"

[[routes]]
upstream = "app"
request_id = true
request_headers = { set = { "X-Real-IP" = "{client_ip}", "X-Route" = "shaped" } }

[upstreams.app]
servers = [{ address = "{app}" }]
"#;

/// The header fields the server got for a GET with `fields`, sent through weir on
/// the `SHAPED` route.
async fn forwarded(fields: &[(&str, &str)]) -> HeaderMap {
    let app = Backend::named("app").start().await;
    let weir = WeirProcess::start(SHAPED, &[&app]).await;
    let mut req = http::Request::get(weir.url("/"));
    for (name, value) in fields {
        req = req.header(*name, *value);
    }
    let (status, _, _) =
        crate::support::send(req.body(http_body_util::Full::<Bytes>::default()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    app.seen().remove(0).headers
}

#[tokio::test]
async fn connection_cannot_strip_headers_weir_adds() {
    let h = &forwarded(&[
        ("connection", "X-Request-Id, X-Real-IP, x-route, x-client-secret"),
        ("x-client-secret", "1"),
    ])
    .await;
    assert!(h.contains_key("x-request-id"), "{h:?}");
    assert_eq!(h["x-real-ip"], "127.0.0.1", "{h:?}");
    assert_eq!(h["x-route"], "shaped", "{h:?}");
    assert!(!h.contains_key("x-client-secret"), "a header the client's Connection named went up: {h:?}");
}

/// `TE` is a list that may come in several field lines (RFC 9110 §5.3): `trailers`
/// in a second `TE` line still goes up as `TE: trailers`. Found by the `h1_codec`
/// fuzz target, which forwards what weir's server parsed: the server saw the client
/// accept trailers, the request sent upstream lost it.
#[tokio::test]
async fn te_trailers_in_a_second_te_line_goes_up() {
    let h = &forwarded(&[("te", "gzip"), ("te", "trailers")]).await;
    assert_eq!(h.get_all("te").iter().collect::<Vec<_>>(), ["trailers"], "{h:?}");
}

const CACHED: &str = r#"
[[listeners]]
name = "web"
listen = "{port}"

[[routes]]
upstream = "app"
cache = "pages"

[upstreams.app]
servers = [{ address = "{app}" }]

[caches.pages]
max_size = "1MiB"
"#;

#[tokio::test]
async fn connection_cannot_poison_a_vary_variant() {
    // The answer depends on the Accept-Language the server was sent.
    let app = Backend::named("app")
        .reply(|req| Reply {
            status: StatusCode::OK,
            body: Bytes::from(
                req.headers()
                    .get("accept-language")
                    .map_or("none".to_string(), |v| v.to_str().unwrap().to_string()),
            ),
            delay: std::time::Duration::ZERO,
        })
        .headers(|_| {
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static("max-age=60"));
            h.insert("vary", HeaderValue::from_static("Accept-Language"));
            h
        })
        .start()
        .await;
    let weir = WeirProcess::start(CACHED, &[&app]).await;
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let url = weir.url("/page");
        async move {
            let mut req = http::Request::get(url);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let (status, _, body) =
                crate::support::send(req.body(http_body_util::Full::<Bytes>::default()).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            String::from_utf8(body.to_vec()).unwrap()
        }
    };
    // The attacker's request: the header is named in Connection, so it never goes up.
    let poisoned = get(&[("accept-language", "fr"), ("connection", "accept-language")]).await;
    assert_eq!(poisoned, "none");
    // A real French client gets the French page, not the one made without the header.
    assert_eq!(get(&[("accept-language", "fr")]).await, "fr");
    assert_eq!(get(&[]).await, "none");
}
