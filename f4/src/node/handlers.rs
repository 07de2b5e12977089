//! The storage node's routes and handlers.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::{get, post, put};
use bytes::Bytes;
use coding::{BlockChecksums, BlockChecksumsBuilder};
use futures::StreamExt;
use tower::util::MapFutureLayer;

use super::NodeState;
use super::held::Lookup;
use crate::api::{
    BlockCheck, BlockId, BlockPage, BlockRecord, LivePage, MergeReport, MergeRequest, PAGE_MAX,
    PageQuery, RangeRead, Space, TombstoneRequest, code,
};
use crate::block::{ExpectedBlock, block_file_name, read_header};
use crate::client::KeyLookup;
use crate::format::{BLOCK_HEADER_SIZE, BlockHeader};
use crate::http::{ApiError, JsonBody, io};
use crate::transfer::{FileWriter, TransferError, write_stream};
use haystack::api::{PageCursor, format_key, parse_key};
use haystack::file::durable_rename;
use haystack::http::{deadline, method_not_allowed, no_route};

/// Largest range read inline from the page cache (a 1 MiB BLOB's needle
/// with its frame); a larger one goes to the blocking pool, under its
/// permits, so that inline reads hold little memory at once.
const INLINE_RANGE_BYTES_MAX: u64 = 2 << 20;

/// Most peers a merge may name.
const MERGE_PEERS_MAX: usize = 16;

/// The storage node's HTTP API. Lookups, reads and tombstones run under the
/// request timeout; block and index transfers, seals and merges under the
/// transfer timeout.
pub fn router(state: NodeState) -> Router {
    let request = Duration::from_millis(state.config().request_timeout_ms);
    let transfer = state.transfer_timeout();
    let timed = Router::new()
        .route("/health", get(haystack::http::health))
        .route("/blocks", get(list_blocks))
        .route("/blocks/read", post(read_range))
        .route("/blocks/check", post(check_block))
        .route("/space", get(space))
        .route("/batch", post(super::batch::read_batch))
        .route("/volumes/{vid}/{generation}", get(describe))
        .route("/volumes/{vid}/{generation}/keys/{key}", get(lookup))
        .route("/volumes/{vid}/{generation}/tombstones", post(tombstone))
        .route("/volumes/{vid}/{generation}/live", get(live_entries))
        .layer(MapFutureLayer::new(
            move |handler: RouteFuture<std::convert::Infallible>| deadline(request, handler),
        ));
    let transfers = Router::new()
        .route(
            "/blocks/{vid}/{generation}/{stripe}/{block}",
            put(put_block).get(get_block).delete(delete_block),
        )
        .route(
            "/volumes/{vid}/{generation}/index",
            put(put_index).get(get_index),
        )
        .route("/volumes/{vid}/{generation}/merge", post(merge))
        .route("/volumes/{vid}/prune", post(super::seal::prune))
        .route("/seal", post(super::seal::seal))
        .route("/derive/{vid}/{generation}", post(super::derive::derive))
        .route(
            "/seal/{vid}/{generation}/distribute",
            post(super::seal::distribute),
        )
        .route(
            "/seal/{vid}/{generation}",
            axum::routing::delete(super::seal::discard),
        )
        .layer(MapFutureLayer::new(
            move |handler: RouteFuture<std::convert::Infallible>| deadline(transfer, handler),
        ));
    timed
        .merge(transfers)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .with_state(state)
}

/// A path's parameters, or our `400`.
pub(super) fn params_of<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The declared length of a body, required.
fn content_length(headers: &HeaderMap) -> Result<u64, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                code::BAD_REQUEST,
                "a Content-Length is required",
            )
        })
}

/// Temporary names that never collide between concurrent writes.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

fn temporary_in(dir: &FsPath, name: &str) -> PathBuf {
    let n = TEMPORARY.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{name}.{}.{n}.tmp", std::process::id()))
}

