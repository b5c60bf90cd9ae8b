//! The benchmark harness cannot rot: `bench/run --quick` (one veth pair, five scrapes of
//! each tool, two seconds of ticks) must run to the end, clean up, and print a result table
//! with enawatch's, node_exporter's and the floor's rows. No timing is asserted: the
//! figures of a shared machine are reported by the harness, never judged by a test.
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
