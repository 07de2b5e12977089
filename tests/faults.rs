//! Faults against `hayloft up --spawn` (one process per node): `kill -9` of a
//! store node during a stream of uploads (reads checked while it is down), of
//! the router mid-upload (buffered and streamed bodies), and a delete while a
//! replica is down.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use common::volumes::every_volume;
use common::{
    Cluster, check_blob, directory_json, http_client, random_body, sha256, store_fingerprint,
    upload, wait_node_state, wait_until,
};

/// Sends `POST /blobs` declaring `declared` bytes but only `sent` of them,
/// counts itself in `written` once they are all written, then waits for an
/// answer: what it returns (empty if the connection ended without one).
fn partial_upload(
    address: std::net::SocketAddr,
    seed: u64,
    declared: usize,
    sent: usize,
    written: &AtomicUsize,
) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "POST /blobs HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/octet-stream\r\n\
         content-length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&random_body(1000 + seed, sent))?;
    written.fetch_add(1, Ordering::SeqCst);
    let mut answer = Vec::new();
    // A reset (the router died) ends the read like a close does.
    let _ = stream.read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Fast failure detection, so a dead node is noticed within seconds.
const FAST_HEARTBEATS: &[&str] = &[
    "--volume-size",
    "64MiB",
    "--max-blob-size",
    "32MiB",
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

/// Waits (at most 2 min) until no volume has a stale replica.
async fn wait_no_stale_replica(cluster: &Cluster, what: &str) -> anyhow::Result<()> {
    wait_until(what, Duration::from_secs(120), || async {
        let directory = cluster.node_url("directory")?;
        let volumes = every_volume(&http_client(), &format!("{directory}/volumes")).await?;
        Ok(volumes.iter().all(|volume| {
            volume["stale_replicas"]
                .as_array()
                .is_some_and(|stale| stale.is_empty())
        }))
    })
    .await
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
    // Uploads keep streaming while store-1 is gone and noticed as down, and
    // every acknowledged BLOB reads back from the two replicas left.
    let outage = std::time::Instant::now() + Duration::from_secs(3);
    let mut reads_during_outage = 0;
    while std::time::Instant::now() < outage {
        let sample: Vec<_> = {
            let acknowledged = acknowledged.lock().expect("lock");
            let step = (acknowledged.len() / 50).max(1);
            acknowledged.iter().step_by(step).cloned().collect()
        };
        for (id, size, digest) in &sample {
            check_blob(&http_client(), &cluster.router, id, *size, digest)
                .await
                .with_context(|| format!("read of {id} while store-1 was down"))?;
            reads_during_outage += 1;
        }
    }
    assert!(reads_during_outage > 0);
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
    wait_no_stale_replica(&cluster, "store-1 resynced").await?;
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

    // Uploads whose bodies stop part way, then the router dies under them:
    // two buffered (1 MiB, below the retry buffer) and two streamed (24 MiB
    // declared). The kill waits until each has written its part: a streamed
    // one has written more than loopback's socket buffers hold (about 10 MiB
    // between both ends), so the router was forwarding it to the stores.
    let address = cluster.router_address;
    let written = Arc::new(AtomicUsize::new(0));
    let partial_uploads: Vec<_> = [
        (1 << 20, 1 << 19),
        (1 << 20, 1 << 19),
        (24 << 20, 16 << 20),
        (24 << 20, 16 << 20),
    ]
    .into_iter()
    .enumerate()
    .map(|(n, (declared, sent))| {
        let written = written.clone();
        std::thread::spawn(move || partial_upload(address, n as u64, declared, sent, &written))
    })
    .collect();
    wait_until(
        "every partial body written",
        Duration::from_secs(60),
        || {
            let written = written.clone();
            async move { Ok(written.load(Ordering::SeqCst) == 4) }
        },
    )
    .await?;
    cluster.kill_node("router")?;
    for partial in partial_uploads {
        let answer = partial.join().expect("thread")?;
        assert!(answer.is_empty(), "a partial upload was answered: {answer}");
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
    assert_eq!(
        pids.len(),
        23,
        "directory, three stores, 14 f4 storage nodes, backoff, rebuilder, router, migrator, \
         coordinator"
    );
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

/// Restarts store node `id` so that its deletes, and the resyncs that
/// would bring them, hang (pause point `store-deletes`), once the
/// directory counts it up again; the new process.
async fn restart_taking_no_deletes(
    cluster: &Cluster,
    id: &str,
) -> anyhow::Result<std::process::Child> {
    cluster.kill_node(id)?;
    let child = cluster.restart_node_with(
        id,
        &[
            ("HAYLOFT_PAUSE_AT", "store-deletes"),
            ("HAYLOFT_PAUSE_MS", "600000"),
        ],
    )?;
    wait_node_state(cluster, id, "up").await?;
    Ok(child)
}

/// BLOB `id` answers `404` at every router of `routers`, six reads each
/// (each router's reads rotate through the replicas).
async fn never_served(
    client: &reqwest::Client,
    routers: &[&String],
    id: &str,
) -> anyhow::Result<()> {
    for router in routers.repeat(6) {
        let status = common::fetch(client, router, id).await?.0;
        anyhow::ensure!(status == 404, "{id} read at {router}: {status}");
    }
    Ok(())
}

/// `GET` of a needle straight from one store node (no router): its status.
async fn store_read_status(cluster: &Cluster, store: &str, id: &str) -> anyhow::Result<u16> {
    let url = store_needle_url(cluster, store, id)?;
    Ok(http_client().get(url).send().await?.status().as_u16())
}

/// The URL of BLOB `id`'s needle on one store node.
fn store_needle_url(cluster: &Cluster, store: &str, id: &str) -> anyhow::Result<String> {
    let (volume, rest) = id.split_once(',').context("id")?;
    let (key, cookie) = rest.split_at(rest.len() - 8);
    Ok(format!(
        "{}/volumes/{volume}/needles/{key}?cookie={cookie}",
        cluster.node_url(store)?
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_with_a_replica_down_stays_deleted_on_every_replica() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(FAST_HEARTBEATS).await?;
    let client = http_client();
    let mut blobs = Vec::new();
    for n in 0..12u64 {
        let body = random_body(500 + n, 3_000 + n as usize);
        let id = upload(&client, &cluster.router, body.clone()).await?;
        blobs.push((id, body));
    }
    let delete = |id: String| {
        let client = client.clone();
        let url = format!("{}/blobs/{id}", cluster.router);
        async move { anyhow::Ok(client.delete(url).send().await?.status().as_u16()) }
    };

    cluster.kill_node("store-2")?;
    // The backoff node too, to be removed below: it keeps no data.
    cluster.kill_node("backoff")?;
    // At once, before the directory has noticed (the delete to store-2
    // fails), and again once store-2 is marked down (it is not asked).
    assert_eq!(delete(blobs[0].0.clone()).await?, 204);
    wait_until(
        "store-2 and backoff marked down",
        Duration::from_secs(60),
        || async {
            let nodes = directory_json(&cluster, "/nodes").await?;
            let down = |id: &str| nodes.iter().any(|n| n["id"] == id && n["state"] == "down");
            Ok(down("store-2") && down("backoff"))
        },
    )
    .await?;
    assert_eq!(delete(blobs[1].0.clone()).await?, 204);

    // `hayloft node remove`: a down node that keeps nothing goes; one that
    // keeps a replica, an up one and an unknown one stay, with the reason.
    let remove = |id: &str| -> anyhow::Result<(bool, String)> {
        let output = std::process::Command::new(common::hayloft_bin())
            .args(["node", "remove", id, "--router", &cluster.router])
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), text))
    };
    for (id, reason) in [
        ("store-2", "a replica"),
        ("store-1", "it is up"),
        ("nobody", "unknown node"),
    ] {
        let (ok, text) = remove(id)?;
        anyhow::ensure!(!ok && text.contains(reason), "{id}: {text}");
    }
    let (ok, text) = remove("backoff")?;
    anyhow::ensure!(ok && text.contains("removed"), "backoff: {text}");
    let nodes = directory_json(&cluster, "/nodes").await?;
    anyhow::ensure!(nodes.iter().all(|n| n["id"] != "backoff"), "{nodes:?}");
    anyhow::ensure!(nodes.iter().any(|n| n["id"] == "store-2"), "{nodes:?}");
    for (n, (id, body)) in blobs.iter().enumerate() {
        let (status, got) = common::fetch(&client, &cluster.router, id).await?;
        match n {
            0 | 1 => assert_eq!(status, 404, "deleted {id} while store-2 is down"),
            _ => assert!(status == 200 && got == *body, "{id}: {status}"),
        }
    }
    // The directory knows store-2 missed them, so its copy is never read
    // until it is resynced.
    let directory = cluster.node_url("directory")?;
    let volumes = every_volume(&http_client(), &format!("{directory}/volumes")).await?;
    for (id, _) in &blobs[..2] {
        let vid: u64 = id.split(',').next().context("vid")?.parse()?;
        let volume = volumes.iter().find(|v| v["id"] == vid).context("volume")?;
        assert!(
            volume["missed_deletes"]
                .as_array()
                .is_some_and(|m| m.iter().any(|n| n == "store-2")),
            "{volume}"
        );
    }

    let _store_2 = cluster.restart_node("store-2")?;
    wait_no_stale_replica(&cluster, "store-2 resynced").await?;
    for store in ["store-1", "store-2", "store-3"] {
        for (n, (id, _)) in blobs.iter().enumerate() {
            let status = store_read_status(&cluster, store, id).await?;
            let expected = if n < 2 { 404 } else { 200 };
            assert_eq!(status, expected, "{id} on {store}");
        }
    }
    for (id, _) in &blobs[..2] {
        assert_eq!(common::fetch(&client, &cluster.router, id).await?.0, 404);
    }

    // A replica that misses a delete but still serves reads (its deletes,
    // and the resyncs that would bring them, held past the router's replica
    // timeout): reported, and no router
    // reads the BLOB from it afterwards, not even a second one that read it
    // just before the delete (and whose entries last a minute).
    let (_second, second) = cluster.start_router_with("router-2", |config| {
        config.insert("directory_cache_ttl_ms".into(), 60_000.into());
    })?;
    let _slow = restart_taking_no_deletes(&cluster, "store-3").await?;
    let (id, body) = &blobs[2];
    let (status, got) = common::fetch(&client, &second, id).await?;
    anyhow::ensure!(
        status == 200 && got == *body,
        "{id} before the delete: {status}"
    );
    assert_eq!(delete(id.clone()).await?, 204);
    never_served(&client, &[&cluster.router, &second], id).await?;

    // A retried delete whose first try reached two replicas only (as
    // here, straight on the stores), and whose retry the third fails too:
    // the two say `not_found`, and the third is reported before the `404`,
    // so that it serves the BLOB to no router.
    cluster.kill_node("store-3")?;
    let _store_3 = cluster.restart_node("store-3")?;
    wait_no_stale_replica(&cluster, "store-3 resynced").await?;
    let _slow = restart_taking_no_deletes(&cluster, "store-3").await?;
    let (id, body) = &blobs[3];
    for store in ["store-1", "store-2"] {
        let url = store_needle_url(&cluster, store, id)?;
        let status = http_client().delete(url).send().await?.status();
        anyhow::ensure!(status == 204, "{id} deleted on {store}: {status}");
    }
    // The second router's entry, read now, has store-3 fresh.
    let (status, got) = common::fetch(&client, &second, id).await?;
    anyhow::ensure!(
        status == 404 || (status == 200 && got == *body),
        "{id} before the retry: {status}"
    );
    assert_eq!(delete(id.clone()).await?, 404);
    never_served(&client, &[&cluster.router, &second], id).await?;
    Ok(())
}
