//! The sampler: one tick per interval, on a thread of its own.
//!
//! Each tick asks the [`Source`] for a [`Sample`](crate::source::Sample), runs the counter
//! semantics of [`counters`], appends the allowance series to the history and publishes an
//! immutable [`Snapshot`]. Ticks are aligned to a fixed grid: a tick that runs late makes the
//! next ones skip (and count) the slots it missed instead of bunching up.
//!
//! Logging is per event, never per tick: a device that starts failing is logged once, and
//! once more when it recovers. Devices that come and go (pod veths under
//! `--device-include`) are logged one line per device and change, ten such lines a minute at
//! most; beyond that, the minute's churn is one summary line ([`ChurnLog`]).

pub mod counters;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use regex_lite::Regex;
use tracing::{info, warn};

use self::counters::RawAllowances;
use crate::base::allowance::{Allowance, ALLOWANCE_STATS};
use crate::base::wall_ms;
use crate::history::{DeviceCounters, DeviceState, ErrorCount, History, Point, Snapshot, Store};
use crate::source::{Event, ReadError, Reading, Schema, Source};

/// The shortest sampling interval accepted: each ENA read costs admin-queue commands
/// under RTNL (see DESIGN.md), so nothing samples faster than this.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the sampler needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time between ticks.
    pub interval: Duration,
    /// Which driver stats the compatibility families export; `None`: the six allowance stats.
    pub compat_stats: Option<Regex>,
    /// How long the error counters of a device the source stops mentioning stay visible
    /// (Unix ms span). A device the source says vanished leaves them at the next tick.
    pub forget_after_ms: i64,
}

/// An episode being logged: allowance exceeded since `start_ms`.
struct OpenEpisode {
    start_ms: i64,
    last_ms: i64,
    packets: u64,
}

/// An episode ends after this long without a new drop (one log line per episode, not per tick).
const EPISODE_QUIET_MS: i64 = 10_000;

/// Lines about devices appearing or vanishing logged per minute; the rest are counted into
/// the minute's summary line.
const CHURN_LINES_PER_MINUTE: u32 = 10;
const CHURN_WINDOW_MS: i64 = 60_000;

/// Rate-limits the lines about devices that appear and vanish, on sample time.
#[derive(Default)]
struct ChurnLog {
    /// Start of the current minute; `None` before the first line of churn.
    since_ms: Option<i64>,
    /// Per-device lines logged this minute.
    lines: u32,
    appeared: u64,
    vanished: u64,
    /// Devices whose line was left out this minute.
    left_out: u64,
}

impl ChurnLog {
    /// Ends the minute when it is over: one summary line if any per-device line was left
    /// out (otherwise the per-device lines already said it all).
    fn roll(&mut self, at_ms: i64) {
        let Some(since) = self.since_ms else { return };
        if at_ms.saturating_sub(since) < CHURN_WINDOW_MS {
            return;
        }
        if self.left_out > 0 {
            info!(
                appeared = self.appeared,
                vanished = self.vanished,
                not_logged_one_by_one = self.left_out,
                "device churn: {} appeared, {} vanished in the last minute",
                self.appeared,
                self.vanished
            );
        }
        *self = Self::default();
    }

    /// Counts `n` devices that appeared (or vanished); how many of them may have a line.
    fn allow(&mut self, at_ms: i64, n: usize, appeared: bool) -> usize {
        self.roll(at_ms);
        self.since_ms.get_or_insert(at_ms);
        let n64 = n as u64;
        if appeared {
            self.appeared += n64;
        } else {
            self.vanished += n64;
        }
        let room = CHURN_LINES_PER_MINUTE.saturating_sub(self.lines) as usize;
        let allowed = n.min(room);
        self.lines += u32::try_from(allowed).unwrap_or(u32::MAX);
        self.left_out += (n - allowed) as u64;
        allowed
    }
}

/// What runs on every snapshot after a tick, before readers see it: the local alert
/// evaluator fills in the snapshot's alert state here, from the history the tick extended.
/// A trait, so the sampler knows nothing of the readers above it.
pub trait Hook: Send {
    /// Completes `snapshot`; `history` already holds this tick's points.
    fn on_snapshot(&mut self, snapshot: &mut Snapshot, history: &History);
}

