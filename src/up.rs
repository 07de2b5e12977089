//! `hayloft up` in one process: every node of the role table
//! ([`crate::roles::ROLES`]: the directory, three store nodes in three
//! racks, 14 f4 storage nodes in 14 racks, the backoff node and the
//! router), each on its own loopback listener. Needle reads and appends at
//! a store node and the warm read hops (lookups, ranges and decodes at an
//! f4 storage node or the backoff node, whoever asks) go to the node's
//! routes in process ([`haystack::local`]; `--loopback-http` turns that
//! off); every other call between them is HTTP, exactly as between
//! separate processes.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterFile, NodeEntry, print_banner};
use crate::config::Config;
use crate::roles::{self, Role, node_url, up_nodes};
/// How long a role may take to answer `/health` after it starts.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long roles get to finish in-flight requests on shutdown.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Async worker threads of `hayloft up` in one process, and of each node
/// `up --spawn` starts: half the cores, at least one
/// (`TOKIO_WORKER_THREADS` overrides it). Measured when every hop between
/// roles was loopback HTTP inside this process (as with `--loopback-http`),
/// so that each request woke tasks on both ends of two hops; with fewer workers those wake-ups stay on one
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

/// Binds a TCP listener, with the address in the error. "Any free port"
/// (port 0) is taken below the kernel's ephemeral range where there is room
/// ([`haystack::http::free_port_candidates`]): `up --spawn` records each
/// node's port in its config, and a node restarted by hand must get it back.
pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    if let Ok(any_port) = address.parse::<std::net::SocketAddr>()
        && any_port.port() == 0
    {
        for port in haystack::http::free_port_candidates(64) {
            if let Ok(listener) = TcpListener::bind((any_port.ip(), port)).await {
                return Ok(listener);
            }
        }
    }
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))
}

/// Runs every role in this process until `shutdown` is cancelled or a role
/// fails; with `in_process_calls`, reads and appends between its nodes stay
/// in process.
pub async fn run_in_process(
    config: Config,
    data_dir: &Path,
    in_process_calls: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if in_process_calls {
        haystack::local::enable();
    }
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

/// Starts every node of the role table in this process, each once ready;
/// returns where they are.
async fn start_roles(
    config: &Config,
    data_dir: &Path,
    token: &CancellationToken,
    tasks: &mut RoleTasks,
) -> anyhow::Result<ClusterFile> {
    let mut cluster = ClusterFile::default();
    let mut directory_url = None;
    for node in up_nodes(data_dir, config.nodes_per_rack, config.datacenters) {
        let mut node_config = node.config(config, directory_url.as_deref())?;
        let listener = bind(node.role.listen(&mut node_config)).await?;
        let address = listener.local_addr()?.to_string();
        let (ready_tx, ready) = oneshot::channel();
        {
            let (role, id, token) = (node.role, node.id.clone(), token.clone());
            tasks.spawn(async move {
                let result = roles::run_node(role, node_config, listener, token, ready_tx).await;
                (id, result)
            });
        }
        // A little longer than the node's own health deadline, so that a node
        // that never turns healthy ends with its own error, which says why.
        match tokio::time::timeout(STARTUP_DEADLINE + Duration::from_secs(5), ready).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The node's task ended before it was ready: its error says why.
                return Err(match tasks.join_next().await {
                    Some(Ok((id, Err(error)))) => error.context(format!("{id} failed to start")),
                    _ => anyhow::anyhow!("{} stopped before it was ready", node.id),
                });
            }
            Err(_) => anyhow::bail!("{} not ready after {STARTUP_DEADLINE:?}", node.id),
        }
        if node.role == Role::Directory {
            directory_url = Some(node_url(&address));
        }
        cluster
            .nodes
            .push(NodeEntry::new(&node, address, std::process::id(), None));
    }
    Ok(cluster)
}
