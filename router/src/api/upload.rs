//! `POST /blobs`: receive a body within its limit and store it on the three
//! replicas of a writable volume, by one of two paths chosen by the body's
//! declared `Content-Length`.
//!
//! **Received whole, then stored** (a `Content-Length` up to
//! `retry_buffer_bytes`, default 8 MiB, and every body without one: a store
//! append needs the length up front). The body is received whole before the
//! first append (bounded by `max_blob_bytes`, and across uploads by
//! `upload_buffer_bytes`), because a retry on another volume needs the bytes
//! again and because a volume takes one upload at a time (see
//! [`super::pool`]): holding a volume while a slow client trickles its body
//! would stall every upload queued behind it. Chunks are kept as received
//! (`Bytes`, shared, never copied) and streamed to the three replicas in
//! parallel; a replica failure retires the volume and the upload is retried
//! on another one.
//!
//! **Streamed** (a `Content-Length` above `retry_buffer_bytes`; see
//! [`stream`]). A volume is checked out and its key taken first, then each
//! chunk is forwarded as it arrives to the three appends through bounded
//! channels, so an upload holds a few chunks, not its body, and the slowest
//! replica slows the client down. The trade-off: the volume is held for as
//! long as the client takes to send the body (other uploads use the other
//! pooled volumes), and a replica failure mid-stream cannot be retried (the
//! bytes are gone): the volume is taken out of service as on the other path
//! and the client gets one `503 replica_failed` to retry on.
//!
//! On both paths a body over the limit is refused with `413` before anything
//! is stored: as soon as a `Content-Length` says so, or as soon as the
//! received bytes pass it. A body that ends short of its `Content-Length` or
//! stalls is refused too, and a store never sees a complete body for it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use haystack::client::ClientError;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

use super::error::ApiError;
use super::id::BlobId;
use super::pool::{Checkout, VolumeLease, WritableVolume};
use super::reports::report_stale;
use super::state::AppState;
use super::{Tier, etag_for};
use crate::directory::{LogicalVolume, NodeRecord, VolumeState};

mod digest;
mod stream;

use digest::BodyDigest;

/// Content type stored when the client sends none.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Most bytes of a refused body read and dropped so the client can read the
/// refusal (see `drain_refused_body`).
const REFUSED_BODY_DRAIN_BYTES: u64 = 8 << 20;
/// Longest time spent draining a refused body.
const REFUSED_BODY_DRAIN_MS: u64 = 2_000;

/// Longest `Content-Type` kept with a BLOB.
const MAX_CONTENT_TYPE_LEN: usize = 255;

/// Body of a `201` answer to `POST /blobs`.
#[derive(Debug, Serialize)]
struct Created {
    id: String,
    size: u64,
    /// `sha256:` followed by the lowercase hex SHA-256 of the body.
    checksum: String,
    url: String,
}

/// A body received whole, with the memory it holds accounted for.
struct ReceivedBody {
    chunks: Vec<Bytes>,
    len: u64,
    sha256: [u8; 32],
    _memory: Option<OwnedSemaphorePermit>,
}

