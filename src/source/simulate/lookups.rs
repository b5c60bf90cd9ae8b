//! The DNS lookups of a simulated node's pods (a scenario's `dns:` list).
//!
//! Each lookup is a real IPv4/UDP DNS query, and its answer a real response, handed to the
//! agent's own DNS analysis (`DnsStats::ingest`) as the capture would hand them: so the
//! families in `/metrics`, `/api/v1/dns`, the page's "who is hurt" table and `top` move with
//! the scenario exactly as they would on a node. A lookup sent while the primary ENI drops
//! link-local packets is lost with the share EC2 drops (the drop rate over the budget plus
//! the drop rate) and never answered: the analysis declares it unanswered after its timeout
//! and joins it to the ENI's throttled interval, as it does live.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

use super::{per_ms, Scenario};
use crate::source::dns::families::{Totals, Upstream, CLUSTER_DNS_DEFAULT, NODELOCAL_DEFAULT, VPC_RESOLVER};
use crate::source::dns::DnsStats;
use crate::source::Reading;
use crate::sys::packet::Frame;

/// Link-local packets an ENI may send a second before EC2 drops the rest.
const BUDGET: u64 = 1024;

/// Names the simulated pods look up, in turn.
const NAMES: [&str; 4] = [
    "sqs.us-east-1.amazonaws.com",
    "dynamodb.us-east-1.amazonaws.com",
    "api.stripe.com",
    "s3.us-east-1.amazonaws.com",
];

/// Where a simulated pod's lookups to `upstream` go: the agent's default address for it.
fn server(upstream: Upstream) -> Ipv4Addr {
    match upstream {
        Upstream::VpcResolver => VPC_RESOLVER,
        Upstream::Nodelocal => NODELOCAL_DEFAULT,
        Upstream::ClusterDns | Upstream::Other => CLUSTER_DNS_DEFAULT[0],
    }
}

/// How long `upstream` takes to answer, in microseconds (varied by an eighth per lookup).
fn latency_us(upstream: Upstream) -> u64 {
    match upstream {
        Upstream::VpcResolver => 1_200,
        Upstream::Nodelocal => 300,
        Upstream::ClusterDns | Upstream::Other => 2_000,
    }
}

/// One pod of the simulated node and its lookups.
#[derive(Clone, Debug)]
pub(super) struct Client {
    pub namespace: String,
    pub workload: String,
    pub address: Ipv4Addr,
    /// Where its lookups go (never `Other`: the scenario's parser takes the other three).
    pub upstream: Upstream,
    /// Lookups a second.
    pub rate: u64,
}

/// The interface index of simulated device `d` (the analysis keys ENIs by index).
fn ifindex(d: usize) -> u32 {
    2 + u32::try_from(d).unwrap_or(0)
}

/// Plays the lookups of a scenario's pods into a DNS analysis.
pub(super) struct Lookups {
    stats: Arc<Mutex<DnsStats>>,
    /// Lookups sent so far, per client.
    sent: Vec<u64>,
    /// Each device's previous reading of `linklocal_allowance_exceeded` (time, value).
    last: Vec<Option<(i64, u64)>>,
}

impl Lookups {
    pub(super) fn new(stats: Arc<Mutex<DnsStats>>, scenario: &Scenario) -> Self {
        Self { stats, sent: vec![0; scenario.lookups.len()], last: vec![None; scenario.devices.len()] }
    }

