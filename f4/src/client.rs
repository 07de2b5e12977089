//! Typed client of the storage node ([`StorageClient`]); the per-read hops
//! (lookups, range reads, backoff decodes) are [`crate::reader::WarmReader`]'s.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::api::{
    BlockCheck, BlockId, BlockPage, DeriveRequest, DistributeRequest, ErrorBody, HeldVolume,
    LivePage, MergeReport, MergeRequest, PAGE_MAX, PruneReport, PruneRequest, RebuildReport,
    RebuildRequest, SealPrepared, SealRequest, Space, TombstoneRequest, VerifyReport,
    VerifyRequest, code,
};
use crate::format::{Geometry, IndexEntry};
use haystack::api::format_key;
use haystack::client::{StoreClientOptions, http_client_builder};

/// Default deadline of a transfer (a block, an index, a seal step).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// An HTTP client fit for the warm tier's nodes: connect timeout and pool
/// idle timeout of the hot tier's clients, no overall timeout (each request
/// sets its own).
pub fn http_client(request_timeout_ms: u64) -> reqwest::Result<reqwest::Client> {
    http_client_builder(&StoreClientOptions {
        connect_timeout_ms: request_timeout_ms.min(10_000),
        request_timeout_ms,
        transfer_timeout_ms: TRANSFER_TIMEOUT.as_millis() as u64,
        read_idle_timeout_ms: 0,
    })
    .build()
}

/// Wall-clock time in ms since the UNIX epoch (0 before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a warm-tier request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node answered with an error.
    #[error("{code} (HTTP {status}): {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The error code of its JSON body (empty if none).
        code: String,
        /// Its message.
        message: String,
    },
    /// No answer: connection refused or reset, or a timeout.
    #[error("{0}")]
    Transport(String),
    /// An answer that does not fit the contract.
    #[error("bad answer: {0}")]
    Answer(String),
    /// A local file could not be read or written.
    #[error("local file: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The error code the node answered with.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the node answered that the block itself is damaged: missing,
    /// corrupt, another block's, or shorter than its geometry says. Not a
    /// timeout, an overload or a refused request.
    pub fn is_block_damage(&self) -> bool {
        matches!(
            self.code(),
            Some(
                code::BLOCK_NOT_FOUND
                    | code::BLOCK_CORRUPT
                    | code::WRONG_BLOCK
                    | code::OUT_OF_RANGE
            )
        )
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(error: reqwest::Error) -> Self {
        // The causes carry the useful part (refused, reset, timed out).
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Transport(message)
    }
}

/// Result of a warm-tier request.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a journal holder says of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLookup {
    /// Live, at this place in the data.
    Live(IndexEntry),
    /// Tombstoned.
    Deleted,
    /// Not in the index.
    NotFound,
}

