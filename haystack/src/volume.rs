//! One physical volume: a data file of needles plus an index file, with group commit,
//! deletes, locking and recovery on open. Compaction lives in `compact.rs`.
//!
//! Files (in the store directory, `N` = volume id in ten decimal digits):
//! `volume-N.data`, `volume-N.index`; transient `volume-N.data.creating` (create),
//! `volume-N.{data,index}.compact` (compaction) and `volume-N.{data,index}.staging` (bulk
//! sync), each discarded or renamed into place durably.
//!
//! Durability: an append is written with `pwrite` at the end of the data file under a short
//! lock, then waits until a `fdatasync` covers it. One waiter becomes the sync leader, syncs
//! outside the lock, appends the index records of the whole batch, and publishes the batch in
//! the in-memory index; only then are the needles readable and the appends acknowledged. A
//! failed sync (or write) turns the volume read-only until it is reopened: a sync is never
//! retried and trusted (see "fsyncgate", <https://lwn.net/Articles/752063/>).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::file::{FileBackend, Storage, StorageBackend, durable_rename, remove_if_exists};
use crate::format::{
    self, INDEX_RECORD_SIZE, IndexRecord, IndexRecordKind, NEEDLE_FLAG_DELETED,
    NEEDLE_FLAGS_OFFSET, NEEDLE_HEADER_SIZE, Needle, SUPERBLOCK_SIZE, Superblock,
};
use crate::index::{IndexEntry, NeedleIndex};
use crate::recover::{load_index, scan_tail};

/// Options of a volume.
#[derive(Clone, Debug)]
pub struct VolumeOptions {
    /// The volume locks itself when the next needle would not fit below this size.
    pub size_limit_bytes: u64,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            size_limit_bytes: 1 << 30,
        }
    }
}

/// A volume's state, as reported to the directory and operators.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct VolumeStatus {
    /// The volume id.
    pub volume_id: u32,
    /// Live (not deleted) needles.
    pub needle_count: u64,
    /// Bytes on disk of live needles.
    pub live_bytes: u64,
    /// Bytes on disk of deleted needles (reclaimed by compaction).
    pub deleted_bytes: u64,
    /// Locked for good (by request or because it is full).
    pub locked: bool,
    /// Refuses appends: locked, or a sync or write failed.
    pub read_only: bool,
    /// Size of the data file (acknowledged needles and superblock).
    pub size_bytes: u64,
    /// The highest key ever acknowledged, if any.
    pub last_key: Option<u64>,
}

/// Where an appended needle landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Byte offset of the needle in the data file.
    pub offset: u64,
    /// Size of the needle on disk, padding included.
    pub size_bytes: u64,
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionReport {
    /// Needles copied into the new data file (including ones deleted during compaction).
    pub needles_kept: u64,
    /// Deleted needles dropped.
    pub needles_dropped: u64,
    /// Data file size before.
    pub size_bytes_before: u64,
    /// Data file size after.
    pub size_bytes_after: u64,
}

/// A needle written by [`Volume::write_needle`], not yet durable.
#[must_use = "an append is acknowledged only after wait() returns Ok"]
pub struct PendingAppend<'a> {
    volume: &'a Volume,
    key: u64,
    outcome: AppendOutcome,
    /// [`WriteState::compactions`] when the needle was written.
    compactions: u64,
}

impl PendingAppend<'_> {
    /// Where the needle was written.
    pub fn outcome(&self) -> AppendOutcome {
        self.outcome
    }

    /// Waits until the needle is durable (group commit) and readable.
    pub fn wait(self) -> Result<AppendOutcome> {
        let mut st = self.volume.state.lock();
        let end = self.outcome.offset + self.outcome.size_bytes;
        match self
            .volume
            .wait_synced(&mut st, end, Some(self.compactions))?
        {
            Synced::Durable => Ok(self.outcome),
            Synced::Moved => {
                // A compaction committed since the write: its final phase
                // synced every write before it, so the needle is durable, at
                // its offset in the new data file. (Waiting for the old offset
                // would wait forever once the new file is shorter.)
                let entry = self.volume.files.read().index.get(self.key);
                Ok(match entry {
                    Some(entry) => AppendOutcome {
                        offset: entry.offset,
                        size_bytes: entry.size_bytes,
                    },
                    // Deleted before the compaction and dropped by it.
                    None => self.outcome,
                })
            }
        }
    }
}

