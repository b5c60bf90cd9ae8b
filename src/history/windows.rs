//! Reads of one device's history that the live readers (the API, the page, `top`) and the
//! offline report share: throttling episodes and the recent windows.

use serde::Serialize;

use super::Point;
use crate::base::time::rfc3339;
use crate::base::Allowance;

/// A run of consecutive sampling intervals in which an allowance's counter increased.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Episode {
    /// Start of the first interval (the sample before the first increase), RFC 3339.
    pub start: String,
    /// End of the last interval, RFC 3339.
    pub end: String,
    /// `end - start`, seconds.
    pub duration_seconds: f64,
    /// Packets queued or dropped during the episode.
    pub packets: u64,
    /// Highest per-interval rate, packets per second.
    pub peak_pps: f64,
}

/// Finds the episodes of allowance `a` in one device's history points (oldest first).
pub fn episodes(points: &[Point], a: Allowance) -> Vec<Episode> {
    let mut out: Vec<(i64, i64, u64, f64)> = Vec::new();
    let mut previous: Option<&Point> = None;
    let mut open = false;
    for p in points {
        if p.flags & Point::GLITCH != 0 {
            continue;
        }
        let added = u64::from(p.added[a.index()]);
        match previous {
            Some(prev) if added > 0 => {
                let seconds = (p.at_ms - prev.at_ms) as f64 / 1000.0;
                let rate = if seconds > 0.0 { added as f64 / seconds } else { 0.0 };
                match out.last_mut().filter(|_| open) {
                    Some(e) => {
                        e.1 = p.at_ms;
                        e.2 += added;
                        e.3 = e.3.max(rate);
                    }
                    None => out.push((prev.at_ms, p.at_ms, added, rate)),
                }
                open = true;
            }
            _ => open = false,
        }
        previous = Some(p);
    }
    out.into_iter()
        .map(|(start, end, packets, peak)| Episode {
            start: rfc3339(start),
            end: rfc3339(end),
            duration_seconds: (end - start) as f64 / 1000.0,
            packets,
            peak_pps: (peak * 10.0).round() / 10.0,
        })
        .collect()
}

/// What the last second and the recent windows of one allowance look like.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Recent {
    /// Packets per second over the latest sampling interval.
    pub pps: f64,
    /// Seconds throttled in the minute up to the latest sample.
    pub throttled_1m: f64,
    /// Seconds throttled in the 15 minutes up to the latest sample.
    pub throttled_15m: f64,
}

/// Computes [`Recent`] for allowance `a` from a device's points (oldest first).
pub fn recent(points: &[Point], a: Allowance) -> Recent {
    let good: Vec<&Point> = points.iter().filter(|p| p.flags & Point::GLITCH == 0).collect();
    let Some(now) = good.last().map(|p| p.at_ms) else { return Recent::default() };
    let mut r = Recent::default();
    for pair in good.windows(2) {
        let (prev, p) = (pair[0], pair[1]);
        let added = p.added[a.index()];
        if added == 0 {
            continue;
        }
        let seconds = (p.at_ms - prev.at_ms) as f64 / 1000.0;
        if p.at_ms == now && seconds > 0.0 {
            r.pps = f64::from(added) / seconds;
        }
        if p.at_ms > now - 60_000 {
            r.throttled_1m += seconds;
        }
        if p.at_ms > now - 900_000 {
            r.throttled_15m += seconds;
        }
    }
    r.throttled_1m = round_ms(r.throttled_1m);
    r.throttled_15m = round_ms(r.throttled_15m);
    r
}

/// Seconds rounded to whole milliseconds, as reports show them.
pub(crate) fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}
