//! The optional on-disk spool of one endpoint: every step is appended before it is queued,
//! and a cursor records what the receiver has accepted, so a restarted agent sends what its
//! predecessor could not.
//!
//! Layout of `<spool_dir>/<endpoint>/`:
//!
//! - `<first step id, 20 digits>.spool`: segments of records, each
//!   `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`, where a payload is
//!   a series set (`1`, set number: u32, count: u32, then per series its encoded labels as
//!   length: u32 + bytes) or a step (`2`, id: u64, time: i64 ms, set number: u32, count:
//!   u32, then count f64 values), all little-endian. A segment starts with the set its first
//!   step uses, so whole segments can be deleted.
//! - `cursor`: `<step id> <series offset>`, everything before it accepted (replaced by
//!   rename, so it is always whole).
//!
//! A process that dies mid-write leaves a torn last record, which the CRC or the length
//! exposes: reading stops there, and the next process writes a new segment. Records are
//! written without fsync: the spool survives restarts of the agent, which is its purpose,
//! not a crash of the node (which takes the node's samples with it anyway).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::queue::{Position, SeriesSet, Step};

const SET: u8 = 1;
const STEP: u8 = 2;
/// A record longer than this is corruption, not data (a step of a million series).
const MAX_RECORD: usize = 64 << 20;

/// What a spool held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Steps not yet accepted, oldest first.
    pub steps: Vec<Arc<Step>>,
    /// Series of the first step already accepted.
    pub offset: usize,
    /// The id the next step gets.
    pub next_id: u64,
    /// Records that could not be read (a torn write when the last process was killed).
    pub damaged: Vec<String>,
}

/// An open spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// First step id and path of each segment, oldest first (the last is being written).
    segments: VecDeque<(u64, PathBuf)>,
    current: Option<File>,
    /// The set last written to the current segment, and its number there.
    current_set: Option<(Arc<SeriesSet>, u32)>,
    steps_in_segment: usize,
    steps_per_segment: usize,
    buf: Vec<u8>,
}

impl Spool {
    /// Opens (creating it if needed) and reads a spool directory.
    pub fn open(dir: &Path, steps_per_segment: usize) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let cursor = read_cursor(dir);
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".spool")?.parse::<u64>().ok()?;
                Some((id, e.path()))
            })
            .collect();
        names.sort();
        let mut recovered = Recovered { next_id: cursor.id.max(1), ..Recovered::default() };
        let mut segments = VecDeque::new();
        let mut last_set = None;
        for (first, path) in names {
            let data = fs::read(&path)?;
            let (steps, damage) = read_segment(&data, &mut last_set);
            if let Some(at) = damage {
                recovered.damaged.push(format!("{}: {at}", path.display()));
            }
            if steps.is_empty() {
                // Nothing readable (or nothing written): nothing to keep.
                fs::remove_file(&path)?;
                continue;
            }
            for step in steps {
                recovered.next_id = recovered.next_id.max(step.id + 1);
                if step.id > cursor.id || (step.id == cursor.id && cursor.offset < step.len()) {
                    if recovered.steps.is_empty() && step.id == cursor.id {
                        recovered.offset = cursor.offset;
                    }
                    recovered.steps.push(Arc::new(step));
                }
            }
            segments.push_back((first, path));
        }
        let spool = Self {
            dir: dir.to_owned(),
            segments,
            current: None,
            current_set: None,
            steps_in_segment: 0,
            steps_per_segment: steps_per_segment.max(1),
            buf: Vec::new(),
        };
        Ok((spool, recovered))
    }

    /// Appends a step.
    pub(crate) fn append(&mut self, step: &Step) -> io::Result<()> {
        if self.current.is_none() || self.steps_in_segment >= self.steps_per_segment {
            let path = self.dir.join(format!("{:020}.spool", step.id));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.segments.push_back((step.id, path));
            self.current = Some(file);
            self.current_set = None;
            self.steps_in_segment = 0;
        }
        self.buf.clear();
        let set_no = match &self.current_set {
            Some((set, no)) if Arc::ptr_eq(set, &step.set) => *no,
            previous => {
                let no = previous.as_ref().map_or(0, |(_, no)| no + 1);
                let mut payload = vec![SET];
                payload.extend_from_slice(&no.to_le_bytes());
                payload.extend_from_slice(&u32_len(step.set.labels.len())?.to_le_bytes());
                for labels in &step.set.labels {
                    payload.extend_from_slice(&u32_len(labels.len())?.to_le_bytes());
                    payload.extend_from_slice(labels);
                }
                frame(&mut self.buf, &payload)?;
                self.current_set = Some((Arc::clone(&step.set), no));
                no
            }
        };
        let mut payload = Vec::with_capacity(25 + step.values.len() * 8);
        payload.push(STEP);
        payload.extend_from_slice(&step.id.to_le_bytes());
        payload.extend_from_slice(&step.at_ms.to_le_bytes());
        payload.extend_from_slice(&set_no.to_le_bytes());
        payload.extend_from_slice(&u32_len(step.values.len())?.to_le_bytes());
        for v in &step.values {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        frame(&mut self.buf, &payload)?;
        let file = self.current.as_mut().expect("opened above");
        // One write per step: a kill leaves at most this record torn.
        let result = file.write_all(&self.buf);
        if result.is_err() {
            // Start over in a new segment: this one may end in a torn record.
            self.current = None;
        }
        self.steps_in_segment += 1;
        result
    }

    /// Records that everything before `done` was accepted.
    pub fn ack(&mut self, done: Position) -> io::Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, format!("{} {}\n", done.id, done.offset))?;
        fs::rename(&tmp, self.dir.join("cursor"))
    }

    /// Deletes the segments holding none of the `needed` steps (inclusive id ranges): what
    /// was delivered, rejected, or dropped from a full queue. This bounds the spool like the
    /// queue, also during an outage, when nothing is acknowledged.
    pub fn trim(&mut self, needed: &[(u64, u64)]) -> io::Result<()> {
        // A segment's steps end where the next one's begin; the last one is being written.
        let mut kept = VecDeque::with_capacity(self.segments.len());
        let mut result = Ok(());
        while let Some((first, path)) = self.segments.pop_front() {
            let Some(&(next, _)) = self.segments.front() else {
                kept.push_back((first, path));
                break;
            };
            let used = needed.iter().any(|&(a, b)| a < next && b >= first);
            if used {
                kept.push_back((first, path));
            } else if let Err(e) = fs::remove_file(&path) {
                result = Err(e);
                kept.push_back((first, path));
            }
        }
        self.segments = kept;
        result
    }
}

