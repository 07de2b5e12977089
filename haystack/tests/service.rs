//! End-to-end tests of the store node: the real service on a loopback port
//! in a temporary directory, driven by [`StoreClient`] and by raw HTTP.
//!
//! Every test runs under [`TEST_DEADLINE`] and stops its nodes.

mod node_common;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use haystack::api::{CRC32_HEADER, ErrorBody, VolumeFile};
use haystack::client::{ClientError, StoreClient};
use haystack::service::{self, StoreNodeConfig, StoreNodeState};
use node_common::Served;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bound on any one test.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// Needle size limit of test nodes.
const MAX_NEEDLE_BYTES: u64 = 256 * 1024;

/// A store node serving on `127.0.0.1:0` out of a temporary directory.
struct Node {
    url: String,
    client: StoreClient,
    state: StoreNodeState,
    served: Served,
    _dir: tempfile::TempDir,
}

fn test_config(dir: &std::path::Path) -> StoreNodeConfig {
    let mut config = StoreNodeConfig::new(dir);
    config.max_needle_bytes = MAX_NEEDLE_BYTES;
    config.io_concurrency = 4;
    config.request_timeout_ms = 10_000;
    config.server.header_read_timeout_ms = 500;
    config.body_idle_timeout_ms = 500;
    config.server.shutdown_grace_ms = 2_000;
    config
}

impl Node {
    async fn start() -> Node {
        Node::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut StoreNodeConfig)) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let state = StoreNodeState::open(config.clone(), Default::default())
            .await
            .expect("open store");
        let served = node_common::serve(&state, config.clone()).await;
        let url = served.url.clone();
        let client = StoreClient::new(&url).expect("client");
        client.health().await.expect("node healthy");
        Node {
            url,
            client,
            state,
            served,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.served.stop().await;
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test finished in time");
}

fn blob(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<_>>()
        .into()
}

fn cookie_for(key: u64) -> u32 {
    0x9e37_79b9u32.wrapping_mul(key as u32 + 1)
}

async fn error_body(response: reqwest::Response) -> (u16, ErrorBody) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    let parsed = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
    (status, parsed)
}

