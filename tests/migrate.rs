//! The migrator on real processes (`hayloft up --spawn`, its `migrator`
//! role among them): locked volumes turn warm on their own once old
//! enough, while a reader checks every BLOB the whole time; `hayloft
//! migrate` lists the jobs, refuses a volume that is not locked and leaves
//! a warm one be; with every hot store node stopped, every BLOB of the warm
//! volumes still reads back. A migrator `kill -9`ed in the middle of a job
//! is taken over by the next one, and every BLOB ends warm.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use common::volumes::{
    Blob, ONE_IDLE_VOLUME, SMALL_VOLUMES, fill, locked_volume, one_volume_of, volume, volumes,
    wait_locked,
};
use common::{Cluster, http_client, paused_at, post_json, wait_node_state, wait_until};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

/// [`SMALL_VOLUMES`], migrated once locked for 3 s, a pass every 500 ms.
fn args() -> Vec<&'static str> {
    [
        SMALL_VOLUMES,
        &["--warm-after", "3s", "--migrate-interval", "500ms"],
    ]
    .concat()
}
/// [`SMALL_VOLUMES`] with quick migrations (locked for 1 s, a pass every
/// 300 ms, claims of 3 s), and `extra`.
fn quick_migrations(extra: &[&'static str]) -> Vec<&'static str> {
    [
        SMALL_VOLUMES,
        &[
            "--warm-after",
            "1s",
            "--migrate-interval",
            "300ms",
            "--migration-lease",
            "3s",
        ],
        extra,
    ]
    .concat()
}

/// `hayloft migrate ARGS --router R`: whether it exited 0, and its output.
async fn migrate(cluster: &Cluster, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = tokio::process::Command::new(common::hayloft_bin())
        .arg("migrate")
        .args(args)
        .args(["--router", &cluster.router])
        .output()
        .await?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_volumes_turn_warm_on_their_own_while_every_blob_reads() -> anyhow::Result<()> {
    let cluster = Cluster::start_spawned(&args()).await?;
    cluster
        .node("migrator")
        .context("cluster.json lists the migrator")?;
    let client = http_client();
    let router = cluster.router.clone();
    let blobs = fill(&client, &router, 31, 2).await?;

    // A reader checks every BLOB, over and over, until the volumes are warm.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (client, router, blobs, stop) =
            (client.clone(), router.clone(), blobs.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for blob in &blobs {
                    blob.check(&client, &router)
                        .await
                        .with_context(|| format!("{} during the migration", blob.id))?;
                    reads += 1;
                }
            }
            anyhow::Ok(reads)
        })
    };
    let mut warm = Vec::new();
    wait_until("every locked volume warm", Duration::from_secs(150), || {
        all_warm(&client, &router)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await??;
    anyhow::ensure!(reads > 0, "the reader read nothing");
    for volume in volumes(&client, &router).await? {
        if volume["state"] == "warm" {
            warm.push(volume["id"].as_u64().context("id")? as u32);
        }
    }

    // The jobs, as `hayloft migrate --status` lists them.
    let (ok, out) = migrate(&cluster, &["--status", "--json"]).await?;
    anyhow::ensure!(ok, "migrate --status: {out}");
    let jobs: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for vid in &warm {
        let job = jobs
            .iter()
            .find(|j| j["volume"] == *vid)
            .with_context(|| format!("no job for volume {vid}: {out}"))?;
        anyhow::ensure!(
            job["step"] == "warm" && job["owner"] == "" && job["attempts"].as_u64() >= Some(1),
            "job of volume {vid}: {job}"
        );
        // Not before the volume was old enough.
        let locked_ms = volume(&client, &router, *vid).await?["locked_ms"]
            .as_u64()
            .context("locked_ms")?;
        let started_ms = job["started_ms"].as_u64().context("started_ms")?;
        anyhow::ensure!(
            started_ms >= locked_ms + 3000,
            "volume {vid} locked at {locked_ms}, its migration started at {started_ms}"
        );
    }
    let metrics = router_metrics(&client, &router).await?;
    let line = format!(r#"hayloft_migration_jobs{{step="warm"}} {}"#, warm.len());
    anyhow::ensure!(metrics.contains(&line), "no {line} in the metrics");
    // What the warm volumes hold and what moving them saved: about 3.0 - 1.4
    // bytes per byte.
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse::<f64>().ok())
            .with_context(|| format!("no {name} in the metrics"))
    };
    let (migrated, saved) = (
        gauge("hayloft_migrated_bytes")?,
        gauge("hayloft_migration_saved_bytes")?,
    );
    anyhow::ensure!(
        migrated > 0.0 && saved > 1.4 * migrated && saved < 1.7 * migrated,
        "migrated {migrated} bytes, saved {saved}"
    );
    // A writable volume is refused, clearly; a warm one is left as it is.
    let writable = volumes(&client, &router)
        .await?
        .into_iter()
        .find(|v| v["state"] == "writable")
        .and_then(|v| v["id"].as_u64());
    let vid = writable.context("a writable volume")?;
    let (ok, out) = migrate(&cluster, &["--volume", &vid.to_string()]).await?;
    anyhow::ensure!(
        !ok && out.contains("only a locked volume"),
        "forcing writable volume {vid}: {out}"
    );
    let (ok, out) = migrate(&cluster, &["--volume", "4000000000"]).await?;
    anyhow::ensure!(
        !ok && out.contains("unknown volume"),
        "forcing an unknown volume: {out}"
    );
    let (ok, out) = migrate(&cluster, &["--volume", &warm[0].to_string(), "--json"]).await?;
    anyhow::ensure!(ok, "forcing warm volume {}: {out}", warm[0]);
    let pass: Value = serde_json::from_str(out.trim())?;
    anyhow::ensure!(pass["jobs"] == serde_json::json!([]), "{pass}");

    // Every hot store node stopped: the warm volumes still serve every BLOB.
    for store in ["store-1", "store-2", "store-3"] {
        cluster.kill_node(store)?;
    }
    let in_warm: Vec<&Blob> = blobs
        .iter()
        .filter(|b| warm.contains(&b.volume()))
        .collect();
    anyhow::ensure!(!in_warm.is_empty());
    for blob in in_warm {
        blob.check(&client, &router)
            .await
            .with_context(|| format!("{} with every store node down", blob.id))?;
    }
    Ok(())
}

/// Whether two volumes or more are warm, none is locked or sealing, and
/// every job is over (a job ends a little after its flip: the hot replicas
/// go once routers' cached entries have expired).
async fn all_warm(client: &reqwest::Client, router: &str) -> anyhow::Result<bool> {
    let listed = volumes(client, router).await?;
    let state = |s: &str| listed.iter().filter(|v| v["state"] == s).count();
    Ok(state("warm") >= 2
        && state("locked") + state("sealing") == 0
        && jobs(client, router)
            .await?
            .iter()
            .all(|j| j["step"] == "warm"))
}

/// The router's Prometheus text.
async fn router_metrics(client: &reqwest::Client, router: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{router}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The migration jobs, as the router lists them (one page: these tests
/// have a few).
async fn jobs(client: &reqwest::Client, router: &str) -> anyhow::Result<Vec<Value>> {
    let page: Value = client
        .get(format!("{router}/admin/migrations"))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(page["next_after"].is_null(), "more than a page: {page}");
    Ok(page["jobs"].as_array().cloned().unwrap_or_default())
}

/// `POST /admin/migrate` (one pass, now): its status and answer.
async fn migration_pass(client: &reqwest::Client, router: &str) -> anyhow::Result<(u16, Value)> {
    let answer = client
        .post(format!("{router}/admin/migrate"))
        .send()
        .await?;
    Ok((answer.status().as_u16(), answer.json().await?))
}

/// `POST /admin/volumes/{vid}/migrate` (the volume's job, now): its status
/// and body.
async fn force_migration(
    client: &reqwest::Client,
    router: &str,
    vid: u32,
) -> anyhow::Result<(u16, String)> {
    let answer = client
        .post(format!("{router}/admin/volumes/{vid}/migrate"))
        .send()
        .await?;
    Ok((answer.status().as_u16(), answer.text().await?))
}

/// Restarts the router so that its migrations pause at failpoint `point`
/// until the file `release` exists (a minute at most); the new process.
fn pause_routers_migration(
    cluster: &Cluster,
    point: &str,
    release: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    cluster.kill_node("router")?;
    let release = release.to_str().context("path")?;
    cluster.restart_node_with(
        "router",
        &[
            ("HAYLOFT_PAUSE_AT", point),
            ("HAYLOFT_PAUSE_MS", "60000"),
            ("HAYLOFT_PAUSE_RELEASE", release),
        ],
    )
}

/// [`force_migration`]'s answer as JSON, from a task of its own.
fn spawn_forced_migration(
    client: reqwest::Client,
    router: String,
    vid: u32,
) -> tokio::task::JoinHandle<anyhow::Result<Value>> {
    tokio::spawn(async move {
        let (_, text) = force_migration(&client, &router, vid).await?;
        Ok(serde_json::from_str(&text)?)
    })
}

/// Waits until a job is at `step`, then `kill -9`s the migrator and starts
/// it again with `env`: the job's claim runs out and the new process takes
/// it over.
async fn kill_migrator_at(
    cluster: &Cluster,
    client: &reqwest::Client,
    step: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(u32, std::process::Child)> {
    let at = Arc::new(std::sync::Mutex::new(None));
    wait_until(
        &format!("a job at {step}"),
        Duration::from_secs(120),
        || {
            let at = at.clone();
            async move {
                let job = jobs(client, &cluster.router)
                    .await?
                    .into_iter()
                    .find(|j| j["step"] == step);
                let volume = job.and_then(|j| j["volume"].as_u64());
                *at.lock().expect("lock") = volume;
                Ok(volume.is_some())
            }
        },
    )
    .await?;
    cluster.kill_node("migrator")?;
    let restarted = cluster.restart_node_with("migrator", env)?;
    let volume = at.lock().expect("lock").context("volume")?;
    Ok((volume as u32, restarted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrator_killed_mid_job_is_taken_over_and_nothing_is_lost() -> anyhow::Result<()> {
    // Encoding a volume takes seconds, so the test sees it.
    let args = quick_migrations(&["--migration-rate", "256KiB"]);
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let blobs = fill(&client, &router, 43, 2).await?;
    // Killed while encoding (a new seal attempt follows), then after the
    // flip, before the hot replicas went (the next one only retires them).
    // Draining takes a moment once every router has refreshed its entry:
    // the restarted migrator holds there until it is killed.
    let hold = [
        ("HAYLOFT_PAUSE_AT", "migrate-draining"),
        ("HAYLOFT_PAUSE_MS", "60000"),
    ];
    let (encoding, _first) = kill_migrator_at(&cluster, &client, "encoding", &hold).await?;
    let (draining, _second) = kill_migrator_at(&cluster, &client, "draining", &[]).await?;
    let waited = wait_until("every locked volume warm", Duration::from_secs(180), || {
        all_warm(&client, &router)
    })
    .await;
    if let Err(e) = waited {
        let jobs = jobs(&client, &router).await?;
        let log = cluster.keep_log("migrate")?;
        anyhow::bail!("{e}: jobs {jobs:?}; log kept at {}", log.display());
    }
    for vid in [encoding, draining] {
        let job = jobs(&client, &router)
            .await?
            .into_iter()
            .find(|j| j["volume"] == vid)
            .context("job")?;
        anyhow::ensure!(job["attempts"].as_u64() >= Some(2), "volume {vid}: {job}");
    }
    // Every BLOB reads back, and the hot replicas are gone.
    for blob in &blobs {
        blob.check(&client, &router).await?;
    }
    for vid in [encoding, draining] {
        for store in ["store-1", "store-2", "store-3"] {
            let data = cluster
                .data_dir
                .join(store)
                .join(format!("volume-{vid:010}.data"));
            anyhow::ensure!(!data.exists(), "{} survived the migration", data.display());
        }
    }
    no_orphans(&cluster, &client).await?;
    Ok(())
}

/// Checks that every storage node holds files of the committed generation
/// of warm volumes only (no block, index or journal of an attempt that died
/// or was killed) and no staging.
async fn no_orphans(cluster: &Cluster, client: &reqwest::Client) -> anyhow::Result<()> {
    let committed: std::collections::HashMap<u64, u64> = volumes(client, &cluster.router)
        .await?
        .iter()
        .filter(|v| v["state"] == "warm")
        .filter_map(|v| Some((v["id"].as_u64()?, v["warm"]["generation"].as_u64()?)))
        .collect();
    for node in cluster.nodes()? {
        if node["role"] != "f4-storage" {
            continue;
        }
        let dir = cluster.data_dir.join(node["id"].as_str().context("id")?);
        for sub in ["blocks", "volumes", "staging"] {
            for entry in std::fs::read_dir(dir.join(sub))? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                let owner = name
                    .strip_prefix("volume-")
                    .and_then(|rest| rest.split_once(".g"))
                    .and_then(|(vid, rest)| {
                        Some((
                            vid.parse().ok()?,
                            u64::from_str_radix(rest.get(..16)?, 16).ok()?,
                        ))
                    });
                let kept = sub != "staging"
                    && !name.ends_with(".tmp")
                    && owner
                        .is_some_and(|(vid, generation)| committed.get(&vid) == Some(&generation));
                anyhow::ensure!(kept, "orphan {sub}/{name} on {}", node["id"]);
            }
        }
    }
    Ok(())
}

/// A forced migration paced by `--migration-rate` while a thousand of the
/// volume's BLOBs are deleted and the others read, with one needle's bit
/// flipped on the replica the migration reads: every delete is accepted,
/// every deleted BLOB ends `404`, every other one (the damaged one too,
/// taken from another replica) reads back byte-identical, and a restart of
/// every node changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reads_and_a_flipped_bit_through_a_migration() -> anyhow::Result<()> {
    let args = [
        "--volume-size",
        "1MiB",
        "--max-blob-size",
        "64KiB",
        "--block-size",
        "16KiB",
        "--warm-after",
        "1d",
        "--migration-rate",
        "96KiB",
        // No background scrub: the flipped needle is the encoder's to find.
        "--scrub-rate",
        "0",
    ];
    let mut cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    // Small BLOBs until a volume locks: over a thousand in it.
    let mut blobs: Vec<Blob> = Vec::new();
    let vid = loop {
        let batch: Vec<Blob> = futures::stream::iter(blobs.len()..blobs.len() + 512)
            .map(|n| {
                let (client, router) = (client.clone(), router.clone());
                async move {
                    let body = common::random_body(7_000_000 + n as u64, 600 + n % 128);
                    let id = common::upload(&client, &router, body.clone()).await?;
                    anyhow::Ok(Blob {
                        id,
                        body,
                        deleted: false,
                    })
                }
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        blobs.extend(batch);
        let locked = volumes(&client, &router)
            .await?
            .into_iter()
            .find(|v| v["state"] == "locked");
        if let Some(locked) = locked {
            break locked["id"].as_u64().context("id")? as u32;
        }
        anyhow::ensure!(
            blobs.len() < 40_000,
            "no volume locked: {:?}",
            volumes(&client, &router).await?
        );
    };
    let mut ours: Vec<Blob> = blobs.into_iter().filter(|b| b.volume() == vid).collect();
    anyhow::ensure!(ours.len() > 1100, "volume {vid} holds {} BLOBs", ours.len());
    let (doomed, kept) = ours.split_at_mut(1000);
    for blob in doomed.iter_mut() {
        blob.deleted = true;
    }
    let (doomed, kept) = (doomed.to_vec(), kept.to_vec());

    // One bit flipped in a kept needle, on the replica the seal reads.
    let flipped = &kept[kept.len() / 2];
    let source = volume(&client, &router, vid).await?["replicas"][0]
        .as_str()
        .context("replicas")?
        .to_owned();
    let page: Value = client
        .get(format!(
            "{}/volumes/{vid}/needles?limit=4096",
            cluster.node_url(&source)?
        ))
        .send()
        .await?
        .json()
        .await?;
    let entry = page["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .find(|e| e["key"] == format!("{:x}", flipped.key()))
        .context("the needle's entry")?;
    let at = entry["offset"].as_u64().context("offset")?
        + entry["size_bytes"].as_u64().context("size")?
        - 16;
    let data = cluster
        .data_dir
        .join(&source)
        .join(format!("volume-{vid:010}.data"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)?;
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at)?;
    std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0x10], at)?;
    drop(file);

    // The migration, and meanwhile deletes and reads.
    let migration = {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(180))
            .build()?;
        spawn_forced_migration(client, router.clone(), vid)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (client, router, stop) = (client.clone(), router.clone(), stop.clone());
        let readable: Vec<Blob> = kept
            .iter()
            .filter(|b| b.id != flipped.id)
            .cloned()
            .collect();
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for blob in readable.iter().step_by(7) {
                    blob.check(&client, &router)
                        .await
                        .with_context(|| format!("{} during the migration", blob.id))?;
                    reads += 1;
                }
            }
            anyhow::Ok(reads)
        })
    };
    // Deletes start once the volume is sealing, paced over the migration.
    wait_until("the job encoding", Duration::from_secs(60), || async {
        Ok(jobs(&client, &router)
            .await?
            .iter()
            .any(|j| j["volume"] == vid && j["step"] == "encoding"))
    })
    .await?;
    let mut states = std::collections::BTreeSet::new();
    for batch in doomed.chunks(50) {
        states.insert(volume(&client, &router, vid).await?["state"].to_string());
        for blob in batch {
            let status = common::volumes::delete(&client, &router, &blob.id).await?;
            anyhow::ensure!(status == 204, "deleting {} answered {status}", blob.id);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pass = migration.await??;
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await??;
    anyhow::ensure!(reads > 0, "the reader read nothing");
    anyhow::ensure!(
        pass["jobs"][0]["step"] == "warm",
        "the migration of volume {vid}: {pass}"
    );
    // The damaged needle was caught on the source and taken from another
    // replica (nothing repaired it before: no read touched it).
    let log = cluster.log();
    anyhow::ensure!(
        log.contains("a needle failed its check on the source replica")
            && log.contains(&format!("{:x}", flipped.key())),
        "the flipped needle was not caught while encoding"
    );
    anyhow::ensure!(
        states.contains("\"sealing\""),
        "no delete while volume {vid} was sealing (states seen: {states:?})"
    );

    let check_all = |when: &'static str| {
        let (client, router) = (client.clone(), router.clone());
        let (doomed, kept) = (doomed.clone(), kept.clone());
        async move {
            for blob in &doomed {
                let (status, _) = common::fetch(&client, &router, &blob.id).await?;
                anyhow::ensure!(
                    status == 404,
                    "deleted {} answered {status} {when}",
                    blob.id
                );
            }
            for blob in &kept {
                blob.check(&client, &router)
                    .await
                    .with_context(|| format!("{} {when}", blob.id))?;
            }
            anyhow::Ok(())
        }
    };
    anyhow::ensure!(volume(&client, &router, vid).await?["state"] == "warm");
    check_all("after the migration").await?;
    cluster.restart().await?;
    check_all("after every node restarted").await?;
    no_orphans(&cluster, &client).await?;
    Ok(())
}

/// A sealing storage node paused after 5 of a stripe's 14 blocks, then the
/// migrator paused at every step boundary in turn (`haystack::failpoint`),
/// each `kill -9`ed there and restarted, with deletes in between: every
/// volume ends warm, every BLOB byte-identical, every deleted one `404`, and
/// no orphan block, index, journal or staging is left on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_boundary_and_after_five_blocks() -> anyhow::Result<()> {
    let args = quick_migrations(&[]);
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let mut processes = Vec::new();
    // Every storage node restarted to pause after 5 blocks of a stripe; only
    // the first to get there does.
    let marker = cluster.data_dir.join("paused-once");
    let marker = marker.to_str().context("path")?;
    let once = [
        ("HAYLOFT_PAUSE_AT", "seal-after-blocks-5"),
        ("HAYLOFT_PAUSE_ONCE", marker),
    ];
    let storage: Vec<String> = cluster
        .nodes()?
        .iter()
        .filter(|n| n["role"] == "f4-storage")
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect();
    for id in &storage {
        cluster.kill_node(id)?;
        processes.push(cluster.restart_node_with(id, &once)?);
    }
    let mut blobs = fill(&client, &router, 59, 3).await?;
    let mut doomed = (0..blobs.len()).step_by(5).collect::<Vec<_>>().into_iter();
    let mut delete_some = async |blobs: &mut Vec<Blob>| {
        for i in doomed.by_ref().take(8) {
            let status = common::volumes::delete(&client, &router, &blobs[i].id).await?;
            anyhow::ensure!(status == 204, "deleting {} answered {status}", blobs[i].id);
            blobs[i].deleted = true;
        }
        anyhow::Ok(())
    };

    let pid = paused_at(&cluster, "seal-after-blocks-5").await?;
    let sealer = cluster
        .nodes()?
        .iter()
        .find(|n| n["pid"] == pid)
        .and_then(|n| n["id"].as_str().map(str::to_owned))
        .context("the paused node")?;
    delete_some(&mut blobs).await?;
    cluster.kill_node(&sealer)?;
    cluster.kill_node("migrator")?;
    processes.push(cluster.restart_node(&sealer)?);
    let points = [
        "migrate-encoding",
        "migrate-verifying",
        "migrate-flipping",
        "migrate-draining",
        "migrate-deleting",
    ];
    processes.push(cluster.restart_node_with("migrator", &[("HAYLOFT_PAUSE_AT", points[0])])?);
    for (i, point) in points.iter().enumerate() {
        paused_at(&cluster, point).await?;
        delete_some(&mut blobs).await?;
        cluster.kill_node("migrator")?;
        let next: Vec<(&str, &str)> = points
            .get(i + 1)
            .map(|next| ("HAYLOFT_PAUSE_AT", *next))
            .into_iter()
            .collect();
        processes.push(cluster.restart_node_with("migrator", &next)?);
    }
    wait_until("every locked volume warm", Duration::from_secs(180), || {
        all_warm(&client, &router)
    })
    .await?;
    for blob in &blobs {
        if blob.deleted {
            let (status, _) = common::fetch(&client, &router, &blob.id).await?;
            anyhow::ensure!(status == 404, "deleted {} answered {status}", blob.id);
        } else {
            blob.check(&client, &router).await?;
        }
    }
    no_orphans(&cluster, &client).await?;
    Ok(())
}

/// A storage node `kill -9`ed while a (paced) migration encodes: the
/// attempt fails and the volume stays hot and readable, never committed
/// short; once the node is back, the migration goes through and every BLOB
/// reads back byte-identical from the warm tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_lost_while_encoding_never_commits_short() -> anyhow::Result<()> {
    let args = [
        SMALL_VOLUMES,
        &["--warm-after", "1d", "--migration-rate", "64KiB"],
    ]
    .concat();
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let blobs = fill(&client, &router, 67, 1).await?;
    let vid = locked_volume(&client, &router).await?;
    let first = spawn_forced_migration(client.clone(), router.clone(), vid);
    wait_until("the job encoding", Duration::from_secs(60), || async {
        Ok(jobs(&client, &router)
            .await?
            .iter()
            .any(|j| j["volume"] == vid && j["step"] == "encoding"))
    })
    .await?;
    cluster.kill_node("f4-3")?;
    let pass = first.await??;
    let job = &pass["jobs"][0];
    anyhow::ensure!(job["step"] == "failed", "with f4-3 lost: {pass}");
    let metrics = router_metrics(&client, &router).await?;
    anyhow::ensure!(
        metrics.contains("hayloft_migration_errors_total 1"),
        "the failed job is not counted"
    );
    anyhow::ensure!(volume(&client, &router, vid).await?["state"] == "locked");
    for blob in &blobs {
        blob.check(&client, &router)
            .await
            .with_context(|| format!("{} after the failed attempt", blob.id))?;
    }
    // While f4-3 is down, 13 racks cannot hold a stripe: the pass holds
    // back rather than start a job that cannot finish.
    wait_until("f4-3 marked down", Duration::from_secs(60), || async {
        let (status, pass) = migration_pass(&client, &router).await?;
        anyhow::ensure!(status == 200, "a pass answered {status}: {pass}");
        Ok(pass["held_back"]
            .as_str()
            .is_some_and(|why| why.contains("13 rack")))
    })
    .await?;
    let (status, text) = force_migration(&client, &router, vid).await?;
    anyhow::ensure!(
        status == 503 && text.contains("held back"),
        "forcing volume {vid} with 13 racks: {status} {text}"
    );
    let metrics = router_metrics(&client, &router).await?;
    anyhow::ensure!(metrics.contains("hayloft_migration_held_back 1"));
    let _back = cluster.restart_node("f4-3")?;
    let pass = spawn_forced_migration(client.clone(), router.clone(), vid).await??;
    anyhow::ensure!(pass["jobs"][0]["step"] == "warm", "with f4-3 back: {pass}");
    for store in ["store-1", "store-2", "store-3"] {
        cluster.kill_node(store)?;
    }
    for blob in blobs.iter().filter(|b| b.volume() == vid) {
        blob.check(&client, &router)
            .await
            .with_context(|| format!("{} from the warm tier", blob.id))?;
    }
    no_orphans(&cluster, &client).await?;
    Ok(())
}

/// Storage nodes that keep more free than their disk has: a block is
/// refused with `507`, and migrations hold back for want of room (in the
/// pass, the metric and a forced job), leaving the volume hot and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_room_on_the_storage_nodes_holds_migrations_back() -> anyhow::Result<()> {
    let args = [
        SMALL_VOLUMES,
        &["--warm-after", "1s", "--storage-reserve", "1024TiB"],
    ]
    .concat();
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let node = cluster.node_url("f4-1")?;
    let space: Value = client
        .get(format!("{node}/space"))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        space["room_bytes"] == 0 && space["available_bytes"].as_u64() > Some(0),
        "{space}"
    );
    let refused = client
        .put(format!("{node}/blocks/1/1/0/0"))
        .body(vec![0u8; 4096])
        .send()
        .await?;
    anyhow::ensure!(
        refused.status() == 507,
        "a block with no room: {}",
        refused.status()
    );
    let body: Value = refused.json().await?;
    anyhow::ensure!(
        body["error"] == "io" && body["message"].as_str().is_some_and(|m| m.contains("room")),
        "{body}"
    );

    let blobs = fill(&client, &router, 71, 1).await?;
    let vid = locked_volume(&client, &router).await?;
    // Once the volume is older than `--warm-after`, a pass considers it.
    wait_until(
        "a pass holding the volume back",
        Duration::from_secs(30),
        || async { Ok(migration_pass(&client, &router).await?.1["held_back"].is_string()) },
    )
    .await?;
    let (_, pass) = migration_pass(&client, &router).await?;
    anyhow::ensure!(
        pass["held_back"]
            .as_str()
            .is_some_and(|why| why.contains("0 rack(s) have a storage node with room"))
            && pass["jobs"].as_array().is_some_and(Vec::is_empty),
        "a pass with no room: {pass}"
    );
    anyhow::ensure!(
        router_metrics(&client, &router)
            .await?
            .contains("hayloft_migration_held_back 1")
    );
    let (status, text) = force_migration(&client, &router, vid).await?;
    anyhow::ensure!(
        status == 503 && text.contains("room"),
        "forcing with no room: {status} {text}"
    );
    anyhow::ensure!(volume(&client, &router, vid).await?["state"] == "locked");
    for blob in &blobs {
        blob.check(&client, &router).await?;
    }
    no_orphans(&cluster, &client).await?;
    Ok(())
}

