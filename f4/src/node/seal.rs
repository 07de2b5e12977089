//! Sealing on a storage node: the control plane picks a node, a locked hot
//! replica and an encode generation; the node copies the replica, seals its
//! live needles ([`crate::seal::seal_live_needles`]), cuts the data into
//! blocks ([`crate::block::encode_volume`]) under `staging/`, and then
//! sends each block and the index where the directory placed them.
//!
//! The staging holds a copy of the hot replica and the blocks until the
//! distribution succeeds or the attempt is discarded; a restart removes it
//! (the attempt is then started over under a new generation).

use std::path::PathBuf;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::{StreamExt, TryStreamExt};

use super::NodeState;
use crate::api::{DistributeRequest, SealPrepared, SealRequest};
use crate::block::encode_volume;
use crate::client::StorageClient;
use crate::format::Geometry;
use crate::http::{ApiError, JsonBody, io};
use crate::seal::seal_live_needles;
use crate::transfer::write_stream;
use haystack::api::VolumeFile;
use haystack::client::StoreClient;

/// Data blocks per stripe, `k`.
pub const DATA_BLOCKS: u8 = 10;
/// Parity blocks per stripe, `m`.
pub const PARITY_BLOCKS: u8 = 4;
/// Journal holders of a volume: `m + 1`.
pub const JOURNAL_HOLDERS: usize = PARITY_BLOCKS as usize + 1;
/// Checksum chunk of every block. A range read reads and verifies every
/// chunk it touches: with 64 KiB chunks (the coding crate's default) a
/// 64 KiB BLOB's range read 128–192 KiB; with 16 KiB, 80–96 KiB, for
/// checksums of 4 bytes per 16 KiB (0.025% of the block).
pub const CHUNK_SIZE_BYTES: u32 = 16 * 1024;
/// Blocks sent at once while distributing.
const SEND_CONCURRENCY: usize = 4;

fn staging(state: &NodeState, volume: u32, generation: u64) -> PathBuf {
    state
        .inner
        .staging_dir
        .join(format!("volume-{volume:010}.g{generation:016x}"))
}

/// `POST /seal`: copies the source's locked replica, seals it and cuts it
/// into blocks in the staging area. Answers the geometry and counts.
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
    let _one_at_a_time = state
        .inner
        .seal_permit
        .acquire()
        .await
        .map_err(|_| ApiError::internal("seal semaphore closed"))?;
    let dir = staging(&state, request.volume, request.generation);
    let hot = dir.join("hot");
    if tokio::fs::try_exists(&dir).await.map_err(io)? {
        tokio::fs::remove_dir_all(&dir).await.map_err(io)?;
    }
    tokio::fs::create_dir_all(&hot).await.map_err(io)?;
    let options = haystack::client::StoreClientOptions {
        transfer_timeout_ms: state.config().transfer_timeout_ms,
        ..Default::default()
    };
    let source = StoreClient::from_http(state.inner.peers.clone(), &request.source, options)
        .map_err(|e| ApiError::bad_request(format!("source {}: {e}", request.source)))?;
    let prepared = async {
        for (file, suffix) in [(VolumeFile::Data, "data"), (VolumeFile::Index, "index")] {
            let path = hot.join(format!("volume-{:010}.{suffix}", request.volume));
            copy_volume_file(&source, request.volume, file, &path).await?;
        }
        let volume = request.volume;
        let generation = request.generation;
        let max_block = request.max_block_size_bytes;
        let dir = dir.clone();
        state
            .blocking(move |_| {
                let options = haystack::VolumeOptions {
                    size_limit_bytes: u64::MAX,
                };
                let replica = haystack::Volume::open(&dir.join("hot"), volume, options)
                    .map_err(|e| ApiError::peer(format!("the copied replica: {e}")))?;
                let data = dir.join("warm.data");
                let index = dir.join("warm.index");
                let sealed = seal_live_needles(&replica, generation, &data, &index)?;
                drop(replica);
                std::fs::remove_dir_all(dir.join("hot")).map_err(io)?;
                let geometry = Geometry::choose(
                    sealed.data_len_bytes,
                    max_block,
                    DATA_BLOCKS,
                    PARITY_BLOCKS,
                    CHUNK_SIZE_BYTES,
                )?;
                let blocks = dir.join("blocks");
                std::fs::create_dir_all(&blocks).map_err(io)?;
                encode_volume(&data, volume, generation, geometry, &blocks)?;
                std::fs::remove_file(&data).map_err(io)?;
                Ok(SealPrepared {
                    geometry,
                    needles: sealed.needles,
                    dropped: sealed.dropped,
                })
            })
            .await
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
                "volume sealed into staging"
            );
            Ok(Json(prepared))
        }
        Err(error) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            Err(error)
        }
    }
}

