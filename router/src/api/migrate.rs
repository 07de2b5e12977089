//! The migrator: locked volumes move from the hot tier to the warm tier by
//! age, each as a job persisted in the directory.
//!
//! A pass lists the volumes and the jobs; a `locked` volume locked longer
//! than [`RouterConfig::warm_after_ms`] ago (its youngest BLOB is at least
//! that old), or one left `sealing` by a seal that died, is a candidate,
//! oldest first, unless its job is claimed by a live lease elsewhere or
//! failed less than a lease ago; and a `warm` one whose job died or failed
//! after the flip, before its hot replicas all went (those left are
//! retired; a replica not retired fails the job). Up to
//! [`RouterConfig::max_migrations`] run at once. Each claims the volume's job
//! in the directory under a lease ([`RouterConfig::migration_lease_ms`]),
//! runs the seal (the order
//! write, verify, flip, wait, delete of [`super::seal`]), reports every
//! step it reaches and renews the lease meanwhile, and ends the job `warm`
//! or `failed` with the error. A migrator killed at any point leaves a job
//! whose lease runs out; the next pass (of any migrator) takes it over at
//! the step it reached: before the flip with a new seal attempt, under a
//! new encode generation (two attempts never mix and a stale one can never
//! commit), after it by only retiring the hot replicas.
//!
//! The `migrator` role runs passes every [`RouterConfig::migrate_interval_ms`];
//! a router runs one on `POST /admin/migrate` (`hayloft migrate`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use f4::BlockHeader;
use f4::client::StorageClient;
use f4::node::seal::{DATA_BLOCKS, PARITY_BLOCKS, seal_geometry};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::RouterConfig;
use super::error::ApiError;
use super::seal::{SealReport, drain_and_retire, known_volume, seal, volume_id};
use super::state::AppState;
use crate::directory::types::{MigrationPage, MigrationStep, StepRequest, VolumePageQuery};
use crate::directory::{NodeRole, VolumeState, now_ms};

/// What one job of a pass did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The volume.
    pub volume: u32,
    /// `warm`, or `failed`.
    pub step: MigrationStep,
    /// Why it failed.
    pub error: Option<String>,
    /// Live needles sealed.
    pub needles: u64,
    /// Hot replicas retired.
    pub retired_replicas: usize,
    /// Hot replicas kept for good, each with why ([`SealReport::kept`]).
    #[serde(default)]
    pub kept_replicas: Vec<String>,
    /// Wall time of the job.
    pub seconds: f64,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PassReport {
    /// The jobs it ran, in the order they ended.
    pub jobs: Vec<JobOutcome>,
    /// Volumes left for another migrator whose claim is live.
    pub claimed_elsewhere: Vec<u32>,
    /// Locked volumes not old enough yet.
    pub too_young: usize,
    /// Why no new seal started: the cell lacks the racks to place one.
    #[serde(default)]
    pub held_back: Option<String>,
    /// Writable volumes idle too long with no router owning them, locked
    /// by this pass (they migrate once old enough).
    #[serde(default)]
    pub locked_idle: usize,
    /// What it did in the geo layer (copies and XOR volumes: their jobs
    /// are among `jobs`).
    #[serde(default)]
    pub geo: super::geo::GeoReport,
}

