//! Soak: `hayloft up --spawn` under a steady load of uploads and reads while
//! a thrasher `kill -9`s a random store node every few seconds and restarts
//! it with its own config from `cluster.json` a little later.
//!
//! Promises checked: no read ever answers wrong bytes; no read fails while
//! two replicas are up (only one store is ever down at a time, so every read
//! counts); and once the thrashing stops, every acknowledged BLOB reads back
//! byte for byte at once. Uploads may fail while a store is down (every
//! upload needs all three replicas), which is counted, not checked.
//!
//! CI runs a short soak (`HAYLOFT_SOAK_SECS`, default 40 s). The long one is
//! a documented command (`docs/BENCHMARKS.md`, "Soak"):
//! `HAYLOFT_SOAK_SECS=600 cargo test --release --test soak -- --nocapture`.
//! `HAYLOFT_SOAK_SEED` replays a run's choices (sizes, victims, reads).
//! The writers upload at most `HAYLOFT_SOAK_MAX_BYTES` (default 4 GiB; three
//! replicas of it must fit on the disk) spread evenly over the run, so a long
//! soak keeps writing through every kill without filling the disk. On
//! failure (or always, with `HAYLOFT_SOAK_KEEP_LOG=1`) the cluster's log is
//! kept under the cargo target's tmp directory and its path printed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{Cluster, fetch, http_client, random_body, sha256, upload};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STORES: [&str; 3] = ["store-1", "store-2", "store-3"];
const WRITERS: usize = 4;
const READERS: usize = 4;
const BLOB_BYTES_MAX: usize = 128 * 1024;
/// Time between two kills, and how long the killed store stays down.
const KILL_EVERY: Duration = Duration::from_secs(12);
const DOWN_FOR: Duration = Duration::from_secs(3);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone)]
struct Acknowledged {
    id: String,
    size: usize,
    digest: [u8; 32],
}

/// What the load saw; every list is capped so a broken run stays small.
#[derive(Default)]
struct Findings {
    acknowledged: Vec<Acknowledged>,
    read_errors: Vec<String>,
    wrong_bytes: Vec<String>,
}

const FINDINGS_KEPT: usize = 20;

impl Findings {
    fn note(list: &mut Vec<String>, what: String) {
        if list.len() < FINDINGS_KEPT {
            list.push(what);
        }
    }
}

struct Load {
    router: String,
    stop: AtomicBool,
    started: Instant,
    /// Length of the run.
    seconds: u64,
    /// Logical bytes the writers may upload over the whole run.
    budget_bytes: u64,
    uploaded_bytes: AtomicU64,
    findings: Mutex<Findings>,
    upload_failures: AtomicU64,
    reads: AtomicU64,
    read_error_count: AtomicU64,
    wrong_byte_count: AtomicU64,
}

