//! Crate-level tests: exhaustive loss patterns for RS(10,4), agreement with
//! reed-solomon-erasure's own encoder, range reconstruction and the stripe
//! encoder under proptest, and checksum records against hostile bytes.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::*;

/// Every backend compiled into this build.
fn all_backends() -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::ReedSolomonErasure, BackendKind::Portable];
    if cfg!(feature = "isal") {
        kinds.push(BackendKind::Isal);
    }
    kinds
}

fn random_shards(rng: &mut StdRng, count: usize, len: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let mut v = vec![0u8; len];
            rng.fill(&mut v[..]);
            v
        })
        .collect()
}

/// Data shards plus their parity, as k + m shards.
fn encoded(codec: &Codec, rng: &mut StdRng, len: usize) -> Vec<Vec<u8>> {
    let config = codec.config();
    let mut shards = random_shards(rng, config.data_shards(), len);
    let mut parity = vec![vec![0u8; len]; config.parity_shards()];
    codec.encode(&shards, &mut parity).expect("encode");
    shards.extend(parity);
    shards
}

#[test]
fn parity_is_byte_identical_to_reed_solomon_erasure() {
    let mut rng = StdRng::seed_from_u64(1);
    for (k, m) in [(10, 4), (1, 1), (3, 2), (6, 3), (17, 5), (32, 16)] {
        let config = RsConfig::new(k, m).expect("config");
        let reference = ReedSolomon::new(k, m).expect("reference codec");
        for kind in all_backends() {
            let codec = Codec::with_backend(config, kind).expect("codec");
            for len in [1usize, 7, 64, 1000, 70_001] {
                let ours = encoded(&codec, &mut StdRng::seed_from_u64(len as u64), len);
                let mut theirs = ours.clone();
                for p in &mut theirs[k..] {
                    p.fill(0);
                }
                reference.encode(&mut theirs).expect("reference encode");
                assert_eq!(ours, theirs, "RS({k},{m}) {kind:?} len {len}");
            }
        }
        let _ = rng.random::<u8>();
    }
}

#[test]
fn every_pattern_of_up_to_four_lost_shards_reconstructs() {
    for kind in all_backends() {
        let codec = Codec::with_backend(RsConfig::default(), kind).expect("codec");
        check_every_pattern(&codec);
    }
}

fn check_every_pattern(codec: &Codec) {
    let mut rng = StdRng::seed_from_u64(2);
    // An odd length exercises the SIMD kernels' scalar tails.
    let original = encoded(codec, &mut rng, 1031);
    let mut patterns = 0;
    let mut too_many = 0;
    for mask in 0u32..(1 << 14) {
        let lost = mask.count_ones() as usize;
        let present: Vec<bool> = (0..14).map(|i| mask & (1 << i) == 0).collect();
        let mut shards = original.clone();
        for (shard, &p) in shards.iter_mut().zip(&present) {
            if !p {
                shard.fill(0xee);
            }
        }
        let result = codec.reconstruct(&mut shards, &present);
        if lost <= 4 {
            result.expect("at most four lost shards reconstruct");
            assert_eq!(shards, original, "mask {mask:#06x}");
            patterns += 1;
        } else if lost == 5 {
            assert!(matches!(
                result,
                Err(CodingError::TooFewShards {
                    available: 9,
                    required: 10
                })
            ));
            // Nothing was touched.
            for (shard, &p) in shards.iter().zip(&present) {
                if !p {
                    assert!(shard.iter().all(|&b| b == 0xee));
                }
            }
            too_many += 1;
        }
    }
    assert_eq!(patterns, 1471);
    assert_eq!(too_many, 2002);
}

#[test]
fn range_reconstruction_of_every_single_loss_from_every_k_subset_is_exact() {
    // RS(4,2) keeps the subset count small: every (target, 4-of-5 survivors).
    let codec = Codec::new(RsConfig::new(4, 2).expect("config")).expect("codec");
    let shards = encoded(&codec, &mut StdRng::seed_from_u64(3), 333);
    for target in 0..6 {
        let survivors: Vec<usize> = (0..6).filter(|&i| i != target).collect();
        for skip in 0..survivors.len() {
            let sources: Vec<(usize, &[u8])> = survivors
                .iter()
                .filter(|&&i| i != survivors[skip])
                .map(|&i| (i, &shards[i][17..300]))
                .collect();
            let mut out = vec![0u8; 283];
            codec
                .reconstruct_range(&sources, &mut [(target, &mut out[..])])
                .expect("range");
            assert_eq!(out, shards[target][17..300]);
        }
    }
}

