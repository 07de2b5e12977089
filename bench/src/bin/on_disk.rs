//! Effective replication factor measured on disk: the bytes of every file
//! on every node of a `hayloft up` data directory, per tier, over the
//! logical bytes of the live BLOBs each tier holds.
//!
//! Files are told apart by name (`bench::disk`): a store's `volume-V.data` (needles) and
//! `volume-V.index` are the hot tier's; a storage node's block files
//! (`volume-V.gG.sS.bB.block`, each header read to split its data bytes
//! from its header and checksum record, and data blocks from parity ones),
//! `volume-V.gG.index` and `volume-V.gG.journal` the warm tier's. A
//! volume's logical bytes are its live BLOBs' sizes: `--urls` lists every
//! BLOB uploaded (one per line, as `loadgen --save-urls` writes them, none
//! deleted), each `--size` bytes or the size its line gives; a volume
//! counts in a tier when that tier holds a file of it.
//!
//! ```text
//! cargo run --release -p bench --bin on-disk -- --data DIR --urls FILE --size 64KiB --label hot
//! ```
//!
//! Prints one JSON line per tier with a stored volume, then a Markdown row
//! each.

#![allow(clippy::print_stdout, reason = "the report is the program's output")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use bench::disk::{Kind, scan};

/// Bytes on disk per tier, over logical live bytes.
#[derive(Parser)]
#[command(name = "on-disk")]
struct Args {
    /// The data directory of a `hayloft up` (`--data`).
    #[arg(long)]
    data: PathBuf,
    /// Every BLOB uploaded, one URL (ending in its id `V,...`) per line.
    #[arg(long)]
    urls: PathBuf,
    /// Each BLOB's size (`64KiB`, or bytes), for lines that give none
    /// (`loadgen --mix` writes `URL SIZE SEED`).
    #[arg(long, value_parser = bench::parse_size)]
    size: Option<usize>,
    /// A label copied into the report (e.g. `before` or `after`).
    #[arg(long, default_value = "")]
    label: String,
}

/// What a tier's files hold, in bytes.
#[derive(Debug, Default, Serialize)]
struct Tier {
    label: String,
    tier: &'static str,
    volumes: usize,
    /// Live BLOB bytes of the volumes this tier holds.
    logical_bytes: u64,
    /// Needle data files (hot; needle framing included) or the data
    /// blocks' data bytes (warm).
    data_bytes: u64,
    /// The parity blocks' data bytes.
    parity_bytes: u64,
    /// Block headers and checksum records.
    block_metadata_bytes: u64,
    index_bytes: u64,
    journal_bytes: u64,
    /// Every byte of every file of the tier.
    total_bytes: u64,
    /// `total_bytes / logical_bytes`.
    effective_replication: f64,
    /// `(data_bytes + parity_bytes) / logical_bytes`.
    payload_replication: f64,
    /// What is not data or parity, over `total_bytes`.
    metadata_share: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.urls)
        .with_context(|| format!("reading {}", args.urls.display()))?;
    // Live bytes per volume.
    let mut blobs: BTreeMap<u32, u64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        let url = fields.next().unwrap_or(line);
        let size = match fields.next() {
            Some(size) => size.parse().with_context(|| format!("size in {line:?}"))?,
            None => args
                .size
                .context("the URL list gives no sizes: pass --size")? as u64,
        };
        let id = url.rsplit('/').next().unwrap_or(url);
        let volume: u32 = id
            .split(',')
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no volume id in {url:?}"))?;
        *blobs.entry(volume).or_default() += size;
    }
    let mut hot = Tier {
        tier: "hot",
        ..Tier::default()
    };
    let mut warm = Tier {
        tier: "warm",
        ..Tier::default()
    };
    let mut hot_volumes = BTreeSet::new();
    let mut warm_volumes = BTreeSet::new();
    for file in scan(&args.data).with_context(|| format!("scanning {}", args.data.display()))? {
        let len = file.len;
        match (file.kind, file.block) {
            (Kind::HotData | Kind::HotIndex, _) => {
                hot_volumes.insert(file.volume);
                hot.total_bytes += len;
                match file.kind {
                    Kind::HotData => hot.data_bytes += len,
                    _ => hot.index_bytes += len,
                }
            }
            (Kind::Block, Some(block)) => {
                warm_volumes.insert(file.volume);
                warm.total_bytes += len;
                if block.parity {
                    warm.parity_bytes += block.data_bytes;
                } else {
                    warm.data_bytes += block.data_bytes;
                }
                warm.block_metadata_bytes += len.saturating_sub(block.data_bytes);
            }
            // A block whose header cannot be read: all of it is metadata.
            (Kind::Block, None) => {
                warm_volumes.insert(file.volume);
                warm.total_bytes += len;
                warm.block_metadata_bytes += len;
            }
            (Kind::WarmIndex, _) => {
                warm_volumes.insert(file.volume);
                warm.total_bytes += len;
                warm.index_bytes += len;
            }
            (Kind::WarmJournal, _) => {
                warm_volumes.insert(file.volume);
                warm.total_bytes += len;
                warm.journal_bytes += len;
            }
        }
    }
    let mut rows = Vec::new();
    for (mut tier, volumes) in [(hot, hot_volumes), (warm, warm_volumes)] {
        if volumes.is_empty() {
            continue;
        }
        tier.label.clone_from(&args.label);
        tier.volumes = volumes.len();
        tier.logical_bytes = volumes
            .iter()
            .map(|v| blobs.get(v).copied().unwrap_or(0))
            .sum();
        let logical = tier.logical_bytes.max(1) as f64;
        tier.effective_replication = tier.total_bytes as f64 / logical;
        tier.payload_replication = (tier.data_bytes + tier.parity_bytes) as f64 / logical;
        tier.metadata_share =
            tier.total_bytes
                .saturating_sub(tier.data_bytes + tier.parity_bytes) as f64
                / tier.total_bytes.max(1) as f64;
        println!("{}", serde_json::to_string(&tier)?);
        rows.push(tier);
    }
    for tier in &rows {
        println!(
            "| {} {} | {} | {:.1} MiB | {:.1} MiB | **{:.4}** | {:.4} | {:.3}% |",
            tier.label,
            tier.tier,
            tier.volumes,
            tier.logical_bytes as f64 / (1 << 20) as f64,
            tier.total_bytes as f64 / (1 << 20) as f64,
            tier.effective_replication,
            tier.payload_replication,
            tier.metadata_share * 100.0,
        );
    }
    Ok(())
}
