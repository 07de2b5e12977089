//! `POST /admin/volumes/{id}/seal`: moves one locked volume into the warm
//! tier (the primitive the migrator drives, [`super::migrate`]; this route
//! also claims the volume's migration job first), in the order write,
//! verify, flip, wait, delete:
//!
//! 1. the directory starts an attempt under a new encode generation (the
//!    volume turns `sealing`: reads and deletes stay on the hot replicas);
//!    every replica is locked at its store;
//! 2. an f4 storage node plans the seal from a fresh replica's index, the
//!    directory places the blocks (14 racks) and journal holders, and the
//!    node streams the needles, each checked (a bad one taken from another
//!    replica), through the encoder to the blocks' nodes, then the index to
//!    the holders ([`f4::node`]'s `encode`);
//! 3. every block is read back and checked on its node, then every live
//!    needle through the warm read path;
//! 4. the directory opens the attempt's journal and the hot replicas'
//!    deletes are carried into it ([`carry_deletes`]; a delete from then on
//!    goes to both tiers itself);
//! 5. the directory flips the volume to `warm`;
//! 6. every router registered with the directory reads the volume's entry
//!    afresh (if one cannot be asked: the routers' cache lifetime passes),
//!    then the hot replicas are retired and every storage node drops the
//!    files of the volume's other generations.
//!
//! A failure before the flip aborts the attempt: the volume is `locked`
//! again and its hot replicas serve as before. The attempt runs on a task
//! of its own, so a client that hangs up does not stop it halfway; a process
//! that dies halfway leaves the volume `sealing` (hot reads and deletes go
//! on), and its job's claim runs out: the next migration pass starts a new
//! attempt (or, past the flip, only retires the hot replicas).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use f4::api::{DistributeRequest, SealRequest};
use f4::client::StorageClient;
use f4::format::IndexEntry;
use futures::future::join_all;
use haystack::api::PageCursor;
use haystack::client::ClientError;
use haystack::failpoint::pause_task_at;

use super::error::ApiError;
use super::state::AppState;
use super::warm::{DataPath, check_needle, read_via, up_url};
use crate::directory::types::{MigrationStep, PlaceRequest};
use crate::directory::{LogicalVolume, NodeRecord, NodeRole, VolumeState, WarmVolume};

/// Blocks read back and checked at once while verifying.
const BLOCK_CHECKS_AT_ONCE: usize = 4;
/// Runs of needles read back at once while verifying.
const VERIFY_READS_AT_ONCE: usize = 4;
/// Most bytes of needles read back in one run (a larger needle is read
/// alone).
const VERIFY_RUN_BYTES: u32 = 1 << 20;

/// What a seal did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealReport {
    /// The volume, now warm.
    pub volume: LogicalVolume,
    /// Live needles sealed and read back.
    pub needles: u64,
    /// Needles dropped as deleted.
    pub dropped: u64,
    /// Hot replicas retired.
    pub retired_replicas: usize,
    /// Hot replicas not retired yet (their node down, or a store error),
    /// each with why: the job ends `failed` and is tried again, the volume
    /// warm meanwhile.
    #[serde(default)]
    pub unretired: Vec<String>,
    /// Hot replicas left for good, each with why: one the seal never
    /// locked (its store was down then), which may hold needles the warm
    /// volume lacks, or one on a node lost (silent for
    /// `rebuild_after_ms`).
    #[serde(default)]
    pub kept: Vec<String>,
}

impl SealReport {
    /// The report of a volume warm already, with what retiring its hot
    /// replicas did now.
    pub(crate) fn warm(volume: LogicalVolume, retired: Retired) -> SealReport {
        SealReport {
            needles: volume.warm.as_ref().map_or(0, |w| w.needle_count),
            volume,
            dropped: 0,
            retired_replicas: retired.count,
            unretired: retired.left,
            kept: retired.kept,
        }
    }
}

