//! The binary's one config: a TOML file, loaded once, with command-line flags
//! layered on top.
//!
//! Sizes and ages shared by every role sit at the top level; each role has a
//! section for where it listens, where it keeps data and how it finds the
//! directory. `hayloft up` fills the sections itself (loopback addresses,
//! `DIR/store-N`, ...); `hayloft serve` takes them from the file.
//! Unknown keys are refused (`deny_unknown_fields`) so a typo never silently
//! falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Everything the binary can be told, for every role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A hot volume is locked when it reaches this size.
    #[serde(default = "default_volume_size_bytes")]
    pub volume_size_bytes: u64,
    /// Largest BLOB an upload may carry.
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
    /// Largest declared upload the router receives whole before storing it
    /// (so it can retry on another volume); longer ones stream to the
    /// replicas as they arrive.
    #[serde(default = "default_retry_buffer_bytes")]
    pub retry_buffer_bytes: u64,
    /// The largest warm-tier block (a sealed volume's own block size is
    /// chosen to fill its stripes).
    #[serde(default = "default_block_size_bytes")]
    pub block_size_bytes: u64,
    /// Space each f4 storage node keeps free on its disk: a block that
    /// would leave less is refused, and migrations hold back while too few
    /// racks have room for a volume's blocks.
    #[serde(default)]
    pub storage_reserve_bytes: u64,
    /// Tombstones a warm volume's journal holds before it is folded into
    /// the index.
    #[serde(default = "default_fold_tombstones")]
    pub fold_tombstones: usize,
    /// Place warm volumes on a cell with fewer racks than blocks in a
    /// stripe (each volume then records how many lost racks it tolerates).
    #[serde(default)]
    pub allow_fewer_racks: bool,
    /// Age after which a locked volume moves to the warm tier.
    #[serde(default = "default_warm_after_ms")]
    pub warm_after_ms: u64,
    /// Writable volumes a router uploads to at once (the upload
    /// parallelism; fewer fill, lock and age sooner).
    #[serde(default = "default_writable_volumes")]
    pub writable_volumes: usize,
    /// Migrations a migrator (or a router's `POST /admin/migrate`) runs at
    /// once.
    #[serde(default = "default_max_migrations")]
    pub max_migrations: usize,
    /// Pause between two passes of the migrator.
    #[serde(default = "default_migrate_interval_ms")]
    pub migrate_interval_ms: u64,
    /// How long a job's claim (a migration's, a stripe rebuild's) holds
    /// without renewal: how long the job of a migrator or coordinator that
    /// died waits for the next one.
    #[serde(default = "default_migration_lease_ms")]
    pub migration_lease_ms: u64,
    /// Bytes a second each migration reads from its hot replica (0: no
    /// limit).
    #[serde(default = "default_migration_rate_bytes")]
    pub migration_rate_bytes: u64,
    /// A writable volume not written for this long is locked, so that it
    /// ages and migrates like a full one.
    #[serde(default = "default_idle_lock_after_ms")]
    pub idle_lock_after_ms: u64,
    /// How long a router trusts a cached directory entry (a volume, the
    /// node list); a migration waits this long before it retires a warm
    /// volume's hot replicas only if some router could not be asked to
    /// read the entry afresh.
    #[serde(default = "default_directory_cache_ttl_ms")]
    pub directory_cache_ttl_ms: u64,
    /// Silence after which a storage node is lost: the coordinator has its
    /// blocks rebuilt elsewhere and its journal holds replaced.
    #[serde(default = "default_rebuild_after_ms")]
    pub rebuild_after_ms: u64,
    /// Stripes a coordinator rebuilds at once (and a rebuilder runs at once).
    #[serde(default = "default_max_rebuilds")]
    pub max_rebuilds: usize,
    /// Block bytes a second each rebuild writes (0: no limit).
    #[serde(default = "default_rebuild_rate_bytes")]
    pub rebuild_rate_bytes: u64,
    /// Pause between two coordinator passes.
    #[serde(default = "default_coordinate_interval_ms")]
    pub coordinate_interval_ms: u64,
    /// Bytes a second a scrub reads back and checks (0: no background
    /// scrub, and `hayloft scrub` runs unpaced).
    #[serde(default = "default_scrub_rate_bytes")]
    pub scrub_rate_bytes: u64,
    /// How often the background scrub is a deep one (every warm stripe's
    /// parity recomputed and compared).
    #[serde(default = "default_deep_scrub_interval_ms")]
    pub deep_scrub_interval_ms: u64,
    /// How often a store node tells the directory it is alive.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Silence after which the directory marks a node `down`.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    /// How long a store node's read lease (direct reads) holds after the
    /// heartbeat that renewed it; above `heartbeat_interval_ms`.
    #[serde(default = "default_read_lease_ms")]
    pub read_lease_ms: u64,
    /// How often the directory looks for stale replicas to resync.
    #[serde(default = "default_repair_interval_ms")]
    pub repair_interval_ms: u64,
    /// Timeout of every request one role makes to another.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// f4 storage nodes `hayloft up` starts in each of the cell's 14 racks.
    #[serde(default = "default_nodes_per_rack")]
    pub nodes_per_rack: usize,
    /// Datacenters `hayloft up` builds on this machine, each with a cell of
    /// its own, a backoff node and a rebuilder (the directory, stores,
    /// router, migrator and coordinator sit in the first).
    #[serde(default = "default_datacenters")]
    pub datacenters: usize,
    /// Concurrent blocking IO operations per store node.
    #[serde(default = "default_io_concurrency")]
    pub io_concurrency: usize,
    /// The public API.
    #[serde(default)]
    pub router: RouterSection,
    /// The directory.
    #[serde(default)]
    pub directory: DirectorySection,
    /// One store node (for `hayloft serve --role store`).
    #[serde(default)]
    pub store: StoreSection,
    /// One f4 storage node (for `hayloft serve --role f4-storage`).
    #[serde(default = "default_f4_section")]
    pub f4: StoreSection,
    /// The backoff node (for `hayloft serve --role backoff`; its rack and
    /// data directory are not used).
    #[serde(default = "default_backoff_section")]
    pub backoff: StoreSection,
    /// The migrator (for `hayloft serve --role migrator`).
    #[serde(default)]
    pub migrator: MigratorSection,
    /// The rebuilder (for `hayloft serve --role rebuilder`; registers with
    /// the directory; its rack and data directory are not used).
    #[serde(default = "default_rebuilder_section")]
    pub rebuilder: StoreSection,
    /// The coordinator (for `hayloft serve --role coordinator`).
    #[serde(default)]
    pub coordinator: CoordinatorSection,
}

