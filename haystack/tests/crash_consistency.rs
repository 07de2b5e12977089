//! Crash consistency under concurrency. A backend "crashes" at a random moment: from then on
//! every write and sync fails, and afterwards each file keeps its synced prefix plus a random
//! part of what was written after its last sync (a torn tail). After reopening, every
//! acknowledged append reads back byte for byte and every acknowledged delete stays deleted.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use haystack::file::FileBackend;
use haystack::{Error, Storage, StorageBackend, Volume, VolumeOptions};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Default)]
struct CrashState {
    crashed: AtomicBool,
    /// Length of each file covered by its last successful sync.
    synced_len: Mutex<HashMap<PathBuf, u64>>,
}

struct CrashStorage {
    path: PathBuf,
    inner: Arc<dyn Storage>,
    state: Arc<CrashState>,
}

fn dead() -> io::Error {
    io::Error::other("crashed")
}

impl Storage for CrashStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.state.crashed.load(Ordering::SeqCst) {
            return Err(dead());
        }
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        if self.state.crashed.load(Ordering::SeqCst) {
            return Err(dead());
        }
        self.inner.write_vectored_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        let len = self.inner.len()?;
        if self.state.crashed.load(Ordering::SeqCst) {
            return Err(dead());
        }
        self.inner.sync_data()?;
        let mut synced = self.state.synced_len.lock();
        let e = synced.entry(self.path.clone()).or_default();
        *e = (*e).max(len);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.state.crashed.load(Ordering::SeqCst) {
            return Err(dead());
        }
        self.inner.set_len(len)?;
        // Recovery cuts a torn tail and syncs; a shorter file is the new synced length.
        let mut synced = self.state.synced_len.lock();
        if let Some(e) = synced.get_mut(&self.path) {
            *e = (*e).min(len);
        }
        Ok(())
    }
}

struct CrashBackend(Arc<CrashState>);

impl StorageBackend for CrashBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn Storage>> {
        let inner = FileBackend.open(path, create)?;
        self.0
            .synced_len
            .lock()
            .entry(path.to_path_buf())
            .or_insert(inner.len()?);
        Ok(Arc::new(CrashStorage {
            path: path.to_path_buf(),
            inner,
            state: self.0.clone(),
        }))
    }
}

type Acked = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

fn run_once(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(CrashState::default());
    let v = Arc::new(
        Volume::create_with_backend(
            dir.path(),
            1,
            VolumeOptions::default(),
            Arc::new(CrashBackend(state.clone())),
        )
        .expect("create"),
    );
    // Acknowledged appends (key -> data) and acknowledged deletes.
    let acked: Acked = Arc::default();
    let deleted: Arc<Mutex<std::collections::HashSet<u64>>> = Arc::default();
    let attempted: Arc<Mutex<std::collections::HashSet<u64>>> = Arc::default();
    let next = Arc::new(Mutex::new(0u64));
    let writers: Vec<_> = (0..6)
        .map(|t| {
            let (v, acked, next) = (v.clone(), acked.clone(), next.clone());
            let (deleted, attempted) = (deleted.clone(), attempted.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed * 100 + t);
                loop {
                    let mut g = next.lock();
                    *g += 1;
                    let key = *g;
                    let data: Vec<u8> = (0..rng.random_range(0..3000))
                        .map(|_| rng.random())
                        .collect();
                    let pending = v.write_needle(key, key as u32, "", &data);
                    drop(g);
                    let Ok(pending) = pending else { return };
                    if pending.wait().is_err() {
                        return;
                    }
                    acked.lock().insert(key, data);
                    if rng.random_range(0..5) == 0 {
                        let victim = rng.random_range(1..=key);
                        // An unacknowledged delete may or may not take effect.
                        attempted.lock().insert(victim);
                        match v.delete_needle(victim, victim as u32) {
                            Ok(()) => {
                                deleted.lock().insert(victim);
                            }
                            Err(Error::NotFound) => {}
                            Err(_) => return,
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(rng.random_range(5..60)));
    state.crashed.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    drop(v);
    // Lose a random part of everything written after each file's last sync.
    for (path, synced) in state.synced_len.lock().iter() {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if meta.len() > *synced {
            let keep = rng.random_range(*synced..=meta.len());
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open");
            f.set_len(keep).expect("truncate");
        }
    }
    let v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen after crash");
    let acked = acked.lock();
    assert!(!acked.is_empty(), "seed {seed}: nothing was acknowledged");
    let deleted = deleted.lock();
    for (key, data) in acked.iter() {
        let got = v.read_needle(*key, *key as u32);
        if deleted.contains(key) {
            assert!(
                matches!(got, Err(Error::NotFound)),
                "seed {seed} key {key}: deleted, got {got:?}"
            );
        } else if attempted.lock().contains(key) {
            // An unacknowledged delete may have reached the disk.
            assert!(
                matches!(&got, Err(Error::NotFound)) || got.as_ref().is_ok_and(|n| n.data == data)
            );
        } else {
            if got.is_err() {
                let mut keys: Vec<_> = acked.keys().copied().collect();
                keys.sort();
                let missing: Vec<_> = keys
                    .iter()
                    .filter(|k| v.read_needle(**k, **k as u32).is_err())
                    .collect();
                panic!(
                    "seed {seed} key {key}: {got:?}; status {:?}; acked {} keys up to {:?}; \
                     missing {missing:?}; deleted {:?} attempted {:?}",
                    v.status(),
                    keys.len(),
                    keys.last(),
                    deleted,
                    attempted.lock()
                );
            }
            assert_eq!(
                &got.expect("acknowledged needle").data,
                data,
                "seed {seed} key {key}"
            );
        }
    }
    for key in deleted.iter() {
        assert!(matches!(
            v.read_needle(*key, *key as u32),
            Err(Error::NotFound)
        ));
    }
    let next_key = v.status().last_key.unwrap_or(0) + 1;
    v.append_needle(next_key, 1, "", b"after the crash")
        .expect("append after recovery");
}

#[test]
fn acknowledged_writes_survive_a_crash_at_a_random_moment() {
    for seed in 1..=12 {
        run_once(seed);
    }
}
