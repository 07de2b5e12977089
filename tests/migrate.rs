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
use common::volumes::{Blob, SMALL_VOLUMES, fill, volume, volumes};
use common::{Cluster, http_client, wait_until};
use serde_json::Value;

/// [`SMALL_VOLUMES`], migrated once locked for 3 s, a pass every 500 ms.
fn args() -> Vec<&'static str> {
    [
        SMALL_VOLUMES,
        &["--warm-after", "3s", "--migrate-interval", "500ms"],
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
    let jobs: Vec<Value> = serde_json::from_str(out.trim())?;
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
    let metrics = client
        .get(format!("{router}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = format!(r#"hayloft_migration_jobs{{step="warm"}} {}"#, warm.len());
    anyhow::ensure!(metrics.contains(&line), "no {line} in the metrics");
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

/// The migration jobs, as the router lists them.
async fn jobs(client: &reqwest::Client, router: &str) -> anyhow::Result<Vec<Value>> {
    Ok(client
        .get(format!("{router}/admin/migrations"))
        .send()
        .await?
        .json()
        .await?)
}

/// Waits until a job is at `step`, then `kill -9`s the migrator and starts
/// it again: the job's claim runs out and the new process takes it over.
async fn kill_migrator_at(
    cluster: &Cluster,
    client: &reqwest::Client,
    step: &str,
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
    let restarted = cluster.restart_node("migrator")?;
    let volume = at.lock().expect("lock").context("volume")?;
    Ok((volume as u32, restarted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrator_killed_mid_job_is_taken_over_and_nothing_is_lost() -> anyhow::Result<()> {
    let args = [
        SMALL_VOLUMES,
        &[
            "--warm-after",
            "1s",
            "--migrate-interval",
            "300ms",
            "--migration-lease",
            "3s",
        ],
    ]
    .concat();
    let cluster = Cluster::start_spawned(&args).await?;
    let client = http_client();
    let router = cluster.router.clone();
    let blobs = fill(&client, &router, 43, 2).await?;
    // Killed while encoding (a new seal attempt follows), then after the
    // flip, before the hot replicas went (the next one only retires them).
    let (encoding, _first) = kill_migrator_at(&cluster, &client, "encoding").await?;
    let (draining, _second) = kill_migrator_at(&cluster, &client, "draining").await?;
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
    Ok(())
}
