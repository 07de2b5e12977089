//! The warm volumes a storage node is a journal holder of: each one's index
//! (memory-mapped) and journal, opened on first use and kept open.
//!
//! An index is installed once per encode generation and never replaced: a
//! holder's index may have been folded (deleted keys dropped, journal cut),
//! and replacing it with the sealed one would bring those deletes back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::api::{HeldVolume, LivePage};
use crate::error::Result;
use crate::index::WarmIndex;
use crate::journal::Journal;
use haystack::file::durable_rename;

/// The index file of `volume`'s generation `generation`.
pub(crate) fn index_file_name(volume: u32, generation: u64) -> String {
    format!(
        "{}.index",
        crate::block::generation_prefix(volume, generation)
    )
}

fn journal_file_name(volume: u32, generation: u64) -> String {
    format!(
        "{}.journal",
        crate::block::generation_prefix(volume, generation)
    )
}

/// One held volume, open.
pub(crate) struct Held {
    index: WarmIndex,
    journal: Journal,
    index_path: PathBuf,
    /// Forgotten after a failed fold (its index and journal in memory may
    /// no longer match the files): a request that got it before is to get
    /// the volume again, reopened from its files, rather than append to
    /// this journal beside the reopened one.
    retired: bool,
}

/// What the index and journal say of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Live, here.
    Live(crate::format::IndexEntry),
    /// Tombstoned.
    Deleted,
    /// Not in the index (never sealed, or folded away once deleted).
    Missing,
}

/// A held volume, shared by the requests that use it.
type Shared = Arc<Mutex<Held>>;

/// The held volumes of one node.
pub(crate) struct HeldVolumes {
    dir: PathBuf,
    fold_tombstones: usize,
    /// Open volumes; held only for map operations, never across file IO
    /// (lookups on async tasks take it).
    open: Mutex<HashMap<(u32, u64), Shared>>,
    /// Serialises opening and installing index and journal files (blocking
    /// threads only), so that two requests never both create a journal or
    /// both install an index.
    files: Mutex<()>,
}

impl HeldVolumes {
    pub(crate) fn new(dir: PathBuf, fold_tombstones: usize) -> HeldVolumes {
        HeldVolumes {
            dir,
            fold_tombstones,
            open: Mutex::new(HashMap::new()),
            files: Mutex::new(()),
        }
    }

    /// The path of the index file of `volume`'s `generation`.
    pub(crate) fn index_path(&self, volume: u32, generation: u64) -> PathBuf {
        self.dir.join(index_file_name(volume, generation))
    }

    /// The held volume, opened from its files if need be; `None` if this
    /// node holds no index of it.
    pub(crate) fn get(&self, volume: u32, generation: u64) -> Result<Option<Shared>> {
        if let Some(held) = self.open.lock().get(&(volume, generation)) {
            return Ok(Some(held.clone()));
        }
        let _files = self.files.lock();
        self.open_files(volume, generation)
    }

    /// Opens `volume`'s files (the caller holds `files`); `None` if there
    /// is no index.
    fn open_files(&self, volume: u32, generation: u64) -> Result<Option<Shared>> {
        if let Some(held) = self.open.lock().get(&(volume, generation)) {
            return Ok(Some(held.clone()));
        }
        let index_path = self.index_path(volume, generation);
        if !index_path.try_exists()? {
            return Ok(None);
        }
        let index = WarmIndex::open(&index_path, volume, generation)?;
        let journal_path = self.dir.join(journal_file_name(volume, generation));
        let journal = if journal_path.try_exists()? {
            Journal::open(&journal_path, volume, generation)?
        } else {
            // Installed, then crashed before the journal was made: no
            // delete can have been acknowledged by this holder yet.
            Journal::create(&journal_path, volume, generation)?
        };
        let held = Arc::new(Mutex::new(Held {
            index,
            journal,
            index_path,
            retired: false,
        }));
        self.open.lock().insert((volume, generation), held.clone());
        Ok(Some(held))
    }

