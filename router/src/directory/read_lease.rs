//! Read leases of store nodes (`docs/ARCHITECTURE.md`, "Direct reads").
//!
//! A store node serves direct reads of a volume only under a lease from the
//! directory that names it: the node's fresh replicas of hot volumes (not
//! stale, no missed delete, the volume writable, read-only or locked).
//! Asking for one is also the node's heartbeat. The lease runs
//! `read_lease_ms` from when the node asked, so it ends on the node before
//! the directory's reckoning of it ([`ReadLeases::end_ms`]) ends here.
//!
//! A replica marked as having missed a delete is left out of every lease
//! granted after the mark; the mark's answer waits until the leases granted
//! before it have ended ([`ReadLeases::wait_out`]), so the router that
//! reported it acknowledges the delete only once no client can read the
//! BLOB from that replica.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use haystack::api::{READ_LEASE_VOLUMES_MAX, ReadLease};

use super::now_ms;
use super::types::{LogicalVolume, VolumeState};

/// The leases this directory granted, by node.
#[derive(Debug)]
pub(crate) struct ReadLeases {
    lease_ms: u64,
    /// When this process started: a lease granted before it (by an earlier
    /// run) ended by `started_ms + lease_ms`.
    started_ms: u64,
    /// When each node last asked for its lease (the directory's clock).
    granted_ms: Mutex<HashMap<String, u64>>,
}

impl ReadLeases {
    pub(crate) fn new(lease_ms: u64) -> ReadLeases {
        ReadLeases {
            lease_ms,
            started_ms: now_ms(),
            granted_ms: Mutex::new(HashMap::new()),
        }
    }

    /// Records a grant to `node` at `now_ms`, before its volumes are read:
    /// a mark that the grant does not see is made after this record, and
    /// so waits for this lease.
    pub(crate) fn granting(&self, node: &str, now_ms: u64) {
        let mut granted = self.granted_ms.lock();
        let at = granted.entry(node.to_owned()).or_default();
        *at = (*at).max(now_ms);
    }

    /// The latest time any lease granted to `node` may still hold.
    pub(crate) fn end_ms(&self, node: &str) -> u64 {
        let granted = self.granted_ms.lock().get(node).copied().unwrap_or(0);
        granted.max(self.started_ms) + self.lease_ms
    }

    /// Waits until every lease granted to `node` so far has ended.
    pub(crate) async fn wait_out(&self, node: &str) {
        let left = self.end_ms(node).saturating_sub(now_ms());
        if left > 0 {
            tracing::info!(node, wait_ms = left, "waiting for a read lease to end");
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
    }

    /// The lease of store node `node` over `volumes`: its fresh replicas
    /// of hot volumes, at most [`READ_LEASE_VOLUMES_MAX`].
    pub(crate) fn lease(&self, node: &str, volumes: &[LogicalVolume]) -> ReadLease {
        let volumes = volumes
            .iter()
            .filter(|v| {
                matches!(
                    v.state,
                    VolumeState::Writable | VolumeState::ReadOnly | VolumeState::Locked
                ) && v.replicas.iter().any(|r| r == node)
                    && !v.is_stale(node)
                    && !v.missed_delete(node)
            })
            .map(|v| v.id)
            .take(READ_LEASE_VOLUMES_MAX)
            .collect();
        ReadLease {
            lease_ms: self.lease_ms,
            volumes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_names_only_fresh_replicas_of_hot_volumes_and_ends_after_its_grant() {
        let leases = ReadLeases::new(3_000);
        let volume = |id: u32, state: VolumeState| {
            let mut v = LogicalVolume::writable(id, vec!["s1".into(), "s2".into(), "s3".into()], 0);
            v.state = state;
            v
        };
        let mut stale = volume(4, VolumeState::Locked);
        stale.stale_replicas.push("s1".into());
        let mut missed = volume(5, VolumeState::Locked);
        missed.missed_deletes.push("s1".into());
        let elsewhere = LogicalVolume::writable(6, vec!["s2".into()], 0);
        let volumes = [
            volume(1, VolumeState::Writable),
            volume(2, VolumeState::ReadOnly),
            volume(3, VolumeState::Locked),
            stale,
            missed,
            elsewhere,
            volume(7, VolumeState::Sealing),
            volume(8, VolumeState::Warm),
        ];
        assert_eq!(leases.lease("s1", &volumes).volumes, vec![1, 2, 3]);
        assert_eq!(leases.lease("s1", &volumes).lease_ms, 3_000);
        // Before any grant, a lease of an earlier run may hold until
        // start + lease; after one, until that grant + lease.
        assert_eq!(leases.end_ms("s1"), leases.started_ms + 3_000);
        leases.granting("s1", leases.started_ms + 10_000);
        leases.granting("s1", leases.started_ms + 5_000);
        assert_eq!(leases.end_ms("s1"), leases.started_ms + 13_000);
        assert_eq!(leases.end_ms("s2"), leases.started_ms + 3_000);
    }
}
