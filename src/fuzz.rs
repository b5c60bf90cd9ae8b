//! Entry points of the fuzz targets in `fuzz/` (docs/fuzzing.md), compiled under `cargo
//! fuzz` (`--cfg fuzzing`) and in the unit tests, which replay every seed and every saved
//! crash input through them, so the harness builds and its crashes stay fixed in CI.
//!
//! Each function takes the fuzzer's bytes, turns them into the input of one parser or one
//! pipeline exactly as the agent feeds it, and panics only when an invariant of the product
//! breaks (a panic of the code under test is reported as it is). They live here, inside the
//! crate, so the internals they reach stay `pub(crate)` and the compiler keeps reporting
//! dead code; the targets are one line each.
//!
//! Where an input has a domain narrower than "any bytes" (a device name the kernel accepts,
//! a time that only moves forward), the generator below says so where it draws it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use regex_lite::Regex;

use crate::alerts::{default_rules, rules_with, Evaluator, Local, RuleOverride};
use crate::base::time::{parse_rfc3339, rfc3339};
use crate::history::Store;
use crate::http::AppState;
use crate::metrics::encode::Format;
use crate::metrics::{Compat, Options};
use crate::remote_write::queue::{SeriesSet, Step};
use crate::remote_write::spool::Spool;
use crate::sampler::Sampler;
use crate::source::capture::{self, Capture, CapturedDevice, CapturedSample};
use crate::source::dns::{self, DnsStats};
use crate::source::linklocal::{self, Targets, MAX_VPC_RESOLVERS};
use crate::source::pods::{self, Decoded, WatchDecoder};
use crate::source::simulate::{Scenario, SimulatedSource};
use crate::source::{Device, Event, ReadError, Reading, Sample, Schema, Source};
use crate::sys::{self, Read};

// === Input ===

/// The fuzzer's bytes, consumed front to back; past the end every read is zero, so any
/// input is a complete one.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A length-prefixed run of at most `max` bytes.
    fn run(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.byte()) % (max + 1);
        self.bytes(n)
    }

    /// A length-prefixed string of at most `max` bytes, as the agent would hold it (lossy).
    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.run(max)).into_owned()
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

// === Capture format ===

/// Parses arbitrary text as a capture; what parses must be written back and read back the
/// same (the recorder writes what `analyze` and `--replay` read).
pub fn capture_parse(data: &[u8]) {
    // Captures are read as UTF-8 text: other bytes are refused before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = capture::parse(text, "fuzz", "eth0", 0) else { return };
    let again = reparse(&parsed.samples);
    assert_eq!(again, parsed, "a parsed capture, written and parsed again, changed");
}

/// Writes samples as `enawatch record` would (any driver strings, kernel-valid names) and
/// reads them back: they must come back equal.
pub fn capture_write(data: &[u8]) {
    let mut input = Input(data);
    let mut samples = Vec::new();
    let mut at_ms = i64::from(input.u32()) * 1000 + i64::from(input.u16() % 1000);
    for _ in 0..=input.byte() % 3 {
        let mut devices: Vec<CapturedDevice> = Vec::new();
        for _ in 0..input.byte() % 4 {
            let name = interface_name(&mut input);
            if devices.iter().any(|d| d.name == name) {
                continue; // the kernel has one device per name
            }
            let mut attributes: Vec<(String, String)> =
                ["driver", "driver_version", "firmware_version", "bus_info"]
                    .iter()
                    .map(|k| ((*k).to_owned(), driver_string(&mut input)))
                    .collect();
            if input.byte() % 2 == 1 {
                attributes.push(("eni".to_owned(), driver_string(&mut input)));
            }
            let stats = (0..input.byte() % 6).map(|_| (stat_name(&mut input), input.u64())).collect();
            devices.push(CapturedDevice { name, attributes, stats });
        }
        samples.push(CapturedSample { at_ms, devices });
        at_ms += 1 + i64::from(input.u16());
    }
    let again = reparse(&samples);
    for (i, (want, got)) in samples.iter().zip(&again.samples).enumerate() {
        for (w, g) in want.devices.iter().zip(&got.devices) {
            assert_eq!(w.name, g.name, "sample {i}: a device name did not round trip");
            assert_eq!(w.attributes, g.attributes, "sample {i}: attribute values did not round trip");
            assert_eq!(w.stats, g.stats, "sample {i}: stats did not round trip");
        }
    }
    assert_eq!(again.samples, samples, "written samples did not read back the same");
}

/// `samples` through the writer and the parser.
fn reparse(samples: &[CapturedSample]) -> Capture {
    let mut out = capture::HEADER.as_bytes().to_vec();
    for s in samples {
        capture::write_sample(&mut out, s).expect("writing to memory");
    }
    let text = String::from_utf8(out).expect("the writer writes UTF-8");
    capture::parse(&text, "rewritten", "eth0", 0)
        .unwrap_or_else(|e| panic!("the writer wrote a capture the parser refuses: {e}\n{text}"))
}

