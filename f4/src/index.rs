//! A warm volume's sorted index, read in place: the file is sealed and never
//! changes, so it is memory-mapped and searched without loading it.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result, check_owner};
use crate::format::{INDEX_ENTRY_SIZE, INDEX_HEADER_SIZE, IndexEntry, IndexHeader};

/// An open warm index.
#[derive(Debug)]
pub struct WarmIndex {
    header: IndexHeader,
    map: Mmap,
}

impl WarmIndex {
    /// Opens the index at `path` and checks that it is the index of
    /// `volume_id`'s encode generation `generation`, whole (its length is
    /// what its header says).
    pub fn open(path: &Path, volume_id: u32, generation: u64) -> Result<WarmIndex> {
        let file = File::open(path)?;
        // SAFETY: index files are written under a temporary name and renamed
        // into place once synced; nothing writes to or truncates them after.
        let map = unsafe { Mmap::map(&file)? };
        let header = IndexHeader::decode(&map)?;
        check_owner(
            "index",
            path,
            (header.volume_id, header.generation),
            (volume_id, generation),
        )?;
        if header.file_len_bytes() != Some(map.len() as u64) {
            return Err(Error::corrupt(format!(
                "index file is {} bytes, its header says {:?}",
                map.len(),
                header.file_len_bytes()
            )));
        }
        Ok(WarmIndex { header, map })
    }

    /// The header.
    pub fn header(&self) -> IndexHeader {
        self.header
    }

    /// Entry `i` (`i < entry_count`), CRC checked.
    pub fn entry(&self, i: u64) -> Result<IndexEntry> {
        if i >= self.header.entry_count {
            return Err(Error::OutOfRange {
                what: "index",
                offset: i,
                len: 1,
                limit: self.header.entry_count,
            });
        }
        let at =
            INDEX_HEADER_SIZE + usize::try_from(i).expect("mapped, so it fits") * INDEX_ENTRY_SIZE;
        let entry = IndexEntry::decode(&self.map[at..at + INDEX_ENTRY_SIZE])?;
        let end = entry.offset.checked_add(u64::from(entry.size_bytes));
        if end.is_none_or(|end| end > self.header.data_len_bytes) {
            return Err(Error::corrupt(format!(
                "index entry {i} points past the data file's {} bytes",
                self.header.data_len_bytes
            )));
        }
        Ok(entry)
    }

    /// The entry of `key`, if the volume holds it. Binary search, reading
    /// and checking only the entries it visits.
    pub fn get(&self, key: u64) -> Result<Option<IndexEntry>> {
        let (mut low, mut high) = (0, self.header.entry_count);
        while low < high {
            let middle = low + (high - low) / 2;
            let entry = self.entry(middle)?;
            match entry.key.cmp(&key) {
                std::cmp::Ordering::Equal => return Ok(Some(entry)),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        Ok(None)
    }

    /// The position of the first entry whose key is above `key` (all
    /// entries for `None`): where a page of keys after `key` starts.
    pub fn first_after(&self, key: Option<u64>) -> Result<u64> {
        let Some(key) = key else { return Ok(0) };
        let (mut low, mut high) = (0, self.header.entry_count);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.entry(middle)?.key <= key {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    /// Checks every entry: CRCs, keys strictly increasing, needles in
    /// order without overlapping, within the data file. A freshly sealed
    /// index has no gaps between needles; a folded one has gaps where
    /// deleted needles were.
    pub fn check_all(&self) -> Result<()> {
        let mut next_offset = 0;
        let mut last_key = None;
        for i in 0..self.header.entry_count {
            let entry = self.entry(i)?;
            if last_key.is_some_and(|last| entry.key <= last) {
                return Err(Error::corrupt(format!(
                    "index entry {i} is out of key order"
                )));
            }
            if entry.offset < next_offset {
                return Err(Error::corrupt(format!(
                    "index entry {i} starts at {}, inside the needle before it (ends at \
                     {next_offset})",
                    entry.offset
                )));
            }
            last_key = Some(entry.key);
            next_offset = entry.offset + u64::from(entry.size_bytes);
        }
        Ok(())
    }
}
