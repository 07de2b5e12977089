//! The directory's records as they cross the wire (JSON, documented in
//! `docs/ARCHITECTURE.md`, "Directory HTTP API") and as they are stored (the
//! same serde shapes inside a version envelope, see `redb_backend`).

use haystack::api::page_limit;
pub use haystack::api::{VOLUME_PAGE_MAX, VolumePageQuery};
use serde::{Deserialize, Serialize};

/// What a registered node does. Serialised in kebab-case (`f4-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum NodeRole {
    /// The public BLOB API.
    Router,
    /// The directory itself.
    Directory,
    /// A hot-tier Haystack store node.
    Store,
    /// A warm-tier f4 storage node.
    F4Storage,
    /// An f4 backoff node.
    Backoff,
    /// An f4 rebuilder.
    Rebuilder,
    /// The coordinator.
    Coordinator,
    /// The migrator.
    Migrator,
}

/// Liveness of a node as the directory sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeState {
    /// Heartbeating within the timeout.
    Up,
    /// Missed its heartbeats; its replicas are stale until resynced.
    Down,
}

/// What a node sends to `POST /nodes` to register (or re-register).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// Stable name chosen by the node, e.g. `store-1`.
    pub id: String,
    /// The node's role.
    pub role: NodeRole,
    /// Rack label (placement spreads replicas over racks).
    pub rack: String,
    /// Datacenter label.
    pub datacenter: String,
    /// Where the node serves HTTP: `host:port` or a base URL.
    pub address: String,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Stable name chosen by the node, e.g. `store-1`.
    pub id: String,
    /// The node's role.
    pub role: NodeRole,
    /// Rack label.
    pub rack: String,
    /// Datacenter label.
    pub datacenter: String,
    /// Where the node serves HTTP: `host:port` or a base URL.
    pub address: String,
    /// Time of the last registration or heartbeat, ms since the UNIX epoch.
    pub last_heartbeat_ms: u64,
    /// Whether the node is up or down.
    pub state: NodeState,
}

impl NodeRecord {
    /// The node's base URL: `address` itself if it has a scheme, else
    /// `http://{address}`. Never ends with a slash.
    pub fn base_url(&self) -> String {
        let address = self.address.trim_end_matches('/');
        if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}")
        }
    }

    /// Whether the node is currently `up`.
    pub fn is_up(&self) -> bool {
        self.state == NodeState::Up
    }
}

/// State of a logical volume. More states (the migration steps and `warm`)
/// arrive with later issues, hence `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VolumeState {
    /// Accepts uploads; every replica up and in sync.
    Writable,
    /// Serves reads and deletes, no uploads (a replica failed or went down).
    #[serde(rename = "readonly")]
    ReadOnly,
    /// Full or sealed for good; serves reads and deletes. Final in the hot tier.
    Locked,
    /// Being sealed into the warm tier: reads from the hot replicas, deletes
    /// refused (`503`, retry) until the seal commits or is aborted.
    Sealing,
    /// In the warm tier: erasure-coded blocks, index and journal ([`WarmVolume`]).
    Warm,
}

impl VolumeState {
    /// The state's wire name (`writable`, `readonly`, `locked`).
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Writable => "writable",
            VolumeState::ReadOnly => "readonly",
            VolumeState::Locked => "locked",
            VolumeState::Sealing => "sealing",
            VolumeState::Warm => "warm",
        }
    }

    /// Whether reads are served by the hot replicas alone and deletes land
    /// on them: `writable`, `readonly`, `locked` (not `sealing`, whose
    /// deletes may go to the warm journal, nor `warm`).
    pub fn is_hot(self) -> bool {
        matches!(
            self,
            VolumeState::Writable | VolumeState::ReadOnly | VolumeState::Locked
        )
    }
}

