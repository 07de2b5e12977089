//! `POST /needles/read-batch`: up to [`MAX_BATCH_ENTRIES`] needle reads in one request.
//!
//! A router coalesces concurrent small reads for one store node into one batch, so that the
//! per-request HTTP cost is paid once. The bodies are the wire format of [`crate::batch`].
//!
//! Each entry is answered on its own: a missing, deleted or wrong-cookie needle is
//! `not_found` (byte for byte the same), a needle whose data is longer than the entry's
//! `max_data_bytes` is `too_large` with its length. A needle that is clearly too large by its
//! on-disk size is not read: only its header and content type are, for the cookie check. A
//! head entry reads only those too, whatever the needle's size, so it answers `found` with
//! the length and content type but a CRC of 0: its data is neither read nor verified (a `HEAD`
//! of a 64 MiB BLOB reads a few hundred bytes, not 64 MiB). Only a malformed body fails the
//! whole request (`400 bad_request`).
//!
//! A batch is answered in two passes. The first runs on the async task and never blocks:
//! the in-memory index lookups, then, for reads of at most [`INLINE_NEEDLE_BYTES_MAX`] (a
//! whole small needle, or the header and content type of a head entry or of a needle too
//! large for its entry) and at most [`INLINE_BATCH_BYTES_MAX`] in all, a read that succeeds
//! only from the page cache ([`Volume::try_read_needle_cached`], `preadv2(RWF_NOWAIT)`);
//! its answers are final, and the checks are those of the blocking read (cookie, checksum,
//! corruption). The second pass reads the rest (not cached, or larger) as every engine call
//! does ([`StoreNodeState::blocking`]), in up to [`BLOCKING_GROUPS_MAX`] groups that run at
//! once, so that the cold reads of one batch wait for the disk in parallel, as separate
//! `GET`s would. A batch served from the page cache alone costs no `spawn_blocking` at all. The
//! answer is encoded on the async task, as chunks that hold the needles' read buffers
//! ([`encode_answer_chunks`]): its data is not copied again, and the body is sent with a
//! `Content-Length`, not chunked.
//!
//! [`BATCH_DATA_BYTES_MAX`] is applied in request order as if the entries were read one by
//! one: while the on-disk sizes of the entries so far fit in it, it cannot change an answer,
//! so those entries are read in any order; from the first entry where it might (a batch of
//! more than 16 MiB of needles), the rest is read serially in one engine call, with the
//! budget the earlier entries left.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;

use super::error::ApiError;
use super::{INLINE_NEEDLE_BYTES_MAX, StoreNodeState};
use crate::batch::{
    BATCH_CONTENT_TYPE, BatchAnswer, BatchRead, MAX_BATCH_ENTRIES, decode_request,
    encode_answer_chunks, request_len,
};
use crate::error::Error;
use crate::format::{
    CONTENT_TYPE_LEN_MAX, NEEDLE_META_BYTES_MAX, Needle, NeedleMeta, needle_size_bytes,
};
use crate::http::{chunks_answer, collect_small_body};
use crate::store::Store;
use crate::volume::Volume;

/// Most data bytes one batch answer carries. Further entries are answered `too_large`, and
/// the router reads them with a plain GET; so a batch holds at most this much needle data in
/// memory, whatever the entries' `max_data_bytes`.
pub(crate) const BATCH_DATA_BYTES_MAX: u64 = 16 << 20;

/// Most bytes the first pass reads for one batch on the async task: copies from the page
/// cache and checksums of more belong on the blocking pool.
const INLINE_BATCH_BYTES_MAX: u64 = 1 << 20;

/// Most engine calls (each a `spawn_blocking` and an IO permit) the second pass of one batch
/// runs at once; fewer if the node's `io_concurrency` is smaller.
const BLOCKING_GROUPS_MAX: usize = 8;

/// The handler of `POST /needles/read-batch`.
pub(crate) async fn read_batch(
    State(state): State<StoreNodeState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let idle = Duration::from_millis(state.config().body_idle_timeout_ms);
    let body = collect_small_body(body, &headers, request_len(MAX_BATCH_ENTRIES), idle).await?;
    let reads = decode_request(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let answers = answer_all(&state, reads).await?;
    // No data is copied (the chunks hold the needles' buffers), so this is cheap at any size
    // and runs on the async task.
    let chunks = encode_answer_chunks(&answers);
    drop(answers);
    Ok(chunks_answer(BATCH_CONTENT_TYPE, chunks))
}

/// Answers every read, in request order: the two passes of the module doc.
async fn answer_all(
    state: &StoreNodeState,
    reads: Vec<BatchRead>,
) -> Result<Vec<BatchAnswer>, ApiError> {
    let mut answers: Vec<Option<BatchAnswer>> = vec![None; reads.len()];
    let (blocking, serial_from) = first_pass(state.store(), &reads, &mut answers);
    for (at, answer) in second_pass(state, blocking).await? {
        answers[at] = Some(answer);
    }
    if serial_from < reads.len() {
        let used: u64 = answers[..serial_from].iter().flatten().map(data_len).sum();
        let tail = reads[serial_from..].to_vec();
        let tail_answers = state
            .blocking(move |store| Ok(read_all(store, &tail, BATCH_DATA_BYTES_MAX - used)))
            .await?;
        for (slot, answer) in answers[serial_from..].iter_mut().zip(tail_answers) {
            *slot = Some(answer);
        }
    }
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| ApiError::internal("a batch entry was left unanswered")))
        .collect()
}

