//! The efficiency benchmark's report: one JSON document, and the same in
//! Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::account::Accounting;

/// Version of the JSON report's shape.
pub const REPORT_VERSION: u32 = 1;

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// The workload and cluster, every knob resolved.
    pub plan: serde_json::Value,
    /// Real seconds the run took.
    pub seconds: f64,
    /// One sample per `sample_every_days` simulated days, and the last day.
    pub timeline: Vec<Sample>,
    /// Read latency of the run's reads (at `concurrency`) by the path that
    /// served them (`hot`, `warm`, `degraded`, `geo`); the probes' are in
    /// `probes`.
    pub reads_by_path: BTreeMap<String, Latency>,
    /// Reads by the BLOB's age when read.
    pub reads_by_age: Vec<AgeBucket>,
    /// Deletes by the tier that took them.
    pub deletes_by_tier: BTreeMap<String, u64>,
    /// Migrations: volumes moved to the warm tier and how fast.
    pub migration: Migration,
    /// The degraded and geo probes (a cluster the benchmark started only).
    pub probes: Vec<Probe>,
    /// The final check of every BLOB.
    pub verification: Verification,
    /// What went wrong; empty in a good run.
    pub problems: Vec<String>,
}

/// The state at the end of one simulated day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub day: u32,
    pub uploaded: u64,
    pub live: u64,
    pub deleted: u64,
    pub live_bytes: u64,
    /// Bytes on disk; absent when the cluster's files cannot be read.
    pub disk: Option<Accounting>,
}

/// A latency distribution, milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// `(ms, share of reads at most that long)` at every percent.
    pub cdf: Vec<(f64, f64)>,
}

impl Latency {
    /// Its cells of a Markdown table row: reads, p50, p90, p99, max (ms).
    fn cells(&self) -> String {
        format!(
            "{} | {:.2} | {:.2} | {:.2} | {:.2}",
            self.count, self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }

    /// The distribution of `samples` (sorted here).
    pub fn of(mut samples: Vec<f64>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Latency {
            count: samples.len() as u64,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: samples[samples.len() - 1],
            cdf: (0..=100)
                .map(|p| (at(f64::from(p) / 100.0), f64::from(p) / 100.0))
                .collect(),
        }
    }
}

/// Reads of BLOBs of one age range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgeBucket {
    pub label: String,
    pub from_days: u32,
    pub to_days: Option<u32>,
    /// Reads by path.
    pub by_path: BTreeMap<String, u64>,
    pub latency: Latency,
}

/// What the migrations did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Migration {
    pub volumes: u64,
    pub failed: u64,
    pub needles: u64,
    /// Live BLOB bytes moved.
    pub bytes: u64,
    pub seconds: f64,
    /// Over all jobs.
    pub mb_per_second: f64,
    pub median_mb_per_second: f64,
}

/// Reads with storage nodes killed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// `degraded` (four storage nodes of a cell down) or `geo` (the whole
    /// cell and its backoff node down).
    pub name: String,
    pub killed: Vec<String>,
    /// Its reads (one at a time) by the path that served them.
    pub by_path: BTreeMap<String, Latency>,
    pub failed: u64,
}

/// The final check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verification {
    pub uploaded: u64,
    pub live: u64,
    pub deleted: u64,
    /// `live + deleted == uploaded`.
    pub accounted: bool,
    /// Live BLOBs read back byte-identical.
    pub live_identical: u64,
    /// Deleted BLOBs that answer `404`.
    pub deleted_gone: u64,
}

impl Report {
    /// The last sample with disk figures.
    pub fn last_disk(&self) -> Option<&Accounting> {
        self.timeline.iter().rev().find_map(|s| s.disk.as_ref())
    }

