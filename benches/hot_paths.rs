//! Microbenchmarks of the agent's two hot paths, on in-memory data (no kernel, no socket):
//!
//! * `tick`: one [`Sampler::tick`] over N devices, everything a live tick does except the
//!   `ETHTOOL_GSTATS` ioctl (bench/run measures the ioctl and the whole agent);
//! * `render`: `/metrics` of N devices in the text format, with the node-exporter family for
//!   every stat, as bench/run scrapes it.
//!
//! Devices are shaped as bench/run's veths (10 stats, none of them an allowance stat, so no
//! history is written) or as ENA devices (10 stats, the six allowance stats among them, so
//! every tick appends to the history and every native family has samples).
//!
//! `cargo bench --bench hot_paths` runs them with divan (wall clock, per device). On a noisy
//! machine, `bench/callgrind` counts instructions instead: it runs this binary under valgrind
//! with `ENAWATCH_CALLGRIND=WHAT:N:ITERATIONS`, which runs only `measured` that many times.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;
use enawatch::history::{Snapshot, Store};
use enawatch::metrics::encode::Format;
use enawatch::metrics::{render, Compat, Options};
use enawatch::sampler::{Sampler, Settings};
use enawatch::source::{Device, Reading, Sample, Schema, Source};
use regex_lite::Regex;

/// Device counts: a node with a few ENIs and pod veths, and bench/run's largest.
const SIZES: [usize; 2] = [16, 256];

/// The stats of a veth with one queue per direction (`ethtool -S`), as in bench/run.
const VETH_STATS: [&str; 10] = [
    "peer_ifindex",
    "rx_queue_0_xdp_packets",
    "rx_queue_0_xdp_bytes",
    "rx_queue_0_drops",
    "rx_queue_0_xdp_redirect",
    "rx_queue_0_xdp_drops",
    "rx_queue_0_xdp_tx",
    "rx_queue_0_xdp_tx_errors",
    "tx_queue_0_xdp_xmit",
    "tx_queue_0_xdp_xmit_errors",
];

/// Ten stats of an ENA device: the six allowance stats and four of its others.
const ENA_STATS: [&str; 10] = [
    "tx_timeout",
    "bw_in_allowance_exceeded",
    "bw_out_allowance_exceeded",
    "pps_allowance_exceeded",
    "conntrack_allowance_exceeded",
    "linklocal_allowance_exceeded",
    "conntrack_allowance_available",
    "queue_0_tx_cnt",
    "queue_0_rx_cnt",
    "ena_admin_q_aenq_count",
];

#[derive(Clone, Copy, Debug)]
enum Shape {
    Veth,
    Ena,
}

/// A source holding N devices in memory. Each tick it does what the live source does per
/// device besides the ioctl: share the device and schema, copy the values into a new
/// `Arc<[u64]>`. The values grow every tick, as a busy device's do.
struct Memory {
    devices: Vec<(Arc<Device>, Arc<Schema>, Vec<u64>)>,
}

impl Memory {
    fn new(shape: Shape, n: usize) -> Self {
        let (stats, driver): (&[&str], &str) = match shape {
            Shape::Veth => (&VETH_STATS, "veth"),
            Shape::Ena => (&ENA_STATS, "ena"),
        };
        let devices = (0..n)
            .map(|i| {
                let device = Arc::new(Device {
                    name: format!("ewv{i}"),
                    driver: driver.into(),
                    driver_version: "1.0".into(),
                    firmware_version: String::new(),
                    bus_info: String::new(),
                    eni: None,
                });
                let schema = Arc::new(Schema::new(stats.iter().map(|s| (*s).to_owned()).collect()));
                let values = (0..stats.len() as u64).map(|k| k * 1000).collect();
                (device, schema, values)
            })
            .collect();
        Self { devices }
    }
}

impl Source for Memory {
    fn sample(&mut self, now_ms: i64) -> Option<Sample> {
        let mut sample = Sample { at_ms: now_ms, ..Sample::default() };
        for (device, schema, values) in &mut self.devices {
            for v in values.iter_mut() {
                *v += 3;
            }
            let reading =
                Reading { device: Arc::clone(device), schema: Arc::clone(schema), values: values[..].into() };
            sample.readings.push(reading);
        }
        Some(sample)
    }
}

