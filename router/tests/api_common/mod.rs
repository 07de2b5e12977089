//! Helpers shared by the public-API end-to-end tests (`api_e2e`,
//! `upload_streaming`): a directory, store nodes and a router, all
//! in-process on `127.0.0.1:0` with temp directories.

use std::time::Duration;

use haystack::client::StoreClient;
use haystack::service::StoreNodeConfig;
use router::api::RouterConfig;
use router::directory::{DirectoryClient, DirectoryConfig, NodeRegistration, NodeRole};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a test cluster is set up.
pub struct ClusterSpec {
    /// Store nodes, `store-1` in `rack-1` and so on.
    pub store_count: usize,
    /// The directory's `heartbeat_timeout_ms`.
    pub heartbeat_timeout_ms: u64,
    /// The directory's `repair_interval_ms`.
    pub repair_interval_ms: u64,
    /// How often each store node heartbeats.
    pub heartbeat_every: Duration,
    /// How often [`wait_until`] checks while the cluster starts (and in
    /// [`Cluster::wait_until`]); it gives up after 200 checks.
    pub poll_every: Duration,
    /// Adjusts each store node's configuration.
    pub store_config: fn(&mut StoreNodeConfig),
    /// Adjusts the router's configuration.
    pub router_config: fn(&mut RouterConfig),
}

/// A store node served in-process; `front` is what the test put in front
/// of it (see [`start_cluster`]).
pub struct StoreNode<F> {
    pub id: String,
    /// The node's own address.
    pub address: String,
    /// Cancels the node and its heartbeats.
    pub cancel: CancellationToken,
    /// Unread where the front is `()` (`api_e2e`).
    #[allow(dead_code)]
    pub front: F,
}

/// A directory, store nodes and a router; dropping it stops them all.
pub struct Cluster<F> {
    _dir: tempfile::TempDir,
    pub cancel: CancellationToken,
    pub router_url: String,
    pub directory: DirectoryClient,
    pub stores: Vec<StoreNode<F>>,
    pub http: reqwest::Client,
    poll_every: Duration,
}

pub async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    (listener, address)
}

/// Starts a cluster as `spec` says. Each store node is registered with the
/// directory under the address `front(node_address, node_cancel)` returns,
/// with what it returns besides kept as the node's `front` (to register
/// the node's own address: `|address, _| async move { (address, ()) }`).
pub async fn start_cluster<F, Front, Fut>(spec: &ClusterSpec, mut front: Front) -> Cluster<F>
where
    Front: FnMut(String, CancellationToken) -> Fut,
    Fut: Future<Output = (String, F)>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let cancel = CancellationToken::new();
    let poll_every = spec.poll_every;

    let (listener, directory_address) = bind().await;
    let mut directory_config = DirectoryConfig::new(dir.path().join("directory"));
    directory_config.heartbeat_timeout_ms = spec.heartbeat_timeout_ms;
    directory_config.repair_interval_ms = spec.repair_interval_ms;
    tokio::spawn(router::directory::run(
        directory_config,
        listener,
        cancel.clone(),
    ));
    let directory = DirectoryClient::new(&directory_address).expect("directory client");
    wait_until(poll_every, || {
        let directory = directory.clone();
        async move { directory.health().await.is_ok() }
    })
    .await;

    let mut stores = Vec::new();
    for i in 1..=spec.store_count {
        let (listener, address) = bind().await;
        let node_cancel = cancel.child_token();
        let mut config = StoreNodeConfig::new(dir.path().join(format!("store-{i}")));
        (spec.store_config)(&mut config);
        tokio::spawn(haystack::service::run(
            config,
            Default::default(),
            listener,
            node_cancel.clone(),
        ));
        let (registered_address, node_front) =
            front(address.clone(), node_cancel.child_token()).await;
        let id = format!("store-{i}");
        let registration = NodeRegistration {
            id: id.clone(),
            role: NodeRole::Store,
            rack: format!("rack-{i}"),
            datacenter: "dc-1".into(),
            address: registered_address,
        };
        directory.register(&registration).await.expect("register");
        // The binary heartbeats for its nodes; here a task per node does.
        let heartbeat_directory = directory.clone();
        let heartbeat_cancel = node_cancel.clone();
        let heartbeat_id = id.clone();
        let heartbeat_every = spec.heartbeat_every;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = heartbeat_cancel.cancelled() => break,
                    _ = tokio::time::sleep(heartbeat_every) => {
                        let _ = heartbeat_directory.heartbeat(&heartbeat_id).await;
                    }
                }
            }
        });
        stores.push(StoreNode {
            id,
            address,
            cancel: node_cancel,
            front: node_front,
        });
    }
    for store in &stores {
        let client = StoreClient::new(&store.address).expect("store client");
        wait_until(poll_every, || {
            let client = client.clone();
            async move { client.health().await.is_ok() }
        })
        .await;
    }

    let (listener, router_address) = bind().await;
    let mut config = RouterConfig::new(directory_address);
    (spec.router_config)(&mut config);
    tokio::spawn(router::api::run(config, listener, cancel.clone()));
    let router_url = format!("http://{router_address}");
    let http = reqwest::Client::new();
    wait_until(poll_every, || {
        let http = http.clone();
        let url = format!("{router_url}/health");
        async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    Cluster {
        _dir: dir,
        cancel,
        router_url,
        directory,
        stores,
        http,
        poll_every,
    }
}

/// Checks `check` every `every` until it holds; panics after 200 checks.
pub async fn wait_until<C, Fut>(every: Duration, mut check: C)
where
    C: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(every).await;
    }
    panic!("condition not reached within {:?}", every * 200);
}

impl<F> Cluster<F> {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.router_url)
    }

    /// [`wait_until`] at the cluster's `poll_every`.
    pub async fn wait_until<C, Fut>(&self, check: C)
    where
        C: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_until(self.poll_every, check).await;
    }

    /// Needles on every store node, summed over volumes. A store that does
    /// not answer fails the test: "nothing stored" must not pass because a
    /// store could not be asked.
    pub async fn needles_on_stores(&self) -> u64 {
        let mut total = 0;
        for store in &self.stores {
            let client = StoreClient::new(&store.address).expect("client");
            let volumes = client
                .list_volumes()
                .await
                .unwrap_or_else(|e| panic!("listing the volumes of {}: {e}", store.address));
            total += volumes.iter().map(|v| v.needle_count).sum::<u64>();
        }
        total
    }
}

impl<F> Drop for Cluster<F> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