impl std::fmt::Display for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A logical volume: three physical replicas on store nodes in three racks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalVolume {
    /// Volume id (the first part of every BLOB id).
    pub id: u32,
    /// Current state.
    pub state: VolumeState,
    /// Node ids holding a replica, in placement order.
    pub replicas: Vec<String>,
    /// Replicas that may have missed a write or delete; read from only when
    /// no fresh replica can answer, and resynchronised by the repair loop.
    /// Always a subset of `replicas`.
    pub stale_replicas: Vec<String>,
    /// Stale replicas known to have missed an acknowledged delete: never read
    /// from until resynchronised. Always a subset of `stale_replicas`.
    #[serde(default)]
    pub missed_deletes: Vec<String>,
    /// Bumped by every stale report. A resync clears a replica's marks only if
    /// the epoch it started at is still current, so a report that arrives
    /// while it runs is never lost.
    #[serde(default)]
    pub repair_epoch: u64,
    /// Allocation time, ms since the UNIX epoch.
    pub created_ms: u64,
    /// When the volume was locked, ms since the UNIX epoch.
    pub locked_ms: Option<u64>,
    /// Last reported size of a replica's data file, in bytes.
    pub size_bytes: u64,
    /// Last reported number of needles.
    pub needle_count: u64,
    /// The encode generation of the latest seal attempt (0: none yet).
    /// Every attempt takes a new one, so blocks of two attempts never mix.
    #[serde(default)]
    pub last_generation: u64,
    /// The warm volume: the attempt being sealed while `sealing`, the
    /// committed one once `warm`.
    #[serde(default)]
    pub warm: Option<WarmVolume>,
    /// The router writing to it while it is writable, under a claim it
    /// renews; `None` if no router claims it.
    #[serde(default)]
    pub owner: Option<VolumeOwner>,
    /// When its owner last used it for an upload, ms since the UNIX epoch.
    #[serde(default)]
    pub last_write_ms: Option<u64>,
    /// Its part in the geo layer (none in a single datacenter).
    #[serde(default, skip_serializing_if = "GeoLinks::is_empty")]
    pub geo: GeoLinks,
}

/// A warm volume's part in the geo layer (`DESIGN.md`, "Geo layer"). A
/// primary (a volume BLOBs are uploaded to) keeps a full copy of its data
/// in a second datacenter until it has a buddy in another one; then the
/// XOR of the two volumes' data, in a third datacenter, takes the copies'
/// place. Copies and XOR volumes are *companions*: warm volumes of their
/// own (blocks, generation, rebuilds), with no index or journal (their
/// primaries' serve them) and no BLOB of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoLinks {
    /// Of a primary: the companion holding a full copy of its data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<u32>,
    /// Of a primary: its buddy, whose primary is in another datacenter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buddy: Option<u32>,
    /// Of a primary: the companion holding the XOR of its data and its
    /// buddy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xor: Option<u32>,
    /// Of a companion: the primaries whose data it holds (one for a copy,
    /// the two buddies for an XOR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub of: Vec<u32>,
}

impl GeoLinks {
    /// No link at all (a single datacenter's volume).
    pub fn is_empty(&self) -> bool {
        *self == GeoLinks::default()
    }

    /// Whether the volume is a companion (a copy or an XOR), not a primary.
    pub fn is_companion(&self) -> bool {
        !self.of.is_empty()
    }
}

/// A router's claim on a writable volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOwner {
    /// The router's id (`[router] id`).
    pub id: String,
    /// The process of that router (pid and start time): a second live
    /// process with the same id never takes the first one's volumes.
    #[serde(default)]
    pub instance: String,
    /// The claim holds until then, ms since the UNIX epoch.
    pub until_ms: u64,
}

/// One volume a router claims in `POST /ownership`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeClaim {
    /// The volume.
    pub volume: u32,
    /// When the router last used it for an upload.
    pub last_write_ms: Option<u64>,
}

/// Body of `POST /ownership`: a router claims or renews its writable
/// volumes (at most [`OWNERSHIP_CLAIMS_MAX`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnershipRequest {
    /// The router's id.
    pub owner: String,
    /// Its process (pid and start time).
    pub instance: String,
    /// How long the claims hold, ms.
    pub lease_ms: u64,
    /// The volumes it claims.
    pub volumes: Vec<VolumeClaim>,
}

