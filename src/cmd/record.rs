//! `enawatch record`: this host's driver statistics, written as a capture.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::time::Instant;

use anyhow::Context as _;
use tracing::warn;

use crate::base::parse_duration;
use crate::base::wall_ms;
use crate::cmd::cli::{Failure, RecordArgs};
use crate::cmd::runtime::termination;
use crate::config::Settings;
use crate::source::capture::{self, CapturedDevice, CapturedSample};
use crate::source::live::{LiveSource, Selection};
use crate::source::{Event, Reading, Sample, Source};

/// Records until `--duration` has passed or a termination signal arrives.
pub fn run(args: &RecordArgs) -> Result<(), Failure> {
    let settings = Settings {
        interval: args.interval.clone(),
        device_include: args.device_include.clone(),
        device_exclude: args.device_exclude.clone(),
        ..Settings::default()
    };
    let config = settings.resolve()?;
    let duration = args
        .duration
        .as_deref()
        .map(|d| parse_duration(d).map_err(|p| Failure::BadInput(format!("duration: {d:?} {p}"))))
        .transpose()?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).map_err(|e| Failure::BadInput(format!("output: {}: {e}", path.display())))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let selection = Selection {
        include: config.device_include.clone(),
        exclude: config.device_exclude.clone(),
        eni: config.eni.clone(),
        linklocal: config.linklocal.clone(),
        dns: None,
        // A recording is what the driver reports.
        extra_stats: None,
    };
    let mut source = LiveSource::new(selection, config.rediscover_interval, config.interval)
        .context("cannot open a socket for the ethtool ioctl")?;
    out.write_all(capture::HEADER.as_bytes()).context("cannot write the capture")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    runtime.block_on(async {
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let stop = termination();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = &mut stop => break,
            }
            // A sample at the end of the duration too: `--duration 10s` covers 10 s.
            if duration.is_some_and(|d| started.elapsed() > d + config.interval / 2) {
                break;
            }
            let Some(sample) = source.sample(wall_ms()) else { break };
            for event in &sample.events {
                if let Event::ReadFailed { device, detail, .. } = event {
                    warn!(device, error = %detail, "cannot read device statistics");
                }
            }
            capture::write_sample(&mut out, &captured(&sample)).context("cannot write the capture")?;
            // Each sample reaches the file whole, so a capture cut short still parses.
            out.flush().context("cannot write the capture")?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

/// A live sample in the capture's terms.
pub fn captured(sample: &Sample) -> CapturedSample {
    CapturedSample { at_ms: sample.at_ms, devices: sample.readings.iter().map(captured_device).collect() }
}

fn captured_device(r: &Reading) -> CapturedDevice {
    let d = &r.device;
    let mut attributes = vec![
        ("driver".to_owned(), d.driver.clone()),
        ("driver_version".to_owned(), d.driver_version.clone()),
        ("firmware_version".to_owned(), d.firmware_version.clone()),
        ("bus_info".to_owned(), d.bus_info.clone()),
    ];
    if let Some(eni) = &d.eni {
        attributes.push(("eni".to_owned(), eni.clone()));
    }
    CapturedDevice {
        name: d.name.clone(),
        attributes,
        stats: r.schema.names.iter().cloned().zip(r.values.iter().copied()).collect(),
    }
}
