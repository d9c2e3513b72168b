//! The response cache a route may name (`cache = "NAME"`): an in-memory RFC 9111
//! shared cache in front of the route's upstream, built to shield slow backends from
//! the three ways caches fail them.
//!
//! - **Stampede** (a hot key expires, every client goes upstream at once): concurrent
//!   misses for one key send one request; the rest wait for it, up to `lock_timeout`,
//!   and are answered from what it stored (`coalesced`). A stale entry within
//!   `stale_while_revalidate` is served at once while one background request, not
//!   tied to any client connection, refreshes it.
//! - **Avalanche** (many keys expire together): `ttl_jitter` takes a random share off
//!   each lifetime; `stale_if_error` answers from a stale entry when the upstream is
//!   down or answers 5xx.
//! - **Penetration** (keys that do not exist always miss): `negative_ttl` keeps 404
//!   and 410 answers briefly.
//!
//! `proxy/cache.rs` (`serve`) is the whole request path of a cached route: lookup,
//! then a hit, a stale answer, or a fetch whose body streams to the first client while
//! `Tee` copies it into the store. This module holds the state it works on (store,
//! keys, in-flight fetches) and names nothing above it. Every response says what happened in `Cache-Status` (RFC 9211).
//! `policy` holds the RFC rules, `store` the bounded map. The cache (store and
//! in-flight fetches) is shared by the runtimes of successive reloads while its
//! name and settings stay the same.
//!
//! A key is a 128-bit XXH3 hash, seeded with a random secret of this cache, of the
//! route's identity, the listener, and the canonical URL
//! `scheme://host[:port]/path?query`: the host as forwarded, lowercased, with its
//! port unless it is the scheme's default, and the path and query as the client sent
//! them (before `rewrite` or `strip_prefix`). Every stored object keeps that material
//! whole and a lookup compares it, so a hash collision is a miss, never another
//! URL's answer. The URL is what the admin purge names (`DELETE /cache/NAME?key=URL`
//! or `?prefix=URL-PREFIX`). A variant's key adds the values of the headers `Vary`
//! names as the request is forwarded: after the route's header rules, with weir's own
//! `X-Forwarded-*`.

mod key;
pub mod policy;
pub mod store;
mod tee;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::StatusCode;
use tokio::sync::watch;
use xxhash_rust::xxh3::Xxh3;

use crate::config::{CacheConfig, RouteConfig};
use crate::metrics::CacheMetrics;
pub(crate) use key::{canonical, emit_selecting, is_variant, Forwarded, Forwarding, Target};
#[cfg(test)]
use key::{X_FORWARDED_FOR, X_FORWARDED_HOST};
use policy::{Freshness, Rules};
use store::{Entry, Key, Object, Parts, Place, Store};
pub use tee::Tee;

/// RFC 9211's response header.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Headers some frameworks read as the request's real URL or method: on a cached
/// route they would make the upstream answer something else than the URL the answer
/// is stored under.
static OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
];

/// A cache's settings, compared on reload to decide whether the store is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub max_size: u64,
    pub max_object_size: u64,
    pub lock_timeout: Duration,
    pub rules: Rules,
    /// A client's `no-cache`, `max-age` or `Pragma: no-cache` may bypass a stored
    /// entry (and replace it).
    pub honor_client_no_cache: bool,
    /// Remove `OVERRIDES` from requests on the cache's routes.
    pub strip_override_headers: bool,
}

impl Settings {
    pub fn of(config: &CacheConfig) -> Settings {
        let d = |d: Option<crate::config::Dur>| d.map(|d| d.0);
        Settings {
            max_size: config.max_size.get_ref().0,
            max_object_size: config.max_object_size(),
            lock_timeout: config.lock_timeout.0,
            rules: Rules {
                default_ttl: d(config.default_ttl),
                negative_ttl: d(config.negative_ttl),
                ttl_jitter: config.ttl_jitter.as_ref().map_or(0.0, |j| j.get_ref().0),
                stale_while_revalidate: d(config.stale_while_revalidate).unwrap_or_default(),
                stale_if_error: d(config.stale_if_error).unwrap_or_default(),
            },
            honor_client_no_cache: config.honor_client_no_cache,
            strip_override_headers: config.strip_override_headers,
        }
    }
}

