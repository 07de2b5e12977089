//! The wire types of the storage node and backoff node HTTP APIs (JSON,
//! documented in `docs/ARCHITECTURE.md`, "Warm tier HTTP APIs"), shared by
//! the services and their clients. Errors use the hot tier's JSON body
//! ([`haystack::api::ErrorBody`]) and its codes, plus [`code`].

use serde::{Deserialize, Serialize};

use crate::format::{Geometry, IndexEntry};

pub use haystack::api::{ERROR_HEADER, ErrorBody};

/// Error codes of the warm tier, beside [`haystack::api::code`].
pub mod code {
    pub use haystack::api::code::{
        BAD_REQUEST, INTERNAL, IO, NO_ROUTE, NOT_FOUND, PAYLOAD_TOO_LARGE, PEER, TIMEOUT,
        UNKNOWN_VOLUME,
    };
    /// The node holds no such block.
    pub const BLOCK_NOT_FOUND: &str = "block_not_found";
    /// The block failed its checksums where the range was read.
    pub const BLOCK_CORRUPT: &str = "block_corrupt";
    /// The block is another volume's, generation's or place's, or has
    /// another geometry than the one asked for.
    pub const WRONG_BLOCK: &str = "wrong_block";
    /// A range outside the block.
    pub const OUT_OF_RANGE: &str = "out_of_range";
    /// The key has a tombstone.
    pub const DELETED: &str = "deleted";
    /// Too few verified blocks answered to decode a range.
    pub const TOO_FEW_BLOCKS: &str = "too_few_blocks";
}

/// Header of a backoff answer: the blocks whose nodes answered they are
/// damaged, as `stripe.block` pairs separated by commas (e.g. `0.3,0.11`).
pub const FAILED_BLOCKS_HEADER: &str = "x-hayloft-failed-blocks";

/// One block of a warm volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockId {
    /// The volume.
    pub volume: u32,
    /// The encode generation that wrote it.
    pub generation: u64,
    /// Its stripe.
    pub stripe: u64,
    /// Its index in the stripe (`0..k` data, `k..k+m` parity).
    pub block: u32,
}

/// Body of `POST /blocks/read`: a byte range of a block, which must be the
/// block of this volume, generation, place and geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeRead {
    /// The block.
    pub block: BlockId,
    /// The volume's geometry, as the directory recorded it.
    pub geometry: Geometry,
    /// Offset within the block's data.
    pub offset: u64,
    /// Bytes wanted.
    pub len: u64,
}

/// Body of `POST /blocks/check`: read a whole block back from disk and
/// check its header against the geometry and every chunk's CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockCheck {
    /// The block.
    pub block: BlockId,
    /// The volume's geometry, as the directory recorded it.
    pub geometry: Geometry,
}

/// One block a storage node holds (`GET /blocks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// The block.
    pub block: BlockId,
    /// Bytes of data in it.
    pub len_bytes: u64,
    /// Bytes of its file (header and checksums included).
    pub file_bytes: u64,
}

/// A page of a storage node's block inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPage {
    /// Blocks in file-name order.
    pub blocks: Vec<BlockRecord>,
    /// Ask again with `after` set to this for the next page; `None` at the
    /// end.
    pub next_after: Option<String>,
}

/// Most records of one inventory or key page, and the default.
pub const PAGE_MAX: usize = 4096;

/// Query of the paged lists (`GET /blocks`, `GET .../live`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Records after this one (a block file name, or a key in lowercase
    /// hex).
    pub after: Option<String>,
    /// At most this many (1 to [`PAGE_MAX`]).
    pub limit: Option<usize>,
}

impl PageQuery {
    /// The limit, checked.
    pub fn limit(&self) -> Result<usize, String> {
        match self.limit.unwrap_or(PAGE_MAX) {
            0 => Err(format!("limit must be 1 to {PAGE_MAX}")),
            n if n > PAGE_MAX => Err(format!("limit must be 1 to {PAGE_MAX}")),
            n => Ok(n),
        }
    }
}

/// A warm volume's index and journal as one journal holder has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldVolume {
    /// The volume.
    pub volume: u32,
    /// Its encode generation.
    pub generation: u64,
    /// Entries in the index (live needles, less those folded away).
    pub index_entries: u64,
    /// Tombstones in the journal, not folded yet.
    pub tombstones: u64,
    /// Bytes of the index and journal files.
    pub file_bytes: u64,
}

