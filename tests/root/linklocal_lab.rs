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
        limiter_drops(&self.vpc.name)
    }

    /// Runs dnsperf at `qps` for `seconds` against `server`; returns the queries it sent.
    fn dnsperf(&self, server: &str, qps: u32, seconds: u32) -> u64 {
        self.dnsperf_with(server, qps, seconds, &["-q", "5000", "-c", "1"]).0
    }

    /// dnsperf with other options (outstanding queries, clients, source address); returns
    /// the queries it sent and those it lost (no response within its 1 s timeout).
    fn dnsperf_with(&self, server: &str, qps: u32, seconds: u32, options: &[&str]) -> (u64, u64) {
        let queries = self.dir.join("queries.txt");
        std::fs::write(&queries, "example.com A\nexample.org A\nexample.net AAAA\n").unwrap();
        let (qps, seconds) = (qps.to_string(), seconds.to_string());
        let mut cmd = vec![
            "dnsperf",
            "-s",
            server,
            "-d",
            queries.to_str().unwrap(),
            "-Q",
            &qps,
            "-l",
            &seconds,
            "-t",
            "1",
        ];
        cmd.extend_from_slice(options);
        let out = self.node.exec(&cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |what: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(what))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("dnsperf output without {what}:\n{text}"))
        };
        (count("Queries sent:"), count("Queries lost:"))
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
/// The DNS report and the search-path queries counted in `/metrics`, after three lookups by
/// the node's stub resolver with these resolv.conf options.
fn amplification_with(options: &str) -> (serde_json::Value, f64) {
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
    (v["report"].clone(), sum_of(&agent, "enawatch_dns_search_path_queries_total", &[]))
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
    let (report, waste) = amplification_with("ndots:5");
    assert!(
        (waste - 18.0).abs() < 0.5,
        "the NXDOMAIN expansions are the search path's cost in /metrics: {waste}"
    );
    let client = node_client(&report);
    let a = &client["amplification"];
    // Three suffixes, A and AAAA each, NXDOMAIN, then the name: 8 queries where 2 would do.
    assert_eq!(a["lookups"], 3, "{report}");
    assert_eq!(a["factor"], 4.0, "{report}");
    assert_eq!(a["would_save"], 18, "{report}");
    assert_eq!(a["recommended_ndots"], 1, "{report}");
    assert!(client["nxdomain_ratio"].as_f64().unwrap() > 0.7, "{report}");

    let (report, waste) = amplification_with("ndots:1");
    assert!(waste.abs() < 0.5, "absolute names first: no search-path queries: {waste}");
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

/// The capability sets of every thread of `pid` but the bounding set, as /proc shows them.
fn capabilities(pid: u32) -> Vec<String> {
    let mut held = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let name = status.lines().next().unwrap_or_default().to_owned();
        for line in status.lines().filter(|l| l.starts_with("Cap") && !l.starts_with("CapBnd")) {
            let (set, value) = line.split_once(':').unwrap();
            if u64::from_str_radix(value.trim(), 16).unwrap() != 0 {
                held.push(format!("{name}: {set} {}", value.trim()));
            }
        }
    }
    held
}

/// The sum of every series of `family` whose labels contain all of `having`.
fn sum_of(agent: &Agent, family: &str, having: &[&str]) -> f64 {
    support::parse_metrics(&agent.metrics())
        .into_iter()
        .filter(|(series, _)| series.strip_prefix(family).is_some_and(|rest| rest.starts_with('{')))
        .filter(|(series, _)| having.iter().all(|h| series.contains(h)))
        .map(|(_, v)| v)
        .sum()
}

