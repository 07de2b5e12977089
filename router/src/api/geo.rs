//! The geo layer's jobs, run by the migrator (`DESIGN.md`, "Geo layer").
//!
//! With storage nodes in two datacenters or more, every warm primary gets
//! a full copy of its data in a second datacenter: a companion volume
//! ([`crate::directory::types::GeoLinks`]) with blocks of its own. With
//! three or more, two primaries of similar size whose cells are in
//! datacenters A and B become buddies, and the XOR of their data is
//! written as a companion in a third, C; once it is verified and warm,
//! both buddies' copies go. Each copy then costs 1.4 bytes per byte in
//! the second datacenter, each XOR 1.4 for two volumes: 2.8 per byte while
//! a volume waits for a buddy, 2.1 once it has one.
//!
//! A pass ([`plan`]) creates the companions that are due (the directory
//! places and links each in one transaction, so two migrators never make
//! two of one kind for one primary), drops the copies the XORs replaced,
//! and hands the new companions to the pass as migration jobs: each is
//! claimed, built by [`build`] under its lease, and resumed by the next
//! pass after a crash like any seal. Building one: a storage node of its
//! datacenter encodes it from its primaries' blocks (each range verified
//! on its node, or decoded by a backoff node) and streams its blocks to
//! their nodes; every block is read back and checked, then every live
//! needle of each primary is read through the companion (its copy, or its
//! buddy XOR the new volume) and checked (key, CRC); only then does it
//! turn warm. An attempt that fails removes its files and its record, and
//! a later pass starts over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use f4::api::{DeriveRequest, DeriveSource};
use f4::client::StorageClient;
use f4::node::seal::seal_geometry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::seal::{Retired, SealReport, check_blocks, prune_everywhere, verify};
use super::state::AppState;
use super::warm::{DataPath, decode_sources, up_url};
use crate::directory::types::{CompanionRequest, MigrationStep};
use crate::directory::{LogicalVolume, NodeRecord, NodeRole, VolumeState, now_ms};

/// Buddies' data lengths differ by at most this factor: the XOR volume is
/// as long as the longer one, so the shorter one's share of it is padding
/// that buys nothing.
pub const BUDDY_SIZE_RATIO_MAX: u64 = 2;

/// What a pass did in the geo layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoReport {
    /// Copies created (each built as a job of the pass).
    pub copies_created: Vec<u32>,
    /// XOR volumes created, with their two buddies.
    pub xors_created: Vec<(u32, [u32; 2])>,
    /// Copies dropped: their primaries' XOR volumes are warm.
    pub copies_dropped: Vec<u32>,
    /// Companions left unfinished by an attempt that died, dropped.
    pub abandoned_dropped: Vec<u32>,
    /// Primaries with a copy and no buddy yet.
    pub waiting_for_buddy: usize,
    /// What their copies cost on disk (blocks, parity included).
    pub waiting_bytes: u64,
    /// What could not be done, and why.
    pub problems: Vec<String>,
}

/// The datacenters with a storage node up.
fn datacenters(nodes: &HashMap<String, NodeRecord>) -> BTreeSet<String> {
    nodes
        .values()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up())
        .map(|n| n.datacenter.clone())
        .collect()
}

/// The datacenter of `volume`'s cell.
fn home(volume: &LogicalVolume, nodes: &HashMap<String, NodeRecord>) -> String {
    volume.home_datacenter(|id| nodes.get(id).map(|n| n.datacenter.clone()))
}

/// Primaries with a warm copy and no buddy, and what those copies hold,
/// gathered a page of volumes at a time ([`GeoWaiting::add`]): a copy and
/// its primary may come in different pages.
#[derive(Debug, Default)]
pub(crate) struct GeoWaiting {
    /// The copies of primaries without a buddy.
    wanted: BTreeSet<u32>,
    /// Warm copies (companions of one primary), with their stored bytes.
    warm_copies: HashMap<u32, u64>,
}

impl GeoWaiting {
    pub(crate) fn add(&mut self, volume: &LogicalVolume) {
        if volume.geo.is_companion() {
            if volume.geo.of.len() == 1 && volume.state == VolumeState::Warm {
                let stored = volume.warm.as_ref().map_or(0, |w| w.stored_bytes());
                self.warm_copies.insert(volume.id, stored);
            }
        } else if volume.geo.buddy.is_none()
            && let Some(copy) = volume.geo.copy
        {
            self.wanted.insert(copy);
        }
    }

