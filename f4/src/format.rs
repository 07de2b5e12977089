//! On-disk formats of the warm tier. This file owns the byte layouts
//! (mirrored in `docs/FORMAT.md`, section "Warm tier (f4)").
//!
//! A *block file* holds one block of one stripe of a sealed volume, with
//! everything a reader or a rebuilder needs to use it alone: the volume's
//! whole geometry, fixed when the volume was sealed and never re-derived
//! from live sizes, and the encode generation the block belongs to, so
//! that blocks of two encode runs are never mixed. All integers
//! little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic             89 'H' 'L' 'B' 'L' 'K' 0A 1A
//!      8     2  version           u16 = 1
//!     10     2  reserved          u16 = 0
//!     12     1  data_blocks       u8, k (1 ..= 32)
//!     13     1  parity_blocks     u8, m (1 ..= 16)
//!     14     2  reserved          u16 = 0
//!     16     4  volume_id         u32
//!     20     4  chunk_size_bytes  u32, of the checksum record (512 ..= 64 MiB)
//!     24     8  generation        u64, the encode generation (non-zero)
//!     32     8  stripe            u64 (< stripe count)
//!     40     4  block_index       u32 (0 ..= k-1 data, k ..= k+m-1 parity)
//!     44     4  reserved          u32 = 0
//!     48     8  block_len_bytes   u64, bytes stored in this block
//!     56     8  volume_len_bytes  u64, the sealed data file's length
//!     64     8  block_size_bytes  u64, the volume's block size
//!     72     4  header_crc        u32 CRC32 of bytes [0, 72)
//!     76     4  reserved          u32 = 0
//!     80     n  block data        block_len_bytes bytes
//!   80+n     …  checksums         the block's checksum record
//!                                 (`coding::format`: a CRC32 per chunk)
//! ```
//!
//! `block_len_bytes` must be what the geometry gives for that stripe and
//! block (a short last stripe's padding is implicit zeros, never stored),
//! and the checksum record must describe exactly `block_len_bytes` bytes.
//! A decoder refuses anything else: a block never claims bytes its volume
//! does not have.
//!
//! Version history: 1 — the layout above.

use coding::format::{MAX_CHECKSUM_CHUNK_BYTES, MIN_CHECKSUM_CHUNK_BYTES};
use coding::{BlockChecksums, MAX_DATA_SHARDS, MAX_PARITY_SHARDS, RsConfig, StripeLayout};
use haystack::format::{u32_at, u64_at};

use crate::error::{Error, Result};

/// Magic number of a block file (PNG-style: a name, then bytes that text
/// mode or newline mangling would alter).
pub const BLOCK_MAGIC: [u8; 8] = [0x89, b'H', b'L', b'B', b'L', b'K', b'\n', 0x1a];
/// Current format version of block files.
pub const BLOCK_FORMAT_VERSION: u16 = 1;
/// Size of a block file's header; the block's data starts here.
pub const BLOCK_HEADER_SIZE: usize = 80;

const VERSION_OFFSET: usize = 8;
const DATA_BLOCKS_OFFSET: usize = 12;
const PARITY_BLOCKS_OFFSET: usize = 13;
const VOLUME_ID_OFFSET: usize = 16;
const CHUNK_SIZE_OFFSET: usize = 20;
const GENERATION_OFFSET: usize = 24;
const STRIPE_OFFSET: usize = 32;
const BLOCK_INDEX_OFFSET: usize = 40;
const BLOCK_LEN_OFFSET: usize = 48;
const VOLUME_LEN_OFFSET: usize = 56;
const BLOCK_SIZE_OFFSET: usize = 64;
const HEADER_CRC_OFFSET: usize = 72;

const _: () = assert!(HEADER_CRC_OFFSET + 8 == BLOCK_HEADER_SIZE);

/// What the headers of every file here share: a magic number at 0, the
/// format version (u16) at 8, a CRC32 of the bytes before `crc_offset`
/// stored there, and reserved ranges that must be zero.
struct HeaderLayout {
    what: &'static str,
    magic: [u8; 8],
    version: u16,
    size: usize,
    crc_offset: usize,
    reserved: &'static [std::ops::Range<usize>],
}

