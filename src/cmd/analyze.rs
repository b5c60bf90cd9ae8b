//! Offline analysis of a capture: throttling episodes, conntrack headroom, resets and
//! glitches, and a verdict with the fix.
//!
//! A capture is replayed through the same sampler and counter semantics as the live agent,
//! so `analyze` and `/metrics` can never disagree about what counts as a drop; episodes
//! are then read off the history at sample resolution.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::base::time::rfc3339;
use crate::base::Allowance;
use crate::history::windows::{episodes, round_ms, Episode};
use crate::history::{Point, Store};
use crate::sampler::{Sampler, Settings};
use crate::source::capture::Capture;
use crate::source::replay::{Playback, ReplaySource};

/// The JSON report of `enawatch analyze --format json` (`version` 1; fields are only ever
/// added, never renamed or removed, within a version).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Report format version.
    pub version: u32,
    /// The capture analyzed.
    pub source: String,
    /// Samples in the capture.
    pub samples: usize,
    /// First sample, RFC 3339.
    pub start: String,
    /// Last sample, RFC 3339.
    pub end: String,
    /// Per device.
    pub devices: Vec<DeviceReport>,
    /// The conclusion.
    pub verdict: Verdict,
}

/// What one device went through.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// Interface name.
    pub device: String,
    /// Driver, when the capture says.
    pub driver: String,
    /// Driver version, when the capture says.
    pub driver_version: String,
    /// ENI id, when known.
    pub eni: Option<String>,
    /// The five allowances, in the order bw_in, bw_out, pps, conntrack, linklocal.
    pub allowances: Vec<AllowanceReport>,
    /// Lowest `conntrack_allowance_available` seen (not counting glitch samples).
    pub conntrack_available_min: Option<LowWater>,
    /// Times at which the driver's counters went backwards (a driver reset).
    pub resets: Vec<String>,
    /// Times of samples that were the ENA all-zero glitch (ignored).
    pub glitches: Vec<String>,
}

/// One allowance on one device.
#[derive(Clone, Debug, Serialize)]
pub struct AllowanceReport {
    /// `bw_in`, `bw_out`, `pps`, `conntrack` or `linklocal`.
    pub allowance: &'static str,
    /// Whether the driver reports it.
    pub supported: bool,
    /// Packets queued or dropped during the capture.
    pub packets: u64,
    /// Seconds of sampling intervals with drops.
    pub throttled_seconds: f64,
    /// The episodes.
    pub episodes: Vec<Episode>,
}

/// A minimum and when it was first reached.
#[derive(Clone, Debug, Serialize)]
pub struct LowWater {
    /// The lowest value.
    pub value: u64,
    /// When, RFC 3339.
    pub at: String,
}

/// The conclusion of an analysis.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Whether any allowance was exceeded.
    pub throttled: bool,
    /// One sentence.
    pub summary: String,
    /// One finding per exceeded allowance, worst first.
    pub findings: Vec<Finding>,
}

/// One exceeded allowance across devices, and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The allowance.
    pub allowance: &'static str,
    /// Devices where it was exceeded.
    pub devices: Vec<String>,
    /// Packets queued or dropped, all devices.
    pub packets: u64,
    /// Episodes, all devices.
    pub episodes: usize,
    /// The recommended fix.
    pub advice: &'static str,
}

/// What to do when an allowance is exceeded.
pub(crate) fn advice(a: Allowance) -> &'static str {
    match a {
        Allowance::Linklocal => {
            "Link-local traffic (DNS to the VPC resolver, instance metadata, Time Sync) went over 1024 \
             packets/s on the ENI. Cache DNS on every node with NodeLocal DNSCache, or run more CoreDNS \
             replicas spread across nodes (topology spread or pod anti-affinity), and lower ndots in the \
             pods' dnsConfig (or use trailing-dot names) so one lookup is not tried against every search \
             domain."
        }
        Allowance::Conntrack => {
            "The ENI's connection-tracking allowance was exhausted, so new connections were dropped. \
             Reuse connections (keep-alive, pooling), shorten idle timeouts so tracked flows expire \
             sooner, or use a larger instance type: the allowance grows with instance size."
        }
        Allowance::Pps => {
            "Packets per second went over the instance's allowance. Send fewer, larger packets \
             (batching, larger MTU inside the VPC) or use a larger instance type. \
             pps_allowance_exceeded also counts drops from the per-ENI egress-fragment limit: check \
             for fragmented egress (UDP datagrams larger than the MTU)."
        }
        Allowance::BwIn | Allowance::BwOut => {
            "Bandwidth went over the instance's allowance. Size the instance for sustained throughput: \
             on \"up to\" instance types the baseline is far below the burst figure, and the burst \
             credits run out under sustained load."
        }
    }
}

