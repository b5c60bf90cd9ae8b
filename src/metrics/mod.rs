//! `/metrics`: renders a [`Snapshot`] in the Prometheus text format or OpenMetrics.
//!
//! The metric contract (names, types, labels) is defined here and nowhere else; see the
//! table in the README, which a test keeps equal to [`NATIVE_FAMILIES`].

pub mod compat;
pub mod encode;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::fmt::Write as _;

use self::encode::{Encoder, Exposition, Format, Kind, Value};
use self::telemetry::{NotifyStats, RemoteWriteStats};
use crate::base::allowance::{Allowance, ALLOWANCE_STATS};
use crate::history::{DeviceState, Snapshot, State, LINKLOCAL_BUCKETS};
use crate::source::dns::families::{Reason, Totals, Upstream};
use crate::source::linklocal::Service;
use crate::source::tap::Socket;
use crate::source::Schema;

/// An opt-in compatibility family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Compat {
    /// `node_net_ethtool{device,type}`: raw driver values, as the AWS guide's queries expect.
    Showmax,
    /// `node_ethtool_<stat>{device}`: node_exporter's ethtool collector names.
    NodeExporter,
}

/// What `/metrics` renders besides the native families.
#[derive(Clone, Debug)]
pub struct Options {
    /// Compatibility families to add.
    pub compat: Vec<Compat>,
    /// The configured sampling interval (`enawatch_sample_interval_seconds`).
    pub interval: Duration,
    /// Notification counters, when receivers are configured.
    pub notify: Option<NotifyStats>,
    /// Remote-write counters, when endpoints are configured.
    pub remote_write: Option<RemoteWriteStats>,
}

/// One native family: name, type, labels and help. The README's metric table is this.
pub struct Family {
    /// Sample name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names.
    pub labels: &'static str,
    /// Help text.
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, labels: &'static str, help: &'static str) -> Family {
    Family { name, kind, labels, help }
}

