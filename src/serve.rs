//! `enawatch serve` and `enawatch demo`: a source, the sampler thread and the HTTP server,
//! stopped on SIGTERM/SIGINT.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::alerts::notify::{self, Handle};
use crate::alerts::Evaluator;
use crate::capture;
use crate::cli::{Failure, SourceArgs};
use crate::config::{Config, ConfigError, HumanDuration, Settings};
use crate::dns::DnsStats;
use crate::history::Store;
use crate::http::{self, AppState};
use crate::k8s;
use crate::metrics::Options;
use crate::remote_write::{self, Pusher};
use crate::sampler::{wall_ms, Sampler};
use crate::source::live::{LiveSource, Selection};
use crate::source::replay::{Playback, ReplaySource};
use crate::source::simulate::{Scenario, SimulatedSource};
use crate::source::Source;

/// A source and a sentence saying what it is, for the log.
pub struct Chosen {
    /// The source.
    pub source: Box<dyn Source>,
    /// e.g. "live", "replay of capture.txt", "simulation dns-storm".
    pub what: String,
    /// The DNS analysis the source feeds, when on.
    pub dns: Option<Arc<Mutex<DnsStats>>>,
}

/// Builds the source the flags ask for: a replay, a simulation, or this host's interfaces.
/// A capture or scenario that cannot be used is bad input (exit 2), before anything runs.
pub fn build_source(args: &SourceArgs, config: &Config) -> Result<Chosen, Failure> {
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
        });
    }
    if let Some(name) = &args.simulate {
        let scenario = Scenario::load(name).map_err(Failure::bad)?;
        return Ok(Chosen {
            source: Box::new(SimulatedSource::new(scenario)),
            what: format!("simulation {name}"),
            dns: None,
        });
    }
    let dns = config.dns_analysis.then(|| Arc::new(Mutex::new(DnsStats::default())));
    let selection = Selection {
        include: config.device_include.clone(),
        exclude: config.device_exclude.clone(),
        eni: config.eni.clone(),
        linklocal: config.linklocal.clone(),
        dns: dns.clone(),
    };
    let live = LiveSource::new(selection, config.rediscover_interval, config.interval)
        .context("cannot open a socket for the ethtool ioctl")?;
    Ok(Chosen { source: Box::new(live), what: "live".into(), dns })
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
            .with_alerts(Evaluator::new(config.alert_rules.clone()), notify)
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

/// Runs the agent until a termination signal.
pub fn run(config: &Config, source: &SourceArgs) -> Result<(), Failure> {
    // Everything that can be bad input is checked before the port is taken.
    let chosen = build_source(source, config)?;
    let listener = bind(config)?;
    run_with(config, listener, chosen)
}

/// Runs the agent on a chosen source and a bound listener.
pub fn run_with(config: &Config, listener: TcpListener, chosen: Chosen) -> Result<(), Failure> {
    let (notify, mut notifier) = if config.receivers.is_empty() {
        (None, None)
    } else {
        let (handle, notifier) = notify::channel(config.receivers.clone(), notify::node_name());
        (Some(handle), Some(notifier))
    };
    let notify_stats = notify.as_ref().map(|h| (Arc::clone(&h.stats), Arc::clone(&h.overflow)));
    let remote_write_stats =
        (!config.remote_write.is_empty()).then(|| remote_write::stats(&config.remote_write));
    let running = Running::start(config, chosen.source, notify)?;
    // Pod attribution: off with one log line when the API cannot be used.
    let attribution = if config.pod_attribution {
        match k8s::ApiAccess::in_cluster() {
            Ok(access) => Some(access),
            Err(why) => {
                warn!(reason = %why, "pod attribution is off; DNS clients are shown by address only");
                None
            }
        }
    } else {
        None
    };
    let pods = attribution.as_ref().map(|_| Arc::new(Mutex::new(k8s::Pods::default())));
    let metrics = Options {
        compat: config.compat.clone(),
        interval: config.interval,
        notify: notify_stats,
        remote_write: remote_write_stats.clone(),
    };
    // Remote write reads the published snapshots on a thread of its own; its senders run on
    // the runtime below. A spool that cannot be opened is bad input.
    let mut pusher = match &remote_write_stats {
        Some(stats) => Some(
            Pusher::start(&config.remote_write, stats, Arc::clone(&running.store), &metrics, config.interval)
                .map_err(Failure::bad)?,
        ),
        None => None,
    };
    let state = Arc::new(AppState {
        store: Arc::clone(&running.store),
        metrics,
        source: chosen.what.clone(),
        dns: chosen.dns.clone(),
        pods: pods.clone(),
        started_ms: wall_ms(),
        history: config.history,
    });
    info!(
        source = %chosen.what,
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
    let local = listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    let result = runtime.block_on(async {
        if let (Some(access), Some(pods)) = (attribution, pods.clone()) {
            tokio::spawn(k8s::run(access, pods));
        }
        if let Some(mut notifier) = notifier.take() {
            notifier.generator_url = format!("http://{local}/");
            tokio::spawn(notifier.run());
        }
        if let Some(pusher) = &pusher {
            pusher.spawn_senders();
        }
        tokio::select! {
            r = http::serve(listener, http::app(state)) => r.context("HTTP server failed"),
            signal = termination() => {
                info!(signal, "stopping");
                Ok(())
            }
        }
    });
    running.stop();
    if let Some(pusher) = &mut pusher {
        // The sampler's last snapshot is collected, and what is queued gets a moment to leave
        // (with a spool, what does not is sent by the next start).
        pusher.stop_collecting();
        runtime.block_on(pusher.flush(std::time::Duration::from_secs(3)));
    }
    // Connections still open are dropped with the runtime, without waiting for them.
    runtime.shutdown_background();
    Ok(result?)
}

/// `enawatch demo`: the dns-storm simulation on a local address, with directions.
pub fn demo(listen: &str, scenario: &str) -> Result<(), Failure> {
    let settings = Settings { listen: Some(listen.to_owned()), ..Settings::default() };
    let config = settings.resolve()?;
    let source = SourceArgs { simulate: Some(scenario.to_owned()), ..SourceArgs::default() };
    let chosen = build_source(&source, &config)?;
    let listener = bind(&config)?;
    let description = Scenario::load(scenario).map(|s| s.description).unwrap_or_default();
    let url = format!("http://{}", listener.local_addr().map_err(anyhow::Error::from)?);
    #[allow(clippy::print_stdout)] // the demo's directions are its output
    {
        println!("enawatch demo: a simulated EC2 node, scenario {scenario}:");
        println!("  {description}\n");
        println!("  live page    {url}/");
        println!("  metrics      {url}/metrics");
        println!("  health       {url}/healthz");
        println!("  link-local   curl -s {url}/metrics | grep 'allowance=\"linklocal\"'");
        println!("  terminal     enawatch top --simulate {scenario}\n");
        println!(
            "Throttling is logged below as it starts and ends (the first burst ~10 s in). Ctrl-C stops.\n"
        );
    }
    run_with(&config, listener, chosen)
}

/// Resolves on SIGTERM or SIGINT, with the signal's name.
pub async fn termination() -> &'static str {
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
