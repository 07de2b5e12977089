//! The coordinator (role `coordinator`): finds what the warm tier has lost
//! and has rebuilders restore it.
//!
//! A pass lists the nodes, every `up` storage node's block inventory, the
//! rebuild jobs and the volumes, then looks at each block of each warm
//! volume:
//!
//! - on a node silent for at least [`RouterConfig::rebuild_after_ms`]
//!   (lost): rebuilt onto another node, in the rack with the fewest of
//!   the stripe's blocks (a rack of its own while the cell has one; else
//!   the placement violation is reported), the least loaded node first;
//! - on an `up` node whose inventory lacks it (a replaced disk) or
//!   recorded damaged by a read: rebuilt in place;
//! - on a node down for less than that: counted as unavailable (it makes
//!   the stripe more endangered) but not rebuilt, since the node may come
//!   back with it.
//!
//! Stripes are rebuilt most endangered first (most blocks missing or
//! unavailable), up to [`RouterConfig::max_rebuilds`] at once, all the lost
//! blocks of a stripe in one rebuild (its sources are read once), each
//! written at up to [`RouterConfig::rebuild_rate_bytes`].
//!
//! Jobs: every rebuild (and move) is a job in the directory, claimed with
//! its plan under a lease ([`RouterConfig::migration_lease_ms`], renewed
//! every third of it while it runs; a claim lost meanwhile stops the
//! attempt), each claim under an owner name of its own, so two attempts
//! never run one stripe at once, and only the live claim can record its
//! blocks. A stripe another coordinator holds is counted, not planned. A
//! job that failed, or whose coordinator died, is taken up again by the
//! next pass of any coordinator onto the same nodes while they still fit
//! (a target's finished block is overwritten, not left behind), for
//! [`RESUMED_ATTEMPTS`] attempts, then planned afresh; at equal danger,
//! stripes that failed more often wait behind the others. A job no one
//! holds whose stripe needs nothing now is dropped (if still the attempt
//! the pass read).
//!
//! Orphans: after its rebuilds, a pass removes block files of warm volumes
//! that their record does not name where they lie (an older generation, a
//! rebuild never recorded, a node back after its blocks were rebuilt, a
//! moved block's old copy), in stripes without a job, a stripe at a time
//! under a fence: a claim of the stripe with no plan, which no rebuild can
//! hold at once, under which the record is read again and every file
//! judged again. Files of volumes being sealed, or of a later generation,
//! are the migrator's and stay.
//!
//! Balancer: a stripe whole and up, with two blocks in one rack (a rebuild
//! that had no better place, a rack relabelled), has one of them moved to
//! an `up` node in a rack holding none of the stripe once there is one: its
//! file is copied there (at the rebuild rate; the node checks every
//! chunk), recorded, and its old copy removed. Moves come after every
//! repair.
//!
//! Journal holders: a lost holder's place goes to another node, marked
//! stale, so the directory's repair pass has it copy the index and merge
//! the other holders' journals (no delete is lost: merging only adds
//! tombstones); a holder on an `up` node that no longer has the volume (a
//! replaced disk) is marked stale for the same merge.
//!
//! The `coordinator` role runs a pass every
//! [`RouterConfig::coordinate_interval_ms`]; a router runs one on
//! `POST /admin/repair` and reports without rebuilding on
//! `GET /admin/repair` (`hayloft repair [--status]`).

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use f4::api::{BlockId, DeriveRequest, RebuildRequest, RebuildTarget};
use f4::client::{RebuilderClient, StorageClient};
use futures::StreamExt;
use haystack::api::PageCursor;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::RouterConfig;
use super::error::ApiError;
use super::state::AppState;
use super::warm::decode_sources;
use crate::directory::types::{
    DamagedBlockRequest, JobBlock, RebuildClaimRequest, RebuildJob, RebuiltBlockRequest,
    ReplaceHolderRequest, WarmVolume,
};
use crate::directory::warm::blocks_per_rack;
use crate::directory::{LogicalVolume, NodeRecord, NodeRole, VolumeState, now_ms};

/// Storage nodes whose inventories are read at once.
const INVENTORIES_AT_ONCE: usize = 8;
/// Stripes one pass rebuilds, per rebuild it runs at once: then the cell
/// is looked at again, so a new loss is not left behind a long queue.
const STRIPES_PER_PASS_PER_SLOT: usize = 4;
/// Attempts after which a failed job is planned afresh rather than
/// resumed (its target may be what fails it).
const RESUMED_ATTEMPTS: u32 = 3;
/// Stripes whose orphan copies one pass removes, so that a node back with
/// a disk full of them does not hold up the next pass's rebuilds.
const ORPHAN_STRIPES_PER_PASS: usize = 64;
/// Entries of each list an answered report shows, most endangered first
/// (the `*_count` fields count them all): a cell that lost a node has as
/// many endangered stripes as the node held blocks.
const REPORTED_ENTRIES: usize = 100;

/// Claims this process made: each claim's owner name is its own, so that
/// an attempt that outlived its claim can never act under a later one.
static CLAIMS: AtomicU64 = AtomicU64::new(0);

/// Why a block is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Its node has been silent for `rebuild_after_ms`.
    NodeLost,
    /// Its node is up without it.
    Missing,
    /// A read found it damaged.
    Damaged,
}

/// A stripe with blocks missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndangeredStripe {
    /// The volume.
    pub volume: u32,
    /// The stripe.
    pub stripe: u64,
    /// Its blocks to rebuild, and why.
    pub missing: Vec<(u32, Loss)>,
    /// Its blocks on nodes down for less than `rebuild_after_ms`.
    pub unavailable: Vec<u32>,
}

/// A stripe with more than one block in a rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementViolation {
    /// The volume.
    pub volume: u32,
    /// The stripe.
    pub stripe: u64,
    /// The rack.
    pub rack: String,
    /// How many of the stripe's blocks it holds.
    pub blocks: usize,
}

/// A rebuild a pass ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildOutcome {
    /// The volume.
    pub volume: u32,
    /// The stripe.
    pub stripe: u64,
    /// The blocks and the nodes they went to.
    pub blocks: Vec<(u32, String)>,
    /// Bytes of block files written.
    pub written_bytes: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time.
    pub seconds: f64,
    /// A move restoring the rack rule (the old copy removed), not a repair.
    pub balance: bool,
}

impl RebuildOutcome {
    /// The outcome of `job` before it runs: its blocks and where they go.
    fn of(job: &StripeJob) -> RebuildOutcome {
        RebuildOutcome {
            volume: job.volume,
            stripe: job.stripe,
            blocks: job
                .targets
                .iter()
                .map(|(block, _, to)| (*block, to.clone()))
                .collect(),
            written_bytes: 0,
            error: None,
            seconds: 0.0,
            balance: job.balance,
        }
    }
}

/// Node `id` of `nodes`, if it is up.
pub(crate) fn up_node<'n>(nodes: &'n [NodeRecord], id: &str) -> Option<&'n NodeRecord> {
    nodes.iter().find(|n| n.id == id && n.is_up())
}

/// Those of `nodes` in `datacenter`, or all of them when none is: a
/// datacenter's own rebuilders serve its volumes, others only while it has
/// none up.
pub(crate) fn in_datacenter<'n>(nodes: &[&'n NodeRecord], datacenter: &str) -> Vec<&'n NodeRecord> {
    let local: Vec<&NodeRecord> = nodes
        .iter()
        .copied()
        .filter(|n| n.datacenter == datacenter)
        .collect();
    if local.is_empty() {
        nodes.to_vec()
    } else {
        local
    }
}

/// `nodes`, those in `datacenter` first (in their order), then the others:
/// a read tries its datacenter's backoff nodes before any other.
pub(crate) fn local_first<'n>(nodes: &[&'n NodeRecord], datacenter: &str) -> Vec<&'n NodeRecord> {
    let mut ordered = nodes.to_vec();
    ordered.sort_by_key(|n| n.datacenter != datacenter);
    ordered
}

/// The datacenter label of node `id` in `nodes`, if known.
pub(crate) fn datacenter_in<'n>(nodes: &'n [NodeRecord]) -> impl Fn(&str) -> Option<String> + 'n {
    move |id| {
        nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.datacenter.clone())
    }
}

/// The rebuilders that are up.
pub(crate) fn up_rebuilders(nodes: &[NodeRecord]) -> Vec<&NodeRecord> {
    nodes
        .iter()
        .filter(|n| n.role == NodeRole::Rebuilder && n.is_up())
        .collect()
}

