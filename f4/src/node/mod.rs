//! The f4 storage node: an axum service over a directory of block files and
//! of the index and journal files of the warm volumes it is a journal
//! holder of. Its client is [`crate::client::StorageClient`].
//!
//! - File API: a verified byte range of a block (`POST /blocks/read`); a
//!   block written whole (`PUT /blocks/...`, streamed in and checked, synced,
//!   renamed into place; writing the same block again replaces it with the
//!   same bytes); a whole block read back and checked (`POST /blocks/check`);
//!   the inventory (`GET /blocks`); the files of a volume's other
//!   generations removed (`POST /volumes/{vid}/prune`).
//! - Index API: a key's place in the data (`GET /volumes/{vid}/{gen}/keys/{key}`),
//!   or `404 not_found`, or `410 deleted`; tombstones appended and synced
//!   before the answer; the journal folded into the index past
//!   [`NodeConfig::fold_tombstones`]; a stale holder's merge of its peers'
//!   deletes.
//! - Sealing: a locked hot replica's live needles planned from its index,
//!   then streamed from its store node, each checked, through the encoder
//!   to the nodes the directory placed the blocks on (see [`seal`]).
//!
//! Layout of `data_dir`: `blocks/` (block files), `volumes/` (index and
//! journal files), `staging/` (seal attempts in progress).
//!
//! Every file operation runs on the blocking pool, at most
//! [`NodeConfig::io_concurrency`] at a time; bodies are bounded (blocks by
//! the largest block size, indexes by [`NodeConfig::max_index_bytes`],
//! ranges by [`NodeConfig::max_range_bytes`]).

mod batch;
mod derive;
mod encode;
mod handlers;
mod held;
mod open_blocks;
pub mod seal;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use haystack::http::ServerLimits;

use crate::http::ApiError;
pub use handlers::router;
use held::HeldVolumes;
use open_blocks::OpenBlocks;

/// Configuration of a storage node (the `[f4]` part of a node's config).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory holding the node's blocks, indexes and journals.
    pub data_dir: PathBuf,
    /// The largest block accepted (a volume's own block size is at most
    /// this).
    #[serde(default = "default_max_block_size_bytes")]
    pub max_block_size_bytes: u64,
    /// Largest index file accepted.
    #[serde(default = "default_max_index_bytes")]
    pub max_index_bytes: u64,
    /// Largest range one read may ask for.
    #[serde(default = "default_max_range_bytes")]
    pub max_range_bytes: u64,
    /// Tombstones a journal holds before it is folded into the index.
    #[serde(default = "default_fold_tombstones")]
    pub fold_tombstones: usize,
    /// File operations running at once on the blocking pool.
    #[serde(default = "default_io_concurrency")]
    pub io_concurrency: usize,
    /// Block files kept open between reads (each holds a descriptor and
    /// its checksum record, 4 bytes per checksum chunk).
    #[serde(default = "default_open_blocks")]
    pub open_blocks: usize,
    /// Deadline of one request's handler (not block writes, seals or
    /// merges, which have [`NodeConfig::transfer_timeout_ms`]).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Deadline of a block write, a seal step or a merge.
    #[serde(default = "default_transfer_timeout_ms")]
    pub transfer_timeout_ms: u64,
    /// Space the node keeps free on its disk: a block that would leave
    /// less is refused (`507`), and the migrator holds back while too few
    /// racks have room for a volume's blocks.
    #[serde(default)]
    pub reserve_bytes: u64,
    /// Header-read timeout, connection cap and shutdown grace.
    #[serde(default)]
    pub server: ServerLimits,
}

/// Default of [`NodeConfig::max_block_size_bytes`]: 1 GiB.
pub fn default_max_block_size_bytes() -> u64 {
    1 << 30
}
/// Default of [`NodeConfig::max_index_bytes`]: 1 GiB (44 million needles).
pub fn default_max_index_bytes() -> u64 {
    1 << 30
}
/// Default of [`NodeConfig::max_range_bytes`]: 64 MiB, the largest BLOB
/// the router accepts by default, with room for its needle framing.
pub fn default_max_range_bytes() -> u64 {
    (64 << 20) + 4096
}
/// Default of [`NodeConfig::fold_tombstones`]: 65,536.
pub fn default_fold_tombstones() -> usize {
    65_536
}
/// Default of [`NodeConfig::io_concurrency`]: the hot tier's.
pub fn default_io_concurrency() -> usize {
    haystack::service::default_io_concurrency()
}
/// Default of [`NodeConfig::open_blocks`]: 1024.
pub fn default_open_blocks() -> usize {
    1024
}
/// Default of [`NodeConfig::request_timeout_ms`]: every role's.
pub fn default_request_timeout_ms() -> u64 {
    haystack::http::DEFAULT_REQUEST_TIMEOUT_MS
}
/// Default of [`NodeConfig::transfer_timeout_ms`]: 1 h.
pub fn default_transfer_timeout_ms() -> u64 {
    3_600_000
}

