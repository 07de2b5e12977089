//! Recovery of a volume on open: load the index file (a hint that lags the data file), then
//! scan the data file past the last indexed needle and cut a torn tail.
//!
//! The index is trusted only if its header names the data file's `instance_id`; each record
//! must continue the previous one (puts contiguous and in key order, deletes naming an
//! indexed needle at its offset) and lie inside the data file, else the index file is cut
//! there. The scan validates every needle fully (magic, lengths, checksum, key order) and cuts
//! the data file at the first that fails: a needle is acknowledged only after `fdatasync`,
//! so every acknowledged needle precedes the cut, and a half-written one is never served.

use tracing::warn;

use crate::error::{Error, Result};
use crate::file::Storage;
use crate::format::{
    self, INDEX_HEADER_SIZE, INDEX_RECORD_SIZE, IndexRecord, IndexRecordKind, NEEDLE_FLAG_DELETED,
    NEEDLE_HEADER_SIZE, SUPERBLOCK_SIZE, Superblock,
};
use crate::index::NeedleIndex;

/// Loads the index file; rebuilds it (empty) when its header is bad or names another data
/// file. Stops at the first invalid record and truncates the file there. Returns the index
/// and the index file's append position.
pub(crate) fn load_index(
    id: u32,
    file: &dyn Storage,
    sb: &Superblock,
    data_len: u64,
) -> Result<(NeedleIndex, u64)> {
    let mut index = NeedleIndex::new(SUPERBLOCK_SIZE);
    let file_len = file.len()?;
    let mut header = [0u8; INDEX_HEADER_SIZE as usize];
    let header_ok = file_len >= INDEX_HEADER_SIZE
        && file.read_at(&mut header, 0).is_ok()
        && format::decode_index_header(&header, id)
            .is_ok_and(|(v, instance)| v == id && instance == sb.instance_id);
    if !header_ok {
        if file_len > 0 {
            warn!(
                volume = id,
                "index file does not match the data file; rebuilding it"
            );
        }
        file.set_len(0)?;
        file.write_at(&format::encode_index_header(id, sb.instance_id), 0)?;
        return Ok((index, INDEX_HEADER_SIZE));
    }
    const CHUNK_RECORDS: u64 = 4096;
    let mut pos = INDEX_HEADER_SIZE;
    let mut buf = Vec::new();
    'chunks: while pos + INDEX_RECORD_SIZE <= file_len {
        let n = ((file_len - pos) / INDEX_RECORD_SIZE).min(CHUNK_RECORDS);
        buf.resize((n * INDEX_RECORD_SIZE) as usize, 0);
        file.read_at(&mut buf, pos)?;
        for raw in buf.chunks_exact(INDEX_RECORD_SIZE as usize) {
            let applied = format::decode_index_record(raw, id, pos)
                .ok()
                .is_some_and(|r| apply_index_record(&mut index, &r, data_len));
            if !applied {
                break 'chunks;
            }
            pos += INDEX_RECORD_SIZE;
        }
    }
    if pos < file_len {
        warn!(
            volume = id,
            offset = pos,
            "index file has an invalid tail; truncating it"
        );
        file.set_len(pos)?;
    }
    Ok((index, pos))
}

/// Applies one index record if it is consistent with the index and the data file length.
fn apply_index_record(index: &mut NeedleIndex, r: &IndexRecord, data_len: u64) -> bool {
    let size = u64::from(r.size_bytes);
    match r.kind {
        IndexRecordKind::Put => {
            r.offset == index.data_end()
                && r.offset
                    .checked_add(size)
                    .is_some_and(|end| end <= data_len)
                && index.push(r.key, size, r.flags & NEEDLE_FLAG_DELETED != 0)
        }
        IndexRecordKind::Delete => match index.get(r.key) {
            Some(e) if e.offset == r.offset => {
                index.mark_deleted(r.key);
                true
            }
            _ => false,
        },
    }
}

/// Scans needles past the index's data end, adds each valid one, and cuts the data file at
/// the first invalid (torn) one. Returns put records for the index file.
pub(crate) fn scan_tail(
    id: u32,
    data: &dyn Storage,
    index: &mut NeedleIndex,
    data_len: u64,
) -> Result<Vec<IndexRecord>> {
    let mut records = Vec::new();
    let mut offset = index.data_end();
    let mut reason = String::new();
    while offset < data_len {
        match read_valid_needle(id, data, offset, data_len) {
            Ok((key, size, flags)) => {
                if !index.push(key, size, flags & NEEDLE_FLAG_DELETED != 0) {
                    reason = format!("key {key:#x} out of order");
                    break;
                }
                records.push(IndexRecord {
                    kind: IndexRecordKind::Put,
                    key,
                    offset,
                    size_bytes: u32::try_from(size).expect("validated needle size fits u32"),
                    flags,
                });
                offset += size;
            }
            Err(e) => {
                reason = e.to_string();
                break;
            }
        }
    }
    if offset < data_len {
        warn!(volume = id, offset, cut_bytes = data_len - offset, %reason, "cutting a torn tail");
        data.set_len(offset)?;
        data.sync_data()?;
    }
    Ok(records)
}

/// Reads and fully validates the needle at `offset`; returns key, size and flags.
fn read_valid_needle(
    id: u32,
    data: &dyn Storage,
    offset: u64,
    data_len: u64,
) -> Result<(u64, u64, u8)> {
    if data_len - offset < NEEDLE_HEADER_SIZE as u64 {
        return Err(Error::corrupt(id, offset, "partial needle header"));
    }
    let mut hb = [0u8; NEEDLE_HEADER_SIZE];
    data.read_at(&mut hb, offset)?;
    let header = format::decode_needle_header(&hb, id, offset)?;
    let size = header.size_bytes();
    if size > data_len - offset {
        return Err(Error::corrupt(
            id,
            offset,
            "needle runs past the end of the file",
        ));
    }
    let mut buf = vec![0u8; usize::try_from(size).expect("needle size fits usize")];
    data.read_at(&mut buf, offset)?;
    let (header, _) = format::validate_needle(&buf, id, offset)?;
    Ok((header.key, size, header.flags))
}
