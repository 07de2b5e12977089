//! Volume and store behaviour through the public API: append, read, delete, lock, key
//! order, size limit, reopen, group commit under concurrency, store install.

use std::sync::Arc;

use haystack::{Error, Store, Volume, VolumeOptions};

fn opts() -> VolumeOptions {
    VolumeOptions::default()
}

#[test]
fn append_read_delete_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 7, opts()).expect("create");
    assert!(matches!(
        Volume::create(dir.path(), 7, opts()),
        Err(Error::VolumeExists { volume: 7 })
    ));
    let a = v
        .append_needle(1, 11, "text/plain", b"one")
        .expect("append");
    assert_eq!(a.offset, 64);
    assert_eq!(a.size_bytes % 8, 0);
    let b = v.append_needle(5, 55, "", &[7u8; 5000]).expect("append");
    assert_eq!(b.offset, a.offset + a.size_bytes);
    let n = v.read_needle(1, 11).expect("read");
    assert_eq!(
        (n.key, n.cookie, n.content_type.as_str()),
        (1, 11, "text/plain")
    );
    assert_eq!(n.data, &b"one"[..]);
    assert_eq!(n.crc32, crc32fast::hash(b"one"));
    assert!(matches!(v.read_needle(1, 12), Err(Error::NotFound)));
    assert!(matches!(v.read_needle(2, 11), Err(Error::NotFound)));
    assert!(matches!(
        v.append_needle(5, 1, "", b"x"),
        Err(Error::KeyOutOfOrder {
            volume: 7,
            key: 5,
            last_key: 5
        })
    ));
    assert!(matches!(v.delete_needle(1, 12), Err(Error::NotFound)));
    v.delete_needle(1, 11).expect("delete");
    assert!(matches!(v.read_needle(1, 11), Err(Error::NotFound)));
    assert!(matches!(v.delete_needle(1, 11), Err(Error::NotFound)));
    let s = v.status();
    assert_eq!(s.needle_count, 1);
    assert_eq!(s.deleted_bytes, a.size_bytes);
    assert_eq!(s.live_bytes, b.size_bytes);
    assert_eq!(s.last_key, Some(5));
    assert_eq!(s.size_bytes, b.offset + b.size_bytes);
    assert_eq!(v.deleted_keys(), vec![1]);
    drop(v);
    let v = Volume::open(dir.path(), 7, opts()).expect("reopen");
    assert_eq!(v.status(), s);
    assert!(matches!(v.read_needle(1, 11), Err(Error::NotFound)));
    assert_eq!(v.read_needle(5, 55).expect("read").data, vec![7u8; 5000]);
    assert!(matches!(
        Volume::open(dir.path(), 8, opts()),
        Err(Error::UnknownVolume { volume: 8 })
    ));
}

#[test]
fn lock_is_persistent_and_deletes_still_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, opts()).expect("create");
    v.append_needle(1, 1, "", b"a").expect("append");
    v.append_needle(2, 2, "", b"b").expect("append");
    v.lock().expect("lock");
    assert!(matches!(
        v.append_needle(3, 3, "", b"c"),
        Err(Error::ReadOnly { volume: 1 })
    ));
    drop(v);
    let v = Volume::open(dir.path(), 1, opts()).expect("reopen");
    let s = v.status();
    assert!(s.locked && s.read_only);
    assert!(matches!(
        v.append_needle(3, 3, "", b"c"),
        Err(Error::ReadOnly { .. })
    ));
    v.delete_needle(1, 1).expect("delete on a locked volume");
    assert_eq!(v.read_needle(2, 2).expect("read").data, &b"b"[..]);
}

/// A needle written before the lock, whose writer has not waited for its
/// sync yet, is published by the time the lock answers: a copy of the
/// locked volume (a resync's) then holds every needle that will be
/// acknowledged.
#[test]
fn a_lock_answers_once_the_needles_written_before_it_are_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, opts()).expect("create");
    v.append_needle(1, 1, "", b"a").expect("append");
    let pending = v.write_needle(2, 2, "", b"b").expect("write");
    assert!(matches!(v.read_needle(2, 2), Err(Error::NotFound)));
    v.lock().expect("lock");
    assert_eq!(v.read_needle(2, 2).expect("published").data, &b"b"[..]);
    assert_eq!(v.status().needle_count, 2);
    pending.wait().expect("acknowledged");
    v.lock().expect("locked already");
}

#[test]
fn size_limit_locks_the_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = VolumeOptions {
        size_limit_bytes: 64 + 3 * 1064,
    };
    let v = Volume::create(dir.path(), 2, o.clone()).expect("create");
    assert!(matches!(
        v.append_needle(1, 1, "", &[0u8; 4000]),
        Err(Error::InvalidInput(_))
    ));
    for k in 1..=2 {
        v.append_needle(k, 1, "", &[1u8; 1024]).expect("fits");
    }
    assert!(matches!(
        v.append_needle(3, 1, "", &[1u8; 2000]),
        Err(Error::VolumeFull { volume: 2 })
    ));
    assert!(v.status().locked);
    assert!(matches!(
        v.append_needle(4, 1, "", b"x"),
        Err(Error::ReadOnly { .. })
    ));
    drop(v);
    assert!(
        Volume::open(dir.path(), 2, o)
            .expect("reopen")
            .status()
            .locked
    );
}

