//! `hayloft bench efficiency`: what tiering saves in bytes and costs in
//! latency and work, over months of simulated time against a real cluster.
//!
//! A simulated clock advances one day at a time. Each day uploads its BLOBs
//! (sizes from [`bench::workload::SizeMix`]), reads and deletes live ones at rates
//! that fall with their age ([`bench::workload::Rates`]), all over HTTP through
//! the router, while the locked volumes that have been locked for
//! `--warm-after` simulated days migrate (`POST
//! /admin/volumes/{id}/migrate`: the migrator's own job, claimed, sealed,
//! verified, flipped and retired) and, with several datacenters, migration
//! passes build the geo layer. Simulated time stands still while a day's
//! work runs, so the figures do not depend on how fast the machine is.
//! After each day the cluster's files are measured ([`account`]). At the
//! end every live BLOB is read back and compared byte for byte, every
//! deleted one must answer `404`, and on a cluster the benchmark started,
//! storage nodes are killed to measure degraded and geo reads. The report
//! goes out as JSON, Markdown and plots ([`plot`]).

pub mod account;
mod plot;
pub mod report;
mod target;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use router::api::TIER_HEADER;
use router::api::migrate::PassReport;
use router::directory::VolumeState;
use router::directory::types::LogicalVolume;
use serde::Serialize;

use self::account::{LiveInVolume, account};
use self::report::{AgeBucket, Latency, Migration, Probe, Report, Sample, Verification};
use self::target::{Target, UpPlan};
use crate::config::{parse_duration_ms, parse_size};
use bench::workload::{Decay, Rates, SizeMix, blob_bytes, poisson};

/// `hayloft bench efficiency`.
#[derive(Debug, clap::Args)]
pub struct EfficiencyArgs {
    /// Where the report (`report.md`, `report.json`) and plots go.
    #[arg(long, default_value = "efficiency-report")]
    out: PathBuf,
    /// A small run that finishes in under two minutes (the defaults below
    /// in brackets); any flag given still wins.
    #[arg(long)]
    smoke: bool,
    /// Simulated days [120; smoke 70].
    #[arg(long)]
    days: Option<u32>,
    /// BLOBs uploaded per simulated day [150; smoke 25].
    #[arg(long)]
    uploads_per_day: Option<u32>,
    /// Size classes, `NAME=MIN-MAX:WEIGHT,...`, each log-uniform between
    /// its sizes [thumb=2KiB-16KiB:55,photo=32KiB-512KiB:42,video=1MiB-8MiB:3;
    /// smoke: videos of 1MiB-2MiB].
    #[arg(long)]
    mix: Option<String>,
    /// Mean reads of a BLOB on its first day [0.5; smoke 1].
    #[arg(long)]
    reads_first_day: Option<f64>,
    /// How far read and delete rates fall within a week.
    #[arg(long, default_value_t = 10.0)]
    drop_week: f64,
    /// How far read and delete rates fall within 60 days.
    #[arg(long, default_value_t = 100.0)]
    drop_60_days: f64,
    /// Share of BLOBs deleted within a year of their upload.
    #[arg(long, default_value_t = 0.25)]
    deleted_first_year: f64,
    /// Simulated age at which a locked volume migrates.
    #[arg(long, default_value = "30d", value_parser = parse_duration_ms)]
    warm_after: u64,
    /// Hot volume size of the cluster started here [64MiB; smoke 16MiB].
    #[arg(long, value_parser = parse_size)]
    volume_size: Option<u64>,
    /// Writable volumes the router fills at once [4; smoke 2].
    #[arg(long)]
    writable_volumes: Option<usize>,
    /// Datacenters of the cluster started here (2 or 3: the geo layer).
    #[arg(long, default_value_t = 1)]
    datacenters: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seed of every draw: the same seed and knobs make the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated days between two measurements of the files.
    #[arg(long, default_value_t = 1)]
    sample_every: u32,
    /// Reads of each probe (degraded, geo) [1000; smoke 200].
    #[arg(long)]
    probe_reads: Option<usize>,
    /// Drive a running cluster through this router instead of starting one
    /// (no probes: its nodes are not ours to kill).
    #[arg(long)]
    url: Option<String>,
    /// With `--url`: its data directory on this machine, to measure its
    /// files (without it the report has no bytes on disk).
    #[arg(long, requires = "url")]
    data: Option<PathBuf>,
    /// Where the cluster started here keeps its data (default: a
    /// temporary directory, removed at the end).
    #[arg(long, conflicts_with = "url")]
    work: Option<PathBuf>,
}

