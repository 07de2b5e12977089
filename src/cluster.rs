//! `DIR/cluster.json`: where every node of a `hayloft up` lives, so tests and
//! operators can find, kill, pause or restart one node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::roles::NodePlan;

/// The file name under the data directory.
pub const CLUSTER_FILE_NAME: &str = "cluster.json";

/// Every node of one `hayloft up`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The nodes, directory first, router last.
    pub nodes: Vec<NodeEntry>,
}

/// One node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Stable node id (`directory`, `store-1`, `router`).
    pub id: String,
    /// `router`, `directory` or `store`.
    pub role: String,
    /// Rack label (empty for roles without one).
    pub rack: String,
    /// Datacenter label.
    pub datacenter: String,
    /// Socket address it serves HTTP on (`127.0.0.1:PORT`).
    pub address: String,
    /// Process id (the `up` process itself when not spawned).
    pub pid: u32,
    /// Where it keeps its data (empty for the stateless router).
    pub data_dir: PathBuf,
    /// With `--spawn`: the config to restart it with
    /// (`hayloft serve --role ROLE --config CONFIG`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
}

impl NodeEntry {
    /// The entry of `node`, serving at `address` in process `pid`.
    pub fn new(node: &NodePlan, address: String, pid: u32, config: Option<PathBuf>) -> Self {
        NodeEntry {
            id: node.id.clone(),
            role: node.role.name().to_owned(),
            rack: node.rack.clone(),
            datacenter: node.datacenter.clone(),
            address,
            pid,
            data_dir: node.data_dir.clone().unwrap_or_default(),
            config,
        }
    }
}

impl ClusterFile {
    /// Writes `DIR/cluster.json` atomically (temp file, rename).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(CLUSTER_FILE_NAME);
        let tmp = data_dir.join(format!("{CLUSTER_FILE_NAME}.tmp"));
        let text = serde_json::to_string_pretty(self).context("encoding cluster.json")?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", path.display()))?;
        Ok(())
    }
}

/// Waits until `GET {base_url}/health` answers 2xx, or fails after `deadline`.
pub async fn wait_healthy(base_url: &str, deadline: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building HTTP client")?;
    let url = format!("{base_url}/health");
    let started = tokio::time::Instant::now();
    loop {
        let last = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("status {}", response.status()),
            Err(error) => error.to_string(),
        };
        if started.elapsed() > deadline {
            bail!("{url} not healthy after {deadline:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints where to reach every node (the `up` banner).
#[allow(clippy::print_stdout, reason = "the CLI's user-facing output")]
pub fn print_banner(cluster: &ClusterFile, data_dir: &Path) {
    println!("hayloft is up (data under {})", data_dir.display());
    for node in &cluster.nodes {
        let place = if node.rack.is_empty() {
            String::new()
        } else {
            format!("{}/{}", node.datacenter, node.rack)
        };
        println!(
            "  {:<10} http://{:<22} {:<12} pid {}",
            node.id, node.address, place, node.pid
        );
    }
    println!(
        "cluster map: {}",
        data_dir.join(CLUSTER_FILE_NAME).display()
    );
}