/// `POST /blobs`.
pub(crate) async fn post_blob(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = content_type(&headers)?;
    let declared_len = declared_len(&headers)?;
    let limit_bytes = state.config.max_blob_bytes;
    if let Some(len) = declared_len
        && len > limit_bytes
    {
        // A client that waits for `100 Continue` sends nothing; one that
        // sends anyway gets its small overshoot drained, larger ones a close.
        if !expects_continue(&headers) && len - limit_bytes <= REFUSED_BODY_DRAIN_BYTES {
            drain_refused_body(body, len).await;
        }
        return Err(ApiError::PayloadTooLarge { limit_bytes });
    }
    let idle = Duration::from_millis(state.config.body_idle_timeout_ms);
    let _slot = tokio::time::timeout(idle, state.upload_slots.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::Busy("too many uploads in flight".into()))?
        .map_err(|_| ApiError::Internal("upload semaphore closed".into()))?;
    if let Some(len) = declared_len
        && len > state.config.retry_buffer_bytes
    {
        // Streamed from a task of its own, for the same reason as below; a
        // client that disconnects ends the body, which aborts the appends.
        let task_state = state.clone();
        let stored = tokio::spawn(async move {
            stream::store_streamed(&task_state, &content_type, body, len).await
        })
        .await
        .map_err(|e| ApiError::Internal(format!("upload task: {e}")))??;
        return Ok(created(&state, stored.id, stored.len, &stored.sha256));
    }
    let received = receive_body(&state, body, declared_len).await?;
    state.metrics.add_bytes_in(received.len);

    // Stored from a task of its own: a client that disconnects now must not
    // cancel appends half-way.
    let task_state = state.clone();
    let received = Arc::new(received);
    let task_body = received.clone();
    let id = tokio::spawn(async move { store_blob(&task_state, &content_type, &task_body).await })
        .await
        .map_err(|e| ApiError::Internal(format!("upload task: {e}")))??;
    Ok(created(&state, id, received.len, &received.sha256))
}

/// The `201` answer for a stored BLOB.
fn created(state: &AppState, id: BlobId, size: u64, sha256: &[u8; 32]) -> Response {
    let id_text = id.to_string();
    let created = Created {
        url: format!(
            "{}/blobs/{id_text}",
            state.config.public_base_url.trim_end_matches('/')
        ),
        id: id_text.clone(),
        size,
        checksum: format!("sha256:{}", hex::encode(sha256)),
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/blobs/{id_text}")) {
        headers.insert(header::LOCATION, location);
    }
    if let Ok(etag) = HeaderValue::from_str(&etag_for(&id)) {
        headers.insert(header::ETAG, etag);
    }
    response.extensions_mut().insert(Tier::HOT);
    response
}

fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Content-Type must be visible ASCII".into()))?;
    if text.len() > MAX_CONTENT_TYPE_LEN {
        return Err(ApiError::BadRequest(format!(
            "Content-Type longer than {MAX_CONTENT_TYPE_LEN} bytes"
        )));
    }
    if text.is_empty() {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    }
    Ok(text.to_owned())
}

/// Whether the client waits for `100 Continue` before it sends the body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and drops what is left of a refused body, at most until `max_bytes`
/// have been seen in all or `REFUSED_BODY_DRAIN_MS` have passed. hyper closes
/// a connection whose request body was not read, and closing a socket with
/// unread input makes the kernel reset it, which destroys the refusal in
/// flight: the client would see a broken pipe instead of the 413.
async fn drain_refused_body(mut body: Body, max_bytes: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(REFUSED_BODY_DRAIN_MS);
    let mut seen: u64 = 0;
    while seen < max_bytes {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => return,
        }
    }
}

fn declared_len(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::BadRequest("malformed Content-Length".into()))
        })
        .transpose()
}

/// Receives the whole body, hashing it, enforcing the size limit and the
/// idle timeout, and reserving upload memory as it grows.
async fn receive_body(
    state: &AppState,
    mut body: Body,
    declared_len: Option<u64>,
) -> Result<ReceivedBody, ApiError> {
    let limit_bytes = state.config.max_blob_bytes;
    let timeout_ms = state.config.body_idle_timeout_ms;
    let idle = Duration::from_millis(timeout_ms);
    let mut memory: Option<OwnedSemaphorePermit> = None;
    let mut reserved_kib: u64 = 0;
    if let Some(len) = declared_len {
        reserve_memory(state, &mut memory, &mut reserved_kib, len, idle).await?;
    }
    let mut chunks = Vec::new();
    let mut len: u64 = 0;
    let mut digest = BodyDigest::new(declared_len);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ApiError::BodyTimeout { timeout_ms }),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::BadRequest(format!(
                    "reading the body failed: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        len += data.len() as u64;
        if len > limit_bytes {
            drain_refused_body(body, limit_bytes + REFUSED_BODY_DRAIN_BYTES).await;
            return Err(ApiError::PayloadTooLarge { limit_bytes });
        }
        reserve_memory(state, &mut memory, &mut reserved_kib, len, idle).await?;
        digest.update(&data).await?;
        chunks.push(data);
    }
    if let Some(declared) = declared_len
        && declared != len
    {
        return Err(ApiError::BadRequest(format!(
            "body has {len} bytes, Content-Length said {declared}"
        )));
    }
    Ok(ReceivedBody {
        chunks,
        len,
        sha256: digest.finish().await?,
        _memory: memory,
    })
}

