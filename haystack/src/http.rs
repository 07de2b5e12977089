//! The HTTP/1 accept loop every Hayloft service shares (store node,
//! directory, router): a header-read timeout, a bound on open connections,
//! and graceful shutdown on cancellation.
//!
//! `axum::serve` sets no header-read timeout (hyper needs a timer for it),
//! so a client that sends half a request line would hold a connection
//! forever. Here each connection is served by hyper's HTTP/1 builder with
//! `TokioTimer` and `header_read_timeout`. The same timeout also closes idle
//! keep-alive connections, which is why clients' pools drop idle connections
//! sooner (see `client::POOL_IDLE_TIMEOUT_MS`).
//!
//! The data-plane services (the store node here, the f4 storage and backoff
//! nodes) also share their error answer ([`ApiError`]: a status, a stable
//! code in the JSON body and in [`crate::api::ERROR_HEADER`]), the request
//! deadline ([`deadline`]), the fallbacks and `/health`, and the bounded
//! hand-off of file work to the blocking pool ([`bounded_blocking`]).

use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use axum::Json;
use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors) before the
/// next try, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The server knobs every Hayloft HTTP service shares (store node,
/// directory, router, and the roles to come), defined once with one default
/// each. A service's config holds them as its `server` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLimits {
    /// A client must send a request's headers within this time, counted
    /// from when the connection is ready for a request; so an idle
    /// keep-alive connection is also closed after it. Clients drop idle
    /// pooled connections sooner (see [`crate::client::POOL_IDLE_TIMEOUT_MS`]).
    #[serde(default = "ServerLimits::default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Connections served at once; further ones wait in the listen backlog.
    #[serde(default = "ServerLimits::default_max_connections")]
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests get to finish.
    #[serde(default = "ServerLimits::default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

/// Default deadline of one request a service handles, and of one request a
/// role makes to another (the binary's `request_timeout_ms`): 30 s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// The lowest port "any free port" is taken from
/// ([`free_port_candidates`]): above the usual fixed ones (SeaweedFS's
/// 8080 and 9333 and their gRPC ports at +10000, for one).
const FREE_PORTS_FROM: u16 = 20_000;

/// Up to `tries` random ports to try for "any free port" (port 0), between
/// [`FREE_PORTS_FROM`] and the start of the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`); none where there is no such
/// room. A port from the ephemeral range can go to any outgoing connection
/// while its node is down, and a node restarted by hand must bind the same
/// port again.
pub fn free_port_candidates(tries: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    let Some(ephemeral_from) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
    else {
        return Vec::new();
    };
    let room = ephemeral_from.saturating_sub(FREE_PORTS_FROM);
    if room < 1_000 {
        return Vec::new();
    }
    // std's hasher keys are random per call: clusters starting side by side
    // rarely try the same ports.
    let seed = std::collections::hash_map::RandomState::new();
    (0..tries as u64)
        .map(|n| {
            let mut hasher = seed.build_hasher();
            hasher.write_u64(n);
            FREE_PORTS_FROM + (hasher.finish() % u64::from(room)) as u16
        })
        .collect()
}

impl ServerLimits {
    /// Default of [`ServerLimits::header_read_timeout_ms`]: 10 s.
    pub fn default_header_read_timeout_ms() -> u64 {
        10_000
    }
    /// Default of [`ServerLimits::max_connections`]: 1024.
    pub fn default_max_connections() -> usize {
        1024
    }
    /// Default of [`ServerLimits::shutdown_grace_ms`]: 10 s.
    pub fn default_shutdown_grace_ms() -> u64 {
        10_000
    }

    /// Refuses a zero timeout or connection cap, or a cap a semaphore
    /// cannot hold; the message names the knob.
    pub fn validate(&self) -> Result<(), String> {
        if self.header_read_timeout_ms == 0 {
            return Err("server.header_read_timeout_ms must be positive".into());
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(format!(
                "server.max_connections must be 1 to {}",
                Semaphore::MAX_PERMITS
            ));
        }
        Ok(())
    }

    /// The accept loop's options.
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout_ms: Self::default_header_read_timeout_ms(),
            max_connections: Self::default_max_connections(),
            shutdown_grace_ms: Self::default_shutdown_grace_ms(),
        }
    }
}

/// Limits of one HTTP server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A request's headers must arrive within this long; an idle keep-alive
    /// connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// After cancellation, in-flight requests get this long to finish before
    /// the remaining connections are closed.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `cancel` fires, then stops accepting,
/// lets in-flight requests finish for up to `options.shutdown_grace`, and
/// closes the remaining connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    cancel: CancellationToken,
) {
    let connection_permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true)
        // Lets a client half-close after a short body and still read the
        // 400 that explains it.
        .half_close(true);
    let mut connections = JoinSet::new();
    let in_process = listener
        .local_addr()
        .ok()
        .and_then(|address| crate::local::enter(address, &app));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = connection_permits.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(in_process);
    drop(listener);
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace period over; closing open connections"
        );
        connections.shutdown().await;
    }
}

