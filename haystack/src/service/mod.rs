//! The store node: an axum service over a [`Store`] of volume replicas.
//!
//! The HTTP contract is the "Store node HTTP API" section of
//! `docs/ARCHITECTURE.md`; [`crate::client::StoreClient`] is its client.
//!
//! Threads and limits: every engine call blocks (pread, pwrite, fdatasync),
//! so it runs in `tokio::task::spawn_blocking`, at most
//! [`StoreNodeConfig::io_concurrency`] at a time. The exception is a small
//! needle's read (`GET`, `HEAD`, an entry of a read batch): it is first tried
//! on the async task with a read that only succeeds from the page cache and
//! never waits (`preadv2(RWF_NOWAIT)`), and goes to the blocking pool only if
//! that fails. Needle bodies are bounded by
//! [`StoreNodeConfig::max_needle_bytes`] and in total, across concurrent
//! uploads, by [`StoreNodeConfig::body_buffer_limit_bytes`]. Connections are
//! served by hyper with a header-read timeout, bodies with an idle timeout,
//! and handlers (everything but bulk sync and the streaming of file bodies)
//! with [`StoreNodeConfig::request_timeout_ms`].

mod batch;
mod direct;
mod error;
mod handlers;
mod inventory;
mod params;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::{StoreClientOptions, http_client_builder};
use crate::http::ServerLimits;
use crate::store::Store;
use crate::volume::VolumeOptions;

pub use direct::{DirectReads, LeaseTime};
pub use handlers::router;

/// Largest needle (on disk) that a read tries from the page cache on the async task,
/// before it goes to the blocking pool ([`crate::Volume::try_read_needle_cached`]): a needle
/// of 64 KiB of data (the most a router reads in a batch) with its header, the longest
/// content type and padding. Handing a cached 64 KiB read to the blocking pool instead cost
/// a third more CPU per fetch (thread wake-ups), for a copy of a few microseconds.
pub(crate) const INLINE_NEEDLE_BYTES_MAX: u64 = (64 << 10) + 512;

/// Configuration of a store node (the `[store]` part of a node's TOML).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreNodeConfig {
    /// Directory holding the node's volume files.
    pub data_dir: PathBuf,
    /// A volume locks itself once its data file reaches this size.
    #[serde(default = "default_volume_size_limit_bytes")]
    pub volume_size_limit_bytes: u64,
    /// Largest needle body accepted; larger uploads get `413`.
    #[serde(default = "default_max_needle_bytes")]
    pub max_needle_bytes: u64,
    /// Upper bound on the needle bodies buffered at once across all uploads
    /// (raised to `max_needle_bytes` if below it); an upload waits for room
    /// before it reads its body.
    #[serde(default = "default_body_buffer_limit_bytes")]
    pub body_buffer_limit_bytes: u64,
    /// Engine calls running at once on the blocking pool.
    #[serde(default = "default_io_concurrency")]
    pub io_concurrency: usize,
    /// Deadline of one request's handler (not bulk sync, not the streaming
    /// of a volume file's body; for an append, of the wait for buffer room
    /// and of the write, the body itself being paced by its sender).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Deadline of one bulk sync (`POST /volumes/{vid}/sync`).
    #[serde(default = "default_sync_timeout_ms")]
    pub sync_timeout_ms: u64,
    /// Longest pause allowed between two chunks of a request body.
    #[serde(default = "default_body_idle_timeout_ms")]
    pub body_idle_timeout_ms: u64,
    /// Header-read timeout, connection cap and shutdown grace.
    #[serde(default)]
    pub server: ServerLimits,
}

/// Default of [`StoreNodeConfig::volume_size_limit_bytes`]: 1 GiB.
pub fn default_volume_size_limit_bytes() -> u64 {
    1 << 30
}
/// Default of [`StoreNodeConfig::max_needle_bytes`]: 64 MiB.
pub fn default_max_needle_bytes() -> u64 {
    64 << 20
}
/// Default of [`StoreNodeConfig::body_buffer_limit_bytes`]: 1 GiB.
pub fn default_body_buffer_limit_bytes() -> u64 {
    1 << 30
}
/// Default of [`StoreNodeConfig::io_concurrency`]: 64.
pub fn default_io_concurrency() -> usize {
    64
}
/// Default of [`StoreNodeConfig::request_timeout_ms`]: 30 s.
pub fn default_request_timeout_ms() -> u64 {
    crate::http::DEFAULT_REQUEST_TIMEOUT_MS
}
/// Default of [`StoreNodeConfig::sync_timeout_ms`]: 1 h.
pub fn default_sync_timeout_ms() -> u64 {
    3_600_000
}
/// Default of [`StoreNodeConfig::body_idle_timeout_ms`]: 60 s, above the
/// router's own (30 s): a router streaming a client's upload paces it, and
/// a client that pauses too long gets the router's `408`, not a store's.
pub fn default_body_idle_timeout_ms() -> u64 {
    60_000
}

