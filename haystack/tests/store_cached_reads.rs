//! The store node's two read passes, end to end: a needle read from the page cache on the
//! async task (`Storage::try_read_at_cached`) and the blocking reads of what is not cached,
//! which for one read batch run in parallel groups.
//!
//! The node runs on a loopback port over a storage backend that wraps the real one: it counts
//! the cached and blocking reads of the data files, can refuse every cached read ("nothing is
//! in the page cache") and can make every blocking read sleep (a disk seek).

mod node_common;

mod batch_common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use haystack::api::{CRC32_HEADER, ErrorBody};
use haystack::batch::{BATCH_CONTENT_TYPE, BatchAnswer, BatchRead, decode_answers, encode_request};
use haystack::file::FileStorage;
use haystack::service::{StoreNodeConfig, StoreNodeState};
use haystack::{FileBackend, Storage, StorageBackend, Store, Volume, VolumeOptions};

use batch_common::{blob, bounded, cookie_for, found, read};
use node_common::Served;

/// What the backend does and what it saw, shared by every file it opened.
#[derive(Default)]
struct Probe {
    /// Answer every cached read "not cached".
    never_cached: AtomicBool,
    /// While set, each blocking read of a data file waits until this many
    /// have arrived (or a short bound has passed): reads that run in
    /// parallel all arrive, serial ones never do.
    gather: AtomicU64,
    arrived: parking_lot::Mutex<u64>,
    all_arrived: parking_lot::Condvar,
    /// Blocking reads of data files in flight now, and at most.
    in_flight: AtomicU64,
    in_flight_max: AtomicU64,
    cached_tries: AtomicU64,
    cached_hits: AtomicU64,
    blocking_reads: AtomicU64,
    /// The longest read of a data file, blocking or cached.
    longest_read: AtomicU64,
}

impl Probe {
    /// Waits, while [`Probe::gather`] is set, until that many blocking reads
    /// have arrived; gives up after a bound (and stops gathering) so that a
    /// serial read path fails its test instead of hanging.
    fn gather(&self) {
        let target = self.gather.load(Ordering::SeqCst);
        if target == 0 {
            return;
        }
        let mut arrived = self.arrived.lock();
        *arrived += 1;
        self.all_arrived.notify_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while *arrived < target && self.gather.load(Ordering::SeqCst) != 0 {
            if self
                .all_arrived
                .wait_until(&mut arrived, deadline)
                .timed_out()
            {
                self.gather.store(0, Ordering::SeqCst);
                self.all_arrived.notify_all();
            }
        }
    }
}

struct ProbedStorage {
    inner: Arc<dyn Storage>,
    probe: Arc<Probe>,
    data_file: bool,
}

impl Storage for ProbedStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.data_file {
            self.probe.blocking_reads.fetch_add(1, Ordering::SeqCst);
            self.probe
                .longest_read
                .fetch_max(buf.len() as u64, Ordering::SeqCst);
            let now = self.probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.probe.in_flight_max.fetch_max(now, Ordering::SeqCst);
            self.probe.gather();
            let read = self.inner.read_at(buf, offset);
            self.probe.in_flight.fetch_sub(1, Ordering::SeqCst);
            return read;
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.inner.write_vectored_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn try_read_at_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.probe.cached_tries.fetch_add(1, Ordering::SeqCst);
        if self.data_file {
            self.probe
                .longest_read
                .fetch_max(buf.len() as u64, Ordering::SeqCst);
        }
        if self.probe.never_cached.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let hit = self.inner.try_read_at_cached(buf, offset)?;
        if hit {
            self.probe.cached_hits.fetch_add(1, Ordering::SeqCst);
        }
        Ok(hit)
    }
}

struct ProbedBackend(Arc<Probe>);

impl StorageBackend for ProbedBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ProbedStorage {
            inner: FileBackend.open(path, create)?,
            probe: self.0.clone(),
            data_file: path.extension().is_some_and(|e| e == "data"),
        }))
    }
}

