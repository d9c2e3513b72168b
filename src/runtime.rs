//! `Runtime`: everything the request path reads, built once from a validated `Config`
//! and swapped whole on reload.
//!
//! Routes are compiled, upstreams and servers resolved, balancers built and metric
//! handles looked up here, so nothing on the request path touches the TOML types.
//! State that must survive a reload (each server's health mark and idle connections)
//! is found in the previous runtime by upstream name and server address and shared
//! with the new one. Rate limiters (their buckets) and upstream queues are carried
//! over the same way when their name and settings are unchanged.

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::admission::{Admission, AdmissionSettings};
use crate::balancer::{Balancer, Options};
use crate::cache::{self, Cache};
use crate::config::template::Var;
use crate::config::{Config, ConfigError, RouteConfig, StatusSet, UpstreamConfig, UpstreamProtocol};
use crate::metrics::{Latency, Metrics, ServerMetrics};
use crate::proxy::client_ip::TrustedProxies;
use crate::proxy::route::{Action, Local, Proxy, Route, Router, Upgrades};
use crate::proxy::Pipeline;
use crate::ratelimit::{Limiter, Settings, StoreSettings};
use crate::shaping::sticky::Sticky;
use crate::shaping::{AccessList, HeaderRules, LocalAnswer, PathRewrite};
use crate::tls::{self, TlsError};
use crate::upstream::client::{server_name, tls_name, UpstreamTls};
use crate::upstream::discovery::{self, Answers};
use crate::upstream::health::{self, HealthPolicy};
use crate::upstream::retry::RetryBudget;
use crate::upstream::{self, ConnectionSettings, Server, ServerState, Upstream};
use toml::Spanned;

/// The ready-to-serve form of one config.
pub struct Runtime {
    /// What the request path reads: routes, the unrouted metrics, trusted proxies,
    /// the access log. The listeners hand it to `proxy::handle`.
    pub pipeline: Pipeline,
    pub upstreams: HashMap<Box<str>, Arc<Upstream>>,
    /// Response caches by name; a cache whose settings a reload leaves unchanged is
    /// the same `Arc`, store and all.
    pub caches: HashMap<Box<str>, Arc<Cache>>,
    /// This runtime's background tasks (active health checks, idle-pool sweeps),
    /// started by `start_tasks`.
    pub tasks: Tasks,
    /// TLS for each listener slot, `None` for plain ones. Part of the runtime so a
    /// reload can renew certificates.
    pub tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
    /// Listener names by slot. Slots are stable for the life of the process (a
    /// reload keeps the old ones and appends new names), so a connection's slot
    /// means the same listener in every runtime.
    pub listener_slots: Vec<Box<str>>,
    /// Rate limits by name; routes hold their own `Arc`.
    pub limiters: HashMap<Box<str>, Arc<Limiter>>,
    /// The DNS answers the discovered servers were built from (see `discovery`).
    pub answers: Arc<Answers>,
    /// `[admin] hosts` and token: here so that a reload changes them.
    pub admin: crate::config::AdminAccess,
}

/// Default `queue_size` of an upstream with `max_in_flight`.
pub const DEFAULT_QUEUE_SIZE: usize = 256;
/// Default `queue_timeout` of an upstream with `max_in_flight`.
pub const DEFAULT_QUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a validated config still could not be turned into a runtime: a server name
/// that does not resolve, a certificate, key or CA file that cannot be used, a log
/// file that cannot be opened. Named, like a parse error, by the file, line and
/// column of the value and its key.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BuildError(#[from] pub ConfigError);

/// The current runtime, shared by every connection; replaced whole on reload.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

impl Runtime {
    /// Builds the runtime for `config`, carrying server state over from `previous`.
    pub fn build(
        config: &Config,
        previous: Option<&Runtime>,
        metrics: &Metrics,
    ) -> Result<Runtime, BuildError> {
        Self::build_with(config, previous, metrics, &Answers::new())
    }

