//! What a `hayloft up` data directory holds on disk, file by file: every
//! tier's file kinds told apart by name, and a block's data bytes split
//! from its header and checksum record by reading its header. Shared by
//! the `on-disk` binary and `hayloft bench efficiency`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A kind of file of a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A store's `volume-V.data`: superblock and needles.
    HotData,
    /// A store's `volume-V.index`.
    HotIndex,
    /// A storage node's block file (`volume-V.gG.sS.bB.block`).
    Block,
    /// A storage node's `volume-V.gG.index`.
    WarmIndex,
    /// A storage node's `volume-V.gG.journal`.
    WarmJournal,
}

/// One file, measured.
#[derive(Debug, Clone)]
pub struct DiskFile {
    /// Its volume.
    pub volume: u32,
    /// What it is.
    pub kind: Kind,
    /// Its length.
    pub len: u64,
    /// Of a block: its data bytes (the rest is header and checksums), and
    /// whether it is a parity block; `None` for one whose header cannot be
    /// read (being written, or damaged).
    pub block: Option<BlockBytes>,
}

/// A block file's payload.
#[derive(Debug, Clone, Copy)]
pub struct BlockBytes {
    /// Data bytes (what the erasure code covers).
    pub data_bytes: u64,
    /// A parity block.
    pub parity: bool,
}

/// Every tier file under `root`. Files that go while it looks (a rename, a
/// compaction, a block being written) are left out.
pub fn scan(root: &Path) -> io::Result<Vec<DiskFile>> {
    let mut found = Vec::new();
    for path in files(root)? {
        let Some((volume, kind)) = path.file_name().and_then(|n| n.to_str()).and_then(classify)
        else {
            continue;
        };
        let len = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let block = if kind == Kind::Block {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A block being written has no header yet: its bytes count, as
            // neither data nor parity.
            f4::block::read_header(&file).ok().map(|header| BlockBytes {
                data_bytes: header.block_len_bytes,
                parity: header.block_index >= u32::from(header.geometry.data_blocks),
            })
        } else {
            None
        };
        found.push(DiskFile {
            volume,
            kind,
            len,
            block,
        });
    }
    Ok(found)
}

/// Every file under `root`, recursively (directories that go while it
/// looks are skipped).
pub fn files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != root => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => dirs.push(entry.path()),
                Ok(_) => found.push(entry.path()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(found)
}

/// The volume and kind of a tier's file, from its name.
pub fn classify(name: &str) -> Option<(u32, Kind)> {
    let rest = name.strip_prefix("volume-")?;
    let volume: u32 = rest.get(..10)?.parse().ok()?;
    let suffix = rest.get(10..)?;
    let kind = match suffix {
        ".data" => Kind::HotData,
        ".index" => Kind::HotIndex,
        _ if suffix.starts_with(".g") && suffix.ends_with(".block") => Kind::Block,
        _ if suffix.starts_with(".g") && suffix.ends_with(".index") => Kind::WarmIndex,
        _ if suffix.starts_with(".g") && suffix.ends_with(".journal") => Kind::WarmJournal,
        _ => return None,
    };
    Some((volume, kind))
}

#[cfg(test)]
mod tests {
    use super::{Kind, classify};

    #[test]
    fn names_tell_the_kinds_apart() {
        assert_eq!(classify("volume-0000000007.data"), Some((7, Kind::HotData)));
        assert_eq!(
            classify("volume-0000000007.index"),
            Some((7, Kind::HotIndex))
        );
        assert_eq!(
            classify(&f4::block::block_file_name(12, 3, 0, 13)),
            Some((12, Kind::Block))
        );
        assert_eq!(
            classify("volume-0000000012.g0000000000000003.index"),
            Some((12, Kind::WarmIndex))
        );
        assert_eq!(
            classify("volume-0000000012.g0000000000000003.journal"),
            Some((12, Kind::WarmJournal))
        );
        assert_eq!(
            classify("volume-0000000012.g0000000000000003.index.tmp"),
            None
        );
        assert_eq!(classify("directory.redb"), None);
    }
}
