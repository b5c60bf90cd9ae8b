//! The simulated source: an ENA node whose allowances are exceeded on a scripted timeline.
//!
//! Devices are named like real ENIs (`ens5`, `ens6`, …) and carry the ENA driver's real stat
//! names (Linux 6.12 layout). Every value is a pure function of the time since the
//! simulation started, so a simulation is exactly reproducible: tests simulate, record,
//! analyze, and find exactly the episodes they injected.
//!
//! Scenarios are YAML, in the format of `docs/scenarios.md`; the built-ins are in `scenarios/`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use self::lookups::{Client, Lookups};
use super::{Device, Reading, Sample, Schema, Source};
use crate::base::allowance::{Allowance, CONNTRACK_AVAILABLE};
use crate::base::parse_duration;
use crate::source::dns::families::Upstream;
use crate::source::dns::{self, DnsStats};
use crate::source::pods::{PodRef, Pods};

mod lookups;

/// The built-in scenarios: name, YAML.
pub(crate) const BUILT_IN: [(&str, &str); 5] = [
    ("steady", include_str!("scenarios/steady.yaml")),
    ("dns-storm", include_str!("scenarios/dns-storm.yaml")),
    ("conntrack-exhaustion", include_str!("scenarios/conntrack-exhaustion.yaml")),
    ("driver-reset", include_str!("scenarios/driver-reset.yaml")),
    ("glitch", include_str!("scenarios/glitch.yaml")),
];

/// The stat names and baseline values of a simulated ENI: the ENA driver's Linux 6.12 layout.
const ENA_STATS: &str = include_str!("../../tests/data/ena-6.12-4q-synthetic.ethtool-S.txt");

/// A duration written like `10s` in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span(i64);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let duration = parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?} {e}")))?;
        Ok(Span(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)))
    }
}

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: String,
    #[serde(default = "one")]
    devices: u8,
    #[serde(default)]
    conntrack_available: Option<u64>,
    /// Packets per second sent to link-local services outside drops (the link-local meter's
    /// view); while link-local drops happen, the budget plus the drop rate.
    #[serde(default)]
    linklocal_pps: Option<u32>,
    #[serde(default)]
    events: Vec<EventSpec>,
    /// The node's pods and their DNS lookups.
    #[serde(default)]
    dns: Vec<LookupSpec>,
}

/// One pod's lookups in a scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupSpec {
    workload: String,
    address: Ipv4Addr,
    upstream: String,
    rate: u64,
}

/// At most this many pods look names up in a scenario...
const MAX_LOOKUP_PODS: usize = 64;
/// ...each at most this many times a second (the simulation builds every packet).
const MAX_LOOKUP_RATE: u64 = 10_000;

fn one() -> u8 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum EventSpec {
    Drops {
        allowance: String,
        rate: u64,
        at: Span,
        duration: Span,
        every: Option<Span>,
        device: Option<String>,
    },
    Conntrack {
        to: u64,
        at: Span,
        duration: Span,
        device: Option<String>,
    },
    Reset {
        at: Span,
        every: Option<Span>,
        device: Option<String>,
    },
    Glitch {
        at: Span,
        every: Option<Span>,
        device: Option<String>,
    },
}

/// When something happens: from `at`, for `duration`, again every `every`.
#[derive(Clone, Copy, Debug)]
struct Window {
    at: i64,
    duration: i64,
    every: Option<i64>,
}

impl Window {
    /// Milliseconds of `[0, t]` inside an occurrence of the window.
    fn active_ms_until(&self, t: i64) -> i64 {
        if t <= self.at {
            return 0;
        }
        let since = t - self.at;
        match self.every {
            Some(every) => (since / every) * self.duration + (since % every).min(self.duration),
            None => since.min(self.duration),
        }
    }

    /// The latest occurrence start at or before `t`.
    fn last_start(&self, t: i64) -> Option<i64> {
        if t < self.at {
            return None;
        }
        Some(match self.every {
            Some(every) => self.at + (t - self.at) / every * every,
            None => self.at,
        })
    }
}

