//! Replica repair end to end: a directory service and three real store nodes
//! in-process. A replica that missed writes and deletes while its node was
//! down, one the router reported stale, and a volume whose replicas are all
//! stale (one whose replicas all missed a delete among them) are each
//! resynchronised from a peer by Haystack's bulk sync before the directory
//! lets anyone read them again.

mod directory_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use directory_common::{
    TestStore, eventually, spawn_heartbeats, spawn_steady_heartbeats, start_directory, start_store,
};
use router::directory::{
    Directory, DirectoryClient, DirectoryConfig, LogicalVolume, NodeRegistration, RedbDirectory,
    VolumeState, now_ms,
};
use tokio_util::sync::CancellationToken;

const COOKIE: u32 = 0x0bad_cafe;

fn config(root: &std::path::Path) -> DirectoryConfig {
    let mut config = DirectoryConfig::new(root.join("directory"));
    config.heartbeat_timeout_ms = 600;
    config.repair_interval_ms = 100;
    config
}

async fn start_stores(root: &std::path::Path) -> Vec<TestStore> {
    vec![
        start_store(root, "s1", "r1").await,
        start_store(root, "s2", "r2").await,
        start_store(root, "s3", "r3").await,
    ]
}

fn store<'a>(stores: &'a [TestStore], id: &str) -> &'a TestStore {
    stores.iter().find(|s| s.id == id).expect("store")
}

async fn append(store: &TestStore, vid: u32, key: u64, data: &'static [u8]) {
    store
        .client
        .append_needle_bytes(vid, key, COOKIE, "text/plain", Bytes::from_static(data))
        .await
        .expect("append");
}

async fn read(store: &TestStore, vid: u32, key: u64) -> Option<Bytes> {
    match store.client.read_needle_bytes(vid, key, COOKIE).await {
        Ok(needle) => Some(needle.data),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("read {vid}/{key} from {}: {e}", store.id),
    }
}

/// Prepares the directory file offline: the nodes registered as
/// `registrations` say, one volume with a replica on every store, and every
/// replica stale (and as having missed a delete if `missed_delete`).
async fn all_stale_volume(
    root: &std::path::Path,
    stores: &[TestStore],
    registrations: Vec<NodeRegistration>,
    missed_delete: bool,
) -> u32 {
    let dir = RedbDirectory::open(&root.join("directory")).expect("open");
    for registration in registrations {
        dir.register_node(registration, now_ms()).expect("register");
    }
    let volume = dir.allocate_volume(now_ms()).expect("allocate");
    for s in stores {
        s.client
            .create_volume(volume.id)
            .await
            .expect("create replica");
    }
    for replica in &volume.replicas {
        dir.mark_replica_stale(volume.id, replica, missed_delete)
            .expect("stale");
    }
    volume.id
}