/// The native families, in exposition order.
pub const NATIVE_FAMILIES: [Family; 27] = [
    family(
        "ena_allowance_exceeded_packets_total",
        Kind::Counter,
        "device, allowance",
        "Packets queued or dropped because an ENA allowance was exceeded (allowance: bw_in, bw_out, pps, conntrack, linklocal).",
    ),
    family(
        "ena_allowance_exceeded_seconds_total",
        Kind::Counter,
        "device, allowance",
        "Seconds of sampling intervals in which the allowance's exceeded counter increased.",
    ),
    family(
        "ena_conntrack_allowance_available",
        Kind::Gauge,
        "device",
        "Tracked connections that can still be established before the conntrack allowance is hit.",
    ),
    family(
        "ena_interface_info",
        Kind::Gauge,
        "device, driver, driver_version, firmware_version, bus_info, eni (when known)",
        "One per watched interface, with its driver information.",
    ),
    family(
        "ena_stat_supported",
        Kind::Gauge,
        "device, stat",
        "Whether the driver reports this allowance statistic (1) or not (0).",
    ),
    family(
        "ena_linklocal_packets_total",
        Kind::Counter,
        "device, service",
        "Packets sent to link-local services (service: dns, imds, ntp), which share a budget of 1024 per second per ENI (with --linklocal-meter).",
    ),
    family(
        "ena_linklocal_packets_per_second",
        Kind::Histogram,
        "device",
        "Sampling intervals by their rate of packets to link-local services; with 1 s sampling, each observation is one second (with --linklocal-meter).",
    ),
    family(
        "ena_linklocal_dns_unanswered_total",
        Kind::Counter,
        "device",
        "DNS queries to the VPC resolver that left through this ENI and got no response within the timeout (with --dns-analysis).",
    ),
    family(
        "enawatch_dns_queries_total",
        Kind::Counter,
        "namespace, workload, upstream",
        "DNS lookups (one per question, however many interfaces it crossed or tries it took) by client workload and upstream (vpc_resolver, nodelocal, cluster_dns, other); the busiest workloads by name, the rest as workload=\"other\" (with --dns-analysis).",
    ),
    family(
        "enawatch_dns_failures_total",
        Kind::Counter,
        "namespace, workload, upstream, reason, throttled",
        "DNS lookups that failed (reason: timeout, servfail, refused), and whether the link-local allowance was dropping packets when they were sent (throttled: true, false) (with --dns-analysis).",
    ),
    family(
        "enawatch_dns_search_path_queries_total",
        Kind::Counter,
        "namespace, workload",
        "DNS queries spent on search-path expansions answered NXDOMAIN before the name itself was answered (with --dns-analysis).",
    ),
    family(
        "enawatch_dns_response_seconds",
        Kind::Histogram,
        "upstream",
        "Time from a DNS query to its response, by upstream (with --dns-analysis).",
    ),
    family("enawatch_build_info", Kind::Gauge, "version, revision", "enawatch build information."),
    family(
        "enawatch_read_errors_total",
        Kind::Counter,
        "device, reason",
        "Failed reads of a device's statistics (reason: not_supported, permission_denied, no_device, schema_changed, io).",
    ),
    family("enawatch_sample_interval_seconds", Kind::Gauge, "", "Configured sampling interval."),
    family(
        "enawatch_samples_total",
        Kind::Counter,
        "",
        "Sampling ticks completed.",
    ),
    family(
        "enawatch_missed_ticks_total",
        Kind::Counter,
        "",
        "Sampling ticks skipped because the previous tick ran late.",
    ),
    family(
        "enawatch_last_sample_timestamp_seconds",
        Kind::Gauge,
        "",
        "Unix time of the latest sample.",
    ),
    family(
        "enawatch_driver_resets_total",
        Kind::Counter,
        "device",
        "Driver counter resets seen (the exported counters keep growing across them).",
    ),
    family(
        "enawatch_discarded_samples_total",
        Kind::Counter,
        "device, reason",
        "Samples not counted (reason: glitch for the ENA all-zero read, implausible for impossible jumps).",
    ),
    family(
        "enawatch_capture_dropped_packets_total",
        Kind::Counter,
        "socket",
        "Packets the kernel could not hand to a capture because its ring was full (socket: dns, meter), from PACKET_STATISTICS: what the DNS analysis and the link-local meter undercount.",
    ),
    family(
        "enawatch_alerts",
        Kind::Gauge,
        "alertname, severity, alertstate, device (per-device alerts), namespace and workload (per-workload alerts)",
        "Local alerts that are pending or firing (1), as Prometheus's ALERTS.",
    ),
    family(
        "enawatch_notifications_total",
        Kind::Counter,
        "receiver, outcome",
        "Notifications of local alerts (outcome: sent, failed when rejected, dropped when a queue overflowed, retried).",
    ),
    family(
        "enawatch_notification_queue_length",
        Kind::Gauge,
        "receiver",
        "Notifications waiting for a receiver.",
    ),
    family(
        "enawatch_remote_write_samples_total",
        Kind::Counter,
        "endpoint, outcome",
        "Samples pushed with remote write (outcome: sent when accepted, retried per failed attempt, dropped when the queue overflowed, failed when the receiver rejected them).",
    ),
    family(
        "enawatch_remote_write_pending_samples",
        Kind::Gauge,
        "endpoint",
        "Samples waiting for a remote-write endpoint to accept them.",
    ),
    family(
        "enawatch_remote_write_last_success_timestamp_seconds",
        Kind::Gauge,
        "endpoint",
        "Unix time a remote-write endpoint last accepted a batch (0: not yet).",
    ),
];

/// The version and revision this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision, from the build script.
pub const REVISION: &str = env!("ENAWATCH_REVISION");

/// Renders one snapshot.
pub fn render(snapshot: &Snapshot, options: &Options, format: Format) -> Exposition {
    let mut out = Exposition::default();
    let mut e = Encoder::new(&mut out, format);
    visit(snapshot, options, &mut e);
    e.finish();
    out
}

