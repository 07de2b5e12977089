//! [`NeedleReader`]: a lean client for the hot read path, `GET` and `HEAD
//! /volumes/{vid}/needles/{key}?cookie=C`, straight on hyper's pooled
//! HTTP/1 client.
//!
//! A router forwards every BLOB read over this hop, so its cost per request
//! counts. Compared with [`super::StoreClient::read_needle`] (reqwest), it
//! parses the node's address once ([`StoreAddress`]) instead of a URL per
//! request, and skips reqwest's per-request layers (URL parsing, redirect and
//! retry policies, timeout wrappers). Timeouts are the caller's for the
//! answer's headers, and an idle timeout between body chunks here.

mod batch;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use self::batch::{BatchCodec, BatchOptions, BatchStats, Batcher, NeedleBatch};
use super::{ByteStream, ClientError, JSON_BODY_LIMIT_BYTES, POOL_IDLE_TIMEOUT_MS};
use crate::api::CRC32_HEADER;
use crate::batch::{BatchAnswer, BatchRead};

/// A store node's address, parsed once: `http://host:port` (a bare
/// `host:port` gets `http://`). Only plain HTTP: store nodes serve nothing
/// else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreAddress {
    authority: Authority,
}

impl StoreAddress {
    /// Parses a node's base URL or `host:port`.
    pub fn parse(base_url: &str) -> Result<StoreAddress, ClientError> {
        let trimmed = base_url.trim().trim_end_matches('/');
        let rest = match trimmed.split_once("://") {
            None => trimmed,
            Some(("http", rest)) => rest,
            Some(_) => {
                return Err(ClientError::InvalidArgument(format!(
                    "store address {base_url:?}: only http:// is served"
                )));
            }
        };
        let authority: Authority = rest.parse().map_err(|e| {
            ClientError::InvalidArgument(format!("store address {base_url:?}: {e}"))
        })?;
        if authority.as_str().contains('@') {
            return Err(ClientError::InvalidArgument(format!(
                "store address {base_url:?}: credentials are not supported"
            )));
        }
        Ok(StoreAddress { authority })
    }

    /// Whether this process serves the node itself, so that calls to it
    /// stay in process ([`crate::local`]).
    pub fn in_process(&self) -> bool {
        crate::local::serves(self.authority.as_str())
    }

    fn needle_uri(&self, volume: u32, key: u64, cookie: u32) -> Result<Uri, ClientError> {
        self.uri(&format!(
            "/volumes/{volume}/needles/{key:x}?cookie={cookie:08x}"
        ))
    }

    /// `path_and_query` (starting with `/`) at this node.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, ClientError> {
        let path = PathAndQuery::try_from(path_and_query)
            .map_err(|e| ClientError::InvalidArgument(format!("path {path_and_query:?}: {e}")))?;
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| ClientError::InvalidArgument(format!("uri: {e}")))
    }
}

/// Hyper's pooled HTTP/1 client as the lean hops use it: no Nagle delay,
/// `connect_timeout`, up to `max_idle_per_host` idle connections per node,
/// dropped after [`POOL_IDLE_TIMEOUT_MS`] (before the node's own idle
/// close, so a request never lands on a socket the node is closing).
pub fn lean_http_client<B>(connect_timeout: Duration, max_idle_per_host: usize) -> LeanClient<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    LeanClient {
        http: Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .pool_max_idle_per_host(max_idle_per_host)
            .build(connector),
    }
}

/// The lean hops' client ([`lean_http_client`]): a node this process serves
/// itself is called in process ([`crate::local`]), any other over HTTP.
#[derive(Clone, Debug)]
pub struct LeanClient<B> {
    http: Client<HttpConnector, B>,
}

impl<B> LeanClient<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends `request` to the node its URI names; the answer's body is
    /// still to be received.
    pub async fn request(
        &self,
        request: Request<B>,
    ) -> Result<Response<Body>, hyper_util::client::legacy::Error> {
        let local = request
            .uri()
            .authority()
            .and_then(|node| crate::local::service(node.as_str()));
        if let Some(service) = local {
            return Ok(crate::local::call(service, request).await);
        }
        Ok(self.http.request(request).await?.map(Body::new))
    }
}

