//! Semantic checks that serde cannot express: names resolve, ranges hold, addresses
//! parse, nothing is ambiguous. The first problem found is returned, with its position.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{
    BalancerKind, Config, ConfigError, HealthCheckConfig, ListenerConfig, RateLimitConfig, RouteConfig,
    ServerConfig, Source, UpstreamConfig,
};

/// Largest server weight. Smooth weighted round-robin precomputes one cycle of picks,
/// whose length is the sum of the weights, so the cap keeps that table small.
pub const MAX_WEIGHT: u32 = 1000;
/// Listeners a route can name are kept as a bitmask.
pub const MAX_LISTENERS: usize = 64;

/// Longest rate limit name: it is a metric label and sits in every `RateLimit` header.
pub const MAX_RATE_LIMIT_NAME: usize = 64;
/// Highest rate: beyond it a token bucket's sub-nanosecond refill is meaningless.
pub const MAX_RATE: f64 = 1e9;
/// Shortest `resolve` interval: a DNS query per upstream name this often is plenty.
pub const MIN_RESOLVE: std::time::Duration = std::time::Duration::from_millis(100);

/// Checks `config` section by section, in file order where the order is the user's
/// (listeners, routes); the first problem found is the error.
pub(super) fn validate(config: &Config, src: &Source) -> Result<(), ConfigError> {
    if let Some(admin) = &config.admin {
        socket_addr(src, "admin.listen", &admin.listen)?;
        if admin.header_read_timeout.0.is_zero() {
            return Err(src.error(None, "admin.header_read_timeout", "must be greater than zero"));
        }
        for (i, host) in admin.hosts.iter().enumerate() {
            if let Err(why) = check_admin_host(host.get_ref()) {
                return Err(src.error(Some(host.span()), &format!("admin.hosts[{i}]"), why));
            }
        }
    }
    if let Some(path) = &config.access_log.path {
        if path.get_ref().trim().is_empty() {
            return Err(src.error(
                Some(path.span()),
                "access_log.path",
                "must not be empty: remove the key to log to stderr",
            ));
        }
    }
    if config.listeners.is_empty() {
        return Err(src.error(None, "listeners", "at least one [[listeners]] is required"));
    }
    if config.listeners.len() > MAX_LISTENERS {
        return Err(src.error(None, "listeners", format!("at most {MAX_LISTENERS} listeners")));
    }
    let mut names = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        listener(src, i, l)?;
        if !names.insert(l.name.get_ref().as_str()) {
            return Err(src.error(
                Some(l.name.span()),
                &format!("listeners[{i}].name"),
                format!("listener name `{}` is used twice", l.name.get_ref()),
            ));
        }
    }

    listen_addresses(config, src)?;

    for (name, up) in &config.upstreams {
        upstream(src, name, up)?;
    }

    for (name, limit) in &config.rate_limits {
        check_rate_limit(src, name, limit)?;
    }
    for (name, cache) in &config.caches {
        caches(src, name, cache)?;
    }
    if let Some(resolver) = &config.resolver {
        socket_addr(src, "resolver", resolver)?;
    }

    let mut seen_routes = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        if !seen_routes.insert(route(config, src, i, r)?) {
            return Err(src.error(
                r.upstream.as_ref().or(r.path_prefix.as_ref()).map(|s| s.span()),
                &format!("routes[{i}]"),
                "an earlier route has the same host, path_prefix, methods and listeners, so this one could never match",
            ));
        }
    }
    Ok(())
}

/// No two listeners (the admin one included) on one address: the second bind would
/// fail only when weir starts, or when a reload brings it in.
fn listen_addresses(config: &Config, src: &Source) -> Result<(), ConfigError> {
    let admin = config.admin.iter().map(|a| ("admin.listen".to_string(), &a.listen));
    let listeners =
        config.listeners.iter().enumerate().map(|(i, l)| (format!("listeners[{i}].listen"), &l.listen));
    let mut seen: Vec<(String, SocketAddr, std::ops::Range<usize>)> = Vec::new();
    for (key, listen) in admin.chain(listeners) {
        let addr = socket_addr(src, &key, listen)?;
        if let Some((other, other_addr, span)) = seen.iter().find(|(_, a, _)| overlap(*a, addr)) {
            let what = if *other_addr == addr {
                "is also".to_string()
            } else {
                format!("overlaps `{other_addr}`, which is")
            };
            return Err(src.error(
                Some(listen.span()),
                &key,
                format!(
                    "`{addr}` {what} `{other}` at {}: one address can be listened on once",
                    src.place(span.clone())
                ),
            ));
        }
        seen.push((key, addr, listen.span()));
    }
    Ok(())
}