/// What a pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Storage nodes silent for `rebuild_after_ms` or longer.
    pub lost_nodes: Vec<String>,
    /// Storage nodes down for less than that.
    pub down_nodes: Vec<String>,
    /// Stripes with blocks to rebuild, most endangered first (an answer
    /// shows the first [`REPORTED_ENTRIES`]).
    pub endangered: Vec<EndangeredStripe>,
    /// How many stripes have blocks to rebuild.
    #[serde(default)]
    pub endangered_count: usize,
    /// Stripes with two blocks or more in one rack (an answer shows the
    /// first [`REPORTED_ENTRIES`]).
    pub placement_violations: Vec<PlacementViolation>,
    /// How many stripes have two blocks or more in one rack.
    #[serde(default)]
    pub placement_violation_count: usize,
    /// The rebuilds this pass ran (none when it only reports).
    pub rebuilds: Vec<RebuildOutcome>,
    /// Lost journal holders replaced by another node.
    pub holders_replaced: usize,
    /// Journal holders found without the volume, marked stale to merge.
    pub holders_marked_stale: usize,
    /// What could not be planned (no node for a block, no rebuilder up;
    /// an answer shows the first [`REPORTED_ENTRIES`]).
    pub problems: Vec<String>,
    /// How many problems there were.
    #[serde(default)]
    pub problem_count: usize,
    /// The rebuild jobs in the directory when the pass began (the first
    /// [`REPORTED_ENTRIES`]).
    pub jobs: Vec<RebuildJob>,
    /// How many there were.
    pub job_count: usize,
    /// Block files removed that no record names and no job plans.
    pub orphans_removed: usize,
}

impl RepairReport {
    /// The report as answered: each list cut to its first
    /// [`REPORTED_ENTRIES`], its count whole.
    fn answered(mut self) -> Self {
        self.endangered_count = self.endangered.len();
        self.endangered.truncate(REPORTED_ENTRIES);
        self.placement_violation_count = self.placement_violations.len();
        self.placement_violations.truncate(REPORTED_ENTRIES);
        self.problem_count = self.problems.len();
        self.problems.truncate(REPORTED_ENTRIES);
        self
    }
}

/// A stripe's rebuild, planned.
#[derive(Clone)]
struct StripeJob {
    volume: u32,
    warm: Arc<WarmVolume>,
    stripe: u64,
    /// Block, the node the record names, the node it goes to.
    targets: Vec<(u32, String, String)>,
    /// A move to restore the rack rule: the old copy is removed once the
    /// new one is recorded.
    balance: bool,
    /// Attempts the stripe's job in the directory made before (0: none).
    attempts: u32,
    /// Where a stripe that lost more than `m` blocks is rebuilt from: the
    /// geo layer's volumes whose data XORs to this volume's
    /// ([`super::geo::sources_of`]); empty for a rebuild from the stripe.
    geo_sources: Vec<u32>,
}

impl StripeJob {
    /// What a stripe past `m` (a geo rebuild's job) can restore from
    /// itself when the geo layer cannot: its blocks gone or with wrong
    /// bytes under good checksums, if at most `m`, the ones that only
    /// failed a checksum left as sources (every chunk read from them is
    /// checked); with none of those, what [`checksum_failed_targets`]
    /// allows of these; `None` when more than `m` are untrusted.
    fn local_fallback(&self) -> Option<StripeJob> {
        let warm = &self.warm;
        let m = usize::from(warm.geometry.parity_blocks);
        let failed_checksum = |(block, from, to): &(u32, String, String)| {
            from == to && warm.damage(self.stripe, *block).is_some_and(|d| !d.silent)
        };
        let (checksum_failed, untrusted): (Vec<_>, Vec<_>) =
            self.targets.iter().cloned().partition(failed_checksum);
        let targets = if untrusted.is_empty() {
            let most = checksum_failed_targets(checksum_failed.len(), 0, m);
            checksum_failed.into_iter().take(most).collect()
        } else {
            untrusted
        };
        let fits = !targets.is_empty() && targets.len() <= m;
        fits.then(|| StripeJob {
            targets,
            geo_sources: Vec::new(),
            ..self.clone()
        })
    }

    /// Its plan, as a job in the directory takes it.
    fn plan(&self) -> Vec<JobBlock> {
        self.targets
            .iter()
            .map(|(block, from, to)| JobBlock {
                block: *block,
                from: from.clone(),
                to: to.clone(),
            })
            .collect()
    }
}

/// Block inventories by node id.
type Inventories = HashMap<String, HashSet<BlockId>>;

/// Every `up` f4 storage node's block inventory, by node id (a node whose
/// inventory could not be read is left out: its blocks are not judged).
async fn inventories(state: &AppState, nodes: &[NodeRecord]) -> Inventories {
    let up: Vec<(String, StorageClient)> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::F4Storage && n.is_up())
        .map(|n| {
            let client = StorageClient::from_http(&n.base_url(), state.warm_http.clone());
            (n.id.clone(), client)
        })
        .collect();
    let listed: Vec<Option<(String, HashSet<BlockId>)>> = futures::stream::iter(up)
        .map(|(id, client)| async move {
            let mut names = HashSet::new();
            let mut cursor = PageCursor::<String>::default();
            while let Some(after) = cursor.next_page() {
                match client.list_blocks(after.as_deref()).await {
                    Ok(page) => {
                        names.extend(page.blocks.iter().map(|b| b.block));
                        if !cursor.advance(page.next_after) {
                            tracing::warn!(node = %id, "block inventory pages do not advance");
                            return None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %id, error = %e, "block inventory unreadable");
                        return None;
                    }
                }
            }
            Some((id, names))
        })
        .buffer_unordered(INVENTORIES_AT_ONCE)
        .collect()
        .await;
    listed.into_iter().flatten().collect()
}

/// The cell as a pass sees it.
struct Cell<'a> {
    nodes: HashMap<&'a str, &'a NodeRecord>,
    now: u64,
    rebuild_after_ms: u64,
    /// Blocks and holders per node, for choosing where new ones go.
    load: HashMap<String, usize>,
}

impl<'a> Cell<'a> {
    fn new(nodes: &'a [NodeRecord], volumes: &[LogicalVolume], rebuild_after_ms: u64) -> Cell<'a> {
        let mut load: HashMap<String, usize> = HashMap::new();
        for warm in volumes.iter().filter_map(|v| v.warm.as_ref()) {
            for node in warm.stripes.iter().flatten().chain(&warm.journal_holders) {
                *load.entry(node.clone()).or_default() += 1;
            }
        }
        Cell {
            nodes: nodes.iter().map(|n| (n.id.as_str(), n)).collect(),
            now: now_ms(),
            rebuild_after_ms,
            load,
        }
    }

    fn up(&self, id: &str) -> Option<&'a NodeRecord> {
        self.nodes.get(id).copied().filter(|n| n.is_up())
    }

    /// Silent for `rebuild_after_ms` or more (or unknown to the directory).
    fn lost(&self, id: &str) -> bool {
        self.nodes.get(id).is_none_or(|n| {
            !n.is_up() && self.now.saturating_sub(n.last_heartbeat_ms) >= self.rebuild_after_ms
        })
    }

    /// Where `warm` lives ([`WarmVolume::home_datacenter`]).
    fn home(&self, warm: &WarmVolume) -> String {
        warm.home_datacenter(|id| self.nodes.get(id).map(|n| n.datacenter.clone()))
    }

    fn rack<'s>(&'s self, id: &'s str) -> &'s str {
        self.nodes.get(id).map_or(id, |n| n.rack.as_str())
    }

    /// A move that restores the rack rule for a stripe placed on `members`
    /// (every block up and whole): the last block of its fullest rack, to
    /// an `up` node in a rack holding none of the stripe; `None` when no
    /// rack holds two, or no such node is up.
    fn balance(&mut self, members: &[String], datacenter: &str) -> Option<(u32, String, String)> {
        let group: Vec<&str> = members.iter().map(String::as_str).collect();
        let mut per_rack: HashMap<&str, usize> = HashMap::new();
        for id in &group {
            *per_rack.entry(self.rack(id)).or_default() += 1;
        }
        let (crowded, _) = per_rack
            .iter()
            .filter(|(_, count)| **count > 1)
            .max_by_key(|(rack, count)| (**count, std::cmp::Reverse(**rack)))?;
        let to = self.replacement(&group, datacenter)?;
        if per_rack.contains_key(self.rack(to)) {
            return None;
        }
        let block = group.iter().rposition(|id| self.rack(id) == *crowded)?;
        let to = to.to_owned();
        *self.load.entry(to.clone()).or_default() += 1;
        Some((block as u32, members[block].clone(), to))
    }

    /// The `up` storage node of `datacenter`'s cell (any, for an empty
    /// label) for a new member of `group` (a stripe's nodes, or the
    /// journal holders): not in it, in the rack with the fewest of its
    /// members, least loaded first, then by name.
    fn replacement(&self, group: &[&str], datacenter: &str) -> Option<&'a str> {
        let mut per_rack: HashMap<&str, usize> = HashMap::new();
        for id in group {
            *per_rack.entry(self.rack(id)).or_default() += 1;
        }
        self.nodes
            .values()
            .filter(|n| n.role == NodeRole::F4Storage && n.is_up())
            .filter(|n| datacenter.is_empty() || n.datacenter == datacenter)
            .filter(|n| !group.contains(&n.id.as_str()))
            .min_by_key(|n| {
                (
                    per_rack.get(n.rack.as_str()).copied().unwrap_or(0),
                    self.load.get(&n.id).copied().unwrap_or(0),
                    n.id.as_str(),
                )
            })
            .map(|n| n.id.as_str())
    }
}

