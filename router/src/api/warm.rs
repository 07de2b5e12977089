//! Reads and deletes of BLOBs in warm volumes.
//!
//! A read looks its key up on a fresh journal holder (the index and the
//! journal: `404` for a missing or deleted key), reads the needle's bytes
//! from the node holding its data block (two blocks if it straddles them),
//! each range verified there against the block's chunk checksums, then
//! checks the needle itself (magic, key, CRC) and its cookie. A block read
//! that fails, is corrupt or takes longer than
//! [`crate::api::RouterConfig::warm_read_deadline_ms`] is decoded instead
//! by a backoff node from the rest of its stripe, and the failed block is
//! reported to the directory. Too few blocks: `503`, never bytes.
//!
//! A delete appends a tombstone on every journal holder that is up; it is
//! acknowledged once [`f4::node::seal::TOMBSTONE_QUORUM`] holders synced it
//! (a majority of the cell's; in the geo layer, the remote holders alone
//! will do while the volume's datacenter is down) and every holder that
//! missed it is marked stale in the directory: it merges the others'
//! journals before it is consulted again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use f4::api::{BlockId, RangeRead, ReconstructRequest};
use f4::client::{KeyLookup, StorageClient};
use f4::format::IndexEntry;
use haystack::Needle;
use haystack::api::format_key;

use super::error::ApiError;
use super::id::BlobId;
use super::seal::every_router_reads_afresh;
use super::state::AppState;
use crate::directory::types::DamagedBlockRequest;
use crate::directory::{LogicalVolume, NodeRecord, NodeRole, VolumeState, WarmVolume};

/// A needle read from the warm tier.
pub(crate) struct WarmNeedle {
    pub(crate) needle: Needle,
    /// A backoff node decoded part of it.
    pub(crate) degraded: bool,
    /// Its volume's cell could not serve it: it was read from the geo
    /// layer (a copy, or its buddy and their XOR).
    pub(crate) geo: bool,
}

/// Where a warm volume's data is read from.
#[derive(Clone, Copy)]
pub(crate) enum DataPath<'a> {
    /// The volume's own blocks.
    Own,
    /// A full copy of its data (a companion in another datacenter).
    Copy(&'a LogicalVolume),
    /// Its buddy's data XOR their XOR volume's.
    Xor {
        buddy: &'a LogicalVolume,
        xor: &'a LogicalVolume,
    },
}

fn warm_record(volume: &LogicalVolume) -> Result<&WarmVolume, ApiError> {
    volume.warm.as_ref().ok_or_else(|| {
        ApiError::Internal(format!(
            "volume {} is warm without a warm record",
            volume.id
        ))
    })
}

/// The up nodes among `ids`, rotated by `rotation`.
fn up_nodes<'a>(
    ids: impl Iterator<Item = &'a str>,
    nodes: &'a HashMap<String, NodeRecord>,
    rotation: usize,
) -> Vec<&'a NodeRecord> {
    let mut up: Vec<&NodeRecord> = ids
        .filter_map(|id| nodes.get(id).filter(|n| n.is_up()))
        .collect();
    if !up.is_empty() {
        let len = up.len();
        up.rotate_left(rotation % len);
    }
    up
}

/// Reads the needle of `id` from warm `volume`: `NotFound` for a missing,
/// deleted or wrong-cookie BLOB, `Unavailable` when it cannot be read. A
/// read that fails with the cached node list (a node moved, or came back)
/// is tried once more with a fresh one.
pub(crate) async fn read_needle(
    state: &AppState,
    volume: &LogicalVolume,
    id: BlobId,
) -> Result<WarmNeedle, ApiError> {
    match read_needle_with(state, volume, id, false).await {
        Err(ApiError::Unavailable(why)) => {
            tracing::info!(volume = volume.id, why = %why, "warm read failed; retrying with fresh nodes");
            let volume = state.cache.volume(volume.id, true).await?;
            read_needle_with(state, &volume, id, true).await
        }
        other => other,
    }
}