fn u32_len(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too long"))
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    out.extend_from_slice(&u32_len(payload.len())?.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

fn read_cursor(dir: &Path) -> Position {
    let text = fs::read_to_string(dir.join("cursor")).unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(id)), Some(Ok(offset))) => {
            Position { id, offset: usize::try_from(offset).unwrap_or(usize::MAX) }
        }
        _ => Position::default(),
    }
}

/// The steps of a segment, and where reading stopped early, if it did. A set equal to
/// `last_set` (the previous segment's) is shared with it.
fn read_segment(mut data: &[u8], last_set: &mut Option<Arc<SeriesSet>>) -> (Vec<Step>, Option<String>) {
    let mut sets: BTreeMap<u32, Arc<SeriesSet>> = BTreeMap::new();
    let mut steps = Vec::new();
    let total = data.len();
    while !data.is_empty() {
        let at = total - data.len();
        let Some((payload, rest)) = unframe(data) else {
            return (
                steps,
                Some(format!("torn or corrupt record at byte {at}, {} bytes ignored", data.len())),
            );
        };
        data = rest;
        let mut r = Reader(payload);
        let ok = match r.u8() {
            Some(SET) => (|| {
                let no = r.u32()?;
                let n = r.u32()?;
                let mut labels = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    let len = r.u32()? as usize;
                    labels.push(r.bytes(len)?.to_vec().into_boxed_slice());
                }
                let set = match last_set.as_ref() {
                    Some(last) if last.labels == labels => Arc::clone(last),
                    _ => Arc::new(SeriesSet { labels }),
                };
                *last_set = Some(Arc::clone(&set));
                sets.insert(no, set);
                Some(())
            })(),
            Some(STEP) => (|| {
                let id = r.u64()?;
                let at_ms = i64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
                let set = Arc::clone(sets.get(&r.u32()?)?);
                let n = r.u32()? as usize;
                if n != set.labels.len() {
                    return None;
                }
                let values = (0..n).map(|_| r.u64().map(f64::from_bits)).collect::<Option<Box<[f64]>>>()?;
                steps.push(Step { id, at_ms, set, values });
                Some(())
            })(),
            _ => None,
        };
        if ok.is_none() {
            return (steps, Some(format!("unreadable record at byte {at}")));
        }
    }
    (steps, None)
}

