//! Routes and handlers of the store node HTTP API.
//!
//! Ids are parsed strictly by [`crate::api`] (`400 bad_request` otherwise)
//! and handed to the engine as integers; they never become file paths.
//! Every engine call that may block goes through [`StoreNodeState::blocking`]; a small
//! needle's `GET` or `HEAD` is first tried from the page cache on the async task.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::{get, post, put};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::AsyncSeekExt;
use tower::util::MapFutureLayer;

use super::error::ApiError;
use super::inventory;
use super::params::{parse_needle_key, parse_vid, volume_and_key, volume_id};
use super::{INLINE_NEEDLE_BYTES_MAX, StoreNodeState, buffer_permits};
use crate::VolumeStatus;
use crate::api::{
    AppendResult, CRC32_HEADER, VolumeFile, VolumePageQuery, VolumeStatusPage, next_after,
    parse_cookie,
};
use crate::format::Needle;
use crate::http::next_body_chunk;
use crate::store::Store;

/// Content type stored for an upload that names none.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// Chunk size when streaming a volume file.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// The store node's routes over `state`. Handlers other than bulk sync and
/// appends run under the configured request timeout; an append's body is
/// paced by its sender (each pause at most the body-idle timeout), and the
/// request timeout bounds what comes before and after it.
pub fn router(state: StoreNodeState) -> Router {
    let timeout = Duration::from_millis(state.config().request_timeout_ms);
    let timed = Router::new()
        .route("/health", get(crate::http::health))
        .route("/volumes", get(list_volumes))
        .route(
            "/volumes/{vid}",
            put(create_volume)
                .get(volume_status)
                .delete(inventory::remove_empty_volume),
        )
        .route("/volumes/{vid}/lock", post(lock_volume))
        .route(
            "/volumes/{vid}/direct-reads/stop",
            post(super::direct::stop_direct_reads),
        )
        .route(
            "/direct/volumes/{vid}/needles/{key}",
            get(super::direct::direct_read),
        )
        .route("/volumes/{vid}/retire", post(inventory::retire_volume))
        .route(
            "/volumes/{vid}/needles/{key}",
            get(read_needle).head(head_needle).delete(delete_needle),
        )
        .route("/volumes/{vid}/needles", get(inventory::needle_page))
        .route("/volumes/{vid}/deleted", get(inventory::deleted_page))
        .route("/volumes/{vid}/digest", get(inventory::inventory_digest))
        .route("/volumes/{vid}/scrub", post(inventory::scrub))
        .route(
            "/volumes/{vid}/needles/{key}/raw",
            get(inventory::raw_needle),
        )
        .route("/volumes/{vid}/files/{file}", get(volume_file))
        .route("/needles/read-batch", post(super::batch::read_batch))
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .layer(MapFutureLayer::new(
            move |handler: RouteFuture<Infallible>| crate::http::deadline(timeout, handler),
        ));
    Router::new()
        .route("/volumes/{vid}/sync", post(super::sync::sync_volume))
        .route(
            "/volumes/{vid}/needles/{key}/repair",
            post(inventory::repair_needle),
        )
        .route("/volumes/{vid}/needles/{key}", put(append_needle))
        .merge(timed)
        .fallback(crate::http::no_route)
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .with_state(state)
}