/// Most volumes one `POST /ownership` claims.
pub const OWNERSHIP_CLAIMS_MAX: usize = 4096;

/// A warm volume as the directory (f4's name node) records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmVolume {
    /// Its encode generation: only blocks, indexes and journals of this
    /// generation are used.
    pub generation: u64,
    /// Geometry fixed at seal time.
    pub geometry: f4::Geometry,
    /// Per stripe, the node id of each block, in block order (`k` data,
    /// then `m` parity).
    pub stripes: Vec<Vec<String>>,
    /// The nodes holding the index and journal (`m + 1`, in distinct racks
    /// where the cell has them).
    pub journal_holders: Vec<String>,
    /// Holders that missed a delete: not consulted until they have merged
    /// the others' journals. Always a subset of `journal_holders`.
    #[serde(default)]
    pub stale_holders: Vec<String>,
    /// How many racks can be lost with every stripe still decodable (`m`
    /// when each block of a stripe has a rack of its own).
    pub tolerated_rack_losses: u32,
    /// Live needles sealed.
    pub needle_count: u64,
    /// Blocks that failed a read (checksums, missing, wrong generation),
    /// for the coordinator to rebuild.
    #[serde(default)]
    pub damaged_blocks: Vec<DamagedBlock>,
    /// Whether the attempt's journal takes deletes: set once its index is
    /// on every holder, before the deletes the hot replicas took meanwhile
    /// are carried over. A delete of a `sealing` volume whose journal is
    /// open goes to both tiers (see `DESIGN.md`, "Migration").
    #[serde(default)]
    pub journal_open: bool,
    /// The datacenter whose cell holds its blocks and journal (empty in
    /// records written before datacenters: every node counts).
    #[serde(default)]
    pub datacenter: String,
}

impl WarmVolume {
    /// The datacenter whose cell holds the volume: its record's, or for a
    /// record from before datacenters (empty), that of its first block's
    /// node (`datacenter_of` a node id; empty if unknown).
    pub fn home_datacenter(&self, datacenter_of: impl Fn(&str) -> Option<String>) -> String {
        if !self.datacenter.is_empty() {
            return self.datacenter.clone();
        }
        self.stripes
            .first()
            .and_then(|s| s.first())
            .and_then(|node| datacenter_of(node))
            .unwrap_or_default()
    }

    /// The block of `stripe`, other than `block`, that `node` holds.
    pub fn other_block_on(&self, stripe: u64, block: u32, node: &str) -> Option<u32> {
        self.stripes
            .get(stripe as usize)?
            .iter()
            .zip(0u32..)
            .find(|(n, b)| *b != block && *n == node)
            .map(|(_, b)| b)
    }

    /// The damage recorded of block `block` of `stripe`, if any.
    pub fn damage(&self, stripe: u64, block: u32) -> Option<&DamagedBlock> {
        self.damaged_blocks
            .iter()
            .find(|d| (d.stripe, d.block) == (stripe, block))
    }

    /// Whether block `block` of `stripe` is recorded as damaged.
    pub fn is_damaged(&self, stripe: u64, block: u32) -> bool {
        self.damage(stripe, block).is_some()
    }

    /// Whether block `block` of `stripe` is recorded with wrong bytes under
    /// good checksums ([`DamagedBlock::silent`]).
    pub fn is_silently_damaged(&self, stripe: u64, block: u32) -> bool {
        self.damage(stripe, block).is_some_and(|d| d.silent)
    }

    /// Bytes of data its blocks hold, parity included (headers and
    /// checksums, a fraction of a percent, left out).
    pub fn stored_bytes(&self) -> u64 {
        let Ok(layout) = self.geometry.layout() else {
            return 0;
        };
        let blocks = self.geometry.blocks_per_stripe() as usize;
        (0..layout.stripe_count())
            .flat_map(|stripe| (0..blocks).map(move |block| (stripe, block)))
            .filter_map(|(stripe, block)| layout.block_len_bytes(stripe, block).ok())
            .sum()
    }

