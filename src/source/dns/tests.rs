//! DNS decoding, bounded statistics and search-path amplification.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use simple_dns::{Name, Packet, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use super::*;

const A: u16 = 1;
const AAAA: u16 = 28;

fn message(id: u16, name: &str, qtype: u16, reply: Option<RCODE>) -> Vec<u8> {
    let mut p = match reply {
        None => Packet::new_query(id),
        Some(_) => Packet::new_reply(id),
    };
    if let Some(rcode) = reply {
        *p.rcode_mut() = rcode;
    }
    let t = if qtype == AAAA { TYPE::AAAA } else { TYPE::A };
    p.questions.push(Question::new(
        Name::new(name).unwrap(),
        QTYPE::TYPE(t),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().unwrap()
}

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0]);
    ip.extend_from_slice(payload);
    ip
}

#[test]
fn decodes_queries_and_responses() {
    let q = decode(&message(7, "Example.COM", A, None)).unwrap();
    assert_eq!(q, Message { id: 7, response: false, rcode: 0, name: "example.com".into(), qtype: A });
    let r = decode(&message(7, "x.cluster.local", AAAA, Some(RCODE::NameError))).unwrap();
    assert!(r.response && r.rcode == 3 && r.qtype == AAAA);
    let seen =
        parse_packet(&udp([10, 0, 0, 10], 40000, [169, 254, 169, 253], 53, &message(9, "a.b", A, None)))
            .unwrap();
    assert_eq!(seen.src, (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)), 40000));
    assert_eq!(seen.dst.1, 53);
}

#[test]
fn hostile_input_never_panics() {
    let good = udp([10, 0, 0, 10], 1, [10, 0, 0, 2], 53, &message(1, "a.example.com", A, None));
    for cut in 0..good.len() {
        let _ = parse_packet(&good[..cut]);
    }
    // A compression pointer to itself, a label longer than the message, absurd counts.
    let loops = [0u8, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
    assert!(decode(&loops).is_none());
    assert!(decode(&[0, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 63, b'a']).is_none());
}

proptest! {
    #[test]
    fn arbitrary_bytes_decode_or_not_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
        let _ = parse_packet(&bytes);
    }
}

/// A glibc-style lookup of `name` with ndots:5 and a three-entry search list: A and AAAA for
/// each suffix (NXDOMAIN), then for the name itself (answered).
fn lookup(stats: &mut DnsStats, client: [u8; 4], name: &str, first_id: u16, at_ms: i64) {
    let suffixes = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"];
    let mut id = first_id;
    let mut step = |stats: &mut DnsStats, qname: &str, rcode: RCODE| {
        for qtype in [A, AAAA] {
            id += 1;
            let q = parse_packet(&udp(client, 5000, [10, 0, 0, 2], 53, &message(id, qname, qtype, None)))
                .unwrap();
            stats.observe(&q, at_ms);
            let r =
                parse_packet(&udp([10, 0, 0, 2], 53, client, 5000, &message(id, qname, qtype, Some(rcode))))
                    .unwrap();
            stats.observe(&r, at_ms + 2);
        }
    };
    for s in suffixes {
        step(stats, &format!("{name}.{s}"), RCODE::NameError);
    }
    step(stats, name, RCODE::NoError);
}

#[test]
fn search_path_amplification_is_recognised() {
    let mut stats = DnsStats::default();
    lookup(&mut stats, [10, 0, 0, 10], "example.com", 0, 1_000);
    lookup(&mut stats, [10, 0, 0, 10], "api.example.org", 100, 2_000);
    // Another client resolving absolute names only.
    for id in 0..4 {
        let q =
            parse_packet(&udp([10, 0, 0, 11], 6000, [10, 0, 0, 2], 53, &message(id, "example.com", A, None)))
                .unwrap();
        stats.observe(&q, 3_000);
        let r = parse_packet(&udp(
            [10, 0, 0, 2],
            53,
            [10, 0, 0, 11],
            6000,
            &message(id, "example.com", A, Some(RCODE::NoError)),
        ))
        .unwrap();
        stats.observe(&r, 3_001);
    }
    let report = stats.report(3_000);
    let amplifying: Vec<&ClientReport> = report.amplifying().collect();
    assert_eq!(amplifying.len(), 1);
    let a = amplifying[0].amplification.as_ref().unwrap();
    assert_eq!(amplifying[0].client, "10.0.0.10");
    assert_eq!((a.lookups, a.queries, a.factor, a.would_save, a.recommended_ndots), (2, 16, 4.0, 12, 1));
    assert!((amplifying[0].nxdomain_ratio - 0.75).abs() < 1e-9);
    assert_eq!(report.queries, 20);
}

#[test]
fn a_packet_seen_on_two_interfaces_counts_once() {
    let mut stats = DnsStats::default();
    let q = parse_packet(&udp([10, 0, 0, 10], 5000, [10, 0, 0, 2], 53, &message(1, "a.example", A, None)))
        .unwrap();
    stats.observe(&q, 0);
    stats.observe(&q, 1);
    let report = stats.report(0);
    assert_eq!((report.queries, report.duplicates), (1, 1));
}

#[test]
fn memory_is_bounded_whatever_the_traffic() {
    let mut stats = DnsStats::default();
    for i in 0..20_000u32 {
        let client = i.to_be_bytes();
        let name = format!("n{}.example.com", i % 997);
        let q = parse_packet(&udp(
            [10, client[1], client[2], client[3]],
            1,
            [10, 0, 0, 2],
            53,
            &message(1, &name, A, None),
        ))
        .unwrap();
        stats.observe(&q, i64::from(i));
        // One busy client among them.
        let busy = parse_packet(&udp(
            [10, 9, 9, 9],
            2,
            [10, 0, 0, 2],
            53,
            &message(u16::try_from(i % 60_000).unwrap(), &name, A, None),
        ))
        .unwrap();
        stats.observe(&busy, i64::from(i));
    }
    let report = stats.report(20_000);
    assert!(report.clients.len() <= CLIENTS);
    assert_eq!(report.clients[0].client, "10.9.9.9", "the heavy hitter is kept");
    assert!(report.clients.iter().all(|c| c.top_names.len() <= NAMES));
    assert!(stats.seen.len() <= 4096);
}

#[test]
fn the_capture_program_jumps_stay_inside() {
    let p = program();
    for (i, ins) in p.iter().enumerate() {
        if u32::from(ins.code) & 0x07 == libc::BPF_JMP {
            assert!(i + 1 + usize::from(ins.jt.max(ins.jf)) < p.len(), "instruction {i}");
        }
    }
    assert_eq!(p.last().unwrap().k, 0);
}
