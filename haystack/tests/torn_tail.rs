//! Crash recovery: a data file cut at every byte offset inside its last needles reopens
//! with every earlier needle intact, the torn one absent, and appends working again, when
//! the index lags the data file (as after a crash: index records are written only after
//! their needles were synced) or is gone. When the index names the cut needles, acknowledged
//! data is missing: the volume refuses to open and nothing is cut.

use haystack::{Error, Volume, VolumeOptions};

fn build(dir: &std::path::Path, n: u64) -> Vec<(u64, u64, Vec<u8>)> {
    let v = Volume::create(dir, 1, VolumeOptions::default()).expect("create");
    let mut out = Vec::new();
    for k in 1..=n {
        let data: Vec<u8> = (0..(k * 13 % 97) as u8).collect();
        let a = v
            .append_needle(k, k as u32, "application/x", &data)
            .expect("append");
        out.push((a.offset, a.size_bytes, data));
    }
    out
}

/// What the index file holds when the data file is cut.
#[derive(Clone, Copy, PartialEq)]
enum Index {
    /// Every needle's record: the cut needles were acknowledged.
    NamesAll,
    /// All records but the last two needles' (a crash before their records).
    Lags,
    /// No index file.
    Gone,
}

fn check_cut(dir: &std::path::Path, needles: &[(u64, u64, Vec<u8>)], cut: u64, index: Index) {
    let data_path = dir.join("volume-0000000001.data");
    let index_path = dir.join("volume-0000000001.index");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&data_path)
        .expect("open");
    file.set_len(cut).expect("truncate");
    drop(file);
    match index {
        Index::NamesAll => {
            match Volume::open(dir, 1, VolumeOptions::default()) {
                Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("not cutting")),
                other => panic!("cut {cut}: expected a refusal, got {other:?}"),
            }
            assert_eq!(std::fs::metadata(&data_path).expect("stat").len(), cut);
            return;
        }
        Index::Lags => {
            let records = needles.len() as u64 - 2;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&index_path)
                .expect("open index");
            file.set_len(32 + records * 32).expect("truncate index");
        }
        Index::Gone => std::fs::remove_file(&index_path).expect("remove index"),
    }
    let v = Volume::open(dir, 1, VolumeOptions::default()).expect("reopen");
    let mut last_whole = 0;
    for (i, (offset, size, data)) in needles.iter().enumerate() {
        let key = i as u64 + 1;
        let r = v.read_needle(key, key as u32);
        if offset + size <= cut {
            assert_eq!(&r.expect("intact").data, data, "cut {cut}: needle {key}");
            last_whole = key;
        } else {
            assert!(
                matches!(r, Err(Error::NotFound)),
                "cut {cut}: torn needle {key} served"
            );
        }
    }
    assert_eq!(v.status().last_key, Some(last_whole).filter(|&k| k > 0));
    let next = last_whole + 1;
    v.append_needle(next, 9, "", b"after")
        .expect("append after recovery");
    assert_eq!(v.read_needle(next, 9).expect("read").data, &b"after"[..]);
    drop(v);
    let v = Volume::open(dir, 1, VolumeOptions::default()).expect("reopen again");
    assert_eq!(v.read_needle(next, 9).expect("read").data, &b"after"[..]);
}

fn run(index: Index) {
    let n = 6;
    let template = tempfile::tempdir().expect("tempdir");
    let needles = build(template.path(), n);
    let start = needles[needles.len() - 2].0;
    let end = needles[needles.len() - 1].0 + needles[needles.len() - 1].1;
    for cut in start..end {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["volume-0000000001.data", "volume-0000000001.index"] {
            std::fs::copy(template.path().join(name), dir.path().join(name)).expect("copy");
        }
        check_cut(dir.path(), &needles, cut, index);
    }
}

#[test]
fn torn_tail_with_a_lagging_index() {
    run(Index::Lags);
}

#[test]
fn torn_tail_rebuilding_the_index() {
    run(Index::Gone);
}

#[test]
fn cut_acknowledged_needles_refuse_to_open() {
    run(Index::NamesAll);
}

#[test]
fn garbage_index_tail_is_cut_and_rescanned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let needles = build(dir.path(), 4);
    let index_path = dir.path().join("volume-0000000001.index");
    let len = std::fs::metadata(&index_path).expect("meta").len();
    // Tear the last index record in half and append junk: the data scan restores it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&index_path)
        .expect("open");
    f.set_len(len - 16).expect("truncate");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 100], len - 16).expect("write");
    drop(f);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    for (i, (_, _, data)) in needles.iter().enumerate() {
        let key = i as u64 + 1;
        assert_eq!(&v.read_needle(key, key as u32).expect("read").data, data);
    }
}
