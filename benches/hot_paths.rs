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
//! And the DNS capture's per-packet path (issue 12), on hand-built packets:
//!
//! * `dns_parse_*`: decoding one captured packet, allocation-free (`Packet::parse`), beside the
//!   simple-dns decoding it replaces (`Packet::parse` and the name as a `String`);
//! * `dns_transaction*`: a query and its response through the transaction table with 10,000
//!   others in flight, seen on one interface or, as usual, on two;
//! * `dns_expire_idle`: the periodic expiry call when nothing is due.
//!
//! `cargo bench --bench hot_paths` runs them with divan (wall clock, per device). On a noisy
//! machine, `bench/callgrind` counts instructions instead: it runs this binary under valgrind
//! with `ENAWATCH_CALLGRIND=WHAT:N:ITERATIONS`, which runs only `measured` that many times.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;
use enawatch::alerts::{default_rules, Evaluator, Local};
use enawatch::base::allowance::ALLOWANCE_STATS;
use enawatch::history::{Point, Snapshot, Store};
use enawatch::metrics::encode::Format;
use enawatch::metrics::{render, Compat, Options};
use enawatch::sampler::{Sampler, Settings};
// The DNS decoder and transaction table are crate-private; `dns::bench` wraps them for here.
use enawatch::source::dns::bench::{Packet, Table};
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
/// `Arc<[u64]>`. Traffic stats grow every tick, as a busy device's do; allowance stats stay
/// put (a node that is not throttled, the common case).
struct Memory {
    devices: Vec<(Arc<Device>, Arc<Schema>, Vec<u64>)>,
    growing: Vec<bool>,
}

impl Memory {
    fn new(shape: Shape, n: usize) -> Self {
        let (stats, driver): (&[&str], &str) = match shape {
            Shape::Veth => (&VETH_STATS, "veth"),
            Shape::Ena => (&ENA_STATS, "ena"),
        };
        // One layout for all, as the live source shares it between devices with the same names.
        let schema = Arc::new(Schema::new(stats.iter().map(|s| (*s).to_owned()).collect()));
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
                let values = (0..stats.len() as u64).map(|k| k * 1000).collect();
                (device, Arc::clone(&schema), values)
            })
            .collect();
        let growing = stats.iter().map(|s| !ALLOWANCE_STATS.contains(s)).collect();
        Self { devices, growing }
    }
}

impl Source for Memory {
    fn sample(&mut self, now_ms: i64) -> Option<Sample> {
        let mut sample = Sample { at_ms: now_ms, ..Sample::default() };
        for (device, schema, values) in &mut self.devices {
            for (v, grows) in values.iter_mut().zip(&self.growing) {
                *v += u64::from(*grows) * 1500;
            }
            let reading = Reading {
                device: Arc::clone(device),
                schema: Arc::clone(schema),
                values: values[..].into(),
                linklocal: None,
            };
            sample.readings.push(reading);
        }
        Some(sample)
    }
}

/// Ticks of history kept per device: 15 minutes at 1 s, `enawatch serve`'s default.
const HISTORY_TICKS: i64 = 900;

/// A sampler over N in-memory devices, set up as `enawatch serve --compat-stats '.*'` sets it
/// up (15 minutes of history at 1 s, the default local alert rules evaluated every tick), in
/// its steady state: the history is full (filled directly: ticking 900 times would take
/// minutes under valgrind) and the first tick is past.
fn sampler(shape: Shape, n: usize) -> (Sampler, Arc<Store>, i64) {
    let store = Arc::new(Store::new(usize::try_from(HISTORY_TICKS).expect("small")));
    let settings = Settings {
        interval: Duration::from_secs(1),
        compat_stats: Some(Regex::new(".*").expect("valid")),
        forget_after_ms: HISTORY_TICKS * 1_000,
    };
    let source = Memory::new(shape, n);
    if matches!(shape, Shape::Ena) {
        store.update_history(|h| {
            for (device, _, _) in &source.devices {
                for t in 1..=HISTORY_TICKS {
                    h.push(
                        &device.name,
                        Point {
                            at_ms: t * 1_000,
                            added: [0; 5],
                            available: 6_000,
                            flags: 0,
                            linklocal: Point::NO_VALUE,
                        },
                    );
                }
            }
        });
    }
    let mut sampler = Sampler::new(Box::new(source), settings, Arc::clone(&store))
        .with_hook(Local::new(Evaluator::new(default_rules()), None));
    let now_ms = (HISTORY_TICKS + 1) * 1_000;
    sampler.tick(now_ms);
    (sampler, store, now_ms)
}

fn snapshot(shape: Shape, n: usize) -> Arc<Snapshot> {
    let (mut sampler, _store, now_ms) = sampler(shape, n);
    sampler.tick(now_ms + 1_000).expect("a memory source never ends")
}

