//! The directory's HTTP service (`docs/ARCHITECTURE.md`, "Directory HTTP
//! API"): axum routes over a [`Directory`] backend, served by hyper with
//! header-read and per-request timeouts, bounded bodies and connections, and
//! graceful shutdown; plus two background loops, the down-marker and the
//! replica repair loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use haystack::api::{ReadLease, next_after};
use haystack::http::ServerLimits;

use super::read_lease::{READ_LEASE_MS_MAX, ReadLeases};
use super::repair::run_repair_loop;
use super::stores::StoreCalls;
use super::types::{
    ClaimRequest, CompanionRequest, DamagedBlockRequest, DamagedPage, DamagedQuery, DamagedRequest,
    DropQuery, DroppedPage, EndRequest, ErrorBody, FreshRequest, GenerationRequest, LeaseRequest,
    MigrationPage, NodeRegistration, OwnershipRequest, PlaceRequest, RebuildClaimRequest,
    RebuildPage, RebuildQuery, RebuiltBlockRequest, RenewRequest, ReplaceHolderRequest,
    SetStateRequest, StaleRequest, StepRequest, VolumePage, VolumePageQuery,
};
use super::{Directory, DirectoryError, LogicalVolume, NodeRole, RedbDirectory, now_ms};

/// Configuration of the directory role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// Directory holding `directory.redb` (created if missing).
    pub data_dir: PathBuf,
    /// A node silent for this long is marked `down`.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    /// Pause between two replica repair passes.
    #[serde(default = "default_repair_interval_ms")]
    pub repair_interval_ms: u64,
    /// Longest time one inbound request may take before a 503 `timeout`.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Timeout of the directory's own calls to store nodes (create, status, lock).
    #[serde(default = "default_store_request_timeout_ms")]
    pub store_request_timeout_ms: u64,
    /// Timeout of one bulk sync of a replica.
    #[serde(default = "default_sync_timeout_ms")]
    pub sync_timeout_ms: u64,
    /// Largest accepted request body.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Header-read timeout, connection cap and shutdown grace.
    #[serde(default)]
    pub server: ServerLimits,
    /// Place warm volumes on a cell with fewer racks than blocks in a
    /// stripe (then each volume records how many lost racks it tolerates).
    #[serde(default)]
    pub allow_fewer_racks: bool,
    /// How long a store node's read lease holds (direct reads), counted
    /// from when it asked; it renews it with every heartbeat.
    #[serde(default = "default_read_lease_ms")]
    pub read_lease_ms: u64,
}

/// Default of [`DirectoryConfig::heartbeat_timeout_ms`]: 10 s.
pub fn default_heartbeat_timeout_ms() -> u64 {
    10_000
}
/// Default of [`DirectoryConfig::read_lease_ms`]: 3 s, three heartbeats.
pub fn default_read_lease_ms() -> u64 {
    3_000
}
/// Default of [`DirectoryConfig::repair_interval_ms`]: 2 s.
pub fn default_repair_interval_ms() -> u64 {
    2_000
}
/// Default of [`DirectoryConfig::request_timeout_ms`]: 30 s.
pub fn default_request_timeout_ms() -> u64 {
    haystack::http::DEFAULT_REQUEST_TIMEOUT_MS
}
/// Default of [`DirectoryConfig::store_request_timeout_ms`]: 3 s.
pub fn default_store_request_timeout_ms() -> u64 {
    3_000
}
/// Default of [`DirectoryConfig::sync_timeout_ms`]: 10 min.
pub fn default_sync_timeout_ms() -> u64 {
    600_000
}
/// Default of [`DirectoryConfig::max_body_bytes`]: 64 KiB.
pub fn default_max_body_bytes() -> usize {
    64 * 1024
}

