//! `GET`, `HEAD` and `DELETE /blobs/{id}`.
//!
//! The id is parsed from the raw request path (never percent-decoded, never
//! joined into a path), its volume looked up in the cached directory entry,
//! and the request sent to a replica that is on an `up` node and not stale,
//! starting at a rotating position and falling back to the next one on an
//! error or a timeout. A `not_found` from such a replica is authoritative:
//! missing, deleted and wrong-cookie BLOBs all answer the same `404`.
//!
//! When none of those can answer, the directory entry is fetched afresh and
//! the stale replicas on `up` nodes that missed no acknowledged delete are
//! tried too: a stale replica lacks at most writes that were never
//! acknowledged (every upload needs all three replicas) and deletes, which
//! the directory records, so a needle it finds is the BLOB's; a `not_found`
//! from it is not authoritative. A copy that fails its checks is reported as
//! a damaged needle, to be mended from a good copy; the replica keeps
//! serving every other needle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use haystack::batch::{BatchAnswer, BatchRead};
use haystack::client::{ByteStream, ClientError, NeedleHead, ReadKind, StoreAddress};
use parking_lot::Mutex;

use super::error::ApiError;
use super::id::BlobId;
use super::range::{RangeOutcome, parse_range};
use super::reports::{report_damaged, report_stale};
use super::seal::every_router_reads_afresh;
use super::state::AppState;
use super::{Tier, etag_for, warm};
use crate::directory::types::MigrationStep;
use crate::directory::{LogicalVolume, NodeRecord, VolumeState, now_ms};

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

/// Needles up to this size are received whole (in read batches, or alone
/// where the volume's reads skip them: [`ReadSizes`]) and their CRC-32
/// checked before the answer starts, then sent as one buffer: no stream to
/// set up, headers and data leave in one write, and a replica whose read
/// fails is skipped like one that failed to answer. Larger ones are
/// streamed through.
const WHOLE_BODY_MAX_BYTES: u32 = 64 * 1024;

/// `GET` and `HEAD /blobs/{id}`.
pub(crate) async fn get_blob(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    // The request itself, not its parts as extractors: those would clone
    // the header map on every read.
    let id = id_from_uri(request.uri())?;
    let head = request.method() == Method::HEAD;
    let volume = state.cache.volume(id.volume, false).await?;
    if volume.state == VolumeState::Warm {
        return respond_warm(&state, &volume, id, head, request.headers()).await;
    }
    let needle = match read_from_replicas(&state, id, head).await {
        Ok(needle) => needle,
        Err(ApiError::Unavailable(why)) => {
            // The volume may have gone warm (and its hot replicas with it)
            // since the cached entry was read.
            let volume = state.cache.volume(id.volume, true).await?;
            if volume.state == VolumeState::Warm {
                return respond_warm(&state, &volume, id, head, request.headers()).await;
            }
            return Err(ApiError::Unavailable(why));
        }
        Err(e) => return Err(e),
    };
    let mut response = respond(&state, id, head, request.headers(), needle)?;
    response.extensions_mut().insert(Tier::HOT);
    Ok(response)
}

/// A `GET` or `HEAD` of a BLOB in a warm volume: the same answer as the
/// hot tier's.
async fn respond_warm(
    state: &Arc<AppState>,
    volume: &LogicalVolume,
    id: BlobId,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let read = warm::read_needle(state, volume, id).await?;
    let fetched = Fetched {
        content_type: HeaderValue::from_str(&read.needle.content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        len: read.needle.data.len() as u64,
        body: FetchedBody::Whole(read.needle.data),
    };
    let mut response = respond(state, id, head, headers, fetched)?;
    response.extensions_mut().insert(if read.geo {
        Tier::GEO
    } else if read.degraded {
        Tier::DEGRADED
    } else {
        Tier::WARM
    });
    Ok(response)
}

/// Replicas worth reading from, each with whether it is fresh: those on an
/// `up` node and not stale, rotated; then, with `with_stale`, the stale ones
/// on `up` nodes that missed no acknowledged delete, rotated.
pub(crate) fn readable_replicas<'a>(
    volume: &LogicalVolume,
    nodes: &'a std::collections::HashMap<String, NodeRecord>,
    rotation: usize,
    with_stale: bool,
) -> Vec<(&'a NodeRecord, bool)> {
    let up = |id: &str| nodes.get(id).filter(|node| node.is_up());
    let rotated = |mut replicas: Vec<&'a NodeRecord>| {
        if !replicas.is_empty() {
            let len = replicas.len();
            replicas.rotate_left(rotation % len);
        }
        replicas
    };
    let fresh = rotated(volume.fresh_replicas().filter_map(up).collect());
    let stale = if with_stale {
        rotated(
            volume
                .stale_replicas
                .iter()
                .filter(|id| !volume.missed_delete(id))
                .filter_map(|id| up(id))
                .collect(),
        )
    } else {
        Vec::new()
    };
    fresh
        .into_iter()
        .map(|node| (node, true))
        .chain(stale.into_iter().map(|node| (node, false)))
        .collect()
}

