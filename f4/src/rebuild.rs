//! The rebuild worker (role `rebuilder`): restores lost or corrupt blocks
//! whole (`POST /rebuild`). The coordinator (in `router`) decides what to
//! rebuild and where; this node only does the work and answers when every
//! target is written, and the coordinator records the result.
//!
//! A rebuild reads the stripe column by column ([`COLUMN_BYTES`] of each
//! source block at once, less when throttled, see [`column_bytes`]; every
//! chunk verified by the node that serves it),
//! one column ahead of the decoder, decodes the lost blocks' columns on a
//! blocking thread and streams them, with their header and checksum record,
//! into one `PUT` per target; the target node checks every chunk's CRC
//! against that record, syncs and renames, so no half block is ever
//! served. A source that fails is replaced by the next survivor, which
//! alone is read for the column; one whose node answered that the
//! column's chunks are damaged sits out that column only. With fewer than
//! `k` for a column the rebuild fails and the targets keep nothing. Blocks whose stored bytes end before a column (a
//! short stripe's implicit zeros) are sources without a request.
//!
//! Memory per rebuild: `k` source columns read ahead, `k` being decoded,
//! one output column per target and the uploads' queues (about 25 MiB for
//! RS(10,4)); at most [`RebuilderConfig::max_rebuilds`] run at once, the
//! others wait.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use bytes::Bytes;
use coding::{BlockChecksumsBuilder, Codec};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::util::MapFutureLayer;

use haystack::client::StoreAddress;
use haystack::http::{ServerLimits, deadline, method_not_allowed, no_route};

use crate::api::{
    BlockId, FailedSource, RangeRead, RebuildReport, RebuildRequest, RebuildTarget, VerifyReport,
    VerifyRequest, code,
};
use crate::backoff::padded;
use crate::client::StorageClient;
use crate::format::BlockHeader;
use crate::http::{ApiError, JsonBody};
use crate::pace::Pace;
use crate::reader::WarmReader;

/// Bytes of each block per decoding step, unthrottled.
const COLUMN_BYTES: u64 = crate::block::ENCODE_COLUMN_BYTES as u64;
/// The smallest step of a throttled rebuild.
const COLUMN_BYTES_MIN: u64 = 64 << 10;
/// Steps a second a throttled rebuild aims at: its work spread thin, so
/// that foreground reads meet a little of it often rather than all of it
/// at once (with 1 MiB steps at 16 MiB/s, warm fetches' p99 still rose
/// 1.8x on two cores).
const STEPS_PER_SECOND: u64 = 512;

/// The bytes of each block a rebuild at `bytes_per_second` (0: no
/// limit) reads per step: whole chunks of 64 KiB, 64 KiB to 1 MiB.
fn column_bytes(bytes_per_second: u64) -> u64 {
    if bytes_per_second == 0 {
        return COLUMN_BYTES;
    }
    (bytes_per_second / STEPS_PER_SECOND / COLUMN_BYTES_MIN * COLUMN_BYTES_MIN)
        .clamp(COLUMN_BYTES_MIN, COLUMN_BYTES)
}
/// Columns read ahead of the decoder.
const COLUMNS_AHEAD: usize = 1;
/// Chunks queued per target's upload.
const UPLOAD_QUEUE: usize = 4;
/// Idle connections kept per storage node.
const POOL_IDLE_PER_NODE: usize = 16;

/// Configuration of a rebuilder (the binary's shared knobs).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RebuilderConfig {
    /// Rebuilds run at once; further requests wait their turn.
    #[serde(default = "default_max_rebuilds")]
    pub max_rebuilds: usize,
    /// Deadline of one source read (one column of one block).
    #[serde(default = "default_source_timeout_ms")]
    pub source_timeout_ms: u64,
    /// Deadline of one rebuild, waiting included.
    #[serde(default = "default_rebuild_timeout_ms")]
    pub rebuild_timeout_ms: u64,
    /// Header-read timeout, connection cap and shutdown grace.
    #[serde(default)]
    pub server: ServerLimits,
}

/// Default of [`RebuilderConfig::max_rebuilds`]: 2.
pub fn default_max_rebuilds() -> usize {
    2
}
/// Default of [`RebuilderConfig::source_timeout_ms`]: 30 s.
pub fn default_source_timeout_ms() -> u64 {
    30_000
}
/// Default of [`RebuilderConfig::rebuild_timeout_ms`]: 1 h, as a block
/// transfer's.
pub fn default_rebuild_timeout_ms() -> u64 {
    3_600_000
}

