//! Local alerting: the shipped alerts, evaluated by the agent itself from its in-memory
//! history at sample resolution, for nodes without Prometheus (or with one that scrapes too
//! rarely to see a burst).
//!
//! The rules are the same objects the Prometheus rules are rendered from
//! ([`rules::ALLOWANCE_ALERTS`], [`rules::CONNTRACK_LOW`]): same names, severities, windows,
//! thresholds, `for` and `keep_firing_for`, so the two cannot drift. Thresholds and durations
//! can be overridden in the config file. States follow Prometheus: an alert is pending while
//! its condition holds for less than `for`, firing after that (and for `keep_firing_for` after
//! the condition clears), then resolved.

pub mod notify;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::rfc3339;
use crate::config::{parse_duration, ConfigError, HumanDuration};
use crate::history::{History, Point, Snapshot};
use crate::rules::{self, Severity};
use crate::stats::Allowance;

/// What a local rule looks at.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// Throttled at least `min_throttled` within `window` on a device.
    Throttled {
        /// The allowance.
        allowance: Allowance,
        /// Threshold.
        min_throttled: Duration,
        /// Look-back window.
        window: Duration,
    },
    /// The 99th-percentile interval of `window` sent more than `ratio` of the link-local
    /// budget (with the link-local meter on).
    LinkLocalBudget {
        /// Share of the 1024/s budget.
        ratio: f64,
        /// Look-back window.
        window: Duration,
    },
    /// The lowest conntrack headroom of the instance is below `below`.
    ConntrackBelow {
        /// Threshold.
        below: u64,
    },
}

/// One local alerting rule.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalRule {
    /// Alert name.
    pub name: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Condition.
    pub condition: Condition,
    /// `for`.
    pub hold: Duration,
    /// `keep_firing_for`.
    pub keep_firing: Duration,
    /// One line.
    pub summary: &'static str,
    /// What it means.
    pub impact: &'static str,
}

/// The default local rules: the shipped ENA alerts.
pub fn default_rules() -> Vec<LocalRule> {
    let mut out: Vec<LocalRule> = rules::ALLOWANCE_ALERTS
        .iter()
        .map(|a| LocalRule {
            name: a.name,
            severity: a.severity,
            condition: Condition::Throttled {
                allowance: a.allowance,
                min_throttled: a.min_throttled,
                window: a.window,
            },
            hold: a.hold,
            keep_firing: a.keep_firing,
            summary: a.summary,
            impact: a.impact,
        })
        .collect();
    out.push(LocalRule {
        name: "LinkLocalBudgetNearlyExhausted",
        severity: Severity::Warning,
        condition: Condition::LinkLocalBudget { ratio: rules::BUDGET_RATIO, window: rules::BUDGET_WINDOW },
        hold: rules::BUDGET_HOLD,
        keep_firing: Duration::ZERO,
        summary: "Link-local budget nearly used up",
        impact: "EC2 drops link-local packets (DNS, IMDS, Time Sync) beyond 1024 a second per ENI.",
    });
    out.push(LocalRule {
        name: "ConntrackAllowanceLow",
        severity: Severity::Warning,
        condition: Condition::ConntrackBelow { below: rules::CONNTRACK_LOW },
        hold: rules::CONNTRACK_LOW_HOLD,
        keep_firing: Duration::ZERO,
        summary: "Conntrack headroom low",
        impact: "New connections will be dropped when the instance's conntrack allowance is exhausted.",
    });
    out
}

/// A change to a local rule, from the config file (`alerts.rules`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    /// Which alert (its name).
    pub alert: String,
    /// Which of its severities; every one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// `false` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Throttled-time threshold (allowance alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_throttled: Option<String>,
    /// Look-back window (allowance alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Headroom threshold (`ConntrackAllowanceLow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<u64>,
    /// How long the condition must hold.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// How long to keep firing after the condition clears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
}