/// Sends raw bytes on a fresh connection, half-closes, and returns the
/// answer's status line (empty if the server closed without answering).
async fn raw_exchange(addr: &str, request: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    if half_close {
        stream.shutdown().await.expect("shutdown");
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// The head of a raw `PUT` of needle 1 in volume 1.
fn put_head(content_length: u64) -> Vec<u8> {
    format!(
        "PUT /volumes/1/needles/1?cookie=00000001 HTTP/1.1\r\nHost: t\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_delete_round_trip() {
    bounded(async {
        let node = Node::start().await;
        let c = &node.client;
        let created = c.create_volume(1).await.expect("create");
        assert_eq!(created.volume_id, 1);
        assert_eq!(created.needle_count, 0);
        // Creating again is idempotent through the client, a 409 on the wire.
        c.create_volume(1).await.expect("create again");
        let raw = reqwest::Client::new()
            .put(format!("{}/volumes/1", node.url))
            .send()
            .await;
        let (status, body) = error_body(raw.expect("put")).await;
        assert_eq!((status, body.error.as_str()), (409, "volume_exists"));

        let blobs = [
            (1u64, blob(1, 1)),
            (2, blob(1000, 2)),
            (0x10, blob(200_000, 3)),
        ];
        let mut total_size = 0;
        for (key, data) in &blobs {
            let appended = c
                .append_needle_bytes(1, *key, cookie_for(*key), "image/png", data.clone())
                .await
                .expect("append");
            assert!(appended.size >= data.len() as u64);
            total_size += appended.size;
        }
        for (key, data) in &blobs {
            let got = c
                .read_needle_bytes(1, *key, cookie_for(*key))
                .await
                .expect("read");
            assert_eq!(got.data, *data, "key {key}");
            assert_eq!(got.content_type, "image/png");
            assert_eq!(got.crc32, crc32fast::hash(data));
        }
        // The streamed form yields the same bytes.
        let response = c
            .read_needle(1, 0x10, cookie_for(0x10))
            .await
            .expect("read");
        assert_eq!(response.content_length, Some(200_000));
        let mut streamed = Vec::new();
        let mut stream = response.into_stream();
        while let Some(chunk) = stream.next().await {
            streamed.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(streamed, blobs[2].1);

        let status = c.volume_status(1).await.expect("status");
        assert_eq!(status.needle_count, 3);
        assert_eq!(status.live_bytes, total_size);
        assert_eq!(status.deleted_bytes, 0);
        assert_eq!(status.last_key, Some(0x10));
        assert!(status.size_bytes >= total_size);
        assert!(!status.locked && !status.read_only);

        c.delete_needle(1, 2, cookie_for(2)).await.expect("delete");
        assert!(
            c.read_needle_bytes(1, 2, cookie_for(2))
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert!(
            c.delete_needle(1, 2, cookie_for(2))
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert_eq!(c.deleted_keys(1).await.expect("deleted"), vec![2]);
        let status = c.volume_status(1).await.expect("status");
        assert!(status.deleted_bytes > 0);
        assert_eq!(status.live_bytes + status.deleted_bytes, total_size);
        let listed = c.list_volumes().await.expect("list");
        assert_eq!(listed, vec![status]);

        // Out-of-order keys are refused.
        let err = c
            .append_needle_bytes(1, 3, 1, "a/b", blob(10, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::KeyOutOfOrder(_)), "{err:?}");
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cookie_answers_exactly_like_a_missing_needle() {
    bounded(async {
        let node = Node::start().await;
        node.client.create_volume(1).await.expect("create");
        node.client
            .append_needle_bytes(1, 5, 0x1234_5678, "", blob(64, 9))
            .await
            .expect("put");
        let http = reqwest::Client::new();
        let fetch = |path: String| {
            let http = http.clone();
            let url = format!("{}{path}", node.url);
            async move {
                let r = http.get(url).send().await.expect("get");
                let status = r.status().as_u16();
                let headers: Vec<_> = r
                    .headers()
                    .iter()
                    .filter(|(k, _)| *k != "date")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (status, headers, r.bytes().await.expect("body"))
            }
        };
        let wrong = fetch("/volumes/1/needles/5?cookie=12345679".into()).await;
        let missing = fetch("/volumes/1/needles/6?cookie=12345678".into()).await;
        let below = fetch("/volumes/1/needles/1?cookie=12345678".into()).await;
        assert_eq!(wrong.0, 404);
        assert_eq!(wrong, missing);
        assert_eq!(wrong, below);
        let body: ErrorBody = serde_json::from_slice(&wrong.2).expect("json");
        assert_eq!(body.error, "not_found");
        // A delete with the wrong cookie is a 404 too and deletes nothing.
        let err = node
            .client
            .delete_needle(1, 5, 0x1234_5679)
            .await
            .unwrap_err();
        assert!(err.is_not_found() && !err.is_replica_failure());
        node.client
            .read_needle_bytes(1, 5, 0x1234_5678)
            .await
            .expect("still there");
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_volume_refuses_appends_and_streams_its_files() {
    bounded(async {
        let node = Node::start().await;
        let c = &node.client;
        c.create_volume(3).await.expect("create");
        for key in 1..=20u64 {
            let data = blob(1000 + key as usize * 10, key as u8);
            c.append_needle_bytes(3, key, cookie_for(key), "x/y", data)
                .await
                .expect("put");
        }
        c.delete_needle(3, 7, cookie_for(7)).await.expect("delete");
        // A writable replica is not streamed.
        let err = c.fetch_volume_file(3, VolumeFile::Data).await.unwrap_err();
        assert!(matches!(err, ClientError::ReadOnly(_)), "{err:?}");

        let status = c.lock_volume(3).await.expect("lock");
        assert!(status.locked && status.read_only);
        let err = c
            .append_needle_bytes(3, 21, 1, "x/y", blob(10, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::ReadOnly(_)), "{err:?}");
        c.read_needle_bytes(3, 20, cookie_for(20))
            .await
            .expect("reads still work");

        let volume = node.state.store().volume(3).expect("volume");
        for (file, path) in [
            (VolumeFile::Data, volume.data_path()),
            (VolumeFile::Index, volume.index_path()),
        ] {
            let response = c.fetch_volume_file(3, file).await.expect("fetch");
            let on_disk = std::fs::read(&path).expect("read file");
            assert_eq!(response.content_length, Some(on_disk.len() as u64));
            let mut streamed = Vec::new();
            let mut stream = response.into_stream();
            while let Some(chunk) = stream.next().await {
                streamed.extend_from_slice(&chunk.expect("chunk"));
            }
            assert!(
                streamed == on_disk,
                "{file:?} differs from the file on disk"
            );
            let len = on_disk.len() as u64;
            let range = c
                .read_volume_file_range(3, file, 5, len - 9)
                .await
                .expect("a range");
            assert!(range[..] == on_disk[5..len as usize - 4], "{file:?} range");
            for (offset, want) in [(len, 1), (1, len), (u64::MAX, 2)] {
                let err = c
                    .read_volume_file_range(3, file, offset, want)
                    .await
                    .unwrap_err();
                assert_eq!(err.status(), Some(400), "{offset}+{want}: {err:?}");
            }
        }
        node.stop().await;
    })
    .await;
}

/// A body written to the socket in pieces of every size (single bytes,
/// pieces under and over the size the node gathers) is stored byte for
/// byte, however the pieces arrive (the exact chunking is the unit test's
/// in `service::handlers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_pieces_of_every_size_is_stored_whole() {
    bounded(async {
        let node = Node::start().await;
        let c = &node.client;
        c.create_volume(1).await.expect("create");
        let data = blob(200_000, 9);
        let cuts = [
            1usize, 1, 100, 40_000, 3, 16_383, 16_384, 16_385, 5, 70_000, 7,
        ];
        let mut stream = TcpStream::connect(node.addr()).await.expect("connect");
        stream
            .write_all(&put_head(data.len() as u64))
            .await
            .expect("head");
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            let end = (at + cut).min(data.len());
            stream.write_all(&data[at..end]).await.expect("piece");
            stream.flush().await.expect("flush");
            at = end;
            if at == data.len() {
                break;
            }
        }
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.expect("answer");
        assert!(answer.starts_with(b"HTTP/1.1 201"), "{answer:?}");
        let got = c
            .read_needle_bytes(1, 1, 1)
            .await
            .expect("read the needle back");
        assert_eq!(got.data, data);
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_short_and_unsized_bodies_write_nothing() {
    bounded(async {
        let node = Node::start().await;
        let c = &node.client;
        let before = c.create_volume(1).await.expect("create");

        let too_big = blob(MAX_NEEDLE_BYTES as usize + 1, 0);
        let err = c
            .append_needle_bytes(1, 1, 1, "a/b", too_big)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::PayloadTooLarge(_)), "{err:?}");

        // A chunked body has no Content-Length: refused.
        let chunks = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]);
        let response = reqwest::Client::new()
            .put(format!("{}/volumes/1/needles/1?cookie=00000001", node.url))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .expect("send");
        let (status, body) = error_body(response).await;
        assert_eq!((status, body.error.as_str()), (400, "bad_request"));

        // A body shorter than its Content-Length, then a half-close.
        let mut request = put_head(100);
        request.extend_from_slice(&[7u8; 50]);
        let line = raw_exchange(node.addr(), &request, true).await;
        assert!(
            line.starts_with("HTTP/1.1 400"),
            "short body answered {line:?}"
        );

        // A body that stalls past the idle timeout.
        let mut stream = TcpStream::connect(node.addr()).await.expect("connect");
        stream.write_all(&request).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "stalled body answered {answer:?}"
        );

        // Oversize Content-Length announced with a tiny body: 413 before reading.
        let mut request = put_head(999_999_999);
        request.extend_from_slice(b"abc");
        let line = raw_exchange(node.addr(), &request, true).await;
        assert!(
            line.starts_with("HTTP/1.1 413"),
            "oversize answered {line:?}"
        );

        let after = c.volume_status(1).await.expect("status");
        assert_eq!(after, before, "nothing was written");
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_and_unknown_volumes_get_json_4xx() {
    bounded(async {
        let node = Node::start().await;
        node.client.create_volume(1).await.expect("create");
        let http = reqwest::Client::new();
        let bad = [
            "/volumes/abc",
            "/volumes/-1",
            "/volumes/4294967296",
            "/volumes/1/needles/XYZ?cookie=00000001",
            "/volumes/1/needles/AB?cookie=00000001",
            "/volumes/1/needles/12345678901234567?cookie=00000001",
            "/volumes/1/needles/..%2f1?cookie=00000001",
            "/volumes/1/needles/1",
            "/volumes/1/needles/1?cookie=1",
            "/volumes/1/needles/1?cookie=0000000G",
            "/volumes/1/needles/1?cookie=000000001",
            "/volumes/1/needles/1?cookie=00000001&x=2",
            "/volumes/1/needles/1?cookie=00000001&cookie=00000002",
            "/volumes/1/files/superblock",
            "/volumes/1/files/..%2f..%2fetc",
        ];
        for path in bad {
            let response = http
                .get(format!("{}{path}", node.url))
                .send()
                .await
                .expect("get");
            let (status, body) = error_body(response).await;
            assert_eq!(
                (status, body.error.as_str()),
                (400, "bad_request"),
                "{path}"
            );
        }
        let response = http
            .put(format!("{}/volumes/x1", node.url))
            .send()
            .await
            .expect("put");
        assert_eq!(error_body(response).await.0, 400);

        let err = node.client.volume_status(9).await.unwrap_err();
        assert!(matches!(err, ClientError::UnknownVolume(_)), "{err:?}");
        for path in [
            "/volumes/9",
            "/volumes/9/needles/1?cookie=00000001",
            "/volumes/9/deleted",
        ] {
            let response = http
                .get(format!("{}{path}", node.url))
                .send()
                .await
                .expect("get");
            let (status, body) = error_body(response).await;
            assert_eq!(
                (status, body.error.as_str()),
                (404, "unknown_volume"),
                "{path}"
            );
        }
        let response = http
            .get(format!("{}/nothing/here", node.url))
            .send()
            .await
            .expect("get");
        let (status, body) = error_body(response).await;
        assert_eq!((status, body.error.as_str()), (404, "no_route"));
        let response = http
            .patch(format!("{}/volumes/1", node.url))
            .send()
            .await
            .expect("patch");
        assert_eq!(error_body(response).await.0, 405);
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_sync_copies_a_locked_replica_and_its_deletes() {
    bounded(async {
        let source = Node::start().await;
        let target = Node::start().await;
        let (a, b) = (&source.client, &target.client);
        a.create_volume(7).await.expect("create");
        let mut blobs = Vec::new();
        for key in 1..=30u64 {
            let data = blob(500 * key as usize, key as u8);
            a.append_needle_bytes(7, key, cookie_for(key), "t/x", data.clone())
                .await
                .expect("put");
            blobs.push((key, data));
        }
        a.delete_needle(7, 4, cookie_for(4)).await.expect("delete");

        // A writable peer is refused, and nothing is written.
        let err = b.sync_volume(7, &source.url, &[]).await.unwrap_err();
        assert!(matches!(err, ClientError::ReadOnly(_)), "{err:?}");
        assert!(matches!(
            b.volume_status(7).await,
            Err(ClientError::UnknownVolume(_))
        ));

        a.lock_volume(7).await.expect("lock");
        let synced = b.sync_volume(7, &source.url, &[]).await.expect("sync");
        let peer_status = a.volume_status(7).await.expect("status");
        assert_eq!(synced.status, peer_status);
        assert_eq!(synced.method, "copy");
        assert!(synced.source_damaged.is_empty() && synced.lost.is_empty());
        for (key, data) in &blobs {
            let got = b.read_needle_bytes(7, *key, cookie_for(*key)).await;
            if *key == 4 {
                assert!(got.unwrap_err().is_not_found());
            } else {
                assert_eq!(got.expect("read synced").data, *data, "key {key}");
            }
        }

        // A delete on the locked source is carried by the next sync.
        a.delete_needle(7, 9, cookie_for(9))
            .await
            .expect("delete locked");
        let resynced = b.sync_volume(7, source.addr(), &[]).await.expect("resync");
        // The same needles: only the delete moves.
        assert_eq!(
            (resynced.method.as_str(), resynced.deletes_applied),
            ("catch_up", 1)
        );
        assert!(
            b.read_needle_bytes(7, 9, cookie_for(9))
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert_eq!(b.deleted_keys(7).await.expect("deleted"), vec![4, 9]);

        // A peer that does not answer is a 502, not a crash.
        let err = b
            .sync_volume(7, "http://127.0.0.1:1", &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Status { status: 502, .. }),
            "{err:?}"
        );
        b.read_needle_bytes(7, 1, cookie_for(1))
            .await
            .expect("replica intact");
        source.stop().await;
        target.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_needle_is_an_error_never_bytes() {
    bounded(async {
        let node = Node::start().await;
        let c = &node.client;
        c.create_volume(2).await.expect("create");
        let data = Bytes::from(vec![0x5a_u8; 4096]);
        let appended = c
            .append_needle_bytes(2, 1, cookie_for(1), "t/x", data.clone())
            .await
            .expect("put");
        c.append_needle_bytes(2, 2, cookie_for(2), "t/x", data.clone())
            .await
            .expect("put");

        // Flip one byte in the middle of needle 1's data, behind the engine's back.
        let path = node.state.store().volume(2).expect("volume").data_path();
        let mut bytes = std::fs::read(&path).expect("read data file");
        let at = (appended.offset + appended.size / 2) as usize;
        assert_eq!(bytes[at], 0x5a, "offset points into the data");
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write data file");

        let response = reqwest::get(format!(
            "{}/volumes/2/needles/1?cookie={:08x}",
            node.url,
            cookie_for(1)
        ))
        .await
        .expect("get");
        assert!(response.headers().get(CRC32_HEADER).is_none());
        let (status, body) = error_body(response).await;
        assert_eq!((status, body.error.as_str()), (500, "corrupt"));
        let err = c.read_needle_bytes(2, 1, cookie_for(1)).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Corrupt(_)) && err.is_replica_failure(),
            "{err:?}"
        );
        // Its neighbour is intact.
        assert_eq!(
            c.read_needle_bytes(2, 2, cookie_for(2))
                .await
                .expect("read")
                .data,
            data
        );
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_cancelled_and_times_out_slow_headers() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = test_config(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(service::run(
            config,
            Default::default(),
            listener,
            cancel.clone(),
        ));
        let client = StoreClient::new(&addr).expect("client");
        let mut healthy = false;
        for _ in 0..100 {
            if client.health().await.is_ok() {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(healthy, "node came up");

        // A client that never finishes its headers is cut off.
        let started = tokio::time::Instant::now();
        let line = raw_exchange(&addr, b"GET /health HTTP/1.1\r\nHost: t\r\n", false).await;
        assert!(!line.starts_with("HTTP/1.1 200"), "{line:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "header timeout fired"
        );

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("stops")
            .expect("task")
            .expect("run result");
        assert!(TcpStream::connect(&addr).await.is_err(), "listener closed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_upload_finish() {
    bounded(async {
        let node = Node::start().await;
        node.client.create_volume(1).await.expect("create");
        let mut stream = TcpStream::connect(node.addr()).await.expect("connect");
        let mut request = put_head(10);
        request.extend_from_slice(b"01234");
        stream.write_all(&request).await.expect("write head");
        tokio::time::sleep(Duration::from_millis(100)).await;
        node.served.cancel.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(b"56789").await.expect("write rest");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("answered and closed")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "in-flight upload answered {answer:?}"
        );
        let volume = node.state.store().volume(1).expect("volume");
        let stored = volume.read_needle(1, 1).expect("needle is durable");
        assert_eq!(stored.data, &b"0123456789"[..]);
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_share_a_small_io_pool() {
    bounded(async {
        let node = Node::start_with(|c| c.io_concurrency = 2).await;
        let mut tasks = Vec::new();
        for volume in 1..=8u32 {
            let c = node.client.clone();
            tasks.push(tokio::spawn(async move {
                c.create_volume(volume).await.expect("create");
                for key in 1..=15u64 {
                    let data = blob(key as usize * 300, volume as u8);
                    c.append_needle_bytes(volume, key, cookie_for(key), "a/b", data.clone())
                        .await
                        .expect("append");
                    let got = c.read_needle_bytes(volume, key, cookie_for(key)).await;
                    assert_eq!(got.expect("read").data, data);
                }
                c.volume_status(volume).await.expect("status").needle_count
            }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("task"), 15);
        }
        let listed = node.client.list_volumes().await.expect("list");
        let ids: Vec<u32> = listed.iter().map(|v| v.volume_id).collect();
        assert_eq!(ids, (1..=8).collect::<Vec<_>>());
        // The same list in pages of three; bad queries refused.
        let http = reqwest::Client::new();
        let page = |query: &'static str| {
            let request = http.get(format!("{}/volumes?{query}", node.url));
            async move { request.send().await.expect("list") }
        };
        let mut paged = Vec::new();
        for query in ["limit=3", "limit=3&after=3", "limit=3&after=6"] {
            let answer: serde_json::Value = page(query).await.json().await.expect("json");
            paged.extend(answer["volumes"].as_array().expect("page").iter().cloned());
            let next = answer["next_after"].as_u64();
            assert_eq!(
                next,
                (query != "limit=3&after=6").then_some(paged.len() as u64)
            );
        }
        assert_eq!(
            serde_json::Value::Array(paged),
            serde_json::to_value(&listed).expect("value")
        );
        for bad in ["limit=0", "limit=1025", "after=-1", "after=x", "page=1"] {
            assert_eq!(page(bad).await.status(), 400, "{bad}");
        }
        node.stop().await;
    })
    .await;
}
