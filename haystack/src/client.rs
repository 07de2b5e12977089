//! Typed async client of the store node HTTP API (`docs/ARCHITECTURE.md`,
//! "Store node HTTP API").
//!
//! [`StoreClient`] is cheap to clone (it shares one connection pool) and is
//! what the router, the directory's repair loop, the migrator and the store
//! node's own bulk sync use to talk to a store node. Every request has a
//! timeout; errors come back as a typed [`ClientError`] whose helpers tell a
//! failed replica ([`ClientError::is_replica_failure`]) from an absent needle
//! ([`ClientError::is_not_found`]).

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;

mod inventory;
mod reader;

pub use reader::{
    BatchCodec, BatchOptions, BatchStats, Batcher, Chain, LeanClient, NeedleBatch, NeedleHead,
    NeedleReader, ReadKind, StoreAddress, lean_http_client,
};

use crate::api::{
    AppendResult, CRC32_HEADER, ERROR_HEADER, ErrorBody, HealthBody, VolumeFile, code, needle_path,
};
use crate::api::{VolumeStatus, VolumeStatusPage, every_page};

/// Largest error or JSON body the client reads into memory.
const JSON_BODY_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// A stream of body chunks from a store node.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send + 'static>>;

/// What a store node request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The needle is missing, deleted, or its cookie is wrong (`404 not_found`).
    #[error("needle not found")]
    NotFound,
    /// The needle is corrupt on that replica (`500 corrupt`).
    #[error("corrupt needle: {0}")]
    Corrupt(String),
    /// The replica is locked or read-only (`409 read_only`).
    #[error("replica is read-only: {0}")]
    ReadOnly(String),
    /// The replica reached its size limit (`507 volume_full`).
    #[error("volume full: {0}")]
    VolumeFull(String),
    /// The key is not above the replica's last key (`409 key_out_of_order`).
    #[error("key out of order: {0}")]
    KeyOutOfOrder(String),
    /// The node has no replica of the volume (`404 unknown_volume`).
    #[error("unknown volume: {0}")]
    UnknownVolume(String),
    /// The replica already exists (`409 volume_exists`); `create_volume`
    /// treats it as success.
    #[error("volume exists: {0}")]
    VolumeExists(String),
    /// The body was larger than the node accepts (`413 payload_too_large`).
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// The node rejected the request as malformed (`400 bad_request`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Any other error answer.
    #[error("store node answered {status} {code}: {message}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The `error` code of the JSON body (empty if the body was not JSON).
        code: String,
        /// The `message` of the JSON body, or the start of the raw body.
        message: String,
    },
    /// The body's CRC-32 differs from the `X-Hayloft-Crc32` header.
    #[error("checksum mismatch: header says {expected:#010x}, body has {actual:#010x}")]
    ChecksumMismatch {
        /// CRC-32 announced by the node.
        expected: u32,
        /// CRC-32 of the bytes received.
        actual: u32,
    },
    /// The answer could not be understood (missing header, bad JSON, short body).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// The base URL or an argument is unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Connecting, sending or receiving failed, or a timeout fired.
    #[error("transport error: {0}")]
    Transport(#[from] reqwest::Error),
    /// The same as [`ClientError::Transport`], on the lean read path
    /// ([`NeedleReader`]).
    #[error("transport error: {message}")]
    Connection {
        /// What failed, with its causes.
        message: String,
        /// Whether an idle timeout fired.
        timeout: bool,
    },
}