async fn read_needle_with(
    state: &AppState,
    volume: &LogicalVolume,
    id: BlobId,
    refresh: bool,
) -> Result<WarmNeedle, ApiError> {
    // A companion holds no BLOB of its own.
    if volume.geo.is_companion() {
        return Err(ApiError::NotFound);
    }
    let warm = warm_record(volume)?;
    let nodes = state.cache.nodes(refresh).await?;
    let entry = lookup(state, volume.id, warm, &nodes, id.key).await?;
    let from_cell = match read_data(state, volume.id, warm, &nodes, entry).await {
        Ok((bytes, degraded)) => match check_needle(volume.id, bytes, entry, Some(id.key)) {
            // Every chunk read passed its checksum, yet the needle fails: a
            // block holds wrong bytes under good checksums (a bad write, or
            // a rebuild from a bad source), which only a deep scrub would
            // find. The range is decoded from the rest of its stripes
            // instead.
            Err(ApiError::Unavailable(why)) if !degraded => {
                decode_the_bad_block(state, volume.id, warm, &nodes, entry, id.key)
                    .await
                    .map(|needle| (needle, true))
                    .map_err(|e| ApiError::Unavailable(format!("{why}; decoding it: {e}")))
            }
            checked => checked.map(|needle| (needle, degraded)),
        },
        Err(e) => Err(e),
    };
    let (needle, degraded, geo) = match from_cell {
        Ok((needle, degraded)) => (needle, degraded, false),
        Err(ApiError::Unavailable(why)) if !volume.geo.is_empty() => {
            tracing::info!(volume = volume.id, why = %why, "the cell cannot serve it; reading from the geo layer");
            state.metrics.replica_failure("warm_cell");
            let needle = read_geo(state, volume, &nodes, entry, id.key)
                .await
                .map_err(|geo| ApiError::Unavailable(format!("{why}; geo layer: {geo}")))?;
            (needle, true, true)
        }
        Err(e) => return Err(e),
    };
    if needle.cookie != id.cookie {
        return Err(ApiError::NotFound);
    }
    Ok(WarmNeedle {
        needle,
        degraded,
        geo,
    })
}

/// The needle of `key` at `entry` of primary `volume`'s data from the geo
/// layer: its copy while it has one, else (or if the copy's bytes fail the
/// needle's check) its buddy's XOR their XOR volume's, each read through
/// its own cell, backoff included, and checked (magic, key, CRC; the
/// caller checks the cookie), so a wrong combination is never served.
async fn read_geo(
    state: &AppState,
    volume: &LogicalVolume,
    nodes: &HashMap<String, NodeRecord>,
    entry: IndexEntry,
    key: u64,
) -> Result<Needle, ApiError> {
    let warm_companion = |id| async move {
        let companion = state.cache.volume(id, false).await?;
        if companion.state != VolumeState::Warm {
            return Err(ApiError::Unavailable(format!(
                "companion volume {id} is {}",
                companion.state
            )));
        }
        Ok(companion)
    };
    let mut last = String::from("no warm copy or buddy");
    let checked = |(bytes, _): (Bytes, bool)| check_needle(volume.id, bytes, entry, Some(key));
    if let Some(copy) = volume.geo.copy {
        match warm_companion(copy).await {
            Ok(copy) => {
                let read = read_via(state, volume, nodes, DataPath::Copy(&copy), entry).await;
                match read.and_then(checked) {
                    Ok(needle) => return Ok(needle),
                    Err(e) => last = format!("copy {}: {e}", copy.id),
                }
            }
            Err(e) => last = e.to_string(),
        }
    }
    if let (Some(buddy), Some(xor)) = (volume.geo.buddy, volume.geo.xor) {
        let xor = warm_companion(xor).await?;
        let buddy = state.cache.volume(buddy, false).await?;
        let path = DataPath::Xor {
            buddy: &buddy,
            xor: &xor,
        };
        return read_via(state, volume, nodes, path, entry)
            .await
            .and_then(checked)
            .map_err(|e| ApiError::Unavailable(format!("{last}; buddy and XOR: {e}")));
    }
    Err(ApiError::Unavailable(last))
}

