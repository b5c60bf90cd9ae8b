//! The alerting and recording rules of the monitoring package: one definition, rendered in
//! three flavours by `enawatch rules render` (a Prometheus rule file, a Prometheus Operator
//! `PrometheusRule`, an ACK `RuleGroupsNamespace` for Amazon Managed Prometheus).
//!
//! The allowance alerts come from the catalog ([`crate::alerts::catalog`]) the agent's own
//! evaluator uses too.
//!
//! Every range window is at least 4 × a 60 s scrape interval, so the rules work whatever the
//! scrape interval, on Prometheus 2 and 3 (left-open windows) and on AMP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::alerts::catalog::{
    AllowanceAlert, Severity, ALLOWANCE_ALERTS, BUDGET_ALERT, BUDGET_HOLD, BUDGET_RATIO, BUDGET_WINDOW,
    CONNTRACK_LOW, CONNTRACK_LOW_ALERT, CONNTRACK_LOW_HOLD, KEEP_FIRING, RUNBOOK_BASE,
};
use crate::base::HumanDuration;

impl AllowanceAlert {
    fn rule(&self) -> Rule {
        let window = HumanDuration(self.window);
        Rule::alert(self.name, self.expr())
            .hold(self.hold)
            .keep_firing(self.keep_firing)
            .severity(self.severity)
            .annotate(
                "summary",
                &format!("{} on {{{{ $labels.instance }}}} {{{{ $labels.device }}}}", self.summary),
            )
            .annotate(
                "description",
                &format!(
                    "{{{{ $labels.device }}}} on {{{{ $labels.instance }}}} (node {{{{ $labels.node }}}}) was \
                     throttled for {{{{ $value | humanize }}}}s of the last {window}. {}",
                    self.impact
                ),
            )
            .runbook(self.name)
    }
}

/// One rule of a rule file.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    hold: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_firing_for: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl Rule {
    fn record(name: &str, expr: &str) -> Self {
        Self {
            record: Some(name.to_owned()),
            alert: None,
            expr: expr.to_owned(),
            hold: None,
            keep_firing_for: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn alert(name: &str, expr: impl Into<String>) -> Self {
        Self { alert: Some(name.to_owned()), record: None, ..Self::record("", &expr.into()) }
    }

    fn hold(mut self, d: Duration) -> Self {
        self.hold = Some(HumanDuration(d).to_string());
        self
    }

    fn keep_firing(mut self, d: Duration) -> Self {
        self.keep_firing_for = Some(HumanDuration(d).to_string());
        self
    }

    fn severity(mut self, s: Severity) -> Self {
        self.labels.insert("severity".into(), s.label().into());
        self
    }

    fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    fn runbook(self, alert: &str) -> Self {
        let url = format!("{RUNBOOK_BASE}#{}", alert.to_lowercase());
        self.annotate("runbook_url", &url)
    }
}

/// A named group of rules.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// The rules.
    pub rules: Vec<Rule>,
}

#[derive(Serialize)]
struct RuleFile<'a> {
    groups: &'a [Group],
}

/// Every rule group of the package.
pub fn groups() -> Vec<Group> {
    vec![
        Group { name: "enawatch.recording".into(), rules: recording() },
        Group { name: "enawatch.allowances".into(), rules: allowances() },
        Group { name: "enawatch.agent".into(), rules: agent() },
        Group { name: "enawatch.coredns".into(), rules: coredns() },
    ]
}

/// The recording rules: name, expression. Dashboards may use these names.
pub const RECORDING_RULES: [(&str, &str); 4] = [
    ("ena:allowance_exceeded_packets:rate5m", "rate(ena_allowance_exceeded_packets_total[5m])"),
    ("ena:allowance_throttled_ratio:rate5m", "rate(ena_allowance_exceeded_seconds_total[5m])"),
    ("ena:allowance_throttled_seconds:increase15m", "increase(ena_allowance_exceeded_seconds_total[15m])"),
    // The conntrack allowance belongs to the instance; every ENI reports the same headroom.
    (
        "ena:conntrack_allowance_available:min",
        "min without (device, eni) (ena_conntrack_allowance_available)",
    ),
];

