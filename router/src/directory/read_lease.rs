//! Read leases of store nodes (`docs/ARCHITECTURE.md`, "Direct reads").
//!
//! A store node serves direct reads of a volume only under a lease from the
//! directory that names it: the node's fresh replicas of hot volumes (not
//! stale, no missed delete, the volume writable, read-only or locked).
//! Asking for one is also the node's heartbeat. The lease runs
//! `read_lease_ms` from when the node asked, so it ends on the node before
//! the directory's reckoning of it ([`ReadLeases::end`]) ends here. Both
//! count on monotonic clocks: a step of the wall clock changes nothing.
//!
//! A replica marked as having missed a delete is left out of every lease
//! granted after the mark; the mark's answer waits until the leases granted
//! before it have ended ([`ReadLeases::wait_out`]), so the router that
//! reported it acknowledges the delete only once no client can read the
//! BLOB from that replica.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use haystack::api::READ_LEASE_MS_MAX;
use haystack::api::{READ_LEASE_VOLUMES_MAX, ReadLease};

use super::DirectoryError;
use super::types::LogicalVolume;

/// Grants remembered per node; more are folded into one that names every
/// volume (a node asking faster than it should only waits longer).
const GRANTS_KEPT_MAX: usize = 16;

/// One lease granted to a node: when, and what it names (`None`: not
/// known yet, or folded: any volume).
#[derive(Debug, Clone)]
struct Grant {
    at: Instant,
    volumes: Option<Arc<HashSet<u32>>>,
    /// Holds an older grant too: it names any volume for good, whatever
    /// its own volume list turns out to be.
    folded: bool,
}

/// The leases this directory granted, by node.
#[derive(Debug)]
pub(crate) struct ReadLeases {
    lease: Duration,
    /// When this process started: a lease granted before it (by an earlier
    /// run, under any setting) ended by `started + READ_LEASE_MS_MAX`.
    started: Instant,
    /// Each node's grants that may still hold, oldest first.
    granted: Mutex<HashMap<String, VecDeque<Grant>>>,
}

impl ReadLeases {
    pub(crate) fn new(lease_ms: u64) -> ReadLeases {
        ReadLeases {
            lease: Duration::from_millis(lease_ms.min(READ_LEASE_MS_MAX)),
            started: Instant::now(),
            granted: Mutex::new(HashMap::new()),
        }
    }

    /// Records a grant to `node` at `now`, before its volumes are read (as
    /// naming every volume until [`ReadLeases::granted`] says which): a mark
    /// that the grant does not see is made after this record, and so waits
    /// for this lease.
    pub(crate) fn granting(&self, node: &str, now: Instant) {
        let mut granted = self.granted.lock();
        let grants = granted.entry(node.to_owned()).or_default();
        while grants.front().is_some_and(|g| g.at + self.lease <= now) {
            grants.pop_front();
        }
        if grants.len() >= GRANTS_KEPT_MAX
            && let Some(oldest) = grants.pop_front()
            && let Some(next) = grants.front_mut()
        {
            // The fold ends when the later grant ends and names everything.
            next.at = next.at.max(oldest.at);
            next.volumes = None;
            next.folded = true;
        }
        grants.push_back(Grant {
            at: now,
            volumes: None,
            folded: false,
        });
    }

    /// What the grant to `node` recorded at `at` names.
    pub(crate) fn granted(&self, node: &str, at: Instant, lease: &ReadLease) {
        let mut granted = self.granted.lock();
        if let Some(grant) = granted.get_mut(node).and_then(|grants| {
            grants
                .iter_mut()
                .find(|g| g.at == at && g.volumes.is_none() && !g.folded)
        }) {
            grant.volumes = Some(Arc::new(lease.volumes.iter().copied().collect()));
        }
    }

    /// The latest time a lease granted to `node` that names `volume` may
    /// still hold.
    pub(crate) fn end(&self, node: &str, volume: u32) -> Instant {
        let granted = self.granted.lock();
        let latest = granted.get(node).and_then(|grants| {
            grants
                .iter()
                .rev()
                .find(|g| g.volumes.as_ref().is_none_or(|v| v.contains(&volume)))
                .map(|g| g.at)
        });
        // A lease an earlier run granted may have been as long as any run
        // grants, whatever this run's setting.
        let earlier_run = self.started + Duration::from_millis(READ_LEASE_MS_MAX);
        latest.map_or(earlier_run, |at| (at + self.lease).max(earlier_run))
    }