/// Streams one file of a locked replica from its store node to `path`,
/// synced; its length must be what the store declared.
async fn copy_volume_file(
    source: &StoreClient,
    volume: u32,
    file: VolumeFile,
    path: &std::path::Path,
) -> Result<(), ApiError> {
    let answer = source
        .fetch_volume_file(volume, file)
        .await
        .map_err(|e| ApiError::peer(format!("fetching the replica's {file:?} file: {e}")))?;
    let answer_len = answer.content_length;
    write_stream(answer.into_stream(), path, answer_len)
        .await
        .map(drop)
        .map_err(|e| ApiError::peer(format!("the replica's {file:?} file: {e}")))
}

/// `POST /seal/{vid}/{gen}/distribute`: sends every staged block to its
/// node and the index to every holder; the staging is removed once all
/// succeeded.
pub(super) async fn distribute(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
    JsonBody(request): JsonBody<DistributeRequest>,
) -> Result<StatusCode, ApiError> {
    let (volume, generation) = super::handlers::params_of(path)?;
    let dir = staging(&state, volume, generation);
    if !tokio::fs::try_exists(dir.join("warm.index"))
        .await
        .map_err(io)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            crate::api::code::UNKNOWN_VOLUME,
            format!("no staged seal of volume {volume} generation {generation}"),
        ));
    }
    let total = request.stripes.iter().map(Vec::len).sum::<usize>();
    let mut sends = Vec::with_capacity(total);
    for (stripe, nodes) in request.stripes.iter().enumerate() {
        for (block, node) in nodes.iter().enumerate() {
            let name =
                crate::block::block_file_name(volume, generation, stripe as u64, block as u32);
            let path = dir.join("blocks").join(name);
            if !tokio::fs::try_exists(&path).await.map_err(io)? {
                return Err(ApiError::bad_request(format!(
                    "the placement names block {block} of stripe {stripe}, which the seal did \
                     not make"
                )));
            }
            sends.push((node.clone(), stripe as u64, block as u32, path));
        }
    }
    let mut staged = 0;
    let mut entries = tokio::fs::read_dir(dir.join("blocks")).await.map_err(io)?;
    while entries.next_entry().await.map_err(io)?.is_some() {
        staged += 1;
    }
    if staged != total {
        return Err(ApiError::bad_request(format!(
            "the placement names {total} blocks; the seal made {staged}"
        )));
    }
    let peers = state.inner.peers.clone();
    futures::stream::iter(sends)
        .map(|(node, stripe, block, path)| {
            let peers = peers.clone();
            async move {
                let client = StorageClient::from_http(&node, peers);
                client
                    .put_block(volume, generation, stripe, block, &path)
                    .await
                    .map_err(|e| ApiError::peer(format!("block {stripe}.{block} to {node}: {e}")))
            }
        })
        .buffer_unordered(SEND_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let index = dir.join("warm.index");
    for holder in &request.holders {
        StorageClient::from_http(holder, peers.clone())
            .put_index(volume, generation, &index)
            .await
            .map_err(|e| ApiError::peer(format!("index to {holder}: {e}")))?;
    }
    tokio::fs::remove_dir_all(&dir).await.map_err(io)?;
    tracing::info!(
        volume,
        generation,
        blocks = total,
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