/// What retiring a warm volume's hot replicas did.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    /// Replicas retired (or found gone already).
    pub count: usize,
    /// Replicas to try again, each with why.
    pub left: Vec<String>,
    /// Replicas never to retire, each with why ([`SealReport::kept`]).
    pub kept: Vec<String>,
}

/// `POST /admin/volumes/{id}/seal`.
pub(crate) async fn seal_volume(
    State(state): State<Arc<AppState>>,
    Path(vid): Path<String>,
) -> Result<Json<SealReport>, ApiError> {
    let vid = volume_id(&vid)?;
    let volume = known_volume(&state, vid).await?;
    check_sealable(&volume)?;
    if volume.state == VolumeState::Warm {
        // Nothing to do, and no job to record.
        return Ok(Json(SealReport::warm(volume, Retired::default())));
    }
    match super::migrate::claim_and_seal(&state, "router", vid).await {
        Some(result) => result.map(Json),
        None => Err(ApiError::Busy(format!(
            "volume {vid} is being migrated by a migrator; retry later"
        ))),
    }
}

/// A volume id from a route's path; `400` if it is not a `u32`.
pub(crate) fn volume_id(text: &str) -> Result<u32, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("volume id {text:?} is not a u32")))
}

/// Volume `vid` from the directory; an unknown one is a `400`.
pub(crate) async fn known_volume(state: &AppState, vid: u32) -> Result<LogicalVolume, ApiError> {
    state.directory.volume(vid).await.map_err(|e| {
        if e.is_not_found() {
            ApiError::BadRequest(format!("unknown volume {vid}"))
        } else {
            ApiError::Directory(e)
        }
    })
}

/// A volume a seal may start on: `locked`, `sealing` (a new attempt) or
/// `warm` (nothing to do).
fn check_sealable(volume: &LogicalVolume) -> Result<(), ApiError> {
    if matches!(
        volume.state,
        VolumeState::Locked | VolumeState::Sealing | VolumeState::Warm
    ) {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "volume {} is {}; only a locked volume is sealed",
        volume.id, volume.state
    )))
}

/// Seals `volume` as the directory has it (the steps of the module doc),
/// reporting each step it reaches on `steps`. A warm volume answers at
/// once; only a locked (or sealing) one is sealed.
pub(crate) async fn seal(
    state: Arc<AppState>,
    volume: LogicalVolume,
    steps: watch::Sender<MigrationStep>,
    lost: CancellationToken,
) -> Result<SealReport, ApiError> {
    if volume.state == VolumeState::Warm {
        return Ok(SealReport::warm(volume, Retired::default()));
    }
    check_sealable(&volume)?;
    let vid = volume.id;
    let begun = state.directory.begin_seal(vid).await?;
    let generation = begun.last_generation;
    tracing::info!(volume = vid, generation, "sealing");
    // On a task of its own: a client that hangs up does not cut the seal
    // short between its steps (the attempt finishes, or is aborted).
    // A lost claim (`lost`) stops it where it is, as a kill would, with no
    // abort and no cleanup: the job and the volume are another migrator's
    // now.
    let task = tokio::spawn(async move {
        let outcome = tokio::select! {
            outcome = attempt(&state, vid, generation, &steps) => outcome,
            () = lost.cancelled() => {
                return Err(ApiError::Busy(format!(
                    "volume {vid}'s migration claim was lost to another migrator; attempt \
                     {generation} stopped"
                )));
            }
        };
        match outcome {
            Ok(report) => Ok(report),
            Err((error, sealer)) => {
                tracing::warn!(volume = vid, generation, error = %error, "seal failed; aborting");
                if let Some(sealer) = sealer {
                    let _ = sealer.discard(vid, generation).await;
                }
                match state.directory.abort_seal(vid, generation).await {
                    // Files of this attempt and older ones only: a later
                    // attempt's stay whatever happens meanwhile.
                    Ok(_) => prune_everywhere(&state, vid, None, Some(generation)).await,
                    Err(e) => tracing::warn!(volume = vid, error = %e, "aborting the seal failed"),
                }
                Err(error)
            }
        }
    });
    match task.await {
        Ok(result) => result,
        Err(e) => Err(ApiError::Internal(format!("seal task: {e}"))),
    }
}