fn recording() -> Vec<Rule> {
    RECORDING_RULES.iter().map(|(name, expr)| Rule::record(name, expr)).collect()
}

fn allowances() -> Vec<Rule> {
    let mut allowances: Vec<Rule> = ALLOWANCE_ALERTS.iter().map(AllowanceAlert::rule).collect();
    allowances.push(
        Rule::alert(
            CONNTRACK_LOW_ALERT,
            format!("min without (device, eni) (ena_conntrack_allowance_available) < {CONNTRACK_LOW}"),
        )
        .hold(CONNTRACK_LOW_HOLD)
        .severity(Severity::Warning)
        .annotate("summary", "Conntrack headroom low on {{ $labels.instance }}")
        .annotate(
            "description",
            "Only {{ $value }} more connections can be tracked on {{ $labels.instance }} (node \
             {{ $labels.node }}) before the instance's conntrack allowance is exhausted and new \
             connections are dropped.",
        )
        .runbook(CONNTRACK_LOW_ALERT),
    );
    allowances.push(
        Rule::alert(
            BUDGET_ALERT,
            format!(
                "histogram_quantile(0.99, rate(ena_linklocal_packets_per_second_bucket[{}])) > {}",
                HumanDuration(BUDGET_WINDOW),
                BUDGET_RATIO * crate::source::linklocal::BUDGET_PPS
            ),
        )
        .hold(BUDGET_HOLD)
        .severity(Severity::Warning)
        .annotate("summary", "Link-local budget nearly used up on {{ $labels.instance }} {{ $labels.device }}")
        .annotate(
            "description",
            "The busiest seconds of {{ $labels.device }} on {{ $labels.instance }} (node {{ $labels.node }}) \
             send {{ $value | humanize }} packets per second to link-local services (DNS resolver, IMDS, \
             Time Sync), more than 80% of the 1024/s the ENI may send before EC2 drops them.",
        )
        .runbook(BUDGET_ALERT),
    );
    allowances
}

fn agent() -> Vec<Rule> {
    vec![
        Rule::alert("EnawatchDown", "up{job=~\".*enawatch.*\"} == 0")
            .hold(Duration::from_secs(5 * 60))
            .severity(Severity::Warning)
            .annotate("summary", "enawatch is not answering on {{ $labels.instance }}")
            .annotate(
                "description",
                "The agent on {{ $labels.instance }} (node {{ $labels.node }}) has not answered \
                 scrapes for 5 minutes: ENA throttling on that node is invisible.",
            )
            .runbook("EnawatchDown"),
        Rule::alert("EnawatchAbsent", "absent(up{job=~\".*enawatch.*\"})")
            .hold(Duration::from_secs(15 * 60))
            .severity(Severity::Warning)
            .annotate("summary", "No enawatch target is being scraped")
            .annotate(
                "description",
                "No scrape target with a job matching enawatch exists: the DaemonSet or its \
                 PodMonitor/ServiceMonitor is missing, so no node's ENA throttling is watched.",
            )
            .runbook("EnawatchAbsent"),
        Rule::alert(
            "EnaAllowanceStatsUnsupported",
            "(ena_stat_supported{stat=~\".+_allowance_exceeded\"} == 0) \
             * on (instance, device) group_left (driver_version) ena_interface_info{driver=\"ena\"}",
        )
        .hold(Duration::from_secs(60 * 60))
        .severity(Severity::Info)
        .annotate("summary", "ENA driver on {{ $labels.instance }} does not report {{ $labels.stat }}")
        .annotate(
            "description",
            "The ENA driver {{ $labels.driver_version }} of {{ $labels.device }} on {{ $labels.instance }} \
             does not report {{ $labels.stat }} (ENA driver 2.2.10 or later is needed): throttling \
             of that allowance cannot be seen on this node.",
        )
        .runbook("EnaAllowanceStatsUnsupported"),
        Rule::alert(
            "EnawatchReadErrors",
            "increase(enawatch_read_errors_total{reason!=\"schema_changed\"}[15m]) > 0",
        )
        .hold(Duration::from_secs(15 * 60))
        .severity(Severity::Warning)
        .annotate("summary", "enawatch cannot read {{ $labels.device }} on {{ $labels.instance }}")
        .annotate(
            "description",
            "Reads of {{ $labels.device }}'s statistics on {{ $labels.instance }} keep failing \
             ({{ $labels.reason }}): its allowances are not being watched.",
        )
        .runbook("EnawatchReadErrors"),
    ]
}