/// Looks at every warm volume: what to rebuild, what is endangered,
/// which placements break the rack rule; with `act`, also replaces lost
/// journal holders and marks emptied ones stale.
async fn audit(state: &AppState, act: bool) -> Result<Audit, ApiError> {
    let nodes = state.directory.list_nodes().await?;
    // Inventories before jobs before records: see the module's "Orphans".
    let inventories = inventories(state, &nodes).await;
    let held = state.directory.all_rebuilds().await?;
    let volumes = state.directory.list_volumes().await?;
    let now = now_ms();
    let held_by_stripe: HashMap<(u32, u64), &RebuildJob> =
        held.iter().map(|j| ((j.volume, j.stripe), j)).collect();
    let mut cell = Cell::new(&nodes, &volumes, state.config.rebuild_after_ms);
    let mut report = RepairReport::default();
    for node in nodes.iter().filter(|n| n.role == NodeRole::F4Storage) {
        if cell.lost(&node.id) {
            report.lost_nodes.push(node.id.clone());
        } else if !node.is_up() {
            report.down_nodes.push(node.id.clone());
        }
    }
    let mut jobs = Vec::new();
    let by_id: HashMap<u32, &LogicalVolume> = volumes.iter().map(|v| (v.id, v)).collect();
    for volume in volumes.iter().filter(|v| v.state == VolumeState::Warm) {
        let Some(warm) = &volume.warm else { continue };
        if act {
            mend_holders(state, &mut cell, volume, warm, &mut report).await;
        }
        let warm = Arc::new(warm.clone());
        let home = cell.home(&warm);
        for (stripe, members) in warm.stripes.iter().enumerate() {
            let stripe = stripe as u64;
            let mut missing = Vec::new();
            let mut unavailable = Vec::new();
            for (block, node) in members.iter().enumerate() {
                let block = block as u32;
                let id = BlockId {
                    volume: volume.id,
                    generation: warm.generation,
                    stripe,
                    block,
                };
                let loss = if cell.lost(node) {
                    Some(Loss::NodeLost)
                } else if cell.up(node).is_none() {
                    unavailable.push(block);
                    None
                } else if inventories
                    .get(node)
                    .is_some_and(|held| !held.contains(&id))
                {
                    Some(Loss::Missing)
                } else if warm.is_damaged(stripe, block) {
                    Some(Loss::Damaged)
                } else {
                    None
                };
                if let Some(loss) = loss {
                    missing.push((block, loss));
                }
            }
            for (rack, blocks) in blocks_per_rack(members, &nodes) {
                if blocks > 1 {
                    report.placement_violations.push(PlacementViolation {
                        volume: volume.id,
                        stripe,
                        rack: rack.to_owned(),
                        blocks,
                    });
                }
            }
            let held = held_by_stripe.get(&(volume.id, stripe)).copied();
            // Another coordinator runs it: counted, not planned.
            let elsewhere = held.is_some_and(|job| job.is_claimed(now));
            let attempts = held.map_or(0, |job| job.attempts);
            if missing.is_empty() {
                if unavailable.is_empty()
                    && !elsewhere
                    && let Some(target) = cell.balance(members, &home)
                {
                    let targets = vec![target];
                    jobs.push(StripeJob {
                        volume: volume.id,
                        warm: Arc::clone(&warm),
                        stripe,
                        targets: resume(held, &warm, stripe, targets, true, &cell),
                        balance: true,
                        attempts,
                        geo_sources: Vec::new(),
                    });
                }
                continue;
            }
            let mut group: Vec<&str> = members
                .iter()
                .zip(0u32..)
                .filter(|(_, b)| !missing.iter().any(|(m, l)| m == b && *l == Loss::NodeLost))
                .map(|(n, _)| n.as_str())
                .collect();
            // A rebuild restores at most `m` blocks: the ones that are gone
            // first, then those with wrong bytes under good checksums,
            // which are never a source. Those that only failed a checksum
            // wait for a rebuild of their own while there are others: as
            // sources, they serve every column whose chunks pass, which
            // gives a decode more blocks to choose from. So a stripe with
            // more than `m` gone or silently damaged cannot decode itself.
            let silent = |block: u32| warm.is_silently_damaged(stripe, block);
            missing.sort_by_key(|(block, loss)| (*loss == Loss::Damaged, !silent(*block), *block));
            let m = usize::from(warm.geometry.parity_blocks);
            let untrusted = missing
                .iter()
                .filter(|(block, loss)| *loss != Loss::Damaged || silent(*block))
                .count();
            // Past `m`, the stripe cannot decode itself: all of it comes
            // back from the geo layer, if the volume is in one.
            let geo_sources = match super::geo::sources_of(volume, &by_id) {
                Some(sources) if missing.len() > m => sources,
                _ => Vec::new(),
            };
            let most = match (elsewhere, geo_sources.is_empty()) {
                (true, _) => 0,
                (false, true) if untrusted > m => {
                    report.problems.push(format!(
                        "volume {} stripe {stripe}: {untrusted} blocks lost or with wrong bytes, \
                         more than its {m} parity blocks, and no geo copy to restore them from",
                        volume.id
                    ));
                    0
                }
                (false, true) => m,
                (false, false) => missing.len(),
            };
            let mut targets = Vec::new();
            let local = geo_sources.is_empty();
            let mut untrusted_planned = false;
            let checksum_most = checksum_failed_targets(
                missing.len() - untrusted,
                untrusted + unavailable.len(),
                m,
            );
            let mut checksum_planned = 0;
            for (block, loss) in missing.iter().take(most) {
                // Those that only failed a checksum wait while others are
                // rebuilt (they are sources meanwhile).
                let failed_checksum = *loss == Loss::Damaged && !silent(*block);
                if local
                    && failed_checksum
                    && (untrusted_planned || checksum_planned >= checksum_most)
                {
                    break;
                }
                checksum_planned += usize::from(failed_checksum);
                let from = members[*block as usize].clone();
                let to = match loss {
                    Loss::NodeLost => match cell.replacement(&group, &home) {
                        Some(to) => to,
                        None => {
                            report.problems.push(format!(
                                "volume {} block {stripe}.{block}: no up storage node outside \
                                 its stripe to rebuild it on",
                                volume.id
                            ));
                            continue;
                        }
                    },
                    Loss::Missing | Loss::Damaged => cell
                        .nodes
                        .get_key_value(from.as_str())
                        .map(|(id, _)| *id)
                        .unwrap_or_default(),
                };
                group.push(to);
                *cell.load.entry(to.to_owned()).or_default() += 1;
                targets.push((*block, from, to.to_owned()));
                untrusted_planned |= !failed_checksum;
            }
            report.endangered.push(EndangeredStripe {
                volume: volume.id,
                stripe,
                missing,
                unavailable,
            });
            if !targets.is_empty() {
                jobs.push(StripeJob {
                    volume: volume.id,
                    warm: Arc::clone(&warm),
                    stripe,
                    targets: resume(held, &warm, stripe, targets, false, &cell),
                    balance: false,
                    attempts,
                    geo_sources,
                });
            }
        }
    }
    most_endangered_first(&mut jobs, &mut report.endangered);
    report.job_count = held.len();
    report.jobs = held.iter().take(REPORTED_ENTRIES).cloned().collect();
    Ok(Audit {
        report,
        jobs,
        held,
        nodes,
        volumes,
        inventories,
    })
}

/// What [`audit`] found, and what it read to find it.
struct Audit {
    report: RepairReport,
    jobs: Vec<StripeJob>,
    /// The jobs in the directory.
    held: Vec<RebuildJob>,
    nodes: Vec<NodeRecord>,
    volumes: Vec<LogicalVolume>,
    inventories: Inventories,
}

/// The targets of a stripe's job: the plan of `held`, the stripe's job in
/// the directory from an attempt that failed or died, while it restores
/// the same blocks the same way onto nodes that are up and hold nothing
/// else of the stripe (so that what it wrote is overwritten, not left
/// behind); else `planned`.
fn resume(
    held: Option<&RebuildJob>,
    warm: &WarmVolume,
    stripe: u64,
    planned: Vec<(u32, String, String)>,
    balance: bool,
    cell: &Cell<'_>,
) -> Vec<(u32, String, String)> {
    let Some(job) = held.filter(|j| {
        j.generation == warm.generation && j.balance == balance && j.attempts < RESUMED_ATTEMPTS
    }) else {
        return planned;
    };
    let members = &warm.stripes[stripe as usize];
    let mut blocks: Vec<u32> = job.blocks.iter().map(|b| b.block).collect();
    let mut wanted: Vec<u32> = planned.iter().map(|(b, _, _)| *b).collect();
    blocks.sort_unstable();
    wanted.sort_unstable();
    let fits = blocks == wanted
        && job.blocks.iter().all(|b| {
            members.get(b.block as usize) == Some(&b.from)
                && cell.up(&b.to).is_some()
                && warm.other_block_on(stripe, b.block, &b.to).is_none()
                && !job
                    .blocks
                    .iter()
                    .any(|o| o.block != b.block && o.to == b.to)
        });
    if !fits {
        return planned;
    }
    job.blocks
        .iter()
        .map(|b| (b.block, b.from.clone(), b.to.clone()))
        .collect()
}

