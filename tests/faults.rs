//! Faults against `hayloft up --spawn` (one process per node): `kill -9` of a
//! store node during a stream of uploads, and of the router mid-upload.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use common::{
    Cluster, check_blob, http_client, random_body, raw_request, sha256, store_fingerprint, upload,
    wait_until,
};

/// Fast failure detection, so a dead node is noticed within seconds.
const FAST_HEARTBEATS: &[&str] = &[
    "--volume-size",
    "16MiB",
    "--max-blob-size",
    "4MiB",
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "2s",
    "--repair-interval",
    "500ms",
];

type Acknowledged = Arc<Mutex<Vec<(String, usize, [u8; 32])>>>;

/// Uploaders that keep going until `stop`: BLOBs of 0–64 KiB; every `201`
/// is recorded with the SHA-256 of what was sent.
fn start_uploaders(
    router: &str,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    acknowledged: &Acknowledged,
    failures: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = http_client();
    (0..tasks)
        .map(|task| {
            let (client, router) = (client.clone(), router.to_owned());
            let (stop, acknowledged, failures) =
                (stop.clone(), acknowledged.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let seed = ((task as u64) << 40) | n;
                    let size = (seed.wrapping_mul(2_654_435_761) % 65_536) as usize;
                    let body = random_body(seed, size);
                    let digest = sha256(&body);
                    match upload(&client, &router, body).await {
                        Ok(id) => acknowledged.lock().expect("lock").push((id, size, digest)),
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

async fn check_acknowledged(router: &str, acknowledged: &Acknowledged) -> anyhow::Result<()> {
    let blobs = acknowledged.lock().expect("lock").clone();
    let client = http_client();
    for (id, size, digest) in &blobs {
        check_blob(&client, router, id, *size, digest).await?;
    }
    Ok(())
}

async fn directory_json(cluster: &Cluster, path: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let url = format!("{}{path}", cluster.node_url("directory")?);
    let value: serde_json::Value = http_client().get(url).send().await?.json().await?;
    value
        .as_array()
        .cloned()
        .context("directory answered a non-array")
}

async fn count_at_least(acknowledged: &Acknowledged, target: usize) -> anyhow::Result<bool> {
    Ok(acknowledged.lock().expect("lock").len() >= target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_store_node_during_uploads_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(FAST_HEARTBEATS).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Acknowledged = Arc::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let uploaders = start_uploaders(&cluster.router, 8, &stop, &acknowledged, &failures);

    wait_until("200 uploads", Duration::from_secs(120), || {
        count_at_least(&acknowledged, 200)
    })
    .await?;
    cluster.kill_node("store-1")?;
    // Uploads keep streaming while store-1 is gone and noticed as down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _restarted = cluster.restart_node("store-1")?;
    let before = acknowledged.lock().expect("lock").len();
    wait_until(
        "uploads resume after the restart",
        Duration::from_secs(120),
        || count_at_least(&acknowledged, before + 200),
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    for uploader in uploaders {
        uploader.await?;
    }
    eprintln!(
        "acknowledged {} uploads; {} failed while store-1 was away",
        acknowledged.lock().expect("lock").len(),
        failures.load(Ordering::Relaxed)
    );

    // The restarted replica catches up: no stale replica is left.
    wait_until("store-1 resynced", Duration::from_secs(120), || async {
        let volumes = directory_json(&cluster, "/volumes").await?;
        Ok(volumes.iter().all(|volume| {
            volume["stale_replicas"]
                .as_array()
                .is_some_and(|stale| stale.is_empty())
        }))
    })
    .await?;
    check_acknowledged(&cluster.router, &acknowledged).await?;

    // Now the resynced store-1 must hold everything by itself.
    cluster.kill_node("store-2")?;
    cluster.kill_node("store-3")?;
    wait_until(
        "store-2 and store-3 marked down",
        Duration::from_secs(60),
        || async {
            let nodes = directory_json(&cluster, "/nodes").await?;
            Ok(nodes
                .iter()
                .filter(|node| node["id"] == "store-2" || node["id"] == "store-3")
                .all(|node| node["state"] == "down"))
        },
    )
    .await?;
    check_acknowledged(&cluster.router, &acknowledged).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_router_mid_upload_never_serves_half_a_blob() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(FAST_HEARTBEATS).await?;
    let client = http_client();
    let acknowledged: Acknowledged = Arc::default();
    for n in 0..50u64 {
        let body = random_body(n, (n as usize) * 1000);
        let digest = sha256(&body);
        let id = upload(&client, &cluster.router, body.clone()).await?;
        acknowledged
            .lock()
            .expect("lock")
            .push((id, body.len(), digest));
    }
    let before = store_fingerprint(&cluster).await?;

    // Uploads whose bodies stop half way, then the router dies under them.
    let address = cluster.router_address;
    let half_uploads: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                let body = random_body(1000 + n, 2 * 1024 * 1024);
                let mut request = format!(
                    "POST /blobs HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                request.extend_from_slice(&body[..body.len() / 2]);
                raw_request(address, &request, false)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.kill_node("router")?;
    for half in half_uploads {
        let (status, answer) = half.join().expect("thread");
        assert!(
            status.is_none_or(|status| status >= 400),
            "a half upload was answered {status:?}: {answer}"
        );
    }
    assert_eq!(
        store_fingerprint(&cluster).await?,
        before,
        "half a BLOB reached a store node"
    );

    // Then a stream of whole uploads, the router killed in the middle of it.
    let _router = cluster.restart_node("router")?;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let uploaders = start_uploaders(&cluster.router, 8, &stop, &acknowledged, &failures);
    wait_until("100 more uploads", Duration::from_secs(120), || {
        count_at_least(&acknowledged, 150)
    })
    .await?;
    cluster.kill_node("router")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _router = cluster.restart_node("router")?;
    let before = acknowledged.lock().expect("lock").len();
    wait_until("uploads resume", Duration::from_secs(120), || {
        count_at_least(&acknowledged, before + 100)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for uploader in uploaders {
        uploader.await?;
    }
    check_acknowledged(&cluster.router, &acknowledged).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_nodes_die_with_their_parent() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(&[]).await?;
    let pids: Vec<libc::pid_t> = cluster
        .nodes()?
        .iter()
        .map(|node| node["pid"].as_i64().map(|pid| pid as libc::pid_t))
        .collect::<Option<_>>()
        .context("pids")?;
    assert_eq!(pids.len(), 5, "directory, three stores, router");
    // kill -9 the supervisor alone (not its process group).
    common::signal(cluster.supervisor_pid(), libc::SIGKILL);
    wait_until("every child gone", Duration::from_secs(30), || {
        let pids = pids.clone();
        async move {
            // SAFETY: kill(2) with signal 0 only checks for existence.
            Ok(pids.iter().all(|pid| unsafe { libc::kill(*pid, 0) } != 0))
        }
    })
    .await?;
    Ok(())
}
