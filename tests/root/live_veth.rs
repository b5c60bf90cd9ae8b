//! The real binary reading real interfaces: veth pairs in network namespaces of the test's
//! own (root required). Values are compared with what `ethtool -S` reports.

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "metric values are f64 on the wire and the kernel's counters u64: comparing them exactly is the point"
)]

use std::time::Duration;

use crate::support::{parse_metrics, Agent, Netns, VethLab};

/// Compat series `node_net_ethtool{device="DEV",type=...}` of one device, as stat → value.
fn showmax_values(metrics: &str, dev: &str) -> std::collections::BTreeMap<String, u64> {
    let prefix = format!("node_net_ethtool{{device=\"{dev}\",type=\"");
    parse_metrics(metrics)
        .into_iter()
        .filter_map(|(series, v)| {
            let stat = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((stat.to_owned(), v as u64))
        })
        .collect()
}

#[test]
fn every_value_equals_what_the_kernel_reports() {
    let lab = VethLab::new("veth0", 4);
    let agent = Agent::start(
        &lab.node,
        &["--device-include", "^veth0$", "--compat", "showmax,node-exporter", "--compat-stats", ".*"],
    );
    lab.traffic(300);
    // Let a tick pass after the traffic, so the agent's latest sample is the final state.
    agent.wait_ticks(2);
    let metrics = agent.metrics();
    let kernel = lab.node.ethtool_stats("veth0");
    assert_eq!(showmax_values(&metrics, "veth0"), kernel, "agent vs ethtool -S");
    let received: u64 = kernel.iter().filter(|(k, _)| k.ends_with("_xdp_packets")).map(|(_, v)| v).sum();
    assert!(received >= 300, "the traffic moved the stats: {kernel:?}");

    // node_exporter names carry the same values.
    let series = parse_metrics(&metrics);
    for (stat, value) in &kernel {
        let name = enawatch::metrics::compat::node_exporter_name(stat);
        assert_eq!(series.get(&format!("{name}{{device=\"veth0\"}}")), Some(&(*value as f64)), "{name}");
    }
    // The peer's end is in another namespace, so it is not seen; loopback is not selected.
    assert!(!metrics.contains("device=\"p0\"") && !metrics.contains("device=\"lo\""));
    assert!(metrics.contains("ena_interface_info{device=\"veth0\",driver=\"veth\""), "{metrics}");
    for stat in enawatch::base::allowance::ALLOWANCE_STATS {
        assert_eq!(
            series.get(&format!("ena_stat_supported{{device=\"veth0\",stat=\"{stat}\"}}")),
            Some(&0.0)
        );
    }
}

#[test]
fn a_queue_count_change_shows_the_new_stat_set_without_a_bad_sample() {
    let lab = VethLab::new("veth0", 4);
    let agent = Agent::start(
        &lab.node,
        &["--device-include", "^veth0$", "--compat", "showmax", "--compat-stats", ".*"],
    );
    lab.traffic(100);
    agent.wait_ticks(2);
    assert!(showmax_values(&agent.metrics(), "veth0").contains_key("rx_queue_3_xdp_packets"));

    lab.node.exec(&["ethtool", "-L", "veth0", "rx", "2", "tx", "2"]);
    let metrics = agent.wait_for("the two-queue stat set", |m| {
        !m.contains("type=\"rx_queue_3_xdp_packets\"") && m.contains("type=\"rx_queue_1_xdp_packets\"")
    });
    lab.traffic(100);
    agent.wait_ticks(2);
    assert_eq!(showmax_values(&agent.metrics(), "veth0"), lab.node.ethtool_stats("veth0"));
    // The read that met the new count was dropped and counted, not misattributed.
    let errors = parse_metrics(&metrics);
    assert_eq!(
        errors.get("enawatch_read_errors_total{device=\"veth0\",reason=\"schema_changed\"}"),
        Some(&1.0),
        "{metrics}"
    );
    assert_eq!(agent.log().matches("driver stat set changed").count(), 1, "{}", agent.log());
}

#[test]
fn a_deleted_interface_leaves_metrics_with_one_log_line() {
    let lab = VethLab::new("veth0", 1);
    lab.node.ip("link add veth1 type veth peer name veth1p");
    lab.node.ip("link set veth1 up");
    lab.node.ip("link property add dev veth1 altname eni-0123456789abcdef0");
    let agent = Agent::start(&lab.node, &["--device-include", "^veth[01]$", "--interval", "200ms"]);
    let m = agent.metrics();
    assert!(m.contains("device=\"veth1\""));
    assert!(m.contains("eni=\"eni-0123456789abcdef0\""), "altname supplies the eni label: {m}");

    lab.node.ip("link del veth1");
    agent.wait_for("veth1 to leave", |m| !m.contains("ena_interface_info{device=\"veth1\""));
    // Several more ticks: still exactly one line about it, and veth0 unaffected.
    agent.wait_ticks(5);
    let m = agent.metrics();
    assert!(!m.contains("ena_stat_supported{device=\"veth1\""), "{m}");
    assert!(m.contains("ena_interface_info{device=\"veth0\""));
    let log = agent.log();
    assert_eq!(log.matches("veth1").count(), 2, "one line watching it, one when it vanished:\n{log}");
    assert_eq!(log.matches("device vanished").count(), 1, "{log}");
}

#[test]
fn a_new_interface_is_picked_up_at_the_next_rediscovery() {
    let ns = Netns::new("disc");
    let agent = Agent::start(&ns, &["--device-include", "^dyn", "--rediscover-interval", "1s"]);
    assert!(!agent.metrics().contains("dyn0"));
    ns.ip("link add dyn0 type veth peer name dyn0p");
    agent.wait_for("dyn0 to be watched", |m| m.contains("ena_interface_info{device=\"dyn0\""));
    assert!(agent.log().contains("new devices watched"), "{}", agent.log());
}

#[test]
fn default_selection_is_by_driver_and_says_what_it_found() {
    let lab = VethLab::new("eth0", 1);
    let agent = Agent::start(&lab.node, &[]);
    let log = agent.log();
    assert!(log.contains("no ENA device found"), "{log}");
    assert!(log.contains("eth0 (veth)"), "lists what it saw: {log}");
    assert!(log.contains("--device-include"), "says how to include others: {log}");
    assert!(!agent.metrics().contains("ena_interface_info{"), "a veth named eth0 is not an ENI");
}

#[test]
fn sigterm_stops_within_a_second() {
    let ns = Netns::new("term");
    let agent = Agent::start(&ns, &["--device-include", "^lo$"]);
    let (status, took, log) = agent.stop();
    assert!(status.success(), "{status}: {log}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(log.contains("stopping"), "{log}");
}
