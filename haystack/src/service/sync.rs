//! Haystack bulk sync: `POST /volumes/{vid}/sync?from=URL` replaces this
//! node's replica with a copy of the replica at the store node `URL`.
//!
//! Only a locked or read-only peer replica is copied: a writable one could
//! take appends while its files stream, and its data and index files would
//! not match. The peer's file endpoint refuses a writable replica with
//! `409 read_only`, and so does this endpoint, before it writes anything.
//!
//! Steps: stream the peer's data and index files into the store's staging
//! paths (then `fsync` them), `install_volume` (durable rename and reopen),
//! then fetch the peer's deleted keys. Deletes still reach a locked replica,
//! and one that lands while the files stream may be missing from the copy.
//! The engine deletes only with a needle's cookie, which the deleted list
//! does not carry, so instead of replaying deletes the sync checks that
//! every key the peer lists as deleted is deleted in the copy, and copies
//! again (up to [`SYNC_ATTEMPTS`] times) if one is not. Deletes only ever
//! grow, so a copy that passes this check holds every delete the peer had
//! acknowledged when the check started.

use std::collections::HashSet;
use std::path::Path as FsPath;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::StoreNodeState;
use super::error::ApiError;
use super::handlers::volume_id;
use crate::VolumeStatus;
use crate::api::{VolumeFile, code};
use crate::client::{ClientError, StoreClient, StoreClientOptions};

/// Copies tried before a sync gives up on a peer that keeps deleting.
const SYNC_ATTEMPTS: u32 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncQuery {
    from: String,
}

/// Handler of `POST /volumes/{vid}/sync?from=URL`.
pub(crate) async fn sync_volume(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<SyncQuery>, QueryRejection>,
) -> Result<Json<VolumeStatus>, ApiError> {
    let volume = volume_id(path)?;
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("query must be exactly from=<peer URL>"))?;
    let config = state.config();
    let options = StoreClientOptions {
        request_timeout_ms: config.request_timeout_ms,
        transfer_timeout_ms: config.sync_timeout_ms,
        ..StoreClientOptions::default()
    };
    let peer = StoreClient::from_http(state.inner.peer_http.clone(), &query.from, options)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let deadline = Duration::from_millis(config.sync_timeout_ms);
    let result = tokio::time::timeout(deadline, async {
        // One bulk sync at a time: each moves a whole volume.
        let _guard = state.inner.sync_lock.lock().await;
        sync_from_peer(&state, volume, &peer).await
    })
    .await
    .unwrap_or_else(|_| Err(ApiError::timeout("bulk sync timed out")));
    match &result {
        Ok(status) => tracing::info!(volume, peer = peer.base_url(), ?status, "bulk sync done"),
        Err(e) => {
            tracing::warn!(volume, peer = peer.base_url(), error = %e.message, "bulk sync failed")
        }
    }
    result.map(Json)
}

async fn sync_from_peer(
    state: &StoreNodeState,
    volume: u32,
    peer: &StoreClient,
) -> Result<VolumeStatus, ApiError> {
    for attempt in 1..=SYNC_ATTEMPTS {
        let peer_status = peer.volume_status(volume).await.map_err(peer_error)?;
        if !peer_status.locked && !peer_status.read_only {
            return Err(ApiError::read_only(format!(
                "peer replica of volume {volume} is writable; bulk sync copies only locked or \
                 read-only replicas"
            )));
        }
        let (data_path, index_path) = state
            .blocking(move |store| Ok(store.staging_paths(volume)))
            .await?;
        let copied = async {
            download(peer, volume, VolumeFile::Data, &data_path).await?;
            download(peer, volume, VolumeFile::Index, &index_path).await
        }
        .await;
        if let Err(e) = copied {
            // Best effort: the next sync overwrites the staging files anyway.
            let _ = tokio::fs::remove_file(&data_path).await;
            let _ = tokio::fs::remove_file(&index_path).await;
            return Err(e);
        }
        let (status, local_deleted) = state
            .blocking(move |store| {
                let v = store.install_volume(volume)?;
                Ok((v.status(), v.deleted_keys()))
            })
            .await?;
        let peer_deleted = peer.deleted_keys(volume).await.map_err(peer_error)?;
        let local_deleted: HashSet<u64> = local_deleted.into_iter().collect();
        let missing = peer_deleted
            .iter()
            .filter(|k| !local_deleted.contains(k))
            .count();
        if missing == 0 {
            return Ok(status);
        }
        tracing::warn!(
            volume,
            attempt,
            missing,
            "peer deleted needles during sync; copying again"
        );
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code::PEER,
        format!("peer replica of volume {volume} kept changing during {SYNC_ATTEMPTS} copies"),
    ))
}

/// Streams one file of the peer's replica into `dest` and makes it durable.
async fn download(
    peer: &StoreClient,
    volume: u32,
    file: VolumeFile,
    dest: &FsPath,
) -> Result<u64, ApiError> {
    let response = peer
        .fetch_volume_file(volume, file)
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
            "{} file: got {written} of {expected} bytes",
            file.path_segment()
        )));
    }
    out.sync_all().await.map_err(|e| ApiError::io(&e))?;
    Ok(written)
}

/// Maps a failure to talk to the peer: a peer refusing because its replica
/// is writable stays `409 read_only`; anything else is `502 peer`.
fn peer_error(err: ClientError) -> ApiError {
    match err {
        ClientError::ReadOnly(message) => ApiError::read_only(format!("peer: {message}")),
        other => ApiError::peer(format!("peer: {other}")),
    }
}
