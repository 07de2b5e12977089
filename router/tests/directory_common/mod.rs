//! Helpers shared by the directory service tests: real store nodes and a
//! real directory service on loopback, in this process.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use haystack::client::StoreClient;
use haystack::service::StoreNodeConfig;
use router::directory::{
    DirectoryClient, DirectoryConfig, DirectoryError, NodeRegistration, NodeRole,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A store node served in-process.
pub struct TestStore {
    pub id: String,
    pub rack: String,
    pub address: String,
    pub client: StoreClient,
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
}

/// Starts a store node with its data under `root/id`.
pub async fn start_store(root: &Path, id: &str, rack: &str) -> TestStore {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind store");
    let address = listener.local_addr().expect("addr").to_string();
    let config = StoreNodeConfig::new(root.join(id));
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        haystack::service::run(config, Default::default(), listener, token)
            .await
            .expect("store node runs");
    });
    let client = StoreClient::new(&address).expect("store client");
    TestStore {
        id: id.to_owned(),
        rack: rack.to_owned(),
        address,
        client,
        cancel,
        task,
    }
}

impl TestStore {
    /// The node's registration with the directory.
    pub fn registration(&self) -> NodeRegistration {
        NodeRegistration {
            id: self.id.clone(),
            role: NodeRole::Store,
            rack: self.rack.clone(),
            datacenter: "dc1".into(),
            address: self.address.clone(),
        }
    }
}

/// A directory service served in-process.
pub struct TestDirectory {
    pub client: DirectoryClient,
    pub address: String,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), DirectoryError>>,
}

/// Starts the directory service with `config`.
pub async fn start_directory(config: DirectoryConfig) -> TestDirectory {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind directory");
    let address = listener.local_addr().expect("addr").to_string();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(router::directory::run(config, listener, cancel.clone()));
    let client = DirectoryClient::new(&address).expect("directory client");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.health().await.is_err() {
        assert!(Instant::now() < deadline, "directory never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    TestDirectory {
        client,
        address,
        cancel,
        task,
    }
}

impl TestDirectory {
    /// Cancels the service and waits for it to return.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("directory stops in time")
            .expect("directory task");
        result.expect("directory returns Ok");
    }
}

/// Heartbeats `id` every `period` while `enabled` holds, until `cancel`.
pub fn spawn_heartbeats(
    client: DirectoryClient,
    id: String,
    period: Duration,
    enabled: Arc<AtomicBool>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if enabled.load(Ordering::SeqCst) {
                let _ = client.heartbeat(&id).await;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    })
}

/// Heartbeats for node `id` every 100 ms until `cancel` fires.
pub fn spawn_steady_heartbeats(
    client: &DirectoryClient,
    id: &str,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    spawn_heartbeats(
        client.clone(),
        id.to_owned(),
        Duration::from_millis(100),
        Arc::new(AtomicBool::new(true)),
        cancel.clone(),
    )
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
