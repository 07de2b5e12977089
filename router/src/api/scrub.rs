//! The scrub: every byte at rest read back and checked, before a read
//! needs it. A deep scrub also has a rebuilder read every warm stripe whole
//! and recompute its parity from its data (`POST /verify`), which finds a
//! block whose bytes changed with its checksums (a bug, a bad write that
//! checksummed what it wrote): the one block that disagrees with the other
//! thirteen is reported damaged. Warm blocks are read whole by their storage node and checked
//! against their header and chunk CRCs (`POST /blocks/check`); hot
//! replicas are read needle by needle by their store node and each needle
//! checked (`POST /volumes/{vid}/scrub`). What fails is reported to the
//! directory as a damaged block (the coordinator rebuilds it in place) or
//! a damaged needle (the directory's repair pass mends it from a good
//! replica, or marks it lost when none has one); a read never serves it
//! meanwhile, since every read checks what it returns.
//!
//! The coordinator scrubs in the background at
//! [`super::config::RouterConfig::scrub_rate_bytes`], one volume after the
//! other by id; a volume with something it could not check (its node down
//! or silent) is kept on a list and tried again, whole, until it could be
//! checked: nothing counts as checked that was not. A router runs a whole
//! pass on `POST /admin/scrub[?volume=N]` (`hayloft scrub`), at the same
//! rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use f4::api::BlockId;
use f4::api::VerifyRequest;
use f4::client::{RebuilderClient, StorageClient};
use f4::pace::Pace;
use haystack::api::PageCursor;
use serde::{Deserialize, Serialize};

use super::coordinate::{in_datacenter, up_node, up_rebuilders};
use super::error::ApiError;
use super::state::AppState;
use crate::directory::types::DamagedBlockRequest;
use crate::directory::{LogicalVolume, NodeRecord, VolumeState, WarmVolume};

/// Needles one scrub request checks at most.
const NEEDLES_PER_REQUEST: usize = 1024;

/// A corrupt copy a scrub found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The volume.
    pub volume: u32,
    /// `stripe.block` of a warm block, or the needle key in hex.
    pub what: String,
    /// The node holding the copy.
    pub node: String,
}

/// What a scrub checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Volumes checked whole.
    pub volumes: usize,
    /// Warm blocks checked.
    pub blocks_checked: u64,
    /// Warm stripes whose parity was recomputed and compared (a deep
    /// scrub).
    pub stripes_verified: u64,
    /// Hot needles checked (each replica's copy counts).
    pub needles_checked: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Warm blocks that failed, reported for a rebuild in place.
    pub damaged_blocks: Vec<Finding>,
    /// Hot needle copies that failed, reported for repair.
    pub corrupt_needles: Vec<Finding>,
    /// Needles whose every replica failed: unrecoverable, named `V,KEY`.
    pub unrecoverable: Vec<String>,
    /// What could not be checked (the node down or not answering): the
    /// volume is scrubbed again later.
    pub unchecked: Vec<String>,
}

impl ScrubReport {
    fn add(&mut self, other: ScrubReport) {
        self.volumes += other.volumes;
        self.blocks_checked += other.blocks_checked;
        self.stripes_verified += other.stripes_verified;
        self.needles_checked += other.needles_checked;
        self.bytes += other.bytes;
        self.damaged_blocks.extend(other.damaged_blocks);
        self.corrupt_needles.extend(other.corrupt_needles);
        self.unrecoverable.extend(other.unrecoverable);
        self.unchecked.extend(other.unchecked);
    }
}

