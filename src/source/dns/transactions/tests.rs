//! The transaction table, sighting by sighting, and as a random walk against a model.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use simple_dns::{Packet, Question, CLASS, QCLASS, QTYPE, RCODE};

use super::super::wire;
use super::*;

const MS: i64 = 1_000_000;
const SECOND: i64 = 1_000 * MS;
/// A wall-clock time in 2023, as the kernel stamps packets.
const T0: i64 = 1_700_000_000 * SECOND;

const A: u16 = 1;
const VETH: u32 = 7;
const ENI: u32 = 2;
const COREDNS_VETH: u32 = 9;
const LO: u32 = 1;

/// One question of one client, to build its packets from.
#[derive(Clone, Copy)]
struct Ask {
    client: [u8; 4],
    port: u16,
    server: [u8; 4],
    id: u16,
    name: &'static str,
    qtype: u16,
    tcp: bool,
}

const ASK: Ask = Ask {
    client: [10, 1, 0, 10],
    port: 40000,
    server: [172, 20, 0, 10],
    id: 77,
    name: "example.com",
    qtype: A,
    tcp: false,
};

fn packet(src: ([u8; 4], u16), dst: ([u8; 4], u16), tcp: bool, message: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if tcp {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        l4.extend_from_slice(&u16::try_from(message.len()).unwrap().to_be_bytes());
    } else {
        l4.extend_from_slice(&u16::try_from(message.len() + 8).unwrap().to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(message);
    let total = u16::try_from(20 + l4.len()).unwrap().to_be_bytes();
    let mut ip = vec![0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, if tcp { 6 } else { 17 }, 0, 0];
    ip.extend_from_slice(&src.0);
    ip.extend_from_slice(&dst.0);
    ip.extend_from_slice(&l4);
    ip
}

/// Decodes a test packet; leaks it, so the `Dns` can outlive the builder (tests only).
fn decode(ip: Vec<u8>) -> Dns<'static> {
    wire::parse(Vec::leak(ip)).expect("a valid packet")
}

impl Ask {
    fn message(&self, reply: Option<(u8, bool)>) -> Vec<u8> {
        let mut p = if reply.is_some() { Packet::new_reply(self.id) } else { Packet::new_query(self.id) };
        if let Some((rcode, _)) = reply {
            *p.rcode_mut() = RCODE::from(u16::from(rcode));
        }
        p.questions.push(Question::new(
            simple_dns::Name::new(self.name).unwrap(),
            QTYPE::try_from(self.qtype).unwrap(),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let mut m = p.build_bytes_vec().unwrap();
        if reply.is_some_and(|(_, tc)| tc) {
            m[2] |= 0x02;
        }
        m
    }

    fn query(&self) -> Dns<'static> {
        decode(packet((self.client, self.port), (self.server, 53), self.tcp, &self.message(None)))
    }

    /// The query after kube-proxy's DNAT: to a CoreDNS pod instead of the service.
    fn query_to(&self, server: [u8; 4]) -> Dns<'static> {
        Self { server, ..*self }.query()
    }

    fn response(&self, rcode: u8) -> Dns<'static> {
        self.reply(rcode, false)
    }

    fn reply(&self, rcode: u8, truncated: bool) -> Dns<'static> {
        let m = self.message(Some((rcode, truncated)));
        decode(packet((self.server, 53), (self.client, self.port), self.tcp, &m))
    }
}

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn table() -> Table {
    Table::new(CAPACITY, TIMEOUT)
}

fn expired(t: &mut Table, now_ns: i64) -> Vec<Done> {
    let mut out = Vec::new();
    t.expire(now_ns, |d| out.push(d));
    out
}

#[test]
fn a_query_and_its_response_are_one_answered_transaction() {
    let mut t = table();
    assert_eq!(t.query(&ASK.query(), T0, VETH, false), Sighting::New);
    assert_eq!(t.in_flight(), 1);
    let done = t.response(&ASK.response(3), T0 + 3 * MS).expect("answered");
    assert_eq!(done.outcome, Outcome::Answered { latency_ns: 3_000_000, rcode: 3 });
    assert_eq!((done.client, done.server, done.sent_ns), (ip(ASK.client), ip(ASK.server), T0));
    assert_eq!((done.id, done.qtype), (77, A));
    assert_eq!((done.egress, done.retransmissions, done.tcp, done.truncated), (None, 0, false, false));
    assert_eq!(t.in_flight(), 0);
    assert!(expired(&mut t, T0 + 60 * SECOND).is_empty());
    let c = t.counters();
    assert_eq!((c.queries, c.answered, c.unanswered), (1, 1, 0));
}

