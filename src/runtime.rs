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
use crate::config::{Config, RouteConfig, UpstreamProtocol};
use crate::discovery::{self, Answers};
use crate::health::{self, HealthPolicy};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::proxy::client::{server_name, tls_name, UpstreamTls};
use crate::proxy::client_ip::TrustedProxies;
use crate::proxy::retry::RetryBudget;
use crate::proxy::route::{Action, Proxy, Route, Router};
use crate::ratelimit::{Limiter, Settings, StoreSettings};
use crate::shaping::sticky::Sticky;
use crate::shaping::template::Var;
use crate::shaping::{AccessList, HeaderRules, LocalAnswer, PathRewrite};
use crate::tls::{self, TlsError};
use crate::upstream::{self, ConnectionSettings, Server, ServerState, Upstream};

/// The ready-to-serve form of one config.
pub struct Runtime {
    pub router: Router,
    pub upstreams: HashMap<Box<str>, Arc<Upstream>>,
    /// Response caches by name; a cache whose settings a reload leaves unchanged is
    /// the same `Arc`, store and all.
    pub caches: HashMap<Box<str>, Arc<Cache>>,
    /// Counts requests that matched no route (`upstream=""`).
    pub unrouted: UpstreamMetrics,
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
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// The access log writer, when `[access_log]` is enabled.
    pub access_log: Option<Arc<AccessLog>>,
    /// The DNS answers the discovered servers were built from (see `discovery`).
    pub answers: Arc<Answers>,
}