/// Checks every copy of `volume`, paced by `pace`, reporting what fails
/// to the directory. The report's `unchecked` says whether all of it could
/// be checked.
async fn scrub_volume(
    state: &AppState,
    volume: &LogicalVolume,
    nodes: &[NodeRecord],
    pace: &mut Pace,
    deep: bool,
) -> ScrubReport {
    let up = |id: &str| up_node(nodes, id);
    let mut report = ScrubReport::default();
    match (&volume.warm, volume.state) {
        (Some(warm), VolumeState::Warm) => {
            let Ok(layout) = warm.geometry.layout() else {
                return report;
            };
            for (stripe, members) in warm.stripes.iter().enumerate() {
                for (block, node) in members.iter().enumerate() {
                    let place = format!("{stripe}.{block}");
                    let Some(record) = up(node) else {
                        report.unchecked.push(format!(
                            "volume {} block {place} on {node} (down)",
                            volume.id
                        ));
                        continue;
                    };
                    let client =
                        StorageClient::from_http(&record.base_url(), state.warm_http.clone());
                    let id = BlockId {
                        volume: volume.id,
                        generation: warm.generation,
                        stripe: stripe as u64,
                        block: block as u32,
                    };
                    let len = layout.block_len_bytes(id.stripe, block).unwrap_or(0);
                    // Paced before the node reads the block whole.
                    pace.take(len).await;
                    match client.check_block(id, warm.geometry).await {
                        Ok(()) => {}
                        Err(e) if e.is_block_damage() => {
                            let why = format!("scrub: {e}");
                            damaged_block(state, id, node, why, false, &mut report).await;
                        }
                        Err(e) => {
                            report
                                .unchecked
                                .push(format!("volume {} block {place} on {node}: {e}", volume.id));
                            continue;
                        }
                    }
                    report.blocks_checked += 1;
                    report.bytes += len;
                    state.metrics.scrubbed_bytes(len);
                }
                if deep {
                    // The rebuilder reads the stripe at the scrub's rate.
                    verify_stripe(state, volume.id, warm, stripe as u64, nodes, &mut report).await;
                }
            }
        }
        (
            _,
            VolumeState::Writable
            | VolumeState::ReadOnly
            | VolumeState::Locked
            | VolumeState::Sealing,
        ) => {
            let mut corrupt_on: Vec<(u64, usize)> = Vec::new();
            let mut replicas_checked = 0;
            for node in &volume.replicas {
                let Some(record) = up(node) else {
                    report
                        .unchecked
                        .push(format!("volume {} on {node} (down)", volume.id));
                    continue;
                };
                match scrub_replica(state, volume.id, record, pace, &mut report).await {
                    Ok(corrupt) => {
                        replicas_checked += 1;
                        for key in corrupt {
                            match corrupt_on.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, count)) => *count += 1,
                                None => corrupt_on.push((key, 1)),
                            }
                        }
                    }
                    Err(why) => report
                        .unchecked
                        .push(format!("volume {} on {node}: {why}", volume.id)),
                }
            }
            if replicas_checked == volume.replicas.len() {
                report.unrecoverable.extend(
                    corrupt_on
                        .iter()
                        .filter(|(_, count)| *count == replicas_checked)
                        .map(|(key, _)| format!("{},{key:x}", volume.id)),
                );
            }
        }
        // A warm volume without its record has nothing to check.
        _ => {}
    }
    if report.unchecked.is_empty() {
        report.volumes = 1;
    }
    report
}

/// Reports block `id` on `node` damaged (`silent`: wrong bytes under good
/// checksums; the coordinator rebuilds it in place) and names it in
/// `report`.
async fn damaged_block(
    state: &AppState,
    id: BlockId,
    node: &str,
    reason: String,
    silent: bool,
    report: &mut ScrubReport,
) {
    state.metrics.checksum_mismatch("warm");
    let vid = id.volume;
    let place = format!("{}.{}", id.stripe, id.block);
    let damaged = DamagedBlockRequest {
        generation: id.generation,
        stripe: id.stripe,
        block: id.block,
        node: node.to_owned(),
        reason,
        silent,
    };
    if let Err(e) = state.directory.report_damaged_block(vid, &damaged).await {
        report
            .unchecked
            .push(format!("volume {vid} block {place}: not reported: {e}"));
    }
    report.damaged_blocks.push(Finding {
        volume: vid,
        what: place,
        node: node.to_owned(),
    });
}

