//! Local alerting: the shipped alerts, evaluated by the agent itself from its in-memory
//! history at sample resolution, for nodes without Prometheus (or with one that scrapes too
//! rarely to see a burst).
//!
//! The rules are the same objects the Prometheus rules are rendered from
//! ([`catalog::ALLOWANCE_ALERTS`], [`catalog::CONNTRACK_LOW`]): same names, severities, windows,
//! thresholds, `for` and `keep_firing_for`, so the two cannot drift. Thresholds and durations
//! can be overridden in the config file. States follow Prometheus: an alert is pending while
//! its condition holds for less than `for`, firing after that (and for `keep_firing_for` after
//! the condition clears), then resolved.

pub mod catalog;
pub mod events;
pub mod notify;
mod overrides;

pub use self::overrides::{rules_with, RuleOverride};

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tracing::{info, warn};

use self::catalog::Severity;
use self::notify::Handle;
use crate::base::time::rfc3339;
use crate::base::{Allowance, HumanDuration};
use crate::history::{Alert, History, Point, Snapshot, State};
use crate::sampler::Hook;

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
    /// More than `ratio` of a workload's DNS lookups, and at least `min_failures`, failed
    /// within `window` (with the DNS analysis on).
    DnsFailing {
        /// Share of the workload's lookups.
        ratio: f64,
        /// Fewest failures.
        min_failures: u64,
        /// Look-back window.
        window: Duration,
    },
    /// At least `min_failures` of the node's DNS lookups sent while the link-local allowance
    /// was dropping packets failed within `window`.
    DnsThrottled {
        /// Fewest failures.
        min_failures: u64,
        /// Look-back window.
        window: Duration,
    },
}

impl Condition {
    /// The window of a DNS condition.
    fn dns_window(&self) -> Option<Duration> {
        match self {
            Self::DnsFailing { window, .. } | Self::DnsThrottled { window, .. } => Some(*window),
            _ => None,
        }
    }
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

/// The default local rules: the shipped ENA alerts, and the DNS alerts (with the DNS analysis).
pub fn default_rules() -> Vec<LocalRule> {
    let mut out: Vec<LocalRule> = catalog::ALLOWANCE_ALERTS
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
        name: catalog::BUDGET_ALERT,
        severity: Severity::Warning,
        condition: Condition::LinkLocalBudget {
            ratio: catalog::BUDGET_RATIO,
            window: catalog::BUDGET_WINDOW,
        },
        hold: catalog::BUDGET_HOLD,
        keep_firing: Duration::ZERO,
        summary: "Link-local budget nearly used up",
        impact: "EC2 drops link-local packets (DNS, IMDS, Time Sync) beyond 1024 a second per ENI.",
    });
    out.push(LocalRule {
        name: catalog::CONNTRACK_LOW_ALERT,
        severity: Severity::Warning,
        condition: Condition::ConntrackBelow { below: catalog::CONNTRACK_LOW },
        hold: catalog::CONNTRACK_LOW_HOLD,
        keep_firing: Duration::ZERO,
        summary: "Conntrack headroom low",
        impact: "New connections will be dropped when the instance's conntrack allowance is exhausted.",
    });
    out.push(LocalRule {
        name: catalog::DNS_FAILING_ALERT,
        severity: Severity::Warning,
        condition: Condition::DnsFailing {
            ratio: catalog::DNS_FAILING_RATIO,
            min_failures: catalog::DNS_MIN_FAILURES,
            window: catalog::DNS_WINDOW,
        },
        hold: catalog::DNS_HOLD,
        keep_firing: catalog::KEEP_FIRING,
        summary: "DNS lookups are failing",
        impact: "If DNSFailuresFromLinkLocalThrottling fires too, the failures are link-local drops.",
    });
    out.push(LocalRule {
        name: catalog::DNS_THROTTLED_ALERT,
        severity: Severity::Warning,
        condition: Condition::DnsThrottled { min_failures: catalog::DNS_MIN_FAILURES, window: catalog::DNS_WINDOW },
        hold: catalog::DNS_HOLD,
        keep_firing: catalog::KEEP_FIRING,
        summary: "DNS lookups fail: an ENI drops link-local packets",
        impact: "EC2 dropped them on the way to the VPC resolver, over the ENI's 1024 packets/s link-local allowance.",
    });
    out
}

/// A change of state worth notifying: `Firing` or `Resolved`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Transition {
    /// The alert as of the change.
    pub alert: Alert,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The throttling behind an allowance alert, from the snapshot it changed on.
    pub throttle: Option<Throttle>,
}

/// What the snapshot says about the device and allowance of an allowance alert: what node
/// events put in their message.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Throttle {
    /// The device's ENI, when known.
    pub eni: Option<String>,
    /// Packets over the allowance since the agent started (`ena_allowance_exceeded_packets_total`).
    pub packets: u64,
    /// Seconds throttled since the agent started (`ena_allowance_exceeded_seconds_total`).
    pub seconds: f64,
}