/// Every knob, resolved; copied into the report.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    smoke: bool,
    days: u32,
    uploads_per_day: u32,
    mix: SizeMix,
    rates: Rates,
    drop_week: f64,
    drop_60_days: f64,
    deleted_first_year: f64,
    warm_after_days: u32,
    volume_size_bytes: u64,
    writable_volumes: usize,
    datacenters: usize,
    concurrency: usize,
    seed: u64,
    sample_every_days: u32,
    probe_reads: usize,
    router: Option<String>,
}

impl Plan {
    fn new(args: &EfficiencyArgs) -> anyhow::Result<Plan> {
        let smoke = args.smoke;
        fn pick<T>(smoke: bool, full: T, quick: T) -> T {
            if smoke { quick } else { full }
        }
        let mix = SizeMix::parse(args.mix.as_deref().unwrap_or(pick(
            smoke,
            "thumb=2KiB-16KiB:55,photo=32KiB-512KiB:42,video=1MiB-8MiB:3",
            "thumb=2KiB-16KiB:55,photo=32KiB-512KiB:42,video=1MiB-2MiB:3",
        )))?;
        let decay = Decay::from_drops(args.drop_week, args.drop_60_days)?;
        let reads_first_day = args.reads_first_day.unwrap_or(pick(smoke, 0.5, 1.0));
        let rates = Rates::new(decay, args.deleted_first_year, reads_first_day)?;
        let day_ms = 24 * 3600 * 1000;
        anyhow::ensure!(
            args.warm_after.is_multiple_of(day_ms),
            "--warm-after must be whole simulated days (the clock moves a day at a time)"
        );
        let plan = Plan {
            smoke,
            days: args.days.unwrap_or(pick(smoke, 120, 70)),
            uploads_per_day: args.uploads_per_day.unwrap_or(pick(smoke, 150, 25)),
            mix,
            rates,
            drop_week: args.drop_week,
            drop_60_days: args.drop_60_days,
            deleted_first_year: args.deleted_first_year,
            warm_after_days: u32::try_from(args.warm_after / day_ms).context("--warm-after")?,
            volume_size_bytes: args.volume_size.unwrap_or(pick(smoke, 64 << 20, 16 << 20)),
            writable_volumes: args.writable_volumes.unwrap_or(pick(smoke, 4, 2)),
            datacenters: args.datacenters,
            concurrency: args.concurrency,
            seed: args.seed,
            sample_every_days: args.sample_every,
            probe_reads: args.probe_reads.unwrap_or(pick(smoke, 1000, 200)),
            router: args.url.clone(),
        };
        anyhow::ensure!(plan.days > 0, "--days must be positive");
        anyhow::ensure!(
            (1..=256).contains(&plan.concurrency),
            "--concurrency must be 1 to 256"
        );
        anyhow::ensure!(
            plan.sample_every_days > 0,
            "--sample-every must be positive"
        );
        anyhow::ensure!(
            plan.volume_size_bytes >= 2 * plan.mix.max_bytes(),
            "--volume-size must hold at least two of the largest BLOB ({} bytes)",
            plan.mix.max_bytes()
        );
        Ok(plan)
    }

