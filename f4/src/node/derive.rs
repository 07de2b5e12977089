//! `POST /derive/{vid}/{gen}`: a geo companion volume encoded from the
//! data of warm volumes and streamed to its blocks' nodes, as a seal
//! streams a hot replica ([`super::encode`]).
//!
//! A companion of one volume is a full copy of its data (kept in a second
//! datacenter while the volume waits for a buddy); of two, their XOR byte
//! by byte, the shorter read as zero-padded, which is never stored
//! (`DESIGN.md`, "Geo layer"). [`DerivedSource`] reads each source's bytes
//! as a warm read does: ranges of its data blocks, verified chunk by chunk
//! on their nodes, or decoded by a backoff node from the rest of the
//! stripe when a block cannot be read. A source that cannot be read at
//! all fails the attempt, with the volume and offset named; nothing is
//! guessed.
//!
//! Memory stays bounded: the encoder's columns (one per block) and, per
//! read, one range of each source.

use std::io;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use bytes::{Bytes, BytesMut};
use coding::ColumnSource;
use parking_lot::Mutex;
use reqwest::StatusCode;
use tokio::runtime::Handle;

use super::NodeState;
use super::encode::{EncodeSource, encode_to_nodes, record_failure};
use crate::api::{BlockId, DeriveRequest, DeriveSource, RangeRead, ReconstructRequest};
use crate::error::{Error, Result};
use crate::http::{ApiError, JsonBody};
use crate::pace::Pace;
use crate::reader::WarmReader;

/// Idle connections a derive keeps per node it reads from.
const POOL_IDLE_PER_NODE: usize = 2;

/// The bytes of a derived volume: the XOR of its sources' data.
pub(crate) struct DerivedSource {
    sources: Vec<DeriveSource>,
    len_bytes: u64,
    backoffs: Vec<String>,
    reader: WarmReader,
    runtime: Handle,
    pace: Option<Mutex<Pace>>,
    failure: Mutex<Option<Error>>,
}

impl DerivedSource {
    fn source_len(source: &DeriveSource) -> u64 {
        source.geometry.volume_len_bytes
    }

