//! Changes to the shipped local rules from the config file (`alerts.rules`): thresholds,
//! windows, durations, or a rule turned off. Validated here, each error naming the override
//! and its field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{default_rules, Condition, LocalRule};
use crate::base::{parse_duration, ConfigError};

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

/// Most entries of `alerts.rules`: several per shipped rule and severity, and then some.
pub const MAX_OVERRIDES: usize = 64;

/// The longest window of a DNS alert.
const MAX_DNS_WINDOW: Duration = Duration::from_secs(3600);

/// The default rules with `overrides` applied; errors name the override and its field.
pub fn rules_with(overrides: &[RuleOverride]) -> Result<Vec<LocalRule>, ConfigError> {
    if overrides.len() > MAX_OVERRIDES {
        return Err(ConfigError::too_long("alerts.rules", overrides.len(), "overrides", MAX_OVERRIDES));
    }
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
                Condition::DnsFailing { window: w, .. } | Condition::DnsThrottled { window: w, .. } => {
                    if min.is_some() || o.below.is_some() {
                        return Err(bad("min_throttled/below", &o.alert, "do not apply to this alert"));
                    }
                    // The evaluator keeps a reading of the DNS counts every 10 s of the window.
                    if window.is_some_and(|d| d > MAX_DNS_WINDOW) {
                        let given = o.window.as_deref().unwrap_or_default();
                        return Err(bad("window", given, "is longer than the 1h a DNS alert may look back"));
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