/// Whether this kernel and filesystem serve `preadv2(RWF_NOWAIT)` from the page cache: a
/// range just read is then a cached hit.
fn nowait_reads_work(dir: &Path) -> bool {
    let path = dir.join("probe");
    std::fs::write(&path, vec![7u8; 8192]).expect("write probe");
    let storage = FileStorage::new(std::fs::File::open(&path).expect("open probe"));
    let mut buf = vec![0u8; 8192];
    storage.read_at(&mut buf, 0).expect("read probe");
    let hit = storage.try_read_at_cached(&mut buf, 0).expect("try probe");
    std::fs::remove_file(&path).expect("remove probe");
    hit && cfg!(target_os = "linux")
}

/// Set to `1` to let a test that needs page-cache reads (`RWF_NOWAIT`) skip
/// where the kernel or filesystem has none (the fallback is tested in
/// `haystack/src/file.rs`).
const NOWAIT_SKIP_VARIABLE: &str = "HAYLOFT_ALLOW_NOWAIT_SKIP";

/// Whether the test `test` can check page-cache reads here: true where
/// `RWF_NOWAIT` works; false (saying so) where it does not and
/// [`NOWAIT_SKIP_VARIABLE`] is `1`; a failure otherwise.
fn needs_nowait_reads(dir: &Path, test: &str) -> bool {
    if nowait_reads_work(dir) {
        return true;
    }
    assert!(
        std::env::var(NOWAIT_SKIP_VARIABLE).is_ok_and(|v| v == "1"),
        "{test} needs preadv2(RWF_NOWAIT) from the page cache, which this kernel or filesystem \
         does not serve; set {NOWAIT_SKIP_VARIABLE}=1 to skip it"
    );
    eprintln!("SKIPPED {test}: no RWF_NOWAIT reads here ({NOWAIT_SKIP_VARIABLE}=1)");
    false
}

/// A store node on `127.0.0.1:0` over a [`ProbedBackend`].
struct Node {
    url: String,
    http: reqwest::Client,
    state: StoreNodeState,
    probe: Arc<Probe>,
    served: Served,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(io_concurrency: usize) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let probe = Arc::new(Probe::default());
        let backend = Arc::new(ProbedBackend(probe.clone()));
        let store = Store::open_with_backend(dir.path(), VolumeOptions::default(), backend)
            .expect("open store");
        let mut config = StoreNodeConfig::new(dir.path());
        config.io_concurrency = io_concurrency;
        config.request_timeout_ms = 20_000;
        config.server.shutdown_grace_ms = 2_000;
        let state = StoreNodeState::new(Arc::new(store), config.clone()).expect("state");
        let served = node_common::serve(&state, config.clone()).await;
        let url = served.url.clone();
        Node {
            url,
            http: reqwest::Client::new(),
            state,
            probe,
            served,
            dir,
        }
    }

    async fn stop(self) {
        self.served.stop().await;
    }

    fn volume(&self, id: u32) -> Arc<Volume> {
        self.state.store().create_volume(id).expect("create volume")
    }

    async fn read_batch(&self, reads: &[BatchRead]) -> Vec<BatchAnswer> {
        let r = self
            .http
            .post(format!("{}/needles/read-batch", self.url))
            .header("content-type", BATCH_CONTENT_TYPE)
            .body(encode_request(reads))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 200);
        decode_answers(r.bytes().await.expect("body"), reads).expect("well-formed answer")
    }

    /// `GET` (or `HEAD`) of a needle: status, CRC header, body.
    async fn get(&self, head: bool, volume: u32, key: u64, cookie: u32) -> Get {
        let url = format!(
            "{}/volumes/{volume}/needles/{key:x}?cookie={cookie:08x}",
            self.url
        );
        let request = if head {
            self.http.head(url)
        } else {
            self.http.get(url)
        };
        let r = request.send().await.expect("get");
        let status = r.status().as_u16();
        let crc32 = r
            .headers()
            .get(CRC32_HEADER)
            .map(|v| v.to_str().expect("ascii").parse().expect("decimal"));
        let length = r
            .headers()
            .get("content-length")
            .map(|v| v.to_str().expect("ascii").parse().expect("decimal"));
        let error = r
            .headers()
            .get("x-hayloft-error")
            .map(|v| v.to_str().expect("ascii").to_string());
        let body = r.bytes().await.expect("body");
        if !head && status != 200 {
            let parsed: ErrorBody = serde_json::from_slice(&body).expect("JSON error");
            assert_eq!(Some(&parsed.error), error.as_ref());
        }
        Get {
            status,
            crc32,
            length,
            error,
            body,
        }
    }

    fn counts(&self) -> (u64, u64, u64) {
        let p = &self.probe;
        (
            p.cached_tries.load(Ordering::SeqCst),
            p.cached_hits.load(Ordering::SeqCst),
            p.blocking_reads.load(Ordering::SeqCst),
        )
    }
}