    /// The report in Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Hayloft storage efficiency\n");
        let last = self.timeline.last();
        if let Some(last) = last {
            let _ = writeln!(
                md,
                "{} simulated days in {:.0} s: {} BLOBs uploaded, {} deleted, {} live ({}).\n",
                last.day + 1,
                self.seconds,
                last.uploaded,
                last.deleted,
                last.live,
                mib(last.live_bytes)
            );
        }
        if let Some(disk) = self.last_disk() {
            let _ = writeln!(md, "## Bytes on disk at the end\n");
            let _ = writeln!(
                md,
                "| tier | volumes | live | on disk | effective replication | on disk per live byte |"
            );
            let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
            for (name, tier) in [("hot", &disk.hot), ("warm", &disk.warm)] {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | **{:.4}** | {:.4} |",
                    tier.volumes,
                    mib(tier.logical_bytes),
                    mib(tier.total),
                    tier.effective_replication,
                    tier.on_disk_per_live_byte
                );
            }
            let _ = writeln!(
                md,
                "| all | {} | {} | {} | **{:.4}** | {:.4} |\n",
                disk.hot.volumes + disk.warm.volumes,
                mib(disk.hot.logical_bytes + disk.warm.logical_bytes),
                mib(disk.hot.total + disk.warm.total),
                disk.effective_replication,
                disk.on_disk_per_live_byte
            );
            let _ = writeln!(
                md,
                "Saving against three replicas (the f4 paper's form): {} ({:.1}% of {}).\n",
                mib_signed(disk.saving_bytes),
                disk.saving_share * 100.0,
                mib(3 * (disk.hot.logical_bytes + disk.warm.logical_bytes))
            );
            let _ = writeln!(md, "| file kind | hot | warm |");
            let _ = writeln!(md, "|---|---:|---:|");
            for ((name, hot), (_, warm)) in disk.hot.kinds().into_iter().zip(disk.warm.kinds()) {
                let _ = writeln!(md, "| {name} | {} | {} |", mib(hot), mib(warm));
            }
            md.push('\n');
        }
        let _ = writeln!(md, "## Reads by path\n");
        let _ = writeln!(md, "| path | reads | p50 ms | p90 ms | p99 ms | max ms |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for (path, latency) in &self.reads_by_path {
            let _ = writeln!(md, "| {path} | {} |", latency.cells());
        }
        let _ = writeln!(md, "\n## Reads by age\n");
        let _ = writeln!(
            md,
            "| age | reads | hot | warm | degraded | geo | p50 ms | p99 ms |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for bucket in &self.reads_by_age {
            let by = |path: &str| bucket.by_path.get(path).copied().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
                bucket.label,
                bucket.latency.count,
                by("hot"),
                by("warm"),
                by("degraded"),
                by("geo"),
                bucket.latency.p50_ms,
                bucket.latency.p99_ms
            );
        }
        let deletes: u64 = self.deletes_by_tier.values().sum();
        let _ = writeln!(md, "\n## Deletes by tier\n");
        for (tier, count) in &self.deletes_by_tier {
            let _ = writeln!(
                md,
                "- {tier}: {count} ({:.1}%)",
                *count as f64 * 100.0 / deletes.max(1) as f64
            );
        }
        let m = &self.migration;
        let _ = writeln!(
            md,
            "\n## Migration\n\n{} volumes moved to the warm tier ({} failed attempts): {} needles, \
             {} of live BLOBs in {:.1} s, {:.1} MB/s over all jobs, {:.1} MB/s median per job.",
            m.volumes,
            m.failed,
            m.needles,
            mib(m.bytes),
            m.seconds,
            m.mb_per_second,
            m.median_mb_per_second
        );
        if !self.probes.is_empty() {
            let _ = writeln!(md, "\n## Probes (one read at a time)\n");
            let _ = writeln!(
                md,
                "| probe | path | reads | p50 ms | p90 ms | p99 ms | max ms |"
            );
            let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
            for probe in &self.probes {
                for (path, latency) in &probe.by_path {
                    let _ = writeln!(md, "| {} | {path} | {} |", probe.name, latency.cells());
                }
            }
            md.push('\n');
            for probe in &self.probes {
                let _ = writeln!(
                    md,
                    "- {}: {} killed; {} reads failed",
                    probe.name,
                    probe.killed.join(", "),
                    probe.failed
                );
            }
        }
        let v = &self.verification;
        let _ = writeln!(
            md,
            "\n## Verification\n\n{} uploaded = {} live + {} deleted: {}. {} live BLOBs read back \
             byte-identical; {} deleted BLOBs answer 404.",
            v.uploaded,
            v.live,
            v.deleted,
            if v.accounted { "yes" } else { "NO" },
            v.live_identical,
            v.deleted_gone
        );
        if !self.problems.is_empty() {
            let _ = writeln!(md, "\n## Problems\n");
            for problem in &self.problems {
                let _ = writeln!(md, "- {problem}");
            }
        }
        md
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn mib_signed(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