/// Replays `capture` through the counter semantics and reports on it.
pub fn analyze(capture: Capture, source: &str) -> Report {
    let count = capture.samples.len();
    let (first_ms, last_ms) = match (capture.samples.first(), capture.samples.last()) {
        (Some(a), Some(b)) => (a.at_ms, b.at_ms),
        _ => (0, 0),
    };
    let store = Arc::new(Store::new(count + 1));
    let replay = ReplaySource::new(capture, Playback { speed: f64::INFINITY, repeat: false, vanish: false });
    let settings = Settings {
        interval: std::time::Duration::from_secs(1),
        compat_stats: None,
        forget_after_ms: i64::MAX,
    };
    let mut sampler = Sampler::new(Box::new(replay), settings, Arc::clone(&store));
    while sampler.tick(0).is_some() {}

    let snapshot = store.latest();
    let devices: Vec<DeviceReport> = store.read_history(|h| {
        snapshot
            .devices
            .iter()
            .map(|d| {
                let points: Vec<Point> = h.points(&d.device.name).collect();
                let allowances = Allowance::ALL
                    .into_iter()
                    .map(|a| {
                        let episodes = episodes(&points, a);
                        AllowanceReport {
                            allowance: a.label(),
                            supported: d.counters.supported[a.index()],
                            packets: episodes.iter().map(|e| e.packets).sum(),
                            throttled_seconds: round_ms(
                                episodes.iter().fold(0.0, |sum, e| sum + e.duration_seconds),
                            ),
                            episodes,
                        }
                    })
                    .collect();
                let low = points
                    .iter()
                    .filter(|p| p.available != Point::NO_VALUE && p.flags & Point::GLITCH == 0)
                    .min_by_key(|p| (p.available, p.at_ms));
                let flagged =
                    |flag| points.iter().filter(|p| p.flags & flag != 0).map(|p| rfc3339(p.at_ms)).collect();
                DeviceReport {
                    device: d.device.name.clone(),
                    driver: d.device.driver.clone(),
                    driver_version: d.device.driver_version.clone(),
                    eni: d.device.eni.clone(),
                    allowances,
                    conntrack_available_min: low
                        .map(|p| LowWater { value: u64::from(p.available), at: rfc3339(p.at_ms) }),
                    resets: flagged(Point::RESET),
                    glitches: flagged(Point::GLITCH),
                }
            })
            .collect()
    });
    let verdict = verdict(&devices);
    Report {
        version: 1,
        source: source.to_owned(),
        samples: count,
        start: rfc3339(first_ms),
        end: rfc3339(last_ms),
        devices,
        verdict,
    }
}

fn verdict(devices: &[DeviceReport]) -> Verdict {
    let mut findings: Vec<Finding> = Allowance::ALL
        .into_iter()
        .filter_map(|a| {
            let hit: Vec<&AllowanceReport> =
                devices.iter().map(|d| &d.allowances[a.index()]).filter(|r| r.packets > 0).collect();
            (!hit.is_empty()).then(|| Finding {
                allowance: a.label(),
                devices: devices
                    .iter()
                    .filter(|d| d.allowances[a.index()].packets > 0)
                    .map(|d| d.device.clone())
                    .collect(),
                packets: hit.iter().map(|r| r.packets).sum(),
                episodes: hit.iter().map(|r| r.episodes.len()).sum(),
                advice: advice(a),
            })
        })
        .collect();
    // Conntrack exhaustion breaks new connections outright: it leads; then by packets.
    findings.sort_by_key(|f| (f.allowance != "conntrack", std::cmp::Reverse(f.packets)));
    let summary = if findings.is_empty() {
        let exhausted: Vec<&str> = devices
            .iter()
            .filter(|d| d.conntrack_available_min.as_ref().is_some_and(|l| l.value == 0))
            .map(|d| d.device.as_str())
            .collect();
        if exhausted.is_empty() {
            "Not throttled: no allowance was exceeded in this capture.".to_owned()
        } else {
            format!("Not throttled, but conntrack headroom reached 0 on {}.", exhausted.join(", "))
        }
    } else {
        let parts: Vec<String> = findings
            .iter()
            .map(|f| {
                let episodes = plural(f.episodes, "episode");
                format!("{} on {} ({} packets in {episodes})", f.allowance, f.devices.join(", "), f.packets)
            })
            .collect();
        format!("Throttled: {}.", parts.join("; "))
    };
    Verdict { throttled: !findings.is_empty(), summary, findings }
}