/// The first pass, on the async task: plans every entry up to the first that the data
/// budget might affect (returned: the serial tail starts there), and answers what it can
/// without blocking. Returns the entries left for the second pass.
fn first_pass(
    store: &Store,
    reads: &[BatchRead],
    answers: &mut [Option<BatchAnswer>],
) -> (Vec<Planned>, usize) {
    let mut blocking = Vec::new();
    let mut reserved = 0u64;
    let mut inline_bytes = 0u64;
    for (at, read) in reads.iter().enumerate() {
        // Planned without the budget: an entry that fits in what is left of it gets the
        // answer it would get with the budget (module doc); else the serial tail reads it.
        let plan = match plan(store, read, u64::MAX) {
            Ok(plan) => plan,
            Err(e) => {
                answers[at] = Some(answer_for_error(e));
                continue;
            }
        };
        if plan.reserve > BATCH_DATA_BYTES_MAX - reserved {
            return (blocking, at);
        }
        reserved += plan.reserve;
        let planned = Planned {
            at,
            read: *read,
            plan,
        };
        let read_bytes = planned.plan.read_bytes();
        if read_bytes > INLINE_NEEDLE_BYTES_MAX
            || inline_bytes + read_bytes > INLINE_BATCH_BYTES_MAX
        {
            blocking.push(planned);
            continue;
        }
        inline_bytes += read_bytes;
        match planned.answer(Io::CachedOnly) {
            Ok(Some(answer)) => answers[at] = Some(answer),
            Ok(None) => blocking.push(planned),
            Err(e) => answers[at] = Some(answer_for_error(e)),
        }
    }
    (blocking, reads.len())
}

/// The second pass: blocking reads of `planned` in at most [`BLOCKING_GROUPS_MAX`] engine
/// calls (and the node's `io_concurrency`) at once. Answers with each entry's place.
async fn second_pass(
    state: &StoreNodeState,
    planned: Vec<Planned>,
) -> Result<Vec<(usize, BatchAnswer)>, ApiError> {
    let groups = BLOCKING_GROUPS_MAX
        .min(state.config().io_concurrency)
        .min(planned.len());
    if groups == 0 {
        return Ok(Vec::new());
    }
    // Groups as even as can be: the first `len % groups` get one entry more.
    let (base, extra) = (planned.len() / groups, planned.len() % groups);
    let mut rest = planned.into_iter();
    let calls = (0..groups).map(|g| {
        let group: Vec<Planned> = rest.by_ref().take(base + usize::from(g < extra)).collect();
        state.blocking(move |_| {
            Ok(group
                .into_iter()
                .map(|p| (p.at, answer_blocking(&p)))
                .collect::<Vec<_>>())
        })
    });
    let mut answers = Vec::new();
    for group in futures::future::join_all(calls).await {
        answers.extend(group?);
    }
    Ok(answers)
}

/// Data bytes a found answer carries (nothing for a head entry or another answer).
fn data_len(answer: &BatchAnswer) -> u64 {
    match answer {
        BatchAnswer::Found { data, .. } => data.len() as u64,
        _ => 0,
    }
}

/// How an entry of a batch is read, decided from the in-memory index alone.
struct Plan {
    volume: Arc<Volume>,
    /// The needle's size on disk, padding included.
    size_bytes: u64,
    /// The largest data length answered `found`.
    max_data_bytes: u64,
    /// Whether only the header and content type are read: a head entry, or a needle too
    /// large whatever its content type.
    meta_only: bool,
    /// What the entry may take of [`BATCH_DATA_BYTES_MAX`]: at most its size on disk.
    reserve: u64,
}

impl Plan {
    /// Bytes the read copies: the header and content type, or the whole needle.
    fn read_bytes(&self) -> u64 {
        if self.meta_only {
            self.size_bytes.min(NEEDLE_META_BYTES_MAX as u64)
        } else {
            self.size_bytes
        }
    }
}

