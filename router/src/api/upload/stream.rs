//! The streamed path of `POST /blobs`: a body whose declared
//! `Content-Length` is above `retry_buffer_bytes` goes to the three replicas
//! as it arrives instead of being received whole first.
//!
//! A volume is checked out of the pool and its next key taken before the
//! first byte is read (a volume or replica found unusable then is retried on
//! another volume, as nothing is lost yet). Each replica's append gets a
//! bounded channel of [`CHANNEL_CHUNKS`] chunks as its request body; each
//! chunk the client sends is hashed and sent to the three channels (the
//! `Bytes` shared, never copied), waiting for the slowest replica to take
//! it, so the client is slowed down to the slowest replica and an upload
//! holds a few chunks. Only those chunks count against
//! `upload_buffer_bytes`: a chunk's permits go back once every replica has
//! taken it.
//!
//! A replica has a whole body only once the client's body has ended with
//! exactly its `Content-Length` (the last chunk is held back until the body
//! is seen to end), so when the client's body ends short, runs long or
//! stalls, the appends are aborted (an error in the channels, the senders
//! dropped, the requests cancelled) and no store writes anything (a store
//! collects the whole body before it appends). The volume stays in use.
//!
//! The store requests have no whole-request timeout here (a long body that
//! keeps flowing is fine): a replica must take each chunk within
//! `replica_timeout_ms`, and answer within `replica_timeout_ms` of the end
//! of the body. A replica that fails mid-stream cannot be retried around
//! (the bytes are gone): the volume is taken out of service as on the
//! buffered path, the rest of the client's body is drained (bounded) and the
//! client gets one `503 replica_failed`. Replicas that had the whole body
//! when another failed may keep a needle no id points to: dead space, as
//! after a failed attempt on the buffered path.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::FutureExt;
use haystack::client::{ClientError, StoreClient};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::{
    BodyDigest, REFUSED_BODY_DRAIN_BYTES, ReplicaError, ReplicaFailure, attempt_volume, describe,
    drain_refused_body, handle_failures, refused_by_every_replica, request_refusal,
};
use crate::api::error::ApiError;
use crate::api::id::BlobId;
use crate::api::pool::VolumeLease;
use crate::api::state::{AppState, NodeMap};
use crate::directory::LogicalVolume;

/// Chunks each replica's channel holds: enough to keep an append busy
/// while the next chunk arrives, few enough that an upload holds little.
const CHANNEL_CHUNKS: usize = 4;

/// A BLOB stored by [`store_streamed`].
pub(super) struct StreamedBlob {
    pub(super) id: BlobId,
    pub(super) len: u64,
    pub(super) sha256: [u8; 32],
}

/// A chunk on its way to the replicas; its memory permits go back when the
/// last replica has taken its copy of the handle.
#[derive(Clone)]
struct Chunk {
    data: Bytes,
    _memory: Arc<OwnedSemaphorePermit>,
}

type ChunkItem = Result<Chunk, std::io::Error>;

/// One replica's append in flight, fed through `chunks`.
struct ReplicaAppend {
    node: String,
    chunks: mpsc::Sender<ChunkItem>,
    task: JoinHandle<Result<(), ClientError>>,
}

/// Why forwarding stopped before the body's end.
enum Stop {
    /// The client's body is bad (short, long, stalled) or upload memory ran
    /// out: nothing reached a store whole; answer this error.
    Client(ApiError),
    /// These replicas (by index) took no more chunks: closed (their append
    /// ended) or, with a reason, too slow.
    Replicas(Vec<(usize, Option<String>)>),
}

