//! Sealing a locked hot volume into a warm data file, its index and RS(10,4)
//! block files, then reading every live BLOB back through the blocks: whole
//! blocks, needles that straddle blocks, lost blocks rebuilt from the rest,
//! and damaged bytes refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use coding::Codec;
use f4::block::{ExpectedBlock, WrittenBlock, encode_volume, read_block_range};
use f4::format::expected_block_len;
use f4::index::WarmIndex;
use f4::seal::{Sealed, seal_live_needles};
use f4::{Error, Geometry};
use haystack::{Volume, VolumeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GENERATION: u64 = 0x51ea1;
const VOLUME: u32 = 3;

/// Live BLOBs by key: cookie and bytes.
type Live = BTreeMap<u64, (u32, Vec<u8>)>;

/// A locked hot volume of `count` BLOBs of 0 to `max_len` bytes (a few of
/// them empty and a few several blocks long), every third one deleted.
fn hot_volume(dir: &Path, seed: u64, count: u64, max_len: usize) -> (Volume, Live, Vec<u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let v = Volume::create(dir, VOLUME, VolumeOptions::default()).expect("create");
    let mut live = Live::new();
    let mut deleted = Vec::new();
    for key in 1..=count {
        let len = match key % 7 {
            0 => 0,
            1 => max_len,
            _ => rng.random_range(0..=max_len / 4),
        };
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let cookie = rng.random();
        v.append_needle(key, cookie, "image/jpeg", &data)
            .expect("append");
        live.insert(key, (cookie, data));
    }
    for key in (1..=count).step_by(3) {
        let (cookie, _) = live.remove(&key).expect("live");
        v.delete_needle(key, cookie).expect("delete");
        deleted.push(key);
    }
    v.lock().expect("lock");
    (v, live, deleted)
}

struct Warm {
    dir: tempfile::TempDir,
    sealed: Sealed,
    index: WarmIndex,
    geometry: Geometry,
    blocks: Vec<WrittenBlock>,
}

fn seal_and_encode(v: &Volume, max_block: u64) -> Warm {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("warm.data");
    let index = dir.path().join("warm.index");
    let sealed = seal_live_needles(v, GENERATION, &data, &index).expect("seal");
    let geometry =
        Geometry::choose(sealed.data_len_bytes, max_block, 10, 4, 512).expect("geometry");
    let blocks = encode_volume(&data, VOLUME, GENERATION, geometry, dir.path()).expect("encode");
    let index = WarmIndex::open(&index, VOLUME, GENERATION).expect("index");
    Warm {
        dir,
        sealed,
        index,
        geometry,
        blocks,
    }
}

impl Warm {
    fn path(&self, stripe: u64, block: u32) -> PathBuf {
        self.blocks
            .iter()
            .find(|b| b.header.stripe == stripe && b.header.block_index == block)
            .expect("block written")
            .path
            .clone()
    }

    fn expected(&self, stripe: u64, block_index: u32) -> ExpectedBlock {
        ExpectedBlock {
            volume_id: VOLUME,
            generation: GENERATION,
            geometry: self.geometry,
            stripe,
            block_index,
        }
    }

    /// The volume bytes `[offset, offset+len)` read through the blocks;
    /// pieces in a block of `lost` are rebuilt from the range of ten others.
    fn read(&self, offset: u64, len: u64, lost: &[u32]) -> Result<Vec<u8>, Error> {
        let layout = self.geometry.layout()?;
        let mut out = Vec::new();
        for piece in layout.segments(offset, len)? {
            let block = u32::try_from(piece.block).unwrap();
            if !lost.contains(&block) {
                out.extend(read_block_range(
                    &self.path(piece.stripe, block),
                    &self.expected(piece.stripe, block),
                    piece.block_offset,
                    piece.len,
                )?);
                continue;
            }
            out.extend(self.rebuild(piece.stripe, block, piece.block_offset, piece.len, lost)?);
        }
        Ok(out)
    }

    fn rebuild(
        &self,
        stripe: u64,
        target: u32,
        offset: u64,
        len: u64,
        lost: &[u32],
    ) -> Result<Vec<u8>, Error> {
        let codec = Codec::new(self.geometry.rs_config()?)?;
        let mut sources = Vec::new();
        for index in (0..14).filter(|i| !lost.contains(i)).take(10) {
            // Bytes past a block's stored length are implicit zeros.
            let stored = expected_block_len(&self.geometry, stripe, index)?;
            let mut bytes = vec![0u8; len as usize];
            if offset < stored {
                let have = (stored - offset).min(len);
                let read = read_block_range(
                    &self.path(stripe, index),
                    &self.expected(stripe, index),
                    offset,
                    have,
                )?;
                bytes[..read.len()].copy_from_slice(&read);
            }
            sources.push((index as usize, bytes));
        }
        let sources: Vec<(usize, &[u8])> = sources.iter().map(|(i, b)| (*i, &b[..])).collect();
        let mut rebuilt = vec![0u8; len as usize];
        codec.reconstruct_range(&sources, &mut [(target as usize, &mut rebuilt[..])])?;
        Ok(rebuilt)
    }

    /// BLOB `key` read through the index and the blocks, needle checked.
    fn blob(&self, key: u64, cookie: u32, lost: &[u32]) -> Result<Option<Vec<u8>>, Error> {
        let Some(entry) = self.index.get(key)? else {
            return Ok(None);
        };
        let bytes = self.read(entry.offset, u64::from(entry.size_bytes), lost)?;
        let (needle, _) =
            haystack::format::decode_needle(bytes, VOLUME, entry.offset).map_err(Error::Hot)?;
        assert_eq!(needle.key, key);
        assert_eq!(needle.cookie, cookie, "cookie of {key}");
        assert_eq!(needle.content_type, "image/jpeg");
        Ok(Some(needle.data.to_vec()))
    }
}

#[test]
fn every_live_blob_reads_back_through_the_blocks_and_no_dead_byte_is_sealed() {
    for (seed, count, max_len, max_block) in [
        (1, 60, 20_000, 4096),
        (2, 200, 3_000, 64 * 1024),
        (3, 5, 100, 1 << 20),
        (4, 30, 9_000, 512),
    ] {
        let hot = tempfile::tempdir().expect("tempdir");
        let (v, live, deleted) = hot_volume(hot.path(), seed, count, max_len);
        let warm = seal_and_encode(&v, max_block);
        warm.index.check_all().expect("index whole");
        assert_eq!(warm.sealed.needles, live.len() as u64);
        assert_eq!(warm.sealed.dropped, deleted.len() as u64);
        let live_bytes: u64 = live
            .keys()
            .map(|&k| v.needle_size_bytes(k).expect("size"))
            .sum();
        assert_eq!(warm.sealed.data_len_bytes, live_bytes, "no dead bytes");
        let data_len = std::fs::metadata(warm.dir.path().join("warm.data"))
            .unwrap()
            .len();
        assert_eq!(data_len, live_bytes);
        let stripes = warm.geometry.layout().unwrap().stripe_count().max(1);
        assert_eq!(warm.blocks.len() as u64, 14 * stripes);
        for (&key, (cookie, data)) in &live {
            let got = warm
                .blob(key, *cookie, &[])
                .expect("read")
                .expect("present");
            assert!(got == *data, "seed {seed}: BLOB {key} differs");
        }
        for key in deleted {
            assert_eq!(warm.index.get(key).unwrap(), None, "deleted {key} sealed");
        }
        assert_eq!(warm.index.get(count + 1).unwrap(), None);
    }
}

#[test]
fn blobs_in_lost_blocks_are_rebuilt_from_any_ten_others() {
    let hot = tempfile::tempdir().expect("tempdir");
    let (v, live, _) = hot_volume(hot.path(), 9, 80, 12_000);
    let warm = seal_and_encode(&v, 8192);
    // Some needles straddle two blocks with these sizes.
    let layout = warm.geometry.layout().unwrap();
    let straddling = live
        .keys()
        .filter(|&&k| {
            let e = warm.index.get(k).unwrap().unwrap();
            layout
                .segments(e.offset, u64::from(e.size_bytes))
                .unwrap()
                .len()
                > 1
        })
        .count();
    assert!(straddling > 0, "some needle straddles blocks");
    for lost in [
        vec![0],
        vec![0, 1],
        vec![3, 9, 10],
        vec![0, 5, 12, 13],
        vec![6, 7, 8, 9],
    ] {
        for (&key, (cookie, data)) in &live {
            let got = warm
                .blob(key, *cookie, &lost)
                .expect("rebuilt")
                .expect("present");
            assert!(got == *data, "BLOB {key} with blocks {lost:?} lost");
        }
    }
}

#[test]
fn a_damaged_or_foreign_block_is_refused_never_read() {
    let hot = tempfile::tempdir().expect("tempdir");
    let (v, live, _) = hot_volume(hot.path(), 5, 40, 8_000);
    let warm = seal_and_encode(&v, 16_384);
    let (&key, (cookie, _)) = live.iter().next().expect("a live BLOB");
    let entry = warm.index.get(key).unwrap().unwrap();
    let piece = warm
        .geometry
        .layout()
        .unwrap()
        .segments(entry.offset, 1)
        .unwrap()[0];
    let block = u32::try_from(piece.block).unwrap();
    let path = warm.path(piece.stripe, block);
    let good = std::fs::read(&path).unwrap();

    // A flipped data byte: the chunk's CRC refuses it.
    let mut bad = good.clone();
    bad[f4::format::BLOCK_HEADER_SIZE + usize::try_from(piece.block_offset).unwrap()] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let error = warm.blob(key, *cookie, &[]).expect_err("damaged");
    assert!(
        matches!(
            error,
            Error::Coding(coding::CodingError::ChecksumMismatch { .. })
        ),
        "{error}"
    );
    // ...and the backoff path rebuilds the BLOB without that block.
    assert!(warm.blob(key, *cookie, &[block]).unwrap().is_some());

    // A damaged header, a truncated file, another generation's block.
    let mut bad = good.clone();
    bad[30] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        warm.blob(key, *cookie, &[]),
        Err(Error::Corrupt(_))
    ));
    std::fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert!(matches!(
        warm.blob(key, *cookie, &[]),
        Err(Error::Corrupt(_))
    ));
    std::fs::write(&path, &good).unwrap();
    let mut other = warm.expected(piece.stripe, block);
    other.generation += 1;
    assert!(matches!(
        read_block_range(&path, &other, 0, 1),
        Err(Error::WrongBlock(_))
    ));
    let past = warm.blocks[0].header.block_len_bytes;
    assert!(matches!(
        read_block_range(&warm.blocks[0].path, &warm.expected(0, 0), past, 1),
        Err(Error::OutOfRange { .. })
    ));
    assert!(warm.blob(key, *cookie, &[]).unwrap().is_some());
}