    /// Holders not marked stale (node liveness is not considered).
    pub fn fresh_holders(&self) -> impl Iterator<Item = &str> {
        self.journal_holders
            .iter()
            .map(String::as_str)
            .filter(|n| !self.stale_holders.iter().any(|s| s == n))
    }
}

/// The step a volume's migration to the warm tier is at. The seal
/// attempt's own steps (encoding, verifying, flipping, draining, deleting)
/// follow one another inside one call. A job taken over before the flip
/// starts a new attempt (a new encode generation: nothing was deleted, and
/// the older attempt can never commit); one taken over after it only
/// retires the hot replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStep {
    /// Claimed; the seal has not begun.
    Locked,
    /// A storage node copies a hot replica, seals its live needles and
    /// encodes the blocks; they are placed and sent to their nodes.
    Encoding,
    /// Every live needle is read back through the warm read path.
    Verifying,
    /// The directory entry turns warm.
    Flipping,
    /// Routers' cached entries expire before the hot replicas go.
    Draining,
    /// The hot replicas are retired.
    Deleting,
    /// Done: the volume is warm.
    Warm,
    /// The last attempt failed (see `last_error`); the volume stays hot and
    /// the job is tried again after the retry delay.
    Failed,
}

impl MigrationStep {
    /// The step's wire name (`encoding`, `warm`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStep::Locked => "locked",
            MigrationStep::Encoding => "encoding",
            MigrationStep::Verifying => "verifying",
            MigrationStep::Flipping => "flipping",
            MigrationStep::Draining => "draining",
            MigrationStep::Deleting => "deleting",
            MigrationStep::Warm => "warm",
            MigrationStep::Failed => "failed",
        }
    }

    /// Whether the job is over (its claim released).
    pub fn is_final(self) -> bool {
        matches!(self, MigrationStep::Warm | MigrationStep::Failed)
    }
}

/// A volume's migration job, persisted in the directory. A migrator claims
/// it with a lease and renews the lease at every step; a job whose lease
/// ran out is taken over by the next migrator that asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationJob {
    /// The volume.
    pub volume: u32,
    /// Where the job is.
    pub step: MigrationStep,
    /// The migrator holding the claim (empty once the job is over).
    pub owner: String,
    /// Until when the claim holds, ms since the UNIX epoch.
    pub lease_until_ms: u64,
    /// First claimed.
    pub started_ms: u64,
    /// Last step change or renewal.
    pub updated_ms: u64,
    /// Attempts started.
    pub attempts: u32,
    /// Why the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A page of `GET /volumes` (and of the router's `GET /admin/volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePage {
    /// Volumes by id.
    pub volumes: Vec<LogicalVolume>,
    /// Ask again with `after` set to this for the next page; `None` at the
    /// end.
    pub next_after: Option<u32>,
}

/// A page of `GET /migrations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPage {
    /// Jobs by volume id.
    pub jobs: Vec<MigrationJob>,
    /// Ask again with `after` set to this for the next page; `None` at the
    /// end.
    pub next_after: Option<u32>,
}

/// Body of `POST /volumes/{vid}/migration/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The migrator claiming the job.
    pub owner: String,
    /// How long the claim holds unless renewed.
    pub lease_ms: u64,
}

/// Body of `POST /volumes/{vid}/migration/step`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// The migrator holding the claim.
    pub owner: String,
    /// The step reached (a final one releases the claim).
    pub step: MigrationStep,
    /// Why the attempt failed, with [`MigrationStep::Failed`].
    #[serde(default)]
    pub error: Option<String>,
    /// The claim's renewal.
    pub lease_ms: u64,
}

/// A block that failed a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedBlock {
    /// Its stripe.
    pub stripe: u64,
    /// Its index in the stripe.
    pub block: u32,
    /// The node it was read from.
    pub node: String,
    /// First reported, ms since the UNIX epoch.
    pub reported_ms: u64,
    /// Its bytes are wrong under checksums that pass (it disagrees with
    /// the rest of its stripe): no decode may read it. Other damage (a
    /// checksum failed, the file is missing) is caught by every read, so
    /// the block still serves the chunks that pass. A record from before
    /// the distinction counts as silent: it may be a deep scrub's finding.
    #[serde(default = "unknown_damage_is_silent")]
    pub silent: bool,
}

