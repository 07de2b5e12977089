//! Wire format of the store node's read batch (`POST /needles/read-batch`), version 1.
//!
//! A router coalesces concurrent small reads for one store node into one request; the store
//! node answers every entry, in request order, in one body. This file owns every byte of both
//! bodies; `docs/FORMAT.md` ("Read batch") mirrors it. Integers are little-endian with explicit
//! widths. Decoders treat the body as hostile: they check every length before slicing or
//! allocating and return [`BatchError`], never panic.
//!
//! ```text
//! request                                   answer
//!  0 magic [4] "HLRB"                        0 magic [4] "HLRA"
//!  4 version u8 = 1                          4 version u8 = 1
//!  5 reserved [3] zero                       5 reserved [3] zero
//!  8 count u32 (1..=64)                      8 count u32 (= the request's)
//! 12 entries, 24 bytes each:                12 entries, in request order:
//!     0 volume u32                              0 status u8 (0 found, 1 not_found,
//!     4 flags u32 (bit 0 head; others 0)          2 unknown_volume, 3 corrupt,
//!     8 key u64                                   4 too_large, 5 failed)
//!    16 cookie u32                              1 reserved [3] zero
//!    20 max_data_bytes u32                      4 by status:
//!                                                 found: crc32 u32 (0 if head), len u64,
//!                                                   content_type_len u16, content_type,
//!                                                   then len data bytes unless head
//!                                                 too_large: len u64
//!                                                 unknown_volume, corrupt, failed:
//!                                                   message_len u16, UTF-8 message
//!                                                 not_found: nothing
//! ```

use crate::format::{u32_at, u64_at};
use bytes::{BufMut, Bytes, BytesMut};

/// Most entries in one batch.
pub const MAX_BATCH_ENTRIES: usize = 64;
/// Content-Type of batch request and answer bodies.
pub const BATCH_CONTENT_TYPE: &str = "application/x-hayloft-read-batch";
/// Version of both bodies. Bump on any incompatible change.
pub const BATCH_FORMAT_VERSION: u8 = 1;
/// Magic at the start of a request body.
pub const REQUEST_MAGIC: [u8; 4] = *b"HLRB";
/// Magic at the start of an answer body.
pub const ANSWER_MAGIC: [u8; 4] = *b"HLRA";
/// Size of the request and answer headers (magic, version, reserved, count).
pub const BATCH_HEADER_SIZE: usize = 12;
/// Size of one request entry.
pub const REQUEST_ENTRY_SIZE: usize = 24;
/// Request entry flag: metadata only (a HEAD).
pub const READ_FLAG_HEAD: u32 = 1;
/// Longest message an answer carries; longer ones are cut (at a character boundary).
pub const MESSAGE_LEN_MAX: usize = 1024;

const H_VERSION_OFFSET: usize = 4;
const H_RESERVED_OFFSET: usize = H_VERSION_OFFSET + 1;
const H_COUNT_OFFSET: usize = H_RESERVED_OFFSET + 3;
const _: () = assert!(H_COUNT_OFFSET + 4 == BATCH_HEADER_SIZE);
const RE_FLAGS_OFFSET: usize = 4;
const RE_KEY_OFFSET: usize = RE_FLAGS_OFFSET + 4;
const RE_COOKIE_OFFSET: usize = RE_KEY_OFFSET + 8;
const RE_MAX_DATA_OFFSET: usize = RE_COOKIE_OFFSET + 4;
const _: () = assert!(RE_MAX_DATA_OFFSET + 4 == REQUEST_ENTRY_SIZE);
/// Status byte and three reserved bytes of an answer entry.
pub const ANSWER_STATUS_SIZE: usize = 4;
/// crc32, len, content_type_len.
const FOUND_FIXED_SIZE: usize = 4 + 8 + 2;

const STATUS_FOUND: u8 = 0;
const STATUS_NOT_FOUND: u8 = 1;
const STATUS_UNKNOWN_VOLUME: u8 = 2;
const STATUS_CORRUPT: u8 = 3;
const STATUS_TOO_LARGE: u8 = 4;
const STATUS_FAILED: u8 = 5;

/// Size in bytes of an encoded request with `n` entries.
pub fn request_len(n: usize) -> usize {
    BATCH_HEADER_SIZE + n * REQUEST_ENTRY_SIZE
}

