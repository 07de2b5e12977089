//! Recovery of a volume on open: load the index file (a hint that lags the data file), then
//! scan the data file past the last indexed needle and cut a torn tail.
//!
//! The index is trusted only if its header names the data file's `instance_id`; each record
//! must continue the previous one (puts contiguous and in key order, deletes naming an
//! indexed needle at its offset) and lie inside the data file. An index with a record that
//! fails those checks is not trusted past it: a delete recorded after it would be lost from
//! memory (its flag is on disk, in the needle's header), so the index is rebuilt from a scan
//! of the whole data file, whose needle headers carry every delete.
//!
//! The scan validates every needle fully (magic, lengths, checksum, key order) and cuts the
//! data file at the first that fails: a needle is acknowledged only after `fdatasync`, so
//! every acknowledged needle precedes the cut, and a half-written one is never served. A
//! needle that fails below the end any valid index record attests (an index record is
//! written only after its needle was synced) is damage inside acknowledged data, not a torn
//! tail: the volume refuses to open rather than cut acknowledged needles off, and its
//! replica is rebuilt from a peer.

use tracing::warn;

use crate::error::{Error, Result};
use crate::file::Storage;
use crate::format::{
    self, INDEX_HEADER_SIZE, INDEX_RECORD_SIZE, IndexRecord, IndexRecordKind, NEEDLE_FLAG_DELETED,
    NEEDLE_HEADER_SIZE, SUPERBLOCK_SIZE, Superblock,
};
use crate::index::NeedleIndex;

/// The index as loaded from the index file.
pub(crate) struct LoadedIndex {
    /// The needles the index file holds.
    pub(crate) index: NeedleIndex,
    /// Where the next record goes.
    pub(crate) index_end: u64,
    /// End of the furthest needle any valid record names: acknowledged data reaches at
    /// least this far.
    pub(crate) attested_end: u64,
}

/// Loads the index file; rebuilds it (empty) when its header is bad or names another data
/// file, or when a record fails its checks (a corrupt record in the middle or a torn tail):
/// then the caller scans the whole data file. Returns the index, the index file's append
/// position and how far acknowledged data reaches.
pub(crate) fn load_index(
    id: u32,
    file: &dyn Storage,
    sb: &Superblock,
    data_len: u64,
) -> Result<LoadedIndex> {
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
        return reset_index(id, file, sb, SUPERBLOCK_SIZE);
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
        let attested_end = attested_end(id, file, pos, file_len)?.max(index.data_end());
        warn!(
            volume = id,
            offset = pos,
            attested_end,
            "index file has an invalid record; rebuilding it from the data file"
        );
        return reset_index(id, file, sb, attested_end);
    }
    let attested_end = index.data_end();
    Ok(LoadedIndex {
        index,
        index_end: pos,
        attested_end,
    })
}

/// Empties the index file (header only) for a rebuild by a full scan.
fn reset_index(
    id: u32,
    file: &dyn Storage,
    sb: &Superblock,
    attested_end: u64,
) -> Result<LoadedIndex> {
    file.set_len(0)?;
    file.write_at(&format::encode_index_header(id, sb.instance_id), 0)?;
    Ok(LoadedIndex {
        index: NeedleIndex::new(SUPERBLOCK_SIZE),
        index_end: INDEX_HEADER_SIZE,
        attested_end,
    })
}

/// The end of the furthest needle that a valid put record from `pos` on names.
fn attested_end(id: u32, file: &dyn Storage, mut pos: u64, file_len: u64) -> Result<u64> {
    let mut end = 0;
    let mut raw = [0u8; INDEX_RECORD_SIZE as usize];
    while pos + INDEX_RECORD_SIZE <= file_len {
        file.read_at(&mut raw, pos)?;
        if let Ok(r) = format::decode_index_record(&raw, id, pos)
            && r.kind == IndexRecordKind::Put
        {
            end = end.max(r.offset.saturating_add(u64::from(r.size_bytes)));
        }
        pos += INDEX_RECORD_SIZE;
    }
    Ok(end)
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
/// the first invalid (torn) one, unless that one starts below `attested_end` (inside
/// acknowledged data): then it refuses with `Corrupt` and changes nothing. Returns put
/// records for the index file.
pub(crate) fn scan_tail(
    id: u32,
    data: &dyn Storage,
    index: &mut NeedleIndex,
    data_len: u64,
    attested_end: u64,
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
    if offset < attested_end {
        if reason.is_empty() {
            reason = "the data file ends early".into();
        }
        return Err(Error::corrupt(
            id,
            offset,
            format!(
                "{reason}: the needle lies inside acknowledged data (the index names needles up \
                 to byte {attested_end}); not cutting the file; rebuild this replica from a peer"
            ),
        ));
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
