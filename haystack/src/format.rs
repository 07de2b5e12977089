//! Every byte layout of the hot tier: volume superblock, needle, index file header and
//! index record. No other file computes an on-disk offset.
//!
//! Files of volume `N` in a store directory:
//! `volume-NNNNNNNNNN.data` (ten decimal digits; superblock, then needles back to back)
//! and `volume-NNNNNNNNNN.index` (index header, then fixed-size records; a hint that lags the
//! data file). Integers are little-endian with explicit widths. Mirrored in `docs/FORMAT.md`.
//!
//! ```text
//! superblock (64 bytes, data file offset 0)
//!  0 magic [8] 89 'H' 'Y' 'V' 0d 0a 1a 0a     8 format_version u32   12 volume_id u32
//! 16 created_unix_ms u64                     24 instance_id u64 (identity of this file)
//! 32 generation u32 (compactions)            36 flags u32 (bit0 locked, bit1 key_floor set)
//! 40 key_floor u64 (highest key ever appended before this file was written by compaction)
//! 48 reserved [12] zero                      60 crc32 u32 over bytes 0..60
//!
//! needle (at an 8-aligned offset, total padded to a multiple of 8)
//!  0 header_magic u32 "HNDL"   4 cookie u32   8 key u64   16 flags u8 (bit0 deleted)
//! 17 content_type_len u8       18 reserved u16 zero       20 data_size u32
//! 24 content_type [content_type_len] (UTF-8)   data [data_size]
//!    footer_magic u32 "HEND"   crc32 u32   padding [0..8) zero
//! crc32 covers header (with the flags byte read as 0: it is rewritten by delete),
//! content type and data.
//!
//! index header (32 bytes)
//!  0 magic [8] 89 'H' 'Y' 'I' 0d 0a 1a 0a     8 format_version u32   12 volume_id u32
//! 16 instance_id u64 (must equal the superblock's, else the index is rebuilt)
//! 24 reserved u32 zero                       28 crc32 u32 over bytes 0..28
//!
//! index record (32 bytes)
//!  0 key u64   8 offset u64   16 size_bytes u32   20 kind u8 (1 put, 2 delete)
//! 21 flags u8 (needle flags)  22 reserved u16 zero  24 record_magic u32 "HYIX"
//! 28 crc32 u32 over bytes 0..28
//! ```

use bytes::Bytes;

use crate::error::{Error, Result};

/// Format version of data and index files. Bump on any incompatible change.
pub const VOLUME_FORMAT_VERSION: u32 = 1;

/// Magic at the start of a data file (PNG style: altered by newline or text-mode mangling).
pub const SUPERBLOCK_MAGIC: [u8; 8] = [0x89, b'H', b'Y', b'V', b'\r', b'\n', 0x1a, b'\n'];
/// Size of the superblock; the first needle starts here.
pub const SUPERBLOCK_SIZE: u64 = 64;
const SB_VERSION_OFFSET: usize = 8;
const SB_VOLUME_OFFSET: usize = SB_VERSION_OFFSET + 4;
const SB_CREATED_OFFSET: usize = SB_VOLUME_OFFSET + 4;
const SB_INSTANCE_OFFSET: usize = SB_CREATED_OFFSET + 8;
const SB_GENERATION_OFFSET: usize = SB_INSTANCE_OFFSET + 8;
const SB_FLAGS_OFFSET: usize = SB_GENERATION_OFFSET + 4;
const SB_KEY_FLOOR_OFFSET: usize = SB_FLAGS_OFFSET + 4;
const SB_RESERVED_OFFSET: usize = SB_KEY_FLOOR_OFFSET + 8;
const SB_CHECKSUM_OFFSET: usize = 60;
const _: () = assert!(SB_RESERVED_OFFSET + 12 == SB_CHECKSUM_OFFSET);
const _: () = assert!(SB_CHECKSUM_OFFSET + 4 == SUPERBLOCK_SIZE as usize);
/// Superblock flag: the volume is locked (read-only for good).
pub const SUPERBLOCK_FLAG_LOCKED: u32 = 1;
/// Superblock flag: `key_floor` is meaningful.
pub const SUPERBLOCK_FLAG_KEY_FLOOR: u32 = 2;

