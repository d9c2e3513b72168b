//! The process lifecycle: bind every listener, serve until told to stop, then stop
//! accepting and drain in-flight requests for up to `shutdown_timeout`. Also reload:
//! a new config becomes a new `Runtime` swapped in whole, or is refused and counted
//! while the old one keeps serving. A reload binds listeners the new config adds,
//! closes the ones it drops (their open connections finish their requests first) and
//! applies changed limits to the ones it keeps. The admin listener stays as started
//! (its `hosts` and token are in the runtime, so they follow reloads).
//!
//! A binary upgrade (`handover`) starts a process on sockets inherited from the one
//! it replaces: `bind_inheriting` uses them where a listener's name and address
//! match, and `handover_sockets` gives this process's sockets to its successor.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{self, Config, ConfigError};
use crate::listener::{bind_tcp, Gauges, Listener, Settings};
use crate::metrics::Metrics;
use crate::runtime::{BuildError, Runtime, SharedRuntime};
use crate::upstream::discovery::{self, Answers};

/// Why weir could not start, or a reload could not bind a new listener.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener that cannot be bound, at its `listen` value. The OS error is in the
    /// message only (not a source too), so it is printed once.
    #[error(transparent)]
    Bind(ConfigError),
}

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Bind(#[from] StartError),
    #[error("the reload panicked: {0}")]
    Panicked(String),
}

/// Bound listeners and the runtime they serve, ready to run.
pub struct Server {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    listeners: Arc<Mutex<Listeners>>,
    admin: Option<TcpListener>,
    /// `[admin] header_read_timeout`.
    admin_timeout: Duration,
    shutdown_timeout: Duration,
}

/// The client listeners, by name. Locked only to start, reload and stop.
struct Listeners {
    entries: HashMap<String, Entry>,
    /// Every client connection, so shutdown can wait for them.
    tracker: TaskTracker,
    runtime: SharedRuntime,
    /// Whether `run` has started: before it, bound listeners wait in `pending`.
    serving: bool,
    /// The config the runtime was last built from, for rebuilds on new DNS answers.
    config: Config,
    /// DNS discovery, one task per upstream with `resolve`; started by `run`.
    discovery: discovery::Tasks,
    /// Sockets handed over by the process this one replaces, by listener name: used
    /// instead of binding when the address is the same.
    inherited: HashMap<String, std::net::TcpListener>,
}

struct Entry {
    listen: String,
    addr: Option<SocketAddr>,
    settings: Arc<ArcSwap<Settings>>,
    stop: watch::Sender<bool>,
    pending: Option<Listener>,
    task: Option<JoinHandle<()>>,
    /// A duplicate of the listening socket, to hand to a process taking over;
    /// closed when shutdown starts, so the port then refuses.
    #[cfg(unix)]
    handover: Option<std::os::fd::OwnedFd>,
}

impl Listeners {
    /// Binds what `config` adds or moves; changes nothing on error.
    fn bind_new(
        &mut self,
        config: &Config,
        runtime: &Runtime,
        metrics: &Metrics,
    ) -> Result<Vec<Listener>, StartError> {
        let mut bound = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let name = l.name.get_ref();
            if self.entries.get(name).is_some_and(|e| e.listen == *l.listen.get_ref()) {
                continue;
            }
            let slot = runtime.listener_slot(name).expect("build gives every configured listener a slot");
            let gauges = Gauges {
                active: metrics.connections_active.with_label_values(&[name]),
                tunnels: metrics.tunnels_active.with_label_values(&[name]),
            };
            let error = |e: std::io::Error| {
                let why = format!("listener `{name}` cannot listen on {}: {e}", l.listen.get_ref());
                StartError::Bind(config.origin.error(
                    Some(l.listen.span()),
                    &format!("listeners[{i}].listen"),
                    why,
                ))
            };
            let listener = match inherit(&mut self.inherited, name, l.listen.get_ref()) {
                Some(socket) => Listener::on(l, slot, gauges, socket).map_err(error)?,
                None => Listener::bind(l, slot, gauges).map_err(error)?,
            };
            bound.push(listener);
        }
        Ok(bound)
    }

    /// Makes the running set match `config`: new listeners start, dropped ones stop,
    /// kept ones take the new limits.
    fn apply(&mut self, config: &Config, bound: Vec<Listener>) {
        let mut bound: HashMap<String, Listener> = bound.into_iter().map(|l| (l.name.clone(), l)).collect();
        self.entries.retain(|name, entry| {
            let keep = config
                .listeners
                .iter()
                .any(|l| l.name.get_ref() == name && *l.listen.get_ref() == entry.listen);
            if !keep {
                tracing::info!(listener = %name, addr = %entry.listen, "closing listener");
                let _ = entry.stop.send(true);
            }
            keep
        });
        for l in &config.listeners {
            let name = l.name.get_ref();
            match (self.entries.get(name), bound.remove(name)) {
                (Some(entry), None) => {
                    entry.settings.store(Arc::new(Settings::reload(l, &entry.settings.load())));
                    #[cfg(unix)]
                    if let Some(socket) = &entry.handover {
                        crate::listener::set_defer_accept(socket, l.defer_accept);
                    }
                }
                (_, Some(listener)) => {
                    let (stop, _) = watch::channel(false);
                    #[cfg(unix)]
                    let handover =
                        std::os::fd::AsFd::as_fd(listener.socket.get_ref()).try_clone_to_owned().ok();
                    let mut entry = Entry {
                        listen: l.listen.get_ref().clone(),
                        addr: listener.local_addr().ok(),
                        settings: listener.settings.clone(),
                        stop,
                        pending: Some(listener),
                        task: None,
                        #[cfg(unix)]
                        handover,
                    };
                    if self.serving {
                        self.start(&mut entry);
                    }
                    self.entries.insert(name.clone(), entry);
                }
                (None, None) => {}
            }
        }
    }

    fn start(&self, entry: &mut Entry) {
        if let Some(listener) = entry.pending.take() {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listener = %listener.name, %addr, "listening");
            }
            let serving = listener.serve(self.runtime.clone(), self.tracker.clone(), entry.stop.subscribe());
            entry.task = Some(tokio::spawn(serving));
        }
    }
}