/// Whether binding `a` and `b` both would fail: the same port (not 0, which picks a
/// free one) on the same address, or on any address and one that it covers (`[::]`
/// covers IPv4 too, as weir's sockets are dual-stack).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// One `[[listeners]]` entry (the `i`th), on its own.
fn listener(src: &Source, i: usize, l: &ListenerConfig) -> Result<(), ConfigError> {
    let key = format!("listeners[{i}]");
    if l.name.get_ref().is_empty() {
        return Err(src.error(Some(l.name.span()), &format!("{key}.name"), "must not be empty"));
    }
    socket_addr(src, &format!("{key}.listen"), &l.listen)?;
    if let Some(tls) = &l.tls {
        if tls.certificates.get_ref().is_empty() {
            return Err(src.error(
                Some(tls.certificates.span()),
                &format!("{key}.tls.certificates"),
                "list at least one { cert, key } pair",
            ));
        }
    }
    let size = *l.max_header_size.get_ref();
    if !(8192..=1 << 20).contains(&size) {
        return Err(src.error(
            Some(l.max_header_size.span()),
            &format!("{key}.max_header_size"),
            "must be between 8192 and 1048576 bytes",
        ));
    }
    if let Some(max) = &l.max_connections {
        at_least_one(src, &format!("{key}.max_connections"), max)?;
    }
    for (what, d) in [
        ("header_read_timeout", &l.header_read_timeout),
        ("body_read_timeout", &l.body_read_timeout),
        ("send_timeout", &l.send_timeout),
        ("idle_timeout", &l.idle_timeout),
    ] {
        if d.0.is_zero() {
            return Err(src.error(None, &format!("{key}.{what}"), "must be greater than zero"));
        }
    }
    Ok(())
}

/// One `[upstreams.NAME]` table.
fn upstream(src: &Source, name: &str, up: &UpstreamConfig) -> Result<(), ConfigError> {
    let key = format!("upstreams.{name}");
    if name.is_empty() {
        return Err(src.error(None, "upstreams", "upstream name must not be empty"));
    }
    let servers = up.servers.get_ref();
    if servers.is_empty() {
        return Err(src.error(
            Some(up.servers.span()),
            &format!("{key}.servers"),
            "an upstream needs at least one server",
        ));
    }
    if servers.iter().all(|s| s.backup) {
        return Err(src.error(
            Some(up.servers.span()),
            &format!("{key}.servers"),
            "every server is a backup: at least one primary server is required",
        ));
    }
    for (what, d) in [
        ("connect_timeout", up.connect_timeout),
        ("request_timeout", up.request_timeout),
        ("read_timeout", up.read_timeout),
        ("keepalive_timeout", up.keepalive_timeout),
    ] {
        if d.0.is_zero() {
            return Err(src.error(None, &format!("{key}.{what}"), "must be greater than zero"));
        }
    }
    let pct = up.min_healthy_percent.as_ref();
    if let Some(p) = pct.filter(|p| *p.get_ref() > 100) {
        return Err(src.error(Some(p.span()), &format!("{key}.min_healthy_percent"), "must be 0 to 100"));
    }
    retries(src, &key, up)?;
    passive_health(src, &key, up)?;
    if let Some(hc) = &up.health_check {
        health_check(src, &format!("{key}.health_check"), hc)?;
    }
    upstream_tls(src, &key, up)?;
    balancer_options(src, &key, up)?;
    super::shaping::check_sticky(src, &key, up)?;
    check_queue(src, &key, up)?;
    if let Some(every) = up.resolve {
        if every.0 < MIN_RESOLVE {
            return Err(src.error(None, &format!("{key}.resolve"), "must be at least 100ms"));
        }
    }
    upstream_servers(src, &key, servers)
}

