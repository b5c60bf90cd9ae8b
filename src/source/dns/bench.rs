//! The DNS capture's per-packet path, for `benches/hot_paths.rs` only: thin wrappers over the
//! crate-private decoder (`wire`) and transaction table (`transactions`).
//!
//! The benchmark so measures the code the agent runs, compiled once, while the two modules
//! stay private to the crate (and the compiler keeps reporting their dead code). Nothing
//! else should use this module; it is not part of the documented interface.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use super::{transactions, wire};

/// One decoded DNS packet.
#[derive(Clone, Debug)]
pub struct Packet<'a>(wire::Dns<'a>);

impl<'a> Packet<'a> {
    /// Decodes an IP packet as the capture socket delivers it; `None` if it is not a DNS
    /// message read here.
    #[inline]
    pub fn parse(ip: &'a [u8]) -> Option<Self> {
        wire::parse(ip).map(Self)
    }

    /// Sets the DNS id (of a query or of its response).
    pub fn set_id(&mut self, id: u16) {
        self.0.id = id;
    }

    /// Sets the source address (a query's client).
    pub fn set_source(&mut self, address: IpAddr) {
        self.0.src.0 = address;
    }
}

/// The transaction table, at the agent's default capacity.
#[derive(Debug)]
pub struct Table(transactions::Table);

impl Table {
    /// The agent's default timeout.
    pub const TIMEOUT: Duration = transactions::TIMEOUT;

    /// A table of the default capacity, declaring a transaction unanswered `timeout` after
    /// its last try.
    pub fn new(timeout: Duration) -> Self {
        Self(transactions::Table::new(transactions::CAPACITY, timeout))
    }

    /// Takes a query seen at `at_ns` on `ifindex`; whether it started a transaction.
    #[inline]
    pub fn query(&mut self, query: &Packet<'_>, at_ns: i64, ifindex: u32, outgoing: bool) -> bool {
        self.0.query(&query.0, at_ns, ifindex, outgoing) == transactions::Sighting::New
    }

    /// Takes a response seen at `at_ns`; whether it ended a transaction (whose record is
    /// built, as the agent builds it, and dropped).
    #[inline]
    pub fn response(&mut self, response: &Packet<'_>, at_ns: i64) -> bool {
        black_box(self.0.response(&response.0, at_ns)).is_some()
    }

    /// Ends the transactions due at `now_ns`; how many.
    #[inline]
    pub fn expire(&mut self, now_ns: i64) -> usize {
        let mut ended = 0;
        self.0.expire(now_ns, |done| {
            black_box(done);
            ended += 1;
        });
        ended
    }

    /// Transactions in flight.
    pub fn in_flight(&self) -> usize {
        self.0.in_flight()
    }

    /// Bytes the table may occupy.
    pub fn bytes(&self) -> usize {
        self.0.bytes()
    }
}