/// Default `queue_size` of an upstream with `max_in_flight`.
pub const DEFAULT_QUEUE_SIZE: usize = 256;
/// Default `queue_timeout` of an upstream with `max_in_flight`.
pub const DEFAULT_QUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a validated config still could not be turned into a runtime.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstreams.{upstream}: cannot resolve server `{address}`: {reason}")]
    Resolve { upstream: String, address: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("listeners: more than {max} different listener names since start; restart weir to reuse slots")]
    TooManyListeners { max: usize },
    #[error("rate_limits.{rate_limit}.store: {reason}")]
    Store { rate_limit: String, reason: String },
    #[error("access_log.path: cannot open `{path}`: {source}")]
    AccessLog { path: String, source: std::io::Error },
}

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
        let mut slots: Vec<Box<str>> = previous.map(|p| p.listener_slots.clone()).unwrap_or_default();
        for l in &config.listeners {
            if !slots.iter().any(|s| **s == **l.name.get_ref()) {
                slots.push(l.name.get_ref().as_str().into());
            }
        }
        if slots.len() > 64 {
            return Err(BuildError::TooManyListeners { max: 64 });
        }
        let slot_of = |name: &str| slots.iter().position(|s| &**s == name);
        let mut upstreams = HashMap::new();
        for (name, up) in &config.upstreams {
            let name = name.as_str();
            let old = previous.and_then(|p| p.upstreams.get(name));
            let connection = ConnectionSettings {
                h2: up.protocol == UpstreamProtocol::H2,
                tls: up.tls,
                sni: up.sni.as_ref().map(|n| n.get_ref().clone()),
                ca_file: up.ca_file.as_ref().map(|f| config.base_dir.join(f.get_ref())),
                keepalive: up.keepalive,
            };
            let mut servers = Vec::new();
            for s in up.servers.get_ref() {
                let configured = s.address.get_ref().as_str();
                // A discovered name is one server per address in its answer; any other
                // address is one server, resolved once here.
                let found: Vec<(String, SocketAddr)> = if discovery::is_discovered(up, configured) {
                    let addrs = match fresh
                        .get(configured)
                        .or_else(|| previous.and_then(|p| p.answers.get(configured)))
                    {
                        Some(addrs) => addrs.clone(),
                        None => discovery::lookup_blocking(discovery::nameserver(config), configured)
                            .map_err(|e| BuildError::Resolve {
                                upstream: name.into(),
                                address: configured.into(),
                                reason: e.to_string(),
                            })?,
                    };
                    let labelled = addrs.iter().map(|a| (discovery::label(configured, *a), *a)).collect();
                    answers.insert(configured.to_string(), addrs);
                    labelled
                } else {
                    vec![(configured.to_string(), resolve(name, configured)?)]
                };
                for (address, addr) in found {
                    let address = address.as_str();
                    let state = old
                        .and_then(|o| Some((o, o.servers.iter().find(|x| &*x.address == address)?)))
                        .map(|(o, x)| match o.connection == connection {
                            true => x.state.clone(),
                            false => Arc::new(x.state.with_new_pool(up.keepalive)),
                        })
                        // A server added by a reload is new traffic-wise: it slow-starts.
                        .unwrap_or_else(|| {
                            let joined = if previous.is_some() { health::now_ms() } else { 0 };
                            Arc::new(ServerState::new(up.keepalive, joined))
                        });
                    let server_metrics = metrics.server(name, address);
                    let server = Server {
                        address: address.into(),
                        addr,
                        tls_name: tls_name(configured),
                        weight: *s.weight.get_ref(),
                        backup: s.backup,
                        state,
                        metrics: server_metrics,
                    };
                    server.metrics.healthy.set(i64::from(server.is_healthy()));
                    servers.push(Arc::new(server));
                }
            }
            let h2 = up.protocol == UpstreamProtocol::H2;
            let tls = if up.tls {
                let ca = up.ca_file.as_ref().map(|f| config.base_dir.join(f.get_ref()));
                let client = tls::client_config(ca.as_deref(), h2, &format!("upstreams.{name}.ca_file"))?;
                Some(UpstreamTls {
                    connector: tokio_rustls::TlsConnector::from(client),
                    name: up.sni.as_ref().map(|n| server_name(n.get_ref())),
                })
            } else {
                None
            };
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
            let sticky = up.sticky.as_ref().map(|s| Sticky::new(s, name, &servers));
            let upstream = Upstream {
                sticky,
                name: name.into(),
                balancer: Balancer::new(*up.balancer.get_ref(), &servers, Options::of(up)),
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
                retry_on: up
                    .retry_on
                    .as_ref()
                    .and_then(|r| crate::config::parse_status_ranges(r.get_ref()).ok())
                    .unwrap_or_default()
                    .into(),
                metrics: metrics.upstream(name),
                admission,
            };
            upstreams.insert(Box::from(name), Arc::new(upstream));
        }

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
                            limiter.with_store(store, errors).map_err(|e| BuildError::Store {
                                rate_limit: name.clone(),
                                reason: e.to_string(),
                            })?
                        }
                    })
                }
            };
            limiters.insert(Box::from(name.as_str()), limiter);
        }

        let mut caches = HashMap::new();
        for (name, c) in &config.caches {
            let settings = cache::Settings::of(c);
            let kept =
                previous.and_then(|p| p.caches.get(name.as_str())).filter(|old| old.settings == settings);
            let cache = match kept {
                Some(old) => old.clone(),
                None => Cache::new(name, settings, metrics.cache(name)),
            };
            caches.insert(Box::from(name.as_str()), cache);
        }

        let mut router = Router::default();
        for r in &config.routes {
            let listeners = match &r.listeners {
                None => u64::MAX,
                Some(names) => {
                    names.iter().fold(0u64, |mask, n| mask | slot_of(n.get_ref()).map_or(0, |i| 1u64 << i))
                }
            };
            let mut route = build_route(r, &upstreams, &limiters, &caches, metrics);
            route.listeners = listeners;
            router.add(r.host.as_ref().map(|h| h.get_ref().as_str()), route);
        }
        let mut listener_tls = vec![None; slots.len()];
        for (i, l) in config.listeners.iter().enumerate() {
            if let (Some(t), Some(slot)) = (&l.tls, slot_of(l.name.get_ref())) {
                let key = format!("listeners[{i}].tls.certificates");
                let server = tls::server_config(t.certificates.get_ref(), &config.base_dir, &key)?;
                listener_tls[slot] = Some(tokio_rustls::TlsAcceptor::from(server));
            }
        }
        if let Some(previous) = previous {
            forget_removed_servers(previous, &upstreams, metrics);
        }
        let access_log = AccessLog::open(
            &config.access_log,
            previous.and_then(|p| p.access_log.as_ref()),
            &metrics.access_log_dropped_total,
        )
        .map_err(|source| BuildError::AccessLog {
            path: config.access_log.path.as_ref().map_or("(stderr)".into(), |p| p.get_ref().clone()),
            source,
        })?;
        Ok(Runtime {
            router,
            upstreams,
            caches,
            unrouted: metrics.upstream(""),
            tasks: Tasks::default(),
            access_log,
            tls: listener_tls,
            listener_slots: slots,
            limiters,
            trusted_proxies: TrustedProxies::new(&config.trusted_proxies),
            answers: Arc::new(answers),
        })
    }

    /// The stable slot of the listener called `name`.
    pub fn listener_slot(&self, name: &str) -> Option<usize> {
        self.listener_slots.iter().position(|s| &**s == name)
    }

    /// Starts the background tasks: each server's active health checks and each
    /// upstream's idle-pool sweep. They end when this runtime is dropped or
    /// `tasks.stop()` is called. Needs a tokio runtime.
    pub fn start_tasks(&self) {
        for upstream in self.upstreams.values() {
            self.tasks.spawn(upstream::keep_pools(upstream.clone()));
            for server in upstream.servers.iter() {
                if let Some(checks) = health::checks(upstream, server) {
                    self.tasks.spawn(checks);
                }
            }
        }
    }
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