/// Body of `POST /volumes/{vid}/{gen}/tombstones`: one delete, or the
/// deletes a migration carries over from the hot replicas (1 to
/// [`PAGE_MAX`] keys, synced together).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TombstoneRequest {
    /// The deleted keys.
    pub keys: Vec<u64>,
    /// When they were deleted, ms since the UNIX epoch.
    pub deleted_ms: u64,
}

/// A page of a holder's live needles (in its index and without a
/// tombstone): their index entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePage {
    /// Entries in increasing key order.
    pub entries: Vec<IndexEntry>,
    /// Ask again with `after` set to this (hex) for the next page.
    pub next_after: Option<u64>,
}

/// Body of `POST /volumes/{vid}/{gen}/merge`: take every delete the peers
/// know of (the union), fetching the index from the first peer that has
/// it if this node lacks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// Base URLs of fresh journal holders.
    pub peers: Vec<String>,
}

/// Answer of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeReport {
    /// Tombstones this holder appended.
    pub appended: u64,
    /// Whether the index was copied from a peer.
    pub index_copied: bool,
    /// How many of the peers it merged from (the others failed; the merge
    /// fails only if all did).
    #[serde(default)]
    pub merged_peers: u64,
}

/// Body of `POST /seal`: plan the seal of a locked hot replica (its live
/// needles, their warm index and the volume's geometry) on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealRequest {
    /// The volume.
    pub volume: u32,
    /// The seal attempt's encode generation (from the directory).
    pub generation: u64,
    /// Base URL of a store node holding a locked replica of the volume.
    pub source: String,
    /// Base URLs of its other replicas: a needle that fails its check on
    /// the source is taken from the first of them with a good copy.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// The largest block size; the volume's own is chosen to fill stripes.
    pub max_block_size_bytes: u64,
}

/// Body of `POST /volumes/{vid}/prune`: drop every file of the volume's
/// other encode generations (blocks, index, journal, staging), left by seal
/// attempts that never committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// The generation to keep: the committed one, or none while the volume
    /// is hot.
    pub keep: Option<u64>,
    /// Only generations up to this one: an aborted attempt's cleanup never
    /// touches a later attempt's files.
    #[serde(default)]
    pub up_to: Option<u64>,
}

/// Answer of `POST /volumes/{vid}/prune`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Files and staging directories removed.
    pub removed: u64,
}

/// Answer of `GET /space`: room for blocks on the node's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// Bytes still available on the file system of the node's data.
    pub available_bytes: u64,
    /// Size of that file system.
    pub total_bytes: u64,
    /// Bytes the node keeps free (its `reserve_bytes`).
    pub reserve_bytes: u64,
    /// Bytes of blocks the node accepts now: available less the reserve.
    pub room_bytes: u64,
}

/// What a seal planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealPrepared {
    /// The volume's geometry.
    pub geometry: Geometry,
    /// Live needles sealed.
    pub needles: u64,
    /// Needles dropped as deleted.
    pub dropped: u64,
}

/// Body of `POST /seal/{vid}/{gen}/distribute`: where each block and the
/// index go, and how fast the source replica may be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributeRequest {
    /// Per stripe, the base URL of the node of each block, in block order.
    pub stripes: Vec<Vec<String>>,
    /// Base URLs of the journal holders.
    pub holders: Vec<String>,
    /// Most bytes a second read from the source replica (0: no limit).
    #[serde(default)]
    pub bytes_per_second: u64,
}

/// Body of `POST /derive/{vid}/{gen}`: encode a geo companion volume
/// from the data of warm volumes (one: a full copy; two: their XOR, byte
/// by byte, the shorter read as zero-padded) and stream its blocks to
/// their nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveRequest {
    /// The companion's geometry: its data is as long as the longest source's.
    pub geometry: Geometry,
    /// Per stripe, the base URL of the node of each block, in block order.
    pub stripes: Vec<Vec<String>>,
    /// The volumes whose data it holds (one or two).
    pub sources: Vec<DeriveSource>,
    /// Base URLs of backoff nodes, for a source range whose block cannot
    /// be read.
    #[serde(default)]
    pub backoffs: Vec<String>,
    /// Most bytes a second read from the sources (0: no limit).
    #[serde(default)]
    pub bytes_per_second: u64,
    /// Only this stripe (`stripes` then names its nodes alone): a geo
    /// rebuild of blocks the volume's own cell lost. The sources may then
    /// be longer than the volume (an XOR volume is as long as the longer
    /// buddy).
    #[serde(default)]
    pub stripe: Option<u64>,
    /// Of that stripe, only these blocks are sent (all, if empty).
    #[serde(default)]
    pub blocks: Vec<u32>,
}

