//! Shared state of one router: its configuration, the directory client and
//! a small cache of directory entries (volumes and nodes, with a TTL), the
//! store node clients, the upload limits and the metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use f4::reader::WarmReader;
use haystack::client::{
    BatchOptions, ClientError, NeedleReader, StoreAddress, StoreClient, StoreClientOptions,
};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::config::RouterConfig;
use super::error::ApiError;
use super::metrics::Metrics;
use super::pool::VolumePool;
use super::reports::{Lately, RecentReports};
use crate::directory::{DirectoryClient, LogicalVolume, NodeRecord, VolumeState};

/// Connect timeout towards store nodes.
const STORE_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Everything a request handler needs.
pub(crate) struct AppState {
    pub(crate) config: RouterConfig,
    pub(crate) directory: DirectoryClient,
    pub(crate) cache: DirectoryCache,
    pub(crate) pool: VolumePool,
    pub(crate) metrics: Metrics,
    /// One permit per upload in flight.
    pub(crate) upload_slots: Arc<Semaphore>,
    /// One permit per KiB of upload body held in memory.
    pub(crate) upload_memory_kib: Arc<Semaphore>,
    http: reqwest::Client,
    /// Store clients for streamed appends: no read timeout (reqwest counts
    /// it until the answer's headers, so it would cut off a long body).
    stream_http: reqwest::Client,
    /// The hot read hop: `GET`/`HEAD` of needles on hyper's pooled client.
    pub(crate) reader: NeedleReader,
    /// Node addresses as parsed for [`AppState::reader`] and
    /// [`AppState::warm_reader`], by address.
    addresses: Mutex<HashMap<String, Result<StoreAddress, String>>>,
    read_rotation: AtomicUsize,
    /// How large the BLOBs read lately from each hot volume were.
    pub(crate) read_sizes: super::read::ReadSizes,
    /// Damaged needles reported lately (not reported again for a while).
    pub(crate) recent_reports: RecentReports,
    /// Primaries whose geo companion failed lately: the geo plan leaves
    /// them a lease, so that one that keeps failing does not take every
    /// pass's budget from the others.
    pub(crate) geo_failed: Lately<u32>,
    /// Warm-tier storage and backoff nodes (no overall timeout: each
    /// request sets its own).
    pub(crate) warm_http: reqwest::Client,
    /// The warm read hops (lookups, range reads, backoff decodes).
    pub(crate) warm_reader: WarmReader,
    /// This process among others of the same name (pid and start time),
    /// for the migration jobs it claims.
    pub(crate) instance: String,
    /// One migration pass at a time on `POST /admin/migrate` (each runs up
    /// to `max_migrations` jobs).
    pub(crate) migration_passes: Semaphore,
    /// Held by the acting repair pass (`coordinate::pass`): one at a time.
    pub(crate) repair_passes: Semaphore,
}

/// Most primaries whose geo companion failed lately remembered.
const GEO_FAILURES_REMEMBERED: usize = 65_536;

/// Most parsed store addresses kept; beyond it the map is cleared.
const MAX_CACHED_ADDRESSES: usize = 10_000;

/// Idle connections kept per store node by the router's clients.
const STORE_POOL_IDLE_PER_HOST: usize = 64;
/// Reads waiting for a batch, per store node; more wait (within the
/// replica timeout) to be queued.
const READ_BATCH_QUEUE: usize = 4096;

