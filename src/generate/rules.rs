//! The alerting and recording rules of the monitoring package: one definition, rendered in
//! three flavours by `enawatch rules render` (a Prometheus rule file, a Prometheus Operator
//! `PrometheusRule`, an ACK `RuleGroupsNamespace` for Amazon Managed Prometheus).
//!
//! The allowance alerts come from the catalog ([`crate::alerts::catalog`]) the agent's own
//! evaluator uses too.
//!
//! Recording rules exist only where a shipped alert or dashboard reads them, and sit in the
//! group of the alerts that read them, first, so those alerts see this cycle's value (rules of
//! a group run in order; groups run independently). Each one's cost was measured at 1,000
//! nodes (`bench/rules-at-scale`, docs/performance.md): a recording that nothing reads is
//! paid for by every node, every cycle.
//!
//! Every range window is at least 4 × a 60 s scrape interval, so the rules work whatever the
//! scrape interval, on Prometheus 2 and 3 (left-open windows) and on AMP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::alerts::catalog::{
    AllowanceAlert, Severity, ALLOWANCE_ALERTS, BUDGET_ALERT, BUDGET_HOLD, BUDGET_RATIO, BUDGET_WINDOW,
    CONNTRACK_LOW, CONNTRACK_LOW_ALERT, CONNTRACK_LOW_HOLD, DNS_FAILING_ALERT, DNS_FAILING_RATIO, DNS_HOLD,
    DNS_MIN_FAILURES, DNS_THROTTLED_ALERT, DNS_WINDOW, KEEP_FIRING, RUNBOOK_BASE,
};
use crate::base::HumanDuration;

impl AllowanceAlert {
    fn rule(&self) -> Rule {
        let window = HumanDuration(self.window);
        // The recorded throttled time is the catalog's condition, computed once for every
        // allowance and device instead of once per alert (nine of them).
        let expr = if self.window == THROTTLED_WINDOW {
            format!(
                "{THROTTLED_SECONDS}{{allowance=\"{}\"}} >= {}",
                self.allowance.label(),
                self.min_throttled.as_secs()
            )
        } else {
            self.expr()
        };
        Rule::alert(self.name, expr)
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
    /// For a recording: whether its series keep the `node` label (dashboards filter them by
    /// node) or are summed over the cluster's nodes.
    #[serde(skip)]
    scope: Scope,
}

/// What a recording rule's series are per.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One series per node (or finer): they keep `node`.
    Node,
    /// Summed over the nodes of a cluster: they keep `cluster` (when the series have one) and
    /// not `node`.
    Cluster,
}

impl Rule {
    fn record(name: &str, scope: Scope, expr: impl Into<String>) -> Self {
        Self {
            record: Some(name.to_owned()),
            alert: None,
            expr: expr.into(),
            hold: None,
            keep_firing_for: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            scope,
        }
    }

    fn alert(name: &str, expr: impl Into<String>) -> Self {
        Self { alert: Some(name.to_owned()), record: None, ..Self::record("", Scope::Node, expr) }
    }

    /// The alert's or recording's name.
    pub fn name(&self) -> &str {
        self.alert.as_deref().or(self.record.as_deref()).unwrap_or_default()
    }

    /// Whether this is an alerting rule (else a recording).
    pub fn is_alert(&self) -> bool {
        self.alert.is_some()
    }

    /// The PromQL expression.
    pub fn expr(&self) -> &str {
        &self.expr
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
    /// How often the group is evaluated, when not the server's `evaluation_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// The rules.
    pub rules: Vec<Rule>,
}

#[derive(Serialize)]
struct RuleFile<'a> {
    groups: &'a [Group],
}

/// How the agents' samples reach the Prometheus that evaluates the rules: the "agent down"
/// and "agent absent" alerts differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Agents {
    /// Prometheus scrapes them: the alerts are built on `up`.
    Scraped,
    /// They push (remote write, OTLP) and are never scraped, so there is no `up`: the alerts
    /// are built on the age of `enawatch_last_sample_timestamp_seconds` and on its absence.
    Push,
}