    /// `build`, with `fresh` DNS answers for discovered server addresses. An address
    /// not in `fresh` keeps the answers `previous` was built with, or is looked up
    /// now if it is new.
    pub fn build_with(
        config: &Config,
        previous: Option<&Runtime>,
        metrics: &Metrics,
        fresh: &Answers,
    ) -> Result<Runtime, BuildError> {
        let mut answers = Answers::new();
        let slots = listener_slots(config, previous)?;
        let mut upstreams = HashMap::new();
        for (name, up) in &config.upstreams {
            let upstream = build_upstream(config, name, up, previous, metrics, fresh, &mut answers)?;
            upstreams.insert(Box::from(name.as_str()), Arc::new(upstream));
        }
        let limiters = build_limiters(config, previous, metrics)?;
        let caches = build_caches(config, previous, metrics);
        let router = Router::new(config.routes.iter().map(|r| {
            let mut route = build_route(r, &upstreams, &limiters, &caches, metrics);
            route.listeners = listener_mask(r, &slots);
            (r.host.as_ref().map(|h| h.get_ref().as_str()), route)
        }));
        let listener_tls = listener_tls(config, &slots)?;
        let access_log = AccessLog::open(
            &config.access_log,
            previous.and_then(|p| p.pipeline.access_log.as_ref()),
            &metrics.access_log_dropped_total,
        )
        .map_err(|e| {
            let path = config.access_log.path.as_ref();
            let shown = path.map_or("(stderr)".into(), |p| p.get_ref().clone());
            config.origin.error(
                path.map(Spanned::span),
                "access_log.path",
                format!("cannot open `{shown}`: {e}"),
            )
        })?;
        Ok(Runtime {
            pipeline: Pipeline {
                router,
                unrouted: metrics.unrouted(),
                trusted_proxies: TrustedProxies::new(&config.trusted_proxies),
                access_log,
            },
            upstreams,
            caches,
            tasks: Tasks::default(),
            tls: listener_tls,
            listener_slots: slots,
            limiters,
            answers: Arc::new(answers),
            admin: crate::config::AdminAccess::from_config(config),
        })
    }

    /// The `/metrics` exposition: the registry's families, then the per-server ones
    /// of this runtime's servers (upstreams in name order). Megabytes at thousands
    /// of servers: call it off the serving threads.
    pub fn encode_metrics(&self, metrics: &Metrics) -> Vec<u8> {
        let (mut servers, mut histograms) = (Vec::new(), Vec::new());
        let mut upstreams: Vec<&Arc<Upstream>> = self.upstreams.values().collect();
        upstreams.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for upstream in upstreams {
            upstream.samples(&mut servers, &mut histograms);
        }
        metrics.encode(&servers, &histograms)
    }

    /// The stable slot of the listener called `name`.
    pub fn listener_slot(&self, name: &str) -> Option<usize> {
        slot_of(&self.listener_slots, name)
    }

    /// Starts the background tasks: each upstream's active health checks and
    /// idle-pool sweep. They end when this runtime is dropped or
    /// `tasks.stop()` is called. Needs a tokio runtime.
    pub fn start_tasks(&self) {
        for upstream in self.upstreams.values() {
            self.tasks.spawn(upstream::keep_pools(upstream.clone()));
            if let Some(checks) = health::checks(upstream) {
                self.tasks.spawn(checks);
            }
        }
    }
}

/// Each listener's stable slot: the previous runtime's slots first, so a route's
/// listener mask and a listener's index survive reloads, then new names.
fn listener_slots(config: &Config, previous: Option<&Runtime>) -> Result<Vec<Box<str>>, BuildError> {
    let mut slots: Vec<Box<str>> = previous.map(|p| p.listener_slots.clone()).unwrap_or_default();
    for (i, l) in config.listeners.iter().enumerate() {
        if !slots.iter().any(|s| **s == **l.name.get_ref()) {
            slots.push(l.name.get_ref().as_str().into());
        }
        if slots.len() > 64 {
            return Err(config
                .origin
                .error(
                    Some(l.name.span()),
                    &format!("listeners[{i}].name"),
                    "more than 64 different listener names since start; restart weir to reuse slots",
                )
                .into());
        }
    }
    Ok(slots)
}

