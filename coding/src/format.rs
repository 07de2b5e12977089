//! Block checksum records: a CRC32 per fixed-size chunk of a block, so a
//! range read verifies what it read without reading the whole block.
//!
//! This file owns the byte layout (mirrored in `docs/FORMAT.md`, section
//! "Erasure coding (coding)"). All integers little-endian:
//!
//! ```text
//! offset  size       field
//!      0     8       magic            89 'H' 'L' 'C' 'K' 0D 0A 1A
//!      8     2       version          u16 = 1
//!     10     2       reserved         u16 = 0
//!     12     4       chunk_size_bytes u32, 512 ..= 64 MiB
//!     16     8       block_len_bytes  u64
//!     24     4       chunk_count      u32 = ceil(block_len / chunk_size)
//!     28     4*n     chunk_crc[n]     u32 CRC32 (IEEE, crc32fast) of each chunk
//!  28+4n     4       record_crc       u32 CRC32 of bytes [0, 28+4n)
//! ```
//!
//! Chunk `i` covers block bytes `[i*chunk_size, min((i+1)*chunk_size,
//! block_len))`; the last chunk may be short and its CRC covers only its
//! real bytes (implicit stripe padding is never stored, so never summed).
//! An empty block has no chunks.
//!
//! Verification is whole-chunk: [`BlockChecksums::verify_range`] accepts
//! only ranges that start and end on chunk boundaries (the block end counts
//! as one), so every byte a reader returns has been checked. A reader
//! widens a wanted range with [`BlockChecksums::covering_range`], reads
//! that, verifies, then slices out what it wanted.
//!
//! Version history: 1 — the layout above.

use crate::error::{CodingError, Result};

/// Magic number of a block checksum record (PNG-style: a name, then bytes
/// that text-mode or newline mangling would alter).
pub const CHECKSUM_MAGIC: [u8; 8] = [0x89, b'H', b'L', b'C', b'K', b'\r', b'\n', 0x1a];
/// Current format version of block checksum records.
pub const CHECKSUM_FORMAT_VERSION: u16 = 1;
/// Default checksum chunk size: 64 KiB.
pub const DEFAULT_CHECKSUM_CHUNK_BYTES: u32 = 64 * 1024;
/// Smallest accepted chunk size.
pub const MIN_CHECKSUM_CHUNK_BYTES: u32 = 512;
/// Largest accepted chunk size.
pub const MAX_CHECKSUM_CHUNK_BYTES: u32 = 64 * 1024 * 1024;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + CHECKSUM_MAGIC.len();
const RESERVED_OFFSET: usize = VERSION_OFFSET + 2;
const CHUNK_SIZE_OFFSET: usize = RESERVED_OFFSET + 2;
const BLOCK_LEN_OFFSET: usize = CHUNK_SIZE_OFFSET + 4;
const CHUNK_COUNT_OFFSET: usize = BLOCK_LEN_OFFSET + 8;
/// Size of the fixed header before the per-chunk CRCs.
pub const CHECKSUM_HEADER_SIZE: usize = CHUNK_COUNT_OFFSET + 4;
const CRC_SIZE: usize = 4;

const _: () = assert!(CHECKSUM_HEADER_SIZE == 28);
const _: () = assert!(MIN_CHECKSUM_CHUNK_BYTES <= DEFAULT_CHECKSUM_CHUNK_BYTES);
const _: () = assert!(DEFAULT_CHECKSUM_CHUNK_BYTES <= MAX_CHECKSUM_CHUNK_BYTES);

const WHAT: &str = "block checksum record";

/// The per-chunk CRCs of one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockChecksums {
    chunk_size_bytes: u32,
    block_len_bytes: u64,
    chunk_crcs: Vec<u32>,
}

impl BlockChecksums {
    /// Checksum a whole block held in memory.
    pub fn compute(chunk_size_bytes: u32, block: &[u8]) -> Result<BlockChecksums> {
        let mut builder = BlockChecksumsBuilder::new(chunk_size_bytes)?;
        builder.update(block);
        Ok(builder.finish())
    }

    /// Chunk size in bytes.
    pub fn chunk_size_bytes(&self) -> u32 {
        self.chunk_size_bytes
    }

    /// Length of the block the record describes.
    pub fn block_len_bytes(&self) -> u64 {
        self.block_len_bytes
    }

