//! Wire format of the storage node's read batch (`POST /batch`), version 1:
//! key lookups and small block range reads for one node in one request.
//!
//! A router (lookups, range reads) or a backoff node (range reads of a
//! stripe) coalesces its concurrent reads for one storage node into one
//! request, as the router does with the hot tier's store nodes
//! ([`haystack::batch`], whose framing this format shares: header, status
//! bytes, messages, the checked reader). `docs/FORMAT.md` ("Warm read
//! batch") mirrors this. Integers are little-endian; decoders treat the body
//! as hostile and never panic.
//!
//! ```text
//! request                                 answer
//!  0 magic [4] "F4RB"                      0 magic [4] "F4RA"
//!  4 version u8 = 1                        4 version u8 = 1
//!  5 reserved [3] zero                     5 reserved [3] zero
//!  8 count u32 (1..=64)                    8 count u32 (= the request's)
//! 12 entries, 64 bytes each:              12 entries, in request order:
//!     0 kind u8 (1 lookup, 2 range)           0 status u8 (0 live, 1 data,
//!     1 k u8 (range; else 0)                    2 not_found, 3 deleted,
//!     2 m u8 (range; else 0)                    4 error)
//!     3 reserved u8 zero                      1 reserved [3] zero
//!     4 volume u32                            4 by status:
//!     8 generation u64                          live (lookup): index entry
//!    16 key (lookup) or stripe (range) u64        [24], with its CRC
//!    24 block u32 (range; else 0)               data (range): len u64
//!    28 chunk_size u32 (range; else 0)            (= the entry's), then
//!    32 offset u64 (range; else 0)                len verified bytes
//!    40 len u64 (range; else 0)                 not_found, deleted
//!    48 volume_len u64 (range; else 0)            (lookup): nothing
//!    56 block_size u64 (range; else 0)          error: http_status u16,
//!                                                 code (u16 length, UTF-8),
//!                                                 message (the same)
//! ```
//!
//! A range entry names its block and the volume's whole geometry, as
//! `POST /blocks/read` does; an error entry carries the status, code and
//! message that route would have answered.

use bytes::{BufMut, Bytes, BytesMut};
use haystack::batch::{
    ANSWER_STATUS_SIZE, BATCH_HEADER_SIZE, BatchError, MAX_BATCH_ENTRIES, Reader, put_header,
    put_status, put_text, text_len,
};
use haystack::format::{u32_at, u64_at};

use crate::api::{BlockId, RangeRead};
use crate::client::KeyLookup;
use crate::format::{Geometry, INDEX_ENTRY_SIZE, IndexEntry};

/// Content-Type of both bodies.
pub const BATCH_CONTENT_TYPE: &str = "application/x-hayloft-warm-batch";
/// Version of both bodies.
pub const BATCH_FORMAT_VERSION: u8 = 1;
/// Magic of a request body.
pub const REQUEST_MAGIC: [u8; 4] = *b"F4RB";
/// Magic of an answer body.
pub const ANSWER_MAGIC: [u8; 4] = *b"F4RA";
/// Size of one request entry.
pub const REQUEST_ENTRY_SIZE: usize = 64;
/// Most range bytes one batch answer carries; entries past it answer
/// `413 payload_too_large`.
pub const BATCH_DATA_BYTES_MAX: u64 = 16 << 20;
/// A range whose answer body is larger than this and more than four times
/// the range is copied out of it, so that one small range held by a slow
/// client does not hold a whole batch's bytes.
const SHARED_BODY_BYTES_MAX: usize = 1 << 20;

const KIND_LOOKUP: u8 = 1;
const KIND_RANGE: u8 = 2;

const STATUS_LIVE: u8 = 0;
const STATUS_DATA: u8 = 1;
const STATUS_NOT_FOUND: u8 = 2;
const STATUS_DELETED: u8 = 3;
const STATUS_ERROR: u8 = 4;

/// Longest error code an answer carries.
const CODE_LEN_MAX: usize = 64;

/// Size of an encoded request with `n` entries.
pub fn request_len(n: usize) -> usize {
    BATCH_HEADER_SIZE + n * REQUEST_ENTRY_SIZE
}

