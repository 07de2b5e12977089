//! The seal's encoding stage: a locked hot replica streamed into blocks on
//! their nodes, with no copy of the volume on any disk.
//!
//! `POST /seal` stages a plan: the warm index of the live needles in key
//! order, and beside it each needle's offset in the source replica's data
//! file ([`write_plan`]). [`LiveSource`] serves the warm data file's bytes
//! from the plan: it reads runs of needles from the source with ranged
//! reads, checks every needle (magic, sizes, key, CRC) before any of its
//! bytes is used, takes one that fails from another replica, and clears
//! the deleted flag (deletes the replicas take meanwhile are carried into
//! the journal by the migrator). `coding`'s stripe encoder pulls columns
//! from it and pushes each block's bytes into a [`BlockSink`], a bounded
//! queue feeding that block's `PUT` to its node, which checks every
//! chunk's CRC, syncs and renames ([`encode_to_nodes`]).
//!
//! Each data block of a stripe is read by a cursor of its own, whose
//! thread reads the block's runs a few ahead of the encoder, so that the
//! source's answers overlap the encoding and the uploads. A run holds every
//! column it covers whole (it ends with the needle holding a column's last
//! byte, and the next run starts again at that needle if it is small), so
//! the encoder takes each data column as a slice of the buffer the
//! source's answer was read into, and the block's upload sends that slice:
//! between arriving and leaving, the data is not copied on this node. A
//! column across a gap in the source's data file, or across the end of a
//! needle over [`REREAD_BYTES_MAX`], is gathered from two runs.
//!
//! Memory stays bounded whatever the volume's size: the encoder's columns,
//! the sinks' queues (a queued data column keeps its run's buffer), and
//! per data block [`RUNS_AHEAD`] runs queued, one being fetched and one in
//! use: four runs, each at most a column and a needle at each end (so, with
//! the largest BLOBs of 64 MiB, up to 4 × 10 × 129 MiB for a stripe of
//! such needles).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use coding::{BlockChecksums, Codec, ColumnSink, ColumnSource, StripeEncoder};
use futures::StreamExt;
use haystack::api::{NeedleEntry, PageCursor, VolumeFile};
use haystack::client::StoreClient;
use haystack::format::{NEEDLE_FLAG_DELETED, NEEDLE_FLAGS_OFFSET, check_needle_copy};
use parking_lot::Mutex;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::block::ENCODE_COLUMN_BYTES;
use crate::client::StorageClient;
use crate::error::{Error, Result};
use crate::format::{BlockHeader, Geometry, INDEX_HEADER_SIZE, IndexEntry, IndexHeader};
use crate::index::WarmIndex;
use crate::pace::Pace;

/// Bytes a sink hands its upload at once.
const SINK_CHUNK_BYTES: usize = 256 << 10;
/// Chunks queued per block upload.
const SINK_QUEUE: usize = 4;
/// Runs a cursor reads ahead of the encoder.
const RUNS_AHEAD: usize = 2;
/// Cursors kept between reads: one per data block of a stripe.
const CURSORS_MAX: usize = coding::MAX_DATA_SHARDS;
/// Largest needle read twice so that the columns on both sides of it come
/// each from one run: a larger one is read once, and the column across its
/// end gathered from two runs.
const REREAD_BYTES_MAX: u64 = (ENCODE_COLUMN_BYTES / 8) as u64;

/// What [`write_plan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    /// Live needles.
    pub needles: u64,
    /// Needles dropped as deleted.
    pub dropped: u64,
    /// Length of the warm data file.
    pub data_len_bytes: u64,
}

/// The files of a plan in a seal's staging directory.
pub(crate) struct StagedPlan {
    /// The warm index of the live needles.
    pub index: PathBuf,
    /// Each needle's offset in the source's data file, in index order.
    pub offsets: PathBuf,
}

impl StagedPlan {
    /// The plan's files in `dir`.
    pub(crate) fn in_dir(dir: &Path) -> StagedPlan {
        StagedPlan {
            index: dir.join("warm.index"),
            offsets: dir.join("offsets"),
        }
    }
}

