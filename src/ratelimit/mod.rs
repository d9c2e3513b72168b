//! Rate limits: `[rate_limits.NAME]` turned into a `Limiter` that a route checks
//! before forwarding.
//!
//! - `bucket`: the pure token bucket (`try_take(now)`), continuous refill.
//! - `store`: buckets by key hash, sharded, capped at `max_keys`, idle ones evicted.
//! - here: which key a request counts against, the counter of refusals, and the
//!   `RateLimit-Policy` / `RateLimit` / `Retry-After` response headers.
//!
//! Keys: `client_ip` hashes the client's address (see `proxy::client_ip` for
//! `trusted_proxies`) cut to its network prefix (`ipv4_prefix`, default /32, and
//! `ipv6_prefix`, default /64: one IPv6 subscriber usually holds a whole /64, so
//! keying per /128 would hand it 2^64 fresh buckets); `header:NAME` hashes the
//! header's first value, and requests without the header all share one bucket
//! (refusing them would make the header a precondition of the route, which is an
//! access rule, not a rate); `global` is one bucket. The key is never copied: its
//! bytes are hashed in place, with a random key per process (local buckets) or the
//! seed shared through Redis (see `shared`).
//!
//! Headers follow draft-ietf-httpapi-ratelimit-headers (-11): the policy is
//! `"NAME";q=BURST;w=WINDOW`, with WINDOW the seconds an empty bucket takes to fill,
//! and each response gets `"NAME";r=REMAINING;t=SECONDS` where SECONDS is the time
//! until the bucket is full again; on a refusal `r=0` and `t` equals `Retry-After`
//! (the draft asks that `Retry-After` not point before the end of `t`).
//!
//! A `Limiter` survives a reload when its name and settings are unchanged
//! (`runtime` hands the same `Arc` to the new routes), so a reload does not hand
//! every client a fresh burst.

mod bucket;
mod shared;
mod store;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use prometheus::IntCounter;

pub use bucket::{Decision, Rate, TokenBucket};
pub use shared::{SharedStore, StoreError, StoreSettings};
pub use store::Store;

use crate::config::{OnStoreError, RateLimitConfig, RateLimitKey};

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What a limiter was built from; equal settings keep their buckets across reloads.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub key: RateLimitKey,
    pub rate: f64,
    pub burst: u32,
    pub max_keys: usize,
    /// `client_ip` keys: the bits of an IPv4 / IPv6 address that name the client.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

/// Default `ipv4_prefix`: one bucket per address.
pub const DEFAULT_IPV4_PREFIX: u8 = 32;
/// Default `ipv6_prefix`: one bucket per /64, what one subscriber or host usually holds.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl Settings {
    /// Settings with the default address prefixes.
    pub fn new(key: RateLimitKey, rate: f64, burst: u32, max_keys: usize) -> Settings {
        Settings {
            key,
            rate,
            burst,
            max_keys,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    pub fn from_config(limit: &RateLimitConfig) -> Settings {
        // Validation keeps the prefixes within 0..=32 and 0..=128.
        let prefix = |p: &Option<toml::Spanned<u32>>, default: u8| {
            p.as_ref().map_or(default, |p| u8::try_from(*p.get_ref()).unwrap_or(default))
        };
        Settings {
            ipv4_prefix: prefix(&limit.ipv4_prefix, DEFAULT_IPV4_PREFIX),
            ipv6_prefix: prefix(&limit.ipv6_prefix, DEFAULT_IPV6_PREFIX),
            ..Settings::new(
                limit.key.clone(),
                *limit.rate.get_ref(),
                *limit.burst.get_ref(),
                *limit.max_keys.get_ref(),
            )
        }
    }

    /// What a request counts against, before hashing. `client` is asked for the
    /// client's address only when the key is `client_ip`.
    fn key_of<'h>(&self, headers: &'h HeaderMap, client: impl FnOnce() -> IpAddr) -> KeyBytes<'h> {
        match &self.key {
            RateLimitKey::Global => KeyBytes::Global,
            RateLimitKey::ClientIp => match client().to_canonical() {
                IpAddr::V4(ip) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(self.ipv4_prefix.min(32))).unwrap_or(0);
                    KeyBytes::V4((u32::from(ip) & mask).to_be_bytes())
                }
                IpAddr::V6(ip) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix.min(128))).unwrap_or(0);
                    KeyBytes::V6((u128::from(ip) & mask).to_be_bytes())
                }
            },
            RateLimitKey::Header(name) => KeyBytes::Header(headers.get(name).map(HeaderValue::as_bytes)),
        }
    }
}