/// One read of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRead {
    /// What the node's index and journal say of `key`.
    Lookup {
        /// The volume.
        volume: u32,
        /// Its encode generation.
        generation: u64,
        /// The key.
        key: u64,
    },
    /// A verified byte range of a block.
    Range(RangeRead),
}

/// The answer to one [`BatchRead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchAnswer {
    /// A lookup's answer.
    Lookup(KeyLookup),
    /// A range's bytes, exactly the length asked for.
    Data(Bytes),
    /// What the single-read route would have answered instead.
    Error {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
}

/// Encodes a request (the caller keeps it to 1..=64 entries).
pub fn encode_request(reads: &[BatchRead]) -> Bytes {
    let count = u32::try_from(reads.len()).expect("a batch has far fewer than 2^32 entries");
    let mut buf = BytesMut::with_capacity(request_len(reads.len()));
    put_header(&mut buf, REQUEST_MAGIC, BATCH_FORMAT_VERSION, count);
    for read in reads {
        let mut entry = [0u8; REQUEST_ENTRY_SIZE];
        match read {
            BatchRead::Lookup {
                volume,
                generation,
                key,
            } => {
                entry[0] = KIND_LOOKUP;
                entry[4..8].copy_from_slice(&volume.to_le_bytes());
                entry[8..16].copy_from_slice(&generation.to_le_bytes());
                entry[16..24].copy_from_slice(&key.to_le_bytes());
            }
            BatchRead::Range(r) => {
                entry[0] = KIND_RANGE;
                entry[1] = r.geometry.data_blocks;
                entry[2] = r.geometry.parity_blocks;
                entry[4..8].copy_from_slice(&r.block.volume.to_le_bytes());
                entry[8..16].copy_from_slice(&r.block.generation.to_le_bytes());
                entry[16..24].copy_from_slice(&r.block.stripe.to_le_bytes());
                entry[24..28].copy_from_slice(&r.block.block.to_le_bytes());
                entry[28..32].copy_from_slice(&r.geometry.chunk_size_bytes.to_le_bytes());
                entry[32..40].copy_from_slice(&r.offset.to_le_bytes());
                entry[40..48].copy_from_slice(&r.len.to_le_bytes());
                entry[48..56].copy_from_slice(&r.geometry.volume_len_bytes.to_le_bytes());
                entry[56..64].copy_from_slice(&r.geometry.block_size_bytes.to_le_bytes());
            }
        }
        buf.put_slice(&entry);
    }
    buf.freeze()
}

/// Decodes a request: 1 to 64 entries of known kinds, reserved and unused
/// bytes zero, nothing trailing.
pub fn decode_request(body: &[u8]) -> Result<Vec<BatchRead>, BatchError> {
    let mut r = Reader::new(body);
    let count = r.header(REQUEST_MAGIC, BATCH_FORMAT_VERSION)?;
    let n = count as usize;
    if n == 0 || n > MAX_BATCH_ENTRIES {
        return Err(BatchError::BadCount(count));
    }
    let mut reads = Vec::with_capacity(n);
    for entry in 0..n {
        let at = BATCH_HEADER_SIZE + entry * REQUEST_ENTRY_SIZE;
        let b = r.take(REQUEST_ENTRY_SIZE)?;
        let zero =
            |range: std::ops::Range<usize>| match b[range.clone()].iter().position(|&x| x != 0) {
                Some(i) => Err(BatchError::Reserved {
                    at: at + range.start + i,
                }),
                None => Ok(()),
            };
        zero(3..4)?;
        let volume = u32_at(b, 4);
        let generation = u64_at(b, 8);
        reads.push(match b[0] {
            KIND_LOOKUP => {
                zero(1..3)?;
                zero(24..REQUEST_ENTRY_SIZE)?;
                BatchRead::Lookup {
                    volume,
                    generation,
                    key: u64_at(b, 16),
                }
            }
            KIND_RANGE => BatchRead::Range(RangeRead {
                block: BlockId {
                    volume,
                    generation,
                    stripe: u64_at(b, 16),
                    block: u32_at(b, 24),
                },
                geometry: Geometry {
                    volume_len_bytes: u64_at(b, 48),
                    block_size_bytes: u64_at(b, 56),
                    data_blocks: b[1],
                    parity_blocks: b[2],
                    chunk_size_bytes: u32_at(b, 28),
                },
                offset: u64_at(b, 32),
                len: u64_at(b, 40),
            }),
            kind => return Err(BatchError::UnknownKind { entry, kind }),
        });
    }
    r.finish()?;
    Ok(reads)
}

