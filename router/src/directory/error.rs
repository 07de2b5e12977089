//! `DirectoryError`: everything a directory backend or the directory service
//! can fail with, and its mapping to HTTP status and JSON error code.

use http::StatusCode;

use super::types::VolumeState;

/// An error from a directory backend or the directory service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// No node with this id is registered.
    #[error("unknown node {id}")]
    UnknownNode {
        /// The node id asked for.
        id: String,
    },
    /// No logical volume with this id exists.
    #[error("unknown volume {id}")]
    UnknownVolume {
        /// The volume id asked for.
        id: u32,
    },
    /// The node holds no replica of the volume.
    #[error("node {node} holds no replica of volume {volume}")]
    NotAReplica {
        /// The volume.
        volume: u32,
        /// The node.
        node: String,
    },
    /// Fewer distinct racks have an `up` node of the role than a volume
    /// needs (store nodes for a hot volume, f4 storage nodes for a warm one).
    #[error("need {needed} racks with an up node for the volume, only {available} available")]
    NotEnoughRacks {
        /// Racks needed (3).
        needed: usize,
        /// Racks with at least one up store node.
        available: usize,
    },
    /// The requested state change is not allowed.
    #[error("volume {volume}: cannot go from {from} to {to}: {reason}")]
    InvalidTransition {
        /// The volume.
        volume: u32,
        /// Its current state.
        from: VolumeState,
        /// The requested state.
        to: VolumeState,
        /// Why not.
        reason: String,
    },
    /// Keys can be leased only for a writable volume.
    #[error("volume {volume} is {state}, not writable")]
    NotWritable {
        /// The volume.
        volume: u32,
        /// Its current state.
        state: VolumeState,
    },
    /// No damaged-needle record names this needle.
    #[error("no damaged-needle record for key {key:#x} of volume {volume}")]
    UnknownNeedle {
        /// The volume.
        volume: u32,
        /// The needle key.
        key: u64,
    },
    /// The volume took key leases, so it may hold data: it cannot be discarded.
    #[error("volume {volume} has leased keys; it cannot be discarded")]
    VolumeInUse {
        /// The volume.
        volume: u32,
    },
    /// Another migrator (coordinator) holds the volume's migration (a
    /// stripe's rebuild) job, or the caller's claim is gone.
    #[error("volume {volume}'s {job} is claimed by {owner:?} until {until_ms}")]
    JobClaimed {
        /// The volume.
        volume: u32,
        /// Which job (`migration`, `stripe 3 rebuild`).
        job: String,
        /// The claim's holder.
        owner: String,
        /// When the claim runs out, ms since the UNIX epoch.
        until_ms: u64,
    },
    /// A rebuilt block or a new journal holder does not fit the record as
    /// it stands (it moved meanwhile, or the node already holds a block of
    /// the stripe or is a holder already).
    #[error("volume {volume}: {reason}")]
    PlacementConflict {
        /// The volume.
        volume: u32,
        /// Why not.
        reason: String,
    },
    /// The node cannot be removed: it is up, or a volume names it.
    #[error("node {id} cannot be removed: {reason}")]
    NodeInUse {
        /// The node id.
        id: String,
        /// Why not.
        reason: String,
    },
    /// The service configuration is unusable.
    #[error("invalid directory config: {0}")]
    InvalidConfig(String),
    /// A request argument is out of range or malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request body exceeded the configured limit.
    #[error("request body larger than {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// A store node did not do what the directory asked of it.
    #[error("store node {node}: {message}")]
    StoreUnavailable {
        /// The store node's id.
        node: String,
        /// What failed.
        message: String,
    },
    /// The key space or the volume id space is used up.
    #[error("exhausted: {0}")]
    Exhausted(String),
    /// A stored record failed to decode or has an unknown version.
    #[error("corrupt directory record in {table}: {message}")]
    Corrupt {
        /// The table holding the record.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The embedded database failed.
    #[error("directory database: {0}")]
    Database(Box<redb::Error>),
    /// A file or socket operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for DirectoryError {
            fn from(e: $t) -> Self {
                DirectoryError::Database(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl DirectoryError {
    /// The HTTP status the directory service answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            DirectoryError::UnknownNode { .. }
            | DirectoryError::UnknownVolume { .. }
            | DirectoryError::NotAReplica { .. }
            | DirectoryError::UnknownNeedle { .. } => StatusCode::NOT_FOUND,
            DirectoryError::NotEnoughRacks { .. } => StatusCode::SERVICE_UNAVAILABLE,
            DirectoryError::InvalidTransition { .. }
            | DirectoryError::NotWritable { .. }
            | DirectoryError::VolumeInUse { .. }
            | DirectoryError::JobClaimed { .. }
            | DirectoryError::NodeInUse { .. }
            | DirectoryError::PlacementConflict { .. } => StatusCode::CONFLICT,
            DirectoryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DirectoryError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            DirectoryError::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            DirectoryError::Exhausted(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ if self.is_storage_full() => StatusCode::INSUFFICIENT_STORAGE,
            DirectoryError::Corrupt { .. }
            | DirectoryError::InvalidConfig(_)
            | DirectoryError::Database(_)
            | DirectoryError::Io(_)
            | DirectoryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether this is the directory's disk running out of space (ENOSPC or
    /// a quota), which clears by itself once space is freed: the backend
    /// reopens its database on the next operation.
    pub fn is_storage_full(&self) -> bool {
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        match self {
            DirectoryError::Database(e) => {
                matches!(&**e, redb::Error::Io(io) if matches!(io.kind(), StorageFull | QuotaExceeded))
            }
            DirectoryError::Io(io) => matches!(io.kind(), StorageFull | QuotaExceeded),
            _ => false,
        }
    }

    /// The stable snake_case code of the JSON error answer.
    pub fn code(&self) -> &'static str {
        match self {
            DirectoryError::UnknownNode { .. } => "unknown_node",
            DirectoryError::UnknownVolume { .. } => "unknown_volume",
            DirectoryError::NotAReplica { .. } => "not_a_replica",
            DirectoryError::NotEnoughRacks { .. } => "not_enough_racks",
            DirectoryError::InvalidTransition { .. } => "invalid_transition",
            DirectoryError::NotWritable { .. } => "not_writable",
            DirectoryError::UnknownNeedle { .. } => "unknown_needle",
            DirectoryError::VolumeInUse { .. } => "volume_in_use",
            DirectoryError::JobClaimed { .. } => "job_claimed",
            DirectoryError::PlacementConflict { .. } => "placement_conflict",
            DirectoryError::NodeInUse { .. } => "node_in_use",
            DirectoryError::BadRequest(_) => "bad_request",
            DirectoryError::InvalidConfig(_) => "invalid_config",
            DirectoryError::PayloadTooLarge { .. } => "payload_too_large",
            DirectoryError::StoreUnavailable { .. } => "store_unavailable",
            DirectoryError::Exhausted(_) => "exhausted",
            DirectoryError::Corrupt { .. } => "corrupt",
            DirectoryError::Database(_) => "database",
            DirectoryError::Io(_) => "io",
            DirectoryError::Internal(_) => "internal",
        }
    }
}
