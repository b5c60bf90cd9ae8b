//! What the DNS analysis gives Prometheus: per-workload counters of queries, failures and
//! search-path waste, a latency histogram per upstream, and unanswered queries per ENI, with
//! a bounded number of series whatever the traffic.
//!
//! **Workload slots.** At most [`Families::slots`] workloads have series of their own; every
//! other query is counted in `workload="other"`. Counts are exact, never estimated: a named
//! workload's series count from the moment it got its slot, and `other` counts everything
//! else. Slots are given first come; once a minute the busiest workload without one (over
//! that minute) takes the slot of the least busy named one if it sent more, and a named
//! workload idle for ten minutes gives its slot up. So the series are the busiest workloads
//! of the last minute, give or take one minute's change, and a workload's series disappear
//! when it loses its slot (its counts stay in Prometheus's history).
//!
//! **Series budget.** Per slot, plus `other`: 4 query series (one per upstream), at most 24
//! failure series (upstream × reason × throttled; only those that happened), 1 search-path
//! series. With the default 20 slots that is 21 × 29 = 609, plus 240 for the four latency
//! histograms (57 buckets, `+Inf`, sum, count), plus 2 capture-drop series and one unanswered
//! series per ENI: at most 851 + ENIs (866 on an instance with 15 ENIs), under the 1,000 a
//! node may cost.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Default number of workloads with series of their own.
pub const DEFAULT_SLOTS: usize = 20;
/// How often slots are reconsidered.
const REVIEW_MS: i64 = 60_000;
/// A named workload silent this long gives its slot up.
const IDLE_MS: i64 = 600_000;
/// Workloads without a slot whose last-minute counts are kept for promotion.
const CANDIDATES: usize = 256;

/// Where a query was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// The Amazon-provided resolver (`169.254.169.253`, `fd00:ec2::253`, VPC+2): what the
    /// link-local allowance limits.
    VpcResolver,
    /// NodeLocal DNSCache on the node.
    Nodelocal,
    /// The cluster's DNS (the kube-dns service, CoreDNS pods).
    ClusterDns,
    /// Anything else.
    Other,
}

impl Upstream {
    /// All, indexed by [`Upstream::index`].
    pub const ALL: [Upstream; 4] = [Self::VpcResolver, Self::Nodelocal, Self::ClusterDns, Self::Other];

    /// Position in [`Upstream::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `upstream` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::VpcResolver => "vpc_resolver",
            Self::Nodelocal => "nodelocal",
            Self::ClusterDns => "cluster_dns",
            Self::Other => "other",
        }
    }
}

/// Why a lookup failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No response within the timeout.
    Timeout,
    /// SERVFAIL.
    Servfail,
    /// REFUSED.
    Refused,
}

impl Reason {
    /// All, indexed by [`Reason::index`].
    pub const ALL: [Reason; 3] = [Self::Timeout, Self::Servfail, Self::Refused];

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Servfail => "servfail",
            Self::Refused => "refused",
        }
    }

    /// The failure an answer's response code is, if any.
    pub(crate) fn of_rcode(rcode: u8) -> Option<Self> {
        match rcode {
            2 => Some(Self::Servfail),
            5 => Some(Self::Refused),
            _ => None,
        }
    }
}

/// The VPC resolver's link-local address, in every VPC.
pub const VPC_RESOLVER: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 253);
/// Its IPv6 address (Nitro instances).
pub const VPC_RESOLVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253);
/// NodeLocal DNSCache's usual address (`nodelocal_dns` by default).
pub const NODELOCAL_DEFAULT: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// The kube-dns service address of an EKS cluster in either default service range
/// (`cluster_dns` by default).
pub const CLUSTER_DNS_DEFAULT: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 100, 0, 10), Ipv4Addr::new(172, 20, 0, 10)];

/// Which upstream each destination address is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstreams {
    /// The VPC resolver's addresses.
    pub vpc_resolver: Vec<IpAddr>,
    /// NodeLocal DNSCache's.
    pub nodelocal: Vec<IpAddr>,
    /// The cluster DNS service's and CoreDNS's.
    pub cluster_dns: Vec<IpAddr>,
}