/// Magic at the start of every needle.
pub const NEEDLE_HEADER_MAGIC: u32 = u32::from_le_bytes(*b"HNDL");
/// Magic at the start of every needle footer.
pub const NEEDLE_FOOTER_MAGIC: u32 = u32::from_le_bytes(*b"HEND");
/// Size of a needle header.
pub const NEEDLE_HEADER_SIZE: usize = 24;
const NH_COOKIE_OFFSET: usize = 4;
const NH_KEY_OFFSET: usize = NH_COOKIE_OFFSET + 4;
/// Offset of the flags byte inside a needle (rewritten in place by delete).
pub const NEEDLE_FLAGS_OFFSET: usize = NH_KEY_OFFSET + 8;
const NH_CONTENT_TYPE_LEN_OFFSET: usize = NEEDLE_FLAGS_OFFSET + 1;
const NH_RESERVED_OFFSET: usize = NH_CONTENT_TYPE_LEN_OFFSET + 1;
const NH_DATA_SIZE_OFFSET: usize = NH_RESERVED_OFFSET + 2;
const _: () = assert!(NH_DATA_SIZE_OFFSET + 4 == NEEDLE_HEADER_SIZE);
/// Size of a needle footer (magic and checksum).
pub const NEEDLE_FOOTER_SIZE: usize = 8;
/// Needles start and end on multiples of this.
pub const NEEDLE_ALIGNMENT: u64 = 8;
/// Needle flag: deleted.
pub const NEEDLE_FLAG_DELETED: u8 = 1;
const NEEDLE_KNOWN_FLAGS: u8 = NEEDLE_FLAG_DELETED;
/// Longest content type a needle can carry.
pub const CONTENT_TYPE_LEN_MAX: usize = u8::MAX as usize;
/// Largest needle (header, metadata, data, footer, padding) the format can describe.
pub const NEEDLE_SIZE_MAX: u64 = u32::MAX as u64 - (u32::MAX as u64 % NEEDLE_ALIGNMENT);

/// Magic at the start of an index file.
pub const INDEX_MAGIC: [u8; 8] = [0x89, b'H', b'Y', b'I', b'\r', b'\n', 0x1a, b'\n'];
/// Size of the index file header; the first record starts here.
pub const INDEX_HEADER_SIZE: u64 = 32;
const IH_VERSION_OFFSET: usize = 8;
const IH_VOLUME_OFFSET: usize = IH_VERSION_OFFSET + 4;
const IH_INSTANCE_OFFSET: usize = IH_VOLUME_OFFSET + 4;
const IH_RESERVED_OFFSET: usize = IH_INSTANCE_OFFSET + 8;
const IH_CHECKSUM_OFFSET: usize = IH_RESERVED_OFFSET + 4;
const _: () = assert!(IH_CHECKSUM_OFFSET + 4 == INDEX_HEADER_SIZE as usize);

/// Size of one index record.
pub const INDEX_RECORD_SIZE: u64 = 32;
/// Magic inside every index record.
pub const INDEX_RECORD_MAGIC: u32 = u32::from_le_bytes(*b"HYIX");
const IR_OFFSET_OFFSET: usize = 8;
const IR_SIZE_OFFSET: usize = IR_OFFSET_OFFSET + 8;
const IR_KIND_OFFSET: usize = IR_SIZE_OFFSET + 4;
const IR_FLAGS_OFFSET: usize = IR_KIND_OFFSET + 1;
const IR_RESERVED_OFFSET: usize = IR_FLAGS_OFFSET + 1;
const IR_MAGIC_OFFSET: usize = IR_RESERVED_OFFSET + 2;
const IR_CHECKSUM_OFFSET: usize = IR_MAGIC_OFFSET + 4;
const _: () = assert!(IR_CHECKSUM_OFFSET + 4 == INDEX_RECORD_SIZE as usize);

/// The little-endian `u32` at `at` (the caller checked the length).
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The little-endian `u64` at `at` (the caller checked the length).
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Rounds `n` up to the needle alignment.
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(NEEDLE_ALIGNMENT) * NEEDLE_ALIGNMENT
}

// ---------------------------------------------------------------------------------------------
// Superblock

/// The decoded superblock of a data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The volume id.
    pub volume_id: u32,
    /// When the volume was first created (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// Identity of this very file; the index file names it.
    pub instance_id: u64,
    /// How many compactions produced this file.
    pub generation: u32,
    /// Whether the volume is locked.
    pub locked: bool,
    /// Highest key appended before this file was rewritten by compaction, if any.
    pub key_floor: Option<u64>,
}