/// Pages through `source`'s index of `volume` and writes the warm index of
/// its live needles (stamped with `generation`) to `plan.index` and their
/// offsets in the source's data file to `plan.offsets` (one little-endian
/// `u64` per index entry, in the same order), both synced.
pub(crate) async fn write_plan(
    source: &StoreClient,
    volume: u32,
    generation: u64,
    plan: &StagedPlan,
) -> Result<Planned> {
    let mut index = BufWriter::new(tokio::fs::File::create(&plan.index).await?);
    let mut offsets = BufWriter::new(tokio::fs::File::create(&plan.offsets).await?);
    // The header is written last, once the count and length are known.
    index.write_all(&[0u8; INDEX_HEADER_SIZE]).await?;
    let mut planned = Planned {
        needles: 0,
        dropped: 0,
        data_len_bytes: 0,
    };
    let mut cursor = PageCursor::default();
    while let Some(after) = cursor.next_page() {
        let page = source
            .needle_page(volume, after, haystack::api::PAGE_ENTRIES_MAX)
            .await
            .map_err(|e| io::Error::other(format!("the source's index: {e}")))?;
        for entry in &page.entries {
            if entry.deleted {
                planned.dropped += 1;
                continue;
            }
            let size_bytes = needle_size(volume, entry)?;
            let warm = IndexEntry {
                key: entry.key,
                offset: planned.data_len_bytes,
                size_bytes,
            };
            index.write_all(&warm.encode()).await?;
            offsets.write_all(&entry.offset.to_le_bytes()).await?;
            planned.needles += 1;
            planned.data_len_bytes += u64::from(size_bytes);
        }
        if !cursor.advance(page.next_after) {
            return Err(io::Error::other("the source's index does not page forward").into());
        }
    }
    let header = IndexHeader {
        volume_id: volume,
        generation,
        entry_count: planned.needles,
        data_len_bytes: planned.data_len_bytes,
    };
    index.flush().await?;
    let mut index = index.into_inner();
    index.seek(io::SeekFrom::Start(0)).await?;
    index.write_all(&header.encode()).await?;
    index.sync_all().await?;
    offsets.flush().await?;
    offsets.into_inner().sync_all().await?;
    Ok(planned)
}

fn needle_size(volume: u32, entry: &NeedleEntry) -> Result<u32> {
    u32::try_from(entry.size_bytes)
        .ok()
        .filter(|size| *size > 0)
        .ok_or_else(|| Error::DamagedNeedle {
            volume,
            key: entry.key,
            why: format!("the source's index gives it {} bytes", entry.size_bytes),
        })
}

/// The warm data file of a plan, read from the hot replicas (module doc).
pub(crate) struct LiveSource {
    plan: Arc<Plan>,
    /// The volume's block size: a cursor reads ahead to the end of the
    /// data block it starts in.
    block_size_bytes: u64,
    pace: Option<Mutex<Pace>>,
    /// Cursors reading ahead, by the offset each hands out next.
    cursors: Mutex<Vec<Cursor>>,
    /// Why the last read failed, with its needle named.
    failure: Mutex<Option<Error>>,
}

/// The plan and the replicas it is read from, shared with the read-ahead
/// threads.
struct Plan {
    volume: u32,
    index: WarmIndex,
    offsets: File,
    /// The source first; the others give needles that fail there.
    replicas: Vec<StoreClient>,
    runtime: Handle,
}

/// A sequential reader of one data block's bytes: a thread reads its runs
/// ahead, [`RUNS_AHEAD`] at most, while the encoder uses the earlier ones.
struct Cursor {
    /// Warm offset of the next byte handed out.
    next: u64,
    /// Where the thread stops: the end of the data block.
    end: u64,
    /// Verified bytes from `next` on: what is left of the last run.
    pending: Bytes,
    runs: std::sync::mpsc::Receiver<Result<(u64, Bytes)>>,
}