impl HeaderLayout {
    /// A header of `N` bytes with the magic and version written.
    fn start<const N: usize>(&self) -> [u8; N] {
        debug_assert_eq!(N, self.size);
        let mut out = [0u8; N];
        out[..8].copy_from_slice(&self.magic);
        put(&mut out, VERSION_OFFSET, &self.version.to_le_bytes());
        out
    }

    /// Writes the header's CRC, once every field is in.
    fn finish(&self, out: &mut [u8]) {
        let crc = crc32fast::hash(&out[..self.crc_offset]);
        put(out, self.crc_offset, &crc.to_le_bytes());
    }

    /// The header at the start of `bytes`, after checking its length,
    /// magic, CRC, version and reserved bytes.
    fn check<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8]> {
        let what = self.what;
        let header = bytes.get(..self.size).ok_or_else(|| {
            Error::corrupt(format!(
                "{what} is {} bytes, shorter than {}",
                bytes.len(),
                self.size
            ))
        })?;
        if header[..8] != self.magic {
            return Err(Error::corrupt(format!("not a {what} (bad magic)")));
        }
        if crc32fast::hash(&header[..self.crc_offset]) != u32_at(header, self.crc_offset) {
            return Err(Error::corrupt(format!("{what} CRC mismatch")));
        }
        let version = u16::from_le_bytes([header[VERSION_OFFSET], header[VERSION_OFFSET + 1]]);
        if version != self.version {
            return Err(Error::UnsupportedVersion(version));
        }
        if self
            .reserved
            .iter()
            .any(|range| header[range.clone()].iter().any(|&b| b != 0))
        {
            return Err(Error::corrupt(format!(
                "{what} reserved bytes are not zero"
            )));
        }
        Ok(header)
    }
}

const BLOCK_HEADER: HeaderLayout = HeaderLayout {
    what: "block header",
    magic: BLOCK_MAGIC,
    version: BLOCK_FORMAT_VERSION,
    size: BLOCK_HEADER_SIZE,
    crc_offset: HEADER_CRC_OFFSET,
    reserved: &[10..12, 14..16, 44..48, 76..80],
};

/// A sealed volume's geometry: how its data file maps onto stripes and
/// blocks. Fixed at seal time and carried by every block (and, as JSON, by
/// the directory's record of the volume).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geometry {
    /// Length of the sealed data file.
    pub volume_len_bytes: u64,
    /// The volume's block size (the largest a block can be).
    pub block_size_bytes: u64,
    /// Data blocks per stripe, `k`.
    pub data_blocks: u8,
    /// Parity blocks per stripe, `m`.
    pub parity_blocks: u8,
    /// Chunk size of every block's checksum record.
    pub chunk_size_bytes: u32,
}

impl Geometry {
    /// The geometry of a `volume_len_bytes` volume cut into blocks of at
    /// most `max_block_size_bytes`, `k` data and `m` parity per stripe.
    ///
    /// The block size is chosen so that stripes come out full: as few
    /// stripes as blocks of the largest size need, then the smallest block
    /// that fits the volume in that many. A 1 GiB volume with a 1 GiB
    /// largest block would otherwise fill one data block and still carry
    /// `m` parity blocks (5.0 bytes per byte for RS(10,4)); blocks of a
    /// tenth of it give 1.4.
    pub fn choose(
        volume_len_bytes: u64,
        max_block_size_bytes: u64,
        data_blocks: u8,
        parity_blocks: u8,
        chunk_size_bytes: u32,
    ) -> Result<Geometry> {
        if max_block_size_bytes == 0 {
            return Err(Error::InvalidGeometry("the largest block size is 0".into()));
        }
        let k = u64::from(data_blocks.max(1));
        let stripe_max = k.checked_mul(max_block_size_bytes).ok_or_else(|| {
            Error::InvalidGeometry(format!(
                "{k} blocks of {max_block_size_bytes} bytes overflow 64 bits"
            ))
        })?;
        let stripes = volume_len_bytes.div_ceil(stripe_max).max(1);
        let block_size_bytes = volume_len_bytes.div_ceil(stripes * k).max(1);
        let geometry = Geometry {
            volume_len_bytes,
            block_size_bytes,
            data_blocks,
            parity_blocks,
            chunk_size_bytes,
        };
        geometry.layout()?;
        Ok(geometry)
    }