/// What a damage record or report that does not say is taken for: wrong
/// bytes under good checksums, the kind no decode may read.
fn unknown_damage_is_silent() -> bool {
    true
}

/// Body of `POST /volumes/{vid}/seal/place`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    /// The attempt's generation (from `seal/begin`).
    pub generation: u64,
    /// The sealed volume's geometry.
    pub geometry: f4::Geometry,
    /// Live needles sealed.
    pub needle_count: u64,
    /// The datacenters it may go to (those whose nodes have room for it);
    /// empty: any.
    #[serde(default)]
    pub datacenters: Vec<String>,
}

/// Body of `POST /companions`: a new companion volume of `of` (one primary:
/// its copy; two buddies: their XOR), placed in one of `datacenters` that
/// holds none of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompanionRequest {
    /// The primaries whose data it holds.
    pub of: Vec<u32>,
    /// Its geometry (for the longest of `of`'s data).
    pub geometry: f4::Geometry,
    /// The datacenters it may go to (those whose nodes have room for it).
    pub datacenters: Vec<String>,
}

/// A page of `GET /companions/dropped` ([`VolumePageQuery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedPage {
    /// Ids of dropped companions, in order.
    pub volumes: Vec<u32>,
    /// Ask again with `after` set to this for the next page; `None` at the
    /// end.
    pub next_after: Option<u32>,
}

/// Body of `POST /volumes/{vid}/seal/commit` and `.../abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    /// The attempt's generation.
    pub generation: u64,
}

/// Body of `POST /volumes/{vid}/holders/{node}/fresh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshRequest {
    /// The volume's `repair_epoch` when the merge started.
    pub epoch: u64,
}

/// Body of `POST /volumes/{vid}/blocks/damaged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DamagedBlockRequest {
    /// The encode generation read.
    pub generation: u64,
    /// The block's stripe.
    pub stripe: u64,
    /// Its index.
    pub block: u32,
    /// The node it was read from.
    pub node: String,
    /// What failed (logged).
    #[serde(default)]
    pub reason: String,
    /// Wrong bytes under good checksums ([`DamagedBlock::silent`]); a
    /// report from a router from before the distinction counts as silent.
    #[serde(default = "unknown_damage_is_silent")]
    pub silent: bool,
}

/// Body of `POST /volumes/{vid}/blocks/rebuilt`: a rebuilder restored a
/// block whole on `node` (its old node, or a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuiltBlockRequest {
    /// The encode generation rebuilt.
    pub generation: u64,
    /// The block's stripe.
    pub stripe: u64,
    /// Its index.
    pub block: u32,
    /// The node the record named when the rebuild started: the record
    /// moves only if it still does.
    pub from: String,
    /// The node that now holds the block.
    pub node: String,
    /// When the rebuild started: damage reported after it stays recorded
    /// (0, a copy's: every report stays).
    pub started_ms: u64,
    /// The holder of the stripe's rebuild job ([`RebuildJob`]), whose plan
    /// names this block: only a live claim records.
    pub owner: String,
}

/// One block of a [`RebuildJob`]: where the record has it, where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBlock {
    /// Its index in the stripe.
    pub block: u32,
    /// The node the record names.
    pub from: String,
    /// The node it is written to (`from` itself for a replaced disk).
    pub to: String,
}