/// A warm volume whose data a derived volume holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveSource {
    /// The volume.
    pub volume: u32,
    /// Its committed encode generation.
    pub generation: u64,
    /// Its geometry.
    pub geometry: Geometry,
    /// Per stripe, the base URL of the node of each block, in block order;
    /// `None` where no node is up.
    pub stripes: Vec<Vec<Option<String>>>,
}

/// Body of `POST /reconstruct` on a backoff node: a byte range of one
/// block, decoded from the same range of the stripe's other blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconstructRequest {
    /// The block wanted.
    pub block: BlockId,
    /// The volume's geometry.
    pub geometry: Geometry,
    /// Offset within the block.
    pub offset: u64,
    /// Bytes wanted.
    pub len: u64,
    /// Base URL of the node of each block of the stripe, in block order;
    /// `None` where no node is known to hold one.
    pub sources: Vec<Option<String>>,
}

/// Body of a rebuilder's `POST /rebuild`: restore blocks of one stripe
/// whole from `k` of its other blocks, each onto its target node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildRequest {
    /// The volume.
    pub volume: u32,
    /// The encode generation the directory committed.
    pub generation: u64,
    /// The volume's geometry, as the directory recorded it.
    pub geometry: Geometry,
    /// The stripe.
    pub stripe: u64,
    /// Base URL of the node of each block of the stripe, in block order;
    /// `None` where no node can be read (a target's own entry is ignored).
    /// Sources are tried in this order, data blocks first.
    pub sources: Vec<Option<String>>,
    /// The blocks to restore (1 to `m`, distinct) and where each goes.
    pub targets: Vec<RebuildTarget>,
    /// Block bytes written per second, all targets together (0: no limit).
    pub bytes_per_second: u64,
}

/// One block a rebuild restores, and the storage node it goes to (its old
/// node, or a new one the coordinator chose).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildTarget {
    /// The block's index in the stripe.
    pub block: u32,
    /// Base URL of the storage node that receives it.
    pub node: String,
}

/// Answer of a rebuild: every target is written, checked and synced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildReport {
    /// Bytes read from the sources (block data only).
    pub read_bytes: u64,
    /// Bytes of block files written to the targets.
    pub written_bytes: u64,
    /// How long it took.
    pub elapsed_ms: u64,
    /// The blocks read from, in block order.
    pub sources: Vec<u32>,
    /// Sources that failed on the way and were replaced.
    pub failed_sources: Vec<FailedSource>,
}

/// A source block a rebuild could not use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSource {
    /// The block's index in the stripe.
    pub block: u32,
    /// Its node.
    pub node: String,
    /// Whether the node answered that the block is damaged (missing,
    /// corrupt, another block's), rather than failing to answer.
    pub damaged: bool,
    /// What went wrong.
    pub error: String,
}

/// Body of a rebuilder's `POST /verify`: read every block of one stripe and
/// check that its parity is what its data encodes to (a deep scrub).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The volume.
    pub volume: u32,
    /// The encode generation the directory committed.
    pub generation: u64,
    /// The volume's geometry, as the directory recorded it.
    pub geometry: Geometry,
    /// The stripe.
    pub stripe: u64,
    /// Base URL of the node of each block of the stripe, in block order
    /// (all of them: a stripe is verified whole).
    pub sources: Vec<String>,
    /// Bytes read per second, all blocks together (0: no limit).
    #[serde(default)]
    pub bytes_per_second: u64,
}

/// Answer of `POST /verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Bytes read, every chunk verified by the node that served it.
    pub read_bytes: u64,
    /// Columns whose parity did not match their data.
    pub mismatched_columns: u64,
    /// The blocks found damaged: those whose node said so, and those that
    /// disagree with the other thirteen (one per mismatched column at
    /// most, when one block alone explains it).
    pub damaged_blocks: Vec<u32>,
    /// Of those, the ones that disagree although every chunk passed its
    /// checksum: wrong bytes no read would catch. `None` from a rebuilder
    /// from before the distinction (then any of them may be).
    #[serde(default)]
    pub silent_blocks: Option<Vec<u32>>,
    /// Mismatches no single block explains.
    pub unexplained_columns: u64,
}
