//! Rebuild of whole blocks against the limit of this machine.
//!
//! One stripe of RS(10,4) blocks of `--block-size` is encoded from
//! pseudo-random data (`f4::block::encode_volume`) and its 14 block files
//! put on 14 storage nodes, beside a 15th, empty one and a rebuilder (all
//! in this process, over loopback HTTP, on their own data directories).
//! Each round, page cache dropped first (when this process may):
//!
//! 1. **raw**: the `k` source block files the rebuild will read are read
//!    whole, one thread per file, 1 MiB at a time: the rate at which this
//!    machine can read what a rebuild must read. The output a rebuild
//!    could reach at that rate is `lost × block / raw time` (the sources
//!    are read once whatever the number of lost blocks).
//! 2. **rebuild**: `POST /rebuild` of `--lost` blocks onto the empty node,
//!    unthrottled, timed until the node has them synced; then each is
//!    compared with its original.
//!
//! ```text
//! cargo run --release -p bench --bin rebuild-block -- --block-size 1GiB --lost 1 --rounds 3
//! ```
//!
//! With `--rate R`, the rebuild is throttled to R block bytes a second:
//! its output rate then shows whether the throttle holds.
//!
//! Prints one JSON line per round and a summary line (medians).

#![allow(clippy::print_stdout, reason = "the report is the program's output")]

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use f4::api::{RebuildRequest, RebuildTarget};
use f4::block::{block_file_name, encode_volume};
use f4::client::RebuilderClient;
use f4::node::seal::seal_geometry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use bench::parse_size;

const VOLUME: u32 = 1;
const GENERATION: u64 = 1;
/// The stripe's blocks plus an empty node the rebuilt blocks go to.
const NODES: usize = 15;

/// Rebuild of whole blocks against reading their sources raw.
#[derive(Debug, Parser)]
struct Args {
    /// Size of each block (`1GiB`, `256MiB`, ...).
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    block_size: usize,
    /// Blocks lost and rebuilt at once (1 to 4): data block 0, then parity
    /// 13, data 5, parity 10.
    #[arg(long, default_value_t = 1)]
    lost: usize,
    /// Rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The rebuild's throttle, block bytes written a second (`64MiB`, ...;
    /// 0: none), to measure that it holds.
    #[arg(long, value_parser = parse_size, default_value = "0")]
    rate: usize,
    /// Where the blocks go (a temporary directory under it; default the
    /// system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Round {
    round: usize,
    cache_dropped: bool,
    block_bytes: u64,
    lost: usize,
    raw_read_seconds: f64,
    raw_read_mb_per_second: f64,
    rebuild_seconds: f64,
    /// Block bytes written per second.
    rebuild_output_mb_per_second: f64,
    /// What reading the sources raw allows, as output.
    limit_output_mb_per_second: f64,
    /// Raw read time over rebuild time.
    ratio: f64,
    /// The throttle asked for, MB/s (0: none).
    throttle_mb_per_second: f64,
}

