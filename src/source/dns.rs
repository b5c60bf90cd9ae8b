//! DNS analysis: who on this node sends DNS queries, which of their lookups failed or were
//! slow, whether the link-local allowance was throttling when they did, and how much of the
//! traffic is self-inflicted by the resolver search path.
//!
//! Packets come from the [tap](super::tap)'s `AF_PACKET` socket on every interface, whose
//! BPF filter keeps UDP and TCP port 53 (see [`program`]); each is decoded without
//! allocating ([`wire`]) and matched into a transaction ([`transactions`]): one per question
//! of a client, however many interfaces it crosses. A finished transaction is counted in the
//! Prometheus families ([`families`]) under the client's workload and the upstream it asked,
//! and, when it failed, judged throttled or not once the sampler has said whether its ENI's
//! `linklocal_allowance_exceeded` grew in the interval the query was sent in.
//!
//! Memory is bounded whatever the traffic: the transaction table is allocated once; clients
//! and names for the report are kept in Space-Saving top-N tables (see [`TopN`]), each client
//! remembers only its last [`RECENT`] queries, and clients idle for [`CLIENT_IDLE_MS`] leave.
//!
//! **Search-path amplification.** With `ndots:5` and a search list, a resolver first tries a
//! name with every search suffix appended (`example.com.default.svc.cluster.local`, …), each
//! answered NXDOMAIN, before the name itself; A and AAAA double it. When an answer for a name
//! arrives, the client's recent NXDOMAIN queries for that name plus a suffix are counted as its
//! chain: the amplification factor is the chain's queries over the queries the lookup needed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use self::families::{Families, Reason, Throttling, Totals, Upstream, Upstreams, Workload};
use self::transactions::{Done, Outcome, Sighting, Table};
use self::wire::Name;
use crate::base::allowance::Allowance;
use crate::source::pods::Pods;
use crate::source::Reading;
use crate::sys::packet::{Frame, Instruction};

#[doc(hidden)]
pub mod bench;
pub mod families;
pub(crate) mod transactions;
pub(crate) mod wire;

/// Clients kept (the busiest, Space-Saving).
pub(crate) const CLIENTS: usize = 64;
/// Names kept per client.
pub(crate) const NAMES: usize = 8;
/// Recent queries remembered per client, for search-path chains.
pub(crate) const RECENT: usize = 64;
/// A client silent this long leaves the report.
pub(crate) const CLIENT_IDLE_MS: i64 = 300_000;
/// A chain's queries all come within this long of its answer.
const CHAIN_MS: i64 = 5_000;
/// Bytes of each DNS packet kept by the kernel: the header and the question are all the
/// analysis reads, and a question's name is at most 255 bytes.
pub(crate) const SNAPLEN: u32 = 512;
/// Failed lookups waiting to be judged throttled or not, at most: a minute of failures at
/// 16,000 a second before the sampler reports the interval they were sent in. More are
/// judged at once, as not throttled, and counted in `misjudged`.
const PENDING: usize = 1 << 20;

/// How the DNS analysis is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which destination addresses are which upstream.
    pub upstreams: Upstreams,
    /// A try without a response for this long is unanswered.
    pub timeout: Duration,
    /// Workloads with series of their own.
    pub workloads: usize,
    /// Transactions tracked in flight, at most.
    pub in_flight: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            upstreams: Upstreams::default(),
            timeout: transactions::TIMEOUT,
            workloads: families::DEFAULT_SLOTS,
            in_flight: transactions::CAPACITY,
        }
    }
}