/// The sampler's state between ticks.
pub struct Sampler {
    source: Box<dyn Source>,
    settings: Settings,
    store: Arc<Store>,
    devices: BTreeMap<String, DeviceState>,
    /// Compat positions per stat layout (`compat_of`).
    compat: Vec<(Weak<Schema>, Arc<[usize]>)>,
    errors: BTreeMap<(String, ReadError), (u64, i64)>,
    /// Devices that vanished at the last tick: their error counters go at this one.
    vanished: Vec<String>,
    failing: BTreeSet<String>,
    churn: ChurnLog,
    /// Throttling under way, by device and allowance, for one log line at each end.
    episodes: BTreeMap<(String, Allowance), OpenEpisode>,
    /// What runs on each snapshot before it is published (the local alerts).
    hook: Option<Box<dyn Hook>>,
    seq: u64,
    missed_ticks: u64,
}

impl Sampler {
    /// A sampler reading `source` and publishing into `store`.
    pub fn new(source: Box<dyn Source>, settings: Settings, store: Arc<Store>) -> Self {
        Self {
            source,
            settings,
            store,
            devices: BTreeMap::new(),
            compat: Vec::new(),
            errors: BTreeMap::new(),
            vanished: Vec::new(),
            failing: BTreeSet::new(),
            churn: ChurnLog::default(),
            episodes: BTreeMap::new(),
            hook: None,
            seq: 0,
            missed_ticks: 0,
        }
    }