fn slot_of(slots: &[Box<str>], name: &str) -> Option<usize> {
    slots.iter().position(|s| &**s == name)
}

/// The bitmask of the listener slots route `r` serves; every bit when it names none.
fn listener_mask(r: &RouteConfig, slots: &[Box<str>]) -> u64 {
    match &r.listeners {
        None => u64::MAX,
        Some(names) => {
            names.iter().fold(0u64, |mask, n| mask | slot_of(slots, n.get_ref()).map_or(0, |i| 1u64 << i))
        }
    }
}

/// Each listener's TLS acceptor, by slot; `None` for plain listeners.
fn listener_tls(
    config: &Config,
    slots: &[Box<str>],
) -> Result<Vec<Option<tokio_rustls::TlsAcceptor>>, BuildError> {
    let mut acceptors = vec![None; slots.len()];
    for (i, l) in config.listeners.iter().enumerate() {
        if let (Some(t), Some(slot)) = (&l.tls, slot_of(slots, l.name.get_ref())) {
            let key = format!("listeners[{i}].tls.certificates");
            let server =
                tls::server_config(t.certificates.get_ref(), &config.base_dir, &key).map_err(|e| {
                    // The certificate or key file at fault, else the list.
                    let files = t.certificates.get_ref().iter().enumerate().flat_map(|(j, pair)| {
                        [(format!("{key}[{j}].cert"), &pair.cert), (format!("{key}[{j}].key"), &pair.key)]
                    });
                    let span = files.into_iter().find(|(k, _)| *k == e.key).map(|(_, file)| file.span());
                    tls_error(config, span.or(Some(t.certificates.span())), e)
                })?;
            acceptors[slot] = Some(tokio_rustls::TlsAcceptor::from(server));
        }
    }
    Ok(acceptors)
}

/// Each `[rate_limits.NAME]`: the previous runtime's limiter when its settings are
/// unchanged (its buckets live on), else a new one.
fn build_limiters(
    config: &Config,
    previous: Option<&Runtime>,
    metrics: &Metrics,
) -> Result<HashMap<Box<str>, Arc<Limiter>>, BuildError> {
    let mut limiters = HashMap::new();
    for (name, limit) in &config.rate_limits {
        let settings = Settings::from_config(limit);
        let store = StoreSettings::from_config(limit);
        let kept = previous
            .and_then(|p| p.limiters.get(name.as_str()))
            .filter(|old| old.settings == settings && old.store_settings() == store.as_ref())
            .cloned();
        let limiter = match kept {
            Some(limiter) => limiter,
            None => {
                let counter = metrics.rate_limited_total.with_label_values(&[name]);
                let limiter = Limiter::new(name, settings, counter);
                Arc::new(match store {
                    None => limiter,
                    Some(store) => {
                        let errors = metrics.rate_limit_store_errors_total.with_label_values(&[name]);
                        limiter.with_store(store, errors).map_err(|e| {
                            let at = limit.store.as_ref().map(Spanned::span);
                            config.origin.error(at, &format!("rate_limits.{name}.store"), e.to_string())
                        })?
                    }
                })
            }
        };
        limiters.insert(Box::from(name.as_str()), limiter);
    }
    Ok(limiters)
}

/// Each `[caches.NAME]`: the previous runtime's cache when its settings are
/// unchanged (its entries live on), else an empty one.
fn build_caches(
    config: &Config,
    previous: Option<&Runtime>,
    metrics: &Metrics,
) -> HashMap<Box<str>, Arc<Cache>> {
    let mut caches = HashMap::new();
    for (name, c) in &config.caches {
        let settings = cache::Settings::of(c);
        let kept = previous.and_then(|p| p.caches.get(name.as_str())).filter(|old| old.settings == settings);
        let cache = match kept {
            Some(old) => old.clone(),
            None => Cache::new(name, settings, metrics.cache(name)),
        };
        caches.insert(Box::from(name.as_str()), cache);
    }
    caches
}