/// The classic BPF program of the DNS capture: UDP or TCP, either port 53, IPv4 or IPv6.
pub fn program() -> Vec<Instruction> {
    use libc::{
        BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX, BPF_MSH, BPF_RET, BPF_W,
    };
    let op = |c: u32| u16::try_from(c).expect("BPF opcodes fit 16 bits");
    let ins = |code: u32, jt: u8, jf: u8, k: u32| Instruction { code: op(code), jt, jf, k };
    let ancillary_protocol = u32::from_ne_bytes((libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL).to_ne_bytes());
    vec![
        /* 0 */ ins(BPF_LD | BPF_W | BPF_ABS, 0, 0, ancillary_protocol),
        /* 1 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 0, 8, 0x0800), // IPv4, else 10
        /* 2 */ ins(BPF_LD | BPF_B | BPF_ABS, 0, 0, 9), // protocol
        /* 3 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 17), // UDP: 5
        /* 4 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 0, 14, 6), // TCP: 5, else reject
        /* 5 */ ins(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0), // X = IP header length
        /* 6 */ ins(BPF_LD | BPF_H | BPF_IND, 0, 0, 0), // source port
        /* 7 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 10, 0, 53), // accept
        /* 8 */ ins(BPF_LD | BPF_H | BPF_IND, 0, 0, 2), // destination port
        /* 9 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 8, 9, 53), // accept, else reject
        /* 10 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 0, 8, 0x86dd), // IPv6, else reject
        /* 11 */ ins(BPF_LD | BPF_B | BPF_ABS, 0, 0, 6), // next header
        /* 12 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 17), // UDP: 14
        /* 13 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 6), // TCP: 14, else reject
        /* 14 */ ins(BPF_LD | BPF_H | BPF_ABS, 0, 0, 40), // source port
        /* 15 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, 53), // accept
        /* 16 */ ins(BPF_LD | BPF_H | BPF_ABS, 0, 0, 42), // destination port
        /* 17 */ ins(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 53), // accept, else reject
        /* 18 */ ins(BPF_RET | BPF_K, 0, 0, SNAPLEN),
        /* 19 */ ins(BPF_RET | BPF_K, 0, 0, 0),
    ]
}

/// A Space-Saving top-N table: at most `cap` keys; a newcomer replaces the smallest count and
/// inherits it, so the heavy hitters are never lost: a key counted more than the smallest
/// kept count is always in the table. Each entry also keeps what it inherited (`error`), so
/// `count - error` is an exact count of what it was seen doing since it was taken in.
#[derive(Clone, Debug)]
pub(crate) struct TopN<K, V> {
    cap: usize,
    items: Vec<Entry<K, V>>,
}

#[derive(Clone, Debug)]
struct Entry<K, V> {
    key: K,
    count: u64,
    error: u64,
    value: V,
}

impl<K: PartialEq + Clone, V: Default> TopN<K, V> {
    /// An empty table of `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self { cap, items: Vec::new() }
    }

    /// Counts one occurrence of `key`; returns its value for updating.
    pub(crate) fn hit(&mut self, key: &K) -> &mut V {
        let i = if let Some(i) = self.items.iter().position(|e| e.key == *key) {
            i
        } else if self.items.len() < self.cap {
            self.items.push(Entry { key: key.clone(), count: 0, error: 0, value: V::default() });
            self.items.len() - 1
        } else {
            let (i, _) = self.items.iter().enumerate().min_by_key(|(_, e)| e.count).expect("non-empty");
            let e = &mut self.items[i];
            (e.key, e.error, e.value) = (key.clone(), e.count, V::default());
            i
        };
        self.items[i].count += 1;
        &mut self.items[i].value
    }

    /// The value of `key`, if kept.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.items.iter_mut().find(|e| e.key == *key).map(|e| &mut e.value)
    }

    /// Drops the entries `keep` says no to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.items.retain(|e| keep(&e.value));
    }

    /// Entries by count, largest first, with the exact count since each was taken in.
    pub fn top(&self) -> Vec<(&K, u64, &V)> {
        let mut v: Vec<&Entry<K, V>> = self.items.iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.count));
        v.into_iter().map(|e| (&e.key, e.count - e.error, &e.value)).collect()
    }
}

#[derive(Clone, Debug)]
struct Recent {
    name: Name,
    qtype: u16,
    at_ms: i64,
    rcode: Option<u8>,
    counted: bool,
}

/// What is known of one client.
#[derive(Clone, Debug, Default)]
pub(crate) struct Client {
    queries: u64,
    responses: u64,
    nxdomain: u64,
    servfail: u64,
    unanswered: u64,
    names: Option<TopN<Name, ()>>,
    recent: VecDeque<Recent>,
    /// Queries per second over the last minute: (second, count) buckets.
    seconds: VecDeque<(i64, u32)>,
    /// When it was first and last seen, Unix ms.
    first_ms: i64,
    last_ms: i64,
    /// When it was last answered NXDOMAIN, Unix ms.
    last_nxdomain_ms: i64,
    lookups: u64,
    chain_queries: u64,
    needed_queries: u64,
    dots: Vec<usize>,
}