/// A name the kernel accepts for an interface: 1 to 15 bytes, none of them NUL, `/`, `:` or
/// ASCII white space (`dev_valid_name`); enawatch holds it as lossy UTF-8.
fn interface_name(input: &mut Input<'_>) -> String {
    let raw: Vec<u8> = input
        .run(15)
        .iter()
        .copied()
        .filter(|b| !matches!(b, 0 | b'/' | b':' | b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
        .collect();
    let name = String::from_utf8_lossy(&raw).into_owned();
    if name.is_empty() {
        "eth0".to_owned()
    } else {
        name
    }
}

/// A driver string (`ETHTOOL_GDRVINFO` field): up to 31 bytes before the NUL, anything else.
fn driver_string(input: &mut Input<'_>) -> String {
    input.text(31).replace('\0', "")
}

/// A stat name (`ETHTOOL_GSTRINGS`): up to 31 bytes. The capture keeps `ethtool -S`'s layout
/// (`NAME: VALUE`), which cannot hold white space or control characters in a name; drivers
/// name stats with identifiers, so those are left out here.
fn stat_name(input: &mut Input<'_>) -> String {
    input.text(31).chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect()
}

// === Sampler and exposition ===

/// Stat names the sampler target draws layouts from: the allowance stats, ordinary ones, and
/// names that need escaping or sanitising in the compatibility families.
const STAT_NAMES: [&str; 16] = [
    "bw_in_allowance_exceeded",
    "bw_out_allowance_exceeded",
    "pps_allowance_exceeded",
    "conntrack_allowance_exceeded",
    "linklocal_allowance_exceeded",
    "conntrack_allowance_available",
    "rx_bytes",
    "tx_packets",
    "queue_0_tx_cnt",
    "rx-queue.0/drops",
    "tx_rx_tx",
    "a\"b\\c\nd",
    "é",
    "",
    "_",
    "RX Errors",
];

/// A source replaying scripted samples.
/// Device names of the sampler target; the third needs escaping in a label value.
const DEVICES: [&str; 3] = ["ens5", "eth1", "x\"\\y"];

/// Runs the sampler over arbitrary stat layouts, values and events (as any source may give
/// them: values always as many as names, times moving forward), with the local alerts on,
/// and renders every snapshot in both exposition formats with both compatibility families.
pub fn sampler(data: &[u8]) {
    let mut input = Input(data);
    let compat_stats = match input.byte() % 4 {
        0 => None,
        1 => Some(".*"),
        2 => Some("allowance"),
        _ => Some("^(rx|tx)"),
    }
    .map(|re| Regex::new(re).expect("a valid regex"));
    let settings = crate::sampler::Settings {
        interval: Duration::from_secs(1),
        compat_stats,
        forget_after_ms: i64::from(input.u16()) * 100,
    };
    // Which ticks are rendered (the last always is): rendering dominates the target's cost,
    // and the state a render can trip over is built by the ticks before it.
    let renders = input.u32();
    let script = script(&mut input);
    let ticks = script.len();
    let store = Arc::new(Store::new(64));
    let hook = Local::new(Evaluator::new(default_rules()), None);
    let mut sampler = Sampler::new(Box::new(script), settings, store).with_hook(hook);
    let options = Options {
        compat: vec![Compat::Showmax, Compat::NodeExporter],
        interval: Duration::from_secs(1),
        notify: None,
        remote_write: None,
    };
    let mut previous: HashMap<String, ([u64; 5], [f64; 5])> = HashMap::new();
    let mut tick = 0;
    while let Some(snapshot) = sampler.tick(0) {
        tick += 1;
        let mut now = HashMap::new();
        for d in &snapshot.devices {
            let name = &d.device.name;
            assert_eq!(d.values.len(), d.schema.names.len(), "{name}: values and stat layout differ");
            assert!(
                d.compat.iter().all(|&i| i < d.schema.names.len()),
                "{name}: a compat position is past the layout"
            );
            let c = &d.counters;
            if let Some((packets, seconds)) = previous.get(name) {
                for a in 0..5 {
                    assert!(c.packets[a] >= packets[a], "{name}: packet counter {a} decreased");
                    assert!(c.seconds[a] >= seconds[a], "{name}: seconds counter {a} decreased");
                }
            }
            now.insert(name.clone(), (c.packets, c.seconds));
        }
        previous = now;
        if tick < ticks && renders & (1 << tick) == 0 {
            continue;
        }
        for format in [Format::OpenMetrics, Format::Text] {
            check_exposition(&crate::metrics::render(&snapshot, &options, format).into_text(), format);
        }
    }
}

/// Samples as a source may give them: each device read (under its current stat layout or
/// a new one, values as many as names), failing, vanishing or absent; times moving forward.
fn script(input: &mut Input<'_>) -> VecDeque<Sample> {
    let mut at_ms: i64 = 1_700_000_000_000;
    let mut layouts: [Option<Arc<Schema>>; 3] = [None, None, None];
    let mut last: [Vec<u64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut script = VecDeque::new();
    while !input.is_empty() && script.len() < 16 {
        at_ms += 1 + i64::from(input.byte()) * 250;
        let mut sample = Sample { at_ms, ..Sample::default() };
        let actions = input.byte();
        for d in 0..DEVICES.len() {
            let name = DEVICES[d];
            match (actions >> (2 * d)) & 3 {
                0 => {}
                1 | 2 => {
                    if (actions >> (2 * d)) & 3 == 2 || layouts[d].is_none() {
                        // Sometimes another device's layout, shared as the live source shares
                        // equal ones (the renderers group devices by it).
                        let byte = input.byte();
                        let other = layouts[usize::from(byte >> 2) % DEVICES.len()].clone();
                        layouts[d] = Some(match other {
                            Some(shared) if byte % 4 == 0 => shared,
                            _ => {
                                // A driver's stat names are distinct (ENA's are; `ethtool -S`
                                // lists each once): a layout is a selection of the names in any
                                // order.
                                let mut names: Vec<String> = Vec::new();
                                for _ in 0..input.byte() % 9 {
                                    let name = STAT_NAMES[usize::from(input.byte()) % STAT_NAMES.len()];
                                    if !names.iter().any(|n| n == name) {
                                        names.push(name.to_owned());
                                    }
                                }
                                Arc::new(Schema::new(names))
                            }
                        });
                    }
                    let schema = Arc::clone(layouts[d].as_ref().expect("set above"));
                    let values: Vec<u64> = (0..schema.names.len())
                        .map(|i| {
                            let prev = last[d].get(i).copied().unwrap_or(0);
                            match input.byte() % 8 {
                                0 => 0,
                                1 => prev,
                                2 => prev.saturating_add(1),
                                3 => prev.saturating_add(u64::from(input.u16())),
                                4 => u64::from(input.byte()),
                                5 => input.u64(),
                                _ => prev.saturating_add(u64::from(input.byte())),
                            }
                        })
                        .collect();
                    last[d].clone_from(&values);
                    let linklocal = (input.byte() % 4 == 0).then(|| [input.u32(), input.u32(), input.u32()]);
                    sample.readings.push(Reading {
                        device: Arc::new(device(name)),
                        schema,
                        values: values.into(),
                        linklocal,
                    });
                }
                _ => {
                    let device = name.to_owned();
                    sample.events.push(match input.byte() % 5 {
                        0 => Event::Vanished { device },
                        1 => Event::SchemaChanged { device },
                        2 => Event::ReadFailed { device, reason: ReadError::Io, detail: "EIO".into() },
                        3 => Event::ReadFailed {
                            device,
                            reason: ReadError::NotSupported,
                            detail: String::new(),
                        },
                        _ => Event::ReadFailed {
                            device,
                            reason: ReadError::PermissionDenied,
                            detail: "\"".into(),
                        },
                    });
                    if matches!(sample.events.last(), Some(Event::Vanished { .. })) {
                        layouts[d] = None;
                        last[d].clear();
                    }
                }
            }
        }
        sample.readings.sort_by(|a, b| a.device.name.cmp(&b.device.name));
        script.push_back(sample);
    }
    script
}

fn device(name: &str) -> Device {
    Device {
        name: name.to_owned(),
        driver: "ena".into(),
        driver_version: "2.13.0g".into(),
        firmware_version: String::new(),
        bus_info: "0000:00:05.0".into(),
        eni: None,
    }
}

/// Checks an exposition against the grammar of its format, as Prometheus parses it: every
/// family declared once, its samples right after it and named after it, labels well-formed
/// and escaped, values numbers, no series twice, OpenMetrics ending in `# EOF`.
pub fn check_exposition(body: &str, format: Format) {
    let om = format == Format::OpenMetrics;
    assert!(body.ends_with('\n'), "the body ends without a newline");
    let mut families = HashSet::with_hasher(Fnv::default());
    let mut series = HashSet::with_capacity_and_hasher(body.len() / 64, Fnv::default());
    let mut family: Option<(&str, &str)> = None; // name, type
    let mut last = "";
    for (i, line) in body.lines().enumerate() {
        let at = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
        assert!(last != "# EOF", "{}", at("a line after # EOF"));
        last = line;
        if om && line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(metric_name(name), "{}", at("a family name that is no metric name"));
            assert!(families.insert(name), "{}", at("a family declared twice"));
            check_escapes(help, if om { "\\n\"" } else { "\\n" }).unwrap_or_else(|e| panic!("{}", at(&e)));
            family = Some((name, ""));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let Some((current, declared)) = family.as_mut() else { panic!("{}", at("TYPE without HELP")) };
            assert_eq!(name, *current, "{}", at("TYPE of another family than its HELP"));
            let kinds: &[&str] = if om {
                &["counter", "gauge", "histogram", "unknown"]
            } else {
                &["counter", "gauge", "histogram", "untyped"]
            };
            assert!(kinds.contains(&kind) && declared.is_empty(), "{}", at("a bad or second TYPE"));
            *declared = kind;
            continue;
        }
        assert!(!line.starts_with('#'), "{}", at("an unexpected comment"));
        let Some((name, kind)) = &family else { panic!("{}", at("a sample before any family")) };
        assert!(!kind.is_empty(), "{}", at("a sample of a family without # TYPE"));
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..end];
        let suffixes: &[&str] = match (*kind, om) {
            ("counter", true) => &["_total"],
            ("histogram", _) => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        assert!(
            suffixes.iter().any(|s| sample.strip_suffix(s) == Some(*name)),
            "{}",
            at(&format!("a sample not of its family {name} ({kind})"))
        );
        let mut rest = &line[end..];
        let mut label_names: Vec<&str> = Vec::new();
        if let Some(labels) = rest.strip_prefix('{') {
            rest = labels;
            loop {
                let eq = rest.find('=').unwrap_or_else(|| panic!("{}", at("a label without =")));
                let label = &rest[..eq];
                assert!(label_name(label), "{}", at("a bad label name"));
                assert!(!label_names.contains(&label), "{}", at("a label twice in one sample"));
                label_names.push(label);
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("{}", at("an unquoted label value")));
                let close =
                    closing_quote(rest).unwrap_or_else(|| panic!("{}", at("an unterminated label value")));
                check_escapes(&rest[..close], "\\n\"").unwrap_or_else(|e| panic!("{}", at(&e)));
                rest = &rest[close + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else {
                    rest = rest.strip_prefix('}').unwrap_or_else(|| panic!("{}", at("labels not closed")));
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{}", at("no space before the value")));
        let number = matches!(value, "NaN" | "+Inf" | "-Inf") || value.parse::<f64>().is_ok();
        assert!(number && !value.contains(' '), "{}", at("a value that is no number"));
        let key = &line[..line.len() - value.len() - 1];
        assert!(series.insert(key), "{}", at("a series twice in one exposition"));
    }
    assert!(!om || last == "# EOF", "OpenMetrics must end with # EOF");
}

/// FNV-1a for the exposition check's sets: SipHash over every series line was most of the
/// sampler target's time (sorting instead is worse: libFuzzer traces every `memcmp`).
type Fnv = std::hash::BuildHasherDefault<Fnv1a>;

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The byte offset of the `"` that ends a label value (escaped ones skipped).
fn closing_quote(s: &str) -> Option<usize> {
    // Most values have no escapes: find the quote with `memchr` (the loop below is traced by
    // the fuzzer's instrumentation on every byte, which halves the target's speed).
    let first = s.find('"')?;
    if !s[..first].contains('\\') {
        return Some(first);
    }
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Only `\\` and the escapes listed in `allowed` (after the backslash) appear.
fn check_escapes(s: &str, allowed: &str) -> Result<(), String> {
    if !s.contains('\\') {
        return Ok(());
    }
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e) if allowed.contains(e) => {}
                other => return Err(format!("a bad escape \\{other:?}")),
            }
        }
    }
    Ok(())
}

// === Kernel boundary ===

/// One datagram of an `RTM_GETLINK` dump, then the same bytes cut into several datagrams.
pub fn netlink(data: &[u8]) {
    let mut links = Vec::new();
    let _ = sys::parse_dump(data, &mut links);
    for l in &links {
        assert!(!l.name.contains('\0'), "a link name holds a NUL");
    }
    let mut links = Vec::new();
    for part in data.chunks(64) {
        if !matches!(sys::parse_dump(part, &mut links), Ok(false)) {
            break;
        }
    }
}

/// The buffers `ETHTOOL_GSTRINGS` and `ETHTOOL_GSTATS` leave, decoded for a count that is the
/// one the buffer says, or another.
pub fn ethtool(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte();
    let buf = input.rest();
    let claimed = buf.get(8..12).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let expected = if mode % 2 == 0 { claimed } else { usize::from(mode) };
    if let Read::Complete(names) = sys::decode_stat_names(buf, expected) {
        assert_eq!(names.len(), expected, "names decoded for another count");
        assert!(names.iter().all(|n| n.len() <= 32 * 3 && !n.contains('\0')), "a name past its 32 bytes");
    }
    // The same bytes as the words of an `ETHTOOL_GSTATS` buffer (native order, as in memory).
    let words: Vec<u64> = buf
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect();
    let claimed = words.first().map_or(0, |w| {
        let b = w.to_ne_bytes();
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]) as usize
    });
    let expected = if mode % 4 < 2 { claimed } else { usize::from(mode) };
    if let Read::Complete(values) = sys::decode_stats(&words, expected) {
        assert_eq!(values.len(), expected, "values decoded for another count");
    }
}