    /// How many primaries wait, and the bytes their copies hold.
    pub(crate) fn total(&self) -> (usize, u64) {
        self.wanted
            .iter()
            .filter_map(|copy| self.warm_copies.get(copy))
            .fold((0, 0), |(count, bytes), stored| (count + 1, bytes + stored))
    }
}

/// One pass's geo work (module doc) on `volumes`: the companions it
/// created, to be built as jobs of the pass.
pub(crate) async fn plan(state: &AppState, report: &mut GeoReport) -> Result<Vec<u32>, ApiError> {
    let volumes = &state.directory.list_volumes().await?;
    let nodes = state.cache.nodes(true).await?;
    let datacenters = datacenters(&nodes);
    let by_id: HashMap<u32, &LogicalVolume> = volumes.iter().map(|v| (v.id, v)).collect();
    let warm = |id: Option<u32>| {
        id.and_then(|id| by_id.get(&id))
            .is_some_and(|v| v.state == VolumeState::Warm)
    };
    let now = now_ms();
    let mut created = Vec::new();
    // Beside the companions, in id order, a page at a time.
    let mut jobs = state.directory.migration_pages();
    for volume in volumes.iter().filter(|v| v.geo.is_companion()) {
        let copy_replaced = volume.state == VolumeState::Warm
            && volume.geo.of.len() == 1
            && by_id
                .get(&volume.geo.of[0])
                .is_none_or(|primary| warm(primary.geo.xor));
        // Created by a pass that died before its job claimed it (a claimed
        // one is resumed as a job).
        let abandoned = volume.state == VolumeState::Sealing
            && now.saturating_sub(volume.created_ms) > state.config.migration_lease_ms
            && jobs.job_of(volume.id).await?.is_none();
        if copy_replaced || abandoned {
            match drop_companion(state, volume.id, None).await {
                Ok(()) if copy_replaced => report.copies_dropped.push(volume.id),
                Ok(()) => report.abandoned_dropped.push(volume.id),
                Err(e) => report
                    .problems
                    .push(format!("dropping companion {}: {e}", volume.id)),
            }
        }
    }
    let mut waiting = GeoWaiting::default();
    volumes.iter().for_each(|v| waiting.add(v));
    (report.waiting_for_buddy, report.waiting_bytes) = waiting.total();
    if datacenters.len() < 2 {
        return Ok(created);
    }
    // Not one whose companion failed lately (it waits a lease, as a failed
    // seal does), nor one whose own cell is down (its data is read there).
    let primaries: Vec<&LogicalVolume> = volumes
        .iter()
        .filter(|v| v.state == VolumeState::Warm && !v.geo.is_companion() && v.warm.is_some())
        .filter(|v| v.geo.buddy.is_none() && !state.geo_failed.holds(&v.id))
        .filter(|v| datacenters.contains(&home(v, &nodes)))
        .collect();
    let budget = state.config.max_migrations.max(1);
    for primary in primaries.iter().filter(|v| v.geo.copy.is_none()) {
        if created.len() >= budget {
            return Ok(created);
        }
        match create(state, &[primary], &datacenters, &nodes).await {
            Ok(id) => {
                report.copies_created.push(id);
                created.push(id);
            }
            Err(e) => report
                .problems
                .push(format!("a copy of volume {}: {e}", primary.id)),
        }
    }
    if datacenters.len() < 3 {
        return Ok(created);
    }
    // Buddies among those whose copy is warm.
    let single: Vec<(u32, String, u64)> = primaries
        .iter()
        .filter(|v| warm(v.geo.copy))
        .map(|v| (v.id, home(v, &nodes), data_len(v)))
        .collect();
    for (a, b) in pick_buddies(single, &datacenters) {
        if created.len() >= budget {
            break;
        }
        let (Some(a), Some(b)) = (by_id.get(&a), by_id.get(&b)) else {
            continue;
        };
        match create(state, &[a, b], &datacenters, &nodes).await {
            Ok(id) => {
                report.xors_created.push((id, [a.id, b.id]));
                created.push(id);
            }
            Err(e) => report
                .problems
                .push(format!("the XOR of volumes {} and {}: {e}", a.id, b.id)),
        }
    }
    Ok(created)
}