/// The default rules with `overrides` applied; errors name the override and its field.
pub fn rules_with(overrides: &[RuleOverride]) -> Result<Vec<LocalRule>, ConfigError> {
    let mut rules = default_rules();
    for (i, o) in overrides.iter().enumerate() {
        let bad = |what: &str, value: &str, problem: &str| ConfigError::Invalid {
            field: "alerts.rules",
            value: format!("[{i}] {what}: {value}"),
            problem: problem.to_owned(),
        };
        let duration = |what: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.as_deref().map(|s| parse_duration(s).map_err(|p| bad(what, s, &p))).transpose()
        };
        let matching: Vec<usize> = (0..rules.len())
            .filter(|&r| rules[r].name == o.alert)
            .filter(|&r| o.severity.as_deref().is_none_or(|s| rules[r].severity.label() == s))
            .collect();
        if matching.is_empty() {
            let names: Vec<&str> = {
                let mut n: Vec<&str> = default_rules().iter().map(|r| r.name).collect();
                n.dedup();
                n
            };
            let what = format!(
                "{}{}",
                o.alert,
                o.severity.as_deref().map(|s| format!(" ({s})")).unwrap_or_default()
            );
            return Err(bad("alert", &what, &format!("matches no local alert; known: {}", names.join(", "))));
        }
        let (min, window, hold, keep) = (
            duration("min_throttled", &o.min_throttled)?,
            duration("window", &o.window)?,
            duration("for", &o.hold)?,
            duration("keep_firing_for", &o.keep_firing_for)?,
        );
        for &r in &matching {
            let rule = &mut rules[r];
            if let Some(d) = hold {
                rule.hold = d;
            }
            if let Some(d) = keep {
                rule.keep_firing = d;
            }
            match &mut rule.condition {
                Condition::Throttled { min_throttled, window: w, .. } => {
                    if o.below.is_some() {
                        return Err(bad("below", &o.alert, "applies to ConntrackAllowanceLow only"));
                    }
                    *min_throttled = min.unwrap_or(*min_throttled);
                    *w = window.unwrap_or(*w);
                }
                Condition::LinkLocalBudget { window: w, .. } => {
                    if min.is_some() || o.below.is_some() {
                        return Err(bad("min_throttled/below", &o.alert, "do not apply to this alert"));
                    }
                    *w = window.unwrap_or(*w);
                }
                Condition::ConntrackBelow { below } => {
                    if min.is_some() || window.is_some() {
                        return Err(bad("min_throttled/window", &o.alert, "apply to allowance alerts only"));
                    }
                    *below = o.below.unwrap_or(*below);
                }
            }
        }
        if o.enabled == Some(false) {
            let mut k = 0;
            rules.retain(|_| {
                k += 1;
                !matching.contains(&(k - 1))
            });
        }
    }
    Ok(rules)
}

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The condition holds, for less than `for` so far.
    Pending,
    /// Firing.
    Firing,
    /// Was firing, no longer.
    Resolved,
}

impl State {
    /// The `alertstate` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert instance: a rule on a device (or on the instance).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Alert name.
    pub name: &'static str,
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    /// The device, for per-device alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The allowance, for allowance alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<&'static str>,
    /// Current state.
    pub state: State,
    /// The condition's value at the last evaluation (throttled seconds, or headroom).
    pub value: f64,
    /// When the condition started to hold (RFC 3339).
    pub active_since: String,
    /// When it started firing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firing_since: Option<String>,
    /// When it resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// One line.
    pub summary: String,
    /// What is happening.
    pub description: String,
    /// Where to read what to do.
    pub runbook_url: String,
    #[serde(skip)]
    active_ms: i64,
    #[serde(skip)]
    last_true_ms: i64,
}

/// A change of state worth notifying: `Firing` or `Resolved`.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The alert as of the change.
    pub alert: Alert,
    /// When, Unix milliseconds.
    pub at_ms: i64,
}

/// How many resolved alerts the API keeps showing.
const RESOLVED_KEPT: usize = 50;