impl DirectoryConfig {
    /// A config with every default and the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
            repair_interval_ms: default_repair_interval_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            store_request_timeout_ms: default_store_request_timeout_ms(),
            sync_timeout_ms: default_sync_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            server: ServerLimits::default(),
            allow_fewer_racks: false,
            read_lease_ms: default_read_lease_ms(),
        }
    }

    /// Checks that every timeout and limit is positive.
    pub fn validate(&self) -> Result<(), DirectoryError> {
        let positive = [
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("repair_interval_ms", self.repair_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("store_request_timeout_ms", self.store_request_timeout_ms),
            ("sync_timeout_ms", self.sync_timeout_ms),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("read_lease_ms", self.read_lease_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(DirectoryError::InvalidConfig(format!(
                "{name} must be positive"
            )));
        }
        if self.read_lease_ms > READ_LEASE_MS_MAX {
            return Err(DirectoryError::InvalidConfig(format!(
                "read_lease_ms must be at most {READ_LEASE_MS_MAX}"
            )));
        }
        self.server
            .validate()
            .map_err(DirectoryError::InvalidConfig)
    }
}

/// Most directory operations running at once on blocking threads.
const MAX_BLOCKING_OPERATIONS: usize = 16;

#[derive(Clone)]
struct AppState {
    directory: Arc<dyn Directory>,
    permits: Arc<Semaphore>,
    stores: StoreCalls,
    allow_fewer_racks: bool,
    read_leases: Arc<ReadLeases>,
}

impl AppState {
    /// Runs `f` on the backend in a blocking task, bounded by a semaphore.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Directory) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, DirectoryError> {
        let _permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| DirectoryError::Internal("shutting down".into()))?;
        let directory = Arc::clone(&self.directory);
        tokio::task::spawn_blocking(move || f(&*directory))
            .await
            .map_err(|e| DirectoryError::Internal(format!("directory task: {e}")))?
    }
}

impl IntoResponse for DirectoryError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "directory request failed");
        }
        error_response(status, self.code(), self.to_string())
    }
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        error: code.to_owned(),
        message,
    };
    (status, axum::Json(body)).into_response()
}

/// A JSON body whose rejections are the directory's JSON errors.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = DirectoryError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                DirectoryError::PayloadTooLarge { limit_bytes: limit }
            } else {
                DirectoryError::BadRequest(r.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| DirectoryError::BadRequest(format!("JSON body: {e}")))
    }
}

/// The configured body limit, for error messages.
#[derive(Clone, Copy)]
struct BodyLimit(usize);

fn parse_vid(text: &str) -> Result<u32, DirectoryError> {
    text.parse()
        .map_err(|_| DirectoryError::BadRequest(format!("volume id {text:?} is not a u32")))
}

