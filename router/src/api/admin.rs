//! Operational routes: `GET /health`, `GET /metrics`, `GET /` (a plain-text
//! status page), `GET /admin/volumes`, `GET /admin/nodes` and
//! `GET /admin/damaged-needles` (the directory's JSON, passed through).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::state::AppState;
use crate::directory::types::{DamagedQuery, MigrationStep, VolumePage, VolumePageQuery};
use crate::directory::{DirectoryClientError, LogicalVolume, NodeRecord, VolumeState};

/// Longest a scrape waits for the directory before rendering stale gauges.
const GAUGE_REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /health`: the router process is serving.
pub(crate) async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /metrics`: Prometheus text format. The volume gauges are refreshed
/// from the directory first (best effort: a directory outage must not hide
/// the other metrics).
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let tally = tokio::time::timeout(GAUGE_REFRESH_TIMEOUT, VolumeTally::of_every_volume(&state));
    match tally.await {
        Ok(Ok(tally)) => tally.record(&state),
        Ok(Err(e)) => tracing::debug!(error = %e, "volume gauges not refreshed"),
        Err(_) => tracing::debug!("volume gauges not refreshed: directory too slow"),
    }
    let jobs = tokio::time::timeout(GAUGE_REFRESH_TIMEOUT, jobs_by_step(&state));
    match jobs.await {
        Ok(Ok(counts)) => {
            for (step, count) in counts {
                state.metrics.set_migration_jobs(step.as_str(), count);
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "migration gauges not refreshed"),
        Err(_) => tracing::debug!("migration gauges not refreshed: directory too slow"),
    }
    for (tier, stats) in [
        ("hot", state.reader.batch_stats()),
        ("warm", state.warm_reader.batch_stats()),
    ] {
        state
            .metrics
            .set_read_batches(tier, stats.batches, stats.reads);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The migration jobs at each step (every step named), counted a page at
/// a time.
async fn jobs_by_step(
    state: &AppState,
) -> Result<BTreeMap<MigrationStep, usize>, DirectoryClientError> {
    use MigrationStep::*;
    let mut counts: BTreeMap<MigrationStep, usize> = [
        Locked, Encoding, Verifying, Flipping, Draining, Deleting, Warm, Failed,
    ]
    .into_iter()
    .map(|step| (step, 0))
    .collect();
    let mut pages = state.directory.migration_pages();
    while let Some(jobs) = pages.next().await? {
        for job in jobs {
            *counts.entry(job.step).or_default() += 1;
        }
    }
    Ok(counts)
}

/// What the volume gauges count, gathered a page of volumes at a time.
struct VolumeTally {
    by_state: BTreeMap<String, usize>,
    /// Logical bytes of the warm primaries.
    migrated: u64,
    /// Bytes the warm primaries' hot replicas held beyond their warm blocks.
    saved: u64,
    /// Bytes the geo companions hold.
    companions: u64,
    geo_waiting: super::geo::GeoWaiting,
}

impl VolumeTally {
    /// Every volume of the directory, counted page by page.
    async fn of_every_volume(state: &AppState) -> Result<VolumeTally, DirectoryClientError> {
        let mut tally = VolumeTally {
            // Gauges of the hot states exist from the start, at zero.
            by_state: [
                VolumeState::Writable,
                VolumeState::ReadOnly,
                VolumeState::Locked,
            ]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect(),
            migrated: 0,
            saved: 0,
            companions: 0,
            geo_waiting: Default::default(),
        };
        let mut pages = state.directory.volume_pages();
        while let Some(page) = pages.next().await? {
            page.iter().for_each(|volume| tally.add(volume));
        }
        Ok(tally)
    }

    fn add(&mut self, volume: &LogicalVolume) {
        *self.by_state.entry(volume.state.to_string()).or_default() += 1;
        self.geo_waiting.add(volume);
        if let (VolumeState::Warm, Some(warm)) = (volume.state, &volume.warm) {
            if volume.geo.is_companion() {
                self.companions += warm.stored_bytes();
                return;
            }
            self.migrated += warm.geometry.volume_len_bytes;
            let hot = volume.size_bytes * volume.replicas.len() as u64;
            self.saved += hot.saturating_sub(warm.stored_bytes());
        }
    }

    fn volumes(&self) -> usize {
        self.by_state.values().sum()
    }

    fn record(&self, state: &AppState) {
        for (state_name, &count) in &self.by_state {
            state.metrics.set_volumes(state_name, count);
        }
        state
            .metrics
            .set_migrated(self.migrated, self.saved.saturating_sub(self.companions));
        let (waiting, waiting_bytes) = self.geo_waiting.total();
        state.metrics.set_geo_waiting(waiting, waiting_bytes);
    }
}

/// `GET /admin/volumes?after=V&limit=N`: a page of logical volumes with
/// their states.
pub(crate) async fn volumes(
    State(state): State<Arc<AppState>>,
    query: Result<Query<VolumePageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<VolumePage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (after, limit) = query.page().map_err(ApiError::BadRequest)?;
    Ok(Json(state.directory.volumes(after, limit).await?))
}

/// `GET /admin/nodes`: every registered node.
pub(crate) async fn nodes(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<NodeRecord>>, ApiError> {
    Ok(Json(state.directory.list_nodes().await?))
}

/// `DELETE /admin/nodes/{id}`: has the directory forget a `down` node that
/// no volume keeps data on (a router or rebuilder taken out of service):
/// `200` with its last record; `404 unknown_node`; `409 node_in_use`.
pub(crate) async fn remove_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<NodeRecord>, ApiError> {
    match state.directory.remove_node(&id).await {
        Ok(removed) => Ok(Json(removed)),
        Err(DirectoryClientError::Api { code, message, .. }) if code == "unknown_node" => {
            Err(ApiError::UnknownNode(message))
        }
        Err(DirectoryClientError::Api { code, message, .. }) if code == "node_in_use" => {
            Err(ApiError::NodeInUse(message))
        }
        Err(DirectoryClientError::BadArgument(message)) => Err(ApiError::BadRequest(message)),
        Err(e) => Err(e.into()),
    }
}

/// `GET /admin/damaged-needles?after_volume=V&after_key=HEX&limit=N`: a page
/// of the needles whose copy failed its checks on some replica, and the
/// lost ones (no good copy anywhere), with their BLOB ids.
pub(crate) async fn damaged_needles(
    State(state): State<Arc<AppState>>,
    query: Result<Query<DamagedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (after, limit) = query.page().map_err(ApiError::BadRequest)?;
    let page = state.directory.damaged_needles(after, limit).await?;
    Ok(Json(page).into_response())
}

/// `GET /`: a short plain-text summary for humans.
pub(crate) async fn status_page(State(state): State<Arc<AppState>>) -> Response {
    let mut page = String::from("hayloft router\n\n");
    match VolumeTally::of_every_volume(&state).await {
        Ok(tally) => {
            tally.record(&state);
            let _ = writeln!(page, "volumes: {}", tally.volumes());
            for (name, count) in tally.by_state.iter().filter(|&(_, &n)| n > 0) {
                let _ = writeln!(page, "  {name}: {count}");
            }
        }
        Err(e) => {
            let _ = writeln!(page, "volumes: directory unavailable ({e})");
        }
    }
    match state.directory.list_nodes().await {
        Ok(nodes) => {
            let _ = writeln!(page, "nodes: {}", nodes.len());
            for node in nodes {
                let _ = writeln!(
                    page,
                    "  {} {:?} rack={} dc={} {} {:?}",
                    node.id, node.role, node.rack, node.datacenter, node.address, node.state
                );
            }
        }
        Err(e) => {
            let _ = writeln!(page, "nodes: directory unavailable ({e})");
        }
    }
    let _ = writeln!(
        page,
        "\nwritable volumes idle in this router's pool: {}\nupload limit: {} bytes",
        state.pool.idle_count(),
        state.config.max_blob_bytes
    );
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], page).into_response()
}