#[derive(Debug, PartialEq)]
struct Get {
    status: u16,
    crc32: Option<u32>,
    length: Option<u64>,
    error: Option<String>,
    body: Bytes,
}

/// Needles of volume 1 for the answer checks: small, large (over 64 KiB on disk), one whose
/// data is flipped on disk, one deleted. Returns the data of keys 1..=4.
fn fill(node: &Node) -> Vec<Vec<u8>> {
    let v = node.volume(1);
    let data = vec![
        blob(1000, 1),
        blob(100_000, 2),
        vec![0x5a; 3000],
        blob(10, 4),
    ];
    let mut corrupt = None;
    for (i, d) in data.iter().enumerate() {
        let key = i as u64 + 1;
        let at = v
            .append_needle(key, cookie_for(key), "t/x", d)
            .expect("append");
        if key == 3 {
            corrupt = Some(at);
        }
    }
    v.delete_needle(4, cookie_for(4)).expect("delete");
    // Flip one byte in the middle of needle 3's data, behind the engine's back (through the
    // page cache, so the cached read sees it too).
    let at = corrupt.expect("needle 3");
    let path = v.data_path();
    let mut bytes = std::fs::read(&path).expect("read data file");
    let at = (at.offset + at.size_bytes / 2) as usize;
    assert_eq!(bytes[at], 0x5a, "offset points into the data");
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write data file");
    data
}