/// The deep scrub of one stripe: a rebuilder reads all its blocks and
/// recomputes the parity from the data; a block that disagrees with the
/// other thirteen is reported damaged.
async fn verify_stripe(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    stripe: u64,
    nodes: &[NodeRecord],
    report: &mut ScrubReport,
) {
    let members = &warm.stripes[stripe as usize];
    let sources: Option<Vec<String>> = members
        .iter()
        .map(|id| up_node(nodes, id).map(NodeRecord::base_url))
        .collect();
    // Stripes spread over the rebuilders.
    let home = warm.home_datacenter(super::coordinate::datacenter_in(nodes));
    let rebuilders = in_datacenter(&up_rebuilders(nodes), &home);
    let rebuilder = rebuilders
        .get(stripe as usize % rebuilders.len().max(1))
        .copied();
    let (Some(sources), Some(rebuilder)) = (sources, rebuilder) else {
        report.unchecked.push(format!(
            "volume {vid} stripe {stripe}: parity not verified (a block's node or every rebuilder is down)"
        ));
        return;
    };
    let request = VerifyRequest {
        volume: vid,
        generation: warm.generation,
        geometry: warm.geometry,
        stripe,
        sources,
        bytes_per_second: state.config.scrub_rate_bytes,
    };
    let client = RebuilderClient::from_http(&rebuilder.base_url(), state.warm_http.clone());
    match client.verify(&request).await {
        Ok(verified) => {
            report.stripes_verified += 1;
            for block in verified.damaged_blocks {
                let Some(node) = members.get(block as usize) else {
                    continue;
                };
                let id = BlockId {
                    volume: vid,
                    generation: warm.generation,
                    stripe,
                    block,
                };
                // A rebuilder from before the distinction does not say.
                let silent = verified
                    .silent_blocks
                    .as_ref()
                    .is_none_or(|silent| silent.contains(&block));
                let why = if silent {
                    "deep scrub: disagrees with the parity of its stripe"
                } else {
                    "deep scrub: its node could not serve it"
                };
                damaged_block(state, id, node, why.to_owned(), silent, report).await;
            }
            if verified.unexplained_columns > 0 {
                report.unchecked.push(format!(
                    "volume {vid} stripe {stripe}: parity disagrees with the data in {} columns no \
                     single block explains",
                    verified.unexplained_columns
                ));
            }
        }
        Err(e) => report.unchecked.push(format!(
            "volume {vid} stripe {stripe}: parity not verified: {e}"
        )),
    }
}

/// Scrubs one replica of `vid` on `node` stretch by stretch; the keys that
/// failed.
async fn scrub_replica(
    state: &AppState,
    vid: u32,
    node: &NodeRecord,
    pace: &mut Pace,
    report: &mut ScrubReport,
) -> Result<Vec<u64>, String> {
    let client = state.store_for_admin(node).map_err(|e| e.to_string())?;
    let mut corrupt = Vec::new();
    let mut cursor = PageCursor::default();
    while let Some(after) = cursor.next_page() {
        let page = client
            .scrub(vid, after, NEEDLES_PER_REQUEST)
            .await
            .map_err(|e| e.to_string())?;
        report.needles_checked += page.checked;
        report.bytes += page.bytes;
        state.metrics.scrubbed_bytes(page.bytes);
        for key in &page.corrupt {
            state.metrics.checksum_mismatch("hot");
            let reported = state
                .directory
                .report_damaged_needle(
                    vid,
                    *key,
                    &node.id,
                    None,
                    "scrub: the needle failed its checks",
                )
                .await;
            if let Err(e) = reported {
                return Err(format!("key {key:x} not reported: {e}"));
            }
            report.corrupt_needles.push(Finding {
                volume: vid,
                what: format!("{key:x}"),
                node: node.id.clone(),
            });
        }
        corrupt.extend(page.corrupt);
        pace.take(page.bytes).await;
        if !cursor.advance(page.next_after) {
            return Err(format!(
                "the scrub of volume {vid} on {} does not page forward",
                node.id
            ));
        }
    }
    Ok(corrupt)
}

