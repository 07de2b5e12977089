//! The haystack crate's single error type.
//!
//! Every variant is something a caller can act on: the HTTP service maps each one to a
//! status code, and the router decides from it whether to retry elsewhere.

/// Errors of the haystack engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The needle is missing, deleted, or the cookie does not match. The three cases are
    /// deliberately indistinguishable so that ids cannot be guessed.
    #[error("needle not found")]
    NotFound,
    /// Bytes on disk failed validation (magic, version, length or checksum).
    #[error("volume {volume} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The volume holding the bad bytes.
        volume: u32,
        /// Byte offset in the data (or index) file where validation failed.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The volume refuses writes: it is locked, or an earlier sync or write failed.
    #[error("volume {volume} is read-only")]
    ReadOnly {
        /// The volume.
        volume: u32,
    },
    /// The needle does not fit in the volume; the volume is now locked.
    #[error("volume {volume} is full")]
    VolumeFull {
        /// The volume.
        volume: u32,
    },
    /// Keys must be strictly increasing within a volume.
    #[error("volume {volume}: key {key:#x} is not above the last key {last_key:#x}")]
    KeyOutOfOrder {
        /// The volume.
        volume: u32,
        /// The key that was refused.
        key: u64,
        /// The highest key the volume holds.
        last_key: u64,
    },
    /// A volume with this id already exists.
    #[error("volume {volume} already exists")]
    VolumeExists {
        /// The volume.
        volume: u32,
    },
    /// No volume with this id exists.
    #[error("unknown volume {volume}")]
    UnknownVolume {
        /// The volume.
        volume: u32,
    },
    /// The caller passed something the engine cannot store (e.g. an over-long content type).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An operating-system IO error.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of the haystack crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for a [`Error::Corrupt`].
    pub(crate) fn corrupt(volume: u32, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            volume,
            offset,
            reason: reason.into(),
        }
    }
}