#[test]
fn content_type_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 3, opts()).expect("create");
    let long = "x".repeat(256);
    assert!(matches!(
        v.append_needle(1, 1, &long, b""),
        Err(Error::InvalidInput(_))
    ));
    let ok = "y".repeat(255);
    v.append_needle(1, 1, &ok, b"").expect("255 bytes fit");
    assert_eq!(v.read_needle(1, 1).expect("read").content_type, ok);
}

#[test]
fn concurrent_appends_share_syncs_and_all_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Arc::new(Volume::create(dir.path(), 4, opts()).expect("create"));
    let next = Arc::new(parking_lot::Mutex::new(0u64));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let v = v.clone();
            let next = next.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..50u32 {
                    // Keys are ordered under the caller's lock; the sync happens outside
                    // it through group commit.
                    let mut g = next.lock();
                    *g += 1;
                    let key = *g;
                    let data = vec![(t as u8) ^ (i as u8); 100 + i as usize];
                    let pending = v.write_needle(key, t, "", &data).expect("write");
                    drop(g);
                    pending.wait().expect("append");
                    mine.push((key, t, data));
                }
                mine
            })
        })
        .collect();
    let all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(all.len(), 800);
    for (k, c, d) in &all {
        assert_eq!(&v.read_needle(*k, *c).expect("read").data, d);
    }
    drop(v);
    let v = Volume::open(dir.path(), 4, opts()).expect("reopen");
    for (k, c, d) in &all {
        assert_eq!(&v.read_needle(*k, *c).expect("read").data, d);
    }
}

#[test]
fn store_create_open_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), opts()).expect("open");
    let v = store.create_volume(1).expect("create");
    assert!(matches!(
        store.create_volume(1),
        Err(Error::VolumeExists { volume: 1 })
    ));
    assert!(matches!(
        store.volume(9),
        Err(Error::UnknownVolume { volume: 9 })
    ));
    v.append_needle(10, 1, "", b"old").expect("append");
    store.create_volume(2).expect("create");
    drop(v);
    drop(store);
    let store = Store::open(dir.path(), opts()).expect("reopen");
    assert_eq!(
        store.volumes().iter().map(|v| v.id()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        store
            .volume(1)
            .expect("v1")
            .read_needle(10, 1)
            .expect("read")
            .data,
        &b"old"[..]
    );

    // A peer replica of volume 1 with more needles, copied through the staging paths.
    let peer_dir = tempfile::tempdir().expect("tempdir");
    let peer = Volume::create(peer_dir.path(), 1, opts()).expect("peer");
    peer.append_needle(10, 1, "", b"new").expect("append");
    peer.append_needle(11, 1, "", b"newer").expect("append");
    peer.delete_needle(10, 1).expect("delete");
    peer.lock().expect("lock");
    let (sd, si) = store.staging_paths(1);
    std::fs::copy(peer.data_path(), &sd).expect("copy data");
    std::fs::copy(peer.index_path(), &si).expect("copy index");
    let old = store.volume(1).expect("v1");
    let v = store.install_volume(1).expect("install");
    assert!(matches!(
        old.append_needle(20, 1, "", b"x"),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(v.read_needle(10, 1), Err(Error::NotFound)));
    assert_eq!(v.read_needle(11, 1).expect("read").data, &b"newer"[..]);
    assert_eq!(v.status(), peer.status());
    assert!(!sd.exists() && !si.exists());
    assert!(matches!(
        store.install_volume(1),
        Err(Error::InvalidInput(_))
    ));
    // Staged garbage is refused and the installed volume stays.
    std::fs::write(&sd, b"not a volume").expect("write");
    assert!(matches!(
        store.install_volume(1),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(
        store
            .volume(1)
            .expect("v1")
            .read_needle(11, 1)
            .expect("read")
            .data,
        &b"newer"[..]
    );
}

#[test]
fn a_lost_index_is_rebuilt_with_deletes_from_the_needle_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 5, opts()).expect("create");
    for k in 1..=10 {
        v.append_needle(k, 1, "", &[k as u8; 100]).expect("append");
    }
    for k in [2, 5, 10] {
        v.delete_needle(k, 1).expect("delete");
    }
    let status = v.status();
    let index = v.index_path();
    drop(v);
    std::fs::remove_file(&index).expect("remove index");
    let v = Volume::open(dir.path(), 5, opts()).expect("reopen");
    assert_eq!(v.status(), status);
    assert_eq!(v.deleted_keys(), vec![2, 5, 10]);
    assert!(matches!(v.read_needle(5, 1), Err(Error::NotFound)));
    assert_eq!(v.read_needle(6, 1).expect("live").data, vec![6u8; 100]);
}
