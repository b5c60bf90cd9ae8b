//! OTLP/HTTP metrics: the second encoding of the queue's steps, an
//! `ExportMetricsServiceRequest` (opentelemetry-proto, `metrics/v1`), encoded by hand like
//! [`super::proto`].
//!
//! ```text
//! ExportMetricsServiceRequest { repeated ResourceMetrics resource_metrics = 1; }
//! ResourceMetrics   { Resource resource = 1; repeated ScopeMetrics scope_metrics = 2; }
//! Resource          { repeated KeyValue attributes = 1; }
//! KeyValue          { string key = 1; AnyValue value = 2; }   AnyValue { string string_value = 1; }
//! ScopeMetrics      { InstrumentationScope scope = 1; repeated Metric metrics = 2; }
//! InstrumentationScope { string name = 1; string version = 2; }
//! Metric            { string name = 1; string description = 2; Gauge gauge = 5; Sum sum = 7; Histogram histogram = 9; }
//! Gauge             { repeated NumberDataPoint data_points = 1; }
//! Sum               { repeated NumberDataPoint data_points = 1; AggregationTemporality aggregation_temporality = 2; bool is_monotonic = 3; }
//! Histogram         { repeated HistogramDataPoint data_points = 1; AggregationTemporality aggregation_temporality = 2; }
//! NumberDataPoint   { repeated KeyValue attributes = 7; fixed64 start_time_unix_nano = 2; fixed64 time_unix_nano = 3; double as_double = 4; }
//! HistogramDataPoint { repeated KeyValue attributes = 9; fixed64 start_time_unix_nano = 2; fixed64 time_unix_nano = 3;
//!                      fixed64 count = 4; double sum = 5; repeated fixed64 bucket_counts = 6; repeated double explicit_bounds = 7; }
//! ```
//!
//! The queue holds what Remote Write sends: one series per sample of `/metrics`, its labels
//! encoded once. For an OTLP endpoint the collector adds two labels of its own to each
//! series: [`TYPE`] (the family's type) and, for counters and histograms, [`START`] (the
//! series' start time), so the spool keeps them and a restarted agent resends points with
//! the start times they had. Here they become the metric's type and the points' start
//! times; a histogram's `_bucket{le}`, `_sum` and `_count` series become one point, with the
//! cumulative buckets made per-bucket counts as OTLP wants.

use std::collections::{BTreeMap, HashMap};

use super::proto::{decode_labels, put_bytes, put_varint};

/// The label carrying the family's type: [`COUNTER`], [`GAUGE`] or [`HISTOGRAM`].
pub(super) const TYPE: &str = "__otlp_type__";
/// The label carrying a counter's or histogram's start time, Unix milliseconds.
pub(super) const START: &str = "__otlp_start_ms__";
pub(super) const COUNTER: &str = "counter";
pub(super) const GAUGE: &str = "gauge";
pub(super) const HISTOGRAM: &str = "histogram";
/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u64 = 2;

