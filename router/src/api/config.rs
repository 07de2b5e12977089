//! [`RouterConfig`]: the options of the public API role. The binary loads it
//! from its TOML file (section of its own config) and passes it to
//! [`super::run`]; the router never reads files or the environment itself.

use haystack::client::BatchOptions;
use haystack::http::ServerLimits;
use serde::Deserialize;

/// Options of the router role. Every field but `directory_url` has a named
/// default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Base URL (or `host:port`) of the directory service.
    pub directory_url: String,
    /// Largest BLOB accepted by `POST /blobs`, in bytes (default 64 MiB).
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
    /// Timeout of one request to a store node (an append, a read's headers,
    /// a delete), in ms.
    #[serde(default = "default_replica_timeout_ms")]
    pub replica_timeout_ms: u64,
    /// Longest pause between two chunks of a request body, in ms.
    #[serde(default = "default_body_idle_timeout_ms")]
    pub body_idle_timeout_ms: u64,
    /// Uploads processed at once; more wait (up to the body-idle timeout)
    /// and then get `503 busy`.
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
    /// Memory all uploads in flight may hold for their bodies together, in
    /// bytes: whole bodies of the uploads received before they are stored
    /// (see `retry_buffer_bytes`), and the chunks in flight to the replicas
    /// of streamed ones.
    #[serde(default = "default_upload_buffer_bytes")]
    pub upload_buffer_bytes: u64,
    /// Largest declared `Content-Length` received whole before it is stored,
    /// in bytes (default 8 MiB). Such bodies, and bodies without a
    /// `Content-Length`, can be retried on another volume when a replica
    /// fails. A longer body is streamed to the three replicas as it arrives,
    /// with a few chunks in memory; if a replica fails mid-stream the upload
    /// fails with `503 replica_failed` and the client retries it.
    #[serde(default = "default_retry_buffer_bytes")]
    pub retry_buffer_bytes: u64,
    /// Most writable volumes this router writes to at once. Each volume
    /// takes one upload at a time (keys must reach every store in order), so
    /// this is the upload parallelism; volumes are allocated on demand.
    #[serde(default = "default_writable_volumes")]
    pub writable_volumes: usize,
    /// This router's id: the owner name of the writable volumes it claims
    /// in the directory (distinct per router of a cluster; a restarted
    /// router with the same id takes its volumes back).
    #[serde(default = "default_router_id")]
    pub id: String,
    /// A writable volume not written for this long is locked (by its
    /// router, or by a migrator if no router owns it), in ms.
    #[serde(default = "default_idle_lock_after_ms")]
    pub idle_lock_after_ms: u64,
    /// How long a cached directory entry (volume, node list) is trusted, in ms.
    #[serde(default = "default_directory_cache_ttl_ms")]
    pub directory_cache_ttl_ms: u64,
    /// Needle keys leased from the directory at a time, per volume.
    #[serde(default = "default_key_lease_size")]
    pub key_lease_size: u64,
    /// Volumes an upload is tried on before it fails.
    #[serde(default = "default_upload_attempts")]
    pub upload_attempts: u32,
    /// Header-read timeout, connection cap, and how long [`super::run`]
    /// waits once cancelled for in-flight requests (long downloads
    /// included) before dropping them.
    #[serde(default)]
    pub server: ServerLimits,
    /// Most reads sent to a store node or an f4 storage node in one batch
    /// (1 to 64). Concurrent small reads (needles; warm lookups and ranges)
    /// for the same node share one request.
    #[serde(default = "default_read_batch_max_entries")]
    pub read_batch_max_entries: usize,
    /// Read batches in flight to one node at once. Reads wait for
    /// the node's batch in flight and leave together in the next one; only
    /// when that takes longer than `read_batch_stall_ms` (a disk-bound node)
    /// does another batch leave beside it, up to this many.
    #[serde(default = "default_read_batch_in_flight")]
    pub read_batch_in_flight: usize,
    /// How long reads wait for a node's batch in flight before the
    /// next batch leaves beside it, in ms.
    #[serde(default = "default_read_batch_stall_ms")]
    pub read_batch_stall_ms: u64,
    /// Prefix of the `url` returned for an upload (e.g.
    /// `https://blobs.example.com`); empty gives a path (`/blobs/ID`).
    #[serde(default)]
    pub public_base_url: String,
    /// Deadline of a warm read's hop to the storage node holding the data;
    /// past it (or on an error) the range is decoded by a backoff node.
    #[serde(default = "default_warm_read_deadline_ms")]
    pub warm_read_deadline_ms: u64,
    /// The largest warm block; a sealed volume's own block size is chosen
    /// to fill its stripes.
    #[serde(default = "default_max_block_size_bytes")]
    pub max_block_size_bytes: u64,
    /// Whether the directory places warm volumes on fewer racks than
    /// blocks in a stripe (the migrator holds back otherwise).
    #[serde(default)]
    pub allow_fewer_racks: bool,
    /// Age after which a locked volume (its youngest BLOB) moves to the
    /// warm tier, in ms.
    #[serde(default = "default_warm_after_ms")]
    pub warm_after_ms: u64,
    /// Migrations one migration pass runs at once.
    #[serde(default = "default_max_migrations")]
    pub max_migrations: usize,
    /// Pause between two passes of a migrator, in ms.
    #[serde(default = "default_migrate_interval_ms")]
    pub migrate_interval_ms: u64,
    /// How long a claim holds without renewal, in ms: a migration job's, a
    /// rebuild job's, a router's on its writable volumes. A running job
    /// renews it every third of that, and one whose migrator (coordinator)
    /// died is left to the next one after it.
    #[serde(default = "default_migration_lease_ms")]
    pub migration_lease_ms: u64,
    /// Bytes a second each migration reads from its hot replica (0: no
    /// limit), so that foreground reads keep their disk.
    #[serde(default = "default_migration_rate_bytes")]
    pub migration_rate_bytes: u64,
    /// Silence after which a storage node is lost: its blocks are rebuilt
    /// elsewhere and its journal holds replaced, in ms. A node back sooner
    /// is caught up, not rebuilt.
    #[serde(default = "default_rebuild_after_ms")]
    pub rebuild_after_ms: u64,
    /// Stripes a coordinator rebuilds at once.
    #[serde(default = "default_max_rebuilds")]
    pub max_rebuilds: usize,
    /// Block bytes a second each rebuild writes (0: no limit), so that
    /// foreground reads keep their disks.
    #[serde(default = "default_rebuild_rate_bytes")]
    pub rebuild_rate_bytes: u64,
    /// Pause between two passes of a coordinator, in ms.
    #[serde(default = "default_coordinate_interval_ms")]
    pub coordinate_interval_ms: u64,
    /// Bytes a second a scrub reads (0: the coordinator does not scrub in
    /// the background, and `POST /admin/scrub` runs unpaced).
    #[serde(default = "default_scrub_rate_bytes")]
    pub scrub_rate_bytes: u64,
    /// How often the background scrub is a deep one (every warm stripe's
    /// parity recomputed and compared), in ms.
    #[serde(default = "default_deep_scrub_interval_ms")]
    pub deep_scrub_interval_ms: u64,
}

