//! The TOML schema, as serde reads it. Nothing here is seen by the request path:
//! `runtime::Runtime::build` turns a validated `Config` into ready runtime types.
//!
//! Every struct denies unknown keys, so a typo is an error with a line number, not a
//! silently ignored setting. Fields that later validation must point back at are
//! `Spanned`, so a "no such upstream" error can name the line of the reference.
//! `[upstreams.NAME]` lives in `upstream.rs`, request shaping in `shaping.rs`, and the
//! value types with units (durations, sizes, CIDRs) in `units.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

use super::shaping::{HeaderRulesConfig, RedirectConfig, RespondConfig};
use super::units::{ByteSize, Cidr, Dur, MethodName, Percent};
use super::upstream::UpstreamConfig;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder of the config file: relative paths (certificates) resolve from it.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
    /// The file and text this config was read from, for errors found after parsing.
    #[serde(skip)]
    pub origin: super::Origin,
    /// Worker threads; 0 means one per CPU core.
    #[serde(default)]
    pub workers: usize,
    /// Reload when the config file changes (checked every second), as well as on SIGHUP.
    #[serde(default)]
    pub watch: bool,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    #[serde(default = "defaults::shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[rate_limits.NAME]`: token buckets that routes name with `rate_limit`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Peers whose `X-Forwarded-For` is believed when finding the client's address
    /// (CIDRs or single addresses). Empty: the TCP peer is always the client.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// `[access_log]`: one line per request; off unless enabled.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Response caches routes may name with `cache = "NAME"`.
    #[serde(default)]
    pub caches: BTreeMap<String, CacheConfig>,
    /// DNS server (`ip:port`) for upstreams with `resolve`; absent: the system's
    /// resolv.conf.
    #[serde(default)]
    pub resolver: Option<Spanned<String>>,
}

/// `[access_log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Off by default, as in HAProxy, Envoy, Traefik and Caddy: stderr also carries
    /// weir's own log, and metrics already count every request.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub format: AccessLogFormat,
    /// File to append to; absent means stderr.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
}

/// How an access log line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Space-separated fields, `-` for none.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: Spanned<String>,
    /// Time an admin client has to send a request's headers, including the wait for
    /// its next request on a kept-alive connection; a slower one is closed.
    #[serde(default = "defaults::admin_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Names the admin listener answers to in `Host`, besides its own address (and
    /// `localhost` on loopback): `name` (any port) or `name:port`. Others get `421`,
    /// so a web page cannot reach it through DNS rebinding.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// File holding the bearer token that purges (and any other change made through
    /// the admin listener) must send; required for them on a non-loopback `listen`.
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
    /// The token read from `token_file` when the config was loaded.
    #[serde(skip)]
    pub token: Option<AdminToken>,
}

/// The admin bearer token, held as its SHA-256 digest: compared in constant time and
/// never printed (`Config` is `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &[u8]) -> AdminToken {
        AdminToken(Self::digest(token))
    }

    fn digest(bytes: &[u8]) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        out
    }

    /// Whether `offered` is the token. Digests of equal length are compared without
    /// an early exit, so the time taken says nothing about how much of it matched
    /// (nor, through the digest, about its length).
    pub fn matches(&self, offered: &[u8]) -> bool {
        let offered = Self::digest(offered);
        let differ = self.0.iter().zip(offered).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(differ) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name for routes, metrics and logs; also how a reload tells listeners apart.
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    /// Time a client has to send a request's headers (also the keep-alive idle limit
    /// between requests).
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Largest request head (request line plus headers); larger gets `431`.
    #[serde(default = "defaults::max_header_size")]
    pub max_header_size: Spanned<usize>,
    /// TLS termination; absent means plain HTTP (HTTP/1.1 and h2c).
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// HTTP/2: most concurrent streams per client connection.
    #[serde(default = "defaults::h2_max_concurrent_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Open client connections at most; further ones wait in the accept backlog.
    #[serde(default)]
    pub max_connections: Option<Spanned<usize>>,
    /// Longest a client may pause while sending a request body; longer cuts the
    /// request (the upstream sees it aborted, never completed).
    #[serde(default = "defaults::body_read_timeout")]
    pub body_read_timeout: Dur,
    /// Longest a write to the client may wait for the client to take bytes: one that
    /// stops reading is cut off (nginx's `send_timeout`).
    #[serde(default = "defaults::send_timeout")]
    pub send_timeout: Dur,
    /// Set SO_REUSEPORT, so several weir processes can listen on one port and the
    /// kernel spreads connections among them.
    #[serde(default)]
    pub reuse_port: bool,
    /// Hand a new connection to weir only once its first bytes arrive
    /// (`TCP_DEFER_ACCEPT` on Linux; nginx's `deferred`, HAProxy's `defer-accept`).
    #[serde(default = "defaults::yes")]
    pub defer_accept: bool,
    /// A client connection with no request in progress for this long is closed
    /// (HTTP/1.1 keep-alive and HTTP/2 alike).
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Dur,
    /// Forward request header names that contain `_`; by default they are dropped
    /// (nginx's `underscores_in_headers`).
    #[serde(default)]
    pub underscores_in_headers: bool,
}

