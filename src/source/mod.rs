//! Where samples come from: the one trait between the kernel (or a capture, or a
//! simulation) and everything else.
//!
//! A [`Source`] answers one question per tick: what are the statistics of every watched
//! device right now. It owns device discovery and the per-device stat-name cache; it knows
//! nothing of counters, history or HTTP. Those live in the sampler and read [`Sample`]s.

pub mod capture;
pub mod dns;
pub mod linklocal;
pub mod live;
pub mod pods;
pub mod replay;
pub mod simulate;
pub mod tap;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::base::allowance::AllowanceIndex;

/// A source of samples, polled once per tick by the sampler thread.
pub trait Source: Send {
    /// Reads every watched device once. `now_ms` is the tick's wall-clock time (Unix
    /// milliseconds); a source with recorded time stamps the sample with that instead.
    /// `None` when the source has nothing more to give (the end of a capture).
    fn sample(&mut self, now_ms: i64) -> Option<Sample>;

    /// How long to wait after the sample just taken before the next one, for a source
    /// that sets its own pace (a replay follows its recorded timeline). `None`: the
    /// sampler's fixed interval.
    fn pace(&self) -> Option<Duration> {
        None
    }
}

/// A fixed list of samples, played back in order (tests, benchmarks and fuzzing drive the
/// sampler with one).
impl Source for std::collections::VecDeque<Sample> {
    fn sample(&mut self, _now_ms: i64) -> Option<Sample> {
        self.pop_front()
    }
}

/// Everything one tick read.
#[derive(Debug, Default)]
pub struct Sample {
    /// When the values were read, Unix milliseconds.
    pub at_ms: i64,
    /// One entry per device read successfully, sorted by name.
    pub readings: Vec<Reading>,
    /// What went wrong or changed this tick, per device.
    pub events: Vec<Event>,
    /// Packets the capture rings could not hold since start, by socket.
    pub capture_dropped: tap::Dropped,
    /// The DNS analysis's counters, when it is on.
    pub dns: Option<Arc<dns::families::Totals>>,
}

/// One device's statistics at one instant.
#[derive(Clone, Debug)]
pub struct Reading {
    /// Who the device is; shared by every reading until the device changes.
    pub device: Arc<Device>,
    /// What the values mean; shared by every reading until the driver's stat set changes.
    pub schema: Arc<Schema>,
    /// The driver's values, in `schema.names` order.
    pub values: Arc<[u64]>,
    /// Packets sent to link-local services since the previous reading, by
    /// [`Service`](crate::source::linklocal::Service), when the link-local meter is on.
    pub linklocal: Option<[u32; 3]>,
}

/// A watched network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Interface name (`ens5`, `eth1`, …).
    pub name: String,
    /// Driver name from `ETHTOOL_GDRVINFO`.
    pub driver: String,
    /// Driver version.
    pub driver_version: String,
    /// Firmware version.
    pub firmware_version: String,
    /// Bus address.
    pub bus_info: String,
    /// The ENI id, when an `eni-…` altname or the configuration supplies it.
    pub eni: Option<String>,
}

impl Device {
    /// The device for a log line: its name, driver, version and ENI.
    pub fn describe(&self) -> String {
        let driver = if self.driver.is_empty() { "unknown driver" } else { &self.driver };
        let mut s = format!("{} ({driver} {}", self.name, self.driver_version);
        if let Some(eni) = &self.eni {
            s.push_str(", ");
            s.push_str(eni);
        }
        s.push(')');
        s
    }
}

/// The names of one device's driver statistics, and where the allowance stats are.
#[derive(Debug)]
pub struct Schema {
    /// Stat names, in the order the driver reports values.
    pub names: Box<[String]>,
    /// Positions of the allowance stats among `names`.
    pub index: AllowanceIndex,
    /// `names` as node_exporter's metric names, computed on first use: a schema lives as
    /// long as the driver's stat set, so each name is sanitised once, not on every scrape.
    node_exporter_names: OnceLock<Box<[String]>>,
}

impl Schema {
    /// A schema for these stat names.
    pub fn new(names: Vec<String>) -> Self {
        let index = AllowanceIndex::new(&names);
        Self { names: names.into_boxed_slice(), index, node_exporter_names: OnceLock::new() }
    }

    /// The node_exporter metric name of each stat, in `names` order, made by `name` on first
    /// use. The naming is the metrics layer's (`metrics::compat`), which sits above this
    /// one; the cache lives here because a schema is what the names depend on.
    pub(crate) fn node_exporter_names(&self, name: impl Fn(&str) -> String) -> &[String] {
        self.node_exporter_names.get_or_init(|| self.names.iter().map(|n| name(n)).collect())
    }
}

/// Something that happened to one device during a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The read failed; the device stays watched and is read again next tick.
    ReadFailed {
        /// Interface name.
        device: String,
        /// Why, as a bounded label value.
        reason: ReadError,
        /// The system's words, for the log.
        detail: String,
    },
    /// The device is gone (`ENODEV`): it is no longer watched and its series leave.
    Vanished {
        /// Interface name.
        device: String,
    },
    /// The driver's stat set changed between two reads: this tick's values were dropped and
    /// the names re-read.
    SchemaChanged {
        /// Interface name.
        device: String,
    },
}

/// Why a read failed, as the `reason` label of `enawatch_read_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadError {
    /// The driver has no ethtool statistics (`EOPNOTSUPP`).
    NotSupported,
    /// Permission denied (`EPERM`/`EACCES`).
    PermissionDenied,
    /// The device vanished while being read (`ENODEV`).
    NoDevice,
    /// The stat count changed between two reads; that sample was dropped.
    SchemaChanged,
    /// Any other error of the system call.
    Io,
}

impl ReadError {
    /// Classifies a system error.
    pub(crate) fn from_io(err: &std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Self::NotSupported,
            Some(libc::EPERM | libc::EACCES) => Self::PermissionDenied,
            Some(libc::ENODEV | libc::ENXIO) => Self::NoDevice,
            _ => Self::Io,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotSupported => "not_supported",
            Self::PermissionDenied => "permission_denied",
            Self::NoDevice => "no_device",
            Self::SchemaChanged => "schema_changed",
            Self::Io => "io",
        }
    }
}
