//! Needle repair: each pass walks the damaged-needle records (paged) and
//! asks every up replica holding a bad copy to mend it in place from the
//! other up replicas (`POST /volumes/{vid}/needles/{key}/repair`). A needle
//! that no replica holds a good copy of, with every replica asked, is marked
//! lost: it is reported by BLOB id and no longer retried.

use std::collections::HashMap;
use std::sync::Arc;

use haystack::api::code;
use haystack::client::ClientError;

use super::{RepairReport, blocking, up_node};
use crate::directory::stores::StoreCalls;
use crate::directory::types::{DamagedNeedle, LogicalVolume, NodeRecord};
use crate::directory::{Directory, DirectoryError};

/// Records read per page.
const PAGE_RECORDS: usize = 256;
/// Store calls one pass makes at most, so a storm of damage cannot hold up
/// replica repair.
const MENDS_PER_PASS: usize = 64;

/// One pass over the damaged-needle records.
pub(super) async fn repair_needles(
    directory: &Arc<dyn Directory>,
    stores: &StoreCalls,
    nodes: &HashMap<String, NodeRecord>,
    volumes: &HashMap<u32, LogicalVolume>,
    report: &mut RepairReport,
) -> Result<(), DirectoryError> {
    let mut budget = MENDS_PER_PASS;
    let mut after = None;
    while budget > 0 {
        let page = blocking(directory, move |d| d.damaged_needles(after, PAGE_RECORDS)).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some((last.volume, last.key));
        let full = page.len() == PAGE_RECORDS;
        for needle in page.into_iter().filter(|n| !n.lost) {
            let Some(volume) = volumes.get(&needle.volume) else {
                continue;
            };
            mend(
                directory,
                stores,
                nodes,
                volume,
                &needle,
                &mut budget,
                report,
            )
            .await?;
            if budget == 0 {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
    }
    Ok(())
}

/// Asks each up replica with a bad copy of `needle` to mend it.
async fn mend(
    directory: &Arc<dyn Directory>,
    stores: &StoreCalls,
    nodes: &HashMap<String, NodeRecord>,
    volume: &LogicalVolume,
    needle: &DamagedNeedle,
    budget: &mut usize,
    report: &mut RepairReport,
) -> Result<(), DirectoryError> {
    let (vid, key) = (needle.volume, needle.key);
    let is_bad = |r: &str| needle.replicas.iter().any(|b| b == r);
    for bad in needle.replicas.iter().filter_map(|r| up_node(nodes, r)) {
        if *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        // Copies believed good first; a bad one may have been mended since.
        let mut others: Vec<&str> = volume
            .replicas
            .iter()
            .map(String::as_str)
            .filter(|r| *r != bad.id)
            .collect();
        others.sort_by_key(|r| is_bad(r));
        let all_asked = others.iter().all(|r| up_node(nodes, r).is_some());
        let peers: Vec<String> = others
            .iter()
            .filter_map(|r| up_node(nodes, r))
            .map(NodeRecord::base_url)
            .collect();
        match stores
            .repair_needle(&bad.base_url(), vid, key, &peers)
            .await
        {
            Ok(answer) => {
                let node = bad.id.clone();
                blocking(directory, move |d| {
                    d.resolve_damaged_needle(vid, key, &node)
                })
                .await?;
                tracing::info!(volume = vid, key, replica = %bad.id, outcome = %answer.outcome,
                    source = ?answer.source, "damaged needle mended");
                report.needles_mended.push((vid, key, bad.id.clone()));
            }
            Err(ClientError::Status { code: c, .. }) if c == code::NO_GOOD_COPY && all_asked => {
                let lost = blocking(directory, move |d| d.mark_needle_lost(vid, key)).await?;
                tracing::error!(volume = vid, key, blob = ?lost.blob_id,
                    "BLOB lost: no replica holds a good copy of it");
                report.needles_lost.push((vid, key));
                return Ok(());
            }
            Err(e @ (ClientError::NotFound | ClientError::UnknownVolume(_))) => {
                // The replica lacks the needle's slot (or the volume): only a
                // whole copy can mend it.
                tracing::warn!(volume = vid, key, replica = %bad.id, error = %e,
                    "replica lacks a damaged needle; resyncing it");
                let node = bad.id.clone();
                blocking(directory, move |d| d.mark_replica_stale(vid, &node, false)).await?;
            }
            Err(e) => {
                tracing::warn!(volume = vid, key, replica = %bad.id, error = %e,
                    "needle repair failed; retried next pass");
            }
        }
    }
    Ok(())
}

/// A copy checked every needle of `node`'s replica of volume `vid`: its
/// damage records are resolved (lost needles stay recorded).
pub(super) async fn resolve_replica(
    directory: &Arc<dyn Directory>,
    vid: u32,
    node: &str,
) -> Result<(), DirectoryError> {
    let mut after = vid.checked_sub(1).map(|v| (v, u64::MAX));
    loop {
        let page = blocking(directory, move |d| d.damaged_needles(after, PAGE_RECORDS)).await?;
        let full = page.len() == PAGE_RECORDS;
        for needle in &page {
            if needle.volume != vid {
                return Ok(());
            }
            after = Some((needle.volume, needle.key));
            if needle.lost || !needle.replicas.iter().any(|r| r == node) {
                continue;
            }
            let (key, node) = (needle.key, node.to_owned());
            blocking(directory, move |d| {
                d.resolve_damaged_needle(vid, key, &node)
            })
            .await?;
        }
        if !full {
            return Ok(());
        }
    }
}