/// `retry_on` names error statuses only; `retry_budget` is a share.
fn retries(src: &Source, key: &str, up: &UpstreamConfig) -> Result<(), ConfigError> {
    if let Some(retry_on) = &up.retry_on {
        if !retry_on.get_ref().is_within(400, 599) {
            return Err(src.error(
                Some(retry_on.span()),
                &format!("{key}.retry_on"),
                "only error statuses (400-599) can be retried",
            ));
        }
    }
    let budget = &up.retry_budget;
    if !(0.0..=1.0).contains(budget.get_ref()) {
        return Err(src.error(
            Some(budget.span()),
            &format!("{key}.retry_budget"),
            "must be a share of requests between 0.0 and 1.0",
        ));
    }
    Ok(())
}

/// `[passive_health]`: the share is a percentage, ejection times are ordered.
fn passive_health(src: &Source, key: &str, up: &UpstreamConfig) -> Result<(), ConfigError> {
    let passive = &up.passive_health;
    let pct = &passive.max_ejection_percent;
    if *pct.get_ref() > 100 {
        return Err(src.error(
            Some(pct.span()),
            &format!("{key}.passive_health.max_ejection_percent"),
            "must be 0 to 100",
        ));
    }
    let (ejection, max) =
        (format!("{key}.passive_health.ejection_time"), format!("{key}.passive_health.max_ejection_time"));
    if passive.ejection_time.0.is_zero() {
        return Err(src.error(None, &ejection, "must be greater than zero"));
    }
    if passive.max_ejection_time < passive.ejection_time {
        // At `max_ejection_time` if it is written, else at the `ejection_time` past it.
        let error = src.error(None, &max, "max_ejection_time must be at least ejection_time");
        return Err(match error.position {
            Some(_) => error,
            None => src.error(None, &ejection, "must be at most max_ejection_time (default 5m)"),
        });
    }
    Ok(())
}

/// `[upstreams.NAME.health_check]` (`key`): thresholds and times above zero. Its path,
/// statuses and host were checked as they were read.
fn health_check(src: &Source, key: &str, hc: &HealthCheckConfig) -> Result<(), ConfigError> {
    for (what, n) in
        [("healthy_threshold", &hc.healthy_threshold), ("unhealthy_threshold", &hc.unhealthy_threshold)]
    {
        if *n.get_ref() == 0 {
            return Err(src.error(Some(n.span()), &format!("{key}.{what}"), "must be at least 1"));
        }
    }
    for (what, d) in [("interval", hc.interval), ("timeout", hc.timeout)] {
        if d.0.is_zero() {
            return Err(src.error(None, &format!("{key}.{what}"), "must be greater than zero"));
        }
    }
    Ok(())
}

/// `sni` and `ca_file` only with `tls = true`; `sni` is a name a certificate can carry.
fn upstream_tls(src: &Source, key: &str, up: &UpstreamConfig) -> Result<(), ConfigError> {
    if !up.tls && (up.sni.is_some() || up.ca_file.is_some()) {
        let span = up.sni.as_ref().or(up.ca_file.as_ref()).map(|s| s.span());
        return Err(src.error(span, &format!("{key}.tls"), "`sni` and `ca_file` need `tls = true`"));
    }
    if let Some(sni) = &up.sni {
        if rustls_pki_types::ServerName::try_from(sni.get_ref().as_str()).is_err() {
            return Err(src.error(
                Some(sni.span()),
                &format!("{key}.sni"),
                "is not a DNS name or IP address",
            ));
        }
    }
    Ok(())
}

/// Each server: a weight in range, an address that parses, listed once.
fn upstream_servers(src: &Source, key: &str, servers: &[ServerConfig]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, s) in servers.iter().enumerate() {
        let skey = format!("{key}.servers[{i}]");
        let weight = *s.weight.get_ref();
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(src.error(
                Some(s.weight.span()),
                &format!("{skey}.weight"),
                format!("weight must be between 1 and {MAX_WEIGHT}, got {weight}"),
            ));
        }
        host_port(src, &format!("{skey}.address"), &s.address)?;
        if !seen.insert(s.address.get_ref().as_str()) {
            return Err(src.error(
                Some(s.address.span()),
                &format!("{skey}.address"),
                format!("server `{}` is listed twice in this upstream", s.address.get_ref()),
            ));
        }
    }
    Ok(())
}