#[test]
fn bad_calls_are_clean_errors() {
    assert!(matches!(
        RsConfig::new(0, 4),
        Err(CodingError::InvalidShardCounts { .. })
    ));
    assert!(RsConfig::new(33, 4).is_err());
    assert!(RsConfig::new(10, 17).is_err());
    assert!(RsConfig::new(10, 0).is_err());
    let codec = Codec::new(RsConfig::default()).expect("codec");
    let data = vec![vec![0u8; 8]; 10];
    let mut parity = vec![vec![0u8; 8]; 4];
    assert!(matches!(
        codec.encode(&data[..9], &mut parity),
        Err(CodingError::ShardCount {
            expected: 10,
            actual: 9
        })
    ));
    let mut short = parity.clone();
    short[2].truncate(7);
    assert!(matches!(
        codec.encode(&data, &mut short),
        Err(CodingError::ShardLength { index: 12, .. })
    ));
    let sources: Vec<(usize, &[u8])> = (0..10).map(|i| (i % 9, &data[i][..])).collect();
    let mut out = [0u8; 8];
    assert!(matches!(
        codec.reconstruct_range(&sources, &mut [(13, &mut out[..])]),
        Err(CodingError::InvalidShardIndex {
            index: 0,
            total: 14
        })
    ));
    let sources: Vec<(usize, &[u8])> = (0..10).map(|i| (i, &data[i][..])).collect();
    assert!(
        codec
            .reconstruct_range(&sources, &mut [(14, &mut out[..])])
            .is_err()
    );
    assert!(
        codec
            .reconstruct_range(&sources[..9], &mut [(13, &mut out[..])])
            .is_err()
    );
    assert!(codec.parity_matches(&data, &parity).expect("check"));
    parity[3][0] ^= 1;
    assert!(!codec.parity_matches(&data, &parity).expect("check"));
}

#[test]
fn empty_shards_are_fine() {
    let codec = Codec::new(RsConfig::default()).expect("codec");
    let data = vec![Vec::<u8>::new(); 10];
    let mut parity = vec![Vec::<u8>::new(); 4];
    codec.encode(&data, &mut parity).expect("encode empty");
    let mut shards: Vec<Vec<u8>> = data.into_iter().chain(parity).collect();
    let mut present = vec![true; 14];
    present[0] = false;
    codec
        .reconstruct(&mut shards, &present)
        .expect("reconstruct empty");
}

