//! The cache never serves one user's, one route's or one host's answer to another
//! (issue 18), and the requests it makes itself carry no client framing (issue 17).
//! Each test is an attack that worked before: the same request sequence, now
//! answered as if the cache were not there.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;

use crate::support::raw::{self, Action, RawBackend};
use crate::support::{get_with, send, Backend, Reply, Weir};

/// A backend answering with the value of request header `echo` (or `-`), stored for
/// a minute, varying on `vary` if given.
fn echoing(name: &str, echo: &'static str, vary: Option<&'static str>) -> crate::support::BackendBuilder {
    Backend::named(name)
        .reply(move |req| Reply {
            status: StatusCode::OK,
            body: Bytes::from(
                req.headers().get(echo).map_or("-".to_string(), |v| v.to_str().unwrap().to_string()),
            ),
            delay: Duration::ZERO,
        })
        .headers(move |_| {
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static("max-age=60"));
            if let Some(vary) = vary {
                h.insert("vary", HeaderValue::from_static(vary));
            }
            h
        })
}

/// weir with one cached route (all hosts) to backend `a`, plus `cache_keys`.
async fn start(a: &Backend, cache_keys: &str) -> Weir {
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
cache = "pages"
[upstreams.app]
servers = [{{ address = "{{a}}" }}]
[caches.pages]
{cache_keys}
"#
    );
    Weir::start(&toml, &[a]).await
}