/// Where [`visit`] puts families and samples: the exposition [`Encoder`], or the remote-write
/// collector.
pub(crate) trait Sink {
    /// A family starts (`name` is the sample name, with `_total` for counters).
    fn family(&mut self, name: &str, kind: Kind, help: &str);
    /// One sample of the current family.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value);
}

impl Sink for Encoder<'_> {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        Encoder::family(self, name, kind, help);
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        Encoder::sample(self, name, labels, value);
    }
}

impl<T: Sink + ?Sized> Sink for &mut T {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        (**self).family(name, kind, help);
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        (**self).sample(name, labels, value);
    }
}

/// Every family of a snapshot, in the contract's order: what each family holds is defined
/// here once, for `/metrics` and for remote write.
#[expect(clippy::too_many_lines, reason = "one family after another, in the contract's order")]
pub(crate) fn visit<S: Sink>(snapshot: &Snapshot, options: &Options, mut e: S) {
    let mut families = NATIVE_FAMILIES.iter();
    let mut next = |e: &mut S| {
        let f = families.next().expect("one entry per family");
        e.family(f.name, f.kind, f.help);
        f.name
    };

    for counter in [0, 1] {
        let name = next(&mut e);
        for d in &snapshot.devices {
            for a in Allowance::ALL {
                if !d.counters.supported[a.index()] {
                    continue;
                }
                let value = if counter == 0 {
                    Value::Int(d.counters.packets[a.index()])
                } else {
                    Value::Float(d.counters.seconds[a.index()])
                };
                e.sample(name, &[("device", &d.device.name), ("allowance", a.label())], value);
            }
        }
    }

    let name = next(&mut e);
    for d in &snapshot.devices {
        if let (true, Some(v)) = (d.counters.available_supported, d.counters.available) {
            e.sample(name, &[("device", &d.device.name)], Value::Int(v));
        }
    }

    let name = next(&mut e);
    for d in &snapshot.devices {
        let dev = &d.device;
        let mut labels = vec![
            ("device", dev.name.as_str()),
            ("driver", dev.driver.as_str()),
            ("driver_version", dev.driver_version.as_str()),
            ("firmware_version", dev.firmware_version.as_str()),
            ("bus_info", dev.bus_info.as_str()),
        ];
        if let Some(eni) = &dev.eni {
            labels.push(("eni", eni));
        }
        e.sample(name, &labels, Value::Int(1));
    }

    let name = next(&mut e);
    for d in &snapshot.devices {
        for (k, stat) in ALLOWANCE_STATS.iter().enumerate() {
            let supported = d.schema.index.supports(k);
            e.sample(name, &[("device", &d.device.name), ("stat", stat)], Value::Int(supported.into()));
        }
    }

    let name = next(&mut e);
    for d in &snapshot.devices {
        if let Some(ll) = &d.linklocal {
            for s in Service::ALL {
                e.sample(
                    name,
                    &[("device", &d.device.name), ("service", s.label())],
                    Value::Int(ll.packets[s.index()]),
                );
            }
        }
    }
    let name = next(&mut e);
    let mut bucket_name = String::new();
    for d in &snapshot.devices {
        let Some(ll) = &d.linklocal else { continue };
        bucket_name.clear();
        bucket_name.push_str(name);
        bucket_name.push_str("_bucket");
        let mut bound = String::new();
        for (count, le) in ll.buckets.iter().zip(LINKLOCAL_BUCKETS) {
            bound.clear();
            let _ = write!(bound, "{le}");
            e.sample(&bucket_name, &[("device", &d.device.name), ("le", &bound)], Value::Int(*count));
        }
        e.sample(&bucket_name, &[("device", &d.device.name), ("le", "+Inf")], Value::Int(ll.count));
        e.sample(&format!("{name}_sum"), &[("device", &d.device.name)], Value::Float(ll.sum));
        e.sample(&format!("{name}_count"), &[("device", &d.device.name)], Value::Int(ll.count));
    }

    dns(&mut e, snapshot.dns.as_deref(), &mut next);

    let name = next(&mut e);
    e.sample(name, &[("version", VERSION), ("revision", REVISION)], Value::Int(1));

    let name = next(&mut e);
    for err in &snapshot.read_errors {
        e.sample(name, &[("device", &err.device), ("reason", err.reason.label())], Value::Int(err.count));
    }

    let name = next(&mut e);
    e.sample(name, &[], Value::Float(options.interval.as_secs_f64()));
    let name = next(&mut e);
    e.sample(name, &[], Value::Int(snapshot.seq));
    let name = next(&mut e);
    e.sample(name, &[], Value::Int(snapshot.missed_ticks));
    let name = next(&mut e);
    e.sample(name, &[], Value::Float(snapshot.at_ms as f64 / 1000.0));

    let name = next(&mut e);
    for d in &snapshot.devices {
        e.sample(name, &[("device", &d.device.name)], Value::Int(d.resets));
    }
    let name = next(&mut e);
    for d in &snapshot.devices {
        for (reason, n) in [("glitch", d.glitches), ("implausible", d.implausible)] {
            e.sample(name, &[("device", &d.device.name), ("reason", reason)], Value::Int(n));
        }
    }
    let name = next(&mut e);
    for socket in Socket::ALL {
        if let Some(n) = snapshot.capture_dropped[socket.index()] {
            e.sample(name, &[("socket", socket.label())], Value::Int(n));
        }
    }

    let name = next(&mut e);
    for a in snapshot.alerts.iter().filter(|a| a.state != State::Resolved) {
        let mut labels =
            vec![("alertname", a.name), ("severity", a.severity), ("alertstate", a.state.label())];
        if let Some(d) = &a.device {
            labels.push(("device", d));
        }
        if let (Some(n), Some(w)) = (&a.namespace, &a.workload) {
            labels.extend([("namespace", n.as_str()), ("workload", w.as_str())]);
        }
        e.sample(name, &labels, Value::Int(1));
    }
    let name = next(&mut e);
    if let Some((receivers, overflow)) = &options.notify {
        for r in receivers.iter() {
            for (outcome, n) in
                [("sent", &r.sent), ("failed", &r.failed), ("dropped", &r.dropped), ("retried", &r.retried)]
            {
                e.sample(
                    name,
                    &[("receiver", &r.name), ("outcome", outcome)],
                    Value::Int(n.load(Ordering::Relaxed)),
                );
            }
        }
        let n = overflow.load(Ordering::Relaxed);
        e.sample(name, &[("receiver", "*"), ("outcome", "dropped")], Value::Int(n));
    }
    let name = next(&mut e);
    if let Some((receivers, _)) = &options.notify {
        for r in receivers.iter() {
            e.sample(name, &[("receiver", &r.name)], Value::Int(r.queued.load(Ordering::Relaxed)));
        }
    }
    let stats = options.remote_write.as_deref().map_or(&[][..], Vec::as_slice);
    let name = next(&mut e);
    for s in stats {
        for (outcome, n) in s.outcomes() {
            e.sample(name, &[("endpoint", &s.name), ("outcome", outcome)], Value::Int(n));
        }
    }
    let name = next(&mut e);
    for s in stats {
        e.sample(name, &[("endpoint", &s.name)], Value::Int(s.pending.load(Ordering::Relaxed)));
    }
    let name = next(&mut e);
    for s in stats {
        let ms = s.last_success_ms.load(Ordering::Relaxed);
        e.sample(name, &[("endpoint", &s.name)], Value::Float(ms as f64 / 1000.0));
    }

    for c in &options.compat {
        match c {
            Compat::Showmax => showmax(&mut e, snapshot),
            Compat::NodeExporter => node_exporter(&mut e, snapshot),
        }
    }
}

