//! The capture format: driver statistics over time, as plain text.
//!
//! It is what `enawatch record` writes and what a shell loop around stock `date` and
//! `ethtool -S` produces on a node without enawatch:
//!
//! ```text
//! # anything after a '#' at the start of a line is a comment
//! @1763794155.123456789                      <- a sample: Unix time, any sub-second digits
//! === ens5 driver=ena driver_version=2.13.0g <- a device (key=value pairs optional)
//! NIC statistics:                            <- ethtool's header (optional)
//!      bw_in_allowance_exceeded: 0           <- one stat per line, any indentation
//! === ens6
//!      …
//! @1763794156.124
//! …
//! ```
//!
//! Stat lines before any `===` line belong to the default device (`eth0`, or `--device`), so
//! `while sleep 1; do date +@%s.%N; ethtool -S ens5; done` is a capture of one device. A bare
//! `ethtool -S` dump, with or without its header, is a capture of one sample.

use std::fmt::Write as _;
use std::io;

/// A parsed capture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// Samples in time order.
    pub samples: Vec<CapturedSample>,
}

/// One sample of a capture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapturedSample {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Devices read in this sample.
    pub devices: Vec<CapturedDevice>,
}

/// One device in one sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapturedDevice {
    /// Interface name.
    pub name: String,
    /// `key=value` attributes of the `===` line (driver, driver_version, …, eni).
    pub attributes: Vec<(String, String)>,
    /// Stat names and values, in driver order.
    pub stats: Vec<(String, u64)>,
}

impl CapturedDevice {
    /// The value of an attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A capture that cannot be read: where and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}:{line}: {message}")]
pub struct ParseError {
    /// File name (or `-`).
    pub origin: String,
    /// 1-based line number.
    pub line: usize,
    /// What was expected and what was found.
    pub message: String,
}

/// Parses a capture. `default_device` names stats that precede any `===` line;
/// `default_at_ms` stamps a capture without any `@` line.
pub fn parse(
    text: &str,
    origin: &str,
    default_device: &str,
    default_at_ms: i64,
) -> Result<Capture, ParseError> {
    let mut capture = Capture::default();
    let mut timed = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| ParseError { origin: origin.to_owned(), line: line_no, message };
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || line.starts_with('#') || trimmed == "NIC statistics:" {
            continue;
        }
        if let Some(ts) = line.strip_prefix('@') {
            let at_ms = parse_timestamp(ts.trim()).ok_or_else(|| {
                err(format!(
                    "expected a Unix timestamp such as @1763794155.123 (date +@%s.%N), found {line:?}"
                ))
            })?;
            if let Some(prev) = capture.samples.last().filter(|_| timed) {
                if at_ms <= prev.at_ms {
                    return Err(err(format!(
                        "timestamps must increase: @{} is not after @{}",
                        fmt_timestamp(at_ms),
                        fmt_timestamp(prev.at_ms)
                    )));
                }
            } else if !capture.samples.is_empty() {
                return Err(err("stats appear before the first @timestamp line".into()));
            }
            timed = true;
            capture.samples.push(CapturedSample { at_ms, devices: Vec::new() });
            continue;
        }
        if capture.samples.is_empty() {
            capture.samples.push(CapturedSample { at_ms: default_at_ms, devices: Vec::new() });
        }
        let sample = capture.samples.last_mut().expect("pushed above");
        if let Some(rest) = line.strip_prefix("===") {
            let mut words = rest.split_whitespace();
            let name = words.next().ok_or_else(|| err("expected a device name after ===".into()))?;
            let name = unescape(name);
            if sample.devices.iter().any(|d| d.name == name) {
                return Err(err(format!("device {name} appears twice in the same sample")));
            }
            let attributes = words
                .map(|w| {
                    w.split_once('=')
                        .map(|(k, v)| (unescape(k), unescape(v)))
                        .ok_or_else(|| err(format!("expected key=value after the device name, found {w:?}")))
                })
                .collect::<Result<_, _>>()?;
            sample.devices.push(CapturedDevice { name, attributes, stats: Vec::new() });
            continue;
        }
        let Some((name, value)) = trimmed.rsplit_once(':') else {
            return Err(err(format!(
                "expected `@TIMESTAMP`, `=== DEVICE`, `NIC statistics:` or `NAME: VALUE`, found {line:?}"
            )));
        };
        let value = value.trim().parse::<u64>().map_err(|e| {
            err(format!(
                "expected an unsigned 64-bit value for {:?}, found {:?} ({e})",
                name.trim(),
                value.trim()
            ))
        })?;
        if sample.devices.is_empty() {
            sample
                .devices
                .push(CapturedDevice { name: default_device.to_owned(), ..CapturedDevice::default() });
        }
        let device = sample.devices.last_mut().expect("pushed above");
        device.stats.push((unescape(name.trim()), value));
    }
    Ok(capture)
}

/// `1763794155.123456789` → Unix milliseconds.
fn parse_timestamp(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    secs.checked_mul(1000)?.checked_add(millis)
}

