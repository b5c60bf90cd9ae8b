//! The allocation-free decoder, by hand-built packets and against simple-dns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use simple_dns::{Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use super::*;

const A: u16 = 1;
const AAAA: u16 = 28;

/// A one-question message built by simple-dns.
pub(crate) fn message(id: u16, name: &str, qtype: u16, reply: Option<u8>) -> Vec<u8> {
    let mut p = if reply.is_some() { Packet::new_reply(id) } else { Packet::new_query(id) };
    if let Some(rcode) = reply {
        *p.rcode_mut() = RCODE::from(u16::from(rcode));
    }
    p.questions.push(Question::new(
        simple_dns::Name::new(name).unwrap(),
        QTYPE::try_from(qtype).unwrap(),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().unwrap()
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&u16::try_from(payload.len() + 8).unwrap().to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    l4
}

/// A TCP segment whose data is `data` as is (a message needs its length prefix: `framed`).
fn tcp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    l4.extend_from_slice(data);
    l4
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut data = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    data.extend_from_slice(message);
    data
}

fn ip4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + l4.len()).unwrap().to_be_bytes();
    let mut ip = vec![0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, protocol, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(l4);
    ip
}

fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let len = u16::try_from(l4.len()).unwrap().to_be_bytes();
    let mut ip = vec![0x60, 0, 0, 0, len[0], len[1], next, 64];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(l4);
    ip
}

/// A query from 10.0.0.10:40000 to 169.254.169.253:53 over UDP.
pub(crate) fn query4(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    ip4([10, 0, 0, 10], [169, 254, 169, 253], UDP, &udp(40000, 53, &message(id, name, qtype, None)))
}

#[test]
fn decodes_a_udp_query_and_its_response() {
    let q = query4(7, "Example.COM", A);
    let d = parse(&q).unwrap();
    assert_eq!(d.src, (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)), 40000));
    assert_eq!(d.dst, (IpAddr::V4(Ipv4Addr::new(169, 254, 169, 253)), 53));
    assert_eq!((d.tcp, d.id, d.response, d.truncated, d.rcode, d.qtype), (false, 7, false, false, 0, A));
    assert_eq!(d.name.as_str(), "example.com");
    assert_eq!(d.name.as_bytes().len(), 11);
    assert_eq!(d.message, &message(7, "Example.COM", A, None)[..]);

    let r = ip4(
        [169, 254, 169, 253],
        [10, 0, 0, 10],
        UDP,
        &udp(53, 40000, &message(7, "x.local", AAAA, Some(3))),
    );
    let d = parse(&r).unwrap();
    assert!(d.response && d.rcode == 3 && d.qtype == AAAA && !d.tcp);
    assert_eq!(d.dst.0, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)));
}

#[test]
fn decodes_tcp_over_ipv6() {
    let (client, server) = ("fd00::10".parse().unwrap(), "fd00::53".parse().unwrap());
    let m = message(9, "a.B.c", AAAA, None);
    let ip = ip6(client, server, TCP, &tcp(50000, 53, &framed(&m)));
    let d = parse(&ip).unwrap();
    assert_eq!(d.src, (IpAddr::V6(client), 50000));
    assert_eq!(d.dst, (IpAddr::V6(server), 53));
    assert!(d.tcp);
    assert_eq!((d.id, d.qtype, d.name.as_str()), (9, AAAA, "a.b.c"));
    assert_eq!(d.message, &m[..]);
}

#[test]
fn tcp_segments_that_do_not_start_a_message_are_skipped() {
    let m = message(9, "a.example", A, None);
    let src = [10, 0, 0, 10];
    let dst = [10, 0, 0, 2];
    // A bare ACK, a segment of one byte, a length too short for a header.
    assert!(parse(&ip4(src, dst, TCP, &tcp(5000, 53, &[]))).is_none());
    assert!(parse(&ip4(src, dst, TCP, &tcp(5000, 53, &[0]))).is_none());
    assert!(parse(&ip4(src, dst, TCP, &tcp(5000, 53, &[0, 5, 1, 2, 3, 4, 5]))).is_none());
    // The message without its length prefix: the middle of a stream.
    assert!(parse(&ip4(src, dst, TCP, &tcp(5000, 53, &m))).is_none());
    // Two pipelined messages: the first is decoded.
    let mut two = framed(&m);
    two.extend_from_slice(&framed(&message(10, "b.example", A, None)));
    let ip = ip4(src, dst, TCP, &tcp(5000, 53, &two));
    let d = parse(&ip).unwrap();
    assert_eq!((d.id, d.name.as_str(), d.message), (9, "a.example", &m[..]));
}

