//! The system the efficiency benchmark drives: a `hayloft up --spawn` it
//! starts itself (and stops, and whose storage nodes it can kill for the
//! degraded and geo probes), or a running one given by its router's URL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use router::directory::types::{LogicalVolume, NodeRecord};

use crate::cluster::{CLUSTER_FILE_NAME, ClusterFile, NodeEntry, wait_healthy};
use crate::up::{SHUTDOWN_DEADLINE, STARTUP_DEADLINE};

/// A cluster under test.
pub struct Target {
    /// The router's base URL.
    pub router: String,
    /// The data directory, when its files can be measured.
    pub data: Option<PathBuf>,
    /// The `up --spawn` process, when this benchmark started it.
    up: Option<tokio::process::Child>,
    http: reqwest::Client,
}

/// How the benchmark's own cluster is started.
#[derive(Debug, Clone)]
pub struct UpPlan {
    /// Its data directory.
    pub data: PathBuf,
    /// `hayloft up` flags.
    pub flags: Vec<String>,
}

impl Target {
    /// Starts `hayloft up --spawn` on a free loopback port and waits until
    /// its router is healthy and `cluster.json` is written.
    pub async fn start(plan: &UpPlan, log: &Path) -> anyhow::Result<Target> {
        std::fs::create_dir_all(&plan.data)
            .with_context(|| format!("creating {}", plan.data.display()))?;
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").context("free port")?;
            listener.local_addr()?.to_string()
        };
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let exe = std::env::current_exe().context("locating the hayloft binary")?;
        let mut command = tokio::process::Command::new(exe);
        crate::spawn::die_with_parent(&mut command);
        let child = command
            .arg("up")
            .arg("--spawn")
            .arg("--data")
            .arg(&plan.data)
            .arg("--listen")
            .arg(&address)
            .args(&plan.flags)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting hayloft up")?;
        let mut target = Target {
            router: format!("http://{address}"),
            data: Some(plan.data.clone()),
            up: Some(child),
            http: http_client()?,
        };
        let cluster_file = plan.data.join(CLUSTER_FILE_NAME);
        let started = tokio::time::Instant::now();
        while !cluster_file.exists() {
            if let Some(status) = target.up.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "hayloft up exited ({status}) before it was up; see {}",
                    log.display()
                );
            }
            if started.elapsed() > STARTUP_DEADLINE * 4 {
                bail!(
                    "hayloft up not up after {:?}; see {}",
                    started.elapsed(),
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_healthy(&target.router, STARTUP_DEADLINE).await?;
        Ok(target)
    }

    /// A running cluster: its router, and (to measure its files) its data
    /// directory on this machine.
    pub async fn existing(router: &str, data: Option<PathBuf>) -> anyhow::Result<Target> {
        let router = router.trim_end_matches('/').to_owned();
        wait_healthy(&router, Duration::from_secs(10)).await?;
        Ok(Target {
            router,
            data,
            up: None,
            http: http_client()?,
        })
    }

    /// Whether this benchmark started the cluster (and so may kill nodes).
    pub fn owned(&self) -> bool {
        self.up.is_some()
    }

    /// The HTTP client every request goes through.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Every volume, `GET /admin/volumes` page by page.
    pub async fn volumes(&self) -> anyhow::Result<Vec<LogicalVolume>> {
        crate::client::all_volumes(&self.http, &self.router).await
    }

    /// `GET /admin/nodes`.
    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeRecord>> {
        self.get_json("/admin/nodes").await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(reqwest::Method::GET, path).await
    }

    /// POST `path` and decode the JSON answer.
    pub async fn post_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(reqwest::Method::POST, path).await
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.router);
        let what = format!("{method} {url}");
        let response = self
            .http
            .request(method, &url)
            .send()
            .await
            .with_context(|| what.clone())?;
        crate::client::checked(response)
            .await
            .with_context(|| what.clone())?
            .json()
            .await
            .with_context(|| format!("{what}: body"))
    }

    /// The nodes of the cluster this benchmark started (`cluster.json`).
    pub fn cluster(&self) -> anyhow::Result<Vec<NodeEntry>> {
        let data = self
            .data
            .as_ref()
            .filter(|_| self.owned())
            .context("only a cluster the benchmark started has a cluster map")?;
        let path = data.join(CLUSTER_FILE_NAME);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let cluster: ClusterFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(cluster.nodes)
    }

    /// `kill -9` these nodes of the benchmark's own cluster, then waits
    /// until the directory has them down.
    pub async fn kill(&self, nodes: &[NodeEntry]) -> anyhow::Result<()> {
        anyhow::ensure!(self.owned(), "only the benchmark's own cluster loses nodes");
        for node in nodes {
            if let Ok(pid) = libc::pid_t::try_from(node.pid) {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid
                // is a child of the `up` this benchmark started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let started = tokio::time::Instant::now();
        loop {
            let records = self.nodes().await?;
            let up: Vec<&str> = records
                .iter()
                .filter(|r| r.is_up() && nodes.iter().any(|n| n.id == r.id))
                .map(|r| r.id.as_str())
                .collect();
            if up.is_empty() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the directory still has {up:?} up a minute after they were killed");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the benchmark's own cluster (SIGTERM to `up`, which stops
    /// every node), killing it past the shutdown deadline.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.up.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            // SAFETY: as in `kill`; `child` has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = SHUTDOWN_DEADLINE + Duration::from_secs(5);
        if tokio::time::timeout(deadline, child.wait()).await.is_err() {
            tracing::warn!("hayloft up ignored SIGTERM for {deadline:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(64)
        .build()
        .context("building HTTP client")
}