/// Evaluates the local rules tick by tick.
#[derive(Debug)]
pub struct Evaluator {
    rules: Vec<LocalRule>,
    active: BTreeMap<(usize, Option<String>), Alert>,
    resolved: VecDeque<Alert>,
    /// Per device, the intervals in which an allowance counter grew, kept up to date one
    /// new point per tick: a tick never rescans a device's history.
    throttling: BTreeMap<String, Throttling>,
    /// Scratch for the points a tick added, reused.
    new_points: Vec<Point>,
}

/// What `throttled_seconds` needs of one device's history, maintained incrementally.
#[derive(Debug, Default)]
struct Throttling {
    /// Time of the newest point taken into account.
    last_seen_ms: Option<i64>,
    /// Time of the newest point that was not a glitch: where the next interval starts.
    last_good_ms: Option<i64>,
    /// (start, end, allowances whose counter grew as a bit set) of every interval between
    /// two consecutive good points in which some counter grew, oldest first.
    intervals: VecDeque<(i64, i64, u8)>,
}

impl Throttling {
    /// Takes the device's new points into account and forgets intervals whose start point
    /// left the history (exactly what a scan of the history would no longer pair up).
    fn update(&mut self, history: &History, device: &str, new: &mut Vec<Point>) {
        let last_seen = self.last_seen_ms;
        new.clear();
        new.extend(history.points(device).rev().take_while(|p| last_seen.is_none_or(|t| p.at_ms > t)));
        for p in new.iter().rev() {
            self.last_seen_ms = Some(p.at_ms);
            if p.flags & Point::GLITCH != 0 {
                continue;
            }
            let grew = Allowance::ALL
                .iter()
                .filter(|a| p.added[a.index()] > 0)
                .fold(0u8, |bits, a| bits | 1 << a.index());
            if let (Some(start), true) = (self.last_good_ms, grew != 0) {
                self.intervals.push_back((start, p.at_ms, grew));
            }
            self.last_good_ms = Some(p.at_ms);
        }
        let oldest = history.points(device).next().map_or(i64::MAX, |p| p.at_ms);
        while self.intervals.front().is_some_and(|&(start, _, _)| start < oldest) {
            self.intervals.pop_front();
        }
    }

    /// [`throttled_seconds`] of the whole history, from the intervals.
    fn seconds(&self, a: Allowance, since_ms: i64) -> f64 {
        let ms: i64 = self
            .intervals
            .iter()
            .rev()
            .take_while(|&&(_, end, _)| end > since_ms)
            .filter(|&&(_, _, grew)| grew & 1 << a.index() != 0)
            .map(|&(start, end, _)| end - start)
            .sum();
        ms as f64 / 1000.0
    }
}

