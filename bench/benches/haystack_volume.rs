//! Criterion benchmarks of the haystack engine:
//! - `append/{1KiB,64KiB,1MiB}/{1,16,64}w`: durable appends (group commit) by 1, 16 and 64
//!   concurrent writers, each ordering its key under a shared mutex around
//!   `Volume::write_needle` and waiting for the sync outside it;
//! - `raw_write_sync/{1KiB,64KiB,1MiB}`: the same disk's sequential `pwrite` + `fdatasync`
//!   of the same sizes in the same run, one sync per write (what one writer without group
//!   commit can do at best);
//! - `read/{1KiB,64KiB,1MiB}`: `read_needle` of random keys from the page cache, beside
//!   `read/*_raw_pread`: a bare `pread` of the same size from the same file.
//!
//! Throughput is in BLOB bytes. Files live in a temporary directory under `target/` (a
//! real disk, not tmpfs), or `$HAYLOFT_BENCH_DIR`.
//!
//! Run: `cargo bench -p bench --bench haystack_volume -- --warm-up-time 1 --measurement-time 3`

use std::fs::OpenOptions;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use haystack::{Volume, VolumeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZES: [(&str, usize); 3] = [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)];
const WRITERS: [usize; 3] = [1, 16, 64];

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("HAYLOFT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("tempdir")
}

fn big_volume(dir: &std::path::Path) -> Volume {
    let opts = VolumeOptions {
        size_limit_bytes: 1 << 50,
    };
    Volume::create(dir, 1, opts).expect("create volume")
}

/// `iters` durable appends of `size` bytes spread over `writers` threads.
fn appends(
    v: &Arc<Volume>,
    next_key: &Arc<std::sync::Mutex<u64>>,
    writers: usize,
    size: usize,
    iters: u64,
) -> Duration {
    let per_writer = iters.div_ceil(writers as u64);
    let data = Arc::new(vec![0x5au8; size]);
    let barrier = Arc::new(std::sync::Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (v, next_key, data, barrier) =
                (v.clone(), next_key.clone(), data.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_writer {
                    let mut key = next_key.lock().expect("key lock");
                    *key += 1;
                    let pending = v.write_needle(*key, 1, "", &data).expect("write");
                    drop(key);
                    pending.wait().expect("durable append");
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        t.join().expect("writer");
    }
    // Normalise to `iters` appends when rounding added some.
    started
        .elapsed()
        .mul_f64(iters as f64 / (per_writer * writers as u64) as f64)
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    for (name, size) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for writers in WRITERS {
            let dir = bench_dir();
            let v = Arc::new(big_volume(dir.path()));
            let next_key = Arc::new(std::sync::Mutex::new(0u64));
            group.bench_function(BenchmarkId::new(name, format!("{writers}w")), |b| {
                b.iter_custom(|iters| appends(&v, &next_key, writers, size, iters));
            });
        }
    }
    group.finish();
}

fn bench_raw_write_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_write_sync");
    group.sample_size(10);
    for (name, size) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let dir = bench_dir();
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("raw"))
            .expect("raw file");
        let data = vec![0x5au8; size];
        let mut offset = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                file.write_all_at(&data, offset).expect("write");
                file.sync_data().expect("sync");
                offset += size as u64;
            });
        });
    }
    group.finish();
}

fn bench_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    for (name, size) in SIZES {
        let count = ((256 << 20) / size).min(20_000) as u64;
        let dir = bench_dir();
        let v = big_volume(dir.path());
        let data = vec![0x33u8; size];
        for key in 1..=count {
            drop(
                v.write_needle(key, 9, "application/octet-stream", &data)
                    .expect("write"),
            );
        }
        v.append_needle(count + 1, 9, "", &data).expect("sync");
        let mut rng = StdRng::seed_from_u64(5);
        for key in 1..=count {
            black_box(v.read_needle(key, 9).expect("warm the page cache"));
        }
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let key = rng.random_range(1..=count);
                black_box(v.read_needle(key, 9).expect("read"))
            });
        });
        // Baseline: a bare pread of the same size at a random needle-sized slot of the same
        // file, into a fresh buffer (what read_needle does before verifying).
        let file = std::fs::File::open(v.data_path()).expect("data file");
        let slot = v.status().size_bytes / (count + 1);
        group.bench_function(format!("{name}_raw_pread"), |b| {
            b.iter(|| {
                let mut buf = vec![0u8; size];
                let at = 64 + rng.random_range(0..count) * slot;
                file.read_exact_at(&mut buf, at).expect("pread");
                black_box(buf)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_raw_write_sync, bench_append, bench_read);
criterion_main!(benches);
