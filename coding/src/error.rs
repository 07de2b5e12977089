//! The crate's one error type, [`CodingError`], and its `Result` alias.
//!
//! Every variant names something a caller can act on: a bad configuration,
//! a CPU the SIMD kernels cannot run on, shards of the wrong number or
//! shape, too many lost shards, a corrupt checksum record, a checksum
//! mismatch at a known chunk, or an IO failure of a caller-supplied source
//! or sink (the crate itself does no IO).

use std::io;

/// Shorthand for results of this crate.
pub type Result<T, E = CodingError> = std::result::Result<T, E>;

/// Everything that can go wrong in the `coding` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodingError {
    /// The RS(k, m) parameters are outside what the crate supports
    /// (1 ≤ k ≤ 32, 1 ≤ m ≤ 16).
    #[error("unsupported Reed-Solomon parameters RS({data_shards}, {parity_shards}): need 1 <= k <= {max_data}, 1 <= m <= {max_parity}", max_data = crate::MAX_DATA_SHARDS, max_parity = crate::MAX_PARITY_SHARDS)]
    InvalidShardCounts {
        /// Requested number of data shards (k).
        data_shards: usize,
        /// Requested number of parity shards (m).
        parity_shards: usize,
    },
    /// A size parameter (block size, chunk size, column chunk size) is
    /// zero or out of range.
    #[error("invalid {what}: {value}")]
    InvalidSize {
        /// Which parameter.
        what: &'static str,
        /// The value given.
        value: u64,
    },
    /// The CPU lacks instructions the compiled SIMD kernels need. Use
    /// [`crate::BackendKind::Portable`] (slow, but runs anywhere) or run on a
    /// CPU with the listed features.
    #[error(
        "this CPU lacks {missing}, which the {backend} erasure-coding backend was compiled to use; run on a Haswell or newer CPU, or choose the portable backend"
    )]
    UnsupportedCpu {
        /// The backend that cannot run.
        backend: &'static str,
        /// The missing CPU feature(s).
        missing: &'static str,
    },
    /// The requested backend was not compiled in (e.g. `isal` without the
    /// cargo feature).
    #[error("erasure-coding backend {backend} is not available in this build")]
    BackendUnavailable {
        /// The backend asked for.
        backend: &'static str,
    },
    /// A call passed the wrong number of shards.
    #[error("expected {expected} shards, got {actual}")]
    ShardCount {
        /// The number the codec needs.
        expected: usize,
        /// The number passed.
        actual: usize,
    },
    /// Shards passed together differ in length.
    #[error("shard {index} is {actual} bytes long, expected {expected}")]
    ShardLength {
        /// Position of the offending shard (its shard index).
        index: usize,
        /// The length of the first shard.
        expected: usize,
        /// The offending length.
        actual: usize,
    },
    /// A shard index is out of range or given twice.
    #[error("shard index {index} is out of range or repeated (codec has {total} shards)")]
    InvalidShardIndex {
        /// The offending index.
        index: usize,
        /// Total shards of the codec (k + m).
        total: usize,
    },
    /// Fewer than k shards survive: the stripe cannot be decoded. Nothing
    /// was written to the output buffers.
    #[error("cannot reconstruct: {available} shards available, {required} required")]
    TooFewShards {
        /// Shards present.
        available: usize,
        /// Shards needed (k).
        required: usize,
    },
    /// A byte range falls outside the object it addresses.
    #[error("range [{offset}, {offset}+{len}) is outside a length of {bound} bytes")]
    RangeOutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Length of the object.
        bound: u64,
    },
    /// A range passed to [`crate::BlockChecksums::verify_range`] does not
    /// start and end on chunk boundaries (the block end counts as one).
    /// Widen it with [`crate::BlockChecksums::covering_range`].
    #[error(
        "range [{offset}, {offset}+{len}) is not aligned to {chunk_size_bytes}-byte checksum chunks"
    )]
    UnalignedRange {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The checksum chunk size.
        chunk_size_bytes: u32,
    },
    /// Bytes read back do not match their chunk checksum: the block is
    /// corrupt at this chunk and should be repaired.
    #[error("checksum mismatch in chunk {chunk_index} (block offset {block_offset})")]
    ChecksumMismatch {
        /// Index of the failing chunk.
        chunk_index: u64,
        /// Byte offset of that chunk within the block.
        block_offset: u64,
    },
    /// An encoded record (e.g. a block checksum record) is malformed.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// What check failed.
        reason: &'static str,
    },
    /// Reading the caller's volume source failed.
    #[error("reading the volume at offset {offset}: {source}")]
    SourceRead {
        /// Volume offset of the failed read.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing to the caller's sink for one block failed.
    #[error("writing block {block}: {source}")]
    SinkWrite {
        /// Shard index of the block (0..k data, k..k+m parity).
        block: usize,
        /// The underlying error.
        source: io::Error,
    },
}