impl LiveSource {
    /// The plan staged as `staged`, cut into blocks of `block_size_bytes`,
    /// read from `replicas` (the source first) at most `bytes_per_second`
    /// (0: no limit) through `runtime`. Used on a blocking thread.
    pub(crate) fn open(
        volume: u32,
        generation: u64,
        block_size_bytes: u64,
        staged: &StagedPlan,
        replicas: Vec<StoreClient>,
        bytes_per_second: u64,
        runtime: Handle,
    ) -> Result<LiveSource> {
        let index = WarmIndex::open(&staged.index, volume, generation)?;
        let offsets = File::open(&staged.offsets)?;
        if offsets.metadata()?.len() != index.header().entry_count * 8 {
            return Err(Error::corrupt(
                "the staged plan's offsets do not match its index",
            ));
        }
        if block_size_bytes == 0 {
            return Err(Error::InvalidGeometry("a block size of 0".into()));
        }
        let plan = Plan {
            volume,
            index,
            offsets,
            replicas,
            runtime,
        };
        Ok(LiveSource {
            plan: Arc::new(plan),
            block_size_bytes,
            pace: (bytes_per_second > 0).then(|| Mutex::new(Pace::new(bytes_per_second))),
            cursors: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        })
    }

    /// A cursor handing out `pos` next: one reading already, or a new one
    /// whose thread reads from `pos` to the end of its data block.
    fn cursor_at(&self, pos: u64) -> Result<Cursor> {
        let mut cursors = self.cursors.lock();
        if let Some(i) = cursors.iter().position(|c| c.next == pos) {
            return Ok(cursors.swap_remove(i));
        }
        drop(cursors);
        let len = self.plan.index.header().data_len_bytes;
        let end = ((pos / self.block_size_bytes + 1) * self.block_size_bytes).min(len);
        let (runs_to, runs) = std::sync::mpsc::sync_channel(RUNS_AHEAD);
        let plan = Arc::clone(&self.plan);
        let block_start = pos / self.block_size_bytes * self.block_size_bytes;
        // The start of the encoder's column holding `at` or, with `up`, the
        // next column's.
        let column_at = move |at: u64, up: bool| {
            let columns = (at - block_start) / ENCODE_COLUMN_BYTES as u64 + u64::from(up);
            block_start + columns * ENCODE_COLUMN_BYTES as u64
        };
        std::thread::Builder::new()
            .name("seal-read-ahead".into())
            .spawn(move || {
                let mut at = pos;
                while at < end {
                    let column_end = column_at(at, true).min(end);
                    let run = plan.read_run(at, column_end);
                    if let Ok((start, bytes)) = &run {
                        let run_end = start + bytes.len() as u64;
                        // On from the first column this run does not hold
                        // whole (the small needle there is read again), or
                        // from where a gap in the source or a large needle
                        // ends it.
                        let next = column_at(run_end, false);
                        at = if run_end >= end {
                            end
                        } else if run_end >= column_end
                            && plan
                                .needle_len_at(next)
                                .is_ok_and(|len| len <= REREAD_BYTES_MAX)
                        {
                            next
                        } else {
                            run_end
                        };
                    }
                    let failed = run.is_err();
                    // The cursor is gone (the encoding ended): stop.
                    if runs_to.send(run).is_err() || failed {
                        return;
                    }
                }
            })?;
        Ok(Cursor {
            next: pos,
            end,
            pending: Bytes::new(),
            runs,
        })
    }

    fn keep_cursor(&self, cursor: Cursor) {
        if cursor.next >= cursor.end {
            return;
        }
        let mut cursors = self.cursors.lock();
        if cursors.len() >= CURSORS_MAX {
            cursors.remove(0);
        }
        cursors.push(cursor);
    }

