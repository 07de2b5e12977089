//! The geo layer's records in [`RedbDirectory`]: companion volumes (a
//! primary's full copy in another datacenter, or two buddies' XOR in a
//! third) created, placed and linked to their primaries in one
//! transaction, and dropped with their links.

use std::collections::BTreeSet;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{
    MIGRATION_JOBS, RedbDirectory, VOLUMES, all_nodes, all_volumes, decode, get_volume,
    next_volume_id, put_volume, range_after,
};
use crate::directory::DirectoryError;
use crate::directory::types::{
    CompanionRequest, GeoLinks, LogicalVolume, MigrationJob, NodeRecord, VolumeState, WarmVolume,
};

/// Companions dropped: id → when, ms since the UNIX epoch. Block files of
/// one that a node kept (it was down when they were removed) are garbage
/// the coordinator removes.
pub(super) const DROPPED_COMPANIONS: TableDefinition<u32, u64> =
    TableDefinition::new("dropped_companions");

/// The home datacenter of warm `volume`, by `nodes`.
fn home(volume: &LogicalVolume, nodes: &[NodeRecord]) -> String {
    volume.home_datacenter(|id| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.datacenter.clone())
    })
}

fn conflict(volume: u32, reason: String) -> DirectoryError {
    DirectoryError::PlacementConflict { volume, reason }
}

/// Checks that `primary` may take a companion of `request` (module doc).
fn check_primary(primary: &LogicalVolume, pair: bool) -> Result<(), DirectoryError> {
    let id = primary.id;
    if primary.state != VolumeState::Warm || primary.warm.is_none() {
        return Err(conflict(
            id,
            format!(
                "it is {}; only a warm volume gets a companion",
                primary.state
            ),
        ));
    }
    if primary.geo.is_companion() {
        return Err(conflict(id, "it is itself a companion".into()));
    }
    if primary.geo.buddy.is_some() {
        return Err(conflict(id, "it already has a buddy".into()));
    }
    if !pair && primary.geo.copy.is_some() {
        return Err(conflict(id, "it already has a copy".into()));
    }
    Ok(())
}

impl RedbDirectory {
    pub(super) fn create_companion_record(
        &self,
        request: &CompanionRequest,
        allow_fewer_racks: bool,
        now_ms: u64,
    ) -> Result<LogicalVolume, DirectoryError> {
        let pair = match request.of.as_slice() {
            [_] => false,
            [a, b] if a != b => true,
            _ => {
                return Err(DirectoryError::BadRequest(
                    "a companion is of one volume (a copy) or of two (an XOR)".into(),
                ));
            }
        };
        let layout = request
            .geometry
            .layout()
            .map_err(|e| DirectoryError::BadRequest(e.to_string()))?;
        self.write(|txn| {
            let nodes = all_nodes(&txn.open_table(super::NODES)?)?;
            let volumes = all_volumes(&txn.open_table(VOLUMES)?)?;
            let mut primaries = Vec::with_capacity(request.of.len());
            for &id in &request.of {
                let primary = get_volume(txn, id)?;
                check_primary(&primary, pair)?;
                primaries.push(primary);
            }
            let homes: BTreeSet<String> = primaries.iter().map(|p| home(p, &nodes)).collect();
            if homes.len() < primaries.len() {
                return Err(conflict(
                    request.of[0],
                    format!("its buddy {} is in the same datacenter", request.of[1]),
                ));
            }
            let mut allowed: Vec<String> = if request.datacenters.is_empty() {
                nodes.iter().map(|n| n.datacenter.clone()).collect()
            } else {
                request.datacenters.clone()
            };
            allowed.retain(|dc| !homes.contains(dc));
            allowed.sort();
            allowed.dedup();
            if allowed.is_empty() {
                return Err(DirectoryError::NotEnoughRacks {
                    needed: usize::from(request.geometry.data_blocks)
                        + usize::from(request.geometry.parity_blocks),
                    available: 0,
                });
            }
            let placed = crate::directory::warm::place(
                &nodes,
                &volumes,
                crate::directory::warm::Wanted {
                    stripe_count: layout.stripe_count(),
                    k: usize::from(request.geometry.data_blocks),
                    m: usize::from(request.geometry.parity_blocks),
                    holder_count: 0,
                    datacenters: &allowed,
                    allow_fewer_racks,
                },
            )?;
            let id = next_volume_id(txn)?;
            let generation = 1;
            let companion = LogicalVolume {
                id,
                state: VolumeState::Sealing,
                replicas: Vec::new(),
                stale_replicas: Vec::new(),
                missed_deletes: Vec::new(),
                repair_epoch: 0,
                created_ms: now_ms,
                locked_ms: Some(now_ms),
                size_bytes: request.geometry.volume_len_bytes,
                needle_count: 0,
                last_generation: generation,
                warm: Some(WarmVolume {
                    generation,
                    geometry: request.geometry,
                    stripes: placed.stripes,
                    journal_holders: Vec::new(),
                    stale_holders: Vec::new(),
                    tolerated_rack_losses: placed.tolerated_rack_losses,
                    needle_count: 0,
                    damaged_blocks: Vec::new(),
                    journal_open: false,
                    datacenter: placed.datacenter,
                }),
                owner: None,
                last_write_ms: None,
                geo: GeoLinks {
                    of: request.of.clone(),
                    ..GeoLinks::default()
                },
            };
            put_volume(txn, &companion)?;
            let ids: Vec<u32> = primaries.iter().map(|p| p.id).collect();
            for (i, primary) in primaries.iter_mut().enumerate() {
                if pair {
                    primary.geo.buddy = Some(ids[1 - i]);
                    primary.geo.xor = Some(id);
                } else {
                    primary.geo.copy = Some(id);
                }
                put_volume(txn, primary)?;
            }
            Ok(companion)
        })
    }

