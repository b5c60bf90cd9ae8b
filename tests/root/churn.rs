//! Devices that come and go under a live agent: veths and a bridge created, deleted and
//! re-created in a network namespace of the test's own.

use std::time::Duration;

use crate::support::{parse_metrics, wait_until, Agent, Netns};

/// A device the driver gives no statistics (a bridge) was read without any ioctl, so its
/// deletion went unnoticed: its `ena_interface_info` series stayed for as long as the agent
/// ran. Such a device is now checked each tick (one `ETHTOOL_GDRVINFO`) and leaves like any
/// other at the next tick.
#[test]
fn a_vanished_device_without_statistics_leaves_metrics() {
    let ns = Netns::new("nostats");
    ns.ip("link add br7 type bridge");
    let agent = Agent::start(&ns, &["--device-include", "^br7$"]);
    assert!(
        agent.metrics().contains("ena_interface_info{device=\"br7\",driver=\"bridge\""),
        "{}",
        agent.metrics()
    );
    ns.ip("link del br7");
    agent.wait_for("the bridge's series to leave", |m| !m.contains("device=\"br7\""));
}

/// The link-local packets counted on `dev` so far.
fn linklocal_packets(agent: &Agent, dev: &str) -> f64 {
    let series = format!("ena_linklocal_packets_total{{device=\"{dev}\",service=\"dns\"}}");
    parse_metrics(&agent.scrape()).get(&series).copied().unwrap_or(0.0)
}

/// `ip -batch` lines that make `dev` a veth (peer `{dev}p`) up, with a route to the Amazon
/// DNS resolver's link-local address through it and a permanent neighbour, so packets sent
/// there leave through `dev` without anything answering.
fn veth_to_resolver(dev: &str) -> String {
    format!(
        "link add {dev} type veth peer name {dev}p\n\
         link set {dev} up\n\
         link set {dev}p up\n\
         addr add 10.66.0.1/24 dev {dev}\n\
         route add 169.254.169.253/32 dev {dev}\n\
         neigh add 169.254.169.253 lladdr 02:00:00:00:00:01 dev {dev} nud permanent\n"
    )
}

/// `ip -n NS -batch -` with `commands` on its standard input: one process, so the whole
/// batch takes a few milliseconds.
fn batch(ns: &Netns, commands: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(commands.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed:\n{commands}");
}

/// The link-local meter bound its packet socket to the interface index it found at
/// discovery. A device deleted and re-created under the same name between two rediscoveries
/// was still read by name (its counters went on), but metered on the dead interface's
/// socket: every packet it sent to link-local services went uncounted until the next
/// rediscovery. The agent now notices that the socket's interface is gone and follows the
/// new interface at the next tick.
#[test]
fn a_device_recreated_under_its_name_between_rediscoveries_is_metered_on_the_new_interface() {
    let ns = Netns::new("recreate");
    batch(&ns, &veth_to_resolver("llr0"));
    // No rediscovery during the test: only the fix can follow the new interface.
    let agent = Agent::start(
        &ns,
        &["--device-include", "^llr0$", "--linklocal-meter", "--rediscover-interval", "1h"],
    );
    ns.send_udp("169.254.169.253:53", 40);
    agent.wait_for("the first packets metered", |_| linklocal_packets(&agent, "llr0") >= 40.0);
    let before = linklocal_packets(&agent, "llr0");

    // Right after a tick, so no read falls between the deletion and the re-creation (a read
    // then would see the device gone, and rightly drop it until the next rediscovery).
    agent.wait_ticks(1);
    batch(&ns, &format!("link del llr0\n{}", veth_to_resolver("llr0")));
    agent.wait_ticks(2);
    let m = agent.metrics();
    assert!(m.contains("ena_interface_info{device=\"llr0\""), "still watched by name:\n{m}\n{}", agent.log());
    ns.send_udp("169.254.169.253:53", 40);
    wait_until(
        "the packets sent through the re-created llr0 to be metered",
        Duration::from_secs(10),
        || (linklocal_packets(&agent, "llr0") >= before + 40.0).then_some(()),
        || {
            format!(
                " (metered {} before, {} now)\n{}",
                before,
                linklocal_packets(&agent, "llr0"),
                agent.log()
            )
        },
    );
    assert!(agent.log().contains("re-created"), "one line says so:\n{}", agent.log());
}