/// A checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// What it shows.
    pub description: String,
    devices: Vec<String>,
    available: Option<u64>,
    linklocal_pps: Option<u32>,
    drops: Vec<(Option<usize>, Allowance, u64, Window)>,
    ramps: Vec<(Option<usize>, u64, Window)>,
    resets: Vec<(Option<usize>, Window)>,
    glitches: Vec<(Option<usize>, Window)>,
    lookups: Vec<Client>,
}

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("scenario {origin}: {message}")]
pub struct ScenarioError {
    /// Scenario name or file.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

impl Scenario {
    /// A built-in scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((_, yaml)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(yaml, name_or_path);
        }
        let looks_like_file = name_or_path.contains('/')
            || Path::new(name_or_path).extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !looks_like_file {
            return Err(ScenarioError {
                origin: name_or_path.to_owned(),
                message: format!("no such built-in scenario; known: {}; or give a .yaml file", Self::names()),
            });
        }
        let text = std::fs::read_to_string(name_or_path)
            .map_err(|e| ScenarioError { origin: name_or_path.to_owned(), message: e.to_string() })?;
        Self::parse(&text, name_or_path)
    }

    /// The built-in names, comma-separated.
    pub fn names() -> String {
        BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    /// `--simulate help`: the built-in scenarios and how to write one.
    pub fn help() -> String {
        let mut s = String::from("Built-in scenarios (enawatch serve --simulate NAME):\n");
        for (name, yaml) in BUILT_IN {
            let description = Self::parse(yaml, name).map(|sc| sc.description).unwrap_or_default();
            let _ = writeln!(s, "  {name:<22}{description}");
        }
        s.push_str(
            "\nA custom timeline: --simulate FILE.yaml, in the format of docs/scenarios.md \
             (the built-ins are examples).\n",
        );
        s
    }

    /// Parses and checks scenario YAML.
    pub fn parse(yaml: &str, origin: &str) -> Result<Self, ScenarioError> {
        let error = |message: String| ScenarioError { origin: origin.to_owned(), message };
        let file: ScenarioFile = yaml_serde::from_str(yaml).map_err(|e| error(e.to_string()))?;
        if !(1..=4).contains(&file.devices) {
            return Err(error(format!("devices: {} is not between 1 and 4", file.devices)));
        }
        let devices: Vec<String> = (0..file.devices).map(|i| format!("ens{}", 5 + i)).collect();
        let device = |i: usize, d: &Option<String>| -> Result<Option<usize>, ScenarioError> {
            d.as_ref()
                .map(|name| {
                    devices.iter().position(|n| n == name).ok_or_else(|| {
                        error(format!("events[{i}].device: {name:?} is not one of {}", devices.join(", ")))
                    })
                })
                .transpose()
        };
        let window = |i: usize, at: Span, duration: Span, every: Option<Span>| {
            if duration.0 <= 0 {
                return Err(error(format!("events[{i}].duration must be positive")));
            }
            if every.is_some_and(|e| e.0 < duration.0) {
                return Err(error(format!("events[{i}].every is shorter than its duration")));
            }
            Ok(Window { at: at.0, duration: duration.0, every: every.map(|e| e.0) })
        };
        let mut scenario = Scenario {
            description: file.description.trim().to_owned(),
            devices: devices.clone(),
            available: file.conntrack_available,
            linklocal_pps: file.linklocal_pps,
            drops: Vec::new(),
            ramps: Vec::new(),
            resets: Vec::new(),
            glitches: Vec::new(),
            lookups: Vec::new(),
        };
        for (i, event) in file.events.iter().enumerate() {
            match event {
                EventSpec::Drops { allowance, rate, at, duration, every, device: d } => {
                    let a = Allowance::ALL.into_iter().find(|a| a.label() == allowance).ok_or_else(|| {
                        error(format!(
                            "events[{i}].allowance: {allowance:?} is not one of bw_in, bw_out, pps, conntrack, linklocal"
                        ))
                    })?;
                    scenario.drops.push((device(i, d)?, a, *rate, window(i, *at, *duration, *every)?));
                }
                EventSpec::Conntrack { to, at, duration, device: d } => {
                    if scenario.available.is_none() {
                        return Err(error(format!(
                            "events[{i}]: a conntrack event needs conntrack_available at the top"
                        )));
                    }
                    scenario.ramps.push((device(i, d)?, *to, window(i, *at, *duration, None)?));
                }
                EventSpec::Reset { at, every, device: d } => {
                    scenario.resets.push((device(i, d)?, window(i, *at, Span(1), *every)?));
                }
                EventSpec::Glitch { at, every, device: d } => {
                    scenario.glitches.push((device(i, d)?, window(i, *at, Span(1000), *every)?));
                }
            }
        }
        scenario.ramps.sort_by_key(|(_, _, w)| w.at);
        if file.dns.len() > MAX_LOOKUP_PODS {
            return Err(error(format!("dns: {} pods, at most {MAX_LOOKUP_PODS}", file.dns.len())));
        }
        for (i, spec) in file.dns.iter().enumerate() {
            let (namespace, workload) = spec
                .workload
                .split_once('/')
                .filter(|(n, w)| !n.is_empty() && !w.is_empty() && !w.contains('/'))
                .ok_or_else(|| {
                    error(format!("dns[{i}].workload: {:?} is not namespace/name", spec.workload))
                })?;
            let upstream = Upstream::ALL
                .into_iter()
                .find(|u| *u != Upstream::Other && u.label() == spec.upstream)
                .ok_or_else(|| {
                    error(format!(
                        "dns[{i}].upstream: {:?} is not one of vpc_resolver, nodelocal, cluster_dns",
                        spec.upstream
                    ))
                })?;
            if !(1..=MAX_LOOKUP_RATE).contains(&spec.rate) {
                return Err(error(format!(
                    "dns[{i}].rate: {} is not between 1 and {MAX_LOOKUP_RATE}",
                    spec.rate
                )));
            }
            if scenario.lookups.iter().any(|c| c.address == spec.address) {
                return Err(error(format!("dns[{i}].address: {} is another pod's", spec.address)));
            }
            scenario.lookups.push(Client {
                namespace: namespace.to_owned(),
                workload: workload.to_owned(),
                address: spec.address,
                upstream,
                rate: spec.rate,
            });
        }
        Ok(scenario)
    }

    /// The pods whose lookups the scenario plays, by address; `None` if it plays none.
    fn pods(&self) -> Option<Pods> {
        if self.lookups.is_empty() {
            return None;
        }
        let mut pods = Pods::default();
        for c in &self.lookups {
            let pod = PodRef {
                namespace: c.namespace.clone(),
                pod: format!("{}-6d4cf56db6-{}", c.workload, c.address.octets()[3]),
                workload: Some(format!("Deployment/{}", c.workload)),
                uid: c.address.to_string(),
            };
            pods.insert(c.address.to_string(), pod);
        }
        Some(pods)
    }

    /// Simulated devices.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Link-local packets a second device `d` drops at `t`.
    fn linklocal_dropping(&self, d: usize, t: i64) -> u64 {
        let applies = |target: &Option<usize>| target.is_none_or(|x| x == d);
        self.drops
            .iter()
            .filter(|(dev, a, _, w)| {
                applies(dev)
                    && *a == Allowance::Linklocal
                    && w.last_start(t).is_some_and(|s| t < s.saturating_add(w.duration))
            })
            .fold(0u64, |sum, (_, _, rate, _)| sum.saturating_add(*rate))
    }

    /// Packets per second device `d` sends to link-local services at `t` (DNS, IMDS, NTP).
    fn linklocal_rate(&self, d: usize, t: i64) -> Option<[u32; 3]> {
        let base = self.linklocal_pps?;
        let dropping = self.linklocal_dropping(d, t);
        // Secondary ENIs carry a quarter of the primary's DNS traffic.
        let dns = if d == 0 { base } else { base / 4 };
        let dns = if dropping > 0 {
            u32::try_from(dropping).unwrap_or(u32::MAX).saturating_add(1024 - 3)
        } else {
            dns
        };
        Some([dns, 2, 1])
    }

    /// Every stat value of device `d` at `t` ms after the start, in [`ENA_STATS`] order.
    fn values(&self, d: usize, t: i64, names: &[String], baseline: &[u64]) -> Vec<u64> {
        let applies = |target: &Option<usize>| target.is_none_or(|x| x == d);
        let glitch = self.glitches.iter().any(|(dev, w)| {
            applies(dev) && w.last_start(t).is_some_and(|start| t < start.saturating_add(w.duration))
        });
        // Counters count from the last reset (from zero) or from the baseline.
        let origin =
            self.resets.iter().filter(|(dev, _)| applies(dev)).filter_map(|(_, w)| w.last_start(t)).max();
        let available = self.available.map(|start| {
            // Integer arithmetic, so a simulation is exactly reproducible.
            let mut value = i128::from(start);
            for (_, to, w) in self.ramps.iter().filter(|(dev, _, _)| applies(dev)) {
                let to = i128::from(*to);
                if t >= w.at.saturating_add(w.duration) {
                    value = to;
                } else if t >= w.at {
                    value += (to - value) * i128::from(t - w.at) / i128::from(w.duration);
                    break;
                }
            }
            u64::try_from(value).unwrap_or(0)
        });
        names
            .iter()
            .zip(baseline)
            .map(|(name, &base)| {
                let from = origin.unwrap_or(0);
                let start = if origin.is_some() { 0 } else { base };
                if name == CONNTRACK_AVAILABLE {
                    return if glitch { 0 } else { available.unwrap_or(0) };
                }
                if let Some(a) = Allowance::from_stat(name) {
                    if glitch {
                        return 0;
                    }
                    let dropped = self
                        .drops
                        .iter()
                        .filter(|(dev, da, _, _)| applies(dev) && *da == a)
                        .map(|(_, _, rate, w)| {
                            let ms = w.active_ms_until(t) - w.active_ms_until(from);
                            per_ms(*rate, u64::try_from(ms.max(0)).unwrap_or(0), 1000)
                        })
                        .fold(0u64, u64::saturating_add);
                    return start.saturating_add(dropped);
                }
                // Traffic counters grow as if the baseline were one day's worth.
                let elapsed = u64::try_from((t - from).max(0)).unwrap_or(0);
                start.saturating_add(per_ms(base, elapsed, 86_400_000))
            })
            .collect()
    }
}

