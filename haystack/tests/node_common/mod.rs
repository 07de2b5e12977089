//! A store node served over HTTP on `127.0.0.1:0`, for the test binaries that
//! drive the store node service (`service.rs`, `store_read_batch.rs`,
//! `store_cached_reads.rs`).

#![allow(dead_code)]

use std::time::Duration;

use haystack::service::{self, ServiceError, StoreNodeConfig, StoreNodeState};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server; [`Served::stop`] shuts it down.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Cancels the server (a graceful shutdown).
    pub cancel: CancellationToken,
    handle: JoinHandle<Result<(), ServiceError>>,
}

/// Serves `state` with `config`'s limits on a free loopback port.
pub async fn serve(state: &StoreNodeState, config: StoreNodeConfig) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let cancel = CancellationToken::new();
    let app = service::router(state.clone());
    let token = cancel.clone();
    let handle = tokio::spawn(async move { service::serve(listener, app, &config, token).await });
    Served {
        url,
        cancel,
        handle,
    }
}

impl Served {
    /// Cancels the server and waits (at most 10 s) for it to stop cleanly.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("node stops within 10 s")
            .expect("serve task")
            .expect("serve result");
    }
}