impl Load {
    fn at(&self) -> String {
        format!("{:.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Whether the writers are ahead of the budget's even pace.
    fn ahead_of_budget(&self) -> bool {
        let share = (self.started.elapsed().as_secs_f64() / self.seconds as f64).min(1.0);
        self.uploaded_bytes.load(Ordering::Relaxed) as f64 >= self.budget_bytes as f64 * share
    }
}

async fn write_loop(load: Arc<Load>, seed: u64) {
    let client = http_client();
    let mut rng = StdRng::seed_from_u64(seed);
    while !load.stop.load(Ordering::Relaxed) {
        if load.ahead_of_budget() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let size = rng.random_range(0..=BLOB_BYTES_MAX);
        let body = random_body(rng.random(), size);
        let digest = sha256(&body);
        match upload(&client, &load.router, body).await {
            Ok(id) => {
                load.uploaded_bytes
                    .fetch_add(size as u64, Ordering::Relaxed);
                load.findings
                    .lock()
                    .expect("lock")
                    .acknowledged
                    .push(Acknowledged { id, size, digest });
            }
            Err(_) => {
                load.upload_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Reads one BLOB and records what is wrong with the answer, if anything.
async fn read_one(load: &Load, client: &reqwest::Client, blob: &Acknowledged) {
    load.reads.fetch_add(1, Ordering::Relaxed);
    match fetch(client, &load.router, &blob.id).await {
        Ok((200, body)) if body.len() == blob.size && sha256(&body) == blob.digest => {}
        Ok((200, body)) => {
            load.wrong_byte_count.fetch_add(1, Ordering::Relaxed);
            let what = format!(
                "{} {}: 200 with {} wrong bytes",
                load.at(),
                blob.id,
                body.len()
            );
            Findings::note(&mut load.findings.lock().expect("lock").wrong_bytes, what);
        }
        Ok((status, body)) => {
            load.read_error_count.fetch_add(1, Ordering::Relaxed);
            let what = format!(
                "{} {}: {status} {}",
                load.at(),
                blob.id,
                String::from_utf8_lossy(&body)
            );
            Findings::note(&mut load.findings.lock().expect("lock").read_errors, what);
        }
        Err(error) => {
            load.read_error_count.fetch_add(1, Ordering::Relaxed);
            let what = format!("{} {}: {error:#}", load.at(), blob.id);
            Findings::note(&mut load.findings.lock().expect("lock").read_errors, what);
        }
    }
}

async fn read_loop(load: Arc<Load>, seed: u64) {
    let client = http_client();
    let mut rng = StdRng::seed_from_u64(seed);
    while !load.stop.load(Ordering::Relaxed) {
        let blob = {
            let findings = load.findings.lock().expect("lock");
            let acknowledged = &findings.acknowledged;
            (!acknowledged.is_empty())
                .then(|| acknowledged[rng.random_range(0..acknowledged.len())].clone())
        };
        match blob {
            Some(blob) => read_one(&load, &client, &blob).await,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Kills a random store every [`KILL_EVERY`] and restarts it [`DOWN_FOR`]
/// later, until `until`; never leaves a store down when it returns.
async fn thrash(cluster: &Cluster, seed: u64, until: Instant) -> anyhow::Result<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = 0;
    let mut restarted = Vec::new();
    while Instant::now() + KILL_EVERY < until {
        tokio::time::sleep(KILL_EVERY - DOWN_FOR).await;
        let victim = STORES[rng.random_range(0..STORES.len())];
        eprintln!("soak: kill -9 {victim}");
        cluster.kill_node(victim)?;
        kills += 1;
        tokio::time::sleep(DOWN_FOR).await;
        restarted.push(cluster.restart_node(victim)?);
        eprintln!("soak: {victim} restarted");
    }
    // The restarted processes belong to the cluster's process group and die
    // with it; dropping the handles does not stop them.
    drop(restarted);
    Ok(kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_kill_9_stores_under_load_loses_nothing() -> anyhow::Result<()> {
    let seconds = env_u64("HAYLOFT_SOAK_SECS", 40);
    let seed = env_u64("HAYLOFT_SOAK_SEED", rand::random::<u32>().into());
    eprintln!("soak: {seconds} s, seed {seed} (HAYLOFT_SOAK_SEED replays it)");
    let cluster = Cluster::start_spawned(&[
        "--volume-size",
        "8MiB",
        "--max-blob-size",
        "1MiB",
        "--heartbeat-timeout",
        "2s",
    ])
    .await?;
    let outcome = run_soak(&cluster, seconds, seed).await;
    if let Err(error) = &outcome {
        let kept = cluster.keep_log("soak")?;
        eprintln!("soak failed: {error:#}\nlog kept at {}", kept.display());
    } else if std::env::var_os("HAYLOFT_SOAK_KEEP_LOG").is_some() {
        eprintln!("soak: log kept at {}", cluster.keep_log("soak")?.display());
    }
    outcome
}

async fn run_soak(cluster: &Cluster, seconds: u64, seed: u64) -> anyhow::Result<()> {
    let load = Arc::new(Load {
        router: cluster.router.clone(),
        stop: AtomicBool::new(false),
        started: Instant::now(),
        seconds,
        budget_bytes: env_u64("HAYLOFT_SOAK_MAX_BYTES", 4 << 30),
        uploaded_bytes: AtomicU64::new(0),
        findings: Mutex::default(),
        upload_failures: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        read_error_count: AtomicU64::new(0),
        wrong_byte_count: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for n in 0..WRITERS as u64 {
        tasks.push(tokio::spawn(write_loop(load.clone(), seed ^ (n + 1) << 32)));
    }
    for n in 0..READERS as u64 {
        tasks.push(tokio::spawn(read_loop(
            load.clone(),
            seed ^ (n + 101) << 32,
        )));
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let kills = thrash(cluster, seed, until).await;
    load.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("load task")?;
    }
    let kills = kills?;

    // Every store is up again: each acknowledged BLOB must read back now.
    let acknowledged = load.findings.lock().expect("lock").acknowledged.clone();
    let during_load = (
        load.reads.load(Ordering::Relaxed),
        load.read_error_count.swap(0, Ordering::Relaxed),
        load.wrong_byte_count.swap(0, Ordering::Relaxed),
    );
    let load_findings = std::mem::take(&mut *load.findings.lock().expect("lock"));
    let client = http_client();
    for blob in &acknowledged {
        read_one(&load, &client, blob).await;
    }
    let after = (
        load.read_error_count.load(Ordering::Relaxed),
        load.wrong_byte_count.load(Ordering::Relaxed),
    );
    let after_findings = std::mem::take(&mut *load.findings.lock().expect("lock"));
    eprintln!(
        "soak: {kills} kills; {} acknowledged ({} MiB), {} uploads failed; {} reads during the \
         load with {} errors and {} wrong; after the load {} errors and {} wrong of {}",
        acknowledged.len(),
        load.uploaded_bytes.load(Ordering::Relaxed) >> 20,
        load.upload_failures.load(Ordering::Relaxed),
        during_load.0,
        during_load.1,
        during_load.2,
        after.0,
        after.1,
        acknowledged.len(),
    );
    for line in load_findings
        .wrong_bytes
        .iter()
        .chain(&load_findings.read_errors)
        .chain(&after_findings.wrong_bytes)
        .chain(&after_findings.read_errors)
    {
        eprintln!("soak: {line}");
    }
    anyhow::ensure!(kills > 0, "the soak ended before its first kill");
    anyhow::ensure!(!acknowledged.is_empty(), "no upload was acknowledged");
    anyhow::ensure!(
        during_load.2 == 0 && after.1 == 0,
        "reads answered wrong bytes"
    );
    anyhow::ensure!(
        during_load.1 == 0,
        "{} reads failed during the load, with two replicas up",
        during_load.1
    );
    anyhow::ensure!(
        after.0 == 0,
        "{} of {} acknowledged BLOBs were unreadable after the load",
        after.0,
        acknowledged.len()
    );
    Ok(())
}