/// The bytes at `entry` of `volume`'s data, read by `path`; whether a
/// backoff node decoded any of the bytes of the volume `path` ends at (the
/// volume's own, the copy's, the XOR volume's: what a seal verifies; a
/// buddy's part decoded is the buddy's own repair's business).
pub(crate) async fn read_via(
    state: &AppState,
    volume: &LogicalVolume,
    nodes: &HashMap<String, NodeRecord>,
    path: DataPath<'_>,
    entry: IndexEntry,
) -> Result<(Bytes, bool), ApiError> {
    match path {
        DataPath::Own => read_data(state, volume.id, warm_record(volume)?, nodes, entry).await,
        DataPath::Copy(copy) => read_data(state, copy.id, warm_record(copy)?, nodes, entry).await,
        DataPath::Xor { buddy, xor } => {
            let buddy_warm = warm_record(buddy)?;
            let buddy_len = buddy_warm.geometry.volume_len_bytes;
            // The buddy's part of the range; past its end it reads as zeros.
            let overlap = buddy_len
                .saturating_sub(entry.offset)
                .min(u64::from(entry.size_bytes));
            let buddy_read = async {
                if overlap == 0 {
                    return Ok((Bytes::new(), false));
                }
                let span = IndexEntry {
                    size_bytes: overlap as u32,
                    ..entry
                };
                read_data(state, buddy.id, buddy_warm, nodes, span).await
            };
            let xor_read = read_data(state, xor.id, warm_record(xor)?, nodes, entry);
            let ((theirs, _), (parity, decoded)) = futures::try_join!(buddy_read, xor_read)?;
            let mut ours = BytesMut::from(parity);
            f4::xor_into(&mut ours, &theirs)
                .map_err(|e| ApiError::Internal(format!("volume {}: {e}", volume.id)))?;
            Ok((ours.freeze(), decoded))
        }
    }
}

/// Decodes and checks the needle read at `entry` (magic, sizes, CRC; the
/// key when given). A needle that fails is a fault of the volume, never a
/// `404`.
pub(crate) fn check_needle(
    volume: u32,
    bytes: Bytes,
    entry: IndexEntry,
    key: Option<u64>,
) -> Result<Needle, ApiError> {
    let (needle, _flags) = haystack::format::decode_needle(bytes.into(), volume, entry.offset)
        .map_err(|e| {
            tracing::error!(volume, offset = entry.offset, error = %e, "warm needle failed its checks");
            ApiError::Unavailable(format!("the needle of volume {volume} failed its checks: {e}"))
        })?;
    if key.is_some_and(|key| key != needle.key) || needle.key != entry.key {
        tracing::error!(
            volume,
            offset = entry.offset,
            index_key = entry.key,
            needle_key = needle.key,
            "warm index points at another needle"
        );
        return Err(ApiError::Unavailable(format!(
            "volume {volume}'s index points at another needle"
        )));
    }
    Ok(needle)
}

/// The index entry of `key` from a fresh journal holder.
async fn lookup(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    nodes: &HashMap<String, NodeRecord>,
    key: u64,
) -> Result<IndexEntry, ApiError> {
    let deadline = Duration::from_millis(state.config.warm_read_deadline_ms);
    let mut last = String::from("no fresh journal holder is up");
    let holders = up_nodes(warm.fresh_holders(), nodes, state.next_read_rotation());
    for holder in holders {
        let asked = async {
            let address = state.read_address(holder).map_err(|e| e.to_string())?;
            let lookup = state
                .warm_reader
                .lookup(&address, vid, warm.generation, key);
            within(deadline, lookup).await
        };
        match asked.await {
            Ok(KeyLookup::Live(entry)) => return Ok(entry),
            Ok(KeyLookup::Deleted | KeyLookup::NotFound) => return Err(ApiError::NotFound),
            Err(e) => {
                tracing::info!(volume = vid, holder = %holder.id, error = %e, "index lookup failed");
                last = format!("{}: {e}", holder.id);
            }
        }
    }
    Err(ApiError::Unavailable(format!(
        "no journal holder of volume {vid} answered ({last})"
    )))
}

/// The bytes at `entry` of the volume's data, block by block; whether a
/// backoff node decoded any of them.
pub(crate) async fn read_data(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    nodes: &HashMap<String, NodeRecord>,
    entry: IndexEntry,
) -> Result<(Bytes, bool), ApiError> {
    let reads = block_reads(vid, warm, entry)?;
    let single = reads.len() == 1;
    let mut out = BytesMut::new();
    let mut degraded = false;
    for (read, holder) in reads {
        let block = read.block;
        let bytes = if warm.is_damaged(block.stripe, block.block) {
            // Recorded lost or corrupt: decode first (until the block is
            // rebuilt and the record cleared); the block itself only if
            // decoding fails (its file may be back).
            match reconstruct(state, warm, nodes, read).await {
                Ok(bytes) => {
                    degraded = true;
                    bytes
                }
                Err(decode) => direct_read(state, warm, nodes, holder, read)
                    .await
                    .map_err(|_| decode)?,
            }
        } else {
            match direct_read(state, warm, nodes, holder, read).await {
                Ok(bytes) => bytes,
                Err(why) => {
                    tracing::info!(volume = vid, stripe = block.stripe, block = block.block,
                        node = %holder, why = %why, "warm block read failed; asking a backoff node");
                    state.metrics.replica_failure("warm_read");
                    degraded = true;
                    reconstruct(state, warm, nodes, read).await?
                }
            }
        };
        if single {
            // The common case: one block holds the needle; no copy.
            return Ok((bytes, degraded));
        }
        if out.is_empty() {
            out.reserve(entry.size_bytes as usize);
        }
        out.extend_from_slice(&bytes);
    }
    Ok((out.freeze(), degraded))
}