/// The DNS families, in [`NATIVE_FAMILIES`] order.
fn dns<S: Sink>(e: &mut S, totals: Option<&Totals>, next: &mut impl FnMut(&mut S) -> &'static str) {
    let empty = Totals::default();
    let t = totals.unwrap_or(&empty);
    let name = next(e);
    for (device, n) in &t.unanswered {
        e.sample(name, &[("device", device)], Value::Int(*n));
    }
    // Query and latency series exist only for the upstreams a node's workloads use (most use
    // one), as a client library creates a labelled series on first use: rules read every
    // series, and at fleet scale the unused upstreams' zeros were most of their cost.
    let name = next(e);
    for ((namespace, workload), c) in &t.workloads {
        for u in Upstream::ALL.into_iter().filter(|u| c.queries[u.index()] > 0) {
            let labels = [("namespace", &**namespace), ("workload", &**workload), ("upstream", u.label())];
            e.sample(name, &labels, Value::Int(c.queries[u.index()]));
        }
    }
    let name = next(e);
    for ((namespace, workload), c) in &t.workloads {
        for u in Upstream::ALL {
            for r in Reason::ALL {
                for (throttled, n) in ["false", "true"].into_iter().zip(c.failures[u.index()][r.index()]) {
                    // Only what happened: a workload that never failed costs no series.
                    if n > 0 {
                        let labels = [
                            ("namespace", &**namespace),
                            ("workload", &**workload),
                            ("upstream", u.label()),
                            ("reason", r.label()),
                            ("throttled", throttled),
                        ];
                        e.sample(name, &labels, Value::Int(n));
                    }
                }
            }
        }
    }
    let name = next(e);
    for ((namespace, workload), c) in &t.workloads {
        e.sample(name, &[("namespace", namespace), ("workload", workload)], Value::Int(c.search_path));
    }
    let name = next(e);
    let (bucket, sum, count) = (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
    let mut bound = String::new();
    for u in Upstream::ALL.into_iter().filter(|u| t.latency[u.index()].count > 0) {
        let h = &t.latency[u.index()];
        for (le, n) in h.cumulative() {
            bound.clear();
            let _ = write!(bound, "{le}");
            e.sample(&bucket, &[("upstream", u.label()), ("le", &bound)], Value::Int(n));
        }
        e.sample(&bucket, &[("upstream", u.label()), ("le", "+Inf")], Value::Int(h.count));
        e.sample(&sum, &[("upstream", u.label())], Value::Float(h.sum));
        e.sample(&count, &[("upstream", u.label())], Value::Int(h.count));
    }
}

fn showmax(e: &mut impl Sink, snapshot: &Snapshot) {
    const NAME: &str = "node_net_ethtool";
    e.family(NAME, Kind::Gauge, "Raw ethtool driver statistics (compatibility: showmax ethtool exporter).");
    for d in &snapshot.devices {
        for (_, name, value) in compat_stats(d) {
            e.sample(NAME, &[("device", &d.device.name), ("type", name)], Value::Int(value));
        }
    }
}

/// The (position, name, value) of each stat of `d` the compatibility families export. The
/// sampler replaces a device's values and stat layout together, so every position is in
/// range; one that is not (a broken invariant) is skipped, because a scrape must never take
/// the agent down.
fn compat_stats(d: &DeviceState) -> impl Iterator<Item = (usize, &str, u64)> {
    d.compat.iter().filter_map(|&i| Some((i, d.schema.names.get(i)?.as_str(), *d.values.get(i)?)))
}

/// What node_exporter's families need of one stat layout: for each family (by number), the
/// position of its value, the first among the exported stats that takes the family's name.
struct Layout<'a> {
    schema: &'a Arc<Schema>,
    compat: &'a Arc<[usize]>,
    position: Vec<Option<usize>>,
}