/// Encodes a superblock.
pub fn encode_superblock(sb: &Superblock) -> [u8; SUPERBLOCK_SIZE as usize] {
    let mut b = [0u8; SUPERBLOCK_SIZE as usize];
    b[..8].copy_from_slice(&SUPERBLOCK_MAGIC);
    b[SB_VERSION_OFFSET..][..4].copy_from_slice(&VOLUME_FORMAT_VERSION.to_le_bytes());
    b[SB_VOLUME_OFFSET..][..4].copy_from_slice(&sb.volume_id.to_le_bytes());
    b[SB_CREATED_OFFSET..][..8].copy_from_slice(&sb.created_unix_ms.to_le_bytes());
    b[SB_INSTANCE_OFFSET..][..8].copy_from_slice(&sb.instance_id.to_le_bytes());
    b[SB_GENERATION_OFFSET..][..4].copy_from_slice(&sb.generation.to_le_bytes());
    let mut flags = 0u32;
    if sb.locked {
        flags |= SUPERBLOCK_FLAG_LOCKED;
    }
    if sb.key_floor.is_some() {
        flags |= SUPERBLOCK_FLAG_KEY_FLOOR;
    }
    b[SB_FLAGS_OFFSET..][..4].copy_from_slice(&flags.to_le_bytes());
    b[SB_KEY_FLOOR_OFFSET..][..8].copy_from_slice(&sb.key_floor.unwrap_or(0).to_le_bytes());
    let crc = crc32fast::hash(&b[..SB_CHECKSUM_OFFSET]);
    b[SB_CHECKSUM_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and validates a superblock read from the data file of volume `volume`.
pub fn decode_superblock(b: &[u8], volume: u32) -> Result<Superblock> {
    let bad = |reason: &str| Error::corrupt(volume, 0, format!("superblock: {reason}"));
    if b.len() < SUPERBLOCK_SIZE as usize {
        return Err(bad("file shorter than the superblock"));
    }
    if b[..8] != SUPERBLOCK_MAGIC {
        return Err(bad("bad magic"));
    }
    let version = u32_at(b, SB_VERSION_OFFSET);
    if version != VOLUME_FORMAT_VERSION {
        return Err(bad(&format!("unsupported format version {version}")));
    }
    if crc32fast::hash(&b[..SB_CHECKSUM_OFFSET]) != u32_at(b, SB_CHECKSUM_OFFSET) {
        return Err(bad("checksum mismatch"));
    }
    let flags = u32_at(b, SB_FLAGS_OFFSET);
    if flags & !(SUPERBLOCK_FLAG_LOCKED | SUPERBLOCK_FLAG_KEY_FLOOR) != 0 {
        return Err(bad("unknown flags"));
    }
    let key_floor = u64_at(b, SB_KEY_FLOOR_OFFSET);
    Ok(Superblock {
        volume_id: u32_at(b, SB_VOLUME_OFFSET),
        created_unix_ms: u64_at(b, SB_CREATED_OFFSET),
        instance_id: u64_at(b, SB_INSTANCE_OFFSET),
        generation: u32_at(b, SB_GENERATION_OFFSET),
        locked: flags & SUPERBLOCK_FLAG_LOCKED != 0,
        key_floor: (flags & SUPERBLOCK_FLAG_KEY_FLOOR != 0).then_some(key_floor),
    })
}

// ---------------------------------------------------------------------------------------------
// Needle

/// A needle read back from a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needle {
    /// The needle key.
    pub key: u64,
    /// The random cookie checked on every read.
    pub cookie: u32,
    /// The content type given at upload (may be empty).
    pub content_type: String,
    /// The BLOB's bytes: a zero-copy slice of the buffer the needle was read into.
    pub data: Bytes,
    /// CRC32 (crc32fast, IEEE) of `data` alone. The needle's stored checksum, which also
    /// covers header and content type, has been verified when a `Needle` is returned.
    pub crc32: u32,
}

/// The fixed header of a needle, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedleHeader {
    /// The cookie.
    pub cookie: u32,
    /// The key.
    pub key: u64,
    /// Flags (see [`NEEDLE_FLAG_DELETED`]).
    pub flags: u8,
    /// Length of the content type.
    pub content_type_len: u8,
    /// Length of the data.
    pub data_size: u32,
}