impl AppState {
    /// Builds the state; no network traffic happens here.
    pub(crate) fn new(config: RouterConfig) -> Result<AppState, ApiError> {
        config
            .server
            .validate()
            .map_err(|e| ApiError::Internal(format!("config: {e}")))?;
        let directory = DirectoryClient::new(&config.directory_url)?;
        // The store node's builder drops pooled connections before the node's
        // own idle close, so a write never lands on a socket the node is closing
        // (which would wrongly mark a healthy replica stale).
        let http = haystack::client::http_client_builder(&StoreClientOptions {
            connect_timeout_ms: STORE_CONNECT_TIMEOUT_MS,
            read_idle_timeout_ms: config.replica_timeout_ms,
            ..StoreClientOptions::default()
        })
        .pool_max_idle_per_host(STORE_POOL_IDLE_PER_HOST)
        .build()
        .map_err(|e| ApiError::Internal(format!("http client: {e}")))?;
        let stream_http = haystack::client::http_client_builder(&StoreClientOptions {
            connect_timeout_ms: STORE_CONNECT_TIMEOUT_MS,
            read_idle_timeout_ms: 0,
            ..StoreClientOptions::default()
        })
        .build()
        .map_err(|e| ApiError::Internal(format!("http client: {e}")))?;
        // Hot needle reads and warm lookups and ranges batch alike.
        let read_batching = BatchOptions {
            max_entries: config.read_batch_max_entries,
            max_in_flight: config.read_batch_in_flight,
            stall: Duration::from_millis(config.read_batch_stall_ms),
            queue_capacity: READ_BATCH_QUEUE,
            timeout: Duration::from_millis(config.replica_timeout_ms),
        };
        let memory_kib = usize::try_from(config.upload_buffer_bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Ok(AppState {
            cache: DirectoryCache::new(
                directory.clone(),
                Duration::from_millis(config.directory_cache_ttl_ms),
            ),
            pool: VolumePool::new(config.writable_volumes.max(1)),
            metrics: Metrics::new(),
            upload_slots: Arc::new(Semaphore::new(config.max_concurrent_uploads.max(1))),
            upload_memory_kib: Arc::new(Semaphore::new(memory_kib)),
            directory,
            http,
            stream_http,
            reader: NeedleReader::new(
                Duration::from_millis(STORE_CONNECT_TIMEOUT_MS),
                Duration::from_millis(config.replica_timeout_ms),
                STORE_POOL_IDLE_PER_HOST,
            )
            .with_batching(read_batching),
            addresses: Mutex::new(HashMap::new()),
            read_rotation: AtomicUsize::new(0),
            read_sizes: super::read::ReadSizes::default(),
            recent_reports: RecentReports::default(),
            geo_failed: Lately::new(
                Duration::from_millis(config.migration_lease_ms),
                GEO_FAILURES_REMEMBERED,
            ),
            warm_http: f4::client::http_client(config.replica_timeout_ms)
                .map_err(|e| ApiError::Internal(format!("http client: {e}")))?,
            instance: format!("{}-{:x}", std::process::id(), crate::directory::now_ms()),
            migration_passes: Semaphore::new(1),
            repair_passes: Semaphore::new(1),
            warm_reader: WarmReader::new(
                Duration::from_millis(STORE_CONNECT_TIMEOUT_MS),
                STORE_POOL_IDLE_PER_HOST,
                read_batching,
            ),
            config,
        })
    }

    /// A client of `node` for appends and deletes: every request (body
    /// included) must finish within the replica timeout.
    pub(crate) fn store_for_writes(&self, node: &NodeRecord) -> Result<StoreClient, ApiError> {
        self.store(node, self.config.replica_timeout_ms)
    }

    /// A client of `node` for operator work (a scrub), under the default
    /// request timeout.
    pub(crate) fn store_for_admin(&self, node: &NodeRecord) -> Result<StoreClient, ApiError> {
        self.store(node, haystack::http::DEFAULT_REQUEST_TIMEOUT_MS)
    }

    /// A client of `node` for [`StoreClient::append_needle_streamed`]: the
    /// caller bounds the body's pauses and the wait for the answer.
    pub(crate) fn store_for_streamed_writes(
        &self,
        node: &NodeRecord,
    ) -> Result<StoreClient, ApiError> {
        let options = StoreClientOptions {
            connect_timeout_ms: STORE_CONNECT_TIMEOUT_MS,
            request_timeout_ms: self.config.replica_timeout_ms,
            transfer_timeout_ms: self.config.replica_timeout_ms,
            read_idle_timeout_ms: 0,
        };
        StoreClient::from_http(self.stream_http.clone(), &node.base_url(), options).map_err(|e| {
            ApiError::Internal(format!(
                "store node {} address {:?}: {e}",
                node.id, node.address
            ))
        })
    }

    /// The address of `node` for [`AppState::reader`], parsed once per
    /// address. The caller awaits the answer's headers under the replica
    /// timeout; the body may take longer as long as it keeps flowing.
    pub(crate) fn read_address(&self, node: &NodeRecord) -> Result<StoreAddress, ClientError> {
        let mut addresses = self.addresses.lock();
        if let Some(parsed) = addresses.get(&node.address) {
            return parsed.clone().map_err(ClientError::InvalidArgument);
        }
        if addresses.len() >= MAX_CACHED_ADDRESSES {
            addresses.clear();
        }
        let parsed = StoreAddress::parse(&node.address).map_err(|e| e.to_string());
        addresses.insert(node.address.clone(), parsed.clone());
        parsed.map_err(ClientError::InvalidArgument)
    }

    fn store(&self, node: &NodeRecord, request_timeout_ms: u64) -> Result<StoreClient, ApiError> {
        let options = StoreClientOptions {
            connect_timeout_ms: STORE_CONNECT_TIMEOUT_MS,
            request_timeout_ms,
            transfer_timeout_ms: request_timeout_ms,
            read_idle_timeout_ms: self.config.replica_timeout_ms,
        };
        StoreClient::from_http(self.http.clone(), &node.base_url(), options).map_err(|e| {
            ApiError::Internal(format!(
                "store node {} address {:?}: {e}",
                node.id, node.address
            ))
        })
    }

    /// A rotating start index, so reads spread over a volume's replicas.
    pub(crate) fn next_read_rotation(&self) -> usize {
        self.read_rotation.fetch_add(1, Ordering::Relaxed)
    }
}

/// Every node by id, shared.
pub(crate) type NodeMap = Arc<HashMap<String, NodeRecord>>;

/// Directory entries cached for `ttl`: single volumes by id, and the whole
/// node list. Both are refreshed on a miss, on expiry, or on demand after a
/// failure.
pub(crate) struct DirectoryCache {
    directory: DirectoryClient,
    ttl: Duration,
    volumes: Mutex<HashMap<u32, (Arc<LogicalVolume>, Instant)>>,
    nodes: Mutex<Option<(NodeMap, Instant)>>,
}

/// Most volume entries kept; beyond it the cache is cleared (entries are
/// cheap to refetch, and this bounds memory against id scans).
const MAX_CACHED_VOLUMES: usize = 100_000;

impl DirectoryCache {
    fn new(directory: DirectoryClient, ttl: Duration) -> DirectoryCache {
        DirectoryCache {
            directory,
            ttl,
            volumes: Mutex::new(HashMap::new()),
            nodes: Mutex::new(None),
        }
    }

