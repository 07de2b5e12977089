//! `GET`, `HEAD` and `DELETE /blobs/{id}`.
//!
//! The id is parsed from the raw request path (never percent-decoded, never
//! joined into a path), its volume looked up in the cached directory entry,
//! and the request sent to a replica that is on an `up` node and not stale,
//! starting at a rotating position and falling back to the next one on an
//! error or a timeout. A `not_found` from such a replica is authoritative:
//! missing, deleted and wrong-cookie BLOBs all answer the same `404`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use haystack::client::{ByteStream, ClientError, NeedleResponse};

use super::error::ApiError;
use super::id::BlobId;
use super::range::{RangeOutcome, parse_range};
use super::state::AppState;
use super::upload::report_stale;
use super::{Tier, etag_for};
use crate::directory::{LogicalVolume, NodeRecord};

/// `Cache-Control` of every BLOB: ids are never reused, content never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The id in a `/blobs/{id}` path, taken from the raw (still
/// percent-encoded) path so that `%2C` or `%2e%2e` never sneak through.
pub(crate) fn id_from_uri(uri: &Uri) -> Result<BlobId, ApiError> {
    let rest = uri
        .path()
        .strip_prefix("/blobs/")
        .ok_or_else(|| ApiError::NoRoute(uri.path().to_owned()))?;
    Ok(BlobId::parse(rest)?)
}

/// `GET` and `HEAD /blobs/{id}`.
pub(crate) async fn get_blob(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = id_from_uri(&uri)?;
    let needle = read_from_replicas(&state, id).await?;
    let mut response = respond(&state, id, method == Method::HEAD, &headers, needle)?;
    response.extensions_mut().insert(Tier::HOT);
    Ok(response)
}

/// Replicas worth reading from: on an `up` node, not stale; rotated.
fn readable_replicas(
    volume: &LogicalVolume,
    nodes: &std::collections::HashMap<String, NodeRecord>,
    rotation: usize,
) -> Vec<NodeRecord> {
    let mut replicas: Vec<NodeRecord> = volume
        .fresh_replicas()
        .filter_map(|id| nodes.get(id))
        .filter(|node| node.is_up())
        .cloned()
        .collect();
    if !replicas.is_empty() {
        let len = replicas.len();
        replicas.rotate_left(rotation % len);
    }
    replicas
}

/// Asks the volume's readable replicas in turn for the needle's headers.
async fn read_from_replicas(state: &AppState, id: BlobId) -> Result<NeedleResponse, ApiError> {
    let timeout = Duration::from_millis(state.config.replica_timeout_ms);
    let mut last = String::from("no readable replica");
    // First with cached directory entries, then once more with fresh ones.
    for refresh in [false, true] {
        let volume = state.cache.volume(id.volume, refresh).await?;
        let nodes = state.cache.nodes(refresh).await?;
        let replicas = readable_replicas(&volume, &nodes, state.next_read_rotation());
        for node in replicas {
            let store = state.store_for_reads(&node)?;
            let result =
                tokio::time::timeout(timeout, store.read_needle(id.volume, id.key, id.cookie))
                    .await;
            let error = match result {
                Ok(Ok(needle)) if needle.content_length.is_some() => return Ok(needle),
                Ok(Ok(_)) => "answer without Content-Length".to_owned(),
                Ok(Err(ClientError::NotFound)) => return Err(ApiError::NotFound),
                Ok(Err(e @ (ClientError::Corrupt(_) | ClientError::UnknownVolume(_)))) => {
                    // The replica lost or damaged data the others have:
                    // have the directory resync it.
                    state.metrics.replica_failure("read");
                    report_stale(state, id.volume, &node.id, &format!("read: {e}")).await;
                    e.to_string()
                }
                Ok(Err(e)) => {
                    state.metrics.replica_failure("read");
                    e.to_string()
                }
                Err(_) => {
                    state.metrics.replica_failure("read");
                    format!("no answer within {} ms", timeout.as_millis())
                }
            };
            tracing::info!(volume = id.volume, node = %node.id, error = %error, "replica read failed");
            last = format!("{}: {error}", node.id);
        }
    }
    Err(ApiError::Unavailable(format!(
        "no replica of volume {} could serve the read ({last})",
        id.volume
    )))
}

