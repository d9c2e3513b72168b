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
//! `serve` is the whole request path of a cached route: lookup, then a hit, a stale
//! answer, or a fetch whose body streams to the first client while `Tee` copies it
//! into the store. Every response says what happened in `Cache-Status` (RFC 9211).
//! `policy` holds the RFC rules, `store` the bounded map. The cache (store and
//! in-flight fetches) is shared by the runtimes of successive reloads while its
//! name and settings stay the same.
//!
//! A key is a 128-bit hash of the canonical URL, `scheme://host/path?query` with
//! the host lowercased and without its port; that URL is also what the admin purge
//! names (`DELETE /cache/NAME?key=URL` or `?prefix=URL-PREFIX`).

pub mod policy;
pub mod store;
mod tee;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::watch;
use xxhash_rust::xxh3::Xxh3;

use crate::config::CacheConfig;
use crate::metrics::CacheMetrics;
use crate::proxy::admit_and_forward;
use crate::proxy::body::{Body, ClientBody};
use crate::proxy::error::ProxyError;
use crate::proxy::forward::{self, Peer, Trace};
use crate::proxy::route::request_host;
use crate::upstream::Upstream;
use policy::{current_age, Freshness, RequestRules, Rules};
use store::{Entry, Key, Object, Store};
pub use tee::Tee;

/// RFC 9211's response header.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A cache's settings, compared on reload to decide whether the store is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub max_size: u64,
    pub max_object_size: u64,
    pub lock_timeout: Duration,
    pub rules: Rules,
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
        }
    }
}

/// One `[caches.NAME]`: its store and the fetches in flight.
pub struct Cache {
    pub name: Box<str>,
    pub settings: Settings,
    store: Store,
    /// One entry per key being fetched; the fetching request leads, others wait.
    flights: moka::sync::Cache<Key, Arc<Flight>>,
    metrics: Arc<CacheMetrics>,
}

/// How a fetch that others waited for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Stored,
    /// The response may not be stored (or is too large): waiters go upstream.
    Uncacheable,
    /// The fetch failed or was cut short: a waiter may lead the next one.
    Failed,
}

struct Flight {
    state: watch::Sender<Outcome>,
}

/// The fetch this request leads. Dropping it ends the flight: waiters wake up with
/// the outcome (`Failed` unless `finish` said otherwise), so a lead can never be
/// left hanging by an error, a timeout or a vanished client.
struct Lead {
    cache: Arc<Cache>,
    key: Key,
    flight: Arc<Flight>,
    outcome: Outcome,
}

impl Lead {
    fn finish(mut self, outcome: Outcome) {
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
    lead: Lead,
    primary: Key,
    url: Box<str>,
    /// The request's headers, for the variant key if the response has `Vary`.
    request_headers: HeaderMap,
    status: StatusCode,
    headers: HeaderMap,
    freshness: Freshness,
    response_time: SystemTime,
}

impl Pending {
    fn complete(self, body: Bytes) {
        let cache = &self.lead.cache;
        let mut headers = self.headers;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let names = policy::vary(&headers).unwrap_or_default();
        let keep = self.freshness.keep_for();
        let entry = Entry {
            url: self.url.clone(),
            status: self.status,
            headers,
            body,
            freshness: self.freshness,
            response_time: self.response_time,
        };
        if names.is_empty() {
            cache.store.insert(self.primary, Object::Response(entry));
        } else {
            let nonce = match cache.store.get(self.primary).as_deref() {
                Some(Object::Vary { names: n, nonce, .. }) if **n == *names => *nonce,
                _ => fastrand::u64(..),
            };
            let variant = variant_key(self.primary, nonce, &names, &self.request_headers);
            cache.store.insert(variant, Object::Response(entry));
            let marker = Object::Vary { url: self.url, names: names.into(), nonce, keep };
            cache.store.insert(self.primary, marker);
        }
        self.lead.finish(Outcome::Stored);
    }