impl Evaluator {
    /// An evaluator of `rules`.
    pub fn new(rules: Vec<LocalRule>) -> Self {
        Self {
            rules,
            active: BTreeMap::new(),
            resolved: VecDeque::new(),
            throttling: BTreeMap::new(),
            new_points: Vec::new(),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &[LocalRule] {
        &self.rules
    }

    /// Evaluates every rule at the snapshot's time; returns the alerts that started firing
    /// or resolved.
    #[allow(clippy::too_many_lines)] // every rule kind, then the state machine, in one pass
    pub fn evaluate(&mut self, snapshot: &Snapshot, history: &History) -> Vec<Transition> {
        let now = snapshot.at_ms;
        // (rule, device, allowance, value, condition holds)
        let mut results: Vec<Evaluation> = Vec::new();
        let mut tracked = 0;
        for d in snapshot.devices.iter().filter(|d| d.counters.supported.iter().any(|&s| s)) {
            tracked += 1;
            let name = &d.device.name;
            let t = match self.throttling.get_mut(name) {
                Some(t) => t,
                None => self.throttling.entry(name.clone()).or_default(),
            };
            t.update(history, name, &mut self.new_points);
        }
        if self.throttling.len() > tracked {
            // A device vanished or stopped reporting allowance stats: forget it.
            let names: std::collections::BTreeSet<&str> =
                snapshot.devices.iter().map(|d| d.device.name.as_str()).collect();
            self.throttling.retain(|name, _| names.contains(name.as_str()));
        }
        // One lookup per device, not one per rule and device.
        let throttling: Vec<Option<&Throttling>> =
            snapshot.devices.iter().map(|d| self.throttling.get(&d.device.name)).collect();
        for (r, rule) in self.rules.iter().enumerate() {
            match &rule.condition {
                Condition::Throttled { allowance, min_throttled, window } => {
                    for (d, t) in snapshot.devices.iter().zip(&throttling) {
                        if !d.counters.supported[allowance.index()] {
                            continue;
                        }
                        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
                        let since = now.saturating_sub(window_ms);
                        let value = t.map_or(0.0, |t| t.seconds(*allowance, since));
                        let holds = value >= min_throttled.as_secs_f64();
                        // Nothing to do for a device neither throttled nor alerting (the usual
                        // case): skip it before its name is copied into a result.
                        let alerting = !self.active.is_empty()
                            && self
                                .active
                                .keys()
                                .any(|(ar, ad)| *ar == r && ad.as_deref() == Some(&d.device.name));
                        if !holds && !alerting {
                            continue;
                        }
                        results.push((r, Some(d.device.name.clone()), Some(allowance.label()), value, holds));
                    }
                }
                Condition::LinkLocalBudget { ratio, window } => {
                    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
                    for d in snapshot.devices.iter().filter(|d| d.linklocal.is_some()) {
                        let since = now.saturating_sub(window_ms);
                        let mut rates: Vec<u32> = history
                            .points(&d.device.name)
                            .filter(|p| p.at_ms > since && p.linklocal != Point::NO_VALUE)
                            .map(|p| p.linklocal)
                            .collect();
                        if rates.is_empty() {
                            continue;
                        }
                        rates.sort_unstable();
                        // The 99th-percentile interval (nearest rank).
                        let rank = (rates.len() * 99).div_ceil(100).max(1) - 1;
                        let value = f64::from(rates[rank]);
                        let holds = value > ratio * crate::linklocal::BUDGET_PPS;
                        results.push((r, Some(d.device.name.clone()), Some("linklocal"), value, holds));
                    }
                }
                Condition::ConntrackBelow { below } => {
                    let min = snapshot
                        .devices
                        .iter()
                        .filter(|d| d.counters.available_supported)
                        .filter_map(|d| d.counters.available)
                        .min();
                    if let Some(min) = min {
                        results.push((r, None, None, min as f64, min < *below));
                    }
                }
            }
        }

        let mut transitions = Vec::new();
        let mut seen = Vec::new();
        for (r, device, allowance, value, holds) in results {
            let key = (r, device.clone());
            seen.push(key.clone());
            let rule = &self.rules[r];
            if holds {
                let alert =
                    self.active.entry(key).or_insert_with(|| new_alert(rule, device, allowance, value, now));
                alert.value = value;
                alert.last_true_ms = now;
                alert.description = describe(rule, alert.device.as_deref(), value);
                if alert.state == State::Pending && now - alert.active_ms >= millis(rule.hold) {
                    alert.state = State::Firing;
                    alert.firing_since = Some(rfc3339(now));
                    transitions.push(Transition { alert: alert.clone(), at_ms: now });
                }
            } else if let Some(alert) = self.active.get_mut(&key) {
                alert.value = value;
                let keep =
                    alert.state == State::Firing && now - alert.last_true_ms < millis(rule.keep_firing);
                if !keep {
                    self.end(&key, now, &mut transitions);
                }
            }
        }
        // Devices that vanished take their alerts with them.
        let gone: Vec<_> = self.active.keys().filter(|k| !seen.contains(k)).cloned().collect();
        for key in gone {
            self.end(&key, now, &mut transitions);
        }
        transitions
    }

    fn end(&mut self, key: &(usize, Option<String>), now: i64, transitions: &mut Vec<Transition>) {
        let Some(mut alert) = self.active.remove(key) else { return };
        if alert.state == State::Firing {
            alert.state = State::Resolved;
            alert.resolved_at = Some(rfc3339(now));
            transitions.push(Transition { alert: alert.clone(), at_ms: now });
            if self.resolved.len() == RESOLVED_KEPT {
                self.resolved.pop_front();
            }
            self.resolved.push_back(alert);
        }
    }

    /// Pending and firing alerts, then the most recently resolved ones.
    pub fn alerts(&self) -> Vec<Alert> {
        self.active.values().cloned().chain(self.resolved.iter().rev().cloned()).collect()
    }
}

/// One rule's condition on one device: (rule, device, allowance, value, holds).
type Evaluation = (usize, Option<String>, Option<&'static str>, f64, bool);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn new_alert(
    rule: &LocalRule,
    device: Option<String>,
    allowance: Option<&'static str>,
    value: f64,
    now: i64,
) -> Alert {
    Alert {
        name: rule.name,
        severity: rule.severity.label(),
        summary: match &device {
            Some(d) => format!("{} on {d}", rule.summary),
            None => rule.summary.to_owned(),
        },
        description: describe(rule, device.as_deref(), value),
        runbook_url: format!("{}#{}", rules::RUNBOOK_BASE, rule.name.to_lowercase()),
        device,
        allowance,
        state: State::Pending,
        value,
        active_since: rfc3339(now),
        firing_since: None,
        resolved_at: None,
        active_ms: now,
        last_true_ms: now,
    }
}

fn describe(rule: &LocalRule, device: Option<&str>, value: f64) -> String {
    match (&rule.condition, device) {
        (Condition::LinkLocalBudget { window, .. }, Some(d)) => format!(
            "The busiest seconds of {d} in the last {} sent {value} packets per second to link-local \
             services, more than 80% of the 1024/s budget. {}",
            HumanDuration(*window),
            rule.impact
        ),
        (Condition::Throttled { window, .. }, Some(d)) => {
            format!("{d} was throttled for {value}s of the last {}. {}", HumanDuration(*window), rule.impact)
        }
        _ => format!("Only {value} more connections can be tracked. {}", rule.impact),
    }
}

/// Seconds of sampling intervals after `since_ms` in which allowance `a`'s counter grew.
pub fn throttled_seconds(points: &[&Point], a: Allowance, since_ms: i64) -> f64 {
    let good: Vec<&&Point> = points.iter().filter(|p| p.flags & Point::GLITCH == 0).collect();
    let mut ms = 0i64;
    for pair in good.windows(2) {
        let (prev, p) = (pair[0], pair[1]);
        if p.added[a.index()] > 0 && p.at_ms > since_ms {
            ms += p.at_ms - prev.at_ms;
        }
    }
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod incremental_equivalence {
    use super::*;

    #[test]
    fn incremental_throttled_seconds_equal_a_full_scan() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for capacity in [1, 2, 5, 30] {
            let mut h = History::new(capacity);
            let mut t = Throttling::default();
            let mut scratch = Vec::new();
            let mut at = 1_000i64;
            for _ in 0..400 {
                // Sometimes several points arrive between two evaluations.
                for _ in 0..=(rand() % 3) {
                    at += 500 + i64::try_from(rand() % 2000).unwrap();
                    let mut added = [0u32; 5];
                    for a in &mut added {
                        if rand() % 4 == 0 {
                            *a = u32::try_from(rand() % 50).unwrap();
                        }
                    }
                    let flags = if rand() % 10 == 0 { Point::GLITCH } else { 0 };
                    h.push(
                        "d",
                        Point {
                            at_ms: at,
                            added,
                            available: Point::NO_VALUE,
                            flags,
                            linklocal: Point::NO_VALUE,
                        },
                    );
                }
                t.update(&h, "d", &mut scratch);
                let owned: Vec<Point> = h.points("d").collect();
                let points: Vec<&Point> = owned.iter().collect();
                for a in Allowance::ALL {
                    for since in [0, at - 10_000, at - 3_000, at] {
                        let want = throttled_seconds(&points, a, since);
                        assert!(
                            (t.seconds(a, since) - want).abs() < 1e-9,
                            "cap {capacity} at {at} since {since}"
                        );
                    }
                }
            }
        }
    }
}