/// `[listeners.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// PEM certificate chains and keys. SNI picks by the names in each certificate;
    /// the first is the default for clients that send no (or an unknown) name.
    pub certificates: Spanned<Vec<CertificateConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// Certificate chain file (PEM), relative to the config file's folder.
    pub cert: Spanned<String>,
    /// Private key file (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact host, `*.suffix` wildcard, or absent for any host.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    /// Where to forward; a route has exactly one of `upstream`, `redirect`, `respond`.
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Option<Vec<Spanned<MethodName>>>,
    /// Listener names this route serves; absent means every listener.
    #[serde(default)]
    pub listeners: Option<Vec<Spanned<String>>>,
    /// Name of a `[rate_limits.NAME]` checked before forwarding.
    #[serde(default)]
    pub rate_limit: Option<Spanned<String>>,
    /// Name of a `[caches.NAME]` that stores this route's GET/HEAD responses.
    #[serde(default)]
    pub cache: Option<Spanned<String>>,
    /// The route's name in metrics (`weir_access_denied_total{route}`); default: its
    /// upstream's name.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Header rules applied before forwarding.
    #[serde(default)]
    pub request_headers: Option<HeaderRulesConfig>,
    /// Header rules applied before answering.
    #[serde(default)]
    pub response_headers: Option<HeaderRulesConfig>,
    /// Keep (from a trusted proxy) or generate `X-Request-Id`, send it upstream,
    /// return it and log it.
    #[serde(default)]
    pub request_id: bool,
    /// Remove `path_prefix` from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace `path_prefix` with this before forwarding.
    #[serde(default)]
    pub rewrite: Option<Spanned<String>>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    /// Client ranges allowed; absent or empty: everyone not denied.
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// Client ranges refused with `403`; deny wins over allow.
    #[serde(default)]
    pub deny: Vec<Cidr>,
    /// Largest request body; larger gets `413`.
    #[serde(default)]
    pub max_request_body: Option<Spanned<ByteSize>>,
    /// Overrides the upstream's `request_timeout` for this route.
    #[serde(default)]
    pub request_timeout: Option<Dur>,
    /// `Upgrade` protocols tunnelled to the upstream (default `["websocket"]`); a
    /// request offering any other goes on as a plain request, its `Upgrade` removed.
    #[serde(default)]
    pub upgrades: Option<Vec<Spanned<String>>>,
}

/// `[caches.NAME]`: an RFC 9111 shared response cache held in memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory the cache may hold: bodies, headers and keys, e.g. `"256MiB"`.
    #[serde(default = "defaults::cache_max_size")]
    pub max_size: Spanned<ByteSize>,
    /// Larger responses pass through uncached. Default: 8MiB, or `max_size` if
    /// smaller.
    #[serde(default)]
    pub max_object_size: Option<Spanned<ByteSize>>,
    /// Freshness for responses that carry none (no max-age, s-maxage or Expires)
    /// and are cacheable by default (200, 301, ...). Absent: such responses are not
    /// stored.
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    /// Shortens each entry's lifetime by a random share up to this, e.g. `"10%"`, so
    /// entries stored together do not expire together.
    #[serde(default)]
    pub ttl_jitter: Option<Spanned<Percent>>,
    /// How long past expiry a stale entry is served while one background request
    /// refreshes it (a response's own `stale-while-revalidate=N` wins).
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    /// How long past expiry a stale entry is served when the upstream fails or
    /// answers 5xx (a response's own `stale-if-error=N` wins).
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// Freshness for 404 and 410 responses that carry none.
    #[serde(default)]
    pub negative_ttl: Option<Dur>,
    /// Longest wait for another request already fetching the same key before going
    /// upstream anyway.
    #[serde(default = "defaults::cache_lock_timeout")]
    pub lock_timeout: Dur,
    /// Let a client's `no-cache`, `max-age` or `Pragma: no-cache` bypass and replace
    /// a stored entry. Off: any client could replace any entry at will.
    #[serde(default)]
    pub honor_client_no_cache: bool,
    /// Remove `X-Original-URL`, `X-Rewrite-URL` and `X-HTTP-Method-Override` from
    /// requests on the cache's routes.
    #[serde(default = "defaults::yes")]
    pub strip_override_headers: bool,
}