impl Upstreams {
    /// The upstream `ip` is.
    pub fn classify(&self, ip: IpAddr) -> Upstream {
        if self.vpc_resolver.contains(&ip) {
            Upstream::VpcResolver
        } else if self.nodelocal.contains(&ip) {
            Upstream::Nodelocal
        } else if self.cluster_dns.contains(&ip) {
            Upstream::ClusterDns
        } else {
            Upstream::Other
        }
    }
}

/// Buckets of `enawatch_dns_response_seconds`.
pub const LATENCY_BUCKETS: usize = 57;

/// The buckets' upper bounds, in seconds: 2^(k/4) from 2^-11 (0.49 ms, a node-local cache)
/// to 2^3 (8 s, past glibc's 5 s timeout), rounded to three significant digits. Neighbours
/// differ by a factor of 1.19, so `histogram_quantile` (linear within a bucket) is never more
/// than 10 % off the true quantile.
pub fn latency_bounds() -> &'static [f64; LATENCY_BUCKETS] {
    static BOUNDS: std::sync::OnceLock<[f64; LATENCY_BUCKETS]> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        std::array::from_fn(|i| {
            #[expect(clippy::cast_precision_loss, reason = "i < 57")]
            let exact = 2f64.powf((i as f64 - 44.0) / 4.0);
            let scale = 10f64.powf(2.0 - exact.log10().floor());
            (exact * scale).round() / scale
        })
    })
}

/// A latency histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), by [`latency_bounds`]; past the last one in
    /// none.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// All observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: [0; LATENCY_BUCKETS], count: 0, sum: 0.0 }
    }
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = latency_bounds().partition_point(|le| *le < seconds);
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Observations at or under each bound, as Prometheus's `le` buckets count them.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        latency_bounds().iter().zip(self.buckets.iter()).scan(0, |total, (le, n)| {
            *total += n;
            Some((*le, *total))
        })
    }
}

/// A workload's identity: namespace and name (both empty for the node itself, or when pods
/// are not attributed).
pub type Workload = (Arc<str>, Arc<str>);

/// The counters of one workload (or of `other`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Queries by upstream.
    pub queries: [u64; 4],
    /// Failures by upstream, reason, and whether the link-local allowance was throttling
    /// ([false, true]).
    pub failures: [[[u64; 2]; 3]; 4],
    /// Queries spent on search-path expansions answered NXDOMAIN.
    pub search_path: u64,
}

/// What the metrics render: a copy of the counters, taken once per tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// Named workloads, then `other` last.
    pub workloads: Vec<(Workload, Counts)>,
    /// Latency by upstream.
    pub latency: [Histogram; 4],
    /// Unanswered queries to the VPC resolver by the ENI they left through.
    pub unanswered: Vec<(String, u64)>,
}

#[derive(Clone, Debug)]
struct Slot {
    workload: Workload,
    counts: Counts,
    /// Queries since the last review.
    recent: u64,
    last_ms: i64,
}

/// The per-workload counters with their slots, the histograms and the per-ENI counts.
#[derive(Clone, Debug)]
pub struct Families {
    slots: usize,
    named: Vec<Slot>,
    other: Counts,
    /// Last-minute queries of workloads without a slot (bounded).
    candidates: HashMap<Workload, u64>,
    next_review_ms: i64,
    latency: [Histogram; 4],
    /// Unanswered by ENI name.
    unanswered: HashMap<String, u64>,
}

/// Which counter a query or failure goes to: a slot's position, or `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Named(usize),
    Other,
}

impl Families {
    /// Counters for at most `slots` named workloads.
    pub fn new(slots: usize) -> Self {
        Self {
            slots,
            named: Vec::new(),
            other: Counts::default(),
            candidates: HashMap::new(),
            next_review_ms: i64::MIN,
            latency: Default::default(),
            unanswered: HashMap::new(),
        }
    }