#[expect(clippy::too_many_lines, reason = "a table, one entry per alert, read top to bottom")]
fn coredns() -> Vec<Rule> {
    vec![
        Rule::alert("CoreDNSDown", "absent(up{job=\"kube-dns\"} == 1)")
            .hold(Duration::from_secs(5 * 60))
            .severity(Severity::Critical)
            .annotate("summary", "CoreDNS has disappeared from Prometheus target discovery")
            .annotate("description", "No CoreDNS pod (job kube-dns) has answered scrapes for 5 minutes.")
            .runbook("CoreDNSDown"),
        Rule::alert(
            "CoreDNSErrorsHigh",
            "sum without (instance, pod, node, server, zone, plugin, rcode) \
             (rate(coredns_dns_responses_total{rcode=\"SERVFAIL\"}[5m])) \
             / sum without (instance, pod, node, server, zone, plugin, rcode) \
             (rate(coredns_dns_responses_total[5m])) > 0.03",
        )
        .hold(Duration::from_secs(10 * 60))
        .severity(Severity::Warning)
        .annotate("summary", "CoreDNS answers SERVFAIL to {{ $value | humanizePercentage }} of requests")
        .annotate(
            "description",
            "{{ $value | humanizePercentage }} of CoreDNS responses are SERVFAIL. If the \
             LinkLocalAllowanceExceeded or CoreDNSLinkLocalThrottled alert fires too, the VPC \
             resolver's answers are being dropped on the CoreDNS nodes.",
        )
        .runbook("CoreDNSErrorsHigh"),
        Rule::alert(
            "CoreDNSLatencyHigh",
            "histogram_quantile(0.99, sum without (instance, pod, node, type) \
             (rate(coredns_dns_request_duration_seconds_bucket[5m]))) > 1",
        )
        .hold(Duration::from_secs(10 * 60))
        .severity(Severity::Warning)
        .annotate("summary", "CoreDNS p99 latency is {{ $value | humanizeDuration }} for zone {{ $labels.zone }}")
        .annotate(
            "description",
            "The 99th percentile of CoreDNS request latency for zone {{ $labels.zone }} on server \
             {{ $labels.server }} is {{ $value | humanizeDuration }}.",
        )
        .runbook("CoreDNSLatencyHigh"),
        Rule::alert(
            "CoreDNSForwardLatencyHigh",
            "histogram_quantile(0.99, sum without (instance, pod, node, rcode) \
             (rate(coredns_proxy_request_duration_seconds_bucket{proxy_name=\"forward\"}[5m]))) > 1",
        )
        .hold(Duration::from_secs(10 * 60))
        .severity(Severity::Warning)
        .annotate("summary", "CoreDNS upstream {{ $labels.to }} p99 latency is {{ $value | humanizeDuration }}")
        .annotate(
            "description",
            "Requests CoreDNS forwards to {{ $labels.to }} take {{ $value | humanizeDuration }} at \
             the 99th percentile. Dropped link-local packets show up here as timeouts and retries.",
        )
        .runbook("CoreDNSForwardLatencyHigh"),
        Rule::alert(
            "CoreDNSForwardErrorsHigh",
            "sum without (instance, pod, node, rcode) \
             (rate(coredns_proxy_request_duration_seconds_count{proxy_name=\"forward\",rcode=\"SERVFAIL\"}[5m])) \
             / sum without (instance, pod, node, rcode) \
             (rate(coredns_proxy_request_duration_seconds_count{proxy_name=\"forward\"}[5m])) > 0.03",
        )
        .hold(Duration::from_secs(10 * 60))
        .severity(Severity::Warning)
        .annotate("summary", "Upstream {{ $labels.to }} answers SERVFAIL to {{ $value | humanizePercentage }}")
        .annotate(
            "description",
            "{{ $value | humanizePercentage }} of the requests CoreDNS forwards to {{ $labels.to }} \
             are answered SERVFAIL.",
        )
        .runbook("CoreDNSForwardErrorsHigh"),
        Rule::alert(
            "CoreDNSForwardHealthcheckFailing",
            "sum without (instance, pod, node, rcode) \
             (rate(coredns_proxy_healthcheck_failures_total{proxy_name=\"forward\"}[5m])) > 0",
        )
        .hold(Duration::from_secs(2 * 60))
        .severity(Severity::Warning)
        .annotate("summary", "CoreDNS health checks of upstream {{ $labels.to }} are failing")
        .annotate(
            "description",
            "CoreDNS health checks of {{ $labels.to }} fail {{ $value | humanize }} times a second.",
        )
        .runbook("CoreDNSForwardHealthcheckFailing"),
        Rule::alert(
            "CoreDNSForwardHealthcheckBroken",
            "sum without (instance, pod, node) (rate(coredns_forward_healthcheck_broken_total[5m])) > 0",
        )
        .hold(Duration::from_secs(2 * 60))
        .severity(Severity::Critical)
        .annotate("summary", "Every CoreDNS upstream is unhealthy")
        .annotate(
            "description",
            "All of CoreDNS's upstreams are failing health checks; it is sending queries to a \
             random one.",
        )
        .runbook("CoreDNSForwardHealthcheckBroken"),
        Rule::alert(
            "CoreDNSLinkLocalThrottled",
            "sum by (node) (increase(ena_allowance_exceeded_seconds_total{allowance=\"linklocal\"}[15m])) > 0 \
             and on (node) count by (node) (coredns_build_info)",
        )
        .hold(Duration::from_secs(60))
        .keep_firing(KEEP_FIRING)
        .severity(Severity::Critical)
        .annotate("summary", "Link-local packets dropped on node {{ $labels.node }}, which runs CoreDNS")
        .annotate(
            "description",
            "Node {{ $labels.node }} runs a CoreDNS pod and dropped link-local packets for \
             {{ $value | humanize }}s of the last 15 minutes: CoreDNS's queries to the VPC \
             resolver are being dropped, so DNS fails for pods on every node.",
        )
        .runbook("CoreDNSLinkLocalThrottled"),
    ]
}

