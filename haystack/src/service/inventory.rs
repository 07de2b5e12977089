//! What a store node offers its peers and the directory to compare and mend
//! replicas needle by needle (`docs/ARCHITECTURE.md`, "Store node HTTP API"):
//! paged listings of a replica's index and deleted keys, a digest of its
//! index, a needle's verified raw bytes, the repair of one needle from a
//! peer's copy, and the removal of a replica that never held a needle.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::StoreNodeState;
use super::error::ApiError;
use super::params::{volume_and_key, volume_id};
use crate::api::{
    DeletedPage, NeedleEntry, NeedlePage, NeedleRepairAnswer, PAGE_ENTRIES_MAX, PageQuery,
    ScrubPage, code, next_after, page_limit, parse_key,
};
use crate::client::{ClientError, StoreClient, StoreClientOptions};
use crate::error::Error;
use crate::repair::{InventoryDigest, NeedleRepair};

/// Peers a needle repair may ask, at most.
const REPAIR_PEERS_MAX: usize = 8;

/// `after` and `limit` of a page query, checked.
fn page_bounds(
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<(Option<u64>, usize), ApiError> {
    let Query(query) = query
        .map_err(|_| ApiError::bad_request("query may hold only after=<key> and limit=<n>"))?;
    let after = query
        .after
        .map(|text| {
            parse_key(&text)
                .ok_or_else(|| ApiError::bad_request("after must be 1-16 lowercase hex"))
        })
        .transpose()?;
    let limit = page_limit(query.limit, PAGE_ENTRIES_MAX).map_err(ApiError::bad_request)?;
    Ok((after, limit))
}

/// `GET /volumes/{vid}/needles?after=KEY&limit=N`: a page of the index.
pub(crate) async fn needle_page(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<NeedlePage>, ApiError> {
    let volume = volume_id(path)?;
    let (after, limit) = page_bounds(query)?;
    let entries = state
        .blocking(move |store| Ok(store.volume(volume)?.needle_entries(after, limit)))
        .await?;
    let next_after = next_after(&entries, limit, |e| e.key);
    let entries = entries
        .into_iter()
        .map(|e| NeedleEntry {
            key: e.key,
            offset: e.offset,
            size_bytes: e.size_bytes,
            deleted: e.deleted,
        })
        .collect();
    Ok(Json(NeedlePage {
        entries,
        next_after,
    }))
}

/// `GET /volumes/{vid}/deleted?after=KEY&limit=N`: a page of deleted keys.
pub(crate) async fn deleted_page(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<DeletedPage>, ApiError> {
    let volume = volume_id(path)?;
    let (after, limit) = page_bounds(query)?;
    let keys = state
        .blocking(move |store| Ok(store.volume(volume)?.deleted_keys_after(after, limit)))
        .await?;
    let next_after = next_after(&keys, limit, |&k| k);
    Ok(Json(DeletedPage { keys, next_after }))
}

/// Most needle bytes one scrub request reads.
pub const SCRUB_BYTES_MAX: u64 = 8 << 20;

/// `POST /volumes/{vid}/scrub?after=KEY&limit=N`: reads and checks up to
/// `limit` needles above `after` (at most [`SCRUB_BYTES_MAX`] of them).
pub(crate) async fn scrub(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<ScrubPage>, ApiError> {
    let volume = volume_id(path)?;
    let (after, limit) = page_bounds(query)?;
    let page = state
        .blocking(move |store| {
            Ok(store
                .volume(volume)?
                .scrub_needles(after, SCRUB_BYTES_MAX, limit))
        })
        .await?;
    if !page.corrupt.is_empty() {
        tracing::error!(
            volume,
            corrupt = page.corrupt.len(),
            "scrub found corrupt needles"
        );
    }
    Ok(Json(page))
}

/// `GET /volumes/{vid}/digest`: the digest of the replica's index.
pub(crate) async fn inventory_digest(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<InventoryDigest>, ApiError> {
    let volume = volume_id(path)?;
    let digest = state
        .blocking(move |store| Ok(store.volume(volume)?.inventory_digest()))
        .await?;
    Ok(Json(digest))
}

/// `GET /volumes/{vid}/needles/{key}/raw`: the needle's verified on-disk
/// bytes, deleted or not (for peers mending their copy).
pub(crate) async fn raw_needle(
    State(state): State<StoreNodeState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (volume, key) = volume_and_key(path)?;
    let raw = state
        .blocking(move |store| store.volume(volume)?.read_raw_needle(key))
        .await?;
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(raw.bytes.len())),
    ];
    Ok((headers, Body::from(raw.bytes)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepairQuery {
    /// Peer base URLs, comma-separated, asked in order.
    from: String,
}

/// Splits a comma-separated list of peer URLs into clients (at most `max`).
pub(crate) fn peer_clients(
    state: &StoreNodeState,
    list: &str,
    max: usize,
) -> Result<Vec<StoreClient>, ApiError> {
    let config = state.config();
    let options = StoreClientOptions {
        request_timeout_ms: config.request_timeout_ms,
        transfer_timeout_ms: config.sync_timeout_ms,
        ..StoreClientOptions::default()
    };
    let urls: Vec<&str> = list.split(',').filter(|u| !u.is_empty()).collect();
    if urls.len() > max {
        return Err(ApiError::bad_request(format!("at most {max} peers")));
    }
    urls.into_iter()
        .map(|url| {
            StoreClient::from_http(state.inner.peer_http.clone(), url, options.clone())
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .collect()
}

/// `POST /volumes/{vid}/needles/{key}/repair?from=URL[,URL...]`: if the
/// local copy of the needle fails its checks, takes the first peer copy
/// that passes them and writes it over the damaged one. `409 no_good_copy`
/// when every peer answered and none had a good copy; `502 peer` when a
/// peer could not be asked (nothing was written).
pub(crate) async fn repair_needle(
    State(state): State<StoreNodeState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<RepairQuery>, QueryRejection>,
) -> Result<Json<NeedleRepairAnswer>, ApiError> {
    let (volume, key) = volume_and_key(path)?;
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("query must be exactly from=<peer URLs>"))?;
    let peers = peer_clients(&state, &query.from, REPAIR_PEERS_MAX)?;
    let local = state
        .blocking(move |store| Ok(store.volume(volume)?.read_raw_needle(key)))
        .await?;
    match local {
        Ok(_) => {
            return Ok(Json(NeedleRepairAnswer {
                outcome: "already_good".into(),
                source: None,
            }));
        }
        Err(Error::Corrupt { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut answers = Vec::new();
    for peer in &peers {
        let bytes = match peer.raw_needle(volume, key).await {
            Ok(bytes) => bytes,
            Err(e @ (ClientError::NotFound | ClientError::Corrupt(_))) => {
                answers.push(format!("{}: {e}", peer.base_url()));
                continue;
            }
            Err(e) => {
                return Err(ApiError::peer(format!(
                    "needle {key:x} of volume {volume}: {} could not be asked: {e}",
                    peer.base_url()
                )));
            }
        };
        let outcome = state
            .blocking(move |store| store.volume(volume)?.repair_needle(key, &bytes))
            .await;
        match outcome {
            Ok(outcome) => {
                let outcome = match outcome {
                    NeedleRepair::AlreadyGood => "already_good",
                    NeedleRepair::Rewritten => "rewritten",
                };
                tracing::info!(
                    volume,
                    key,
                    source = peer.base_url(),
                    outcome,
                    "needle repaired"
                );
                return Ok(Json(NeedleRepairAnswer {
                    outcome: outcome.into(),
                    source: Some(peer.base_url().to_owned()),
                }));
            }
            // The peer's bytes were not a good copy of this needle.
            Err(e) if e.code == code::BAD_REQUEST => {
                answers.push(format!("{}: {}", peer.base_url(), e.message));
            }
            Err(e) => return Err(e),
        }
    }
    tracing::error!(volume, key, answers = ?answers, "no peer holds a good copy of the needle");
    Err(ApiError::new(
        StatusCode::CONFLICT,
        code::NO_GOOD_COPY,
        format!(
            "no good copy of needle {key:x} of volume {volume}: {}",
            answers.join("; ")
        ),
    ))
}

/// `DELETE /volumes/{vid}`: removes a replica that never held a needle (one
/// created for a volume whose allocation then failed). `204`, also when
/// there is no such replica; `409 not_empty` if it holds needles.
pub(crate) async fn remove_empty_volume(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let volume = volume_id(path)?;
    let removed = state
        .blocking(move |store| Ok(store.remove_empty_volume(volume)))
        .await?;
    match removed {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(Error::InvalidInput(message)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            code::NOT_EMPTY,
            message,
        )),
        Err(e) => Err(e.into()),
    }
}

/// `POST /volumes/{vid}/retire`: removes a locked replica (the volume now
/// lives in the warm tier). `204` also when the node holds no such replica.
pub(crate) async fn retire_volume(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let volume = volume_id(path)?;
    state
        .blocking(move |store| store.remove_locked_volume(volume))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