impl Default for RebuilderConfig {
    fn default() -> Self {
        RebuilderConfig {
            max_rebuilds: default_max_rebuilds(),
            source_timeout_ms: default_source_timeout_ms(),
            rebuild_timeout_ms: default_rebuild_timeout_ms(),
            server: ServerLimits::default(),
        }
    }
}

impl RebuilderConfig {
    /// Checks that the limits are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_rebuilds == 0 || self.source_timeout_ms == 0 || self.rebuild_timeout_ms == 0 {
            return Err("max_rebuilds and the timeouts must be positive".into());
        }
        self.server.validate()
    }
}

struct RebuilderState {
    config: RebuilderConfig,
    running: Semaphore,
    /// Verifies (deep scrubs) run beside rebuilds, never in their place.
    verifying: Semaphore,
    reader: WarmReader,
    uploads: reqwest::Client,
}

/// The rebuilder's HTTP API.
pub fn router(config: RebuilderConfig) -> Result<Router, String> {
    config.validate()?;
    let source_timeout = Duration::from_millis(config.source_timeout_ms);
    let reader = WarmReader::with_timeout(source_timeout, POOL_IDLE_PER_NODE);
    let uploads = crate::client::http_client(config.source_timeout_ms)
        .map_err(|e| format!("HTTP client: {e}"))?;
    let timeout = Duration::from_millis(config.rebuild_timeout_ms);
    let state = Arc::new(RebuilderState {
        running: Semaphore::new(config.max_rebuilds),
        verifying: Semaphore::new(config.max_rebuilds),
        config,
        reader,
        uploads,
    });
    Ok(Router::new()
        .route("/health", get(haystack::http::health))
        .route("/rebuild", post(rebuild))
        .route("/verify", post(verify))
        .layer(MapFutureLayer::new(
            move |handler: RouteFuture<std::convert::Infallible>| deadline(timeout, handler),
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .with_state(state))
}

/// Runs a rebuilder on `listener` until `cancel` fires.
pub async fn run(
    config: RebuilderConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), String> {
    let options = config.server.serve_options();
    let app = router(config)?;
    tracing::info!(address = ?listener.local_addr().ok(), "rebuilder serving");
    haystack::http::serve(listener, app, options, cancel).await;
    Ok(())
}

/// What a rebuild is asked, checked.
struct Plan {
    request: RebuildRequest,
    /// Stored bytes of each block of the stripe.
    lens: Vec<u64>,
    /// Every block's column length: the stripe's longest block.
    column_len: u64,
}

impl Plan {
    fn check(request: RebuildRequest) -> Result<Plan, ApiError> {
        let geometry = request.geometry;
        let layout = geometry.layout()?;
        let (k, m) = (
            usize::from(geometry.data_blocks),
            usize::from(geometry.parity_blocks),
        );
        let total = k + m;
        if request.sources.len() != total {
            return Err(ApiError::bad_request(format!(
                "a stripe of {total} blocks needs {total} sources"
            )));
        }
        if request.stripe >= layout.stripe_count() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                code::OUT_OF_RANGE,
                format!("the volume has {} stripes", layout.stripe_count()),
            ));
        }
        let mut seen = vec![false; total];
        for target in &request.targets {
            let index = target.block as usize;
            if index >= total || std::mem::replace(&mut seen[index], true) {
                return Err(ApiError::bad_request(format!(
                    "targets must be distinct blocks below {total}"
                )));
            }
            StoreAddress::parse(&target.node)
                .map_err(|e| ApiError::bad_request(format!("target {}: {e}", target.node)))?;
        }
        if request.targets.is_empty() || request.targets.len() > m {
            return Err(ApiError::bad_request(format!(
                "a rebuild restores 1 to {m} blocks of a stripe"
            )));
        }
        let lens = (0..total)
            .map(|i| layout.block_len_bytes(request.stripe, i))
            .collect::<coding::Result<Vec<u64>>>()
            .map_err(crate::Error::from)?;
        let column_len = lens.iter().copied().max().unwrap_or(0);
        Ok(Plan {
            request,
            lens,
            column_len,
        })
    }

    fn is_target(&self, index: usize) -> bool {
        self.request
            .targets
            .iter()
            .any(|t| t.block as usize == index)
    }

    fn block(&self, index: usize) -> BlockId {
        BlockId {
            volume: self.request.volume,
            generation: self.request.generation,
            stripe: self.request.stripe,
            block: index as u32,
        }
    }
}