    /// The code's shape, checked.
    pub fn rs_config(&self) -> Result<RsConfig> {
        RsConfig::new(
            usize::from(self.data_blocks),
            usize::from(self.parity_blocks),
        )
        .map_err(|e| Error::InvalidGeometry(e.to_string()))
    }

    /// The stripe layout, after checking every field.
    pub fn layout(&self) -> Result<StripeLayout> {
        if !(MIN_CHECKSUM_CHUNK_BYTES..=MAX_CHECKSUM_CHUNK_BYTES).contains(&self.chunk_size_bytes) {
            return Err(Error::InvalidGeometry(format!(
                "checksum chunk size {} is outside {MIN_CHECKSUM_CHUNK_BYTES} ..= \
                 {MAX_CHECKSUM_CHUNK_BYTES}",
                self.chunk_size_bytes
            )));
        }
        StripeLayout::new(
            self.rs_config()?,
            self.block_size_bytes,
            self.volume_len_bytes,
        )
        .map_err(|e| Error::InvalidGeometry(e.to_string()))
    }

    /// Blocks per stripe, `k + m`.
    pub fn blocks_per_stripe(&self) -> u32 {
        u32::from(self.data_blocks) + u32::from(self.parity_blocks)
    }
}

/// The header of a block file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    /// The volume the block belongs to.
    pub volume_id: u32,
    /// The encode generation that wrote it.
    pub generation: u64,
    /// Its stripe.
    pub stripe: u64,
    /// Its index in the stripe (`0..k` data, `k..k+m` parity).
    pub block_index: u32,
    /// Bytes stored in it.
    pub block_len_bytes: u64,
    /// The volume's geometry.
    pub geometry: Geometry,
}

impl BlockHeader {
    /// The header of block `block_index` of `stripe`, with the length the
    /// geometry gives it.
    pub fn new(
        volume_id: u32,
        generation: u64,
        geometry: Geometry,
        stripe: u64,
        block_index: u32,
    ) -> Result<BlockHeader> {
        let header = BlockHeader {
            volume_id,
            generation,
            stripe,
            block_index,
            block_len_bytes: expected_block_len(&geometry, stripe, block_index)?,
            geometry,
        };
        header.check()?;
        Ok(header)
    }

    /// Encodes the header (`BLOCK_HEADER_SIZE` bytes).
    pub fn encode(&self) -> [u8; BLOCK_HEADER_SIZE] {
        let mut out = BLOCK_HEADER.start();
        out[DATA_BLOCKS_OFFSET] = self.geometry.data_blocks;
        out[PARITY_BLOCKS_OFFSET] = self.geometry.parity_blocks;
        put(&mut out, VOLUME_ID_OFFSET, &self.volume_id.to_le_bytes());
        let chunk = self.geometry.chunk_size_bytes.to_le_bytes();
        put(&mut out, CHUNK_SIZE_OFFSET, &chunk);
        put(&mut out, GENERATION_OFFSET, &self.generation.to_le_bytes());
        put(&mut out, STRIPE_OFFSET, &self.stripe.to_le_bytes());
        put(
            &mut out,
            BLOCK_INDEX_OFFSET,
            &self.block_index.to_le_bytes(),
        );
        put(
            &mut out,
            BLOCK_LEN_OFFSET,
            &self.block_len_bytes.to_le_bytes(),
        );
        let volume_len = self.geometry.volume_len_bytes.to_le_bytes();
        put(&mut out, VOLUME_LEN_OFFSET, &volume_len);
        let block_size = self.geometry.block_size_bytes.to_le_bytes();
        put(&mut out, BLOCK_SIZE_OFFSET, &block_size);
        BLOCK_HEADER.finish(&mut out);
        out
    }

