//! The TOML schema, as serde reads it. Nothing here is seen by the request path:
//! `runtime::Runtime::build` turns a validated `Config` into ready runtime types.
//!
//! Every struct denies unknown keys, so a typo is an error with a line number, not a
//! silently ignored setting. Fields that later validation must point back at are
//! `Spanned`, so a "no such upstream" error can name the line of the reference.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::shaping::{HeaderRulesConfig, RedirectConfig, RespondConfig, StickyConfig};

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder of the config file: relative paths (certificates) resolve from it.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
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
    /// Set SO_REUSEPORT, so several weir processes can listen on one port and the
    /// kernel spreads connections among them.
    #[serde(default)]
    pub reuse_port: bool,
    /// A client connection with no request in progress for this long is closed
    /// (HTTP/1.1 keep-alive and HTTP/2 alike).
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Dur,
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

/// The protocol weir speaks to an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[serde(rename = "http1")]
    Http1,
    H2,
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
    pub methods: Option<Vec<Spanned<String>>>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// nginx's smooth weighted round-robin.
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
    /// A Ketama ring over `hash_key`.
    ConsistentHash,
    /// Weighted random.
    Random,
    /// Two weighted-random picks; the less loaded one wins.
    PowerOfTwo,
    /// Power of two choices on peak-EWMA latency x (in-flight + 1), as linkerd2-proxy.
    PeakEwma,
}

/// What `consistent_hash` hashes, written `client_ip`, `header:NAME`, `cookie:NAME`,
/// `path` or `query:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKeySpec {
    ClientIp,
    /// A header name, lowercased and checked to be a valid name.
    Header(String),
    Cookie(String),
    Path,
    Query(String),
}

impl HashKeySpec {
    pub fn parse(text: &str) -> Result<HashKeySpec, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty() {
                Err(format!("`{text}` names no {kind}: write e.g. \"{kind}:session\""))
            } else {
                Ok(name.to_string())
            }
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(HashKeySpec::ClientIp),
            None if text == "path" => Ok(HashKeySpec::Path),
            Some(("header", name)) => {
                let name = named("header", name)?.to_ascii_lowercase();
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a valid header name"))?;
                Ok(HashKeySpec::Header(name))
            }
            Some(("cookie", name)) => named("cookie", name).map(HashKeySpec::Cookie),
            Some(("query", name)) => named("query", name).map(HashKeySpec::Query),
            _ => Err(format!(
                "`{text}` is not a hash key: use client_ip, header:NAME, cookie:NAME, path or query:NAME"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for HashKeySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HashKeySpec::parse(&text).map_err(de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "defaults::balancer")]
    pub balancer: Spanned<BalancerKind>,
    /// What `consistent_hash` hashes; required with it, refused with any other balancer.
    #[serde(default)]
    pub hash_key: Option<Spanned<HashKeySpec>>,
    /// `consistent_hash` bounded-load factor (> 1.0): a server above this many times
    /// the average in-flight load passes the key on along the ring. Absent: no bound.
    #[serde(default)]
    pub hash_balance_factor: Option<Spanned<f64>>,
    /// Longest wait for a TCP connection; a slower server counts as refused.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest wait for the response headers once the request is sent.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: Dur,
    /// Idle keep-alive connections kept per server.
    #[serde(default = "defaults::keepalive")]
    pub keepalive: usize,
    /// `http1` (default) or `h2` (one multiplexed connection per server; gRPC).
    #[serde(default = "defaults::protocol")]
    pub protocol: UpstreamProtocol,
    /// Speak TLS to the servers.
    #[serde(default)]
    pub tls: bool,
    /// Name sent in SNI and checked against the server's certificate; default: the
    /// host part of each server's address.
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
    /// PEM file of CA certificates to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    pub servers: Spanned<Vec<ServerConfig>>,
    /// Active HTTP checks; absent means none.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Ejection on failures seen in live traffic.
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    /// A server that joins or comes back ramps its share of traffic up over this long.
    #[serde(default)]
    pub slow_start: Option<Dur>,
    /// Below this share of healthy primaries, health is ignored (Envoy's panic
    /// threshold). Absent: off, an all-down upstream answers 503.
    #[serde(default)]
    pub min_healthy_percent: Option<Spanned<u8>>,
    /// Retries are at most this share of requests (plus a small floor), so a dead
    /// pool does not multiply the load on what is left.
    #[serde(default = "defaults::retry_budget")]
    pub retry_budget: Spanned<f64>,
    /// Requests in flight to this upstream at most; more wait in a queue.
    #[serde(default)]
    pub max_in_flight: Option<Spanned<usize>>,
    /// Requests that may wait for `max_in_flight`; a full queue answers `503` at once.
    /// Default 256. Only with `max_in_flight`.
    #[serde(default)]
    pub queue_size: Option<Spanned<usize>>,
    /// Longest wait in the queue before `503`. Default 2s. Only with `max_in_flight`.
    #[serde(default)]
    pub queue_timeout: Option<Dur>,
    /// Re-resolve servers whose address is a host name this often; each address in
    /// the answer becomes a server. Absent: names are resolved once, at (re)load.
    #[serde(default)]
    pub resolve: Option<Dur>,
    /// Sticky sessions: a signed cookie names the server a client keeps going to.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
}

/// `[upstreams.NAME.health_check]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "defaults::health_path")]
    pub path: Spanned<String>,
    #[serde(default = "defaults::health_interval")]
    pub interval: Dur,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Dur,
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: Spanned<u32>,
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: Spanned<u32>,
    /// Statuses that pass: `"200-399"`, `"200"`, `"200,204"`.
    #[serde(default = "defaults::expected_status")]
    pub expected_status: Spanned<String>,
    /// `Host` header sent with checks; default: the server's address.
    #[serde(default)]
    pub host: Option<String>,
}

