//! The public HTTP API of Hayloft (`docs/ARCHITECTURE.md`, "Public HTTP
//! API"): upload, read, range-read and delete BLOBs; health, metrics, a
//! status page and admin listings.
//!
//! - [`config`]: the options, [`RouterConfig`].
//! - [`id`]: the BLOB id's text form ([`BlobId`]).
//! - [`range`]: `Range` header handling.
//! - [`error`]: the one error type ([`ApiError`]) and its status mapping.
//! - `pool`: the writable volumes this router uploads to, one upload each.
//! - `upload`, `read`, `admin`: the handlers; `state`: shared state and the
//!   directory cache; `metrics`: the Prometheus recorder.
//!
//! [`run`] serves the API on a listener until cancelled; [`router`] builds
//! the axum `Router` alone (tests).

pub mod config;
pub mod error;
pub mod id;
pub mod range;

mod admin;
pub mod coordinate;
pub mod geo;
pub mod locations;
mod metrics;
pub mod migrate;
mod ownership;
mod pool;
mod read;
mod reports;
mod scrub;
mod seal;
mod source;
mod state;
mod upload;
mod warm;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router as AxumRouter;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::RouterConfig;
pub use error::ApiError;
pub use id::BlobId;

use state::AppState;

/// How often histogram samples are folded into buckets between scrapes.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The response header naming the tier that served a read or a delete
/// ([`Tier`]): what a client (the efficiency benchmark) sorts latencies by.
pub const TIER_HEADER: http::HeaderName = http::HeaderName::from_static("x-hayloft-tier");

/// The storage tier that served a request, put in response extensions for
/// the metrics middleware, and named to the client in [`TIER_HEADER`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tier(&'static str);

impl Tier {
    /// The replicated Haystack tier.
    pub(crate) const HOT: Tier = Tier("hot");
    /// The warm tier, read from the block holding the data.
    pub(crate) const WARM: Tier = Tier("warm");
    /// The warm tier, with a range decoded by a backoff node.
    pub(crate) const DEGRADED: Tier = Tier("degraded");
    /// The geo layer: the volume's cell could not serve it, its copy or
    /// its buddy and their XOR did.
    pub(crate) const GEO: Tier = Tier("geo");
}

/// The `ETag` of a BLOB: its id with the comma turned into a dash
/// (`"3-01637037d6"`), quoted. Ids are never reused and content never
/// changes, so the id is a strong validator that needs no read; the comma
/// goes because `If-None-Match` is a comma-separated list.
pub(crate) fn etag_for(id: &BlobId) -> String {
    use std::fmt::Write as _;
    let mut etag = String::with_capacity(40);
    let _ = write!(etag, "\"{id}\"");
    if let Some(comma) = etag.find(',') {
        etag.replace_range(comma..=comma, "-");
    }
    etag
}

/// The axum router of the public API, with its own state and metrics.
/// Nothing is contacted until a request arrives.
pub fn router(config: RouterConfig) -> Result<AxumRouter, ApiError> {
    Ok(build(Arc::new(AppState::new(config)?)))
}