impl ClientError {
    /// True when the needle is absent on that replica (missing, deleted or
    /// wrong cookie): the replica itself answered correctly.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound)
    }

    /// True when a client-side or server-side timeout fired.
    pub fn is_timeout(&self) -> bool {
        match self {
            ClientError::Transport(e) => e.is_timeout(),
            ClientError::Connection { timeout, .. } => *timeout,
            ClientError::Status { code, .. } => code == code::TIMEOUT,
            _ => false,
        }
    }

    /// True when the node could not be reached or the connection broke.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            ClientError::Transport(_) | ClientError::Connection { .. }
        )
    }

    /// True when the replica failed rather than answered: transport errors,
    /// timeouts, 5xx answers (corruption included), unparsable answers and
    /// checksum mismatches, and a node that has lost the replica
    /// (`UnknownVolume`). A router should try another replica and may mark
    /// this one stale. `NotFound`, `ReadOnly`, `VolumeFull`, `KeyOutOfOrder`
    /// and other 4xx answers are the replica answering correctly.
    pub fn is_replica_failure(&self) -> bool {
        match self {
            ClientError::Transport(_)
            | ClientError::Connection { .. }
            | ClientError::Corrupt(_)
            | ClientError::UnknownVolume(_)
            | ClientError::ChecksumMismatch { .. }
            | ClientError::InvalidResponse(_) => true,
            ClientError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The HTTP status the node answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::NotFound | ClientError::UnknownVolume(_) => Some(404),
            ClientError::Corrupt(_) => Some(500),
            ClientError::ReadOnly(_)
            | ClientError::KeyOutOfOrder(_)
            | ClientError::VolumeExists(_) => Some(409),
            ClientError::VolumeFull(_) => Some(507),
            ClientError::PayloadTooLarge(_) => Some(413),
            ClientError::BadRequest(_) => Some(400),
            ClientError::Status { status, .. } => Some(*status),
            ClientError::Transport(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// A [`ClientError::Connection`] from an error and its causes.
    fn connection(error: &dyn std::fmt::Display, timeout: bool) -> ClientError {
        ClientError::Connection {
            message: error.to_string(),
            timeout,
        }
    }

    fn from_body(status: StatusCode, body: &[u8]) -> ClientError {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => (b.error, b.message),
            Err(_) => {
                let end = body.len().min(512);
                (
                    String::new(),
                    String::from_utf8_lossy(&body[..end]).into_owned(),
                )
            }
        };
        ClientError::from_code(status, code, message)
    }

    /// The error of an answer without a body (`HEAD`): its code from the
    /// [`ERROR_HEADER`] header.
    fn from_header(status: StatusCode, headers: &header::HeaderMap) -> ClientError {
        let code = headers
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        ClientError::from_code(status, code, String::new())
    }

    fn from_code(status: StatusCode, code: String, message: String) -> ClientError {
        match code.as_str() {
            code::NOT_FOUND => ClientError::NotFound,
            code::CORRUPT => ClientError::Corrupt(message),
            code::READ_ONLY => ClientError::ReadOnly(message),
            code::VOLUME_FULL => ClientError::VolumeFull(message),
            code::KEY_OUT_OF_ORDER => ClientError::KeyOutOfOrder(message),
            code::UNKNOWN_VOLUME => ClientError::UnknownVolume(message),
            code::VOLUME_EXISTS => ClientError::VolumeExists(message),
            code::PAYLOAD_TOO_LARGE => ClientError::PayloadTooLarge(message),
            code::BAD_REQUEST => ClientError::BadRequest(message),
            _ => ClientError::Status {
                status: status.as_u16(),
                code,
                message,
            },
        }
    }
}

/// How long a [`StoreClient`] built by [`StoreClient::with_options`] keeps
/// an idle pooled connection. A store node closes a connection that sends no
/// request for its `header_read_timeout_ms` (10 s by default); a client that
/// drops idle connections sooner never reuses one the node is closing.
/// Callers that bring their own `reqwest::Client` to
/// [`StoreClient::from_http`] should build it with [`http_client_builder`].
pub const POOL_IDLE_TIMEOUT_MS: u64 = 5_000;

/// A `reqwest::ClientBuilder` fit for talking to store nodes: the connect
/// and read-idle timeouts of `options` and a pool idle timeout of
/// [`POOL_IDLE_TIMEOUT_MS`]. A `read_idle_timeout_ms` of 0 sets no read
/// timeout: reqwest counts it from the request's start until the answer's
/// headers, so it would cut off a request body that streams for longer
/// (see [`StoreClient::append_needle_streamed`]).
pub fn http_client_builder(options: &StoreClientOptions) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(options.connect_timeout_ms))
        .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
        .tcp_nodelay(true);
    if options.read_idle_timeout_ms == 0 {
        builder
    } else {
        builder.read_timeout(Duration::from_millis(options.read_idle_timeout_ms))
    }
}

