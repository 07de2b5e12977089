//! Bytes on disk per tier and file kind, from the cluster's files
//! (`bench::disk`) and what the benchmark knows is live in each volume.
//!
//! The kinds: `data` (the live BLOBs' own bytes, every copy), `framing`
//! (needle headers, footers and padding of live BLOBs, superblocks),
//! `dead` (deleted BLOBs still on disk: a hot volume's until compaction, a
//! warm volume's for good, with their share of parity; a warm volume's
//! last stripe's padding counts here too), `parity`, `checksums` (block
//! headers and checksum records), `index`, `journal`, and `geo` (the geo
//! layer's copies and XOR volumes, whole). A tier's effective replication
//! is its bytes less `dead` over the live bytes it holds: what storing a
//! byte costs, whatever has been deleted since.

use std::collections::{BTreeMap, HashMap, HashSet};

use bench::disk::{DiskFile, Kind};
use router::directory::VolumeState;
use router::directory::types::LogicalVolume;
use serde::{Deserialize, Serialize};

/// One tier's bytes by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TierBytes {
    /// Volumes of the tier (primaries: BLOBs are uploaded to them).
    pub volumes: usize,
    /// Live BLOBs in them.
    pub live_blobs: u64,
    /// Their bytes.
    pub logical_bytes: u64,
    /// See the module documentation for each kind.
    pub data: u64,
    pub framing: u64,
    pub dead: u64,
    pub parity: u64,
    pub checksums: u64,
    pub index: u64,
    pub journal: u64,
    pub geo: u64,
    /// Every byte of every file of the tier.
    pub total: u64,
    /// `(total - dead) / logical_bytes`.
    pub effective_replication: f64,
    /// `total / logical_bytes`.
    pub on_disk_per_live_byte: f64,
}

impl TierBytes {
    fn finish(&mut self) {
        let logical = self.logical_bytes.max(1) as f64;
        self.effective_replication = self.total.saturating_sub(self.dead) as f64 / logical;
        self.on_disk_per_live_byte = self.total as f64 / logical;
    }

    /// The kinds, named, in the order the report and plots show them.
    pub fn kinds(&self) -> [(&'static str, u64); 8] {
        [
            ("data", self.data),
            ("framing", self.framing),
            ("dead", self.dead),
            ("parity", self.parity),
            ("checksums", self.checksums),
            ("index", self.index),
            ("journal", self.journal),
            ("geo", self.geo),
        ]
    }
}

/// What the benchmark knows is live in one volume.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveInVolume {
    /// Live BLOBs.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their needles' bytes, framing included.
    pub framed: u64,
}

/// Both tiers and the whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Accounting {
    pub hot: TierBytes,
    pub warm: TierBytes,
    /// `(all bytes - dead) / live bytes`.
    pub effective_replication: f64,
    /// All bytes over live bytes.
    pub on_disk_per_live_byte: f64,
    /// The saving in the f4 paper's form: what three full replicas of the
    /// live bytes would take, less what is on disk.
    pub saving_bytes: i64,
    /// `saving_bytes` over three replicas' bytes.
    pub saving_share: f64,
}

/// Sorts `files` into tiers and kinds.
pub fn account(
    files: &[DiskFile],
    volumes: &[LogicalVolume],
    live: &HashMap<u32, LiveInVolume>,
) -> Accounting {
    let companions: HashSet<u32> = volumes
        .iter()
        .filter(|v| !v.geo.of.is_empty())
        .map(|v| v.id)
        .collect();
    let warm: HashSet<u32> = volumes
        .iter()
        .filter(|v| v.state == VolumeState::Warm && v.geo.of.is_empty())
        .map(|v| v.id)
        .collect();
    #[derive(Default)]
    struct PerVolume {
        hot_data_files: u64,
        hot_data_bytes: u64,
        data_block_bytes: u64,
        parity_block_bytes: u64,
    }
    let mut per_volume: BTreeMap<u32, PerVolume> = BTreeMap::new();
    let mut out = Accounting::default();
    for file in files {
        let entry = per_volume.entry(file.volume).or_default();
        let companion = companions.contains(&file.volume);
        match (file.kind, file.block) {
            (Kind::HotData, _) => {
                out.hot.total += file.len;
                entry.hot_data_files += 1;
                entry.hot_data_bytes += file.len;
            }
            (Kind::HotIndex, _) => {
                out.hot.total += file.len;
                out.hot.index += file.len;
            }
            _ if companion => {
                out.warm.total += file.len;
                out.warm.geo += file.len;
            }
            (Kind::Block, Some(block)) => {
                out.warm.total += file.len;
                out.warm.checksums += file.len.saturating_sub(block.data_bytes);
                if block.parity {
                    entry.parity_block_bytes += block.data_bytes;
                } else {
                    entry.data_block_bytes += block.data_bytes;
                }
            }
            // A block whose header cannot be read serves no BLOB.
            (Kind::Block, None) => {
                out.warm.total += file.len;
                out.warm.dead += file.len;
            }
            (Kind::WarmIndex, _) => {
                out.warm.total += file.len;
                out.warm.index += file.len;
            }
            (Kind::WarmJournal, _) => {
                out.warm.total += file.len;
                out.warm.journal += file.len;
            }
        }
    }
    let superblock = haystack::format::SUPERBLOCK_SIZE;
    for (volume, bytes) in &per_volume {
        let in_volume = live.get(volume).copied().unwrap_or_default();
        if bytes.hot_data_files > 0 {
            let copies = bytes.hot_data_files;
            let live_framed = copies * (in_volume.framed + superblock);
            out.hot.data += copies * in_volume.bytes;
            out.hot.framing += live_framed - copies * in_volume.bytes;
            out.hot.dead += bytes.hot_data_bytes.saturating_sub(live_framed);
        }
        if bytes.data_block_bytes > 0 {
            let dead_data = bytes.data_block_bytes.saturating_sub(in_volume.framed);
            let dead_parity = (u128::from(bytes.parity_block_bytes) * u128::from(dead_data)
                / u128::from(bytes.data_block_bytes)) as u64;
            out.warm.data += in_volume.bytes;
            out.warm.framing += in_volume.framed.saturating_sub(in_volume.bytes);
            out.warm.dead += dead_data + dead_parity;
            out.warm.parity += bytes.parity_block_bytes - dead_parity;
        }
    }
    for volume in volumes.iter().filter(|v| v.geo.of.is_empty()) {
        let in_volume = live.get(&volume.id).copied().unwrap_or_default();
        let tier = if warm.contains(&volume.id) {
            &mut out.warm
        } else {
            &mut out.hot
        };
        tier.volumes += 1;
        tier.live_blobs += in_volume.blobs;
        tier.logical_bytes += in_volume.bytes;
    }
    out.hot.finish();
    out.warm.finish();
    let total = out.hot.total + out.warm.total;
    let dead = out.hot.dead + out.warm.dead;
    let logical = out.hot.logical_bytes + out.warm.logical_bytes;
    out.effective_replication = total.saturating_sub(dead) as f64 / logical.max(1) as f64;
    out.on_disk_per_live_byte = total as f64 / logical.max(1) as f64;
    let three = 3 * logical;
    out.saving_bytes = three as i64 - total as i64;
    out.saving_share = out.saving_bytes as f64 / three.max(1) as f64;
    out
}