#[test]
fn an_unanswered_query_is_emitted_once_after_the_timeout() {
    let mut t = table();
    t.query(&ASK.query(), T0, VETH, false);
    assert!(expired(&mut t, T0 + SECOND).is_empty());
    assert!(expired(&mut t, T0 + 4_900 * MS).is_empty());
    // Within a wheel tick (17 ms) of the deadline, at the latest.
    let done = expired(&mut t, T0 + 5_040 * MS);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].outcome, Outcome::Unanswered);
    assert_eq!((done[0].client, done[0].id), (ip(ASK.client), 77));
    assert!(expired(&mut t, T0 + 5_100 * MS).is_empty());
    assert!(expired(&mut t, T0 + 600 * SECOND).is_empty());
    // Its response, too late: no second end.
    assert!(t.response(&ASK.response(0), T0 + 5_200 * MS).is_none());
    let c = t.counters();
    assert_eq!(
        (c.queries, c.answered, c.unanswered, c.late_responses, c.unmatched_responses),
        (1, 0, 1, 1, 0)
    );
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn a_response_after_the_deadline_ends_the_transaction_unanswered() {
    let mut t = table();
    t.query(&ASK.query(), T0, VETH, false);
    // expire() has not run yet: the response decides, the same way.
    let done = t.response(&ASK.response(0), T0 + 6 * SECOND).unwrap();
    assert_eq!(done.outcome, Outcome::Unanswered);
    assert_eq!(t.counters().late_responses, 1);
    assert!(expired(&mut t, T0 + 60 * SECOND).is_empty());
}

#[test]
fn a_retransmission_on_the_same_interface_counts_once() {
    let mut t = table();
    let q = ASK.query();
    assert_eq!(t.query(&q, T0, VETH, false), Sighting::New);
    assert_eq!(t.query(&q, T0 + 10_000, ENI, true), Sighting::Copy);
    // glibc resends after its 5 s timeout: the veth sees it again, then the ENI a copy.
    assert_eq!(t.query(&q, T0 + 4 * SECOND, VETH, false), Sighting::Retransmission);
    assert_eq!(t.query(&q, T0 + 4 * SECOND + 10_000, ENI, true), Sighting::Copy);
    // The deadline moved with the last try.
    assert!(expired(&mut t, T0 + 6 * SECOND).is_empty());
    let done = t.response(&ASK.response(0), T0 + 4 * SECOND + 2 * MS).unwrap();
    assert_eq!(done.retransmissions, 1);
    assert_eq!(done.outcome, Outcome::Answered { latency_ns: 4_002_000_000, rcode: 0 });
    let c = t.counters();
    assert_eq!((c.queries, c.retransmissions, c.copies, c.answered), (1, 1, 2, 1));
}

#[test]
fn copies_on_three_interfaces_are_one_transaction() {
    let mut t = table();
    let coredns = [10, 1, 5, 5];
    // The pod's veth sees the service address; after DNAT the CoreDNS pod's veth sees the
    // pod's address, and CoreDNS's own lookup is another client's; here the query also
    // leaves through the ENI, as to an upstream on another node.
    assert_eq!(t.query(&ASK.query(), T0, VETH, false), Sighting::New);
    assert_eq!(t.query(&ASK.query_to(coredns), T0 + 5_000, COREDNS_VETH, true), Sighting::Copy);
    assert_eq!(t.query(&ASK.query_to(coredns), T0 + 9_000, ENI, true), Sighting::Copy);
    let done = t.response(&ASK.response(0), T0 + MS).unwrap();
    assert_eq!(done.server, ip(ASK.server), "the destination of the first sighting");
    assert_eq!(done.egress, Some(ENI), "the latest outgoing sighting");
    assert_eq!(done.retransmissions, 0);
    // The response's own copies on the way back.
    assert!(t.response(&ASK.response(0), T0 + MS + 4_000).is_none());
    assert!(t.response(&ASK.response(0), T0 + MS + 8_000).is_none());
    let c = t.counters();
    assert_eq!(
        (c.queries, c.copies, c.answered, c.duplicate_responses, c.unmatched_responses),
        (1, 2, 1, 2, 0)
    );
}

