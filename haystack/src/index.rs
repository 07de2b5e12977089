//! The compact in-memory needle index of one volume.
//!
//! Keys are strictly increasing within a volume and needles are appended back to back in key
//! order, so both keys and offsets increase. Entries are grouped in blocks of
//! [`BLOCK_ENTRIES`]: a block header holds the first entry's key and offset and where the
//! block's bytes start; every further entry is two LEB128 varints, the key delta and the
//! offset delta in 8-byte units (which is the previous needle's size). A needle's size is the
//! next entry's offset minus its own (the data end for the last entry). Deleted flags are a
//! bitset by entry ordinal. Lookup: binary search on block base keys, then a linear decode of
//! at most one block. About 3–4 bytes per needle for small BLOBs.

use crate::format::NEEDLE_ALIGNMENT;

/// Entries per block.
pub const BLOCK_ENTRIES: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Block {
    base_offset: u64,
    byte_start: u64,
}

/// One needle as the index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Position of the entry in key order.
    pub ordinal: u64,
    /// Needle key.
    pub key: u64,
    /// Needle offset in the data file.
    pub offset: u64,
    /// Needle size on disk, padding included.
    pub size_bytes: u64,
    /// Whether the needle is deleted.
    pub deleted: bool,
}

/// Compact, sorted, delta-coded index from needle key to location.
#[derive(Clone, Debug)]
pub struct NeedleIndex {
    /// First key of each block, apart from the rest so the binary search touches only keys.
    base_keys: Vec<u64>,
    blocks: Vec<Block>,
    bytes: Vec<u8>,
    deleted: Vec<u64>,
    len: u64,
    start: u64,
    last_key: Option<u64>,
    last_offset: u64,
    data_end: u64,
    deleted_count: u64,
    deleted_bytes: u64,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes a varint written by `put_varint` (the index only decodes its own bytes).
fn get_varint(bytes: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = bytes[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

impl NeedleIndex {
    /// An empty index whose first needle will sit at byte `start` of the data file.
    pub fn new(start: u64) -> NeedleIndex {
        NeedleIndex {
            base_keys: Vec::new(),
            blocks: Vec::new(),
            bytes: Vec::new(),
            deleted: Vec::new(),
            len: 0,
            start,
            last_key: None,
            last_offset: start,
            data_end: start,
            deleted_count: 0,
            deleted_bytes: 0,
        }
    }

    /// Number of entries, deleted ones included.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The highest key, if any.
    pub fn last_key(&self) -> Option<u64> {
        self.last_key
    }

    /// End of the last needle: where the next one goes.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// Number of deleted entries.
    pub fn deleted_count(&self) -> u64 {
        self.deleted_count
    }

    /// Bytes of deleted needles.
    pub fn deleted_bytes(&self) -> u64 {
        self.deleted_bytes
    }

    /// Bytes of live needles.
    pub fn live_bytes(&self) -> u64 {
        self.data_end - self.start - self.deleted_bytes
    }

    /// Heap bytes held by the index (capacity, not just length).
    pub fn heap_size_bytes(&self) -> usize {
        self.base_keys.capacity() * 8
            + self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.bytes.capacity()
            + self.deleted.capacity() * 8
    }

    /// Appends a needle of `size_bytes` at the data end. Returns false (and changes nothing)
    /// unless `key` is above every key and `size_bytes` is a positive multiple of 8.
    pub fn push(&mut self, key: u64, size_bytes: u64, deleted: bool) -> bool {
        if self.last_key.is_some_and(|k| key <= k)
            || size_bytes == 0
            || !size_bytes.is_multiple_of(NEEDLE_ALIGNMENT)
            || self.data_end.checked_add(size_bytes).is_none()
        {
            return false;
        }
        let offset = self.data_end;
        if self.len.is_multiple_of(BLOCK_ENTRIES as u64) {
            self.base_keys.push(key);
            self.blocks.push(Block {
                base_offset: offset,
                byte_start: self.bytes.len() as u64,
            });
        } else {
            let last_key = self.last_key.expect("non-empty index has a last key");
            put_varint(&mut self.bytes, key - last_key);
            put_varint(
                &mut self.bytes,
                (offset - self.last_offset) / NEEDLE_ALIGNMENT,
            );
        }
        let ordinal = self.len;
        if ordinal.is_multiple_of(64) {
            self.deleted.push(0);
        }
        self.len += 1;
        self.last_key = Some(key);
        self.last_offset = offset;
        self.data_end = offset + size_bytes;
        if deleted {
            self.set_deleted_bit(ordinal, size_bytes);
        }
        true
    }

    fn set_deleted_bit(&mut self, ordinal: u64, size_bytes: u64) -> bool {
        let word = &mut self.deleted[(ordinal / 64) as usize];
        let bit = 1u64 << (ordinal % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.deleted_count += 1;
        self.deleted_bytes += size_bytes;
        true
    }

    fn is_deleted(&self, ordinal: u64) -> bool {
        self.deleted[(ordinal / 64) as usize] & (1u64 << (ordinal % 64)) != 0
    }

    /// Finds a key.
    pub fn get(&self, key: u64) -> Option<IndexEntry> {
        let bi = self.base_keys.partition_point(|&b| b <= key);
        if bi == 0 {
            return None;
        }
        let bi = bi - 1;
        let mut it = RawIter::at_block(self, bi);
        while let Some((ordinal, k, offset)) = it.next() {
            if k == key {
                let end = it.peek_offset();
                return Some(IndexEntry {
                    ordinal,
                    key,
                    offset,
                    size_bytes: end - offset,
                    deleted: self.is_deleted(ordinal),
                });
            }
            if k > key || ordinal as usize % BLOCK_ENTRIES == BLOCK_ENTRIES - 1 {
                return None;
            }
        }
        None
    }

    /// Marks a key deleted. Returns its entry if it was live.
    pub fn mark_deleted(&mut self, key: u64) -> Option<IndexEntry> {
        let entry = self.get(key)?;
        if entry.deleted {
            return None;
        }
        self.set_deleted_bit(entry.ordinal, entry.size_bytes);
        Some(entry)
    }

    /// Up to `limit` entries with keys above `after` (all keys if `None`), in key order.
    pub fn entries_after(&self, after: Option<u64>, limit: usize) -> Vec<IndexEntry> {
        let block = after.map_or(0, |k| self.base_keys.partition_point(|&b| b <= k));
        let mut raw = RawIter::at_block(self, block.saturating_sub(1));
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((ordinal, key, offset)) = raw.next() else {
                break;
            };
            if after.is_some_and(|a| key <= a) {
                continue;
            }
            out.push(IndexEntry {
                ordinal,
                key,
                offset,
                size_bytes: raw.peek_offset() - offset,
                deleted: self.is_deleted(ordinal),
            });
        }
        out
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        let mut raw = RawIter::at_block(self, 0);
        std::iter::from_fn(move || {
            let (ordinal, key, offset) = raw.next()?;
            let end = raw.peek_offset();
            Some(IndexEntry {
                ordinal,
                key,
                offset,
                size_bytes: end - offset,
                deleted: self.is_deleted(ordinal),
            })
        })
    }
}

/// Sequential decoder of (ordinal, key, offset) from a block on.
struct RawIter<'a> {
    index: &'a NeedleIndex,
    ordinal: u64,
    pos: usize,
    key: u64,
    offset: u64,
}

impl<'a> RawIter<'a> {
    fn at_block(index: &'a NeedleIndex, block: usize) -> RawIter<'a> {
        let (pos, key, offset) = index.blocks.get(block).map_or((0, 0, index.start), |b| {
            (b.byte_start as usize, index.base_keys[block], b.base_offset)
        });
        RawIter {
            index,
            ordinal: (block * BLOCK_ENTRIES) as u64,
            pos,
            key,
            offset,
        }
    }

    fn decode_at(&self, ordinal: u64, pos: &mut usize) -> (u64, u64) {
        if (ordinal as usize).is_multiple_of(BLOCK_ENTRIES) {
            let block = ordinal as usize / BLOCK_ENTRIES;
            let b = &self.index.blocks[block];
            *pos = b.byte_start as usize;
            (self.index.base_keys[block], b.base_offset)
        } else {
            let dk = get_varint(&self.index.bytes, pos);
            let doff = get_varint(&self.index.bytes, pos);
            (self.key + dk, self.offset + doff * NEEDLE_ALIGNMENT)
        }
    }

    fn next(&mut self) -> Option<(u64, u64, u64)> {
        if self.ordinal >= self.index.len {
            return None;
        }
        let mut pos = self.pos;
        let (key, offset) = self.decode_at(self.ordinal, &mut pos);
        self.pos = pos;
        self.key = key;
        self.offset = offset;
        let ordinal = self.ordinal;
        self.ordinal += 1;
        Some((ordinal, key, offset))
    }

    /// Offset of the next entry (the data end after the last).
    fn peek_offset(&self) -> u64 {
        if self.ordinal >= self.index.len {
            return self.index.data_end;
        }
        let mut pos = self.pos;
        self.decode_at(self.ordinal, &mut pos).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn matches_a_btreemap() {
        let mut idx = NeedleIndex::new(64);
        let mut model = BTreeMap::new();
        let mut key = 0u64;
        let mut offset = 64u64;
        for i in 0..1000u64 {
            key += 1 + (i * 7919) % 300_000;
            let size = 8 * (1 + (i * 31) % 200_000);
            assert!(idx.push(key, size, false));
            model.insert(key, (offset, size));
            offset += size;
        }
        assert!(!idx.push(key, 8, false));
        for (&k, &(o, s)) in &model {
            let e = idx.get(k).expect("present");
            assert_eq!((e.offset, e.size_bytes, e.deleted), (o, s, false));
            assert!(idx.get(k + 1).is_none() || model.contains_key(&(k + 1)));
        }
        assert!(idx.get(0).is_none());
        let keys: Vec<u64> = idx.iter().map(|e| e.key).collect();
        assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
        let first = *model.keys().next().expect("non-empty");
        assert!(idx.mark_deleted(first).is_some());
        assert!(idx.mark_deleted(first).is_none());
        assert!(idx.get(first).expect("present").deleted);
        assert_eq!(idx.deleted_count(), 1);
    }
}
