//! Property tests: needle encode/decode round trip, the compact index against a `BTreeMap`,
//! and a whole volume against a `BTreeMap` model under random append, delete, compact and
//! reopen sequences. Fixed case counts and a fixed seed keep CI time bounded and a failure
//! replayable; `PROPTEST_RNG_SEED` does not apply, change [`SEED`] to explore.

use std::collections::BTreeMap;

use haystack::format::{self, NEEDLE_FLAG_DELETED};
use haystack::{Error, NeedleIndex, Volume, VolumeOptions};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// The seed of every property here, so that CI runs the same cases each time.
const SEED: u64 = 0x4861_796c_6f66_7401;

/// `cases` cases from [`SEED`].
fn seeded(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(SEED),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(seeded(256))]

    #[test]
    fn needle_round_trip(
        key: u64,
        cookie: u32,
        content_type in "[ -~]{0,255}",
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        flip in any::<prop::sample::Index>(),
    ) {
        let (bytes, crc) = format::encode_needle(key, cookie, &content_type, &data);
        let size = format::needle_size_bytes(content_type.len(), data.len() as u64);
        prop_assert_eq!(bytes.len() as u64, size);
        prop_assert_eq!(bytes.len() % 8, 0);
        let (n, flags) = format::decode_needle(bytes.clone(), 1, 64).expect("round trip");
        prop_assert_eq!(flags, 0);
        prop_assert_eq!(n.key, key);
        prop_assert_eq!(n.cookie, cookie);
        prop_assert_eq!(&n.content_type, &content_type);
        prop_assert_eq!(&n.data, &data);
        prop_assert_eq!(n.crc32, crc);
        // Any single flipped bit other than the deleted flag is rejected, never a panic.
        let bit = flip.index(bytes.len() * 8);
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let r = format::decode_needle(bad, 1, 64);
        if bit == format::NEEDLE_FLAGS_OFFSET * 8 {
            prop_assert_eq!(r.expect("deleted flag is legal").1, NEEDLE_FLAG_DELETED);
        } else {
            prop_assert!(r.is_err());
        }
    }

    /// Valid encodings of every record, changed in one to three bytes or cut
    /// short: each decoder refuses them (their checksums cover every byte),
    /// never decodes another value, never panics.
    #[test]
    fn mutated_encodings_are_refused(
        key: u64,
        offset: u64,
        size in 1u32..,
        instance: u64,
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let superblock = format::encode_superblock(&format::Superblock {
            volume_id: 1,
            created_unix_ms: offset,
            instance_id: instance,
            generation: 2,
            locked: key % 2 == 0,
            key_floor: (key % 3 == 0).then_some(key),
        });
        let index_header = format::encode_index_header(1, instance);
        let record = format::encode_index_record(&format::IndexRecord {
            kind: if key % 2 == 0 { format::IndexRecordKind::Put } else { format::IndexRecordKind::Delete },
            key,
            offset,
            size_bytes: size,
            flags: 0,
        });
        let mutate = |bytes: &[u8]| {
            let mut bad = bytes.to_vec();
            for (at, x) in &mutations {
                let at = at.index(bad.len());
                bad[at] ^= x;
            }
            bad
        };
        // Mutations may cancel out (the same byte twice): then it is the original.
        let changed = |bad: &[u8], good: &[u8]| bad != good;
        let bad = mutate(&superblock);
        if changed(&bad, &superblock) {
            prop_assert!(format::decode_superblock(&bad, 1).is_err());
        }
        prop_assert!(format::decode_superblock(&superblock[..cut.index(superblock.len())], 1).is_err());
        let bad = mutate(&index_header);
        if changed(&bad, &index_header) {
            prop_assert!(format::decode_index_header(&bad, 1).is_err());
        }
        prop_assert!(format::decode_index_header(&index_header[..cut.index(index_header.len())], 1).is_err());
        let bad = mutate(&record);
        if changed(&bad, &record) {
            prop_assert!(format::decode_index_record(&bad, 1, 32).is_err());
        }
        prop_assert!(format::decode_index_record(&record[..cut.index(record.len())], 1, 32).is_err());
        let (needle, _) = format::encode_needle(key, instance as u32, "image/png", &offset.to_le_bytes());
        let mut bad = mutate(&needle);
        bad[format::NEEDLE_FLAGS_OFFSET] = needle[format::NEEDLE_FLAGS_OFFSET];
        if changed(&bad, &needle) {
            prop_assert!(format::decode_needle(bad, 1, 64).is_err());
        }
        prop_assert!(format::decode_needle(needle[..cut.index(needle.len())].to_vec(), 1, 64).is_err());
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = format::decode_needle(bytes.clone(), 1, 0);
        let _ = format::decode_needle_header(&bytes, 1, 0);
        let _ = format::decode_superblock(&bytes, 1);
        let _ = format::decode_index_header(&bytes, 1);
        let _ = format::decode_index_record(&bytes, 1, 0);
    }

    #[test]
    fn index_matches_btreemap(
        ops in proptest::collection::vec(
            (1u64..100_000, 1u64..300_000, any::<bool>(), any::<prop::sample::Index>()),
            1..600,
        ),
    ) {
        let mut index = NeedleIndex::new(64);
        let mut model: BTreeMap<u64, (u64, u64, bool)> = BTreeMap::new();
        let (mut key, mut offset) = (0u64, 64u64);
        for (dk, size8, delete, pick) in ops {
            key += dk;
            let size = size8 * 8;
            prop_assert!(index.push(key, size, false));
            model.insert(key, (offset, size, false));
            offset += size;
            if delete {
                let k = *model.keys().nth(pick.index(model.len())).expect("non-empty");
                let was_live = !model[&k].2;
                prop_assert_eq!(index.mark_deleted(k).is_some(), was_live);
                model.get_mut(&k).expect("present").2 = true;
            }
            let probe = pick.index(key as usize + 2) as u64;
            let got = index.get(probe).map(|e| (e.offset, e.size_bytes, e.deleted));
            prop_assert_eq!(got, model.get(&probe).copied());
        }
        let all: Vec<_> =
            index.iter().map(|e| (e.key, (e.offset, e.size_bytes, e.deleted))).collect();
        prop_assert_eq!(all, model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
        prop_assert_eq!(index.data_end(), offset);
        let from = model.keys().nth(model.len() / 2).copied();
        let after: Vec<u64> = index.entries_after(from, 10).iter().map(|e| e.key).collect();
        let want: Vec<u64> = model.keys().copied().filter(|k| Some(*k) > from).take(10).collect();
        prop_assert_eq!(after, want);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append { gap: u64, len: usize, cookie: u32 },
    Delete(prop::sample::Index),
    DeleteWrongCookie(prop::sample::Index),
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..5, 0usize..3000, any::<u32>())
            .prop_map(|(gap, len, cookie)| Op::Append { gap, len, cookie }),
        3 => any::<prop::sample::Index>().prop_map(Op::Delete),
        1 => any::<prop::sample::Index>().prop_map(Op::DeleteWrongCookie),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn check(v: &Volume, model: &BTreeMap<u64, (u32, Vec<u8>, bool)>) -> Result<(), TestCaseError> {
    for (k, (c, d, deleted)) in model {
        match v.read_needle(*k, *c) {
            Ok(n) => {
                prop_assert!(!deleted, "deleted key {} served", k);
                prop_assert_eq!(&n.data, d);
            }
            Err(Error::NotFound) => prop_assert!(deleted, "live key {} missing", k),
            Err(e) => return Err(TestCaseError::fail(format!("key {k}: {e}"))),
        }
    }
    let live = model.values().filter(|(_, _, d)| !d).count() as u64;
    prop_assert_eq!(v.status().needle_count, live);
    let deleted: Vec<u64> = v.deleted_keys();
    for k in deleted {
        prop_assert!(model[&k].2);
    }
    Ok(())
}

proptest! {
    #![proptest_config(seeded(300))]

    #[test]
    fn volume_matches_btreemap(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut v = Volume::create(dir.path(), 1, VolumeOptions::default()).expect("create");
        let mut model: BTreeMap<u64, (u32, Vec<u8>, bool)> = BTreeMap::new();
        let mut key = 0u64;
        for op in ops {
            match op {
                Op::Append { gap, len, cookie } => {
                    key += gap;
                    let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ key) as u8).collect();
                    v.append_needle(key, cookie, "t", &data).expect("append");
                    model.insert(key, (cookie, data, false));
                }
                Op::Delete(_) | Op::DeleteWrongCookie(_) if model.is_empty() => {}
                Op::Delete(pick) => {
                    let n = model.len();
                    let (k, entry) = model.iter_mut().nth(pick.index(n)).expect("non-empty");
                    let r = v.delete_needle(*k, entry.0);
                    if entry.2 {
                        prop_assert!(matches!(r, Err(Error::NotFound)));
                    } else {
                        r.expect("delete");
                        entry.2 = true;
                    }
                }
                Op::DeleteWrongCookie(pick) => {
                    let (k, entry) = model.iter().nth(pick.index(model.len())).expect("non-empty");
                    let r = v.delete_needle(*k, entry.0.wrapping_add(1));
                    prop_assert!(matches!(r, Err(Error::NotFound)));
                }
                Op::Compact => {
                    v.compact().expect("compact");
                    model.retain(|_, (_, _, deleted)| !*deleted);
                }
                Op::Reopen => {
                    drop(v);
                    v = Volume::open(dir.path(), 1, VolumeOptions::default()).expect("reopen");
                }
            }
            check(&v, &model)?;
        }
        prop_assert_eq!(v.status().last_key, (key > 0).then_some(key));
    }
}