    /// The directory entry of volume `id`; [`ApiError::NotFound`] if the
    /// directory does not know it. `refresh` bypasses the cache.
    pub(crate) async fn volume(
        &self,
        id: u32,
        refresh: bool,
    ) -> Result<Arc<LogicalVolume>, ApiError> {
        if !refresh
            && let Some((volume, at)) = self.volumes.lock().get(&id)
            && at.elapsed() < self.ttl
        {
            return Ok(volume.clone());
        }
        match self.directory.volume(id).await {
            Ok(volume) => Ok(self.store_volume(volume)),
            Err(e) if e.is_not_found() => {
                self.volumes.lock().remove(&id);
                Err(ApiError::NotFound)
            }
            Err(e) => Err(ApiError::Directory(e)),
        }
    }

    /// Caches a volume entry just received from the directory, unless it
    /// is older than the cached one: the cache says the volume is warm and
    /// this entry does not (a flip is never undone, so such an entry was
    /// read before it, an answer still on its way when the migration had
    /// the cache refreshed, and would send reads to hot replicas about to
    /// be retired), or its repair epoch is lower (it was read before a
    /// replica or journal holder was marked stale, and would send reads to
    /// one that missed a delete).
    pub(crate) fn store_volume(&self, volume: LogicalVolume) -> Arc<LogicalVolume> {
        let volume = Arc::new(volume);
        let mut volumes = self.volumes.lock();
        if let Some((cached, _)) = volumes.get(&volume.id)
            && ((cached.state == VolumeState::Warm && volume.state != VolumeState::Warm)
                || volume.repair_epoch < cached.repair_epoch)
        {
            return cached.clone();
        }
        if volumes.len() >= MAX_CACHED_VOLUMES {
            // Warm entries stay while they can, for the rule above.
            volumes.retain(|_, (cached, _)| cached.state == VolumeState::Warm);
            if volumes.len() >= MAX_CACHED_VOLUMES / 2 {
                volumes.clear();
            }
        }
        volumes.insert(volume.id, (volume.clone(), Instant::now()));
        volume
    }