/// Client of one storage node.
#[derive(Clone, Debug)]
pub struct StorageClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl StorageClient {
    /// A client of the node at `base` (`http://host:port`), over `http`,
    /// with the default request timeout.
    pub fn from_http(base: &str, http: reqwest::Client) -> StorageClient {
        StorageClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            timeout: Duration::from_millis(haystack::http::DEFAULT_REQUEST_TIMEOUT_MS),
        }
    }

    /// This client with `timeout` for requests that are not transfers.
    pub fn with_timeout(mut self, timeout: Duration) -> StorageClient {
        self.timeout = timeout;
        self
    }

    /// The node's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<()> {
        self.send(self.request(Method::GET, "/health", self.timeout))
            .await
            .map(drop)
    }

    /// Room for blocks on the node's disk.
    pub async fn space(&self) -> Result<Space> {
        self.json(self.request(Method::GET, "/space", self.timeout))
            .await
    }

    /// `PUT` the block file at `path` as block `block` of `stripe`.
    pub async fn put_block(
        &self,
        volume: u32,
        generation: u64,
        stripe: u64,
        block: u32,
        path: &Path,
    ) -> Result<()> {
        let url = format!("/blocks/{volume}/{generation}/{stripe}/{block}");
        self.put_file(&url, path).await
    }

    /// Copies this node's file of `block` to `target`, which checks it as
    /// any block `PUT` (header, every chunk's CRC), syncs and renames it, at
    /// up to `bytes_per_second` (0: no limit); the bytes copied.
    pub async fn copy_block_to(
        &self,
        block: BlockId,
        target: &StorageClient,
        bytes_per_second: u64,
    ) -> Result<u64> {
        let url = format!(
            "/blocks/{}/{}/{}/{}",
            block.volume, block.generation, block.stripe, block.block
        );
        let response = self
            .send(self.request(Method::GET, &url, TRANSFER_TIMEOUT))
            .await?;
        let len = response
            .content_length()
            .ok_or_else(|| ClientError::Answer("a block file without a length".into()))?;
        let pace = crate::pace::Pace::new(bytes_per_second);
        let paced = futures::stream::unfold(
            (response.bytes_stream(), pace),
            |(mut chunks, mut pace)| async move {
                let chunk = futures::StreamExt::next(&mut chunks).await?;
                if let Ok(chunk) = &chunk {
                    pace.take(chunk.len() as u64).await;
                }
                Some((chunk.map_err(std::io::Error::other), (chunks, pace)))
            },
        );
        let body = futures::StreamExt::boxed(paced);
        target
            .put_block_body(
                block.volume,
                block.generation,
                block.stripe,
                block.block,
                len,
                body,
            )
            .await?;
        Ok(len)
    }

    /// Removes the node's file of `block` (absent already is fine).
    pub async fn delete_block(&self, block: BlockId) -> Result<()> {
        let url = format!(
            "/blocks/{}/{}/{}/{}",
            block.volume, block.generation, block.stripe, block.block
        );
        self.send(self.request(Method::DELETE, &url, self.timeout))
            .await
            .map(drop)
    }

    /// Has the node read block `block` back from disk and check its header
    /// against `geometry` and every chunk against its CRC.
    pub async fn check_block(&self, block: BlockId, geometry: Geometry) -> Result<()> {
        let request = self
            .request(Method::POST, "/blocks/check", TRANSFER_TIMEOUT)
            .json(&BlockCheck { block, geometry });
        self.send(request).await.map(drop)
    }

    /// Removes the node's files of every generation of `volume` but `keep`;
    /// how many went.
    pub async fn prune(&self, volume: u32, keep: Option<u64>, up_to: Option<u64>) -> Result<u64> {
        let request = self
            .request(
                Method::POST,
                &format!("/volumes/{volume}/prune"),
                self.timeout,
            )
            .json(&PruneRequest { keep, up_to });
        Ok(self.json::<PruneReport>(request).await?.removed)
    }

    /// A page of the node's blocks after the file name `after`.
    pub async fn list_blocks(&self, after: Option<&str>) -> Result<BlockPage> {
        let mut request = self.request(Method::GET, "/blocks", self.timeout);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        self.json(request).await
    }

    /// `PUT` the index file at `path` as `volume`'s of `generation`.
    pub async fn put_index(&self, volume: u32, generation: u64, path: &Path) -> Result<()> {
        self.put_file(&format!("/volumes/{volume}/{generation}/index"), path)
            .await
    }

    /// Writes the node's index file of `volume`'s `generation` to `path`,
    /// synced.
    pub async fn download_index(&self, volume: u32, generation: u64, path: &Path) -> Result<()> {
        let url = format!("/volumes/{volume}/{generation}/index");
        let response = self
            .send(self.request(Method::GET, &url, TRANSFER_TIMEOUT))
            .await?;
        let declared = response.content_length();
        crate::transfer::write_stream(response.bytes_stream(), path, declared)
            .await
            .map_err(|e| match e {
                crate::transfer::TransferError::Io(e) => ClientError::Io(e),
                other => ClientError::Answer(format!("index: {other}")),
            })?;
        Ok(())
    }

    /// Appends the tombstones of `keys` (1 to [`PAGE_MAX`]), synced before
    /// the answer; a key the holder's index lacks is skipped.
    pub async fn tombstones(&self, volume: u32, generation: u64, keys: &[u64]) -> Result<()> {
        let url = format!("/volumes/{volume}/{generation}/tombstones");
        let body = TombstoneRequest {
            keys: keys.to_vec(),
            deleted_ms: now_ms(),
        };
        let request = self.request(Method::POST, &url, self.timeout).json(&body);
        self.send(request).await.map(drop)
    }

    /// The index entries of a page of live needles after key `after`.
    pub async fn live_entries(
        &self,
        volume: u32,
        generation: u64,
        after: Option<u64>,
    ) -> Result<LivePage> {
        let url = format!("/volumes/{volume}/{generation}/live");
        let mut request = self
            .request(Method::GET, &url, self.timeout)
            .query(&[("limit", PAGE_MAX)]);
        if let Some(after) = after {
            request = request.query(&[("after", format_key(after))]);
        }
        self.json(request).await
    }

    /// Has the node take every delete `peers` know of.
    pub async fn merge(
        &self,
        volume: u32,
        generation: u64,
        peers: Vec<String>,
    ) -> Result<MergeReport> {
        let url = format!("/volumes/{volume}/{generation}/merge");
        let request = self
            .request(Method::POST, &url, TRANSFER_TIMEOUT)
            .json(&MergeRequest { peers });
        self.json(request).await
    }

    /// What the node holds of `volume`'s `generation`.
    pub async fn describe(&self, volume: u32, generation: u64) -> Result<HeldVolume> {
        let url = format!("/volumes/{volume}/{generation}");
        self.json(self.request(Method::GET, &url, self.timeout))
            .await
    }

    /// Seals a locked hot replica into this node's staging.
    pub async fn seal(&self, request: &SealRequest) -> Result<SealPrepared> {
        self.json(
            self.request(Method::POST, "/seal", TRANSFER_TIMEOUT)
                .json(request),
        )
        .await
    }

    /// Sends a staged seal's blocks and index where `request` says.
    pub async fn distribute(
        &self,
        volume: u32,
        generation: u64,
        request: &DistributeRequest,
    ) -> Result<()> {
        let url = format!("/seal/{volume}/{generation}/distribute");
        let request = self
            .request(Method::POST, &url, TRANSFER_TIMEOUT)
            .json(request);
        self.send(request).await.map(drop)
    }

    /// Encodes a geo companion volume from warm volumes' data and sends
    /// its blocks where `request` says (`POST /derive/{vid}/{gen}`).
    pub async fn derive(
        &self,
        volume: u32,
        generation: u64,
        request: &DeriveRequest,
    ) -> Result<()> {
        let url = format!("/derive/{volume}/{generation}");
        let request = self
            .request(Method::POST, &url, TRANSFER_TIMEOUT)
            .json(request);
        self.send(request).await.map(drop)
    }

    /// Drops a staged seal.
    pub async fn discard(&self, volume: u32, generation: u64) -> Result<()> {
        let url = format!("/seal/{volume}/{generation}");
        self.send(self.request(Method::DELETE, &url, self.timeout))
            .await
            .map(drop)
    }

    /// `PUT` block `block` of `stripe`, its file of `len` bytes coming as
    /// `body` (an error item aborts the upload: the node keeps nothing).
    pub async fn put_block_body(
        &self,
        volume: u32,
        generation: u64,
        stripe: u64,
        block: u32,
        len: u64,
        body: futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<()> {
        let url = format!("/blocks/{volume}/{generation}/{stripe}/{block}");
        self.put_body(&url, len, reqwest::Body::wrap_stream(body))
            .await
    }

    async fn put_file(&self, url: &str, path: &Path) -> Result<()> {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        self.put_body(url, len, body).await
    }

    async fn put_body(&self, url: &str, len: u64, body: reqwest::Body) -> Result<()> {
        let request = self
            .request(Method::PUT, url, TRANSFER_TIMEOUT)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.send(request).await.map(drop)
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        checked(request.send().await?).await
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let response = self.send(request).await?;
        let body = response.bytes().await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Answer(e.to_string()))
    }
}