/// The range reads of the blocks that hold the bytes at `entry` of volume
/// `vid`'s data, in order, each with the node of its block.
fn block_reads(
    vid: u32,
    warm: &WarmVolume,
    entry: IndexEntry,
) -> Result<Vec<(RangeRead, &str)>, ApiError> {
    let layout = warm
        .geometry
        .layout()
        .map_err(|e| ApiError::Internal(format!("volume {vid}: {e}")))?;
    let segments = layout
        .segments(entry.offset, u64::from(entry.size_bytes))
        .map_err(|e| ApiError::Internal(format!("volume {vid}: {e}")))?;
    segments
        .into_iter()
        .map(|segment| {
            let block = BlockId {
                volume: vid,
                generation: warm.generation,
                stripe: segment.stripe,
                block: segment.block as u32,
            };
            let holder = warm
                .stripes
                .get(segment.stripe as usize)
                .and_then(|s| s.get(segment.block))
                .ok_or_else(|| {
                    ApiError::Internal(format!("volume {vid} has no block {block:?}"))
                })?;
            let read = RangeRead {
                block,
                geometry: warm.geometry,
                offset: segment.block_offset,
                len: segment.len,
            };
            Ok((read, holder.as_str()))
        })
        .collect()
}

/// The needle at `entry` of volume `vid` (key `key`), whose blocks passed
/// their checksums but not the needle's: one block holds wrong bytes under
/// good checksums. Each block's part is decoded in turn on a backoff node
/// from the rest of its stripe, in place of what the block itself gave;
/// the block whose decode makes the needle check out is reported damaged.
/// (Decoding a block's part reads the same range of the others, so only
/// the bad block's own decode comes out right.)
async fn decode_the_bad_block(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    nodes: &HashMap<String, NodeRecord>,
    entry: IndexEntry,
    key: u64,
) -> Result<Needle, ApiError> {
    let reads = block_reads(vid, warm, entry)?;
    let mut own = Vec::with_capacity(reads.len());
    for (read, holder) in &reads {
        let bytes = direct_read(state, warm, nodes, holder, *read)
            .await
            .map_err(ApiError::Unavailable)?;
        own.push(bytes);
    }
    for (suspect, (read, holder)) in reads.iter().enumerate() {
        let decoded = reconstruct(state, warm, nodes, *read).await?;
        let mut bytes = BytesMut::with_capacity(entry.size_bytes as usize);
        for (at, part) in own.iter().enumerate() {
            bytes.extend_from_slice(if at == suspect { &decoded } else { part });
        }
        if let Ok(needle) = check_needle(vid, bytes.freeze(), entry, Some(key)) {
            tracing::error!(volume = vid, stripe = read.block.stripe, block = read.block.block,
                node = %holder, "block bytes differ from their decode under good checksums");
            let why = "its bytes differ from their decode from the rest of the stripe";
            report_block(state, warm, read.block, holder, why, true).await;
            return Ok(needle);
        }
    }
    Err(ApiError::Unavailable(
        "no one block's decode makes the needle check out".into(),
    ))
}

/// `read` from `holder`, the node of its block, within the warm read
/// deadline; an answer that the block is damaged is reported.
async fn direct_read(
    state: &AppState,
    warm: &WarmVolume,
    nodes: &HashMap<String, NodeRecord>,
    holder: &str,
    read: RangeRead,
) -> Result<Bytes, String> {
    let node = nodes
        .get(holder)
        .filter(|n| n.is_up())
        .ok_or_else(|| format!("{holder} is down"))?;
    let address = state.read_address(node).map_err(|e| e.to_string())?;
    let deadline = Duration::from_millis(state.config.warm_read_deadline_ms);
    match tokio::time::timeout(deadline, state.warm_reader.read_range(&address, &read)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            // Reported outside the deadline: it is the block's answer.
            if e.is_block_damage() {
                report_block(state, warm, read.block, holder, &e.to_string(), false).await;
            }
            Err(e.to_string())
        }
        Err(_) => Err(no_answer(deadline)),
    }
}

