//! Stripes: how a volume's data file maps onto blocks, and a streaming
//! encoder that cuts it into `k` data blocks and `m` parity blocks per
//! stripe without holding a block in memory.
//!
//! Layout (also in `docs/FORMAT.md`): with block size `B`, data block `i`
//! (`0 <= i < k`) of stripe `s` holds volume bytes `[(s*k + i)*B,
//! (s*k + i + 1)*B)`, cut at the end of the volume. Consecutive volume
//! bytes therefore fill block 0 of stripe 0, then block 1, and so on: a
//! BLOB is in one data block, or straddles two. A short last stripe is
//! padded with implicit zeros that are never stored: its data blocks hold
//! only their real bytes (possibly none) and its parity blocks are as long
//! as its data block 0 (parity of all-zero columns is zero, so nothing
//! past that is stored either). A reader reconstructing from such blocks
//! reads bytes past a block's stored length as zeros.
//!
//! The encoder walks a stripe in columns of `column_bytes` at a time:
//! read that many bytes at the same offset of each of the `k` data
//! blocks, compute the parity columns, append each column to its block's
//! sink. Memory is `(k + m) * column_bytes` whatever the block size
//! (896 KiB for RS(10,4) at the default 64 KiB; a caller reading from a
//! disk may prefer larger columns, e.g. 1 MiB for 14 MiB). The crate does
//! no IO of its own: the caller supplies a positional [`VolumeSource`] and
//! one [`std::io::Write`] sink per block; wrap file sinks in a
//! `BufWriter` or use columns of at least a few hundred KiB. A caller that
//! already holds the volume's bytes in buffers of its own supplies a
//! [`ColumnSource`] and [`ColumnSink`]s instead
//! ([`StripeEncoder::encode_stripe_columns`]): each data column then goes
//! from the source to its sink as the source's own buffer, never copied.

use std::cell::RefCell;
use std::io::{self, Write};

use crate::codec::{Codec, RsConfig};
use crate::error::{CodingError, Result};
use crate::format::{BlockChecksums, BlockChecksumsBuilder};

/// Default column size of the [`StripeEncoder`]: 64 KiB per block per step
/// (the 14 columns of RS(10,4), 896 KiB, stay in L2; measured 2.6 GiB/s
/// end to end against 2.0 GiB/s at 256 KiB).
pub const DEFAULT_COLUMN_BYTES: usize = 64 * 1024;

/// A sized source of volume bytes read at offsets (like `pread`). The
/// warm tier implements it over a file with `FileExt::read_exact_at`.
pub trait VolumeSource {
    /// Total length of the volume in bytes.
    fn len_bytes(&self) -> u64;
    /// Fill `buf` with the volume bytes starting at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl VolumeSource for [u8] {
    fn len_bytes(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl VolumeSource for Vec<u8> {
    fn len_bytes(&self) -> u64 {
        self.as_slice().len_bytes()
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_exact_at(offset, buf)
    }
}

/// A source of volume bytes handed out as columns the caller owns (for
/// example a slice of a buffer a network read filled), so that
/// [`StripeEncoder::encode_stripe_columns`] passes each data column to its
/// sink as it is.
pub trait ColumnSource {
    /// A column of volume bytes.
    type Column: AsRef<[u8]>;
    /// Total length of the volume in bytes.
    fn len_bytes(&self) -> u64;
    /// Exactly `len` volume bytes starting at `offset`.
    fn column(&self, offset: u64, len: usize) -> io::Result<Self::Column>;
}

/// Where [`StripeEncoder::encode_stripe_columns`] puts one block's stored
/// bytes: its data columns as the source handed them out, or its parity
/// columns, in order.
pub trait ColumnSink<C> {
    /// Appends a data column.
    fn data(&mut self, column: C) -> io::Result<()>;
    /// Appends a parity column (the encoder's buffer, reused afterwards).
    fn parity(&mut self, column: &[u8]) -> io::Result<()>;
}

/// A [`VolumeSource`] as a [`ColumnSource`]: each column read into a
/// buffer from `spare`, which it goes back to once its sink took it.
struct ReadColumns<'s, S: ?Sized> {
    source: &'s S,
    spare: &'s RefCell<Vec<Vec<u8>>>,
}

/// A column of [`ReadColumns`].
struct SpareColumn<'s> {
    bytes: Vec<u8>,
    spare: &'s RefCell<Vec<Vec<u8>>>,
}

