//! Placement of a warm volume on the cell: the blocks of each stripe on
//! distinct racks, the journal holders on distinct racks, the least loaded
//! nodes first; and how many lost racks the result tolerates.

use std::collections::{BTreeMap, HashMap};

use super::error::DirectoryError;
use super::types::{LogicalVolume, NodeRecord, NodeRole, WarmVolume};

/// Where a warm volume's blocks and journal go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WarmPlacement {
    /// Per stripe, the node of each block.
    pub(crate) stripes: Vec<Vec<String>>,
    /// The journal holders.
    pub(crate) holders: Vec<String>,
    /// Racks that can be lost with every stripe still decodable.
    pub(crate) tolerated_rack_losses: u32,
}

/// Places `stripe_count` stripes of `k + m` blocks and `holder_count`
/// journal holders on the `up` f4 storage nodes. With fewer racks than
/// blocks in a stripe it is refused, unless `allow_fewer_racks`: then the
/// blocks are spread as evenly as the racks allow and the tolerance says
/// what that costs.
pub(crate) fn place(
    nodes: &[NodeRecord],
    volumes: &[LogicalVolume],
    stripe_count: u64,
    k: usize,
    m: usize,
    holder_count: usize,
    allow_fewer_racks: bool,
) -> Result<WarmPlacement, DirectoryError> {
    let blocks = k + m;
    let mut load: HashMap<&str, usize> = HashMap::new();
    for warm in volumes.iter().filter_map(|v| v.warm.as_ref()) {
        for node in warm.stripes.iter().flatten().chain(&warm.journal_holders) {
            *load.entry(node.as_str()).or_default() += 1;
        }
    }
    let mut racks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in nodes {
        if node.role == NodeRole::F4Storage && node.is_up() {
            racks
                .entry(node.rack.as_str())
                .or_default()
                .push(node.id.as_str());
        }
    }
    if racks.is_empty() || (racks.len() < blocks && !allow_fewer_racks) {
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
    let mut holders: Vec<&str> = Vec::with_capacity(holder_count);
    let mut in_holders: HashMap<&str, usize> = HashMap::new();
    let node_count: usize = racks.values().map(Vec::len).sum();
    for _ in 0..holder_count.min(node_count) {
        let node = pick(&racks, &in_holders, &holders, &load);
        *in_holders.entry(rack_of(&racks, node)).or_default() += 1;
        *load.entry(node).or_default() += 1;
        holders.push(node);
    }
    Ok(WarmPlacement {
        stripes,
        holders: holders.into_iter().map(str::to_owned).collect(),
        tolerated_rack_losses: tolerated,
    })
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
        let placed = place(&cell(14, 1), &[], 3, 10, 4, 5, false).expect("placed");
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

    #[test]
    fn a_small_cell_is_refused_unless_accepted_and_then_says_what_it_costs() {
        let small = cell(7, 2);
        assert!(matches!(
            place(&small, &[], 1, 10, 4, 5, false),
            Err(DirectoryError::NotEnoughRacks {
                needed: 14,
                available: 7
            })
        ));
        let placed = place(&small, &[], 1, 10, 4, 5, true).expect("accepted");
        // Two blocks per rack: losing two racks loses four blocks.
        assert_eq!(placed.tolerated_rack_losses, 2);
        let one = place(&cell(1, 1), &[], 1, 10, 4, 5, true).expect("one node");
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
