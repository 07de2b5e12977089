//! The role table and the wiring of each role. [`ROLES`] says which roles
//! `hayloft up` starts, how many of each and in which order; [`Role::node`]
//! names and places each node, [`Role::configure`] writes its section of the
//! config, and [`run_node`] runs it on a listener the caller bound. `up` (in
//! one process), `up --spawn` (a `hayloft serve` child per node) and `serve`
//! all go through these, so a role is added in one place. Store nodes,
//! storage nodes, backoff nodes, rebuilders and routers are also registered
//! with the directory and heartbeated from here: the libraries know nothing
//! of each other.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use router::directory::{DirectoryClient, NodeRegistration, NodeRole};

use crate::cluster::wait_healthy;
use crate::config::{Config, StoreSection};
use crate::up::STARTUP_DEADLINE;

/// The roles `hayloft serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The public HTTP API.
    Router,
    /// Nodes, volumes and key leases.
    Directory,
    /// A hot-tier store node.
    Store,
    /// A warm-tier f4 storage node.
    F4Storage,
    /// The warm tier's backoff node.
    Backoff,
    /// Restores lost or corrupt warm blocks whole.
    Rebuilder,
    /// Finds lost blocks and holders and has them rebuilt.
    Coordinator,
    /// Moves locked volumes to the warm tier by age.
    Migrator,
}

/// One row of the role table.
#[derive(Debug, Clone, Copy)]
pub struct RoleSpec {
    /// The role.
    pub role: Role,
    /// How many nodes of it `hayloft up` starts.
    pub count: usize,
}

/// Every role `hayloft up` starts, in start order: each role needs the ones
/// above it (the directory first, the public router last).
pub const ROLES: &[RoleSpec] = &[
    RoleSpec {
        role: Role::Directory,
        count: 1,
    },
    RoleSpec {
        role: Role::Store,
        count: 3,
    },
    // A cell: one block of every RS(10,4) stripe per rack (times
    // `nodes_per_rack`).
    RoleSpec {
        role: Role::F4Storage,
        count: CELL_RACKS,
    },
    RoleSpec {
        role: Role::Backoff,
        count: 1,
    },
    RoleSpec {
        role: Role::Rebuilder,
        count: 1,
    },
    RoleSpec {
        role: Role::Router,
        count: 1,
    },
    RoleSpec {
        role: Role::Migrator,
        count: 1,
    },
    RoleSpec {
        role: Role::Coordinator,
        count: 1,
    },
];

/// Racks of the cell `hayloft up` starts: one per block of an RS(10,4)
/// stripe.
pub const CELL_RACKS: usize = 14;

/// Most datacenters `hayloft up --datacenters` builds on one machine.
pub const MAX_DATACENTERS: usize = 9;

/// The label of datacenter `dc` (1-based) of a `hayloft up`.
pub fn datacenter(dc: usize) -> String {
    format!("dc-{dc}")
}

/// How long a node waits for the directory to register it: long, since the
/// directory may be restarting too.
const REGISTRATION_DEADLINE: Duration = Duration::from_secs(600);

/// One node of a `hayloft up`: its name and place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The role it runs.
    pub role: Role,
    /// Stable node id (`directory`, `store-1`, `router`).
    pub id: String,
    /// Rack label (empty for roles without one).
    pub rack: String,
    /// Datacenter label.
    pub datacenter: String,
    /// Where it keeps its data (`None` for stateless roles).
    pub data_dir: Option<PathBuf>,
}

