//! What the sampler leaves for readers: the latest immutable [`Snapshot`] and a bounded,
//! per-device history of the allowance series at full resolution.
//!
//! The sampler thread is the only writer. Readers (`/metrics`, and later the JSON API, the
//! page and the alert evaluator) clone an `Arc` or take a short read lock; nothing a reader
//! does can reach the kernel or delay the next tick by more than a lock hand-over.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use serde::Serialize;

use crate::source::dns::families::Totals;
use crate::source::tap::Dropped;
use crate::source::{Device, ReadError, Schema};

pub mod windows;

/// Everything known after one tick. Never modified once published.
#[derive(Debug)]
pub struct Snapshot {
    /// Tick number, from 1; 0 is the empty snapshot published before the first tick.
    pub seq: u64,
    /// When the sample was taken, Unix milliseconds (recorded time for replayed sources).
    pub at_ms: i64,
    /// When this snapshot was published, on the monotonic clock (for `/healthz`).
    pub published: Instant,
    /// Watched devices, sorted by name.
    pub devices: Vec<DeviceState>,
    /// Read errors by device and reason, sorted.
    pub read_errors: Vec<ErrorCount>,
    /// Ticks skipped because the previous one ran late.
    pub missed_ticks: u64,
    /// The source has no more samples (a replay reached its end): this snapshot is final.
    pub finished: bool,
    /// Local alerts: pending and firing, then recently resolved.
    pub alerts: Vec<Alert>,
    /// Packets the capture rings could not hold since start, by socket.
    pub capture_dropped: Dropped,
    /// The DNS analysis's counters, when it is on.
    pub dns: Option<Arc<Totals>>,
}

impl Snapshot {
    /// The snapshot readers see before the first tick.
    pub fn empty() -> Self {
        Self {
            seq: 0,
            at_ms: 0,
            published: Instant::now(),
            devices: Vec::new(),
            read_errors: Vec::new(),
            missed_ticks: 0,
            finished: false,
            alerts: Vec::new(),
            capture_dropped: [None; 2],
            dns: None,
        }
    }
}

/// One device as of the latest tick.
#[derive(Clone, Debug)]
pub struct DeviceState {
    /// Identity and driver.
    pub device: Arc<Device>,
    /// Names of `values`.
    pub schema: Arc<Schema>,
    /// Latest driver values (from the last successful read).
    pub values: Arc<[u64]>,
    /// Positions in `values` exported by the compatibility families.
    pub compat: Arc<[usize]>,
    /// The agent's allowance counters.
    pub counters: DeviceCounters,
    /// Driver resets seen since the agent started watching the device.
    pub resets: u64,
    /// Samples held back as the ENA all-zero glitch.
    pub glitches: u64,
    /// Counter jumps held back as implausible.
    pub implausible: u64,
    /// The link-local meter's counters, when it is on.
    pub linklocal: Option<LinkLocal>,
}

/// Upper bounds of the link-local rate histogram, packets per second: dense around the
/// 1024/s budget, where the question "how close" is asked.
pub(crate) const LINKLOCAL_BUCKETS: [f64; 12] =
    [50.0, 100.0, 250.0, 500.0, 750.0, 900.0, 1000.0, 1024.0, 1250.0, 1500.0, 2000.0, 5000.0];

/// The link-local meter's view of one device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkLocal {
    /// Packets sent to each service (by [`Service::index`](crate::source::linklocal::Service::index)).
    pub packets: [u64; 3],
    /// Sampling intervals by their rate (all services), cumulative per bucket as exported.
    pub buckets: [u64; 12],
    /// Intervals observed.
    pub count: u64,
    /// Sum of the observed rates.
    pub sum: f64,
    /// Time of the previous reading, for the interval's length.
    pub last_at_ms: Option<i64>,
}

impl LinkLocal {
    /// Adds one reading's counts taken at `at_ms`; returns the interval's rate in whole
    /// packets per second.
    pub(crate) fn observe(&mut self, counts: [u32; 3], at_ms: i64) -> Option<u32> {
        for (total, n) in self.packets.iter_mut().zip(counts) {
            *total += u64::from(n);
        }
        let previous = self.last_at_ms.replace(at_ms)?;
        let ms = u64::try_from(at_ms - previous).ok().filter(|&ms| ms > 0)?;
        let packets: u64 = counts.iter().map(|&n| u64::from(n)).sum();
        let rate = packets as f64 * 1000.0 / ms as f64;
        for (bucket, bound) in self.buckets.iter_mut().zip(LINKLOCAL_BUCKETS) {
            if rate <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += rate;
        Some(u32::try_from(packets * 1000 / ms).unwrap_or(u32::MAX))
    }
}

/// A count of failed reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorCount {
    /// Interface name.
    pub device: String,
    /// Why.
    pub reason: ReadError,
    /// How many since start.
    pub count: u64,
}

