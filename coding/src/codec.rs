//! The RS(k, m) codec: parity from data, whole-shard reconstruction, and
//! reconstruction of any byte range.
//!
//! Shards are numbered `0..k` (data) then `k..k+m` (parity). Reed–Solomon
//! over GF(2^8) works byte by byte: byte `i` of every shard depends only on
//! byte `i` of the others. So reconstructing the range `[offset,
//! offset+len)` of a lost shard needs exactly that range of any `k`
//! surviving shards, at any alignment, and [`Codec::reconstruct_range`]
//! takes just those bytes. That is what a backoff read uses: it rebuilds a
//! 40 KB BLOB from ten 40 KB reads, never a whole block.

use crate::backend::{Backend, BackendKind, new_backend};
use crate::error::{CodingError, Result};
use crate::gf::Matrix;

/// Largest supported number of data shards (k).
pub const MAX_DATA_SHARDS: usize = 32;
/// Largest supported number of parity shards (m).
pub const MAX_PARITY_SHARDS: usize = 16;

/// The shape of an RS(k, m) code: `k` data shards, `m` parity shards; any
/// `k` of the `k + m` recover the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RsConfig {
    data_shards: usize,
    parity_shards: usize,
}

impl RsConfig {
    /// RS(k, m), checked: `1 <= k <= 32`, `1 <= m <= 16`.
    pub fn new(data_shards: usize, parity_shards: usize) -> Result<RsConfig> {
        if !(1..=MAX_DATA_SHARDS).contains(&data_shards)
            || !(1..=MAX_PARITY_SHARDS).contains(&parity_shards)
        {
            return Err(CodingError::InvalidShardCounts {
                data_shards,
                parity_shards,
            });
        }
        Ok(RsConfig {
            data_shards,
            parity_shards,
        })
    }

    /// Number of data shards (k).
    pub fn data_shards(&self) -> usize {
        self.data_shards
    }

    /// Number of parity shards (m): the most shards that may be lost.
    pub fn parity_shards(&self) -> usize {
        self.parity_shards
    }

    /// k + m.
    pub fn total_shards(&self) -> usize {
        self.data_shards + self.parity_shards
    }
}

impl Default for RsConfig {
    /// RS(10, 4), f4's code.
    fn default() -> RsConfig {
        RsConfig {
            data_shards: 10,
            parity_shards: 4,
        }
    }
}

/// An RS(k, m) encoder/decoder. Cheap to share (`Send + Sync`); build one
/// per configuration at start-up, where an unsupported CPU is reported.
#[derive(Debug)]
pub struct Codec {
    config: RsConfig,
    kind: BackendKind,
    /// `k + m` rows, `k` columns, systematic (top `k` rows the identity).
    matrix: Matrix,
    backend: Box<dyn Backend>,
}

impl Codec {
    /// A codec on the default (SIMD) backend. Fails with
    /// [`CodingError::UnsupportedCpu`] on a CPU the kernels cannot run on.
    pub fn new(config: RsConfig) -> Result<Codec> {
        Codec::with_backend(config, BackendKind::ReedSolomonErasure)
    }

    /// A codec on a chosen backend. All backends write identical parity.
    pub fn with_backend(config: RsConfig, kind: BackendKind) -> Result<Codec> {
        let backend = new_backend(kind)?;
        Ok(Codec {
            config,
            kind,
            matrix: Matrix::encoding(config.data_shards, config.parity_shards),
            backend,
        })
    }