#[cfg(test)]
mod tests {
    use bench::disk::{BlockBytes, DiskFile, Kind};

    use super::*;

    fn volume(json: serde_json::Value) -> LogicalVolume {
        let mut base = serde_json::json!({
            "replicas": [], "stale_replicas": [], "created_ms": 0, "locked_ms": null,
            "size_bytes": 0, "needle_count": 0,
        });
        for (key, value) in json.as_object().unwrap() {
            base[key] = value.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn file(volume: u32, kind: Kind, len: u64, block: Option<(u64, bool)>) -> DiskFile {
        DiskFile {
            volume,
            kind,
            len,
            block: block.map(|(data_bytes, parity)| BlockBytes { data_bytes, parity }),
        }
    }

    #[test]
    fn kinds_split_live_dead_and_geo() {
        let superblock = haystack::format::SUPERBLOCK_SIZE;
        let live = HashMap::from([
            (
                1,
                LiveInVolume {
                    blobs: 2,
                    bytes: 1_000,
                    framed: 1_100,
                },
            ),
            (
                2,
                LiveInVolume {
                    blobs: 1,
                    bytes: 9_000,
                    framed: 9_050,
                },
            ),
        ]);
        let volumes = [
            volume(serde_json::json!({"id": 1, "state": "locked"})),
            volume(serde_json::json!({"id": 2, "state": "warm"})),
            volume(serde_json::json!({"id": 3, "state": "warm", "geo": {"of": [2]}})),
        ];
        let mut files = Vec::new();
        for _ in 0..3 {
            // Two live needles and 300 bytes of deleted ones per replica.
            files.push(file(1, Kind::HotData, superblock + 1_100 + 300, None));
            files.push(file(1, Kind::HotIndex, 96, None));
        }
        // 10 data blocks of 1,000 bytes: 9,050 live, 950 dead; parity 4,000.
        for index in 0..14 {
            files.push(file(2, Kind::Block, 1_080, Some((1_000, index >= 10))));
            files.push(file(3, Kind::Block, 500, Some((420, index >= 10))));
        }
        files.push(file(2, Kind::WarmIndex, 72, None));
        files.push(file(2, Kind::WarmJournal, 56, None));

        let out = account(&files, &volumes, &live);
        assert_eq!(out.hot.volumes, 1);
        assert_eq!(out.hot.data, 3_000);
        assert_eq!(out.hot.framing, 3 * (100 + superblock));
        assert_eq!(out.hot.dead, 900);
        assert_eq!(out.hot.index, 288);
        assert_eq!(out.hot.total, 3 * (superblock + 1_400 + 96));
        assert_eq!(out.warm.volumes, 1, "a companion is not a volume of BLOBs");
        assert_eq!(out.warm.data, 9_000);
        assert_eq!(out.warm.framing, 50);
        // 950 dead data bytes and their share (950/10,000) of the parity.
        assert_eq!(out.warm.dead, 950 + 380);
        assert_eq!(out.warm.parity, 4_000 - 380);
        assert_eq!(out.warm.checksums, 14 * 80);
        assert_eq!((out.warm.index, out.warm.journal), (72, 56));
        assert_eq!(out.warm.geo, 14 * 500);
        for tier in [&out.hot, &out.warm] {
            let kinds: u64 = tier.kinds().iter().map(|(_, bytes)| bytes).sum();
            assert_eq!(kinds, tier.total, "the kinds add up to the files");
        }
        let warm = (out.warm.total - out.warm.dead) as f64 / 9_000.0;
        assert!((out.warm.effective_replication - warm).abs() < 1e-12);
        assert_eq!(
            out.saving_bytes,
            3 * 10_000 - (out.hot.total + out.warm.total) as i64
        );
    }
}
