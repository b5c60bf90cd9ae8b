//! DNS analysis: who on this node sends the DNS queries that eat the link-local budget, and
//! how much of it is self-inflicted by the resolver search path.
//!
//! Packets come from an `AF_PACKET` socket on every interface whose BPF filter keeps UDP and
//! TCP port 53 (see [`program`]); messages are decoded with `simple-dns`. Memory is bounded
//! whatever the traffic: clients and names are kept in Space-Saving top-N tables (a client or
//! name that is not among the busiest is evicted by the next newcomer, counts stay upper
//! bounds), each client remembers only its last [`RECENT`] queries, and duplicates of a packet
//! seen on two interfaces are dropped through a bounded set of recent message keys.
//!
//! **Search-path amplification.** With `ndots:5` and a search list, a resolver first tries a
//! name with every search suffix appended (`example.com.default.svc.cluster.local`, …), each
//! answered NXDOMAIN, before the name itself; A and AAAA double it. When an answer for a name
//! arrives, the client's recent NXDOMAIN queries for that name plus a suffix are counted as its
//! chain: the amplification factor is the chain's queries over the queries the lookup needed.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use simple_dns::{Packet, PacketFlag, RCODE};

use crate::sys::packet::Instruction;

/// Clients kept (the busiest, Space-Saving).
pub(crate) const CLIENTS: usize = 64;
/// Names kept per client.
pub(crate) const NAMES: usize = 8;
/// Recent queries remembered per client, for search-path chains.
pub(crate) const RECENT: usize = 64;
/// Message keys remembered to drop the same packet seen on two interfaces.
const SEEN: usize = 4096;
/// A chain's queries all come within this long of its answer.
const CHAIN_MS: i64 = 5_000;
/// Bytes of each DNS packet kept by the kernel (a UDP message under EDNS's usual 1232 fits).
pub(crate) const SNAPLEN: u32 = 1500;

/// One decoded DNS message (its first question).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Transaction id.
    pub id: u16,
    /// A response (QR set)?
    pub response: bool,
    /// Response code (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, …).
    pub rcode: u8,
    /// The question's name, lower case, without the trailing dot.
    pub name: String,
    /// The question's type (1 A, 28 AAAA, …).
    pub qtype: u16,
}

/// Decodes a DNS message; `None` for anything malformed, truncated or hostile.
pub(crate) fn decode(payload: &[u8]) -> Option<Message> {
    let packet = Packet::parse(payload).ok()?;
    let question = packet.questions.first()?;
    let rcode = match packet.rcode() {
        RCODE::NoError => 0,
        RCODE::FormatError => 1,
        RCODE::ServerFailure => 2,
        RCODE::NameError => 3,
        RCODE::NotImplemented => 4,
        RCODE::Refused => 5,
        _ => 15,
    };
    let mut name = question.qname.to_string().to_ascii_lowercase();
    while name.ends_with('.') {
        name.pop();
    }
    Some(Message {
        id: packet.id(),
        response: packet.has_flags(PacketFlag::RESPONSE),
        rcode,
        name,
        qtype: u16::from(question.qtype),
    })
}

/// A DNS message with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Source address and port.
    pub src: (IpAddr, u16),
    /// Destination address and port.
    pub dst: (IpAddr, u16),
    /// The message.
    pub message: Message,
}

/// Parses an IP packet (from its header on) carrying DNS over UDP or TCP.
pub(crate) fn parse_packet(ip: &[u8]) -> Option<Seen> {
    let (src, dst, proto, l4) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let src = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?));
            let dst = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?));
            (src, dst, *ip.get(9)?, ip.get(ihl..)?)
        }
        6 => {
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?));
            (src, dst, *ip.get(6)?, ip.get(40..)?)
        }
        _ => return None,
    };
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let (sport, dport) = (port(0)?, port(2)?);
    let payload = match proto {
        17 => l4.get(8..)?,
        6 => {
            // TCP: the segment's data starts with the message's 2-byte length.
            let offset = usize::from(*l4.get(12)? >> 4) * 4;
            l4.get(offset + 2..)?
        }
        _ => return None,
    };
    Some(Seen { src: (src, sport), dst: (dst, dport), message: decode(payload)? })
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
/// inherits it (so counts are upper bounds, and the heavy hitters are never lost).
#[derive(Clone, Debug)]
pub(crate) struct TopN<K, V> {
    cap: usize,
    items: Vec<(K, u64, V)>,
}