/// Makes sure `reserved_kib` covers `len` bytes, waiting up to `idle` for
/// memory other uploads hold.
async fn reserve_memory(
    state: &AppState,
    memory: &mut Option<OwnedSemaphorePermit>,
    reserved_kib: &mut u64,
    len: u64,
    idle: Duration,
) -> Result<(), ApiError> {
    let need_kib = len.div_ceil(1024);
    if need_kib <= *reserved_kib {
        return Ok(());
    }
    // An upload larger than the whole budget could never get its memory.
    if need_kib > state.config.upload_buffer_bytes.div_ceil(1024) {
        return Err(ApiError::Busy(
            "upload larger than the router's upload memory".into(),
        ));
    }
    let more = u32::try_from(need_kib - *reserved_kib)
        .map_err(|_| ApiError::Busy("upload larger than the router's upload memory".into()))?;
    let permit = tokio::time::timeout(
        idle,
        state.upload_memory_kib.clone().acquire_many_owned(more),
    )
    .await
    .map_err(|_| ApiError::Busy("upload memory exhausted".into()))?
    .map_err(|_| ApiError::Internal("upload memory semaphore closed".into()))?;
    match memory {
        Some(held) => held.merge(permit),
        None => *memory = Some(permit),
    }
    *reserved_kib = need_kib;
    Ok(())
}

/// Stores the body on some writable volume; tries up to `upload_attempts`
/// volumes. A volume with no room left for this BLOB is locked and does not
/// count as a failed attempt (up to `writable_volumes` of them, each then
/// replaced by a fresh volume, which the binary's config guarantees can
/// hold the largest BLOB): a large BLOB must not fail because the volumes
/// it met were nearly full.
async fn store_blob(
    state: &AppState,
    content_type: &str,
    body: &ReceivedBody,
) -> Result<BlobId, ApiError> {
    let attempts = state.config.upload_attempts.max(1);
    let mut full_skips = u32::try_from(state.config.writable_volumes).unwrap_or(u32::MAX);
    let mut last = String::from("no attempt made");
    let mut attempt = 0;
    // Every try after the first is a retry, full volumes included.
    let mut tries = 0;
    while attempt < attempts {
        attempt += 1;
        tries += 1;
        let Some((lease, volume, id)) = attempt_volume(state, tries, &mut last).await else {
            continue;
        };
        let failures = append_on_replicas(state, &volume, id, content_type, body).await;
        if failures.is_empty() {
            lease.release();
            return Ok(id);
        }
        if refused_by_every_replica(&failures, volume.replicas.len()) {
            // Every store refused the request itself before writing
            // anything: the volume is fine, the request is not.
            lease.release();
            return Err(request_refusal(state, &failures));
        }
        lease.retire();
        last = describe(&failures);
        tracing::warn!(volume = volume.id, key = id.key, attempt = tries, failures = %last, "upload attempt failed");
        let too_large = failures.iter().any(|f| {
            matches!(
                f.error,
                ReplicaError::Client(ClientError::PayloadTooLarge(_))
            )
        });
        let full = failures
            .iter()
            .all(|f| matches!(f.error, ReplicaError::Client(ClientError::VolumeFull(_))));
        handle_failures(state, &volume, failures).await;
        if too_large {
            // A store's own limit is below ours: every volume would refuse.
            return Err(ApiError::PayloadTooLarge {
                limit_bytes: state.config.max_blob_bytes,
            });
        }
        if full && full_skips > 0 {
            full_skips -= 1;
            attempt -= 1;
        }
    }
    Err(ApiError::UploadFailed { attempts, last })
}