    /// `hayloft up` flags of the cluster started here. Its own migrator
    /// never finds a volume old enough (the simulated clock decides) and no
    /// volume locks for being idle; everything else is the defaults.
    fn up_flags(&self) -> Vec<String> {
        [
            "--volume-size",
            &self.volume_size_bytes.to_string(),
            "--max-blob-size",
            &self.mix.max_bytes().to_string(),
            "--writable-volumes",
            &self.writable_volumes.to_string(),
            "--datacenters",
            &self.datacenters.to_string(),
            "--warm-after",
            "36500d",
            "--idle-lock-after",
            "36500d",
            "--migrate-interval",
            "1d",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// Runs the benchmark and writes its report; fails if it found a problem.
#[allow(
    clippy::print_stdout,
    reason = "where the report went is the command's output"
)]
pub async fn run(args: EfficiencyArgs) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let scratch;
    let mut target = match &args.url {
        Some(url) => Target::existing(url, args.data.clone()).await?,
        None => {
            let work = match &args.work {
                Some(work) => work.clone(),
                None => {
                    scratch = tempfile::Builder::new()
                        .prefix("hayloft-efficiency-")
                        .tempdir()
                        .context("creating a work directory")?;
                    scratch.path().to_path_buf()
                }
            };
            let up = UpPlan {
                data: work.join("data"),
                flags: plan.up_flags(),
            };
            Target::start(&up, &args.out.join("up.log")).await?
        }
    };
    let started = Instant::now();
    let outcome = Run::new(&plan, &target).go().await;
    target.stop().await;
    let mut report = outcome?;
    report.seconds = started.elapsed().as_secs_f64();
    let json = args.out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let plots = plot::draw_all(&report, &args.out);
    let mut markdown = report.markdown();
    match &plots {
        Ok(names) => {
            markdown.push_str("\n## Plots\n\n");
            for name in names {
                markdown.push_str(&format!("![{name}]({name}.svg)\n"));
            }
        }
        Err(error) => markdown.push_str(&format!("\nNo plots: {error:#}\n")),
    }
    let md = args.out.join("report.md");
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    println!("{markdown}");
    println!("report: {} and {}", md.display(), json.display());
    plots?;
    if !report.problems.is_empty() {
        bail!(
            "{} problem(s), first: {}",
            report.problems.len(),
            report.problems[0]
        );
    }
    Ok(())
}

/// One BLOB the benchmark uploaded.
#[derive(Debug, Clone)]
struct Blob {
    id: String,
    volume: u32,
    class: usize,
    size: u64,
    seed: u64,
    day: u32,
    deleted: bool,
}

/// One read of the workload: the BLOB's age, the path, the latency.
struct Read {
    age_days: u32,
    path: &'static str,
    ms: f64,
}

/// The age ranges reads are grouped by.
const AGE_BUCKETS: [(&str, u32, Option<u32>); 6] = [
    ("< 1 day", 0, Some(1)),
    ("1-7 days", 1, Some(7)),
    ("7-30 days", 7, Some(30)),
    ("30-90 days", 30, Some(90)),
    ("90-365 days", 90, Some(365)),
    (">= 1 year", 365, None),
];

/// The paths a read can take, as the router names them in [`TIER_HEADER`].
const PATHS: [&str; 4] = ["hot", "warm", "degraded", "geo"];

fn path_of(response: &reqwest::Response) -> &'static str {
    let header = response
        .headers()
        .get(TIER_HEADER)
        .and_then(|v| v.to_str().ok());
    PATHS
        .into_iter()
        .find(|p| Some(*p) == header)
        .unwrap_or("unknown")
}