/// Identifies a series across steps for its start time: the family and its labels, without
/// the name, `le` and the OTLP labels (a histogram's series share one start).
pub(super) fn series_key<'a>(family: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut labels: Vec<(&str, &str)> =
        labels.into_iter().filter(|(k, _)| !matches!(*k, "__name__" | "le" | TYPE | START)).collect();
    // The same key whatever the order: the collector's labels are not sorted yet, the
    // spool's are.
    labels.sort_unstable();
    let mut key = family.to_owned();
    for (k, v) in labels {
        key.push('\u{0}');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// Start times of an endpoint's counters and histograms: a series starts when first seen,
/// and again when its value goes down (it was re-created: a device that vanished and came
/// back). The agent's counters never go down across driver resets (src/sampler/counters.rs),
/// so a driver reset never moves a start time.
#[derive(Debug, Default)]
pub(super) struct Starts {
    /// Series key → (start, last value).
    series: HashMap<String, (i64, f64)>,
}

impl Starts {
    /// The start of `key` whose value at `at_ms` is `value`.
    pub(super) fn observe(&mut self, key: &str, at_ms: i64, value: f64) -> i64 {
        if let Some((start, last)) = self.series.get_mut(key) {
            if value < *last {
                *start = at_ms;
            }
            *last = value;
            *start
        } else {
            self.series.insert(key.to_owned(), (at_ms, value));
            at_ms
        }
    }

    /// The start of `key` (observed in the same step).
    pub(super) fn get(&self, key: &str) -> Option<i64> {
        self.series.get(key).map(|(s, _)| *s)
    }

    /// Forgets series not in `keep` (gone: if they come back, they start anew).
    pub(super) fn retain(&mut self, keep: &std::collections::HashSet<String>) {
        self.series.retain(|k, _| keep.contains(k));
    }

    /// Picks up where a previous process left off: the last spooled step's start times and
    /// values, so a series that continues keeps its start across an agent restart.
    pub(super) fn seed(&mut self, labels: &[Box<[u8]>], values: &[f64]) {
        for (encoded, value) in labels.iter().zip(values) {
            let Ok(labels) = decode_labels(encoded) else { continue };
            let get = |name: &str| labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let (Some(kind), Some(start), Some(name)) = (get(TYPE), get(START), get("__name__")) else {
                continue;
            };
            let Ok(start) = start.parse::<i64>() else { continue };
            let family = match kind {
                COUNTER => name,
                HISTOGRAM => match name.strip_suffix("_count") {
                    Some(family) => family,
                    None => continue,
                },
                _ => continue,
            };
            let key = series_key(family, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            self.series.insert(key, (start, *value));
        }
    }
}

/// What one series of a step is to OTLP.
struct Series {
    kind: Kind,
    /// The metric's name (a histogram's family name).
    metric: String,
    /// Attributes: the labels without the name, `le` and the OTLP labels.
    attributes: Vec<(String, String)>,
    start_ms: i64,
    /// `le` of a histogram bucket; `_sum` / `_count` of a histogram.
    part: Part,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Gauge,
    Sum,
    Histogram,
}

#[derive(Clone, Copy)]
enum Part {
    Value,
    Bucket(f64),
    HistogramSum,
    HistogramCount,
}

fn describe(encoded: &[u8]) -> Series {
    let labels = decode_labels(encoded).unwrap_or_default();
    let mut name = String::new();
    let mut kind = Kind::Gauge;
    let mut start_ms = 0;
    let mut le = None;
    let mut attributes = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        match k.as_str() {
            "__name__" => name = v,
            TYPE => {
                kind = match v.as_str() {
                    COUNTER => Kind::Sum,
                    HISTOGRAM => Kind::Histogram,
                    _ => Kind::Gauge,
                };
            }
            START => start_ms = v.parse().unwrap_or(0),
            "le" => le = Some(v),
            _ => attributes.push((k, v)),
        }
    }
    let (metric, part) = if kind == Kind::Histogram {
        if let Some(family) = name.strip_suffix("_bucket") {
            let bound = match le.as_deref() {
                Some("+Inf") | None => f64::INFINITY,
                Some(b) => b.parse().unwrap_or(f64::INFINITY),
            };
            (family.to_owned(), Part::Bucket(bound))
        } else if let Some(family) = name.strip_suffix("_sum") {
            (family.to_owned(), Part::HistogramSum)
        } else if let Some(family) = name.strip_suffix("_count") {
            (family.to_owned(), Part::HistogramCount)
        } else {
            (name, Part::Value)
        }
    } else {
        if let Some(le) = le {
            attributes.push(("le".into(), le));
        }
        (name, Part::Value)
    };
    Series { kind, metric, attributes, start_ms, part }
}

/// One histogram point being assembled.
#[derive(Default)]
struct HistogramPoint {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

type Attributes = Vec<(String, String)>;
/// Metric name and kind → (attributes, start ms, time ms, value), in arrival order.
type Numbers = BTreeMap<(String, Kind), Vec<(Attributes, i64, i64, f64)>>;
/// Histogram name → ((attributes, time ms), start ms, point), in arrival order.
type Histograms = BTreeMap<String, Vec<((Attributes, i64), i64, HistogramPoint)>>;

/// Encodes `points` (series labels as the queue holds them, Unix ms, value), in time order,
/// as one `ExportMetricsServiceRequest` with `resource` as its resource's attributes.
pub(super) fn export_request<'a>(
    resource: &[(String, String)],
    version: &str,
    points: impl IntoIterator<Item = (&'a [u8], i64, f64)>,
) -> Vec<u8> {
    let mut described: HashMap<&[u8], Series> = HashMap::new();
    let mut numbers = Numbers::new();
    let mut histograms = Histograms::new();
    for (labels, at_ms, value) in points {
        let s = described.entry(labels).or_insert_with(|| describe(labels));
        match (s.kind, s.part) {
            (Kind::Histogram, part) if !matches!(part, Part::Value) => {
                let list = histograms.entry(s.metric.clone()).or_default();
                let key = (s.attributes.clone(), at_ms);
                let index = if let Some(i) = list.iter().rposition(|(k, _, _)| *k == key) {
                    i
                } else {
                    list.push((key, s.start_ms, HistogramPoint::default()));
                    list.len() - 1
                };
                let point = &mut list[index].2;
                match part {
                    Part::Bucket(bound) => point.buckets.push((bound, value)),
                    Part::HistogramSum => point.sum = value,
                    Part::HistogramCount => point.count = value,
                    Part::Value => {}
                }
            }
            (kind, _) => {
                let kind = if kind == Kind::Histogram { Kind::Gauge } else { kind };
                numbers.entry((s.metric.clone(), kind)).or_default().push((
                    s.attributes.clone(),
                    s.start_ms,
                    at_ms,
                    value,
                ));
            }
        }
    }
    let mut metrics = encode_numbers(&numbers);
    metrics.extend(encode_histograms(&histograms));
    encode_request(resource, version, &metrics)
}

/// One `Metric` (a `Gauge` or a cumulative monotonic `Sum`) per name.
fn encode_numbers(numbers: &Numbers) -> Vec<Vec<u8>> {
    let mut metrics = Vec::new();
    for ((name, kind), points) in numbers {
        let mut data = Vec::new();
        for (attributes, start_ms, at_ms, value) in points {
            let mut p = Vec::with_capacity(64);
            for (k, v) in attributes {
                put_bytes(&mut p, 7, &key_value(k, v));
            }
            if *kind == Kind::Sum {
                put_fixed64(&mut p, 2, nanos(*start_ms));
            }
            put_fixed64(&mut p, 3, nanos(*at_ms));
            put_fixed64(&mut p, 4, value.to_bits());
            put_bytes(&mut data, 1, &p);
        }
        let mut metric = Vec::with_capacity(data.len() + 64);
        put_bytes(&mut metric, 1, name.as_bytes());
        if *kind == Kind::Sum {
            put_varint_field(&mut data, 2, CUMULATIVE);
            put_varint_field(&mut data, 3, 1);
            put_bytes(&mut metric, 7, &data);
        } else {
            put_bytes(&mut metric, 5, &data);
        }
        metrics.push(metric);
    }
    metrics
}

/// One cumulative `Histogram` per name.
fn encode_histograms(histograms: &Histograms) -> Vec<Vec<u8>> {
    let mut metrics = Vec::new();
    for (name, points) in histograms {
        let mut data = Vec::new();
        for ((attributes, at_ms), start_ms, point) in points {
            let mut p = Vec::with_capacity(128);
            for (k, v) in attributes {
                put_bytes(&mut p, 9, &key_value(k, v));
            }
            put_fixed64(&mut p, 2, nanos(*start_ms));
            put_fixed64(&mut p, 3, nanos(*at_ms));
            put_fixed64(&mut p, 4, count(point.count));
            put_fixed64(&mut p, 5, point.sum.to_bits());
            let mut buckets = point.buckets.clone();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            // Prometheus' buckets are cumulative; OTLP's are per bucket, the last one
            // (above the last bound) included.
            let mut counts = Vec::with_capacity(buckets.len() * 8 + 8);
            let mut bounds = Vec::with_capacity(buckets.len() * 8);
            let mut below = 0.0;
            for (bound, cumulative) in &buckets {
                counts.extend_from_slice(&count((cumulative - below).max(0.0)).to_le_bytes());
                below = *cumulative;
                if bound.is_finite() {
                    bounds.extend_from_slice(&bound.to_bits().to_le_bytes());
                }
            }
            if buckets.last().is_none_or(|(b, _)| b.is_finite()) {
                counts.extend_from_slice(&count((point.count - below).max(0.0)).to_le_bytes());
            }
            put_bytes(&mut p, 6, &counts);
            put_bytes(&mut p, 7, &bounds);
            put_bytes(&mut data, 1, &p);
        }
        put_varint_field(&mut data, 2, CUMULATIVE);
        let mut metric = Vec::with_capacity(data.len() + 64);
        put_bytes(&mut metric, 1, name.as_bytes());
        put_bytes(&mut metric, 9, &data);
        metrics.push(metric);
    }
    metrics
}

/// The request around encoded `Metric`s: one resource, one scope.
fn encode_request(resource: &[(String, String)], version: &str, metrics: &[Vec<u8>]) -> Vec<u8> {
    let mut scope_metrics = Vec::new();
    let mut scope = Vec::new();
    put_bytes(&mut scope, 1, b"enawatch");
    put_bytes(&mut scope, 2, version.as_bytes());
    put_bytes(&mut scope_metrics, 1, &scope);
    for m in metrics {
        put_bytes(&mut scope_metrics, 2, m);
    }
    let mut res = Vec::new();
    for (k, v) in resource {
        put_bytes(&mut res, 1, &key_value(k, v));
    }
    let mut resource_metrics = Vec::with_capacity(scope_metrics.len() + res.len() + 16);
    put_bytes(&mut resource_metrics, 1, &res);
    put_bytes(&mut resource_metrics, 2, &scope_metrics);
    let mut out = Vec::with_capacity(resource_metrics.len() + 8);
    put_bytes(&mut out, 1, &resource_metrics);
    out
}

/// A `KeyValue` with a string value.
fn key_value(k: &str, v: &str) -> Vec<u8> {
    let mut any = Vec::with_capacity(v.len() + 4);
    put_bytes(&mut any, 1, v.as_bytes());
    let mut kv = Vec::with_capacity(k.len() + any.len() + 8);
    put_bytes(&mut kv, 1, k.as_bytes());
    put_bytes(&mut kv, 2, &any);
    kv
}

fn put_fixed64(out: &mut Vec<u8>, field: u8, v: u64) {
    out.push(field << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_varint_field(out: &mut Vec<u8>, field: u8, v: u64) {
    out.push(field << 3);
    put_varint(out, v);
}

/// Unix ms as Unix ns (times before 1970 are not samples the agent takes).
fn nanos(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

/// A histogram count, carried as a float by the queue, as OTLP's integer.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts are non-negative integers"
)]
fn count(v: f64) -> u64 {
    v.round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_write::proto::encode_labels;

    #[test]
    fn starts_move_only_when_a_series_goes_down_or_is_new() {
        let mut s = Starts::default();
        assert_eq!(s.observe("a", 1000, 5.0), 1000);
        assert_eq!(s.observe("a", 2000, 5.0), 1000);
        assert_eq!(s.observe("a", 3000, 9.0), 1000);
        assert_eq!(s.observe("a", 4000, 1.0), 4000, "went down: restarted");
        s.retain(&std::collections::HashSet::new());
        assert_eq!(s.observe("a", 5000, 7.0), 5000, "gone and back");
    }

    #[test]
    fn seeded_starts_survive_a_restart() {
        let labels =
            encode_labels([("__name__", "x_total"), (START, "1234"), (TYPE, COUNTER), ("device", "eth0")]);
        let mut s = Starts::default();
        s.seed(&[labels.into_boxed_slice()], &[10.0]);
        let key = series_key("x_total", [("device", "eth0")]);
        assert_eq!(series_key("x", [("b", "1"), ("a", "2")]), series_key("x", [("a", "2"), ("b", "1")]));
        assert_eq!(s.observe(&key, 9000, 10.0), 1234);
    }

    #[test]
    fn histogram_buckets_become_per_bucket_counts() {
        let b = |le: &str| {
            encode_labels([("__name__", "h_bucket"), (START, "1000"), (TYPE, HISTOGRAM), ("le", le)])
        };
        let (b1, b2, inf) = (b("1"), b("2"), b("+Inf"));
        let sum = encode_labels([("__name__", "h_sum"), (START, "1000"), (TYPE, HISTOGRAM)]);
        let count = encode_labels([("__name__", "h_count"), (START, "1000"), (TYPE, HISTOGRAM)]);
        let body = export_request(
            &[],
            "0",
            [
                (&b1[..], 2000, 3.0),
                (&b2[..], 2000, 5.0),
                (&inf[..], 2000, 6.0),
                (&sum[..], 2000, 7.5),
                (&count[..], 2000, 6.0),
            ],
        );
        // bucket_counts, packed: 3, 2, 1.
        let packed: Vec<u8> = [3u64, 2, 1].iter().flat_map(|c| c.to_le_bytes()).collect();
        assert!(body.windows(packed.len()).any(|w| w == packed));
    }
}
