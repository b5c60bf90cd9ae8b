//! Local alert evaluation against simulated scenarios, sample by sample.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::history::Store;
use crate::sampler::{Sampler, Settings};
use crate::source::simulate::{Scenario, SimulatedSource};

const T0: i64 = 1_790_000_000_000;

/// Runs `yaml` for `seconds` at 1 s, evaluating after every tick; returns every transition
/// as (second, alert name, severity, state) and the evaluator.
fn run(
    yaml: &str,
    seconds: i64,
    rules: Vec<LocalRule>,
) -> (Vec<(i64, &'static str, &'static str, State)>, Evaluator) {
    let source = SimulatedSource::new(Scenario::parse(yaml, "test").unwrap());
    let (seen, evaluator) = run_source(source, seconds, rules);
    (seen.into_iter().map(|(s, a)| (s, a.name, a.severity, a.state)).collect(), evaluator)
}

/// Like [`run`], with the scenario's pods' lookups played through a DNS analysis; the
/// transitions' alerts whole.
fn run_with_lookups(yaml: &str, seconds: i64, rules: Vec<LocalRule>) -> (Vec<(i64, Alert)>, Evaluator) {
    let settings = crate::config::Settings::default().resolve().unwrap().dns;
    let (source, _) = SimulatedSource::with_lookups(Scenario::parse(yaml, "test").unwrap(), settings);
    run_source(source, seconds, rules)
}

fn run_source(
    source: SimulatedSource,
    seconds: i64,
    rules: Vec<LocalRule>,
) -> (Vec<(i64, Alert)>, Evaluator) {
    let store = Arc::new(Store::new(1000));
    let settings =
        Settings { interval: Duration::from_secs(1), compat_stats: None, forget_after_ms: 900_000 };
    let mut sampler = Sampler::new(Box::new(source), settings, Arc::clone(&store));
    let mut evaluator = Evaluator::new(rules);
    let mut seen = Vec::new();
    for s in 0..=seconds {
        let snapshot = sampler.tick(T0 + s * 1000).unwrap();
        for t in store.read_history(|h| evaluator.evaluate(&snapshot, h)) {
            seen.push(((t.at_ms - T0) / 1000, t.alert));
        }
    }
    (seen, evaluator)
}

const SUSTAINED: &str = "description: t\ndevices: 2\nconntrack_available: 50000\nevents:\n  - kind: drops\n    \
                         allowance: linklocal\n    device: ens6\n    at: 10s\n    duration: 60s\n    rate: 100\n";

#[test]
fn fires_and_resolves_at_the_expected_sample() {
    let (seen, evaluator) = run(SUSTAINED, 1300, default_rules());
    // Throttled 10 s by second 20 (pending), `for` 1m: firing at 80. The drops stop at 70; the
    // 15-minute window still holds 10 s of them until second 960, and keep_firing_for 5m
    // holds it until 1260. The critical threshold (2 minutes) is never reached.
    assert_eq!(
        seen,
        [
            (80, "LinkLocalAllowanceExceeded", "warning", State::Firing),
            (1260, "LinkLocalAllowanceExceeded", "warning", State::Resolved)
        ]
    );
    let alerts = evaluator.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].device.as_deref(), Some("ens6"));
    assert_eq!(alerts[0].state, State::Resolved);
}

#[test]
fn pending_comes_first_and_shows_in_the_list() {
    let (_, evaluator) = run(SUSTAINED, 30, default_rules());
    let alerts = evaluator.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((alerts[0].state, alerts[0].value), (State::Pending, 20.0));
    assert!(alerts[0].description.starts_with("ens6 was throttled for 20s of the last 15m."));
}

#[test]
fn recurring_bursts_keep_one_alert() {
    let yaml = crate::source::simulate::BUILT_IN.iter().find(|(n, _)| *n == "dns-storm").unwrap().1;
    // 6 s of drops every 40 s, for 15 minutes.
    let (seen, evaluator) = run(yaml, 900, default_rules());
    let warning: Vec<_> =
        seen.iter().filter(|t| t.1 == "LinkLocalAllowanceExceeded" && t.2 == "warning").collect();
    assert_eq!(
        warning,
        [&(112, "LinkLocalAllowanceExceeded", "warning", State::Firing)],
        "one warning, never resolved"
    );
    // The critical threshold (2 minutes in 15) is crossed once enough bursts pile up.
    assert_eq!(seen.iter().filter(|t| t.3 == State::Resolved).count(), 0, "{seen:?}");
    let firing: Vec<_> = evaluator
        .alerts()
        .into_iter()
        .filter(|a| a.state == State::Firing)
        .map(|a| (a.name, a.severity))
        .collect();
    assert!(
        firing.contains(&("LinkLocalAllowanceExceeded", "warning"))
            && firing.contains(&("LinkLocalAllowanceExceeded", "critical")),
        "{firing:?}"
    );
    // The storm's bursts also put the busiest seconds over the link-local budget.
    assert!(firing.contains(&("LinkLocalBudgetNearlyExhausted", "warning")), "{firing:?}");
}

