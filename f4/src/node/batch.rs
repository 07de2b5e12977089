//! `POST /batch`: up to 64 key lookups and small range reads in one
//! request (wire format in [`crate::batch`]).
//!
//! Each entry gets the answer its single route would give
//! (`GET .../keys/{key}`, `POST /blocks/read`), errors included. A batch is
//! answered in two passes, as the store node's needle batch is: first, on
//! the async task, the lookups of mapped indexes and the range reads that
//! the page cache holds (up to [`INLINE_BATCH_BYTES_MAX`]); then the rest on
//! the blocking pool, in up to [`BLOCKING_GROUPS_MAX`] groups at once. The
//! answer is sent as chunks that hold the read buffers, not copied again.
//! The ranges of one batch carry at most [`BATCH_DATA_BYTES_MAX`]; entries
//! past it answer `413 payload_too_large`. Only a malformed body fails the
//! whole request (`400 bad_request`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::NodeState;
use super::handlers::{RangeTarget, lookup_blocking, lookup_inline};
use crate::batch::{
    BATCH_CONTENT_TYPE, BATCH_DATA_BYTES_MAX, BatchAnswer, BatchRead, decode_request,
    encode_answer_chunks, request_len,
};
use crate::client::KeyLookup;
use crate::http::ApiError;
use haystack::batch::MAX_BATCH_ENTRIES;
use haystack::http::{chunks_answer, collect_small_body};

/// Most range bytes the first pass reads on the async task.
const INLINE_BATCH_BYTES_MAX: u64 = 1 << 20;

/// Most blocking-pool calls the second pass of one batch runs at once.
const BLOCKING_GROUPS_MAX: usize = 4;

/// An entry left for the second pass, with its place in the batch.
enum Deferred {
    Lookup {
        volume: u32,
        generation: u64,
        key: u64,
    },
    Range(RangeTarget),
}

/// The handler of `POST /batch`.
pub(super) async fn read_batch(
    State(state): State<NodeState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let idle = Duration::from_millis(state.config().server.header_read_timeout_ms);
    let body = collect_small_body(body, &headers, request_len(MAX_BATCH_ENTRIES), idle).await?;
    let reads = decode_request(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut answers: Vec<Option<BatchAnswer>> = vec![None; reads.len()];
    let deferred = first_pass(&state, reads, &mut answers);
    for (at, answer) in second_pass(&state, deferred).await? {
        answers[at] = Some(answer);
    }
    let answers = answers
        .into_iter()
        .map(|a| a.ok_or_else(|| ApiError::internal("a batch entry was left unanswered")))
        .collect::<Result<Vec<_>, _>>()?;
    let chunks = encode_answer_chunks(&answers);
    drop(answers);
    Ok(chunks_answer(BATCH_CONTENT_TYPE, chunks))
}

/// Answers what can be answered without blocking; returns the rest.
fn first_pass(
    state: &NodeState,
    reads: Vec<BatchRead>,
    answers: &mut [Option<BatchAnswer>],
) -> Vec<(usize, Deferred)> {
    let mut deferred = Vec::new();
    let mut data_bytes = 0u64;
    let mut inline_bytes = 0u64;
    for (at, read) in reads.into_iter().enumerate() {
        match read {
            BatchRead::Lookup {
                volume,
                generation,
                key,
            } => match lookup_inline(state, volume, generation, key) {
                Some(found) => answers[at] = Some(lookup_answer(found)),
                None => deferred.push((
                    at,
                    Deferred::Lookup {
                        volume,
                        generation,
                        key,
                    },
                )),
            },
            BatchRead::Range(range) => {
                let target = match RangeTarget::new(state, range) {
                    Ok(target) => target,
                    Err(e) => {
                        answers[at] = Some(error_answer(e));
                        continue;
                    }
                };
                let len = target.len();
                if len > BATCH_DATA_BYTES_MAX - data_bytes {
                    answers[at] = Some(error_answer(ApiError::payload_too_large(format!(
                        "a batch carries at most {BATCH_DATA_BYTES_MAX} range bytes"
                    ))));
                    continue;
                }
                data_bytes += len;
                if len <= INLINE_BATCH_BYTES_MAX - inline_bytes {
                    match target.read_inline(state) {
                        Ok(Some(bytes)) => {
                            inline_bytes += len;
                            answers[at] = Some(BatchAnswer::Data(bytes));
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            answers[at] = Some(error_answer(e));
                            continue;
                        }
                    }
                }
                deferred.push((at, Deferred::Range(target)));
            }
        }
    }
    deferred
}

/// Answers `deferred` on the blocking pool, in at most
/// [`BLOCKING_GROUPS_MAX`] calls at once (and the node's `io_concurrency`).
async fn second_pass(
    state: &NodeState,
    deferred: Vec<(usize, Deferred)>,
) -> Result<Vec<(usize, BatchAnswer)>, ApiError> {
    let groups = BLOCKING_GROUPS_MAX
        .min(state.config().io_concurrency)
        .min(deferred.len());
    if groups == 0 {
        return Ok(Vec::new());
    }
    // Groups as even as can be: the first `len % groups` get one entry more.
    let (base, extra) = (deferred.len() / groups, deferred.len() % groups);
    let mut rest = deferred.into_iter();
    let calls = (0..groups).map(|g| {
        let group: Vec<(usize, Deferred)> =
            rest.by_ref().take(base + usize::from(g < extra)).collect();
        state.blocking(move |inner| {
            Ok(group
                .into_iter()
                .map(|(at, entry)| {
                    let answer = match entry {
                        Deferred::Lookup {
                            volume,
                            generation,
                            key,
                        } => lookup_answer(lookup_blocking(inner, volume, generation, key)),
                        Deferred::Range(target) => match target.read_blocking(inner) {
                            Ok(bytes) => BatchAnswer::Data(bytes),
                            Err(e) => error_answer(e),
                        },
                    };
                    (at, answer)
                })
                .collect::<Vec<_>>())
        })
    });
    let mut answers = Vec::new();
    for group in futures::future::join_all(calls).await {
        answers.extend(group?);
    }
    Ok(answers)
}

fn lookup_answer(found: Result<KeyLookup, ApiError>) -> BatchAnswer {
    match found {
        Ok(found) => BatchAnswer::Lookup(found),
        Err(e) => error_answer(e),
    }
}

fn error_answer(error: ApiError) -> BatchAnswer {
    BatchAnswer::Error {
        status: error.status.as_u16(),
        code: error.code.to_owned(),
        message: error.message,
    }
}