/// A replica's answer.
struct Fetched {
    /// The needle's content type.
    content_type: HeaderValue,
    /// Length of its data.
    len: u64,
    body: FetchedBody,
}

/// The data of a [`Fetched`] needle.
enum FetchedBody {
    /// None asked for (`HEAD`).
    None,
    /// Small data, received whole and its length checked.
    Whole(Bytes),
    /// Larger data, still to be streamed.
    Stream(NeedleHead),
}

/// Asks the volume's readable replicas in turn for the needle (`HEAD` for
/// `head`, else `GET`; small data is received whole here).
async fn read_from_replicas(state: &AppState, id: BlobId, head: bool) -> Result<Fetched, ApiError> {
    let timeout = Duration::from_millis(state.config.replica_timeout_ms);
    let kind = if head { ReadKind::Head } else { ReadKind::Get };
    let mut last = String::from("no readable replica");
    // First with cached directory entries, then once more with fresh ones.
    for refresh in [false, true] {
        let volume = state.cache.volume(id.volume, refresh).await?;
        let nodes = state.cache.nodes(refresh).await?;
        let replicas = readable_replicas(&volume, &nodes, state.next_read_rotation(), refresh);
        let stream = kind == ReadKind::Get && state.read_sizes.mostly_large(id.volume);
        for (node, fresh) in replicas {
            let read = match state.read_address(node) {
                Err(e) => Err(ReplicaError::Failed(e)),
                // A node in this process answers a needle alone as cheaply
                // as in a batch, without the batch's wait and copy.
                Ok(address) if stream || (kind == ReadKind::Get && address.in_process()) => {
                    stream_replica(state, &address, id, timeout).await
                }
                Ok(address) => read_replica(state, &address, id, kind, timeout).await,
            };
            let error = match read {
                Ok(fetched) => {
                    if kind == ReadKind::Get {
                        let large = fetched.len > u64::from(WHOLE_BODY_MAX_BYTES);
                        state.read_sizes.record(id.volume, large);
                    }
                    return Ok(fetched);
                }
                Err(ReplicaError::NotFound) if fresh => return Err(ApiError::NotFound),
                Err(ReplicaError::NotFound) => "stale replica: not found".to_owned(),
                Err(ReplicaError::Failed(e)) => {
                    state.metrics.replica_failure("read");
                    match &e {
                        ClientError::Corrupt(_) | ClientError::ChecksumMismatch { .. } => {
                            // Only this needle is bad here: have it mended.
                            report_damaged(state, id, &node.id, &format!("read: {e}")).await;
                        }
                        ClientError::UnknownVolume(_) if fresh => {
                            // The node lost the whole replica: have it rebuilt.
                            let reason = format!("read: {e}");
                            report_stale(state, id.volume, &node.id, &reason, false).await;
                        }
                        _ => {}
                    }
                    e.to_string()
                }
                Err(ReplicaError::NoLength) => "answer without Content-Length".to_owned(),
                Err(ReplicaError::TimedOut) => {
                    state.metrics.replica_failure("read");
                    format!("no answer within {} ms", timeout.as_millis())
                }
            };
            tracing::info!(volume = id.volume, node = %node.id, fresh, error = %error, "replica read failed");
            last = format!("{}: {error}", node.id);
        }
    }
    Err(ApiError::Unavailable(format!(
        "no replica of volume {} could serve the read ({last})",
        id.volume
    )))
}

