//! The `weir` binary: flags, logging, signals; load the config, bind, run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use weir::config::{self, Config};
use weir::handover;
use weir::metrics::Metrics;
use weir::runtime::Runtime;
use weir::server::Server;

/// An HTTP load-balancing reverse proxy.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to the TOML config file.
    #[arg(long, short, default_value = "weir.toml")]
    config: PathBuf,
    /// Validate the config, print a summary and exit (0 valid, 1 invalid).
    #[arg(long)]
    check: bool,
    /// Log level or filter (e.g. `debug`, `weir=trace`); overrides RUST_LOG.
    #[arg(long)]
    log_level: Option<String>,
    /// Log as JSON lines instead of plain text.
    #[arg(long)]
    log_json: bool,
    /// Listen on this Unix socket for a new weir taking over the listening sockets
    /// (binary upgrade); once it serves, this process drains and exits.
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets over from the weir whose `--upgrade-socket` is
    /// PATH instead of binding them, then have it drain and exit.
    #[arg(long, value_name = "PATH")]
    take_over: Option<PathBuf>,
}

#[global_allocator]
static ALLOCATOR: weir::heap::Allocator = weir::heap::Allocator;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match &args.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weir: bad log level: {e}");
            return ExitCode::from(1);
        }
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }

    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = config::load(&args.config)?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    if args.check {
        Runtime::build(&config, None, &metrics)?;
        print_summary(&args.config, &config);
        return Ok(());
    }
    // One arena per serving thread: the main thread serves when there is one worker,
    // else it only waits. Set before any thread starts (`weir::heap::share_arenas`).
    weir::heap::share_arenas(weir::heap::arenas_for(config.workers));
    // One worker runs on a current-thread runtime: no work stealing to pay for.
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.workers > 1 {
        builder.worker_threads(config.workers);
    } else {
        // The one worker is this thread.
        weir::heap::stash_here();
    }
    // Each serving thread keeps a few freed aligned blocks for the next connection
    // (`weir::heap::Allocator`), and gives them back when it ends.
    builder.on_thread_start(weir::heap::stash_here).on_thread_stop(weir::heap::release_stash);
    let tokio = builder.enable_all().build().context("starting the async runtime")?;
    let (inherited, old_process) = match &args.take_over {
        None => (handover::Sockets::default(), None),
        Some(path) => {
            let context = || format!("taking the listening sockets over from {}", path.display());
            let (sockets, control) = handover::take_over(path).with_context(context)?;
            (sockets, Some(control))
        }
    };
    tokio.block_on(async {
        let server = Server::bind_inheriting(&config, metrics, inherited.listeners, inherited.admin)?;
        weir::heap::release_code();
        let offer = match &args.upgrade_socket {
            None => None,
            Some(path) => Some(
                handover::Offer::bind(path)
                    .with_context(|| format!("listening for a hand-over on {}", path.display()))?,
            ),
        };
        // Bound and built: the old process may stop accepting. Until this one's
        // accept loops run, clients wait in the shared backlog.
        if let Some(old) = old_process {
            old.ready().context("telling the old process to drain")?;
        }
        let sockets = server.handover_sockets();
        let handed_over = async move {
            match offer {
                Some(offer) => {
                    if let Some(pid) = offer.handed_over(sockets).await {
                        weir::notify::main_pid(pid);
                    }
                }
                None => std::future::pending().await,
            }
        };
        let reloader = server.reloader(args.config.clone());
        if config.watch {
            tokio::spawn(reloader.clone().watch(std::time::Duration::from_secs(1)));
        }
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match reloader.reload().await {
                    Ok(()) => tracing::info!("config reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "config reload refused; the old config keeps serving")
                    }
                }
            }
        });
        let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        server
            .run(async move {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                    () = handed_over => {}
                }
            })
            .await;
        Ok(())
    })
}

fn print_summary(path: &std::path::Path, config: &Config) {
    // A closed stdout (`weir --check | head`) is not an error worth a panic.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: ok", path.display());
    for l in &config.listeners {
        let _ = writeln!(out, "  listener {} on {}", l.name.get_ref(), l.listen.get_ref());
    }
    if let Some(admin) = &config.admin {
        let _ = writeln!(out, "  admin on {}", admin.listen.get_ref());
        if let Some(warning) = weir::admin::exposure_warning(admin) {
            let _ = writeln!(out, "  warning: {warning}");
        }
    }
    let _ = writeln!(out, "  {}", count(config.routes.len(), "route"));
    for (name, up) in &config.upstreams {
        let (balancer, servers) = (up.balancer.get_ref().name(), count(up.servers.get_ref().len(), "server"));
        let _ = writeln!(out, "  upstream {name} ({balancer}, {servers})");
    }
}

/// `1 route`, `2 routes`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}