/// How [`Volume::wait_synced`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Synced {
    /// Everything below the end asked for is durable.
    Durable,
    /// A compaction committed since the caller's write (whose offsets refer
    /// to the old data file); it synced that write before it committed.
    Moved,
}

/// The file paths of one volume.
#[derive(Clone, Debug)]
pub(crate) struct VolumePaths {
    pub(crate) dir: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) index: PathBuf,
    pub(crate) data_creating: PathBuf,
    pub(crate) data_compact: PathBuf,
    pub(crate) index_compact: PathBuf,
    pub(crate) data_staging: PathBuf,
    pub(crate) index_staging: PathBuf,
}

impl VolumePaths {
    pub(crate) fn new(dir: &Path, id: u32) -> VolumePaths {
        let f = |suffix: &str| dir.join(format!("volume-{id:010}.{suffix}"));
        VolumePaths {
            dir: dir.to_path_buf(),
            data: f("data"),
            index: f("index"),
            data_creating: f("data.creating"),
            data_compact: f("data.compact"),
            index_compact: f("index.compact"),
            data_staging: f("data.staging"),
            index_staging: f("index.staging"),
        }
    }
}

/// Parses `volume-NNNNNNNNNN.data` into the volume id.
pub(crate) fn parse_data_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("volume-")?.strip_suffix(".data")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A fresh random identity for a data file.
pub(crate) fn new_instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// The published, readable state: data file, index, superblock.
pub(crate) struct Files {
    pub(crate) data: Arc<dyn Storage>,
    pub(crate) index: NeedleIndex,
    pub(crate) superblock: Superblock,
}

/// A needle written but not yet covered by a sync.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    key: u64,
    offset: u64,
    size_bytes: u64,
}

/// The append path's state, under `Volume::state`.
pub(crate) struct WriteState {
    /// Where the next needle is written.
    pub(crate) end: u64,
    /// Everything below this is durable and published.
    pub(crate) synced: u64,
    /// Highest key written (published or pending).
    pub(crate) last_key: Option<u64>,
    pub(crate) pending: Vec<Pending>,
    pub(crate) sync_in_progress: bool,
    /// A sync or write failed, or the volume was replaced: no more writes until reopened.
    pub(crate) failed: bool,
    pub(crate) locked: bool,
    /// Compaction's final phase: appends wait.
    pub(crate) compacting: bool,
    /// Compactions committed since the volume was opened: offsets written
    /// before one refer to the old data file.
    pub(crate) compactions: u64,
}

/// The index file's append position.
pub(crate) struct IndexWriter {
    pub(crate) file: Arc<dyn Storage>,
    pub(crate) end: u64,
}

/// One physical volume. `Send + Sync`; every method takes `&self`.
pub struct Volume {
    pub(crate) id: u32,
    pub(crate) paths: VolumePaths,
    pub(crate) opts: VolumeOptions,
    pub(crate) backend: Arc<dyn StorageBackend>,
    pub(crate) files: RwLock<Files>,
    pub(crate) state: Mutex<WriteState>,
    pub(crate) cond: Condvar,
    pub(crate) index_writer: Mutex<IndexWriter>,
    pub(crate) delete_lock: Mutex<()>,
    pub(crate) compaction_lock: Mutex<()>,
    /// Keys deleted while a compaction copies; applied to the new files before the swap.
    pub(crate) compact_deletes: Mutex<Option<Vec<u64>>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn now_unix_ms() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

impl Volume {
    /// Creates an empty volume in `dir`. `VolumeExists` if its data file is present.
    pub fn create(dir: &Path, id: u32, opts: VolumeOptions) -> Result<Volume> {
        Self::create_with_backend(dir, id, opts, Arc::new(FileBackend))
    }