/// One whole pass: every volume (or only `only`), one after the other.
pub(crate) async fn scrub_all(
    state: &AppState,
    only: Option<u32>,
    deep: bool,
) -> Result<ScrubReport, ApiError> {
    let nodes = state.directory.list_nodes().await?;
    let mut pace = Pace::new(state.config.scrub_rate_bytes);
    let mut report = ScrubReport::default();
    if let Some(vid) = only {
        let volume = super::seal::known_volume(state, vid).await?;
        report.add(scrub_volume(state, &volume, &nodes, &mut pace, deep).await);
        return Ok(report);
    }
    let mut pages = state.directory.volume_pages();
    while let Some(page) = pages.next().await? {
        for volume in &page {
            report.add(scrub_volume(state, volume, &nodes, &mut pace, deep).await);
        }
    }
    Ok(report)
}

/// Query of `POST /admin/scrub`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScrubQuery {
    volume: Option<u32>,
    /// Also recompute every warm stripe's parity and compare it.
    #[serde(default)]
    deep: bool,
}

/// `POST /admin/scrub[?volume=N]`: a whole scrub now.
pub(crate) async fn scrub_now(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ScrubQuery>,
) -> Result<Json<ScrubReport>, ApiError> {
    Ok(Json(scrub_all(&state, query.volume, query.deep).await?))
}

/// The coordinator's background scrub: volume after volume by id, each
/// checked whole at [`super::config::RouterConfig::scrub_rate_bytes`],
/// forever. A volume it could not check whole (a node down, an error) is
/// kept on a list and tried again, whole, every `retry`, before the cursor
/// goes on: it is never counted as checked until it was.
pub(crate) async fn scrub_forever(state: Arc<AppState>, retry: Duration) {
    let mut cursor: Option<u32> = None;
    let mut unchecked: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut pace = Pace::new(state.config.scrub_rate_bytes);
    let deep_every = Duration::from_millis(state.config.deep_scrub_interval_ms);
    // The first round is shallow: a deep one comes an interval later.
    let mut last_deep = Instant::now();
    let mut deep = false;
    loop {
        let nodes = match state.directory.list_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "scrub: the directory did not answer");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let due = unchecked
            .iter()
            .find(|(_, tried)| tried.elapsed() >= retry)
            .map(|(id, _)| *id);
        // One volume asked for at a time: the due one, else the next by id.
        let next = match due {
            Some(id) => match state.directory.volume(id).await {
                Err(e) if e.is_not_found() => {
                    // Gone since it was tried (a companion dropped, say).
                    unchecked.remove(&id);
                    continue;
                }
                asked => asked.map(Some),
            },
            None => state
                .directory
                .volumes(cursor, 1)
                .await
                .map(|page| page.volumes.into_iter().next()),
        };
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "scrub: the directory did not answer");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let Some(volume) = next else {
            // A whole round done: start over, after a pause if it was empty.
            if cursor.is_none() {
                tokio::time::sleep(retry).await;
            }
            cursor = None;
            deep = last_deep.elapsed() >= deep_every;
            if deep {
                last_deep = Instant::now();
            }
            continue;
        };
        if due.is_none() {
            cursor = Some(volume.id);
        }
        let report = scrub_volume(&state, &volume, &nodes, &mut pace, deep).await;
        if !report.damaged_blocks.is_empty() || !report.corrupt_needles.is_empty() {
            tracing::warn!(
                volume = volume.id,
                damaged_blocks = report.damaged_blocks.len(),
                corrupt_needles = report.corrupt_needles.len(),
                "scrub found damage"
            );
        }
        if report.unchecked.is_empty() {
            unchecked.remove(&volume.id);
        } else {
            tracing::info!(volume = volume.id, unchecked = ?report.unchecked,
                "scrub could not check all of the volume; it is tried again later");
            unchecked.insert(volume.id, Instant::now());
        }
    }
}
