//! Load generator: upload then fetch requests per second and p50/p99 latency
//! at a fixed concurrency, against Hayloft's router or against SeaweedFS the
//! way its users drive it.
//!
//! - Hayloft: `POST {url}/blobs`, then `GET {url}/blobs/{id}`; with
//!   `--direct`, fetches as a smart client reads (`router::direct`): straight
//!   from a store node holding the volume, looked up once through the router.
//! - SeaweedFS: `GET {master}/dir/assign` plus a multipart `POST` of the file
//!   to the assigned volume server (one upload = both requests, timed
//!   together; `--fsync` adds `?fsync=true`), then `GET http://{volume}/{fid}`.
//!
//! ```text
//! cargo run --release -p bench --bin loadgen -- --target hayloft \
//!     --url http://127.0.0.1:8080 --size 64KiB --concurrency 16 --requests 2000
//! ```
//!
//! Prints one JSON object on stdout.

#![allow(clippy::print_stdout, reason = "the report is the program's output")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use std::borrow::Cow;

use bench::parse_size;
use bench::workload::{SizeMix, blob_bytes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Hayloft,
    Seaweedfs,
}

/// Upload/fetch throughput and latency at a fixed concurrency.
#[derive(Debug, Parser)]
struct Args {
    /// What to drive.
    #[arg(long, value_enum)]
    target: Target,
    /// Hayloft router URL, or SeaweedFS master URL.
    #[arg(long)]
    url: String,
    /// BLOB size (`1KiB`, `64KiB`, `1MiB`, or bytes).
    #[arg(long, value_parser = parse_size, required_unless_present_any = ["mix", "fetch_urls"])]
    size: Option<usize>,
    /// Sizes drawn from a mix instead (`NAME=MIN-MAX:WEIGHT,...`, as
    /// `hayloft bench efficiency --mix`): upload `i` of a run is the same
    /// BLOB (size and bytes) for the same `--seed`, whatever the target, and
    /// `--save-urls` writes `URL SIZE SEED` lines that a `--fetch-urls` run
    /// checks byte for byte.
    #[arg(long, conflicts_with = "size")]
    mix: Option<String>,
    /// Seed of `--mix`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Uploads, and then as many fetches (times `--fetch-passes`).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Fetches per uploaded BLOB, on average: a longer fetch phase without
    /// more uploads (e.g. for profiling).
    #[arg(long, default_value_t = 1)]
    fetch_passes: usize,
    /// Untimed uploads and fetches before measuring (connection set-up,
    /// volume allocation).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// SeaweedFS only: `replication` parameter of the assign request
    /// (default: the master's default).
    #[arg(long)]
    replication: Option<String>,
    /// SeaweedFS only: ask the volume server to fsync each upload
    /// (`?fsync=true`), for a comparison at equal durability.
    #[arg(long)]
    fsync: bool,
    /// Hayloft only, diagnostic: fetch straight from this store node
    /// (`GET {url}/volumes/{vid}/needles/{key}?cookie=C`) instead of through
    /// the router, to measure what the router hop costs.
    #[arg(long, conflicts_with = "direct")]
    fetch_from_store: Option<String>,
    /// Hayloft only: fetch as a smart client does (`router::direct`): look
    /// each volume up once (`GET {url}/volumes/{vid}/locations`) and read
    /// from a store node under its read lease, falling back to the router.
    #[arg(long)]
    direct: bool,
    /// A label copied into the report (e.g. `fsync` or `default`).
    #[arg(long, default_value = "")]
    label: String,
    /// Processes whose CPU time (user + system, from `/proc/PID/stat`) is
    /// reported per request of each phase, beside the load generator's own
    /// (repeatable; e.g. the server's pid).
    #[arg(long = "cpu-pid")]
    cpu_pids: Vec<u32>,
    /// Write the URL of every BLOB uploaded in the measured phase here, one
    /// per line (to fetch the same set later with `--fetch-urls`).
    #[arg(long)]
    save_urls: Option<std::path::PathBuf>,
    /// Upload only: no fetch phase (with `--save-urls`).
    #[arg(long)]
    upload_only: bool,
    /// Fetch only: no uploads; fetch `--requests` times from these URLs (one
    /// per line, each answering `--size` bytes), e.g. after the BLOBs moved
    /// to the warm tier or lost blocks.
    #[arg(long)]
    fetch_urls: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct PhaseReport {
    requests: usize,
    errors: usize,
    seconds: f64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU microseconds per request: the load generator's own, then each
    /// `--cpu-pid` in order.
    cpu_us_per_request: Vec<f64>,
    /// With `--direct`: fetches a store node answered (the rest went
    /// through the router).
    direct_answers: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    target: Target,
    label: String,
    /// Each BLOB's size (0 with `--mix`).
    size_bytes: usize,
    /// The bytes of every BLOB uploaded (or listed, with `--fetch-urls`).
    logical_bytes: u64,
    concurrency: usize,
    upload: PhaseReport,
    fetch: PhaseReport,
}

/// Where a stored BLOB can be fetched, and what it holds.
#[derive(Debug, Clone)]
struct Stored {
    url: String,
    size: u64,
    /// Of a `--mix` BLOB: the seed of its bytes ([`blob_bytes`]).
    seed: Option<u64>,
}

impl Stored {
    /// A `--save-urls` line back (`URL`, or `URL SIZE SEED`).
    fn parse(line: &str, size: Option<usize>) -> anyhow::Result<Stored> {
        let mut fields = line.split_whitespace();
        let url = fields.next().context("empty line")?.to_owned();
        match (fields.next(), fields.next()) {
            (Some(size), Some(seed)) => Ok(Stored {
                url,
                size: size.parse().with_context(|| format!("size in {line:?}"))?,
                seed: Some(seed.parse().with_context(|| format!("seed in {line:?}"))?),
            }),
            _ => Ok(Stored {
                url,
                size: size.context("a URL-only list needs --size")? as u64,
                seed: None,
            }),
        }
    }
}

struct Driver {
    target: Target,
    base: String,
    replication: Option<String>,
    fsync: bool,
    fetch_from_store: Option<String>,
    /// With `--direct`: the smart client's reads, and how many a node answered.
    direct: Option<router::direct::DirectReader>,
    direct_answers: AtomicUsize,
    http: reqwest::Client,
    /// Every upload's bytes, without `--mix`.
    payload: Option<&'static [u8]>,
    mix: Option<SizeMix>,
    seed: u64,
}

impl Driver {
    /// Upload `index`'s bytes, and its seed under `--mix`.
    fn blob(&self, index: usize) -> (Cow<'static, [u8]>, Option<u64>) {
        match (&self.mix, self.payload) {
            (Some(mix), _) => {
                let mut rng = StdRng::seed_from_u64(
                    self.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                let (_, size) = mix.draw(&mut rng);
                let seed: u64 = rng.random();
                (Cow::Owned(blob_bytes(seed, size)), Some(seed))
            }
            (None, payload) => (Cow::Borrowed(payload.unwrap_or_default()), None),
        }
    }

    async fn upload(&self, index: usize) -> anyhow::Result<Stored> {
        let (payload, seed) = self.blob(index);
        let size = payload.len() as u64;
        match self.target {
            Target::Hayloft => {
                let response = self
                    .http
                    .post(format!("{}/blobs", self.base))
                    .header("content-type", "application/octet-stream")
                    .body(match payload {
                        Cow::Borrowed(bytes) => reqwest::Body::from(bytes),
                        Cow::Owned(bytes) => reqwest::Body::from(bytes),
                    })
                    .send()
                    .await?;
                let status = response.status();
                if status.as_u16() != 201 {
                    bail!("upload answered {status}: {}", response.text().await?);
                }
                let answer: serde_json::Value = response.json().await?;
                let id = answer["id"].as_str().context("no id")?;
                let url = match &self.fetch_from_store {
                    None => format!("{}/blobs/{id}", self.base),
                    Some(store) => {
                        let (volume, key_cookie) = id.split_once(',').context("id form")?;
                        let split = key_cookie.len().checked_sub(8).context("id form")?;
                        let (key, cookie) = key_cookie.split_at(split);
                        format!("{store}/volumes/{volume}/needles/{key}?cookie={cookie}")
                    }
                };
                Ok(Stored { url, size, seed })
            }
            Target::Seaweedfs => {
                let mut assign = format!("{}/dir/assign", self.base);
                if let Some(replication) = &self.replication {
                    assign.push_str(&format!("?replication={replication}"));
                }
                // The master answers 503 while it grows volumes; its clients
                // retry (the wait counts in the upload's latency).
                let mut tries = 0;
                let answer: serde_json::Value = loop {
                    let response = self.http.get(&assign).send().await?;
                    if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && tries < 100
                    {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    break response.error_for_status()?.json().await?;
                };
                let fid = answer["fid"].as_str().context("assign: no fid")?;
                let volume = answer["url"].as_str().context("assign: no url")?;
                let url = format!("http://{volume}/{fid}");
                let boundary = "hayloftloadgenboundary7d1c";
                let mut body = Vec::with_capacity(payload.len() + 256);
                body.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                         filename=\"blob\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&payload);
                body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                let upload_url = if self.fsync {
                    format!("{url}?fsync=true")
                } else {
                    url.clone()
                };
                let response = self
                    .http
                    .post(&upload_url)
                    .header(
                        "content-type",
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                if !status.is_success() {
                    bail!("upload answered {status}: {}", response.text().await?);
                }
                let _ = response.bytes().await?;
                Ok(Stored { url, size, seed })
            }
        }
    }

    async fn fetch(&self, stored: &Stored) -> anyhow::Result<()> {
        let response = match &self.direct {
            Some(reader) => {
                let id = stored.url.rsplit('/').next().unwrap_or_default();
                let id = router::api::BlobId::parse(id)
                    .with_context(|| format!("no BLOB id in {}", stored.url))?;
                let (response, answered) = reader.get(&id).await?;
                if answered != router::direct::Answered::Router {
                    self.direct_answers.fetch_add(1, Ordering::Relaxed);
                }
                response
            }
            None => self.http.get(&stored.url).send().await?,
        };
        let status = response.status();
        if status.as_u16() != 200 {
            bail!("fetch answered {status}");
        }
        let bytes = response.bytes().await?;
        if bytes.len() as u64 != stored.size {
            bail!(
                "fetch returned {} bytes, expected {}",
                bytes.len(),
                stored.size
            );
        }
        if let Some(seed) = stored.seed
            && bytes.as_ref() != blob_bytes(seed, stored.size).as_slice()
        {
            bail!("fetch returned the wrong bytes");
        }
        Ok(())
    }
}

/// Runs `count` operations on `concurrency` tasks; returns per-request
/// latencies of the successes, the error count and the wall time.
async fn run_phase<F, Fut, T>(
    count: usize,
    concurrency: usize,
    operation: F,
) -> (Vec<(Duration, T)>, usize, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send,
    T: Send + 'static,
{
    let operation = Arc::new(operation);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (operation, next, errors) = (operation.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return done;
                }
                let begun = Instant::now();
                match operation(i).await {
                    Ok(value) => done.push((begun.elapsed(), value)),
                    Err(error) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("request {i} failed: {error:#}");
                        }
                    }
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    (all, errors.load(Ordering::Relaxed), started.elapsed())
}

/// CPU time (user + system) of this process, then of each of `pids`, in
/// seconds; a process that cannot be read counts 0.
fn cpu_seconds(pids: &[u32]) -> Vec<f64> {
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let read = |path: String| -> f64 {
        let Ok(stat) = std::fs::read_to_string(path) else {
            return 0.0;
        };
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14 and stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0.0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (tick(11) + tick(12)) as f64 / ticks_per_second
    };
    std::iter::once(read("/proc/self/stat".to_owned()))
        .chain(pids.iter().map(|pid| read(format!("/proc/{pid}/stat"))))
        .collect()
}

/// CPU microseconds per request between two [`cpu_seconds`] samples.
fn cpu_per_request(before: &[f64], after: &[f64], requests: usize) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| (a - b) * 1e6 / requests.max(1) as f64)
        .collect()
}

fn report(
    latencies: &mut [Duration],
    errors: usize,
    wall: Duration,
    cpu_us_per_request: Vec<f64>,
) -> PhaseReport {
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        ms(latencies[index])
    };
    PhaseReport {
        requests: latencies.len(),
        errors,
        seconds: wall.as_secs_f64(),
        requests_per_second: latencies.len() as f64 / wall.as_secs_f64().max(1e-9),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: latencies.last().copied().map(ms).unwrap_or(0.0),
        cpu_us_per_request,
        direct_answers: 0,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.concurrency > 0 && args.requests > 0, "nothing to do");
    let payload: Option<&'static [u8]> = args.size.map(|size| {
        let payload: Vec<u8> = (0..size)
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect();
        &*Vec::leak(payload)
    });
    let mix = args.mix.as_deref().map(SizeMix::parse).transpose()?;
    anyhow::ensure!(
        !args.direct || args.target == Target::Hayloft,
        "--direct reads Hayloft's store nodes"
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    let driver = Arc::new(Driver {
        target: args.target,
        direct: args
            .direct
            .then(|| router::direct::DirectReader::new(http.clone(), &base)),
        direct_answers: AtomicUsize::new(0),
        base,
        replication: args.replication.clone(),
        fsync: args.fsync,
        fetch_from_store: args
            .fetch_from_store
            .as_deref()
            .map(|url| url.trim_end_matches('/').to_owned()),
        http,
        payload,
        mix,
        seed: args.seed,
    });

    let cpu_pids = args.cpu_pids.clone();
    if let Some(path) = &args.fetch_urls {
        let stored: Vec<Stored> = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| Stored::parse(line, args.size))
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(!stored.is_empty(), "{} lists no URL", path.display());
        let stored = Arc::new(stored);
        if args.warmup > 0 {
            let (warm, stored) = (driver.clone(), stored.clone());
            run_phase(args.warmup, args.concurrency, move |i| {
                let (warm, stored) = (warm.clone(), stored.clone());
                async move { warm.fetch(&stored[i % stored.len()]).await }
            })
            .await;
        }
        let fetch = fetch_phase(&driver, &stored, args.requests, args.concurrency, &cpu_pids).await;
        let none = report(&mut [], 0, Duration::ZERO, Vec::new());
        let report = Report {
            target: args.target,
            label: args.label,
            size_bytes: args.size.unwrap_or(0),
            logical_bytes: stored.iter().map(|s| s.size).sum(),
            concurrency: args.concurrency,
            upload: none,
            fetch,
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }

    if args.warmup > 0 {
        let warm = driver.clone();
        let (stored, _, _) = run_phase(args.warmup, args.concurrency, move |i| {
            let warm = warm.clone();
            async move { warm.upload(usize::MAX - i).await }
        })
        .await;
        let stored: Arc<Vec<Stored>> = Arc::new(stored.into_iter().map(|(_, s)| s).collect());
        if !stored.is_empty() {
            let (warm, stored) = (driver.clone(), stored.clone());
            run_phase(args.warmup, args.concurrency, move |i| {
                let (warm, stored) = (warm.clone(), stored.clone());
                async move { warm.fetch(&stored[i % stored.len()]).await }
            })
            .await;
        }
    }

    let upload_cpu = cpu_seconds(&cpu_pids);
    let uploader = driver.clone();
    let (uploaded, upload_errors, upload_wall) =
        run_phase(args.requests, args.concurrency, move |i| {
            let uploader = uploader.clone();
            async move { uploader.upload(i).await }
        })
        .await;
    let upload_cpu = cpu_per_request(&upload_cpu, &cpu_seconds(&cpu_pids), uploaded.len());
    let mut upload_latencies: Vec<Duration> = uploaded.iter().map(|(d, _)| *d).collect();
    let stored: Arc<Vec<Stored>> = Arc::new(uploaded.into_iter().map(|(_, s)| s).collect());
    anyhow::ensure!(!stored.is_empty(), "every upload failed");

    if let Some(path) = &args.save_urls {
        let mut text = String::new();
        for blob in stored.iter() {
            text.push_str(&blob.url);
            if let Some(seed) = blob.seed {
                text.push_str(&format!(" {} {seed}", blob.size));
            }
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let fetches = if args.upload_only {
        0
    } else {
        args.requests.saturating_mul(args.fetch_passes.max(1))
    };
    let fetch = fetch_phase(&driver, &stored, fetches, args.concurrency, &cpu_pids).await;
    let report = Report {
        target: args.target,
        label: args.label,
        size_bytes: args.size.unwrap_or(0),
        logical_bytes: stored.iter().map(|s| s.size).sum(),
        concurrency: args.concurrency,
        upload: report(
            &mut upload_latencies,
            upload_errors,
            upload_wall,
            upload_cpu,
        ),
        fetch,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `count` fetches of `stored` in a scattered order (not upload order).
async fn fetch_phase(
    driver: &Arc<Driver>,
    stored: &Arc<Vec<Stored>>,
    count: usize,
    concurrency: usize,
    cpu_pids: &[u32],
) -> PhaseReport {
    if count == 0 {
        return report(&mut [], 0, Duration::ZERO, Vec::new());
    }
    let fetch_cpu = cpu_seconds(cpu_pids);
    let direct_before = driver.direct_answers.load(Ordering::Relaxed);
    let (fetcher, fetch_stored) = (driver.clone(), stored.clone());
    let (fetched, fetch_errors, fetch_wall) = run_phase(count, concurrency, move |i| {
        let (fetcher, stored) = (fetcher.clone(), fetch_stored.clone());
        let index = i.wrapping_mul(2_654_435_761) % stored.len();
        async move { fetcher.fetch(&stored[index]).await }
    })
    .await;
    let fetch_cpu = cpu_per_request(&fetch_cpu, &cpu_seconds(cpu_pids), fetched.len());
    let mut fetch_latencies: Vec<Duration> = fetched.iter().map(|(d, _)| *d).collect();
    PhaseReport {
        direct_answers: driver.direct_answers.load(Ordering::Relaxed) - direct_before,
        ..report(&mut fetch_latencies, fetch_errors, fetch_wall, fetch_cpu)
    }
}