fn node_exporter(e: &mut impl Sink, snapshot: &Snapshot) {
    // One family per metric name, across devices; a device whose stats sanitise to the same
    // name twice exports the first (node_exporter would fail the whole scrape instead).
    // Devices share a few layouts (the live source and the sampler share `Schema` and
    // compat positions between devices with the same stat names): names are looked up once
    // per layout, and each family is then written device by device, by number.
    let mut names: Vec<&str> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut layouts: Vec<Layout<'_>> = Vec::new();
    let mut layout_of = Vec::with_capacity(snapshot.devices.len());
    for d in &snapshot.devices {
        let known =
            layouts.iter().position(|l| Arc::ptr_eq(l.schema, &d.schema) && Arc::ptr_eq(l.compat, &d.compat));
        let layout = known.unwrap_or_else(|| {
            let metric_names = d.schema.node_exporter_names(compat::node_exporter_name);
            let mut position = Vec::new();
            for &i in d.compat.iter() {
                let Some(name) = metric_names.get(i) else { continue };
                let family = *by_name.entry(name.as_str()).or_insert_with(|| {
                    names.push(name);
                    names.len() - 1
                });
                if position.len() <= family {
                    position.resize(family + 1, None);
                }
                position[family].get_or_insert(i);
            }
            layouts.push(Layout { schema: &d.schema, compat: &d.compat, position });
            layouts.len() - 1
        });
        layout_of.push(layout);
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_unstable_by_key(|&family| names[family]);
    for family in order {
        let mut declared = false;
        for (d, &layout) in snapshot.devices.iter().zip(&layout_of) {
            let Some(&Some(i)) = layouts[layout].position.get(family) else { continue };
            // Positions past the values (a broken invariant) are skipped, as in compat_stats.
            let (Some(stat), Some(&value)) = (d.schema.names.get(i), d.values.get(i)) else { continue };
            if !declared {
                e.family(names[family], Kind::Untyped, &format!("Network interface {stat}"));
                declared = true;
            }
            e.sample(names[family], &[("device", &d.device.name)], Value::Int(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::history::{DeviceCounters, DeviceState};
    use crate::source::{Device, Schema};

    fn device(name: &str, schema: &Arc<Schema>, compat: &Arc<[usize]>, values: &[u64]) -> DeviceState {
        DeviceState {
            device: Arc::new(Device {
                name: name.into(),
                driver: "ena".into(),
                driver_version: String::new(),
                firmware_version: String::new(),
                bus_info: String::new(),
                eni: None,
            }),
            schema: Arc::clone(schema),
            values: Arc::from(values),
            compat: Arc::clone(compat),
            counters: DeviceCounters::default(),
            resets: 0,
            glitches: 0,
            implausible: 0,
            linklocal: None,
        }
    }

    #[test]
    fn node_exporter_families_span_devices_of_shared_and_different_layouts() {
        // Two devices share a layout in which two stats sanitise to one name (the first
        // wins); a third has another layout, in another order, with a stat of its own.
        let shared = Arc::new(Schema::new(["q0-drops", "q0_drops", "q1"].map(str::to_owned).to_vec()));
        let other = Arc::new(Schema::new(["q1", "q0-drops", "extra"].map(str::to_owned).to_vec()));
        let all: Arc<[usize]> = Arc::from(&[0, 1, 2][..]);
        let snapshot = Snapshot {
            seq: 1,
            devices: vec![
                device("a", &shared, &all, &[1, 2, 3]),
                device("b", &other, &Arc::from(&[0, 1, 2][..]), &[4, 5, 6]),
                device("c", &shared, &all, &[7, 8, 9]),
            ],
            ..Snapshot::empty()
        };
        let options = Options {
            compat: vec![Compat::NodeExporter],
            interval: Duration::from_secs(1),
            notify: None,
            remote_write: None,
        };
        let text = render(&snapshot, &options, Format::Text).into_text();
        let node: Vec<&str> = text.lines().skip_while(|l| !l.contains("node_ethtool_")).collect();
        assert_eq!(
            node,
            [
                "# HELP node_ethtool_extra Network interface extra",
                "# TYPE node_ethtool_extra untyped",
                "node_ethtool_extra{device=\"b\"} 6",
                "# HELP node_ethtool_q0_drops Network interface q0-drops",
                "# TYPE node_ethtool_q0_drops untyped",
                "node_ethtool_q0_drops{device=\"a\"} 1",
                "node_ethtool_q0_drops{device=\"b\"} 5",
                "node_ethtool_q0_drops{device=\"c\"} 7",
                "# HELP node_ethtool_q1 Network interface q1",
                "# TYPE node_ethtool_q1 untyped",
                "node_ethtool_q1{device=\"a\"} 3",
                "node_ethtool_q1{device=\"b\"} 4",
                "node_ethtool_q1{device=\"c\"} 9",
            ]
        );
    }

    #[test]
    fn compatibility_families_skip_positions_past_the_values_instead_of_panicking() {
        // A state that breaks the sampler's invariant: three stat names, one value, and
        // positions past both. The renderers export what is there and nothing else.
        let names = ["linklocal_allowance_exceeded", "x", "y"].map(str::to_owned).to_vec();
        let device = DeviceState {
            device: Arc::new(Device {
                name: "ens5".into(),
                driver: "ena".into(),
                driver_version: String::new(),
                firmware_version: String::new(),
                bus_info: String::new(),
                eni: None,
            }),
            schema: Arc::new(Schema::new(names)),
            values: Arc::from(&[5][..]),
            compat: Arc::from(&[0, 1, 2, 7][..]),
            counters: DeviceCounters::default(),
            resets: 0,
            glitches: 0,
            implausible: 0,
            linklocal: None,
        };
        let snapshot = Snapshot { seq: 1, devices: vec![device], ..Snapshot::empty() };
        let options = Options {
            compat: vec![Compat::Showmax, Compat::NodeExporter],
            interval: Duration::from_secs(1),
            notify: None,
            remote_write: None,
        };
        let text = render(&snapshot, &options, Format::Text).into_text();
        let compat: Vec<&str> =
            text.lines().filter(|l| l.starts_with("node_") && !l.starts_with('#')).collect();
        assert_eq!(
            compat,
            [
                "node_net_ethtool{device=\"ens5\",type=\"linklocal_allowance_exceeded\"} 5",
                "node_ethtool_linklocal_allowance_exceeded{device=\"ens5\"} 5",
            ]
        );
    }

    #[test]
    fn dns_query_and_latency_series_exist_only_for_upstreams_asked() {
        use crate::source::dns::families::{Counts, Histogram, Totals};
        // DNS analysis on, nothing asked yet: no query series and no histogram.
        let idle = Totals {
            workloads: vec![((Arc::from("shop"), Arc::from("web")), Counts::default())],
            ..Totals::default()
        };
        // The same workload after asking the cluster DNS alone, answered in 2 ms.
        let mut latency = Histogram::default();
        latency.buckets[10] = 3;
        latency.count = 3;
        latency.sum = 0.006;
        let asked = Totals {
            workloads: vec![(
                (Arc::from("shop"), Arc::from("web")),
                Counts { queries: [0, 0, 3, 0], ..Counts::default() },
            )],
            latency: [Histogram::default(), Histogram::default(), latency, Histogram::default()],
            unanswered: Vec::new(),
        };
        let options = Options {
            compat: Vec::new(),
            interval: Duration::from_secs(1),
            notify: None,
            remote_write: None,
        };
        let series = |totals: Totals, prefix: &str| {
            let snapshot = Snapshot { seq: 1, dns: Some(Arc::new(totals)), ..Snapshot::empty() };
            let text = render(&snapshot, &options, Format::Text).into_text();
            text.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect::<Vec<_>>()
        };
        assert!(series(idle.clone(), "enawatch_dns_queries_total").is_empty());
        assert!(series(idle, "enawatch_dns_response_seconds").is_empty());
        assert_eq!(
            series(asked.clone(), "enawatch_dns_queries_total"),
            ["enawatch_dns_queries_total{namespace=\"shop\",workload=\"web\",upstream=\"cluster_dns\"} 3"]
        );
        let histogram = series(asked, "enawatch_dns_response_seconds");
        // 57 buckets, +Inf, sum and count of the one upstream asked.
        assert_eq!(histogram.len(), crate::source::dns::families::LATENCY_BUCKETS + 3);
        assert!(histogram.iter().all(|l| l.contains("upstream=\"cluster_dns\"")), "{histogram:?}");
    }
}
