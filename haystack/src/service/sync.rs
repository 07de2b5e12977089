//! Bulk sync: `POST /volumes/{vid}/sync?from=URL[&also=URL,...]` brings this
//! node's replica up to date with the replica at the store node `URL` (the
//! source), never letting a needle that fails its checks replace a good one.
//!
//! Only a locked or read-only source is used: a writable one could take
//! appends meanwhile. Two ways, chosen by comparing index digests:
//!
//! - **Catch-up.** This node already holds every needle of the source, with
//!   the same sizes at the same offsets (a replica whose node was down for a
//!   while: writes to its volume failed, so it missed at most deletes). The
//!   source's deleted keys are applied, page by page; no data moves.
//! - **Copy.** The source's data file is streamed into the staging path, then
//!   checked needle by needle against the source's index (paged): magic,
//!   lengths, key and checksum. A needle that fails is taken from this node's
//!   earlier copy if that one passes, else from the first peer in `also`
//!   whose raw copy passes, and written over the bad bytes in the staging
//!   file. A peer that cannot be asked fails the sync (nothing is installed,
//!   no needle is skipped unchecked). A needle with no good copy anywhere is
//!   kept as the source has it (it fails its checks, so it is never served)
//!   and reported by key and cookie. The index file is written from the
//!   checked needles, the files are installed durably
//!   ([`crate::Store::install_volume`]), and the deletes of the source and
//!   of the replica's earlier copy are applied.
//!
//! Deletes only ever grow, and each one is applied from a listing taken after
//! the data moved, so the result holds every delete the source had
//! acknowledged when the sync started (and those the replica had itself).
//!
//! With `deletes_only=true` no data moves whatever the digests say: the
//! peer's deleted keys are applied to this replica, which must exist, and
//! the peer may be writable (deletes only grow). The directory uses it to
//! give a replica every delete of its peers before it becomes the source of
//! a volume whose replicas are all stale (`router::directory::repair`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::StoreNodeState;
use super::error::ApiError;
use super::inventory::peer_clients;
use super::params::volume_id;
use crate::api::{
    NeedleEntry, NeedleRef, PAGE_ENTRIES_MAX, PageCursor, SYNC_REPORT_NEEDLES_MAX, SyncReport,
    VolumeFile,
};
use crate::client::{ClientError, StoreClient};
use crate::error::Error;
use crate::format::{
    self, INDEX_RECORD_SIZE, IndexRecord, IndexRecordKind, NEEDLE_FLAG_DELETED,
    NEEDLE_FLAGS_OFFSET, SUPERBLOCK_SIZE,
};
use crate::volume::Volume;

/// Peers besides the source a sync may take needles from, at most.
const ALSO_PEERS_MAX: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncQuery {
    from: String,
    #[serde(default)]
    also: String,
    #[serde(default)]
    deletes_only: bool,
}

/// Handler of `POST /volumes/{vid}/sync?from=URL&also=URL,...` and of
/// `POST /volumes/{vid}/sync?from=URL&deletes_only=true`.
pub(crate) async fn sync_volume(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<SyncQuery>, QueryRejection>,
) -> Result<Json<SyncReport>, ApiError> {
    let volume = volume_id(path)?;
    let Query(query) = query.map_err(|_| {
        ApiError::bad_request(
            "query must be from=<peer URL>, optionally also=<peer URLs> and \
             deletes_only=true|false",
        )
    })?;
    // A test's store that takes no deletes takes none from its peers either.
    crate::failpoint::pause_task_at("store-deletes").await;
    let mut peers = peer_clients(&state, &query.from, 1)?;
    let source = peers
        .pop()
        .ok_or_else(|| ApiError::bad_request("from must name the source node"))?;
    let also = peer_clients(&state, &query.also, ALSO_PEERS_MAX)?;
    if query.deletes_only && !also.is_empty() {
        return Err(ApiError::bad_request(
            "deletes_only takes no also: only the deletes of from are applied",
        ));
    }
    let deadline = Duration::from_millis(state.config().sync_timeout_ms);
    let result = tokio::time::timeout(deadline, async {
        // One bulk sync at a time: each may move a whole volume.
        let _guard = state.inner.sync_lock.lock().await;
        if query.deletes_only {
            let local = state.store().volume(volume)?;
            deletes_of(&state, &local, &source, "deletes").await
        } else {
            sync_from(&state, volume, &source, &also).await
        }
    })
    .await
    .unwrap_or_else(|_| Err(ApiError::timeout("bulk sync timed out")));
    match &result {
        Ok(report) => tracing::info!(
            volume,
            source = source.base_url(),
            method = %report.method,
            deletes_applied = report.deletes_applied,
            source_damaged = report.source_damaged.len(),
            lost = report.lost.len(),
            "bulk sync done"
        ),
        Err(e) => tracing::warn!(volume, source = source.base_url(), error = %e.message,
            "bulk sync failed"),
    }
    result.map(Json)
}

