//! The accept loop: hyper HTTP/1 connections with a header-read timeout, a
//! bound on open connections, and graceful shutdown on cancellation.
//!
//! `axum::serve` sets no header-read timeout (hyper needs a timer for it),
//! so a client that sends half a request line would hold a connection
//! forever. Here each connection is served by hyper's HTTP/1 builder with
//! `TokioTimer` and `header_read_timeout`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{ServiceError, StoreNodeConfig};

/// Pause after a failed `accept` (e.g. out of file descriptors) before the
/// next try, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `cancel` fires, then stops accepting,
/// lets in-flight requests finish for up to `config.shutdown_grace_ms`, and
/// closes the remaining connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &StoreNodeConfig,
    cancel: CancellationToken,
) -> Result<(), ServiceError> {
    let connection_permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        // Lets a client half-close after a short body and still read the
        // 400 that explains it.
        .half_close(true);
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = connection_permits.clone().acquire_owned() => {
                permit.map_err(|_| ServiceError::Internal("connection semaphore closed".into()))?
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
        let app = app.clone();
        let builder = builder.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let app = app.clone();
                async move { app.oneshot(request.map(Body::new)).await }
            });
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
    drop(listener);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace ran out; closing connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}
