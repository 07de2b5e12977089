//! The `hayloft` binary: command line, config and wiring of roles.
//!
//! - `up`: the whole system on one machine, in one process or (`--spawn`) as
//!   one child process per node; see [`up`] and [`spawn`].
//! - `serve`: one role, for a real cluster; see [`serve`].
//! - `put`, `get`, `rm`, `status`: client commands; see [`client`].

mod client;
mod cluster;
mod config;
mod efficiency;
mod roles;
mod serve;
mod spawn;
mod up;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::roles::Role;

/// Hayloft: a tiered BLOB store.
#[derive(Debug, Parser)]
#[command(name = "hayloft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the router, the directory, three store nodes in three racks,
    /// a cell of 14 f4 storage nodes in 14 racks and a backoff node.
    Up {
        /// Where every node keeps its data (`DIR/directory`, `DIR/store-N`).
        #[arg(long)]
        data: PathBuf,
        /// Router address (overrides `[router] listen`; default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// TOML config; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run every node as its own child process and write `DIR/cluster.json`.
        #[arg(long)]
        spawn: bool,
        /// In one process, have the nodes call each other over loopback
        /// HTTP, as separate processes do, not in process (for comparison).
        #[arg(long, conflicts_with = "spawn")]
        loopback_http: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run one role, for a real cluster.
    Serve {
        /// The role to run.
        #[arg(long, value_enum)]
        role: Role,
        /// TOML config; flags override it.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Upload a file; prints its id.
    Put {
        /// The file to upload.
        file: PathBuf,
        /// `Content-Type` to store with the BLOB.
        #[arg(long)]
        content_type: Option<String>,
        /// Print the router's whole JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        router: RouterArg,
    },
    /// Download a BLOB to a file, or to stdout.
    Get {
        /// The BLOB id (`VOLUME,KEYCOOKIE`).
        id: String,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Read straight from a store node holding the BLOB's volume (looked
        /// up through the router), falling back to the router.
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        router: RouterArg,
    },
    /// Delete a BLOB.
    Rm {
        /// The BLOB id (`VOLUME,KEYCOOKIE`).
        id: String,
        #[command(flatten)]
        router: RouterArg,
    },
    /// Node operator commands.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Warm-tier operator commands.
    Warm {
        #[command(subcommand)]
        command: WarmCommand,
    },
    /// Move locked volumes old enough to the warm tier now (one pass of
    /// the migrator, run by the router), force one volume, or list the
    /// migration jobs.
    Migrate {
        /// Only this volume, whatever its age.
        #[arg(long, conflicts_with = "status")]
        volume: Option<u32>,
        /// List the jobs with their step instead.
        #[arg(long)]
        status: bool,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        router: RouterArg,
    },
    /// Rebuild what the warm tier lost now (one coordinator pass, run by
    /// the router), or only show what is missing, endangered or misplaced.
    Repair {
        /// Only report; rebuild nothing.
        #[arg(long)]
        status: bool,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        router: RouterArg,
    },
    /// Read every stored byte back and check it now (or one volume's);
    /// what is corrupt is reported for repair.
    Scrub {
        /// Only this volume.
        #[arg(long)]
        volume: Option<u32>,
        /// Also recompute every warm stripe's parity and compare it.
        #[arg(long)]
        deep: bool,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        router: RouterArg,
    },
    /// Benchmarks of a whole system.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Health, nodes and volumes of a running system.
    Status {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        router: RouterArg,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// What tiering saves in bytes and costs in latency and work: months
    /// of a photo store's uploads, reads and deletes on a simulated clock,
    /// against a cluster it starts (or `--url`); a Markdown and JSON report
    /// and plots under `--out`.
    Efficiency(efficiency::EfficiencyArgs),
}

#[derive(Debug, Subcommand)]
enum WarmCommand {
    /// Seal a locked volume into the cell; exits 0 only once it is warm
    /// (every live needle read back through the warm path) and then its
    /// hot replicas are retired.
    Seal {
        /// The volume.
        #[arg(long)]
        volume: u32,
        /// Print the router's whole JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        router: RouterArg,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Have the directory forget a node taken out of service for good (a
    /// router, a rebuilder, an emptied node): refused while the node is up
    /// or while a volume keeps data on it. Until then a down router, for
    /// one, makes every migration wait out the routers' cache lifetime.
    Remove {
        /// The node id (as in `hayloft status`).
        id: String,
        #[command(flatten)]
        router: RouterArg,
    },
}

#[derive(Debug, clap::Args)]
struct RouterArg {
    /// Base URL of the router.
    #[arg(long, env = "HAYLOFT_ROUTER", default_value = "http://127.0.0.1:8080")]
    router: String,
}

/// Small allocations on every request (headers, buffers, tasks) cost
/// measurably less with mimalloc than with the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is
        // dropped. Otherwise tracing-subscriber reports the failure with
        // `eprintln!`, which panics when stderr fails: the task that logged
        // (a request handler) would die with its connection.
        .log_internal_errors(false)
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Up { spawn: false, .. })
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        runtime.worker_threads(up::worker_threads());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            data,
            listen,
            config,
            spawn,
            loopback_http,
            overrides,
        } => {
            let mut config = Config::load_with(config.as_deref(), &overrides)?;
            if let Some(listen) = listen {
                config.router.listen = listen;
            }
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            // Children and restarted nodes may run from another directory.
            let data = data
                .canonicalize()
                .with_context(|| format!("resolving {}", data.display()))?;
            let shutdown = shutdown_on_signals()?;
            if spawn {
                spawn::run_spawned(config, &data, shutdown).await
            } else {
                up::run_in_process(config, &data, !loopback_http, shutdown).await
            }
        }
        Command::Serve {
            role,
            config,
            overrides,
        } => {
            let config = Config::load_with(Some(&config), &overrides)?;
            let shutdown = shutdown_on_signals()?;
            serve::run_role(role, config, shutdown).await
        }
        Command::Put {
            file,
            content_type,
            json,
            router,
        } => {
            client::RouterClient::new(&router.router)?
                .put(&file, content_type.as_deref(), json)
                .await
        }
        Command::Get {
            id,
            output,
            direct,
            router,
        } => {
            client::RouterClient::new(&router.router)?
                .get(&id, output.as_ref(), direct)
                .await
        }
        Command::Rm { id, router } => client::RouterClient::new(&router.router)?.rm(&id).await,
        Command::Warm {
            command:
                WarmCommand::Seal {
                    volume,
                    json,
                    router,
                },
        } => {
            client::RouterClient::new(&router.router)?
                .warm_seal(volume, json)
                .await
        }
        Command::Node {
            command: NodeCommand::Remove { id, router },
        } => {
            client::RouterClient::new(&router.router)?
                .remove_node(&id)
                .await
        }
        Command::Migrate {
            volume,
            status,
            json,
            router,
        } => {
            let client = client::RouterClient::new(&router.router)?;
            if status {
                client.migrations(json).await
            } else {
                client.migrate(volume, json).await
            }
        }
        Command::Repair {
            status,
            json,
            router,
        } => {
            client::RouterClient::new(&router.router)?
                .repair(status, json)
                .await
        }
        Command::Scrub {
            volume,
            deep,
            json,
            router,
        } => {
            client::RouterClient::new(&router.router)?
                .scrub(volume, deep, json)
                .await
        }
        Command::Bench {
            command: BenchCommand::Efficiency(args),
        } => efficiency::run(args).await,
        Command::Status { json, router } => {
            client::RouterClient::new(&router.router)?
                .status(json)
                .await
        }
    }
}

/// A token cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}