/// Tasks that live as long as one runtime: `stop`, or dropping it, ends them all.
/// A reload stops the old runtime's tasks as it starts the new one's, so each server
/// is checked and swept by one task.
#[derive(Default)]
pub struct Tasks(CancellationToken);

impl Tasks {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let token = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Ends every task of this runtime.
    pub fn stop(&self) {
        self.0.cancel();
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The runtime form of `[upstreams.NAME]`: its servers (a discovered name becomes
/// one server per address in its answer, recorded in `answers`), carrying each kept
/// server's state over from `previous`, and its TLS, admission queue and balancer.
fn build_upstream(
    config: &Config,
    name: &str,
    up: &UpstreamConfig,
    previous: Option<&Runtime>,
    metrics: &Metrics,
    fresh: &Answers,
    answers: &mut Answers,
) -> Result<Upstream, BuildError> {
    let old = previous.and_then(|p| p.upstreams.get(name));
    // The previous servers by address: a reload of thousands of servers finds each
    // one's state in one probe, not a scan (which made it quadratic).
    let old_servers: HashMap<&str, &Arc<Server>> =
        old.map(|o| o.servers.iter().map(|s| (&*s.address, s)).collect()).unwrap_or_default();
    let server_latency = old.map_or_else(Arc::default, |o| o.metrics.server_latency.clone());
    let connection = ConnectionSettings {
        h2: up.protocol == UpstreamProtocol::H2,
        tls: up.tls,
        sni: up.sni.as_ref().map(|n| n.get_ref().clone()),
        ca_file: up.ca_file.as_ref().map(|f| config.base_dir.join(f.get_ref())),
        keepalive: up.keepalive,
    };
    let mut servers = Vec::new();
    for (i, s) in up.servers.get_ref().iter().enumerate() {
        let configured = s.address.get_ref().as_str();
        let addresses =
            server_addresses(config, up, configured, previous, fresh, answers).map_err(|why| {
                config.origin.error(
                    Some(s.address.span()),
                    &format!("upstreams.{name}.servers[{i}].address"),
                    format!("cannot resolve `{configured}`: {why}"),
                )
            })?;
        for (address, addr) in addresses {
            let was = old_servers.get(address.as_str()).copied();
            let server = Server {
                tls_name: tls_name(configured),
                weight: *s.weight.get_ref(),
                backup: s.backup,
                state: server_state(old, was, &connection, up.keepalive, previous.is_some()),
                metrics: server_metrics(metrics, name, was, up.server_histograms, &server_latency),
                address: address.into(),
                addr,
            };
            servers.push(Arc::new(server));
        }
    }
    let h2 = up.protocol == UpstreamProtocol::H2;
    let tls = upstream_tls(config, name, up, h2)?;
    let admission = up.max_in_flight.as_ref().map(|max| {
        let settings = AdmissionSettings {
            max_in_flight: *max.get_ref(),
            queue_size: up.queue_size.as_ref().map_or(DEFAULT_QUEUE_SIZE, |q| *q.get_ref()),
            queue_timeout: up.queue_timeout.map_or(DEFAULT_QUEUE_TIMEOUT, |d| d.0),
        };
        old.and_then(|o| o.admission.clone())
            .filter(|a| a.settings == settings)
            .unwrap_or_else(|| Arc::new(Admission::new(settings, metrics.queue(name))))
    });
    let sticky = up.sticky.as_ref().map(|s| {
        let addresses: Vec<&str> = servers.iter().map(|s| &*s.address).collect();
        Sticky::new(s, name, &addresses)
    });
    let upstream = Upstream {
        sticky,
        name: name.into(),
        balancer: Balancer::new(
            *up.balancer.get_ref(),
            &servers.iter().map(|s| s.member()).collect::<Vec<_>>(),
            Options::of(up),
        ),
        balancer_kind: *up.balancer.get_ref(),
        servers: servers.into(),
        connect_timeout: up.connect_timeout.0,
        request_timeout: up.request_timeout.0,
        keepalive_timeout: up.keepalive_timeout.0,
        read_timeout: up.read_timeout.0,
        h2,
        tls,
        connection,
        health: HealthPolicy::new(up),
        retry_budget: RetryBudget::new(*up.retry_budget.get_ref()),
        retry_on: up.retry_on.as_ref().map_or(StatusSet::EMPTY, |r| *r.get_ref()),
        metrics: metrics.upstream(name, server_latency),
        server_histograms: up.server_histograms,
        admission,
        failure_log: Default::default(),
    };
    Ok(upstream)
}

/// The servers one configured `address` of upstream `up` stands for, as (metric
/// label, socket address): a discovered name is one server per address in its answer
/// (recorded in `answers`); any other address is one server, resolved once here. The
/// error is why the name did not resolve.
fn server_addresses(
    config: &Config,
    up: &UpstreamConfig,
    configured: &str,
    previous: Option<&Runtime>,
    fresh: &Answers,
    answers: &mut Answers,
) -> Result<Vec<(String, SocketAddr)>, String> {
    if !discovery::is_discovered(up, configured) {
        return Ok(vec![(configured.to_string(), resolve(configured)?)]);
    }
    let addrs = match fresh.get(configured).or_else(|| previous.and_then(|p| p.answers.get(configured))) {
        Some(addrs) => addrs.clone(),
        None => discovery::lookup_blocking(discovery::nameserver(config), configured)
            .map_err(|e| e.to_string())?,
    };
    let labelled = addrs.iter().map(|a| (discovery::label(configured, *a), *a)).collect();
    answers.insert(configured.to_string(), addrs);
    Ok(labelled)
}

/// The state of a server: carried over from `was`, the same address in the previous
/// upstream `old` (with a fresh pool when the `connection` settings changed), or new.
fn server_state(
    old: Option<&Arc<Upstream>>,
    was: Option<&Arc<Server>>,
    connection: &ConnectionSettings,
    keepalive: usize,
    reloading: bool,
) -> Arc<ServerState> {
    match (old, was) {
        (Some(o), Some(x)) if o.connection == *connection => x.state.clone(),
        (_, Some(x)) => Arc::new(x.state.with_new_pool(keepalive)),
        // A server added by a reload is new traffic-wise: it slow-starts.
        _ => {
            let joined = if reloading { crate::clock::now_ms() } else { 0 };
            Arc::new(ServerState::new(keepalive, joined))
        }
    }
}

/// The counts of a server: carried over from `was`, the same address in the previous
/// upstream, while its latencies still go where `server_histograms` says (its own
/// histogram, or `upstream_latency`); else new.
fn server_metrics(
    metrics: &Metrics,
    upstream: &str,
    was: Option<&Arc<Server>>,
    server_histograms: bool,
    upstream_latency: &Arc<Latency>,
) -> Arc<ServerMetrics> {
    let shares_upstream = |m: &ServerMetrics| Arc::ptr_eq(&m.duration, upstream_latency);
    match was {
        Some(x) if shares_upstream(&x.metrics) != server_histograms => x.metrics.clone(),
        _ => {
            let duration = if server_histograms { Arc::default() } else { upstream_latency.clone() };
            Arc::new(metrics.server(upstream, duration))
        }
    }
}

/// The TLS client side of upstream `name`, when it speaks TLS.
fn upstream_tls(
    config: &Config,
    name: &str,
    up: &UpstreamConfig,
    h2: bool,
) -> Result<Option<UpstreamTls>, BuildError> {
    if !up.tls {
        return Ok(None);
    }
    let ca = up.ca_file.as_ref().map(|f| config.base_dir.join(f.get_ref()));
    let client = tls::client_config(ca.as_deref(), h2, &format!("upstreams.{name}.ca_file"))
        .map_err(|e| tls_error(config, up.ca_file.as_ref().map(Spanned::span), e))?;
    Ok(Some(UpstreamTls {
        connector: tokio_rustls::TlsConnector::from(client),
        name: up.sni.as_ref().map(|n| server_name(n.get_ref())),
    }))
}

/// One route, ready to match: its action (forward or answer) and its shaping.
fn build_route(
    r: &RouteConfig,
    upstreams: &HashMap<Box<str>, Arc<Upstream>>,
    limiters: &HashMap<Box<str>, Arc<Limiter>>,
    caches: &HashMap<Box<str>, Arc<Cache>>,
    metrics: &Metrics,
) -> Route {
    let methods = r.methods.as_ref().map(|ms| ms.iter().map(|m| m.get_ref().0.clone()).collect());
    let prefix: Box<str> = r.path_prefix.as_ref().map_or("/", |p| p.get_ref()).into();
    // Validation guarantees exactly one action and that named things exist.
    let upstream = r.upstream.as_ref().and_then(|u| upstreams.get(u.get_ref().as_str()));
    let action = match (upstream, &r.redirect, &r.respond) {
        (Some(upstream), _, _) => Action::Proxy(Proxy {
            upstream: upstream.clone(),
            limiter: r.rate_limit.as_ref().and_then(|l| limiters.get(l.get_ref().as_str()).cloned()),
            rewrite: match (&r.rewrite, r.strip_prefix) {
                (Some(to), _) => {
                    Some(PathRewrite { prefix_len: prefix.len(), to: to.get_ref().as_str().into() })
                }
                (None, true) => Some(PathRewrite { prefix_len: prefix.len(), to: "".into() }),
                (None, false) => None,
            },
            request_headers: r.request_headers.as_ref().map(HeaderRules::new),
            request_timeout: r.request_timeout.map_or(upstream.request_timeout, |d| d.0),
            max_request_body: r.max_request_body.as_ref().map(|m| m.get_ref().0),
            cache: r
                .cache
                .as_ref()
                .and_then(|c| caches.get(c.get_ref().as_str()).cloned())
                .map(|cache| cache::RouteCache { cache, route: cache::route_identity(r) }),
            upgrades: r
                .upgrades
                .as_ref()
                .map_or_else(Upgrades::default, |u| Upgrades::new(u.iter().map(|p| p.get_ref()))),
        }),
        (None, redirect, respond) => {
            let what = match (redirect, respond) {
                (Some(redirect), _) => LocalAnswer::redirect(redirect),
                (None, Some(respond)) => LocalAnswer::respond(respond),
                (None, None) => LocalAnswer::status(http::StatusCode::NOT_FOUND),
            };
            // A local route has no upstream to be named after: its prefix stands in.
            let route = r.name.as_ref().map_or(&*prefix, |n| n.get_ref().as_str());
            Action::Answer(Local { what, answered: metrics.local(route) })
        }
    };
    let label =
        r.name.as_ref().map(|n| n.get_ref().as_str()).or(r.upstream.as_ref().map(|u| u.get_ref().as_str()));
    let access = AccessList::new(
        &r.allow,
        &r.deny,
        metrics.access_denied_total.with_label_values(&[label.unwrap_or("")]),
    );
    let response_headers = r.response_headers.as_ref().map(HeaderRules::new);
    let request_headers = match &action {
        Action::Proxy(p) => p.request_headers.as_ref(),
        Action::Answer(_) => None,
    };
    let uses = |var: Var| request_headers.into_iter().chain(response_headers.as_ref()).any(|h| h.uses(var));
    let hashes_client = matches!(&action, Action::Proxy(p) if p.upstream.balancer.uses_client_ip());
    let needs_client_ip = access.is_some() || uses(Var::ClientIp) || hashes_client;
    let request_id = r.request_id || uses(Var::RequestId);
    Route {
        prefix,
        methods,
        // The caller knows the listener slots.
        listeners: u64::MAX,
        action,
        access,
        response_headers,
        request_id,
        needs_client_ip,
    }
}

/// Resolves `host:port` once, at build time.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    address.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or_else(|| "no addresses found".into())
}

/// A certificate, key or CA file that cannot be used, at `span`: the value naming it.
fn tls_error(config: &Config, span: Option<std::ops::Range<usize>>, e: TlsError) -> BuildError {
    let message = match e.file.as_os_str().is_empty() {
        true => e.reason,
        false => format!("cannot use `{}`: {}", e.file.display(), e.reason),
    };
    config.origin.error(span, &e.key, message).into()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod health_tests;
