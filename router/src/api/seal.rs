//! `POST /admin/volumes/{id}/seal`: moves one locked volume into the warm
//! tier (the primitive the migrator drives, [`super::migrate`]; this route
//! also claims the volume's migration job first), in the order write,
//! verify, flip, wait, delete:
//!
//! 1. the directory starts an attempt under a new encode generation (the
//!    volume turns `sealing`: reads stay hot, deletes answer `503` and are
//!    retried by their clients);
//! 2. a wait of the replica timeout lets deletes already sent to the hot
//!    replicas land, so the replica copied next holds every acknowledged
//!    delete (one that missed any is never the source); every replica is
//!    locked at its store;
//! 3. an f4 storage node copies a fresh, locked replica, seals its live
//!    needles and cuts them into blocks; the directory places the blocks
//!    (14 racks) and journal holders; the node sends them out;
//! 4. every live needle is read back through the warm read path;
//! 5. the directory flips the volume to `warm`;
//! 6. after the routers' cache lifetime, the hot replicas are retired.
//!
//! A failure before the flip aborts the attempt: the volume is `locked`
//! again and its hot replicas serve as before. The attempt runs on a task
//! of its own, so a client that hangs up does not stop it halfway; a process
//! that dies halfway leaves the volume `sealing` (hot reads go on, deletes
//! wait), and its job's claim runs out: the next migration pass starts a new
//! attempt (or, past the flip, only retires the hot replicas).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use f4::api::{DistributeRequest, SealRequest};
use f4::client::StorageClient;

use super::error::ApiError;
use super::state::AppState;
use super::warm::{check_needle, read_data};
use crate::directory::types::{MigrationStep, PlaceRequest};
use crate::directory::{LogicalVolume, NodeRecord, NodeRole, VolumeState, WarmVolume};

/// What a seal did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealReport {
    /// The volume, now warm.
    pub volume: LogicalVolume,
    /// Live needles sealed and read back.
    pub needles: u64,
    /// Needles dropped as deleted.
    pub dropped: u64,
    /// Hot replicas retired.
    pub retired_replicas: usize,
}

impl SealReport {
    /// The report of a volume warm already, `retired_replicas` retired now.
    pub(crate) fn warm(volume: LogicalVolume, retired_replicas: usize) -> SealReport {
        SealReport {
            needles: volume.warm.as_ref().map_or(0, |w| w.needle_count),
            volume,
            dropped: 0,
            retired_replicas,
        }
    }
}

/// `POST /admin/volumes/{id}/seal`.
pub(crate) async fn seal_volume(
    State(state): State<Arc<AppState>>,
    Path(vid): Path<String>,
) -> Result<Json<SealReport>, ApiError> {
    let vid: u32 = vid
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("volume id {vid:?} is not a u32")))?;
    let volume = known_volume(&state, vid).await?;
    check_sealable(&volume)?;
    if volume.state == VolumeState::Warm {
        // Nothing to do, and no job to record.
        return Ok(Json(SealReport::warm(volume, 0)));
    }
    match super::migrate::claim_and_seal(&state, "router", vid).await {
        Some(result) => result.map(Json),
        None => Err(ApiError::Busy(format!(
            "volume {vid} is being migrated by a migrator; retry later"
        ))),
    }
}

/// Volume `vid` from the directory; an unknown one is a `400`.
pub(crate) async fn known_volume(state: &AppState, vid: u32) -> Result<LogicalVolume, ApiError> {
    state.directory.volume(vid).await.map_err(|e| {
        if e.is_not_found() {
            ApiError::BadRequest(format!("unknown volume {vid}"))
        } else {
            ApiError::Directory(e)
        }
    })
}

/// A volume a seal may start on: `locked`, `sealing` (a new attempt) or
/// `warm` (nothing to do).
fn check_sealable(volume: &LogicalVolume) -> Result<(), ApiError> {
    if matches!(
        volume.state,
        VolumeState::Locked | VolumeState::Sealing | VolumeState::Warm
    ) {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "volume {} is {}; only a locked volume is sealed",
        volume.id, volume.state
    )))
}

