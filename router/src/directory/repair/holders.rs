//! Stale journal holders of warm volumes: a holder that missed a delete
//! merges the journals of the fresh holders (the union of their deletes;
//! its index is copied from one of them if it lost its own), and only then
//! is marked fresh again. Every fresh holder has every acknowledged delete
//! (a holder that missed one is marked stale before the delete is
//! answered), so merging from the reachable fresh ones is enough.

use std::collections::HashMap;
use std::sync::Arc;

use f4::api::MergeReport;
use f4::client::StorageClient;

use super::super::Directory;
use super::super::stores::StoreCalls;
use super::super::types::{LogicalVolume, NodeRecord, VolumeState};
use super::blocking;

/// Merges every stale holder on an `up` node from the fresh holders on
/// `up` nodes; failures are logged and retried next pass.
pub(super) async fn merge_stale_holders(
    directory: &Arc<dyn Directory>,
    stores: &StoreCalls,
    nodes: &HashMap<String, NodeRecord>,
    volumes: &[LogicalVolume],
) {
    let up = |id: &str| nodes.get(id).filter(|n| n.is_up());
    for volume in volumes.iter().filter(|v| v.state == VolumeState::Warm) {
        let Some(warm) = &volume.warm else { continue };
        let fresh: Vec<String> = warm
            .fresh_holders()
            .filter_map(up)
            .map(NodeRecord::base_url)
            .collect();
        for stale in &warm.stale_holders {
            let Some(node) = up(stale) else { continue };
            // Merging only adds deletes, so any peer is safe to merge from;
            // a fresh one has every acknowledged delete. With no fresh one
            // up, the union of all the others does, if all of them are up.
            let peers = if fresh.is_empty() {
                let others: Vec<String> = warm
                    .journal_holders
                    .iter()
                    .filter(|h| *h != stale)
                    .filter_map(|h| up(h))
                    .map(NodeRecord::base_url)
                    .collect();
                if others.len() + 1 < warm.journal_holders.len() {
                    continue;
                }
                others
            } else {
                fresh.clone()
            };
            // From a fresh peer, one is enough; else every other holder.
            let needed = if fresh.is_empty() { peers.len() } else { 1 };
            let client = StorageClient::from_http(&node.base_url(), stores.http().clone());
            match client.merge(volume.id, warm.generation, peers).await {
                Ok(report) if !merged_enough(&report, needed) => {
                    tracing::warn!(volume = volume.id, holder = %stale,
                        merged = report.merged_peers, needed,
                        "journal merged from too few of the other holders; retrying next pass");
                }
                Ok(report) => {
                    let (vid, id, epoch) = (volume.id, stale.clone(), volume.repair_epoch);
                    let cleared = blocking(directory, move |d| {
                        d.set_holder_stale(vid, &id, Some(epoch))
                    })
                    .await;
                    tracing::info!(volume = volume.id, holder = %stale, appended = report.appended,
                        index_copied = report.index_copied, cleared = cleared.is_ok(),
                        "stale journal holder merged");
                }
                Err(e) => {
                    tracing::warn!(volume = volume.id, holder = %stale, error = %e,
                        "journal merge failed; retrying next pass");
                }
            }
        }
    }
}

/// Whether a merge took the `needed` peers' deletes. A merge answers only
/// once one peer merged, and a node from before the count says 0.
fn merged_enough(report: &MergeReport, needed: usize) -> bool {
    usize::try_from(report.merged_peers.max(1)).is_ok_and(|merged| merged >= needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_with_no_fresh_peer_needs_every_other_one_merged() {
        let report = |merged_peers| MergeReport {
            appended: 0,
            index_copied: false,
            merged_peers,
        };
        // From fresh peers: one is enough, and an older node's answer too.
        assert!(merged_enough(&report(1), 1));
        assert!(merged_enough(&report(0), 1));
        // With every holder stale: all four others.
        assert!(merged_enough(&report(4), 4));
        assert!(!merged_enough(&report(3), 4));
        assert!(!merged_enough(&report(0), 4));
    }
}