impl StoreNodeConfig {
    /// A configuration with every default, serving volumes in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreNodeConfig {
        StoreNodeConfig {
            data_dir: data_dir.into(),
            volume_size_limit_bytes: default_volume_size_limit_bytes(),
            max_needle_bytes: default_max_needle_bytes(),
            body_buffer_limit_bytes: default_body_buffer_limit_bytes(),
            io_concurrency: default_io_concurrency(),
            request_timeout_ms: default_request_timeout_ms(),
            sync_timeout_ms: default_sync_timeout_ms(),
            body_idle_timeout_ms: default_body_idle_timeout_ms(),
            server: ServerLimits::default(),
        }
    }

    /// Checks that the limits are usable together.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let fail = |m: &str| Err(ServiceError::Config(m.to_string()));
        if self.io_concurrency == 0 || self.io_concurrency > Semaphore::MAX_PERMITS {
            return fail("io_concurrency must be at least 1");
        }
        self.server.validate().map_err(ServiceError::Config)?;
        if self.max_needle_bytes == 0 || self.max_needle_bytes > u64::from(u32::MAX) {
            return fail("max_needle_bytes must be between 1 and 4 GiB - 1");
        }
        if buffer_permits(self.effective_body_buffer_limit_bytes()) > Semaphore::MAX_PERMITS as u64
        {
            return fail("body_buffer_limit_bytes is too large");
        }
        let timeouts = [
            self.request_timeout_ms,
            self.sync_timeout_ms,
            self.body_idle_timeout_ms,
        ];
        if timeouts.contains(&0) {
            return fail("timeouts must be positive");
        }
        Ok(())
    }
}

impl StoreNodeConfig {
    /// The body buffer bound actually enforced: never below one needle.
    fn effective_body_buffer_limit_bytes(&self) -> u64 {
        self.body_buffer_limit_bytes.max(self.max_needle_bytes)
    }
}

/// Body-buffer permits are counted in KiB so that 4 GiB fits a `u32`.
const BUFFER_PERMIT_BYTES: u64 = 1024;

fn buffer_permits(bytes: u64) -> u64 {
    bytes.div_ceil(BUFFER_PERMIT_BYTES).max(1)
}

/// Why a store node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The configuration is unusable.
    #[error("invalid store node config: {0}")]
    Config(String),
    /// The store could not be opened.
    #[error("cannot open store: {0}")]
    Store(#[from] crate::error::Error),
    /// Accepting connections failed.
    #[error("listener error: {0}")]
    Io(#[from] std::io::Error),
    /// A setup task failed to run.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shared state of a store node's handlers: the store and its limits.
#[derive(Clone)]
pub struct StoreNodeState {
    inner: Arc<StateInner>,
}

struct StateInner {
    store: Arc<Store>,
    config: StoreNodeConfig,
    io_permits: Arc<Semaphore>,
    buffer_permits: Arc<Semaphore>,
    /// One bulk sync at a time per node: each moves a whole volume.
    sync_lock: Mutex<()>,
    /// Client used to pull volumes from peers during bulk sync.
    peer_http: reqwest::Client,
    /// What this node may serve to clients reading it directly.
    direct_reads: DirectReads,
}

impl std::fmt::Debug for StoreNodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreNodeState")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl StoreNodeState {
    /// State over an already opened store, granted no direct reads.
    pub fn new(store: Arc<Store>, config: StoreNodeConfig) -> Result<StoreNodeState, ServiceError> {
        StoreNodeState::leased(store, config, DirectReads::default())
    }

    /// [`StoreNodeState::new`] whose direct reads follow `direct_reads`
    /// (renewed by the node's heartbeat loop).
    pub fn leased(
        store: Arc<Store>,
        config: StoreNodeConfig,
        direct_reads: DirectReads,
    ) -> Result<StoreNodeState, ServiceError> {
        config.validate()?;
        let peer_options = StoreClientOptions {
            connect_timeout_ms: config.request_timeout_ms.min(10_000),
            request_timeout_ms: config.request_timeout_ms,
            transfer_timeout_ms: config.sync_timeout_ms,
            read_idle_timeout_ms: config.request_timeout_ms,
        };
        let peer_http = http_client_builder(&peer_options)
            .build()
            .map_err(|e| ServiceError::Internal(format!("http client: {e}")))?;
        let permits = buffer_permits(config.effective_body_buffer_limit_bytes()) as usize;
        Ok(StoreNodeState {
            inner: Arc::new(StateInner {
                store,
                io_permits: Arc::new(Semaphore::new(config.io_concurrency)),
                buffer_permits: Arc::new(Semaphore::new(permits)),
                sync_lock: Mutex::new(()),
                peer_http,
                config,
                direct_reads,
            }),
        })
    }

    /// Opens the store in `config.data_dir` (on the blocking pool) and
    /// builds the state over it, with `direct_reads`.
    pub async fn open(
        config: StoreNodeConfig,
        direct_reads: DirectReads,
    ) -> Result<StoreNodeState, ServiceError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        let options = VolumeOptions {
            size_limit_bytes: config.volume_size_limit_bytes,
        };
        let store = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            Store::open(&dir, options)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("store open task: {e}")))??;
        StoreNodeState::leased(Arc::new(store), config, direct_reads)
    }

    /// The store behind the service.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &StoreNodeConfig {
        &self.inner.config
    }

    /// The node's read lease: what its heartbeat loop renews.
    pub fn direct_reads(&self) -> &DirectReads {
        &self.inner.direct_reads
    }
}