/// Writable volumes have owners: a router `kill -9`ed and restarted takes
/// its volume back (the next upload lands in it); a volume its router has
/// not written for `--idle-lock-after` is locked by that router, and one
/// whose router is gone by the migrator; both then migrate like full ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_volumes_lock_and_a_restarted_router_takes_its_volumes_back() -> anyhow::Result<()> {
    let args = quick_migrations(&["--idle-lock-after", "8s"]);
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let put = |seed: u64| {
        let (client, router) = (client.clone(), router.clone());
        async move {
            let body = common::random_body(seed, 3000);
            let id = common::upload(&client, &router, body.clone()).await?;
            anyhow::Ok(Blob {
                id,
                body,
                deleted: false,
            })
        }
    };
    let state_of = |vid: u32| {
        let (client, router) = (client.clone(), router.clone());
        async move { anyhow::Ok(volume(&client, &router, vid).await?["state"].clone()) }
    };
    // The volume's claim as the directory has it: the owning process.
    let directory = cluster.node_url("directory")?;
    let claimed_by = |vid: u32| {
        let (client, directory) = (client.clone(), directory.clone());
        async move {
            let entry: Value = client
                .get(format!("{directory}/volumes/{vid}"))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(entry["owner"]["instance"].as_str().map(str::to_owned))
        }
    };
    let first = put(1).await?;
    let vid = first.volume();
    // Once the router has claimed it, a restarted router takes it back as
    // soon as the dead process's claim ran out (3 s).
    let dead = Arc::new(std::sync::Mutex::new(None));
    wait_until("the router's claim", Duration::from_secs(30), || async {
        let owner = claimed_by(vid).await?;
        *dead.lock().expect("lock") = owner.clone();
        Ok(owner.is_some())
    })
    .await?;
    cluster.kill_node("router")?;
    let _router = cluster.restart_node("router")?;
    let dead = dead.lock().expect("lock").clone();
    wait_until(
        "the restarted router's claim",
        Duration::from_secs(30),
        || async {
            let owner = claimed_by(vid).await?;
            Ok(owner.is_some() && owner != dead)
        },
    )
    .await?;
    let second = put(2).await?;
    anyhow::ensure!(
        second.volume() == vid,
        "after a restart the router wrote {} instead of its volume {vid}",
        second.id
    );
    // Idle: its router locks it, then it migrates.
    wait_until(
        "the idle volume migrated",
        Duration::from_secs(90),
        || async {
            let done = jobs(&client, &router)
                .await?
                .iter()
                .any(|j| j["volume"] == vid && j["step"] == "warm");
            Ok(done && state_of(vid).await? == "warm")
        },
    )
    .await?;
    // A volume whose router is gone: locked by the migrator.
    let third = put(3).await?;
    let orphan = third.volume();
    anyhow::ensure!(orphan != vid);
    wait_until("the router's claim", Duration::from_secs(30), || async {
        Ok(claimed_by(orphan).await?.is_some())
    })
    .await?;
    cluster.kill_node("router")?;
    wait_until(
        "the orphan volume locked",
        Duration::from_secs(90),
        || async {
            let listed: Value = client
                .get(format!("{directory}/volumes/{orphan}"))
                .send()
                .await?
                .json()
                .await?;
            Ok(listed["state"] != "writable")
        },
    )
    .await?;
    anyhow::ensure!(
        cluster
            .log()
            .contains("locking an idle writable volume no router owns"),
        "volume {orphan} was not locked by the migrator"
    );
    let _router = cluster.restart_node("router")?;
    for blob in [&first, &second, &third] {
        blob.check(&client, &router).await?;
    }
    Ok(())
}