// === DNS and the link-local meter ===

/// DNS packets through the tap's ingest path: decoded, matched into transactions, expired,
/// judged against throttled intervals, then the families and the report as `/metrics`, the
/// API, the page and `diagnose` show them. Each packet comes with the interface, direction
/// and time the input picks.
pub fn dns(data: &[u8]) {
    let mut input = Input(data);
    let settings = dns::Settings {
        upstreams: dns::families::Upstreams {
            vpc_resolver: vec![Ipv4Addr::new(169, 254, 169, 253).into()],
            nodelocal: vec![Ipv4Addr::new(169, 254, 20, 10).into()],
            cluster_dns: vec![Ipv4Addr::new(10, 100, 0, 10).into()],
        },
        workloads: 4,
        in_flight: 64,
        ..dns::Settings::default()
    };
    let mut stats = DnsStats::new(settings, None);
    let mut now_ms: i64 = 1_700_000_000_000;
    let watched: HashSet<u32> = [1, 2].into();
    while !input.is_empty() {
        now_ms += i64::from(input.byte()) * 37;
        let mode = input.byte();
        let len = usize::from(input.u16() % 1600);
        let packet = input.bytes(len);
        let frame = sys::packet::Frame {
            data: packet,
            ifindex: u32::from(mode % 3),
            outgoing: mode & 4 != 0,
            at_ns: now_ms * 1_000_000,
        };
        stats.ingest(frame);
        if mode & 8 != 0 {
            stats.expire(now_ms * 1_000_000);
        }
        if mode & 16 != 0 {
            stats.interval(u32::from(mode % 3), "ens5", now_ms - 1000, now_ms, mode & 32 != 0);
            let _ = stats.tick(now_ms, &watched);
        }
        stats.check();
    }
    stats.expire(now_ms.saturating_add(60_000) * 1_000_000);
    stats.check();
    let totals = stats.tick(now_ms.saturating_add(60_000), &watched);
    assert!(totals.workloads.len() <= 5, "at most the slots and other");
    let report = stats.report(now_ms);
    let _ = report.to_text();
    serde_json::to_string(&report).expect("the report serializes");
}