/// One read of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRead {
    /// The volume.
    pub volume: u32,
    /// The needle key.
    pub key: u64,
    /// The needle cookie.
    pub cookie: u32,
    /// Metadata only (a HEAD): the answer carries no data bytes.
    pub head: bool,
    /// Needles whose data is longer are answered `TooLarge` (the router then streams them with
    /// a plain GET).
    pub max_data_bytes: u32,
}

/// The answer to one [`BatchRead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchAnswer {
    /// The needle. `data` is empty for head entries; `len` is the data length either way.
    Found {
        /// The needle's content type.
        content_type: Bytes,
        /// CRC-32 (crc32fast) of the data alone, as in `X-Hayloft-Crc32`; 0 for head
        /// entries, whose data the store node does not read.
        crc32: u32,
        /// Length of the data.
        len: u64,
        /// The data (empty for head entries).
        data: Bytes,
    },
    /// Missing, deleted, or wrong cookie: indistinguishable.
    NotFound,
    /// The store node has no replica of the volume.
    UnknownVolume(String),
    /// The needle failed its checks on the store node, or its data failed the CRC on arrival.
    Corrupt(String),
    /// The data is longer than the entry's `max_data_bytes` (or than the store node puts in
    /// one batch): read it with a plain GET.
    TooLarge {
        /// Length of the data.
        len: u64,
    },
    /// IO or another server-side error for this entry.
    Failed(String),
}

/// A malformed batch body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The body ends before a field it must hold.
    #[error("read batch truncated: needs {needed} bytes at offset {at}, has {available}")]
    Truncated {
        /// Offset of the field.
        at: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the body.
        available: usize,
    },
    /// The magic is not the expected one.
    #[error("read batch: bad magic {found:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The version is not [`BATCH_FORMAT_VERSION`].
    #[error("read batch: unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A reserved byte is not zero.
    #[error("read batch: reserved byte at offset {at} is not zero")]
    Reserved {
        /// Offset of the byte.
        at: usize,
    },
    /// A request holds no entry or more than [`MAX_BATCH_ENTRIES`].
    #[error("read batch: {0} entries, must be 1 to {MAX_BATCH_ENTRIES}")]
    BadCount(u32),
    /// An answer holds another number of entries than its request.
    #[error("read batch answer has {found} entries, the request {expected}")]
    CountMismatch {
        /// Entries in the request.
        expected: usize,
        /// Entries in the answer.
        found: u32,
    },
    /// A request entry is of a kind this version does not know.
    #[error("read batch entry {entry}: unknown kind {kind}")]
    UnknownKind {
        /// Index of the entry.
        entry: usize,
        /// The kind byte.
        kind: u8,
    },
    /// An entry that does not fit its request or fails its own checks.
    #[error("read batch entry {entry}: {reason}")]
    BadEntry {
        /// Index of the entry.
        entry: usize,
        /// What is wrong.
        reason: String,
    },
    /// A request entry sets flag bits this version does not know.
    #[error("read batch entry {entry}: unknown flags {flags:#x}")]
    UnknownFlags {
        /// Index of the entry.
        entry: usize,
        /// The flags.
        flags: u32,
    },
    /// An answer entry has a status this version does not know.
    #[error("read batch entry {entry}: unknown status {status}")]
    UnknownStatus {
        /// Index of the entry.
        entry: usize,
        /// The status byte.
        status: u8,
    },
    /// A found entry carries more data than its request allowed.
    #[error("read batch entry {entry}: {len} data bytes, the request allowed {max}")]
    DataTooLong {
        /// Index of the entry.
        entry: usize,
        /// The announced length.
        len: u64,
        /// The request's `max_data_bytes`.
        max: u32,
    },
    /// A message is not UTF-8.
    #[error("read batch entry {entry}: message is not UTF-8")]
    BadMessage {
        /// Index of the entry.
        entry: usize,
    },
    /// Bytes follow the last entry.
    #[error("read batch: {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Encodes a request. The caller keeps it to 1..=[`MAX_BATCH_ENTRIES`] entries (not checked
