//! Sealing: a locked hot volume's live needles, each checked, into a warm
//! data file and its sorted index. Deleted needles are dropped, so no dead
//! byte is ever erasure-coded.
//!
//! The warm data file holds the needles exactly as the hot tier wrote them
//! (header, content type, data, footer, padding; the deleted flag clear),
//! one after the other from offset 0, in key order. Both files are written
//! under a temporary name and synced, then the data file is renamed into
//! place, then the index, and the directory is synced. A crash can leave
//! `.tmp` files (the next seal overwrites them) or a data file without its
//! index; a seal is done only once both renames are durable, and a warm
//! volume is used only through its index, whose header names its encode
//! generation and data length.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use haystack::Volume;
use haystack::file::sync_dir;

use crate::error::{Error, Result};
use crate::format::{INDEX_HEADER_SIZE, IndexEntry, IndexHeader};

/// Index entries read from the hot volume at a time.
const PAGE: usize = 4096;

/// What [`seal_live_needles`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Live needles in the warm data file.
    pub needles: u64,
    /// Length of the warm data file.
    pub data_len_bytes: u64,
    /// Needles of the hot volume that were dropped as deleted.
    pub dropped: u64,
}

/// Writes the live needles of the locked hot `volume` to `data_path`, and
/// their sorted index, stamped with `generation`, to `index_path`.
///
/// Deletes made on the hot volume while it is sealed may be missing from
/// the warm files: the caller holds deletes for the seal's duration, or
/// replays those made meanwhile into the warm volume's journal.
///
/// Every needle is read whole and checked (magic, sizes, key, CRC) before
/// it is copied; one that fails stops the seal with
/// [`Error::DamagedNeedle`] naming it, and nothing is left behind. Memory
/// stays bounded by one needle and one page of index entries, whatever the
/// volume's size.
pub fn seal_live_needles(
    volume: &Volume,
    generation: u64,
    data_path: &Path,
    index_path: &Path,
) -> Result<Sealed> {
    let status = volume.status();
    if !status.locked {
        return Err(Error::NotLocked {
            volume: volume.id(),
        });
    }
    if generation == 0 {
        return Err(Error::InvalidGeometry("encode generation 0".into()));
    }
    let data_tmp = temporary(data_path);
    let index_tmp = temporary(index_path);
    let written = write_files(volume, generation, &data_tmp, &index_tmp);
    let sealed = match written {
        Ok(sealed) => sealed,
        Err(error) => {
            let _ = std::fs::remove_file(&data_tmp);
            let _ = std::fs::remove_file(&index_tmp);
            return Err(error);
        }
    };
    std::fs::rename(&data_tmp, data_path)?;
    std::fs::rename(&index_tmp, index_path)?;
    for dir in [parent(data_path), parent(index_path)] {
        sync_dir(dir)?;
    }
    Ok(sealed)
}

fn write_files(
    volume: &Volume,
    generation: u64,
    data_path: &Path,
    index_path: &Path,
) -> Result<Sealed> {
    let mut data = BufWriter::new(File::create(data_path)?);
    let mut index = BufWriter::new(File::create(index_path)?);
    // The header is written last, once the count and length are known.
    index.write_all(&[0u8; INDEX_HEADER_SIZE])?;
    let mut sealed = Sealed {
        needles: 0,
        data_len_bytes: 0,
        dropped: 0,
    };
    let mut after = None;
    loop {
        let page = volume.needle_entries(after, PAGE);
        let Some(last) = page.last() else { break };
        after = Some(last.key);
        for entry in page {
            if entry.deleted {
                sealed.dropped += 1;
                continue;
            }
            let raw = volume
                .read_raw_needle(entry.key)
                .map_err(|error| match error {
                    haystack::Error::Corrupt { .. } => Error::DamagedNeedle {
                        volume: volume.id(),
                        key: entry.key,
                        why: error.to_string(),
                    },
                    other => Error::Hot(other),
                })?;
            if raw.header.deleted() {
                sealed.dropped += 1;
                continue;
            }
            let size_bytes = u32::try_from(raw.bytes.len())
                .map_err(|_| Error::corrupt(format!("needle {:x} is over 4 GiB", entry.key)))?;
            data.write_all(&raw.bytes)?;
            index.write_all(
                &IndexEntry {
                    key: entry.key,
                    offset: sealed.data_len_bytes,
                    size_bytes,
                }
                .encode(),
            )?;
            sealed.needles += 1;
            sealed.data_len_bytes += u64::from(size_bytes);
        }
    }
    let data = data.into_inner().map_err(|e| e.into_error())?;
    data.sync_all()?;
    let mut index = index.into_inner().map_err(|e| e.into_error())?;
    index.seek(SeekFrom::Start(0))?;
    let header = IndexHeader {
        volume_id: volume.id(),
        generation,
        entry_count: sealed.needles,
        data_len_bytes: sealed.data_len_bytes,
    };
    index.write_all(&header.encode())?;
    index.sync_all()?;
    Ok(sealed)
}

/// `PATH.tmp`, beside `path`.
pub(crate) fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}