fn unframe(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = data.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then(|| (payload, &data[8 + len..]))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote_write::queue::tests::set;

    fn step(id: u64, set: &Arc<SeriesSet>) -> Step {
        let values = (0..set.labels.len()).map(|i| id as f64 + i as f64 / 10.0).collect();
        Step { id, at_ms: i64::try_from(id).unwrap() * 1000, set: Arc::clone(set), values }
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        Dir(std::env::temp_dir().join(format!("enawatch-spool-{tag}-{}", std::process::id())))
    }

    #[test]
    fn steps_survive_a_restart_from_the_cursor_on() {
        let d = dir("restart");
        let (ab, abc) = (set(&["a", "b"]), set(&["a", "b", "c"]));
        let (mut spool, recovered) = Spool::open(&d.0, 3).unwrap();
        assert!(recovered.steps.is_empty() && recovered.next_id == 1);
        for id in 1..=4 {
            spool.append(&step(id, &ab)).unwrap();
        }
        for id in 5..=7 {
            spool.append(&step(id, &abc)).unwrap();
        }
        assert_eq!(spool.segments.len(), 3);
        // Steps 1-2 and one series of step 3 accepted; segment 1-3 is still needed.
        spool.ack(Position { id: 3, offset: 1 }).unwrap();
        spool.trim(&[(3, 7)]).unwrap();
        assert_eq!(spool.segments.len(), 3);
        drop(spool);

        let (spool, recovered) = Spool::open(&d.0, 3).unwrap();
        let ids: Vec<u64> = recovered.steps.iter().map(|s| s.id).collect();
        assert_eq!(ids, [3, 4, 5, 6, 7]);
        assert_eq!((recovered.offset, recovered.next_id), (1, 8));
        assert_eq!(recovered.steps[4].values[..], [7.0, 7.1, 7.2]);
        assert_eq!(recovered.steps[4].set, abc);
        assert!(Arc::ptr_eq(&recovered.steps[2].set, &recovered.steps[4].set), "sets are shared again");
        assert!(recovered.damaged.is_empty());
        drop(spool);

        let (mut spool, _) = Spool::open(&d.0, 3).unwrap();
        spool.ack(Position { id: 7, offset: 3 }).unwrap();
        spool.trim(&[]).unwrap();
        assert_eq!(spool.segments.len(), 1, "the last segment stays");
        let (_, recovered) = Spool::open(&d.0, 3).unwrap();
        assert!(recovered.steps.is_empty());
        assert_eq!(recovered.next_id, 8);
    }

    #[test]
    fn an_outage_beyond_the_queue_trims_what_the_queue_dropped() {
        let d = dir("trim");
        let s = set(&["a"]);
        let (mut spool, _) = Spool::open(&d.0, 1).unwrap();
        for id in 1..=5 {
            spool.append(&step(id, &s)).unwrap();
        }
        // Step 1 is being retried, 2 and 3 were dropped from the full queue, 4 and 5 wait.
        spool.trim(&[(1, 1), (4, 5)]).unwrap();
        let (_, recovered) = Spool::open(&d.0, 1).unwrap();
        let ids: Vec<u64> = recovered.steps.iter().map(|s| s.id).collect();
        assert_eq!(ids, [1, 4, 5]);
    }

    #[test]
    fn a_torn_last_record_is_ignored() {
        let d = dir("torn");
        let s = set(&["a"]);
        let (mut spool, _) = Spool::open(&d.0, 100).unwrap();
        for id in 1..=3 {
            spool.append(&step(id, &s)).unwrap();
        }
        let path = spool.segments[0].1.clone();
        drop(spool);
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 5]).unwrap();
        let (mut spool, recovered) = Spool::open(&d.0, 100).unwrap();
        assert_eq!(recovered.steps.len(), 2);
        assert_eq!(recovered.damaged.len(), 1, "{:?}", recovered.damaged);
        // New steps go to a new segment, after the recovered ones.
        spool.append(&step(recovered.next_id, &s)).unwrap();
        let (_, again) = Spool::open(&d.0, 100).unwrap();
        let ids: Vec<u64> = again.steps.iter().map(|s| s.id).collect();
        assert_eq!(ids, [1, 2, 3]);
    }
}
