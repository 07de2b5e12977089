//! Placement of a warm volume on the cell: the blocks of each stripe on
//! distinct racks, the journal holders on distinct racks, the least loaded
//! nodes first; and how many lost racks the result tolerates.

use std::collections::{BTreeMap, HashMap};

use super::error::DirectoryError;
use super::types::{LogicalVolume, NodeRecord, NodeRole, WarmVolume};

/// Where a warm volume's blocks and journal go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WarmPlacement {
    /// The datacenter of every node below.
    pub(crate) datacenter: String,
    /// Per stripe, the node of each block.
    pub(crate) stripes: Vec<Vec<String>>,
    /// The journal holders.
    pub(crate) holders: Vec<String>,
    /// Racks that can be lost with every stripe still decodable.
    pub(crate) tolerated_rack_losses: u32,
}

/// What a placement must hold, and where it may go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'a> {
    /// Stripes.
    pub(crate) stripe_count: u64,
    /// Data blocks a stripe.
    pub(crate) k: usize,
    /// Parity blocks a stripe.
    pub(crate) m: usize,
    /// Journal holders.
    pub(crate) holder_count: usize,
    /// The datacenters it may go to (any, if empty).
    pub(crate) datacenters: &'a [String],
    /// Whether a cell with fewer racks than blocks in a stripe will do.
    pub(crate) allow_fewer_racks: bool,
}

/// Places `stripe_count` stripes of `k + m` blocks and `holder_count`
/// journal holders on the `up` f4 storage nodes of one datacenter's cell:
/// of the `datacenters` allowed (all, if none is named) with a rack for
/// every block of a stripe, the one holding the fewest blocks and holders
/// (then by name). With fewer racks than blocks in a stripe it is refused,
/// unless `allow_fewer_racks`: then the blocks are spread as evenly as the
/// racks allow and the tolerance says what that costs.
pub(crate) fn place(
    nodes: &[NodeRecord],
    volumes: &[LogicalVolume],
    wanted: Wanted<'_>,
) -> Result<WarmPlacement, DirectoryError> {
    let Wanted {
        stripe_count,
        k,
        m,
        holder_count,
        datacenters: allowed,
        allow_fewer_racks,
    } = wanted;
    let blocks = k + m;
    let mut load = loads(volumes);
    let cells = cells(nodes, |dc| {
        allowed.is_empty() || allowed.iter().any(|a| a == dc)
    });
    let held = |racks: &Racks<'_>| held(racks, &load);
    let most_racks = cells.values().map(BTreeMap::len).max().unwrap_or(0);
    let Some((datacenter, racks)) = cells
        .into_iter()
        .filter(|(_, racks)| racks.len() >= blocks.min(most_racks))
        .min_by_key(|(name, racks)| (held(racks), *name))
    else {
        return Err(DirectoryError::NotEnoughRacks {
            needed: blocks,
            available: 0,
        });
    };
    if racks.len() < blocks && !allow_fewer_racks {
        return Err(DirectoryError::NotEnoughRacks {
            needed: blocks,
            available: racks.len(),
        });
    }
    let mut stripes = Vec::new();
    let mut tolerated = m as u32;
    for _ in 0..stripe_count.max(1) {
        let mut in_stripe: HashMap<&str, usize> = HashMap::new();
        let mut used: Vec<&str> = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            let node = pick(&racks, &in_stripe, &used, &load);
            let rack = rack_of(&racks, node);
            *in_stripe.entry(rack).or_default() += 1;
            *load.entry(node).or_default() += 1;
            used.push(node);
        }
        tolerated = tolerated.min(tolerance(in_stripe.into_values().collect(), m));
        stripes.push(used.into_iter().map(str::to_owned).collect());
    }
    Ok(WarmPlacement {
        datacenter: datacenter.to_owned(),
        stripes,
        holders: pick_holders(&racks, holder_count, &mut load),
        tolerated_rack_losses: tolerated,
    })
}

/// The remote journal holders of a volume whose cell is in `home`, when
/// other datacenters have storage nodes up: `count` nodes in distinct
/// racks (where it has them) of the least loaded other datacenter, so
/// that its index and deletes survive the loss of `home` (f4 keeps three
/// copies in another datacenter). None in a single datacenter.
pub(crate) fn remote_holders(
    nodes: &[NodeRecord],
    volumes: &[LogicalVolume],
    home: &str,
    count: usize,
) -> Vec<String> {
    let mut load = loads(volumes);
    let cells = cells(nodes, |dc| dc != home);
    let Some(racks) = cells
        .into_iter()
        .min_by_key(|(name, racks)| (held(racks, &load), *name))
        .map(|(_, racks)| racks)
    else {
        return Vec::new();
    };
    pick_holders(&racks, count, &mut load)
}

/// A datacenter's racks, each with its nodes.
type Racks<'a> = BTreeMap<&'a str, Vec<&'a str>>;

