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

/// How far apart two readings of the host's suspended time may be and still
/// count as no suspend: the two clocks behind a reading are read one after
/// the other.
const SUSPEND_SLACK: Duration = Duration::from_millis(1);

/// When a read lease was asked for: the monotonic time, and how long the
/// host had been suspended by then. A lease is counted on the monotonic
/// clock, which stops while the host is suspended, as the directory's own
/// waits do; so a node that was suspended since it asked for its lease
/// holds none: counted on that clock, it would outlast the directory's
/// reckoning by the time it slept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTime {
    at: Instant,
    suspended: Option<Duration>,
}

impl LeaseTime {
    /// Now.
    pub fn now() -> LeaseTime {
        LeaseTime {
            at: Instant::now(),
            suspended: suspended_so_far(),
        }
    }
}

/// How long the host has been suspended since it booted
/// (`CLOCK_BOOTTIME` less `CLOCK_MONOTONIC`), `None` if a clock cannot be
/// read (then no lease is held). Elsewhere than Linux, zero: suspends go
/// unseen there.
fn suspended_so_far() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid, writable timespec for the call.
            let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
            (rc == 0).then(|| {
                Duration::new(
                    u64::try_from(ts.tv_sec).unwrap_or(0),
                    u32::try_from(ts.tv_nsec).unwrap_or(0),
                )
            })
        };
        let monotonic = read(libc::CLOCK_MONOTONIC)?;
        let boot = read(libc::CLOCK_BOOTTIME)?;
        Some(boot.saturating_sub(monotonic))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Some(Duration::ZERO)
    }
}

/// How long a lease of `lease_ms` holds here: at most the longest there is,
/// less 1% and 10 ms, so that it ends before the directory's reckoning of
/// it even if this host's clock runs a little slow against the directory's.
fn held_for(lease_ms: u64) -> Duration {
    let ms = lease_ms.min(READ_LEASE_MS_MAX);
    Duration::from_millis((ms - ms / 100).saturating_sub(10))
}

/// Whether the host was suspended between two readings.
fn slept(asked: Option<Duration>, now: Option<Duration>) -> bool {
    match (asked, now) {
        (Some(asked), Some(now)) => now.saturating_sub(asked) > SUSPEND_SLACK,
        _ => true,
    }
}

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
    /// The host's suspended time when it was asked for.
    suspended: Option<Duration>,
    volumes: HashSet<u32>,
    /// Volumes whose direct reads stopped, and when.
    stopped: HashMap<u32, Instant>,
}

impl DirectReads {
    /// Takes `lease`, asked for at `asked`. A lease asked for before the
    /// one in force changes nothing; stops before `asked` are superseded.
    pub fn grant(&self, asked: LeaseTime, lease: &ReadLease) {
        let LeaseTime {
            at: asked,
            suspended,
        } = asked;
        let mut leases = self.inner.lock();
        if leases.asked.is_some_and(|a| a > asked) {
            return;
        }
        leases.asked = Some(asked);
        leases.suspended = suspended;
        leases.until = Some(asked + held_for(lease.lease_ms));
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
        let now = LeaseTime::now();
        let leases = self.inner.lock();
        leases.until.is_some_and(|until| now.at < until)
            && !slept(leases.suspended, now.suspended)
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
    let leased = || {
        if state.direct_reads().allows(volume) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            code::NO_READ_LEASE,
            format!("this node holds no read lease for volume {volume}; read through a router"),
        ))
    };
    leased()?;
    read_needle_answer(&state, volume, key, cookie, leased).await
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

    /// A lease asked for `ms` after `base`: with `ms` of a second or more,
    /// after every stop this test made, however slowly it ran.
    fn later(base: LeaseTime, ms: u64) -> LeaseTime {
        LeaseTime {
            at: base.at + Duration::from_millis(ms),
            ..base
        }
    }

    #[test]
    fn only_granted_unstopped_volumes_of_a_live_lease_are_read_directly() {
        let reads = DirectReads::default();
        assert!(!reads.allows(1), "no lease yet");
        let first = LeaseTime::now();
        reads.grant(first, &lease(60_000, &[1, 2]));
        assert!(reads.allows(1) && reads.allows(2) && !reads.allows(3));
        reads.stop(2);
        assert!(!reads.allows(2), "stopped");
        // A grant asked for before the stop does not undo it; a later one does.
        reads.grant(first, &lease(60_000, &[1, 2]));
        assert!(!reads.allows(2));
        reads.grant(later(first, 1_000), &lease(60_000, &[2]));
        assert!(reads.allows(2) && !reads.allows(1));
        // An older grant arriving late changes nothing.
        reads.grant(first, &lease(60_000, &[1]));
        assert!(reads.allows(2) && !reads.allows(1));
        // A lease that ran out covers nothing; a longer one than the most
        // holds the most.
        let fresh = DirectReads::default();
        fresh.grant(LeaseTime::now(), &lease(0, &[2]));
        assert!(!fresh.allows(2));
        fresh.grant(LeaseTime::now(), &lease(u64::MAX, &[2]));
        let until = fresh.inner.lock().until.expect("a lease");
        assert!(until <= Instant::now() + Duration::from_millis(READ_LEASE_MS_MAX));
    }

    #[test]
    fn a_lease_is_not_held_across_a_suspend_or_without_its_clocks() {
        let second = Duration::from_secs(1);
        assert!(slept(Some(second), Some(3 * second)), "slept 2 s");
        assert!(!slept(Some(second), Some(second + SUSPEND_SLACK)));
        assert!(slept(None, Some(second)) && slept(Some(second), None));
        let reads = DirectReads::default();
        let now = LeaseTime::now();
        assert!(now.suspended.is_some(), "the clocks can be read here");
        reads.grant(now, &lease(60_000, &[1]));
        assert!(reads.allows(1));
        let unknown = LeaseTime {
            suspended: None,
            ..LeaseTime::now()
        };
        reads.grant(unknown, &lease(60_000, &[1]));
        assert!(!reads.allows(1), "a lease asked for without the clocks");
    }

    #[test]
    fn too_many_stops_end_the_lease_until_a_later_one() {
        let reads = DirectReads::default();
        let before = LeaseTime::now();
        reads.grant(before, &lease(60_000, &[1, 9_999]));
        for volume in 0..=STOPS_MAX as u32 {
            reads.stop(10_000 + volume);
        }
        assert!(reads.inner.lock().stopped.len() < STOPS_MAX);
        assert!(!reads.allows(1), "the lease ended");
        reads.grant(before, &lease(60_000, &[1]));
        assert!(!reads.allows(1), "a lease asked for before is refused");
        reads.grant(later(before, 1_000), &lease(60_000, &[1]));
        assert!(reads.allows(1));
    }
}
