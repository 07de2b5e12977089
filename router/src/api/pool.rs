//! The pool of writable volumes this router uploads to.
//!
//! Keys of a volume must reach each of its stores in increasing order (a
//! store refuses a key not above its last one). Appends of one upload go to
//! the three replicas in parallel, and two uploads in flight on the same
//! volume could reach one store in the opposite order. So a volume serves
//! **one upload at a time**: an upload checks a volume out of the pool,
//! takes the next key of the volume's lease, appends on all replicas and
//! checks the volume back in. Upload parallelism comes from having several
//! volumes ([`super::RouterConfig::writable_volumes`], allocated on demand).
//!
//! The router writes only to volumes it owns: another router writing the
//! same volume would interleave keys. It claims them in the directory under
//! its id and renews the claims, and a restarted router takes back the
//! volumes it owned ([`super::ownership`]); a volume idle for too long is
//! taken out of the pool and locked.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::directory::types::VolumeClaim;
use crate::directory::{LogicalVolume, now_ms};

/// A writable volume owned by this router, with its current key lease.
#[derive(Debug, Clone)]
pub(crate) struct WritableVolume {
    /// The directory entry at allocation (placement never changes).
    pub(crate) volume: Arc<LogicalVolume>,
    /// Next key to hand out.
    pub(crate) next_key: u64,
    /// One past the last leased key.
    pub(crate) end_key: u64,
    /// When an upload last used it (allocation counts), ms since the UNIX
    /// epoch.
    pub(crate) last_write_ms: u64,
}

impl WritableVolume {
    /// Takes the next leased key, if the lease has one left.
    pub(crate) fn take_key(&mut self) -> Option<u64> {
        if self.next_key < self.end_key {
            let key = self.next_key;
            self.next_key += 1;
            Some(key)
        } else {
            None
        }
    }
}

/// Idle volumes and a permit per volume in use (or being allocated).
pub(crate) struct VolumePool {
    held: Arc<Mutex<Held>>,
    slots: Arc<Semaphore>,
}

/// The volumes of a pool: idle ones, and when each one it holds (idle or
/// in use) was last used.
#[derive(Default)]
struct Held {
    idle: VecDeque<WritableVolume>,
    last_writes: HashMap<u32, u64>,
    /// Volumes dropped for good: never taken back, though the directory
    /// may still list them as this router's.
    retired: HashSet<u32>,
}

/// Most retired volume ids remembered (a guard; beyond it the set is
/// cleared, and a volume still writable may be taken back).
const RETIRED_MAX: usize = 4096;

impl Held {
    fn retire(&mut self, id: u32) {
        self.last_writes.remove(&id);
        if self.retired.len() >= RETIRED_MAX {
            self.retired.clear();
        }
        self.retired.insert(id);
    }
}

/// What [`VolumePool::checkout`] gives: an idle volume, or the right to
/// allocate a new one.
pub(crate) enum Checkout {
    /// An idle volume, exclusively ours until released.
    Volume(VolumeLease),
    /// No idle volume; the caller may allocate one and then
    /// [`VolumePool::lease_new`] it with this permit.
    Allocate(OwnedSemaphorePermit),
}

impl VolumePool {
    /// A pool of at most `size` volumes.
    pub(crate) fn new(size: usize) -> VolumePool {
        VolumePool {
            held: Arc::new(Mutex::new(Held::default())),
            slots: Arc::new(Semaphore::new(size)),
        }
    }

    /// Waits for a free slot (a volume not in use by another upload).
    ///
    /// Holding a permit while the idle list is empty means the volumes in
    /// existence are all in use by other permit holders, so allocating a new
    /// one keeps the pool within its size.
    pub(crate) async fn checkout(&self) -> Checkout {
        let permit = match self.slots.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("volume pool semaphore closed"),
        };
        let volume = self.held.lock().idle.pop_front();
        match volume {
            Some(volume) => Checkout::Volume(VolumeLease {
                volume: Some(volume),
                held: self.held.clone(),
                _permit: permit,
            }),
            None => Checkout::Allocate(permit),
        }
    }

    /// Wraps a freshly allocated volume into a lease.
    pub(crate) fn lease_new(
        &self,
        volume: WritableVolume,
        permit: OwnedSemaphorePermit,
    ) -> VolumeLease {
        self.held
            .lock()
            .last_writes
            .insert(volume.volume.id, volume.last_write_ms);
        VolumeLease {
            volume: Some(volume),
            held: self.held.clone(),
            _permit: permit,
        }
    }

    /// Takes in a volume this router owned before it restarted, idle;
    /// `false` if the pool holds it already.
    pub(crate) fn adopt(&self, volume: WritableVolume) -> bool {
        let mut held = self.held.lock();
        let id = volume.volume.id;
        if held.last_writes.contains_key(&id) || held.retired.contains(&id) {
            return false;
        }
        held.last_writes
            .insert(volume.volume.id, volume.last_write_ms);
        held.idle.push_back(volume);
        true
    }

    /// Whether the pool holds volume `id` (idle or in use).
    pub(crate) fn holds(&self, id: u32) -> bool {
        self.held.lock().last_writes.contains_key(&id)
    }

    /// Every volume the pool holds, with its last use: what the router
    /// claims in the directory.
    pub(crate) fn claims(&self) -> Vec<VolumeClaim> {
        self.held
            .lock()
            .last_writes
            .iter()
            .map(|(&volume, &last)| VolumeClaim {
                volume,
                last_write_ms: Some(last),
            })
            .collect()
    }

    /// Takes out of the pool, for good, the idle volumes last used before
    /// `cutoff_ms`.
    pub(crate) fn take_idle_since(&self, cutoff_ms: u64) -> Vec<WritableVolume> {
        let mut held = self.held.lock();
        let (stale, fresh): (Vec<_>, Vec<_>) = held
            .idle
            .drain(..)
            .partition(|v| v.last_write_ms < cutoff_ms);
        held.idle = fresh.into();
        for volume in &stale {
            held.last_writes.remove(&volume.volume.id);
        }
        stale
    }

    /// Number of idle volumes (for tests and the status page).
    pub(crate) fn idle_count(&self) -> usize {
        self.held.lock().idle.len()
    }
}