/// How many of a stripe's `count` blocks that only failed a checksum one
/// rebuild restores, with `absent` others of the stripe not read (gone,
/// silently damaged or on a node down) and `m` parity blocks: all of them
/// if the rest can decode them; else one fewer than that room, so that a
/// column whose chunks fail in one of those left as sources still has a
/// spare.
fn checksum_failed_targets(count: usize, absent: usize, m: usize) -> usize {
    let room = m.saturating_sub(absent);
    if count <= room {
        count
    } else {
        room.saturating_sub(1)
    }
}

/// Orders `endangered` and the `jobs` of their stripes by blocks missing or
/// unavailable, most first (a stripe short of three blocks before one
/// short of one; at equal danger, one that failed fewer times first, so
/// that stripes that keep failing cannot take every slot); moves, whose
/// stripes lack nothing, come last.
fn most_endangered_first(jobs: &mut [StripeJob], endangered: &mut [EndangeredStripe]) {
    let danger = |e: &EndangeredStripe| e.missing.len() + e.unavailable.len();
    let of_job = |job: &StripeJob| {
        endangered
            .iter()
            .find(|e| (e.volume, e.stripe) == (job.volume, job.stripe))
            .map_or(0, danger)
    };
    jobs.sort_by_key(|job| (Reverse(of_job(job)), job.attempts));
    endangered.sort_by_key(|e| Reverse(danger(e)));
}

/// Replaces `warm`'s lost journal holders and marks stale those whose
/// node no longer has the volume; the directory's repair pass then has
/// them merge.
async fn mend_holders<'a>(
    state: &AppState,
    cell: &mut Cell<'a>,
    volume: &LogicalVolume,
    warm: &'a WarmVolume,
    report: &mut RepairReport,
) {
    let mut group: Vec<&str> = warm.journal_holders.iter().map(String::as_str).collect();
    for holder in &warm.journal_holders {
        if cell.lost(holder) {
            // In the lost holder's own datacenter: a remote holder stays
            // remote.
            let datacenter = cell
                .nodes
                .get(holder.as_str())
                .map_or_else(|| cell.home(warm), |n| n.datacenter.clone());
            let Some(to) = cell.replacement(&group, &datacenter) else {
                report.problems.push(format!(
                    "volume {}: no up storage node to replace journal holder {holder}",
                    volume.id
                ));
                continue;
            };
            let request = ReplaceHolderRequest {
                generation: warm.generation,
                node: to.to_owned(),
            };
            match state
                .directory
                .replace_holder(volume.id, holder, &request)
                .await
            {
                Ok(_) => {
                    group.push(to);
                    *cell.load.entry(to.to_owned()).or_default() += 1;
                    report.holders_replaced += 1;
                    tracing::warn!(volume = volume.id, lost = %holder, holder = %to,
                        "lost journal holder replaced");
                }
                Err(e) => report.problems.push(format!(
                    "volume {}: replacing holder {holder}: {e}",
                    volume.id
                )),
            }
            continue;
        }
        let Some(node) = cell.up(holder) else {
            continue;
        };
        if warm.stale_holders.contains(holder) {
            continue;
        }
        let client = StorageClient::from_http(&node.base_url(), state.warm_http.clone());
        match client.describe(volume.id, warm.generation).await {
            Err(e) if e.code() == Some(f4::api::code::UNKNOWN_VOLUME) => {
                let marked = state
                    .directory
                    .mark_holder_stale(volume.id, holder, "its node no longer has the volume")
                    .await;
                if marked.is_ok() {
                    report.holders_marked_stale += 1;
                }
            }
            Err(e) => tracing::info!(volume = volume.id, holder = %holder, error = %e,
                "journal holder not described"),
            Ok(_) => {}
        }
    }
}

/// Carries out a balancer's move: each block's file copied from its node
/// to the new one (which checks every chunk) at the rebuild rate,
/// recorded, and the old copy removed. A copy, not a rebuild: a move never
/// trusts other blocks.
async fn move_blocks(
    state: &AppState,
    job: &StripeJob,
    owner: &str,
    nodes: &[NodeRecord],
) -> RebuildOutcome {
    let started = Instant::now();
    let warm = &job.warm;
    let client_of = |id: &str| {
        up_node(nodes, id).map(|n| StorageClient::from_http(&n.base_url(), state.warm_http.clone()))
    };
    let mut outcome = RebuildOutcome::of(job);
    for (block, from, to) in &job.targets {
        let id = f4::api::BlockId {
            volume: job.volume,
            generation: warm.generation,
            stripe: job.stripe,
            block: *block,
        };
        let (Some(source), Some(target)) = (client_of(from), client_of(to)) else {
            outcome.error = Some(format!("block {block}: {from} or {to} is not up"));
            break;
        };
        let moved = async {
            let len = source
                .copy_block_to(id, &target, state.config.rebuild_rate_bytes)
                .await
                .map_err(|e| e.to_string())?;
            // A copy clears no damage report, not even one from before it
            // started: the bytes it copied are the ones reported (a report
            // after the audit that planned the move would be lost).
            record_block(state, job, (*block, from, to), 0, owner)
                .await
                .map_err(|e| format!("not recorded: {e}"))?;
            Ok::<_, String>(len)
        };
        match moved.await {
            Ok(len) => {
                outcome.written_bytes += len;
                state.metrics.rebuilt_bytes(len);
                // Only once the record names the new copy.
                if let Err(e) = source.delete_block(id).await {
                    tracing::warn!(volume = job.volume, block = *block, node = %from, error = %e,
                        "the moved block's old copy stays");
                }
            }
            Err(why) => {
                state.metrics.rebuild_error();
                outcome.error = Some(format!("block {block}: {why}"));
                break;
            }
        }
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    tracing::info!(volume = job.volume, stripe = job.stripe, blocks = ?outcome.blocks,
        error = ?outcome.error, "blocks moved to restore the rack rule");
    outcome
}

/// Records in the directory that `job`'s `(block, from, to)` is whole on
/// `to` now, under `owner`'s claim; damage reported before `started_ms` is
/// cleared.
async fn record_block(
    state: &AppState,
    job: &StripeJob,
    (block, from, to): (u32, &str, &str),
    started_ms: u64,
    owner: &str,
) -> Result<(), crate::directory::DirectoryClientError> {
    let rebuilt = RebuiltBlockRequest {
        generation: job.warm.generation,
        stripe: job.stripe,
        block,
        from: from.to_owned(),
        node: to.to_owned(),
        started_ms,
        owner: owner.to_owned(),
    };
    state
        .directory
        .record_rebuilt_block(job.volume, &rebuilt)
        .await
        .map(drop)
}

/// Records every target block of `job`, rebuilt since `started_ms`; what
/// could not be recorded, if anything.
async fn record_targets(
    state: &AppState,
    job: &StripeJob,
    started_ms: u64,
    owner: &str,
) -> Option<String> {
    let mut errors = Vec::new();
    for (block, from, to) in &job.targets {
        if let Err(e) = record_block(state, job, (*block, from, to), started_ms, owner).await {
            errors.push(format!("block {block}: {e}"));
        }
    }
    (!errors.is_empty()).then(|| format!("not recorded: {}", errors.join("; ")))
}

/// Rebuilds a stripe that lost more than `m` blocks from the geo layer: a
/// storage node (of the first target) encodes the stripe again from the
/// same range of its `geo_sources`' data (each read verified, or decoded
/// by a backoff node) and sends only the lost blocks to their targets,
/// under the volume's own generation, so each is the block it was, byte
/// for byte; every block written is then read back and checked on its
/// node before it is recorded.
async fn geo_rebuild_stripe(
    state: &AppState,
    job: &StripeJob,
    owner: &str,
    nodes: &[NodeRecord],
) -> RebuildOutcome {
    let started = Instant::now();
    let started_ms = now_ms();
    let warm = &job.warm;
    let mut outcome = RebuildOutcome::of(job);
    let result = async {
        let by_id: HashMap<String, NodeRecord> =
            nodes.iter().map(|n| (n.id.clone(), n.clone())).collect();
        let sources = super::geo::derive_sources(state, &job.geo_sources, &by_id).await?;
        let url_of = |id: &str| up_node(nodes, id).map(NodeRecord::base_url);
        let mut stripe: Vec<String> = warm.stripes[job.stripe as usize]
            .iter()
            .map(|id| url_of(id).unwrap_or_default())
            .collect();
        for (block, _, to) in &job.targets {
            stripe[*block as usize] = url_of(to)
                .ok_or_else(|| ApiError::Unavailable(format!("target {to} is not up")))?;
        }
        let encoder = job
            .targets
            .first()
            .and_then(|(_, _, to)| up_node(nodes, to))
            .ok_or_else(|| ApiError::Unavailable("no target is up".into()))?;
        let request = DeriveRequest {
            geometry: warm.geometry,
            stripes: vec![stripe],
            sources,
            backoffs: super::geo::backoff_urls(&by_id),
            bytes_per_second: state.config.rebuild_rate_bytes,
            stripe: Some(job.stripe),
            blocks: job.targets.iter().map(|(b, _, _)| *b).collect(),
        };
        StorageClient::from_http(&encoder.base_url(), state.warm_http.clone())
            .derive(job.volume, warm.generation, &request)
            .await
            .map_err(|e| ApiError::Unavailable(format!("encoding on {}: {e}", encoder.id)))?;
        let layout = warm
            .geometry
            .layout()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut written = 0;
        for (block, _, to) in &job.targets {
            let node = up_node(nodes, to)
                .ok_or_else(|| ApiError::Unavailable(format!("target {to} is not up")))?;
            let id = BlockId {
                volume: job.volume,
                generation: warm.generation,
                stripe: job.stripe,
                block: *block,
            };
            StorageClient::from_http(&node.base_url(), state.warm_http.clone())
                .check_block(id, warm.geometry)
                .await
                .map_err(|e| {
                    ApiError::Unavailable(format!("block {}.{block} on {to}: {e}", job.stripe))
                })?;
            written += layout
                .block_len_bytes(job.stripe, *block as usize)
                .unwrap_or(0);
        }
        Ok::<u64, ApiError>(written)
    }
    .await;
    outcome.seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(written) => {
            outcome.written_bytes = written;
            state.metrics.rebuilt_bytes(written);
        }
        Err(e) => {
            state.metrics.rebuild_error();
            tracing::warn!(volume = job.volume, stripe = job.stripe, error = %e,
                "rebuild from the geo layer failed");
            outcome.error = Some(e.to_string());
            return outcome;
        }
    }
    outcome.error = record_targets(state, job, started_ms, owner).await;
    tracing::info!(volume = job.volume, stripe = job.stripe, blocks = ?outcome.blocks,
        sources = ?job.geo_sources, seconds = outcome.seconds, "stripe rebuilt from the geo layer");
    outcome
}

