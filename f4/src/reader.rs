//! [`WarmReader`]: the per-read hops of the warm tier (a key lookup, a
//! block range read, a backoff decode) on hyper's pooled HTTP/1 client.
//!
//! Every warm BLOB read makes two of these hops from the router, and a
//! degraded one a dozen more from the backoff node, so their cost per
//! request counts. Like the hot tier's [`haystack::client::NeedleReader`],
//! this client takes node addresses parsed once ([`StoreAddress`]) and skips
//! reqwest's per-request layers (URL parsing with IDNA, redirect policy,
//! timeout wrappers). Lookups and ranges up to [`BATCHED_RANGE_BYTES_MAX`]
//! that wait for the same node at the same time share one `POST /batch`
//! ([`crate::batch`]; see [`haystack::client::Batcher`]). The caller bounds
//! each read's time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haystack::batch::MAX_BATCH_ENTRIES;
use haystack::client::{
    BatchCodec, BatchOptions, Batcher, Chain, LeanClient, StoreAddress, lean_http_client,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::api::{FAILED_BLOCKS_HEADER, RangeRead, ReconstructRequest};
use crate::batch::{self, BATCH_CONTENT_TYPE, BatchAnswer, BatchRead};
use crate::client::{ClientError, KeyLookup, Reconstructed, Result, error_from_body};
use crate::format::INDEX_ENTRY_SIZE;

/// Largest error or JSON answer read into memory.
const SMALL_BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Ranges up to this size are read in batches (those of 64 KiB BLOBs and
/// their frames among them); 64 of them fit one batch answer.
pub const BATCHED_RANGE_BYTES_MAX: u64 = 256 * 1024;
const _: () =
    assert!(BATCHED_RANGE_BYTES_MAX * MAX_BATCH_ENTRIES as u64 <= batch::BATCH_DATA_BYTES_MAX);

/// The storage node's read batch, for [`Batcher`].
#[derive(Debug)]
pub struct WarmBatch;

impl BatchCodec for WarmBatch {
    type Read = BatchRead;
    type Answer = BatchAnswer;
    const PATH: &'static str = "/batch";
    const CONTENT_TYPE: &'static str = BATCH_CONTENT_TYPE;
    const MAX_ENTRIES: usize = MAX_BATCH_ENTRIES;

    fn encode(reads: &[BatchRead]) -> Bytes {
        batch::encode_request(reads)
    }

    fn decode(body: Bytes, reads: &[BatchRead]) -> std::result::Result<Vec<BatchAnswer>, String> {
        batch::decode_answers(body, reads).map_err(|e| e.to_string())
    }

    fn answer_limit(reads: &[BatchRead]) -> usize {
        // Per entry: its status, and the largest of an index entry, a
        // range's length and bytes, and an error's status, code and message.
        const ERROR_MAX: usize = 2 + 2 + 64 + 2 + haystack::batch::MESSAGE_LEN_MAX;
        reads.iter().fold(64, |limit, read| {
            let body = match read {
                BatchRead::Lookup { .. } => INDEX_ENTRY_SIZE,
                BatchRead::Range(range) => {
                    8usize.saturating_add(usize::try_from(range.len).unwrap_or(usize::MAX))
                }
            };
            limit.saturating_add(4 + body.max(ERROR_MAX))
        })
    }
}

/// Pooled client of the storage nodes' read routes and the backoff node's
/// decode (cheap to clone; clones share connections and batches).
#[derive(Clone, Debug)]
pub struct WarmReader {
    http: LeanClient<Full<Bytes>>,
    batcher: Arc<Batcher<WarmBatch>>,
}

impl WarmReader {
    /// A reader that connects within `connect_timeout`, keeps up to
    /// `max_idle_per_host` idle connections per node, and batches reads
    /// within `batching`.
    pub fn new(
        connect_timeout: Duration,
        max_idle_per_host: usize,
        batching: BatchOptions,
    ) -> WarmReader {
        WarmReader {
            http: lean_http_client(connect_timeout, max_idle_per_host),
            batcher: Arc::new(Batcher::new(
                lean_http_client(connect_timeout, max_idle_per_host),
                batching,
            )),
        }
    }

    /// A reader for a node that asks others on behalf of a request (the
    /// backoff node, a rebuilder): connections and batches bounded by
    /// `timeout`, up to `max_idle_per_host` idle connections per node.
    pub fn with_timeout(timeout: Duration, max_idle_per_host: usize) -> WarmReader {
        WarmReader::new(
            timeout,
            max_idle_per_host,
            BatchOptions {
                timeout,
                ..BatchOptions::default()
            },
        )
    }

    /// The number of batches and of reads they carried so far.
    pub fn batch_stats(&self) -> haystack::client::BatchStats {
        self.batcher.stats()
    }

    /// Parses a node's base URL (`http://host:port`) for this reader.
    pub fn address(base_url: &str) -> Result<StoreAddress> {
        StoreAddress::parse(base_url).map_err(|e| ClientError::Answer(e.to_string()))
    }

    /// A verified byte range of a block at `node`, exactly `read.len`
    /// bytes: in a batch up to [`BATCHED_RANGE_BYTES_MAX`], else with
    /// `POST /blocks/read`.
    pub async fn read_range(&self, node: &StoreAddress, read: &RangeRead) -> Result<Bytes> {
        if read.len <= BATCHED_RANGE_BYTES_MAX {
            return match self.batched(node, BatchRead::Range(*read)).await? {
                BatchAnswer::Data(bytes) => Ok(bytes),
                other => Err(unexpected(&other)),
            };
        }
        let limit = usize::try_from(read.len).unwrap_or(usize::MAX);
        let (_, bytes) = self
            .exchange(node, Method::POST, "/blocks/read", Some(read), limit)
            .await?;
        check_len(&bytes, read.len, "a read")?;
        Ok(bytes)
    }

    /// What the index and journal at `node` say of `key` (in a batch).
    pub async fn lookup(
        &self,
        node: &StoreAddress,
        volume: u32,
        generation: u64,
        key: u64,
    ) -> Result<KeyLookup> {
        let read = BatchRead::Lookup {
            volume,
            generation,
            key,
        };
        match self.batched(node, read).await? {
            BatchAnswer::Lookup(found) => Ok(found),
            other => Err(unexpected(&other)),
        }
    }

    /// `read`'s answer from `node`'s next batch; an error entry as the
    /// error its single route would have answered.
    async fn batched(&self, node: &StoreAddress, read: BatchRead) -> Result<BatchAnswer> {
        match self.batcher.read(node, read).await {
            Ok(BatchAnswer::Error {
                status,
                code,
                message,
            }) => Err(ClientError::Status {
                status,
                code,
                message,
            }),
            Ok(answer) => Ok(answer),
            Err(e) => Err(batch_failure(e)),
        }
    }

    /// `POST /reconstruct` at backoff node `node`: a range of a block
    /// decoded from the rest of its stripe, exactly `request.len` bytes, and
    /// the blocks that failed on the way.
    pub async fn reconstruct(
        &self,
        node: &StoreAddress,
        request: &ReconstructRequest,
    ) -> Result<Reconstructed> {
        let limit = usize::try_from(request.len).unwrap_or(usize::MAX);
        let (failed, bytes) = self
            .exchange(node, Method::POST, "/reconstruct", Some(request), limit)
            .await?;
        check_len(&bytes, request.len, "a decoded range")?;
        let failed = failed
            .and_then(|v| v.to_str().ok().map(crate::client::parse_failed_blocks))
            .unwrap_or_default();
        Ok(Reconstructed { bytes, failed })
    }

    /// One exchange: `body` as JSON, if any; a success answer's body (at
    /// most `limit` bytes) with its [`FAILED_BLOCKS_HEADER`], or the error
    /// the node answered with.
    async fn exchange<T: Serialize>(
        &self,
        node: &StoreAddress,
        method: Method,
        path: &str,
        body: Option<&T>,
        limit: usize,
    ) -> Result<(Option<HeaderValue>, Bytes)> {
        let uri = node
            .uri(path)
            .map_err(|e| ClientError::Answer(e.to_string()))?;
        let mut request = Request::builder().method(method).uri(uri);
        let body = match body {
            None => Bytes::new(),
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(
                    serde_json::to_vec(body).map_err(|e| ClientError::Answer(e.to_string()))?,
                )
            }
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Answer(format!("request: {e}")))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ClientError::Transport(Chain(&e).to_string()))?;
        let status = response.status();
        let (mut parts, body) = response.into_parts();
        let limit = if status.is_success() {
            limit
        } else {
            SMALL_BODY_LIMIT_BYTES
        };
        let bytes = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| ClientError::Transport(format!("answer body: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(error_from_body(status.as_u16(), &bytes));
        }
        Ok((parts.headers.remove(FAILED_BLOCKS_HEADER), bytes))
    }
}

/// A whole batch that failed, as the error of each of its reads: the node's
/// status and code where it answered one.
fn batch_failure(error: haystack::client::ClientError) -> ClientError {
    use haystack::client::ClientError as Hot;
    match error {
        Hot::Status {
            status,
            code,
            message,
        } => ClientError::Status {
            status,
            code,
            message,
        },
        e if e.is_transport() => ClientError::Transport(e.to_string()),
        e => match e.status() {
            Some(status) => ClientError::Status {
                status,
                code: String::new(),
                message: e.to_string(),
            },
            None => ClientError::Answer(e.to_string()),
        },
    }
}

/// An answer of another kind than the read's (the decoder refuses those).
fn unexpected(answer: &BatchAnswer) -> ClientError {
    let kind = match answer {
        BatchAnswer::Lookup(_) => "a lookup's",
        BatchAnswer::Data(_) => "a range's",
        BatchAnswer::Error { .. } => "an error",
    };
    ClientError::Answer(format!("{kind} answer to another kind of read"))
}

fn check_len(bytes: &Bytes, wanted: u64, what: &str) -> Result<()> {
    if bytes.len() as u64 != wanted {
        return Err(ClientError::Answer(format!(
            "{} bytes for {what} of {wanted}",
            bytes.len()
        )));
    }
    Ok(())
}
