//! The link-local meter and the DNS analysis in a lab of the test's own (root): a "node" namespace whose veth leads
//! to a "vpc" namespace running a real DNS server (Debian's dnsmasq) on 169.254.169.253 and on
//! a VPC+2 address, an nftables rule on that link emulating the ENA limiter
//! (`limit rate over 1024/second drop`, with a counter), and Debian's dnsperf sending a known
//! query rate from the node. The routes to the link-local address are checked (`ip route get`)
//! before a single packet is sent.

#![expect(clippy::cast_precision_loss, reason = "packet counts become rates in f64, far below 2^52")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, wait_until, Agent, Netns, TempDir};

struct Lab {
    /// /etc/netns/NODE, where `ip netns exec` finds the node's resolv.conf.
    etc: Option<std::path::PathBuf>,
    node: Netns,
    vpc: Netns,
    _dns: Killed,
    dir: TempDir,
}

struct Killed(Child);

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(etc) = &self.etc {
            let _ = std::fs::remove_dir_all(etc);
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lab {
    fn new() -> Self {
        let node = Netns::new("llnode");
        let vpc = Netns::new("llvpc");
        node.ip(&format!("link add vnode0 type veth peer name p0 netns {}", vpc.name));
        node.ip("addr add 10.0.0.10/24 dev vnode0");
        vpc.ip("addr add 10.0.0.2/24 dev p0");
        vpc.ip("addr add 169.254.169.253/32 dev p0");
        node.ip("link set vnode0 up");
        vpc.ip("link set p0 up");
        node.ip("route add 169.254.169.253/32 dev vnode0");
        // The routes must lead into the lab, or nothing is sent.
        for dst in ["169.254.169.253", "10.0.0.2"] {
            let route = String::from_utf8_lossy(&node.exec(&["ip", "route", "get", dst]).stdout).into_owned();
            assert!(route.contains("dev vnode0"), "{dst} must route into the lab, got: {route}");
        }
        // The ENA limiter, emulated: over 1024 packets a second to the resolvers are dropped
        // (a second's worth of burst, as the allowance is per second, not per packet gap).
        vpc.exec(&["nft", "add", "table", "inet", "lab"]);
        vpc.exec(&[
            "nft", "add", "chain", "inet", "lab", "input", "{", "type", "filter", "hook", "input",
            "priority", "0", ";", "}",
        ]);
        vpc.exec(&[
            "nft",
            "add",
            "rule",
            "inet",
            "lab",
            "input",
            "ip",
            "daddr",
            "{",
            "169.254.169.253,",
            "10.0.0.2",
            "}",
            "limit",
            "rate",
            "over",
            "1024/second",
            "burst",
            "1024",
            "packets",
            "counter",
            "drop",
        ]);
        let dir = TempDir::new("lllab");
        let dns = Command::new("ip")
            .args([
                "netns",
                "exec",
                &vpc.name,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args(["--listen-address=169.254.169.253", "--listen-address=10.0.0.2", "--address=/#/10.9.9.9"])
            // Cluster names do not exist outside the cluster: NXDOMAIN, as the VPC resolver says.
            .arg("--address=/cluster.local/")
            .args(["--cache-size=0", "--log-facility=/dev/null", "--pid-file="])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base) must be installed; scripts/test installs it");
        std::thread::sleep(Duration::from_millis(500));
        Self { etc: None, node, vpc, _dns: Killed(dns), dir }
    }

    /// Gives the node a resolv.conf (what its processes' stub resolvers read).
    fn resolv_conf(&mut self, text: &str) {
        let etc = std::path::PathBuf::from("/etc/netns").join(&self.node.name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), text).unwrap();
        self.etc = Some(etc);
    }

    /// Packets the limiter has dropped so far.
    fn limiter_drops(&self) -> u64 {
        let out = self.vpc.exec(&["nft", "list", "table", "inet", "lab"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let counter = text.split("counter packets ").nth(1).expect("the rule has a counter");
        counter.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a packet count")
    }

    /// Runs dnsperf at `qps` for `seconds` against `server`; returns the queries it sent.
    fn dnsperf(&self, server: &str, qps: u32, seconds: u32) -> u64 {
        let queries = self.dir.join("queries.txt");
        std::fs::write(&queries, "example.com A\nexample.org A\nexample.net AAAA\n").unwrap();
        let out = self.node.exec(&[
            "dnsperf",
            "-s",
            server,
            "-d",
            queries.to_str().unwrap(),
            "-Q",
            &qps.to_string(),
            "-l",
            &seconds.to_string(),
            "-q",
            "5000",
            "-t",
            "1",
            "-c",
            "1",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Queries sent:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("dnsperf output without a count:\n{text}"))
    }
}

/// The agent's per-second link-local rates of `vnode0` for samples after `since_ms`.
fn rates(agent: &Agent, since_ms: i64) -> Vec<u32> {
    let body = agent.get("/api/v1/history?device=vnode0").unwrap().text();
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = h["t"].as_array().unwrap();
    let ll = h["linklocal_pps"].as_array().unwrap();
    t.iter()
        .zip(ll)
        .filter(|(t, _)| t.as_i64().unwrap() > since_ms)
        .filter_map(|(_, v)| v.as_u64().map(|v| u32::try_from(v).unwrap()))
        .collect()
}

fn now_ms() -> i64 {
    enawatch::base::wall_ms()
}

fn budget_alert(agent: &Agent) -> Option<String> {
    let body = agent.get("/api/v1/alerts").unwrap().text();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "LinkLocalBudgetNearlyExhausted" && a["state"] != "resolved")
        .map(|a| a["state"].as_str().unwrap().to_owned())
}

#[test]
fn the_meter_sees_the_rate_and_warns_before_the_limiter_drops() {
    let lab = Lab::new();
    let config = lab.dir.join("enawatch.yaml");
    // The shipped warning over a shorter window and hold, so it fits in the test.
    std::fs::write(
        &config,
        "alerts:\n  rules:\n    - alert: LinkLocalBudgetNearlyExhausted\n      window: 20s\n      for: 5s\n",
    )
    .unwrap();
    let agent = Agent::start(
        &lab.node,
        &[
            "--device-include",
            "^vnode0$",
            "--linklocal-meter",
            "--vpc-resolvers",
            "10.0.0.2",
            "--config",
            config.to_str().unwrap(),
        ],
    );

    for (qps, server, warns) in
        [(200, "169.254.169.253", false), (900, "10.0.0.2", true), (1500, "169.254.169.253", true)]
    {
        let start = now_ms();
        let drops_before = lab.limiter_drops();
        let sent = lab.dnsperf(server, qps, 12);
        std::thread::sleep(Duration::from_millis(1500));
        // Whole seconds in the middle of the run: dnsperf's own rate, within 2 %.
        let seconds = rates(&agent, start);
        let steady: Vec<u32> = seconds.iter().copied().filter(|&r| r > 0).skip(2).take(8).collect();
        assert!(steady.len() >= 6, "{qps} qps: {seconds:?}");
        let sent_rate = sent as f64 / 12.0;
        for r in &steady {
            let err = (f64::from(*r) - sent_rate).abs() / sent_rate;
            assert!(
                err <= 0.02,
                "{qps} qps: the meter saw {r}/s, dnsperf sent {sent_rate:.0}/s ({steady:?})"
            );
        }
        let dropped = lab.limiter_drops() - drops_before;
        if qps <= 1024 {
            assert_eq!(dropped, 0, "{qps} qps is under the limiter's 1024/s");
        } else {
            assert!(dropped > 0, "{qps} qps is over the limiter's 1024/s");
        }
        let deadline = Instant::now() + Duration::from_secs(if warns { 15 } else { 2 });
        let state = loop {
            let state = budget_alert(&agent);
            if state.as_deref() == Some("firing") || Instant::now() > deadline {
                break state;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if warns {
            assert_eq!(state.as_deref(), Some("firing"), "{qps} qps: the budget warning fires");
        } else {
            assert_eq!(state, None, "{qps} qps: no budget warning");
        }
    }
    // The totals by service: every query was DNS.
    let m = agent.metrics();
    assert!(m.contains("ena_linklocal_packets_total{device=\"vnode0\",service=\"dns\"}"), "{m}");
    assert!(m.contains("ena_linklocal_packets_total{device=\"vnode0\",service=\"imds\"} 0"), "{m}");
}

#[test]
fn without_cap_net_raw_the_meter_is_off_and_the_rest_keeps_working() {
    let lab = Lab::new();
    // Drop CAP_NET_RAW from the agent's bounding set (setpriv, util-linux).
    let mut agent = Agent::launch(&["serve", "--device-include", "^vnode0$", "--linklocal-meter"])
        .netns(&lab.node)
        .wrapper(&["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--"])
        .spawn();
    let metrics = wait_until(
        "the agent to serve",
        Duration::from_secs(15),
        || {
            agent
                .get("/metrics")
                .ok()
                .map(|r| r.text())
                .filter(|m| m.contains("ena_interface_info{device=\"vnode0\""))
        },
        String::new,
    );
    agent.kill();
    let log = agent.log();
    assert!(log.contains("the link-local meter needs CAP_NET_RAW"), "{log}");
    assert_eq!(log.matches("CAP_NET_RAW").count(), 1, "said once: {log}");
    assert!(!metrics.contains("ena_linklocal_packets_total{"), "no meter series without the meter");
}

/// Resolves external names from the node with glibc's stub resolver (A and AAAA, as
/// `getaddrinfo` does) under `options`, and returns the agent's DNS report for the node.
fn amplification_with(options: &str) -> serde_json::Value {
    let mut lab = Lab::new();
    lab.resolv_conf(&format!(
        "nameserver 169.254.169.253\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions {options}\n"
    ));
    let agent = Agent::start(&lab.node, &["--device-include", "^vnode0$", "--dns-analysis"]);
    for name in ["example.com", "api.example.org", "www.example.net"] {
        let out = lab.node.exec(&["getent", "ahosts", name]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("10.9.9.9"), "{name} resolves in the lab");
    }
    agent.wait_ticks(2);
    let body = agent.get("/api/v1/dns").unwrap().text();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["enabled"], true, "{body}");
    v["report"].clone()
}

/// The report's row for the node's own stub resolver.
fn node_client(report: &serde_json::Value) -> &serde_json::Value {
    report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "10.0.0.10")
        .expect("the node's client")
}

#[test]
fn search_path_amplification_is_reported_with_ndots_5_and_not_with_ndots_1() {
    let report = amplification_with("ndots:5");
    let client = node_client(&report);
    let a = &client["amplification"];
    // Three suffixes, A and AAAA each, NXDOMAIN, then the name: 8 queries where 2 would do.
    assert_eq!(a["lookups"], 3, "{report}");
    assert_eq!(a["factor"], 4.0, "{report}");
    assert_eq!(a["would_save"], 18, "{report}");
    assert_eq!(a["recommended_ndots"], 1, "{report}");
    assert!(client["nxdomain_ratio"].as_f64().unwrap() > 0.7, "{report}");

    let report = amplification_with("ndots:1");
    let client = node_client(&report);
    assert!(client["amplification"].is_null(), "absolute names first: no amplification: {report}");
    assert_eq!(client["queries"], 6, "A and AAAA for each of three names: {report}");
}

#[test]
fn diagnose_names_the_throttled_eni_and_the_amplifying_client() {
    let mut lab = Lab::new();
    lab.resolv_conf(
        "nameserver 169.254.169.253\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
    );
    let bin = support::bin();
    let node = lab.node.name.clone();
    let diagnose = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
                bin,
                "diagnose",
                "--device-include",
                "^vnode0$",
                "--duration",
                "8s",
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    for name in ["example.com", "api.example.org"] {
        lab.node.exec(&["getent", "ahosts", name]);
    }
    lab.dnsperf("169.254.169.253", 1500, 5);
    let out = diagnose.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "throttling found exits 3:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("vnode0: sends up to") && text.contains("over the 1024/s budget"), "{text}");
    assert!(text.contains("10.0.0.10 sends 4x the DNS queries"), "{text}");
    assert!(text.contains("ndots 5") && text.contains("Set ndots:1"), "{text}");
    assert!(
        text.contains("search default.svc.cluster.local svc.cluster.local cluster.local; ndots 5"),
        "{text}"
    );
}
