//! The warm tier (f4): sealed volumes cut into erasure-coded blocks.
//!
//! - [`format`]: the block file (header with the volume's geometry and
//!   encode generation, data, per-chunk checksums), the warm index file,
//!   the tombstone journal, and the choice of a volume's block size.
//! - [`seal`]: a locked hot volume's live needles into a warm data file and
//!   its sorted index.
//! - [`block`]: a sealed data file into block files, and verified range
//!   reads of a block.
//! - [`index`]: key lookups in a warm index, memory-mapped.
//! - [`journal`]: a warm volume's tombstones, and their fold into the index.
//!
//! The storage node, backoff node and rebuild worker build on these.

pub mod block;
pub mod error;
pub mod format;
pub mod index;
pub mod journal;
pub mod seal;

pub use error::{Error, Result};
pub use format::{BlockHeader, Geometry};