impl RouterConfig {
    /// A configuration with every default and the given directory.
    pub fn new(directory_url: impl Into<String>) -> RouterConfig {
        RouterConfig {
            directory_url: directory_url.into(),
            max_blob_bytes: default_max_blob_bytes(),
            replica_timeout_ms: default_replica_timeout_ms(),
            body_idle_timeout_ms: default_body_idle_timeout_ms(),
            max_concurrent_uploads: default_max_concurrent_uploads(),
            upload_buffer_bytes: default_upload_buffer_bytes(),
            retry_buffer_bytes: default_retry_buffer_bytes(),
            writable_volumes: default_writable_volumes(),
            id: default_router_id(),
            idle_lock_after_ms: default_idle_lock_after_ms(),
            directory_cache_ttl_ms: default_directory_cache_ttl_ms(),
            key_lease_size: default_key_lease_size(),
            upload_attempts: default_upload_attempts(),
            server: ServerLimits::default(),
            read_batch_max_entries: default_read_batch_max_entries(),
            read_batch_in_flight: default_read_batch_in_flight(),
            read_batch_stall_ms: default_read_batch_stall_ms(),
            public_base_url: String::new(),
            warm_read_deadline_ms: default_warm_read_deadline_ms(),
            max_block_size_bytes: default_max_block_size_bytes(),
            allow_fewer_racks: false,
            warm_after_ms: default_warm_after_ms(),
            max_migrations: default_max_migrations(),
            migrate_interval_ms: default_migrate_interval_ms(),
            migration_lease_ms: default_migration_lease_ms(),
            migration_rate_bytes: default_migration_rate_bytes(),
            rebuild_after_ms: default_rebuild_after_ms(),
            max_rebuilds: default_max_rebuilds(),
            rebuild_rate_bytes: default_rebuild_rate_bytes(),
            coordinate_interval_ms: default_coordinate_interval_ms(),
            scrub_rate_bytes: default_scrub_rate_bytes(),
            deep_scrub_interval_ms: default_deep_scrub_interval_ms(),
        }
    }
}

/// Default of [`RouterConfig::max_blob_bytes`]: 64 MiB.
pub fn default_max_blob_bytes() -> u64 {
    64 * 1024 * 1024
}

/// Default of [`RouterConfig::replica_timeout_ms`]: 10 s.
pub fn default_replica_timeout_ms() -> u64 {
    10_000
}

/// Default of [`RouterConfig::body_idle_timeout_ms`]: 30 s.
pub fn default_body_idle_timeout_ms() -> u64 {
    30_000
}

