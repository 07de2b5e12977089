//! Needle-level repair of one volume: what a store node needs to mend its
//! replica from a peer's without copying whole files, and to check a copy
//! needle by needle.
//!
//! - [`Volume::read_raw_needle`]: the verified on-disk bytes of a needle,
//!   deleted or not, without a cookie: what a peer sends to mend a damaged
//!   copy (needles are byte-identical on every replica but for the deleted
//!   flag, which the checksum does not cover).
//! - [`Volume::repair_needle`]: overwrites a damaged needle in place with a
//!   good copy of the same size. The slot, the index and every other needle
//!   stay as they are, so this works on a locked volume and beside appends.
//! - [`Volume::needle_entries`] and [`Volume::inventory_digest`]: pages of
//!   the in-memory index and a digest of it, to compare two replicas.
//! - [`Volume::apply_peer_deletes`]: deletes learned from a peer's deleted
//!   keys (which carry no cookie), a batch at a time.
//! - [`Volume::scrub_needles`]: reads needles in key order and checks each
//!   as [`Volume::read_raw_needle`] does, a bounded stretch at a time.

use crate::api::ScrubPage;
use crate::error::{Error, Result};
use crate::format::{
    self, INDEX_RECORD_SIZE, IndexRecord, IndexRecordKind, NEEDLE_FLAG_DELETED,
    NEEDLE_FLAGS_OFFSET, NEEDLE_HEADER_SIZE,
};
use crate::index::IndexEntry;
use crate::volume::{Volume, needle_len};

/// The verified bytes of one needle as it lies on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawNeedle {
    /// Key, cookie, flags and sizes from its header.
    pub header: format::NeedleHeader,
    /// The whole needle: header, content type, data, footer, padding.
    pub bytes: Vec<u8>,
}

/// What [`Volume::repair_needle`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedleRepair {
    /// The local copy already passed its checks; nothing was written (a
    /// delete the good copy carried was applied).
    AlreadyGood,
    /// The damaged copy was overwritten with the good one and synced.
    Rewritten,
}

/// A digest of a volume's needle inventory: equal digests mean both
/// replicas hold the same keys with the same sizes, in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InventoryDigest {
    /// Needles in the index, deleted ones included.
    pub needles: u64,
    /// End of the last needle.
    pub data_end: u64,
    /// CRC-32 of every `(key, offset, size_bytes)` in key order, each as
    /// little-endian `u64`s.
    pub crc32: u32,
}

impl Volume {
    /// Reads and fully verifies the needle of `key` as it lies on disk,
    /// deleted or not, without a cookie check. `NotFound` if the index has
    /// no such key; `Corrupt` if its bytes fail any check.
    pub fn read_raw_needle(&self, key: u64) -> Result<RawNeedle> {
        let (file, entry) = self.entry(key)?;
        let bytes = file.read_vec_at(needle_len(&entry), entry.offset)?;
        let header = self.check_raw(&bytes, &entry)?;
        Ok(RawNeedle { header, bytes })
    }