/// `POST /rebuild`.
async fn rebuild(
    State(state): State<Arc<RebuilderState>>,
    JsonBody(request): JsonBody<RebuildRequest>,
) -> Result<axum::Json<RebuildReport>, ApiError> {
    let plan = Arc::new(Plan::check(request)?);
    let _turn = state
        .running
        .acquire()
        .await
        .map_err(|_| ApiError::internal("rebuild semaphore closed"))?;
    let started = Instant::now();
    let request = &plan.request;
    tracing::info!(volume = request.volume, generation = request.generation,
        stripe = request.stripe, blocks = ?request.targets.iter().map(|t| t.block).collect::<Vec<_>>(),
        "rebuild started");
    let mut uploads = Vec::with_capacity(request.targets.len());
    for target in &request.targets {
        uploads.push(Upload::start(&state, &plan, target)?);
    }
    let (columns_to, mut columns) = mpsc::channel(COLUMNS_AHEAD);
    let reading = tokio::spawn(read_columns(
        Arc::clone(&state),
        Arc::clone(&plan),
        columns_to,
    ));
    let codec =
        Arc::new(Codec::new(plan.request.geometry.rs_config()?).map_err(crate::Error::from)?);
    let mut pace = Pace::new(request.bytes_per_second);
    let mut columns_done = 0u64;
    let mut at = 0u64;
    while at < plan.column_len {
        let Some(column) = columns.recv().await else {
            break;
        };
        let width = column.width;
        let codec = Arc::clone(&codec);
        let targets: Vec<usize> = request.targets.iter().map(|t| t.block as usize).collect();
        let decoded = tokio::task::spawn_blocking(move || {
            let sources: Vec<(usize, &[u8])> =
                column.blocks.iter().map(|(i, b)| (*i, &b[..])).collect();
            decode(&codec, &sources, &targets, width)
        })
        .await
        .map_err(|e| ApiError::internal(format!("decode task: {e}")))??;
        for (upload, output) in uploads.iter_mut().zip(decoded) {
            let stored = plan.lens[upload.index].saturating_sub(at).min(width as u64) as usize;
            let mut output = Bytes::from(output);
            output.truncate(stored);
            pace.take(stored as u64).await;
            upload.send(output).await?;
        }
        at += width as u64;
        columns_done += 1;
        haystack::failpoint::pause_task_at(&format!("rebuild-after-columns-{columns_done}")).await;
    }
    let (read_bytes, sources, failed_sources) = reading
        .await
        .map_err(|e| ApiError::internal(format!("source reads: {e}")))??;
    let mut written_bytes = 0;
    for upload in uploads {
        written_bytes += upload.finish().await?;
    }
    let report = RebuildReport {
        read_bytes,
        written_bytes,
        elapsed_ms: started.elapsed().as_millis() as u64,
        sources,
        failed_sources,
    };
    tracing::info!(
        volume = request.volume,
        stripe = request.stripe,
        written_bytes,
        read_bytes,
        elapsed_ms = report.elapsed_ms,
        failed_sources = report.failed_sources.len(),
        "rebuild done"
    );
    Ok(axum::Json(report))
}

