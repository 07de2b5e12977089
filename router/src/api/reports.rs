//! What the router tells the directory about replicas it saw fail: a stale
//! replica (it may have missed a write or a delete), or one needle whose copy
//! on a replica failed its checks (only that needle is mended; the replica
//! keeps serving every other one).

use std::collections::HashMap;
use std::hash::Hash;
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

/// Things that happened lately, each remembered for `quiet` after it was
/// noted, at most `remembered` of them (past that, all are forgotten).
pub(crate) struct Lately<K> {
    noted: Mutex<HashMap<K, Instant>>,
    quiet: Duration,
    remembered: usize,
}

impl<K: Hash + Eq> Lately<K> {
    pub(crate) fn new(quiet: Duration, remembered: usize) -> Lately<K> {
        Lately {
            noted: Mutex::new(HashMap::new()),
            quiet,
            remembered,
        }
    }

    /// Whether `key` was noted less than `quiet` ago.
    pub(crate) fn holds(&self, key: &K) -> bool {
        self.noted
            .lock()
            .get(key)
            .is_some_and(|at| at.elapsed() < self.quiet)
    }

    /// Notes `key` now; false if it was noted less than `quiet` ago (and
    /// it is left as it was).
    pub(crate) fn note(&self, key: K) -> bool {
        let mut noted = self.noted.lock();
        if noted.get(&key).is_some_and(|at| at.elapsed() < self.quiet) {
            return false;
        }
        if noted.len() >= self.remembered {
            noted.clear();
        }
        noted.insert(key, Instant::now());
        true
    }

    /// Forgets `key`.
    pub(crate) fn forget(&self, key: &K) {
        self.noted.lock().remove(key);
    }
}

/// Recent damage reports, by `(volume, key, node)`.
pub(crate) type RecentReports = Lately<(u32, u64, String)>;

impl Default for RecentReports {
    fn default() -> Self {
        Lately::new(DAMAGE_REPORT_QUIET, DAMAGE_REPORTS_REMEMBERED)
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
    if !state
        .recent_reports
        .note((id.volume, id.key, node.to_owned()))
    {
        return true;
    }
    match state
        .directory
        .report_damaged_needle(id.volume, id.key, node, Some(id.cookie), reason)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            state
                .recent_reports
                .forget(&(id.volume, id.key, node.to_owned()));
            tracing::warn!(volume = id.volume, key = id.key, node, error = %e,
                "reporting a damaged needle failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_happened_lately_is_held_for_a_while_and_bounded() {
        let lately = Lately::new(Duration::from_secs(60), 2);
        assert!(lately.note(1));
        assert!(lately.holds(&1));
        assert!(!lately.note(1), "noted already");
        assert!(!lately.holds(&2));
        lately.forget(&1);
        assert!(!lately.holds(&1));
        assert!(lately.note(1) && lately.note(2));
        // A third clears the memory first.
        assert!(lately.note(3));
        assert!(!lately.holds(&1) && lately.holds(&3));
        let gone = Lately::new(Duration::ZERO, 2);
        assert!(gone.note(1));
        assert!(!gone.holds(&1), "its while is over");
    }
}
