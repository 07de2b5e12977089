//! Streams of byte chunks written to new files from async code: the one
//! writer behind receiving a block or an index, copying a hot replica's
//! files and downloading a peer's index.
//!
//! A [`FileWriter`] gathers chunks (not copied) into runs of
//! [`WRITE_RUN_BYTES`] and hands them through a bounded queue to a blocking
//! thread, so that the runtime never waits on the disk and a write costs
//! one system call per run, not per chunk. Every [`WRITEBACK_BYTES`] the thread asks the
//! kernel to start writing back what it wrote: the sync at the end then
//! waits for the file's tail, not for the whole file at once (a 100 MiB
//! block left dirty in the page cache took about a second to sync).

use std::fs::File;
use std::io;
use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes gathered before one write.
const WRITE_RUN_BYTES: usize = 1 << 20;
/// Most chunks gathered before one write (`writev`'s own limit).
const WRITE_RUN_CHUNKS: usize = 1024;
/// Runs queued for the writing thread.
const WRITE_QUEUE: usize = 2;
/// Bytes written between two requests to start writeback.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Why a stream could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// The local file.
    #[error("local file: {0}")]
    Io(#[from] io::Error),
    /// The stream failed.
    #[error("the body failed: {0}")]
    Body(String),
    /// More or fewer bytes than declared.
    #[error("{received} bytes received, {declared} declared")]
    Length {
        /// Bytes received (at least, for a body that ran long).
        received: u64,
        /// Bytes declared.
        declared: u64,
    },
}

/// Writes `stream` to a new file at `path` and syncs it. With `declared`,
/// a stream that ends short or runs long is an error (it stops at the
/// first byte too many).
pub(crate) async fn write_stream<S, E>(
    mut stream: S,
    path: &Path,
    declared: Option<u64>,
) -> Result<u64, TransferError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut file = FileWriter::create(path).await?;
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| TransferError::Body(e.to_string()))?;
        received += chunk.len() as u64;
        if let Some(declared) = declared.filter(|d| received > *d) {
            return Err(TransferError::Length { received, declared });
        }
        file.write(chunk).await?;
    }
    if let Some(declared) = declared.filter(|d| received != *d) {
        return Err(TransferError::Length { received, declared });
    }
    file.finish_synced().await?;
    Ok(received)
}

/// A new file written by a blocking thread (module doc). Dropped before
/// [`FileWriter::finish_synced`], the thread stops after the runs queued;
/// the caller removes the file.
pub(crate) struct FileWriter {
    run: Vec<Bytes>,
    run_bytes: usize,
    queue: Option<mpsc::Sender<Vec<Bytes>>>,
    writer: Option<JoinHandle<io::Result<File>>>,
}

impl FileWriter {
    /// Creates (or truncates) the file at `path`.
    pub(crate) async fn create(path: &Path) -> io::Result<FileWriter> {
        let file = tokio::fs::File::create(path).await?.into_std().await;
        let (queue, runs) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_runs(file, runs));
        Ok(FileWriter {
            run: Vec::new(),
            run_bytes: 0,
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// Appends `chunk`.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.run_bytes += chunk.len();
        self.run.push(chunk);
        // Bounded by chunks too: a peer sending tiny chunks must not make
        // a run of a million of them.
        if self.run_bytes >= WRITE_RUN_BYTES || self.run.len() >= WRITE_RUN_CHUNKS {
            self.send().await?;
        }
        Ok(())
    }

    /// Writes what is gathered, waits for every write and syncs the file.
    pub(crate) async fn finish_synced(mut self) -> io::Result<()> {
        self.send().await?;
        self.queue = None;
        let file = self.stopped().await?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(io::Error::other)?
    }

    async fn send(&mut self) -> io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(&mut self.run);
        self.run_bytes = 0;
        let sent = match &self.queue {
            Some(queue) => queue.send(run).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread stopped on an error: that error.
        self.queue = None;
        self.stopped().await.map(|_| ())?;
        Err(io::Error::other("the file's writer stopped"))
    }

    /// The file once the thread has written every run queued.
    async fn stopped(&mut self) -> io::Result<File> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("the file's writer stopped"))?;
        writer.await.map_err(io::Error::other)?
    }
}

/// The writing thread: every run in order, with writeback started every
/// [`WRITEBACK_BYTES`].
fn write_runs(file: File, mut runs: mpsc::Receiver<Vec<Bytes>>) -> io::Result<File> {
    let (mut written, mut started) = (0u64, 0u64);
    while let Some(run) = runs.blocking_recv() {
        let bufs: Vec<&[u8]> = run.iter().map(|chunk| &chunk[..]).collect();
        haystack::file::write_all_vectored_at(&file, &bufs, written)?;
        written += bufs.iter().map(|buf| buf.len() as u64).sum::<u64>();
        if written - started >= WRITEBACK_BYTES {
            haystack::file::start_writeback(&file, started, written - started)?;
            started = written;
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_reach_the_file_in_order_and_a_length_mismatch_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Chunks of odd sizes crossing run boundaries, 20 MiB in all, so
        // that writeback starts more than once.
        let mut expected = Vec::new();
        let mut chunks: Vec<Result<Bytes, String>> = (0..331u32)
            .map(|i| {
                let chunk: Vec<u8> = (0..63_367u32).map(|j| (i * 7 + j) as u8).collect();
                expected.extend_from_slice(&chunk);
                Ok(Bytes::from(chunk))
            })
            .collect();
        // Empty chunks anywhere (the last one right after a run is sent)
        // and more one-byte chunks than a run gathers.
        for at in [0, 17, 200] {
            chunks.insert(at, Ok(Bytes::new()));
        }
        for i in 0..3000u32 {
            expected.push(i as u8);
            chunks.push(Ok(Bytes::from(vec![i as u8])));
        }
        chunks.push(Ok(Bytes::new()));
        let len = expected.len() as u64;
        let written = write_stream(futures::stream::iter(chunks.clone()), &path, Some(len))
            .await
            .unwrap();
        assert_eq!(written, len);
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        // A run of nothing but an empty chunk, after one that filled a run.
        let whole: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from(vec![7u8; WRITE_RUN_BYTES])),
            Ok(Bytes::new()),
        ];
        let one_run = write_stream(futures::stream::iter(whole), &path, None)
            .await
            .unwrap();
        assert_eq!(one_run, WRITE_RUN_BYTES as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), one_run);

        let short = write_stream(futures::stream::iter(chunks), &path, Some(len + 1)).await;
        assert!(
            matches!(short, Err(TransferError::Length { .. })),
            "{short:?}"
        );
        let failed: Vec<Result<Bytes, String>> =
            vec![Ok(Bytes::from_static(b"x")), Err("cut".into())];
        let cut = write_stream(futures::stream::iter(failed), &path, None).await;
        assert!(matches!(cut, Err(TransferError::Body(_))), "{cut:?}");
    }
}