/// A failed lookup waiting for the sampler to report the interval it was sent in.
#[derive(Clone, Debug)]
struct Failed {
    workload: Workload,
    upstream: Upstream,
    reason: Reason,
    eni: Option<String>,
    sent_ms: i64,
}

/// The DNS analysis state.
#[derive(Debug)]
pub struct DnsStats {
    settings: Settings,
    table: Table,
    families: Families,
    throttling: Throttling,
    pending: VecDeque<Failed>,
    /// Failed lookups judged before their interval was known (the queue was full).
    unjudged: u64,
    /// The node's workload (and every client's, without pod attribution).
    node: Workload,
    /// Pod attribution, when on: client addresses become workloads.
    pods: Option<Arc<Mutex<Pods>>>,
    /// Pod workloads by client address (`None`: not a pod), valid for `pods_generation`.
    workloads: HashMap<IpAddr, Option<Workload>>,
    pods_generation: u64,
    /// Watched ENIs' names by interface index (the sampler keeps it current).
    enis: HashMap<u32, String>,
    clients: TopN<IpAddr, Client>,
    queries: u64,
    responses: u64,
    rcodes: [u64; 16],
    /// Packets on port 53 that were not a DNS message the analysis reads.
    undecodable: u64,
    /// Packets the kernel could not queue (the ring was full).
    pub dropped: u64,
    /// Finished transactions handed over by the table, reused.
    done: Vec<Done>,
}

impl Default for DnsStats {
    fn default() -> Self {
        Self::new(Settings::default(), None)
    }
}

impl DnsStats {
    /// An analysis set up by `settings`, attributing clients to workloads through `pods`.
    pub fn new(settings: Settings, pods: Option<Arc<Mutex<Pods>>>) -> Self {
        Self {
            table: Table::new(settings.in_flight, settings.timeout),
            families: Families::new(settings.workloads),
            settings,
            throttling: Throttling::default(),
            pending: VecDeque::new(),
            unjudged: 0,
            node: (Arc::from(""), Arc::from("")),
            pods,
            workloads: HashMap::new(),
            pods_generation: u64::MAX,
            enis: HashMap::new(),
            clients: TopN::new(CLIENTS),
            queries: 0,
            responses: 0,
            rcodes: [0; 16],
            undecodable: 0,
            dropped: 0,
            done: Vec::new(),
        }
    }

    /// Takes one captured packet.
    pub(crate) fn ingest(&mut self, frame: Frame<'_>) {
        let Some(d) = wire::parse(frame.data) else {
            self.undecodable += 1;
            return;
        };
        let at_ms = frame.at_ns.div_euclid(1_000_000);
        if d.response {
            if let Some(done) = self.table.response(&d, frame.at_ns) {
                self.finish(done, Some(&d.name));
            }
            return;
        }
        // A query the full table could not track is still a query: counted, its outcome
        // unknown (the table counts it as overflow).
        if !matches!(
            self.table.query(&d, frame.at_ns, frame.ifindex, frame.outgoing),
            Sighting::New | Sighting::Overflow
        ) {
            return;
        }
        self.queries += 1;
        let client = d.src.0;
        let pod = self.pod_workload(client);
        let workload = pod.as_ref().unwrap_or(&self.node);
        self.families.query(workload, self.settings.upstreams.classify(d.dst.0), at_ms);
        self.clients.hit(&client).query(&d.name, d.qtype, at_ms);
    }

    /// Declares the transactions whose time is up unanswered; call it often (the tap does,
    /// every few milliseconds).
    pub(crate) fn expire(&mut self, now_ns: i64) {
        let mut done = std::mem::take(&mut self.done);
        self.table.expire(now_ns, |d| done.push(d));
        for d in done.drain(..) {
            self.finish(d, None);
        }
        self.done = done;
    }

