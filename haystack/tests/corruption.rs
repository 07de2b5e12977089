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