/// Plans one read with `budget` data bytes left: the same decisions as [`read_one`].
fn plan(store: &Store, read: &BatchRead, budget: u64) -> crate::Result<Plan> {
    let volume = store.volume(read.volume)?;
    let max_data_bytes = if read.head {
        u64::from(read.max_data_bytes)
    } else {
        u64::from(read.max_data_bytes).min(budget)
    };
    let size_bytes = volume.needle_size_bytes(read.key).ok_or(Error::NotFound)?;
    let too_large = size_bytes > needle_size_bytes(CONTENT_TYPE_LEN_MAX, max_data_bytes);
    Ok(Plan {
        volume,
        size_bytes,
        max_data_bytes,
        meta_only: read.head || too_large,
        reserve: if read.head || too_large {
            0
        } else {
            size_bytes
        },
    })
}

/// A planned entry, with its place in the batch.
struct Planned {
    at: usize,
    read: BatchRead,
    plan: Plan,
}

/// Which read a planned entry gets.
#[derive(Clone, Copy)]
enum Io {
    /// Only from the page cache: may answer `None`.
    CachedOnly,
    /// Waits for the disk if need be.
    Blocking,
}

impl Planned {
    /// The entry's answer; `None` only for [`Io::CachedOnly`] when the bytes are not cached.
    fn answer(&self, io: Io) -> crate::Result<Option<BatchAnswer>> {
        let (read, volume) = (&self.read, &self.plan.volume);
        if self.plan.meta_only {
            // A head entry, or too large whatever its content type: skip the data, but check
            // the cookie, so that a wrong cookie stays indistinguishable from a missing key.
            let meta = match io {
                Io::CachedOnly => volume.try_read_needle_meta_cached(read.key, read.cookie)?,
                Io::Blocking => Some(volume.read_needle_meta(read.key, read.cookie)?),
            };
            return Ok(meta.map(|m| meta_answer(m, self.plan.max_data_bytes)));
        }
        let needle = match io {
            Io::CachedOnly => volume.try_read_needle_cached(read.key, read.cookie)?,
            Io::Blocking => Some(volume.read_needle(read.key, read.cookie)?),
        };
        Ok(needle.map(|n| found_answer(n, self.plan.max_data_bytes)))
    }
}

/// The second pass's answer for one entry.
fn answer_blocking(planned: &Planned) -> BatchAnswer {
    match planned.answer(Io::Blocking) {
        Ok(Some(answer)) => answer,
        Ok(None) => unreachable!("a blocking read always answers"),
        Err(e) => answer_for_error(e),
    }
}

/// A head entry's `found` (its data neither read nor checked, so no CRC: 0), or `too_large`
/// if the data is longer than `max_data_bytes`.
fn meta_answer(meta: NeedleMeta, max_data_bytes: u64) -> BatchAnswer {
    let len = u64::from(meta.header.data_size);
    if len > max_data_bytes {
        return BatchAnswer::TooLarge { len };
    }
    BatchAnswer::Found {
        content_type: Bytes::from(meta.content_type.into_bytes()),
        crc32: 0,
        len,
        data: Bytes::new(),
    }
}

/// `found` with the needle, or `too_large` if its data is longer than `max_data_bytes`.
fn found_answer(needle: Needle, max_data_bytes: u64) -> BatchAnswer {
    let len = needle.data.len() as u64;
    if len > max_data_bytes {
        return BatchAnswer::TooLarge { len };
    }
    BatchAnswer::Found {
        content_type: Bytes::from(needle.content_type.into_bytes()),
        crc32: needle.crc32,
        len,
        data: needle.data,
    }
}

/// Answers every read, in order and one by one, within `budget` data bytes.
fn read_all(store: &Store, reads: &[BatchRead], mut budget: u64) -> Vec<BatchAnswer> {
    reads
        .iter()
        .map(|read| {
            let answer = read_one(store, read, budget).unwrap_or_else(answer_for_error);
            budget -= data_len(&answer);
            answer
        })
        .collect()
}

/// One read: the same checks as `GET` (or `HEAD`) of the needle, plus the size limit.
fn read_one(store: &Store, read: &BatchRead, budget: u64) -> crate::Result<BatchAnswer> {
    let planned = Planned {
        at: 0,
        read: *read,
        plan: plan(store, read, budget)?,
    };
    Ok(answer_blocking(&planned))
}

/// The answer for an engine error, logged as the single-needle routes log it.
fn answer_for_error(err: Error) -> BatchAnswer {
    match &err {
        Error::NotFound => BatchAnswer::NotFound,
        Error::UnknownVolume { .. } => BatchAnswer::UnknownVolume(err.to_string()),
        Error::Corrupt {
            volume,
            offset,
            reason,
        } => {
            tracing::error!(volume, offset, reason = %reason, "corrupt needle refused");
            BatchAnswer::Corrupt(err.to_string())
        }
        _ => {
            tracing::error!(error = %err, "store error in a read batch");
            BatchAnswer::Failed(err.to_string())
        }
    }
}