    /// Panics unless the transaction table's structures agree (tests and fuzzing).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn check(&self) {
        self.table.check_invariants();
    }

    /// Counts a finished transaction; `name` is its question's, from the response that ended
    /// it (`None` when it expired).
    fn finish(&mut self, done: Done, name: Option<&Name>) {
        let upstream = self.settings.upstreams.classify(done.server);
        let pod = self.pod_workload(done.client);
        let sent_ms = done.sent_ns.div_euclid(1_000_000);
        let eni = done.egress.and_then(|i| self.enis.get(&i)).cloned();
        let reason = match done.outcome {
            Outcome::Answered { latency_ns, rcode } => {
                self.responses += 1;
                self.rcodes[usize::from(rcode.min(15))] += 1;
                #[expect(clippy::cast_precision_loss, reason = "latencies are far below 2^52 ns")]
                self.families.answered(upstream, latency_ns as f64 / 1e9);
                let at_ms = sent_ms.saturating_add(i64::try_from(latency_ns / 1_000_000).unwrap_or(i64::MAX));
                if let (Some(c), Some(name)) = (self.clients.get_mut(&done.client), name) {
                    let tried = c.response(name, done.qtype, rcode, at_ms);
                    if tried > 0 {
                        self.families.search_path(pod.as_ref().unwrap_or(&self.node), tried);
                    }
                }
                Reason::of_rcode(rcode)
            }
            Outcome::Unanswered => {
                if let Some(c) = self.clients.get_mut(&done.client) {
                    c.unanswered += 1;
                }
                if upstream == Upstream::VpcResolver {
                    if let Some(eni) = &eni {
                        self.families.unanswered(eni);
                    }
                }
                Some(Reason::Timeout)
            }
        };
        if let Some(reason) = reason {
            let workload = pod.unwrap_or_else(|| self.node.clone());
            let failed = Failed { workload, upstream, reason, eni, sent_ms };
            if sent_ms <= self.throttling.known_until_ms {
                self.judge(&failed);
            } else if self.pending.len() < PENDING {
                self.pending.push_back(failed);
            } else {
                self.unjudged += 1;
                self.families.failure(&failed.workload, upstream, reason, false);
            }
        }
    }

    fn judge(&mut self, f: &Failed) {
        // A query to the VPC resolver was throttled if its own ENI dropped link-local packets
        // then; one to a resolver on the node or in the cluster fails because that resolver's
        // forwards were dropped, which on this node shows on any ENI.
        let eni = if f.upstream == Upstream::VpcResolver { f.eni.as_deref() } else { None };
        let throttled = self.throttling.throttled(eni, f.sent_ms);
        self.families.failure(&f.workload, f.upstream, f.reason, throttled);
    }

    /// The workload of a client address's pod; `None` for the node's (the node itself, a
    /// host-network pod, any address that is not a pod of this node, or every client without
    /// pod attribution), which is `self.node`.
    fn pod_workload(&mut self, client: IpAddr) -> Option<Workload> {
        let pods = self.pods.as_ref()?;
        let pods = pods.lock().unwrap_or_else(PoisonError::into_inner);
        if pods.generation != self.pods_generation || self.workloads.len() > 4 * CLIENTS * NAMES {
            self.workloads.clear();
            self.pods_generation = pods.generation;
        }
        self.workloads
            .entry(client)
            .or_insert_with(|| {
                pods.lookup(&client.to_string()).map(|p| {
                    let name = p
                        .workload
                        .as_deref()
                        .map_or(p.pod.as_str(), |w| w.split_once('/').map_or(w, |x| x.1));
                    (Arc::from(p.namespace.as_str()), Arc::from(name))
                })
            })
            .clone()
    }

    /// A watched ENI's reading at `now_ms`, the interface `ifindex`: tells the throttling
    /// join whether its `linklocal_allowance_exceeded` grew since `last` (its previous
    /// reading's time and value, which this updates).
    pub(crate) fn reading(&mut self, ifindex: u32, r: &Reading, last: &mut Option<(i64, u64)>, now_ms: i64) {
        let Some(k) = r.schema.index.exceeded[Allowance::Linklocal.index()] else { return };
        let Some(&value) = r.values.get(k) else { return };
        if let Some((from_ms, before)) = *last {
            self.interval(ifindex, &r.device.name, from_ms, now_ms, value > before);
        }
        *last = Some((now_ms, value));
    }

    /// One sampling interval (from, to] of a watched ENI: whether its
    /// `linklocal_allowance_exceeded` grew.
    pub(crate) fn interval(&mut self, ifindex: u32, eni: &str, from_ms: i64, to_ms: i64, grew: bool) {
        if self.enis.get(&ifindex).is_none_or(|n| n != eni) {
            self.enis.insert(ifindex, eni.to_owned());
        }
        self.throttling.interval(eni, from_ms, to_ms, grew);
    }

    /// Every watched ENI's interval up to `to_ms` has been reported, and `watched` are the
    /// ENIs now: judges the failures sent until then, and returns the families' counters.
    pub(crate) fn tick(&mut self, to_ms: i64, watched: &HashSet<u32>) -> Totals {
        self.enis.retain(|i, _| watched.contains(i));
        let enis = &self.enis;
        self.families.keep_enis(|e| enis.values().any(|n| n == e));
        self.throttling.known_until(to_ms);
        while self.pending.front().is_some_and(|f| f.sent_ms <= to_ms) {
            let f = self.pending.pop_front().expect("checked");
            self.judge(&f);
        }
        self.families.review(to_ms);
        self.clients.retain(|c| to_ms - c.last_ms < CLIENT_IDLE_MS);
        self.families.totals()
    }

    /// A summary for the API, the page and `diagnose`.
    pub fn report(&self, now_ms: i64) -> DnsReport {
        let pods = self.pods.as_ref().map(|p| p.lock().unwrap_or_else(PoisonError::into_inner));
        let clients: Vec<ClientReport> = self
            .clients
            .top()
            .into_iter()
            .map(|(addr, queries, c)| {
                let recent: u32 =
                    c.seconds.iter().filter(|(s, _)| *s > now_ms / 1000 - 60).map(|(_, n)| *n).sum();
                // Over the seconds it was actually watched, up to the last minute.
                let watched = ((now_ms - c.first_ms) / 1000 + 1).clamp(1, 60);
                let factor =
                    if c.needed_queries > 0 { c.chain_queries as f64 / c.needed_queries as f64 } else { 1.0 };
                ClientReport {
                    client: addr.to_string(),
                    queries,
                    qps_1m: f64::from(recent) / watched as f64,
                    nxdomain_ratio: if c.responses > 0 {
                        c.nxdomain as f64 / c.responses as f64
                    } else {
                        0.0
                    },
                    servfail: c.servfail,
                    unanswered: c.unanswered,
                    top_names: c
                        .names
                        .as_ref()
                        .map(|n| n.top().into_iter().map(|(k, n, ())| (k.to_string(), n)).collect())
                        .unwrap_or_default(),
                    amplification: (c.lookups > 0).then(|| Amplification {
                        lookups: c.lookups,
                        queries: c.chain_queries,
                        factor: (factor * 10.0).round() / 10.0,
                        would_save: c.chain_queries - c.needed_queries,
                        recommended_ndots: c.dots.iter().copied().min().unwrap_or(1).clamp(1, 2),
                    }),
                    pod: pods.as_ref().and_then(|p| p.lookup(&addr.to_string()).cloned()),
                }
            })
            .collect();
        let t = self.table.counters();
        let mut hurt: Vec<WorkloadReport> = self
            .families
            .totals()
            .workloads
            .into_iter()
            .filter(|(_, c)| c.queries.iter().sum::<u64>() > 0)
            .map(|((namespace, workload), c)| {
                let failed = |r: Reason, throttled: usize| -> u64 {
                    c.failures.iter().map(|u| u[r.index()][throttled]).sum()
                };
                let by_reason = |r: Reason| failed(r, 0) + failed(r, 1);
                WorkloadReport {
                    namespace: namespace.to_string(),
                    workload: workload.to_string(),
                    queries: c.queries.iter().sum(),
                    timeouts: by_reason(Reason::Timeout),
                    servfail: by_reason(Reason::Servfail),
                    refused: by_reason(Reason::Refused),
                    throttled: Reason::ALL.iter().map(|r| failed(*r, 1)).sum(),
                    search_path: c.search_path,
                }
            })
            .collect();
        hurt.sort_by_key(|w| std::cmp::Reverse((w.failures(), w.queries)));
        DnsReport {
            who_is_hurt: hurt,
            queries: self.queries,
            responses: self.responses,
            nxdomain: self.rcodes[3],
            servfail: self.rcodes[2],
            unanswered: t.unanswered,
            in_flight: self.table.in_flight() as u64,
            duplicates: t.copies + t.duplicate_responses,
            retransmissions: t.retransmissions,
            overflow: t.overflow,
            unmatched: t.unmatched_responses,
            undecodable: self.undecodable,
            unjudged: self.unjudged,
            dropped: self.dropped,
            clients,
        }
    }
}