/// Address of a coordinator (its `/health`, `/metrics` and `/repair`), and
/// how it finds the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// Socket address it serves on.
    #[serde(default = "default_coordinator_listen")]
    pub listen: String,
    /// Base URL of the directory, e.g. `http://10.0.0.1:9300`.
    #[serde(default)]
    pub directory_url: Option<String>,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        CoordinatorSection {
            listen: default_coordinator_listen(),
            directory_url: None,
        }
    }
}

/// Identity and address of a migrator, and how it finds the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigratorSection {
    /// The name it claims migration jobs under (two migrators need two).
    #[serde(default = "default_migrator_id")]
    pub id: String,
    /// Socket address of its `/health`.
    #[serde(default = "default_migrator_listen")]
    pub listen: String,
    /// Base URL of the directory, e.g. `http://10.0.0.1:9300`.
    #[serde(default)]
    pub directory_url: Option<String>,
}

impl Default for MigratorSection {
    fn default() -> Self {
        MigratorSection {
            id: default_migrator_id(),
            listen: default_migrator_listen(),
            directory_url: None,
        }
    }
}

/// Where the router listens and how it finds the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// The router's id: the owner of the writable volumes it claims
    /// (distinct per router; a restarted router takes its volumes back).
    #[serde(default = "default_router_id")]
    pub id: String,
    /// Socket address of the public API.
    #[serde(default = "default_router_listen")]
    pub listen: String,
    /// Address the migrator uses to reach this router when a volume turns
    /// warm (default: the bound address; loopback for an unspecified one).
    #[serde(default)]
    pub advertise_address: Option<String>,
    /// Base URL of the directory, e.g. `http://10.0.0.1:9300`.
    #[serde(default)]
    pub directory_url: Option<String>,
}

/// Where the directory listens and keeps its database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySection {
    /// Socket address of the directory's HTTP API.
    #[serde(default = "default_directory_listen")]
    pub listen: String,
    /// Directory holding `directory.redb`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// Identity, address and data of one node that registers with the