/// One `[rate_limits.NAME]`: a token bucket per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// What a bucket belongs to: `client_ip`, `header:NAME` or `global`.
    pub key: RateLimitKey,
    /// Tokens added per second; may be fractional (`0.5` = one every two seconds).
    pub rate: Spanned<f64>,
    /// Bucket size: requests a rested key may send at once.
    pub burst: Spanned<u32>,
    /// Keys remembered at most; least recently used keys are forgotten past it.
    #[serde(default = "defaults::max_keys")]
    pub max_keys: Spanned<usize>,
    /// `redis://host:port/db`: keep the buckets in Redis, shared by every weir
    /// instance using it. Absent: buckets live in this process.
    #[serde(default)]
    pub store: Option<Spanned<String>>,
    /// Longest wait for the store's answer before `on_store_error` decides.
    #[serde(default = "defaults::store_timeout")]
    pub store_timeout: Dur,
    /// When the store fails or is slow: `local` (default) decides with this
    /// instance's own bucket, `deny` refuses the request.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// With `key = "client_ip"`: IPv4 clients in one block of this prefix length
    /// (0 to 32, default 32) share a bucket.
    #[serde(default)]
    pub ipv4_prefix: Option<Spanned<u32>>,
    /// With `key = "client_ip"`: IPv6 clients in one block of this prefix length
    /// (0 to 128, default 64: one subscriber usually holds a whole /64) share a bucket.
    #[serde(default)]
    pub ipv6_prefix: Option<Spanned<u32>>,
}

/// What a rate limit with a `store` does when the store cannot answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Fail open: decide with the local bucket (each instance then admits up to the
    /// full rate on its own).
    #[default]
    Local,
    /// Fail closed: refuse.
    Deny,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's address (see `trusted_proxies`).
    ClientIp,
    /// The value of a request header; requests without it share one bucket.
    Header(http::HeaderName),
    /// One bucket for every request of the route.
    Global,
}

impl RateLimitKey {
    pub fn parse(text: &str) -> Result<RateLimitKey, String> {
        match text {
            "client_ip" => Ok(RateLimitKey::ClientIp),
            "global" => Ok(RateLimitKey::Global),
            _ => match text.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.as_bytes())
                    .map(RateLimitKey::Header)
                    .map_err(|_| format!("`{name}` is not a header name")),
                None => Err(format!("unknown key `{text}`: use client_ip, header:NAME or global")),
            },
        }
    }
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        RateLimitKey::parse(&text).map_err(de::Error::custom)
    }
}

impl CacheConfig {
    /// The object limit in effect: as written, else 8MiB or `max_size` if smaller.
    pub fn max_object_size(&self) -> u64 {
        self.max_object_size.as_ref().map_or((8 << 20).min(self.max_size.get_ref().0), |s| s.get_ref().0)
    }
}

mod defaults {
    use super::*;

    pub fn cache_max_size() -> Spanned<ByteSize> {
        Spanned::new(0..0, ByteSize(256 << 20))
    }
    pub fn cache_lock_timeout() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn yes() -> bool {
        true
    }
    pub fn shutdown_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn header_read_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn idle_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn max_header_size() -> Spanned<usize> {
        Spanned::new(0..0, 32 * 1024)
    }
    pub fn body_read_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn admin_header_read_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn send_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn h2_max_concurrent_streams() -> u32 {
        128
    }
    pub fn max_keys() -> Spanned<usize> {
        Spanned::new(0..0, 100_000)
    }
    pub fn store_timeout() -> Dur {
        Dur(Duration::from_millis(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_keys_parse() {
        assert_eq!(RateLimitKey::parse("client_ip"), Ok(RateLimitKey::ClientIp));
        assert_eq!(RateLimitKey::parse("global"), Ok(RateLimitKey::Global));
        assert_eq!(
            RateLimitKey::parse("header:X-Api-Key"),
            Ok(RateLimitKey::Header(http::HeaderName::from_static("x-api-key")))
        );
        assert!(RateLimitKey::parse("header:bad name").unwrap_err().contains("not a header name"));
        assert!(RateLimitKey::parse("cookie:a").unwrap_err().contains("unknown key"));
    }
}