/// One `[[routes]]` entry (the `i`th): what it names exists, what it matches parses.
/// Returns what it matches on, so the caller can find a route shadowed by an earlier one.
fn route(config: &Config, src: &Source, i: usize, r: &RouteConfig) -> Result<RouteIdentity, ConfigError> {
    let key = format!("routes[{i}]");
    if let Some(limit) = &r.rate_limit {
        if !config.rate_limits.contains_key(limit.get_ref().as_str()) {
            return Err(src.error(
                Some(limit.span()),
                &format!("{key}.rate_limit"),
                format!(
                    "no rate limit named `{}`: define [rate_limits.{}]",
                    limit.get_ref(),
                    limit.get_ref()
                ),
            ));
        }
    }
    if let Some(cache) = &r.cache {
        if !config.caches.contains_key(cache.get_ref().as_str()) {
            return Err(src.error(
                Some(cache.span()),
                &format!("{key}.cache"),
                format!("no cache named `{}`: define [caches.{}]", cache.get_ref(), cache.get_ref()),
            ));
        }
    }
    super::shaping::check_route(src, &key, r)?;
    if let Some(upstream) =
        r.upstream.as_ref().filter(|u| !config.upstreams.contains_key(u.get_ref().as_str()))
    {
        return Err(src.error(
            Some(upstream.span()),
            &format!("{key}.upstream"),
            format!("no upstream named `{}`: define [upstreams.{}]", upstream.get_ref(), upstream.get_ref()),
        ));
    }
    if let Some(host) = &r.host {
        if let Err(why) = check_host(host.get_ref()) {
            return Err(src.error(Some(host.span()), &format!("{key}.host"), why));
        }
    }
    if let Some(prefix) = &r.path_prefix {
        if !prefix.get_ref().starts_with('/') {
            return Err(src.error(Some(prefix.span()), &format!("{key}.path_prefix"), "must start with `/`"));
        }
    }
    let mut methods = Vec::new();
    for m in r.methods.iter().flatten() {
        methods.push(m.get_ref().0.as_str().to_string());
    }
    if r.methods.as_ref().is_some_and(|m| m.is_empty()) {
        return Err(src.error(
            None,
            &format!("{key}.methods"),
            "an empty list matches nothing: remove the key to match any method",
        ));
    }
    methods.sort();
    for (n, protocol) in r.upgrades.iter().flatten().enumerate() {
        if !is_protocol_name(protocol.get_ref()) {
            return Err(src.error(
                Some(protocol.span()),
                &format!("{key}.upgrades[{n}]"),
                format!(
                    "`{}` is not an Upgrade protocol name (a token such as `websocket`)",
                    protocol.get_ref()
                ),
            ));
        }
    }
    let mut listeners = Vec::new();
    for (n, l) in r.listeners.iter().flatten().enumerate() {
        if !config.listeners.iter().any(|x| x.name.get_ref() == l.get_ref()) {
            return Err(src.error(
                Some(l.span()),
                &format!("{key}.listeners[{n}]"),
                format!("no listener named `{}`", l.get_ref()),
            ));
        }
        listeners.push(l.get_ref().clone());
    }
    listeners.sort();
    Ok((
        r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase()),
        r.path_prefix.as_ref().map_or("/".to_string(), |p| p.get_ref().clone()),
        methods,
        listeners,
    ))
}

/// Host, path prefix, methods and listeners: two routes alike in all four are one too many.
type RouteIdentity = (Option<String>, String, Vec<String>, Vec<String>);

/// Largest object a cache stores: entries are weighed in `u32` bytes.
pub const MAX_OBJECT_SIZE: u64 = 1 << 30;

/// A cache's sizes are non-zero and its objects fit in it; waits are above zero.
fn caches(src: &Source, name: &str, cache: &super::CacheConfig) -> Result<(), ConfigError> {
    let key = format!("caches.{name}");
    if name.is_empty() {
        return Err(src.error(None, "caches", "cache name must not be empty"));
    }
    let size = &cache.max_size;
    if size.get_ref().0 == 0 {
        return Err(src.error(Some(size.span()), &format!("{key}.max_size"), "must be above zero"));
    }
    let object = cache.max_object_size();
    if object == 0 || object > size.get_ref().0 || object > MAX_OBJECT_SIZE {
        return Err(src.error(
            cache.max_object_size.as_ref().map(|o| o.span()),
            &format!("{key}.max_object_size"),
            "must be above zero, at most max_size and at most 1GiB",
        ));
    }
    if cache.lock_timeout.0.is_zero() {
        return Err(src.error(None, &format!("{key}.lock_timeout"), "must be greater than zero"));
    }
    Ok(())
}

