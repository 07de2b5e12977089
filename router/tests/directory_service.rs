//! The directory HTTP service on 127.0.0.1:0, driven through
//! `DirectoryClient` (and raw HTTP for malformed requests), with real store
//! nodes in-process: every endpoint, JSON errors, restart with state and a
//! heartbeat grace period, and down-marking of silent nodes.

mod directory_common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use directory_common::{
    eventually, spawn_heartbeats, spawn_steady_heartbeats, start_directory, start_store,
};
use router::directory::{DirectoryConfig, NodeRegistration, NodeRole, NodeState, VolumeState};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_through_the_client() {
    let root = tempfile::tempdir().expect("tempdir");
    let stores = [
        start_store(root.path(), "store-1", "r1").await,
        start_store(root.path(), "store-2", "r2").await,
        start_store(root.path(), "store-3", "r3").await,
    ];
    let config = DirectoryConfig::new(root.path().join("directory"));
    let directory = start_directory(config.clone()).await;
    let client = directory.client.clone();

    // Two racks: allocation fails cleanly.
    client
        .register(&stores[0].registration())
        .await
        .expect("register");
    client
        .register(&stores[1].registration())
        .await
        .expect("register");
    let err = client.allocate_volume().await.expect_err("two racks");
    assert_eq!(
        (err.status(), err.code()),
        (Some(503), Some("not_enough_racks"))
    );

    let record = client
        .register(&stores[2].registration())
        .await
        .expect("register");
    assert_eq!(
        (record.state, record.role),
        (NodeState::Up, NodeRole::Store)
    );
    let router_node = NodeRegistration {
        id: "router-1".into(),
        role: NodeRole::Router,
        rack: "r1".into(),
        datacenter: "dc1".into(),
        address: "127.0.0.1:1".into(),
    };
    client
        .register(&router_node)
        .await
        .expect("register router");
    let nodes = client.list_nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 4);
    let beat = client.heartbeat("store-1").await.expect("heartbeat");
    assert!(beat.last_heartbeat_ms >= nodes[1].last_heartbeat_ms);
    let err = client.heartbeat("ghost").await.expect_err("unknown node");
    assert!(err.is_not_found());
    assert_eq!(err.code(), Some("unknown_node"));

    // Allocation creates the replicas on the store nodes.
    let volume = client.allocate_volume().await.expect("allocate");
    assert_eq!(volume.state, VolumeState::Writable);
    assert_eq!(volume.replicas.len(), 3);
    for store in &stores {
        let status = store
            .client
            .volume_status(volume.id)
            .await
            .expect("replica exists");
        assert_eq!(status.needle_count, 0);
    }
    assert_eq!(client.volume(volume.id).await.expect("get"), volume);
    assert_eq!(
        client.list_volumes().await.expect("list"),
        std::slice::from_ref(&volume)
    );
    let err = client.volume(999).await.expect_err("unknown volume");
    assert_eq!(
        (err.status(), err.code()),
        (Some(404), Some("unknown_volume"))
    );

    // Leases.
    let a = client.lease_keys(volume.id, 100).await.expect("lease");
    let b = client.lease_keys(volume.id, 1).await.expect("lease");
    assert_eq!((a.start, a.end, b.start, b.end), (1, 101, 101, 102));
    let err = client.lease_keys(volume.id, 0).await.expect_err("zero");
    assert_eq!(err.code(), Some("bad_request"));

    // Stale replicas and state changes.
    let stale = client
        .mark_replica_stale(volume.id, &volume.replicas[0], "append failed", false)
        .await
        .expect("stale");
    assert_eq!(stale.state, VolumeState::ReadOnly);
    assert_eq!(stale.stale_replicas, [volume.replicas[0].clone()]);
    let err = client
        .mark_replica_stale(volume.id, "router-1", "nope", false)
        .await
        .expect_err("not a replica");
    assert_eq!(err.code(), Some("not_a_replica"));
    let err = client
        .set_volume_state(volume.id, VolumeState::Writable, "test")
        .await
        .expect_err("stale replica");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("invalid_transition"))
    );
    let err = client.lease_keys(volume.id, 1).await.expect_err("readonly");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("not_writable"))
    );
    let locked = client
        .set_volume_state(volume.id, VolumeState::Locked, "full")
        .await
        .expect("lock");
    assert_eq!(locked.state, VolumeState::Locked);
    assert!(locked.locked_ms.is_some());

    raw_requests_get_json_errors(&directory.address, config.max_body_bytes).await;

    // Restart on the same data: everything is still there, and nothing is
    // marked down during the grace period.
    let before = client.list_volumes().await.expect("list");
    directory.stop().await;
    let directory = start_directory(config).await;
    let client = directory.client;
    // The locked volume may have been repaired meanwhile; compare what is stable.
    let after = client.list_volumes().await.expect("list");
    assert_eq!(after.len(), before.len());
    assert_eq!(after[0].replicas, before[0].replicas);
    assert_eq!(after[0].state, VolumeState::Locked);
    let nodes = client.list_nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.state == NodeState::Up), "{nodes:?}");
    let next = client
        .lease_keys(volume.id, 1)
        .await
        .expect_err("locked volumes lease nothing");
    assert_eq!(
        (next.status(), next.code()),
        (Some(409), Some("not_writable"))
    );
    let fresh = client.allocate_volume().await.expect("allocate");
    assert!(fresh.id > volume.id);
    assert_eq!(
        client.lease_keys(fresh.id, 5).await.expect("lease").start,
        1
    );
    // Migration jobs, walked beside the volumes in id order.
    client
        .claim_migration(volume.id, "test", 60_000)
        .await
        .expect("claim");
    let mut jobs = client.migration_pages();
    let job = jobs.job_of(volume.id).await.expect("walk");
    assert_eq!(job.map(|j| j.volume), Some(volume.id));
    assert!(jobs.job_of(fresh.id).await.expect("walk").is_none());
    assert!(jobs.next().await.expect("the end").is_none());
    directory.cancel.cancel();
    for store in stores {
        store.cancel.cancel();
        store.task.await.expect("store stops");
    }
}

