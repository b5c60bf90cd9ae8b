//! Golden `/metrics`: a scripted run of the sampler over ENA statistics (the driver's real
//! stat names, from tests/data), rendered in both formats and compared with the checked-in
//! files. `promtool check metrics` must be clean on the text output.
//!
//! After an intended change: `ENAWATCH_UPDATE_GOLDEN=1 cargo test --test tools golden::`.

use std::collections::VecDeque;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use enawatch::history::Store;
use enawatch::metrics::encode::Format;
use enawatch::metrics::{render, Compat, Options};
use enawatch::sampler::{Sampler, Settings};
use enawatch::source::dns::families::{Counts, Histogram, Totals};
use enawatch::source::{Device, Reading, Sample, Schema};

use crate::support::check_golden;

/// `ethtool -S` text → (names, values).
fn ethtool_s(text: &str) -> (Vec<String>, Vec<u64>) {
    text.lines()
        .filter_map(|l| l.trim().rsplit_once(": "))
        .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse::<u64>().ok()?)))
        .unzip()
}

fn device(name: &str, version: &str, eni: Option<&str>) -> Arc<Device> {
    Arc::new(Device {
        name: name.into(),
        driver: "ena".into(),
        driver_version: version.into(),
        firmware_version: String::new(),
        bus_info: format!("0000:00:0{}.0", name.len()),
        eni: eni.map(Into::into),
    })
}

/// Sets the named stats of a copy of `values`.
fn with(schema: &Schema, values: &[u64], set: &[(&str, u64)]) -> Arc<[u64]> {
    let mut v = values.to_vec();
    for (name, value) in set {
        let i = schema.names.iter().position(|n| n == name).expect("stat exists");
        v[i] = *value;
    }
    v.into()
}

fn scripted_run() -> Arc<enawatch::history::Snapshot> {
    let (names, base) = ethtool_s(include_str!("../data/ena-6.12-4q-synthetic.ethtool-S.txt"));
    let ens5_schema = Arc::new(Schema::new(names));
    // An older driver: the five counters only, in another order.
    let old_names: Vec<String> = [
        "tx_timeout",
        "linklocal_allowance_exceeded",
        "pps_allowance_exceeded",
        "conntrack_allowance_exceeded",
        "bw_out_allowance_exceeded",
        "bw_in_allowance_exceeded",
    ]
    .map(String::from)
    .to_vec();
    let eth1_schema = Arc::new(Schema::new(old_names));
    let ens5 = device("ens5", "2.13.0g", Some("eni-0123456789abcdef0"));
    let eth1 = device("eth1", "2.8.0", None);
    let zeros = vec![0u64; ens5_schema.names.len()];

    // The DNS analysis: one workload with lookups to the VPC resolver, two of them lost
    // while ens5 dropped link-local packets, search-path waste; the rest of the node's.
    let mut counts = Counts { queries: [40, 0, 12, 0], search_path: 6, ..Counts::default() };
    counts.failures[0][0] = [0, 2];
    let mut latency = Histogram::default();
    latency.buckets[20] = 50; // le="0.0156": fifty answers in about 15 ms
    latency.count = 50;
    latency.sum = 0.7;
    let dns = Arc::new(Totals {
        workloads: vec![
            ((Arc::from("shop"), Arc::from("web")), counts),
            ((Arc::from(""), Arc::from("other")), Counts { queries: [3, 0, 0, 1], ..Counts::default() }),
        ],
        latency: [latency, Histogram::default(), Histogram::default(), Histogram::default()],
        unanswered: vec![("ens5".to_owned(), 2)],
    });
    let sample = |at_ms, ens5_values: Arc<[u64]>, eth1_values: [u64; 6]| Sample {
        at_ms,
        readings: vec![
            // ens5 runs the link-local meter: 703 packets a second to DNS, IMDS and Time Sync.
            Reading {
                device: Arc::clone(&ens5),
                schema: Arc::clone(&ens5_schema),
                values: ens5_values,
                linklocal: Some([700, 2, 1]),
            },
            Reading {
                device: Arc::clone(&eth1),
                schema: Arc::clone(&eth1_schema),
                values: eth1_values.into(),
                linklocal: None,
            },
        ],
        events: Vec::new(),
        // The meter's ring overflowed once, 3 packets; the DNS ring never did.
        capture_dropped: [Some(0), Some(3)],
        dns: Some(Arc::clone(&dns)),
    };
    let t0 = 1_790_000_000_000;
    let script = VecDeque::from([
        sample(t0, base.clone().into(), [0, 10, 0, 0, 0, 0]),
        // One second later: link-local drops on ens5, pps drops on eth1.
        sample(
            t0 + 1000,
            with(
                &ens5_schema,
                &base,
                &[("linklocal_allowance_exceeded", 1950), ("conntrack_allowance_available", 136_500)],
            ),
            [0, 10, 7, 0, 0, 0],
        ),
        // The ENA all-zero glitch on ens5: nothing counted, headroom not zeroed.
        sample(t0 + 2000, zeros.into(), [0, 10, 7, 0, 0, 0]),
        // Back to real values; eth1's driver reset (counters restart from 0).
        sample(
            t0 + 3000,
            with(
                &ens5_schema,
                &base,
                &[("linklocal_allowance_exceeded", 1990), ("conntrack_allowance_available", 136_400)],
            ),
            [0, 0, 2, 0, 0, 0],
        ),
    ]);
    let store = Arc::new(Store::new(900));
    let settings =
        Settings { interval: Duration::from_secs(1), compat_stats: None, forget_after_ms: 900_000 };
    let mut sampler = Sampler::new(Box::new(script), settings, Arc::clone(&store));
    for i in 0..4 {
        sampler.tick(t0 + i * 1000);
    }
    store.latest()
}