/// `[upstreams.NAME.passive_health]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    /// Connection failures or timeouts in a row that eject a server; 0 turns passive
    /// detection off.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// Count 5xx responses as failures too.
    #[serde(default)]
    pub count_5xx: bool,
    /// First ejection's length when there is no active check; doubles on each repeat.
    #[serde(default = "defaults::ejection_time")]
    pub ejection_time: Dur,
    #[serde(default = "defaults::max_ejection_time")]
    pub max_ejection_time: Dur,
    /// Passive detection ejects at most this share of the primaries at once (but
    /// always at least one), as Envoy's outlier detection does, so a wave of errors
    /// cannot empty the pool. Active checks are not limited by it.
    #[serde(default = "defaults::max_ejection_percent")]
    pub max_ejection_percent: Spanned<u8>,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            consecutive_failures: defaults::consecutive_failures(),
            count_5xx: false,
            ejection_time: defaults::ejection_time(),
            max_ejection_time: defaults::max_ejection_time(),
            max_ejection_percent: defaults::max_ejection_percent(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub address: Spanned<String>,
    #[serde(default = "defaults::weight")]
    pub weight: Spanned<u32>,
    #[serde(default)]
    pub backup: bool,
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

/// An address range in CIDR form (`10.0.0.0/8`); a bare address means just itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(|net| Cidr(net.trunc()))
            .map_err(|_| format!("`{text}` is not an address range, e.g. \"10.0.0.0/8\" or \"192.0.2.1\""))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(de::Error::custom)
    }
}

