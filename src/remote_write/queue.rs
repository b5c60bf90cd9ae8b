//! What waits for one endpoint: a bounded FIFO of steps (one per resolution step: every
//! series' value at one sample time), cut into batches in order.
//!
//! A batch leaves the queue when the sender takes it and is delivered or rejected whole, one
//! at a time, so each series' samples reach the receiver in order and only once. The queue
//! holds at most `capacity` steps (the configured queue duration at the resolution); a full
//! queue drops its oldest step and counts its samples.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::proto;

/// The series of a step: their labels, already encoded as the `labels` fields of a
/// `TimeSeries`. Shared by consecutive steps while the set of series does not change.
#[derive(Debug, PartialEq, Eq)]
pub struct SeriesSet {
    /// One entry per series.
    pub labels: Vec<Box<[u8]>>,
}

/// Every series' value at one sample time.
#[derive(Debug)]
pub struct Step {
    /// Increasing per endpoint, across restarts (the spool keeps it).
    pub id: u64,
    /// Sample time, Unix milliseconds.
    pub at_ms: i64,
    /// The series.
    pub set: Arc<SeriesSet>,
    /// One value per series of `set`.
    pub values: Box<[f64]>,
}

impl Step {
    /// Samples in the step.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the step has no series.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A point in the stream of samples: step `id`, its first `offset` series done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Step id.
    pub id: u64,
    /// Series of that step already delivered.
    pub offset: usize,
}

/// One series' (Unix milliseconds, value) samples.
type Samples = Vec<(i64, f64)>;

/// Samples taken from the queue, to be delivered together.
#[derive(Debug)]
pub struct Batch {
    parts: Vec<(Arc<Step>, Range<usize>)>,
    /// Samples in the batch.
    pub samples: usize,
    /// Where the batch ends: everything before is delivered once it is.
    pub end: Position,
    /// The first step of the batch.
    pub first_id: u64,
}

impl Batch {
    /// The uncompressed `WriteRequest`: one `TimeSeries` per series, its samples in time order.
    pub fn encode(&self) -> Vec<u8> {
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut series: Vec<(&[u8], Samples)> = Vec::new();
        for (step, range) in &self.parts {
            for i in range.clone() {
                let labels = &step.set.labels[i][..];
                let k = *index.entry(labels).or_insert_with(|| {
                    series.push((labels, Vec::new()));
                    series.len() - 1
                });
                series[k].1.push((step.at_ms, step.values[i]));
            }
        }
        proto::write_request(series.iter().map(|(labels, samples)| (*labels, &samples[..])))
    }

    /// The same samples as an OTLP `ExportMetricsServiceRequest` (see [`super::otlp`]).
    pub(crate) fn encode_otlp(&self, resource: &[(String, String)], version: &str) -> Vec<u8> {
        let points = self.parts.iter().flat_map(|(step, range)| {
            range.clone().map(move |i| (&step.set.labels[i][..], step.at_ms, step.values[i]))
        });
        super::otlp::export_request(resource, version, points)
    }
}

/// The bounded queue of one endpoint.
#[derive(Debug)]
pub struct Queue {
    steps: VecDeque<(Arc<Step>, Instant)>,
    /// Series of the front step already taken.
    front_offset: usize,
    capacity: usize,
    samples: usize,
    /// The first and last step and the samples of the batch being delivered, if any.
    in_flight: Option<(u64, u64)>,
    in_flight_samples: usize,
    /// The id the next step gets.
    next_id: u64,
}

impl Queue {
    /// A queue of at most `capacity` steps, numbering new steps from `next_id`.
    pub fn new(capacity: usize, next_id: u64) -> Self {
        Self {
            steps: VecDeque::new(),
            front_offset: 0,
            capacity: capacity.max(1),
            samples: 0,
            in_flight: None,
            in_flight_samples: 0,
            next_id,
        }
    }

    /// The id for a new step.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Appends a step; returns how many samples were dropped to make room.
    pub fn push(&mut self, step: Arc<Step>) -> usize {
        let mut dropped = 0;
        while self.steps.len() >= self.capacity {
            let Some((old, _)) = self.steps.pop_front() else { break };
            dropped += old.len() - self.front_offset;
            self.front_offset = 0;
        }
        self.samples -= dropped;
        self.samples += step.len();
        self.steps.push_back((step, Instant::now()));
        dropped
    }

    /// Puts back steps recovered from the spool, the first with `offset` series delivered.
    pub(crate) fn restore(&mut self, steps: Vec<Arc<Step>>, offset: usize) -> usize {
        let mut dropped = 0;
        for (i, step) in steps.into_iter().enumerate() {
            dropped += self.push(step);
            if i == 0 && self.steps.len() == 1 {
                let skip = offset.min(self.steps[0].0.len());
                self.front_offset = skip;
                self.samples -= skip;
            }
        }
        dropped
    }

    /// Samples waiting (not counting a batch being delivered).
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Whether the next step pushes the oldest out.
    pub(crate) fn is_full(&self) -> bool {
        self.steps.len() >= self.capacity
    }

