//! The backoff node: given a byte range of a block that could not be read,
//! it reads the same range of the stripe's other blocks and decodes only
//! that range (`POST /reconstruct`). Its client is
//! [`crate::reader::WarmReader::reconstruct`].
//!
//! It asks `k` blocks, and [`BackoffConfig::hedge_extra`] more if they have
//! not all answered within [`BackoffConfig::hedge_delay_ms`]; it decodes
//! from the first `k` verified answers (every storage node verifies the
//! chunk checksums of what it sends), and asks the next block whenever one
//! fails. Where the range lies past a short block's stored bytes, that
//! block is implicit zeros and needs no request. Memory per request is the
//! range times the blocks asked, and across requests at most
//! [`BackoffConfig::max_bytes_in_flight`]; a request waits for room.
//! Blocks that answered they are damaged (missing, corrupt, another
//! block's; not a timeout or an overload) are named in the answer's
//! [`crate::api::FAILED_BLOCKS_HEADER`] for the caller to report.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use bytes::Bytes;
use coding::Codec;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::util::MapFutureLayer;

use haystack::http::ServerLimits;

use crate::api::{BlockId, FAILED_BLOCKS_HEADER, RangeRead, ReconstructRequest, code};
use crate::client::format_failed_blocks;
use crate::http::{ApiError, JsonBody};
use crate::reader::WarmReader;
use haystack::http::{deadline, method_not_allowed, no_route};

/// Configuration of a backoff node (the `[backoff]` part of its config).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Blocks asked beyond the `k` needed when the first `k` have not all
    /// answered within [`BackoffConfig::hedge_delay_ms`] (hedging against a
    /// slow one; a failed one is replaced at once).
    #[serde(default = "default_hedge_extra")]
    pub hedge_extra: usize,
    /// How long the first `k` reads get before the hedge reads leave (0:
    /// all at once).
    #[serde(default = "default_hedge_delay_ms")]
    pub hedge_delay_ms: u64,
    /// Largest range one request may ask for.
    #[serde(default = "default_max_range_bytes")]
    pub max_range_bytes: u64,
    /// Bytes held at once across all requests (range times blocks asked).
    #[serde(default = "default_max_bytes_in_flight")]
    pub max_bytes_in_flight: u64,
    /// Deadline of one block read.
    #[serde(default = "default_source_timeout_ms")]
    pub source_timeout_ms: u64,
    /// Deadline of one request.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Header-read timeout, connection cap and shutdown grace.
    #[serde(default)]
    pub server: ServerLimits,
}

/// Default of [`BackoffConfig::hedge_extra`]: 2.
pub fn default_hedge_extra() -> usize {
    2
}
/// Default of [`BackoffConfig::hedge_delay_ms`]: 20 ms, well above a
/// block read's usual time (a millisecond or two, a few under load), so
/// that hedges only go out when a node is slow.
pub fn default_hedge_delay_ms() -> u64 {
    20
}
/// Default of [`BackoffConfig::max_range_bytes`]: the storage node's.
pub fn default_max_range_bytes() -> u64 {
    crate::node::default_max_range_bytes()
}
/// Default of [`BackoffConfig::max_bytes_in_flight`]: 1 GiB.
pub fn default_max_bytes_in_flight() -> u64 {
    1 << 30
}
/// Default of [`BackoffConfig::source_timeout_ms`]: 5 s.
pub fn default_source_timeout_ms() -> u64 {
    5_000
}
/// Default of [`BackoffConfig::request_timeout_ms`]: every role's.
pub fn default_request_timeout_ms() -> u64 {
    haystack::http::DEFAULT_REQUEST_TIMEOUT_MS
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            hedge_extra: default_hedge_extra(),
            hedge_delay_ms: default_hedge_delay_ms(),
            max_range_bytes: default_max_range_bytes(),
            max_bytes_in_flight: default_max_bytes_in_flight(),
            source_timeout_ms: default_source_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            server: ServerLimits::default(),
        }
    }
}

/// In-flight bytes are counted in KiB permits, so that large caps fit.
const PERMIT_BYTES: u64 = 1024;