/// One route, ready to match: its action (forward or answer) and its shaping.
fn build_route(
    r: &RouteConfig,
    upstreams: &HashMap<Box<str>, Arc<Upstream>>,
    limiters: &HashMap<Box<str>, Arc<Limiter>>,
    caches: &HashMap<Box<str>, Arc<Cache>>,
    metrics: &Metrics,
) -> Route {
    let methods = r.methods.as_ref().map(|ms| {
        ms.iter()
            .filter_map(|m| http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).ok())
            .collect()
    });
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
            cache: r.cache.as_ref().and_then(|c| caches.get(c.get_ref().as_str()).cloned()),
        }),
        (None, Some(redirect), _) => Action::Answer(
            LocalAnswer::redirect(redirect)
                .unwrap_or_else(|| LocalAnswer::status(http::StatusCode::NOT_FOUND)),
        ),
        (None, None, Some(respond)) => Action::Answer(
            LocalAnswer::respond(respond).unwrap_or_else(|| LocalAnswer::status(http::StatusCode::NOT_FOUND)),
        ),
        (None, None, None) => Action::Answer(LocalAnswer::status(http::StatusCode::NOT_FOUND)),
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

/// Stops exporting the gauges of servers the new config no longer has.
fn forget_removed_servers(
    previous: &Runtime,
    upstreams: &HashMap<Box<str>, Arc<Upstream>>,
    metrics: &Metrics,
) {
    for (name, old) in &previous.upstreams {
        let new = upstreams.get(name);
        for server in old.servers.iter() {
            if !new.is_some_and(|n| n.servers.iter().any(|s| s.address == server.address)) {
                metrics.forget_server(name, &server.address);
            }
        }
    }
}