/// A pushing agent silent this long is down (its samples come every interval, and remote
/// write sends at most every 30 s by default).
const PUSH_SILENCE: Duration = Duration::from_secs(120);

/// Every rule group of the package, for agents that are scraped.
pub fn groups() -> Vec<Group> {
    groups_for(Agents::Scraped)
}

/// Every rule group of the package, for `agents`.
pub fn groups_for(agents: Agents) -> Vec<Group> {
    vec![
        Group { name: "enawatch.allowances".into(), interval: None, rules: allowances() },
        Group { name: "enawatch.agent".into(), interval: None, rules: agent(agents) },
        Group {
            name: "enawatch.dns".into(),
            interval: Some(HumanDuration(DNS_INTERVAL).to_string()),
            rules: dns(),
        },
        Group { name: "enawatch.coredns".into(), interval: None, rules: coredns() },
    ]
}

/// Every recording rule: its name and what its series are per. Dashboards may use these.
pub fn recordings() -> Vec<(String, Scope)> {
    groups().into_iter().flat_map(|g| g.rules).filter_map(|r| Some((r.record?, r.scope))).collect()
}

/// Seconds throttled in the last 15 minutes, per device and allowance, where not zero: what
/// every allowance alert, `CoreDNSLinkLocalThrottled` and the ENA dashboard's table read.
/// Only throttled devices have a series, so a healthy fleet stores none.
pub const THROTTLED_SECONDS: &str = "ena:allowance_throttled_seconds:increase15m";
/// The window of [`THROTTLED_SECONDS`], the catalog's allowance window.
const THROTTLED_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The instance's conntrack headroom (every ENI reports the same): what
/// `ConntrackAllowanceLow` and the ENA dashboard read.
pub const CONNTRACK_MIN: &str = "ena:conntrack_allowance_available:min";

fn allowance_recordings() -> Vec<Rule> {
    vec![
        Rule::record(
            THROTTLED_SECONDS,
            Scope::Node,
            format!(
                "increase(ena_allowance_exceeded_seconds_total[{}]) > 0",
                HumanDuration(THROTTLED_WINDOW)
            ),
        ),
        // The conntrack allowance belongs to the instance; every ENI reports the same headroom.
        Rule::record(
            CONNTRACK_MIN,
            Scope::Node,
            "min without (device, eni) (ena_conntrack_allowance_available)",
        ),
    ]
}