/// Blocks and journals each node holds.
fn loads(volumes: &[LogicalVolume]) -> HashMap<&str, usize> {
    let mut load: HashMap<&str, usize> = HashMap::new();
    for warm in volumes.iter().filter_map(|v| v.warm.as_ref()) {
        for node in warm.stripes.iter().flatten().chain(&warm.journal_holders) {
            *load.entry(node.as_str()).or_default() += 1;
        }
    }
    load
}

/// The up storage nodes of each `allowed` datacenter, by rack.
fn cells(nodes: &[NodeRecord], allowed: impl Fn(&str) -> bool) -> BTreeMap<&str, Racks<'_>> {
    let mut cells: BTreeMap<&str, Racks<'_>> = BTreeMap::new();
    for node in nodes {
        if node.role == NodeRole::F4Storage && node.is_up() && allowed(&node.datacenter) {
            cells
                .entry(node.datacenter.as_str())
                .or_default()
                .entry(node.rack.as_str())
                .or_default()
                .push(node.id.as_str());
        }
    }
    cells
}

/// What the nodes of `racks` hold.
fn held(racks: &Racks<'_>, load: &HashMap<&str, usize>) -> usize {
    racks
        .values()
        .flatten()
        .map(|n| load.get(n).copied().unwrap_or(0))
        .sum()
}

/// `count` journal holders (at most one per node) in distinct racks where
/// there are enough, the least loaded first.
fn pick_holders<'a>(
    racks: &Racks<'a>,
    count: usize,
    load: &mut HashMap<&'a str, usize>,
) -> Vec<String> {
    let mut holders: Vec<&str> = Vec::with_capacity(count);
    let mut in_holders: HashMap<&str, usize> = HashMap::new();
    let node_count: usize = racks.values().map(Vec::len).sum();
    for _ in 0..count.min(node_count) {
        let node = pick(racks, &in_holders, &holders, load);
        *in_holders.entry(rack_of(racks, node)).or_default() += 1;
        *load.entry(node).or_default() += 1;
        holders.push(node);
    }
    holders.into_iter().map(str::to_owned).collect()
}

/// The next node: in the rack with the fewest picks so far, the least
/// loaded node not picked yet (or, if the rack's are all picked, the least
/// loaded one). Ties break by load, then name: placement is deterministic.
fn pick<'a>(
    racks: &BTreeMap<&'a str, Vec<&'a str>>,
    picked_per_rack: &HashMap<&str, usize>,
    picked: &[&str],
    load: &HashMap<&str, usize>,
) -> &'a str {
    let load_of = |node: &str| load.get(node).copied().unwrap_or(0);
    racks
        .iter()
        .map(|(rack, nodes)| {
            let node = nodes
                .iter()
                .copied()
                .min_by_key(|n| (picked.contains(n), load_of(n), *n))
                .expect("racks hold at least one node");
            (
                (
                    picked_per_rack.get(rack).copied().unwrap_or(0),
                    picked.contains(&node),
                    load_of(node),
                    *rack,
                ),
                node,
            )
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, node)| node)
        .expect("at least one rack")
}

fn rack_of<'a>(racks: &BTreeMap<&'a str, Vec<&'a str>>, node: &str) -> &'a str {
    racks
        .iter()
        .find(|(_, nodes)| nodes.contains(&node))
        .map(|(rack, _)| *rack)
        .expect("picked from these racks")
}

/// How many lost racks every stripe of `warm` survives, by the racks of
/// `nodes` (a node the directory does not know counts as a rack of its own).
pub(crate) fn stripes_tolerance(warm: &WarmVolume, nodes: &[NodeRecord]) -> u32 {
    let m = usize::from(warm.geometry.parity_blocks);
    warm.stripes
        .iter()
        .map(|stripe| tolerance(blocks_per_rack(stripe, nodes).into_values().collect(), m))
        .min()
        .unwrap_or(m as u32)
}

/// How many of `stripe`'s blocks each rack holds.
pub(crate) fn blocks_per_rack<'a>(
    stripe: &'a [String],
    nodes: &'a [NodeRecord],
) -> HashMap<&'a str, usize> {
    let mut per_rack: HashMap<&str, usize> = HashMap::new();
    for node in stripe {
        let rack = nodes
            .iter()
            .find(|n| n.id == *node)
            .map_or(node.as_str(), |n| n.rack.as_str());
        *per_rack.entry(rack).or_default() += 1;
    }
    per_rack
}