/// Resolves `host:port` once, at build time.
fn resolve(upstream: &str, address: &str) -> Result<SocketAddr, BuildError> {
    let error =
        |reason: String| BuildError::Resolve { upstream: upstream.into(), address: address.into(), reason };
    if let Ok(addr) = address.parse() {
        return Ok(addr);
    }
    address
        .to_socket_addrs()
        .map_err(|e| error(e.to_string()))?
        .next()
        .ok_or_else(|| error("no addresses found".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use http::Request;
    use std::path::Path;

    fn runtime(text: &str) -> Runtime {
        let config = config::parse(text, Path::new("t.toml")).unwrap();
        Runtime::build(&config, None, &Metrics::new().unwrap()).unwrap()
    }

    const ROUTES: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[listeners]]
name = "internal"
listen = "127.0.0.1:0"

[[routes]]
upstream = "any"
[[routes]]
path_prefix = "/api/"
upstream = "any_api"
[[routes]]
host = "*.example.com"
path_prefix = "/api/"
upstream = "wild_api"
[[routes]]
host = "*.b.example.com"
upstream = "wild_b"
[[routes]]
host = "shop.example.com"
upstream = "exact"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "exact_api_read"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/"
upstream = "exact_api"
[[routes]]
path_prefix = "/admin/"
listeners = ["internal"]
upstream = "admin"

[upstreams.any]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.any_api]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.wild_api]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.wild_b]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.exact]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.exact_api_read]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.exact_api]
servers = [{ address = "127.0.0.1:1" }]
[upstreams.admin]
servers = [{ address = "127.0.0.1:1" }]
"#;

    fn route(rt: &Runtime, listener: usize, method: &str, host: &str, path: &str) -> String {
        let req = Request::builder().method(method).uri(path).header("host", host).body(()).unwrap();
        rt.router
            .route(listener, &req)
            .and_then(Route::upstream)
            .map_or("none".into(), |u| u.name.to_string())
    }

    #[test]
    fn routing_precedence_follows_the_spec() {
        let rt = runtime(ROUTES);
        assert_eq!(route(&rt, 0, "GET", "shop.example.com", "/api/x"), "exact_api_read");
        assert_eq!(route(&rt, 0, "POST", "shop.example.com", "/api/x"), "exact_api");
        assert_eq!(route(&rt, 0, "GET", "Shop.Example.COM:8080", "/other"), "exact");
        assert_eq!(route(&rt, 0, "GET", "x.b.example.com", "/api/x"), "wild_b");
        assert_eq!(route(&rt, 0, "GET", "x.example.com", "/api/x"), "wild_api");
        // A wildcard host whose prefixes do not fit falls through to any-host routes.
        assert_eq!(route(&rt, 0, "GET", "x.example.com", "/other"), "any");
        assert_eq!(route(&rt, 0, "GET", "example.com", "/api/x"), "any_api");
        assert_eq!(route(&rt, 0, "GET", "elsewhere", "/"), "any");
    }

    #[test]
    fn routes_compute_only_what_their_shaping_reads() {
        let text = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[[routes]]
path_prefix = "/ip/"
upstream = "app"
response_headers = { set = { X-Seen-From = "{client_ip}" } }
[[routes]]
path_prefix = "/id/"
upstream = "app"
request_headers = { set = { X-Trace = "t-{request_id}" } }
[[routes]]
path_prefix = "/acl/"
redirect = { to = "https://{host}{path}" }
deny = ["192.0.2.0/24"]
[upstreams.app]
servers = [{ address = "127.0.0.1:1" }]
"#;
        let rt = runtime(text);
        let route = |path: &str| rt.router.route(0, &Request::get(path).body(()).unwrap()).unwrap();
        let plain = route("/");
        assert!(!plain.needs_client_ip && !plain.request_id && plain.access.is_none());
        assert!(plain.response_headers.is_none());
        assert!(
            matches!(&plain.action, Action::Proxy(p) if p.rewrite.is_none() && p.request_headers.is_none())
        );
        assert!(route("/ip/").needs_client_ip && !route("/ip/").request_id);
        assert!(route("/id/").request_id && !route("/id/").needs_client_ip);
        let acl = route("/acl/");
        assert!(acl.needs_client_ip && acl.upstream().is_none());
        assert!(matches!(acl.action, Action::Answer(_)));
    }

    #[test]
    fn routes_can_be_limited_to_listeners() {
        let rt = runtime(ROUTES);
        assert_eq!(route(&rt, 1, "GET", "a", "/admin/x"), "admin");
        assert_eq!(route(&rt, 0, "GET", "a", "/admin/x"), "any");
    }

    #[test]
    fn no_match_gives_no_route() {
        let rt = runtime(&ROUTES.replace("[[routes]]\nupstream = \"any\"\n", ""));
        assert_eq!(route(&rt, 0, "GET", "a", "/nothing"), "none");
    }

    const LIMITED: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