#[test]
fn ipv4_options_are_skipped() {
    let mut ip = query4(1, "a.b", A);
    ip[0] = 0x46;
    ip.splice(20..20, [1, 1, 1, 0]);
    let total = u16::try_from(ip.len()).unwrap().to_be_bytes();
    ip[2..4].copy_from_slice(&total);
    assert_eq!(parse(&ip).unwrap().name.as_str(), "a.b");
    // A header length under 20 bytes.
    ip[0] = 0x44;
    assert!(parse(&ip).is_none());
}

#[test]
fn fragments_and_other_protocols_are_not_dns() {
    let good = query4(1, "a.b", A);
    for (at, value) in [(6, 0x20), (6, 0x00), (7, 0x01)] {
        let mut ip = good.clone();
        ip[6] = 0;
        ip[at] |= value;
        assert_eq!(parse(&ip).is_some(), value == 0, "flags {:02x}{:02x}", ip[6], ip[7]);
    }
    let mut icmp = good.clone();
    icmp[9] = 1;
    assert!(parse(&icmp).is_none());
    // IPv6 with a hop-by-hop extension header before UDP.
    let m = udp(5000, 53, &message(1, "a.b", A, None));
    let v6 = ip6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 0, &m);
    assert!(parse(&v6).is_none());
    assert!(parse(&ip6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, UDP, &m)).is_some());
    // Neither version 4 nor 6.
    let mut v5 = good;
    v5[0] = 0x55;
    assert!(parse(&v5).is_none());
}

#[test]
fn padding_after_the_datagram_is_ignored() {
    let m = message(3, "a.b", A, None);
    let mut ip = ip4([10, 0, 0, 10], [10, 0, 0, 2], UDP, &udp(5000, 53, &m));
    ip.extend_from_slice(&[0xff; 6]);
    assert_eq!(parse(&ip).unwrap().message, &m[..]);
}

#[test]
fn a_response_cut_at_the_snap_length_still_decodes() {
    let mut p = Packet::new_reply(5);
    let name = simple_dns::Name::new("big.example").unwrap();
    p.questions.push(Question::new(name.clone(), QTYPE::TYPE(TYPE::TXT), QCLASS::CLASS(CLASS::IN), false));
    let long_string = "x".repeat(200);
    for _ in 0..5 {
        let txt = simple_dns::rdata::TXT::new().with_string(&long_string).unwrap();
        let rr =
            simple_dns::ResourceRecord::new(name.clone(), CLASS::IN, 60, simple_dns::rdata::RData::TXT(txt));
        p.answers.push(rr);
    }
    let m = p.build_bytes_vec().unwrap();
    let ip = ip4([10, 0, 0, 2], [10, 0, 0, 10], UDP, &udp(53, 5000, &m));
    assert!(ip.len() > 1000);
    let d = parse(&ip[..512]).unwrap();
    assert_eq!((d.id, d.response, d.qtype, d.name.as_str()), (5, true, 16, "big.example"));
    assert_eq!(d.message.len(), 512 - 28);
    // Cut inside the question: nothing.
    let question_end = 28 + 12 + 13 + 4;
    assert!(parse(&ip[..question_end]).is_some());
    assert!(parse(&ip[..question_end - 1]).is_none());
}

/// A message with one question whose name is given in wire form.
fn raw(name: &[u8]) -> Vec<u8> {
    let mut m = vec![0, 1, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    ip4([10, 0, 0, 10], [10, 0, 0, 2], UDP, &udp(5000, 53, &m))
}

#[test]
fn names_are_lower_cased_and_escaped() {
    assert_eq!(parse(&raw(&[0])).unwrap().name.as_str(), "");
    assert!(parse(&raw(&[0])).unwrap().name.as_str().is_empty());
    assert_eq!(parse(&raw(b"\x03WwW\x02Ex\0")).unwrap().name.as_str(), "www.ex");
    // A dot and a backslash inside a label, a space, a control byte, a byte over 0x7e.
    let ip = raw(b"\x03a.b\x02\\c\x03 \x01\xff\0");
    let d = parse(&ip).unwrap();
    assert_eq!(d.name.as_str(), r"a\.b.\\c.\032\001\255");
    assert!(d.name.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)));
}