    /// Installs the index file at `tmp` (checked whole: header, every
    /// entry, order) as `volume`'s of `generation`, with an empty journal.
    /// If this node already holds that index, `tmp` is dropped and the held
    /// one (perhaps folded) is kept. Returns whether it was installed. The
    /// check and the rename happen under one lock: two installs never both
    /// pass the check, so a folded index is never replaced.
    pub(crate) fn install(&self, volume: u32, generation: u64, tmp: &Path) -> Result<bool> {
        let _files = self.files.lock();
        if self.open_files(volume, generation)?.is_some() {
            std::fs::remove_file(tmp)?;
            return Ok(false);
        }
        let checked = WarmIndex::open(tmp, volume, generation).and_then(|i| i.check_all());
        if let Err(error) = checked {
            std::fs::remove_file(tmp)?;
            return Err(error);
        }
        durable_rename(&self.dir, tmp, &self.index_path(volume, generation))?;
        self.open_files(volume, generation)?;
        Ok(true)
    }

    /// Runs `f` on `volume`'s held files under their lock; `None` if this
    /// node holds no index of it. A volume retired meanwhile (see
    /// [`Held::retired`]) is got again.
    fn with_held<T>(
        &self,
        volume: u32,
        generation: u64,
        f: impl FnOnce(&mut Held) -> Result<T>,
    ) -> Result<Option<T>> {
        loop {
            let Some(shared) = self.get(volume, generation)? else {
                return Ok(None);
            };
            let mut held = shared.lock();
            if !held.retired {
                return f(&mut held).map(Some);
            }
        }
    }

    /// What `volume`'s index and journal say of `key`.
    pub(crate) fn lookup(&self, volume: u32, generation: u64, key: u64) -> Result<Option<Lookup>> {
        self.with_held(volume, generation, |held| lookup_held(held, key))
    }

    /// [`HeldVolumes::lookup`] if the volume is open already (its index
    /// mapped: the lookup reads memory) and not busy (a tombstone being
    /// synced holds it), else `None`: for a caller on an async task, which
    /// must not wait for a file.
    pub(crate) fn lookup_if_open(
        &self,
        volume: u32,
        generation: u64,
        key: u64,
    ) -> Option<Result<Lookup>> {
        let held = self.open.lock().get(&(volume, generation))?.clone();
        let held = held.try_lock().filter(|held| !held.retired)?;
        Some(lookup_held(&held, key))
    }

    /// Appends and syncs the tombstones of `keys`, but for those not live
    /// here (absent from the index, or already tombstoned). Folds the
    /// journal once it holds `fold_tombstones`. `None` if the volume is not
    /// held; else how many tombstones were written.
    pub(crate) fn delete(
        &self,
        volume: u32,
        generation: u64,
        keys: &[u64],
        deleted_ms: u64,
    ) -> Result<Option<usize>> {
        self.with_held(volume, generation, |held| {
            let mut live = Vec::with_capacity(keys.len());
            for &key in keys {
                if !held.journal.is_deleted(key) && held.index.get(key)?.is_some() {
                    live.push(key);
                }
            }
            let written = held.journal.append_all(&live, deleted_ms)?;
            if held.journal.len() >= self.fold_tombstones {
                let Held {
                    journal,
                    index_path,
                    ..
                } = &mut *held;
                match journal.fold(index_path) {
                    Ok(folded) => held.index = folded,
                    Err(error) => {
                        // The tombstones are synced: the delete stands. But
                        // the fold may have got past its rename, leaving
                        // the index in memory older than the journal:
                        // forget the volume, so that the next use reopens
                        // both from disk, and retire it, so that a request
                        // already holding it does so too. Forgotten under
                        // its lock, so that no request takes it again.
                        tracing::error!(volume, generation, error = %error, "journal fold failed");
                        held.retired = true;
                        self.open.lock().remove(&(volume, generation));
                    }
                }
            }
            Ok(written)
        })
    }