/// directory (a store node, an f4 storage node, the backoff node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Stable node id, registered with the directory (empty: the role's
    /// default, `store-1`, `f4-1` or `backoff`).
    #[serde(default)]
    pub id: String,
    /// Rack label (three replicas sit in three racks).
    #[serde(default = "default_rack")]
    pub rack: String,
    /// Datacenter label.
    #[serde(default = "default_datacenter")]
    pub datacenter: String,
    /// Socket address of the node's HTTP API (port 0: any free port, below
    /// the ephemeral range where there is room, `up::bind`;
    /// empty: the role's default, port 9400, 9500 or 9600 on loopback).
    #[serde(default)]
    pub listen: String,
    /// Address other nodes use to reach this one (default: the bound address).
    #[serde(default)]
    pub advertise_address: Option<String>,
    /// Directory holding the node's volumes.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Base URL of the directory, e.g. `http://10.0.0.1:9300`.
    #[serde(default)]
    pub directory_url: Option<String>,
}

// The shared knobs take the defaults of the libraries that use them: one
// default each, whichever way a role is started.
fn default_volume_size_bytes() -> u64 {
    haystack::service::default_volume_size_limit_bytes()
}
fn default_max_blob_bytes() -> u64 {
    router::api::config::default_max_blob_bytes()
}
fn default_retry_buffer_bytes() -> u64 {
    router::api::config::default_retry_buffer_bytes()
}
fn default_block_size_bytes() -> u64 {
    f4::node::default_max_block_size_bytes()
}
fn default_fold_tombstones() -> usize {
    f4::node::default_fold_tombstones()
}
fn section_for(role: crate::roles::Role) -> StoreSection {
    let (id, listen) = node_defaults(role);
    StoreSection {
        id: id.to_owned(),
        rack: default_rack(),
        datacenter: default_datacenter(),
        listen: listen.to_owned(),
        advertise_address: None,
        data_dir: None,
        directory_url: None,
    }
}
fn default_f4_section() -> StoreSection {
    section_for(crate::roles::Role::F4Storage)
}
fn default_backoff_section() -> StoreSection {
    section_for(crate::roles::Role::Backoff)
}
fn default_warm_after_ms() -> u64 {
    router::api::config::default_warm_after_ms()
}
fn default_writable_volumes() -> usize {
    router::api::config::default_writable_volumes()
}
fn default_max_migrations() -> usize {
    router::api::config::default_max_migrations()
}
fn default_migrate_interval_ms() -> u64 {
    router::api::config::default_migrate_interval_ms()
}
fn default_migration_lease_ms() -> u64 {
    router::api::config::default_migration_lease_ms()
}
fn default_migration_rate_bytes() -> u64 {
    router::api::config::default_migration_rate_bytes()
}
fn default_directory_cache_ttl_ms() -> u64 {
    router::api::config::default_directory_cache_ttl_ms()
}
fn default_idle_lock_after_ms() -> u64 {
    router::api::config::default_idle_lock_after_ms()
}
fn default_rebuild_after_ms() -> u64 {
    router::api::config::default_rebuild_after_ms()
}
fn default_max_rebuilds() -> usize {
    router::api::config::default_max_rebuilds()
}
fn default_rebuild_rate_bytes() -> u64 {
    router::api::config::default_rebuild_rate_bytes()
}
fn default_coordinate_interval_ms() -> u64 {
    router::api::config::default_coordinate_interval_ms()
}
fn default_scrub_rate_bytes() -> u64 {
    router::api::config::default_scrub_rate_bytes()
}
fn default_deep_scrub_interval_ms() -> u64 {
    router::api::config::default_deep_scrub_interval_ms()
}
fn default_rebuilder_section() -> StoreSection {
    section_for(crate::roles::Role::Rebuilder)
}
fn default_coordinator_listen() -> String {
    "127.0.0.1:9800".to_owned()
}
fn default_migrator_id() -> String {
    "migrator".to_owned()
}
fn default_migrator_listen() -> String {
    "127.0.0.1:9700".to_owned()
}
fn default_heartbeat_interval_ms() -> u64 {
    1000
}
fn default_heartbeat_timeout_ms() -> u64 {
    router::directory::service::default_heartbeat_timeout_ms()
}
fn default_read_lease_ms() -> u64 {
    router::directory::service::default_read_lease_ms()
}
fn default_repair_interval_ms() -> u64 {
    router::directory::service::default_repair_interval_ms()
}
fn default_request_timeout_ms() -> u64 {
    haystack::http::DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_nodes_per_rack() -> usize {
    1
}
fn default_datacenters() -> usize {
    1
}
fn default_io_concurrency() -> usize {
    haystack::service::default_io_concurrency()
}
fn default_router_id() -> String {
    router::api::config::default_router_id()
}
fn default_router_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_directory_listen() -> String {
    "127.0.0.1:9300".to_owned()
}
/// The id and listen address of a registering role's node when its
/// section leaves them empty.
pub fn node_defaults(role: crate::roles::Role) -> (&'static str, &'static str) {
    use crate::roles::Role;
    match role {
        Role::F4Storage => ("f4-1", "127.0.0.1:9500"),
        Role::Backoff => ("backoff", "127.0.0.1:9600"),
        Role::Rebuilder => ("rebuilder", "127.0.0.1:9650"),
        _ => ("store-1", "127.0.0.1:9400"),
    }
}
fn default_rack() -> String {
    "rack-1".to_owned()
}
fn default_datacenter() -> String {
    "dc-1".to_owned()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            volume_size_bytes: default_volume_size_bytes(),
            max_blob_bytes: default_max_blob_bytes(),
            retry_buffer_bytes: default_retry_buffer_bytes(),
            block_size_bytes: default_block_size_bytes(),
            storage_reserve_bytes: 0,
            fold_tombstones: default_fold_tombstones(),
            allow_fewer_racks: false,
            warm_after_ms: default_warm_after_ms(),
            writable_volumes: default_writable_volumes(),
            max_migrations: default_max_migrations(),
            migrate_interval_ms: default_migrate_interval_ms(),
            migration_lease_ms: default_migration_lease_ms(),
            directory_cache_ttl_ms: default_directory_cache_ttl_ms(),
            migration_rate_bytes: default_migration_rate_bytes(),
            idle_lock_after_ms: default_idle_lock_after_ms(),
            rebuild_after_ms: default_rebuild_after_ms(),
            max_rebuilds: default_max_rebuilds(),
            rebuild_rate_bytes: default_rebuild_rate_bytes(),
            coordinate_interval_ms: default_coordinate_interval_ms(),
            scrub_rate_bytes: default_scrub_rate_bytes(),
            deep_scrub_interval_ms: default_deep_scrub_interval_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
            read_lease_ms: default_read_lease_ms(),
            repair_interval_ms: default_repair_interval_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            nodes_per_rack: default_nodes_per_rack(),
            datacenters: default_datacenters(),
            io_concurrency: default_io_concurrency(),
            router: RouterSection::default(),
            directory: DirectorySection::default(),
            store: StoreSection::default(),
            f4: default_f4_section(),
            backoff: default_backoff_section(),
            migrator: MigratorSection::default(),
            rebuilder: default_rebuilder_section(),
            coordinator: CoordinatorSection::default(),
        }
    }
}

