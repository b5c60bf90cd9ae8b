//! The replay source: a [`Capture`] played back on its recorded timeline.
//!
//! Samples keep their recorded timestamps, so history windows, episodes and alerts reflect
//! when things happened on the node, not when the replay ran. `speed` compresses the waits
//! between samples; `repeat` starts over at the end, shifting time forward and carrying the
//! counters on, so a looped capture looks like one continuing timeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Device, Event, Reading, Sample, Schema, Source};
use crate::base::allowance::CONNTRACK_AVAILABLE;
use crate::source::capture::{Capture, CapturedDevice};

/// How to play a capture.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Playback {
    /// Time compression: 2.0 plays twice as fast; `f64::INFINITY` does not wait at all.
    pub speed: f64,
    /// Start over at the end instead of stopping.
    pub repeat: bool,
    /// Report a device absent from a sample as vanished (its series leave), as the live
    /// source would. Analysis keeps them instead, to report on the whole capture.
    pub vanish: bool,
}

/// Plays a capture back.
pub(crate) struct ReplaySource {
    capture: Capture,
    playback: Playback,
    next: usize,
    /// Added to recorded timestamps (grows by one capture span per loop).
    time_offset_ms: i64,
    /// Added to counter values per device and stat (grows by each stat's increase per loop).
    value_offsets: HashMap<String, HashMap<String, u64>>,
    devices: HashMap<String, (Arc<Device>, Arc<Schema>)>,
    present: Vec<String>,
}

impl ReplaySource {
    /// A replay of `capture`, which must have at least one sample.
    pub fn new(capture: Capture, playback: Playback) -> Self {
        Self {
            capture,
            playback,
            next: 0,
            time_offset_ms: 0,
            value_offsets: HashMap::new(),
            devices: HashMap::new(),
            present: Vec::new(),
        }
    }

    /// The average recorded interval (1 s for a single sample).
    fn average_interval_ms(&self) -> i64 {
        let s = &self.capture.samples;
        match (s.first(), s.last()) {
            (Some(a), Some(b)) if s.len() > 1 => {
                ((b.at_ms - a.at_ms) / i64::try_from(s.len() - 1).unwrap_or(i64::MAX)).max(1)
            }
            _ => 1000,
        }
    }

    /// Moves to the start again, carrying time and counters forward.
    fn wrap(&mut self) {
        let samples = &self.capture.samples;
        let (first, last) = (&samples[0], &samples[samples.len() - 1]);
        self.time_offset_ms += last.at_ms - first.at_ms + self.average_interval_ms();
        for device in &last.devices {
            let Some(start) = first.devices.iter().find(|d| d.name == device.name) else { continue };
            let offsets = self.value_offsets.entry(device.name.clone()).or_default();
            for (name, end) in &device.stats {
                let Some((_, begin)) = start.stats.iter().find(|(n, _)| n == name) else { continue };
                if name != CONNTRACK_AVAILABLE && end >= begin {
                    *offsets.entry(name.clone()).or_default() += end - begin;
                }
            }
        }
        self.next = 0;
    }

    fn reading(&mut self, captured: &CapturedDevice) -> Reading {
        let names: Vec<&str> = captured.stats.iter().map(|(n, _)| n.as_str()).collect();
        let entry = self
            .devices
            .entry(captured.name.clone())
            .or_insert_with(|| (Arc::new(device_of(captured)), Arc::new(Schema::new(Vec::new()))));
        if entry.1.names.iter().map(String::as_str).ne(names.iter().copied()) {
            entry.1 = Arc::new(Schema::new(names.iter().map(|n| (*n).to_owned()).collect()));
        }
        let offsets = self.value_offsets.get(&captured.name);
        let values = captured
            .stats
            .iter()
            .map(|(name, v)| v.saturating_add(offsets.and_then(|o| o.get(name)).copied().unwrap_or(0)))
            .collect();
        Reading { device: Arc::clone(&entry.0), schema: Arc::clone(&entry.1), values, linklocal: None }
    }
}