    /// Decodes and checks a header: magic, version, CRC, reserved bytes,
    /// the geometry, the block's place in it and its length.
    pub fn decode(bytes: &[u8]) -> Result<BlockHeader> {
        let bytes = BLOCK_HEADER.check(bytes)?;
        let header = BlockHeader {
            volume_id: u32_at(bytes, VOLUME_ID_OFFSET),
            generation: u64_at(bytes, GENERATION_OFFSET),
            stripe: u64_at(bytes, STRIPE_OFFSET),
            block_index: u32_at(bytes, BLOCK_INDEX_OFFSET),
            block_len_bytes: u64_at(bytes, BLOCK_LEN_OFFSET),
            geometry: Geometry {
                volume_len_bytes: u64_at(bytes, VOLUME_LEN_OFFSET),
                block_size_bytes: u64_at(bytes, BLOCK_SIZE_OFFSET),
                data_blocks: bytes[DATA_BLOCKS_OFFSET],
                parity_blocks: bytes[PARITY_BLOCKS_OFFSET],
                chunk_size_bytes: u32_at(bytes, CHUNK_SIZE_OFFSET),
            },
        };
        header.check()?;
        Ok(header)
    }

    /// Checks the block's checksum record against this header: it must
    /// describe exactly this block's bytes, in the volume's chunk size.
    pub fn check_checksums(&self, checksums: &BlockChecksums) -> Result<()> {
        if checksums.block_len_bytes() != self.block_len_bytes
            || checksums.chunk_size_bytes() != self.geometry.chunk_size_bytes
        {
            return Err(Error::corrupt(format!(
                "checksum record covers {} bytes in chunks of {}, the block has {} in chunks of {}",
                checksums.block_len_bytes(),
                checksums.chunk_size_bytes(),
                self.block_len_bytes,
                self.geometry.chunk_size_bytes
            )));
        }
        Ok(())
    }

    /// Bytes of the whole block file: header, data, checksum record
    /// (`None` if that overflows, as only a corrupt geometry can make it).
    pub fn file_len_bytes(&self) -> Option<u64> {
        let chunks = self
            .block_len_bytes
            .div_ceil(u64::from(self.geometry.chunk_size_bytes));
        let fixed = (BLOCK_HEADER_SIZE + coding::format::CHECKSUM_HEADER_SIZE + 4) as u64;
        chunks
            .checked_mul(4)?
            .checked_add(fixed)?
            .checked_add(self.block_len_bytes)
    }

    fn check(&self) -> Result<()> {
        let k = usize::from(self.geometry.data_blocks);
        let m = usize::from(self.geometry.parity_blocks);
        if k == 0 || k > MAX_DATA_SHARDS || m == 0 || m > MAX_PARITY_SHARDS {
            return Err(Error::InvalidGeometry(format!(
                "RS({k},{m}) is outside 1..={MAX_DATA_SHARDS} data and 1..={MAX_PARITY_SHARDS} \
                 parity blocks"
            )));
        }
        if self.generation == 0 {
            return Err(Error::InvalidGeometry("encode generation 0".into()));
        }
        let expected = expected_block_len(&self.geometry, self.stripe, self.block_index)?;
        if self.block_len_bytes != expected {
            return Err(Error::corrupt(format!(
                "block {} of stripe {} holds {} bytes; its volume's geometry gives {expected}",
                self.block_index, self.stripe, self.block_len_bytes
            )));
        }
        Ok(())
    }
}

/// The bytes stored in block `block_index` of `stripe`, or an error if the
/// geometry has no such block.
pub fn expected_block_len(geometry: &Geometry, stripe: u64, block_index: u32) -> Result<u64> {
    let layout = geometry.layout()?;
    if stripe >= layout.stripe_count().max(1) {
        return Err(Error::InvalidGeometry(format!(
            "stripe {stripe} of a volume of {} stripes",
            layout.stripe_count()
        )));
    }
    if block_index >= geometry.blocks_per_stripe() {
        return Err(Error::InvalidGeometry(format!(
            "block {block_index} of a stripe of {}",
            geometry.blocks_per_stripe()
        )));
    }
    if layout.stripe_count() == 0 {
        // An empty volume: one stripe of empty blocks.
        return Ok(0);
    }
    let shard = usize::try_from(block_index).expect("a block index fits usize");
    layout
        .block_len_bytes(stripe, shard)
        .map_err(|e| Error::InvalidGeometry(e.to_string()))
}