type Failed = (ApiError, Option<StorageClient>);

async fn attempt(
    state: &AppState,
    vid: u32,
    generation: u64,
    steps: &watch::Sender<MigrationStep>,
) -> Result<SealReport, Failed> {
    let plain = |e: ApiError| (e, None);
    steps.send_replace(MigrationStep::Encoding);
    pause_task_at("migrate-encoding").await;
    let volume = state
        .directory
        .volume(vid)
        .await
        .map_err(|e| plain(e.into()))?;
    let nodes = state.cache.nodes(true).await.map_err(plain)?;
    // Every replica is locked at its store first: the copy needs a locked
    // replica, only locked replicas are retired later, and locked replicas
    // take no appends, so their indexes can be compared. (The directory
    // stopped their direct reads when the seal began.) A fresh replica that
    // is down or cannot be locked stops the attempt: it could hold needles
    // the others lack, which retiring it once it is back would lose.
    let fresh: Vec<&str> = volume.fresh_replicas().collect();
    let mut candidates = Vec::new();
    for replica in &volume.replicas {
        let Some(node) = nodes.get(replica).filter(|n| n.is_up()) else {
            if fresh.contains(&replica.as_str()) {
                return Err(plain(ApiError::Unavailable(format!(
                    "volume {vid}'s fresh replica on {replica} is down; the volume stays hot \
                     until it is back"
                ))));
            }
            continue;
        };
        let locked = match state.store_for_writes(node) {
            Ok(store) => store
                .lock_volume(vid)
                .await
                .map(|_| store)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let fresh = fresh.contains(&replica.as_str());
        match locked {
            Ok(store) if fresh => candidates.push((node, store)),
            Ok(_) => {}
            Err(e) if fresh => {
                return Err(plain(ApiError::Unavailable(format!(
                    "locking volume {vid} on {}: {e}",
                    node.id
                ))));
            }
            Err(e) => tracing::warn!(volume = vid, replica = %node.id, error = %e,
                "locking a stale replica failed; it will be kept"),
        }
    }
    // Deletes the source missed are carried over below with the others.
    let source = super::source::complete_source(vid, &candidates)
        .await
        .map_err(plain)?;
    // Seals of different volumes run on different nodes (one at a time each).
    let mut cell: Vec<&NodeRecord> = nodes
        .values()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up())
        .collect();
    cell.sort_by(|a, b| a.id.cmp(&b.id));
    let sealer_node = *cell
        .get(vid as usize % cell.len().max(1))
        .ok_or_else(|| plain(ApiError::Unavailable("no f4 storage node is up".into())))?;
    let sealer = StorageClient::from_http(&sealer_node.base_url(), state.warm_http.clone());
    let failed = |e: ApiError| (e, Some(sealer.clone()));
    let prepared = sealer
        .seal(&SealRequest {
            volume: vid,
            generation,
            source: source.base_url(),
            fallbacks: volume
                .replicas
                .iter()
                .filter(|r| **r != source.id && !volume.is_stale(r))
                .filter_map(|r| up_url(&nodes, r))
                .collect(),
            max_block_size_bytes: state.config.max_block_size_bytes,
        })
        .await
        .map_err(|e| {
            failed(ApiError::Unavailable(format!(
                "sealing on {}: {e}",
                sealer_node.id
            )))
        })?;
    // Only where the nodes have room for it.
    let rooms = super::migrate::storage_rooms(state).await.map_err(failed)?;
    let datacenters =
        super::migrate::room_for(state, &rooms, vid, prepared.geometry.volume_len_bytes)
            .map_err(failed)?
            .map_err(|why| failed(ApiError::Unavailable(why)))?;
    let placed = state
        .directory
        .place_warm(
            vid,
            &PlaceRequest {
                generation,
                geometry: prepared.geometry,
                needle_count: prepared.needles,
                datacenters,
            },
        )
        .await
        .map_err(|e| failed(e.into()))?;
    let warm = placed
        .warm
        .clone()
        .ok_or_else(|| failed(ApiError::Internal("placement without a record".into())))?;
    let url = |id: &String| -> Result<String, Failed> {
        up_url(&nodes, id).ok_or_else(|| {
            failed(ApiError::Unavailable(format!(
                "placed on {id}, which is down"
            )))
        })
    };
    let distribute = DistributeRequest {
        stripes: warm
            .stripes
            .iter()
            .map(|s| s.iter().map(url).collect::<Result<_, _>>())
            .collect::<Result<_, _>>()?,
        holders: warm
            .journal_holders
            .iter()
            .map(url)
            .collect::<Result<_, _>>()?,
        bytes_per_second: state.config.migration_rate_bytes,
    };
    sealer
        .distribute(vid, generation, &distribute)
        .await
        .map_err(|e| failed(ApiError::Unavailable(format!("distributing: {e}"))))?;
    steps.send_replace(MigrationStep::Verifying);
    pause_task_at("migrate-verifying").await;
    // A block that fails its check (a bad write) is written again alone,
    // rebuilt in place from its stripe, and checked again.
    let failed = check_blocks(state, vid, &warm, &nodes)
        .await
        .map_err(|e| (e, None))?;
    if !failed.is_empty() {
        tracing::warn!(volume = vid, generation, blocks = ?failed,
            "blocks failed their check; rebuilding them alone");
        let places: Vec<(u64, u32)> = failed.iter().map(|(s, b, _)| (*s, *b)).collect();
        let listed: Vec<NodeRecord> = nodes.values().cloned().collect();
        super::coordinate::rebuild_in_place(state, vid, &warm, &listed, &places)
            .await
            .map_err(|why| {
                let (stripe, block, error) = &failed[0];
                (
                    ApiError::Unavailable(format!(
                        "block {stripe}.{block} failed its check ({error}) and could not be \
                         rebuilt: {why}"
                    )),
                    None,
                )
            })?;
        let still = check_blocks(state, vid, &warm, &nodes)
            .await
            .map_err(|e| (e, None))?;
        if let Some((stripe, block, error)) = still.first() {
            return Err((
                ApiError::Unavailable(format!(
                    "block {stripe}.{block} failed its check again after its rebuild: {error}"
                )),
                None,
            ));
        }
    }
    let verified = verify(state, &placed, &nodes, DataPath::Own)
        .await
        .map_err(|e| (e, None))?;
    if verified != prepared.needles {
        return Err((
            ApiError::Unavailable(format!(
                "{verified} needles read back of the {} sealed",
                prepared.needles
            )),
            None,
        ));
    }
    let carried = carry_deletes(state, vid, generation)
        .await
        .map_err(|e| (e, None))?;
    tracing::info!(
        volume = vid,
        generation,
        carried,
        "hot deletes carried into the journal"
    );
    steps.send_replace(MigrationStep::Flipping);
    pause_task_at("migrate-flipping").await;
    let committed = state
        .directory
        .commit_warm(vid, generation)
        .await
        .map_err(|e| (e.into(), None))?;
    tracing::info!(
        volume = vid,
        generation,
        needles = verified,
        "volume is warm"
    );
    // The hot replicas go once no router reads them any more.
    let retired = drain_and_retire(state, &committed, steps).await;
    state.cache.store_volume(committed.clone());
    Ok(SealReport {
        volume: committed,
        needles: verified,
        dropped: prepared.dropped,
        retired_replicas: retired.count,
        unretired: retired.left,
        kept: retired.kept,
    })
}