impl Client {
    fn query(&mut self, name: &Name, qtype: u16, at_ms: i64) {
        if self.queries == 0 {
            self.first_ms = at_ms;
        }
        self.queries += 1;
        self.last_ms = at_ms;
        self.names.get_or_insert_with(|| TopN::new(NAMES)).hit(name);
        let second = at_ms.div_euclid(1000);
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.seconds.push_back((second, 1)),
        }
        while self.seconds.front().is_some_and(|(s, _)| *s <= second - 60) {
            self.seconds.pop_front();
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { name: name.clone(), qtype, at_ms, rcode: None, counted: false });
    }

    /// Takes the answer to one of its queries; returns the search-path queries it ends (the
    /// NXDOMAIN expansions of the name this answer is for).
    fn response(&mut self, name: &Name, qtype: u16, rcode: u8, at_ms: i64) -> u64 {
        self.responses += 1;
        match rcode {
            2 => self.servfail += 1,
            3 => self.nxdomain += 1,
            _ => {}
        }
        if let Some(q) = self.recent.iter_mut().rev().find(|q| q.qtype == qtype && q.name == *name) {
            q.rcode = Some(rcode);
        }
        if rcode == 3 {
            self.last_nxdomain_ms = at_ms;
        }
        // Most answers end no chain: without an NXDOMAIN in the window there is none to look
        // for (the scan below was a third of the capture thread's time at 30,000 queries/s).
        if rcode != 0 || at_ms - self.last_nxdomain_ms > CHAIN_MS {
            return 0;
        }
        // An answer for a name: its search-path chain is every recent NXDOMAIN for the name
        // plus a suffix, and the queries for the name itself.
        let name = name.as_bytes();
        let expansion = |q: &Recent| {
            let n = q.name.as_bytes();
            q.rcode == Some(3) && n.len() > name.len() + 1 && n.starts_with(name) && n[name.len()] == b'.'
        };
        let window = |q: &Recent| at_ms - q.at_ms <= CHAIN_MS && !q.counted;
        let tried = self.recent.iter().filter(|q| window(q) && expansion(q)).count();
        if tried == 0 {
            return 0;
        }
        // The lookup needs one query per record type the resolver asks for (A, and AAAA too
        // when it asks both, as the suffixed queries show).
        let mut types: HashSet<u16> =
            self.recent.iter().filter(|q| window(q) && expansion(q)).map(|q| q.qtype).collect();
        types.insert(qtype);
        let needed = types.len();
        for q in self.recent.iter_mut().filter(|q| at_ms - q.at_ms <= CHAIN_MS && !q.counted) {
            if q.name.as_bytes() == name || expansion(q) {
                q.counted = true;
            }
        }
        self.lookups += 1;
        self.chain_queries += (tried + needed) as u64;
        self.needed_queries += needed as u64;
        // ndots that would have sent this name out absolute first: its number of dots.
        if self.dots.len() < 16 {
            self.dots.push(name.split(|&b| b == b'.').count() - 1);
        }
        tried as u64
    }
}

