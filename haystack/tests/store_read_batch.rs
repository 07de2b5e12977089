//! End-to-end tests of `POST /needles/read-batch`: the real store node on a loopback port in
//! a temporary directory, driven over HTTP with bodies of [`haystack::batch`].
//!
//! Every test runs under `batch_common::TEST_DEADLINE` and stops its node.

mod node_common;

mod batch_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haystack::api::{CRC32_HEADER, ErrorBody};
use haystack::batch::{
    BATCH_CONTENT_TYPE, BatchAnswer, BatchRead, MAX_BATCH_ENTRIES, decode_answers, encode_request,
    request_len,
};
use haystack::client::{BatchOptions, BatchStats, ClientError, NeedleReader, StoreAddress};
use haystack::service::{StoreNodeConfig, StoreNodeState};
use haystack::{Volume, VolumeStatus};
use tokio::net::TcpListener;

use batch_common::{blob, bounded, cookie_for, found, read};
use node_common::Served;

/// A store node serving on `127.0.0.1:0` out of a temporary directory.
struct Node {
    url: String,
    http: reqwest::Client,
    state: StoreNodeState,
    served: Served,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = StoreNodeConfig::new(dir.path());
        config.max_needle_bytes = 256 * 1024;
        config.io_concurrency = 4;
        config.request_timeout_ms = 10_000;
        config.body_idle_timeout_ms = 500;
        config.server.shutdown_grace_ms = 2_000;
        let state = StoreNodeState::open(config.clone(), Default::default())
            .await
            .expect("open store");
        let served = node_common::serve(&state, config.clone()).await;
        let url = served.url.clone();
        Node {
            url,
            http: reqwest::Client::new(),
            state,
            served,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.served.stop().await;
    }

    /// Posts a raw batch body; returns status, headers but `date`, and body.
    async fn post(&self, body: impl Into<reqwest::Body>) -> Answer {
        let r = self
            .http
            .post(format!("{}/needles/read-batch", self.url))
            .header("content-type", BATCH_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: r.bytes().await.expect("body"),
        }
    }

    /// Posts `reads` and decodes the `200` answer.
    async fn read_batch(&self, reads: &[BatchRead]) -> Vec<BatchAnswer> {
        let answer = self.post(encode_request(reads)).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.header("content-type"), Some(BATCH_CONTENT_TYPE));
        // The answer is sent in chunks, but with its length, not chunked-encoded.
        let len = answer.body.len().to_string();
        assert_eq!(answer.header("content-length"), Some(len.as_str()));
        assert_eq!(answer.header("transfer-encoding"), None);
        decode_answers(answer.body, reads).expect("well-formed answer")
    }

    fn statuses(&self) -> Vec<VolumeStatus> {
        let mut all: Vec<_> = self
            .state
            .store()
            .volumes()
            .iter()
            .map(|v| v.status())
            .collect();
        all.sort_by_key(|s| s.volume_id);
        all
    }
}