#[test]
fn hostile_names_are_rejected() {
    // A compression pointer, the reserved label types, a label running past the message.
    assert!(parse(&raw(&[0xc0, 12])).is_none());
    assert!(parse(&raw(&[1, b'a', 0xc0, 12])).is_none());
    assert!(parse(&raw(&[0x40, 0])).is_none());
    assert!(parse(&raw(&[0x80, 0])).is_none());
    assert!(parse(&raw(&[63, b'a'])).is_none());
    // 63 bytes is the longest label.
    let mut label = vec![63];
    label.extend_from_slice(&[b'a'; 63]);
    label.push(0);
    assert_eq!(parse(&raw(&label)).unwrap().name.as_str().len(), 63);
    // 255 bytes is the longest wire name: three labels of 63, one of 61, and the root.
    let long = |last: u8| {
        let mut w = Vec::new();
        for _ in 0..3 {
            w.push(63);
            w.extend_from_slice(&[b'a'; 63]);
        }
        w.push(last);
        w.extend(std::iter::repeat_n(b'b', usize::from(last)));
        w.push(0);
        w
    };
    assert_eq!(long(61).len(), 255);
    assert_eq!(parse(&raw(&long(61))).unwrap().name.as_str().len(), 253);
    assert!(parse(&raw(&long(62))).is_none());
    // Short labels escaped past 255 bytes of text.
    let mut escaped = Vec::new();
    for _ in 0..60 {
        escaped.extend_from_slice(&[2, 0, 0]);
    }
    escaped.push(0);
    assert!(parse(&raw(&escaped)).is_none());
    // No question, or two.
    for count in [0u8, 2] {
        let mut m = raw(&[1, b'a', 0]);
        m[28 + 5] = count;
        assert!(parse(&m).is_none());
    }
}

#[test]
fn the_hash_follows_the_lower_cased_name() {
    let h = |n: &str| parse(&query4(1, n, A)).unwrap().name;
    assert_eq!(h("Example.COM"), h("example.com"));
    assert_eq!(h("Example.COM").hash64(), h("example.com").hash64());
    assert_ne!(h("example.com").hash64(), h("example.org").hash64());
    assert_ne!(h("a.bc").hash64(), h("ab.c").hash64());
    assert_ne!(h("a").hash64(), h("a.a").hash64());
}

#[test]
fn every_cut_of_a_packet_decodes_or_not_without_panicking() {
    let m = message(1, "a.example.com", A, None);
    for ip in [
        query4(1, "a.example.com", A),
        ip6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, TCP, &tcp(5000, 53, &framed(&m))),
    ] {
        for cut in 0..ip.len() {
            assert!(parse(&ip[..cut]).is_none(), "cut at {cut}");
        }
        assert!(parse(&ip).is_some());
    }
}

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,20}"
}

proptest! {
    #[test]
    fn agrees_with_simple_dns(
        id in any::<u16>(),
        labels in proptest::collection::vec(label(), 1..6),
        qtype in prop::sample::select(vec![1u16, 2, 5, 6, 12, 15, 16, 28, 33, 65, 255]),
        reply in prop::option::of(0u8..=5),
        truncated in any::<bool>(),
        v6 in any::<bool>(),
        over_tcp in any::<bool>(),
    ) {
        let name = labels.join(".");
        let mut m = message(id, &name, qtype, reply);
        if truncated {
            m[2] |= 0x02;
        }
        let l4 = if over_tcp { tcp(5000, 53, &framed(&m)) } else { udp(5000, 53, &m) };
        let protocol = if over_tcp { TCP } else { UDP };
        let ip = if v6 {
            ip6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED, protocol, &l4)
        } else {
            ip4([1, 2, 3, 4], [5, 6, 7, 8], protocol, &l4)
        };
        let d = parse(&ip).expect("a valid message decodes");
        let p = Packet::parse(&m).unwrap();
        let q = &p.questions[0];
        prop_assert_eq!(d.id, p.id());
        prop_assert_eq!(d.response, p.has_flags(PacketFlag::RESPONSE));
        prop_assert_eq!(d.truncated, p.has_flags(PacketFlag::TRUNCATION));
        prop_assert_eq!(d.rcode, u8::try_from(p.rcode() as u16).unwrap());
        prop_assert_eq!(d.qtype, u16::from(q.qtype));
        prop_assert_eq!(d.name.as_str(), q.qname.to_string().to_ascii_lowercase());
        prop_assert_eq!(d.tcp, over_tcp);
    }

    #[test]
    fn arbitrary_bytes_decode_or_not_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
        // The same bytes behind valid IPv4 and UDP headers, to reach the DNS decoding.
        let _ = parse(&ip4([1, 2, 3, 4], [5, 6, 7, 8], UDP, &udp(1, 53, &bytes)));
        let _ = parse(&ip4([1, 2, 3, 4], [5, 6, 7, 8], TCP, &tcp(1, 53, &bytes)));
    }

    #[test]
    fn mutated_valid_packets_decode_or_not_without_panicking(
        labels in proptest::collection::vec(label(), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut ip = query4(1, &labels.join("."), A);
        for (at, byte) in flips {
            let at = at.index(ip.len());
            ip[at] = byte;
        }
        if let Some(d) = parse(&ip) {
            prop_assert!(d.name.as_str().len() <= NAME_MAX);
            prop_assert!(d.name.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)));
        }
    }
}
