//! The Remote Write 1.0 wire format: the four messages of `prometheus.WriteRequest` the agent
//! sends, encoded by hand, and the snappy block compression around them.
//!
//! ```text
//! message WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; repeated MetricMetadata metadata = 3; }
//! message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//! message Label        { string name = 1; string value = 2; }
//! message Sample       { double value = 1; int64 timestamp = 2; }
//! ```
//!
//! Four messages, two wire types (length-delimited and 64-bit) and varints: about sixty
//! lines, where prost would add a derive macro and two crates to every build. The decoder is
//! for the tests (they check what a receiver gets) and reads any valid encoding of these
//! messages, skipping fields it does not know.

/// Appends `v` as a protobuf varint.
pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        #[expect(clippy::cast_possible_truncation, reason = "keeping the low seven bits is the point")]
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    #[expect(clippy::cast_possible_truncation, reason = "v < 0x80 here")]
    out.push(v as u8);
}

/// The encoded length of a varint.
fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// An `int64` as its varint encodes it: two's complement (sample times are positive anyway).
#[expect(clippy::cast_sign_loss, reason = "the reinterpretation is the encoding")]
fn int64(v: i64) -> u64 {
    v as u64
}

/// Appends field `field` as a length-delimited value (wire type 2).
pub(super) fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The `labels` fields of one `TimeSeries` (each an encoded `Label`), for labels already
/// sorted by name and without empty values. Series keep this encoding for their lifetime, so
/// a batch is assembled from bytes instead of strings.
pub(crate) fn encode_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut label = Vec::with_capacity(64);
    for (name, value) in labels {
        label.clear();
        put_bytes(&mut label, 1, name.as_bytes());
        put_bytes(&mut label, 2, value.as_bytes());
        put_bytes(&mut out, 1, &label);
    }
    out
}

/// Encodes a `WriteRequest` of `series`: each the encoded labels of [`encode_labels`] and
/// its samples (Unix milliseconds, value), oldest first.
pub(crate) fn write_request<'a>(series: impl IntoIterator<Item = (&'a [u8], &'a [(i64, f64)])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    for (labels, samples) in series {
        // A Sample is the value (tag + 8 bytes) and the timestamp (tag + varint).
        let sample_len = |ts: i64| 1 + 8 + 1 + varint_len(int64(ts));
        let len = labels.len()
            + samples
                .iter()
                .map(|&(ts, _)| 1 + varint_len(sample_len(ts) as u64) + sample_len(ts))
                .sum::<usize>();
        out.push(1 << 3 | 2);
        put_varint(&mut out, len as u64);
        out.extend_from_slice(labels);
        for &(ts, value) in samples {
            out.push(2 << 3 | 2);
            put_varint(&mut out, sample_len(ts) as u64);
            out.push(1 << 3 | 1);
            out.extend_from_slice(&value.to_le_bytes());
            out.push(2 << 3);
            put_varint(&mut out, int64(ts));
        }
    }
    out
}

/// Snappy block format (not the framed format), as Remote Write requires.
pub(crate) fn compress(body: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(body).expect("snappy compresses any input below 4 GiB")
}

/// The labels of [`encode_labels`]' output, back as (name, value) pairs.
pub(crate) fn decode_labels(encoded: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (field, value) in fields(encoded)? {
        if let (1, Field::Bytes(label)) = (field, value) {
            out.push(decode_label(label)?);
        }
    }
    Ok(out)
}

/// One `Label` message: (name, value).
fn decode_label(label: &[u8]) -> Result<(String, String), String> {
    let (mut name, mut value) = (String::new(), String::new());
    for (f, v) in fields(label)? {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string());
        match (f, v) {
            (1, Field::Bytes(b)) => name = text(b)?,
            (2, Field::Bytes(b)) => value = text(b)?,
            _ => {}
        }
    }
    Ok((name, value))
}