impl StoreNodeState {
    /// Runs `f` on the blocking pool once an IO permit is free. The permit
    /// moves into the blocking task, so the bound holds even when the
    /// request is dropped before the engine call returns.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Store) -> crate::error::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.inner.store.clone();
        crate::http::bounded_blocking(&self.inner.io_permits, move || f(&store)).await
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CookieQuery {
    pub(super) cookie: String,
}

pub(super) type NeedlePath = Result<Path<(String, String)>, PathRejection>;
type NeedleQuery = Result<Query<CookieQuery>, QueryRejection>;

/// Parses `{vid}`, `{key}` and `?cookie=`.
fn needle_id(path: NeedlePath, query: NeedleQuery) -> Result<(u32, u64, u32), ApiError> {
    let (volume, key) = volume_and_key(path)?;
    let Query(query) = query
        .map_err(|_| ApiError::bad_request("query must be exactly cookie=<8 lowercase hex>"))?;
    let cookie = parse_cookie(&query.cookie)
        .ok_or_else(|| ApiError::bad_request("cookie must be 8 lowercase hex digits"))?;
    Ok((volume, key, cookie))
}

/// [`needle_id`] for the read routes: the canonical query
/// (`cookie=` and eight lowercase hex digits, what every client sends) is
/// read straight from the URI, and anything else goes through the general
/// extractor, so both accept and refuse exactly the same requests.
pub(super) fn read_needle_id(
    path: NeedlePath,
    uri: &Uri,
    query: impl FnOnce() -> NeedleQuery,
) -> Result<(u32, u64, u32), ApiError> {
    let canonical = uri
        .query()
        .and_then(|q| q.strip_prefix("cookie="))
        .and_then(parse_cookie);
    match (canonical, path) {
        (Some(cookie), Ok(Path((vid, key)))) => {
            Ok((parse_vid(&vid)?, parse_needle_key(&key)?, cookie))
        }
        (_, path) => needle_id(path, query()),
    }
}

/// `GET /volumes?after=V&limit=N`: a page of this node's replicas.
async fn list_volumes(
    State(state): State<StoreNodeState>,
    query: Result<Query<VolumePageQuery>, QueryRejection>,
) -> Result<Json<VolumeStatusPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (after, limit) = query.page().map_err(ApiError::bad_request)?;
    let volumes: Vec<VolumeStatus> = state
        .blocking(move |store| {
            let volumes = store.volumes_after(after, limit);
            Ok(volumes.iter().map(|v| v.status()).collect())
        })
        .await?;
    let next_after = next_after(&volumes, limit, |v| v.volume_id);
    Ok(Json(VolumeStatusPage {
        volumes,
        next_after,
    }))
}

async fn create_volume(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<VolumeStatus>), ApiError> {
    let volume = volume_id(path)?;
    let status = state
        .blocking(move |store| Ok(store.create_volume(volume)?.status()))
        .await?;
    tracing::info!(volume, "volume replica created");
    Ok((StatusCode::CREATED, Json(status)))
}

async fn volume_status(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<VolumeStatus>, ApiError> {
    let volume = volume_id(path)?;
    Ok(Json(
        state
            .blocking(move |store| Ok(store.volume(volume)?.status()))
            .await?,
    ))
}

async fn lock_volume(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<VolumeStatus>, ApiError> {
    let volume = volume_id(path)?;
    let status = state
        .blocking(move |store| {
            let v = store.volume(volume)?;
            v.lock()?;
            Ok(v.status())
        })
        .await?;
    tracing::info!(volume, "volume replica locked");
    Ok(Json(status))
}

async fn append_needle(
    State(state): State<StoreNodeState>,
    path: NeedlePath,
    query: NeedleQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<AppendResult>), ApiError> {
    let (volume, key, cookie) = needle_id(path, query)?;
    let content_length = content_length(&headers)?;
    let max = state.config().max_needle_bytes;
    if content_length > max {
        return Err(ApiError::payload_too_large(format!(
            "body of {content_length} bytes is above the limit of {max}"
        )));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE.to_string(),
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::bad_request("Content-Type must be visible ASCII"))?
            .to_string(),
    };
    // Reserve buffer room before reading, so concurrent uploads cannot
    // together hold more than body_buffer_limit_bytes.
    let permits = u32::try_from(buffer_permits(content_length))
        .map_err(|_| ApiError::payload_too_large("body too large"))?;
    let timeout = Duration::from_millis(state.config().request_timeout_ms);
    let buffer = state
        .inner
        .buffer_permits
        .clone()
        .acquire_many_owned(permits);
    let _buffer = tokio::time::timeout(timeout, buffer)
        .await
        .map_err(|_| ApiError::timeout("no upload buffer room within the request timeout"))?
        .map_err(|_| ApiError::internal("buffer semaphore closed"))?;
    let idle = Duration::from_millis(state.config().body_idle_timeout_ms);
    let chunks = collect_body(body, content_length, idle).await?;
    let append = state.blocking(move |store| {
        let parts: Vec<&[u8]> = chunks.iter().map(|chunk| &chunk[..]).collect();
        store
            .volume(volume)?
            .append_needle_parts(key, cookie, &content_type, &parts)
    });
    let outcome = tokio::time::timeout(timeout, append)
        .await
        .map_err(|_| ApiError::timeout("append timed out"))??;
    Ok((
        StatusCode::CREATED,
        Json(AppendResult {
            offset: outcome.offset,
            size: outcome.size_bytes,
        }),
    ))
}

/// The `Content-Length` of an upload; required.
fn content_length(headers: &HeaderMap) -> Result<u64, ApiError> {
    let value = headers
        .get(header::CONTENT_LENGTH)
        .ok_or_else(|| ApiError::bad_request("Content-Length is required"))?;
    value
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("Content-Length must be a decimal number"))
}

