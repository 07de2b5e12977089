//! haystack: Hayloft's hot tier.
//!
//! A synchronous engine of append-only needle volumes over positional file IO:
//! [`format`](mod@format) owns every byte layout, [`index`] is the compact in-memory needle
//! index, [`volume`] appends (group commit), reads, deletes, locks, recovers and compacts
//! one volume (and repairs it needle by needle), [`store`] holds the volumes of a store node, and [`file`](mod@file) is the
//! storage seam. At the edge, `service` and `client` are the store node's HTTP service and
//! its typed client.

#![warn(missing_docs)]

pub mod api;
pub mod batch;
pub mod client;
mod compact;
pub mod error;
pub mod failpoint;
pub mod file;
pub mod format;
pub mod http;
pub mod index;
pub mod local;
mod recover;
mod repair;
pub mod service;
pub mod store;
pub mod volume;

pub use error::{Error, Result};
pub use file::{FileBackend, Storage, StorageBackend};
pub use format::Needle;
pub use index::NeedleIndex;
pub use repair::{InventoryDigest, NeedleRepair, RawNeedle};
pub use store::Store;
pub use volume::{
    AppendOutcome, CompactionReport, PendingAppend, Volume, VolumeOptions, VolumeStatus,
};