/// A delete whose tombstone failed (three of five journal holders down
/// while the migration's journal is open) answers `503`, but its hot part
/// landed; its retry, which the replicas answer `not_found`, still reaches
/// the journal (`204`), and the BLOB stays deleted once the volume is warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delete_reaches_the_journal_its_first_try_missed() -> anyhow::Result<()> {
    let args = [SMALL_VOLUMES, &["--warm-after", "1d"]].concat();
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    // The router's migration waits just before its flip (journal open,
    // deletes carried) until the test's deletes are done (at most a
    // minute).
    let release = cluster.data_dir.join("flip-released");
    let _router = pause_routers_migration(&cluster, "migrate-flipping", &release)?;
    let blobs = fill(&client, &router, 71, 1).await?;
    let vid = locked_volume(&client, &router).await?;
    let ours: Vec<&Blob> = blobs.iter().filter(|b| b.volume() == vid).collect();
    let (doomed, kept) = (ours[0], &ours[1..]);
    let migration = spawn_forced_migration(client.clone(), router.clone(), vid);
    paused_at(&cluster, "migrate-flipping").await?;
    let holders: Vec<String> = volume(&client, &router, vid).await?["warm"]["journal_holders"]
        .as_array()
        .context("holders")?
        .iter()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    for holder in &holders[..3] {
        cluster.kill_node(holder)?;
    }
    let status = common::volumes::delete(&client, &router, &doomed.id).await?;
    anyhow::ensure!(
        status == 503,
        "with 3 of 5 holders down the delete answered {status}"
    );
    let mut back = Vec::new();
    for holder in &holders[..3] {
        back.push(cluster.restart_node(holder)?);
    }
    let status = common::volumes::delete(&client, &router, &doomed.id).await?;
    anyhow::ensure!(status == 204, "the retried delete answered {status}");
    std::fs::write(&release, b"")?;
    let pass = migration.await??;
    anyhow::ensure!(pass["jobs"][0]["step"] == "warm", "{pass}");
    let (status, _) = common::fetch(&client, &router, &doomed.id).await?;
    anyhow::ensure!(
        status == 404,
        "the deleted BLOB answered {status} once warm"
    );
    for blob in kept {
        blob.check(&client, &router).await?;
    }
    Ok(())
}