/// Opens the journal of attempt `generation` to deletes, then carries
/// every delete the hot replicas took into it: from here on a delete goes
/// to both tiers itself ([`super::read::delete_blob`]), and one that did not
/// landed on the replicas before the journal opened. Read from every up
/// replica that missed no delete, at least one of them fresh (a fresh one
/// took every acknowledged delete). The keys sent (a holder skips those
/// its index lacks: deleted before the seal).
async fn carry_deletes(state: &AppState, vid: u32, generation: u64) -> Result<u64, ApiError> {
    let volume = state.directory.open_journal(vid, generation).await?;
    let warm = volume
        .warm
        .as_ref()
        .ok_or_else(|| ApiError::Internal(format!("volume {vid} has no warm record")))?;
    let nodes = state.cache.nodes(true).await?;
    let page_len = f4::api::PAGE_MAX.min(haystack::api::PAGE_ENTRIES_MAX);
    let (mut carried, mut fresh_read) = (0, false);
    for replica in &volume.replicas {
        if volume.missed_delete(replica) {
            continue;
        }
        let Some(node) = nodes.get(replica).filter(|n| n.is_up()) else {
            continue;
        };
        let store = match state.store_for_writes(node) {
            Ok(store) => store,
            Err(e) => {
                tracing::warn!(volume = vid, replica = %replica, error = %e, "no client for a replica");
                continue;
            }
        };
        let mut cursor = PageCursor::default();
        let read = loop {
            let Some(after) = cursor.next_page() else {
                break Ok(());
            };
            let page = match store.deleted_page(vid, after, page_len).await {
                Ok(page) => page,
                Err(e) => break Err(e.to_string()),
            };
            if !page.keys.is_empty() {
                super::warm::tombstone(state, vid, warm, &page.keys).await?;
                carried += page.keys.len() as u64;
            }
            if !cursor.advance(page.next_after) {
                break Err("its deleted keys do not page forward".to_owned());
            }
        };
        match read {
            Ok(()) => fresh_read |= !volume.is_stale(replica),
            Err(e) => tracing::warn!(volume = vid, replica = %replica, error = %e,
                "reading a replica's deletes failed"),
        }
    }
    if !fresh_read {
        return Err(ApiError::Unavailable(format!(
            "no fresh replica of volume {vid} could list its deletes"
        )));
    }
    Ok(carried)
}

