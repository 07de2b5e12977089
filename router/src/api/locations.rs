//! `GET /volumes/{id}/locations`: where a smart client may read a volume's
//! BLOBs straight from a store node (`docs/ARCHITECTURE.md`, "Direct
//! reads"). Clients cache the answer and drop it on any answer but `200`
//! from a node, then read through a router.
//!
//! The list is advice: a node serves a direct read only under its own read
//! lease from the directory, so an answer that went out of date (a replica
//! that missed a delete since, a volume that turned warm) is refused there
//! (`409 no_read_lease`), never served.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::seal::volume_id;
use super::state::AppState;
use crate::directory::VolumeState;

/// The answer: the volume's state and, for a hot volume, its fresh replicas
/// on `up` store nodes (none for a warm or sealing one: read through a
/// router).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Locations {
    /// The volume asked about.
    pub volume: u32,
    /// Its state in the directory (as this router last read it).
    pub state: VolumeState,
    /// Nodes to read from, in the router's order of preference.
    pub locations: Vec<Location>,
}

/// One store node to read from: `GET {url}/direct/volumes/{vid}/needles/{key}?cookie=C`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Location {
    /// The store node's id.
    pub node: String,
    /// Its base URL.
    pub url: String,
}

pub(crate) async fn volume_locations(
    State(state): State<Arc<AppState>>,
    Path(vid): Path<String>,
) -> Result<Json<Locations>, ApiError> {
    let vid = volume_id(&vid)?;
    let volume = state.cache.volume(vid, false).await?;
    let mut locations = Vec::new();
    if volume.state.is_hot() {
        let nodes = state.cache.nodes(false).await?;
        locations = super::read::readable_replicas(&volume, &nodes, 0, false)
            .into_iter()
            .map(|(n, _)| Location {
                node: n.id.clone(),
                url: n.base_url(),
            })
            .collect();
    }
    Ok(Json(Locations {
        volume: vid,
        state: volume.state,
        locations,
    }))
}
