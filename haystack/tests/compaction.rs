//! Online compaction: drops deleted needles, keeps reads and deletes going meanwhile, and
//! survives a crash (or an error) at every step, checked with failpoints.

use std::sync::Arc;

use haystack::{Error, Volume, VolumeOptions};

mod common;

use common::{Model, check, fill};

#[test]
fn compaction_drops_deleted_needles_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    let mut model = Model::new();
    fill(&v, 1, 200, &mut model);
    for k in (1..199).step_by(3).chain([199]) {
        v.delete_needle(k, k as u32 ^ 0xabcd).expect("delete");
        model.remove(&k);
    }
    let before = v.status();
    let r = v.compact().expect("compact");
    assert_eq!(r.needles_kept, model.len() as u64);
    assert_eq!(r.size_bytes_after, 64 + before.live_bytes);
    let after = v.status();
    assert_eq!(after.deleted_bytes, 0);
    assert_eq!(after.live_bytes, before.live_bytes);
    assert_eq!(
        after.last_key,
        Some(199),
        "the last key survives its own deletion"
    );
    assert!(v.deleted_keys().is_empty());
    check(&v, &model, 200);
    assert!(matches!(
        v.append_needle(199, 1, "", b"x"),
        Err(Error::KeyOutOfOrder { .. })
    ));
    fill(&v, 200, 210, &mut model);
    drop(v);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    check(&v, &model, 210);
    assert_eq!(v.status().last_key, Some(209));
}

#[test]
fn reads_deletes_and_appends_continue_during_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Arc::new(Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create"));
    let mut model = Model::new();
    fill(&v, 1, 2000, &mut model);
    for k in (1..2000).step_by(2) {
        v.delete_needle(k, k as u32 ^ 0xabcd).expect("delete");
        model.remove(&k);
    }
    let model = Arc::new(parking_lot::Mutex::new(model));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (v, model, stop) = (v.clone(), model.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 2;
            let mut next = 2000;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || k < 400 {
                let entry = model.lock().get(&k).cloned();
                if let Some((c, d)) = entry {
                    assert_eq!(v.read_needle(k, c).expect("read during compaction").data, d);
                    if k % 4 == 0 {
                        v.delete_needle(k, c).expect("delete during compaction");
                        model.lock().remove(&k);
                    }
                }
                let data = vec![7u8; 100];
                v.append_needle(next, 1, "", &data)
                    .expect("append during compaction");
                model.lock().insert(next, (1, data));
                next += 1;
                k += 2;
            }
            next
        })
    };
    for _ in 0..3 {
        v.compact().expect("compact");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let next = worker.join().expect("worker");
    let model = model.lock().clone();
    let check_all = |v: &Volume| {
        for (k, (c, d)) in &model {
            assert_eq!(&v.read_needle(*k, *c).expect("live").data, d);
        }
        assert_eq!(v.status().needle_count, model.len() as u64);
    };
    check_all(&v);
    v.compact().expect("compact");
    check_all(&v);
    drop(v);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    check_all(&v);
    assert_eq!(v.status().last_key, Some(next - 1));
}

#[test]
fn lock_survives_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    let mut model = Model::new();
    fill(&v, 1, 10, &mut model);
    v.lock().expect("lock");
    v.delete_needle(3, 3 ^ 0xabcd).expect("delete");
    model.remove(&3);
    v.compact().expect("compact");
    assert!(v.status().locked);
    drop(v);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    assert!(v.status().locked);
    check(&v, &model, 10);
}

#[test]
fn compaction_syncs_an_append_nobody_waited_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    let mut model = Model::new();
    fill(&v, 1, 5, &mut model);
    v.delete_needle(1, 1 ^ 0xabcd).expect("delete");
    model.remove(&1);
    // Written, never waited for: compaction leads the sync that publishes it.
    drop(v.write_needle(5, 5 ^ 0xabcd, "", b"orphan").expect("write"));
    model.insert(5, (5 ^ 0xabcd, b"orphan".to_vec()));
    v.compact().expect("compact");
    assert_eq!(
        v.read_needle(5, 5 ^ 0xabcd)
            .expect("published by compaction")
            .data,
        &b"orphan"[..]
    );
    drop(v);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    assert_eq!(
        v.read_needle(5, 5 ^ 0xabcd).expect("durable").data,
        &b"orphan"[..]
    );
    check(&v, &model, 6);
}

#[test]
fn an_append_waited_for_after_a_compaction_moved_it_is_acknowledged() {
    // Written before a compaction that drops deleted needles (so the new data
    // file is shorter than the old offset), waited for after it committed:
    // the compaction synced it; the wait returns its offset in the new file
    // (it once waited for the old offset forever, syncing in a loop).
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Arc::new(Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create"));
    let mut model = Model::new();
    fill(&v, 1, 10, &mut model);
    for k in 1..5 {
        v.delete_needle(k, common::cookie(k)).expect("delete");
        model.remove(&k);
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = {
        let v = v.clone();
        std::thread::spawn(move || {
            let pending = v
                .write_needle(10, common::cookie(10), "", b"moved")
                .expect("write");
            let before = pending.outcome();
            v.compact().expect("compact");
            let _ = done_tx.send((before, pending.wait()));
        })
    };
    let (before, after) = done_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the wait after the compaction returns");
    waiter.join().expect("thread");
    let after = after.expect("acknowledged");
    assert!(after.offset < before.offset, "{before:?} -> {after:?}");
    assert_eq!(after.size_bytes, before.size_bytes);
    assert_eq!(
        v.read_needle(10, common::cookie(10)).expect("read").data,
        &b"moved"[..]
    );
    model.insert(10, (common::cookie(10), b"moved".to_vec()));
    let v = Arc::into_inner(v).expect("one owner");
    drop(v);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    check(&v, &model, 11);
}