async fn sync_from(
    state: &StoreNodeState,
    volume: u32,
    source: &StoreClient,
    also: &[StoreClient],
) -> Result<SyncReport, ApiError> {
    let source_status = source.volume_status(volume).await.map_err(peer_error)?;
    if !source_status.locked && !source_status.read_only {
        return Err(ApiError::read_only(format!(
            "source replica of volume {volume} is writable; bulk sync copies only locked or \
             read-only replicas"
        )));
    }
    let earlier = state.store().volume(volume).ok();
    if let Some(local) = &earlier
        && holds_every_needle(state, local, source).await?
    {
        return deletes_of(state, local, source, "catch_up").await;
    }
    copy_from(state, volume, source, also, earlier).await
}

/// Applies the peer's deleted keys to `local`, and nothing else: the
/// report of a catch-up or of a `deletes_only` sync (`method`).
async fn deletes_of(
    state: &StoreNodeState,
    local: &Arc<Volume>,
    peer: &StoreClient,
    method: &str,
) -> Result<SyncReport, ApiError> {
    let deletes_applied = apply_deletes_of(state, local, peer).await?;
    Ok(SyncReport {
        status: local.status(),
        method: method.into(),
        deletes_applied,
        source_damaged: Vec::new(),
        lost: Vec::new(),
        truncated: false,
    })
}

/// Whether the local replica has the source's index (same digest) and can
/// still take deletes.
async fn holds_every_needle(
    state: &StoreNodeState,
    local: &Arc<Volume>,
    source: &StoreClient,
) -> Result<bool, ApiError> {
    let status = local.status();
    if status.read_only && !status.locked {
        return Ok(false); // a failed write: only a fresh copy is trusted
    }
    let theirs = source
        .inventory_digest(local.id())
        .await
        .map_err(peer_error)?;
    let local = local.clone();
    let ours = state
        .blocking(move |_| Ok(local.inventory_digest()))
        .await?;
    Ok(ours == theirs)
}

/// Applies every key `peer` lists as deleted; returns how many were new here.
async fn apply_deletes_of(
    state: &StoreNodeState,
    local: &Arc<Volume>,
    peer: &StoreClient,
) -> Result<u64, ApiError> {
    let mut applied = 0;
    let mut cursor = PageCursor::default();
    while let Some(after) = cursor.next_page() {
        let page = peer
            .deleted_page(local.id(), after, PAGE_ENTRIES_MAX)
            .await
            .map_err(peer_error)?;
        applied += apply_deletes(state, local, page.keys).await?;
        if !cursor.advance(page.next_after) {
            return Err(ApiError::peer(
                "the peer's deleted keys do not page forward",
            ));
        }
    }
    Ok(applied)
}

async fn apply_deletes(
    state: &StoreNodeState,
    local: &Arc<Volume>,
    keys: Vec<u64>,
) -> Result<u64, ApiError> {
    let local = local.clone();
    state
        .blocking(move |_| {
            let mut applied = 0;
            // A page at a time: two syncs each, and a bounded index write.
            for batch in keys.chunks(PAGE_ENTRIES_MAX) {
                applied += local.apply_peer_deletes(batch)?;
            }
            Ok(applied)
        })
        .await
}