/// The state of one run.
struct Run<'a> {
    plan: &'a Plan,
    target: &'a Target,
    rng: rand::rngs::StdRng,
    blobs: Vec<Blob>,
    /// Simulated day each volume was first seen locked.
    locked_day: HashMap<u32, u32>,
    volumes: Vec<LogicalVolume>,
    reads: Vec<Read>,
    deletes_by_tier: BTreeMap<String, u64>,
    /// Per job: live bytes, seconds, needles.
    jobs: Vec<(u64, f64, u64)>,
    failed_jobs: u64,
    timeline: Vec<Sample>,
    problems: Vec<String>,
    /// Every problem, listed or not.
    problem_count: usize,
}

/// The problems a report lists at most (the last line counts the rest).
const PROBLEMS_MAX: usize = 50;

impl<'a> Run<'a> {
    fn new(plan: &'a Plan, target: &'a Target) -> Run<'a> {
        Run {
            plan,
            target,
            rng: rand::rngs::StdRng::seed_from_u64(plan.seed),
            blobs: Vec::new(),
            locked_day: HashMap::new(),
            volumes: Vec::new(),
            reads: Vec::new(),
            deletes_by_tier: BTreeMap::new(),
            jobs: Vec::new(),
            failed_jobs: 0,
            timeline: Vec::new(),
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(text);
        }
    }

    async fn go(mut self) -> anyhow::Result<Report> {
        let bar = progress(self.plan.days);
        for day in 0..self.plan.days {
            self.day(day).await?;
            let last = day + 1 == self.plan.days;
            if day.is_multiple_of(self.plan.sample_every_days) || last {
                let sample = self.sample(day).await?;
                let text = match &sample.disk {
                    Some(disk) => format!(
                        "{} live BLOBs, effective replication hot {:.3} warm {:.3} all {:.3}",
                        sample.live,
                        disk.hot.effective_replication,
                        disk.warm.effective_replication,
                        disk.effective_replication
                    ),
                    None => format!("{} live BLOBs", sample.live),
                };
                match &bar {
                    Some(bar) => bar.set_message(text),
                    None if day.is_multiple_of((self.plan.days / 10).max(1)) || last => {
                        eprintln!("day {}/{}: {text}", day + 1, self.plan.days);
                    }
                    None => {}
                }
                self.timeline.push(sample);
            }
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let verification = self.verify().await?;
        let probes = self.probes().await?;
        Ok(self.report(verification, probes))
    }

    /// One simulated day: uploads, then reads, then deletes, while the
    /// volumes due migrate; then a geo pass and a look at the volumes.
    async fn day(&mut self, day: u32) -> anyhow::Result<()> {
        let due: Vec<u32> = self
            .volumes
            .iter()
            // A seal that failed and could not be undone leaves `sealing`:
            // a forced migration resumes it.
            .filter(|v| matches!(v.state, VolumeState::Locked | VolumeState::Sealing))
            .filter(|v| {
                self.locked_day
                    .get(&v.id)
                    .is_some_and(|locked| locked + self.plan.warm_after_days <= day)
            })
            .map(|v| v.id)
            .collect();
        let live_bytes = self.live_by_volume();
        let target = self.target;
        let migrations = futures::stream::iter(due)
            .map(|volume| async move {
                let path = format!("/admin/volumes/{volume}/migrate");
                (volume, target.post_json::<PassReport>(&path).await)
            })
            // A router runs one migration pass at a time.
            .buffered(1)
            .collect::<Vec<_>>();
        let (work, outcomes) = tokio::join!(self.traffic(day), migrations);
        work?;
        for (volume, outcome) in outcomes {
            match outcome {
                Ok(pass) => {
                    for job in pass.jobs {
                        if let Some(error) = job.error {
                            self.failed_jobs += 1;
                            tracing::warn!(volume = job.volume, %error, "migration failed; retried tomorrow");
                        } else {
                            let bytes = live_bytes.get(&volume).map_or(0, |l| l.bytes);
                            self.jobs.push((bytes, job.seconds, job.needles));
                        }
                    }
                }
                Err(error) => {
                    self.failed_jobs += 1;
                    tracing::warn!(volume, error = %format!("{error:#}"), "migration request failed");
                }
            }
        }
        if self.target.owned() && self.plan.datacenters > 1 {
            let pass: PassReport = self.target.post_json("/admin/migrate").await?;
            for job in pass.jobs.iter().filter(|j| j.error.is_some()) {
                tracing::warn!(volume = job.volume, error = ?job.error, "geo job failed");
            }
            for problem in pass.geo.problems {
                tracing::warn!(%problem, "geo layer");
            }
        }
        self.volumes = self.target.volumes().await?;
        for volume in &self.volumes {
            if volume.state != VolumeState::Writable {
                self.locked_day.entry(volume.id).or_insert(day);
            }
        }
        Ok(())
    }

    /// The day's uploads, reads and deletes, each phase at the configured
    /// concurrency.
    async fn traffic(&mut self, day: u32) -> anyhow::Result<()> {
        let plan = self.plan;
        // Uploads.
        let news: Vec<(usize, u64, u64)> = (0..plan.uploads_per_day)
            .map(|_| {
                let (class, size) = plan.mix.draw(&mut self.rng);
                (class, size, self.rng.random())
            })
            .collect();
        let http = self.target.http();
        let router = &self.target.router;
        let uploaded: Vec<anyhow::Result<Blob>> = futures::stream::iter(news)
            .map(|(class, size, seed)| async move {
                let body = blob_bytes(seed, size);
                let response = http
                    .post(format!("{router}/blobs"))
                    .header("content-type", plan.mix.classes[class].content_type)
                    .body(body)
                    .send()
                    .await
                    .context("upload")?;
                let response = expect(response, reqwest::StatusCode::CREATED, || {
                    format!("upload of {size} bytes")
                })
                .await?;
                let created: serde_json::Value = response.json().await.context("upload answer")?;
                let id = created["id"]
                    .as_str()
                    .context("upload answer has no id")?
                    .to_owned();
                let volume = id
                    .split(',')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("id {id:?}"))?;
                Ok(Blob {
                    id,
                    volume,
                    class,
                    size,
                    seed,
                    day,
                    deleted: false,
                })
            })
            // In the order drawn, so that the same seed draws the same
            // reads and deletes of the same BLOBs, whatever finished first.
            .buffered(plan.concurrency)
            .collect()
            .await;
        for blob in uploaded {
            match blob {
                Ok(blob) => self.blobs.push(blob),
                Err(error) => self.problem(format!("day {day}: {error:#}")),
            }
        }
        // Reads, then deletes, of the BLOBs live at the start of the phase.
        let mut reads = Vec::new();
        let mut deletes = Vec::new();
        for (index, blob) in self.blobs.iter().enumerate().filter(|(_, b)| !b.deleted) {
            let age = f64::from(day - blob.day);
            for _ in 0..poisson(&mut self.rng, plan.rates.reads_mean(age)) {
                reads.push(index);
            }
            if self.rng.random::<f64>() < plan.rates.delete_chance(age) {
                deletes.push(index);
            }
        }
        reads.shuffle(&mut self.rng);
        let blobs = &self.blobs;
        let read: Vec<(usize, anyhow::Result<(&'static str, f64)>)> = futures::stream::iter(reads)
            .map(|index| async move { (index, read_blob(http, router, &blobs[index]).await) })
            .buffer_unordered(plan.concurrency)
            .collect()
            .await;
        for (index, outcome) in read {
            match outcome {
                Ok((path, ms)) => self.reads.push(Read {
                    age_days: day - self.blobs[index].day,
                    path,
                    ms,
                }),
                Err(error) => {
                    let text = format!("day {day}: read {}: {error:#}", self.blobs[index].id);
                    self.problem(text);
                }
            }
        }
        let blobs = &self.blobs;
        let deleted: Vec<(usize, anyhow::Result<&'static str>)> = futures::stream::iter(deletes)
            .map(|index| async move {
                let url = format!("{router}/blobs/{}", blobs[index].id);
                let outcome = async {
                    let response = http.delete(&url).send().await.context("delete")?;
                    let response = expect(response, reqwest::StatusCode::NO_CONTENT, || {
                        "delete".into()
                    })
                    .await?;
                    Ok(path_of(&response))
                }
                .await;
                (index, outcome)
            })
            .buffer_unordered(plan.concurrency)
            .collect()
            .await;
        for (index, outcome) in deleted {
            match outcome {
                Ok(tier) => {
                    self.blobs[index].deleted = true;
                    *self.deletes_by_tier.entry(tier.to_owned()).or_default() += 1;
                }
                Err(error) => {
                    let text = format!("day {day}: {} {error:#}", self.blobs[index].id);
                    self.problem(text);
                }
            }
        }
        Ok(())
    }

    /// What is live in each volume, by the benchmark's own account.
    fn live_by_volume(&self) -> HashMap<u32, LiveInVolume> {
        let mut live: HashMap<u32, LiveInVolume> = HashMap::new();
        for blob in self.blobs.iter().filter(|b| !b.deleted) {
            let entry = live.entry(blob.volume).or_default();
            let content_type = self.plan.mix.classes[blob.class].content_type;
            entry.blobs += 1;
            entry.bytes += blob.size;
            entry.framed += haystack::format::needle_size_bytes(content_type.len(), blob.size);
        }
        live
    }

    async fn sample(&self, day: u32) -> anyhow::Result<Sample> {
        let live = self.live_by_volume();
        let disk = match &self.target.data {
            Some(data) => {
                let data = data.clone();
                let files = tokio::task::spawn_blocking(move || bench::disk::scan(&data))
                    .await
                    .context("scanning the data directory")??;
                Some(account(&files, &self.volumes, &live))
            }
            None => None,
        };
        let deleted = self.blobs.iter().filter(|b| b.deleted).count() as u64;
        Ok(Sample {
            day,
            uploaded: self.blobs.len() as u64,
            live: self.blobs.len() as u64 - deleted,
            deleted,
            live_bytes: live.values().map(|l| l.bytes).sum(),
            disk,
        })
    }

    /// Every live BLOB read back and compared; every deleted one must be
    /// gone.
    async fn verify(&mut self) -> anyhow::Result<Verification> {
        let http = self.target.http();
        let router = &self.target.router;
        let blobs = &self.blobs;
        let checks: Vec<(usize, anyhow::Result<()>)> = futures::stream::iter(0..blobs.len())
            .map(|index| async move {
                let blob = &blobs[index];
                let outcome = if blob.deleted {
                    async {
                        let url = format!("{router}/blobs/{}", blob.id);
                        let status = http.get(&url).send().await.context("read")?.status();
                        if status != reqwest::StatusCode::NOT_FOUND {
                            bail!("deleted, but a read answers {status}");
                        }
                        Ok(())
                    }
                    .await
                } else {
                    read_blob(http, router, blob).await.map(|_| ())
                };
                (index, outcome)
            })
            .buffer_unordered(self.plan.concurrency)
            .collect()
            .await;
        let mut verification = Verification {
            uploaded: self.blobs.len() as u64,
            ..Verification::default()
        };
        for (index, outcome) in checks {
            let blob = &self.blobs[index];
            match (blob.deleted, outcome) {
                (true, Ok(())) => verification.deleted_gone += 1,
                (false, Ok(())) => verification.live_identical += 1,
                (_, Err(error)) => {
                    let text = format!("final check of {}: {error:#}", blob.id);
                    self.problem(text);
                }
            }
        }
        verification.deleted = self.blobs.iter().filter(|b| b.deleted).count() as u64;
        verification.live = verification.uploaded - verification.deleted;
        verification.accounted = verification.live + verification.deleted == verification.uploaded
            && verification.live_identical == verification.live
            && verification.deleted_gone == verification.deleted;
        Ok(verification)
    }

    /// On a cluster the benchmark started, with warm volumes: four storage
    /// nodes of the cell holding the most killed (reads decode through the
    /// backoff node), then, with the geo layer, the rest of that cell and
    /// its backoff node (reads come from the other datacenters).
    async fn probes(&mut self) -> anyhow::Result<Vec<Probe>> {
        if !self.target.owned() || self.plan.probe_reads == 0 {
            return Ok(Vec::new());
        }
        let nodes = self.target.cluster()?;
        let datacenter_of = |id: &str| {
            nodes
                .iter()
                .find(|n| n.id == id)
                .map(|n| n.datacenter.clone())
        };
        let mut by_datacenter: BTreeMap<String, Vec<&LogicalVolume>> = BTreeMap::new();
        for volume in &self.volumes {
            if volume.state == VolumeState::Warm && volume.geo.of.is_empty() {
                by_datacenter
                    .entry(volume.home_datacenter(datacenter_of))
                    .or_default()
                    .push(volume);
            }
        }
        let Some((datacenter, volumes)) = by_datacenter.into_iter().max_by_key(|(_, v)| v.len())
        else {
            return Ok(Vec::new());
        };
        let first_blocks: Vec<String> = volumes[0]
            .warm
            .as_ref()
            .and_then(|w| w.stripes.first())
            .map(|stripe| stripe.iter().take(4).cloned().collect())
            .unwrap_or_default();
        let geo = volumes
            .iter()
            .any(|v| v.geo.copy.is_some() || v.geo.xor.is_some());
        let ids: HashSet<u32> = volumes.iter().map(|v| v.id).collect();
        let mut sample: Vec<usize> = (0..self.blobs.len())
            .filter(|&i| !self.blobs[i].deleted && ids.contains(&self.blobs[i].volume))
            .collect();
        sample.shuffle(&mut self.rng);
        sample.truncate(self.plan.probe_reads);
        let mut probes = Vec::new();
        let degraded: Vec<_> = nodes
            .iter()
            .filter(|n| first_blocks.contains(&n.id))
            .cloned()
            .collect();
        self.target.kill(&degraded).await?;
        probes.push(self.probe("degraded", &degraded, &sample).await);
        if geo {
            let rest: Vec<_> = nodes
                .iter()
                .filter(|n| n.datacenter == datacenter)
                .filter(|n| n.role == "f4-storage" || n.role == "backoff")
                .filter(|n| !first_blocks.contains(&n.id))
                .cloned()
                .collect();
            self.target.kill(&rest).await?;
            let all: Vec<_> = degraded.iter().chain(&rest).cloned().collect();
            probes.push(self.probe("geo", &all, &sample).await);
        }
        Ok(probes)
    }

    /// Reads `sample` one at a time (latency without queueing): healthy
    /// warm reads of the sample's BLOBs beside the degraded or geo ones.
    async fn probe(
        &mut self,
        name: &str,
        killed: &[crate::cluster::NodeEntry],
        sample: &[usize],
    ) -> Probe {
        let mut by_path: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut failed = 0;
        for &index in sample {
            match read_blob(self.target.http(), &self.target.router, &self.blobs[index]).await {
                Ok((path, ms)) => by_path.entry(path.to_owned()).or_default().push(ms),
                Err(error) => {
                    failed += 1;
                    let text = format!("{name} probe: read {}: {error:#}", self.blobs[index].id);
                    self.problem(text);
                }
            }
        }
        Probe {
            name: name.to_owned(),
            killed: killed.iter().map(|n| n.id.clone()).collect(),
            by_path: by_path
                .into_iter()
                .map(|(path, ms)| (path, Latency::of(ms)))
                .collect(),
            failed,
        }
    }

    fn report(self, verification: Verification, probes: Vec<Probe>) -> Report {
        let mut by_path: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for read in &self.reads {
            by_path
                .entry(read.path.to_owned())
                .or_default()
                .push(read.ms);
        }
        let reads_by_age = AGE_BUCKETS
            .iter()
            .map(|&(label, from, to)| {
                let within: Vec<&Read> = self
                    .reads
                    .iter()
                    .filter(|r| r.age_days >= from && to.is_none_or(|to| r.age_days < to))
                    .collect();
                let mut paths = BTreeMap::new();
                for read in &within {
                    *paths.entry(read.path.to_owned()).or_default() += 1;
                }
                AgeBucket {
                    label: label.to_owned(),
                    from_days: from,
                    to_days: to,
                    by_path: paths,
                    latency: Latency::of(within.iter().map(|r| r.ms).collect()),
                }
            })
            .collect();
        let mut rates: Vec<f64> = self
            .jobs
            .iter()
            .filter(|(_, s, _)| *s > 0.0)
            .map(|(b, s, _)| *b as f64 / s / 1e6)
            .collect();
        rates.sort_by(f64::total_cmp);
        let bytes: u64 = self.jobs.iter().map(|j| j.0).sum();
        let seconds: f64 = self.jobs.iter().map(|j| j.1).sum();
        let migration = Migration {
            volumes: self.jobs.len() as u64,
            failed: self.failed_jobs,
            needles: self.jobs.iter().map(|j| j.2).sum(),
            bytes,
            seconds,
            mb_per_second: if seconds > 0.0 {
                bytes as f64 / seconds / 1e6
            } else {
                0.0
            },
            median_mb_per_second: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
        };
        let mut problems = self.problems;
        if self.problem_count > problems.len() {
            problems.push(format!(
                "and {} more problems",
                self.problem_count - problems.len()
            ));
        }
        if !verification.accounted {
            problems.push(format!(
                "not every BLOB is accounted for: {} uploaded, {} live ({} read back identical), \
                 {} deleted ({} gone)",
                verification.uploaded,
                verification.live,
                verification.live_identical,
                verification.deleted,
                verification.deleted_gone
            ));
        }
        Report {
            version: report::REPORT_VERSION,
            plan: serde_json::to_value(self.plan).unwrap_or_default(),
            seconds: 0.0,
            timeline: self.timeline,
            reads_by_path: by_path
                .into_iter()
                .map(|(path, ms)| (path, Latency::of(ms)))
                .collect(),
            reads_by_age,
            deletes_by_tier: self.deletes_by_tier,
            migration,
            probes,
            verification,
            problems,
        }
    }
}

/// `response` if it has status `expected`; otherwise an error naming
/// `what`, the status and the answer's body.
async fn expect(
    response: reqwest::Response,
    expected: reqwest::StatusCode,
    what: impl FnOnce() -> String,
) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status == expected {
        return Ok(response);
    }
    bail!(
        "{}: {status}: {}",
        what(),
        response.text().await.unwrap_or_default()
    )
}

/// GET one BLOB and compare its bytes: its path and latency in ms.
async fn read_blob(
    http: &reqwest::Client,
    router: &str,
    blob: &Blob,
) -> anyhow::Result<(&'static str, f64)> {
    let started = Instant::now();
    let response = http
        .get(format!("{router}/blobs/{}", blob.id))
        .send()
        .await
        .context("read")?;
    let response = expect(response, reqwest::StatusCode::OK, || "read answered".into()).await?;
    let path = path_of(&response);
    let body = response.bytes().await.context("read body")?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if body.as_ref() != blob_bytes(blob.seed, blob.size).as_slice() {
        bail!(
            "read answered 200 with wrong bytes ({} of {} bytes, path {path})",
            body.len(),
            blob.size
        );
    }
    Ok((path, ms))
}

/// A bar over the simulated days on a terminal; `None` elsewhere (then
/// plain lines go to stderr).
fn progress(days: u32) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(u64::from(days)).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} day {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    })
}