/// The volumes a pass takes on, oldest first: all candidates, or only
/// `only` (forced: whatever its age or last failure).
async fn candidates(
    state: &AppState,
    only: Option<u32>,
    report: &mut PassReport,
) -> Result<Vec<u32>, ApiError> {
    let held_back = hold_back(state).await?;
    // Jobs and volumes are walked side by side, a page of each at a time.
    let mut jobs = state.directory.migration_pages();
    let now = now_ms();
    let warm_after = state.config.warm_after_ms;
    // By age; with the size of each volume still to encode.
    let mut picked: Vec<(u64, u32, Option<u64>)> = Vec::new();
    // A page of volumes at a time: what the pass keeps of each is its id.
    let mut pages = state.directory.volume_pages();
    while let Some(volumes) = pages.next().await? {
        // A pass for one volume changes nothing else (nor anything at all,
        // if the volume turns out not to be a candidate).
        if only.is_none() {
            report.locked_idle += super::ownership::lock_orphans(state, &volumes).await;
        }
        for volume in volumes {
            if only.is_some_and(|only| only != volume.id) {
                continue;
            }
            let locked_ms = volume.locked_ms.unwrap_or(volume.created_ms);
            let job = jobs.job_of(volume.id).await?;
            let job = job.as_ref();
            // Held back, only jobs past their flip go on (they need no racks).
            if held_back.is_some() && volume.state != VolumeState::Warm {
                continue;
            }
            match volume.state {
                VolumeState::Locked => {
                    if only.is_none() && now.saturating_sub(locked_ms) < warm_after {
                        report.too_young += 1;
                        continue;
                    }
                }
                // A seal that died halfway: resumed with a new attempt.
                VolumeState::Sealing => {}
                // Flipped by a job that died, or failed, before its hot
                // replicas went (a lost answer to the flip, a replica's
                // node down): they are retired now.
                VolumeState::Warm
                    if !volume.geo.is_companion()
                        && job.is_some_and(|j| j.step != MigrationStep::Warm) => {}
                _ => continue,
            }
            if let Some(job) = job {
                if !job.step.is_final() && job.lease_until_ms > now {
                    report.claimed_elsewhere.push(volume.id);
                    continue;
                }
                // A failed job waits a lease before it is tried again.
                let retry_after = state.config.migration_lease_ms;
                if only.is_none()
                    && job.step == MigrationStep::Failed
                    && now.saturating_sub(job.updated_ms) < retry_after
                {
                    continue;
                }
            }
            let to_encode = (volume.state != VolumeState::Warm).then_some(volume.size_bytes);
            picked.push((locked_ms, volume.id, to_encode));
        }
    }
    // Held back for racks, `picked` holds no volume to encode; else each
    // one to encode goes on only if the cell has room for it.
    let mut held_back = held_back;
    if picked.iter().any(|(_, _, to_encode)| to_encode.is_some()) {
        let rooms = storage_rooms(state).await?;
        let mut fitting = Vec::with_capacity(picked.len());
        for (locked_ms, id, to_encode) in picked {
            let short = match to_encode {
                Some(volume_bytes) => room_for(state, &rooms, id, volume_bytes)?.err(),
                None => None,
            };
            match short {
                Some(why) => {
                    held_back.get_or_insert(why);
                }
                None => fitting.push((locked_ms, id, to_encode)),
            }
        }
        picked = fitting;
    }
    // A forced volume says why in its answer; the gauge is the passes'.
    if only.is_none() {
        state.metrics.set_migration_held_back(held_back.is_some());
    }
    report.held_back = held_back;
    if let Some(only) = only
        && picked.is_empty()
        && !report.claimed_elsewhere.contains(&only)
    {
        let volume = known_volume(state, only).await?;
        if volume.state == VolumeState::Warm {
            return Ok(Vec::new());
        }
        if let Some(why) = &report.held_back {
            return Err(ApiError::Unavailable(format!(
                "volume {only} not migrated: {why}"
            )));
        }
        return Err(ApiError::BadRequest(format!(
            "volume {only} is {}; only a locked volume migrates",
            volume.state
        )));
    }
    picked.sort_unstable();
    Ok(picked.into_iter().map(|(_, id, _)| id).collect())
}

/// Why no seal could finish now, if so: no datacenter's cell has as many
/// racks with a storage node up as blocks in a stripe (unless the
/// directory accepts fewer racks), or none has any. A job started then
/// would fail at placement; the pass says so instead.
async fn hold_back(state: &AppState) -> Result<Option<String>, ApiError> {
    let nodes = state.cache.nodes(true).await?;
    let mut cells: HashMap<&str, HashSet<&str>> = HashMap::new();
    for node in nodes
        .values()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up())
    {
        cells
            .entry(node.datacenter.as_str())
            .or_default()
            .insert(node.rack.as_str());
    }
    let racks = cells.values().map(HashSet::len).max().unwrap_or(0);
    let needed = usize::from(DATA_BLOCKS + PARITY_BLOCKS);
    let enough = if state.config.allow_fewer_racks {
        racks > 0
    } else {
        racks >= needed
    };
    Ok((!enough).then(|| {
        format!(
            "held back: {racks} rack(s) with a storage node up in the best datacenter, a \
             stripe needs {needed}"
        )
    }))
}

