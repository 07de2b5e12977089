//! The store node calls the directory makes (create or remove a replica,
//! read its status, lock it, bulk-sync it, mend one needle), through `haystack::client::StoreClient`
//! with one shared connection pool and explicit timeouts.

use std::time::Duration;

use haystack::api::{NeedleRepairAnswer, SyncReport, VolumeStatus};
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

    /// The HTTP client, for the warm tier's nodes.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
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

    /// `POST /volumes/{vid}/direct-reads/stop`.
    pub async fn stop_direct_reads(&self, base_url: &str, vid: u32) -> Result<(), ClientError> {
        self.client(base_url)?.stop_direct_reads(vid).await
    }

    /// `DELETE /volumes/{vid}`: remove a replica that never held a needle.
    pub async fn remove_empty_volume(&self, base_url: &str, vid: u32) -> Result<(), ClientError> {
        self.client(base_url)?.remove_empty_volume(vid).await
    }

    /// `POST /volumes/{vid}/sync?from=URL&also=...`: bring the replica at
    /// `base_url` up to date with the one at `from_url`, taking needles that
    /// fail their checks there from the replicas at `also`.
    pub async fn sync_volume(
        &self,
        base_url: &str,
        vid: u32,
        from_url: &str,
        also: &[String],
    ) -> Result<SyncReport, ClientError> {
        self.client(base_url)?
            .sync_volume(vid, from_url, also)
            .await
    }

    /// `POST /volumes/{vid}/sync?from=URL&deletes_only=true`: give the
    /// replica at `base_url` every delete of the one at `from_url`.
    pub async fn sync_deletes(
        &self,
        base_url: &str,
        vid: u32,
        from_url: &str,
    ) -> Result<SyncReport, ClientError> {
        self.client(base_url)?.sync_deletes(vid, from_url).await
    }

    /// `POST /volumes/{vid}/needles/{key}/repair?from=...`: mend the replica's
    /// copy of one needle from the first of `peers` with a good one.
    pub async fn repair_needle(
        &self,
        base_url: &str,
        vid: u32,
        key: u64,
        peers: &[String],
    ) -> Result<NeedleRepairAnswer, ClientError> {
        self.client(base_url)?.repair_needle(vid, key, peers).await
    }
}