/// `answer`'s result within `deadline`, its error as text.
async fn within<T, E: std::fmt::Display>(
    deadline: Duration,
    answer: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, answer).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(no_answer(deadline)),
    }
}

fn no_answer(deadline: Duration) -> String {
    format!("no answer within {} ms", deadline.as_millis())
}

/// Decodes `read` on a backoff node from the rest of its stripe.
async fn reconstruct(
    state: &AppState,
    warm: &WarmVolume,
    nodes: &HashMap<String, NodeRecord>,
    read: RangeRead,
) -> Result<Bytes, ApiError> {
    let url_of = |id: &str| up_url(nodes, id);
    let (stripe, target) = (read.block.stripe, read.block.block);
    let others: Vec<Option<String>> = warm.stripes[stripe as usize]
        .iter()
        .zip(0u32..)
        .map(|(id, block)| (block != target).then(|| url_of(id)).flatten())
        .collect();
    // Fewer blocks on up nodes than a decode needs: no backoff node can
    // help (a datacenter down); say so now, and the geo layer is next.
    let available = others.iter().flatten().count();
    let needed = usize::from(read.geometry.data_blocks);
    if available < needed {
        return Err(ApiError::Unavailable(format!(
            "stripe {stripe} of volume {} has {available} other blocks on up nodes; {needed} \
             are needed",
            read.block.volume
        )));
    }
    // Without the blocks recorded with wrong bytes first; then, if the
    // others cannot do it (lost files are not known until read), with
    // them: the needle's check still guards what is served.
    let trusted = decode_sources(warm, stripe, &[target], url_of);
    let trusted_count = trusted.iter().flatten().count();
    let mut tries = vec![others];
    if trusted_count < available && trusted_count >= needed {
        tries.insert(0, trusted);
    }
    let backoffs = up_nodes(
        nodes
            .values()
            .filter(|n| n.role == NodeRole::Backoff)
            .map(|n| n.id.as_str()),
        nodes,
        state.next_read_rotation(),
    );
    let home = warm.home_datacenter(|id| nodes.get(id).map(|n| n.datacenter.clone()));
    let backoffs = super::coordinate::local_first(&backoffs, &home);
    let timeout = Duration::from_millis(state.config.replica_timeout_ms);
    let mut last = String::from("no backoff node is up");
    for sources in tries {
        let request = ReconstructRequest {
            block: read.block,
            geometry: read.geometry,
            offset: read.offset,
            len: read.len,
            sources,
        };
        for backoff in &backoffs {
            let decode = async {
                let address = state.read_address(backoff).map_err(|e| e.to_string())?;
                within(timeout, state.warm_reader.reconstruct(&address, &request)).await
            };
            match decode.await {
                Ok(decoded) => {
                    for (stripe, block) in decoded.failed {
                        // Only blocks of this stripe, as the record has them.
                        let node = warm
                            .stripes
                            .get(stripe as usize)
                            .filter(|_| stripe == read.block.stripe)
                            .and_then(|s| s.get(block as usize));
                        let Some(node) = node else { continue };
                        let failed = BlockId {
                            stripe,
                            block,
                            ..read.block
                        };
                        let why = "backoff read failed";
                        report_block(state, warm, failed, node, why, false).await;
                    }
                    return Ok(decoded.bytes);
                }
                Err(e) => {
                    tracing::warn!(volume = read.block.volume, backoff = %backoff.id, error = %e,
                        "backoff decode failed");
                    last = format!("{}: {e}", backoff.id);
                }
            }
        }
    }
    Err(ApiError::Unavailable(format!(
        "stripe {stripe} of volume {} could not be read or decoded ({last})",
        read.block.volume
    )))
}

/// The base URL of node `id`, if it is up.
pub(crate) fn up_url(nodes: &HashMap<String, NodeRecord>, id: &str) -> Option<String> {
    nodes
        .get(id)
        .filter(|n| n.is_up())
        .map(NodeRecord::base_url)
}