/// The link-local meter's inputs: resolv.conf, the VPC resolvers, the BPF program built for
/// them (which the kernel must accept), and packets classified against them.
pub fn linklocal(data: &[u8]) {
    let mut input = Input(data);
    let resolv_conf = input.text(255);
    let mut resolvers = linklocal::vpc_resolvers(&resolv_conf);
    let extra = usize::from(input.u16()) % (MAX_VPC_RESOLVERS + 1);
    let base = input.u32();
    resolvers
        .extend((0..extra).map(|i| Ipv4Addr::from(base.wrapping_add(u32::try_from(i).unwrap_or(0) * 256))));
    resolvers.truncate(MAX_VPC_RESOLVERS);
    let targets = Targets::new(&resolvers);
    let program = targets.program();
    assert!(program.len() <= 4096, "the kernel refuses programs over 4096 instructions");
    for (i, ins) in program.iter().enumerate() {
        let jump = u32::from(ins.code) & 0x07 == libc::BPF_JMP;
        if jump {
            let always = u32::from(ins.code) == libc::BPF_JMP | libc::BPF_JA;
            let far = if always {
                usize::try_from(ins.k).unwrap_or(usize::MAX)
            } else {
                usize::from(ins.jt.max(ins.jf))
            };
            assert!(i.saturating_add(1).saturating_add(far) < program.len(), "instruction {i} jumps out");
        }
    }
    while !input.is_empty() {
        let _ = targets.classify(input.run(64));
    }
}