impl<K: PartialEq + Clone, V: Default> TopN<K, V> {
    /// An empty table of `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self { cap, items: Vec::new() }
    }

    /// Counts one occurrence of `key`; returns its value for updating.
    pub(crate) fn hit(&mut self, key: &K) -> &mut V {
        let i = if let Some(i) = self.items.iter().position(|(k, _, _)| k == key) {
            i
        } else if self.items.len() < self.cap {
            self.items.push((key.clone(), 0, V::default()));
            self.items.len() - 1
        } else {
            let (i, _) = self.items.iter().enumerate().min_by_key(|(_, (_, c, _))| *c).expect("non-empty");
            self.items[i].0 = key.clone();
            self.items[i].2 = V::default();
            i
        };
        self.items[i].1 += 1;
        &mut self.items[i].2
    }

    /// The value of `key`, if kept.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.items.iter_mut().find(|(k, _, _)| k == key).map(|(_, _, v)| v)
    }

    /// Entries by count, largest first.
    pub fn top(&self) -> Vec<(&K, u64, &V)> {
        let mut v: Vec<_> = self.items.iter().map(|(k, c, v)| (k, *c, v)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}

#[derive(Clone, Debug)]
struct Recent {
    name: String,
    qtype: u16,
    at_ms: i64,
    id: u16,
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
    names: Option<TopN<String, ()>>,
    recent: VecDeque<Recent>,
    /// Queries per second over the last minute: (second, count) buckets.
    seconds: VecDeque<(i64, u32)>,
    lookups: u64,
    chain_queries: u64,
    needed_queries: u64,
    dots: Vec<usize>,
}

/// The DNS analysis state.
#[derive(Clone, Debug)]
pub struct DnsStats {
    clients: TopN<IpAddr, Client>,
    seen: HashSet<(IpAddr, u16, u16, bool)>,
    seen_order: VecDeque<(IpAddr, u16, u16, bool)>,
    queries: u64,
    responses: u64,
    rcodes: [u64; 16],
    duplicates: u64,
    /// Packets the kernel could not queue (the ring was full).
    pub dropped: u64,
}

impl Default for DnsStats {
    fn default() -> Self {
        Self {
            clients: TopN::new(CLIENTS),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            queries: 0,
            responses: 0,
            rcodes: [0; 16],
            duplicates: 0,
            dropped: 0,
        }
    }
}

impl DnsStats {
    /// Takes one message seen at `at_ms`.
    pub(crate) fn observe(&mut self, seen: &Seen, at_ms: i64) {
        let m = &seen.message;
        let (client, port) = if m.response { seen.dst } else { seen.src };
        let key = (client, port, m.id, m.response);
        if !self.seen.insert(key) {
            self.duplicates += 1;
            return;
        }
        self.seen_order.push_back(key);
        if self.seen_order.len() > SEEN {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if m.response {
            self.responses += 1;
            self.rcodes[usize::from(m.rcode.min(15))] += 1;
            if let Some(c) = self.clients.get_mut(&client) {
                c.response(m, at_ms);
            }
        } else {
            self.queries += 1;
            self.clients.hit(&client).query(m, at_ms);
        }
    }

    /// A summary for the API, the page and `diagnose`.
    pub fn report(&self, now_ms: i64) -> DnsReport {
        let clients: Vec<ClientReport> = self
            .clients
            .top()
            .into_iter()
            .map(|(addr, queries, c)| {
                let recent: u32 =
                    c.seconds.iter().filter(|(s, _)| *s > now_ms / 1000 - 60).map(|(_, n)| *n).sum();
                let factor =
                    if c.needed_queries > 0 { c.chain_queries as f64 / c.needed_queries as f64 } else { 1.0 };
                ClientReport {
                    client: addr.to_string(),
                    queries,
                    qps_1m: f64::from(recent) / 60.0,
                    nxdomain_ratio: if c.responses > 0 {
                        c.nxdomain as f64 / c.responses as f64
                    } else {
                        0.0
                    },
                    servfail: c.servfail,
                    top_names: c
                        .names
                        .as_ref()
                        .map(|n| n.top().into_iter().map(|(k, n, ())| (k.clone(), n)).collect())
                        .unwrap_or_default(),
                    amplification: (c.lookups > 0).then(|| Amplification {
                        lookups: c.lookups,
                        queries: c.chain_queries,
                        factor: (factor * 10.0).round() / 10.0,
                        would_save: c.chain_queries - c.needed_queries,
                        recommended_ndots: c.dots.iter().copied().min().unwrap_or(1).clamp(1, 2),
                    }),
                    pod: None,
                }
            })
            .collect();
        DnsReport {
            queries: self.queries,
            responses: self.responses,
            nxdomain: self.rcodes[3],
            servfail: self.rcodes[2],
            duplicates: self.duplicates,
            dropped: self.dropped,
            clients,
        }
    }
}

impl Client {
    fn query(&mut self, m: &Message, at_ms: i64) {
        self.queries += 1;
        self.names.get_or_insert_with(|| TopN::new(NAMES)).hit(&m.name);
        let second = at_ms / 1000;
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
        self.recent.push_back(Recent {
            name: m.name.clone(),
            qtype: m.qtype,
            at_ms,
            id: m.id,
            rcode: None,
            counted: false,
        });
    }

    fn response(&mut self, m: &Message, at_ms: i64) {
        self.responses += 1;
        match m.rcode {
            2 => self.servfail += 1,
            3 => self.nxdomain += 1,
            _ => {}
        }
        if let Some(q) = self.recent.iter_mut().rev().find(|q| q.id == m.id && q.name == m.name) {
            q.rcode = Some(m.rcode);
        }
        if m.rcode != 0 {
            return;
        }
        // An answer for a name: its search-path chain is every recent NXDOMAIN for the name
        // plus a suffix, and the queries for the name itself.
        let prefix = format!("{}.", m.name);
        let window = |q: &Recent| at_ms - q.at_ms <= CHAIN_MS && !q.counted;
        let tried: usize = self
            .recent
            .iter()
            .filter(|q| window(q) && q.rcode == Some(3) && q.name.starts_with(&prefix))
            .count();
        if tried == 0 {
            return;
        }
        // The lookup needs one query per record type the resolver asks for (A, and AAAA too
        // when it asks both, as the suffixed queries show).
        let mut types: HashSet<u16> = self
            .recent
            .iter()
            .filter(|q| window(q) && q.rcode == Some(3) && q.name.starts_with(&prefix))
            .map(|q| q.qtype)
            .collect();
        types.insert(m.qtype);
        let needed = types.len();
        for q in self.recent.iter_mut().filter(|q| at_ms - q.at_ms <= CHAIN_MS && !q.counted) {
            if q.name == m.name || (q.rcode == Some(3) && q.name.starts_with(&prefix)) {
                q.counted = true;
            }
        }
        self.lookups += 1;
        self.chain_queries += (tried + needed) as u64;
        self.needed_queries += needed as u64;
        // ndots that would have sent this name out absolute first: its number of dots.
        if self.dots.len() < 16 {
            self.dots.push(m.name.matches('.').count());
        }
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
    /// Copies of a message seen on a second interface (ignored).
    pub duplicates: u64,
    /// Packets the capture could not keep up with.
    pub dropped: u64,
    /// The busiest clients, busiest first.
    pub clients: Vec<ClientReport>,
}

/// One client.
#[derive(Clone, Debug, Serialize)]
pub struct ClientReport {
    /// Source address of its queries.
    pub client: String,
    /// Queries (an upper bound once clients are evicted).
    pub queries: u64,
    /// Queries per second over the last minute.
    pub qps_1m: f64,
    /// Share of its responses that were NXDOMAIN.
    pub nxdomain_ratio: f64,
    /// SERVFAIL responses.
    pub servfail: u64,
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
            "DNS: {} queries, {} responses ({} NXDOMAIN, {} SERVFAIL)\n",
            self.queries, self.responses, self.nxdomain, self.servfail
        );
        for c in self.clients.iter().take(10) {
            let _ = write!(
                s,
                "  {:<39} {:>6} queries  {:>6.1}/s  NXDOMAIN {:>3.0}%",
                c.client,
                c.queries,
                c.qps_1m,
                c.nxdomain_ratio * 100.0
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