/// The volume and new id for upload attempt `attempt` (from the second
/// attempt on, counted as a retry), or `None` with `last` set to why no
/// writable volume was found.
async fn attempt_volume(
    state: &AppState,
    attempt: u32,
    last: &mut String,
) -> Option<(VolumeLease, Arc<LogicalVolume>, BlobId)> {
    if attempt > 1 {
        state.metrics.upload_retry();
    }
    match volume_and_id(state).await {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::warn!(attempt, error = %e, "no writable volume");
            *last = e.to_string();
            None
        }
    }
}

/// Checks a writable volume out of the pool and takes its next key for a
/// new id (a volume whose keys cannot be leased is retired).
async fn volume_and_id(
    state: &AppState,
) -> Result<(VolumeLease, Arc<LogicalVolume>, BlobId), ApiError> {
    let mut lease = writable_volume(state).await?;
    let volume = lease.volume_mut().volume.clone();
    let key = match next_key(state, &mut lease).await {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!(volume = volume.id, error = %e, "leasing keys failed");
            lease.retire();
            return Err(e);
        }
    };
    let id = BlobId {
        volume: volume.id,
        key,
        cookie: rand::random::<u32>(),
    };
    Ok((lease, volume, id))
}

/// Whether every replica refused the append as a bad or too large request
/// (which a store checks before it writes anything).
fn refused_by_every_replica(failures: &[ReplicaFailure], replica_count: usize) -> bool {
    failures.len() == replica_count
        && failures.iter().all(|f| {
            matches!(
                f.error,
                ReplicaError::Client(ClientError::BadRequest(_) | ClientError::PayloadTooLarge(_))
            )
        })
}

/// The client's error for a request every replica refused.
fn request_refusal(state: &AppState, failures: &[ReplicaFailure]) -> ApiError {
    let too_large = failures.iter().any(|f| {
        matches!(
            f.error,
            ReplicaError::Client(ClientError::PayloadTooLarge(_))
        )
    });
    if too_large {
        ApiError::PayloadTooLarge {
            limit_bytes: state.config.max_blob_bytes,
        }
    } else {
        ApiError::BadRequest(format!(
            "the store nodes refused the upload: {}",
            describe(failures)
        ))
    }
}

/// Checks a writable volume out of the pool, allocating one if needed.
async fn writable_volume(state: &AppState) -> Result<VolumeLease, ApiError> {
    loop {
        match state.pool.checkout().await {
            Checkout::Volume(mut lease) => {
                let id = lease.volume_mut().volume.id;
                match state.cache.volume(id, false).await {
                    Ok(v) if v.state == VolumeState::Writable && v.stale_replicas.is_empty() => {
                        return Ok(lease);
                    }
                    Ok(v) => {
                        tracing::info!(volume = id, state = %v.state, "volume no longer writable");
                        lease.retire();
                    }
                    Err(ApiError::NotFound) => lease.retire(),
                    Err(e) => {
                        lease.release();
                        return Err(e);
                    }
                }
            }
            Checkout::Allocate(permit) => {
                let volume = allocate_volume(state).await?;
                return Ok(state.pool.lease_new(volume, permit));
            }
        }
    }
}