/// Unix milliseconds → `1763794155.123`.
pub(crate) fn fmt_timestamp(at_ms: i64) -> String {
    format!("{}.{:03}", at_ms.div_euclid(1000), at_ms.rem_euclid(1000))
}

/// A device name, attribute key or attribute value as one word of a `===` line: `%`, `=`,
/// and every character the parser would take as the end of a word or of the line (any
/// Unicode whitespace, any control character: drivers report `\r`, tabs, …) are written as
/// `%XX`, one per UTF-8 byte, so any string reads back as it was.
fn escape_word(v: &str) -> String {
    escape(v, |_, c| c == '%' || c == '=' || c.is_whitespace() || c.is_control())
}

/// A stat name on its own line, before `: value`: the parser trims the name and splits
/// lines, so `%`, control characters and whitespace at either end are written as `%XX`.
/// Whitespace inside stays as drivers write it (`tx queue 0`), as in `ethtool -S`.
fn escape_stat(v: &str) -> String {
    let (start, end) = (v.len() - v.trim_start().len(), v.trim_end().len());
    escape(v, |at, c| c == '%' || c.is_control() || at < start || at >= end)
}

/// `v` with each character for which `special(byte offset, char)` holds as `%XX` bytes.
fn escape(v: &str, special: impl Fn(usize, char) -> bool) -> String {
    let mut out = String::with_capacity(v.len());
    for (at, c) in v.char_indices() {
        if special(at, c) {
            for b in c.encode_utf8(&mut [0; 4]).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes every `%XX`: what [`escape`] writes, and what earlier writers wrote (`%20`,
/// `%3D`, `%0A`, `%25`). A `%` not followed by two hex digits is kept as it is.
fn unescape(v: &str) -> String {
    if !v.contains('%') {
        return v.to_owned();
    }
    let (bytes, mut out, mut i) = (v.as_bytes(), Vec::with_capacity(v.len()), 0);
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()) {
            Some(b) if bytes[i] == b'%' => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Hand-written escapes may not be UTF-8; they read as the replacement character.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The first lines of a capture written by `enawatch record`.
pub const HEADER: &str = "# enawatch capture v1: `enawatch serve --replay FILE`, `enawatch analyze FILE`\n";

/// Writes one sample in the capture format.
pub fn write_sample(out: &mut impl io::Write, sample: &CapturedSample) -> io::Result<()> {
    let mut s = String::with_capacity(4096);
    let _ = writeln!(s, "@{}", fmt_timestamp(sample.at_ms));
    for d in &sample.devices {
        s.push_str("=== ");
        s.push_str(&escape_word(&d.name));
        for (k, v) in &d.attributes {
            let _ = write!(s, " {}={}", escape_word(k), escape_word(v));
        }
        s.push('\n');
        for (name, value) in &d.stats {
            let _ = writeln!(s, "     {}: {value}", escape_stat(name));
        }
    }
    out.write_all(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Capture {
        parse(text, "t", "eth0", 42).unwrap()
    }

    fn error(text: &str) -> String {
        parse(text, "cap.txt", "eth0", 0).unwrap_err().to_string()
    }

    #[test]
    fn bare_dumps_are_one_sample_of_the_default_device() {
        let cases = [
            "NIC statistics:\n     tx_timeout: 0\n     bw_in_allowance_exceeded: 5\n",
            "     tx_timeout: 0\n     bw_in_allowance_exceeded: 5\n",
            "NIC statistics:\n\ttx_timeout: 0\n\tbw_in_allowance_exceeded: 5\n",
            "tx_timeout: 0\r\nbw_in_allowance_exceeded: 5\r\n",
        ];
        for text in cases {
            let c = one(text);
            assert_eq!(c.samples.len(), 1, "{text:?}");
            assert_eq!(c.samples[0].at_ms, 42);
            let d = &c.samples[0].devices[0];
            assert_eq!(d.name, "eth0");
            assert_eq!(
                d.stats,
                [("tx_timeout".into(), 0), ("bw_in_allowance_exceeded".into(), 5)],
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_shared_ena_fixtures_parse() {
        let full = one(include_str!("../../tests/data/ena-6.12-4q-synthetic.ethtool-S.txt"));
        let stats = &full.samples[0].devices[0].stats;
        assert_eq!(stats.len(), 160);
        assert!(stats.contains(&("linklocal_allowance_exceeded".into(), 1893)));
        assert!(stats.iter().any(|(n, _)| n == "queue_3_rx_rx_copybreak_pkt"), "quirky names survive");
        // The AWS documentation's excerpt: no header, space-indented.
        let docs = one(include_str!("../../tests/data/ena-allowances-aws-docs-excerpt.txt"));
        let names: Vec<&str> = docs.samples[0].devices[0].stats.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, crate::base::allowance::ALLOWANCE_STATS);
        // ENA Express excerpt: tab-indented, with the header.
        let srd = one(include_str!("../../tests/data/ena-srd-aws-docs-excerpt.txt"));
        assert_eq!(srd.samples[0].devices[0].stats[0], ("ena_srd_mode".into(), 1));
    }

    #[test]
    fn timed_samples_with_several_devices() {
        let c = one(
            "# comment\n@1763794155.123456789\n=== ens5 driver=ena eni=eni-0a\n     a: 1\n=== ens6\n b: 2\n\n\
             @1763794156.5\n=== ens5\n a: 3\n",
        );
        assert_eq!(c.samples.len(), 2);
        assert_eq!(c.samples[0].at_ms, 1_763_794_155_123);
        assert_eq!(c.samples[1].at_ms, 1_763_794_156_500);
        assert_eq!(c.samples[0].devices[0].attribute("eni"), Some("eni-0a"));
        assert_eq!(c.samples[0].devices[1].stats, [("b".into(), 2)]);
        assert_eq!(c.samples[1].devices[0].stats, [("a".into(), 3)]);
    }

    #[test]
    fn quirky_names_and_extreme_values() {
        let c =
            one("     queue_0_tx_tx_poll: 1\n     refil_partial: 2\n     rx-errors: 3\n     tx queue 0: 4\n\
             \x20    big: 18446744073709551615\n");
        let stats = &c.samples[0].devices[0].stats;
        assert_eq!(stats[2].0, "rx-errors");
        assert_eq!(stats[3], ("tx queue 0".into(), 4));
        assert_eq!(stats[4], ("big".into(), u64::MAX));
    }

    #[test]
    fn errors_name_the_file_the_line_and_what_was_expected() {
        assert_eq!(
            error("@1.0\n a: 1\n big: 18446744073709551616\n"),
            "cap.txt:3: expected an unsigned 64-bit value for \"big\", found \"18446744073709551616\" \
             (number too large to fit in target type)"
        );
        assert!(error("a: 1\nhello world\n").starts_with("cap.txt:2: expected `@TIMESTAMP`"));
        assert!(error(" a: -1\n").starts_with("cap.txt:1: expected an unsigned 64-bit value"));
        assert!(error("@yesterday\n").starts_with("cap.txt:1: expected a Unix timestamp"));
        assert_eq!(
            error("@2.0\n a: 1\n@1.5\n"),
            "cap.txt:3: timestamps must increase: @1.500 is not after @2.000"
        );
        assert_eq!(
            error("@1\n=== a\n x: 1\n=== a\n"),
            "cap.txt:4: device a appears twice in the same sample"
        );
        assert_eq!(error(" a: 1\n@5\n"), "cap.txt:2: stats appear before the first @timestamp line");
        assert!(error("=== \n").contains("expected a device name"));
        assert!(error("=== ens5 oops\n").contains("expected key=value"));
    }

    /// One character of a driver string: anything printable, and plenty of what is not, or
    /// means something in the format.
    const ANY: &str = "\\PC|[\\x00-\\x1f\\x7f-\\x9f \\u{a0}\\u{1680}\\u{2000}-\\u{200a}\\u{2028}\\u{2029}\\u{3000}%=:#@]|%2[05]|===";

    /// Strings of `min` to 12 such characters.
    fn strings(min: usize) -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(&format!("({ANY}){{{min},12}}")).expect("a valid regex")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a driver reports (`\r`, tabs, Unicode whitespace, `%`, `=`, `:` …),
        /// `record` writes a capture that reads back as it was.
        #[test]
        fn any_strings_round_trip(
            name in strings(1),
            value in strings(0),
            key in strings(0),
            stat in strings(0),
        ) {
            let sample = CapturedSample {
                at_ms: 7,
                devices: vec![CapturedDevice {
                    name,
                    attributes: vec![(key, value), ("driver".into(), "ena".into())],
                    stats: vec![(stat, 1), ("x".into(), u64::MAX)],
                }],
            };
            let mut out = HEADER.as_bytes().to_vec();
            write_sample(&mut out, &sample).unwrap();
            let text = String::from_utf8(out).unwrap();
            let parsed = parse(&text, "t", "eth0", 0).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
            proptest::prop_assert_eq!(parsed.samples, vec![sample], "{}", text);
        }
    }

    #[test]
    fn earlier_escapes_and_stray_percent_signs_read_as_before() {
        let c = one("@1\n=== ens5 firmware_version=a%20b%3Dc%25%0Ad pct=100% odd=%zz%4\n x: 1\n");
        assert_eq!(c.samples[0].devices[0].attribute("firmware_version"), Some("a b=c%\nd"));
        assert_eq!(c.samples[0].devices[0].attribute("pct"), Some("100%"));
        assert_eq!(c.samples[0].devices[0].attribute("odd"), Some("%zz%4"));
    }

    #[test]
    fn written_samples_parse_back() {
        let sample = CapturedSample {
            at_ms: 1_763_794_155_007,
            devices: vec![CapturedDevice {
                name: "ens5".into(),
                attributes: vec![
                    ("driver".into(), "ena".into()),
                    ("firmware_version".into(), "a b=c%".into()),
                ],
                stats: vec![("tx_timeout".into(), 0), ("x".into(), u64::MAX)],
            }],
        };
        let mut out = HEADER.as_bytes().to_vec();
        write_sample(&mut out, &sample).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(one(&text).samples, [sample]);
    }
}
