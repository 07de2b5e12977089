//! `DirectoryClient`: the typed HTTP client of the directory service, used by
//! the router, the binary (registration and heartbeats) and tests.

use std::collections::VecDeque;
use std::time::Duration;

use serde::de::DeserializeOwned;

use haystack::api::{PageCursor, ReadLease};

use super::types::{
    ClaimRequest, CompanionRequest, DamagedBlockRequest, DamagedNeedle, DamagedPage,
    DamagedRequest, DroppedPage, EndRequest, ErrorBody, GenerationRequest, KeyLease, LeaseRequest,
    LogicalVolume, MigrationJob, MigrationPage, NodeRecord, NodeRegistration, OwnershipRequest,
    PlaceRequest, REBUILD_PAGE_MAX, RebuildClaimRequest, RebuildJob, RebuildPage,
    RebuiltBlockRequest, RenewRequest, ReplaceHolderRequest, SetStateRequest, StaleRequest,
    StepRequest, VOLUME_PAGE_MAX, VolumeClaim, VolumePage, VolumePageQuery, VolumeState,
};

/// Default timeout of one request to the directory.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are dropped after this long (the directory closes
/// idle connections after its header-read timeout, 10 s by default).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Default timeout for establishing a connection to the directory.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An error from [`DirectoryClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryClientError {
    /// The request could not be sent or its answer not read (connection,
    /// timeout, ...).
    #[error("directory request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The directory answered with an error.
    #[error("directory answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The JSON error code (`unknown_volume`, `not_enough_racks`, ...).
        code: String,
        /// The directory's explanation.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("undecodable directory answer: {0}")]
    Decode(String),
    /// The client was given a malformed argument (base URL, node id).
    #[error("bad argument: {0}")]
    BadArgument(String),
}

impl DirectoryClientError {
    /// The JSON error code, if the directory answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            DirectoryClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the directory answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            DirectoryClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the directory answered 404 (unknown node, volume or replica).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// A cheap-to-clone client of one directory service.
#[derive(Debug, Clone)]
pub struct DirectoryClient {
    base_url: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl DirectoryClient {
    /// A client of the directory at `base_url` (`http://host:port`, or just
    /// `host:port`) with its own connection pool and the default timeouts.
    pub fn new(base_url: &str) -> Result<Self, DirectoryClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .timeout(DEFAULT_REQUEST_TIMEOUT)
            // Below the directory's header-read timeout, which also closes idle
            // keep-alive connections: a pooled connection is never reused just
            // as the directory closes it.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()?;
        Ok(Self::with_http_client(
            base_url,
            http,
            DEFAULT_REQUEST_TIMEOUT,
        ))
    }