/// Stores a body of `declared` bytes by streaming it to the replicas of one
/// volume.
pub(super) async fn store_streamed(
    state: &AppState,
    content_type: &str,
    mut body: Body,
    declared: u64,
) -> Result<StreamedBlob, ApiError> {
    let (lease, volume, id, stores) = open_volume(state).await?;
    let appends: Vec<ReplicaAppend> = stores
        .into_iter()
        .map(|(node, store)| start_append(node, store, id, content_type, declared))
        .collect();
    match forward_body(state, &mut body, declared, &appends).await {
        Ok(sha256) => {
            state.metrics.add_bytes_in(declared);
            let failures = finish(state, appends).await;
            if failures.is_empty() {
                lease.release();
                return Ok(StreamedBlob {
                    id,
                    len: declared,
                    sha256,
                });
            }
            Err(fail(state, lease, &volume, failures).await)
        }
        Err(Stop::Client(error)) => {
            for append in appends {
                abort(append);
            }
            // No replica got the whole body, so the volume is fine.
            lease.release();
            Err(error)
        }
        Err(Stop::Replicas(stopped)) => {
            let failures = collect_stopped(state, appends, &stopped).await;
            let error = fail(state, lease, &volume, failures).await;
            drain_refused_body(body, REFUSED_BODY_DRAIN_BYTES).await;
            Err(error)
        }
    }
}

/// A volume, a new id on it and a client for each of its replicas, trying
/// up to `upload_attempts` volumes: nothing is lost before the first byte
/// is read, so a volume with an unusable replica is retired and another
/// tried.
async fn open_volume(
    state: &AppState,
) -> Result<
    (
        VolumeLease,
        Arc<LogicalVolume>,
        BlobId,
        Vec<(String, StoreClient)>,
    ),
    ApiError,
> {
    let attempts = state.config.upload_attempts.max(1);
    let mut last = String::from("no attempt made");
    for attempt in 1..=attempts {
        let Some((lease, volume, id)) = attempt_volume(state, attempt, &mut last).await else {
            continue;
        };
        let nodes = match state.cache.nodes(false).await {
            Ok(nodes) => nodes,
            Err(e) => {
                lease.release();
                return Err(e);
            }
        };
        let (stores, failures) = replica_stores(state, &volume, &nodes);
        if failures.is_empty() {
            return Ok((lease, volume, id, stores));
        }
        lease.retire();
        last = describe(&failures);
        tracing::warn!(volume = volume.id, attempt, failures = %last, "replica unusable before a streamed upload");
        handle_failures(state, &volume, failures).await;
    }
    Err(ApiError::UploadFailed { attempts, last })
}

/// A streaming client for each replica of `volume`, and the replicas that
/// cannot get one (unknown or down node, unusable address).
fn replica_stores(
    state: &AppState,
    volume: &LogicalVolume,
    nodes: &NodeMap,
) -> (Vec<(String, StoreClient)>, Vec<ReplicaFailure>) {
    let mut stores = Vec::new();
    let mut failures = Vec::new();
    for node_id in &volume.replicas {
        let store = match nodes.get(node_id) {
            None => Err(ReplicaError::Unavailable(
                "node unknown to the directory".into(),
            )),
            Some(node) if !node.is_up() => Err(ReplicaError::Unavailable("node down".into())),
            Some(node) => state
                .store_for_streamed_writes(node)
                .map_err(|e| ReplicaError::Unavailable(e.to_string())),
        };
        match store {
            Ok(store) => stores.push((node_id.clone(), store)),
            Err(error) => failures.push(ReplicaFailure {
                node: node_id.clone(),
                error,
            }),
        }
    }
    (stores, failures)
}

/// Starts one replica's append; its body is what arrives on the channel.
fn start_append(
    node: String,
    store: StoreClient,
    id: BlobId,
    content_type: &str,
    len: u64,
) -> ReplicaAppend {
    let (chunks, received) = mpsc::channel::<ChunkItem>(CHANNEL_CHUNKS);
    let content_type = content_type.to_owned();
    let task = tokio::spawn(async move {
        store
            .append_needle_streamed(
                id.volume,
                id.key,
                id.cookie,
                &content_type,
                len,
                replica_body(received),
            )
            .await
            .map(|_| ())
    });
    ReplicaAppend { node, chunks, task }
}

