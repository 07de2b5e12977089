//! Flipped bits on disk are reported as corruption, never served.

use std::os::unix::fs::FileExt;

use haystack::{Error, Volume, VolumeOptions};

#[test]
fn every_bit_flip_in_a_needle_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    v.append_needle(1, 5, "", b"before").expect("append");
    let a = v
        .append_needle(2, 6, "image/png", b"the needle under test")
        .expect("append");
    v.append_needle(3, 7, "", b"after").expect("append");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v.data_path())
        .expect("open");
    for bit in 0..a.size_bytes * 8 {
        let at = a.offset + bit / 8;
        if bit / 8 == 16 && bit % 8 == 0 {
            continue; // the deleted flag: flipping it deletes the needle, tested below
        }
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).expect("read");
        file.write_all_at(&[b[0] ^ (1 << (bit % 8))], at)
            .expect("write");
        match v.read_needle(2, 6) {
            Err(Error::Corrupt {
                volume: 1, offset, ..
            }) => assert_eq!(offset, a.offset),
            other => panic!("bit {bit}: expected Corrupt, got {other:?}"),
        }
        file.write_all_at(&b, at).expect("restore");
    }
    assert_eq!(
        v.read_needle(2, 6).expect("restored").data,
        &b"the needle under test"[..]
    );
    file.write_all_at(&[1], a.offset + 16).expect("write");
    assert!(matches!(v.read_needle(2, 6), Err(Error::NotFound)));
    assert_eq!(v.read_needle(1, 5).expect("neighbour").data, &b"before"[..]);
    assert_eq!(v.read_needle(3, 7).expect("neighbour").data, &b"after"[..]);
}

#[test]
fn corrupt_superblock_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    let path = v.data_path();
    drop(v);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.write_all_at(&[0xff], 20).expect("write");
    assert!(matches!(
        Volume::open(dir.path(), 1, VolumeOptions::default()),
        Err(Error::Corrupt {
            volume: 1,
            offset: 0,
            ..
        })
    ));
}

/// Appends needles 1..=40 (key k holds `k` repeated), deletes 5, 17 and 33,
/// and closes the volume; returns the index file's path.
fn volume_with_deletes(dir: &std::path::Path) -> std::path::PathBuf {
    let v = Volume::create(dir, 1, VolumeOptions::default()).expect("create");
    for key in 1..=40u64 {
        v.append_needle(key, key as u32, "", &vec![key as u8; 100 + key as usize])
            .expect("append");
    }
    for key in [5, 17, 33] {
        v.delete_needle(key, key as u32).expect("delete");
    }
    v.index_path()
}

fn flip_byte(path: &std::path::Path, at: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).expect("read");
    file.write_all_at(&[b[0] ^ 0x01], at).expect("write");
}

#[test]
fn a_corrupt_record_in_the_middle_of_the_index_rebuilds_it_and_keeps_every_delete() {
    // Records: 40 puts, then 3 deletes, 32 bytes each after a 32-byte header.
    // Damage put record 10: every later record (puts and the three deletes)
    // would be lost if the index were only cut there.
    let dir = tempfile::tempdir().expect("tempdir");
    let index = volume_with_deletes(dir.path());
    let index_len = std::fs::metadata(&index).expect("stat").len();
    assert_eq!(index_len, 32 + 43 * 32);
    flip_byte(&index, 32 + 9 * 32 + 3);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    for key in 1..=40u64 {
        let read = v.read_needle(key, key as u32);
        if [5, 17, 33].contains(&key) {
            assert!(matches!(read, Err(Error::NotFound)), "{key}: {read:?}");
        } else {
            let needle = read.unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(needle.data, vec![key as u8; 100 + key as usize], "{key}");
        }
    }
    assert_eq!(v.deleted_keys(), vec![5, 17, 33]);
    let status = v.status();
    assert_eq!((status.needle_count, status.last_key), (37, Some(40)));
    drop(v);
    // The rebuilt index (40 puts carrying their deleted flags) is whole: a
    // second open trusts it as it is.
    let rebuilt_len = std::fs::metadata(&index).expect("stat").len();
    assert_eq!(rebuilt_len, 32 + 40 * 32);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen again");
    assert_eq!(v.deleted_keys(), vec![5, 17, 33]);
    assert_eq!(std::fs::metadata(&index).expect("stat").len(), rebuilt_len);
}

