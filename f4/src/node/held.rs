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

    /// What `volume`'s index and journal say of `key`.
    pub(crate) fn lookup(&self, volume: u32, generation: u64, key: u64) -> Result<Option<Lookup>> {
        let Some(held) = self.get(volume, generation)? else {
            return Ok(None);
        };
        lookup_in(&held, key).map(Some)
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
        let held = held.try_lock()?;
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
        let Some(held) = self.get(volume, generation)? else {
            return Ok(None);
        };
        let mut held = held.lock();
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
                    // The tombstone is synced: the delete stands. But the
                    // fold may have got past its rename, leaving the index
                    // in memory older than the journal: forget the volume,
                    // so that the next use reopens both from disk.
                    tracing::error!(volume, generation, error = %error, "journal fold failed");
                    drop(held);
                    self.open.lock().remove(&(volume, generation));
                }
            }
        }
        Ok(Some(written))
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
        let Some(held) = self.get(volume, generation)? else {
            return Ok(None);
        };
        let held = held.lock();
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
        Ok(Some(LivePage {
            entries,
            next_after,
        }))
    }

    /// What this node holds of `volume`'s `generation`.
    pub(crate) fn describe(&self, volume: u32, generation: u64) -> Result<Option<HeldVolume>> {
        let Some(held) = self.get(volume, generation)? else {
            return Ok(None);
        };
        let held = held.lock();
        let file_bytes = std::fs::metadata(&held.index_path)?.len()
            + std::fs::metadata(held.journal.path())?.len();
        Ok(Some(HeldVolume {
            volume,
            generation,
            index_entries: held.index.header().entry_count,
            tombstones: held.journal.len() as u64,
            file_bytes,
        }))
    }
}

/// What `held`'s journal and index say of `key`.
fn lookup_in(held: &Mutex<Held>, key: u64) -> Result<Lookup> {
    lookup_held(&held.lock(), key)
}

fn lookup_held(held: &Held, key: u64) -> Result<Lookup> {
    if held.journal.is_deleted(key) {
        return Ok(Lookup::Deleted);
    }
    Ok(match held.index.get(key)? {
        Some(entry) => Lookup::Live(entry),
        None => Lookup::Missing,
    })
}
