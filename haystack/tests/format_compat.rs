//! Backward compatibility: a volume written by format version 1 is checked in under
//! `tests/data/format_v1/` and must always open and read. Regenerate it only together with a
//! format version bump (then keep the old sample too):
//! `HAYLOFT_WRITE_SAMPLE=haystack/tests/data/format_v1 \`
//! `cargo test -p haystack --test format_compat -- --ignored`

use std::path::{Path, PathBuf};

use haystack::{Error, Store, Volume, VolumeOptions};

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/format_v1")
}

fn copy_sample(to: &Path) {
    for entry in std::fs::read_dir(sample_dir()).expect("sample dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
#[ignore = "writes the checked-in sample; run only when adding a format version"]
fn write_sample() {
    let out =
        PathBuf::from(std::env::var_os("HAYLOFT_WRITE_SAMPLE").expect("HAYLOFT_WRITE_SAMPLE"));
    std::fs::create_dir_all(&out).expect("dir");
    let v = Volume::create(&out, 42, VolumeOptions::default()).expect("create");
    v.append_needle(1, 0x0102_0304, "text/plain", b"hello, haystack")
        .expect("append");
    v.append_needle(2, 0x0a0b_0c0d, "", b"deleted")
        .expect("append");
    v.append_needle(
        0x1_0000_0000,
        0xdead_beef,
        "application/octet-stream",
        &[0xa5; 100],
    )
    .expect("append");
    v.delete_needle(2, 0x0a0b_0c0d).expect("delete");
    v.lock().expect("lock");
}

#[test]
fn format_v1_sample_is_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_sample(dir.path());
    let v = Volume::open(dir.path(), 42, VolumeOptions::default()).expect("open v1 sample");
    let n = v.read_needle(1, 0x0102_0304).expect("needle 1");
    assert_eq!(
        (n.content_type.as_str(), &n.data[..]),
        ("text/plain", &b"hello, haystack"[..])
    );
    assert!(matches!(
        v.read_needle(2, 0x0a0b_0c0d),
        Err(Error::NotFound)
    ));
    let n = v.read_needle(0x1_0000_0000, 0xdead_beef).expect("needle 3");
    assert_eq!(n.data, vec![0xa5; 100]);
    let s = v.status();
    assert!(s.locked && s.read_only);
    assert_eq!((s.needle_count, s.last_key), (2, Some(0x1_0000_0000)));
    assert_eq!(v.deleted_keys(), vec![2]);
    // The sample also opens without its index (rebuilt by a scan) and through a store.
    drop(v);
    std::fs::remove_file(dir.path().join("volume-0000000042.index")).expect("rm index");
    let store = Store::open(dir.path(), VolumeOptions::default()).expect("store");
    let v = store.volume(42).expect("volume 42");
    assert_eq!(v.status(), s);
}

#[test]
fn store_leaves_out_a_volume_that_cannot_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_sample(dir.path());
    std::fs::write(dir.path().join("volume-0000000007.data"), b"garbage").expect("write");
    let store = Store::open(dir.path(), VolumeOptions::default()).expect("store opens");
    assert_eq!(
        store.volumes().iter().map(|v| v.id()).collect::<Vec<_>>(),
        vec![42]
    );
    assert!(matches!(
        store.volume(7),
        Err(Error::UnknownVolume { volume: 7 })
    ));
    assert!(matches!(
        store.create_volume(7),
        Err(Error::VolumeExists { volume: 7 })
    ));
    // The broken files are left for an operator (or a bulk sync) to replace.
    assert!(dir.path().join("volume-0000000007.data").exists());
}
