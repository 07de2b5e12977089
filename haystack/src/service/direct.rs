//! Direct reads (`docs/ARCHITECTURE.md`, "Direct reads"): a client that
//! looked a volume up reads a BLOB from the store node itself, as Haystack
//! and SeaweedFS clients do, with the same cookie check and verification.
//!
//! Only the directory knows whether this replica missed a delete (it is
//! stale) or the volume left the hot tier, so a node serves direct reads
//! only of the volumes its current read lease names. The lease is counted
//! from when the node asked for it, and the directory waits for it to end
//! before it acknowledges a delete this replica missed. A migration stops a
//! volume's direct reads here before it flips the volume to warm
//! ([`stop_direct_reads`]); a grant asked for after that stop decides again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use parking_lot::Mutex;

use super::StoreNodeState;
use super::error::ApiError;
use super::handlers::{NeedlePath, read_needle_answer, read_needle_id};
use super::params::volume_id;
use crate::api::{READ_LEASE_MS_MAX, READ_LEASE_VOLUMES_MAX, ReadLease, code};

/// Stops remembered at most; one more forgets them all and every lease
/// asked for before it (no direct reads until the next heartbeat).
const STOPS_MAX: usize = 4096;

/// The direct reads a store node may serve now: its read lease, and the
/// volumes stopped since it was asked for. Clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct DirectReads {
    inner: Arc<Mutex<Leases>>,
}

#[derive(Debug, Default)]
struct Leases {
    /// When the lease ends; `None` before the first grant.
    until: Option<Instant>,
    /// When the lease in force was asked for; a lease asked for before this
    /// is refused.
    asked: Option<Instant>,
    volumes: HashSet<u32>,
    /// Volumes whose direct reads stopped, and when.
    stopped: HashMap<u32, Instant>,
}

impl DirectReads {
    /// Takes `lease`, asked for at `asked`. A lease asked for before the
    /// one in force changes nothing; stops before `asked` are superseded.
    pub fn grant(&self, asked: Instant, lease: &ReadLease) {
        let mut leases = self.inner.lock();
        if leases.asked.is_some_and(|a| a > asked) {
            return;
        }
        leases.asked = Some(asked);
        leases.until = Some(asked + Duration::from_millis(lease.lease_ms.min(READ_LEASE_MS_MAX)));
        leases.volumes = lease
            .volumes
            .iter()
            .copied()
            .take(READ_LEASE_VOLUMES_MAX)
            .collect();
        leases.stopped.retain(|_, at| *at >= asked);
    }

    /// Ends direct reads of `volume` until a lease asked for later grants
    /// them again.
    pub fn stop(&self, volume: u32) {
        let now = Instant::now();
        let mut leases = self.inner.lock();
        if leases.stopped.len() >= STOPS_MAX && !leases.stopped.contains_key(&volume) {
            leases.stopped.clear();
            leases.volumes.clear();
            leases.until = None;
            leases.asked = Some(now);
            return;
        }
        leases.stopped.insert(volume, now);
    }

    /// Whether `volume` may be read directly now.
    pub fn allows(&self, volume: u32) -> bool {
        let leases = self.inner.lock();
        leases.until.is_some_and(|until| Instant::now() < until)
            && leases.volumes.contains(&volume)
            && !leases.stopped.contains_key(&volume)
    }
}

/// `GET /direct/volumes/{vid}/needles/{key}?cookie=C`: the needle as
/// `GET /volumes/{vid}/needles/{key}` answers it, if the read lease covers
/// the volume; otherwise `409 no_read_lease`.
pub(crate) async fn direct_read(
    State(state): State<StoreNodeState>,
    path: NeedlePath,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (volume, key, cookie) = read_needle_id(path, &uri, || Query::try_from_uri(&uri))?;
    if !state.direct_reads().allows(volume) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            code::NO_READ_LEASE,
            format!("this node holds no read lease for volume {volume}; read through a router"),
        ));
    }
    read_needle_answer(&state, volume, key, cookie).await
}

/// `POST /volumes/{vid}/direct-reads/stop`: ends direct reads of the volume
/// here (a migration, before its flip); `204`, whether or not the node
/// holds the volume.
pub(crate) async fn stop_direct_reads(
    State(state): State<StoreNodeState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let volume = volume_id(path)?;
    state.direct_reads().stop(volume);
    tracing::info!(volume, "direct reads stopped");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(lease_ms: u64, volumes: &[u32]) -> ReadLease {
        ReadLease {
            lease_ms,
            volumes: volumes.to_vec(),
        }
    }

    #[test]
    fn only_granted_unstopped_volumes_of_a_live_lease_are_read_directly() {
        let reads = DirectReads::default();
        assert!(!reads.allows(1), "no lease yet");
        let first = Instant::now();
        reads.grant(first, &lease(60_000, &[1, 2]));
        assert!(reads.allows(1) && reads.allows(2) && !reads.allows(3));
        reads.stop(2);
        assert!(!reads.allows(2), "stopped");
        // A grant asked for before the stop does not undo it; a later one does.
        reads.grant(first, &lease(60_000, &[1, 2]));
        assert!(!reads.allows(2));
        std::thread::sleep(Duration::from_millis(2));
        reads.grant(Instant::now(), &lease(60_000, &[2]));
        assert!(reads.allows(2) && !reads.allows(1));
        // An older grant arriving late changes nothing.
        reads.grant(first, &lease(60_000, &[1]));
        assert!(reads.allows(2) && !reads.allows(1));
        // A lease that ran out covers nothing; a longer one than the most
        // holds the most.
        reads.grant(Instant::now(), &lease(0, &[2]));
        assert!(!reads.allows(2));
        reads.grant(Instant::now(), &lease(u64::MAX, &[2]));
        let until = reads.inner.lock().until.expect("a lease");
        assert!(until <= Instant::now() + Duration::from_millis(READ_LEASE_MS_MAX));
    }

    #[test]
    fn too_many_stops_end_the_lease_until_a_later_one() {
        let reads = DirectReads::default();
        let before = Instant::now();
        reads.grant(before, &lease(60_000, &[1, 9_999]));
        for volume in 0..=STOPS_MAX as u32 {
            reads.stop(10_000 + volume);
        }
        assert!(reads.inner.lock().stopped.len() < STOPS_MAX);
        assert!(!reads.allows(1), "the lease ended");
        reads.grant(before, &lease(60_000, &[1]));
        assert!(!reads.allows(1), "a lease asked for before is refused");
        std::thread::sleep(Duration::from_millis(2));
        reads.grant(Instant::now(), &lease(60_000, &[1]));
        assert!(reads.allows(1));
    }
}