/// Magic number of a warm volume's sorted index file.
pub const INDEX_MAGIC: [u8; 8] = [0x89, b'H', b'L', b'W', b'I', b'X', b'\n', 0x1a];
/// Current format version of warm index files.
pub const INDEX_FORMAT_VERSION: u16 = 1;
/// Size of a warm index file's header; entries follow it.
pub const INDEX_HEADER_SIZE: usize = 48;
/// Size of one warm index entry.
pub const INDEX_ENTRY_SIZE: usize = 24;

const INDEX_VOLUME_ID_OFFSET: usize = 12;
const INDEX_GENERATION_OFFSET: usize = 16;
const INDEX_COUNT_OFFSET: usize = 24;
const INDEX_DATA_LEN_OFFSET: usize = 32;
const INDEX_CRC_OFFSET: usize = 40;
const ENTRY_CRC_OFFSET: usize = 20;

const INDEX_HEADER: HeaderLayout = HeaderLayout {
    what: "warm index header",
    magic: INDEX_MAGIC,
    version: INDEX_FORMAT_VERSION,
    size: INDEX_HEADER_SIZE,
    crc_offset: INDEX_CRC_OFFSET,
    reserved: &[10..12, 44..48],
};

/// The header of a warm volume's sorted index file:
///
/// ```text
/// offset  size  field
///      0     8  magic           89 'H' 'L' 'W' 'I' 'X' 0A 1A
///      8     2  version         u16 = 1
///     10     2  reserved        u16 = 0
///     12     4  volume_id       u32
///     16     8  generation      u64, the seal's encode generation (non-zero)
///     24     8  entry_count     u64
///     32     8  data_len_bytes  u64, the warm data file's length
///     40     4  header_crc      u32 CRC32 of bytes [0, 40)
///     44     4  reserved        u32 = 0
///     48  24*n  entries         in strictly increasing key order
/// ```
///
/// Each entry is `key u64, offset u64, size_bytes u32, entry_crc u32` (CRC32
/// of the entry's first 20 bytes), little-endian. The needles lie one after
/// the other from offset 0, so entry `i`'s offset is the sum of the sizes
/// before it and the last one ends at `data_len_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    /// The volume.
    pub volume_id: u32,
    /// The seal's encode generation.
    pub generation: u64,
    /// Entries in the file.
    pub entry_count: u64,
    /// Length of the warm data file the entries point into.
    pub data_len_bytes: u64,
}

impl IndexHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; INDEX_HEADER_SIZE] {
        let mut out = INDEX_HEADER.start();
        put(
            &mut out,
            INDEX_VOLUME_ID_OFFSET,
            &self.volume_id.to_le_bytes(),
        );
        put(
            &mut out,
            INDEX_GENERATION_OFFSET,
            &self.generation.to_le_bytes(),
        );
        put(
            &mut out,
            INDEX_COUNT_OFFSET,
            &self.entry_count.to_le_bytes(),
        );
        let data_len = self.data_len_bytes.to_le_bytes();
        put(&mut out, INDEX_DATA_LEN_OFFSET, &data_len);
        INDEX_HEADER.finish(&mut out);
        out
    }

    /// Decodes and checks a header (magic, CRC, version, reserved bytes,
    /// a non-zero generation).
    pub fn decode(bytes: &[u8]) -> Result<IndexHeader> {
        let bytes = INDEX_HEADER.check(bytes)?;
        let header = IndexHeader {
            volume_id: u32_at(bytes, INDEX_VOLUME_ID_OFFSET),
            generation: u64_at(bytes, INDEX_GENERATION_OFFSET),
            entry_count: u64_at(bytes, INDEX_COUNT_OFFSET),
            data_len_bytes: u64_at(bytes, INDEX_DATA_LEN_OFFSET),
        };
        if header.generation == 0 {
            return Err(Error::corrupt("index of encode generation 0"));
        }
        Ok(header)
    }

    /// Length of the whole index file.
    pub fn file_len_bytes(&self) -> Option<u64> {
        self.entry_count
            .checked_mul(INDEX_ENTRY_SIZE as u64)?
            .checked_add(INDEX_HEADER_SIZE as u64)
    }
}