/// A flip reaches every router at once. A second router that cached a
/// volume's entry while it was hot reads it warm as soon as it flips, long
/// before its cache lifetime (ten minutes here) runs out: the migration
/// asked it to refresh the entry, so it retires the hot replicas without
/// waiting that long, and a BLOB deleted after the flip is a `404` through
/// either router while the hot replicas still hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_reaches_every_router_at_once() -> anyhow::Result<()> {
    let args = [
        SMALL_VOLUMES,
        &["--warm-after", "1d", "--directory-cache-ttl", "10m"],
    ]
    .concat();
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    // The first router's migration waits after the flip and the routers'
    // refresh, before it retires the hot replicas.
    let release = cluster.data_dir.join("retire-released");
    let _router = pause_routers_migration(&cluster, "migrate-deleting", &release)?;
    let (_second, second) = cluster.start_router("router-2")?;
    let nodes: Vec<Value> = client
        .get(format!("{router}/admin/nodes"))
        .send()
        .await?
        .json()
        .await?;
    for id in ["router", "router-2"] {
        anyhow::ensure!(
            nodes.iter().any(|n| n["id"] == id && n["role"] == "router"),
            "{id} is not registered: {nodes:?}"
        );
    }
    let blobs = fill(&client, &router, 71, 1).await?;
    let vid = locked_volume(&client, &router).await?;
    let ours: Vec<&Blob> = blobs.iter().filter(|b| b.volume() == vid).collect();
    let (doomed, kept) = (ours[0], &ours[1..]);
    let tier = |url: String| {
        let client = client.clone();
        async move {
            let answer = client.get(url).send().await?.error_for_status()?;
            let tier = answer.headers().get("x-hayloft-tier").cloned();
            anyhow::Ok(tier.context("no tier header")?.to_str()?.to_owned())
        }
    };
    let probe = format!("{second}/blobs/{}", kept[0].id);
    let before = tier(probe.clone()).await?;
    anyhow::ensure!(before == "hot", "the second router read it {before}");
    let migration = spawn_forced_migration(client.clone(), router.clone(), vid);
    paused_at(&cluster, "migrate-deleting").await?;
    let status = common::volumes::delete(&client, &router, &doomed.id).await?;
    anyhow::ensure!(status == 204, "the delete after the flip answered {status}");
    let (status, _) = common::fetch(&client, &second, &doomed.id).await?;
    anyhow::ensure!(
        status == 404,
        "the second router answered {status} for a BLOB deleted after the flip"
    );
    let after = tier(probe).await?;
    anyhow::ensure!(after == "warm", "the second router read it {after}");
    // What the migration asked: each router answers with its own id.
    let refreshed = post_json(&client, &format!("{second}/admin/volumes/{vid}/refresh")).await?;
    anyhow::ensure!(
        refreshed["router"] == "router-2" && refreshed["state"] == "warm",
        "{refreshed}"
    );
    for (path, status) in [("abc", 400), ("4000000", 404)] {
        let answer = client
            .post(format!("{second}/admin/volumes/{path}/refresh"))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().as_u16() == status,
            "refresh of volume {path} answered {}",
            answer.status()
        );
    }
    for blob in kept {
        blob.check(&client, &second).await?;
    }
    std::fs::write(&release, b"")?;
    let pass = migration.await??;
    anyhow::ensure!(pass["jobs"][0]["step"] == "warm", "{pass}");
    Ok(())
}