    fn too_large(self) {
        self.lead.finish(Outcome::Uncacheable);
    }
}

/// What a lookup found.
enum Lookup {
    Found(Key, Arc<Object>),
    UriMiss,
    /// The URL varies and this request's variant is not stored: its key.
    VaryMiss(Key),
}

/// What `Cache-Status` says (RFC 9211).
#[derive(Debug, Clone, Copy)]
enum Status {
    Hit,
    Coalesced,
    Revalidating,
    StaleIfError,
    /// Went upstream, for this reason; `true` if the response is being stored.
    Forward(Fwd, bool),
}

#[derive(Debug, Clone, Copy)]
enum Fwd {
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
    fn value(self) -> HeaderValue {
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

/// What the client asked that shapes the answer: `HEAD`, and its validators.
struct Asked<'a> {
    head: bool,
    conditional: &'a HeaderMap,
}

impl Cache {
    pub fn new(name: &str, settings: Settings, metrics: CacheMetrics) -> Arc<Cache> {
        let metrics = Arc::new(metrics);
        Arc::new(Cache {
            name: name.into(),
            store: Store::new(settings.max_size, metrics.clone()),
            flights: moka::sync::Cache::builder().build(),
            settings,
            metrics,
        })
    }

    /// Answers `req` from the cache or from `upstream`, storing what may be stored.
    pub async fn serve(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        req: Request<ClientBody>,
        peer: &Peer,
        trace: &mut Trace,
    ) -> Result<Response<Body>, ProxyError> {
        let head = req.method() == Method::HEAD;
        if !(head || req.method() == Method::GET) {
            return self.pass(upstream, req, peer, trace, Fwd::Method).await;
        }
        if req.headers().contains_key(header::UPGRADE) {
            return self.pass(upstream, req, peer, trace, Fwd::Bypass).await;
        }
        let rules = RequestRules::of(req.headers());
        let primary = key(&req, peer);
        let now = SystemTime::now();
        let mut stale = None;
        let (lock_key, mut fwd) = match self.lookup(primary, req.headers()) {
            Lookup::Found(key, object) => {
                let Object::Response(entry) = &*object else {
                    return self.pass(upstream, req, peer, trace, Fwd::Bypass).await;
                };
                if rules.authorization && !entry.freshness.shared_with_authorization {
                    return self.pass(upstream, req, peer, trace, Fwd::Request).await;
                }
                let age = current_age(&entry.freshness, entry.response_time, now);
                let lifetime = entry.freshness.lifetime;
                let asked = Asked { head, conditional: req.headers() };
                if !rules.no_cache {
                    if age < lifetime && rules.max_age.is_none_or(|max| age.as_secs() <= max) {
                        self.metrics.hit.inc();
                        return Ok(respond(entry, age, Status::Hit, &asked));
                    }
                    if age >= lifetime && age < lifetime + entry.freshness.stale_while_revalidate {
                        self.metrics.stale.inc();
                        self.refresh(key, primary, &req, upstream, peer);
                        return Ok(respond(entry, age, Status::Revalidating, &asked));
                    }
                }
                let fwd = if rules.no_cache { Fwd::Request } else { Fwd::Stale };
                stale = Some(object.clone());
                (key, fwd)
            }
            Lookup::UriMiss => (primary, Fwd::UriMiss),
            Lookup::VaryMiss(key) => (key, Fwd::VaryMiss),
        };
        // HEAD cannot fill the store; it goes upstream alone.
        let mut lead = None;
        if !head {
            let deadline = tokio::time::Instant::now() + self.settings.lock_timeout;
            loop {
                let flight = self
                    .flights
                    .entry(lock_key)
                    .or_insert_with(|| Arc::new(Flight { state: watch::channel(Outcome::Pending).0 }));
                let fresh = flight.is_fresh();
                let flight = flight.into_value();
                if fresh {
                    lead =
                        Some(Lead { cache: self.clone(), key: lock_key, flight, outcome: Outcome::Failed });
                    break;
                }
                let mut state = flight.state.subscribe();
                let outcome =
                    match tokio::time::timeout_at(deadline, state.wait_for(|o| *o != Outcome::Pending)).await
                    {
                        Ok(Ok(outcome)) => *outcome,
                        _ => Outcome::Uncacheable,
                    };
                match outcome {
                    Outcome::Stored => {
                        if let Some(response) = self.coalesced(primary, &req, &rules, head) {
                            return Ok(response);
                        }
                    }
                    Outcome::Failed => {
                        let asked = Asked { head, conditional: req.headers() };
                        if let Some(response) = self.stale_if_error(stale.as_ref(), &asked) {
                            return Ok(response);
                        }
                        // The lead failed without a stale copy to fall back on: this
                        // request may lead the next try.
                        continue;
                    }
                    Outcome::Pending | Outcome::Uncacheable => {}
                }
                fwd = Fwd::Miss;
                break;
            }
        }
        self.metrics.miss.inc();
        self.fetch(upstream, req, (peer, trace), (primary, lead), stale, fwd, &rules).await
    }

