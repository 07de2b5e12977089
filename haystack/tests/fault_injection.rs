//! Fault injection through the storage seam: a failed `fdatasync` turns the volume
//! read-only for good (never retried and trusted), and a read costs one positioned read.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use haystack::file::FileBackend;
use haystack::{Error, Storage, StorageBackend, Volume, VolumeOptions};

#[derive(Default)]
struct Faults {
    fail_sync: AtomicBool,
    syncs: AtomicU64,
    reads: AtomicU64,
}

struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Faults>,
}

impl Storage for FaultyStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.faults.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO"));
        }
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

struct FaultyBackend(Arc<Faults>);

impl StorageBackend for FaultyBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(FaultyStorage {
            inner: FileBackend.open(path, create)?,
            faults: self.0.clone(),
        }))
    }
}

fn faulty_volume(dir: &Path) -> (Volume, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let backend = Arc::new(FaultyBackend(faults.clone()));
    let v = Volume::create_with_backend(dir, 1, VolumeOptions::default(), backend).expect("create");
    (v, faults)
}

#[test]
fn failed_sync_turns_the_volume_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (v, faults) = faulty_volume(dir.path());
    v.append_needle(1, 1, "", b"durable").expect("append");
    faults.fail_sync.store(true, Ordering::SeqCst);
    assert!(matches!(
        v.append_needle(2, 1, "", b"lost"),
        Err(Error::Io(_))
    ));
    // Even with the disk healthy again, the volume never trusts a retried sync.
    faults.fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(
        v.append_needle(3, 1, "", b"x"),
        Err(Error::ReadOnly { volume: 1 })
    ));
    assert!(matches!(
        v.delete_needle(1, 1),
        Err(Error::ReadOnly { volume: 1 })
    ));
    assert!(matches!(v.compact(), Err(Error::ReadOnly { volume: 1 })));
    let s = v.status();
    assert!(s.read_only && !s.locked);
    assert_eq!(s.last_key, Some(1));
    // The unacknowledged needle was never published.
    assert!(matches!(v.read_needle(2, 1), Err(Error::NotFound)));
    assert_eq!(v.read_needle(1, 1).expect("read").data, &b"durable"[..]);
    drop(v);
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
    assert!(!v.status().read_only);
    assert_eq!(v.read_needle(1, 1).expect("read").data, &b"durable"[..]);
}

#[test]
fn failed_sync_fails_every_waiter_of_the_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (v, faults) = faulty_volume(dir.path());
    let v = Arc::new(v);
    faults.fail_sync.store(true, Ordering::SeqCst);
    let next = Arc::new(parking_lot::Mutex::new(0u64));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (v, next) = (v.clone(), next.clone());
            std::thread::spawn(move || {
                let mut g = next.lock();
                *g += 1;
                let key = *g;
                drop(g);
                v.append_needle(key, 1, "", b"x")
            })
        })
        .collect();
    for h in handles {
        let r = h.join().expect("thread");
        assert!(
            matches!(
                r,
                Err(Error::Io(_)) | Err(Error::ReadOnly { .. }) | Err(Error::KeyOutOfOrder { .. })
            ),
            "{r:?}"
        );
    }
    assert_eq!(v.status().needle_count, 0);
}

#[test]
fn a_read_is_one_positioned_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (v, faults) = faulty_volume(dir.path());
    for k in 1..=100u64 {
        v.append_needle(k, 3, "", &vec![k as u8; 1000 + k as usize])
            .expect("append");
    }
    let before = faults.reads.load(Ordering::SeqCst);
    for k in 1..=100u64 {
        v.read_needle(k, 3).expect("read");
    }
    assert_eq!(faults.reads.load(Ordering::SeqCst) - before, 100);
}

#[test]
fn group_commit_shares_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (v, faults) = faulty_volume(dir.path());
    let v = Arc::new(v);
    let next = Arc::new(parking_lot::Mutex::new(0u64));
    let before = faults.syncs.load(Ordering::SeqCst);
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (v, next) = (v.clone(), next.clone());
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let mut g = next.lock();
                    *g += 1;
                    let key = *g;
                    // Order keys under the caller's lock, wait for durability outside it.
                    let pending = v.write_needle(key, 1, "", &[0u8; 512]).expect("write");
                    drop(g);
                    pending.wait().expect("append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let syncs = faults.syncs.load(Ordering::SeqCst) - before;
    assert!(
        syncs < 320,
        "{syncs} syncs for 320 appends: no group commit"
    );
}