/// Each up storage node's datacenter, rack and room for blocks
/// (`GET /space`: its disk's available bytes less its reserve); a node that
/// does not answer has none.
pub(crate) async fn storage_rooms(
    state: &AppState,
) -> Result<Vec<(String, String, u64)>, ApiError> {
    let nodes = state.cache.nodes(true).await?;
    let up = nodes
        .values()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up());
    Ok(futures::future::join_all(up.map(|node| async move {
        let client = StorageClient::from_http(&node.base_url(), state.warm_http.clone());
        let room = match client.space().await {
            Ok(space) => space.room_bytes,
            Err(e) => {
                tracing::info!(node = %node.id, error = %e, "no answer about its space");
                0
            }
        };
        (node.datacenter.clone(), node.rack.clone(), room)
    }))
    .await)
}

/// The datacenters where volume `id` of `volume_bytes` fits on nodes with
/// `rooms` (datacenter, rack, room): those where as many racks as a stripe
/// needs hold a node with room for its share of the volume's blocks, its
/// largest block file times the blocks each of the datacenter's nodes
/// gets when they are spread evenly; or, when none does, why. A volume
/// whose size the directory has not learnt yet counts as 1 byte (the nodes
/// must not be full).
pub(crate) fn room_for(
    state: &AppState,
    rooms: &[(String, String, u64)],
    id: u32,
    volume_bytes: u64,
) -> Result<Result<Vec<String>, String>, ApiError> {
    let internal = |e: f4::Error| ApiError::Internal(format!("volume {id}: {e}"));
    let geometry =
        seal_geometry(volume_bytes.max(1), state.config.max_block_size_bytes).map_err(internal)?;
    let block_file_bytes = BlockHeader::new(1, 1, geometry, 0, 0)
        .map_err(internal)?
        .file_len_bytes()
        .ok_or_else(|| ApiError::Internal(format!("volume {id}: a block over u64")))?;
    let stripes = geometry.layout().map_err(internal)?.stripe_count().max(1);
    let blocks = stripes * u64::from(DATA_BLOCKS + PARITY_BLOCKS);
    let mut cells: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for (datacenter, rack, room) in rooms {
        cells
            .entry(datacenter.as_str())
            .or_default()
            .push((rack.as_str(), *room));
    }
    let needed = if state.config.allow_fewer_racks {
        1
    } else {
        usize::from(DATA_BLOCKS + PARITY_BLOCKS)
    };
    // Per datacenter: its racks that have room, and what each node needs.
    let fits: Vec<(&str, usize, u64)> = cells
        .iter()
        .map(|(datacenter, nodes)| {
            let need = block_file_bytes.saturating_mul(blocks.div_ceil(nodes.len() as u64));
            let racks: HashSet<&str> = nodes
                .iter()
                .filter(|(_, room)| *room >= need)
                .map(|(rack, _)| *rack)
                .collect();
            (*datacenter, racks.len(), need)
        })
        .collect();
    let roomy: Vec<String> = fits
        .iter()
        .filter(|(_, racks, _)| *racks >= needed)
        .map(|(datacenter, _, _)| (*datacenter).to_owned())
        .collect();
    if !roomy.is_empty() {
        return Ok(Ok(roomy));
    }
    let (racks, need) = fits
        .iter()
        .map(|(_, racks, need)| (*racks, *need))
        .max_by_key(|(racks, _)| *racks)
        .unwrap_or((0, block_file_bytes.saturating_mul(blocks)));
    Ok(Err(format!(
        "held back: {racks} rack(s) have a storage node with room for {need} bytes of blocks \
         (volume {id}, {volume_bytes} bytes), a stripe needs {needed}"
    )))
}

/// One pass as `owner`: every candidate (or only volume `only`), at most
/// [`RouterConfig::max_migrations`] at once.
pub(crate) async fn pass(
    state: &Arc<AppState>,
    owner: &str,
    only: Option<u32>,
) -> Result<PassReport, ApiError> {
    let mut report = PassReport::default();
    let mut volumes = candidates(state, only, &mut report).await?;
    if only.is_none() {
        volumes.extend(super::geo::plan(state, &mut report.geo).await?);
    }
    let mut running = futures::stream::iter(volumes)
        .map(|vid| async move { (vid, run_job(state.clone(), owner.to_owned(), vid).await) })
        .buffer_unordered(state.config.max_migrations.max(1));
    while let Some((vid, outcome)) = running.next().await {
        match outcome {
            Some(outcome) => report.jobs.push(outcome),
            None => report.claimed_elsewhere.push(vid),
        }
    }
    Ok(report)
}