fn build(state: Arc<AppState>) -> AxumRouter {
    AxumRouter::new()
        .route("/", get(admin::status_page))
        .route("/health", get(admin::health))
        .route("/metrics", get(admin::metrics))
        .route("/admin/volumes", get(admin::volumes))
        .route("/admin/nodes", get(admin::nodes))
        .route("/admin/nodes/{id}", delete(admin::remove_node))
        .route("/admin/damaged-needles", get(admin::damaged_needles))
        .route("/admin/volumes/{id}/seal", post(seal::seal_volume))
        .route("/admin/volumes/{id}/refresh", post(seal::refresh_volume))
        .route("/admin/migrate", post(migrate::migrate_now))
        .route(
            "/admin/repair",
            get(coordinate::repair_status).post(coordinate::repair_now),
        )
        .route("/admin/scrub", post(scrub::scrub_now))
        .route("/admin/volumes/{id}/migrate", post(migrate::migrate_volume))
        .route("/admin/migrations", get(migrate::migrations))
        .route("/blobs", post(upload::post_blob))
        .route("/volumes/{id}/locations", get(locations::volume_locations))
        .route(
            "/blobs/{*id}",
            get(read::get_blob).delete(read::delete_blob),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(RecordMetricsLayer {
            state: state.clone(),
        })
        .with_state(state)
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The method and route of a request, the parts of a bounded metrics label
/// (`GET /blobs/{id}`).
fn route_label(method: &axum::http::Method, path: &str) -> (&'static str, &'static str) {
    let route = match path {
        "/" => "/",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/admin/volumes" => "/admin/volumes",
        "/admin/nodes" => "/admin/nodes",
        p if p.starts_with("/admin/nodes/") => "/admin/nodes/{id}",
        "/admin/migrate" => "/admin/migrate",
        "/admin/repair" => "/admin/repair",
        "/admin/scrub" => "/admin/scrub",
        "/admin/migrations" => "/admin/migrations",
        "/blobs" => "/blobs",
        p if p.starts_with("/blobs/") => "/blobs/{id}",
        _ => "other",
    };
    let method = match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "OTHER",
    };
    (method, route)
}

/// Counts and times every request by route, tier and status: a plain
/// service around each route (axum's `from_fn` middleware would clone the
/// inner service into a `Next` and box a future per request).
#[derive(Clone)]
struct RecordMetricsLayer {
    state: Arc<AppState>,
}

impl<S> tower::Layer<S> for RecordMetricsLayer {
    type Service = RecordMetrics<S>;

    fn layer(&self, inner: S) -> RecordMetrics<S> {
        RecordMetrics {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service of [`RecordMetricsLayer`].
#[derive(Clone)]
struct RecordMetrics<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> tower::Service<Request> for RecordMetrics<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RecordMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = route_label(request.method(), request.uri().path());
        RecordMetricsFuture {
            inner: self.inner.call(request),
            state: self.state.clone(),
            route,
            started: Instant::now(),
        }
    }
}

/// The future of [`RecordMetrics`]: the route's, then one record.
struct RecordMetricsFuture<F> {
    inner: F,
    state: Arc<AppState>,
    route: (&'static str, &'static str),
    started: Instant,
}

impl<F> Future for RecordMetricsFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut response) = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        let tier = response.extensions().get::<Tier>().map_or("none", |t| t.0);
        if tier != "none" {
            response
                .headers_mut()
                .insert(TIER_HEADER, http::HeaderValue::from_static(tier));
        }
        self.state.metrics.record_request(
            self.route,
            tier,
            response.status().as_u16(),
            self.started.elapsed().as_secs_f64(),
        );
        Poll::Ready(Ok(response))
    }
}

/// Runs `pass` now, then again `interval` after each one ends, until
/// `cancel` fires (a pass under way is dropped then): the background loop
/// of the migrator and the coordinator.
pub(crate) fn repeat<F, Fut>(
    interval: Duration,
    cancel: CancellationToken,
    mut pass: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = pass() => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// Serves the public API on `listener` until `cancel` fires, then stops
/// accepting, lets in-flight requests finish (for at most
/// `server.shutdown_grace_ms`) and returns.
///
/// Connections are HTTP/1.1 served by hyper with an explicit header-read
/// timeout (hyper's is off unless a timer is set); request bodies have an
/// idle timeout enforced by the upload handler.
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), ApiError> {
    let options = config.server.serve_options();
    let state = Arc::new(AppState::new(config)?);
    let app = build(state.clone());
    // The volumes an earlier run of this router owned go back into its pool
    // before it takes uploads.
    match ownership::renew(&state).await {
        Ok(resumed) if resumed > 0 => tracing::info!(resumed, "took back owned volumes"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "claiming owned volumes failed; retried later"),
    }
    let claims = tokio::spawn(ownership::run(state.clone(), cancel.clone()));
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "router serving");
    }

    let upkeep_state = state.clone();
    let upkeep_cancel = cancel.clone();
    let upkeep = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = upkeep_cancel.cancelled() => break,
                _ = ticks.tick() => upkeep_state.metrics.run_upkeep(),
            }
        }
    });

    haystack::http::serve(listener, app, options, cancel).await;
    let _ = upkeep.await;
    let _ = claims.await;
    tracing::info!("router stopped");
    Ok(())
}
