//! The few store node calls the directory makes (create a replica, read its
//! status, lock it, bulk-sync it), through `haystack::client::StoreClient`
//! with one shared connection pool and explicit timeouts.

use std::time::Duration;

use haystack::api::VolumeStatus;
use haystack::client::{ClientError, StoreClient, StoreClientOptions};

/// Store node calls sharing one `reqwest::Client`.
#[derive(Debug, Clone)]
pub(crate) struct StoreCalls {
    http: reqwest::Client,
    options: StoreClientOptions,
}

impl StoreCalls {
    /// Calls time out after `request_timeout`, bulk syncs after `sync_timeout`.
    pub fn new(request_timeout: Duration, sync_timeout: Duration) -> Result<Self, ClientError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let options = StoreClientOptions {
            connect_timeout_ms: millis(request_timeout),
            request_timeout_ms: millis(request_timeout),
            transfer_timeout_ms: millis(sync_timeout),
            ..StoreClientOptions::default()
        };
        // The store node's builder drops pooled connections before the node's
        // own idle close.
        let http = haystack::client::http_client_builder(&options).build()?;
        Ok(Self { http, options })
    }

    fn client(&self, base_url: &str) -> Result<StoreClient, ClientError> {
        StoreClient::from_http(self.http.clone(), base_url, self.options.clone())
    }

    /// `PUT /volumes/{vid}`; an existing replica counts as success.
    pub async fn create_volume(&self, base_url: &str, vid: u32) -> Result<(), ClientError> {
        self.client(base_url)?.create_volume(vid).await.map(drop)
    }

    /// `GET /volumes`: the status of every replica on the node.
    pub async fn list_volumes(&self, base_url: &str) -> Result<Vec<VolumeStatus>, ClientError> {
        self.client(base_url)?.list_volumes().await
    }

    /// `GET /volumes/{vid}`.
    pub async fn volume_status(
        &self,
        base_url: &str,
        vid: u32,
    ) -> Result<VolumeStatus, ClientError> {
        self.client(base_url)?.volume_status(vid).await
    }

    /// `POST /volumes/{vid}/lock`.
    pub async fn lock_volume(&self, base_url: &str, vid: u32) -> Result<(), ClientError> {
        self.client(base_url)?.lock_volume(vid).await.map(drop)
    }

    /// `POST /volumes/{vid}/sync?from=URL`: replace the replica at `base_url`
    /// with a copy of the one at `from_url`.
    pub async fn sync_volume(
        &self,
        base_url: &str,
        vid: u32,
        from_url: &str,
    ) -> Result<(), ClientError> {
        self.client(base_url)?
            .sync_volume(vid, from_url)
            .await
            .map(drop)
    }
}