/// A request body yielding the channel's chunks; a chunk's memory handle is
/// dropped as the chunk is handed to the connection.
fn replica_body(chunks: mpsc::Receiver<ChunkItem>) -> reqwest::Body {
    let stream = futures::stream::unfold(chunks, |mut chunks| async move {
        let item = chunks.recv().await?;
        Some((item.map(|chunk| chunk.data), chunks))
    });
    reqwest::Body::wrap_stream(stream)
}

/// Reads the client's body and sends it on to every replica; returns its
/// SHA-256 once exactly `declared` bytes arrived and the body ended.
async fn forward_body(
    state: &AppState,
    body: &mut Body,
    declared: u64,
    appends: &[ReplicaAppend],
) -> Result<[u8; 32], Stop> {
    let idle_ms = state.config.body_idle_timeout_ms;
    let replica_timeout = Duration::from_millis(state.config.replica_timeout_ms);
    let mut digest = BodyDigest::new(Some(declared));
    let mut len: u64 = 0;
    while len < declared {
        let Some(data) = next_data(body, idle_ms).await.map_err(Stop::Client)? else {
            return Err(Stop::Client(ApiError::BadRequest(format!(
                "body has {len} bytes, Content-Length said {declared}"
            ))));
        };
        len += data.len() as u64;
        // The chunk that completes the body goes out only once the body is
        // seen to end: a store that got every declared byte would append.
        let longer = len > declared
            || (len == declared
                && next_data(body, idle_ms)
                    .await
                    .map_err(Stop::Client)?
                    .is_some());
        if longer {
            return Err(Stop::Client(ApiError::BadRequest(format!(
                "body longer than its Content-Length of {declared} bytes"
            ))));
        }
        digest.update(&data).await.map_err(Stop::Client)?;
        let memory = chunk_memory(state, data.len())
            .await
            .map_err(Stop::Client)?;
        let chunk = Chunk {
            data,
            _memory: Arc::new(memory),
        };
        send_chunk(appends, chunk, replica_timeout).await?;
    }
    digest.finish().await.map_err(Stop::Client)
}

/// The next non-empty data frame of the body, or `None` at its end.
async fn next_data(body: &mut Body, idle_ms: u64) -> Result<Option<Bytes>, ApiError> {
    let idle = Duration::from_millis(idle_ms);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ApiError::BodyTimeout {
                    timeout_ms: idle_ms,
                });
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => {
                return Err(ApiError::BadRequest(format!(
                    "reading the body failed: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return Ok(Some(data));
        }
    }
}

/// Upload memory for one chunk (at most the whole budget, so a chunk never
/// waits for more than exists), waiting up to the body-idle timeout.
async fn chunk_memory(state: &AppState, len: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    let budget_kib = state
        .config
        .upload_buffer_bytes
        .div_ceil(1024)
        .min(Semaphore::MAX_PERMITS as u64);
    let kib = (len as u64).div_ceil(1024).min(budget_kib);
    let kib = u32::try_from(kib).unwrap_or(u32::MAX);
    let idle = Duration::from_millis(state.config.body_idle_timeout_ms);
    tokio::time::timeout(
        idle,
        state.upload_memory_kib.clone().acquire_many_owned(kib),
    )
    .await
    .map_err(|_| ApiError::Busy("upload memory exhausted".into()))?
    .map_err(|_| ApiError::Internal("upload memory semaphore closed".into()))
}

/// Sends a chunk to every replica at once and waits until each took it (or
/// failed to within `timeout`).
async fn send_chunk(
    appends: &[ReplicaAppend],
    chunk: Chunk,
    timeout: Duration,
) -> Result<(), Stop> {
    let sends = appends.iter().map(|append| {
        let item = Ok(chunk.clone());
        async move { tokio::time::timeout(timeout, append.chunks.send(item)).await }
    });
    let stopped: Vec<(usize, Option<String>)> = futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(index, sent)| match sent {
            Ok(Ok(())) => None,
            Ok(Err(_closed)) => Some((index, None)),
            Err(_elapsed) => Some((
                index,
                Some(format!("took no data for {} ms", timeout.as_millis())),
            )),
        })
        .collect();
    if stopped.is_empty() {
        Ok(())
    } else {
        Err(Stop::Replicas(stopped))
    }
}

