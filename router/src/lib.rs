//! Hayloft router crate: the directory (nodes, logical volumes, key leases;
//! an embedded redb backend behind a trait, its HTTP service, client and
//! replica repair loop) and the public BLOB API.
#![warn(missing_docs)]

pub mod api;
pub mod direct;
pub mod directory;
