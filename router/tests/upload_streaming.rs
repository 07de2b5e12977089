//! End-to-end tests of streamed uploads (a `Content-Length` above
//! `retry_buffer_bytes`): a directory, four real store nodes and a router,
//! in-process on `127.0.0.1:0`. Each store node is registered behind a small
//! TCP proxy of the test's own, which counts the bytes sent to the node (to
//! see a body reach the stores while the client still holds the rest) and
//! can cut every connection at once (a replica dying mid-upload).
//!
//! The router is given 1 MiB of upload memory: a body received whole before
//! it is stored could never pass 1 MiB, so every larger upload here succeeds
//! only if it is really streamed.

mod api_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api_common::{ClusterSpec, bind};
use bytes::Bytes;
use router::api::BlobId;
use router::directory::VolumeState;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Upload limit of the test router.
const LIMIT_BYTES: u64 = 32 * MIB as u64;
/// Bodies declared longer than this are streamed.
const RETRY_BUFFER_BYTES: u64 = 256 * KIB as u64;
/// Upload memory of the test router.
const UPLOAD_BUFFER_BYTES: u64 = MIB as u64;
/// Request timeout of the test store nodes.
const STORE_REQUEST_TIMEOUT_MS: u64 = 1_500;

/// A TCP proxy in front of one store node.
struct Proxy {
    /// Bytes received from clients (the router) and sent to the node.
    bytes_to_node: Arc<AtomicU64>,
    /// Closes every connection and stops accepting.
    cut: CancellationToken,
}

/// Feeds a test upload's body; dropping it ends the body.
type BodySender = mpsc::Sender<Result<Bytes, std::io::Error>>;
/// A test upload's answer, once it comes.
type PendingAnswer = tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>>;

/// A cluster whose store nodes are registered behind a [`Proxy`] each.
type Cluster = api_common::Cluster<Proxy>;

/// Forwards connections on a new address to `upstream`, counting the bytes
/// sent upstream, until `cut` fires (then every connection is dropped).
async fn start_proxy(upstream: String, cut: CancellationToken) -> (String, Proxy) {
    let (listener, address) = bind().await;
    let bytes_to_node = Arc::new(AtomicU64::new(0));
    let counter = bytes_to_node.clone();
    let accept_cut = cut.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = accept_cut.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((client, _)) = accepted else { continue };
            let (upstream, counter, cut) = (upstream.clone(), counter.clone(), accept_cut.clone());
            tokio::spawn(async move {
                let Ok(node) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = node.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut node_read, mut node_write) = node.into_split();
                let up = async {
                    let mut buf = vec![0u8; 64 * KIB];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        if node_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = node_write.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut node_read, &mut client_write).await;
                    let _ = client_write.shutdown().await;
                };
                tokio::select! {
                    _ = cut.cancelled() => {}
                    _ = futures::future::join(up, down) => {}
                }
            });
        }
    });
    (address, Proxy { bytes_to_node, cut })
}

async fn start_cluster() -> Cluster {
    let spec = ClusterSpec {
        store_count: 4,
        heartbeat_timeout_ms: 1_000,
        repair_interval_ms: 60_000,
        heartbeat_every: Duration::from_millis(100),
        poll_every: Duration::from_millis(25),
        store_config: |config| {
            config.server.shutdown_grace_ms = 100;
            // Shorter than the slow upload below takes: a store's request
            // timeout must not cut a body its sender is still pacing.
            config.request_timeout_ms = STORE_REQUEST_TIMEOUT_MS;
        },
        router_config: |config| {
            config.max_blob_bytes = LIMIT_BYTES;
            config.upload_buffer_bytes = UPLOAD_BUFFER_BYTES;
            config.retry_buffer_bytes = RETRY_BUFFER_BYTES;
            config.server.header_read_timeout_ms = 2_000;
            config.body_idle_timeout_ms = 2_000;
            config.replica_timeout_ms = 2_000;
            config.directory_cache_ttl_ms = 100;
            // One volume: an upload after an aborted one must reuse it.
            config.writable_volumes = 1;
        },
    };
    api_common::start_cluster(&spec, start_proxy).await
}