proptest! {
    #![proptest_config(seeded(256))]

    /// A volume whose data or index file was changed in a few bytes anywhere opens or
    /// refuses with an error, never panics, and never serves a needle with other bytes than
    /// were appended: each read answers the appended bytes, `NotFound` (the deleted flag is
    /// not under the checksum) or an error.
    #[test]
    fn a_mutated_volume_never_serves_wrong_bytes(
        needles in 1u64..8,
        in_index: bool,
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Volume::create(dir.path(), 3, VolumeOptions::default()).expect("create");
        let data_of = |k: u64| vec![k as u8 ^ 0x5a; 30 + k as usize * 11];
        for k in 1..=needles {
            v.append_needle(k, 9, "t/x", &data_of(k)).expect("append");
        }
        let path = if in_index { v.index_path() } else { v.data_path() };
        drop(v);
        let mut bytes = std::fs::read(&path).expect("read");
        for (at, x) in &mutations {
            let at = at.index(bytes.len());
            bytes[at] ^= x;
        }
        std::fs::write(&path, &bytes).expect("write");
        if let Ok(v) = Volume::open(dir.path(), 3, VolumeOptions::default()) {
            for k in 1..=needles {
                if let Ok(n) = v.read_needle(k, 9) {
                    prop_assert_eq!(&n.data[..], &data_of(k)[..], "needle {} served other bytes", k);
                }
            }
        }
    }

    /// Opening a volume whose files hold arbitrary bytes after valid headers (or instead of
    /// them) never panics: it recovers what is valid, or reports an error.
    #[test]
    fn open_never_panics_on_garbage(
        data_tail in proptest::collection::vec(any::<u8>(), 0..600),
        index_tail in proptest::collection::vec(any::<u8>(), 0..300),
        keep_headers: bool,
        needles in 0u64..4,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Volume::create(dir.path(), 3, VolumeOptions::default()).expect("create");
        for k in 1..=needles {
            v.append_needle(k, 1, "", &[k as u8; 40]).expect("append");
        }
        let (data_path, index_path) = (v.data_path(), v.index_path());
        drop(v);
        let mut data = std::fs::read(&data_path).expect("read");
        let mut index = std::fs::read(&index_path).expect("read");
        if !keep_headers {
            data.truncate(data_tail.len() % 64);
            index.truncate(index_tail.len() % 32);
        }
        data.extend_from_slice(&data_tail);
        index.extend_from_slice(&index_tail);
        std::fs::write(&data_path, &data).expect("write");
        std::fs::write(&index_path, &index).expect("write");
        match Volume::open(dir.path(), 3, VolumeOptions::default()) {
            Ok(v) => {
                if keep_headers {
                    for k in 1..=needles {
                        let n = v.read_needle(k, 1).expect("intact");
                        prop_assert_eq!(n.data, vec![k as u8; 40]);
                    }
                }
                let next = v.status().last_key.unwrap_or(0) + 1;
                v.append_needle(next, 1, "", b"x").expect("append after recovery");
            }
            Err(e) => prop_assert!(!keep_headers, "valid headers but open failed: {e}"),
        }
    }
}