    /// The `len` warm bytes at `offset`: a slice of one run's buffer, or,
    /// where a gap in the source's data file ended a run inside the
    /// column, gathered from two.
    fn column(&self, offset: u64, len: usize) -> Result<Bytes> {
        // Paced as the encoder takes the bytes: reading ahead is bounded
        // by the cursors.
        if let Some(pace) = &self.pace {
            pace.lock().take_blocking(len as u64);
        }
        let mut cursor = self.cursor_at(offset)?;
        let mut gathered = BytesMut::new();
        let column = loop {
            let want = len - gathered.len();
            if cursor.pending.len() >= want {
                let piece = cursor.pending.split_to(want);
                cursor.next += want as u64;
                if gathered.is_empty() {
                    break piece;
                }
                gathered.extend_from_slice(&piece);
                break gathered.freeze();
            }
            if cursor.pending.is_empty() && cursor.next >= cursor.end {
                cursor = self.cursor_at(cursor.next)?;
                continue;
            }
            let (start, run) = cursor
                .runs
                .recv()
                .map_err(|_| io::Error::other("the source's read-ahead stopped"))??;
            if start > cursor.next {
                // The run goes on where the last one stopped.
                gathered.extend_from_slice(&cursor.pending);
                cursor.next += cursor.pending.len() as u64;
            }
            // A run starts at the needle holding the next byte, which the
            // last run may have held too.
            let skip = cursor
                .next
                .checked_sub(start)
                .and_then(|skip| usize::try_from(skip).ok())
                .filter(|skip| *skip <= run.len())
                .ok_or_else(|| io::Error::other("the source's read-ahead lost its place"))?;
            cursor.pending = run.slice(skip..);
        };
        self.keep_cursor(cursor);
        Ok(column)
    }
}

impl Plan {
    fn entry(&self, i: u64) -> Result<(IndexEntry, u64)> {
        let entry = self.index.entry(i)?;
        let mut offset = [0u8; 8];
        self.offsets.read_exact_at(&mut offset, i * 8)?;
        Ok((entry, u64::from_le_bytes(offset)))
    }

    /// The length of the needle holding warm byte `pos`.
    fn needle_len_at(&self, pos: u64) -> Result<u64> {
        let entry = self.index.entry(self.entry_at(pos)?)?;
        Ok(u64::from(entry.size_bytes))
    }

    /// The index of the needle holding warm byte `pos`.
    fn entry_at(&self, pos: u64) -> Result<u64> {
        let (mut low, mut high) = (0, self.index.header().entry_count);
        // The last entry whose offset is at most `pos`.
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.index.entry(mid)?.offset <= pos {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }

    /// Verified warm bytes from the start of the needle holding `pos`
    /// through at least `end`, or up to a gap in the source's data file: a
    /// run of needles contiguous there, read at once.
    fn read_run(&self, pos: u64, end: u64) -> Result<(u64, Bytes)> {
        let count = self.index.header().entry_count;
        let mut i = self.entry_at(pos)?;
        let mut run = vec![self.entry(i)?];
        let mut run_len = u64::from(run[0].0.size_bytes);
        while i + 1 < count {
            let (last, last_hot) = run[run.len() - 1];
            if last.offset + u64::from(last.size_bytes) >= end {
                break;
            }
            let (next, next_hot) = self.entry(i + 1)?;
            if next_hot != last_hot + u64::from(last.size_bytes) {
                break;
            }
            run.push((next, next_hot));
            run_len += u64::from(next.size_bytes);
            i += 1;
        }
        let (run_start, first_hot) = (run[0].0.offset, run[0].1);
        let fetched = self
            .runtime
            .block_on(self.replicas[0].read_volume_file_range(
                self.volume,
                VolumeFile::Data,
                first_hot,
                run_len,
            ))
            .map_err(|e| io::Error::other(format!("reading the source replica: {e}")))?;
        // Checked in place: a needle that fails is overwritten by a good
        // copy of the same size from elsewhere.
        let mut verified = BytesMut::from(fetched);
        for (entry, hot) in run {
            let at = (hot - first_hot) as usize;
            let needle = &mut verified[at..at + entry.size_bytes as usize];
            if let Err(why) = check_needle(self.volume, entry, needle) {
                needle.copy_from_slice(&self.good_copy_elsewhere(entry, why)?);
            }
            needle[NEEDLE_FLAGS_OFFSET] &= !NEEDLE_FLAG_DELETED;
        }
        Ok((run_start, verified.freeze()))
    }

    /// Needle `entry` from the first other replica whose copy passes its
    /// checks; [`Error::DamagedNeedle`] if none does.
    fn good_copy_elsewhere(&self, entry: IndexEntry, why: String) -> Result<Vec<u8>> {
        tracing::warn!(volume = self.volume, key = %haystack::api::format_key(entry.key),
            why = %why, "a needle failed its check on the source replica; trying the others");
        let mut whys = vec![format!("{}: {why}", self.replicas[0].base_url())];
        for replica in &self.replicas[1..] {
            let copy = self
                .runtime
                .block_on(replica.raw_needle(self.volume, entry.key))
                .map_err(|e| e.to_string())
                .and_then(|raw| check_needle(self.volume, entry, &raw).map(|()| raw));
            match copy {
                Ok(raw) => return Ok(raw),
                Err(why) => whys.push(format!("{}: {why}", replica.base_url())),
            }
        }
        Err(Error::DamagedNeedle {
            volume: self.volume,
            key: entry.key,
            why: format!("no replica has a good copy ({})", whys.join("; ")),
        })
    }
}

/// What [`encode_to_nodes`] encodes: a volume's data, and why a read of
/// it failed (with the needle or volume named).
pub(crate) trait EncodeSource: ColumnSource<Column = Bytes> {
    /// Why the last read failed, if it said.
    fn take_failure(&self) -> Option<Error>;
}

impl EncodeSource for LiveSource {
    fn take_failure(&self) -> Option<Error> {
        self.failure.lock().take()
    }
}

impl ColumnSource for LiveSource {
    type Column = Bytes;