/// Timeouts of a [`StoreClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreClientOptions {
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout for small requests and needle reads and appends
    /// (sending the body and reading the answer included).
    pub request_timeout_ms: u64,
    /// Whole-request timeout for volume file streams and bulk syncs, which
    /// move a whole volume.
    pub transfer_timeout_ms: u64,
    /// Longest pause between two reads of a response body (0: none, see
    /// [`http_client_builder`]).
    pub read_idle_timeout_ms: u64,
}

impl Default for StoreClientOptions {
    fn default() -> Self {
        StoreClientOptions {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 30_000,
            transfer_timeout_ms: 3_600_000,
            read_idle_timeout_ms: 30_000,
        }
    }
}

/// A needle read whose body has not been received yet.
#[derive(Debug)]
pub struct NeedleResponse {
    /// The needle's content type.
    pub content_type: String,
    /// Length of the data, from `Content-Length`.
    pub content_length: Option<u64>,
    /// CRC-32 of the data, from `X-Hayloft-Crc32`.
    pub crc32: u32,
    response: reqwest::Response,
}

impl NeedleResponse {
    /// The data as a stream of chunks, unverified (the caller checks the
    /// CRC if it needs to, e.g. while forwarding).
    pub fn into_stream(self) -> ByteStream {
        body_stream(self.response)
    }

    /// Receives the whole data and verifies its length and CRC-32.
    pub async fn bytes_verified(self) -> Result<NeedleBytes, ClientError> {
        let expected_len = self.content_length;
        let data = self.response.bytes().await?;
        if let Some(len) = expected_len
            && len != data.len() as u64
        {
            return Err(ClientError::InvalidResponse(format!(
                "body has {} bytes, Content-Length said {len}",
                data.len()
            )));
        }
        let actual = crc32fast::hash(&data);
        if actual != self.crc32 {
            return Err(ClientError::ChecksumMismatch {
                expected: self.crc32,
                actual,
            });
        }
        Ok(NeedleBytes {
            content_type: self.content_type,
            crc32: actual,
            data,
        })
    }
}

/// A fully received and CRC-verified needle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedleBytes {
    /// The needle's content type.
    pub content_type: String,
    /// CRC-32 of `data`.
    pub crc32: u32,
    /// The needle's data.
    pub data: Bytes,
}

/// A volume file being streamed from a store node.
#[derive(Debug)]
pub struct VolumeFileResponse {
    /// The file's length, from `Content-Length`.
    pub content_length: Option<u64>,
    response: reqwest::Response,
}

impl VolumeFileResponse {
    /// The file's bytes as a stream of chunks.
    pub fn into_stream(self) -> ByteStream {
        body_stream(self.response)
    }
}

fn body_stream(response: reqwest::Response) -> ByteStream {
    Box::pin(response.bytes_stream().map_err(ClientError::Transport))
}

/// Client of one store node.
#[derive(Clone, Debug)]
pub struct StoreClient {
    http: reqwest::Client,
    base_url: String,
    options: StoreClientOptions,
}

impl StoreClient {
    /// A client of the node at `base_url` (`http://host:port`; a bare
    /// `host:port` gets `http://`) with default timeouts.
    pub fn new(base_url: &str) -> Result<StoreClient, ClientError> {
        StoreClient::with_options(base_url, StoreClientOptions::default())
    }

    /// A client with its own connection pool and the given timeouts.
    pub fn with_options(
        base_url: &str,
        options: StoreClientOptions,
    ) -> Result<StoreClient, ClientError> {
        let http = http_client_builder(&options).build()?;
        StoreClient::from_http(http, base_url, options)
    }

    /// A client sharing an existing `reqwest::Client` (and its pool) with
    /// other clients; the per-request timeouts of `options` still apply.
    /// Build `http` with [`http_client_builder`] so that its pool drops idle
    /// connections before the node closes them.
    pub fn from_http(
        http: reqwest::Client,
        base_url: &str,
        options: StoreClientOptions,
    ) -> Result<StoreClient, ClientError> {
        let base_url = normalize_base_url(base_url)?;
        Ok(StoreClient {
            http,
            base_url,
            options,
        })
    }