#[test]
fn resets_and_glitches_never_fire() {
    let yaml =
        "description: t\ndevices: 1\nconntrack_available: 50000\nevents:\n  - kind: reset\n    at: 5s\n    \
                every: 20s\n  - kind: glitch\n    at: 13s\n    every: 7s\n";
    let (seen, evaluator) = run(yaml, 400, default_rules());
    assert!(seen.is_empty(), "{seen:?}");
    assert!(evaluator.alerts().is_empty());
}

#[test]
fn conntrack_headroom_fires_once_per_instance() {
    let yaml = "description: t\ndevices: 2\nconntrack_available: 30000\nevents:\n  - kind: conntrack\n    at: 10s\n    \
                duration: 20s\n    to: 5000\n";
    let (seen, evaluator) = run(yaml, 400, default_rules());
    // 30,000 → 5,000 over seconds 10 to 30: exactly 10,000 at 26, below from 27; for 5
    // minutes: firing at 327.
    assert_eq!(seen, [(327, "ConntrackAllowanceLow", "warning", State::Firing)]);
    let alert = &evaluator.alerts()[0];
    assert_eq!((alert.device.as_ref(), alert.value), (None, 5000.0));
}

#[test]
fn overrides_change_thresholds_and_durations() {
    let overrides = [RuleOverride {
        alert: "LinkLocalAllowanceExceeded".into(),
        severity: Some("warning".into()),
        min_throttled: Some("2s".into()),
        hold: Some("0s".into()),
        ..RuleOverride::default()
    }];
    let (seen, _) = run(SUSTAINED, 15, rules_with(&overrides).unwrap());
    assert_eq!(seen, [(12, "LinkLocalAllowanceExceeded", "warning", State::Firing)]);

    let off = [RuleOverride {
        alert: "LinkLocalAllowanceExceeded".into(),
        enabled: Some(false),
        ..RuleOverride::default()
    }];
    let (seen, _) = run(SUSTAINED, 200, rules_with(&off).unwrap());
    assert!(seen.is_empty());
}

/// ens5 drops link-local packets from 10 s to 70 s, 500 a second over the budget: a third of
/// web's lookups are lost then; batch looks nothing up while it lasts.
const LOOKUPS_LOST: &str = "description: t\nevents:\n  - {kind: drops, allowance: linklocal, device: ens5, at: 10s, \
     duration: 60s, rate: 500}\ndns:\n  - {workload: shop/web, address: 10.0.1.15, upstream: cluster_dns, rate: 20}\n";

#[test]
fn dns_alerts_fire_for_the_workload_whose_lookups_failed_and_for_the_throttling() {
    let (seen, evaluator) = run_with_lookups(LOOKUPS_LOST, 700, default_rules());
    let at = |name: &str, state: State| seen.iter().find(|(_, a)| a.name == name && a.state == state);
    // Lost lookups time out 5 s after they were sent: 10 within the window by 17 s, pending
    // from then, firing after the 5-minute hold.
    let (fired, alert) = at(catalog::DNS_THROTTLED_ALERT, State::Firing).expect("the throttling alert fired");
    assert!((315..=320).contains(fired), "fired at {fired}");
    assert!(alert.value >= 10.0 && alert.device.is_none() && alert.workload.is_none(), "{alert:?}");
    assert!(alert.description.contains("failed while the link-local allowance was dropping packets"));
    let (fired, alert) = at(catalog::DNS_FAILING_ALERT, State::Firing).expect("web's alert fired");
    assert!((310..=330).contains(fired), "fired at {fired}");
    assert_eq!((alert.namespace.as_deref(), alert.workload.as_deref()), (Some("shop"), Some("web")));
    assert_eq!(alert.summary, "DNS lookups are failing: shop/web");
    assert!(
        alert.description.contains("of the DNS lookups of shop/web failed over the last 5m"),
        "{}",
        alert.description
    );
    // The failures leave the window 5 minutes after the last (75 s), then keep_firing_for 5m.
    let (resolved, _) = at(catalog::DNS_THROTTLED_ALERT, State::Resolved).expect("resolved");
    assert!((670..=680).contains(resolved), "resolved at {resolved}");
    let dns: Vec<Alert> = evaluator.alerts().into_iter().filter(|a| a.name.starts_with("DNS")).collect();
    assert!(dns.len() == 2 && dns.iter().all(|a| a.state == State::Resolved), "{dns:?}");
}