/// Runs one planned rebuild on `rebuilder` and records its blocks.
async fn rebuild_stripe(
    state: &AppState,
    job: &StripeJob,
    owner: &str,
    nodes: &[NodeRecord],
    rebuilder: &NodeRecord,
) -> RebuildOutcome {
    let started = Instant::now();
    let started_ms = now_ms();
    let warm = &job.warm;
    let url_of = |id: &str| up_node(nodes, id).map(NodeRecord::base_url);
    let targets: Vec<u32> = job.targets.iter().map(|(block, _, _)| *block).collect();
    let sources = decode_sources(warm, job.stripe, &targets, url_of);
    let mut outcome = RebuildOutcome::of(job);
    let targets: Option<Vec<RebuildTarget>> = job
        .targets
        .iter()
        .map(|(block, _, to)| {
            Some(RebuildTarget {
                block: *block,
                node: url_of(to)?,
            })
        })
        .collect();
    let Some(targets) = targets else {
        outcome.error = Some("a target node is not up".into());
        return outcome;
    };
    let request = RebuildRequest {
        volume: job.volume,
        generation: warm.generation,
        geometry: warm.geometry,
        stripe: job.stripe,
        sources,
        targets,
        bytes_per_second: state.config.rebuild_rate_bytes,
    };
    let client = RebuilderClient::from_http(&rebuilder.base_url(), state.warm_http.clone());
    let result = client.rebuild(&request).await;
    outcome.seconds = started.elapsed().as_secs_f64();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            state.metrics.rebuild_error();
            outcome.error = Some(e.to_string());
            tracing::warn!(volume = job.volume, stripe = job.stripe, error = %e, "rebuild failed");
            return outcome;
        }
    };
    outcome.written_bytes = report.written_bytes;
    state.metrics.rebuilt_bytes(report.written_bytes);
    for failed in report.failed_sources.iter().filter(|f| f.damaged) {
        let Some(node) = warm.stripes[job.stripe as usize].get(failed.block as usize) else {
            continue;
        };
        let damaged = DamagedBlockRequest {
            generation: warm.generation,
            stripe: job.stripe,
            block: failed.block,
            node: node.clone(),
            reason: format!("a rebuild could not read it: {}", failed.error),
            silent: false,
        };
        if let Err(e) = state
            .directory
            .report_damaged_block(job.volume, &damaged)
            .await
        {
            tracing::warn!(volume = job.volume, error = %e, "damaged block not reported");
        }
    }
    outcome.error = record_targets(state, job, started_ms, owner).await;
    tracing::info!(volume = job.volume, stripe = job.stripe, blocks = ?outcome.blocks,
        written_bytes = outcome.written_bytes, seconds = outcome.seconds, "stripe rebuilt");
    outcome
}

/// One pass: the audit, then (`act`) the jobs the cell needs no more
/// dropped, its rebuilds run and its orphans removed; or only the audit.
/// A process runs one acting pass at a time.
pub(crate) async fn pass(state: &AppState, act: bool) -> Result<RepairReport, ApiError> {
    let _running = if act {
        Some(
            state
                .repair_passes
                .acquire()
                .await
                .map_err(|_| ApiError::Internal("the repair pass lock is closed".into()))?,
        )
    } else {
        None
    };
    let Audit {
        mut report,
        mut jobs,
        held,
        nodes,
        volumes,
        inventories,
    } = audit(state, act).await?;
    state.metrics.set_repair(&report, jobs.len());
    if !act {
        return Ok(report);
    }
    drop_unneeded_jobs(state, &held, &report).await;
    jobs.truncate(state.config.max_rebuilds.max(1) * STRIPES_PER_PASS_PER_SLOT);
    let rebuilders = up_rebuilders(&nodes);
    if rebuilders.is_empty() && !jobs.is_empty() {
        report
            .problems
            .push(format!("{} stripes wait: no rebuilder is up", jobs.len()));
    } else if !jobs.is_empty() {
        let (nodes, rebuilders) = (&nodes, &rebuilders);
        let outcomes: Vec<Option<RebuildOutcome>> =
            futures::stream::iter(jobs.into_iter().enumerate())
                .map(|(i, job)| async move {
                    let home = job.warm.home_datacenter(datacenter_in(nodes));
                    let local = in_datacenter(rebuilders, &home);
                    let rebuilder = local[i % local.len()];
                    run_job(state, job, nodes, rebuilder).await
                })
                .buffer_unordered(state.config.max_rebuilds.max(1))
                .collect()
                .await;
        report.rebuilds = outcomes.into_iter().flatten().collect();
    }
    report.orphans_removed = remove_orphans(state, &nodes, &volumes, &inventories, &held).await;
    Ok(report)
}

/// A claim's owner: this process, and a number no other claim of it has.
fn claim_owner(state: &AppState) -> String {
    let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
    format!("{}@{}#{n}", state.config.id, state.instance)
}

/// Whether a directory answer says the caller's claim is gone (taken over,
/// run out, or its job ended).
fn claim_lost(e: &crate::directory::DirectoryClientError) -> bool {
    matches!(e.status(), Some(400 | 409))
}