/// `hash_key` is required with `consistent_hash` and refused elsewhere;
/// `hash_balance_factor` is a number above 1.0, with `consistent_hash` only.
fn balancer_options(src: &Source, key: &str, up: &UpstreamConfig) -> Result<(), ConfigError> {
    let hashing = *up.balancer.get_ref() == BalancerKind::ConsistentHash;
    match &up.hash_key {
        None if hashing => {
            return Err(src.error(
                Some(up.balancer.span()),
                &format!("{key}.hash_key"),
                "consistent_hash needs a hash_key: client_ip, header:NAME, cookie:NAME, path or query:NAME",
            ))
        }
        Some(k) if !hashing => {
            return Err(src.error(
                Some(k.span()),
                &format!("{key}.hash_key"),
                "hash_key is only used with balancer = \"consistent_hash\"",
            ))
        }
        _ => {}
    }
    if let Some(factor) = &up.hash_balance_factor {
        let fkey = format!("{key}.hash_balance_factor");
        if !hashing {
            return Err(src.error(
                Some(factor.span()),
                &fkey,
                "hash_balance_factor is only used with balancer = \"consistent_hash\"",
            ));
        }
        let value = *factor.get_ref();
        if !(value.is_finite() && value > 1.0 && value <= 100.0) {
            return Err(src.error(
                Some(factor.span()),
                &fkey,
                format!("must be above 1.0 (e.g. 1.25) and at most 100, got {value}"),
            ));
        }
    }
    Ok(())
}

/// `max_in_flight` >= 1; `queue_size` and `queue_timeout` only beside it.
fn check_queue(src: &Source, key: &str, up: &UpstreamConfig) -> Result<(), ConfigError> {
    match &up.max_in_flight {
        Some(max) => at_least_one(src, &format!("{key}.max_in_flight"), max)?,
        None => {
            let stray = up.queue_size.as_ref().map(|q| ("queue_size", Some(q.span())));
            let stray = stray.or(up.queue_timeout.map(|_| ("queue_timeout", None)));
            if let Some((what, span)) = stray {
                return Err(src.error(
                    span,
                    &format!("{key}.{what}"),
                    "has no effect without max_in_flight: set max_in_flight or remove it",
                ));
            }
        }
    }
    if up.queue_timeout.is_some_and(|d| d.0.is_zero()) {
        return Err(src.error(None, &format!("{key}.queue_timeout"), "must be greater than zero"));
    }
    Ok(())
}

fn check_rate_limit(src: &Source, name: &str, limit: &RateLimitConfig) -> Result<(), ConfigError> {
    let key = format!("rate_limits.{name}");
    // The name is a metric label and a quoted string in the RateLimit headers.
    let name_ok = !name.is_empty()
        && name.len() <= MAX_RATE_LIMIT_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !name_ok {
        return Err(src.error(
            None,
            &key,
            format!("rate limit names are 1 to {MAX_RATE_LIMIT_NAME} letters, digits, `_`, `-` or `.`"),
        ));
    }
    let rate = *limit.rate.get_ref();
    if !(rate > 0.0 && rate <= MAX_RATE) {
        return Err(src.error(
            Some(limit.rate.span()),
            &format!("{key}.rate"),
            format!("must be greater than 0 and at most {MAX_RATE}, got {rate}"),
        ));
    }
    if *limit.burst.get_ref() == 0 {
        return Err(src.error(Some(limit.burst.span()), &format!("{key}.burst"), "must be at least 1"));
    }
    at_least_one(src, &format!("{key}.max_keys"), &limit.max_keys)?;
    if let Some(store) = &limit.store {
        if let Err(e) = redis::Client::open(store.get_ref().as_str()) {
            return Err(src.error(
                Some(store.span()),
                &format!("{key}.store"),
                format!("`{}` is not a Redis URL like \"redis://127.0.0.1:6379/0\": {e}", store.get_ref()),
            ));
        }
    }
    if limit.store_timeout.0.is_zero() {
        return Err(src.error(None, &format!("{key}.store_timeout"), "must be greater than zero"));
    }
    for (what, prefix, max) in
        [("ipv4_prefix", &limit.ipv4_prefix, 32), ("ipv6_prefix", &limit.ipv6_prefix, 128)]
    {
        let Some(prefix) = prefix else { continue };
        let pkey = format!("{key}.{what}");
        if limit.key != super::RateLimitKey::ClientIp {
            return Err(src.error(Some(prefix.span()), &pkey, "is only used with key = \"client_ip\""));
        }
        if *prefix.get_ref() > max {
            return Err(src.error(
                Some(prefix.span()),
                &pkey,
                format!("must be a prefix length from 0 to {max}, got {}", prefix.get_ref()),
            ));
        }
    }
    Ok(())
}

