//! The bounded table of DNS transactions in flight: every query matched to its response, or
//! declared unanswered once its timeout passes.
//!
//! The capture socket is on every interface, so a query is *seen* once per interface it
//! crosses (the pod's veth, then the ENI it leaves through, or a second veth to a CoreDNS pod
//! on the same node, or `lo` twice). A *transaction* is one question of one client socket,
//! however many times it is seen, retransmitted or retried over TCP; this module turns
//! sightings into transactions and finished transactions into [`Done`] records.
//!
//! Memory is allocated once, in [`Table::new`], and never grows: a slab of 96-byte slots
//! (reserved, filled as the peak in flight requires), an open-addressing hash index, a timing
//! wheel threaded through the slots, and two small caches of recent keys. When the table is
//! full a new query is counted in [`Counters::overflow`] and not tracked: nothing is ever
//! evicted, nothing is lost without a count. The question's name is not kept (a slot holds
//! its hash): the caller has it in the response that ends a transaction, and an unanswered
//! one needs none.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::wire::{mix, Dns};

/// Transactions in flight by default: a 5-second outage at 13,000 queries/s.
pub(crate) const CAPACITY: usize = 65_536;
/// The largest capacity accepted (slot numbers must stay below the index entries' flag bit).
pub(crate) const MAX_CAPACITY: usize = 1 << 24;
/// glibc's per-try timeout (`options timeout:5`), the default for declaring a try lost.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);
/// Interfaces remembered per transaction. A query crosses two (veth in, ENI out; or two
/// veths through kube-proxy; or `lo` out and in); four leave room for an overlay.
const INTERFACES: usize = 4;
/// Recently finished keys remembered, to tell a duplicate response (a copy seen on a second
/// interface, or the answer to a retransmission) from one whose query was never seen.
const RECENT: usize = 4096;
/// Keys of untracked queries remembered, so that their copies on further interfaces are not
/// counted as queries again. Copies come microseconds apart: a few entries would do.
const OVERFLOWED: usize = 1024;
/// The timing wheel's tick: 2^24 ns, about 17 ms. A transaction is declared unanswered at
/// most one tick plus the [`Table::expire`] period after its deadline.
const TICK_SHIFT: u32 = 24;
/// "No slot", in the wheel's and the free list's links.
const NONE: u32 = u32::MAX;
/// In a slot's `prev`: the slot is first in its wheel bucket, whose number is in the low bits.
const HEAD: u32 = 1 << 31;
/// In an index entry: the entry is the port-less key of a truncated transaction.
const PORTLESS: u64 = 1 << 31;

// A slot's flags.
const CLIENT_V4: u8 = 1;
const SERVER_V4: u8 = 2;
/// The transaction went over TCP, from the start or after a fall-back.
const TCP: u8 = 4;
/// A UDP response came back truncated: the slot is also indexed by its port-less key.
const TRUNCATED: u8 = 8;
/// In a slot's `egress`: no outgoing sighting yet.
const NO_EGRESS: u8 = u8::MAX;

/// What one query sighting was to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sighting {
    /// The first sighting of a new transaction.
    New,
    /// The same try seen on another interface (or the other direction of the same one); or
    /// a further sighting, within the timeout, of a query the table could not track.
    Copy,
    /// The client sent the query again: an interface saw it a second time.
    Retransmission,
    /// The client retried over TCP, as after a truncated (TC) UDP response.
    Fallback,
    /// The table is full: the query is not tracked (counted in [`Counters::overflow`]).
    Overflow,
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response arrived in time.
    Answered {
        /// From the first sighting of the query to the first sighting of the response,
        /// nanoseconds (0 when copies arrived out of order).
        latency_ns: u64,
        /// Its response code.
        rcode: u8,
    },
    /// No response within the timeout after the last try.
    Unanswered,
}