fn loss_pattern() -> impl Strategy<Value = Vec<usize>> {
    proptest::sample::subsequence((0..14).collect::<Vec<usize>>(), 0..=4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn range_reconstruction_equals_full_reconstruction(
        seed in any::<u64>(),
        len in 1usize..20_000,
        offset_fraction in 0.0f64..1.0,
        range_len in 0usize..20_000,
        lost in loss_pattern(),
        shuffle in any::<u64>(),
        backend in proptest::sample::select(all_backends()),
    ) {
        let codec = Codec::with_backend(RsConfig::default(), backend).expect("codec");
        let shards = encoded(&codec, &mut StdRng::seed_from_u64(seed), len);
        let offset = ((len as f64) * offset_fraction) as usize;
        let end = (offset + range_len).min(len);

        // Full reconstruction.
        let present: Vec<bool> = (0..14).map(|i| !lost.contains(&i)).collect();
        let mut full = shards.clone();
        for &i in &lost {
            full[i].fill(0);
        }
        codec.reconstruct(&mut full, &present).expect("full");
        prop_assert_eq!(&full, &shards);

        // Range of every lost shard from any k survivors, in any order.
        let mut survivors: Vec<usize> = (0..14).filter(|i| !lost.contains(i)).collect();
        let mut rng = StdRng::seed_from_u64(shuffle);
        for i in (1..survivors.len()).rev() {
            survivors.swap(i, rng.random_range(0..=i));
        }
        let sources: Vec<(usize, &[u8])> =
            survivors.iter().map(|&i| (i, &shards[i][offset..end])).collect();
        let mut outputs: Vec<Vec<u8>> = lost.iter().map(|_| vec![0x5a; end - offset]).collect();
        let mut targets: Vec<(usize, &mut [u8])> =
            lost.iter().copied().zip(outputs.iter_mut().map(|o| &mut o[..])).collect();
        codec.reconstruct_range(&sources, &mut targets).expect("range");
        for (&i, out) in lost.iter().zip(&outputs) {
            prop_assert_eq!(&out[..], &full[i][offset..end]);
        }
    }

    #[test]
    fn stripe_encoder_round_trips_any_volume_size(
        seed in any::<u64>(),
        volume_len in prop_oneof![Just(0usize), Just(1usize), 0usize..3000],
        block_size in 1u64..200,
        column_bytes in 1usize..100,
        (k, m) in prop_oneof![Just((10usize, 4usize)), (1usize..6, 1usize..4)],
    ) {
        check_stripe_encoder(seed, volume_len, block_size, column_bytes, k, m)?;
    }
}

fn check_stripe_encoder(
    seed: u64,
    volume_len: usize,
    block_size: u64,
    column_bytes: usize,
    k: usize,
    m: usize,
) -> Result<(), TestCaseError> {
    let config = RsConfig::new(k, m).expect("config");
    let codec = Codec::new(config).expect("codec");
    let mut volume = vec![0u8; volume_len];
    StdRng::seed_from_u64(seed).fill(&mut volume[..]);
    let layout = StripeLayout::new(config, block_size, volume_len as u64).expect("layout");
    let mut encoder = StripeEncoder::new(&codec, column_bytes, 512).expect("encoder");
    let mut rebuilt = Vec::new();
    prop_assert_eq!(
        layout.stripe_count(),
        (volume_len as u64).div_ceil(block_size * k as u64)
    );
    for stripe in 0..layout.stripe_count() {
        let mut sinks = vec![Vec::<u8>::new(); k + m];
        let sums = encoder
            .encode_stripe(&layout, &volume, stripe, &mut sinks)
            .expect("encode stripe");
        for (shard, sink) in sinks.iter().enumerate() {
            prop_assert_eq!(
                sink.len() as u64,
                layout.block_len_bytes(stripe, shard).expect("len")
            );
            prop_assert_eq!(
                &sums[shard],
                &BlockChecksums::compute(512, sink).expect("sums")
            );
        }
        for sink in &sinks[..k] {
            rebuilt.extend_from_slice(sink);
        }
        // Parity equals the codec's over the zero-padded data blocks.
        let width = sinks[0].len();
        let padded: Vec<Vec<u8>> = sinks
            .iter()
            .map(|s| {
                let mut p = s.clone();
                p.resize(width, 0);
                p
            })
            .collect();
        prop_assert!(
            codec
                .parity_matches(&padded[..k], &padded[k..])
                .expect("verify")
        );
        // Losing the last m blocks of the stripe: data comes back.
        let mut shards = padded.clone();
        let present: Vec<bool> = (0..k + m).map(|i| i < k - k.min(m) || i >= k).collect();
        codec
            .reconstruct(&mut shards, &present)
            .expect("rebuild stripe");
        prop_assert_eq!(&shards, &padded);
    }
    prop_assert_eq!(&rebuilt, &volume);
    // Segments of a volume range point at the right bytes.
    if volume_len > 0 {
        let offset = (seed % volume_len as u64) as usize;
        let len = ((seed >> 32) as usize) % (volume_len - offset + 1);
        let segments = layout
            .segments(offset as u64, len as u64)
            .expect("segments");
        let mut at = offset as u64;
        for s in &segments {
            prop_assert!(s.len > 0 && s.block < k);
            prop_assert_eq!(s.volume_offset, at);
            prop_assert_eq!(
                layout.data_block_offset(s.stripe, s.block) + s.block_offset,
                at
            );
            prop_assert!(
                s.block_offset + s.len <= layout.block_len_bytes(s.stripe, s.block).expect("len")
            );
            at += s.len;
        }
        prop_assert_eq!(at, (offset + len) as u64);
    }
    prop_assert!(layout.segments(volume_len as u64, 1).is_err());
    Ok(())
}

#[test]
fn stripe_layout_edges() {
    let config = RsConfig::default();
    assert!(StripeLayout::new(config, 0, 10).is_err());
    assert!(StripeLayout::new(config, u64::MAX / 2, 10).is_err());
    let layout = StripeLayout::new(config, 100, 1050).expect("layout");
    assert_eq!(layout.stripe_count(), 2);
    assert_eq!(layout.block_len_bytes(1, 0).expect("len"), 50);
    assert_eq!(layout.block_len_bytes(1, 1).expect("len"), 0);
    assert_eq!(layout.block_len_bytes(1, 13).expect("len"), 50);
    assert_eq!(layout.block_len_bytes(0, 13).expect("len"), 100);
    assert!(layout.block_len_bytes(2, 0).is_err());
    assert!(layout.block_len_bytes(0, 14).is_err());
    let segments = layout.segments(950, 100).expect("segments");
    assert_eq!(
        segments,
        vec![
            Segment {
                stripe: 0,
                block: 9,
                block_offset: 50,
                volume_offset: 950,
                len: 50
            },
            Segment {
                stripe: 1,
                block: 0,
                block_offset: 0,
                volume_offset: 1000,
                len: 50
            },
        ]
    );
    assert!(layout.segments(u64::MAX, 2).is_err());
    assert_eq!(layout.segments(1050, 0).expect("empty"), vec![]);
}

#[test]
fn stripe_encoder_reports_io_failures() {
    struct FailingSink;
    impl std::io::Write for FailingSink {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let config = RsConfig::default();
    let codec = Codec::new(config).expect("codec");
    let volume = vec![7u8; 5000];
    let layout = StripeLayout::new(config, 1000, 5000).expect("layout");
    let mut encoder = StripeEncoder::new(&codec, 256, 512).expect("encoder");
    let mut sinks: Vec<FailingSink> = (0..14).map(|_| FailingSink).collect();
    assert!(matches!(
        encoder.encode_stripe(&layout, &volume, 0, &mut sinks),
        Err(CodingError::SinkWrite { block: 0, .. })
    ));
    // A source shorter than the layout says is refused up front.
    let short = vec![0u8; 10];
    let mut sinks = vec![Vec::<u8>::new(); 14];
    assert!(
        encoder
            .encode_stripe(&layout, &short, 0, &mut sinks)
            .is_err()
    );
    assert!(
        encoder
            .encode_stripe(&layout, &volume, 1, &mut sinks)
            .is_err()
    );
    assert!(StripeEncoder::new(&codec, 0, 512).is_err());
    assert!(StripeEncoder::new(&codec, 64, 3).is_err());
}

/// Columns from a [`ColumnSource`] reach their sinks as the very buffers
/// the source handed out (never copied), in order, and the blocks equal
/// [`StripeEncoder::encode_stripe`]'s, short last stripe included; a
/// column of the wrong length is refused.
#[test]
fn column_sources_hand_their_buffers_to_the_sinks() {
    use std::rc::Rc;
    struct Shared<'v> {
        volume: &'v [u8],
        wrong_len: bool,
    }
    impl ColumnSource for Shared<'_> {
        type Column = Rc<[u8]>;
        fn len_bytes(&self) -> u64 {
            self.volume.len() as u64
        }
        fn column(&self, offset: u64, len: usize) -> std::io::Result<Rc<[u8]>> {
            let start = offset as usize;
            let len = if self.wrong_len { len - 1 } else { len };
            Ok(Rc::from(&self.volume[start..start + len]))
        }
    }
    #[derive(Default)]
    struct Kept {
        data: Vec<Rc<[u8]>>,
        bytes: Vec<u8>,
    }
    impl ColumnSink<Rc<[u8]>> for Kept {
        fn data(&mut self, column: Rc<[u8]>) -> std::io::Result<()> {
            self.bytes.extend_from_slice(&column);
            self.data.push(column);
            Ok(())
        }
        fn parity(&mut self, column: &[u8]) -> std::io::Result<()> {
            self.bytes.extend_from_slice(column);
            Ok(())
        }
    }
    let config = RsConfig::default();
    let codec = Codec::new(config).expect("codec");
    let mut volume = vec![0u8; 25_000];
    StdRng::seed_from_u64(3).fill(&mut volume[..]);
    // Two stripes of 10 blocks of 1,000 bytes and a short third.
    let layout = StripeLayout::new(config, 1000, volume.len() as u64).expect("layout");
    let mut encoder = StripeEncoder::new(&codec, 384, 512).expect("encoder");
    for stripe in 0..layout.stripe_count() {
        let source = Shared {
            volume: &volume,
            wrong_len: false,
        };
        let mut kept: Vec<Kept> = (0..14).map(|_| Kept::default()).collect();
        let sums = encoder
            .encode_stripe_columns(&layout, &source, stripe, &mut kept)
            .expect("encode");
        let mut written = vec![Vec::<u8>::new(); 14];
        let expected = encoder
            .encode_stripe(&layout, &volume, stripe, &mut written)
            .expect("encode");
        assert_eq!(sums, expected);
        for (block, (kept, written)) in kept.iter().zip(&written).enumerate() {
            assert_eq!(&kept.bytes, written, "stripe {stripe} block {block}");
            // Only the encoder's reference is gone: each column is the
            // source's own buffer, now held by the sink alone.
            assert!(kept.data.iter().all(|c| Rc::strong_count(c) == 1));
        }
        let data_columns: usize = kept[..10].iter().map(|k| k.data.len()).sum();
        assert!(data_columns > 0);
    }
    let source = Shared {
        volume: &volume,
        wrong_len: true,
    };
    let mut kept: Vec<Kept> = (0..14).map(|_| Kept::default()).collect();
    assert!(matches!(
        encoder.encode_stripe_columns(&layout, &source, 0, &mut kept),
        Err(CodingError::SourceRead { offset: 0, .. })
    ));
}