/// Exclusive use of one writable volume. [`VolumeLease::release`] returns
/// it to the pool; dropping the lease any other way retires the volume (it
/// is not used again by this router), which is the safe default when an
/// upload ended in an unknown state.
pub(crate) struct VolumeLease {
    volume: Option<WritableVolume>,
    held: Arc<Mutex<Held>>,
    _permit: OwnedSemaphorePermit,
}

impl VolumeLease {
    /// The volume.
    pub(crate) fn volume_mut(&mut self) -> &mut WritableVolume {
        self.volume
            .as_mut()
            .expect("a lease holds its volume until consumed")
    }

    /// Returns the volume to the idle list for the next upload, used now.
    pub(crate) fn release(mut self) {
        if let Some(mut volume) = self.volume.take() {
            volume.last_write_ms = now_ms();
            let mut held = self.held.lock();
            held.last_writes
                .insert(volume.volume.id, volume.last_write_ms);
            held.idle.push_back(volume);
        }
    }

    /// Drops the volume from the pool for good.
    pub(crate) fn retire(mut self) {
        if let Some(volume) = self.volume.take() {
            self.held.lock().retire(volume.volume.id);
        }
    }
}

impl Drop for VolumeLease {
    fn drop(&mut self) {
        if let Some(volume) = self.volume.take() {
            self.held.lock().retire(volume.volume.id);
            tracing::warn!(
                volume = volume.volume.id,
                "volume lease dropped; retiring the volume"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: u32) -> WritableVolume {
        WritableVolume {
            volume: Arc::new(LogicalVolume::writable(
                id,
                vec!["a".into(), "b".into(), "c".into()],
                0,
            )),
            next_key: 1,
            end_key: 3,
            last_write_ms: 0,
        }
    }

    #[tokio::test]
    async fn one_upload_per_volume_and_bounded_size() {
        let pool = VolumePool::new(2);
        let Checkout::Allocate(p1) = pool.checkout().await else {
            panic!("empty pool must allocate");
        };
        let mut first = pool.lease_new(volume(1), p1);
        assert_eq!(first.volume_mut().take_key(), Some(1));
        assert_eq!(first.volume_mut().take_key(), Some(2));
        assert_eq!(first.volume_mut().take_key(), None);
        let Checkout::Allocate(p2) = pool.checkout().await else {
            panic!("volume 1 is busy: allocate a second");
        };
        let second = pool.lease_new(volume(2), p2);
        // Both slots busy: a third checkout waits.
        let waiting = tokio::time::timeout(Duration::from_millis(50), pool.checkout()).await;
        assert!(waiting.is_err());
        first.release();
        let Checkout::Volume(mut again) = pool.checkout().await else {
            panic!("the released volume is reused");
        };
        assert_eq!(again.volume_mut().volume.id, 1);
        // Retiring (or dropping) never returns a volume to the pool.
        again.retire();
        drop(second);
        assert_eq!(pool.idle_count(), 0);
        assert!(matches!(pool.checkout().await, Checkout::Allocate(_)));
    }

    #[tokio::test]
    async fn claims_adoption_and_idle_volumes() {
        let pool = VolumePool::new(2);
        assert!(pool.adopt(volume(7)));
        assert!(!pool.adopt(volume(7)), "adopted once");
        let Checkout::Volume(lease) = pool.checkout().await else {
            panic!("the adopted volume is idle");
        };
        assert!(pool.holds(7), "in use, still held");
        lease.release();
        let claims = pool.claims();
        assert_eq!(claims.len(), 1);
        assert!(
            claims[0].last_write_ms.is_some_and(|at| at > 0),
            "release stamps it"
        );
        assert!(pool.take_idle_since(1).is_empty(), "used just now");
        assert_eq!(pool.take_idle_since(u64::MAX).len(), 1);
        assert!(!pool.holds(7) && pool.claims().is_empty());
        // A volume retired after a failed upload is not taken back.
        assert!(pool.adopt(volume(8)));
        let Checkout::Volume(lease) = pool.checkout().await else {
            panic!("volume 8 is idle");
        };
        lease.retire();
        assert!(!pool.adopt(volume(8)));
    }
}