#[test]
fn damaged_data_inside_acknowledged_needles_refuses_to_open_and_cuts_nothing() {
    // The index is damaged in the middle and so is needle 20's data: the scan
    // that rebuilds the index meets needle 20, which valid later records say
    // was acknowledged. Cutting there would drop needles 20 to 40.
    let dir = tempfile::tempdir().expect("tempdir");
    let index = volume_with_deletes(dir.path());
    let data = dir.path().join("volume-0000000001.data");
    let data_len = std::fs::metadata(&data).expect("stat").len();
    flip_byte(&index, 32 + 9 * 32 + 3);
    let needle_20 = {
        let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("open");
        v.needle_entries(Some(19), 1)[0].offset
    };
    flip_byte(&index, 32 + 9 * 32 + 3);
    flip_byte(&data, needle_20 + 40);
    match Volume::open(dir.path(), 1, VolumeOptions::default()) {
        Err(Error::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, needle_20);
            assert!(reason.contains("not cutting"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(&data).expect("stat").len(), data_len);
}

#[test]
fn a_scrub_names_every_corrupt_needle_a_stretch_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    let mut placed = Vec::new();
    for key in 1..=10u64 {
        let data = vec![key as u8; 100 + key as usize];
        placed.push(v.append_needle(key, 9, "", &data).expect("append"));
    }
    v.delete_needle(4, 9).expect("delete");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v.data_path())
        .expect("open");
    // Keys 3 and 4 (a deleted one: still a replica's bytes) and 9.
    for key in [3u64, 4, 9] {
        let at = placed[key as usize - 1].offset + 40;
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).expect("read");
        file.write_all_at(&[b[0] ^ 0x10], at).expect("write");
    }
    let mut corrupt = Vec::new();
    let mut after = None;
    let mut stretches = 0;
    loop {
        let page = v.scrub_needles(after, u64::MAX, 4);
        stretches += 1;
        assert!(page.checked <= 4);
        corrupt.extend(page.corrupt);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(corrupt, vec![3, 4, 9]);
    assert_eq!(stretches, 3, "10 needles, 4 at a time");
    // A byte budget ends a stretch too (after at least one needle).
    let page = v.scrub_needles(None, 1, 4096);
    assert_eq!((page.checked, page.next_after), (1, Some(1)));
    let whole = v.scrub_needles(None, u64::MAX, 4096);
    assert_eq!((whole.checked, whole.next_after), (10, None));
    assert_eq!(
        whole.bytes,
        placed.iter().map(|p| p.size_bytes).sum::<u64>()
    );
}

/// The cookie sits in the header, which only the needle's checksum covers:
/// a delete that meets a damaged one answers that the needle is corrupt,
/// never that a wrong cookie found nothing (the replica would take no
/// delete of a live BLOB, and nobody would know it missed it).
#[test]
fn a_delete_meeting_a_damaged_cookie_finds_the_needle_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    let a = v
        .append_needle(2, 6, "image/png", b"the needle under test")
        .expect("append");
    // Intact: another cookie is not found.
    assert!(matches!(v.delete_needle(2, 7), Err(Error::NotFound)));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v.data_path())
        .expect("open");
    // Cookie 6 becomes 7 on disk.
    file.write_all_at(&7u32.to_le_bytes(), a.offset + 4)
        .expect("write");
    // The BLOB's own cookie, 6, meets a header that says 7.
    assert!(matches!(v.delete_needle(2, 6), Err(Error::Corrupt { .. })));
    assert!(matches!(v.read_needle(2, 6), Err(Error::Corrupt { .. })));
    file.write_all_at(&6u32.to_le_bytes(), a.offset + 4)
        .expect("restore");
    v.delete_needle(2, 6).expect("delete once restored");
    assert!(matches!(v.read_needle(2, 6), Err(Error::NotFound)));
}