/// What the check of a copied data file found.
#[derive(Default)]
struct Findings {
    source_damaged: Vec<NeedleRef>,
    lost: Vec<NeedleRef>,
    truncated: bool,
}

impl Findings {
    fn note(list: &mut Vec<NeedleRef>, truncated: &mut bool, needle: NeedleRef) {
        if list.len() < SYNC_REPORT_NEEDLES_MAX {
            list.push(needle);
        } else {
            *truncated = true;
        }
    }
}

async fn copy_from(
    state: &StoreNodeState,
    volume: u32,
    source: &StoreClient,
    also: &[StoreClient],
    earlier: Option<Arc<Volume>>,
) -> Result<SyncReport, ApiError> {
    let (data_path, index_path) = state
        .blocking(move |store| Ok(store.staging_paths(volume)))
        .await?;
    let checked = async {
        download(source, volume, &data_path).await?;
        check_copy(
            state,
            volume,
            source,
            also,
            earlier.as_ref(),
            &data_path,
            &index_path,
        )
        .await
    }
    .await;
    let findings = match checked {
        Ok(findings) => findings,
        Err(e) => {
            // Best effort: the next sync overwrites the staging files anyway.
            let _ = tokio::fs::remove_file(&data_path).await;
            let _ = tokio::fs::remove_file(&index_path).await;
            return Err(e);
        }
    };
    let installed = state
        .blocking(move |store| store.install_volume(volume))
        .await?;
    // Listed only now: the install retired the earlier copy (under its
    // delete lock), so every delete it answered is in this list, and later
    // ones fail there and reach the new copy.
    let own_deleted = match &earlier {
        Some(v) => {
            let v = v.clone();
            state.blocking(move |_| Ok(v.deleted_keys())).await?
        }
        None => Vec::new(),
    };
    let deletes_applied = apply_deletes_of(state, &installed, source).await?
        + apply_deletes(state, &installed, own_deleted).await?;
    Ok(SyncReport {
        status: installed.status(),
        method: "copy".into(),
        deletes_applied,
        source_damaged: findings.source_damaged,
        lost: findings.lost,
        truncated: findings.truncated,
    })
}

/// Streams the source's data file into `dest` and makes it durable.
async fn download(source: &StoreClient, volume: u32, dest: &FsPath) -> Result<u64, ApiError> {
    let response = source
        .fetch_volume_file(volume, VolumeFile::Data)
        .await
        .map_err(peer_error)?;
    let expected = response.content_length;
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(|e| ApiError::io(&e))?;
    let mut stream = response.into_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(peer_error)?;
        out.write_all(&chunk).await.map_err(|e| ApiError::io(&e))?;
        written += chunk.len() as u64;
    }
    if let Some(expected) = expected
        && expected != written
    {
        return Err(ApiError::peer(format!(
            "data file: got {written} of {expected} bytes"
        )));
    }
    out.sync_all().await.map_err(|e| ApiError::io(&e))?;
    Ok(written)
}

/// A needle of the copy that failed its checks, with the cookie of its
/// header if that decodes.
type BadNeedle = (NeedleEntry, Option<u32>);

/// The staged data file and the index file written beside it.
struct Staged {
    data: File,
    data_len: u64,
    index: File,
    index_end: u64,
}