/// A `{vid}/rebuilds/{stripe}` path's volume and stripe.
fn parse_stripe(vid: &str, stripe: &str) -> Result<(u32, u64), DirectoryError> {
    let stripe = stripe
        .parse()
        .map_err(|_| DirectoryError::BadRequest(format!("stripe {stripe:?} is not a u64")))?;
    Ok((parse_vid(vid)?, stripe))
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn register_node(
    State(state): State<AppState>,
    JsonBody(node): JsonBody<NodeRegistration>,
) -> Result<Response, DirectoryError> {
    let now = now_ms();
    let record = state.blocking(move |d| d.register_node(node, now)).await?;
    tracing::debug!(node = %record.id, role = ?record.role, "node registered");
    Ok(axum::Json(record).into_response())
}

async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, DirectoryError> {
    let now = now_ms();
    let record = state.blocking(move |d| d.heartbeat(&id, now)).await?;
    Ok(axum::Json(record).into_response())
}

/// `POST /nodes/{id}/read-lease`: a heartbeat that also renews a store
/// node's read lease: `200 ReadLease` (no volumes for other roles).
async fn read_lease(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, DirectoryError> {
    let now = now_ms();
    let node = id.clone();
    let record = state.blocking(move |d| d.heartbeat(&node, now)).await?;
    if record.role != NodeRole::Store {
        return Ok(axum::Json(ReadLease {
            lease_ms: 0,
            volumes: Vec::new(),
        })
        .into_response());
    }
    let at = std::time::Instant::now();
    state.read_leases.granting(&id, at);
    let leases = Arc::clone(&state.read_leases);
    let node = id.clone();
    let lease = state
        .blocking(move |d| leases.lease(&node, super::volume_scan(d)))
        .await?;
    state.read_leases.granted(&id, at, &lease);
    Ok(axum::Json(lease).into_response())
}

async fn list_nodes(State(state): State<AppState>) -> Result<Response, DirectoryError> {
    let nodes = state.blocking(|d| d.list_nodes()).await?;
    Ok(axum::Json(nodes).into_response())
}

/// `DELETE /nodes/{id}`: forgets a `down` node no volume names; `200` with
/// its last record, `404 unknown_node`, `409 node_in_use`.
async fn remove_node(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, DirectoryError> {
    let removed = state.blocking(move |d| d.remove_node(&id)).await?;
    tracing::info!(node = %removed.id, role = ?removed.role, "node removed");
    Ok(axum::Json(removed).into_response())
}

/// Allocates a volume, then creates its replicas on the store nodes, so a
/// `writable` answer means every replica exists. A replica that cannot be
/// created is marked stale (the volume turns `readonly`) and the answer is a
/// 503 `store_unavailable`.
async fn allocate_volume(State(state): State<AppState>) -> Result<Response, DirectoryError> {
    let now = now_ms();
    let (volume, nodes) = state
        .blocking(move |d| Ok((d.allocate_volume(now)?, d.list_nodes()?)))
        .await?;
    let vid = volume.id;
    let creations = volume.replicas.iter().map(|replica| {
        let node = nodes.iter().find(|n| &n.id == replica).cloned();
        let stores = state.stores.clone();
        async move {
            let node = node.ok_or_else(|| DirectoryError::UnknownNode {
                id: replica.clone(),
            })?;
            stores
                .create_volume(&node.base_url(), vid)
                .await
                .map_err(|e| DirectoryError::StoreUnavailable {
                    node: node.id.clone(),
                    message: format!("creating replica of volume {vid}: {e}"),
                })
        }
    });
    let results = futures::future::join_all(creations).await;
    if let Some(error) = results.iter().find_map(|r| r.as_ref().err()) {
        let error = error.to_string();
        discard_allocation(&state, &volume, &nodes, &results).await;
        tracing::warn!(volume = vid, error = %error, "volume allocation failed; discarded");
        return Err(results
            .into_iter()
            .find_map(Result::err)
            .expect("one creation failed"));
    }
    tracing::info!(volume = vid, replicas = ?volume.replicas, "volume allocated");
    Ok((StatusCode::CREATED, axum::Json(volume)).into_response())
}

/// Undoes an allocation whose replicas could not all be created: removes the
/// empty replicas that were (best effort; a node that keeps one holds an
/// empty orphan file) and forgets the volume, so that no empty, stale volume
/// is left for repair to mend again after every failed upload.
async fn discard_allocation(
    state: &AppState,
    volume: &super::LogicalVolume,
    nodes: &[super::NodeRecord],
    results: &[Result<(), DirectoryError>],
) {
    let vid = volume.id;
    for (replica, result) in volume.replicas.iter().zip(results) {
        let Some(node) = nodes.iter().find(|n| &n.id == replica) else {
            continue;
        };
        if result.is_ok()
            && let Err(e) = state
                .stores
                .remove_empty_volume(&node.base_url(), vid)
                .await
        {
            tracing::warn!(volume = vid, replica = %replica, error = %e,
                "removing the replica of a discarded volume failed");
        }
    }
    if let Err(e) = state.blocking(move |d| d.discard_volume(vid)).await {
        tracing::warn!(volume = vid, error = %e, "discarding a failed allocation failed");
        // It stays as a volume with a stale replica, which repair mends.
        for (replica, result) in volume.replicas.iter().zip(results) {
            if result.is_err() {
                let replica = replica.clone();
                let _ = state
                    .blocking(move |d| d.mark_replica_stale(vid, &replica, false))
                    .await;
            }
        }
    }
}

/// `GET /volumes?after=V&limit=N`: a page of volumes.
async fn list_volumes(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<VolumePageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DirectoryError> {
    let (volumes, next_after) = page_by_volume(
        &state,
        query,
        |d, after, limit| d.volumes(after, limit),
        |v| v.id,
    )
    .await?;
    Ok(axum::Json(VolumePage {
        volumes,
        next_after,
    })
    .into_response())
}

/// One page of a listing by volume id: `list` reads at most the query's
/// limit after its volume, and the next page starts after the last one's
/// `id` when the page is full.
async fn page_by_volume<T: Send + 'static>(
    state: &AppState,
    query: Result<axum::extract::Query<VolumePageQuery>, axum::extract::rejection::QueryRejection>,
    list: impl FnOnce(&dyn Directory, Option<u32>, usize) -> Result<Vec<T>, DirectoryError>
    + Send
    + 'static,
    id: impl FnOnce(&T) -> u32,
) -> Result<(Vec<T>, Option<u32>), DirectoryError> {
    let axum::extract::Query(query) =
        query.map_err(|e| DirectoryError::BadRequest(e.body_text()))?;
    let (after, limit) = query.page().map_err(DirectoryError::BadRequest)?;
    let records = state.blocking(move |d| list(d, after, limit)).await?;
    let next_after = next_after(&records, limit, id);
    Ok((records, next_after))
}

async fn get_volume(
    State(state): State<AppState>,
    Path(vid): Path<String>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let volume = state.blocking(move |d| d.volume(vid)).await?;
    Ok(axum::Json(volume).into_response())
}

async fn set_volume_state(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    JsonBody(request): JsonBody<SetStateRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let now = now_ms();
    let target = request.state;
    let volume = state
        .blocking(move |d| d.set_volume_state(vid, target, now))
        .await?;
    tracing::info!(volume = vid, state = %target, reason = %request.reason, "volume state set");
    Ok(axum::Json(volume).into_response())
}

async fn lease_keys(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    JsonBody(request): JsonBody<LeaseRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let lease = state
        .blocking(move |d| d.lease_keys(vid, request.count))
        .await?;
    Ok(axum::Json(lease).into_response())
}

/// `POST /ownership`: a router claims or renews its writable volumes;
/// answers every writable volume it holds.
async fn own_volumes(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<OwnershipRequest>,
) -> Result<Response, DirectoryError> {
    let owned = state
        .blocking(move |d| {
            d.own_volumes(
                &request.owner,
                &request.instance,
                &request.volumes,
                request.lease_ms,
                now_ms(),
            )
        })
        .await?;
    Ok(axum::Json(owned).into_response())
}

async fn mark_replica_stale(
    State(state): State<AppState>,
    Path((vid, node)): Path<(String, String)>,
    JsonBody(request): JsonBody<StaleRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let node_id = node.clone();
    let missed_delete = request.missed_delete;
    let volume = state
        .blocking(move |d| d.mark_replica_stale(vid, &node_id, missed_delete))
        .await?;
    tracing::warn!(volume = vid, replica = %node, missed_delete, reason = %request.reason,
        "replica reported stale");
    // The delete is acknowledged after this answer: no lease granted
    // before the mark may still let a client read the BLOB there.
    if missed_delete {
        state.read_leases.wait_out(&node, vid).await;
    }
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/seal/begin`: a new seal attempt of a locked volume.
async fn begin_seal(
    State(state): State<AppState>,
    Path(vid): Path<String>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let volume = state.blocking(move |d| d.begin_seal(vid)).await?;
    tracing::info!(
        volume = vid,
        generation = volume.last_generation,
        "seal attempt begun"
    );
    stop_direct_reads(&state, &volume).await?;
    Ok(axum::Json(volume).into_response())
}

/// Time a store node has to stop a sealing volume's direct reads before the
/// seal waits for its read lease instead.
const STOP_DIRECT_READS_TIMEOUT: Duration = Duration::from_secs(1);

/// Ends direct reads of sealing `volume` at every replica before the seal
/// goes on: after its flip a delete goes to the warm journal alone, and no
/// lease granted from now on names the volume. A replica that cannot be
/// told (down, or it does not answer in time) has the leases that name the
/// volume run out instead.
async fn stop_direct_reads(state: &AppState, volume: &LogicalVolume) -> Result<(), DirectoryError> {
    let nodes = state.blocking(|d| d.list_nodes()).await?;
    let nodes = &nodes;
    let stops = volume.replicas.iter().map(|replica| async move {
        let node = nodes.iter().find(|n| &n.id == replica && n.is_up());
        let stopped = match node {
            Some(node) => {
                let url = node.base_url();
                let stop = state.stores.stop_direct_reads(&url, volume.id);
                match tokio::time::timeout(STOP_DIRECT_READS_TIMEOUT, stop).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(volume = volume.id, node = %replica, error = %e,
                            "stopping direct reads failed");
                        false
                    }
                    Err(_) => false,
                }
            }
            None => false,
        };
        if !stopped {
            state.read_leases.wait_out(replica, volume.id).await;
        }
    });
    futures::future::join_all(stops).await;
    Ok(())
}

/// `POST /volumes/{vid}/seal/place`: placement of the attempt's blocks and
/// journal holders on the cell.
async fn place_warm(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    JsonBody(request): JsonBody<PlaceRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let allow = state.allow_fewer_racks;
    let volume = state
        .blocking(move |d| d.place_warm(vid, request, allow))
        .await?;
    if let Some(warm) = &volume.warm {
        tracing::info!(
            volume = vid,
            generation = warm.generation,
            stripes = warm.stripes.len(),
            tolerated_rack_losses = warm.tolerated_rack_losses,
            "warm volume placed"
        );
    }
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/seal/journal` (the attempt's journal takes
/// deletes), `POST /volumes/{vid}/seal/commit` (the volume is warm) and
/// `POST /volumes/{vid}/seal/abort` (the attempt is dropped).
async fn end_seal(
    State(state): State<AppState>,
    Path((vid, step)): Path<(String, String)>,
    JsonBody(request): JsonBody<GenerationRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let generation = request.generation;
    let end: fn(&dyn Directory, u32, u64) -> Result<LogicalVolume, DirectoryError> =
        match step.as_str() {
            "journal" => |d, vid, generation| d.open_journal(vid, generation),
            "commit" => |d, vid, generation| d.commit_warm(vid, generation),
            "abort" => |d, vid, generation| d.abort_seal(vid, generation),
            _ => return Ok(not_found().await.into_response()),
        };
    let volume = state.blocking(move |d| end(d, vid, generation)).await?;
    tracing::info!(volume = vid, generation, step = %step, "seal attempt ended");
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/holders/{node}/stale`: a journal holder missed a
/// delete.
async fn holder_stale(
    State(state): State<AppState>,
    Path((vid, node)): Path<(String, String)>,
    JsonBody(request): JsonBody<StaleRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let id = node.clone();
    let volume = state
        .blocking(move |d| d.set_holder_stale(vid, &id, None))
        .await?;
    tracing::warn!(volume = vid, holder = %node, reason = %request.reason, "journal holder stale");
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/holders/{node}/fresh`: a holder merged the others'
/// journals.
async fn holder_fresh(
    State(state): State<AppState>,
    Path((vid, node)): Path<(String, String)>,
    JsonBody(request): JsonBody<FreshRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let id = node.clone();
    let volume = state
        .blocking(move |d| d.set_holder_stale(vid, &id, Some(request.epoch)))
        .await?;
    tracing::info!(volume = vid, holder = %node, "journal holder fresh again");
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/blocks/damaged`: a block failed a read.
async fn report_damaged_block(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    JsonBody(request): JsonBody<DamagedBlockRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let now = now_ms();
    tracing::warn!(volume = vid, stripe = request.stripe, block = request.block,
        node = %request.node, reason = %request.reason, "damaged block reported");
    let volume = state
        .blocking(move |d| d.report_damaged_block(vid, &request, now))
        .await?;
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/blocks/rebuilt`: a block was restored whole.
async fn record_rebuilt_block(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    JsonBody(request): JsonBody<RebuiltBlockRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let (stripe, block, node) = (request.stripe, request.block, request.node.clone());
    let now = now_ms();
    let volume = state
        .blocking(move |d| d.record_rebuilt_block(vid, &request, now))
        .await?;
    tracing::info!(volume = vid, stripe, block, node = %node, "rebuilt block recorded");
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/rebuilds/{stripe}/claim`: a coordinator claims a
/// stripe's rebuild job with its plan.
async fn claim_rebuild(
    State(state): State<AppState>,
    Path((vid, stripe)): Path<(String, String)>,
    JsonBody(request): JsonBody<RebuildClaimRequest>,
) -> Result<Response, DirectoryError> {
    let (vid, stripe) = parse_stripe(&vid, &stripe)?;
    let now = now_ms();
    let job = state
        .blocking(move |d| d.claim_rebuild(vid, stripe, &request, now))
        .await?;
    tracing::info!(volume = vid, stripe, owner = %job.owner, attempt = job.attempts,
        blocks = ?job.blocks, "rebuild claimed");
    Ok(axum::Json(job).into_response())
}

/// `POST /volumes/{vid}/rebuilds/{stripe}/renew`.
async fn renew_rebuild(
    State(state): State<AppState>,
    Path((vid, stripe)): Path<(String, String)>,
    JsonBody(request): JsonBody<RenewRequest>,
) -> Result<Response, DirectoryError> {
    let (vid, stripe) = parse_stripe(&vid, &stripe)?;
    let now = now_ms();
    let job = state
        .blocking(move |d| d.renew_rebuild(vid, stripe, &request, now))
        .await?;
    Ok(axum::Json(job).into_response())
}

/// `POST /volumes/{vid}/rebuilds/{stripe}/end`: the job is done (answers
/// `null`) or its attempt failed (answers the job, released).
async fn end_rebuild(
    State(state): State<AppState>,
    Path((vid, stripe)): Path<(String, String)>,
    JsonBody(request): JsonBody<EndRequest>,
) -> Result<Response, DirectoryError> {
    let (vid, stripe) = parse_stripe(&vid, &stripe)?;
    let now = now_ms();
    let job = state
        .blocking(move |d| d.end_rebuild(vid, stripe, &request, now))
        .await?;
    tracing::info!(volume = vid, stripe, error = ?job.as_ref().and_then(|j| j.last_error.as_ref()),
        "rebuild ended");
    Ok(axum::Json(job).into_response())
}

/// `DELETE /volumes/{vid}/rebuilds/{stripe}[?attempts=N]`: a job no one
/// holds goes (if still at attempt `N`).
async fn drop_rebuild(
    State(state): State<AppState>,
    Path((vid, stripe)): Path<(String, String)>,
    query: Result<axum::extract::Query<DropQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DirectoryError> {
    let (vid, stripe) = parse_stripe(&vid, &stripe)?;
    let axum::extract::Query(query) =
        query.map_err(|e| DirectoryError::BadRequest(e.body_text()))?;
    let now = now_ms();
    state
        .blocking(move |d| d.drop_rebuild(vid, stripe, query.attempts, now))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /companions`: a new companion volume of warm primaries (a copy,
/// or two buddies' XOR), placed and linked.
async fn create_companion(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CompanionRequest>,
) -> Result<Response, DirectoryError> {
    let allow = state.allow_fewer_racks;
    let now = now_ms();
    let companion = state
        .blocking(move |d| d.create_companion(&request, allow, now))
        .await?;
    tracing::info!(volume = companion.id, of = ?companion.geo.of, "companion volume created");
    Ok((StatusCode::CREATED, axum::Json(companion)).into_response())
}

/// Query of `DELETE /companions/{vid}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DropCompanionQuery {
    /// The holder of the companion's job claim, if the caller is it.
    owner: Option<String>,
}

/// `GET /companions/dropped?after=V&limit=N`: a page of dropped companions'
/// ids.
async fn list_dropped_companions(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<VolumePageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DirectoryError> {
    let (volumes, next_after) = page_by_volume(
        &state,
        query,
        |d, after, limit| d.dropped_companions(after, limit),
        |&v| v,
    )
    .await?;
    Ok(axum::Json(DroppedPage {
        volumes,
        next_after,
    })
    .into_response())
}

/// `DELETE /companions/{vid}[?owner=O]`: the companion and its links
/// removed.
async fn drop_companion(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    query: Result<
        axum::extract::Query<DropCompanionQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let axum::extract::Query(query) =
        query.map_err(|e| DirectoryError::BadRequest(e.body_text()))?;
    let now = now_ms();
    state
        .blocking(move |d| d.drop_companion(vid, query.owner.as_deref(), now))
        .await?;
    tracing::info!(volume = vid, "companion volume dropped");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /rebuilds?after_volume=V&after_stripe=S&limit=N`.
async fn list_rebuilds(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<RebuildQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DirectoryError> {
    let axum::extract::Query(query) =
        query.map_err(|e| DirectoryError::BadRequest(e.body_text()))?;
    let (after, limit) = query.page().map_err(DirectoryError::BadRequest)?;
    let jobs = state.blocking(move |d| d.rebuilds(after, limit)).await?;
    let next_after = next_after(&jobs, limit, |j| (j.volume, j.stripe));
    Ok(axum::Json(RebuildPage { jobs, next_after }).into_response())
}

/// `POST /volumes/{vid}/holders/{node}/replace`: a lost journal holder's
/// place goes to another node.
async fn replace_holder(
    State(state): State<AppState>,
    Path((vid, node)): Path<(String, String)>,
    JsonBody(request): JsonBody<ReplaceHolderRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let (id, to) = (node.clone(), request.node.clone());
    let volume = state
        .blocking(move |d| d.replace_holder(vid, &id, &request))
        .await?;
    tracing::warn!(volume = vid, lost = %node, holder = %to, "journal holder replaced");
    Ok(axum::Json(volume).into_response())
}

/// `POST /volumes/{vid}/migration/claim`: a migrator claims (or renews)
/// the volume's migration job.
async fn claim_migration(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    JsonBody(request): JsonBody<ClaimRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let now = now_ms();
    let job = state
        .blocking(move |d| d.claim_migration(vid, &request.owner, request.lease_ms, now))
        .await?;
    tracing::info!(volume = vid, owner = %job.owner, attempt = job.attempts, "migration claimed");
    Ok(axum::Json(job).into_response())
}

/// `POST /volumes/{vid}/migration/step`: the claim's holder reports a step.
async fn migration_step(
    State(state): State<AppState>,
    Path(vid): Path<String>,
    JsonBody(request): JsonBody<StepRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let now = now_ms();
    let job = state
        .blocking(move |d| d.update_migration(vid, &request, now))
        .await?;
    tracing::info!(volume = vid, step = ?job.step, error = ?job.last_error, "migration step");
    Ok(axum::Json(job).into_response())
}

/// `GET /migrations?after=V&limit=N`: a page of migration jobs.
async fn list_migrations(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<VolumePageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DirectoryError> {
    let (jobs, next_after) = page_by_volume(
        &state,
        query,
        |d, after, limit| d.migrations(after, limit),
        |j| j.volume,
    )
    .await?;
    Ok(axum::Json(MigrationPage { jobs, next_after }).into_response())
}

fn parse_key(text: &str) -> Result<u64, DirectoryError> {
    haystack::api::parse_key(text).ok_or_else(|| {
        DirectoryError::BadRequest(format!("needle key {text:?} is not 1-16 lowercase hex"))
    })
}

/// `POST /volumes/{vid}/needles/{key}/damaged`: a replica's copy of a needle
/// failed its checks; the repair loop mends it from a good copy.
async fn report_damaged_needle(
    State(state): State<AppState>,
    Path((vid, key)): Path<(String, String)>,
    JsonBody(request): JsonBody<DamagedRequest>,
) -> Result<Response, DirectoryError> {
    let vid = parse_vid(&vid)?;
    let key = parse_key(&key)?;
    let now = now_ms();
    let node = request.node.clone();
    let needle = state
        .blocking(move |d| d.report_damaged_needle(vid, key, &node, request.cookie, now))
        .await?;
    tracing::warn!(volume = vid, key, replica = %request.node, reason = %request.reason,
        "damaged needle reported");
    Ok(axum::Json(needle).into_response())
}

/// `GET /damaged-needles?after_volume=V&after_key=K&limit=N`.
async fn list_damaged_needles(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<DamagedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, DirectoryError> {
    let axum::extract::Query(query) =
        query.map_err(|e| DirectoryError::BadRequest(e.body_text()))?;
    let (after, limit) = query.page().map_err(DirectoryError::BadRequest)?;
    let needles = state
        .blocking(move |d| d.damaged_needles(after, limit))
        .await?;
    let next_after = next_after(&needles, limit, |n| (n.volume, n.key));
    Ok(axum::Json(DamagedPage {
        needles,
        next_after,
    })
    .into_response())
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
    )
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint".into(),
    )
}

/// Answers 503 `timeout` for a request that takes longer than allowed.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("request took longer than {} ms", limit.as_millis()),
        ),
    }
}

fn router(state: AppState, config: &DirectoryConfig) -> Router {
    let limit = BodyLimit(config.max_body_bytes);
    Router::new()
        .route("/health", get(health))
        .route("/nodes", post(register_node).get(list_nodes))
        .route("/nodes/{id}", delete(remove_node))
        .route("/nodes/{id}/heartbeat", post(heartbeat))
        .route("/nodes/{id}/read-lease", post(read_lease))
        .route("/volumes", post(allocate_volume).get(list_volumes))
        .route("/volumes/{vid}", get(get_volume))
        .route("/volumes/{vid}/state", post(set_volume_state))
        .route("/volumes/{vid}/leases", post(lease_keys))
        .route("/ownership", post(own_volumes))
        .route(
            "/volumes/{vid}/replicas/{node}/stale",
            post(mark_replica_stale),
        )
        .route(
            "/volumes/{vid}/needles/{key}/damaged",
            post(report_damaged_needle),
        )
        .route("/damaged-needles", get(list_damaged_needles))
        .route("/volumes/{vid}/seal/begin", post(begin_seal))
        .route("/volumes/{vid}/seal/place", post(place_warm))
        .route("/volumes/{vid}/seal/{step}", post(end_seal))
        .route("/volumes/{vid}/holders/{node}/stale", post(holder_stale))
        .route("/volumes/{vid}/holders/{node}/fresh", post(holder_fresh))
        .route(
            "/volumes/{vid}/holders/{node}/replace",
            post(replace_holder),
        )
        .route("/volumes/{vid}/blocks/damaged", post(report_damaged_block))
        .route("/volumes/{vid}/blocks/rebuilt", post(record_rebuilt_block))
        .route(
            "/volumes/{vid}/rebuilds/{stripe}",
            axum::routing::delete(drop_rebuild),
        )
        .route(
            "/volumes/{vid}/rebuilds/{stripe}/claim",
            post(claim_rebuild),
        )
        .route(
            "/volumes/{vid}/rebuilds/{stripe}/renew",
            post(renew_rebuild),
        )
        .route("/volumes/{vid}/rebuilds/{stripe}/end", post(end_rebuild))
        .route("/rebuilds", get(list_rebuilds))
        .route("/volumes/{vid}/migration/claim", post(claim_migration))
        .route("/volumes/{vid}/migration/step", post(migration_step))
        .route("/migrations", get(list_migrations))
        .route("/companions", post(create_companion))
        .route("/companions/dropped", get(list_dropped_companions))
        .route("/companions/{vid}", axum::routing::delete(drop_companion))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            req.extensions_mut().insert(limit);
            next.run(req)
        }))
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(config.request_timeout_ms),
            request_timeout,
        ))
        .with_state(state)
}

/// Serves the directory on `listener` until `cancel` fires, then lets
/// in-flight requests finish (up to `server.shutdown_grace_ms`) and returns.
///
/// Opens `config.data_dir/directory.redb`, gives every node a fresh heartbeat
/// grace period (nothing is marked down before `heartbeat_timeout_ms` has
/// passed since start), and runs the down-marker and the repair loop.
pub async fn run(
    config: DirectoryConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), DirectoryError> {
    config.validate()?;
    let data_dir = config.data_dir.clone();
    let directory: Arc<dyn Directory> = Arc::new(
        tokio::task::spawn_blocking(move || RedbDirectory::open(&data_dir))
            .await
            .map_err(|e| DirectoryError::Internal(format!("open task: {e}")))??,
    );
    let stores = StoreCalls::new(
        Duration::from_millis(config.store_request_timeout_ms),
        Duration::from_millis(config.sync_timeout_ms),
    )
    .map_err(|e| DirectoryError::Internal(format!("HTTP client: {e}")))?;
    let state = AppState {
        directory: Arc::clone(&directory),
        permits: Arc::new(Semaphore::new(MAX_BLOCKING_OPERATIONS)),
        stores: stores.clone(),
        allow_fewer_racks: config.allow_fewer_racks,
        read_leases: Arc::new(ReadLeases::new(config.read_lease_ms)),
    };
    let loops_cancel = cancel.child_token();
    let mut loops = JoinSet::new();
    loops.spawn(run_down_marker(
        Arc::clone(&directory),
        config.heartbeat_timeout_ms,
        loops_cancel.clone(),
    ));
    loops.spawn(run_repair_loop(
        Arc::clone(&directory),
        stores,
        Duration::from_millis(config.repair_interval_ms.max(10)),
        loops_cancel.clone(),
    ));
    tracing::info!(address = ?listener.local_addr().ok(), "directory serving");
    let options = config.server.serve_options();
    haystack::http::serve(listener, router(state, &config), options, cancel).await;
    loops_cancel.cancel();
    while loops.join_next().await.is_some() {}
    tracing::info!("directory stopped");
    Ok(())
}

/// Marks silent nodes down every quarter of the heartbeat timeout, once the
/// start-up grace period (one timeout) has passed.
async fn run_down_marker(
    directory: Arc<dyn Directory>,
    timeout_ms: u64,
    cancel: CancellationToken,
) {
    let started_ms = now_ms();
    let period = Duration::from_millis((timeout_ms / 4).max(10));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let now = now_ms();
        if now < started_ms.saturating_add(timeout_ms) {
            continue;
        }
        let dir = Arc::clone(&directory);
        let result = tokio::task::spawn_blocking(move || dir.mark_down_expired(now, timeout_ms))
            .await
            .map_err(|e| DirectoryError::Internal(e.to_string()))
            .and_then(|r| r);
        match result {
            Ok(changed) => {
                for volume in changed {
                    tracing::warn!(volume = volume.id, state = %volume.state,
                        stale = ?volume.stale_replicas, "replica node down");
                }
            }
            Err(e) => tracing::error!(error = %e, "marking silent nodes down failed"),
        }
    }
}
