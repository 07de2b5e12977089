//! `hayloft serve --role ROLE --config FILE`: one role in this process, for a
//! real cluster or as a child of `hayloft up --spawn`. Prints one JSON ready
//! line ([`ReadyLine`]) on stdout once it accepts requests.

use std::io::Write;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::roles::{self, Role};
use crate::spawn::ReadyLine;
use crate::up::bind;

/// Runs `role` until `shutdown` is cancelled.
pub async fn run_role(
    role: Role,
    mut config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = bind(role.listen(&mut config)).await?;
    let address = listener.local_addr()?.to_string();
    let id = role.id(&config);
    let (ready_tx, ready) = oneshot::channel();
    let node = roles::run_node(role, config, listener, shutdown.child_token(), ready_tx);
    tokio::pin!(node);
    tokio::select! {
        // First: a node that failed to start says why.
        biased;
        stopped = &mut node => return stopped,
        became_ready = ready => became_ready.context("the node stopped before it was ready")?,
    }
    announce(role, &id, &address)?;
    node.await
}

/// Prints the ready line.
fn announce(role: Role, id: &str, address: &str) -> anyhow::Result<()> {
    let line = ReadyLine {
        ready: true,
        id: id.to_owned(),
        role: role.name().to_owned(),
        address: address.to_owned(),
        pid: std::process::id(),
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &line)?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    tracing::info!("{id} ({}) serving on {address}", role.name());
    Ok(())
}