    /// The counters of `workload`, giving it a free slot if there is one.
    pub(crate) fn place(&mut self, workload: &Workload, at_ms: i64) -> Place {
        if let Some(i) = self.named.iter().position(|s| s.workload == *workload) {
            return Place::Named(i);
        }
        if self.named.len() < self.slots {
            self.named.push(Slot {
                workload: workload.clone(),
                counts: Counts::default(),
                recent: 0,
                last_ms: at_ms,
            });
            return Place::Named(self.named.len() - 1);
        }
        Place::Other
    }

    fn counts(&mut self, place: Place) -> &mut Counts {
        match place {
            Place::Named(i) => &mut self.named[i].counts,
            Place::Other => &mut self.other,
        }
    }

    /// Counts one query of `workload` to `upstream`.
    pub(crate) fn query(&mut self, workload: &Workload, upstream: Upstream, at_ms: i64) {
        let place = self.place(workload, at_ms);
        self.counts(place).queries[upstream.index()] += 1;
        match place {
            Place::Named(i) => {
                self.named[i].recent += 1;
                self.named[i].last_ms = at_ms;
            }
            Place::Other => {
                if let Some(n) = self.candidates.get_mut(workload) {
                    *n += 1;
                } else if self.candidates.len() < CANDIDATES {
                    self.candidates.insert(workload.clone(), 1);
                }
            }
        }
    }

    /// Counts one failed lookup.
    pub(crate) fn failure(
        &mut self,
        workload: &Workload,
        upstream: Upstream,
        reason: Reason,
        throttled: bool,
    ) {
        let place =
            self.named.iter().position(|s| s.workload == *workload).map_or(Place::Other, Place::Named);
        self.counts(place).failures[upstream.index()][reason.index()][usize::from(throttled)] += 1;
    }

    /// Counts `n` search-path queries of `workload`.
    pub(crate) fn search_path(&mut self, workload: &Workload, n: u64) {
        let place =
            self.named.iter().position(|s| s.workload == *workload).map_or(Place::Other, Place::Named);
        self.counts(place).search_path += n;
    }

    /// Counts one answer's latency.
    pub(crate) fn answered(&mut self, upstream: Upstream, seconds: f64) {
        self.latency[upstream.index()].observe(seconds);
    }

    /// Counts one unanswered query to the VPC resolver that left through `eni`.
    pub(crate) fn unanswered(&mut self, eni: &str) {
        if let Some(n) = self.unanswered.get_mut(eni) {
            *n += 1;
        } else {
            self.unanswered.insert(eni.to_owned(), 1);
        }
    }

    /// Forgets the unanswered counts of ENIs no longer watched: their series leave with them.
    pub(crate) fn keep_enis(&mut self, watched: impl Fn(&str) -> bool) {
        self.unanswered.retain(|eni, _| watched(eni));
    }

    /// Reconsiders the slots, at most once a minute: idle workloads leave, and the busiest
    /// workload without a slot takes the place of a less busy one.
    pub(crate) fn review(&mut self, now_ms: i64) {
        if now_ms < self.next_review_ms {
            return;
        }
        self.next_review_ms = now_ms.saturating_add(REVIEW_MS);
        self.named.retain(|s| now_ms - s.last_ms < IDLE_MS);
        let mut candidates: Vec<(Workload, u64)> = self.candidates.drain().collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (workload, recent) in candidates {
            if self.named.len() < self.slots {
                self.named.push(Slot { workload, counts: Counts::default(), recent: 0, last_ms: now_ms });
                continue;
            }
            let Some((i, least)) = self.named.iter().enumerate().min_by_key(|(_, s)| s.recent) else { break };
            if recent <= least.recent {
                break;
            }
            self.named[i] = Slot { workload, counts: Counts::default(), recent: 0, last_ms: now_ms };
        }
        for s in &mut self.named {
            s.recent = 0;
        }
    }