/// After a flip: has every router read the volume's entry afresh (or, if
/// one cannot be asked, waits for routers' cached hot entries to expire),
/// then retires the hot replicas of warm `volume` (idempotent: a store
/// without the replica answers that it is gone). A store retires only a
/// locked replica: one that missed the seal's lock was never compared
/// with the source, and is kept.
pub(crate) async fn drain_and_retire(
    state: &AppState,
    volume: &LogicalVolume,
    steps: &watch::Sender<MigrationStep>,
) -> Retired {
    let vid = volume.id;
    steps.send_replace(MigrationStep::Draining);
    pause_task_at("migrate-draining").await;
    every_router_reads_afresh(state, vid, Some(VolumeState::Warm)).await;
    steps.send_replace(MigrationStep::Deleting);
    pause_task_at("migrate-deleting").await;
    let nodes = match state.cache.nodes(true).await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::warn!(volume = vid, error = %e, "no node list; replicas not retired");
            let why = format!("no node list: {e}");
            return Retired {
                left: volume
                    .replicas
                    .iter()
                    .map(|r| format!("{r}: {why}"))
                    .collect(),
                ..Retired::default()
            };
        }
    };
    // All at once: each store removes a whole volume's files.
    let now = crate::directory::now_ms();
    let retires = volume.replicas.iter().map(|replica| {
        let record = nodes.get(replica);
        let node = record.filter(|n| n.is_up());
        // Lost (silent for `rebuild_after_ms`, or forgotten): kept, not
        // tried again for good.
        let lost = record.is_none_or(|n| {
            now.saturating_sub(n.last_heartbeat_ms) >= state.config.rebuild_after_ms
        });
        async move {
            let node = node.ok_or_else(|| {
                let why = if lost {
                    "its node is lost"
                } else {
                    "its node is down"
                };
                (lost, why.to_owned())
            })?;
            let store = state
                .store_for_writes(node)
                .map_err(|e| (false, e.to_string()))?;
            store.retire_volume(vid).await.map_err(|e| match e {
                // Refused: not locked.
                ClientError::BadRequest(why) => (true, format!("never locked by the seal ({why})")),
                e => (false, e.to_string()),
            })
        }
    });
    let mut retired = Retired::default();
    for (replica, outcome) in volume.replicas.iter().zip(join_all(retires).await) {
        match outcome {
            Ok(()) => retired.count += 1,
            Err((true, why)) => {
                tracing::error!(volume = vid, replica = %replica, error = %why,
                    "hot replica kept: never locked by the seal (it may hold needles the warm \
                     volume lacks), or its node lost");
                retired.kept.push(format!("{replica}: {why}"));
            }
            Err((false, why)) => {
                tracing::warn!(volume = vid, replica = %replica, error = %why,
                    "hot replica not retired; the job is tried again");
                retired.left.push(format!("{replica}: {why}"));
            }
        }
    }
    prune_everywhere(state, vid, volume.warm.as_ref().map(|w| w.generation), None).await;
    retired
}