/// Every node `hayloft up` starts under `data_dir`, in start order, with
/// `nodes_per_rack` f4 storage nodes in each rack of a cell, and a cell
/// (with its backoff node and rebuilder) in each of `datacenters`.
pub fn up_nodes(
    data_dir: &Path,
    nodes_per_rack: usize,
    datacenters: usize,
) -> impl Iterator<Item = NodePlan> + '_ {
    ROLES.iter().flat_map(move |spec| {
        let count = match spec.role {
            Role::F4Storage => spec.count * nodes_per_rack.max(1),
            _ => spec.count,
        };
        let datacenters = if spec.role.in_every_datacenter() {
            datacenters.max(1)
        } else {
            1
        };
        (1..=datacenters)
            .flat_map(move |dc| (1..=count).map(move |n| spec.role.node(data_dir, n, dc)))
    })
}

impl NodePlan {
    /// `config` with this node's section written ([`Role::configure`]).
    pub fn config(&self, config: &Config, directory_url: Option<&str>) -> anyhow::Result<Config> {
        let mut config = config.clone();
        self.role.configure(&mut config, self, directory_url)?;
        Ok(config)
    }
}

impl Role {
    /// The role's name as used in configs, `cluster.json` and the directory.
    pub fn name(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::Directory => "directory",
            Role::Store => "store",
            Role::F4Storage => "f4-storage",
            Role::Backoff => "backoff",
            Role::Rebuilder => "rebuilder",
            Role::Coordinator => "coordinator",
            Role::Migrator => "migrator",
        }
    }

    /// The role the directory registers a node of this role under, for
    /// those that register.
    fn registers_as(self) -> Option<NodeRole> {
        match self {
            Role::Store => Some(NodeRole::Store),
            Role::F4Storage => Some(NodeRole::F4Storage),
            Role::Backoff => Some(NodeRole::Backoff),
            Role::Rebuilder => Some(NodeRole::Rebuilder),
            Role::Directory | Role::Router | Role::Migrator | Role::Coordinator => None,
        }
    }

    /// This role's section of `config`, for those that register.
    fn section(self, config: &Config) -> Option<&StoreSection> {
        match self {
            Role::Store => Some(&config.store),
            Role::F4Storage => Some(&config.f4),
            Role::Backoff => Some(&config.backoff),
            Role::Rebuilder => Some(&config.rebuilder),
            Role::Directory | Role::Router | Role::Migrator | Role::Coordinator => None,
        }
    }

    /// Whether `hayloft up` starts this role in every datacenter: a cell's
    /// storage nodes, its backoff node and its rebuilder (the rest serve
    /// every datacenter from the first).
    fn in_every_datacenter(self) -> bool {
        matches!(self, Role::F4Storage | Role::Backoff | Role::Rebuilder)
    }

    /// Node `n` (1-based) of this role in datacenter `dc` (1-based) of a
    /// `hayloft up` under `data_dir`. The first datacenter's names are the
    /// single-datacenter ones; another's carry its number (`dc2-f4-1` in
    /// rack `dc2-rack-1`, `dc2-backoff`).
    pub fn node(self, data_dir: &Path, n: usize, dc: usize) -> NodePlan {
        let (id, rack, data) = match self {
            Role::Directory => ("directory".to_owned(), String::new(), true),
            Role::Store => (format!("store-{n}"), format!("rack-{n}"), true),
            Role::F4Storage => (
                format!("f4-{n}"),
                format!("rack-{}", (n - 1) % CELL_RACKS + 1),
                true,
            ),
            Role::Backoff => ("backoff".to_owned(), String::new(), false),
            Role::Rebuilder => ("rebuilder".to_owned(), String::new(), false),
            Role::Coordinator => ("coordinator".to_owned(), String::new(), false),
            Role::Router => ("router".to_owned(), String::new(), false),
            Role::Migrator => ("migrator".to_owned(), String::new(), false),
        };
        let (id, rack) = match dc {
            0 | 1 => (id, rack),
            _ if rack.is_empty() => (format!("dc{dc}-{id}"), rack),
            _ => (format!("dc{dc}-{id}"), format!("dc{dc}-{rack}")),
        };
        NodePlan {
            role: self,
            data_dir: data.then(|| data_dir.join(&id)),
            id,
            rack,
            datacenter: datacenter(dc.max(1)),
        }
    }

    /// Writes `node`'s section of `config`: where it listens (any free
    /// loopback port, but the router keeps the public address it was given),
    /// its identity, its data and the directory's URL (every role but the
    /// directory needs it: the directory starts first).
    pub fn configure(
        self,
        config: &mut Config,
        node: &NodePlan,
        directory_url: Option<&str>,
    ) -> anyhow::Result<()> {
        let directory_url = || {
            directory_url
                .map(str::to_owned)
                .with_context(|| format!("{} starts before the directory", node.id))
        };
        match self {
            Role::Directory => {
                config.directory.listen = "127.0.0.1:0".into();
                config.directory.data_dir.clone_from(&node.data_dir);
            }
            Role::Store | Role::F4Storage | Role::Backoff | Role::Rebuilder => {
                let section = StoreSection {
                    id: node.id.clone(),
                    rack: node.rack.clone(),
                    datacenter: node.datacenter.clone(),
                    listen: "127.0.0.1:0".into(),
                    advertise_address: None,
                    data_dir: node.data_dir.clone(),
                    directory_url: Some(directory_url()?),
                };
                match self {
                    Role::Store => config.store = section,
                    Role::F4Storage => config.f4 = section,
                    Role::Rebuilder => config.rebuilder = section,
                    _ => config.backoff = section,
                }
            }
            Role::Router => config.router.directory_url = Some(directory_url()?),
            Role::Migrator => {
                config.migrator.id.clone_from(&node.id);
                config.migrator.listen = "127.0.0.1:0".into();
                config.migrator.directory_url = Some(directory_url()?);
            }
            Role::Coordinator => {
                config.coordinator.listen = "127.0.0.1:0".into();
                config.coordinator.directory_url = Some(directory_url()?);
            }
        }
        Ok(())
    }

    /// Where this role listens, from its section of `config` (a
    /// registering role's empty address becomes its default).
    pub fn listen(self, config: &mut Config) -> &mut String {
        let default = crate::config::node_defaults(self).1;
        let listen = match self {
            Role::Store => &mut config.store.listen,
            Role::F4Storage => &mut config.f4.listen,
            Role::Backoff => &mut config.backoff.listen,
            Role::Rebuilder => &mut config.rebuilder.listen,
            Role::Coordinator => return &mut config.coordinator.listen,
            Role::Router => return &mut config.router.listen,
            Role::Directory => return &mut config.directory.listen,
            Role::Migrator => return &mut config.migrator.listen,
        };
        if listen.is_empty() {
            default.clone_into(listen);
        }
        listen
    }

    /// The node id this role registers or logs under, from `config`.
    pub fn id(self, config: &Config) -> String {
        match self.section(config) {
            Some(section) if section.id.is_empty() => {
                crate::config::node_defaults(self).0.to_owned()
            }
            Some(section) => section.id.clone(),
            None if self == Role::Migrator => config.migrator.id.clone(),
            None => self.name().to_owned(),
        }
    }
}