/// Chunks of a body below this size are gathered into one buffer (a copy),
/// so that a body sent in tiny pieces cannot make a list of millions.
const SMALL_CHUNK_BYTES: usize = 16 * 1024;

/// Reads exactly `expected` bytes of body, with at most `idle` between
/// chunks, and keeps its large chunks as they arrived (the needle is written
/// from them; no copy into one buffer). A body that ends early is a 400; one
/// that goes past `expected` (which hyper prevents for a `Content-Length`
/// body) a 413.
async fn collect_body(body: Body, expected: u64, idle: Duration) -> Result<Vec<Bytes>, ApiError> {
    let mut chunks = Vec::new();
    let mut small = BytesMut::new();
    let mut len: u64 = 0;
    let mut stream = body.into_data_stream();
    loop {
        match next_body_chunk(&mut stream, idle).await? {
            None => break,
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "body ended after {len} of {expected} bytes: {e}"
                )));
            }
            Some(Ok(chunk)) => {
                if len + chunk.len() as u64 > expected {
                    return Err(ApiError::payload_too_large(
                        "body longer than Content-Length",
                    ));
                }
                len += chunk.len() as u64;
                if chunk.len() < SMALL_CHUNK_BYTES {
                    small.extend_from_slice(&chunk);
                    if small.len() < SMALL_CHUNK_BYTES {
                        continue;
                    }
                }
                if !small.is_empty() {
                    chunks.push(small.split().freeze());
                }
                if chunk.len() >= SMALL_CHUNK_BYTES {
                    chunks.push(chunk);
                }
            }
        }
    }
    if !small.is_empty() {
        chunks.push(small.freeze());
    }
    if len != expected {
        return Err(ApiError::bad_request(format!(
            "body has {len} bytes, Content-Length said {expected}"
        )));
    }
    Ok(chunks)
}

async fn read_needle(
    State(state): State<StoreNodeState>,
    path: NeedlePath,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (volume, key, cookie) = read_needle_id(path, &uri, || Query::try_from_uri(&uri))?;
    read_needle_answer(&state, volume, key, cookie, || Ok(())).await
}

/// The answer to a `GET` of a needle: its verified data and headers, if
/// `still` passes once the needle is read (a direct read checks its lease
/// again: the read may have waited on the disk past the lease's end).
pub(super) async fn read_needle_answer(
    state: &StoreNodeState,
    volume: u32,
    key: u64,
    cookie: u32,
    still: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let needle = read_needle_inline_first(state, volume, key, cookie).await?;
    still()?;
    // `needle.crc32` is the CRC-32 of the data alone (what the API sends),
    // computed by the engine while it verified the stored checksum.
    let headers = needle_headers(&needle.content_type, needle.crc32);
    Ok((headers, Body::from(needle.data)).into_response())
}