/// One `[caches.NAME]`: its store and the fetches in flight.
pub struct Cache {
    pub name: Box<str>,
    pub settings: Settings,
    /// Seeds every key: keys cannot be predicted from outside, so collisions cannot
    /// be built ahead (a lookup compares the stored URL anyway).
    pub(crate) seed: u64,
    pub(crate) store: Store,
    /// One entry per key being fetched; the fetching request leads, others wait.
    pub(crate) flights: moka::sync::Cache<Key, Arc<Flight>>,
    pub(crate) metrics: Arc<CacheMetrics>,
}

/// How a fetch that others waited for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pending,
    Stored,
    /// The response may not be stored (or is too large): waiters go upstream.
    Uncacheable,
    /// The fetch failed or was cut short: a waiter may lead the next one.
    Failed,
}

pub(crate) struct Flight {
    pub(crate) state: watch::Sender<Outcome>,
}

/// The fetch this request leads. Dropping it ends the flight: waiters wake up with
/// the outcome (`Failed` unless `finish` said otherwise), so a lead can never be
/// left hanging by an error, a timeout or a vanished client.
pub(crate) struct Lead {
    pub(crate) cache: Arc<Cache>,
    pub(crate) key: Key,
    pub(crate) flight: Arc<Flight>,
    pub(crate) outcome: Outcome,
}

impl Lead {
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        // Removed before waking the waiters, so one that must lead next finds the
        // key free.
        self.cache.flights.invalidate(&self.key);
        self.flight.state.send_replace(self.outcome);
    }
}

/// A response whose body is on its way; stored when the body completes.
pub(crate) struct Pending {
    pub(crate) lead: Lead,
    pub(crate) primary: Key,
    pub(crate) place: Place,
    /// The request as forwarded, for the variant key if the response has `Vary`.
    pub(crate) request: Forwarded,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) freshness: Freshness,
    pub(crate) response_time: SystemTime,
}

impl Pending {
    fn complete(self, body: Bytes) {
        let cache = &self.lead.cache;
        let names = policy::vary(&self.headers).unwrap_or_default();
        let keep = self.freshness.keep_for();
        let parts = |selecting| Parts {
            place: self.place.as_ref(),
            selecting,
            status: self.status,
            headers: &self.headers,
            body: &body,
            freshness: self.freshness.clone(),
            response_time: self.response_time,
        };
        if names.is_empty() {
            cache.store.insert(self.primary, Object::Response(Entry::new(parts(&[]))));
        } else {
            let nonce = match cache.store.get(self.primary).as_deref() {
                Some(Object::Vary { names: n, nonce, place, .. })
                    if **n == *names && *place == self.place =>
                {
                    *nonce
                }
                _ => fastrand::u64(..),
            };
            let request = self.request.view();
            let variant = cache.variant_key(self.primary, nonce, &names, &request);
            let mut selecting = Vec::new();
            emit_selecting(&names, &request, &mut |b| selecting.extend_from_slice(b));
            cache.store.insert(variant, Object::Response(Entry::new(parts(&selecting))));
            let marker = Object::Vary { place: self.place, names: names.into(), nonce, keep };
            cache.store.insert(self.primary, marker);
        }
        self.lead.finish(Outcome::Stored);
    }

    fn too_large(self) {
        self.lead.finish(Outcome::Uncacheable);
    }
}

/// What a lookup found.
pub(crate) enum Lookup {
    Found(Key, Arc<Object>),
    UriMiss,
    /// The URL varies and this request's variant is not stored: its key.
    VaryMiss(Key),
}

/// What `Cache-Status` says (RFC 9211).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Status {
    Hit,
    Coalesced,
    Revalidating,
    StaleIfError,
    /// Went upstream, for this reason; `true` if the response is being stored.
    Forward(Fwd, bool),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fwd {
    UriMiss,
    VaryMiss,
    Stale,
    /// The request asked (`no-cache`), or carries `Authorization` the entry does
    /// not allow.
    Request,
    Method,
    Bypass,
    /// A waiter whose lead timed out or fetched something uncacheable.
    Miss,
}

