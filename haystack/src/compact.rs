//! Online compaction of a volume: copy live needles into new files while reads and deletes
//! continue, then swap them in durably.
//!
//! Steps (each has a failpoint, compiled in with the `failpoints` feature):
//! 1. Copy live needles, in key order, into `volume-N.data.compact` (fresh superblock with a
//!    new `instance_id` and `generation + 1`) and their put records into
//!    `volume-N.index.compact`. Reads, deletes and appends continue; deletes are also
//!    recorded for step 2. Failpoint `compact-after-copy`.
//! 2. Final phase: appends wait (they are delayed, not refused), deletes are held, in-flight
//!    group commits drain; copy needles appended meanwhile, apply the recorded deletes to the
//!    new files, write the final superblock (lock flag, key floor), fsync both new files.
//!    Failpoint `compact-before-rename`.
//! 3. Rename the new index over the old (failpoint `compact-after-index-rename`), then the new
//!    data file over the old: the commit point (failpoint `compact-after-data-rename`), then
//!    fsync the directory (failpoint `compact-after-dir-sync`) and swap handles and index.
//!
//! Crash safety: before the data rename the old data file is the volume, and open discards
//! `.compact` leftovers. A renamed index whose `instance_id` does not match the data file's
//! superblock is rebuilt by a full scan. After the data rename the new data file is complete
//! (fsynced before it was renamed). An error after the first rename leaves the volume
//! read-only until it is reopened, since its open handles may no longer be the named files.

use std::sync::Arc;

use tracing::{error, info};

use crate::error::{Error, Result};
use crate::file::{Storage, remove_if_exists, sync_dir};
use crate::format::{
    self, INDEX_HEADER_SIZE, IndexRecord, IndexRecordKind, NEEDLE_FLAG_DELETED,
    NEEDLE_FLAGS_OFFSET, SUPERBLOCK_SIZE, Superblock,
};
use crate::index::NeedleIndex;
use crate::volume::{CompactionReport, Volume, WriteState, max_key, new_instance_id};

/// Needles copied per pass over the in-memory index (bounds the time a read lock is held).
const COPY_BATCH: usize = 256;
/// Index records buffered before they are written.
const INDEX_BUFFER_BYTES: usize = 1 << 20;

/// The new files being built.
struct Job {
    data: Arc<dyn Storage>,
    index_file: Arc<dyn Storage>,
    index: NeedleIndex,
    index_buf: Vec<u8>,
    index_end: u64,
    last_copied: Option<u64>,
    superblock: Superblock,
    dropped: u64,
    /// Set before the first rename: from then on errors leave the volume read-only.
    renaming: bool,
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn failpoint_error(name: &str) -> Error {
    Error::Io(std::io::Error::other(format!("failpoint {name}")))
}

impl Job {
    fn push_record(&mut self, r: &IndexRecord) -> Result<()> {
        self.index_buf
            .extend_from_slice(&format::encode_index_record(r));
        if self.index_buf.len() >= INDEX_BUFFER_BYTES {
            self.flush_records()?;
        }
        Ok(())
    }

    fn flush_records(&mut self) -> Result<()> {
        self.index_file.write_at(&self.index_buf, self.index_end)?;
        self.index_end += self.index_buf.len() as u64;
        self.index_buf.clear();
        Ok(())
    }
}

impl Volume {
    /// Rewrites the volume without its deleted needles, online: reads and deletes continue
    /// throughout, appends wait only during the short final phase.
    pub fn compact(&self) -> Result<CompactionReport> {
        let _one = self.compaction_lock.lock();
        if self.state.lock().failed {
            return Err(Error::ReadOnly { volume: self.id });
        }
        let size_bytes_before = self.files.read().index.data_end();
        *self.compact_deletes.lock() = Some(Vec::new());
        let mut job = None;
        let result = self.compact_steps(&mut job);
        *self.compact_deletes.lock() = None;
        let renaming = job.as_ref().is_some_and(|j| j.renaming);
        drop(job);
        let mut st = self.state.lock();
        st.compacting = false;
        self.cond.notify_all();
        match result {
            Ok((kept, dropped, size_bytes_after)) => {
                info!(
                    volume = self.id,
                    kept, dropped, size_bytes_before, size_bytes_after, "compacted"
                );
                Ok(CompactionReport {
                    needles_kept: kept,
                    needles_dropped: dropped,
                    size_bytes_before,
                    size_bytes_after,
                })
            }
            Err(e) => {
                if renaming {
                    st.failed = true;
                    let msg = "compaction failed while renaming; read-only until reopened";
                    error!(volume = self.id, error = %e, "{msg}");
                } else {
                    error!(volume = self.id, error = %e, "compaction failed; old files kept");
                    let _ = remove_if_exists(&self.paths.data_compact);
                    let _ = remove_if_exists(&self.paths.index_compact);
                }
                Err(e)
            }
        }
    }