/// The base URL other roles use for a node bound at `address`.
pub fn node_url(address: &str) -> String {
    format!("http://{address}")
}

/// Runs `role` from its section of `config` on `listener` until `token` is
/// cancelled. `ready` fires once it serves (`/health` answers) and, for a
/// store node, once the directory has registered it.
pub async fn run_node(
    role: Role,
    config: Config,
    listener: TcpListener,
    token: CancellationToken,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let bound = listener.local_addr()?;
    // A router registers before it serves, so that a volume's flip to warm
    // reaches every router that may have cached its entry
    // (`router::api::seal::drain_and_retire`).
    let early = match role {
        Role::Router => {
            let section = StoreSection {
                id: config.router.id.clone(),
                rack: String::new(),
                datacenter: String::new(),
                listen: config.router.listen.clone(),
                advertise_address: config.router.advertise_address.clone(),
                data_dir: None,
                directory_url: config.router.directory_url.clone(),
            };
            let id = section.id.clone();
            Some(register(&config, &section, &id, NodeRole::Router, bound).await?)
        }
        _ => None,
    };
    // A store node serves direct reads under the read lease its heartbeats
    // renew.
    let direct_reads = (role == Role::Store).then(haystack::service::DirectReads::default);
    // The role's server, driven here (not spawned), so that aborting this
    // future stops it.
    let mut serving: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> = match role {
        Role::Directory => {
            let data_dir = config
                .directory
                .data_dir
                .clone()
                .context("[directory] data_dir is required")?;
            Box::pin(run_directory(
                config.clone(),
                data_dir,
                listener,
                token.clone(),
            ))
        }
        Role::Store => {
            let data_dir = config
                .store
                .data_dir
                .clone()
                .context("[store] data_dir is required")?;
            if config.store.directory_url.is_none() {
                bail!("[store] directory_url is required");
            }
            Box::pin(run_store(
                config.clone(),
                data_dir,
                direct_reads.clone().unwrap_or_default(),
                listener,
                token.clone(),
            ))
        }
        Role::F4Storage => {
            let data_dir = config
                .f4
                .data_dir
                .clone()
                .context("[f4] data_dir is required")?;
            if config.f4.directory_url.is_none() {
                bail!("[f4] directory_url is required");
            }
            Box::pin(run_f4_storage(
                config.clone(),
                data_dir,
                listener,
                token.clone(),
            ))
        }
        Role::Backoff => {
            if config.backoff.directory_url.is_none() {
                bail!("[backoff] directory_url is required");
            }
            Box::pin(run_backoff(config.clone(), listener, token.clone()))
        }
        Role::Rebuilder => {
            if config.rebuilder.directory_url.is_none() {
                bail!("[rebuilder] directory_url is required");
            }
            Box::pin(run_rebuilder(config.clone(), listener, token.clone()))
        }
        Role::Coordinator => {
            let directory_url = config
                .coordinator
                .directory_url
                .clone()
                .context("[coordinator] directory_url is required")?;
            Box::pin(run_coordinator(
                config.clone(),
                directory_url,
                listener,
                token.clone(),
            ))
        }
        Role::Router => {
            let directory_url = config
                .router
                .directory_url
                .clone()
                .context("[router] directory_url is required")?;
            Box::pin(run_router(
                config.clone(),
                directory_url,
                listener,
                token.clone(),
            ))
        }
        Role::Migrator => {
            let directory_url = config
                .migrator
                .directory_url
                .clone()
                .context("[migrator] directory_url is required")?;
            Box::pin(run_migrator(
                config.clone(),
                directory_url,
                listener,
                token.clone(),
            ))
        }
    };
    let started = async {
        wait_healthy(&node_url(&bound.to_string()), STARTUP_DEADLINE).await?;
        match (role.section(&config), role.registers_as()) {
            (Some(section), Some(as_role)) => {
                let id = role.id(&config);
                Ok(Some(register(&config, section, &id, as_role, bound).await?))
            }
            _ => anyhow::Ok(None),
        }
    };
    // A role that fails while it starts ends the wait with its own error.
    let registration = tokio::select! {
        started = started => started?,
        stopped = &mut serving => return stopped,
    };
    let _ = ready.send(());
    match early.or(registration) {
        Some(registration) => tokio::select! {
            stopped = &mut serving => stopped,
            // Heartbeats stop once the token is cancelled; the server then
            // finishes its in-flight requests.
            () = registration.heartbeat_until(direct_reads, token) => serving.await,
        },
        None => serving.await,
    }
}