/// Asks the kernel to drop its page cache (root only); whether it did.
fn drop_page_cache() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Writes `len` pseudo-random bytes (xorshift, 1 MiB at a time) to `path`.
fn write_data(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(File::create(path)?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.into_inner()?.sync_all()?;
    Ok(())
}

/// Reads every file of `paths` whole, one thread each; the bytes read.
fn read_raw(paths: &[PathBuf]) -> anyhow::Result<u64> {
    let threads: Vec<_> = paths
        .iter()
        .cloned()
        .map(|path| {
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut file = File::open(path)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0;
                loop {
                    match file.read(&mut buf)? {
                        0 => return Ok(total),
                        n => total += n as u64,
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for thread in threads {
        total += thread
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))??;
    }
    Ok(total)
}

fn same_file(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x)?;
        let mut got = 0;
        while got < n {
            match b.read(&mut y[got..n])? {
                0 => return Ok(false),
                m => got += m,
            }
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(b.read(&mut y)? == 0);
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((1..=4).contains(&args.lost), "--lost must be 1 to 4");
    anyhow::ensure!(args.rounds > 0, "--rounds must be positive");
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("hayloft-rebuild-")
        .tempdir_in(&base)?;
    let block = args.block_size as u64;
    let data = dir.path().join("warm.data");
    eprintln!("writing {} bytes of data and encoding them...", 10 * block);
    write_data(&data, 10 * block)?;
    let geometry = seal_geometry(10 * block, block)?;
    let encoded = dir.path().join("encoded");
    std::fs::create_dir(&encoded)?;
    encode_volume(&data, VOLUME, GENERATION, geometry, &encoded)?;
    std::fs::remove_file(&data)?;
    let node_dirs: Vec<PathBuf> = (0..NODES)
        .map(|n| dir.path().join(format!("node-{n}")))
        .collect();
    for (n, node) in node_dirs.iter().enumerate() {
        std::fs::create_dir_all(node.join("blocks"))?;
        if n < 14 {
            let name = block_file_name(VOLUME, GENERATION, 0, n as u32);
            std::fs::rename(encoded.join(&name), node.join("blocks").join(&name))
                .with_context(|| format!("block {n}"))?;
        }
    }
    let cancel = CancellationToken::new();
    let mut urls = Vec::new();
    for node in &node_dirs {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        urls.push(format!("http://{}", listener.local_addr()?));
        let config = f4::node::NodeConfig::new(node);
        tokio::spawn(f4::node::run(config, listener, cancel.clone()));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let rebuilder_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(f4::rebuild::run(
        f4::rebuild::RebuilderConfig::default(),
        listener,
        cancel.clone(),
    ));
    let rebuilder = RebuilderClient::from_http(&rebuilder_url, f4::client::http_client(60_000)?);
    let lost: Vec<u32> = [0u32, 13, 5, 10][..args.lost].to_vec();
    let sources: Vec<usize> = (0..14usize)
        .filter(|b| !lost.contains(&(*b as u32)))
        .take(10)
        .collect();
    let path_of = |node: usize, block: u32| {
        node_dirs[node]
            .join("blocks")
            .join(block_file_name(VOLUME, GENERATION, 0, block))
    };
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let cache_dropped = drop_page_cache();
        let started = Instant::now();
        let raw_paths: Vec<PathBuf> = sources.iter().map(|b| path_of(*b, *b as u32)).collect();
        let raw_bytes = read_raw(&raw_paths)?;
        let raw_seconds = started.elapsed().as_secs_f64();
        drop_page_cache();
        let request = RebuildRequest {
            volume: VOLUME,
            generation: GENERATION,
            geometry,
            stripe: 0,
            sources: (0..14u32)
                .map(|b| (!lost.contains(&b)).then(|| urls[b as usize].clone()))
                .collect(),
            targets: lost
                .iter()
                .map(|block| RebuildTarget {
                    block: *block,
                    node: urls[14].clone(),
                })
                .collect(),
            bytes_per_second: args.rate as u64,
        };
        let started = Instant::now();
        let report = rebuilder.rebuild(&request).await?;
        let rebuild_seconds = started.elapsed().as_secs_f64();
        for block in &lost {
            let rebuilt = path_of(14, *block);
            anyhow::ensure!(
                same_file(&rebuilt, &path_of(*block as usize, *block))?,
                "rebuilt block {block} differs from the original"
            );
            std::fs::remove_file(&rebuilt)?;
        }
        let output = block * lost.len() as u64;
        let mb = |bytes: u64, seconds: f64| bytes as f64 / 1e6 / seconds;
        let result = Round {
            round,
            cache_dropped,
            block_bytes: block,
            lost: lost.len(),
            raw_read_seconds: raw_seconds,
            raw_read_mb_per_second: mb(raw_bytes, raw_seconds),
            rebuild_seconds,
            rebuild_output_mb_per_second: mb(output, rebuild_seconds),
            limit_output_mb_per_second: mb(output, raw_seconds),
            ratio: raw_seconds / rebuild_seconds,
            throttle_mb_per_second: args.rate as f64 / 1e6,
        };
        anyhow::ensure!(report.read_bytes >= raw_bytes / 2, "{report:?}");
        println!("{}", serde_json::to_string(&result)?);
        rounds.push(result);
    }
    cancel.cancel();
    let pick = |f: fn(&Round) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
    let summary = serde_json::json!({
        "summary": true,
        "block_bytes": block,
        "lost": lost.len(),
        "rounds": args.rounds,
        "raw_read_mb_per_second": pick(|r| r.raw_read_mb_per_second),
        "rebuild_output_mb_per_second": pick(|r| r.rebuild_output_mb_per_second),
        "limit_output_mb_per_second": pick(|r| r.limit_output_mb_per_second),
        "ratio": pick(|r| r.ratio),
        "throttle_mb_per_second": args.rate as f64 / 1e6,
    });
    println!("{summary}");
    Ok(())
}