/// A block that fails its check while the migration verifies (its bytes
/// changed on disk after they were written) is rebuilt alone, in place,
/// from its stripe: the same attempt goes on to warm, and every BLOB reads
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_fails_its_check_is_rebuilt_alone() -> anyhow::Result<()> {
    let args = [SMALL_VOLUMES, &["--warm-after", "1d", "--scrub-rate", "0"]].concat();
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    // The router's migration waits once its blocks are written, before it
    // checks them, until the test has damaged one (at most a minute).
    let release = cluster.data_dir.join("verify-released");
    let _router = pause_routers_migration(&cluster, "migrate-verifying", &release)?;
    let blobs = fill(&client, &router, 83, 1).await?;
    let vid = locked_volume(&client, &router).await?;
    let migration = spawn_forced_migration(client.clone(), router.clone(), vid);
    paused_at(&cluster, "migrate-verifying").await?;
    let warm = volume(&client, &router, vid).await?["warm"].clone();
    let node = warm["stripes"][0][2].as_str().context("node")?;
    let generation = warm["generation"].as_u64().context("generation")?;
    let path = cluster
        .data_dir
        .join(node)
        .join("blocks")
        .join(f4::block::block_file_name(vid, generation, 0, 2));
    let mut bytes = std::fs::read(&path)?;
    bytes[200] ^= 0x10;
    std::fs::write(&path, &bytes)?;
    std::fs::write(&release, b"")?;
    let pass = migration.await??;
    anyhow::ensure!(
        pass["jobs"][0]["step"] == "warm",
        "{pass}\nlog:\n{}",
        cluster.log_tail()
    );
    let job = jobs(&client, &router)
        .await?
        .into_iter()
        .find(|j| j["volume"] == vid)
        .context("the job")?;
    anyhow::ensure!(job["attempts"] == 1, "not the same attempt: {job}");
    anyhow::ensure!(
        std::fs::read(&path)? != bytes,
        "the damaged block was not written again"
    );
    anyhow::ensure!(cluster.log().contains("rebuilding them alone"));
    for blob in blobs.iter().filter(|b| b.volume() == vid) {
        blob.check(&client, &router).await?;
    }
    Ok(())
}