/// Runs the directory until `token` is cancelled.
async fn run_directory(
    config: Config,
    data_dir: PathBuf,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut directory = router::directory::DirectoryConfig::new(data_dir);
    directory.heartbeat_timeout_ms = config.heartbeat_timeout_ms;
    directory.read_lease_ms = config.read_lease_ms;
    directory.repair_interval_ms = config.repair_interval_ms;
    directory.request_timeout_ms = config.request_timeout_ms;
    directory.allow_fewer_racks = config.allow_fewer_racks;
    router::directory::run(directory, listener, token)
        .await
        .context("directory")
}

/// Runs one store node until `token` is cancelled.
async fn run_store(
    config: Config,
    data_dir: PathBuf,
    direct_reads: haystack::service::DirectReads,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut store = haystack::service::StoreNodeConfig::new(data_dir);
    store.volume_size_limit_bytes = config.volume_size_bytes;
    store.max_needle_bytes = config.max_blob_bytes;
    store.io_concurrency = config.io_concurrency;
    store.request_timeout_ms = config.request_timeout_ms;
    haystack::service::run(store, direct_reads, listener, token)
        .await
        .with_context(|| format!("store node {}", config.store.id))
}

/// Runs one f4 storage node until `token` is cancelled.
async fn run_f4_storage(
    config: Config,
    data_dir: PathBuf,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut node = f4::node::NodeConfig::new(data_dir);
    node.max_block_size_bytes = config.block_size_bytes;
    node.max_range_bytes = node.max_range_bytes.max(config.max_blob_bytes + 4096);
    node.fold_tombstones = config.fold_tombstones;
    node.reserve_bytes = config.storage_reserve_bytes;
    node.io_concurrency = config.io_concurrency;
    node.request_timeout_ms = config.request_timeout_ms;
    f4::node::run(node, listener, token)
        .await
        .with_context(|| format!("f4 storage node {}", Role::F4Storage.id(&config)))
}

