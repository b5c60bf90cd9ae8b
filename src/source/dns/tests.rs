//! The DNS analysis: transactions into families, throttling, workloads, bounded statistics
//! and search-path amplification.

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
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let [t0, t1] = (udp_len + 20).to_be_bytes();
    let mut ip = vec![0x45, 0, t0, t1, 0, 0, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&sport.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&udp_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    ip
}

/// A captured frame of `ip` on interface 1 at `at_ms`.
fn frame(ip: &[u8], at_ms: i64) -> Frame<'_> {
    Frame { data: ip, ifindex: 1, outgoing: false, at_ns: at_ms * 1_000_000 }
}

/// A question: id, name, type.
type Q<'a> = (u16, &'a str, u16);

fn query(stats: &mut DnsStats, client: [u8; 4], server: [u8; 4], (id, name, qtype): Q<'_>, at_ms: i64) {
    stats.ingest(frame(&udp(client, 5000, server, 53, &message(id, name, qtype, None)), at_ms));
}

fn answer(
    stats: &mut DnsStats,
    client: [u8; 4],
    server: [u8; 4],
    (id, name, qtype): Q<'_>,
    rcode: RCODE,
    at_ms: i64,
) {
    stats.ingest(frame(&udp(server, 53, client, 5000, &message(id, name, qtype, Some(rcode))), at_ms));
}

/// A glibc-style lookup of `name` with ndots:5 and a three-entry search list: A and AAAA for
/// each suffix (NXDOMAIN), then for the name itself (answered).
fn lookup(stats: &mut DnsStats, client: [u8; 4], name: &str, first_id: u16, at_ms: i64) {
    let suffixes = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"];
    let mut id = first_id;
    let mut step = |stats: &mut DnsStats, qname: &str, rcode: RCODE| {
        for qtype in [A, AAAA] {
            id += 1;
            query(stats, client, [10, 0, 0, 2], (id, qname, qtype), at_ms);
            answer(stats, client, [10, 0, 0, 2], (id, qname, qtype), rcode, at_ms + 2);
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
        query(&mut stats, [10, 0, 0, 11], [10, 0, 0, 2], (id, "example.com", A), 3_000);
        answer(&mut stats, [10, 0, 0, 11], [10, 0, 0, 2], (id, "example.com", A), RCODE::NoError, 3_001);
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
    let q = udp([10, 0, 0, 10], 5000, [10, 0, 0, 2], 53, &message(1, "a.example", A, None));
    stats.ingest(Frame { ifindex: 1, ..frame(&q, 0) });
    stats.ingest(Frame { ifindex: 2, outgoing: true, ..frame(&q, 0) });
    let report = stats.report(0);
    assert_eq!((report.queries, report.duplicates), (1, 1));
}

#[test]
fn memory_is_bounded_whatever_the_traffic() {
    let mut stats = DnsStats::default();
    for i in 0..20_000u32 {
        let client = i.to_be_bytes();
        let name = format!("n{}.example.com", i % 997);
        let id = u16::try_from(i % 60_000).unwrap();
        query(&mut stats, [10, client[1], client[2], client[3]], [10, 0, 0, 2], (1, &name, A), i64::from(i));
        // One busy client among them.
        query(&mut stats, [10, 9, 9, 9], [10, 0, 0, 2], (id, &name, A), i64::from(i));
    }
    let report = stats.report(20_000);
    assert!(report.clients.len() <= CLIENTS);
    assert_eq!(report.clients[0].client, "10.9.9.9", "the heavy hitter is kept");
    assert_eq!(report.clients[0].queries, 20_000, "and counted exactly");
    assert!(report.clients.iter().all(|c| c.top_names.len() <= NAMES));
    assert!(report.in_flight <= 40_000);
}

/// Issue 12: with more clients than slots, each newcomer inherited the evicted one's count and
/// its NXDOMAIN ratio read exactly 0 or 1. Counts are now what each client was seen doing.
#[test]
fn with_more_clients_than_slots_the_report_stays_truthful() {
    let mut stats = DnsStats::default();
    let mut id = 0;
    for round in 0..4 {
        for c in 0..100u8 {
            id += 1;
            let client = [10, 1, 0, c];
            query(&mut stats, client, [10, 0, 0, 2], (id, "x.example", A), round * 10);
            let rcode = if c % 2 == 0 { RCODE::NameError } else { RCODE::NoError };
            answer(&mut stats, client, [10, 0, 0, 2], (id, "x.example", A), rcode, round * 10 + 1);
        }
    }
    let report = stats.report(100);
    let total: u64 = report.clients.iter().map(|c| c.queries).sum();
    assert!(total <= 400, "no client is credited with another's queries: {total}");
    assert!(report.clients.iter().all(|c| c.queries <= 4));
}

#[test]
fn rates_are_over_the_seconds_actually_seen() {
    let mut stats = DnsStats::default();
    for i in 0..100u16 {
        query(&mut stats, [10, 0, 0, 10], [10, 0, 0, 2], (i, "a.example", A), 5_000 + i64::from(i) * 100);
    }
    // 100 queries over 10 s: 10 a second, not 100/60.
    let report = stats.report(14_999);
    assert!((report.clients[0].qps_1m - 10.0).abs() < 0.01, "{}", report.clients[0].qps_1m);
}

#[test]
fn idle_clients_age_out() {
    let mut stats = DnsStats::default();
    query(&mut stats, [10, 0, 0, 10], [10, 0, 0, 2], (1, "a.example", A), 0);
    let _ = stats.tick(CLIENT_IDLE_MS + 1, &HashSet::new());
    assert!(stats.report(CLIENT_IDLE_MS + 1).clients.is_empty());
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

proptest! {
    #[test]
    fn arbitrary_packets_are_taken_or_counted_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut stats = DnsStats::default();
        stats.ingest(frame(&bytes, 0));
        stats.expire(10_000_000_000);
        let report = stats.report(0);
        prop_assert!(report.queries + report.undecodable + report.unmatched <= 1);
    }
}

fn settings() -> Settings {
    Settings {
        upstreams: Upstreams {
            vpc_resolver: vec!["169.254.169.253".parse().unwrap()],
            nodelocal: vec!["169.254.20.10".parse().unwrap()],
            cluster_dns: vec![],
        },
        ..Settings::default()
    }
}

fn family<'a>(t: &'a Totals, workload: &str) -> &'a families::Counts {
    &t.workloads.iter().find(|(w, _)| &*w.1 == workload).unwrap().1
}