/// A finished transaction. Its question's name is not here: an answered transaction ends
/// with the response the caller holds, which carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    /// Who asked: the query's source address.
    pub client: IpAddr,
    /// The query's destination at its first sighting: on the client pod's veth that is the
    /// address the pod asked (a service address before kube-proxy's DNAT), the one to
    /// classify the upstream by.
    pub server: IpAddr,
    /// The interface of the latest outgoing sighting (the ENI the query left the node by),
    /// if it was seen leaving.
    pub egress: Option<u32>,
    /// When the query was first seen, wall-clock nanoseconds.
    pub sent_ns: i64,
    /// The DNS id.
    pub id: u16,
    /// The question's type.
    pub qtype: u16,
    /// Answered (with latency and response code) or not.
    pub outcome: Outcome,
    /// Times the client sent the query again (over the same transport).
    pub retransmissions: u32,
    /// Whether the transaction went over TCP (from the start, or after a fall-back).
    pub tcp: bool,
    /// Whether a UDP response came back truncated (TC).
    pub truncated: bool,
}

/// What the table has counted since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Transactions started. Always `answered + unanswered + in_flight`.
    pub queries: u64,
    /// Sightings of a query on a further interface (of an untracked query too).
    pub copies: u64,
    /// Queries sent again by their client.
    pub retransmissions: u64,
    /// Transactions retried over TCP.
    pub tcp_fallbacks: u64,
    /// Queries not tracked because the table was full. Their further sightings within the
    /// timeout are counted as copies; their responses as unmatched.
    pub overflow: u64,
    /// Transactions answered.
    pub answered: u64,
    /// Transactions declared unanswered.
    pub unanswered: u64,
    /// Transactions whose UDP response came back truncated (TC): each waits for its TCP retry.
    pub truncated_responses: u64,
    /// Responses (and their copies) that arrived after their transaction's deadline: it
    /// ended unanswered.
    pub late_responses: u64,
    /// Further sightings of a response to a transaction that was just answered (a copy on
    /// another interface, or the answer to a retransmission).
    pub duplicate_responses: u64,
    /// Responses matching no transaction known or recently ended.
    pub unmatched_responses: u64,
}

/// One transaction in flight, in 96 bytes (a cache line and a half): addresses as 16 bytes
/// and a flag, the name as its hash, the crossed interfaces in two small arrays.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The client's address (IPv4 mapped into IPv6 when `CLIENT_V4`).
    client: [u8; 16],
    /// The query's destination at its first sighting (IPv4 mapped when `SERVER_V4`).
    server: [u8; 16],
    name_hash: u64,
    first_ns: i64,
    last_try_ns: i64,
    /// The interfaces that saw the transaction ...
    ifindex: [u32; INTERFACES],
    /// ... and, for each, the latest try it saw (see `mark`) and the direction (the low
    /// bit, set when outgoing). 0 for an unused entry.
    seen: [u8; INTERFACES],
    /// The previous slot in the wheel bucket, or `HEAD | bucket` for the first; on the free
    /// list, unused.
    prev: u32,
    /// The next slot in the wheel bucket, or on the free list; `NONE` at the end.
    next: u32,
    id: u16,
    qtype: u16,
    /// The client's port: two sockets of one client are two transactions.
    port: u16,
    /// Tries so far (1 for the first), saturating.
    tries: u16,
    retransmissions: u16,
    flags: u8,
    /// Which `ifindex` saw the latest outgoing sighting, or `NO_EGRESS`.
    egress: u8,
}

// The budget of the issue: 65,536 transactions in flight in about 6 MiB.
const _: () = assert!(size_of::<Slot>() <= 96);

/// The key of a transaction, from one of its packets: the client's address and port, the DNS
/// id, the question's type and name.
///
/// Not the server: through kube-proxy's DNAT the destination differs per interface (the
/// service address on the pod's veth, a CoreDNS pod's address on the next). The port is in
/// the key, so two sockets of one client asking the same question with the same id (dnsperf's
/// sockets cycling their ids; a busy resolver's random ids) are two transactions; glibc's
/// retry over TCP from another port after a truncated response is found by the port-less key,
/// which only truncated transactions are indexed by.
#[derive(Clone, Copy)]
struct Key {
    client: [u8; 16],
    v4: bool,
    port: u16,
    id: u16,
    qtype: u16,
    name_hash: u64,
}

impl Key {
    /// The key of `d`, whose client is at `client` (the query's source, the response's
    /// destination).
    fn new(d: &Dns<'_>, (client, port): (IpAddr, u16)) -> Self {
        let (client, v4) = pack(client);
        Self { client, v4, port, id: d.id, qtype: d.qtype, name_hash: d.name.hash64() }
    }