    /// The CRC of each chunk, in order.
    pub fn chunk_crcs(&self) -> &[u32] {
        &self.chunk_crcs
    }

    /// Size of the encoded record in bytes.
    pub fn encoded_len(&self) -> usize {
        CHECKSUM_HEADER_SIZE + CRC_SIZE * self.chunk_crcs.len() + CRC_SIZE
    }

    /// The record's bytes (layout in the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let chunk_count =
            u32::try_from(self.chunk_crcs.len()).expect("chunk count checked at construction");
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&CHECKSUM_MAGIC);
        out.extend_from_slice(&CHECKSUM_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.chunk_size_bytes.to_le_bytes());
        out.extend_from_slice(&self.block_len_bytes.to_le_bytes());
        out.extend_from_slice(&chunk_count.to_le_bytes());
        for crc in &self.chunk_crcs {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let record_crc = crc32fast::hash(&out);
        out.extend_from_slice(&record_crc.to_le_bytes());
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Parse a record, treating the bytes as hostile: magic, version,
    /// sizes and the record CRC are checked before anything is allocated.
    pub fn decode(bytes: &[u8]) -> Result<BlockChecksums> {
        let corrupt = |reason| CodingError::Corrupt { what: WHAT, reason };
        if bytes.len() < CHECKSUM_HEADER_SIZE + CRC_SIZE {
            return Err(corrupt("shorter than the fixed header"));
        }
        if bytes[MAGIC_OFFSET..VERSION_OFFSET] != CHECKSUM_MAGIC {
            return Err(corrupt("bad magic"));
        }
        if read_u16(bytes, VERSION_OFFSET) != CHECKSUM_FORMAT_VERSION {
            return Err(corrupt("unsupported version"));
        }
        if read_u16(bytes, RESERVED_OFFSET) != 0 {
            return Err(corrupt("reserved field is not zero"));
        }
        let chunk_size_bytes = read_u32(bytes, CHUNK_SIZE_OFFSET);
        if !(MIN_CHECKSUM_CHUNK_BYTES..=MAX_CHECKSUM_CHUNK_BYTES).contains(&chunk_size_bytes) {
            return Err(corrupt("chunk size out of range"));
        }
        let block_len_bytes = read_u64(bytes, BLOCK_LEN_OFFSET);
        let chunk_count = read_u32(bytes, CHUNK_COUNT_OFFSET);
        if u64::from(chunk_count) != block_len_bytes.div_ceil(u64::from(chunk_size_bytes)) {
            return Err(corrupt("chunk count does not match block length"));
        }
        let chunk_count = chunk_count as usize;
        let expected_len = chunk_count
            .checked_mul(CRC_SIZE)
            .and_then(|n| n.checked_add(CHECKSUM_HEADER_SIZE + CRC_SIZE));
        if expected_len != Some(bytes.len()) {
            return Err(corrupt("record length does not match chunk count"));
        }
        let body_len = bytes.len() - CRC_SIZE;
        if crc32fast::hash(&bytes[..body_len]) != read_u32(bytes, body_len) {
            return Err(corrupt("record checksum mismatch"));
        }
        let chunk_crcs = bytes[CHECKSUM_HEADER_SIZE..body_len]
            .chunks_exact(CRC_SIZE)
            .map(|c| u32::from_le_bytes(c.try_into().expect("chunks_exact(4)")))
            .collect();
        Ok(BlockChecksums {
            chunk_size_bytes,
            block_len_bytes,
            chunk_crcs,
        })
    }

    /// The smallest chunk-aligned range that covers `[offset, offset+len)`
    /// and that [`BlockChecksums::verify_range`] accepts: `(offset, len)`.
    pub fn covering_range(&self, offset: u64, len: u64) -> Result<(u64, u64)> {
        self.check_bounds(offset, len)?;
        let chunk = u64::from(self.chunk_size_bytes);
        let start = offset - offset % chunk;
        if len == 0 {
            return Ok((start, 0));
        }
        let end = (offset + len)
            .div_ceil(chunk)
            .saturating_mul(chunk)
            .min(self.block_len_bytes);
        Ok((start, end.max(start) - start))
    }

    /// Verify `bytes`, read from the block at `offset`, against the chunk
    /// CRCs. The range must be chunk-aligned at both ends (the block end
    /// counts as a boundary), otherwise [`CodingError::UnalignedRange`];
    /// a mismatch is [`CodingError::ChecksumMismatch`] naming the first
    /// bad chunk.
    pub fn verify_range(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let len = bytes.len() as u64;
        self.check_bounds(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let chunk = u64::from(self.chunk_size_bytes);
        let end = offset + len;
        if !offset.is_multiple_of(chunk)
            || (!end.is_multiple_of(chunk) && end != self.block_len_bytes)
        {
            return Err(CodingError::UnalignedRange {
                offset,
                len,
                chunk_size_bytes: self.chunk_size_bytes,
            });
        }
        let first_chunk = offset / chunk;
        for (i, piece) in bytes.chunks(self.chunk_size_bytes as usize).enumerate() {
            let chunk_index = first_chunk + i as u64;
            let expected = usize::try_from(chunk_index)
                .ok()
                .and_then(|c| self.chunk_crcs.get(c))
                .expect("bounds checked above");
            if crc32fast::hash(piece) != *expected {
                return Err(CodingError::ChecksumMismatch {
                    chunk_index,
                    block_offset: chunk_index * chunk,
                });
            }
        }
        Ok(())
    }

    fn check_bounds(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.block_len_bytes => Ok(()),
            _ => Err(CodingError::RangeOutOfBounds {
                offset,
                len,
                bound: self.block_len_bytes,
            }),
        }
    }
}

