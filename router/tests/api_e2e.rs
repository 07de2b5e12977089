//! End-to-end tests of the public API: a directory, four store nodes in four
//! racks and a router, all in-process on `127.0.0.1:0` with temp
//! directories, driven over real HTTP.

mod api_common;

use std::time::Duration;

use api_common::{ClusterSpec, bind};
use router::api::RouterConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Upload limit of the test router.
const LIMIT_BYTES: u64 = 1024 * 1024;

/// A cluster whose store nodes are registered under their own addresses.
type Cluster = api_common::Cluster<()>;

async fn start_cluster(store_count: usize) -> Cluster {
    let spec = ClusterSpec {
        store_count,
        heartbeat_timeout_ms: 1_500,
        repair_interval_ms: 200,
        heartbeat_every: Duration::from_millis(200),
        poll_every: Duration::from_millis(50),
        store_config: |_| {},
        router_config: |config| {
            config.max_blob_bytes = LIMIT_BYTES;
            config.server.header_read_timeout_ms = 500;
            config.body_idle_timeout_ms = 1_000;
            config.replica_timeout_ms = 2_000;
            config.directory_cache_ttl_ms = 200;
            config.writable_volumes = 4;
            config.key_lease_size = 3;
        },
    };
    api_common::start_cluster(&spec, |address, _| async move { (address, ()) }).await
}

impl Cluster {
    async fn upload(&self, data: Vec<u8>, content_type: &str) -> reqwest::Response {
        self.http
            .post(self.url("/blobs"))
            .header("content-type", content_type)
            .body(data)
            .send()
            .await
            .expect("upload request")
    }

    async fn upload_ok(&self, data: Vec<u8>) -> String {
        let response = self.upload(data, "application/x-test").await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    async fn delete_blob(&self, id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/blobs/{id}")))
            .send()
            .await
            .expect("delete request")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("get request")
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sends raw bytes and returns whatever the server answers before closing
/// (or a 3 s deadline).
async fn raw_request(url: &str, request: &[u8]) -> String {
    let address = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_read_range_head_delete() {
    let cluster = start_cluster(3).await;
    let data = pattern(300 * 1024, 7);
    let response = cluster.upload(data.clone(), "image/png").await;
    assert_eq!(response.status(), 201);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(location.as_deref(), Some(format!("/blobs/{id}").as_str()));
    assert_eq!(body["size"], data.len() as u64);
    assert_eq!(body["url"], format!("/blobs/{id}"));
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert_eq!(body["checksum"], format!("sha256:{sha}"));
    let parsed = router::api::BlobId::parse(&id).expect("id parses");
    assert_eq!(parsed.to_string(), id);

    // Whole read.
    let response = cluster.get(&format!("/blobs/{id}")).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["content-length"], data.len().to_string().as_str());
    let etag = format!("\"{}\"", id.replace(',', "-"));
    assert_eq!(headers["etag"], etag.as_str());
    assert_eq!(headers["accept-ranges"], "bytes");
    assert!(
        headers["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("immutable")
    );
    assert_eq!(response.bytes().await.expect("body"), data);

    // Ranges.
    let ranged = |range: &'static str| {
        let request = cluster
            .http
            .get(cluster.url(&format!("/blobs/{id}")))
            .header("range", range);
        async move { request.send().await.expect("range request") }
    };
    let response = ranged("bytes=10-19").await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 10-19/{}", data.len()).as_str()
    );
    assert_eq!(response.bytes().await.expect("body"), data[10..20]);
    let response = ranged("bytes=-5").await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.bytes().await.expect("body"),
        data[data.len() - 5..]
    );
    let response = ranged("bytes=100000-").await;
    assert_eq!(response.status(), 206);
    assert_eq!(response.bytes().await.expect("body"), data[100_000..]);
    let response = ranged("bytes=999999999-").await;
    assert_eq!(response.status(), 416);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{}", data.len()).as_str()
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "range_not_satisfiable");