/// Allocates a logical volume, creates its replicas and leases its first
/// keys.
async fn allocate_volume(state: &AppState) -> Result<WritableVolume, ApiError> {
    let volume = state.directory.allocate_volume().await?;
    let volume = state.cache.store_volume(volume);
    let nodes = replica_nodes(state, &volume).await?;
    let volume_id = volume.id;
    let results = futures::future::join_all(nodes.iter().map(|node| async move {
        let store = state.store_for_writes(node)?;
        store
            .create_volume(volume_id)
            .await
            .map_err(|e| ApiError::Unavailable(format!("creating volume on {}: {e}", node.id)))
    }))
    .await;
    for (node, result) in nodes.iter().zip(results) {
        if let Err(e) = result {
            tracing::warn!(volume = volume.id, node = %node.id, error = %e, "replica creation failed");
            state.metrics.replica_failure("create");
            report_stale(state, volume.id, &node.id, &e.to_string(), false).await;
            return Err(e);
        }
    }
    let lease = state
        .directory
        .lease_keys(volume.id, state.config.key_lease_size.max(1))
        .await?;
    tracing::info!(volume = volume.id, replicas = ?volume.replicas, "allocated a writable volume");
    Ok(WritableVolume {
        volume,
        next_key: lease.start,
        end_key: lease.end,
        last_write_ms: crate::directory::now_ms(),
    })
}

/// The node records of a volume's replicas (refreshing the node list once
/// if one is unknown).
async fn replica_nodes(
    state: &AppState,
    volume: &LogicalVolume,
) -> Result<Vec<NodeRecord>, ApiError> {
    for refresh in [false, true] {
        let nodes = state.cache.nodes(refresh).await?;
        let found: Option<Vec<NodeRecord>> = volume
            .replicas
            .iter()
            .map(|id| nodes.get(id).cloned())
            .collect();
        if let Some(found) = found {
            return Ok(found);
        }
    }
    Err(ApiError::Unavailable(format!(
        "volume {} has a replica on an unknown node",
        volume.id
    )))
}

/// The next key of the volume, leasing a new range when the current one is
/// used up.
async fn next_key(state: &AppState, lease: &mut VolumeLease) -> Result<u64, ApiError> {
    let volume = lease.volume_mut();
    if let Some(key) = volume.take_key() {
        return Ok(key);
    }
    let range = state
        .directory
        .lease_keys(volume.volume.id, state.config.key_lease_size.max(1))
        .await?;
    if range.start < volume.end_key || range.end <= range.start {
        return Err(ApiError::Internal(format!(
            "directory leased keys {}..{} below the previous lease end {}",
            range.start, range.end, volume.end_key
        )));
    }
    volume.next_key = range.start;
    volume.end_key = range.end;
    volume
        .take_key()
        .ok_or_else(|| ApiError::Internal("empty key lease".into()))
}

/// Why one replica did not acknowledge an append.
#[derive(Debug)]
enum ReplicaError {
    /// The store node answered with an error or could not be reached.
    Client(ClientError),
    /// The node is down or unknown to the directory, or its address unusable.
    Unavailable(String),
}

/// One replica's failure.
#[derive(Debug)]
struct ReplicaFailure {
    node: String,
    error: ReplicaError,
}

impl std::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaError::Client(e) => e.fmt(f),
            ReplicaError::Unavailable(e) => f.write_str(e),
        }
    }
}

