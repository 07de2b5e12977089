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