    /// The code's shape.
    pub fn config(&self) -> RsConfig {
        self.config
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Compute the `m` parity shards of `k` data shards. All shards have
    /// the same length (zero is allowed); parity is overwritten.
    pub fn encode<D: AsRef<[u8]>, P: AsMut<[u8]>>(
        &self,
        data: &[D],
        parity: &mut [P],
    ) -> Result<()> {
        let k = self.config.data_shards;
        check_count(k, data.len())?;
        check_count(self.config.parity_shards, parity.len())?;
        let inputs: Vec<&[u8]> = data.iter().map(AsRef::as_ref).collect();
        let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(AsMut::as_mut).collect();
        let len = inputs[0].len();
        check_lengths(len, inputs.iter().map(|s| s.len()).enumerate())?;
        check_lengths(
            len,
            outputs
                .iter()
                .map(|s| s.len())
                .enumerate()
                .map(|(i, l)| (k + i, l)),
        )?;
        let rows: Vec<&[u8]> = (k..self.config.total_shards())
            .map(|r| self.matrix.row(r))
            .collect();
        self.backend.apply(&rows, &inputs, &mut outputs);
        Ok(())
    }

    /// Whether the parity shards match the data shards (for scrubbing).
    pub fn parity_matches<D: AsRef<[u8]>, P: AsRef<[u8]>>(
        &self,
        data: &[D],
        parity: &[P],
    ) -> Result<bool> {
        check_count(self.config.parity_shards, parity.len())?;
        let len = data.first().map_or(0, |d| d.as_ref().len());
        let mut expected = vec![vec![0u8; len]; self.config.parity_shards];
        self.encode(data, &mut expected)?;
        check_lengths(
            len,
            parity
                .iter()
                .map(|p| p.as_ref().len())
                .enumerate()
                .map(|(i, l)| (self.config.data_shards + i, l)),
        )?;
        Ok(expected
            .iter()
            .zip(parity)
            .all(|(e, p)| e.as_slice() == p.as_ref()))
    }

    /// Fill in the shards whose `present` flag is false from the others.
    ///
    /// `shards` holds all `k + m` shards in order, each the same length
    /// (whole shards or the same byte range of each). At most `m` may be
    /// missing; otherwise the result is [`CodingError::TooFewShards`] and
    /// no buffer is touched.
    pub fn reconstruct<S: AsMut<[u8]>>(&self, shards: &mut [S], present: &[bool]) -> Result<()> {
        let total = self.config.total_shards();
        check_count(total, shards.len())?;
        check_count(total, present.len())?;
        let available = present.iter().filter(|&&p| p).count();
        if available == total {
            return Ok(());
        }
        if available < self.config.data_shards {
            return Err(CodingError::TooFewShards {
                available,
                required: self.config.data_shards,
            });
        }
        let mut sources: Vec<(usize, &[u8])> = Vec::with_capacity(available);
        let mut targets: Vec<(usize, &mut [u8])> = Vec::with_capacity(total - available);
        for (index, (shard, &is_present)) in shards.iter_mut().zip(present).enumerate() {
            if is_present {
                sources.push((index, &*shard.as_mut()));
            } else {
                targets.push((index, shard.as_mut()));
            }
        }
        self.reconstruct_range(&sources, &mut targets)
    }

    /// Reconstruct chosen shards — or the same byte range of them — from
    /// that range of surviving shards.
    ///
    /// `sources` are `(shard index, bytes)` pairs of at least `k` distinct
    /// surviving shards; only the first `k` are read. `targets` are
    /// `(shard index, buffer)` pairs for the shards wanted, data or
    /// parity. Every slice holds the same byte range `[offset, offset+len)`
    /// of its shard, for any `offset` and `len` (the offset itself does not
    /// enter the arithmetic). The cost is `k` multiply-adds per target byte,
    /// whatever is lost.
    pub fn reconstruct_range(
        &self,
        sources: &[(usize, &[u8])],
        targets: &mut [(usize, &mut [u8])],
    ) -> Result<()> {
        let k = self.config.data_shards;
        let total = self.config.total_shards();
        if sources.len() < k {
            return Err(CodingError::TooFewShards {
                available: sources.len(),
                required: k,
            });
        }
        let sources = &sources[..k];
        check_distinct(sources.iter().map(|(i, _)| *i), total)?;
        check_distinct(targets.iter().map(|(i, _)| *i), total)?;
        let len = sources[0].1.len();
        check_lengths(len, sources.iter().map(|(i, s)| (*i, s.len())))?;
        check_lengths(len, targets.iter().map(|(i, t)| (*i, t.len())))?;
        if targets.is_empty() || len == 0 {
            return Ok(());
        }
        let source_indices: Vec<usize> = sources.iter().map(|(i, _)| *i).collect();
        let target_indices: Vec<usize> = targets.iter().map(|(i, _)| *i).collect();
        let decode = self
            .matrix
            .select_rows(&source_indices)
            .invert()
            .expect("any k rows of the encoding matrix invert (the code is MDS)");
        // Row t of (encoding × decode) rebuilds shard t from the sources.
        let coefficients = self.matrix.select_rows(&target_indices).multiply(&decode);
        let rows: Vec<&[u8]> = (0..targets.len()).map(|r| coefficients.row(r)).collect();
        let inputs: Vec<&[u8]> = sources.iter().map(|(_, s)| *s).collect();
        let mut outputs: Vec<&mut [u8]> = targets.iter_mut().map(|(_, t)| &mut **t).collect();
        self.backend.apply(&rows, &inputs, &mut outputs);
        Ok(())
    }
}

fn check_count(expected: usize, actual: usize) -> Result<()> {
    if expected != actual {
        return Err(CodingError::ShardCount { expected, actual });
    }
    Ok(())
}

fn check_lengths(expected: usize, lengths: impl Iterator<Item = (usize, usize)>) -> Result<()> {
    for (index, actual) in lengths {
        if actual != expected {
            return Err(CodingError::ShardLength {
                index,
                expected,
                actual,
            });
        }
    }
    Ok(())
}

fn check_distinct(indices: impl Iterator<Item = usize>, total: usize) -> Result<()> {
    let mut seen = 0u64;
    for index in indices {
        if index >= total || seen & (1 << index) != 0 {
            return Err(CodingError::InvalidShardIndex { index, total });
        }
        seen |= 1 << index;
    }
    Ok(())
}