/// here, so that tests can build bodies the store node refuses).
pub fn encode_request(entries: &[BatchRead]) -> Bytes {
    let count = u32::try_from(entries.len()).expect("a batch has far fewer than 2^32 entries");
    let mut buf = BytesMut::with_capacity(request_len(entries.len()));
    put_header(&mut buf, REQUEST_MAGIC, BATCH_FORMAT_VERSION, count);
    for e in entries {
        buf.put_u32_le(e.volume);
        buf.put_u32_le(if e.head { READ_FLAG_HEAD } else { 0 });
        buf.put_u64_le(e.key);
        buf.put_u32_le(e.cookie);
        buf.put_u32_le(e.max_data_bytes);
    }
    assert_eq!(buf.len(), request_len(entries.len()));
    buf.freeze()
}

/// Decodes a request. Refuses 0 or more than [`MAX_BATCH_ENTRIES`] entries, unknown flag bits,
/// short bodies and trailing bytes.
pub fn decode_request(body: &[u8]) -> Result<Vec<BatchRead>, BatchError> {
    let mut r = Reader::new(body);
    let count = r.header(REQUEST_MAGIC, BATCH_FORMAT_VERSION)?;
    let n = count as usize;
    if n == 0 || n > MAX_BATCH_ENTRIES {
        return Err(BatchError::BadCount(count));
    }
    let mut entries = Vec::with_capacity(n);
    for entry in 0..n {
        let b = r.take(REQUEST_ENTRY_SIZE)?;
        let flags = u32_at(b, RE_FLAGS_OFFSET);
        if flags & !READ_FLAG_HEAD != 0 {
            return Err(BatchError::UnknownFlags { entry, flags });
        }
        entries.push(BatchRead {
            volume: u32_at(b, 0),
            key: u64_at(b, RE_KEY_OFFSET),
            cookie: u32_at(b, RE_COOKIE_OFFSET),
            head: flags & READ_FLAG_HEAD != 0,
            max_data_bytes: u32_at(b, RE_MAX_DATA_OFFSET),
        });
    }
    r.finish()?;
    Ok(entries)
}

/// Encodes answers, in request order, into one buffer: the concatenation of
/// [`encode_answer_chunks`] (one encoder). For tests and callers that want one buffer; the
/// store node sends the chunks as they are.
pub fn encode_answers(answers: &[BatchAnswer]) -> Bytes {
    let chunks = encode_answer_chunks(answers);
    if let [one] = chunks.as_slice() {
        return one.clone();
    }
    let total = chunks.iter().map(Bytes::len).sum();
    let mut buf = BytesMut::with_capacity(total);
    for chunk in &chunks {
        buf.put_slice(chunk);
    }
    buf.freeze()
}

/// Encodes answers, in request order, as a sequence of chunks whose concatenation is the
/// answer body: the encoded fields (header, statuses, lengths, content types, messages) of
/// consecutive entries coalesced in one buffer, and each found entry's `data` as a chunk of
/// its own, not copied. Messages are cut to [`MESSAGE_LEN_MAX`] bytes; `data` is empty for
/// head entries. No chunk is empty.
pub fn encode_answer_chunks(answers: &[BatchAnswer]) -> Vec<Bytes> {
    let count = u32::try_from(answers.len()).expect("a batch has far fewer than 2^32 entries");
    let fields = BATCH_HEADER_SIZE + answers.iter().map(answer_fields_len).sum::<usize>();
    let mut chunks = Vec::new();
    // Sized up front: the fields' chunks are split off this one allocation.
    let mut buf = BytesMut::with_capacity(fields);
    put_header(&mut buf, ANSWER_MAGIC, BATCH_FORMAT_VERSION, count);
    let mut written = 0;
    for answer in answers {
        match answer {
            BatchAnswer::Found {
                content_type,
                crc32,
                len,
                data,
            } => {
                assert!(
                    data.is_empty() || data.len() as u64 == *len,
                    "found data is empty (head) or exactly len bytes"
                );
                let ct_len = u16::try_from(content_type.len())
                    .expect("content types come from needles: at most 255 bytes");
                put_status(&mut buf, STATUS_FOUND);
                buf.put_u32_le(*crc32);
                buf.put_u64_le(*len);
                buf.put_u16_le(ct_len);
                buf.put_slice(content_type);
                if !data.is_empty() {
                    written += buf.len();
                    chunks.push(buf.split().freeze());
                    chunks.push(data.clone());
                }
            }
            BatchAnswer::NotFound => put_status(&mut buf, STATUS_NOT_FOUND),
            BatchAnswer::UnknownVolume(m) => put_message(&mut buf, STATUS_UNKNOWN_VOLUME, m),
            BatchAnswer::Corrupt(m) => put_message(&mut buf, STATUS_CORRUPT, m),
            BatchAnswer::TooLarge { len } => {
                put_status(&mut buf, STATUS_TOO_LARGE);
                buf.put_u64_le(*len);
            }
            BatchAnswer::Failed(m) => put_message(&mut buf, STATUS_FAILED, m),
        }
    }
    written += buf.len();
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    assert_eq!(written, fields, "field buffer sized up front");
    chunks
}