/// One tick of one device's allowance series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// Sample time, Unix milliseconds.
    pub at_ms: i64,
    /// Packets added to each allowance counter in the interval this sample closes
    /// (saturating: no ENA device drops four billion packets in one tick).
    pub added: [u32; 5],
    /// `conntrack_allowance_available`, or [`Point::NO_VALUE`].
    pub available: u32,
    /// [`Point::GLITCH`], [`Point::RESET`].
    pub flags: u8,
    /// Packets per second to link-local services over the interval, or [`Point::NO_VALUE`].
    pub linklocal: u32,
}

impl Point {
    /// `available` when the driver does not report it.
    pub const NO_VALUE: u32 = u32::MAX;
    /// The sample was the ENA all-zero glitch and was held back.
    pub(crate) const GLITCH: u8 = 1;
    /// A driver reset was detected at this sample.
    pub(crate) const RESET: u8 = 2;
}

/// A point as the ring stores it: 32 bytes instead of [`Point`]'s 40. The time is an offset
/// from the ring's base (30 bits of milliseconds: 12 days), the two flags in the top bits.
#[derive(Clone, Copy, Debug)]
struct Stored {
    offset_and_flags: u32,
    added: [u32; 5],
    available: u32,
    linklocal: u32,
}

const OFFSET_BITS: u32 = 30;
const OFFSET_MASK: u32 = (1 << OFFSET_BITS) - 1;

#[derive(Debug, Default)]
struct Ring {
    base_ms: i64,
    points: VecDeque<Stored>,
}

impl Ring {
    fn at_ms(&self, s: &Stored) -> i64 {
        self.base_ms + i64::from(s.offset_and_flags & OFFSET_MASK)
    }

    fn push(&mut self, capacity: usize, p: Point) {
        let len = self.points.len();
        if len == capacity {
            self.points.pop_front();
        } else if len == self.points.capacity() {
            // Grown by doubling, up to exactly `capacity`, rather than allocated whole at
            // once: a device seen for a few ticks (a pod's veth) holds a few points, and the
            // churn of such devices leaves no history-sized holes in the heap.
            self.points.reserve_exact(len.max(8).min(capacity - len));
        }
        if self.points.is_empty() {
            self.base_ms = p.at_ms;
        }
        let mut offset = p.at_ms - self.base_ms;
        if !(0..=i64::from(OFFSET_MASK)).contains(&offset) {
            // Rebase on the oldest point kept (once every 12 days, or after a clock jump).
            let times: Vec<i64> = self.points.iter().map(|s| self.at_ms(s)).collect();
            let base = times.first().copied().unwrap_or(p.at_ms).min(p.at_ms);
            for (s, t) in self.points.iter_mut().zip(times) {
                let o = u32::try_from((t - base).clamp(0, i64::from(OFFSET_MASK))).expect("masked");
                s.offset_and_flags = (s.offset_and_flags & !OFFSET_MASK) | o;
            }
            self.base_ms = base;
            offset = (p.at_ms - base).clamp(0, i64::from(OFFSET_MASK));
        }
        let offset = u32::try_from(offset).expect("in range");
        self.points.push_back(Stored {
            offset_and_flags: offset | (u32::from(p.flags) << OFFSET_BITS),
            added: p.added,
            available: p.available,
            linklocal: p.linklocal,
        });
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = Point> + '_ {
        self.points.iter().map(|s| Point {
            at_ms: self.at_ms(s),
            added: s.added,
            available: s.available,
            flags: u8::try_from(s.offset_and_flags >> OFFSET_BITS).expect("two bits"),
            linklocal: s.linklocal,
        })
    }
}

/// Per-device rings of [`Point`]s, each holding at most `capacity` ticks.
#[derive(Debug, Default)]
pub struct History {
    capacity: usize,
    rings: BTreeMap<String, Ring>,
}

impl History {
    /// A history of `capacity` ticks per device.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), rings: BTreeMap::new() }
    }

    /// Appends a point, dropping the oldest when full.
    pub fn push(&mut self, device: &str, point: Point) {
        let capacity = self.capacity;
        let ring = match self.rings.get_mut(device) {
            Some(ring) => ring,
            None => self
                .rings
                .entry(device.to_owned())
                .or_insert_with(|| Ring { base_ms: point.at_ms, points: VecDeque::new() }),
        };
        ring.push(capacity, point);
    }

    /// Forgets a device that vanished.
    pub fn remove(&mut self, device: &str) {
        self.rings.remove(device);
    }

    /// The points of one device, oldest first.
    pub fn points(&self, device: &str) -> impl DoubleEndedIterator<Item = Point> + '_ {
        self.rings.get(device).into_iter().flat_map(Ring::iter)
    }
}