/// Checks the staged copy needle by needle against the source's index,
/// mends what fails, cuts anything past the last needle and writes the index
/// file.
async fn check_copy(
    state: &StoreNodeState,
    volume: u32,
    source: &StoreClient,
    also: &[StoreClient],
    earlier: Option<&Arc<Volume>>,
    data_path: &FsPath,
    index_path: &FsPath,
) -> Result<Findings, ApiError> {
    let (data_path, index_path) = (data_path.to_path_buf(), index_path.to_path_buf());
    let staged = state
        .blocking(move |_| open_staged(volume, &data_path, &index_path))
        .await?;
    let mut staged = Some(staged);
    let mut findings = Findings::default();
    let mut expected_offset = SUPERBLOCK_SIZE;
    let mut cursor = PageCursor::default();
    while let Some(after) = cursor.next_page() {
        let page = source
            .needle_page(volume, after, PAGE_ENTRIES_MAX)
            .await
            .map_err(peer_error)?;
        let files = staged
            .take()
            .expect("staged files are put back after each page");
        let entries = page.entries.clone();
        let start = expected_offset;
        let (files, bad, end) = state
            .blocking(move |_| check_page(volume, files, &entries, start))
            .await?;
        expected_offset = end;
        for (entry, cookie) in bad {
            let needle = NeedleRef {
                key: entry.key,
                cookie,
            };
            let good = good_copy(state, volume, &entry, also, earlier).await?;
            Findings::note(
                &mut findings.source_damaged,
                &mut findings.truncated,
                needle,
            );
            match good {
                Some(bytes) => {
                    let data = files.data.try_clone().map_err(|e| ApiError::io(&e))?;
                    state
                        .blocking(move |_| write_needle(&data, &entry, bytes))
                        .await?;
                }
                None => {
                    tracing::error!(
                        volume,
                        key = entry.key,
                        "no replica holds a good copy of the needle"
                    );
                    Findings::note(&mut findings.lost, &mut findings.truncated, needle);
                }
            }
        }
        staged = Some(files);
        if !cursor.advance(page.next_after) {
            return Err(ApiError::peer("the source's index does not page forward"));
        }
    }
    let files = staged.take().expect("staged files");
    state
        .blocking(move |_| finish_staged(volume, files, expected_offset))
        .await?;
    Ok(findings)
}

fn open_staged(volume: u32, data_path: &PathBuf, index_path: &PathBuf) -> crate::Result<Staged> {
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data_path)?;
    let data_len = data.metadata()?.len();
    let mut superblock = [0u8; SUPERBLOCK_SIZE as usize];
    data.read_exact_at(&mut superblock, 0)
        .map_err(|_| Error::corrupt(volume, 0, "copied data file shorter than a superblock"))?;
    let superblock = format::decode_superblock(&superblock, volume)?;
    let index = File::create(index_path)?;
    let header = format::encode_index_header(volume, superblock.instance_id);
    index.write_all_at(&header, 0)?;
    Ok(Staged {
        data,
        data_len,
        index_end: header.len() as u64,
        index,
    })
}

/// Checks one page of the source's index against the staged data file:
/// every needle must start where the previous one ended and pass every
/// check; the source's deleted flags are set, and an index record written
/// for each. Returns the files, the needles that failed (with the cookie of
/// their header, if it decodes) and where the next needle starts.
fn check_page(
    volume: u32,
    mut staged: Staged,
    entries: &[NeedleEntry],
    mut offset: u64,
) -> crate::Result<(Staged, Vec<BadNeedle>, u64)> {
    let mut bad = Vec::new();
    let mut records = Vec::with_capacity(entries.len() * INDEX_RECORD_SIZE as usize);
    for entry in entries {
        let end = entry.offset.checked_add(entry.size_bytes);
        if entry.offset != offset || end.is_none_or(|end| end > staged.data_len) {
            return Err(Error::InvalidInput(format!(
                "source index of volume {volume}: needle {:#x} at {} of {} bytes does not \
                 follow the previous one at {offset} within the {}-byte data file",
                entry.key, entry.offset, entry.size_bytes, staged.data_len
            )));
        }
        let size = usize::try_from(entry.size_bytes)
            .map_err(|_| Error::InvalidInput("needle too large".into()))?;
        let mut bytes = vec![0u8; size];
        staged.data.read_exact_at(&mut bytes, entry.offset)?;
        let checked = format::validate_needle(&bytes, volume, entry.offset).and_then(|(h, _)| {
            if h.key == entry.key {
                Ok(h)
            } else {
                Err(Error::corrupt(
                    volume,
                    entry.offset,
                    "key differs from the index",
                ))
            }
        });
        match checked {
            Ok(header) if entry.deleted && !header.deleted() => {
                staged.data.write_all_at(
                    &[header.flags | NEEDLE_FLAG_DELETED],
                    entry.offset + NEEDLE_FLAGS_OFFSET as u64,
                )?;
            }
            Ok(_) => {}
            Err(_) => {
                let cookie = format::decode_needle_header(&bytes, volume, entry.offset)
                    .ok()
                    .filter(|h| h.key == entry.key)
                    .map(|h| h.cookie);
                bad.push((*entry, cookie));
            }
        }
        records.extend_from_slice(&format::encode_index_record(&IndexRecord {
            kind: IndexRecordKind::Put,
            key: entry.key,
            offset: entry.offset,
            size_bytes: u32::try_from(entry.size_bytes).expect("checked against the file"),
            flags: if entry.deleted {
                NEEDLE_FLAG_DELETED
            } else {
                0
            },
        }));
        offset = entry.offset + entry.size_bytes;
    }
    staged.index.write_all_at(&records, staged.index_end)?;
    staged.index_end += records.len() as u64;
    Ok((staged, bad, offset))
}

