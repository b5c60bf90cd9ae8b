//! The collector thread: reads published snapshots, makes one step per resolution from the
//! native families, and hands it to each endpoint's queue (and spool); the senders drain them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::config::Protocol;
use super::otlp::{self, Starts};
use super::queue::{Queue, SeriesSet, Step};
use super::spool::Spool;
use super::{proto, sender, Endpoint};
use crate::base::{wall_ms, HumanDuration};
use crate::history::{Snapshot, Store};
use crate::metrics::encode::{Kind, Value};
use crate::metrics::telemetry::{EndpointStats, RemoteWriteStats};
use crate::metrics::{self, Sink};

/// Counters for `endpoints`, all zero.
pub fn stats(endpoints: &[Endpoint]) -> RemoteWriteStats {
    Arc::new(
        endpoints
            .iter()
            .map(|e| EndpointStats { name: e.name.clone(), ..EndpointStats::default() })
            .collect(),
    )
}

/// What the collector and an endpoint's sender share.
pub(super) struct Shared {
    pub(super) endpoint: Endpoint,
    pub(super) index: usize,
    pub(super) stats: RemoteWriteStats,
    pub(super) queue: Mutex<Queue>,
    pub(super) spool: Option<Mutex<Spool>>,
    /// A step was queued (or a flush asked for).
    pub(super) ready: tokio::sync::Notify,
    /// Shutting down: send what is queued without waiting for fuller batches.
    pub(super) flushing: AtomicBool,
}

impl Shared {
    pub(super) fn stats(&self) -> &EndpointStats {
        &self.stats[self.index]
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn update_pending(&self, queue: &Queue) {
        self.stats().pending.store(queue.pending() as u64, Ordering::Relaxed);
    }
}

/// Remote write, running: the collector thread and (once spawned) one sender per endpoint.
pub struct Pusher {
    pub(super) shared: Vec<Arc<Shared>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Opening a spool failed: the configuration asked for durability the agent cannot give.
#[derive(Debug, thiserror::Error)]
#[error("remote_write: {endpoint}: spool_dir {dir}: {error}")]
pub struct SpoolError {
    endpoint: String,
    dir: String,
    error: std::io::Error,
}

impl Pusher {
    /// Opens the spools and starts collecting from `store`. `options` are `/metrics`'
    /// options (the compatibility families are left out: only native families are pushed).
    pub fn start(
        endpoints: &[Endpoint],
        stats: &RemoteWriteStats,
        store: Arc<Store>,
        options: &metrics::Options,
        interval: Duration,
    ) -> Result<Self, SpoolError> {
        let mut shared = Vec::new();
        let mut last_at = Vec::new();
        let mut otlp_starts = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let mut queue = Queue::new(endpoint.queue_steps, 1);
            let mut spool = None;
            let mut last = i64::MIN;
            if let Some(base) = &endpoint.spool_dir {
                let dir = base.join(&endpoint.name);
                let error = |error| SpoolError {
                    endpoint: endpoint.name.clone(),
                    dir: dir.display().to_string(),
                    error,
                };
                let per_segment = (endpoint.queue_steps / 8).max(16);
                let (mut s, recovered) = Spool::open(&dir, per_segment).map_err(error)?;
                for damage in &recovered.damaged {
                    warn!(endpoint = %endpoint.name, file = %damage.file.display(), offset = damage.offset,
                        damage = %damage.what, "spool: damaged bytes skipped; every intact step around them is kept");
                }
                queue = Queue::new(endpoint.queue_steps, recovered.next_id);
                last = recovered.steps.last().map_or(i64::MIN, |s| s.at_ms);
                if last > wall_ms() {
                    // Stamped by a clock that was ahead (or damaged): taken as the last step,
                    // it would hold back every new sample until this clock caught up with it.
                    // The step is still sent; new samples only keep their own order.
                    warn!(endpoint = %endpoint.name, step_time_ms = last, dir = %dir.display(),
                        "spool: the last spooled step is stamped later than the clock; new samples are not held back for it");
                    last = i64::MIN;
                }
                let samples: usize =
                    recovered.steps.iter().map(|s| s.len()).sum::<usize>() - recovered.offset;
                let steps = recovered.steps.len();
                let mut seeded = Starts::default();
                if let Some(step) = recovered.steps.last().filter(|_| endpoint.protocol == Protocol::Otlp) {
                    seeded.seed(&step.set.labels, &step.values);
                }
                otlp_starts.push(seeded);
                let dropped = queue.restore(recovered.steps, recovered.offset);
                stats[index].dropped.fetch_add(dropped as u64, Ordering::Relaxed);
                s.trim(&queue.needed()).map_err(error)?;
                if steps > 0 {
                    info!(endpoint = %endpoint.name, steps, samples, dir = %dir.display(), "spool: resending what the previous process could not deliver");
                }
                spool = Some(Mutex::new(s));
            }
            stats[index].pending.store(queue.pending() as u64, Ordering::Relaxed);
            otlp_starts.resize_with(index + 1, Starts::default);
            last_at.push(last);
            shared.push(Arc::new(Shared {
                endpoint: endpoint.clone(),
                index,
                stats: Arc::clone(stats),
                queue: Mutex::new(queue),
                spool,
                ready: tokio::sync::Notify::new(),
                flushing: AtomicBool::new(false),
            }));
        }
        let options = metrics::Options { compat: Vec::new(), ..options.clone() };
        let mut collector = Collector::new(shared.clone(), store, options, interval, last_at);
        collector.starts = otlp_starts;
        let (stop, stopped) = mpsc::channel::<()>();
        // Often enough to see every snapshot (several polls per interval), rarely enough to
        // cost nothing: a poll is a read lock and an Arc clone.
        let poll = (interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let thread = std::thread::Builder::new()
            .name("remote-write".into())
            .spawn(move || loop {
                collector.poll();
                match stopped.recv_timeout(poll) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Stopping: the sampler has stopped, so this sees its last snapshot.
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        collector.poll();
                        collector.finish();
                        return;
                    }
                }
            })
            .map_err(|error| SpoolError { endpoint: "*".into(), dir: String::new(), error })?;
        Ok(Self { shared, stop: Some(stop), thread: Some(thread) })
    }