/// Runs the backoff node until `token` is cancelled.
async fn run_backoff(
    config: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = f4::backoff::BackoffConfig::default();
    backoff.max_range_bytes = backoff.max_range_bytes.max(config.max_blob_bytes + 4096);
    backoff.request_timeout_ms = config.request_timeout_ms;
    f4::backoff::run(backoff, listener, token)
        .await
        .map_err(|e| anyhow::anyhow!("backoff node: {e}"))
}

/// Runs the rebuilder until `token` is cancelled.
async fn run_rebuilder(
    config: Config,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let rebuilder = f4::rebuild::RebuilderConfig {
        max_rebuilds: config.max_rebuilds,
        ..f4::rebuild::RebuilderConfig::default()
    };
    f4::rebuild::run(rebuilder, listener, token)
        .await
        .map_err(|e| anyhow::anyhow!("rebuilder: {e}"))
}

/// Runs the coordinator until `token` is cancelled.
async fn run_coordinator(
    config: Config,
    directory_url: String,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut api = router_config(&config, directory_url);
    // Its rebuild jobs' claims say who holds them.
    api.id = "coordinator".into();
    router::api::coordinate::run(api, listener, token)
        .await
        .context("coordinator")
}

/// Runs the router until `token` is cancelled.
async fn run_router(
    config: Config,
    directory_url: String,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    router::api::run(router_config(&config, directory_url), listener, token)
        .await
        .context("router")
}

async fn run_migrator(
    config: Config,
    directory_url: String,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let owner = config.migrator.id.clone();
    let api = router_config(&config, directory_url);
    router::api::migrate::run(api, owner, listener, token)
        .await
        .context("migrator")
}