/// Pairs of buddies among `single` (volume, home datacenter, data
/// length): in two datacenters with a third among `datacenters`, lengths
/// within [`BUDDY_SIZE_RATIO_MAX`]. The longest volume of the datacenter
/// with the most waiting goes first, with the closest length elsewhere
/// (the datacenters with the most waiting first on a tie), so that as many
/// as possible find a buddy: one datacenter's volumes can only pair with
/// the others'.
fn pick_buddies(
    single: Vec<(u32, String, u64)>,
    datacenters: &BTreeSet<String>,
) -> Vec<(u32, u32)> {
    let mut groups: BTreeMap<String, Vec<(u64, u32)>> = BTreeMap::new();
    for (id, home, len) in single {
        groups.entry(home).or_default().push((len, id));
    }
    for group in groups.values_mut() {
        group.sort_unstable();
    }
    let mut pairs = Vec::new();
    loop {
        let mut by_size: Vec<(&String, usize)> = groups
            .iter()
            .filter(|(_, g)| !g.is_empty())
            .map(|(dc, g)| (dc, g.len()))
            .collect();
        by_size.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
        let Some(&(first, _)) = by_size.first() else {
            break;
        };
        let first = first.clone();
        let others: Vec<String> = by_size[1..].iter().map(|(dc, _)| (*dc).clone()).collect();
        let Some((len_a, a)) = groups.get_mut(&first).and_then(Vec::pop) else {
            break;
        };
        let fits = |len_b: u64| {
            let (short, long) = (len_a.min(len_b), len_a.max(len_b));
            long <= short.max(1).saturating_mul(BUDDY_SIZE_RATIO_MAX)
        };
        let mut best: Option<(u64, String, usize)> = None;
        for dc in others {
            if !datacenters.iter().any(|d| *d != first && *d != dc) {
                continue;
            }
            for (at, (len_b, _)) in groups[&dc].iter().enumerate() {
                let gap = len_a.abs_diff(*len_b);
                if fits(*len_b) && best.as_ref().is_none_or(|(g, _, _)| gap < *g) {
                    best = Some((gap, dc.clone(), at));
                }
            }
        }
        if let Some((_, dc, at)) = best
            && let Some(group) = groups.get_mut(&dc)
        {
            let (_, b) = group.remove(at);
            pairs.push((a, b));
        }
    }
    pairs
}

fn data_len(volume: &LogicalVolume) -> u64 {
    volume
        .warm
        .as_ref()
        .map_or(0, |w| w.geometry.volume_len_bytes)
}

/// A new companion of `of`, placed in a datacenter holding none of them.
async fn create(
    state: &AppState,
    of: &[&LogicalVolume],
    datacenters: &BTreeSet<String>,
    nodes: &HashMap<String, NodeRecord>,
) -> Result<u32, ApiError> {
    let len = of.iter().map(|v| data_len(v)).max().unwrap_or(0);
    let geometry = seal_geometry(len, state.config.max_block_size_bytes)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let homes: Vec<String> = of.iter().map(|v| home(v, nodes)).collect();
    let allowed: Vec<String> = datacenters
        .iter()
        .filter(|dc| !homes.contains(dc))
        .cloned()
        .collect();
    let rooms = super::migrate::storage_rooms(state).await?;
    let first = of.first().map_or(0, |v| v.id);
    let with_room =
        super::migrate::room_for(state, &rooms, first, len)?.map_err(ApiError::Unavailable)?;
    let datacenters: Vec<String> = allowed
        .into_iter()
        .filter(|dc| with_room.is_empty() || with_room.contains(dc))
        .collect();
    if datacenters.is_empty() {
        return Err(ApiError::Unavailable(
            "no other datacenter has room for it".into(),
        ));
    }
    let companion = state
        .directory
        .create_companion(&CompanionRequest {
            of: of.iter().map(|v| v.id).collect(),
            geometry,
            datacenters,
        })
        .await?;
    tracing::info!(volume = companion.id, of = ?companion.geo.of, "geo companion created");
    Ok(companion.id)
}