fn at_least_one(src: &Source, key: &str, value: &toml::Spanned<usize>) -> Result<(), ConfigError> {
    if *value.get_ref() == 0 {
        return Err(src.error(Some(value.span()), key, "must be at least 1"));
    }
    Ok(())
}

fn socket_addr(src: &Source, key: &str, text: &toml::Spanned<String>) -> Result<SocketAddr, ConfigError> {
    text.get_ref().parse().map_err(|_| {
        src.error(
            Some(text.span()),
            key,
            format!("`{}` is not an IP address with a port, e.g. \"127.0.0.1:8080\"", text.get_ref()),
        )
    })
}

/// `ip:port` or `hostname:port`; names are resolved when the runtime is built.
fn host_port(src: &Source, key: &str, text: &toml::Spanned<String>) -> Result<(), ConfigError> {
    let value = text.get_ref();
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let ok = value.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok_and(|p| p != 0)
            && !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    });
    if ok {
        Ok(())
    } else {
        Err(src.error(
            Some(text.span()),
            key,
            format!("`{value}` is not a host with a port, e.g. \"10.0.0.1:8000\" or \"app.internal:8000\""),
        ))
    }
}

/// Reads `[admin] token_file` (relative to `base`, the config file's folder): one
/// line of visible ASCII, surrounding whitespace ignored. A file that cannot be read
/// or holds no usable token is an error at the key, as a bad value would be.
pub(super) fn admin_token(
    admin: &super::AdminConfig,
    src: &Source,
    base: &std::path::Path,
) -> Result<Option<super::AdminToken>, ConfigError> {
    let Some(file) = &admin.token_file else { return Ok(None) };
    let path = base.join(file.get_ref());
    let error = |why: String| src.error(Some(file.span()), "admin.token_file", why);
    let text = std::fs::read(&path).map_err(|e| error(format!("cannot read `{}`: {e}", path.display())))?;
    let token = text.trim_ascii();
    if token.is_empty() {
        return Err(error(format!("`{}` is empty: put the admin bearer token in it", path.display())));
    }
    // What a client can send after `Bearer ` in a header; anything else could never match.
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(error(format!(
            "`{}` must hold one token of visible ASCII characters (no spaces or control characters)",
            path.display()
        )));
    }
    Ok(Some(super::AdminToken::new(token)))
}

/// Whether `name` can be listed in a route's `upgrades`: a token (RFC 9110 §5.6.2),
/// without a version.
fn is_protocol_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An `[admin] hosts` entry: a host name or IP (IPv6 in brackets), with an optional port.
fn check_admin_host(entry: &str) -> Result<(), String> {
    let bad = || {
        format!("`{entry}` is not a host name with an optional port, e.g. \"admin.internal\" or \"admin.internal:9901\"")
    };
    let (name, _port) = super::split_host(entry).ok_or_else(bad)?;
    let ip = name.parse::<std::net::IpAddr>().is_ok();
    if name.is_empty()
        || !(ip || name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
    {
        return Err(bad());
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.contains('*') {
        return Err(format!("`{host}` is not a host: use an exact name or `*.example.com`"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_') {
        return Err(format!("`{host}` is not a host name (no ports, paths or spaces)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