    fn len_bytes(&self) -> u64 {
        self.plan.index.header().data_len_bytes
    }

    fn column(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        LiveSource::column(self, offset, len).map_err(|error| record_failure(&self.failure, error))
    }
}

/// Keeps `error` as the reason a read of an [`EncodeSource`] failed, and
/// gives the encoder its message.
pub(crate) fn record_failure(failure: &Mutex<Option<Error>>, error: Error) -> io::Error {
    let message = error.to_string();
    *failure.lock() = Some(error);
    io::Error::other(message)
}

/// Checks one needle as a replica gave it: every check of the hot tier's
/// own reads, and the key and size the plan expects there.
fn check_needle(volume: u32, entry: IndexEntry, raw: &[u8]) -> std::result::Result<(), String> {
    check_needle_copy(raw, volume, entry.key, u64::from(entry.size_bytes))
        .map_err(|e| e.to_string())
}

/// One block's bytes on their way to its node: a bounded queue feeding the
/// block's `PUT`. Dropped unfinished, it fails the upload (the node keeps
/// nothing). A block no node wants (`discard`) is encoded and dropped.
struct BlockSink {
    queue: Option<mpsc::Sender<io::Result<Bytes>>>,
    buf: BytesMut,
    discard: bool,
}

impl BlockSink {
    fn send(&mut self) -> io::Result<()> {
        if self.discard {
            self.buf.clear();
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.send_chunk(chunk)
    }

    fn send_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        let sent = match &self.queue {
            Some(queue) => queue.blocking_send(Ok(chunk)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the block's upload ended early",
            ));
        }
        Ok(())
    }

    /// Sends what is buffered and ends the body.
    fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.queue = None;
        Ok(())
    }
}

impl ColumnSink<Bytes> for BlockSink {
    fn data(&mut self, column: Bytes) -> io::Result<()> {
        if self.discard {
            return Ok(());
        }
        // What is buffered (the header) goes first; the column as it is.
        self.send()?;
        self.send_chunk(column)
    }

    fn parity(&mut self, column: &[u8]) -> io::Result<()> {
        self.write_all(column)
    }
}

impl Write for BlockSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SINK_CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for BlockSink {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            let _ = queue.try_send(Err(io::Error::other("the seal stopped")));
        }
    }
}