    /// The node's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<(), ClientError> {
        let body: HealthBody = self.json(Method::GET, "/health".to_string()).await?;
        if body.status == "ok" {
            Ok(())
        } else {
            Err(ClientError::InvalidResponse(format!(
                "health status {:?}",
                body.status
            )))
        }
    }

    /// `GET /volumes`, page by page: the status of every replica on the
    /// node.
    pub async fn list_volumes(&self) -> Result<Vec<VolumeStatus>, ClientError> {
        every_page(
            |after: Option<u32>| async move {
                let path = match after {
                    Some(after) => format!("/volumes?after={after}"),
                    None => "/volumes".to_owned(),
                };
                let page: VolumeStatusPage = self.json(Method::GET, path).await?;
                Ok((page.volumes, page.next_after))
            },
            || ClientError::InvalidResponse("volume pages do not advance".into()),
        )
        .await
    }

    /// `PUT /volumes/{vid}`: creates an empty replica. An existing replica
    /// counts as success, so the call is idempotent; its status is returned.
    pub async fn create_volume(&self, volume: u32) -> Result<VolumeStatus, ClientError> {
        match self.json(Method::PUT, format!("/volumes/{volume}")).await {
            Err(ClientError::VolumeExists(_)) => self.volume_status(volume).await,
            other => other,
        }
    }

    /// `GET /volumes/{vid}`.
    pub async fn volume_status(&self, volume: u32) -> Result<VolumeStatus, ClientError> {
        self.json(Method::GET, format!("/volumes/{volume}")).await
    }

    /// `POST /volumes/{vid}/lock`: makes the replica read-only for good.
    pub async fn lock_volume(&self, volume: u32) -> Result<VolumeStatus, ClientError> {
        self.json(Method::POST, format!("/volumes/{volume}/lock"))
            .await
    }

    /// `POST /volumes/{vid}/direct-reads/stop`: the node serves no direct
    /// read of the volume until a read lease asked for later grants it.
    pub async fn stop_direct_reads(&self, volume: u32) -> Result<(), ClientError> {
        let request = self.request(
            Method::POST,
            &format!("/volumes/{volume}/direct-reads/stop"),
            self.request_timeout(),
        );
        checked(request.send().await?).await?;
        Ok(())
    }

    /// `PUT /volumes/{vid}/needles/{key}?cookie=C`: appends a needle whose
    /// body is exactly `content_length` bytes. Returns once the replica has
    /// made it durable.
    pub async fn append_needle(
        &self,
        volume: u32,
        key: u64,
        cookie: u32,
        content_type: &str,
        content_length: u64,
        body: reqwest::Body,
    ) -> Result<AppendResult, ClientError> {
        let request = self.request(
            Method::PUT,
            &needle_path(volume, key, cookie),
            self.request_timeout(),
        );
        append(request, content_type, content_length, body).await
    }

    /// [`StoreClient::append_needle`] without the whole-request timeout, for
    /// a body that streams for as long as its sender keeps it flowing. The
    /// caller bounds the pauses of the body and the wait for the answer; the
    /// client should have no read timeout (see [`http_client_builder`]).
    pub async fn append_needle_streamed(
        &self,
        volume: u32,
        key: u64,
        cookie: u32,
        content_type: &str,
        content_length: u64,
        body: reqwest::Body,
    ) -> Result<AppendResult, ClientError> {
        let url = format!("{}{}", self.base_url, needle_path(volume, key, cookie));
        let request = self.http.request(Method::PUT, url);
        append(request, content_type, content_length, body).await
    }

    /// [`StoreClient::append_needle`] with the body in memory.
    pub async fn append_needle_bytes(
        &self,
        volume: u32,
        key: u64,
        cookie: u32,
        content_type: &str,
        data: Bytes,
    ) -> Result<AppendResult, ClientError> {
        let len = data.len() as u64;
        self.append_needle(
            volume,
            key,
            cookie,
            content_type,
            len,
            reqwest::Body::from(data),
        )
        .await
    }

    /// `GET /volumes/{vid}/needles/{key}?cookie=C`: the answer's headers,
    /// with the data still to be streamed.
    pub async fn read_needle(
        &self,
        volume: u32,
        key: u64,
        cookie: u32,
    ) -> Result<NeedleResponse, ClientError> {
        let request = self.request(
            Method::GET,
            &needle_path(volume, key, cookie),
            self.request_timeout(),
        );
        let response = checked(request.send().await?).await?;
        let headers = response.headers();
        let crc32 = headers
            .get(CRC32_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| ClientError::InvalidResponse(format!("missing {CRC32_HEADER}")))?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let content_length = response.content_length();
        Ok(NeedleResponse {
            content_type,
            content_length,
            crc32,
            response,
        })
    }

    /// Reads a whole needle and verifies its length and CRC-32.
    pub async fn read_needle_bytes(
        &self,
        volume: u32,
        key: u64,
        cookie: u32,
    ) -> Result<NeedleBytes, ClientError> {
        self.read_needle(volume, key, cookie)
            .await?
            .bytes_verified()
            .await
    }

    /// `DELETE /volumes/{vid}/needles/{key}?cookie=C`.
    pub async fn delete_needle(
        &self,
        volume: u32,
        key: u64,
        cookie: u32,
    ) -> Result<(), ClientError> {
        let request = self.request(
            Method::DELETE,
            &needle_path(volume, key, cookie),
            self.request_timeout(),
        );
        checked(request.send().await?).await?;
        Ok(())
    }

    /// `GET /volumes/{vid}/files/{data|index}`: streams one file of a
    /// locked or read-only replica.
    pub async fn fetch_volume_file(
        &self,
        volume: u32,
        file: VolumeFile,
    ) -> Result<VolumeFileResponse, ClientError> {
        let path = format!("/volumes/{volume}/files/{}", file.path_segment());
        let request = self.request(Method::GET, &path, self.transfer_timeout());
        let response = checked(request.send().await?).await?;
        let content_length = response.content_length();
        Ok(VolumeFileResponse {
            content_length,
            response,
        })
    }

    /// `GET /volumes/{vid}/files/{file}?offset=N&len=N`: `len` bytes of
    /// one file of a locked or read-only replica from `offset`, in memory
    /// (the caller bounds `len`).
    pub async fn read_volume_file_range(
        &self,
        volume: u32,
        file: VolumeFile,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, ClientError> {
        let path = format!(
            "/volumes/{volume}/files/{}?offset={offset}&len={len}",
            file.path_segment()
        );
        let request = self.request(Method::GET, &path, self.transfer_timeout());
        let response = checked(request.send().await?).await?;
        let mut stream = response.bytes_stream();
        let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > len {
                return Err(ClientError::InvalidResponse(format!(
                    "more than the {len} bytes asked"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        if buf.len() as u64 != len {
            return Err(ClientError::InvalidResponse(format!(
                "{} bytes of the {len} asked",
                buf.len()
            )));
        }
        Ok(buf.freeze())
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .timeout(timeout)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
    ) -> Result<T, ClientError> {
        let response = self
            .request(method, &path, self.request_timeout())
            .send()
            .await?;
        read_json(checked(response).await?).await
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.options.request_timeout_ms)
    }

    fn transfer_timeout(&self) -> Duration {
        Duration::from_millis(self.options.transfer_timeout_ms)
    }
}

/// Sends a needle append built by the caller (URL and timeout set).
async fn append(
    request: reqwest::RequestBuilder,
    content_type: &str,
    content_length: u64,
    body: reqwest::Body,
) -> Result<AppendResult, ClientError> {
    let content_type = header::HeaderValue::from_str(content_type)
        .map_err(|e| ClientError::InvalidArgument(format!("content type: {e}")))?;
    let request = request
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, content_length)
        .body(body);
    let response = checked(send_in_process_or_http(request).await?).await?;
    read_json(response).await
}

fn normalize_base_url(base_url: &str) -> Result<String, ClientError> {
    let trimmed = base_url.trim().trim_end_matches('/');
    let url = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| ClientError::InvalidArgument(format!("base url {base_url:?}: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(ClientError::InvalidArgument(format!(
            "base url {base_url:?}: not http"
        )));
    }
    Ok(url)
}

