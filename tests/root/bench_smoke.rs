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

/// Runs `bench/NAME --quick` against the agent under test, writing into a scratch
/// directory; its stdout, stderr and that directory, once it has succeeded.
fn quick(name: &str) -> (String, String, support::TempDir) {
    support::require_root();
    let out_dir = support::TempDir::new(name);
    let harness = format!("{}/bench/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&harness)
        .args(["--quick", "--bin", support::bin(), "--out"])
        .arg(&out_dir.0)
        .output()
        .unwrap_or_else(|e| panic!("run {harness}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench/{name} --quick failed ({})\n{stdout}\n{stderr}", out.status);
    (stdout, stderr, out_dir)
}

#[test]
fn quick_run_prints_both_tools_and_the_floor() {
    let (stdout, stderr, out_dir) = quick("run");

    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| 1 |")).collect();
    for tool in ["enawatch", "node_exporter", "floor"] {
        let row = table.iter().find(|l| l.split('|').nth(2).is_some_and(|c| c.trim().starts_with(tool)));
        let row = row.unwrap_or_else(|| panic!("no {tool} row in the table:\n{stdout}"));
        // Every cell is filled: a figure, a ratio or a dash, never an empty cell.
        assert!(row.split('|').skip(1).take(11).all(|c| !c.trim().is_empty()), "empty cell: {row}");
    }
    let results = std::fs::read_to_string(out_dir.join("results.md")).expect("results.md written");
    assert_eq!(results.trim_end(), stdout.trim_end(), "results.md is the table printed");

    nothing_left_behind("run", &stderr);
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
    let (stdout, stderr, out_dir) = quick("dns-cost");

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

    nothing_left_behind("dns-cost", &stderr);
}

/// The namespaces `bench/NAME` announced on stderr are gone.
fn nothing_left_behind(name: &str, stderr: &str) {
    let tag = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("bench/{name}: namespaces: ")))
        .and_then(|l| l.split('*').next())
        .unwrap_or_else(|| panic!("bench/{name} names its namespaces"));
    let namespaces = support::run(&["ip", "netns", "list"]);
    let left: Vec<_> = String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with(tag))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "bench/{name} left namespaces behind: {left:?}");
}