fn options() -> Options {
    Options {
        compat: vec![Compat::Showmax, Compat::NodeExporter],
        interval: Duration::from_secs(1),
        notify: None,
        remote_write: None,
    }
}

/// The exposition of `snapshot` with both compatibility families, as text.
fn text(snapshot: &enawatch::history::Snapshot, format: Format) -> String {
    render(snapshot, &options(), format).into_text()
}

/// The revision label changes with every commit; the golden file holds a placeholder.
fn normalise(s: &str) -> String {
    s.replace(&format!("revision=\"{}\"", enawatch::metrics::REVISION), "revision=\"REVISION\"")
}

#[test]
fn text_format_matches_golden_and_passes_promtool() {
    let snapshot = scripted_run();
    let text = normalise(&text(&snapshot, Format::Text));
    check_golden("metrics.txt", &text);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed; .ci/run installs it");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openmetrics_matches_golden() {
    let snapshot = scripted_run();
    check_golden("metrics.om.txt", &normalise(&text(&snapshot, Format::OpenMetrics)));
}

#[test]
fn counter_semantics_show_in_the_exposition() {
    let text = text(&scripted_run(), Format::Text);
    let has = |line: &str| text.lines().any(|l| l == line);
    // ens5: started at 1893, +57, glitch ignored, +40.
    assert!(
        has("ena_allowance_exceeded_packets_total{device=\"ens5\",allowance=\"linklocal\"} 1990"),
        "{text}"
    );
    assert!(has("ena_allowance_exceeded_seconds_total{device=\"ens5\",allowance=\"linklocal\"} 3"), "{text}");
    assert!(has("ena_conntrack_allowance_available{device=\"ens5\"} 136400"));
    assert!(has("enawatch_discarded_samples_total{device=\"ens5\",reason=\"glitch\"} 1"));
    // eth1 (names in another order): pps 0 → 7, then the reset to 2 adds 2; linklocal
    // 10 → 0 is a reset that adds nothing and takes nothing away.
    assert!(has("ena_allowance_exceeded_packets_total{device=\"eth1\",allowance=\"pps\"} 9"), "{text}");
    assert!(
        has("ena_allowance_exceeded_packets_total{device=\"eth1\",allowance=\"linklocal\"} 10"),
        "{text}"
    );
    assert!(has("enawatch_driver_resets_total{device=\"eth1\"} 1"));
    assert!(has("ena_stat_supported{device=\"eth1\",stat=\"conntrack_allowance_available\"} 0"));
    assert!(!text.contains("ena_conntrack_allowance_available{device=\"eth1\"}"));
}