fn device_of(captured: &CapturedDevice) -> Device {
    let attr = |k: &str| captured.attribute(k).unwrap_or_default().to_owned();
    Device {
        name: captured.name.clone(),
        driver: attr("driver"),
        driver_version: attr("driver_version"),
        firmware_version: attr("firmware_version"),
        bus_info: attr("bus_info"),
        eni: captured.attribute("eni").map(str::to_owned),
    }
}

impl Source for ReplaySource {
    fn sample(&mut self, _now_ms: i64) -> Option<Sample> {
        if self.next >= self.capture.samples.len() {
            if !self.playback.repeat || self.capture.samples.is_empty() {
                return None;
            }
            self.wrap();
        }
        let captured = self.capture.samples[self.next].clone();
        self.next += 1;
        let mut sample = Sample { at_ms: captured.at_ms + self.time_offset_ms, ..Sample::default() };
        // A device with a `===` line but no stats had no readable statistics then.
        let readable: Vec<&CapturedDevice> =
            captured.devices.iter().filter(|d| !d.stats.is_empty()).collect();
        for d in &readable {
            let reading = self.reading(d);
            sample.readings.push(reading);
        }
        sample.readings.sort_by(|a, b| a.device.name.cmp(&b.device.name));
        let now: Vec<String> = captured.devices.iter().map(|d| d.name.clone()).collect();
        if self.playback.vanish {
            for gone in self.present.iter().filter(|n| !now.contains(n)) {
                sample.events.push(Event::Vanished { device: gone.clone() });
            }
        }
        self.present = now;
        Some(sample)
    }

    fn pace(&self) -> Option<Duration> {
        let samples = &self.capture.samples;
        let gap_ms = match (self.next.checked_sub(1).and_then(|i| samples.get(i)), samples.get(self.next)) {
            (Some(prev), Some(next)) => next.at_ms - prev.at_ms,
            _ => self.average_interval_ms(),
        };
        let secs = gap_ms.max(0) as f64 / 1000.0 / self.playback.speed;
        Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::capture::parse;

    const TEXT: &str =
        "@10\n=== ens5 driver=ena\n a: 5\n conntrack_allowance_available: 9\n=== ens6\n a: 1\n\
                        @11\n=== ens5 driver=ena\n a: 7\n conntrack_allowance_available: 8\n";

    fn replay(playback: Playback) -> ReplaySource {
        ReplaySource::new(parse(TEXT, "t", "eth0", 0).unwrap(), playback)
    }

    #[test]
    fn plays_the_recorded_timeline_then_stops() {
        let mut r = replay(Playback { speed: 2.0, repeat: false, vanish: true });
        let s = r.sample(0).unwrap();
        assert_eq!(s.at_ms, 10_000);
        assert_eq!(s.readings.len(), 2);
        assert_eq!(s.readings[0].device.driver, "ena");
        assert_eq!(r.pace(), Some(Duration::from_millis(500)));
        let s = r.sample(0).unwrap();
        assert_eq!(s.at_ms, 11_000);
        assert_eq!(s.events, [Event::Vanished { device: "ens6".into() }]);
        assert!(r.sample(0).is_none());
    }

    #[test]
    fn looping_moves_time_and_counters_forward() {
        let mut r = replay(Playback { speed: 1.0, repeat: true, vanish: false });
        r.sample(0);
        r.sample(0);
        let s = r.sample(0).unwrap();
        assert_eq!(s.at_ms, 12_000, "one span plus one interval later");
        let ens5 = &s.readings[0];
        assert_eq!(&*ens5.values, &[7, 9], "the counter continues (5 + 2), the gauge does not");
    }

    #[test]
    fn schemas_are_shared_while_names_do_not_change() {
        let mut r = replay(Playback { speed: f64::INFINITY, repeat: false, vanish: false });
        let a = r.sample(0).unwrap();
        let b = r.sample(0).unwrap();
        assert!(Arc::ptr_eq(&a.readings[0].schema, &b.readings[0].schema));
        assert_eq!(r.pace(), Some(Duration::ZERO));
    }
}