/// The base URL of each block of `stripe` that a decode may read, in block
/// order: `None` for the blocks of `skip`, those whose node `url_of` does
/// not name (down), and those recorded with wrong bytes under checksums
/// that pass ([`crate::directory::types::DamagedBlock::silent`]), so that
/// nothing decoded from them is written or served. (A block with other
/// damage stays a source: every chunk read from it is checked.)
pub(crate) fn decode_sources(
    warm: &WarmVolume,
    stripe: u64,
    skip: &[u32],
    url_of: impl Fn(&str) -> Option<String>,
) -> Vec<Option<String>> {
    warm.stripes
        .get(stripe as usize)
        .map(|members| {
            members
                .iter()
                .zip(0u32..)
                .map(|(node, block)| {
                    let usable = !skip.contains(&block) && !warm.is_silently_damaged(stripe, block);
                    usable.then(|| url_of(node)).flatten()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reports a block that failed a read (`silent`: one whose bytes are wrong
/// under good checksums), unless the cached record has it so.
async fn report_block(
    state: &AppState,
    warm: &WarmVolume,
    block: BlockId,
    node: &str,
    why: &str,
    silent: bool,
) {
    let known = if silent {
        warm.is_silently_damaged(block.stripe, block.block)
    } else {
        warm.is_damaged(block.stripe, block.block)
    };
    if known {
        return;
    }
    let request = DamagedBlockRequest {
        generation: block.generation,
        stripe: block.stripe,
        block: block.block,
        node: node.to_owned(),
        reason: why.to_owned(),
        silent,
    };
    match state
        .directory
        .report_damaged_block(block.volume, &request)
        .await
    {
        Ok(volume) => {
            state.cache.store_volume(volume);
        }
        Err(e) => {
            tracing::warn!(volume = block.volume, error = %e, "reporting a damaged block failed")
        }
    }
}

/// Deletes `id` from warm `volume`: `204` once a quorum of the journal
/// holders synced its tombstone and the others are marked stale.
pub(crate) async fn delete(
    state: &Arc<AppState>,
    volume: &LogicalVolume,
    id: BlobId,
) -> Result<(), ApiError> {
    // The cookie lives in the needle: a wrong one is a 404 and writes nothing.
    read_needle(state, volume, id).await?;
    tombstone(state, volume.id, warm_record(volume)?, &[id.key]).await
}

/// Appends the tombstones of `keys` (1 to [`f4::api::PAGE_MAX`]) to the
/// journal of `warm`, volume `vid`: `Ok` once a quorum of its holders
/// synced them and every other holder is marked stale (it merges the
/// others' journals before it is consulted again).
pub(crate) async fn tombstone(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    keys: &[u64],
) -> Result<(), ApiError> {
    let nodes = state.cache.nodes(false).await?;
    let deadline = Duration::from_millis(state.config.replica_timeout_ms);
    let results = futures::future::join_all(warm.journal_holders.iter().map(|holder| {
        let node = nodes.get(holder).filter(|n| n.is_up());
        let http = state.warm_http.clone();
        async move {
            let node = node.ok_or_else(|| "node down".to_owned())?;
            StorageClient::from_http(&node.base_url(), http)
                .with_timeout(deadline)
                .tombstones(vid, warm.generation, keys)
                .await
                .map_err(|e| e.to_string())
        }
    }))
    .await;
    let majority = warm.journal_holders.len() / 2 + 1;
    let quorum = f4::node::seal::TOMBSTONE_QUORUM.min(majority);
    let mut synced = 0;
    let mut missed = Vec::new();
    for (holder, result) in warm.journal_holders.iter().zip(results) {
        match result {
            Ok(()) => synced += 1,
            Err(why) => {
                tracing::warn!(volume = vid, holder = %holder, why = %why, "tombstone failed");
                missed.push((holder, why));
            }
        }
    }
    if synced < quorum {
        return Err(ApiError::Unavailable(format!(
            "{synced} of volume {vid}'s {} journal holders took the delete; {quorum} are needed",
            warm.journal_holders.len()
        )));
    }
    // Marked even if already stale: the mark moves the epoch, so a merge
    // running now does not clear a holder that lacks these tombstones.
    let first = keys.first().map_or_else(String::new, |k| format_key(*k));
    for (holder, why) in &missed {
        let reason = format!(
            "missed {} tombstone(s) of volume {vid} from key {first}: {why}",
            keys.len()
        );
        match state
            .directory
            .mark_holder_stale(vid, holder, &reason)
            .await
        {
            Ok(marked) => {
                state.cache.store_volume(marked);
            }
            Err(e) => {
                return Err(ApiError::Unavailable(format!(
                    "journal holder {holder} missed the delete and could not be marked stale: {e}"
                )));
            }
        }
    }
    if !missed.is_empty() {
        // A holder that missed the delete may still answer lookups: no
        // router may go on taking it for fresh.
        every_router_reads_afresh(state, vid, None).await;
    }
    Ok(())
}
