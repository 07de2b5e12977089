//! The directory: the single source of truth for nodes, logical volumes and
//! key leases (Haystack's Directory, f4's name node).
//!
//! - [`types`]: the records, shaped exactly as the JSON of the
//!   "Directory HTTP API" in `docs/ARCHITECTURE.md`.
//! - [`Directory`]: the backend trait. [`RedbDirectory`] (one embedded redb
//!   file) is the default; a distributed backend (etcd) comes later and must
//!   pass the same conformance suite (`conformance`, hidden from the docs).
//! - [`service`]: the directory's HTTP service with its down-marker and
//!   replica repair loops; [`client`]: the typed client every other role uses.
//!
//! Time always comes in as a parameter (`now_ms`, ms since the UNIX epoch), so
//! backends are deterministic under test.

pub mod client;
#[doc(hidden)]
pub mod conformance;
mod error;
mod read_lease;
pub use read_lease::READ_LEASE_MS_MAX;
pub mod redb_backend;
mod repair;
pub mod service;
mod stores;
pub mod types;
pub(crate) mod warm;

use haystack::api::{PageCursor, next_after};

pub use client::{DirectoryClient, DirectoryClientError, VolumePages};
pub use error::DirectoryError;
pub use redb_backend::RedbDirectory;
pub use service::{DirectoryConfig, run};
pub use types::{
    DamagedBlock, DamagedNeedle, KeyLease, LogicalVolume, NodeRecord, NodeRegistration, NodeRole,
    NodeState, VolumeState, WarmVolume,
};

/// Number of replicas of a hot logical volume, each in its own rack.
pub const REPLICA_COUNT: usize = 3;

/// The first needle key ever leased for a volume (key 0 is never used).
pub const FIRST_KEY: u64 = 1;

/// A directory backend. Every mutation is atomic and durable before it
/// returns. Methods are synchronous; async callers use `spawn_blocking`.
pub trait Directory: Send + Sync {
    /// Registers `node`, or re-registers it (role, rack, datacenter and
    /// address are replaced). The node becomes `up` with a heartbeat at `now_ms`.
    fn register_node(
        &self,
        node: NodeRegistration,
        now_ms: u64,
    ) -> Result<NodeRecord, DirectoryError>;

    /// Records a heartbeat at `now_ms`; a `down` node comes back `up` (its
    /// replicas stay stale until repaired). [`DirectoryError::UnknownNode`]
    /// if the node never registered.
    fn heartbeat(&self, id: &str, now_ms: u64) -> Result<NodeRecord, DirectoryError>;

    /// Every registered node, ordered by id.
    fn list_nodes(&self) -> Result<Vec<NodeRecord>, DirectoryError>;

    /// Forgets node `id` for good (a router, a rebuilder or a node taken
    /// out of service): only a `down` node that no volume names as a
    /// replica, a journal holder or a block's node
    /// ([`DirectoryError::NodeInUse`] otherwise). Returns its last record;
    /// [`DirectoryError::UnknownNode`] if it never registered. It may
    /// register again later, as a new node.
    fn remove_node(&self, id: &str) -> Result<NodeRecord, DirectoryError>;