/// Why one replica could not serve a read.
enum ReplicaError {
    /// `not_found`: authoritative.
    NotFound,
    /// A failed or unusable answer.
    Failed(ClientError),
    /// A success without `Content-Length`.
    NoLength,
    /// No headers (or no small body) within the replica timeout.
    TimedOut,
}

/// Per hot volume, whether the BLOBs this router read from it lately were
/// mostly too large for a read batch (over [`WHOLE_BODY_MAX_BYTES`] of
/// data). Reads of such a volume skip the batch, which would answer
/// `too_large`, and go straight to a streamed `GET`: one exchange with the
/// store node instead of two. A small BLOB read that way is served as well,
/// and counts: a volume read mostly for small BLOBs (thumbnails beside
/// their originals) keeps its reads in batches.
#[derive(Debug, Default)]
pub(crate) struct ReadSizes {
    /// Per volume, a score that a large read raises by one (up to
    /// [`ReadSizes::SCORE_MAX`]) and a small one halves.
    scores: Mutex<HashMap<u32, u8>>,
}

impl ReadSizes {
    /// Reads of a volume stream at once from this score on.
    const STREAM_FROM: u8 = 8;
    const SCORE_MAX: u8 = 16;
    /// Volumes tracked; beyond it the scores start over.
    const VOLUMES_MAX: usize = 65_536;

    /// Whether reads of `volume` should skip the batch.
    pub(crate) fn mostly_large(&self, volume: u32) -> bool {
        self.scores
            .lock()
            .get(&volume)
            .is_some_and(|&score| score >= Self::STREAM_FROM)
    }

    /// Counts a read of `volume` whose data was `large`. Only volumes
    /// read for large BLOBs lately hold an entry.
    pub(crate) fn record(&self, volume: u32, large: bool) {
        let mut scores = self.scores.lock();
        if !large {
            if let Some(score) = scores.get_mut(&volume) {
                *score /= 2;
                if *score == 0 {
                    scores.remove(&volume);
                }
            }
            return;
        }
        if scores.len() >= Self::VOLUMES_MAX && !scores.contains_key(&volume) {
            scores.clear();
        }
        let score = scores.entry(volume).or_default();
        *score = (*score + 1).min(Self::SCORE_MAX);
    }
}

/// One replica's answer within `timeout`. Reads go out in the node's read
/// batches (see [`haystack::client::NeedleReader::read_batched`]), which
/// answer needles up to [`WHOLE_BODY_MAX_BYTES`] whole; a larger one is then
/// asked for alone and streamed.
async fn read_replica(
    state: &AppState,
    address: &StoreAddress,
    id: BlobId,
    kind: ReadKind,
    timeout: Duration,
) -> Result<Fetched, ReplicaError> {
    let head = kind == ReadKind::Head;
    let read = BatchRead {
        volume: id.volume,
        key: id.key,
        cookie: id.cookie,
        head,
        max_data_bytes: if head { u32::MAX } else { WHOLE_BODY_MAX_BYTES },
    };
    let batched = state.reader.read_batched(address, read);
    let answer = match tokio::time::timeout(timeout, batched).await {
        Err(_) => return Err(ReplicaError::TimedOut),
        Ok(Err(e)) => return Err(ReplicaError::Failed(e)),
        Ok(Ok(answer)) => answer,
    };
    match answer {
        BatchAnswer::Found {
            content_type,
            len,
            data,
            ..
        } => Ok(Fetched {
            content_type: HeaderValue::from_maybe_shared(content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            len,
            body: if head {
                FetchedBody::None
            } else {
                FetchedBody::Whole(data)
            },
        }),
        BatchAnswer::NotFound => Err(ReplicaError::NotFound),
        BatchAnswer::UnknownVolume(m) => Err(ReplicaError::Failed(ClientError::UnknownVolume(m))),
        BatchAnswer::Corrupt(m) => Err(ReplicaError::Failed(ClientError::Corrupt(m))),
        BatchAnswer::Failed(message) => Err(ReplicaError::Failed(ClientError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
            code: String::new(),
            message,
        })),
        BatchAnswer::TooLarge { .. } => stream_replica(state, address, id, timeout).await,
    }
}