    /// Every node by id. `refresh` bypasses the cache.
    pub(crate) async fn nodes(
        &self,
        refresh: bool,
    ) -> Result<Arc<HashMap<String, NodeRecord>>, ApiError> {
        if !refresh
            && let Some((nodes, at)) = self.nodes.lock().as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(nodes.clone());
        }
        let list = self.directory.list_nodes().await?;
        let nodes: Arc<HashMap<String, NodeRecord>> =
            Arc::new(list.into_iter().map(|n| (n.id.clone(), n)).collect());
        *self.nodes.lock() = Some((nodes.clone(), Instant::now()));
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(state: VolumeState) -> LogicalVolume {
        let replicas = vec!["a".into(), "b".into(), "c".into()];
        LogicalVolume {
            state,
            ..LogicalVolume::writable(7, replicas, 0)
        }
    }

    #[test]
    fn a_warm_entry_is_never_replaced_by_an_older_hot_one() {
        let directory = DirectoryClient::new("http://127.0.0.1:9").expect("client");
        let cache = DirectoryCache::new(directory, Duration::from_secs(60));
        assert_eq!(
            cache.store_volume(volume(VolumeState::Locked)).state,
            VolumeState::Locked
        );
        assert_eq!(
            cache.store_volume(volume(VolumeState::Warm)).state,
            VolumeState::Warm
        );
        // An answer read before the flip, arriving after it.
        let kept = cache.store_volume(volume(VolumeState::Locked));
        assert_eq!(kept.state, VolumeState::Warm);
        let cached = cache.volumes.lock().get(&7).map(|(v, _)| v.state);
        assert_eq!(cached, Some(VolumeState::Warm));
    }

    #[test]
    fn an_entry_from_before_a_stale_mark_does_not_replace_the_marked_one() {
        let directory = DirectoryClient::new("http://127.0.0.1:9").expect("client");
        let cache = DirectoryCache::new(directory, Duration::from_secs(60));
        let before = volume(VolumeState::Locked);
        let marked = LogicalVolume {
            stale_replicas: vec!["b".into()],
            repair_epoch: before.repair_epoch + 1,
            ..before.clone()
        };
        cache.store_volume(marked.clone());
        // An answer read before the mark, arriving after it.
        assert_eq!(*cache.store_volume(before), marked);
        // One read after the mark, with the replica fresh again (marking
        // it fresh leaves the epoch where it is), is taken.
        let fresh = LogicalVolume {
            stale_replicas: Vec::new(),
            ..marked
        };
        assert_eq!(*cache.store_volume(fresh.clone()), fresh);
    }
}