/// Shard `i`, byte `j` of the pinned sample: `(31*i + 7*j + j/256 + 1) mod 256`.
fn sample_data(k: usize, len: usize) -> Vec<Vec<u8>> {
    (0..k)
        .map(|i| {
            (0..len)
                .map(|j| (31 * i + 7 * j + j / 256 + 1) as u8)
                .collect()
        })
        .collect()
}

/// The on-disk format of parity: RS(10,4) parity of a fixed sample. If
/// this changes, blocks already written no longer decode — a format break.
#[test]
fn parity_of_the_sample_stripe_is_pinned() {
    let expected: [[u8; 16]; 4] = [
        [
            0x0b, 0x17, 0x45, 0x24, 0xe3, 0x2a, 0x0e, 0xbc, 0xa0, 0xf2, 0x7d, 0xca, 0x46, 0x11,
            0x0a, 0x3b,
        ],
        [
            0x8c, 0xb4, 0x64, 0xce, 0xc2, 0x71, 0xef, 0x8e, 0x41, 0xbf, 0x1c, 0x5d, 0x67, 0x82,
            0x64, 0xe4,
        ],
        [
            0x8c, 0x3b, 0x83, 0x2a, 0xf6, 0x8e, 0x57, 0x70, 0x22, 0x86, 0xa6, 0xdd, 0x60, 0x26,
            0xa5, 0x88,
        ],
        [
            0x8c, 0x4b, 0xa2, 0xa0, 0xd7, 0xc7, 0x36, 0xba, 0x43, 0xa6, 0xc7, 0x99, 0x41, 0x6e,
            0x7a, 0x0c,
        ],
    ];
    for kind in all_backends() {
        let codec = Codec::with_backend(RsConfig::default(), kind).expect("codec");
        let mut parity = vec![vec![0u8; 16]; 4];
        codec
            .encode(&sample_data(10, 16), &mut parity)
            .expect("encode");
        assert_eq!(parity, expected.map(|p| p.to_vec()), "{kind:?}");
    }
}

/// A version-1 block checksum record, byte for byte: every later version
/// of the crate must still read it.
#[test]
fn checksum_record_version_1_sample_still_decodes() {
    const SAMPLE_V1: [u8; 44] = [
        0x89, 0x48, 0x4c, 0x43, 0x4b, 0x0d, 0x0a, 0x1a, 0x01, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
        0x00, 0x14, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x3b, 0xda,
        0x6a, 0x77, 0x65, 0x3a, 0x9c, 0xd1, 0x24, 0x08, 0x21, 0xcd, 0x4e, 0x4f, 0x20, 0xeb,
    ];
    let block = &sample_data(1, 1300)[0];
    let sums = BlockChecksums::decode(&SAMPLE_V1).expect("v1 sample decodes");
    assert_eq!(sums.block_len_bytes(), 1300);
    assert_eq!(sums.chunk_size_bytes(), 512);
    sums.verify_range(0, block).expect("sample verifies");
    assert_eq!(
        BlockChecksums::compute(512, block).expect("sums").encode(),
        SAMPLE_V1
    );
}

#[test]
fn codec_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Codec>();
}
