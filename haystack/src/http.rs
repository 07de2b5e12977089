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

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors) before the
/// next try, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

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
