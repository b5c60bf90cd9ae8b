//! The spool against damage: the real writer, one damage, reopen.

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

/// A spool written by the real writer, read back record by record.
struct Written {
    path: PathBuf,
    clean: Vec<u8>,
    /// Each record's step id (`None` for a set) and bytes.
    records: Vec<(Option<u64>, std::ops::Range<usize>)>,
}

/// Steps 1 to 9 with a change of series at 5, in segments of 4, as the writer lays them.
fn written(d: &Dir) -> Vec<Written> {
    let (ab, abc) = (set(&["a", "b"]), set(&["a", "b", "c"]));
    let (mut spool, _) = Spool::open(&d.0, 4).unwrap();
    for id in 1..=9 {
        spool.append(&step(id, if id < 5 { &ab } else { &abc })).unwrap();
    }
    let paths: Vec<PathBuf> = spool.segments.iter().map(|(_, p)| p.clone()).collect();
    drop(spool);
    paths
        .into_iter()
        .map(|path| {
            let clean = fs::read(&path).unwrap();
            let mut records = Vec::new();
            let mut at = 0;
            while at < clean.len() {
                let (record, len) = record_at(&clean[at..]).expect("the writer writes whole records");
                let id = match record {
                    Record::Step { id, .. } => Some(id),
                    Record::Set { .. } => None,
                };
                records.push((id, at..at + len));
                at += len;
            }
            Written { path, clean, records }
        })
        .collect()
}

type Damage = fn(&mut Vec<u8>, usize) -> std::ops::Range<usize>;

#[test]
fn one_damage_anywhere_loses_only_the_step_it_hits_and_says_where() {
    let d = dir("one-damage");
    let files = written(&d);
    assert_eq!(files.len(), 3);
    // Each damage returns the clean bytes it changed (an insertion: the two around it).
    let damages: [(&str, Damage); 5] = [
        ("a flipped byte", |data, at| {
            data[at] ^= 0x5a;
            at..at + 1
        }),
        ("8 overwritten bytes", |data, at| {
            let end = (at + 8).min(data.len());
            data[at..end].iter_mut().for_each(|b| *b = !*b);
            at..end
        }),
        ("an inserted byte", |data, at| {
            data.insert(at, 0x5a);
            at.saturating_sub(1)..at + 1
        }),
        ("a deleted byte", |data, at| {
            data.remove(at);
            at..at + 1
        }),
        ("a cut", |data, at| {
            let end = data.len();
            data.truncate(at);
            at..end
        }),
    ];
    for (i, file) in files.iter().enumerate() {
        for at in 0..file.clean.len() {
            for (kind, damage) in damages {
                let mut data = file.clean.clone();
                let hit = damage(&mut data, at);
                // An insertion between two records hits neither.
                let hits = |r: &std::ops::Range<usize>| {
                    if kind == "an inserted byte" {
                        r.start < at && at < r.end
                    } else {
                        r.start < hit.end && hit.start < r.end
                    }
                };
                fs::write(&file.path, &data).unwrap();
                let (_, recovered) = Spool::open(&d.0, 4).unwrap();
                let lost: Vec<u64> =
                    file.records.iter().filter(|(_, r)| hits(r)).filter_map(|(id, _)| *id).collect();
                let want: Vec<u64> = (1..=9).filter(|id| !lost.contains(id)).collect();
                let got: Vec<u64> = recovered.steps.iter().map(|s| s.id).collect();
                let context = format!("{kind} at byte {at} of segment {i}: {:?}", recovered.damaged);
                assert_eq!(got, want, "{context}");
                // A cut between two records leaves nothing damaged to report.
                let reportable = |r: &std::ops::Range<usize>| hits(r) && (kind != "a cut" || r.start < at);
                if let Some((_, first_hit)) = file.records.iter().find(|(_, r)| reportable(r)) {
                    let reported = recovered.damaged.iter().find(|d| d.file == file.path);
                    assert_eq!(reported.map(|d| d.offset), Some(first_hit.start), "{context}");
                }
                let intact = file.records.iter().any(|(_, r)| !hits(r));
                assert_eq!(
                    file.path.exists(),
                    intact,
                    "deleted if and only if nothing is readable: {context}"
                );
            }
        }
        fs::write(&file.path, &file.clean).unwrap();
    }
}