    /// The index entries of up to `limit` live needles (in the index,
    /// without a tombstone) after key `after`.
    pub(crate) fn live_entries(
        &self,
        volume: u32,
        generation: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<LivePage>> {
        self.with_held(volume, generation, |held| live_in(held, after, limit))
    }

    /// What this node holds of `volume`'s `generation`.
    pub(crate) fn describe(&self, volume: u32, generation: u64) -> Result<Option<HeldVolume>> {
        self.with_held(volume, generation, |held| {
            let file_bytes = std::fs::metadata(&held.index_path)?.len()
                + std::fs::metadata(held.journal.path())?.len();
            Ok(HeldVolume {
                volume,
                generation,
                index_entries: held.index.header().entry_count,
                tombstones: held.journal.len() as u64,
                file_bytes,
            })
        })
    }
}

/// The index entries of up to `limit` live needles of `held` after key
/// `after`.
fn live_in(held: &Held, after: Option<u64>, limit: usize) -> Result<LivePage> {
    let count = held.index.header().entry_count;
    let mut at = held.index.first_after(after)?;
    let mut entries = Vec::new();
    while at < count && entries.len() < limit {
        let entry = held.index.entry(at)?;
        if !held.journal.is_deleted(entry.key) {
            entries.push(entry);
        }
        at += 1;
    }
    // After the last key looked at, live or not.
    let next_after = if at < count {
        Some(held.index.entry(at - 1)?.key)
    } else {
        None
    };
    Ok(LivePage {
        entries,
        next_after,
    })
}

/// What `held`'s journal and index say of `key`.
fn lookup_held(held: &Held, key: u64) -> Result<Lookup> {
    if held.journal.is_deleted(key) {
        return Ok(Lookup::Deleted);
    }
    Ok(match held.index.get(key)? {
        Some(entry) => Lookup::Live(entry),
        None => Lookup::Missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use haystack::{Volume, VolumeOptions};

    const VOLUME: u32 = 3;
    const GENERATION: u64 = 9;

    #[test]
    fn a_failed_fold_retires_the_volume_and_keeps_every_delete() {
        let dir = tempfile::tempdir().unwrap();
        let hot = dir.path().join("hot");
        let held_dir = dir.path().join("held");
        std::fs::create_dir(&hot).unwrap();
        std::fs::create_dir(&held_dir).unwrap();
        let v = Volume::create(&hot, VOLUME, VolumeOptions::default()).unwrap();
        for key in 1..=6 {
            v.append_needle(key, 7, "", &[key as u8; 100]).unwrap();
        }
        v.lock().unwrap();
        let sealed = held_dir.join("sealed.index");
        crate::seal::seal_live_needles(&v, GENERATION, &dir.path().join("data"), &sealed).unwrap();
        let volumes = HeldVolumes::new(held_dir.clone(), 2);
        assert!(volumes.install(VOLUME, GENERATION, &sealed).unwrap());
        // A request that holds the volume while another one deletes.
        let holding = volumes.get(VOLUME, GENERATION).unwrap().unwrap();
        // The fold cannot write its new index.
        let blocker = crate::seal::temporary(&volumes.index_path(VOLUME, GENERATION));
        std::fs::create_dir(&blocker).unwrap();
        assert_eq!(
            volumes.delete(VOLUME, GENERATION, &[1, 2], 1).unwrap(),
            Some(2)
        );
        assert!(holding.lock().retired, "the volume the fold failed on");
        std::fs::remove_dir(&blocker).unwrap();
        // Got again, from the files: the next delete folds all three.
        assert_eq!(
            volumes.delete(VOLUME, GENERATION, &[3], 2).unwrap(),
            Some(1)
        );
        let reopened = HeldVolumes::new(held_dir, 2);
        for held in [&volumes, &reopened] {
            for key in 1..=6 {
                let found = held.lookup(VOLUME, GENERATION, key).unwrap().unwrap();
                assert_eq!(
                    matches!(found, Lookup::Live(_)),
                    key > 3,
                    "key {key}: {found:?}"
                );
            }
            let page = held
                .live_entries(VOLUME, GENERATION, None, 10)
                .unwrap()
                .unwrap();
            assert_eq!(page.entries.len(), 3);
        }
    }
}