/// Sends an append: to the node's routes in process where this process
/// serves that node ([`crate::local`]), over HTTP otherwise. In process, the
/// request's timeout bounds the answer's headers, which come once the
/// handler has taken the whole body and made the needle durable; the answer
/// is a small JSON body already in memory. Only appends go this way: they
/// carry the upload path's bodies, their handler is safe to drop half-way
/// (the file work runs on the blocking pool), and other requests (syncs,
/// file streams) rely on reqwest's body timeouts.
async fn send_in_process_or_http(
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ClientError> {
    let (http, request) = request.build_split();
    let request = request?;
    let url = request.url();
    // `Host` displays an IPv6 address in brackets, as a socket address does.
    let local = url
        .host()
        .zip(url.port_or_known_default())
        .and_then(|(host, port)| crate::local::service(&format!("{host}:{port}")));
    let Some(service) = local else {
        return Ok(http.execute(request).await?);
    };
    let timeout = request.timeout().copied();
    let request = hyper::Request::<reqwest::Body>::try_from(request)?;
    let answer = crate::local::call(service, request);
    let response = match timeout {
        None => answer.await,
        Some(limit) => tokio::time::timeout(limit, answer)
            .await
            .map_err(|_| ClientError::connection(&"no answer within the request timeout", true))?,
    };
    let len = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    Ok(reqwest::Response::from(response.map(|body| {
        reqwest::Body::wrap(LocalBody::new(body, len))
    })))
}

/// An in-process answer's body as reqwest takes it: `Sync` (the mutex is
/// only ever reached through `&mut`, never locked), and sized by its
/// `Content-Length` as hyper sizes a received body, which is what
/// [`reqwest::Response::content_length`] reads.
struct LocalBody {
    body: std::sync::Mutex<axum::body::Body>,
    remaining: Option<u64>,
}

impl LocalBody {
    fn new(body: axum::body::Body, len: Option<u64>) -> LocalBody {
        let remaining = len.or_else(|| hyper::body::Body::size_hint(&body).exact());
        LocalBody {
            body: std::sync::Mutex::new(body),
            remaining,
        }
    }
}

impl hyper::body::Body for LocalBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let body = this
            .body
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
        if let (Some(Ok(frame)), Some(remaining)) = (&frame, &mut this.remaining)
            && let Some(data) = frame.data_ref()
        {
            *remaining = remaining.saturating_sub(data.len() as u64);
        }
        std::task::Poll::Ready(frame)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.remaining {
            Some(len) => hyper::body::SizeHint::with_exact(len),
            None => hyper::body::SizeHint::default(),
        }
    }
}

