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
    writes: AtomicU64,
    /// While true, every `sync_data` waits (a sync held in flight).
    hold_syncs: parking_lot::Mutex<bool>,
    released: parking_lot::Condvar,
}

impl Faults {
    fn hold_syncs(&self) {
        *self.hold_syncs.lock() = true;
    }

    fn release_syncs(&self) {
        *self.hold_syncs.lock() = false;
        self.released.notify_all();
    }

    /// Waits (bounded) until `done` holds.
    fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::yield_now();
        }
    }

    /// Waits (bounded) until `count` writes have reached the storage.
    fn wait_for_writes(&self, count: u64) {
        self.wait_until(|f| f.writes.load(Ordering::SeqCst) >= count);
    }
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
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        // One needle, one write (the tests count needles by writes).
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_vectored_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        let mut held = self.faults.hold_syncs.lock();
        while *held {
            self.faults.released.wait(&mut held);
        }
        drop(held);
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
    // Eight needles written, none synced; one sync (held until all eight are
    // waiting) covers them all and fails: its leader gets the IO error, the
    // seven others `ReadOnly`, and none is published.
    let dir = tempfile::tempdir().expect("tempdir");
    let (v, faults) = faulty_volume(dir.path());
    faults.fail_sync.store(true, Ordering::SeqCst);
    faults.hold_syncs();
    let syncs_before = faults.syncs.load(Ordering::SeqCst);
    let pending: Vec<_> = (1..=8u64)
        .map(|key| v.write_needle(key, 1, "", b"x").expect("write"))
        .collect();
    let results = std::thread::scope(|scope| {
        let waiters: Vec<_> = pending
            .into_iter()
            .map(|p| scope.spawn(move || p.wait()))
            .collect();
        // Every waiter is queued behind the held sync before it returns.
        while faults.syncs.load(Ordering::SeqCst) == syncs_before {
            std::thread::yield_now();
        }
        faults.release_syncs();
        waiters
            .into_iter()
            .map(|w| w.join().expect("thread"))
            .collect::<Vec<_>>()
    });
    let io = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Io(_))))
        .count();
    let read_only = results
        .iter()
        .filter(|r| matches!(r, Err(Error::ReadOnly { volume: 1 })))
        .count();
    assert_eq!((io, read_only), (1, 7), "{results:?}");
    assert_eq!(faults.syncs.load(Ordering::SeqCst) - syncs_before, 1);
    assert_eq!(v.status().needle_count, 0);
    for key in 1..=8 {
        assert!(matches!(v.read_needle(key, 1), Err(Error::NotFound)));
    }
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
    // The first writer's sync is held in flight; then fifteen more write
    // their needles and wait. A group commit needs exactly one more sync for
    // all fifteen: two in all, every append acknowledged.
    let dir = tempfile::tempdir().expect("tempdir");
    let (v, faults) = faulty_volume(dir.path());
    let v = Arc::new(v);
    faults.hold_syncs();
    let syncs_before = faults.syncs.load(Ordering::SeqCst);
    let append = |key: u64| {
        let v = v.clone();
        std::thread::spawn(move || {
            let pending = v.write_needle(key, 1, "", &[0u8; 512]).expect("write");
            pending.wait().expect("append")
        })
    };
    let first = append(1);
    while faults.syncs.load(Ordering::SeqCst) == syncs_before {
        std::thread::yield_now();
    }
    // Keys are ordered by writing them one after the other; each waits
    // outside, behind the sync in flight.
    let writes_before = faults.writes.load(Ordering::SeqCst);
    let rest: Vec<_> = (2..=16u64)
        .map(|key| {
            let handle = append(key);
            faults.wait_for_writes(writes_before + key - 1);
            handle
        })
        .collect();
    faults.release_syncs();
    first.join().expect("thread");
    for h in rest {
        h.join().expect("thread");
    }
    assert_eq!(
        faults.syncs.load(Ordering::SeqCst) - syncs_before,
        2,
        "the sync in flight, then one for every append that queued behind it"
    );
    assert_eq!(v.status().needle_count, 16);
}

#[test]
fn an_append_waiting_while_a_compaction_commits_is_acknowledged_at_its_new_offset() {
    // A needle is written, then a compaction that drops deleted needles (so
    // the new data file ends before the needle's old offset) leads its final
    // sync, held in flight. The needle's waiter queues behind that sync; the
    // compaction commits before the waiter gets the lock back. The waiter
    // must see the commit (the needle was synced by it) and answer the
    // needle's new offset, not wait for its old one forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let (v, faults) = faulty_volume(dir.path());
    let v = Arc::new(v);
    for key in 1..=20u64 {
        v.append_needle(key, 1, "", &[7u8; 2048]).expect("append");
    }
    for key in 1..=15u64 {
        v.delete_needle(key, 1).expect("delete");
    }
    // The waiter owns its thread, so that a waiter that never returns fails
    // this test (the receive times out) instead of hanging it.
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let (written_tx, written) = std::sync::mpsc::channel();
    let (done_tx, done) = std::sync::mpsc::channel();
    {
        let v = v.clone();
        std::thread::spawn(move || {
            let pending = v.write_needle(21, 1, "", b"moved").expect("write");
            let _ = written_tx.send(pending.outcome());
            if go.recv().is_ok() {
                let _ = done_tx.send(pending.wait());
            }
        });
    }
    let old = written.recv().expect("written");
    faults.hold_syncs();
    let syncs_before = faults.syncs.load(Ordering::SeqCst);
    let compaction = {
        let v = v.clone();
        std::thread::spawn(move || v.compact())
    };
    faults.wait_until(|f| f.syncs.load(Ordering::SeqCst) > syncs_before);
    go_tx.send(()).expect("waiter alive");
    // Give the waiter time to queue behind the held sync. (Should it be
    // late, it waits after the commit instead, which must work too.)
    std::thread::sleep(std::time::Duration::from_millis(200));
    faults.release_syncs();
    let new = done
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the waiter returns")
        .expect("acknowledged");
    assert!(new.offset < old.offset, "{old:?} -> {new:?}");
    assert_eq!(new.size_bytes, old.size_bytes);
    compaction.join().expect("thread").expect("compact");
    assert_eq!(v.read_needle(21, 1).expect("read").data, &b"moved"[..]);
}
