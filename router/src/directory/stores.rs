//! The few store node calls the directory makes (create a replica, read its
//! status, lock it, bulk-sync it), over the store node HTTP API of
//! `docs/ARCHITECTURE.md`.

use std::time::Duration;

use serde::Deserialize;

/// The part of a store's `VolumeStatus` the directory needs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ReplicaStatus {
    /// Number of needles.
    pub needle_count: u64,
    /// Locked for good.
    pub locked: bool,
    /// Read-only (streamable).
    pub read_only: bool,
    /// Highest key appended, if any.
    pub last_key: Option<u64>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreCallError {
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
}

/// Store node calls with explicit timeouts.
#[derive(Debug, Clone)]
pub(crate) struct StoreCalls {
    http: reqwest::Client,
    request_timeout: Duration,
    sync_timeout: Duration,
}

impl StoreCalls {
    /// Calls time out after `request_timeout`, bulk syncs after `sync_timeout`.
    pub fn new(request_timeout: Duration, sync_timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout)
            .build()?;
        Ok(Self {
            http,
            request_timeout,
            sync_timeout,
        })
    }

    /// `PUT /volumes/{vid}`; an existing replica (409) counts as success.
    pub async fn create_volume(&self, base_url: &str, vid: u32) -> Result<(), StoreCallError> {
        let request = self.http.put(format!("{base_url}/volumes/{vid}"));
        let response = request.timeout(self.request_timeout).send().await?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            return Ok(());
        }
        check(response).await.map(drop)
    }

    /// `GET /volumes/{vid}`.
    pub async fn volume_status(
        &self,
        base_url: &str,
        vid: u32,
    ) -> Result<ReplicaStatus, StoreCallError> {
        let request = self.http.get(format!("{base_url}/volumes/{vid}"));
        let response = check(request.timeout(self.request_timeout).send().await?).await?;
        Ok(response.json().await?)
    }

    /// `POST /volumes/{vid}/lock`.
    pub async fn lock_volume(&self, base_url: &str, vid: u32) -> Result<(), StoreCallError> {
        let request = self.http.post(format!("{base_url}/volumes/{vid}/lock"));
        check(request.timeout(self.request_timeout).send().await?)
            .await
            .map(drop)
    }

    /// `POST /volumes/{vid}/sync?from=URL`: replace the replica at `base_url`
    /// with a copy of the one at `from_url`.
    pub async fn sync_volume(
        &self,
        base_url: &str,
        vid: u32,
        from_url: &str,
    ) -> Result<(), StoreCallError> {
        let request = self
            .http
            .post(format!("{base_url}/volumes/{vid}/sync"))
            .query(&[("from", from_url)]);
        check(request.timeout(self.sync_timeout).send().await?)
            .await
            .map(drop)
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, StoreCallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(StoreCallError::Status {
        status: status.as_u16(),
        body: body.chars().take(512).collect(),
    })
}