/// A stripe's rebuild (or a balancer's move), persisted in the directory.
/// A coordinator claims it with a lease and renews it while it runs; a job
/// whose lease ran out, or that failed, is taken up again by the next pass
/// of any coordinator, onto the same nodes while they still fit, so that a
/// target's finished block is overwritten rather than left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildJob {
    /// The volume.
    pub volume: u32,
    /// The stripe.
    pub stripe: u64,
    /// The encode generation rebuilt.
    pub generation: u64,
    /// The blocks and where they go.
    pub blocks: Vec<JobBlock>,
    /// A move restoring the rack rule, not a repair.
    pub balance: bool,
    /// The coordinator holding the claim (empty once released).
    pub owner: String,
    /// Until when the claim holds, ms since the UNIX epoch.
    pub lease_until_ms: u64,
    /// First claimed.
    pub started_ms: u64,
    /// Last claim, renewal or release.
    pub updated_ms: u64,
    /// Attempts started.
    pub attempts: u32,
    /// Why the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl RebuildJob {
    /// Whether a coordinator holds it at `now_ms`.
    pub fn is_claimed(&self, now_ms: u64) -> bool {
        !self.owner.is_empty() && self.lease_until_ms > now_ms
    }
}

/// Body of `POST /volumes/{vid}/rebuilds/{stripe}/claim`: a coordinator
/// claims the stripe's rebuild job with this plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildClaimRequest {
    /// The coordinator claiming it.
    pub owner: String,
    /// How long the claim holds unless renewed.
    pub lease_ms: u64,
    /// The encode generation to rebuild.
    pub generation: u64,
    /// The blocks and where they go (up to k + m, each `from` the node the
    /// record names now, each `to` holding no other block of the stripe).
    /// No block: a fence, taken only where the stripe has no job, while
    /// the claim's holder removes orphan copies of its blocks.
    pub blocks: Vec<JobBlock>,
    /// A move restoring the rack rule.
    #[serde(default)]
    pub balance: bool,
}

/// Body of `POST /volumes/{vid}/rebuilds/{stripe}/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The claim's holder.
    pub owner: String,
    /// The claim's renewal.
    pub lease_ms: u64,
}

/// Body of `POST /volumes/{vid}/rebuilds/{stripe}/end`: done (the job is
/// removed), or failed (kept, released, for the next pass).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndRequest {
    /// The claim's holder.
    pub owner: String,
    /// Why the attempt failed; `None` when it is done.
    #[serde(default)]
    pub error: Option<String>,
}

/// Query of `DELETE /volumes/{vid}/rebuilds/{stripe}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropQuery {
    /// Only if the job is still at this attempt (the one the caller read).
    pub attempts: Option<u32>,
}

/// Most jobs of one `GET /rebuilds` page, and the default.
pub const REBUILD_PAGE_MAX: usize = 1024;

/// Query of `GET /rebuilds`: `after_volume` and `after_stripe` together or
/// not at all, and `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildQuery {
    /// Jobs after this volume's...
    pub after_volume: Option<u32>,
    /// ...job of this stripe.
    pub after_stripe: Option<u64>,
    /// At most this many jobs (1 to [`REBUILD_PAGE_MAX`]).
    pub limit: Option<usize>,
}

impl RebuildQuery {
    /// The `(volume, stripe)` to list after and the limit, checked.
    pub fn page(&self) -> Result<(Option<(u32, u64)>, usize), String> {
        let after = match (self.after_volume, self.after_stripe) {
            (Some(volume), Some(stripe)) => Some((volume, stripe)),
            (None, None) => None,
            _ => return Err("after_volume and after_stripe go together".into()),
        };
        Ok((after, page_limit(self.limit, REBUILD_PAGE_MAX)?))
    }
}

/// A page of `GET /rebuilds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildPage {
    /// Jobs in `(volume, stripe)` order.
    pub jobs: Vec<RebuildJob>,
    /// Ask again after this `(volume, stripe)` for the next page; `None` at
    /// the end.
    pub next_after: Option<(u32, u64)>,
}

/// Body of `POST /volumes/{vid}/holders/{node}/replace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceHolderRequest {
    /// The encode generation.
    pub generation: u64,
    /// The node that takes the lost holder's place (stale until merged).
    pub node: String,
}