/// The router library's config from the shared knobs: the router and the
/// migrator (which seals volumes as a router does) both run on it.
fn router_config(config: &Config, directory_url: String) -> router::api::RouterConfig {
    let mut api = router::api::RouterConfig::new(directory_url);
    api.max_blob_bytes = config.max_blob_bytes;
    api.max_block_size_bytes = config.block_size_bytes;
    api.allow_fewer_racks = config.allow_fewer_racks;
    api.retry_buffer_bytes = config.retry_buffer_bytes;
    api.warm_after_ms = config.warm_after_ms;
    api.writable_volumes = config.writable_volumes;
    api.max_migrations = config.max_migrations;
    api.migrate_interval_ms = config.migrate_interval_ms;
    api.migration_lease_ms = config.migration_lease_ms;
    api.migration_rate_bytes = config.migration_rate_bytes;
    api.idle_lock_after_ms = config.idle_lock_after_ms;
    api.directory_cache_ttl_ms = config.directory_cache_ttl_ms;
    api.rebuild_after_ms = config.rebuild_after_ms;
    api.max_rebuilds = config.max_rebuilds;
    api.rebuild_rate_bytes = config.rebuild_rate_bytes;
    api.coordinate_interval_ms = config.coordinate_interval_ms;
    api.scrub_rate_bytes = config.scrub_rate_bytes;
    api.deep_scrub_interval_ms = config.deep_scrub_interval_ms;
    api.id = config.router.id.clone();
    api
}

