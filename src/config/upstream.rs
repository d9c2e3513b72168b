//! `[upstreams.NAME]`: servers, balancer, connection, health and retry settings.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

use super::shaping::StickyConfig;
use super::units::{Dur, HeaderText, StatusSet, UriPath};

/// The protocol weir speaks to an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[serde(rename = "http1")]
    Http1,
    H2,
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

impl BalancerKind {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            BalancerKind::RoundRobin => "round_robin",
            BalancerKind::LeastConnections => "least_connections",
            BalancerKind::ConsistentHash => "consistent_hash",
            BalancerKind::Random => "random",
            BalancerKind::PowerOfTwo => "power_of_two",
            BalancerKind::PeakEwma => "peak_ewma",
        }
    }
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
    /// Longest pause while a server sends a response body; past it the response is
    /// cut (nginx's `proxy_read_timeout`, after the headers).
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: Dur,
    /// Idle keep-alive connections kept per server.
    #[serde(default = "defaults::keepalive")]
    pub keepalive: usize,
    /// An idle pooled connection unused this long is closed.
    #[serde(default = "defaults::keepalive_timeout")]
    pub keepalive_timeout: Dur,
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
    /// Response statuses (`"502-504"`, `"503,429"`) on which an idempotent request
    /// without a body is tried again on another server, as nginx's
    /// `proxy_next_upstream http_503`. Absent: only failed connections are retried.
    #[serde(default)]
    pub retry_on: Option<Spanned<StatusSet>>,
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
    /// A `weir_upstream_request_duration_seconds` histogram per server (18 series
    /// each) instead of one for the upstream.
    #[serde(default)]
    pub server_histograms: bool,
}

/// `[upstreams.NAME.health_check]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "defaults::health_path")]
    pub path: Spanned<UriPath>,
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
    pub expected_status: Spanned<StatusSet>,
    /// `Host` header sent with checks; default: the server's address.
    #[serde(default)]
    pub host: Option<HeaderText>,
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

mod defaults {
    use super::*;
    use std::time::Duration;

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
    pub fn read_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn keepalive_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn retry_budget() -> Spanned<f64> {
        Spanned::new(0..0, 0.2)
    }
    pub fn health_path() -> Spanned<UriPath> {
        Spanned::new(0..0, UriPath(http::uri::PathAndQuery::from_static("/")))
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
    pub fn expected_status() -> Spanned<StatusSet> {
        Spanned::new(0..0, StatusSet::range(200, 399).expect("200-399 is a status range"))
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