/// `HEAD` of a needle: the same checks and headers as `GET`
/// (`Content-Length` included), without sending the data.
async fn head_needle(
    State(state): State<StoreNodeState>,
    path: NeedlePath,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (volume, key, cookie) = read_needle_id(path, &uri, || Query::try_from_uri(&uri))?;
    let needle = read_needle_inline_first(&state, volume, key, cookie).await?;
    let len = needle.data.len() as u64;
    let headers = needle_headers(&needle.content_type, needle.crc32);
    let mut response = (headers, Body::empty()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(response)
}

/// Reads a needle for `GET` and `HEAD`. One of at most [`INLINE_NEEDLE_BYTES_MAX`] on disk
/// is first tried from the page cache on the async task (a read that never blocks, see
/// [`crate::Volume::try_read_needle_cached`]); otherwise, or if it is not cached, it is read
/// on the blocking pool. The checks and errors are the same either way.
async fn read_needle_inline_first(
    state: &StoreNodeState,
    volume: u32,
    key: u64,
    cookie: u32,
) -> Result<Needle, ApiError> {
    let engine = state.store().volume(volume)?;
    // A missing or deleted key is answered from the index alone, inline too.
    if engine
        .needle_size_bytes(key)
        .is_none_or(|n| n <= INLINE_NEEDLE_BYTES_MAX)
        && let Some(needle) = engine.try_read_needle_cached(key, cookie)?
    {
        return Ok(needle);
    }
    state
        .blocking(move |store| store.volume(volume)?.read_needle(key, cookie))
        .await
}

/// `Content-Type` and `X-Hayloft-Crc32` of a needle answer.
fn needle_headers(content_type: &str, crc32: u32) -> [(header::HeaderName, HeaderValue); 2] {
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    [
        (header::CONTENT_TYPE, content_type),
        (
            header::HeaderName::from_static(CRC32_HEADER),
            HeaderValue::from(crc32),
        ),
    ]
}

async fn delete_needle(
    State(state): State<StoreNodeState>,
    path: NeedlePath,
    query: NeedleQuery,
) -> Result<StatusCode, ApiError> {
    let (volume, key, cookie) = needle_id(path, query)?;
    crate::failpoint::pause_task_at("store-deletes").await;
    state
        .blocking(move |store| store.volume(volume)?.delete_needle(key, cookie))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /volumes/{vid}/files/{file}`: a byte range instead of the
/// whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRangeQuery {
    offset: Option<u64>,
    len: Option<u64>,
}

/// Streams a data or index file of a locked or read-only replica through
/// `tokio::fs` (whose reads run on the blocking pool), chunk by chunk; with
/// `?offset=N&len=N`, only those bytes (the migrator reads a replica's
/// needles that way), `400` if they are not all in the file.
async fn volume_file(
    State(state): State<StoreNodeState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<FileRangeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((vid, file)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(range) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let volume = parse_vid(&vid)?;
    let file = VolumeFile::from_path_segment(&file)
        .ok_or_else(|| ApiError::bad_request("file must be data or index"))?;
    let (opened, len) = state
        .blocking(move |store| {
            let v = store.volume(volume)?;
            let status = v.status();
            if !status.locked && !status.read_only {
                return Ok(None);
            }
            let path = match file {
                VolumeFile::Data => v.data_path(),
                VolumeFile::Index => v.index_path(),
            };
            let opened = std::fs::File::open(path)?;
            let len = opened.metadata()?.len();
            Ok(Some((opened, len)))
        })
        .await?
        .ok_or_else(|| {
            ApiError::read_only("replica is writable; only locked or read-only ones are streamed")
        })?;
    let (offset, len) = match (range.offset, range.len) {
        (None, None) => (0, len),
        (Some(offset), Some(want)) if offset.checked_add(want).is_some_and(|end| end <= len) => {
            (offset, want)
        }
        (Some(offset), Some(want)) => {
            return Err(ApiError::bad_request(format!(
                "bytes {offset}+{want} are not all in the {len}-byte file"
            )));
        }
        _ => return Err(ApiError::bad_request("a range needs both offset and len")),
    };
    let mut opened = tokio::fs::File::from_std(opened);
    if offset > 0 {
        opened
            .seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| ApiError::io(&e))?;
    }
    // Stream exactly the length seen at open time, so Content-Length holds.
    let reader = tokio::io::AsyncReadExt::take(opened, len);
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, FILE_CHUNK_BYTES);
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(DEFAULT_CONTENT_TYPE),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(len)),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's bytes come back in order, large chunks as they arrived
    /// (the same memory, not a copy) and runs of small ones gathered, for
    /// chunk boundaries set exactly (a stream, not a socket's timing).
    #[tokio::test]
    async fn a_body_keeps_its_large_chunks_and_gathers_small_ones() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
        let cuts = [1usize, 1, 100, 40_000, 3, 16_383, 16_384, 16_385, 5, 70_000];
        let mut chunks = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            let end = (at + cut).min(data.len());
            chunks.push(Bytes::copy_from_slice(&data[at..end]));
            at = end;
            if at == data.len() {
                break;
            }
        }
        let large: Vec<*const u8> = chunks
            .iter()
            .filter(|c| c.len() >= SMALL_CHUNK_BYTES)
            .map(|c| c.as_ptr())
            .collect();
        let sent = chunks.clone();
        let body = Body::from_stream(futures::stream::iter(
            sent.into_iter().map(Ok::<_, Infallible>),
        ));
        let kept = collect_body(body, data.len() as u64, Duration::from_secs(5))
            .await
            .expect("a whole body");
        assert_eq!(kept.concat(), data);
        let kept_at: Vec<*const u8> = kept.iter().map(|c| c.as_ptr()).collect();
        for ptr in &large {
            assert!(kept_at.contains(ptr), "a large chunk was copied");
        }
        assert!(
            kept.iter().all(|c| !c.is_empty()),
            "no empty pieces are kept"
        );
        assert!(
            kept.len() < chunks.len(),
            "small chunks were not gathered: {} of {}",
            kept.len(),
            chunks.len()
        );
    }
}