#[test]
fn both_directions_on_loopback_are_one_sighting() {
    let mut t = table();
    let q = Ask { client: [127, 0, 0, 1], server: [127, 0, 0, 53], ..ASK };
    assert_eq!(t.query(&q.query(), T0, LO, true), Sighting::New);
    assert_eq!(t.query(&q.query(), T0 + 1_000, LO, false), Sighting::Copy);
    assert_eq!(t.query(&q.query(), T0 + SECOND, LO, true), Sighting::Retransmission);
    assert_eq!(t.query(&q.query(), T0 + SECOND + 1_000, LO, false), Sighting::Copy);
    assert_eq!(t.response(&q.response(0), T0 + SECOND + 2_000).unwrap().retransmissions, 1);
}

#[test]
fn a_truncated_response_then_the_tcp_retry_from_another_port_is_one_transaction() {
    let mut t = table();
    t.query(&ASK.query(), T0, VETH, false);
    t.query(&ASK.query(), T0 + 5_000, ENI, true);
    assert!(t.response(&ASK.reply(0, true), T0 + MS).is_none(), "TC does not end it");
    assert!(t.response(&ASK.reply(0, true), T0 + MS + 5_000).is_none(), "nor does its copy");
    assert_eq!(t.in_flight(), 1);
    let tcp = Ask { port: 41234, tcp: true, ..ASK };
    assert_eq!(t.query(&tcp.query(), T0 + 2 * MS, VETH, false), Sighting::Fallback);
    assert_eq!(t.query(&tcp.query(), T0 + 2 * MS + 5_000, ENI, true), Sighting::Copy);
    // A TCP segment retransmitted is a retransmission of the TCP try.
    assert_eq!(t.query(&tcp.query(), T0 + 300 * MS, VETH, false), Sighting::Retransmission);
    let done = t.response(&tcp.response(0), T0 + 301 * MS).unwrap();
    assert!(done.tcp && done.truncated);
    assert_eq!(done.retransmissions, 1);
    assert_eq!(done.outcome, Outcome::Answered { latency_ns: 301_000_000, rcode: 0 });
    t.check_invariants();
    // The TCP answer's copy on the other interface, and a late copy of the TC response.
    assert!(t.response(&tcp.response(0), T0 + 301 * MS + 5_000).is_none());
    assert!(t.response(&ASK.reply(0, true), T0 + 302 * MS).is_none());
    let c = t.counters();
    assert_eq!((c.queries, c.tcp_fallbacks, c.truncated_responses, c.answered), (1, 1, 1, 1));
    assert_eq!((c.duplicate_responses, c.unmatched_responses), (2, 0));
}

#[test]
fn a_tcp_query_without_a_truncated_response_is_a_transaction_of_its_own() {
    let mut t = table();
    assert_eq!(t.query(&ASK.query(), T0, VETH, false), Sighting::New);
    // Another socket of the client asks the same over TCP before any TC came back.
    let tcp = Ask { port: 41234, tcp: true, ..ASK };
    assert_eq!(t.query(&tcp.query(), T0 + MS, VETH, false), Sighting::New);
    assert!(!t.response(&tcp.response(0), T0 + 2 * MS).unwrap().truncated);
    assert!(!t.response(&ASK.response(0), T0 + 3 * MS).unwrap().tcp);
    let c = t.counters();
    assert_eq!((c.queries, c.tcp_fallbacks, c.answered), (2, 0, 2));
}