    /// The entry for `primary` and this request's variant of it.
    fn lookup(&self, primary: Key, headers: &HeaderMap) -> Lookup {
        let Some(object) = self.store.get(primary) else { return Lookup::UriMiss };
        match &*object {
            Object::Response(_) => Lookup::Found(primary, object),
            Object::Vary { names, nonce, .. } => {
                let key = variant_key(primary, *nonce, names, headers);
                match self.store.get(key) {
                    Some(variant) => Lookup::Found(key, variant),
                    None => Lookup::VaryMiss(key),
                }
            }
        }
    }

    /// The answer for a waiter whose lead stored a response, if it fits this request.
    fn coalesced(
        &self,
        primary: Key,
        req: &Request<ClientBody>,
        rules: &RequestRules,
        head: bool,
    ) -> Option<Response<Body>> {
        let Lookup::Found(_, object) = self.lookup(primary, req.headers()) else { return None };
        let Object::Response(entry) = &*object else { return None };
        if rules.authorization && !entry.freshness.shared_with_authorization {
            return None;
        }
        let age = current_age(&entry.freshness, entry.response_time, SystemTime::now());
        self.metrics.coalesced.inc();
        Some(respond(entry, age, Status::Coalesced, &Asked { head, conditional: req.headers() }))
    }

    /// A stale entry's answer when the upstream failed, within `stale_if_error`.
    fn stale_if_error(&self, stale: Option<&Arc<Object>>, asked: &Asked) -> Option<Response<Body>> {
        let Object::Response(entry) = &**stale? else { return None };
        let age = current_age(&entry.freshness, entry.response_time, SystemTime::now());
        if age >= entry.freshness.lifetime + entry.freshness.stale_if_error {
            return None;
        }
        self.metrics.stale.inc();
        Some(respond(entry, age, Status::StaleIfError, asked))
    }

    /// Goes upstream; stores the response as it streams if this request leads.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        mut req: Request<ClientBody>,
        (peer, trace): (&Peer, &mut Trace),
        (primary, lead): (Key, Option<Lead>),
        stale: Option<Arc<Object>>,
        fwd: Fwd,
        rules: &RequestRules,
    ) -> Result<Response<Body>, ProxyError> {
        let head = req.method() == Method::HEAD;
        // A lead asks for the full response, which the store needs, and answers the
        // client's validators itself.
        let conditional = match lead {
            Some(_) => take_conditionals(req.headers_mut()),
            None => HeaderMap::new(),
        };
        let asked = Asked { head, conditional: &conditional };
        let stored_as = lead.as_ref().map(|_| (url(&req, peer), req.headers().clone()));
        let request_time = SystemTime::now();
        let result = admit_and_forward(upstream, req, peer, trace).await;
        let response_time = SystemTime::now();
        let response = match result {
            Ok(response) if !response.status().is_server_error() => response,
            failed => {
                if let Some(response) = self.stale_if_error(stale.as_ref(), &asked) {
                    return Ok(response);
                }
                return failed.map(|r| tag(r, Status::Forward(fwd, false)));
            }
        };
        let (Some(lead), Some((url, request_headers))) = (lead, stored_as) else {
            return Ok(tag(response, Status::Forward(fwd, false)));
        };
        let teed =
            self.tee(response, lead, primary, url, request_headers, rules, (request_time, response_time));
        match teed {
            (response, true) if policy::not_modified(&conditional, response.headers()) => {
                let status = Status::Forward(fwd, true);
                let answer = not_modified(response.headers(), None, status);
                // The store still wants the body; no client waits for it.
                tokio::spawn(drain(response.into_body()));
                Ok(answer)
            }
            (response, stored) => Ok(tag(response, Status::Forward(fwd, stored))),
        }
    }

    /// Wraps the body of a storable response so it is stored once complete (`true`);
    /// an unstorable one comes back as it was, its lead finished (`false`).
    #[allow(clippy::too_many_arguments)]
    fn tee(
        &self,
        response: Response<Body>,
        lead: Lead,
        primary: Key,
        url: Box<str>,
        request_headers: HeaderMap,
        rules: &RequestRules,
        times: (SystemTime, SystemTime),
    ) -> (Response<Body>, bool) {
        let limit = self.settings.max_object_size;
        let too_large = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > limit);
        let freshness = policy::storable(
            response.status(),
            response.headers(),
            rules,
            &self.settings.rules,
            times,
            fastrand::f64(),
        );
        let freshness = match freshness {
            Ok(freshness) if !too_large => freshness,
            _ => {
                lead.finish(Outcome::Uncacheable);
                return (response, false);
            }
        };
        let (parts, body) = response.into_parts();
        let pending = Pending {
            lead,
            primary,
            url,
            request_headers,
            status: parts.status,
            headers: parts.headers.clone(),
            freshness,
            response_time: times.1,
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        (Response::from_parts(parts, Body::Tee(Box::new(Tee::new(body, pending, limit)))), true)
    }

