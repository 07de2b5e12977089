//! Replica repair (`docs/ARCHITECTURE.md`, "Replica repair").
//!
//! A replica is stale when it may have missed a write or a delete. Every
//! pass, for each stale replica whose node is `up`, the directory asks that
//! node to bulk-sync the volume (`POST /volumes/{vid}/sync?from=PEER&also=...`)
//! from a non-stale replica on an `up` node, and clears the stale mark once
//! the sync answers 200, unless another report moved the volume's repair
//! epoch meanwhile. The sync only catches up on deletes when the replica
//! holds the source's needles already, and otherwise copies the source
//! needle by needle, each checked, taking a bad one from a good copy
//! (`haystack::service` sync). What it reports goes into the damaged-needle
//! records. If every replica is stale, the up replica with the highest
//! `last_key` (then the most needles) among those that missed no delete
//! becomes the source and its mark is cleared first; if every one missed a
//! delete, the source first takes every other replica's deletes
//! ([`take_peer_deletes`]), and waits for those that are down.
//!
//! A copy of a single needle that fails its checks does not make its replica
//! stale: it is recorded as a damaged needle (by the router that read it, or
//! by a sync that met it), and [`needles`] mends it in place from a good
//! copy; every other needle of that replica keeps serving reads.
//!
//! A store streams only a read-only or locked replica, so a source that is
//! still writable at its store is sealed first: the logical volume (already
//! `readonly`, since it has a stale replica) is set `locked` in the directory,
//! then every fresh up replica is locked at its store. A volume that lost a
//! replica therefore never takes uploads again (as in Haystack); it stays
//! readable and can later migrate to the warm tier like any locked volume.
//!
//! Each pass first audits the up store nodes (`GET /volumes`): a replica
//! that its node no longer holds (the node came back with an empty or
//! replaced disk) is marked stale, so that it too is resynchronised before it
//! serves reads; the same answers refresh each volume's recorded size and
//! needle count. Repairs run one at a time: a bulk sync is a large sequential copy, and
//! running them serially is the simplest throttle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use haystack::api::SyncReport;
use haystack::client::ClientError;

use super::stores::StoreCalls;
use super::types::{LogicalVolume, NodeRecord, VolumeState};
use super::{Directory, DirectoryError, now_ms};

mod holders;
mod needles;

/// What one repair pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RepairReport {
    /// `(volume, node)` replicas resynchronised and marked fresh.
    pub(crate) repaired: Vec<(u32, String)>,
    /// `(volume, node)` replicas whose repair failed (retried next pass).
    pub(crate) failed: Vec<(u32, String)>,
    /// `(volume, key, node)` needle copies mended from a good copy.
    pub(crate) needles_mended: Vec<(u32, u64, String)>,
    /// `(volume, key)` needles found to have no good copy on any replica.
    pub(crate) needles_lost: Vec<(u32, u64)>,
    /// `(volume, node)`: every replica of the volume missed a delete, and
    /// this one, which may hold a delete the others lack, is not `up`; the
    /// volume serves no read until it is (`docs/ARCHITECTURE.md`, "Replica
    /// repair").
    pub(crate) waiting: Vec<(u32, String)>,
}

impl RepairReport {
    fn is_empty(&self) -> bool {
        self.repaired.is_empty()
            && self.failed.is_empty()
            && self.needles_mended.is_empty()
            && self.needles_lost.is_empty()
            && self.waiting.is_empty()
    }
}

/// Runs a repair pass every `interval` until `cancel` fires.
pub(crate) async fn run_repair_loop(
    directory: Arc<dyn Directory>,
    stores: StoreCalls,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            result = repair_pass(&directory, &stores) => match result {
                Ok(report) if !report.is_empty() => {
                    tracing::info!(repaired = ?report.repaired, failed = ?report.failed,
                        needles_mended = ?report.needles_mended, needles_lost = ?report.needles_lost,
                        waiting = ?report.waiting, "replica repair pass");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "replica repair pass failed"),
            }
        }
    }
}

/// Runs `f` on the directory in a blocking task.
pub(super) async fn blocking<T: Send + 'static>(
    directory: &Arc<dyn Directory>,
    f: impl FnOnce(&dyn Directory) -> Result<T, DirectoryError> + Send + 'static,
) -> Result<T, DirectoryError> {
    let directory = Arc::clone(directory);
    tokio::task::spawn_blocking(move || f(&*directory))
        .await
        .map_err(|e| DirectoryError::Internal(format!("directory task: {e}")))?
}