// === Configuration ===

/// The agent's config file (`--config`): parsed as [`Settings::from_file`] does, resolved;
/// what resolves is printed (`--print-config`), and the print resolves to the same print.
///
/// [`Settings::from_file`]: crate::config::Settings::from_file
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let settings: crate::config::Settings = if text.trim().is_empty() {
        crate::config::Settings::default()
    } else {
        let Ok(s) = yaml_serde::from_str(text) else { return };
        s
    };
    let Ok(config) = settings.resolve() else { return };
    let printed = config.to_yaml();
    let reread: crate::config::Settings = yaml_serde::from_str(&printed)
        .unwrap_or_else(|e| panic!("the printed config does not parse: {e}\n{printed}"));
    let again =
        reread.resolve().unwrap_or_else(|e| panic!("the printed config does not resolve: {e}\n{printed}"));
    assert_eq!(again.to_yaml(), printed, "the printed config reads back differently");
}

/// A scenario file, and the simulation it describes sampled at arbitrary times.
pub fn scenario(data: &[u8]) {
    let mut input = Input(data);
    let times: Vec<u32> = (0..4).map(|_| input.u32()).collect();
    let Ok(yaml) = std::str::from_utf8(input.rest()) else { return };
    let Ok(scenario) = Scenario::parse(yaml, "fuzz") else { return };
    let mut source = SimulatedSource::new(scenario);
    // Wall-clock milliseconds (up to ~136 years in) moving forward, as the sampler gives them.
    let mut now_ms: i64 = 1_700_000_000_000;
    for step in times {
        let sample = source.sample(now_ms).expect("a simulation never ends");
        for r in &sample.readings {
            assert_eq!(r.values.len(), r.schema.names.len(), "values and names differ");
        }
        now_ms += i64::from(step) * 1000 + 1;
    }
}

/// `alerts.rules` of the config file: resolved, then evaluated over a built-in simulation
/// sampled at arbitrary times.
pub fn alerts(data: &[u8]) {
    static SCENARIOS: OnceLock<Vec<Scenario>> = OnceLock::new();
    let mut input = Input(data);
    let which = usize::from(input.byte());
    let steps: Vec<u16> = (0..usize::from(input.byte() % 24)).map(|_| input.u16()).collect();
    let Ok(yaml) = std::str::from_utf8(input.rest()) else { return };
    let Ok(overrides) = yaml_serde::from_str::<Vec<RuleOverride>>(yaml) else { return };
    let Ok(rules) = rules_with(&overrides) else { return };
    let scenarios = SCENARIOS.get_or_init(|| {
        let built_in = crate::source::simulate::BUILT_IN.iter();
        built_in.map(|(name, _)| Scenario::load(name).expect("a built-in scenario")).collect()
    });
    let scenario = scenarios[which % scenarios.len()].clone();
    let settings = crate::sampler::Settings {
        interval: Duration::from_secs(1),
        compat_stats: None,
        forget_after_ms: 60_000,
    };
    let store = Arc::new(Store::new(600));
    let mut sampler = Sampler::new(Box::new(SimulatedSource::new(scenario)), settings, Arc::clone(&store))
        .with_hook(Local::new(Evaluator::new(rules), None));
    let mut now_ms: i64 = 1_700_000_000_000;
    for step in steps {
        let snapshot = sampler.tick(now_ms).expect("a simulation never ends");
        serde_json::to_string(&snapshot.alerts).expect("alerts serialize");
        now_ms += 1 + i64::from(step) * 10;
    }
}