/// Replicas that disagree: needles on some fresh replicas only (appends a
/// router never finished, written here straight to the stores) are sealed
/// from the one replica that holds them all, not from the first replica,
/// and read back warm. A replica down when the hot replicas are retired
/// leaves the job failed, the volume warm, and is retired once back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_reads_the_replica_that_holds_every_needle() -> anyhow::Result<()> {
    let args = [
        SMALL_VOLUMES,
        ONE_IDLE_VOLUME,
        &["--heartbeat-timeout", "2s"],
    ]
    .concat();
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let (vid, mut blobs) = one_volume_of(&client, &router, 31_000, 3, 5_000).await?;
    let replicas: Vec<String> = volume(&client, &router, vid).await?["replicas"]
        .as_array()
        .context("replicas")?
        .iter()
        .map(|r| r.as_str().map(str::to_owned).context("replica"))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(replicas.len() == 3, "{replicas:?}");
    // The first replica (the seal's usual source) lacks the first needle,
    // the second lacks the second; the third holds both; all hold a later
    // one, so the gaps are below every replica's last key.
    let last = blobs.iter().map(Blob::key).max().context("keys")?;
    let on = [vec![1, 2], vec![0, 2], vec![0, 1, 2]];
    for (n, holders) in on.iter().enumerate() {
        let key = last + 16 + n as u64;
        let cookie = 0x5eed_0000 + n as u32;
        let body = common::random_body(32_000 + n as u64, 7_000);
        for &r in holders {
            let answer = client
                .put(format!(
                    "{}/volumes/{vid}/needles/{key:x}?cookie={cookie:08x}",
                    cluster.node_url(&replicas[r])?
                ))
                .header("content-type", common::volumes::CONTENT_TYPE)
                .body(body.clone())
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "appending {key:x} on {}: {}",
                replicas[r],
                answer.text().await?
            );
        }
        let mut key_hex = format!("{key:x}");
        if key_hex.len() % 2 == 1 {
            key_hex.insert(0, '0');
        }
        blobs.push(Blob {
            id: format!("{vid},{key_hex}{cookie:08x}"),
            body,
            deleted: false,
        });
    }
    wait_locked(&client, &router, vid).await?;
    // Paused after the flip; meanwhile the first replica's store goes down.
    let release = cluster.data_dir.join("deleting-released");
    let _router = pause_routers_migration(&cluster, "migrate-deleting", &release)?;
    let migration = spawn_forced_migration(client.clone(), router.clone(), vid);
    paused_at(&cluster, "migrate-deleting").await?;
    cluster.kill_node(&replicas[0])?;
    std::fs::write(&release, b"")?;
    let pass = migration.await??;
    let job = &pass["jobs"][0];
    anyhow::ensure!(
        job["step"] == "failed"
            && job["error"]
                .as_str()
                .is_some_and(|e| e.contains("not retired") && e.contains(replicas[0].as_str())),
        "{pass}"
    );
    anyhow::ensure!(volume(&client, &router, vid).await?["state"] == "warm");
    for blob in &blobs {
        blob.check(&client, &router)
            .await
            .with_context(|| format!("{} after the migration", blob.id))?;
    }
    // Back: the next pass retires it.
    let _store = cluster.restart_node(&replicas[0])?;
    wait_node_state(&cluster, &replicas[0], "up").await?;
    let (status, text) = force_migration(&client, &router, vid).await?;
    anyhow::ensure!(
        status == 200 && text.contains("\"warm\""),
        "retiring what was left of volume {vid}: {status} {text}"
    );
    for replica in &replicas {
        let answer = client
            .get(format!("{}/volumes/{vid}", cluster.node_url(replica)?))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status() == 404,
            "{replica} still holds volume {vid}: {}",
            answer.status()
        );
    }
    anyhow::ensure!(
        cluster
            .log()
            .contains("sealing from a replica that holds needles the first lacks"),
        "the seal did not say it chose another replica"
    );
    Ok(())
}
