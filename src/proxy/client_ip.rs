//! Who the client is: the TCP peer, or, when the peer is a trusted proxy, the address
//! that proxy says it got the request from.
//!
//! The rule (as nginx's `real_ip_recursive` and Envoy's `xff_num_trusted_hops` apply
//! it): if the peer is in `trusted_proxies`, walk `X-Forwarded-For` from the right,
//! skipping addresses that are themselves trusted proxies; the first untrusted one is
//! the client. Entries to the left of it were written by the client and prove
//! nothing. Without `trusted_proxies` the header is never read, so a client cannot
//! choose its own identity by sending it.
//!
//! Rate limits, access lists (`allow`/`deny`), the `{client_ip}` header variable and
//! `consistent_hash` on `client_ip` read it. Request ids use only `TrustedProxies`:
//! an incoming `X-Request-Id` is kept when the peer is a trusted proxy.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName};

use crate::config::Cidr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address ranges whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Box<[ipnet::IpNet]>);

impl TrustedProxies {
    pub fn new(ranges: &[Cidr]) -> TrustedProxies {
        TrustedProxies(ranges.iter().map(|c| c.0).collect())
    }

    /// Whether `ip` is a trusted proxy. IPv4-mapped IPv6 peers (dual-stack sockets)
    /// match IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address for a request from `peer` carrying `headers`.
///
/// When every forwarded address is trusted, the left-most is the client (the request
/// began inside the trusted network). An entry that is not an address stops the walk:
/// the last address known good (the proxy that wrote it) is used.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut last = peer;
    // Several header lines form one list, in order (RFC 9110 §5.3).
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else { return last };
        for entry in value.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_forwarded(entry) else { return last };
            if !trusted.contains(ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

/// An `X-Forwarded-For` entry: an address, tolerating the `[v6]` and `v4:port` forms
/// some proxies write.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        let cidrs: Vec<Cidr> = ranges.iter().map(|r| Cidr::parse(r).unwrap()).collect();
        TrustedProxies::new(&cidrs)
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("203.0.113.9"), &xff(&["1.2.3.4"]), &t), ip("203.0.113.9"));
        let none = TrustedProxies::default();
        assert_eq!(client_ip(ip("10.0.0.1"), &xff(&["1.2.3.4"]), &none), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_yields_the_rightmost_untrusted_address() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.7"]);
        // The client forged 6.6.6.6; the real client 1.2.3.4 was seen by 192.0.2.7.
        let h = xff(&["6.6.6.6, 1.2.3.4", "192.0.2.7"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &t), ip("1.2.3.4"));
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        let t = trusted(&["127.0.0.1/32"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &HeaderMap::new(), &t), ip("127.0.0.1"));
    }

    #[test]
    fn all_trusted_yields_the_leftmost() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &xff(&["10.0.0.3, 10.0.0.2"]), &t), ip("10.0.0.3"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &xff(&["1.2.3.4, unknown, 10.0.0.2"]), &t), ip("10.0.0.2"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("::ffff:10.0.0.1"), &xff(&["1.2.3.4:5678"]), &t), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.1"), &xff(&["[2001:db8::1]:80"]), &t), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("::ffff:1.2.3.4"), &HeaderMap::new(), &t), ip("1.2.3.4"));
    }
}