/// Seals `volume` as the directory has it (the steps of the module doc),
/// reporting each step it reaches on `steps`. A warm volume answers at
/// once; only a locked (or sealing) one is sealed.
pub(crate) async fn seal(
    state: Arc<AppState>,
    volume: LogicalVolume,
    steps: watch::Sender<MigrationStep>,
) -> Result<SealReport, ApiError> {
    if volume.state == VolumeState::Warm {
        return Ok(SealReport::warm(volume, 0));
    }
    check_sealable(&volume)?;
    let vid = volume.id;
    let begun = state.directory.begin_seal(vid).await?;
    let generation = begun.last_generation;
    tracing::info!(volume = vid, generation, "sealing");
    // On a task of its own: a client that hangs up does not cut the seal
    // short between its steps (the attempt finishes, or is aborted).
    let task = tokio::spawn(async move {
        match attempt(&state, vid, generation, &steps).await {
            Ok(report) => Ok(report),
            Err((error, sealer)) => {
                tracing::warn!(volume = vid, generation, error = %error, "seal failed; aborting");
                if let Some(sealer) = sealer {
                    let _ = sealer.discard(vid, generation).await;
                }
                if let Err(e) = state.directory.abort_seal(vid, generation).await {
                    tracing::warn!(volume = vid, error = %e, "aborting the seal failed");
                }
                Err(error)
            }
        }
    });
    match task.await {
        Ok(result) => result,
        Err(e) => Err(ApiError::Internal(format!("seal task: {e}"))),
    }
}

type Failed = (ApiError, Option<StorageClient>);

async fn attempt(
    state: &AppState,
    vid: u32,
    generation: u64,
    steps: &watch::Sender<MigrationStep>,
) -> Result<SealReport, Failed> {
    let plain = |e: ApiError| (e, None);
    steps.send_replace(MigrationStep::Encoding);
    tokio::time::sleep(Duration::from_millis(state.config.replica_timeout_ms)).await;
    let volume = state
        .directory
        .volume(vid)
        .await
        .map_err(|e| plain(e.into()))?;
    let nodes = state.cache.nodes(true).await.map_err(plain)?;
    let source = volume
        .fresh_replicas()
        .filter(|r| !volume.missed_delete(r))
        .find_map(|r| nodes.get(r).filter(|n| n.is_up()))
        .ok_or_else(|| {
            plain(ApiError::Unavailable(format!(
                "no fresh replica of volume {vid} is up to seal from"
            )))
        })?;
    // Every replica is locked at its store (the source must be): the copy
    // needs a locked replica, and only locked replicas are retired later.
    for replica in &volume.replicas {
        let Some(node) = nodes.get(replica).filter(|n| n.is_up()) else {
            continue;
        };
        let locked = match state.store_for_writes(node) {
            Ok(store) => store
                .lock_volume(vid)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match locked {
            Ok(()) => {}
            Err(e) if node.id == source.id => {
                return Err(plain(ApiError::Unavailable(format!(
                    "locking {}: {e}",
                    source.id
                ))));
            }
            Err(e) => tracing::warn!(volume = vid, replica = %node.id, error = %e,
                "locking a replica failed; it will not be retired"),
        }
    }
    // Seals of different volumes run on different nodes (one at a time each).
    let mut cell: Vec<&NodeRecord> = nodes
        .values()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up())
        .collect();
    cell.sort_by(|a, b| a.id.cmp(&b.id));
    let sealer_node = *cell
        .get(vid as usize % cell.len().max(1))
        .ok_or_else(|| plain(ApiError::Unavailable("no f4 storage node is up".into())))?;
    let sealer = StorageClient::from_http(&sealer_node.base_url(), state.warm_http.clone());
    let failed = |e: ApiError| (e, Some(sealer.clone()));
    let prepared = sealer
        .seal(&SealRequest {
            volume: vid,
            generation,
            source: source.base_url(),
            max_block_size_bytes: state.config.max_block_size_bytes,
        })
        .await
        .map_err(|e| {
            failed(ApiError::Unavailable(format!(
                "sealing on {}: {e}",
                sealer_node.id
            )))
        })?;
    let placed = state
        .directory
        .place_warm(
            vid,
            &PlaceRequest {
                generation,
                geometry: prepared.geometry,
                needle_count: prepared.needles,
            },
        )
        .await
        .map_err(|e| failed(e.into()))?;
    let warm = placed
        .warm
        .clone()
        .ok_or_else(|| failed(ApiError::Internal("placement without a record".into())))?;
    let url = |id: &String| -> Result<String, Failed> {
        nodes
            .get(id)
            .filter(|n| n.is_up())
            .map(NodeRecord::base_url)
            .ok_or_else(|| {
                failed(ApiError::Unavailable(format!(
                    "placed on {id}, which is down"
                )))
            })
    };
    let distribute = DistributeRequest {
        stripes: warm
            .stripes
            .iter()
            .map(|s| s.iter().map(url).collect::<Result<_, _>>())
            .collect::<Result<_, _>>()?,
        holders: warm
            .journal_holders
            .iter()
            .map(url)
            .collect::<Result<_, _>>()?,
    };
    sealer
        .distribute(vid, generation, &distribute)
        .await
        .map_err(|e| failed(ApiError::Unavailable(format!("distributing: {e}"))))?;
    steps.send_replace(MigrationStep::Verifying);
    let verified = verify(state, vid, &warm, &nodes)
        .await
        .map_err(|e| (e, None))?;
    if verified != prepared.needles {
        return Err((
            ApiError::Unavailable(format!(
                "{verified} needles read back of the {} sealed",
                prepared.needles
            )),
            None,
        ));
    }
    // A hot delete that was under way when the seal began may have marked
    // the source as having missed it only now: its copy may still hold
    // that BLOB, so the attempt is abandoned (the volume stays hot).
    let now = state
        .directory
        .volume(vid)
        .await
        .map_err(|e| (e.into(), None))?;
    if now.missed_delete(&source.id) {
        return Err((
            ApiError::Unavailable(format!(
                "{} missed a delete while it was sealed; try again",
                source.id
            )),
            None,
        ));
    }
    steps.send_replace(MigrationStep::Flipping);
    let committed = state
        .directory
        .commit_warm(vid, generation)
        .await
        .map_err(|e| (e.into(), None))?;
    tracing::info!(
        volume = vid,
        generation,
        needles = verified,
        "volume is warm"
    );
    // Routers may serve reads from their cached (hot) entry until it
    // expires; only then do the hot replicas go.
    let retired = drain_and_retire(state, &committed, steps).await;
    state.cache.store_volume(committed.clone());
    Ok(SealReport {
        volume: committed,
        needles: verified,
        dropped: prepared.dropped,
        retired_replicas: retired,
    })
}