/// Frees a runtime a reload replaced here, on the blocking pool, rather than on the
/// serving thread that ends the last request holding it: at thousands of servers that
/// is thousands of frees. Requests hold a runtime only while they run, so a short wait
/// usually does; a longer one (a tunnel, a slow download) frees it when it ends. Then
/// glibc is asked to hand freed pages back: it keeps them in per-thread arenas, and
/// RSS would settle at twice its level after a few reloads of a large config. Last,
/// the code pages the reload faulted in (config parsing, the build) are dropped again,
/// as at start.
fn release(old: Arc<Runtime>) {
    for _ in 0..50 {
        if Arc::strong_count(&old) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(old);
    crate::heap::give_back();
    crate::heap::release_code();
}

/// Takes the inherited socket for listener `name` if it is bound to `listen`.
fn inherit(
    inherited: &mut HashMap<String, std::net::TcpListener>,
    name: &str,
    listen: &str,
) -> Option<std::net::TcpListener> {
    let socket = inherited.remove(name)?;
    let same = listen.parse::<SocketAddr>().ok().is_some_and(|want| socket.local_addr().ok() == Some(want));
    same.then_some(socket)
}

impl Server {
    /// Builds the runtime and binds every listener; nothing is served yet.
    pub fn bind(config: &Config, metrics: Arc<Metrics>) -> Result<Server, StartError> {
        Server::bind_inheriting(config, metrics, HashMap::new(), None)
    }

    /// `bind`, serving on sockets handed over by the process this one replaces
    /// (`handover`) where a listener's name and address match, the admin listener's
    /// where its address does; the rest are bound. Unused ones are closed.
    pub fn bind_inheriting(
        config: &Config,
        metrics: Arc<Metrics>,
        listeners: HashMap<String, std::net::TcpListener>,
        admin: Option<std::net::TcpListener>,
    ) -> Result<Server, StartError> {
        let runtime = Runtime::build(config, None, &metrics)?;
        runtime.start_tasks();
        let admin = match &config.admin {
            None => None,
            Some(a) => {
                let error = |e: std::io::Error| {
                    let why = format!("the admin listener cannot listen on {}: {e}", a.listen.get_ref());
                    StartError::Bind(config.origin.error(Some(a.listen.span()), "admin.listen", why))
                };
                let addr: SocketAddr =
                    a.listen.get_ref().parse().map_err(|e| error(std::io::Error::other(e)))?;
                if let Some(warning) = admin::exposure_warning(a) {
                    tracing::warn!("{warning}");
                }
                match admin.filter(|s| s.local_addr().ok() == Some(addr)) {
                    Some(socket) => Some(TcpListener::from_std(socket).map_err(error)?),
                    None => Some(bind_tcp(addr).map_err(error)?),
                }
            }
        };
        let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(runtime));
        let inherited = listeners;
        let mut listeners = Listeners {
            entries: HashMap::new(),
            tracker: TaskTracker::new(),
            runtime: runtime.clone(),
            serving: false,
            config: config.clone(),
            discovery: discovery::Tasks::default(),
            inherited,
        };
        let bound = listeners.bind_new(config, &runtime.load(), &metrics)?;
        listeners.apply(config, bound);
        listeners.inherited.clear();
        Ok(Server {
            runtime,
            metrics,
            listeners: Arc::new(Mutex::new(listeners)),
            admin,
            admin_timeout: config.admin.as_ref().map_or(Duration::from_secs(10), |a| a.header_read_timeout.0),
            shutdown_timeout: config.shutdown_timeout.0,
        })
    }

    /// The bound address of each listener, in config order.
    pub fn listener_addrs(&self, config: &Config) -> Vec<SocketAddr> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        config.listeners.iter().filter_map(|l| listeners.entries.get(l.name.get_ref())?.addr).collect()
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        Reloader::addr_in(&self.listeners, name)
    }

    /// The bound admin address, if there is an admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The current listening sockets (duplicates), named for `handover`: what a
    /// process taking over from this one receives. Listeners follow reloads.
    #[cfg(unix)]
    pub fn handover_sockets(&self) -> impl Fn() -> Vec<(String, std::os::fd::OwnedFd)> + Send + 'static {
        use std::os::fd::AsFd;
        let listeners = Arc::downgrade(&self.listeners);
        let admin = self.admin.as_ref().and_then(|a| a.as_fd().try_clone_to_owned().ok());
        move || {
            let mut sockets = Vec::new();
            if let Some(listeners) = listeners.upgrade() {
                let listeners = listeners.lock().unwrap_or_else(|e| e.into_inner());
                for (name, entry) in &listeners.entries {
                    if let Some(fd) = entry.handover.as_ref().and_then(|fd| fd.try_clone().ok()) {
                        sockets.push((format!("listener {name}"), fd));
                    }
                }
            }
            if let Some(fd) = admin.as_ref().and_then(|fd| fd.try_clone().ok()) {
                sockets.push(("admin".to_string(), fd));
            }
            sockets
        }
    }

    /// A handle that reloads this server's config from `path`.
    pub fn reloader(&self, path: PathBuf) -> Reloader {
        Reloader {
            runtime: self.runtime.clone(),
            metrics: self.metrics.clone(),
            listeners: self.listeners.clone(),
            path,
        }
    }

    /// Serves until `shutdown` completes, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let tracker = {
            let mut set = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            set.serving = true;
            let mut entries = std::mem::take(&mut set.entries);
            for entry in entries.values_mut() {
                set.start(entry);
            }
            set.entries = entries;
            let apply = rediscover(&self.runtime, &self.metrics, &self.listeners);
            let config = set.config.clone();
            set.discovery.reconcile(&config, &known(&self.runtime), &apply);
            set.tracker.clone()
        };
        let admin_state = Arc::new(AdminState {
            metrics: self.metrics.clone(),
            runtime: self.runtime.clone(),
            ready: false.into(),
        });
        if let Some(socket) = self.admin {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(%addr, "admin listening");
            }
            tokio::spawn(admin::serve(socket, admin_state.clone(), self.admin_timeout, admin_stop_rx));
        }
        admin_state.ready.store(true, Relaxed);
        #[cfg(unix)]
        crate::notify::ready("serving");

        shutdown.await;
        #[cfg(unix)]
        crate::notify::stopping();
        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down: draining in-flight requests");
        admin_state.ready.store(false, Relaxed);
        let accepting: Vec<JoinHandle<()>> = {
            let mut set = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            set.serving = false;
            set.discovery.stop();
            set.entries
                .values_mut()
                .filter_map(|entry| {
                    let _ = entry.stop.send(true);
                    #[cfg(unix)]
                    {
                        entry.handover = None;
                    }
                    entry.task.take()
                })
                .collect()
        };
        for task in accepting {
            let _ = task.await;
        }
        tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, tracker.wait()).await.is_err() {
            tracing::warn!(open = tracker.len(), "shutdown timeout reached with connections still open");
        } else {
            tracing::info!("drained");
        }
        // The admin listener stops only now: through the drain `/healthz` must still
        // answer 200, `/readyz` 503 and `/metrics` show the requests finishing.
        // Stopping it with the client listeners made all three refuse connections
        // while the process was still running.
        let _ = admin_stop.send(true);
    }
}