/// The bytes a request's bucket is named by: an address cut to its prefix, a header
/// value (`None`: no header, apart from every value, the empty one too), or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyBytes<'h> {
    Global,
    V4([u8; 4]),
    V6([u8; 16]),
    Header(Option<&'h [u8]>),
}

impl KeyBytes<'_> {
    /// A tag that keeps the kinds apart, and the bytes: what the shared hash covers.
    fn tagged(&self) -> (u8, &[u8]) {
        match self {
            KeyBytes::Global => (b'g', b""),
            KeyBytes::V4(octets) => (4, octets),
            KeyBytes::V6(octets) => (6, octets),
            KeyBytes::Header(Some(value)) => (1, value),
            KeyBytes::Header(None) => (0, b""),
        }
    }
}

impl StoreSettings {
    /// The shared store settings of `limit`, if it has a `store`.
    pub fn from_config(limit: &RateLimitConfig) -> Option<StoreSettings> {
        limit.store.as_ref().map(|url| StoreSettings {
            url: url.get_ref().clone(),
            timeout: limit.store_timeout.0,
            on_error: limit.on_store_error,
        })
    }
}

/// One named rate limit, ready for the request path.
pub struct Limiter {
    pub name: Box<str>,
    pub settings: Settings,
    store: Store,
    /// `RateLimit-Policy`, built once.
    policy: HeaderValue,
    /// `"NAME";r=`, the fixed start of every `RateLimit` value.
    prefix: Box<[u8]>,
    /// `weir_rate_limited_total{rate_limit=NAME}`.
    rate_limited: IntCounter,
    /// Buckets in Redis, shared with other instances; `store` then serves only as
    /// the fallback when Redis cannot answer.
    shared: Option<SharedStore>,
}

impl Limiter {
    /// `name` must be a valid rate limit name (validation allows only
    /// `[A-Za-z0-9_.-]`, so it can sit in a quoted header string).
    pub fn new(name: &str, settings: Settings, rate_limited: IntCounter) -> Limiter {
        let burst = settings.burst.max(1);
        let rate = Rate { per_second: settings.rate, burst: f64::from(burst) };
        let window = (f64::from(burst) / settings.rate).ceil().clamp(1.0, 1e12) as u64;
        let policy = HeaderValue::from_str(&format!("\"{name}\";q={burst};w={window}"))
            .unwrap_or(HeaderValue::from_static("\"default\""));
        Limiter {
            name: name.into(),
            store: Store::new(rate, settings.max_keys),
            settings,
            policy,
            prefix: format!("\"{name}\";r=").into_bytes().into(),
            rate_limited,
            shared: None,
        }
    }

    /// Keeps the buckets in Redis per `settings`; `errors` counts the checks
    /// decided without it. Connects lazily, on the first check.
    pub fn with_store(mut self, settings: StoreSettings, errors: IntCounter) -> Result<Limiter, StoreError> {
        let rate = Rate { per_second: self.settings.rate, burst: f64::from(self.settings.burst.max(1)) };
        self.shared = Some(SharedStore::new(&self.name, settings, rate, errors)?);
        Ok(self)
    }

    /// The shared store's settings, when the buckets are in Redis.
    pub fn store_settings(&self) -> Option<&StoreSettings> {
        self.shared.as_ref().map(|s| &s.settings)
    }

    /// Whether checks must go through `check_shared` (buckets in Redis).
    #[inline]
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// `check` for a limit whose buckets are in Redis: one round trip, bounded by
    /// `store_timeout`; when the store fails, the local bucket decides (or the
    /// request is refused with `on_store_error = "deny"`). Without a store it is
    /// `check`.
    pub async fn check_shared(
        &self,
        headers: &HeaderMap,
        client: impl FnOnce() -> IpAddr,
        now: Instant,
    ) -> Decision {
        let Some(shared) = &self.shared else { return self.check(headers, client, now) };
        let key = self.settings.key_of(headers, client);
        // Hashed in the store with the seed every instance shares, so they name the
        // same bucket and no client can work out (or aim at) another's.
        let (tag, bytes) = key.tagged();
        let decision = match shared.try_take(tag, bytes, &self.name).await {
            Ok(decision) => decision,
            Err(_) => {
                shared.errors.inc();
                // The fallback bucket is keyed like every local bucket.
                match shared.settings.on_error {
                    OnStoreError::Local => self.store.try_take(self.store.hash(key), now),
                    OnStoreError::Deny => Decision::Deny { retry_after: Duration::from_secs(1) },
                }
            }
        };
        if matches!(decision, Decision::Deny { .. }) {
            self.rate_limited.inc();
        }
        decision
    }

