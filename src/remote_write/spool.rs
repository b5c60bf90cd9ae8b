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
//!   step uses, so whole segments can be deleted. Every set record is written again right
//!   after the first step that uses it: the steps cannot be read without it, so one damage
//!   must not take them all.
//! - `cursor`: `<step id> <series offset>`, everything before it accepted (replaced by
//!   rename, so it is always whole).
//!
//! Reading recovers every intact step whatever is damaged: a record whose frame, CRC or
//! shape is wrong (a process that died mid-write leaves a torn last record; a disk can flip
//! a byte anywhere) is skipped by scanning forward for the next valid frame, and reported
//! with its file and byte offset. A file is deleted only when nothing in it could be read.
//! Records are written without fsync: the spool survives restarts of the agent, which is its
//! purpose, not a crash of the node (which takes the node's samples with it anyway).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::queue::{Position, SeriesSet, Step};

const SET: u8 = 1;
const STEP: u8 = 2;
/// A record longer than this is corruption, not data (a step of a million series).
const MAX_RECORD: usize = 64 << 20;
/// Step ids count steps from 1, one per resolution step: at one a millisecond the writer
/// would need 292 million years to get past this, so a larger id (in a record, a segment's
/// name or the cursor) is damage, even with a valid CRC. It also leaves room to number the
/// steps after any recovered one without overflowing.
const MAX_STEP_ID: u64 = i64::MAX.unsigned_abs();
/// The smallest record: a set of no series (type, number, count).
const MIN_PAYLOAD: usize = 9;

/// What a spool held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Steps not yet accepted, oldest first.
    pub steps: Vec<Arc<Step>>,
    /// Series of the first step already accepted.
    pub offset: usize,
    /// The id the next step gets.
    pub next_id: u64,
    /// What could not be read, and where.
    pub damaged: Vec<Damage>,
}

/// Bytes of a spool file that could not be used: where they start and what was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment or cursor file.
    pub file: PathBuf,
    /// Where in the file the damage starts, in bytes.
    pub offset: usize,
    /// What was found there and what was skipped.
    pub what: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.file.display(), self.offset, self.what)
    }
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
        let mut recovered = Recovered::default();
        let cursor = read_cursor(dir, &mut recovered.damaged);
        recovered.next_id = cursor.id.max(1);
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir)?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".spool").and_then(|n| n.parse::<u64>().ok()) else { continue };
            if id > MAX_STEP_ID {
                // Not a name the writer gives: left alone, and not taken as the next id.
                let what = format!("segment name {id} is beyond any step id; file ignored");
                recovered.damaged.push(Damage { file: entry.path(), offset: 0, what });
                continue;
            }
            names.push((id, entry.path()));
        }
        names.sort();
        let mut segments = VecDeque::new();
        let mut last_set = None;
        for (first, path) in names {
            let data = fs::read(&path)?;
            let segment = read_segment(&data, &mut last_set);
            recovered.damaged.extend(segment.damage.into_iter().map(|(offset, what)| Damage {
                file: path.clone(),
                offset,
                what,
            }));
            if !segment.readable {
                // Nothing in it could be read (or nothing was written): nothing to keep.
                fs::remove_file(&path)?;
                continue;
            }
            // Its name was given to a step once: never give it to a new segment again.
            recovered.next_id = recovered.next_id.max(first + 1);
            for step in segment.steps {
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
    pub fn append(&mut self, step: &Step) -> io::Result<()> {
        if self.current.is_none() || self.steps_in_segment >= self.steps_per_segment {
            let path = self.dir.join(format!("{:020}.spool", step.id));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.segments.push_back((step.id, path));
            self.current = Some(file);
            self.current_set = None;
            self.steps_in_segment = 0;
        }
        self.buf.clear();
        let mut set_copy = None;
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
                set_copy = Some(payload);
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
        if let Some(set) = set_copy {
            // The set again, after the step: every later step needs it, so one damage must
            // not take all of it, and no damage shorter than this step can hit both copies.
            frame(&mut self.buf, &set)?;
        }
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

/// The cursor; none (everything is resent) when it is missing or damaged.
fn read_cursor(dir: &Path, damaged: &mut Vec<Damage>) -> Position {
    let file = dir.join("cursor");
    let Ok(bytes) = fs::read(&file) else { return Position::default() };
    let text = String::from_utf8_lossy(&bytes);
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(id)), Some(Ok(offset))) if id <= MAX_STEP_ID => {
            Position { id, offset: usize::try_from(offset).unwrap_or(usize::MAX) }
        }
        _ if text.trim().is_empty() => Position::default(),
        _ => {
            let what =
                format!("cursor {:?} is not `<step id> <offset>`; every spooled step is resent", text.trim());
            damaged.push(Damage { file, offset: 0, what });
            Position::default()
        }
    }
}