fn describe(failures: &[ReplicaFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("{}: {}", f.node, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Appends the needle on every replica in parallel; returns the failures
/// (empty when every replica has made it durable).
async fn append_on_replicas(
    state: &AppState,
    volume: &LogicalVolume,
    id: BlobId,
    content_type: &str,
    body: &ReceivedBody,
) -> Vec<ReplicaFailure> {
    let nodes = match state.cache.nodes(false).await {
        Ok(nodes) => nodes,
        Err(e) => {
            return vec![ReplicaFailure {
                node: String::from("directory"),
                error: ReplicaError::Unavailable(format!("node list: {e}")),
            }];
        }
    };
    let appends = volume.replicas.iter().map(|node_id| {
        let node = nodes.get(node_id);
        async move {
            let result = match node {
                None => Err(ReplicaError::Unavailable(
                    "node unknown to the directory".into(),
                )),
                Some(node) if !node.is_up() => Err(ReplicaError::Unavailable("node down".into())),
                Some(node) => match state.store_for_writes(node) {
                    Err(e) => Err(ReplicaError::Unavailable(e.to_string())),
                    Ok(store) => store
                        .append_needle(
                            id.volume,
                            id.key,
                            id.cookie,
                            content_type,
                            body.len,
                            request_body(&body.chunks),
                        )
                        .await
                        .map(|_| ())
                        .map_err(ReplicaError::Client),
                },
            };
            result.err().map(|error| ReplicaFailure {
                node: node_id.clone(),
                error,
            })
        }
    });
    futures::future::join_all(appends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A request body streaming the received chunks (shared, not copied).
fn request_body(chunks: &[Bytes]) -> reqwest::Body {
    match chunks {
        [] => reqwest::Body::from(Bytes::new()),
        [one] => reqwest::Body::from(one.clone()),
        many => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = many.iter().cloned().map(Ok).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        }
    }
}

/// Takes the volume out of service after a failed append: `volume_full`
/// locks it; a replica that no longer has the volume (`unknown_volume`) is
/// reported stale (the directory rebuilds it), which also turns the volume
/// read-only; any other failure (transport, timeout, 5xx, `read_only`,
/// `key_out_of_order`) makes the volume read-only.
///
/// A failed append never makes a replica stale by itself: the upload was
/// not acknowledged, so the replica still holds every acknowledged needle
/// and keeps serving reads. Marking it stale would take it out of reads for
/// nothing, and a failure every replica shares (a full disk) would leave the
/// volume with no replica to read from.
async fn handle_failures(state: &AppState, volume: &LogicalVolume, failures: Vec<ReplicaFailure>) {
    let full = failures
        .iter()
        .any(|f| matches!(f.error, ReplicaError::Client(ClientError::VolumeFull(_))));
    if full {
        lock_volume(state, volume, "a replica is full").await;
        return;
    }
    let mut read_only_reason = None;
    for failure in &failures {
        match &failure.error {
            ReplicaError::Client(ClientError::ReadOnly(_))
            | ReplicaError::Client(ClientError::KeyOutOfOrder(_)) => {}
            ReplicaError::Client(ClientError::UnknownVolume(_)) => {
                state.metrics.replica_failure("append");
                let reason = format!("append failed: {}", failure.error);
                report_stale(state, volume.id, &failure.node, &reason, false).await;
                continue;
            }
            _ => state.metrics.replica_failure("append"),
        }
        read_only_reason = Some(format!("append on {}: {}", failure.node, failure.error));
    }
    if let Some(reason) = read_only_reason {
        set_state(state, volume.id, VolumeState::ReadOnly, &reason).await;
    }
}

/// Locks a volume (full, or idle) on every replica (best effort) and in the
/// directory, saying `why`.
pub(crate) async fn lock_volume(state: &AppState, volume: &LogicalVolume, why: &str) {
    if let Ok(nodes) = state.cache.nodes(false).await {
        let locks = volume.replicas.iter().filter_map(|id| nodes.get(id)).map(|node| async move {
            match state.store_for_writes(node) {
                Ok(store) => {
                    if let Err(e) = store.lock_volume(volume.id).await {
                        tracing::warn!(volume = volume.id, node = %node.id, error = %e, "lock failed");
                    }
                }
                Err(e) => tracing::warn!(node = %node.id, error = %e, "no client for node"),
            }
        });
        futures::future::join_all(locks).await;
    }
    set_state(state, volume.id, VolumeState::Locked, why).await;
}

async fn set_state(state: &AppState, id: u32, to: VolumeState, reason: &str) {
    match state.directory.set_volume_state(id, to, reason).await {
        Ok(volume) => {
            state.cache.store_volume(volume);
        }
        Err(e) => {
            tracing::warn!(volume = id, state = %to, error = %e, "setting volume state failed")
        }
    }
}