    /// Runs `hook` on every snapshot before it is published.
    #[must_use]
    pub fn with_hook(mut self, hook: impl Hook + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Takes one sample at wall-clock `now_ms` and publishes the resulting snapshot;
    /// `None` once the source has nothing more (the final snapshot is then published).
    pub fn tick(&mut self, now_ms: i64) -> Option<Arc<Snapshot>> {
        let Some(sample) = self.source.sample(now_ms) else {
            let last = self.store.latest();
            self.store.publish(Arc::new(Snapshot {
                seq: last.seq,
                at_ms: last.at_ms,
                published: Instant::now(),
                devices: last.devices.clone(),
                read_errors: last.read_errors.clone(),
                missed_ticks: last.missed_ticks,
                finished: true,
                alerts: last.alerts.clone(),
                capture_dropped: last.capture_dropped,
                dns: last.dns.clone(),
            }));
            return None;
        };
        let at_ms = sample.at_ms;
        // A device that vanished at the last tick showed its `no_device` read error then;
        // now it leaves that family too, as it left every other one then. (One that comes
        // back is a new device: it starts without errors.)
        for name in std::mem::take(&mut self.vanished) {
            self.errors.retain(|(device, _), _| *device != name);
        }
        self.churn.roll(at_ms);
        let mut points = Vec::with_capacity(sample.readings.len());
        let mut appeared = Vec::new();
        for reading in sample.readings {
            if self.failing.remove(&reading.device.name) {
                info!(device = %reading.device.name, "device readable again");
            }
            let name = reading.device.name.clone();
            if let Some((point, added)) = self.apply(reading, at_ms, &mut appeared) {
                self.log_drops(&name, &added, at_ms);
                points.push((name, point));
            }
        }
        if !appeared.is_empty() {
            let shown = self.churn.allow(at_ms, appeared.len(), true);
            if shown > 0 {
                appeared.truncate(shown);
                info!(devices = %appeared.join(", "), "new devices watched");
            }
        }
        let vanished = self.handle(sample.events, at_ms);
        self.close_quiet_episodes(at_ms);
        let forget_before = at_ms.saturating_sub(self.settings.forget_after_ms);
        let devices = &self.devices;
        self.errors
            .retain(|(device, _), (_, last_ms)| devices.contains_key(device) || *last_ms >= forget_before);

        self.store.update_history(|h| {
            for (name, point) in points {
                h.push(&name, point);
            }
            for name in &vanished {
                h.remove(name);
            }
        });
        self.vanished = vanished;
        self.seq += 1;
        let mut snapshot = Snapshot {
            seq: self.seq,
            at_ms,
            published: Instant::now(),
            devices: self.devices.values().cloned().collect(),
            read_errors: self
                .errors
                .iter()
                .map(|((device, reason), (count, _))| ErrorCount {
                    device: device.clone(),
                    reason: *reason,
                    count: *count,
                })
                .collect(),
            missed_ticks: self.missed_ticks,
            finished: false,
            alerts: Vec::new(),
            capture_dropped: sample.capture_dropped,
            dns: sample.dns,
        };
        if let Some(hook) = &mut self.hook {
            self.store.read_history(|h| hook.on_snapshot(&mut snapshot, h));
        }
        let snapshot = Arc::new(snapshot);
        self.store.publish(Arc::clone(&snapshot));
        Some(snapshot)
    }

    /// Counts and logs what happened to devices this tick; the devices that vanished.
    fn handle(&mut self, events: Vec<Event>, at_ms: i64) -> Vec<String> {
        let mut vanished = Vec::new();
        for event in events {
            match event {
                Event::ReadFailed { device, reason, detail } => {
                    self.count_error(&device, reason, at_ms);
                    if self.failing.insert(device.clone()) {
                        warn!(device = %device, reason = reason.label(), error = %detail,
                            "cannot read device statistics; retrying every tick, logging when it recovers");
                    }
                }
                Event::SchemaChanged { device } => {
                    self.count_error(&device, ReadError::SchemaChanged, at_ms);
                    info!(device = %device, "driver stat set changed; sample dropped, names re-read");
                }
                Event::Vanished { device } => {
                    self.count_error(&device, ReadError::NoDevice, at_ms);
                    self.failing.remove(&device);
                    self.episodes.retain(|(d, _), _| *d != device);
                    if self.devices.remove(&device).is_some() && self.churn.allow(at_ms, 1, false) > 0 {
                        info!(device = %device, "device vanished; its series are dropped");
                    }
                    vanished.push(device);
                }
            }
        }
        vanished
    }

    /// Logs the start of throttling on a device.
    fn log_drops(&mut self, device: &str, added: &[u64; 5], at_ms: i64) {
        for a in Allowance::ALL {
            let n = added[a.index()];
            if n == 0 {
                continue;
            }
            let key = (device.to_owned(), a);
            if let Some(open) = self.episodes.get_mut(&key) {
                open.last_ms = at_ms;
                open.packets += n;
            } else {
                warn!(
                    device,
                    allowance = a.label(),
                    packets = n,
                    "allowance exceeded: packets queued or dropped"
                );
                self.episodes.insert(key, OpenEpisode { start_ms: at_ms, last_ms: at_ms, packets: n });
            }
        }
    }

    fn close_quiet_episodes(&mut self, at_ms: i64) {
        self.episodes.retain(|(device, a), open| {
            if at_ms - open.last_ms < EPISODE_QUIET_MS {
                return true;
            }
            let seconds = (open.last_ms - open.start_ms) as f64 / 1000.0;
            info!(
                device,
                allowance = a.label(),
                packets = open.packets,
                last_drop_seconds_after_first = seconds,
                "allowance no longer exceeded"
            );
            false
        });
    }

    fn count_error(&mut self, device: &str, reason: ReadError, at_ms: i64) {
        let entry = self.errors.entry((device.to_owned(), reason)).or_insert((0, at_ms));
        entry.0 += 1;
        entry.1 = at_ms;
    }

    /// Runs one reading through the counter semantics; the history point and the packets
    /// added, for a device that reports allowance stats. A device new after the first tick
    /// is described in `appeared` (the first tick's are the source's to announce).
    fn apply(
        &mut self,
        reading: Reading,
        at_ms: i64,
        appeared: &mut Vec<String>,
    ) -> Option<(Point, [u64; 5])> {
        let Reading { device, schema, values, linklocal } = reading;
        let state = if let Some(state) = self.devices.get_mut(&device.name) {
            state
        } else {
            if self.seq > 0 {
                appeared.push(device.describe());
            }
            self.devices.entry(device.name.clone()).or_insert_with(|| DeviceState {
                device: Arc::clone(&device),
                schema: Arc::clone(&schema),
                values: Arc::clone(&values),
                compat: compat_of(&mut self.compat, &schema, self.settings.compat_stats.as_ref()),
                counters: DeviceCounters::default(),
                resets: 0,
                glitches: 0,
                implausible: 0,
                linklocal: None,
            })
        };
        let (exceeded, available) = schema.index.pick(&values);
        let update = state.counters.update(at_ms, &RawAllowances { exceeded, available });
        state.device = device;
        if update.glitch {
            // A glitch's values are the zeros the driver made up: keep the last real ones,
            // and with them the stat layout they were read under. Values and layout are only
            // ever replaced together (the renderers index one by the other), also when the
            // stat set changed in the very sample that glitched.
            state.glitches += 1;
        } else {
            if !Arc::ptr_eq(&state.schema, &schema) {
                state.compat = compat_of(&mut self.compat, &schema, self.settings.compat_stats.as_ref());
                state.schema = schema;
            }
            state.values = values;
        }
        if update.any_reset() {
            state.resets += 1;
            info!(device = %state.device.name, "driver counters reset; counting on from the new values");
        }
        state.implausible += update.implausible.iter().filter(|&&b| b).count() as u64;

        let linklocal_rate =
            linklocal.and_then(|counts| state.linklocal.get_or_insert_default().observe(counts, at_ms));
        let tracked = state.counters.supported.iter().any(|&s| s)
            || state.counters.available_supported
            || state.linklocal.is_some();
        tracked.then(|| {
            (
                Point {
                    at_ms,
                    added: update.added.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
                    available: if update.glitch {
                        Point::NO_VALUE
                    } else {
                        available.map_or(Point::NO_VALUE, |v| u32::try_from(v).unwrap_or(Point::NO_VALUE - 1))
                    },
                    flags: if update.glitch { Point::GLITCH } else { 0 }
                        | if update.any_reset() { Point::RESET } else { 0 },
                    linklocal: linklocal_rate.map_or(Point::NO_VALUE, |r| r.min(Point::NO_VALUE - 1)),
                },
                update.added,
            )
        })
    }

    /// Runs ticks on the grid until `shutdown` is dropped or signalled.
    pub fn spawn(mut self, shutdown: Receiver<()>) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new().name("sampler".into()).spawn(move || {
            let interval = self.settings.interval;
            // Wall-clock time is the monotonic clock anchored once: sample times never step
            // backwards when NTP adjusts the clock.
            let (anchor_wall, anchor) = (wall_ms(), Instant::now());
            let mut next = anchor;
            loop {
                let since = i64::try_from(next.duration_since(anchor).as_millis()).unwrap_or(i64::MAX);
                if self.tick(anchor_wall.saturating_add(since)).is_none() {
                    // Nothing more to read: keep serving the final state until stopped.
                    let _ = shutdown.recv();
                    return;
                }
                if let Some(pace) = self.source.pace() {
                    next += pace;
                    match shutdown.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                next += interval;
                let now = Instant::now();
                if now > next {
                    // Skip the slots already past rather than bunching reads together.
                    let behind = now.duration_since(next).as_nanos() / interval.as_nanos().max(1);
                    let skipped = u32::try_from(behind + 1).unwrap_or(u32::MAX);
                    self.missed_ticks += u64::from(skipped);
                    next += interval * skipped;
                }
                match shutdown.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
    }
}

/// The compat positions of `schema`, shared by every device with that schema (the
/// renderers group devices by the pair). Schemas are held weakly: one no device and no
/// snapshot holds any more is gone, and its entry is dropped.
fn compat_of(
    known: &mut Vec<(Weak<Schema>, Arc<[usize]>)>,
    schema: &Arc<Schema>,
    select: Option<&Regex>,
) -> Arc<[usize]> {
    known.retain(|(s, _)| s.strong_count() > 0);
    // A live entry's address cannot have been reused: `schema` is alive, and so is it.
    if let Some((_, compat)) = known.iter().find(|(s, _)| std::ptr::eq(s.as_ptr(), Arc::as_ptr(schema))) {
        return Arc::clone(compat);
    }
    let compat = compat_positions(schema, select);
    known.push((Arc::downgrade(schema), Arc::clone(&compat)));
    compat
}

/// The positions of the stats the compatibility families export.
fn compat_positions(schema: &Schema, select: Option<&Regex>) -> Arc<[usize]> {
    schema
        .names
        .iter()
        .enumerate()
        .filter(|(_, name)| match select {
            Some(re) => re.is_match(name),
            None => ALLOWANCE_STATS.contains(&name.as_str()),
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    #[test]
    fn compat_positions_are_shared_per_layout_and_forgotten_with_it() {
        let mut known = Vec::new();
        let names = || vec!["x".to_owned(), "linklocal_allowance_exceeded".to_owned()];
        let layout = Arc::new(Schema::new(names()));
        let first = compat_of(&mut known, &layout, None);
        assert_eq!(*first, [1]);
        assert!(Arc::ptr_eq(&first, &compat_of(&mut known, &layout, None)), "one copy per layout");
        let equal_names = Arc::new(Schema::new(names()));
        assert!(
            !Arc::ptr_eq(&first, &compat_of(&mut known, &equal_names, None)),
            "keyed by the layout itself"
        );
        drop((layout, equal_names));
        let _ = compat_of(&mut known, &Arc::new(Schema::new(names())), None);
        assert_eq!(known.len(), 1, "the entries of layouts nothing holds are dropped");
    }
    use crate::source::{Device, Sample};

    fn reading(name: &str, ll: u64) -> Reading {
        let device = Arc::new(Device {
            name: name.into(),
            driver: "ena".into(),
            driver_version: String::new(),
            firmware_version: String::new(),
            bus_info: String::new(),
            eni: None,
        });
        let schema = Arc::new(Schema::new(vec!["linklocal_allowance_exceeded".into()]));
        Reading { device, schema, values: vec![ll].into(), linklocal: None }
    }

    fn failed(name: &str) -> Event {
        Event::ReadFailed { device: name.into(), reason: ReadError::Io, detail: "EIO".into() }
    }

    #[test]
    fn a_glitch_right_after_the_stat_set_changed_keeps_values_and_layout_together() {
        let with = |names: &[&str], values: &[u64]| Reading {
            schema: Arc::new(Schema::new(names.iter().map(|&n| n.to_owned()).collect())),
            values: values.into(),
            ..reading("ens5", 0)
        };
        let ll = "linklocal_allowance_exceeded";
        let script = VecDeque::from([
            Sample { at_ms: 0, readings: vec![with(&[ll], &[5])], ..Sample::default() },
            // The stat set grew, and the same read is the ENA all-zero glitch.
            Sample { at_ms: 1000, readings: vec![with(&["x", ll], &[7, 0])], ..Sample::default() },
            Sample { at_ms: 2000, readings: vec![with(&["x", ll], &[8, 6])], ..Sample::default() },
        ]);
        let settings =
            Settings { interval: Duration::from_secs(1), compat_stats: None, forget_after_ms: 10_000 };
        let mut sampler = Sampler::new(Box::new(script), settings, Arc::new(Store::new(10)));
        sampler.tick(0);
        for (tick, want) in [(1, [ll]), (2, [ll])] {
            let snapshot = sampler.tick(0).unwrap();
            let d = &snapshot.devices[0];
            assert_eq!(d.values.len(), d.schema.names.len(), "tick {tick}: values and layout differ");
            let exported: Vec<&str> = d.compat.iter().map(|&i| d.schema.names[i].as_str()).collect();
            assert_eq!(exported, want, "tick {tick}");
        }
        let d = &sampler.store.latest().devices[0];
        assert_eq!((&*d.values, d.glitches), (&[8, 6][..], 1), "the new layout's values once real");
    }

    #[test]
    fn a_failing_device_keeps_its_series_is_counted_and_a_vanished_one_is_forgotten() {
        let at = |s: i64| s * 1000;
        let script = VecDeque::from([
            Sample {
                at_ms: at(0),
                readings: vec![reading("ens5", 5), reading("ens6", 1)],
                ..Sample::default()
            },
            Sample {
                at_ms: at(1),
                readings: vec![reading("ens6", 1)],
                events: vec![failed("ens5")],
                ..Sample::default()
            },
            Sample {
                at_ms: at(2),
                readings: vec![reading("ens6", 1)],
                events: vec![failed("ens5")],
                ..Sample::default()
            },
            Sample {
                at_ms: at(3),
                readings: vec![reading("ens5", 9), reading("ens6", 1)],
                ..Sample::default()
            },
            Sample {
                at_ms: at(4),
                readings: vec![reading("ens5", 9)],
                events: vec![Event::Vanished { device: "ens6".into() }],
                ..Sample::default()
            },
            Sample { at_ms: at(20), readings: vec![reading("ens5", 9)], ..Sample::default() },
        ]);
        let store = Arc::new(Store::new(100));
        let settings =
            Settings { interval: Duration::from_secs(1), compat_stats: None, forget_after_ms: 10_000 };
        let mut sampler = Sampler::new(Box::new(script), settings, Arc::clone(&store));

        sampler.tick(0);
        let failing = sampler.tick(0).unwrap();
        assert_eq!(failing.devices.len(), 2, "a read error does not drop the device's series");
        sampler.tick(0);
        assert_eq!(sampler.tick(0).unwrap().devices[0].counters.packets[4], 9, "it counts on after recovery");
        let errors = &store.latest().read_errors;
        assert_eq!(errors[0], ErrorCount { device: "ens5".into(), reason: ReadError::Io, count: 2 });
        assert!(sampler.failing.is_empty());

        let after_vanish = sampler.tick(0).unwrap();
        assert_eq!(after_vanish.devices.len(), 1);
        assert!(after_vanish
            .read_errors
            .iter()
            .any(|e| e.device == "ens6" && e.reason == ReadError::NoDevice));
        assert_eq!(store.read_history(|h| h.points("ens6").count()), 0);
        // Long after, the vanished device's error counter is forgotten too (bounded series).
        let later = sampler.tick(0).unwrap();
        assert!(later.read_errors.iter().all(|e| e.device != "ens6"), "{:?}", later.read_errors);
        assert!(sampler.tick(0).is_none());
        assert!(store.latest().finished);
    }
}
