//! A small writer for the two exposition formats Prometheus scrapes: the classic text format
//! (0.0.4) and OpenMetrics 1.0. The differences it hides: OpenMetrics names a counter family
//! without its `_total` suffix, calls "untyped" "unknown", escapes `"` in help text, and ends
//! with `# EOF`.

use std::io::Write as _;
use std::sync::{Mutex, PoisonError};

/// The exposition format of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// Picks the format from an `Accept` header, as Prometheus negotiates it: OpenMetrics
    /// when it is offered with a non-zero quality, the text format otherwise.
    pub(crate) fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Self::Text };
        let offered = accept.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let zero_q = parts
                .any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()).is_some_and(|q| q <= 0.0));
            media.eq_ignore_ascii_case("application/openmetrics-text") && !zero_q
        });
        if offered {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }
}

/// Metric types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the name ends in `_total`.
    Counter,
    /// Any value.
    Gauge,
    /// Unknown semantics (node_exporter's ethtool values).
    Untyped,
    /// Cumulative buckets (`_bucket{le}`), `_sum` and `_count`.
    Histogram,
}

/// A sample value.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    /// Exact integer.
    Int(u64),
    /// Float.
    Float(f64),
}

/// A rendered exposition: UTF-8 text in chunks of at most about [`CHUNK`] bytes, each
/// ending with a line.
///
/// Why chunks, and why pooled: a body is several hundred KiB at a few hundred devices. In
/// one allocation, musl's allocator (the image's) maps and unmaps it on every scrape, and
/// the page faults of filling it were over half of a scrape's CPU; glibc's keeps the freed
/// block in its heap anyway. Chunks go back to a pool when dropped (after the response is
/// sent), so the next scrape writes into memory that is already there.
#[derive(Debug, Default)]
pub struct Exposition {
    chunks: Vec<Chunk>,
}

/// The size a chunk is allocated with; a new one starts once less than [`LINE_ROOM`] is left.
pub const CHUNK: usize = 32 << 10;
const LINE_ROOM: usize = 2 << 10;

/// At most this many free chunks are kept (2 MiB; a body of about 1,500 devices): more are
/// left only by many scrapes at once, and are freed.
const POOLED: usize = 64;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// One chunk of an exposition; its memory returns to the pool when it is dropped.
#[derive(Debug)]
pub struct Chunk(Vec<u8>);

impl Chunk {
    fn new() -> Self {
        let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Self(pooled.unwrap_or_else(|| Vec::with_capacity(CHUNK)))
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0);
        // A chunk that grew past its size (a line longer than the room kept) is not reused.
        if bytes.capacity() == CHUNK {
            bytes.clear();
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < POOLED {
                pool.push(bytes);
            }
        }
    }
}

impl Exposition {
    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.0.len()).sum()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunks, in order.
    pub fn into_chunks(self) -> Vec<Chunk> {
        self.chunks
    }

    /// The whole text in one string (tests, and readers that want it whole).
    pub fn into_text(self) -> String {
        let bytes: Vec<u8> = self.chunks.iter().flat_map(|c| c.0.iter().copied()).collect();
        String::from_utf8(bytes).expect("an exposition is written from UTF-8")
    }
}

/// Writes families and samples into an [`Exposition`].
pub(crate) struct Encoder<'a> {
    done: &'a mut Exposition,
    out: Chunk,
    format: Format,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut Exposition, format: Format) -> Self {
        Self { done: out, out: Chunk::new(), format }
    }

    /// Starts a new chunk when the current one has no room for another line.
    fn line_done(&mut self) {
        if self.out.0.len() + LINE_ROOM > CHUNK {
            let full = std::mem::replace(&mut self.out, Chunk::new());
            self.done.chunks.push(full);
        }
    }

    /// Writes the `# HELP` and `# TYPE` lines of a family. `name` is the sample name (with
    /// `_total` for counters).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let family = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let kind = match (self.format, kind) {
            (_, Kind::Counter) => "counter",
            (_, Kind::Gauge) => "gauge",
            (_, Kind::Histogram) => "histogram",
            (Format::Text, Kind::Untyped) => "untyped",
            (Format::OpenMetrics, Kind::Untyped) => "unknown",
        };
        put(&mut self.out.0, b"# HELP ");
        put(&mut self.out.0, family.as_bytes());
        self.out.0.push(b' ');
        for b in help.bytes() {
            match b {
                b'\\' => put(&mut self.out.0, b"\\\\"),
                b'\n' => put(&mut self.out.0, b"\\n"),
                b'"' if self.format == Format::OpenMetrics => put(&mut self.out.0, b"\\\""),
                b => self.out.0.push(b),
            }
        }
        put(&mut self.out.0, b"\n# TYPE ");
        put(&mut self.out.0, family.as_bytes());
        self.out.0.push(b' ');
        put(&mut self.out.0, kind.as_bytes());
        self.out.0.push(b'\n');
        self.line_done();
    }

    /// Writes one sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        put(&mut self.out.0, name.as_bytes());
        if !labels.is_empty() {
            self.out.0.push(b'{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.0.push(b',');
                }
                put(&mut self.out.0, k.as_bytes());
                put(&mut self.out.0, b"=\"");
                escape_label_value(&mut self.out.0, v);
                self.out.0.push(b'"');
            }
            self.out.0.push(b'}');
        }
        self.out.0.push(b' ');
        match value {
            Value::Int(v) => push_u64(&mut self.out.0, v),
            Value::Float(v) => write_float(&mut self.out.0, v),
        }
        self.out.0.push(b'\n');
        self.line_done();
    }

    /// Ends the exposition (`# EOF` in OpenMetrics).
    pub fn finish(mut self) {
        if self.format == Format::OpenMetrics {
            put(&mut self.out.0, b"# EOF\n");
        }
        if !self.out.0.is_empty() {
            self.done.chunks.push(self.out);
        }
    }
}

