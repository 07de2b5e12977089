//! Erasure coding for Hayloft: pure arithmetic, no IO of its own, no async.
//!
//! - [`Codec`]: RS(k, m) (default RS(10, 4), any `k <= 32`, `m <= 16`):
//!   parity from data, reconstruction of at most `m` lost shards, and
//!   reconstruction of any byte range of chosen shards from the same range
//!   of any `k` survivors ([`Codec::reconstruct_range`]).
//! - [`StripeLayout`] / [`StripeEncoder`]: how a volume maps onto stripes
//!   of `k` data and `m` parity blocks, volume ranges to block segments,
//!   and a streaming encoder working in column chunks.
//! - [`BlockChecksums`] (in [`format`](mod@format)): per-chunk CRC32s of a block, with
//!   a versioned on-disk record and range verification.
//! - [`xor_parity`] and friends: XOR parity of two unequal blocks for the
//!   geo layer.
//!
//! The GF(2^8) kernels sit behind a small trait of our own; the default
//! backend is reed-solomon-erasure 6 with `simd-accel`, checked against the
//! CPU at construction ([`check_cpu`]).

#![warn(missing_docs)]

mod backend;
mod codec;
mod error;
pub mod format;
mod gf;
mod stripe;
mod xor;

#[cfg(test)]
mod tests;

pub use backend::{BackendKind, check_cpu};
pub use codec::{Codec, MAX_DATA_SHARDS, MAX_PARITY_SHARDS, RsConfig};
pub use error::{CodingError, Result};
pub use format::{BlockChecksums, BlockChecksumsBuilder};
pub use stripe::{
    ColumnSink, ColumnSource, DEFAULT_COLUMN_BYTES, Segment, StripeEncoder, StripeLayout,
    VolumeSource,
};
pub use xor::{xor_into, xor_parity, xor_parity_into, xor_recover, xor_recover_into};