/// What one segment file held.
struct Segment {
    /// Its steps that could be read whole, in file order.
    steps: Vec<Step>,
    /// What could not be used: byte offset and description.
    damage: Vec<(usize, String)>,
    /// Whether any record in it could be read.
    readable: bool,
}

/// Reads a segment, resynchronising after damage: where a record cannot be read, the
/// bytes up to the next valid record are skipped and reported. Steps are matched with their
/// set after the whole file is read, so the copy of a set written after its first step
/// serves as well as the original. A set equal to `last_set` (the previous segment's) is
/// shared with it.
fn read_segment(data: &[u8], last_set: &mut Option<Arc<SeriesSet>>) -> Segment {
    let mut sets: BTreeMap<u32, Arc<SeriesSet>> = BTreeMap::new();
    let mut steps = Vec::new();
    let mut segment = Segment { steps: Vec::new(), damage: Vec::new(), readable: false };
    let mut at = 0;
    while at < data.len() {
        let Some((record, len)) = record_at(&data[at..]) else {
            let next = (at + 1..data.len()).find(|&i| record_at(&data[i..]).is_some());
            let end = next.unwrap_or(data.len());
            let what = match next {
                Some(_) => format!("{} unreadable bytes skipped; reading resumed at byte {end}", end - at),
                None => format!("{} unreadable bytes at the end (a write cut short?) skipped", end - at),
            };
            segment.damage.push((at, what));
            at = end;
            continue;
        };
        segment.readable = true;
        match record {
            Record::Set { no, n, mut labels } => {
                let mut all = Vec::with_capacity(n as usize);
                while let Some(len) = labels.u32() {
                    all.push(labels.bytes(len as usize).unwrap_or_default().to_vec().into_boxed_slice());
                }
                let set = match last_set.as_ref() {
                    Some(last) if last.labels == all => Arc::clone(last),
                    _ => Arc::new(SeriesSet { labels: all }),
                };
                *last_set = Some(Arc::clone(&set));
                sets.insert(no, set);
            }
            Record::Step { id, at_ms, set_no, values } => steps.push((at, id, at_ms, set_no, values)),
        }
        at += len;
    }
    for (at, id, at_ms, set_no, values) in steps {
        let n = values.len() / 8;
        let problem = match sets.get(&set_no) {
            _ if id > MAX_STEP_ID => format!("step id {id} is beyond any the writer gives"),
            Some(set) if set.labels.len() == n => {
                let values = values
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
                segment.steps.push(Step { id, at_ms, set: Arc::clone(set), values });
                continue;
            }
            Some(set) => format!("step {id} has {n} values for {} series", set.labels.len()),
            None => format!("step {id}: both copies of its series set ({set_no}) are damaged"),
        };
        segment.damage.push((at, format!("{problem}; step skipped")));
    }
    segment.damage.sort_by_key(|(at, _)| *at);
    segment
}

/// A record's payload, its shape checked (nothing copied yet).
enum Record<'a> {
    Set { no: u32, n: u32, labels: Reader<'a> },
    Step { id: u64, at_ms: i64, set_no: u32, values: &'a [u8] },
}

/// The record at the start of `data` and its length with the frame, when the frame is whole,
/// the payload has the shape of a record and its CRC matches. Resynchronising calls this at
/// every byte of damaged data, so the cheap checks come before the CRC.
fn record_at(data: &[u8]) -> Option<(Record<'_>, usize)> {
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    if !(MIN_PAYLOAD..=MAX_RECORD).contains(&len) {
        return None;
    }
    let payload = data.get(8..8 + len)?;
    let record = shape(payload)?;
    (crc32fast::hash(payload) == crc).then_some((record, 8 + len))
}

/// The record `payload` holds, if it has exactly the shape the writer gives one.
fn shape(payload: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader(payload);
    match r.u8()? {
        SET => {
            let no = r.u32()?;
            let n = r.u32()?;
            let labels = Reader(r.0);
            let mut walk = Reader(r.0);
            for _ in 0..n {
                let len = walk.u32()? as usize;
                walk.bytes(len)?;
            }
            walk.0.is_empty().then_some(Record::Set { no, n, labels })
        }
        STEP => {
            let id = r.u64()?;
            let at_ms = i64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
            let set_no = r.u32()?;
            let n = r.u32()? as usize;
            (r.0.len() == n.checked_mul(8)?).then_some(Record::Step { id, at_ms, set_no, values: r.0 })
        }
        _ => None,
    }
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
mod tests;
