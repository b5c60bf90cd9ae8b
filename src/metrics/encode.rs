//! A small writer for the two exposition formats Prometheus scrapes: the classic text format
//! (0.0.4) and OpenMetrics 1.0. The differences it hides: OpenMetrics names a counter family
//! without its `_total` suffix, calls "untyped" "unknown", escapes `"` in help text, and ends
//! with `# EOF`.

use std::fmt::Write as _;

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

/// Writes families and samples into a `String`.
pub(crate) struct Encoder<'a> {
    out: &'a mut String,
    format: Format,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut String, format: Format) -> Self {
        Self { out, format }
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
        self.out.push_str("# HELP ");
        self.out.push_str(family);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '"' if self.format == Format::OpenMetrics => self.out.push_str("\\\""),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(family);
        self.out.push(' ');
        self.out.push_str(kind);
        self.out.push('\n');
    }

    /// Writes one sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        match value {
            Value::Int(v) => push_u64(self.out, v),
            Value::Float(v) => write_float(self.out, v),
        }
        self.out.push('\n');
    }

    /// Ends the exposition (`# EOF` in OpenMetrics).
    pub fn finish(self) {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    // Label values are interface, driver and stat names: nearly never anything to escape, and
    // copying them whole is several times faster than char by char.
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `v` in decimal, as `write!(out, "{v}")` does but without the formatting machinery,
/// which took a quarter of a `/metrics` render (most samples are integers).
fn push_u64(out: &mut String, mut v: u64) {
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
    out.extend(digits[start..].iter().copied().map(char::from));
}

fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
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
        let mut text = String::new();
        let mut e = Encoder::new(&mut text, Format::Text);
        e.family("x_total", Kind::Counter, "a \"b\"\\\nc");
        e.sample("x_total", &[("device", "a\"b\\c\nd")], Value::Int(7));
        e.finish();
        assert_eq!(
            text,
            "# HELP x_total a \"b\"\\\\\\nc\n# TYPE x_total counter\nx_total{device=\"a\\\"b\\\\c\\nd\"} 7\n"
        );
        let mut om = String::new();
        let mut e = Encoder::new(&mut om, Format::OpenMetrics);
        e.family("x_total", Kind::Counter, "h");
        e.family("u", Kind::Untyped, "h");
        e.sample("x_total", &[], Value::Float(1.5));
        e.finish();
        assert_eq!(om, "# HELP x h\n# TYPE x counter\n# HELP u h\n# TYPE u unknown\nx_total 1.5\n# EOF\n");
    }

    #[test]
    fn integers_print_as_display_does() {
        for v in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut s = String::from("x ");
            push_u64(&mut s, v);
            assert_eq!(s, format!("x {v}"));
        }
    }

    #[test]
    fn floats_print_as_prometheus_parses_them() {
        let mut s = String::new();
        for v in [0.0, 1.0, 0.25, f64::NAN, f64::INFINITY, 12_345_678.5] {
            write_float(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "0 1 0.25 NaN +Inf 12345678.5 ");
    }
}