impl Default for RouterSection {
    fn default() -> Self {
        RouterSection {
            id: default_router_id(),
            listen: default_router_listen(),
            advertise_address: None,
            directory_url: None,
        }
    }
}

impl Default for DirectorySection {
    fn default() -> Self {
        DirectorySection {
            listen: default_directory_listen(),
            data_dir: None,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        section_for(crate::roles::Role::Store)
    }
}

/// Values given on the command line; each one, when present, wins over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Size at which a hot volume is locked (e.g. `64MiB`, `1GiB`, `1048576`).
    #[arg(long, value_parser = parse_size)]
    pub volume_size: Option<u64>,
    /// Largest BLOB an upload may carry (e.g. `64MiB`).
    #[arg(long, value_parser = parse_size)]
    pub max_blob_size: Option<u64>,
    /// Largest upload the router receives whole so it can retry it on
    /// another volume; longer ones stream to the replicas (e.g. `8MiB`).
    #[arg(long, value_parser = parse_size)]
    pub retry_buffer_size: Option<u64>,
    /// The largest warm-tier block (e.g. `1GiB`, `64KiB` in tests).
    #[arg(long, value_parser = parse_size)]
    pub block_size: Option<u64>,
    /// Space each f4 storage node keeps free on its disk (e.g. `10GiB`).
    #[arg(long, value_parser = parse_size)]
    pub storage_reserve: Option<u64>,
    /// Age after which a locked volume moves to the warm tier (e.g. `30d`, `2s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub warm_after: Option<u64>,
    /// Pause between two migrator passes (e.g. `10s`, `500ms`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub migrate_interval: Option<u64>,
    /// Writable volumes a router uploads to at once.
    #[arg(long)]
    pub writable_volumes: Option<usize>,
    /// Migrations run at once.
    #[arg(long)]
    pub max_migrations: Option<usize>,
    /// How long a migration or rebuild job's claim holds without renewal
    /// (e.g. `60s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub migration_lease: Option<u64>,
    /// Bytes a second each migration reads from its hot replica (e.g.
    /// `256MiB`; `0`: no limit).
    #[arg(long, value_parser = parse_size)]
    pub migration_rate: Option<u64>,
    /// Lock a writable volume not written for this long (e.g. `1d`, `3s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub idle_lock_after: Option<u64>,
    /// How long a router trusts a cached directory entry (e.g. `5s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub directory_cache_ttl: Option<u64>,
    /// Silence after which a storage node's blocks are rebuilt elsewhere
    /// (e.g. `15m`, `3s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub rebuild_after: Option<u64>,
    /// Block bytes a second each rebuild writes (e.g. `64MiB`; `0`: no limit).
    #[arg(long, value_parser = parse_size)]
    pub rebuild_rate: Option<u64>,
    /// Stripes rebuilt at once.
    #[arg(long)]
    pub max_rebuilds: Option<usize>,
    /// f4 storage nodes `hayloft up` starts in each of the cell's 14 racks.
    #[arg(long)]
    pub nodes_per_rack: Option<usize>,
    /// Datacenters `hayloft up` builds, each with its own cell, backoff
    /// node and rebuilder (1 to 9); with 2 or more the geo layer keeps
    /// every warm volume in two of them (a copy, or with 3 an XOR buddy).
    #[arg(long)]
    pub datacenters: Option<usize>,
    /// Pause between two coordinator passes (e.g. `10s`, `500ms`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub coordinate_interval: Option<u64>,
    /// Bytes a second a scrub reads back and checks (e.g. `16MiB`; `0`: no
    /// background scrub).
    #[arg(long, value_parser = parse_size)]
    pub scrub_rate: Option<u64>,
    /// How often the background scrub is a deep one, recomputing every warm
    /// stripe's parity (e.g. `7d`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub deep_scrub_interval: Option<u64>,
    /// Store node heartbeat period (e.g. `1s`, `500ms`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub heartbeat_interval: Option<u64>,
    /// Silence after which the directory marks a node down (e.g. `10s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub heartbeat_timeout: Option<u64>,
    /// How long a store node's read lease for direct reads holds after its
    /// heartbeat (e.g. `3s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub read_lease: Option<u64>,
    /// Period of the directory's replica repair loop (e.g. `2s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub repair_interval: Option<u64>,
    /// Timeout of every request between roles (e.g. `30s`).
    #[arg(long, value_parser = parse_duration_ms)]
    pub request_timeout: Option<u64>,
    /// Tombstones a warm volume's journal holds before it is folded into
    /// its index.
    #[arg(long)]
    pub fold_tombstones: Option<usize>,
    /// Place warm volumes on a cell with fewer racks than blocks in a
    /// stripe; each volume then reports how many lost racks it tolerates.
    #[arg(long)]
    pub allow_fewer_racks: bool,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        Ok(config)
    }

    /// Loads `path` if given, else the defaults, then applies `overrides` and checks.
    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as TOML (used for the children of `up --spawn`).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self).context("encoding config")?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// Layers command-line values over the file's.
    pub fn apply(&mut self, overrides: &Overrides) {
        let Overrides {
            volume_size,
            max_blob_size,
            retry_buffer_size,
            block_size,
            storage_reserve,
            warm_after,
            migrate_interval,
            writable_volumes,
            max_migrations,
            migration_lease,
            migration_rate,
            idle_lock_after,
            directory_cache_ttl,
            rebuild_after,
            rebuild_rate,
            max_rebuilds,
            nodes_per_rack,
            datacenters,
            coordinate_interval,
            scrub_rate,
            deep_scrub_interval,
            heartbeat_interval,
            heartbeat_timeout,
            read_lease,
            repair_interval,
            request_timeout,
            fold_tombstones,
            allow_fewer_racks,
        } = overrides;
        if let Some(fold_tombstones) = fold_tombstones {
            self.fold_tombstones = *fold_tombstones;
        }
        if let Some(writable_volumes) = writable_volumes {
            self.writable_volumes = *writable_volumes;
        }
        if let Some(max_migrations) = max_migrations {
            self.max_migrations = *max_migrations;
        }
        if let Some(max_rebuilds) = max_rebuilds {
            self.max_rebuilds = *max_rebuilds;
        }
        if let Some(nodes_per_rack) = nodes_per_rack {
            self.nodes_per_rack = *nodes_per_rack;
        }
        if let Some(datacenters) = datacenters {
            self.datacenters = *datacenters;
        }
        self.allow_fewer_racks |= allow_fewer_racks;
        let pairs: [(&Option<u64>, &mut u64); 21] = [
            (volume_size, &mut self.volume_size_bytes),
            (max_blob_size, &mut self.max_blob_bytes),
            (retry_buffer_size, &mut self.retry_buffer_bytes),
            (block_size, &mut self.block_size_bytes),
            (storage_reserve, &mut self.storage_reserve_bytes),
            (warm_after, &mut self.warm_after_ms),
            (migrate_interval, &mut self.migrate_interval_ms),
            (migration_lease, &mut self.migration_lease_ms),
            (migration_rate, &mut self.migration_rate_bytes),
            (idle_lock_after, &mut self.idle_lock_after_ms),
            (directory_cache_ttl, &mut self.directory_cache_ttl_ms),
            (rebuild_after, &mut self.rebuild_after_ms),
            (rebuild_rate, &mut self.rebuild_rate_bytes),
            (coordinate_interval, &mut self.coordinate_interval_ms),
            (scrub_rate, &mut self.scrub_rate_bytes),
            (deep_scrub_interval, &mut self.deep_scrub_interval_ms),
            (heartbeat_interval, &mut self.heartbeat_interval_ms),
            (heartbeat_timeout, &mut self.heartbeat_timeout_ms),
            (read_lease, &mut self.read_lease_ms),
            (repair_interval, &mut self.repair_interval_ms),
            (request_timeout, &mut self.request_timeout_ms),
        ];
        for (value, field) in pairs {
            if let Some(value) = value {
                *field = *value;
            }
        }
    }

    /// Refuses values no role could work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_blob_bytes == 0 {
            bail!("max_blob_bytes must be positive");
        }
        if self.volume_size_bytes < MIB {
            bail!("volume_size_bytes must be at least 1 MiB");
        }
        // The largest BLOB, framed as a needle with the longest content
        // type, fits an empty volume: an upload that meets full volumes
        // always lands on a fresh one.
        let largest = haystack::format::SUPERBLOCK_SIZE
            + haystack::format::needle_size_bytes(
                haystack::format::CONTENT_TYPE_LEN_MAX,
                self.max_blob_bytes,
            );
        if largest > self.volume_size_bytes {
            bail!(
                "max_blob_bytes ({}) with its needle framing ({largest} bytes) does not fit an \
                 empty volume of volume_size_bytes ({}): such a BLOB fits no volume",
                self.max_blob_bytes,
                self.volume_size_bytes
            );
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_timeout_ms <= self.heartbeat_interval_ms
        {
            bail!("heartbeat_timeout_ms must exceed heartbeat_interval_ms, both positive");
        }
        if self.read_lease_ms <= self.heartbeat_interval_ms
            || self.read_lease_ms > router::directory::READ_LEASE_MS_MAX
        {
            bail!(
                "read_lease_ms ({}) must exceed heartbeat_interval_ms ({}), as a store node \
                 renews its read lease with every heartbeat, and be at most {}",
                self.read_lease_ms,
                self.heartbeat_interval_ms,
                router::directory::READ_LEASE_MS_MAX
            );
        }
        if self.request_timeout_ms == 0 || self.repair_interval_ms == 0 {
            bail!("request_timeout_ms and repair_interval_ms must be positive");
        }
        if self.io_concurrency == 0 {
            bail!("io_concurrency must be positive");
        }
        if self.fold_tombstones == 0 || self.block_size_bytes == 0 {
            bail!("fold_tombstones and block_size_bytes must be positive");
        }
        if self.writable_volumes == 0 {
            bail!("writable_volumes must be positive");
        }
        if self.max_migrations == 0 || self.migrate_interval_ms == 0 || self.migration_lease_ms < 3
        {
            bail!(
                "max_migrations and migrate_interval_ms must be positive, migration_lease_ms at                  least 3"
            );
        }
        if self.max_rebuilds == 0 || self.coordinate_interval_ms == 0 {
            bail!("max_rebuilds and coordinate_interval_ms must be positive");
        }
        if !(1..=16).contains(&self.nodes_per_rack) {
            bail!("nodes_per_rack must be 1 to 16");
        }
        if !(1..=crate::roles::MAX_DATACENTERS).contains(&self.datacenters) {
            bail!("datacenters must be 1 to {}", crate::roles::MAX_DATACENTERS);
        }
        Ok(())
    }

    /// `heartbeat_interval_ms` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Parses `4096`, `64KiB`, `64MiB`, `1GiB`, `1TiB` (also `KB`/`MB`/`GB` as powers of