    /// Samples not yet delivered: waiting, or in the batch being delivered.
    pub fn pending(&self) -> usize {
        self.samples + self.in_flight_samples
    }

    /// When the oldest waiting step was queued.
    pub fn oldest(&self) -> Option<Instant> {
        self.steps.front().map(|(_, at)| *at)
    }

    /// The steps still needed (first and last id, inclusive): the batch in flight and the
    /// waiting steps. Anything else was delivered, rejected or dropped.
    pub fn needed(&self) -> Vec<(u64, u64)> {
        let waiting = self.steps.front().zip(self.steps.back()).map(|((a, _), (b, _))| (a.id, b.id));
        self.in_flight.into_iter().chain(waiting).collect()
    }

    /// Takes up to `max` samples from the front, in order.
    pub fn take(&mut self, max: usize) -> Option<Batch> {
        let mut parts = Vec::new();
        let mut n = 0;
        let mut end = Position::default();
        while n < max.max(1) {
            let Some((step, _)) = self.steps.front() else { break };
            let available = step.len() - self.front_offset;
            let take = available.min(max.max(1) - n);
            let range = self.front_offset..self.front_offset + take;
            end = Position { id: step.id, offset: range.end };
            if take > 0 {
                parts.push((Arc::clone(step), range));
            }
            n += take;
            if take == available {
                self.steps.pop_front();
                self.front_offset = 0;
            } else {
                self.front_offset += take;
            }
        }
        if parts.is_empty() {
            return None;
        }
        self.samples -= n;
        let first_id = parts[0].0.id;
        self.in_flight = Some((first_id, end.id));
        self.in_flight_samples = n;
        Some(Batch { parts, samples: n, end, first_id })
    }

    /// The batch in flight is done (delivered or rejected).
    pub fn finish(&mut self) {
        self.in_flight = None;
        self.in_flight_samples = 0;
    }
}

#[cfg(test)]
pub(in crate::remote_write) mod tests {
    use super::*;

    fn step(id: u64, set: &Arc<SeriesSet>) -> Arc<Step> {
        let values = (0..set.labels.len()).map(|i| (id * 10 + i as u64) as f64).collect();
        Arc::new(Step { id, at_ms: i64::try_from(id).unwrap() * 1000, set: Arc::clone(set), values })
    }

    /// A series set of bare metric names; the spool's tests use it too.
    pub(in crate::remote_write) fn set(names: &[&str]) -> Arc<SeriesSet> {
        Arc::new(SeriesSet {
            labels: names
                .iter()
                .map(|n| proto::encode_labels([("__name__", *n)]).into_boxed_slice())
                .collect(),
        })
    }

    #[test]
    fn batches_follow_the_order_and_split_steps() {
        let s = set(&["a", "b", "c"]);
        let mut q = Queue::new(10, 1);
        for id in 1..=3 {
            q.push(step(id, &s));
        }
        assert_eq!(q.samples(), 9);
        let b = q.take(4).unwrap();
        assert_eq!((b.samples, b.end, b.first_id), (4, Position { id: 2, offset: 1 }, 1));
        assert_eq!(q.needed(), [(1, 2), (2, 3)]);
        let decoded = proto::decode_request(&proto::compress(&b.encode())).unwrap();
        // Series a has steps 1 and 2, in order; b and c only step 1.
        assert_eq!(decoded[0].samples, [(1000, 10.0), (2000, 20.0)]);
        assert_eq!(decoded.len(), 3);
        q.finish();
        assert_eq!(q.needed(), [(2, 3)]);
        let b = q.take(100).unwrap();
        assert_eq!((b.samples, b.end), (5, Position { id: 3, offset: 3 }));
        assert!(q.take(100).is_none());
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let s = set(&["a", "b"]);
        let mut q = Queue::new(2, 1);
        assert_eq!(q.push(step(1, &s)), 0);
        let _ = q.take(1).unwrap(); // half of step 1 in flight
        assert_eq!(q.push(step(2, &s)), 0);
        assert_eq!(q.push(step(3, &s)), 1, "the rest of step 1");
        assert_eq!(q.push(step(4, &s)), 2);
        assert_eq!(q.samples(), 4);
        assert_eq!(q.needed(), [(1, 1), (3, 4)], "the batch in flight stays");
        q.finish();
        assert_eq!(q.needed(), [(3, 4)]);
    }

    #[test]
    fn restored_steps_skip_what_was_delivered() {
        let s = set(&["a", "b", "c"]);
        let mut q = Queue::new(10, 9);
        assert_eq!(q.restore(vec![step(5, &s), step(6, &s)], 2), 0);
        assert_eq!(q.samples(), 4);
        let b = q.take(10).unwrap();
        let decoded = proto::decode_request(&proto::compress(&b.encode())).unwrap();
        assert_eq!(decoded[0].labels[0].1, "c");
        assert_eq!(decoded[0].samples, [(5000, 52.0), (6000, 62.0)]);
        assert_eq!(q.next_id(), 9);
    }
}