/// Encodes answers, in request order, as chunks whose concatenation is the
/// body: the fields of consecutive entries in one buffer, each range's data
/// as a chunk of its own, not copied. No chunk is empty.
pub fn encode_answer_chunks(answers: &[BatchAnswer]) -> Vec<Bytes> {
    let count = u32::try_from(answers.len()).expect("a batch has far fewer than 2^32 entries");
    let fields = BATCH_HEADER_SIZE + answers.iter().map(fields_len).sum::<usize>();
    let mut buf = BytesMut::with_capacity(fields);
    put_header(&mut buf, ANSWER_MAGIC, BATCH_FORMAT_VERSION, count);
    let mut chunks = Vec::new();
    for answer in answers {
        match answer {
            BatchAnswer::Lookup(KeyLookup::Live(entry)) => {
                put_status(&mut buf, STATUS_LIVE);
                buf.put_slice(&entry.encode());
            }
            BatchAnswer::Lookup(KeyLookup::NotFound) => put_status(&mut buf, STATUS_NOT_FOUND),
            BatchAnswer::Lookup(KeyLookup::Deleted) => put_status(&mut buf, STATUS_DELETED),
            BatchAnswer::Data(data) => {
                put_status(&mut buf, STATUS_DATA);
                buf.put_u64_le(data.len() as u64);
                if !data.is_empty() {
                    chunks.push(buf.split().freeze());
                    chunks.push(data.clone());
                }
            }
            BatchAnswer::Error {
                status,
                code,
                message,
            } => {
                put_status(&mut buf, STATUS_ERROR);
                buf.put_u16_le(*status);
                put_text(&mut buf, cut_code(code));
                put_text(&mut buf, message);
            }
        }
    }
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    chunks
}

/// Decodes the answer to `reads` (same count and order): lookups answer
/// live, not_found, deleted or error; ranges data of exactly their length
/// (a zero-copy slice of `body`, unless the body is far larger) or error.
pub fn decode_answers(body: Bytes, reads: &[BatchRead]) -> Result<Vec<BatchAnswer>, BatchError> {
    let mut r = Reader::new(&body);
    r.answer_header(ANSWER_MAGIC, BATCH_FORMAT_VERSION, reads.len())?;
    let mut answers = Vec::with_capacity(reads.len());
    for (entry, read) in reads.iter().enumerate() {
        let status = r.status()?;
        let answer = match (status, read) {
            (STATUS_ERROR, _) => {
                let status = u16::from_le_bytes(r.take(2)?.try_into().expect("two bytes"));
                BatchAnswer::Error {
                    status,
                    code: r.message(entry)?,
                    message: r.message(entry)?,
                }
            }
            (STATUS_LIVE, BatchRead::Lookup { .. }) => {
                let entry_bytes = r.take(INDEX_ENTRY_SIZE)?;
                let live = IndexEntry::decode(entry_bytes).map_err(|e| BatchError::BadEntry {
                    entry,
                    reason: e.to_string(),
                })?;
                BatchAnswer::Lookup(KeyLookup::Live(live))
            }
            (STATUS_NOT_FOUND, BatchRead::Lookup { .. }) => {
                BatchAnswer::Lookup(KeyLookup::NotFound)
            }
            (STATUS_DELETED, BatchRead::Lookup { .. }) => BatchAnswer::Lookup(KeyLookup::Deleted),
            (STATUS_DATA, BatchRead::Range(range)) => {
                let len = u64_at(r.take(8)?, 0);
                if len != range.len {
                    return Err(BatchError::BadEntry {
                        entry,
                        reason: format!("{len} bytes for a range of {}", range.len),
                    });
                }
                let data = r.take(usize::try_from(len).unwrap_or(usize::MAX))?;
                if body.len() > SHARED_BODY_BYTES_MAX && body.len() / 4 > data.len() {
                    BatchAnswer::Data(Bytes::copy_from_slice(data))
                } else {
                    BatchAnswer::Data(body.slice_ref(data))
                }
            }
            (STATUS_LIVE | STATUS_NOT_FOUND | STATUS_DELETED | STATUS_DATA, _) => {
                return Err(BatchError::BadEntry {
                    entry,
                    reason: format!("status {status} does not answer a {read:?}"),
                });
            }
            _ => return Err(BatchError::UnknownStatus { entry, status }),
        };
        answers.push(answer);
    }
    r.finish()?;
    Ok(answers)
}

