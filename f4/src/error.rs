//! Errors of the warm tier's engine.

/// Result of warm-tier operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the warm tier's engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Stored bytes failed their checks (magic, CRC, a length or a place
    /// that the geometry does not allow).
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A geometry, or a block's place in it, that cannot exist.
    #[error("invalid geometry: {0}")]
    InvalidGeometry(String),
    /// A file written by a format version this build does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// Only a locked hot volume can be sealed.
    #[error("volume {volume} is not locked")]
    NotLocked {
        /// The volume.
        volume: u32,
    },
    /// A needle of the hot volume failed its checks while it was sealed.
    #[error("needle {key:x} of volume {volume} is damaged: {why}")]
    DamagedNeedle {
        /// The volume.
        volume: u32,
        /// The needle's key.
        key: u64,
        /// What check failed.
        why: String,
    },
    /// A block is not the one asked for (another volume, generation, stripe
    /// or place) or does not have the expected geometry.
    #[error("wrong block: {0}")]
    WrongBlock(String),
    /// A read past the end of a block or volume.
    #[error("range {offset}+{len} is outside the {limit} bytes of {what}")]
    OutOfRange {
        /// What was read.
        what: &'static str,
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The length it must fit in.
        limit: u64,
    },
    /// An error of the hot tier's engine, while sealing.
    #[error(transparent)]
    Hot(haystack::Error),
    /// An erasure-coding error.
    #[error(transparent)]
    Coding(#[from] coding::CodingError),
    /// A local IO error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::Corrupt(what.into())
    }
}

/// `Ok` if the `what` file at `path`, whose header names volume `found.0`
/// and encode generation `found.1`, is the one `expected` names; else
/// [`Error::WrongBlock`] saying both.
pub(crate) fn check_owner(
    what: &str,
    path: &std::path::Path,
    found: (u32, u64),
    expected: (u32, u64),
) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(Error::WrongBlock(format!(
        "{} is the {what} of volume {} generation {:x}, expected volume {} generation {:x}",
        path.display(),
        found.0,
        found.1,
        expected.0,
        expected.1
    )))
}