impl BackoffConfig {
    /// Checks that the limits are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_range_bytes == 0 || self.source_timeout_ms == 0 || self.request_timeout_ms == 0
        {
            return Err("range limit and timeouts must be positive".into());
        }
        let permits = self.max_bytes_in_flight / PERMIT_BYTES;
        if permits == 0 || permits > Semaphore::MAX_PERMITS as u64 || permits > u64::from(u32::MAX)
        {
            return Err("max_bytes_in_flight must be 1 KiB to 4 TiB".into());
        }
        self.server.validate()
    }
}

struct BackoffState {
    config: BackoffConfig,
    in_flight: Semaphore,
    reader: WarmReader,
}

/// Idle connections kept per storage node.
const POOL_IDLE_PER_NODE: usize = 64;

/// The backoff node's HTTP API.
pub fn router(config: BackoffConfig) -> Result<Router, String> {
    config.validate()?;
    let source_timeout = Duration::from_millis(config.source_timeout_ms);
    let reader = WarmReader::with_timeout(source_timeout, POOL_IDLE_PER_NODE);
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let state = Arc::new(BackoffState {
        in_flight: Semaphore::new((config.max_bytes_in_flight / PERMIT_BYTES) as usize),
        config,
        reader,
    });
    Ok(Router::new()
        .route("/health", get(haystack::http::health))
        .route("/reconstruct", post(reconstruct))
        .layer(MapFutureLayer::new(
            move |handler: RouteFuture<std::convert::Infallible>| deadline(timeout, handler),
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .with_state(state))
}

/// Runs a backoff node on `listener` until `cancel` fires.
pub async fn run(
    config: BackoffConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), String> {
    let options = config.server.serve_options();
    let app = router(config)?;
    tracing::info!(address = ?listener.local_addr().ok(), "backoff node serving");
    haystack::http::serve(listener, app, options, cancel).await;
    Ok(())
}

/// One source of the decode: a block index and how to get its range.
enum Source {
    /// The range lies past the block's stored bytes: zeros.
    Zeros(usize),
    /// Read `stored` bytes of the range from this node (the rest zeros).
    Node {
        index: usize,
        url: String,
        stored: u64,
    },
}

/// `POST /reconstruct`.
async fn reconstruct(
    State(state): State<Arc<BackoffState>>,
    JsonBody(request): JsonBody<ReconstructRequest>,
) -> Result<Response, ApiError> {
    let geometry = request.geometry;
    let layout = geometry.layout()?;
    let k = usize::from(geometry.data_blocks);
    let total = geometry.blocks_per_stripe() as usize;
    let target = request.block.block as usize;
    if request.sources.len() != total || target >= total {
        return Err(ApiError::bad_request(format!(
            "a stripe of {total} blocks needs {total} sources and a block below {total}"
        )));
    }
    if request.len > state.config.max_range_bytes {
        return Err(ApiError::payload_too_large(format!(
            "a range of {} bytes is over this node's {}",
            request.len, state.config.max_range_bytes
        )));
    }
    let stripe = request.block.stripe;
    if stripe >= layout.stripe_count() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::OUT_OF_RANGE,
            format!("the volume has {} stripes", layout.stripe_count()),
        ));
    }
    let target_len = layout
        .block_len_bytes(stripe, target)
        .map_err(crate::Error::from)?;
    if request
        .offset
        .checked_add(request.len)
        .is_none_or(|end| end > target_len)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::OUT_OF_RANGE,
            format!(
                "range {}+{} is outside the {target_len} bytes of the block",
                request.offset, request.len
            ),
        ));
    }
    let len = usize::try_from(request.len).map_err(|_| ApiError::payload_too_large("range"))?;
    let asked = k + state.config.hedge_extra;
    let permits = (request.len.max(1) * asked as u64).div_ceil(PERMIT_BYTES);
    let permits = u32::try_from(permits)
        .ok()
        .filter(|p| u64::from(*p) <= state.config.max_bytes_in_flight / PERMIT_BYTES)
        .ok_or_else(|| {
            ApiError::payload_too_large("the range times the blocks asked is over the cap")
        })?;
    let _room = state
        .in_flight
        .acquire_many(permits)
        .await
        .map_err(|_| ApiError::internal("in-flight semaphore closed"))?;

    let mut candidates = Vec::new();
    let mut zeros = Vec::new();
    for (index, url) in request.sources.iter().enumerate() {
        if index == target {
            continue;
        }
        let stored = layout
            .block_len_bytes(stripe, index)
            .map_err(crate::Error::from)?;
        let in_block = stored.saturating_sub(request.offset).min(request.len);
        match url {
            _ if in_block == 0 => zeros.push(Source::Zeros(index)),
            Some(url) => candidates.push(Source::Node {
                index,
                url: url.clone(),
                stored: in_block,
            }),
            None => {}
        }
    }
    let mut got: Vec<(usize, Bytes)> = Vec::with_capacity(k);
    for source in zeros.into_iter().take(k) {
        if let Source::Zeros(index) = source {
            got.push((index, Bytes::from(vec![0u8; len])));
        }
    }
    let source_timeout = Duration::from_millis(state.config.source_timeout_ms);
    let mut failed: Vec<(u64, u32)> = Vec::new();
    let mut last_error = String::new();
    let mut pending = candidates.into_iter();
    let mut reads = FuturesUnordered::new();
    let read_one = |source: Source| {
        let reader = state.reader.clone();
        let block = request.block;
        async move {
            let Source::Node { index, url, stored } = source else {
                unreachable!("only node sources are read");
            };
            let read = RangeRead {
                block: BlockId {
                    block: index as u32,
                    ..block
                },
                geometry,
                offset: request.offset,
                len: stored,
            };
            let read = async { reader.read_range(&WarmReader::address(&url)?, &read).await };
            let result = match tokio::time::timeout(source_timeout, read).await {
                Ok(result) => result.map_err(|e| (e.is_block_damage(), e.to_string())),
                Err(_) => Err((
                    false,
                    format!("no answer within {} ms", source_timeout.as_millis()),
                )),
            };
            (index, url, result)
        }
    };
    let need = k.saturating_sub(got.len());
    for source in pending.by_ref().take(need) {
        reads.push(read_one(source));
    }
    let mut hedged = false;
    let hedge = tokio::time::sleep(Duration::from_millis(state.config.hedge_delay_ms));
    tokio::pin!(hedge);
    while got.len() < k {
        let next = tokio::select! {
            next = reads.next() => next,
            () = &mut hedge, if !hedged => {
                hedged = true;
                for source in pending.by_ref().take(state.config.hedge_extra) {
                    reads.push(read_one(source));
                }
                continue;
            }
        };
        let Some((index, url, result)) = next else {
            break;
        };
        match result {
            Ok(bytes) => got.push((index, padded(bytes, len))),
            Err((damaged, error)) => {
                tracing::warn!(
                    volume = request.block.volume,
                    stripe,
                    block = index,
                    node = %url,
                    error = %error,
                    "backoff source failed"
                );
                if damaged {
                    failed.push((stripe, index as u32));
                }
                last_error = format!("block {index} at {url}: {error}");
                if let Some(next) = pending.next() {
                    reads.push(read_one(next));
                }
            }
        }
    }
    drop(reads);
    if got.len() < k {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TOO_FEW_BLOCKS,
            format!(
                "{} of the {k} verified blocks needed answered for stripe {stripe} of volume \
                 {} ({last_error})",
                got.len(),
                request.block.volume
            ),
        ));
    }
    let decoded = tokio::task::spawn_blocking(move || {
        let codec = Codec::new(geometry.rs_config()?)?;
        let sources: Vec<(usize, &[u8])> = got.iter().map(|(i, b)| (*i, &b[..])).collect();
        let mut out = vec![0u8; len];
        codec.reconstruct_range(&sources, &mut [(target, &mut out[..])])?;
        Ok::<_, crate::Error>(out)
    })
    .await
    .map_err(|e| ApiError::internal(format!("decode task: {e}")))??;
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::from(decoded),
    )
        .into_response();
    if !failed.is_empty()
        && let Ok(value) = HeaderValue::from_str(&format_failed_blocks(&failed))
    {
        response
            .headers_mut()
            .insert(HeaderName::from_static(FAILED_BLOCKS_HEADER), value);
    }
    Ok(response)
}

/// `bytes` followed by zeros up to `len` (a short block's implicit zeros);
/// `bytes` itself, uncopied, when it is whole.
pub(crate) fn padded(bytes: Bytes, len: usize) -> Bytes {
    if bytes.len() == len {
        return bytes;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&bytes);
    out.resize(len, 0);
    Bytes::from(out)
}