impl NeedleHeader {
    /// Total on-disk size of the needle this header starts, padding included.
    pub fn size_bytes(&self) -> u64 {
        needle_size_bytes(self.content_type_len as usize, self.data_size as u64)
    }

    /// Whether the deleted flag is set.
    pub fn deleted(&self) -> bool {
        self.flags & NEEDLE_FLAG_DELETED != 0
    }
}

/// Most bytes a needle's header and content type take: what [`NeedleMeta`] is read from.
pub const NEEDLE_META_BYTES_MAX: usize = NEEDLE_HEADER_SIZE + CONTENT_TYPE_LEN_MAX;

/// A needle's header and content type: what its first bytes give, without the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedleMeta {
    /// The header, validated.
    pub header: NeedleHeader,
    /// The content type given at upload (may be empty).
    pub content_type: String,
}

/// Total on-disk size of a needle with this content type and data length.
pub fn needle_size_bytes(content_type_len: usize, data_len: u64) -> u64 {
    align_up(
        NEEDLE_HEADER_SIZE as u64 + content_type_len as u64 + data_len + NEEDLE_FOOTER_SIZE as u64,
    )
}

fn needle_crc(header: &[u8], content_type: &[u8], data_hasher: &crc32fast::Hasher) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..NEEDLE_FLAGS_OFFSET]);
    h.update(&[0u8]);
    h.update(&header[NEEDLE_FLAGS_OFFSET + 1..NEEDLE_HEADER_SIZE]);
    h.update(content_type);
    h.combine(data_hasher);
    h.finalize()
}

/// A live needle around its data: what goes before the data (header and
/// content type) and after it (footer and padding), so that the data itself
/// is written from the caller's buffers without being copied into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedleFrame {
    /// Header and content type.
    pub head: Vec<u8>,
    /// Footer magic, needle CRC and the zero padding to the alignment.
    pub tail: Vec<u8>,
    /// The needle's size on disk: head, data and tail.
    pub size_bytes: u64,
    /// CRC32 of the data alone.
    pub data_crc: u32,
}

/// Frames a live needle whose data is `parts` in order.
///
/// The caller validates sizes first ([`check_needle_input`]).
pub fn frame_needle(key: u64, cookie: u32, content_type: &str, parts: &[&[u8]]) -> NeedleFrame {
    let ct = content_type.as_bytes();
    assert!(
        ct.len() <= CONTENT_TYPE_LEN_MAX,
        "content type checked by caller"
    );
    let data_len: usize = parts.iter().map(|part| part.len()).sum();
    let size_bytes = needle_size_bytes(ct.len(), data_len as u64);
    assert!(
        size_bytes <= NEEDLE_SIZE_MAX,
        "needle size checked by caller"
    );
    let mut head = Vec::with_capacity(NEEDLE_HEADER_SIZE + ct.len());
    head.extend_from_slice(&NEEDLE_HEADER_MAGIC.to_le_bytes());
    head.extend_from_slice(&cookie.to_le_bytes());
    head.extend_from_slice(&key.to_le_bytes());
    head.push(0);
    head.push(u8::try_from(ct.len()).expect("checked above"));
    head.extend_from_slice(&0u16.to_le_bytes());
    let data_size = u32::try_from(data_len).expect("checked above");
    head.extend_from_slice(&data_size.to_le_bytes());
    debug_assert_eq!(head.len(), NEEDLE_HEADER_SIZE);
    head.extend_from_slice(ct);
    let mut dh = crc32fast::Hasher::new();
    for part in parts {
        dh.update(part);
    }
    let data_crc = dh.clone().finalize();
    let crc = needle_crc(&head[..NEEDLE_HEADER_SIZE], ct, &dh);
    let tail_len =
        usize::try_from(size_bytes).expect("needle fits in memory") - head.len() - data_len;
    let mut tail = Vec::with_capacity(tail_len);
    tail.extend_from_slice(&NEEDLE_FOOTER_MAGIC.to_le_bytes());
    tail.extend_from_slice(&crc.to_le_bytes());
    tail.resize(tail_len, 0);
    NeedleFrame {
        head,
        tail,
        size_bytes,
        data_crc,
    }
}