async fn get_text(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String, String) {
    let (status, h, body) = get_with(weir, path, headers).await;
    let cache_status = h.get("cache-status").map_or("", |v| v.to_str().unwrap()).to_string();
    (status, cache_status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `bytes` from the local address `ip` to `addr`; returns what comes back.
async fn exchange_from(ip: [u8; 4], addr: SocketAddr, bytes: &[u8]) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    raw::read_reply(&mut stream).await
}

/// The body of the one response in `reply`.
fn body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn a_non_default_port_is_part_of_the_key() {
    let a = echoing("a", "host", None).start().await;
    let weir = start(&a, "").await;
    let (_, _, poisoned) = get_text(&weir, "/page", &[("host", "app.test:1337")]).await;
    assert_eq!(poisoned, "app.test:1337");
    let (_, status, body) = get_text(&weir, "/page", &[("host", "app.test")]).await;
    assert_eq!((status.as_str(), body.as_str()), ("weir; fwd=uri-miss; stored", "app.test"));
    // The default port is the same URL; the host's case does not matter.
    let (_, status, body) = get_text(&weir, "/page", &[("host", "App.Test:80")]).await;
    assert_eq!((status.as_str(), body.as_str()), ("weir; hit", "app.test"));
}

#[tokio::test]
async fn vary_on_x_forwarded_host_reads_the_value_weir_sends() {
    let a = echoing("a", "x-forwarded-host", Some("X-Forwarded-Host")).start().await;
    let weir = start(&a, "").await;
    // The attacker's port goes upstream in X-Forwarded-Host; its own X-Forwarded-Host
    // names the victims' host.
    let attack = [("host", "app.test:1337"), ("x-forwarded-host", "app.test")];
    assert_eq!(get_text(&weir, "/page", &attack).await.2, "app.test:1337");
    let victim = [("host", "app.test"), ("x-forwarded-host", "app.test")];
    let (_, _, body) = get_text(&weir, "/page", &victim).await;
    assert_eq!(body, "app.test");
    let (_, status, body) = get_text(&weir, "/page", &[("host", "app.test")]).await;
    assert_eq!((status.as_str(), body.as_str()), ("weir; hit", "app.test"));
}

#[tokio::test]
async fn vary_on_x_forwarded_for_reads_the_address_weir_appends() {
    let a = echoing("a", "x-forwarded-for", Some("X-Forwarded-For")).start().await;
    let weir = start(&a, "").await;
    let request = b"GET /me HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let first = exchange_from([127, 0, 0, 1], weir.addr, request).await;
    assert_eq!(body(&first), "127.0.0.1");
    // Same client headers, another address: another variant.
    let second = exchange_from([127, 0, 0, 2], weir.addr, request).await;
    assert_eq!(body(&second), "127.0.0.2", "{second}");
    let again = exchange_from([127, 0, 0, 2], weir.addr, request).await;
    assert!(again.contains("cache-status: weir; hit\r\n") && body(&again) == "127.0.0.2", "{again}");
}

/// Bytes allowed in the test's paths: RFC 3986 unreserved, less `.`.
const PATH_BYTES: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~";

/// XXH3's published default secret (`XXH3_kSecret`), which the old keys used.
const XXH3_DEFAULT_SECRET: [u8; 192] = [
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde,
    0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79,
    0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, 0xb8, 0x08, 0x46,
    0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb,
    0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2,
    0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c,
    0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59,
    0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3,
    0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3,
    0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8,
    0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb,
    0xca, 0xbb, 0x4b, 0x40, 0x7e,
];

/// Two paths whose URLs as the old key hashed them (`http://127.0.0.1{path}`, the
/// port dropped) have the same XXH3-128 under XXH3's public default secret.
///
/// For inputs over 240 bytes XXH3 adds, per 8-byte lane `d` of each 64-byte stripe,
/// `d` to one accumulator and `lo32(d ^ k) * hi32(d ^ k)` to its neighbour, `k`
/// being the secret at the stripe's offset, with no mixing between the stripes of a
/// block. Take lane `i` of stripes `s` and `t`, give both the same `hi32(d ^ k)`
/// (possible where the secret lets both bytes stay URL-legal), and swap one low byte
/// between them where the two secrets agree on the bits that differ: the sums of
/// data and of products stay the same, so the whole hash does.
fn colliding_paths() -> (String, String) {
    use xxhash_rust::xxh3::xxh3_128;
    const PREFIX: &str = "http://127.0.0.1";
    const LEN: usize = 640;
    let secret = &XXH3_DEFAULT_SECRET;
    let legal = |b: u8| PATH_BYTES.contains(&b);
    // Stripes 1..=8 are accumulated once each; the last stripe (bytes 576..640) and
    // stripe 0 (the scheme and host) are left alone.
    for lane in 0..8 {
        for s in 1..=8 {
            for t in s + 1..=8 {
                let (ks, kt) = (&secret[8 * (s + lane)..][..8], &secret[8 * (t + lane)..][..8]);
                let mut u = [b'a'; 8];
                let mut v = [b'a'; 8];
                let mut ok = true;
                for j in 4..8 {
                    match PATH_BYTES.iter().find(|&&x| legal(x ^ ks[j] ^ kt[j])) {
                        Some(&x) => (u[j], v[j]) = (x, x ^ ks[j] ^ kt[j]),
                        None => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                for j in 0..4 {
                    for &p in PATH_BYTES {
                        for &q in PATH_BYTES {
                            let before = u32::from(p ^ ks[j]) + u32::from(q ^ kt[j]);
                            let after = u32::from(q ^ ks[j]) + u32::from(p ^ kt[j]);
                            if p == q || before != after {
                                continue;
                            }
                            let mut one = vec![b'a'; LEN];
                            one[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
                            one[PREFIX.len()] = b'/';
                            let mut two = one.clone();
                            let (at_s, at_t) = (64 * s + 8 * lane, 64 * t + 8 * lane);
                            let (mut u1, mut v1, mut u2, mut v2) = (u, v, u, v);
                            (u1[j], v1[j], u2[j], v2[j]) = (p, q, q, p);
                            one[at_s..at_s + 8].copy_from_slice(&u1);
                            one[at_t..at_t + 8].copy_from_slice(&v1);
                            two[at_s..at_s + 8].copy_from_slice(&u2);
                            two[at_t..at_t + 8].copy_from_slice(&v2);
                            if xxh3_128(&one) == xxh3_128(&two) {
                                let path =
                                    |url: Vec<u8>| String::from_utf8(url[PREFIX.len()..].to_vec()).unwrap();
                                return (path(one), path(two));
                            }
                        }
                    }
                }
            }
        }
    }
    panic!("no colliding pair found");
}

#[tokio::test]
async fn a_hash_collision_is_a_miss_not_another_urls_answer() {
    let (one, two) = colliding_paths();
    assert_ne!(one, two);
    let hash = |p: &str| xxhash_rust::xxh3::xxh3_128(format!("http://127.0.0.1{p}").as_bytes());
    assert_eq!(hash(&one), hash(&two), "the pair collides under the default secret");
    let a = Backend::named("a")
        .reply(|req| Reply {
            status: StatusCode::OK,
            body: Bytes::from(req.uri().path().to_string()),
            delay: Duration::ZERO,
        })
        .headers(|_| {
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static("max-age=60"));
            h
        })
        .start()
        .await;
    let weir = start(&a, "").await;
    let host = [("host", "127.0.0.1")];
    assert_eq!(get_text(&weir, &one, &host).await.2, one);
    let (_, status, body) = get_text(&weir, &two, &host).await;
    assert_eq!((status.as_str(), body == two), ("weir; fwd=uri-miss; stored", true), "{status}");
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn routes_sharing_a_cache_never_answer_for_each_other() {
    let public = Backend::named("public").headers(|_| max_age()).start().await;
    let internal = Backend::named("internal").headers(|_| max_age()).start().await;
    let toml = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
[[listeners]]
name = "internal"
listen = "127.0.0.1:0"
[[routes]]
listeners = ["internal"]
upstream = "internal"
cache = "pages"
[[routes]]
listeners = ["public"]
upstream = "public"
cache = "pages"
[upstreams.public]
servers = [{ address = "{public}" }]
[upstreams.internal]
servers = [{ address = "{internal}" }]
[caches.pages]
"#;
    let weir = Weir::start(toml, &[&public, &internal]).await;
    let request = b"GET /report HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let inside = raw::exchange(weir.addrs[1], request).await;
    assert_eq!(body(&inside), "internal");
    let outside = raw::exchange(weir.addrs[0], request).await;
    assert_eq!(body(&outside), "public", "{outside}");
    let again = raw::exchange(weir.addrs[0], request).await;
    assert!(again.contains("cache-status: weir; hit\r\n") && body(&again) == "public", "{again}");
}

fn max_age() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("cache-control", HeaderValue::from_static("max-age=60"));
    h
}

#[tokio::test]
async fn a_rewritten_private_route_is_not_served_through_the_public_one() {
    let public = Backend::named("public").headers(|_| max_age()).start().await;
    let private = Backend::named("private").headers(|_| max_age()).start().await;
    let toml = r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/private/"
rewrite = "/"
allow = ["127.0.0.2/32"]
upstream = "private"
cache = "pages"
[[routes]]
upstream = "public"
cache = "pages"
[upstreams.public]
servers = [{ address = "{public}" }]
[upstreams.private]
servers = [{ address = "{private}" }]
[caches.pages]
"#;
    let weir = Weir::start(toml, &[&public, &private]).await;
    let private_page = b"GET /private/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    // A client on the allow list fills the cache with the private page.
    let allowed = exchange_from([127, 0, 0, 2], weir.addr, private_page).await;
    assert_eq!(body(&allowed), "private", "{allowed}");
    assert_eq!(raw::statuses(&raw::exchange(weir.addr, private_page).await), [403]);
    // Another client asks for the rewritten URL on the public route.
    let public_page = b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let outside = raw::exchange(weir.addr, public_page).await;
    assert_eq!(body(&outside), "public", "{outside}");
    // Purge names the URL the clients used.
    let admin = weir.admin.unwrap();
    let req = Request::delete(format!("http://{admin}/cache/pages?key=http%3A%2F%2Fapp.test%2Fprivate%2Fx"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(&send(req).await.2[..], b"purged 1\n");
}

#[tokio::test]
async fn default_ttl_never_stores_an_answer_to_a_request_with_credentials() {
    let a = Backend::named("a").start().await;
    let weir = start(&a, "default_ttl = \"60s\"").await;
    for headers in [[("cookie", "sid=victim")], [("authorization", "Bearer victim")]] {
        let path = format!("/account-{}", headers[0].0);
        let (_, status, _) = get_text(&weir, &path, &headers).await;
        assert_eq!(status, "weir; fwd=uri-miss");
        let (_, status, _) = get_text(&weir, &path, &[]).await;
        assert_eq!(status, "weir; fwd=uri-miss; stored", "nothing was stored for {headers:?}");
    }
    // Without credentials default_ttl still applies.
    assert_eq!(get_text(&weir, "/account-cookie", &[]).await.1, "weir; hit");
}

#[tokio::test]
async fn credentials_with_explicit_max_age_are_still_stored() {
    let a = echoing("a", "x-none", None).start().await;
    let weir = start(&a, "").await;
    get_text(&weir, "/shared", &[("cookie", "sid=1")]).await;
    assert_eq!(get_text(&weir, "/shared", &[]).await.1, "weir; hit");
}

#[tokio::test]
async fn a_get_with_a_body_bypasses_the_cache() {
    let a = Backend::named("a").headers(|_| max_age()).start().await;
    let weir = start(&a, "").await;
    let with_body =
        Request::get(weir.url("/search")).body(Full::new(Bytes::from_static(b"q=secret"))).unwrap();
    let (status, h, _) = send(with_body).await;
    assert_eq!((status, h["cache-status"].to_str().unwrap()), (StatusCode::OK, "weir; fwd=bypass"));
    // Nothing was stored from it...
    assert_eq!(get_text(&weir, "/search", &[]).await.1, "weir; fwd=uri-miss; stored");
    // ...and nothing stored answers it.
    let with_body =
        Request::get(weir.url("/search")).body(Full::new(Bytes::from_static(b"q=secret"))).unwrap();
    assert_eq!(send(with_body).await.1["cache-status"], "weir; fwd=bypass");
    let chunked = b"GET /search HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\nq\r\n0\r\n\r\n";
    let reply = raw::exchange(weir.addr, chunked).await;
    assert!(reply.contains("cache-status: weir; fwd=bypass\r\n"), "{reply}");
    assert_eq!(a.hits(), 4);
}

#[tokio::test]
async fn a_clients_no_cache_does_not_replace_a_fresh_entry_unless_allowed() {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = |n: std::sync::Arc<std::sync::atomic::AtomicUsize>| {
        Backend::named("a")
            .reply(move |_| Reply {
                status: StatusCode::OK,
                body: Bytes::from((n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1).to_string()),
                delay: Duration::ZERO,
            })
            .headers(|_| max_age())
    };
    let a = counting(n).start().await;
    let weir = start(&a, "").await;
    assert_eq!(get_text(&weir, "/p", &[]).await.2, "1");
    for asks in [[("cache-control", "no-cache")], [("cache-control", "max-age=0")], [("pragma", "no-cache")]]
    {
        let (_, status, body) = get_text(&weir, "/p", &asks).await;
        assert_eq!((status.as_str(), body.as_str()), ("weir; hit", "1"), "{asks:?}");
    }
    assert_eq!(a.hits(), 1);
    let b = counting(std::sync::Arc::new(Default::default())).start().await;
    let honouring = start(&b, "honor_client_no_cache = true").await;
    get_text(&honouring, "/p", &[]).await;
    let (_, status, body) = get_text(&honouring, "/p", &[("cache-control", "no-cache")]).await;
    assert_eq!((status.as_str(), body.as_str()), ("weir; fwd=request; stored", "2"));
    assert_eq!(get_text(&honouring, "/p", &[]).await.2, "2");
}

#[tokio::test]
async fn url_override_headers_are_stripped_on_cached_routes() {
    let a = echoing("a", "x-original-url", None).start().await;
    let weir = start(&a, "").await;
    let overrides =
        [("x-original-url", "/admin"), ("x-rewrite-url", "/admin"), ("x-http-method-override", "DELETE")];
    assert_eq!(get_text(&weir, "/home", &overrides).await.2, "-");
    let seen = &a.seen()[0].headers;
    for (name, _) in overrides {
        assert!(!seen.contains_key(name), "{name} reached the upstream");
    }
    // An operator who needs them keeps them.
    let b = echoing("a", "x-original-url", None).start().await;
    let keeping = start(&b, "strip_override_headers = false").await;
    assert_eq!(get_text(&keeping, "/home", &overrides).await.2, "/admin");
}

#[tokio::test]
async fn the_background_refresh_carries_no_client_framing() {
    const STORED: &[u8] = b"HTTP/1.1 200 OK\r\ncache-control: max-age=1\r\ncontent-length: 2\r\n\r\nok";
    let backend = RawBackend::start(|_, _| Action::Reply(STORED.to_vec())).await;
    let toml = backend.fill(
        r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
cache = "pages"
[upstreams.app]
servers = [{ address = "{b}" }]
request_timeout = "2s"
[caches.pages]
stale_while_revalidate = "30s"
"#,
    );
    let weir = Weir::start(&toml, &[]).await;
    let get = |path: &str, extra: &str, body: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n{body}")
            .into_bytes()
    };
    assert_eq!(raw::statuses(&raw::exchange(weir.addr, &get("/r", "", "")).await), [200]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A stale hit carrying a declared body, which hides a request.
    let hidden = "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
    let hidden = format!("{hidden:<40}");
    let reply = raw::exchange(weir.addr, &get("/r", "Content-Length: 40\r\n", &hidden)).await;
    assert_eq!(raw::statuses(&reply), [200]);
    // A stale hit with an empty declared body: it is answered stale and refreshes.
    let reply =
        raw::exchange(weir.addr, &get("/r", "Content-Length: 0\r\nExpect: 100-continue\r\n", "")).await;
    assert!(reply.contains("weir; hit; detail=stale-while-revalidate"), "{reply}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(raw::statuses(&raw::exchange(weir.addr, &get("/next", "", "")).await), [200]);
    let requests = backend.requests();
    let lines: Vec<&str> = requests.iter().map(|r| r.line()).collect();
    assert!(lines.iter().all(|l| !l.starts_with("INVALID") && !l.contains("/admin")), "{lines:?}");
    let refreshes: Vec<_> =
        requests.iter().filter(|r| r.line() == "GET /r HTTP/1.1" && r.body.is_empty()).collect();
    assert!(refreshes.len() >= 2, "the first fetch and the refresh: {lines:?}");
    for r in &refreshes {
        assert!(r.header("content-length").is_empty(), "{}", r.head);
        assert!(r.header("expect").is_empty(), "{}", r.head);
        assert!(r.header("transfer-encoding").is_empty(), "{}", r.head);
    }
    assert_eq!(lines.last(), Some(&"GET /next HTTP/1.1"), "{lines:?}");
}