    fn compact_steps(&self, slot: &mut Option<Job>) -> Result<(u64, u64, u64)> {
        let old_sb = self.files.read().superblock;
        let job = slot.insert(self.start_job(&old_sb)?);
        self.copy_needles(job)?;
        fail::fail_point!("compact-after-copy", |_| {
            Err(failpoint_error("compact-after-copy"))
        });

        // Final phase: hold deletes, stop appends, drain group commits.
        let _deletes = self.delete_lock.lock();
        let mut st = self.state.lock();
        st.compacting = true;
        // Lead or wait for a sync of everything written so far, so that the whole data file
        // is published before the last copy pass.
        let end = st.end;
        self.wait_synced(&mut st, end, None)?;
        while st.sync_in_progress {
            self.cond.wait(&mut st);
        }
        if st.failed {
            return Err(Error::ReadOnly { volume: self.id });
        }
        assert!(
            st.pending.is_empty() && st.synced == st.end,
            "appends drained"
        );
        self.copy_needles(job)?;
        self.apply_compaction_deletes(job)?;
        job.superblock.locked = st.locked;
        job.superblock.key_floor = max_key(old_sb.key_floor, st.last_key);
        job.data
            .write_at(&format::encode_superblock(&job.superblock), 0)?;
        job.data.sync_data()?;
        job.flush_records()?;
        job.index_file.sync_data()?;
        fail::fail_point!("compact-before-rename", |_| {
            Err(failpoint_error("compact-before-rename"))
        });
        self.commit_job(job, &mut st)
    }

    /// Creates the `.compact` files with a fresh superblock and index header.
    fn start_job(&self, old_sb: &Superblock) -> Result<Job> {
        remove_if_exists(&self.paths.data_compact)?;
        remove_if_exists(&self.paths.index_compact)?;
        let superblock = Superblock {
            instance_id: new_instance_id(),
            generation: old_sb.generation.wrapping_add(1),
            ..*old_sb
        };
        let data = self.backend.open(&self.paths.data_compact, true)?;
        data.set_len(0)?;
        data.write_at(&format::encode_superblock(&superblock), 0)?;
        let index_file = self.backend.open(&self.paths.index_compact, true)?;
        index_file.set_len(0)?;
        let header = format::encode_index_header(self.id, superblock.instance_id);
        index_file.write_at(&header, 0)?;
        Ok(Job {
            data,
            index_file,
            index: NeedleIndex::new(SUPERBLOCK_SIZE),
            index_buf: Vec::new(),
            index_end: INDEX_HEADER_SIZE,
            last_copied: None,
            superblock,
            dropped: 0,
            renaming: false,
        })
    }

    /// Applies to the new files the deletes that arrived while the needles were copied.
    fn apply_compaction_deletes(&self, job: &mut Job) -> Result<()> {
        let deleted = self.compact_deletes.lock().take().unwrap_or_default();
        for key in deleted {
            let Some(e) = job.index.mark_deleted(key) else {
                continue;
            };
            let flag_at = e.offset + NEEDLE_FLAGS_OFFSET as u64;
            job.data.write_at(&[NEEDLE_FLAG_DELETED], flag_at)?;
            job.push_record(&IndexRecord {
                kind: IndexRecordKind::Delete,
                key,
                offset: e.offset,
                size_bytes: u32::try_from(e.size_bytes).expect("needle size fits u32"),
                flags: NEEDLE_FLAG_DELETED,
            })?;
        }
        Ok(())
    }

    /// Renames the synced new files into place (index, then data: the commit point), syncs
    /// the directory, and swaps handles and index. Called with appends and deletes held.
    fn commit_job(&self, job: &mut Job, st: &mut WriteState) -> Result<(u64, u64, u64)> {
        job.renaming = true;
        std::fs::rename(&self.paths.index_compact, &self.paths.index)?;
        fail::fail_point!("compact-after-index-rename", |_| {
            Err(failpoint_error("compact-after-index-rename"))
        });
        std::fs::rename(&self.paths.data_compact, &self.paths.data)?;
        fail::fail_point!("compact-after-data-rename", |_| {
            Err(failpoint_error("compact-after-data-rename"))
        });
        sync_dir(&self.paths.dir)?;
        fail::fail_point!("compact-after-dir-sync", |_| {
            Err(failpoint_error("compact-after-dir-sync"))
        });

        let new_end = job.index.data_end();
        let kept = job.index.len();
        let index = std::mem::replace(&mut job.index, NeedleIndex::new(SUPERBLOCK_SIZE));
        {
            let mut files = self.files.write();
            files.data = job.data.clone();
            files.index = index;
            files.superblock = job.superblock;
        }
        {
            let mut w = self.index_writer.lock();
            w.file = job.index_file.clone();
            w.end = job.index_end;
        }
        st.end = new_end;
        st.synced = new_end;
        st.compactions += 1;
        job.renaming = false;
        Ok((kept, job.dropped, new_end))
    }

    /// Copies every published needle above `job.last_copied`, skipping deleted ones.
    fn copy_needles(&self, job: &mut Job) -> Result<()> {
        loop {
            let (old, batch) = {
                let files = self.files.read();
                (
                    files.data.clone(),
                    files.index.entries_after(job.last_copied, COPY_BATCH),
                )
            };
            let Some(last) = batch.last() else {
                return Ok(());
            };
            job.last_copied = Some(last.key);
            for e in batch {
                if e.deleted {
                    job.dropped += 1;
                    continue;
                }
                let mut buf = vec![0u8; usize::try_from(e.size_bytes).expect("size fits usize")];
                old.read_at(&mut buf, e.offset)?;
                let (header, _) = format::validate_needle(&buf, self.id, e.offset)?;
                if header.key != e.key {
                    return Err(Error::corrupt(
                        self.id,
                        e.offset,
                        "needle key differs from index",
                    ));
                }
                let offset = job.index.data_end();
                job.data.write_at(&buf, offset)?;
                let pushed = job.index.push(e.key, e.size_bytes, header.deleted());
                assert!(pushed, "copied in key order");
                job.push_record(&IndexRecord {
                    kind: IndexRecordKind::Put,
                    key: e.key,
                    offset,
                    size_bytes: u32::try_from(e.size_bytes).expect("needle size fits u32"),
                    flags: header.flags,
                })?;
            }
        }
    }
}