    pub(super) fn drop_companion_record(
        &self,
        id: u32,
        owner: Option<&str>,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        self.write(|txn| {
            let companion = get_volume(txn, id)?;
            if !companion.geo.is_companion() {
                return Err(DirectoryError::BadRequest(format!(
                    "volume {id} is not a companion"
                )));
            }
            let job: Option<MigrationJob> = match txn.open_table(MIGRATION_JOBS)?.get(id)? {
                Some(v) => Some(decode("migration_jobs", v.value())?),
                None => None,
            };
            if let Some(job) = job.filter(|j| !j.step.is_final() && j.lease_until_ms > now_ms)
                && owner != Some(job.owner.as_str())
            {
                return Err(DirectoryError::JobClaimed {
                    volume: id,
                    job: "companion".into(),
                    owner: job.owner,
                    until_ms: job.lease_until_ms,
                });
            }
            if companion.state == VolumeState::Warm {
                check_droppable(txn, &companion)?;
            }
            for &of in &companion.geo.of {
                // A primary gone has no link to clear; any other error
                // stops the drop, so no link is left naming nothing.
                let mut primary = match get_volume(txn, of) {
                    Ok(primary) => primary,
                    Err(DirectoryError::UnknownVolume { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let links = &mut primary.geo;
                if links.copy == Some(id) {
                    links.copy = None;
                }
                if links.xor == Some(id) {
                    links.xor = None;
                    links.buddy = None;
                }
                put_volume(txn, &primary)?;
            }
            txn.open_table(VOLUMES)?.remove(id)?;
            txn.open_table(MIGRATION_JOBS)?.remove(id)?;
            txn.open_table(DROPPED_COMPANIONS)?.insert(id, now_ms)?;
            Ok(())
        })
    }

    pub(super) fn dropped_companion_ids(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<u32>, DirectoryError> {
        self.read(|txn| {
            let table = txn.open_table(DROPPED_COMPANIONS)?;
            let mut ids = Vec::new();
            for entry in range_after(&table, after)?.take(limit) {
                ids.push(entry?.0.value());
            }
            Ok(ids)
        })
    }
}

/// A warm companion goes only if it is a copy whose primary's XOR volume
/// is warm: the copy is what keeps the primary's data in two datacenters
/// until then, and an XOR volume in use is never dropped.
fn check_droppable(
    txn: &WriteTransaction,
    companion: &LogicalVolume,
) -> Result<(), DirectoryError> {
    let id = companion.id;
    let [of] = companion.geo.of.as_slice() else {
        return Err(conflict(
            id,
            format!("it is the warm XOR volume of {:?}", companion.geo.of),
        ));
    };
    // Its primary gone, the copy keeps nothing; a primary unreadable
    // keeps it.
    let primary = match get_volume(txn, *of) {
        Ok(primary) => primary,
        Err(DirectoryError::UnknownVolume { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let xor_warm = match primary.geo.xor {
        Some(xor) => get_volume(txn, xor).is_ok_and(|x| x.state == VolumeState::Warm),
        None => false,
    };
    if !xor_warm {
        return Err(conflict(
            id,
            format!("it is the copy of volume {of}, which has no warm XOR volume yet"),
        ));
    }
    Ok(())
}