/// The three output flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// A Prometheus rule file (`rule_files:`), also for `promtool`.
    Prometheus,
    /// A Prometheus Operator `PrometheusRule` resource.
    PrometheusOperator,
    /// An ACK `RuleGroupsNamespace` for Amazon Managed Service for Prometheus.
    AmpAck,
}

impl Flavour {
    /// Where the checked-in copy lives, relative to the repository root.
    pub fn path(self) -> &'static str {
        match self {
            Self::Prometheus => "deploy/prometheus/enawatch-rules.yaml",
            Self::PrometheusOperator => "deploy/kubernetes/prometheusrule.yaml",
            Self::AmpAck => "deploy/amp/rulegroupsnamespace.yaml",
        }
    }

    /// The command that produces it.
    pub fn command(self) -> &'static str {
        match self {
            Self::Prometheus => "enawatch rules render --format prometheus",
            Self::PrometheusOperator => "enawatch rules render --format prometheus-operator",
            Self::AmpAck => "enawatch rules render --format amp-ack",
        }
    }
}

#[derive(Serialize)]
struct Metadata {
    name: &'static str,
    namespace: &'static str,
    labels: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Resource<S> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: S,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AmpSpec {
    #[serde(rename = "workspaceID")]
    workspace_id: &'static str,
    name: &'static str,
    configuration: String,
}

fn metadata() -> Metadata {
    Metadata {
        name: "enawatch",
        namespace: "enawatch",
        labels: BTreeMap::from([
            ("app.kubernetes.io/name", "enawatch"),
            ("app.kubernetes.io/part-of", "enawatch"),
        ]),
    }
}

/// Renders the rules in one flavour.
pub fn render(flavour: Flavour) -> String {
    let groups = groups();
    let rule_file = yaml_serde::to_string(&RuleFile { groups: &groups }).expect("rules serialize");
    let mut out = format!("# Generated by `{}`; do not edit.\n", flavour.command());
    let body = match flavour {
        Flavour::Prometheus => rule_file,
        Flavour::PrometheusOperator => {
            out.push_str(
                "# Prometheus Operator: your Prometheus's ruleSelector must match these labels \
                 (kube-prometheus-stack\n# selects `release: <release name>` by default: add it \
                 with kustomize or kubectl label).\n",
            );
            let resource = Resource {
                api_version: "monitoring.coreos.com/v1",
                kind: "PrometheusRule",
                metadata: metadata(),
                spec: RuleFile { groups: &groups },
            };
            yaml_serde::to_string(&resource).expect("rules serialize")
        }
        Flavour::AmpAck => {
            out.push_str(
                "# Amazon Managed Service for Prometheus through the ACK controller: replace \
                 WORKSPACE_ID with your\n# workspace's id (ws-…).\n",
            );
            let resource = Resource {
                api_version: "prometheusservice.services.k8s.aws/v1alpha1",
                kind: "RuleGroupsNamespace",
                metadata: metadata(),
                spec: AmpSpec { workspace_id: "WORKSPACE_ID", name: "enawatch", configuration: rule_file },
            };
            yaml_serde::to_string(&resource).expect("rules serialize")
        }
    };
    let _ = write!(out, "{body}");
    out
}

/// Every alert name, once, in definition order.
pub fn alert_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for group in groups() {
        for rule in group.rules {
            if let Some(name) = rule.alert {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_window_is_at_least_four_minutes() {
        for group in groups() {
            for rule in &group.rules {
                let mut rest = rule.expr.as_str();
                while let Some(open) = rest.find('[') {
                    let close = rest[open..].find(']').expect("closed") + open;
                    let d = crate::base::parse_duration(&rest[open + 1..close]).expect("duration");
                    assert!(d >= Duration::from_secs(240), "{}: window {d:?}", rule.expr);
                    rest = &rest[close..];
                }
            }
        }
    }

    #[test]
    fn the_aws_guide_alert_names_are_kept() {
        let names = alert_names();
        for name in [
            "LinkLocalAllowanceExceeded",
            "PPSAllowanceExceeded",
            "BWInAllowanceExceeded",
            "BWOutAllowanceExceeded",
            "ConntrackAllowanceExceeded",
        ] {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
    }

    #[test]
    fn allowance_alerts_have_no_device_filter_and_a_runbook() {
        for a in &ALLOWANCE_ALERTS {
            let r = a.rule();
            assert!(!r.expr.contains("device"), "{}", r.expr);
            assert!(r.annotations["runbook_url"].ends_with(&format!("#{}", a.name.to_lowercase())));
        }
    }

    #[test]
    fn the_amp_flavour_carries_the_rule_file_as_a_string() {
        let amp = render(Flavour::AmpAck);
        let doc: yaml_serde::Value = yaml_serde::from_str(&amp).unwrap();
        let inner = doc["spec"]["configuration"].as_str().unwrap();
        let plain = render(Flavour::Prometheus);
        assert_eq!(inner, plain.split_once('\n').unwrap().1);
    }
}