/// An error answer of a data-plane service: status, stable code (see
/// [`crate::api::code`]) and message, sent as the JSON
/// [`crate::api::ErrorBody`] with the code also in
/// [`crate::api::ERROR_HEADER`] (so that a `HEAD` answer says it too).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// An answer of `status` with `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            crate::api::code::BAD_REQUEST,
            message,
        )
    }

    /// `413 payload_too_large`.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            crate::api::code::PAYLOAD_TOO_LARGE,
            message,
        )
    }

    /// `500 internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::api::code::INTERNAL,
            message,
        )
    }

    /// `503 timeout`.
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::api::code::TIMEOUT,
            message,
        )
    }

    /// `502 peer`: a node this one called failed.
    pub fn peer(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, crate::api::code::PEER, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = crate::api::ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        let code = [(
            HeaderName::from_static(crate::api::ERROR_HEADER),
            HeaderValue::from_static(self.code),
        )];
        (self.status, code, Json(body)).into_response()
    }
}

/// Runs a route's handler under `timeout`, answering `503 timeout` past it.
/// A plain future around the route's (no middleware `Next`, no extra
/// boxing): it wraps every request.
pub async fn deadline(
    timeout: Duration,
    handler: RouteFuture<Infallible>,
) -> Result<Response, Infallible> {
    match tokio::time::timeout(timeout, handler).await {
        Ok(response) => response,
        Err(_) => Ok(ApiError::timeout("request timed out").into_response()),
    }
}

/// The fallback of a data-plane service: `404 no_route`.
pub async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        crate::api::code::NO_ROUTE,
        "no such route",
    )
}

/// The method fallback of a data-plane service: `405 no_route`.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        crate::api::code::NO_ROUTE,
        "method not allowed",
    )
}

/// `GET /health` of a data-plane service.
pub async fn health() -> Json<crate::api::HealthBody> {
    Json(crate::api::HealthBody {
        status: "ok".to_owned(),
    })
}

/// Runs `f` on the blocking pool once one of `permits` is free. The permit
/// moves into the task, so the bound holds even when the request is
/// dropped before `f` returns.
pub async fn bounded_blocking<T, E, F>(permits: &Arc<Semaphore>, f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    E: Into<ApiError> + Send + 'static,
    T: Send + 'static,
{
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("io semaphore closed"))?;
    let joined = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await;
    match joined {
        Ok(result) => result.map_err(Into::into),
        Err(e) => {
            tracing::error!(error = %e, "blocking task failed");
            Err(ApiError::internal("blocking task failed"))
        }
    }
}

/// The next chunk of a request body, waiting at most `idle` for it (a
/// `408 bad_request` after that).
pub async fn next_body_chunk(
    stream: &mut BodyDataStream,
    idle: Duration,
) -> Result<Option<Result<Bytes, axum::Error>>, ApiError> {
    tokio::time::timeout(idle, stream.next())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                crate::api::code::BAD_REQUEST,
                "request body stalled",
            )
        })
}

/// Most bytes of a refused batch body read and dropped before the refusal.
pub const REFUSED_BODY_DRAIN_BYTES: usize = 64 * 1024;

/// Reads and drops the rest of a refused body, up to [`REFUSED_BODY_DRAIN_BYTES`] and with
/// at most `idle` between chunks: closing a socket with unread input makes the kernel reset
/// it, and the client would see the reset instead of the `400`.
pub async fn drain(stream: &mut axum::body::BodyDataStream, idle: Duration) {
    let mut seen = 0;
    while seen < REFUSED_BODY_DRAIN_BYTES {
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen += chunk.len(),
            _ => return,
        }
    }
}

/// Reads a body of at most `limit` bytes, with at most `idle` between chunks. A longer body
/// (by `Content-Length` or as it arrives) is a `400`: for bodies of a fixed maximum size,
/// such as read batches.
pub async fn collect_small_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ApiError> {
    let too_long = || ApiError::bad_request(format!("request body above {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if let Some(declared) = declared
        && declared > limit as u64
    {
        if declared <= REFUSED_BODY_DRAIN_BYTES as u64 {
            drain(&mut stream, idle).await;
        }
        return Err(too_long());
    }
    let mut buf = BytesMut::with_capacity(limit);
    loop {
        match next_body_chunk(&mut stream, idle).await? {
            None => return Ok(buf.freeze()),
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "body ended after {} bytes: {e}",
                    buf.len()
                )));
            }
            Some(Ok(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    drain(&mut stream, idle).await;
                    return Err(too_long());
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// A `200` whose body is `chunks` in order (buffers sent as they are, not
/// copied together), with their total as its `Content-Length`: a streamed
/// body has no known length, and with the header hyper sends it plainly
/// rather than chunked.
pub fn chunks_answer(content_type: &'static str, chunks: Vec<Bytes>) -> Response {
    let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let body = Body::from_stream(futures::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_LENGTH, HeaderValue::from(len)),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_taken_below_the_ephemeral_range() {
        let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
            assert!(free_port_candidates(8).is_empty(), "no range, no candidate");
            return;
        };
        let ephemeral_from: u16 = range
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("the range's first port");
        let ports = free_port_candidates(200);
        if ephemeral_from < FREE_PORTS_FROM + 1_000 {
            assert!(ports.is_empty());
            return;
        }
        assert_eq!(ports.len(), 200);
        assert!(
            ports
                .iter()
                .all(|p| (FREE_PORTS_FROM..ephemeral_from).contains(p)),
            "{ports:?}"
        );
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert!(
            distinct.len() > 100,
            "spread, not one port: {}",
            distinct.len()
        );
    }
}