/// Removes a temporary file unless it was renamed into place.
struct TemporaryFile(Option<PathBuf>);

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `200` with `file` streamed whole, with its length.
fn file_answer(file: std::fs::File) -> Result<Response, ApiError> {
    let len = file.metadata().map_err(io)?.len();
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /blocks/{vid}/{gen}/{stripe}/{block}`: the block's file as it lies
/// on disk, for a copy to another node (whose `PUT` checks every chunk).
async fn get_block(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64, u64, u32)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (volume, generation, stripe, block) = params_of(path)?;
    let name = block_file_name(volume, generation, stripe, block);
    let file = state
        .blocking(move |inner| std::fs::File::open(inner.blocks_dir.join(&name)).map_err(io))
        .await?;
    file_answer(file)
}

/// `DELETE /blocks/{vid}/{gen}/{stripe}/{block}`: removes the block's file
/// (a copy the directory no longer names: a moved block's old copy, an
/// orphan the coordinator found): `204`, also when absent.
async fn delete_block(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64, u64, u32)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (volume, generation, stripe, block) = params_of(path)?;
    let name = block_file_name(volume, generation, stripe, block);
    state
        .blocking(
            move |inner| match std::fs::remove_file(inner.blocks_dir.join(&name)) {
                Ok(()) => {
                    tracing::info!(block = %name, "block removed");
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(e)),
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /blocks/{vid}/{gen}/{stripe}/{block}`: a whole block file (header,
/// data, checksum record). Its header must name this block and a valid
/// geometry, its length must be what the header says, and its checksum
/// record must match its data, computed as it streams in; only then is it
/// synced and renamed into place (replacing the same block, so a retried
/// write is harmless).
async fn put_block(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64, u64, u32)>, PathRejection>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let (volume, generation, stripe, block) = params_of(path)?;
    let declared = content_length(request.headers())?;
    let max_file = state
        .config()
        .max_block_size_bytes
        .saturating_add(BLOCK_HEADER_SIZE as u64)
        .saturating_add(1 << 20);
    if declared > max_file {
        return Err(ApiError::payload_too_large(format!(
            "a block file of {declared} bytes is over this node's {max_file}"
        )));
    }
    let mut stream = request.into_body().into_data_stream();
    let _room = match RoomTaken::take(&state, declared).await {
        Ok(room) => room,
        Err(refusal) => {
            // As for a refused header below: read a little of the body so
            // that the client sees the refusal, not a reset.
            let idle = Duration::from_millis(state.config().server.header_read_timeout_ms);
            haystack::http::drain(&mut stream, idle).await;
            return Err(refusal);
        }
    };
    let name = block_file_name(volume, generation, stripe, block);
    let blocks_dir = state.inner.blocks_dir.clone();
    let tmp_path = temporary_in(&blocks_dir, &name);
    let mut guard = TemporaryFile(Some(tmp_path.clone()));
    let mut file = FileWriter::create(&tmp_path).await.map_err(io)?;
    let mut head = Vec::with_capacity(BLOCK_HEADER_SIZE);
    let mut header: Option<BlockHeader> = None;
    let mut checksums: Option<BlockChecksumsBuilder> = None;
    let mut tail = Vec::new();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("block body: {e}")))?;
        received += chunk.len() as u64;
        if received > declared {
            return Err(ApiError::bad_request(
                "the body is longer than its Content-Length",
            ));
        }
        file.write(chunk.clone()).await.map_err(io)?;
        let mut rest = &chunk[..];
        if header.is_none() {
            let take = (BLOCK_HEADER_SIZE - head.len()).min(rest.len());
            head.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if head.len() < BLOCK_HEADER_SIZE {
                continue;
            }
            let accepted = accept_header(&state, &head).and_then(|decoded| {
                check_block_header(&decoded, volume, generation, stripe, block, declared)?;
                let builder = BlockChecksumsBuilder::new(decoded.geometry.chunk_size_bytes)
                    .map_err(crate::Error::from)?;
                Ok((decoded, builder))
            });
            match accepted {
                Ok((decoded, builder)) => {
                    header = Some(decoded);
                    checksums = Some(builder);
                }
                Err(refusal) => {
                    // Read a little more of a refused body before answering:
                    // a socket closed with unread input is reset, and the
                    // client would see the reset instead of the refusal.
                    let idle = Duration::from_millis(state.config().server.header_read_timeout_ms);
                    haystack::http::drain(&mut stream, idle).await;
                    return Err(refusal);
                }
            }
        }
        let (Some(header), Some(builder)) = (&header, &mut checksums) else {
            unreachable!("set together above");
        };
        let data_end = BLOCK_HEADER_SIZE as u64 + header.block_len_bytes;
        let at = received - rest.len() as u64;
        let data_left = data_end.saturating_sub(at);
        let data = (data_left.min(rest.len() as u64)) as usize;
        builder.update(&rest[..data]);
        tail.extend_from_slice(&rest[data..]);
    }
    if received != declared {
        return Err(ApiError::bad_request(format!(
            "the body ended after {received} of its {declared} bytes"
        )));
    }
    let (Some(header), Some(builder)) = (header, checksums) else {
        return Err(ApiError::bad_request(
            "the body is shorter than a block header",
        ));
    };
    let sent = BlockChecksums::decode(&tail).map_err(crate::Error::from)?;
    header.check_checksums(&sent)?;
    if builder.finish() != sent {
        return Err(ApiError::bad_request(
            "the block's checksum record does not match its data",
        ));
    }
    file.finish_synced().await.map_err(io)?;
    let final_path = blocks_dir.join(&name);
    state
        .blocking(move |inner| {
            durable_rename(&blocks_dir, &tmp_path, &final_path).map_err(io)?;
            inner.open_blocks.forget(&name);
            Ok(())
        })
        .await?;
    guard.0 = None;
    tracing::debug!(
        volume,
        generation,
        stripe,
        block,
        bytes = declared,
        "block stored"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The header a block write starts with, decoded, within this node's block
/// size.
fn accept_header(state: &NodeState, head: &[u8]) -> Result<BlockHeader, ApiError> {
    let decoded = BlockHeader::decode(head)?;
    if decoded.geometry.block_size_bytes > state.config().max_block_size_bytes {
        return Err(ApiError::payload_too_large(format!(
            "blocks of {} bytes are over this node's {}",
            decoded.geometry.block_size_bytes,
            state.config().max_block_size_bytes
        )));
    }
    Ok(decoded)
}

/// `Ok` if `header` is the header of block `block` of `stripe` of `volume`'s
/// `generation`, of a valid geometry, in a file of `file_len` bytes.
fn check_block_header(
    header: &BlockHeader,
    volume: u32,
    generation: u64,
    stripe: u64,
    block: u32,
    file_len: u64,
) -> Result<(), ApiError> {
    let named = (
        header.volume_id,
        header.generation,
        header.stripe,
        header.block_index,
    );
    if named != (volume, generation, stripe, block) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            code::WRONG_BLOCK,
            format!(
                "the body is block {} of stripe {} of volume {} generation {}, not the one in \
                 the path",
                header.block_index, header.stripe, header.volume_id, header.generation
            ),
        ));
    }
    // The header's own length must be the geometry's for its place.
    BlockHeader::new(volume, generation, header.geometry, stripe, block)
        .ok()
        .filter(|expected| expected == header)
        .ok_or_else(|| ApiError::bad_request("the block header does not fit its geometry"))?;
    if header.file_len_bytes() != Some(file_len) {
        return Err(ApiError::bad_request(format!(
            "a block file of {file_len} bytes; its header says {:?}",
            header.file_len_bytes()
        )));
    }
    Ok(())
}

