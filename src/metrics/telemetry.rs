//! The agent's counters about itself that components update and `/metrics` reads: one place,
//! so the notifier and the remote-write sender need not be imported by the layer that
//! renders them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of one receiver, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Receiver name.
    pub name: String,
    /// Notifications delivered.
    pub sent: AtomicU64,
    /// Rejected by the receiver (4xx other than 429) and dropped.
    pub failed: AtomicU64,
    /// Dropped because the queue was full (the oldest go first).
    pub dropped: AtomicU64,
    /// Attempts that will be retried.
    pub retried: AtomicU64,
    /// Waiting in the queue.
    pub queued: AtomicU64,
}

/// Notification counters: per receiver, and the transitions the sampler could not hand over.
pub(crate) type NotifyStats = (Arc<Vec<ReceiverStats>>, Arc<AtomicU64>);

/// Counters of one endpoint, for `/metrics`.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Endpoint name.
    pub name: String,
    /// Samples the receiver accepted.
    pub sent: AtomicU64,
    /// Samples in attempts that failed and will be retried (once per attempt).
    pub retried: AtomicU64,
    /// Samples dropped from a full queue (the oldest go first).
    pub dropped: AtomicU64,
    /// Samples the receiver rejected (4xx other than 429), not retried.
    pub failed: AtomicU64,
    /// Samples not yet accepted: queued or being delivered.
    pub pending: AtomicU64,
    /// When the receiver last accepted a batch, Unix milliseconds (0: never).
    pub last_success_ms: AtomicI64,
}

impl EndpointStats {
    /// `(outcome, samples)` for `enawatch_remote_write_samples_total`.
    pub fn outcomes(&self) -> [(&'static str, u64); 4] {
        [
            ("sent", self.sent.load(Ordering::Relaxed)),
            ("retried", self.retried.load(Ordering::Relaxed)),
            ("dropped", self.dropped.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
        ]
    }
}

/// The counters of every remote-write endpoint.
pub(crate) type RemoteWriteStats = Arc<Vec<EndpointStats>>;