impl Status {
    pub(crate) fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Status::Hit => "weir; hit",
            Status::Coalesced => "weir; hit; detail=coalesced",
            Status::Revalidating => "weir; hit; detail=stale-while-revalidate",
            Status::StaleIfError => "weir; fwd=stale; detail=stale-if-error",
            Status::Forward(Fwd::UriMiss, true) => "weir; fwd=uri-miss; stored",
            Status::Forward(Fwd::UriMiss, false) => "weir; fwd=uri-miss",
            Status::Forward(Fwd::VaryMiss, true) => "weir; fwd=vary-miss; stored",
            Status::Forward(Fwd::VaryMiss, false) => "weir; fwd=vary-miss",
            Status::Forward(Fwd::Stale, true) => "weir; fwd=stale; stored",
            Status::Forward(Fwd::Stale, false) => "weir; fwd=stale",
            Status::Forward(Fwd::Request, true) => "weir; fwd=request; stored",
            Status::Forward(Fwd::Request, false) => "weir; fwd=request",
            Status::Forward(Fwd::Miss, true) => "weir; fwd=miss; stored",
            Status::Forward(Fwd::Miss, false) => "weir; fwd=miss",
            Status::Forward(Fwd::Method, _) => "weir; fwd=method",
            Status::Forward(Fwd::Bypass, _) => "weir; fwd=bypass",
        })
    }
}

/// What the proxy tells the cache about a request beyond the request itself.
pub struct Client {
    /// The route's identity (`route_identity`).
    pub route: u64,
    /// The path and query the client sent, when the route rewrote them.
    pub path: Option<PathAndQuery>,
}

/// A route's cache, with the route's identity for its keys.
pub struct RouteCache {
    pub cache: Arc<Cache>,
    pub route: u64,
}

impl Cache {
    pub fn new(name: &str, settings: Settings, metrics: CacheMetrics) -> Arc<Cache> {
        let metrics = Arc::new(metrics);
        Arc::new(Cache {
            name: name.into(),
            seed: fastrand::u64(..),
            store: Store::new(settings.max_size, metrics.clone()),
            flights: moka::sync::Cache::builder().build(),
            settings,
            metrics,
        })
    }

    /// Removes the headers that would let a client change the URL or method the
    /// upstream acts on (`X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override`),
    /// unless the cache is told to keep them. Called before the route's header rules,
    /// so a rule may still set them.
    pub fn strip_overrides(&self, headers: &mut HeaderMap) {
        if self.settings.strip_override_headers {
            for name in &OVERRIDES {
                headers.remove(name);
            }
        }
    }

    /// The entry for `primary` and this request's variant of it, if what is stored
    /// there was stored for this very request.
    pub(crate) fn lookup(&self, primary: Key, target: &Target, request: &Forwarding) -> Lookup {
        let Some(object) = self.store.get(primary) else { return Lookup::UriMiss };
        if !target.is(object.place()) {
            // Another URL (or route) under the same hash.
            return Lookup::UriMiss;
        }
        match &*object {
            Object::Response(_) => Lookup::Found(primary, object),
            Object::Vary { names, nonce, .. } => {
                let key = self.variant_key(primary, *nonce, names, request);
                match self.store.get(key) {
                    Some(variant) if is_variant(&variant, target, names, request) => {
                        Lookup::Found(key, variant)
                    }
                    _ => Lookup::VaryMiss(key),
                }
            }
        }
    }

    /// The key of one variant: the URL's key, its marker's nonce, and the values of
    /// the request headers the response varies on.
    pub(crate) fn variant_key(
        &self,
        primary: Key,
        nonce: u64,
        names: &[HeaderName],
        request: &Forwarding,
    ) -> Key {
        let mut hasher = Xxh3::with_seed(self.seed);
        hasher.update(&primary.to_le_bytes());
        hasher.update(&nonce.to_le_bytes());
        emit_selecting(names, request, &mut |b| hasher.update(b));
        hasher.digest128()
    }