    /// Mends the needle of `key` with `good`, a verified copy from a peer:
    /// if the local copy fails its checks, `good` is written over it in
    /// place and synced. A delete either copy carries is kept (deletes only
    /// ever grow). `InvalidInput` if `good` is not a valid needle of this
    /// key and size; `NotFound` if the index has no such key; `ReadOnly`
    /// after a failed write.
    pub fn repair_needle(&self, key: u64, good: &[u8]) -> Result<NeedleRepair> {
        // No compaction may swap the files, and no delete may set a flag,
        // while the slot is rewritten.
        let _compaction = self.compaction_lock.lock();
        let _deletes = self.delete_lock.lock();
        if self.state.lock().failed {
            return Err(Error::ReadOnly { volume: self.id });
        }
        let (file, entry) = self.entry(key)?;
        let good_header = self
            .check_raw(good, &entry)
            .map_err(|e| Error::InvalidInput(format!("replacement needle: {e}")))?;
        let local = file.read_vec_at(needle_len(&entry), entry.offset)?;
        if let Ok(header) = self.check_raw(&local, &entry) {
            if good_header.deleted() && !entry.deleted {
                self.persist_delete(&*file, &entry, header.flags)?;
            }
            return Ok(NeedleRepair::AlreadyGood);
        }
        let mut bytes = good.to_vec();
        if entry.deleted {
            bytes[NEEDLE_FLAGS_OFFSET] |= NEEDLE_FLAG_DELETED;
        }
        let written = file
            .write_at(&bytes, entry.offset)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            self.state.lock().failed = true;
            tracing::error!(volume = self.id, key, error = %e,
                "needle repair failed to sync; volume is read-only");
            return Err(e.into());
        }
        tracing::info!(
            volume = self.id,
            key,
            offset = entry.offset,
            "needle rewritten from a good copy"
        );
        if good_header.deleted() && !entry.deleted {
            self.persist_delete(&*file, &entry, good_header.flags)?;
        }
        Ok(NeedleRepair::Rewritten)
    }

    /// Up to `limit` index entries with keys above `after` (from the first
    /// if `None`), in key order, deleted ones included.
    pub fn needle_entries(&self, after: Option<u64>, limit: usize) -> Vec<IndexEntry> {
        self.files.read().index.entries_after(after, limit)
    }

    /// The digest of the in-memory index (one pass over it, no IO).
    pub fn inventory_digest(&self) -> InventoryDigest {
        let files = self.files.read();
        let mut crc = crc32fast::Hasher::new();
        for entry in files.index.iter() {
            crc.update(&entry.key.to_le_bytes());
            crc.update(&entry.offset.to_le_bytes());
            crc.update(&entry.size_bytes.to_le_bytes());
        }
        InventoryDigest {
            needles: files.index.len(),
            data_end: files.index.data_end(),
            crc32: crc.finalize(),
        }
    }

    /// Reads the needles above `after` in key order and checks each (magic,
    /// sizes, key, CRC) until about `max_bytes` are read or `max_needles`
    /// checked. A needle whose bytes cannot be read (an IO error: a bad
    /// sector) is as damaged as one that fails its checks: named corrupt,
    /// so that it is rewritten from a good replica.
    pub fn scrub_needles(
        &self,
        after: Option<u64>,
        max_bytes: u64,
        max_needles: usize,
    ) -> ScrubPage {
        let mut page = ScrubPage::default();
        let mut cursor = after;
        loop {
            let entries = self.needle_entries(cursor, max_needles.clamp(1, 4096));
            if entries.is_empty() {
                page.next_after = None;
                return page;
            }
            for entry in entries {
                if page.bytes >= max_bytes || page.checked as usize >= max_needles {
                    page.next_after = cursor;
                    return page;
                }
                match self.read_raw_needle(entry.key) {
                    Ok(_) => {}
                    // Removed meanwhile (compaction of a deleted needle).
                    Err(Error::NotFound) => {}
                    Err(error) => {
                        tracing::warn!(volume = self.id, key = entry.key, error = %error,
                            "scrub: a needle failed");
                        page.corrupt.push(entry.key);
                    }
                }
                page.checked += 1;
                page.bytes += entry.size_bytes;
                cursor = Some(entry.key);
            }
        }
    }

    /// Up to `limit` deleted keys above `after`, in key order.
    pub fn deleted_keys_after(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        let files = self.files.read();
        let mut keys = Vec::new();
        let mut cursor = after;
        // Pages of the index, so that a volume with few deletes costs one
        // pass and the answer never exceeds `limit`.
        while keys.len() < limit {
            let page = files.index.entries_after(cursor, 4096);
            let Some(last) = page.last() else { break };
            cursor = Some(last.key);
            keys.extend(
                page.iter()
                    .filter(|e| e.deleted)
                    .map(|e| e.key)
                    .take(limit - keys.len()),
            );
        }
        keys
    }

    /// Applies deletes a peer holds (keys carry no cookie): sets the
    /// deleted flag of every needle of `keys` still live here, syncs the
    /// data file once, records them all in the index file, syncs it once,
    /// and only then marks them in memory. Returns how many were new here.
    /// Two syncs a batch rather than two a key: a resync of a million
    /// deletes takes a few hundred syncs, not two million.
    pub fn apply_peer_deletes(&self, keys: &[u64]) -> Result<u64> {
        // Compaction swaps the files under `delete_lock` too, so the data
        // file read here stays the one written.
        let _serial = self.delete_lock.lock();
        if self.state.lock().failed {
            return Err(Error::ReadOnly { volume: self.id });
        }
        let file = self.files.read().data.clone();
        // Every needle read and checked before any flag is written, so that
        // a failing one leaves the batch untouched rather than half done.
        let mut found = Vec::with_capacity(keys.len());
        for &key in keys {
            let entry = match self.live_entry(key) {
                Ok((_, entry)) => entry,
                Err(Error::NotFound) => continue,
                Err(e) => return Err(e),
            };
            let mut header = [0u8; NEEDLE_HEADER_SIZE];
            file.read_at(&mut header, entry.offset)?;
            let header = format::decode_needle_header(&header, self.id, entry.offset)?;
            if header.key != key {
                return Err(Error::corrupt(
                    self.id,
                    entry.offset,
                    "needle key differs from index",
                ));
            }
            found.push((entry, header.flags));
        }
        let mut records = Vec::with_capacity(found.len() * INDEX_RECORD_SIZE as usize);
        let mut deleted = Vec::with_capacity(found.len());
        for (entry, flags) in found {
            let flag_at = entry.offset + NEEDLE_FLAGS_OFFSET as u64;
            if let Err(e) = file.write_at(&[flags | NEEDLE_FLAG_DELETED], flag_at) {
                return Err(self.failed_delete(e));
            }
            records.extend_from_slice(&format::encode_index_record(&IndexRecord {
                kind: IndexRecordKind::Delete,
                key: entry.key,
                offset: entry.offset,
                size_bytes: u32::try_from(entry.size_bytes).expect("needle size fits u32"),
                flags: NEEDLE_FLAG_DELETED,
            }));
            deleted.push(entry.key);
        }
        if deleted.is_empty() {
            return Ok(0);
        }
        let synced = file.sync_data().and_then(|()| {
            let mut w = self.index_writer.lock();
            w.file.write_at(&records, w.end)?;
            w.end += records.len() as u64;
            w.file.sync_data()
        });
        if let Err(e) = synced {
            return Err(self.failed_delete(e));
        }
        let mut files = self.files.write();
        for key in &deleted {
            files.index.mark_deleted(*key);
        }
        drop(files);
        if let Some(compacting) = self.compact_deletes.lock().as_mut() {
            compacting.extend_from_slice(&deleted);
        }
        Ok(deleted.len() as u64)
    }

    /// The data file and index entry of `key`, deleted or not.
    fn entry(&self, key: u64) -> Result<(std::sync::Arc<dyn crate::Storage>, IndexEntry)> {
        let files = self.files.read();
        let entry = files.index.get(key).ok_or(Error::NotFound)?;
        Ok((files.data.clone(), entry))
    }

    /// Checks that `bytes` is a whole valid needle of `entry`'s key and size.
    fn check_raw(&self, bytes: &[u8], entry: &IndexEntry) -> Result<format::NeedleHeader> {
        let (header, _) = format::validate_needle(bytes, self.id, entry.offset)?;
        if header.key != entry.key || header.size_bytes() != entry.size_bytes {
            return Err(Error::corrupt(
                self.id,
                entry.offset,
                format!(
                    "needle of key {:#x} and {} bytes where the index has key {:#x} and {} bytes",
                    header.key,
                    header.size_bytes(),
                    entry.key,
                    entry.size_bytes
                ),
            ));
        }
        Ok(header)
    }
}
