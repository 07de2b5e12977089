//! Criterion benchmarks of the `coding` crate: RS(10,4) encode, rebuild of
//! one and of four lost shards, a 64 KiB range of one lost shard, the
//! streaming stripe encoder and XOR parity — each group beside a memcpy of
//! the same bytes in the same run.
//!
//! Throughput is counted in bytes of data (k shards) for encode and
//! rebuild, the usual convention (and the issue's), in the range bytes of
//! the k survivors read for the range rebuild, and in parity bytes for XOR.
//!
//! Run: `cargo bench -p bench --bench coding -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use coding::{BackendKind, Codec, RsConfig, StripeEncoder, StripeLayout, xor_parity_into};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const K: usize = 10;
const M: usize = 4;
/// Shard length of the whole-shard benchmarks.
const SHARD_BYTES: usize = 1 << 20;
/// The backoff read: a 64 KiB range of one lost shard.
const RANGE_BYTES: usize = 64 * 1024;

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn codec() -> Codec {
    Codec::new(RsConfig::new(K, M).expect("RS(10,4)")).expect("this CPU runs the SIMD backend")
}

/// The default backend, plus ISA-L when built with
/// `--features coding/isal`, each with the prefix of its benchmark names.
fn codecs() -> Vec<(&'static str, Codec)> {
    let mut codecs = vec![("", codec())];
    let config = RsConfig::new(K, M).expect("RS(10,4)");
    if let Ok(isal) = Codec::with_backend(config, BackendKind::Isal) {
        codecs.push(("isal_", isal));
    }
    codecs
}

/// k data shards and m parity shards of `len` bytes.
fn stripe(codec: &Codec, len: usize) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut shards: Vec<Vec<u8>> = (0..K).map(|_| random_bytes(&mut rng, len)).collect();
    let mut parity = vec![vec![0u8; len]; M];
    codec.encode(&shards, &mut parity).expect("encode");
    shards.extend(parity);
    shards
}

/// memcpy of `shards` into `dst` (same total bytes as the operation).
fn memcpy_all(shards: &[Vec<u8>], dst: &mut [Vec<u8>]) {
    for (d, s) in dst.iter_mut().zip(shards) {
        d.copy_from_slice(s);
    }
    black_box(&dst);
}

fn bench_encode(c: &mut Criterion) {
    let codec = codec();
    let shards = stripe(&codec, SHARD_BYTES);
    let mut parity = vec![vec![0u8; SHARD_BYTES]; M];
    let mut copy = vec![vec![0u8; SHARD_BYTES]; K];
    let mut group = c.benchmark_group("encode_rs10_4");
    group.throughput(Throughput::Bytes((K * SHARD_BYTES) as u64));
    for (prefix, codec) in codecs() {
        group.bench_function(format!("{prefix}encode_1MiB_shards"), |b| {
            b.iter(|| {
                codec
                    .encode(black_box(&shards[..K]), &mut parity)
                    .expect("encode")
            })
        });
    }
    group.bench_function("memcpy", |b| b.iter(|| memcpy_all(&shards[..K], &mut copy)));
    group.finish();
}

/// Rebuild `lost` shards whole from the first k survivors.
fn bench_rebuild(c: &mut Criterion, name: &str, lost: &[usize]) {
    let codec = codec();
    let shards = stripe(&codec, SHARD_BYTES);
    let sources: Vec<(usize, &[u8])> = (0..K + M)
        .filter(|i| !lost.contains(i))
        .map(|i| (i, &shards[i][..]))
        .collect();
    let mut outputs = vec![vec![0u8; SHARD_BYTES]; lost.len()];
    let mut copy = vec![vec![0u8; SHARD_BYTES]; K];
    {
        // Check the answer once, outside the timed loop.
        let mut targets: Vec<(usize, &mut [u8])> = lost
            .iter()
            .copied()
            .zip(outputs.iter_mut().map(|o| &mut o[..]))
            .collect();
        codec
            .reconstruct_range(&sources, &mut targets)
            .expect("rebuild");
        for (&i, o) in lost.iter().zip(&outputs) {
            assert!(o == &shards[i], "rebuilt shard {i} differs");
        }
    }
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes((K * SHARD_BYTES) as u64));
    for (prefix, codec) in codecs() {
        group.bench_function(format!("{prefix}reconstruct_1MiB_shards"), |b| {
            b.iter(|| {
                let mut targets: Vec<(usize, &mut [u8])> = lost
                    .iter()
                    .copied()
                    .zip(outputs.iter_mut().map(|o| &mut o[..]))
                    .collect();
                codec
                    .reconstruct_range(black_box(&sources), &mut targets)
                    .expect("rebuild");
            })
        });
    }
    group.bench_function("memcpy", |b| b.iter(|| memcpy_all(&shards[..K], &mut copy)));
    group.finish();
}