    /// [`Volume::create`] over a chosen storage backend (fault injection in tests).
    pub fn create_with_backend(
        dir: &Path,
        id: u32,
        opts: VolumeOptions,
        backend: Arc<dyn StorageBackend>,
    ) -> Result<Volume> {
        let paths = VolumePaths::new(dir, id);
        if paths.data.exists() {
            return Err(Error::VolumeExists { volume: id });
        }
        remove_if_exists(&paths.data_creating)?;
        let sb = Superblock {
            volume_id: id,
            created_unix_ms: now_unix_ms(),
            instance_id: new_instance_id(),
            generation: 0,
            locked: false,
            key_floor: None,
        };
        let file = backend.open(&paths.data_creating, true)?;
        file.set_len(0)?;
        file.write_at(&format::encode_superblock(&sb), 0)?;
        file.sync_data()?;
        drop(file);
        // A stale index of an earlier volume with this id must not survive.
        remove_if_exists(&paths.index)?;
        durable_rename(&paths.dir, &paths.data_creating, &paths.data)?;
        info!(volume = id, "created volume");
        Self::open_with_backend(dir, id, opts, backend)
    }

    /// Opens a volume: loads the index, scans the data file past the last indexed needle,
    /// and cuts a torn tail. `UnknownVolume` if its data file is missing.
    pub fn open(dir: &Path, id: u32, opts: VolumeOptions) -> Result<Volume> {
        Self::open_with_backend(dir, id, opts, Arc::new(FileBackend))
    }

    /// [`Volume::open`] over a chosen storage backend (fault injection in tests).
    pub fn open_with_backend(
        dir: &Path,
        id: u32,
        opts: VolumeOptions,
        backend: Arc<dyn StorageBackend>,
    ) -> Result<Volume> {
        let paths = VolumePaths::new(dir, id);
        if !paths.data.exists() {
            return Err(Error::UnknownVolume { volume: id });
        }
        let (data, sb, data_len) = open_data_file(&paths, &*backend, id)?;
        let index_file = backend.open(&paths.index, true)?;
        let loaded = load_index(id, &*index_file, &sb, data_len)?;
        let (mut index, mut index_end) = (loaded.index, loaded.index_end);
        let records = scan_tail(id, &*data, &mut index, data_len, loaded.attested_end)?;
        if !records.is_empty() {
            let buf: Vec<u8> = records
                .iter()
                .flat_map(format::encode_index_record)
                .collect();
            index_file.write_at(&buf, index_end)?;
            index_end += buf.len() as u64;
        }
        let end = index.data_end();
        let last_key = max_key(sb.key_floor, index.last_key());
        info!(
            volume = id,
            needles = index.len(),
            size_bytes = end,
            scanned = records.len(),
            "opened volume"
        );
        Ok(Volume {
            id,
            paths,
            opts,
            backend,
            state: Mutex::new(WriteState {
                end,
                synced: end,
                last_key,
                pending: Vec::new(),
                sync_in_progress: false,
                failed: false,
                locked: sb.locked,
                compacting: false,
                compactions: 0,
            }),
            files: RwLock::new(Files {
                data,
                index,
                superblock: sb,
            }),
            cond: Condvar::new(),
            index_writer: Mutex::new(IndexWriter {
                file: index_file,
                end: index_end,
            }),
            delete_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            compact_deletes: Mutex::new(None),
        })
    }

    /// The volume id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Path of the data file.
    pub fn data_path(&self) -> PathBuf {
        self.paths.data.clone()
    }

    /// Path of the index file.
    pub fn index_path(&self) -> PathBuf {
        self.paths.index.clone()
    }

    /// Appends a needle. Returns once it is durable (`fdatasync`, shared by concurrent
    /// appends) and readable. Keys must be strictly increasing within the volume.
    pub fn append_needle(
        &self,
        key: u64,
        cookie: u32,
        content_type: &str,
        data: &[u8],
    ) -> Result<AppendOutcome> {
        self.append_needle_parts(key, cookie, content_type, &[data])
    }