/// Encodes a live needle. Returns the bytes and the CRC32 of `data` alone.
///
/// The caller validates sizes first ([`check_needle_input`]).
pub fn encode_needle(key: u64, cookie: u32, content_type: &str, data: &[u8]) -> (Vec<u8>, u32) {
    let frame = frame_needle(key, cookie, content_type, &[data]);
    let mut b =
        Vec::with_capacity(usize::try_from(frame.size_bytes).expect("needle fits in memory"));
    b.extend_from_slice(&frame.head);
    b.extend_from_slice(data);
    b.extend_from_slice(&frame.tail);
    (b, frame.data_crc)
}

/// Checks that a needle with this content type and data length can be encoded.
pub fn check_needle_input(content_type: &str, data_len: usize) -> Result<u64> {
    if content_type.len() > CONTENT_TYPE_LEN_MAX {
        return Err(Error::InvalidInput(format!(
            "content type is {} bytes, at most {CONTENT_TYPE_LEN_MAX}",
            content_type.len()
        )));
    }
    let size = needle_size_bytes(content_type.len(), data_len as u64);
    if size > NEEDLE_SIZE_MAX {
        return Err(Error::InvalidInput(format!(
            "BLOB of {data_len} bytes is too large"
        )));
    }
    Ok(size)
}

/// Decodes and validates a needle header (magic, flags, reserved bits, sizes).
pub fn decode_needle_header(b: &[u8], volume: u32, offset: u64) -> Result<NeedleHeader> {
    let bad = |reason: &str| Error::corrupt(volume, offset, format!("needle header: {reason}"));
    if b.len() < NEEDLE_HEADER_SIZE {
        return Err(bad("short"));
    }
    if u32_at(b, 0) != NEEDLE_HEADER_MAGIC {
        return Err(bad("bad magic"));
    }
    let flags = b[NEEDLE_FLAGS_OFFSET];
    if flags & !NEEDLE_KNOWN_FLAGS != 0 {
        return Err(bad("unknown flags"));
    }
    if b[NH_RESERVED_OFFSET] != 0 || b[NH_RESERVED_OFFSET + 1] != 0 {
        return Err(bad("reserved bytes not zero"));
    }
    let header = NeedleHeader {
        cookie: u32_at(b, NH_COOKIE_OFFSET),
        key: u64_at(b, NH_KEY_OFFSET),
        flags,
        content_type_len: b[NH_CONTENT_TYPE_LEN_OFFSET],
        data_size: u32_at(b, NH_DATA_SIZE_OFFSET),
    };
    if header.size_bytes() > NEEDLE_SIZE_MAX {
        return Err(bad("size too large"));
    }
    Ok(header)
}

/// Fully validates one whole needle (exactly its padded size) without allocating: magic,
/// flags, lengths, footer, padding and checksum. Returns the header and the data's CRC32.
pub fn validate_needle(b: &[u8], volume: u32, offset: u64) -> Result<(NeedleHeader, u32)> {
    let header = decode_needle_header(b, volume, offset)?;
    let bad = |reason: &str| Error::corrupt(volume, offset, format!("needle: {reason}"));
    if header.size_bytes() != b.len() as u64 {
        return Err(bad("length does not match the header"));
    }
    let data_start = NEEDLE_HEADER_SIZE + header.content_type_len as usize;
    let data_end = data_start + header.data_size as usize;
    let footer_end = data_end + NEEDLE_FOOTER_SIZE;
    if u32_at(b, data_end) != NEEDLE_FOOTER_MAGIC {
        return Err(bad("bad footer magic"));
    }
    if b[footer_end..].iter().any(|&x| x != 0) {
        return Err(bad("padding not zero"));
    }
    let mut dh = crc32fast::Hasher::new();
    dh.update(&b[data_start..data_end]);
    let data_crc = dh.clone().finalize();
    let crc = needle_crc(
        &b[..NEEDLE_HEADER_SIZE],
        &b[NEEDLE_HEADER_SIZE..data_start],
        &dh,
    );
    if crc != u32_at(b, data_end + 4) {
        return Err(bad("checksum mismatch"));
    }
    if std::str::from_utf8(&b[NEEDLE_HEADER_SIZE..data_start]).is_err() {
        return Err(bad("content type is not UTF-8"));
    }
    Ok((header, data_crc))
}

