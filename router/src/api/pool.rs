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
//! The router writes only to volumes it allocated itself: another router
//! writing the same volume would interleave keys. Volumes left writable by a
//! previous run of the router are not reused (they stay readable).

use std::collections::VecDeque;
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::directory::LogicalVolume;

/// A writable volume owned by this router, with its current key lease.
#[derive(Debug, Clone)]
pub(crate) struct WritableVolume {
    /// The directory entry at allocation (placement never changes).
    pub(crate) volume: Arc<LogicalVolume>,
    /// Next key to hand out.
    pub(crate) next_key: u64,
    /// One past the last leased key.
    pub(crate) end_key: u64,
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
    idle: Arc<Mutex<VecDeque<WritableVolume>>>,
    slots: Arc<Semaphore>,
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
            idle: Arc::new(Mutex::new(VecDeque::new())),
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
        let volume = self.idle.lock().pop_front();
        match volume {
            Some(volume) => Checkout::Volume(VolumeLease {
                volume: Some(volume),
                idle: self.idle.clone(),
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
        VolumeLease {
            volume: Some(volume),
            idle: self.idle.clone(),
            _permit: permit,
        }
    }

    /// Number of idle volumes (for tests and the status page).
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

/// Exclusive use of one writable volume. [`VolumeLease::release`] returns
/// it to the pool; dropping the lease any other way retires the volume (it
/// is not used again by this router), which is the safe default when an
/// upload ended in an unknown state.
pub(crate) struct VolumeLease {
    volume: Option<WritableVolume>,
    idle: Arc<Mutex<VecDeque<WritableVolume>>>,
    _permit: OwnedSemaphorePermit,
}

impl VolumeLease {
    /// The volume.
    pub(crate) fn volume_mut(&mut self) -> &mut WritableVolume {
        self.volume
            .as_mut()
            .expect("a lease holds its volume until consumed")
    }

    /// Returns the volume to the idle list for the next upload.
    pub(crate) fn release(mut self) {
        if let Some(volume) = self.volume.take() {
            self.idle.lock().push_back(volume);
        }
    }

    /// Drops the volume from the pool for good.
    pub(crate) fn retire(mut self) {
        self.volume = None;
    }
}

impl Drop for VolumeLease {
    fn drop(&mut self) {
        if let Some(volume) = self.volume.take() {
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
    use crate::directory::VolumeState;

    fn volume(id: u32) -> WritableVolume {
        WritableVolume {
            volume: Arc::new(LogicalVolume {
                id,
                state: VolumeState::Writable,
                replicas: vec!["a".into(), "b".into(), "c".into()],
                stale_replicas: Vec::new(),
                missed_deletes: Vec::new(),
                repair_epoch: 0,
                created_ms: 0,
                locked_ms: None,
                size_bytes: 0,
                needle_count: 0,
                last_generation: 0,
                warm: None,
            }),
            next_key: 1,
            end_key: 3,
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
}
