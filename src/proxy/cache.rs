//! The cache on the request path: `serve` answers a cached route's request from
//! `crate::cache` or goes upstream through `admit_and_forward`, teeing what may be
//! stored; `refresh` is the background request for a stale entry. The cache's own
//! state (store, keys, coalescing) lives in `crate::cache`, which forwards nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use super::admit_and_forward;
use super::body::{Body, Stored};
use super::error::ProxyError;
use super::forward::{self, Job, Peer, Trace};
use crate::body::ClientBody;
use crate::cache::policy::{self, current_age, RequestRules};
use crate::cache::store::{Entry, Key, Object, Place};
use crate::cache::{
    Cache, Client, Flight, Forwarded, Forwarding, Fwd, Lead, Lookup, Outcome, Pending, Status, Target, Tee,
    CACHE_STATUS,
};

/// Answers `req` from the cache or from `upstream`, storing what may be stored.
/// `req` is the request as shaped for the upstream (header rules applied, path
/// rewritten); `client` has what the key needs from before the rewrite.
pub(super) async fn serve(
    cache: &Arc<Cache>,
    job: &Job<'_>,
    req: Request<ClientBody>,
    trace: &mut Trace,
    client: Client,
) -> Result<Response<Body>, ProxyError> {
    let peer = job.peer;
    let head = req.method() == Method::HEAD;
    if !(head || req.method() == Method::GET) {
        let invalidates = (!req.method().is_safe())
            .then(|| Target::of(&req, peer.listener, peer.tls, &client).map(|t| t.key(cache.seed)))
            .flatten();
        return pass(cache, job, req, trace, Fwd::Method, invalidates).await;
    }
    // A body on a GET or HEAD has no defined meaning, but an upstream may read it:
    // its answer is not what the URL alone asks for.
    if req.headers().contains_key(header::UPGRADE) || has_body(&req) {
        return pass(cache, job, req, trace, Fwd::Bypass, None).await;
    }
    let Some(target) = Target::of(&req, peer.listener, peer.tls, &client) else {
        return pass(cache, job, req, trace, Fwd::Bypass, None).await;
    };
    let mut rules = RequestRules::of(req.headers());
    if !cache.settings.honor_client_no_cache {
        // Otherwise any client could replace a fresh entry at will, which turns
        // every way of poisoning the cache into an immediate one.
        rules.no_cache = false;
        rules.max_age = None;
    }
    let primary = target.key(cache.seed);
    let now = SystemTime::now();
    let mut stale = None;
    let forwarded = Forwarding::of(&req, peer.tls, peer.ip.as_bytes());
    let (lock_key, mut fwd) = match cache.lookup(primary, &target, &forwarded) {
        Lookup::Found(key, object) => {
            let Object::Response(entry) = &*object else {
                return pass(cache, job, req, trace, Fwd::Bypass, None).await;
            };
            if rules.authorization && !entry.freshness.shared_with_authorization {
                return pass(cache, job, req, trace, Fwd::Request, None).await;
            }
            let age = current_age(&entry.freshness, entry.response_time, now);
            let lifetime = entry.freshness.lifetime;
            let asked = Asked { head, conditional: req.headers() };
            if !rules.no_cache {
                if age < lifetime && rules.max_age.is_none_or(|max| age.as_secs() <= max) {
                    cache.metrics.hit.inc();
                    return Ok(respond(entry, age, Status::Hit, &asked));
                }
                if age >= lifetime && age < lifetime + entry.freshness.stale_while_revalidate {
                    cache.metrics.stale.inc();
                    refresh(cache, key, primary, &target, &req, job);
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
        let deadline = tokio::time::Instant::now() + cache.settings.lock_timeout;
        loop {
            let flight = cache
                .flights
                .entry(lock_key)
                .or_insert_with(|| Arc::new(Flight { state: watch::channel(Outcome::Pending).0 }));
            let fresh = flight.is_fresh();
            let flight = flight.into_value();
            if fresh {
                lead = Some(Lead { cache: cache.clone(), key: lock_key, flight, outcome: Outcome::Failed });
                break;
            }
            let mut state = flight.state.subscribe();
            let outcome =
                match tokio::time::timeout_at(deadline, state.wait_for(|o| *o != Outcome::Pending)).await {
                    Ok(Ok(outcome)) => *outcome,
                    _ => Outcome::Uncacheable,
                };
            match outcome {
                Outcome::Stored => {
                    if let Some(response) = coalesced(cache, primary, &target, &forwarded, &req, &rules, head)
                    {
                        return Ok(response);
                    }
                }
                Outcome::Failed => {
                    let asked = Asked { head, conditional: req.headers() };
                    if let Some(response) = stale_if_error(cache, stale.as_ref(), &asked) {
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
    cache.metrics.miss.inc();
    let lead = lead.map(|lead| (lead, target.place(), forwarded.to_owned_without_headers()));
    fetch(cache, job, req, trace, (primary, lead), stale, fwd, &rules).await
}

/// The answer for a waiter whose lead stored a response, if it fits this request.
fn coalesced(
    cache: &Cache,
    primary: Key,
    target: &Target,
    request: &Forwarding,
    req: &Request<ClientBody>,
    rules: &RequestRules,
    head: bool,
) -> Option<Response<Body>> {
    let Lookup::Found(_, object) = cache.lookup(primary, target, request) else { return None };
    let Object::Response(entry) = &*object else { return None };
    if rules.authorization && !entry.freshness.shared_with_authorization {
        return None;
    }
    let age = current_age(&entry.freshness, entry.response_time, SystemTime::now());
    cache.metrics.coalesced.inc();
    Some(respond(entry, age, Status::Coalesced, &Asked { head, conditional: req.headers() }))
}

/// A stale entry's answer when the upstream failed, within `stale_if_error`.
fn stale_if_error(cache: &Cache, stale: Option<&Arc<Object>>, asked: &Asked) -> Option<Response<Body>> {
    let Object::Response(entry) = &**stale? else { return None };
    let age = current_age(&entry.freshness, entry.response_time, SystemTime::now());
    if age >= entry.freshness.lifetime + entry.freshness.stale_if_error {
        return None;
    }
    cache.metrics.stale.inc();
    Some(respond(entry, age, Status::StaleIfError, asked))
}

/// Goes upstream; stores the response as it streams if this request leads.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    cache: &Arc<Cache>,
    job: &Job<'_>,
    mut req: Request<ClientBody>,
    trace: &mut Trace,
    (primary, lead): (Key, Option<(Lead, Place, Forwarded)>),
    stale: Option<Arc<Object>>,
    fwd: Fwd,
    rules: &RequestRules,
) -> Result<Response<Body>, ProxyError> {
    let head = req.method() == Method::HEAD;
    // A lead asks for the full response, which the store needs, and answers the
    // client's validators itcache.
    let conditional = match lead {
        Some(_) => take_conditionals(req.headers_mut()),
        None => HeaderMap::new(),
    };
    let asked = Asked { head, conditional: &conditional };
    // The headers as they go upstream, for the variant key.
    let lead = lead.map(|(lead, place, mut forwarded)| {
        forwarded.headers = req.headers().clone();
        (lead, place, forwarded)
    });
    let request_time = SystemTime::now();
    let mut result = admit_and_forward(job, req, trace).await;
    let response_time = SystemTime::now();
    // The cache reads the response's headers (may it be stored, its validators).
    if let Ok(response) = &mut result {
        super::body::materialize(response);
    }
    let response = match result {
        Ok(response) if !response.status().is_server_error() => response,
        failed => {
            if let Some(response) = stale_if_error(cache, stale.as_ref(), &asked) {
                return Ok(response);
            }
            return failed.map(|r| tag(r, Status::Forward(fwd, false)));
        }
    };
    let Some((lead, place, forwarded)) = lead else {
        return Ok(tag(response, Status::Forward(fwd, false)));
    };
    let teed = tee(cache, response, lead, (primary, place), forwarded, rules, (request_time, response_time));
    match teed {
        (response, true) if policy::not_modified(&conditional, response.headers()) => {
            let status = Status::Forward(fwd, true);
            let fields = response.headers().iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
            let answer = not_modified(fields, None, status);
            // The store still wants the body; no client waits for it.
            tokio::spawn(drain(response.into_body()));
            Ok(answer)
        }
        (response, stored) => Ok(tag(response, Status::Forward(fwd, stored))),
    }
}

/// Wraps the body of a storable response so it is stored once complete (`true`);
/// an unstorable one comes back as it was, its lead finished (`false`).
fn tee(
    cache: &Cache,
    response: Response<Body>,
    lead: Lead,
    (primary, place): (Key, Place),
    request: Forwarded,
    rules: &RequestRules,
    times: (SystemTime, SystemTime),
) -> (Response<Body>, bool) {
    let limit = cache.settings.max_object_size;
    let too_large = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| crate::http::h1::framing::parse_length_list(v.as_bytes()))
        .is_some_and(|n| n > limit);
    let freshness = policy::storable(
        response.status(),
        response.headers(),
        rules,
        &cache.settings.rules,
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
        place,
        request,
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
    cache: &Arc<Cache>,
    key: Key,
    primary: Key,
    target: &Target,
    req: &Request<ClientBody>,
    job: &Job<'_>,
) {
    let peer = job.peer;
    let flight = cache
        .flights
        .entry(key)
        .or_insert_with(|| Arc::new(Flight { state: watch::channel(Outcome::Pending).0 }));
    if !flight.is_fresh() {
        return;
    }
    let lead = Lead { cache: cache.clone(), key, flight: flight.into_value(), outcome: Outcome::Failed };
    let copy = refresh_request(req);
    let place = target.place();
    let mut forwarded = Forwarding::of(req, peer.tls, peer.ip.as_bytes()).to_owned_without_headers();
    forwarded.headers = copy.headers().clone();
    let peer = Peer {
        addr: peer.addr,
        listener: peer.listener,
        tls: peer.tls,
        ip: peer.ip,
        body_read_timeout: peer.body_read_timeout,
        underscores_in_headers: peer.underscores_in_headers,
        // The refresh's response goes into the cache, which reads it as a map.
        writes_lines: false,
        timer: Default::default(),
    };
    let (cache, upstream) = (cache.clone(), job.upstream.clone());
    tokio::spawn(async move {
        let rules = RequestRules::of(copy.headers());
        let request_time = SystemTime::now();
        let mut trace = Trace::default();
        let Ok(mut response) = forward::forward(&Job::new(&upstream, &peer), copy, &mut trace).await else {
            return;
        };
        super::body::materialize(&mut response);
        if response.status().is_server_error() {
            return;
        }
        let times = (request_time, SystemTime::now());
        let (response, stored) = tee(&cache, response, lead, (primary, place), forwarded, &rules, times);
        if stored {
            drain(response.into_body()).await;
        }
    });
}

/// A request the cache does not answer: forwarded as is. A successful unsafe
/// method invalidates what is stored for its URL on this route (RFC 9111 §4.4):
/// `invalidates` is its key.
async fn pass(
    cache: &Cache,
    job: &Job<'_>,
    req: Request<ClientBody>,
    trace: &mut Trace,
    fwd: Fwd,
    invalidates: Option<Key>,
) -> Result<Response<Body>, ProxyError> {
    cache.metrics.bypass.inc();
    let response = admit_and_forward(job, req, trace).await?;
    if let Some(key) = invalidates {
        if response.status().is_success() || response.status().is_redirection() {
            cache.store.remove(key);
        }
    }
    Ok(tag(response, Status::Forward(fwd, false)))
}

/// What the client asked that shapes the answer: `HEAD`, and its validators.
struct Asked<'a> {
    head: bool,
    conditional: &'a HeaderMap,
}

/// Whether a GET or HEAD carries a body (a length above zero, or a body still to
/// come).
fn has_body<B: http_body::Body>(req: &Request<B>) -> bool {
    // Any length but a plain 0 (an unreadable one included) counts as a body.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| crate::http::h1::framing::parse_length(v.as_bytes()) != Some(0));
    declared || req.headers().contains_key(header::TRANSFER_ENCODING) || !req.body().is_end_stream()
}

/// The request the background refresh sends: a bodyless `GET` for the same target
/// with the client's end-to-end headers, less anything that describes the client's
/// own message (its framing, `Expect`, an upgrade, hop-by-hop headers) or narrows the
/// answer (validators, ranges). A `Content-Length` copied onto a request without a
/// body would leave the upstream reading the next request on the connection as that
/// body.
fn refresh_request<B>(req: &Request<B>) -> Request<ClientBody> {
    let mut copy = Request::new(ClientBody::Empty);
    *copy.method_mut() = Method::GET;
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    let headers = copy.headers_mut();
    *headers = req.headers().clone();
    super::hop_by_hop::strip_hop_by_hop(headers);
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
        header::UPGRADE,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        headers.remove(name);
    }
    copy
}

/// The answer from a stored entry: a `304` if the client's validators match it.
/// The stored fields go out as stored (`Body::Stored`); the map holds only what this
/// answer adds.
fn respond(entry: &Entry, age: Duration, status: Status, asked: &Asked) -> Response<Body> {
    if entry.status == StatusCode::OK
        && !asked.conditional.is_empty()
        && policy::not_modified_by(asked.conditional, |name| entry.get(name))
    {
        return not_modified(entry.iter(), Some(age), status);
    }
    let body = Stored {
        fields: entry.fields_bytes(),
        count: entry.count(),
        date: entry.has_date(),
        length: entry.length(),
        body: (!asked.head).then(|| entry.body()),
    };
    let mut response = Response::new(Body::Stored(body));
    *response.status_mut() = entry.status;
    let headers = response.headers_mut();
    // Room for the stored fields too, should the answer need them as a map (hyper's
    // servers): a larger first allocation costs less than growing the map later.
    headers.reserve(2 + usize::from(entry.count()));
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    headers.append(CACHE_STATUS.clone(), status.value());
    response
}

/// The fields RFC 9110 §15.4.5 asks a `304` to repeat.
const REPEATED: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

/// A `304` carrying those of `fields` (name, value) that it repeats.
fn not_modified<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    age: Option<Duration>,
    status: Status,
) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let out = response.headers_mut();
    for (name, value) in fields {
        let Some(name) = REPEATED.iter().find(|n| n.as_str().as_bytes() == name) else { continue };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            out.append(name.clone(), value);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_refresh_request_is_a_bare_get_without_the_clients_framing() {
        let req = Request::builder()
            .method("HEAD")
            .uri("/a")
            .header("host", "app.test")
            .header("content-length", "40")
            .header("transfer-encoding", "chunked")
            .header("expect", "100-continue")
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("upgrade", "h2c")
            .header("if-none-match", "\"v1\"")
            .header("range", "bytes=0-1")
            .header("accept-language", "fr")
            .body(())
            .unwrap();
        let copy = refresh_request(&req);
        assert_eq!(copy.method(), Method::GET);
        let left: Vec<_> = copy.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "accept-language"]);
    }

    #[test]
    fn a_body_on_a_get_is_seen() {
        let with = |name: &str, value: &str| {
            has_body(
                &Request::builder().header(name, value).body(http_body_util::Empty::<Bytes>::new()).unwrap(),
            )
        };
        assert!(with("content-length", "40"));
        assert!(!with("content-length", "0"));
        assert!(!with("content-length", "000"));
        assert!(with("transfer-encoding", "chunked"));
        assert!(!with("accept", "*/*"));
    }
}