/// Which answer a [`NeedleReader::read`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// `GET`: headers and data.
    Get,
    /// `HEAD`: the same checks and headers, no data.
    Head,
}

/// Pooled client of the store nodes' needle read routes, shared by every
/// read of a router (cheap to clone; clones share connections and read
/// batches).
#[derive(Clone, Debug)]
pub struct NeedleReader {
    http: LeanClient<Empty<Bytes>>,
    body_idle_timeout: Duration,
    batcher: Arc<Batcher<NeedleBatch>>,
}

impl NeedleReader {
    /// A reader that connects within `connect_timeout`, keeps up to
    /// `max_idle_per_host` idle connections per node (dropped after
    /// [`POOL_IDLE_TIMEOUT_MS`], before the node's own idle close), and
    /// fails a body that pauses longer than `body_idle_timeout`.
    pub fn new(
        connect_timeout: Duration,
        body_idle_timeout: Duration,
        max_idle_per_host: usize,
    ) -> NeedleReader {
        let batches = lean_http_client(connect_timeout, max_idle_per_host);
        NeedleReader {
            http: lean_http_client(connect_timeout, max_idle_per_host),
            body_idle_timeout,
            batcher: Arc::new(Batcher::new(batches, BatchOptions::default())),
        }
    }

    /// The same reader with other read batching limits (a fresh batcher;
    /// connections stay shared).
    pub fn with_batching(mut self, options: BatchOptions) -> NeedleReader {
        let http = self.batcher.http().clone();
        self.batcher = Arc::new(Batcher::new(http, options));
        self
    }

    /// What this reader's batches carried so far.
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// A small read at `node`, sent in one `POST /needles/read-batch` with
    /// the reads for the same node that are waiting at the same time (see
    /// [`BatchOptions`]). Each answer is checked (lengths, CRC-32 of the
    /// data) before it is returned. The caller bounds the wait.
    pub async fn read_batched(
        &self,
        node: &StoreAddress,
        read: BatchRead,
    ) -> Result<BatchAnswer, ClientError> {
        self.batcher.read(node, read).await
    }