/// The report's row of one client address, once it is there.
fn client_row(agent: &Agent, client: &str) -> serde_json::Value {
    let body = agent.get("/api/v1/dns").unwrap().text();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["report"]["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["client"] == client).cloned())
        .unwrap_or_else(|| panic!("no row for {client}: {body}"))
}

/// Issue 12: the rings were drained once per tick, one lap at most, so the meter stopped at
/// exactly 4,096 packets a second per device (42 % at 10k) and the DNS analysis saw 10.8 % of
/// the queries at 10k (3.7 % at 30k); per-client rates read about 360 whatever the real rate.
/// Now a thread reads the rings as packets arrive: at 10,000 and 30,000 queries a second the
/// meter and `enawatch_dns_queries_total` count what dnsperf sent, within 1 %, the client's
/// rate is dnsperf's, the kernel drops nothing, and the process holds no capability.
#[test]
fn at_storm_rates_the_meter_and_the_dns_analysis_count_every_query() {
    let lab = Lab::new();
    // The resolver answers the storm (no limiter), and dnsperf waits 5 s for an answer, past
    // the agent's 4 s: dnsperf reuses a query's id as soon as its own timeout passes, so
    // with queries lost the same client port, id and name came back while the agent still
    // waited, and counted, rightly, as a retransmission (2 % of 30,000/s through the limiter
    // on a busy machine). Lost queries are the next test's.
    lab.vpc.exec(&["nft", "flush", "chain", "inet", "lab", "input"]);
    let agent = Agent::start(
        &lab.node,
        &["--device-include", "^vnode0$", "--linklocal-meter", "--dns-analysis", "--dns-timeout", "4s"],
    );
    let held = capabilities(agent.pid());
    assert!(held.is_empty(), "after start the agent holds capabilities: {held:?}");

    let meter = "ena_linklocal_packets_total{device=\"vnode0\",service=\"dns\"}";
    let queries = "enawatch_dns_queries_total";
    let vpc = "upstream=\"vpc_resolver\"";
    // Each rate from an address of its own, so each client's rate is its own run's.
    for (qps, client) in [(10_000, "10.0.0.21"), (30_000, "10.0.0.22")] {
        lab.node.ip(&format!("addr add {client}/32 dev vnode0"));
        let (meter_before, dns_before) = (agent.metric(meter), sum_of(&agent, queries, &[vpc]));
        let rate = std::thread::scope(|s| {
            let run = s.spawn(|| {
                // Room for a second of queries outstanding, over several sockets (16-bit ids
                // each), should the resolver fall behind.
                lab.dnsperf_with(
                    "169.254.169.253",
                    qps,
                    10,
                    &["-q", "60000", "-c", "4", "-a", client, "-t", "5"],
                )
                .0
            });
            std::thread::sleep(Duration::from_secs(7));
            let rate = client_row(&agent, client)["qps_1m"].as_f64().unwrap();
            (run.join().unwrap(), rate)
        });
        let (sent, rate) = (rate.0 as f64, rate.1);
        std::thread::sleep(Duration::from_millis(2500));
        let metered = agent.metric(meter) - meter_before;
        let counted = sum_of(&agent, queries, &[vpc]) - dns_before;
        let report = agent.get("/api/v1/dns").unwrap().text();
        let drops: Vec<String> = agent
            .metrics()
            .lines()
            .filter(|l| l.starts_with("enawatch_capture_dropped"))
            .map(str::to_owned)
            .collect();
        eprintln!("{qps} qps: dnsperf sent {sent}, the meter counted {metered}, the DNS analysis {counted}, rate {rate:.0}/s; {drops:?}; {}", &report[..report.len().min(600)]);
        assert!(sent > f64::from(qps) * 10.0 * 0.8, "dnsperf fell short of {qps}/s: {sent} sent");
        assert!(
            (metered - sent).abs() <= sent * 0.01,
            "{qps} qps: the meter counted {metered}, dnsperf sent {sent}"
        );
        assert!(
            (counted - sent).abs() <= sent * 0.01,
            "{qps} qps: {counted} queries counted, dnsperf sent {sent}"
        );
        let sent_rate = sent / 10.0;
        assert!(
            (rate - sent_rate).abs() <= sent_rate * 0.05,
            "{qps} qps: the client's rate read {rate}, dnsperf sent {sent_rate}/s"
        );
    }
    let m = agent.metrics();
    for socket in ["dns", "meter"] {
        let line = format!("enawatch_capture_dropped_packets_total{{socket=\"{socket}\"}} 0");
        assert!(m.contains(&line), "no kernel drop on the {socket} socket: {m}");
    }
}

/// A thread of the test's own that runs until the value is dropped.
struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Runs `step` over and over until dropped.
    fn spawn(mut step: impl FnMut() + Send + 'static) -> Self {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quit = std::sync::Arc::clone(&flag);
        let thread = std::thread::spawn(move || {
            while !quit.load(std::sync::atomic::Ordering::Relaxed) {
                step();
            }
        });
        Self { stop: flag, thread: Some(thread) }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Packets the limiter of the lab whose "vpc" namespace is `vpc` has dropped so far.
fn limiter_drops(vpc: &str) -> u64 {
    let out = support::run(&["ip", "netns", "exec", vpc, "nft", "list", "table", "inet", "lab"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let counter = text.split("counter packets ").nth(1).expect("the rule has a counter");
    counter.split_whitespace().next().and_then(|n| n.parse().ok()).expect("a packet count")
}

/// Writes the limiter's drop counter as `vnode0`'s `linklocal_allowance_exceeded` into a
/// capture file the agent reads (`--extra-stats`), every 100 ms: the lab's ENA counter.
fn feeder(lab: &Lab, path: &std::path::Path) -> Background {
    let (vpc, path) = (lab.vpc.name.clone(), path.to_owned());
    let write = move || {
        let drops = limiter_drops(&vpc);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("=== vnode0\n     linklocal_allowance_exceeded: {drops}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write();
    Background::spawn(move || {
        write();
        std::thread::sleep(Duration::from_millis(100));
    })
}

/// The failures the agent counts, by whether they were throttled: (false, true).
fn timeouts(agent: &Agent) -> (f64, f64) {
    let of = |t: &str| {
        sum_of(agent, "enawatch_dns_failures_total", &["reason=\"timeout\"", &format!("throttled=\"{t}\"")])
    };
    (of("false"), of("true"))
}

/// Through the limiter at 1,500 queries/s, every query it drops is a lookup that timed out
/// during throttling: the agent's throttled timeouts equal the limiter's drop counter and
/// dnsperf's lost queries within 2 %; at 600 queries/s nothing fails and nothing is throttled.
#[test]
fn lookups_lost_to_the_limiter_are_throttled_timeouts_on_that_eni() {
    let lab = Lab::new();
    let extra = lab.dir.join("limiter.capture");
    let _feeder = feeder(&lab, &extra);
    let agent = Agent::start(
        &lab.node,
        &["--device-include", "^vnode0$", "--dns-analysis", "--extra-stats", extra.to_str().unwrap()],
    );
    let drops = lab.limiter_drops();
    let (sent, lost) = lab.dnsperf_with("169.254.169.253", 600, 8, &["-q", "5000", "-c", "1"]);
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!((lost, lab.limiter_drops() - drops), (0, 0), "600 qps is under the limiter's 1024/s");
    assert_eq!(timeouts(&agent), (0.0, 0.0), "no failures at 600 qps");
    let vpc = "upstream=\"vpc_resolver\"";
    assert!((sum_of(&agent, "enawatch_dns_queries_total", &[vpc]) - sent as f64).abs() <= sent as f64 * 0.01);

    let drops = lab.limiter_drops();
    let (_, lost) = lab.dnsperf_with("169.254.169.253", 1500, 10, &["-q", "20000", "-c", "1"]);
    // The agent declares a query unanswered 5 s after it was sent, and judges it at the tick after.
    std::thread::sleep(Duration::from_secs(7));
    let dropped = (lab.limiter_drops() - drops) as f64;
    let (unthrottled, throttled) = timeouts(&agent);
    let unanswered = agent.metric("ena_linklocal_dns_unanswered_total{device=\"vnode0\"}");
    eprintln!("limiter dropped {dropped}, dnsperf lost {lost}, throttled timeouts {throttled} (+{unthrottled} not throttled), unanswered on vnode0 {unanswered}");
    assert!(dropped > 2000.0, "1500 qps for 10 s is over the limiter: {dropped} dropped");
    assert!(
        (throttled - dropped).abs() <= dropped * 0.02,
        "throttled timeouts {throttled} vs {dropped} dropped"
    );
    assert!(
        (throttled - lost as f64).abs() <= lost as f64 * 0.02,
        "throttled timeouts {throttled} vs dnsperf's {lost} lost"
    );
    assert!(unthrottled <= dropped * 0.02, "{unthrottled} timeouts not marked throttled");
    assert!(
        (unanswered - dropped).abs() <= dropped * 0.02,
        "unanswered on the ENI {unanswered} vs {dropped} dropped"
    );
}

/// A resolver of the test's own that answers every query after a fixed delay (the query
/// echoed back as a response, no answers).
fn responder(ns: &Netns, addr: &str, delay: Duration) -> Background {
    let socket = ns.run_in(|| std::net::UdpSocket::bind(addr).expect("bind the responder"));
    let mut due: std::collections::VecDeque<(Instant, std::net::SocketAddr, Vec<u8>)> =
        std::collections::VecDeque::new();
    let mut buf = [0u8; 1500];
    Background::spawn(move || {
        let wait = due.front().map_or(Duration::from_millis(50), |(at, _, _)| {
            at.saturating_duration_since(Instant::now()).max(Duration::from_micros(100))
        });
        socket.set_read_timeout(Some(wait)).unwrap();
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            if n >= 12 {
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80; // QR: a response
                due.push_back((Instant::now() + delay, from, reply));
            }
        }
        while due.front().is_some_and(|(at, _, _)| *at <= Instant::now()) {
            let (_, to, reply) = due.pop_front().unwrap();
            let _ = socket.send_to(&reply, to);
        }
    })
}

/// The median of a Prometheus histogram, interpolated within its bucket as
/// `histogram_quantile` does.
fn median(buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().unwrap().1;
    let rank = total / 2.0;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            return lower + (le - lower) * (rank - below) / (count - below);
        }
        (lower, below) = (le, count);
    }
    f64::NAN
}

/// A resolver that answers after 50 ms gives a latency histogram whose median is 50 ms,
/// within 10 %.
#[test]
fn the_latency_histogram_shows_a_resolvers_delay() {
    let lab = Lab::new();
    lab.vpc.ip("addr add 10.0.0.3/32 dev p0");
    let _responder = responder(&lab.vpc, "10.0.0.3:53", Duration::from_millis(50));
    let agent = Agent::start(
        &lab.node,
        &["--device-include", "^vnode0$", "--dns-analysis", "--cluster-dns", "10.0.0.3"],
    );
    let (sent, lost) = lab.dnsperf_with("10.0.0.3", 200, 5, &["-q", "500", "-c", "1"]);
    assert_eq!(lost, 0, "the responder answers every query ({sent} sent)");
    agent.wait_ticks(2);
    let metrics = support::parse_metrics(&agent.metrics());
    let mut buckets: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|(series, v)| {
            let rest = series.strip_prefix("enawatch_dns_response_seconds_bucket{")?;
            if !rest.contains("upstream=\"cluster_dns\"") {
                return None;
            }
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let observed = buckets.last().unwrap().1;
    assert!((observed - sent as f64).abs() < 0.5, "every answer observed once: {observed} of {sent}");
    let m = median(&buckets);
    eprintln!("median {m:.4} s over {sent} answers");
    assert!((m - 0.050).abs() <= 0.005, "the median latency is {m} s, the responder waits 50 ms");
}

/// A stand-in for the Kubernetes API in the node's namespace: the pods list (the real API's
/// JSON) to a list request, an idle watch to a watch. Returns its base URL.
fn pods_api(ns: &Netns, pods: &[(&str, &str, &str, &str, &str)]) -> String {
    use std::io::Write as _;
    let items: Vec<serde_json::Value> = pods
        .iter()
        .map(|(namespace, name, owner_kind, owner, ip)| {
            serde_json::json!({
                "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner, "uid": "o", "controller": true}]},
                "spec": {"nodeName": "lab-node", "containers": [{"name": "c", "image": "x"}]},
                "status": {"phase": "Running", "hostIP": "10.0.0.10", "podIP": ip, "podIPs": [{"ip": ip}]}
            })
        })
        .collect();
    let list = serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
        .to_string();
    let listener = ns.run_in(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let list = list.clone();
            std::thread::spawn(move || {
                let (line, mut reader) = support::read_request(stream);
                let out = reader.get_mut();
                if line.contains("watch=1") {
                    let _ = write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                    );
                    let _ = out.flush();
                    std::thread::sleep(Duration::from_secs(120));
                } else {
                    let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{list}", list.len());
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A namespace playing a pod: a veth to the node, `addr` on its side, routes to the node's
/// resolvers through it.
fn pod(lab: &Lab, tag: &str, addr: &str, node_side: &str) -> Netns {
    let ns = Netns::new(tag);
    let host = format!("veth{tag}");
    lab.node.ip(&format!("link add {host} type veth peer name eth0 netns {}", ns.name));
    lab.node.ip(&format!("addr add {node_side}/32 dev {host}"));
    lab.node.ip(&format!("link set {host} up"));
    lab.node.ip(&format!("route add {addr}/32 dev {host}"));
    ns.ip(&format!("addr add {addr}/32 dev eth0"));
    ns.ip("link set eth0 up");
    ns.ip(&format!("route add {node_side}/32 dev eth0"));
    ns.ip(&format!("route add default via {node_side} dev eth0"));
    ns
}

/// dnsmasq playing NodeLocal DNSCache on the node, on 169.254.20.10 (a dummy interface's address
/// in a cluster; the lab's kernel may lack the dummy driver, and lo serves the same),
/// forwarding every question to the VPC resolver.
fn nodelocal_forwarder(lab: &Lab) -> Killed {
    lab.node.ip("addr add 169.254.20.10/32 dev lo");
    Killed(
        Command::new("ip")
            .args(["netns", "exec", &lab.node.name, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts"])
            .args(["--bind-interfaces", "--listen-address=169.254.20.10", "--server=169.254.169.253"])
            .args(["--cache-size=0", "--dns-forward-max=20000", "--log-facility=/dev/null", "--pid-file="])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    )
}

/// A forwarder on the node (dnsmasq playing NodeLocal DNSCache on 169.254.20.10) in front of
/// the limited link; two pods, a busy one and a quiet one, resolve through it. Each pod's
/// lost lookups are counted under its own workload, as timeouts during throttling.
#[test]
fn the_pods_failures_behind_a_node_forwarder_are_their_workloads_and_throttling() {
    let lab = Lab::new();
    let forwarder = nodelocal_forwarder(&lab);
    let web = pod(&lab, "pweb", "10.1.0.2", "10.1.0.1");
    let batch = pod(&lab, "pbat", "10.1.1.2", "10.1.1.1");
    for p in [&web, &batch] {
        let route =
            String::from_utf8_lossy(&p.exec(&["ip", "route", "get", "169.254.20.10"]).stdout).into_owned();
        assert!(route.contains("dev eth0"), "the pod's resolver must route into the lab: {route}");
    }
    let api = pods_api(
        &lab.node,
        &[
            ("shop", "web-7d4b9c8f6-x2kqp", "ReplicaSet", "web-7d4b9c8f6", "10.1.0.2"),
            ("jobs", "batch-k2x9q", "Job", "batch", "10.1.1.2"),
        ],
    );
    let extra = lab.dir.join("limiter.capture");
    let _feeder = feeder(&lab, &extra);
    let agent =
        Agent::launch(&["serve", "--device-include", "^vnode0$", "--dns-analysis", "--pod-attribution"])
            .args(&["--extra-stats", extra.to_str().unwrap()])
            .env("NODE_NAME", "lab-node")
            .env("ENAWATCH_KUBE_API", &api)
            .netns(&lab.node)
            .start();
    wait_until(
        "the pods listed",
        Duration::from_secs(10),
        || agent.get("/api/v1/pods").unwrap().text().contains("10.1.1.2").then_some(()),
        || agent.log(),
    );
    std::thread::sleep(Duration::from_millis(500));

    let queries = lab.dir.join("pod-queries.txt");
    // Distinct names: a forwarder merges identical questions in flight into one upstream query.
    let names: Vec<String> = (0..40_000).map(|i| format!("n{i}.example.com A")).collect();
    std::fs::write(&queries, names.join("\n") + "\n").unwrap();
    let dnsperf = |p: &Netns, qps: u32| {
        let out = p.exec(&[
            "dnsperf",
            "-s",
            "169.254.20.10",
            "-d",
            queries.to_str().unwrap(),
            "-Q",
            &qps.to_string(),
            "-l",
            "10",
            "-q",
            "20000",
            "-t",
            "2",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lost: u64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Queries lost:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("dnsperf: {text}"));
        lost
    };
    let drops = lab.limiter_drops();
    let (web_lost, batch_lost) = std::thread::scope(|s| {
        let w = s.spawn(|| dnsperf(&web, 1500));
        let b = s.spawn(|| dnsperf(&batch, 100));
        (w.join().unwrap(), b.join().unwrap())
    });
    std::thread::sleep(Duration::from_secs(7));
    let dropped = lab.limiter_drops() - drops;
    drop(forwarder);
    let failed = |namespace: &str, workload: &str, throttled: &str| {
        sum_of(
            &agent,
            "enawatch_dns_failures_total",
            &[
                &format!("namespace=\"{namespace}\""),
                &format!("workload=\"{workload}\""),
                "upstream=\"nodelocal\"",
                "reason=\"timeout\"",
                &format!("throttled=\"{throttled}\""),
            ],
        )
    };
    let (web_t, web_u) = (failed("shop", "web", "true"), failed("shop", "web", "false"));
    let (batch_t, batch_u) = (failed("jobs", "batch", "true"), failed("jobs", "batch", "false"));
    eprintln!("limiter dropped {dropped}; web lost {web_lost}, counted {web_t} throttled + {web_u}; batch lost {batch_lost}, counted {batch_t} + {batch_u}");
    assert!(dropped > 1000, "the forwarder's upstream was throttled: {dropped} dropped");
    assert!(web_lost > 1000 && batch_lost > 0, "both pods lost lookups: {web_lost}, {batch_lost}");
    assert!(
        (web_t - web_lost as f64).abs() <= web_lost as f64 * 0.05,
        "web: {web_t} throttled timeouts, dnsperf lost {web_lost}"
    );
    assert!(
        (batch_t - batch_lost as f64).abs() <= (batch_lost as f64 * 0.05).max(3.0),
        "batch: {batch_t} vs {batch_lost} lost"
    );
    assert!(
        web_u + batch_u <= (web_lost + batch_lost) as f64 * 0.02,
        "failures not marked throttled: {web_u} + {batch_u}"
    );
    let report = agent.get("/api/v1/dns").unwrap().text();
    assert!(report.contains("\"workload\":\"web\""), "who is hurt names the workload: {report}");
}