/// `rate` per `per` milliseconds, over `ms` milliseconds. Scenario numbers are anything
/// the file says (a rate of 10^19, an event at 10^15 s), so the product is taken wide and
/// the result saturates: a counter pinned at `u64::MAX` rather than a crash.
fn per_ms(rate: u64, ms: u64, per: u64) -> u64 {
    u64::try_from(u128::from(rate) * u128::from(ms) / u128::from(per)).unwrap_or(u64::MAX)
}

/// A DNS analysis a simulation plays lookups into, and the pods it attributes them to.
pub type Analysis = (Arc<Mutex<DnsStats>>, Arc<Mutex<Pods>>);

/// Plays a scenario in real time.
pub struct SimulatedSource {
    scenario: Scenario,
    devices: Vec<(Arc<Device>, Arc<Schema>)>,
    baseline: Vec<u64>,
    start_ms: Option<i64>,
    last_t: Option<i64>,
    lookups: Option<Lookups>,
}

impl SimulatedSource {
    /// A simulation of `scenario`, starting at its first sample.
    pub fn new(scenario: Scenario) -> Self {
        let (names, baseline): (Vec<String>, Vec<u64>) = ENA_STATS
            .lines()
            .filter_map(|l| l.trim().rsplit_once(": "))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<u64>().ok()?)))
            .filter(|(k, _)| scenario.available.is_some() || k != CONNTRACK_AVAILABLE)
            .unzip();
        let schema = Arc::new(Schema::new(names));
        let devices = scenario
            .devices
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let device = Device {
                    name: name.clone(),
                    driver: "ena".into(),
                    driver_version: "2.13.0g".into(),
                    firmware_version: String::new(),
                    bus_info: format!("0000:00:{:02x}.0", 5 + i),
                    eni: Some(format!("eni-0e5a{:013x}", 0x1000 + i)),
                };
                (Arc::new(device), Arc::clone(&schema))
            })
            .collect();
        Self { scenario, devices, baseline, start_ms: None, last_t: None, lookups: None }
    }

    /// A simulation of `scenario` that plays its pods' lookups, if it has any, into a DNS
    /// analysis set up by `settings` as the samples are taken (what `serve --simulate` runs):
    /// the source, and the analysis with the pods it knows.
    pub fn with_lookups(scenario: Scenario, settings: dns::Settings) -> (Self, Option<Analysis>) {
        let Some(pods) = scenario.pods() else { return (Self::new(scenario), None) };
        let pods = Arc::new(Mutex::new(pods));
        let analysis = Arc::new(Mutex::new(DnsStats::new(settings, Some(Arc::clone(&pods)))));
        let mut source = Self::new(scenario);
        source.lookups = Some(Lookups::new(Arc::clone(&analysis), &source.scenario));
        (source, Some((analysis, pods)))
    }

    /// The values of every device `t` ms into the simulation, as a sample at `at_ms`
    /// (link-local packets are counted since `previous_t`).
    pub fn sample_at(&self, at_ms: i64, t: i64) -> Sample {
        self.sample_since(at_ms, t, None)
    }

    fn sample_since(&self, at_ms: i64, t: i64, previous_t: Option<i64>) -> Sample {
        let readings = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, (device, schema))| {
                // Secondary ENIs carry less traffic.
                let scale = 1 + u64::try_from(i).unwrap_or(0) * 3;
                let baseline: Vec<u64> = self.baseline.iter().map(|v| v / scale).collect();
                let values = self.scenario.values(i, t, &schema.names, &baseline);
                let linklocal = previous_t.and_then(|prev| {
                    let ms = u64::try_from(t - prev).ok()?;
                    let rates = self.scenario.linklocal_rate(i, t)?;
                    Some(rates.map(|r| u32::try_from(per_ms(u64::from(r), ms, 1000)).unwrap_or(u32::MAX)))
                });
                Reading {
                    device: Arc::clone(device),
                    schema: Arc::clone(schema),
                    values: values.into(),
                    linklocal,
                }
            })
            .collect();
        Sample { at_ms, readings, ..Sample::default() }
    }
}