// === Remote-write spool ===

/// Where the spool target writes (a directory of its own per process, on tmpfs when there).
fn spool_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() };
    // One per thread: the unit tests run the target on several at once.
    let thread = format!("{:?}", std::thread::current().id());
    base.join(format!("enawatch-fuzz-spool-{}-{}", std::process::id(), thread.trim_start_matches("ThreadId")))
}

/// The real writer spools a few steps; one damage (a flipped byte, a cut, or an inserted
/// run) hits one segment; reopening must not panic, must keep every file it can partly read,
/// and must return every step whose record and one copy of whose series set are intact.
pub fn spool(data: &[u8]) {
    let mut input = Input(data);
    let dir = &spool_dir();
    let _ = std::fs::remove_dir_all(dir);
    let per_segment = 1 + usize::from(input.byte() % 5);
    let sets: Vec<Arc<SeriesSet>> = (0..=input.byte() % 3)
        .map(|_| {
            let labels = (0..input.byte() % 4).map(|_| input.run(12).to_vec().into_boxed_slice()).collect();
            Arc::new(SeriesSet { labels })
        })
        .collect();
    let (mut spool, _) = Spool::open(dir, per_segment).expect("a new spool opens");
    let mut written = Vec::new();
    for id in 1..=u64::from(1 + input.byte() % 12) {
        let set = Arc::clone(&sets[usize::from(input.byte()) % sets.len()]);
        let values = (0..set.labels.len()).map(|_| f64::from_bits(input.u64())).collect();
        let step = Step { id, at_ms: i64::from(input.u32()), set, values };
        spool.append(&step).expect("spooling to tmpfs");
        written.push(step);
    }
    drop(spool);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the spool directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    files.sort();
    let file = &files[usize::from(input.byte()) % files.len()];
    let clean = std::fs::read(file).expect("a segment");
    let records = records(&clean);
    let mut damaged = clean.clone();
    let at = usize::from(input.u16()) % (clean.len() + 1);
    let kind = input.byte() % 3;
    let damage = match kind {
        0 => {
            let at = at.min(clean.len() - 1);
            damaged[at] ^= input.byte().max(1);
            Damage::Flip(at)
        }
        1 => {
            damaged.truncate(at);
            Damage::Cut(at)
        }
        _ => {
            let run = input.run(64);
            damaged.splice(at..at, run.iter().copied());
            Damage::Insert(at, run.len())
        }
    };
    let hits = |r: &std::ops::Range<usize>| damage.hits(r);
    std::fs::write(file, &damaged).expect("damaging the segment");
    let (_, recovered) = Spool::open(dir, per_segment).expect("a damaged spool opens");

    let intact_sets: HashSet<u32> =
        records.iter().filter(|r| !hits(&r.bytes)).filter_map(|r| r.set.map(|(no, _)| no)).collect();
    let in_file: HashSet<u64> = records.iter().filter_map(|r| r.step.map(|(id, _)| id)).collect();
    for step in &written {
        let intact = if in_file.contains(&step.id) {
            let r = records.iter().find(|r| r.step.is_some_and(|(id, _)| id == step.id)).expect("its record");
            let (_, set_no) = r.step.expect("a step record");
            !hits(&r.bytes) && intact_sets.contains(&set_no)
        } else {
            true // in an undamaged segment
        };
        if !intact {
            continue;
        }
        let found = recovered.steps.iter().find(|s| s.id == step.id);
        let context = || format!("step {} ({:?}): {:?}", step.id, step.set.labels, recovered.damaged);
        let found = found.unwrap_or_else(|| panic!("an intact step was lost: {}", context()));
        assert_eq!(found.at_ms, step.at_ms, "{}", context());
        assert_eq!(found.set.labels, step.set.labels, "{}", context());
        let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&found.values), bits(&step.values), "{}", context());
        assert!(recovered.next_id > step.id, "step id {} would be given again", step.id);
    }
    if records.iter().any(|r| !hits(&r.bytes)) {
        assert!(file.exists(), "a segment with intact records was deleted: {:?}", recovered.damaged);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The one damage the spool target does to a segment.
enum Damage {
    /// The byte at this offset flipped.
    Flip(usize),
    /// The file cut at this offset.
    Cut(usize),
    /// This many bytes inserted at this offset.
    Insert(usize, usize),
}

impl Damage {
    /// Whether it changes the bytes of the record at `r` (an insertion between two records
    /// changes neither).
    fn hits(&self, r: &std::ops::Range<usize>) -> bool {
        match *self {
            Self::Flip(at) => r.contains(&at),
            Self::Cut(at) => r.end > at,
            Self::Insert(at, n) => n > 0 && r.start < at && at < r.end,
        }
    }
}

/// One record of a segment as the writer laid it out (the format in `spool.rs`'s docs).
struct Record {
    bytes: std::ops::Range<usize>,
    /// A set: its number and series count.
    set: Option<(u32, u32)>,
    /// A step: its id and set number.
    step: Option<(u64, u32)>,
}

fn records(data: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while at + 8 <= data.len() {
        let len = u32_at(data, at) as usize;
        let payload = &data[at + 8..at + 8 + len];
        let (set, step) = if payload[0] == 1 {
            (Some((u32_at(payload, 1), u32_at(payload, 5))), None)
        } else {
            let id = u64::from(u32_at(payload, 1)) | u64::from(u32_at(payload, 5)) << 32;
            (None, Some((id, u32_at(payload, 17))))
        };
        out.push(Record { bytes: at..at + 8 + len, set, step });
        at += 8 + len;
    }
    out
}

// === AWS credentials ===

/// Credential endpoint answers: container and IMDS JSON, STS XML (success and error), and
/// the RFC 3339 times they carry.
pub fn credentials(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte();
    let ms = i64::from(input.u32()) * 1000 + i64::from(input.u16() % 1000) + 1_000_000_000_000;
    let Ok(text) = std::str::from_utf8(input.rest()) else { return };
    match mode % 4 {
        0 => {
            let _ = crate::aws::credentials::from_json(text);
        }
        1 => {
            // What `Provider::sts` reads from a successful answer, then from an error.
            let xml_value = crate::aws::credentials::xml_value;
            let field = |name: &str| xml_value(text, name).ok_or(());
            if let (Ok(_), Ok(_), Ok(_), Ok(expiration)) =
                (field("AccessKeyId"), field("SecretAccessKey"), field("SessionToken"), field("Expiration"))
            {
                let _ = parse_rfc3339(&expiration);
            }
            let _ = (xml_value(text, "Code"), xml_value(text, "Message"));
        }
        2 => {
            let _ = parse_rfc3339(text);
        }
        _ => {
            // A well-formed answer with arbitrary strings reads back what it holds.
            let json = serde_json::json!({
                "Code": "Success", "AccessKeyId": text, "SecretAccessKey": text, "Token": text,
                "Expiration": rfc3339(ms),
            });
            let c = crate::aws::credentials::from_json(&json.to_string()).expect("a well-formed answer");
            assert_eq!((c.access_key_id.as_str(), c.session_token.as_deref()), (text, Some(text)));
            assert_eq!(c.expires_ms, Some(ms), "the expiration did not read back");
            let xml = format!("<X><Expiration>{}</Expiration></X>", rfc3339(ms));
            assert_eq!(crate::aws::credentials::xml_value(&xml, "Expiration"), Some(rfc3339(ms)));
        }
    }
}

// === Pod attribution ===

/// A pod list answer, then a watch stream in arbitrary chunks: decoded in chunks and in one
/// piece (the same events, the buffer never past its bound) and applied to the table.
pub fn pods(data: &[u8]) {
    let mut input = Input(data);
    let max = 16 + usize::from(input.byte()) * 4;
    let len = usize::from(input.u16());
    let list = input.bytes(len);
    let mut table = pods::decode_list(list).map(|(t, _, _)| t).unwrap_or_default();
    let mut chunks = Vec::new();
    while !input.is_empty() {
        chunks.push(input.run(255));
    }
    let decode = |chunks: &[&[u8]]| {
        let mut decoder = WatchDecoder::new(max);
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, |d| events.push(d));
        }
        (events, decoder.too_long)
    };
    let whole: Vec<u8> = chunks.concat();
    let (events, too_long) = decode(&chunks);
    let (once, once_too_long) = decode(&[&whole]);
    let text = |events: &[Decoded]| format!("{events:?}");
    assert_eq!(text(&events), text(&once), "the events depend on how the stream was cut");
    assert_eq!(too_long, once_too_long);
    for event in events {
        if let Decoded::Event(e) = event {
            table.apply(&e.kind, &e.object);
        }
    }
    let list = table.list();
    assert!(list.windows(2).all(|w| w[0].0 <= w[1].0), "the table is listed in address order");
}

