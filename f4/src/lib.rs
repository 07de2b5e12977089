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
//! - [`node`]: the storage node service (File API, Index API, tombstones,
//!   sealing into a cell); [`backoff`]: the backoff node service;
//!   [`client`]: their typed clients, [`reader`] the per-read hops on a
//!   lean client; [`api`]: the wire types.

pub mod api;
pub mod backoff;
pub mod batch;
pub mod block;
pub mod client;
pub mod error;
pub mod format;
mod http;
pub mod index;
pub mod journal;
pub mod node;
pub mod pace;
pub mod reader;
pub mod rebuild;
pub mod seal;
mod transfer;

pub use coding::xor_into;
pub use error::{Error, Result};
pub use format::{BlockHeader, Geometry};