/// Decodes an answer to `requests` (same count, same order); `content_type` and `data` are
/// zero-copy slices of `body`.
///
/// Checks magic, version, reserved bytes, the count, every length, that head entries carry no
/// data and other found entries exactly `len <= max_data_bytes` bytes, and that no bytes
/// trail. A found entry whose data fails its CRC-32 decodes as [`BatchAnswer::Corrupt`]; the
/// other entries are unaffected.
pub fn decode_answers(body: Bytes, requests: &[BatchRead]) -> Result<Vec<BatchAnswer>, BatchError> {
    let mut r = Reader::new(&body);
    r.answer_header(ANSWER_MAGIC, BATCH_FORMAT_VERSION, requests.len())?;
    let mut answers = Vec::with_capacity(requests.len());
    for (entry, request) in requests.iter().enumerate() {
        let answer = match r.status()? {
            STATUS_FOUND => decode_found(&mut r, &body, entry, request)?,
            STATUS_NOT_FOUND => BatchAnswer::NotFound,
            STATUS_UNKNOWN_VOLUME => BatchAnswer::UnknownVolume(r.message(entry)?),
            STATUS_CORRUPT => BatchAnswer::Corrupt(r.message(entry)?),
            STATUS_TOO_LARGE => BatchAnswer::TooLarge {
                len: u64_at(r.take(8)?, 0),
            },
            STATUS_FAILED => BatchAnswer::Failed(r.message(entry)?),
            status => return Err(BatchError::UnknownStatus { entry, status }),
        };
        answers.push(answer);
    }
    r.finish()?;
    Ok(answers)
}

fn decode_found(
    r: &mut Reader<'_>,
    body: &Bytes,
    entry: usize,
    request: &BatchRead,
) -> Result<BatchAnswer, BatchError> {
    let fixed = r.take(FOUND_FIXED_SIZE)?;
    let crc32 = u32_at(fixed, 0);
    let len = u64_at(fixed, 4);
    let ct_len = usize::from(u16::from_le_bytes([fixed[12], fixed[13]]));
    let content_type = body.slice_ref(r.take(ct_len)?);
    if request.head {
        return Ok(BatchAnswer::Found {
            content_type,
            crc32,
            len,
            data: Bytes::new(),
        });
    }
    if len > u64::from(request.max_data_bytes) {
        return Err(BatchError::DataTooLong {
            entry,
            len,
            max: request.max_data_bytes,
        });
    }
    // len <= u32::MAX; on a 16-bit target it could still not fit, which is a short body.
    let data_len = usize::try_from(len).unwrap_or(usize::MAX);
    let data = r.take(data_len)?;
    let actual = crc32fast::hash(data);
    if actual != crc32 {
        return Ok(BatchAnswer::Corrupt(format!(
            "data crc32 {actual:#010x} does not match the store node's {crc32:#010x}"
        )));
    }
    Ok(BatchAnswer::Found {
        content_type,
        crc32,
        len,
        data: body.slice_ref(data),
    })
}

/// Encoded size of one answer entry, its data aside.
fn answer_fields_len(answer: &BatchAnswer) -> usize {
    ANSWER_STATUS_SIZE
        + match answer {
            BatchAnswer::Found { content_type, .. } => FOUND_FIXED_SIZE + content_type.len(),
            BatchAnswer::NotFound => 0,
            BatchAnswer::TooLarge { .. } => 8,
            BatchAnswer::UnknownVolume(m) | BatchAnswer::Corrupt(m) | BatchAnswer::Failed(m) => {
                text_len(m)
            }
        }
}

// The framing below (header, status, message, and the checked reader) is
// shared with other batch formats that follow this one's layout (the warm
// tier's storage node batch).

