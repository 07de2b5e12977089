//! The tombstone journal: deletes survive reopening, torn appends are
//! dropped, corruption is refused, and a fold (or a crash at any point of
//! one) never brings a delete back.

use std::path::{Path, PathBuf};

use f4::Error;
use f4::format::{JOURNAL_HEADER_SIZE, TOMBSTONE_SIZE};
use f4::index::WarmIndex;
use f4::journal::Journal;
use f4::seal::seal_live_needles;
use haystack::{Volume, VolumeOptions};

const VOLUME: u32 = 8;
const GENERATION: u64 = 77;

/// A sealed warm index of keys 1..=count (sealed from a hot volume) and a
/// fresh journal beside it.
fn sealed(dir: &Path, count: u64) -> (PathBuf, PathBuf) {
    let hot = dir.join("hot");
    std::fs::create_dir(&hot).unwrap();
    let v = Volume::create(&hot, VOLUME, VolumeOptions::default()).unwrap();
    for key in 1..=count {
        v.append_needle(key, key as u32, "", &vec![key as u8; key as usize * 10])
            .unwrap();
    }
    v.lock().unwrap();
    let (data, index) = (dir.join("warm.data"), dir.join("warm.index"));
    seal_live_needles(&v, GENERATION, &data, &index).unwrap();
    let journal = dir.join("warm.journal");
    Journal::create(&journal, VOLUME, GENERATION).unwrap();
    (index, journal)
}

fn live(index: &WarmIndex, journal: &Journal, key: u64) -> bool {
    index.get(key).unwrap().is_some() && !journal.is_deleted(key)
}

#[test]
fn tombstones_survive_reopening_and_repeats_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = sealed(dir.path(), 5);
    let mut journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    journal.append(2, 1000).unwrap();
    journal.append(4, 1001).unwrap();
    journal.append(2, 1002).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        (JOURNAL_HEADER_SIZE + 2 * TOMBSTONE_SIZE) as u64
    );
    drop(journal);
    let journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    assert_eq!(journal.deleted_keys().collect::<Vec<_>>(), [2, 4]);
    assert!(
        Journal::create(&path, VOLUME, GENERATION).is_err(),
        "an existing journal is never replaced"
    );
    assert_eq!(Journal::open(&path, VOLUME, GENERATION).unwrap().len(), 2);
    assert!(matches!(
        Journal::open(&path, VOLUME, GENERATION + 1),
        Err(Error::WrongBlock(_))
    ));
    assert!(matches!(
        Journal::open(&path, VOLUME + 1, GENERATION),
        Err(Error::WrongBlock(_))
    ));
}

#[test]
fn a_torn_last_tombstone_is_dropped_and_a_bad_one_before_it_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = sealed(dir.path(), 5);
    let mut journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    for key in 1..=3 {
        journal.append(key, 5).unwrap();
    }
    drop(journal);
    let whole = std::fs::read(&path).unwrap();
    // Cut anywhere inside the last record: the first two stay.
    for cut in 1..TOMBSTONE_SIZE {
        std::fs::write(&path, &whole[..whole.len() - cut]).unwrap();
        let journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
        assert_eq!(
            journal.deleted_keys().collect::<Vec<_>>(),
            [1, 2],
            "cut {cut}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (JOURNAL_HEADER_SIZE + 2 * TOMBSTONE_SIZE) as u64
        );
    }
    // A last record of garbage (a torn write of its full length): dropped.
    let mut bad = whole.clone();
    let last = bad.len() - TOMBSTONE_SIZE;
    bad[last + 3] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let mut journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    assert_eq!(journal.len(), 2);
    // Appends continue after it.
    journal.append(3, 6).unwrap();
    drop(journal);
    assert_eq!(Journal::open(&path, VOLUME, GENERATION).unwrap().len(), 3);
    // A damaged record before the last: refused, nothing cut.
    let mut bad = whole.clone();
    bad[JOURNAL_HEADER_SIZE + 5] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        Journal::open(&path, VOLUME, GENERATION),
        Err(Error::Corrupt(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bad);
    // A damaged header or a file too short for one: refused.
    let mut bad = whole;
    bad[9] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(Journal::open(&path, VOLUME, GENERATION).is_err());
    std::fs::write(&path, &bad[..10]).unwrap();
    assert!(matches!(
        Journal::open(&path, VOLUME, GENERATION),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn a_fold_drops_deleted_keys_from_the_index_and_cuts_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (index_path, path) = sealed(dir.path(), 40);
    let mut journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    let deleted: Vec<u64> = (1..=40).filter(|k| k % 3 == 0).collect();
    for &key in &deleted {
        journal.append(key, 9).unwrap();
    }
    let index = journal.fold(&index_path).unwrap();
    index.check_all().unwrap();
    assert!(journal.is_empty());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        JOURNAL_HEADER_SIZE as u64
    );
    assert_eq!(index.header().entry_count, 40 - deleted.len() as u64);
    for key in 1..=40 {
        assert_eq!(live(&index, &journal, key), key % 3 != 0, "key {key}");
    }
    // After more deletes, a reopen of both, and a second fold.
    journal.append(1, 10).unwrap();
    drop((journal, index));
    let mut journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    let index = WarmIndex::open(&index_path, VOLUME, GENERATION).unwrap();
    assert!(!live(&index, &journal, 1));
    assert!(!live(&index, &journal, 3));
    let index = journal.fold(&index_path).unwrap();
    for key in 1..=40 {
        assert_eq!(
            live(&index, &journal, key),
            key != 1 && key % 3 != 0,
            "key {key}"
        );
    }
}

#[test]
fn a_crash_at_any_point_of_a_fold_brings_no_delete_back() {
    let dir = tempfile::tempdir().unwrap();
    let (index_path, path) = sealed(dir.path(), 12);
    let mut journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    for key in [2, 5, 11] {
        journal.append(key, 1).unwrap();
    }
    let journal_before = std::fs::read(&path).unwrap();
    let index_before = std::fs::read(&index_path).unwrap();
    let _ = journal.fold(&index_path).unwrap();
    let index_after = std::fs::read(&index_path).unwrap();
    drop(journal);
    let check = |what: &str| {
        let journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
        let index = WarmIndex::open(&index_path, VOLUME, GENERATION).unwrap();
        for key in 1..=12 {
            let want = ![2, 5, 11].contains(&key);
            assert_eq!(live(&index, &journal, key), want, "{what}: key {key}");
        }
    };
    // Crashed before the rename: the old index, the whole journal, and a
    // temporary file that nobody reads.
    std::fs::write(&index_path, &index_before).unwrap();
    std::fs::write(&path, &journal_before).unwrap();
    std::fs::write(dir.path().join("warm.index.tmp"), &index_after[..50]).unwrap();
    check("before the rename");
    // Crashed after the rename, before the journal was cut.
    std::fs::write(&index_path, &index_after).unwrap();
    std::fs::write(&path, &journal_before).unwrap();
    check("after the rename");
    // And a fold from that state works.
    let mut journal = Journal::open(&path, VOLUME, GENERATION).unwrap();
    let index = journal.fold(&index_path).unwrap();
    assert_eq!(index.header().entry_count, 9);
    drop((journal, index));
    check("after a second fold");
}