impl Cluster {
    /// Uploads `data` (with its `Content-Length`); returns the status and
    /// the JSON answer.
    async fn upload(&self, data: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("/blobs"))
            .header("content-type", "application/x-test")
            .body(data)
            .send()
            .await
            .expect("upload request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json answer"))
    }

    /// Uploads `data`, expects a `201` whose checksum is the data's, reads
    /// the BLOB back byte for byte; returns its id.
    async fn upload_and_check(&self, data: Vec<u8>) -> BlobId {
        let expected = checksum_of(&data);
        let (status, answer) = self.upload(data.clone()).await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["checksum"], expected.as_str());
        assert_eq!(answer["size"], data.len() as u64);
        let id = answer["id"].as_str().expect("id");
        let response = self
            .http
            .get(self.url(&format!("/blobs/{id}")))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200);
        let read = response.bytes().await.expect("bytes");
        assert_eq!(checksum_of(&read), expected);
        assert!(read == data, "the BLOB reads back byte for byte");
        BlobId::parse(id).expect("id parses")
    }

    /// Indexes of the stores whose proxies have passed `at_least` bytes.
    fn stores_that_received(&self, at_least: u64) -> Vec<usize> {
        (0..self.stores.len())
            .filter(|&i| self.stores[i].front.bytes_to_node.load(Ordering::Relaxed) >= at_least)
            .collect()
    }

    /// Starts an upload declaring `declared` bytes whose body is whatever
    /// the test sends on the returned channel (dropping it ends the body).
    fn start_upload(&self, declared: usize) -> (BodySender, PendingAnswer) {
        let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = reqwest::Body::wrap_stream(futures::stream::unfold(
            receiver,
            |mut receiver| async move {
                let item = receiver.recv().await?;
                Some((item, receiver))
            },
        ));
        let request = self
            .http
            .post(self.url("/blobs"))
            .header("content-type", "application/x-test")
            .header("content-length", declared)
            .body(body)
            .send();
        (sender, tokio::spawn(request))
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 12) as u8)
        })
        .collect()
}

/// The `checksum` an upload of `bytes` answers.
fn checksum_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Sends `data` in 64 KiB chunks, pausing `pause` after each.
async fn send_chunks(sender: &BodySender, data: &[u8], pause: Duration) -> bool {
    for chunk in data.chunks(64 * KIB) {
        if sender
            .send(Ok(Bytes::copy_from_slice(chunk)))
            .await
            .is_err()
        {
            return false;
        }
        tokio::time::sleep(pause).await;
    }
    true
}