/// Encoded size of one answer entry, its data aside.
fn fields_len(answer: &BatchAnswer) -> usize {
    ANSWER_STATUS_SIZE
        + match answer {
            BatchAnswer::Lookup(KeyLookup::Live(_)) => INDEX_ENTRY_SIZE,
            BatchAnswer::Lookup(_) => 0,
            BatchAnswer::Data(_) => 8,
            BatchAnswer::Error { code, message, .. } => {
                2 + text_len(cut_code(code)) + text_len(message)
            }
        }
}

/// An error code cut to [`CODE_LEN_MAX`] bytes.
fn cut_code(code: &str) -> &str {
    haystack::batch::cut_text(code, CODE_LEN_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(len: u64) -> RangeRead {
        RangeRead {
            block: BlockId {
                volume: 7,
                generation: 3,
                stripe: 2,
                block: 11,
            },
            geometry: Geometry {
                volume_len_bytes: 1 << 30,
                block_size_bytes: 1 << 26,
                data_blocks: 10,
                parity_blocks: 4,
                chunk_size_bytes: 16 << 10,
            },
            offset: 12345,
            len,
        }
    }

    fn lookup(key: u64) -> BatchRead {
        BatchRead::Lookup {
            volume: 7,
            generation: 3,
            key,
        }
    }

    #[test]
    fn requests_and_answers_round_trip() {
        let reads = vec![
            lookup(1),
            BatchRead::Range(range(5)),
            lookup(2),
            lookup(3),
            BatchRead::Range(range(0)),
            BatchRead::Range(range(4)),
        ];
        let body = encode_request(&reads);
        assert_eq!(body.len(), request_len(reads.len()));
        assert_eq!(decode_request(&body).unwrap(), reads);

        let answers = vec![
            BatchAnswer::Lookup(KeyLookup::Live(IndexEntry {
                key: 1,
                offset: 4096,
                size_bytes: 80,
            })),
            BatchAnswer::Data(Bytes::from_static(b"hello")),
            BatchAnswer::Lookup(KeyLookup::Deleted),
            BatchAnswer::Lookup(KeyLookup::NotFound),
            BatchAnswer::Data(Bytes::new()),
            BatchAnswer::Error {
                status: 500,
                code: "block_corrupt".into(),
                message: "chunk 3 failed its CRC".into(),
            },
        ];
        let chunks = encode_answer_chunks(&answers);
        assert!(chunks.iter().all(|c| !c.is_empty()));
        let body: Bytes = chunks.concat().into();
        assert_eq!(decode_answers(body, &reads).unwrap(), answers);
    }

    #[test]
    fn long_codes_are_cut_at_a_character_and_small_ranges_leave_big_bodies() {
        let code = "é".repeat(100);
        let answers = vec![
            BatchAnswer::Error {
                status: 500,
                code: code.clone(),
                message: "m".into(),
            },
            BatchAnswer::Data(Bytes::from_static(b"small")),
            BatchAnswer::Data(Bytes::from(vec![7u8; 2 << 20])),
        ];
        let reads = vec![
            lookup(1),
            BatchRead::Range(range(5)),
            BatchRead::Range(range(2 << 20)),
        ];
        let body: Bytes = encode_answer_chunks(&answers).concat().into();
        let decoded = decode_answers(body.clone(), &reads).unwrap();
        let BatchAnswer::Error { code: cut, .. } = &decoded[0] else {
            panic!("{:?}", decoded[0]);
        };
        assert!(cut.len() <= CODE_LEN_MAX && code.starts_with(cut.as_str()));
        // The small range is a copy, not a view that would hold the body.
        let BatchAnswer::Data(small) = &decoded[1] else {
            panic!("not data");
        };
        assert_eq!(&small[..], b"small");
        let inside = body.as_ptr_range();
        assert!(!inside.contains(&small.as_ptr()));
        assert_eq!(decoded[2], answers[2]);
    }

    #[test]
    fn hostile_requests_are_refused() {
        let reads = vec![lookup(1), BatchRead::Range(range(5))];
        let good = encode_request(&reads).to_vec();
        // Every truncation.
        for cut in 0..good.len() {
            assert!(decode_request(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Trailing bytes.
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode_request(&long),
            Err(BatchError::TrailingBytes(1))
        ));
        // Unknown kind, and unused bytes of a lookup.
        let mut bad = good.clone();
        bad[BATCH_HEADER_SIZE] = 9;
        assert!(matches!(
            decode_request(&bad),
            Err(BatchError::UnknownKind { entry: 0, kind: 9 })
        ));
        let mut bad = good.clone();
        bad[BATCH_HEADER_SIZE + 40] = 1;
        assert!(matches!(
            decode_request(&bad),
            Err(BatchError::Reserved { .. })
        ));
        // No entries, or too many.
        let mut none = BytesMut::new();
        put_header(&mut none, REQUEST_MAGIC, BATCH_FORMAT_VERSION, 0);
        assert!(matches!(
            decode_request(&none),
            Err(BatchError::BadCount(0))
        ));
        let many = encode_request(&vec![lookup(1); MAX_BATCH_ENTRIES + 1]);
        assert!(matches!(
            decode_request(&many),
            Err(BatchError::BadCount(_))
        ));
        // Another version or magic.
        let mut bad = good.clone();
        bad[4] = 2;
        assert!(matches!(
            decode_request(&bad),
            Err(BatchError::UnsupportedVersion(2))
        ));
        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            decode_request(&bad),
            Err(BatchError::BadMagic { .. })
        ));
    }

    #[test]
    fn answers_that_do_not_fit_their_reads_are_refused() {
        let reads = vec![BatchRead::Range(range(5))];
        // Data of another length than asked.
        let short = encode_answer_chunks(&[BatchAnswer::Data(Bytes::from_static(b"hey"))]);
        assert!(decode_answers(short.concat().into(), &reads).is_err());
        // A lookup answer to a range.
        let wrong = encode_answer_chunks(&[BatchAnswer::Lookup(KeyLookup::Deleted)]);
        assert!(decode_answers(wrong.concat().into(), &reads).is_err());
        // Another count.
        let two = encode_answer_chunks(&[
            BatchAnswer::Data(Bytes::from_static(b"hello")),
            BatchAnswer::Data(Bytes::from_static(b"hello")),
        ]);
        assert!(decode_answers(two.concat().into(), &reads).is_err());
        // Every truncation of a good answer.
        let good: Vec<u8> =
            encode_answer_chunks(&[BatchAnswer::Data(Bytes::from_static(b"hello"))]).concat();
        for cut in 0..good.len() {
            assert!(
                decode_answers(Bytes::copy_from_slice(&good[..cut]), &reads).is_err(),
                "cut at {cut}"
            );
        }
        // A damaged index entry.
        let lookups = vec![lookup(1)];
        let mut live: Vec<u8> =
            encode_answer_chunks(&[BatchAnswer::Lookup(KeyLookup::Live(IndexEntry {
                key: 1,
                offset: 0,
                size_bytes: 64,
            }))])
            .concat();
        live[BATCH_HEADER_SIZE + ANSWER_STATUS_SIZE + 9] ^= 1;
        assert!(decode_answers(live.into(), &lookups).is_err());
    }
}