/// Checks a needle copied from elsewhere (a peer's copy, or bytes read at a
/// planned offset) that should be key `key` in `size_bytes` bytes: every
/// check of [`validate_needle`], and that key and size.
pub fn check_needle_copy(b: &[u8], volume: u32, key: u64, size_bytes: u64) -> Result<()> {
    let (header, _) = validate_needle(b, volume, 0)?;
    if header.key != key || header.size_bytes() != size_bytes {
        return Err(Error::corrupt(
            volume,
            0,
            format!(
                "needle copy holds key {:x} in {} bytes, expected key {key:x} in {size_bytes}",
                header.key,
                header.size_bytes()
            ),
        ));
    }
    Ok(())
}

/// Decodes and fully validates one whole needle (exactly its padded size), taking the
/// buffer to avoid a copy of the data: `data` is a slice of it (the buffer lives as long as
/// the data does). Returns the needle and its flags.
pub fn decode_needle(b: Vec<u8>, volume: u32, offset: u64) -> Result<(Needle, u8)> {
    let (header, data_crc) = validate_needle(&b, volume, offset)?;
    let data_start = NEEDLE_HEADER_SIZE + header.content_type_len as usize;
    let data_end = data_start + header.data_size as usize;
    let content_type = String::from_utf8_lossy(&b[NEEDLE_HEADER_SIZE..data_start]).into_owned();
    let needle = Needle {
        key: header.key,
        cookie: header.cookie,
        content_type,
        data: Bytes::from(b).slice(data_start..data_end),
        crc32: data_crc,
    };
    Ok((needle, header.flags))
}

// ---------------------------------------------------------------------------------------------
// Index file

/// Encodes an index file header naming the data file's `instance_id`.
pub fn encode_index_header(volume_id: u32, instance_id: u64) -> [u8; INDEX_HEADER_SIZE as usize] {
    let mut b = [0u8; INDEX_HEADER_SIZE as usize];
    b[..8].copy_from_slice(&INDEX_MAGIC);
    b[IH_VERSION_OFFSET..][..4].copy_from_slice(&VOLUME_FORMAT_VERSION.to_le_bytes());
    b[IH_VOLUME_OFFSET..][..4].copy_from_slice(&volume_id.to_le_bytes());
    b[IH_INSTANCE_OFFSET..][..8].copy_from_slice(&instance_id.to_le_bytes());
    let crc = crc32fast::hash(&b[..IH_CHECKSUM_OFFSET]);
    b[IH_CHECKSUM_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an index header; returns `(volume_id, instance_id)`.
pub fn decode_index_header(b: &[u8], volume: u32) -> Result<(u32, u64)> {
    let bad = |reason: &str| Error::corrupt(volume, 0, format!("index header: {reason}"));
    if b.len() < INDEX_HEADER_SIZE as usize {
        return Err(bad("short"));
    }
    if b[..8] != INDEX_MAGIC {
        return Err(bad("bad magic"));
    }
    if u32_at(b, IH_VERSION_OFFSET) != VOLUME_FORMAT_VERSION {
        return Err(bad("unsupported version"));
    }
    if crc32fast::hash(&b[..IH_CHECKSUM_OFFSET]) != u32_at(b, IH_CHECKSUM_OFFSET) {
        return Err(bad("checksum mismatch"));
    }
    Ok((u32_at(b, IH_VOLUME_OFFSET), u64_at(b, IH_INSTANCE_OFFSET)))
}

/// What an index record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexRecordKind {
    /// A needle was appended (its flags tell whether it is already deleted).
    Put,
    /// An earlier needle was deleted.
    Delete,
}

/// One index record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    /// Put or delete.
    pub kind: IndexRecordKind,
    /// Needle key.
    pub key: u64,
    /// Needle offset in the data file.
    pub offset: u64,
    /// Needle size on disk, padding included.
    pub size_bytes: u32,
    /// Needle flags.
    pub flags: u8,
}