/// After a flip: waits for routers' cached (hot) entries to expire, then
/// retires the hot replicas of warm `volume` (idempotent: a store without
/// the replica answers that it is gone); the number retired.
pub(crate) async fn drain_and_retire(
    state: &AppState,
    volume: &LogicalVolume,
    steps: &watch::Sender<MigrationStep>,
) -> usize {
    let vid = volume.id;
    steps.send_replace(MigrationStep::Draining);
    tokio::time::sleep(Duration::from_millis(state.config.directory_cache_ttl_ms)).await;
    steps.send_replace(MigrationStep::Deleting);
    let nodes = match state.cache.nodes(true).await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::warn!(volume = vid, error = %e, "no node list; replicas not retired");
            return 0;
        }
    };
    let mut retired = 0;
    for replica in &volume.replicas {
        let Some(node) = nodes.get(replica).filter(|n| n.is_up()) else {
            tracing::warn!(volume = vid, replica = %replica, "replica down; not retired");
            continue;
        };
        match state.store_for_writes(node) {
            Ok(store) => match store.retire_volume(vid).await {
                Ok(()) => retired += 1,
                Err(e) => tracing::warn!(volume = vid, replica = %replica, error = %e,
                    "retiring a hot replica failed"),
            },
            Err(e) => tracing::warn!(volume = vid, error = %e, "store client"),
        }
    }
    retired
}

/// Reads every live needle back through the warm read path (index on a
/// holder, block ranges, needle checks); the number read.
async fn verify(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    nodes: &std::collections::HashMap<String, NodeRecord>,
) -> Result<u64, ApiError> {
    let holder = warm
        .journal_holders
        .first()
        .and_then(|h| nodes.get(h))
        .ok_or_else(|| ApiError::Unavailable("no journal holder".into()))?;
    let client = StorageClient::from_http(&holder.base_url(), state.warm_http.clone());
    let mut after = None;
    let mut count = 0;
    loop {
        let page = client
            .live_entries(vid, warm.generation, after)
            .await
            .map_err(|e| ApiError::Unavailable(format!("listing the index: {e}")))?;
        for entry in page.entries {
            let (bytes, degraded) = read_data(state, vid, warm, nodes, entry).await?;
            if degraded {
                return Err(ApiError::Unavailable(format!(
                    "needle {:x} could only be decoded, not read",
                    entry.key
                )));
            }
            check_needle(vid, bytes, entry, Some(entry.key))?;
            count += 1;
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(count),
        }
    }
}