fn options() -> Options {
    Options {
        compat: vec![Compat::NodeExporter],
        interval: Duration::from_secs(1),
        notify: None,
        remote_write: None,
    }
}

fn bench_tick(bencher: Bencher, shape: Shape, n: usize) {
    let (mut sampler, _store, mut now_ms) = sampler(shape, n);
    bencher.counter(ItemsCount::new(n)).bench_local(move || {
        now_ms += 1_000;
        sampler.tick(now_ms)
    });
}

/// Bytes written between two cold ticks: more than this machine's caches hold, so each tick
/// starts as a live one does after a second of other work (the kernel's share is in bench/run).
const EVICT_BYTES: usize = 64 << 20;

/// Writes `scratch` whole, pushing everything else out of the caches.
fn evict(scratch: &mut [u8]) {
    for (i, line) in scratch.chunks_mut(64).enumerate() {
        line[0] = line[0].wrapping_add(u8::try_from(i & 0x7f).expect("small"));
    }
    black_box(&*scratch);
}

fn bench_tick_cold(bencher: Bencher, shape: Shape, n: usize) {
    let (mut sampler, _store, mut now_ms) = sampler(shape, n);
    let mut scratch = vec![0u8; EVICT_BYTES];
    bencher.counter(ItemsCount::new(n)).with_inputs(|| evict(&mut scratch)).bench_local_values(|()| {
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

/// `tick_veth` with cold caches: everything is evicted before each tick (one tick per sample).
#[divan::bench(args = SIZES, sample_size = 1, sample_count = 200)]
fn tick_veth_cold(bencher: Bencher, n: usize) {
    bench_tick_cold(bencher, Shape::Veth, n);
}

/// `tick_ena` with cold caches.
#[divan::bench(args = SIZES, sample_size = 1, sample_count = 200)]
fn tick_ena_cold(bencher: Bencher, n: usize) {
    bench_tick_cold(bencher, Shape::Ena, n);
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

// === DNS ===

/// A pod's lookup of a name down its search path, as the capture socket delivers it: IPv4,
/// UDP, one question (a 41-byte name), no EDNS.
const DNS_NAME: &str = "api.example.com.default.svc.cluster.local";

/// An IPv4 packet with UDP, from `src` to `dst`.
fn udp_packet(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, message: &[u8]) -> Vec<u8> {
    let total = u16::try_from(28 + message.len()).expect("small").to_be_bytes();
    let mut ip = vec![0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&u16::try_from(8 + message.len()).expect("small").to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(message);
    ip
}

/// The query, and its response: NXDOMAIN with the zone's SOA in the authority section, as
/// CoreDNS answers a search-path candidate.
fn dns_packets() -> (Vec<u8>, Vec<u8>) {
    use simple_dns::rdata::{RData, SOA};
    use simple_dns::{Name, Packet, Question, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE};
    let name = Name::new(DNS_NAME).expect("valid");
    let question = Question::new(name.clone(), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false);
    let mut query = Packet::new_query(0x1234);
    query.questions.push(question.clone());
    let mut response = Packet::new_reply(0x1234);
    *response.rcode_mut() = RCODE::NameError;
    response.questions.push(question);
    let soa = SOA {
        mname: Name::new("ns.dns.cluster.local").expect("valid"),
        rname: Name::new("hostmaster.cluster.local").expect("valid"),
        serial: 1_700_000_000,
        refresh: 7200,
        retry: 1800,
        expire: 86400,
        minimum: 30,
    };
    let zone = Name::new("cluster.local").expect("valid");
    response.name_servers.push(ResourceRecord::new(zone, CLASS::IN, 30, RData::SOA(soa)));
    let (pod, service) = ([10, 1, 0, 10], [172, 20, 0, 10]);
    (
        udp_packet(pod, 40000, service, 53, &query.build_bytes_vec_compressed().expect("builds")),
        udp_packet(service, 53, pod, 40000, &response.build_bytes_vec_compressed().expect("builds")),
    )
}

/// What the simple-dns path did with a packet: skip the IPv4 and UDP headers, parse the whole
/// message, render the first question's name as a lower-case `String`.
fn simple_dns_decode(ip: &[u8]) -> Option<(u16, String, u16)> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let packet = simple_dns::Packet::parse(ip.get(ihl + 8..)?).ok()?;
    let question = packet.questions.first()?;
    Some((packet.id(), question.qname.to_string().to_ascii_lowercase(), u16::from(question.qtype)))
}

/// Decoding a captured query (`Packet::parse`, the capture's `wire::parse`).
#[divan::bench]
fn dns_parse_query(bencher: Bencher) {
    let (query, _) = dns_packets();
    bencher.counter(BytesCount::new(query.len())).bench_local(|| Packet::parse(black_box(&query)).is_some());
}

/// Decoding a captured response.
#[divan::bench]
fn dns_parse_response(bencher: Bencher) {
    let (_, response) = dns_packets();
    bencher
        .counter(BytesCount::new(response.len()))
        .bench_local(|| Packet::parse(black_box(&response)).is_some());
}

/// Decoding the query the simple-dns way, for the ratio.
#[divan::bench]
fn dns_parse_query_simple_dns(bencher: Bencher) {
    let (query, _) = dns_packets();
    bencher.counter(BytesCount::new(query.len())).bench_local(|| simple_dns_decode(black_box(&query)));
}

/// Decoding the response the simple-dns way.
#[divan::bench]
fn dns_parse_response_simple_dns(bencher: Bencher) {
    let (_, response) = dns_packets();
    bencher.counter(BytesCount::new(response.len())).bench_local(|| simple_dns_decode(black_box(&response)));
}

/// Transactions in flight while the benchmarks run.
const DNS_IN_FLIGHT: u16 = 10_000;
/// A wall-clock time, in nanoseconds, as the kernel stamps packets.
const DNS_T0: i64 = 1_700_000_000_000_000_000;

/// A default-sized table with [`DNS_IN_FLIGHT`] transactions of other clients in flight, and
/// the decoded query and response of the transaction each iteration runs.
fn dns_table<'a>(query: &'a [u8], response: &'a [u8], timeout: Duration) -> (Table, Packet<'a>, Packet<'a>) {
    let mut table = Table::new(timeout);
    let client = Packet::parse(query).expect("decodes");
    let r = Packet::parse(response).expect("decodes");
    let mut q = client.clone();
    for i in 0..DNS_IN_FLIGHT {
        let [hi, lo] = i.to_be_bytes();
        q.set_source(std::net::IpAddr::from([10, 2, hi, lo]));
        table.query(&q, DNS_T0, 7, false);
    }
    assert_eq!(table.in_flight(), usize::from(DNS_IN_FLIGHT));
    (table, client, r)
}

/// A query and its response, each seen once: `Table::query` then `Table::response`.
#[divan::bench]
fn dns_transaction(bencher: Bencher) {
    let (query, response) = dns_packets();
    let (mut table, mut q, mut r) = dns_table(&query, &response, Table::TIMEOUT);
    let (mut at, mut id) = (DNS_T0, 0u16);
    bencher.bench_local(move || {
        at += 1_000;
        id = id.wrapping_add(1);
        q.set_id(id);
        r.set_id(id);
        table.query(black_box(&q), at, 7, false);
        table.response(black_box(&r), at + 500)
    });
}

/// A query seen on the pod's veth and leaving by the ENI, its response seen on both: the
/// four packets of a typical lookup to an upstream off the node.
#[divan::bench]
fn dns_transaction_two_interfaces(bencher: Bencher) {
    let (query, response) = dns_packets();
    let (mut table, mut q, mut r) = dns_table(&query, &response, Table::TIMEOUT);
    let (mut at, mut id) = (DNS_T0, 0u16);
    bencher.counter(ItemsCount::new(4usize)).bench_local(move || {
        at += 1_000;
        id = id.wrapping_add(1);
        q.set_id(id);
        r.set_id(id);
        table.query(black_box(&q), at, 7, false);
        table.query(black_box(&q), at + 10, 2, true);
        let done = table.response(black_box(&r), at + 500);
        table.response(black_box(&r), at + 510);
        done
    });
}

/// `Table::expire` every 100 ms with 10,000 transactions in flight, none of them ever due (the
/// timeout is longer than any run): the wheel buckets of 100 ms are walked, and once a turn of
/// the wheel the 10,000 are looked at and left.
#[divan::bench]
fn dns_expire_idle(bencher: Bencher) {
    let (query, response) = dns_packets();
    let (mut table, _, _) = dns_table(&query, &response, Duration::MAX);
    let mut now = DNS_T0;
    bencher.bench_local(move || {
        now += 100_000_000;
        table.expire(now)
    });
}

/// What `bench/callgrind` counts: `iterations` runs of one hot path, in a function of its own
/// so valgrind's `--toggle-collect` counts exactly these instructions and not the set-up.
#[inline(never)]
fn measured(
    what: &str,
    iterations: u64,
    mut now_ms: i64,
    sampler: &mut Sampler,
    snapshot: &Snapshot,
    options: &Options,
) {
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
    let (mut sampler, _store, mut now_ms) = sampler(shape, n);
    // Warm up: the first ticks size every buffer; the steady state is what repeats.
    for _ in 0..3 {
        now_ms += 1_000;
        sampler.tick(now_ms);
    }
    let snapshot = snapshot(shape, n);
    let options = options();
    // The node-exporter names are computed on a schema's first render, then kept.
    black_box(render(&snapshot, &options, Format::Text));
    measured(what, iterations, now_ms, &mut sampler, &snapshot, &options);
}

fn main() {
    if let Ok(spec) = std::env::var("ENAWATCH_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    divan::main();
}