impl Report {
    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}: {} samples, {} to {}\n", self.source, self.samples, self.start, self.end);
        for d in &self.devices {
            let mut about = vec![];
            if !d.driver.is_empty() {
                about.push(format!("{} {}", d.driver, d.driver_version).trim().to_owned());
            }
            if let Some(eni) = &d.eni {
                about.push(eni.clone());
            }
            let _ = writeln!(
                s,
                "{}{}",
                d.device,
                if about.is_empty() { String::new() } else { format!(" ({})", about.join(", ")) }
            );
            let mut quiet = true;
            for a in &d.allowances {
                if !a.supported {
                    continue;
                }
                if a.episodes.is_empty() {
                    continue;
                }
                quiet = false;
                let _ = writeln!(
                    s,
                    "  {:<10} {}, {} packets, {}s throttled",
                    a.allowance,
                    plural(a.episodes.len(), "episode"),
                    a.packets,
                    a.throttled_seconds
                );
                for e in &a.episodes {
                    let _ = writeln!(
                        s,
                        "      {} to {}  {:>6}s  {:>8} packets  peak {}/s",
                        e.start, e.end, e.duration_seconds, e.packets, e.peak_pps
                    );
                }
            }
            let unsupported: Vec<&str> =
                d.allowances.iter().filter(|a| !a.supported).map(|a| a.allowance).collect();
            if unsupported.len() == 5 {
                let _ = writeln!(
                    s,
                    "  the driver reports no allowance statistics (ENA driver 2.2.10 or later needed)"
                );
            } else if quiet {
                let _ = writeln!(s, "  no allowance exceeded");
            }
            if let Some(low) = &d.conntrack_available_min {
                let _ = writeln!(s, "  conntrack available: low-water mark {} at {}", low.value, low.at);
            }
            if !d.resets.is_empty() {
                let _ = writeln!(s, "  driver counter resets: {}", d.resets.join(", "));
            }
            if !d.glitches.is_empty() {
                let _ = writeln!(s, "  all-zero glitch samples (ignored): {}", d.glitches.join(", "));
            }
            s.push('\n');
        }
        let _ = writeln!(s, "Verdict: {}", self.verdict.summary);
        for f in &self.verdict.findings {
            let _ = writeln!(s, "\n  {}: {}", f.allowance, f.advice);
        }
        s
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_s: i64, ll: u32, flags: u8) -> Point {
        Point {
            at_ms: at_s * 1000,
            added: [0, 0, 0, 0, ll],
            available: Point::NO_VALUE,
            flags,
            linklocal: Point::NO_VALUE,
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_328_653_279), "2026-11-22T06:24:13.279Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn episodes_are_runs_of_increasing_intervals() {
        let points = [
            point(0, 0, 0),
            point(1, 100, 0),
            point(2, 300, 0),
            point(3, 0, 0),
            point(4, 0, Point::GLITCH),
            point(5, 50, 0),
        ];
        let e = episodes(&points, Allowance::Linklocal);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].duration_seconds, e[0].packets, e[0].peak_pps), (2.0, 400, 300.0));
        assert_eq!(e[0].start, rfc3339(0));
        // After a glitch the interval runs from the last good sample.
        assert_eq!(
            (e[1].start.as_str(), e[1].duration_seconds, e[1].peak_pps),
            (rfc3339(3000).as_str(), 2.0, 25.0)
        );
        assert!(episodes(&points, Allowance::Pps).is_empty());
    }
}
