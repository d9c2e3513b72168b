//! The RFC 9111 rules a shared cache follows, as pure functions of headers and times:
//! whether a response may be stored (§3), how long it stays fresh (§4.2.1), how old
//! it is (§4.2.3), which request headers select it (`Vary`, §4.1), and whether a
//! client's conditional request gets `304` (RFC 9110 §13.1).
//!
//! Nothing here reads a clock or a random source: callers pass `now` and the jitter
//! draw, so the tests state the times they mean. Two choices are weir's own, both
//! the safer side of what the RFC allows: a response with `no-cache` or `Set-Cookie`
//! is not stored at all (weir does not revalidate upstream, and a shared cookie is a
//! leak), and `default_ttl` (the heuristic freshness of §4.2.2) applies only where
//! the response names no freshness and its status is cacheable by default, and never
//! to a request carrying `Cookie` or `Authorization`.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

/// The `Cache-Control` directives weir acts on, from a request or a response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    /// `must-revalidate`, or for a shared cache `proxy-revalidate`: never serve
    /// this response stale.
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Every `Cache-Control` field in `headers`, merged. Names are case-insensitive;
    /// a repeated numeric directive keeps its smallest value, the cautious reading.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                let min = |old: Option<u64>, new: Option<u64>| match (old, new) {
                    (Some(o), Some(n)) => Some(o.min(n)),
                    (o, n) => o.or(n),
                };
                let is = |n: &str| name.eq_ignore_ascii_case(n);
                if is("no-store") {
                    cc.no_store = true;
                } else if is("no-cache") {
                    // The qualified form `no-cache="Set-Cookie"` is read as the whole.
                    cc.no_cache = true;
                } else if is("private") {
                    cc.private = true;
                } else if is("public") {
                    cc.public = true;
                } else if is("must-revalidate") || is("proxy-revalidate") {
                    cc.must_revalidate = true;
                } else if is("max-age") {
                    // An unparseable max-age means stale (§4.2.1): zero.
                    cc.max_age = min(cc.max_age, Some(seconds().unwrap_or(0)));
                } else if is("s-maxage") {
                    cc.s_maxage = min(cc.s_maxage, Some(seconds().unwrap_or(0)));
                } else if is("stale-while-revalidate") {
                    cc.stale_while_revalidate = min(cc.stale_while_revalidate, seconds());
                } else if is("stale-if-error") {
                    cc.stale_if_error = min(cc.stale_if_error, seconds());
                }
            }
        }
        cc
    }
}

/// What a request asks of the cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestRules {
    /// Do not store the response to this request.
    pub no_store: bool,
    /// Do not answer from cache without going upstream (`no-cache`, `max-age=0`,
    /// or `Pragma: no-cache` without `Cache-Control`).
    pub no_cache: bool,
    /// Largest age of a stored response the client accepts.
    pub max_age: Option<u64>,
    /// Carries `Authorization`: only responses that allow it are shared (§3.5).
    pub authorization: bool,
    /// Carries `Cookie` or `Authorization`: the answer may be this user's own, so
    /// it is stored only when the upstream says how long (no heuristic lifetime).
    pub credentials: bool,
}

impl RequestRules {
    pub fn of(headers: &HeaderMap) -> RequestRules {
        let authorization = headers.contains_key(header::AUTHORIZATION);
        let credentials = authorization || headers.contains_key(header::COOKIE);
        if !headers.contains_key(header::CACHE_CONTROL) {
            let pragma = headers
                .get(header::PRAGMA)
                .is_some_and(|p| p.to_str().is_ok_and(|p| p.to_ascii_lowercase().contains("no-cache")));
            return RequestRules { no_cache: pragma, authorization, credentials, ..RequestRules::default() };
        }
        let cc = CacheControl::parse(headers);
        RequestRules {
            no_store: cc.no_store,
            no_cache: cc.no_cache || cc.max_age == Some(0),
            max_age: cc.max_age,
            authorization,
            credentials,
        }
    }
}

/// The cache's own settings that the rules read.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub default_ttl: Option<Duration>,
    pub negative_ttl: Option<Duration>,
    /// Largest share of a lifetime the jitter takes off (0.0 to 1.0).
    pub ttl_jitter: f64,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// How a stored response may be used, decided when it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness lifetime, jitter applied.
    pub lifetime: Duration,
    /// Age when it was received (§4.2.3 `corrected_initial_age`).
    pub initial_age: Duration,
    /// How long past `lifetime` it may be served while a refresh runs.
    pub stale_while_revalidate: Duration,
    /// How long past `lifetime` it may be served when the upstream fails.
    pub stale_if_error: Duration,
    /// May answer a request that carries `Authorization` (§3.5).
    pub shared_with_authorization: bool,
}

