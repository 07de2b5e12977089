//! `hayloft serve --role ROLE --config FILE`: one role in this process, for a
//! real cluster or as a child of `hayloft up --spawn`. Prints one JSON ready
//! line ([`ReadyLine`]) on stdout once it accepts requests.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::roles::{self, Role, StoreIdentity, node_url};
use crate::spawn::ReadyLine;
use crate::up::{STARTUP_DEADLINE, bind};

/// Runs `role` until `shutdown` is cancelled.
pub async fn run_role(
    role: Role,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token = shutdown.child_token();
    match role {
        Role::Directory => {
            let data_dir = config
                .directory
                .data_dir
                .clone()
                .context("[directory] data_dir is required")?;
            let listener = bind(&config.directory.listen).await?;
            let address = listener.local_addr()?;
            let serving = tokio::spawn({
                let (config, token) = (config.clone(), token.clone());
                async move { roles::run_directory(&config, data_dir, listener, token).await }
            });
            announce(role, "directory", &address.to_string()).await?;
            serving.await.context("directory task")?
        }
        Role::Store => {
            let section = &config.store;
            let identity = StoreIdentity {
                id: section.id.clone(),
                rack: section.rack.clone(),
                datacenter: section.datacenter.clone(),
                data_dir: section
                    .data_dir
                    .clone()
                    .context("[store] data_dir is required")?,
            };
            let directory_url = section
                .directory_url
                .clone()
                .context("[store] directory_url is required")?;
            let listener = bind(&section.listen).await?;
            let bound = listener.local_addr()?;
            let advertised = match &section.advertise_address {
                Some(address) => address
                    .parse()
                    .with_context(|| format!("[store] advertise_address {address:?}"))?,
                None => bound,
            };
            let serving = tokio::spawn({
                let (config, identity, token) = (config.clone(), identity.clone(), token.clone());
                async move { roles::run_store(&config, &identity, listener, token).await }
            });
            crate::cluster::wait_healthy(&node_url(&bound.to_string()), STARTUP_DEADLINE).await?;
            // The directory may be restarting too: keep trying for a long while.
            let registration = roles::register_store(
                &config,
                &directory_url,
                &identity,
                advertised,
                Duration::from_secs(600),
            )
            .await?;
            tokio::spawn(registration.heartbeat_until(token.clone()));
            announce(role, &identity.id, &bound.to_string()).await?;
            serving.await.context("store task")?
        }
        Role::Router => {
            let directory_url = config
                .router
                .directory_url
                .clone()
                .context("[router] directory_url is required")?;
            let listener = bind(&config.router.listen).await?;
            let address = listener.local_addr()?;
            let serving = tokio::spawn({
                let (config, token) = (config.clone(), token.clone());
                async move { roles::run_router(&config, directory_url, listener, token).await }
            });
            announce(role, "router", &address.to_string()).await?;
            serving.await.context("router task")?
        }
    }
}

/// Waits for `/health`, then prints the ready line.
async fn announce(role: Role, id: &str, address: &str) -> anyhow::Result<()> {
    crate::cluster::wait_healthy(&node_url(address), STARTUP_DEADLINE).await?;
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
