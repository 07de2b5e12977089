//! Positional file access behind a small trait: the seam for fault injection.
//!
//! The engine never touches `std::fs::File` directly for volume data or index files: it asks
//! a [`StorageBackend`] to open a path and gets back a [`Storage`] that reads and writes at
//! explicit offsets (`pread`/`pwrite`). Tests wrap the
//! real backend to fail a sync or count the system calls of a read.
//!
//! [`Storage::try_read_at_cached`] is the one read that must not block: on Linux,
//! [`FileStorage`] serves it with `preadv2(RWF_NOWAIT)`, which copies from the page cache and
//! fails with `EAGAIN` rather than wait for the disk, so the store node can answer a cached
//! needle on its async task.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One open file, accessed only at explicit offsets.
pub trait Storage: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset` (an error if the file is shorter).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `bufs` one after the other from `offset`: the same bytes as
    /// their concatenation written there, and no more atomic (on an error a
    /// prefix may be written). The default writes each with [`Storage::write_at`];
    /// [`FileStorage`] gathers them ([`write_all_vectored_at`]), so a
    /// needle's data goes to the file from the buffers it arrived in.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for buf in bufs {
            self.write_at(buf, at)?;
            at += buf.len() as u64;
        }
        Ok(())
    }
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
    /// Reads exactly `buf.len()` bytes at `offset` only if that cannot block: never waits for
    /// the disk or a lock. `Ok(true)`: `buf` is filled. `Ok(false)`: the bytes are not all in
    /// the page cache (or past the end of the file), or this backend cannot tell; `buf` then
    /// holds anything, and the caller reads with [`Storage::read_at`]. The default never
    /// tries, so wrapping backends keep every read on their own `read_at`.
    fn try_read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let _ = (buf, offset);
        Ok(false)
    }
    /// [`Storage::read_at`] into a new buffer of `len` bytes. The default fills a zeroed
    /// buffer; [`FileStorage`] reads into uninitialised memory instead, which spares writing
    /// every byte twice (a tenth of the store's CPU for a cached 64 KiB read).
    fn read_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_at(&mut buf, offset)?;
        Ok(buf)
    }
    /// [`Storage::try_read_at_cached`] into a new buffer of `len` bytes: `None` when the
    /// bytes are not all cached. [`FileStorage`] reads into uninitialised memory here too.
    fn try_read_vec_cached(&self, len: usize, offset: u64) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0; len];
        Ok(self.try_read_at_cached(&mut buf, offset)?.then_some(buf))
    }
}

/// Writes `bufs` one after the other into `file` from `offset`: the same
/// bytes as their concatenation written there, gathered with `pwritev` on
/// Linux (in batches of `UIO_MAXIOV`, resumed after a partial write), each
/// with `write_all_at` elsewhere. Not atomic: on an error a prefix may be
/// written.
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        const IOV_MAX: usize = libc::UIO_MAXIOV as usize;
        let mut slices: Vec<IoSlice> = bufs
            .iter()
            .filter(|buf| !buf.is_empty())
            .map(|buf| IoSlice::new(buf))
            .collect();
        let mut rest = &mut slices[..];
        let mut at = offset;
        while !rest.is_empty() {
            let count = rest.len().min(IOV_MAX);
            let pos = libc::off_t::try_from(at)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and
            // `count` slices of `rest` are valid for reads during the call.
            let n = unsafe {
                libc::pwritev(
                    file.as_raw_fd(),
                    rest.as_ptr().cast::<libc::iovec>(),
                    count as libc::c_int,
                    pos,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n as u64;
            IoSlice::advance_slices(&mut rest, n as usize);
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut at = offset;
        for buf in bufs {
            file.write_all_at(buf, at)?;
            at += buf.len() as u64;
        }
        Ok(())
    }
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
    /// Cleared once `preadv2(RWF_NOWAIT)` turned out unsupported for this file (old kernel or
    /// a filesystem without non-blocking buffered reads), so that it is not tried again.
    nowait: AtomicBool,
}

impl FileStorage {
    /// Wraps an open file.
    pub fn new(file: File) -> FileStorage {
        FileStorage {
            file,
            nowait: AtomicBool::new(cfg!(target_os = "linux")),
        }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        write_all_vectored_at(&self.file, bufs, offset)
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

    fn try_read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        // SAFETY: viewing initialised bytes as maybe-uninitialised is sound as long as
        // nothing writes uninitialised bytes through the view; only the kernel writes
        // through it, and it writes bytes read from the file.
        let buf = unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) };
        self.read_cached_into(buf, offset)
    }

    fn read_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let filled = buf.len();
            let spare = &mut buf.spare_capacity_mut()[..len - filled];
            let at = offset.checked_add(filled as u64);
            let n = match at {
                Some(at) => pread_into(&self.file, spare, at, false)?,
                None => 0,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ));
            }
            // SAFETY: the kernel initialised the `n` bytes after the `filled` ones.
            unsafe { buf.set_len(filled + n) };
        }
        Ok(buf)
    }

    fn try_read_vec_cached(&self, len: usize, offset: u64) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(len);
        if !self.read_cached_into(&mut buf.spare_capacity_mut()[..len], offset)? {
            return Ok(None);
        }
        // SAFETY: a cached read that answers `true` filled all `len` bytes.
        unsafe { buf.set_len(len) };
        Ok(Some(buf))
    }
}

impl FileStorage {
    /// Fills all of `buf` from the page cache, or answers `false` without waiting for the
    /// disk ([`Storage::try_read_at_cached`]).
    fn read_cached_into(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<bool> {
        if buf.is_empty() {
            return Ok(true);
        }
        if !self.nowait.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match pread_into(&self.file, buf, offset, true) {
            // A short read (part of the range cached, or the end of the file): let the
            // blocking path finish the job, or report the short file.
            Ok(n) => Ok(n == buf.len()),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(false),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
                ) =>
            {
                self.nowait.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// One positioned read into `buf`, retried on `EINTR`: the number of bytes read, which may
/// be short. With `nowait`, `preadv2(RWF_NOWAIT)`: only from the page cache (`EAGAIN`
/// otherwise).
fn pread_into(
    file: &File,
    buf: &mut [MaybeUninit<u8>],
    offset: u64,
    nowait: bool,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // An offset beyond `off_t` is past any end of file.
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return Ok(0);
    };
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, a live, exclusively
        // borrowed buffer that outlives the call; writing initialised bytes into
        // maybe-uninitialised memory is sound. The descriptor belongs to `file`, open for
        // the duration of the call.
        let n = unsafe { pread_raw(file.as_raw_fd(), buf, offset, nowait) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// `preadv2`, with `RWF_NOWAIT` if `nowait`.
///
/// # Safety
/// `fd` is open and `buf` may be written by the kernel (see [`pread_into`]).
#[cfg(target_os = "linux")]
unsafe fn pread_raw(
    fd: std::os::fd::RawFd,
    buf: &mut [MaybeUninit<u8>],
    offset: libc::off_t,
    nowait: bool,
) -> isize {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
    // SAFETY: `iov` describes `buf` (the caller's contract).
    unsafe { libc::preadv2(fd, &iov, 1, offset, flags) }
}

/// `pread`; without `preadv2`, nothing is known to be cached (a read of nothing).
///
/// # Safety
/// `fd` is open and `buf` may be written by the kernel (see [`pread_into`]).
#[cfg(not(target_os = "linux"))]
unsafe fn pread_raw(
    fd: std::os::fd::RawFd,
    buf: &mut [MaybeUninit<u8>],
    offset: libc::off_t,
    nowait: bool,
) -> isize {
    if nowait {
        return 0;
    }
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes (the caller's contract).
    unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset) }
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

/// Asks the kernel to start writing `len` bytes of `file` at `offset` back to the disk,
/// without waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). A long file written
/// in one go and synced at its end then waits for its tail only, not for all of it at once;
/// durability still comes from that sync alone. Where the call is not supported, nothing.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Ok(());
        };
        // SAFETY: the descriptor belongs to `file`, open for the duration of the call; the
        // call reads no memory of ours.
        let done = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if done != 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::ESPIPE)
            ) {
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
    Ok(())
}

/// Space on the file system holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub available_bytes: u64,
    /// Size of the file system.
    pub total_bytes: u64,
}

/// The space of the file system holding `path` (`statvfs`).
#[allow(
    clippy::useless_conversion,
    reason = "statvfs's field types differ in width between platforms"
)]
pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is
    // writable memory of the right type, initialised by the call when it succeeds.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    let fragment = u64::from(stat.f_frsize);
    Ok(DiskSpace {
        available_bytes: u64::from(stat.f_bavail).saturating_mul(fragment),
        total_bytes: u64::from(stat.f_blocks).saturating_mul(fragment),
    })
}

/// Removes a file, treating "not found" as success.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gathered write lands as the concatenation of its buffers at its
    /// offset, past `IOV_MAX` buffers and with empty ones among them, and
    /// leaves the bytes before it alone.
    #[test]
    fn a_vectored_write_is_the_concatenation_of_its_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FileBackend
            .open(&dir.path().join("data"), true)
            .expect("open");
        storage.write_at(b"keep", 0).expect("write");
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 5) as usize])
            .collect();
        let bufs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        storage.write_vectored_at(&bufs, 4).expect("vectored write");
        let expected: Vec<u8> = b"keep".iter().copied().chain(pieces.concat()).collect();
        assert_eq!(storage.len().expect("len"), expected.len() as u64);
        let mut back = vec![0; expected.len()];
        storage.read_at(&mut back, 0).expect("read");
        assert_eq!(back, expected);
    }

    /// The fallback for files whose filesystem refuses `RWF_NOWAIT` (procfs
    /// answers `EOPNOTSUPP`): the first cached read declines and turns them
    /// off for the file; reads then take the blocking path, with the bytes.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_without_nowait_reads_falls_back_to_blocking_reads() {
        let storage = FileStorage::new(File::open("/proc/self/status").expect("open procfs"));
        assert!(storage.nowait.load(Ordering::Relaxed));
        let mut buf = [0u8; 5];
        assert!(!storage.try_read_at_cached(&mut buf, 0).expect("declines"));
        assert!(
            !storage.nowait.load(Ordering::Relaxed),
            "turned off for this file"
        );
        assert!(
            !storage
                .try_read_at_cached(&mut buf, 0)
                .expect("declines again")
        );
        assert_eq!(storage.try_read_vec_cached(5, 0).expect("declines"), None);
        storage.read_at(&mut buf, 0).expect("blocking read");
        assert_eq!(&buf, b"Name:");
        assert_eq!(storage.read_vec_at(5, 0).expect("blocking read"), b"Name:");
    }

    fn storage_with(bytes: &[u8]) -> (tempfile::TempDir, FileStorage) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let s = FileBackend.open(&path, true).expect("create");
        s.write_at(bytes, 0).expect("write");
        s.sync_data().expect("sync");
        drop(s);
        let file = OpenOptions::new().read(true).open(&path).expect("open");
        (dir, FileStorage::new(file))
    }

    #[test]
    fn cached_read_gives_the_bytes_or_declines() {
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let (_dir, s) = storage_with(&bytes);
        let mut buf = vec![0u8; 5000];
        // Freshly written and synced: cached or not, but never wrong bytes.
        if s.try_read_at_cached(&mut buf, 1000).expect("try") {
            assert_eq!(buf, bytes[1000..6000]);
        }
        // After a plain read of the range it is in the page cache.
        s.read_at(&mut buf, 1000).expect("read");
        buf.fill(0);
        let hit = s.try_read_at_cached(&mut buf, 1000).expect("try again");
        if hit {
            assert_eq!(buf, bytes[1000..6000]);
        }
        let supported = s.nowait.load(Ordering::Relaxed);
        if cfg!(target_os = "linux") && supported {
            assert!(hit, "a range just read is served from the page cache");
        } else {
            assert!(!hit);
        }
        assert!(s.try_read_at_cached(&mut [], 1 << 40).expect("empty"));
    }

    #[test]
    fn reads_into_new_buffers_give_exactly_the_bytes() {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 13 + 1) as u8).collect();
        let (_dir, s) = storage_with(&bytes);
        let read = s.read_vec_at(66_000, 3000).expect("read");
        assert_eq!(read, bytes[3000..69_000]);
        assert_eq!(
            s.read_vec_at(0, 1 << 40).expect("nothing"),
            Vec::<u8>::new()
        );
        if let Some(cached) = s.try_read_vec_cached(66_000, 3000).expect("try") {
            assert_eq!(cached, bytes[3000..69_000]);
        }
        let supported = s.nowait.load(Ordering::Relaxed);
        if cfg!(target_os = "linux") && supported {
            assert!(s.try_read_vec_cached(1000, 1000).expect("cached").is_some());
        }
        // Short of the end: an error, never a short or partly uninitialised buffer.
        let err = s.read_vec_at(200, 69_900).expect_err("past the end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = s.read_vec_at(8, u64::MAX - 4).expect_err("past any file");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            s.try_read_vec_cached(200, 69_900)
                .expect("straddling")
                .is_none()
        );
    }

    #[test]
    fn cached_read_past_the_end_declines() {
        let bytes = vec![0xab_u8; 4096];
        let (_dir, s) = storage_with(&bytes);
        let mut all = vec![0u8; 4096];
        s.read_at(&mut all, 0).expect("read");
        let mut buf = vec![0u8; 100];
        assert!(!s.try_read_at_cached(&mut buf, 4096).expect("at the end"));
        assert!(
            !s.try_read_at_cached(&mut buf, 1 << 40)
                .expect("far past the end")
        );
        assert!(
            !s.try_read_at_cached(&mut buf, u64::MAX)
                .expect("beyond off_t")
        );
        // Straddling the end: a short read, never a partial answer.
        assert!(!s.try_read_at_cached(&mut buf, 4050).expect("straddling"));
    }

    #[test]
    fn other_backends_never_claim_a_cached_read() {
        struct Plain;
        impl Storage for Plain {
            fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
                Ok(())
            }
            fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
                Ok(())
            }
            fn sync_data(&self) -> io::Result<()> {
                Ok(())
            }
            fn len(&self) -> io::Result<u64> {
                Ok(0)
            }
            fn set_len(&self, _: u64) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(!Plain.try_read_at_cached(&mut [0; 8], 0).expect("default"));
        assert!(Plain.try_read_vec_cached(8, 0).expect("default").is_none());
        assert_eq!(Plain.read_vec_at(8, 0).expect("default read"), vec![0; 8]);
    }

    #[test]
    fn disk_space_reads_the_file_system_and_refuses_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(dir.path()).unwrap();
        assert!(space.total_bytes > 0);
        assert!(space.available_bytes <= space.total_bytes);
        assert!(disk_space(&dir.path().join("missing")).is_err());
    }
}