rate_limit = "one"
[upstreams.app]
servers = [{ address = "127.0.0.1:1" }]
max_in_flight = 2
[rate_limits.one]
key = "global"
rate = 1
burst = 1
"#;

    #[test]
    fn limiters_and_queues_survive_a_rebuild_with_the_same_settings() {
        let metrics = Metrics::new().unwrap();
        let config = config::parse(LIMITED, Path::new("t.toml")).unwrap();
        let first = Runtime::build(&config, None, &metrics).unwrap();
        let second = Runtime::build(&config, Some(&first), &metrics).unwrap();
        assert!(Arc::ptr_eq(&first.limiters["one"], &second.limiters["one"]));
        let queue = |rt: &Runtime| rt.upstreams["app"].admission.clone().unwrap();
        assert!(Arc::ptr_eq(&queue(&first), &queue(&second)));
        let route_limiter = |rt: &Runtime| match &rt.router.route(0, &http::Request::new(())).unwrap().action
        {
            Action::Proxy(p) => p.limiter.clone(),
            Action::Answer(_) => None,
        };
        assert!(Arc::ptr_eq(&route_limiter(&second).unwrap(), &second.limiters["one"]));

        let changed = config::parse(
            &LIMITED.replace("burst = 1", "burst = 2").replace("= 2\n[rate", "= 3\n[rate"),
            Path::new("t.toml"),
        )
        .unwrap();
        let third = Runtime::build(&changed, Some(&second), &metrics).unwrap();
        assert!(!Arc::ptr_eq(&second.limiters["one"], &third.limiters["one"]));
        assert!(!Arc::ptr_eq(&queue(&second), &queue(&third)));
        assert_eq!(queue(&third).settings.max_in_flight, 3);
    }

    #[test]
    fn changed_connection_settings_give_a_fresh_pool_but_keep_health() {
        let config = config::parse(ROUTES, Path::new("t.toml")).unwrap();
        let metrics = Metrics::new().unwrap();
        let first = Runtime::build(&config, None, &metrics).unwrap();
        first.upstreams["any"].servers[0].set_healthy(false);
        let h2 = ROUTES.replace("[upstreams.any]\n", "[upstreams.any]\nprotocol = \"h2\"\n");
        let changed = config::parse(&h2, Path::new("t.toml")).unwrap();
        let second = Runtime::build(&changed, Some(&first), &metrics).unwrap();
        let (old, new) = (&first.upstreams["any"].servers[0], &second.upstreams["any"].servers[0]);
        assert!(!Arc::ptr_eq(&old.state, &new.state), "HTTP/1.1 connections must not serve an h2 upstream");
        assert!(!new.is_healthy(), "health survives");
    }

    #[test]
    fn server_state_survives_a_rebuild() {
        let config = config::parse(ROUTES, Path::new("t.toml")).unwrap();
        let metrics = Metrics::new().unwrap();
        let first = Runtime::build(&config, None, &metrics).unwrap();
        first.upstreams["any"].servers[0].set_healthy(false);
        let second = Runtime::build(&config, Some(&first), &metrics).unwrap();
        assert!(!second.upstreams["any"].servers[0].is_healthy());
        assert!(Arc::ptr_eq(
            &first.upstreams["any"].servers[0].state,
            &second.upstreams["any"].servers[0].state
        ));
    }

    #[test]
    fn a_cache_survives_a_rebuild_unless_its_settings_change() {
        let text = format!("{ROUTES}\n[caches.pages]\nmax_size = \"1MiB\"\n").replacen(
            "upstream = \"any\"\n",
            "upstream = \"any\"\ncache = \"pages\"\n",
            1,
        );
        let metrics = Metrics::new().unwrap();
        let build = |text: &str, previous| {
            Runtime::build(&config::parse(text, Path::new("t.toml")).unwrap(), previous, &metrics).unwrap()
        };
        let first = build(&text, None);
        let second = build(&text, Some(&first));
        assert!(Arc::ptr_eq(&first.caches["pages"], &second.caches["pages"]));
        let req = Request::builder().uri("/").header("host", "elsewhere").body(()).unwrap();
        let routed = match second.router.route(0, &req).map(|r| &r.action) {
            Some(Action::Proxy(p)) => p.cache.clone().unwrap(),
            _ => panic!("the route proxies"),
        };
        assert!(Arc::ptr_eq(&routed, &second.caches["pages"]));
        let third = build(&text.replace("\"1MiB\"", "\"2MiB\""), Some(&second));
        assert!(!Arc::ptr_eq(&second.caches["pages"], &third.caches["pages"]));
    }

    const DISCOVERED: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
