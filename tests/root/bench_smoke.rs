//! The benchmark harnesses cannot rot: `bench/run --quick` (one veth pair, five scrapes of
//! each tool, two seconds of ticks) must run to the end, clean up, and print a result table
//! with enawatch's, node_exporter's and the floor's rows; `bench/dns-cost --quick` likewise,
//! with enawatch's, dnstop's and tcpdump's. No timing is asserted: the figures of a shared
//! machine are reported by the harnesses, never judged by a test.
//!
//! Needs root (network namespaces), and prometheus-node-exporter, curl and gcc, which the
//! harness installs with apt-get when they are missing.

use std::process::Command;

use crate::support;

#[test]
fn quick_run_prints_both_tools_and_the_floor() {
    support::require_root();
    let out_dir = support::TempDir::new("bench");
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/run");
    let out = Command::new(harness)
        .args(["--quick", "--bin", support::bin(), "--out"])
        .arg(&out_dir.0)
        .output()
        .expect("run bench/run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench/run --quick failed ({})\n{stdout}\n{stderr}", out.status);

    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| 1 |")).collect();
    for tool in ["enawatch", "node_exporter", "floor"] {
        let row = table.iter().find(|l| l.split('|').nth(2).is_some_and(|c| c.trim().starts_with(tool)));
        let row = row.unwrap_or_else(|| panic!("no {tool} row in the table:\n{stdout}"));
        // Every cell is filled: a figure, a ratio or a dash, never an empty cell.
        assert!(row.split('|').skip(1).take(11).all(|c| !c.trim().is_empty()), "empty cell: {row}");
    }
    let results = std::fs::read_to_string(out_dir.join("results.md")).expect("results.md written");
    assert_eq!(results.trim_end(), stdout.trim_end(), "results.md is the table printed");

    // Nothing is left behind: the namespaces the harness announced are gone.
    let tag = stderr
        .lines()
        .find_map(|l| l.strip_prefix("bench/run: namespaces: "))
        .and_then(|l| l.split('*').next())
        .expect("bench/run names its namespaces");
    let namespaces = support::run(&["ip", "netns", "list"]);
    let left: Vec<_> = String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with(tag))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "bench/run left namespaces behind: {left:?}");
}

/// `bench/dns-cost --quick` (2,000 queries/s for 5 s, dnstop and tcpdump capturing alongside)
/// runs to the end and cleans up, every tool captured, and the agent's live DNS capture
/// counted the queries dnsperf sent (within 1 %) with no kernel drop. As above, its CPU
/// figures are reported, never judged here.
///
/// Also needs dnstop, tcpdump, dnsperf, dnsmasq and tmux, which the harness installs with
/// apt-get when they are missing.
#[test]
fn dns_cost_quick_run_counts_every_query() {
    support::require_root();
    let out_dir = support::TempDir::new("dnscost");
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/dns-cost");
    let out = Command::new(harness)
        .args(["--quick", "--bin", support::bin(), "--out"])
        .arg(&out_dir.0)
        .output()
        .expect("run bench/dns-cost");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench/dns-cost --quick failed ({})\n{stdout}\n{stderr}", out.status);

    for tool in ["enawatch", "dnstop", "tcpdump"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("| 2000 |")
                && l.split('|').nth(2).is_some_and(|c| c.trim().starts_with(tool))),
            "no {tool} row in the table:\n{stdout}"
        );
    }
    let results = std::fs::read_to_string(out_dir.join("results.md")).expect("results.md written");
    assert_eq!(results.trim_end(), stdout.trim_end(), "results.md is the table printed");

    // The raw row, by column name.
    let tsv = std::fs::read_to_string(out_dir.join("results.tsv")).expect("results.tsv written");
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split('\t').collect();
    let row: Vec<&str> = lines.next().expect("one row, for 2000/s").split('\t').collect();
    let value = |name: &str| -> u64 {
        let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}: {tsv}"));
        row[i].parse().unwrap_or_else(|_| panic!("{name} is not a count: {tsv}"))
    };
    let sent = value("sent");
    assert!(sent >= 9_000, "dnsperf sent {sent} queries in 5 s at 2,000/s\n{tsv}");
    let counted = value("ew_queries");
    assert!(counted.abs_diff(sent) * 100 <= sent, "enawatch counted {counted} of {sent} queries\n{stdout}");
    assert_eq!(value("ew_dropped"), 0, "the kernel dropped DNS packets at 2,000/s\n{stdout}");
    assert!(value("dnstop_queries") > 0, "dnstop counted nothing: it did not capture\n{stdout}");
    assert!(value("tcpdump_received") >= sent, "tcpdump received fewer packets than queries sent\n{stdout}");

    let tag = stderr
        .lines()
        .find_map(|l| l.strip_prefix("bench/dns-cost: namespaces: "))
        .and_then(|l| l.split('*').next())
        .expect("bench/dns-cost names its namespaces");
    let namespaces = support::run(&["ip", "netns", "list"]);
    let left: Vec<_> = String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with(tag))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "bench/dns-cost left namespaces behind: {left:?}");
}
