//! Block files kept open between range reads: opening one means reading
//! and checking its header and its whole checksum record, which for a
//! 1 GiB block is 64 KiB, far more than a small BLOB's range.
//!
//! Each read still looks the path up (one `stat`): a block file removed or
//! replaced on disk (lost, or rewritten by a write of the same block) is
//! never served from a stale descriptor; a different inode reopens it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::block::BlockFile;
use crate::error::Result;

/// A file's identity on disk: device and inode.
type Identity = (u64, u64);

/// Open block files by name, at most `capacity` of them.
pub(crate) struct OpenBlocks {
    capacity: usize,
    open: Mutex<HashMap<String, (Identity, Arc<BlockFile>)>>,
}

impl OpenBlocks {
    pub(crate) fn new(capacity: usize) -> OpenBlocks {
        OpenBlocks {
            capacity,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The block file `name` in `dir`, opened if it is not open yet or if
    /// the file on disk is no longer the one open.
    pub(crate) fn get(&self, dir: &Path, name: &str) -> Result<Arc<BlockFile>> {
        let path = dir.join(name);
        let identity = match std::fs::metadata(&path) {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(error) => {
                self.open.lock().remove(name);
                return Err(error.into());
            }
        };
        if let Some((held, block)) = self.open.lock().get(name)
            && *held == identity
        {
            return Ok(block.clone());
        }
        let block = Arc::new(BlockFile::open(&path)?);
        let mut open = self.open.lock();
        if open.len() >= self.capacity {
            // Simple and bounded: start over rather than track recency.
            open.clear();
        }
        open.insert(name.to_owned(), (identity, block.clone()));
        Ok(block)
    }

    /// The block file `name` in `dir` if it is open and still the file on
    /// disk (one `stat`), without opening anything.
    pub(crate) fn get_open(&self, dir: &Path, name: &str) -> Option<Arc<BlockFile>> {
        let meta = std::fs::metadata(dir.join(name)).ok()?;
        let open = self.open.lock();
        let (held, block) = open.get(name)?;
        (*held == (meta.dev(), meta.ino())).then(|| block.clone())
    }

    /// Forgets `name` (its file was just replaced).
    pub(crate) fn forget(&self, name: &str) {
        self.open.lock().remove(name);
    }
}