impl Freshness {
    /// How long the entry is worth keeping from now on: fresh time left plus the
    /// longest stale window. Zero means it is useless already.
    pub fn keep_for(&self) -> Duration {
        self.lifetime.saturating_sub(self.initial_age) + self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// Why a response is not stored; also what `Cache-Status` could say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    NoCache,
    SetCookie,
    VaryStar,
    Authorization,
    /// The request carries credentials and the upstream gave no explicit `public`,
    /// `s-maxage` or `max-age`.
    Credentials,
    /// Nothing says how long it stays fresh, and no `default_ttl`/`negative_ttl`.
    NoFreshness,
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1), less
/// 206: weir does not store partial content.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Decides whether a response to a GET may be stored and, if so, its freshness.
/// `request_time` is when the request went upstream, `response_time` when the
/// response headers arrived; `jitter_draw` is uniform in `[0, 1)`.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    request: &RequestRules,
    rules: &Rules,
    (request_time, response_time): (SystemTime, SystemTime),
    jitter_draw: f64,
) -> Result<Freshness, NotStored> {
    let explicit_ok = heuristically_cacheable(status) || matches!(status.as_u16(), 302 | 307);
    if !explicit_ok {
        return Err(NotStored::Status);
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store || request.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if cc.no_cache {
        return Err(NotStored::NoCache);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary(headers).is_err() {
        return Err(NotStored::VaryStar);
    }
    let shared_with_authorization = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
    if request.authorization && !shared_with_authorization {
        return Err(NotStored::Authorization);
    }
    // As Varnish and nginx: a page asked for with a cookie is stored only if the
    // upstream says so, never on `default_ttl`, `negative_ttl` or `Expires` alone.
    if request.credentials && !(cc.public || cc.s_maxage.is_some() || cc.max_age.is_some()) {
        return Err(NotStored::Credentials);
    }
    let date = date(headers).unwrap_or(response_time);
    let explicit = match (cc.s_maxage, cc.max_age) {
        (Some(s), _) => Some(Duration::from_secs(s)),
        (None, Some(m)) => Some(Duration::from_secs(m)),
        (None, None) => headers.get(header::EXPIRES).map(|e| {
            // An invalid Expires, such as "0", means already expired (§5.3).
            parse_date(e).map_or(Duration::ZERO, |e| e.duration_since(date).unwrap_or(Duration::ZERO))
        }),
    };
    let negative = matches!(status.as_u16(), 404 | 410);
    let lifetime = match explicit {
        Some(lifetime) => lifetime,
        None if !heuristically_cacheable(status) => return Err(NotStored::NoFreshness),
        None if negative => rules.negative_ttl.ok_or(NotStored::NoFreshness)?,
        None => rules.default_ttl.ok_or(NotStored::NoFreshness)?,
    };
    // s-maxage implies proxy-revalidate for a shared cache (§5.2.2.10).
    let never_stale = cc.must_revalidate || cc.s_maxage.is_some();
    let window = |own: Option<u64>, configured: Duration| {
        if never_stale {
            Duration::ZERO
        } else {
            own.map_or(configured, Duration::from_secs)
        }
    };
    let freshness = Freshness {
        lifetime: jittered(lifetime, rules.ttl_jitter, jitter_draw),
        initial_age: initial_age(headers, date, request_time, response_time),
        stale_while_revalidate: window(cc.stale_while_revalidate, rules.stale_while_revalidate),
        stale_if_error: window(cc.stale_if_error, rules.stale_if_error),
        shared_with_authorization,
    };
    if freshness.keep_for().is_zero() {
        return Err(NotStored::NoFreshness);
    }
    Ok(freshness)
}

/// Takes up to `jitter` of `lifetime` off, by `draw` in `[0, 1)`: never longer than
/// the origin allowed, and entries stored together expire spread over a window.
pub fn jittered(lifetime: Duration, jitter: f64, draw: f64) -> Duration {
    lifetime.mul_f64((1.0 - jitter.clamp(0.0, 1.0) * draw.clamp(0.0, 1.0)).max(0.0))
}

/// §4.2.3 `corrected_initial_age`: the larger of what the clocks say (`Date`) and
/// what the upstream says (`Age`) plus the time the response spent in transit.
pub fn initial_age(
    headers: &HeaderMap,
    date: SystemTime,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let age = headers
        .get(header::AGE)
        .and_then(|a| a.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let delay = response_time.duration_since(request_time).unwrap_or(Duration::ZERO);
    apparent.max(age + delay)
}

/// The entry's `current_age` at `now`, given when it was received.
pub fn current_age(freshness: &Freshness, response_time: SystemTime, now: SystemTime) -> Duration {
    freshness.initial_age + now.duration_since(response_time).unwrap_or(Duration::ZERO)
}

/// The request headers a response varies on. `Vary: *` (or a malformed name)
/// cannot be matched by any later request: `Err`.
pub fn vary(headers: &HeaderMap) -> Result<Vec<HeaderName>, NotStored> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(value) = value.to_str() else { return Err(NotStored::VaryStar) };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err(NotStored::VaryStar);
            }
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| NotStored::VaryStar)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// Whether a client's conditional GET/HEAD is answered `304` by a stored response
/// with these headers (RFC 9110 §13.2.2: `If-None-Match` wins over
/// `If-Modified-Since`; ETags compare weakly).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    not_modified_by(request, |name| stored.get(name).map(HeaderValue::as_bytes))
}

