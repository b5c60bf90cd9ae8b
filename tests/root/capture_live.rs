//! Captures taken from real interfaces: the README's shell loop and `enawatch record`, run in
//! a veth lab (root), then analyzed and replayed by the real binary.

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::float_cmp,
    reason = "metric values are f64 on the wire and the kernel's counters u64: comparing them exactly is the point"
)]

use std::collections::BTreeMap;
use std::process::Command;

use crate::support::{bin, parse_metrics, Agent, Netns, TempDir, VethLab};

/// The shell loop exactly as the README shows it.
fn readme_loop() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme.find("<!-- capture-loop").expect("README marks the loop")..];
    let block = &after[after.find("```sh\n").expect("code block") + 6..];
    block.lines().next().unwrap().to_owned()
}

/// The last sample's stats of `device` in a capture file.
fn last_values(path: &std::path::Path, device: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap();
    let capture = enawatch::source::capture::parse(&text, "capture", "eth0", 0).unwrap();
    let sample = capture
        .samples
        .iter()
        .rev()
        .find(|s| s.devices.iter().any(|d| d.name == device && !d.stats.is_empty()));
    sample.unwrap().devices.iter().find(|d| d.name == device).unwrap().stats.iter().cloned().collect()
}

fn showmax(metrics: &str, device: &str) -> BTreeMap<String, u64> {
    let prefix = format!("node_net_ethtool{{device=\"{device}\",type=\"");
    parse_metrics(metrics)
        .into_iter()
        .filter_map(|(s, v)| Some((s.strip_prefix(&prefix)?.strip_suffix("\"}")?.to_owned(), v as u64)))
        .collect()
}

fn analyze(path: &std::path::Path) -> String {
    let out = Command::new(bin()).arg("analyze").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_shell_loop_makes_a_capture_that_replays() {
    let lab = VethLab::new("veth0", 2);
    let dir = TempDir::new("loop");
    let line = readme_loop().replace("ens5 ens6", "veth0");
    assert!(line.contains("ethtool -S") && line.contains("date +@%s.%N"), "{line}");
    let script = format!("cd {} && timeout 3.5 sh -c '{line}'; true", dir.0.display());
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..6 {
                lab.traffic(50);
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
        lab.node.exec(&["sh", "-c", &script]);
    });
    let capture = dir.join("capture.txt");
    let report = analyze(&capture);
    assert!(report.contains("veth0"), "{report}");
    let samples: usize =
        report.split(": ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap();
    assert!(samples >= 2, "{report}");

    // Replayed, /metrics serves the last recorded values of every stat.
    let ns = Netns::new("replay");
    let path = capture.to_str().unwrap();
    let agent = Agent::start(
        &ns,
        &["--replay", path, "--speed", "50", "--compat", "showmax", "--compat-stats", ".*"],
    );
    agent.wait_for("the end of the replay", |_| {
        agent.get("/healthz").unwrap().text().contains("replay finished")
    });
    let served = showmax(&agent.metrics(), "veth0");
    let recorded = last_values(&capture, "veth0");
    assert_eq!(served, recorded);
    assert!(recorded.iter().any(|(k, v)| k.ends_with("xdp_packets") && *v > 0), "{recorded:?}");
}

#[test]
fn record_writes_what_the_kernel_reports() {
    let lab = VethLab::new("veth0", 2);
    lab.traffic(77);
    let dir = TempDir::new("record");
    let path = dir.join("rec.txt");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node.name,
            bin(),
            "record",
            "--device-include",
            "^veth0$",
            "--interval",
            "200ms",
        ])
        .args(["--duration", "1s", "-o", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&path).unwrap();
    let capture = enawatch::source::capture::parse(&text, "rec", "eth0", 0).unwrap();
    assert!((5..=7).contains(&capture.samples.len()), "1 s at 200 ms: {} samples", capture.samples.len());
    let device = &capture.samples[0].devices[0];
    assert_eq!((device.name.as_str(), device.attribute("driver")), ("veth0", Some("veth")));
    assert_eq!(last_values(&path, "veth0"), lab.node.ethtool_stats("veth0"));
    assert!(analyze(&path).contains("Not throttled"));
}

#[test]
fn a_looped_replay_keeps_counting() {
    let ns = Netns::new("loop");
    let dir = TempDir::new("loop");
    let path = dir.join("cap.txt");
    std::fs::write(
        &path,
        "@1790000000.0\n=== ens5 driver=ena\n linklocal_allowance_exceeded: 10\n\
         @1790000001.0\n=== ens5 driver=ena\n linklocal_allowance_exceeded: 30\n",
    )
    .unwrap();
    let agent = Agent::start(&ns, &["--replay", path.to_str().unwrap(), "--loop", "--speed", "20"]);
    let series = "ena_allowance_exceeded_packets_total{device=\"ens5\",allowance=\"linklocal\"}";
    let m = agent.wait_for("three loops", |m| parse_metrics(m).get(series).is_some_and(|v| *v >= 70.0));
    // Each loop adds the capture's 20 packets; the wrap itself adds nothing.
    let v = parse_metrics(&m)[series];
    assert_eq!((v - 10.0) % 20.0, 0.0, "{v}");
    assert!(agent.get("/healthz").unwrap().text().starts_with("ok: last sample"));
}