#[test]
fn without_the_dns_analysis_the_dns_alerts_stay_quiet() {
    let (seen, _) = run(LOOKUPS_LOST, 400, default_rules());
    assert!(seen.iter().all(|t| !t.1.starts_with("DNS")), "{seen:?}");
}

#[test]
fn bad_overrides_name_the_entry_and_the_field() {
    let err = |o: RuleOverride| rules_with(&[o]).unwrap_err().to_string();
    let unknown = err(RuleOverride { alert: "DNSIsDown".into(), ..RuleOverride::default() });
    assert!(unknown.starts_with("alerts.rules: \"[0] alert: DNSIsDown\" matches no local alert; known: LinkLocalAllowanceExceeded"), "{unknown}");
    let bad = err(RuleOverride {
        alert: "PPSAllowanceExceeded".into(),
        window: Some("soon".into()),
        ..RuleOverride::default()
    });
    assert!(bad.starts_with("alerts.rules: \"[0] window: soon\" is not a duration"), "{bad}");
    let misplaced =
        err(RuleOverride { alert: "PPSAllowanceExceeded".into(), below: Some(3), ..RuleOverride::default() });
    assert!(misplaced.contains("applies to ConntrackAllowanceLow only"), "{misplaced}");
    let long = err(RuleOverride {
        alert: "DNSLookupsFailing".into(),
        window: Some("2h".into()),
        ..RuleOverride::default()
    });
    assert!(long.contains("[0] window: 2h\" is longer than the 1h a DNS alert may look back"), "{long}");
}

#[test]
fn local_rules_are_the_shipped_rules() {
    // Same names, severities and parameters as the Prometheus rules (one definition): every
    // allowance alert, then exactly the two headroom alerts and the two DNS alerts.
    let local = default_rules();
    assert_eq!(local.len(), catalog::ALLOWANCE_ALERTS.len() + 4, "{:?}", local.iter().map(|r| r.name));
    let shipped_names = crate::generate::rules::alert_names();
    for rule in &local {
        assert!(shipped_names.iter().any(|n| n == rule.name), "{} is not a shipped alert", rule.name);
    }
    let (allowance_rules, extra) = local.split_at(catalog::ALLOWANCE_ALERTS.len());
    let budget = &extra[0];
    assert_eq!((budget.name, budget.severity), (catalog::BUDGET_ALERT, Severity::Warning));
    assert_eq!(
        budget.condition,
        Condition::LinkLocalBudget { ratio: catalog::BUDGET_RATIO, window: catalog::BUDGET_WINDOW }
    );
    assert_eq!((budget.hold, budget.keep_firing), (catalog::BUDGET_HOLD, Duration::ZERO));
    let conntrack = &extra[1];
    assert_eq!((conntrack.name, conntrack.severity), (catalog::CONNTRACK_LOW_ALERT, Severity::Warning));
    assert_eq!(conntrack.condition, Condition::ConntrackBelow { below: catalog::CONNTRACK_LOW });
    assert_eq!((conntrack.hold, conntrack.keep_firing), (catalog::CONNTRACK_LOW_HOLD, Duration::ZERO));
    let (failing, throttled) = (&extra[2], &extra[3]);
    assert_eq!((failing.name, throttled.name), (catalog::DNS_FAILING_ALERT, catalog::DNS_THROTTLED_ALERT));
    assert_eq!(
        failing.condition,
        Condition::DnsFailing {
            ratio: catalog::DNS_FAILING_RATIO,
            min_failures: catalog::DNS_MIN_FAILURES,
            window: catalog::DNS_WINDOW
        }
    );
    assert_eq!(
        throttled.condition,
        Condition::DnsThrottled { min_failures: catalog::DNS_MIN_FAILURES, window: catalog::DNS_WINDOW }
    );
    for dns in [failing, throttled] {
        assert_eq!(
            (dns.severity, dns.hold, dns.keep_firing),
            (Severity::Warning, catalog::DNS_HOLD, catalog::KEEP_FIRING)
        );
    }
    for (local, shipped) in allowance_rules.iter().zip(catalog::ALLOWANCE_ALERTS.iter()) {
        assert_eq!((local.name, local.severity), (shipped.name, shipped.severity));
        assert_eq!(local.hold, shipped.hold);
        assert_eq!(local.keep_firing, shipped.keep_firing);
        assert_eq!(
            local.condition,
            Condition::Throttled {
                allowance: shipped.allowance,
                min_throttled: shipped.min_throttled,
                window: shipped.window
            }
        );
    }
}