/// Returns once no router reads volume `vid` from an entry older than
/// now: every router registered with the directory read it afresh
/// ([`routers_refreshed`]), or else the routers' cache lifetime passed.
/// After a flip (`expect` warm), so that no router reads the hot replicas
/// any more; after a delete that a replica or journal holder missed, so
/// that no router reads it from one it still holds fresh.
pub(crate) async fn every_router_reads_afresh(
    state: &AppState,
    vid: u32,
    expect: Option<VolumeState>,
) {
    if !routers_refreshed(state, vid, expect).await {
        tokio::time::sleep(Duration::from_millis(state.config.directory_cache_ttl_ms)).await;
    }
}

/// Has every router registered with the directory read volume `vid`'s
/// entry afresh (`POST /admin/volumes/{vid}/refresh`), and found it in
/// state `expect` if one is given; `false` if one could not be asked or
/// none is registered, since a router that did not take the new entry may
/// read by the old one for its cache lifetime.
async fn routers_refreshed(state: &AppState, vid: u32, expect: Option<VolumeState>) -> bool {
    let nodes = match state.cache.nodes(true).await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::warn!(volume = vid, error = %e, "no node list; waiting out the routers' cache");
            return false;
        }
    };
    let routers: Vec<&NodeRecord> = nodes
        .values()
        .filter(|n| n.role == NodeRole::Router)
        .collect();
    if routers.is_empty() {
        tracing::info!(
            volume = vid,
            "no router registered; waiting out the routers' cache"
        );
        return false;
    }
    let deadline = Duration::from_millis(state.config.replica_timeout_ms);
    let asks = routers.iter().map(|node| async move {
        let url = format!("{}/admin/volumes/{vid}/refresh", node.base_url());
        let answer = state.warm_http.post(&url).timeout(deadline).send().await;
        let answer = answer.map_err(|e| e.to_string())?;
        if answer.status() != StatusCode::OK {
            return Err(format!("answered {}", answer.status()));
        }
        // Only the router registered there counts (not another one that a
        // wrong advertised address leads to).
        let refreshed: Refreshed = answer.json().await.map_err(|e| e.to_string())?;
        if refreshed.router != node.id {
            return Err(format!("{} answered there", refreshed.router));
        }
        if expect.is_some_and(|expect| refreshed.state != expect) {
            return Err(format!("it still reads the volume {:?}", refreshed.state));
        }
        Ok(())
    });
    let mut refreshed = true;
    for (node, result) in routers.iter().zip(futures::future::join_all(asks).await) {
        if let Err(why) = result {
            tracing::warn!(volume = vid, router = %node.id, why = %why,
                "a router did not refresh its entry; waiting out the routers' cache");
            refreshed = false;
        }
    }
    refreshed
}

/// The answer of `POST /admin/volumes/{id}/refresh`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Refreshed {
    /// The router's id.
    pub router: String,
    /// The volume's state as now cached.
    pub state: VolumeState,
}