/// The volumes of the geo layer whose data XORs to `volume`'s, if they
/// are all warm: a primary's copy, else its buddy and their XOR; a copy's
/// primary; an XOR's two buddies.
pub(crate) fn sources_of(
    volume: &LogicalVolume,
    volumes: &HashMap<u32, &LogicalVolume>,
) -> Option<Vec<u32>> {
    let warm = |ids: Vec<u32>| {
        ids.iter()
            .all(|id| {
                volumes
                    .get(id)
                    .is_some_and(|v| v.state == VolumeState::Warm && v.warm.is_some())
            })
            .then_some(ids)
    };
    if volume.geo.is_companion() {
        return warm(volume.geo.of.clone());
    }
    volume
        .geo
        .copy
        .and_then(|copy| warm(vec![copy]))
        .or_else(|| warm(vec![volume.geo.buddy?, volume.geo.xor?]))
}

/// Each of `ids`' records as a source of `POST /derive`, its blocks' nodes
/// that are up named.
pub(crate) async fn derive_sources(
    state: &AppState,
    ids: &[u32],
    nodes: &HashMap<String, NodeRecord>,
) -> Result<Vec<DeriveSource>, ApiError> {
    let mut volumes = Vec::with_capacity(ids.len());
    for &id in ids {
        volumes.push(state.directory.volume(id).await?);
    }
    to_sources(&volumes, nodes)
}

fn to_sources(
    volumes: &[LogicalVolume],
    nodes: &HashMap<String, NodeRecord>,
) -> Result<Vec<DeriveSource>, ApiError> {
    volumes
        .iter()
        .map(|volume| {
            let warm = volume.warm.as_ref().ok_or_else(|| {
                ApiError::Unavailable(format!("volume {} is not warm", volume.id))
            })?;
            Ok(DeriveSource {
                volume: volume.id,
                generation: warm.generation,
                geometry: warm.geometry,
                stripes: (0..warm.stripes.len() as u64)
                    .map(|stripe| decode_sources(warm, stripe, &[], |id| up_url(nodes, id)))
                    .collect(),
            })
        })
        .collect()
}

/// The base URLs of the backoff nodes that are up.
pub(crate) fn backoff_urls(nodes: &HashMap<String, NodeRecord>) -> Vec<String> {
    nodes
        .values()
        .filter(|n| n.role == NodeRole::Backoff && n.is_up())
        .map(NodeRecord::base_url)
        .collect()
}

/// Removes companion `id`'s record and links (as the holder of its job's
/// claim, `owner`), then its files from every storage node that is up (a
/// node that is down keeps them).
async fn drop_companion(state: &AppState, id: u32, owner: Option<&str>) -> Result<(), ApiError> {
    // The record first: a companion the directory keeps keeps its files.
    state.directory.drop_companion(id, owner).await?;
    prune_everywhere(state, id, None, None).await;
    tracing::info!(volume = id, "geo companion dropped");
    Ok(())
}

/// Builds companion `companion` (module doc) as its migration job, claimed
/// by `owner`, reporting steps on `steps`; stopped where it is, with no
/// cleanup, when the job's claim is `lost`.
pub(crate) async fn build(
    state: &Arc<AppState>,
    owner: &str,
    companion: LogicalVolume,
    steps: watch::Sender<MigrationStep>,
    lost: CancellationToken,
) -> Result<SealReport, ApiError> {
    let vid = companion.id;
    if companion.state == VolumeState::Warm {
        return Ok(SealReport::warm(companion, Retired::default()));
    }
    let outcome = tokio::select! {
        outcome = attempt(state, &companion, &steps) => outcome,
        () = lost.cancelled() => {
            return Err(ApiError::Busy(format!(
                "companion {vid}'s claim was lost to another migrator; this attempt stopped"
            )));
        }
    };
    if let Err(error) = &outcome {
        // Unless it committed after all (an answer lost on the way back).
        let committed = state
            .directory
            .volume(vid)
            .await
            .is_ok_and(|v| v.state == VolumeState::Warm);
        if !committed {
            tracing::warn!(volume = vid, error = %error, "geo companion failed; dropping it");
            for &primary in &companion.geo.of {
                state.geo_failed.note(primary);
            }
            if let Err(e) = drop_companion(state, vid, Some(owner)).await {
                tracing::warn!(volume = vid, error = %e, "dropping the failed companion failed");
            }
        }
    }
    outcome
}