/// The most racks whose loss leaves at most `m` of a stripe's blocks lost,
/// given how many of its blocks each rack holds.
pub(crate) fn tolerance(mut per_rack: Vec<usize>, m: usize) -> u32 {
    per_rack.sort_unstable_by(|a, b| b.cmp(a));
    let mut lost = 0;
    let mut racks = 0;
    for count in per_rack {
        lost += count;
        if lost > m {
            break;
        }
        racks += 1;
    }
    racks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::types::NodeState;

    /// `stripes` stripes of RS(10,4) and five holders, anywhere.
    fn wanted(stripes: u64, allow_fewer_racks: bool) -> Wanted<'static> {
        Wanted {
            stripe_count: stripes,
            k: 10,
            m: 4,
            holder_count: 5,
            datacenters: &[],
            allow_fewer_racks,
        }
    }

    fn cell(racks: usize, per_rack: usize) -> Vec<NodeRecord> {
        (0..racks * per_rack)
            .map(|n| NodeRecord {
                id: format!("f4-{n:02}"),
                role: NodeRole::F4Storage,
                rack: format!("rack-{:02}", n % racks),
                datacenter: "dc".into(),
                address: "127.0.0.1:1".into(),
                last_heartbeat_ms: 0,
                state: NodeState::Up,
            })
            .collect()
    }

    #[test]
    fn fourteen_racks_give_each_block_its_own_rack() {
        let placed = place(&cell(14, 1), &[], wanted(3, false)).expect("placed");
        assert_eq!(placed.stripes.len(), 3);
        for stripe in &placed.stripes {
            let mut nodes = stripe.clone();
            nodes.sort();
            nodes.dedup();
            assert_eq!(nodes.len(), 14);
        }
        assert_eq!(placed.holders.len(), 5);
        assert_eq!(placed.tolerated_rack_losses, 4);
    }

    /// `cell(racks, 1)` in datacenter `dc`, its names prefixed with it.
    fn cell_in(dc: &str, racks: usize) -> Vec<NodeRecord> {
        cell(racks, 1)
            .into_iter()
            .map(|n| NodeRecord {
                id: format!("{dc}-{}", n.id),
                rack: format!("{dc}-{}", n.rack),
                datacenter: dc.into(),
                ..n
            })
            .collect()
    }

    #[test]
    fn a_volume_goes_to_one_datacenter_with_a_rack_per_block_the_least_loaded() {
        let mut nodes = cell_in("dc-1", 14);
        nodes.extend(cell_in("dc-2", 14));
        nodes.extend(cell_in("dc-3", 13));
        let placed = place(&nodes, &[], wanted(2, false)).expect("placed");
        let in_dc = |placed: &WarmPlacement, dc: &str| {
            placed
                .stripes
                .iter()
                .flatten()
                .chain(&placed.holders)
                .all(|n| n.starts_with(&format!("{dc}-")))
        };
        assert_eq!(placed.datacenter, "dc-1");
        assert!(in_dc(&placed, "dc-1"), "{placed:?}");
        let roomy = ["dc-2".to_owned()];
        let only = Wanted {
            datacenters: &roomy,
            ..wanted(2, false)
        };
        let there = place(&nodes, &[], only).expect("placed");
        assert_eq!(there.datacenter, "dc-2", "only where it fits");
        // dc-1 now holds a volume: the next goes to dc-2, never to dc-3,
        // which lacks a rack.
        let volume = LogicalVolume {
            warm: Some(WarmVolume {
                generation: 1,
                geometry: f4::Geometry::choose(100_000, 1000, 10, 4, 512).expect("geometry"),
                stripes: placed.stripes.clone(),
                journal_holders: placed.holders.clone(),
                stale_holders: Vec::new(),
                tolerated_rack_losses: 4,
                needle_count: 0,
                damaged_blocks: Vec::new(),
                journal_open: false,
                datacenter: placed.datacenter.clone(),
            }),
            ..serde_json::from_value(serde_json::json!({
                "id": 1, "state": "warm", "replicas": [], "stale_replicas": [],
                "missed_deletes": [], "repair_epoch": 0, "created_ms": 0, "size_bytes": 0,
                "needle_count": 0, "last_generation": 1
            }))
            .expect("a volume")
        };
        let next = place(&nodes, std::slice::from_ref(&volume), wanted(2, false)).expect("placed");
        assert_eq!(next.datacenter, "dc-2");
        assert!(in_dc(&next, "dc-2"), "{next:?}");
        let second = LogicalVolume {
            id: 2,
            warm: volume.warm.clone().map(|w| WarmVolume {
                stripes: next.stripes.clone(),
                journal_holders: next.holders.clone(),
                ..w
            }),
            ..volume.clone()
        };
        let third = place(&nodes, &[volume, second], wanted(1, false)).expect("placed");
        assert_ne!(third.datacenter, "dc-3", "thirteen racks are too few");
    }

    #[test]
    fn a_small_cell_is_refused_unless_accepted_and_then_says_what_it_costs() {
        let small = cell(7, 2);
        assert!(matches!(
            place(&small, &[], wanted(1, false)),
            Err(DirectoryError::NotEnoughRacks {
                needed: 14,
                available: 7
            })
        ));
        let placed = place(&small, &[], wanted(1, true)).expect("accepted");
        // Two blocks per rack: losing two racks loses four blocks.
        assert_eq!(placed.tolerated_rack_losses, 2);
        let one = place(&cell(1, 1), &[], wanted(1, true)).expect("one node");
        assert_eq!(one.tolerated_rack_losses, 0);
        assert_eq!(one.holders.len(), 1);
    }

    #[test]
    fn tolerance_counts_the_fullest_racks_first() {
        assert_eq!(tolerance(vec![1; 14], 4), 4);
        assert_eq!(tolerance(vec![2; 7], 4), 2);
        assert_eq!(tolerance(vec![3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 4), 2);
        assert_eq!(tolerance(vec![14], 4), 0);
    }
}