    /// Waits until no lease granted to `node` so far lets it serve
    /// `volume` directly.
    pub(crate) async fn wait_out(&self, node: &str, volume: u32) {
        let end = self.end(node, volume);
        let left = end.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            tracing::info!(
                node,
                volume,
                wait_ms = left.as_millis() as u64,
                "waiting for a read lease to end"
            );
            tokio::time::sleep_until(end.into()).await;
        }
    }

    /// The lease of store node `node` over `volumes` (a
    /// [`volume_scan`](super::volume_scan)): its fresh replicas of hot
    /// volumes, at most [`READ_LEASE_VOLUMES_MAX`].
    pub(crate) fn lease(
        &self,
        node: &str,
        volumes: impl IntoIterator<Item = Result<LogicalVolume, DirectoryError>>,
    ) -> Result<ReadLease, DirectoryError> {
        let mut named = Vec::new();
        for volume in volumes {
            let volume = volume?;
            if volume.state.is_hot() && volume.fresh_replicas().any(|r| r == node) {
                named.push(volume.id);
                if named.len() == READ_LEASE_VOLUMES_MAX {
                    break;
                }
            }
        }
        Ok(ReadLease {
            lease_ms: self.lease.as_millis() as u64,
            volumes: named,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::types::VolumeState;

    #[test]
    fn a_lease_names_only_fresh_replicas_of_hot_volumes() {
        let leases = ReadLeases::new(3_000);
        let volume = |id: u32, state: VolumeState| {
            let mut v = LogicalVolume::writable(id, vec!["s1".into(), "s2".into(), "s3".into()], 0);
            v.state = state;
            v
        };
        let mut stale = volume(4, VolumeState::Locked);
        stale.stale_replicas.push("s1".into());
        let elsewhere = LogicalVolume::writable(6, vec!["s2".into()], 0);
        let volumes = [
            volume(1, VolumeState::Writable),
            volume(2, VolumeState::ReadOnly),
            volume(3, VolumeState::Locked),
            stale,
            elsewhere,
            volume(7, VolumeState::Sealing),
            volume(8, VolumeState::Warm),
        ];
        let lease_of = |leases: &ReadLeases, volumes: &[LogicalVolume]| {
            leases
                .lease("s1", volumes.iter().cloned().map(Ok))
                .expect("lease")
        };
        assert_eq!(lease_of(&leases, &volumes).volumes, vec![1, 2, 3]);
        assert_eq!(lease_of(&leases, &volumes).lease_ms, 3_000);
        assert_eq!(
            lease_of(&ReadLeases::new(60_000), &[]).lease_ms,
            READ_LEASE_MS_MAX
        );
    }

    /// A lease of `lease_ms` naming `volumes`.
    fn lease(lease_ms: u64, volumes: &[u32]) -> ReadLease {
        ReadLease {
            lease_ms,
            volumes: volumes.to_vec(),
        }
    }

    #[test]
    fn a_volume_waits_for_the_last_grant_that_named_it() {
        let leases = ReadLeases::new(3_000);
        let t = |ms: u64| leases.started + Duration::from_millis(ms);
        let lease = |volumes: &[u32]| lease(3_000, volumes);
        // Before any grant, one of an earlier run may hold until start + lease.
        assert_eq!(leases.end("s1", 1), t(3_000));
        leases.granting("s1", t(1_000));
        leases.granted("s1", t(1_000), &lease(&[1, 2]));
        leases.granting("s1", t(2_000));
        leases.granted("s1", t(2_000), &lease(&[2]));
        // Volume 1 was last named at 1 s; volume 2 at 2 s.
        assert_eq!(leases.end("s1", 1), t(4_000));
        assert_eq!(leases.end("s1", 2), t(5_000));
        // A grant whose volumes are not known yet names them all.
        leases.granting("s1", t(2_500));
        assert_eq!(leases.end("s1", 1), t(5_500));
        leases.granted("s1", t(2_500), &lease(&[]));
        assert_eq!(leases.end("s1", 1), t(4_000));
        assert_eq!(leases.end("s2", 1), t(3_000));
        // Grants that ended are forgotten; too many are folded, never lost.
        for n in 0..40 {
            let at = t(10_000 + n);
            leases.granting("s1", at);
            leases.granted("s1", at, &lease(&[]));
        }
        assert!(leases.granted.lock()["s1"].len() <= GRANTS_KEPT_MAX);
        assert!(leases.end("s1", 1) >= t(10_000 + 3_000));
    }

    #[test]
    fn an_earlier_runs_longest_lease_and_folded_grants_are_waited_for() {
        // An earlier run may have granted the longest lease there is.
        let short = ReadLeases::new(1_000);
        let t = |ms: u64| short.started + Duration::from_millis(ms);
        let lease = |volumes: &[u32]| lease(1_000, volumes);
        assert_eq!(short.end("s1", 1), t(READ_LEASE_MS_MAX));
        short.granting("s1", t(100));
        short.granted("s1", t(100), &lease(&[]));
        assert_eq!(short.end("s1", 1), t(READ_LEASE_MS_MAX));
        // A grant still being decided takes an older one (naming volume 7)
        // in when too many are kept: once decided, it still names every
        // volume, since the older one did.
        short.granting("s1", t(5_000));
        short.granted("s1", t(5_000), &lease(&[7]));
        for n in 1..=GRANTS_KEPT_MAX as u64 {
            short.granting("s1", t(5_000 + n));
        }
        for n in 2..=GRANTS_KEPT_MAX as u64 {
            short.granted("s1", t(5_000 + n), &lease(&[]));
        }
        // The grant at 5,001 ms holds the one at 5,000 ms now.
        short.granted("s1", t(5_001), &lease(&[]));
        assert_eq!(short.end("s1", 7), t(5_001 + 1_000));
        assert_eq!(short.end("s1", 8), t(5_001 + 1_000), "folded: any volume");
    }
}