    /// Marks `down` every `up` node whose last heartbeat is more than
    /// `timeout_ms` before `now_ms`. Each of their replicas becomes stale and
    /// each `writable` volume with such a replica turns `readonly`.
    /// Returns the volumes that changed.
    fn mark_down_expired(
        &self,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Result<Vec<LogicalVolume>, DirectoryError>;

    /// Allocates a new `writable` volume on [`REPLICA_COUNT`] `up` store
    /// nodes in distinct racks, preferring the nodes with the fewest
    /// replicas. [`DirectoryError::NotEnoughRacks`] if that is impossible.
    fn allocate_volume(&self, now_ms: u64) -> Result<LogicalVolume, DirectoryError>;

    /// One volume; [`DirectoryError::UnknownVolume`] if absent.
    fn volume(&self, id: u32) -> Result<LogicalVolume, DirectoryError>;

    /// Up to `limit` volumes after `after`, by id.
    fn volumes(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<LogicalVolume>, DirectoryError>;

    /// Every volume, by id, read a page at a time: for the directory's own
    /// passes over all volumes (answers to clients are pages).
    fn list_volumes(&self) -> Result<Vec<LogicalVolume>, DirectoryError> {
        volume_scan(self).collect()
    }

    /// Changes a volume's state. `locked` is final (re-locking is a no-op);
    /// `writable` needs every replica `up` and none stale.
    fn set_volume_state(
        &self,
        id: u32,
        state: VolumeState,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Marks `node`'s replica of volume `id` stale (and, with
    /// `missed_delete`, as having missed an acknowledged delete); a
    /// `writable` volume turns `readonly`. Every call bumps the volume's
    /// `repair_epoch`.
    fn mark_replica_stale(
        &self,
        id: u32,
        node: &str,
        missed_delete: bool,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Clears the stale and missed-delete marks of `node`'s replica after a
    /// resync that started when the volume's `repair_epoch` was `epoch`. If
    /// the epoch has moved since (a report arrived meanwhile), nothing
    /// changes and the replica stays stale for the next pass.
    fn clear_replica_stale(
        &self,
        id: u32,
        node: &str,
        epoch: u64,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Forgets a volume whose allocation failed before any key was leased
    /// for it (nothing was ever written to it).
    /// [`DirectoryError::InvalidTransition`] once a lease was taken.
    fn discard_volume(&self, id: u32) -> Result<(), DirectoryError>;

    /// Records that `node`'s copy of needle `key` of volume `id` failed its
    /// checks (the record is created, or the node added to it).
    fn report_damaged_needle(
        &self,
        id: u32,
        key: u64,
        node: &str,
        cookie: Option<u32>,
        now_ms: u64,
    ) -> Result<DamagedNeedle, DirectoryError>;

    /// Up to `limit` damaged-needle records after `(volume, key)` `after`,
    /// in that order.
    fn damaged_needles(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<DamagedNeedle>, DirectoryError>;

    /// `node`'s copy of needle `key` is good again (or its replica was
    /// rebuilt from checked copies): it leaves the record, and a record left
    /// with no damaged replica (and not lost) is removed. `None` if no
    /// record remains.
    fn resolve_damaged_needle(
        &self,
        id: u32,
        key: u64,
        node: &str,
    ) -> Result<Option<DamagedNeedle>, DirectoryError>;

    /// Marks the record of needle `key` lost: no replica holds a good copy.
    fn mark_needle_lost(&self, id: u32, key: u64) -> Result<DamagedNeedle, DirectoryError>;

    /// Claims or renews for process `instance` of router `owner`, for
    /// `lease_ms` from `now_ms`, each `writable` volume of `claims` that no
    /// other process holds under a live claim (recording when it last wrote
    /// it), and answers every writable volume it holds afterwards: those of
    /// an earlier process of `owner` too once their claim ran out (renewed
    /// to it), so that a restarted router takes them back, while a second
    /// live process with the same id never does.
    fn own_volumes(
        &self,
        owner: &str,
        instance: &str,
        claims: &[types::VolumeClaim],
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<LogicalVolume>, DirectoryError>;

    /// Leases `count` needle keys of a `writable` volume: a half-open range
    /// strictly above every range leased before for it, persisted before
    /// the answer.
    fn lease_keys(&self, id: u32, count: u64) -> Result<KeyLease, DirectoryError>;

    /// Records a volume's size and needle count as last reported.
    fn update_volume_sizes(
        &self,
        id: u32,
        size_bytes: u64,
        needle_count: u64,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Starts a seal attempt of a `locked` volume, or a new one of a
    /// `sealing` volume: it turns `sealing` under a new encode generation
    /// (`last_generation`), and an earlier attempt's placement is dropped.
    fn begin_seal(&self, id: u32) -> Result<LogicalVolume, DirectoryError>;

    /// Places the blocks and journal holders of the current attempt on the
    /// `up` f4 storage nodes (see [`types::WarmVolume`]), the blocks of a
    /// stripe on distinct racks. With fewer racks than blocks in a stripe
    /// it is [`DirectoryError::NotEnoughRacks`] unless `allow_fewer_racks`.
    fn place_warm(
        &self,
        id: u32,
        request: types::PlaceRequest,
        allow_fewer_racks: bool,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Commits the placed attempt `generation`: the volume turns `warm`.
    fn commit_warm(&self, id: u32, generation: u64) -> Result<LogicalVolume, DirectoryError>;

    /// Opens the journal of the placed attempt `generation` to deletes
    /// ([`types::WarmVolume::journal_open`]); idempotent.
    fn open_journal(&self, id: u32, generation: u64) -> Result<LogicalVolume, DirectoryError>;

    /// Drops attempt `generation`: the volume is `locked` again, its hot
    /// replicas serving as before.
    fn abort_seal(&self, id: u32, generation: u64) -> Result<LogicalVolume, DirectoryError>;

    /// Marks journal holder `node` of a warm (or sealing) volume stale
    /// (`fresh_at: None`; every call bumps the volume's `repair_epoch`), or
    /// fresh again after a merge that started at epoch `fresh_at`: if the
    /// epoch has moved since (it missed another delete meanwhile), it stays
    /// stale for the next merge.
    fn set_holder_stale(
        &self,
        id: u32,
        node: &str,
        fresh_at: Option<u64>,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Records a block that failed a read (once per block).
    fn report_damaged_block(
        &self,
        id: u32,
        request: &types::DamagedBlockRequest,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Records a block restored whole on `request.node`: the stripe's
    /// record names that node, if it still named `request.from`
    /// ([`DirectoryError::Conflict`] otherwise, or if the node holds
    /// another block of the stripe), damage reported before
    /// `request.started_ms` is cleared, and the tolerance recomputed.
    /// Refused unless `request.owner` holds the stripe's rebuild job at
    /// `now_ms` and its plan moves this block from `request.from` to
    /// `request.node` ([`DirectoryError::JobClaimed`], `BadRequest`).
    fn record_rebuilt_block(
        &self,
        id: u32,
        request: &types::RebuiltBlockRequest,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Claims the rebuild job of stripe `stripe` of volume `id` with
    /// `request`'s plan until `now_ms + lease_ms`: a new job, or one
    /// released or whose claim ran out (an attempt more); a plan of no
    /// block (a fence) only where the stripe has no job. Each block's
    /// `from` must be the node the record names and no `to` may hold
    /// another block of the stripe ([`DirectoryError::PlacementConflict`]);
    /// a live claim, even the owner's own, is
    /// [`DirectoryError::JobClaimed`].
    fn claim_rebuild(
        &self,
        id: u32,
        stripe: u64,
        request: &types::RebuildClaimRequest,
        now_ms: u64,
    ) -> Result<types::RebuildJob, DirectoryError>;

    /// Renews the holder's claim ([`DirectoryError::JobClaimed`] if it is
    /// not, or no longer, the holder's).
    fn renew_rebuild(
        &self,
        id: u32,
        stripe: u64,
        request: &types::RenewRequest,
        now_ms: u64,
    ) -> Result<types::RebuildJob, DirectoryError>;

    /// Ends the holder's attempt: done (the job is removed; `None`), or
    /// failed (kept with its error, its claim released).
    fn end_rebuild(
        &self,
        id: u32,
        stripe: u64,
        request: &types::EndRequest,
        now_ms: u64,
    ) -> Result<Option<types::RebuildJob>, DirectoryError>;

    /// Removes a job no one holds (its stripe needs it no more), if it is
    /// still at attempt `attempts` when given; a live claim or another
    /// attempt is [`DirectoryError::JobClaimed`]; no job is no error.
    fn drop_rebuild(
        &self,
        id: u32,
        stripe: u64,
        attempts: Option<u32>,
        now_ms: u64,
    ) -> Result<(), DirectoryError>;

    /// Up to `limit` rebuild jobs after `(volume, stripe)` `after`, in
    /// that order.
    fn rebuilds(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<types::RebuildJob>, DirectoryError>;

    /// Replaces journal holder `node` (lost) by `request.node`, which is
    /// marked stale until it has merged the others' journals (its index is
    /// copied then); bumps the volume's `repair_epoch`. The last fresh
    /// holder is never replaced ([`DirectoryError::PlacementConflict`]):
    /// only the fresh ones are known to hold every acknowledged delete.
    fn replace_holder(
        &self,
        id: u32,
        node: &str,
        request: &types::ReplaceHolderRequest,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Claims volume `id`'s migration job for `owner` until `now_ms +
    /// lease_ms`: a new job, one that is over (it starts again at
    /// `locked`), or one whose claim ran out (taken over at the step it
    /// reached). A live claim, even `owner`'s own, is
    /// [`DirectoryError::JobClaimed`]: a claim is renewed by its steps
    /// ([`Directory::update_migration`]). A claim counts an attempt.
    fn claim_migration(
        &self,
        id: u32,
        owner: &str,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<types::MigrationJob, DirectoryError>;

    /// Moves `owner`'s job of volume `id` to `request.step` and renews its
    /// claim; a final step releases it. A job claimed by another owner
    /// meanwhile is [`DirectoryError::JobClaimed`].
    fn update_migration(
        &self,
        id: u32,
        request: &types::StepRequest,
        now_ms: u64,
    ) -> Result<types::MigrationJob, DirectoryError>;

    /// Creates a companion volume of `request.of` ([`types::GeoLinks`]):
    /// `sealing`, generation 1, its blocks placed in the least loaded of
    /// `request.datacenters` (any, if empty) that holds none of `of`, no
    /// journal holders; and links each of `of` to it (a copy, or buddies
    /// with their XOR), all in one transaction. Each of `of` must be a warm
    /// primary without a buddy (nor a copy, for a copy), and buddies in two
    /// datacenters ([`DirectoryError::PlacementConflict`]). It turns warm by
    /// [`Directory::commit_warm`].
    fn create_companion(
        &self,
        request: &types::CompanionRequest,
        allow_fewer_racks: bool,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError>;

    /// Removes companion `id`, its migration job and its primaries' links
    /// to it. A warm one only if it is a copy whose primary's XOR volume is
    /// warm ([`DirectoryError::PlacementConflict`]); one whose job is
    /// claimed (at `now_ms`) only by that claim's `owner`
    /// ([`DirectoryError::JobClaimed`]), so that a migrator building it
    /// never writes the blocks of a volume that is gone. Its block files
    /// are the caller's to remove.
    fn drop_companion(
        &self,
        id: u32,
        owner: Option<&str>,
        now_ms: u64,
    ) -> Result<(), DirectoryError>;

    /// Up to `limit` ids of dropped companions after `after`, in order
    /// ([`Directory::drop_companion`]): files of theirs left on a node are
    /// garbage.
    fn dropped_companions(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<u32>, DirectoryError>;

    /// Up to `limit` migration jobs of volumes after `after`, by volume id.
    fn migrations(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<types::MigrationJob>, DirectoryError>;
}

/// Every volume of `directory`, by id, read a page of
/// [`types::VOLUME_PAGE_MAX`] at a time; an error ends the scan.
pub fn volume_scan<D: Directory + ?Sized>(directory: &D) -> VolumeScan<'_, D> {
    VolumeScan {
        directory,
        cursor: PageCursor::default(),
        page: Vec::new().into_iter(),
    }
}

/// The iterator of [`volume_scan`].
pub struct VolumeScan<'a, D: ?Sized> {
    directory: &'a D,
    cursor: PageCursor<u32>,
    page: std::vec::IntoIter<LogicalVolume>,
}

impl<D: Directory + ?Sized> Iterator for VolumeScan<'_, D> {
    type Item = Result<LogicalVolume, DirectoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(volume) = self.page.next() {
            return Some(Ok(volume));
        }
        let after = self.cursor.next_page()?;
        let page = match self.directory.volumes(after, types::VOLUME_PAGE_MAX) {
            Ok(page) => page,
            Err(e) => {
                self.cursor.advance(None);
                return Some(Err(e));
            }
        };
        let next = next_after(&page, types::VOLUME_PAGE_MAX, |v| v.id);
        if !self.cursor.advance(next) {
            self.cursor.advance(None);
            return Some(Err(DirectoryError::Internal(
                "volume pages do not advance".into(),
            )));
        }
        self.page = page.into_iter();
        self.page.next().map(Ok)
    }
}

/// Current wall-clock time in ms since the UNIX epoch (0 if the clock is
/// before the epoch).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