fn allowances() -> Vec<Rule> {
    let mut allowances = allowance_recordings();
    allowances.extend(ALLOWANCE_ALERTS.iter().map(AllowanceAlert::rule));
    allowances.push(
        Rule::alert(CONNTRACK_LOW_ALERT, format!("{CONNTRACK_MIN} < {CONNTRACK_LOW}"))
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
    allowances.push(coredns_linklocal_throttled());
    allowances
}

/// Link-local drops on a node that runs CoreDNS. In this group, not `enawatch.coredns`,
/// because it reads this group's recording: groups run independently, so a rule reading
/// another group's recording sees it up to one interval late.
fn coredns_linklocal_throttled() -> Rule {
    Rule::alert(
        "CoreDNSLinkLocalThrottled",
        format!(
            "sum by (node) ({THROTTLED_SECONDS}{{allowance=\"linklocal\"}}) > 0 \
             and on (node) count by (node) (coredns_build_info)"
        ),
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
    .runbook("CoreDNSLinkLocalThrottled")
}

fn agent(agents: Agents) -> Vec<Rule> {
    let (down, absent) = match agents {
        Agents::Scraped => (
            Rule::alert("EnawatchDown", "up{job=~\".*enawatch.*\"} == 0")
                .hold(Duration::from_secs(5 * 60))
                .annotate("summary", "enawatch is not answering on {{ $labels.instance }}")
                .annotate(
                    "description",
                    "The agent on {{ $labels.instance }} (node {{ $labels.node }}) has not answered \
                     scrapes for 5 minutes: ENA throttling on that node is invisible.",
                ),
            Rule::alert("EnawatchAbsent", "absent(up{job=~\".*enawatch.*\"})")
                .hold(Duration::from_secs(15 * 60))
                .annotate("summary", "No enawatch target is being scraped")
                .annotate(
                    "description",
                    "No scrape target with a job matching enawatch exists: the DaemonSet or its \
                     PodMonitor/ServiceMonitor is missing, so no node's ENA throttling is watched.",
                ),
        ),
        // Remote-written series have no staleness: the last sample stays visible for the
        // lookback, then the series is gone. So "down" looks back an hour for the agent's last
        // sample time, and fires while that is older than the silence allowed.
        Agents::Push => (
            Rule::alert(
                "EnawatchDown",
                format!(
                    "time() - max_over_time(enawatch_last_sample_timestamp_seconds[1h]) > {}",
                    PUSH_SILENCE.as_secs()
                ),
            )
            .hold(Duration::from_secs(3 * 60))
            .annotate("summary", "enawatch on {{ $labels.instance }} has stopped pushing")
            .annotate(
                "description",
                "The agent on {{ $labels.instance }} (node {{ $labels.node }}) has sent no sample \
                 for {{ $value | humanizeDuration }}: ENA throttling on that node is invisible.",
            ),
            Rule::alert("EnawatchAbsent", "absent(enawatch_last_sample_timestamp_seconds)")
                .hold(Duration::from_secs(15 * 60))
                .annotate("summary", "No enawatch agent is pushing samples")
                .annotate(
                    "description",
                    "No agent has pushed enawatch_last_sample_timestamp_seconds: the DaemonSet or \
                     its remote write is missing or failing, so no node's ENA throttling is watched.",
                ),
        ),
    };
    vec![
        down.severity(Severity::Warning).runbook("EnawatchDown"),
        absent.severity(Severity::Warning).runbook("EnawatchAbsent"),
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

/// Failed lookups per second over [`DNS_WINDOW`] per node, workload and `throttled`, where not
/// zero: what both DNS alerts count and the ratio sums.
pub const DNS_FAILURES: &str = "enawatch:dns_failures:rate5m";
/// Per-workload share of lookups that failed, where any failed.
pub const DNS_FAILURE_RATIO: &str = "enawatch:dns_failure_ratio:rate5m";
/// 99th-percentile DNS response time per upstream, over the cluster's nodes.
pub const DNS_P99: &str = "enawatch:dns_response_seconds:p99_5m";
/// How often the DNS group runs. Its rules read every DNS series of every node (about a hundred
/// a node, against a dozen for the allowances), and what they compute moves on the scale of
/// the 5-minute window and hold, not of a scrape: every 2 minutes costs a quarter of every
/// 30 s (measured at 1,000 nodes, docs/performance.md), and an alert fires at most 2 minutes
/// later. On AMP, whose rule evaluation is billed by samples queried, a quarter of the bill.
const DNS_INTERVAL: Duration = Duration::from_secs(2 * 60);

/// The DNS families of the agent (issue 12), per workload and per upstream. A node exports
/// its 20 busiest workloads, so a dense per-node recording would cost up to 20 series a node:
/// the per-node one records only what fails, the ratio and the latency are summed over the
/// cluster's nodes (one series per failing workload, four per upstream).
fn dns() -> Vec<Rule> {
    let window = HumanDuration(DNS_WINDOW);
    let workload = "cluster, namespace, workload";
    let who = "{{ with $labels.workload }}{{ $labels.namespace }}/{{ . }}{{ else }}pods without attribution{{ end }}";
    vec![
        // Read the raw failure counters once a cycle (they are most of a node's DNS series);
        // both alerts and the ratio read this sparse recording.
        Rule::record(
            DNS_FAILURES,
            Scope::Node,
            format!("sum without (upstream, reason) (rate(enawatch_dns_failures_total[{window}])) > 0"),
        ),
        Rule::record(
            DNS_FAILURE_RATIO,
            Scope::Cluster,
            format!(
                "sum by ({workload}) ({DNS_FAILURES}) \
                 / on ({workload}) sum by ({workload}) (rate(enawatch_dns_queries_total[{window}]))"
            ),
        ),
        Rule::record(
            DNS_P99,
            Scope::Cluster,
            format!(
                "histogram_quantile(0.99, sum by (cluster, upstream, le) \
                 (rate(enawatch_dns_response_seconds_bucket[{window}])))"
            ),
        ),
        Rule::alert(
            DNS_FAILING_ALERT,
            format!(
                "{DNS_FAILURE_RATIO} > {DNS_FAILING_RATIO} \
                 and on ({workload}) sum by ({workload}) ({DNS_FAILURES}) * {} >= {DNS_MIN_FAILURES}",
                DNS_WINDOW.as_secs()
            ),
        )
        .hold(DNS_HOLD)
        .keep_firing(KEEP_FIRING)
        .severity(Severity::Warning)
        .annotate("summary", &format!("DNS lookups of {who} are failing"))
        .annotate(
            "description",
            &format!(
                "{{{{ $value | humanizePercentage }}}} of the DNS lookups of {who} failed over the \
                 last {window} (timeouts, SERVFAIL, REFUSED), on every node enawatch watches. If \
                 DNSFailuresFromLinkLocalThrottling fires too, the failures are link-local drops."
            ),
        )
        .runbook(DNS_FAILING_ALERT),
        Rule::alert(
            DNS_THROTTLED_ALERT,
            format!(
                "sum without (namespace, workload, throttled) ({DNS_FAILURES}{{throttled=\"true\"}}) * {} \
                 >= {DNS_MIN_FAILURES}",
                DNS_WINDOW.as_secs()
            ),
        )
        .hold(DNS_HOLD)
        .keep_firing(KEEP_FIRING)
        .severity(Severity::Warning)
        .annotate("summary", "DNS lookups fail on node {{ $labels.node }}: its ENI drops link-local packets")
        .annotate(
            "description",
            &format!(
                "{{{{ $value | humanize }}}} DNS lookups sent from node {{{{ $labels.node }}}} \
                 ({{{{ $labels.instance }}}}) in the last {window} failed while their ENI was over \
                 its 1024 packets/s link-local allowance: EC2 dropped them on the way to the VPC \
                 resolver. The DNS clients dashboard shows which workloads."
            ),
        )
        .runbook(DNS_THROTTLED_ALERT),
    ]
}

/// CoreDNS's pods in kube-state-metrics' `kube_pod_info`: those of a ReplicaSet of the
/// Deployment `coredns` in kube-system (EKS's add-on, kubeadm, kops), scheduled on a node.
/// By owner, not by pod name, so `coredns-autoscaler-…` pods are not counted; with another
/// Deployment name, change the regex.
const COREDNS_PODS: &str = "kube_pod_info{namespace=\"kube-system\", created_by_kind=\"ReplicaSet\", \
                            created_by_name=~\"coredns-[a-z0-9]+\", node!=\"\"}";
/// Packets per second the nodes that run CoreDNS send to the VPC resolver (the link-local
/// meter's `service="dns"`), summed per cluster.
pub const COREDNS_LINKLOCAL_DNS: &str = "enawatch:coredns_linklocal_dns_packets:rate5m";
/// CoreDNS pods scheduled, per cluster.
pub const COREDNS_REPLICAS: &str = "enawatch:coredns_replicas:count";
/// CoreDNS replicas (one per node) that keep every ENI under 80 % of its link-local budget.
pub const COREDNS_REPLICAS_NEEDED: &str = "enawatch:coredns_replicas_needed:rate5m";
/// Never advise fewer CoreDNS replicas than the two every distribution runs, for availability.
const COREDNS_MIN_REPLICAS: u32 = 2;

/// How many CoreDNS replicas the cluster needs: each replica forwards its cache misses
/// through the ENI of its node, so with the forwarded load T (packets/s to the VPC resolver,
/// as the meter counts them on the CoreDNS nodes) spread over R replicas on R nodes, each ENI
/// sends T/R, which must stay under 80 % of 1024/s.
fn coredns_sizing() -> Vec<Rule> {
    let budget = BUDGET_RATIO * crate::source::linklocal::BUDGET_PPS;
    vec![
        Rule::record(
            COREDNS_LINKLOCAL_DNS,
            Scope::Cluster,
            format!(
                "sum by (cluster) (sum by (cluster, node) (rate(ena_linklocal_packets_total{{service=\"dns\"}}[{}])) \
                 and on (cluster, node) group by (cluster, node) ({COREDNS_PODS}))",
                HumanDuration(DNS_WINDOW)
            ),
        ),
        Rule::record(COREDNS_REPLICAS, Scope::Cluster, format!("count by (cluster) (group by (cluster, pod) ({COREDNS_PODS}))")),
        Rule::record(
            COREDNS_REPLICAS_NEEDED,
            Scope::Cluster,
            format!("clamp_min(ceil({COREDNS_LINKLOCAL_DNS} / {budget}), {COREDNS_MIN_REPLICAS})"),
        ),
    ]
}

fn coredns() -> Vec<Rule> {
    let mut rules = coredns_sizing();
    rules.extend(coredns_health());
    rules.push(
        Rule::alert(
            "CoreDNSReplicasShareNode",
            format!("count by (cluster, node) (group by (cluster, node, pod) ({COREDNS_PODS})) > 1"),
        )
        // A rolling update places a new pod next to an old one for a moment.
        .hold(Duration::from_secs(15 * 60))
        .severity(Severity::Warning)
        .annotate("summary", "{{ $value }} CoreDNS replicas run on node {{ $labels.node }}")
        .annotate(
            "description",
            "{{ $value }} CoreDNS pods have run on node {{ $labels.node }} for 15 minutes. They \
             forward their cache misses through the same ENI, whose link-local allowance (1024 \
             packets/s to the VPC resolver) they share: spread them over nodes.",
        )
        .runbook("CoreDNSReplicasShareNode"),
    );
    rules
}

fn coredns_health() -> Vec<Rule> {
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
    /// The command that produces it (for agents that are scraped).
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

/// The checked-in renderings: format, agents, path from the repository root. The AMP ones are
/// for agents that push (remote write is how samples reach AMP).
pub const COPIES: [(Flavour, Agents, &str); 4] = [
    (Flavour::Prometheus, Agents::Scraped, "deploy/prometheus/enawatch-rules.yaml"),
    (Flavour::PrometheusOperator, Agents::Scraped, "deploy/kubernetes/prometheusrule.yaml"),
    (Flavour::AmpAck, Agents::Push, "deploy/amp/rulegroupsnamespace.yaml"),
    (Flavour::Prometheus, Agents::Push, "deploy/amp/enawatch-rules.yaml"),
];

/// The command that renders the rules in `flavour` for `agents`.
pub fn command(flavour: Flavour, agents: Agents) -> String {
    match agents {
        Agents::Scraped => flavour.command().to_owned(),
        Agents::Push => format!("{} --agents push", flavour.command()),
    }
}

/// Renders the rules in one flavour, for agents that are scraped.
pub fn render(flavour: Flavour) -> String {
    render_for(flavour, Agents::Scraped)
}

/// Renders the rules in one flavour for `agents`.
pub fn render_for(flavour: Flavour, agents: Agents) -> String {
    let groups = groups_for(agents);
    let rule_file = yaml_serde::to_string(&RuleFile { groups: &groups }).expect("rules serialize");
    let mut out = format!("# Generated by `{}`; do not edit.\n", command(flavour, agents));
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
                // Brackets inside label values are regex classes, not windows.
                let outside_strings: String =
                    rule.expr.split('"').step_by(2).collect::<Vec<_>>().join("\"\"");
                let mut rest = outside_strings.as_str();
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
    fn allowance_alerts_read_the_recorded_throttled_time_of_their_window() {
        for a in &ALLOWANCE_ALERTS {
            assert_eq!(
                a.window, THROTTLED_WINDOW,
                "{}: a window of its own needs a recording of its own",
                a.name
            );
            let r = a.rule();
            assert!(r.expr.starts_with(THROTTLED_SECONDS), "{}", r.expr);
            // The same condition as the catalog's, which the agent evaluates locally.
            let raw = a.expr();
            let threshold = raw.rsplit_once(">= ").unwrap().1;
            assert!(r.expr.ends_with(&format!(">= {threshold}")), "{} vs {raw}", r.expr);
            assert!(raw.contains(&format!("[{}]", HumanDuration(THROTTLED_WINDOW))), "{raw}");
        }
    }

    #[test]
    fn recordings_come_before_the_rules_of_their_group_that_read_them() {
        for group in groups() {
            for (i, rule) in group.rules.iter().enumerate() {
                for later in &group.rules[i + 1..] {
                    if later.record.is_some() {
                        assert!(
                            !rule.expr.contains(later.name()),
                            "{}: {} reads {}, recorded after it",
                            group.name,
                            rule.name(),
                            later.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn no_rule_reads_a_recording_of_another_group() {
        let groups = groups();
        for group in &groups {
            for other in groups.iter().filter(|g| g.name != group.name) {
                for rule in &group.rules {
                    for recorded in other.rules.iter().filter(|r| r.record.is_some()) {
                        assert!(
                            !rule.expr.contains(recorded.name()),
                            "{} ({}) reads {} of {}: it would see it up to an interval late",
                            rule.name(),
                            group.name,
                            recorded.name(),
                            other.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn recording_names_follow_the_convention_and_say_their_scope() {
        let recorded = recordings();
        assert!(recorded.len() >= 8, "{recorded:?}");
        for (name, scope) in &recorded {
            assert_eq!(name.matches(':').count(), 2, "level:metric:operations: {name}");
            let expr = &groups().into_iter().flat_map(|g| g.rules).find(|r| r.name() == name).unwrap().expr;
            // Cluster-wide recordings keep `cluster` and drop `node` (their outermost `by` list
            // has the one and not the other, or they derive from one that does); per-node ones
            // aggregate nothing away but what they name in `without`.
            let by_lists: Vec<&str> =
                expr.split("by (").skip(1).map(|rest| rest.split(')').next().unwrap()).collect();
            match scope {
                Scope::Cluster => {
                    let outer: Vec<&str> =
                        by_lists.first().map(|l| l.split(", ").collect()).unwrap_or_default();
                    assert!(
                        (outer.contains(&"cluster") && !outer.contains(&"node"))
                            || expr.starts_with("clamp_min("),
                        "{name}: {expr}"
                    );
                }
                Scope::Node => assert!(by_lists.is_empty(), "{name}: {expr}"),
            }
        }
    }

    #[test]
    fn the_dns_group_runs_less_often_than_its_window_and_hold() {
        let dns = groups().into_iter().find(|g| g.name == "enawatch.dns").unwrap();
        assert_eq!(dns.interval.as_deref(), Some("2m"));
        assert!(DNS_INTERVAL * 2 <= DNS_WINDOW && DNS_INTERVAL * 2 <= DNS_HOLD);
        let rendered = render(Flavour::Prometheus);
        assert!(rendered.contains("- name: enawatch.dns\n  interval: 2m\n  rules:\n"), "{rendered}");
    }

    #[test]
    fn the_coredns_sizing_uses_the_link_local_budget() {
        let needed = coredns_sizing().into_iter().find(|r| r.name() == COREDNS_REPLICAS_NEEDED).unwrap();
        assert_eq!(needed.expr, "clamp_min(ceil(enawatch:coredns_linklocal_dns_packets:rate5m / 819.2), 2)");
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