/// One pass: first audit the replicas on up store nodes (missing ones turn
/// stale, sizes are refreshed), then repair every volume with a stale replica.
pub(crate) async fn repair_pass(
    directory: &Arc<dyn Directory>,
    stores: &StoreCalls,
) -> Result<RepairReport, DirectoryError> {
    let (volumes, nodes) =
        blocking(directory, |d| Ok((d.list_volumes()?, d.list_nodes()?))).await?;
    let nodes: HashMap<String, NodeRecord> = nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
    let mut report = RepairReport::default();
    let volumes = audit_replicas(directory, stores, &nodes, volumes).await?;
    holders::merge_stale_holders(directory, stores, &nodes, &volumes).await;
    let hot = volumes
        .iter()
        .filter(|v| v.state != VolumeState::Warm && !v.stale_replicas.is_empty());
    for volume in hot {
        let volume = volume.clone();
        if let Err(e) = repair_volume(directory, stores, &nodes, volume, &mut report).await {
            tracing::warn!(error = %e, "volume repair failed");
        }
    }
    let volumes: HashMap<u32, LogicalVolume> = volumes.into_iter().map(|v| (v.id, v)).collect();
    needles::repair_needles(directory, stores, &nodes, &volumes, &mut report).await?;
    Ok(report)
}

/// A replica allocated this recently may not exist on its store yet (the
/// allocating request creates it after committing), so the audit skips it.
const AUDIT_GRACE_MS: u64 = 60_000;

/// Asks every `up` store node holding a fresh replica for its replicas'
/// status (`GET /volumes`), then:
///
/// - marks stale every fresh replica its node does not list (past
///   [`AUDIT_GRACE_MS`] after allocation): the node came back with an empty
///   or replaced disk (a lost replica being replaced), and must be
///   resynchronised before anyone reads from it;
/// - records each volume's size and needle count (the largest among its
///   fresh replicas) when they changed.
///
/// Returns `volumes` with those changes applied.
async fn audit_replicas(
    directory: &Arc<dyn Directory>,
    stores: &StoreCalls,
    nodes: &HashMap<String, NodeRecord>,
    mut volumes: Vec<LogicalVolume>,
) -> Result<Vec<LogicalVolume>, DirectoryError> {
    let settled_before = now_ms().saturating_sub(AUDIT_GRACE_MS);
    let mut expected: HashMap<&str, Vec<usize>> = HashMap::new();
    // A warm volume's hot replicas are deleted once it is warm.
    for (index, volume) in volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| v.state != VolumeState::Warm)
    {
        for replica in volume.fresh_replicas() {
            if let Some(node) = up_node(nodes, replica) {
                expected.entry(node.id.as_str()).or_default().push(index);
            }
        }
    }
    let mut missing: Vec<(usize, String)> = Vec::new();
    let mut sizes: HashMap<usize, (u64, u64)> = HashMap::new();
    for (node_id, indexes) in expected {
        let node = &nodes[node_id];
        let held: HashMap<u32, (u64, u64)> = match stores.list_volumes(&node.base_url()).await {
            Ok(list) => list
                .into_iter()
                .map(|s| (s.volume_id, (s.size_bytes, s.needle_count)))
                .collect(),
            Err(e) => {
                tracing::debug!(node = node_id, error = %e, "listing replicas failed");
                continue;
            }
        };
        for index in indexes {
            match held.get(&volumes[index].id) {
                Some(&(size_bytes, needle_count)) => {
                    let entry = sizes.entry(index).or_default();
                    *entry = (entry.0.max(size_bytes), entry.1.max(needle_count));
                }
                None if volumes[index].created_ms <= settled_before => {
                    missing.push((index, node_id.to_owned()));
                }
                None => {}
            }
        }
    }
    for (index, node_id) in missing {
        let vid = volumes[index].id;
        tracing::warn!(volume = vid, replica = %node_id, "replica missing on its node; marking stale");
        let node = node_id.clone();
        volumes[index] =
            blocking(directory, move |d| d.mark_replica_stale(vid, &node, false)).await?;
    }
    for (index, (size_bytes, needle_count)) in sizes {
        let volume = &volumes[index];
        if (volume.size_bytes, volume.needle_count) == (size_bytes, needle_count) {
            continue;
        }
        let vid = volume.id;
        volumes[index] = blocking(directory, move |d| {
            d.update_volume_sizes(vid, size_bytes, needle_count)
        })
        .await?;
    }
    Ok(volumes)
}

pub(super) fn up_node<'a>(
    nodes: &'a HashMap<String, NodeRecord>,
    id: &str,
) -> Option<&'a NodeRecord> {
    nodes.get(id).filter(|n| n.is_up())
}

