//! Direct reads for smart clients (`docs/ARCHITECTURE.md`, "Direct
//! reads"), as Haystack and SeaweedFS clients read: look a volume up once
//! (`GET {router}/volumes/{id}/locations`), keep the answer, and read BLOBs
//! straight from a store node that holds the volume. Any answer but `200`
//! from the node, or none, sends the read through the router, whose answer
//! stands; a refusal (`409`: no read lease there any more), a missing
//! volume or no answer also drops the volume's entry (a `404` of a BLOB, a
//! deleted one most often, does not).
//!
//! `hayloft get --direct` and the load generator's `--direct` share this.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use haystack::api::{DIRECT_READ_PREFIX, ERROR_HEADER, needle_path};

use crate::api::BlobId;
use crate::api::locations::{Location, Locations};

/// Volumes whose locations a reader keeps at most (all are dropped when
/// one more would not fit).
pub const CACHED_VOLUMES_MAX: usize = 65_536;

/// How long a volume's locations are kept before they are looked up again.
pub const LOCATIONS_TTL: Duration = Duration::from_secs(60);

/// Who answered a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answered {
    /// This store node, directly.
    Node(String),
    /// The router.
    Router,
}

/// A smart client's reads of one router's BLOBs.
#[derive(Debug)]
pub struct DirectReader {
    http: reqwest::Client,
    router: String,
    locations: Mutex<HashMap<u32, Kept>>,
}

/// A volume's locations, and when they were looked up.
type Kept = (Arc<[Location]>, Instant);

impl DirectReader {
    /// Reads through `http` of BLOBs the router at `router` (a base URL) serves.
    pub fn new(http: reqwest::Client, router: &str) -> DirectReader {
        DirectReader {
            http,
            router: router.trim_end_matches('/').to_owned(),
            locations: Mutex::new(HashMap::new()),
        }
    }

    /// `GET` of BLOB `id`: from a store node holding its volume if one
    /// answers `200`, else from the router (whatever it answers).
    pub async fn get(&self, id: &BlobId) -> Result<(reqwest::Response, Answered), reqwest::Error> {
        let locations = self.locations(id.volume).await;
        // Spread a volume's reads over its replicas.
        if let Some(location) = locations.get((id.key % locations.len().max(1) as u64) as usize) {
            let url = format!(
                "{}{DIRECT_READ_PREFIX}{}",
                location.url,
                needle_path(id.volume, id.key, id.cookie)
            );
            match self.http.get(url).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => {
                    return Ok((response, Answered::Node(location.node.clone())));
                }
                Ok(response) => {
                    tracing::debug!(volume = id.volume, node = %location.node,
                        status = %response.status(), "not read directly; asking the router");
                    let missing_blob = response.status() == reqwest::StatusCode::NOT_FOUND
                        && response
                            .headers()
                            .get(ERROR_HEADER)
                            .is_some_and(|code| code == haystack::api::code::NOT_FOUND);
                    if !missing_blob {
                        self.forget(id.volume);
                    }
                }
                Err(error) => {
                    tracing::debug!(volume = id.volume, node = %location.node, %error,
                        "direct read failed; asking the router");
                    self.forget(id.volume);
                }
            }
        }
        let response = self
            .http
            .get(format!("{}/blobs/{id}", self.router))
            .send()
            .await?;
        Ok((response, Answered::Router))
    }

    /// The volume's locations, looked up if not kept (none if the lookup
    /// fails: the read goes through the router).
    async fn locations(&self, volume: u32) -> Arc<[Location]> {
        if let Some((locations, at)) = self.locations.lock().get(&volume)
            && at.elapsed() < LOCATIONS_TTL
        {
            return locations.clone();
        }
        let url = format!("{}/volumes/{volume}/locations", self.router);
        let looked_up = async {
            let response = self.http.get(url).send().await?.error_for_status()?;
            response.json::<Locations>().await
        };
        let locations: Arc<[Location]> = match looked_up.await {
            Ok(answer) => answer.locations.into(),
            Err(error) => {
                tracing::debug!(volume, %error, "volume lookup failed");
                return Arc::from(Vec::new());
            }
        };
        let mut kept = self.locations.lock();
        if kept.len() >= CACHED_VOLUMES_MAX {
            kept.clear();
        }
        kept.insert(volume, (locations.clone(), Instant::now()));
        locations
    }

    /// Drops what is kept of `volume`.
    fn forget(&self, volume: u32) {
        self.locations.lock().remove(&volume);
    }
}
