//! Wiring of each role: turns the binary's [`Config`] into the library's
//! option struct and serves on a listener the caller bound, until the token is
//! cancelled. Store nodes are also registered with the directory and
//! heartbeated from here: the libraries know nothing of each other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use router::directory::{DirectoryClient, NodeRegistration, NodeRole};

use crate::config::Config;

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
}

impl Role {
    /// The role's name as used in configs, `cluster.json` and the directory.
    pub fn name(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::Directory => "directory",
            Role::Store => "store",
        }
    }
}

/// A store node's identity as the directory knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreIdentity {
    /// Stable node id (`store-1`).
    pub id: String,
    /// Rack label.
    pub rack: String,
    /// Datacenter label.
    pub datacenter: String,
    /// Where the node stores its volumes.
    pub data_dir: PathBuf,
}

/// The base URL other roles use for a node bound at `address`.
pub fn node_url(address: &str) -> String {
    format!("http://{address}")
}

/// Runs the directory until `token` is cancelled.
pub async fn run_directory(
    config: &Config,
    data_dir: PathBuf,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut directory = router::directory::DirectoryConfig::new(data_dir);
    directory.heartbeat_timeout_ms = config.heartbeat_timeout_ms;
    directory.repair_interval_ms = config.repair_interval_ms;
    directory.request_timeout_ms = config.request_timeout_ms;
    router::directory::run(directory, listener, token)
        .await
        .context("directory")
}

/// Runs one store node until `token` is cancelled.
pub async fn run_store(
    config: &Config,
    identity: &StoreIdentity,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&identity.data_dir)
        .with_context(|| format!("creating {}", identity.data_dir.display()))?;
    let mut store = haystack::service::StoreNodeConfig::new(identity.data_dir.clone());
    store.volume_size_limit_bytes = config.volume_size_bytes;
    store.max_needle_bytes = config.max_blob_bytes;
    store.io_concurrency = config.io_concurrency;
    store.request_timeout_ms = config.request_timeout_ms;
    haystack::service::run(store, listener, token)
        .await
        .with_context(|| format!("store node {}", identity.id))
}

/// Runs the router until `token` is cancelled.
pub async fn run_router(
    config: &Config,
    directory_url: String,
    listener: TcpListener,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut api = router::api::RouterConfig::new(directory_url);
    api.max_blob_bytes = config.max_blob_bytes;
    api.retry_buffer_bytes = config.retry_buffer_bytes;
    router::api::run(api, listener, token)
        .await
        .context("router")
}

/// Registers a store node with the directory (retrying until it answers or
/// `deadline` passes). Heartbeat it afterwards with
/// [`Registration::heartbeat_until`].
pub async fn register_store(
    config: &Config,
    directory_url: &str,
    identity: &StoreIdentity,
    address: SocketAddr,
    deadline: Duration,
) -> anyhow::Result<Registration> {
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
            id: identity.id.clone(),
            role: NodeRole::Store,
            rack: identity.rack.clone(),
            datacenter: identity.datacenter.clone(),
            address: node_url(&address.to_string()),
        },
        interval: config.heartbeat_interval(),
    };
    let started = tokio::time::Instant::now();
    loop {
        match registration.client.register(&registration.node).await {
            Ok(_) => return Ok(registration),
            Err(error) if started.elapsed() < deadline => {
                tracing::debug!(node = %identity.id, "registration failed, retrying: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(anyhow::Error::new(error).context("registering")),
        }
    }
}

/// A registered store node, ready to heartbeat.
#[derive(Debug)]
pub struct Registration {
    client: DirectoryClient,
    node: NodeRegistration,
    interval: Duration,
}

impl Registration {
    /// Heartbeats every `heartbeat_interval_ms` until `token` is cancelled.
    /// Failures are logged and retried; a directory that forgot the node
    /// (`404`) gets a fresh registration.
    pub async fn heartbeat_until(self, token: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let result = match self.client.heartbeat(&self.node.id).await {
                Err(error) if error.is_not_found() => {
                    tracing::warn!(node = %self.node.id, "directory forgot this node; registering");
                    self.client.register(&self.node).await
                }
                other => other,
            };
            if let Err(error) = result {
                tracing::warn!(node = %self.node.id, "heartbeat failed: {error}");
            }
        }
    }
}
