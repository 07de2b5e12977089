//! What the router tells the directory about replicas it saw fail: a stale
//! replica (it may have missed a write or a delete), or one needle whose copy
//! on a replica failed its checks (only that needle is mended; the replica
//! keeps serving every other one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::id::BlobId;
use super::state::AppState;

/// A damaged copy already reported within this long is not reported again:
/// a hot corrupt BLOB would otherwise cost a directory write per read until
/// it is mended.
const DAMAGE_REPORT_QUIET: Duration = Duration::from_secs(10);
/// Most recent damage reports remembered; beyond it the memory is cleared.
const DAMAGE_REPORTS_REMEMBERED: usize = 1024;

/// Recent damage reports, by `(volume, key, node)`.
#[derive(Default)]
pub(crate) struct RecentReports {
    reported: Mutex<HashMap<(u32, u64, String), Instant>>,
}

impl RecentReports {
    /// Whether a report of this copy should go out now (and notes that it does).
    fn should_report(&self, id: BlobId, node: &str) -> bool {
        let mut reported = self.reported.lock();
        let key = (id.volume, id.key, node.to_owned());
        if reported
            .get(&key)
            .is_some_and(|at| at.elapsed() < DAMAGE_REPORT_QUIET)
        {
            return false;
        }
        if reported.len() >= DAMAGE_REPORTS_REMEMBERED {
            reported.clear();
        }
        reported.insert(key, Instant::now());
        true
    }

    /// Forgets a report that did not reach the directory, so the next read retries it.
    fn forget(&self, id: BlobId, node: &str) {
        self.reported
            .lock()
            .remove(&(id.volume, id.key, node.to_owned()));
    }
}

/// Reports a replica stale to the directory (`missed_delete`: it did not
/// take an acknowledged delete); true if the directory took it.
pub(crate) async fn report_stale(
    state: &AppState,
    volume: u32,
    node: &str,
    reason: &str,
    missed_delete: bool,
) -> bool {
    match state
        .directory
        .mark_replica_stale(volume, node, reason, missed_delete)
        .await
    {
        Ok(updated) => {
            state.cache.store_volume(updated);
            true
        }
        Err(e) => {
            tracing::warn!(volume, node, error = %e, "reporting a stale replica failed");
            false
        }
    }
}

/// Reports that `node`'s copy of `id`'s needle failed its checks, so the
/// directory mends it from a good copy; counted in
/// `hayloft_damaged_needles_total`. True if the directory took it (or took
/// it recently).
pub(crate) async fn report_damaged(state: &AppState, id: BlobId, node: &str, reason: &str) -> bool {
    state.metrics.damaged_needle();
    if !state.recent_reports.should_report(id, node) {
        return true;
    }
    match state
        .directory
        .report_damaged_needle(id.volume, id.key, node, Some(id.cookie), reason)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            state.recent_reports.forget(id, node);
            tracing::warn!(volume = id.volume, key = id.key, node, error = %e,
                "reporting a damaged needle failed");
            false
        }
    }
}