/// Puts a batch header: `magic`, `version`, three zero bytes, `count`.
pub fn put_header(buf: &mut BytesMut, magic: [u8; 4], version: u8, count: u32) {
    buf.put_slice(&magic);
    buf.put_u8(version);
    buf.put_bytes(0, 3);
    buf.put_u32_le(count);
}

/// Puts an answer entry's status byte and its three zero bytes.
pub fn put_status(buf: &mut BytesMut, status: u8) {
    buf.put_u8(status);
    buf.put_bytes(0, 3);
}

/// Puts a status and a message (u16 length, UTF-8, cut to
/// [`MESSAGE_LEN_MAX`]).
pub fn put_message(buf: &mut BytesMut, status: u8, message: &str) {
    put_status(buf, status);
    put_text(buf, message);
}

/// Puts a text as a u16 length and UTF-8, cut to [`MESSAGE_LEN_MAX`].
pub fn put_text(buf: &mut BytesMut, text: &str) {
    let m = cut_message(text);
    buf.put_u16_le(u16::try_from(m.len()).expect("messages are cut to 1 KiB"));
    buf.put_slice(m.as_bytes());
}

/// Encoded size of [`put_text`]'s output for `text`.
pub fn text_len(text: &str) -> usize {
    2 + cut_message(text).len()
}

/// `message` cut to at most [`MESSAGE_LEN_MAX`] bytes, at a character boundary.
pub fn cut_message(message: &str) -> &str {
    cut_text(message, MESSAGE_LEN_MAX)
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A cursor over a batch body that checks every length before it slices.
pub struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `body`.
    pub fn new(body: &'a [u8]) -> Reader<'a> {
        Reader { body, at: 0 }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        let available = self.body.len() - self.at;
        if n > available {
            return Err(BatchError::Truncated {
                at: self.at,
                needed: n,
                available,
            });
        }
        let b = &self.body[self.at..self.at + n];
        self.at += n;
        Ok(b)
    }

    /// Checks magic, version and reserved bytes; returns the count.
    pub fn header(&mut self, magic: [u8; 4], version: u8) -> Result<u32, BatchError> {
        let b = self.take(BATCH_HEADER_SIZE)?;
        let found = [b[0], b[1], b[2], b[3]];
        if found != magic {
            return Err(BatchError::BadMagic { found });
        }
        if b[H_VERSION_OFFSET] != version {
            return Err(BatchError::UnsupportedVersion(b[H_VERSION_OFFSET]));
        }
        if let Some(i) = b[H_RESERVED_OFFSET..H_COUNT_OFFSET]
            .iter()
            .position(|&x| x != 0)
        {
            return Err(BatchError::Reserved {
                at: H_RESERVED_OFFSET + i,
            });
        }
        Ok(u32_at(b, H_COUNT_OFFSET))
    }

    /// Checks an answer's header: magic, version, reserved bytes, and a
    /// count of `expected` entries (its request's).
    pub fn answer_header(
        &mut self,
        magic: [u8; 4],
        version: u8,
        expected: usize,
    ) -> Result<(), BatchError> {
        let count = self.header(magic, version)?;
        if count as usize != expected {
            return Err(BatchError::CountMismatch {
                expected,
                found: count,
            });
        }
        Ok(())
    }

    /// An answer entry's status byte, its reserved bytes checked.
    pub fn status(&mut self) -> Result<u8, BatchError> {
        let at = self.at;
        let b = self.take(ANSWER_STATUS_SIZE)?;
        if let Some(i) = b[1..].iter().position(|&x| x != 0) {
            return Err(BatchError::Reserved { at: at + 1 + i });
        }
        Ok(b[0])
    }

    /// A message (u16 length, UTF-8) of entry `entry`.
    pub fn message(&mut self, entry: usize) -> Result<String, BatchError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let m = self.take(len)?;
        std::str::from_utf8(m)
            .map(str::to_string)
            .map_err(|_| BatchError::BadMessage { entry })
    }

    /// Checks that no bytes trail.
    pub fn finish(&self) -> Result<(), BatchError> {
        match self.body.len() - self.at {
            0 => Ok(()),
            extra => Err(BatchError::TrailingBytes(extra)),
        }
    }
}

#[cfg(test)]
mod tests;