    // Conditional read.
    let response = cluster
        .http
        .get(cluster.url(&format!("/blobs/{id}")))
        .header("if-none-match", format!("\"x\", {etag}"))
        .send()
        .await
        .expect("conditional");
    assert_eq!(response.status(), 304);

    // HEAD: same headers, no body.
    let response = cluster
        .http
        .head(cluster.url(&format!("/blobs/{id}")))
        .send()
        .await
        .expect("head");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(response.headers()["content-type"], "image/png");
    assert!(response.bytes().await.expect("body").is_empty());

    // Wrong cookie and missing key answer exactly alike.
    let wrong_cookie = router::api::BlobId {
        cookie: parsed.cookie ^ 1,
        ..parsed
    };
    let missing_key = router::api::BlobId {
        key: parsed.key + 1000,
        ..parsed
    };
    let unknown_volume = router::api::BlobId {
        volume: parsed.volume + 1000,
        ..parsed
    };
    let mut answers = Vec::new();
    for other in [wrong_cookie, missing_key, unknown_volume] {
        let response = cluster.get(&format!("/blobs/{other}")).await;
        let status = response.status();
        let content_type = response.headers()["content-type"].clone();
        let body = response.bytes().await.expect("body");
        answers.push((status, content_type, body));
    }
    assert_eq!(answers[0].0, 404);
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);

    // Delete, then 404; a second delete is a 404 too.
    let response = cluster.delete_blob(&id).await;
    assert_eq!(response.status(), 204);
    assert_eq!(cluster.get(&format!("/blobs/{id}")).await.status(), 404);
    let response = cluster.delete_blob(&id).await;
    assert_eq!(response.status(), 404);

    // Many small uploads, more than one key lease and more than one volume.
    let mut ids = Vec::new();
    let uploads = (0..12u8).map(|i| {
        let data = pattern(1000 + usize::from(i), i);
        let cluster = &cluster;
        async move { (cluster.upload_ok(data.clone()).await, data) }
    });
    ids.extend(futures::future::join_all(uploads).await);
    for (id, data) in &ids {
        let response = cluster.get(&format!("/blobs/{id}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.expect("body"), data[..]);
    }
    let empty = cluster.upload_ok(Vec::new()).await;
    let response = cluster.get(&format!("/blobs/{empty}")).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.expect("body").is_empty());

    // Admin listings and metrics.
    let volumes: Value = cluster
        .get("/admin/volumes")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(volumes["next_after"], Value::Null, "one page: {volumes}");
    let volumes = volumes["volumes"].as_array().expect("array");
    assert!(volumes.len() >= 2, "{volumes:?}");
    assert!(
        volumes.len() <= 4,
        "at most writable_volumes volumes: {volumes:?}"
    );
    assert!(volumes.iter().all(|v| v["state"] == "writable"));
    // Page by page, one volume at a time, the same list.
    let mut paged = Vec::new();
    let mut query = "limit=1".to_owned();
    loop {
        let page: Value = cluster
            .get(&format!("/admin/volumes?{query}"))
            .await
            .json()
            .await
            .expect("json");
        let listed = page["volumes"].as_array().expect("array");
        assert!(listed.len() <= 1, "{page}");
        paged.extend(listed.iter().cloned());
        match page["next_after"].as_u64() {
            Some(after) => query = format!("limit=1&after={after}"),
            None => break,
        }
    }
    assert_eq!(&paged, volumes);
    for bad in ["limit=0", "limit=1025", "after=x", "limit=-1", "page=2"] {
        let response = cluster.get(&format!("/admin/volumes?{bad}")).await;
        assert_eq!(response.status(), 400, "{bad}");
    }
    let nodes: Value = cluster
        .get("/admin/nodes")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(nodes.as_array().map(Vec::len), Some(3));
    let metrics = cluster.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains(r#"hayloft_requests_total{route="POST /blobs",tier="hot",status="201"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("hayloft_request_duration_seconds_bucket"));
    assert!(metrics.contains("hayloft_bytes_in_total"));
    assert!(metrics.contains(r#"hayloft_volumes{state="writable"}"#));
    let status = cluster.get("/").await;
    assert_eq!(status.status(), 200);
    assert!(status.text().await.expect("text").contains("store-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    let cluster = start_cluster(3).await;
    let id = cluster.upload_ok(pattern(10, 1)).await;
    let needles_before = cluster.needles_on_stores().await;
    assert_eq!(needles_before, 3);

    // Oversized with Content-Length: refused before the body is read.
    let response = cluster
        .upload(vec![0u8; LIMIT_BYTES as usize + 1], "a/b")
        .await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "payload_too_large");

    // Oversized without Content-Length (chunked): refused once it passes.
    // The router reads and drops the rest of a refused body (up to 8 MiB)
    // before it answers, so the client gets the 413, not a reset.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![1u8; 64 * 1024])).collect();
    let response = cluster
        .http
        .post(cluster.url("/blobs"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("the 413 reaches the client");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "payload_too_large");
    // Exactly at the limit, chunked: accepted.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..16).map(|_| Ok(vec![2u8; 64 * 1024])).collect();
    let response = cluster
        .http
        .post(cluster.url("/blobs"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 201);
    assert_eq!(cluster.needles_on_stores().await, needles_before + 3);
    let volumes_before: Value = cluster
        .get("/admin/volumes")
        .await
        .json()
        .await
        .expect("json");

    // Malformed ids.
    for bad in [
        "/blobs/3%2C01637037d6",
        "/blobs/3,01637037D6",
        "/blobs/3,1637037d6",
        "/blobs/03,01637037d6",
        "/blobs/3,0001637037d6",
        "/blobs/x",
        "/blobs/3,01637037d6%00",
        "/blobs/3,01637037d6/extra",
        "/blobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/blobs/11111111111111111111111111111111111111111111111111,01637037d6",
    ] {
        let response = cluster.get(bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "bad_id", "{bad}");
    }
    // Traversal that an HTTP client library would normalise away, sent raw.
    let answer = raw_request(
        &cluster.router_url,
        b"GET /blobs/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Unknown routes and methods get JSON errors too.
    let response = cluster.get("/nope").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "no_route");
    let response = cluster
        .http
        .put(cluster.url(&format!("/blobs/{id}")))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "method_not_allowed");

    // A multi-range request is answered with the whole BLOB.
    let response = cluster
        .http
        .get(cluster.url(&format!("/blobs/{id}")))
        .header("range", "bytes=0-1,3-4")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body"), pattern(10, 1));
    let response = cluster
        .http
        .get(cluster.url(&format!("/blobs/{id}")))
        .header("range", "bytes=5-2")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 416);

    // Nothing above wrote or changed anything.
    assert_eq!(cluster.needles_on_stores().await, needles_before + 3);
    let volumes_after: Value = cluster
        .get("/admin/volumes")
        .await
        .json()
        .await
        .expect("json");
    let states = |v: &Value| {
        v["volumes"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| (v["id"].clone(), v["state"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(states(&volumes_before), states(&volumes_after));

    // Slow headers: the connection is closed after the header-read timeout.
    let started = std::time::Instant::now();
    let answer = raw_request(&cluster.router_url, b"GET /health HTTP/1.1\r\nHost: x\r\n").await;
    assert!(started.elapsed() < Duration::from_millis(2_900), "{answer}");
    assert!(!answer.contains("200 OK"), "{answer}");

    // Idle body: a body that stops arriving gets 408.
    let answer = raw_request(
        &cluster.router_url,
        b"POST /blobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(cluster.needles_on_stores().await, needles_before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_failure_turns_the_volume_read_only_and_uploads_go_elsewhere() {
    let cluster = start_cluster(4).await;
    let before = pattern(5000, 3);
    let id = cluster.upload_ok(before.clone()).await;
    let parsed = router::api::BlobId::parse(&id).expect("id");
    let volume = cluster
        .directory
        .volume(parsed.volume)
        .await
        .expect("volume");
    let victim = volume.replicas[0].clone();
    let node = cluster
        .stores
        .iter()
        .find(|s| s.id == victim)
        .expect("victim is a store");
    node.cancel.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Reads rotate over the replicas; the dead one is skipped after its
    // error, before the directory even knows it is down.
    for _ in 0..4 {
        let response = cluster.get(&format!("/blobs/{id}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.expect("body"), before);
    }

    // While the directory still thinks the node is up, an upload either
    // lands on a volume without it or fails with one clear error.
    let response = cluster.upload(pattern(2000, 4), "a/b").await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    match status.as_u16() {
        201 => {}
        503 => assert_eq!(body["error"], "upload_failed", "{body}"),
        other => panic!("unexpected {other}: {body}"),
    }
    let volume = cluster
        .directory
        .volume(parsed.volume)
        .await
        .expect("volume");
    assert_ne!(volume.state.as_str(), "writable", "{volume:?}");

    // Once the node is marked down, uploads succeed on the others.
    let directory = cluster.directory.clone();
    let victim_id = victim.clone();
    cluster
        .wait_until(|| {
            let directory = directory.clone();
            let victim_id = victim_id.clone();
            async move {
                directory
                    .list_nodes()
                    .await
                    .is_ok_and(|nodes| nodes.iter().any(|n| n.id == victim_id && !n.is_up()))
            }
        })
        .await;
    for i in 0..4 {
        let data = pattern(3000, 10 + i);
        let id = cluster.upload_ok(data.clone()).await;
        let parsed = router::api::BlobId::parse(&id).expect("id");
        let volume = cluster
            .directory
            .volume(parsed.volume)
            .await
            .expect("volume");
        assert!(!volume.replicas.contains(&victim), "{volume:?}");
        let response = cluster.get(&format!("/blobs/{id}")).await;
        assert_eq!(response.bytes().await.expect("body"), data);
    }
    // The BLOB stored before the failure is still served by the survivors.
    for _ in 0..3 {
        let response = cluster.get(&format!("/blobs/{id}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.expect("body"), before);
    }
    let metrics = cluster.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("hayloft_volumes"), "{metrics}");
    assert!(
        metrics.contains(r#"hayloft_replica_failures_total{op="append"}"#),
        "{metrics}"
    );
}

/// A stale replica that no longer holds the needle answers the delete
/// with not-found; it is reported as having missed the delete all the same,
/// which moves the volume's repair epoch, so that a resync that copied the
/// needle before the delete cannot clear the replica's mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_reports_a_stale_replica_that_answers_not_found() {
    let spec = ClusterSpec {
        store_count: 3,
        heartbeat_timeout_ms: 1_500,
        // No repair pass during the test: the stale mark stays.
        repair_interval_ms: 600_000,
        heartbeat_every: Duration::from_millis(200),
        poll_every: Duration::from_millis(50),
        store_config: |_| {},
        router_config: |config| config.directory_cache_ttl_ms = 200,
    };
    let cluster: Cluster =
        api_common::start_cluster(&spec, |address, _| async move { (address, ()) }).await;
    let id = cluster.upload_ok(pattern(4000, 7)).await;
    let blob = router::api::BlobId::parse(&id).expect("id");
    let volume = cluster.directory.volume(blob.volume).await.expect("volume");
    let stale = volume.replicas[0].clone();
    let marked = cluster
        .directory
        .mark_replica_stale(blob.volume, &stale, "test", false)
        .await
        .expect("mark stale");
    assert!(!marked.missed_delete(&stale));
    let node = cluster
        .stores
        .iter()
        .find(|s| s.id == stale)
        .expect("store");
    let store =
        haystack::client::StoreClient::new(&format!("http://{}", node.address)).expect("client");
    store
        .delete_needle(blob.volume, blob.key, blob.cookie)
        .await
        .expect("delete on the stale replica alone");

    let response = cluster.delete_blob(&id).await;
    assert_eq!(response.status(), 204);
    let after = cluster.directory.volume(blob.volume).await.expect("volume");
    assert!(after.missed_delete(&stale), "{after:?}");
    assert!(
        after.repair_epoch > marked.repair_epoch,
        "{marked:?} then {after:?}"
    );
    assert_eq!(cluster.get(&format!("/blobs/{id}")).await.status(), 404);
}

/// The `hayloft_read_batch_reads_total{tier="hot"}` counter.
async fn hot_batch_reads(cluster: &Cluster) -> f64 {
    let metrics = cluster.get("/metrics").await.text().await.expect("text");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"hayloft_read_batch_reads_total{tier="hot"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_read_for_large_blobs_streams_them_at_once() {
    let cluster = start_cluster(3).await;
    let large = cluster.upload_ok(pattern(200 << 10, 3)).await;
    let blob = router::api::BlobId::parse(&large).expect("id");
    // A small BLOB of the same volume (uploads one after another mostly
    // reuse the volume the last one went to).
    let mut small = None;
    for _ in 0..64 {
        let id = cluster.upload_ok(pattern(1000, 4)).await;
        if router::api::BlobId::parse(&id).expect("id").volume == blob.volume {
            small = Some(id);
            break;
        }
    }
    let small = small.expect("a small BLOB in the large one's volume");
    let check = |id: &str, expected: Vec<u8>| {
        let path = format!("/blobs/{id}");
        let cluster = &cluster;
        async move {
            let response = cluster.get(&path).await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.bytes().await.expect("body"), expected[..]);
        }
    };
    // Each of the first large reads goes through a batch first.
    let before = hot_batch_reads(&cluster).await;
    for _ in 0..8 {
        check(&large, pattern(200 << 10, 3)).await;
    }
    let batched = hot_batch_reads(&cluster).await;
    assert_eq!(batched - before, 8.0);
    // Then they stream at once, and a small BLOB among them too.
    for _ in 0..4 {
        check(&large, pattern(200 << 10, 3)).await;
    }
    check(&small, pattern(1000, 4)).await;
    assert_eq!(hot_batch_reads(&cluster).await, batched);
    // Small reads take the volume's reads back to batches.
    for _ in 0..4 {
        check(&small, pattern(1000, 4)).await;
    }
    assert!(hot_batch_reads(&cluster).await > batched);
}

/// Rough upload throughput at concurrency 16 (1 KiB and 64 KiB BLOBs).
/// Ignored by default; run with `cargo test -p router --test api_e2e --
/// --ignored --nocapture upload_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn upload_throughput() {
    let cluster = start_cluster(3).await;
    for size in [1024usize, 64 * 1024] {
        let total = 2000usize;
        let started = std::time::Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = (0..16).map(|_| async {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                cluster.upload_ok(pattern(size, 9)).await;
            }
        });
        futures::future::join_all(workers).await;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(size, total, seconds, "upload throughput");
        eprintln!(
            "{size} B: {total} uploads in {seconds:.2} s = {:.0}/s",
            total as f64 / seconds
        );
    }
}

/// Without a directory the router still serves health and metrics, answers
/// everything else with a clear JSON error, and shuts down when cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_directory_gives_clear_errors_and_run_stops_on_cancel() {
    // A port nothing listens on.
    let (dead, dead_address) = bind().await;
    drop(dead);
    let (listener, address) = bind().await;
    let cancel = CancellationToken::new();
    let mut config = RouterConfig::new(dead_address);
    config.upload_attempts = 2;
    let server = tokio::spawn(router::api::run(config, listener, cancel.clone()));
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{address}{path}");

    let response = http.get(url("/health")).send().await.expect("health");
    assert_eq!(response.status(), 200);
    let response = http.get(url("/metrics")).send().await.expect("metrics");
    assert_eq!(response.status(), 200);

    let response = http.get(url("/admin/volumes")).send().await.expect("admin");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "directory_unavailable");

    let response = http
        .get(url("/blobs/3,01637037d6"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 502);

    let response = http
        .post(url("/blobs"))
        .body("hello")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "upload_failed");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("directory"))
    );

    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("run returns after cancel")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}