    /// A copy for the metrics.
    pub fn totals(&self) -> Totals {
        let mut workloads: Vec<(Workload, Counts)> =
            self.named.iter().map(|s| (s.workload.clone(), s.counts.clone())).collect();
        workloads.sort_by(|a, b| a.0.cmp(&b.0));
        workloads.push(((Arc::from(""), Arc::from("other")), self.other.clone()));
        let mut unanswered: Vec<(String, u64)> =
            self.unanswered.iter().map(|(k, v)| (k.clone(), *v)).collect();
        unanswered.sort();
        Totals { workloads, latency: self.latency.clone(), unanswered }
    }
}

/// When each ENI's `linklocal_allowance_exceeded` grew, for the last minutes: a query sent in
/// such an interval through that ENI was throttled.
#[derive(Clone, Debug, Default)]
pub struct Throttling {
    /// Intervals (from, to] in Unix ms in which the counter grew, by ENI name, oldest first.
    grew: HashMap<String, VecDeque<(i64, i64)>>,
    /// The same for any ENI of the node.
    any: VecDeque<(i64, i64)>,
    /// Every interval up to here has been reported.
    pub(crate) known_until_ms: i64,
}

/// How long interval reports are kept: longer than any lookup waits to be judged.
const KEEP_MS: i64 = 120_000;

impl Throttling {
    /// One sampling interval (from, to] of `eni`: whether its counter grew.
    pub(crate) fn interval(&mut self, eni: &str, from_ms: i64, to_ms: i64, grew: bool) {
        if grew {
            let list = self.grew.entry(eni.to_owned()).or_default();
            list.push_back((from_ms, to_ms));
            if self.any.back() != Some(&(from_ms, to_ms)) {
                self.any.push_back((from_ms, to_ms));
            }
        }
        let cutoff = to_ms - KEEP_MS;
        for list in self.grew.values_mut().chain(std::iter::once(&mut self.any)) {
            while list.front().is_some_and(|(_, to)| *to < cutoff) {
                list.pop_front();
            }
        }
        self.grew.retain(|_, l| !l.is_empty());
    }

    /// All intervals up to `to_ms` have been reported.
    pub(crate) fn known_until(&mut self, to_ms: i64) {
        self.known_until_ms = self.known_until_ms.max(to_ms);
    }