/// The shared state between the sampler (writer) and every reader.
#[derive(Debug)]
pub struct Store {
    latest: RwLock<Arc<Snapshot>>,
    history: RwLock<History>,
}

impl Store {
    /// An empty store keeping `capacity` ticks of history per device.
    pub fn new(capacity: usize) -> Self {
        Self {
            latest: RwLock::new(Arc::new(Snapshot::empty())),
            history: RwLock::new(History::new(capacity)),
        }
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        // A panic elsewhere cannot leave an `Arc` half-written: poison is irrelevant here.
        Arc::clone(&self.latest.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Publishes a new snapshot.
    pub(crate) fn publish(&self, snapshot: Arc<Snapshot>) {
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// Runs `f` on the history under the write lock (sampler only).
    pub fn update_history<R>(&self, f: impl FnOnce(&mut History) -> R) -> R {
        f(&mut self.history.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the history under a read lock.
    pub(crate) fn read_history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        f(&self.history.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The agent's counters for one device: what `/metrics` exports, and the bookkeeping the
/// counter semantics (`sampler::counters`) keep between samples.
#[derive(Clone, Debug, Default)]
pub struct DeviceCounters {
    /// Last accepted driver value per counter: the baseline of the next delta. Kept while
    /// a stat is missing, so one that comes back continues rather than starting over.
    pub(crate) baseline: [Option<u64>; 5],
    /// A value held back as implausible, by counter, until the next sample says which of it
    /// and the baseline the driver continues from.
    pub(crate) suspect: [Option<u64>; 5],
    pub(crate) last_at_ms: Option<i64>,
    /// How many all-zero samples in a row have been held back (0: the last one was real).
    pub(crate) held_back: u32,
    /// The exported packet counters (`ena_allowance_exceeded_packets_total`).
    pub packets: [u64; 5],
    /// The exported throttled seconds (`ena_allowance_exceeded_seconds_total`).
    pub seconds: [f64; 5],
    /// Which counters the driver reports in the latest sample.
    pub supported: [bool; 5],
    /// Last good `conntrack_allowance_available` (never the glitch's zero).
    pub available: Option<u64>,
    /// Whether the driver reports `conntrack_allowance_available` in the latest sample.
    pub available_supported: bool,
}

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The condition holds, for less than `for` so far.
    Pending,
    /// Firing.
    Firing,
    /// Was firing, no longer.
    Resolved,
}

impl State {
    /// The `alertstate` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert instance: a rule on a device (or on the instance).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Alert name.
    pub name: &'static str,
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    /// The device, for per-device alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The namespace of the workload, for per-workload alerts ("" for lookups of no pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The workload, for per-workload alerts ("" for lookups of no pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The allowance, for allowance alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<&'static str>,
    /// Current state.
    pub state: State,
    /// The condition's value at the last evaluation (throttled seconds, or headroom).
    pub value: f64,
    /// When the condition started to hold (RFC 3339).
    pub active_since: String,
    /// When it started firing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firing_since: Option<String>,
    /// When it resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// One line.
    pub summary: String,
    /// What is happening.
    pub description: String,
    /// Where to read what to do.
    pub runbook_url: String,
    /// When the condition started to hold, Unix milliseconds (the evaluator's bookkeeping).
    #[serde(skip)]
    pub(crate) active_ms: i64,
    /// When the condition last held, Unix milliseconds (the evaluator's bookkeeping).
    #[serde(skip)]
    pub(crate) last_true_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: i64) -> Point {
        Point { at_ms, added: [0; 5], available: Point::NO_VALUE, flags: 0, linklocal: Point::NO_VALUE }
    }

    #[test]
    fn rings_are_bounded_per_device() {
        let mut h = History::new(3);
        for t in 0..10 {
            h.push("ens5", point(t));
        }
        h.push("ens6", point(99));
        let kept: Vec<i64> = h.points("ens5").map(|p| p.at_ms).collect();
        assert_eq!(kept, [7, 8, 9]);
        assert_eq!(h.points("ens6").count(), 1);
        h.remove("ens5");
        assert_eq!(h.points("ens5").count(), 0);
    }

    #[test]
    fn a_ring_grows_with_its_device_up_to_exactly_the_history() {
        let mut h = History::new(900);
        h.push("veth", point(0));
        assert!(h.rings["veth"].points.capacity() < 16, "a device seen once holds one point's worth");
        for t in 1..2000 {
            h.push("veth", point(t));
            assert!(h.rings["veth"].points.capacity() <= 900, "never more than the history");
        }
        assert_eq!(h.rings["veth"].points.capacity(), 900);
        assert_eq!(h.points("veth").next().map(|p| p.at_ms), Some(1100));
    }
}