/// Claims `job` in the directory, runs it with the claim renewed every
/// third of its lease (and stopped if the claim is lost), and ends it:
/// removed when done, kept with its error for the next pass otherwise.
/// `None` when another coordinator holds it.
async fn run_job(
    state: &AppState,
    job: StripeJob,
    nodes: &[NodeRecord],
    rebuilder: &NodeRecord,
) -> Option<RebuildOutcome> {
    let owner = claim_owner(state);
    let owner = owner.as_str();
    let lease_ms = state.config.migration_lease_ms.max(3);
    let claim = RebuildClaimRequest {
        owner: owner.to_owned(),
        lease_ms,
        generation: job.warm.generation,
        blocks: job.plan(),
        balance: job.balance,
    };
    let claimed = state
        .directory
        .claim_rebuild(job.volume, job.stripe, &claim)
        .await;
    if let Err(e) = claimed {
        tracing::info!(volume = job.volume, stripe = job.stripe, error = %e,
            "rebuild not claimed");
        if e.code() == Some("job_claimed") {
            return None;
        }
        let mut outcome = RebuildOutcome::of(&job);
        outcome.error = Some(format!("not claimed: {e}"));
        return Some(outcome);
    }
    let work = async {
        if job.balance {
            move_blocks(state, &job, owner, nodes).await
        } else if !job.geo_sources.is_empty() {
            let outcome = geo_rebuild_stripe(state, &job, owner, nodes).await;
            match (&outcome.error, job.local_fallback()) {
                (Some(e), Some(local)) => {
                    tracing::warn!(volume = job.volume, stripe = job.stripe, error = %e,
                        "geo rebuild failed; rebuilding what the stripe can decode itself");
                    rebuild_stripe(state, &local, owner, nodes, rebuilder).await
                }
                _ => outcome,
            }
        } else {
            rebuild_stripe(state, &job, owner, nodes, rebuilder).await
        }
    };
    let renew = async {
        let every = Duration::from_millis(lease_ms / 3);
        loop {
            tokio::time::sleep(every).await;
            match state
                .directory
                .renew_rebuild(job.volume, job.stripe, owner, lease_ms)
                .await
            {
                Ok(_) => {}
                Err(e) if claim_lost(&e) => return e,
                Err(e) => tracing::warn!(volume = job.volume, stripe = job.stripe, error = %e,
                    "rebuild claim not renewed"),
            }
        }
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        lost = renew => {
            // Whoever holds the stripe now does the work; this attempt
            // stops (its rebuild request is dropped).
            state.metrics.rebuild_error();
            let mut outcome = RebuildOutcome::of(&job);
            outcome.error = Some(format!("claim lost: {lost}"));
            outcome
        }
    };
    if let Err(e) = state
        .directory
        .end_rebuild(job.volume, job.stripe, owner, outcome.error.clone())
        .await
    {
        // Its claim runs out and the next pass takes it up again.
        tracing::warn!(volume = job.volume, stripe = job.stripe, error = %e,
            "rebuild job not ended");
    }
    Some(outcome)
}

/// Rebuilds `blocks` (stripe, block) of volume `vid` in place, each
/// stripe's in one job as a pass would: for a seal whose freshly written
/// block failed its check, so that the block is written again alone. An
/// error says what failed.
pub(crate) async fn rebuild_in_place(
    state: &AppState,
    vid: u32,
    warm: &WarmVolume,
    nodes: &[NodeRecord],
    blocks: &[(u64, u32)],
) -> Result<(), String> {
    let rebuilders = up_rebuilders(nodes);
    let rebuilder = *in_datacenter(&rebuilders, &warm.home_datacenter(datacenter_in(nodes)))
        .first()
        .ok_or("no rebuilder is up")?;
    let warm = Arc::new(warm.clone());
    let mut by_stripe: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for (stripe, block) in blocks {
        by_stripe.entry(*stripe).or_default().push(*block);
    }
    for (stripe, blocks) in by_stripe {
        let members = warm
            .stripes
            .get(stripe as usize)
            .ok_or_else(|| format!("no stripe {stripe}"))?;
        if blocks.len() > usize::from(warm.geometry.parity_blocks) {
            return Err(format!("stripe {stripe}: {} blocks failed", blocks.len()));
        }
        let targets = blocks
            .iter()
            .map(|b| {
                let node = members
                    .get(*b as usize)
                    .ok_or_else(|| format!("no block {stripe}.{b}"))?;
                Ok((*b, node.clone(), node.clone()))
            })
            .collect::<Result<_, String>>()?;
        let job = StripeJob {
            volume: vid,
            warm: Arc::clone(&warm),
            stripe,
            targets,
            balance: false,
            attempts: 0,
            geo_sources: Vec::new(),
        };
        match run_job(state, job, nodes, rebuilder).await {
            Some(RebuildOutcome { error: None, .. }) => {}
            Some(RebuildOutcome {
                error: Some(error), ..
            }) => return Err(format!("stripe {stripe}: {error}")),
            None => return Err(format!("stripe {stripe} is being rebuilt elsewhere")),
        }
    }
    Ok(())
}

/// Drops the jobs in the directory that no one held and whose stripes need
/// nothing now (the blocks came back, the volume went), each only if it is
/// still the attempt the pass read: what they wrote is an orphan.
async fn drop_unneeded_jobs(state: &AppState, held: &[RebuildJob], report: &RepairReport) {
    let now = now_ms();
    let needed: HashSet<(u32, u64)> = report
        .endangered
        .iter()
        .map(|e| (e.volume, e.stripe))
        .chain(
            report
                .placement_violations
                .iter()
                .map(|v| (v.volume, v.stripe)),
        )
        .collect();
    for job in held
        .iter()
        .filter(|j| !j.is_claimed(now) && !needed.contains(&(j.volume, j.stripe)))
    {
        match state
            .directory
            .drop_rebuild(job.volume, job.stripe, job.attempts)
            .await
        {
            Ok(()) => tracing::info!(
                volume = job.volume,
                stripe = job.stripe,
                "rebuild job no longer needed, dropped"
            ),
            Err(e) => tracing::info!(volume = job.volume, stripe = job.stripe, error = %e,
                "rebuild job not dropped"),
        }
    }
}

/// Whether block `id` on `node` is an orphan: of a warm volume whose
/// record does not name `node` for it (or names a later generation), and
/// planned by no job in `held`.
fn is_orphan(
    id: &BlockId,
    node: &str,
    volumes: &HashMap<u32, &LogicalVolume>,
    held: &HashSet<(u32, u64, u32, &str)>,
) -> bool {
    let Some(warm) = volumes
        .get(&id.volume)
        .filter(|v| v.state == VolumeState::Warm)
        .and_then(|v| v.warm.as_ref())
    else {
        // Being sealed, or unknown: the migrator's, not ours.
        return false;
    };
    if id.generation > warm.generation {
        return false;
    }
    let recorded = id.generation == warm.generation
        && warm
            .stripes
            .get(id.stripe as usize)
            .and_then(|s| s.get(id.block as usize))
            .is_some_and(|n| n == node);
    !recorded && !held.contains(&(id.volume, id.stripe, id.block, node))
}

/// Removes orphan blocks ([`is_orphan`]), a stripe at a time (at most
/// [`ORPHAN_STRIPES_PER_PASS`], none with a job in `held`), each under a
/// fence: a claim of the stripe with no plan, taken only where the stripe
/// has no job, so that no rebuild writes into it meanwhile; the record is
/// read again under it and every block judged again before it goes.
/// Answers how many went.
async fn remove_orphans(
    state: &AppState,
    nodes: &[NodeRecord],
    volumes: &[LogicalVolume],
    inventories: &Inventories,
    held: &[RebuildJob],
) -> usize {
    let volumes: HashMap<u32, &LogicalVolume> = volumes.iter().map(|v| (v.id, v)).collect();
    let with_jobs: HashSet<(u32, u64)> = held.iter().map(|j| (j.volume, j.stripe)).collect();
    let none = HashSet::new();
    let mut by_stripe: std::collections::BTreeMap<(u32, u64), Vec<(BlockId, &NodeRecord)>> =
        std::collections::BTreeMap::new();
    let mut unknown: Vec<(BlockId, &NodeRecord)> = Vec::new();
    for (node, blocks) in inventories {
        let Some(node) = up_node(nodes, node) else {
            continue;
        };
        for id in blocks {
            if !volumes.contains_key(&id.volume) {
                unknown.push((*id, node));
            } else if !with_jobs.contains(&(id.volume, id.stripe))
                && is_orphan(id, &node.id, &volumes, &none)
            {
                by_stripe
                    .entry((id.volume, id.stripe))
                    .or_default()
                    .push((*id, node));
            }
        }
    }
    let mut removed = 0;
    for ((vid, stripe), orphans) in by_stripe.into_iter().take(ORPHAN_STRIPES_PER_PASS) {
        // Orphans are judged only in volumes with a warm record.
        let Some(generation) = volumes
            .get(&vid)
            .and_then(|v| v.warm.as_ref())
            .map(|w| w.generation)
        else {
            continue;
        };
        removed += remove_stripe_orphans(state, vid, generation, stripe, &orphans).await;
    }
    removed + remove_dropped(state, &unknown).await
}

/// Removes the blocks among `unknown` (of volumes the directory has no
/// record of) whose volume is a dropped geo companion: files a node kept
/// because it was down when they were removed. Nothing writes them any
/// more (a companion goes only when no job holds it). At most
/// [`ORPHAN_STRIPES_PER_PASS`] × 14 a pass. A block of a volume the
/// directory never heard of stays: it cannot tell that from a lost record.
async fn remove_dropped(state: &AppState, unknown: &[(BlockId, &NodeRecord)]) -> usize {
    if unknown.is_empty() {
        return 0;
    }
    let dropped: HashSet<u32> = match state.directory.all_dropped_companions().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::info!(error = %e, "dropped companions not listed; their files stay");
            return 0;
        }
    };
    let mut removed = 0;
    for (id, node) in unknown
        .iter()
        .filter(|(id, _)| dropped.contains(&id.volume))
        .take(ORPHAN_STRIPES_PER_PASS * 14)
    {
        let client = StorageClient::from_http(&node.base_url(), state.warm_http.clone());
        match client.delete_block(*id).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(volume = id.volume, stripe = id.stripe, block = id.block,
                    node = %node.id, "block of a dropped companion removed");
            }
            Err(e) => tracing::warn!(volume = id.volume, node = %node.id, error = %e,
                "block of a dropped companion not removed"),
        }
    }
    removed
}