    /// Whether a query sent at `sent_ms` through `eni` (any ENI when not known) was sent
    /// while the link-local allowance was throttling.
    pub(crate) fn throttled(&self, eni: Option<&str>, sent_ms: i64) -> bool {
        let list = match eni {
            Some(eni) => self.grew.get(eni),
            None => Some(&self.any),
        };
        list.is_some_and(|l| l.iter().any(|(from, to)| *from < sent_ms && sent_ms <= *to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ns: &str, name: &str) -> Workload {
        (Arc::from(ns), Arc::from(name))
    }

    #[test]
    fn five_hundred_workloads_make_at_most_slots_plus_one_series_with_exact_counts() {
        let mut f = Families::new(DEFAULT_SLOTS);
        for i in 0..500 {
            for _ in 0..=i % 7 {
                f.query(&w("ns", &format!("app{i}")), Upstream::ClusterDns, 1000);
            }
            f.failure(&w("ns", &format!("app{i}")), Upstream::ClusterDns, Reason::Timeout, i % 2 == 0);
        }
        let t = f.totals();
        assert_eq!(t.workloads.len(), DEFAULT_SLOTS + 1);
        let queries: u64 = t.workloads.iter().map(|(_, c)| c.queries[Upstream::ClusterDns.index()]).sum();
        let expected: u64 = (0..500u64).map(|i| i % 7 + 1).sum();
        assert_eq!(queries, expected, "nothing lost, nothing invented");
        let failures: u64 = t.workloads.iter().map(|(_, c)| c.failures[2][0].iter().sum::<u64>()).sum();
        assert_eq!(failures, 500);
        assert_eq!(t.workloads.last().unwrap().0 .1.as_ref(), "other");
    }

    #[test]
    fn a_busier_workload_takes_the_slot_of_the_least_busy_at_the_review() {
        let mut f = Families::new(2);
        f.review(0);
        f.query(&w("a", "quiet"), Upstream::Other, 1);
        f.query(&w("a", "steady"), Upstream::Other, 1);
        f.query(&w("a", "steady"), Upstream::Other, 2);
        for t in 0..50 {
            f.query(&w("b", "storm"), Upstream::VpcResolver, t);
        }
        let before = f.totals();
        assert!(before.workloads.iter().all(|(w, _)| w.1.as_ref() != "storm"), "no slot free yet");
        assert_eq!(before.workloads.last().unwrap().1.queries[0], 50);
        f.review(REVIEW_MS);
        let names: Vec<String> = f.totals().workloads.iter().map(|(w, _)| w.1.to_string()).collect();
        assert_eq!(names, ["steady", "storm", "other"], "storm replaced quiet");
        f.query(&w("b", "storm"), Upstream::VpcResolver, REVIEW_MS + 1);
        let t = f.totals();
        let storm = t.workloads.iter().find(|(w, _)| w.1.as_ref() == "storm").unwrap();
        assert_eq!(storm.1.queries[0], 1, "a new slot counts from when it was given");
        assert_eq!(t.workloads.last().unwrap().1.queries[0], 50, "other keeps what it counted");
    }

    #[test]
    fn idle_workloads_give_their_slot_up() {
        let mut f = Families::new(1);
        f.review(0);
        f.query(&w("a", "gone"), Upstream::Other, 0);
        f.review(IDLE_MS + 1);
        f.query(&w("a", "new"), Upstream::Other, IDLE_MS + 2);
        let names: Vec<String> = f.totals().workloads.iter().map(|(w, _)| w.1.to_string()).collect();
        assert_eq!(names, ["new", "other"]);
    }

    #[test]
    fn latency_buckets_are_cumulative_and_close_enough_for_a_median() {
        let bounds = latency_bounds();
        assert_eq!((bounds[0], bounds[44], bounds[56]), (0.000_488, 1.0, 8.0));
        assert!(bounds.windows(2).all(|w| w[1] / w[0] < 1.2 && w[1] > w[0]), "{bounds:?}");
        let mut f = Families::new(1);
        f.answered(Upstream::Nodelocal, 0.0004);
        f.answered(Upstream::Nodelocal, 1.0);
        f.answered(Upstream::Nodelocal, 9.0);
        let h = &f.totals().latency[Upstream::Nodelocal.index()];
        let cumulative: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(cumulative[0], (0.000_488, 1));
        assert_eq!(cumulative[44], (1.0, 2), "1 s is in le=1");
        assert_eq!(cumulative[56], (8.0, 2), "9 s only in +Inf");
        assert_eq!(h.count, 3);
    }

    #[test]
    fn throttled_means_sent_in_an_interval_in_which_that_eni_dropped() {
        let mut t = Throttling::default();
        t.interval("ens5", 0, 1000, false);
        t.interval("ens5", 1000, 2000, true);
        t.interval("ens6", 1000, 2000, false);
        t.known_until(2000);
        assert!(!t.throttled(Some("ens5"), 1000), "intervals are (from, to]");
        assert!(t.throttled(Some("ens5"), 1500));
        assert!(!t.throttled(Some("ens6"), 1500));
        assert!(t.throttled(None, 2000), "some ENI of the node dropped then");
        assert!(!t.throttled(None, 2500));
        t.interval("ens5", 200_000, 201_000, false);
        assert!(!t.throttled(Some("ens5"), 1500), "old intervals are forgotten");
    }

    #[test]
    fn upstreams_by_address() {
        let u = Upstreams {
            vpc_resolver: vec!["169.254.169.253".parse().unwrap()],
            nodelocal: vec!["169.254.20.10".parse().unwrap()],
            cluster_dns: vec!["10.100.0.10".parse().unwrap()],
        };
        assert_eq!(u.classify("169.254.169.253".parse().unwrap()), Upstream::VpcResolver);
        assert_eq!(u.classify("169.254.20.10".parse().unwrap()), Upstream::Nodelocal);
        assert_eq!(u.classify("10.100.0.10".parse().unwrap()), Upstream::ClusterDns);
        assert_eq!(u.classify("8.8.8.8".parse().unwrap()), Upstream::Other);
    }
}