/// Registers the node of `section` (bound at `bound`) with the directory
/// as `role`, retrying until it answers or [`REGISTRATION_DEADLINE`]
/// passes. Heartbeat it afterwards with [`Registration::heartbeat_until`].
async fn register(
    config: &Config,
    section: &StoreSection,
    id: &str,
    role: NodeRole,
    bound: SocketAddr,
) -> anyhow::Result<Registration> {
    let directory_url = section
        .directory_url
        .as_deref()
        .with_context(|| format!("{id}: directory_url is required"))?;
    let advertised: SocketAddr = match &section.advertise_address {
        Some(address) => address
            .parse()
            .with_context(|| format!("{id}: advertise_address {address:?}"))?,
        // Nobody reaches a node at 0.0.0.0: on one machine, loopback does.
        None if bound.ip().is_unspecified() => match bound {
            SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], bound.port())),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bound.port())),
        },
        None => bound,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // Below the directory's idle cut-off, so a pooled connection is never
        // reused just as the directory closes it.
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(config.request_timeout())
        .build()
        .context("building HTTP client")?;
    let registration = Registration {
        client: DirectoryClient::with_http_client(directory_url, http, config.request_timeout()),
        node: NodeRegistration {
            id: id.to_owned(),
            role,
            rack: section.rack.clone(),
            datacenter: section.datacenter.clone(),
            address: node_url(&advertised.to_string()),
        },
        interval: config.heartbeat_interval(),
    };
    let started = tokio::time::Instant::now();
    loop {
        match registration.client.register(&registration.node).await {
            Ok(_) => return Ok(registration),
            Err(error) if started.elapsed() < REGISTRATION_DEADLINE => {
                tracing::debug!(node = %id, "registration failed, retrying: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(anyhow::Error::new(error).context("registering")),
        }
    }
}

/// A registered node, ready to heartbeat.
#[derive(Debug)]
struct Registration {
    client: DirectoryClient,
    node: NodeRegistration,
    interval: Duration,
}

impl Registration {
    /// Heartbeats every `heartbeat_interval_ms` until `token` is cancelled;
    /// a store node's heartbeat renews its read lease into `direct_reads`.
    /// Failures are logged and retried; a directory that forgot the node
    /// (`404`) gets a fresh registration.
    async fn heartbeat_until(
        self,
        direct_reads: Option<haystack::service::DirectReads>,
        token: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let beat = async {
                match &direct_reads {
                    Some(reads) => {
                        // The lease counts from before the request left.
                        let asked = haystack::service::LeaseTime::now();
                        let lease = self.client.read_lease(&self.node.id).await?;
                        reads.grant(asked, &lease);
                        Ok(())
                    }
                    None => self.client.heartbeat(&self.node.id).await.map(drop),
                }
            };
            let result = match beat.await {
                Err(error) if error.is_not_found() => {
                    tracing::warn!(node = %self.node.id, "directory forgot this node; registering");
                    self.client.register(&self.node).await.map(drop)
                }
                other => other,
            };
            if let Err(error) = result {
                tracing::warn!(node = %self.node.id, "heartbeat failed: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node `up` would start, with its configured section.
    fn planned(data_dir: &Path) -> anyhow::Result<Vec<(NodePlan, Config)>> {
        let mut nodes = Vec::new();
        let mut directory_url = None;
        for node in up_nodes(data_dir, 1, 1) {
            let config = node.config(&Config::default(), directory_url.as_deref())?;
            if node.role == Role::Directory {
                directory_url = Some("http://127.0.0.1:9".to_owned());
            }
            nodes.push((node, config));
        }
        Ok(nodes)
    }

    #[test]
    fn the_role_table_starts_the_directory_first_and_places_every_node() {
        let root = Path::new("/data");
        let nodes = planned(root).expect("every role is configured");
        let ids: Vec<&str> = nodes.iter().map(|(node, _)| node.id.as_str()).collect();
        let cell: Vec<String> = (1..=14).map(|n| format!("f4-{n}")).collect();
        let mut expected = vec!["directory", "store-1", "store-2", "store-3"];
        expected.extend(cell.iter().map(String::as_str));
        expected.extend(["backoff", "rebuilder", "router", "migrator", "coordinator"]);
        assert_eq!(ids, expected);
        for (role, count) in [(Role::Store, 3), (Role::F4Storage, 14)] {
            let mut racks: Vec<&str> = nodes
                .iter()
                .filter(|(node, _)| node.role == role)
                .map(|(node, _)| node.rack.as_str())
                .collect();
            racks.sort_unstable();
            racks.dedup();
            assert_eq!(racks.len(), count, "one {} per rack", role.name());
        }
        for (node, mut config) in nodes {
            assert_eq!(node.role.id(&config), node.id);
            let listen = node.role.listen(&mut config).clone();
            match node.role {
                // The router keeps the public address it was given.
                Role::Router => assert_eq!(listen, Config::default().router.listen),
                _ => assert_eq!(listen, "127.0.0.1:0", "{}", node.id),
            }
            match node.role {
                Role::Directory => {
                    assert_eq!(config.directory.data_dir, node.data_dir);
                    assert_eq!(node.data_dir, Some(root.join("directory")));
                }
                Role::Store => {
                    assert_eq!(config.store.data_dir, Some(root.join(&node.id)));
                    assert_eq!(config.store.rack, node.rack);
                    assert!(config.store.directory_url.is_some());
                }
                Role::F4Storage => {
                    assert_eq!(config.f4.data_dir, Some(root.join(&node.id)));
                    assert_eq!(config.f4.rack, node.rack);
                    assert!(config.f4.directory_url.is_some());
                }
                Role::Backoff => {
                    assert_eq!(node.data_dir, None);
                    assert!(config.backoff.directory_url.is_some());
                }
                Role::Rebuilder => {
                    assert_eq!(node.data_dir, None);
                    assert!(config.rebuilder.directory_url.is_some());
                }
                Role::Coordinator => {
                    assert_eq!(node.data_dir, None);
                    assert!(config.coordinator.directory_url.is_some());
                }
                Role::Router => {
                    assert_eq!(node.data_dir, None);
                    assert!(config.router.directory_url.is_some());
                }
                Role::Migrator => {
                    assert_eq!(node.data_dir, None);
                    assert!(config.migrator.directory_url.is_some());
                }
            }
        }
    }

    #[test]
    fn nodes_per_rack_multiplies_the_cell_and_keeps_its_racks() {
        let cell: Vec<NodePlan> = up_nodes(Path::new("/data"), 2, 1)
            .filter(|node| node.role == Role::F4Storage)
            .collect();
        assert_eq!(cell.len(), 2 * CELL_RACKS);
        assert_eq!(
            (cell[0].id.as_str(), cell[0].rack.as_str()),
            ("f4-1", "rack-1")
        );
        assert_eq!(
            (cell[14].id.as_str(), cell[14].rack.as_str()),
            ("f4-15", "rack-1")
        );
        assert_eq!(
            (cell[27].id.as_str(), cell[27].rack.as_str()),
            ("f4-28", "rack-14")
        );
    }

    #[test]
    fn every_datacenter_gets_a_cell_a_backoff_node_and_a_rebuilder() {
        let nodes: Vec<NodePlan> = up_nodes(Path::new("/data"), 1, 3).collect();
        let in_dc = |dc: &str, role: Role| {
            nodes
                .iter()
                .filter(|n| n.datacenter == dc && n.role == role)
                .count()
        };
        for dc in ["dc-1", "dc-2", "dc-3"] {
            assert_eq!(in_dc(dc, Role::F4Storage), CELL_RACKS, "{dc}");
            assert_eq!(in_dc(dc, Role::Backoff), 1, "{dc}");
            assert_eq!(in_dc(dc, Role::Rebuilder), 1, "{dc}");
        }
        for role in [
            Role::Directory,
            Role::Store,
            Role::Router,
            Role::Coordinator,
        ] {
            assert_eq!(
                nodes.iter().filter(|n| n.role == role).count(),
                ROLES.iter().find(|r| r.role == role).map_or(0, |r| r.count),
                "{} in one datacenter only",
                role.name()
            );
        }
        let mut ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        let mut racks: Vec<&str> = nodes
            .iter()
            .filter(|n| n.role == Role::F4Storage)
            .map(|n| n.rack.as_str())
            .collect();
        let (id_count, rack_count) = (ids.len(), racks.len());
        ids.sort_unstable();
        ids.dedup();
        racks.sort_unstable();
        racks.dedup();
        assert_eq!(ids.len(), id_count, "node ids are unique");
        assert_eq!(racks.len(), rack_count, "rack labels are unique");
        let second = nodes
            .iter()
            .find(|n| n.role == Role::F4Storage && n.datacenter == "dc-2")
            .expect("dc-2's cell");
        assert_eq!(
            (second.id.as_str(), second.rack.as_str()),
            ("dc2-f4-1", "dc2-rack-1")
        );
        assert_eq!(
            second.data_dir,
            Some(Path::new("/data/dc2-f4-1").to_owned())
        );
    }

    #[test]
    fn a_partial_section_takes_its_roles_defaults() {
        let mut config: Config =
            toml::from_str("[f4]\ndata_dir = \"d\"\n[backoff]\nrack = \"\"\n").expect("parse");
        assert_eq!(Role::F4Storage.id(&config), "f4-1");
        assert_eq!(Role::F4Storage.listen(&mut config), "127.0.0.1:9500");
        assert_eq!(Role::Backoff.id(&config), "backoff");
        assert_eq!(Role::Backoff.listen(&mut config), "127.0.0.1:9600");
        assert_eq!(Role::Store.id(&config), "store-1");
        assert_eq!(Role::Store.listen(&mut config), "127.0.0.1:9400");
        assert_eq!(Role::Migrator.id(&config), "migrator");
        assert_eq!(Role::Migrator.listen(&mut config), "127.0.0.1:9700");
        assert_eq!(Role::Rebuilder.id(&config), "rebuilder");
        assert_eq!(Role::Rebuilder.listen(&mut config), "127.0.0.1:9650");
        assert_eq!(Role::Coordinator.id(&config), "coordinator");
        assert_eq!(Role::Coordinator.listen(&mut config), "127.0.0.1:9800");
    }

    #[test]
    fn a_role_configured_before_the_directory_is_refused() {
        let node = Role::Store.node(Path::new("/data"), 1, 1);
        let mut config = Config::default();
        let error = Role::Store
            .configure(&mut config, &node, None)
            .expect_err("no directory yet");
        assert!(
            error.to_string().contains("before the directory"),
            "{error}"
        );
    }
}