impl AsRef<[u8]> for SpareColumn<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SpareColumn<'_> {
    fn drop(&mut self) {
        self.spare
            .borrow_mut()
            .push(std::mem::take(&mut self.bytes));
    }
}

impl<'s, S: VolumeSource + ?Sized> ColumnSource for ReadColumns<'s, S> {
    type Column = SpareColumn<'s>;

    fn len_bytes(&self) -> u64 {
        self.source.len_bytes()
    }

    fn column(&self, offset: u64, len: usize) -> io::Result<SpareColumn<'s>> {
        let mut bytes = self.spare.borrow_mut().pop().unwrap_or_default();
        bytes.resize(len, 0);
        let mut column = SpareColumn {
            bytes,
            spare: self.spare,
        };
        self.source.read_exact_at(offset, &mut column.bytes)?;
        Ok(column)
    }
}

/// A [`Write`] sink as a [`ColumnSink`].
struct WriteColumns<'w, W>(&'w mut W);

impl<W: Write, C: AsRef<[u8]>> ColumnSink<C> for WriteColumns<'_, W> {
    fn data(&mut self, column: C) -> io::Result<()> {
        self.0.write_all(column.as_ref())
    }

    fn parity(&mut self, column: &[u8]) -> io::Result<()> {
        self.0.write_all(column)
    }
}

/// A contiguous piece of a volume byte range that lies in one data block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Stripe number.
    pub stripe: u64,
    /// Data block within the stripe (`0..k`), which is also its shard index.
    pub block: usize,
    /// Offset of the piece within that block.
    pub block_offset: u64,
    /// Offset of the piece within the volume.
    pub volume_offset: u64,
    /// Length of the piece.
    pub len: u64,
}

/// How a volume of a given length maps onto stripes and blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripeLayout {
    config: RsConfig,
    block_size_bytes: u64,
    volume_len_bytes: u64,
}

impl StripeLayout {
    /// The layout of a `volume_len_bytes` volume in blocks of
    /// `block_size_bytes` (non-zero, and `k * block_size` must fit in u64).
    pub fn new(
        config: RsConfig,
        block_size_bytes: u64,
        volume_len_bytes: u64,
    ) -> Result<StripeLayout> {
        let stripe = (config.data_shards() as u64).checked_mul(block_size_bytes);
        if block_size_bytes == 0 || stripe.is_none() {
            return Err(CodingError::InvalidSize {
                what: "block size",
                value: block_size_bytes,
            });
        }
        Ok(StripeLayout {
            config,
            block_size_bytes,
            volume_len_bytes,
        })
    }

    /// The code's shape.
    pub fn config(&self) -> RsConfig {
        self.config
    }

    /// Block size `B`.
    pub fn block_size_bytes(&self) -> u64 {
        self.block_size_bytes
    }

    /// Length of the volume.
    pub fn volume_len_bytes(&self) -> u64 {
        self.volume_len_bytes
    }

    /// Volume bytes per full stripe: `k * B`.
    pub fn stripe_len_bytes(&self) -> u64 {
        self.config.data_shards() as u64 * self.block_size_bytes
    }

    /// Number of stripes (zero for an empty volume).
    pub fn stripe_count(&self) -> u64 {
        self.volume_len_bytes.div_ceil(self.stripe_len_bytes())
    }

    /// Volume offset of the first byte of data block `block` of `stripe`
    /// (it may be at or past the end of the volume in a short stripe).
    pub fn data_block_offset(&self, stripe: u64, block: usize) -> u64 {
        // Saturating: a stripe number past the volume gives an offset past
        // its end, never an overflow panic.
        stripe
            .saturating_mul(self.stripe_len_bytes())
            .saturating_add((block as u64).saturating_mul(self.block_size_bytes))
    }