    /// [`Volume::append_needle`] of the data that is `parts` in order (a body
    /// as it arrived, chunk by chunk): no copy of the data is made.
    pub fn append_needle_parts(
        &self,
        key: u64,
        cookie: u32,
        content_type: &str,
        parts: &[&[u8]],
    ) -> Result<AppendOutcome> {
        self.write_needle_parts(key, cookie, content_type, parts)?
            .wait()
    }

    /// First half of [`Volume::append_needle`]: checks and writes the needle at the end of
    /// the data file and returns without waiting for the sync. Lets a caller order keys under
    /// its own short lock and wait for durability outside it, so that concurrent writers
    /// share one `fdatasync`. The needle is neither readable nor acknowledged until
    /// [`PendingAppend::wait`] returns `Ok` (if dropped, the next sync covers it).
    pub fn write_needle(
        &self,
        key: u64,
        cookie: u32,
        content_type: &str,
        data: &[u8],
    ) -> Result<PendingAppend<'_>> {
        self.write_needle_parts(key, cookie, content_type, &[data])
    }

    /// [`Volume::write_needle`] of the data that is `parts` in order.
    pub fn write_needle_parts(
        &self,
        key: u64,
        cookie: u32,
        content_type: &str,
        parts: &[&[u8]],
    ) -> Result<PendingAppend<'_>> {
        let data_len: usize = parts.iter().map(|part| part.len()).sum();
        let size = format::check_needle_input(content_type, data_len)?;
        if size > self.opts.size_limit_bytes.saturating_sub(SUPERBLOCK_SIZE) {
            return Err(Error::InvalidInput(format!(
                "a needle of {size} bytes exceeds the volume size limit"
            )));
        }
        let frame = format::frame_needle(key, cookie, content_type, parts);
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        bufs.push(&frame.head);
        bufs.extend_from_slice(parts);
        bufs.push(&frame.tail);
        let mut st = self.state.lock();
        while st.compacting {
            self.cond.wait(&mut st);
        }
        if st.failed || st.locked {
            return Err(Error::ReadOnly { volume: self.id });
        }
        if let Some(last_key) = st.last_key.filter(|&k| key <= k) {
            return Err(Error::KeyOutOfOrder {
                volume: self.id,
                key,
                last_key,
            });
        }
        if st.end + size > self.opts.size_limit_bytes {
            info!(volume = self.id, "volume full; locking it");
            self.persist_lock(&mut st)?;
            return Err(Error::VolumeFull { volume: self.id });
        }
        let offset = st.end;
        let file = self.files.read().data.clone();
        if let Err(e) = file.write_vectored_at(&bufs, offset) {
            st.failed = true;
            error!(volume = self.id, error = %e, "needle write failed; volume is read-only");
            return Err(e.into());
        }
        st.end += size;
        st.last_key = Some(key);
        st.pending.push(Pending {
            key,
            offset,
            size_bytes: size,
        });
        Ok(PendingAppend {
            volume: self,
            key,
            outcome: AppendOutcome {
                offset,
                size_bytes: size,
            },
            compactions: st.compactions,
        })
    }

    /// Waits until everything below `end` is durable, leading a group sync if none runs.
    /// With `compactions` (the count when the caller wrote), it also ends as soon as a
    /// compaction has committed since, checked on every pass: the compaction may commit
    /// while this waits for a sync, and `end` then lies in the old data file.
    pub(crate) fn wait_synced(
        &self,
        st: &mut MutexGuard<'_, WriteState>,
        end: u64,
        compactions: Option<u64>,
    ) -> Result<Synced> {
        loop {
            if compactions.is_some_and(|c| c != st.compactions) {
                return Ok(Synced::Moved);
            }
            if st.synced >= end {
                return Ok(Synced::Durable);
            }
            if st.failed {
                return Err(Error::ReadOnly { volume: self.id });
            }
            if st.sync_in_progress {
                self.cond.wait(st);
                continue;
            }
            st.sync_in_progress = true;
            let target = st.end;
            let batch = std::mem::take(&mut st.pending);
            let file = self.files.read().data.clone();
            let (synced, indexed) = MutexGuard::unlocked(st, || match file.sync_data() {
                Ok(()) => (Ok(()), self.write_put_records(&batch)),
                Err(e) => (Err(e), Ok(())),
            });
            st.sync_in_progress = false;
            self.cond.notify_all();
            if let Err(e) = synced {
                st.failed = true;
                error!(volume = self.id, error = %e, "fdatasync failed; volume is read-only");
                return Err(e.into());
            }
            st.synced = target;
            {
                let mut files = self.files.write();
                for p in &batch {
                    assert_eq!(files.index.data_end(), p.offset, "batches publish in order");
                    let pushed = files.index.push(p.key, p.size_bytes, false);
                    assert!(pushed, "appends were checked for key order");
                }
            }
            if let Err(e) = indexed {
                // The batch is durable (the index is only a hint), but stop accepting writes.
                st.failed = true;
                error!(volume = self.id, error = %e, "index write failed; volume is read-only");
            }
            // Lock as soon as not even an empty needle fits any more.
            if st.synced + format::needle_size_bytes(0, 0) > self.opts.size_limit_bytes
                && !st.locked
                && !st.failed
                && let Err(e) = self.persist_lock(st)
            {
                warn!(volume = self.id, error = %e, "could not lock the full volume");
            }
        }
    }

    fn write_put_records(&self, batch: &[Pending]) -> std::io::Result<()> {
        let buf: Vec<u8> = batch
            .iter()
            .flat_map(|p| {
                format::encode_index_record(&IndexRecord {
                    kind: IndexRecordKind::Put,
                    key: p.key,
                    offset: p.offset,
                    size_bytes: u32::try_from(p.size_bytes).expect("needle size fits u32"),
                    flags: 0,
                })
            })
            .collect();
        let mut w = self.index_writer.lock();
        w.file.write_at(&buf, w.end)?;
        w.end += buf.len() as u64;
        Ok(())
    }

    /// Reads a needle with one positioned read, verifying magic, lengths, checksum, key,
    /// flags and cookie. Missing, deleted and wrong-cookie needles are all `NotFound`.
    pub fn read_needle(&self, key: u64, cookie: u32) -> Result<Needle> {
        let (file, entry) = self.live_entry(key)?;
        let buf = file.read_vec_at(needle_len(&entry), entry.offset)?;
        self.verify_needle(buf, key, cookie, &entry)
    }

    /// [`Volume::read_needle`] only if its bytes are all in the page cache
    /// ([`Storage::try_read_at_cached`]): never waits for the disk, so an async task may call
    /// it for a small needle. `Ok(None)`: not cached (or the storage cannot tell), read it
    /// with `read_needle`. Every answer but `None` is the one `read_needle` would give.
    pub fn try_read_needle_cached(&self, key: u64, cookie: u32) -> Result<Option<Needle>> {
        let (file, entry) = self.live_entry(key)?;
        let Some(buf) = file.try_read_vec_cached(needle_len(&entry), entry.offset)? else {
            return Ok(None);
        };
        self.verify_needle(buf, key, cookie, &entry).map(Some)
    }

    /// The data file and index entry of a key that is present and not deleted.
    pub(crate) fn live_entry(&self, key: u64) -> Result<(Arc<dyn Storage>, IndexEntry)> {
        let (file, entry) = {
            let files = self.files.read();
            (
                files.data.clone(),
                files.index.get(key).ok_or(Error::NotFound)?,
            )
        };
        if entry.deleted {
            return Err(Error::NotFound);
        }
        Ok((file, entry))
    }

    /// Decodes and checks the bytes of `entry`'s needle (the read half of `read_needle`).
    fn verify_needle(
        &self,
        buf: Vec<u8>,
        key: u64,
        cookie: u32,
        entry: &IndexEntry,
    ) -> Result<Needle> {
        let (needle, flags) = format::decode_needle(buf, self.id, entry.offset)
            .inspect_err(|e| error!(volume = self.id, key, error = %e, "corrupt needle"))?;
        if needle.key != key {
            let reason = format!("needle key {:#x} where the index has {key:#x}", needle.key);
            error!(volume = self.id, key, "{reason}");
            return Err(Error::corrupt(self.id, entry.offset, reason));
        }
        if flags & NEEDLE_FLAG_DELETED != 0 || needle.cookie != cookie {
            return Err(Error::NotFound);
        }
        Ok(needle)
    }

    /// On-disk size of a live needle (padding included), from the in-memory index alone: no
    /// IO and no cookie check, so callers must not answer from it alone. `None` if the key
    /// is missing or deleted.
    pub fn needle_size_bytes(&self, key: u64) -> Option<u64> {
        let entry = self.files.read().index.get(key)?;
        (!entry.deleted).then_some(entry.size_bytes)
    }

    /// Reads only a needle's header and content type (one positioned read of at most
    /// [`format::NEEDLE_META_BYTES_MAX`] bytes) and checks the header's magic, flags, key and
    /// size against the index; missing, deleted and wrong-cookie needles are `NotFound`, as
    /// in [`Volume::read_needle`]. The data is neither read nor verified: only `read_needle`
    /// checks a needle's checksum.
    pub fn read_needle_meta(&self, key: u64, cookie: u32) -> Result<format::NeedleMeta> {
        let (file, entry) = self.live_entry(key)?;
        let mut buf = [0u8; format::NEEDLE_META_BYTES_MAX];
        let buf = &mut buf[..meta_len(&entry)];
        file.read_at(buf, entry.offset)?;
        self.verify_meta(buf, key, cookie, &entry)
    }

    /// [`Volume::read_needle_meta`] only if those bytes are in the page cache, as
    /// [`Volume::try_read_needle_cached`] is to `read_needle`.
    pub fn try_read_needle_meta_cached(
        &self,
        key: u64,
        cookie: u32,
    ) -> Result<Option<format::NeedleMeta>> {
        let (file, entry) = self.live_entry(key)?;
        let mut buf = [0u8; format::NEEDLE_META_BYTES_MAX];
        let buf = &mut buf[..meta_len(&entry)];
        if !file.try_read_at_cached(buf, entry.offset)? {
            return Ok(None);
        }
        self.verify_meta(buf, key, cookie, &entry).map(Some)
    }

    /// Checks `entry`'s needle header and takes the content type after it (the read half of
    /// `read_needle_meta`); `buf` holds the needle's first [`meta_len`] bytes.
    fn verify_meta(
        &self,
        buf: &[u8],
        key: u64,
        cookie: u32,
        entry: &IndexEntry,
    ) -> Result<format::NeedleMeta> {
        let (header_bytes, rest) =
            buf.split_first_chunk::<NEEDLE_HEADER_SIZE>()
                .ok_or_else(|| {
                    Error::corrupt(self.id, entry.offset, "needle shorter than its header")
                })?;
        let header = self.verify_header(header_bytes, key, cookie, entry)?;
        // The header's sizes match the index, so its content type lies inside the needle,
        // and `buf` holds all of it.
        let content_type = rest
            .get(..usize::from(header.content_type_len))
            .map(|ct| String::from_utf8_lossy(ct).into_owned())
            .ok_or_else(|| {
                Error::corrupt(
                    self.id,
                    entry.offset,
                    "needle shorter than its content type",
                )
            })?;
        Ok(format::NeedleMeta {
            header,
            content_type,
        })
    }

    /// Decodes and checks `entry`'s needle header.
    fn verify_header(
        &self,
        buf: &[u8; NEEDLE_HEADER_SIZE],
        key: u64,
        cookie: u32,
        entry: &IndexEntry,
    ) -> Result<format::NeedleHeader> {
        let corrupt = |reason: String| {
            error!(volume = self.id, key, "corrupt needle header: {reason}");
            Error::corrupt(self.id, entry.offset, reason)
        };
        let header = format::decode_needle_header(buf, self.id, entry.offset)
            .inspect_err(|e| error!(volume = self.id, key, error = %e, "corrupt needle"))?;
        if header.key != key {
            return Err(corrupt(format!(
                "needle key {:#x} where the index has {key:#x}",
                header.key
            )));
        }
        if header.size_bytes() != entry.size_bytes {
            return Err(corrupt(format!(
                "needle header says {} bytes where the index has {}",
                header.size_bytes(),
                entry.size_bytes
            )));
        }
        if header.deleted() || header.cookie != cookie {
            return Err(Error::NotFound);
        }
        Ok(header)
    }

    /// Deletes a needle: sets its flag on disk (synced) and in memory, and records it in
    /// the index file (synced). Allowed on locked volumes.
    pub fn delete_needle(&self, key: u64, cookie: u32) -> Result<()> {
        let serial = self.delete_lock.lock();
        if self.state.lock().failed {
            return Err(Error::ReadOnly { volume: self.id });
        }
        let (file, entry) = self.live_entry(key)?;
        let mut hb = [0u8; NEEDLE_HEADER_SIZE];
        file.read_at(&mut hb, entry.offset)?;
        let header = format::decode_needle_header(&hb, self.id, entry.offset)?;
        if header.key != key {
            return Err(Error::corrupt(
                self.id,
                entry.offset,
                "needle key differs from index",
            ));
        }
        if header.cookie != cookie {
            // Only the needle's checksum covers its header: a damaged cookie must be
            // `Corrupt`, not a wrong one, or the replica would take no delete of a live BLOB
            // and nobody would record that it missed it. (Reads of the header alone do not
            // pay for the whole needle: a client could make each cost a large BLOB.) An
            // error either way, so other deletes need not wait for the read.
            drop(serial);
            let buf = file.read_vec_at(needle_len(&entry), entry.offset)?;
            let checked = self.verify_needle(buf, key, cookie, &entry);
            return Err(checked.err().unwrap_or(Error::NotFound));
        }
        self.persist_delete(&*file, &entry, header.flags)
    }

    /// Sets `entry`'s deleted flag on disk (its header's flags byte holds `flags`) and
    /// records the delete in the index file, both synced, then in memory. The caller holds
    /// `delete_lock`.
    pub(crate) fn persist_delete(
        &self,
        file: &dyn Storage,
        entry: &IndexEntry,
        flags: u8,
    ) -> Result<()> {
        let key = entry.key;
        let flag_at = entry.offset + NEEDLE_FLAGS_OFFSET as u64;
        let synced = file
            .write_at(&[flags | NEEDLE_FLAG_DELETED], flag_at)
            .and_then(|()| file.sync_data())
            .and_then(|()| {
                let record = format::encode_index_record(&IndexRecord {
                    kind: IndexRecordKind::Delete,
                    key,
                    offset: entry.offset,
                    size_bytes: u32::try_from(entry.size_bytes).expect("needle size fits u32"),
                    flags: NEEDLE_FLAG_DELETED,
                });
                let mut w = self.index_writer.lock();
                w.file.write_at(&record, w.end)?;
                w.end += INDEX_RECORD_SIZE;
                w.file.sync_data()
            });
        if let Err(e) = synced {
            return Err(self.failed_delete(e));
        }
        self.files.write().index.mark_deleted(key);
        if let Some(keys) = self.compact_deletes.lock().as_mut() {
            keys.push(key);
        }
        Ok(())
    }

    /// A delete that failed to reach the disk: the volume turns read-only.
    pub(crate) fn failed_delete(&self, error: std::io::Error) -> Error {
        self.state.lock().failed = true;
        error!(volume = self.id, error = %error, "delete failed to sync; volume is read-only");
        error.into()
    }

    /// Locks the volume for good: rewrites the superblock with the locked flag and syncs it.
    /// Returns once every needle written before the lock is published too (or has failed):
    /// a copy of the locked volume then holds every needle that will be acknowledged.
    pub fn lock(&self) -> Result<()> {
        let mut st = self.state.lock();
        if !st.locked {
            if st.failed {
                return Err(Error::ReadOnly { volume: self.id });
            }
            self.persist_lock(&mut st)?;
        }
        // A compaction committed meanwhile has synced them all (`Moved`).
        let (end, compactions) = (st.end, st.compactions);
        self.wait_synced(&mut st, end, Some(compactions))
            .map(|_| ())
    }

    fn persist_lock(&self, st: &mut WriteState) -> Result<()> {
        let (file, mut sb) = {
            let files = self.files.read();
            (files.data.clone(), files.superblock)
        };
        sb.locked = true;
        let written = file
            .write_at(&format::encode_superblock(&sb), 0)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            st.failed = true;
            error!(volume = self.id, error = %e, "lock failed to sync; volume is read-only");
            return Err(e.into());
        }
        self.files.write().superblock = sb;
        st.locked = true;
        info!(volume = self.id, "locked volume");
        Ok(())
    }

    /// Counts and flags of the volume.
    pub fn status(&self) -> VolumeStatus {
        let st = self.state.lock();
        let files = self.files.read();
        let index = &files.index;
        VolumeStatus {
            volume_id: self.id,
            needle_count: index.len() - index.deleted_count(),
            live_bytes: index.live_bytes(),
            deleted_bytes: index.deleted_bytes(),
            locked: st.locked,
            read_only: st.locked || st.failed,
            size_bytes: index.data_end(),
            last_key: max_key(files.superblock.key_floor, index.last_key()),
        }
    }

    /// Keys of the deleted needles still present, in increasing order.
    pub fn deleted_keys(&self) -> Vec<u64> {
        let files = self.files.read();
        files
            .index
            .iter()
            .filter(|e| e.deleted)
            .map(|e| e.key)
            .collect()
    }

    /// Refuses every further write (the volume's files are being replaced).
    pub(crate) fn retire(&self) {
        let _c = self.compaction_lock.lock();
        let _d = self.delete_lock.lock();
        self.state.lock().failed = true;
    }
}