// === HTTP ===

/// The agent's HTTP app, with a simulated node's history, alerts, DNS analysis and pods.
pub fn http_state() -> Arc<AppState> {
    let scenario = Scenario::load("dns-storm").expect("a built-in scenario");
    let settings = crate::sampler::Settings {
        interval: Duration::from_secs(1),
        compat_stats: None,
        forget_after_ms: 60_000,
    };
    let store = Arc::new(Store::new(900));
    let mut sampler = Sampler::new(Box::new(SimulatedSource::new(scenario)), settings, Arc::clone(&store))
        .with_hook(Local::new(Evaluator::new(default_rules()), None));
    let start = crate::base::wall_ms() - 300_000;
    for t in 0..300 {
        sampler.tick(start + t * 1000);
    }
    let list = include_bytes!("../tests/data/k8s/pods-list.json");
    let pods = pods::decode_list(list).map(|(t, _, _)| t).unwrap_or_default();
    Arc::new(AppState {
        store,
        metrics: Options {
            compat: vec![Compat::Showmax, Compat::NodeExporter],
            // Long enough that /healthz stays healthy while the fuzzer runs.
            interval: Duration::from_secs(86_400),
            notify: None,
            remote_write: None,
        },
        source: "simulation dns-storm".into(),
        started_ms: start,
        history: Duration::from_secs(900),
        dns: Some(Arc::new(Mutex::new(DnsStats::default()))),
        pods: Some(Arc::new(Mutex::new(pods))),
    })
}