/// A needle asked for alone (too large for a read batch, of a volume whose
/// reads skip it, or at a node of this process): its headers, and a small needle's checked data,
/// within `timeout`; a larger needle's data to be streamed.
async fn stream_replica(
    state: &AppState,
    address: &StoreAddress,
    id: BlobId,
    timeout: Duration,
) -> Result<Fetched, ReplicaError> {
    let read = state
        .reader
        .read(address, ReadKind::Get, id.volume, id.key, id.cookie);
    let deadline = tokio::time::Instant::now() + timeout;
    let head = match tokio::time::timeout_at(deadline, read).await {
        Err(_) => return Err(ReplicaError::TimedOut),
        Ok(Err(ClientError::NotFound)) => return Err(ReplicaError::NotFound),
        Ok(Err(e)) => return Err(ReplicaError::Failed(e)),
        Ok(Ok(head)) => head,
    };
    let Some(len) = head.content_length else {
        return Err(ReplicaError::NoLength);
    };
    let content_type = head.content_type.clone();
    // A small needle asked for alone (not in a batch) is
    // received whole and checked as a batch answer is, so that a bad copy
    // is reported and the next replica asked.
    let body = if len <= u64::from(WHOLE_BODY_MAX_BYTES) {
        match tokio::time::timeout_at(deadline, head.into_bytes_verified()).await {
            Err(_) => return Err(ReplicaError::TimedOut),
            Ok(Err(e)) => return Err(ReplicaError::Failed(e)),
            Ok(Ok(data)) => FetchedBody::Whole(data),
        }
    } else {
        FetchedBody::Stream(head)
    };
    Ok(Fetched {
        content_type,
        len,
        body,
    })
}