/// `POST /admin/volumes/{id}/refresh`: this router drops its cached entry
/// of the volume and reads it afresh from the directory. A migration asks
/// every router for it once the volume is warm ([`drain_and_retire`]), so
/// that none starts a read of the hot replicas it retires.
pub(crate) async fn refresh_volume(
    State(state): State<Arc<AppState>>,
    Path(vid): Path<String>,
) -> Result<Json<Refreshed>, ApiError> {
    let vid = volume_id(&vid)?;
    let volume = state.cache.volume(vid, true).await?;
    Ok(Json(Refreshed {
        router: state.config.id.clone(),
        state: volume.state,
    }))
}

/// Has every storage node that is up remove its files of volume `vid`'s
/// generations but `keep`: what attempts that never committed left (best
/// effort: a node that is down keeps them).
pub(crate) async fn prune_everywhere(
    state: &AppState,
    vid: u32,
    keep: Option<u64>,
    up_to: Option<u64>,
) {
    let nodes = match state.cache.nodes(true).await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::warn!(volume = vid, error = %e, "no node list; nothing pruned");
            return;
        }
    };
    let prunes = nodes
        .values()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up())
        .map(|node| async move {
            let client = StorageClient::from_http(&node.base_url(), state.warm_http.clone());
            if let Err(e) = client.prune(vid, keep, up_to).await {
                tracing::warn!(volume = vid, node = %node.id, error = %e, "pruning failed");
            }
        });
    futures::future::join_all(prunes).await;
}

/// Has every block's node read it back from disk and check it against its
/// chunk CRCs (a few nodes at a time); the blocks found damaged, as
/// (stripe, block, why). A node that cannot answer fails it.
pub(crate) async fn check_blocks(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    nodes: &std::collections::HashMap<String, NodeRecord>,
) -> Result<Vec<(u64, u32, String)>, ApiError> {
    let mut checks = Vec::new();
    for (stripe, placed) in warm.stripes.iter().enumerate() {
        for (block, node) in placed.iter().enumerate() {
            let node = nodes
                .get(node)
                .ok_or_else(|| ApiError::Unavailable(format!("unknown node {node}")))?;
            let id = f4::api::BlockId {
                volume: vid,
                generation: warm.generation,
                stripe: stripe as u64,
                block: block as u32,
            };
            let client = StorageClient::from_http(&node.base_url(), state.warm_http.clone());
            let geometry = warm.geometry;
            checks.push(async move {
                match client.check_block(id, geometry).await {
                    Ok(()) => Ok(None),
                    // The block itself is bad: it can be written again.
                    Err(e) if e.is_block_damage() => {
                        Ok(Some((id.stripe, id.block, format!("on {}: {e}", node.id))))
                    }
                    // Its node could not say (down, overloaded): the
                    // attempt fails, as any unreachable node fails it.
                    Err(e) => Err(ApiError::Unavailable(format!(
                        "block {}.{} on {} could not be checked: {e}",
                        id.stripe, id.block, node.id
                    ))),
                }
            });
        }
    }
    let checked: Vec<Option<(u64, u32, String)>> = futures::stream::iter(checks)
        .buffer_unordered(BLOCK_CHECKS_AT_ONCE)
        .try_collect()
        .await?;
    let mut failed: Vec<(u64, u32, String)> = checked.into_iter().flatten().collect();
    failed.sort_by_key(|(stripe, block, _)| (*stripe, *block));
    Ok(failed)
}