    /// Removes what is stored for `url` exactly, on every route; returns how many
    /// objects. The URL is read as a client would send it: the host's case and a
    /// default port do not matter.
    pub fn purge_url(&self, url: &str) -> usize {
        match canonical(url) {
            Some(url) => self.store.purge_url(&url),
            None => self.store.purge_url(url),
        }
    }

    /// Removes everything stored under URLs starting with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.store.purge_prefix(prefix)
    }
}

/// The identity of a route in the keys of its cache: a hash of everything its
/// config says, without the positions in the file. Two routes differ in identity
/// when anything that could change the answer differs (upstream, rewrite, access
/// list, header rules...), and a route keeps its identity, and the entries stored
/// through it, across reloads that leave it unchanged.
pub fn route_identity(route: &RouteConfig) -> u64 {
    xxhash_rust::xxh3::xxh3_64(without_spans(&format!("{route:?}")).as_bytes())
}

/// `text` without the `span: A..B, ` parts that `Spanned`'s `Debug` writes.
fn without_spans(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("span: ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "span: ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let a = digits(after);
        let span = after[a..].strip_prefix("..").and_then(|s| {
            let b = digits(s);
            s[b..].strip_prefix(", ").filter(|_| a > 0 && b > 0)
        });
        match span {
            Some(tail) => rest = tail,
            None => {
                out.push_str("span: ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn target<'a>(req: &'a Request<()>, tls: bool, client: &'a Client) -> Target<'a> {
        Target::of(req, 0, tls, client).unwrap()
    }

    fn url(req: &Request<()>, tls: bool) -> Box<str> {
        target(req, tls, &Client { route: 7, path: None }).place().url
    }

    #[test]
    fn the_url_keeps_a_port_that_is_not_the_default_and_lowercases_the_host() {
        let req = |host: &str| Request::builder().uri("/a/b?x=1").header("host", host).body(()).unwrap();
        assert_eq!(&*url(&req("Shop.Example.com:8080"), false), "http://shop.example.com:8080/a/b?x=1");
        assert_eq!(&*url(&req("Shop.Example.com:80"), false), "http://shop.example.com/a/b?x=1");
        assert_eq!(&*url(&req("shop.example.com:"), false), "http://shop.example.com/a/b?x=1");
        assert_eq!(&*url(&req("shop.example.com:443"), true), "https://shop.example.com/a/b?x=1");
        assert_eq!(&*url(&req("shop.example.com:443"), false), "http://shop.example.com:443/a/b?x=1");
        assert_eq!(&*url(&req("[::1]:8080"), false), "http://[::1]:8080/a/b?x=1");
        assert_eq!(&*url(&req("[::1]"), false), "http://[::1]/a/b?x=1");
        let long_host = format!("{}.example.com", "A".repeat(100));
        assert_eq!(
            &*url(&req(&long_host), false),
            format!("http://{}/a/b?x=1", long_host.to_ascii_lowercase())
        );
    }

    #[test]
    fn the_key_covers_route_listener_scheme_and_client_path_and_matches_only_its_place() {
        let seed = 99;
        let req = Request::builder().uri("/a").header("host", "Shop.example").body(()).unwrap();
        let route7 = Client { route: 7, path: None };
        let route8 = Client { route: 8, path: None };
        let rewritten = Client { route: 7, path: Some(PathAndQuery::from_static("/private/a")) };
        let t = target(&req, false, &route7);
        assert_ne!(t.key(seed), target(&req, false, &route8).key(seed));
        assert_ne!(t.key(seed), target(&req, true, &route7).key(seed));
        assert_ne!(t.key(seed), t.key(seed + 1));
        assert_eq!(&*target(&req, false, &rewritten).place().url, "http://shop.example/private/a");
        let t1 = Target::of(&req, 1, false, &route7).unwrap();
        assert_ne!(t.key(seed), t1.key(seed));
        let place = t.place();
        assert!(t.is(place.as_ref()));
        assert!(!t1.is(place.as_ref()));
        assert!(!target(&req, false, &route8).is(place.as_ref()));
        let mut longer = place.clone();
        longer.url = "http://shop.example/ab".into();
        assert!(!t.is(longer.as_ref()));
        let mut shorter = place.clone();
        shorter.url = "http://shop.example/".into();
        assert!(!t.is(shorter.as_ref()));
    }

    #[test]
    fn purge_urls_are_read_in_key_form() {
        assert_eq!(canonical("HTTP://Shop.Example:80/a?b").as_deref(), Some("http://shop.example/a?b"));
        assert_eq!(canonical("https://shop.example:8443").as_deref(), Some("https://shop.example:8443/"));
        assert_eq!(canonical("shop.example/a"), None);
    }

    #[test]
    fn route_identity_ignores_positions_in_the_file() {
        let parse = |text: &str| crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let base = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [{ address = \"127.0.0.1:1\" }]\n[caches.c]\n";
        let route = "[[routes]]\nupstream = \"app\"\ncache = \"c\"\npath_prefix = \"/p/\"\n";
        let a = parse(&format!("{route}{base}"));
        let b = parse(&format!("# moved\n\n{route}{base}"));
        let c = parse(&format!("{}{base}", route.replace("/p/", "/q/")));
        let id = |c: &crate::config::Config| route_identity(&c.routes[0]);
        assert!(format!("{:?}", a.routes[0]).contains("span: "), "the test reads spans");
        assert_eq!(id(&a), id(&b));
        assert_ne!(id(&a), id(&c));
        assert_eq!(
            without_spans("Spanned { span: 1..20, value: 3 } span: x"),
            "Spanned { value: 3 } span: x"
        );
    }

    #[test]
    fn variants_differ_by_the_named_headers_as_forwarded() {
        let cache = Cache::new("t", test_settings(), crate::metrics::Metrics::new().unwrap().cache("t"));
        let names = [http::header::ACCEPT_ENCODING, X_FORWARDED_HOST.clone(), X_FORWARDED_FOR.clone()];
        let ip = b"127.0.0.1".as_slice();
        let req = |pairs: &[(&str, &str)]| {
            let mut b = Request::builder().uri("/").header("host", "app.test:1337");
            for (n, v) in pairs {
                b = b.header(*n, *v);
            }
            b.body(()).unwrap()
        };
        let key = |r: &Request<()>| cache.variant_key(1, 7, &names, &Forwarding::of(r, false, ip));
        let gzip = req(&[("accept-encoding", "gzip"), ("user-agent", "a")]);
        assert_eq!(key(&gzip), key(&req(&[("accept-encoding", "gzip"), ("user-agent", "b")])));
        assert_ne!(key(&gzip), key(&req(&[("accept-encoding", "br")])));
        // The client's X-Forwarded-Host is not what goes upstream: it selects nothing.
        assert_eq!(key(&gzip), key(&req(&[("accept-encoding", "gzip"), ("x-forwarded-host", "evil")])));
        // Its X-Forwarded-For is, with the client's address appended.
        assert_ne!(key(&gzip), key(&req(&[("accept-encoding", "gzip"), ("x-forwarded-for", "1.2.3.4")])));
        let fwd = Forwarding::of(&gzip, false, ip);
        assert_ne!(cache.variant_key(1, 7, &names, &fwd), cache.variant_key(1, 8, &names, &fwd));
        let mut stream = Vec::new();
        emit_selecting(&names, &fwd, &mut |b| stream.extend_from_slice(b));
        assert_eq!(
            stream,
            b"accept-encoding\x00gzip\x01\x00x-forwarded-host\x00app.test:1337\x01\x00x-forwarded-for\x00127.0.0.1\x01\x00"
        );
    }

    fn test_settings() -> Settings {
        Settings {
            max_size: 1 << 20,
            max_object_size: 1 << 16,
            lock_timeout: Duration::from_secs(1),
            rules: Rules {
                default_ttl: None,
                negative_ttl: None,
                ttl_jitter: 0.0,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            honor_client_no_cache: false,
            strip_override_headers: true,
        }
    }

    #[test]
    fn cache_status_values_are_valid_headers() {
        for status in [Status::Hit, Status::Coalesced, Status::Revalidating, Status::StaleIfError] {
            assert!(status.value().to_str().unwrap().starts_with("weir; "));
        }
        assert_eq!(Status::Forward(Fwd::UriMiss, true).value(), "weir; fwd=uri-miss; stored");
    }
}