/// 1000, and `K`/`M`/`G` as powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("size {text:?} must start with a number"));
    }
    let number: u64 = digits.parse().map_err(|e| format!("size {text:?}: {e}"))?;
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KiB" => KIB,
        "M" | "MiB" => MIB,
        "G" | "GiB" => GIB,
        "T" | "TiB" => TIB,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        other => return Err(format!("size {text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} overflows 64 bits"))
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `7d` into milliseconds (a bare number is ms).
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("duration {text:?} must start with a number"));
    }
    let number: u64 = digits
        .parse()
        .map_err(|e| format!("duration {text:?}: {e}"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60 * 1000,
        "h" => 3600 * 1000,
        "d" => 24 * 3600 * 1000,
        other => return Err(format!("duration {text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("duration {text:?} overflows 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2 MB"), Ok(2_000_000));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999TiB").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 24 * 3600 * 1000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert!(parse_duration_ms("soon").is_err());
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_refused() {
        let mut config: Config = toml::from_str("volume_size_bytes = 2097152\n").unwrap();
        assert_eq!(config.volume_size_bytes, 2 * MIB);
        assert_eq!(config.router.listen, "127.0.0.1:8080");
        config.apply(&Overrides {
            volume_size: Some(8 * MIB),
            max_blob_size: Some(MIB),
            retry_buffer_size: Some(256 * KIB),
            ..Overrides::default()
        });
        assert_eq!(config.volume_size_bytes, 8 * MIB);
        assert_eq!(config.max_blob_bytes, MIB);
        assert_eq!(config.retry_buffer_bytes, 256 * KIB);
        config.validate().unwrap();
        assert!(toml::from_str::<Config>("volume_size = 1\n").is_err());
        assert!(toml::from_str::<Config>("[store]\nrak = \"r\"\n").is_err());
    }

    #[test]
    fn shared_knobs_have_the_libraries_defaults() {
        let config = Config::default();
        let store = haystack::service::StoreNodeConfig::new("d");
        let directory = router::directory::DirectoryConfig::new("d");
        let api = router::api::RouterConfig::new("d");
        assert_eq!(config.volume_size_bytes, store.volume_size_limit_bytes);
        assert_eq!(config.max_blob_bytes, store.max_needle_bytes);
        assert_eq!(config.max_blob_bytes, api.max_blob_bytes);
        assert_eq!(config.retry_buffer_bytes, api.retry_buffer_bytes);
        assert_eq!(config.io_concurrency, store.io_concurrency);
        assert_eq!(config.heartbeat_timeout_ms, directory.heartbeat_timeout_ms);
        assert_eq!(config.read_lease_ms, directory.read_lease_ms);
        assert_eq!(config.repair_interval_ms, directory.repair_interval_ms);
        assert_eq!(config.request_timeout_ms, store.request_timeout_ms);
        assert_eq!(config.request_timeout_ms, directory.request_timeout_ms);
        assert_eq!(store.server, directory.server);
        assert_eq!(store.server, api.server);
    }

    #[test]
    fn config_round_trips_through_toml() {
        let mut config = Config::default();
        config.store.data_dir = Some(PathBuf::from("data/store-1"));
        config.store.directory_url = Some("http://127.0.0.1:9300".into());
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
    }

    #[test]
    fn the_example_deploy_config_parses() {
        let text = include_str!("../deploy/hayloft.toml");
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
    }
}