#[test]
fn a_tcp_answer_from_the_same_port_ends_the_truncated_transaction() {
    let mut t = table();
    t.query(&ASK.query(), T0, VETH, false);
    assert!(t.response(&ASK.reply(0, true), T0 + MS).is_none());
    let tcp = Ask { tcp: true, ..ASK };
    assert_eq!(t.query(&tcp.query(), T0 + 2 * MS, VETH, false), Sighting::Fallback);
    t.check_invariants();
    let done = t.response(&tcp.response(0), T0 + 3 * MS).unwrap();
    assert!(done.tcp && done.truncated);
    t.check_invariants();
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn an_unanswered_truncated_transaction_leaves_no_port_less_entry() {
    let mut t = table();
    t.query(&ASK.query(), T0, VETH, false);
    assert!(t.response(&ASK.reply(0, true), T0 + MS).is_none());
    let done = expired(&mut t, T0 + 6 * SECOND);
    assert_eq!(done.len(), 1);
    assert!(done[0].truncated && !done[0].tcp);
    t.check_invariants();
    // A TCP retry that late is a new transaction.
    let tcp = Ask { port: 41234, tcp: true, ..ASK };
    assert_eq!(t.query(&tcp.query(), T0 + 7 * SECOND, VETH, false), Sighting::New);
}

#[test]
fn two_sockets_of_one_client_with_the_same_id_and_name_are_two_transactions() {
    // dnsperf: several sockets on one address, each cycling through the same ids.
    let mut t = table();
    let sockets = [40000, 40001, 40002, 40003].map(|port| Ask { port, ..ASK });
    for (k, s) in sockets.iter().enumerate() {
        let k = i64::try_from(k).unwrap();
        assert_eq!(t.query(&s.query(), T0 + k * 1_000, VETH, false), Sighting::New);
        assert_eq!(t.query(&s.query(), T0 + k * 1_000 + 10, ENI, true), Sighting::Copy);
    }
    assert_eq!(t.in_flight(), 4);
    // Answered in another order, each its own.
    for (k, s) in sockets.iter().enumerate().rev() {
        let at = T0 + MS * (5 - i64::try_from(k).unwrap());
        let done = t.response(&s.response(0), at).expect("its own transaction");
        assert_eq!(done.sent_ns, T0 + i64::try_from(k).unwrap() * 1_000);
        assert_eq!(done.retransmissions, 0);
    }
    let c = t.counters();
    assert_eq!((c.queries, c.answered, c.copies, c.retransmissions), (4, 4, 4, 0));
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn the_copies_of_an_untracked_query_are_not_counted_again() {
    let mut t = Table::new(1, TIMEOUT);
    assert_eq!(t.query(&ASK.query(), T0, VETH, false), Sighting::New);
    let other = Ask { id: 78, ..ASK };
    assert_eq!(t.query(&other.query(), T0 + MS, VETH, false), Sighting::Overflow);
    assert_eq!(t.query(&other.query(), T0 + MS + 5_000, ENI, true), Sighting::Copy);
    // Its response matches nothing; the tracked transaction ends as usual.
    assert!(t.response(&other.response(0), T0 + 2 * MS).is_none());
    assert!(t.response(&ASK.response(0), T0 + 3 * MS).is_some());
    // The table has room again, but the untracked query is not taken up half-way.
    assert_eq!(t.query(&other.query(), T0 + 4 * MS, VETH, false), Sighting::Copy);
    let c = t.counters();
    assert_eq!((c.queries, c.overflow, c.copies, c.unmatched_responses), (1, 1, 2, 1));
    // After the timeout, the same key is a query again.
    assert_eq!(t.query(&other.query(), T0 + MS + 5 * SECOND + 1, VETH, false), Sighting::New);
    // And a third key, while the table is full, overflows.
    assert_eq!(t.query(&Ask { id: 79, ..ASK }.query(), T0 + 6 * SECOND, VETH, false), Sighting::Overflow);
    t.check_invariants();
    assert_eq!(t.counters().overflow, 2);
}

/// An IPv6 UDP packet.
fn packet6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), message: &[u8]) -> Vec<u8> {
    let len = u16::try_from(message.len() + 8).unwrap().to_be_bytes();
    let mut ip = vec![0x60, 0, 0, 0, len[0], len[1], 17, 64];
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    ip.extend_from_slice(&src.1.to_be_bytes());
    ip.extend_from_slice(&dst.1.to_be_bytes());
    ip.extend_from_slice(&[len[0], len[1], 0, 0]);
    ip.extend_from_slice(message);
    ip
}