/// One entry of a warm index: where a live needle lies in the data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexEntry {
    /// Needle key.
    pub key: u64,
    /// Offset of the needle in the warm data file.
    pub offset: u64,
    /// Size of the needle on disk, padding included.
    pub size_bytes: u32,
}

impl IndexEntry {
    /// Encodes the entry with its CRC.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_SIZE] {
        let mut out = [0u8; INDEX_ENTRY_SIZE];
        put(&mut out, 0, &self.key.to_le_bytes());
        put(&mut out, 8, &self.offset.to_le_bytes());
        put(&mut out, 16, &self.size_bytes.to_le_bytes());
        let crc = crc32fast::hash(&out[..ENTRY_CRC_OFFSET]);
        put(&mut out, ENTRY_CRC_OFFSET, &crc.to_le_bytes());
        out
    }

    /// Decodes an entry and checks its CRC.
    pub fn decode(bytes: &[u8]) -> Result<IndexEntry> {
        let bytes = bytes
            .get(..INDEX_ENTRY_SIZE)
            .ok_or_else(|| Error::corrupt("index entry is short"))?;
        if crc32fast::hash(&bytes[..ENTRY_CRC_OFFSET]) != u32_at(bytes, ENTRY_CRC_OFFSET) {
            return Err(Error::corrupt("index entry CRC mismatch"));
        }
        Ok(IndexEntry {
            key: u64_at(bytes, 0),
            offset: u64_at(bytes, 8),
            size_bytes: u32_at(bytes, 16),
        })
    }
}

/// Magic number of a warm volume's tombstone journal.
pub const JOURNAL_MAGIC: [u8; 8] = [0x89, b'H', b'L', b'J', b'R', b'N', b'\n', 0x1a];
/// Current format version of journals.
pub const JOURNAL_FORMAT_VERSION: u16 = 1;
/// Size of a journal's header; tombstones follow it.
pub const JOURNAL_HEADER_SIZE: usize = 32;
/// Size of one tombstone record.
pub const TOMBSTONE_SIZE: usize = 24;

const JOURNAL_VOLUME_ID_OFFSET: usize = 12;
const JOURNAL_GENERATION_OFFSET: usize = 16;
const JOURNAL_CRC_OFFSET: usize = 24;
const TOMBSTONE_CRC_OFFSET: usize = 20;

const JOURNAL_HEADER: HeaderLayout = HeaderLayout {
    what: "journal header",
    magic: JOURNAL_MAGIC,
    version: JOURNAL_FORMAT_VERSION,
    size: JOURNAL_HEADER_SIZE,
    crc_offset: JOURNAL_CRC_OFFSET,
    reserved: &[10..12, 28..32],
};

/// The header of a warm volume's tombstone journal:
///
/// ```text
/// offset  size  field
///      0     8  magic        89 'H' 'L' 'J' 'R' 'N' 0A 1A
///      8     2  version      u16 = 1
///     10     2  reserved     u16 = 0
///     12     4  volume_id    u32
///     16     8  generation   u64, the volume's encode generation (non-zero)
///     24     4  header_crc   u32 CRC32 of bytes [0, 24)
///     28     4  reserved     u32 = 0
///     32  24*n  tombstones   key u64, deleted_ms u64, reserved u32 = 0,
///                            record_crc u32 (CRC32 of the record's first 20 bytes)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalHeader {
    /// The volume.
    pub volume_id: u32,
    /// The volume's encode generation.
    pub generation: u64,
}

impl JournalHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; JOURNAL_HEADER_SIZE] {
        let mut out = JOURNAL_HEADER.start();
        put(
            &mut out,
            JOURNAL_VOLUME_ID_OFFSET,
            &self.volume_id.to_le_bytes(),
        );
        put(
            &mut out,
            JOURNAL_GENERATION_OFFSET,
            &self.generation.to_le_bytes(),
        );
        JOURNAL_HEADER.finish(&mut out);
        out
    }

    /// Decodes and checks a header (magic, CRC, version, reserved bytes,
    /// a non-zero generation).
    pub fn decode(bytes: &[u8]) -> Result<JournalHeader> {
        let bytes = JOURNAL_HEADER.check(bytes)?;
        let header = JournalHeader {
            volume_id: u32_at(bytes, JOURNAL_VOLUME_ID_OFFSET),
            generation: u64_at(bytes, JOURNAL_GENERATION_OFFSET),
        };
        if header.generation == 0 {
            return Err(Error::corrupt("journal of encode generation 0"));
        }
        Ok(header)
    }
}

