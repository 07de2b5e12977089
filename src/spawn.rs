//! `hayloft up --spawn`: every node as its own child process
//! (`hayloft serve --role ROLE --config DIR/NODE.toml`), supervised by this one.
//!
//! Each child prints one JSON ready line on stdout once it serves
//! ([`ReadyLine`]); the parent learns its address from it, rewrites the
//! child's config with that concrete address (so a restart by hand binds the
//! same port) and records it in `DIR/cluster.json`. A child that dies is not
//! restarted: tests kill and restart nodes themselves, with the command kept
//! in `cluster.json`. Children get SIGTERM if the parent dies
//! (`PR_SET_PDEATHSIG`) and on SIGINT/SIGTERM of the parent.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterFile, NodeEntry, print_banner};
use crate::config::Config;
use crate::roles::{Role, node_url, up_nodes};
use crate::up::{SHUTDOWN_DEADLINE, STARTUP_DEADLINE, worker_threads};

/// The line `hayloft serve` prints on stdout once it accepts requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyLine {
    /// Always `true`; marks the line.
    pub ready: bool,
    /// The node id.
    pub id: String,
    /// The role it runs.
    pub role: String,
    /// The socket address it serves on.
    pub address: String,
    /// Its process id.
    pub pid: u32,
}

struct Supervised {
    entry: NodeEntry,
    alive: bool,
}

/// Starts every node as a child process and supervises them until `shutdown`.
pub async fn run_spawned(
    config: Config,
    data_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (exits_tx, mut exits_rx) = mpsc::channel::<(usize, String)>(16);
    let mut nodes: Vec<Supervised> = Vec::new();
    let started = start_children(&config, data_dir, &mut nodes, &exits_tx).await;
    if let Err(error) = started {
        stop_children(&mut nodes, &mut exits_rx).await;
        return Err(error);
    }
    let cluster = ClusterFile {
        nodes: nodes.iter().map(|node| node.entry.clone()).collect(),
    };
    cluster.save(data_dir)?;
    print_banner(&cluster, data_dir);

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some((index, status)) = exits_rx.recv() => {
                let node = &mut nodes[index];
                node.alive = false;
                tracing::warn!(
                    "{} (pid {}) exited: {status}; not restarting it. Restart by hand with \
                     `hayloft serve --role {} --config {}`",
                    node.entry.id,
                    node.entry.pid,
                    node.entry.role,
                    node.entry.config.as_deref().unwrap_or(Path::new("?")).display(),
                );
            }
        }
    }
    stop_children(&mut nodes, &mut exits_rx).await;
    Ok(())
}

/// Starts every node of the role table as a child, each once ready.
async fn start_children(
    config: &Config,
    data_dir: &Path,
    nodes: &mut Vec<Supervised>,
    exits: &mpsc::Sender<(usize, String)>,
) -> anyhow::Result<()> {
    let mut directory_url = None;
    for node in up_nodes(data_dir, config.nodes_per_rack, config.datacenters) {
        let mut node_config = node.config(config, directory_url.as_deref())?;
        let path = data_dir.join(format!("{}.toml", node.id));
        let ready = start_child(node.role, &mut node_config, &path, nodes, exits).await?;
        if node.role == Role::Directory {
            directory_url = Some(node_url(&ready.address));
        }
        nodes.push(Supervised {
            entry: NodeEntry::new(&node, ready.address, ready.pid, Some(path)),
            alive: true,
        });
    }
    Ok(())
}

/// Writes `config` to `path`, starts `hayloft serve` on it, waits for its ready
/// line (printed once it serves and, for a store, is registered), then pins
/// the learned address into the saved config.
async fn start_child(
    role: Role,
    config: &mut Config,
    path: &Path,
    nodes: &[Supervised],
    exits: &mpsc::Sender<(usize, String)>,
) -> anyhow::Result<ReadyLine> {
    config.save(path)?;
    let exe = std::env::current_exe().context("locating the hayloft binary")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("serve")
        .arg("--role")
        .arg(role.name())
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // Every node of the cluster shares this machine's cores: each gets the
    // worker threads of an in-process `up` (see `worker_threads`); on 2
    // cores that served warm 64 KiB fetches ~30% faster, hot ones within the
    // noise.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        command.env("TOKIO_WORKER_THREADS", worker_threads().to_string());
    }
    die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {} ({})", role.name(), path.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(STARTUP_DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Ok(ready) = serde_json::from_str::<ReadyLine>(&line)
                && ready.ready
            {
                return Ok(ready);
            }
        }
        bail!("{} exited before it was ready", role.name())
    })
    .await
    .with_context(|| format!("{} not ready after {STARTUP_DEADLINE:?}", role.name()))??;

    // Own the child from here on: report its exit, keep draining its stdout.
    let index = nodes.len();
    let exits = exits.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!("child {index}: {line}");
        }
        let status = match child.wait().await {
            Ok(status) => status.to_string(),
            Err(error) => format!("wait failed: {error}"),
        };
        let _ = exits.send((index, status)).await;
    });

    role.listen(config).clone_from(&ready.address);
    config.save(path)?;
    Ok(ready)
}

/// Has the child started by `command` get SIGTERM when this process dies.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    let parent_pid = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            // The child gets SIGTERM when the thread that forked it exits;
            // children are forked from runtime worker threads, which live as
            // long as this process.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent_pid as libc::pid_t {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// SIGTERM to every live child, router first; SIGKILL to any still alive after
/// [`SHUTDOWN_DEADLINE`].
async fn stop_children(nodes: &mut [Supervised], exits: &mut mpsc::Receiver<(usize, String)>) {
    for node in nodes.iter().rev().filter(|node| node.alive) {
        signal(node.entry.pid, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
    while nodes.iter().any(|node| node.alive) {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some((index, status))) => {
                tracing::info!("{} stopped: {status}", nodes[index].entry.id);
                nodes[index].alive = false;
            }
            Ok(None) => break,
            Err(_) => {
                for node in nodes.iter().filter(|node| node.alive) {
                    tracing::warn!("{} ignored SIGTERM; killing it", node.entry.id);
                    signal(node.entry.pid, libc::SIGKILL);
                }
                break;
            }
        }
    }
    // Let the exit reports of killed children arrive, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while nodes.iter().any(|node| node.alive) {
            match exits.recv().await {
                Some((index, _)) => nodes[index].alive = false,
                None => break,
            }
        }
    })
    .await;
}

fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a child
    // of ours that has not been reaped yet (its exit was not reported).
    unsafe {
        libc::kill(pid, signal);
    }
}