/// Every kind of answer, through a batch, `GET` and `HEAD`: the same whichever pass reads.
async fn check_answers(node: &Node, data: &[Vec<u8>]) {
    let wrong_cookie = BatchRead {
        cookie: 1,
        ..read(1, 1, 4096)
    };
    let head = BatchRead {
        head: true,
        ..read(1, 1, 4096)
    };
    let reads = [
        read(1, 1, 4096),
        read(1, 2, 200_000),
        read(1, 2, 100),
        read(1, 3, 4096),
        read(1, 4, 4096),
        read(1, 9, 4096),
        wrong_cookie,
        head,
        read(7, 1, 4096),
    ];
    let answers = node.read_batch(&reads).await;
    assert_eq!(answers[0], found("t/x", &data[0], false));
    assert_eq!(answers[1], found("t/x", &data[1], false));
    assert_eq!(answers[2], BatchAnswer::TooLarge { len: 100_000 });
    assert!(
        matches!(&answers[3], BatchAnswer::Corrupt(m) if m.contains("corrupt")),
        "{:?}",
        answers[3]
    );
    assert_eq!(answers[4..7], vec![BatchAnswer::NotFound; 3]);
    assert_eq!(answers[7], found("t/x", &data[0], true));
    assert!(matches!(&answers[8], BatchAnswer::UnknownVolume(_)));

    for head in [false, true] {
        for key in [1, 2] {
            let d = &data[key as usize - 1];
            let get = node.get(head, 1, key, cookie_for(key)).await;
            assert_eq!(get.status, 200);
            assert_eq!(get.crc32, Some(crc32fast::hash(d)));
            assert_eq!(get.length, Some(d.len() as u64));
            assert_eq!(&get.body[..], if head { &[][..] } else { &d[..] });
        }
        let corrupt = node.get(head, 1, 3, cookie_for(3)).await;
        assert_eq!(
            (corrupt.status, corrupt.error.as_deref(), corrupt.crc32),
            (500, Some("corrupt"), None)
        );
        let missing = node.get(head, 1, 9, cookie_for(9)).await;
        assert_eq!(
            (missing.status, missing.error.as_deref()),
            (404, Some("not_found"))
        );
        assert_eq!(node.get(head, 1, 1, 1).await, missing, "wrong cookie");
        assert_eq!(
            node.get(head, 1, 4, cookie_for(4)).await,
            missing,
            "deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncached_reads_answer_through_the_blocking_path() {
    bounded(async {
        let node = Node::start(4).await;
        node.probe.never_cached.store(true, Ordering::SeqCst);
        let data = fill(&node);
        let before = node.counts();
        check_answers(&node, &data).await;
        let (tries, hits, blocking) = node.counts();
        assert!(tries > before.0, "small needles were tried from the cache");
        assert_eq!(hits, 0);
        assert!(blocking > before.2, "and then read on the blocking pool");
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_answer_inline_with_the_same_checks() {
    bounded(async {
        let node = Node::start(4).await;
        if !needs_nowait_reads(
            node.dir.path(),
            "cached_reads_answer_inline_with_the_same_checks",
        ) {
            return node.stop().await;
        }
        let data = fill(&node);
        // Twice: the first round reads everything at least once, into the page cache.
        check_answers(&node, &data).await;
        let before = node.counts();
        check_answers(&node, &data).await;
        let (tries, hits, blocking) = node.counts();
        assert!(tries > before.0);
        // Every small needle came from the page cache: the corrupt one is refused inline
        // as on the blocking path. Only needle 2 (100 kB) is read blocking, by its three
        // batch entries and GETs: 1 + 2 (GET, HEAD) + the header-only `too_large` entry,
        // which the first pass reads from the cache.
        assert!(hits > before.1);
        assert_eq!(blocking - before.2, 3, "only the large needle reads block");
        // A batch of cached small needles takes no blocking read at all.
        let before = node.counts();
        let answers = node.read_batch(&[read(1, 1, 4096); 10]).await;
        assert_eq!(answers, vec![found("t/x", &data[0], false); 10]);
        assert_eq!(node.counts().2, before.2);
        // Nor does one of 64 KiB BLOBs (the largest a router batches), though with the
        // longest content type their needles are over 64 KiB on disk.
        let content_type = "t".repeat(255);
        let big = blob(64 << 10, 5);
        node.state
            .store()
            .volume(1)
            .expect("volume 1")
            .append_needle(5, cookie_for(5), &content_type, &big)
            .expect("append");
        node.read_batch(&[read(1, 5, 64 << 10)]).await;
        let before = node.counts();
        let answers = node.read_batch(&[read(1, 5, 64 << 10); 4]).await;
        assert_eq!(answers, vec![found(&content_type, &big, false); 4]);
        assert_eq!(
            node.counts().2,
            before.2,
            "a cached 64 KiB BLOB reads inline"
        );
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_entry_reads_only_the_header_and_content_type() {
    bounded(async {
        for never_cached in [true, false] {
            let node = Node::start(4).await;
            node.probe
                .never_cached
                .store(never_cached, Ordering::SeqCst);
            let data = fill(&node);
            let large = blob(4 << 20, 6);
            let content_type = "video/mp4";
            node.state
                .store()
                .volume(1)
                .expect("volume 1")
                .append_needle(6, cookie_for(6), content_type, &large)
                .expect("append");
            node.probe.longest_read.store(0, Ordering::SeqCst);
            let head = |key| BatchRead {
                head: true,
                ..read(1, key, u32::MAX)
            };
            let wrong_cookie = BatchRead {
                cookie: 1,
                ..head(6)
            };
            let answers = node
                .read_batch(&[head(6), head(3), head(4), wrong_cookie])
                .await;
            // Length and content type, no data and no CRC: the data is not read, so the
            // flipped byte of needle 3 goes unnoticed, as it does not for a GET.
            assert_eq!(answers[0], found(content_type, &large, true));
            assert_eq!(answers[1], found("t/x", &data[2], true));
            assert_eq!(answers[2..], [BatchAnswer::NotFound, BatchAnswer::NotFound]);
            let longest = node.probe.longest_read.load(Ordering::SeqCst);
            assert!(
                longest > 0 && longest <= 24 + 255,
                "longest read {longest} bytes"
            );
            assert!(matches!(
                node.read_batch(&[read(1, 3, 4096)]).await[0],
                BatchAnswer::Corrupt(_)
            ));
            node.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_reads_of_one_batch_run_in_parallel() {
    bounded(async {
        const ENTRIES: u64 = 16;
        // A batch's cold reads go to the blocking pool in at most 8 groups.
        const GROUPS: u64 = 8;
        let node = Node::start(64).await;
        let v = node.volume(1);
        for key in 1..=ENTRIES {
            v.append_needle(key, cookie_for(key), "", &blob(500, key as u8))
                .expect("append");
        }
        node.probe.never_cached.store(true, Ordering::SeqCst);
        // Each cold read waits for the others of its round: only reads that
        // run in parallel all get there.
        node.probe.gather.store(GROUPS, Ordering::SeqCst);
        let reads: Vec<_> = (1..=ENTRIES).map(|k| read(1, k, 4096)).collect();
        let before = node.counts();
        let answers = node.read_batch(&reads).await;
        for (r, a) in reads.iter().zip(&answers) {
            assert_eq!(*a, found("", &blob(500, r.key as u8), false));
        }
        assert_eq!(
            node.counts().2 - before.2,
            ENTRIES,
            "every read went to the disk"
        );
        assert_eq!(
            node.probe.gather.load(Ordering::SeqCst),
            GROUPS,
            "the first {GROUPS} cold reads were all in flight at once"
        );
        assert_eq!(
            node.probe.in_flight_max.load(Ordering::SeqCst),
            GROUPS,
            "and never more than one group each"
        );
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_budget_of_a_batch_applies_in_request_order() {
    bounded(async {
        const MIB: usize = 1 << 20;
        let node = Node::start(64).await;
        let v = node.volume(1);
        for key in 1..=8 {
            v.append_needle(key, cookie_for(key), "", &blob(3 * MIB, key as u8))
                .expect("append");
        }
        v.append_needle(9, cookie_for(9), "", &blob(100, 9))
            .expect("append");
        let big = |key| read(1, key, 4 * MIB as u32);
        let head = BatchRead {
            head: true,
            ..big(8)
        };
        // 5 x 3 MiB fit in the 16 MiB of one answer; the sixth would not, nor the seventh;
        // the small needle after them still does, and a head entry carries no data.
        let reads = [
            big(1),
            big(2),
            big(3),
            big(4),
            big(5),
            big(6),
            head,
            big(7),
            read(1, 9, 4096),
        ];
        let answers = node.read_batch(&reads).await;
        for key in 1..=5 {
            assert_eq!(
                answers[key - 1],
                found("", &blob(3 * MIB, key as u8), false),
                "key {key}"
            );
        }
        assert_eq!(
            answers[5],
            BatchAnswer::TooLarge {
                len: 3 * MIB as u64
            }
        );
        assert_eq!(answers[6], found("", &blob(3 * MIB, 8), true));
        assert_eq!(
            answers[7],
            BatchAnswer::TooLarge {
                len: 3 * MIB as u64
            }
        );
        assert_eq!(answers[8], found("", &blob(100, 9), false));
        node.stop().await;
    })
    .await;
}