    /// Bytes actually stored in block `shard` (`0..k` data, `k..k+m`
    /// parity) of `stripe`; past that the block reads as zeros.
    pub fn block_len_bytes(&self, stripe: u64, shard: usize) -> Result<u64> {
        let total = self.config.total_shards();
        if shard >= total {
            return Err(CodingError::InvalidShardIndex {
                index: shard,
                total,
            });
        }
        if stripe >= self.stripe_count() {
            return Err(CodingError::RangeOutOfBounds {
                offset: stripe,
                len: 1,
                bound: self.stripe_count(),
            });
        }
        // Parity is as long as the longest data block, block 0.
        let data_block = if shard < self.config.data_shards() {
            shard
        } else {
            0
        };
        let start = self.data_block_offset(stripe, data_block);
        Ok(self
            .volume_len_bytes
            .saturating_sub(start)
            .min(self.block_size_bytes))
    }

    /// Split the volume range `[offset, offset+len)` into per-block pieces,
    /// in volume order. f4 reads each piece from its data block (or has a
    /// backoff node reconstruct it).
    pub fn segments(&self, offset: u64, len: u64) -> Result<Vec<Segment>> {
        let end = match offset.checked_add(len) {
            Some(end) if end <= self.volume_len_bytes => end,
            _ => {
                return Err(CodingError::RangeOutOfBounds {
                    offset,
                    len,
                    bound: self.volume_len_bytes,
                });
            }
        };
        let mut segments = Vec::new();
        let mut at = offset;
        while at < end {
            let stripe = at / self.stripe_len_bytes();
            let within = at % self.stripe_len_bytes();
            let block =
                usize::try_from(within / self.block_size_bytes).expect("block index < k <= 32");
            let block_offset = within % self.block_size_bytes;
            let piece = (self.block_size_bytes - block_offset).min(end - at);
            segments.push(Segment {
                stripe,
                block,
                block_offset,
                volume_offset: at,
                len: piece,
            });
            at += piece;
        }
        Ok(segments)
    }
}

/// Streams stripes of a volume into block sinks, column by column, and
/// checksums every block on the way.
#[derive(Debug)]
pub struct StripeEncoder<'c> {
    codec: &'c Codec,
    column_bytes: usize,
    checksum_chunk_bytes: u32,
    /// `k + m` column buffers of `column_bytes`.
    columns: Vec<Vec<u8>>,
}