    /// `len` bytes of `source`'s data from `offset`, each range verified
    /// on its block's node or decoded by a backoff node.
    async fn read_source(&self, source: &DeriveSource, offset: u64, len: u64) -> Result<Bytes> {
        let layout = source.geometry.layout()?;
        let segments = layout.segments(offset, len)?;
        let mut out = Vec::with_capacity(len as usize);
        for segment in segments {
            let read = RangeRead {
                block: BlockId {
                    volume: source.volume,
                    generation: source.generation,
                    stripe: segment.stripe,
                    block: segment.block as u32,
                },
                geometry: source.geometry,
                offset: segment.block_offset,
                len: segment.len,
            };
            let stripe = source.stripes.get(segment.stripe as usize).ok_or_else(|| {
                Error::corrupt(format!(
                    "volume {} has no stripe {}",
                    source.volume, segment.stripe
                ))
            })?;
            let direct = match stripe.get(segment.block).and_then(Option::as_ref) {
                Some(node) => match WarmReader::address(node) {
                    Ok(address) => self
                        .reader
                        .read_range(&address, &read)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                None => Err("its node is down".to_owned()),
            };
            let bytes = match direct {
                Ok(bytes) => bytes,
                Err(why) => {
                    tracing::info!(volume = source.volume, stripe = segment.stripe,
                        block = segment.block, why = %why, "source block unreadable; decoding");
                    self.decode(stripe, read).await.map_err(|decode| {
                        io::Error::other(format!(
                            "volume {} at {offset}: block {}.{} unreadable ({why}) and not \
                             decoded ({decode})",
                            source.volume, segment.stripe, segment.block
                        ))
                    })?
                }
            };
            out.extend_from_slice(&bytes);
        }
        Ok(Bytes::from(out))
    }

    /// `read` decoded by the first backoff node that can.
    async fn decode(
        &self,
        stripe: &[Option<String>],
        read: RangeRead,
    ) -> std::result::Result<Bytes, String> {
        let request = ReconstructRequest {
            block: read.block,
            geometry: read.geometry,
            offset: read.offset,
            len: read.len,
            sources: stripe.to_vec(),
        };
        let mut last = String::from("no backoff node");
        for backoff in &self.backoffs {
            let decoded = match WarmReader::address(backoff) {
                Ok(address) => self.reader.reconstruct(&address, &request).await,
                Err(e) => Err(e),
            };
            match decoded {
                Ok(decoded) => return Ok(decoded.bytes),
                Err(e) => last = format!("{backoff}: {e}"),
            }
        }
        Err(last)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if let Some(pace) = &self.pace {
            pace.lock().take_blocking(buf.len() as u64);
        }
        buf.fill(0);
        for source in &self.sources {
            let len = Self::source_len(source)
                .saturating_sub(offset)
                .min(buf.len() as u64);
            if len == 0 {
                continue;
            }
            let bytes = self
                .runtime
                .block_on(self.read_source(source, offset, len))?;
            coding::xor_into(&mut buf[..len as usize], &bytes)?;
        }
        Ok(())
    }
}

impl ColumnSource for DerivedSource {
    type Column = Bytes;

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn column(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let mut column = BytesMut::zeroed(len);
        self.read(offset, &mut column[..])
            .map_err(|error| record_failure(&self.failure, error))?;
        Ok(column.freeze())
    }
}

impl EncodeSource for DerivedSource {
    fn take_failure(&self) -> Option<Error> {
        self.failure.lock().take()
    }
}

/// `POST /derive/{vid}/{gen}` (module doc): `204` once every block is on
/// its node, synced.
pub(super) async fn derive(
    State(state): State<NodeState>,
    path: Result<Path<(u32, u64)>, PathRejection>,
    JsonBody(request): JsonBody<DeriveRequest>,
) -> std::result::Result<StatusCode, ApiError> {
    let (volume, generation) = super::handlers::params_of(path)?;
    let geometry = request.geometry;
    let layout = geometry.layout()?;
    let longest = request.sources.iter().map(DerivedSource::source_len).max();
    // A whole companion is as long as its longest source; a stripe
    // rebuilt from the geo layer may come from longer ones.
    let length_fits = match request.stripe {
        None => longest == Some(geometry.volume_len_bytes),
        Some(_) => longest.is_some_and(|l| l >= geometry.volume_len_bytes),
    };
    if !(1..=2).contains(&request.sources.len()) || !length_fits {
        return Err(ApiError::bad_request(
            "a derived volume has one or two sources, the longest one as long as it",
        ));
    }
    let stripes = layout.stripe_count().max(1);
    let blocks = usize::from(geometry.data_blocks) + usize::from(geometry.parity_blocks);
    let named = match request.stripe {
        None => stripes,
        Some(stripe) if stripe < stripes => 1,
        Some(stripe) => {
            return Err(ApiError::bad_request(format!(
                "the volume has {stripes} stripes, not stripe {stripe}"
            )));
        }
    };
    if request.stripes.len() as u64 != named || request.stripes.iter().any(|s| s.len() != blocks) {
        return Err(ApiError::bad_request(format!(
            "the placement must name {blocks} nodes for each of {named} stripe(s)"
        )));
    }
    if request.blocks.iter().any(|b| *b as usize >= blocks) {
        return Err(ApiError::bad_request(format!(
            "a stripe has blocks 0 to {}",
            blocks - 1
        )));
    }
    for source in &request.sources {
        let source_stripes = source.geometry.layout()?.stripe_count().max(1);
        if source.stripes.len() as u64 != source_stripes {
            return Err(ApiError::bad_request(format!(
                "source volume {} names {} stripes of its {source_stripes}",
                source.volume,
                source.stripes.len()
            )));
        }
    }
    // A whole volume streams one at a time, as seals do; a stripe rebuilt
    // from the geo layer does not wait behind one (the coordinator bounds
    // those).
    let _one_at_a_time = match request.stripe {
        None => Some(super::seal::seal_permit(&state).await?),
        Some(_) => None,
    };
    let timeout = Duration::from_millis(state.config().request_timeout_ms);
    let runtime = Handle::current();
    let source = DerivedSource {
        sources: request.sources,
        len_bytes: geometry.volume_len_bytes,
        backoffs: request.backoffs,
        reader: WarmReader::with_timeout(timeout, POOL_IDLE_PER_NODE),
        runtime: runtime.clone(),
        pace: (request.bytes_per_second > 0)
            .then(|| Mutex::new(Pace::new(request.bytes_per_second))),
        failure: Mutex::new(None),
    };
    let peers = state.inner.peers.clone();
    let first = request.stripe.unwrap_or(0);
    let wanted =
        |block: usize| request.blocks.is_empty() || request.blocks.contains(&(block as u32));
    let targets: Vec<(u64, Vec<Option<String>>)> = request
        .stripes
        .iter()
        .zip(first..)
        .map(|(nodes, stripe)| {
            let nodes = nodes
                .iter()
                .enumerate()
                .map(|(block, node)| wanted(block).then(|| node.clone()))
                .collect();
            (stripe, nodes)
        })
        .collect();
    let stripe = request.stripe;
    // A thread of its own, not the IO pool: it runs as long as the volume
    // takes to stream, and waits on the network.
    let sent = tokio::task::spawn_blocking(move || {
        encode_to_nodes(
            &runtime, &peers, volume, &source, generation, geometry, &targets,
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("the encoding task: {e}")))?
    .map_err(|error| match error {
        Error::Io(e) => ApiError::peer(format!("deriving the blocks: {e}")),
        other => other.into(),
    })?;
    tracing::info!(volume, generation, stripes, only = ?stripe, bytes = sent,
        "derived blocks distributed");
    Ok(StatusCode::NO_CONTENT)
}