impl LogicalVolume {
    /// What this volume keeps on node `id`, if anything: a replica, a
    /// journal holder's index and journal, or a block.
    pub fn part_on(&self, id: &str) -> Option<&'static str> {
        if self.replicas.iter().any(|r| r == id) {
            return Some("a replica");
        }
        let warm = self.warm.as_ref()?;
        if warm.journal_holders.iter().any(|h| h == id) {
            return Some("its index and journal");
        }
        warm.stripes
            .iter()
            .any(|stripe| stripe.iter().any(|b| b == id))
            .then_some("a block")
    }

    /// A new writable volume `id` on `replicas`, created at `created_ms`:
    /// no needle, no mark, no owner yet.
    pub fn writable(id: u32, replicas: Vec<String>, created_ms: u64) -> LogicalVolume {
        LogicalVolume {
            id,
            state: VolumeState::Writable,
            replicas,
            stale_replicas: Vec::new(),
            missed_deletes: Vec::new(),
            repair_epoch: 0,
            created_ms,
            locked_ms: None,
            size_bytes: 0,
            needle_count: 0,
            last_generation: 0,
            warm: None,
            owner: None,
            last_write_ms: None,
            geo: GeoLinks::default(),
        }
    }

    /// The datacenter of its warm cell ([`WarmVolume::home_datacenter`]);
    /// empty while it is hot.
    pub fn home_datacenter(&self, datacenter_of: impl Fn(&str) -> Option<String>) -> String {
        self.warm
            .as_ref()
            .map_or_else(String::new, |warm| warm.home_datacenter(datacenter_of))
    }

    /// Whether `node` holds a replica that is marked stale.
    pub fn is_stale(&self, node: &str) -> bool {
        self.stale_replicas.iter().any(|n| n == node)
    }

    /// Whether `node`'s replica missed an acknowledged delete.
    pub fn missed_delete(&self, node: &str) -> bool {
        self.missed_deletes.iter().any(|n| n == node)
    }

    /// Replicas not marked stale (node liveness is not considered).
    pub fn fresh_replicas(&self) -> impl Iterator<Item = &str> {
        self.replicas
            .iter()
            .map(String::as_str)
            .filter(|n| !self.is_stale(n))
    }
}

/// A half-open range `[start, end)` of needle keys leased for one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLease {
    /// First key of the range.
    pub start: u64,
    /// One past the last key of the range.
    pub end: u64,
}

/// Body of `POST /volumes/{vid}/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStateRequest {
    /// The requested state.
    pub state: VolumeState,
    /// Why (logged by the directory).
    #[serde(default)]
    pub reason: String,
}

/// Body of `POST /volumes/{vid}/leases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// How many keys to lease (at least 1).
    pub count: u64,
}

/// Body of `POST /volumes/{vid}/replicas/{node}/stale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleRequest {
    /// Why the replica is stale (logged by the directory).
    #[serde(default)]
    pub reason: String,
    /// The replica missed an acknowledged delete (it must not serve reads
    /// until resynchronised).
    #[serde(default)]
    pub missed_delete: bool,
}

/// A needle whose copy on some replica failed its checks: queued for repair
/// from a good copy, or `lost` when no replica holds one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedNeedle {
    /// The volume.
    pub volume: u32,
    /// The needle key.
    pub key: u64,
    /// The BLOB's cookie, when the report knew it.
    pub cookie: Option<u32>,
    /// The BLOB id (`VOLUME,KEYCOOKIE`), when the cookie is known.
    pub blob_id: Option<String>,
    /// Replicas whose copy failed its checks and is not mended yet.
    pub replicas: Vec<String>,
    /// Every replica was asked and none holds a good copy.
    pub lost: bool,
    /// First reported, ms since the UNIX epoch.
    pub reported_ms: u64,
}

/// Body of `POST /volumes/{vid}/needles/{key}/damaged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DamagedRequest {
    /// The replica whose copy failed its checks.
    pub node: String,
    /// The BLOB's cookie, if known.
    #[serde(default)]
    pub cookie: Option<u32>,
    /// What failed (logged by the directory).
    #[serde(default)]
    pub reason: String,
}

/// Most records of one `GET /damaged-needles` page, and the default.
pub const DAMAGED_PAGE_MAX: usize = 1024;

