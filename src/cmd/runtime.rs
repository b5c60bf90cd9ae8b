//! What the subcommands that sample share: the source the flags choose, the sampler running
//! on its thread with the local alerts, the listen socket, and the shutdown signal.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;

use crate::alerts::notify::Handle;
use crate::alerts::{self, Evaluator};
use crate::base::{wall_ms, ConfigError};
use crate::cmd::cli::{Failure, SourceArgs};
use crate::config::Config;
use crate::history::Store;
use crate::sampler::Sampler;
use crate::source::capture;
use crate::source::dns::DnsStats;
use crate::source::live::{LiveSource, Selection};
use crate::source::pods::Pods;
use crate::source::replay::{Playback, ReplaySource};
use crate::source::simulate::{Scenario, SimulatedSource};
use crate::source::Source;

/// A source and a sentence saying what it is, for the log.
pub(crate) struct Chosen {
    /// The source.
    pub source: Box<dyn Source>,
    /// e.g. "live", "replay of capture.txt", "simulation dns-storm".
    pub what: String,
    /// The DNS analysis the source feeds, when on.
    pub dns: Option<Arc<Mutex<DnsStats>>>,
    /// This node's pods by address, when pod attribution is on (the caller keeps it current).
    pub pods: Option<Arc<Mutex<Pods>>>,
}

/// Builds the source the flags ask for: a replay, a simulation, or this host's interfaces.
/// A capture or scenario that cannot be used is bad input (exit 2), before anything runs.
pub(crate) fn build_source(args: &SourceArgs, config: &Config) -> Result<Chosen, Failure> {
    if let Some(path) = &args.replay {
        let speed = args.speed.unwrap_or(1.0);
        if !(speed > 0.0 && speed.is_finite()) {
            return Err(Failure::BadInput(format!("speed: {speed} is not a positive number")));
        }
        let capture = load_capture(path, args.device.as_deref())?;
        let playback = Playback { speed, repeat: args.repeat, vanish: true };
        return Ok(Chosen {
            source: Box::new(ReplaySource::new(capture, playback)),
            what: format!("replay of {}", path.display()),
            dns: None,
            pods: None,
        });
    }
    if let Some(name) = &args.simulate {
        let scenario = Scenario::load(name).map_err(Failure::bad)?;
        // The scenario's pods and their lookups, through the agent's own DNS analysis.
        let (source, analysis) = SimulatedSource::with_lookups(scenario, config.dns.clone());
        let (dns, pods) = analysis.unzip();
        return Ok(Chosen { source: Box::new(source), what: format!("simulation {name}"), dns, pods });
    }
    let pods = config.pod_attribution.then(|| Arc::new(Mutex::new(Pods::default())));
    let dns =
        config.dns_analysis.then(|| Arc::new(Mutex::new(DnsStats::new(config.dns.clone(), pods.clone()))));
    let selection = Selection {
        include: config.device_include.clone(),
        exclude: config.device_exclude.clone(),
        eni: config.eni.clone(),
        linklocal: config.linklocal.clone(),
        dns: dns.clone(),
        extra_stats: config.extra_stats.clone(),
    };
    let live = LiveSource::new(selection, config.rediscover_interval, config.interval)
        .context("cannot open a socket for the ethtool ioctl")?;
    // The packet sockets are open: nothing the agent does from here needs a capability. This
    // thread is the only one so far (the tap's drops its own), so every thread started after
    // this holds none.
    if let Err(err) = crate::sys::caps::drop_all() {
        tracing::warn!(error = %err, "cannot give up capabilities; running with those granted");
    }
    Ok(Chosen { source: Box::new(live), what: "live".into(), dns, pods })
}

/// Reads and parses a capture file (`-`: standard input); errors name the file and line.
pub fn load_capture(path: &Path, device: Option<&str>) -> Result<capture::Capture, Failure> {
    let origin = path.display().to_string();
    let (text, mtime_ms) = if origin == "-" {
        let text =
            std::io::read_to_string(std::io::stdin()).map_err(|e| Failure::BadInput(format!("-: {e}")))?;
        (text, wall_ms())
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| Failure::BadInput(format!("{origin}: {e}")))?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let ms =
            mtime.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis());
        (text, i64::try_from(ms).unwrap_or(0))
    };
    let capture = capture::parse(&text, &origin, device.unwrap_or("eth0"), mtime_ms).map_err(Failure::bad)?;
    if capture.samples.is_empty() {
        return Err(Failure::BadInput(format!("{origin}: no samples: the file has no statistics")));
    }
    Ok(capture)
}

/// Binds the listen address, or says why it cannot be used.
pub fn bind(config: &Config) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(config.listen).map_err(|err| ConfigError::Invalid {
        field: "listen",
        value: config.listen.to_string(),
        problem: format!("cannot be listened on: {err}"),
    })
}

/// A sampler running on its thread; dropping `stop` (or sending on it) ends it.
pub struct Running {
    /// Snapshots and history.
    pub store: Arc<Store>,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Running {
    /// Starts sampling `source` with `config`'s interval and history, evaluating the local
    /// alerts and offering their transitions to `notify`.
    pub fn start(config: &Config, source: Box<dyn Source>, notify: Option<Handle>) -> anyhow::Result<Self> {
        let store = Arc::new(Store::new(config.history_points()));
        let settings = crate::sampler::Settings {
            interval: config.interval,
            compat_stats: config.compat_stats.clone(),
            forget_after_ms: i64::try_from(config.history.as_millis()).unwrap_or(i64::MAX),
        };
        let (stop, stopped) = mpsc::channel();
        let thread = Sampler::new(source, settings, Arc::clone(&store))
            .with_hook(alerts::Local::new(Evaluator::new(config.alert_rules.clone()), notify))
            .spawn(stopped)
            .context("cannot start the sampler thread")?;
        Ok(Self { store, stop, thread })
    }

    /// Stops the sampler and waits for it (at most one tick's work).
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Resolves on SIGTERM or SIGINT, with the signal's name.
pub(crate) async fn termination() -> &'static str {
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