fn bench_rebuild_one(c: &mut Criterion) {
    bench_rebuild(c, "rebuild_1_lost_rs10_4", &[3]);
}

fn bench_rebuild_four(c: &mut Criterion) {
    bench_rebuild(c, "rebuild_4_lost_rs10_4", &[0, 4, 9, 12]);
}

/// The backoff read: a 64 KiB range, at an odd offset, of one lost data
/// shard of a 4 MiB block, from the same range of 10 survivors.
fn bench_range(c: &mut Criterion) {
    let codec = codec();
    let len = 4 << 20;
    let shards = stripe(&codec, len);
    let offset = 1_234_567;
    let range = offset..offset + RANGE_BYTES;
    let sources: Vec<(usize, &[u8])> = (0..K + M)
        .filter(|&i| i != 5)
        .map(|i| (i, &shards[i][range.clone()]))
        .collect();
    let mut out = vec![0u8; RANGE_BYTES];
    let mut copy = vec![vec![0u8; RANGE_BYTES]; K];
    let inputs: Vec<Vec<u8>> = sources.iter().take(K).map(|(_, s)| s.to_vec()).collect();
    codec
        .reconstruct_range(&sources, &mut [(5, &mut out[..])])
        .expect("range");
    assert!(out == shards[5][range.clone()], "rebuilt range differs");
    let mut group = c.benchmark_group("range_64KiB_1_lost_rs10_4");
    group.throughput(Throughput::Bytes((K * RANGE_BYTES) as u64));
    for (prefix, codec) in codecs() {
        group.bench_function(format!("{prefix}reconstruct_range"), |b| {
            b.iter(|| {
                codec
                    .reconstruct_range(black_box(&sources), &mut [(5, &mut out[..])])
                    .expect("range")
            })
        });
    }
    group.bench_function("memcpy", |b| b.iter(|| memcpy_all(&inputs, &mut copy)));
    group.finish();
}

/// The streaming encoder end to end on a 40 MiB in-memory volume (one
/// stripe of 4 MiB blocks): reads, parity, CRCs and appends to sinks.
fn bench_stripe_encoder(c: &mut Criterion) {
    let codec = codec();
    let block = 4u64 << 20;
    let volume = random_bytes(&mut StdRng::seed_from_u64(9), (K as u64 * block) as usize);
    let layout = StripeLayout::new(codec.config(), block, volume.len() as u64).expect("layout");
    let mut encoder =
        StripeEncoder::new(&codec, coding::DEFAULT_COLUMN_BYTES, 64 * 1024).expect("encoder");
    let mut sinks: Vec<Vec<u8>> = (0..K + M)
        .map(|_| Vec::with_capacity(block as usize))
        .collect();
    let mut copy = vec![0u8; volume.len()];
    let mut group = c.benchmark_group("stripe_encoder_rs10_4");
    group.throughput(Throughput::Bytes(volume.len() as u64));
    group.sample_size(10);
    group.bench_function("encode_stripe_4MiB_blocks", |b| {
        b.iter(|| {
            for s in &mut sinks {
                s.clear();
            }
            encoder
                .encode_stripe(&layout, &volume, 0, &mut sinks)
                .expect("encode stripe")
        })
    });
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&volume));
            black_box(&copy);
        })
    });
    group.finish();
}

/// Geo-layer parity of two 4 MiB blocks of unequal length.
fn bench_xor(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(11);
    let a = random_bytes(&mut rng, 4 << 20);
    let b = random_bytes(&mut rng, (4 << 20) - 4096);
    let mut parity = vec![0u8; a.len()];
    let mut group = c.benchmark_group("xor_4MiB");
    group.throughput(Throughput::Bytes(a.len() as u64));
    group.bench_function("xor_parity_into", |bench| {
        bench.iter(|| xor_parity_into(black_box(&a), black_box(&b), &mut parity).expect("xor"))
    });
    group.bench_function("memcpy", |bench| {
        bench.iter(|| {
            parity.copy_from_slice(black_box(&a));
            black_box(&parity);
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_encode,
    bench_rebuild_one,
    bench_rebuild_four,
    bench_range,
    bench_stripe_encoder,
    bench_xor
);
criterion_main!(benches);