/// One delete in a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The deleted needle's key.
    pub key: u64,
    /// When the delete was made (ms since the Unix epoch).
    pub deleted_ms: u64,
}

impl Tombstone {
    /// Encodes the record with its CRC.
    pub fn encode(&self) -> [u8; TOMBSTONE_SIZE] {
        let mut out = [0u8; TOMBSTONE_SIZE];
        put(&mut out, 0, &self.key.to_le_bytes());
        put(&mut out, 8, &self.deleted_ms.to_le_bytes());
        let crc = crc32fast::hash(&out[..TOMBSTONE_CRC_OFFSET]);
        put(&mut out, TOMBSTONE_CRC_OFFSET, &crc.to_le_bytes());
        out
    }

    /// Decodes a record and checks its CRC and reserved bytes.
    pub fn decode(bytes: &[u8]) -> Result<Tombstone> {
        let bytes = bytes
            .get(..TOMBSTONE_SIZE)
            .ok_or_else(|| Error::corrupt("tombstone is short"))?;
        if crc32fast::hash(&bytes[..TOMBSTONE_CRC_OFFSET]) != u32_at(bytes, TOMBSTONE_CRC_OFFSET) {
            return Err(Error::corrupt("tombstone CRC mismatch"));
        }
        if bytes[16..20].iter().any(|&b| b != 0) {
            return Err(Error::corrupt("tombstone reserved bytes are not zero"));
        }
        Ok(Tombstone {
            key: u64_at(bytes, 0),
            deleted_ms: u64_at(bytes, 8),
        })
    }
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// `decode` refuses `bytes` with any one bit flipped, and every prefix.
    fn every_change_is_refused<T: std::fmt::Debug>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<T>,
    ) {
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "bit {bit} flipped");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut to {len} bytes");
        }
    }

    fn rs_10_4(volume_len: u64, max_block: u64) -> Geometry {
        Geometry::choose(volume_len, max_block, 10, 4, 512).expect("geometry")
    }

    #[test]
    fn block_size_fills_stripes() {
        // A volume the size of the largest block: ten blocks of a tenth.
        let g = rs_10_4(1024 * KIB, 1024 * KIB);
        assert_eq!(g.block_size_bytes, 1024 * KIB / 10 + 1);
        assert_eq!(g.layout().unwrap().stripe_count(), 1);
        // Exactly n full stripes of the largest block: that block size.
        let g = rs_10_4(3 * 10 * 64 * KIB, 64 * KIB);
        assert_eq!(g.block_size_bytes, 64 * KIB);
        assert_eq!(g.layout().unwrap().stripe_count(), 3);
        // One byte more needs a fourth stripe, and smaller blocks.
        let g = rs_10_4(3 * 10 * 64 * KIB + 1, 64 * KIB);
        assert_eq!(g.layout().unwrap().stripe_count(), 4);
        assert!(g.block_size_bytes <= 64 * KIB);
        assert_eq!(g.block_size_bytes, (3 * 10 * 64 * KIB + 1).div_ceil(40));
        // Smaller than one block, and empty.
        assert_eq!(rs_10_4(7, 64 * KIB).block_size_bytes, 1);
        assert_eq!(rs_10_4(0, 64 * KIB).block_size_bytes, 1);
        assert!(Geometry::choose(10, 0, 10, 4, 512).is_err());
        assert!(Geometry::choose(10, u64::MAX, 10, 4, 512).is_err());
    }

    #[test]
    fn stored_bytes_over_live_bytes_stay_near_one_point_four() {
        for volume_len in [1, 999, 64 * KIB, 1000 * KIB + 7, 10 * 1024 * KIB] {
            let g = rs_10_4(volume_len, 256 * KIB);
            let layout = g.layout().unwrap();
            let mut data = 0;
            let mut stored = 0;
            for stripe in 0..layout.stripe_count() {
                for block in 0..g.blocks_per_stripe() {
                    let len = expected_block_len(&g, stripe, block).unwrap();
                    stored += len;
                    if block < 10 {
                        data += len;
                    }
                }
            }
            assert_eq!(data, volume_len, "every byte in exactly one data block");
            // Parity of at most the longest data block per stripe: 1.4 plus
            // the rounding of one block per stripe.
            let bound = volume_len as f64 * 1.4 + 4.0 * layout.stripe_count() as f64;
            assert!(stored as f64 <= bound, "{volume_len}: {stored} > {bound}");
        }
    }

    #[test]
    fn header_round_trips_and_every_bit_flip_is_refused() {
        let g = rs_10_4(3 * 10 * 64 * KIB + 1, 64 * KIB);
        for (stripe, block) in [(0, 0), (3, 0), (3, 1), (3, 13), (2, 9)] {
            let header = BlockHeader::new(7, 42, g, stripe, block).expect("header");
            let bytes = header.encode();
            assert_eq!(BlockHeader::decode(&bytes).expect("decode"), header);
            every_change_is_refused(&bytes, BlockHeader::decode);
        }
    }

    #[test]
    fn a_header_the_geometry_does_not_allow_is_refused_even_with_a_good_crc() {
        let g = rs_10_4(100 * KIB, 64 * KIB);
        let good = BlockHeader::new(1, 1, g, 0, 0).expect("header");
        let reencoded = |edit: &dyn Fn(&mut BlockHeader)| {
            let mut header = good;
            edit(&mut header);
            BlockHeader::decode(&header.encode())
        };
        assert!(reencoded(&|h| h.block_len_bytes += 1).is_err());
        assert!(reencoded(&|h| h.stripe = 1).is_err());
        assert!(reencoded(&|h| h.block_index = 14).is_err());
        assert!(reencoded(&|h| h.generation = 0).is_err());
        assert!(reencoded(&|h| h.geometry.data_blocks = 0).is_err());
        assert!(reencoded(&|h| h.geometry.chunk_size_bytes = 100).is_err());
        assert!(reencoded(&|h| h.geometry.block_size_bytes = 0).is_err());
        // A different but consistent geometry decodes: the reader compares
        // it with the directory's record.
        assert!(reencoded(&|h| h.volume_id = 2).is_ok());
        assert!(BlockHeader::new(1, 1, g, 0, 14).is_err());
        assert!(BlockHeader::new(1, 0, g, 0, 0).is_err());
    }

    #[test]
    fn index_header_and_entries_round_trip_and_refuse_bit_flips() {
        let header = IndexHeader {
            volume_id: 9,
            generation: 3,
            entry_count: 2,
            data_len_bytes: 4096,
        };
        let bytes = header.encode();
        assert_eq!(IndexHeader::decode(&bytes).unwrap(), header);
        assert_eq!(header.file_len_bytes(), Some(48 + 48));
        every_change_is_refused(&bytes, IndexHeader::decode);
        let entry = IndexEntry {
            key: u64::MAX - 1,
            offset: 1 << 40,
            size_bytes: 4096,
        };
        let bytes = entry.encode();
        assert_eq!(IndexEntry::decode(&bytes).unwrap(), entry);
        every_change_is_refused(&bytes, IndexEntry::decode);
    }

    #[test]
    fn checksums_must_describe_the_block() {
        let g = rs_10_4(100 * KIB, 64 * KIB);
        let header = BlockHeader::new(1, 1, g, 0, 0).expect("header");
        let len = usize::try_from(header.block_len_bytes).unwrap();
        let data = vec![5u8; len];
        let good = BlockChecksums::compute(512, &data).unwrap();
        header.check_checksums(&good).expect("matches");
        assert_eq!(
            header.file_len_bytes(),
            Some((BLOCK_HEADER_SIZE + len + good.encoded_len()) as u64)
        );
        let short = BlockChecksums::compute(512, &data[1..]).unwrap();
        assert!(header.check_checksums(&short).is_err());
        let other_chunks = BlockChecksums::compute(1024, &data).unwrap();
        assert!(header.check_checksums(&other_chunks).is_err());
    }
}