    /// Takes a token for this request's key. `client` is asked for the client's
    /// address only when the key is `client_ip`. Refusals are counted.
    pub fn check(&self, headers: &HeaderMap, client: impl FnOnce() -> IpAddr, now: Instant) -> Decision {
        let key = self.store.hash(self.settings.key_of(headers, client));
        let decision = self.store.try_take(key, now);
        if matches!(decision, Decision::Deny { .. }) {
            self.rate_limited.inc();
        }
        decision
    }

    /// Adds `RateLimit-Policy`, `RateLimit` and, on a refusal, `Retry-After`.
    pub fn write_headers(&self, decision: &Decision, headers: &mut HeaderMap) {
        let (remaining, seconds) = match *decision {
            Decision::Allow { remaining, reset } => (remaining, ceil_seconds(reset)),
            Decision::Deny { retry_after } => {
                let seconds = ceil_seconds(retry_after).max(1);
                headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
                (0, seconds)
            }
        };
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        let mut buf = StackBuf::default();
        buf.push(&self.prefix);
        buf.push(itoa::Buffer::new().format(remaining).as_bytes());
        buf.push(b";t=");
        buf.push(itoa::Buffer::new().format(seconds).as_bytes());
        if let Ok(value) = HeaderValue::from_bytes(buf.as_bytes()) {
            headers.insert(RATELIMIT.clone(), value);
        }
    }

    /// Keys with a bucket right now.
    pub fn keys(&self) -> usize {
        self.store.len()
    }
}

/// Whole seconds, rounded up: a client that waits this long finds its token there.
fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A `RateLimit` value, built without touching the heap. 128 bytes hold the longest
/// name validation allows plus two 20-digit numbers; anything past that is dropped,
/// and the value is then refused by `HeaderValue` rather than sent cut short.
struct StackBuf {
    bytes: [u8; 128],
    len: usize,
    overflow: bool,
}

impl Default for StackBuf {
    fn default() -> StackBuf {
        StackBuf { bytes: [0; 128], len: 0, overflow: false }
    }
}

