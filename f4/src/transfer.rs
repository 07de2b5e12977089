//! A stream of byte chunks written to a new file, synced, with its length
//! checked against what its sender declared: the one loop behind receiving
//! an index, copying a hot replica's files and downloading a peer's index.

use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// Why a stream could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// The local file.
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
    /// The stream failed.
    #[error("the body failed: {0}")]
    Body(String),
    /// More or fewer bytes than declared.
    #[error("{received} bytes received, {declared} declared")]
    Length {
        /// Bytes received (at least, for a body that ran long).
        received: u64,
        /// Bytes declared.
        declared: u64,
    },
}

/// Writes `stream` to a new file at `path` and syncs it. With `declared`,
/// a stream that ends short or runs long is an error (it stops at the
/// first byte too many).
pub(crate) async fn write_stream<S, E>(
    mut stream: S,
    path: &Path,
    declared: Option<u64>,
) -> Result<u64, TransferError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut file = tokio::fs::File::create(path).await?;
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| TransferError::Body(e.to_string()))?;
        received += chunk.len() as u64;
        if let Some(declared) = declared.filter(|d| received > *d) {
            return Err(TransferError::Length { received, declared });
        }
        file.write_all(&chunk).await?;
    }
    if let Some(declared) = declared.filter(|d| received != *d) {
        return Err(TransferError::Length { received, declared });
    }
    file.sync_all().await?;
    Ok(received)
}