/// Encodes an index record.
pub fn encode_index_record(r: &IndexRecord) -> [u8; INDEX_RECORD_SIZE as usize] {
    let mut b = [0u8; INDEX_RECORD_SIZE as usize];
    b[..8].copy_from_slice(&r.key.to_le_bytes());
    b[IR_OFFSET_OFFSET..][..8].copy_from_slice(&r.offset.to_le_bytes());
    b[IR_SIZE_OFFSET..][..4].copy_from_slice(&r.size_bytes.to_le_bytes());
    b[IR_KIND_OFFSET] = match r.kind {
        IndexRecordKind::Put => 1,
        IndexRecordKind::Delete => 2,
    };
    b[IR_FLAGS_OFFSET] = r.flags;
    b[IR_MAGIC_OFFSET..][..4].copy_from_slice(&INDEX_RECORD_MAGIC.to_le_bytes());
    let crc = crc32fast::hash(&b[..IR_CHECKSUM_OFFSET]);
    b[IR_CHECKSUM_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and validates one index record at byte `offset` of the index file.
pub fn decode_index_record(b: &[u8], volume: u32, offset: u64) -> Result<IndexRecord> {
    let bad = |reason: &str| Error::corrupt(volume, offset, format!("index record: {reason}"));
    if b.len() < INDEX_RECORD_SIZE as usize {
        return Err(bad("short"));
    }
    if u32_at(b, IR_MAGIC_OFFSET) != INDEX_RECORD_MAGIC {
        return Err(bad("bad magic"));
    }
    if crc32fast::hash(&b[..IR_CHECKSUM_OFFSET]) != u32_at(b, IR_CHECKSUM_OFFSET) {
        return Err(bad("checksum mismatch"));
    }
    let kind = match b[IR_KIND_OFFSET] {
        1 => IndexRecordKind::Put,
        2 => IndexRecordKind::Delete,
        _ => return Err(bad("unknown kind")),
    };
    let flags = b[IR_FLAGS_OFFSET];
    if flags & !NEEDLE_KNOWN_FLAGS != 0
        || b[IR_RESERVED_OFFSET] != 0
        || b[IR_RESERVED_OFFSET + 1] != 0
    {
        return Err(bad("unknown flags or reserved bits"));
    }
    Ok(IndexRecord {
        kind,
        key: u64_at(b, 0),
        offset: u64_at(b, IR_OFFSET_OFFSET),
        size_bytes: u32_at(b, IR_SIZE_OFFSET),
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needle_round_trip_and_bit_flips() {
        let (bytes, crc) = encode_needle(7, 0xdead_beef, "text/plain", b"hello");
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(crc, crc32fast::hash(b"hello"));
        let (n, flags) = decode_needle(bytes.clone(), 1, 64).expect("valid");
        assert_eq!((n.key, n.cookie, flags), (7, 0xdead_beef, 0));
        assert_eq!(n.data, &b"hello"[..]);
        assert_eq!(n.content_type, "text/plain");
        for bit in 0..bytes.len() * 8 {
            if bit / 8 == NEEDLE_FLAGS_OFFSET && bit % 8 == 0 {
                continue; // the deleted flag: a legal change
            }
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_needle(b, 1, 64).is_err(), "bit {bit} undetected");
        }
    }

    /// A needle framed around its data in pieces is byte for byte the
    /// needle encoded from the data in one buffer, for every way of cutting
    /// it (empty pieces included) and every padding.
    #[test]
    fn a_needle_framed_around_pieces_is_the_encoded_needle() {
        let data: Vec<u8> = (0..37u8).collect();
        for len in 0..data.len() {
            let data = &data[..len];
            let (whole, crc) = encode_needle(9, 42, "image/png", data);
            for cut in 0..=len {
                let parts: [&[u8]; 4] = [&[], &data[..cut], &[], &data[cut..]];
                let frame = frame_needle(9, 42, "image/png", &parts);
                let mut framed = frame.head.clone();
                framed.extend_from_slice(data);
                framed.extend_from_slice(&frame.tail);
                assert_eq!(framed, whole, "len {len}, cut at {cut}");
                assert_eq!(frame.size_bytes, whole.len() as u64);
                assert_eq!(frame.data_crc, crc);
            }
        }
    }

    #[test]
    fn superblock_and_index_round_trip() {
        let sb = Superblock {
            volume_id: 3,
            created_unix_ms: 5,
            instance_id: 9,
            generation: 2,
            locked: true,
            key_floor: Some(44),
        };
        assert_eq!(
            decode_superblock(&encode_superblock(&sb), 3).expect("ok"),
            sb
        );
        let r = IndexRecord {
            kind: IndexRecordKind::Delete,
            key: 1,
            offset: 64,
            size_bytes: 40,
            flags: 1,
        };
        assert_eq!(
            decode_index_record(&encode_index_record(&r), 3, 32).expect("ok"),
            r
        );
        assert_eq!(
            decode_index_header(&encode_index_header(3, 9), 3).expect("ok"),
            (3, 9)
        );
    }
}
