//! The process lifecycle: bind every listener, serve until told to stop, then stop
//! accepting and drain in-flight requests for up to `shutdown_timeout`. Also reload:
//! a new config becomes a new `Runtime` swapped in whole, or is refused and counted
//! while the old one keeps serving.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{self, Config, ConfigError};
use crate::listener::{bind_tcp, Listener};
use crate::metrics::Metrics;
use crate::runtime::{BuildError, Runtime, SharedRuntime};

/// Why weir could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: String, addr: String, source: std::io::Error },
}

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Bound listeners and the runtime they serve, ready to run.
pub struct Server {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Builds the runtime and binds every listener; nothing is served yet.
    pub fn bind(config: &Config, metrics: Arc<Metrics>) -> Result<Server, StartError> {
        let runtime = Runtime::build(config, None, &metrics)?;
        runtime.start_health();
        let mut listeners = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            let active = metrics.connections_active.with_label_values(&[l.name.get_ref()]);
            let listener = Listener::bind(l, index, active).map_err(|source| StartError::Bind {
                what: format!("listener `{}`", l.name.get_ref()),
                addr: l.listen.get_ref().clone(),
                source,
            })?;
            listeners.push(listener);
        }
        let admin = match &config.admin {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a.listen.get_ref().parse().map_err(|e| StartError::Bind {
                    what: "admin".into(),
                    addr: a.listen.get_ref().clone(),
                    source: std::io::Error::other(e),
                })?;
                let socket = bind_tcp(addr).map_err(|source| StartError::Bind {
                    what: "admin".into(),
                    addr: a.listen.get_ref().clone(),
                    source,
                })?;
                Some(socket)
            }
        };
        Ok(Server {
            runtime: Arc::new(ArcSwap::from_pointee(runtime)),
            metrics,
            listeners,
            admin,
            shutdown_timeout: config.shutdown_timeout.0,
        })
    }

    /// The bound address of each listener, in config order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// The bound admin address, if there is an admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// A handle that reloads this server's config from `path`.
    pub fn reloader(&self, path: PathBuf) -> Reloader {
        Reloader { runtime: self.runtime.clone(), metrics: self.metrics.clone(), path }
    }

    /// Serves until `shutdown` completes, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let mut accepting = Vec::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listener = %listener.name, %addr, "listening");
            }
            accepting.push(tokio::spawn(listener.serve(
                self.runtime.clone(),
                tracker.clone(),
                stop_rx.clone(),
            )));
        }
        let admin_state = Arc::new(AdminState { metrics: self.metrics.clone(), ready: false.into() });
        if let Some(socket) = self.admin {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(%addr, "admin listening");
            }
            tokio::spawn(admin::serve(socket, admin_state.clone(), stop_rx.clone()));
        }
        admin_state.ready.store(true, Relaxed);

        shutdown.await;
        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down: draining in-flight requests");
        admin_state.ready.store(false, Relaxed);
        let _ = stop_tx.send(true);
        for task in accepting {
            let _ = task.await;
        }
        tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, tracker.wait()).await.is_err() {
            tracing::warn!(open = tracker.len(), "shutdown timeout reached with connections still open");
        } else {
            tracing::info!("drained");
        }
    }
}

/// Reloads the config file into a new runtime.
#[derive(Clone)]
pub struct Reloader {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    path: PathBuf,
}

impl Reloader {
    /// Loads, validates and builds the config, then swaps it in whole. On any error
    /// the running config stays. Either way the result is counted.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = self.try_reload(&self.path);
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics.config_reloads_total.with_label_values(&[label]).inc();
        result
    }

    fn try_reload(&self, path: &Path) -> Result<(), ReloadError> {
        let config = config::load(path)?;
        let old = self.runtime.load_full();
        let new = Runtime::build(&config, Some(&old), &self.metrics)?;
        new.start_health();
        self.runtime.store(Arc::new(new));
        // Requests still running on the old runtime finish there, but its checks stop
        // now so each server is probed by one task.
        old.health.stop();
        Ok(())
    }
}