/// The `discovery::Known` of this server: the answers its current runtime was built
/// with.
fn known(runtime: &SharedRuntime) -> discovery::Known {
    let runtime = runtime.clone();
    Arc::new(move |address: &str, addrs: &[SocketAddr]| {
        runtime.load().answers.get(address).is_some_and(|known| known == addrs)
    })
}

/// The `discovery::Apply` of this server: rebuilds the runtime from the current
/// config with a new answer set for one discovered address (as a reload would, but
/// without reading the file), carrying server state over by address. Holds the
/// listeners weakly, so a stopped server is not kept alive by its tasks.
fn rediscover(
    runtime: &SharedRuntime,
    metrics: &Arc<Metrics>,
    listeners: &Arc<Mutex<Listeners>>,
) -> discovery::Apply {
    let (runtime, metrics) = (runtime.clone(), metrics.clone());
    let listeners: Weak<Mutex<Listeners>> = Arc::downgrade(listeners);
    Arc::new(move |address: &str, addrs| {
        let Some(listeners) = listeners.upgrade() else { return };
        // The reload lock: a rebuild never interleaves with a reload.
        let listeners = listeners.lock().unwrap_or_else(|e| e.into_inner());
        let old = runtime.load_full();
        let fresh = Answers::from([(address.to_string(), addrs)]);
        match Runtime::build_with(&listeners.config, Some(&old), &metrics, &fresh) {
            Ok(new) => {
                new.start_tasks();
                runtime.store(Arc::new(new));
                old.tasks.stop();
            }
            Err(error) => {
                tracing::error!(%error, "rebuilding for new DNS answers failed; the old servers keep serving")
            }
        }
    })
}