/// `not_modified`, with the stored response's fields read through `stored` (the
/// first value of a name).
pub fn not_modified_by<'a>(request: &HeaderMap, stored: impl Fn(&HeaderName) -> Option<&'a [u8]>) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored(&header::ETAG).and_then(|e| std::str::from_utf8(e).ok()) else {
            return request
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.trim() == "*"));
        };
        let opaque = |tag: &str| {
            let tag = tag.trim();
            tag.strip_prefix("W/").unwrap_or(tag).to_string()
        };
        let mine = opaque(etag);
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim() == "*" || opaque(t) == mine)));
    }
    let Some(since) = request.get(header::IF_MODIFIED_SINCE).and_then(parse_date) else {
        return false;
    };
    let modified =
        stored(&header::LAST_MODIFIED).or_else(|| stored(&header::DATE)).and_then(parse_date_bytes);
    modified.is_some_and(|m| m <= since)
}

fn date(headers: &HeaderMap) -> Option<SystemTime> {
    headers.get(header::DATE).and_then(parse_date)
}

fn parse_date(value: &HeaderValue) -> Option<SystemTime> {
    parse_date_bytes(value.as_bytes())
}

fn parse_date_bytes(value: &[u8]) -> Option<SystemTime> {
    httpdate::parse_http_date(std::str::from_utf8(value).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn rules() -> Rules {
        Rules {
            default_ttl: None,
            negative_ttl: None,
            ttl_jitter: 0.0,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        }
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;
    fn at(secs: u64) -> SystemTime {
        T0 + Duration::from_secs(1_700_000_000 + secs)
    }

    fn check(status: u16, pairs: &[(&str, &str)], rules: &Rules) -> Result<Freshness, NotStored> {
        let req = RequestRules::default();
        storable(StatusCode::from_u16(status).unwrap(), &headers(pairs), &req, rules, (at(0), at(0)), 0.0)
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let date = httpdate::fmt_http_date(at(0));
        let expires = httpdate::fmt_http_date(at(30));
        let all = [("cache-control", "max-age=10, s-maxage=20"), ("date", &date), ("expires", &expires)];
        assert_eq!(check(200, &all, &rules()).unwrap().lifetime, Duration::from_secs(20));
        let no_s = [("cache-control", "max-age=10"), ("date", &date), ("expires", &expires)];
        assert_eq!(check(200, &no_s, &rules()).unwrap().lifetime, Duration::from_secs(10));
        let only_expires = [("date", &*date), ("expires", &*expires)];
        assert_eq!(check(200, &only_expires, &rules()).unwrap().lifetime, Duration::from_secs(30));
    }

    #[test]
    fn an_invalid_expires_means_already_stale() {
        let r =
            check(200, &[("expires", "0")], &Rules { default_ttl: Some(Duration::from_secs(60)), ..rules() });
        assert_eq!(r, Err(NotStored::NoFreshness));
    }

    #[test]
    fn no_store_private_and_no_cache_are_not_stored() {
        for (cc, why) in [
            ("no-store, max-age=60", NotStored::NoStore),
            ("private, max-age=60", NotStored::Private),
            ("Private=\"x\", max-age=60", NotStored::Private),
            ("no-cache, max-age=60", NotStored::NoCache),
        ] {
            assert_eq!(check(200, &[("cache-control", cc)], &rules()), Err(why), "{cc}");
        }
        let req = RequestRules { no_store: true, ..RequestRules::default() };
        let h = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(
            storable(StatusCode::OK, &h, &req, &rules(), (at(0), at(0)), 0.0),
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn default_ttl_applies_only_without_freshness_and_to_cacheable_statuses() {
        let r = Rules { default_ttl: Some(Duration::from_secs(60)), ..rules() };
        assert_eq!(check(200, &[], &r).unwrap().lifetime, Duration::from_secs(60));
        assert_eq!(
            check(200, &[("cache-control", "max-age=5")], &r).unwrap().lifetime,
            Duration::from_secs(5)
        );
        // 302 is storable only with explicit freshness.
        assert_eq!(check(302, &[], &r), Err(NotStored::NoFreshness));
        assert!(check(302, &[("cache-control", "max-age=5")], &r).is_ok());
        assert_eq!(check(500, &[("cache-control", "max-age=5")], &r), Err(NotStored::Status));
        assert_eq!(check(200, &[], &rules()), Err(NotStored::NoFreshness));
    }

    #[test]
    fn negative_ttl_covers_404_and_410_without_freshness() {
        let r = Rules {
            negative_ttl: Some(Duration::from_secs(3)),
            default_ttl: Some(Duration::from_secs(60)),
            ..rules()
        };
        assert_eq!(check(404, &[], &r).unwrap().lifetime, Duration::from_secs(3));
        assert_eq!(check(410, &[], &r).unwrap().lifetime, Duration::from_secs(3));
        assert_eq!(
            check(404, &[("cache-control", "max-age=9")], &r).unwrap().lifetime,
            Duration::from_secs(9)
        );
        assert_eq!(check(404, &[], &rules()), Err(NotStored::NoFreshness));
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let req = RequestRules { authorization: true, ..RequestRules::default() };
        let with = |cc: &str| {
            storable(StatusCode::OK, &headers(&[("cache-control", cc)]), &req, &rules(), (at(0), at(0)), 0.0)
        };
        assert_eq!(with("max-age=60"), Err(NotStored::Authorization));
        assert!(with("public, max-age=60").is_ok());
        assert!(with("s-maxage=60").is_ok());
        assert!(with("must-revalidate, max-age=60").is_ok());
    }

    #[test]
    fn must_revalidate_and_s_maxage_close_the_stale_windows() {
        let r = Rules {
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(60),
            ..rules()
        };
        let plain = check(200, &[("cache-control", "max-age=10")], &r).unwrap();
        assert_eq!(
            (plain.stale_while_revalidate, plain.stale_if_error),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
        let own = check(200, &[("cache-control", "max-age=10, stale-while-revalidate=5")], &r).unwrap();
        assert_eq!(own.stale_while_revalidate, Duration::from_secs(5));
        for cc in ["max-age=10, must-revalidate", "max-age=10, proxy-revalidate", "s-maxage=10"] {
            let f = check(200, &[("cache-control", cc)], &r).unwrap();
            assert_eq!(
                (f.stale_while_revalidate, f.stale_if_error),
                (Duration::ZERO, Duration::ZERO),
                "{cc}"
            );
        }
    }

    #[test]
    fn age_counts_upstream_age_and_transit_and_date() {
        let h = headers(&[("age", "7")]);
        assert_eq!(initial_age(&h, at(10), at(8), at(10)), Duration::from_secs(9));
        // The Date is older than Age says: the clocks win.
        assert_eq!(initial_age(&h, at(0), at(20), at(20)), Duration::from_secs(20));
        let f = Freshness {
            lifetime: Duration::from_secs(10),
            initial_age: Duration::from_secs(3),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            shared_with_authorization: false,
        };
        assert_eq!(current_age(&f, at(0), at(5)), Duration::from_secs(8));
        assert_eq!(f.keep_for(), Duration::from_secs(7));
    }

    #[test]
    fn a_response_older_than_its_lifetime_is_not_stored() {
        assert_eq!(
            check(200, &[("cache-control", "max-age=5"), ("age", "9")], &rules()),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn vary_lists_names_and_star_is_uncacheable() {
        let v = vary(&headers(&[("vary", "Accept-Encoding, accept-language"), ("vary", "accept-encoding")]))
            .unwrap();
        assert_eq!(v, vec![header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE]);
        assert!(vary(&headers(&[("vary", "accept, *")])).is_err());
        assert_eq!(
            check(200, &[("cache-control", "max-age=5"), ("vary", "*")], &rules()),
            Err(NotStored::VaryStar)
        );
    }

    #[test]
    fn set_cookie_responses_are_not_shared() {
        let r = check(200, &[("cache-control", "max-age=5"), ("set-cookie", "sid=1")], &rules());
        assert_eq!(r, Err(NotStored::SetCookie));
    }

    #[test]
    fn request_directives_are_read() {
        assert!(RequestRules::of(&headers(&[("cache-control", "no-cache")])).no_cache);
        assert!(RequestRules::of(&headers(&[("cache-control", "max-age=0")])).no_cache);
        assert!(RequestRules::of(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(
            !RequestRules::of(&headers(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])).no_cache
        );
        assert_eq!(RequestRules::of(&headers(&[("cache-control", "max-age=5")])).max_age, Some(5));
        assert!(RequestRules::of(&headers(&[("cache-control", "no-store")])).no_store);
        assert!(RequestRules::of(&headers(&[("authorization", "Basic x")])).authorization);
        assert!(RequestRules::of(&headers(&[("authorization", "Basic x")])).credentials);
        assert!(
            RequestRules::of(&headers(&[("cookie", "sid=1"), ("cache-control", "max-age=5")])).credentials
        );
        assert!(!RequestRules::of(&headers(&[("accept", "*/*")])).credentials);
    }

    #[test]
    fn credentials_need_explicit_freshness() {
        let req = RequestRules { credentials: true, ..RequestRules::default() };
        let r = Rules {
            default_ttl: Some(Duration::from_secs(60)),
            negative_ttl: Some(Duration::from_secs(5)),
            ..rules()
        };
        let with = |status: u16, pairs: &[(&str, &str)]| {
            storable(StatusCode::from_u16(status).unwrap(), &headers(pairs), &req, &r, (at(0), at(0)), 0.0)
        };
        assert_eq!(with(200, &[]), Err(NotStored::Credentials));
        assert_eq!(with(404, &[]), Err(NotStored::Credentials));
        let expires = httpdate::fmt_http_date(at(30));
        assert_eq!(with(200, &[("expires", &expires)]), Err(NotStored::Credentials));
        assert!(with(200, &[("cache-control", "max-age=5")]).is_ok());
        assert!(with(200, &[("cache-control", "s-maxage=5")]).is_ok());
        assert_eq!(with(200, &[("cache-control", "public")]).unwrap().lifetime, Duration::from_secs(60));
    }

    #[test]
    fn conditional_requests_match_etags_weakly_and_dates() {
        let stored = headers(&[("etag", "W/\"v1\""), ("last-modified", &httpdate::fmt_http_date(at(0)))]);
        assert!(not_modified(&headers(&[("if-none-match", "\"v0\", \"v1\"")]), &stored));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&headers(&[("if-none-match", "\"v2\"")]), &stored));
        // If-None-Match present: If-Modified-Since is ignored.
        let both =
            headers(&[("if-none-match", "\"v2\""), ("if-modified-since", &httpdate::fmt_http_date(at(5)))]);
        assert!(!not_modified(&both, &stored));
        assert!(not_modified(&headers(&[("if-modified-since", &httpdate::fmt_http_date(at(5)))]), &stored));
        assert!(!not_modified(
            &headers(&[("if-modified-since", &httpdate::fmt_http_date(at(0) - Duration::from_secs(5)))]),
            &stored
        ));
        assert!(!not_modified(&HeaderMap::new(), &stored));
    }

    #[test]
    fn jitter_spreads_expiries_over_the_window_and_never_extends_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        let lifetime = Duration::from_secs(100);
        let lifetimes: Vec<f64> =
            (0..10_000).map(|_| jittered(lifetime, 0.1, rng.f64()).as_secs_f64()).collect();
        let (min, max) = lifetimes.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        assert!(min >= 90.0 && max <= 100.0, "{min}..{max}");
        assert!(min < 90.1 && max > 99.9, "the whole window is used: {min}..{max}");
        // Roughly uniform: each of 10 one-second buckets holds about a tenth.
        let mut buckets = [0usize; 10];
        for x in &lifetimes {
            buckets[((x - 90.0) as usize).min(9)] += 1;
        }
        assert!(buckets.iter().all(|&b| (800..1200).contains(&b)), "{buckets:?}");
        assert_eq!(jittered(lifetime, 0.0, 0.9), lifetime);
    }
}