/// Serves `app` on `listener` with the node's connection limits until
/// `cancel` fires (see [`crate::http::serve`]).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    config: &StoreNodeConfig,
    cancel: CancellationToken,
) -> Result<(), ServiceError> {
    crate::http::serve(listener, app, config.server.serve_options(), cancel).await;
    Ok(())
}

/// Runs a store node: opens the store in `config.data_dir`, then serves the
/// HTTP API on `listener` until `cancel` fires, and returns once in-flight
/// requests have finished (or the shutdown grace period ran out). Direct
/// reads follow `direct_reads` (none without a lease).
pub async fn run(
    config: StoreNodeConfig,
    direct_reads: DirectReads,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), ServiceError> {
    let state = StoreNodeState::open(config.clone(), direct_reads).await?;
    tracing::info!(
        address = ?listener.local_addr().ok(),
        data_dir = %config.data_dir.display(),
        "store node serving"
    );
    serve(listener, router(state), &config, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_needle_of_64_kib_of_data_is_read_inline() {
        let largest =
            crate::format::needle_size_bytes(crate::format::CONTENT_TYPE_LEN_MAX, 64 << 10);
        assert!(
            largest <= INLINE_NEEDLE_BYTES_MAX,
            "{largest} bytes on disk"
        );
    }

    #[test]
    fn config_fills_defaults_and_refuses_unknown_keys() {
        let config: StoreNodeConfig =
            serde_json::from_str(r#"{"data_dir":"d","max_needle_bytes":1024}"#).expect("parse");
        assert_eq!(config.max_needle_bytes, 1024);
        assert_eq!(config.io_concurrency, default_io_concurrency());
        assert_eq!(
            config,
            StoreNodeConfig {
                max_needle_bytes: 1024,
                ..StoreNodeConfig::new("d")
            }
        );
        config.validate().expect("valid");
        assert!(serde_json::from_str::<StoreNodeConfig>(r#"{"data_dir":"d","typo":1}"#).is_err());
    }

    #[test]
    fn config_validation_refuses_unusable_limits() {
        let ok = StoreNodeConfig::new("d");
        ok.validate().expect("defaults are valid");
        let bad = [
            StoreNodeConfig {
                io_concurrency: 0,
                ..ok.clone()
            },
            StoreNodeConfig {
                server: ServerLimits {
                    max_connections: 0,
                    ..ServerLimits::default()
                },
                ..ok.clone()
            },
            StoreNodeConfig {
                server: ServerLimits {
                    header_read_timeout_ms: 0,
                    ..ServerLimits::default()
                },
                ..ok.clone()
            },
            StoreNodeConfig {
                max_needle_bytes: 0,
                ..ok.clone()
            },
            StoreNodeConfig {
                max_needle_bytes: 1 << 33,
                ..ok.clone()
            },
            StoreNodeConfig {
                request_timeout_ms: 0,
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        let small_buffer = StoreNodeConfig {
            body_buffer_limit_bytes: 1,
            ..ok
        };
        small_buffer
            .validate()
            .expect("buffer limit is raised to one needle");
        assert_eq!(
            small_buffer.effective_body_buffer_limit_bytes(),
            small_buffer.max_needle_bytes
        );
    }
}