    /// Spawns one sender per endpoint on the current runtime.
    pub(crate) fn spawn_senders(&self) {
        for shared in &self.shared {
            let e = &shared.endpoint;
            info!(
                endpoint = %e.name,
                resolution = %HumanDuration(e.resolution),
                queue = %HumanDuration(e.queue_duration),
                spool = e.spool_dir.is_some(),
                auth = %e.describe_auth(),
                protocol = ?e.protocol,
                "pushing samples"
            );
            tokio::spawn(sender::run(Arc::clone(shared)));
        }
    }

    /// Stops collecting, after taking the last snapshot the sampler published.
    pub(crate) fn stop_collecting(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Sends what is queued, for at most `within` (at shutdown).
    pub async fn flush(&self, within: Duration) {
        for s in &self.shared {
            s.flushing.store(true, Ordering::Relaxed);
            s.ready.notify_one();
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.shared.iter().all(|s| s.lock().pending() == 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for s in &self.shared {
            let pending = s.lock().pending();
            if pending == 0 {
                continue;
            }
            if s.spool.is_some() {
                info!(endpoint = %s.endpoint.name, pending, "stopping with samples not delivered yet: the spool keeps them for the next start");
            } else {
                warn!(endpoint = %s.endpoint.name, pending, "stopping with samples not delivered: they are lost (spool_dir keeps them across restarts)");
            }
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop_collecting();
    }
}

/// Turns snapshots into steps: per endpoint, the latest sample of each resolution step.
pub(super) struct Collector {
    shared: Vec<Arc<Shared>>,
    store: Arc<Store>,
    options: metrics::Options,
    /// The sampling interval, Unix ms: when the next sample can come at the earliest.
    interval_ms: i64,
    last_seq: u64,
    /// Per endpoint: the time of its last step (`i64::MIN`: none yet).
    last_at: Vec<i64>,
    /// Per endpoint: the latest snapshot of a step not over yet.
    held: Vec<Option<Arc<Snapshot>>>,
    /// Per endpoint: the series of its last step, shared by the next while unchanged.
    sets: Vec<Option<Arc<SeriesSet>>>,
    /// Per endpoint: the start times of its series (OTLP endpoints only).
    starts: Vec<Starts>,
    spool_failing: Vec<bool>,
}

impl Collector {
    pub(super) fn new(
        shared: Vec<Arc<Shared>>,
        store: Arc<Store>,
        options: metrics::Options,
        interval: Duration,
        last_at: Vec<i64>,
    ) -> Self {
        let n = shared.len();
        Self {
            shared,
            store,
            options,
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX).max(1),
            last_seq: 0,
            last_at,
            held: vec![None; n],
            sets: vec![None; n],
            starts: (0..n).map(|_| Starts::default()).collect(),
            spool_failing: vec![false; n],
        }
    }

    fn step_of(&self, i: usize, at_ms: i64) -> i64 {
        let res = i64::try_from(self.shared[i].endpoint.resolution.as_millis()).unwrap_or(i64::MAX).max(1);
        at_ms.div_euclid(res)
    }

    /// Looks at the latest snapshot. A sample is sent once it is known to be the latest of
    /// its step: at once when the next sample cannot fall in the same step (always, on the
    /// sampler's fixed grid), else when a sample of a later step shows up (a replay's own
    /// timeline) or the agent stops.
    pub(super) fn poll(&mut self) {
        let snapshot = self.store.latest();
        if snapshot.seq == 0 || snapshot.seq == self.last_seq {
            return;
        }
        self.last_seq = snapshot.seq;
        let at = snapshot.at_ms;
        let mut due = Vec::new();
        for i in 0..self.shared.len() {
            let step = self.step_of(i, at);
            if let Some(held) = self.held[i].take() {
                if self.step_of(i, held.at_ms) < step {
                    due.push((i, held));
                }
            }
            if at <= self.last_at[i] {
                continue; // time went backwards (a replay starting over): never out of order
            }
            if self.step_of(i, at.saturating_add(self.interval_ms)) > step {
                due.push((i, Arc::clone(&snapshot)));
            } else {
                self.held[i] = Some(Arc::clone(&snapshot));
            }
        }
        self.emit(due);
    }

    /// Sends what is held (the agent is stopping: those samples are the latest there are).
    pub(super) fn finish(&mut self) {
        let due: Vec<(usize, Arc<Snapshot>)> =
            self.held.iter_mut().enumerate().filter_map(|(i, h)| Some((i, h.take()?))).collect();
        self.emit(due);
    }

    fn emit(&mut self, due: Vec<(usize, Arc<Snapshot>)>) {
        let mut rendered: Option<(u64, Vec<Sample>)> = None;
        for (i, snapshot) in due {
            // One sample per step.
            let last = self.last_at[i];
            if last != i64::MIN && self.step_of(i, snapshot.at_ms) <= self.step_of(i, last) {
                continue;
            }
            if rendered.as_ref().is_none_or(|(seq, _)| *seq != snapshot.seq) {
                rendered = Some((snapshot.seq, collect(&snapshot, &self.options)));
            }
            let samples = &rendered.as_ref().expect("rendered above").1;
            self.last_at[i] = snapshot.at_ms;
            self.push(i, snapshot.at_ms, samples);
        }
    }

    fn push(&mut self, i: usize, at_ms: i64, samples: &[Sample]) {
        let shared = Arc::clone(&self.shared[i]);
        let external = &shared.endpoint.external_labels;
        let otlp = shared.endpoint.protocol == Protocol::Otlp;
        let mut merged: Vec<Vec<(&str, &str)>> = Vec::with_capacity(samples.len());
        for s in samples {
            let mut m: Vec<(&str, &str)> = Vec::with_capacity(s.labels.len() + external.len() + 3);
            m.push(("__name__", &s.name));
            m.extend(s.labels.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.as_str(), v.as_str())));
            for (k, v) in external {
                if !m.iter().any(|(n, _)| n == k) {
                    m.push((k, v));
                }
            }
            merged.push(m);
        }
        // OTLP: the type and start time of each series travel as two labels of their own
        // (see [`otlp`]). Counters and histograms' `_count` say when a series restarts;
        // a histogram's other series take its start.
        let mut starts: Vec<Option<String>> = vec![None; samples.len()];
        if otlp {
            let tracker = &mut self.starts[i];
            let mut keys = Vec::with_capacity(samples.len());
            let mut seen = std::collections::HashSet::new();
            for (s, m) in samples.iter().zip(&merged) {
                let key = match s.kind {
                    Kind::Counter => Some(otlp::series_key(&s.name, m.iter().copied())),
                    Kind::Histogram => {
                        histogram_family(&s.name).map(|f| otlp::series_key(f, m.iter().copied()))
                    }
                    Kind::Gauge | Kind::Untyped => None,
                };
                if let Some(key) = &key {
                    if s.kind == Kind::Counter || s.name.ends_with("_count") {
                        tracker.observe(key, at_ms, s.value);
                        seen.insert(key.clone());
                    }
                }
                keys.push(key);
            }
            tracker.retain(&seen);
            for (start, key) in starts.iter_mut().zip(&keys) {
                *start = key.as_ref().map(|k| tracker.get(k).unwrap_or(at_ms).to_string());
            }
        }
        let mut labels = Vec::with_capacity(samples.len());
        let mut values = Vec::with_capacity(samples.len());
        for ((s, mut m), start) in samples.iter().zip(merged).zip(&starts) {
            if otlp {
                m.push((
                    otlp::TYPE,
                    match s.kind {
                        Kind::Counter => otlp::COUNTER,
                        Kind::Histogram => otlp::HISTOGRAM,
                        Kind::Gauge | Kind::Untyped => otlp::GAUGE,
                    },
                ));
                if let Some(start) = start {
                    m.push((otlp::START, start));
                }
            }
            m.sort_unstable_by(|a, b| a.0.cmp(b.0));
            labels.push(proto::encode_labels(m.iter().copied()).into_boxed_slice());
            values.push(s.value);
        }
        let set = match &self.sets[i] {
            Some(set) if set.labels == labels => Arc::clone(set),
            _ => Arc::new(SeriesSet { labels }),
        };
        self.sets[i] = Some(Arc::clone(&set));
        let mut queue = shared.lock();
        let step = Arc::new(Step { id: queue.next_id(), at_ms, set, values: values.into_boxed_slice() });
        if let Some(spool) = &shared.spool {
            let result = spool.lock().unwrap_or_else(PoisonError::into_inner).append(&step);
            match (result, self.spool_failing[i]) {
                (Err(e), false) => {
                    warn!(endpoint = %shared.endpoint.name, error = %e, "cannot write the spool; samples are kept in memory only until it works again");
                    self.spool_failing[i] = true;
                }
                (Ok(()), true) => {
                    info!(endpoint = %shared.endpoint.name, "spool writable again");
                    self.spool_failing[i] = false;
                }
                _ => {}
            }
        }
        let dropped = queue.push(step);
        if let (true, Some(spool)) = (dropped > 0, &shared.spool) {
            // Nothing is acknowledged during an outage: the spool is trimmed here too.
            let _ = spool.lock().unwrap_or_else(PoisonError::into_inner).trim(&queue.needed());
        }
        if dropped > 0 {
            let total = shared.stats().dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            if total == 0 {
                warn!(endpoint = %shared.endpoint.name, queue = %HumanDuration(shared.endpoint.queue_duration),
                    "remote-write queue full: dropping the oldest samples (counted as outcome=dropped in enawatch_remote_write_samples_total)");
            }
        }
        shared.update_pending(&queue);
        drop(queue);
        shared.ready.notify_one();
    }
}

/// One sample of a native family, as `/metrics` shows it.
#[derive(Debug)]
struct Sample {
    kind: Kind,
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The native families of a snapshot, through the same code as `/metrics`.
fn collect(snapshot: &Snapshot, options: &metrics::Options) -> Vec<Sample> {
    struct Samples(Vec<Sample>, Kind);
    impl Sink for Samples {
        fn family(&mut self, _name: &str, kind: Kind, _help: &str) {
            self.1 = kind;
        }
        fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
            let value = match value {
                // What a scrape would store: Prometheus parses every value as a float.
                Value::Int(v) => v as f64,
                Value::Float(v) => v,
            };
            let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            self.0.push(Sample { kind: self.1, name: name.to_owned(), labels, value });
        }
    }
    let mut out = Samples(Vec::with_capacity(128), Kind::Untyped);
    metrics::visit(snapshot, options, &mut out);
    out.0
}

/// The family of a histogram's series (`_bucket`, `_sum`, `_count`).
fn histogram_family(name: &str) -> Option<&str> {
    name.strip_suffix("_bucket").or_else(|| name.strip_suffix("_sum")).or_else(|| name.strip_suffix("_count"))
}
