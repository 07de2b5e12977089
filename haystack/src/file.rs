//! Positional file access behind a small trait: the seam for fault injection.
//!
//! The engine never touches `std::fs::File` directly for volume data or index files: it asks
//! a [`StorageBackend`] to open a path and gets back a [`Storage`] that reads and writes at
//! explicit offsets (`pread`/`pwrite` through [`std::os::unix::fs::FileExt`]). Tests wrap the
//! real backend to fail a sync or count the system calls of a read.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One open file, accessed only at explicit offsets.
pub trait Storage: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset` (an error if the file is shorter).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Flushes written data to stable storage (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// Opens files for the engine.
pub trait StorageBackend: Send + Sync {
    /// Opens `path` for reading and writing; creates it (empty) if `create` and it is missing.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn Storage>>;
}

/// The real backend: `std::fs::File` with `pread`/`pwrite`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileBackend;

/// A [`Storage`] over a `std::fs::File`.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    /// Wraps an open file.
    pub fn new(file: File) -> FileStorage {
        FileStorage { file }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

impl StorageBackend for FileBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn Storage>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(FileStorage::new(file)))
    }
}

/// Fsyncs a directory so that renames and creations inside it are durable.
///
/// On Linux a rename is only durable once the directory's own inode is synced; see
/// `fsync(2)`: "Calling fsync() does not necessarily ensure that the entry in the directory
/// containing the file has also reached disk. For that an explicit fsync() on a file
/// descriptor for the directory is also needed."
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Durably renames `from` to `to` (both in `dir`): rename, then fsync the directory.
/// The caller must have synced the file's contents first.
pub fn durable_rename(dir: &Path, from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(dir)
}

/// Removes a file, treating "not found" as success.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
