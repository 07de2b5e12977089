//! Sealing on a storage node: the control plane picks a node, a locked hot
//! replica and an encode generation; the node plans the seal (`POST
//! /seal`: the live needles, their warm index, the volume's geometry), the
//! directory places the blocks, and the node streams the replica's needles,
//! each checked, through the encoder straight to the blocks' nodes, then
//! sends the index to the journal holders (`POST /seal/{vid}/{gen}/
//! distribute`; [`super::encode`]).
//!
//! The staging keeps only the plan (an index's worth of bytes, no copy of
//! the volume) until the distribution succeeds or the attempt is
//! discarded; a restart removes it (the attempt is then started over under
//! a new generation).

use std::path::PathBuf;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::NodeState;
use super::encode::{LiveSource, StagedPlan, encode_to_nodes, every_block, write_plan};
use crate::api::{DistributeRequest, PruneReport, PruneRequest, SealPrepared, SealRequest};
use crate::block::{generation_of, generation_prefix};
use crate::client::StorageClient;
use crate::format::Geometry;
use crate::http::{ApiError, JsonBody, io};
use haystack::client::StoreClient;

/// Data blocks per stripe, `k`.
pub const DATA_BLOCKS: u8 = 10;
/// Parity blocks per stripe, `m`.
pub const PARITY_BLOCKS: u8 = 4;
/// Journal holders of a volume: `m + 1`.
pub const JOURNAL_HOLDERS: usize = PARITY_BLOCKS as usize + 1;
/// Journal holders of a volume in another datacenter, when there is one
/// (f4 keeps three copies of the index and journal remotely).
pub const REMOTE_JOURNAL_HOLDERS: usize = 3;
/// Holders that must sync a tombstone before the delete is acknowledged
/// (every other holder is marked stale), at most a majority of them: a
/// majority of a cell's [`JOURNAL_HOLDERS`], or the
/// [`REMOTE_JOURNAL_HOLDERS`] alone while the volume's own datacenter is
/// down.
pub const TOMBSTONE_QUORUM: usize = 3;
/// Checksum chunk of every block. A range read reads and verifies every
/// chunk it touches: with 64 KiB chunks (the coding crate's default) a
/// 64 KiB BLOB's range read 128–192 KiB; with 16 KiB, 80–96 KiB, for
/// checksums of 4 bytes per 16 KiB (0.025% of the block).
pub const CHUNK_SIZE_BYTES: u32 = 16 * 1024;

/// The geometry a seal gives a volume of `volume_len_bytes` cut into
/// blocks of at most `max_block_size_bytes`.
pub fn seal_geometry(volume_len_bytes: u64, max_block_size_bytes: u64) -> crate::Result<Geometry> {
    Geometry::choose(
        volume_len_bytes,
        max_block_size_bytes,
        DATA_BLOCKS,
        PARITY_BLOCKS,
        CHUNK_SIZE_BYTES,
    )
}

/// What `POST /seal` leaves for the distribution, beside the plan.
#[derive(Serialize, Deserialize)]
struct Staged {
    request: SealRequest,
    prepared: SealPrepared,
}

fn staging(state: &NodeState, volume: u32, generation: u64) -> PathBuf {
    state
        .inner
        .staging_dir
        .join(generation_prefix(volume, generation))
}

/// `POST /volumes/{vid}/prune`: removes the files (blocks, index, journal,
/// staging) of every generation of the volume but `keep`.
pub(super) async fn prune(
    State(state): State<NodeState>,
    path: Result<Path<u32>, PathRejection>,
    JsonBody(request): JsonBody<PruneRequest>,
) -> Result<Json<PruneReport>, ApiError> {
    let Path(volume) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let removed = state
        .blocking(move |inner| {
            let mut removed = 0;
            for dir in [&inner.blocks_dir, &inner.volumes_dir, &inner.staging_dir] {
                let before = removed;
                for entry in std::fs::read_dir(dir).map_err(io)? {
                    let entry = entry.map_err(io)?;
                    let name = entry.file_name();
                    let Some(generation) = name.to_str().and_then(|n| generation_of(n, volume))
                    else {
                        continue;
                    };
                    if Some(generation) == request.keep
                        || request.up_to.is_some_and(|last| generation > last)
                    {
                        continue;
                    }
                    let path = entry.path();
                    if entry.file_type().map_err(io)?.is_dir() {
                        std::fs::remove_dir_all(&path).map_err(io)?;
                    } else {
                        std::fs::remove_file(&path).map_err(io)?;
                    }
                    removed += 1;
                }
                // A directory that lost nothing needs no sync (on ext4 each
                // one is a journal commit, slow while writeback is busy).
                if removed > before {
                    haystack::file::sync_dir(dir).map_err(io)?;
                }
            }
            Ok(removed)
        })
        .await?;
    if removed > 0 {
        tracing::info!(volume, keep = ?request.keep, removed, "other generations pruned");
    }
    Ok(Json(PruneReport { removed }))
}

