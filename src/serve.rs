//! `enawatch serve`: wires a source, the sampler thread and the HTTP server together, and
//! stops them on SIGTERM/SIGINT.

use std::net::TcpListener;
use std::sync::{mpsc, Arc};

use anyhow::Context as _;
use tracing::info;

use crate::config::{Config, ConfigError, HumanDuration};
use crate::history::Store;
use crate::http::{self, AppState};
use crate::metrics::Options;
use crate::sampler::{Sampler, Settings};
use crate::source::live::{LiveSource, Selection};
use crate::source::Source;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration (including the listen address) is unusable: exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Anything else: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Binds the listen address, or says why it cannot be used.
pub fn bind(config: &Config) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(config.listen).map_err(|err| ConfigError::Invalid {
        field: "listen",
        value: config.listen.to_string(),
        problem: format!("cannot be listened on: {err}"),
    })
}

/// Runs the agent on the live source until a termination signal.
pub fn run(config: &Config) -> Result<(), ServeError> {
    let listener = bind(config)?;
    let selection = Selection {
        include: config.device_include.clone(),
        exclude: config.device_exclude.clone(),
        eni: config.eni.clone(),
    };
    let source = LiveSource::new(selection, config.rediscover_interval, config.interval)
        .context("cannot open a socket for the ethtool ioctl")?;
    run_with(config, listener, Box::new(source))
}

/// Runs the agent on any source.
pub fn run_with(config: &Config, listener: TcpListener, source: Box<dyn Source>) -> Result<(), ServeError> {
    let store = Arc::new(Store::new(config.history_points()));
    let settings = Settings {
        interval: config.interval,
        compat_stats: config.compat_stats.clone(),
        forget_after_ms: i64::try_from(config.history.as_millis()).unwrap_or(i64::MAX),
    };
    let (stop, stopped) = mpsc::channel();
    let sampler = Sampler::new(source, settings, Arc::clone(&store))
        .spawn(stopped)
        .context("cannot start the sampler thread")?;
    let state = Arc::new(AppState {
        store,
        metrics: Options { compat: config.compat.clone(), interval: config.interval },
    });
    info!(
        listen = %listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
        interval = %HumanDuration(config.interval),
        history = %HumanDuration(config.history),
        "serving /metrics"
    );

    // One thread serves HTTP: scrapes are rare and cheap, and the sampler has its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        tokio::select! {
            r = http::serve(listener, http::app(state)) => r.context("HTTP server failed"),
            signal = termination() => {
                info!(signal, "stopping");
                Ok(())
            }
        }
    });
    drop(stop);
    let _ = sampler.join();
    // Connections still open are dropped with the runtime, without waiting for them.
    runtime.shutdown_background();
    Ok(result?)
}

/// Resolves on SIGTERM or SIGINT, with the signal's name.
async fn termination() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers, the default disposition terminates the process anyway.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
