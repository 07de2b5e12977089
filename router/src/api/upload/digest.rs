//! The SHA-256 of an upload's body (the `checksum` of its answer), computed
//! as the body passes.
//!
//! Hashing costs about 1 ms of CPU per MiB. Inline, that time holds the
//! async worker that relays the body (one worker per two cores under
//! `hayloft up`), so a large body is hashed on a blocking thread instead,
//! beside the relay, from the same shared chunks (no copy). A small body is
//! hashed inline, where a hand-off would cost more than the hash.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::super::error::ApiError;

/// Bodies this large or larger (by their `Content-Length`) are hashed on a
/// blocking thread.
const OFFLOAD_MIN_BYTES: u64 = 256 * 1024;

/// Chunks waiting for the hashing thread; past it the relay waits, so an
/// upload holds at most this many chunks more than it would.
const QUEUED_CHUNKS_MAX: usize = 4;

/// SHA-256 of a body fed chunk by chunk.
pub(super) enum BodyDigest {
    Inline(Sha256),
    Offloaded {
        chunks: mpsc::Sender<Bytes>,
        digest: JoinHandle<[u8; 32]>,
    },
}

impl BodyDigest {
    /// A digest for a body of `declared_len` bytes, if known.
    pub(super) fn new(declared_len: Option<u64>) -> BodyDigest {
        if declared_len.is_none_or(|len| len < OFFLOAD_MIN_BYTES) {
            return BodyDigest::Inline(Sha256::new());
        }
        let (chunks, mut queued) = mpsc::channel::<Bytes>(QUEUED_CHUNKS_MAX);
        let digest = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            while let Some(chunk) = queued.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher.finalize().into()
        });
        BodyDigest::Offloaded { chunks, digest }
    }

    /// Adds the next chunk of the body.
    pub(super) async fn update(&mut self, chunk: &Bytes) -> Result<(), ApiError> {
        match self {
            BodyDigest::Inline(hasher) => {
                hasher.update(chunk);
                Ok(())
            }
            BodyDigest::Offloaded { chunks, .. } => chunks
                .send(chunk.clone())
                .await
                .map_err(|_| ApiError::Internal("the body's hashing thread ended early".into())),
        }
    }

    /// The SHA-256 of every chunk added, in order.
    pub(super) async fn finish(self) -> Result<[u8; 32], ApiError> {
        match self {
            BodyDigest::Inline(hasher) => Ok(hasher.finalize().into()),
            BodyDigest::Offloaded { chunks, digest } => {
                drop(chunks);
                digest
                    .await
                    .map_err(|e| ApiError::Internal(format!("hashing the body: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways give the SHA-256 of the whole body, whatever its chunks.
    #[tokio::test]
    async fn inline_and_offloaded_digests_are_the_body_sha256() {
        let body: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        let expected: [u8; 32] = Sha256::digest(&body).into();
        for (declared, chunk_len) in [
            (None, 1000),
            (Some(10), 7),
            (Some(OFFLOAD_MIN_BYTES), 65_536),
            (Some(700_000), 7),
            (Some(700_000), 333_333),
        ] {
            let mut digest = BodyDigest::new(declared);
            assert_eq!(
                matches!(digest, BodyDigest::Offloaded { .. }),
                declared.is_some_and(|len| len >= OFFLOAD_MIN_BYTES)
            );
            for chunk in body.chunks(chunk_len) {
                digest
                    .update(&Bytes::copy_from_slice(chunk))
                    .await
                    .expect("update");
            }
            assert_eq!(digest.finish().await.expect("finish"), expected);
        }
    }
}