    /// `GET` or `HEAD /volumes/{vid}/needles/{key}?cookie=C` at `node`:
    /// the answer's headers, the data (for `GET`) still to be received.
    /// The caller bounds the wait for the headers.
    pub async fn read(
        &self,
        node: &StoreAddress,
        kind: ReadKind,
        volume: u32,
        key: u64,
        cookie: u32,
    ) -> Result<NeedleHead, ClientError> {
        let method = match kind {
            ReadKind::Get => Method::GET,
            ReadKind::Head => Method::HEAD,
        };
        let request = Request::builder()
            .method(method)
            .uri(node.needle_uri(volume, key, cookie)?)
            .body(Empty::new())
            .map_err(|e| ClientError::InvalidArgument(format!("request: {e}")))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ClientError::connection(&Chain(&e), false))?;
        if !response.status().is_success() {
            return Err(self.error_answer(response).await);
        }
        let (parts, body) = response.into_parts();
        let crc32 = parts
            .headers
            .get(CRC32_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| ClientError::InvalidResponse(format!("missing {CRC32_HEADER}")))?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .filter(|v| v.to_str().is_ok())
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        let content_length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Ok(NeedleHead {
            content_type,
            content_length,
            crc32,
            body,
            idle: self.body_idle_timeout,
        })
    }

    /// Turns an error answer into a [`ClientError`] (its JSON body read up
    /// to [`JSON_BODY_LIMIT_BYTES`]).
    async fn error_answer(&self, response: Response<Body>) -> ClientError {
        let status: StatusCode = response.status();
        let (parts, mut body) = response.into_parts();
        let mut buf = BytesMut::new();
        loop {
            match tokio::time::timeout(self.body_idle_timeout, body.frame()).await {
                Err(_) => return ClientError::connection(&"error body stalled", true),
                Ok(None) => break,
                Ok(Some(Err(e))) => return ClientError::connection(&Chain(&e), false),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > JSON_BODY_LIMIT_BYTES {
                            return ClientError::InvalidResponse(
                                "answer body too large".to_string(),
                            );
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        if buf.is_empty() {
            // A `HEAD` answer: no body, the code is in a header.
            return ClientError::from_header(status, &parts.headers);
        }
        ClientError::from_body(status, &buf)
    }
}

/// The headers of a successful needle read; the data (for `GET`) is still
/// to be received.
#[derive(Debug)]
pub struct NeedleHead {
    /// The needle's content type (empty if the node sent none).
    pub content_type: HeaderValue,
    /// Length of the data, from `Content-Length`.
    pub content_length: Option<u64>,
    /// CRC-32 of the data, from `X-Hayloft-Crc32`.
    pub crc32: u32,
    body: Body,
    idle: Duration,
}

impl NeedleHead {
    /// Receives the whole data (unverified, like [`NeedleHead::into_stream`];
    /// fit for small needles) and checks its length against
    /// `Content-Length`.
    pub async fn into_bytes(self) -> Result<Bytes, ClientError> {
        let mut body = self.body;
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        loop {
            match tokio::time::timeout(self.idle, body.frame()).await {
                Err(_) => return Err(ClientError::connection(&"body stalled", true)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ClientError::connection(&Chain(&e), false)),
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match &first {
                        None => first = Some(data),
                        Some(head) => {
                            if rest.is_empty() {
                                rest.extend_from_slice(head);
                            }
                            rest.extend_from_slice(&data);
                        }
                    }
                }
            }
        }
        let data = if rest.is_empty() {
            first.unwrap_or_default()
        } else {
            rest.freeze()
        };
        if let Some(len) = self.content_length
            && len != data.len() as u64
        {
            return Err(ClientError::InvalidResponse(format!(
                "body has {} bytes, Content-Length said {len}",
                data.len()
            )));
        }
        Ok(data)
    }

    /// Receives the whole data as [`NeedleHead::into_bytes`] does, and
    /// checks its CRC-32 against `X-Hayloft-Crc32`
    /// ([`ClientError::ChecksumMismatch`] if they differ).
    pub async fn into_bytes_verified(self) -> Result<Bytes, ClientError> {
        let expected = self.crc32;
        let data = self.into_bytes().await?;
        let actual = crc32fast::hash(&data);
        if actual != expected {
            return Err(ClientError::ChecksumMismatch { expected, actual });
        }
        Ok(data)
    }

    /// The data as a stream of chunks, unverified; a pause longer than the
    /// reader's body idle timeout ends it with an error.
    pub fn into_stream(self) -> ByteStream {
        let idle = self.idle;
        Box::pin(futures::stream::unfold(
            Some(self.body),
            move |body| async move {
                let mut body = body?;
                loop {
                    match tokio::time::timeout(idle, body.frame()).await {
                        Err(_) => {
                            return Some((
                                Err(ClientError::connection(&"body stalled", true)),
                                None,
                            ));
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => {
                            return Some((Err(ClientError::connection(&Chain(&e), false)), None));
                        }
                        Ok(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                return Some((Ok(data), Some(body)));
                            }
                        }
                    }
                }
            },
        ))
    }
}

/// Displays an error with its chain of causes (hyper's own messages are
/// terse: "client error (Connect)").
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_once_and_refuse_other_schemes() {
        let a = StoreAddress::parse("127.0.0.1:80/").unwrap();
        assert_eq!(a, StoreAddress::parse("http://127.0.0.1:80").unwrap());
        assert_eq!(
            a.needle_uri(3, 0x1f, 0x0a).unwrap().to_string(),
            "http://127.0.0.1:80/volumes/3/needles/1f?cookie=0000000a"
        );
        assert!(StoreAddress::parse("https://h:1").is_err());
        assert!(StoreAddress::parse("ftp://h:1").is_err());
        assert!(StoreAddress::parse("http://u:p@h:1").is_err());
        assert!(StoreAddress::parse("http://h:1/path").is_err());
    }
}