/// A duration written with a unit: `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `"<number><unit>"`; the unit is one of `ms`, `s`, `m`, `h`.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!("duration `{text}` has no unit: write e.g. \"{text}s\" or \"{text}ms\""))
            }
            _ => return Err(format!("duration `{text}` has an unknown unit `{unit}`: use ms, s, m or h")),
        };
        let value: f64 = number.parse().map_err(|_| {
            format!("duration `{text}` is not a number with a unit, e.g. \"250ms\" or \"2s\"")
        })?;
        let secs = value * scale;
        if !secs.is_finite() || secs > 365.0 * 86400.0 {
            return Err(format!("duration `{text}` is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string with a unit, e.g. \"250ms\" or \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurVisitor)
    }
}

impl CacheConfig {
    /// The object limit in effect: as written, else 8MiB or `max_size` if smaller.
    pub fn max_object_size(&self) -> u64 {
        self.max_object_size.as_ref().map_or((8 << 20).min(self.max_size.get_ref().0), |s| s.get_ref().0)
    }
}

/// A size in bytes, written with a unit: `"512B"`, `"64KiB"`, `"256MiB"`, `"1GB"`.
/// A bare TOML integer is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"<number><unit>"`; the unit is `B`, `KB`/`KiB`, `MB`/`MiB` or `GB`/`GiB`
    /// (decimal and binary, case-insensitive).
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1 << 10,
            "mb" => 1000 * 1000,
            "mib" | "m" => 1 << 20,
            "gb" => 1000 * 1000 * 1000,
            "gib" | "g" => 1 << 30,
            "" => return Err(format!("size `{text}` has no unit: write e.g. \"{text}MiB\" or \"{text}B\"")),
            _ => {
                return Err(format!(
                    "size `{text}` has an unknown unit `{unit}`: use B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("size `{text}` is not a number with a unit, e.g. \"256MiB\""))?;
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes >= (1u64 << 50) as f64 {
            return Err(format!("size `{text}` is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size with a unit, e.g. \"256MiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A share written as a percentage, `"10%"`; held as a fraction (0.1).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl Percent {
    pub fn parse(text: &str) -> Result<Percent, String> {
        let bad = || format!("`{text}` is not a percentage from 0% to 100%, e.g. \"10%\"");
        let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
        let value: f64 = number.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&value) {
            return Err(bad());
        }
        Ok(Percent(value / 100.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Percent::parse(&text).map_err(de::Error::custom)
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
    pub fn h2_max_concurrent_streams() -> u32 {
        128
    }
    pub fn protocol() -> UpstreamProtocol {
        UpstreamProtocol::Http1
    }
    pub fn balancer() -> Spanned<BalancerKind> {
        Spanned::new(0..0, BalancerKind::RoundRobin)
    }
    pub fn connect_timeout() -> Dur {
        Dur(Duration::from_secs(2))
    }
    pub fn request_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn keepalive() -> usize {
        64
    }
    pub fn retry_budget() -> Spanned<f64> {
        Spanned::new(0..0, 0.2)
    }
    pub fn health_path() -> Spanned<String> {
        Spanned::new(0..0, "/".into())
    }
    pub fn health_interval() -> Dur {
        Dur(Duration::from_secs(2))
    }
    pub fn health_timeout() -> Dur {
        Dur(Duration::from_secs(1))
    }
    pub fn healthy_threshold() -> Spanned<u32> {
        Spanned::new(0..0, 2)
    }
    pub fn unhealthy_threshold() -> Spanned<u32> {
        Spanned::new(0..0, 3)
    }
    pub fn expected_status() -> Spanned<String> {
        Spanned::new(0..0, "200-399".into())
    }
    pub fn max_ejection_percent() -> Spanned<u8> {
        Spanned::new(0..0, 50)
    }
    pub fn consecutive_failures() -> u32 {
        3
    }
    pub fn ejection_time() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn max_ejection_time() -> Dur {
        Dur(Duration::from_secs(300))
    }
    pub fn weight() -> Spanned<u32> {
        Spanned::new(0..0, 1)
    }
    pub fn max_keys() -> Spanned<usize> {
        Spanned::new(0..0, 100_000)
    }
    pub fn store_timeout() -> Dur {
        Dur(Duration::from_millis(50))
    }
}

/// Parses an `expected_status` list: `"200-399"`, `"200"`, `"200,204,300-399"`.
pub fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad = || format!("`{text}` is not a status list like \"200-399\" or \"200,204\"");
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        ranges.push((lo, hi));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_lists_parse() {
        assert_eq!(parse_status_ranges("200-399").unwrap(), vec![(200, 399)]);
        assert_eq!(
            parse_status_ranges("200, 204,300-302").unwrap(),
            vec![(200, 200), (204, 204), (300, 302)]
        );
        assert!(parse_status_ranges("2xx").is_err());
        assert!(parse_status_ranges("399-200").is_err());
        assert!(parse_status_ranges("").is_err());
    }

    use super::*;

    #[test]
    fn durations_take_each_unit() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("2s").unwrap().0, Duration::from_secs(2));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("1m").unwrap().0, Duration::from_secs(60));
        assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
    }

    #[test]
    fn hash_keys_parse_each_form() {
        assert_eq!(HashKeySpec::parse("client_ip"), Ok(HashKeySpec::ClientIp));
        assert_eq!(HashKeySpec::parse("path"), Ok(HashKeySpec::Path));
        assert_eq!(HashKeySpec::parse("header:X-User"), Ok(HashKeySpec::Header("x-user".into())));
        assert_eq!(HashKeySpec::parse("cookie:sid"), Ok(HashKeySpec::Cookie("sid".into())));
        assert_eq!(HashKeySpec::parse("query:id"), Ok(HashKeySpec::Query("id".into())));
        assert!(HashKeySpec::parse("header:").unwrap_err().contains("names no header"));
        assert!(HashKeySpec::parse("header:a b").unwrap_err().contains("not a valid header name"));
        assert!(HashKeySpec::parse("ip").unwrap_err().contains("not a hash key"));
    }

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

    #[test]
    fn cidrs_take_ranges_and_bare_addresses() {
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().0.to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("192.0.2.1").unwrap().0.to_string(), "192.0.2.1/32");
        assert_eq!(Cidr::parse("::1").unwrap().0.to_string(), "::1/128");
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("proxy.local").is_err());
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(ByteSize::parse("256MiB").unwrap().0, 256 << 20);
        assert_eq!(ByteSize::parse("8mib").unwrap().0, 8 << 20);
        assert_eq!(ByteSize::parse("64KiB").unwrap().0, 64 << 10);
        assert_eq!(ByteSize::parse("1GB").unwrap().0, 1_000_000_000);
        assert_eq!(ByteSize::parse("1.5KiB").unwrap().0, 1536);
        assert_eq!(ByteSize::parse("100B").unwrap().0, 100);
        assert!(ByteSize::parse("100").unwrap_err().contains("no unit"));
        assert!(ByteSize::parse("1TiB").unwrap_err().contains("unknown unit"));
        assert!(ByteSize::parse("MiB").is_err());
    }

    #[test]
    fn percentages_become_fractions() {
        assert_eq!(Percent::parse("10%").unwrap().0, 0.1);
        assert_eq!(Percent::parse("0%").unwrap().0, 0.0);
        assert!(Percent::parse("10").is_err());
        assert!(Percent::parse("150%").is_err());
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        assert!(Dur::parse("2").unwrap_err().contains("no unit"));
        assert!(Dur::parse("2d").unwrap_err().contains("unknown unit"));
        assert!(Dur::parse("xs").is_err());
        assert!(Dur::parse("").is_err());
    }
}