async fn wait_repaired(client: &DirectoryClient, vid: u32) -> LogicalVolume {
    eventually(Duration::from_secs(30), "replicas repaired", || {
        let client = client.clone();
        async move {
            let volume = client.volume(vid).await.ok()?;
            volume.stale_replicas.is_empty().then_some(volume)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_from_downtime_is_resynchronised() {
    let root = tempfile::tempdir().expect("tempdir");
    let stores = start_stores(root.path()).await;
    let directory = start_directory(config(root.path())).await;
    let client = directory.client.clone();
    let cancel = CancellationToken::new();
    let s3_alive = Arc::new(AtomicBool::new(true));
    for s in &stores {
        client.register(&s.registration()).await.expect("register");
        let enabled = if s.id == "s3" {
            Arc::clone(&s3_alive)
        } else {
            Arc::new(AtomicBool::new(true))
        };
        let period = Duration::from_millis(100);
        spawn_heartbeats(
            client.clone(),
            s.id.clone(),
            period,
            enabled,
            cancel.clone(),
        );
    }
    let volume = client.allocate_volume().await.expect("allocate");
    let vid = volume.id;
    let lease = client.lease_keys(vid, 10).await.expect("lease");
    let (k1, k2) = (lease.start, lease.start + 1);
    for s in &stores {
        append(s, vid, k1, b"first").await;
    }
    // s3 misses an append...
    append(store(&stores, "s1"), vid, k2, b"second").await;
    append(store(&stores, "s2"), vid, k2, b"second").await;

    // ...goes silent and is marked down...
    s3_alive.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(20), "s3 stale", || {
        let client = client.clone();
        async move { client.volume(vid).await.ok()?.is_stale("s3").then_some(()) }
    })
    .await;
    // ...and misses a delete while down.
    for id in ["s1", "s2"] {
        store(&stores, id)
            .client
            .delete_needle(vid, k1, COOKIE)
            .await
            .expect("delete");
    }
    assert_eq!(
        read(store(&stores, "s3"), vid, k2).await,
        None,
        "s3 really is behind"
    );

    // Back up: the repair loop resyncs it and clears the stale mark.
    s3_alive.store(true, Ordering::SeqCst);
    let repaired = wait_repaired(&client, vid).await;
    assert_eq!(
        repaired.state,
        VolumeState::Locked,
        "repair seals the volume"
    );
    assert!(repaired.locked_ms.is_some());
    let s3 = store(&stores, "s3");
    assert_eq!(read(s3, vid, k2).await.as_deref(), Some(&b"second"[..]));
    assert_eq!(read(s3, vid, k1).await, None, "the missed delete arrived");
    for s in &stores {
        let status = s.client.volume_status(vid).await.expect("status");
        assert!(status.locked || status.read_only, "{}: {status:?}", s.id);
        assert_eq!(status.last_key, Some(k2));
    }
    cancel.cancel();
    directory.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reported_stale_is_resynchronised() {
    let root = tempfile::tempdir().expect("tempdir");
    let stores = start_stores(root.path()).await;
    let directory = start_directory(config(root.path())).await;
    let client = directory.client.clone();
    let cancel = CancellationToken::new();
    for s in &stores {
        client.register(&s.registration()).await.expect("register");
        spawn_steady_heartbeats(&client, &s.id, &cancel);
    }
    let volume = client.allocate_volume().await.expect("allocate");
    let vid = volume.id;
    let key = client.lease_keys(vid, 1).await.expect("lease").start;
    let (failed, healthy) = (&volume.replicas[0], &volume.replicas[1..]);
    for id in healthy {
        append(store(&stores, id), vid, key, b"payload").await;
    }
    let stale = client
        .mark_replica_stale(vid, failed, "append failed", false)
        .await
        .expect("report");
    assert_eq!(stale.state, VolumeState::ReadOnly);
    let repaired = wait_repaired(&client, vid).await;
    assert_eq!(repaired.state, VolumeState::Locked);
    assert_eq!(
        read(store(&stores, failed), vid, key).await.as_deref(),
        Some(&b"payload"[..])
    );
    // The repair loop's audit records what the stores report.
    let sized = eventually(Duration::from_secs(20), "sizes recorded", || {
        let client = client.clone();
        async move {
            let volume = client.volume(vid).await.ok()?;
            (volume.needle_count == 1).then_some(volume)
        }
    })
    .await;
    assert!(sized.size_bytes > 0);
    cancel.cancel();
    directory.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_replica_is_stale_the_most_complete_one_is_the_source() {
    let root = tempfile::tempdir().expect("tempdir");
    let stores = start_stores(root.path()).await;
    let registrations = stores.iter().map(TestStore::registration).collect();
    let vid = all_stale_volume(root.path(), &stores, registrations, false).await;
    // s2 has the most: keys 1..=3; s1 has 1..=2; s3 has 1.
    for (id, keys) in [("s1", 2), ("s2", 3), ("s3", 1)] {
        for key in 1..=keys {
            append(store(&stores, id), vid, key, b"data").await;
        }
    }
    let directory = start_directory(config(root.path())).await;
    let client = directory.client.clone();
    let cancel = CancellationToken::new();
    for s in &stores {
        spawn_steady_heartbeats(&client, &s.id, &cancel);
    }
    let repaired = wait_repaired(&client, vid).await;
    assert_eq!(repaired.state, VolumeState::Locked);
    for s in &stores {
        let status = s.client.volume_status(vid).await.expect("status");
        assert_eq!(status.last_key, Some(3), "{} synced from s2", s.id);
        assert_eq!(read(s, vid, 3).await.as_deref(), Some(&b"data"[..]));
    }
    cancel.cancel();
    directory.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_replica_missed_a_delete_the_source_takes_them_all_first() {
    let root = tempfile::tempdir().expect("tempdir");
    let stores = start_stores(root.path()).await;
    // s3 is registered at an address nothing listens on: it cannot be asked.
    let silent = "127.0.0.1:1".to_owned();
    let registrations = stores
        .iter()
        .map(|s| {
            let mut registration = s.registration();
            if s.id == "s3" {
                registration.address = silent.clone();
            }
            registration
        })
        .collect();
    let vid = all_stale_volume(root.path(), &stores, registrations, true).await;
    // Keys 1..=4 everywhere, key 5 on s2 only (the most complete, so the
    // source). Acknowledged deletes, none on s2: key 1 on s1, key 2 on s3,
    // key 3 on s1 and s3.
    for s in &stores {
        let last = if s.id == "s2" { 5 } else { 4 };
        for key in 1..=last {
            append(s, vid, key, b"data").await;
        }
    }
    for (id, key) in [("s1", 1), ("s3", 2), ("s1", 3), ("s3", 3)] {
        store(&stores, id)
            .client
            .delete_needle(vid, key, COOKIE)
            .await
            .expect("delete");
    }
    let directory = start_directory(config(root.path())).await;
    let client = directory.client.clone();
    let cancel = CancellationToken::new();
    for id in ["s1", "s2"] {
        spawn_steady_heartbeats(&client, id, &cancel);
    }
    // s3, unreachable, goes down; many passes later nobody serves yet,
    // since s3 alone holds the delete of key 2.
    eventually(Duration::from_secs(20), "s3 down", || {
        let client = client.clone();
        async move {
            let nodes = client.list_nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.id == "s3" && !n.is_up())
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let waiting = client.volume(vid).await.expect("volume");
    assert_eq!(
        waiting.stale_replicas.len(),
        3,
        "a replica became fresh while a delete it missed was out of reach: {waiting:?}"
    );
    client
        .register(&store(&stores, "s3").registration())
        .await
        .expect("register s3 at its address");
    spawn_steady_heartbeats(&client, "s3", &cancel);
    wait_repaired(&client, vid).await;
    for s in &stores {
        for key in 1..=3 {
            assert_eq!(
                read(s, vid, key).await,
                None,
                "{}: key {key} came back",
                s.id
            );
        }
        for key in 4..=5 {
            assert_eq!(
                read(s, vid, key).await.as_deref(),
                Some(&b"data"[..]),
                "{}",
                s.id
            );
        }
    }
    cancel.cancel();
    directory.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replica_is_replaced_from_a_peer() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut stores = start_stores(root.path()).await;
    // An old volume (past the audit's allocation grace), on every store.
    let (vid, replicas) = {
        let dir = RedbDirectory::open(&root.path().join("directory")).expect("open");
        for s in &stores {
            dir.register_node(s.registration(), now_ms())
                .expect("register");
        }
        let volume = dir.allocate_volume(now_ms() - 120_000).expect("allocate");
        (volume.id, volume.replicas)
    };
    assert_eq!(replicas.len(), 3);
    for s in &stores {
        s.client.create_volume(vid).await.expect("create replica");
        append(s, vid, 1, b"precious").await;
    }
    let directory = start_directory(config(root.path())).await;
    let client = directory.client.clone();
    let cancel = CancellationToken::new();
    for s in &stores {
        spawn_steady_heartbeats(&client, &s.id, &cancel);
    }
    // s3's disk is lost: it comes back quickly (never marked down), empty,
    // at a new address.
    let old = stores.pop().expect("s3");
    old.cancel.cancel();
    old.task.await.expect("s3 stops");
    let fresh = start_store(&root.path().join("replacement"), "s3", "r3").await;
    assert!(
        fresh.client.volume_status(vid).await.is_err(),
        "the new disk is empty"
    );
    client
        .register(&fresh.registration())
        .await
        .expect("re-register");
    let data = eventually(Duration::from_secs(30), "replica replaced", || {
        let fresh = &fresh;
        async move {
            let needle = fresh.client.read_needle_bytes(vid, 1, COOKIE).await.ok()?;
            Some(needle.data)
        }
    })
    .await;
    assert_eq!(&data[..], b"precious");
    let repaired = wait_repaired(&client, vid).await;
    assert_eq!(
        repaired.state,
        VolumeState::Locked,
        "the audit marked it stale first"
    );
    cancel.cancel();
    directory.stop().await;
}