/// Appends `bytes`, most of them short: names, label names and values. The image links musl,
/// whose `memcpy` starts every copy with string instructions that cost more than a short copy
/// itself (a third of a render at 256 devices went there), so there up to 64 bytes are
/// copied eight at a time, inline. glibc's `memcpy` is faster than that (a render 20 %
/// faster), so other builds call it.
#[inline]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    if cfg!(target_env = "musl") && bytes.len() <= 64 {
        put_words(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
}

#[inline]
fn put_words(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        out.extend_from_slice(&<[u8; 8]>::try_from(word).expect("8 bytes"));
    }
    for &b in words.remainder() {
        out.push(b);
    }
}

fn escape_label_value(out: &mut Vec<u8>, v: &str) {
    // Label values are interface, driver and stat names: nearly never anything to escape, and
    // copying them whole is several times faster than byte by byte.
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        put(out, v.as_bytes());
        return;
    }
    for b in v.bytes() {
        match b {
            b'\\' => put(out, b"\\\\"),
            b'"' => put(out, b"\\\""),
            b'\n' => put(out, b"\\n"),
            b => out.push(b),
        }
    }
}

/// Appends `v` in decimal, as `write!(out, "{v}")` does but without the formatting machinery,
/// which took a quarter of a `/metrics` render (most samples are integers).
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + u8::try_from(v % 10).expect("a decimal digit");
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(out, &digits[start..]);
}

fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        put(out, b"NaN");
    } else if v.is_infinite() {
        put(out, if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_header() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        // What Prometheus 2.x sends.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                    version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
    }

    #[test]
    fn counters_and_escapes_in_both_formats() {
        let mut text = Exposition::default();
        let mut e = Encoder::new(&mut text, Format::Text);
        e.family("x_total", Kind::Counter, "a \"b\"\\\nc");
        e.sample("x_total", &[("device", "a\"b\\c\nd")], Value::Int(7));
        e.finish();
        assert_eq!(
            text.into_text(),
            "# HELP x_total a \"b\"\\\\\\nc\n# TYPE x_total counter\nx_total{device=\"a\\\"b\\\\c\\nd\"} 7\n"
        );
        let mut om = Exposition::default();
        let mut e = Encoder::new(&mut om, Format::OpenMetrics);
        e.family("x_total", Kind::Counter, "h");
        e.family("u", Kind::Untyped, "h");
        e.sample("x_total", &[], Value::Float(1.5));
        e.finish();
        assert_eq!(
            om.into_text(),
            "# HELP x h\n# TYPE x counter\n# HELP u h\n# TYPE u unknown\nx_total 1.5\n# EOF\n"
        );
    }

    #[test]
    fn chunks_end_with_whole_lines_and_stay_within_their_size() {
        let mut out = Exposition::default();
        let mut e = Encoder::new(&mut out, Format::OpenMetrics);
        e.family("x", Kind::Gauge, "h");
        let long = "v".repeat(3 * LINE_ROOM); // a line longer than the room kept for one
        for i in 0..5000 {
            let device = if i == 2500 { long.as_str() } else { "eth0" };
            e.sample("x", &[("device", device)], Value::Int(i));
        }
        e.finish();
        let chunks = out.into_chunks();
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(c.0.ends_with(b"\n"), "a chunk ends inside a line");
            assert!(c.0.len() <= CHUNK + 3 * LINE_ROOM + 64, "a chunk of {} bytes", c.0.len());
        }
        let text = String::from_utf8(chunks.iter().flat_map(|c| c.0.clone()).collect()).unwrap();
        assert_eq!(text.lines().count(), 2 + 5000 + 1);
        assert!(text.ends_with("x{device=\"eth0\"} 4999\n# EOF\n"));
    }

    #[test]
    fn short_copies_in_words_copy_every_byte() {
        let source: Vec<u8> = (0..=70).collect();
        for len in 0..=70 {
            let mut out = b"ab".to_vec();
            put_words(&mut out, &source[..len]);
            assert_eq!(out[2..], source[..len], "{len} bytes");
        }
    }

    #[test]
    fn integers_print_as_display_does() {
        for v in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut s = b"x ".to_vec();
            push_u64(&mut s, v);
            assert_eq!(String::from_utf8(s).unwrap(), format!("x {v}"));
        }
    }

    #[test]
    fn floats_print_as_prometheus_parses_them() {
        let mut s = Vec::new();
        for v in [0.0, 1.0, 0.25, f64::NAN, f64::INFINITY, 12_345_678.5] {
            write_float(&mut s, v);
            s.push(b' ');
        }
        assert_eq!(String::from_utf8(s).unwrap(), "0 1 0.25 NaN +Inf 12345678.5 ");
    }
}