async fn attempt(
    state: &AppState,
    companion: &LogicalVolume,
    steps: &watch::Sender<MigrationStep>,
) -> Result<SealReport, ApiError> {
    let vid = companion.id;
    steps.send_replace(MigrationStep::Encoding);
    let warm = companion
        .warm
        .as_ref()
        .ok_or_else(|| ApiError::Internal(format!("companion {vid} has no warm record")))?;
    let nodes = state.cache.nodes(true).await?;
    let mut primaries = Vec::with_capacity(companion.geo.of.len());
    for &id in &companion.geo.of {
        primaries.push(state.directory.volume(id).await?);
    }
    let sources = to_sources(&primaries, &nodes)?;
    let stripes = warm
        .stripes
        .iter()
        .map(|s| {
            s.iter()
                .map(|id| {
                    up_url(&nodes, id).ok_or_else(|| {
                        ApiError::Unavailable(format!("placed on {id}, which is down"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let backoffs = backoff_urls(&nodes);
    // A node of the companion's own cell encodes it: its blocks are local.
    let mut cell: Vec<&NodeRecord> = nodes
        .values()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up() && n.datacenter == warm.datacenter)
        .collect();
    cell.sort_by(|a, b| a.id.cmp(&b.id));
    let encoder = cell.get(vid as usize % cell.len().max(1)).ok_or_else(|| {
        ApiError::Unavailable(format!("no storage node of {} is up", warm.datacenter))
    })?;
    StorageClient::from_http(&encoder.base_url(), state.warm_http.clone())
        .derive(
            vid,
            warm.generation,
            &DeriveRequest {
                geometry: warm.geometry,
                stripes,
                sources,
                backoffs,
                bytes_per_second: state.config.migration_rate_bytes,
                stripe: None,
                blocks: Vec::new(),
            },
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("encoding on {}: {e}", encoder.id)))?;
    steps.send_replace(MigrationStep::Verifying);
    if let Some((stripe, block, why)) = check_blocks(state, vid, warm, &nodes).await?.first() {
        return Err(ApiError::Unavailable(format!(
            "block {stripe}.{block} failed its check: {why}"
        )));
    }
    let needles = match primaries.as_slice() {
        [primary] => verify(state, primary, &nodes, DataPath::Copy(companion)).await?,
        [a, b] => {
            let through_a = DataPath::Xor {
                buddy: a,
                xor: companion,
            };
            let through_b = DataPath::Xor {
                buddy: b,
                xor: companion,
            };
            verify(state, b, &nodes, through_a).await? + verify(state, a, &nodes, through_b).await?
        }
        _ => {
            return Err(ApiError::Internal(format!(
                "companion {vid} of {:?}",
                companion.geo.of
            )));
        }
    };
    steps.send_replace(MigrationStep::Flipping);
    let committed = state.directory.commit_warm(vid, warm.generation).await?;
    tracing::info!(volume = vid, of = ?companion.geo.of, needles, "geo companion is warm");
    // The buddies' copies are no longer needed.
    if primaries.len() == 2 {
        for copy in primaries.iter().filter_map(|p| p.geo.copy) {
            if let Err(e) = drop_companion(state, copy, None).await {
                tracing::warn!(volume = copy, error = %e, "dropping a replaced copy failed; a later pass will");
            }
        }
    }
    state.cache.store_volume(committed.clone());
    Ok(SealReport {
        volume: committed,
        needles,
        dropped: 0,
        retired_replicas: 0,
        unretired: Vec::new(),
        kept: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::coordinate::tests::{node, record_damage, warm_record};
    use crate::directory::types::GeoLinks;

    /// Volume `id` in `state`, with `geo` links; warm ones on one stripe.
    fn volume(id: u32, state: VolumeState, geo: GeoLinks) -> LogicalVolume {
        let cell = vec![(0..14).map(|n| format!("n{n}")).collect()];
        LogicalVolume {
            state,
            geo,
            warm: (state == VolumeState::Warm).then(|| warm_record(1, cell)),
            ..LogicalVolume::writable(id, Vec::new(), 0)
        }
    }

    #[test]
    fn a_damaged_block_of_a_primary_is_no_source_of_its_companion() {
        let mut primary = volume(1, VolumeState::Warm, GeoLinks::default());
        record_damage(primary.warm.as_mut().expect("warm"), &[(4, true)]);
        let nodes: HashMap<String, NodeRecord> = (0..14)
            .map(|n| {
                (
                    format!("n{n}"),
                    node(&format!("n{n}"), &format!("r{n}"), true, 0),
                )
            })
            .collect();
        let sources = to_sources(std::slice::from_ref(&primary), &nodes).expect("warm");
        let stripe = &sources[0].stripes[0];
        assert_eq!(stripe.iter().flatten().count(), 13);
        assert_eq!(stripe[4], None, "{stripe:?}");
    }

    #[test]
    fn a_primary_waits_for_a_buddy_whichever_page_its_copy_came_in() {
        let primary = |copy: u32, buddy: Option<u32>| GeoLinks {
            copy: Some(copy),
            buddy,
            ..GeoLinks::default()
        };
        let copy_of = |primary: u32| GeoLinks {
            of: vec![primary],
            ..GeoLinks::default()
        };
        let warm = VolumeState::Warm;
        let volumes = [
            // Waits: its copy is warm and it has no buddy.
            volume(1, warm, primary(2, None)),
            volume(2, warm, copy_of(1)),
            // Has a buddy: its copy is about to go.
            volume(3, warm, primary(4, Some(9))),
            volume(4, warm, copy_of(3)),
            // Its copy is still being sealed.
            volume(5, warm, primary(6, None)),
            volume(6, VolumeState::Sealing, copy_of(5)),
        ];
        let stored = volumes[1].warm.as_ref().expect("warm").stored_bytes();
        assert!(stored > 0);
        // The copies in an earlier page than their primaries, then later.
        for order in [[1, 3, 5, 0, 2, 4], [0, 2, 4, 1, 3, 5]] {
            let mut waiting = GeoWaiting::default();
            order.iter().for_each(|&i| waiting.add(&volumes[i]));
            assert_eq!(waiting.total(), (1, stored), "{order:?}");
        }
    }

    fn waiting(spec: &[(&str, usize, u64)]) -> Vec<(u32, String, u64)> {
        let mut id = 0;
        let mut single = Vec::new();
        for (dc, count, len) in spec {
            for _ in 0..*count {
                id += 1;
                single.push((id, (*dc).to_owned(), *len));
            }
        }
        single
    }

    fn three() -> BTreeSet<String> {
        ["dc-1", "dc-2", "dc-3"].map(String::from).into()
    }

    #[test]
    fn as_many_as_possible_pair_across_datacenters() {
        let single = waiting(&[("dc-1", 6, 100), ("dc-2", 5, 100), ("dc-3", 5, 100)]);
        let homes: HashMap<u32, String> =
            single.iter().map(|(id, dc, _)| (*id, dc.clone())).collect();
        let pairs = pick_buddies(single, &three());
        assert_eq!(pairs.len(), 8, "{pairs:?}");
        assert!(pairs.iter().all(|(a, b)| homes[a] != homes[b]));
        let mut seen: Vec<u32> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 16, "no volume in two pairs");
    }

    #[test]
    fn buddies_need_a_third_datacenter_and_similar_sizes() {
        let two: BTreeSet<String> = ["dc-1", "dc-2"].map(String::from).into();
        assert!(pick_buddies(waiting(&[("dc-1", 1, 100), ("dc-2", 1, 100)]), &two).is_empty());
        assert!(pick_buddies(waiting(&[("dc-1", 2, 100)]), &three()).is_empty());
        assert!(
            pick_buddies(waiting(&[("dc-1", 1, 100), ("dc-2", 1, 201)]), &three()).is_empty(),
            "more than twice as long"
        );
        let pairs = pick_buddies(
            waiting(&[("dc-1", 1, 100), ("dc-2", 1, 150), ("dc-3", 1, 110)]),
            &three(),
        );
        assert_eq!(pairs, [(1, 3)], "the closest length to the first");
    }
}