#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_answers_every_kind_of_entry() {
    bounded(async {
        let node = Node::start().await;
        let store = node.state.store();
        let v1 = store.create_volume(1).expect("create 1");
        let v2 = store.create_volume(2).expect("create 2");
        let small = blob(1000, 1);
        let large = blob(5000, 3);
        let corrupt = vec![0x5a_u8; 2000];
        let other = blob(300, 7);
        let put = |v: &Volume, key: u64, ct: &str, data: &[u8]| {
            v.append_needle(key, cookie_for(key), ct, data)
                .expect("append")
        };
        put(&v1, 1, "text/plain", &small);
        put(&v1, 2, "", &blob(10, 2));
        put(&v1, 3, "application/x-big", &large);
        let bad = put(&v1, 4, "t/x", &corrupt);
        put(&v1, 5, "image/gif", &blob(77, 5));
        put(&v2, 1, "image/png", &other);
        v1.delete_needle(2, cookie_for(2)).expect("delete");

        // Flip one byte in the middle of needle 4's data, behind the engine's back.
        let path = v1.data_path();
        let mut bytes = std::fs::read(&path).expect("read data file");
        let at = (bad.offset + bad.size_bytes / 2) as usize;
        assert_eq!(bytes[at], 0x5a, "offset points into the data");
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write data file");

        let wrong_cookie = |mut r: BatchRead| {
            r.cookie ^= 1;
            r
        };
        let head = |mut r: BatchRead| {
            r.head = true;
            r
        };
        let reads = [
            read(1, 1, 4096),
            read(2, 1, 4096),
            read(1, 99, 4096),
            wrong_cookie(read(1, 1, 4096)),
            read(1, 2, 4096),
            read(9, 1, 4096),
            head(read(1, 5, 4096)),
            // Clearly too large by its on-disk size: only the header is read.
            read(1, 3, 4096),
            // Too large by a few bytes: read, then refused.
            read(1, 3, 4999),
            wrong_cookie(read(1, 3, 100)),
            read(1, 4, 4096),
            read(1, 3, 5000),
            head(read(1, 3, 100)),
            head(wrong_cookie(read(1, 5, 4096))),
        ];
        let answers = node.read_batch(&reads).await;
        assert_eq!(answers.len(), reads.len());
        assert_eq!(answers[0], found("text/plain", &small, false));
        assert_eq!(answers[1], found("image/png", &other, false));
        assert_eq!(answers[2], BatchAnswer::NotFound);
        assert_eq!(answers[3], BatchAnswer::NotFound);
        assert_eq!(answers[4], BatchAnswer::NotFound);
        assert!(
            matches!(&answers[5], BatchAnswer::UnknownVolume(m) if m.contains("unknown volume 9")),
            "{:?}",
            answers[5]
        );
        assert_eq!(answers[6], found("image/gif", &blob(77, 5), true));
        assert_eq!(answers[7], BatchAnswer::TooLarge { len: 5000 });
        assert_eq!(answers[8], BatchAnswer::TooLarge { len: 5000 });
        assert_eq!(answers[9], BatchAnswer::NotFound);
        assert!(
            matches!(&answers[10], BatchAnswer::Corrupt(m) if m.contains("corrupt")),
            "{:?}",
            answers[10]
        );
        assert_eq!(answers[11], found("application/x-big", &large, false));
        assert_eq!(answers[12], BatchAnswer::TooLarge { len: 5000 });
        assert_eq!(answers[13], BatchAnswer::NotFound);

        // The CRC is the one a plain GET sends.
        let get = node
            .http
            .get(format!(
                "{}/volumes/1/needles/1?cookie={:08x}",
                node.url,
                cookie_for(1)
            ))
            .send()
            .await
            .expect("get");
        let crc: u32 = get.headers()[CRC32_HEADER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("decimal");
        assert_eq!(crc, crc32fast::hash(&small));
        assert_eq!(&get.bytes().await.expect("body")[..], &small[..]);
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cookie_answers_byte_for_byte_like_a_missing_key() {
    bounded(async {
        let node = Node::start().await;
        let v = node.state.store().create_volume(1).expect("create");
        v.append_needle(5, cookie_for(5), "", &blob(64, 9))
            .expect("append");
        v.append_needle(6, cookie_for(6), "", &blob(9000, 9))
            .expect("append");
        let mut wrong = read(1, 5, 4096);
        wrong.cookie ^= 0x8000_0000;
        let missing = BatchRead { key: 7, ..wrong };
        let below = BatchRead { key: 1, ..wrong };
        let wrong_answer = node.post(encode_request(&[wrong])).await;
        assert_eq!(wrong_answer.status, 200);
        assert_eq!(wrong_answer, node.post(encode_request(&[missing])).await);
        assert_eq!(wrong_answer, node.post(encode_request(&[below])).await);
        // Also where a right cookie would be answered too_large without reading the data.
        let mut wrong_large = read(1, 6, 100);
        wrong_large.cookie ^= 1;
        let missing_large = BatchRead {
            key: 8,
            ..wrong_large
        };
        let answer = node.post(encode_request(&[wrong_large])).await;
        assert_eq!(answer, node.post(encode_request(&[missing_large])).await);
        assert_eq!(
            decode_answers(answer.body, &[wrong_large]).expect("decodes"),
            [BatchAnswer::NotFound]
        );
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_is_answered_in_request_order() {
    bounded(async {
        let node = Node::start().await;
        let v = node.state.store().create_volume(3).expect("create");
        let mut reads: Vec<_> = (1..=MAX_BATCH_ENTRIES as u64)
            .map(|k| {
                v.append_needle(k, cookie_for(k), "a/b", &blob(k as usize * 16, k as u8))
                    .expect("append");
                read(3, k, 4096)
            })
            .collect();
        reads.reverse();
        let answers = node.read_batch(&reads).await;
        for (r, a) in reads.iter().zip(&answers) {
            assert_eq!(
                *a,
                found("a/b", &blob(r.key as usize * 16, r.key as u8), false)
            );
        }
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_400_json_and_change_nothing() {
    bounded(async {
        let node = Node::start().await;
        let v = node.state.store().create_volume(1).expect("create");
        v.append_needle(1, cookie_for(1), "", &blob(100, 1))
            .expect("append");
        let before = node.statuses();
        let valid = encode_request(&[read(1, 1, 4096)]).to_vec();
        let full = encode_request(&vec![read(1, 1, 4096); MAX_BATCH_ENTRIES]).to_vec();

        let mut bad_magic = valid.clone();
        bad_magic[0] = b'X';
        let mut bad_version = valid.clone();
        bad_version[4] = 2;
        let mut unknown_flags = valid.clone();
        unknown_flags[16] = 0x80;
        let mut count_65 = full.clone();
        count_65[8..12].copy_from_slice(&65u32.to_le_bytes());
        let mut trailing = valid.clone();
        trailing.push(0);
        let mut oversized = full.clone();
        oversized.extend_from_slice(&[0; 24]);
        assert_eq!(oversized.len(), request_len(MAX_BATCH_ENTRIES + 1));
        let bodies: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("bad magic", bad_magic),
            ("bad version", bad_version),
            ("unknown flags", unknown_flags),
            ("0 entries", encode_request(&[]).to_vec()),
            ("count 65", count_65),
            (
                "65 entries",
                encode_request(&vec![read(1, 1, 4096); MAX_BATCH_ENTRIES + 1]).to_vec(),
            ),
            ("truncated", valid[..valid.len() - 1].to_vec()),
            ("truncated header", valid[..7].to_vec()),
            ("trailing bytes", trailing),
            ("oversized", oversized),
            ("oversized large", vec![0; 64 * 1024]),
        ];
        for (what, body) in bodies {
            let answer = node.post(body).await;
            assert_eq!(answer.status, 400, "{what}: {:?}", answer.body);
            assert_eq!(
                answer.header("content-type"),
                Some("application/json"),
                "{what}"
            );
            let parsed: ErrorBody = serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", answer.body));
            assert_eq!(parsed.error, "bad_request", "{what}");
        }
        // A body sent in chunks, without Content-Length, is bounded as it arrives.
        let chunks = futures::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1024]))),
        );
        let answer = node.post(reqwest::Body::wrap_stream(chunks)).await;
        assert_eq!(answer.status, 400, "{:?}", answer.body);

        // A GET is not a batch.
        let get = node
            .http
            .get(format!("{}/needles/read-batch", node.url))
            .send()
            .await
            .expect("get");
        assert_eq!(get.status().as_u16(), 405);

        assert_eq!(node.statuses(), before);
        assert_eq!(
            node.read_batch(&[read(1, 1, 4096)]).await,
            [found("", &blob(100, 1), false)]
        );
        node.stop().await;
    })
    .await;
}

/// The router's side: concurrent [`NeedleReader::read_batched`] calls for one node share
/// batches, and each caller gets the answer to its own read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_batches_and_each_gets_its_own_answer() {
    bounded(async {
        let node = Node::start().await;
        let volume = node.state.store().create_volume(1).expect("create");
        const KEYS: u64 = 300;
        for key in 1..=KEYS {
            let data = blob(key as usize * 7, key as u8);
            volume
                .append_needle(key, cookie_for(key), "application/x-test", &data)
                .expect("append");
        }
        let reader = NeedleReader::new(Duration::from_secs(2), Duration::from_secs(5), 16)
            .with_batching(BatchOptions {
                max_entries: 16,
                max_in_flight: 1,
                stall: Duration::from_secs(10),
                queue_capacity: 64,
                timeout: Duration::from_secs(10),
            });
        let address = StoreAddress::parse(&node.url).expect("address");
        // Every key read by several tasks at once; every fifth key with a wrong cookie,
        // every seventh over the entry's size limit.
        let reads = (0..4 * KEYS).map(|i| {
            let key = i % KEYS + 1;
            let mut r = read(1, key, 2000);
            if i % 5 == 0 {
                r.cookie ^= 0x8000_0000;
            }
            let (reader, address) = (reader.clone(), address.clone());
            async move { (r, reader.read_batched(&address, r).await) }
        });
        let answers = futures::future::join_all(reads).await;
        for (r, answer) in answers {
            let answer = answer.expect("batched read");
            let data = blob(r.key as usize * 7, r.key as u8);
            let expected = if r.cookie != cookie_for(r.key) {
                BatchAnswer::NotFound
            } else if data.len() > 2000 {
                BatchAnswer::TooLarge {
                    len: data.len() as u64,
                }
            } else {
                found("application/x-test", &data, false)
            };
            assert_eq!(answer, expected, "key {}", r.key);
        }
        let stats = reader.batch_stats();
        assert_eq!(stats.reads, 4 * KEYS, "every read went out in a batch");
        assert!(
            stats.batches < stats.reads / 2,
            "concurrent reads shared batches: {stats:?}"
        );
        node.stop().await;
    })
    .await;
}

/// Reads of a node that is gone fail, each with a transport error; none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_stopped_node_fail_and_do_not_hang() {
    bounded(async {
        let node = Node::start().await;
        let address = StoreAddress::parse(&node.url).expect("address");
        node.stop().await;
        let reader = NeedleReader::new(Duration::from_secs(1), Duration::from_secs(1), 4)
            .with_batching(BatchOptions {
                timeout: Duration::from_secs(2),
                ..BatchOptions::default()
            });
        let reads = (1..=20u64).map(|key| {
            let (reader, address) = (reader.clone(), address.clone());
            async move { reader.read_batched(&address, read(1, key, 4096)).await }
        });
        for answer in futures::future::join_all(reads).await {
            let error = answer.expect_err("nothing listens there");
            assert!(
                matches!(error, ClientError::Connection { .. }),
                "a transport error: {error:?}"
            );
        }
    })
    .await;
}

/// Waits (at most 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// While a node's batch in flight is slow, the next batch leaves beside it after the stall
/// time, up to `max_in_flight` batches; reads beyond that wait for a batch to end.
///
/// Every step waits for an event (a batch counted, a read answered); the stall is checked
/// as a lower bound on when the next batch left, and the limit by a window in which nothing
/// may leave (the node never answers, so a slow machine cannot free a slot early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_lets_the_next_leave_after_the_stall_up_to_the_limit() {
    bounded(async {
        const STALL: Duration = Duration::from_millis(300);
        // A node that accepts connections and never answers; the test may close them.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = StoreAddress::parse(&listener.local_addr().expect("addr").to_string())
            .expect("address");
        let held = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let hold = tokio::spawn({
            let held = held.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    held.lock().push(socket);
                }
            }
        });
        let reader = NeedleReader::new(Duration::from_secs(2), Duration::from_secs(5), 8)
            .with_batching(BatchOptions {
                max_entries: 16,
                max_in_flight: 3,
                stall: STALL,
                queue_capacity: 64,
                timeout: Duration::from_secs(30),
            });
        let spawn_read = |key: u64| {
            let (reader, address) = (reader.clone(), address.clone());
            tokio::spawn(async move { reader.read_batched(&address, read(1, key, 4096)).await })
        };
        let batches = || reader.batch_stats().batches;

        let first = spawn_read(1);
        until("a read on an idle node leaves", || batches() == 1).await;
        for (key, slot) in [(2, 2), (3, 3)] {
            let queued = Instant::now();
            let read = spawn_read(key);
            until("the next batch leaves beside the slow one", || {
                batches() == slot
            })
            .await;
            assert!(
                queued.elapsed() >= STALL,
                "read {key} left after {:?}, before the stall",
                queued.elapsed()
            );
            drop(read);
        }
        // Three batches in flight: reads 4 and 5 wait, however long.
        let waiting = [spawn_read(4), spawn_read(5)];
        tokio::time::sleep(3 * STALL).await;
        assert_eq!(
            reader.batch_stats(),
            BatchStats {
                batches: 3,
                reads: 3
            },
            "no batch beyond the limit"
        );
        // The first batch ends (its connection closes): reads 4 and 5 leave, together.
        until("the three batches' connections are held", || {
            held.lock().len() == 3
        })
        .await;
        held.lock().remove(0);
        let failed = first.await.expect("task");
        assert!(
            failed.is_err(),
            "the first batch's connection closed: {failed:?}"
        );
        until("the waiting reads leave", || batches() == 4).await;
        assert_eq!(
            reader.batch_stats(),
            BatchStats {
                batches: 4,
                reads: 5
            }
        );
        for read in waiting {
            read.abort();
        }
        hold.abort();
    })
    .await;
}