/// Sends raw bytes, half-closes, and returns the answer's status line (or
/// an empty string if the connection ended without one).
async fn raw_request(url: &str, request: &[u8]) -> String {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_larger_than_the_upload_memory_streams_through() {
    let cluster = start_cluster().await;
    // 16 MiB against 1 MiB of upload memory: impossible if received whole.
    cluster.upload_and_check(pattern(16 * MIB, 7)).await;
    assert_eq!(cluster.needles_on_stores().await, 3);
    // A body at the retry-buffer size still takes the buffered path.
    cluster
        .upload_and_check(pattern(RETRY_BUFFER_BYTES as usize, 8))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_but_steady_body_outlasts_the_stores_request_timeout() {
    let cluster = start_cluster().await;
    let declared = 2 * MIB;
    let data = pattern(declared, 9);
    let (sender, answer) = cluster.start_upload(declared);
    // 32 chunks, 100 ms apart: about twice the stores' request timeout, each
    // pause far below the body-idle timeouts.
    let started = std::time::Instant::now();
    assert!(send_chunks(&sender, &data, Duration::from_millis(100)).await);
    drop(sender);
    assert!(started.elapsed() > Duration::from_millis(STORE_REQUEST_TIMEOUT_MS));
    let response = answer.await.expect("task").expect("an answer");
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["checksum"], checksum_of(&data).as_str());
    assert_eq!(cluster.needles_on_stores().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_reaches_the_stores_while_the_client_sends_and_a_cut_body_stores_nothing() {
    let cluster = start_cluster().await;
    let declared = 8 * MIB;
    let data = pattern(declared, 3);
    let (sender, answer) = cluster.start_upload(declared);
    assert!(send_chunks(&sender, &data[..2 * MIB], Duration::ZERO).await);
    // Three replicas have received most of what was sent while the client
    // still holds three quarters of the body.
    cluster
        .wait_until(|| async { cluster.stores_that_received(MIB as u64).len() == 3 })
        .await;
    // The client stops half-way.
    drop(sender);
    if let Ok(Ok(response)) = answer.await {
        assert_ne!(response.status(), 201);
    }
    // No replica stored a needle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.needles_on_stores().await, 0);
    let volumes = cluster.directory.list_volumes().await.expect("volumes");
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0].state, VolumeState::Writable);
    assert!(volumes[0].stale_replicas.is_empty());
    // The volume stays in use: the next (streamed) upload goes to it.
    let id = cluster.upload_and_check(pattern(2 * MIB, 4)).await;
    assert_eq!(id.volume, volumes[0].id);
    assert_eq!(cluster.needles_on_stores().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_not_matching_their_length_or_over_the_limit_store_nothing() {
    let cluster = start_cluster().await;
    // A declared length over the limit: 413 before anything is read.
    let too_large = format!(
        "POST /blobs HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n0123456789",
        LIMIT_BYTES + 1
    );
    let status = raw_request(&cluster.router_url, too_large.as_bytes()).await;
    assert!(status.contains(" 413 "), "{status:?}");
    // A streamed body shorter than its Content-Length (the client
    // half-closes after 300 KiB of a declared 600 KiB): 400.
    let mut short = format!(
        "POST /blobs HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        600 * KIB
    )
    .into_bytes();
    short.extend_from_slice(&pattern(300 * KIB, 1));
    let status = raw_request(&cluster.router_url, &short).await;
    assert!(status.contains(" 400 "), "{status:?}");
    // (More bytes than declared cannot reach the router over HTTP/1.1:
    // hyper ends the body at its Content-Length and parses the rest as the
    // next request. The router's own check is a unit test in
    // `api::upload::stream`.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.needles_on_stores().await, 0);
    // Nothing was taken out of service.
    for volume in cluster.directory.list_volumes().await.expect("volumes") {
        assert_eq!(volume.state, VolumeState::Writable, "{volume:?}");
    }
    cluster.upload_and_check(pattern(512 * KIB, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_failing_mid_stream_gives_one_503_and_retires_the_volume() {
    let cluster = start_cluster().await;
    let declared = 4 * MIB;
    let data = pattern(declared, 5);
    let (sender, answer) = cluster.start_upload(declared);
    assert!(send_chunks(&sender, &data[..MIB], Duration::ZERO).await);
    cluster
        .wait_until(|| async { cluster.stores_that_received(512 * KIB as u64).len() == 3 })
        .await;
    let victim = &cluster.stores[cluster.stores_that_received(512 * KIB as u64)[0]];
    // The node dies: its connections drop, it stops heartbeating.
    victim.front.cut.cancel();
    victim.cancel.cancel();
    // The client keeps sending, slowly; the router drains what it sends.
    send_chunks(&sender, &data[MIB..], Duration::from_millis(5)).await;
    drop(sender);
    let response = answer.await.expect("task").expect("an answer, not a reset");
    let status = response.status();
    let body: Value = response.json().await.expect("json error");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "replica_failed", "{body}");

    let volumes = cluster.directory.list_volumes().await.expect("volumes");
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let failed = &volumes[0];
    assert_eq!(failed.state, VolumeState::ReadOnly, "{failed:?}");
    // A failed append makes no replica stale: none misses an acknowledged
    // needle.
    assert!(failed.stale_replicas.is_empty(), "{failed:?}");

    // Once the directory knows the node is down, its replica is stale (it
    // may miss deletes from now on), and the next upload goes to a new
    // volume on the three live nodes.
    cluster
        .wait_until(|| async {
            let nodes = cluster.directory.list_nodes().await.expect("nodes");
            nodes.iter().any(|n| n.id == victim.id && !n.is_up())
        })
        .await;
    let failed = cluster.directory.volume(failed.id).await.expect("volume");
    assert_eq!(failed.stale_replicas, vec![victim.id.clone()]);
    let id = cluster.upload_and_check(pattern(100 * KIB, 6)).await;
    assert_ne!(id.volume, failed.id);
}