impl NodeConfig {
    /// A configuration with every default, keeping data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            max_block_size_bytes: default_max_block_size_bytes(),
            max_index_bytes: default_max_index_bytes(),
            max_range_bytes: default_max_range_bytes(),
            fold_tombstones: default_fold_tombstones(),
            io_concurrency: default_io_concurrency(),
            open_blocks: default_open_blocks(),
            request_timeout_ms: default_request_timeout_ms(),
            transfer_timeout_ms: default_transfer_timeout_ms(),
            reserve_bytes: 0,
            server: ServerLimits::default(),
        }
    }

    /// Checks that the limits are usable.
    pub fn validate(&self) -> Result<(), NodeError> {
        let fail = |m: &str| Err(NodeError::Config(m.to_owned()));
        if self.io_concurrency == 0 || self.io_concurrency > Semaphore::MAX_PERMITS {
            return fail("io_concurrency must be at least 1");
        }
        if self.max_block_size_bytes == 0
            || self.max_index_bytes == 0
            || self.max_range_bytes == 0
            || self.fold_tombstones == 0
            || self.open_blocks == 0
        {
            return fail("block, index, range and fold limits must be positive");
        }
        if self.request_timeout_ms == 0 || self.transfer_timeout_ms == 0 {
            return fail("timeouts must be positive");
        }
        self.server.validate().map_err(NodeError::Config)
    }
}

/// Why a storage node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error("invalid f4 storage node config: {0}")]
    Config(String),
    /// Its directories could not be made.
    #[error("f4 storage node: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client could not be built.
    #[error("f4 storage node: http client: {0}")]
    Http(String),
}

/// Shared state of a storage node's handlers.
#[derive(Clone)]
pub struct NodeState {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: NodeConfig,
    blocks_dir: PathBuf,
    volumes_dir: PathBuf,
    staging_dir: PathBuf,
    io_permits: Arc<Semaphore>,
    open_blocks: OpenBlocks,
    /// One seal step at a time: each streams a whole volume.
    seal_permit: Semaphore,
    held: HeldVolumes,
    /// Talks to store nodes (seal sources) and to peers (blocks, merges).
    peers: reqwest::Client,
    /// Bytes of the blocks being received now: room taken before they land.
    receiving_bytes: std::sync::atomic::AtomicU64,
}

impl NodeState {
    /// The state of a node keeping its files under `config.data_dir`
    /// (created if missing; staging left by a crash is removed).
    pub fn open(config: NodeConfig) -> Result<NodeState, NodeError> {
        config.validate()?;
        let blocks_dir = config.data_dir.join("blocks");
        let volumes_dir = config.data_dir.join("volumes");
        let staging_dir = config.data_dir.join("staging");
        for dir in [&blocks_dir, &volumes_dir] {
            std::fs::create_dir_all(dir)?;
            remove_temporary_files(dir)?;
        }
        // A seal attempt interrupted by a crash is started over by its
        // caller; its staging is only a plan.
        if staging_dir.exists() {
            std::fs::remove_dir_all(&staging_dir)?;
        }
        std::fs::create_dir_all(&staging_dir)?;
        let peers = crate::client::http_client(config.request_timeout_ms)
            .map_err(|e| NodeError::Http(e.to_string()))?;
        Ok(NodeState {
            inner: Arc::new(Inner {
                io_permits: Arc::new(Semaphore::new(config.io_concurrency)),
                open_blocks: OpenBlocks::new(config.open_blocks),
                seal_permit: Semaphore::new(1),
                held: HeldVolumes::new(volumes_dir.clone(), config.fold_tombstones),
                blocks_dir,
                volumes_dir,
                staging_dir,
                peers,
                config,
                receiving_bytes: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Runs `f` on the blocking pool once an IO permit is free.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Inner) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        haystack::http::bounded_blocking(&self.inner.io_permits, move || f(&inner)).await
    }

    fn transfer_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.transfer_timeout_ms)
    }
}

/// Removes the `*.tmp` files a crash left in `dir`: writes that were never
/// renamed into place, so never acknowledged.
fn remove_temporary_files(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            tracing::info!(path = %path.display(), "removing an unfinished write");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Runs a storage node on `listener` until `cancel` fires.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), NodeError> {
    let options = config.server.serve_options();
    let opened = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || NodeState::open(config))
            .await
            .map_err(|e| NodeError::Config(format!("open task: {e}")))??
    };
    tracing::info!(
        address = ?listener.local_addr().ok(),
        data_dir = %config.data_dir.display(),
        "f4 storage node serving"
    );
    haystack::http::serve(listener, router(opened), options, cancel).await;
    Ok(())
}