/// A sampler over N in-memory devices, as `enawatch serve --compat-stats '.*' --history 15m`
/// at 1 s sets it up, already past its first tick.
fn sampler(shape: Shape, n: usize) -> (Sampler, Arc<Store>) {
    let store = Arc::new(Store::new(900));
    let settings = Settings {
        interval: Duration::from_secs(1),
        compat_stats: Some(Regex::new(".*").expect("valid")),
        forget_after_ms: 900_000,
    };
    let mut sampler = Sampler::new(Box::new(Memory::new(shape, n)), settings, Arc::clone(&store));
    sampler.tick(1_000);
    (sampler, store)
}

fn snapshot(shape: Shape, n: usize) -> Arc<Snapshot> {
    let (mut sampler, _store) = sampler(shape, n);
    sampler.tick(2_000).expect("a memory source never ends")
}

fn options() -> Options {
    Options { compat: vec![Compat::NodeExporter], interval: Duration::from_secs(1), notify: None }
}

fn bench_tick(bencher: Bencher, shape: Shape, n: usize) {
    let (mut sampler, _store) = sampler(shape, n);
    let mut now_ms = 1_000;
    bencher.counter(ItemsCount::new(n)).bench_local(move || {
        now_ms += 1_000;
        sampler.tick(now_ms)
    });
}

fn bench_render(bencher: Bencher, shape: Shape, n: usize) {
    let snapshot = snapshot(shape, n);
    let options = options();
    let bytes = render(&snapshot, &options, Format::Text).len();
    bencher
        .counter(ItemsCount::new(n))
        .counter(BytesCount::new(bytes))
        .bench_local(|| render(black_box(&snapshot), &options, Format::Text));
}

/// One sampler tick over N veth-shaped devices (no history written), per device.
#[divan::bench(args = SIZES)]
fn tick_veth(bencher: Bencher, n: usize) {
    bench_tick(bencher, Shape::Veth, n);
}

/// One sampler tick over N ENA-shaped devices (a history point per device), per device.
#[divan::bench(args = SIZES)]
fn tick_ena(bencher: Bencher, n: usize) {
    bench_tick(bencher, Shape::Ena, n);
}

/// `/metrics` of N veth-shaped devices with the node-exporter family for all stats.
#[divan::bench(args = SIZES)]
fn render_veth(bencher: Bencher, n: usize) {
    bench_render(bencher, Shape::Veth, n);
}

/// `/metrics` of N ENA-shaped devices with the node-exporter family for all stats.
#[divan::bench(args = SIZES)]
fn render_ena(bencher: Bencher, n: usize) {
    bench_render(bencher, Shape::Ena, n);
}

/// What `bench/callgrind` counts: `iterations` runs of one hot path, in a function of its own
/// so valgrind's `--toggle-collect` counts exactly these instructions and not the set-up.
#[inline(never)]
fn measured(what: &str, iterations: u64, sampler: &mut Sampler, snapshot: &Snapshot, options: &Options) {
    let mut now_ms = 10_000;
    for _ in 0..iterations {
        if what.starts_with("tick") {
            now_ms += 1_000;
            black_box(sampler.tick(now_ms));
        } else {
            black_box(render(black_box(snapshot), options, Format::Text));
        }
    }
}

/// `ENAWATCH_CALLGRIND=WHAT:N:ITERATIONS`, WHAT one of tick_veth, tick_ena, render_veth,
/// render_ena.
fn callgrind(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [what, n, iterations] = parts[..] else {
        panic!("ENAWATCH_CALLGRIND={spec:?}: expected WHAT:N:ITERATIONS");
    };
    let n: usize = n.parse().expect("N is a number");
    let iterations: u64 = iterations.parse().expect("ITERATIONS is a number");
    let shape = match what {
        "tick_veth" | "render_veth" => Shape::Veth,
        "tick_ena" | "render_ena" => Shape::Ena,
        _ => panic!("ENAWATCH_CALLGRIND: unknown {what:?}"),
    };
    let (mut sampler, _store) = sampler(shape, n);
    // Warm up: the first ticks size every buffer; the steady state is what repeats.
    for t in 2..10 {
        sampler.tick(t * 1_000);
    }
    let snapshot = snapshot(shape, n);
    let options = options();
    measured(what, iterations, &mut sampler, &snapshot, &options);
}

fn main() {
    if let Ok(spec) = std::env::var("ENAWATCH_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    divan::main();
}