/// Reloads the config file into a new runtime.
#[derive(Clone)]
pub struct Reloader {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    listeners: Arc<Mutex<Listeners>>,
    path: PathBuf,
}

impl Reloader {
    /// Loads, validates and builds the config, binds any new listener, then swaps it
    /// all in. On any error the running config stays. Either way the result is
    /// counted.
    ///
    /// The work runs on tokio's blocking pool: building reads files and resolves
    /// names, which may take seconds, and on a request thread (the only one, with
    /// `workers = 1`) it would stall every request meanwhile.
    ///
    /// A service manager hears `RELOADING=1` first and `READY=1` at the end, with the
    /// outcome as its status (`crate::notify`).
    pub async fn reload(&self) -> Result<(), ReloadError> {
        #[cfg(unix)]
        crate::notify::reloading();
        let this = self.clone();
        let result = match tokio::task::spawn_blocking(move || this.reload_blocking()).await {
            Ok(result) => result,
            Err(e) => Err(ReloadError::Panicked(e.to_string())),
        };
        #[cfg(unix)]
        match &result {
            Ok(()) => crate::notify::ready("serving; config reloaded"),
            Err(e) => {
                crate::notify::ready(&format!("serving; reload refused, the old config keeps serving: {e}"))
            }
        }
        result
    }

    /// `reload` on the calling thread.
    pub fn reload_blocking(&self) -> Result<(), ReloadError> {
        let result = self.try_reload();
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics.config_reloads_total.with_label_values(&[label]).inc();
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let config = config::load(&self.path)?;
        // One reload at a time: the lock also keeps listener changes in step.
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.runtime.load_full();
        let new = Runtime::build(&config, Some(&old), &self.metrics)?;
        let bound = listeners.bind_new(&config, &new, &self.metrics)?;
        new.start_tasks();
        self.runtime.store(Arc::new(new));
        // Requests still running on the old runtime finish there, but its checks stop
        // now so each server is probed by one task.
        old.tasks.stop();
        listeners.apply(&config, bound);
        if listeners.serving {
            let apply = rediscover(&self.runtime, &self.metrics, &self.listeners);
            listeners.discovery.reconcile(&config, &known(&self.runtime), &apply);
        }
        listeners.config = config;
        drop(listeners);
        release(old);
        Ok(())
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        Self::addr_in(&self.listeners, name)
    }

    fn addr_in(listeners: &Mutex<Listeners>, name: &str) -> Option<SocketAddr> {
        listeners.lock().unwrap_or_else(|e| e.into_inner()).entries.get(name)?.addr
    }

    /// Reloads whenever the config file's modification time or size changes,
    /// checking every `every`. Runs until the process ends.
    pub async fn watch(self, every: Duration) {
        let stamp = |path: &PathBuf| std::fs::metadata(path).ok().map(|m| (m.modified().ok(), m.len()));
        let mut last = stamp(&self.path);
        loop {
            tokio::time::sleep(every).await;
            let now = stamp(&self.path);
            if now == last {
                continue;
            }
            last = now;
            match self.reload().await {
                Ok(()) => tracing::info!(path = %self.path.display(), "config file changed: reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "config file changed but was refused; the old config keeps serving")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inherited_socket_is_used_only_under_its_name_and_address() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let mut inherited = HashMap::from([("web".to_string(), socket)]);
        assert!(inherit(&mut inherited, "api", &addr).is_none());
        assert!(inherit(&mut inherited, "web", &addr).is_some());
        // Taken once; a moved listener closes what it was handed.
        assert!(inherit(&mut inherited, "web", &addr).is_none());
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut inherited = HashMap::from([("web".to_string(), socket)]);
        assert!(inherit(&mut inherited, "web", "127.0.0.1:1").is_none());
        assert!(inherited.is_empty());
    }
}