/// The JSON form of the DNS analysis.
#[derive(Clone, Debug, Serialize)]
pub struct DnsReport {
    /// Queries seen.
    pub queries: u64,
    /// Responses seen.
    pub responses: u64,
    /// NXDOMAIN responses.
    pub nxdomain: u64,
    /// SERVFAIL responses.
    pub servfail: u64,
    /// Queries that got no response within the timeout.
    pub unanswered: u64,
    /// Queries waiting for their response now.
    pub in_flight: u64,
    /// Copies of a message seen on a further interface (one transaction, counted once).
    pub duplicates: u64,
    /// Queries sent again by their client (one transaction, counted once).
    pub retransmissions: u64,
    /// Queries not tracked (their outcome unknown) because the in-flight table was full.
    pub overflow: u64,
    /// Responses to no query seen.
    pub unmatched: u64,
    /// Port-53 packets that were not a DNS message read here.
    pub undecodable: u64,
    /// Failed lookups counted as not throttled before the interval they were sent in was
    /// known (too many waited).
    pub unjudged: u64,
    /// Packets the kernel could not queue for the analysis (its ring was full).
    pub dropped: u64,
    /// The busiest clients, busiest first.
    pub clients: Vec<ClientReport>,
    /// Lookups and failures by workload (those with series of their own, then `other`), the
    /// most failures first.
    pub who_is_hurt: Vec<WorkloadReport>,
}