impl<'c> StripeEncoder<'c> {
    /// An encoder stepping `column_bytes` (non-zero) at a time, writing
    /// checksums over `checksum_chunk_bytes` chunks.
    pub fn new(
        codec: &'c Codec,
        column_bytes: usize,
        checksum_chunk_bytes: u32,
    ) -> Result<StripeEncoder<'c>> {
        if column_bytes == 0 || column_bytes > 1 << 30 {
            return Err(CodingError::InvalidSize {
                what: "column size",
                value: column_bytes as u64,
            });
        }
        // Validate the chunk size once, up front.
        BlockChecksumsBuilder::new(checksum_chunk_bytes)?;
        Ok(StripeEncoder {
            codec,
            column_bytes,
            checksum_chunk_bytes,
            columns: vec![vec![0u8; column_bytes]; codec.config().total_shards()],
        })
    }

    /// Encode stripe `stripe` of `source` laid out as `layout`: append
    /// each block's stored bytes to `sinks[shard]` (`k` data sinks, then
    /// `m` parity sinks) and return each block's checksums in the same
    /// order. Sinks of empty blocks receive nothing. On error, sinks may
    /// hold a prefix of their block; the caller discards them.
    pub fn encode_stripe<S, W>(
        &mut self,
        layout: &StripeLayout,
        source: &S,
        stripe: u64,
        sinks: &mut [W],
    ) -> Result<Vec<BlockChecksums>>
    where
        S: VolumeSource + ?Sized,
        W: Write,
    {
        let spare = RefCell::new(Vec::new());
        let source = ReadColumns {
            source,
            spare: &spare,
        };
        let mut sinks: Vec<WriteColumns<'_, W>> = sinks.iter_mut().map(WriteColumns).collect();
        self.encode_stripe_columns(layout, &source, stripe, &mut sinks)
    }

    /// [`StripeEncoder::encode_stripe`] from a [`ColumnSource`] into
    /// [`ColumnSink`]s: every data column goes to its sink as the source
    /// handed it out (a short stripe's zero padding is added in the
    /// encoder's own buffer, for the arithmetic only).
    pub fn encode_stripe_columns<S, K>(
        &mut self,
        layout: &StripeLayout,
        source: &S,
        stripe: u64,
        sinks: &mut [K],
    ) -> Result<Vec<BlockChecksums>>
    where
        S: ColumnSource + ?Sized,
        K: ColumnSink<S::Column>,
    {
        let config = self.codec.config();
        if layout.config() != config {
            return Err(CodingError::InvalidShardCounts {
                data_shards: layout.config().data_shards(),
                parity_shards: layout.config().parity_shards(),
            });
        }
        if sinks.len() != config.total_shards() {
            return Err(CodingError::ShardCount {
                expected: config.total_shards(),
                actual: sinks.len(),
            });
        }
        if source.len_bytes() != layout.volume_len_bytes() {
            return Err(CodingError::InvalidSize {
                what: "volume source length (differs from the layout's)",
                value: source.len_bytes(),
            });
        }
        let k = config.data_shards();
        let data_lens: Vec<u64> = (0..k)
            .map(|i| layout.block_len_bytes(stripe, i))
            .collect::<Result<_>>()?;
        let parity_len = data_lens[0];
        let mut checksums: Vec<BlockChecksumsBuilder> = (0..config.total_shards())
            .map(|_| BlockChecksumsBuilder::new(self.checksum_chunk_bytes))
            .collect::<Result<_>>()?;
        let mut column_start = 0u64;
        while column_start < parity_len {
            let width = usize::try_from((parity_len - column_start).min(self.column_bytes as u64))
                .expect("width <= column_bytes");
            let (padded, parity) = self.columns.split_at_mut(k);
            let mut held: Vec<Option<S::Column>> = Vec::with_capacity(k);
            for (i, pad) in padded.iter_mut().enumerate() {
                let stored =
                    usize::try_from(data_lens[i].saturating_sub(column_start).min(width as u64))
                        .expect("stored <= width");
                let offset = layout.data_block_offset(stripe, i) + column_start;
                let column = if stored > 0 {
                    let column = source
                        .column(offset, stored)
                        .map_err(|source| CodingError::SourceRead { offset, source })?;
                    if column.as_ref().len() != stored {
                        return Err(CodingError::SourceRead {
                            offset,
                            source: io::Error::other(format!(
                                "the source gave {} bytes for a column of {stored}",
                                column.as_ref().len()
                            )),
                        });
                    }
                    checksums[i].update(column.as_ref());
                    Some(column)
                } else {
                    None
                };
                if stored < width {
                    // Implicit padding of a short last stripe: zero in the
                    // arithmetic, never written.
                    let bytes = column.as_ref().map_or(&[][..], AsRef::as_ref);
                    pad[..stored].copy_from_slice(bytes);
                    pad[stored..width].fill(0);
                }
                held.push(column);
            }
            let inputs: Vec<&[u8]> = held
                .iter()
                .zip(padded.iter())
                .map(|(column, pad)| match column {
                    Some(column) if column.as_ref().len() == width => column.as_ref(),
                    _ => &pad[..width],
                })
                .collect();
            let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(|c| &mut c[..width]).collect();
            self.codec.encode(&inputs, &mut outputs)?;
            drop(inputs);
            for (i, column) in held.into_iter().enumerate() {
                if let Some(column) = column {
                    sinks[i]
                        .data(column)
                        .map_err(|source| CodingError::SinkWrite { block: i, source })?;
                }
            }
            for (j, column) in outputs.iter().enumerate() {
                sinks[k + j]
                    .parity(column)
                    .map_err(|source| CodingError::SinkWrite {
                        block: k + j,
                        source,
                    })?;
                checksums[k + j].update(column);
            }
            column_start += width as u64;
        }
        Ok(checksums
            .into_iter()
            .map(BlockChecksumsBuilder::finish)
            .collect())
    }
}