    /// Starts one background request that refreshes a stale entry, unless one is
    /// running. It belongs to no client: the client that triggered it may leave.
    fn refresh(
        self: &Arc<Self>,
        key: Key,
        primary: Key,
        req: &Request<ClientBody>,
        upstream: &Arc<Upstream>,
        peer: &Peer,
    ) {
        let flight = self
            .flights
            .entry(key)
            .or_insert_with(|| Arc::new(Flight { state: watch::channel(Outcome::Pending).0 }));
        if !flight.is_fresh() {
            return;
        }
        let lead = Lead { cache: self.clone(), key, flight: flight.into_value(), outcome: Outcome::Failed };
        let mut copy = Request::new(Body::Empty);
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        take_conditionals(copy.headers_mut());
        let url = url(req, peer);
        let peer = Peer {
            addr: peer.addr,
            listener: peer.listener,
            tls: peer.tls,
            ip: peer.ip.clone(),
            body_read_timeout: peer.body_read_timeout,
            underscores_in_headers: peer.underscores_in_headers,
        };
        let (cache, upstream) = (self.clone(), upstream.clone());
        tokio::spawn(async move {
            let request_headers = copy.headers().clone();
            let rules = RequestRules::of(&request_headers);
            let request_time = SystemTime::now();
            let mut trace = Trace::default();
            let Ok(response) = forward::forward_request(&upstream, copy, &peer, &mut trace).await else {
                return;
            };
            if response.status().is_server_error() {
                return;
            }
            let times = (request_time, SystemTime::now());
            let (response, stored) = cache.tee(response, lead, primary, url, request_headers, &rules, times);
            if stored {
                drain(response.into_body()).await;
            }
        });
    }

    /// A request the cache does not answer: forwarded as is. A successful unsafe
    /// method invalidates what is stored for its URL (RFC 9111 §4.4).
    async fn pass(
        &self,
        upstream: &Arc<Upstream>,
        req: Request<ClientBody>,
        peer: &Peer,
        trace: &mut Trace,
        fwd: Fwd,
    ) -> Result<Response<Body>, ProxyError> {
        self.metrics.bypass.inc();
        let invalidates = !req.method().is_safe();
        let key = invalidates.then(|| key(&req, peer));
        let response = admit_and_forward(upstream, req, peer, trace).await?;
        if let Some(key) = key {
            if response.status().is_success() || response.status().is_redirection() {
                self.store.remove(key);
            }
        }
        Ok(tag(response, Status::Forward(fwd, false)))
    }

    /// Removes what is stored for `url` exactly; returns how many objects.
    pub fn purge_url(&self, url: &str) -> usize {
        self.store.purge_url(url)
    }

    /// Removes everything stored under URLs starting with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.store.purge_prefix(prefix)
    }
}