/// Ends the replicas' bodies (every byte was sent) and waits for their
/// answers, each within the replica timeout; returns the failures.
async fn finish(state: &AppState, appends: Vec<ReplicaAppend>) -> Vec<ReplicaFailure> {
    let timeout_ms = state.config.replica_timeout_ms;
    let answers = appends.into_iter().map(|append| async move {
        let (node, answer) = end_and_wait(append, Duration::from_millis(timeout_ms)).await;
        let error = match answer {
            Some(Ok(Ok(()))) => return None,
            Some(Ok(Err(e))) => ReplicaError::Client(e),
            Some(Err(e)) => ReplicaError::Unavailable(format!("append task: {e}")),
            None => ReplicaError::Unavailable(format!(
                "no answer within {timeout_ms} ms of the body's end"
            )),
        };
        Some(ReplicaFailure { node, error })
    });
    futures::future::join_all(answers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// After replicas stopped taking chunks: aborts the appends still going
/// (their stores see a short body and write nothing) and collects why the
/// stopped ones (and any that ended meanwhile) failed.
async fn collect_stopped(
    state: &AppState,
    appends: Vec<ReplicaAppend>,
    stopped: &[(usize, Option<String>)],
) -> Vec<ReplicaFailure> {
    let timeout = Duration::from_millis(state.config.replica_timeout_ms);
    let mut ended = Vec::new();
    for (index, append) in appends.into_iter().enumerate() {
        match stopped.iter().find(|(i, _)| *i == index) {
            Some((_, Some(slow))) => {
                let error = ReplicaError::Unavailable(slow.clone());
                let node = append.node.clone();
                abort(append);
                ended.push(async move { Some(ReplicaFailure { node, error }) }.boxed());
            }
            Some((_, None)) => ended.push(answer_of(append, timeout).boxed()),
            None if append.task.is_finished() => {
                ended.push(answer_of(append, timeout).boxed());
            }
            None => abort(append),
        }
    }
    futures::future::join_all(ended)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Why an append that stopped taking chunks ended (it had no whole body, so
/// a success answer is a failure too).
async fn answer_of(append: ReplicaAppend, timeout: Duration) -> Option<ReplicaFailure> {
    let (node, answer) = end_and_wait(append, timeout).await;
    let error = match answer {
        Some(Ok(Err(e))) => ReplicaError::Client(e),
        Some(Ok(Ok(()))) => ReplicaError::Unavailable("answered before the body's end".into()),
        Some(Err(e)) => ReplicaError::Unavailable(format!("append task: {e}")),
        None => ReplicaError::Unavailable("stopped reading the body".into()),
    };
    Some(ReplicaFailure { node, error })
}

/// Ends an append's body (its chunk sender dropped) and waits up to
/// `timeout` for the append to end; returns its node and how it ended, or
/// `None` (the append aborted) if it did not end in time.
async fn end_and_wait(
    append: ReplicaAppend,
    timeout: Duration,
) -> (
    String,
    Option<Result<Result<(), ClientError>, tokio::task::JoinError>>,
) {
    let ReplicaAppend {
        node,
        chunks,
        mut task,
    } = append;
    drop(chunks);
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(ended) => (node, Some(ended)),
        Err(_) => {
            task.abort();
            (node, None)
        }
    }
}

/// Aborts an append before its body is complete: an error in its channel
/// (if there is room), then its sender dropped and its request cancelled.
/// Either way the store sees a broken or short body and writes nothing.
fn abort(append: ReplicaAppend) {
    let _ = append
        .chunks
        .try_send(Err(std::io::Error::other("upload aborted")));
    drop(append.chunks);
    append.task.abort();
}

/// The client's answer after failed appends: a refusal by every replica is
/// the request's fault (the volume goes back to the pool); anything else
/// takes the volume out of service, as on the buffered path.
async fn fail(
    state: &AppState,
    lease: VolumeLease,
    volume: &LogicalVolume,
    failures: Vec<ReplicaFailure>,
) -> ApiError {
    if refused_by_every_replica(&failures, volume.replicas.len()) {
        lease.release();
        return request_refusal(state, &failures);
    }
    lease.retire();
    let text = describe(&failures);
    tracing::warn!(volume = volume.id, failures = %text, "streamed upload failed");
    let too_large = failures.iter().any(|f| {
        matches!(
            f.error,
            ReplicaError::Client(ClientError::PayloadTooLarge(_))
        )
    });
    handle_failures(state, volume, failures).await;
    if too_large {
        // A store's own limit is below ours.
        ApiError::PayloadTooLarge {
            limit_bytes: state.config.max_blob_bytes,
        }
    } else {
        ApiError::ReplicaFailed(text)
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    /// A body of `chunks`, as a client would send it.
    fn body_of(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Body::from_stream(futures::stream::iter(frames))
    }

    fn test_state() -> AppState {
        let mut config = crate::api::RouterConfig::new("127.0.0.1:1");
        config.body_idle_timeout_ms = 500;
        config.replica_timeout_ms = 500;
        AppState::new(config).expect("state")
    }

    /// A replica that takes every chunk; returns the bytes it got and
    /// whether its body ended cleanly (`true`) or with an error.
    fn replica() -> (ReplicaAppend, JoinHandle<(Vec<u8>, bool)>) {
        let (chunks, mut received) = mpsc::channel::<ChunkItem>(CHANNEL_CHUNKS);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = received.recv().await {
                match item {
                    Ok(chunk) => got.extend_from_slice(&chunk.data),
                    Err(_) => return (got, false),
                }
            }
            (got, true)
        });
        let task = tokio::spawn(std::future::pending::<Result<(), ClientError>>());
        let append = ReplicaAppend {
            node: "n".into(),
            chunks,
            task,
        };
        (append, reader)
    }

    #[tokio::test]
    async fn a_body_longer_than_declared_never_reaches_a_replica_whole() {
        let state = test_state();
        let (append, reader) = replica();
        let appends = vec![append];
        let mut body = body_of(&[b"0123", b"4567", b"89"]);
        let result = forward_body(&state, &mut body, 8, &appends).await;
        assert!(
            matches!(result, Err(Stop::Client(ApiError::BadRequest(_)))),
            "an 8-byte Content-Length with 10 bytes sent is refused"
        );
        for append in appends {
            abort(append);
        }
        let (got, clean) = reader.await.expect("reader");
        // The chunk completing the 8 bytes was held back: the replica saw a
        // short, broken body.
        assert!(got.len() < 8 && !clean, "got {got:?}, clean end {clean}");
    }

    #[tokio::test]
    async fn an_exact_body_is_forwarded_whole_and_hashed() {
        let state = test_state();
        let (append, reader) = replica();
        let appends = vec![append];
        let mut body = body_of(&[b"0123", b"4567"]);
        let sha = forward_body(&state, &mut body, 8, &appends)
            .await
            .unwrap_or_else(|_| panic!("an exact body is forwarded"));
        assert_eq!(sha, <[u8; 32]>::from(sha2::Sha256::digest(b"01234567")));
        for append in appends {
            drop(append.chunks);
            append.task.abort();
        }
        let (got, clean) = reader.await.expect("reader");
        assert_eq!((got.as_slice(), clean), (&b"01234567"[..], true));
        // Every chunk's memory went back once the replica took it.
        assert_eq!(
            state.upload_memory_kib.available_permits() as u64,
            state.config.upload_buffer_bytes.div_ceil(1024)
        );
    }

    #[tokio::test]
    async fn a_short_body_is_refused() {
        let state = test_state();
        let (append, _reader) = replica();
        let appends = vec![append];
        let mut body = body_of(&[b"0123"]);
        let result = forward_body(&state, &mut body, 8, &appends).await;
        assert!(matches!(result, Err(Stop::Client(ApiError::BadRequest(_)))));
    }
}