/// A query to the VPC resolver that left through an ENI whose link-local counter grew in the
/// second it was sent, and got no answer: a timeout during throttling, on that ENI.
#[test]
fn an_unanswered_query_sent_while_its_eni_dropped_is_a_throttled_timeout() {
    let mut stats = DnsStats::new(settings(), None);
    let vpc = [169, 254, 169, 253];
    let q = udp([10, 0, 0, 10], 5000, vpc, 53, &message(7, "a.example", A, None));
    // Seen leaving through ens5 (index 2) at 1.5 s; another query at 3.5 s, when ens5 was fine.
    stats.ingest(Frame { ifindex: 2, outgoing: true, ..frame(&q, 1_500) });
    let q2 = udp([10, 0, 0, 10], 5001, vpc, 53, &message(8, "b.example", A, None));
    stats.ingest(Frame { ifindex: 2, outgoing: true, ..frame(&q2, 3_500) });
    stats.interval(2, "ens5", 1_000, 2_000, true);
    stats.interval(2, "ens5", 2_000, 3_000, false);
    stats.interval(2, "ens5", 3_000, 4_000, false);
    let watched = HashSet::from([2]);
    let _ = stats.tick(4_000, &watched);
    stats.expire(9_000_000_000);
    let t = stats.tick(9_000, &watched);
    let node = family(&t, "");
    let vpc_i = Upstream::VpcResolver.index();
    assert_eq!(node.queries[vpc_i], 2);
    assert_eq!(node.failures[vpc_i][Reason::Timeout.index()], [1, 1], "[not throttled, throttled]");
    assert_eq!(t.unanswered, [("ens5".to_owned(), 2)]);
}

/// A failure whose interval the sampler has not reported yet waits for it.
#[test]
fn a_failure_is_judged_once_its_interval_is_known() {
    let mut stats = DnsStats::new(settings(), None);
    let server = [169, 254, 20, 10];
    query(&mut stats, [10, 0, 0, 10], server, (1, "a.example", A), 1_500);
    answer(&mut stats, [10, 0, 0, 10], server, (1, "a.example", A), RCODE::ServerFailure, 1_510);
    let early = stats.tick(1_000, &HashSet::new());
    assert_eq!(family(&early, "").failures[Upstream::Nodelocal.index()][Reason::Servfail.index()], [0, 0]);
    stats.interval(2, "ens5", 1_000, 2_000, true);
    let t = stats.tick(2_000, &HashSet::from([2]));
    let n = family(&t, "");
    assert_eq!(
        n.failures[Upstream::Nodelocal.index()][Reason::Servfail.index()],
        [0, 1],
        "throttled on some ENI"
    );
    assert_eq!(t.latency[Upstream::Nodelocal.index()].count, 1);
    assert!((t.latency[Upstream::Nodelocal.index()].sum - 0.010).abs() < 1e-6);
}

#[test]
fn clients_are_counted_under_their_pods_workload() {
    let pods = Arc::new(Mutex::new(Pods::default()));
    let pod: crate::source::pods::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-7d9f-abcde", "namespace": "shop", "uid": "u1",
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9f"}]},
        "spec": {},
        "status": {"podIP": "10.0.1.5"}
    }))
    .unwrap();
    pods.lock().unwrap().apply("ADDED", &pod);
    let mut stats = DnsStats::new(settings(), Some(Arc::clone(&pods)));
    query(&mut stats, [10, 0, 1, 5], [169, 254, 20, 10], (1, "a.example", A), 0);
    query(&mut stats, [10, 0, 0, 99], [169, 254, 20, 10], (2, "a.example", A), 0);
    let t = stats.tick(1_000, &HashSet::new());
    let web = t.workloads.iter().find(|(w, _)| &*w.1 == "web").unwrap();
    assert_eq!(&*web.0 .0, "shop");
    assert_eq!(web.1.queries[Upstream::Nodelocal.index()], 1);
    assert_eq!(family(&t, "").queries[Upstream::Nodelocal.index()], 1, "not a pod: the node");
    // The report names each client's pod (it used to leave `pod` empty).
    let report = stats.report(1_000);
    let pod = |client: &str| report.clients.iter().find(|c| c.client == client).unwrap().pod.clone();
    assert_eq!(pod("10.0.1.5").map(|p| p.pod), Some("web-7d9f-abcde".to_owned()));
    assert_eq!(pod("10.0.0.99"), None);
}
