//! A warm volume's tombstone journal: deletes are appended and synced
//! before a delete is answered, every read consults it, and once it grows
//! past a threshold it is folded into the index.
//!
//! A fold writes a new index without the deleted keys (temporary name,
//! fsync, rename, directory fsync) and only then cuts the journal. A crash
//! before the rename leaves the old index and the whole journal; a crash
//! after it leaves tombstones for keys the index no longer has, which are
//! harmless. Either way, no delete comes back.
//!
//! A record cut short or failing its CRC at the journal's end is a torn
//! append that was never acknowledged (an append is answered only after its
//! fsync): opening the journal drops it. A bad record before the last one is
//! corruption, and opening refuses with a clear error.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, check_owner};
use crate::format::{
    INDEX_HEADER_SIZE, IndexHeader, JOURNAL_HEADER_SIZE, JournalHeader, TOMBSTONE_SIZE, Tombstone,
};
use crate::index::WarmIndex;
use crate::seal::{parent, temporary};
use haystack::file::durable_rename;

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    header: JournalHeader,
    /// Keys with a tombstone; bounded by the fold threshold the caller keeps.
    deleted: BTreeSet<u64>,
    /// Where the next tombstone goes.
    end: u64,
}

impl Journal {
    /// Creates an empty journal for `volume_id`'s generation `generation`,
    /// synced (file and directory). Refuses to replace an existing journal,
    /// whose tombstones would be lost.
    pub fn create(path: &Path, volume_id: u32, generation: u64) -> Result<Journal> {
        if path.try_exists()? {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists: a journal is never replaced", path.display()),
            )));
        }
        let header = JournalHeader {
            volume_id,
            generation,
        };
        JournalHeader::decode(&header.encode())?;
        let tmp = temporary(path);
        let file = File::create(&tmp)?;
        file.write_all_at(&header.encode(), 0)?;
        file.sync_all()?;
        durable_rename(parent(path), &tmp, path)?;
        Journal::open(path, volume_id, generation)
    }

    /// Opens the journal at `path`, which must be `volume_id`'s of
    /// generation `generation`; a torn last record is dropped.
    pub fn open(path: &Path, volume_id: u32, generation: u64) -> Result<Journal> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; JOURNAL_HEADER_SIZE];
        if len < JOURNAL_HEADER_SIZE as u64 {
            return Err(Error::corrupt(format!(
                "{} is {len} bytes, shorter than a journal header",
                path.display()
            )));
        }
        file.read_exact_at(&mut head, 0)?;
        let header = JournalHeader::decode(&head)?;
        check_owner(
            "journal",
            path,
            (header.volume_id, header.generation),
            (volume_id, generation),
        )?;
        let mut journal = Journal {
            path: path.to_owned(),
            file,
            header,
            deleted: BTreeSet::new(),
            end: JOURNAL_HEADER_SIZE as u64,
        };
        let records = (len - JOURNAL_HEADER_SIZE as u64) / TOMBSTONE_SIZE as u64;
        let mut record = [0u8; TOMBSTONE_SIZE];
        for n in 0..records {
            let at = JOURNAL_HEADER_SIZE as u64 + n * TOMBSTONE_SIZE as u64;
            journal.file.read_exact_at(&mut record, at)?;
            match Tombstone::decode(&record) {
                Ok(tombstone) => {
                    journal.deleted.insert(tombstone.key);
                    journal.end = at + TOMBSTONE_SIZE as u64;
                }
                Err(_) if n + 1 == records => break,
                Err(error) => {
                    return Err(Error::corrupt(format!(
                        "{}: tombstone {n} of {records}: {error}",
                        path.display()
                    )));
                }
            }
        }
        if journal.end != len {
            tracing::warn!(
                path = %path.display(),
                kept = journal.end,
                len,
                "dropping a torn tombstone at the journal's end"
            );
            journal.file.set_len(journal.end)?;
            journal.file.sync_all()?;
        }
        Ok(journal)
    }

    /// The journal's header.
    pub fn header(&self) -> JournalHeader {
        self.header
    }

    /// Whether `key` has a tombstone here.
    pub fn is_deleted(&self, key: u64) -> bool {
        self.deleted.contains(&key)
    }

    /// Tombstones held (one per key).
    pub fn len(&self) -> usize {
        self.deleted.len()
    }

    /// Whether the journal holds no tombstone.
    pub fn is_empty(&self) -> bool {
        self.deleted.is_empty()
    }

    /// The tombstoned keys, in key order.
    pub fn deleted_keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.deleted.iter().copied()
    }

    /// Appends the tombstone of `key` and syncs it: once this returns, the
    /// delete survives a crash. A key already tombstoned writes nothing.
    pub fn append(&mut self, key: u64, deleted_ms: u64) -> Result<()> {
        self.append_all(&[key], deleted_ms).map(drop)
    }

    /// Appends the tombstones of `keys` with one write and one sync; keys
    /// already tombstoned (or repeated) write nothing. The number written.
    pub fn append_all(&mut self, keys: &[u64], deleted_ms: u64) -> Result<usize> {
        let mut records = Vec::new();
        let mut fresh = std::collections::HashSet::new();
        for &key in keys {
            if !self.deleted.contains(&key) && fresh.insert(key) {
                records.extend_from_slice(&Tombstone { key, deleted_ms }.encode());
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        self.file.write_all_at(&records, self.end)?;
        self.file.sync_data()?;
        self.end += records.len() as u64;
        self.deleted.extend(fresh.iter().copied());
        Ok(fresh.len())
    }

    /// Folds the tombstones into the index at `index_path`: a new index
    /// without the deleted keys replaces it (synced, renamed, directory
    /// synced), then the journal is cut to its header. Returns the new
    /// index, opened.
    pub fn fold(&mut self, index_path: &Path) -> Result<WarmIndex> {
        let (volume_id, generation) = (self.header.volume_id, self.header.generation);
        let old = WarmIndex::open(index_path, volume_id, generation)?;
        let tmp = temporary(index_path);
        let kept = write_folded(&old, &self.deleted, &tmp);
        let kept = match kept {
            Ok(kept) => kept,
            Err(error) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(error);
            }
        };
        drop(old);
        durable_rename(parent(index_path), &tmp, index_path)?;
        tracing::info!(
            volume = volume_id,
            kept,
            folded = self.deleted.len(),
            "folded the journal into the index"
        );
        // Only now: until the new index is durable, the journal is the delete.
        self.file.set_len(JOURNAL_HEADER_SIZE as u64)?;
        self.file.sync_all()?;
        self.end = JOURNAL_HEADER_SIZE as u64;
        self.deleted.clear();
        WarmIndex::open(index_path, volume_id, generation)
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `old` without the `deleted` keys to `path`, synced; the number of
/// entries kept.
fn write_folded(old: &WarmIndex, deleted: &BTreeSet<u64>, path: &Path) -> Result<u64> {
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(&[0u8; INDEX_HEADER_SIZE])?;
    let mut kept = 0;
    for i in 0..old.header().entry_count {
        let entry = old.entry(i)?;
        if !deleted.contains(&entry.key) {
            out.write_all(&entry.encode())?;
            kept += 1;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    let header = IndexHeader {
        entry_count: kept,
        ..old.header()
    };
    file.write_all_at(&header.encode(), 0)?;
    file.sync_all()?;
    Ok(kept)
}