/// A copy of `entry`'s needle that passes every check: this node's earlier
/// copy, else the first peer's. `None` if every one answered and none had
/// one; an error if a peer could not be asked.
async fn good_copy(
    state: &StoreNodeState,
    volume: u32,
    entry: &NeedleEntry,
    also: &[StoreClient],
    earlier: Option<&Arc<Volume>>,
) -> Result<Option<Vec<u8>>, ApiError> {
    let key = entry.key;
    if let Some(local) = earlier {
        let local = local.clone();
        let own = state
            .blocking(move |_| Ok(local.read_raw_needle(key).ok()))
            .await?;
        if let Some(raw) = own.filter(|raw| raw.bytes.len() as u64 == entry.size_bytes) {
            tracing::warn!(
                volume,
                key,
                "needle corrupt at the source; kept this replica's copy"
            );
            return Ok(Some(raw.bytes));
        }
    }
    for peer in also {
        match peer.raw_needle(volume, key).await {
            Ok(bytes) if is_good_copy(&bytes, volume, entry) => {
                tracing::warn!(
                    volume,
                    key,
                    peer = peer.base_url(),
                    "needle corrupt at the source; took another replica's copy"
                );
                return Ok(Some(bytes));
            }
            Ok(_) | Err(ClientError::NotFound | ClientError::Corrupt(_)) => {}
            Err(e) => {
                return Err(ApiError::peer(format!(
                    "needle {key:x} of volume {volume} fails its checks at the source, and \
                     {} could not be asked for it: {e}",
                    peer.base_url()
                )));
            }
        }
    }
    Ok(None)
}

fn is_good_copy(bytes: &[u8], volume: u32, entry: &NeedleEntry) -> bool {
    format::check_needle_copy(bytes, volume, entry.key, entry.size_bytes).is_ok()
}

/// Writes a good copy over `entry`'s needle in the staged data file, with
/// the source's deleted flag.
fn write_needle(data: &File, entry: &NeedleEntry, mut bytes: Vec<u8>) -> crate::Result<()> {
    if entry.deleted {
        bytes[NEEDLE_FLAGS_OFFSET] |= NEEDLE_FLAG_DELETED;
    }
    data.write_all_at(&bytes, entry.offset)?;
    Ok(())
}

/// Cuts the staged data file after its last needle (bytes past the source's
/// index were never acknowledged) and syncs both files.
fn finish_staged(volume: u32, staged: Staged, end: u64) -> crate::Result<()> {
    if end > staged.data_len {
        return Err(Error::corrupt(volume, end, "copied data file is short"));
    }
    if end < staged.data_len {
        staged.data.set_len(end)?;
    }
    staged.data.sync_all()?;
    staged.index.sync_all()?;
    Ok(())
}

/// Maps a failure to talk to the source: one refusing because its replica
/// is writable stays `409 read_only`; anything else is `502 peer`.
fn peer_error(err: ClientError) -> ApiError {
    match err {
        ClientError::ReadOnly(message) => ApiError::read_only(format!("peer: {message}")),
        other => ApiError::peer(format!("peer: {other}")),
    }
}