/// `POST /verify`: every column of the stripe read from all its blocks and
/// its parity recomputed from its data; a column that disagrees is put to
/// each block in turn: the block whose rebuild from ten of the others makes
/// the whole column agree is the damaged one.
async fn verify(
    State(state): State<Arc<RebuilderState>>,
    JsonBody(request): JsonBody<VerifyRequest>,
) -> Result<axum::Json<VerifyReport>, ApiError> {
    let geometry = request.geometry;
    let layout = geometry.layout()?;
    let total = geometry.blocks_per_stripe() as usize;
    let k = usize::from(geometry.data_blocks);
    if request.sources.len() != total || request.stripe >= layout.stripe_count() {
        return Err(ApiError::bad_request(format!(
            "a stripe below {} and {total} sources",
            layout.stripe_count()
        )));
    }
    let nodes = request
        .sources
        .iter()
        .map(|url| {
            StoreAddress::parse(url).map_err(|e| ApiError::bad_request(format!("{url}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let lens = (0..total)
        .map(|i| layout.block_len_bytes(request.stripe, i))
        .collect::<coding::Result<Vec<u64>>>()
        .map_err(crate::Error::from)?;
    let column_len = lens.iter().copied().max().unwrap_or(0);
    let _turn = state
        .verifying
        .acquire()
        .await
        .map_err(|_| ApiError::internal("rebuild semaphore closed"))?;
    let codec = Arc::new(Codec::new(geometry.rs_config()?).map_err(crate::Error::from)?);
    let source_timeout = Duration::from_millis(state.config.source_timeout_ms);
    let mut report = VerifyReport {
        silent_blocks: Some(Vec::new()),
        ..VerifyReport::default()
    };
    let mut pace = Pace::new(request.bytes_per_second);
    // Each block's share of the rate sets the step, as for a rebuild.
    let share = match request.bytes_per_second {
        0 => 0,
        rate => (rate / total as u64).max(1),
    };
    let step = column_bytes(share);
    let mut at = 0u64;
    while at < column_len {
        let width = (column_len - at).min(step);
        let reads = nodes.iter().enumerate().map(|(index, node)| {
            let stored = lens[index].saturating_sub(at).min(width);
            let read = RangeRead {
                block: BlockId {
                    volume: request.volume,
                    generation: request.generation,
                    stripe: request.stripe,
                    block: index as u32,
                },
                geometry,
                offset: at,
                len: stored,
            };
            let reader = &state.reader;
            async move {
                read_source(reader, node, read, source_timeout)
                    .await
                    .map_err(|(damaged, why)| (damaged, format!("block {index}: {why}")))
            }
        });
        let mut column = Vec::with_capacity(total);
        let mut damaged_here = false;
        let read_before = report.read_bytes;
        for (index, answer) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            match answer {
                Ok(bytes) => {
                    report.read_bytes += bytes.len() as u64;
                    column.push(padded(bytes, width as usize));
                }
                // A block its node calls damaged is a finding of its own;
                // the column is not compared without it.
                Err((true, _)) => {
                    damaged_here = true;
                    if !report.damaged_blocks.contains(&(index as u32)) {
                        report.damaged_blocks.push(index as u32);
                    }
                }
                Err((false, why)) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        code::TOO_FEW_BLOCKS,
                        why,
                    ));
                }
            }
        }
        pace.take(report.read_bytes - read_before).await;
        if damaged_here {
            at += width;
            continue;
        }
        let codec = Arc::clone(&codec);
        let (consistent, culprit) = tokio::task::spawn_blocking(move || {
            let (data, parity) = column.split_at(k);
            if codec.parity_matches(data, parity)? {
                return Ok::<_, crate::Error>((true, None));
            }
            Ok((false, odd_one_out(&codec, &column)?))
        })
        .await
        .map_err(|e| ApiError::internal(format!("verify task: {e}")))??;
        if !consistent {
            report.mismatched_columns += 1;
            match culprit {
                Some(block) => {
                    if !report.damaged_blocks.contains(&block) {
                        report.damaged_blocks.push(block);
                    }
                    let silent = report.silent_blocks.get_or_insert_default();
                    if !silent.contains(&block) {
                        silent.push(block);
                    }
                }
                None => report.unexplained_columns += 1,
            }
        }
        at += width;
    }
    if report.mismatched_columns > 0 {
        tracing::error!(volume = request.volume, stripe = request.stripe,
            damaged = ?report.damaged_blocks, unexplained = report.unexplained_columns,
            "parity does not match the data");
    }
    Ok(axum::Json(report))
}

/// `read` from `node` within `timeout` (nothing to ask for an empty range);
/// on failure, whether the node answered that the block is damaged, and why.
async fn read_source(
    reader: &WarmReader,
    node: &StoreAddress,
    read: RangeRead,
    timeout: Duration,
) -> Result<Bytes, (bool, String)> {
    if read.len == 0 {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout(timeout, reader.read_range(node, &read)).await {
        Ok(read) => read.map_err(|e| (e.is_block_damage(), e.to_string())),
        Err(_) => Err((false, format!("no answer within {timeout:?}"))),
    }
}

/// Blocks `targets` of a column `width` bytes wide, decoded from `sources`
/// (`(block, bytes)`, at least `k`).
fn decode(
    codec: &Codec,
    sources: &[(usize, &[u8])],
    targets: &[usize],
    width: usize,
) -> crate::Result<Vec<Vec<u8>>> {
    let mut outputs = vec![vec![0u8; width]; targets.len()];
    let mut wanted: Vec<(usize, &mut [u8])> = targets
        .iter()
        .copied()
        .zip(outputs.iter_mut().map(Vec::as_mut_slice))
        .collect();
    codec.reconstruct_range(sources, &mut wanted)?;
    Ok(outputs)
}

/// The one block of `column` (all blocks of a stripe, same range, whose
/// parity is known not to match) whose value, rebuilt from `k` of the
/// others, makes every other block agree: the damaged one, if a single
/// block explains the mismatch.
fn odd_one_out(codec: &Codec, column: &[Bytes]) -> crate::Result<Option<u32>> {
    let k = codec.config().data_shards();
    // With one parity block a mismatch is seen but not placed: any suspect
    // leaves nothing to compare.
    if column.len() < k + 2 {
        return Ok(None);
    }
    let width = column.first().map_or(0, Bytes::len);
    for suspect in 0..column.len() {
        let sources: Vec<(usize, &[u8])> = (0..column.len())
            .filter(|i| *i != suspect)
            .take(k)
            .map(|i| (i, &column[i][..]))
            .collect();
        let others: Vec<usize> = (0..column.len())
            .filter(|i| *i != suspect && !sources.iter().any(|(s, _)| s == i))
            .collect();
        let rebuilt = decode(codec, &sources, &others, width)?;
        if others
            .iter()
            .zip(&rebuilt)
            .all(|(i, bytes)| column[*i][..] == bytes[..])
        {
            return Ok(Some(suspect as u32));
        }
    }
    Ok(None)
}

/// One column of the stripe: the same `width` bytes of `k` source blocks.
struct Column {
    width: usize,
    blocks: Vec<(usize, Bytes)>,
}

/// What the source reads came to: bytes read, the blocks used, the ones
/// that failed.
type Reads = (u64, Vec<u32>, Vec<FailedSource>);

/// Reads the stripe's columns from `k` sources into `columns`. A source
/// that fails is replaced by the next one, which alone is read for the
/// column; one whose node answered that the column's chunks are damaged
/// sits out that column only (the rest of its block still serves), any
/// other failure drops it for good.
async fn read_columns(
    state: Arc<RebuilderState>,
    plan: Arc<Plan>,
    columns: mpsc::Sender<Column>,
) -> Result<Reads, ApiError> {
    let request = &plan.request;
    let k = usize::from(request.geometry.data_blocks);
    // Blocks with no stored bytes are zeros: sources that need no node.
    let zeros: Vec<usize> = (0..plan.lens.len())
        .filter(|i| plan.lens[*i] == 0 && !plan.is_target(*i))
        .take(k)
        .collect();
    let mut failed = Vec::new();
    let mut spare: VecDeque<(usize, StoreAddress, String)> = VecDeque::new();
    let candidates = (0..plan.lens.len())
        .filter(|i| plan.lens[*i] > 0 && !plan.is_target(*i))
        .filter_map(|i| Some((i, request.sources[i].clone()?)));
    for (index, url) in candidates {
        match StoreAddress::parse(&url) {
            Ok(address) => spare.push_back((index, address, url)),
            Err(e) => failed.push(FailedSource {
                block: index as u32,
                node: url,
                damaged: false,
                error: e.to_string(),
            }),
        }
    }
    let too_few = |failed: &[FailedSource]| {
        let last = failed
            .last()
            .map(|f: &FailedSource| format!(" (block {} at {}: {})", f.block, f.node, f.error))
            .unwrap_or_default();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TOO_FEW_BLOCKS,
            format!(
                "fewer than {k} blocks of stripe {} of volume {} could be read{last}",
                request.stripe, request.volume
            ),
        )
    };
    let mut nodes: Vec<(usize, StoreAddress, String)> = Vec::with_capacity(k);
    let mut used: Vec<usize> = zeros.clone();
    let mut read_bytes = 0u64;
    let source_timeout = Duration::from_millis(state.config.source_timeout_ms);
    let mut at = 0u64;
    while at < plan.column_len {
        let width = (plan.column_len - at).min(column_bytes(request.bytes_per_second));
        let mut blocks: Vec<(usize, Bytes)> = Vec::with_capacity(k);
        let mut benched = Vec::new();
        // The nodes of `nodes` from `fresh` on have not been read for this
        // column yet.
        let mut fresh = 0;
        loop {
            while zeros.len() + nodes.len() < k {
                let Some(next) = spare.pop_front() else {
                    return Err(too_few(&failed));
                };
                nodes.push(next);
            }
            let reads = nodes[fresh..].iter().map(|(index, address, _)| {
                let stored = plan.lens[*index].saturating_sub(at).min(width);
                let read = RangeRead {
                    block: plan.block(*index),
                    geometry: request.geometry,
                    offset: at,
                    len: stored,
                };
                read_source(&state.reader, address, read, source_timeout)
            });
            let answers = futures::future::join_all(reads).await;
            let mut lost = Vec::new();
            for ((index, _, url), answer) in nodes[fresh..].iter().zip(answers) {
                match answer {
                    Ok(bytes) => {
                        read_bytes += bytes.len() as u64;
                        blocks.push((*index, padded(bytes, width as usize)));
                    }
                    Err((damaged, error)) => {
                        tracing::warn!(volume = request.volume, stripe = request.stripe,
                            block = index, node = %url, error = %error, "rebuild source failed");
                        let known = failed
                            .iter()
                            .any(|f: &FailedSource| f.damaged && f.block == *index as u32);
                        if !(damaged && known) {
                            failed.push(FailedSource {
                                block: *index as u32,
                                node: url.clone(),
                                damaged,
                                error,
                            });
                        }
                        lost.push((*index, damaged));
                    }
                }
            }
            let mut kept = Vec::with_capacity(k);
            for node in nodes.drain(..) {
                match lost.iter().find(|(index, _)| *index == node.0) {
                    None => kept.push(node),
                    Some((_, true)) => benched.push(node),
                    Some((_, false)) => {}
                }
            }
            nodes = kept;
            fresh = nodes.len();
            if lost.is_empty() {
                break;
            }
        }
        for (index, _, _) in &nodes {
            if !used.contains(index) {
                used.push(*index);
            }
        }
        // Back for the next column, after the spares not yet tried.
        spare.extend(benched);
        let zeros = zeros
            .iter()
            .map(|i| (*i, Bytes::from(vec![0u8; width as usize])));
        let blocks: Vec<(usize, Bytes)> = zeros.chain(blocks).collect();
        if columns
            .send(Column {
                width: width as usize,
                blocks,
            })
            .await
            .is_err()
        {
            // The rebuild stopped; its own error says why.
            break;
        }
        at += width;
    }
    let mut sources: Vec<u32> = used.iter().map(|i| *i as u32).collect();
    sources.sort_unstable();
    Ok((read_bytes, sources, failed))
}

/// The `PUT` of one rebuilt block file: header, data, checksum record.
/// Dropped before [`Upload::finish`], it aborts the body: the target
/// keeps nothing.
struct Upload {
    index: usize,
    header: BlockHeader,
    file_len: u64,
    checksums: Option<BlockChecksumsBuilder>,
    queue: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

impl Upload {
    fn start(
        state: &RebuilderState,
        plan: &Plan,
        target: &RebuildTarget,
    ) -> Result<Upload, ApiError> {
        let request = &plan.request;
        let header = BlockHeader::new(
            request.volume,
            request.generation,
            request.geometry,
            request.stripe,
            target.block,
        )?;
        let file_len = header
            .file_len_bytes()
            .ok_or_else(|| ApiError::bad_request("a block file over u64"))?;
        let checksums = BlockChecksumsBuilder::new(request.geometry.chunk_size_bytes)
            .map_err(crate::Error::from)?;
        let (queue, chunks) = mpsc::channel(UPLOAD_QUEUE);
        queue
            .try_send(Ok(Bytes::copy_from_slice(&header.encode())))
            .map_err(|_| ApiError::internal("a new upload queue is full"))?;
        let body = futures::stream::unfold(chunks, |mut chunks| async move {
            chunks.recv().await.map(|chunk| (chunk, chunks))
        });
        let client = StorageClient::from_http(&target.node, state.uploads.clone());
        let (volume, generation, stripe, block) = (
            request.volume,
            request.generation,
            request.stripe,
            target.block,
        );
        let node = target.node.clone();
        let task = tokio::spawn(async move {
            client
                .put_block_body(volume, generation, stripe, block, file_len, body.boxed())
                .await
                .map_err(|e| format!("block {stripe}.{block} to {node}: {e}"))
        });
        Ok(Upload {
            index: target.block as usize,
            header,
            file_len,
            checksums: Some(checksums),
            queue: Some(queue),
            task: Some(task),
        })
    }

    /// Sends the next bytes of the block's data.
    async fn send(&mut self, data: Bytes) -> Result<(), ApiError> {
        if let Some(checksums) = &mut self.checksums {
            checksums.update(&data);
        }
        self.put(data).await
    }

    async fn put(&mut self, chunk: Bytes) -> Result<(), ApiError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let sent = match &self.queue {
            Some(queue) => queue.send(Ok(chunk)).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The upload ended early: its own error says why.
        let ended = match self.task.take() {
            Some(task) => upload_outcome(task.await),
            None => Ok(()),
        };
        Err(ended.err().unwrap_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                code::PEER,
                "the target answered before the block's end",
            )
        }))
    }

    /// Sends the checksum record, ends the body and waits for the target
    /// to have the block synced in place; the file's bytes.
    async fn finish(mut self) -> Result<u64, ApiError> {
        let checksums = self
            .checksums
            .take()
            .ok_or_else(|| ApiError::internal("the upload is over"))?
            .finish();
        self.header.check_checksums(&checksums)?;
        self.put(Bytes::from(checksums.encode())).await?;
        self.queue = None;
        let task = self
            .task
            .take()
            .ok_or_else(|| ApiError::internal("the upload is over"))?;
        upload_outcome(task.await).map(|()| self.file_len)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            let _ = queue.try_send(Err(std::io::Error::other("the rebuild stopped")));
        }
    }
}