/// Client of a rebuilder (the same plumbing as a storage node's).
#[derive(Clone, Debug)]
pub struct RebuilderClient(StorageClient);

impl RebuilderClient {
    /// A client of the rebuilder at `base` (`http://host:port`), over `http`.
    pub fn from_http(base: &str, http: reqwest::Client) -> RebuilderClient {
        RebuilderClient(StorageClient::from_http(base, http))
    }

    /// The rebuilder's base URL.
    pub fn base_url(&self) -> &str {
        self.0.base_url()
    }

    /// `POST /rebuild`: answers once every target holds its block, synced.
    pub async fn rebuild(&self, request: &RebuildRequest) -> Result<RebuildReport> {
        let request = self
            .0
            .request(Method::POST, "/rebuild", TRANSFER_TIMEOUT)
            .json(request);
        self.0.json(request).await
    }

    /// `POST /verify`: a stripe's parity checked against its data.
    pub async fn verify(&self, request: &VerifyRequest) -> Result<VerifyReport> {
        let request = self
            .0
            .request(Method::POST, "/verify", TRANSFER_TIMEOUT)
            .json(request);
        self.0.json(request).await
    }
}

/// The response if it is a success, else its error.
async fn checked(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(error_from_body(status.as_u16(), &body))
}

/// The error an answer with `status` and `body` (an [`ErrorBody`], or any
/// text) stands for.
pub(crate) fn error_from_body(status: u16, body: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error, b.message),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        ),
    };
    ClientError::Status {
        status,
        code,
        message,
    }
}

/// What a backoff node decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconstructed {
    /// The range's bytes.
    pub bytes: Bytes,
    /// Blocks that failed (`(stripe, block)`), to be reported.
    pub failed: Vec<(u64, u32)>,
}

/// `stripe.block` pairs separated by commas; malformed ones are skipped.
pub fn parse_failed_blocks(text: &str) -> Vec<(u64, u32)> {
    text.split(',')
        .filter_map(|pair| {
            let (stripe, block) = pair.trim().split_once('.')?;
            Some((stripe.parse().ok()?, block.parse().ok()?))
        })
        .collect()
}

/// The text of [`FAILED_BLOCKS_HEADER`] for `failed`.
pub fn format_failed_blocks(failed: &[(u64, u32)]) -> String {
    failed
        .iter()
        .map(|(stripe, block)| format!("{stripe}.{block}"))
        .collect::<Vec<_>>()
        .join(",")
}