    /// Sends the lookups due by `t` ms into the simulation started at `start_ms`, reports the
    /// devices' `readings` at that moment, and returns the families' counters.
    pub(super) fn play(
        &mut self,
        scenario: &Scenario,
        start_ms: i64,
        t: i64,
        readings: &[Reading],
    ) -> Totals {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, c) in scenario.lookups.iter().enumerate() {
            let due = per_ms(c.rate, u64::try_from(t).unwrap_or(0), 1000);
            // After a stall (a suspended process), a minute of lookups at most, not all of them.
            self.sent[i] = self.sent[i].max(due.saturating_sub(c.rate * 60));
            while self.sent[i] < due {
                let k = self.sent[i];
                self.sent[i] += 1;
                let sent_ms = i64::try_from(u128::from(k) * 1000 / u128::from(c.rate)).unwrap_or(i64::MAX);
                let dropping = scenario.linklocal_dropping(0, sent_ms);
                // The share EC2 drops, spread evenly (to within one lookup a burst); wide, as a
                // scenario's drop rate is any number.
                let lost_by = |n: u64| {
                    u128::from(n) * u128::from(dropping) / (u128::from(BUDGET) + u128::from(dropping))
                };
                let lost = dropping > 0 && lost_by(k + 1) > lost_by(k);
                lookup(&mut stats, i, c, k, start_ms.saturating_add(sent_ms).saturating_mul(1_000_000), lost);
            }
        }
        let now_ms = start_ms.saturating_add(t);
        stats.expire(now_ms.saturating_mul(1_000_000));
        for (d, r) in readings.iter().enumerate() {
            stats.reading(ifindex(d), r, &mut self.last[d], now_ms);
        }
        let watched: HashSet<u32> = (0..readings.len()).map(ifindex).collect();
        stats.tick(now_ms, &watched)
    }
}

/// Client `i`'s `k`th lookup, sent at `sent_ns`, and its answer unless it was `lost`.
fn lookup(stats: &mut DnsStats, i: usize, c: &Client, k: u64, sent_ns: i64, lost: bool) {
    let name = NAMES[(i + usize::try_from(k % 4).unwrap_or(0)) % NAMES.len()];
    let port = 32_768 + u16::try_from(k % 28_000).unwrap_or(0);
    let id = u16::try_from(k & 0xffff).unwrap_or(0);
    let server = server(c.upstream);
    // CoreDNS's forwards are seen leaving the primary ENI (which ties them to its drops);
    // a pod's lookups on its veth.
    let (ifindex, outgoing) = if c.upstream == Upstream::VpcResolver {
        (ifindex(0), true)
    } else {
        (100 + u32::try_from(i).unwrap_or(0), false)
    };
    let query = datagram((c.address, port), (server, 53), id, name, None);
    stats.ingest(Frame { data: &query, ifindex, outgoing, at_ns: sent_ns });
    if !lost {
        let latency_us = latency_us(c.upstream) * (8 + k % 8) / 8;
        let answer = datagram((server, 53), (c.address, port), id, name, Some(0));
        let at_ns = sent_ns.saturating_add(i64::try_from(latency_us * 1000).unwrap_or(0));
        stats.ingest(Frame { data: &answer, ifindex, outgoing: !outgoing, at_ns });
    }
}

/// An IPv4 UDP datagram, from its IP header on (as the capture socket delivers it), carrying
/// a DNS message with one question for `name`'s A record: a query, or its answer with `rcode`
/// (no records).
fn datagram(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), id: u16, name: &str, rcode: Option<u8>) -> Vec<u8> {
    let mut dns = Vec::with_capacity(64);
    dns.extend_from_slice(&id.to_be_bytes());
    // A query asks for recursion; an answer is a response that offers it.
    let flags: u16 = rcode.map_or(0x0100, |r| 0x8180 | u16::from(r & 0x0f));
    dns.extend_from_slice(&flags.to_be_bytes());
    dns.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        dns.push(u8::try_from(label.len()).unwrap_or(63));
        dns.extend_from_slice(label.as_bytes());
    }
    dns.extend_from_slice(&[0, 0, 1, 0, 1]);
    let udp = u16::try_from(8 + dns.len()).unwrap_or(u16::MAX);
    let mut ip = Vec::with_capacity(28 + dns.len());
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&(udp + 20).to_be_bytes());
    // No id, don't fragment, TTL 64, UDP; checksums are not read by the analysis.
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    ip.extend_from_slice(&src.1.to_be_bytes());
    ip.extend_from_slice(&dst.1.to_be_bytes());
    ip.extend_from_slice(&udp.to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&dns);
    ip
}