async fn raw_requests_get_json_errors(address: &str, max_body_bytes: usize) {
    let http = reqwest::Client::new();
    let base = format!("http://{address}");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.post(format!("{base}/nodes")).body("{not json"),
            400,
            "bad_request",
        ),
        (
            http.post(format!("{base}/nodes")).body(r#"{"id":"x"}"#),
            400,
            "bad_request",
        ),
        (
            http.post(format!("{base}/volumes/1/leases")).body(format!(
                r#"{{"count":1,"pad":"{}"}}"#,
                "x".repeat(max_body_bytes)
            )),
            413,
            "payload_too_large",
        ),
        (http.get(format!("{base}/volumes/abc")), 400, "bad_request"),
        (
            http.get(format!("{base}/volumes/99999999999")),
            400,
            "bad_request",
        ),
        (http.get(format!("{base}/nowhere")), 404, "not_found"),
        (
            http.delete(format!("{base}/volumes")),
            405,
            "method_not_allowed",
        ),
        (
            http.post(format!("{base}/volumes/1/state"))
                .body(r#"{"state":"warmish"}"#),
            400,
            "bad_request",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.expect("send");
        assert_eq!(response.status().as_u16(), status);
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_nodes_are_marked_down_and_their_volumes_turn_readonly() {
    let root = tempfile::tempdir().expect("tempdir");
    let stores = [
        start_store(root.path(), "s1", "r1").await,
        start_store(root.path(), "s2", "r2").await,
        start_store(root.path(), "s3", "r3").await,
    ];
    let mut config = DirectoryConfig::new(root.path().join("directory"));
    // Twenty heartbeats per timeout: a busy machine does not make a
    // heartbeating node look silent.
    config.heartbeat_timeout_ms = 2_000;
    // Keep repair out of the way: this test watches down-marking only.
    config.repair_interval_ms = 3_600_000;
    let directory = start_directory(config).await;
    let client = directory.client.clone();
    let cancel = CancellationToken::new();
    for store in &stores {
        client
            .register(&store.registration())
            .await
            .expect("register");
    }
    let s3_alive = Arc::new(AtomicBool::new(true));
    for store in &stores {
        let enabled = if store.id == "s3" {
            Arc::clone(&s3_alive)
        } else {
            Arc::new(AtomicBool::new(true))
        };
        spawn_heartbeats(
            client.clone(),
            store.id.clone(),
            Duration::from_millis(100),
            enabled,
            cancel.clone(),
        );
    }
    let volume = client.allocate_volume().await.expect("allocate");
    assert_eq!(volume.state, VolumeState::Writable);

    s3_alive.store(false, std::sync::atomic::Ordering::SeqCst);
    let down = eventually(Duration::from_secs(20), "s3 marked down", || {
        let client = client.clone();
        async move {
            let volume = client.volume(volume.id).await.ok()?;
            (volume.state == VolumeState::ReadOnly).then_some(volume)
        }
    })
    .await;
    // Marking a node down makes its replicas stale for good: only s3's is,
    // so the nodes that kept heartbeating were never marked down, through
    // the start-up grace and the down-marker's ticks until s3 went.
    assert_eq!(down.stale_replicas, ["s3"]);
    let nodes = client.list_nodes().await.expect("nodes");
    let state_of = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| n.state);
    assert_eq!(state_of("s3"), Some(NodeState::Down));
    assert_eq!(state_of("s1"), Some(NodeState::Up));

    // Back up, but still stale: the volume stays readonly.
    s3_alive.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(10), "s3 back up", || {
        let client = client.clone();
        async move {
            let nodes = client.list_nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.id == "s3" && n.state == NodeState::Up)
                .then_some(())
        }
    })
    .await;
    let volume = client.volume(volume.id).await.expect("get");
    assert_eq!(
        (volume.state, volume.stale_replicas),
        (VolumeState::ReadOnly, vec!["s3".into()])
    );
    cancel.cancel();
    directory.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_directory_gives_every_node_a_grace_period() {
    use router::directory::{RedbDirectory, conformance, now_ms};
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("directory");
    {
        // Nodes last heard from a minute ago, as after a long directory outage.
        let dir = RedbDirectory::open(&data_dir).expect("open");
        let long_ago = now_ms() - 60_000;
        conformance::register_stores(&dir, &[("s1", "r1"), ("s2", "r2"), ("s3", "r3")], long_ago);
    }
    let mut config = DirectoryConfig::new(&data_dir);
    // The down-marker ticks every quarter of it (1.5 s).
    const TIMEOUT: Duration = Duration::from_secs(6);
    config.heartbeat_timeout_ms = TIMEOUT.as_millis() as u64;
    let started = std::time::Instant::now();
    let directory = start_directory(config).await;
    let client = directory.client.clone();
    // The directory serves: its down-marker started before this.
    let serving = std::time::Instant::now();
    let cancel = CancellationToken::new();
    for id in ["s1", "s2"] {
        spawn_steady_heartbeats(&client, id, &cancel);
    }
    // s3 never heartbeats, and was last heard from a minute ago: without
    // the grace it goes down at the first tick. Watch until it goes down,
    // noting whether a request sent after a tick saw it up.
    let up_after_a_tick = Arc::new(AtomicBool::new(false));
    let nodes = eventually(Duration::from_secs(30), "s3 down", || {
        let client = client.clone();
        let sent = std::time::Instant::now();
        let after_a_tick = sent >= serving + TIMEOUT / 4 + Duration::from_millis(500);
        let up_after_a_tick = up_after_a_tick.clone();
        async move {
            let nodes = client.list_nodes().await.ok()?;
            let s3 = nodes.iter().find(|n| n.id == "s3")?;
            if s3.state == NodeState::Up {
                if after_a_tick {
                    up_after_a_tick.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                return None;
            }
            Some(nodes)
        }
    })
    .await;
    assert!(
        up_after_a_tick.load(std::sync::atomic::Ordering::SeqCst),
        "the silent node stayed up past the down-marker's first tick (the grace)"
    );
    assert!(
        started.elapsed() >= TIMEOUT,
        "down only once the grace was over"
    );
    let up: Vec<&str> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Up)
        .map(|n| n.id.as_str())
        .collect();
    assert_eq!(up, ["s1", "s2"]);
    cancel.cancel();
    directory.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = DirectoryConfig::new(root.path());
    config.server.header_read_timeout_ms = 300;
    let directory = start_directory(config).await;
    let mut stream = tokio::net::TcpStream::connect(&directory.address)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    assert!(
        read.is_ok(),
        "the directory closes a connection stuck in its headers"
    );
    assert!(!String::from_utf8_lossy(&buffer).contains("200 OK"));
    directory.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = DirectoryConfig::new(root.path());
    config.heartbeat_timeout_ms = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = router::directory::run(config, listener, CancellationToken::new())
        .await
        .expect_err("zero timeout");
    assert_eq!(err.code(), "invalid_config");
    let parsed: Result<DirectoryConfig, _> =
        serde_json::from_str(r#"{"data_dir":"d","heartbeat_timeout_msec":5}"#);
    assert!(parsed.is_err(), "unknown keys are refused");
    let parsed: DirectoryConfig = serde_json::from_str(r#"{"data_dir":"d"}"#).expect("defaults");
    assert_eq!(parsed, DirectoryConfig::new("d"));
}