#[test]
fn ipv6_clients_are_told_from_ipv4_ones() {
    let mut t = table();
    let server: Ipv6Addr = "fd00::a".parse().unwrap();
    // The same question from 10.1.0.10 and from its IPv4-mapped IPv6 form: two clients.
    let mapped = Ipv4Addr::from(ASK.client).to_ipv6_mapped();
    let (q, r) = (ASK.message(None), ASK.message(Some((0, false))));
    let q6 = decode(packet6((mapped, ASK.port), (server, 53), &q));
    let r6 = decode(packet6((server, 53), (mapped, ASK.port), &r));
    assert_eq!(t.query(&ASK.query(), T0, VETH, false), Sighting::New);
    assert_eq!(t.query(&q6, T0 + 1_000, VETH, false), Sighting::New);
    let done = t.response(&r6, T0 + MS).unwrap();
    assert_eq!((done.client, done.server), (IpAddr::V6(mapped), IpAddr::V6(server)));
    assert_eq!(t.response(&ASK.response(0), T0 + MS).unwrap().client, ip(ASK.client));
    t.check_invariants();
}

#[test]
fn a_response_without_its_query_is_unmatched() {
    let mut t = table();
    assert!(t.response(&ASK.response(0), T0).is_none());
    // Another id, another type, another name, another client: none matches.
    t.query(&ASK.query(), T0, VETH, false);
    for other in [
        Ask { id: 78, ..ASK },
        Ask { qtype: 28, ..ASK },
        Ask { name: "example.org", ..ASK },
        Ask { client: [10, 1, 0, 11], ..ASK },
    ] {
        assert!(t.response(&other.response(0), T0 + MS).is_none());
    }
    // Nor another port: another socket's transaction.
    assert!(t.response(&Ask { port: 40001, ..ASK }.response(0), T0 + MS).is_none());
    assert_eq!(t.counters().unmatched_responses, 6);
    // The name matches whatever its case.
    assert!(t.response(&Ask { name: "EXAMPLE.com", ..ASK }.response(0), T0 + MS).is_some());
}

#[test]
fn duplicate_responses_are_counted_once_ended() {
    let mut t = table();
    t.query(&ASK.query(), T0, VETH, false);
    assert!(t.response(&ASK.response(0), T0 + MS).is_some());
    for k in 1..=3 {
        assert!(t.response(&ASK.response(0), T0 + MS + k).is_none());
    }
    let c = t.counters();
    assert_eq!((c.answered, c.duplicate_responses, c.unmatched_responses), (1, 3, 0));
}