async fn repair_volume(
    directory: &Arc<dyn Directory>,
    stores: &StoreCalls,
    nodes: &HashMap<String, NodeRecord>,
    volume: LogicalVolume,
    report: &mut RepairReport,
) -> Result<(), DirectoryError> {
    let vid = volume.id;
    let epoch = volume.repair_epoch;
    let targets: Vec<&NodeRecord> = volume
        .stale_replicas
        .iter()
        .filter_map(|r| up_node(nodes, r))
        .collect();
    if targets.is_empty() {
        return Ok(());
    }
    let fresh: Vec<&NodeRecord> = volume
        .fresh_replicas()
        .filter_map(|r| up_node(nodes, r))
        .collect();
    let (source, targets) = match fresh.first() {
        Some(source) => (*source, targets),
        None if volume.fresh_replicas().next().is_none() => {
            // Every replica is stale: elect the most complete up replica,
            // preferring those that missed no delete.
            let source = elect_source(stores, &volume, &targets).await?;
            if volume.missed_delete(&source.id)
                && !take_peer_deletes(stores, nodes, &volume, source, report).await?
            {
                return Ok(());
            }
            tracing::info!(volume = vid, source = %source.id, "every replica stale; electing source");
            let others = targets.into_iter().filter(|t| t.id != source.id).collect();
            (source, others)
        }
        // A fresh replica exists but its node is down: wait for it.
        None => return Ok(()),
    };
    let status = stores
        .volume_status(&source.base_url(), vid)
        .await
        .map_err(|e| store_error(source, &e))?;
    if !status.locked && !status.read_only {
        seal_volume(directory, stores, nodes, &volume, &source.id).await?;
    }
    if volume.is_stale(&source.id) {
        let source_id = source.id.clone();
        blocking(directory, move |d| {
            d.clear_replica_stale(vid, &source_id, epoch)
        })
        .await?;
    }
    for target in targets {
        // Needles that fail their checks at the source are taken from the
        // other up replicas.
        let also: Vec<String> = volume
            .replicas
            .iter()
            .filter(|r| **r != source.id && **r != target.id)
            .filter_map(|r| up_node(nodes, r))
            .map(NodeRecord::base_url)
            .collect();
        match stores
            .sync_volume(&target.base_url(), vid, &source.base_url(), &also)
            .await
        {
            Ok(sync) => {
                let target_id = target.id.clone();
                let after = blocking(directory, move |d| {
                    d.clear_replica_stale(vid, &target_id, epoch)
                })
                .await?;
                record_sync(directory, vid, &source.id, &target.id, &sync).await?;
                if after.is_stale(&target.id) {
                    tracing::info!(volume = vid, replica = %target.id,
                        "reported again during its resync; next pass");
                    continue;
                }
                tracing::info!(volume = vid, replica = %target.id, source = %source.id,
                    method = %sync.method, "replica resynchronised");
                report.repaired.push((vid, target.id.clone()));
            }
            Err(e) => {
                tracing::warn!(volume = vid, replica = %target.id, source = %source.id, error = %e, "replica sync failed");
                report.failed.push((vid, target.id.clone()));
            }
        }
    }
    Ok(())
}

/// Records what a sync found: needles bad at the source are queued for
/// needle repair there; needles with no good copy anywhere are recorded lost
/// by BLOB id; a copy checked every needle of the target, so its earlier
/// damage records are resolved. A source with more damage than a report
/// holds is marked stale, to be rebuilt from a checked copy.
async fn record_sync(
    directory: &Arc<dyn Directory>,
    vid: u32,
    source: &str,
    target: &str,
    sync: &SyncReport,
) -> Result<(), DirectoryError> {
    if sync.method == "copy" {
        needles::resolve_replica(directory, vid, target).await?;
    }
    let now = now_ms();
    for needle in &sync.source_damaged {
        let (key, cookie, node) = (needle.key, needle.cookie, source.to_owned());
        blocking(directory, move |d| {
            d.report_damaged_needle(vid, key, &node, cookie, now)
        })
        .await?;
    }
    for needle in &sync.lost {
        let (key, cookie, node) = (needle.key, needle.cookie, target.to_owned());
        let lost = blocking(directory, move |d| {
            d.report_damaged_needle(vid, key, &node, cookie, now)?;
            d.mark_needle_lost(vid, key)
        })
        .await?;
        tracing::error!(volume = vid, key, blob = ?lost.blob_id,
            "BLOB lost: no replica holds a good copy of it");
    }
    if sync.truncated {
        let node = source.to_owned();
        tracing::warn!(volume = vid, replica = %source,
            "more damaged needles than a sync reports; resyncing the source too");
        blocking(directory, move |d| d.mark_replica_stale(vid, &node, false)).await?;
    }
    Ok(())
}