/// [`remove_orphans`] for one stripe's orphans, of a volume at encode
/// `generation`.
async fn remove_stripe_orphans(
    state: &AppState,
    vid: u32,
    generation: u64,
    stripe: u64,
    orphans: &[(BlockId, &NodeRecord)],
) -> usize {
    // The fence names the volume's generation as the pass read it (the
    // directory refuses it if it moved since); an older one's orphans are
    // fenced by it too, since no job writes an older generation.
    let owner = claim_owner(state);
    let fence = RebuildClaimRequest {
        owner: owner.clone(),
        lease_ms: state.config.migration_lease_ms.max(3),
        generation,
        blocks: Vec::new(),
        balance: false,
    };
    if let Err(e) = state.directory.claim_rebuild(vid, stripe, &fence).await {
        tracing::info!(volume = vid, stripe, error = %e, "orphans left for a later pass");
        return 0;
    }
    let mut removed = 0;
    if let Ok(volume) = state.directory.volume(vid).await {
        let fresh = HashMap::from([(vid, &volume)]);
        let none = HashSet::new();
        for (id, node) in orphans {
            if !is_orphan(id, &node.id, &fresh, &none) {
                continue;
            }
            let client = StorageClient::from_http(&node.base_url(), state.warm_http.clone());
            match client.delete_block(*id).await {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(volume = vid, generation = id.generation, stripe,
                        block = id.block, node = %node.id, "orphan block removed");
                }
                Err(e) => tracing::warn!(volume = vid, stripe, block = id.block,
                    node = %node.id, error = %e, "orphan block not removed"),
            }
        }
    }
    if let Err(e) = state.directory.end_rebuild(vid, stripe, &owner, None).await {
        tracing::warn!(volume = vid, stripe, error = %e, "orphan fence not ended");
    }
    removed
}

/// `GET /admin/repair`: what is missing, endangered or misplaced now.
pub(crate) async fn repair_status(
    State(state): State<Arc<AppState>>,
) -> Result<Json<RepairReport>, ApiError> {
    Ok(Json(pass(&state, false).await?.answered()))
}

/// `POST /admin/repair`: one pass now, rebuilds included.
pub(crate) async fn repair_now(
    State(state): State<Arc<AppState>>,
) -> Result<Json<RepairReport>, ApiError> {
    Ok(Json(pass(&state, true).await?.answered()))
}

