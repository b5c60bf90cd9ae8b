//! The churn soak, three minutes of it: `bench/soak --duration 180` (veths with unique
//! names created and deleted under a live agent, scraped and asked its API every second)
//! must pass, and its table must show what passing means: the series and the file
//! descriptors back at the baseline after the churn, RSS grown by less than 1 MiB, and a log
//! that grew by a bounded number of lines. The hour-long run is by hand (docs/performance.md).

use std::process::Command;

use crate::support;

/// One row of the soak's table: (phase, devices, series, RSS KiB, fds, log lines, churned).
fn rows(table: &str) -> Vec<(String, u64, u64, u64, u64, u64, u64)> {
    table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let n = |i: usize| cells.get(i)?.parse::<u64>().ok();
            Some((cells.get(2)?.to_string(), n(3)?, n(4)?, n(5)?, n(6)?, n(7)?, n(8)?))
        })
        .collect()
}

#[test]
fn a_three_minute_churn_soak_returns_to_its_baseline() {
    support::require_root();
    let out_dir = support::TempDir::new("soak");
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/soak");
    let out = Command::new(harness)
        .args(["--duration", "180", "--bin", support::bin(), "--out"])
        .arg(&out_dir.0)
        .output()
        .expect("run bench/soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let agent_log = std::fs::read_to_string(out_dir.join("agent.log")).unwrap_or_default();
    assert!(out.status.success(), "bench/soak failed ({})\n{stdout}\n{stderr}\n{agent_log}", out.status);

    let table = rows(&stdout);
    let baseline = table.iter().rev().find(|r| r.0 == "warm-up").expect("a warm-up row");
    let last = table.last().expect("rows");
    assert_eq!(last.0, "after", "{stdout}");
    let churn: Vec<_> = table.iter().filter(|r| r.0 == "churn").collect();
    assert!(churn.len() >= 15, "a row every 10 s of churn: {stdout}");
    assert!(last.6 >= 300, "veths churned: {}", last.6);
    assert!(churn.iter().any(|r| r.1 > baseline.1 + 3), "the churned veths were watched: {stdout}");
    assert_eq!(last.2, baseline.2, "series back at the baseline: {stdout}");
    assert_eq!(last.4, baseline.4, "file descriptors back at the baseline: {stdout}");
    assert!(last.3 < baseline.3 + 1024, "RSS grew by less than 1 MiB: {stdout}");
    assert_eq!(last.1, baseline.1, "only the device that stays is watched: {stdout}");
    // Ten per-device lines and a summary a minute, at most, over three minutes of churn.
    let churn_lines = last.5 - baseline.5;
    assert!(churn_lines <= 3 * 12 + 2, "{churn_lines} log lines:\n{agent_log}");

    let tag =
        stderr.lines().find_map(|l| l.strip_prefix("bench/soak: namespace: ")).expect("names its namespace");
    let namespaces = support::run(&["ip", "netns", "list"]);
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).lines().any(|l| l.starts_with(tag)),
        "bench/soak left its namespace behind"
    );
}