#[test]
fn a_step_is_lost_only_when_both_copies_of_its_set_are() {
    let d = dir("both-sets");
    let files = written(&d);
    let file = &files[0];
    let sets: Vec<_> = file.records.iter().filter(|(id, _)| id.is_none()).map(|(_, r)| r.clone()).collect();
    assert_eq!(sets.len(), 2, "the set, and its copy after the first step");
    for (n, damaged) in [(1, &sets[..1]), (1, &sets[1..]), (2, &sets[..])] {
        let mut data = file.clean.clone();
        for r in damaged {
            data[r.start + 8] ^= 0xff;
        }
        fs::write(&file.path, &data).unwrap();
        let (_, recovered) = Spool::open(&d.0, 4).unwrap();
        let ids: Vec<u64> = recovered.steps.iter().map(|s| s.id).collect();
        if n == 1 {
            assert_eq!(ids, (1..=9).collect::<Vec<_>>(), "one copy is enough");
        } else {
            assert_eq!(ids, (5..=9).collect::<Vec<_>>());
            let what: Vec<&str> = recovered.damaged.iter().map(|d| d.what.as_str()).collect();
            assert!(what.iter().any(|w| w.contains("step 1: both copies of its series set")), "{what:?}");
        }
    }
}

#[test]
fn step_ids_the_writer_never_gives_are_damage_not_an_overflow() {
    let d = dir("max-id");
    let s = set(&["a"]);
    let (mut spool, _) = Spool::open(&d.0, 100).unwrap();
    for id in [1, 2, u64::MAX] {
        spool.append(&Step { id, at_ms: 0, set: Arc::clone(&s), values: [1.0].into() }).unwrap();
    }
    drop(spool);
    // A segment named after such an id, and a cursor pointing past every id.
    let (mut spool, _) = Spool::open(&d.0, 1).unwrap();
    spool.append(&Step { id: u64::MAX, at_ms: 0, set: Arc::clone(&s), values: [1.0].into() }).unwrap();
    drop(spool);
    fs::write(d.0.join("cursor"), format!("{} 0\n", u64::MAX)).unwrap();

    let (_, recovered) = Spool::open(&d.0, 100).unwrap();
    let ids: Vec<u64> = recovered.steps.iter().map(|s| s.id).collect();
    assert_eq!(ids, [1, 2], "the cursor is damaged: everything intact is resent");
    assert_eq!(recovered.next_id, 3);
    let what: Vec<String> = recovered.damaged.iter().map(ToString::to_string).collect();
    assert_eq!(what.len(), 3, "{what:?}");
    assert!(
        what.iter().any(|w| w.contains("cursor") && w.contains("every spooled step is resent")),
        "{what:?}"
    );
    assert!(what.iter().any(|w| w.contains("step id 18446744073709551615 is beyond")), "{what:?}");
    assert!(what.iter().any(|w| w.contains("segment name 18446744073709551615")), "{what:?}");
    assert!(d.0.join(format!("{}.spool", u64::MAX)).exists(), "a file it did not write is left alone");
}

#[test]
fn a_file_with_nothing_readable_is_deleted() {
    let d = dir("garbage");
    fs::create_dir_all(&d.0).unwrap();
    let path = d.0.join(format!("{:020}.spool", 7));
    fs::write(&path, [0x5a; 100]).unwrap();
    let (_, recovered) = Spool::open(&d.0, 100).unwrap();
    assert!(recovered.steps.is_empty() && !path.exists());
    assert_eq!(recovered.damaged.len(), 1);
    assert_eq!(recovered.damaged[0].offset, 0);
    assert!(recovered.damaged[0].what.contains("100 unreadable bytes"), "{:?}", recovered.damaged);
}