/// The stripes an encoding writes: each with the base URL of each of its
/// blocks' nodes, in block order (`None`: the block is not sent).
pub(crate) type Targets = [(u64, Vec<Option<String>>)];

/// All of a volume's `stripes` (per stripe, the base URL of each block's
/// node), every block sent.
pub(crate) fn every_block(stripes: &[Vec<String>]) -> Vec<(u64, Vec<Option<String>>)> {
    stripes
        .iter()
        .zip(0u64..)
        .map(|(nodes, stripe)| (stripe, nodes.iter().cloned().map(Some).collect()))
        .collect()
}

/// Encodes the stripes of `source`, volume `volume`'s data, under
/// `geometry` that `stripes` names, and streams each block to its node,
/// one stripe after the other. Runs on a blocking thread; `runtime`
/// drives the uploads. The bytes sent.
pub(crate) fn encode_to_nodes(
    runtime: &Handle,
    peers: &reqwest::Client,
    volume: u32,
    source: &impl EncodeSource,
    generation: u64,
    geometry: Geometry,
    stripes: &Targets,
) -> Result<u64> {
    let layout = geometry.layout()?;
    let codec = Codec::new(geometry.rs_config()?)?;
    let mut encoder = StripeEncoder::new(&codec, ENCODE_COLUMN_BYTES, geometry.chunk_size_bytes)?;
    let mut sent = 0;
    for (stripe, nodes) in stripes {
        let stripe = *stripe;
        let headers: Vec<BlockHeader> = (0..geometry.blocks_per_stripe())
            .map(|index| BlockHeader::new(volume, generation, geometry, stripe, index))
            .collect::<Result<_>>()?;
        let mut sinks = Vec::with_capacity(headers.len());
        let mut uploads = Vec::with_capacity(headers.len());
        for (header, node) in headers.iter().zip(nodes) {
            let file_len = header
                .file_len_bytes()
                .ok_or_else(|| Error::InvalidGeometry("a block file over u64".into()))?;
            let Some(node) = node else {
                sinks.push(BlockSink {
                    queue: None,
                    buf: BytesMut::new(),
                    discard: true,
                });
                continue;
            };
            let (queue, chunks) = mpsc::channel(SINK_QUEUE);
            let body = futures::stream::unfold(chunks, |mut chunks| async move {
                chunks.recv().await.map(|chunk| (chunk, chunks))
            });
            let client = StorageClient::from_http(node, peers.clone());
            let block = header.block_index;
            let node = node.clone();
            uploads.push(runtime.spawn(async move {
                client
                    .put_block_body(volume, generation, stripe, block, file_len, body.boxed())
                    .await
                    .map_err(|e| format!("block {stripe}.{block} to {node}: {e}"))
            }));
            let mut sink = BlockSink {
                queue: Some(queue),
                buf: BytesMut::with_capacity(SINK_CHUNK_BYTES),
                discard: false,
            };
            sink.write_all(&header.encode())?;
            sinks.push(sink);
            sent += file_len;
        }
        let checksums = if layout.stripe_count() == 0 {
            headers
                .iter()
                .map(|_| BlockChecksums::compute(geometry.chunk_size_bytes, &[]))
                .collect::<coding::Result<Vec<_>>>()?
        } else {
            match encoder.encode_stripe_columns(&layout, source, stripe, &mut sinks) {
                Ok(checksums) => checksums,
                Err(error) => return Err(source.take_failure().unwrap_or(error.into())),
            }
        };
        for ((mut sink, checksums), header) in sinks.into_iter().zip(checksums).zip(&headers) {
            header.check_checksums(&checksums)?;
            sink.write_all(&checksums.encode())?;
            sink.finish()?;
        }
        for (written, upload) in uploads.into_iter().enumerate() {
            runtime
                .block_on(upload)
                .map_err(|e| io::Error::other(format!("block upload: {e}")))?
                .map_err(io::Error::other)?;
            haystack::failpoint::pause_at(&format!("seal-after-blocks-{}", written + 1));
        }
    }
    Ok(sent)
}
