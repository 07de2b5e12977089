//! Writable volumes have owners: the router that writes to one claims it in
//! the directory under its id (`[router] id`) and renews the claim every
//! third of [`RouterConfig::migration_lease_ms`], reporting when it last
//! used each. A router that restarts takes its volumes back into its pool
//! (the directory answers every writable volume its id holds), with a fresh
//! key lease, rather than abandoning them. A volume its router has not
//! used for [`RouterConfig::idle_lock_after_ms`] is locked by that router;
//! one whose router is gone (its claim ran out, or it never had one) and
//! that has been idle as long is locked by the migrator's pass
//! ([`lock_orphans`]). Either way it then ages and migrates like a full one.
//!
//! [`RouterConfig::migration_lease_ms`]: super::RouterConfig::migration_lease_ms
//! [`RouterConfig::idle_lock_after_ms`]: super::RouterConfig::idle_lock_after_ms

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::pool::WritableVolume;
use super::state::AppState;
use super::upload::lock_volume;
use crate::directory::{LogicalVolume, VolumeState, now_ms};

/// One round: claims (or renews) the pool's volumes, takes back any the
/// directory says this router owns that the pool lacks, and locks the
/// pool's volumes idle too long. How many it took back.
pub(crate) async fn renew(state: &AppState) -> Result<usize, ApiError> {
    let owned = state
        .directory
        .own_volumes(
            &state.config.id,
            &state.instance,
            state.pool.claims(),
            state.config.migration_lease_ms.max(1),
        )
        .await?;
    let mut resumed = 0;
    for volume in owned {
        if state.pool.holds(volume.id) {
            continue;
        }
        match resume(state, volume).await {
            Ok(volume) => {
                let id = volume.volume.id;
                if state.pool.adopt(volume) {
                    tracing::info!(volume = id, "took back a writable volume this router owned");
                    resumed += 1;
                }
            }
            Err(e) => tracing::warn!(error = %e, "taking back an owned volume failed"),
        }
    }
    let cutoff = now_ms().saturating_sub(state.config.idle_lock_after_ms);
    for idle in state.pool.take_idle_since(cutoff) {
        tracing::info!(volume = idle.volume.id, "locking an idle writable volume");
        lock_volume(
            state,
            &idle.volume,
            "idle: no upload for idle_lock_after_ms",
        )
        .await;
    }
    Ok(resumed)
}

/// A volume this router owned, ready for uploads again: keys leased anew
/// (above every key leased before, so above every key its stores hold).
async fn resume(state: &AppState, volume: LogicalVolume) -> Result<WritableVolume, ApiError> {
    let lease = state
        .directory
        .lease_keys(volume.id, state.config.key_lease_size.max(1))
        .await?;
    let last_write_ms = volume.last_write_ms.unwrap_or(volume.created_ms);
    Ok(WritableVolume {
        volume: state.cache.store_volume(volume),
        next_key: lease.start,
        end_key: lease.end,
        last_write_ms,
    })
}

/// Runs [`renew`] every third of the claim's lease until `cancel` fires.
pub(crate) async fn run(state: Arc<AppState>, cancel: CancellationToken) {
    let period =
        Duration::from_millis(state.config.migration_lease_ms / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        if let Err(e) = renew(&state).await {
            tracing::warn!(error = %e, "renewing the claims on writable volumes failed");
        }
    }
}

/// Locks every writable volume that no router holds under a live claim and
/// that has not been written for [`super::RouterConfig::idle_lock_after_ms`]
/// (the migrator's pass); how many.
pub(crate) async fn lock_orphans(state: &AppState, volumes: &[LogicalVolume]) -> usize {
    let now = now_ms();
    let mut locked = 0;
    for volume in volumes {
        let claimed = volume.owner.as_ref().is_some_and(|o| o.until_ms > now);
        let last = volume.last_write_ms.unwrap_or(volume.created_ms);
        if volume.state != VolumeState::Writable
            || claimed
            || now.saturating_sub(last) < state.config.idle_lock_after_ms
        {
            continue;
        }
        tracing::info!(
            volume = volume.id,
            "locking an idle writable volume no router owns"
        );
        lock_volume(state, volume, "idle, and no router owns it").await;
        locked += 1;
    }
    locked
}
