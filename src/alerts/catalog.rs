//! The alert catalog: the definitions of the shipped alerts that both the Prometheus rules
//! (rendered by `generate::rules`) and the agent's own evaluator use, so the two can never
//! disagree on names, meanings or defaults.
//!
//! The allowance alerts are data ([`ALLOWANCE_ALERTS`]): their PromQL is generated from the
//! allowance, the window and the threshold.

use std::time::Duration;

use crate::base::{Allowance, HumanDuration};

/// Where each alert's `runbook_url` points: a section of docs/runbooks.md, named after the
/// alert in lower case.
pub const RUNBOOK_BASE: &str = "https://github.com/enawatch/enawatch/blob/main/docs/runbooks.md";

/// How urgent an alert is (its `severity` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Breaks traffic now: pages.
    Critical,
    /// Degrades or will break traffic: a ticket, a chat message.
    Warning,
    /// Worth knowing; no action needed now.
    Info,
}

impl Severity {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// An alert on one allowance: throttled for at least `min_throttled` within `window`.
///
/// Throttled time (`ena_allowance_exceeded_seconds_total`) rather than a packet rate: it does
/// not depend on the scrape interval, a single short burst stays under the threshold, and
/// bursts that recur every few minutes keep the windowed sum over it, so they make one
/// continuous alert instead of a flapping one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AllowanceAlert {
    /// Alert name (the AWS guide's names, which users already route and silence on).
    pub name: &'static str,
    /// Which allowance.
    pub allowance: Allowance,
    /// Severity of this threshold.
    pub severity: Severity,
    /// Fires when throttled at least this long within `window`.
    pub min_throttled: Duration,
    /// Look-back window.
    pub window: Duration,
    /// How long the condition must hold before firing.
    pub hold: Duration,
    /// How long to keep firing after the condition clears.
    pub keep_firing: Duration,
    /// What it means, one line.
    pub summary: &'static str,
    /// What is happening and what breaks.
    pub impact: &'static str,
}

const WINDOW: Duration = Duration::from_secs(15 * 60);
const HOLD: Duration = Duration::from_secs(60);
pub(crate) const KEEP_FIRING: Duration = Duration::from_secs(5 * 60);

const fn alert(
    name: &'static str,
    allowance: Allowance,
    severity: Severity,
    min_seconds: u64,
    summary: &'static str,
    impact: &'static str,
) -> AllowanceAlert {
    AllowanceAlert {
        name,
        allowance,
        severity,
        min_throttled: Duration::from_secs(min_seconds),
        window: WINDOW,
        hold: HOLD,
        keep_firing: KEEP_FIRING,
        summary,
        impact,
    }
}

const LINKLOCAL: &str =
    "Packets to link-local services (the VPC DNS resolver, instance metadata, Time Sync) \
     are being dropped: pods on this node see DNS timeouts (EAI_AGAIN, UnknownHostException).";
const PPS: &str = "Packets over the instance's packets-per-second allowance are being queued or dropped \
     (this counter also includes drops from the per-ENI egress-fragment limit).";
const BW_IN: &str = "Inbound traffic over the instance's bandwidth allowance is being queued or dropped.";
const BW_OUT: &str = "Outbound traffic over the instance's bandwidth allowance is being queued or dropped.";
const CONNTRACK: &str =
    "The instance's connection-tracking allowance is exhausted: new connections are dropped.";