impl Throttle {
    /// The device's totals for the alert's allowance, when the snapshot has them.
    fn of(alert: &Alert, snapshot: &Snapshot) -> Option<Self> {
        let allowance = Allowance::ALL.into_iter().find(|a| Some(a.label()) == alert.allowance)?;
        let device = alert.device.as_deref()?;
        let d = snapshot.devices.iter().find(|d| d.device.name == device)?;
        Some(Self {
            eni: d.device.eni.clone(),
            packets: d.counters.packets[allowance.index()],
            seconds: d.counters.seconds[allowance.index()],
        })
    }
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
    /// The DNS analysis's per-workload counts, a reading every [`DNS_STEP_MS`] as long as the
    /// longest DNS window: what the DNS rules subtract from the latest counts.
    dns: VecDeque<(i64, Vec<WorkloadCounts>)>,
    /// The longest window of the DNS rules, in milliseconds.
    dns_window_ms: i64,
}

/// How far apart the kept readings of the DNS counts are: a DNS window is this exact.
const DNS_STEP_MS: i64 = 10_000;

/// One workload's lookups, failures, and failures during throttling, since it got its slot.
#[derive(Clone, Debug, PartialEq)]
struct WorkloadCounts {
    namespace: std::sync::Arc<str>,
    workload: std::sync::Arc<str>,
    counts: [u64; 3],
}

/// The counts of `totals`, by workload.
fn workload_counts(totals: &crate::source::dns::families::Totals) -> Vec<WorkloadCounts> {
    totals
        .workloads
        .iter()
        .map(|((namespace, workload), c)| {
            let failures = c.failures.iter().flatten().map(|[no, yes]| no + yes).sum();
            let throttled = c.failures.iter().flatten().map(|[_, yes]| yes).sum();
            WorkloadCounts {
                namespace: namespace.clone(),
                workload: workload.clone(),
                counts: [c.queries.iter().sum(), failures, throttled],
            }
        })
        .collect()
}

/// The newest kept reading at or before the start of a `window` ending `now`, else the oldest
/// (the analysis has run for less than the window).
fn dns_base(
    readings: &VecDeque<(i64, Vec<WorkloadCounts>)>,
    now: i64,
    window: Duration,
) -> Option<&[WorkloadCounts]> {
    let since = now.saturating_sub(millis(window));
    readings.iter().rev().find(|(at, _)| *at <= since).or(readings.front()).map(|(_, c)| c.as_slice())
}

/// `w`'s counts since `base` (a workload that got its slot since counts from zero).
fn within(base: Option<&[WorkloadCounts]>, w: &WorkloadCounts) -> [u64; 3] {
    let before = base
        .and_then(|b| b.iter().find(|x| x.namespace == w.namespace && x.workload == w.workload))
        .map_or([0; 3], |b| b.counts);
    [0, 1, 2].map(|i| w.counts[i].saturating_sub(before[i]))
}