impl Source for SimulatedSource {
    fn sample(&mut self, now_ms: i64) -> Option<Sample> {
        let start = *self.start_ms.get_or_insert(now_ms);
        let t = now_ms - start;
        let mut sample = self.sample_since(now_ms, t, self.last_t);
        if let Some(lookups) = &mut self.lookups {
            sample.dns = Some(Arc::new(lookups.play(&self.scenario, start, t, &sample.readings)));
        }
        self.last_t = Some(t);
        Some(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(sample: &Sample, device: usize, stat: &str) -> u64 {
        let r = &sample.readings[device];
        let i = r.schema.names.iter().position(|n| n == stat).unwrap();
        r.values[i]
    }

    #[test]
    fn every_built_in_scenario_parses_and_names_real_enis() {
        for (name, _) in BUILT_IN {
            let s = Scenario::load(name).unwrap();
            assert!(!s.description.is_empty());
            assert!(s.devices().iter().all(|d| d.starts_with("ens")));
        }
        assert!(Scenario::help().contains("dns-storm"));
    }

    #[test]
    fn dns_storm_drops_link_local_packets_in_bursts() {
        let sim = SimulatedSource::new(Scenario::load("dns-storm").unwrap());
        let ll = |t| value(&sim.sample_at(t, t), 0, "linklocal_allowance_exceeded");
        let base = ll(0);
        assert_eq!(ll(8_000), base, "nothing before the burst");
        assert_eq!(ll(10_000), base + 700, "350/s for 2 s");
        assert_eq!(ll(12_000), base + 1400);
        assert_eq!(ll(20_000), base + 1400, "quiet after 4 s");
        assert_eq!(ll(50_000), base + 1400 + 180 + 700, "the second burst, then the next cycle");
        assert_eq!(
            value(&sim.sample_at(0, 50_000), 1, "linklocal_allowance_exceeded"),
            base / 4,
            "ens6 is quiet"
        );
    }

    #[test]
    fn conntrack_headroom_falls_to_zero_then_drops_start() {
        let sim = SimulatedSource::new(Scenario::load("conntrack-exhaustion").unwrap());
        let at = |t, stat| value(&sim.sample_at(t, t), 0, stat);
        assert_eq!(at(0, CONNTRACK_AVAILABLE), 30_000);
        assert_eq!(at(50_000, CONNTRACK_AVAILABLE), 15_000);
        assert_eq!(at(90_000, CONNTRACK_AVAILABLE), 0);
        let before = at(90_000, "conntrack_allowance_exceeded");
        assert_eq!(at(100_000, "conntrack_allowance_exceeded"), before + 2000);
        assert_eq!(at(200_000, CONNTRACK_AVAILABLE), 30_000);
    }

    #[test]
    fn resets_restart_from_zero_and_glitches_read_zero_once() {
        let sim = SimulatedSource::new(Scenario::load("driver-reset").unwrap());
        let ll = |t| value(&sim.sample_at(t, t), 0, "linklocal_allowance_exceeded");
        assert!(ll(19_000) > 500);
        assert_eq!(ll(21_000), 0);
        assert_eq!(ll(67_000), 200, "counting from zero after the reset");
        let sim = SimulatedSource::new(Scenario::load("glitch").unwrap());
        let sample = |t| sim.sample_at(t, t);
        assert_eq!(value(&sample(5_000), 0, "bw_out_allowance_exceeded"), 0);
        assert_eq!(value(&sample(6_000), 0, "bw_out_allowance_exceeded"), 1217);
        assert_eq!(value(&sample(25_500), 0, "pps_allowance_exceeded"), 0);
    }

    /// A simulation of `scenario` playing its pods' lookups into an analysis set up as the
    /// agent's defaults set it up, as `serve --simulate` does.
    fn with_lookups(scenario: Scenario) -> (SimulatedSource, Arc<Mutex<DnsStats>>) {
        let settings = crate::config::Settings::default().resolve().unwrap().dns;
        let (source, analysis) = SimulatedSource::with_lookups(scenario, settings);
        (source, analysis.unwrap().0)
    }

    #[test]
    fn dns_storm_pods_lose_the_share_of_lookups_ec2_drops_and_it_is_throttling() {
        let (mut sim, dns) = with_lookups(Scenario::load("dns-storm").unwrap());
        let start = 1_790_000_000_000;
        // 20 s: the first burst (8-12 s, 350 dropped a second) and its timeouts (5 s) are in.
        let mut totals = None;
        for s in 0..=20 {
            totals = sim.sample(start + s * 1000).unwrap().dns;
        }
        let totals = totals.unwrap();
        let report = dns.lock().unwrap().report(start + 20_000);
        let row =
            |workload: &str| report.who_is_hurt.iter().find(|w| w.workload == workload).unwrap().clone();
        // Lookups sent during the burst lose 350/(1024+350) of themselves: 4 s of each rate.
        for (workload, rate, queries) in [("coredns", 300, 6000), ("web", 120, 2400), ("batch", 15, 300)] {
            let w = row(workload);
            assert_eq!(w.queries, queries, "{workload}: every lookup of 20 s counted once");
            let share = rate * 4 * 350 / 1374;
            assert!(w.timeouts.abs_diff(share) <= 1, "{workload}: {} lost, EC2 drops {share}", w.timeouts);
            assert_eq!(w.throttled, w.timeouts, "{workload}: all during throttling");
        }
        let coredns = row("coredns").timeouts;
        assert_eq!(totals.unanswered, [("ens5".to_owned(), coredns)], "CoreDNS's forwards left by ens5");
        assert_eq!(row("web").namespace, "shop");
        assert_eq!(report.unanswered, coredns + row("web").timeouts + row("batch").timeouts);
    }

    #[test]
    fn lookups_survive_any_drop_rate_and_replay_at_most_a_minute_after_a_stall() {
        let yaml = "description: d\nevents:\n - {kind: drops, allowance: linklocal, rate: 18446744073709551615, \
                    at: 0s, duration: 1h}\ndns:\n - {workload: a/web, address: 10.0.0.1, upstream: vpc_resolver, rate: 100}\n";
        let (mut sim, dns) = with_lookups(Scenario::parse(yaml, "x.yaml").unwrap());
        let start = 1_790_000_000_000;
        sim.sample(start);
        // Suspended for an hour: the next sample plays the last minute of lookups.
        sim.sample(start + 3_600_000);
        let report = dns.lock().unwrap().report(start + 3_600_000);
        assert_eq!(report.queries, 6000);
        assert!(report.responses < 10, "nearly everything is dropped: {} answered", report.responses);
    }

    #[test]
    fn bad_scenarios_say_what_and_where() {
        let err = |yaml: &str| Scenario::parse(yaml, "x.yaml").unwrap_err().to_string();
        assert!(err("description: d\ndevices: 5\n").contains("devices: 5 is not between 1 and 4"));
        assert!(err("description: d\nevents:\n - kind: drops\n   allowance: dns\n   rate: 1\n   at: 1s\n   duration: 1s\n")
            .contains("events[0].allowance: \"dns\" is not one of"));
        assert!(err("description: d\nevents:\n - kind: glitch\n   at: soon\n").contains("\"soon\""));
        assert!(err("description: d\nevents:\n - kind: glitch\n   at: 1s\n   device: ens9\n")
            .contains("events[0].device: \"ens9\" is not one of ens5"));
        assert!(err("description: d\ncolor: red\n").contains("unknown field `color`"));
        let pod = |fields: &str| err(&format!("description: d\ndns:\n - {{{fields}}}\n"));
        assert!(pod("workload: web, address: 10.0.0.1, upstream: cluster_dns, rate: 1")
            .contains("dns[0].workload: \"web\" is not namespace/name"));
        assert!(pod("workload: a/web, address: 10.0.0.1, upstream: google, rate: 1")
            .contains("dns[0].upstream: \"google\" is not one of vpc_resolver"));
        assert!(pod("workload: a/web, address: 10.0.0.1, upstream: nodelocal, rate: 0")
            .contains("dns[0].rate: 0 is not between 1 and 10000"));
        assert!(pod("workload: a/web, address: 10.0.0.300, upstream: nodelocal, rate: 1").contains("address"));
        let twice = "description: d\ndns:\n - {workload: a/b, address: 10.0.0.1, upstream: nodelocal, rate: 1}\n - {workload: a/c, address: 10.0.0.1, upstream: nodelocal, rate: 1}\n";
        assert!(err(twice).contains("dns[1].address: 10.0.0.1 is another pod's"));
        let unknown = Scenario::load("dns-strom").unwrap_err().to_string();
        assert!(unknown.contains("known: steady, dns-storm"), "{unknown}");
    }
}