/// Reads every live needle of warm `volume` back through the warm read
/// path (index on a holder, block ranges checked chunk by chunk on their
/// nodes, needle checks), its data read by `path` (its own blocks, or a
/// geo companion's), runs of needles adjacent in the data file at once;
/// the number read. A range that could only be decoded fails it.
pub(crate) async fn verify(
    state: &AppState,
    volume: &LogicalVolume,
    nodes: &std::collections::HashMap<String, NodeRecord>,
    path: DataPath<'_>,
) -> Result<u64, ApiError> {
    let vid = volume.id;
    let warm = volume
        .warm
        .as_ref()
        .ok_or_else(|| ApiError::Internal(format!("volume {vid} has no warm record")))?;
    let holder = warm
        .fresh_holders()
        .find_map(|h| nodes.get(h).filter(|n| n.is_up()))
        .ok_or_else(|| ApiError::Unavailable("no fresh journal holder is up".into()))?;
    let client = StorageClient::from_http(&holder.base_url(), state.warm_http.clone());
    let mut cursor = PageCursor::default();
    let mut count = 0;
    while let Some(after) = cursor.next_page() {
        let page = client
            .live_entries(vid, warm.generation, after)
            .await
            .map_err(|e| ApiError::Unavailable(format!("listing the index: {e}")))?;
        let entries = &page.entries;
        count += futures::stream::iter(adjacent_runs(entries))
            .map(|run| async move {
                let run = &entries[run];
                let first = run[0];
                let span = IndexEntry {
                    key: first.key,
                    offset: first.offset,
                    size_bytes: run.iter().map(|e| e.size_bytes).sum(),
                };
                let (bytes, degraded) = read_via(state, volume, nodes, path, span).await?;
                if degraded {
                    return Err(ApiError::Unavailable(format!(
                        "needles {:x}.. could only be decoded, not read",
                        first.key
                    )));
                }
                for entry in run {
                    let at = (entry.offset - first.offset) as usize;
                    let needle = bytes.slice(at..at + entry.size_bytes as usize);
                    check_needle(vid, needle, *entry, Some(entry.key))?;
                }
                Ok(run.len() as u64)
            })
            .buffer_unordered(VERIFY_READS_AT_ONCE)
            .try_fold(0, |count, read| async move { Ok(count + read) })
            .await?;
        if !cursor.advance(page.next_after) {
            return Err(ApiError::Unavailable(format!(
                "the index listing of volume {vid} on {} does not page forward",
                holder.id
            )));
        }
    }
    Ok(count)
}

/// `entries` (in data file order) cut into runs of needles adjacent in the
/// data file, each at most [`VERIFY_RUN_BYTES`] or one needle: their
/// ranges in `entries`.
fn adjacent_runs(entries: &[IndexEntry]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0u32);
    for (i, entry) in entries.iter().enumerate() {
        let adjacent = i > start && {
            let last = entries[i - 1];
            last.offset + u64::from(last.size_bytes) == entry.offset
        };
        if i > start && (!adjacent || bytes.saturating_add(entry.size_bytes) > VERIFY_RUN_BYTES) {
            runs.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(entry.size_bytes);
    }
    if start < entries.len() {
        runs.push(start..entries.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u64, offset: u64, size_bytes: u32) -> IndexEntry {
        IndexEntry {
            key,
            offset,
            size_bytes,
        }
    }

    #[test]
    fn runs_break_at_gaps_and_at_the_size_limit_and_keep_a_large_needle_alone() {
        let half = VERIFY_RUN_BYTES / 2;
        let entries = [
            entry(1, 0, 100),
            entry(2, 100, 50),
            // A gap: a new run.
            entry(3, 200, half),
            entry(4, 200 + u64::from(half), half),
            // Over the limit with the two before it: a new run.
            entry(5, 200 + 2 * u64::from(half), 1),
            // Larger than a run on its own.
            entry(6, 201 + 2 * u64::from(half), VERIFY_RUN_BYTES * 3),
            entry(
                7,
                201 + 2 * u64::from(half) + 3 * u64::from(VERIFY_RUN_BYTES),
                1,
            ),
        ];
        let keys: Vec<Vec<u64>> = adjacent_runs(&entries)
            .iter()
            .map(|run| entries[run.clone()].iter().map(|e| e.key).collect())
            .collect();
        assert_eq!(
            keys,
            vec![vec![1, 2], vec![3, 4], vec![5], vec![6], vec![7]]
        );
        assert!(adjacent_runs(&[]).is_empty());
    }
}