    /// A client sharing `http`'s connection pool; every request gets `timeout`.
    pub fn with_http_client(base_url: &str, http: reqwest::Client, timeout: Duration) -> Self {
        let base = base_url.trim_end_matches('/');
        let base_url = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        Self {
            base_url,
            http,
            timeout,
        }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /health`: Ok if the directory answers 200.
    pub async fn health(&self) -> Result<(), DirectoryClientError> {
        let _: serde_json::Value = self.send(self.http.get(self.url("/health"))).await?;
        Ok(())
    }

    /// `POST /nodes`: registers or re-registers a node.
    pub async fn register(
        &self,
        node: &NodeRegistration,
    ) -> Result<NodeRecord, DirectoryClientError> {
        check_node_id(&node.id)?;
        self.send(self.http.post(self.url("/nodes")).json(node))
            .await
    }

    /// `POST /nodes/{id}/heartbeat`.
    pub async fn heartbeat(&self, id: &str) -> Result<NodeRecord, DirectoryClientError> {
        check_node_id(id)?;
        let url = self.url(&format!("/nodes/{id}/heartbeat"));
        self.send(self.http.post(url)).await
    }

    /// `POST /nodes/{id}/read-lease`: a heartbeat that renews a store
    /// node's read lease.
    pub async fn read_lease(&self, id: &str) -> Result<ReadLease, DirectoryClientError> {
        check_node_id(id)?;
        let url = self.url(&format!("/nodes/{id}/read-lease"));
        self.send(self.http.post(url)).await
    }

    /// `GET /nodes`.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, DirectoryClientError> {
        self.send(self.http.get(self.url("/nodes"))).await
    }

    /// `DELETE /nodes/{id}`: forgets a `down` node no volume names; its
    /// last record.
    pub async fn remove_node(&self, id: &str) -> Result<NodeRecord, DirectoryClientError> {
        check_node_id(id)?;
        let url = self.url(&format!("/nodes/{id}"));
        self.send(self.http.delete(url)).await
    }

    /// `POST /volumes`: allocates a new writable logical volume.
    pub async fn allocate_volume(&self) -> Result<LogicalVolume, DirectoryClientError> {
        self.send(self.http.post(self.url("/volumes"))).await
    }

    /// `GET /volumes?after=V&limit=N`: a page of volumes.
    pub async fn volumes(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<VolumePage, DirectoryClientError> {
        self.send(
            self.http
                .get(self.url("/volumes"))
                .query(&page_query(after, limit)),
        )
        .await
    }

    /// Every volume, by id, page by page.
    pub async fn list_volumes(&self) -> Result<Vec<LogicalVolume>, DirectoryClientError> {
        every_page("volume", |after| async move {
            let page = self.volumes(after, VOLUME_PAGE_MAX).await?;
            Ok((page.volumes, page.next_after))
        })
        .await
    }

    /// Every volume, by id, a page at a time: what a pass over the
    /// volumes holds in memory is one page, however many there are.
    pub fn volume_pages(&self) -> VolumePages<'_> {
        VolumePages {
            client: self,
            cursor: PageCursor::default(),
        }
    }

    /// `GET /volumes/{vid}`.
    pub async fn volume(&self, vid: u32) -> Result<LogicalVolume, DirectoryClientError> {
        self.send(self.http.get(self.url(&format!("/volumes/{vid}"))))
            .await
    }

    /// `POST /volumes/{vid}/state`.
    pub async fn set_volume_state(
        &self,
        vid: u32,
        state: VolumeState,
        reason: &str,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        let body = SetStateRequest {
            state,
            reason: reason.to_owned(),
        };
        let url = self.url(&format!("/volumes/{vid}/state"));
        self.send(self.http.post(url).json(&body)).await
    }

    /// `POST /volumes/{vid}/replicas/{node}/stale`: reports a replica that
    /// failed a write or a delete (`missed_delete`: it missed one that was
    /// acknowledged).
    pub async fn mark_replica_stale(
        &self,
        vid: u32,
        node: &str,
        reason: &str,
        missed_delete: bool,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        check_node_id(node)?;
        let body = StaleRequest {
            reason: reason.to_owned(),
            missed_delete,
        };
        let url = self.url(&format!("/volumes/{vid}/replicas/{node}/stale"));
        self.send(self.http.post(url).json(&body)).await
    }

    /// `POST /volumes/{vid}/needles/{key}/damaged`: reports that `node`'s
    /// copy of the needle failed its checks, so that it is mended.
    pub async fn report_damaged_needle(
        &self,
        vid: u32,
        key: u64,
        node: &str,
        cookie: Option<u32>,
        reason: &str,
    ) -> Result<DamagedNeedle, DirectoryClientError> {
        check_node_id(node)?;
        let body = DamagedRequest {
            node: node.to_owned(),
            cookie,
            reason: reason.to_owned(),
        };
        let url = self.url(&format!("/volumes/{vid}/needles/{key:x}/damaged"));
        self.send(self.http.post(url).json(&body)).await
    }

    /// `GET /damaged-needles?after_volume=V&after_key=K&limit=N`: a page of
    /// damaged-needle records.
    pub async fn damaged_needles(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<DamagedPage, DirectoryClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some((volume, key)) = after {
            query.push(("after_volume", volume.to_string()));
            query.push(("after_key", format!("{key:x}")));
        }
        let request = self.http.get(self.url("/damaged-needles")).query(&query);
        self.send(request).await
    }

    /// `POST /volumes/{vid}/seal/begin`: a new seal attempt; the volume
    /// turns `sealing` under generation `last_generation`.
    pub async fn begin_seal(&self, vid: u32) -> Result<LogicalVolume, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/seal/begin"));
        self.send(self.http.post(url)).await
    }

    /// `POST /volumes/{vid}/seal/place`: places the attempt's blocks.
    pub async fn place_warm(
        &self,
        vid: u32,
        request: &PlaceRequest,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/seal/place"));
        self.send(self.http.post(url).json(request)).await
    }

    /// `POST /volumes/{vid}/seal/commit`: the volume turns `warm`.
    pub async fn commit_warm(
        &self,
        vid: u32,
        generation: u64,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        self.end_seal(vid, "commit", generation).await
    }

    /// `POST /volumes/{vid}/seal/journal`: the attempt's journal takes
    /// deletes.
    pub async fn open_journal(
        &self,
        vid: u32,
        generation: u64,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        self.end_seal(vid, "journal", generation).await
    }

    /// `POST /volumes/{vid}/seal/abort`: the volume is `locked` again.
    pub async fn abort_seal(
        &self,
        vid: u32,
        generation: u64,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        self.end_seal(vid, "abort", generation).await
    }

    /// `POST /volumes/{vid}/seal/{step}` for attempt `generation`.
    async fn end_seal(
        &self,
        vid: u32,
        step: &str,
        generation: u64,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/seal/{step}"));
        self.send(self.http.post(url).json(&GenerationRequest { generation }))
            .await
    }

    /// Marks journal holder `node` stale: it missed a delete.
    pub async fn mark_holder_stale(
        &self,
        vid: u32,
        node: &str,
        reason: &str,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        check_node_id(node)?;
        let url = self.url(&format!("/volumes/{vid}/holders/{node}/stale"));
        let body = StaleRequest {
            reason: reason.to_owned(),
            missed_delete: true,
        };
        self.send(self.http.post(url).json(&body)).await
    }

    /// `POST /volumes/{vid}/blocks/damaged`.
    pub async fn report_damaged_block(
        &self,
        vid: u32,
        request: &DamagedBlockRequest,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        check_node_id(&request.node)?;
        let url = self.url(&format!("/volumes/{vid}/blocks/damaged"));
        self.send(self.http.post(url).json(request)).await
    }

    /// `POST /volumes/{vid}/blocks/rebuilt`.
    pub async fn record_rebuilt_block(
        &self,
        vid: u32,
        request: &RebuiltBlockRequest,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        check_node_id(&request.node)?;
        let url = self.url(&format!("/volumes/{vid}/blocks/rebuilt"));
        self.send(self.http.post(url).json(request)).await
    }

    /// `POST /volumes/{vid}/rebuilds/{stripe}/claim`: claims the stripe's
    /// rebuild job with `request`'s plan.
    pub async fn claim_rebuild(
        &self,
        vid: u32,
        stripe: u64,
        request: &RebuildClaimRequest,
    ) -> Result<RebuildJob, DirectoryClientError> {
        for block in &request.blocks {
            check_node_id(&block.from)?;
            check_node_id(&block.to)?;
        }
        let url = self.url(&format!("/volumes/{vid}/rebuilds/{stripe}/claim"));
        self.send(self.http.post(url).json(request)).await
    }

    /// `POST /volumes/{vid}/rebuilds/{stripe}/renew`.
    pub async fn renew_rebuild(
        &self,
        vid: u32,
        stripe: u64,
        owner: &str,
        lease_ms: u64,
    ) -> Result<RebuildJob, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/rebuilds/{stripe}/renew"));
        let body = RenewRequest {
            owner: owner.to_owned(),
            lease_ms,
        };
        self.send(self.http.post(url).json(&body)).await
    }

    /// `POST /volumes/{vid}/rebuilds/{stripe}/end`: done (`error: None`;
    /// the job goes) or failed (the job stays, released).
    pub async fn end_rebuild(
        &self,
        vid: u32,
        stripe: u64,
        owner: &str,
        error: Option<String>,
    ) -> Result<Option<RebuildJob>, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/rebuilds/{stripe}/end"));
        let body = EndRequest {
            owner: owner.to_owned(),
            error,
        };
        self.send(self.http.post(url).json(&body)).await
    }

    /// `DELETE /volumes/{vid}/rebuilds/{stripe}?attempts=N`: the job goes
    /// if no one holds it and it is still at attempt `attempts`.
    pub async fn drop_rebuild(
        &self,
        vid: u32,
        stripe: u64,
        attempts: u32,
    ) -> Result<(), DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/rebuilds/{stripe}"));
        self.send(self.http.delete(url).query(&[("attempts", attempts)]))
            .await
    }

    /// `POST /companions`: a new companion volume of warm primaries.
    pub async fn create_companion(
        &self,
        request: &CompanionRequest,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        let url = self.url("/companions");
        self.send(self.http.post(url).json(request)).await
    }

    /// `DELETE /companions/{vid}[?owner=O]`: removes a companion and its
    /// links (`owner`: the caller holds its job's claim).
    pub async fn drop_companion(
        &self,
        vid: u32,
        owner: Option<&str>,
    ) -> Result<(), DirectoryClientError> {
        let url = self.url(&format!("/companions/{vid}"));
        let mut request = self.http.delete(url);
        if let Some(owner) = owner {
            request = request.query(&[("owner", owner)]);
        }
        self.send(request).await
    }

    /// `GET /rebuilds?after_volume=V&after_stripe=S&limit=N`: a page of
    /// rebuild jobs.
    pub async fn rebuilds(
        &self,
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<RebuildPage, DirectoryClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some((volume, stripe)) = after {
            query.push(("after_volume", volume.to_string()));
            query.push(("after_stripe", stripe.to_string()));
        }
        self.send(self.http.get(self.url("/rebuilds")).query(&query))
            .await
    }

    /// `POST /volumes/{vid}/holders/{node}/replace`.
    pub async fn replace_holder(
        &self,
        vid: u32,
        node: &str,
        request: &ReplaceHolderRequest,
    ) -> Result<LogicalVolume, DirectoryClientError> {
        check_node_id(node)?;
        check_node_id(&request.node)?;
        let url = self.url(&format!("/volumes/{vid}/holders/{node}/replace"));
        self.send(self.http.post(url).json(request)).await
    }

    /// `POST /volumes/{vid}/migration/claim`: claims (or renews) the
    /// volume's migration job for `owner`.
    pub async fn claim_migration(
        &self,
        vid: u32,
        owner: &str,
        lease_ms: u64,
    ) -> Result<MigrationJob, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/migration/claim"));
        let body = ClaimRequest {
            owner: owner.to_owned(),
            lease_ms,
        };
        self.send(self.http.post(url).json(&body)).await
    }

    /// `POST /volumes/{vid}/migration/step`: the claim's holder reports a
    /// step (a final one releases the claim).
    pub async fn migration_step(
        &self,
        vid: u32,
        request: &StepRequest,
    ) -> Result<MigrationJob, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/migration/step"));
        self.send(self.http.post(url).json(request)).await
    }

    /// `GET /migrations?after=V&limit=N`: a page of migration jobs.
    pub async fn migrations(
        &self,
        after: Option<u32>,
        limit: usize,
    ) -> Result<MigrationPage, DirectoryClientError> {
        self.send(
            self.http
                .get(self.url("/migrations"))
                .query(&page_query(after, limit)),
        )
        .await
    }

    /// Every dropped companion's id, page by page
    /// (`GET /companions/dropped`).
    pub async fn all_dropped_companions(&self) -> Result<Vec<u32>, DirectoryClientError> {
        every_page("dropped companion", |after: Option<u32>| async move {
            let query = page_query(after, VOLUME_PAGE_MAX);
            let page: DroppedPage = self
                .send(self.http.get(self.url("/companions/dropped")).query(&query))
                .await?;
            Ok((page.volumes, page.next_after))
        })
        .await
    }

    /// Every migration job, by volume id, a page at a time.
    pub fn migration_pages(&self) -> MigrationPages<'_> {
        MigrationPages {
            client: self,
            cursor: PageCursor::default(),
            held: VecDeque::new(),
        }
    }

    /// Every rebuild job, by `(volume, stripe)`, page by page.
    pub async fn all_rebuilds(&self) -> Result<Vec<RebuildJob>, DirectoryClientError> {
        every_page("rebuild job", |after| async move {
            let page = self.rebuilds(after, REBUILD_PAGE_MAX).await?;
            Ok((page.jobs, page.next_after))
        })
        .await
    }

    /// `POST /ownership`: claims or renews the writable volumes of process
    /// `instance` of router `owner` for `lease_ms`; every one it holds.
    pub async fn own_volumes(
        &self,
        owner: &str,
        instance: &str,
        volumes: Vec<VolumeClaim>,
        lease_ms: u64,
    ) -> Result<Vec<LogicalVolume>, DirectoryClientError> {
        let request = OwnershipRequest {
            owner: owner.to_owned(),
            instance: instance.to_owned(),
            lease_ms,
            volumes,
        };
        self.send(self.http.post(self.url("/ownership")).json(&request))
            .await
    }

    /// `POST /volumes/{vid}/leases`: leases `count` needle keys.
    pub async fn lease_keys(&self, vid: u32, count: u64) -> Result<KeyLease, DirectoryClientError> {
        let url = self.url(&format!("/volumes/{vid}/leases"));
        self.send(self.http.post(url).json(&LeaseRequest { count }))
            .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, DirectoryClientError> {
        let response = request.timeout(self.timeout).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status.is_success() {
            // No content decodes as JSON `null` (a `()` or an `Option`).
            let body = if status == reqwest::StatusCode::NO_CONTENT {
                &b"null"[..]
            } else {
                &body[..]
            };
            return serde_json::from_slice(body)
                .map_err(|e| DirectoryClientError::Decode(e.to_string()));
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.error, e.message),
            Err(_) => (
                "http".to_owned(),
                String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            ),
        };
        Err(DirectoryClientError::Api {
            status: status.as_u16(),
            code,
            message,
        })
    }
}

/// The walk of [`DirectoryClient::volume_pages`].
pub struct VolumePages<'a> {
    client: &'a DirectoryClient,
    cursor: PageCursor<u32>,
}

impl VolumePages<'_> {
    /// The next page, or `None` after the last one.
    pub async fn next(&mut self) -> Result<Option<Vec<LogicalVolume>>, DirectoryClientError> {
        let Some(after) = self.cursor.next_page() else {
            return Ok(None);
        };
        let page = self.client.volumes(after, VOLUME_PAGE_MAX).await?;
        advance(&mut self.cursor, page.next_after, "volume")?;
        Ok(Some(page.volumes))
    }
}

/// The walk of [`DirectoryClient::migration_pages`].
pub struct MigrationPages<'a> {
    client: &'a DirectoryClient,
    cursor: PageCursor<u32>,
    /// What [`MigrationPages::job_of`] has read and not passed yet.
    held: VecDeque<MigrationJob>,
}

impl MigrationPages<'_> {
    /// The next page, or `None` after the last one.
    pub async fn next(&mut self) -> Result<Option<Vec<MigrationJob>>, DirectoryClientError> {
        let Some(after) = self.cursor.next_page() else {
            return Ok(None);
        };
        let page = self.client.migrations(after, VOLUME_PAGE_MAX).await?;
        advance(&mut self.cursor, page.next_after, "migration job")?;
        Ok(Some(page.jobs))
    }

    /// Volume `id`'s job, if it has one, for ids asked in increasing order
    /// (a walk beside [`DirectoryClient::volume_pages`]: the jobs of the
    /// ids passed by are dropped).
    pub async fn job_of(&mut self, id: u32) -> Result<Option<MigrationJob>, DirectoryClientError> {
        loop {
            while self.held.front().is_some_and(|job| job.volume < id) {
                self.held.pop_front();
            }
            if let Some(job) = self.held.front() {
                return Ok((job.volume == id).then(|| job.clone()));
            }
            match self.next().await? {
                Some(jobs) => self.held = jobs.into(),
                None => return Ok(None),
            }
        }
    }
}

/// Takes a page's cursor; an error if the pages of `what`s stopped
/// advancing.
fn advance(
    cursor: &mut PageCursor<u32>,
    next: Option<u32>,
    what: &str,
) -> Result<(), DirectoryClientError> {
    if cursor.advance(next) {
        Ok(())
    } else {
        Err(stalled(what))
    }
}

/// The error of a listing of `what`s whose pages stopped advancing.
fn stalled(what: &str) -> DirectoryClientError {
    DirectoryClientError::Decode(format!("{what} pages do not advance"))
}

/// The query of a listing by volume id ([`VolumePageQuery`]).
fn page_query(after: Option<u32>, limit: usize) -> VolumePageQuery {
    VolumePageQuery {
        after,
        limit: Some(limit),
    }
}

/// Every item of a paged listing of `what`s (see
/// [`haystack::api::every_page`]).
async fn every_page<T, K, F, Fut>(what: &str, page: F) -> Result<Vec<T>, DirectoryClientError>
where
    K: PartialOrd + Copy,
    F: FnMut(Option<K>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<K>), DirectoryClientError>>,
{
    haystack::api::every_page(page, || stalled(what)).await
}

/// Node ids go into URL paths unescaped, so the client refuses anything the
/// directory would refuse anyway (see [`valid_node_id`]).
fn check_node_id(id: &str) -> Result<(), DirectoryClientError> {
    if valid_node_id(id) {
        Ok(())
    } else {
        Err(DirectoryClientError::BadArgument(format!(
            "node id {id:?}: 1 to {MAX_NODE_ID_LEN} of [A-Za-z0-9._-]"
        )))
    }
}

/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 128;

/// Whether `id` is a valid node id: 1 to [`MAX_NODE_ID_LEN`] characters of
/// `[A-Za-z0-9._-]`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