/// Query of `GET /damaged-needles` (and of the router's
/// `GET /admin/damaged-needles`): `after_volume` and `after_key` (lowercase
/// hex) together or not at all, and `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DamagedQuery {
    /// Records after this volume's...
    pub after_volume: Option<u32>,
    /// ...record of this key.
    pub after_key: Option<String>,
    /// At most this many records (1 to [`DAMAGED_PAGE_MAX`]).
    pub limit: Option<usize>,
}

impl DamagedQuery {
    /// The `(volume, key)` to list after and the limit, checked.
    pub fn page(&self) -> Result<(Option<(u32, u64)>, usize), String> {
        let after = match (self.after_volume, self.after_key.as_deref()) {
            (Some(volume), Some(key)) => Some((
                volume,
                haystack::api::parse_key(key)
                    .ok_or_else(|| format!("after_key {key:?} is not 1-16 lowercase hex"))?,
            )),
            (None, None) => None,
            _ => return Err("after_volume and after_key go together".into()),
        };
        Ok((after, page_limit(self.limit, DAMAGED_PAGE_MAX)?))
    }
}

/// A page of `GET /damaged-needles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedPage {
    /// Records in `(volume, key)` order.
    pub needles: Vec<DamagedNeedle>,
    /// Ask again with `after_volume` and `after_key` set to these for the
    /// next page; `None` at the end.
    pub next_after: Option<(u32, u64)>,
}

/// A JSON error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable snake_case code.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_that_does_not_say_counts_as_wrong_bytes() {
        let old: DamagedBlock =
            serde_json::from_str(r#"{"stripe":0,"block":3,"node":"n3","reported_ms":5}"#)
                .expect("a record from before the distinction");
        assert!(old.silent);
        let report: DamagedBlockRequest =
            serde_json::from_str(r#"{"generation":1,"stripe":0,"block":3,"node":"n3"}"#)
                .expect("a report from before the distinction");
        assert!(report.silent);
        let loud = DamagedBlockRequest {
            silent: false,
            ..report
        };
        let sent = serde_json::to_string(&loud).expect("encode");
        assert!(
            !serde_json::from_str::<DamagedBlockRequest>(&sent)
                .expect("decode")
                .silent
        );
    }

    #[test]
    fn node_record_json_matches_the_contract() {
        let node = NodeRecord {
            id: "f4-1".into(),
            role: NodeRole::F4Storage,
            rack: "r1".into(),
            datacenter: "dc1".into(),
            address: "127.0.0.1:9000".into(),
            last_heartbeat_ms: 7,
            state: NodeState::Up,
        };
        let json = serde_json::to_value(&node).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({"id":"f4-1","role":"f4-storage","rack":"r1","datacenter":"dc1",
                "address":"127.0.0.1:9000","last_heartbeat_ms":7,"state":"up"})
        );
        assert_eq!(node.base_url(), "http://127.0.0.1:9000");
    }

    #[test]
    fn volume_json_matches_the_contract() {
        let volume = LogicalVolume {
            id: 3,
            state: VolumeState::ReadOnly,
            replicas: vec!["a".into(), "b".into(), "c".into()],
            stale_replicas: vec!["b".into()],
            missed_deletes: vec![],
            repair_epoch: 4,
            created_ms: 1,
            locked_ms: None,
            size_bytes: 10,
            needle_count: 2,
            last_generation: 0,
            warm: None,
            owner: None,
            last_write_ms: None,
            geo: Default::default(),
        };
        let json = serde_json::to_value(&volume).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({"id":3,"state":"readonly","replicas":["a","b","c"],
                "stale_replicas":["b"],"missed_deletes":[],"repair_epoch":4,"created_ms":1,"locked_ms":null,"size_bytes":10,
                "needle_count":2,"last_generation":0,"warm":null,"owner":null,"last_write_ms":null})
        );
        let back: LogicalVolume = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, volume);
        assert_eq!(volume.fresh_replicas().collect::<Vec<_>>(), ["a", "c"]);
    }
}