/// An upload task's outcome as an answer.
fn upload_outcome(
    outcome: Result<Result<(), String>, tokio::task::JoinError>,
) -> Result<(), ApiError> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, code::PEER, why)),
        Err(e) => Err(ApiError::internal(format!("upload task: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_rebuild_takes_small_steps_and_a_free_one_large_ones() {
        assert_eq!(column_bytes(0), 1 << 20);
        assert_eq!(column_bytes(64 << 20), 128 << 10);
        assert_eq!(column_bytes(16 << 20), 64 << 10);
        assert_eq!(column_bytes(1 << 20), 64 << 10);
        assert_eq!(column_bytes(1 << 30), 1 << 20);
        assert_eq!(column_bytes(100 << 20) % (64 << 10), 0);
    }

    /// A column of `k + m` blocks encoded from pseudo-random data.
    fn column(codec: &Codec) -> Vec<Bytes> {
        let config = codec.config();
        let data: Vec<Vec<u8>> = (0..config.data_shards())
            .map(|i| (0..4096).map(|j| ((i * 131 + j * 7) % 251) as u8).collect())
            .collect();
        let mut parity = vec![vec![0u8; 4096]; config.parity_shards()];
        codec.encode(&data, &mut parity).expect("encode");
        data.into_iter().chain(parity).map(Bytes::from).collect()
    }

    #[test]
    fn the_one_block_that_disagrees_is_named_and_only_it() {
        let codec = Codec::new(coding::RsConfig::new(10, 4).expect("config")).expect("codec");
        let whole = column(&codec);
        let (data, parity) = whole.split_at(10);
        assert!(codec.parity_matches(data, parity).expect("check"));
        for bad in [0usize, 3, 9, 10, 13] {
            let mut blocks = column(&codec);
            let mut changed = blocks[bad].to_vec();
            changed[100] ^= 0x20;
            blocks[bad] = Bytes::from(changed);
            assert_eq!(
                odd_one_out(&codec, &blocks).expect("check"),
                Some(bad as u32),
                "block {bad}"
            );
        }
        // With one parity block a mismatch cannot be placed.
        let single = Codec::new(coding::RsConfig::new(10, 1).expect("config")).expect("codec");
        let mut blocks = column(&single);
        blocks[2] = Bytes::from(vec![0u8; 4096]);
        assert_eq!(odd_one_out(&single, &blocks).expect("check"), None);
    }
}