/// One workload's lookups, as `/metrics` counts them.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadReport {
    /// Namespace ("" for the node, or without pod attribution).
    pub namespace: String,
    /// Workload (`other` for the rest).
    pub workload: String,
    /// Lookups.
    pub queries: u64,
    /// Lookups unanswered within the timeout.
    pub timeouts: u64,
    /// Lookups answered SERVFAIL.
    pub servfail: u64,
    /// Lookups answered REFUSED.
    pub refused: u64,
    /// Failed lookups sent while the link-local allowance was dropping packets.
    pub throttled: u64,
    /// Queries spent on search-path expansions answered NXDOMAIN.
    pub search_path: u64,
}

impl WorkloadReport {
    /// Failed lookups, whatever the reason.
    pub fn failures(&self) -> u64 {
        self.timeouts + self.servfail + self.refused
    }

    /// `namespace/workload`, or what it stands for.
    pub fn name(&self) -> String {
        match (self.namespace.as_str(), self.workload.as_str()) {
            ("", "") => "the node (not a pod)".to_owned(),
            ("", w) => w.to_owned(),
            (n, w) => format!("{n}/{w}"),
        }
    }
}

/// One client.
#[derive(Clone, Debug, Serialize)]
pub struct ClientReport {
    /// Source address of its queries.
    pub client: String,
    /// Queries since it entered the table of the busiest clients (exact).
    pub queries: u64,
    /// Queries per second over the last minute (or the seconds since it was first seen).
    pub qps_1m: f64,
    /// Share of its responses that were NXDOMAIN.
    pub nxdomain_ratio: f64,
    /// SERVFAIL responses.
    pub servfail: u64,
    /// Its queries that got no response within the timeout.
    pub unanswered: u64,
    /// Its most queried names, with counts.
    pub top_names: Vec<(String, u64)>,
    /// Search-path amplification, when seen.
    pub amplification: Option<Amplification>,
    /// The pod at this address, with pod attribution on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::source::pods::PodRef>,
}

/// Search-path amplification of one client.
#[derive(Clone, Debug, Serialize)]
pub struct Amplification {
    /// Lookups that went through the search path before the absolute name.
    pub lookups: u64,
    /// Queries those lookups sent.
    pub queries: u64,
    /// Queries sent per query needed.
    pub factor: f64,
    /// Queries that absolute lookups would not have sent.
    pub would_save: u64,
    /// An `ndots` that sends these names absolute first (1 or 2).
    pub recommended_ndots: usize,
}

impl DnsReport {
    /// Clients whose search path multiplies their queries (factor 2 or more).
    pub(crate) fn amplifying(&self) -> impl Iterator<Item = &ClientReport> {
        self.clients.iter().filter(|c| c.amplification.as_ref().is_some_and(|a| a.factor >= 2.0))
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "DNS: {} queries, {} responses ({} NXDOMAIN, {} SERVFAIL), {} unanswered\n",
            self.queries, self.responses, self.nxdomain, self.servfail, self.unanswered
        );
        for w in self.who_is_hurt.iter().filter(|w| w.failures() > 0).take(10) {
            let _ = writeln!(
                s,
                "  lookups failing: {:<40} {} of {} ({} timeouts, {} SERVFAIL, {} REFUSED), {} during link-local throttling",
                w.name(),
                w.failures(),
                w.queries,
                w.timeouts,
                w.servfail,
                w.refused,
                w.throttled
            );
        }
        for c in self.clients.iter().take(10) {
            let _ = write!(
                s,
                "  {:<39} {:>6} queries  {:>6.1}/s  NXDOMAIN {:>3.0}%  unanswered {}",
                c.client,
                c.queries,
                c.qps_1m,
                c.nxdomain_ratio * 100.0,
                c.unanswered
            );
            if let Some(a) = &c.amplification {
                let _ = write!(s, "  search path x{} ({} queries would be saved)", a.factor, a.would_save);
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests;