/// Picks the up replica with the highest `last_key`, then the most needles,
/// among those that missed no delete if there are any, and among those
/// that can still take deletes.
async fn elect_source<'a>(
    stores: &StoreCalls,
    volume: &LogicalVolume,
    candidates: &[&'a NodeRecord],
) -> Result<&'a NodeRecord, DirectoryError> {
    let vid = volume.id;
    // Missed no delete, then able to take deletes (a replica whose write
    // failed cannot, so it could never take its peers' deletes), then the
    // highest last key, then the most needles.
    type Rank = (bool, bool, Option<u64>, u64);
    let mut best: Option<(&NodeRecord, Rank)> = None;
    for node in candidates {
        let status = match stores.volume_status(&node.base_url(), vid).await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(volume = vid, replica = %node.id, error = %e, "replica status failed");
                continue;
            }
        };
        let rank = (
            !volume.missed_delete(&node.id),
            status.locked || !status.read_only,
            status.last_key,
            status.needle_count,
        );
        if best.as_ref().is_none_or(|(_, b)| rank > *b) {
            best = Some((node, rank));
        }
    }
    best.map(|(node, _)| node)
        .ok_or_else(|| DirectoryError::StoreUnavailable {
            node: candidates
                .iter()
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            message: format!("no replica of volume {vid} answered its status"),
        })
}

/// Gives `source`, elected while every replica missed a delete, the deletes
/// of every other replica, so that a delete it missed does not come back
/// when it serves again: each acknowledged delete is on at least one
/// replica, and which one is not recorded. As for stale journal holders
/// with no fresh one (`holders`), that takes every other replica: `false`
/// (the pass waits, and says so in its report) while one of them is not
/// `up`. A replica its node does not hold holds no delete.
async fn take_peer_deletes(
    stores: &StoreCalls,
    nodes: &HashMap<String, NodeRecord>,
    volume: &LogicalVolume,
    source: &NodeRecord,
    report: &mut RepairReport,
) -> Result<bool, DirectoryError> {
    let vid = volume.id;
    let others: Vec<&String> = volume
        .replicas
        .iter()
        .filter(|r| **r != source.id)
        .collect();
    let peers: Vec<&NodeRecord> = others.iter().filter_map(|r| up_node(nodes, r)).collect();
    if peers.len() < others.len() {
        for replica in others.into_iter().filter(|r| up_node(nodes, r).is_none()) {
            report.waiting.push((vid, replica.clone()));
        }
        return Ok(false);
    }
    for peer in peers {
        match stores.volume_status(&peer.base_url(), vid).await {
            Ok(_) => {}
            Err(ClientError::UnknownVolume(_)) => {
                tracing::warn!(volume = vid, replica = %peer.id,
                    "the replica's node does not hold it: whatever deletes it held are lost with it");
                continue;
            }
            Err(e) => return Err(store_error(peer, &e)),
        }
        let sync = stores
            .sync_deletes(&source.base_url(), vid, &peer.base_url())
            .await
            .map_err(|e| store_error(source, &e))?;
        tracing::info!(volume = vid, source = %source.id, peer = %peer.id,
            deletes_applied = sync.deletes_applied, "took a peer's deletes before serving");
    }
    Ok(true)
}

/// Locks the volume in the directory, then the source and every fresh up
/// replica at its store, so that the source can be streamed.
async fn seal_volume(
    directory: &Arc<dyn Directory>,
    stores: &StoreCalls,
    nodes: &HashMap<String, NodeRecord>,
    volume: &LogicalVolume,
    source: &str,
) -> Result<(), DirectoryError> {
    let vid = volume.id;
    if volume.state != VolumeState::Locked {
        let now = now_ms();
        blocking(directory, move |d| {
            d.set_volume_state(vid, VolumeState::Locked, now)
        })
        .await?;
        tracing::info!(volume = vid, "sealed (locked) before replica repair");
    }
    // The source must lock (it is streamed); the other fresh replicas are
    // locked so the stores agree with the directory, best effort.
    let source_node = up_node(nodes, source).ok_or_else(|| DirectoryError::StoreUnavailable {
        node: source.to_owned(),
        message: "source node is not up".into(),
    })?;
    stores
        .lock_volume(&source_node.base_url(), vid)
        .await
        .map_err(|e| store_error(source_node, &e))?;
    let others = volume
        .fresh_replicas()
        .filter(|r| *r != source)
        .filter_map(|r| up_node(nodes, r));
    for replica in others {
        if let Err(e) = stores.lock_volume(&replica.base_url(), vid).await {
            tracing::warn!(volume = vid, replica = %replica.id, error = %e, "locking replica failed");
        }
    }
    Ok(())
}

fn store_error(node: &NodeRecord, e: &impl std::fmt::Display) -> DirectoryError {
    DirectoryError::StoreUnavailable {
        node: node.id.clone(),
        message: e.to_string(),
    }
}