/// Discards leftovers of an interrupted create or compaction, opens the data file and
/// validates its superblock.
fn open_data_file(
    paths: &VolumePaths,
    backend: &dyn StorageBackend,
    id: u32,
) -> Result<(Arc<dyn Storage>, Superblock, u64)> {
    // Leftovers were never renamed into place: the committed files are the plain ones.
    for p in [
        &paths.data_creating,
        &paths.data_compact,
        &paths.index_compact,
    ] {
        if remove_if_exists(p)? {
            warn!(volume = id, path = %p.display(), "removed an interrupted leftover");
        }
    }
    let data = backend.open(&paths.data, false)?;
    let data_len = data.len()?;
    if data_len < SUPERBLOCK_SIZE {
        return Err(Error::corrupt(
            id,
            0,
            "data file shorter than the superblock",
        ));
    }
    let mut sb_bytes = [0u8; SUPERBLOCK_SIZE as usize];
    data.read_at(&mut sb_bytes, 0)?;
    let sb = format::decode_superblock(&sb_bytes, id)?;
    if sb.volume_id != id {
        let reason = format!("superblock names volume {}", sb.volume_id);
        return Err(Error::corrupt(id, 0, reason));
    }
    Ok((data, sb, data_len))
}

/// Bytes of the whole of `entry`'s needle.
pub(crate) fn needle_len(entry: &IndexEntry) -> usize {
    usize::try_from(entry.size_bytes).expect("needle size fits usize")
}

/// Bytes of `entry`'s needle that hold its header and (longest) content type.
fn meta_len(entry: &IndexEntry) -> usize {
    usize::try_from(entry.size_bytes).map_or(format::NEEDLE_META_BYTES_MAX, |n| {
        n.min(format::NEEDLE_META_BYTES_MAX)
    })
}

pub(crate) fn max_key(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