/// One decoded `TimeSeries`: labels in wire order, then (timestamp ms, value) samples.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedSeries {
    /// (name, value) pairs.
    pub labels: Vec<(String, String)>,
    /// (Unix milliseconds, value).
    pub samples: Vec<(i64, f64)>,
}

/// Decompresses and decodes a Remote Write request body (for tests and receivers).
pub fn decode_request(body: &[u8]) -> Result<Vec<DecodedSeries>, String> {
    let raw = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| format!("snappy: {e}"))?;
    let mut series = Vec::new();
    for (field, value) in fields(&raw)? {
        if let (1, Field::Bytes(ts)) = (field, value) {
            let mut s = DecodedSeries { labels: Vec::new(), samples: Vec::new() };
            for (field, value) in fields(ts)? {
                match (field, value) {
                    (1, Field::Bytes(label)) => s.labels.push(decode_label(label)?),
                    (2, Field::Bytes(sample)) => {
                        let (mut ts, mut v) = (0i64, 0f64);
                        for (f, x) in fields(sample)? {
                            match (f, x) {
                                (1, Field::Fixed64(bits)) => v = f64::from_bits(bits),
                                #[expect(clippy::cast_possible_wrap, reason = "int64 on the wire")]
                                (2, Field::Varint(t)) => ts = t as i64,
                                _ => {}
                            }
                        }
                        s.samples.push((ts, v));
                    }
                    _ => {}
                }
            }
            series.push(s);
        }
    }
    Ok(series)
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

/// The (field number, value) pairs of one message.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 => {
                let (b, rest) = buf.split_at_checked(8).ok_or("truncated fixed64")?;
                buf = rest;
                Field::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|e| e.to_string())?;
                let (b, rest) = buf.split_at_checked(len).ok_or("truncated bytes")?;
                buf = rest;
                Field::Bytes(b)
            }
            5 => {
                buf = buf.get(4..).ok_or("truncated fixed32")?;
                continue;
            }
            w => return Err(format!("wire type {w} is not used by Remote Write")),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for (v, bytes) in
            [(0u64, &[0u8][..]), (1, &[1]), (127, &[0x7f]), (128, &[0x80, 1]), (300, &[0xac, 2])]
        {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len());
        }
        assert_eq!(varint_len(u64::MAX), 10);
        assert_eq!(varint_len(1_790_000_000_000), 6);
    }

    #[test]
    fn a_request_encodes_as_protoc_would_and_reads_back() {
        // The bytes `protoc --encode=prometheus.WriteRequest` gives for
        // timeseries { labels { name: "__name__" value: "up" } samples { value: 1 timestamp: 1000 } }.
        let labels = encode_labels([("__name__", "up")]);
        let body = write_request([(&labels[..], &[(1000, 1.0)][..])]);
        let expected: &[u8] = &[
            0x0a, 0x1e, // timeseries, 30 bytes
            0x0a, 0x0e, 0x0a, 0x08, b'_', b'_', b'n', b'a', b'm', b'e', b'_', b'_', 0x12, 0x02, b'u', b'p',
            0x12, 0x0c, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0xe8, 0x07,
        ];
        assert_eq!(body, expected);

        let labels2 = encode_labels([("__name__", "x_total"), ("device", "ens5")]);
        let samples = [(1_790_000_000_000, 12.5), (1_790_000_001_000, f64::NAN)];
        let body = write_request([(&labels[..], &[(5, 0.0)][..]), (&labels2[..], &samples[..])]);
        let decoded = decode_request(&compress(&body)).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].labels, [("__name__".to_owned(), "up".to_owned())]);
        assert_eq!(decoded[0].samples, [(5, 0.0)]);
        assert_eq!(decoded[1].labels[1], ("device".to_owned(), "ens5".to_owned()));
        assert_eq!(decoded[1].samples[0], samples[0]);
        assert!(decoded[1].samples[1].1.is_nan());
    }
}