#[test]
fn only_a_locked_volume_with_good_needles_is_sealed_and_a_failure_leaves_nothing() {
    let hot = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(hot.path(), VOLUME, VolumeOptions::default()).expect("create");
    v.append_needle(1, 1, "", b"one, soon damaged").unwrap();
    v.append_needle(2, 2, "", b"two").unwrap();
    let out = tempfile::tempdir().expect("tempdir");
    let (data, index) = (out.path().join("d"), out.path().join("i"));
    assert!(matches!(
        seal_live_needles(&v, GENERATION, &data, &index),
        Err(Error::NotLocked { volume: VOLUME })
    ));
    v.lock().unwrap();
    let data_path = v.data_path();
    drop(v);
    // Flip a data byte of needle 1 (not the last one, which a reopen checks
    // as a possibly torn tail).
    let mut bytes = std::fs::read(&data_path).unwrap();
    let at = bytes
        .windows(b"damaged".len())
        .rposition(|w| w == b"damaged")
        .unwrap();
    bytes[at] ^= 1;
    std::fs::write(&data_path, &bytes).unwrap();
    let v = Volume::open(hot.path(), VOLUME, VolumeOptions::default()).expect("reopen");
    match seal_live_needles(&v, GENERATION, &data, &index) {
        Err(Error::DamagedNeedle { volume, key, .. }) => assert_eq!((volume, key), (VOLUME, 1)),
        other => panic!("expected a damaged needle, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing left"
    );
}

#[test]
fn an_empty_volume_seals_into_one_stripe_of_empty_blocks() {
    let hot = tempfile::tempdir().expect("tempdir");
    let v = Volume::create(hot.path(), VOLUME, VolumeOptions::default()).expect("create");
    v.append_needle(1, 1, "", b"gone").unwrap();
    v.delete_needle(1, 1).unwrap();
    v.lock().unwrap();
    let warm = seal_and_encode(&v, 4096);
    assert_eq!(warm.sealed.data_len_bytes, 0);
    assert_eq!(warm.index.header().entry_count, 0);
    warm.index.check_all().unwrap();
    assert_eq!(warm.blocks.len(), 14);
    assert!(warm.blocks.iter().all(|b| b.header.block_len_bytes == 0));
    assert_eq!(warm.index.get(1).unwrap(), None);
}

/// A data file of exactly `len` pseudo-random bytes cut into the blocks of
/// its geometry (largest block `max_block`), with an empty index.
fn encode_bytes(len: u64, max_block: u64) -> (Warm, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(len);
    let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    let data = dir.path().join("warm.data");
    std::fs::write(&data, &bytes).expect("data");
    let index = dir.path().join("warm.index");
    let header = f4::format::IndexHeader {
        volume_id: VOLUME,
        generation: GENERATION,
        entry_count: 0,
        data_len_bytes: len,
    };
    std::fs::write(&index, header.encode()).expect("index");
    let geometry = Geometry::choose(len, max_block, 10, 4, 512).expect("geometry");
    let blocks = encode_volume(&data, VOLUME, GENERATION, geometry, dir.path()).expect("encode");
    let warm = Warm {
        sealed: Sealed {
            needles: 0,
            data_len_bytes: len,
            dropped: 0,
        },
        index: WarmIndex::open(&index, VOLUME, GENERATION).expect("index"),
        geometry,
        blocks,
        dir,
    };
    (warm, bytes)
}

#[test]
fn volumes_of_whole_stripes_one_byte_either_side_and_under_a_block_read_back() {
    const BLOCK: u64 = 4096;
    let stripe = 10 * BLOCK;
    for len in [
        2 * stripe,
        2 * stripe - 1,
        2 * stripe + 1,
        stripe,
        BLOCK - 1,
        1,
    ] {
        let (warm, bytes) = encode_bytes(len, BLOCK);
        let layout = warm.geometry.layout().unwrap();
        assert_eq!(
            warm.blocks.len() as u64,
            14 * layout.stripe_count(),
            "{len}: every stripe has 14 blocks"
        );
        if len % stripe == 0 {
            assert_eq!(warm.geometry.block_size_bytes, BLOCK, "{len}: full stripes");
        }
        let data_bytes: u64 = warm
            .blocks
            .iter()
            .filter(|b| b.header.block_index < 10)
            .map(|b| b.header.block_len_bytes)
            .sum();
        assert_eq!(data_bytes, len, "{len}: no padding is stored");
        // Whole, in pieces across block and stripe boundaries, and with up
        // to four blocks lost.
        for lost in [vec![], vec![0], vec![9, 10, 11, 13], vec![0, 1, 2, 3]] {
            assert_eq!(warm.read(0, len, &lost).unwrap(), bytes, "{len} {lost:?}");
            for (offset, piece) in [(BLOCK - 3, 7), (stripe - 2, 5), (len - 1, 1)] {
                if offset + piece <= len {
                    let got = warm.read(offset, piece, &lost).unwrap();
                    let (from, to) = (offset as usize, (offset + piece) as usize);
                    assert_eq!(got, &bytes[from..to], "{len} {offset}+{piece} {lost:?}");
                }
            }
        }
        assert!(warm.read(len, 1, &[]).is_err(), "{len}: past the end");
        assert_eq!(warm.sealed.data_len_bytes, len);
    }
}