[[routes]]
upstream = "app"
[upstreams.app]
resolve = "5s"
balancer = "consistent_hash"
hash_key = "path"
servers = [{ address = "backend.internal:8000" }, { address = "10.0.0.9:8000", backup = true }]
"#;

    fn answers(last_octets: &[u8]) -> Answers {
        let addrs = last_octets.iter().map(|o| SocketAddr::from(([10, 0, 0, *o], 8000))).collect();
        Answers::from([("backend.internal:8000".to_string(), addrs)])
    }

    /// Which server label each of 1000 keys goes to.
    fn placement(rt: &Runtime) -> Vec<String> {
        let up = &rt.upstreams["app"];
        (0..1000u64)
            .map(|k| {
                let key = crate::balancer::PickKey { hash: Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) };
                let i = up.balancer.pick(&key, |i| !up.servers[i].backup).unwrap();
                up.servers[i].address.to_string()
            })
            .collect()
    }

    #[test]
    fn discovered_servers_follow_the_answers_keeping_state_and_most_keys() {
        let config = config::parse(DISCOVERED, Path::new("t.toml")).unwrap();
        let metrics = Metrics::new().unwrap();
        let first = Runtime::build_with(&config, None, &metrics, &answers(&[1, 2, 3])).unwrap();
        let labels = |rt: &Runtime| {
            rt.upstreams["app"].servers.iter().map(|s| s.address.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            labels(&first),
            [
                "backend.internal:8000 (10.0.0.1)",
                "backend.internal:8000 (10.0.0.2)",
                "backend.internal:8000 (10.0.0.3)",
                "10.0.0.9:8000"
            ]
        );
        let two = |rt: &Runtime| rt.upstreams["app"].servers[1].clone();
        two(&first).set_healthy(false);
        let before = placement(&first);

        // 10.0.0.1 vanishes, 10.0.0.4 appears.
        let second = Runtime::build_with(&config, Some(&first), &metrics, &answers(&[2, 3, 4])).unwrap();
        assert_eq!(second.answers["backend.internal:8000"].len(), 3);
        let kept = &second.upstreams["app"].servers[0];
        assert_eq!(&*kept.address, "backend.internal:8000 (10.0.0.2)");
        assert!(Arc::ptr_eq(&kept.state, &two(&first).state), "health and pool not carried over");
        assert!(!kept.is_healthy());
        // Consistent hashing: a key moves only off the vanished address or onto the
        // new one, never between two servers that stayed.
        let after = placement(&second);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        for (b, a) in before.iter().zip(&after) {
            if !b.ends_with("(10.0.0.1)") && !a.ends_with("(10.0.0.4)") {
                assert_eq!(b, a, "a key moved between servers that both stayed");
            }
        }
        assert!((400..=900).contains(&moved), "{moved} of 1000 keys moved; about 5/9 expected (the leaver's third, and two thirds of the newcomer's)");

        // A rebuild without fresh answers (a reload) keeps the last ones.
        let third = Runtime::build(&config, Some(&second), &metrics).unwrap();
        assert_eq!(labels(&third), labels(&second));
    }
}
