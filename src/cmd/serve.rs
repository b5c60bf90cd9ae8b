//! `enawatch serve` and `enawatch demo`: a source, the sampler thread and the HTTP server,
//! stopped on SIGTERM/SIGINT.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::alerts::notify::{self};
use crate::base::wall_ms;
use crate::base::HumanDuration;
use crate::cmd::cli::{Failure, SourceArgs};
use crate::cmd::runtime::{bind, build_source, termination, Chosen, Running};
use crate::config::{Config, Settings};
use crate::http::{self, AppState};
use crate::metrics::Options;
use crate::outbound::kube::ApiAccess;
use crate::remote_write::{self, Pusher};
use crate::source::pods;
use crate::source::simulate::Scenario;

/// Runs the agent until a termination signal.
pub fn run(config: &Config, source: &SourceArgs) -> Result<(), Failure> {
    // Everything that can be bad input is checked before the port is taken.
    let chosen = build_source(source, config)?;
    let listener = bind(config)?;
    run_with(config, listener, chosen)
}

/// Runs the agent on a chosen source and a bound listener.
pub(crate) fn run_with(config: &Config, listener: TcpListener, chosen: Chosen) -> Result<(), Failure> {
    // Node events: off with one log line when the API cannot be used.
    let events = config.node_events.and_then(|settings| match ApiAccess::in_cluster() {
        Ok(access) => Some((access, settings)),
        Err(why) => {
            warn!(reason = %why, "node events are off; metrics and alerts continue");
            None
        }
    });
    let (notify, mut notifier) = if config.receivers.is_empty() && events.is_none() {
        (None, None)
    } else {
        let (handle, notifier) = notify::channel(config.receivers.clone(), crate::base::node_name(), events);
        (Some(handle), Some(notifier))
    };
    let notify_stats = notify.as_ref().map(|h| (Arc::clone(&h.stats), Arc::clone(&h.overflow)));
    let remote_write_stats =
        (!config.remote_write.is_empty()).then(|| remote_write::stats(&config.remote_write));
    let running = Running::start(config, chosen.source, notify)?;
    // Pod attribution: off with one log line when the API cannot be used.
    let attribution = if config.pod_attribution {
        match ApiAccess::in_cluster() {
            Ok(access) => Some(access),
            Err(why) => {
                warn!(reason = %why, "pod attribution is off; DNS clients are shown by address only");
                None
            }
        }
    } else {
        None
    };
    // The table the DNS analysis already reads, when it does.
    let pods = attribution.as_ref().map(|_| chosen.pods.clone().unwrap_or_default());
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
            tokio::spawn(pods::run(access, pods));
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
    #[expect(clippy::print_stdout, reason = "the demo's directions are its output")]
    {
        println!("enawatch demo: a simulated EC2 node, scenario {scenario}:");
        println!("  {description}\n");
        println!("  live page    {url}/");
        println!("  metrics      {url}/metrics");
        println!("  health       {url}/healthz");
        println!("  link-local   curl -s {url}/metrics | grep 'allowance=\"linklocal\"'");
        if chosen.dns.is_some() {
            println!("  who is hurt  curl -s {url}/metrics | grep enawatch_dns_failures_total");
        }
        println!("  terminal     enawatch top --simulate {scenario}\n");
        println!(
            "Throttling is logged below as it starts and ends (the first burst ~10 s in); the lookups \
             it cost the pods count as failed 5 s later. Ctrl-C stops.\n"
        );
    }
    run_with(&config, listener, chosen)
}