/// Builds the answer from a replica's needle headers and body.
fn respond(
    state: &Arc<AppState>,
    id: BlobId,
    head: bool,
    headers: &HeaderMap,
    needle: Fetched,
) -> Result<Response, ApiError> {
    let len = needle.len;
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
    builder = builder.header(header::CONTENT_TYPE, needle.content_type);
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
    let body = match needle.body {
        _ if head => Body::empty(),
        FetchedBody::None => Body::empty(),
        FetchedBody::Whole(data) => {
            // The whole data is here and its length checked, so the range
            // (within `len`) slices it.
            let start = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
            let end = usize::try_from(skip + take)
                .unwrap_or(usize::MAX)
                .min(data.len());
            state.metrics.add_bytes_out((end - start) as u64);
            Body::from(data.slice(start..end))
        }
        FetchedBody::Stream(needle) => {
            let stream = slice_stream(needle.into_stream(), skip, take, state.clone());
            Body::from_stream(stream)
        }
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

/// The retry of a delete whose hot part landed but whose tombstone did not
/// (the journal holders failed it, the router died between the two): the
/// replicas now answer `not_found`, but the needle is still live in the
/// warm journal once the migration opened it. If the journal is open (or
/// the volume warm) and a fresh replica holds the needle deleted with this
/// very cookie (not a wrong cookie on a live needle), the tombstone goes
/// there now; `true` then.
async fn retry_reaches_journal(
    state: &AppState,
    volume: &LogicalVolume,
    nodes: &HashMap<String, NodeRecord>,
    id: BlobId,
) -> Result<bool, ApiError> {
    let now = state.cache.volume(id.volume, true).await?;
    let Some(warm) = now
        .warm
        .as_ref()
        .filter(|w| now.state == VolumeState::Warm || w.journal_open)
    else {
        return Ok(false);
    };
    for node in volume
        .fresh_replicas()
        .filter_map(|r| nodes.get(r).filter(|n| n.is_up()))
    {
        let Ok(store) = state.store_for_writes(node) else {
            continue;
        };
        let Ok(raw) = store.raw_needle(id.volume, id.key).await else {
            continue;
        };
        let header = haystack::format::decode_needle_header(&raw, id.volume, 0);
        if header.is_ok_and(|h| h.deleted() && h.cookie == id.cookie && h.key == id.key) {
            warm::tombstone(state, id.volume, warm, &[id.key]).await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// `DELETE /blobs/{id}`: deletes on every replica on an `up` node. `204`
/// once at least one replica deleted the needle and every other replica
/// (down, stale, or failing the delete) was recorded in the directory as
/// having missed it, so that it serves no read until resynced (which
/// carries the delete over), and, if a migration has opened the volume's
/// warm journal meanwhile, that journal took it too; `404` when none
/// deleted it and a fresh one says it is not there (a retry, or a BLOB that
/// never was), once every replica that failed was recorded the same way;
/// `503` otherwise. A warm volume's delete is a tombstone in its journal
/// ([`warm::delete`]).
pub(crate) async fn delete_blob(
    State(state): State<Arc<AppState>>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = id_from_uri(&uri)?;
    let volume = state.cache.volume(id.volume, true).await?;
    let nodes = state.cache.nodes(false).await?;
    if volume.state == VolumeState::Warm {
        warm::delete(&state, &volume, id).await?;
        // Until the migration has had every router read the flip and has
        // retired the hot replicas, a router may still read them by an
        // entry from before the flip: they take the delete too, or every
        // router reads the entry afresh before the answer.
        if !volume.replicas.is_empty() && migration_under_way(&state, id.volume).await {
            let hot = replica_deletes(&state, &volume, &nodes, id).await;
            let gone = volume.replicas.iter().zip(hot).all(|(replica, result)| {
                !nodes.contains_key(replica)
                    || matches!(
                        result,
                        Ok(Ok(()) | Err(ClientError::NotFound | ClientError::UnknownVolume(_)))
                    )
            });
            if !gone {
                every_router_reads_afresh(&state, id.volume, Some(VolumeState::Warm)).await;
            }
        }
        return Ok(deleted_answer(Tier::WARM));
    }
    let results = replica_deletes(&state, &volume, &nodes, id).await;
    let (mut deleted, mut not_found) = (0, 0);
    // Replicas that failed the delete (or were not asked), and stale ones
    // that answered `not_found`.
    let mut failed: Vec<(&str, String)> = Vec::new();
    let mut absent_on_stale: Vec<(&str, String)> = Vec::new();
    for (replica, result) in volume.replicas.iter().zip(results) {
        let fresh = !volume.is_stale(replica);
        match result {
            Ok(Ok(())) => deleted += 1,
            Ok(Err(ClientError::NotFound)) if fresh => not_found += 1,
            Ok(Err(ClientError::NotFound)) => {
                absent_on_stale.push((replica, "delete: not on the stale replica".to_owned()));
            }
            Ok(Err(e)) => {
                state.metrics.replica_failure("delete");
                tracing::warn!(volume = id.volume, node = %replica, error = %e, "delete failed");
                failed.push((replica, format!("delete: {e}")));
            }
            Err(reason) => failed.push((replica, format!("delete: {reason}"))),
        }
    }
    if deleted == 0 {
        if not_found == 0 {
            return Err(ApiError::Unavailable(format!(
                "no replica of volume {} could take the delete",
                id.volume
            )));
        }
        // Gone from a fresh replica: deleted already (a retry whose first
        // try failed somewhere) or never there. A replica that failed now
        // may still hold it live, so it is reported before any answer, as
        // below; a stale one that says `not_found` is not (a resync brings
        // every delete, and there may have been none).
        report_missed(&state, id.volume, &failed, &[]).await?;
        if retry_reaches_journal(&state, &volume, &nodes, id).await? {
            return Ok(deleted_answer(Tier::WARM));
        }
        return Err(ApiError::NotFound);
    }
    report_missed(&state, id.volume, &failed, &absent_on_stale).await?;
    // A migration carries the hot replicas' deletes into the warm journal
    // once it has opened it, and then flips: a delete that sees the journal
    // open (or the flip) goes there itself; one that does not landed on the
    // replicas before the journal opened, so the migration carries it.
    let now = state.cache.volume(id.volume, true).await?;
    if let Some(warm) = now.warm.as_ref()
        && (now.state == VolumeState::Warm || warm.journal_open)
    {
        warm::tombstone(&state, id.volume, warm, &[id.key]).await?;
    }
    Ok(deleted_answer(Tier::HOT))
}

/// Reports every replica in `failed` (it failed the delete, or was not
/// asked) and in `absent_on_stale` (a stale replica that lacks the needle:
/// its resync brings the delete, but one under way may have copied the
/// needle before it, and the report keeps that resync from clearing the
/// mark) to the directory as having missed a delete of volume `vid`, an
/// already marked one's too: the directory answers once no read lease
/// lets that replica serve the BLOB directly (`docs/ARCHITECTURE.md`,
/// "Direct reads"), and each report moves the volume's repair epoch past a
/// resync under way. Then, since one that failed may still hold the BLOB,
/// every router reads the entry afresh. `503` if a report did not reach
/// the directory.
async fn report_missed(
    state: &AppState,
    vid: u32,
    failed: &[(&str, String)],
    absent_on_stale: &[(&str, String)],
) -> Result<(), ApiError> {
    let reports = failed
        .iter()
        .chain(absent_on_stale)
        .map(|(replica, reason)| report_stale(state, vid, replica, reason, true));
    let unresolved = futures::future::join_all(reports)
        .await
        .into_iter()
        .filter(|reported| !reported)
        .count();
    if unresolved > 0 {
        return Err(ApiError::Unavailable(format!(
            "{unresolved} replica(s) of volume {vid} missed the delete and could not be reported"
        )));
    }
    if !failed.is_empty() {
        every_router_reads_afresh(state, vid, None).await;
    }
    Ok(())
}

/// The `204` of a delete, with the tier that took it.
fn deleted_answer(tier: Tier) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.extensions_mut().insert(tier);
    response
}

/// Whether volume `vid`'s migration job has not ended: a job records its
/// end only once every router read the flip and the hot replicas were
/// retired. One that failed after the flip without asking the routers (an
/// answer to the flip lost) counts as under way until routers' entries from
/// before it have run out (the cache lifetime, twice over for clocks). One
/// that cannot be read counts as under way; none at all (a job that ended
/// long ago and is gone) as ended.
async fn migration_under_way(state: &AppState, vid: u32) -> bool {
    let fresh_ms = state.config.directory_cache_ttl_ms.saturating_mul(2);
    match state.directory.migrations(vid.checked_sub(1), 1).await {
        Ok(page) => page.jobs.first().is_some_and(|job| {
            let failed_lately = job.step == MigrationStep::Failed
                && now_ms() < job.updated_ms.saturating_add(fresh_ms);
            job.volume == vid && (!job.step.is_final() || failed_lately)
        }),
        Err(e) => {
            tracing::warn!(volume = vid, error = %e, "no migration job read; taking it as under way");
            true
        }
    }
}

/// Asks every replica of `volume` on an `up` node to delete `id`'s needle,
/// all at once; per replica, its answer, or why it was not asked.
async fn replica_deletes(
    state: &AppState,
    volume: &LogicalVolume,
    nodes: &HashMap<String, NodeRecord>,
    id: BlobId,
) -> Vec<Result<Result<(), ClientError>, String>> {
    futures::future::join_all(volume.replicas.iter().map(|replica| {
        let node = nodes.get(replica).filter(|node| node.is_up());
        async move {
            let node = node.ok_or_else(|| "node down".to_owned())?;
            let store = state.store_for_writes(node).map_err(|e| e.to_string())?;
            Ok(store.delete_needle(id.volume, id.key, id.cookie).await)
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stream_at_once_where_large_blobs_were_read_lately() {
        let sizes = ReadSizes::default();
        assert!(!sizes.mostly_large(1), "nothing read yet");
        for _ in 0..7 {
            sizes.record(1, true);
        }
        assert!(!sizes.mostly_large(1));
        sizes.record(1, true);
        assert!(sizes.mostly_large(1));
        assert!(!sizes.mostly_large(2), "per volume");
        // One small read in a run of large ones leaves them streaming
        // soon; half small, half large keeps them batched.
        for _ in 0..20 {
            sizes.record(1, true);
        }
        sizes.record(1, false);
        assert!(sizes.mostly_large(1));
        for _ in 0..20 {
            sizes.record(1, false);
            sizes.record(1, true);
        }
        assert!(!sizes.mostly_large(1));
        // Thumbnails read nine times as often as their originals.
        for _ in 0..20 {
            sizes.record(3, true);
            for _ in 0..9 {
                sizes.record(3, false);
            }
        }
        assert!(!sizes.mostly_large(3));
    }
}