/// The answer from a stored entry: a `304` if the client's validators match it.
fn respond(entry: &Entry, age: Duration, status: Status, asked: &Asked) -> Response<Body> {
    if entry.status == StatusCode::OK && policy::not_modified(asked.conditional, &entry.headers) {
        return not_modified(&entry.headers, Some(age), status);
    }
    let body = if asked.head { Body::Empty } else { Body::from(entry.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response.headers_mut().insert(header::AGE, HeaderValue::from(age.as_secs()));
    response.headers_mut().append(CACHE_STATUS.clone(), status.value());
    response
}

/// A `304` carrying the headers RFC 9110 §15.4.5 asks to repeat.
fn not_modified(headers: &HeaderMap, age: Option<Duration>, status: Status) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let out = response.headers_mut();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
    ] {
        for value in headers.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some(age) = age {
        out.insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    out.append(CACHE_STATUS.clone(), status.value());
    response
}

fn tag(mut response: Response<Body>, status: Status) -> Response<Body> {
    response.headers_mut().append(CACHE_STATUS.clone(), status.value());
    response
}

/// Removes the client's validators (`If-None-Match`, `If-Modified-Since`) and
/// returns them.
fn take_conditionals(headers: &mut HeaderMap) -> HeaderMap {
    let mut taken = HeaderMap::new();
    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        if let header::Entry::Occupied(e) = headers.entry(&name) {
            for value in e.remove_entry_mult().1 {
                taken.append(name.clone(), value);
            }
        }
    }
    taken
}

/// Reads a body to its end, so a `Tee` stores it without a client.
async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

/// The request's key: a hash of its canonical URL, computed without allocating.
fn key<B>(req: &Request<B>, peer: &Peer) -> Key {
    let mut hasher = Xxh3::new();
    hasher.update(scheme(peer).as_bytes());
    if let Some(host) = request_host(req) {
        let mut buf = [0u8; 64];
        for chunk in host.as_bytes().chunks(buf.len()) {
            let out = &mut buf[..chunk.len()];
            out.copy_from_slice(chunk);
            out.make_ascii_lowercase();
            hasher.update(out);
        }
    }
    hasher.update(path_and_query(req).as_bytes());
    hasher.digest128()
}

/// The key of a canonical URL as the admin purge names it.
pub fn url_key(url: &str) -> Key {
    xxhash_rust::xxh3::xxh3_128(url.as_bytes())
}

/// The canonical URL: what `key` hashes, as text.
fn url<B>(req: &Request<B>, peer: &Peer) -> Box<str> {
    let host = request_host(req).unwrap_or("").to_ascii_lowercase();
    format!("{}{host}{}", scheme(peer), path_and_query(req)).into()
}

fn scheme(peer: &Peer) -> &'static str {
    if peer.tls {
        "https://"
    } else {
        "http://"
    }
}

fn path_and_query<B>(req: &Request<B>) -> &str {
    req.uri().path_and_query().map_or("/", |p| p.as_str())
}

/// The key of one variant: the URL's key, its marker's nonce, and the values of the
/// request headers the response varies on.
fn variant_key(primary: Key, nonce: u64, names: &[HeaderName], headers: &HeaderMap) -> Key {
    let mut hasher = Xxh3::new();
    hasher.update(&primary.to_le_bytes());
    hasher.update(&nonce.to_le_bytes());
    for name in names {
        hasher.update(name.as_str().as_bytes());
        hasher.update(&[0]);
        for value in headers.get_all(name) {
            hasher.update(value.as_bytes());
            hasher.update(&[1]);
        }
        hasher.update(&[0xff]);
    }
    hasher.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(tls: bool) -> Peer {
        Peer::new(([127, 0, 0, 1], 1).into(), 0, tls)
    }

    #[test]
    fn the_key_is_the_hash_of_the_canonical_url() {
        let req =
            Request::builder().uri("/a/b?x=1").header("host", "Shop.Example.com:8080").body(()).unwrap();
        assert_eq!(&*url(&req, &peer(false)), "http://shop.example.com/a/b?x=1");
        assert_eq!(key(&req, &peer(false)), url_key("http://shop.example.com/a/b?x=1"));
        assert_ne!(key(&req, &peer(true)), key(&req, &peer(false)));
        let long_host = format!("{}.example.com", "A".repeat(100));
        let req = Request::builder().uri("/").header("host", &long_host).body(()).unwrap();
        assert_eq!(key(&req, &peer(false)), url_key(&format!("http://{}/", long_host.to_ascii_lowercase())));
    }

    #[test]
    fn variants_differ_by_the_named_headers_only() {
        let names = [header::ACCEPT_ENCODING];
        let mut gzip = HeaderMap::new();
        gzip.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        gzip.insert(header::USER_AGENT, HeaderValue::from_static("a"));
        let mut gzip_other_agent = gzip.clone();
        gzip_other_agent.insert(header::USER_AGENT, HeaderValue::from_static("b"));
        let mut br = gzip.clone();
        br.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(variant_key(1, 7, &names, &gzip), variant_key(1, 7, &names, &gzip_other_agent));
        assert_ne!(variant_key(1, 7, &names, &gzip), variant_key(1, 7, &names, &br));
        assert_ne!(variant_key(1, 7, &names, &gzip), variant_key(1, 8, &names, &gzip));
    }

    #[test]
    fn cache_status_values_are_valid_headers() {
        for status in [Status::Hit, Status::Coalesced, Status::Revalidating, Status::StaleIfError] {
            assert!(status.value().to_str().unwrap().starts_with("weir; "));
        }
        assert_eq!(Status::Forward(Fwd::UriMiss, true).value(), "weir; fwd=uri-miss; stored");
    }
}
