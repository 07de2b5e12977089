//! `hayloft up` in one process: the directory, three store nodes in three
//! racks and the router, each on its own loopback listener, talking HTTP to
//! each other exactly as separate processes would.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterFile, NodeEntry, print_banner, wait_healthy};
use crate::config::Config;
use crate::roles::{self, Role, StoreIdentity, node_url};

/// Number of store nodes (one per rack) `up` starts.
pub const STORE_COUNT: usize = 3;
/// How long a role may take to answer `/health` after it starts.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long roles get to finish in-flight requests on shutdown.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Async worker threads of `hayloft up` in one process: half the cores,
/// at least one (`TOKIO_WORKER_THREADS` overrides it). Every hop between
/// roles is loopback HTTP inside this process, so each request wakes tasks
/// on both ends of two hops; with fewer workers those wake-ups stay on one
/// thread instead of bouncing between threads, and the other cores are left
/// to the blocking pool (engine reads, fsyncs), the kernel's network stack
/// and local clients. On 2 cores, 1 worker instead of 2 served 1 KiB
/// fetches 18% faster and 64 KiB ones 9% faster with a lower p99, but
/// 1 MiB fetches 14% and 1 MiB uploads ~25% slower: the one worker then
/// does every loopback copy of those bodies.
pub fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().div_ceil(2))
        .max(1)
}

/// The identity of store node `n` (1-based) under `data_dir`.
pub fn store_identity(data_dir: &Path, n: usize) -> StoreIdentity {
    StoreIdentity {
        id: format!("store-{n}"),
        rack: format!("rack-{n}"),
        datacenter: "dc-1".to_owned(),
        data_dir: data_dir.join(format!("store-{n}")),
    }
}

/// Binds a TCP listener, with the address in the error.
pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))
}

/// Runs every role in this process until `shutdown` is cancelled or a role fails.
pub async fn run_in_process(
    config: Config,
    data_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token = shutdown.child_token();
    let mut tasks: RoleTasks = JoinSet::new();
    let result = start_and_wait(&config, data_dir, &token, &mut tasks).await;
    token.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((name, Err(error))) => {
                    tracing::error!("{name} stopped with an error: {error:#}")
                }
                Ok((name, Ok(()))) => tracing::debug!("{name} stopped"),
                Err(error) => tracing::error!("a role task panicked: {error}"),
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("roles did not stop within {SHUTDOWN_DEADLINE:?}; aborting them");
        tasks.abort_all();
    }
    result
}

type RoleTasks = JoinSet<(String, anyhow::Result<()>)>;

async fn start_and_wait(
    config: &Config,
    data_dir: &Path,
    token: &CancellationToken,
    tasks: &mut RoleTasks,
) -> anyhow::Result<()> {
    let cluster = start_roles(config, data_dir, token, tasks).await?;
    cluster.save(data_dir)?;
    print_banner(&cluster, data_dir);

    // Serve until asked to stop, or until any role stops on its own.
    let joined = tokio::select! {
        () = token.cancelled() => return Ok(()),
        joined = tasks.join_next() => joined,
    };
    if token.is_cancelled() {
        // A role that stopped because of the shutdown, not on its own.
        return Ok(());
    }
    match joined {
        Some(Ok((name, Ok(())))) => anyhow::bail!("{name} stopped unexpectedly"),
        Some(Ok((name, Err(error)))) => Err(error.context(format!("{name} failed"))),
        Some(Err(error)) => Err(anyhow::anyhow!("a role task panicked: {error}")),
        None => Ok(()),
    }
}

/// Starts the directory, the store nodes (registered and heartbeated) and the
/// router, each once healthy; returns where they are.
async fn start_roles(
    config: &Config,
    data_dir: &Path,
    token: &CancellationToken,
    tasks: &mut RoleTasks,
) -> anyhow::Result<ClusterFile> {
    let pid = std::process::id();
    let mut cluster = ClusterFile::default();

    let directory_dir = data_dir.join("directory");
    let listener = bind("127.0.0.1:0").await?;
    let directory_address = listener.local_addr()?;
    let directory_url = node_url(&directory_address.to_string());
    {
        let (config, dir, token) = (config.clone(), directory_dir.clone(), token.clone());
        tasks.spawn(async move {
            let result = roles::run_directory(&config, dir, listener, token).await;
            ("directory".to_owned(), result)
        });
    }
    wait_healthy(&directory_url, STARTUP_DEADLINE).await?;
    cluster.nodes.push(NodeEntry {
        id: "directory".into(),
        role: Role::Directory.name().into(),
        rack: String::new(),
        datacenter: "dc-1".into(),
        address: directory_address.to_string(),
        pid,
        data_dir: directory_dir,
        config: None,
    });

    for n in 1..=STORE_COUNT {
        let entry = start_store(config, data_dir, n, &directory_url, token, tasks).await?;
        cluster.nodes.push(entry);
    }

    let listener = bind(&config.router.listen).await?;
    let router_address = listener.local_addr()?;
    {
        let (config, directory_url, token) = (config.clone(), directory_url.clone(), token.clone());
        tasks.spawn(async move {
            let result = roles::run_router(&config, directory_url, listener, token).await;
            ("router".to_owned(), result)
        });
    }
    wait_healthy(&node_url(&router_address.to_string()), STARTUP_DEADLINE).await?;
    cluster.nodes.push(NodeEntry {
        id: "router".into(),
        role: Role::Router.name().into(),
        rack: String::new(),
        datacenter: "dc-1".into(),
        address: router_address.to_string(),
        pid,
        data_dir: Default::default(),
        config: None,
    });
    Ok(cluster)
}

/// Starts store node `n`, waits for its health, registers it with the
/// directory and starts its heartbeats.
async fn start_store(
    config: &Config,
    data_dir: &Path,
    n: usize,
    directory_url: &str,
    token: &CancellationToken,
    tasks: &mut RoleTasks,
) -> anyhow::Result<NodeEntry> {
    let identity = store_identity(data_dir, n);
    let listener = bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    {
        let (config, identity, token) = (config.clone(), identity.clone(), token.clone());
        tasks.spawn(async move {
            let result = roles::run_store(&config, &identity, listener, token).await;
            (identity.id, result)
        });
    }
    wait_healthy(&node_url(&address.to_string()), STARTUP_DEADLINE).await?;
    let registration =
        roles::register_store(config, directory_url, &identity, address, STARTUP_DEADLINE).await?;
    let heartbeat_token = token.clone();
    tasks.spawn(async move {
        registration.heartbeat_until(heartbeat_token).await;
        ("heartbeat".to_owned(), Ok(()))
    });
    Ok(NodeEntry {
        id: identity.id,
        role: Role::Store.name().into(),
        rack: identity.rack,
        datacenter: identity.datacenter,
        address: address.to_string(),
        pid: std::process::id(),
        data_dir: identity.data_dir,
        config: None,
    })
}