/// The allowance alerts. Names are shared by a warning and a critical threshold where both
/// exist; Alertmanager inhibits the warning while the critical fires on the same device.
pub(crate) const ALLOWANCE_ALERTS: [AllowanceAlert; 9] = [
    alert(
        "LinkLocalAllowanceExceeded",
        Allowance::Linklocal,
        Severity::Warning,
        10,
        "Link-local (DNS) packets dropped",
        LINKLOCAL,
    ),
    alert(
        "LinkLocalAllowanceExceeded",
        Allowance::Linklocal,
        Severity::Critical,
        120,
        "Link-local (DNS) packets dropped",
        LINKLOCAL,
    ),
    alert(
        "PPSAllowanceExceeded",
        Allowance::Pps,
        Severity::Warning,
        30,
        "Packets-per-second allowance exceeded",
        PPS,
    ),
    alert(
        "PPSAllowanceExceeded",
        Allowance::Pps,
        Severity::Critical,
        300,
        "Packets-per-second allowance exceeded",
        PPS,
    ),
    alert(
        "BWInAllowanceExceeded",
        Allowance::BwIn,
        Severity::Warning,
        60,
        "Inbound bandwidth allowance exceeded",
        BW_IN,
    ),
    alert(
        "BWInAllowanceExceeded",
        Allowance::BwIn,
        Severity::Critical,
        450,
        "Inbound bandwidth allowance exceeded",
        BW_IN,
    ),
    alert(
        "BWOutAllowanceExceeded",
        Allowance::BwOut,
        Severity::Warning,
        60,
        "Outbound bandwidth allowance exceeded",
        BW_OUT,
    ),
    alert(
        "BWOutAllowanceExceeded",
        Allowance::BwOut,
        Severity::Critical,
        450,
        "Outbound bandwidth allowance exceeded",
        BW_OUT,
    ),
    alert(
        "ConntrackAllowanceExceeded",
        Allowance::Conntrack,
        Severity::Critical,
        10,
        "Connection-tracking allowance exhausted",
        CONNTRACK,
    ),
];

/// The alert on link-local headroom: fires before the allowance is exceeded.
pub(crate) const BUDGET_ALERT: &str = "LinkLocalBudgetNearlyExhausted";
/// `LinkLocalBudgetNearlyExhausted`: the 99th-percentile second of the window used more than
/// this share of the 1024/s link-local budget...
pub(crate) const BUDGET_RATIO: f64 = 0.8;
/// ...over this window...
pub(crate) const BUDGET_WINDOW: Duration = Duration::from_secs(15 * 60);
/// ...held this long.
pub(crate) const BUDGET_HOLD: Duration = Duration::from_secs(5 * 60);

/// The alert on conntrack headroom.
pub(crate) const CONNTRACK_LOW_ALERT: &str = "ConntrackAllowanceLow";
/// `ConntrackAllowanceLow` fires below this many connections of headroom...
pub(crate) const CONNTRACK_LOW: u64 = 10_000;
/// ...held this long.
pub(crate) const CONNTRACK_LOW_HOLD: Duration = Duration::from_secs(5 * 60);

/// The alert on a workload whose DNS lookups fail.
pub(crate) const DNS_FAILING_ALERT: &str = "DNSLookupsFailing";
/// The alert on DNS lookups lost to link-local throttling.
pub(crate) const DNS_THROTTLED_ALERT: &str = "DNSFailuresFromLinkLocalThrottling";
/// The window of both DNS alerts.
pub(crate) const DNS_WINDOW: Duration = Duration::from_secs(5 * 60);
/// `DNSLookupsFailing`: more than this share of a workload's lookups failed...
pub(crate) const DNS_FAILING_RATIO: f64 = 0.05;
/// ...and at least this many of them within the window (the throttling alert too: a handful
/// of failures among few lookups is not an incident).
pub(crate) const DNS_MIN_FAILURES: u64 = 10;
/// Both DNS alerts hold as long as their window: a single burst of failures stays in the
/// window for one window and so never fires, failures that recur or last do.
pub(crate) const DNS_HOLD: Duration = Duration::from_secs(5 * 60);

impl AllowanceAlert {
    /// The PromQL condition.
    pub fn expr(&self) -> String {
        format!(
            "increase(ena_allowance_exceeded_seconds_total{{allowance=\"{}\"}}[{}]) >= {}",
            self.allowance.label(),
            HumanDuration(self.window),
            self.min_throttled.as_secs()
        )
    }
}