/// Claims volume `vid`'s job and runs it; `None` if another migrator holds
/// it.
async fn run_job(state: Arc<AppState>, owner: String, vid: u32) -> Option<JobOutcome> {
    let started = Instant::now();
    let result = claim_and_seal(&state, &owner, vid).await?;
    let report = result.as_ref().ok();
    let (step, error) = job_end(&result);
    Some(JobOutcome {
        volume: vid,
        step,
        error,
        needles: report.map_or(0, |r| r.needles),
        retired_replicas: report.map_or(0, |r| r.retired_replicas),
        kept_replicas: report.map_or_else(Vec::new, |r| r.kept.clone()),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Claims volume `vid`'s job as `owner` (made unique to this process),
/// seals the volume recording each step, and ends the job `warm` or
/// `failed`. `None` if a live claim holds it. Every seal goes through here
/// (the migrator's, a router's `hayloft migrate` and `hayloft warm seal`),
/// so two never run the same volume at once. The job runs on a task of its
/// own: a caller that goes away does not leave it without its end.
pub(crate) async fn claim_and_seal(
    state: &Arc<AppState>,
    owner: &str,
    vid: u32,
) -> Option<Result<SealReport, ApiError>> {
    let owner = format!("{owner}@{}", state.instance);
    let job = tokio::spawn(run_claimed(state.clone(), owner, vid));
    match job.await {
        Ok(result) => result,
        Err(e) => Some(Err(ApiError::Internal(format!("migration task: {e}")))),
    }
}

async fn run_claimed(
    state: Arc<AppState>,
    owner: String,
    vid: u32,
) -> Option<Result<SealReport, ApiError>> {
    let state = &state;
    let owner = owner.as_str();
    let lease_ms = state.config.migration_lease_ms.max(1);
    let job = match state.directory.claim_migration(vid, owner, lease_ms).await {
        Ok(job) => job,
        Err(e) if e.status() == Some(409) => {
            tracing::info!(volume = vid, error = %e, "migration claimed elsewhere");
            return None;
        }
        Err(e) => return Some(Err(e.into())),
    };
    tracing::info!(
        volume = vid,
        attempt = job.attempts,
        "migrating to the warm tier"
    );
    let (steps, seen) = watch::channel(MigrationStep::Locked);
    let lost = CancellationToken::new();
    let reporter = tokio::spawn(report_steps(
        state.clone(),
        owner.to_owned(),
        vid,
        seen,
        lease_ms,
        lost.clone(),
    ));
    let work = async {
        match known_volume(state, vid).await {
            Ok(volume) if volume.geo.is_companion() => {
                super::geo::build(state, owner, volume, steps, lost.clone()).await
            }
            // Flipped by a job that died before its hot replicas went
            // (whatever step it had recorded: the flip is the directory's
            // word).
            Ok(volume) if volume.state == VolumeState::Warm && !job.step.is_final() => {
                let retired = drain_and_retire(state, &volume, &steps).await;
                drop(steps);
                Ok(SealReport::warm(volume, retired))
            }
            Ok(volume) => seal(state.clone(), volume, steps, lost.clone()).await,
            Err(e) => Err(e),
        }
    };
    // A claim lost (run out while this attempt stalled, and taken over)
    // stops the attempt where it is, as a kill would (the seal's own task
    // too, with no abort or cleanup): the one that took it over goes on
    // from the directory's word.
    let result = tokio::select! {
        result = work => result,
        () = lost.cancelled() => Err(ApiError::Busy(format!(
            "volume {vid}'s migration claim was lost to another migrator; this attempt stopped"
        ))),
    };
    // The sender is gone: the reporter sends what is left and ends.
    let _ = reporter.await;
    let (step, error) = job_end(&result);
    let end = StepRequest {
        owner: owner.to_owned(),
        step,
        error,
        lease_ms,
    };
    if let Err(e) = state.directory.migration_step(vid, &end).await {
        tracing::warn!(volume = vid, error = %e, "ending the migration job failed");
    }
    match &result {
        Ok(_) => tracing::info!(volume = vid, "migrated"),
        Err(error) => {
            state.metrics.migration_error();
            tracing::warn!(volume = vid, error = %error, "migration failed");
        }
    }
    Some(result)
}

/// The final step of a job that ended with `result`, and its error.
fn job_end(result: &Result<SealReport, ApiError>) -> (MigrationStep, Option<String>) {
    match result {
        Ok(report) if !report.unretired.is_empty() => (
            MigrationStep::Failed,
            Some(format!(
                "warm, but hot replicas not retired yet: {}",
                report.unretired.join("; ")
            )),
        ),
        // Warm; the replicas kept are named where an operator looks.
        Ok(report) if !report.kept.is_empty() => (
            MigrationStep::Warm,
            Some(format!("hot replicas kept: {}", report.kept.join("; "))),
        ),
        Ok(_) => (MigrationStep::Warm, None),
        Err(e) => (MigrationStep::Failed, Some(e.to_string())),
    }
}

/// Records each step the seal reaches in the job, and renews the claim
/// every third of the lease meanwhile; ends when the seal drops its sender,
/// or fires `lost` and ends when the directory says the claim is no longer
/// `owner`'s.
async fn report_steps(
    state: Arc<AppState>,
    owner: String,
    vid: u32,
    mut seen: watch::Receiver<MigrationStep>,
    lease_ms: u64,
    lost: CancellationToken,
) {
    let renew = Duration::from_millis(lease_ms / 3).max(Duration::from_millis(1));
    loop {
        let changed = tokio::time::timeout(renew, seen.changed()).await;
        if matches!(changed, Ok(Err(_))) {
            return;
        }
        let request = StepRequest {
            owner: owner.clone(),
            step: *seen.borrow_and_update(),
            error: None,
            lease_ms,
        };
        match state.directory.migration_step(vid, &request).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(409) => {
                tracing::warn!(volume = vid, error = %e, "migration claim lost");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(volume = vid, error = %e, "recording a migration step failed");
            }
        }
    }
}

/// Query of `POST /admin/migrate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MigrateQuery {
    /// Only this volume, whatever its age.
    volume: Option<u32>,
}

/// `POST /admin/migrate[?volume=N]`: one pass now, or one volume forced.
pub(crate) async fn migrate_now(
    State(state): State<Arc<AppState>>,
    query: Result<Query<MigrateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PassReport>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    one_pass(&state, query.volume).await
}

/// A pass of `POST /admin/migrate` or `POST /admin/volumes/{id}/migrate`:
/// one at a time per router (`503 busy` while another runs).
async fn one_pass(state: &Arc<AppState>, only: Option<u32>) -> Result<Json<PassReport>, ApiError> {
    let _running = state.migration_passes.try_acquire().map_err(|_| {
        ApiError::Busy("a migration pass is already running on this router; retry later".into())
    })?;
    pass(state, "router", only).await.map(Json)
}

/// `POST /admin/volumes/{id}/migrate`: volume `id` forced now, whatever its
/// age (`POST /admin/migrate?volume=ID`).
pub(crate) async fn migrate_volume(
    State(state): State<Arc<AppState>>,
    Path(vid): Path<String>,
) -> Result<Json<PassReport>, ApiError> {
    one_pass(&state, Some(volume_id(&vid)?)).await
}

/// `GET /admin/migrations?after=V&limit=N`: a page of migration jobs.
pub(crate) async fn migrations(
    State(state): State<Arc<AppState>>,
    query: Result<Query<VolumePageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MigrationPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (after, limit) = query.page().map_err(ApiError::BadRequest)?;
    Ok(Json(state.directory.migrations(after, limit).await?))
}

/// Runs the `migrator` role as `owner`: a pass every
/// [`RouterConfig::migrate_interval_ms`], and `GET /health` and
/// `GET /metrics` (its migration errors, the cluster's gauges) on `listener`,
/// until `cancel` fires (a job under way is dropped; its lease runs out
/// and the next pass takes it over).
pub async fn run(
    config: RouterConfig,
    owner: String,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), ApiError> {
    let options = config.server.serve_options();
    let interval = Duration::from_millis(config.migrate_interval_ms.max(1));
    let state = Arc::new(AppState::new(config)?);
    let app = axum::Router::new()
        .route("/health", axum::routing::get(haystack::http::health))
        .route("/metrics", axum::routing::get(super::admin::metrics))
        .fallback(haystack::http::no_route)
        .with_state(state.clone());
    let passes = super::repeat(interval, cancel.clone(), move || {
        let (state, owner) = (state.clone(), owner.clone());
        async move {
            match pass(&state, &owner, None).await {
                Ok(report) if !report.jobs.is_empty() => {
                    tracing::info!(jobs = report.jobs.len(), "migration pass");
                }
                Ok(PassReport {
                    held_back: Some(why),
                    ..
                }) => {
                    tracing::info!(why = %why, "migration pass held back");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "migration pass failed"),
            }
        }
    });
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "migrator serving");
    }
    haystack::http::serve(listener, app, options, cancel).await;
    let _ = passes.await;
    tracing::info!("migrator stopped");
    Ok(())
}