impl StackBuf {
    fn push(&mut self, data: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + data.len()) {
            Some(out) => {
                out.copy_from_slice(data);
                self.len += data.len();
            }
            None => self.overflow = true,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        // A newline is not a valid header value byte: an overflowed buffer fails.
        if self.overflow {
            b"\n"
        } else {
            &self.bytes[..self.len]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn limiter(key: RateLimitKey, rate: f64, burst: u32) -> Limiter {
        let counter = IntCounter::with_opts(Opts::new("t", "t")).unwrap();
        Limiter::new("per_client", Settings::new(key, rate, burst, 1000), counter)
    }

    #[test]
    fn settings_take_the_configured_prefixes() {
        let text = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"api\"\n\
                    rate_limit = \"per_client\"\n[upstreams.api]\nservers = [{ address = \"127.0.0.1:9000\" }]\n\
                    [rate_limits.per_client]\nkey = \"client_ip\"\nrate = 1\nburst = 2\nipv4_prefix = 24\nipv6_prefix = 48\n";
        let config =
            crate::config::parse(text, std::path::Path::new("w.toml")).unwrap_or_else(|e| panic!("{e}"));
        let settings = Settings::from_config(&config.rate_limits["per_client"]);
        assert_eq!((settings.ipv4_prefix, settings.ipv6_prefix), (24, 48));
    }

    #[test]
    fn client_ip_keys_cover_the_prefix() {
        let mut settings = Settings::new(RateLimitKey::ClientIp, 1.0, 1, 1000);
        let h = HeaderMap::new();
        let key = |s: &Settings, ip: &str| s.key_of(&h, || ip.parse().unwrap());
        assert_eq!(key(&settings, "2001:db8:1:2::1"), key(&settings, "2001:db8:1:2:ffff::9"));
        assert_ne!(key(&settings, "2001:db8:1:2::1"), key(&settings, "2001:db8:1:3::1"));
        assert_ne!(key(&settings, "192.0.2.1"), key(&settings, "192.0.2.2"));
        // A mapped IPv4 address is the IPv4 client.
        assert_eq!(key(&settings, "::ffff:192.0.2.1"), key(&settings, "192.0.2.1"));
        settings.ipv4_prefix = 24;
        settings.ipv6_prefix = 128;
        assert_eq!(key(&settings, "192.0.2.1"), key(&settings, "192.0.2.200"));
        assert_ne!(key(&settings, "192.0.2.1"), key(&settings, "192.0.3.1"));
        assert_ne!(key(&settings, "2001:db8:1:2::1"), key(&settings, "2001:db8:1:2::2"));
        settings.ipv4_prefix = 0;
        settings.ipv6_prefix = 0;
        assert_eq!(key(&settings, "192.0.2.1"), key(&settings, "203.0.113.9"));
        assert_eq!(key(&settings, "2001:db8::1"), key(&settings, "fe80::1"));
        assert_ne!(key(&settings, "0.0.0.0"), key(&settings, "::"));
    }

    fn local() -> IpAddr {
        IpAddr::from([192, 0, 2, 1])
    }

    #[test]
    fn client_ip_keys_are_separate_per_address() {
        let l = limiter(RateLimitKey::ClientIp, 1.0, 1);
        let now = Instant::now();
        assert!(matches!(l.check(&HeaderMap::new(), local, now), Decision::Allow { .. }));
        assert!(matches!(l.check(&HeaderMap::new(), local, now), Decision::Deny { .. }));
        let other = || IpAddr::from([192, 0, 2, 2]);
        assert!(matches!(l.check(&HeaderMap::new(), other, now), Decision::Allow { .. }));
        assert_eq!(l.rate_limited.get(), 1);
    }

    #[test]
    fn header_keys_split_by_value_and_missing_headers_share_a_bucket() {
        let l = limiter(RateLimitKey::Header(HeaderName::from_static("x-api-key")), 1.0, 1);
        let now = Instant::now();
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", HeaderValue::from_static(v));
            h
        };
        assert!(matches!(l.check(&with("a"), local, now), Decision::Allow { .. }));
        assert!(matches!(l.check(&with("a"), local, now), Decision::Deny { .. }));
        assert!(matches!(l.check(&with("b"), local, now), Decision::Allow { .. }));
        assert!(matches!(l.check(&with(""), local, now), Decision::Allow { .. }));
        assert!(matches!(l.check(&HeaderMap::new(), local, now), Decision::Allow { .. }));
        let elsewhere = || IpAddr::from([198, 51, 100, 1]);
        assert!(matches!(l.check(&HeaderMap::new(), elsewhere, now), Decision::Deny { .. }));
    }

    #[test]
    fn global_is_one_bucket() {
        let l = limiter(RateLimitKey::Global, 1.0, 2);
        let now = Instant::now();
        assert!(matches!(l.check(&HeaderMap::new(), local, now), Decision::Allow { .. }));
        let other = || IpAddr::from([192, 0, 2, 2]);
        assert!(matches!(l.check(&HeaderMap::new(), other, now), Decision::Allow { .. }));
        assert!(matches!(l.check(&HeaderMap::new(), local, now), Decision::Deny { .. }));
        assert_eq!(l.keys(), 1);
    }

    #[test]
    fn headers_follow_the_ietf_draft() {
        let l = limiter(RateLimitKey::Global, 2.0, 10);
        let mut h = HeaderMap::new();
        l.write_headers(&Decision::Allow { remaining: 9, reset: Duration::from_millis(500) }, &mut h);
        assert_eq!(h[&RATELIMIT_POLICY], "\"per_client\";q=10;w=5");
        assert_eq!(h[&RATELIMIT], "\"per_client\";r=9;t=1");
        assert!(!h.contains_key(RETRY_AFTER));

        let mut h = HeaderMap::new();
        l.write_headers(&Decision::Deny { retry_after: Duration::from_millis(2100) }, &mut h);
        assert_eq!(h[RETRY_AFTER], "3");
        assert_eq!(h[&RATELIMIT], "\"per_client\";r=0;t=3");
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let l = limiter(RateLimitKey::Global, 1000.0, 1);
        let mut h = HeaderMap::new();
        l.write_headers(&Decision::Deny { retry_after: Duration::from_millis(1) }, &mut h);
        assert_eq!(h[RETRY_AFTER], "1");
        // A fast rate's window still rounds up to one second.
        assert_eq!(h[&RATELIMIT_POLICY], "\"per_client\";q=1;w=1");
    }

    #[test]
    fn a_long_value_is_dropped_not_cut() {
        let mut buf = StackBuf::default();
        buf.push(&[b'a'; 100]);
        buf.push(&[b'b'; 100]);
        assert!(HeaderValue::from_bytes(buf.as_bytes()).is_err());
    }
}