/// Turns an error answer into a [`ClientError`]; passes success through.
async fn checked(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = read_limited(response).await?;
    Err(ClientError::from_body(status, &body))
}

async fn read_json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let body = read_limited(response).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::InvalidResponse(format!("bad JSON body: {e}")))
}

/// Reads a body into memory, refusing one above [`JSON_BODY_LIMIT_BYTES`].
async fn read_limited(response: reqwest::Response) -> Result<Bytes, ClientError> {
    let mut stream = response.bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > JSON_BODY_LIMIT_BYTES {
            return Err(ClientError::InvalidResponse(
                "answer body too large".to_string(),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized() {
        assert_eq!(
            normalize_base_url("127.0.0.1:80/").unwrap(),
            "http://127.0.0.1:80"
        );
        assert_eq!(normalize_base_url("http://h:1").unwrap(), "http://h:1");
        assert!(normalize_base_url("ftp://h:1").is_err());
    }

    #[test]
    fn error_bodies_map_to_variants() {
        let body = |c: &str| format!(r#"{{"error":"{c}","message":"m"}}"#).into_bytes();
        let e = ClientError::from_body(StatusCode::NOT_FOUND, &body("not_found"));
        assert!(e.is_not_found() && !e.is_replica_failure());
        let e = ClientError::from_body(StatusCode::INTERNAL_SERVER_ERROR, &body("corrupt"));
        assert!(matches!(e, ClientError::Corrupt(_)) && e.is_replica_failure());
        let e = ClientError::from_body(StatusCode::BAD_GATEWAY, b"<html>");
        assert!(matches!(e, ClientError::Status { status: 502, .. }) && e.is_replica_failure());
        let e = ClientError::from_body(StatusCode::CONFLICT, &body("read_only"));
        assert!(matches!(e, ClientError::ReadOnly(_)) && !e.is_replica_failure());
    }
}