    fn of(s: &Slot) -> Self {
        Self {
            client: s.client,
            v4: s.flags & CLIENT_V4 != 0,
            port: s.port,
            id: s.id,
            qtype: s.qtype,
            name_hash: s.name_hash,
        }
    }

    /// Whether `s` is this key's transaction (whatever its port, when `portless`).
    fn matches(&self, s: &Slot, portless: bool) -> bool {
        s.name_hash == self.name_hash
            && s.id == self.id
            && s.qtype == self.qtype
            && (portless || s.port == self.port)
            && s.client == self.client
            && (s.flags & CLIENT_V4 != 0) == self.v4
    }
}

/// An address as a slot keeps it: 16 bytes (IPv4 mapped into IPv6) and whether it is IPv4.
fn pack(a: IpAddr) -> ([u8; 16], bool) {
    match a {
        IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), true),
        IpAddr::V6(a) => (a.octets(), false),
    }
}

fn unpack(bytes: [u8; 16], v4: bool) -> IpAddr {
    if v4 {
        let [.., a, b, c, d] = bytes;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// A try number as an interface's entry keeps it: in 1..=127, so an entry is never 0 and has
/// room for the direction bit. A try 127 tries later looks the same: only an interface that
/// missed 127 tries in a row would take a copy for a retransmission.
fn mark(tries: u16) -> u8 {
    u8::try_from((tries.max(1) - 1) % 127 + 1).unwrap_or(1)
}

/// The transactions in flight, bounded. See the module documentation.
#[derive(Debug)]
pub(crate) struct Table {
    slots: Vec<Slot>,
    /// The first free slot, the others linked through their `next`; `NONE` when the slots
    /// in use are all there are.
    free: u32,
    in_flight: usize,
    /// Open addressing, linear probing, no tombstones (deletion shifts back): each entry is
    /// `tag << 32 | kind | slot + 1`, 0 when empty, `kind` 0 for the key of a transaction and
    /// `PORTLESS` for the port-less key of a truncated one. Twice the capacity, so probes stay
    /// short.
    index: Vec<u64>,
    index_mask: usize,
    /// The timing wheel: the head of each bucket's list, by deadline tick.
    wheel: Vec<u32>,
    /// The first tick not yet expired; set by the first query or expiry.
    cursor: Option<i64>,
    /// Keys of recently finished transactions (see `ended`), direct-mapped: a key stays
    /// until another lands in its place, some 100 ms at 30,000 queries/s, and copies of a
    /// response come microseconds apart.
    recent: Vec<u64>,
    /// Keys of queries not tracked (the table was full), with the time of their sighting,
    /// direct-mapped: a further sighting within the timeout is a copy, not another query.
    overflowed: Vec<(u64, i64)>,
    capacity: usize,
    timeout_ns: i64,
    /// A per-table secret mixed into every key, so crafted names cannot collide in the index.
    seed: u64,
    counters: Counters,
}

fn at(slot: u32) -> usize {
    slot as usize
}

impl Table {
    /// A table of at most `capacity` transactions in flight (clamped to
    /// 1..=[`MAX_CAPACITY`]), declaring a transaction unanswered `timeout` after its last try.
    /// Allocates everything it will ever use.
    pub(crate) fn new(capacity: usize, timeout: Duration) -> Self {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let timeout_ns = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX).max(1);
        let index_len = (capacity * 2).next_power_of_two().max(16);
        // A wheel a little longer than the timeout, so a deadline comes round once; a longer
        // timeout only makes some entries be looked at more than once.
        let ticks = usize::try_from((timeout_ns >> TICK_SHIFT) + 2).unwrap_or(usize::MAX);
        let wheel_len = ticks.clamp(16, 1 << 16).next_power_of_two();
        Self {
            slots: Vec::with_capacity(capacity),
            free: NONE,
            in_flight: 0,
            // Zeroed allocations: pages are mapped as they are first written.
            index: vec![0; index_len],
            index_mask: index_len - 1,
            wheel: vec![NONE; wheel_len],
            cursor: None,
            recent: vec![0; RECENT],
            overflowed: vec![(0, i64::MIN); OVERFLOWED],
            capacity,
            timeout_ns,
            seed: RandomState::new().hash_one(0x656e_6177_6174_6368_u64),
            counters: Counters::default(),
        }
    }

    /// Transactions in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The most transactions tracked at once.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// What the table has counted.
    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// Bytes the table may occupy: everything it allocated, which it never exceeds. Pages of
    /// the slab and index are only resident once used, so a quiet node holds far less.
    pub(crate) fn bytes(&self) -> usize {
        size_of::<Self>()
            + self.slots.capacity() * size_of::<Slot>()
            + self.index.capacity() * size_of::<u64>()
            + self.wheel.capacity() * size_of::<u32>()
            + self.recent.capacity() * size_of::<u64>()
            + self.overflowed.capacity() * size_of::<(u64, i64)>()
    }

    /// The hash of a key, or of its port-less form.
    fn key_hash(&self, key: &Key, portless: bool) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let address = if key.v4 {
            let [.., a, b, c, d] = key.client;
            u64::from(u32::from_be_bytes([a, b, c, d]))
        } else {
            let bits = u128::from_be_bytes(key.client);
            let half = |b: u128| u64::try_from(b & u128::from(u64::MAX)).unwrap_or(0);
            half(bits) ^ mix(half(bits >> 64))
        };
        let port = if portless { 0 } else { key.port };
        let small = u64::from(port) << 48
            | u64::from(key.id) << 32
            | u64::from(key.qtype) << 16
            | u64::from(portless) << 1
            | u64::from(key.v4);
        // The name first, through the secret: names are the part a client can craft, and two
        // names collide here only if their 64-bit hashes do. The multiply keeps the address
        // and the small fields from cancelling each other out.
        mix((mix(self.seed ^ key.name_hash) ^ address).wrapping_mul(K) ^ small)
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & self.index_mask
    }

    /// The index position and slot of a key (of its port-less form, `portless`).
    fn find(&self, hash: u64, key: &Key, portless: bool) -> Option<(usize, u32)> {
        let tag = tag(hash);
        let kind = if portless { PORTLESS } else { 0 };
        let mut pos = self.home(tag);
        loop {
            let entry = self.index[pos];
            if entry == 0 {
                return None;
            }
            if entry_tag(entry) == tag && entry & PORTLESS == kind {
                let slot = entry_slot(entry);
                if key.matches(&self.slots[at(slot)], portless) {
                    return Some((pos, slot));
                }
            }
            pos = (pos + 1) & self.index_mask;
        }
    }

    /// Indexes a slot under a hash of its key.
    fn insert(&mut self, hash: u64, slot: u32, portless: bool) {
        let tag = tag(hash);
        let mut pos = self.home(tag);
        while self.index[pos] != 0 {
            pos = (pos + 1) & self.index_mask;
        }
        let kind = if portless { PORTLESS } else { 0 };
        self.index[pos] = u64::from(tag) << 32 | kind | (u64::from(slot) + 1);
    }

    /// Removes the index entry at `pos`, shifting back the entries after it that probed past
    /// it, so lookups never meet a hole before their entry.
    fn unindex(&mut self, mut pos: usize) {
        let mut next = (pos + 1) & self.index_mask;
        loop {
            let entry = self.index[next];
            if entry == 0 {
                break;
            }
            let home = self.home(entry_tag(entry));
            // Moves it if its home is not in (pos, next].
            if (next.wrapping_sub(home) & self.index_mask) >= (next.wrapping_sub(pos) & self.index_mask) {
                self.index[pos] = entry;
                pos = next;
            }
            next = (next + 1) & self.index_mask;
        }
        self.index[pos] = 0;
    }

    /// Removes a slot's entry (its port-less one, `portless`) from the index.
    fn unindex_slot(&mut self, slot: u32, portless: bool) {
        let hash = self.key_hash(&Key::of(&self.slots[at(slot)]), portless);
        let kind = if portless { PORTLESS } else { 0 };
        let mut pos = self.home(tag(hash));
        for _ in 0..self.index.len() {
            let entry = self.index[pos];
            if entry == 0 {
                return;
            }
            if entry_slot(entry) == slot && entry & PORTLESS == kind {
                self.unindex(pos);
                return;
            }
            pos = (pos + 1) & self.index_mask;
        }
    }

    fn deadline(&self, slot: u32) -> i64 {
        self.slots[at(slot)].last_try_ns.saturating_add(self.timeout_ns)
    }

    /// Links a slot into the wheel bucket of its deadline (or the next to expire, when that
    /// tick is already past).
    fn link(&mut self, slot: u32) {
        let tick = self.deadline(slot) >> TICK_SHIFT;
        let tick = self.cursor.map_or(tick, |c| tick.max(c));
        let mask = i64::try_from(self.wheel.len() - 1).unwrap_or(0);
        // The wheel has at most 2^16 buckets: the number fits below `HEAD`.
        let bucket = u32::try_from(tick & mask).unwrap_or(0);
        let head = self.wheel[at(bucket)];
        if head != NONE {
            self.slots[at(head)].prev = slot;
        }
        let s = &mut self.slots[at(slot)];
        (s.prev, s.next) = (HEAD | bucket, head);
        self.wheel[at(bucket)] = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Slot { prev, next, .. } = self.slots[at(slot)];
        if prev & HEAD != 0 {
            self.wheel[at(prev & !HEAD)] = next;
        } else {
            self.slots[at(prev)].next = next;
        }
        if next != NONE {
            // The first in the bucket now, if this one was.
            self.slots[at(next)].prev = prev;
        }
    }

    /// Takes a query seen at `at_ns` (the kernel's wall-clock timestamp) on interface
    /// `ifindex`, leaving it (`outgoing`, `PACKET_OUTGOING`) or arriving.
    ///
    /// Each interface remembers the latest try it saw in each direction: seeing that try
    /// again is a new try (a retransmission), and the other interfaces then see copies of
    /// the new try. A TCP query whose own key is unknown continues the truncated transaction
    /// of the same client, id and question, if there is one: glibc's fall-back, from
    /// another port.
    pub(crate) fn query(&mut self, d: &Dns<'_>, at_ns: i64, ifindex: u32, outgoing: bool) -> Sighting {
        let key = Key::new(d, d.src);
        let hash = self.key_hash(&key, false);
        if let Some((_, slot)) = self.find(hash, &key, false) {
            return self.sighted(slot, d.tcp, at_ns, ifindex, outgoing);
        }
        if d.tcp {
            if let Some((_, slot)) = self.find(self.key_hash(&key, true), &key, true) {
                return self.sighted(slot, true, at_ns, ifindex, outgoing);
            }
        }
        let (last, seen_ns) = self.overflowed[self.overflowed_at(hash)];
        if last == hash && at_ns.abs_diff(seen_ns) <= self.timeout_ns.unsigned_abs() {
            self.counters.copies += 1;
            return Sighting::Copy;
        }
        self.start(d, key, hash, at_ns, ifindex, outgoing)
    }

    /// A further sighting of the transaction in `slot`.
    fn sighted(&mut self, slot: u32, tcp: bool, at_ns: i64, ifindex: u32, outgoing: bool) -> Sighting {
        let s = &mut self.slots[at(slot)];
        s.first_ns = s.first_ns.min(at_ns);
        let direction = u8::from(outgoing);
        let known = (0..INTERFACES)
            .find(|&k| s.seen[k] != 0 && s.ifindex[k] == ifindex && s.seen[k] & 1 == direction);
        let sighting = if tcp && s.flags & TCP == 0 {
            Sighting::Fallback
        } else if known.is_some_and(|k| s.seen[k] >> 1 == mark(s.tries)) {
            Sighting::Retransmission
        } else {
            // A fifth interface is not remembered: it always sees copies (and is not taken
            // for the egress).
            Sighting::Copy
        };
        if sighting != Sighting::Copy {
            s.tries = s.tries.saturating_add(1);
            if tcp {
                s.flags |= TCP;
            }
        }
        // This interface, in this direction, has now seen the current try.
        if let Some(k) = known.or_else(|| s.seen.iter().position(|&m| m == 0)) {
            (s.ifindex[k], s.seen[k]) = (ifindex, mark(s.tries) << 1 | direction);
            if outgoing {
                s.egress = u8::try_from(k).unwrap_or(NO_EGRESS);
            }
        }
        match sighting {
            Sighting::Copy => self.counters.copies += 1,
            Sighting::Retransmission => {
                s.retransmissions = s.retransmissions.saturating_add(1);
                self.counters.retransmissions += 1;
            }
            Sighting::Fallback => self.counters.tcp_fallbacks += 1,
            Sighting::New | Sighting::Overflow => {}
        }
        if sighting != Sighting::Copy {
            self.refresh(slot, at_ns);
        }
        sighting
    }

    /// A try was made at `at_ns`: its deadline moves.
    fn refresh(&mut self, slot: u32, at_ns: i64) {
        let s = &mut self.slots[at(slot)];
        if at_ns > s.last_try_ns {
            s.last_try_ns = at_ns;
            self.unlink(slot);
            self.link(slot);
        }
    }

    fn start(
        &mut self,
        d: &Dns<'_>,
        key: Key,
        hash: u64,
        at_ns: i64,
        ifindex: u32,
        outgoing: bool,
    ) -> Sighting {
        let (server, server_v4) = pack(d.dst.0);
        let fresh = Slot {
            client: key.client,
            server,
            name_hash: key.name_hash,
            first_ns: at_ns,
            last_try_ns: at_ns,
            ifindex: [ifindex, 0, 0, 0],
            seen: [mark(1) << 1 | u8::from(outgoing), 0, 0, 0],
            prev: NONE,
            next: NONE,
            id: key.id,
            qtype: key.qtype,
            port: key.port,
            tries: 1,
            retransmissions: 0,
            flags: if key.v4 { CLIENT_V4 } else { 0 }
                | if server_v4 { SERVER_V4 } else { 0 }
                | if d.tcp { TCP } else { 0 },
            egress: if outgoing { 0 } else { NO_EGRESS },
        };
        let slot = if self.free != NONE {
            let slot = self.free;
            self.free = self.slots[at(slot)].next;
            self.slots[at(slot)] = fresh;
            slot
        } else if self.slots.len() < self.capacity {
            // Within the capacity reserved in `new`: no reallocation.
            self.slots.push(fresh);
            u32::try_from(self.slots.len() - 1).unwrap_or(NONE)
        } else {
            let i = self.overflowed_at(hash);
            self.overflowed[i] = (hash, at_ns);
            self.counters.overflow += 1;
            return Sighting::Overflow;
        };
        self.in_flight += 1;
        self.counters.queries += 1;
        self.cursor.get_or_insert(at_ns >> TICK_SHIFT);
        self.insert(hash, slot, false);
        self.link(slot);
        Sighting::New
    }

    /// Takes a response seen at `at_ns` on interface `ifindex`. The first sighting of a
    /// response ends its transaction ([`Outcome::Answered`], or [`Outcome::Unanswered`] if it
    /// came after the deadline); a UDP response with TC set does not: the client retries over
    /// TCP and the transaction waits for that answer, found by its port-less key.
    pub(crate) fn response(&mut self, d: &Dns<'_>, at_ns: i64) -> Option<Done> {
        let key = Key::new(d, d.dst);
        let hash = self.key_hash(&key, false);
        let found = self.find(hash, &key, false).map(|(pos, slot)| (pos, slot, false)).or_else(|| {
            d.tcp.then(|| {
                self.find(self.key_hash(&key, true), &key, true).map(|(pos, slot)| (pos, slot, true))
            })?
        });
        let Some((pos, slot, portless)) = found else {
            let recent = self.recent[self.recent_at(hash)];
            if recent == ended(hash, true) {
                self.counters.duplicate_responses += 1;
            } else if recent == ended(hash, false) {
                self.counters.late_responses += 1;
            } else {
                self.counters.unmatched_responses += 1;
            }
            return None;
        };
        if d.truncated && !d.tcp {
            let s = &mut self.slots[at(slot)];
            if s.flags & TRUNCATED == 0 {
                s.flags |= TRUNCATED;
                self.counters.truncated_responses += 1;
                let portless = self.key_hash(&key, true);
                self.insert(portless, slot, true);
            }
            self.refresh(slot, at_ns);
            return None;
        }
        let outcome = if at_ns > self.deadline(slot) {
            self.counters.late_responses += 1;
            self.counters.unanswered += 1;
            Outcome::Unanswered
        } else {
            self.counters.answered += 1;
            let latency = at_ns.saturating_sub(self.slots[at(slot)].first_ns);
            Outcome::Answered { latency_ns: u64::try_from(latency).unwrap_or(0), rcode: d.rcode }
        };
        self.unindex(pos);
        let truncated = self.slots[at(slot)].flags & TRUNCATED != 0;
        if portless {
            // Ended by its TCP answer: the copies of that answer have the TCP key.
            self.unindex_slot(slot, false);
            let recent = self.recent_at(hash);
            self.recent[recent] = ended(hash, matches!(outcome, Outcome::Answered { .. }));
            let own = self.key_hash(&Key::of(&self.slots[at(slot)]), false);
            Some(self.finish(slot, own, outcome))
        } else {
            if truncated {
                self.unindex_slot(slot, true);
            }
            Some(self.finish(slot, hash, outcome))
        }
    }

    fn recent_at(&self, hash: u64) -> usize {
        usize::try_from(hash & (self.recent.len() as u64 - 1)).unwrap_or(0)
    }

    fn overflowed_at(&self, hash: u64) -> usize {
        usize::try_from(hash & (self.overflowed.len() as u64 - 1)).unwrap_or(0)
    }

    /// Unlinks a slot from the wheel (its index entries are already gone), frees it,
    /// remembers its key (of hash `hash`) among the recently ended and describes its
    /// transaction.
    fn finish(&mut self, slot: u32, hash: u64, outcome: Outcome) -> Done {
        self.unlink(slot);
        self.slots[at(slot)].next = self.free;
        self.free = slot;
        self.in_flight -= 1;
        let recent = self.recent_at(hash);
        self.recent[recent] = ended(hash, matches!(outcome, Outcome::Answered { .. }));
        let s = &self.slots[at(slot)];
        Done {
            client: unpack(s.client, s.flags & CLIENT_V4 != 0),
            server: unpack(s.server, s.flags & SERVER_V4 != 0),
            egress: (s.egress != NO_EGRESS).then(|| s.ifindex[usize::from(s.egress)]),
            sent_ns: s.first_ns,
            id: s.id,
            qtype: s.qtype,
            outcome,
            retransmissions: u32::from(s.retransmissions),
            tcp: s.flags & TCP != 0,
            truncated: s.flags & TRUNCATED != 0,
        }
    }

    /// Ends every transaction whose last try is older than the timeout at `now_ns`, passing
    /// each to `each` as [`Outcome::Unanswered`]. Call it every 100 ms or so: it looks only at
    /// the wheel buckets whose time has passed since the last call, so it costs next to
    /// nothing when nothing expires.
    pub(crate) fn expire(&mut self, now_ns: i64, mut each: impl FnMut(Done)) {
        let target = now_ns >> TICK_SHIFT;
        let Some(cursor) = self.cursor else {
            self.cursor = Some(target);
            return;
        };
        if target <= cursor {
            return;
        }
        let len = self.wheel.len();
        // Every tick before `target` is over; after a long pause, each bucket once.
        let ticks = usize::try_from(target - cursor).unwrap_or(usize::MAX).min(len);
        let first = usize::try_from(cursor & i64::try_from(len - 1).unwrap_or(0)).unwrap_or(0);
        for k in 0..ticks {
            let bucket = (first + k) & (len - 1);
            let mut slot = self.wheel[bucket];
            while slot != NONE {
                let next = self.slots[at(slot)].next;
                // A bucket also holds deadlines a whole turn of the wheel or more away.
                if self.deadline(slot) <= now_ns {
                    self.unindex_slot(slot, false);
                    if self.slots[at(slot)].flags & TRUNCATED != 0 {
                        self.unindex_slot(slot, true);
                    }
                    self.counters.unanswered += 1;
                    let hash = self.key_hash(&Key::of(&self.slots[at(slot)]), false);
                    each(self.finish(slot, hash, Outcome::Unanswered));
                }
                slot = next;
            }
        }
        self.cursor = Some(target);
    }
}