/// `POST /seal`: plans the seal of the source's locked replica in the
/// staging area. Answers the geometry and counts.
pub(super) async fn seal(
    State(state): State<NodeState>,
    JsonBody(request): JsonBody<SealRequest>,
) -> Result<Json<SealPrepared>, ApiError> {
    if request.generation == 0 {
        return Err(ApiError::bad_request("encode generation 0"));
    }
    if request.max_block_size_bytes == 0
        || request.max_block_size_bytes > state.config().max_block_size_bytes
    {
        return Err(ApiError::bad_request(format!(
            "the block size must be 1 to {} bytes",
            state.config().max_block_size_bytes
        )));
    }
    let _one_at_a_time = seal_permit(&state).await?;
    let dir = staging(&state, request.volume, request.generation);
    if tokio::fs::try_exists(&dir).await.map_err(io)? {
        tokio::fs::remove_dir_all(&dir).await.map_err(io)?;
    }
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    let prepared = async {
        let source = store_client(&state, &request.source)?;
        let planned = write_plan(
            &source,
            request.volume,
            request.generation,
            &StagedPlan::in_dir(&dir),
        )
        .await?;
        let geometry = seal_geometry(planned.data_len_bytes, request.max_block_size_bytes)?;
        let prepared = SealPrepared {
            geometry,
            needles: planned.needles,
            dropped: planned.dropped,
        };
        let staged = serde_json::to_vec(&Staged {
            request: request.clone(),
            prepared,
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
        tokio::fs::write(dir.join("seal.json"), staged)
            .await
            .map_err(io)?;
        Ok::<_, ApiError>(prepared)
    }
    .await;
    match prepared {
        Ok(prepared) => {
            tracing::info!(
                volume = request.volume,
                generation = request.generation,
                needles = prepared.needles,
                dropped = prepared.dropped,
                data_bytes = prepared.geometry.volume_len_bytes,
                block_bytes = prepared.geometry.block_size_bytes,
                "seal planned"
            );
            Ok(Json(prepared))
        }
        Err(error) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            Err(error)
        }
    }
}

/// One seal step at a time on a node: each streams a whole volume.
pub(super) async fn seal_permit(
    state: &NodeState,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state
        .inner
        .seal_permit
        .acquire()
        .await
        .map_err(|_| ApiError::internal("seal semaphore closed"))
}

fn store_client(state: &NodeState, url: &str) -> Result<StoreClient, ApiError> {
    let options = haystack::client::StoreClientOptions {
        transfer_timeout_ms: state.config().transfer_timeout_ms,
        ..Default::default()
    };
    StoreClient::from_http(state.inner.peers.clone(), url, options)
        .map_err(|e| ApiError::bad_request(format!("replica {url}: {e}")))
}

/// `POST /seal/{vid}/{gen}/distribute`: streams the planned volume's
/// needles from its replicas through the encoder to every block's node,
/// then sends the index to every holder; the staging is removed once all
/// succeeded.
pub(super) async fn distribute(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
    JsonBody(request): JsonBody<DistributeRequest>,
) -> Result<StatusCode, ApiError> {
    let (volume, generation) = super::handlers::params_of(path)?;
    let _one_at_a_time = seal_permit(&state).await?;
    let dir = staging(&state, volume, generation);
    let staged = match tokio::fs::read(dir.join("seal.json")).await {
        Ok(bytes) => serde_json::from_slice::<Staged>(&bytes)
            .map_err(|e| ApiError::internal(format!("the staged seal: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                crate::api::code::UNKNOWN_VOLUME,
                format!("no staged seal of volume {volume} generation {generation}"),
            ));
        }
        Err(e) => return Err(io(e)),
    };
    let geometry = staged.prepared.geometry;
    let stripes = geometry.layout()?.stripe_count().max(1);
    let blocks = usize::from(geometry.data_blocks) + usize::from(geometry.parity_blocks);
    if request.stripes.len() as u64 != stripes || request.stripes.iter().any(|s| s.len() != blocks)
    {
        return Err(ApiError::bad_request(format!(
            "the placement must name {blocks} nodes for each of the seal's {stripes} stripes"
        )));
    }
    let mut replicas = vec![store_client(&state, &staged.request.source)?];
    for url in &staged.request.fallbacks {
        replicas.push(store_client(&state, url)?);
    }
    let peers = state.inner.peers.clone();
    let runtime = tokio::runtime::Handle::current();
    let staged_plan = StagedPlan::in_dir(&dir);
    let stripes_to = request.stripes.clone();
    let bytes_per_second = request.bytes_per_second;
    // A thread of its own, not the IO pool: it runs as long as the volume
    // takes to stream, and waits on the network.
    let sent = tokio::task::spawn_blocking(move || {
        let source = LiveSource::open(
            volume,
            generation,
            geometry.block_size_bytes,
            &staged_plan,
            replicas,
            bytes_per_second,
            runtime.clone(),
        )?;
        encode_to_nodes(
            &runtime,
            &peers,
            volume,
            &source,
            generation,
            geometry,
            &every_block(&stripes_to),
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("the encoding task: {e}")))?
    .map_err(|error| match error {
        crate::Error::Io(e) => ApiError::peer(format!("streaming the blocks: {e}")),
        other => other.into(),
    })?;
    let index = StagedPlan::in_dir(&dir).index;
    for holder in &request.holders {
        StorageClient::from_http(holder, state.inner.peers.clone())
            .put_index(volume, generation, &index)
            .await
            .map_err(|e| ApiError::peer(format!("index to {holder}: {e}")))?;
    }
    tokio::fs::remove_dir_all(&dir).await.map_err(io)?;
    tracing::info!(
        volume,
        generation,
        stripes,
        bytes = sent,
        holders = request.holders.len(),
        "seal distributed"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /seal/{vid}/{gen}`: drops a staged attempt (nothing if none).
pub(super) async fn discard(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (volume, generation) = super::handlers::params_of(path)?;
    let dir = staging(&state, volume, generation);
    if tokio::fs::try_exists(&dir).await.map_err(io)? {
        tokio::fs::remove_dir_all(&dir).await.map_err(io)?;
    }
    Ok(StatusCode::NO_CONTENT)
}
