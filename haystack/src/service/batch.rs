//! `POST /needles/read-batch`: up to [`MAX_BATCH_ENTRIES`] needle reads in one request.
//!
//! A router coalesces concurrent small reads for one store node into one batch, so that the
//! per-request HTTP cost is paid once. The bodies are the wire format of [`crate::batch`].
//! Every read of a batch runs in one engine call ([`StoreNodeState::blocking`]: one
//! `spawn_blocking`, one IO permit), which also encodes the answer.
//!
//! Each entry is answered on its own: a missing, deleted or wrong-cookie needle is
//! `not_found` (byte for byte the same), a needle whose data is longer than the entry's
//! `max_data_bytes` is `too_large` with its length. A needle that is clearly too large by its
//! on-disk size is not read: only its header is, for the cookie check. Only a malformed body
//! fails the whole request (`400 bad_request`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::StoreNodeState;
use super::error::ApiError;
use crate::api::code;
use crate::batch::{
    BATCH_CONTENT_TYPE, BatchAnswer, BatchRead, MAX_BATCH_ENTRIES, decode_request, encode_answers,
    request_len,
};
use crate::error::Error;
use crate::format::{CONTENT_TYPE_LEN_MAX, needle_size_bytes};
use crate::store::Store;

/// Most data bytes one batch answer carries. Further entries are answered `too_large`, and
/// the router reads them with a plain GET; so a batch holds at most this much needle data in
/// memory, whatever the entries' `max_data_bytes`.
pub(crate) const BATCH_DATA_BYTES_MAX: u64 = 16 << 20;

/// The handler of `POST /needles/read-batch`.
pub(crate) async fn read_batch(
    State(state): State<StoreNodeState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let idle = Duration::from_millis(state.config().body_idle_timeout_ms);
    let body = collect_small_body(body, &headers, request_len(MAX_BATCH_ENTRIES), idle).await?;
    let reads = decode_request(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let answer = state
        .blocking(move |store| Ok(encode_answers(&read_all(store, &reads))))
        .await?;
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static(BATCH_CONTENT_TYPE),
    )];
    Ok((content_type, answer).into_response())
}

/// Reads a body of at most `limit` bytes, with at most `idle` between chunks. A longer body
/// (by `Content-Length` or as it arrives) is a `400`: a read batch has a fixed maximum size.
async fn collect_small_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ApiError> {
    let too_long = || ApiError::bad_request(format!("read batch body above {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut buf = BytesMut::with_capacity(limit);
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    code::BAD_REQUEST,
                    "request body stalled",
                )
            })?;
        match next {
            None => return Ok(buf.freeze()),
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "body ended after {} bytes: {e}",
                    buf.len()
                )));
            }
            Some(Ok(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_long());
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// Answers every read, in order, within [`BATCH_DATA_BYTES_MAX`] of data.
fn read_all(store: &Store, reads: &[BatchRead]) -> Vec<BatchAnswer> {
    let mut budget = BATCH_DATA_BYTES_MAX;
    reads
        .iter()
        .map(|read| {
            let answer = read_one(store, read, budget).unwrap_or_else(answer_for_error);
            if let BatchAnswer::Found { data, .. } = &answer {
                budget -= data.len() as u64;
            }
            answer
        })
        .collect()
}

/// One read: the same checks as `GET` (or `HEAD`) of the needle, plus the size limit.
fn read_one(store: &Store, read: &BatchRead, budget: u64) -> crate::Result<BatchAnswer> {
    let volume = store.volume(read.volume)?;
    let max_data_bytes = if read.head {
        u64::from(read.max_data_bytes)
    } else {
        u64::from(read.max_data_bytes).min(budget)
    };
    let size_bytes = volume.needle_size_bytes(read.key).ok_or(Error::NotFound)?;
    if size_bytes > needle_size_bytes(CONTENT_TYPE_LEN_MAX, max_data_bytes) {
        // Too large whatever its content type: skip the data, but check the cookie, so that
        // a wrong cookie stays indistinguishable from a missing key.
        let header = volume.read_needle_header(read.key, read.cookie)?;
        return Ok(BatchAnswer::TooLarge {
            len: u64::from(header.data_size),
        });
    }
    let needle = volume.read_needle(read.key, read.cookie)?;
    let len = needle.data.len() as u64;
    if len > max_data_bytes {
        return Ok(BatchAnswer::TooLarge { len });
    }
    Ok(BatchAnswer::Found {
        content_type: Bytes::from(needle.content_type.into_bytes()),
        crc32: needle.crc32,
        len,
        data: if read.head {
            Bytes::new()
        } else {
            Bytes::from(needle.data)
        },
    })
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