// === Invariants (tests and fuzzing) ===

#[cfg(any(test, fuzzing))]
impl Table {
    /// Panics unless the index, the wheel, the free list and the counters agree: every slot in
    /// flight is indexed once by its key (and once by its port-less key if truncated),
    /// reachable from its home position, linked once in the wheel bucket it records, and not
    /// free; every transaction started is in flight or ended once.
    pub(crate) fn check_invariants(&self) {
        let in_flight = self.in_flight();
        let mut free = vec![false; self.slots.len()];
        let mut slot = self.free;
        while slot != NONE {
            assert!(!std::mem::replace(&mut free[at(slot)], true), "slot {slot} freed twice");
            slot = self.slots[at(slot)].next;
        }
        assert_eq!(free.iter().filter(|f| **f).count() + in_flight, self.slots.len(), "free slots");
        // Per slot: indexed by its key, by its port-less key.
        let mut indexed = vec![(false, false); self.slots.len()];
        for (pos, &entry) in self.index.iter().enumerate() {
            if entry == 0 {
                continue;
            }
            let (slot, portless) = (entry_slot(entry), entry & PORTLESS != 0);
            assert!(!free[at(slot)], "free slot {slot} is indexed");
            let s = &self.slots[at(slot)];
            let seen = &mut indexed[at(slot)];
            let seen = if portless { &mut seen.1 } else { &mut seen.0 };
            assert!(!std::mem::replace(seen, true), "slot {slot} indexed twice");
            assert!(!portless || s.flags & TRUNCATED != 0, "slot {slot} is not truncated");
            let key = Key::of(s);
            let hash = self.key_hash(&key, portless);
            assert_eq!(entry_tag(entry), tag(hash), "slot {slot}'s tag");
            let mut probe = self.home(entry_tag(entry));
            while probe != pos {
                assert_ne!(self.index[probe], 0, "slot {slot} is past a hole");
                probe = (probe + 1) & self.index_mask;
            }
            let found = self.find(hash, &key, portless).map(|(_, slot)| slot);
            if portless {
                // Another truncated transaction of the same question may come first.
                assert!(found.is_some(), "slot {slot} is not found by its port-less key");
            } else {
                assert_eq!(found, Some(slot), "slot {slot} is not found by its key");
            }
        }
        for (slot, &(own, portless)) in indexed.iter().enumerate() {
            if !free[slot] {
                assert!(own, "slot {slot} is in flight but not indexed");
                assert_eq!(
                    portless,
                    self.slots[slot].flags & TRUNCATED != 0,
                    "slot {slot}'s port-less entry"
                );
            }
        }
        let mut linked = 0;
        for (bucket, &head) in self.wheel.iter().enumerate() {
            let (mut slot, mut prev) = (head, HEAD | u32::try_from(bucket).unwrap_or(0));
            while slot != NONE {
                let s = &self.slots[at(slot)];
                assert!(!free[at(slot)], "free slot {slot} is in the wheel");
                assert_eq!(s.prev, prev, "slot {slot}'s links");
                linked += 1;
                assert!(linked <= in_flight, "a cycle in bucket {bucket}");
                (prev, slot) = (slot, s.next);
            }
        }
        assert_eq!(linked, in_flight, "slots in the wheel");
        let c = self.counters;
        assert_eq!(c.queries, c.answered + c.unanswered + u64::try_from(in_flight).unwrap_or(u64::MAX));
        assert!(in_flight <= self.capacity && self.slots.capacity() == self.capacity);
    }
}

/// A recently ended key as the `recent` cache holds it: never 0 (an empty entry), and
/// whether it was answered in the low bits.
fn ended(hash: u64, answered: bool) -> u64 {
    (hash & !3) | if answered { 1 } else { 2 }
}

/// The high half of a hash (or of an index entry).
fn tag(hash: u64) -> u32 {
    u32::try_from(hash >> 32).unwrap_or(0)
}

fn entry_tag(entry: u64) -> u32 {
    tag(entry)
}

/// The slot of a non-empty index entry.
fn entry_slot(entry: u64) -> u32 {
    u32::try_from(entry & (PORTLESS - 1)).unwrap_or(0).wrapping_sub(1)
}

#[cfg(test)]
mod tests;
