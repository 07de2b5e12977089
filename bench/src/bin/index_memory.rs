//! Memory of the haystack in-memory needle index, measured as resident-set growth.
//!
//! Modes:
//! - `index [N]` (default, N = 10,000,000): builds a `NeedleIndex` directly with N needles
//!   of 1 KiB BLOBs (1,064 bytes on disk) and consecutive keys, then N more with random key
//!   gaps and sizes in a second index, and prints the RSS growth per needle of each, read
//!   from `/proc/self/statm`, beside the index's own heap accounting.
//! - `volume [N]` (default 1,000,000): writes N small needles into a real volume in a
//!   temporary directory, reopens it (so the index is rebuilt from the index file), and prints
//!   the RSS growth of the open volume per needle.
//!
//! - `reads [N]` (default 100,000): writes 1,000 needles of 1 KiB, then reads N random
//!   ones. Run it under `strace -f -c` with N = 0 and N = 100,000: the difference in system
//!   calls divided by N is the cost of one read (target: one `pread64`).
//!
//! Run: `cargo run --release -p bench --bin index-memory -- index 10000000`
#![allow(clippy::print_stdout)]

use haystack::{NeedleIndex, Volume, VolumeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn report(label: &str, n: u64, before: u64, index: &NeedleIndex) {
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "{label}: {n} needles, RSS growth {grown} bytes = {:.2} bytes/needle \
         (heap {:.2} bytes/needle)",
        grown as f64 / n as f64,
        index.heap_size_bytes() as f64 / n as f64
    );
}

fn index_mode(n: u64) {
    let before = rss_bytes();
    let mut index = NeedleIndex::new(64);
    for key in 1..=n {
        assert!(index.push(key, 1064, false));
    }
    report("consecutive keys, 1 KiB BLOBs", n, before, &index);
    // Check a few lookups so the work is not optimised away, and time them.
    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let lookups = 1_000_000;
    for _ in 0..lookups {
        let k = rng.random_range(1..=n);
        let e = index.get(k).expect("present");
        assert_eq!(e.size_bytes, 1064);
    }
    let ns = started.elapsed().as_nanos() as f64 / lookups as f64;
    println!("lookup: {ns:.0} ns on average over {lookups} random keys");
    drop(index);

    let before = rss_bytes();
    let mut index = NeedleIndex::new(64);
    let mut key = 0u64;
    for _ in 0..n {
        key += rng.random_range(1..1000);
        let size = 8 * rng.random_range(5..(1u64 << 17));
        assert!(index.push(key, size, false));
    }
    report("key gaps 1..1000, BLOBs up to 1 MiB", n, before, &index);
}

fn volume_mode(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = VolumeOptions {
        size_limit_bytes: u64::MAX / 2,
    };
    {
        let v = Volume::create(dir.path(), 1, opts.clone()).expect("create");
        let mut last = None;
        for key in 1..=n {
            // One sync for the whole run: write every needle, wait for the last.
            let p = v.write_needle(key, 7, "", b"tiny").expect("write");
            last = Some(p.outcome());
            drop(p);
        }
        v.append_needle(n + 1, 7, "", b"last")
            .expect("sync everything");
        assert!(last.is_some());
    }
    // Measure in a fresh process, so the writer's freed memory does not hide the growth.
    let status = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("open-volume")
        .arg(dir.path())
        .status()
        .expect("run self");
    assert!(status.success());
}

fn open_volume_mode(dir: &std::path::Path) {
    let opts = VolumeOptions {
        size_limit_bytes: u64::MAX / 2,
    };
    let before = rss_bytes();
    let v = Volume::open(dir, 1, opts).expect("open");
    let grown = rss_bytes().saturating_sub(before);
    let count = v.status().needle_count;
    println!(
        "open volume: {count} needles, RSS growth {grown} bytes = {:.2} bytes/needle",
        grown as f64 / count as f64
    );
}

fn reads_mode(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
    let data = vec![0x42u8; 1024];
    for key in 1..=1000 {
        drop(v.write_needle(key, 3, "", &data).expect("write"));
    }
    v.append_needle(1001, 3, "", &data).expect("sync");
    let mut rng = StdRng::seed_from_u64(2);
    let mut bytes = 0usize;
    for _ in 0..n {
        bytes += v
            .read_needle(rng.random_range(1..=1001), 3)
            .expect("read")
            .data
            .len();
    }
    println!("{n} reads, {bytes} bytes");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "index".to_owned());
    let arg = args.next();
    let n: Option<u64> = arg.as_deref().and_then(|s| s.parse().ok());
    match mode.as_str() {
        "open-volume" => open_volume_mode(std::path::Path::new(&arg.expect("a directory"))),
        "index" => index_mode(n.unwrap_or(10_000_000)),
        "volume" => volume_mode(n.unwrap_or(1_000_000)),
        "reads" => reads_mode(n.unwrap_or(100_000)),
        other => {
            eprintln!("unknown mode {other}; use `index [N]`, `volume [N]` or `reads [N]`");
            std::process::exit(2);
        }
    }
}