/// Builds a [`BlockChecksums`] from a block streamed in pieces of any size.
#[derive(Clone, Debug)]
pub struct BlockChecksumsBuilder {
    chunk_size_bytes: u32,
    block_len_bytes: u64,
    chunk_crcs: Vec<u32>,
    current: crc32fast::Hasher,
    current_len: u32,
}

impl BlockChecksumsBuilder {
    /// A builder for chunks of `chunk_size_bytes` (512 B ..= 64 MiB).
    pub fn new(chunk_size_bytes: u32) -> Result<BlockChecksumsBuilder> {
        if !(MIN_CHECKSUM_CHUNK_BYTES..=MAX_CHECKSUM_CHUNK_BYTES).contains(&chunk_size_bytes) {
            return Err(CodingError::InvalidSize {
                what: "checksum chunk size",
                value: u64::from(chunk_size_bytes),
            });
        }
        Ok(BlockChecksumsBuilder {
            chunk_size_bytes,
            block_len_bytes: 0,
            chunk_crcs: Vec::new(),
            current: crc32fast::Hasher::new(),
            current_len: 0,
        })
    }

    /// Append the next bytes of the block.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.block_len_bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = (self.chunk_size_bytes - self.current_len) as usize;
            let (head, tail) = bytes.split_at(room.min(bytes.len()));
            self.current.update(head);
            self.current_len += head.len() as u32;
            if self.current_len == self.chunk_size_bytes {
                let done = std::mem::replace(&mut self.current, crc32fast::Hasher::new());
                self.chunk_crcs.push(done.finalize());
                self.current_len = 0;
            }
            bytes = tail;
        }
    }

    /// The checksums of everything appended.
    ///
    /// # Panics
    /// If the block has more than `u32::MAX` chunks (over 2 PiB at the
    /// smallest chunk size) — a caller bug, not bad input.
    pub fn finish(mut self) -> BlockChecksums {
        if self.current_len > 0 {
            self.chunk_crcs.push(self.current.finalize());
        }
        assert!(
            u32::try_from(self.chunk_crcs.len()).is_ok(),
            "too many checksum chunks"
        );
        BlockChecksums {
            chunk_size_bytes: self.chunk_size_bytes,
            block_len_bytes: self.block_len_bytes,
            chunk_crcs: self.chunk_crcs,
        }
    }
}

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().expect("2 bytes"))
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn record_round_trips_and_has_the_documented_layout() {
        let sums = BlockChecksums::compute(512, &block(1300)).expect("compute");
        assert_eq!(sums.chunk_crcs().len(), 3);
        assert_eq!(sums.chunk_crcs()[2], crc32fast::hash(&block(1300)[1024..]));
        let bytes = sums.encode();
        assert_eq!(bytes.len(), 28 + 3 * 4 + 4);
        assert_eq!(&bytes[..8], &CHECKSUM_MAGIC);
        assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
        assert_eq!(&bytes[12..16], &512u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &1300u64.to_le_bytes());
        assert_eq!(&bytes[24..28], &3u32.to_le_bytes());
        assert_eq!(BlockChecksums::decode(&bytes).expect("decode"), sums);
        let empty = BlockChecksums::compute(4096, &[]).expect("empty");
        assert_eq!(
            BlockChecksums::decode(&empty.encode()).expect("decode"),
            empty
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_rejected() {
        let bytes = BlockChecksums::compute(512, &block(2000))
            .expect("compute")
            .encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(matches!(
                    BlockChecksums::decode(&bad),
                    Err(CodingError::Corrupt { .. })
                ));
            }
            assert!(BlockChecksums::decode(&bytes[..i]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(BlockChecksums::decode(&longer).is_err());
    }

    #[test]
    fn huge_chunk_count_is_rejected_before_allocating() {
        let mut bytes = BlockChecksums::compute(512, &[]).expect("compute").encode();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BlockChecksums::decode(&bytes).is_err());
    }

    #[test]
    fn verify_range_checks_alignment_bounds_and_bytes() {
        let data = block(1300);
        let sums = BlockChecksums::compute(512, &data).expect("compute");
        sums.verify_range(0, &data).expect("whole block");
        sums.verify_range(512, &data[512..]).expect("to the end");
        sums.verify_range(1024, &data[1024..])
            .expect("short last chunk");
        sums.verify_range(512, &data[512..1024]).expect("one chunk");
        sums.verify_range(7, &[]).expect("empty range");
        assert!(matches!(
            sums.verify_range(1, &data[1..512]),
            Err(CodingError::UnalignedRange { .. })
        ));
        assert!(matches!(
            sums.verify_range(0, &data[..100]),
            Err(CodingError::UnalignedRange { .. })
        ));
        assert!(matches!(
            sums.verify_range(1024, &block(300)),
            Err(CodingError::RangeOutOfBounds { .. })
        ));
        let mut bad = data.clone();
        bad[700] ^= 4;
        assert!(matches!(
            sums.verify_range(0, &bad),
            Err(CodingError::ChecksumMismatch {
                chunk_index: 1,
                block_offset: 512
            })
        ));
        assert!(BlockChecksumsBuilder::new(511).is_err());
        assert!(BlockChecksumsBuilder::new(MAX_CHECKSUM_CHUNK_BYTES + 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Hostile input: arbitrary bytes, and valid records with random
        /// bytes overwritten, never panic; a changed record never decodes
        /// to different checksums.
        #[test]
        fn decode_never_panics_on_hostile_bytes(
            junk in proptest::collection::vec(any::<u8>(), 0..200),
            len in 0usize..3000,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let _ = BlockChecksums::decode(&junk);
            let mut with_magic = CHECKSUM_MAGIC.to_vec();
            with_magic.extend_from_slice(&junk);
            let _ = BlockChecksums::decode(&with_magic);
            let sums = BlockChecksums::compute(512, &block(len)).expect("compute");
            let mut bytes = sums.encode();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Ok(decoded) = BlockChecksums::decode(&bytes) {
                prop_assert_eq!(decoded, sums);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn covering_range_always_verifies(
            len in 0usize..5000,
            offset in 0usize..5000,
            want in 0usize..5000,
            pieces in proptest::collection::vec(1usize..700, 1..20),
        ) {
            let data = block(len);
            // Streaming in pieces of any size gives the same record.
            let mut builder = BlockChecksumsBuilder::new(512).expect("builder");
            let mut at = 0;
            for p in pieces.iter().cycle() {
                if at >= len {
                    break;
                }
                let end = (at + p).min(len);
                builder.update(&data[at..end]);
                at = end;
            }
            let sums = builder.finish();
            prop_assert_eq!(&sums, &BlockChecksums::compute(512, &data).expect("compute"));
            let offset = offset.min(len);
            let want = want.min(len - offset);
            let (start, covered) = sums.covering_range(offset as u64, want as u64).expect("cover");
            prop_assert!(start <= offset as u64);
            prop_assert!(want == 0 || start + covered >= (offset + want) as u64);
            let (start, covered) = (start as usize, covered as usize);
            sums.verify_range(start as u64, &data[start..start + covered]).expect("verify");
        }
    }
}