/// Runs a coordinator on `listener` (`/health`, `/metrics`) until `cancel`
/// fires: a pass every [`RouterConfig::coordinate_interval_ms`], and the
/// background scrub (`super::scrub`).
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), ApiError> {
    let options = config.server.serve_options();
    let interval = Duration::from_millis(config.coordinate_interval_ms.max(1));
    let state = Arc::new(AppState::new(config)?);
    let app = axum::Router::new()
        .route("/health", axum::routing::get(haystack::http::health))
        .route("/metrics", axum::routing::get(super::admin::metrics))
        .route("/repair", axum::routing::get(repair_status))
        .fallback(haystack::http::no_route)
        .with_state(state.clone());
    let scrub = (state.config.scrub_rate_bytes > 0).then(|| {
        let (state, cancel) = (state.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = super::scrub::scrub_forever(state, interval) => {}
            }
        })
    });
    let passes = super::repeat(interval, cancel.clone(), move || {
        let state = state.clone();
        async move {
            match pass(&state, true).await {
                Ok(report) if !report.rebuilds.is_empty() || !report.problems.is_empty() => {
                    let report = report.answered();
                    tracing::info!(rebuilds = report.rebuilds.len(),
                        endangered = report.endangered_count,
                        problem_count = report.problem_count,
                        problems = ?&report.problems[..report.problems.len().min(8)],
                        "repair pass");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "repair pass failed"),
            }
        }
    });
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "coordinator serving");
    }
    haystack::http::serve(listener, app, options, cancel).await;
    let _ = passes.await;
    if let Some(scrub) = scrub {
        let _ = scrub.await;
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::directory::NodeState;

    pub(crate) fn node(id: &str, rack: &str, up: bool, last_heartbeat_ms: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            role: NodeRole::F4Storage,
            rack: rack.into(),
            datacenter: "dc-1".into(),
            address: "127.0.0.1:1".into(),
            last_heartbeat_ms,
            state: if up { NodeState::Up } else { NodeState::Down },
        }
    }

    #[test]
    fn a_replacement_takes_an_empty_rack_then_the_least_loaded_node() {
        let nodes = vec![
            node("a", "r1", true, 0),
            node("b", "r2", true, 0),
            node("c", "r2", true, 0),
            node("d", "r3", false, 0),
            node("e", "r1", true, 0),
        ];
        let mut cell = Cell::new(&nodes, &[], 1000);
        cell.now = 500;
        // r3's only node is down: the emptiest rack with an up node is r2.
        assert_eq!(cell.replacement(&["a"], ""), Some("b"));
        cell.load.insert("b".into(), 3);
        assert_eq!(cell.replacement(&["a"], ""), Some("c"));
        // Every rack holds a member: the fewest members, then load.
        assert_eq!(cell.replacement(&["a", "b"], ""), Some("c"));
        assert_eq!(cell.replacement(&["a", "b", "c"], ""), Some("e"));
        assert_eq!(cell.replacement(&["a", "b", "c", "e"], ""), None);
    }

    #[test]
    fn a_replacement_stays_in_the_volumes_datacenter() {
        let mut nodes = vec![
            node("a", "r1", true, 0),
            node("b", "r1", true, 0),
            node("far", "dc2-r1", true, 0),
        ];
        nodes[2].datacenter = "dc-2".into();
        let cell = Cell::new(&nodes, &[], 1000);
        // `far` has an empty rack of its own, but another datacenter.
        assert_eq!(cell.replacement(&["a"], "dc-1"), Some("b"));
        assert_eq!(cell.replacement(&["a", "b"], "dc-1"), None);
        // A record from before datacenters lives where its first block is.
        let old = WarmVolume {
            datacenter: String::new(),
            ..warm_record(1, vec![vec!["far".into()]])
        };
        assert_eq!(cell.home(&old), "dc-2");
        assert_eq!(cell.home(&warm_record(1, Vec::new())), "dc-1");
        let up: Vec<&NodeRecord> = nodes.iter().collect();
        let ordered: Vec<&str> = local_first(&up, "dc-2")
            .iter()
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(ordered, ["far", "a", "b"], "its own datacenter's first");
        let only: Vec<&str> = in_datacenter(&up, "dc-3")
            .iter()
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(only, ["a", "b", "far"], "any, while it has none");
    }

    #[test]
    fn an_answered_report_shows_the_first_entries_and_counts_them_all() {
        let stripe = |stripe| EndangeredStripe {
            volume: 1,
            stripe,
            missing: vec![(0, Loss::NodeLost)],
            unavailable: Vec::new(),
        };
        let report = RepairReport {
            endangered: (0..250).map(stripe).collect(),
            problems: vec!["no node".to_owned(); 3],
            ..RepairReport::default()
        };
        let answered = report.clone().answered();
        assert_eq!(answered.endangered, report.endangered[..REPORTED_ENTRIES]);
        assert_eq!(answered.endangered_count, 250);
        assert_eq!(answered.problems, report.problems);
        assert_eq!(answered.problem_count, 3);
        assert_eq!(answered.placement_violation_count, 0);
    }

    #[test]
    fn a_stripe_the_geo_layer_cannot_restore_rebuilds_what_it_can_decode_itself() {
        let mut warm = warm_record(1, vec![(0..14).map(|n| format!("n{n}")).collect()]);
        // Blocks 4 and 5 failed a checksum, block 6 has wrong bytes.
        record_damage(&mut warm, &[(4, false), (5, false), (6, true)]);
        let warm = Arc::new(warm);
        let job = |blocks: &[u32]| StripeJob {
            volume: 1,
            warm: Arc::clone(&warm),
            stripe: 0,
            // Blocks 0 and 1 lost with their nodes, the others in place.
            targets: blocks
                .iter()
                .map(|&b| {
                    let to = if b < 2 {
                        format!("spare{b}")
                    } else {
                        format!("n{b}")
                    };
                    (b, format!("n{b}"), to)
                })
                .collect(),
            balance: false,
            attempts: 0,
            geo_sources: vec![7],
        };
        let local = job(&[0, 1, 2, 6, 4, 5])
            .local_fallback()
            .expect("four to rebuild");
        let targets: Vec<u32> = local.targets.iter().map(|t| t.0).collect();
        assert_eq!(
            targets,
            [0, 1, 2, 6],
            "the blocks that failed a checksum are sources"
        );
        assert!(local.geo_sources.is_empty());
        assert!(
            job(&[0, 1, 2, 3, 6, 4]).local_fallback().is_none(),
            "five untrusted"
        );
        // Nothing untrusted: those that failed a checksum, all of them when
        // the rest can decode them, else one spare left among them.
        let checksums = job(&[4, 5]).local_fallback().expect("checksums");
        assert_eq!(checksums.targets.len(), 2);
        assert_eq!(checksum_failed_targets(4, 0, 4), 4);
        assert_eq!(checksum_failed_targets(5, 0, 4), 3);
        assert_eq!(checksum_failed_targets(3, 2, 4), 1, "two others gone");
        assert_eq!(checksum_failed_targets(3, 4, 4), 0);
    }

    #[test]
    fn the_most_endangered_stripe_is_rebuilt_first() {
        let warm = Arc::new(warm_record(1, Vec::new()));
        let job = |stripe: u64, balance: bool, attempts: u32| StripeJob {
            volume: 1,
            warm: Arc::clone(&warm),
            stripe,
            targets: Vec::new(),
            balance,
            attempts,
            geo_sources: Vec::new(),
        };
        let stripe = |stripe: u64, missing: usize, unavailable: usize| EndangeredStripe {
            volume: 1,
            stripe,
            missing: (0..missing as u32).map(|b| (b, Loss::Missing)).collect(),
            unavailable: (10..10 + unavailable as u32).collect(),
        };
        let mut jobs = vec![
            job(3, false, 5),
            job(0, false, 0),
            job(9, true, 0),
            job(1, false, 0),
            job(2, false, 0),
        ];
        let mut endangered = vec![
            stripe(3, 1, 0),
            stripe(0, 1, 0),
            stripe(2, 1, 1),
            stripe(1, 3, 0),
        ];
        most_endangered_first(&mut jobs, &mut endangered);
        let order: Vec<u64> = jobs.iter().map(|j| j.stripe).collect();
        assert_eq!(
            order,
            vec![1, 2, 0, 3, 9],
            "three missing, then one missing and one unavailable, then one (the one that \
             failed five times last), then the move"
        );
        let order: Vec<u64> = endangered.iter().map(|e| e.stripe).collect();
        assert_eq!(order, vec![1, 2, 3, 0]);
    }

    /// A warm volume 1 of generation 2 whose one stripe is on `n0`..`n13`.
    fn warm_volume(state: VolumeState) -> LogicalVolume {
        LogicalVolume {
            id: 1,
            state,
            replicas: Vec::new(),
            stale_replicas: Vec::new(),
            missed_deletes: Vec::new(),
            repair_epoch: 0,
            created_ms: 0,
            locked_ms: None,
            last_write_ms: None,
            geo: Default::default(),
            size_bytes: 0,
            needle_count: 0,
            last_generation: 2,
            warm: Some(warm_record(
                2,
                vec![(0..14).map(|n| format!("n{n}")).collect()],
            )),
            owner: None,
        }
    }

    /// Records `(block, silent)` of stripe 0 of `warm` damaged, each on
    /// node `n{block}`.
    pub(crate) fn record_damage(warm: &mut WarmVolume, damage: &[(u32, bool)]) {
        for &(block, silent) in damage {
            warm.damaged_blocks
                .push(crate::directory::types::DamagedBlock {
                    stripe: 0,
                    block,
                    node: format!("n{block}"),
                    reported_ms: 1,
                    silent,
                });
        }
    }

    /// A warm record of `generation` placed on `stripes`.
    pub(crate) fn warm_record(generation: u64, stripes: Vec<Vec<String>>) -> WarmVolume {
        WarmVolume {
            generation,
            geometry: f4::Geometry::choose(100_000, 1000, 10, 4, 512).expect("geometry"),
            stripes,
            journal_holders: Vec::new(),
            stale_holders: Vec::new(),
            tolerated_rack_losses: 4,
            needle_count: 0,
            damaged_blocks: Vec::new(),
            journal_open: false,
            datacenter: "dc-1".into(),
        }
    }

    #[test]
    fn a_block_with_wrong_bytes_under_good_checksums_is_never_a_decode_source() {
        let mut warm = warm_record(1, vec![(0..14).map(|n| format!("n{n}")).collect()]);
        record_damage(&mut warm, &[(5, true), (6, false)]);
        let up = |id: &str| (id != "n2").then(|| format!("http://{id}"));
        let sources = super::decode_sources(&warm, 0, &[7], up);
        let named: Vec<usize> = (0..14).filter(|b| sources[*b].is_some()).collect();
        // Block 6 failed a checksum: its other chunks still serve.
        assert_eq!(
            named,
            [0, 1, 3, 4, 6, 8, 9, 10, 11, 12, 13],
            "down, silent, target out"
        );
        assert_eq!(sources[3].as_deref(), Some("http://n3"));
        assert!(
            super::decode_sources(&warm, 1, &[], up).is_empty(),
            "no such stripe"
        );
    }

    #[test]
    fn an_orphan_is_a_block_no_record_names_and_no_job_plans() {
        let warm = warm_volume(VolumeState::Warm);
        let volumes = HashMap::from([(1, &warm)]);
        let block = |generation: u64, block: u32| BlockId {
            volume: 1,
            generation,
            stripe: 0,
            block,
        };
        let none = HashSet::new();
        assert!(!is_orphan(&block(2, 3), "n3", &volumes, &none), "recorded");
        assert!(is_orphan(&block(2, 3), "n20", &volumes, &none), "elsewhere");
        assert!(
            is_orphan(&block(1, 3), "n3", &volumes, &none),
            "older generation"
        );
        assert!(
            !is_orphan(&block(3, 3), "n20", &volumes, &none),
            "a later seal's"
        );
        let mut other = block(2, 3);
        other.stripe = 7;
        assert!(is_orphan(&other, "n3", &volumes, &none), "no such stripe");
        let planned = HashSet::from([(1, 0, 3, "n20")]);
        assert!(
            !is_orphan(&block(2, 3), "n20", &volumes, &planned),
            "a job's target"
        );
        let sealing = warm_volume(VolumeState::Sealing);
        let sealing = HashMap::from([(1, &sealing)]);
        assert!(
            !is_orphan(&block(2, 3), "n20", &sealing, &none),
            "the migrator's"
        );
        assert!(
            !is_orphan(&block(2, 3), "n20", &HashMap::new(), &none),
            "unknown volume"
        );
    }

    #[test]
    fn a_failed_job_resumes_its_plan_while_it_still_fits() {
        let volume = warm_volume(VolumeState::Warm);
        let warm = volume.warm.as_ref().expect("warm");
        let mut nodes: Vec<NodeRecord> = (0..16)
            .map(|n| node(&format!("n{n}"), &format!("r{n}"), true, 0))
            .collect();
        nodes[15].state = crate::directory::NodeState::Down;
        let cell = Cell::new(&nodes, &[], 1000);
        let job = |to: &str| RebuildJob {
            volume: 1,
            stripe: 0,
            generation: 2,
            blocks: vec![JobBlock {
                block: 4,
                from: "n4".into(),
                to: to.into(),
            }],
            balance: false,
            owner: String::new(),
            lease_until_ms: 0,
            started_ms: 0,
            updated_ms: 0,
            attempts: 1,
            last_error: Some("rebuilder died".into()),
        };
        let planned = || vec![(4, "n4".to_owned(), "n14".to_owned())];
        let targets = |held: &RebuildJob, balance: bool| {
            resume(Some(held), warm, 0, planned(), balance, &cell)
                .into_iter()
                .map(|(_, _, to)| to)
                .collect::<Vec<_>>()
        };
        let earlier = job("n4");
        assert_eq!(targets(&earlier, false), ["n4"], "the same nodes again");
        assert_eq!(targets(&earlier, true), ["n14"], "a move is not a repair");
        assert_eq!(targets(&job("n15"), false), ["n14"], "its target is down");
        assert_eq!(
            targets(&job("n5"), false),
            ["n14"],
            "its target holds block 5"
        );
        let mut other_blocks = job("n4");
        other_blocks.blocks[0].block = 6;
        other_blocks.blocks[0].from = "n6".into();
        assert_eq!(targets(&other_blocks, false), ["n14"], "other blocks");
        let mut old = job("n4");
        old.generation = 1;
        assert_eq!(targets(&old, false), ["n14"], "another generation");
        let mut tried = job("n4");
        tried.attempts = RESUMED_ATTEMPTS;
        assert_eq!(targets(&tried, false), ["n14"], "failed too often");
    }

    #[test]
    fn a_node_is_lost_only_after_rebuild_after() {
        let nodes = vec![node("up", "r1", true, 0), node("down", "r2", false, 1000)];
        let mut cell = Cell::new(&nodes, &[], 5000);
        cell.now = 5999;
        assert!(!cell.lost("up"));
        assert!(!cell.lost("down"), "down for less than rebuild_after");
        cell.now = 6000;
        assert!(cell.lost("down"));
        assert!(cell.lost("unknown"), "a node the directory forgot");
    }
}