#[test]
fn timestamps_out_of_order_never_make_a_negative_latency() {
    let mut t = table();
    t.query(&ASK.query(), T0, VETH, false);
    // A copy stamped earlier on another CPU's interface: the earliest is the first sent.
    t.query(&ASK.query(), T0 - MS, ENI, true);
    let done = t.response(&ASK.response(0), T0 - 2 * MS).unwrap();
    assert_eq!(done.sent_ns, T0 - MS);
    assert_eq!(done.outcome, Outcome::Answered { latency_ns: 0, rcode: 0 });
    // Time far in the past, then far in the future: no overflow, no panic.
    let far = Ask { id: 1, ..ASK };
    t.query(&far.query(), i64::MIN, VETH, false);
    t.query(&Ask { id: 2, ..ASK }.query(), i64::MAX, VETH, false);
    // Expiry never goes back in time: the first call past the table's start ends it.
    assert!(expired(&mut t, 0).is_empty());
    assert_eq!(expired(&mut t, T0 + 100 * MS).len(), 1);
    assert!(t.response(&far.response(0), i64::MAX).is_none());
    assert_eq!(expired(&mut t, i64::MAX).len(), 1);
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn a_flood_of_unanswered_queries_is_bounded_and_counted() {
    let mut t = table();
    let bytes = t.bytes();
    let mut q = ASK.query();
    let mut at = T0;
    for i in 0..1_000_000u32 {
        let b = i.to_be_bytes();
        q.src.0 = ip([10, b[1], b[2], 1]);
        q.id = u16::from_be_bytes([b[2], b[3]]);
        at += 1_000;
        t.query(&q, at, VETH, false);
        // Its copy on the way out: a copy, whether the query is tracked or not.
        assert_eq!(t.query(&q, at + 10, ENI, true), Sighting::Copy);
        if i % 100_000 == 0 {
            // Nothing is due yet: the whole flood takes 1 s.
            assert!(expired(&mut t, at).is_empty());
        }
    }
    assert_eq!(t.in_flight(), CAPACITY);
    t.check_invariants();
    assert_eq!(t.bytes(), bytes, "allocated once");
    let c = t.counters();
    // Each untracked query counted once, not once per sighting.
    assert_eq!((c.queries, c.overflow, c.copies), (65_536, 1_000_000 - 65_536, 1_000_000));
    // Bounded: about 7 MiB whatever comes (no name in a slot, 96 bytes each).
    assert!(bytes < 15 << 19, "{bytes} bytes");
    let done = expired(&mut t, at + 10 * SECOND);
    assert_eq!(done.len(), CAPACITY);
    assert!(done.iter().all(|d| d.outcome == Outcome::Unanswered));
    assert_eq!((t.in_flight(), t.counters().unanswered), (0, 65_536));
    assert_eq!(t.bytes(), bytes);
    // And the table works again.
    assert_eq!(t.query(&ASK.query(), at + 11 * SECOND, VETH, false), Sighting::New);
}

#[test]
fn the_constructor_clamps_its_arguments() {
    let t = Table::new(0, Duration::ZERO);
    assert_eq!(t.capacity(), 1);
    let t = Table::new(usize::MAX, Duration::MAX);
    assert_eq!(t.capacity(), MAX_CAPACITY);
}

/// One step of a random walk.
#[derive(Clone, Debug)]
enum Step {
    Query { key: u8, ifindex: u32, outgoing: bool, tcp: bool },
    Response { key: u8, truncated: bool, tcp: bool },
    Expire,
}

/// A step and the time since the previous one, in 0.1 ms. Keys are mostly among 16 (two
/// tables' worth), so sightings meet their transactions; now and then any of 256.
fn step() -> impl Strategy<Value = (Step, u16)> {
    let key = || prop_oneof![9 => 0u8..16, 1 => any::<u8>()];
    let s = prop_oneof![
        4 => (key(), 1u32..4, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(key, ifindex, outgoing, tcp)| Step::Query { key, ifindex, outgoing, tcp }),
        3 => (key(), prop::bool::weighted(0.2), prop::bool::weighted(0.2))
            .prop_map(|(key, truncated, tcp)| Step::Response { key, truncated, tcp }),
        1 => Just(Step::Expire),
    ];
    (s, prop_oneof![3 => 0u16..100, 1 => 0u16..4_000])
}

const NAMES: [&str; 4] = ["a.example", "b.example", "a.example.default.svc.cluster.local", "c"];
/// The client's port over TCP (over UDP, `ASK`'s).
const TCP_PORT: u16 = 50_000;

/// The question a key stands for: a few clients, ids and names, so keys collide often. Over
/// TCP the client asks from another port, as glibc does. The server tells the name apart in
/// a finished transaction (which has no name).
fn ask(key: u8, tcp: bool) -> Ask {
    let name = key >> 5 & 3;
    Ask {
        client: [10, 0, 0, key & 3],
        port: if tcp { TCP_PORT } else { ASK.port },
        server: [172, 20, 0, name],
        id: u16::from(key >> 2 & 7),
        name: NAMES[usize::from(name)],
        qtype: if key & 0x80 == 0 { 1 } else { 28 },
        tcp,
    }
}

/// A transaction of the model: its walk key and whether it began over TCP.
type Of = (u8, bool);

/// What the model knows of a transaction in flight.
#[derive(Debug)]
struct Flight {
    last_try: i64,
    truncated: bool,
}

/// The transaction a packet of `key` over `tcp` belongs to: its own, or (over TCP) the
/// truncated one of its question, whose client retries from another port.
fn transaction_of(model: &HashMap<Of, Flight>, key: u8, tcp: bool) -> Option<Of> {
    if model.contains_key(&(key, tcp)) {
        Some((key, tcp))
    } else if tcp && model.get(&(key, false)).is_some_and(|f| f.truncated) {
        Some((key, false))
    } else {
        None
    }
}

proptest! {
    /// A random walk of queries, responses and expiries through a small table, against a model
    /// that knows each transaction's last try and whether it was truncated: every transaction
    /// ends exactly once, in time; a TCP query continues a truncated transaction of its
    /// question; an untracked query's further sightings are copies.
    #[test]
    fn every_transaction_ends_once(steps in proptest::collection::vec(step(), 1..300)) {
        const CAP: usize = 8;
        let timeout = 300 * MS;
        let mut t = Table::new(CAP, Duration::from_millis(300));
        let bytes = t.bytes();
        let mut model: HashMap<Of, Flight> = HashMap::new();
        // Untracked queries and when (the table's cache of them may have lost some).
        let mut overflowed: HashMap<Of, i64> = HashMap::new();
        let mut now = T0;
        let mut ended = 0u64;
        for (step, dt) in steps {
            now += i64::from(dt) * 100_000;
            // Packets may be stamped a little before the last one.
            let at = now - i64::from(dt % 7) * 10_000;
            match step {
                Step::Query { key, ifindex, outgoing, tcp } => {
                    let of = transaction_of(&model, key, tcp);
                    let sighting = t.query(&ask(key, tcp).query(), at, ifindex, outgoing);
                    if let Some(of) = of {
                        prop_assert!(matches!(sighting, Sighting::Copy | Sighting::Retransmission | Sighting::Fallback));
                        if sighting != Sighting::Copy {
                            let f = model.get_mut(&of).unwrap();
                            f.last_try = f.last_try.max(at);
                        }
                    } else {
                        let recently = overflowed.get(&(key, tcp)).is_some_and(|o| at.abs_diff(*o) <= timeout.unsigned_abs());
                        match sighting {
                            Sighting::Copy => prop_assert!(recently, "a copy of nothing"),
                            Sighting::New => {
                                prop_assert!(model.len() < CAP);
                                model.insert((key, tcp), Flight { last_try: at, truncated: false });
                            }
                            Sighting::Overflow => {
                                prop_assert_eq!(model.len(), CAP);
                                overflowed.insert((key, tcp), at);
                            }
                            other => prop_assert!(false, "{other:?} of an unknown key"),
                        }
                    }
                }
                Step::Response { key, truncated, tcp } => {
                    let of = transaction_of(&model, key, tcp);
                    let done = t.response(&ask(key, tcp).reply(0, truncated), at);
                    match of {
                        Some(of) if truncated && !tcp => {
                            prop_assert!(done.is_none());
                            let f = model.get_mut(&of).unwrap();
                            f.last_try = f.last_try.max(at);
                            f.truncated = true;
                        }
                        Some(of) => {
                            let done = done.expect("a known transaction ends");
                            prop_assert_eq!(of_done(&done), of);
                            let f = model.remove(&of).unwrap();
                            prop_assert_eq!(done.truncated, f.truncated);
                            let answered = at <= f.last_try + timeout;
                            prop_assert_eq!(matches!(done.outcome, Outcome::Answered { .. }), answered);
                            ended += 1;
                        }
                        None => prop_assert!(done.is_none()),
                    }
                }
                Step::Expire => {
                    for done in expired(&mut t, now) {
                        prop_assert_eq!(done.outcome, Outcome::Unanswered);
                        let f = model.remove(&of_done(&done)).expect("a tracked transaction");
                        prop_assert!(f.last_try + timeout <= now, "expired early");
                        ended += 1;
                    }
                    // Nothing more than a wheel tick overdue is left.
                    for f in model.values() {
                        prop_assert!(f.last_try + timeout > now - (2 << TICK_SHIFT), "not expired in time");
                    }
                }
            }
            t.check_invariants();
            let c = t.counters();
            prop_assert_eq!(t.in_flight(), model.len());
            prop_assert_eq!(c.queries, c.answered + c.unanswered + u64::try_from(t.in_flight()).unwrap());
            prop_assert_eq!(c.answered + c.unanswered, ended);
            prop_assert_eq!(t.bytes(), bytes);
        }
        ended += u64::try_from(expired(&mut t, i64::MAX).len()).unwrap();
        t.check_invariants();
        prop_assert_eq!(t.in_flight(), 0);
        prop_assert_eq!(t.counters().queries, ended);
    }
}

/// The model's name of a finished transaction (the inverse of `ask`): a truncated one began
/// over UDP, whatever it went on over.
fn of_done(done: &Done) -> Of {
    let IpAddr::V4(client) = done.client else { panic!("the walk asks over IPv4") };
    let IpAddr::V4(server) = done.server else { panic!("the walk asks over IPv4") };
    let key = client.octets()[3]
        | u8::try_from(done.id).unwrap() << 2
        | server.octets()[3] << 5
        | u8::from(done.qtype == 28) << 7;
    (key, done.tcp && !done.truncated)
}