/// `POST /blocks/read`: a verified byte range of a block.
async fn read_range(
    State(state): State<NodeState>,
    JsonBody(read): JsonBody<RangeRead>,
) -> Result<Response, ApiError> {
    let target = RangeTarget::new(&state, read)?;
    let bytes = match target.read_inline(&state)? {
        Some(bytes) => bytes,
        None => {
            state
                .blocking(move |inner| target.read_blocking(inner))
                .await?
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `POST /blocks/check`: `204` once the whole block was read from disk with
/// the header expected and every chunk matching its CRC; else the error a
/// range read of the failing part gives.
async fn check_block(
    State(state): State<NodeState>,
    JsonBody(check): JsonBody<BlockCheck>,
) -> Result<StatusCode, ApiError> {
    let BlockId {
        volume,
        generation,
        stripe,
        block,
    } = check.block;
    let expected = ExpectedBlock {
        volume_id: volume,
        generation,
        geometry: check.geometry,
        stripe,
        block_index: block,
    };
    let name = block_file_name(volume, generation, stripe, block);
    state
        .blocking(move |inner| {
            let file = crate::block::BlockFile::open(&inner.blocks_dir.join(&name))?;
            let len = file.header().block_len_bytes;
            // A piece at a time, in whole chunks: memory stays bounded.
            let piece = u64::from(check.geometry.chunk_size_bytes) * 64;
            let mut at = 0;
            loop {
                let n = piece.min(len - at);
                file.read_range(&expected, at, n)?;
                at += n;
                if at >= len {
                    return Ok(());
                }
            }
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A range read, checked against this node's limit: the block file it
/// reads and the header that file must have.
pub(super) struct RangeTarget {
    read: RangeRead,
    name: String,
    expected: ExpectedBlock,
}

impl RangeTarget {
    pub(super) fn new(state: &NodeState, read: RangeRead) -> Result<RangeTarget, ApiError> {
        if read.len > state.config().max_range_bytes {
            return Err(ApiError::payload_too_large(format!(
                "a read of {} bytes is over this node's {}",
                read.len,
                state.config().max_range_bytes
            )));
        }
        let BlockId {
            volume,
            generation,
            stripe,
            block,
        } = read.block;
        Ok(RangeTarget {
            read,
            name: block_file_name(volume, generation, stripe, block),
            expected: ExpectedBlock {
                volume_id: volume,
                generation,
                geometry: read.geometry,
                stripe,
                block_index: block,
            },
        })
    }

    /// Bytes wanted.
    pub(super) fn len(&self) -> u64 {
        self.read.len
    }

    /// The range if its block is open and it is small and in the page
    /// cache: a read on the async task. `None` otherwise.
    pub(super) fn read_inline(&self, state: &NodeState) -> Result<Option<Bytes>, ApiError> {
        if self.read.len > INLINE_RANGE_BYTES_MAX {
            return Ok(None);
        }
        let inner = &state.inner;
        let Some(file) = inner.open_blocks.get_open(&inner.blocks_dir, &self.name) else {
            return Ok(None);
        };
        Ok(file.try_read_range_cached(&self.expected, self.read.offset, self.read.len)?)
    }

    /// The range, waiting for the disk if need be: on the blocking pool.
    pub(super) fn read_blocking(&self, inner: &super::Inner) -> Result<Bytes, ApiError> {
        let file = inner.open_blocks.get(&inner.blocks_dir, &self.name)?;
        Ok(file.read_range(&self.expected, self.read.offset, self.read.len)?)
    }
}

/// `GET /blocks`: a page of the blocks this node holds, by file name.
async fn list_blocks(
    State(state): State<NodeState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<axum::Json<BlockPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit().map_err(ApiError::bad_request)?;
    let page = state
        .blocking(move |inner| {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&inner.blocks_dir).map_err(crate::Error::Io)? {
                let name = entry.map_err(crate::Error::Io)?.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.ends_with(".block")
                    && query.after.as_deref().is_none_or(|after| name > after)
                {
                    names.push(name.to_owned());
                }
            }
            names.sort();
            let more = names.len() > limit;
            names.truncate(limit);
            let mut blocks = Vec::with_capacity(names.len());
            for name in &names {
                let file =
                    std::fs::File::open(inner.blocks_dir.join(name)).map_err(crate::Error::Io)?;
                let file_bytes = file.metadata().map_err(crate::Error::Io)?.len();
                let header = read_header(&file)?;
                blocks.push(BlockRecord {
                    block: BlockId {
                        volume: header.volume_id,
                        generation: header.generation,
                        stripe: header.stripe,
                        block: header.block_index,
                    },
                    len_bytes: header.block_len_bytes,
                    file_bytes,
                });
            }
            Ok(BlockPage {
                next_after: names.last().filter(|_| more).cloned(),
                blocks,
            })
        })
        .await?;
    Ok(axum::Json(page))
}

/// `PUT /volumes/{vid}/{gen}/index`: install the volume's index file, with
/// an empty journal, unless this node already holds it.
async fn put_index(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let (volume, generation) = params_of(path)?;
    let declared = content_length(request.headers())?;
    if declared > state.config().max_index_bytes {
        return Err(ApiError::payload_too_large(format!(
            "an index of {declared} bytes is over this node's {}",
            state.config().max_index_bytes
        )));
    }
    let tmp = temporary_in(&state.inner.volumes_dir, "index");
    let mut guard = TemporaryFile(Some(tmp.clone()));
    receive_file(request.into_body(), &tmp, declared).await?;
    let installed = state
        .blocking(move |inner| {
            inner
                .held
                .install(volume, generation, &tmp)
                .map_err(|e| match e {
                    crate::Error::Io(e) => io(e),
                    other => ApiError::bad_request(format!("index refused: {other}")),
                })
        })
        .await?;
    guard.0 = None;
    tracing::info!(volume, generation, installed, "index received");
    Ok(if installed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

/// Writes `body` (exactly `declared` bytes) to `path`, synced.
async fn receive_file(body: Body, path: &FsPath, declared: u64) -> Result<(), ApiError> {
    match write_stream(body.into_data_stream(), path, Some(declared)).await {
        Ok(_) => Ok(()),
        Err(TransferError::Io(e)) => Err(io(e)),
        Err(e) => Err(ApiError::bad_request(format!("body: {e}"))),
    }
}

/// Room on the disk taken by a block being received, given back when it
/// is dropped: concurrent blocks cannot together eat into the reserve.
struct RoomTaken {
    state: NodeState,
    bytes: u64,
}

impl RoomTaken {
    /// Takes `bytes` of the node's room, or refuses (`507`) if the disk's
    /// room less the blocks being received has not that much.
    async fn take(state: &NodeState, bytes: u64) -> Result<RoomTaken, ApiError> {
        let room = disk_space(state).await?.room_bytes;
        // The others count whole, though what they wrote so far is off the
        // room already: on the safe side.
        let others = state
            .inner
            .receiving_bytes
            .fetch_add(bytes, Ordering::SeqCst);
        // Given back when dropped, a refusal included.
        let taken = RoomTaken {
            state: state.clone(),
            bytes,
        };
        if others.saturating_add(bytes) > room {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                code::IO,
                format!(
                    "a block file of {bytes} bytes: this node has room for {}",
                    room.saturating_sub(others)
                ),
            ));
        }
        Ok(taken)
    }
}

impl Drop for RoomTaken {
    fn drop(&mut self) {
        self.state
            .inner
            .receiving_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// `GET /space`: room for blocks on this node's disk.
async fn space(State(state): State<NodeState>) -> Result<axum::Json<Space>, ApiError> {
    disk_space(&state).await.map(axum::Json)
}

/// The space of the disk holding the node's blocks, less its reserve.
async fn disk_space(state: &NodeState) -> Result<Space, ApiError> {
    let reserve_bytes = state.config().reserve_bytes;
    let disk = state
        .blocking(|inner| haystack::file::disk_space(&inner.blocks_dir).map_err(io))
        .await?;
    Ok(Space {
        available_bytes: disk.available_bytes,
        total_bytes: disk.total_bytes,
        reserve_bytes,
        room_bytes: disk.available_bytes.saturating_sub(reserve_bytes),
    })
}

/// `GET /volumes/{vid}/{gen}/index`: the index file as this node holds it
/// (perhaps folded: keys deleted here are missing from it).
async fn get_index(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (volume, generation) = params_of(path)?;
    let file = state
        .blocking(move |inner| {
            if inner.held.get(volume, generation)?.is_none() {
                return Err(crate::http::unknown_volume(volume, generation));
            }
            std::fs::File::open(inner.held.index_path(volume, generation)).map_err(io)
        })
        .await?;
    file_answer(file)
}

/// `GET /volumes/{vid}/{gen}`: what this node holds of the volume.
async fn describe(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (volume, generation) = params_of(path)?;
    let held = state
        .blocking(move |inner| Ok(inner.held.describe(volume, generation)?))
        .await?
        .ok_or_else(|| crate::http::unknown_volume(volume, generation))?;
    Ok(axum::Json(held).into_response())
}

/// `GET /volumes/{vid}/{gen}/keys/{key}`: where a live needle is, or
/// `404 not_found`, or `410 deleted`.
async fn lookup(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (volume, generation, key) = params_of(path)?;
    let key = parse_key(&key)
        .ok_or_else(|| ApiError::bad_request(format!("key {key:?} is not 1-16 lowercase hex")))?;
    let found = match lookup_inline(&state, volume, generation, key) {
        Some(found) => found?,
        None => {
            state
                .blocking(move |inner| lookup_blocking(inner, volume, generation, key))
                .await?
        }
    };
    match found {
        KeyLookup::Live(entry) => Ok(axum::Json(entry).into_response()),
        KeyLookup::Deleted => Err(ApiError::new(
            StatusCode::GONE,
            code::DELETED,
            format!("key {} is deleted", format_key(key)),
        )),
        KeyLookup::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("key {} is not in the index", format_key(key)),
        )),
    }
}

/// A lookup on the async task when the index is mapped already (a few
/// memory reads, cheaper than a hop to the blocking pool); `None` if it
/// is not.
pub(super) fn lookup_inline(
    state: &NodeState,
    volume: u32,
    generation: u64,
    key: u64,
) -> Option<Result<KeyLookup, ApiError>> {
    let found = state.inner.held.lookup_if_open(volume, generation, key)?;
    Some(found.map(key_lookup).map_err(ApiError::from))
}

/// A lookup that may open the index: on the blocking pool.
pub(super) fn lookup_blocking(
    inner: &super::Inner,
    volume: u32,
    generation: u64,
    key: u64,
) -> Result<KeyLookup, ApiError> {
    match inner.held.lookup(volume, generation, key)? {
        None => Err(crate::http::unknown_volume(volume, generation)),
        Some(found) => Ok(key_lookup(found)),
    }
}

fn key_lookup(found: Lookup) -> KeyLookup {
    match found {
        Lookup::Live(entry) => KeyLookup::Live(entry),
        Lookup::Deleted => KeyLookup::Deleted,
        Lookup::Missing => KeyLookup::NotFound,
    }
}

/// `POST /volumes/{vid}/{gen}/tombstones`: appends and syncs the keys'
/// tombstones before answering `204`; a key not live here writes nothing.
async fn tombstone(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
    JsonBody(request): JsonBody<TombstoneRequest>,
) -> Result<StatusCode, ApiError> {
    let (volume, generation) = params_of(path)?;
    if request.keys.is_empty() || request.keys.len() > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "a tombstone request carries 1 to {PAGE_MAX} keys, not {}",
            request.keys.len()
        )));
    }
    let first = request.keys[0];
    let asked = request.keys.len();
    haystack::failpoint::pause_task_at("f4-tombstone").await;
    let done = state
        .blocking(move |inner| {
            Ok(inner
                .held
                .delete(volume, generation, &request.keys, request.deleted_ms)?)
        })
        .await?;
    match done {
        None => Err(crate::http::unknown_volume(volume, generation)),
        Some(written) => {
            tracing::debug!(volume, first = %format_key(first), asked, written, "tombstones");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// `GET /volumes/{vid}/{gen}/live`: the index entries of a page of live
/// needles.
async fn live_entries(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<axum::Json<LivePage>, ApiError> {
    let (volume, generation) = params_of(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit().map_err(ApiError::bad_request)?;
    let after = match query.after.as_deref() {
        None => None,
        Some(key) => Some(parse_key(key).ok_or_else(|| {
            ApiError::bad_request(format!("after {key:?} is not 1-16 lowercase hex"))
        })?),
    };
    state
        .blocking(move |inner| Ok(inner.held.live_entries(volume, generation, after, limit)?))
        .await?
        .map(axum::Json)
        .ok_or_else(|| crate::http::unknown_volume(volume, generation))
}

/// `POST /volumes/{vid}/{gen}/merge`: takes every delete the peers know of.
/// If this node holds no index of the volume, the first peer that answers
/// gives its own (with the deletes folded into it). Then, for each peer, a
/// key live here that the peer does not list as live gets a tombstone.
async fn merge(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
    JsonBody(request): JsonBody<MergeRequest>,
) -> Result<axum::Json<MergeReport>, ApiError> {
    let (volume, generation) = params_of(path)?;
    if request.peers.is_empty() || request.peers.len() > MERGE_PEERS_MAX {
        return Err(ApiError::bad_request(format!(
            "a merge names 1 to {MERGE_PEERS_MAX} peers"
        )));
    }
    let client =
        |peer: &str| crate::client::StorageClient::from_http(peer, state.inner.peers.clone());
    let mut report = MergeReport {
        appended: 0,
        index_copied: false,
        merged_peers: 0,
    };
    let held = state
        .blocking(move |inner| Ok(inner.held.get(volume, generation)?.is_some()))
        .await?;
    if !held {
        let mut last = String::from("no peer");
        for peer in &request.peers {
            let tmp = temporary_in(&state.inner.volumes_dir, "index");
            let mut guard = TemporaryFile(Some(tmp.clone()));
            match client(peer).download_index(volume, generation, &tmp).await {
                Ok(()) => {
                    guard.0 = None;
                    state
                        .blocking(move |inner| {
                            inner
                                .held
                                .install(volume, generation, &tmp)
                                .map_err(ApiError::from)
                        })
                        .await?;
                    report.index_copied = true;
                    break;
                }
                Err(e) => last = format!("{peer}: {e}"),
            }
        }
        if !report.index_copied {
            return Err(ApiError::peer(format!("no peer gave the index: {last}")));
        }
    }
    let mut merged = 0;
    let mut last = String::new();
    for peer in &request.peers {
        match merge_from(&state, &client(peer), volume, generation).await {
            Ok(appended) => {
                report.appended += appended;
                merged += 1;
            }
            Err(e) => last = format!("{peer}: {e}"),
        }
    }
    report.merged_peers = merged;
    if merged == 0 {
        return Err(ApiError::peer(format!("no peer could be merged: {last}")));
    }
    tracing::info!(
        volume,
        generation,
        appended = report.appended,
        merged,
        "journal merged"
    );
    Ok(axum::Json(report))
}

/// Tombstones every key live here that `peer` does not list as live.
async fn merge_from(
    state: &NodeState,
    peer: &crate::client::StorageClient,
    volume: u32,
    generation: u64,
) -> Result<u64, ApiError> {
    let mut appended = 0;
    let mut ours = PageCursor::default();
    let mut theirs = LivePage {
        entries: Vec::new(),
        next_after: None,
    };
    let mut theirs_at = 0;
    let mut their_pages = PageCursor::default();
    let now = crate::client::now_ms();
    while let Some(ours_after) = ours.next_page() {
        let page = state
            .blocking(move |inner| {
                Ok(inner
                    .held
                    .live_entries(volume, generation, ours_after, PAGE_MAX)?)
            })
            .await?
            .ok_or_else(|| crate::http::unknown_volume(volume, generation))?;
        for key in page.entries.iter().map(|e| e.key) {
            // Advance the peer's live keys up to `key`.
            loop {
                if theirs_at < theirs.entries.len() {
                    if theirs.entries[theirs_at].key < key {
                        theirs_at += 1;
                        continue;
                    }
                    break;
                }
                let Some(theirs_after) = their_pages.next_page() else {
                    break;
                };
                theirs = peer
                    .live_entries(volume, generation, theirs_after)
                    .await
                    .map_err(|e| ApiError::peer(e.to_string()))?;
                theirs_at = 0;
                if !their_pages.advance(theirs.next_after) {
                    return Err(ApiError::peer("the peer's live keys do not page forward"));
                }
            }
            let live_there = theirs.entries.get(theirs_at).map(|e| e.key) == Some(key);
            if !live_there {
                let written = state
                    .blocking(move |inner| {
                        Ok(inner.held.delete(volume, generation, &[key], now)?)
                    })
                    .await?;
                appended += written.unwrap_or(0) as u64;
            }
        }
        if !ours.advance(page.next_after) {
            return Err(ApiError::internal(
                "this node's live keys do not page forward",
            ));
        }
    }
    Ok(appended)
}