/// Builds the answer from a replica's needle headers and body.
fn respond(
    state: &Arc<AppState>,
    id: BlobId,
    head: bool,
    headers: &HeaderMap,
    needle: NeedleResponse,
) -> Result<Response, ApiError> {
    let len = needle.content_length.unwrap_or(0);
    let etag = etag_for(&id);
    let mut builder = Response::builder()
        .header(header::ETAG, etag.as_str())
        .header(header::CACHE_CONTROL, IMMUTABLE)
        .header(header::ACCEPT_RANGES, "bytes");
    if if_none_match(headers, &etag) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(format!("response: {e}")));
    }
    let content_type = HeaderValue::from_str(&needle.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    builder = builder.header(header::CONTENT_TYPE, content_type);
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let outcome = if headers.contains_key(header::RANGE) && range_header.is_none() {
        RangeOutcome::Unsatisfiable
    } else {
        parse_range(range_header, len)
    };
    let (status, skip) = match outcome {
        RangeOutcome::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { len }),
        RangeOutcome::Full => (StatusCode::OK, 0),
        RangeOutcome::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start)
        }
    };
    let take = outcome.served_len(len);
    builder = builder.status(status).header(header::CONTENT_LENGTH, take);
    let body = if head {
        Body::empty()
    } else {
        let stream = slice_stream(needle.into_stream(), skip, take, state.clone());
        Body::from_stream(stream)
    };
    builder
        .body(body)
        .map_err(|e| ApiError::Internal(format!("response: {e}")))
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// Forwards `take` bytes of `inner` after skipping `skip`, counting bytes
/// out; a body that ends early is an error (the connection is aborted
/// rather than a short BLOB served).
fn slice_stream(
    inner: ByteStream,
    skip: u64,
    take: u64,
    state: Arc<AppState>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    struct Slice {
        inner: ByteStream,
        skip: u64,
        left: u64,
        state: Arc<AppState>,
    }
    futures::stream::unfold(
        Slice {
            inner,
            skip,
            left: take,
            state,
        },
        |mut s| async move {
            while s.left > 0 {
                match s.inner.next().await {
                    None => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "store node body ended early",
                        );
                        s.left = 0;
                        return Some((Err(e), s));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "store node body failed mid-stream");
                        s.left = 0;
                        return Some((Err(std::io::Error::other(e.to_string())), s));
                    }
                    Some(Ok(mut chunk)) => {
                        let chunk_len = chunk.len() as u64;
                        if s.skip >= chunk_len {
                            s.skip -= chunk_len;
                            continue;
                        }
                        let _ = chunk.split_to(s.skip as usize);
                        s.skip = 0;
                        if chunk.len() as u64 > s.left {
                            chunk.truncate(s.left as usize);
                        }
                        s.left -= chunk.len() as u64;
                        s.state.metrics.add_bytes_out(chunk.len() as u64);
                        if chunk.is_empty() {
                            continue;
                        }
                        return Some((Ok(chunk), s));
                    }
                }
            }
            None
        },
    )
}

/// `DELETE /blobs/{id}`: deletes on every replica on an `up` node. `204`
/// once at least one replica deleted the needle and every fresh replica
/// either deleted it or was reported stale (the directory's resync carries
/// the delete to it from a peer's deleted-key list); `404` when every fresh
/// replica says it is not there; `503` otherwise.
pub(crate) async fn delete_blob(
    State(state): State<Arc<AppState>>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = id_from_uri(&uri)?;
    let volume = state.cache.volume(id.volume, true).await?;
    let nodes = state.cache.nodes(false).await?;
    let targets: Vec<(NodeRecord, bool)> = volume
        .replicas
        .iter()
        .filter_map(|n| nodes.get(n))
        .filter(|node| node.is_up())
        .map(|node| (node.clone(), !volume.is_stale(&node.id)))
        .collect();
    let results = futures::future::join_all(targets.iter().map(|(node, _)| {
        let state = &state;
        async move {
            let store = state.store_for_writes(node)?;
            Ok::<_, ApiError>(store.delete_needle(id.volume, id.key, id.cookie).await)
        }
    }))
    .await;
    let (mut deleted, mut not_found, mut unresolved) = (0, 0, 0);
    for ((node, fresh), result) in targets.iter().zip(results) {
        match result {
            Ok(Ok(())) => deleted += 1,
            Ok(Err(ClientError::NotFound)) if *fresh => not_found += 1,
            Ok(Err(ClientError::NotFound)) => {}
            Ok(Err(e)) if *fresh => {
                state.metrics.replica_failure("delete");
                tracing::warn!(volume = id.volume, node = %node.id, error = %e, "delete failed");
                if !report_stale(&state, id.volume, &node.id, &format!("delete: {e}")).await {
                    unresolved += 1;
                }
            }
            Ok(Err(_)) => {}
            Err(e) => {
                if *fresh && !report_stale(&state, id.volume, &node.id, &e.to_string()).await {
                    unresolved += 1;
                }
            }
        }
    }
    let mut response = if unresolved > 0 {
        return Err(ApiError::Unavailable(format!(
            "{unresolved} replica(s) of volume {} failed the delete and could not be reported",
            id.volume
        )));
    } else if deleted > 0 {
        StatusCode::NO_CONTENT.into_response()
    } else if not_found > 0 {
        return Err(ApiError::NotFound);
    } else {
        return Err(ApiError::Unavailable(format!(
            "no replica of volume {} could take the delete",
            id.volume
        )));
    };
    response.extensions_mut().insert(Tier::HOT);
    Ok(response)
}