/// How the DNS alerts name a workload (as the Prometheus rules' annotations do).
fn workload_name(namespace: &str, workload: &str) -> String {
    if workload.is_empty() {
        "pods without attribution".to_owned()
    } else {
        format!("{namespace}/{workload}")
    }
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

    /// `throttled_seconds` of the whole history, from the intervals.
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
        let dns_window = rules.iter().filter_map(|r| r.condition.dns_window()).max().unwrap_or_default();
        Self {
            dns_window_ms: millis(dns_window),
            rules,
            active: BTreeMap::new(),
            resolved: VecDeque::new(),
            throttling: BTreeMap::new(),
            new_points: Vec::new(),
            dns: VecDeque::new(),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &[LocalRule] {
        &self.rules
    }

    /// Evaluates every rule at the snapshot's time; returns the alerts that started firing
    /// or resolved.
    #[expect(clippy::too_many_lines, reason = "every rule kind, then the state machine, in one pass")]
    pub(crate) fn evaluate(&mut self, snapshot: &Snapshot, history: &History) -> Vec<Transition> {
        let now = snapshot.at_ms;
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
        let dns_now = snapshot.dns.as_deref().map(workload_counts);
        if let Some(counts) = &dns_now {
            if self.dns.back().is_none_or(|(at, _)| now - at >= DNS_STEP_MS) {
                self.dns.push_back((now, counts.clone()));
            }
            // Keep one reading at or before the start of the longest window.
            while self.dns.get(1).is_some_and(|(at, _)| *at <= now - self.dns_window_ms) {
                self.dns.pop_front();
            }
        } else {
            self.dns.clear();
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
                        results.push(Evaluation {
                            rule: r,
                            device: Some(d.device.name.clone()),
                            workload: None,
                            allowance: Some(allowance.label()),
                            value,
                            holds,
                            lookups: [0; 2],
                        });
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
                        let holds = value > ratio * crate::source::linklocal::BUDGET_PPS;
                        results.push(Evaluation {
                            rule: r,
                            device: Some(d.device.name.clone()),
                            workload: None,
                            allowance: Some("linklocal"),
                            value,
                            holds,
                            lookups: [0; 2],
                        });
                    }
                }
                Condition::DnsFailing { ratio, min_failures, window } => {
                    let Some(counts) = &dns_now else { continue };
                    let base = dns_base(&self.dns, now, *window);
                    for w in counts {
                        let [queries, failures, _] = within(base, w);
                        let share = if queries == 0 { 0.0 } else { failures as f64 / queries as f64 };
                        let holds = share > *ratio && failures >= *min_failures;
                        // A workload neither failing nor alerting (the usual case) costs no name.
                        let alerting = || {
                            !self.active.is_empty()
                                && self
                                    .active
                                    .contains_key(&(r, Some(workload_name(&w.namespace, &w.workload))))
                        };
                        if !holds && !alerting() {
                            continue;
                        }
                        results.push(Evaluation {
                            rule: r,
                            device: None,
                            workload: Some((w.namespace.to_string(), w.workload.to_string())),
                            allowance: None,
                            value: share,
                            holds,
                            lookups: [failures, queries],
                        });
                    }
                }
                Condition::DnsThrottled { min_failures, window } => {
                    let Some(counts) = &dns_now else { continue };
                    let base = dns_base(&self.dns, now, *window);
                    let failures: u64 = counts.iter().map(|w| within(base, w)[2]).sum();
                    let holds = failures >= *min_failures;
                    if !holds && !self.active.contains_key(&(r, None)) {
                        continue;
                    }
                    results.push(Evaluation {
                        rule: r,
                        device: None,
                        workload: None,
                        allowance: None,
                        value: failures as f64,
                        holds,
                        lookups: [failures, 0],
                    });
                }
                Condition::ConntrackBelow { below } => {
                    let min = snapshot
                        .devices
                        .iter()
                        .filter(|d| d.counters.available_supported)
                        .filter_map(|d| d.counters.available)
                        .min();
                    if let Some(min) = min {
                        results.push(Evaluation {
                            rule: r,
                            device: None,
                            workload: None,
                            allowance: None,
                            value: min as f64,
                            holds: min < *below,
                            lookups: [0; 2],
                        });
                    }
                }
            }
        }

        let mut transitions = Vec::new();
        let mut seen = Vec::new();
        for Evaluation { rule: r, device, workload, allowance, value, holds, lookups } in results {
            // One alert per rule and device, or workload, or for the node.
            let key = (r, device.clone().or_else(|| workload.as_ref().map(|(n, w)| workload_name(n, w))));
            seen.push(key.clone());
            let rule = &self.rules[r];
            if holds {
                let alert = self
                    .active
                    .entry(key)
                    .or_insert_with(|| new_alert(rule, device, workload, allowance, value, now));
                alert.value = value;
                alert.last_true_ms = now;
                alert.description = describe(rule, alert, lookups);
                if alert.state == State::Pending && now - alert.active_ms >= millis(rule.hold) {
                    alert.state = State::Firing;
                    alert.firing_since = Some(rfc3339(now));
                    transitions.push(Transition { alert: alert.clone(), at_ms: now, throttle: None });
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
            transitions.push(Transition { alert: alert.clone(), at_ms: now, throttle: None });
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

/// One rule's condition on one device (or on the instance), as of this tick.
struct Evaluation {
    /// Index of the rule.
    rule: usize,
    /// The device, for per-device rules.
    device: Option<String>,
    /// The (namespace, workload), for per-workload rules.
    workload: Option<(String, String)>,
    /// The allowance label, for allowance rules.
    allowance: Option<&'static str>,
    /// The condition's value (throttled seconds, a rate, a share, a count, or headroom).
    value: f64,
    /// Whether the condition holds.
    holds: bool,
    /// For the DNS rules: the lookups that failed, and all lookups (`DNSLookupsFailing`).
    lookups: [u64; 2],
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn new_alert(
    rule: &LocalRule,
    device: Option<String>,
    workload: Option<(String, String)>,
    allowance: Option<&'static str>,
    value: f64,
    now: i64,
) -> Alert {
    Alert {
        name: rule.name,
        severity: rule.severity.label(),
        summary: match (&device, &workload) {
            (Some(d), _) => format!("{} on {d}", rule.summary),
            (None, Some((n, w))) => format!("{}: {}", rule.summary, workload_name(n, w)),
            (None, None) => rule.summary.to_owned(),
        },
        // Written by the caller, which describes the alert every tick it holds.
        description: String::new(),
        runbook_url: format!("{}#{}", catalog::RUNBOOK_BASE, rule.name.to_lowercase()),
        device,
        namespace: workload.as_ref().map(|(n, _)| n.clone()),
        workload: workload.map(|(_, w)| w),
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

/// What `alert` (of `rule`, its value up to date) says is happening; `lookups` as in
/// [`Evaluation`].
fn describe(rule: &LocalRule, alert: &Alert, [failures, queries]: [u64; 2]) -> String {
    let value = alert.value;
    match (&rule.condition, alert.device.as_deref()) {
        (Condition::DnsFailing { window, .. }, _) => {
            let name = workload_name(
                alert.namespace.as_deref().unwrap_or_default(),
                alert.workload.as_deref().unwrap_or_default(),
            );
            format!(
                "{:.1}% of the DNS lookups of {name} failed over the last {} ({failures} of {queries}: \
                 timeouts, SERVFAIL, REFUSED). {}",
                value * 100.0,
                HumanDuration(*window),
                rule.impact
            )
        }
        (Condition::DnsThrottled { window, .. }, _) => format!(
            "{failures} DNS lookups sent from this node in the last {} failed while the link-local \
             allowance was dropping packets: {} The page and /api/v1/dns show which workloads.",
            HumanDuration(*window),
            rule.impact
        ),
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

/// Seconds of sampling intervals after `since_ms` in which allowance `a`'s counter grew, by
/// a full scan: what the incremental [`Throttling`] must always agree with.
#[cfg(test)]
fn throttled_seconds(points: &[&Point], a: Allowance, since_ms: i64) -> f64 {
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

/// The local alerts as the sampler runs them: evaluated on every snapshot, transitions logged
/// and offered to the notifiers.
pub struct Local {
    evaluator: Evaluator,
    notify: Option<Handle>,
}

impl Local {
    /// Evaluates with `evaluator`, offering transitions to `notify` when receivers exist.
    pub fn new(evaluator: Evaluator, notify: Option<Handle>) -> Self {
        Self { evaluator, notify }
    }
}

impl Hook for Local {
    fn on_snapshot(&mut self, snapshot: &mut Snapshot, history: &History) {
        let transitions = self.evaluator.evaluate(snapshot, history);
        snapshot.alerts = self.evaluator.alerts();
        for mut t in transitions {
            t.throttle = Throttle::of(&t.alert, snapshot);
            let a = &t.alert;
            let device = a.device.as_deref().unwrap_or("");
            if a.state == State::Firing {
                warn!(alert = a.name, severity = a.severity, device, value = a.value, "alert firing");
            } else {
                info!(alert = a.name, severity = a.severity, device, "alert resolved");
            }
            if let Some(notify) = &self.notify {
                notify.offer(t);
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod incremental_equivalence {
    use super::*;

    use proptest::prelude::*;

    /// One point: the gap since the previous one, packets per allowance (mostly none), and
    /// whether it is a held-back glitch.
    fn point() -> impl Strategy<Value = (i64, [u32; 5], bool)> {
        let added = prop_oneof![3 => Just(0u32), 1 => 0u32..50];
        (
            500i64..2500,
            [added.clone(), added.clone(), added.clone(), added.clone(), added],
            prop::bool::weighted(0.1),
        )
    }

    proptest! {
        // Failing cases are saved under proptest-regressions/ and replayed first.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn incremental_throttled_seconds_equal_a_full_scan(
            capacity in prop_oneof![Just(1usize), Just(2), Just(5), Just(30)],
            // Sometimes several points arrive between two evaluations.
            batches in prop::collection::vec(prop::collection::vec(point(), 1..4), 1..150),
        ) {
            let mut h = History::new(capacity);
            let mut t = Throttling::default();
            let mut scratch = Vec::new();
            let mut at = 1_000i64;
            for batch in batches {
                for (gap, added, glitch) in batch {
                    at += gap;
                    let flags = if glitch { Point::GLITCH } else { 0 };
                    let point = Point { at_ms: at, added, available: Point::NO_VALUE, flags, linklocal: Point::NO_VALUE };
                    h.push("d", point);
                }
                t.update(&h, "d", &mut scratch);
                let owned: Vec<Point> = h.points("d").collect();
                let points: Vec<&Point> = owned.iter().collect();
                for a in Allowance::ALL {
                    for since in [0, at - 10_000, at - 3_000, at] {
                        let want = throttled_seconds(&points, a, since);
                        prop_assert!(
                            (t.seconds(a, since) - want).abs() < 1e-9,
                            "cap {} at {} since {}", capacity, at, since
                        );
                    }
                }
            }
        }
    }
}