/// Default of [`RouterConfig::max_concurrent_uploads`]: 64.
pub fn default_max_concurrent_uploads() -> usize {
    64
}

/// Default of [`RouterConfig::upload_buffer_bytes`]: 1 GiB.
pub fn default_upload_buffer_bytes() -> u64 {
    1024 * 1024 * 1024
}

/// Default of [`RouterConfig::retry_buffer_bytes`]: 8 MiB.
pub fn default_retry_buffer_bytes() -> u64 {
    8 * 1024 * 1024
}

/// Default of [`RouterConfig::id`]: `router`.
pub fn default_router_id() -> String {
    "router".to_owned()
}

/// Default of [`RouterConfig::idle_lock_after_ms`]: 1 day.
pub fn default_idle_lock_after_ms() -> u64 {
    86_400_000
}

/// Default of [`RouterConfig::writable_volumes`]: 16.
pub fn default_writable_volumes() -> usize {
    16
}

/// Default of [`RouterConfig::warm_read_deadline_ms`]: 1 s.
pub fn default_warm_read_deadline_ms() -> u64 {
    1_000
}

/// Default of [`RouterConfig::warm_after_ms`]: 30 days.
pub fn default_warm_after_ms() -> u64 {
    30 * 24 * 3600 * 1000
}

/// Default of [`RouterConfig::max_migrations`]: 1.
pub fn default_max_migrations() -> usize {
    1
}

/// Default of [`RouterConfig::migrate_interval_ms`]: 10 s.
pub fn default_migrate_interval_ms() -> u64 {
    10_000
}

/// Default of [`RouterConfig::migration_lease_ms`]: 60 s.
pub fn default_migration_lease_ms() -> u64 {
    60_000
}

/// Default of [`RouterConfig::migration_rate_bytes`]: 256 MiB a second.
pub fn default_migration_rate_bytes() -> u64 {
    256 << 20
}

/// Default of [`RouterConfig::rebuild_after_ms`]: 15 minutes.
pub fn default_rebuild_after_ms() -> u64 {
    15 * 60 * 1000
}

/// Default of [`RouterConfig::max_rebuilds`]: 2.
pub fn default_max_rebuilds() -> usize {
    2
}

/// Default of [`RouterConfig::rebuild_rate_bytes`]: 64 MiB a second.
pub fn default_rebuild_rate_bytes() -> u64 {
    64 << 20
}

/// Default of [`RouterConfig::coordinate_interval_ms`]: 10 s.
pub fn default_coordinate_interval_ms() -> u64 {
    10_000
}

/// Default of [`RouterConfig::scrub_rate_bytes`]: 16 MiB a second.
pub fn default_scrub_rate_bytes() -> u64 {
    16 << 20
}

/// Default of [`RouterConfig::deep_scrub_interval_ms`]: 7 days.
pub fn default_deep_scrub_interval_ms() -> u64 {
    7 * 24 * 3600 * 1000
}

/// Default of [`RouterConfig::max_block_size_bytes`]: the storage node's.
pub fn default_max_block_size_bytes() -> u64 {
    f4::node::default_max_block_size_bytes()
}

/// Default of [`RouterConfig::directory_cache_ttl_ms`]: 5 s.
pub fn default_directory_cache_ttl_ms() -> u64 {
    5_000
}

/// Default of [`RouterConfig::key_lease_size`]: 4096 keys.
pub fn default_key_lease_size() -> u64 {
    4096
}

/// Default of [`RouterConfig::upload_attempts`]: 3.
pub fn default_upload_attempts() -> u32 {
    3
}

/// Default of [`RouterConfig::read_batch_max_entries`]: 64.
pub fn default_read_batch_max_entries() -> usize {
    haystack::batch::MAX_BATCH_ENTRIES
}

/// Default of [`RouterConfig::read_batch_in_flight`]: 4.
pub fn default_read_batch_in_flight() -> usize {
    BatchOptions::default().max_in_flight
}

/// Default of [`RouterConfig::read_batch_stall_ms`]: 1 ms.
pub fn default_read_batch_stall_ms() -> u64 {
    u64::try_from(BatchOptions::default().stall.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let config: RouterConfig =
            serde_json::from_str(r#"{"directory_url":"127.0.0.1:1"}"#).expect("parse");
        assert_eq!(config, RouterConfig::new("127.0.0.1:1"));
        assert_eq!(config.max_blob_bytes, 64 << 20);
        assert_eq!(config.retry_buffer_bytes, 8 << 20);
        assert_eq!(config.read_batch_max_entries, 64);
        assert_eq!(config.read_batch_in_flight, 4);
        assert_eq!(config.read_batch_stall_ms, 1);
        assert!(serde_json::from_str::<RouterConfig>(r#"{"directory_url":"x","nope":1}"#).is_err());
    }
}
