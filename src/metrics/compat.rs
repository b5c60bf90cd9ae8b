//! Metric names of the opt-in compatibility families, so dashboards and rules written for
//! the existing tools keep working.

/// How node_exporter's ethtool collector names a driver stat: `node_ethtool_` followed by the
/// sanitised, lower-cased stat name with `rx`/`tx` words spelled out, and seven well-known
/// stats renamed to `*_total`.
pub fn node_exporter_name(stat: &str) -> String {
    const RENAMED: [(&str, &str); 7] = [
        ("rx_bytes", "received_bytes_total"),
        ("rx_dropped", "received_dropped_total"),
        ("rx_errors", "received_errors_total"),
        ("rx_packets", "received_packets_total"),
        ("tx_bytes", "transmitted_bytes_total"),
        ("tx_errors", "transmitted_errors_total"),
        ("tx_packets", "transmitted_packets_total"),
    ];
    let mut name = String::from("node_ethtool_");
    if let Some((_, renamed)) = RENAMED.iter().find(|(s, _)| *s == stat) {
        name.push_str(renamed);
        return name;
    }
    let sanitized = sanitize(stat).to_lowercase();
    let trimmed = sanitized.trim_start_matches('_');
    let words = spell_out(&spell_out(trimmed, "rx", "received"), "tx", "transmitted");
    name.push_str(&words);
    name
}

/// Replaces every run of characters outside `[0-9A-Za-z_]`, together with the underscores
/// around it, by one `_` (node_exporter's `_*[^0-9A-Za-z_]+_*`).
fn sanitize(s: &str) -> String {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(s.len());
    // Underscores copied from the input since the last replacement: the leading `_*` of
    // the next match absorbs them (but never an underscore a replacement wrote).
    let mut literal_underscores = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if valid(c) {
            out.push(c);
            literal_underscores = if c == '_' { literal_underscores + 1 } else { 0 };
            continue;
        }
        out.truncate(out.len() - literal_underscores);
        while chars.next_if(|&n| !valid(n)).is_some() {}
        while chars.next_if_eq(&'_').is_some() {}
        out.push('_');
        literal_underscores = 0;
    }
    out
}

/// Replaces `word` where it stands as an underscore-separated word, scanning left to right
/// without overlap like Go's `(^|_)word(_|$)` replacement: in `rx_rx_copybreak` only the
/// first `rx` is replaced, because its trailing `_` is consumed by the first match.
fn spell_out(s: &str, word: &str, with: &str) -> String {
    let (bytes, w) = (s.as_bytes(), word.as_bytes());
    let mut out = String::with_capacity(s.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        let lead = if i == 0 && bytes.starts_with(w) {
            Some(0)
        } else if bytes[i] == b'_' && bytes[i + 1..].starts_with(w) {
            Some(1)
        } else {
            None
        };
        if let Some(lead) = lead {
            let end = i + lead + w.len();
            if end == bytes.len() || bytes[end] == b'_' {
                let trail = usize::from(end < bytes.len());
                out.push_str(&s[i..i + lead]);
                out.push_str(with);
                out.push_str(&s[end..end + trail]);
                i = end + trail;
                continue;
            }
        }
        let c = s[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_node_exporter() {
        let cases = [
            // The allowance stats: no rx/tx words, nothing to sanitise.
            ("bw_in_allowance_exceeded", "node_ethtool_bw_in_allowance_exceeded"),
            ("conntrack_allowance_available", "node_ethtool_conntrack_allowance_available"),
            // Renamed well-known stats.
            ("rx_bytes", "node_ethtool_received_bytes_total"),
            ("tx_packets", "node_ethtool_transmitted_packets_total"),
            // rx/tx as words, at the start, in the middle, at the end.
            ("queue_0_tx_cnt", "node_ethtool_queue_0_transmitted_cnt"),
            ("queue_0_rx_bytes", "node_ethtool_queue_0_received_bytes"),
            ("rx_queue_0_xdp_packets", "node_ethtool_received_queue_0_xdp_packets"),
            ("peer_tx", "node_ethtool_peer_transmitted"),
            // Quirky ENA names: only the first of two adjacent words is replaced.
            ("queue_1_tx_tx_poll", "node_ethtool_queue_1_transmitted_tx_poll"),
            ("queue_1_rx_rx_copybreak_pkt", "node_ethtool_queue_1_received_rx_copybreak_pkt"),
            // Not a word: untouched.
            ("rxq0_drops", "node_ethtool_rxq0_drops"),
            ("ctx_switch", "node_ethtool_ctx_switch"),
            // Sanitising: invalid runs and the underscores around them become one `_`.
            ("rx-errors", "node_ethtool_received_errors"),
            ("tx_errors.crc__ _x", "node_ethtool_transmitted_errors_crc_x"),
            ("[0]: rx pkts", "node_ethtool_0_received_pkts"),
            ("__Leading", "node_ethtool_leading"),
            ("RX_Packets", "node_ethtool_received_packets"),
            ("fw.ver", "node_ethtool_fw_ver"),
            ("über", "node_ethtool_ber"),
            // A replacement's own `_` is not absorbed by the next match.
            ("a._.b", "node_ethtool_a__b"),
        ];
        for (stat, want) in cases {
            assert_eq!(node_exporter_name(stat), want, "stat {stat:?}");
        }
    }
}