/// Paths the HTTP target asks for most of the time.
const PATHS: [&str; 12] = [
    "/",
    "/app.js",
    "/style.css",
    "/metrics",
    "/healthz",
    "/api/v1/status",
    "/api/v1/devices",
    "/api/v1/history",
    "/api/v1/bursts",
    "/api/v1/alerts",
    "/api/v1/dns",
    "/api/v1/pods",
];

const HEADERS: [&str; 6] = ["accept", "accept-encoding", "host", "content-type", "content-length", "range"];

/// An arbitrary request through the in-process router (`http::app`): whatever the method,
/// path, query and headers, no panic and no 5xx.
pub fn http(data: &[u8]) {
    static STATE: OnceLock<(Arc<AppState>, tokio::runtime::Runtime)> = OnceLock::new();
    let (state, runtime) = STATE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
        (http_state(), runtime)
    });
    let mut input = Input(data);
    let choice = input.byte();
    let method = match choice % 16 {
        0..=9 => Method::GET,
        10 => Method::HEAD,
        11 => Method::POST,
        12 => Method::OPTIONS,
        13 => Method::DELETE,
        _ => match Method::from_bytes(input.run(12)) {
            Ok(m) => m,
            Err(_) => return, // not a method token: hyper refuses it before the app
        },
    };
    let path = match choice / 16 {
        0..=11 => PATHS[usize::from(choice / 16)].to_owned(),
        _ => String::from_utf8_lossy(input.run(40)).into_owned(),
    };
    let query = input.run(120);
    let mut uri = path.into_bytes();
    if !query.is_empty() {
        uri.push(b'?');
        uri.extend_from_slice(query);
    }
    let Ok(uri) = Uri::try_from(uri) else { return };
    if uri.path_and_query().is_none() || !uri.path().starts_with('/') {
        return; // hyper serves origin-form requests only
    }
    let mut request = Request::builder().method(method).uri(uri);
    for _ in 0..input.byte() % 4 {
        let pick = input.byte();
        let name = match HEADERS.get(usize::from(pick % 8)) {
            Some(n) => HeaderName::from_static(n),
            None => match HeaderName::from_bytes(input.run(16)) {
                Ok(n) => n,
                Err(_) => return,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(input.run(60)) else { return };
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Body::from(input.rest().to_vec())) else { return };
    let status = runtime.block_on(async {
        use hyper::service::Service as _;
        let service = hyper_util::service::TowerToHyperService::new(crate::http::app(Arc::clone(state)));
        let response = service.call(request).await.expect("the router is infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
        drop(body);
        status
    });
    assert!(!status.is_server_error(), "{status} for a request");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_golden_expositions_pass_the_checker() {
        check_exposition(include_str!("../tests/golden/metrics.txt"), Format::Text);
        check_exposition(include_str!("../tests/golden/metrics.om.txt"), Format::OpenMetrics);
    }

    #[test]
    fn the_state_of_the_http_target_renders() {
        let state = http_state();
        let snapshot = state.store.latest();
        assert!(!snapshot.devices.is_empty());
        for format in [Format::Text, Format::OpenMetrics] {
            check_exposition(&crate::metrics::render(&snapshot, &state.metrics, format).into_text(), format);
        }
    }

    type Target = fn(&[u8]);

    /// Every target by its name in `fuzz/Cargo.toml`.
    const TARGETS: [(&str, Target); 14] = [
        ("capture_parse", capture_parse),
        ("capture_write", capture_write),
        ("sampler", sampler),
        ("netlink", netlink),
        ("ethtool", ethtool),
        ("dns", dns),
        ("linklocal", linklocal),
        ("config", config),
        ("scenario", scenario),
        ("alerts", alerts),
        ("spool", spool),
        ("credentials", credentials),
        ("pods", pods),
        ("http", http),
    ];

    #[test]
    fn every_target_takes_the_empty_input_and_some_bytes() {
        for (_, t) in TARGETS {
            t(&[]);
            t(&[7; 300]);
            t(&(0..=255).collect::<Vec<u8>>());
        }
    }

    /// The seeds, and every crash the fuzzers found (`fuzz/regressions/TARGET-NAME`, each
    /// fixed with a named test in tests/regression.rs), pass through their targets.
    #[test]
    fn the_seeds_and_the_saved_crashes_pass() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut inputs = Vec::new();
        for (name, target) in TARGETS {
            for entry in std::fs::read_dir(fuzz.join("seeds").join(name)).expect("every target has seeds") {
                inputs.push((entry.unwrap().path(), target));
            }
        }
        for entry in std::fs::read_dir(fuzz.join("regressions")).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap();
            let (_, target) = TARGETS
                .iter()
                .find(|(name, _)| file.strip_prefix(name).is_some_and(|r| r.starts_with('-')))
                .unwrap_or_else(|| panic!("{file}: named after no target"));
            inputs.push((path, *target));
        }
        assert!(inputs.len() > 2 * TARGETS.len(), "{} inputs", inputs.len());
        for (path, target) in inputs {
            let data = std::fs::read(&path).unwrap();
            assert!(
                std::panic::catch_unwind(|| target(&data)).is_ok(),
                "{} fails its target",
                path.display()
            );
        }
    }
}
