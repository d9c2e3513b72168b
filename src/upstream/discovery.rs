//! DNS discovery: servers of an upstream with `resolve = "5s"` whose address is a host
//! name (`backend.internal:8000`) are re-resolved on that interval, and the pool
//! follows the answer set.
//!
//! Each address in the answer becomes one server, labelled `name:port (ip)` (its
//! `server` metric label and the key its state is carried by), so a server whose
//! address stays in the answer keeps its health mark and idle connections, and the
//! consistent-hash ring (built from these labels) moves only the keys of addresses
//! that came or went — the same on every instance that sees the same answers.
//!
//! One small task per upstream (`Tasks`) resolves its names; when an answer set
//! differs from the one the current runtime was built with, it calls `Apply`, which
//! rebuilds the runtime from the current config with the new answers (`server.rs`,
//! the same path as a reload, minus reading the file). A lookup that fails, or finds
//! nothing, changes nothing: the last answers keep serving (a DNS hiccup must not
//! empty a pool); the failure is logged once, and its end once.
//!
//! The resolver reads the system's resolv.conf, or asks the one nameserver in the
//! top-level `resolver` key. Its cache is off: the interval is the refresh knob, and
//! a cached answer would hide changes for up to its TTL.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::task::AbortHandle;

use crate::config::{Config, UpstreamConfig};

/// The addresses found for each discovered server address (`host:port`), sorted.
pub type Answers = BTreeMap<String, Vec<SocketAddr>>;

/// Rebuilds the runtime with new answers for one discovered address.
pub type Apply = Arc<dyn Fn(&str, Vec<SocketAddr>) + Send + Sync>;

/// Whether the current runtime was built with these answers for one discovered
/// address; discovery asks before it rebuilds.
pub type Known = Arc<dyn Fn(&str, &[SocketAddr]) -> bool + Send + Sync>;

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("`{0}` is not host:port")]
    NotHostPort(String),
    #[error("cannot set up the resolver: {0}")]
    Resolver(String),
    #[error("looking up `{address}`: {reason}")]
    Lookup { address: String, reason: String },
}

/// Whether the server `address` of `up` is discovered: the upstream has `resolve`
/// and the address is a name, not an IP.
pub fn is_discovered(up: &UpstreamConfig, address: &str) -> bool {
    up.resolve.is_some() && address.parse::<SocketAddr>().is_err()
}

/// The label (and state key) of the server found at `addr` for `address`.
pub fn label(address: &str, addr: SocketAddr) -> String {
    format!("{address} ({})", addr.ip())
}

/// The nameserver of `config.resolver`, if set (validation checked it parses).
pub fn nameserver(config: &Config) -> Option<SocketAddr> {
    config.resolver.as_ref().and_then(|r| r.get_ref().parse().ok())
}

/// A resolver asking `nameserver`, or the system's resolv.conf when `None`.
pub fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = match nameserver {
        Some(ns) => {
            let group = NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| DiscoveryError::Resolver(e.to_string()))?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    Ok(builder.build())
}

/// The addresses of `address` (`host:port`), sorted and without duplicates.
pub async fn lookup(resolver: &TokioResolver, address: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| DiscoveryError::NotHostPort(address.into()))?;
    let found = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| DiscoveryError::Lookup { address: address.into(), reason: e.to_string() })?;
    let mut addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(DiscoveryError::Lookup { address: address.into(), reason: "no addresses".into() });
    }
    Ok(addrs)
}

/// `lookup` from synchronous code (building a runtime for a name not seen yet), on a
/// thread of its own so it works inside and outside a tokio runtime.
pub fn lookup_blocking(
    nameserver: Option<SocketAddr>,
    address: &str,
) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let address = address.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DiscoveryError::Resolver(e.to_string()))?;
        rt.block_on(async { lookup(&resolver(nameserver)?, &address).await })
    })
    .join()
    .unwrap_or_else(|_| Err(DiscoveryError::Resolver("the lookup thread panicked".into())))
}

/// What one upstream's task watches; an unchanged spec keeps its task over a reload.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    names: Vec<String>,
    every: Duration,
    nameserver: Option<SocketAddr>,
}

/// The running discovery tasks, by upstream. Aborted when dropped.
#[derive(Default)]
pub struct Tasks {
    running: HashMap<String, (Spec, AbortHandle)>,
}

impl Tasks {
    /// Makes the running tasks match `config`: starts tasks for upstreams that gained
    /// names to watch, stops those that lost them, restarts changed ones. Needs a
    /// tokio runtime.
    pub fn reconcile(&mut self, config: &Config, known: &Known, apply: &Apply) {
        let mut wanted = HashMap::new();
        for (name, up) in &config.upstreams {
            let Some(every) = up.resolve else { continue };
            let names: Vec<String> = up
                .servers
                .get_ref()
                .iter()
                .map(|s| s.address.get_ref().clone())
                .filter(|a| is_discovered(up, a))
                .collect();
            if !names.is_empty() {
                wanted.insert(name.clone(), Spec { names, every: every.0, nameserver: nameserver(config) });
            }
        }
        self.running.retain(|name, (spec, task)| {
            let keep = wanted.get(name) == Some(spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, spec) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            let task = tokio::spawn(watch(name.clone(), spec.clone(), known.clone(), apply.clone()));
            self.running.insert(name, (spec, task.abort_handle()));
        }
    }

    /// Stops every task.
    pub fn stop(&mut self) {
        for (_, (_, task)) in self.running.drain() {
            task.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves `spec.names` every `spec.every`, applying each changed answer set.
async fn watch(upstream: String, spec: Spec, known: Known, apply: Apply) {
    let resolver = match resolver(spec.nameserver) {
        Ok(resolver) => resolver,
        Err(error) => {
            tracing::error!(%upstream, %error, "DNS discovery is off for this upstream");
            return;
        }
    };
    let mut failing = false;
    loop {
        tokio::time::sleep(spec.every).await;
        for name in &spec.names {
            match lookup(&resolver, name).await {
                Ok(addrs) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(%upstream, "DNS discovery resolves again");
                    }
                    let changed = !known(name, &addrs);
                    if changed {
                        tracing::info!(%upstream, address = %name, servers = ?addrs, "DNS answer changed");
                        // Rebuilding may resolve other names and takes the reload
                        // lock: off the request threads, as a reload is.
                        let (apply, name) = (apply.clone(), name.clone());
                        let _ = tokio::task::spawn_blocking(move || apply(&name, addrs)).await;
                    }
                }
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%upstream, %error, "DNS discovery failed; keeping the last answers");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_the_name_and_add_the_ip() {
        let addr: SocketAddr = "10.0.0.7:8000".parse().unwrap();
        assert_eq!(label("backend.internal:8000", addr), "backend.internal:8000 (10.0.0.7)");
    }

    #[tokio::test]
    async fn an_address_without_a_port_is_refused() {
        let resolver = resolver(Some("127.0.0.1:1".parse().unwrap())).unwrap();
        assert!(matches!(lookup(&resolver, "backend").await, Err(DiscoveryError::NotHostPort(_))));
    }
}
